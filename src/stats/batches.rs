//! Per-thread batches of counted requests: how every finished relay request reaches the stats
//! writer without a channel message, a box or any memory freed on another thread.
//!
//! Why: measured with `scripts/bench --stats-off`, handing each request's heap memory to the
//! writer cost the relay's workers more than counting it (a box per request sent to a thread that
//! only dropped it cost +4% CPU per request, and the strings inside it as much again). Here each
//! thread that finishes requests appends to its own batch (a vector of plain entries plus one
//! text buffer for their strings) under a mutex that only the writer's swap, once a tick, ever
//! contends for. The writer swaps each filled batch for an emptied one, so buffers are reused
//! and, once they have grown to a tick's worth of requests, nothing is allocated or freed per
//! request on either side.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crate::relay::record::RequestRecord;
use crate::stats::metrics::MetricsSample;
use crate::store::entities::StatsCounters;

/// Where a piece of text of an entry lies in its batch's `text`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextSpan {
    start: usize,
    end: usize,
}

/// One finished request, counted: everything the writer needs, its strings in the batch's text.
#[derive(Debug)]
pub struct CountedEntry {
    /// Order of finishing across all threads: the writer ingests in this order, so log ids and
    /// the recent records follow the order requests finished in.
    pub sequence: u64,
    pub finished_at_ms: i64,
    /// 0 when no channel answered.
    pub channel_id: i64,
    pub client_key_id: Option<i64>,
    pub group: TextSpan,
    /// The upstream model.
    pub model: TextSpan,
    pub counters: StatsCounters,
    /// The request log, when logs are kept.
    pub log: Option<LoggedFields>,
    /// The access-log line, when info logging is on.
    pub access_line: Option<TextSpan>,
    /// What only some configurations ask for, boxed so that the common entry stays small.
    pub extras: Option<Box<EntryExtras>>,
}

/// The columns of a request log besides its id and group (the group is the entry's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedFields {
    pub time_ms: i64,
    pub api_key_id: Option<i64>,
    pub channel_id: Option<i64>,
    pub success: bool,
    /// The encoded `detail` column (see `store::log_detail`).
    pub detail: TextSpan,
    pub request_body: Option<TextSpan>,
    pub response_body: Option<TextSpan>,
}

/// Parts of an entry for `/metrics` and for the recent-records view.
#[derive(Debug, Default)]
pub struct EntryExtras {
    pub metrics: Option<MetricsSample>,
    pub recent: Option<RequestRecord>,
}

/// The entries one thread counted since the writer last took its batch.
#[derive(Debug, Default)]
pub struct CountedBatch {
    pub entries: Vec<CountedEntry>,
    text: String,
}

impl CountedBatch {
    /// The text of a span of this batch.
    pub fn text(&self, span: TextSpan) -> &str {
        &self.text[span.start..span.end]
    }

    /// Copies `text` into the batch.
    pub fn push_text(&mut self, text: &str) -> TextSpan {
        self.write_text(|out| out.push_str(text))
    }

    /// Appends whatever `write` appends to the batch's text, and says where it went.
    pub fn write_text(&mut self, write: impl FnOnce(&mut String)) -> TextSpan {
        let start = self.text.len();
        write(&mut self.text);
        TextSpan { start, end: self.text.len() }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Empties the batch, keeping its buffers for the next tick.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.text.clear();
    }

    /// Empties the batch for reuse, keeping room for twice what it held (an empty batch keeps
    /// the idle room). Buffers that grew in a burst would otherwise go round between the threads
    /// at their peak size for the life of the process: megabytes after a few seconds of
    /// thousands of requests a second. Within a factor of two of the load, nothing is
    /// reallocated, and a batch with no excess costs two comparisons.
    pub fn clear_keeping_room_for_twice_its_use(&mut self) {
        let (entries, text_bytes) = (self.entries.len(), self.text.len());
        self.clear();
        self.entries.shrink_to(entries.saturating_mul(2).max(ENTRIES_KEPT_WHEN_IDLE));
        self.text.shrink_to(text_bytes.saturating_mul(2).max(TEXT_BYTES_KEPT_WHEN_IDLE));
    }
}

/// Room an idle batch keeps: a tick of light traffic fits without growing.
const ENTRIES_KEPT_WHEN_IDLE: usize = 64;
const TEXT_BYTES_KEPT_WHEN_IDLE: usize = 16 * 1024;

/// One thread's batch, shared between that thread and the writer.
#[derive(Default)]
struct Slot {
    batch: Mutex<CountedBatch>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, CountedBatch> {
        self.batch.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Gives every `CountedBatches` its own number: a test process runs several gateways, and each
/// thread keeps one slot per gateway it finished requests for.
static NEXT_BATCHES_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's slots, by the number of the `CountedBatches` they belong to. Usually one.
    static THIS_THREADS_SLOTS: RefCell<Vec<(u64, Arc<Slot>)>> = const { RefCell::new(Vec::new()) };
}

/// Every thread's batch of one gateway, the bound on what may wait, and the drop count.
pub struct CountedBatches {
    id: u64,
    /// `false` when statistics are switched off for a benchmark (`discarding`).
    enabled: bool,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Entries one thread's batch may hold until the writer takes it; past this, new requests
    /// are dropped and counted (the writer has fallen behind, and memory must stay bounded).
    capacity_per_thread: usize,
    sequence: AtomicU64,
    dropped: AtomicU64,
    /// Set while the writer sleeps until a request is counted (`sleep_until_counted`), so that
    /// the request that ends an idle spell wakes it.
    writer_asleep: AtomicBool,
    /// The writer's thread, known from its first sleep.
    writer_thread: OnceLock<Thread>,
}

impl CountedBatches {
    pub fn new(capacity_per_thread: usize) -> CountedBatches {
        CountedBatches {
            id: NEXT_BATCHES_ID.fetch_add(1, Ordering::Relaxed),
            enabled: true,
            slots: Mutex::new(Vec::new()),
            capacity_per_thread,
            sequence: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            writer_asleep: AtomicBool::new(false),
            writer_thread: OnceLock::new(),
        }
    }

    /// Batches that throw every request away: statistics and request logs off. Only the benchmark
    /// uses it (`OCTOPUS_BENCH_WITHOUT_STATS`), to measure what counting costs per request.
    pub fn discarding() -> CountedBatches {
        CountedBatches { enabled: false, ..CountedBatches::new(0) }
    }

    /// Lets `count` append one entry (with the sequence number it must carry) to this thread's
    /// batch. Not called when statistics are off or the batch is full: a dropped request costs
    /// nothing more. `count` must not block: it runs under this thread's batch lock.
    pub fn push_with(&self, count: impl FnOnce(&mut CountedBatch, u64)) {
        if !self.enabled {
            return;
        }
        THIS_THREADS_SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            let slot = match slots.iter().position(|(id, _)| *id == self.id) {
                Some(index) => &slots[index].1,
                None => self.register_slot(&mut slots),
            };
            let mut batch = slot.lock();
            if batch.entries.len() >= self.capacity_per_thread {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            count(&mut batch, self.sequence.fetch_add(1, Ordering::Relaxed));
        });
        // Pairs with the fence in `sleep_until_counted`: either the writer, about to sleep,
        // sees this entry, or this sees that it sleeps. Under load the flag is down and this
        // costs a fence and a load; only the first request after an idle spell wakes the writer.
        fence(Ordering::SeqCst);
        if self.writer_asleep.load(Ordering::Relaxed)
            && self.writer_asleep.swap(false, Ordering::Relaxed)
            && let Some(writer) = self.writer_thread.get()
        {
            writer.unpark();
        }
    }

    /// The writer's sleep through an idle spell: returns when a request is counted (at once if
    /// one is waiting), when the writer's thread is unparked, or after `longest`. Only the
    /// writer's thread calls it. An idle gateway's writer then wakes for its deadlines alone,
    /// where its tick woke it ten times a second (a wake-up a router's CPU cannot sleep through).
    pub fn sleep_until_counted(&self, longest: Duration) {
        self.writer_thread.get_or_init(std::thread::current);
        self.writer_asleep.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.queued() == 0 {
            std::thread::park_timeout(longest);
        }
        self.writer_asleep.store(false, Ordering::Relaxed);
    }

    /// Makes this thread's slot of these batches (on the thread's first request) and registers
    /// it with the writer's list.
    fn register_slot<'slots>(&self, slots: &'slots mut Vec<(u64, Arc<Slot>)>) -> &'slots Arc<Slot> {
        // A slot whose `CountedBatches` is gone is held by this thread alone: forget it.
        slots.retain(|(_, slot)| Arc::strong_count(slot) > 1);
        let slot = Arc::new(Slot::default());
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(slot.clone());
        slots.push((self.id, slot));
        &slots.last().expect("just pushed").1
    }

    /// Moves every non-empty batch into `taken`, each replaced by an emptied one from `spares`
    /// (or a new one), and shrinks the buffers of empty ones. Called by the writer; each
    /// thread's lock is held for one swap.
    pub fn take_into(&self, taken: &mut Vec<CountedBatch>, spares: &mut Vec<CountedBatch>) {
        let slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        for slot in slots {
            let mut batch = slot.lock();
            if !batch.is_empty() {
                let spare = spares.pop().unwrap_or_default();
                taken.push(std::mem::replace(&mut *batch, spare));
            } else {
                // The batch of a thread that stopped finishing requests would keep the size of
                // its last busy tick.
                batch.clear_keeping_room_for_twice_its_use();
            }
        }
    }

    /// Requests counted and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        slots.iter().map(|slot| slot.lock().len()).sum()
    }

    /// Requests dropped because the writer was not keeping up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Visits the entries of `batches` in the order they finished (by `sequence`) across batches.
/// Each batch is already in order (one thread appends to it), so this merges them; there are as
/// many batches as threads that finished requests, a handful.
pub fn for_each_in_order(batches: &[CountedBatch], mut visit: impl FnMut(&CountedBatch, &CountedEntry)) {
    let mut next = vec![0usize; batches.len()];
    loop {
        let mut earliest: Option<(usize, u64)> = None;
        for (batch_index, batch) in batches.iter().enumerate() {
            if let Some(entry) = batch.entries.get(next[batch_index])
                && earliest.is_none_or(|(_, sequence)| entry.sequence < sequence)
            {
                earliest = Some((batch_index, entry.sequence));
            }
        }
        let Some((batch_index, _)) = earliest else { return };
        let batch = &batches[batch_index];
        visit(batch, &batch.entries[next[batch_index]]);
        next[batch_index] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(batches: &CountedBatches, group: &str) -> bool {
        let mut counted = false;
        batches.push_with(|batch, sequence| {
            counted = true;
            let group = batch.push_text(group);
            batch.entries.push(CountedEntry {
                sequence,
                finished_at_ms: 0,
                channel_id: 0,
                client_key_id: None,
                group,
                model: TextSpan::default(),
                counters: StatsCounters::default(),
                log: None,
                access_line: None,
                extras: None,
            });
        });
        counted
    }

    #[test]
    fn a_batch_emptied_for_reuse_keeps_room_for_twice_its_use_and_an_idle_one_shrinks() {
        let batches = CountedBatches::new(100_000);
        let (mut taken, mut spares) = (Vec::new(), Vec::new());
        for _ in 0..5_000 {
            push(&batches, "a-long-enough-group-name");
        }
        batches.take_into(&mut taken, &mut spares);
        let mut burst = taken.pop().unwrap();
        assert!(burst.entries.capacity() >= 5_000);
        burst.clear_keeping_room_for_twice_its_use();
        assert!(burst.is_empty() && burst.entries.capacity() >= 5_000, "within twice its use nothing is reallocated");

        // A quiet tick after the burst: the buffers come down to twice what it held.
        for _ in 0..100 {
            burst.push_text("a-long-enough-group-name");
            burst.entries.push(CountedEntry {
                sequence: 0,
                finished_at_ms: 0,
                channel_id: 0,
                client_key_id: None,
                group: TextSpan::default(),
                model: TextSpan::default(),
                counters: StatsCounters::default(),
                log: None,
                access_line: None,
                extras: None,
            });
        }
        burst.clear_keeping_room_for_twice_its_use();
        assert!(burst.entries.capacity() <= 200 && burst.text.capacity() <= TEXT_BYTES_KEPT_WHEN_IDLE, "{} / {}", burst.entries.capacity(), burst.text.capacity());

        // The thread's slot got a spare that grew in another burst, then the thread went quiet:
        // the writer's next take finds it empty and shrinks it.
        let mut grown = CountedBatch::default();
        grown.entries.reserve(5_000);
        grown.text.reserve(200_000);
        spares.push(grown);
        push(&batches, "one");
        batches.take_into(&mut taken, &mut spares);
        assert_eq!(taken.len(), 1);
        batches.take_into(&mut taken, &mut spares);
        let slots = batches.slots.lock().unwrap().clone();
        let idle = slots[0].lock();
        assert!(
            idle.is_empty() && idle.entries.capacity() <= ENTRIES_KEPT_WHEN_IDLE && idle.text.capacity() <= TEXT_BYTES_KEPT_WHEN_IDLE,
            "{} / {}",
            idle.entries.capacity(),
            idle.text.capacity()
        );
    }

    fn groups_in_order(batches: &[CountedBatch]) -> Vec<String> {
        let mut groups = Vec::new();
        for_each_in_order(batches, |batch, entry| groups.push(batch.text(entry.group).to_string()));
        groups
    }

    #[test]
    fn a_full_batch_drops_and_counts_instead_of_growing() {
        let batches = CountedBatches::new(2);
        let counted: Vec<bool> = ["a", "b", "c", "d"].into_iter().map(|group| push(&batches, group)).collect();
        assert_eq!(counted, [true, true, false, false], "a request that cannot be kept is not counted");
        assert_eq!((batches.dropped(), batches.queued()), (2, 2));
        let (mut taken, mut spares) = (Vec::new(), Vec::new());
        batches.take_into(&mut taken, &mut spares);
        assert_eq!(groups_in_order(&taken), ["a", "b"]);
        assert_eq!(batches.queued(), 0);
        assert!(push(&batches, "e"), "room again once the writer took the batch");
    }

    #[test]
    fn entries_of_several_threads_come_out_in_the_order_they_finished() {
        let batches = Arc::new(CountedBatches::new(100));
        push(&batches, "1");
        let other = batches.clone();
        std::thread::spawn(move || {
            push(&other, "2");
            push(&other, "3");
        })
        .join()
        .unwrap();
        push(&batches, "4");
        let (mut taken, mut spares) = (Vec::new(), Vec::new());
        batches.take_into(&mut taken, &mut spares);
        assert_eq!(taken.len(), 2, "one batch per thread");
        assert_eq!(groups_in_order(&taken), ["1", "2", "3", "4"]);
        // The writer hands emptied batches back as spares; their buffers are reused.
        for mut batch in taken.drain(..) {
            batch.clear();
            spares.push(batch);
        }
        push(&batches, "5");
        batches.take_into(&mut taken, &mut spares);
        assert_eq!((groups_in_order(&taken), spares.len()), (vec!["5".to_string()], 1));
    }

    #[test]
    fn a_sleeping_writer_wakes_for_the_first_request_counted_and_not_at_all_with_one_waiting() {
        let batches = Arc::new(CountedBatches::new(100));
        let writer_batches = batches.clone();
        let writer = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            writer_batches.sleep_until_counted(Duration::from_secs(60));
            started.elapsed()
        });
        let waiting_since = std::time::Instant::now();
        while !batches.writer_asleep.load(Ordering::Relaxed) {
            assert!(waiting_since.elapsed() < Duration::from_secs(10), "the writer never went to sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        push(&batches, "wakes the writer");
        let slept = writer.join().unwrap();
        assert!(slept >= Duration::from_millis(50) && slept < Duration::from_secs(10), "slept {slept:?}");
        assert!(!batches.writer_asleep.load(Ordering::Relaxed));

        // The entry is still there: the writer must not sleep past it.
        let started = std::time::Instant::now();
        batches.sleep_until_counted(Duration::from_secs(60));
        assert!(started.elapsed() < Duration::from_secs(10), "slept {:?} with a request waiting", started.elapsed());
    }

    #[test]
    fn discarding_batches_never_call_the_counter() {
        let batches = CountedBatches::discarding();
        assert!(!push(&batches, "a"));
        assert_eq!((batches.queued(), batches.dropped()), (0, 0));
    }

    #[test]
    fn each_gateway_in_a_process_has_its_own_slot_on_a_thread() {
        let first = CountedBatches::new(10);
        let second = CountedBatches::new(10);
        push(&first, "a");
        push(&second, "b");
        push(&second, "c");
        assert_eq!((first.queued(), second.queued()), (1, 2));
    }
}
