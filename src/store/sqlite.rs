//! The SQLite backend: one rusqlite connection per store, WAL journal, foreign keys enforced.
//!
//! Several stores (one per pool thread) may share a file. WAL lets readers run beside the one
//! writer, `busy_timeout` makes a second writer wait instead of failing, and every write
//! transaction starts `IMMEDIATE` so two writers never deadlock upgrading read locks.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, ffi, params};

use crate::store::codec::{
    ADMIN_COLUMNS, API_KEY_COLUMNS, CHANNEL_COLUMNS, ColumnReader, GROUP_COLUMNS, GROUP_ITEM_COLUMNS, PRICE_COLUMNS,
    SESSION_COLUMNS, Violation, api_key_duplicate, read_admin, read_api_key, read_channel, read_channel_key,
    read_group, read_group_item, read_price, read_session,
    attach_channel_keys, attach_group_items, headers_to_json, price_channel_scope, strings_to_json,
    u64_to_column,
};
use crate::store::backup::{self, Backup};
use crate::store::entities::{
    AdminSession, AdminUser, ApiKey, Channel, ChannelKey, Group, GroupItem, LogFilter, LogRow, ModelPrice, RequestLog,
    StatsGrouping, StatsRow, StoredResponse,
};
use crate::stats::log_id::first_id_at;
use crate::store::stats_sql::{self, Dialect, SqlValue};
use crate::store::migrate::{SQLITE_MIGRATIONS, pending, warn_about_unknown_versions};
use crate::store::{Store, StoreError, StoreResult, responses_over_size_cap};
use crate::util::unix_seconds;

/// A `Store` on one SQLite connection.
pub struct SqliteStore {
    connection: Connection,
}

/// Opens (creating if needed, along with its parent directory) the database file at `path`,
/// configures the connection and applies pending migrations. `:memory:` opens a private
/// in-memory database.
pub fn open(path: &str) -> StoreResult<SqliteStore> {
    create_parent_directory(path)?;
    create_private_file(path)?;
    let mut connection = Connection::open(path).map_err(|error| {
        StoreError::Backend(format!("cannot open SQLite database {path}: {error}"))
    })?;
    configure(&connection).map_err(|error| {
        StoreError::Backend(format!("cannot configure SQLite database {path}: {error}"))
    })?;
    migrate(&mut connection).map_err(|error| {
        StoreError::Backend(format!("cannot migrate SQLite database {path}: {error}"))
    })?;
    prepare_log_inserts(&connection).map_err(|error| {
        StoreError::Backend(format!("cannot prepare the request-log inserts on SQLite database {path}: {error}"))
    })?;
    Ok(SqliteStore { connection })
}

/// A new parent directory is made 0700: it holds the database with every provider key.
fn create_parent_directory(path: &str) -> StoreResult<()> {
    if is_not_a_plain_file(path) {
        return Ok(());
    }
    match Path::new(path).parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            crate::config::create_private_dir_all(parent).map_err(|error| {
                StoreError::Backend(format!(
                    "cannot create directory {} for the SQLite database: {error}",
                    parent.display()
                ))
            })
        }
        _ => Ok(()),
    }
}

/// Creates a missing database file as 0600 before SQLite opens it, whatever the umask. SQLite
/// gives its `-wal` and `-shm` files the permissions of the database file, so they follow.
/// An existing file keeps the permissions the admin gave it.
fn create_private_file(path: &str) -> StoreResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if is_not_a_plain_file(path) {
        return Ok(());
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(StoreError::Backend(format!("cannot create SQLite database {path}: {error}"))),
    }
}

fn is_not_a_plain_file(path: &str) -> bool {
    path == ":memory:" || path.starts_with("file:")
}

/// Statements kept compiled per connection: the few of the hot writes (log batches, statistics)
/// and the admin's queries, so that none is compiled again while the gateway runs.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// Compiles the multi-row log inserts into the statement cache once, at open: compiling the
/// 64-row one costs about as much as writing a hundred rows, so it must not happen per batch,
/// nor at the first batch of each connection (a stall a benchmark sees). Only the pool's first
/// connection is opened on the way to answering the first request (`StorePool::open`).
fn prepare_log_inserts(connection: &Connection) -> rusqlite::Result<()> {
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    for rows in stats_sql::LOG_INSERT_SIZES {
        connection.prepare_cached(stats_sql::log_insert(Dialect::Sqlite, rows))?;
    }
    Ok(())
}

/// The page size of a new database.
const PAGE_SIZE_BYTES: i64 = 16 * 1024;
/// The WAL size at which a commit checkpoints it into the database.
const WAL_CHECKPOINT_BYTES: i64 = 4 * 1024 * 1024;

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(Duration::from_millis(5000))?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Only a new, empty database takes this; an existing one keeps the page size it was made
    // with. Request logs are appended all day, and every page of them is written twice (to the
    // WAL, then by the checkpoint into the database) with a system call or two per page each
    // time, so 16 KiB pages make those calls a quarter as many as the default 4 KiB.
    connection.pragma_update(None, "page_size", PAGE_SIZE_BYTES)?;
    // journal_mode answers with the mode in effect (an in-memory database stays "memory").
    let _mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    // In WAL mode NORMAL is still safe against application crashes; only a power cut can lose
    // the last transactions, and it saves an fsync per commit on slow router flash.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    // The WAL is checkpointed at about 4 MiB whatever the page size (SQLite's default is 1,000
    // pages), so it takes no more room on a router's flash than with 4 KiB pages.
    let page_size: i64 = connection.pragma_query_value(None, "page_size", |row| row.get(0))?;
    connection.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_BYTES / page_size.max(512))?;
    Ok(())
}

fn migrate(connection: &mut Connection) -> rusqlite::Result<()> {
    // One IMMEDIATE transaction: SQLite DDL is transactional, and a second process opening the
    // same file waits for the lock instead of applying the same migration again.
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    transaction.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let applied_versions: Vec<i64> = {
        let mut statement = transaction.prepare("SELECT version FROM schema_migrations")?;
        statement
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    warn_about_unknown_versions("sqlite", SQLITE_MIGRATIONS, &applied_versions);
    for migration in pending(SQLITE_MIGRATIONS, &applied_versions) {
        transaction.execute_batch(migration.sql)?;
        transaction.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![migration.version, unix_seconds()],
        )?;
        log::info!(
            "sqlite: applied migration {} ({})",
            migration.version,
            migration.description
        );
    }
    transaction.commit()
}

fn query_error(error: rusqlite::Error) -> StoreError {
    let unavailable = matches!(
        error.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::DiskFull
                | rusqlite::ErrorCode::ReadOnly
                | rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
                | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::CannotOpen
        )
    );
    let message = format!("sqlite: {error}");
    if unavailable { StoreError::Unavailable(message) } else { StoreError::Backend(message) }
}

fn violation(error: rusqlite::Error) -> Violation {
    if let rusqlite::Error::SqliteFailure(failure, message) = &error {
        match failure.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                return Violation::Unique(message.clone().unwrap_or_default());
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => return Violation::ForeignKey,
            _ => {}
        }
    }
    Violation::Other(query_error(error))
}

/// Runs `sql` and reads every row through `read`.
fn query_all<T>(
    connection: &Connection,
    sql: &str,
    parameters: impl rusqlite::Params,
    read: impl Fn(&dyn ColumnReader) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut statement = connection.prepare_cached(sql).map_err(query_error)?;
    let mut rows = statement.query(parameters).map_err(query_error)?;
    let mut values = Vec::new();
    while let Some(row) = rows.next().map_err(query_error)? {
        values.push(read(&SqliteColumns(row))?);
    }
    Ok(values)
}

/// Runs `sql` and reads its first row, if any, through `read`.
fn query_optional<T>(
    connection: &Connection,
    sql: &str,
    parameters: impl rusqlite::Params,
    read: impl Fn(&dyn ColumnReader) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let mut statement = connection.prepare_cached(sql).map_err(query_error)?;
    let mut rows = statement.query(parameters).map_err(query_error)?;
    rows.next().map_err(query_error)?.map(|row| read(&SqliteColumns(row))).transpose()
}

fn load_channel(connection: &Connection, id: i64) -> StoreResult<Option<Channel>> {
    let Some(channel) =
        query_optional(connection, &format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = ?1"), [id], read_channel)?
    else {
        return Ok(None);
    };
    let mut channels = vec![channel];
    let keys = query_all(
        connection,
        "SELECT channel_id, id, \"key\", enabled, remark FROM channel_keys WHERE channel_id = ?1 ORDER BY position, id",
        [id],
        read_channel_key,
    )?;
    attach_channel_keys(&mut channels, keys);
    Ok(channels.pop())
}

/// Makes the stored keys of `channel_id` equal to `keys`, keeping the ids of keys that match.
fn replace_channel_keys(
    transaction: &Transaction,
    channel_id: i64,
    keys: &[ChannelKey],
) -> StoreResult<()> {
    let existing_ids: HashSet<i64> = query_all(
        transaction,
        "SELECT id FROM channel_keys WHERE channel_id = ?1",
        [channel_id],
        |row| row.int(0),
    )?
    .into_iter()
    .collect();
    let mut kept_ids = HashSet::new();
    for (position, key) in keys.iter().enumerate() {
        let position = position as i64;
        // An id that is not one of this channel's keys (or appears twice) is treated as new.
        if existing_ids.contains(&key.id) && kept_ids.insert(key.id) {
            transaction
                .execute(
                    "UPDATE channel_keys SET \"key\" = ?1, enabled = ?2, remark = ?3, position = ?4 WHERE id = ?5",
                    params![key.key, key.enabled, key.remark, position, key.id],
                )
                .map_err(query_error)?;
        } else {
            transaction
                .execute(
                    "INSERT INTO channel_keys (channel_id, \"key\", enabled, remark, position) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![channel_id, key.key, key.enabled, key.remark, position],
                )
                .map_err(query_error)?;
        }
    }
    for stale_id in existing_ids.difference(&kept_ids) {
        transaction
            .execute("DELETE FROM channel_keys WHERE id = ?1", [stale_id])
            .map_err(query_error)?;
    }
    Ok(())
}

fn channel_write_error(error: rusqlite::Error, channel: &Channel) -> StoreError {
    match violation(error) {
        Violation::Unique(_) => StoreError::Duplicate(format!("channel name '{}'", channel.name)),
        Violation::ForeignKey => StoreError::MissingReference(format!("channel {}", channel.id)),
        Violation::Other(error) => error,
    }
}

fn load_group(connection: &Connection, id: i64) -> StoreResult<Option<Group>> {
    let Some(group) =
        query_optional(connection, &format!("SELECT {GROUP_COLUMNS} FROM channel_groups WHERE id = ?1"), [id], read_group)?
    else {
        return Ok(None);
    };
    let mut groups = vec![group];
    let items = query_all(
        connection,
        &format!("SELECT {GROUP_ITEM_COLUMNS} FROM group_items WHERE group_id = ?1 ORDER BY position, id"),
        [id],
        read_group_item,
    )?;
    attach_group_items(&mut groups, items);
    Ok(groups.pop())
}

fn replace_group_items(
    transaction: &Transaction,
    group_id: i64,
    items: &[GroupItem],
) -> StoreResult<()> {
    transaction
        .execute("DELETE FROM group_items WHERE group_id = ?1", [group_id])
        .map_err(query_error)?;
    for (position, item) in items.iter().enumerate() {
        transaction
            .execute(
                "INSERT INTO group_items (group_id, channel_id, model, priority, weight, position) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    group_id,
                    item.channel_id,
                    item.model,
                    item.priority,
                    item.weight,
                    position as i64
                ],
            )
            .map_err(|error| match violation(error) {
                Violation::ForeignKey => {
                    StoreError::MissingReference(format!("channel {}", item.channel_id))
                }
                Violation::Unique(constraint) => {
                    StoreError::Backend(format!("sqlite: unexpected duplicate {constraint}"))
                }
                Violation::Other(error) => error,
            })?;
    }
    Ok(())
}

fn group_write_error(error: rusqlite::Error, group: &Group) -> StoreError {
    match violation(error) {
        Violation::Unique(_) => StoreError::Duplicate(format!("group name '{}'", group.name)),
        Violation::ForeignKey => StoreError::MissingReference(format!("group {}", group.id)),
        Violation::Other(error) => error,
    }
}

fn api_key_write_error(error: rusqlite::Error, api_key: &ApiKey) -> StoreError {
    match violation(error) {
        Violation::Unique(constraint) => api_key_duplicate(&constraint, api_key),
        Violation::ForeignKey => {
            StoreError::Backend("sqlite: unexpected foreign key violation on api_keys".to_owned())
        }
        Violation::Other(error) => error,
    }
}

fn load_api_key(
    connection: &Connection,
    column: &str,
    value: &dyn rusqlite::ToSql,
) -> StoreResult<Option<ApiKey>> {
    query_optional(connection, &format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE {column} = ?1"), [value], read_api_key)
}

impl SqliteStore {
    fn write_transaction(&mut self) -> StoreResult<Transaction<'_>> {
        self.connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(query_error)
    }
}

impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn release_idle_memory(&mut self) {
        if let Err(error) = self.connection.execute_batch("PRAGMA shrink_memory") {
            log::debug!("SQLite could not release its cache: {error}");
        }
        // SQLite allocates with the C library's malloc. musl's gives emptied pages back to the OS
        // by itself; glibc's keeps them in its arenas until asked.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free heap pages to the OS; any thread may call it.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    fn has_admin(&mut self) -> StoreResult<bool> {
        self.connection.query_row("SELECT EXISTS (SELECT 1 FROM admin_users)", [], |row| row.get(0)).map_err(query_error)
    }

    fn seed_admin(&mut self, username: &str, password_hash: &str) -> StoreResult<bool> {
        let now = unix_seconds();
        let inserted = self
            .connection
            .execute(
                "INSERT INTO admin_users (username, password_hash, must_change_password, created_at, updated_at) \
                 SELECT ?1, ?2, 1, ?3, ?3 WHERE NOT EXISTS (SELECT 1 FROM admin_users)",
                params![username, password_hash, now],
            )
            .map_err(query_error)?;
        Ok(inserted > 0)
    }

    fn admin_by_username(&mut self, username: &str) -> StoreResult<Option<AdminUser>> {
        query_optional(
            &self.connection,
            &format!("SELECT {ADMIN_COLUMNS} FROM admin_users WHERE username = ?1"),
            [username],
            read_admin,
        )
    }

    fn admin_by_id(&mut self, id: i64) -> StoreResult<Option<AdminUser>> {
        query_optional(
            &self.connection,
            &format!("SELECT {ADMIN_COLUMNS} FROM admin_users WHERE id = ?1"),
            [id],
            read_admin,
        )
    }

    fn update_admin_password(
        &mut self,
        id: i64,
        password_hash: &str,
        must_change_password: bool,
    ) -> StoreResult<()> {
        let updated = self
            .connection
            .execute(
                "UPDATE admin_users SET password_hash = ?1, must_change_password = ?2, updated_at = ?3 WHERE id = ?4",
                params![password_hash, must_change_password, unix_seconds(), id],
            )
            .map_err(query_error)?;
        if updated == 0 {
            return Err(StoreError::MissingReference(format!("admin user {id}")));
        }
        Ok(())
    }

    fn create_session(&mut self, session: &AdminSession) -> StoreResult<()> {
        self.connection
            .execute(
                "INSERT INTO admin_sessions (token_hash, user_id, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![session.token_hash, session.user_id, session.expires_at, session.created_at],
            )
            .map_err(|error| match violation(error) {
                Violation::Unique(_) => StoreError::Duplicate("session token".to_owned()),
                Violation::ForeignKey => StoreError::MissingReference(format!("admin user {}", session.user_id)),
                Violation::Other(error) => error,
            })?;
        Ok(())
    }

    fn session_by_token_hash(&mut self, token_hash: &str) -> StoreResult<Option<AdminSession>> {
        query_optional(
            &self.connection,
            &format!("SELECT {SESSION_COLUMNS} FROM admin_sessions WHERE token_hash = ?1"),
            [token_hash],
            read_session,
        )
    }

    fn delete_sessions_of_user(&mut self, user_id: i64) -> StoreResult<u64> {
        let deleted = self
            .connection
            .execute("DELETE FROM admin_sessions WHERE user_id = ?1", [user_id])
            .map_err(query_error)?;
        Ok(deleted as u64)
    }

    fn delete_expired_sessions(&mut self, now: i64) -> StoreResult<u64> {
        let deleted = self
            .connection
            .execute("DELETE FROM admin_sessions WHERE expires_at <= ?1", [now])
            .map_err(query_error)?;
        Ok(deleted as u64)
    }

    fn list_channels(&mut self) -> StoreResult<Vec<Channel>> {
        let mut channels =
            query_all(&self.connection, &format!("SELECT {CHANNEL_COLUMNS} FROM channels ORDER BY id"), [], read_channel)?;
        let keys = query_all(
            &self.connection,
            "SELECT channel_id, id, \"key\", enabled, remark FROM channel_keys ORDER BY channel_id, position, id",
            [],
            read_channel_key,
        )?;
        attach_channel_keys(&mut channels, keys);
        Ok(channels)
    }

    fn channel_by_id(&mut self, id: i64) -> StoreResult<Option<Channel>> {
        load_channel(&self.connection, id)
    }

    fn create_channel(&mut self, channel: &Channel) -> StoreResult<Channel> {
        let now = unix_seconds();
        let transaction = self.write_transaction()?;
        transaction
            .execute(
                "INSERT INTO channels (name, type, enabled, base_urls, models, headers, proxy, auto_sync, match_regex, \
                 auto_group, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
                params![
                    channel.name,
                    channel.channel_type.as_str(),
                    channel.enabled,
                    strings_to_json(&channel.base_urls),
                    strings_to_json(&channel.models),
                    headers_to_json(&channel.headers),
                    channel.proxy,
                    channel.auto_sync,
                    channel.match_regex,
                    channel.auto_group.as_str(),
                    now
                ],
            )
            .map_err(|error| channel_write_error(error, channel))?;
        let id = transaction.last_insert_rowid();
        replace_channel_keys(&transaction, id, &channel.keys)?;
        let stored = load_channel(&transaction, id)?.ok_or_else(|| {
            StoreError::Backend("sqlite: channel missing right after insert".to_owned())
        })?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn update_channel(&mut self, channel: &Channel) -> StoreResult<Option<Channel>> {
        let transaction = self.write_transaction()?;
        let updated = transaction
            .execute(
                "UPDATE channels SET name = ?1, type = ?2, enabled = ?3, base_urls = ?4, models = ?5, headers = ?6, \
                 proxy = ?7, auto_sync = ?8, match_regex = ?9, auto_group = ?10, updated_at = ?11 WHERE id = ?12",
                params![
                    channel.name,
                    channel.channel_type.as_str(),
                    channel.enabled,
                    strings_to_json(&channel.base_urls),
                    strings_to_json(&channel.models),
                    headers_to_json(&channel.headers),
                    channel.proxy,
                    channel.auto_sync,
                    channel.match_regex,
                    channel.auto_group.as_str(),
                    unix_seconds(),
                    channel.id
                ],
            )
            .map_err(|error| channel_write_error(error, channel))?;
        if updated == 0 {
            return Ok(None);
        }
        replace_channel_keys(&transaction, channel.id, &channel.keys)?;
        let stored = load_channel(&transaction, channel.id)?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn delete_channel(&mut self, id: i64) -> StoreResult<bool> {
        // Keys, group items and channel prices go with it through ON DELETE CASCADE.
        let deleted = self
            .connection
            .execute("DELETE FROM channels WHERE id = ?1", [id])
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_groups(&mut self) -> StoreResult<Vec<Group>> {
        let mut groups =
            query_all(&self.connection, &format!("SELECT {GROUP_COLUMNS} FROM channel_groups ORDER BY id"), [], read_group)?;
        let items = query_all(
            &self.connection,
            &format!("SELECT {GROUP_ITEM_COLUMNS} FROM group_items ORDER BY group_id, position, id"),
            [],
            read_group_item,
        )?;
        attach_group_items(&mut groups, items);
        Ok(groups)
    }

    fn group_by_id(&mut self, id: i64) -> StoreResult<Option<Group>> {
        load_group(&self.connection, id)
    }

    fn create_group(&mut self, group: &Group) -> StoreResult<Group> {
        let now = unix_seconds();
        let transaction = self.write_transaction()?;
        transaction
            .execute(
                "INSERT INTO channel_groups (name, mode, max_attempts, first_byte_timeout_ms, total_timeout_ms, \
                 sticky_seconds, match_regex, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![
                    group.name,
                    group.mode.as_str(),
                    group.max_attempts,
                    u64_to_column(group.first_byte_timeout_ms),
                    u64_to_column(group.total_timeout_ms),
                    u64_to_column(group.sticky_seconds),
                    group.match_regex,
                    now
                ],
            )
            .map_err(|error| group_write_error(error, group))?;
        let id = transaction.last_insert_rowid();
        replace_group_items(&transaction, id, &group.items)?;
        let stored = load_group(&transaction, id)?.ok_or_else(|| {
            StoreError::Backend("sqlite: group missing right after insert".to_owned())
        })?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn update_group(&mut self, group: &Group) -> StoreResult<Option<Group>> {
        let transaction = self.write_transaction()?;
        let updated = transaction
            .execute(
                "UPDATE channel_groups SET name = ?1, mode = ?2, max_attempts = ?3, first_byte_timeout_ms = ?4, \
                 total_timeout_ms = ?5, sticky_seconds = ?6, match_regex = ?7, updated_at = ?8 WHERE id = ?9",
                params![
                    group.name,
                    group.mode.as_str(),
                    group.max_attempts,
                    u64_to_column(group.first_byte_timeout_ms),
                    u64_to_column(group.total_timeout_ms),
                    u64_to_column(group.sticky_seconds),
                    group.match_regex,
                    unix_seconds(),
                    group.id
                ],
            )
            .map_err(|error| group_write_error(error, group))?;
        if updated == 0 {
            return Ok(None);
        }
        replace_group_items(&transaction, group.id, &group.items)?;
        let stored = load_group(&transaction, group.id)?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn delete_group(&mut self, id: i64) -> StoreResult<bool> {
        let deleted = self
            .connection
            .execute("DELETE FROM channel_groups WHERE id = ?1", [id])
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_api_keys(&mut self) -> StoreResult<Vec<ApiKey>> {
        query_all(&self.connection, &format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY id"), [], read_api_key)
    }

    fn api_key_by_id(&mut self, id: i64) -> StoreResult<Option<ApiKey>> {
        load_api_key(&self.connection, "id", &id)
    }

    fn api_key_by_hash(&mut self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        load_api_key(&self.connection, "key_hash", &key_hash)
    }

    fn create_api_key(&mut self, api_key: &ApiKey) -> StoreResult<ApiKey> {
        let now = unix_seconds();
        self.connection
            .execute(
                "INSERT INTO api_keys (name, key_hash, key_prefix, enabled, expires_at, max_cost, allowed_models, \
                 created_at, updated_at, rpm, tpm) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)",
                params![
                    api_key.name,
                    api_key.key_hash,
                    api_key.key_prefix,
                    api_key.enabled,
                    api_key.expires_at,
                    api_key.max_cost,
                    strings_to_json(&api_key.allowed_models),
                    now,
                    u64_to_column(api_key.rpm),
                    u64_to_column(api_key.tpm)
                ],
            )
            .map_err(|error| api_key_write_error(error, api_key))?;
        let id = self.connection.last_insert_rowid();
        load_api_key(&self.connection, "id", &id)?.ok_or_else(|| {
            StoreError::Backend("sqlite: api key missing right after insert".to_owned())
        })
    }

    fn update_api_key(&mut self, api_key: &ApiKey) -> StoreResult<Option<ApiKey>> {
        let updated = self
            .connection
            .execute(
                "UPDATE api_keys SET name = ?1, enabled = ?2, expires_at = ?3, max_cost = ?4, allowed_models = ?5, \
                 updated_at = ?6, rpm = ?8, tpm = ?9 WHERE id = ?7",
                params![
                    api_key.name,
                    api_key.enabled,
                    api_key.expires_at,
                    api_key.max_cost,
                    strings_to_json(&api_key.allowed_models),
                    unix_seconds(),
                    api_key.id,
                    u64_to_column(api_key.rpm),
                    u64_to_column(api_key.tpm)
                ],
            )
            .map_err(|error| api_key_write_error(error, api_key))?;
        if updated == 0 {
            return Ok(None);
        }
        load_api_key(&self.connection, "id", &api_key.id)
    }

    fn delete_api_key(&mut self, id: i64) -> StoreResult<bool> {
        let deleted = self
            .connection
            .execute("DELETE FROM api_keys WHERE id = ?1", [id])
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_prices(&mut self) -> StoreResult<Vec<ModelPrice>> {
        query_all(
            &self.connection,
            &format!("SELECT {PRICE_COLUMNS} FROM model_prices ORDER BY model, channel_scope"),
            [],
            read_price,
        )
    }

    fn upsert_price(&mut self, price: &ModelPrice) -> StoreResult<ModelPrice> {
        let id: i64 = self
            .connection
            .query_row(
                "INSERT INTO model_prices (model, channel_id, channel_scope, input, output, cache_read, cache_write) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (model, channel_scope) DO UPDATE SET input = excluded.input, output = excluded.output, \
                 cache_read = excluded.cache_read, cache_write = excluded.cache_write RETURNING id",
                params![
                    price.model,
                    price.channel_id,
                    price_channel_scope(price.channel_id),
                    price.input,
                    price.output,
                    price.cache_read,
                    price.cache_write
                ],
                |row| row.get(0),
            )
            .map_err(|error| match violation(error) {
                Violation::ForeignKey => {
                    StoreError::MissingReference(format!("channel {}", price.channel_id.unwrap_or_default()))
                }
                Violation::Unique(constraint) => StoreError::Backend(format!("sqlite: unexpected duplicate {constraint}")),
                Violation::Other(error) => error,
            })?;
        Ok(ModelPrice {
            id,
            ..price.clone()
        })
    }

    fn delete_price(&mut self, id: i64) -> StoreResult<bool> {
        let deleted = self
            .connection
            .execute("DELETE FROM model_prices WHERE id = ?1", [id])
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_settings(&mut self) -> StoreResult<Vec<(String, String)>> {
        query_all(
            &self.connection,
            "SELECT \"key\", value FROM settings ORDER BY \"key\"",
            [],
            |row| Ok((row.text(0)?, row.text(1)?)),
        )
    }

    fn setting(&mut self, key: &str) -> StoreResult<Option<String>> {
        query_optional(&self.connection, "SELECT value FROM settings WHERE \"key\" = ?1", [key], |row| row.text(0))
    }

    fn set_setting(&mut self, key: &str, value: &str) -> StoreResult<()> {
        self.connection
            .execute(
                "INSERT INTO settings (\"key\", value) VALUES (?1, ?2) \
                 ON CONFLICT (\"key\") DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(query_error)?;
        Ok(())
    }

    fn add_stats(&mut self, rows: &[StatsRow]) -> StoreResult<()> {
        let transaction = self.write_transaction()?;
        {
            let mut statement =
                transaction.prepare_cached(&stats_sql::stats_upsert(Dialect::Sqlite)).map_err(query_error)?;
            for row in rows {
                let values = stats_sql::stats_row_values(row);
                statement.execute(rusqlite::params_from_iter(values.iter().map(sqlite_value))).map_err(query_error)?;
            }
        }
        transaction.commit().map_err(query_error)
    }

    fn stats_grouped(&mut self, from_hour: i64, to_hour: i64, grouping: StatsGrouping) -> StoreResult<Vec<StatsRow>> {
        query_all(
            &self.connection,
            &stats_sql::stats_grouped_query(Dialect::Sqlite, grouping),
            params![from_hour, to_hour],
            stats_sql::decode_stats_row,
        )
    }

    fn replace_stats_range(&mut self, from_hour: i64, to_hour: i64, rows: &[StatsRow]) -> StoreResult<()> {
        let transaction = self.write_transaction()?;
        transaction.execute(&stats_sql::stats_delete_range(Dialect::Sqlite), params![from_hour, to_hour]).map_err(query_error)?;
        {
            let mut statement =
                transaction.prepare_cached(&stats_sql::stats_upsert(Dialect::Sqlite)).map_err(query_error)?;
            for row in rows {
                let values = stats_sql::stats_row_values(row);
                statement.execute(rusqlite::params_from_iter(values.iter().map(sqlite_value))).map_err(query_error)?;
            }
        }
        transaction.commit().map_err(query_error)
    }

    fn stats_days_to_roll_up(&mut self, before_hour: i64, limit: u64) -> StoreResult<Vec<i64>> {
        query_all(
            &self.connection,
            &stats_sql::stats_days_to_roll_up_query(Dialect::Sqlite),
            params![before_hour, u64_to_column(limit)],
            |row| row.int(0),
        )
    }

    fn all_stats_rows(&mut self) -> StoreResult<Vec<StatsRow>> {
        query_all(&self.connection, &backup::all_stats_rows_query(), [], stats_sql::decode_stats_row)
    }

    fn replace_configuration(&mut self, backup: &Backup) -> StoreResult<()> {
        let statements = backup::replace_statements(Dialect::Sqlite, backup);
        let transaction = self.write_transaction()?;
        for statement in &statements {
            transaction
                .execute(&statement.sql, rusqlite::params_from_iter(statement.values.iter()))
                .map_err(|error| import_error(violation(error)))?;
        }
        // Dropping the transaction without a commit rolls it back, so an error above left
        // nothing changed.
        transaction.commit().map_err(query_error)
    }

    fn insert_logs(&mut self, rows: &[LogRow]) -> StoreResult<()> {
        let transaction = self.write_transaction()?;
        // Bound straight from the rows, not through `log_insert_batches`' values: that would copy
        // every string once more, and this runs for every relayed request.
        for chunk in stats_sql::log_insert_chunks(rows) {
            let mut statement =
                transaction.prepare_cached(stats_sql::log_insert(Dialect::Sqlite, chunk.len())).map_err(query_error)?;
            for (position, row) in chunk.iter().enumerate() {
                bind_log_row(&mut statement, position * stats_sql::LOG_COLUMNS.len(), row).map_err(query_error)?;
            }
            statement.raw_execute().map_err(query_error)?;
        }
        transaction.commit().map_err(query_error)
    }

    fn list_logs(&mut self, filter: &LogFilter, offset: u64, limit: u64) -> StoreResult<(Vec<RequestLog>, u64)> {
        let (clause, values) = stats_sql::log_filter_clause(Dialect::Sqlite, filter);
        let total: i64 = self
            .connection
            .query_row(
                &format!("SELECT COUNT(*) FROM {}{clause}", stats_sql::LOG_TABLE),
                rusqlite::params_from_iter(values.iter().map(sqlite_value)),
                |row| row.get(0),
            )
            .map_err(query_error)?;
        let (sql, mut values) = stats_sql::log_page_query(Dialect::Sqlite, filter, false);
        values.push(SqlValue::Int(u64_to_column(limit)));
        values.push(SqlValue::Int(u64_to_column(offset)));
        let logs = query_all(
            &self.connection,
            &sql,
            rusqlite::params_from_iter(values.iter().map(sqlite_value)),
            stats_sql::decode_log,
        )?;
        Ok((logs, u64::try_from(total).unwrap_or(0)))
    }

    fn log_by_id(&mut self, id: i64) -> StoreResult<Option<RequestLog>> {
        let sql = format!("SELECT {} FROM {} WHERE id = ?1", stats_sql::log_select_columns(true), stats_sql::LOG_TABLE);
        query_optional(&self.connection, &sql, [id], stats_sql::decode_log)
    }

    fn prune_logs(&mut self, before_ms: i64, keep_rows: u64) -> StoreResult<u64> {
        let transaction = self.write_transaction()?;
        let mut deleted = transaction.execute(&stats_sql::log_prune_by_age(Dialect::Sqlite), [first_id_at(before_ms)]).map_err(query_error)?;
        let boundary: Option<i64> = transaction
            .query_row(&stats_sql::log_prune_boundary_query(Dialect::Sqlite), [u64_to_column(keep_rows)], |row| row.get(0))
            .optional()
            .map_err(query_error)?;
        if let Some(boundary) = boundary {
            deleted += transaction.execute(&format!("DELETE FROM {} WHERE id <= ?1", stats_sql::LOG_TABLE), [boundary]).map_err(query_error)?;
        }
        transaction.commit().map_err(query_error)?;
        Ok(deleted as u64)
    }

    fn save_response(&mut self, response: &StoredResponse) -> StoreResult<()> {
        self.connection
            .execute(
                "INSERT OR REPLACE INTO stored_responses (id, api_key_id, created_at, expires_at, model, response_json, input_items, output_items, size_bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    response.id,
                    response.api_key_id,
                    response.created_at,
                    response.expires_at,
                    response.model,
                    response.response_json,
                    response.input_items,
                    response.output_items,
                    response.size_bytes
                ],
            )
            .map_err(query_error)?;
        Ok(())
    }

    fn response_by_id(&mut self, id: &str) -> StoreResult<Option<StoredResponse>> {
        self.connection
            .query_row("SELECT id, api_key_id, created_at, expires_at, model, response_json, input_items, output_items, size_bytes FROM stored_responses WHERE id = ?1", [id], |row| {
                Ok(StoredResponse {
                    id: row.get(0)?,
                    api_key_id: row.get(1)?,
                    created_at: row.get(2)?,
                    expires_at: row.get(3)?,
                    model: row.get(4)?,
                    response_json: row.get(5)?,
                    input_items: row.get(6)?,
                    output_items: row.get(7)?,
                    size_bytes: row.get(8)?,
                })
            })
            .optional()
            .map_err(query_error)
    }

    fn delete_response(&mut self, id: &str) -> StoreResult<bool> {
        let deleted = self.connection.execute("DELETE FROM stored_responses WHERE id = ?1", [id]).map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn prune_responses(&mut self, now: i64, max_total_bytes: u64) -> StoreResult<u64> {
        let transaction = self.write_transaction()?;
        let mut deleted = transaction.execute("DELETE FROM stored_responses WHERE expires_at <= ?1", [now]).map_err(query_error)? as u64;
        let newest_first: Vec<(String, i64)> = {
            let mut statement = transaction
                .prepare("SELECT id, size_bytes FROM stored_responses ORDER BY created_at DESC, id DESC")
                .map_err(query_error)?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).map_err(query_error)?;
            rows.collect::<Result<_, _>>().map_err(query_error)?
        };
        for id in responses_over_size_cap(newest_first, max_total_bytes) {
            deleted += transaction.execute("DELETE FROM stored_responses WHERE id = ?1", [id]).map_err(query_error)? as u64;
        }
        transaction.commit().map_err(query_error)?;
        Ok(deleted)
    }
}

/// A failed import statement: validation should have caught duplicates and dangling references,
/// so they are reported as such in case it did not.
fn import_error(violation: Violation) -> StoreError {
    match violation {
        Violation::Unique(constraint) => StoreError::Duplicate(format!("import: {constraint}")),
        Violation::ForeignKey => StoreError::MissingReference("import: a row refers to one that is not imported".to_owned()),
        Violation::Other(error) => error,
    }
}

/// Binds by reference, so texts are not copied once more on the way to SQLite.
impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            SqlValue::Int(number) => ToSqlOutput::Owned(Value::Integer(*number)),
            SqlValue::OptionalInt(number) => ToSqlOutput::Owned(number.map_or(Value::Null, Value::Integer)),
            SqlValue::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            SqlValue::OptionalText(text) => match text {
                Some(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
                None => ToSqlOutput::Owned(Value::Null),
            },
            SqlValue::Bool(flag) => ToSqlOutput::Owned(Value::Integer(i64::from(*flag))),
            SqlValue::Float(number) => ToSqlOutput::Owned(Value::Real(*number)),
            SqlValue::OptionalFloat(number) => ToSqlOutput::Owned(number.map_or(Value::Null, Value::Real)),
        })
    }
}

/// Binds one row of a multi-row log `INSERT` (columns in `LOG_COLUMNS` order), its first
/// placeholder being `before + 1`.
/// Binds a log row's values. A missing value is not bound at all: the statement comes from
/// rusqlite's cache, which clears every binding to NULL when a statement goes back (and a new
/// one starts so), and the bodies are missing from almost every row.
fn bind_log_row(statement: &mut rusqlite::CachedStatement<'_>, before: usize, row: &LogRow) -> rusqlite::Result<()> {
    statement.raw_bind_parameter(before + 1, row.id)?;
    statement.raw_bind_parameter(before + 2, row.time_ms)?;
    if let Some(api_key_id) = row.api_key_id {
        statement.raw_bind_parameter(before + 3, api_key_id)?;
    }
    statement.raw_bind_parameter(before + 4, row.group.as_str())?;
    if let Some(channel_id) = row.channel_id {
        statement.raw_bind_parameter(before + 5, channel_id)?;
    }
    statement.raw_bind_parameter(before + 6, row.success)?;
    statement.raw_bind_parameter(before + 7, row.detail.as_str())?;
    if let Some(request_body) = &row.request_body {
        statement.raw_bind_parameter(before + 8, request_body.as_str())?;
    }
    if let Some(response_body) = &row.response_body {
        statement.raw_bind_parameter(before + 9, response_body.as_str())?;
    }
    Ok(())
}

fn sqlite_value(value: &SqlValue) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match value {
        SqlValue::Int(number) => Value::Integer(*number),
        SqlValue::OptionalInt(number) => number.map_or(Value::Null, Value::Integer),
        SqlValue::Text(text) => Value::Text(text.clone()),
        SqlValue::OptionalText(text) => text.clone().map_or(Value::Null, Value::Text),
        SqlValue::Bool(flag) => Value::Integer(i64::from(*flag)),
        SqlValue::Float(number) => Value::Real(*number),
        SqlValue::OptionalFloat(number) => number.map_or(Value::Null, Value::Real),
    }
}

/// `ColumnReader` over a rusqlite row.
struct SqliteColumns<'row, 'statement>(&'row Row<'statement>);

impl ColumnReader for SqliteColumns<'_, '_> {
    fn int(&self, index: usize) -> StoreResult<i64> {
        self.0.get(index).map_err(query_error)
    }
    fn optional_int(&self, index: usize) -> StoreResult<Option<i64>> {
        self.0.get(index).map_err(query_error)
    }
    fn float(&self, index: usize) -> StoreResult<f64> {
        self.0.get(index).map_err(query_error)
    }
    fn optional_float(&self, index: usize) -> StoreResult<Option<f64>> {
        self.0.get(index).map_err(query_error)
    }
    fn text(&self, index: usize) -> StoreResult<String> {
        self.0.get(index).map_err(query_error)
    }
    fn optional_text(&self, index: usize) -> StoreResult<Option<String>> {
        self.0.get(index).map_err(query_error)
    }
    fn boolean(&self, index: usize) -> StoreResult<bool> {
        self.0.get(index).map_err(query_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_database::TempDatabase;

    fn pragma(store: &SqliteStore, name: &str) -> i64 {
        store.connection.pragma_query_value(None, name, |row| row.get(0)).unwrap()
    }

    /// Bytes of page cache the connection holds (`SQLITE_DBSTATUS_CACHE_USED`).
    fn cache_used(store: &SqliteStore) -> i32 {
        let (mut current, mut highwater) = (0, 0);
        // SAFETY: the handle is the store's open connection, used on this thread only, and the
        // two out-pointers are valid for the call.
        let status = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                store.connection.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED,
                &mut current,
                &mut highwater,
                0,
            )
        };
        assert_eq!(status, rusqlite::ffi::SQLITE_OK);
        current
    }

    #[test]
    fn releasing_idle_memory_empties_the_page_cache_and_the_store_serves_on() {
        let database = TempDatabase::new("sqlite-release");
        let mut store = open(&database.path()).unwrap();
        assert!(store.seed_admin("admin", "hash").unwrap());
        assert!(store.has_admin().unwrap());
        let before = cache_used(&store);
        assert!(before >= 16 * 1024, "the queries above cached no page ({before} bytes)");
        store.release_idle_memory();
        let after = cache_used(&store);
        // SQLite may keep the page it last held (page one, with the schema cookie): 17 KB here,
        // against 570 KB before.
        assert!(after <= 2 * 16 * 1024, "{after} of {before} bytes still cached");
        assert!(store.admin_by_username("admin").unwrap().is_some());
    }

    #[test]
    fn a_new_database_has_16_kib_pages_and_checkpoints_at_4_mib() {
        let database = TempDatabase::new("sqlite-new");
        let store = open(&database.path()).unwrap();
        assert_eq!(pragma(&store, "page_size"), 16 * 1024);
        assert_eq!(pragma(&store, "wal_autocheckpoint"), 256);
        drop(store);
        let reopened = open(&database.path()).unwrap();
        assert_eq!(pragma(&reopened, "page_size"), 16 * 1024);
    }

    #[test]
    fn an_existing_database_keeps_its_page_size_and_its_wal_stays_about_4_mib() {
        let database = TempDatabase::new("sqlite-existing");
        {
            // A database made by an earlier version, with SQLite's default page size.
            let connection = Connection::open(database.path()).unwrap();
            connection.pragma_update(None, "page_size", 4096).unwrap();
            connection.pragma_update(None, "journal_mode", "WAL").unwrap();
            connection.execute_batch("CREATE TABLE kept (value INTEGER); INSERT INTO kept VALUES (7);").unwrap();
        }
        let store = open(&database.path()).unwrap();
        assert_eq!(pragma(&store, "page_size"), 4096);
        assert_eq!(pragma(&store, "wal_autocheckpoint"), 1024);
        let kept: i64 = store.connection.query_row("SELECT value FROM kept", [], |row| row.get(0)).unwrap();
        assert_eq!(kept, 7);
    }
}
