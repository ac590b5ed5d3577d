//! Conversions between entities and the plain column values every backend stores: JSON text
//! for lists and maps, text for enums, signed 64-bit integers for counts and durations.
//!
//! Backends expose a result row through `ColumnReader` and let this module build the entity, so
//! the columns selected, the decoding rules and their error messages are the same everywhere.

use std::collections::{BTreeMap, HashMap};

use crate::store::entities::{
    AdminSession, AdminUser, ApiKey, AutoGroup, Channel, ChannelKey, ChannelType, Group, GroupItem, GroupMode,
    ModelPrice,
};
use crate::store::{StoreError, StoreResult};

/// Typed access to the columns of one result row, implemented by each backend for its driver,
/// so that every entity is read from its row by the one function below for all three backends.
///
/// Column `index` counts from 0. Every method fails with a `StoreError::Backend` naming the column
/// (never quoting its value, which could be a key) when the column is missing, NULL where a value
/// is required, or not of the asked type.
pub trait ColumnReader {
    /// A 64-bit integer (MySQL's DECIMAL sums with only zeros after the point count as one).
    fn int(&self, index: usize) -> StoreResult<i64>;
    /// A 64-bit integer, or `None` for NULL.
    fn optional_int(&self, index: usize) -> StoreResult<Option<i64>>;
    /// A floating-point number.
    fn float(&self, index: usize) -> StoreResult<f64>;
    /// A floating-point number, or `None` for NULL.
    fn optional_float(&self, index: usize) -> StoreResult<Option<f64>>;
    /// Text.
    fn text(&self, index: usize) -> StoreResult<String>;
    /// Text, or `None` for NULL.
    fn optional_text(&self, index: usize) -> StoreResult<Option<String>>;
    /// A boolean, whether the backend stores it as a boolean or as 0 and 1.
    fn boolean(&self, index: usize) -> StoreResult<bool>;
}

/// The selected columns of each table, in the order its reader below expects them. (The channel
/// key columns are spelled by each backend: `key` needs quoting in two dialects, differently.)
pub const ADMIN_COLUMNS: &str = "id, username, password_hash, must_change_password";
pub const SESSION_COLUMNS: &str = "token_hash, user_id, expires_at, created_at";
pub const CHANNEL_COLUMNS: &str =
    "id, name, type, enabled, base_urls, models, headers, proxy, auto_sync, match_regex, created_at, updated_at, auto_group";
pub const GROUP_COLUMNS: &str =
    "id, name, mode, max_attempts, first_byte_timeout_ms, total_timeout_ms, sticky_seconds, created_at, updated_at, match_regex";
pub const GROUP_ITEM_COLUMNS: &str = "group_id, channel_id, model, priority, weight";
pub const API_KEY_COLUMNS: &str =
    "id, name, key_hash, key_prefix, enabled, expires_at, max_cost, allowed_models, created_at, updated_at, rpm, tpm";
pub const PRICE_COLUMNS: &str = "id, model, channel_id, input, output, cache_read, cache_write";

/// Reads a row of `ADMIN_COLUMNS`.
pub fn read_admin(row: &dyn ColumnReader) -> StoreResult<AdminUser> {
    Ok(AdminUser {
        id: row.int(0)?,
        username: row.text(1)?,
        password_hash: row.text(2)?,
        must_change_password: row.boolean(3)?,
    })
}

/// Reads a row of `SESSION_COLUMNS`.
pub fn read_session(row: &dyn ColumnReader) -> StoreResult<AdminSession> {
    Ok(AdminSession {
        token_hash: row.text(0)?,
        user_id: row.int(1)?,
        expires_at: row.int(2)?,
        created_at: row.int(3)?,
    })
}

/// Reads a row of `CHANNEL_COLUMNS`: the channel without its keys (see `attach_channel_keys`).
pub fn read_channel(row: &dyn ColumnReader) -> StoreResult<Channel> {
    let id = row.int(0)?;
    let channel_type = row.text(2)?;
    let auto_group = row.text(12)?;
    Ok(Channel {
        id,
        channel_type: ChannelType::parse(&channel_type).ok_or_else(|| {
            StoreError::Backend(format!("channel {id} has unknown type '{channel_type}'"))
        })?,
        name: row.text(1)?,
        enabled: row.boolean(3)?,
        base_urls: strings_from_json(&row.text(4)?, "channels.base_urls")?,
        keys: Vec::new(),
        models: strings_from_json(&row.text(5)?, "channels.models")?,
        headers: headers_from_json(&row.text(6)?, "channels.headers")?,
        proxy: row.text(7)?,
        auto_sync: row.boolean(8)?,
        match_regex: row.text(9)?,
        auto_group: AutoGroup::parse(&auto_group).ok_or_else(|| {
            StoreError::Backend(format!("channel {id} has unknown auto_group '{auto_group}'"))
        })?,
        created_at: row.int(10)?,
        updated_at: row.int(11)?,
    })
}

/// Reads a row of `channel_id, id, key, enabled, remark` as `(channel_id, key)`.
pub fn read_channel_key(row: &dyn ColumnReader) -> StoreResult<(i64, ChannelKey)> {
    Ok((
        row.int(0)?,
        ChannelKey {
            id: row.int(1)?,
            key: row.text(2)?,
            enabled: row.boolean(3)?,
            remark: row.text(4)?,
        },
    ))
}

/// Reads a row of `GROUP_COLUMNS`: the group without its items (see `attach_group_items`).
pub fn read_group(row: &dyn ColumnReader) -> StoreResult<Group> {
    let id = row.int(0)?;
    let mode = row.text(2)?;
    Ok(Group {
        id,
        mode: GroupMode::parse(&mode)
            .ok_or_else(|| StoreError::Backend(format!("group {id} has unknown mode '{mode}'")))?,
        name: row.text(1)?,
        items: Vec::new(),
        max_attempts: u32_from_column(row.int(3)?),
        first_byte_timeout_ms: u64_from_column(row.int(4)?),
        total_timeout_ms: u64_from_column(row.int(5)?),
        sticky_seconds: u64_from_column(row.int(6)?),
        match_regex: row.text(9)?,
        created_at: row.int(7)?,
        updated_at: row.int(8)?,
    })
}

/// The columns of one `group_items` row, minus its id and position (the order of the rows).
pub struct GroupItemRow {
    pub group_id: i64,
    pub channel_id: i64,
    pub model: String,
    pub priority: i64,
    pub weight: i64,
}

/// Reads a row of `GROUP_ITEM_COLUMNS`.
pub fn read_group_item(row: &dyn ColumnReader) -> StoreResult<GroupItemRow> {
    Ok(GroupItemRow {
        group_id: row.int(0)?,
        channel_id: row.int(1)?,
        model: row.text(2)?,
        priority: row.int(3)?,
        weight: row.int(4)?,
    })
}

/// Reads a row of `API_KEY_COLUMNS`. Limits are stored as signed integers (every backend has
/// them); negative values read as 0 (off).
pub fn read_api_key(row: &dyn ColumnReader) -> StoreResult<ApiKey> {
    Ok(ApiKey {
        id: row.int(0)?,
        name: row.text(1)?,
        key_hash: row.text(2)?,
        key_prefix: row.text(3)?,
        enabled: row.boolean(4)?,
        expires_at: row.optional_int(5)?,
        max_cost: row.optional_float(6)?,
        allowed_models: strings_from_json(&row.text(7)?, "api_keys.allowed_models")?,
        created_at: row.int(8)?,
        updated_at: row.int(9)?,
        rpm: u64_from_column(row.int(10)?),
        tpm: u64_from_column(row.int(11)?),
    })
}

/// Reads a row of `PRICE_COLUMNS`.
pub fn read_price(row: &dyn ColumnReader) -> StoreResult<ModelPrice> {
    Ok(ModelPrice {
        id: row.int(0)?,
        model: row.text(1)?,
        channel_id: row.optional_int(2)?,
        input: row.float(3)?,
        output: row.float(4)?,
        cache_read: row.float(5)?,
        cache_write: row.float(6)?,
    })
}

/// Distributes key rows `(channel_id, key)`, already in position order, to their channels.
pub fn attach_channel_keys(channels: &mut [Channel], keys: Vec<(i64, ChannelKey)>) {
    let index_by_id: HashMap<i64, usize> = channels
        .iter()
        .enumerate()
        .map(|(index, channel)| (channel.id, index))
        .collect();
    for (channel_id, key) in keys {
        if let Some(index) = index_by_id.get(&channel_id) {
            channels[*index].keys.push(key);
        }
    }
}

/// Distributes item rows, already in position order, to their groups.
pub fn attach_group_items(groups: &mut [Group], items: Vec<GroupItemRow>) {
    let index_by_id: HashMap<i64, usize> = groups
        .iter()
        .enumerate()
        .map(|(index, group)| (group.id, index))
        .collect();
    for item in items {
        if let Some(index) = index_by_id.get(&item.group_id) {
            groups[*index].items.push(GroupItem {
                channel_id: item.channel_id,
                model: item.model,
                priority: i32::try_from(item.priority).unwrap_or(if item.priority < 0 {
                    i32::MIN
                } else {
                    i32::MAX
                }),
                weight: u32_from_column(item.weight),
            });
        }
    }
}

/// What a failed write ran into, as far as callers need to tell: each backend sorts its
/// driver's errors into these so every write can name the conflicting value itself.
pub enum Violation {
    /// A unique key; the text is the constraint or column name the driver reported.
    Unique(String),
    /// A foreign key: the referenced row does not exist.
    ForeignKey,
    /// Anything else, already converted.
    Other(StoreError),
}

pub fn strings_to_json(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned())
}

pub fn headers_to_json(headers: &BTreeMap<String, String>) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "{}".to_owned())
}

/// Parses a JSON array of strings; an empty column reads as an empty list.
pub fn strings_from_json(text: &str, column: &str) -> StoreResult<Vec<String>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|error| {
        StoreError::Backend(format!("{column} is not a JSON string array: {error}"))
    })
}

/// Parses a JSON object of strings; an empty column reads as an empty map.
pub fn headers_from_json(text: &str, column: &str) -> StoreResult<BTreeMap<String, String>> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(text)
        .map_err(|error| StoreError::Backend(format!("{column} is not a JSON string map: {error}")))
}

/// Unsigned values are stored in signed BIGINT columns; the few beyond `i64::MAX` saturate.
pub fn u64_to_column(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Negative values (only possible through manual edits) read as 0.
pub fn u64_from_column(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub fn u32_from_column(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

/// The non-null stand-in for `model_prices.channel_id` that the unique key covers: ids start
/// at 1, so 0 never collides with a real channel.
pub fn price_channel_scope(channel_id: Option<i64>) -> i64 {
    channel_id.unwrap_or(0)
}

/// Which unique constraint a duplicate api key violated, from the constraint or column name
/// the driver reported.
pub fn api_key_duplicate(constraint: &str, api_key: &ApiKey) -> StoreError {
    if constraint.contains("key_hash") {
        StoreError::Duplicate("api key hash".to_owned())
    } else {
        StoreError::Duplicate(format!("api key name '{}'", api_key.name))
    }
}

#[cfg(test)]
mod tests {
    use crate::store::codec::*;

    #[test]
    fn json_columns_round_trip_and_accept_empty_text() {
        let values = vec!["a".to_owned(), "ü \"quoted\"".to_owned()];
        assert_eq!(
            strings_from_json(&strings_to_json(&values), "test").unwrap(),
            values
        );
        assert_eq!(strings_from_json("", "test").unwrap(), Vec::<String>::new());
        let headers = BTreeMap::from([("X-A".to_owned(), "1".to_owned())]);
        assert_eq!(
            headers_from_json(&headers_to_json(&headers), "test").unwrap(),
            headers
        );
        assert!(
            matches!(strings_from_json("{", "channels.models"), Err(StoreError::Backend(message)) if message.contains("channels.models"))
        );
    }

    #[test]
    fn integer_columns_saturate_instead_of_wrapping() {
        assert_eq!(u64_to_column(u64::MAX), i64::MAX);
        assert_eq!(u64_from_column(-5), 0);
        assert_eq!(u32_from_column(i64::MAX), u32::MAX);
        assert_eq!(u32_from_column(-1), 0);
    }

    /// A row of column texts; NULL is `None`, booleans are `1` and `0`.
    struct TextColumns(Vec<Option<&'static str>>);

    impl TextColumns {
        fn parsed<T: std::str::FromStr>(&self, index: usize) -> StoreResult<Option<T>> {
            self.0[index]
                .map(|text| text.parse().map_err(|_| StoreError::Backend(format!("column {index}: not a number"))))
                .transpose()
        }
        fn required<T>(index: usize, value: Option<T>) -> StoreResult<T> {
            value.ok_or_else(|| StoreError::Backend(format!("column {index}: unexpected NULL")))
        }
    }

    impl ColumnReader for TextColumns {
        fn int(&self, index: usize) -> StoreResult<i64> {
            TextColumns::required(index, self.parsed(index)?)
        }
        fn optional_int(&self, index: usize) -> StoreResult<Option<i64>> {
            self.parsed(index)
        }
        fn float(&self, index: usize) -> StoreResult<f64> {
            TextColumns::required(index, self.parsed(index)?)
        }
        fn optional_float(&self, index: usize) -> StoreResult<Option<f64>> {
            self.parsed(index)
        }
        fn text(&self, index: usize) -> StoreResult<String> {
            TextColumns::required(index, self.optional_text(index)?)
        }
        fn optional_text(&self, index: usize) -> StoreResult<Option<String>> {
            Ok(self.0[index].map(str::to_owned))
        }
        fn boolean(&self, index: usize) -> StoreResult<bool> {
            Ok(self.int(index)? != 0)
        }
    }

    fn group_columns(mode: &'static str) -> TextColumns {
        TextColumns(vec![
            Some("7"),
            Some("g"),
            Some(mode),
            Some("3"),
            Some("-1"),
            Some("90000"),
            Some("0"),
            Some("100"),
            Some("200"),
            Some("^gpt"),
        ])
    }

    #[test]
    fn a_group_row_reads_in_column_order_with_saturated_limits() {
        assert_eq!(GROUP_COLUMNS.split(", ").count(), group_columns("failover").0.len());
        let group = read_group(&group_columns("failover")).unwrap();
        assert_eq!((group.id, group.name.as_str(), group.mode), (7, "g", GroupMode::Failover));
        assert_eq!((group.max_attempts, group.first_byte_timeout_ms, group.total_timeout_ms), (3, 0, 90_000));
        assert_eq!((group.created_at, group.updated_at, group.match_regex.as_str()), (100, 200, "^gpt"));
    }

    #[test]
    fn unknown_enum_text_is_a_backend_error() {
        assert_eq!(
            read_group(&group_columns("chaotic")),
            Err(StoreError::Backend("group 7 has unknown mode 'chaotic'".to_owned()))
        );
        let mut channel = TextColumns(vec![Some("4"), Some("c"), Some("telepathy"), Some("1")]);
        channel.0.extend([Some("[]"), Some("[]"), Some("{}"), Some(""), Some("0"), Some(""), Some("1"), Some("2"), Some("off")]);
        assert_eq!(CHANNEL_COLUMNS.split(", ").count(), channel.0.len());
        assert_eq!(read_channel(&channel), Err(StoreError::Backend("channel 4 has unknown type 'telepathy'".to_owned())));
    }

    #[test]
    fn a_null_in_a_required_column_names_the_column() {
        let mut price = TextColumns(vec![Some("1"), Some("m"), None, Some("0.5"), Some("2"), Some("0"), Some("0")]);
        assert_eq!(read_price(&price).unwrap().channel_id, None);
        price.0[3] = None;
        assert_eq!(read_price(&price), Err(StoreError::Backend("column 3: unexpected NULL".to_owned())));
    }
}
