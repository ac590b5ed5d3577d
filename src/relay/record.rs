//! The record every finished relay request emits (counted into `stats::batches` for the stats
//! writer), and the last few records kept in memory.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::protocol::usage::Usage;

/// One try against one (channel, key, endpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRecord {
    pub channel_id: i64,
    pub channel_name: String,
    pub key_id: i64,
    pub base_url: String,
    pub upstream_model: String,
    /// `success`, `status 429`, `connect error`, `timeout (first byte)`, `stream error`, ...
    pub outcome: String,
    pub status: Option<u16>,
    pub duration_ms: u64,
}

/// One client request from arrival to the last byte.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub started_at_ms: i64,
    pub client_key_id: Option<i64>,
    pub client_key_name: String,
    /// The group (model name) the client asked for.
    pub group: String,
    pub client_format: &'static str,
    pub stream: bool,
    /// The channel, key and model of the attempt that answered (or the last one tried).
    pub channel_id: Option<i64>,
    pub channel_name: String,
    pub key_id: Option<i64>,
    pub upstream_model: String,
    /// The status the client got.
    pub status: u16,
    pub attempts: Vec<AttemptRecord>,
    pub usage: Option<Usage>,
    /// Time to the first byte sent to the client (streams) or to the upstream answer.
    pub ttft_ms: Option<u64>,
    pub total_ms: u64,
    pub error: Option<String>,
    /// The client's request body, when request logs keep bodies (`log_bodies`).
    pub request_body: Option<Vec<u8>>,
    /// The body sent to the client (capped), when request logs keep bodies.
    pub response_body: Option<Vec<u8>>,
}

/// The last few finished requests, newest last, for the panel's live view and for tests.
pub struct RecentRecords {
    records: Mutex<VecDeque<RequestRecord>>,
    capacity: usize,
}

impl RecentRecords {
    pub fn new(capacity: usize) -> RecentRecords {
        RecentRecords { records: Mutex::new(VecDeque::with_capacity(capacity)), capacity }
    }

    pub fn push(&self, record: RequestRecord) {
        let mut records = self.records.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if records.len() == self.capacity {
            records.pop_front();
        }
        records.push_back(record);
    }

    pub fn snapshot(&self) -> Vec<RequestRecord> {
        self.records.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: u16) -> RequestRecord {
        RequestRecord {
            started_at_ms: 0,
            client_key_id: None,
            client_key_name: String::new(),
            group: "g".to_string(),
            client_format: "openai_chat",
            stream: false,
            channel_id: None,
            channel_name: String::new(),
            key_id: None,
            upstream_model: String::new(),
            status,
            attempts: Vec::new(),
            usage: None,
            ttft_ms: None,
            total_ms: 0,
            error: None,
            request_body: None,
            response_body: None,
        }
    }

    #[test]
    fn recent_records_keep_the_newest() {
        let recent = RecentRecords::new(2);
        for status in [200, 429, 500] {
            recent.push(record(status));
        }
        let statuses: Vec<u16> = recent.snapshot().iter().map(|record| record.status).collect();
        assert_eq!(statuses, [429, 500]);
    }
}
