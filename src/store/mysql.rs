//! The MySQL and MariaDB backend on our own wire client (`mysql_client`), one connection per store.
//!
//! Two MySQL habits shape this file: DDL commits on its own, so migrations rely on idempotent
//! statements and a named lock rather than a transaction; and `UPDATE` normally reports rows
//! *changed*, so connections ask for `CLIENT_FOUND_ROWS` to learn whether the row exists.

use std::collections::HashSet;
use std::time::Duration;

use crate::store::mysql_client::{self, Conn, FromColumnText, Params, Row, Transaction, Value};

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
use crate::store::migrate::{
    MYSQL_MIGRATIONS, pending, split_statements, warn_about_unknown_versions,
};
use crate::store::{Store, StoreError, StoreResult, responses_over_size_cap};
use crate::util::unix_seconds;

/// A `Store` on one MySQL or MariaDB connection.
pub struct MysqlStore {
    connection: Conn,
    /// When the connection was last known to work; see `connection_lost`.
    last_checked: std::time::Instant,
}

/// How often `connection_lost` pings the server (the mysql driver has no cheap "is it closed").
const CONNECTION_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Connects to `url` (`mysql://user[:password]@host[:port]/database`), then applies pending
/// migrations. Errors name the host, port and database, never the password.
pub fn open(url: &str) -> StoreResult<MysqlStore> {
    let config = mysql_client::parse_config(url)
        .map_err(|error| StoreError::Backend(format!("invalid MySQL URL: {error}")))?;
    let target = config.describe_target();
    if config.database.is_empty() {
        return Err(StoreError::Backend(format!(
            "the MySQL URL for {target} names no database (expected mysql://user@host:3306/database)"
        )));
    }
    let mut connection = Conn::new(&config)
        .map_err(|error| StoreError::Backend(format!("cannot connect to MySQL at {target}: {error}")))?;
    migrate(&mut connection).map_err(|error| {
        StoreError::Backend(format!(
            "cannot migrate MySQL database at {target}: {error}"
        ))
    })?;
    Ok(MysqlStore { connection, last_checked: std::time::Instant::now() })
}

fn migrate(connection: &mut Conn) -> Result<(), String> {
    // A named lock serialises nodes that start together. Lock names are server-wide, so the
    // name includes (a digest of) the database: two databases on one server do not wait on
    // each other.
    let locked: Option<Option<i64>> = connection
        .query_first("SELECT GET_LOCK(CONCAT('octopus_migrate_', MD5(DATABASE())), 60)")
        .map_err(|error| error.to_string())?;
    if locked.flatten() != Some(1) {
        return Err("timed out waiting for the migration lock held by another octopus".to_owned());
    }
    let outcome = apply_pending_migrations(connection);
    let _ = connection.query_drop("DO RELEASE_LOCK(CONCAT('octopus_migrate_', MD5(DATABASE())))");
    outcome.map_err(|error| error.to_string())
}

fn apply_pending_migrations(connection: &mut Conn) -> Result<(), mysql_client::Error> {
    connection.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT NOT NULL PRIMARY KEY, \
         applied_at BIGINT NOT NULL) ENGINE=InnoDB",
    )?;
    let applied_versions: Vec<i64> = connection.query("SELECT version FROM schema_migrations")?;
    warn_about_unknown_versions("mysql", MYSQL_MIGRATIONS, &applied_versions);
    for migration in pending(MYSQL_MIGRATIONS, &applied_versions) {
        for statement in split_statements(migration.sql) {
            match connection.query_drop(&statement) {
                Ok(()) => {}
                // MySQL has no `ADD COLUMN IF NOT EXISTS` and commits DDL at once: a run that
                // added the columns and stopped before recording the version finds them there.
                // Each ALTER adds its columns in one statement, so "already there" means all of them.
                Err(mysql_client::Error::Server(error))
                    if error.code == ER_DUP_FIELDNAME && statement.starts_with("ALTER TABLE") => {}
                // A copy whose source table is gone ran before: the table is dropped only after
                // its rows were copied (0006 moves `relay_logs` into `request_logs`).
                Err(mysql_client::Error::Server(error))
                    if error.code == ER_NO_SUCH_TABLE && statement.starts_with("INSERT IGNORE INTO") => {}
                Err(error) => return Err(error),
            }
        }
        connection.exec_drop(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
            (migration.version, unix_seconds()),
        )?;
        log::info!(
            "mysql: applied migration {} ({})",
            migration.version,
            migration.description
        );
    }
    Ok(())
}

fn query_error(error: mysql_client::Error) -> StoreError {
    let message = format!("mysql: {error}");
    if is_unavailable(&error) { StoreError::Unavailable(message) } else { StoreError::Backend(message) }
}

/// Server error codes that say the server cannot serve now: disk full, shutdown in progress,
/// connection killed.
const ER_DISK_FULL: u16 = 1021;
const ER_SERVER_SHUTDOWN: u16 = 1053;
const ER_CONNECTION_KILLED: u16 = 1927;

/// A lost or refused connection, a broken exchange, or one of the server codes above.
fn is_unavailable(error: &mysql_client::Error) -> bool {
    match error {
        mysql_client::Error::Io(_) | mysql_client::Error::Protocol(_) => true,
        mysql_client::Error::Server(server_error) => {
            matches!(server_error.code, ER_DISK_FULL | ER_SERVER_SHUTDOWN | ER_CONNECTION_KILLED)
        }
        mysql_client::Error::Conversion(_) | mysql_client::Error::Config(_) => false,
    }
}

const ER_DUP_ENTRY: u16 = 1062;
const ER_NO_SUCH_TABLE: u16 = 1146;
const ER_DUP_FIELDNAME: u16 = 1060;
const ER_NO_REFERENCED_ROW: u16 = 1216;
const ER_NO_REFERENCED_ROW_2: u16 = 1452;

fn violation(error: mysql_client::Error) -> Violation {
    if let mysql_client::Error::Server(server_error) = &error {
        match server_error.code {
            // "Duplicate entry '<value>' for key '<index>'": only the index name is trusted,
            // the value could contain anything.
            ER_DUP_ENTRY => {
                let index = server_error
                    .message
                    .rsplit(" for key ")
                    .next()
                    .unwrap_or_default();
                return Violation::Unique(index.to_owned());
            }
            ER_NO_REFERENCED_ROW | ER_NO_REFERENCED_ROW_2 => return Violation::ForeignKey,
            _ => {}
        }
    }
    Violation::Other(query_error(error))
}

/// Runs `sql` and reads every row through `read`.
fn query_all<T>(
    connection: &mut Conn,
    sql: &str,
    parameters: impl Into<Params>,
    read: impl Fn(&dyn ColumnReader) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let rows: Vec<Row> = connection.exec(sql, parameters).map_err(query_error)?;
    rows.iter().map(|row| read(&MysqlColumns(row))).collect()
}

/// Runs `sql` and reads the first row, if any, through `read`.
fn query_optional<T>(
    connection: &mut Conn,
    sql: &str,
    parameters: impl Into<Params>,
    read: impl Fn(&dyn ColumnReader) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let row: Option<Row> = connection.exec_first(sql, parameters).map_err(query_error)?;
    row.as_ref().map(|row| read(&MysqlColumns(row))).transpose()
}

fn load_channel(connection: &mut Conn, id: i64) -> StoreResult<Option<Channel>> {
    let sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = ?");
    let Some(channel) = query_optional(connection, &sql, (id,), read_channel)? else {
        return Ok(None);
    };
    let mut channels = vec![channel];
    let keys = query_all(
        connection,
        "SELECT channel_id, id, `key`, enabled, remark FROM channel_keys WHERE channel_id = ? ORDER BY position, id",
        (id,),
        read_channel_key,
    )?;
    attach_channel_keys(&mut channels, keys);
    Ok(channels.pop())
}

/// Makes the stored keys of `channel_id` equal to `keys`, keeping the ids of keys that match.
fn replace_channel_keys(
    transaction: &mut Transaction,
    channel_id: i64,
    keys: &[ChannelKey],
) -> StoreResult<()> {
    let existing_ids: HashSet<i64> = query_all(
        transaction,
        "SELECT id FROM channel_keys WHERE channel_id = ?",
        (channel_id,),
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
                .exec_drop(
                    "UPDATE channel_keys SET `key` = ?, enabled = ?, remark = ?, position = ? WHERE id = ?",
                    (&key.key, key.enabled, &key.remark, position, key.id),
                )
                .map_err(query_error)?;
        } else {
            transaction
                .exec_drop(
                    "INSERT INTO channel_keys (channel_id, `key`, enabled, remark, position) VALUES (?, ?, ?, ?, ?)",
                    (channel_id, &key.key, key.enabled, &key.remark, position),
                )
                .map_err(query_error)?;
        }
    }
    for stale_id in existing_ids.difference(&kept_ids) {
        transaction
            .exec_drop("DELETE FROM channel_keys WHERE id = ?", (stale_id,))
            .map_err(query_error)?;
    }
    Ok(())
}

fn channel_write_error(error: mysql_client::Error, channel: &Channel) -> StoreError {
    match violation(error) {
        Violation::Unique(_) => StoreError::Duplicate(format!("channel name '{}'", channel.name)),
        Violation::ForeignKey => StoreError::MissingReference(format!("channel {}", channel.id)),
        Violation::Other(error) => error,
    }
}

/// The channel columns in `INSERT`/`UPDATE` order, followed by `tail`.
fn channel_values(channel: &Channel, tail: &[Value]) -> Vec<Value> {
    let mut values = vec![
        Value::from(&channel.name),
        Value::from(channel.channel_type.as_str()),
        Value::from(channel.enabled),
        Value::from(strings_to_json(&channel.base_urls)),
        Value::from(strings_to_json(&channel.models)),
        Value::from(headers_to_json(&channel.headers)),
        Value::from(&channel.proxy),
        Value::from(channel.auto_sync),
        Value::from(&channel.match_regex),
        Value::from(channel.auto_group.as_str()),
    ];
    values.extend_from_slice(tail);
    values
}

fn load_group(connection: &mut Conn, id: i64) -> StoreResult<Option<Group>> {
    let sql = format!("SELECT {GROUP_COLUMNS} FROM channel_groups WHERE id = ?");
    let Some(group) = query_optional(connection, &sql, (id,), read_group)? else {
        return Ok(None);
    };
    let mut groups = vec![group];
    let items = query_all(
        connection,
        &format!("SELECT {GROUP_ITEM_COLUMNS} FROM group_items WHERE group_id = ? ORDER BY position, id"),
        (id,),
        read_group_item,
    )?;
    attach_group_items(&mut groups, items);
    Ok(groups.pop())
}

fn replace_group_items(
    transaction: &mut Transaction,
    group_id: i64,
    items: &[GroupItem],
) -> StoreResult<()> {
    transaction
        .exec_drop("DELETE FROM group_items WHERE group_id = ?", (group_id,))
        .map_err(query_error)?;
    for (position, item) in items.iter().enumerate() {
        transaction
            .exec_drop(
                "INSERT INTO group_items (group_id, channel_id, model, priority, weight, position) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                (
                    group_id,
                    item.channel_id,
                    &item.model,
                    i64::from(item.priority),
                    i64::from(item.weight),
                    position as i64,
                ),
            )
            .map_err(|error| match violation(error) {
                Violation::ForeignKey => {
                    StoreError::MissingReference(format!("channel {}", item.channel_id))
                }
                Violation::Unique(index) => {
                    StoreError::Backend(format!("mysql: unexpected duplicate on {index}"))
                }
                Violation::Other(error) => error,
            })?;
    }
    Ok(())
}

fn group_write_error(error: mysql_client::Error, group: &Group) -> StoreError {
    match violation(error) {
        Violation::Unique(_) => StoreError::Duplicate(format!("group name '{}'", group.name)),
        Violation::ForeignKey => StoreError::MissingReference(format!("group {}", group.id)),
        Violation::Other(error) => error,
    }
}

/// The group columns in `INSERT`/`UPDATE` order, followed by `tail`.
fn group_values(group: &Group, tail: &[Value]) -> Vec<Value> {
    let mut values = vec![
        Value::from(&group.name),
        Value::from(group.mode.as_str()),
        Value::from(i64::from(group.max_attempts)),
        Value::from(u64_to_column(group.first_byte_timeout_ms)),
        Value::from(u64_to_column(group.total_timeout_ms)),
        Value::from(u64_to_column(group.sticky_seconds)),
        Value::from(&group.match_regex),
    ];
    values.extend_from_slice(tail);
    values
}

fn api_key_write_error(error: mysql_client::Error, api_key: &ApiKey) -> StoreError {
    match violation(error) {
        Violation::Unique(index) => api_key_duplicate(&index, api_key),
        Violation::ForeignKey => {
            StoreError::Backend("mysql: unexpected foreign key violation on api_keys".to_owned())
        }
        Violation::Other(error) => error,
    }
}

fn load_api_key(connection: &mut Conn, column: &str, value: Value) -> StoreResult<Option<ApiKey>> {
    let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE {column} = ?");
    query_optional(connection, &sql, vec![value], read_api_key)
}

impl MysqlStore {
    fn write_transaction(&mut self) -> StoreResult<Transaction<'_>> {
        self.connection
            .start_transaction()
            .map_err(query_error)
    }

    /// Runs a single-statement write and returns the number of rows it matched.
    fn execute(&mut self, sql: &str, parameters: impl Into<Params>) -> Result<u64, mysql_client::Error> {
        self.connection.exec_drop(sql, parameters)?;
        Ok(self.connection.affected_rows())
    }
}

/// Inserts with `sql` inside `transaction` and returns the new row's id.
fn insert_returning_id(
    transaction: &mut Transaction,
    sql: &str,
    parameters: Vec<Value>,
) -> Result<i64, mysql_client::Error> {
    transaction.exec_drop(sql, parameters)?;
    Ok(transaction.last_insert_id() as i64)
}

impl Store for MysqlStore {
    /// Pings at most every few seconds: a restarted server is noticed within that time, and the
    /// jobs in between fail with a clear error rather than hang.
    fn connection_lost(&mut self) -> bool {
        if self.last_checked.elapsed() < CONNECTION_CHECK_INTERVAL {
            return false;
        }
        self.last_checked = std::time::Instant::now();
        self.connection.ping().is_err()
    }

    fn backend_name(&self) -> &'static str {
        "mysql"
    }

    fn has_admin(&mut self) -> StoreResult<bool> {
        let exists: Option<i64> = self.connection.query_first("SELECT EXISTS (SELECT 1 FROM admin_users)").map_err(query_error)?;
        Ok(exists == Some(1))
    }

    fn seed_admin(&mut self, username: &str, password_hash: &str) -> StoreResult<bool> {
        let now = unix_seconds();
        let inserted = self.execute(
            "INSERT INTO admin_users (username, password_hash, must_change_password, created_at, updated_at) \
             SELECT ?, ?, TRUE, ?, ? FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM admin_users)",
            (username, password_hash, now, now),
        );
        match inserted {
            Ok(count) => Ok(count > 0),
            // Another node seeded the same account between our check and our insert.
            Err(error) => match violation(error) {
                Violation::Unique(_) => Ok(false),
                Violation::ForeignKey => Err(StoreError::Backend(
                    "mysql: unexpected foreign key violation".to_owned(),
                )),
                Violation::Other(error) => Err(error),
            },
        }
    }

    fn admin_by_username(&mut self, username: &str) -> StoreResult<Option<AdminUser>> {
        query_optional(
            &mut self.connection,
            &format!("SELECT {ADMIN_COLUMNS} FROM admin_users WHERE username = ?"),
            (username,),
            read_admin,
        )
    }

    fn admin_by_id(&mut self, id: i64) -> StoreResult<Option<AdminUser>> {
        query_optional(
            &mut self.connection,
            &format!("SELECT {ADMIN_COLUMNS} FROM admin_users WHERE id = ?"),
            (id,),
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
            .execute(
                "UPDATE admin_users SET password_hash = ?, must_change_password = ?, updated_at = ? WHERE id = ?",
                (password_hash, must_change_password, unix_seconds(), id),
            )
            .map_err(query_error)?;
        if updated == 0 {
            return Err(StoreError::MissingReference(format!("admin user {id}")));
        }
        Ok(())
    }

    fn create_session(&mut self, session: &AdminSession) -> StoreResult<()> {
        self.execute(
            "INSERT INTO admin_sessions (token_hash, user_id, expires_at, created_at) VALUES (?, ?, ?, ?)",
            (&session.token_hash, session.user_id, session.expires_at, session.created_at),
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
            &mut self.connection,
            &format!("SELECT {SESSION_COLUMNS} FROM admin_sessions WHERE token_hash = ?"),
            (token_hash,),
            read_session,
        )
    }

    fn delete_sessions_of_user(&mut self, user_id: i64) -> StoreResult<u64> {
        self.execute("DELETE FROM admin_sessions WHERE user_id = ?", (user_id,))
            .map_err(query_error)
    }

    fn delete_expired_sessions(&mut self, now: i64) -> StoreResult<u64> {
        self.execute("DELETE FROM admin_sessions WHERE expires_at <= ?", (now,))
            .map_err(query_error)
    }

    fn list_channels(&mut self) -> StoreResult<Vec<Channel>> {
        let sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels ORDER BY id");
        let mut channels = query_all(&mut self.connection, &sql, (), read_channel)?;
        let keys = query_all(
            &mut self.connection,
            "SELECT channel_id, id, `key`, enabled, remark FROM channel_keys ORDER BY channel_id, position, id",
            (),
            read_channel_key,
        )?;
        attach_channel_keys(&mut channels, keys);
        Ok(channels)
    }

    fn channel_by_id(&mut self, id: i64) -> StoreResult<Option<Channel>> {
        load_channel(&mut self.connection, id)
    }

    fn create_channel(&mut self, channel: &Channel) -> StoreResult<Channel> {
        let now = unix_seconds();
        let mut transaction = self.write_transaction()?;
        let id = insert_returning_id(
            &mut transaction,
            "INSERT INTO channels (name, type, enabled, base_urls, models, headers, proxy, auto_sync, match_regex, \
             auto_group, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            channel_values(channel, &[Value::from(now), Value::from(now)]),
        )
        .map_err(|error| channel_write_error(error, channel))?;
        replace_channel_keys(&mut transaction, id, &channel.keys)?;
        let stored = load_channel(&mut transaction, id)?.ok_or_else(|| {
            StoreError::Backend("mysql: channel missing right after insert".to_owned())
        })?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn update_channel(&mut self, channel: &Channel) -> StoreResult<Option<Channel>> {
        let mut transaction = self.write_transaction()?;
        transaction
            .exec_drop(
                "UPDATE channels SET name = ?, type = ?, enabled = ?, base_urls = ?, models = ?, headers = ?, \
                 proxy = ?, auto_sync = ?, match_regex = ?, auto_group = ?, updated_at = ? WHERE id = ?",
                channel_values(channel, &[Value::from(unix_seconds()), Value::from(channel.id)]),
            )
            .map_err(|error| channel_write_error(error, channel))?;
        if transaction.affected_rows() == 0 {
            return Ok(None);
        }
        replace_channel_keys(&mut transaction, channel.id, &channel.keys)?;
        let stored = load_channel(&mut transaction, channel.id)?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn delete_channel(&mut self, id: i64) -> StoreResult<bool> {
        // Keys, group items and channel prices go with it through ON DELETE CASCADE.
        let deleted = self
            .execute("DELETE FROM channels WHERE id = ?", (id,))
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_groups(&mut self) -> StoreResult<Vec<Group>> {
        let sql = format!("SELECT {GROUP_COLUMNS} FROM channel_groups ORDER BY id");
        let mut groups = query_all(&mut self.connection, &sql, (), read_group)?;
        let items = query_all(
            &mut self.connection,
            &format!("SELECT {GROUP_ITEM_COLUMNS} FROM group_items ORDER BY group_id, position, id"),
            (),
            read_group_item,
        )?;
        attach_group_items(&mut groups, items);
        Ok(groups)
    }

    fn group_by_id(&mut self, id: i64) -> StoreResult<Option<Group>> {
        load_group(&mut self.connection, id)
    }

    fn create_group(&mut self, group: &Group) -> StoreResult<Group> {
        let now = unix_seconds();
        let mut transaction = self.write_transaction()?;
        let id = insert_returning_id(
            &mut transaction,
            "INSERT INTO channel_groups (name, mode, max_attempts, first_byte_timeout_ms, total_timeout_ms, \
             sticky_seconds, match_regex, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            group_values(group, &[Value::from(now), Value::from(now)]),
        )
        .map_err(|error| group_write_error(error, group))?;
        replace_group_items(&mut transaction, id, &group.items)?;
        let stored = load_group(&mut transaction, id)?.ok_or_else(|| {
            StoreError::Backend("mysql: group missing right after insert".to_owned())
        })?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn update_group(&mut self, group: &Group) -> StoreResult<Option<Group>> {
        let mut transaction = self.write_transaction()?;
        transaction
            .exec_drop(
                "UPDATE channel_groups SET name = ?, mode = ?, max_attempts = ?, first_byte_timeout_ms = ?, \
                 total_timeout_ms = ?, sticky_seconds = ?, match_regex = ?, updated_at = ? WHERE id = ?",
                group_values(group, &[Value::from(unix_seconds()), Value::from(group.id)]),
            )
            .map_err(|error| group_write_error(error, group))?;
        if transaction.affected_rows() == 0 {
            return Ok(None);
        }
        replace_group_items(&mut transaction, group.id, &group.items)?;
        let stored = load_group(&mut transaction, group.id)?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn delete_group(&mut self, id: i64) -> StoreResult<bool> {
        let deleted = self
            .execute("DELETE FROM channel_groups WHERE id = ?", (id,))
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_api_keys(&mut self) -> StoreResult<Vec<ApiKey>> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY id");
        query_all(&mut self.connection, &sql, (), read_api_key)
    }

    fn api_key_by_id(&mut self, id: i64) -> StoreResult<Option<ApiKey>> {
        load_api_key(&mut self.connection, "id", Value::from(id))
    }

    fn api_key_by_hash(&mut self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        load_api_key(&mut self.connection, "key_hash", Value::from(key_hash))
    }

    fn create_api_key(&mut self, api_key: &ApiKey) -> StoreResult<ApiKey> {
        let now = unix_seconds();
        self.connection
            .exec_drop(
                "INSERT INTO api_keys (name, key_hash, key_prefix, enabled, expires_at, max_cost, allowed_models, \
                 created_at, updated_at, rpm, tpm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    &api_key.name,
                    &api_key.key_hash,
                    &api_key.key_prefix,
                    api_key.enabled,
                    api_key.expires_at,
                    api_key.max_cost,
                    strings_to_json(&api_key.allowed_models),
                    now,
                    now,
                    u64_to_column(api_key.rpm),
                    u64_to_column(api_key.tpm),
                ),
            )
            .map_err(|error| api_key_write_error(error, api_key))?;
        let id = self.connection.last_insert_id() as i64;
        load_api_key(&mut self.connection, "id", Value::from(id))?.ok_or_else(|| {
            StoreError::Backend("mysql: api key missing right after insert".to_owned())
        })
    }

    fn update_api_key(&mut self, api_key: &ApiKey) -> StoreResult<Option<ApiKey>> {
        let updated = self
            .execute(
                "UPDATE api_keys SET name = ?, enabled = ?, expires_at = ?, max_cost = ?, allowed_models = ?, \
                 updated_at = ?, rpm = ?, tpm = ? WHERE id = ?",
                (
                    &api_key.name,
                    api_key.enabled,
                    api_key.expires_at,
                    api_key.max_cost,
                    strings_to_json(&api_key.allowed_models),
                    unix_seconds(),
                    u64_to_column(api_key.rpm),
                    u64_to_column(api_key.tpm),
                    api_key.id,
                ),
            )
            .map_err(|error| api_key_write_error(error, api_key))?;
        if updated == 0 {
            return Ok(None);
        }
        load_api_key(&mut self.connection, "id", Value::from(api_key.id))
    }

    fn delete_api_key(&mut self, id: i64) -> StoreResult<bool> {
        let deleted = self
            .execute("DELETE FROM api_keys WHERE id = ?", (id,))
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_prices(&mut self) -> StoreResult<Vec<ModelPrice>> {
        let sql = format!("SELECT {PRICE_COLUMNS} FROM model_prices ORDER BY model, channel_scope");
        query_all(&mut self.connection, &sql, (), read_price)
    }

    fn upsert_price(&mut self, price: &ModelPrice) -> StoreResult<ModelPrice> {
        // LAST_INSERT_ID(id) on the update path makes the existing row's id the one reported.
        self.connection
            .exec_drop(
                "INSERT INTO model_prices (model, channel_id, channel_scope, input, output, cache_read, cache_write) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id), input = VALUES(input), output = VALUES(output), \
                 cache_read = VALUES(cache_read), cache_write = VALUES(cache_write)",
                (
                    &price.model,
                    price.channel_id,
                    price_channel_scope(price.channel_id),
                    price.input,
                    price.output,
                    price.cache_read,
                    price.cache_write,
                ),
            )
            .map_err(|error| match violation(error) {
                Violation::ForeignKey => {
                    StoreError::MissingReference(format!("channel {}", price.channel_id.unwrap_or_default()))
                }
                Violation::Unique(index) => StoreError::Backend(format!("mysql: unexpected duplicate on {index}")),
                Violation::Other(error) => error,
            })?;
        let id = self.connection.last_insert_id() as i64;
        Ok(ModelPrice {
            id,
            ..price.clone()
        })
    }

    fn delete_price(&mut self, id: i64) -> StoreResult<bool> {
        let deleted = self
            .execute("DELETE FROM model_prices WHERE id = ?", (id,))
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_settings(&mut self) -> StoreResult<Vec<(String, String)>> {
        query_all(
            &mut self.connection,
            "SELECT `key`, value FROM settings ORDER BY `key`",
            (),
            |row| Ok((row.text(0)?, row.text(1)?)),
        )
    }

    fn setting(&mut self, key: &str) -> StoreResult<Option<String>> {
        query_optional(
            &mut self.connection,
            "SELECT value FROM settings WHERE `key` = ?",
            (key,),
            |row| row.text(0),
        )
    }

    fn set_setting(&mut self, key: &str, value: &str) -> StoreResult<()> {
        self.execute(
            "INSERT INTO settings (`key`, value) VALUES (?, ?) ON DUPLICATE KEY UPDATE value = VALUES(value)",
            (key, value),
        )
        .map_err(query_error)?;
        Ok(())
    }

    fn add_stats(&mut self, rows: &[StatsRow]) -> StoreResult<()> {
        let sql = stats_sql::stats_upsert(Dialect::Mysql);
        let mut transaction = self.write_transaction()?;
        for row in rows {
            transaction.exec_drop(&sql, mysql_parameters(&stats_sql::stats_row_values(row))).map_err(query_error)?;
        }
        transaction.commit().map_err(query_error)
    }

    fn stats_grouped(&mut self, from_hour: i64, to_hour: i64, grouping: StatsGrouping) -> StoreResult<Vec<StatsRow>> {
        let sql = stats_sql::stats_grouped_query(Dialect::Mysql, grouping);
        query_all(&mut self.connection, &sql, (from_hour, to_hour), stats_sql::decode_stats_row)
    }

    fn replace_stats_range(&mut self, from_hour: i64, to_hour: i64, rows: &[StatsRow]) -> StoreResult<()> {
        let sql = stats_sql::stats_upsert(Dialect::Mysql);
        let mut transaction = self.write_transaction()?;
        transaction.exec_drop(stats_sql::stats_delete_range(Dialect::Mysql), (from_hour, to_hour)).map_err(query_error)?;
        for row in rows {
            transaction.exec_drop(&sql, mysql_parameters(&stats_sql::stats_row_values(row))).map_err(query_error)?;
        }
        transaction.commit().map_err(query_error)
    }

    fn stats_days_to_roll_up(&mut self, before_hour: i64, limit: u64) -> StoreResult<Vec<i64>> {
        let days: Vec<i64> = self
            .connection
            .exec(stats_sql::stats_days_to_roll_up_query(Dialect::Mysql), (before_hour, u64_to_column(limit)))
            .map_err(query_error)?;
        Ok(days)
    }

    fn all_stats_rows(&mut self) -> StoreResult<Vec<StatsRow>> {
        let rows: Vec<Row> = self.connection.query(backup::all_stats_rows_query()).map_err(query_error)?;
        rows.iter().map(|row| stats_sql::decode_stats_row(&MysqlColumns(row))).collect()
    }

    fn replace_configuration(&mut self, backup: &Backup) -> StoreResult<()> {
        let statements = backup::replace_statements(Dialect::Mysql, backup);
        let mut transaction = self.write_transaction()?;
        for statement in &statements {
            // A statement without placeholders goes as plain text: binding an empty list is not
            // the same as binding none for the driver.
            let result = if statement.values.is_empty() {
                transaction.query_drop(&statement.sql)
            } else {
                transaction.exec_drop(&statement.sql, mysql_parameters(&statement.values))
            };
            result.map_err(|error| import_error(violation(error)))?;
        }
        // A transaction dropped without a commit rolls back, so an error above changed nothing.
        transaction.commit().map_err(query_error)
    }

    fn insert_logs(&mut self, rows: &[LogRow]) -> StoreResult<()> {
        let mut transaction = self.write_transaction()?;
        for (sql, values) in stats_sql::log_insert_batches(Dialect::Mysql, rows) {
            transaction.exec_drop(sql, mysql_parameters(&values)).map_err(query_error)?;
        }
        transaction.commit().map_err(query_error)
    }

    fn list_logs(&mut self, filter: &LogFilter, offset: u64, limit: u64) -> StoreResult<(Vec<RequestLog>, u64)> {
        let (clause, values) = stats_sql::log_filter_clause(Dialect::Mysql, filter);
        let total: Option<i64> = self
            .connection
            .exec_first(format!("SELECT COUNT(*) FROM {}{clause}", stats_sql::LOG_TABLE), mysql_parameters(&values))
            .map_err(query_error)?;
        let (sql, mut values) = stats_sql::log_page_query(Dialect::Mysql, filter, false);
        values.push(SqlValue::Int(u64_to_column(limit)));
        values.push(SqlValue::Int(u64_to_column(offset)));
        let logs = query_all(&mut self.connection, &sql, mysql_parameters(&values), stats_sql::decode_log)?;
        Ok((logs, u64::try_from(total.unwrap_or(0)).unwrap_or(0)))
    }

    fn log_by_id(&mut self, id: i64) -> StoreResult<Option<RequestLog>> {
        let sql = format!("SELECT {} FROM {} WHERE id = ?", stats_sql::log_select_columns(true), stats_sql::LOG_TABLE);
        query_optional(&mut self.connection, &sql, (id,), stats_sql::decode_log)
    }

    fn prune_logs(&mut self, before_ms: i64, keep_rows: u64) -> StoreResult<u64> {
        let mut transaction = self.write_transaction()?;
        transaction.exec_drop(stats_sql::log_prune_by_age(Dialect::Mysql), (first_id_at(before_ms),)).map_err(query_error)?;
        let mut deleted = transaction.affected_rows();
        let boundary: Option<i64> = transaction
            .exec_first(stats_sql::log_prune_boundary_query(Dialect::Mysql), (u64_to_column(keep_rows),))
            .map_err(query_error)?;
        if let Some(boundary) = boundary {
            transaction.exec_drop(format!("DELETE FROM {} WHERE id <= ?", stats_sql::LOG_TABLE), (boundary,)).map_err(query_error)?;
            deleted += transaction.affected_rows();
        }
        transaction.commit().map_err(query_error)?;
        Ok(deleted)
    }

    fn save_response(&mut self, response: &StoredResponse) -> StoreResult<()> {
        self.connection
            .exec_drop(
                "REPLACE INTO stored_responses (id, api_key_id, created_at, expires_at, model, response_json, input_items, output_items, size_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                Params(vec![
                    Value::from(response.id.as_str()),
                    Value::Int(response.api_key_id),
                    Value::Int(response.created_at),
                    Value::Int(response.expires_at),
                    Value::from(response.model.as_str()),
                    Value::from(response.response_json.as_str()),
                    Value::from(response.input_items.as_str()),
                    Value::from(response.output_items.as_str()),
                    Value::Int(response.size_bytes),
                ]),
            )
            .map_err(query_error)
    }

    fn response_by_id(&mut self, id: &str) -> StoreResult<Option<StoredResponse>> {
        type Columns = (String, i64, i64, i64, String, String, String, String, i64);
        let row: Option<Columns> =
            self.connection.exec_first("SELECT id, api_key_id, created_at, expires_at, model, response_json, input_items, output_items, size_bytes FROM stored_responses WHERE id = ?", (id,)).map_err(query_error)?;
        Ok(row.map(|(id, api_key_id, created_at, expires_at, model, response_json, input_items, output_items, size_bytes)| {
            StoredResponse { id, api_key_id, created_at, expires_at, model, response_json, input_items, output_items, size_bytes }
        }))
    }

    fn delete_response(&mut self, id: &str) -> StoreResult<bool> {
        self.connection.exec_drop("DELETE FROM stored_responses WHERE id = ?", (id,)).map_err(query_error)?;
        Ok(self.connection.affected_rows() > 0)
    }

    fn prune_responses(&mut self, now: i64, max_total_bytes: u64) -> StoreResult<u64> {
        let mut transaction = self.write_transaction()?;
        transaction.exec_drop("DELETE FROM stored_responses WHERE expires_at <= ?", (now,)).map_err(query_error)?;
        let mut deleted = transaction.affected_rows();
        let newest_first: Vec<(String, i64)> = transaction
            .query("SELECT id, size_bytes FROM stored_responses ORDER BY created_at DESC, id DESC")
            .map_err(query_error)?;
        for id in responses_over_size_cap(newest_first, max_total_bytes) {
            transaction.exec_drop("DELETE FROM stored_responses WHERE id = ?", (id,)).map_err(query_error)?;
            deleted += transaction.affected_rows();
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

fn mysql_parameters(values: &[SqlValue]) -> Params {
    Params(
        values
            .iter()
            .map(|value| match value {
                SqlValue::Int(number) => Value::Int(*number),
                SqlValue::OptionalInt(number) => number.map_or(Value::NULL, Value::Int),
                SqlValue::Text(text) => Value::Text(text.clone()),
                SqlValue::OptionalText(text) => {
                    text.as_ref().map_or(Value::NULL, |text| Value::Text(text.clone()))
                }
                SqlValue::Bool(flag) => Value::Int(i64::from(*flag)),
                SqlValue::Float(number) => Value::Double(*number),
                SqlValue::OptionalFloat(number) => number.map_or(Value::NULL, Value::Double),
            })
            .collect(),
    )
}

/// `ColumnReader` over a MySQL row.
struct MysqlColumns<'row>(&'row Row);

impl MysqlColumns<'_> {
    fn get<T: FromColumnText>(&self, index: usize) -> StoreResult<T> {
        self.0.get(index).map_err(|error| StoreError::Backend(format!("mysql: {error}")))
    }
}

impl ColumnReader for MysqlColumns<'_> {
    fn int(&self, index: usize) -> StoreResult<i64> {
        self.get(index)
    }
    fn optional_int(&self, index: usize) -> StoreResult<Option<i64>> {
        self.get(index)
    }
    fn float(&self, index: usize) -> StoreResult<f64> {
        self.get(index)
    }
    fn optional_float(&self, index: usize) -> StoreResult<Option<f64>> {
        self.get(index)
    }
    fn text(&self, index: usize) -> StoreResult<String> {
        self.get(index)
    }
    fn optional_text(&self, index: usize) -> StoreResult<Option<String>> {
        self.get(index)
    }
    fn boolean(&self, index: usize) -> StoreResult<bool> {
        self.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_international_host_name_is_refused_with_a_hint_and_without_the_password() {
        let Err(StoreError::Backend(message)) = open("mysql://octopus:hunter2@bücher.example/octopus") else {
            panic!("a non-ASCII host name must be refused before connecting");
        };
        assert!(message.starts_with("invalid MySQL URL: "), "{message}");
        assert!(message.contains("xn--"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
