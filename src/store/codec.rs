//! Conversions between entities and the plain column values every backend stores: JSON text
//! for lists and maps, text for enums, signed 64-bit integers for counts and durations.
//!
//! Backends read a row into one of the `*Row` structs with their own driver and let this module
//! build the entity, so the decoding rules (and their error messages) are the same everywhere.

use std::collections::{BTreeMap, HashMap};

use crate::store::entities::{
    ApiKey, AutoGroup, Channel, ChannelKey, ChannelType, Group, GroupItem, GroupMode,
};
use crate::store::{StoreError, StoreResult};

/// The columns of one `channels` row.
pub struct ChannelRow {
    pub id: i64,
    pub name: String,
    pub channel_type: String,
    pub enabled: bool,
    pub base_urls: String,
    pub models: String,
    pub headers: String,
    pub proxy: String,
    pub auto_sync: bool,
    pub match_regex: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub auto_group: String,
}

impl ChannelRow {
    /// The channel without its keys (see `attach_channel_keys`).
    pub fn into_channel(self) -> StoreResult<Channel> {
        Ok(Channel {
            id: self.id,
            channel_type: ChannelType::parse(&self.channel_type).ok_or_else(|| {
                StoreError::Backend(format!(
                    "channel {} has unknown type '{}'",
                    self.id, self.channel_type
                ))
            })?,
            name: self.name,
            enabled: self.enabled,
            base_urls: strings_from_json(&self.base_urls, "channels.base_urls")?,
            keys: Vec::new(),
            models: strings_from_json(&self.models, "channels.models")?,
            headers: headers_from_json(&self.headers, "channels.headers")?,
            proxy: self.proxy,
            auto_sync: self.auto_sync,
            match_regex: self.match_regex,
            auto_group: AutoGroup::parse(&self.auto_group).ok_or_else(|| {
                StoreError::Backend(format!(
                    "channel {} has unknown auto_group '{}'",
                    self.id, self.auto_group
                ))
            })?,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// The columns of one `channel_groups` row.
pub struct GroupRow {
    pub id: i64,
    pub name: String,
    pub mode: String,
    pub max_attempts: i64,
    pub first_byte_timeout_ms: i64,
    pub total_timeout_ms: i64,
    pub sticky_seconds: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub match_regex: String,
}

impl GroupRow {
    /// The group without its items (see `attach_group_items`).
    pub fn into_group(self) -> StoreResult<Group> {
        Ok(Group {
            id: self.id,
            mode: GroupMode::parse(&self.mode).ok_or_else(|| {
                StoreError::Backend(format!(
                    "group {} has unknown mode '{}'",
                    self.id, self.mode
                ))
            })?,
            name: self.name,
            items: Vec::new(),
            max_attempts: u32_from_column(self.max_attempts),
            first_byte_timeout_ms: u64_from_column(self.first_byte_timeout_ms),
            total_timeout_ms: u64_from_column(self.total_timeout_ms),
            sticky_seconds: u64_from_column(self.sticky_seconds),
            match_regex: self.match_regex,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// The columns of one `group_items` row, minus its id and position (the order of the rows).
pub struct GroupItemRow {
    pub group_id: i64,
    pub channel_id: i64,
    pub model: String,
    pub priority: i64,
    pub weight: i64,
}

/// The columns of one `api_keys` row.
pub struct ApiKeyRow {
    pub id: i64,
    pub name: String,
    pub key_hash: String,
    pub key_prefix: String,
    pub enabled: bool,
    pub expires_at: Option<i64>,
    pub max_cost: Option<f64>,
    pub allowed_models: String,
    /// Stored as a signed integer (every backend has one); negative values read as 0 (off).
    pub rpm: i64,
    pub tpm: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ApiKeyRow {
    pub fn into_api_key(self) -> StoreResult<ApiKey> {
        Ok(ApiKey {
            allowed_models: strings_from_json(&self.allowed_models, "api_keys.allowed_models")?,
            id: self.id,
            name: self.name,
            key_hash: self.key_hash,
            key_prefix: self.key_prefix,
            enabled: self.enabled,
            expires_at: self.expires_at,
            max_cost: self.max_cost,
            rpm: u64_from_column(self.rpm),
            tpm: u64_from_column(self.tpm),
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
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

    #[test]
    fn unknown_enum_text_is_a_backend_error() {
        let row = GroupRow {
            id: 7,
            name: "g".to_owned(),
            mode: "chaotic".to_owned(),
            max_attempts: 1,
            first_byte_timeout_ms: 0,
            total_timeout_ms: 0,
            sticky_seconds: 0,
            created_at: 0,
            updated_at: 0,
            match_regex: String::new(),
        };
        assert_eq!(
            row.into_group(),
            Err(StoreError::Backend(
                "group 7 has unknown mode 'chaotic'".to_owned()
            ))
        );
    }
}
