//! Reading admin request bodies: JSON objects with known fields, and path ids.

use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::http::Request;

/// Parses the body as a JSON object. Malformed JSON is a 400 that quotes the parser's reason;
/// unknown fields are a 422 naming the field, because a silently ignored typo loses the user's
/// intent. `ignored` lists read-only fields a client may echo back from a GET.
pub fn json_object(request: &Request, known: &[&str], ignored: &[&str]) -> Result<Map<String, Value>, ApiError> {
    if request.body.is_empty() {
        return Err(ApiError::Malformed("the request body is empty; send a JSON object".to_string()));
    }
    let value: Value = serde_json::from_slice(&request.body)
        .map_err(|error| ApiError::Malformed(format!("the body is not valid JSON: {error}")))?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::Malformed("the body must be a JSON object".to_string()));
    };
    for field in ignored {
        map.remove(*field);
    }
    if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(ApiError::Invalid(format!("unknown field {unknown:?} (known fields: {})", known.join(", "))));
    }
    Ok(map)
}

/// A required string field.
pub fn required_string(map: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    optional_string(map, field)?.ok_or_else(|| ApiError::Invalid(format!("{field} is required")))
}

/// An optional string field; `null` counts as absent.
pub fn optional_string(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiError::Invalid(format!("{field} must be a string"))),
    }
}

pub fn optional_bool(map: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => Err(ApiError::Invalid(format!("{field} must be true or false"))),
    }
}

pub fn optional_u64(map: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::Invalid(format!("{field} must be a whole number of 0 or more"))),
    }
}

/// A list of strings; each entry is trimmed and must not be empty.
pub fn optional_string_list(map: &Map<String, Value>, field: &str) -> Result<Option<Vec<String>>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| match item.as_str().map(str::trim) {
                Some(text) if !text.is_empty() => Ok(text.to_string()),
                _ => Err(ApiError::Invalid(format!("{field}[{index}] must be a non-empty string"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::Invalid(format!("{field} must be an array of strings"))),
    }
}

/// Parses the `{id}` path parameter.
pub fn path_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::NotFound(format!("no resource with id {raw:?}")))
}

/// A name must be non-empty, trimmed and of sane length.
pub fn check_name(field: &str, name: &str) -> Result<String, ApiError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(ApiError::Invalid(format!("{field} must not be empty")));
    }
    if trimmed.chars().count() > 200 {
        return Err(ApiError::Invalid(format!("{field} is longer than 200 characters")));
    }
    Ok(trimmed.to_string())
}
