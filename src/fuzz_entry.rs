//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz; see fuzz/README.md): the
//! crate-private parsers they drive, reachable without sockets, databases or clocks.
//!
//! Nothing else may use this module, except the unit tests that share an oracle with a fuzz
//! target (the byte scans' checks below); it is hidden from the docs. The admin helpers below repeat
//! the few lines of glue their handlers run before the store is called (read the body against
//! the handler's field list, then the handler's own parse and validate functions), so that a
//! fuzz input takes the same path as a real request body up to the database.

use serde_json::Value;

pub use crate::http::chunked::{ChunkedDecoder, ChunkedError};
pub use crate::http::head::{BodyFraming, HeadError, RequestHead, parse_request_head};

use crate::api::error::ApiError;
use crate::api::{api_keys, body, channels, groups};
use crate::http::{ClientProbe, Request};
use crate::settings::{SETTING_NAMES, Settings};
use crate::store::entities::{ApiKey, Channel, Group, GroupMode};

/// Where the connection finds the end of a request head (see `http::connection`).
pub fn find_head_end(buffer: &[u8], scan_from: usize) -> (Option<usize>, usize) {
    crate::http::connection::find_head_end(buffer, scan_from)
}

/// A request carrying `body`, as an admin handler receives it.
pub fn admin_request(body: &[u8]) -> Request {
    Request {
        method: "POST".to_string(),
        path: "/api/v1/fuzz".to_string(),
        query: String::new(),
        headers: vec![("content-type".to_string(), "application/json".to_string())],
        body: body.to_vec(),
        peer: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
        client: ClientProbe::detached(),
    }
}

/// `POST /api/v1/channels` up to the store: the channel the body describes, validated.
pub fn channel_create(body_bytes: &[u8]) -> Result<Channel, ApiError> {
    let map = body::json_object(
        &admin_request(body_bytes),
        channels::FIELDS,
        channels::READ_ONLY_FIELDS,
    )?;
    channels::unsaved_channel(&map, body::required_string(&map, "name")?)
}

/// `PUT /api/v1/channels/{id}` up to the store: `stored` changed by the body, validated.
pub fn channel_update(stored: &mut Channel, body_bytes: &[u8]) -> Result<(), ApiError> {
    let map = body::json_object(
        &admin_request(body_bytes),
        channels::FIELDS,
        channels::READ_ONLY_FIELDS,
    )?;
    channels::apply_fields(stored, &map)?;
    channels::validate(stored)
}

/// `POST /api/v1/groups` up to the channel check against the store.
pub fn group_create(body_bytes: &[u8]) -> Result<Group, ApiError> {
    let map = body::json_object(
        &admin_request(body_bytes),
        groups::FIELDS,
        groups::READ_ONLY_FIELDS,
    )?;
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
    groups::apply_fields(&mut group, &map)?;
    Ok(group)
}

/// `PUT /api/v1/groups/{id}` up to the channel check against the store.
pub fn group_update(stored: &mut Group, body_bytes: &[u8]) -> Result<(), ApiError> {
    let map = body::json_object(
        &admin_request(body_bytes),
        groups::FIELDS,
        groups::READ_ONLY_FIELDS,
    )?;
    groups::apply_fields(stored, &map)
}

/// `POST /api/v1/api-keys` up to the store, with a fixed secret instead of a random one.
pub fn api_key_create(body_bytes: &[u8]) -> Result<ApiKey, ApiError> {
    let map = body::json_object(
        &admin_request(body_bytes),
        api_keys::FIELDS,
        api_keys::READ_ONLY_FIELDS,
    )?;
    let mut api_key = ApiKey {
        id: 0,
        name: body::required_string(&map, "name")?,
        key_hash: "0".repeat(64),
        key_prefix: "sk-octopus-fuzz".to_string(),
        enabled: true,
        expires_at: None,
        max_cost: None,
        allowed_models: Vec::new(),
        rpm: 0,
        tpm: 0,
        created_at: 0,
        updated_at: 0,
    };
    api_keys::apply_fields(&mut api_key, &map)?;
    Ok(api_key)
}

/// `PUT /api/v1/api-keys/{id}` up to the store.
pub fn api_key_update(stored: &mut ApiKey, body_bytes: &[u8]) -> Result<(), ApiError> {
    let map = body::json_object(
        &admin_request(body_bytes),
        api_keys::FIELDS,
        api_keys::READ_ONLY_FIELDS,
    )?;
    api_keys::apply_fields(stored, &map)
}

/// `PUT /api/v1/settings` up to the store: the settings in force after the body's changes.
pub fn settings_update(current: &Settings, body_bytes: &[u8]) -> Result<Settings, ApiError> {
    let changes =
        body::json_object(&admin_request(body_bytes), &SETTING_NAMES, &[]).map_err(|error| {
            match error {
                ApiError::Invalid(message) => ApiError::Malformed(message),
                other => other,
            }
        })?;
    current.with_changes(&changes).map_err(ApiError::Malformed)
}

/// `POST /api/v1/import` up to the store: the checked document.
pub fn import_document(
    body_bytes: &[u8],
) -> Result<(crate::store::backup::Backup, Settings), ApiError> {
    if body_bytes.is_empty() {
        return Err(ApiError::Malformed(
            "the request body is empty; send a backup document".to_string(),
        ));
    }
    let document: Value = serde_json::from_slice(body_bytes)
        .map_err(|error| ApiError::Malformed(format!("the body is not valid JSON: {error}")))?;
    crate::api::backup::parse_document(&document).map_err(ApiError::Invalid)
}

/// The oracle of the relay's body scan (`raw_json::validated_top_level_members`), shared by its
/// unit test and the request fuzz targets. The scan may leave a body to serde_json, but a body it
/// vouches for must be one serde_json reads, within the nesting limit, with the members serde_json
/// finds (the last of duplicates wins). Panics on a disagreement; says whether the scan vouched.
pub fn check_body_scan_against_serde(raw: &[u8]) -> bool {
    use crate::protocol::raw_json::{nests_deeper_than, validated_top_level_members};
    // The relay checks UTF-8 before it scans.
    let Ok(text) = std::str::from_utf8(raw) else {
        return false;
    };
    let Some(members) = validated_top_level_members(raw, 128) else {
        return false;
    };
    assert!(
        serde_json::from_str::<Box<serde_json::value::RawValue>>(text).is_ok(),
        "the scan vouched for what serde_json refuses: {text}"
    );
    assert!(!nests_deeper_than(raw, 128), "the scan vouched for a body nested too deep: {text}");
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
        let mut names = std::collections::BTreeSet::new();
        for (position, member) in members.iter().enumerate() {
            let name: String =
                serde_json::from_str(&text[member.name.start - 1..member.name.end + 1]).expect("a member name serde_json read");
            let last = !members[position + 1..].iter().any(|later| raw[later.name.clone()] == raw[member.name.clone()]);
            if last && let Ok(value) = serde_json::from_str::<Value>(&text[member.value.clone()]) {
                assert_eq!(map.get(&name), Some(&value), "member {name} in {text}");
            }
            names.insert(name);
        }
        assert_eq!(names, map.keys().cloned().collect(), "member names in {text}");
    }
    true
}

/// Whether any object in `value` has a member whose name `is_wanted`: what the byte scans of a
/// tool schema (`JsonSchema::has_member_anywhere`) must answer, computed from a tree.
pub fn has_member_in_tree(value: &Value, is_wanted: &dyn Fn(&str) -> bool) -> bool {
    match value {
        Value::Object(members) => members.iter().any(|(name, member)| is_wanted(name) || has_member_in_tree(member, is_wanted)),
        Value::Array(items) => items.iter().any(|item| has_member_in_tree(item, is_wanted)),
        _ => false,
    }
}
