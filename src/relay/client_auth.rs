//! Client API keys on relay requests: where a key may be sent and the checks made on it.

use std::sync::Arc;

use crate::http::Request;
use crate::relay::error::RelayError;
use crate::relay::snapshot::Snapshot;
use crate::store::entities::ApiKey;
use crate::util;

/// Finds the client key in the places the four SDK families send it: `Authorization: Bearer`
/// (OpenAI), `x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (Google).
pub fn presented_key(request: &Request) -> Option<String> {
    let bearer = request.header("authorization").and_then(|value| {
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
    });
    bearer
        .or_else(|| request.header("x-api-key").map(|value| value.trim().to_string()))
        .or_else(|| request.header("x-goog-api-key").map(|value| value.trim().to_string()))
        .or_else(|| request.query_param("key"))
        .filter(|key| !key.is_empty())
}

/// Checks the key and returns its record. `now` is Unix seconds.
pub fn authenticate(snapshot: &Snapshot, request: &Request, now: i64) -> Result<Arc<ApiKey>, RelayError> {
    let presented = presented_key(request).ok_or_else(|| {
        RelayError::Unauthenticated("missing API key: send it as Authorization: Bearer, x-api-key, x-goog-api-key or ?key=".to_string())
    })?;
    let api_key = snapshot
        .api_keys_by_hash
        .get(&util::sha256_hex(presented.as_bytes()))
        .ok_or_else(|| RelayError::Unauthenticated("invalid API key".to_string()))?;
    if !api_key.enabled {
        return Err(RelayError::Unauthenticated("this API key is disabled".to_string()));
    }
    if api_key.expires_at.is_some_and(|expires_at| expires_at <= now) {
        return Err(RelayError::Unauthenticated("this API key has expired".to_string()));
    }
    Ok(api_key.clone())
}

/// Whether the key may call this group (an empty list allows every group).
pub fn may_use_model(api_key: &ApiKey, group_name: &str) -> bool {
    api_key.allowed_models.is_empty() || api_key.allowed_models.iter().any(|allowed| allowed == group_name)
}
