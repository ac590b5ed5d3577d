//! Measuring each channel base URL's delay, so the relay prefers the fastest live endpoint and
//! brings a demoted one back once it answers again.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::relay::RelayState;
use crate::upstream::client::UpstreamRequest;

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Probes one base URL: the time until any HTTP answer arrives. Any status counts as reachable
/// (most providers answer 401 or 404 on a bare base URL); only a failed connection does not.
pub fn probe(relay: &RelayState, base_url: &str, proxy: &str) -> Option<Duration> {
    let url = base_url.trim_end_matches('#').trim_end_matches('/').to_string();
    let started = Instant::now();
    let response = relay
        .upstream
        .send(UpstreamRequest {
            method: "HEAD".to_string(),
            url,
            // A probe's connection never joins the relay's pool: some servers answer HEAD with
            // a body anyway, which would corrupt the next request on that connection.
            headers: vec![("connection".to_string(), "close".to_string())],
            body: Vec::new(),
            proxy: (!proxy.is_empty()).then(|| proxy.to_string()),
            response_head_timeout: Some(PROBE_TIMEOUT),
        })
        .ok()?;
    let elapsed = started.elapsed();
    let _ = response.body.take(64 * 1024).read_to_end(&mut Vec::new());
    Some(elapsed)
}

/// Probes every base URL of every enabled channel and records the results.
pub fn probe_all(relay: &RelayState) {
    let snapshot = relay.snapshot.current();
    for channel in snapshot.channels_by_id.values().filter(|channel| channel.enabled) {
        for base_url in &channel.base_urls {
            let latency = probe(relay, base_url, &channel.proxy);
            relay.health.lock().endpoints.record_probe(channel.id, base_url, latency);
        }
    }
}

/// Probes, on a std thread, the base URLs the relay has never measured (new channels and URLs
/// after an admin change); known URLs keep their state until the next periodic pass.
pub fn probe_new_endpoints_soon(relay: &Arc<RelayState>) {
    let relay = Arc::downgrade(relay);
    let _ = std::thread::Builder::new().name("endpoint-probe".to_string()).spawn(move || {
        let Some(relay) = relay.upgrade() else { return };
        let snapshot = relay.snapshot.current();
        for channel in snapshot.channels_by_id.values().filter(|channel| channel.enabled) {
            for base_url in &channel.base_urls {
                if relay.health.lock().endpoints.status(channel.id, base_url).is_some() {
                    continue;
                }
                let latency = probe(&relay, base_url, &channel.proxy);
                relay.health.lock().endpoints.record_probe(channel.id, base_url, latency);
            }
        }
    });
}

