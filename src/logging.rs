//! The process's logger: one line per record, `2026-12-06T03:30:00.123Z [INFO] message`, errors
//! to stderr and everything else to stdout, each line in one write; and the access lines of a
//! batch of finished requests written together.
//!
//! Our own rather than simplelog's because of the access log: at the default `info` level every
//! relayed request has a line, and simplelog wrote each in its own `write(2)`, a system call per
//! request on the stats writer. [`LineBatch`] writes all the lines of one ingest at once. It also
//! keeps the `time` crate, which simplelog needed only for the time stamp, out of the binary.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Targets whose records are dropped whatever the level.
/// - may logs every socket it adds to epoll at info level: noise for our users.
/// - ureq-proto hex-dumps every byte sent and received at trace level, header values included:
///   channel keys and the Amp key would reach the log (tests/secrets.rs).
const IGNORED_TARGET_PREFIXES: &[&str] = &["may", "ureq_proto"];

static LOGGER: GatewayLogger = GatewayLogger;

/// True once [`init`] installed our logger; [`LineBatch`] writes nothing before that, as the
/// `log` macros do not.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Installs the logger at `filter`. A second call (tests that start several gateways in one
/// process) changes nothing: the first level stays.
pub fn init(filter: LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(filter);
        INSTALLED.store(true, Ordering::Release);
    }
}

struct GatewayLogger;

impl Log for GatewayLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && !is_ignored_target(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = String::with_capacity(128);
        push_line(&mut line, &time_stamp(crate::util::unix_millis()), record.level(), record.args());
        write_out(record.level(), line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

/// Access lines collected while a batch of finished requests is counted, written in one go by
/// [`LineBatch::write`]. Each line carries the time it is written, as any other log line.
#[derive(Default)]
pub struct LineBatch {
    text: String,
    time_stamp: Option<String>,
}

impl LineBatch {
    /// True when info lines are written at all; when false, [`push_info`](Self::push_info)
    /// drops what it is given.
    pub fn info_enabled() -> bool {
        INSTALLED.load(Ordering::Acquire) && Level::Info <= log::max_level()
    }

    pub fn push_info(&mut self, message: &str) {
        if !Self::info_enabled() {
            return;
        }
        let time_stamp = self.time_stamp.get_or_insert_with(|| time_stamp(crate::util::unix_millis()));
        push_line(&mut self.text, time_stamp, Level::Info, message);
    }

    /// Writes the collected lines (to stdout, where info lines go) and empties the batch.
    pub fn write(&mut self) {
        if !self.text.is_empty() {
            write_out(Level::Info, self.text.as_bytes());
            self.text.clear();
        }
        self.time_stamp = None;
    }
}

fn is_ignored_target(target: &str) -> bool {
    IGNORED_TARGET_PREFIXES.iter().any(|prefix| target.starts_with(prefix))
}

fn push_line(text: &mut String, time_stamp: &str, level: Level, message: impl std::fmt::Display) {
    let _ = writeln!(text, "{time_stamp} [{level}] {message}");
}

/// One `write_all` on the locked stream. stdout is line-buffered, and a buffer that ends with a
/// newline goes out in a single write when nothing else is pending; stderr is not buffered.
fn write_out(level: Level, bytes: &[u8]) {
    let _ = if level == Level::Error { std::io::stderr().lock().write_all(bytes) } else { std::io::stdout().lock().write_all(bytes) };
}

fn time_stamp(unix_millis: i64) -> String {
    crate::stats::log_view::rfc3339_millis(unix_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_the_time_the_level_and_the_message() {
        let mut text = String::new();
        push_line(&mut text, &time_stamp(1_764_990_000_123), Level::Warn, "upstream slow");
        assert_eq!(text, "2025-12-06T03:00:00.123Z [WARN] upstream slow\n");
    }

    #[test]
    fn noisy_dependencies_are_never_logged() {
        assert!(is_ignored_target("ureq_proto::client"));
        assert!(is_ignored_target("may::io::sys"));
        assert!(!is_ignored_target("octopus::relay"));
    }
}
