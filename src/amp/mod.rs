//! The Amp CLI proxy: which paths belong to Amp, who may use them, and the route decision.
//!
//! Amp (`AMP_URL=http://HOST:8080`) sends two kinds of calls to one base URL. Its model calls,
//! `/api/provider/{openai,anthropic,google}/...`, are ordinary OpenAI, Anthropic and Gemini
//! requests: they are rewritten to the matching `/v1...` path and served by the normal relay,
//! with client-key auth and statistics like any other relay request. Everything else Amp needs
//! (threads, user info, telemetry, login pages) lives on ampcode.com: those management paths are
//! reverse-proxied by `proxy.rs` with the Amp key from `key.rs` in place of the client's
//! credentials. The original Go fork left management open to anyone who could reach the port;
//! here it needs a valid client key or, when `restrict_management_to_localhost` is true, a
//! loopback peer (`may_use_management`).

pub mod key;
pub mod proxy;

use std::net::IpAddr;

/// The providers Amp calls through `/api/provider/{provider}/...`.
const PROVIDERS: [&str; 3] = ["openai", "anthropic", "google"];

/// The `/api/` subtrees Amp's management calls use. None of them is `/api/v1`, the admin API.
const MANAGEMENT_API_SUBTREES: [&str; 8] = ["internal", "user", "auth", "meta", "threads", "telemetry", "otel", "tab"];

/// The root subtrees Amp serves pages under. The panel lives at `/` and routes on the client with
/// `#` fragments, so with Amp enabled these four prefixes belong to Amp; with it disabled they
/// fall through to the panel as before.
const MANAGEMENT_ROOT_SUBTREES: [&str; 4] = ["threads", "auth", "docs", "settings"];

/// Where an Amp path goes.
#[derive(Debug, PartialEq, Eq)]
pub enum AmpRoute {
    /// A model call: serve it as the relay path given (e.g. `/v1/messages`).
    Provider { relay_path: String },
    /// A management call: reverse-proxy it to the Amp upstream.
    Management,
}

/// Classifies a request path. Provider paths are recognised whether or not Amp is enabled,
/// because they are plain relay calls guarded by client keys; management paths only when it is.
pub fn route(path: &str, amp_enabled: bool) -> Option<AmpRoute> {
    if let Some(rest) = path.strip_prefix("/api/provider/") {
        let (provider, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if !PROVIDERS.contains(&provider) {
            return None;
        }
        let tail = format!("/{tail}");
        // The SDKs inside Amp use base URLs that either end in the API version (OpenAI's
        // `.../openai/v1`) or not (Anthropic's and Google's), so both shapes map to our paths.
        let relay_path = if ["/v1/", "/v1beta/", "/v1alpha/"].iter().any(|version| tail.starts_with(version)) {
            tail
        } else {
            format!("/v1{tail}")
        };
        return Some(AmpRoute::Provider { relay_path });
    }
    if !amp_enabled {
        return None;
    }
    let in_subtree = |rest: &str, names: &[&str]| {
        let first = rest.split('/').next().unwrap_or("");
        names.contains(&first)
    };
    if let Some(rest) = path.strip_prefix("/api/") {
        return in_subtree(rest, &MANAGEMENT_API_SUBTREES).then_some(AmpRoute::Management);
    }
    let rest = path.strip_prefix('/')?;
    in_subtree(rest, &MANAGEMENT_ROOT_SUBTREES).then_some(AmpRoute::Management)
}

/// Whether a management call may go through. A valid client key always suffices. Without one,
/// only a loopback peer may, and only while `restrict_to_localhost` is true (the default); set
/// it to false when a reverse proxy on the same host makes every peer look local.
pub fn may_use_management(peer_is_loopback: bool, has_valid_client_key: bool, restrict_to_localhost: bool) -> bool {
    has_valid_client_key || (restrict_to_localhost && peer_is_loopback)
}

/// True for 127.0.0.0/8, ::1 and their IPv4-mapped IPv6 forms.
pub fn is_loopback(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(path: &str) -> Option<String> {
        match route(path, false) {
            Some(AmpRoute::Provider { relay_path }) => Some(relay_path),
            _ => None,
        }
    }

    #[test]
    fn provider_paths_map_to_relay_paths() {
        assert_eq!(provider("/api/provider/openai/v1/chat/completions").as_deref(), Some("/v1/chat/completions"));
        assert_eq!(provider("/api/provider/openai/v1/responses").as_deref(), Some("/v1/responses"));
        assert_eq!(provider("/api/provider/openai/chat/completions").as_deref(), Some("/v1/chat/completions"));
        assert_eq!(provider("/api/provider/anthropic/v1/messages").as_deref(), Some("/v1/messages"));
        assert_eq!(provider("/api/provider/anthropic/v1/messages/count_tokens").as_deref(), Some("/v1/messages/count_tokens"));
        assert_eq!(
            provider("/api/provider/google/v1beta/models/gemini-pro:streamGenerateContent").as_deref(),
            Some("/v1beta/models/gemini-pro:streamGenerateContent")
        );
        assert_eq!(provider("/api/provider/mistral/v1/chat/completions"), None);
    }

    #[test]
    fn management_paths_only_when_enabled_and_never_the_admin_api() {
        let managed = [
            "/api/internal",
            "/api/internal/x",
            "/api/user",
            "/api/auth/cli-login",
            "/api/meta",
            "/api/threads/T-1",
            "/api/telemetry",
            "/api/otel/v1/traces",
            "/api/tab/llm-proxy",
            "/threads",
            "/threads/T-1",
            "/auth",
            "/auth/cli-login",
            "/docs",
            "/settings",
            "/settings/profile",
        ];
        for path in managed {
            assert_eq!(route(path, true), Some(AmpRoute::Management), "{path}");
            assert_eq!(route(path, false), None, "{path}");
        }
        for path in ["/api/v1/settings", "/api/v1/auth/login", "/api/v1/stats/summary", "/", "/index.html", "/settingsx", "/api/internals", "/healthz", "/v1/models"] {
            assert_eq!(route(path, true), None, "{path}");
        }
    }

    #[test]
    fn management_needs_a_client_key_or_an_allowed_loopback_peer() {
        // (peer_is_loopback, has_valid_client_key, restrict_to_localhost) -> allowed
        let table = [
            (false, false, true, false),
            (false, false, false, false),
            (true, false, true, true),
            (true, false, false, false),
            (false, true, true, true),
            (false, true, false, true),
            (true, true, true, true),
            (true, true, false, true),
        ];
        for (loopback, key, restrict, allowed) in table {
            assert_eq!(may_use_management(loopback, key, restrict), allowed, "loopback={loopback} key={key} restrict={restrict}");
        }
    }

    #[test]
    fn loopback_includes_ipv4_mapped_addresses() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.8.9.10".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:192.168.1.2".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
    }
}
