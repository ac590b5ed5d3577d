//! The reverse proxy for Amp's management calls: any method, the body as sent, the client's
//! credentials replaced by the Amp key, and the answer streamed back as it arrives.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::amp::key::AmpKeySource;
use crate::amp::{is_loopback, may_use_management};
use crate::config::AmpcodeConfig;
use crate::http::{Body, Request, Response};
use crate::relay::{client_auth, RelayState};
use crate::upstream::client::UpstreamRequest;
use crate::upstream::control::{with_call_control, CallControl};

/// Bytes read from the upstream per chunk sent to the client. Each read returns what has
/// arrived so far (up to this much), so server-sent events still go out one by one.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Headers never forwarded upstream. Hop-by-hop headers (RFC 9110 §7.6.1) describe one
/// connection, not the message; `host` and the framing headers are set again by the upstream
/// client; the credential headers and cookies carry the gateway client's identity, which must
/// not reach Amp (the injected key is the one identity Amp sees); and the forwarding headers
/// would leak the addresses of the gateway's network.
const REQUEST_HEADERS_DROPPED: [&str; 18] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "cookie",
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
];

/// Headers of Amp's answer not passed back: hop-by-hop ones, the framing our server sets itself,
/// and cookies, since the gateway's origin is not Amp's and the client's cookies are not forwarded.
const RESPONSE_HEADERS_DROPPED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "set-cookie",
    "alt-svc",
];

/// The Amp proxy's settings and key, built once at start.
pub struct AmpProxy {
    pub config: AmpcodeConfig,
    keys: AmpKeySource,
}

impl AmpProxy {
    pub fn new(config: AmpcodeConfig) -> AmpProxy {
        AmpProxy { keys: AmpKeySource::new(&config.upstream_api_key, &config.upstream_url), config }
    }

    /// Checks who is calling, then forwards the request to Amp and streams the answer back.
    pub fn handle(&self, relay: &Arc<RelayState>, request: Request) -> Response {
        let has_valid_client_key = client_auth::authenticate(&relay.snapshot.current(), &request, crate::util::unix_seconds()).is_ok();
        let peer_is_loopback = is_loopback(request.peer.ip());
        if !may_use_management(peer_is_loopback, has_valid_client_key, self.config.restrict_management_to_localhost) {
            let message = if self.config.restrict_management_to_localhost {
                "the Amp management routes need a valid client key (Authorization: Bearer, x-api-key, x-goog-api-key or ?key=) or a loopback peer"
            } else {
                "the Amp management routes need a valid client key (Authorization: Bearer, x-api-key, x-goog-api-key or ?key=)"
            };
            return Response::json(401, &json!({"error": {"message": message, "type": "authentication_error"}}));
        }
        let Some(amp_key) = self.keys.current() else {
            return Response::json(
                503,
                &json!({"error": {
                    "message": "no Amp API key: set ampcode.upstream_api_key, or AMP_API_KEY for the gateway, or run `amp login` as the gateway's user",
                    "type": "amp_key_missing"
                }}),
            );
        };
        let upstream_request = UpstreamRequest {
            method: request.method.clone(),
            url: upstream_url(&self.config.upstream_url, &request.path, &request.query),
            headers: forwarded_headers(&request.headers, &amp_key),
            body: request.body,
            proxy: None,
            response_head_timeout: Some(Duration::from_secs(relay.config.relay.first_byte_timeout_seconds)),
        };
        let control = CallControl::new();
        control.set_read_timeout(Some(Duration::from_secs(relay.config.relay.stream_idle_timeout_seconds)));
        let sent = with_call_control(&control, || relay.upstream.send(upstream_request));
        let upstream_response = match sent {
            Ok(upstream_response) => upstream_response,
            Err(error) => {
                log::warn!("Amp upstream call {} {} failed: {error}", request.method, request.path);
                return Response::json(502, &json!({"error": {"message": format!("the Amp upstream could not be reached: {error}"), "type": "upstream_error"}}));
            }
        };
        let headers: Vec<(String, String)> =
            upstream_response.header_pairs().into_iter().filter(|(name, _)| !RESPONSE_HEADERS_DROPPED.contains(&name.as_str())).collect();
        let status = upstream_response.status;
        if request.method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 || (100..200).contains(&status) {
            // These answers have no body, so there is nothing to stream (and a chunked body
            // would be a framing error for them).
            return Response { status, headers, body: Body::Bytes(Vec::new()) };
        }
        let mut body = upstream_response.body;
        let method = request.method;
        let path = request.path;
        let writer = move |sink: &mut dyn crate::http::StreamWriter| -> std::io::Result<()> {
            with_call_control(&control, || {
                let mut buffer = vec![0u8; READ_BUFFER_BYTES];
                loop {
                    let read = match body.read(&mut buffer) {
                        Ok(0) => return Ok(()),
                        Ok(read) => read,
                        Err(error) => {
                            log::warn!("Amp upstream answer to {method} {path} broke off: {error}");
                            return Err(error);
                        }
                    };
                    sink.write_chunk(&buffer[..read])?;
                }
            })
        };
        Response { status, headers, body: Body::Stream(Box::new(writer)) }
    }
}

/// The upstream URL for a management path, without any `key` query parameter (a client key
/// sent that way must not reach Amp either).
pub fn upstream_url(base_url: &str, path: &str, query: &str) -> String {
    let kept: Vec<&str> = query.split('&').filter(|pair| !pair.is_empty() && pair.split('=').next() != Some("key")).collect();
    let base = base_url.trim().trim_end_matches('/');
    if kept.is_empty() { format!("{base}{path}") } else { format!("{base}{path}?{}", kept.join("&")) }
}

/// The client's headers minus hop-by-hop, credential and forwarding headers (and any header the
/// client's `Connection` names), plus `Authorization: Bearer <amp key>`.
pub fn forwarded_headers(client_headers: &[(String, String)], amp_key: &str) -> Vec<(String, String)> {
    let named_by_connection: Vec<String> = client_headers
        .iter()
        .filter(|(name, _)| name == "connection")
        .flat_map(|(_, value)| value.split(',').map(|token| token.trim().to_ascii_lowercase()))
        .collect();
    let mut headers: Vec<(String, String)> = client_headers
        .iter()
        .filter(|(name, _)| !REQUEST_HEADERS_DROPPED.contains(&name.as_str()) && !named_by_connection.contains(name))
        .cloned()
        .collect();
    headers.push(("authorization".to_string(), format!("Bearer {amp_key}")));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    #[test]
    fn client_credentials_and_hop_by_hop_headers_are_replaced() {
        let client = pairs(&[
            ("host", "gateway:8080"),
            ("authorization", "Bearer sk-octopus-client"),
            ("x-api-key", "sk-octopus-client"),
            ("cookie", "session=1"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("content-length", "12"),
            ("content-type", "application/json"),
            ("x-amp-thread-id", "T-1"),
        ]);
        let forwarded = forwarded_headers(&client, "sgamp_secret");
        assert_eq!(
            forwarded,
            pairs(&[("content-type", "application/json"), ("x-amp-thread-id", "T-1"), ("authorization", "Bearer sgamp_secret")])
        );
    }

    #[test]
    fn the_url_keeps_the_query_but_not_a_client_key() {
        assert_eq!(upstream_url("https://ampcode.com/", "/api/internal", "getUserInfo"), "https://ampcode.com/api/internal?getUserInfo");
        assert_eq!(upstream_url("https://ampcode.com", "/api/threads", "key=sk-octopus-x&limit=5"), "https://ampcode.com/api/threads?limit=5");
        assert_eq!(upstream_url("https://ampcode.com", "/settings", ""), "https://ampcode.com/settings");
    }
}
