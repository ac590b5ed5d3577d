//! `/api/v1/api-keys`: client keys. The secret is shown once at creation; only its SHA-256 is kept.

use serde_json::{json, Map, Value};

use crate::api::body;
use crate::api::error::ApiError;
use crate::api::{store_call, AdminContext};
use crate::http::{Request, Response};
use crate::store::entities::ApiKey;
use crate::util;

/// Every client key starts with this, followed by 48 characters from [0-9A-Za-z].
pub const CLIENT_KEY_PREFIX: &str = "sk-octopus-";
const CLIENT_KEY_RANDOM_LENGTH: usize = 48;
/// How much of the key is kept in clear for display: the prefix plus four characters.
const DISPLAY_PREFIX_LENGTH: usize = CLIENT_KEY_PREFIX.len() + 4;

pub(crate) const FIELDS: &[&str] = &["name", "enabled", "expires_at", "max_cost", "allowed_models", "rpm", "tpm"];
pub(crate) const READ_ONLY_FIELDS: &[&str] = &["id", "created_at", "updated_at", "key_prefix"];

/// A fresh client key from OS randomness.
pub fn generate_client_key() -> String {
    format!("{CLIENT_KEY_PREFIX}{}", util::random_alphanumeric(CLIENT_KEY_RANDOM_LENGTH))
}

pub fn list(context: &AdminContext) -> Result<Response, ApiError> {
    let keys = store_call(context, |store| store.list_api_keys())?;
    Ok(Response::json(200, &Value::Array(keys.iter().map(api_key_json).collect())))
}

pub fn get(context: &AdminContext, id: i64) -> Result<Response, ApiError> {
    Ok(Response::json(200, &api_key_json(&load(context, id)?)))
}

pub fn create(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let map = body::json_object(request, FIELDS, READ_ONLY_FIELDS)?;
    let secret = generate_client_key();
    let mut api_key = ApiKey {
        id: 0,
        name: body::required_string(&map, "name")?,
        key_hash: util::sha256_hex(secret.as_bytes()),
        key_prefix: secret[..DISPLAY_PREFIX_LENGTH].to_string(),
        enabled: true,
        expires_at: None,
        max_cost: None,
        allowed_models: Vec::new(),
        rpm: 0,
        tpm: 0,
        created_at: 0,
        updated_at: 0,
    };
    apply_fields(&mut api_key, &map)?;
    let stored = store_call(context, move |store| store.create_api_key(&api_key))?;
    context.notify_change();
    let mut shown = api_key_json(&stored);
    shown["key"] = Value::String(secret);
    Ok(Response::json(201, &shown))
}

pub fn update(context: &AdminContext, request: &Request, id: i64) -> Result<Response, ApiError> {
    let map = body::json_object(request, FIELDS, READ_ONLY_FIELDS)?;
    let mut api_key = load(context, id)?;
    apply_fields(&mut api_key, &map)?;
    let stored = store_call(context, move |store| store.update_api_key(&api_key))?
        .ok_or_else(|| ApiError::NotFound(format!("no api key with id {id}")))?;
    context.notify_change();
    Ok(Response::json(200, &api_key_json(&stored)))
}

pub fn delete(context: &AdminContext, id: i64) -> Result<Response, ApiError> {
    if !store_call(context, move |store| store.delete_api_key(id))? {
        return Err(ApiError::NotFound(format!("no api key with id {id}")));
    }
    context.notify_change();
    Ok(Response::json(200, &json!({"deleted": id})))
}

fn load(context: &AdminContext, id: i64) -> Result<ApiKey, ApiError> {
    store_call(context, move |store| store.api_key_by_id(id))?.ok_or_else(|| ApiError::NotFound(format!("no api key with id {id}")))
}

pub(crate) fn apply_fields(api_key: &mut ApiKey, map: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(name) = body::optional_string(map, "name")? {
        api_key.name = body::check_name("name", &name)?;
    }
    if let Some(enabled) = body::optional_bool(map, "enabled")? {
        api_key.enabled = enabled;
    }
    // For expires_at and max_cost, an explicit null (or 0 for expires_at) clears the limit.
    match map.get("expires_at") {
        None => {}
        Some(Value::Null) => api_key.expires_at = None,
        Some(value) => {
            let expires_at = value
                .as_i64()
                .filter(|seconds| *seconds >= 0)
                .ok_or_else(|| ApiError::Invalid("expires_at must be Unix seconds (0 or null = never)".to_string()))?;
            api_key.expires_at = (expires_at > 0).then_some(expires_at);
        }
    }
    match map.get("max_cost") {
        None => {}
        Some(Value::Null) => api_key.max_cost = None,
        Some(value) => {
            let max_cost = value
                .as_f64()
                .filter(|cost| cost.is_finite() && *cost >= 0.0)
                .ok_or_else(|| ApiError::Invalid("max_cost must be a number of USD, 0 or more (null = unlimited)".to_string()))?;
            api_key.max_cost = Some(max_cost);
        }
    }
    if let Some(models) = body::optional_string_list(map, "allowed_models")? {
        api_key.allowed_models = models;
    }
    if let Some(rpm) = per_minute_limit(map, "rpm")? {
        api_key.rpm = rpm;
    }
    if let Some(tpm) = per_minute_limit(map, "tpm")? {
        api_key.tpm = tpm;
    }
    Ok(())
}

/// The largest per-minute limit accepted. Far above any real traffic; it keeps the value exact
/// in JSON numbers (below 2^53) and in every backend's signed BIGINT.
pub const MAX_PER_MINUTE_LIMIT: u64 = 1 << 50;

/// Reads `rpm` or `tpm`: a whole number from 0 (no limit) to `MAX_PER_MINUTE_LIMIT`; null means 0.
fn per_minute_limit(map: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(0)),
        Some(value) => value
            .as_u64()
            .filter(|limit| *limit <= MAX_PER_MINUTE_LIMIT)
            .map(Some)
            .ok_or_else(|| ApiError::Invalid(format!("{field} must be a whole number per minute, 0 or more (0 = no limit)"))),
    }
}

/// The key as listed: never the secret, only its display prefix.
pub fn api_key_json(api_key: &ApiKey) -> Value {
    json!({
        "id": api_key.id,
        "name": api_key.name,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let key = generate_client_key();
        assert!(key.starts_with("sk-octopus-"));
        assert_eq!(key.len(), "sk-octopus-".len() + 48);
        assert!(key["sk-octopus-".len()..].bytes().all(|byte| byte.is_ascii_alphanumeric()));
        assert_ne!(key, generate_client_key());
    }
}
