//! Security headers on every answer of the panel and the admin API: what the page may load, that
//! no other site may frame it, that browsers must not guess content types, and that URLs (which
//! may carry `?token=`) never leak in a Referer.

use crate::http::Response;

/// The panel's policy. The panel is ES modules, a stylesheet and one classic script, all served
/// from the gateway itself (`vendor-ui/`, no inline script or style element), and it talks only
/// to `/api/v1`. Preact sets styles through the CSSOM, which `style-src 'self'` allows. The
/// favicon is a `data:` SVG. `frame-ancestors 'none'` is the modern form of `X-Frame-Options`.
pub const PANEL_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

/// The API's policy: a JSON answer opened in a tab may run and load nothing, nor be framed.
pub const API_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";

/// Adds the headers for a panel file.
pub fn for_panel(response: Response) -> Response {
    with_common(response).with_header("content-security-policy", PANEL_CONTENT_SECURITY_POLICY)
}

/// Adds the headers for an admin API answer. Answers carry tokens, keys and statistics, so no
/// cache (the browser's or a proxy's) may keep them.
pub fn for_api(response: Response) -> Response {
    let has_cache_control = response
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("cache-control"));
    let response =
        with_common(response).with_header("content-security-policy", API_CONTENT_SECURITY_POLICY);
    if has_cache_control {
        response
    } else {
        response.with_header("cache-control", "no-store")
    }
}

fn with_common(response: Response) -> Response {
    response
        .with_header("x-content-type-options", "nosniff")
        .with_header("x-frame-options", "DENY")
        .with_header("referrer-policy", "no-referrer")
        .with_header("cross-origin-opener-policy", "same-origin")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
        response
            .headers
            .iter()
            .find(|(header_name, _)| header_name == name)
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn api_answers_are_not_cached_unless_they_say_otherwise() {
        let plain = for_api(Response::json(200, &serde_json::json!({})));
        assert_eq!(header(&plain, "cache-control"), Some("no-store"));
        assert_eq!(header(&plain, "x-frame-options"), Some("DENY"));
        let cached = for_api(
            Response::json(200, &serde_json::json!({})).with_header("cache-control", "max-age=60"),
        );
        assert_eq!(
            cached
                .headers
                .iter()
                .filter(|(name, _)| name == "cache-control")
                .count(),
            1
        );
    }

    #[test]
    fn the_panel_policy_allows_only_its_own_origin_and_no_framing() {
        let panel = for_panel(Response::bytes(200, "text/html", Vec::new()));
        let policy = header(&panel, "content-security-policy").unwrap();
        assert!(policy.contains("script-src 'self';"));
        assert!(!policy.contains("unsafe"));
        assert!(policy.contains("frame-ancestors 'none'"));
        assert_eq!(header(&panel, "x-content-type-options"), Some("nosniff"));
    }
}
