//! Reading JSON fields with the path of the field in every error, for the format parsers.

use std::fmt;

use serde_json::{Map, Value};

use crate::protocol::Format;
use crate::protocol::ir::{ConvertError, Part};

/// An object from key-value pairs, moving the values in. `json!` serialises every value it is
/// given into a new `Value`, which for message contents and tool schemas is a deep copy made
/// on every converted request.
pub fn object_of<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(entries.into_iter().map(|(key, value)| (key.to_string(), value)).collect())
}

/// Where a value sits in a body (`messages[2].content`), for error messages. It is a copy of its
/// few segments, borrowed from the body, and is written out as text only when an error names
/// it: formatting the path of every message and part up front cost a converted request about
/// ten thousand instructions (callgrind), all for errors that almost never happen.
#[derive(Clone, Copy)]
pub struct FieldPath<'a> {
    segments: [Segment<'a>; MAX_PATH_SEGMENTS],
    /// How many segments are in use; beyond `MAX_PATH_SEGMENTS` only this count grows.
    depth: usize,
}

/// Paths deeper than this keep their first segments and end in `…`.
const MAX_PATH_SEGMENTS: usize = 8;

#[derive(Clone, Copy)]
enum Segment<'a> {
    /// A key, or several already joined with dots (a path given as text).
    Key(&'a str),
    Index(usize),
}

impl<'a> FieldPath<'a> {
    /// The body itself.
    pub const ROOT: FieldPath<'static> = FieldPath {
        segments: [Segment::Index(0); MAX_PATH_SEGMENTS],
        depth: 0,
    };

    fn with(&self, segment: Segment<'a>) -> FieldPath<'a> {
        let mut longer = *self;
        if longer.depth < MAX_PATH_SEGMENTS {
            longer.segments[longer.depth] = segment;
        }
        longer.depth += 1;
        longer
    }
}

impl fmt::Display for FieldPath<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, segment) in self.segments[..self.depth.min(MAX_PATH_SEGMENTS)].iter().enumerate() {
            match segment {
                Segment::Key(key) if position == 0 => formatter.write_str(key)?,
                Segment::Key(key) => write!(formatter, ".{key}")?,
                Segment::Index(position) => write!(formatter, "[{position}]")?,
            }
        }
        if self.depth > MAX_PATH_SEGMENTS {
            formatter.write_str("…")?;
        }
        Ok(())
    }
}

impl From<FieldPath<'_>> for String {
    fn from(path: FieldPath<'_>) -> String {
        path.to_string()
    }
}

impl From<&FieldPath<'_>> for String {
    fn from(path: &FieldPath<'_>) -> String {
        path.to_string()
    }
}

/// A path as the parsers are given it: a `FieldPath`, or text for a path known in advance
/// (`""` for the body itself, `"generationConfig"`).
pub trait AsFieldPath {
    fn as_field_path(&self) -> FieldPath<'_>;
}

impl AsFieldPath for FieldPath<'_> {
    fn as_field_path(&self) -> FieldPath<'_> {
        *self
    }
}

impl AsFieldPath for str {
    fn as_field_path(&self) -> FieldPath<'_> {
        if self.is_empty() {
            FieldPath::ROOT
        } else {
            FieldPath::ROOT.with(Segment::Key(self))
        }
    }
}

impl AsFieldPath for String {
    fn as_field_path(&self) -> FieldPath<'_> {
        self.as_str().as_field_path()
    }
}

/// `path.key`, or `key` at the top level.
pub fn join<'a>(path: &'a (impl AsFieldPath + ?Sized), key: &'a str) -> FieldPath<'a> {
    path.as_field_path().with(Segment::Key(key))
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

/// `path.key[position]`: an element of the array at `key`.
pub fn element<'a>(path: &'a (impl AsFieldPath + ?Sized), key: &'a str, position: usize) -> FieldPath<'a> {
    path.as_field_path().with(Segment::Key(key)).with(Segment::Index(position))
}

/// `path[index]`.
pub fn index(path: &(impl AsFieldPath + ?Sized), position: usize) -> FieldPath<'_> {
    path.as_field_path().with(Segment::Index(position))
}

/// The value as an object, or an error naming its path.
pub fn object<'a>(value: &'a Value, path: &(impl AsFieldPath + ?Sized)) -> Result<&'a Map<String, Value>, ConvertError> {
    value
        .as_object()
        .ok_or_else(|| ConvertError::new(path.as_field_path(), "expected an object"))
}

/// A field that is present and not null.
pub fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.get(key).filter(|found| !found.is_null())
}

pub fn opt_str<'a>(
    value: &'a Value,
    key: &str,
    path: &(impl AsFieldPath + ?Sized),
) -> Result<Option<&'a str>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ConvertError::new(join(path, key), "expected a string")),
    }
}

pub fn req_str<'a>(value: &'a Value, key: &str, path: &(impl AsFieldPath + ?Sized)) -> Result<&'a str, ConvertError> {
    opt_str(value, key, path)?.ok_or_else(|| ConvertError::new(join(path, key), "is required"))
}

pub fn opt_f64(value: &Value, key: &str, path: &(impl AsFieldPath + ?Sized)) -> Result<Option<f64>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(found) => found
            .as_f64()
            .map(Some)
            .ok_or_else(|| ConvertError::new(join(path, key), "expected a number")),
    }
}

pub fn opt_u64(value: &Value, key: &str, path: &(impl AsFieldPath + ?Sized)) -> Result<Option<u64>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(found) => found
            .as_u64()
            .map(Some)
            .ok_or_else(|| ConvertError::new(join(path, key), "expected a non-negative integer")),
    }
}

pub fn opt_i64(value: &Value, key: &str, path: &(impl AsFieldPath + ?Sized)) -> Result<Option<i64>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(found) => found
            .as_i64()
            .map(Some)
            .ok_or_else(|| ConvertError::new(join(path, key), "expected an integer")),
    }
}

pub fn opt_bool(value: &Value, key: &str, path: &(impl AsFieldPath + ?Sized)) -> Result<Option<bool>, ConvertError> {
    match field(value, key) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => Err(ConvertError::new(join(path, key), "expected a boolean")),
    }
}

pub fn opt_array<'a>(
    value: &'a Value,
    key: &str,
    path: &(impl AsFieldPath + ?Sized),
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
    path: &(impl AsFieldPath + ?Sized),
    parse_part: impl Fn(&Value, &FieldPath) -> Result<Part, ConvertError>,
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
            path.as_field_path(),
            "expected a string or an array of parts",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::protocol::json::{FieldPath, element, index, join, opt_str};

    #[test]
    fn paths_read_as_they_did_when_they_were_formatted_up_front() {
        assert_eq!(FieldPath::ROOT.to_string(), "");
        assert_eq!(join("", "model").to_string(), "model");
        assert_eq!(index("messages", 2).to_string(), "messages[2]");
        assert_eq!(index("", 0).to_string(), "[0]");
        let message = index("messages", 2);
        assert_eq!(element(&message, "content", 1).to_string(), "messages[2].content[1]");
        let part = element(&message, "content", 1);
        assert_eq!(join(&join(&part, "image_url"), "url").to_string(), "messages[2].content[1].image_url.url");
        // Text given as a path keeps its dots and brackets.
        let given = "candidates[0].content.parts";
        assert_eq!(index(given, 3).to_string(), "candidates[0].content.parts[3]");
    }

    #[test]
    fn a_path_deeper_than_its_segments_ends_in_an_ellipsis() {
        fn nested(path: &FieldPath, depth: usize, levels: usize) -> String {
            if depth == levels { path.to_string() } else { nested(&index(path, depth), depth + 1, levels) }
        }
        assert_eq!(nested(&index("input", 0), 0, 10), "input[0][0][1][2][3][4][5]…");
    }

    #[test]
    fn an_error_names_the_full_path_of_the_field() {
        let message = index("messages", 4);
        let body = json!({"role": 7});
        let error = opt_str(&body, "role", &message).expect_err("a number is not a role");
        assert_eq!(error.path, "messages[4].role");
        assert_eq!(error.message, "expected a string");
    }
}
