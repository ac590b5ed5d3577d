//! The JSON shape of a request log in the admin API and the live tail.

use serde_json::{json, Value};

use crate::stats::pricing::micros_to_usd;
use crate::store::entities::RequestLog;

/// A log as a list item: `id, time, api_key_id, api_key_name, group, channel_id, channel_name,
/// model, status_code, success, attempts, ..tokens, cost, ttft_ms, latency_ms, stream, error`.
pub fn log_item(log: &RequestLog) -> Value {
    json!({
        "id": log.id,
        "time": rfc3339_millis(log.time_ms),
        "api_key_id": log.api_key_id,
        "api_key_name": log.api_key_name,
        "group": log.group,
        "channel_id": log.channel_id,
        "channel_name": log.channel_name,
        "model": log.model,
        "client_format": log.client_format,
        "status_code": log.status_code,
        "success": log.success,
        "attempts": log.attempts,
        "input_tokens": log.input_tokens,
        "output_tokens": log.output_tokens,
        "cache_read_tokens": log.cache_read_tokens,
        "cache_write_tokens": log.cache_write_tokens,
        "reasoning_tokens": log.reasoning_tokens,
        "cost": micros_to_usd(log.cost_micros),
        "ttft_ms": log.ttft_ms,
        "latency_ms": log.latency_ms,
        "stream": log.stream,
        "error": if log.error.is_empty() { Value::Null } else { Value::String(log.error.clone()) },
    })
}

/// A log with its attempts and (when kept) bodies, for `GET /api/v1/logs/{id}`.
pub fn log_detail(log: &RequestLog) -> Value {
    let mut item = log_item(log);
    item["attempt_details"] = serde_json::to_value(&log.attempt_details).unwrap_or(Value::Null);
    item["request_body"] = log.request_body.clone().map_or(Value::Null, Value::String);
    item["response_body"] = log.response_body.clone().map_or(Value::Null, Value::String);
    item
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_millis(unix_millis: i64) -> String {
    let seconds = unix_millis.div_euclid(1000);
    let millis = unix_millis.rem_euclid(1000);
    let (year, month, day) = crate::stats::query::civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_780_000_000_123), "2026-05-28T20:26:40.123Z");
    }
}
