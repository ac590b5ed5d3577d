//! Databases that go away under a running gateway: PostgreSQL and MariaDB stopped and started
//! with their own control commands while requests keep coming, SQLite held locked by another
//! connection, and SQLite on a file system that fills up. Throughout, the relay serves from its
//! in-memory snapshot, the store reconnects by itself, the stats writer retries, and every
//! counted request ends up in the statistics and the request log exactly once.
//!
//! Stopping the shared test servers disturbs every test using them, so the restart tests take an
//! exclusive lock on `/tmp/octopus-db-restart.lock` for their whole run, and a guard starts a
//! stopped server again even when the test fails. Each prints one `DB-RESTART` line with its
//! counts (run with `--nocapture`).

mod support;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use octopus::store::entities::StatsGrouping;
use support::databases::{self, TestDatabase};
use support::gateway::TestGateway;
use support::http_client::{json_request, request};
use support::lanes::{ANTHROPIC, Lane, OPENAI_CHAT};
use support::mock_upstream::MockUpstream;

/// Requests sent while the database is down, one every `OUTAGE_REQUEST_GAP`: together longer
/// than the relay's 15 s snapshot refresh, so a refresh fails during the outage too.
const OUTAGE_REQUESTS: usize = 12;
const OUTAGE_REQUEST_GAP: Duration = Duration::from_millis(1_400);

fn running_in_ci() -> bool {
    matches!(std::env::var("CI"), Ok(value) if !value.is_empty() && value != "false" && value != "0")
}

/// Skips (with a loud notice) outside CI, fails under CI.
fn unavailable(what: &str) {
    if running_in_ci() {
        panic!("{what}: required when CI is set");
    }
    eprintln!(
        "\n********************************************************************************\nNOTICE: {what}, so this test did NOT run.\n********************************************************************************\n"
    );
}

/// An exclusive `flock` on the restart lock file, released when dropped (the file closes).
struct RestartLock(#[allow(dead_code)] File);

impl RestartLock {
    fn acquire() -> RestartLock {
        let file = File::options()
            .create(true)
            .append(true)
            .open("/tmp/octopus-db-restart.lock")
            .expect("open the restart lock file");
        // SAFETY: flock on a descriptor this File owns; it blocks until the lock is ours.
        let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(result, 0, "flock: {}", std::io::Error::last_os_error());
        RestartLock(file)
    }
}

/// A test database server and its control commands.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Server {
    Postgres,
    Mariadb,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Postgres => "postgres",
            Server::Mariadb => "mariadb",
        }
    }

    /// Why this machine cannot stop and start the server, if it cannot.
    fn missing_controls(self) -> Option<String> {
        match self {
            Server::Postgres if postgres_version().is_none() => {
                Some("PostgreSQL has no cluster under /etc/postgresql to control".to_string())
            }
            Server::Postgres if !Path::new("/usr/bin/pg_ctlcluster").exists() => {
                Some("pg_ctlcluster is not installed".to_string())
            }
            Server::Mariadb if !Path::new("/usr/sbin/mariadbd").exists() => {
                Some("/usr/sbin/mariadbd is not installed".to_string())
            }
            Server::Mariadb
                if which("mariadb-admin").is_none() && which("mysqladmin").is_none() =>
            {
                Some("neither mariadb-admin nor mysqladmin is installed".to_string())
            }
            _ => None,
        }
    }

    fn admin_url(self) -> Option<String> {
        let variable = if self == Server::Postgres {
            "TEST_POSTGRES_URL"
        } else {
            "TEST_MYSQL_URL"
        };
        std::env::var(variable).ok().filter(|url| !url.is_empty())
    }

    /// Whether the server accepts a login right now.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(unused_variables))]
    fn is_up(self) -> bool {
        let Some(url) = self.admin_url() else {
            return false;
        };
        match self {
            #[cfg(feature = "postgres")]
            Server::Postgres => octopus::store::postgres_client::connect(&url).is_ok(),
            #[cfg(feature = "mysql")]
            Server::Mariadb => octopus::store::mysql_client::connect(&url).is_ok(),
            // A build without that server's client (`--features sqlite`) never reaches it.
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    fn stop(self) {
        match self {
            Server::Postgres => run(Command::new("pg_ctlcluster").args([
                "--skip-systemctl-redirect",
                &postgres_version().unwrap(),
                "main",
                "stop",
            ])),
            Server::Mariadb => {
                let admin = which("mariadb-admin")
                    .or_else(|| which("mysqladmin"))
                    .unwrap();
                run(Command::new(admin).args([
                    "-h",
                    "127.0.0.1",
                    "-P",
                    "3306",
                    "-uroot",
                    "shutdown",
                ]))
            }
        }
        wait_for(
            &format!("{} to stop", self.name()),
            Duration::from_secs(60),
            || !self.is_up(),
        );
    }

    fn start(self) {
        match self {
            Server::Postgres => run(Command::new("pg_ctlcluster").args([
                "--skip-systemctl-redirect",
                &postgres_version().unwrap(),
                "main",
                "start",
            ])),
            Server::Mariadb => {
                // As scripts/test-databases does: the socket directory vanishes on reboot.
                let _ = std::fs::create_dir_all("/run/mysqld");
                let _ = Command::new("chown")
                    .args(["mysql:mysql", "/run/mysqld"])
                    .status();
                run(Command::new("start-stop-daemon").args([
                    "--start",
                    "--oknodo",
                    "--background",
                    "--exec",
                    "/usr/sbin/mariadbd",
                ]))
            }
        }
        wait_for(
            &format!("{} to start", self.name()),
            Duration::from_secs(60),
            || self.is_up(),
        );
    }
}

/// Starts the server again when dropped if it is down: a failing test must not leave the shared
/// server stopped.
struct ServerGuard(Server);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if !self.0.is_up() {
            eprintln!(
                "database_restart: starting {} again after the test",
                self.0.name()
            );
            let server = self.0;
            let restarted = std::panic::catch_unwind(move || server.start());
            if restarted.is_err() && !std::thread::panicking() {
                panic!("could not start {} again", self.0.name());
            }
        }
    }
}

fn postgres_version() -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort_by_key(|version| version.parse::<u32>().unwrap_or(0));
    versions.pop()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn poll<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A gateway with one OpenAI Chat and one Anthropic route on a mock upstream, statistics written
/// every second, and a client key.
struct Traffic {
    gateway: TestGateway,
    token: String,
    client_key: String,
    _mock: MockUpstream,
    sent: usize,
}

impl Traffic {
    fn start(database: TestDatabase) -> Traffic {
        let mock = MockUpstream::default_success();
        let gateway = TestGateway::start(database);
        let token = gateway.login_token();
        for lane in [OPENAI_CHAT, ANTHROPIC] {
            let channel = gateway.create_channel(
                &token,
                json!({"name": format!("ch-{}", lane.name()), "type": lane.channel_type,
                       "base_urls": [lane.base_url(&mock.base_url())], "keys": ["sk-upstream-000000001"]}),
            );
            gateway.create_group(&token, json!({"name": format!("g-{}", lane.name()), "items": [{"channel_id": channel, "model": "m"}]}));
        }
        let client_key = gateway.create_client_key(&token, json!({"name": "k"}));
        let changed = json_request(
            gateway.address,
            "PUT",
            "/api/v1/settings",
            Some(&token),
            Some(&json!({"stats_save_interval_seconds": 1})),
        );
        assert_eq!(changed.status, 200, "{}", changed.text());
        Traffic {
            gateway,
            token,
            client_key,
            _mock: mock,
            sent: 0,
        }
    }

    /// One relay request, alternating protocols and stream or not; it must succeed.
    fn send(&mut self) {
        let lane: Lane = if self.sent.is_multiple_of(2) {
            OPENAI_CHAT
        } else {
            ANTHROPIC
        };
        let stream = self.sent.is_multiple_of(3);
        let group = format!("g-{}", lane.name());
        let headers = lane.auth_headers(&self.client_key);
        let header_refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let body = lane.body(&group, stream).to_string();
        let response = request(
            self.gateway.address,
            "POST",
            &lane.path(&group, stream),
            &header_refs,
            body.as_bytes(),
        );
        assert_eq!(
            response.status,
            200,
            "request {} ({} stream={stream}): {}",
            self.sent,
            lane.name(),
            response.text()
        );
        let text = if stream {
            lane.stream_text(&response.body)
        } else {
            lane.text(&response.json())
        };
        assert_eq!(text, "Hello from the mock");
        self.sent += 1;
    }

    fn admin_get(&self, path: &str) -> support::http_client::TestResponse {
        json_request(self.gateway.address, "GET", path, Some(&self.token), None)
    }

    /// Requests counted in the database itself (not the merged live view).
    fn persisted_requests(&self) -> Option<i64> {
        let rows = self
            .gateway
            .running()
            .store
            .call(|store| store.stats_grouped(i64::MIN / 4, i64::MAX / 4, StatsGrouping::Total))
            .ok()?;
        Some(rows.first().map_or(0, |row| row.counters.requests))
    }

    /// Waits until the database holds exactly `expected` counted requests and log rows (it must
    /// never hold more: a retried write counted twice would show here).
    fn wait_until_persisted(&self, expected: usize, limit: Duration) {
        poll(
            &format!("{expected} requests and logs in the database"),
            limit,
            || {
                let requests = self.persisted_requests()?;
                assert!(
                    requests <= expected as i64,
                    "{requests} requests counted for {expected} sent"
                );
                let logs = self.admin_get("/api/v1/logs?page_size=1");
                if logs.status != 200 {
                    return None;
                }
                let total = logs.json()["total"].as_i64()?;
                assert!(
                    total <= expected as i64,
                    "{total} logs for {expected} requests"
                );
                (requests == expected as i64 && total == expected as i64).then_some(())
            },
        );
    }

    /// The merged statistics the API shows, every request a success.
    fn check_summary(&self, expected: usize) {
        let summary = self.admin_get("/api/v1/stats/summary");
        assert_eq!(summary.status, 200, "{}", summary.text());
        let summary = summary.json();
        assert_eq!(summary["requests"], expected, "{summary}");
        assert_eq!(summary["success"], expected, "{summary}");
        assert_eq!(summary["input_tokens"], 10 * expected, "{summary}");
    }

    fn nothing_dropped(&self) {
        let running = self.gateway.running();
        assert_eq!(
            running.relay.records.dropped(),
            0,
            "records dropped on the way to the writer"
        );
        assert_eq!(
            running
                .stats
                .metrics
                .logs_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "log rows dropped"
        );
    }

    fn flush_failures(&self) -> (u64, u64) {
        let metrics = &self.gateway.running().stats.metrics;
        (
            metrics
                .stats_flush_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            metrics
                .log_flush_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

fn server_restart_keeps_every_request(server: Server) {
    let Some(database) = (match server {
        Server::Postgres => databases::postgres(),
        Server::Mariadb => databases::mysql(),
    }) else {
        return;
    };
    if let Some(reason) = server.missing_controls() {
        unavailable(&reason);
        return;
    }
    let _lock = RestartLock::acquire();
    let mut traffic = Traffic::start(database);
    let before = 10;
    for _ in 0..before {
        traffic.send();
    }
    traffic.wait_until_persisted(before, Duration::from_secs(15));

    let guard = ServerGuard(server);
    server.stop();
    let outage_started = Instant::now();
    for _ in 0..OUTAGE_REQUESTS {
        traffic.send();
        std::thread::sleep(OUTAGE_REQUEST_GAP);
    }
    traffic.gateway.wait_for_records(before + OUTAGE_REQUESTS);
    // The admin API needs the database: it answers at once that the database is away.
    let during = traffic.admin_get("/api/v1/channels");
    assert_eq!(during.status, 503, "{}", during.text());
    let during_message = during.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        during_message.contains("the database is unavailable"),
        "{during_message}"
    );
    let (stats_failures, log_failures) = traffic.flush_failures();
    assert!(
        stats_failures > 0 && log_failures > 0,
        "the writer tried during the outage: {stats_failures} / {log_failures}"
    );
    let outage = outage_started.elapsed();

    server.start();
    drop(guard);
    // The store reconnects by itself: the admin API works again.
    let channels = poll(
        "the admin API after the restart",
        Duration::from_secs(30),
        || {
            let response = traffic.admin_get("/api/v1/channels");
            (response.status == 200).then(|| response.json())
        },
    );
    assert_eq!(channels.as_array().map(Vec::len), Some(2), "{channels}");
    let after = 10;
    for _ in 0..after {
        traffic.send();
    }
    let total = before + OUTAGE_REQUESTS + after;
    traffic.wait_until_persisted(total, Duration::from_secs(30));
    traffic.check_summary(total);
    traffic.nothing_dropped();
    let failed = traffic.admin_get("/api/v1/logs?status=failed");
    assert_eq!(failed.json()["total"], 0, "{}", failed.text());
    let (stats_failures, log_failures) = traffic.flush_failures();

    // And it is all on disk: a restarted gateway reads the same totals back.
    traffic.gateway.restart();
    traffic.token = traffic.gateway.login_token();
    assert_eq!(traffic.persisted_requests(), Some(total as i64));
    traffic.check_summary(total);
    eprintln!(
        "DB-RESTART | {} | before {before} | during {OUTAGE_REQUESTS} (outage {:.1} s) | after {after} | counted {total}, logged {total} | failed flushes retried: stats {stats_failures}, logs {log_failures} | dropped 0 | admin API during the outage: 503 {during_message:?}",
        server.name(),
        outage.as_secs_f64()
    );
}

#[test]
fn postgres_restart_loses_no_request() {
    server_restart_keeps_every_request(Server::Postgres);
}

#[test]
fn mariadb_restart_loses_no_request() {
    server_restart_keeps_every_request(Server::Mariadb);
}

/// Another process holding SQLite's write lock: shorter than the busy timeout, the writer waits
/// and writes; longer, its write fails and is retried later. WAL lets readers through meanwhile.
#[test]
fn sqlite_write_lock_held_elsewhere_loses_no_request() {
    let database = databases::sqlite();
    let path = database.path.clone();
    let mut traffic = Traffic::start(database);
    let other = rusqlite::Connection::open(&path).unwrap();
    let mode: String = other
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal", "the gateway's SQLite database is in WAL mode");
    for _ in 0..5 {
        traffic.send();
    }
    traffic.wait_until_persisted(5, Duration::from_secs(15));

    // Briefly (1.5 s, within the 5 s busy timeout): no write fails.
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    for _ in 0..5 {
        traffic.send();
    }
    std::thread::sleep(Duration::from_millis(1_500));
    other.execute_batch("COMMIT").unwrap();
    traffic.wait_until_persisted(10, Duration::from_secs(15));
    assert_eq!(
        traffic.flush_failures(),
        (0, 0),
        "the busy timeout waited out a short lock"
    );

    // Longer than the busy timeout: writes fail and are retried; reads go on (WAL).
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    for _ in 0..5 {
        traffic.send();
    }
    wait_for("a failed write", Duration::from_secs(20), || {
        traffic.flush_failures() != (0, 0)
    });
    let read = traffic.admin_get("/api/v1/channels");
    assert_eq!(
        read.status,
        200,
        "reads go on while another connection writes: {}",
        read.text()
    );
    other.execute_batch("COMMIT").unwrap();
    traffic.wait_until_persisted(15, Duration::from_secs(30));
    traffic.check_summary(15);
    traffic.nothing_dropped();
    let (stats_failures, log_failures) = traffic.flush_failures();
    eprintln!(
        "DB-RESTART | sqlite write lock | 5 before, 5 under a 1.5 s lock, 5 under a lock past the busy timeout | counted 15, logged 15 | failed flushes retried: stats {stats_failures}, logs {log_failures}"
    );
}

/// A tmpfs of a few MiB mounted for the test, unmounted when dropped.
struct SmallFilesystem {
    mount_point: PathBuf,
}

impl SmallFilesystem {
    fn mount(size: &str) -> Result<SmallFilesystem, String> {
        let mount_point = databases::temp_dir("tmpfs");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount_point)
            .output()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if !output.status.success() {
            let _ = std::fs::remove_dir(&mount_point);
            return Err(format!(
                "mount -t tmpfs failed (root or CAP_SYS_ADMIN is needed): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallFilesystem { mount_point })
    }

    /// Writes zeros into `filler` until the file system is full.
    fn fill(&self, filler: &Path) {
        use std::io::Write;
        let mut file = File::create(filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(error) => panic!("filling the disk: {error}"),
            }
        }
        // Whatever single bytes are left.
        while file.write(&[0]).is_ok_and(|written| written == 1) {}
        let _ = file.sync_all();
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
        let _ = std::fs::remove_dir_all(&self.mount_point);
    }
}

#[test]
fn sqlite_on_a_full_disk_answers_clearly_and_loses_nothing() {
    let filesystem = match SmallFilesystem::mount("8m") {
        Ok(filesystem) => filesystem,
        Err(reason) => {
            unavailable(&reason);
            return;
        }
    };
    let database_path = filesystem.mount_point.join("data.db");
    let database = databases::sqlite_at(database_path.display().to_string());
    let mut traffic = Traffic::start(database);
    for _ in 0..5 {
        traffic.send();
    }
    traffic.wait_until_persisted(5, Duration::from_secs(15));

    let filler = filesystem.mount_point.join("filler");
    filesystem.fill(&filler);
    for _ in 0..5 {
        traffic.send();
    }
    wait_for(
        "a failed write on the full disk",
        Duration::from_secs(20),
        || traffic.flush_failures() != (0, 0),
    );
    // An admin write on the full disk: a clear error, not a hang or a crash.
    let refused = json_request(
        traffic.gateway.address,
        "POST",
        "/api/v1/channels",
        Some(&traffic.token),
        Some(
            &json!({"name": "on-a-full-disk", "type": "openai_chat", "base_urls": ["http://127.0.0.1:9/v1"], "keys": ["sk-upstream-000000002"]}),
        ),
    );
    assert!(refused.status >= 500, "{}", refused.text());
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("full"),
        "the error names the problem: {message}"
    );
    // The relay does not need the disk.
    traffic.send();

    std::fs::remove_file(&filler).unwrap();
    traffic.wait_until_persisted(11, Duration::from_secs(30));
    traffic.check_summary(11);
    traffic.nothing_dropped();
    let (stats_failures, log_failures) = traffic.flush_failures();
    drop(traffic);

    let connection = rusqlite::Connection::open(&database_path).unwrap();
    let integrity: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "the database survived the full disk");
    let logs: i64 = connection
        .query_row("SELECT COUNT(*) FROM request_logs", [], |row| row.get(0))
        .unwrap();
    assert_eq!(logs, 11);
    let channels: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM channels WHERE name = 'on-a-full-disk'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(channels, 0, "the refused write left nothing behind");
    eprintln!(
        "DB-RESTART | sqlite full disk | 5 before, 6 while full | counted 11, logged 11, integrity ok | admin write answered {}: {message:?} | failed flushes retried: stats {stats_failures}, logs {log_failures}",
        refused.status
    );
}
