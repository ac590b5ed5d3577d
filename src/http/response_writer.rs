//! Writes a handler's `Response` to the client: the head with our framing headers, then a
//! whole body (`Content-Length`) or a streamed body (`Transfer-Encoding: chunked`, one chunk
//! per `write_chunk`, each written as soon as it is produced).

use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::http::stack_pages::StackEntry;
use crate::http::{Body, Response, StreamWriter, reason_phrase};

/// What the server knows about the request a response answers.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext {
    /// A HEAD request gets the headers of the response but no body.
    pub is_head_request: bool,
    /// HTTP/1.0 clients do not understand chunked bodies, so a stream is sent raw and the end
    /// of the body is marked by closing the connection.
    pub is_http_1_0: bool,
    /// Whether the connection may be reused after this response, as far as the request goes.
    pub keep_alive: bool,
    /// The top of the connection coroutine's stack: a streamed body releases the deeper pages
    /// its request touched before it runs (`stack_pages`).
    pub stack_entry: StackEntry,
}

/// How writing a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseOutcome {
    /// The whole response was written; `keep_alive` says whether the connection stays open.
    Sent { keep_alive: bool },
    /// The response is incomplete on the wire (a write failed, or the streaming closure failed
    /// or panicked after writing); the connection must be dropped at once.
    Broken,
    /// The streaming closure panicked before anything was written, so a 500 can still be sent.
    PanickedBeforeWriting,
}

/// Bodies up to this size go out in the same write as the head; larger ones are not worth
/// copying and are written separately.
const COALESCE_BODY_BYTES: usize = 64 * 1024;

/// Writes `response` to `stream`.
pub fn write_response(
    stream: &mut impl Write,
    response: Response,
    context: ResponseContext,
) -> ResponseOutcome {
    let status = response.status;
    // RFC 9110 section 6.4.1: 1xx, 204 and 304 responses never carry a body.
    let status_allows_body = !(100..200).contains(&status) && status != 204 && status != 304;
    let sends_body = status_allows_body && !context.is_head_request;
    match response.body {
        Body::Bytes(body) => {
            let keep_alive = context.keep_alive;
            let framing = if status_allows_body { Framing::ContentLength(body.len()) } else { Framing::None };
            let body = if sends_body { body.as_slice() } else { &[] };
            let coalesced = body.len() <= COALESCE_BODY_BYTES;
            let mut message = response_head(
                status,
                &response.headers,
                framing,
                keep_alive,
                context.is_http_1_0,
                if coalesced { body.len() } else { 0 },
            );
            let written = if coalesced {
                message.extend_from_slice(body);
                stream.write_all(&message)
            } else {
                stream
                    .write_all(&message)
                    .and_then(|()| stream.write_all(body))
            };
            match written {
                Ok(()) => ResponseOutcome::Sent { keep_alive },
                Err(_) => ResponseOutcome::Broken,
            }
        }
        Body::Stream(write_body) => {
            let chunked = !context.is_http_1_0;
            let keep_alive = context.keep_alive && chunked;
            let framing = if status_allows_body && chunked { Framing::Chunked } else { Framing::None };
            let head = response_head(status, &response.headers, framing, keep_alive, context.is_http_1_0, 0);
            if !sends_body {
                // The closure is dropped unrun: there is no body to produce.
                return match stream.write_all(&head) {
                    Ok(()) => ResponseOutcome::Sent { keep_alive },
                    Err(_) => ResponseOutcome::Broken,
                };
            }
            let open_body = OpenStreamedBody::count();
            let release_at = stack_release_deadline(Instant::now(), open_body.open_at_start);
            let mut writer = ChunkWriter {
                stream,
                pending_head: Some(head),
                chunked,
                failed: false,
                message: Vec::new(),
                stack_release: Some((context.stack_entry, release_at)),
                _open_body: open_body,
            };
            match catch_unwind(AssertUnwindSafe(|| write_body(&mut writer))) {
                Err(_) if writer.pending_head.is_some() => ResponseOutcome::PanickedBeforeWriting,
                Err(_) => {
                    log::error!(
                        "a streaming response body panicked after it started; closing the connection"
                    );
                    ResponseOutcome::Broken
                }
                Ok(Err(_)) => {
                    // The client still learns the status; the missing terminator tells it the
                    // body is truncated.
                    if let Some(head) = writer.pending_head.take() {
                        let _ = writer.stream.write_all(&head);
                    }
                    ResponseOutcome::Broken
                }
                Ok(Ok(())) => match writer.finish() {
                    Ok(()) => ResponseOutcome::Sent { keep_alive },
                    Err(_) => ResponseOutcome::Broken,
                },
            }
        }
    }
}

/// The bytes of a response whose status and message are fixed by the server, with a JSON
/// error body (the handler's `custom_body` when it gave one); the connection is always closed
/// after it.
pub fn error_response_bytes(status: u16, message: &str, custom_body: Option<Vec<u8>>) -> Vec<u8> {
    let error_type = match status {
        400 => "invalid_request_error",
        408 => "request_timeout",
        413 => "request_too_large",
        431 => "request_header_fields_too_large",
        503 => "overloaded",
        _ => "internal_error",
    };
    let body = custom_body.unwrap_or_else(|| {
        let body = serde_json::json!({"error": {"message": message, "type": error_type}});
        serde_json::to_vec(&body).unwrap_or_default()
    });
    let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    // A 503 from the server itself means "overloaded now": tell the client when to come back.
    if status == 503 {
        headers.push(("Retry-After".to_string(), "1".to_string()));
    }
    let mut bytes = response_head(status, &headers, Framing::ContentLength(body.len()), false, false, body.len());
    bytes.extend_from_slice(&body);
    bytes
}

/// How a response's body is delimited, which the server alone decides.
enum Framing {
    /// No body may follow the head (1xx, 204, 304).
    None,
    ContentLength(usize),
    Chunked,
}

/// Serializes the status line and headers, ending with the empty line, into a buffer with
/// `body_room` more bytes reserved for a body appended to the same write.
fn response_head(
    status: u16,
    handler_headers: &[(String, String)],
    framing: Framing,
    keep_alive: bool,
    is_http_1_0: bool,
    body_room: usize,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + body_room);
    // Written piece by piece: `format!` cost more than the rest of the head for every response.
    head.extend_from_slice(b"HTTP/1.1 ");
    crate::util::push_decimal(&mut head, u64::from(status));
    head.push(b' ');
    head.extend_from_slice(reason_phrase(status).as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in handler_headers {
        if is_server_owned_header(name) {
            continue;
        }
        // A CR or LF in a header would let whoever controls the value inject headers or a
        // whole response, so such headers are dropped.
        if [name, value].iter().any(|text| text.contains(['\r', '\n'])) {
            log::warn!(
                "dropping response header {:?} with a line break in it",
                name.replace(['\r', '\n'], " ")
            );
            continue;
        }
        push_header(&mut head, name, value);
    }
    match framing {
        Framing::None => {}
        Framing::ContentLength(length) => {
            head.extend_from_slice(b"Content-Length: ");
            crate::util::push_decimal(&mut head, length as u64);
            head.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => push_header(&mut head, "Transfer-Encoding", "chunked"),
    }
    if !keep_alive {
        push_header(&mut head, "Connection", "close");
    } else if is_http_1_0 {
        push_header(&mut head, "Connection", "keep-alive");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Headers that describe framing and connection state are set by the server alone: a handler
/// value would contradict the body we actually send.
fn is_server_owned_header(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
    ]
    .iter()
    .any(|owned| name.eq_ignore_ascii_case(owned))
}

fn push_header(head: &mut Vec<u8>, name: &str, value: &str) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value.as_bytes());
    head.extend_from_slice(b"\r\n");
}

/// The `StreamWriter` handed to streaming closures. The head is held back until the first
/// chunk so both leave in one write (and so a panic before any output can still become a 500);
/// every chunk after that is written the moment it is produced.
struct ChunkWriter<'stream, S: Write> {
    stream: &'stream mut S,
    pending_head: Option<Vec<u8>>,
    chunked: bool,
    failed: bool,
    /// The bytes of the chunk being written, kept from one chunk to the next.
    message: Vec<u8>,
    /// The connection's stack and when its deeper pages are to be released, until they are.
    stack_release: Option<(StackEntry, Instant)>,
    /// Counts this body among the open ones while it is written.
    _open_body: OpenStreamedBody,
}

/// How long a streamed body runs before the deeper pages of its coroutine's stack are released
/// (`stack_pages`). The handler that made the response went deepest, and a stream that lasts
/// holds those pages for nothing while it relays events a few frames down. Streams that end
/// sooner give the stack back to the next request as it is, without a release and the page
/// faults that would follow it.
const STACK_RELEASE_AFTER: Duration = Duration::from_millis(500);

/// With this many other streamed bodies open or more, a new one releases its stack at its
/// first chunk instead of after `STACK_RELEASE_AFTER`. In a burst of streams every one would
/// otherwise hold its request's deep pages (about 50 KiB) for that half second at once: 1,000
/// streams opened within 0.2 s peaked at 92 MiB against 40 MiB once released. Below the
/// threshold short streams keep their pages, as above; past it the early release bounds what a
/// burst costs, for one madvise per stream and the page faults of its connection's next request.
const OPEN_STREAMS_FOR_AN_EARLY_STACK_RELEASE: usize = 256;

/// Streamed bodies being written right now, over every connection.
static OPEN_STREAMED_BODIES: AtomicUsize = AtomicUsize::new(0);

/// One streamed body in `OPEN_STREAMED_BODIES`, for as long as it lives (a panic included).
struct OpenStreamedBody {
    /// How many were open when this one started, itself not counted.
    open_at_start: usize,
}

impl OpenStreamedBody {
    fn count() -> OpenStreamedBody {
        OpenStreamedBody { open_at_start: OPEN_STREAMED_BODIES.fetch_add(1, Ordering::Relaxed) }
    }
}

impl Drop for OpenStreamedBody {
    fn drop(&mut self) {
        OPEN_STREAMED_BODIES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a streamed body that starts at `now`, with `open_streams` others already open, releases
/// the deeper pages of its connection's stack.
fn stack_release_deadline(now: Instant, open_streams: usize) -> Instant {
    if open_streams >= OPEN_STREAMS_FOR_AN_EARLY_STACK_RELEASE { now } else { now + STACK_RELEASE_AFTER }
}

impl<S: Write> ChunkWriter<'_, S> {
    /// Writes the head if no chunk carried it, then the terminating chunk.
    fn finish(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier write to the client failed",
            ));
        }
        let mut message = self.pending_head.take().unwrap_or_default();
        if self.chunked {
            message.extend_from_slice(b"0\r\n\r\n");
        }
        self.stream.write_all(&message)?;
        self.stream.flush()
    }
}

impl<S: Write> StreamWriter for ChunkWriter<'_, S> {
    fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier write to the client failed",
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        let message = &mut self.message;
        message.clear();
        if let Some(head) = self.pending_head.take() {
            message.extend_from_slice(&head);
        }
        if self.chunked {
            push_chunk_size(message, data.len());
            message.extend_from_slice(data);
            message.extend_from_slice(b"\r\n");
        } else {
            message.extend_from_slice(data);
        }
        let written = self
            .stream
            .write_all(message)
            .and_then(|()| self.stream.flush());
        if written.is_err() {
            self.failed = true;
        }
        if let Some((stack_entry, release_at)) = self.stack_release
            && Instant::now() >= release_at
        {
            self.stack_release = None;
            stack_entry.release_deeper_pages();
        }
        written
    }
}

/// A chunk's size line: the length in hexadecimal, then CRLF.
fn push_chunk_size(message: &mut Vec<u8>, length: usize) {
    const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - length.leading_zeros()).div_ceil(4).max(1);
    for digit in (0..digits).rev() {
        message.push(HEX_DIGITS[(length >> (digit * 4)) & 0xf]);
    }
    message.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_releases_its_stack_at_once_in_a_burst_and_after_half_a_second_otherwise() {
        let now = Instant::now();
        assert_eq!(stack_release_deadline(now, 0), now + STACK_RELEASE_AFTER);
        assert_eq!(stack_release_deadline(now, OPEN_STREAMS_FOR_AN_EARLY_STACK_RELEASE - 1), now + STACK_RELEASE_AFTER);
        assert_eq!(stack_release_deadline(now, OPEN_STREAMS_FOR_AN_EARLY_STACK_RELEASE), now);
        assert_eq!(stack_release_deadline(now, 10_000), now);
    }

    #[test]
    fn chunk_sizes_are_lowercase_hexadecimal_without_leading_zeros() {
        for length in [1usize, 9, 10, 15, 16, 255, 256, 4095, 65_536, 1 << 40] {
            let mut line = Vec::new();
            push_chunk_size(&mut line, length);
            assert_eq!(String::from_utf8(line).unwrap(), format!("{length:x}\r\n"));
        }
    }

    const KEEP_ALIVE_1_1: ResponseContext = ResponseContext {
        is_head_request: false,
        is_http_1_0: false,
        keep_alive: true,
        stack_entry: StackEntry::NOWHERE,
    };

    fn written(response: Response, context: ResponseContext) -> (String, ResponseOutcome) {
        let mut output = Vec::new();
        let outcome = write_response(&mut output, response, context);
        (String::from_utf8(output).unwrap(), outcome)
    }

    #[test]
    fn writes_bytes_with_content_length_and_drops_server_owned_headers() {
        let response = Response::bytes(200, "text/plain", b"hello".to_vec())
            .with_header("content-length", "999")
            .with_header("Connection", "upgrade")
            .with_header("x-injected", "a\r\nset-cookie: b");
        let (text, outcome) = written(response, KEEP_ALIVE_1_1);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        );
        assert_eq!(outcome, ResponseOutcome::Sent { keep_alive: true });
    }

    #[test]
    fn omits_the_body_for_head_requests_and_bodiless_statuses() {
        let context = ResponseContext {
            is_head_request: true,
            ..KEEP_ALIVE_1_1
        };
        let (text, _) = written(
            Response::bytes(200, "text/plain", b"hello".to_vec()),
            context,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 5\r\n\r\n"
        );
        let (text, _) = written(
            Response {
                status: 204,
                headers: Vec::new(),
                body: Body::Bytes(b"x".to_vec()),
            },
            KEEP_ALIVE_1_1,
        );
        assert_eq!(text, "HTTP/1.1 204 No Content\r\n\r\n");
        let (text, _) = written(
            Response {
                status: 304,
                headers: Vec::new(),
                body: Body::Bytes(Vec::new()),
            },
            KEEP_ALIVE_1_1,
        );
        assert_eq!(text, "HTTP/1.1 304 Not Modified\r\n\r\n");
        let stream = Response::stream(200, "text/event-stream", |_| {
            panic!("must not run for HEAD")
        });
        let (text, outcome) = written(stream, context);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!(outcome, ResponseOutcome::Sent { keep_alive: true });
    }

    #[test]
    fn frames_stream_chunks_and_sends_the_head_with_the_first_chunk() {
        let response = Response::stream(200, "text/plain", |writer| {
            writer.write_chunk(b"hello")?;
            writer.write_chunk(b"")?;
            writer.write_chunk(&[b'x'; 17])
        });
        let (text, outcome) = written(response, KEEP_ALIVE_1_1);
        let expected_head =
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            text,
            format!(
                "{expected_head}5\r\nhello\r\n11\r\n{}\r\n0\r\n\r\n",
                "x".repeat(17)
            )
        );
        assert_eq!(outcome, ResponseOutcome::Sent { keep_alive: true });
    }

    #[test]
    fn sends_streams_raw_and_closes_for_http_1_0() {
        let context = ResponseContext {
            is_http_1_0: true,
            ..KEEP_ALIVE_1_1
        };
        let response = Response::stream(200, "text/plain", |writer| writer.write_chunk(b"raw"));
        let (text, outcome) = written(response, context);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nConnection: close\r\n\r\nraw"
        );
        assert_eq!(outcome, ResponseOutcome::Sent { keep_alive: false });
    }

    #[test]
    fn reports_stream_failures() {
        let failing = Response::stream(200, "text/plain", |writer| {
            writer.write_chunk(b"part")?;
            Err(io::Error::other("upstream failed"))
        });
        let (text, outcome) = written(failing, KEEP_ALIVE_1_1);
        assert!(text.ends_with("4\r\npart\r\n"), "{text}");
        assert_eq!(outcome, ResponseOutcome::Broken);
        let early_panic = Response::stream(200, "text/plain", |_| panic!("before any output"));
        let (text, outcome) = written(early_panic, KEEP_ALIVE_1_1);
        assert_eq!(
            (text.as_str(), outcome),
            ("", ResponseOutcome::PanickedBeforeWriting)
        );
        let late_panic = Response::stream(200, "text/plain", |writer| {
            writer.write_chunk(b"part")?;
            panic!("after output")
        });
        assert_eq!(
            written(late_panic, KEEP_ALIVE_1_1).1,
            ResponseOutcome::Broken
        );
    }

    #[test]
    fn error_responses_close_the_connection() {
        let text =
            String::from_utf8(error_response_bytes(413, "request body is too large", None)).unwrap();
        let body =
            r#"{"error":{"message":"request body is too large","type":"request_too_large"}}"#;
        let expected = format!(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(text, expected);
    }
}
