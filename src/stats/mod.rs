//! Statistics, prices and request logs: every finished relay request counted, priced and kept.
//!
//! The relay's worker prices each finished request, counts it and encodes its log row
//! (`StatsService::count`: CPU only, no waiting), and hands the `CountedRequest` to the
//! stats-writer thread over a bounded crossbeam channel (`relay::record::RecordSink`, which drops
//! and counts rather than blocks). That thread adds it to in-memory hourly deltas and queues its
//! log row; it writes logs about every second and adds the deltas to the database every
//! `stats_save_interval_seconds`, at each UTC hour boundary and on shutdown. The writes are
//! additive upserts, so several gateways on one database sum correctly.
//!
//! Reads (`query`) merge the persisted rows with the deltas not yet written, under a gate that a
//! flush holds while it commits, so the API is always live and never counts a delta twice.
//!
//! Architecture invariants: the relay never waits on this module; on a coroutine worker only
//! `count` (pure work, and locks held for a lookup; a contended price memo is passed by) and the
//! spending check run, never the store or the log.

pub mod aggregate;
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

use crate::relay::record::{RecentRecords, RequestRecord};
use crate::settings::SettingsCell;
pub use crate::stats::aggregate::CountedRequest;
use crate::stats::aggregate::CountingOptions;
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

    /// Prices and counts a request that finished at `finished_at_ms`, and encodes its log row.
    /// Called on the relay's worker (see `CountedRequest` for why there); the writer takes the
    /// result in `ingest`.
    pub fn count(&self, record: RequestRecord, finished_at_ms: i64) -> CountedRequest {
        let kept_copy = self.recent.as_ref().map(|_| record.clone());
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
            access_log: log::log_enabled!(log::Level::Info),
        };
        CountedRequest { recent: kept_copy, ..aggregate::count(record, finished_at_ms, cost, &options) }
    }

    /// Adds a counted request to the deltas and queues its log row. Called on the writer thread.
    pub fn ingest(&self, counted: CountedRequest) {
        self.metrics.records.fetch_add(1, Ordering::Relaxed);
        if let Some(line) = &counted.access_line {
            log::info!("{line}");
        }
        if let Some(sample) = &counted.metrics {
            self.relay_metrics.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).observe(&counted.group, sample);
        }
        self.books().pending.add(counted.bucket(), &counted.counters);
        let cost = counted.counters.cost_micros;
        let CountedRequest { finished_at_ms, client_key_id, group, row, recent: kept_copy, .. } = counted;
        let row = row.map(|mut row| {
            row.id = self.log_ids.next(finished_at_ms);
            row.group = group;
            row
        });
        if let Some(row) = &row {
            self.tail.publish(row);
        }
        {
            let mut books = self.books();
            if let Some(row) = row {
                if books.logs.len() >= MAX_PENDING_LOGS {
                    books.logs.pop_front();
                    self.metrics.logs_dropped.fetch_add(1, Ordering::Relaxed);
                }
                books.logs.push_back(row);
            }
        }
        if let Some(api_key_id) = client_key_id.filter(|_| cost > 0) {
            *self.spending.write().unwrap_or_else(|poisoned| poisoned.into_inner()).entry(api_key_id).or_default() += cost;
        }
        if let (Some(recent), Some(record)) = (&self.recent, kept_copy) {
            recent.push(record);
        }
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
            // The next second's rows come at about this rate; starting the queue at that size
            // spares it growing again row by row.
            let capacity = books.logs.len().min(MAX_PENDING_LOGS);
            std::mem::replace(&mut books.logs, VecDeque::with_capacity(capacity)).into()
        };
        if logs.is_empty() {
            return Ok(());
        }
        let count = logs.len() as u64;
        let (logs, result) = self.store.call(move |store| {
            let result = store.insert_logs(&logs);
            (logs, result)
        });
        match result {
            Ok(()) => {
                self.metrics.logs_written.fetch_add(count, Ordering::Relaxed);
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
    pub fn refresh_spending(&self) {
        let persisted = self.store.call(|store| store.stats_grouped(i64::MIN, i64::MAX, StatsGrouping::ApiKey));
        let persisted = match persisted {
            Ok(rows) => rows,
            Err(error) => {
                log::warn!("could not read the client keys' spending: {error}");
                return;
            }
        };
        let books = self.books();
        let mut spending: HashMap<i64, i64> =
            persisted.into_iter().map(|row| (row.key.api_key_id, row.counters.cost_micros)).collect();
        for (key, counters) in books.pending.iter().chain(books.flushing.iter()) {
            *spending.entry(key.api_key_id).or_default() += counters.cost_micros;
        }
        *self.spending.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = spending;
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
