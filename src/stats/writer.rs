//! The stats-writer thread: takes the relay threads' batches of counted requests every 100 ms
//! (after a second without any, it sleeps until the next one or its next deadline), adds them
//! up, and writes logs about every second (or once 1,000 wait) and statistics every
//! `stats_save_interval_seconds`, at each UTC hour boundary and when asked to stop (after taking
//! every request already counted).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::stats::aggregate::{HOUR_SECONDS, hour_of_millis};
use crate::stats::batches::{CountedBatch, CountedBatches};
use crate::stats::StatsService;
use crate::util::unix_millis;

/// How often the writer takes the requests the relay counted since the last look. Each look
/// wakes this thread, which takes the relay's core from it under load; statistics and the
/// live tail are at most this late.
const INGEST_TICK: Duration = Duration::from_millis(100);
/// Ticks in a row without a finished request after which the writer sleeps until the next one
/// (`CountedBatches::sleep_until_counted`) or its next deadline, instead of looking ten times a
/// second at nothing. A second of quiet: under steady traffic, however light, it keeps ticking,
/// and waking it costs the relay a futex call only after such a spell.
const IDLE_TICKS_BEFORE_SLEEPING: u32 = 10;
/// The longest idle sleep, so that a stats interval shortened in the settings while statistics
/// wait applies within a minute.
const LONGEST_IDLE_SLEEP_MS: i64 = 60_000;
/// How often queued log rows are written.
const LOG_FLUSH_INTERVAL_MS: i64 = 1_000;
/// Queued log rows that are written at once, without waiting for the interval: at tens of
/// thousands of requests a second, a second's rows would pass the queue's bound
/// (`MAX_PENDING_LOGS`) and the oldest would be dropped. Under such load this writes every tick:
/// a small queue stays in the core's caches, where a large one pushed the relay's data out
/// (5,000 rows cost 1.3% more CPU per request than 1,000 in the bench; 400 equal to 1,000).
const LOG_FLUSH_ROWS: usize = 1_000;
/// After a failed flush, how long until the next try (shorter than the usual interval so an
/// outage loses as little as possible when the process dies).
const RETRY_AFTER_FAILURE_MS: i64 = 5_000;

/// A running writer and the way to stop it.
pub struct StatsWriter {
    /// Set once the writer is to take what was counted, write everything and end.
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatsWriter {
    pub fn spawn(service: Arc<StatsService>, batches: Arc<CountedBatches>) -> StatsWriter {
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("stats-writer".to_string())
            .spawn(move || run(&service, &batches, &stop_flag))
            .expect("spawn the stats-writer thread");
        StatsWriter { stopping, thread: Some(thread) }
    }

    /// Takes the requests already counted, writes everything and stops. Returns when done.
    pub fn stop_and_flush(mut self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for StatsWriter {
    /// A writer dropped without `stop_and_flush` still writes what was counted and ends, in the
    /// background.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

fn run(service: &Arc<StatsService>, batches: &CountedBatches, stopping: &AtomicBool) {
    crate::util::lower_this_thread_priority();
    let mut next_stats_flush = unix_millis() + stats_interval_ms(service);
    let mut next_log_flush = unix_millis() + LOG_FLUSH_INTERVAL_MS;
    // While the database refuses logs, they wait for the retry time, however many queue up.
    let mut log_flush_failing = false;
    let mut current_hour = hour_of_millis(unix_millis());
    let mut last_stats_flush = unix_millis();
    // Taken batches, and emptied ones to hand back: their buffers go round between the relay's
    // threads and this one instead of being freed and allocated again.
    let (mut taken, mut spares): (Vec<CountedBatch>, Vec<CountedBatch>) = (Vec::new(), Vec::new());
    let mut idle_ticks = 0;
    loop {
        if idle_ticks >= IDLE_TICKS_BEFORE_SLEEPING && service.backlog().1 == 0 {
            // Nothing counted for a while and no log waits: the next thing to do is a request's
            // (which wakes this thread), a stop (which unparks it) or a statistics deadline.
            let now = unix_millis();
            let next_hour_ms = (hour_of_millis(now) + HOUR_SECONDS) * 1_000;
            let until = next_stats_flush.min(next_hour_ms).min(now + LONGEST_IDLE_SLEEP_MS);
            batches.sleep_until_counted(Duration::from_millis(u64::try_from(until - now).unwrap_or(0)));
        } else {
            // Sleeping between takes means a finished request never has to wake this thread:
            // under load that saves a futex call and a context switch per request, for at most
            // one tick of delay in the statistics. Parking sleeps at once, where a channel's
            // timed receive first spins and yields the core a few times, each yield a context
            // switch on a loaded core.
            std::thread::park_timeout(INGEST_TICK);
        }
        let stopping = stopping.load(Ordering::Acquire);
        batches.take_into(&mut taken, &mut spares);
        if taken.is_empty() {
            idle_ticks = idle_ticks.saturating_add(1);
            // A tick without a finished request: the spares' buffers would wait, at the size of
            // the last busy tick, for a load that may not come back.
            spares.clear();
        } else {
            idle_ticks = 0;
            service.ingest(&mut taken);
            for mut batch in taken.drain(..) {
                batch.clear_keeping_room_for_twice_its_use();
                spares.push(batch);
            }
        }
        if stopping {
            final_flush(service);
            return;
        }
        let now = unix_millis();
        if log_flush_due(now, next_log_flush, log_flush_failing, || service.backlog().1) {
            log_flush_failing = false;
            next_log_flush = now
                + match service.flush_logs() {
                    Ok(()) => LOG_FLUSH_INTERVAL_MS,
                    Err(error) => {
                        log::warn!("could not write request logs (will retry): {error}");
                        log_flush_failing = true;
                        RETRY_AFTER_FAILURE_MS
                    }
                };
        }
        // A shorter interval set in the settings applies at once, not after the old one ran out.
        next_stats_flush = next_stats_flush.min(last_stats_flush + stats_interval_ms(service));
        let hour = hour_of_millis(now);
        if now >= next_stats_flush || hour != current_hour {
            current_hour = hour;
            last_stats_flush = now;
            next_stats_flush = now
                + match service.flush_stats(now) {
                    Ok(()) => stats_interval_ms(service),
                    Err(error) => {
                        log::warn!("could not write statistics (will retry): {error}");
                        RETRY_AFTER_FAILURE_MS.min(stats_interval_ms(service))
                    }
                };
        }
    }
}

/// The last writes before the process exits: a few tries each, since what is not written now is
/// lost.
fn final_flush(service: &Arc<StatsService>) {
    for attempt in 1..=3 {
        let logs = service.flush_logs();
        let stats = service.flush_stats(unix_millis());
        match (logs, stats) {
            (Ok(()), Ok(())) => return,
            (logs, stats) => {
                let error = logs.err().or(stats.err()).map(|error| error.to_string()).unwrap_or_default();
                log::error!("final write of statistics and logs failed (try {attempt} of 3): {error}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Whether queued logs are written now: when their interval (or retry time) has come, or when
/// enough wait, unless the database is refusing them.
fn log_flush_due(now: i64, next_log_flush: i64, failing: bool, queued: impl FnOnce() -> usize) -> bool {
    now >= next_log_flush || (!failing && queued() >= LOG_FLUSH_ROWS)
}

fn stats_interval_ms(service: &StatsService) -> i64 {
    i64::try_from(service.settings.get().stats_save_interval_seconds.saturating_mul(1_000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_written_on_time_or_when_many_wait_but_never_early_while_the_database_refuses() {
        assert!(log_flush_due(1_000, 1_000, false, || 0), "the interval has come");
        assert!(!log_flush_due(999, 1_000, false, || LOG_FLUSH_ROWS - 1), "few wait: the interval rules");
        assert!(log_flush_due(999, 1_000, false, || LOG_FLUSH_ROWS), "enough wait: written at once");
        assert!(!log_flush_due(999, 1_000, true, || LOG_FLUSH_ROWS * 3), "after a failure, the retry time rules");
        assert!(log_flush_due(1_000, 1_000, true, || 0), "and the retry comes");
    }
}
