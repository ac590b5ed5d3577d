//! The prices every node prices requests with: the catalogue in force, the price book built from
//! it and the admin's prices, and how the last models.dev sync went.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::stats::catalog::Catalog;
use crate::stats::pricing::PriceBook;
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
    catalog: RwLock<Arc<Catalog>>,
    book: RwLock<Arc<PriceBook>>,
    status: Mutex<PriceSyncStatus>,
}

impl PriceState {
    /// Starts with `catalog` (the compiled-in snapshot) and no admin prices until `rebuild`.
    pub fn new(catalog: Catalog) -> PriceState {
        let catalog = Arc::new(catalog);
        let status = PriceSyncStatus { models: catalog.len(), ..PriceSyncStatus::default() };
        PriceState {
            book: RwLock::new(Arc::new(PriceBook::new(&[], HashMap::new(), catalog.clone()))),
            catalog: RwLock::new(catalog),
            status: Mutex::new(status),
        }
    }

    pub fn book(&self) -> Arc<PriceBook> {
        self.book.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Rebuilds the price book from the stored prices and channels. Call on a store thread after
    /// prices or channels change, and after a new catalogue.
    pub fn rebuild(&self, store: &mut dyn Store) -> StoreResult<()> {
        let rows = store.list_prices()?;
        let channel_types = store.list_channels()?.into_iter().map(|channel| (channel.id, channel.channel_type)).collect();
        let book = PriceBook::new(&rows, channel_types, self.catalog());
        *self.book.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(book);
        Ok(())
    }

    /// Puts a freshly synced catalogue in force (the caller rebuilds the book after).
    pub fn replace_catalog(&self, catalog: Catalog, at_unix_seconds: i64) {
        let models = catalog.len();
        *self.catalog.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(catalog);
        let mut status = self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *status = PriceSyncStatus { last_sync_at: Some(at_unix_seconds), last_error: None, models };
    }

    /// Notes a failed sync; the catalogue in force stays.
    pub fn record_sync_error(&self, error: String) {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).last_error = Some(error);
    }

    pub fn status(&self) -> PriceSyncStatus {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}
