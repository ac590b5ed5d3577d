//! Statistics, prices and request logs: every finished relay request counted, priced and kept.
//!
//! The relay's worker prices each finished request, counts it and encodes its log row into its
//! thread's batch (`StatsService::count_into`: CPU only, no waiting; `batches::CountedBatches`,
//! which drops and counts rather than grows past its bound). The stats-writer thread takes the
//! batches every 100 ms, adds them to in-memory hourly deltas and queues their log rows; it
//! writes logs about every second (sooner when 1,000 wait) and adds the deltas to the database
//! every `stats_save_interval_seconds`, at each UTC hour boundary and on shutdown. The writes are
//! additive upserts, so several gateways on one database sum correctly.
//!
//! Reads (`query`) merge the persisted rows with the deltas not yet written, under a gate that a
//! flush holds while it commits, so the API is always live and never counts a delta twice.
//!
//! Architecture invariants: the relay never waits on this module; on a coroutine worker only
//! `count_into` (pure work, and locks held for a lookup; a contended price memo is passed by) and
//! the spending check run, never the store or the log. No memory allocated for a request is
//! freed on another thread (see `batches`).

pub mod aggregate;
pub mod batches;
pub mod catalog;
pub mod deltas;
pub mod log_id;
pub mod log_view;
pub mod metrics;
pub mod price_state;
pub mod pricing;
pub mod query;
pub mod redact;
pub mod tail;
pub mod writer;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};

use crate::logging::LineBatch;
use crate::relay::record::{RecentRecords, RequestRecord};
use crate::settings::SettingsCell;
use crate::stats::aggregate::CountingOptions;
use crate::stats::batches::{CountedBatch, CountedEntry};
use crate::stats::deltas::Deltas;
use crate::stats::log_id::LogIdGenerator;
use crate::stats::price_state::PriceState;
use crate::stats::pricing::{Price, PriceBook};
use crate::stats::tail::Tail;
use crate::store::entities::{LogRow, StatsCounters, StatsGrouping, StatsKey, StatsRow};
use crate::store::pool::StorePool;
use crate::store::StoreResult;

/// Log rows held in memory while the database cannot take them; past this the oldest are dropped
/// (and counted), so a database outage cannot exhaust memory.
const MAX_PENDING_LOGS: usize = 20_000;

/// The deltas and logs not yet in the database.
#[derive(Default)]
struct Books {
    /// Counted since the last flush began.
    pending: Deltas,
    /// Taken by the flush in progress (or left by a failed one, retried with the next).
    flushing: Deltas,
    logs: VecDeque<LogRow>,
    /// Rows the last log write took, kept for their strings' buffers: the next second's rows are
    /// written into them rather than into new allocations. Never more than one write's worth.
    spare_rows: Vec<LogRow>,
    /// An empty buffer (the spare rows' old one) that becomes the next queue, so the queue is
    /// not allocated anew, and page-faulted in again, every second.
    spare_queue: Vec<LogRow>,
}

/// Numbers about the writer itself, for `/metrics` and the API.
#[derive(Default)]
pub struct WriterMetrics {
    pub records: AtomicU64,
    pub stats_flushes: AtomicU64,
    pub stats_flush_failures: AtomicU64,
    pub logs_written: AtomicU64,
    pub logs_dropped: AtomicU64,
    pub log_flush_failures: AtomicU64,
    /// Unix milliseconds of the last successful stats flush (0 = none yet).
    pub last_flush_at_ms: AtomicI64,
}

/// The shared statistics state: deltas, spending per client key, prices and the live tail.
pub struct StatsService {
    pub store: StorePool,
    pub settings: Arc<SettingsCell>,
    pub prices: PriceState,
    pub tail: Tail,
    pub metrics: WriterMetrics,
    books: Mutex<Books>,
    /// Held for reading while a query merges database rows with the deltas, and for writing while
    /// a flush commits and forgets its deltas: a reader sees each delta exactly once.
    flush_gate: RwLock<()>,
    /// Micro-dollars spent per client key id: the database's total at the last flush plus what
    /// this node counted since. Read by the relay to enforce `max_cost`.
    spending: RwLock<HashMap<i64, i64>>,
    log_ids: LogIdGenerator,
    /// The last finished requests, kept in memory for tests and diagnostics.
    pub recent: Option<Arc<RecentRecords>>,
    /// Prometheus counters and histograms.
    pub relay_metrics: Mutex<metrics::RelayMetrics>,
    /// The last price looked up: consecutive requests mostly hit the same channel and model, and
    /// the three-tier lookup (four hash maps and a lock) runs for every request otherwise.
    last_price: Mutex<Option<RememberedPrice>>,
}

/// A price and what it was looked up for, from which book.
struct RememberedPrice {
    book: Arc<PriceBook>,
    channel_id: Option<i64>,
    model: String,
    price: Price,
}

impl StatsService {
    pub fn new(store: StorePool, settings: Arc<SettingsCell>, prices: PriceState) -> StatsService {
        StatsService {
            store,
            settings,
            prices,
            tail: Tail::default(),
            metrics: WriterMetrics::default(),
            books: Mutex::new(Books::default()),
            flush_gate: RwLock::new(()),
            spending: RwLock::new(HashMap::new()),
            log_ids: LogIdGenerator::new(crate::util::os_random_u64()),
            recent: None,
            relay_metrics: Mutex::new(metrics::RelayMetrics::default()),
            last_price: Mutex::new(None),
        }
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Micro-dollars the client key has spent, over all time and every node (as of this node's
    /// last flush, plus its own requests since).
    pub fn spent_micros(&self, api_key_id: i64) -> i64 {
        self.spending.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&api_key_id).copied().unwrap_or(0)
    }

    /// Prices and counts a request that finished at `finished_at_ms` into `batch` (this thread's
    /// batch, as entry `sequence`), with its log row encoded. Called on the relay's worker (see
    /// `aggregate::count_into` for why there); the writer takes the batch in `ingest`.
    pub fn count_into(&self, batch: &mut CountedBatch, sequence: u64, record: RequestRecord, finished_at_ms: i64) {
        let settings = self.settings.get();
        let cost = match &record.usage {
            Some(usage) => pricing::cost_micros(usage, &self.price_of(record.channel_id, &record.upstream_model)),
            None => 0,
        };
        let options = CountingOptions {
            keep_log: settings.log_max_rows > 0,
            body_limit: settings.log_bodies.then(|| usize::try_from(settings.log_body_max_bytes).unwrap_or(usize::MAX)),
            // Prometheus series are kept only while `/metrics` is served: nobody reads them
            // otherwise, and they cost each request a few label lookups. Switched on, they count
            // from then on, as after a restart.
            metrics: settings.metrics_enabled,
            // One line per finished request at info level: never a key, body or token.
            access_log: crate::logging::LineBatch::info_enabled(),
            keep_record: self.recent.is_some(),
        };
        aggregate::count_into(batch, sequence, record, finished_at_ms, cost, &options);
    }

    /// Adds the entries of the batches taken from the relay's threads to the deltas and queues
    /// their log rows, in the order the requests finished. Called on the writer thread.
    pub fn ingest(&self, batches: &mut [CountedBatch]) {
        let mut spent: Vec<(i64, i64)> = Vec::new();
        let mut access_lines = LineBatch::default();
        {
            // Asked once per take rather than per row: almost always nobody listens, and a
            // listener that arrives meanwhile gets the rows from the next take on.
            let tail_listening = self.tail.listener_count() > 0;
            let mut books = self.books();
            batches::for_each_in_order(batches, |batch, entry| {
                self.ingest_entry(&mut books, &mut access_lines, batch, entry, tail_listening);
                if let Some(api_key_id) = entry.client_key_id.filter(|_| entry.counters.cost_micros > 0) {
                    spent.push((api_key_id, entry.counters.cost_micros));
                }
            });
        }
        // Written once the books are unlocked, all the batch's lines in one write.
        access_lines.write();
        if !spent.is_empty() {
            let mut spending = self.spending.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            for (api_key_id, cost) in spent {
                *spending.entry(api_key_id).or_default() += cost;
            }
        }
        // The recent records are pushed once the requests are counted, so whoever sees one there
        // can read its numbers.
        if let Some(recent) = &self.recent {
            let mut records: Vec<(u64, RequestRecord)> = batches
                .iter_mut()
                .flat_map(|batch| batch.entries.iter_mut())
                .filter_map(|entry| Some((entry.sequence, entry.extras.as_mut()?.recent.take()?)))
                .collect();
            records.sort_by_key(|(sequence, _)| *sequence);
            for (_, record) in records {
                recent.push(record);
            }
        }
    }

    fn ingest_entry(
        &self,
        books: &mut Books,
        access_lines: &mut LineBatch,
        batch: &CountedBatch,
        entry: &CountedEntry,
        tail_listening: bool,
    ) {
        self.metrics.records.fetch_add(1, Ordering::Relaxed);
        let group = batch.text(entry.group);
        if let Some(line) = entry.access_line {
            access_lines.push_info(batch.text(line));
        }
        if let Some(sample) = entry.extras.as_ref().and_then(|extras| extras.metrics.as_ref()) {
            self.relay_metrics.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).observe(group, sample);
        }
        books.pending.add(aggregate::bucket_of(batch, entry), &entry.counters);
        let Some(log) = entry.log else { return };
        let mut row = books.spare_rows.pop().unwrap_or_default();
        row.id = self.log_ids.next(entry.finished_at_ms);
        row.time_ms = log.time_ms;
        row.api_key_id = log.api_key_id;
        replace_text(&mut row.group, group);
        row.channel_id = log.channel_id;
        row.success = log.success;
        replace_text(&mut row.detail, batch.text(log.detail));
        replace_optional_text(&mut row.request_body, log.request_body.map(|span| batch.text(span)));
        replace_optional_text(&mut row.response_body, log.response_body.map(|span| batch.text(span)));
        if tail_listening {
            self.tail.publish(&row);
        }
        if books.logs.len() >= MAX_PENDING_LOGS {
            books.logs.pop_front();
            self.metrics.logs_dropped.fetch_add(1, Ordering::Relaxed);
        }
        books.logs.push_back(row);
    }

    /// The price in force for a model on a channel, remembered for the next request.
    fn price_of(&self, channel_id: Option<i64>, model: &str) -> Price {
        let book = self.prices.book();
        // The relay's workers call this at the same time: a memo another one holds is passed by
        // (the full lookup is a few hash probes), never waited for.
        let mut last = match self.last_price.try_lock() {
            Ok(last) => last,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return book.effective(channel_id, model).0,
        };
        if let Some(remembered) = last.as_ref()
            && Arc::ptr_eq(&remembered.book, &book)
            && remembered.channel_id == channel_id
            && remembered.model == model
        {
            return remembered.price;
        }
        let (price, _) = book.effective(channel_id, model);
        *last = Some(RememberedPrice { book, channel_id, model: model.to_string(), price });
        price
    }

    /// Adds every pending delta to the database. On failure the deltas are kept and retried with
    /// the next flush. Called on the writer thread (it blocks on the store).
    pub fn flush_stats(self: &Arc<Self>, now_ms: i64) -> StoreResult<()> {
        {
            let mut books = self.books();
            let Books { pending, flushing, .. } = &mut *books;
            flushing.absorb(pending);
            if books.flushing.is_empty() {
                return Ok(());
            }
        }
        let service = self.clone();
        let written = self.store.call(move |store| {
            let _gate = service.flush_gate.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            let rows: Vec<StatsRow> = service
                .books()
                .flushing
                .iter()
                .map(|(key, counters)| StatsRow { key: key.clone(), counters: *counters })
                .collect();
            store.add_stats(&rows)?;
            service.books().flushing.clear();
            Ok(())
        });
        match written {
            Ok(()) => {
                self.metrics.stats_flushes.fetch_add(1, Ordering::Relaxed);
                self.metrics.last_flush_at_ms.store(now_ms, Ordering::Relaxed);
                self.refresh_spending();
                Ok(())
            }
            Err(error) => {
                self.metrics.stats_flush_failures.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// Writes the queued log rows. On failure they stay queued (bounded) for the next try.
    pub fn flush_logs(&self) -> StoreResult<()> {
        let logs: Vec<LogRow> = {
            let mut books = self.books();
            if books.logs.is_empty() {
                // Nothing came in since the last write: the spare rows and buffers, sized for
                // the last busy second, are given back.
                books.spare_rows = Vec::new();
                books.spare_queue = Vec::new();
                books.logs.shrink_to(0);
                return Ok(());
            }
            let next_queue = VecDeque::from(std::mem::take(&mut books.spare_queue));
            std::mem::replace(&mut books.logs, next_queue).into()
        };
        let count = logs.len() as u64;
        let (logs, result) = self.store.call(move |store| {
            let result = store.insert_logs(&logs);
            (logs, result)
        });
        match result {
            Ok(()) => {
                self.metrics.logs_written.fetch_add(count, Ordering::Relaxed);
                // Spares left from before are dropped here, so the pool follows the load down;
                // their buffer is the next queue's. Both buffers keep room for twice this
                // write, not for the busiest second so far.
                let room = logs.len().saturating_mul(2);
                let mut spare_rows = logs;
                spare_rows.shrink_to(room);
                let mut books = self.books();
                let mut old_spares = std::mem::replace(&mut books.spare_rows, spare_rows);
                old_spares.clear();
                old_spares.shrink_to(room);
                books.spare_queue = old_spares;
                Ok(())
            }
            Err(error) => {
                self.metrics.log_flush_failures.fetch_add(1, Ordering::Relaxed);
                let mut books = self.books();
                let newer = std::mem::replace(&mut books.logs, logs.into());
                books.logs.extend(newer);
                let excess = books.logs.len().saturating_sub(MAX_PENDING_LOGS);
                if excess > 0 {
                    books.logs.drain(..excess);
                    self.metrics.logs_dropped.fetch_add(excess as u64, Ordering::Relaxed);
                }
                Err(error)
            }
        }
    }

    /// Reloads every key's total spend from the database and adds what is not written yet, so
    /// spending on other nodes sharing the database counts too.
    pub fn refresh_spending(self: &Arc<Self>) {
        // Read like `grouped`: the rows and the deltas not yet written together, under the flush
        // gate, so a flush landing in between (an import refreshes while the writer may flush)
        // neither counts its deltas twice nor drops them.
        let service = self.clone();
        let spending = self.store.call(move |store| {
            let _gate = service.flush_gate.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            let persisted = store.stats_grouped(i64::MIN, i64::MAX, StatsGrouping::ApiKey)?;
            let mut spending: HashMap<i64, i64> =
                persisted.into_iter().map(|row| (row.key.api_key_id, row.counters.cost_micros)).collect();
            let books = service.books();
            for (key, counters) in books.pending.iter().chain(books.flushing.iter()) {
                *spending.entry(key.api_key_id).or_default() += counters.cost_micros;
            }
            Ok::<_, crate::store::StoreError>(spending)
        });
        match spending {
            Ok(spending) => *self.spending.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = spending,
            Err(error) => log::warn!("could not read the client keys' spending: {error}"),
        }
    }

    /// Deltas and queued logs not yet written (for `/metrics` and tests).
    pub fn backlog(&self) -> (usize, usize) {
        let books = self.books();
        (books.pending.len() + books.flushing.len(), books.logs.len())
    }

    /// Sums over `from_hour <= hour < to_hour`, grouped as asked: the database's rows plus the
    /// deltas not yet written. Blocks on the store: callable from coroutines (which park) and
    /// threads.
    pub fn grouped(self: &Arc<Self>, from_hour: i64, to_hour: i64, grouping: StatsGrouping) -> StoreResult<Vec<StatsRow>> {
        let service = self.clone();
        self.store.call(move |store| {
            let _gate = service.flush_gate.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut merged: HashMap<StatsKey, StatsCounters> =
                store.stats_grouped(from_hour, to_hour, grouping)?.into_iter().map(|row| (row.key, row.counters)).collect();
            let books = service.books();
            for (key, counters) in books.pending.iter().chain(books.flushing.iter()) {
                if key.hour >= from_hour && key.hour < to_hour {
                    merged.entry(grouping.project(key)).or_default().add(counters);
                }
            }
            let mut rows: Vec<StatsRow> = merged.into_iter().map(|(key, counters)| StatsRow { key, counters }).collect();
            rows.sort_by(|left, right| left.key.cmp(&right.key));
            Ok(rows)
        })
    }
}

/// Sets `text` to `new`, in its buffer.
fn replace_text(text: &mut String, new: &str) {
    text.clear();
    text.push_str(new);
}

/// `replace_text` for a text that may be absent.
fn replace_optional_text(text: &mut Option<String>, new: Option<&str>) {
    match (text.as_mut(), new) {
        (Some(text), Some(new)) => replace_text(text, new),
        (_, new) => *text = new.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use crate::stats::batches::{LoggedFields, TextSpan};

    fn service() -> StatsService {
        let store = StorePool::open("sqlite", ":memory:", 1).unwrap();
        StatsService::new(store, Arc::new(SettingsCell::new(Settings::default())), PriceState::new(None))
    }

    /// A taken batch of `count` finished requests, each with a request log.
    fn logged_batch(count: usize) -> CountedBatch {
        let mut batch = CountedBatch::default();
        for sequence in 0..count as u64 {
            let group = batch.push_text("bench");
            let detail = batch.push_text("{\"status\":200}");
            batch.entries.push(CountedEntry {
                sequence,
                finished_at_ms: 1_800_000_000_000,
                channel_id: 1,
                client_key_id: None,
                group,
                model: TextSpan::default(),
                counters: StatsCounters::default(),
                log: Some(LoggedFields {
                    time_ms: 1_800_000_000_000,
                    api_key_id: None,
                    channel_id: Some(1),
                    success: true,
                    detail,
                    request_body: None,
                    response_body: None,
                }),
                access_line: None,
                extras: None,
            });
        }
        batch
    }

    fn ingest_and_write(service: &StatsService, count: usize) {
        service.ingest(&mut [logged_batch(count)]);
        service.flush_logs().unwrap();
    }

    /// (spare rows kept, room in the spare rows' buffer, room in the next queue's buffer, room
    /// in the queue).
    fn kept_for_the_next_write(service: &StatsService) -> (usize, usize, usize, usize) {
        let books = service.books();
        (books.spare_rows.len(), books.spare_rows.capacity(), books.spare_queue.capacity(), books.logs.capacity())
    }

    #[test]
    fn the_log_rows_kept_for_reuse_follow_the_load_down_and_go_when_nothing_comes() {
        let service = service();
        ingest_and_write(&service, 3_000);
        ingest_and_write(&service, 3_000);
        let (rows, row_room, _, _) = kept_for_the_next_write(&service);
        assert_eq!((rows, row_room >= 3_000), (3_000, true), "a busy second's rows are kept for the next");

        ingest_and_write(&service, 10);
        ingest_and_write(&service, 10);
        let (rows, row_room, queue_room, logs_room) = kept_for_the_next_write(&service);
        assert_eq!(rows, 10);
        assert!(row_room <= 20 && queue_room <= 20 && logs_room <= 20, "room for twice a quiet second, not the busy one: {row_room} / {queue_room} / {logs_room}");

        service.flush_logs().unwrap();
        assert_eq!(kept_for_the_next_write(&service), (0, 0, 0, 0), "a write with nothing to write gives everything back");
        assert_eq!(service.metrics.logs_written.load(Ordering::Relaxed), 6_020);
    }
}
