//! A whole configuration as one value (what a backup document holds once it is checked) and the
//! SQL that replaces the stored configuration with it, written once for the three dialects.
//!
//! Each backend runs `replace_statements` in order inside one transaction, so an import either
//! lands whole or, on any database error, not at all. Ids are inserted as given: group items,
//! prices and statistics refer to channels and client keys by id, and those references must stay
//! true after a restore.

use crate::store::codec::{headers_to_json, price_channel_scope, strings_to_json, u64_to_column};
use crate::store::entities::{ApiKey, Channel, Group, ModelPrice, StatsRow};
use crate::store::stats_sql::{self, Dialect, SqlValue};

/// Everything an import replaces. The API checks it before it reaches a store (see
/// `api::backup`): every id is positive and unique per kind, names are unique, group items and
/// prices point at channels of this value, and stats keys are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backup {
    /// Channels with their keys; every key has its own positive id.
    pub channels: Vec<Channel>,
    pub groups: Vec<Group>,
    pub api_keys: Vec<ApiKey>,
    pub prices: Vec<ModelPrice>,
    /// Settings rows exactly as they go into the `settings` table (key with its prefix, JSON text).
    pub settings: Vec<(String, String)>,
    /// Statistics rows that replace `stats_hourly`; `None` leaves the statistics alone.
    pub stats: Option<Vec<StatsRow>>,
}

/// One statement with its values.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub values: Vec<SqlValue>,
}

/// The settings rows the import replaces: those the runtime settings own, never other keys.
pub const SETTINGS_KEY_PATTERN: &str = "setting.%";

/// Tables whose ids come from a sequence and are inserted explicitly by an import. PostgreSQL
/// sequences do not follow explicit ids (SQLite's AUTOINCREMENT and MySQL's AUTO_INCREMENT do),
/// so they are moved past the imported ids afterwards.
const TABLES_WITH_KEPT_IDS: [&str; 5] = ["channels", "channel_keys", "channel_groups", "api_keys", "model_prices"];

/// The statements that make the stored configuration equal to `backup`, in the order they must
/// run, all inside one transaction. Admin users and sessions, request logs and (when
/// `backup.stats` is `None`) statistics are not touched.
pub fn replace_statements(dialect: Dialect, backup: &Backup) -> Vec<Statement> {
    let key_column = match dialect {
        Dialect::Sqlite => "\"key\"",
        Dialect::Postgres => "key",
        Dialect::Mysql => "`key`",
    };
    let mut statements = Vec::new();
    // Children first, so no foreign key ever points at a deleted row.
    for table in ["group_items", "channel_groups", "model_prices", "channel_keys", "channels", "api_keys"] {
        statements.push(Statement { sql: format!("DELETE FROM {table}"), values: Vec::new() });
    }
    statements.push(Statement {
        sql: format!("DELETE FROM settings WHERE {key_column} LIKE {}", dialect.placeholder(1)),
        values: vec![SqlValue::Text(SETTINGS_KEY_PATTERN.to_string())],
    });
    if backup.stats.is_some() {
        statements.push(Statement { sql: "DELETE FROM stats_hourly".to_string(), values: Vec::new() });
    }

    let insert = |table: &str, columns: &[&str]| {
        let placeholders: Vec<String> = (1..=columns.len()).map(|position| dialect.placeholder(position)).collect();
        format!("INSERT INTO {table} ({}) VALUES ({})", columns.join(", "), placeholders.join(", "))
    };
    let channel_sql = insert(
        "channels",
        &["id", "name", "type", "enabled", "base_urls", "models", "headers", "proxy", "auto_sync", "match_regex", "auto_group", "created_at", "updated_at"],
    );
    let key_sql = insert("channel_keys", &["id", "channel_id", key_column, "enabled", "remark", "position"]);
    for channel in &backup.channels {
        statements.push(Statement {
            sql: channel_sql.clone(),
            values: vec![
                SqlValue::Int(channel.id),
                SqlValue::Text(channel.name.clone()),
                SqlValue::Text(channel.channel_type.as_str().to_string()),
                SqlValue::Bool(channel.enabled),
                SqlValue::Text(strings_to_json(&channel.base_urls)),
                SqlValue::Text(strings_to_json(&channel.models)),
                SqlValue::Text(headers_to_json(&channel.headers)),
                SqlValue::Text(channel.proxy.clone()),
                SqlValue::Bool(channel.auto_sync),
                SqlValue::Text(channel.match_regex.clone()),
                SqlValue::Text(channel.auto_group.as_str().to_string()),
                SqlValue::Int(channel.created_at),
                SqlValue::Int(channel.updated_at),
            ],
        });
        for (position, key) in channel.keys.iter().enumerate() {
            statements.push(Statement {
                sql: key_sql.clone(),
                values: vec![
                    SqlValue::Int(key.id),
                    SqlValue::Int(channel.id),
                    SqlValue::Text(key.key.clone()),
                    SqlValue::Bool(key.enabled),
                    SqlValue::Text(key.remark.clone()),
                    SqlValue::Int(position as i64),
                ],
            });
        }
    }

    let group_sql = insert(
        "channel_groups",
        &["id", "name", "mode", "max_attempts", "first_byte_timeout_ms", "total_timeout_ms", "sticky_seconds", "match_regex", "created_at", "updated_at"],
    );
    // Group items keep no id of their own in the API, so the database numbers them.
    let item_sql = insert("group_items", &["group_id", "channel_id", "model", "priority", "weight", "position"]);
    for group in &backup.groups {
        statements.push(Statement { sql: group_sql.clone(), values: group_values(group) });
        for (position, item) in group.items.iter().enumerate() {
            statements.push(Statement {
                sql: item_sql.clone(),
                values: vec![
                    SqlValue::Int(group.id),
                    SqlValue::Int(item.channel_id),
                    SqlValue::Text(item.model.clone()),
                    SqlValue::Int(i64::from(item.priority)),
                    SqlValue::Int(i64::from(item.weight)),
                    SqlValue::Int(position as i64),
                ],
            });
        }
    }

    let api_key_sql = insert(
        "api_keys",
        &[
            "id", "name", "key_hash", "key_prefix", "enabled", "expires_at", "max_cost", "allowed_models", "rpm", "tpm", "created_at",
            "updated_at",
        ],
    );
    for api_key in &backup.api_keys {
        statements.push(Statement {
            sql: api_key_sql.clone(),
            values: vec![
                SqlValue::Int(api_key.id),
                SqlValue::Text(api_key.name.clone()),
                SqlValue::Text(api_key.key_hash.clone()),
                SqlValue::Text(api_key.key_prefix.clone()),
                SqlValue::Bool(api_key.enabled),
                SqlValue::OptionalInt(api_key.expires_at),
                SqlValue::OptionalFloat(api_key.max_cost),
                SqlValue::Text(strings_to_json(&api_key.allowed_models)),
                SqlValue::Int(u64_to_column(api_key.rpm)),
                SqlValue::Int(u64_to_column(api_key.tpm)),
                SqlValue::Int(api_key.created_at),
                SqlValue::Int(api_key.updated_at),
            ],
        });
    }

    let price_sql =
        insert("model_prices", &["id", "model", "channel_id", "channel_scope", "input", "output", "cache_read", "cache_write"]);
    for price in &backup.prices {
        statements.push(Statement {
            sql: price_sql.clone(),
            values: vec![
                SqlValue::Int(price.id),
                SqlValue::Text(price.model.clone()),
                SqlValue::OptionalInt(price.channel_id),
                SqlValue::Int(price_channel_scope(price.channel_id)),
                SqlValue::Float(price.input),
                SqlValue::Float(price.output),
                SqlValue::Float(price.cache_read),
                SqlValue::Float(price.cache_write),
            ],
        });
    }

    let setting_sql = insert("settings", &[key_column, "value"]);
    for (key, value) in &backup.settings {
        statements.push(Statement { sql: setting_sql.clone(), values: vec![SqlValue::Text(key.clone()), SqlValue::Text(value.clone())] });
    }

    if let Some(rows) = &backup.stats {
        let stats_sql = stats_sql::stats_upsert(dialect);
        for row in rows {
            statements.push(Statement { sql: stats_sql.clone(), values: stats_sql::stats_row_values(row) });
        }
    }

    if dialect == Dialect::Postgres {
        for table in TABLES_WITH_KEPT_IDS {
            statements.push(Statement { sql: postgres_sequence_catch_up(table), values: Vec::new() });
        }
    }
    statements
}

/// Moves the id sequence of `table` past its largest id, never backwards: ids handed out before
/// the import are not handed out again. An empty table leaves the sequence as it is.
fn postgres_sequence_catch_up(table: &str) -> String {
    let sequence = format!("pg_get_serial_sequence('{table}', 'id')");
    format!(
        "SELECT setval({sequence}, GREATEST(MAX(id), COALESCE(pg_sequence_last_value(CAST({sequence} AS regclass)), 0))) \
         FROM {table} HAVING MAX(id) IS NOT NULL"
    )
}

fn group_values(group: &Group) -> Vec<SqlValue> {
    vec![
        SqlValue::Int(group.id),
        SqlValue::Text(group.name.clone()),
        SqlValue::Text(group.mode.as_str().to_string()),
        SqlValue::Int(i64::from(group.max_attempts)),
        SqlValue::Int(u64_to_column(group.first_byte_timeout_ms)),
        SqlValue::Int(u64_to_column(group.total_timeout_ms)),
        SqlValue::Int(u64_to_column(group.sticky_seconds)),
        SqlValue::Text(group.match_regex.clone()),
        SqlValue::Int(group.created_at),
        SqlValue::Int(group.updated_at),
    ]
}

/// Every `stats_hourly` row, in key order (the columns `stats_sql::decode_stats_row` reads).
pub fn all_stats_rows_query() -> String {
    format!(
        "SELECT hour, channel_id, api_key_id, group_name, model, {} FROM stats_hourly \
         ORDER BY hour, channel_id, api_key_id, group_name, model",
        crate::store::entities::STATS_COUNTER_COLUMNS.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::entities::{AutoGroup, ChannelKey, ChannelType, GroupItem, GroupMode, StatsKey};

    fn sample() -> Backup {
        Backup {
            channels: vec![Channel {
                id: 7,
                name: "main".to_string(),
                channel_type: ChannelType::OpenaiChat,
                enabled: true,
                base_urls: vec!["https://example.test/v1".to_string()],
                keys: vec![ChannelKey { id: 3, key: "sk-secret".to_string(), enabled: false, remark: "spare".to_string() }],
                models: vec!["gpt".to_string()],
                headers: BTreeMap::new(),
                proxy: String::new(),
                auto_sync: false,
                match_regex: String::new(),
                auto_group: AutoGroup::None,
                created_at: 1,
                updated_at: 2,
            }],
            groups: vec![Group {
                id: 4,
                name: "fast".to_string(),
                mode: GroupMode::Failover,
                items: vec![GroupItem { channel_id: 7, model: "gpt".to_string(), priority: 1, weight: 2 }],
                max_attempts: 3,
                first_byte_timeout_ms: 0,
                total_timeout_ms: 0,
                sticky_seconds: 0,
                match_regex: String::new(),
                created_at: 1,
                updated_at: 1,
            }],
            api_keys: Vec::new(),
            prices: Vec::new(),
            settings: vec![("setting.log_bodies".to_string(), "true".to_string())],
            stats: None,
        }
    }

    #[test]
    fn deletes_come_before_inserts_and_keep_the_ids() {
        let statements = replace_statements(Dialect::Sqlite, &sample());
        let first_insert = statements.iter().position(|statement| statement.sql.starts_with("INSERT")).unwrap();
        assert!(statements[..first_insert].iter().all(|statement| statement.sql.starts_with("DELETE")));
        assert!(statements[first_insert..].iter().all(|statement| statement.sql.starts_with("INSERT")));
        assert_eq!(statements[first_insert].values[0], SqlValue::Int(7));
        let key = statements.iter().find(|statement| statement.sql.starts_with("INSERT INTO channel_keys")).unwrap();
        assert_eq!(key.values[..3], [SqlValue::Int(3), SqlValue::Int(7), SqlValue::Text("sk-secret".to_string())]);
        let item = statements.iter().find(|statement| statement.sql.starts_with("INSERT INTO group_items")).unwrap();
        assert_eq!(item.values[..2], [SqlValue::Int(4), SqlValue::Int(7)]);
        // Without stats in the backup the statistics stay as they are.
        assert!(!statements.iter().any(|statement| statement.sql.contains("stats_hourly")));
    }

    #[test]
    fn stats_are_replaced_only_when_the_backup_has_them() {
        let mut backup = sample();
        backup.stats = Some(vec![StatsRow { key: StatsKey { hour: 3600, ..StatsKey::default() }, ..StatsRow::default() }]);
        let statements = replace_statements(Dialect::Mysql, &backup);
        assert!(statements.iter().any(|statement| statement.sql == "DELETE FROM stats_hourly"));
        assert!(statements.iter().any(|statement| statement.sql.starts_with("INSERT INTO stats_hourly")));
        assert!(statements.iter().any(|statement| statement.sql.contains("`key`")));
    }

    #[test]
    fn only_postgres_moves_its_sequences() {
        let postgres = replace_statements(Dialect::Postgres, &sample());
        let catch_ups: Vec<&Statement> = postgres.iter().filter(|statement| statement.sql.contains("setval")).collect();
        assert_eq!(catch_ups.len(), TABLES_WITH_KEPT_IDS.len());
        assert!(postgres.last().unwrap().sql.contains("setval"));
        assert!(postgres.iter().any(|statement| statement.sql.contains("VALUES ($1, $2")));
        assert!(!replace_statements(Dialect::Sqlite, &sample()).iter().any(|statement| statement.sql.contains("setval")));
    }
}
