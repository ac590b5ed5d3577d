//! Admin REST API (`/api/v1`): routing, admin auth, resources and the embedded panel assets.
//!
//! Architecture invariant: handlers here run on coroutines and reach the database only through
//! `StorePool::call`; after any write that changes what the relay routes on, they call
//! `AdminContext::notify_change` so the relay rebuilds its in-memory snapshot.

pub mod api_keys;
pub mod auth;
pub mod backup;
pub mod body;
pub mod channels;
pub mod error;
pub mod group_trial;
pub mod groups;
pub mod logs;
pub mod metrics;
pub mod embedded;
pub mod openapi;
pub mod prices;
pub mod routes;
pub mod security_headers;
pub mod settings;
pub mod stats;
pub mod ui;

use std::sync::{Arc, Mutex};

use crate::api::auth::LoginThrottle;
use crate::api::error::ApiError;
use crate::config::Config;
use crate::http::{Request, Response};
use crate::settings::SettingsCell;
use crate::stats::StatsService;
use crate::sync::scheduler::Scheduler;
use crate::store::pool::StorePool;
use crate::upstream::client::UpstreamClient;

/// What every admin handler may use.
pub struct AdminContext {
    pub store: StorePool,
    pub config: Arc<Config>,
    pub login_throttle: Mutex<LoginThrottle>,
    /// For calls the admin makes to upstreams (model sync).
    pub upstream: UpstreamClient,
    /// Called after writes to channels, groups, API keys or prices.
    pub on_change: Box<dyn Fn() + Send + Sync>,
    pub stats: Arc<StatsService>,
    pub settings: Arc<SettingsCell>,
    pub scheduler: Arc<Scheduler>,
    /// The relay, for the admin's trial requests (weak: the relay owns no admin state).
    pub relay: std::sync::Weak<crate::relay::RelayState>,
}

impl AdminContext {
    pub fn notify_change(&self) {
        (self.on_change)();
    }
}

/// Answers one request under `/api/v1`.
pub fn handle(context: &AdminContext, request: &Request) -> Response {
    match routes::dispatch(context, request) {
        Ok(response) => response,
        Err(error) => error.to_response(),
    }
}

/// Runs a store job and maps its error into the API error.
pub fn store_call<T: Send + 'static>(
    context: &AdminContext,
    job: impl FnOnce(&mut dyn crate::store::Store) -> crate::store::StoreResult<T> + Send + 'static,
) -> Result<T, ApiError> {
    context.store.call(job).map_err(ApiError::from)
}
