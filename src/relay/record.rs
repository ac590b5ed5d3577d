//! The record every finished relay request emits, and the bounded channel that takes it (counted,
//! as a `stats::CountedRequest`) to the stats writer.
//!
//! The relay never waits on stats: a full channel drops the record and counts the drop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};

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

/// The sending side: cheap to share, never blocks. `Message` is what a record becomes before
/// it is sent (`stats::CountedRequest` in the gateway).
pub struct RecordSink<Message> {
    /// `None` when statistics are switched off for a benchmark (`discarding`). Messages travel
    /// boxed: the channel allocates its slots in zeroed blocks of 31, and zeroing 31 of them
    /// cost more per request than one small allocation.
    sender: Option<Sender<Box<Message>>>,
    /// Records that may wait for the consumer; past this, new ones are dropped and counted.
    capacity: usize,
    dropped: AtomicU64,
}

impl<Message> RecordSink<Message> {
    /// A sink and its receiver, holding at most about `capacity` records in flight (concurrent
    /// senders may pass it by a few). The channel is crossbeam's list flavour with the bound
    /// checked here, not its array flavour: that one allocates and touches every slot up front,
    /// which for 10,000 records was 3.4 MiB of an idle gateway's memory; a list grows in small
    /// blocks only while records wait.
    pub fn bounded(capacity: usize) -> (RecordSink<Message>, Receiver<Box<Message>>) {
        let (sender, receiver) = crossbeam_channel::unbounded();
        (RecordSink { sender: Some(sender), capacity, dropped: AtomicU64::new(0) }, receiver)
    }

    /// A sink that throws every record away: statistics and request logs off. Only the benchmark
    /// uses it (`OCTOPUS_BENCH_WITHOUT_STATS`), to measure what counting costs per request.
    pub fn discarding() -> RecordSink<Message> {
        RecordSink { sender: None, capacity: 0, dropped: AtomicU64::new(0) }
    }

    /// Sends what `make` builds, unless statistics are off or the channel is full (then `make`
    /// is not called: a dropped record costs nothing more).
    pub fn emit_with(&self, make: impl FnOnce() -> Message) {
        let Some(sender) = &self.sender else { return };
        if sender.len() >= self.capacity || sender.send(Box::new(make())).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records sent and not yet taken by the consumer.
    pub fn queued(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }

    /// Records dropped because the consumer was not keeping up (or was gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
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

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_blocking() {
        let (sink, receiver) = RecordSink::bounded(2);
        let mut made = 0;
        for status in [200, 201, 202, 203] {
            sink.emit_with(|| {
                made += 1;
                record(status)
            });
        }
        assert_eq!(sink.dropped(), 2);
        assert_eq!(made, 2, "a record that cannot be sent is not converted");
        assert_eq!(receiver.try_recv().unwrap().status, 200);
        assert_eq!(receiver.try_recv().unwrap().status, 201);
        assert!(receiver.try_recv().is_err());
    }
}
