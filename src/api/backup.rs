//! `GET /api/v1/export` and `POST /api/v1/import`: the whole configuration as one JSON document
//! (channels with their keys in clear, groups, client keys' hashes, prices, settings and, when
//! asked, the hourly statistics), and its restore in one database transaction.
//!
//! The document holds secrets (channel keys), so both routes need a login and neither ever logs
//! it. An import is checked completely before anything is written: a bad document is a 400
//! (not JSON) or a 422 whose message names the first bad path, and then nothing has changed.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use crate::api::error::ApiError;
use crate::api::{body, channels, groups, store_call, AdminContext};
use crate::http::{Request, Response};
use crate::settings::Settings;
use crate::stats::log_view::rfc3339_millis;
use crate::store::backup::Backup;
use crate::store::{Store, StoreResult};
use crate::store::entities::{
    ApiKey, AutoGroup, Channel, ChannelKey, ChannelType, Group, GroupItem, GroupMode, ModelPrice, StatsCounters, StatsKey, StatsRow,
    STATS_COUNTER_COLUMNS,
};
use crate::sync::jobs;
use crate::util;

/// The `format` every backup document carries.
pub const BACKUP_FORMAT: &str = "octopus-backup";
/// The document version this build writes and reads.
pub const BACKUP_VERSION: u64 = 1;

const DOCUMENT_FIELDS: &[&str] =
    &["format", "version", "exported_at", "channels", "groups", "api_keys", "prices", "settings", "stats"];
const CHANNEL_FIELDS: &[&str] = &[
    "id", "name", "type", "enabled", "base_urls", "keys", "models", "headers", "proxy", "auto_sync", "match_regex",
    "auto_group", "created_at", "updated_at",
];
const KEY_FIELDS: &[&str] = &["id", "key", "enabled", "remark"];
const GROUP_FIELDS: &[&str] = &[
    "id", "name", "mode", "items", "max_attempts", "first_byte_timeout_ms", "total_timeout_ms", "sticky_seconds",
    "match_regex", "created_at", "updated_at",
];
const ITEM_FIELDS: &[&str] = &["channel_id", "model", "priority", "weight"];
const API_KEY_FIELDS: &[&str] = &[
    "id", "name", "key_hash", "key_prefix", "enabled", "expires_at", "max_cost", "allowed_models", "rpm", "tpm", "created_at",
    "updated_at",
];
const PRICE_FIELDS: &[&str] = &["id", "model", "channel_id", "input", "output", "cache_read", "cache_write"];
const STATS_KEY_FIELDS: &[&str] = &["hour", "channel_id", "api_key_id", "group", "model"];

/// `GET /api/v1/export[?include_stats=true]`: the document, as a file download.
pub fn export(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let include_stats = match request.query_param("include_stats").as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => return Err(ApiError::Malformed(format!("include_stats must be true or false, got {other:?}"))),
    };
    let now_ms = util::unix_millis();
    if include_stats {
        // Counters not written yet would otherwise be missing from the backup.
        context.stats.flush_stats(now_ms).map_err(ApiError::from)?;
    }
    let document = store_call(context, move |store| export_document(store, include_stats, now_ms))?;
    let (year, month, day) = crate::stats::query::civil_from_days(now_ms.div_euclid(86_400_000));
    let disposition = format!("attachment; filename=\"octopus-backup-{year:04}{month:02}{day:02}.json\"");
    Ok(Response::json(200, &document).with_header("content-disposition", &disposition).with_header("cache-control", "no-store"))
}

/// `POST /api/v1/import`: replaces the configuration with the document's, in one transaction.
pub fn import(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let checked = check_document(&request.body).map_err(|problem| match problem {
        DocumentProblem::Malformed(message) => ApiError::Malformed(message),
        DocumentProblem::Invalid(message) => ApiError::Invalid(message),
    })?;
    let counts = checked.counts();
    let CheckedDocument { backup, settings } = checked;
    let stats_replaced = backup.stats.is_some();
    if stats_replaced {
        // Counters this gateway has not written yet belong to the statistics being replaced;
        // written now, they are replaced with the rest instead of landing on top afterwards.
        context.stats.flush_stats(util::unix_millis()).map_err(ApiError::from)?;
    }
    let change = context.settings.begin_change();
    store_call(context, move |store| store.replace_configuration(&backup))?;

    let previous = context.settings.get();
    let retention_changed =
        settings.log_retention_days != previous.log_retention_days || settings.log_max_rows != previous.log_max_rows;
    let catalogue_moved = settings.models_dev_url != previous.models_dev_url;
    context.settings.set(settings);
    drop(change);
    context.notify_change();
    if stats_replaced {
        // Client keys' spending caps are checked against totals read from the statistics.
        context.stats.refresh_spending();
    }
    if catalogue_moved {
        context.scheduler.run_soon(jobs::PRICE_SYNC);
    }
    if retention_changed {
        context.scheduler.run_soon(jobs::PRUNE_LOGS);
    }
    Ok(Response::json(200, &json!({ "imported": counts })))
}

/// Reads the whole configuration (and, when asked, the hourly statistics) into a backup
/// document. The admin API and `octopus export` both call this, so their files are the same.
pub fn export_document(store: &mut dyn Store, include_stats: bool, now_ms: i64) -> StoreResult<Value> {
    let stats = if include_stats { Some(store.all_stats_rows()?) } else { None };
    let backup = Backup {
        channels: store.list_channels()?,
        groups: store.list_groups()?,
        api_keys: store.list_api_keys()?,
        prices: store.list_prices()?,
        settings: Vec::new(),
        stats,
    };
    let settings = Settings::load(store)?;
    Ok(document_json(&backup, &settings, now_ms))
}

/// Why a backup document cannot be imported.
#[derive(Debug, Clone, PartialEq)]
pub enum DocumentProblem {
    /// Not JSON at all (or empty).
    Malformed(String),
    /// JSON, but a field is wrong; the message names the first bad path.
    Invalid(String),
}

impl std::fmt::Display for DocumentProblem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DocumentProblem::Malformed(message) | DocumentProblem::Invalid(message) => formatter.write_str(message),
        }
    }
}

/// A backup document that passed every check: what the store writes, and the settings it puts
/// in force.
pub struct CheckedDocument {
    pub backup: Backup,
    pub settings: Settings,
}

impl CheckedDocument {
    /// How many rows of each kind the import writes, as both the API and the CLI report it.
    pub fn counts(&self) -> Value {
        json!({
            "channels": self.backup.channels.len(),
            "groups": self.backup.groups.len(),
            "api_keys": self.backup.api_keys.len(),
            "prices": self.backup.prices.len(),
            "settings": self.backup.settings.len(),
            "stats": self.backup.stats.as_ref().map_or(0, Vec::len),
        })
    }
}

/// Checks the bytes of a backup document completely, before anything is written. The admin API
/// and `octopus import` both call this.
pub fn check_document(bytes: &[u8]) -> Result<CheckedDocument, DocumentProblem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DocumentProblem::Malformed("the document is empty; send a backup document".to_string()));
    }
    let document: Value = serde_json::from_slice(bytes)
        .map_err(|error| DocumentProblem::Malformed(format!("the document is not valid JSON: {error}")))?;
    let (backup, settings) = parse_document(&document).map_err(DocumentProblem::Invalid)?;
    Ok(CheckedDocument { backup, settings })
}

/// The backup document of `backup` (its `settings` field is ignored: `settings` is shown instead).
pub fn document_json(backup: &Backup, settings: &Settings, now_ms: i64) -> Value {
    let mut document = json!({
        "format": BACKUP_FORMAT,
        "version": BACKUP_VERSION,
        "exported_at": rfc3339_millis(now_ms),
        "channels": backup.channels.iter().map(channel_json).collect::<Vec<_>>(),
        "groups": backup.groups.iter().map(groups::group_json).collect::<Vec<_>>(),
        "api_keys": backup.api_keys.iter().map(api_key_json).collect::<Vec<_>>(),
        "prices": backup.prices.iter().map(price_json).collect::<Vec<_>>(),
        "settings": settings.to_json(),
    });
    if let Some(rows) = &backup.stats {
        document["stats"] = Value::Array(rows.iter().map(stats_row_json).collect());
    }
    document
}

/// A channel with its keys and proxy in clear: unlike `channels::channel_json`, which masks them.
fn channel_json(channel: &Channel) -> Value {
    json!({
        "id": channel.id,
        "name": channel.name,
        "type": channel.channel_type.as_str(),
        "enabled": channel.enabled,
        "base_urls": channel.base_urls,
        "keys": channel.keys.iter().map(|key| json!({
            "id": key.id, "key": key.key, "enabled": key.enabled, "remark": key.remark,
        })).collect::<Vec<_>>(),
        "models": channel.models,
        "headers": channel.headers,
        "proxy": channel.proxy,
        "auto_sync": channel.auto_sync,
        "match_regex": channel.match_regex,
        "auto_group": channel.auto_group.as_str(),
        "created_at": channel.created_at,
        "updated_at": channel.updated_at,
    })
}

/// A client key with its hash (never a clear key: none is stored).
fn api_key_json(api_key: &ApiKey) -> Value {
    json!({
        "id": api_key.id,
        "name": api_key.name,
        "key_hash": api_key.key_hash,
        "key_prefix": api_key.key_prefix,
        "enabled": api_key.enabled,
        "expires_at": api_key.expires_at,
        "max_cost": api_key.max_cost,
        "allowed_models": api_key.allowed_models,
        "rpm": api_key.rpm,
        "tpm": api_key.tpm,
        "created_at": api_key.created_at,
        "updated_at": api_key.updated_at,
    })
}

fn price_json(price: &ModelPrice) -> Value {
    json!({
        "id": price.id,
        "model": price.model,
        "channel_id": price.channel_id,
        "input": price.input,
        "output": price.output,
        "cache_read": price.cache_read,
        "cache_write": price.cache_write,
    })
}

/// One `stats_hourly` row with its raw counters (cost in micro-dollars, so nothing is rounded).
fn stats_row_json(row: &StatsRow) -> Value {
    let mut fields = Map::new();
    fields.insert("hour".to_string(), json!(row.key.hour));
    fields.insert("channel_id".to_string(), json!(row.key.channel_id));
    fields.insert("api_key_id".to_string(), json!(row.key.api_key_id));
    fields.insert("group".to_string(), json!(row.key.group));
    fields.insert("model".to_string(), json!(row.key.model));
    for (column, value) in STATS_COUNTER_COLUMNS.iter().zip(row.counters.to_array()) {
        fields.insert(column.to_string(), json!(value));
    }
    Value::Object(fields)
}

/// Checks a whole document and turns it into what the store writes, plus the settings to put
/// in force. The error names the first bad path, e.g. `groups[2].items[0].channel_id refers to
/// channel 9 which is not in the document`.
pub fn parse_document(document: &Value) -> Result<(Backup, Settings), String> {
    let top = Fields::object("", document, DOCUMENT_FIELDS)?;
    let format = top.required_string("format")?;
    if format != BACKUP_FORMAT {
        return Err(format!("format must be {BACKUP_FORMAT:?}, got {format:?}"));
    }
    let version = top.required("version")?;
    if version.as_u64() != Some(BACKUP_VERSION) {
        return Err(format!("version {version} is not supported (this gateway reads version {BACKUP_VERSION})"));
    }
    if let Some(exported_at) = top.map.get("exported_at")
        && !exported_at.is_string()
        && !exported_at.is_null()
    {
        return Err(format!("exported_at must be a string, got {exported_at}"));
    }
    let now = util::unix_seconds();

    let mut channels = Vec::new();
    let mut channel_names: HashMap<String, String> = HashMap::new();
    let mut channel_ids: HashMap<i64, String> = HashMap::new();
    let mut pending_key_ids: Vec<(usize, usize)> = Vec::new();
    let mut key_ids: HashMap<i64, String> = HashMap::new();
    for (index, value) in top.array("channels")?.iter().enumerate() {
        let path = format!("channels[{index}]");
        let fields = Fields::object(&path, value, CHANNEL_FIELDS)?;
        let id = fields.id("id")?;
        remember_unique(&mut channel_ids, id, &fields.at("id"), "id")?;
        let name = fields.name("name")?;
        remember_unique(&mut channel_names, name.clone(), &fields.at("name"), "name")?;
        let type_name = fields.required_string("type")?;
        let channel_type = ChannelType::parse(&type_name).ok_or_else(|| {
            let names: Vec<&str> = ChannelType::ALL.iter().map(|channel_type| channel_type.as_str()).collect();
            format!("{} {type_name:?} is not a channel type (one of: {})", fields.at("type"), names.join(", "))
        })?;
        let mut keys = Vec::new();
        for (key_index, key_value) in fields.array("keys")?.iter().enumerate() {
            let key_fields = Fields::object(&format!("{path}.keys[{key_index}]"), key_value, KEY_FIELDS)?;
            let key_id = key_fields.optional_id("id")?;
            match key_id {
                Some(key_id) => remember_unique(&mut key_ids, key_id, &key_fields.at("id"), "id")?,
                None => pending_key_ids.push((channels.len(), key_index)),
            }
            let key = key_fields.required_string("key")?.trim().to_string();
            if key.is_empty() {
                return Err(format!("{} must not be empty", key_fields.at("key")));
            }
            keys.push(ChannelKey {
                id: key_id.unwrap_or(0),
                key,
                enabled: key_fields.bool_or("enabled", true)?,
                remark: key_fields.string_or("remark", "")?,
            });
        }
        let channel = Channel {
            id,
            name,
            channel_type,
            enabled: fields.bool_or("enabled", true)?,
            base_urls: fields.string_list("base_urls")?,
            keys,
            models: fields.string_list("models")?,
            headers: fields.string_map("headers")?,
            proxy: fields.string_or("proxy", "")?.trim().to_string(),
            auto_sync: fields.bool_or("auto_sync", false)?,
            match_regex: fields.string_or("match_regex", "")?,
            auto_group: {
                let auto_group_name = fields.string_or("auto_group", "none")?;
                AutoGroup::parse(&auto_group_name).ok_or_else(|| {
                    format!(
                        "{} {auto_group_name:?} is not an auto_group rule (one of: none, exact, fuzzy, regex)",
                        fields.at("auto_group")
                    )
                })?
            },
            created_at: fields.int_or("created_at", now)?,
            updated_at: fields.int_or("updated_at", now)?,
        };
        channels::validate(&channel).map_err(|error| format!("{path}: {}", api_message(error)))?;
        channels.push(channel);
    }
    // Keys without an id get fresh ones after every id the document names.
    let mut next_key_id = key_ids.keys().copied().max().unwrap_or(0);
    for (channel_index, key_index) in pending_key_ids {
        next_key_id = fresh_id_after(next_key_id, &format!("channels[{channel_index}].keys[{key_index}]"))?;
        channels[channel_index].keys[key_index].id = next_key_id;
    }

    let mut groups = Vec::new();
    let mut group_names: HashMap<String, String> = HashMap::new();
    let mut group_ids: HashMap<i64, String> = HashMap::new();
    for (index, value) in top.array("groups")?.iter().enumerate() {
        let path = format!("groups[{index}]");
        let fields = Fields::object(&path, value, GROUP_FIELDS)?;
        let id = fields.id("id")?;
        remember_unique(&mut group_ids, id, &fields.at("id"), "id")?;
        let name = fields.name("name")?;
        remember_unique(&mut group_names, name.clone(), &fields.at("name"), "name")?;
        let mode_name = fields.required_string("mode")?;
        let mode = GroupMode::parse(&mode_name).ok_or_else(|| {
            format!("{} {mode_name:?} is not a mode (one of: round_robin, random, failover, weighted)", fields.at("mode"))
        })?;
        let mut items: Vec<GroupItem> = Vec::new();
        for (item_index, item_value) in fields.array("items")?.iter().enumerate() {
            let item_fields = Fields::object(&format!("{path}.items[{item_index}]"), item_value, ITEM_FIELDS)?;
            let channel_id = item_fields.id("channel_id")?;
            if !channel_ids.contains_key(&channel_id) {
                return Err(format!(
                    "{} refers to channel {channel_id} which is not in the document",
                    item_fields.at("channel_id")
                ));
            }
            let model = item_fields.name("model")?;
            if items.iter().any(|item| item.channel_id == channel_id && item.model == model) {
                return Err(format!("{} repeats channel {channel_id} with model {model:?}", item_fields.path));
            }
            let priority = item_fields.int_or("priority", 0)?;
            let priority = i32::try_from(priority)
                .map_err(|_| format!("{} must be a whole number that fits 32 bits", item_fields.at("priority")))?;
            let weight = item_fields.whole_number_or("weight", 1, 1_000_000)?;
            items.push(GroupItem { channel_id, model, priority, weight: weight as u32 });
        }
        groups.push(Group {
            id,
            name,
            mode,
            items,
            max_attempts: fields.whole_number_or("max_attempts", 0, groups::MAX_ATTEMPTS_LIMIT)? as u32,
            first_byte_timeout_ms: fields.whole_number_or("first_byte_timeout_ms", 0, i64::MAX as u64)?,
            total_timeout_ms: fields.whole_number_or("total_timeout_ms", 0, i64::MAX as u64)?,
            sticky_seconds: fields.whole_number_or("sticky_seconds", 0, i64::MAX as u64)?,
            match_regex: groups::valid_match_regex(&fields.string_or("match_regex", "")?)
                .map_err(|error| format!("{path}: {}", api_message(error)))?,
            created_at: fields.int_or("created_at", now)?,
            updated_at: fields.int_or("updated_at", now)?,
        });
    }

    let mut api_keys = Vec::new();
    let mut api_key_names: HashMap<String, String> = HashMap::new();
    let mut api_key_ids: HashMap<i64, String> = HashMap::new();
    let mut api_key_hashes: HashMap<String, String> = HashMap::new();
    for (index, value) in top.array("api_keys")?.iter().enumerate() {
        let fields = Fields::object(&format!("api_keys[{index}]"), value, API_KEY_FIELDS)?;
        let id = fields.id("id")?;
        remember_unique(&mut api_key_ids, id, &fields.at("id"), "id")?;
        let name = fields.name("name")?;
        remember_unique(&mut api_key_names, name.clone(), &fields.at("name"), "name")?;
        let key_hash = fields.required_string("key_hash")?;
        if key_hash.len() != 64 || !key_hash.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)) {
            return Err(format!("{} must be 64 lower-case hex digits (a SHA-256)", fields.at("key_hash")));
        }
        remember_unique(&mut api_key_hashes, key_hash.clone(), &fields.at("key_hash"), "key_hash")?;
        let expires_at = match fields.map.get("expires_at") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_i64().filter(|seconds| *seconds >= 0).ok_or_else(|| {
                format!("{} must be Unix seconds or null, got {value}", fields.at("expires_at"))
            })?),
        };
        let max_cost = match fields.map.get("max_cost") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_f64().filter(|cost| cost.is_finite() && *cost >= 0.0).ok_or_else(|| {
                format!("{} must be a number of USD, 0 or more, or null; got {value}", fields.at("max_cost"))
            })?),
        };
        api_keys.push(ApiKey {
            id,
            name,
            key_hash,
            key_prefix: fields.string_or("key_prefix", "")?,
            enabled: fields.bool_or("enabled", true)?,
            expires_at,
            max_cost,
            allowed_models: fields.string_list("allowed_models")?,
            // Documents from before per-key limits have none: 0, no limit.
            rpm: fields.whole_number_or("rpm", 0, crate::api::api_keys::MAX_PER_MINUTE_LIMIT)?,
            tpm: fields.whole_number_or("tpm", 0, crate::api::api_keys::MAX_PER_MINUTE_LIMIT)?,
            created_at: fields.int_or("created_at", now)?,
            updated_at: fields.int_or("updated_at", now)?,
        });
    }

    let mut prices = Vec::new();
    let mut price_ids: HashMap<i64, String> = HashMap::new();
    let mut price_scopes: HashMap<(String, Option<i64>), String> = HashMap::new();
    let mut pending_price_ids = Vec::new();
    for (index, value) in top.array("prices")?.iter().enumerate() {
        let fields = Fields::object(&format!("prices[{index}]"), value, PRICE_FIELDS)?;
        let id = fields.optional_id("id")?;
        match id {
            Some(id) => remember_unique(&mut price_ids, id, &fields.at("id"), "id")?,
            None => pending_price_ids.push(prices.len()),
        }
        let model = fields.name("model")?;
        let channel_id = fields.optional_id("channel_id")?;
        if let Some(channel_id) = channel_id
            && !channel_ids.contains_key(&channel_id)
        {
            return Err(format!("{} refers to channel {channel_id} which is not in the document", fields.at("channel_id")));
        }
        if let Some(first) = price_scopes.insert((model.clone(), channel_id), fields.path.clone()) {
            return Err(format!("{} repeats the price of model {model:?} for the same channel as {first}", fields.path));
        }
        prices.push(ModelPrice {
            id: id.unwrap_or(0),
            model,
            channel_id,
            input: fields.price("input")?,
            output: fields.price("output")?,
            cache_read: fields.price("cache_read")?,
            cache_write: fields.price("cache_write")?,
        });
    }
    let mut next_price_id = price_ids.keys().copied().max().unwrap_or(0);
    for price_index in pending_price_ids {
        next_price_id = fresh_id_after(next_price_id, &format!("prices[{price_index}]"))?;
        prices[price_index].id = next_price_id;
    }

    let settings = match top.map.get("settings") {
        None | Some(Value::Null) => Settings::default(),
        Some(Value::Object(changes)) => {
            Settings::default().with_changes(changes).map_err(|problem| format!("settings: {problem}"))?
        }
        Some(other) => return Err(format!("settings must be an object, got {other}")),
    };

    let stats = match top.map.get("stats") {
        None | Some(Value::Null) => None,
        Some(_) => {
            let known: Vec<&str> = STATS_KEY_FIELDS.iter().chain(STATS_COUNTER_COLUMNS.iter()).copied().collect();
            let mut rows = Vec::new();
            let mut seen: HashMap<StatsKey, String> = HashMap::new();
            for (index, value) in top.array("stats")?.iter().enumerate() {
                let fields = Fields::object(&format!("stats[{index}]"), value, &known)?;
                let key = StatsKey {
                    hour: fields.required_int("hour")?,
                    channel_id: fields.int_or("channel_id", 0)?,
                    api_key_id: fields.int_or("api_key_id", 0)?,
                    group: fields.string_or("group", "")?,
                    model: fields.string_or("model", "")?,
                };
                let mut counters = [0_i64; 12];
                for (counter, column) in counters.iter_mut().zip(STATS_COUNTER_COLUMNS) {
                    *counter = fields.int_or(column, 0)?;
                }
                if let Some(first) = seen.insert(key.clone(), fields.path.clone()) {
                    return Err(format!("{} has the same hour, channel, client key, group and model as {first}", fields.path));
                }
                rows.push(StatsRow { key, counters: StatsCounters::from_array(counters) });
            }
            Some(rows)
        }
    };

    let backup = Backup { channels, groups, api_keys, prices, settings: settings.stored_rows(), stats };
    Ok((backup, settings))
}

/// The id given to a record at `path` that the document left without one: the one after
/// `largest`, the largest id so far. A document whose largest id is already i64::MAX leaves no
/// id to give, which is the document's problem to fix rather than a number to wrap around.
fn fresh_id_after(largest: i64, path: &str) -> Result<i64, String> {
    largest.checked_add(1).ok_or_else(|| {
        format!("{path}.id is missing and no id is left after the largest one in the document ({largest}); give it an id")
    })
}

/// The message of an API error without its status, for nesting under a document path.
fn api_message(error: ApiError) -> String {
    match error {
        ApiError::Invalid(message) | ApiError::Malformed(message) | ApiError::Conflict(message) => message,
        other => other.to_string(),
    }
}

/// Records `value` as seen at `path`; a second sighting is an error naming both places.
fn remember_unique<T: std::hash::Hash + Eq + std::fmt::Debug>(
    seen: &mut HashMap<T, String>,
    value: T,
    path: &str,
    what: &str,
) -> Result<(), String> {
    if let Some(first) = seen.get(&value) {
        return Err(format!("{path} {value:?} repeats the {what} of {first}"));
    }
    seen.insert(value, path.trim_end_matches(&format!(".{what}")).to_string());
    Ok(())
}

/// The fields of one JSON object of the document, with its path for error messages.
struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// `value` must be an object whose fields are all in `known`.
    fn object(path: &str, value: &'a Value, known: &[&str]) -> Result<Fields<'a>, String> {
        let Value::Object(map) = value else {
            let shown = if path.is_empty() { "the document" } else { path };
            return Err(format!("{shown} must be an object"));
        };
        let fields = Fields { path: path.to_string(), map };
        if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(format!("{} is not a known field (known: {})", fields.at(unknown), known.join(", ")));
        }
        Ok(fields)
    }

    fn at(&self, field: &str) -> String {
        if self.path.is_empty() { field.to_string() } else { format!("{}.{field}", self.path) }
    }

    fn present(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|value| !value.is_null())
    }

    fn required(&self, field: &str) -> Result<&'a Value, String> {
        self.present(field).ok_or_else(|| format!("{} is required", self.at(field)))
    }

    fn required_string(&self, field: &str) -> Result<String, String> {
        let value = self.required(field)?;
        value.as_str().map(str::to_string).ok_or_else(|| format!("{} must be a string, got {value}", self.at(field)))
    }

    /// A required name: trimmed, not empty, at most 200 characters (the API's rule).
    fn name(&self, field: &str) -> Result<String, String> {
        let text = self.required_string(field)?;
        body::check_name(&self.at(field), &text).map_err(api_message)
    }

    fn string_or(&self, field: &str, default: &str) -> Result<String, String> {
        match self.present(field) {
            None => Ok(default.to_string()),
            Some(value) => {
                value.as_str().map(str::to_string).ok_or_else(|| format!("{} must be a string, got {value}", self.at(field)))
            }
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool, String> {
        match self.present(field) {
            None => Ok(default),
            Some(value) => value.as_bool().ok_or_else(|| format!("{} must be true or false, got {value}", self.at(field))),
        }
    }

    fn required_int(&self, field: &str) -> Result<i64, String> {
        let value = self.required(field)?;
        value.as_i64().ok_or_else(|| format!("{} must be a whole number, got {value}", self.at(field)))
    }

    fn int_or(&self, field: &str, default: i64) -> Result<i64, String> {
        match self.present(field) {
            None => Ok(default),
            Some(_) => self.required_int(field),
        }
    }

    fn whole_number_or(&self, field: &str, default: u64, maximum: u64) -> Result<u64, String> {
        match self.present(field) {
            None => Ok(default),
            Some(value) => value
                .as_u64()
                .filter(|number| *number <= maximum)
                .ok_or_else(|| format!("{} must be a whole number from 0 to {maximum}, got {value}", self.at(field))),
        }
    }

    /// A required positive id.
    fn id(&self, field: &str) -> Result<i64, String> {
        self.optional_id(field)?.ok_or_else(|| format!("{} is required", self.at(field)))
    }

    /// A positive id, or nothing when the field is absent or null.
    fn optional_id(&self, field: &str) -> Result<Option<i64>, String> {
        match self.present(field) {
            None => Ok(None),
            Some(value) => value
                .as_i64()
                .filter(|id| *id > 0)
                .map(Some)
                .ok_or_else(|| format!("{} must be a positive whole number, got {value}", self.at(field))),
        }
    }

    /// A price in USD per 1M tokens: a finite number, 0 or more; absent means 0.
    fn price(&self, field: &str) -> Result<f64, String> {
        match self.present(field) {
            None => Ok(0.0),
            Some(value) => value
                .as_f64()
                .filter(|price| price.is_finite() && *price >= 0.0)
                .ok_or_else(|| format!("{} must be a number of USD, 0 or more, got {value}", self.at(field))),
        }
    }

    /// An array; absent or null is an empty one.
    fn array(&self, field: &str) -> Result<&'a [Value], String> {
        match self.present(field) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(value) => Err(format!("{} must be an array, got {value}", self.at(field))),
        }
    }

    fn string_list(&self, field: &str) -> Result<Vec<String>, String> {
        self.array(field)?
            .iter()
            .enumerate()
            .map(|(index, item)| match item.as_str().map(str::trim) {
                Some(text) if !text.is_empty() => Ok(text.to_string()),
                _ => Err(format!("{}[{index}] must be a non-empty string, got {item}", self.at(field))),
            })
            .collect()
    }

    fn string_map(&self, field: &str) -> Result<BTreeMap<String, String>, String> {
        match self.present(field) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(entries)) => entries
                .iter()
                .map(|(name, value)| match value.as_str() {
                    Some(text) => Ok((name.trim().to_string(), text.to_string())),
                    None => Err(format!("{}.{name} must be a string, got {value}", self.at(field))),
                })
                .collect(),
            Some(value) => Err(format!("{} must be an object of strings, got {value}", self.at(field))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(seed: char) -> String {
        seed.to_string().repeat(64)
    }

    fn valid_document() -> Value {
        json!({
            "format": "octopus-backup",
            "version": 1,
            "exported_at": "2026-01-02T03:04:05.000Z",
            "channels": [
                {"id": 3, "name": "first", "type": "openai_chat", "base_urls": ["https://a.test/v1"],
                 "keys": [{"id": 10, "key": "sk-one", "enabled": false, "remark": "old"}, {"key": "sk-two"}]},
                {"id": 9, "name": "second", "type": "anthropic", "base_urls": ["https://b.test/v1"], "keys": []}
            ],
            "groups": [
                {"id": 2, "name": "fast", "mode": "failover", "items": [{"channel_id": 9, "model": "claude"}]}
            ],
            "api_keys": [
                {"id": 5, "name": "team", "key_hash": hash('a'), "key_prefix": "sk-octopus-AbCd", "max_cost": 1.5}
            ],
            "prices": [
                {"id": 1, "model": "claude", "channel_id": null, "input": 3.0, "output": 15.0},
                {"model": "claude", "channel_id": 9, "input": 1.0, "output": 2.0}
            ],
            "settings": {"log_bodies": true},
            "stats": [{"hour": 3600, "channel_id": 9, "api_key_id": 5, "group": "fast", "model": "claude", "requests": 2, "cost_micros": 7}]
        })
    }

    fn error_of(document: Value) -> String {
        parse_document(&document).unwrap_err()
    }

    #[test]
    fn a_valid_document_parses_with_ids_kept_and_missing_ids_assigned() {
        let (backup, settings) = parse_document(&valid_document()).unwrap();
        assert_eq!(backup.channels.iter().map(|channel| channel.id).collect::<Vec<_>>(), [3, 9]);
        assert_eq!(backup.channels[0].keys[0].id, 10);
        assert!(!backup.channels[0].keys[0].enabled);
        assert_eq!(backup.channels[0].keys[1].id, 11, "a key without an id gets one after the largest");
        assert_eq!(backup.groups[0].items[0].channel_id, 9);
        assert_eq!(backup.api_keys[0].max_cost, Some(1.5));
        assert_eq!((backup.api_keys[0].rpm, backup.api_keys[0].tpm), (0, 0), "limits default to off");
        assert_eq!(backup.prices[1].id, 2);
        assert!(settings.log_bodies);
        assert_eq!(backup.settings.len(), crate::settings::SETTING_NAMES.len());
        let stats = backup.stats.unwrap();
        assert_eq!(stats[0].counters.requests, 2);
        assert_eq!(stats[0].counters.cost_micros, 7);
    }

    #[test]
    fn ids_to_assign_after_the_largest_possible_id_are_refused_not_wrapped() {
        // Found by the admin_import_body fuzz target: `largest + 1` overflowed (a panic in a
        // checked build, a negative id otherwise) when a record without an id followed one
        // whose id was i64::MAX.
        let mut document = valid_document();
        document["channels"][0]["keys"][0]["id"] = json!(i64::MAX);
        assert_eq!(
            error_of(document),
            format!(
                "channels[0].keys[1].id is missing and no id is left after the largest one in the document ({}); give it an id",
                i64::MAX
            )
        );
        let mut document = valid_document();
        document["prices"][0]["id"] = json!(i64::MAX);
        assert_eq!(
            error_of(document),
            format!(
                "prices[1].id is missing and no id is left after the largest one in the document ({}); give it an id",
                i64::MAX
            )
        );
        let mut document = valid_document();
        document["prices"][0]["id"] = json!(i64::MAX - 1);
        let (backup, _) = parse_document(&document).unwrap();
        assert_eq!(backup.prices[1].id, i64::MAX, "the very last id is still given");
    }

    #[test]
    fn a_document_without_stats_leaves_stats_alone() {
        let mut document = valid_document();
        document.as_object_mut().unwrap().remove("stats");
        assert_eq!(parse_document(&document).unwrap().0.stats, None);
    }

    #[test]
    fn dangling_references_name_their_path() {
        let mut document = valid_document();
        document["groups"][0]["items"] = json!([{"channel_id": 9, "model": "a"}, {"channel_id": 4, "model": "b"}]);
        assert_eq!(error_of(document), "groups[0].items[1].channel_id refers to channel 4 which is not in the document");
        let mut document = valid_document();
        document["prices"][1]["channel_id"] = json!(77);
        assert_eq!(error_of(document), "prices[1].channel_id refers to channel 77 which is not in the document");
    }

    #[test]
    fn duplicates_are_refused() {
        let mut document = valid_document();
        document["channels"][1]["name"] = json!("first");
        assert_eq!(error_of(document), "channels[1].name \"first\" repeats the name of channels[0]");
        let mut document = valid_document();
        document["channels"][1]["id"] = json!(3);
        assert_eq!(error_of(document), "channels[1].id 3 repeats the id of channels[0]");
        let mut document = valid_document();
        document["channels"][1]["keys"] = json!([{"id": 10, "key": "sk-x"}]);
        assert!(error_of(document).starts_with("channels[1].keys[0].id 10 repeats"));
        let mut document = valid_document();
        document["api_keys"][0]["key_hash"] = json!(hash('b'));
        document["api_keys"].as_array_mut().unwrap().push(json!({"id": 6, "name": "other", "key_hash": hash('b')}));
        assert!(error_of(document).starts_with("api_keys[1].key_hash"));
        let mut document = valid_document();
        document["prices"][1]["channel_id"] = Value::Null;
        assert!(error_of(document).starts_with("prices[1] repeats the price of model \"claude\""));
        let mut document = valid_document();
        let row = document["stats"][0].clone();
        document["stats"].as_array_mut().unwrap().push(row);
        assert!(error_of(document).starts_with("stats[1] has the same hour"));
        let mut document = valid_document();
        document["groups"][0]["items"] = json!([{"channel_id": 9, "model": "a"}, {"channel_id": 9, "model": "a"}]);
        assert!(error_of(document).starts_with("groups[0].items[1] repeats channel 9"));
    }

    #[test]
    fn wrong_types_and_enum_values_name_the_field() {
        let cases = [
            ("/channels/0/enabled", json!("yes"), "channels[0].enabled must be true or false"),
            ("/channels/0/type", json!("openai"), "channels[0].type \"openai\" is not a channel type"),
            ("/groups/0/mode", json!("fastest"), "groups[0].mode \"fastest\" is not a mode"),
            ("/channels/0/id", json!(-1), "channels[0].id must be a positive whole number"),
            ("/api_keys/0/key_hash", json!("sk-octopus-clear"), "api_keys[0].key_hash must be 64 lower-case hex digits"),
            ("/prices/0/input", json!(-2), "prices[0].input must be a number of USD"),
            ("/groups/0/max_attempts", json!(21), "groups[0].max_attempts must be a whole number from 0 to 20"),
            ("/stats/0/requests", json!("2"), "stats[0].requests must be a whole number"),
            ("/settings/log_max_rows", json!(-5), "settings: log_max_rows"),
            ("/version", json!(2), "version 2 is not supported"),
            ("/format", json!("other"), "format must be \"octopus-backup\""),
            ("/channels/0/base_urls", json!(["ftp://x"]), "channels[0]: base_urls[0]"),
            ("/channels/0/keys", json!([{"key": "  "}]), "channels[0].keys[0].key must not be empty"),
            ("/groups", json!({}), "groups must be an array"),
        ];
        for (pointer, value, expected) in cases {
            let mut document = valid_document();
            let (parent, field) = pointer.rsplit_once('/').unwrap();
            let target = if parent.is_empty() { &mut document } else { document.pointer_mut(parent).unwrap() };
            target[field] = value;
            let error = error_of(document);
            assert!(error.starts_with(expected), "{pointer}: {error}");
        }
    }

    #[test]
    fn unknown_fields_and_missing_requirements_are_refused() {
        let mut document = valid_document();
        document["channels"][0]["colour"] = json!("red");
        assert!(error_of(document).starts_with("channels[0].colour is not a known field"));
        let mut document = valid_document();
        document["surprise"] = json!(1);
        assert!(error_of(document).starts_with("surprise is not a known field"));
        let mut document = valid_document();
        document["groups"][0].as_object_mut().unwrap().remove("name");
        assert_eq!(error_of(document), "groups[0].name is required");
        assert_eq!(parse_document(&json!([])).unwrap_err(), "the document must be an object");
    }

    #[test]
    fn an_exported_document_parses_back_to_the_same_backup() {
        let (backup, settings) = parse_document(&valid_document()).unwrap();
        let exported = document_json(&backup, &settings, 0);
        let (again, settings_again) = parse_document(&exported).unwrap();
        assert_eq!(again, backup);
        assert_eq!(settings_again, settings);
    }
}
