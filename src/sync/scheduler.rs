//! The scheduler thread: named background jobs on timers, run on demand too, each in a thread of
//! its own so a slow job never holds up another (or a request).
//!
//! A job's interval is read from the live settings every time it is planned, so a changed
//! setting applies at once. A failing job is logged with its error, shown in `status`, and
//! retried after `retry_delay` (5 minutes, doubling while it keeps failing, never past its interval).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};

use crate::util::unix_millis;

/// After a failure, the next try comes this soon (unless the job's interval is shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// How a job is planned: `None` means "only on demand" (interval 0 in the settings).
pub type IntervalFn = Box<dyn Fn() -> Option<Duration> + Send + Sync>;
/// The job itself: a short summary on success, the error on failure.
pub type JobFn = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

struct Job {
    name: &'static str,
    interval: IntervalFn,
    run: Arc<JobFn>,
    /// Run once soon after start (as opposed to after one interval).
    run_at_start: bool,
}

/// What the API shows of one job.
#[derive(Clone, Debug, Default)]
pub struct JobStatus {
    pub running: bool,
    pub runs: u64,
    pub failures: u64,
    /// Failures since the last success: each one doubles the wait before the next try.
    pub consecutive_failures: u32,
    pub last_started_ms: Option<i64>,
    pub last_finished_ms: Option<i64>,
    pub last_ok: Option<bool>,
    pub last_result: Option<String>,
    pub next_run_ms: Option<i64>,
}

/// The shared half of the scheduler: job status and the trigger for on-demand runs.
pub struct Scheduler {
    jobs: Mutex<Vec<Arc<Job>>>,
    status: Mutex<HashMap<&'static str, JobStatus>>,
    trigger: Sender<&'static str>,
    trigger_receiver: Mutex<Option<Receiver<&'static str>>>,
}

impl Default for Scheduler {
    fn default() -> Scheduler {
        let (trigger, trigger_receiver) = crossbeam_channel::unbounded();
        Scheduler {
            jobs: Mutex::new(Vec::new()),
            status: Mutex::new(HashMap::new()),
            trigger,
            trigger_receiver: Mutex::new(Some(trigger_receiver)),
        }
    }
}

impl Scheduler {
    /// Adds a job (before `start`).
    pub fn register(&self, name: &'static str, run_at_start: bool, interval: IntervalFn, run: JobFn) {
        self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(Arc::new(Job {
            name,
            interval,
            run: Arc::new(run),
            run_at_start,
        }));
        self.status().insert(name, JobStatus::default());
    }

    /// Asks for a run of `name` as soon as possible (ignored while it runs already).
    pub fn run_soon(&self, name: &'static str) {
        let _ = self.trigger.send(name);
    }

    /// Starts the scheduler thread; it ends when the last `Arc<Scheduler>` is dropped... or never,
    /// in a running gateway.
    pub fn start(self: &Arc<Self>) {
        let Some(trigger_receiver) = self.trigger_receiver.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() else {
            return;
        };
        let scheduler = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("scheduler".to_string())
            .spawn(move || run(&scheduler, &trigger_receiver))
            .expect("spawn the scheduler thread");
    }

    /// Every job's status as JSON for `GET /api/v1/jobs`.
    pub fn status_json(&self) -> Value {
        let jobs = self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let status = self.status();
        let items: Vec<Value> = jobs
            .iter()
            .map(|job| {
                let job_status = status.get(job.name).cloned().unwrap_or_default();
                json!({
                    "name": job.name,
                    "interval_seconds": (job.interval)().map(|interval| interval.as_secs()),
                    "running": job_status.running,
                    "runs": job_status.runs,
                    "failures": job_status.failures,
                    "last_started_at": job_status.last_started_ms.map(crate::stats::log_view::rfc3339_millis),
                    "last_finished_at": job_status.last_finished_ms.map(crate::stats::log_view::rfc3339_millis),
                    "last_ok": job_status.last_ok,
                    "last_result": job_status.last_result,
                    "next_run_at": job_status.next_run_ms.map(crate::stats::log_view::rfc3339_millis),
                })
            })
            .collect();
        json!({ "items": items })
    }

    pub fn job_status(&self, name: &str) -> Option<JobStatus> {
        self.status().get(name).cloned()
    }

    fn status(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, JobStatus>> {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `job` on a thread of its own unless it is running already.
    fn launch(self: &Arc<Self>, job: &Arc<Job>) {
        {
            let mut status = self.status();
            let entry = status.entry(job.name).or_default();
            if entry.running {
                return;
            }
            entry.running = true;
            entry.last_started_ms = Some(unix_millis());
        }
        let scheduler = self.clone();
        let job_name = job.name;
        let job = job.clone();
        let spawned = std::thread::Builder::new().name(format!("job-{}", job.name)).spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)()))
                .unwrap_or_else(|_| Err("the job panicked".to_string()));
            let finished = unix_millis();
            let mut status = scheduler.status();
            let entry = status.entry(job.name).or_default();
            entry.running = false;
            entry.runs += 1;
            entry.last_finished_ms = Some(finished);
            let next_in = match &outcome {
                Ok(summary) => {
                    log::debug!("job {} finished: {summary}", job.name);
                    entry.consecutive_failures = 0;
                    entry.last_ok = Some(true);
                    entry.last_result = Some(summary.clone());
                    (job.interval)()
                }
                Err(error) => {
                    entry.failures += 1;
                    entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
                    entry.last_ok = Some(false);
                    entry.last_result = Some(error.clone());
                    let retry_in = retry_delay(entry.consecutive_failures, (job.interval)());
                    log::warn!("job {} failed (next try in {} s): {error}", job.name, retry_in.as_secs());
                    Some(retry_in)
                }
            };
            entry.next_run_ms = next_in.map(|interval| finished + interval.as_millis() as i64);
        });
        if let Err(error) = spawned {
            log::error!("could not start a thread for job {job_name}: {error}");
            let mut status = self.status();
            if let Some(entry) = status.get_mut(job_name) {
                entry.running = false;
            }
        }
    }
}

/// The wait after the `consecutive_failures`-th failure in a row: 5 minutes, doubling each time
/// (an offline machine is not told every five minutes all day), never past the job's own
/// interval, nor past a day for jobs that only run on demand.
pub fn retry_delay(consecutive_failures: u32, interval: Option<Duration>) -> Duration {
    let doubled = RETRY_AFTER_FAILURE.saturating_mul(1_u32 << consecutive_failures.saturating_sub(1).min(10));
    doubled.min(interval.unwrap_or(Duration::from_secs(86_400)))
}

fn run(weak: &std::sync::Weak<Scheduler>, triggers: &Receiver<&'static str>) {
    {
        let Some(scheduler) = weak.upgrade() else { return };
        let now = unix_millis();
        let jobs = scheduler.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let mut status = scheduler.status();
        for job in &jobs {
            let next = if job.run_at_start { Some(now) } else { (job.interval)().map(|interval| now + interval.as_millis() as i64) };
            status.entry(job.name).or_default().next_run_ms = next;
        }
    }
    loop {
        let Some(scheduler) = weak.upgrade() else { return };
        let now = unix_millis();
        let jobs = scheduler.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let mut due = Vec::new();
        let mut wake_at = now + 60_000;
        {
            let mut status = scheduler.status();
            for job in &jobs {
                let entry = status.entry(job.name).or_default();
                // A job planned with an interval that was later switched off waits for demand;
                // one switched on again is planned from now.
                if entry.next_run_ms.is_none() && !entry.running {
                    entry.next_run_ms = (job.interval)().map(|interval| now + interval.as_millis() as i64);
                }
                if let Some(next) = entry.next_run_ms {
                    if next <= now && !entry.running {
                        due.push(job.clone());
                    } else {
                        wake_at = wake_at.min(next.max(now));
                    }
                }
            }
        }
        for job in &due {
            scheduler.launch(job);
        }
        drop(scheduler);
        let timeout = Duration::from_millis(u64::try_from(wake_at - now).unwrap_or(0).max(50));
        match triggers.recv_timeout(timeout) {
            Ok(name) => {
                let Some(scheduler) = weak.upgrade() else { return };
                let jobs = scheduler.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
                if let Some(job) = jobs.iter().find(|job| job.name == name) {
                    scheduler.launch(job);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn wait_until(mut condition: impl FnMut() -> bool) {
        for _ in 0..200 {
            if condition() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("condition not met within 2 s");
    }

    #[test]
    fn retries_back_off_up_to_the_interval() {
        let hour = Some(Duration::from_secs(3_600));
        assert_eq!(retry_delay(1, hour), Duration::from_secs(300));
        assert_eq!(retry_delay(2, hour), Duration::from_secs(600));
        assert_eq!(retry_delay(3, hour), Duration::from_secs(1_200));
        assert_eq!(retry_delay(5, hour), Duration::from_secs(3_600));
        assert_eq!(retry_delay(60, None), Duration::from_secs(86_400));
        assert_eq!(retry_delay(1, Some(Duration::from_secs(60))), Duration::from_secs(60));
    }

    #[test]
    fn jobs_run_at_start_on_demand_and_failures_are_shown() {
        let scheduler = Arc::new(Scheduler::default());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        scheduler.register("count", true, Box::new(|| None), Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok("counted".to_string())
        }));
        scheduler.register("broken", false, Box::new(|| Some(Duration::from_secs(3_600))), Box::new(|| Err("upstream said no".to_string())));
        scheduler.start();
        wait_until(|| runs.load(Ordering::SeqCst) == 1);
        wait_until(|| scheduler.job_status("count").is_some_and(|status| !status.running));
        scheduler.run_soon("count");
        wait_until(|| runs.load(Ordering::SeqCst) == 2);
        assert!(scheduler.job_status("broken").unwrap().last_ok.is_none(), "an hourly job does not run at start");
        scheduler.run_soon("broken");
        wait_until(|| scheduler.job_status("broken").unwrap().failures == 1);
        let status = scheduler.job_status("broken").unwrap();
        assert_eq!(status.last_result.as_deref(), Some("upstream said no"));
        let retry_in = status.next_run_ms.unwrap() - status.last_finished_ms.unwrap();
        assert_eq!(retry_in, 300_000, "a failed hourly job is retried after 5 minutes");
        let shown = scheduler.status_json();
        assert_eq!(shown["items"][1]["last_ok"], false);
    }
}
