//! Counters and latency histograms for Prometheus, filled by the writer thread from each request's
//! `MetricsSample`, and their rendering in the text exposition format 0.0.4.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::relay::record::RequestRecord;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

#[derive(Clone, Debug, Default)]
struct Histogram {
    bucket_counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        self.count += 1;
        self.sum_seconds += seconds;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(self.bucket_counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
    }
}

/// Maps nested by label (group, then channel, then status), so that counting a request looks
/// labels up by reference and allocates only the first time a label is seen.
#[derive(Default)]
pub struct RelayMetrics {
    requests: BTreeMap<String, BTreeMap<String, BTreeMap<u16, Histogram>>>,
    /// Attempts by channel, then outcome class.
    attempts: BTreeMap<String, BTreeMap<&'static str, u64>>,
}

/// The entry for `key`, inserting a default one (and copying the key) only when it is missing.
fn entry_by_str<'map, V: Default>(map: &'map mut BTreeMap<String, V>, key: &str) -> &'map mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("inserted just above")
}

/// What the metrics count of one finished request: taken from its record on the relay's worker
/// (strings moved, not copied), counted on the writer thread.
#[derive(Debug)]
pub struct MetricsSample {
    channel_name: String,
    status: u16,
    total_ms: u64,
    /// Each attempt's channel and outcome class.
    attempts: Vec<(String, &'static str)>,
}

impl MetricsSample {
    pub fn of(record: RequestRecord) -> MetricsSample {
        MetricsSample {
            channel_name: record.channel_name,
            status: record.status,
            total_ms: record.total_ms,
            attempts: record
                .attempts
                .into_iter()
                .map(|attempt| {
                    let class = outcome_class(&attempt.outcome, attempt.status);
                    (attempt.channel_name, class)
                })
                .collect(),
        }
    }
}

impl RelayMetrics {
    /// Counts one request of `group`.
    pub fn observe(&mut self, group: &str, sample: &MetricsSample) {
        let by_channel = entry_by_str(&mut self.requests, group);
        let by_status = entry_by_str(by_channel, &sample.channel_name);
        by_status.entry(sample.status).or_default().observe(sample.total_ms as f64 / 1_000.0);
        for (channel_name, outcome) in &sample.attempts {
            *entry_by_str(&mut self.attempts, channel_name).entry(outcome).or_default() += 1;
        }
    }

    fn request_histograms(&self) -> impl Iterator<Item = (&String, &String, u16, &Histogram)> {
        self.requests.iter().flat_map(|(group, by_channel)| {
            by_channel.iter().flat_map(move |(channel, by_status)| {
                by_status.iter().map(move |(status, histogram)| (group, channel, *status, histogram))
            })
        })
    }

    /// Appends the request and attempt families.
    pub fn render(&self, output: &mut String) {
        output.push_str("# HELP octopus_requests_total Finished relay requests.\n# TYPE octopus_requests_total counter\n");
        for (group, channel, status, histogram) in self.request_histograms() {
            let _ = writeln!(
                output,
                "octopus_requests_total{{group=\"{}\",channel=\"{}\",status=\"{status}\"}} {}",
                escape(group),
                escape(channel),
                histogram.count
            );
        }
        output.push_str(
            "# HELP octopus_request_duration_seconds Relay request latency, arrival to last byte.\n# TYPE octopus_request_duration_seconds histogram\n",
        );
        for (group, channel, status, histogram) in self.request_histograms() {
            let labels = format!("group=\"{}\",channel=\"{}\",status=\"{status}\"", escape(group), escape(channel));
            for (bound, count) in LATENCY_BUCKETS.iter().zip(histogram.bucket_counts.iter()) {
                let _ = writeln!(output, "octopus_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(output, "octopus_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", histogram.count);
            let _ = writeln!(output, "octopus_request_duration_seconds_sum{{{labels}}} {}", histogram.sum_seconds);
            let _ = writeln!(output, "octopus_request_duration_seconds_count{{{labels}}} {}", histogram.count);
        }
        output.push_str("# HELP octopus_upstream_attempts_total Upstream attempts by outcome.\n# TYPE octopus_upstream_attempts_total counter\n");
        for (channel, by_outcome) in &self.attempts {
            for (outcome, count) in by_outcome {
                let _ = writeln!(output, "octopus_upstream_attempts_total{{channel=\"{}\",outcome=\"{outcome}\"}} {count}", escape(channel));
            }
        }
    }
}

/// A small fixed set of outcome labels, so label cardinality stays bounded.
fn outcome_class(outcome: &str, status: Option<u16>) -> &'static str {
    if outcome == "success" {
        return "success";
    }
    if outcome.starts_with("skipped") {
        return "skipped";
    }
    if outcome.contains("timeout") {
        return "timeout";
    }
    match status {
        Some(429) => "rate_limited",
        Some(status) if status >= 500 => "server_error",
        Some(status) if status >= 400 => "client_error",
        _ if outcome.contains("connect") => "connect_error",
        _ => "other_error",
    }
}

/// Escapes a label value (backslash, quote, newline).
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::record::AttemptRecord;

    #[test]
    fn requests_fill_histograms_and_attempt_outcomes() {
        let mut metrics = RelayMetrics::default();
        let attempt = |outcome: &str, status| AttemptRecord {
            channel_id: 1,
            channel_name: "c\"1".to_string(),
            key_id: 1,
            base_url: String::new(),
            upstream_model: String::new(),
            outcome: outcome.to_string(),
            status,
            duration_ms: 1,
        };
        let record = RequestRecord {
            started_at_ms: 0,
            client_key_id: None,
            client_key_name: String::new(),
            group: "g".to_string(),
            client_format: "openai_chat",
            stream: false,
            channel_id: Some(1),
            channel_name: "c\"1".to_string(),
            key_id: None,
            upstream_model: String::new(),
            status: 200,
            attempts: vec![attempt("status 429", Some(429)), attempt("success", Some(200))],
            usage: None,
            ttft_ms: None,
            total_ms: 300,
            error: None,
            request_body: None,
            response_body: None,
        };
        metrics.observe("g", &MetricsSample::of(record));
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains("octopus_requests_total{group=\"g\",channel=\"c\\\"1\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("le=\"0.25\"} 0") && text.contains("le=\"0.5\"} 1"), "{text}");
        assert!(text.contains("outcome=\"rate_limited\"} 1") && text.contains("outcome=\"success\"} 1"), "{text}");
    }
}
