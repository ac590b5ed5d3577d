//! The mock upstream: a zero-delay LLM provider on 127.0.0.1 speaking OpenAI Chat Completions,
//! Anthropic Messages and Gemini generateContent, whole or as paced SSE streams.
//!
//! One std thread per connection keeps it simple and predictable; the thread count is bounded by
//! the bench's own concurrency (at most a few thousand held streams). Every answer is written
//! with one `write` per frame over a TCP_NODELAY socket, so any coalescing or stall seen through
//! the gateway is the gateway's.
//!
//! `MockUpstream::start_tls` serves the same answers over TLS (rustls, the repository's test
//! certificate for 127.0.0.1), for what a TLS session costs the gateway per held stream.
//!
//! Stream shape comes from the model name: `stream-64x20` means 64 content deltas 20 ms apart.
//! Deltas are paced against deadlines measured from the stream's start, not by sleeping a fixed
//! gap after each write, so scheduling jitter never accumulates into a slower stream.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde_json::Value;

use crate::wire::{BufferedSocket, LAST_CHUNK, chunk_frame};

/// The standard library listens with a backlog of 128; a burst of 1,000 stream connections
/// through the gateway would then wait on SYN retransmits.
const LISTEN_BACKLOG: libc::c_int = 1024;
/// Connection threads only parse small heads and JSON bodies; a small stack keeps 2,000 of
/// them cheap.
const CONNECTION_THREAD_STACK_BYTES: usize = 256 * 1024;
/// A keep-alive connection idle this long is closed, so no thread waits forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A write that makes no progress for this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REQUEST_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Bounds on the stream shape a model name may ask for, so a typo cannot start an endless stream.
const MAX_STREAM_DELTAS: u32 = 100_000;
const MAX_STREAM_GAP_MS: u64 = 10_000;
/// The shape used when a stream is requested with a model name that does not encode one.
const DEFAULT_STREAM_DELTAS: u32 = 8;
/// Token counts the canned answers report, so gateways have a realistic usage object to bill.
const PROMPT_TOKENS: u32 = 19;
const CANNED_COMPLETION_TOKENS: u32 = 14;
pub const CANNED_TEXT: &str = "Hello! This is a canned reply from the octopus benchmark mock.";

/// A running mock upstream. Dropping it stops the accept loop; connection threads end on their
/// own at their next read timeout, write error or stream end.
pub struct MockUpstream {
    address: SocketAddr,
    shared: Arc<SharedState>,
    accept_thread: Option<JoinHandle<()>>,
}

struct SharedState {
    stopping: AtomicBool,
    open_streams: AtomicUsize,
    accepted_connections: AtomicUsize,
    /// Generate requests answered with 200, whole or streamed, indexed by `Dialect as usize`.
    answered_by_dialect: [AtomicUsize; 3],
}

impl MockUpstream {
    /// Binds 127.0.0.1 on a free port and starts accepting plain HTTP.
    pub fn start() -> io::Result<MockUpstream> {
        MockUpstream::start_serving(None)
    }

    /// Like `start`, over TLS with the test certificate (`tests/fixtures/tls`, SAN 127.0.0.1),
    /// which a gateway trusts through `relay.extra_ca_file` = `TEST_CA_FILE`.
    pub fn start_tls() -> io::Result<MockUpstream> {
        MockUpstream::start_serving(Some(test_certificate_config()?))
    }

    fn start_serving(tls: Option<Arc<ServerConfig>>) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // SAFETY: the descriptor belongs to `listener`, which is bound and listening; calling
        // listen() again on Linux only raises the backlog.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let address = listener.local_addr()?;
        let shared = Arc::new(SharedState {
            stopping: AtomicBool::new(false),
            open_streams: AtomicUsize::new(0),
            accepted_connections: AtomicUsize::new(0),
            answered_by_dialect: Default::default(),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = std::thread::Builder::new()
            .name("mock-accept".to_string())
            .spawn(move || accept_connections(listener, accept_shared, tls))?;
        Ok(MockUpstream {
            address,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// How many SSE streams are being written right now; used to check that the gateway
    /// closes its upstream streams when its clients go away.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::Relaxed)
    }

    /// How many connections the mock has accepted so far; a gateway that reuses its upstream
    /// connections opens about as many as its peak concurrency, not one per request.
    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted_connections.load(Ordering::Relaxed)
    }

    /// How many generate requests in `dialect` the mock has answered with 200 so far; the
    /// conversion lanes use it to check that the gateway called the upstream they meant.
    pub fn answered_requests(&self, dialect: Dialect) -> usize {
        self.shared.answered_by_dialect[dialect as usize].load(Ordering::Relaxed)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        // The accept loop is blocked in accept(); one connection wakes it to see the flag.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_connections(listener: TcpListener, shared: Arc<SharedState>, tls: Option<Arc<ServerConfig>>) {
    for incoming in listener.incoming() {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let stream = match incoming {
            Ok(stream) => {
                shared.accepted_connections.fetch_add(1, Ordering::Relaxed);
                stream
            }
            Err(error) => {
                // Usually EMFILE under the held-streams phase; back off instead of spinning.
                eprintln!("mock upstream: accept failed: {error}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let connection_shared = Arc::clone(&shared);
        let connection_tls = tls.clone();
        let spawned = std::thread::Builder::new()
            .name("mock-conn".to_string())
            .stack_size(CONNECTION_THREAD_STACK_BYTES)
            .spawn(move || serve_connection(stream, connection_tls, &connection_shared));
        if let Err(error) = spawned {
            eprintln!("mock upstream: cannot start a connection thread: {error}");
        }
    }
}

fn serve_connection(stream: TcpStream, tls: Option<Arc<ServerConfig>>, shared: &SharedState) {
    let configured = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(IDLE_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)));
    if configured.is_err() {
        return;
    }
    match tls {
        // The handshake runs inside the first read of the request head.
        Some(config) => match ServerConnection::new(config) {
            Ok(session) => serve_messages(BufferedSocket::new(StreamOwned::new(session, stream)), shared),
            Err(error) => eprintln!("mock upstream: cannot start a TLS session: {error}"),
        },
        None => serve_messages(BufferedSocket::new(stream), shared),
    }
}

/// The test server certificate and key, read from the repository's TLS fixtures.
fn test_certificate_config() -> io::Result<Arc<ServerConfig>> {
    let invalid = |error: String| io::Error::new(io::ErrorKind::InvalidData, error);
    let certificate = CertificateDer::from_pem_file(format!("{TLS_FIXTURES}/server.pem"))
        .map_err(|error| invalid(format!("{TLS_FIXTURES}/server.pem: {error}")))?;
    let key = PrivateKeyDer::from_pem_file(format!("{TLS_FIXTURES}/server.key"))
        .map_err(|error| invalid(format!("{TLS_FIXTURES}/server.key: {error}")))?;
    // The gateway's own provider (its src/upstream/tls.rs says why ring's is kept).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(vec![certificate], key))
        .map_err(|error| invalid(format!("TLS server setup failed: {error}")))?;
    Ok(Arc::new(config))
}

/// The repository's test certificates, for a bench built in this checkout.
const TLS_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tls");
/// The CA that signed the TLS mock's certificate, for the gateway's `relay.extra_ca_file`.
pub const TEST_CA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tls/ca.pem");

fn serve_messages<S: Read + Write>(mut socket: BufferedSocket<S>, shared: &SharedState) {
    loop {
        let Ok(Some(head)) = socket.read_head() else {
            return;
        };
        let Ok(body) = socket.read_body_to_vec(head.request_framing(), MAX_REQUEST_BODY_BYTES)
        else {
            return;
        };
        let reply = route(&head.start_line, &body);
        if let Some(dialect) = reply.answered_dialect() {
            shared.answered_by_dialect[dialect as usize].fetch_add(1, Ordering::Relaxed);
        }
        let written = match reply {
            Reply::Whole { status, body, .. } => {
                write_whole(&mut socket, status, &body, head.connection_close)
            }
            Reply::Stream(plan) => write_stream(&mut socket, &plan, shared),
        };
        if written.is_err() || head.connection_close || shared.stopping.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// The wire format of a request and its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAiChat,
    Anthropic,
    Gemini,
}

enum Reply {
    Whole {
        status: u16,
        body: String,
        /// The dialect of a generate answer; None for errors and the models list.
        dialect: Option<Dialect>,
    },
    Stream(StreamPlan),
}

impl Reply {
    /// The dialect of a successful generate answer, whole or streamed.
    fn answered_dialect(&self) -> Option<Dialect> {
        match self {
            Reply::Whole { dialect, .. } => *dialect,
            Reply::Stream(plan) => Some(plan.dialect),
        }
    }
}

struct StreamPlan {
    dialect: Dialect,
    model: String,
    delta_count: u32,
    gap: Duration,
}

fn route(start_line: &str, body: &[u8]) -> Reply {
    let mut words = start_line.split(' ');
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", "/v1/models") => Reply::Whole {
            status: 200,
            body: models_list(),
            dialect: None,
        },
        ("POST", "/v1/chat/completions") => answer_json_request(Dialect::OpenAiChat, body),
        ("POST", "/v1/messages") => answer_json_request(Dialect::Anthropic, body),
        ("POST", gemini_path) if gemini_path.starts_with("/v1beta/models/") => {
            answer_gemini(gemini_path, query)
        }
        _ => error_reply(404, "no such route on the benchmark mock"),
    }
}

/// OpenAI and Anthropic carry the model and the stream flag in the body.
fn answer_json_request(dialect: Dialect, body: &[u8]) -> Reply {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error_reply(400, "request body is not JSON");
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return error_reply(400, "request has no model");
    };
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        return Reply::Stream(stream_plan(dialect, model));
    }
    Reply::Whole {
        status: 200,
        body: whole_answer(dialect, model),
        dialect: Some(dialect),
    }
}

/// Gemini carries the model and the method in the path: `/v1beta/models/{m}:generateContent`.
fn answer_gemini(path: &str, query: &str) -> Reply {
    let model_and_method = &path["/v1beta/models/".len()..];
    let Some((model, method)) = model_and_method.rsplit_once(':') else {
        return error_reply(404, "expected /v1beta/models/{model}:{method}");
    };
    match method {
        "generateContent" => Reply::Whole {
            status: 200,
            body: whole_answer(Dialect::Gemini, model),
            dialect: Some(Dialect::Gemini),
        },
        // Without alt=sse Gemini streams a JSON array; gateways always ask for SSE.
        "streamGenerateContent" if query.split('&').any(|pair| pair == "alt=sse") => {
            Reply::Stream(stream_plan(Dialect::Gemini, model))
        }
        _ => error_reply(400, "unsupported Gemini method (streams need alt=sse)"),
    }
}

fn error_reply(status: u16, message: &str) -> Reply {
    let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error"}});
    Reply::Whole {
        status,
        body: body.to_string(),
        dialect: None,
    }
}

fn models_list() -> String {
    let ids = ["bench-upstream", "stream-64x20", "stream-600x100", "stream-300x1000", "stream-4x20"];
    let data: Vec<Value> = ids
        .iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "bench"}))
        .collect();
    serde_json::json!({"object": "list", "data": data}).to_string()
}

/// Parses `stream-{deltas}x{gap_ms}`; other names get a short unpaced stream.
fn stream_plan(dialect: Dialect, model: &str) -> StreamPlan {
    let shape = model
        .strip_prefix("stream-")
        .and_then(|shape| shape.split_once('x'))
        .and_then(|(deltas, gap)| Some((deltas.parse::<u32>().ok()?, gap.parse::<u64>().ok()?)));
    let (delta_count, gap_ms) = match shape {
        Some((deltas, gap)) => (
            deltas.clamp(1, MAX_STREAM_DELTAS),
            gap.min(MAX_STREAM_GAP_MS),
        ),
        None => (DEFAULT_STREAM_DELTAS, 0),
    };
    StreamPlan {
        dialect,
        model: model.to_string(),
        delta_count,
        gap: Duration::from_millis(gap_ms),
    }
}

/// A JSON string literal for `text` (model names come from the request, so they are escaped).
fn quoted(text: &str) -> String {
    Value::from(text).to_string()
}

/// The ~300-byte non-streaming answer with a realistic usage object.
fn whole_answer(dialect: Dialect, model: &str) -> String {
    let model = quoted(model);
    let total = PROMPT_TOKENS + CANNED_COMPLETION_TOKENS;
    match dialect {
        Dialect::OpenAiChat => format!(
            r#"{{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":"{CANNED_TEXT}","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{PROMPT_TOKENS},"completion_tokens":{CANNED_COMPLETION_TOKENS},"total_tokens":{total},"prompt_tokens_details":{{"cached_tokens":0}}}}}}"#
        ),
        Dialect::Anthropic => format!(
            r#"{{"id":"msg_bench0001","type":"message","role":"assistant","model":{model},"content":[{{"type":"text","text":"{CANNED_TEXT}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":{PROMPT_TOKENS},"output_tokens":{CANNED_COMPLETION_TOKENS},"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}}}"#
        ),
        Dialect::Gemini => format!(
            r#"{{"candidates":[{{"content":{{"role":"model","parts":[{{"text":"{CANNED_TEXT}"}}]}},"finishReason":"STOP","index":0}}],"usageMetadata":{{"promptTokenCount":{PROMPT_TOKENS},"candidatesTokenCount":{CANNED_COMPLETION_TOKENS},"totalTokenCount":{total}}},"modelVersion":{model},"responseId":"bench0001"}}"#
        ),
    }
}

fn write_whole<S: Read + Write>(
    socket: &mut BufferedSocket<S>,
    status: u16,
    body: &str,
    close: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let connection = if close { "Connection: close\r\n" } else { "" };
    let mut message = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{connection}\r\n",
        body.len()
    )
    .into_bytes();
    message.extend_from_slice(body.as_bytes());
    socket.write_all(&message)
}

/// Counts a stream as open for as long as it is being written, whatever way it ends.
struct OpenStreamGuard<'a>(&'a AtomicUsize);

impl<'a> OpenStreamGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> OpenStreamGuard<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        OpenStreamGuard(counter)
    }
}

impl Drop for OpenStreamGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes the stream: opening events at once, then the deltas on their deadlines, then the
/// closing events back to back, each event as its own chunk and its own write. Back-to-back
/// small writes are exactly what makes a proxy without TCP_NODELAY stall on a delayed ACK.
fn write_stream<S: Read + Write>(
    socket: &mut BufferedSocket<S>,
    plan: &StreamPlan,
    shared: &SharedState,
) -> io::Result<()> {
    let _open = OpenStreamGuard::new(&shared.open_streams);
    let model = quoted(&plan.model);
    let opening = opening_events(plan.dialect, &model);
    // With opening events the first delta waits one gap; Gemini has none, so its first delta
    // goes out at once and the time to first event means the same thing in every dialect.
    let first_delta_slot = u32::from(!opening.is_empty());
    let started = Instant::now();
    // The head rides in the same write as the first event.
    let mut pending = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for event in &opening {
        pending.extend_from_slice(&chunk_frame(event.as_bytes()));
        socket.write_all(&pending)?;
        pending.clear();
    }
    for delta_index in 0..plan.delta_count {
        if shared.stopping.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "mock stopping"));
        }
        let due_at = started + plan.gap * (delta_index + first_delta_slot);
        let now = Instant::now();
        if due_at > now {
            std::thread::sleep(due_at - now);
        }
        let is_last = delta_index + 1 == plan.delta_count;
        let event = delta_event(plan.dialect, &model, delta_index, is_last, plan.delta_count);
        pending.extend_from_slice(&chunk_frame(event.as_bytes()));
        socket.write_all(&pending)?;
        pending.clear();
    }
    for event in closing_events(plan.dialect, &model, plan.delta_count) {
        socket.write_all(&chunk_frame(event.as_bytes()))?;
    }
    socket.write_all(LAST_CHUNK)
}

fn opening_events(dialect: Dialect, model: &str) -> Vec<String> {
    match dialect {
        Dialect::OpenAiChat => vec![format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{model},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n"
        )],
        Dialect::Anthropic => vec![
            format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":{model},\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":{PROMPT_TOKENS},\"output_tokens\":1}}}}}}\n\n"
            ),
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
        ],
        Dialect::Gemini => Vec::new(),
    }
}

fn delta_event(
    dialect: Dialect,
    model: &str,
    delta_index: u32,
    is_last: bool,
    delta_count: u32,
) -> String {
    match dialect {
        Dialect::OpenAiChat => format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{model},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{delta_index} \"}},\"finish_reason\":null}}]}}\n\n"
        ),
        Dialect::Anthropic => format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok{delta_index} \"}}}}\n\n"
        ),
        // Gemini frames lines with CRLF in practice, and puts finishReason and the cumulative
        // usage on its last chunk.
        Dialect::Gemini if is_last => {
            let total = PROMPT_TOKENS + delta_count;
            format!(
                "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"tok{delta_index} \"}}]}},\"finishReason\":\"STOP\",\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":{PROMPT_TOKENS},\"candidatesTokenCount\":{delta_count},\"totalTokenCount\":{total}}},\"modelVersion\":{model}}}\r\n\r\n"
            )
        }
        Dialect::Gemini => format!(
            "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"tok{delta_index} \"}}]}},\"index\":0}}],\"modelVersion\":{model}}}\r\n\r\n"
        ),
    }
}

fn closing_events(dialect: Dialect, model: &str, delta_count: u32) -> Vec<String> {
    let total = PROMPT_TOKENS + delta_count;
    match dialect {
        Dialect::OpenAiChat => vec![
            format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{model},\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n"
            ),
            format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{model},\"choices\":[],\"usage\":{{\"prompt_tokens\":{PROMPT_TOKENS},\"completion_tokens\":{delta_count},\"total_tokens\":{total}}}}}\n\n"
            ),
            "data: [DONE]\n\n".to_string(),
        ],
        Dialect::Anthropic => vec![
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
                .to_string(),
            format!(
                "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{delta_count}}}}}\n\n"
            ),
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string(),
        ],
        Dialect::Gemini => Vec::new(),
    }
}

/// How many SSE events an OpenAI-dialect stream of `delta_count` deltas carries: the role
/// chunk, the deltas, the finish chunk, the usage chunk and `[DONE]`.
pub fn openai_stream_event_count(delta_count: u32) -> usize {
    delta_count as usize + 4
}

/// How many SSE events a `client` of the gateway receives for a stream of `delta_count` text
/// deltas: OpenAI's above; for Anthropic `message_start`, `content_block_start`, the deltas,
/// `content_block_stop`, `message_delta` and `message_stop`; for Gemini a chunk per delta and the
/// closing chunk with the finish reason and usage.
pub fn client_stream_event_count(client: Dialect, delta_count: u32) -> usize {
    match client {
        Dialect::OpenAiChat => openai_stream_event_count(delta_count),
        Dialect::Anthropic => delta_count as usize + 5,
        Dialect::Gemini => delta_count as usize + 1,
    }
}

/// The gap the mock leaves before OpenAI-dialect event `event_index` (1-based after the role
/// chunk): one pace before each delta, none before the closing events.
pub fn openai_scheduled_gap_before(
    event_index: usize,
    delta_count: u32,
    pace: Duration,
) -> Duration {
    if event_index >= 1 && event_index <= delta_count as usize {
        pace
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_client::{ClientConnection, build_request};

    const TEST_TIMEOUT: Duration = Duration::from_secs(10);

    /// Sends one request on `connection` and returns the status and the whole body.
    fn call(
        connection: &mut ClientConnection,
        address: SocketAddr,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let request = build_request(
            method,
            address,
            path,
            Some("sk-test"),
            body.map(str::as_bytes),
        );
        let response = connection.exchange(&request).expect("exchange");
        (
            response.status,
            String::from_utf8(response.body).expect("UTF-8 body"),
        )
    }

    /// Splits an SSE body into the JSON payloads of its `data:` lines, checking each parses.
    fn data_payloads(body: &str) -> Vec<Value> {
        body.split("\n\n")
            .flat_map(|event| event.split("\r\n\r\n"))
            .filter_map(|event| {
                event
                    .lines()
                    .find_map(|line| line.trim_end_matches('\r').strip_prefix("data: "))
            })
            .filter(|data| *data != "[DONE]")
            .map(|data| {
                serde_json::from_str(data).unwrap_or_else(|error| panic!("{error}: {data}"))
            })
            .collect()
    }

    #[test]
    fn the_tls_mock_answers_a_client_that_trusts_the_test_ca() {
        let mock = MockUpstream::start_tls().expect("TLS mock starts");
        let address = mock.address();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(TEST_CA_FILE).expect("test CA")).expect("CA is usable");
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
        let session = rustls::ClientConnection::new(Arc::new(config), server_name).expect("client session");
        let tcp = TcpStream::connect(address).expect("connect");
        tcp.set_read_timeout(Some(TEST_TIMEOUT)).expect("timeout");
        let mut socket = BufferedSocket::new(StreamOwned::new(session, tcp));
        let request = build_request("POST", address, "/v1/chat/completions", Some("sk-test"), Some(br#"{"model":"stream-3x5","stream":true}"#));
        socket.write_all(&request).expect("request sent");
        let head = socket.read_head().expect("head").expect("a response");
        assert_eq!(head.status(), 200);
        let body = socket.read_body_to_vec(head.response_framing(), 1 << 20).expect("body");
        let body = std::str::from_utf8(&body).expect("UTF-8 body");
        // Every event but the final `[DONE]` carries JSON.
        assert_eq!(data_payloads(body).len() + 1, openai_stream_event_count(3), "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        assert_eq!(mock.answered_requests(Dialect::OpenAiChat), 1);
    }

    #[test]
    fn every_dialect_answers_whole_and_streamed_on_one_connection() {
        let mock = MockUpstream::start().expect("mock starts");
        let address = mock.address();
        let mut connection = ClientConnection::connect(address, TEST_TIMEOUT).expect("connect");

        let (status, body) = call(
            &mut connection,
            address,
            "POST",
            "/v1/chat/completions",
            Some(r#"{"model":"bench-upstream","messages":[]}"#),
        );
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["model"], "bench-upstream");
        assert_eq!(answer["usage"]["total_tokens"], 33);
        assert!(
            (250..400).contains(&body.len()),
            "body is {} bytes",
            body.len()
        );

        let started = Instant::now();
        let (status, body) = call(
            &mut connection,
            address,
            "POST",
            "/v1/chat/completions",
            Some(r#"{"model":"stream-3x5","stream":true}"#),
        );
        assert_eq!(status, 200);
        assert!(
            started.elapsed() >= Duration::from_millis(15),
            "deltas are paced"
        );
        let chunks = data_payloads(&body);
        // Role chunk, three deltas, finish chunk, usage chunk (and [DONE], not JSON).
        assert_eq!(chunks.len(), 6);
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "tok0 ");
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[5]["usage"]["completion_tokens"], 3);
        assert!(body.ends_with("data: [DONE]\n\n"));
        let mut counter = crate::wire::SseEventCounter::default();
        assert_eq!(counter.feed(body.as_bytes()), openai_stream_event_count(3));

        let (status, body) = call(
            &mut connection,
            address,
            "POST",
            "/v1/messages",
            Some(r#"{"model":"stream-2x0","stream":true,"max_tokens":8}"#),
        );
        assert_eq!(status, 200);
        let events = data_payloads(&body);
        let types: Vec<&str> = events
            .iter()
            .map(|event| event["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );

        let (status, body) = call(
            &mut connection,
            address,
            "POST",
            "/v1/messages",
            Some(r#"{"model":"bench-upstream","max_tokens":8,"messages":[]}"#),
        );
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["content"][0]["text"], CANNED_TEXT);
        assert_eq!(answer["usage"]["output_tokens"], CANNED_COMPLETION_TOKENS);

        let (status, body) = call(
            &mut connection,
            address,
            "POST",
            "/v1beta/models/stream-2x0:streamGenerateContent?alt=sse",
            Some(r#"{"contents":[]}"#),
        );
        assert_eq!(status, 200);
        let chunks = data_payloads(&body);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1]["candidates"][0]["finishReason"], "STOP");
        assert_eq!(chunks[1]["usageMetadata"]["candidatesTokenCount"], 2);

        let (status, body) = call(
            &mut connection,
            address,
            "POST",
            "/v1beta/models/gemini-x:generateContent",
            Some(r#"{"contents":[]}"#),
        );
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["modelVersion"], "gemini-x");

        let (status, body) = call(&mut connection, address, "GET", "/v1/models", None);
        assert_eq!(status, 200);
        let list: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(list["data"][1]["id"], "stream-64x20");

        let (status, _) = call(&mut connection, address, "POST", "/nowhere", Some("{}"));
        assert_eq!(status, 404);
        let (status, _) = call(
            &mut connection,
            address,
            "POST",
            "/v1/messages",
            Some("not json"),
        );
        assert_eq!(status, 400);

        // Only the generate answers with status 200 count, each under its own dialect.
        assert_eq!(mock.answered_requests(Dialect::OpenAiChat), 2);
        assert_eq!(mock.answered_requests(Dialect::Anthropic), 2);
        assert_eq!(mock.answered_requests(Dialect::Gemini), 2);

        // All of the above went over the one keep-alive connection.
        assert!(connection.is_reusable());
        assert_eq!(mock.accepted_connections(), 1);
        assert_eq!(mock.open_streams(), 0);
    }

    #[test]
    fn stream_shapes_are_parsed_and_bounded() {
        let paced = stream_plan(Dialect::OpenAiChat, "stream-600x100");
        assert_eq!(
            (paced.delta_count, paced.gap),
            (600, Duration::from_millis(100))
        );
        let huge = stream_plan(Dialect::OpenAiChat, "stream-999999999x999999");
        assert_eq!(huge.delta_count, MAX_STREAM_DELTAS);
        assert_eq!(huge.gap, Duration::from_millis(MAX_STREAM_GAP_MS));
        let plain = stream_plan(Dialect::Anthropic, "claude-x");
        assert_eq!(
            (plain.delta_count, plain.gap),
            (DEFAULT_STREAM_DELTAS, Duration::ZERO)
        );
    }

    #[test]
    fn scheduled_gaps_follow_the_openai_event_order() {
        let pace = Duration::from_millis(20);
        // Events: 0 role, 1..=64 deltas, 65 finish, 66 usage, 67 [DONE].
        assert_eq!(openai_scheduled_gap_before(1, 64, pace), pace);
        assert_eq!(openai_scheduled_gap_before(64, 64, pace), pace);
        assert_eq!(openai_scheduled_gap_before(65, 64, pace), Duration::ZERO);
        assert_eq!(openai_stream_event_count(64), 68);
    }
}
