//! OAuth access tokens and GCP project ids for Antigravity (Cloud Code `v1internal`) channels.
//!
//! A channel key is either an OAuth access token (`ya29.…`), sent as it is, or a refresh token
//! (`1//…`), exchanged at the configured token endpoint. Access tokens are cached in memory per
//! refresh token and refreshed shortly before they expire. Concurrent callers for one key share
//! one exchange: each key has a `may::sync::Mutex`, so callers that wait for it park their
//! coroutine instead of blocking the worker thread. Nothing secret is logged or put into an error.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::AntigravityConfig;
use crate::upstream::client::{UpstreamClient, UpstreamRequest};
use crate::upstream::control::{CallControl, with_call_control};
use crate::upstream::error::UpstreamError;
use crate::util::{percent_encode, sha256_hex};

/// A cached access token is replaced once less than this much of its lifetime remains, so a
/// token never expires during a long streamed response.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Google always sends `expires_in`; if an endpoint leaves it out, assume the usual hour.
const DEFAULT_EXPIRES_IN_SECONDS: u64 = 3600;

/// Limit for each wait on the token endpoint or loadCodeAssist (response head, then each read).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Token and loadCodeAssist answers are small; a longer body is cut here.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Error descriptions from upstream are shortened to this many characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// More distinct keys than this (channel edits over a long uptime) drop the whole cache.
const MAX_CACHED_KEYS: usize = 4096;

const ANTIGRAVITY_USER_AGENT: &str = "antigravity/1.11.3 linux/amd64";
const CLIENT_METADATA: &str =
    r#"{"ideType":"IDE_UNSPECIFIED","platform":"PLATFORM_UNSPECIFIED","pluginType":"GEMINI"}"#;

/// Access tokens and project ids for Antigravity channel keys. Share it with `Arc`.
pub struct AntigravityAuth {
    client: UpstreamClient,
    config: AntigravityConfig,
    /// Keyed by the SHA-256 hex of the refresh token, so no secret is held as a map key.
    tokens: Mutex<HashMap<String, Arc<may::sync::Mutex<TokenSlot>>>>,
    /// Keyed by the SHA-256 hex of the channel key.
    projects: Mutex<HashMap<String, Arc<may::sync::Mutex<Option<String>>>>>,
}

/// Why no access token or project id could be had. Messages never contain a token, a refresh
/// token or the client secret, so they are safe to log and to show in the admin panel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// The gateway lacks configuration it needs; the text names the config keys to set.
    NotConfigured(String),
    /// The token endpoint or loadCodeAssist answered with an error status (for example 400
    /// `invalid_grant` for a revoked refresh token). The text is the upstream's own description.
    Refused { status: u16, message: String },
    /// The endpoint could not be reached or the connection failed.
    Transport(String),
    /// The endpoint answered 2xx with a body we could not use, or the channel key is empty.
    Malformed(String),
}

/// The cached state of one refresh token.
#[derive(Default)]
struct TokenSlot {
    token: Option<CachedToken>,
    /// The last failed exchange and when it ended. Callers that were already waiting when it
    /// failed get the same error instead of each trying again.
    last_failure: Option<(Instant, AuthError)>,
}

struct CachedToken {
    access_token: String,
    obtained_at: Instant,
    expires_at: Instant,
}

impl AntigravityAuth {
    pub fn new(client: UpstreamClient, config: AntigravityConfig) -> AntigravityAuth {
        AntigravityAuth {
            client,
            config,
            tokens: Mutex::new(HashMap::new()),
            projects: Mutex::new(HashMap::new()),
        }
    }

    /// The bearer to send for this channel key. `ya29.` keys are returned as they are; any other
    /// key is a refresh token, exchanged at `config.token_url` and cached until less than five
    /// minutes of its lifetime remain. Concurrent callers for one key share one exchange.
    /// `force_refresh` discards a cached token obtained before this call started (the relay
    /// uses it once after an upstream 401); a token another caller fetched while this one
    /// waited is fresh and is returned.
    pub fn access_token(&self, key: &str, force_refresh: bool) -> Result<String, AuthError> {
        let requested_at = Instant::now();
        let key = key.trim();
        if key.is_empty() {
            return Err(AuthError::Malformed("the channel key is empty".to_string()));
        }
        if key.starts_with("ya29.") {
            return Ok(key.to_string());
        }
        self.check_refresh_config()?;

        let slot = cache_slot(&self.tokens, key);
        let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((failed_at, error)) = &slot.last_failure
            && *failed_at >= requested_at
        {
            return Err(error.clone());
        }
        if let Some(token) = &slot.token {
            let stale_for_caller = force_refresh && token.obtained_at <= requested_at;
            let expiring = Instant::now() + REFRESH_MARGIN >= token.expires_at;
            if !stale_for_caller && !expiring {
                return Ok(token.access_token.clone());
            }
        }

        slot.token = None;
        match self.exchange_refresh_token(key) {
            Ok((access_token, expires_in)) => {
                let obtained_at = Instant::now();
                slot.token = Some(CachedToken {
                    access_token: access_token.clone(),
                    obtained_at,
                    expires_at: obtained_at + expires_in,
                });
                slot.last_failure = None;
                Ok(access_token)
            }
            Err(error) => {
                slot.last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// The GCP project for this key: `config.project` when set; otherwise discovered once with
    /// `POST {base_url}/v1internal:loadCodeAssist` using `access_token`, and cached per key.
    pub fn project_id(
        &self,
        key: &str,
        base_url: &str,
        access_token: &str,
    ) -> Result<String, AuthError> {
        let configured = self.config.project.trim();
        if !configured.is_empty() {
            return Ok(configured.to_string());
        }

        let slot = cache_slot(&self.projects, key.trim());
        let mut project = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(project) = project.as_ref() {
            return Ok(project.clone());
        }
        let discovered = self.load_code_assist(base_url, access_token)?;
        *project = Some(discovered.clone());
        Ok(discovered)
    }

    /// Extra headers Antigravity wants on every call. The caller adds `Authorization`,
    /// `Content-Type`, and `Accept: text/event-stream` when streaming.
    pub fn request_headers() -> Vec<(String, String)> {
        vec![
            ("User-Agent".to_string(), ANTIGRAVITY_USER_AGENT.to_string()),
            (
                "X-Goog-Api-Client".to_string(),
                "google-cloud-sdk vscode_cloudshelleditor/0.1".to_string(),
            ),
            ("Client-Metadata".to_string(), CLIENT_METADATA.to_string()),
        ]
    }

    fn check_refresh_config(&self) -> Result<(), AuthError> {
        let missing: Vec<&str> = [
            ("antigravity.token_url", &self.config.token_url),
            ("antigravity.client_id", &self.config.client_id),
            ("antigravity.client_secret", &self.config.client_secret),
        ]
        .into_iter()
        .filter(|(_, value)| value.trim().is_empty())
        .map(|(name, _)| name)
        .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(AuthError::NotConfigured(format!(
            "the channel key is a refresh token, so set {} in the config \
             (or the matching OCTOPUS_ANTIGRAVITY_* variables)",
            missing.join(" and ")
        )))
    }

    /// Returns the new access token and its lifetime.
    fn exchange_refresh_token(&self, refresh_token: &str) -> Result<(String, Duration), AuthError> {
        let client_secret = self.config.client_secret.trim();
        let form = format!(
            "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
            percent_encode(self.config.client_id.trim()),
            percent_encode(client_secret),
            percent_encode(refresh_token),
        );
        let headers = vec![
            (
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("Accept".to_string(), "application/json".to_string()),
        ];
        let secrets = [refresh_token, client_secret];
        let (status, body) = self.post(
            self.config.token_url.trim(),
            headers,
            form.into_bytes(),
            &secrets,
        )?;
        if !(200..300).contains(&status) {
            return Err(refused(status, &body, &secrets));
        }

        let answer: Value = serde_json::from_slice(&body).map_err(|_| {
            AuthError::Malformed("the token endpoint answered with invalid JSON".to_string())
        })?;
        let access_token = answer
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                AuthError::Malformed("the token endpoint answered without access_token".to_string())
            })?;
        let expires_in = answer
            .get("expires_in")
            .and_then(|value| value.as_u64().or_else(|| value.as_str()?.parse().ok()))
            .unwrap_or(DEFAULT_EXPIRES_IN_SECONDS);
        Ok((access_token.to_string(), Duration::from_secs(expires_in)))
    }

    fn load_code_assist(&self, base_url: &str, access_token: &str) -> Result<String, AuthError> {
        let url = format!(
            "{}/v1internal:loadCodeAssist",
            base_url.trim().trim_end_matches('/')
        );
        let mut headers = AntigravityAuth::request_headers();
        headers.push((
            "Authorization".to_string(),
            format!("Bearer {access_token}"),
        ));
        headers.push(("Content-Type".to_string(), "application/json".to_string()));
        let body = format!(r#"{{"metadata":{CLIENT_METADATA}}}"#);
        let secrets = [access_token];
        let (status, answer) = self.post(&url, headers, body.into_bytes(), &secrets)?;
        if !(200..300).contains(&status) {
            return Err(refused(status, &answer, &secrets));
        }

        let answer: Value = serde_json::from_slice(&answer).map_err(|_| {
            AuthError::Malformed("loadCodeAssist answered with invalid JSON".to_string())
        })?;
        // The project comes either as a plain id or as an object with an `id`.
        let project = match answer.get("cloudaicompanionProject") {
            Some(Value::String(id)) => id.as_str(),
            Some(Value::Object(fields)) => fields.get("id").and_then(Value::as_str).unwrap_or(""),
            _ => "",
        };
        if project.is_empty() {
            return Err(AuthError::NotConfigured(
                "loadCodeAssist returned no cloudaicompanionProject for this account, \
                 so set antigravity.project in the config"
                    .to_string(),
            ));
        }
        Ok(project.to_string())
    }

    /// POSTs `body` and reads the whole answer. The call runs under its own `CallControl`: the
    /// result is shared by every caller waiting on this key, so one client going away (which
    /// cancels the relay's control) must not cancel it, and a silent endpoint must not hold the
    /// key's lock forever.
    fn post(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        secrets: &[&str],
    ) -> Result<(u16, Vec<u8>), AuthError> {
        let request = UpstreamRequest {
            method: "POST".to_string(),
            url: url.to_string(),
            headers,
            body,
            proxy: None,
            response_head_timeout: Some(CALL_TIMEOUT),
        };
        let control = CallControl::new();
        control.set_read_timeout(Some(CALL_TIMEOUT));
        let transport_error =
            |error: UpstreamError| AuthError::Transport(redact(&error.to_string(), secrets));
        with_call_control(&control, || {
            let response = self.client.send(request).map_err(transport_error)?;
            let mut answer = Vec::new();
            response
                .body
                .take(MAX_RESPONSE_BYTES)
                .read_to_end(&mut answer)
                .map_err(|error| transport_error(UpstreamError::from_io_error(&error)))?;
            Ok((response.status, answer))
        })
    }
}

impl fmt::Debug for AntigravityAuth {
    /// The config holds the client secret, so only harmless parts are shown.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("AntigravityAuth")
            .field("token_url", &self.config.token_url)
            .field("project", &self.config.project)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::NotConfigured(message) => write!(formatter, "not configured: {message}"),
            AuthError::Refused { status, message } => {
                write!(formatter, "refused with status {status}: {message}")
            }
            AuthError::Transport(message) => write!(formatter, "transport: {message}"),
            AuthError::Malformed(message) => write!(formatter, "malformed answer: {message}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// The slot for `key` in `cache`, created empty on first use. The map lock is held only for
/// the lookup, never during IO.
fn cache_slot<T: Default>(
    cache: &Mutex<HashMap<String, Arc<may::sync::Mutex<T>>>>,
    key: &str,
) -> Arc<may::sync::Mutex<T>> {
    let key_hash = sha256_hex(key.as_bytes());
    let mut slots = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(slot) = slots.get(&key_hash) {
        return slot.clone();
    }
    if slots.len() >= MAX_CACHED_KEYS {
        slots.clear();
    }
    let slot = Arc::new(may::sync::Mutex::new(T::default()));
    slots.insert(key_hash, slot.clone());
    slot
}

/// A `Refused` error from an error answer. Only the description fields of the OAuth error
/// shape (`{"error": "...", "error_description": "..."}`) or the Google API error shape
/// (`{"error": {"message": "..."}}`) are used, never the raw body, and any secret is blanked.
fn refused(status: u16, body: &[u8], secrets: &[&str]) -> AuthError {
    let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = match answer.get("error") {
        Some(Value::String(code)) => {
            match answer.get("error_description").and_then(Value::as_str) {
                Some(description) if !description.is_empty() => format!("{code}: {description}"),
                _ => code.clone(),
            }
        }
        Some(Value::Object(fields)) => fields
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    };
    let message = if message.is_empty() {
        "no error description".to_string()
    } else {
        redact(&message, secrets)
            .chars()
            .take(MAX_MESSAGE_CHARS)
            .collect()
    };
    AuthError::Refused { status, message }
}

fn redact(message: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(message.to_string(), |text, secret| {
            text.replace(secret, "[redacted]")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_reads_both_error_shapes_and_redacts_secrets() {
        let oauth =
            br#"{"error":"invalid_grant","error_description":"Token 1//secret was revoked"}"#;
        assert_eq!(
            refused(400, oauth, &["1//secret"]),
            AuthError::Refused {
                status: 400,
                message: "invalid_grant: Token [redacted] was revoked".to_string()
            }
        );
        let google =
            br#"{"error":{"code":403,"message":"Permission denied","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(
            refused(403, google, &[]),
            AuthError::Refused {
                status: 403,
                message: "Permission denied".to_string()
            }
        );
        assert_eq!(
            refused(502, b"<html>bad gateway</html>", &[]),
            AuthError::Refused {
                status: 502,
                message: "no error description".to_string()
            }
        );
    }

    #[test]
    fn display_has_short_prefixes_and_no_trailing_period() {
        let error = AuthError::Refused {
            status: 400,
            message: "invalid_grant".to_string(),
        };
        assert_eq!(error.to_string(), "refused with status 400: invalid_grant");
        assert_eq!(
            AuthError::Transport("connect: refused".to_string()).to_string(),
            "transport: connect: refused"
        );
    }

    #[test]
    fn headers_carry_the_antigravity_identity() {
        let headers = AntigravityAuth::request_headers();
        let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            ["User-Agent", "X-Goog-Api-Client", "Client-Metadata"]
        );
        assert!(headers[0].1.starts_with("antigravity/"));
        let metadata: Value = serde_json::from_str(&headers[2].1).unwrap();
        assert_eq!(metadata["pluginType"], "GEMINI");
    }
}
