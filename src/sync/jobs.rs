//! The background jobs the scheduler runs, and their intervals.
//!
//! Each job is a plain function of the shared state; registering them here keeps the list of
//! everything the gateway does on its own in one place.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::relay::RelayState;
use crate::stats::StatsService;
use crate::sync::endpoint_probe;
use crate::sync::scheduler::Scheduler;
use crate::util::unix_millis;

/// Job names, for `Scheduler::run_soon`.
pub const PRUNE_LOGS: &str = "prune_logs";
pub const PROBE_ENDPOINTS: &str = "probe_endpoints";

/// How often old request logs are pruned (also right after the retention settings change).
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

pub fn register_all(scheduler: &Arc<Scheduler>, config: &Arc<Config>, relay: &Arc<RelayState>, stats: &Arc<StatsService>) {
    let stats_for_prune = stats.clone();
    scheduler.register(PRUNE_LOGS, true, Box::new(|| Some(PRUNE_INTERVAL)), Box::new(move || prune_logs(&stats_for_prune)));

    let probe_interval = config.relay.probe_interval_seconds;
    if probe_interval > 0 {
        let relay = Arc::downgrade(relay);
        scheduler.register(
            PROBE_ENDPOINTS,
            true,
            Box::new(move || Some(Duration::from_secs(probe_interval))),
            Box::new(move || {
                let relay = relay.upgrade().ok_or_else(|| "the relay is gone".to_string())?;
                endpoint_probe::probe_all(&relay);
                Ok("probed every base URL".to_string())
            }),
        );
    }
}

/// Deletes logs past `log_retention_days` and beyond the newest `log_max_rows`.
pub fn prune_logs(stats: &StatsService) -> Result<String, String> {
    let settings = stats.settings.get();
    let retention_ms = i64::try_from(settings.log_retention_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
    let before_ms = unix_millis().saturating_sub(retention_ms);
    let keep_rows = settings.log_max_rows;
    let deleted = stats.store.call(move |store| store.prune_logs(before_ms, keep_rows)).map_err(|error| error.to_string())?;
    Ok(format!("deleted {deleted} old request logs"))
}
