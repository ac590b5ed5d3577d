//! Turning one finished request into its statistics bucket, its counters and its log row.
//!
//! Pure: the clock, ids and prices are passed in.

use std::fmt::Write as _;

use crate::relay::record::RequestRecord;
use crate::stats::batches::{CountedBatch, CountedEntry, EntryExtras, LoggedFields};
use crate::stats::deltas::BucketRef;
use crate::stats::metrics::MetricsSample;
use crate::stats::redact;
use crate::store::entities::StatsCounters;
use crate::store::log_detail::{self, AttemptFields, DetailFields};

/// The statistics bucket an entry lands in: the UTC hour it finished in, and its channel, key,
/// group and model.
pub fn bucket_of<'batch>(batch: &'batch CountedBatch, entry: &CountedEntry) -> BucketRef<'batch> {
    BucketRef {
        hour: hour_of_millis(entry.finished_at_ms),
        channel_id: entry.channel_id,
        api_key_id: entry.client_key_id.unwrap_or(0),
        group: batch.text(entry.group),
        model: batch.text(entry.model),
    }
}

/// What to make of a record besides its counters, from the settings in force.
pub struct CountingOptions {
    pub keep_log: bool,
    /// The cap of each kept body, when logs keep bodies.
    pub body_limit: Option<usize>,
    pub metrics: bool,
    pub access_log: bool,
    /// Whether a copy of the record is kept for the recent-records view.
    pub keep_record: bool,
}

/// Counts a record that cost `cost_micros` and finished at `finished_at_ms` into `batch`, as
/// the entry numbered `sequence`, consuming the record.
///
/// This runs on the relay's worker, which drops the record; the writer gets plain numbers and
/// text in the batch's buffer (see `stats::batches` for why no memory of a request crosses
/// threads). The log's detail is encoded here, while the record's strings are in the worker's
/// cache.
pub fn count_into(batch: &mut CountedBatch, sequence: u64, record: RequestRecord, finished_at_ms: i64, cost_micros: i64, options: &CountingOptions) {
    let counters = counters_of(&record, cost_micros);
    let access_line = options.access_log.then(|| batch.write_text(|out| write_access_line(out, &record)));
    let log = options.keep_log.then(|| LoggedFields {
        time_ms: record.started_at_ms,
        api_key_id: record.client_key_id,
        channel_id: record.channel_id,
        success: succeeded(&record),
        detail: batch.write_text(|out| encode_detail(out, &record, cost_micros)),
        request_body: options.body_limit.zip(record.request_body.as_deref()).map(|(limit, body)| batch.push_text(&redact::body_for_log(body, limit))),
        response_body: options.body_limit.zip(record.response_body.as_deref()).map(|(limit, body)| batch.push_text(&redact::body_for_log(body, limit))),
    });
    let group = batch.push_text(&record.group);
    let model = batch.push_text(&record.upstream_model);
    let (channel_id, client_key_id) = (record.channel_id.unwrap_or(0), record.client_key_id);
    let extras = (options.metrics || options.keep_record).then(|| {
        let recent = options.keep_record.then(|| record.clone());
        Box::new(EntryExtras { metrics: options.metrics.then(|| MetricsSample::of(record)), recent })
    });
    batch.entries.push(CountedEntry { sequence, finished_at_ms, channel_id, client_key_id, group, model, counters, log, access_line, extras });
}

/// The access-log line of a record: never a key, body or token.
pub fn write_access_line(out: &mut String, record: &RequestRecord) {
    let _ = write!(
        out,
        "{} model={} channel={} status={} attempts={} ttft_ms=",
        record.client_format,
        record.group,
        record.channel_name,
        record.status,
        record.attempts.len(),
    );
    let _ = match record.ttft_ms {
        Some(ttft) => write!(out, "{ttft}"),
        None => write!(out, "-"),
    };
    let _ = write!(out, " total_ms={}", record.total_ms);
    if let Some(usage) = record.usage {
        let _ = write!(out, " tokens={}/{}", usage.input_tokens, usage.output_tokens);
    }
    if let Some(error) = &record.error {
        let _ = write!(out, " error={error:?}");
    }
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

/// Appends the `detail` column of a record's log, encoded straight from the record's strings,
/// which are not copied (this runs for every request).
fn encode_detail(out: &mut String, record: &RequestRecord, cost_micros: i64) {
    let usage = record.usage.unwrap_or_default();
    log_detail::encode_into(out, DetailFields {
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
        let options = CountingOptions { keep_log: true, body_limit: None, metrics: false, access_log: false, keep_record: false };
        let mut batch = CountedBatch::default();
        count_into(&mut batch, 41, record.clone(), 7_200_500, 7, &options);
        let counted = &batch.entries[0];
        assert_eq!((counted.sequence, counted.counters), (41, counters));
        let key = bucket_of(&batch, counted);
        assert_eq!((key.hour, key.channel_id, key.api_key_id, key.group, key.model), (7_200, 2, 3, "g", "m"));
        let log = counted.log.unwrap();
        assert_eq!((log.time_ms, log.api_key_id, log.channel_id, log.success), (0, Some(3), Some(2), false));
        let mut detail = crate::store::entities::RequestLog::default();
        crate::store::log_detail::decode_into(batch.text(log.detail), &mut detail).unwrap();
        assert_eq!((detail.api_key_name.as_str(), detail.error.as_str(), detail.cost_micros), ("k", "client gone mid-stream", 7));
        assert!(log.request_body.is_none() && counted.extras.is_none() && counted.access_line.is_none());
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
        let mut batch = CountedBatch::default();
        let nothing_more = CountingOptions { keep_log: false, body_limit: Some(100), metrics: false, access_log: false, keep_record: false };
        count_into(&mut batch, 0, record.clone(), 0, 0, &nothing_more);
        assert!(batch.entries[0].log.is_none() && batch.entries[0].extras.is_none());
        let everything = CountingOptions { keep_log: true, body_limit: Some(100), metrics: true, access_log: true, keep_record: true };
        count_into(&mut batch, 1, record.clone(), 0, 0, &everything);
        let entry = &batch.entries[1];
        let log = entry.log.unwrap();
        assert_eq!(log.request_body.map(|span| batch.text(span)), Some("{\"model\":\"g\"}"));
        assert_eq!(log.response_body.map(|span| batch.text(span)), Some("{}"));
        let extras = entry.extras.as_ref().unwrap();
        assert!(extras.metrics.is_some());
        assert_eq!(extras.recent.as_ref(), Some(&record));
        let line = batch.text(entry.access_line.unwrap());
        assert!(line.starts_with("anthropic model=g channel=c status=502") && line.ends_with("error=\"boom\""), "{line}");
        assert_eq!((batch.text(entry.group), batch.text(entry.model), entry.channel_id), ("g", "m", 0));
    }
}
