//! `GET /metrics`: Prometheus text format 0.0.4, when `metrics_enabled`; a bearer
//! `metrics_token` is required when one is set; 404 when disabled (as if the route did not exist).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde_json::json;

use crate::api::AdminContext;
use crate::http::{Request, Response};
use crate::relay::breaker::OpenPhase;
use crate::relay::RelayState;
use crate::stats::metrics::escape;

pub fn handle(context: &AdminContext, relay: &RelayState, request: &Request) -> Response {
    let settings = context.settings.get();
    if !settings.metrics_enabled {
        return Response::json(404, &json!({"error": {"message": "metrics are disabled (settings: metrics_enabled)", "type": "not_found"}}));
    }
    if !settings.metrics_token.is_empty() {
        let presented = request.header("authorization").and_then(|value| value.strip_prefix("Bearer ")).map(str::trim);
        if !presented.is_some_and(|token| constant_time_equal(token.as_bytes(), settings.metrics_token.as_bytes())) {
            return Response::json(401, &json!({"error": {"message": "send Authorization: Bearer <metrics_token>", "type": "unauthenticated"}}))
                .with_header("www-authenticate", "Bearer");
        }
    }
    Response::bytes(200, "text/plain; version=0.0.4; charset=utf-8", render(context, relay).into_bytes())
}

fn render(context: &AdminContext, relay: &RelayState) -> String {
    let stats = &context.stats;
    let mut output = String::with_capacity(4_096);
    stats.relay_metrics.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).render(&mut output);
    let gauge = |output: &mut String, name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(output, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    };
    gauge(&mut output, "octopus_records_dropped_total", "counter", "Finished-request records dropped because the stats writer fell behind.", relay.records.dropped().to_string());
    gauge(&mut output, "octopus_stats_writer_queue_depth", "gauge", "Records waiting for the stats writer.", relay.records.queued().to_string());
    let (deltas, logs) = stats.backlog();
    gauge(&mut output, "octopus_stats_unwritten_buckets", "gauge", "Statistics buckets not yet written to the database.", deltas.to_string());
    gauge(&mut output, "octopus_logs_unwritten", "gauge", "Request logs not yet written to the database.", logs.to_string());
    let metrics = &stats.metrics;
    gauge(&mut output, "octopus_stats_flushes_total", "counter", "Successful statistics writes.", metrics.stats_flushes.load(Ordering::Relaxed).to_string());
    gauge(&mut output, "octopus_stats_flush_failures_total", "counter", "Failed statistics writes (retried).", metrics.stats_flush_failures.load(Ordering::Relaxed).to_string());
    gauge(&mut output, "octopus_logs_dropped_total", "counter", "Request logs dropped while the database could not take them.", metrics.logs_dropped.load(Ordering::Relaxed).to_string());
    let last_flush_ms = metrics.last_flush_at_ms.load(Ordering::Relaxed);
    gauge(&mut output, "octopus_stats_last_flush_timestamp_seconds", "gauge", "When statistics were last written (Unix seconds).", format!("{}", last_flush_ms as f64 / 1_000.0));
    gauge(&mut output, "octopus_requests_in_flight", "gauge", "Relay requests being served.", relay.in_flight().to_string());
    output.push_str("# HELP octopus_breaker_open Circuit breakers not closed (1 per channel, key and model): phase cooling_down, ready_to_probe or probing.\n# TYPE octopus_breaker_open gauge\n");
    let now = relay.health.now_ms();
    let snapshot = relay.snapshot.current();
    for breaker in relay.health.lock().breakers.snapshot(now) {
        let channel = snapshot.channels_by_id.get(&breaker.key.channel_id).map(|channel| channel.name.clone()).unwrap_or_default();
        let phase = match breaker.phase {
            OpenPhase::CoolingDown { .. } => "cooling_down",
            OpenPhase::ReadyToProbe => "ready_to_probe",
            OpenPhase::Probing => "probing",
        };
        let _ = writeln!(
            output,
            "octopus_breaker_open{{channel=\"{}\",key_id=\"{}\",model=\"{}\",phase=\"{phase}\"}} 1",
            escape(&channel),
            breaker.key.key_id,
            escape(&breaker.key.model)
        );
    }
    output
}

/// Compares secrets without stopping at the first difference.
fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0_u8, |difference, (a, b)| difference | (a ^ b)) == 0
}
