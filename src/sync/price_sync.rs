//! Fetching the models.dev price catalogue (`GET {models_dev_url}/api.json`) and putting it in
//! force: at start and every `price_sync_interval_hours` from the scheduler, and on
//! `POST /api/v1/prices/sync`.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::catalog::Catalog;
use crate::stats::StatsService;
use crate::upstream::client::{UpstreamClient, UpstreamRequest};
use crate::upstream::control::{with_call_control, CallControl};
use crate::util::unix_millis;

/// The whole download, head to last byte, must finish within this.
const SYNC_DEADLINE: Duration = Duration::from_secs(60);
/// A read that gets no byte for this long fails, so a stalled server cannot hold the sync
/// until the deadline check runs.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// The catalogue is about 2.5 MB today; anything far bigger is not the document we expect.
const MAX_CATALOGUE_BYTES: usize = 32 * 1024 * 1024;

/// Fetches and parses the catalogue, puts it in force and rebuilds the price book. On any
/// failure the catalogue in force stays, the error is recorded for `GET /api/v1/prices/sync`
/// and returned. When syncs overlap, the one started last wins (`PriceState::finish_sync`). Blocks: call it from a thread or a coroutine (the network and store waits park
/// a coroutine rather than its worker).
pub fn sync_prices(stats: &Arc<StatsService>, client: &UpstreamClient) -> Result<String, String> {
    let ticket = stats.prices.begin_sync();
    let url = format!("{}/api.json", stats.settings.get().models_dev_url.trim_end_matches('/'));
    let fetched = fetch_catalog(client, &url);
    let summary = match &fetched {
        Ok(catalog) => Ok(format!("synced {} prices of {} providers from {url}", catalog.len(), catalog.provider_count())),
        Err(error) => Err(error.clone()),
    };
    let applied = stats.prices.finish_sync(ticket, fetched, unix_millis() / 1_000);
    let summary = summary?;
    if !applied {
        return Ok(format!("{summary}, but a newer sync finished first and stays in force"));
    }
    let service = stats.clone();
    stats.store.call(move |store| service.prices.rebuild(store)).map_err(|error| {
        let message = format!("the catalogue is in force but the price book could not be rebuilt: {error}");
        stats.prices.record_sync_error(message.clone());
        message
    })?;
    Ok(summary)
}

/// Downloads `url` within the deadline and size bound and parses it as a models.dev catalogue.
fn fetch_catalog(client: &UpstreamClient, url: &str) -> Result<Catalog, String> {
    let started = Instant::now();
    let control = CallControl::new();
    control.set_read_timeout(Some(READ_TIMEOUT));
    let body = with_call_control(&control, || -> Result<Vec<u8>, String> {
        let response = client
            .send(UpstreamRequest {
                method: "GET".to_string(),
                url: url.to_string(),
                headers: vec![("accept".to_string(), "application/json".to_string())],
                body: Vec::new(),
                proxy: None,
                response_head_timeout: Some(SYNC_DEADLINE),
            })
            .map_err(|error| format!("GET {url} failed: {error}"))?;
        if !(200..300).contains(&response.status) {
            return Err(format!("GET {url} answered {}", response.status));
        }
        let mut body = Vec::new();
        let mut reader = response.body;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            if started.elapsed() > SYNC_DEADLINE {
                return Err(format!("GET {url} took longer than {} s", SYNC_DEADLINE.as_secs()));
            }
            let read = reader.read(&mut buffer).map_err(|error| format!("reading {url} failed: {error}"))?;
            if read == 0 {
                return Ok(body);
            }
            if body.len() + read > MAX_CATALOGUE_BYTES {
                return Err(format!("{url} is larger than {} MiB", MAX_CATALOGUE_BYTES / (1024 * 1024)));
            }
            body.extend_from_slice(&buffer[..read]);
        }
    })?;
    Catalog::parse(&body).map_err(|error| format!("{url}: {error}"))
}
