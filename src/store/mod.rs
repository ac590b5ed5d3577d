//! Persistent storage: the `Store` trait, its SQLite, PostgreSQL and MySQL backends, and the
//! thread pool through which coroutines reach it.
//!
//! Architecture invariant: database drivers block, so a `Store` is only ever used on the std
//! threads of `StorePool`; coroutines send closures there and wait on a may-aware channel.

pub mod backup;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod client_error;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod database_socket;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod database_url;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod text_row;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod transaction;
pub mod entities;
pub mod log_detail;
pub mod migrate;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "mysql")]
pub mod mysql_client;
pub mod pool;
pub mod rebuilt_view;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "postgres")]
pub mod postgres_client;
#[cfg(feature = "sqlite")]
pub mod sqlite;

// Only the backends use the row codec; a build without any (the fuzz crate's) leaves it unused.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")), allow(dead_code))]
mod codec;
pub mod stats_sql;
#[cfg(test)]
pub(crate) mod temp_database;

use std::fmt;

use crate::store::backup::Backup;

use crate::store::entities::{
    AdminSession, AdminUser, ApiKey, Channel, Group, LogFilter, LogRow, ModelPrice, RequestLog, StatsGrouping, StatsRow,
    StoredResponse,
};

/// What can go wrong in a store call.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// A unique constraint was violated (duplicate channel, group or key name). The text names
    /// the conflicting value.
    Duplicate(String),
    /// A reference points at a row that does not exist (e.g. a group item naming a missing
    /// channel).
    MissingReference(String),
    /// The database could not be opened, reached, migrated or queried.
    Backend(String),
    /// The database is there but cannot serve right now: the connection was lost, the server is
    /// shutting down or starting, the disk is full, another writer held the lock past the busy
    /// timeout. An operational state to report plainly and retry, not a bug.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Duplicate(what) => write!(formatter, "duplicate: {what}"),
            StoreError::MissingReference(what) => write!(formatter, "missing reference: {what}"),
            StoreError::Backend(message) => write!(formatter, "database: {message}"),
            StoreError::Unavailable(message) => write!(formatter, "database unavailable: {message}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// Every query the gateway makes. Implementations are blocking and owned by one thread.
///
/// Conventions: `create_*` ignores the `id`, `created_at` and `updated_at` it is given and
/// returns the stored row; `update_*` returns `None` when the id does not exist; `delete_*`
/// returns whether a row was deleted. Times are Unix seconds.
pub trait Store: Send {
    /// `sqlite`, `postgres` or `mysql`.
    fn backend_name(&self) -> &'static str;

    /// Whether the connection to a database server is gone (the server restarted, a network
    /// cut): the pool then opens a new one. Cheap enough to ask after every job.
    fn connection_lost(&mut self) -> bool {
        false
    }

    /// Gives back the memory the connection keeps only to be faster next time (SQLite's page
    /// cache), after the pool thread has had no job for a while.
    fn release_idle_memory(&mut self) {}

    // Admin account and sessions.
    /// Whether any admin account exists (so a start can skip hashing the first password).
    fn has_admin(&mut self) -> StoreResult<bool>;
    /// Creates the admin account if no admin exists yet; returns true when it did.
    fn seed_admin(&mut self, username: &str, password_hash: &str) -> StoreResult<bool>;
    fn admin_by_username(&mut self, username: &str) -> StoreResult<Option<AdminUser>>;
    fn admin_by_id(&mut self, id: i64) -> StoreResult<Option<AdminUser>>;
    fn update_admin_password(&mut self, id: i64, password_hash: &str, must_change_password: bool) -> StoreResult<()>;
    fn create_session(&mut self, session: &AdminSession) -> StoreResult<()>;
    /// Returns the session as stored, expired or not; the caller compares `expires_at`.
    fn session_by_token_hash(&mut self, token_hash: &str) -> StoreResult<Option<AdminSession>>;
    fn delete_sessions_of_user(&mut self, user_id: i64) -> StoreResult<u64>;
    /// Deletes sessions with `expires_at <= now`.
    fn delete_expired_sessions(&mut self, now: i64) -> StoreResult<u64>;

    // Channels (keys are stored in their own table; ids of kept keys stay stable on update).
    fn list_channels(&mut self) -> StoreResult<Vec<Channel>>;
    fn channel_by_id(&mut self, id: i64) -> StoreResult<Option<Channel>>;
    fn create_channel(&mut self, channel: &Channel) -> StoreResult<Channel>;
    /// Replaces every field and the key list: keys whose `id` matches an existing key of this
    /// channel are updated in place, keys with id 0 are inserted, the rest are deleted.
    fn update_channel(&mut self, channel: &Channel) -> StoreResult<Option<Channel>>;
    /// Also deletes the group items that point at the channel.
    fn delete_channel(&mut self, id: i64) -> StoreResult<bool>;

    // Groups (items are stored in their own table, in the listed order).
    fn list_groups(&mut self) -> StoreResult<Vec<Group>>;
    fn group_by_id(&mut self, id: i64) -> StoreResult<Option<Group>>;
    fn create_group(&mut self, group: &Group) -> StoreResult<Group>;
    fn update_group(&mut self, group: &Group) -> StoreResult<Option<Group>>;
    fn delete_group(&mut self, id: i64) -> StoreResult<bool>;

    // Client API keys.
    fn list_api_keys(&mut self) -> StoreResult<Vec<ApiKey>>;
    fn api_key_by_id(&mut self, id: i64) -> StoreResult<Option<ApiKey>>;
    /// Looks a client key up by the SHA-256 (lower-case hex) of its secret.
    fn api_key_by_hash(&mut self, key_hash: &str) -> StoreResult<Option<ApiKey>>;
    fn create_api_key(&mut self, api_key: &ApiKey) -> StoreResult<ApiKey>;
    /// Updates everything but `key_hash`, `key_prefix` and `created_at`.
    fn update_api_key(&mut self, api_key: &ApiKey) -> StoreResult<Option<ApiKey>>;
    fn delete_api_key(&mut self, id: i64) -> StoreResult<bool>;

    // Model prices; (model, channel_id) is unique.
    fn list_prices(&mut self) -> StoreResult<Vec<ModelPrice>>;
    /// Inserts or replaces the price for (model, channel_id).
    fn upsert_price(&mut self, price: &ModelPrice) -> StoreResult<ModelPrice>;
    fn delete_price(&mut self, id: i64) -> StoreResult<bool>;

    // Settings.
    fn list_settings(&mut self) -> StoreResult<Vec<(String, String)>>;
    fn setting(&mut self, key: &str) -> StoreResult<Option<String>>;
    fn set_setting(&mut self, key: &str, value: &str) -> StoreResult<()>;

    // Statistics: additive hourly buckets (see migrations/*/0002_stats_logs.sql).
    /// Adds each row's counters to its bucket (creating it when missing), all in one transaction.
    fn add_stats(&mut self, rows: &[StatsRow]) -> StoreResult<()>;
    /// Sums over the buckets with `from_hour <= hour < to_hour`, grouped as asked.
    fn stats_grouped(&mut self, from_hour: i64, to_hour: i64, grouping: StatsGrouping) -> StoreResult<Vec<StatsRow>>;

    /// Replaces every bucket with `from_hour <= hour < to_hour` by `rows`, in one transaction
    /// (the daily rollup of old hours).
    fn replace_stats_range(&mut self, from_hour: i64, to_hour: i64, rows: &[StatsRow]) -> StoreResult<()>;
    /// Up to `limit` UTC day starts before `before_hour` that still hold buckets of hours other
    /// than the day's first (days not rolled up yet), oldest first.
    fn stats_days_to_roll_up(&mut self, before_hour: i64, limit: u64) -> StoreResult<Vec<i64>>;

    /// Every bucket as stored, in key order (for a backup with statistics).
    fn all_stats_rows(&mut self) -> StoreResult<Vec<StatsRow>>;

    // Backup.
    /// Replaces channels (with their keys), groups (with their items), client keys, prices,
    /// the runtime settings and, when `backup.stats` is set, the statistics, keeping every id,
    /// in one transaction: on any error nothing is changed. Admin users, sessions and request
    /// logs are not touched. Afterwards new rows get ids past the imported ones. `backup` must
    /// be checked first (`api::backup` does): positive unique ids, valid references.
    fn replace_configuration(&mut self, backup: &Backup) -> StoreResult<()>;

    // Request logs.
    /// Inserts the logs in one transaction; a log whose id is already stored is skipped.
    fn insert_logs(&mut self, rows: &[LogRow]) -> StoreResult<()>;
    /// A page of logs matching the filter, newest first, without bodies; and how many match.
    fn list_logs(&mut self, filter: &LogFilter, offset: u64, limit: u64) -> StoreResult<(Vec<RequestLog>, u64)>;
    /// One log with its bodies.
    fn log_by_id(&mut self, id: i64) -> StoreResult<Option<RequestLog>>;
    /// Deletes the logs that finished before `before_ms` and all but the newest `keep_rows`; returns how
    /// many were deleted.
    fn prune_logs(&mut self, before_ms: i64, keep_rows: u64) -> StoreResult<u64>;

    // Stored OpenAI Responses (see migrations/*/0003_responses.sql).
    /// Inserts the response, replacing a stored one with the same id.
    fn save_response(&mut self, response: &StoredResponse) -> StoreResult<()>;
    /// The response as stored, expired or not; the caller compares `expires_at` and the owner.
    fn response_by_id(&mut self, id: &str) -> StoreResult<Option<StoredResponse>>;
    fn delete_response(&mut self, id: &str) -> StoreResult<bool>;
    /// Deletes responses with `expires_at <= now`, then the oldest until the rest hold at most
    /// `max_total_bytes`; returns how many were deleted.
    fn prune_responses(&mut self, now: i64, max_total_bytes: u64) -> StoreResult<u64>;
}

/// Which stored responses to delete so that the newest ones fit in `max_total_bytes`, given
/// (id, size) pairs newest first. Shared by the backends so they agree on the rule.
pub fn responses_over_size_cap(newest_first: Vec<(String, i64)>, max_total_bytes: u64) -> Vec<String> {
    let mut kept_bytes: u64 = 0;
    let mut over = Vec::new();
    for (id, size_bytes) in newest_first {
        kept_bytes = kept_bytes.saturating_add(u64::try_from(size_bytes).unwrap_or(0));
        if kept_bytes > max_total_bytes {
            over.push(id);
        }
    }
    over
}

/// Opens one store of `database_type` (`sqlite`, `postgres` or `mysql`) at `path_or_url` (a
/// file path for SQLite, a URL for the servers) and applies pending migrations. Blocks: call it
/// on a std thread, never on a coroutine.
pub fn open(database_type: &str, path_or_url: &str) -> StoreResult<Box<dyn Store>> {
    #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
    let _ = path_or_url;
    match database_type {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Box::new(sqlite::open(path_or_url)?)),
        #[cfg(feature = "postgres")]
        "postgres" => Ok(Box::new(postgres::open(path_or_url)?)),
        #[cfg(feature = "mysql")]
        "mysql" => Ok(Box::new(mysql::open(path_or_url)?)),
        // Reached only in builds that leave some backend out.
        #[allow(unreachable_patterns, reason = "every backend is compiled into default builds")]
        "sqlite" | "postgres" | "mysql" => Err(StoreError::Backend(format!(
            "database type {database_type} is not compiled into this build (enable the cargo feature \"{database_type}\")"
        ))),
        other => Err(StoreError::Backend(format!(
            "unknown database type '{other}' (expected sqlite, postgres or mysql)"
        ))),
    }
}
