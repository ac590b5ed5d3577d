//! `GET /v1/models` (OpenAI or Anthropic shape) and `GET /v1beta/models` (Gemini shape): the
//! groups a client key may call.

use serde_json::{json, Value};

use crate::http::{Request, Response};
use crate::relay::client_auth::may_use_model;
use crate::relay::snapshot::Snapshot;
use crate::store::entities::ApiKey;

/// Anthropic's SDK sends `anthropic-version` and `x-api-key`; anyone else gets the OpenAI shape.
pub fn wants_anthropic_shape(request: &Request) -> bool {
    request.header("anthropic-version").is_some() || request.header("x-api-key").is_some()
}

fn visible_groups<'a>(snapshot: &'a Snapshot, api_key: &ApiKey) -> Vec<(&'a str, i64)> {
    snapshot
        .group_names()
        .into_iter()
        .filter(|name| may_use_model(api_key, name))
        .map(|name| (name, snapshot.groups_by_name[name].created_at))
        .collect()
}

pub fn list_models(snapshot: &Snapshot, api_key: &ApiKey, request: &Request) -> Response {
    let groups = visible_groups(snapshot, api_key);
    if wants_anthropic_shape(request) {
        let data: Vec<Value> = groups
            .iter()
            .map(|(name, created_at)| {
                json!({"type": "model", "id": name, "display_name": name, "created_at": rfc3339(*created_at)})
            })
            .collect();
        let first_id = groups.first().map(|(name, _)| *name);
        let last_id = groups.last().map(|(name, _)| *name);
        return Response::json(200, &json!({"data": data, "has_more": false, "first_id": first_id, "last_id": last_id}));
    }
    let data: Vec<Value> = groups
        .iter()
        .map(|(name, created_at)| json!({"id": name, "object": "model", "created": created_at, "owned_by": "octopus"}))
        .collect();
    Response::json(200, &json!({"object": "list", "data": data}))
}

/// Gemini's list, paginated with `pageSize` (default 50, max 1000) and `pageToken` (an offset).
pub fn list_gemini_models(snapshot: &Snapshot, api_key: &ApiKey, request: &Request) -> Response {
    let groups = visible_groups(snapshot, api_key);
    let page_size = request.query_param("pageSize").and_then(|size| size.parse::<usize>().ok()).unwrap_or(50).clamp(1, 1000);
    let offset = request.query_param("pageToken").and_then(|token| token.parse::<usize>().ok()).unwrap_or(0);
    let page: Vec<Value> = groups
        .iter()
        .skip(offset)
        .take(page_size)
        .map(|(name, _)| {
            json!({
                "name": format!("models/{name}"),
                "baseModelId": name,
                "version": "octopus",
                "displayName": name,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent"],
            })
        })
        .collect();
    let mut body = json!({"models": page});
    if offset + page_size < groups.len() {
        body["nextPageToken"] = json!((offset + page_size).to_string());
    }
    Response::json(200, &body)
}

/// Unix seconds as an RFC 3339 UTC timestamp (civil-from-days, proleptic Gregorian).
pub fn rfc3339(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let seconds_of_day = unix_seconds.rem_euclid(86_400);
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds_of_day / 3600,
        seconds_of_day % 3600 / 60,
        seconds_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
