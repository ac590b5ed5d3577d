//! Turning one finished request into its statistics bucket, its counters and its log row.
//!
//! Pure: the clock, ids and prices are passed in.

use crate::relay::record::RequestRecord;
use crate::stats::deltas::BucketRef;
use crate::stats::metrics::MetricsSample;
use crate::stats::redact;
use crate::store::entities::{LogRow, StatsCounters};
use crate::store::log_detail::{self, AttemptFields, DetailFields};

/// A finished request as the stats writer takes it: priced, counted, and with its log row
/// encoded.
///
/// It is made from the `RequestRecord` on the relay's worker, and the record is dropped there.
/// Sending the record itself and freeing its dozen strings on the writer thread cost the workers
/// more than the counting did: memory freed by another thread returns to the allocating thread
/// by a slower shared path, and the worker's next allocations miss its cache. Measured with
/// `scripts/bench --stats-off`: shipping each record to a thread that only dropped it added 5%
/// CPU per request. Now a few strings cross over, and the detail is encoded while the record's
/// strings are still in the worker's cache.
pub struct CountedRequest {
    pub finished_at_ms: i64,
    /// The bucket's channel (0: none answered) and the client key.
    pub channel_id: i64,
    pub client_key_id: Option<i64>,
    pub group: String,
    pub model: String,
    pub counters: StatsCounters,
    /// The log row, when logs are kept: without its id (the writer gives ids, in order) and with
    /// an empty group (the writer moves `group` in once the request is counted).
    pub row: Option<LogRow>,
    /// When `/metrics` is served.
    pub metrics: Option<MetricsSample>,
    /// The access-log line, when info logging is on (written by the writer: a coroutine worker
    /// never writes to the log).
    pub access_line: Option<String>,
    /// A copy of the record for `StatsService::recent`, when it keeps records: pushed by the
    /// writer once the request is counted, so whoever sees it there can read its numbers.
    pub recent: Option<RequestRecord>,
}

impl CountedRequest {
    /// The statistics bucket the request lands in: the UTC hour it finished in, and its channel,
    /// key, group and model.
    pub fn bucket(&self) -> BucketRef<'_> {
        BucketRef {
            hour: hour_of_millis(self.finished_at_ms),
            channel_id: self.channel_id,
            api_key_id: self.client_key_id.unwrap_or(0),
            group: &self.group,
            model: &self.model,
        }
    }
}

/// What to make of a record besides its counters, from the settings in force.
pub struct CountingOptions {
    pub keep_log: bool,
    /// The cap of each kept body, when logs keep bodies.
    pub body_limit: Option<usize>,
    pub metrics: bool,
    pub access_log: bool,
}

/// Counts a record that cost `cost_micros` and finished at `finished_at_ms`, consuming it.
pub fn count(mut record: RequestRecord, finished_at_ms: i64, cost_micros: i64, options: &CountingOptions) -> CountedRequest {
    let counters = counters_of(&record, cost_micros);
    let access_line = options.access_log.then(|| access_line(&record));
    let row = options.keep_log.then(|| {
        let mut row = row_of(&record, cost_micros);
        if let Some(limit) = options.body_limit {
            row.request_body = record.request_body.as_deref().map(|body| redact::body_for_log(body, limit));
            row.response_body = record.response_body.as_deref().map(|body| redact::body_for_log(body, limit));
        }
        row
    });
    let group = std::mem::take(&mut record.group);
    let model = std::mem::take(&mut record.upstream_model);
    let (channel_id, client_key_id) = (record.channel_id.unwrap_or(0), record.client_key_id);
    let metrics = options.metrics.then(|| MetricsSample::of(record));
    CountedRequest { finished_at_ms, channel_id, client_key_id, group, model, counters, row, metrics, access_line, recent: None }
}

/// The access-log line of a record: never a key, body or token.
pub fn access_line(record: &RequestRecord) -> String {
    let usage = record.usage.map(|usage| format!(" tokens={}/{}", usage.input_tokens, usage.output_tokens)).unwrap_or_default();
    format!(
        "{} model={} channel={} status={} attempts={} ttft_ms={} total_ms={}{}{}",
        record.client_format,
        record.group,
        record.channel_name,
        record.status,
        record.attempts.len(),
        record.ttft_ms.map(|ttft| ttft.to_string()).unwrap_or_else(|| "-".to_string()),
        record.total_ms,
        usage,
        record.error.as_ref().map(|error| format!(" error={error:?}")).unwrap_or_default(),
    )
}

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

/// The log row of a record, without id, group and bodies (see `CountedRequest::row`): its
/// `detail` encoded straight from the record's strings, which are not copied (this runs for
/// every request).
fn row_of(record: &RequestRecord, cost_micros: i64) -> LogRow {
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
        id: 0,
        time_ms: record.started_at_ms,
        api_key_id: record.client_key_id,
        success: succeeded(record),
        channel_id: record.channel_id,
        group: String::new(),
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
        let options = CountingOptions { keep_log: true, body_limit: None, metrics: false, access_log: false };
        let counted = count(record.clone(), 7_200_500, 7, &options);
        let key = counted.bucket();
        assert_eq!((key.hour, key.channel_id, key.api_key_id, key.group, key.model), (7_200, 2, 3, "g", "m"));
        let row = counted.row.as_ref().unwrap();
        assert_eq!((row.id, row.group.as_str(), row.api_key_id, row.channel_id, row.success), (0, "", Some(3), Some(2), false));
        assert!(row.request_body.is_none() && counted.metrics.is_none() && counted.access_line.is_none());
    }

    #[test]
    fn bodies_metrics_and_the_access_line_are_made_only_when_asked() {
        let record = RequestRecord {
            started_at_ms: 0,
            client_key_id: None,
            client_key_name: String::new(),
            group: "g".to_string(),
            client_format: "anthropic",
            stream: false,
            channel_id: None,
            channel_name: "c".to_string(),
            key_id: None,
            upstream_model: "m".to_string(),
            status: 502,
            attempts: Vec::new(),
            usage: None,
            ttft_ms: None,
            total_ms: 9,
            error: Some("boom".to_string()),
            request_body: Some(b"{\"model\":\"g\"}".to_vec()),
            response_body: Some(b"{}".to_vec()),
        };
        let without_log = count(record.clone(), 0, 0, &CountingOptions { keep_log: false, body_limit: Some(100), metrics: false, access_log: false });
        assert!(without_log.row.is_none());
        let everything = count(record, 0, 0, &CountingOptions { keep_log: true, body_limit: Some(100), metrics: true, access_log: true });
        let row = everything.row.as_ref().unwrap();
        assert_eq!(row.request_body.as_deref(), Some("{\"model\":\"g\"}"));
        assert_eq!(row.response_body.as_deref(), Some("{}"));
        assert!(everything.metrics.is_some());
        let line = everything.access_line.unwrap();
        assert!(line.starts_with("anthropic model=g channel=c status=502") && line.ends_with("error=\"boom\""), "{line}");
        assert_eq!((everything.group.as_str(), everything.model.as_str(), everything.channel_id), ("g", "m", 0));
    }
}
