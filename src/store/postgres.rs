//! The PostgreSQL backend on our own wire client (`postgres_client`), one connection per store.
//!
//! The client blocks on its socket; that is why stores live only on the pool's std threads and
//! never on a coroutine worker.

use std::collections::HashSet;

use crate::store::postgres_client::{self, Client, Row, ToSql, Transaction};
use crate::store::transaction::TransactionControl as _;

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
use crate::store::migrate::{POSTGRES_MIGRATIONS, pending, warn_about_unknown_versions};
use crate::store::{Store, StoreError, StoreResult, responses_over_size_cap};
use crate::util::unix_seconds;

/// A `Store` on one PostgreSQL connection.
pub struct PostgresStore {
    client: Client,
}

/// Connects to `url` (`postgres://user[:password]@host[:port]/database`), then applies pending
/// migrations. Errors name the host, port and database, never the password.
pub fn open(url: &str) -> StoreResult<PostgresStore> {
    let config = postgres_client::parse_config(url)
        .map_err(|error| StoreError::Backend(format!("invalid PostgreSQL URL: {error}")))?;
    let target = config.describe_target();
    let mut client = Client::connect(&config).map_err(|error| {
        StoreError::Backend(format!("cannot connect to PostgreSQL at {target}: {error}"))
    })?;
    migrate(&mut client).map_err(|error| {
        StoreError::Backend(format!("cannot migrate PostgreSQL database at {target}: {error}"))
    })?;
    Ok(PostgresStore { client })
}

/// The advisory lock that serialises migrations (the bytes of "octopus").
const MIGRATION_LOCK_ID: i64 = 0x006f_6374_6f70_7573;

fn migrate(client: &mut Client) -> Result<(), postgres_client::Error> {
    // PostgreSQL DDL is transactional. The advisory lock makes a second node starting at the
    // same moment wait here, then find the migrations applied.
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_ID])?;
    transaction.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
    let applied_versions = transaction
        .query("SELECT version FROM schema_migrations", &[])?
        .iter()
        .map(|row| row.get(0))
        .collect::<Result<Vec<i64>, _>>()?;
    warn_about_unknown_versions("postgres", POSTGRES_MIGRATIONS, &applied_versions);
    for migration in pending(POSTGRES_MIGRATIONS, &applied_versions) {
        transaction.batch_execute(migration.sql)?;
        transaction.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&migration.version, &unix_seconds()],
        )?;
        log::info!(
            "postgres: applied migration {} ({})",
            migration.version,
            migration.description
        );
    }
    transaction.commit()
}

fn query_error(error: postgres_client::Error) -> StoreError {
    let message = format!("postgres: {error}");
    if is_unavailable(&error) { StoreError::Unavailable(message) } else { StoreError::Backend(message) }
}

/// A lost connection, an IO failure, or a server that is shutting down, starting up or out of
/// disk (SQLSTATE classes 08 and 57P, and 53100) says the server cannot serve now, not that the
/// statement is wrong.
fn is_unavailable(error: &postgres_client::Error) -> bool {
    match error {
        postgres_client::Error::Io(_) | postgres_client::Error::Protocol(_) => true,
        postgres_client::Error::Server(database_error) => {
            let code = database_error.code.as_str();
            code.starts_with("08") || code.starts_with("57P") || code == "53100"
        }
        postgres_client::Error::Conversion(_) | postgres_client::Error::Config(_) => false,
    }
}

fn violation(error: postgres_client::Error) -> Violation {
    if let postgres_client::Error::Server(database_error) = &error {
        if database_error.code == postgres_client::UNIQUE_VIOLATION {
            return Violation::Unique(database_error.constraint.clone().unwrap_or_default());
        }
        if database_error.code == postgres_client::FOREIGN_KEY_VIOLATION {
            return Violation::ForeignKey;
        }
    }
    Violation::Other(query_error(error))
}

/// Runs `sql` and reads every row through `read`.
fn query_all<T>(
    client: &mut Client,
    sql: &str,
    parameters: &[&dyn ToSql],
    read: impl Fn(&dyn ColumnReader) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let rows = client.query(sql, parameters).map_err(query_error)?;
    rows.iter().map(|row| read(&PostgresColumns(row))).collect()
}

/// Runs `sql` and reads the first row, if any, through `read`.
fn query_optional<T>(
    client: &mut Client,
    sql: &str,
    parameters: &[&dyn ToSql],
    read: impl Fn(&dyn ColumnReader) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let row = client.query_opt(sql, parameters).map_err(query_error)?;
    row.as_ref().map(|row| read(&PostgresColumns(row))).transpose()
}

fn load_channel(client: &mut Client, id: i64) -> StoreResult<Option<Channel>> {
    let sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = $1");
    let Some(channel) = query_optional(client, &sql, &[&id], read_channel)? else {
        return Ok(None);
    };
    let mut channels = vec![channel];
    let keys = query_all(
        client,
        "SELECT channel_id, id, key, enabled, remark FROM channel_keys WHERE channel_id = $1 ORDER BY position, id",
        &[&id],
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
        "SELECT id FROM channel_keys WHERE channel_id = $1",
        &[&channel_id],
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
                    "UPDATE channel_keys SET key = $1, enabled = $2, remark = $3, position = $4 WHERE id = $5",
                    &[&key.key, &key.enabled, &key.remark, &position, &key.id],
                )
                .map_err(query_error)?;
        } else {
            transaction
                .execute(
                    "INSERT INTO channel_keys (channel_id, key, enabled, remark, position) VALUES ($1, $2, $3, $4, $5)",
                    &[&channel_id, &key.key, &key.enabled, &key.remark, &position],
                )
                .map_err(query_error)?;
        }
    }
    let stale_ids: Vec<i64> = existing_ids.difference(&kept_ids).copied().collect();
    if !stale_ids.is_empty() {
        transaction
            .execute("DELETE FROM channel_keys WHERE id = ANY($1)", &[&stale_ids])
            .map_err(query_error)?;
    }
    Ok(())
}

fn channel_write_error(error: postgres_client::Error, channel: &Channel) -> StoreError {
    match violation(error) {
        Violation::Unique(_) => StoreError::Duplicate(format!("channel name '{}'", channel.name)),
        Violation::ForeignKey => StoreError::MissingReference(format!("channel {}", channel.id)),
        Violation::Other(error) => error,
    }
}

fn load_group(client: &mut Client, id: i64) -> StoreResult<Option<Group>> {
    let sql = format!("SELECT {GROUP_COLUMNS} FROM channel_groups WHERE id = $1");
    let Some(group) = query_optional(client, &sql, &[&id], read_group)? else {
        return Ok(None);
    };
    let mut groups = vec![group];
    let items = query_all(
        client,
        &format!("SELECT {GROUP_ITEM_COLUMNS} FROM group_items WHERE group_id = $1 ORDER BY position, id"),
        &[&id],
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
        .execute("DELETE FROM group_items WHERE group_id = $1", &[&group_id])
        .map_err(query_error)?;
    for (position, item) in items.iter().enumerate() {
        transaction
            .execute(
                "INSERT INTO group_items (group_id, channel_id, model, priority, weight, position) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &group_id,
                    &item.channel_id,
                    &item.model,
                    &i64::from(item.priority),
                    &i64::from(item.weight),
                    &(position as i64),
                ],
            )
            .map_err(|error| match violation(error) {
                Violation::ForeignKey => {
                    StoreError::MissingReference(format!("channel {}", item.channel_id))
                }
                Violation::Unique(constraint) => {
                    StoreError::Backend(format!("postgres: unexpected duplicate on {constraint}"))
                }
                Violation::Other(error) => error,
            })?;
    }
    Ok(())
}

fn group_write_error(error: postgres_client::Error, group: &Group) -> StoreError {
    match violation(error) {
        Violation::Unique(_) => StoreError::Duplicate(format!("group name '{}'", group.name)),
        Violation::ForeignKey => StoreError::MissingReference(format!("group {}", group.id)),
        Violation::Other(error) => error,
    }
}

fn api_key_write_error(error: postgres_client::Error, api_key: &ApiKey) -> StoreError {
    match violation(error) {
        Violation::Unique(constraint) => api_key_duplicate(&constraint, api_key),
        Violation::ForeignKey => {
            StoreError::Backend("postgres: unexpected foreign key violation on api_keys".to_owned())
        }
        Violation::Other(error) => error,
    }
}

fn load_api_key(
    client: &mut Client,
    column: &str,
    value: &dyn ToSql,
) -> StoreResult<Option<ApiKey>> {
    let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE {column} = $1");
    query_optional(client, &sql, &[value], read_api_key)
}

impl PostgresStore {
    fn write_transaction(&mut self) -> StoreResult<Transaction<'_>> {
        self.client.transaction().map_err(query_error)
    }
}

impl Store for PostgresStore {
    fn connection_lost(&mut self) -> bool {
        self.client.is_closed()
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn has_admin(&mut self) -> StoreResult<bool> {
        self.client.query_one("SELECT EXISTS (SELECT 1 FROM admin_users)", &[]).and_then(|row| row.get(0)).map_err(query_error)
    }

    fn seed_admin(&mut self, username: &str, password_hash: &str) -> StoreResult<bool> {
        let now = unix_seconds();
        let inserted = self.client.execute(
            "INSERT INTO admin_users (username, password_hash, must_change_password, created_at, updated_at) \
             SELECT $1::TEXT, $2::TEXT, TRUE, $3::BIGINT, $3::BIGINT WHERE NOT EXISTS (SELECT 1 FROM admin_users)",
            &[&username, &password_hash, &now],
        );
        match inserted {
            Ok(count) => Ok(count > 0),
            // Another node seeded the same account between our check and our insert.
            Err(error) => match violation(error) {
                Violation::Unique(_) => Ok(false),
                Violation::ForeignKey => Err(StoreError::Backend(
                    "postgres: unexpected foreign key violation".to_owned(),
                )),
                Violation::Other(error) => Err(error),
            },
        }
    }

    fn admin_by_username(&mut self, username: &str) -> StoreResult<Option<AdminUser>> {
        query_optional(
            &mut self.client,
            &format!("SELECT {ADMIN_COLUMNS} FROM admin_users WHERE username = $1"),
            &[&username],
            read_admin,
        )
    }

    fn admin_by_id(&mut self, id: i64) -> StoreResult<Option<AdminUser>> {
        query_optional(
            &mut self.client,
            &format!("SELECT {ADMIN_COLUMNS} FROM admin_users WHERE id = $1"),
            &[&id],
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
            .client
            .execute(
                "UPDATE admin_users SET password_hash = $1, must_change_password = $2, updated_at = $3 WHERE id = $4",
                &[&password_hash, &must_change_password, &unix_seconds(), &id],
            )
            .map_err(query_error)?;
        if updated == 0 {
            return Err(StoreError::MissingReference(format!("admin user {id}")));
        }
        Ok(())
    }

    fn create_session(&mut self, session: &AdminSession) -> StoreResult<()> {
        self.client
            .execute(
                "INSERT INTO admin_sessions (token_hash, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4)",
                &[&session.token_hash, &session.user_id, &session.expires_at, &session.created_at],
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
            &mut self.client,
            &format!("SELECT {SESSION_COLUMNS} FROM admin_sessions WHERE token_hash = $1"),
            &[&token_hash],
            read_session,
        )
    }

    fn delete_sessions_of_user(&mut self, user_id: i64) -> StoreResult<u64> {
        self.client
            .execute("DELETE FROM admin_sessions WHERE user_id = $1", &[&user_id])
            .map_err(query_error)
    }

    fn delete_expired_sessions(&mut self, now: i64) -> StoreResult<u64> {
        self.client
            .execute("DELETE FROM admin_sessions WHERE expires_at <= $1", &[&now])
            .map_err(query_error)
    }

    fn list_channels(&mut self) -> StoreResult<Vec<Channel>> {
        let sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels ORDER BY id");
        let mut channels = query_all(&mut self.client, &sql, &[], read_channel)?;
        let keys = query_all(
            &mut self.client,
            "SELECT channel_id, id, key, enabled, remark FROM channel_keys ORDER BY channel_id, position, id",
            &[],
            read_channel_key,
        )?;
        attach_channel_keys(&mut channels, keys);
        Ok(channels)
    }

    fn channel_by_id(&mut self, id: i64) -> StoreResult<Option<Channel>> {
        load_channel(&mut self.client, id)
    }

    fn create_channel(&mut self, channel: &Channel) -> StoreResult<Channel> {
        let now = unix_seconds();
        let mut transaction = self.write_transaction()?;
        let row = transaction
            .query_one(
                "INSERT INTO channels (name, type, enabled, base_urls, models, headers, proxy, auto_sync, match_regex, \
                 auto_group, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id",
                &[
                    &channel.name,
                    &channel.channel_type.as_str(),
                    &channel.enabled,
                    &strings_to_json(&channel.base_urls),
                    &strings_to_json(&channel.models),
                    &headers_to_json(&channel.headers),
                    &channel.proxy,
                    &channel.auto_sync,
                    &channel.match_regex,
                    &channel.auto_group.as_str(),
                    &now,
                ],
            )
            .map_err(|error| channel_write_error(error, channel))?;
        let id: i64 = row.get(0).map_err(query_error)?;
        replace_channel_keys(&mut transaction, id, &channel.keys)?;
        let stored = load_channel(&mut transaction, id)?.ok_or_else(|| {
            StoreError::Backend("postgres: channel missing right after insert".to_owned())
        })?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn update_channel(&mut self, channel: &Channel) -> StoreResult<Option<Channel>> {
        let mut transaction = self.write_transaction()?;
        let updated = transaction
            .execute(
                "UPDATE channels SET name = $1, type = $2, enabled = $3, base_urls = $4, models = $5, headers = $6, \
                 proxy = $7, auto_sync = $8, match_regex = $9, auto_group = $10, updated_at = $11 WHERE id = $12",
                &[
                    &channel.name,
                    &channel.channel_type.as_str(),
                    &channel.enabled,
                    &strings_to_json(&channel.base_urls),
                    &strings_to_json(&channel.models),
                    &headers_to_json(&channel.headers),
                    &channel.proxy,
                    &channel.auto_sync,
                    &channel.match_regex,
                    &channel.auto_group.as_str(),
                    &unix_seconds(),
                    &channel.id,
                ],
            )
            .map_err(|error| channel_write_error(error, channel))?;
        if updated == 0 {
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
            .client
            .execute("DELETE FROM channels WHERE id = $1", &[&id])
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_groups(&mut self) -> StoreResult<Vec<Group>> {
        let sql = format!("SELECT {GROUP_COLUMNS} FROM channel_groups ORDER BY id");
        let mut groups = query_all(&mut self.client, &sql, &[], read_group)?;
        let items = query_all(
            &mut self.client,
            &format!("SELECT {GROUP_ITEM_COLUMNS} FROM group_items ORDER BY group_id, position, id"),
            &[],
            read_group_item,
        )?;
        attach_group_items(&mut groups, items);
        Ok(groups)
    }

    fn group_by_id(&mut self, id: i64) -> StoreResult<Option<Group>> {
        load_group(&mut self.client, id)
    }

    fn create_group(&mut self, group: &Group) -> StoreResult<Group> {
        let now = unix_seconds();
        let mut transaction = self.write_transaction()?;
        let row = transaction
            .query_one(
                "INSERT INTO channel_groups (name, mode, max_attempts, first_byte_timeout_ms, total_timeout_ms, \
                 sticky_seconds, match_regex, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
                &[
                    &group.name,
                    &group.mode.as_str(),
                    &i64::from(group.max_attempts),
                    &u64_to_column(group.first_byte_timeout_ms),
                    &u64_to_column(group.total_timeout_ms),
                    &u64_to_column(group.sticky_seconds),
                    &group.match_regex,
                    &now,
                ],
            )
            .map_err(|error| group_write_error(error, group))?;
        let id: i64 = row.get(0).map_err(query_error)?;
        replace_group_items(&mut transaction, id, &group.items)?;
        let stored = load_group(&mut transaction, id)?.ok_or_else(|| {
            StoreError::Backend("postgres: group missing right after insert".to_owned())
        })?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn update_group(&mut self, group: &Group) -> StoreResult<Option<Group>> {
        let mut transaction = self.write_transaction()?;
        let updated = transaction
            .execute(
                "UPDATE channel_groups SET name = $1, mode = $2, max_attempts = $3, first_byte_timeout_ms = $4, \
                 total_timeout_ms = $5, sticky_seconds = $6, match_regex = $7, updated_at = $8 WHERE id = $9",
                &[
                    &group.name,
                    &group.mode.as_str(),
                    &i64::from(group.max_attempts),
                    &u64_to_column(group.first_byte_timeout_ms),
                    &u64_to_column(group.total_timeout_ms),
                    &u64_to_column(group.sticky_seconds),
                    &group.match_regex,
                    &unix_seconds(),
                    &group.id,
                ],
            )
            .map_err(|error| group_write_error(error, group))?;
        if updated == 0 {
            return Ok(None);
        }
        replace_group_items(&mut transaction, group.id, &group.items)?;
        let stored = load_group(&mut transaction, group.id)?;
        transaction.commit().map_err(query_error)?;
        Ok(stored)
    }

    fn delete_group(&mut self, id: i64) -> StoreResult<bool> {
        let deleted = self
            .client
            .execute("DELETE FROM channel_groups WHERE id = $1", &[&id])
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_api_keys(&mut self) -> StoreResult<Vec<ApiKey>> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY id");
        query_all(&mut self.client, &sql, &[], read_api_key)
    }

    fn api_key_by_id(&mut self, id: i64) -> StoreResult<Option<ApiKey>> {
        load_api_key(&mut self.client, "id", &id)
    }

    fn api_key_by_hash(&mut self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        load_api_key(&mut self.client, "key_hash", &key_hash)
    }

    fn create_api_key(&mut self, api_key: &ApiKey) -> StoreResult<ApiKey> {
        let now = unix_seconds();
        let sql = format!(
            "INSERT INTO api_keys (name, key_hash, key_prefix, enabled, expires_at, max_cost, allowed_models, \
             created_at, updated_at, rpm, tpm) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10) RETURNING {API_KEY_COLUMNS}"
        );
        let row = self
            .client
            .query_one(
                &sql,
                &[
                    &api_key.name,
                    &api_key.key_hash,
                    &api_key.key_prefix,
                    &api_key.enabled,
                    &api_key.expires_at,
                    &api_key.max_cost,
                    &strings_to_json(&api_key.allowed_models),
                    &now,
                    &u64_to_column(api_key.rpm),
                    &u64_to_column(api_key.tpm),
                ],
            )
            .map_err(|error| api_key_write_error(error, api_key))?;
        read_api_key(&PostgresColumns(&row))
    }

    fn update_api_key(&mut self, api_key: &ApiKey) -> StoreResult<Option<ApiKey>> {
        let sql = format!(
            "UPDATE api_keys SET name = $1, enabled = $2, expires_at = $3, max_cost = $4, allowed_models = $5, \
             updated_at = $6, rpm = $8, tpm = $9 WHERE id = $7 RETURNING {API_KEY_COLUMNS}"
        );
        let row = self
            .client
            .query_opt(
                &sql,
                &[
                    &api_key.name,
                    &api_key.enabled,
                    &api_key.expires_at,
                    &api_key.max_cost,
                    &strings_to_json(&api_key.allowed_models),
                    &unix_seconds(),
                    &api_key.id,
                    &u64_to_column(api_key.rpm),
                    &u64_to_column(api_key.tpm),
                ],
            )
            .map_err(|error| api_key_write_error(error, api_key))?;
        row.map(|row| read_api_key(&PostgresColumns(&row))).transpose()
    }

    fn delete_api_key(&mut self, id: i64) -> StoreResult<bool> {
        let deleted = self
            .client
            .execute("DELETE FROM api_keys WHERE id = $1", &[&id])
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_prices(&mut self) -> StoreResult<Vec<ModelPrice>> {
        let sql = format!(
            "SELECT {PRICE_COLUMNS} FROM model_prices ORDER BY model COLLATE \"C\", channel_scope"
        );
        query_all(&mut self.client, &sql, &[], read_price)
    }

    fn upsert_price(&mut self, price: &ModelPrice) -> StoreResult<ModelPrice> {
        let row = self
            .client
            .query_one(
                "INSERT INTO model_prices (model, channel_id, channel_scope, input, output, cache_read, cache_write) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (model, channel_scope) DO UPDATE SET input = EXCLUDED.input, output = EXCLUDED.output, \
                 cache_read = EXCLUDED.cache_read, cache_write = EXCLUDED.cache_write RETURNING id",
                &[
                    &price.model,
                    &price.channel_id,
                    &price_channel_scope(price.channel_id),
                    &price.input,
                    &price.output,
                    &price.cache_read,
                    &price.cache_write,
                ],
            )
            .map_err(|error| match violation(error) {
                Violation::ForeignKey => {
                    StoreError::MissingReference(format!("channel {}", price.channel_id.unwrap_or_default()))
                }
                Violation::Unique(constraint) => {
                    StoreError::Backend(format!("postgres: unexpected duplicate on {constraint}"))
                }
                Violation::Other(error) => error,
            })?;
        let id: i64 = row.get(0).map_err(query_error)?;
        Ok(ModelPrice {
            id,
            ..price.clone()
        })
    }

    fn delete_price(&mut self, id: i64) -> StoreResult<bool> {
        let deleted = self
            .client
            .execute("DELETE FROM model_prices WHERE id = $1", &[&id])
            .map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn list_settings(&mut self) -> StoreResult<Vec<(String, String)>> {
        query_all(
            &mut self.client,
            "SELECT key, value FROM settings ORDER BY key COLLATE \"C\"",
            &[],
            |row| Ok((row.text(0)?, row.text(1)?)),
        )
    }

    fn setting(&mut self, key: &str) -> StoreResult<Option<String>> {
        query_optional(
            &mut self.client,
            "SELECT value FROM settings WHERE key = $1",
            &[&key],
            |row| row.text(0),
        )
    }

    fn set_setting(&mut self, key: &str, value: &str) -> StoreResult<()> {
        self.client
            .execute(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&key, &value],
            )
            .map_err(query_error)?;
        Ok(())
    }

    fn add_stats(&mut self, rows: &[StatsRow]) -> StoreResult<()> {
        let mut transaction = self.client.transaction().map_err(query_error)?;
        let statement = stats_sql::stats_upsert(Dialect::Postgres);
        for row in rows {
            let values = stats_sql::stats_row_values(row);
            transaction.execute(&statement, &postgres_parameters(&values)).map_err(query_error)?;
        }
        transaction.commit().map_err(query_error)
    }

    fn stats_grouped(&mut self, from_hour: i64, to_hour: i64, grouping: StatsGrouping) -> StoreResult<Vec<StatsRow>> {
        let sql = stats_sql::stats_grouped_query(Dialect::Postgres, grouping);
        query_all(&mut self.client, &sql, &[&from_hour, &to_hour], stats_sql::decode_stats_row)
    }

    fn replace_stats_range(&mut self, from_hour: i64, to_hour: i64, rows: &[StatsRow]) -> StoreResult<()> {
        let mut transaction = self.client.transaction().map_err(query_error)?;
        transaction.execute(&stats_sql::stats_delete_range(Dialect::Postgres), &[&from_hour, &to_hour]).map_err(query_error)?;
        let statement = stats_sql::stats_upsert(Dialect::Postgres);
        for row in rows {
            let values = stats_sql::stats_row_values(row);
            transaction.execute(&statement, &postgres_parameters(&values)).map_err(query_error)?;
        }
        transaction.commit().map_err(query_error)
    }

    fn stats_days_to_roll_up(&mut self, before_hour: i64, limit: u64) -> StoreResult<Vec<i64>> {
        let sql = stats_sql::stats_days_to_roll_up_query(Dialect::Postgres);
        query_all(&mut self.client, &sql, &[&before_hour, &u64_to_column(limit)], |row| row.int(0))
    }

    fn all_stats_rows(&mut self) -> StoreResult<Vec<StatsRow>> {
        query_all(&mut self.client, &backup::all_stats_rows_query(), &[], stats_sql::decode_stats_row)
    }

    fn replace_configuration(&mut self, backup: &Backup) -> StoreResult<()> {
        let statements = backup::replace_statements(Dialect::Postgres, backup);
        let mut transaction = self.write_transaction()?;
        for statement in &statements {
            transaction
                .execute(statement.sql.as_str(), &postgres_parameters(&statement.values))
                .map_err(|error| import_error(violation(error)))?;
        }
        // A transaction dropped without a commit rolls back, so an error above changed nothing.
        transaction.commit().map_err(query_error)
    }

    fn insert_logs(&mut self, rows: &[LogRow]) -> StoreResult<()> {
        let mut transaction = self.client.transaction().map_err(query_error)?;
        for (sql, values) in stats_sql::log_insert_batches(Dialect::Postgres, rows) {
            transaction.execute(sql, &postgres_parameters(&values)).map_err(query_error)?;
        }
        transaction.commit().map_err(query_error)
    }

    fn list_logs(&mut self, filter: &LogFilter, offset: u64, limit: u64) -> StoreResult<(Vec<RequestLog>, u64)> {
        let (clause, values) = stats_sql::log_filter_clause(Dialect::Postgres, filter);
        let total: i64 = self
            .client
            .query_one(&format!("SELECT COUNT(*) FROM {}{clause}", stats_sql::LOG_TABLE), &postgres_parameters(&values))
            .and_then(|row| row.get(0))
            .map_err(query_error)?;
        let (sql, mut values) = stats_sql::log_page_query(Dialect::Postgres, filter, false);
        values.push(SqlValue::Int(u64_to_column(limit)));
        values.push(SqlValue::Int(u64_to_column(offset)));
        let logs = query_all(&mut self.client, &sql, &postgres_parameters(&values), stats_sql::decode_log)?;
        Ok((logs, u64::try_from(total).unwrap_or(0)))
    }

    fn log_by_id(&mut self, id: i64) -> StoreResult<Option<RequestLog>> {
        let sql = format!("SELECT {} FROM {} WHERE id = $1", stats_sql::log_select_columns(true), stats_sql::LOG_TABLE);
        query_optional(&mut self.client, &sql, &[&id], stats_sql::decode_log)
    }

    fn prune_logs(&mut self, before_ms: i64, keep_rows: u64) -> StoreResult<u64> {
        let mut transaction = self.client.transaction().map_err(query_error)?;
        let mut deleted = transaction.execute(&stats_sql::log_prune_by_age(Dialect::Postgres), &[&first_id_at(before_ms)]).map_err(query_error)?;
        let boundary = transaction
            .query(&stats_sql::log_prune_boundary_query(Dialect::Postgres), &[&u64_to_column(keep_rows)])
            .map_err(query_error)?;
        if let Some(row) = boundary.first() {
            let boundary: i64 = row.get(0).map_err(query_error)?;
            deleted += transaction.execute(&format!("DELETE FROM {} WHERE id <= $1", stats_sql::LOG_TABLE), &[&boundary]).map_err(query_error)?;
        }
        transaction.commit().map_err(query_error)?;
        Ok(deleted)
    }

    fn save_response(&mut self, response: &StoredResponse) -> StoreResult<()> {
        self.client
            .execute(
                "INSERT INTO stored_responses (id, api_key_id, created_at, expires_at, model, response_json, input_items, output_items, size_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (id) DO UPDATE SET api_key_id = EXCLUDED.api_key_id, created_at = EXCLUDED.created_at, \
                 expires_at = EXCLUDED.expires_at, model = EXCLUDED.model, response_json = EXCLUDED.response_json, \
                 input_items = EXCLUDED.input_items, output_items = EXCLUDED.output_items, size_bytes = EXCLUDED.size_bytes",
                &[
                    &response.id,
                    &response.api_key_id,
                    &response.created_at,
                    &response.expires_at,
                    &response.model,
                    &response.response_json,
                    &response.input_items,
                    &response.output_items,
                    &response.size_bytes,
                ],
            )
            .map_err(query_error)?;
        Ok(())
    }

    fn response_by_id(&mut self, id: &str) -> StoreResult<Option<StoredResponse>> {
        let rows = self.client.query("SELECT id, api_key_id, created_at, expires_at, model, response_json, input_items, output_items, size_bytes FROM stored_responses WHERE id = $1", &[&id]).map_err(query_error)?;
        let Some(row) = rows.first() else { return Ok(None) };
        Ok(Some(StoredResponse {
            id: row.get(0).map_err(query_error)?,
            api_key_id: row.get(1).map_err(query_error)?,
            created_at: row.get(2).map_err(query_error)?,
            expires_at: row.get(3).map_err(query_error)?,
            model: row.get(4).map_err(query_error)?,
            response_json: row.get(5).map_err(query_error)?,
            input_items: row.get(6).map_err(query_error)?,
            output_items: row.get(7).map_err(query_error)?,
            size_bytes: row.get(8).map_err(query_error)?,
        }))
    }

    fn delete_response(&mut self, id: &str) -> StoreResult<bool> {
        let deleted = self.client.execute("DELETE FROM stored_responses WHERE id = $1", &[&id]).map_err(query_error)?;
        Ok(deleted > 0)
    }

    fn prune_responses(&mut self, now: i64, max_total_bytes: u64) -> StoreResult<u64> {
        let mut transaction = self.client.transaction().map_err(query_error)?;
        let mut deleted = transaction.execute("DELETE FROM stored_responses WHERE expires_at <= $1", &[&now]).map_err(query_error)?;
        let rows = transaction
            .query("SELECT id, size_bytes FROM stored_responses ORDER BY created_at DESC, id DESC", &[])
            .map_err(query_error)?;
        let mut newest_first = Vec::with_capacity(rows.len());
        for row in &rows {
            newest_first.push((row.get::<String>(0).map_err(query_error)?, row.get::<i64>(1).map_err(query_error)?));
        }
        for id in responses_over_size_cap(newest_first, max_total_bytes) {
            deleted += transaction.execute("DELETE FROM stored_responses WHERE id = $1", &[&id]).map_err(query_error)?;
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

fn postgres_parameters(values: &[SqlValue]) -> Vec<&dyn ToSql> {
    values
        .iter()
        .map(|value| -> &dyn ToSql {
            match value {
                SqlValue::Int(number) => number,
                SqlValue::OptionalInt(number) => number,
                SqlValue::Text(text) => text,
                SqlValue::OptionalText(text) => text,
                SqlValue::Bool(flag) => flag,
                SqlValue::Float(number) => number,
                SqlValue::OptionalFloat(number) => number,
            }
        })
        .collect()
}

/// `ColumnReader` over a PostgreSQL row.
struct PostgresColumns<'row>(&'row Row);

impl ColumnReader for PostgresColumns<'_> {
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
