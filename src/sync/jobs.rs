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
use crate::sync::model_sync;
use crate::sync::price_sync;
use crate::sync::scheduler::Scheduler;
use crate::util::unix_millis;

/// Job names, for `Scheduler::run_soon`.
pub const PRUNE_LOGS: &str = "prune_logs";
pub const PROBE_ENDPOINTS: &str = "probe_endpoints";
pub const ROLL_UP_STATS: &str = "roll_up_stats";
pub const PRICE_SYNC: &str = "price_sync";
pub const PRUNE_RESPONSES: &str = "prune_responses";
pub const MODEL_SYNC: &str = "model_sync";

/// How often old request logs are pruned (also right after the retention settings change).
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);
/// Statistics keep hourly detail this long; older days are rolled into one bucket per UTC day
/// and dimensions, which keeps a year of history at about a twenty-fourth of the rows.
pub const HOURLY_DETAIL_DAYS: i64 = 35;
/// Days rolled up per run, so one run stays short even after a long time without any.
const ROLL_UP_DAYS_PER_RUN: u64 = 60;

pub fn register_all(scheduler: &Arc<Scheduler>, config: &Arc<Config>, relay: &Arc<RelayState>, stats: &Arc<StatsService>) {
    let stats_for_prune = stats.clone();
    scheduler.register(PRUNE_LOGS, true, Box::new(|| Some(PRUNE_INTERVAL)), Box::new(move || prune_logs(&stats_for_prune)));

    // Stored OpenAI Responses past `response_store_hours`, then the oldest beyond the total cap.
    let store_for_responses = relay.store.clone();
    scheduler.register(
        PRUNE_RESPONSES,
        true,
        Box::new(|| Some(PRUNE_INTERVAL)),
        Box::new(move || crate::relay::response_store::prune(&store_for_responses, unix_millis() / 1_000)),
    );

    let stats_for_roll_up = stats.clone();
    scheduler.register(
        ROLL_UP_STATS,
        true,
        Box::new(|| Some(Duration::from_secs(3_600))),
        Box::new(move || roll_up_stats(&stats_for_roll_up, unix_millis() / 1_000)),
    );

    // At start (the compiled-in snapshot may be months old) and then every
    // `price_sync_interval_hours`; 0 leaves later syncs to `POST /api/v1/prices/sync`.
    let stats_for_prices = stats.clone();
    let settings_for_prices = stats.settings.clone();
    let price_client = relay.upstream.clone();
    scheduler.register(
        PRICE_SYNC,
        true,
        Box::new(move || {
            let hours = settings_for_prices.get().price_sync_interval_hours;
            (hours > 0).then(|| Duration::from_secs(hours.saturating_mul(3_600)))
        }),
        Box::new(move || price_sync::sync_prices(&stats_for_prices, &price_client)),
    );

    // Not at start: a restart should not hit every upstream's model list at once. Every
    // `model_sync_interval_hours`; 0 leaves syncing to `POST /api/v1/channels/{id}/sync-models`.
    let settings_for_models = stats.settings.clone();
    let relay_for_models = Arc::downgrade(relay);
    scheduler.register(
        MODEL_SYNC,
        false,
        Box::new(move || {
            let hours = settings_for_models.get().model_sync_interval_hours;
            (hours > 0).then(|| Duration::from_secs(hours.saturating_mul(3_600)))
        }),
        Box::new(move || {
            let relay = relay_for_models.upgrade().ok_or_else(|| "the relay is gone".to_string())?;
            model_sync_job(&relay)
        }),
    );

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

/// The `model_sync` job: syncs every `auto_sync` channel, then reloads the relay's snapshot so
/// changed model lists and group items route at once (also after a partial failure, since the
/// channels that did sync were written).
pub fn model_sync_job(relay: &RelayState) -> Result<String, String> {
    let result = model_sync::sync_all_auto_channels(&relay.upstream, &relay.store);
    if let Err(error) = relay.reload_snapshot() {
        log::warn!("model sync could not reload the relay snapshot: {error}");
    }
    result
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

/// Rolls the hourly buckets of days older than `HOURLY_DETAIL_DAYS` into one bucket per UTC day
/// (stored at the day's first hour). Idempotent: a rolled day is not picked again, and two nodes
/// rolling the same day write the same rows.
pub fn roll_up_stats(stats: &StatsService, now_seconds: i64) -> Result<String, String> {
    use crate::store::entities::{StatsGrouping, StatsRow};
    let cutoff = (now_seconds.div_euclid(86_400) - HOURLY_DETAIL_DAYS) * 86_400;
    stats
        .store
        .call(move |store| {
            let days = store.stats_days_to_roll_up(cutoff, ROLL_UP_DAYS_PER_RUN)?;
            for day in &days {
                let rows: Vec<StatsRow> = store
                    .stats_grouped(*day, day + 86_400, StatsGrouping::AllDimensions)?
                    .into_iter()
                    .map(|mut row| {
                        row.key.hour = *day;
                        row
                    })
                    .collect();
                store.replace_stats_range(*day, day + 86_400, &rows)?;
            }
            Ok(format!("rolled {} days of hourly statistics into daily rows", days.len()))
        })
        .map_err(|error: crate::store::StoreError| error.to_string())
}
