//! `/api/v1/groups`: group CRUD; a group's name is the model name clients call.

use serde_json::{json, Map, Value};

use crate::api::body;
use crate::api::error::ApiError;
use crate::api::{store_call, AdminContext};
use crate::http::{Request, Response};
use crate::store::entities::{Group, GroupItem, GroupMode};

pub(crate) const FIELDS: &[&str] =
    &["name", "mode", "items", "max_attempts", "first_byte_timeout_ms", "total_timeout_ms", "sticky_seconds", "match_regex"];
pub(crate) const READ_ONLY_FIELDS: &[&str] = &["id", "created_at", "updated_at"];
pub const MAX_ATTEMPTS_LIMIT: u64 = 20;

pub fn list(context: &AdminContext) -> Result<Response, ApiError> {
    let groups = store_call(context, |store| store.list_groups())?;
    Ok(Response::json(200, &Value::Array(groups.iter().map(group_json).collect())))
}

pub fn get(context: &AdminContext, id: i64) -> Result<Response, ApiError> {
    Ok(Response::json(200, &group_json(&load(context, id)?)))
}

pub fn create(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let map = body::json_object(request, FIELDS, READ_ONLY_FIELDS)?;
    let mut group = Group {
        id: 0,
        name: body::required_string(&map, "name")?,
        mode: GroupMode::RoundRobin,
        items: Vec::new(),
        max_attempts: 0,
        first_byte_timeout_ms: 0,
        total_timeout_ms: 0,
        sticky_seconds: 0,
        match_regex: String::new(),
        created_at: 0,
        updated_at: 0,
    };
    apply_fields(&mut group, &map)?;
    check_channels_exist(context, &group)?;
    let stored = store_call(context, move |store| store.create_group(&group))?;
    context.notify_change();
    Ok(Response::json(201, &group_json(&stored)))
}

/// Partial update: fields left out keep their stored values; `items`, when given, replaces the list.
pub fn update(context: &AdminContext, request: &Request, id: i64) -> Result<Response, ApiError> {
    let map = body::json_object(request, FIELDS, READ_ONLY_FIELDS)?;
    let mut group = load(context, id)?;
    apply_fields(&mut group, &map)?;
    check_channels_exist(context, &group)?;
    let stored = store_call(context, move |store| store.update_group(&group))?
        .ok_or_else(|| ApiError::NotFound(format!("no group with id {id}")))?;
    context.notify_change();
    Ok(Response::json(200, &group_json(&stored)))
}

pub fn delete(context: &AdminContext, id: i64) -> Result<Response, ApiError> {
    if !store_call(context, move |store| store.delete_group(id))? {
        return Err(ApiError::NotFound(format!("no group with id {id}")));
    }
    context.notify_change();
    Ok(Response::json(200, &json!({"deleted": id})))
}

fn load(context: &AdminContext, id: i64) -> Result<Group, ApiError> {
    store_call(context, move |store| store.group_by_id(id))?.ok_or_else(|| ApiError::NotFound(format!("no group with id {id}")))
}

pub(crate) fn apply_fields(group: &mut Group, map: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(name) = body::optional_string(map, "name")? {
        group.name = body::check_name("name", &name)?;
    }
    if let Some(mode) = body::optional_string(map, "mode")? {
        group.mode = GroupMode::parse(&mode).ok_or_else(|| {
            ApiError::Invalid(format!("unknown mode {mode:?} (one of: round_robin, random, failover, weighted)"))
        })?;
    }
    if let Some(max_attempts) = body::optional_u64(map, "max_attempts")? {
        if max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(ApiError::Invalid(format!("max_attempts must be at most {MAX_ATTEMPTS_LIMIT} (0 = the configured default)")));
        }
        group.max_attempts = max_attempts as u32;
    }
    if let Some(timeout) = body::optional_u64(map, "first_byte_timeout_ms")? {
        group.first_byte_timeout_ms = timeout;
    }
    if let Some(timeout) = body::optional_u64(map, "total_timeout_ms")? {
        group.total_timeout_ms = timeout;
    }
    if let Some(seconds) = body::optional_u64(map, "sticky_seconds")? {
        group.sticky_seconds = seconds;
    }
    if let Some(match_regex) = body::optional_string(map, "match_regex")? {
        group.match_regex = valid_match_regex(&match_regex)?;
    }
    if let Some(items) = map.get("items").filter(|value| !value.is_null()) {
        group.items = parse_items(items)?;
    }
    Ok(())
}

fn parse_items(value: &Value) -> Result<Vec<GroupItem>, ApiError> {
    let Value::Array(entries) = value else {
        return Err(ApiError::Invalid("items must be an array".to_string()));
    };
    let mut items = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let Value::Object(object) = entry else {
            return Err(ApiError::Invalid(format!("items[{index}] must be an object")));
        };
        if let Some(unknown) = object.keys().find(|key| !["channel_id", "model", "priority", "weight"].contains(&key.as_str())) {
            return Err(ApiError::Invalid(format!("items[{index}]: unknown field {unknown:?}")));
        }
        let channel_id = object
            .get("channel_id")
            .and_then(Value::as_i64)
            .filter(|id| *id > 0)
            .ok_or_else(|| ApiError::Invalid(format!("items[{index}].channel_id must be a channel id")))?;
        let model = object
            .get("model")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|model| !model.is_empty())
            .ok_or_else(|| ApiError::Invalid(format!("items[{index}].model must be a non-empty string")))?;
        let priority = match object.get("priority") {
            None | Some(Value::Null) => 0,
            Some(value) => value
                .as_i64()
                .and_then(|priority| i32::try_from(priority).ok())
                .ok_or_else(|| ApiError::Invalid(format!("items[{index}].priority must be a whole number")))?,
        };
        let weight = match object.get("weight") {
            None | Some(Value::Null) => 1,
            Some(value) => value
                .as_u64()
                .and_then(|weight| u32::try_from(weight).ok())
                .filter(|weight| *weight <= 1_000_000)
                .ok_or_else(|| ApiError::Invalid(format!("items[{index}].weight must be a whole number from 0 to 1000000")))?,
        };
        if items.iter().any(|item: &GroupItem| item.channel_id == channel_id && item.model == model) {
            return Err(ApiError::Invalid(format!("items[{index}] repeats channel {channel_id} with model {model:?}")));
        }
        items.push(GroupItem { channel_id, model: model.to_string(), priority, weight });
    }
    Ok(items)
}

/// Items must point at existing channels; checked here so the error names the item.
fn check_channels_exist(context: &AdminContext, group: &Group) -> Result<(), ApiError> {
    if group.items.is_empty() {
        return Ok(());
    }
    let channels = store_call(context, |store| store.list_channels())?;
    for (index, item) in group.items.iter().enumerate() {
        if !channels.iter().any(|channel| channel.id == item.channel_id) {
            return Err(ApiError::Invalid(format!("items[{index}]: there is no channel with id {}", item.channel_id)));
        }
    }
    Ok(())
}

/// The group's `match_regex`, checked to compile: a broken pattern would otherwise fail
/// silently at every model sync instead of once, here, where the admin can fix it.
pub fn valid_match_regex(pattern: &str) -> Result<String, ApiError> {
    if !pattern.is_empty() {
        regex_lite::Regex::new(pattern).map_err(|error| {
            ApiError::Invalid(format!("match_regex is not a valid regular expression: {error}"))
        })?;
    }
    Ok(pattern.to_string())
}

pub fn group_json(group: &Group) -> Value {
    json!({
        "id": group.id,
        "name": group.name,
        "mode": group.mode.as_str(),
        "items": group.items.iter().map(|item| json!({
            "channel_id": item.channel_id, "model": item.model, "priority": item.priority, "weight": item.weight,
        })).collect::<Vec<_>>(),
        "max_attempts": group.max_attempts,
        "first_byte_timeout_ms": group.first_byte_timeout_ms,
        "total_timeout_ms": group.total_timeout_ms,
        "sticky_seconds": group.sticky_seconds,
        "match_regex": group.match_regex,
        "created_at": group.created_at,
        "updated_at": group.updated_at,
    })
}
