//! A loopback mock of the LLM providers: speaks the real wire formats (JSON and SSE) and is
//! scripted per request by the test, e.g. by model name or API key. Std threads, one per
//! connection, keep-alive supported; every request is recorded.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(header_name, _)| header_name.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The model: from the body, or from a Gemini-style path `/models/{model}:method`.
    pub fn model(&self) -> String {
        if let Some(model) = self.json().get("model").and_then(Value::as_str) {
            return model.to_string();
        }
        self.path
            .rsplit_once("/models/")
            .map(|(_, rest)| rest.split(':').next().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    /// The API key, wherever the provider format puts it.
    pub fn api_key(&self) -> String {
        if let Some(value) = self.header("authorization") {
            return value.trim_start_matches("Bearer ").to_string();
        }
        if let Some(value) = self.header("x-api-key").or_else(|| self.header("x-goog-api-key")) {
            return value.to_string();
        }
        self.query.split('&').find_map(|pair| pair.strip_prefix("key=")).unwrap_or("").to_string()
    }

    pub fn wants_stream(&self) -> bool {
        self.path.contains(":streamGenerateContent") || self.json().get("stream").and_then(Value::as_bool).unwrap_or(false)
    }
}

/// How the mock answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A complete response with `Content-Length`.
    Json { status: u16, headers: Vec<(String, String)>, body: String },
    /// A chunked SSE response: each event (already framed, ending in a blank line) is one chunk,
    /// sent `gap` apart; then the stream ends as `end` says.
    Sse { events: Vec<String>, gap: Duration, end: StreamEnd },
    /// Wait this long without sending anything, then close (earlier if the gateway hangs up,
    /// which `peer_hangups` records).
    StallBeforeHead(Duration),
    /// Close the connection without answering.
    Close,
    /// Wait this long, then answer with the inner reply (a slow but healthy upstream).
    Delayed(Duration, Box<Reply>),
    /// Write these bytes as they are (status line, headers and whatever body), then end as
    /// `end` says (`Finish` closes the connection): for truncated or malformed answers.
    Raw { bytes: String, end: StreamEnd },
    /// A complete response with any content type and binary body (e.g. an image download).
    Binary { status: u16, content_type: String, bytes: Vec<u8> },
}

#[derive(Clone, Debug)]
pub enum StreamEnd {
    /// The terminating chunk: a clean end.
    Finish,
    /// Close the socket without the terminating chunk.
    Reset,
    /// Keep the connection open, silent, for this long, then close it (earlier if the gateway
    /// hangs up, which `peer_hangups` records).
    Stall(Duration),
}

type Script = dyn Fn(&RecordedRequest) -> Reply + Send + Sync;

/// A running mock upstream.
pub struct MockUpstream {
    pub address: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    accepted_connections: Arc<AtomicUsize>,
    open_connections: Arc<AtomicUsize>,
    aborted_streams: Arc<AtomicUsize>,
    peer_hangups: Arc<Mutex<Vec<Instant>>>,
    stopped: Arc<AtomicBool>,
}

/// The counters a connection thread updates.
#[derive(Clone)]
struct Observations {
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    aborted_streams: Arc<AtomicUsize>,
    peer_hangups: Arc<Mutex<Vec<Instant>>>,
}

impl MockUpstream {
    /// Starts a mock answering with `script`.
    pub fn start(script: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mock upstream");
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accepted_connections = Arc::new(AtomicUsize::new(0));
        let open_connections = Arc::new(AtomicUsize::new(0));
        let aborted_streams = Arc::new(AtomicUsize::new(0));
        let peer_hangups = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        {
            let observations =
                Observations { requests: requests.clone(), aborted_streams: aborted_streams.clone(), peer_hangups: peer_hangups.clone() };
            let accepted_connections = accepted_connections.clone();
            let open_connections = open_connections.clone();
            let stopped = stopped.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    accepted_connections.fetch_add(1, Ordering::SeqCst);
                    let open = OpenConnection::count(&open_connections);
                    let script = script.clone();
                    let observations = observations.clone();
                    std::thread::spawn(move || {
                        serve_connection(stream, &observations, &*script);
                        drop(open);
                    });
                }
            });
        }
        MockUpstream { address, requests, accepted_connections, open_connections, aborted_streams, peer_hangups, stopped }
    }

    /// A mock that answers every request with the default success for its format.
    pub fn default_success() -> MockUpstream {
        MockUpstream::start(default_reply)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// How many requests the mock received for this upstream model.
    pub fn hits_for_model(&self, model: &str) -> usize {
        self.requests().iter().filter(|request| request.model() == model).count()
    }

    pub fn accepted_connections(&self) -> usize {
        self.accepted_connections.load(Ordering::SeqCst)
    }

    /// Connections the mock is serving right now. A connection stays open while the gateway
    /// keeps it (idle in its pool, or in the middle of an answer); the mock ends its side when
    /// the gateway closes it, after a scripted close or reset, or after 30 s without a request.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::SeqCst)
    }

    /// Streams that ended because writing to the gateway failed (the gateway hung up).
    pub fn aborted_streams(&self) -> usize {
        self.aborted_streams.load(Ordering::SeqCst)
    }

    /// When the gateway closed a connection the mock was holding silent (`StallBeforeHead`,
    /// `StreamEnd::Stall`), one entry per such hang-up.
    pub fn peer_hangups(&self) -> Vec<Instant> {
        self.peer_hangups.lock().unwrap().clone()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_millis(200));
    }
}

/// Counts one open connection for as long as it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn count(open_connections: &Arc<AtomicUsize>) -> OpenConnection {
        open_connections.fetch_add(1, Ordering::SeqCst);
        OpenConnection(open_connections.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_connection(stream: TcpStream, observations: &Observations, script: &Script) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut reader) else { return };
        observations.requests.lock().unwrap().push(request.clone());
        let mut reply = script(&request);
        while let Reply::Delayed(delay, inner) = reply {
            std::thread::sleep(delay);
            reply = *inner;
        }
        let keep_open = match reply {
            Reply::Delayed(..) => unreachable!("delays were unwrapped above"),
            Reply::Json { status, headers, body } => {
                let mut head = format!("HTTP/1.1 {status} Mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len());
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                writer.write_all(head.as_bytes()).is_ok() && writer.write_all(body.as_bytes()).is_ok()
            }
            Reply::Sse { events, gap, end } => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if writer.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for (index, event) in events.iter().enumerate() {
                    if index > 0 && !gap.is_zero() {
                        std::thread::sleep(gap);
                    }
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    if writer.write_all(chunk.as_bytes()).and_then(|_| writer.flush()).is_err() {
                        observations.aborted_streams.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
                match end {
                    StreamEnd::Finish => writer.write_all(b"0\r\n\r\n").is_ok(),
                    StreamEnd::Reset => {
                        let _ = writer.shutdown(Shutdown::Both);
                        return;
                    }
                    StreamEnd::Stall(duration) => {
                        stall_watching_peer(reader.get_ref(), duration, &observations.peer_hangups);
                        return;
                    }
                }
            }
            Reply::StallBeforeHead(duration) => {
                stall_watching_peer(reader.get_ref(), duration, &observations.peer_hangups);
                return;
            }
            Reply::Close => return,
            Reply::Binary { status, content_type, bytes } => {
                let head = format!("HTTP/1.1 {status} Mock\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n", bytes.len());
                writer.write_all(head.as_bytes()).is_ok() && writer.write_all(&bytes).is_ok()
            }
            Reply::Raw { bytes, end } => {
                let _ = writer.write_all(bytes.as_bytes()).and_then(|_| writer.flush());
                match end {
                    StreamEnd::Finish => {}
                    StreamEnd::Reset => {
                        let _ = writer.shutdown(Shutdown::Both);
                    }
                    StreamEnd::Stall(duration) => stall_watching_peer(reader.get_ref(), duration, &observations.peer_hangups),
                }
                return;
            }
        };
        if !keep_open {
            return;
        }
    }
}

/// Stays silent for `duration`, but returns as soon as the gateway closes or resets the
/// connection and records when that happened.
fn stall_watching_peer(stream: &TcpStream, duration: Duration, peer_hangups: &Mutex<Vec<Instant>>) {
    let deadline = Instant::now() + duration;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
    let mut byte = [0u8; 1];
    while Instant::now() < deadline {
        match stream.peek(&mut byte) {
            Ok(0) => break,
            // Bytes of a next request: the gateway is still there.
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => break,
        }
    }
    if Instant::now() < deadline {
        peer_hangups.lock().unwrap().push(Instant::now());
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<RecordedRequest> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).ok()? == 0 {
        return None;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_string(), query.to_string()),
        None => (target, String::new()),
    };
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length = headers.iter().find(|(name, _)| name == "content-length").and_then(|(_, value)| value.parse().ok()).unwrap_or(0);
    let chunked = headers.iter().any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).ok()?;
            let size = usize::from_str_radix(size_line.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(RecordedRequest { method, path, query, headers, body })
}

/// Which provider format a request path belongs to.
pub fn format_of(request: &RecordedRequest) -> &'static str {
    let path = request.path.as_str();
    if path.ends_with("/chat/completions") {
        "openai_chat"
    } else if path.ends_with("/embeddings") {
        "openai_embeddings"
    } else if path.ends_with(":batchEmbedContents") {
        "gemini_embeddings"
    } else if path.ends_with("/responses") {
        "openai_responses"
    } else if path.ends_with("/messages") {
        "anthropic"
    } else if path.contains("v1internal:") {
        "antigravity"
    } else {
        "gemini"
    }
}

/// The words a default streamed answer is made of.
pub const DEFAULT_WORDS: [&str; 4] = ["Hello", " from", " the", " mock"];

/// A successful answer in the request's format, streamed when the request asks for it.
pub fn default_reply(request: &RecordedRequest) -> Reply {
    let model = request.model();
    if let Some(body) = embeddings_body(request) {
        return Reply::Json { status: 200, headers: Vec::new(), body: body.to_string() };
    }
    if request.wants_stream() {
        Reply::Sse { events: stream_events(format_of(request), &model, &DEFAULT_WORDS), gap: Duration::ZERO, end: StreamEnd::Finish }
    } else {
        Reply::Json { status: 200, headers: Vec::new(), body: complete_body(format_of(request), &model, &DEFAULT_WORDS.concat()).to_string() }
    }
}

/// A stream of `words` in the request's format, events sent `gap` apart, ending as `end` says.
pub fn stream_reply(request: &RecordedRequest, words: &[&str], gap: Duration, end: StreamEnd) -> Reply {
    Reply::Sse { events: stream_events(format_of(request), &request.model(), words), gap, end }
}

/// The default answer, with streamed events sent `gap` apart.
pub fn paced_reply(request: &RecordedRequest, gap: Duration) -> Reply {
    if request.wants_stream() {
        stream_reply(request, &DEFAULT_WORDS, gap, StreamEnd::Finish)
    } else {
        default_reply(request)
    }
}

/// A script answering by upstream model: `fail-<status>` gets that status in `format`'s error
/// shape with the message "<model> said no"; any other model gets the default success.
pub fn fail_by_model(format: &'static str) -> impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static {
    move |request| {
        let model = request.model();
        match model.strip_prefix("fail-").and_then(|status| status.parse::<u16>().ok()) {
            Some(status) => error_reply(format, status, &format!("{model} said no")),
            None => default_reply(request),
        }
    }
}

/// An error in the given provider format.
pub fn error_reply(format: &str, status: u16, message: &str) -> Reply {
    let body = match format {
        "anthropic" => {
            let error_type = match status {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": error_type, "message": message}})
        }
        "gemini" | "antigravity" => {
            let status_name = match status {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            json!({"error": {"code": status, "message": message, "status": status_name}})
        }
        _ => {
            let error_type = if status == 429 { "rate_limit_exceeded" } else if status >= 500 { "server_error" } else { "invalid_request_error" };
            json!({"error": {"message": message, "type": error_type, "param": null, "code": error_type}})
        }
    };
    Reply::Json { status, headers: Vec::new(), body: body.to_string() }
}

/// `reply` with one more response header (for `Json` replies; others are returned as they are).
pub fn with_header(reply: Reply, name: &str, value: &str) -> Reply {
    match reply {
        Reply::Json { status, mut headers, body } => {
            headers.push((name.to_string(), value.to_string()));
            Reply::Json { status, headers, body }
        }
        other => other,
    }
}

/// A complete non-stream body with `text`, in the given format, with usage 10 in / 5 out.
pub fn complete_body(format: &str, model: &str, text: &str) -> Value {
    match format {
        "openai_chat" => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }),
        "openai_responses" => json!({
            "id": "resp_mock", "object": "response", "created_at": 1700000000, "status": "completed", "model": model,
            "output": [{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        }),
        "anthropic" => json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }),
        "antigravity" => json!({"response": complete_body("gemini", model, text), "traceId": "mock"}),
        _ => json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
            "modelVersion": model,
        }),
    }
}

/// The mock's embeddings answer, or None when the request is not an embeddings call. Every
/// input gets the vector `[0.25, -0.5, <input index>]`; OpenAI's answer reports 3 prompt tokens
/// per input, Gemini's (like the real one) reports no usage.
pub fn embeddings_body(request: &RecordedRequest) -> Option<Value> {
    let body = request.json();
    match format_of(request) {
        "openai_embeddings" => {
            let count = match &body["input"] {
                Value::Array(items) => items.len(),
                _ => 1,
            };
            let data: Vec<Value> = (0..count)
                .map(|index| json!({"object": "embedding", "index": index, "embedding": [0.25, -0.5, index as f64]}))
                .collect();
            Some(json!({
                "object": "list", "data": data, "model": request.model(),
                "usage": {"prompt_tokens": 3 * count, "total_tokens": 3 * count},
            }))
        }
        "gemini_embeddings" => {
            let count = body["requests"].as_array().map_or(0, Vec::len);
            let embeddings: Vec<Value> = (0..count).map(|index| json!({"values": [0.25, -0.5, index as f64]})).collect();
            Some(json!({"embeddings": embeddings}))
        }
        _ => None,
    }
}

/// A framed SSE event.
pub fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// A full, realistic stream of `words` in the given format, with usage 10 in / 5 out.
pub fn stream_events(format: &str, model: &str, words: &[&str]) -> Vec<String> {
    let mut events = Vec::new();
    match format {
        "openai_chat" => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            events.push(sse(None, &chunk(json!({"role": "assistant", "content": ""}), Value::Null)));
            for word in words {
                events.push(sse(None, &chunk(json!({"content": word}), Value::Null)));
            }
            events.push(sse(None, &chunk(json!({}), json!("stop"))));
            events.push(sse(None, &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
                "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})));
            events.push("data: [DONE]\n\n".to_string());
        }
        "openai_responses" => {
            let text: String = words.concat();
            let mut sequence = 0;
            let mut push = |events: &mut Vec<String>, name: &str, mut data: Value| {
                data["type"] = json!(name);
                data["sequence_number"] = json!(sequence);
                sequence += 1;
                events.push(sse(Some(name), &data));
            };
            let response = |status: &str, output: Value, usage: Value| {
                json!({"id": "resp_mock", "object": "response", "created_at": 1700000000, "status": status, "model": model, "output": output, "usage": usage})
            };
            push(&mut events, "response.created", json!({"response": response("in_progress", json!([]), Value::Null)}));
            push(&mut events, "response.in_progress", json!({"response": response("in_progress", json!([]), Value::Null)}));
            push(&mut events, "response.output_item.added", json!({"output_index": 0, "item": {"type": "message", "id": "msg_mock", "status": "in_progress", "role": "assistant", "content": []}}));
            push(&mut events, "response.content_part.added", json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}));
            for word in words {
                push(&mut events, "response.output_text.delta", json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": word}));
            }
            push(&mut events, "response.output_text.done", json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": text}));
            let item = json!({"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]});
            push(&mut events, "response.content_part.done", json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
            push(&mut events, "response.output_item.done", json!({"output_index": 0, "item": item}));
            push(&mut events, "response.completed", json!({"response": response("completed", json!([item]), json!({"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}))}));
        }
        "anthropic" => {
            events.push(sse(Some("message_start"), &json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}})));
            events.push(sse(Some("content_block_start"), &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            events.push(sse(Some("ping"), &json!({"type": "ping"})));
            for word in words {
                events.push(sse(Some("content_block_delta"), &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}})));
            }
            events.push(sse(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": 0})));
            events.push(sse(Some("message_delta"), &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}})));
            events.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
        }
        _ => {
            let wrap = |chunk: Value| if format == "antigravity" { json!({"response": chunk, "traceId": "mock"}) } else { chunk };
            for (index, word) in words.iter().enumerate() {
                let mut chunk = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": word}]}, "index": 0}],
                                       "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10}, "modelVersion": model});
                if index + 1 == words.len() {
                    chunk["candidates"][0]["finishReason"] = json!("STOP");
                    chunk["usageMetadata"] = json!({"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15});
                }
                events.push(format!("data: {}\r\n\r\n", wrap(chunk)));
            }
        }
    }
    events
}
