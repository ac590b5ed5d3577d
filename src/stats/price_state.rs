//! The prices every node prices requests with: the catalogue in force, the price book built from
//! it and the admin's prices, and how the last models.dev sync went.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::stats::catalog::Catalog;
use crate::stats::pricing::PriceBook;
use crate::store::rebuilt_view::RebuiltView;
use crate::store::{Store, StoreResult};

/// How the last price sync went (`GET /api/v1/prices/sync`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceSyncStatus {
    /// Unix seconds of the last successful sync.
    pub last_sync_at: Option<i64>,
    /// The error of the last attempt, when it failed.
    pub last_error: Option<String>,
    /// Prices in the catalogue in force.
    pub models: usize,
}

pub struct PriceState {
    /// `None` until a sync puts a catalogue in force: the compiled-in snapshot
    /// (`Catalog::builtin`), parsed at its first use rather than on the way to answering the
    /// first request (it takes a few milliseconds).
    catalog: RwLock<Option<Arc<Catalog>>>,
    book: RebuiltView<PriceBook>,
    status: Mutex<PriceSyncStatus>,
    /// The ticket the next sync attempt gets (`begin_sync`).
    next_sync_ticket: AtomicU64,
    /// The ticket of the newest attempt whose outcome is in force, guarded with the status so a
    /// check and the write it allows happen together.
    applied_sync_ticket: Mutex<u64>,
}

/// One sync attempt, from `PriceState::begin_sync` to `finish_sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncTicket(u64);

impl PriceState {
    /// Starts with `catalog` (`None`: the compiled-in snapshot) and no admin prices until
    /// `rebuild`.
    pub fn new(catalog: Option<Arc<Catalog>>) -> PriceState {
        PriceState {
            book: RebuiltView::new(PriceBook::new(&[], HashMap::new(), catalog.clone())),
            catalog: RwLock::new(catalog),
            status: Mutex::new(PriceSyncStatus::default()),
            next_sync_ticket: AtomicU64::new(1),
            applied_sync_ticket: Mutex::new(0),
        }
    }

    pub fn book(&self) -> Arc<PriceBook> {
        self.book.current()
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog_in_force().unwrap_or_else(Catalog::builtin)
    }

    /// The synced catalogue, or `None` while the compiled-in snapshot is in force.
    fn catalog_in_force(&self) -> Option<Arc<Catalog>> {
        self.catalog.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Rebuilds the price book from the stored prices and channels. Call on a store thread after
    /// prices or channels change, and after a new catalogue. When rebuilds overlap, the one that
    /// began last stays in force (`RebuiltView`).
    pub fn rebuild(&self, store: &mut dyn Store) -> StoreResult<()> {
        let ticket = self.book.begin();
        let rows = store.list_prices()?;
        let channel_types = store.list_channels()?.into_iter().map(|channel| (channel.id, channel.channel_type)).collect();
        let book = PriceBook::new(&rows, channel_types, self.catalog_in_force());
        self.book.install(ticket, book);
        Ok(())
    }

    /// Puts a freshly synced catalogue in force (the caller rebuilds the book after).
    pub fn replace_catalog(&self, catalog: Catalog, at_unix_seconds: i64) {
        let models = catalog.len();
        *self.catalog.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(catalog));
        let mut status = self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *status = PriceSyncStatus { last_sync_at: Some(at_unix_seconds), last_error: None, models };
    }

    /// Notes a failed sync; the catalogue in force stays.
    pub fn record_sync_error(&self, error: String) {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).last_error = Some(error);
    }

    /// Starts a sync attempt. Attempts may overlap (the scheduled one and an admin's
    /// `POST /api/v1/prices/sync` to a new URL); `finish_sync` then keeps the outcome of the
    /// attempt that started last, whatever order they end in.
    pub fn begin_sync(&self) -> SyncTicket {
        SyncTicket(self.next_sync_ticket.fetch_add(1, Ordering::Relaxed))
    }

    /// Puts an attempt's outcome in force (a new catalogue, or its error) unless an attempt that
    /// started later has finished already. Returns whether it was applied; the caller rebuilds
    /// the book after an applied catalogue.
    pub fn finish_sync(&self, ticket: SyncTicket, outcome: Result<Catalog, String>, at_unix_seconds: i64) -> bool {
        let mut applied = self.applied_sync_ticket.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if ticket.0 < *applied {
            return false;
        }
        *applied = ticket.0;
        match outcome {
            Ok(catalog) => self.replace_catalog(catalog, at_unix_seconds),
            Err(error) => self.record_sync_error(error),
        }
        true
    }

    pub fn status(&self) -> PriceSyncStatus {
        let mut status = self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if self.catalog_in_force().is_none() {
            status.models = Catalog::builtin().len();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::pricing::Price;

    fn catalog_of(model: &str) -> Catalog {
        let document = format!(r#"{{"p": {{"models": {{"{model}": {{"cost": {{"input": 1, "output": 2}}}}}}}}}}"#);
        Catalog::parse(document.as_bytes()).unwrap()
    }

    #[test]
    fn an_older_sync_finishing_last_does_not_undo_a_newer_one() {
        let state = PriceState::new(Some(Arc::new(Catalog::default())));
        let older = state.begin_sync();
        let newer = state.begin_sync();
        assert!(state.finish_sync(newer, Err("unreachable".to_string()), 20));
        assert!(!state.finish_sync(older, Ok(catalog_of("old")), 10), "the older attempt is stale");
        assert_eq!(state.status().last_error.as_deref(), Some("unreachable"));
        assert!(state.catalog().is_empty());

        let older = state.begin_sync();
        let newer = state.begin_sync();
        assert!(state.finish_sync(newer, Ok(catalog_of("new")), 30));
        assert!(!state.finish_sync(older, Err("late failure".to_string()), 31));
        let status = state.status();
        assert_eq!((status.last_sync_at, status.last_error, status.models), (Some(30), None, 1));
        assert_eq!(state.catalog().lookup(None, "new"), Some(Price { input: 1.0, output: 2.0, ..Price::default() }));
    }
}
