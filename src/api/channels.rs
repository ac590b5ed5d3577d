//! `/api/v1/channels`: channel CRUD with validation, key masking and stable key ids.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::api::body;
use crate::api::error::ApiError;
use crate::api::{store_call, AdminContext};
use crate::http::{Request, Response};
use crate::store::entities::{AutoGroup, Channel, ChannelKey, ChannelType};

pub(crate) const FIELDS: &[&str] =
    &["name", "type", "enabled", "base_urls", "keys", "models", "headers", "proxy", "auto_sync", "match_regex", "auto_group"];
pub(crate) const READ_ONLY_FIELDS: &[&str] = &["id", "created_at", "updated_at", "key_info"];

/// The list, each channel with `endpoints`: its base URLs with the relay's measured delay
/// (probes and real requests, smoothed) and whether the relay has demoted the URL after failures.
pub fn list(context: &AdminContext) -> Result<Response, ApiError> {
    let channels = store_call(context, |store| store.list_channels())?;
    let relay = context.relay.upgrade();
    let items = channels
        .iter()
        .map(|channel| {
            let mut shown = channel_json(channel);
            let health = relay.as_ref().map(|relay| relay.health.lock());
            let endpoints: Vec<Value> = channel
                .base_urls
                .iter()
                .map(|url| {
                    let status = health.as_ref().and_then(|health| health.endpoints.status(channel.id, url));
                    json!({
                        "url": url,
                        "delay_ms": status.and_then(|status| status.latency_ms).map(|latency| latency.round() as u64),
                        "demoted": status.is_some_and(|status| status.demoted),
                    })
                })
                .collect();
            shown["endpoints"] = Value::Array(endpoints);
            shown
        })
        .collect();
    Ok(Response::json(200, &Value::Array(items)))
}

pub fn get(context: &AdminContext, id: i64) -> Result<Response, ApiError> {
    let channel = load(context, id)?;
    Ok(Response::json(200, &channel_json(&channel)))
}

pub fn create(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let map = body::json_object(request, FIELDS, READ_ONLY_FIELDS)?;
    let channel = unsaved_channel(&map, body::required_string(&map, "name")?)?;
    let stored = store_call(context, move |store| store.create_channel(&channel))?;
    context.notify_change();
    Ok(Response::json(201, &channel_json(&stored)))
}

/// A channel built from a create body and validated, not stored.
pub(crate) fn unsaved_channel(map: &Map<String, Value>, name: String) -> Result<Channel, ApiError> {
    let mut channel = Channel {
        id: 0,
        name,
        channel_type: ChannelType::OpenaiChat,
        enabled: true,
        base_urls: Vec::new(),
        keys: Vec::new(),
        models: Vec::new(),
        headers: BTreeMap::new(),
        proxy: String::new(),
        auto_sync: false,
        match_regex: String::new(),
        auto_group: AutoGroup::None,
        created_at: 0,
        updated_at: 0,
    };
    if !map.contains_key("type") {
        return Err(ApiError::Invalid(format!("type is required (one of: {})", type_names())));
    }
    apply_fields(&mut channel, map)?;
    validate(&channel)?;
    Ok(channel)
}

/// `POST /api/v1/channels/fetch-models`: the models an unsaved channel's upstream lists
/// (filtered by `match_regex`), so the panel can fill the model list before saving.
pub fn fetch_models(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let map = body::json_object(request, FIELDS, READ_ONLY_FIELDS)?;
    let name = body::optional_string(&map, "name")?.unwrap_or_else(|| "unsaved".to_string());
    let channel = unsaved_channel(&map, name)?;
    let models = crate::sync::model_sync::fetch_channel_models(&context.upstream, &channel)
        .map_err(|message| ApiError::UpstreamFailed(format!("fetching models failed: {message}")))?;
    Ok(Response::json(200, &json!({"models": models})))
}

/// `POST /api/v1/channels/{id}/test`: one small generation request to the channel's first
/// enabled key and first base URL, with `{model?}` (default: the channel's first model).
pub fn test(context: &AdminContext, request: &Request, id: i64) -> Result<Response, ApiError> {
    let model = if request.body.is_empty() {
        None
    } else {
        body::optional_string(&body::json_object(request, &["model"], &[])?, "model")?
    };
    let channel = load(context, id)?;
    let model = match model.filter(|model| !model.trim().is_empty()) {
        Some(model) => model.trim().to_string(),
        None => channel
            .models
            .first()
            .cloned()
            .ok_or_else(|| ApiError::Invalid("model is required: the channel lists no models".to_string()))?,
    };
    let outcome = crate::sync::channel_test::test_channel(&context.upstream, &channel, &model);
    Ok(Response::json(
        200,
        &json!({"ok": outcome.ok, "status": outcome.status, "latency_ms": outcome.latency_ms, "message": outcome.message}),
    ))
}

/// Partial update: fields left out keep their stored values.
pub fn update(context: &AdminContext, request: &Request, id: i64) -> Result<Response, ApiError> {
    let map = body::json_object(request, FIELDS, READ_ONLY_FIELDS)?;
    let mut channel = load(context, id)?;
    apply_fields(&mut channel, &map)?;
    validate(&channel)?;
    let stored = store_call(context, move |store| store.update_channel(&channel))?
        .ok_or_else(|| ApiError::NotFound(format!("no channel with id {id}")))?;
    context.notify_change();
    Ok(Response::json(200, &channel_json(&stored)))
}

pub fn delete(context: &AdminContext, id: i64) -> Result<Response, ApiError> {
    if !store_call(context, move |store| store.delete_channel(id))? {
        return Err(ApiError::NotFound(format!("no channel with id {id}")));
    }
    context.notify_change();
    Ok(Response::json(200, &json!({"deleted": id})))
}

/// `POST /api/v1/channels/{id}/sync-models`: replaces the channel's model list with what its
/// upstream lists (filtered by `match_regex`), updates its groups (see `sync::model_sync`) and
/// reports what changed.
pub fn sync_models(context: &AdminContext, id: i64) -> Result<Response, ApiError> {
    use crate::sync::model_sync::{sync_channel, SyncError};
    let outcome = sync_channel(&context.upstream, &context.store, id).map_err(|error| match error {
        SyncError::ChannelMissing(_) => ApiError::NotFound(error.to_string()),
        SyncError::Upstream(_) => ApiError::UpstreamFailed(error.to_string()),
        SyncError::Store(store_error) => ApiError::from(store_error),
    })?;
    context.notify_change();
    let stored = outcome.channel.ok_or_else(|| ApiError::NotFound(format!("no channel with id {id}")))?;
    let mut shown = channel_json(&stored);
    shown["sync"] = json!({
        "added": outcome.added,
        "removed": outcome.removed,
        "groups_changed": outcome.groups_changed,
    });
    Ok(Response::json(200, &shown))
}

fn load(context: &AdminContext, id: i64) -> Result<Channel, ApiError> {
    store_call(context, move |store| store.channel_by_id(id))?
        .ok_or_else(|| ApiError::NotFound(format!("no channel with id {id}")))
}

/// Copies the given fields onto `channel`. Keys are matched against the stored ones so that
/// sending back the masked list from a GET keeps every secret and id.
pub(crate) fn apply_fields(channel: &mut Channel, map: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(name) = body::optional_string(map, "name")? {
        channel.name = body::check_name("name", &name)?;
    }
    if let Some(type_name) = body::optional_string(map, "type")? {
        channel.channel_type = ChannelType::parse(&type_name).ok_or_else(|| {
            ApiError::Invalid(format!("unknown channel type {type_name:?} (one of: {})", type_names()))
        })?;
    }
    if let Some(enabled) = body::optional_bool(map, "enabled")? {
        channel.enabled = enabled;
    }
    if let Some(base_urls) = body::optional_string_list(map, "base_urls")? {
        channel.base_urls = base_urls.into_iter().map(|url| url.trim_end_matches('/').to_string()).collect();
    }
    if let Some(models) = body::optional_string_list(map, "models")? {
        channel.models = dedup_keep_order(models);
    }
    if let Some(proxy) = body::optional_string(map, "proxy")? {
        channel.proxy = proxy.trim().to_string();
    }
    if let Some(auto_sync) = body::optional_bool(map, "auto_sync")? {
        channel.auto_sync = auto_sync;
    }
    if let Some(match_regex) = body::optional_string(map, "match_regex")? {
        channel.match_regex = match_regex;
    }
    if let Some(auto_group_name) = body::optional_string(map, "auto_group")? {
        channel.auto_group = AutoGroup::parse(&auto_group_name).ok_or_else(|| {
            ApiError::Invalid(format!(
                "auto_group {auto_group_name:?} is not a rule (one of: none, exact, fuzzy, regex)"
            ))
        })?;
    }
    match map.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(headers)) => {
            let mut parsed = BTreeMap::new();
            for (name, value) in headers {
                let value = value
                    .as_str()
                    .ok_or_else(|| ApiError::Invalid(format!("headers.{name} must be a string")))?;
                parsed.insert(name.trim().to_string(), value.to_string());
            }
            channel.headers = parsed;
        }
        Some(_) => return Err(ApiError::Invalid("headers must be an object of strings".to_string())),
    }
    if let Some(keys) = map.get("keys").filter(|value| !value.is_null()) {
        channel.keys = resolve_keys(&channel.keys, keys)?;
    }
    Ok(())
}

/// Turns the submitted key list into stored keys. Each entry is either a string (a new secret,
/// or the masked form of a stored key, which keeps that key) or an object
/// `{id?, key?, enabled?, remark?}` where a missing or masked `key` keeps the stored secret.
fn resolve_keys(stored: &[ChannelKey], submitted: &Value) -> Result<Vec<ChannelKey>, ApiError> {
    let Value::Array(entries) = submitted else {
        return Err(ApiError::Invalid("keys must be an array".to_string()));
    };
    let mut unused: Vec<&ChannelKey> = stored.iter().collect();
    let mut take_stored = |id: Option<i64>, masked: Option<&str>| -> Option<ChannelKey> {
        let position = unused.iter().position(|key| {
            id.map(|id| key.id == id).unwrap_or(false) || masked.map(|masked| mask_key(&key.key) == masked).unwrap_or(false)
        })?;
        Some(unused.remove(position).clone())
    };
    let mut resolved = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let key = match entry {
            Value::String(text) => {
                let text = text.trim();
                take_stored(None, Some(text)).unwrap_or(ChannelKey { id: 0, key: text.to_string(), enabled: true, remark: String::new() })
            }
            Value::Object(object) => {
                let id = object.get("id").and_then(Value::as_i64).filter(|id| *id > 0);
                let submitted_key = object.get("key").and_then(Value::as_str).map(str::trim).filter(|key| !key.is_empty());
                let mut key = match (id, submitted_key) {
                    (Some(id), None) => take_stored(Some(id), None)
                        .ok_or_else(|| ApiError::Invalid(format!("keys[{index}]: this channel has no key with id {id}")))?,
                    (id, Some(text)) => match take_stored(None, Some(text)) {
                        Some(stored_key) => stored_key,
                        None => {
                            let kept_id = id.and_then(|id| take_stored(Some(id), None)).map(|key| key.id).unwrap_or(0);
                            ChannelKey { id: kept_id, key: text.to_string(), enabled: true, remark: String::new() }
                        }
                    },
                    (None, None) => return Err(ApiError::Invalid(format!("keys[{index}] needs a key or an id"))),
                };
                if let Some(enabled) = object.get("enabled").and_then(Value::as_bool) {
                    key.enabled = enabled;
                }
                if let Some(remark) = object.get("remark").and_then(Value::as_str) {
                    key.remark = remark.to_string();
                }
                key
            }
            _ => return Err(ApiError::Invalid(format!("keys[{index}] must be a string or an object"))),
        };
        if key.key.is_empty() {
            return Err(ApiError::Invalid(format!("keys[{index}] is empty")));
        }
        resolved.push(key);
    }
    Ok(resolved)
}

/// The rules every stored channel follows (URLs, proxy, regular expression, header names).
pub fn validate(channel: &Channel) -> Result<(), ApiError> {
    if channel.base_urls.is_empty() {
        return Err(ApiError::Invalid("base_urls must list at least one URL".to_string()));
    }
    for (index, url) in channel.base_urls.iter().enumerate() {
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        if rest.map(|rest| rest.is_empty() || rest.starts_with('/')).unwrap_or(true) || url.contains(char::is_whitespace) {
            return Err(ApiError::Invalid(format!("base_urls[{index}] {url:?} is not an http:// or https:// URL")));
        }
    }
    if !channel.proxy.is_empty() {
        let scheme = channel.proxy.split("://").next().unwrap_or("");
        if !channel.proxy.contains("://") || !["http", "https", "socks5", "socks5h"].contains(&scheme) {
            return Err(ApiError::Invalid(format!(
                "proxy {:?} must be an http://, https://, socks5:// or socks5h:// URL",
                redact_userinfo(&channel.proxy)
            )));
        }
    }
    crate::api::groups::valid_match_regex(&channel.match_regex)?;
    for name in channel.headers.keys() {
        if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_".contains(&byte)) {
            return Err(ApiError::Invalid(format!("header name {name:?} is not valid")));
        }
    }
    Ok(())
}

/// The channel as the API shows it: keys masked, per-key details in `key_info`.
pub fn channel_json(channel: &Channel) -> Value {
    json!({
        "id": channel.id,
        "name": channel.name,
        "type": channel.channel_type.as_str(),
        "enabled": channel.enabled,
        "base_urls": channel.base_urls,
        "keys": channel.keys.iter().map(|key| mask_key(&key.key)).collect::<Vec<_>>(),
        "key_info": channel.keys.iter().map(|key| json!({
            "id": key.id, "key": mask_key(&key.key), "enabled": key.enabled, "remark": key.remark,
        })).collect::<Vec<_>>(),
        "models": channel.models,
        "headers": channel.headers,
        "proxy": redact_userinfo(&channel.proxy),
        "auto_sync": channel.auto_sync,
        "match_regex": channel.match_regex,
        "auto_group": channel.auto_group.as_str(),
        "created_at": channel.created_at,
        "updated_at": channel.updated_at,
    })
}

/// Shows enough of a secret to recognise it and nothing more.
pub fn mask_key(key: &str) -> String {
    let characters: Vec<char> = key.chars().collect();
    if characters.len() < 12 {
        return "****".to_string();
    }
    let head: String = characters[..4].iter().collect();
    let tail: String = characters[characters.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

/// Hides a password in a proxy URL (`http://user:secret@host` -> `http://user:***@host`).
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_string() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

fn type_names() -> String {
    ChannelType::ALL.iter().map(|channel_type| channel_type.as_str()).collect::<Vec<_>>().join(", ")
}

fn dedup_keep_order(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().filter(|item| seen.insert(item.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_keys() -> Vec<ChannelKey> {
        vec![
            ChannelKey { id: 1, key: "sk-first-secret-0001".to_string(), enabled: true, remark: String::new() },
            ChannelKey { id: 2, key: "sk-second-secret-0002".to_string(), enabled: false, remark: "old".to_string() },
        ]
    }

    #[test]
    fn masked_keys_sent_back_keep_their_secret_and_id() {
        let stored = stored_keys();
        let submitted = json!([mask_key(&stored[1].key), "sk-brand-new-key-0003"]);
        let resolved = resolve_keys(&stored, &submitted).unwrap();
        assert_eq!(resolved.len(), 2);
        assert_eq!(resolved[0], stored[1]);
        assert_eq!(resolved[1].id, 0);
        assert_eq!(resolved[1].key, "sk-brand-new-key-0003");
    }

    #[test]
    fn key_objects_update_flags_by_id() {
        let stored = stored_keys();
        let submitted = json!([{"id": 1, "enabled": false, "remark": "paused"}, {"key": "sk-another-new-key-9"}]);
        let resolved = resolve_keys(&stored, &submitted).unwrap();
        assert_eq!(resolved[0].id, 1);
        assert_eq!(resolved[0].key, stored[0].key);
        assert!(!resolved[0].enabled);
        assert_eq!(resolved[0].remark, "paused");
        assert_eq!(resolved[1].id, 0);
        assert!(resolve_keys(&stored, &json!([{"id": 99}])).is_err());
        assert!(resolve_keys(&stored, &json!([{}])).is_err());
        assert!(resolve_keys(&stored, &json!("nope")).is_err());
    }

    #[test]
    fn masking_never_shows_short_keys() {
        assert_eq!(mask_key("short"), "****");
        assert_eq!(mask_key("sk-abcdefghijklmnop"), "sk-a...mnop");
        assert_eq!(redact_userinfo("http://user:secret@proxy:8080"), "http://user:***@proxy:8080");
    }
}
