//! The upstream HTTP client the relay calls: one request in, a status, headers and a streaming
//! body reader out, over ureq agents that use our may transport.
//!
//! One ureq `Agent` (and so one connection pool) exists per distinct proxy URL, created on first
//! use. Connector chain of every agent, in ureq's order:
//! `ConnectProxyConnector` (HTTP CONNECT tunnel through `http://` or `https://` proxies, reached
//! by running this same chain) → `MayConnector` (may TCP stream, directly or through SOCKS5) →
//! `TlsConnector` (https).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use ureq::http::header::{ACCEPT_ENCODING, HOST, HeaderName, HeaderValue};
use ureq::http::{self, Method, Uri};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{ConnectProxyConnector, Connector, NextTimeout};
use ureq::{Agent, AsSendBody, BodyReader, Proxy, ProxyProtocol};

use crate::upstream::control::current_call_control;
use crate::upstream::error::{UpstreamError, classify_ureq_error};
use crate::upstream::idle_pool::{IdleLimits, IdlePoolConnector};
use crate::upstream::resolver::{CachingResolver, without_user_info};
use crate::upstream::tls::{TlsConnector, client_config};
use crate::upstream::transport::MayConnector;

/// Input and output buffer size per connection. ureq's default of 128 KiB each costs about
/// 256 KiB per open stream; 16 KiB holds any SSE event we relay (design/runtime-spike.md §3).
const BUFFER_SIZE: usize = 16 * 1024;

/// How long an idle keep-alive connection may wait for its next call (ureq's default, kept). One
/// the provider closed sooner is caught by the peek when it is taken out.
const IDLE_CONNECTION_MAX_AGE: Duration = Duration::from_secs(15);

/// More distinct proxy URLs than this (config edits over a long uptime) drop all cached agents;
/// calls in flight keep their own agent alive.
const MAX_AGENTS: usize = 64;

/// How the client is set up; fixed for its lifetime.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// A PEM bundle of extra CA certificates trusted besides Mozilla's roots.
    pub extra_ca_pem_file: Option<PathBuf>,
    /// Limit for name resolution, and again for the TCP connect, proxy negotiation and TLS
    /// handshake together.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per host (per agent); the pool holds 16 times as many
    /// in total.
    pub max_idle_connections_per_host: usize,
    /// Sent as `user-agent` unless the request has its own.
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            extra_ca_pem_file: None,
            connect_timeout: Duration::from_secs(10),
            max_idle_connections_per_host: 32,
            user_agent: concat!("octopus/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// One call to an upstream provider.
#[derive(Clone)]
pub struct UpstreamRequest {
    pub method: String,
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// Sent as given (HTTP/1.1 writes names in lower case), except `content-length` and
    /// `transfer-encoding`, which ureq sets from the body. `accept-encoding: identity` is
    /// added unless present: bodies are relayed as they come, never decompressed. `host` is
    /// added from the URL unless present.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// A proxy URL: `http://`, `https://` (CONNECT), `socks5://` (target resolved here) or
    /// `socks5h://` (resolved by the proxy); user info gives credentials. `None` or empty
    /// for a direct connection.
    pub proxy: Option<String>,
    /// Limit from the end of sending the request to the end of the response head.
    pub response_head_timeout: Option<Duration>,
}

impl fmt::Debug for UpstreamRequest {
    /// Header values and the proxy URL may hold secrets, so only names and sizes are shown.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        formatter
            .debug_struct("UpstreamRequest")
            .field("method", &self.method)
            .field("header_names", &header_names)
            .field("body_bytes", &self.body.len())
            .field("has_proxy", &self.proxy.is_some())
            .field("response_head_timeout", &self.response_head_timeout)
            .finish()
    }
}

/// An upstream's answer, whatever its status.
pub struct UpstreamResponse {
    pub status: u16,
    /// As ureq read them: kept in its map rather than copied into strings, two allocations
    /// for each of the fifteen to twenty-five headers a provider sends, when the relay reads
    /// two or three of them. Read them with `header`.
    pub headers: http::HeaderMap,
    /// The body as it arrives, not buffered. Read errors carry an `UpstreamError`
    /// (`UpstreamError::from_io_error`). Reading to the end returns the connection to the pool;
    /// dropping it earlier closes the connection.
    pub body: Box<dyn Read + Send>,
}

impl fmt::Debug for UpstreamResponse {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// The most a body buffer is sized for up front from the upstream's `content-length`: a larger
/// claim still reads, growing as the bytes really arrive, so a false header cannot make the
/// gateway reserve memory it never fills.
const LARGEST_PRESIZED_BODY: usize = 1024 * 1024;

impl UpstreamResponse {
    /// The first value of the header `name` (lower case), when it is visible ASCII, as every
    /// header the relay reads (content type and length, retry-after) is.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Every header as text, in the order received (values decoded leniently), for an answer
    /// passed on whole.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), crate::util::text_lossy(value.as_bytes()).into_owned()))
            .collect()
    }

    /// An empty buffer with room for the whole body when the upstream said how long it is. Read
    /// into it, a body of known length takes one read and no regrowth; from an empty `Vec`,
    /// `read_to_end` starts with a 32-byte probe and doubles, each step one more pass through
    /// ureq's state machine.
    pub fn body_buffer(&self) -> Vec<u8> {
        match self.declared_length() {
            Some(length) => Vec::with_capacity(usize::try_from(length).unwrap_or(usize::MAX).min(LARGEST_PRESIZED_BODY)),
            None => Vec::new(),
        }
    }

    /// The body's length as the `content-length` header declares it, when it is a number. A
    /// claim only: the body read may be shorter, or cut off by the caller's own limit.
    pub fn declared_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|value| value.trim().parse().ok())
    }
}

/// The shared upstream client; clones share agents, connection pools and the DNS cache.
#[derive(Clone)]
pub struct UpstreamClient {
    shared: Arc<ClientShared>,
}

struct ClientShared {
    options: ClientOptions,
    tls_config: Arc<ClientConfig>,
    resolver: CachingResolver,
    /// The agent for direct connections, which almost every call uses: made on first use and
    /// kept for good, so a call takes it without a lock, a map lookup or a clone.
    direct_agent: OnceLock<Agent>,
    /// Agents behind a proxy, keyed by the proxy URL as given.
    agents: Mutex<HashMap<String, Agent>>,
}

impl UpstreamClient {
    /// Fails only on a bad extra CA file, with a message naming the file and the problem.
    pub fn new(options: ClientOptions) -> Result<UpstreamClient, String> {
        let tls_config = client_config(options.extra_ca_pem_file.as_deref())?;
        Ok(UpstreamClient {
            shared: Arc::new(ClientShared {
                options,
                tls_config,
                resolver: CachingResolver::default(),
                direct_agent: OnceLock::new(),
                agents: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Sends the request and returns once the response head has arrived. An upstream 4xx or
    /// 5xx is a normal response. Fails with `Cancelled` at once if the installed
    /// `CallControl` is already cancelled.
    pub fn send(&self, mut request: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        if current_call_control().is_some_and(|control| control.is_cancelled()) {
            return Err(UpstreamError::Cancelled);
        }
        let proxy_url = request.proxy.as_deref().map(str::trim).unwrap_or_default();
        let proxied_agent;
        let agent = if proxy_url.is_empty() {
            self.direct_agent()
        } else {
            proxied_agent = self.proxied_agent(proxy_url)?;
            &proxied_agent
        };
        let response = if request.body.is_empty() && !method_expects_body(&request.method) {
            run(agent, http_request(&request, ())?, request.response_head_timeout)
        } else {
            let body = std::mem::take(&mut request.body);
            run(agent, http_request(&request, body)?, request.response_head_timeout)
        }?;

        Ok(into_upstream_response(response))
    }

    /// Looks `host` up (off the coroutine's thread, through the shared cache), for callers that
    /// must see the addresses before anything connects (the media fetcher's address check).
    pub fn resolve_host(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, UpstreamError> {
        self.shared
            .resolver
            .resolve_host(host, port, self.shared.options.connect_timeout)
            .map_err(|error| classify_ureq_error(&error))
    }

    /// Sends a bodiless request to exactly the given addresses, whatever the URL's host name
    /// resolves to now: the host name only goes into the `Host` header and the TLS server name.
    /// This is how a caller that checked the addresses keeps a second DNS answer (rebinding)
    /// from sending the call elsewhere. No proxy, no redirects (a 3xx comes back as data), no
    /// pooled connection shared with other calls, and `total_timeout` covers the whole call,
    /// body included.
    pub fn send_to_addresses(
        &self,
        request: UpstreamRequest,
        addresses: Vec<SocketAddr>,
        total_timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let options = &self.shared.options;
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .input_buffer_size(BUFFER_SIZE)
            .output_buffer_size(BUFFER_SIZE)
            .max_idle_connections_per_host(0)
            .max_idle_connections(0)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_global(Some(total_timeout))
            .user_agent(options.user_agent.as_str())
            .no_delay(true)
            .build();
        let connector =
            ().chain(MayConnector)
                .chain(TlsConnector::new(self.shared.tls_config.clone()));
        let agent = Agent::with_parts(config, connector, PinnedResolver { addresses });
        let response = run(&agent, http_request(&request, ())?, request.response_head_timeout)?;
        Ok(into_upstream_response(response))
    }

    fn direct_agent(&self) -> &Agent {
        self.shared.direct_agent.get_or_init(|| build_agent(&self.shared, None))
    }

    /// The agent for a proxy URL, which is not empty.
    fn proxied_agent(&self, proxy_url: &str) -> Result<Agent, UpstreamError> {
        let mut agents = self.lock_agents();
        if let Some(agent) = agents.get(proxy_url) {
            return Ok(agent.clone());
        }
        let proxy = parse_proxy(proxy_url)?;
        if agents.len() >= MAX_AGENTS {
            agents.clear();
        }
        let agent = build_agent(&self.shared, proxy);
        agents.insert(proxy_url.to_string(), agent.clone());
        Ok(agent)
    }

    fn lock_agents(&self) -> MutexGuard<'_, HashMap<String, Agent>> {
        self.shared
            .agents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for UpstreamClient {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("UpstreamClient")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

fn into_upstream_response(response: http::Response<ureq::Body>) -> UpstreamResponse {
    let (parts, body) = response.into_parts();
    UpstreamResponse {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: Box::new(UpstreamBody {
            reader: body.into_reader(),
        }),
    }
}

/// A resolver that answers every name with addresses fixed in advance (see
/// `UpstreamClient::send_to_addresses`).
#[derive(Debug)]
struct PinnedResolver {
    addresses: Vec<SocketAddr>,
}

impl Resolver for PinnedResolver {
    fn resolve(
        &self,
        _uri: &Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut resolved = self.empty();
        for address in self.addresses.iter().take(16) {
            resolved.push(*address);
        }
        Ok(resolved)
    }
}

fn build_agent(shared: &ClientShared, proxy: Option<Proxy>) -> Agent {
    let options = &shared.options;
    let limits = IdleLimits {
        per_host: options.max_idle_connections_per_host,
        total: options.max_idle_connections_per_host.saturating_mul(16),
        max_age: IDLE_CONNECTION_MAX_AGE,
    };
    // Direct agents keep their idle connections in `IdlePoolConnector`, so ureq's own pool
    // keeps none; agents behind a proxy use ureq's (see `idle_pool` for why).
    let (ureq_pool, our_pool) = if proxy.is_none() { (None, Some(limits)) } else { (Some(limits), None) };
    let config = Agent::config_builder()
        // An upstream status is data for the relay, not an error.
        .http_status_as_error(false)
        // Redirects are not followed: a POST body would be lost, and a provider that redirects
        // is misconfigured in the channel. The 3xx comes back as a response.
        .max_redirects(0)
        .max_redirects_will_error(false)
        .input_buffer_size(BUFFER_SIZE)
        .output_buffer_size(BUFFER_SIZE)
        .max_idle_connections_per_host(ureq_pool.map_or(0, |limits| limits.per_host))
        .max_idle_connections(ureq_pool.map_or(0, |limits| limits.total))
        .max_idle_age(IDLE_CONNECTION_MAX_AGE)
        .timeout_resolve(Some(options.connect_timeout))
        .timeout_connect(Some(options.connect_timeout))
        .user_agent(options.user_agent.as_str())
        .no_delay(true)
        .proxy(proxy)
        .build();
    let connector =
        ().chain(ConnectProxyConnector::default())
            .chain(MayConnector)
            .chain(TlsConnector::new(shared.tls_config.clone()));
    match our_pool {
        Some(limits) => Agent::with_parts(config, IdlePoolConnector::new(connector, limits), shared.resolver.clone()),
        None => Agent::with_parts(config, connector, shared.resolver.clone()),
    }
}

fn parse_proxy(proxy_url: &str) -> Result<Option<Proxy>, UpstreamError> {
    if proxy_url.is_empty() {
        return Ok(None);
    }
    // The URL is never echoed: it may carry credentials.
    let proxy = Proxy::new(proxy_url)
        .map_err(|_| UpstreamError::InvalidRequest("invalid proxy url".to_string()))?;
    match proxy.protocol() {
        ProxyProtocol::Http
        | ProxyProtocol::Https
        | ProxyProtocol::Socks5
        | ProxyProtocol::Socks5h => Ok(Some(proxy)),
        _ => Err(UpstreamError::InvalidRequest(
            "unsupported proxy scheme, use http, https, socks5 or socks5h".to_string(),
        )),
    }
}

/// The http crate's request for `request`, carrying `body`. It is built in place: the crate's
/// `Builder` moves its whole parts struct through a `Result` for every header, which cost about
/// as much as the rest of the request's preparation (callgrind).
fn http_request<B>(request: &UpstreamRequest, body: B) -> Result<http::Request<B>, UpstreamError> {
    let method = Method::from_bytes(request.method.as_bytes()).map_err(|_| {
        UpstreamError::InvalidRequest(format!("invalid method {:?}", request.method))
    })?;
    // The URL is never echoed: it may carry a key in its query.
    let uri: Uri = request
        .url
        .parse()
        .map_err(|_| UpstreamError::InvalidRequest("invalid url".to_string()))?;
    // A URI has a host exactly when it has an authority; `host()` would split it to find out.
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(UpstreamError::InvalidRequest(
            "the url must be absolute http or https".to_string(),
        ));
    }

    let mut built = http::Request::new(body);
    *built.method_mut() = method;
    *built.uri_mut() = uri;
    let headers = built.headers_mut();
    headers.reserve(request.headers.len() + 1);
    let mut has_accept_encoding = false;
    let mut has_host = false;
    for (name, value) in &request.headers {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| UpstreamError::InvalidRequest(format!("invalid header name {name:?}")))?;
        // The value is never echoed: it may be a key.
        let header_value = HeaderValue::from_str(value).map_err(|_| {
            UpstreamError::InvalidRequest(format!("invalid value for header {header_name}"))
        })?;
        has_accept_encoding |= header_name == ACCEPT_ENCODING;
        has_host |= header_name == HOST;
        headers.append(header_name, header_value);
    }
    if !has_accept_encoding {
        headers.append(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    if !has_host {
        // Written here rather than left to ureq, which formats `host:port` into a new String
        // for every request to a URL with a port of its own (callgrind: about 1,200
        // instructions with the host lookup before it).
        let host = host_header_value(built.uri());
        built.headers_mut().append(HOST, host);
    }
    Ok(built)
}

/// The `Host` header for `uri`, as ureq writes it: the authority without user info, and
/// without the port when it is the scheme's default.
fn host_header_value(uri: &Uri) -> HeaderValue {
    let authority = uri.authority().map_or("", |authority| without_user_info(authority.as_str()));
    let default_port = if uri.scheme_str() == Some("https") { ":443" } else { ":80" };
    let host = authority.strip_suffix(default_port).unwrap_or(authority);
    HeaderValue::from_str(host).expect("a parsed URI's authority is a valid header value")
}

/// Whether an empty body is still sent with `content-length: 0`: yes for the methods that
/// normally carry one, so a bodiless POST is well-formed; no for GET and the like.
fn method_expects_body(method: &str) -> bool {
    ["POST", "PUT", "PATCH"]
        .iter()
        .any(|with_body| method.eq_ignore_ascii_case(with_body))
}

/// Runs `request` on `agent`, its response head limited to `response_head_timeout`.
///
/// Under a `CallControl` (every relay call) the limit is the control's response-head deadline,
/// which our transport applies to each read until `agent.run` returns with the head. ureq's own
/// per-request limit would clone the agent's whole `Config` into the request and add it to the
/// request's extensions: about 800 instructions of a pass-through request (callgrind). Calls
/// without a control (price sync, OAuth, channel tests) keep ureq's.
fn run<B: AsSendBody>(
    agent: &Agent,
    request: http::Request<B>,
    response_head_timeout: Option<Duration>,
) -> Result<http::Response<ureq::Body>, UpstreamError> {
    let Some(timeout) = response_head_timeout else {
        return agent.run(request).map_err(|error| classify_ureq_error(&error));
    };
    let Some(control) = current_call_control() else {
        let request = agent
            .configure_request(request)
            .timeout_recv_response(Some(timeout))
            .build();
        return agent.run(request).map_err(|error| classify_ureq_error(&error));
    };
    control.set_response_head_deadline(Some(Instant::now() + timeout));
    let result = agent.run(request);
    // The head is back (or the call failed): reading the body is the relay's to limit.
    control.set_response_head_deadline(None);
    result.map_err(|error| classify_ureq_error(&error))
}

/// The response body reader; turns every read error into one carrying an `UpstreamError`.
struct UpstreamBody {
    reader: BodyReader<'static>,
}

impl Read for UpstreamBody {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.reader
            .read(buffer)
            .map_err(|error| UpstreamError::from_io_error(&error).into_io_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> UpstreamRequest {
        UpstreamRequest {
            method: "POST".to_string(),
            url: "http://127.0.0.1:9/v1/chat/completions".to_string(),
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body: b"{}".to_vec(),
            proxy: None,
            response_head_timeout: None,
        }
    }

    fn built_headers(request: &UpstreamRequest) -> Vec<(String, String)> {
        let built = http_request(request, ()).unwrap();
        built
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn framing_headers_are_dropped_and_identity_encoding_added() {
        let headers = built_headers(&request(&[
            ("Authorization", "Bearer sk-1"),
            ("Content-Length", "999"),
            ("transfer-encoding", "chunked"),
        ]));
        assert_eq!(
            headers,
            vec![
                ("authorization".to_string(), "Bearer sk-1".to_string()),
                ("accept-encoding".to_string(), "identity".to_string()),
                ("host".to_string(), "127.0.0.1:9".to_string()),
            ]
        );
    }

    #[test]
    fn caller_accept_encoding_and_host_are_kept() {
        let headers = built_headers(&request(&[("Accept-Encoding", "gzip"), ("Host", "models.internal")]));
        assert_eq!(
            headers,
            vec![
                ("accept-encoding".to_string(), "gzip".to_string()),
                ("host".to_string(), "models.internal".to_string()),
            ]
        );
    }

    /// The same `Host` as ureq would write: no user info, and no port when it is the scheme's.
    #[test]
    fn the_host_header_is_written_as_ureq_writes_it() {
        for (url, expected) in [
            ("http://127.0.0.1:8080/v1", "127.0.0.1:8080"),
            ("https://api.openai.com/v1", "api.openai.com"),
            ("https://api.openai.com:443/v1", "api.openai.com"),
            ("http://example.com:80/", "example.com"),
            ("https://example.com:80/", "example.com:80"),
            ("http://example.com:8080/", "example.com:8080"),
            ("http://user:secret@example.com:81/", "example.com:81"),
            ("http://[::1]:9000/x", "[::1]:9000"),
            ("https://[2001:db8::1]/x", "[2001:db8::1]"),
        ] {
            let mut sent = request(&[]);
            sent.url = url.to_string();
            let host: Vec<String> =
                built_headers(&sent).into_iter().filter(|(name, _)| name == "host").map(|(_, value)| value).collect();
            assert_eq!(host, vec![expected.to_string()], "{url}");
        }
    }

    #[test]
    fn invalid_parts_are_invalid_requests_without_secrets() {
        let bad_value = request(&[("authorization", "Bearer sk-secret\n")]);
        let error = http_request(&bad_value, ()).unwrap_err();
        assert_eq!(
            error,
            UpstreamError::InvalidRequest("invalid value for header authorization".to_string())
        );

        let mut bad_url = request(&[]);
        bad_url.url = "ftp://example.com/?key=secret".to_string();
        let error = http_request(&bad_url, ()).unwrap_err();
        assert!(!error.to_string().contains("secret"));

        let mut bad_method = request(&[]);
        bad_method.method = "PO ST".to_string();
        assert!(matches!(
            http_request(&bad_method, ()),
            Err(UpstreamError::InvalidRequest(_))
        ));
    }

    #[test]
    fn proxy_urls_are_checked_without_echoing_them() {
        assert!(parse_proxy("").unwrap().is_none());
        for accepted in [
            "http://127.0.0.1:3128",
            "https://proxy:443",
            "socks5://user:pw@127.0.0.1:1080",
            "socks5h://h:1",
        ] {
            assert!(parse_proxy(accepted).unwrap().is_some(), "{accepted}");
        }
        let error = parse_proxy("socks4://user:secret@127.0.0.1:1080").unwrap_err();
        assert!(matches!(&error, UpstreamError::InvalidRequest(_)));
        assert!(!error.to_string().contains("secret"));
    }

    #[test]
    fn request_debug_hides_header_values() {
        let shown = format!("{:?}", request(&[("authorization", "Bearer sk-secret")]));
        assert!(shown.contains("authorization"));
        assert!(!shown.contains("sk-secret"));
    }

    #[test]
    fn the_body_buffer_is_sized_from_a_believable_content_length_only() {
        let response = |headers: &[(&'static str, &'static str)]| UpstreamResponse {
            status: 200,
            headers: headers.iter().map(|(name, value)| (http::HeaderName::from_static(name), http::HeaderValue::from_static(value))).collect(),
            body: Box::new(io::empty()),
        };
        assert!(response(&[("content-type", "application/json"), ("content-length", "612")]).body_buffer().capacity() >= 612);
        assert_eq!(response(&[("content-length", "99999999999")]).body_buffer().capacity(), LARGEST_PRESIZED_BODY);
        assert_eq!(response(&[("content-length", "twelve")]).body_buffer().capacity(), 0);
        assert_eq!(response(&[("transfer-encoding", "chunked")]).body_buffer().capacity(), 0);
    }
}
