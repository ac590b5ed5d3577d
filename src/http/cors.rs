//! Cross-origin rules for browsers: which web pages may call the relay, read from the runtime
//! setting `cors_allowed_origins` (empty by default, so every cross-origin browser call is
//! refused). Pure: the gateway's handler asks these functions and adds what they return.
//!
//! Only the relay endpoints (`/v1/...`, `/v1beta/...`) can be opened to other origins. They
//! authenticate with a client key that the page itself must send, never with a cookie, so an
//! allowed page can do nothing it could not do with the key anyway. The admin API and the panel
//! never answer cross-origin: the panel is served from the same origin as the API, and a
//! session token is worth every provider key, so no page elsewhere gets to talk to it.

use crate::http::{Body, Request, Response};

/// Checks and normalises the setting's text: origins separated by commas or white space, each
/// `*` or `http(s)://host[:port]` without a path. Returns them joined by ", ", or a message
/// naming the first bad entry.
pub fn normalize_allowed_origins(text: &str) -> Result<String, String> {
    let mut origins: Vec<String> = Vec::new();
    for entry in text.split(|character: char| character == ',' || character.is_whitespace()) {
        if entry.is_empty() {
            continue;
        }
        let origin = normalize_origin(entry)?;
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    Ok(origins.join(", "))
}

fn normalize_origin(entry: &str) -> Result<String, String> {
    if entry == "*" {
        return Ok(entry.to_string());
    }
    let entry = entry.trim_end_matches('/');
    let lower = entry.to_ascii_lowercase();
    let host_and_port = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("the origin {entry:?} must start with http:// or https:// (or be *)")
        })?;
    let well_formed = !host_and_port.is_empty()
        && host_and_port
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "-.:[]".contains(character));
    if !well_formed {
        return Err(format!(
            "the origin {entry:?} must be a scheme, a host and an optional port, without a path"
        ));
    }
    Ok(lower)
}

/// Whether `origin` (the request's `Origin` header) is in the normalised allow-list.
pub fn origin_allowed(origin: &str, allowed_origins: &str) -> bool {
    if origin.is_empty() || origin == "null" {
        return false;
    }
    allowed_origins
        .split(", ")
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
}

/// Whether a path belongs to the relay, the only part that can be opened to other origins.
pub fn is_relay_path(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/v1beta/")
}

/// Whether the request is a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`).
pub fn is_preflight(request: &Request) -> bool {
    request.method == "OPTIONS" && request.header("access-control-request-method").is_some()
}

/// The answer to an allowed preflight: the methods the relay serves and the headers the page
/// asked for (SDKs send their own, such as `x-stainless-os` or `anthropic-version`; none of them
/// is a credential the browser adds by itself, so echoing them opens nothing).
pub fn allowed_preflight_response(request: &Request, origin: &str) -> Response {
    let mut response = Response {
        status: 204,
        headers: Vec::new(),
        body: Body::Bytes(Vec::new()),
    }
    .with_header("access-control-allow-origin", origin)
    .with_header("access-control-allow-methods", "GET, POST, DELETE")
    .with_header("access-control-max-age", "600")
    .with_header("vary", "origin, access-control-request-headers");
    if let Some(requested) = request.header("access-control-request-headers")
        && requested.split(',').all(|name| is_header_name(name.trim()))
    {
        response = response.with_header("access-control-allow-headers", requested);
    }
    response
}

/// Adds the headers that let an allowed page read a relay answer (and the rate-limit wait).
pub fn with_allowed_origin(response: Response, origin: &str) -> Response {
    response
        .with_header("access-control-allow-origin", origin)
        .with_header("access-control-expose-headers", "retry-after")
        .with_header("vary", "origin")
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_is_normalised_and_checked() {
        assert_eq!(normalize_allowed_origins("").unwrap(), "");
        assert_eq!(
            normalize_allowed_origins(
                " https://Chat.Example.com/, http://localhost:3000\nhttps://chat.example.com"
            )
            .unwrap(),
            "https://chat.example.com, http://localhost:3000"
        );
        assert_eq!(normalize_allowed_origins("*").unwrap(), "*");
        for bad in [
            "chat.example.com",
            "ftp://x",
            "https://x/path",
            "https://",
            "https://a b",
        ] {
            let error = normalize_allowed_origins(bad).unwrap_err();
            assert!(error.contains("origin"), "{bad}: {error}");
        }
    }

    #[test]
    fn origins_match_exactly_and_star_matches_any_real_origin() {
        let allowed =
            normalize_allowed_origins("https://chat.example.com, http://localhost:3000").unwrap();
        assert!(origin_allowed("https://chat.example.com", &allowed));
        assert!(origin_allowed("HTTPS://CHAT.EXAMPLE.COM", &allowed));
        assert!(origin_allowed("http://localhost:3000", &allowed));
        assert!(!origin_allowed("http://localhost:3001", &allowed));
        assert!(!origin_allowed(
            "https://chat.example.com.evil.test",
            &allowed
        ));
        assert!(
            !origin_allowed("https://chat.example.com", ""),
            "the default allows nobody"
        );
        assert!(origin_allowed("https://any.example", "*"));
        assert!(
            !origin_allowed("null", "*"),
            "sandboxed and file pages send null"
        );
    }

    #[test]
    fn only_relay_paths_can_be_opened() {
        assert!(is_relay_path("/v1/chat/completions"));
        assert!(is_relay_path("/v1beta/models/g:generateContent"));
        assert!(!is_relay_path("/api/v1/channels"));
        assert!(!is_relay_path("/"));
        assert!(!is_relay_path("/v1"));
    }

    #[test]
    fn requested_headers_are_echoed_only_when_they_are_header_names() {
        assert!(is_header_name("x-stainless-os"));
        assert!(is_header_name("Authorization"));
        assert!(!is_header_name("bad header"));
        assert!(!is_header_name(""));
    }
}
