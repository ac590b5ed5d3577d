//! Reading JSON fields with the path of the field in every error, for the format parsers.

use serde_json::{Map, Value};

use crate::protocol::Format;
use crate::protocol::ir::{ConvertError, Part};

/// An object from key-value pairs, moving the values in. `json!` serialises every value it is
/// given into a new `Value`, which for message contents and tool schemas is a deep copy made
/// on every converted request.
pub fn object_of<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(entries.into_iter().map(|(key, value)| (key.to_string(), value)).collect())
}

/// `path.key`, or `key` at the top level.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Logs at debug level each of `names` that `body` sets. These are fields current clients send
/// that have no equivalent in any other format: a converted request leaves them out and is
/// still served, because refusing it would break the client for a hint the upstream can live
/// without. docs/client-compatibility.md lists the decision for every such field.
pub fn log_dropped_fields(format: Format, body: &Value, names: &[&str]) {
    for name in names {
        if field(body, name).is_some() {
            log::debug!(
                "{} request: {name} has no equivalent in the upstream format; dropped",
                format.as_str()
            );
        }
    }
}

/// `path[index]`.
pub fn index(path: &str, position: usize) -> String {
    format!("{path}[{position}]")
}

/// The value as an object, or an error naming its path.
pub fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ConvertError> {
    value
        .as_object()
        .ok_or_else(|| ConvertError::new(path, "expected an object"))
}

/// A field that is present and not null.
pub fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.get(key).filter(|found| !found.is_null())
}

pub fn opt_str<'a>(
    value: &'a Value,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ConvertError::new(join(path, key), "expected a string")),
    }
}

pub fn req_str<'a>(value: &'a Value, key: &str, path: &str) -> Result<&'a str, ConvertError> {
    opt_str(value, key, path)?.ok_or_else(|| ConvertError::new(join(path, key), "is required"))
}

pub fn opt_f64(value: &Value, key: &str, path: &str) -> Result<Option<f64>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(found) => found
            .as_f64()
            .map(Some)
            .ok_or_else(|| ConvertError::new(join(path, key), "expected a number")),
    }
}

pub fn opt_u64(value: &Value, key: &str, path: &str) -> Result<Option<u64>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(found) => found
            .as_u64()
            .map(Some)
            .ok_or_else(|| ConvertError::new(join(path, key), "expected a non-negative integer")),
    }
}

pub fn opt_i64(value: &Value, key: &str, path: &str) -> Result<Option<i64>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(found) => found
            .as_i64()
            .map(Some)
            .ok_or_else(|| ConvertError::new(join(path, key), "expected an integer")),
    }
}

pub fn opt_bool(value: &Value, key: &str, path: &str) -> Result<Option<bool>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => Err(ConvertError::new(join(path, key), "expected a boolean")),
    }
}

pub fn opt_array<'a>(
    value: &'a Value,
    key: &str,
    path: &str,
) -> Result<Option<&'a Vec<Value>>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(ConvertError::new(join(path, key), "expected an array")),
    }
}

/// Inserts `key` only when there is a value, keeping written bodies free of nulls.
pub fn insert_some(map: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(value) = value {
        map.insert(key.to_string(), value.into());
    }
}

/// Reads OpenAI-style `content`: absent, a string (empty means no parts) or an array of parts,
/// each read by the format's own `parse_part` with its path.
pub fn string_or_parts(
    content: Option<&Value>,
    path: &str,
    parse_part: impl Fn(&Value, &str) -> Result<Part, ConvertError>,
) -> Result<Vec<Part>, ConvertError> {
    match content {
        None => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![Part::text(text.clone())]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(position, item)| parse_part(item, &index(path, position)))
            .collect(),
        Some(_) => Err(ConvertError::new(
            path,
            "expected a string or an array of parts",
        )),
    }
}
