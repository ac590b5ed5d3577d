//! Turning one finished request into its statistics bucket, its counters and its log row.
//!
//! Pure: the clock, ids and prices are passed in.

use crate::relay::record::RequestRecord;
use crate::stats::deltas::BucketRef;
use crate::store::entities::{LogRow, StatsCounters};
use crate::store::log_detail::{self, AttemptFields, DetailFields};

/// Seconds in an hour; buckets start on whole UTC hours.
pub const HOUR_SECONDS: i64 = 3_600;

/// The start (Unix seconds) of the UTC hour holding `unix_millis`.
pub fn hour_of_millis(unix_millis: i64) -> i64 {
    unix_millis.div_euclid(1_000).div_euclid(HOUR_SECONDS) * HOUR_SECONDS
}

/// Whether the client got a successful answer.
pub fn succeeded(record: &RequestRecord) -> bool {
    (200..300).contains(&record.status) && record.error.is_none()
}

/// The bucket a record lands in: the hour it finished in, and its channel, key, group and model.
pub fn bucket_of(record: &RequestRecord, finished_at_ms: i64) -> BucketRef<'_> {
    BucketRef {
        hour: hour_of_millis(finished_at_ms),
        channel_id: record.channel_id.unwrap_or(0),
        api_key_id: record.client_key_id.unwrap_or(0),
        group: &record.group,
        model: &record.upstream_model,
    }
}

/// The counters one record adds, with its cost already computed.
pub fn counters_of(record: &RequestRecord, cost_micros: i64) -> StatsCounters {
    let usage = record.usage.unwrap_or_default();
    let success = succeeded(record);
    StatsCounters {
        requests: 1,
        success: i64::from(success),
        failed: i64::from(!success),
        input_tokens: saturating_i64(usage.input_tokens),
        output_tokens: saturating_i64(usage.output_tokens),
        cache_read_tokens: saturating_i64(usage.cached_tokens),
        cache_write_tokens: saturating_i64(usage.cache_write_tokens),
        reasoning_tokens: saturating_i64(usage.reasoning_tokens),
        cost_micros,
        latency_ms_sum: saturating_i64(record.total_ms),
        ttft_ms_sum: record.ttft_ms.map(saturating_i64).unwrap_or(0),
        ttft_count: i64::from(record.ttft_ms.is_some()),
    }
}

/// The log row of a record (bodies are added by the caller when they are kept): its `detail`
/// encoded straight from the record's strings, which are not copied (this runs for every
/// request); only the group name moves into the row.
pub fn row_of(record: RequestRecord, id: i64, cost_micros: i64) -> LogRow {
    let usage = record.usage.unwrap_or_default();
    let detail = log_detail::encode(DetailFields {
        api_key_name: &record.client_key_name,
        channel_name: &record.channel_name,
        model: &record.upstream_model,
        client_format: record.client_format,
        status_code: record.status,
        attempts: record.attempts.len() as i64,
        input_tokens: saturating_i64(usage.input_tokens),
        output_tokens: saturating_i64(usage.output_tokens),
        cache_read_tokens: saturating_i64(usage.cached_tokens),
        cache_write_tokens: saturating_i64(usage.cache_write_tokens),
        reasoning_tokens: saturating_i64(usage.reasoning_tokens),
        cost_micros,
        ttft_ms: record.ttft_ms.map(saturating_i64),
        latency_ms: saturating_i64(record.total_ms),
        stream: record.stream,
        error: record.error.as_deref().unwrap_or_default(),
        attempt_details: record.attempts.iter().map(|attempt| AttemptFields {
            channel_id: attempt.channel_id,
            channel_name: &attempt.channel_name,
            key_id: attempt.key_id,
            base_url: &attempt.base_url,
            model: &attempt.upstream_model,
            outcome: &attempt.outcome,
            status: attempt.status,
            duration_ms: attempt.duration_ms,
        }),
    });
    LogRow {
        id,
        time_ms: record.started_at_ms,
        api_key_id: record.client_key_id,
        success: succeeded(&record),
        channel_id: record.channel_id,
        group: record.group,
        detail,
        request_body: None,
        response_body: None,
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::usage::Usage;

    #[test]
    fn hours_are_whole_utc_hours() {
        assert_eq!(hour_of_millis(0), 0);
        assert_eq!(hour_of_millis(3_599_999), 0);
        assert_eq!(hour_of_millis(3_600_000), 3_600);
        assert_eq!(hour_of_millis(-1), -3_600);
    }

    #[test]
    fn a_failed_record_counts_as_failed_with_its_tokens() {
        let record = RequestRecord {
            started_at_ms: 0,
            client_key_id: Some(3),
            client_key_name: "k".to_string(),
            group: "g".to_string(),
            client_format: "openai_chat",
            stream: true,
            channel_id: Some(2),
            channel_name: "c".to_string(),
            key_id: Some(1),
            upstream_model: "m".to_string(),
            status: 200,
            attempts: Vec::new(),
            usage: Some(Usage { input_tokens: 10, output_tokens: 4, cached_tokens: 2, cache_write_tokens: 1, reasoning_tokens: 3 }),
            ttft_ms: None,
            total_ms: 50,
            error: Some("client gone mid-stream".to_string()),
            request_body: None,
            response_body: None,
        };
        let counters = counters_of(&record, 7);
        assert_eq!((counters.requests, counters.success, counters.failed), (1, 0, 1));
        assert_eq!((counters.input_tokens, counters.output_tokens, counters.cache_read_tokens), (10, 4, 2));
        assert_eq!((counters.cache_write_tokens, counters.reasoning_tokens, counters.cost_micros), (1, 3, 7));
        assert_eq!((counters.ttft_count, counters.latency_ms_sum), (0, 50));
        let key = bucket_of(&record, 7_200_500);
        assert_eq!((key.hour, key.channel_id, key.api_key_id, key.group, key.model), (7_200, 2, 3, record.group.as_str(), record.upstream_model.as_str()));
    }
}
