//! Our HTTP/1.1 server on `may` coroutines: request and response types shared with every handler.
//!
//! The server itself lives in `server.rs`; handlers only see the types defined here. A handler
//! receives a fully read `Request` (the body is already decoded and capped) and returns a
//! `Response`, whose body is either a byte buffer or a streaming closure that writes one chunk
//! per call, flushed at once (used for SSE).

pub(crate) mod admission;
pub(crate) mod chunked;
pub(crate) mod connection;
pub mod cors;
pub mod descriptor_limit;
pub(crate) mod head;
pub(crate) mod read_buffer;
mod response_writer;
pub mod server;
pub mod stack_pages;

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::util::receive_without_waiting;

/// One parsed request with its whole body.
pub struct Request {
    /// The method as sent, e.g. `GET`.
    pub method: String,
    /// The path part of the request target, percent-encoding untouched, e.g. `/v1/models`.
    pub path: String,
    /// The query string without the leading `?`; empty when there is none.
    pub query: String,
    /// Header names in lower case, values as sent (trimmed), in arrival order.
    pub headers: Vec<(String, String)>,
    /// The decoded body (Content-Length or chunked); empty when there is none.
    pub body: Vec<u8>,
    /// The address of the client socket.
    pub peer: SocketAddr,
    /// Lets a long-running handler notice that the client has gone away.
    pub client: ClientProbe,
}

impl Request {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header_name, _)| header_name == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first query parameter with this name, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (crate::util::percent_decode(key) == name).then(|| crate::util::percent_decode(value))
        })
    }
}

/// Checks whether the client side of a connection has been closed, without consuming input.
#[derive(Clone, Copy, Debug)]
pub struct ClientProbe {
    fd: Option<RawFd>,
}

impl ClientProbe {
    /// A probe for the given connected socket.
    pub fn for_socket(fd: RawFd) -> ClientProbe {
        ClientProbe { fd: Some(fd) }
    }

    /// A probe that never reports a closed client (for handlers called outside a socket).
    pub fn detached() -> ClientProbe {
        ClientProbe { fd: None }
    }

    /// True when the peer has closed or reset the connection. Pipelined bytes waiting to be
    /// read count as "still there".
    pub fn is_closed(&self) -> bool {
        let Some(fd) = self.fd else { return false };
        // `fd` is a connected socket owned by the server for the whole handler call; a peek
        // neither blocks nor consumes data. EOF or an error means the peer is gone.
        matches!(receive_without_waiting(fd, &mut [0u8; 1], libc::MSG_PEEK), Some(Ok(0) | Err(_)))
    }
}

/// A response: status, headers and a body.
pub struct Response {
    pub status: u16,
    /// Extra headers. The server adds `Content-Length` or `Transfer-Encoding` and `Connection`
    /// itself; handlers must not set them.
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// The body of a response.
pub enum Body {
    /// A complete body, sent with `Content-Length`.
    Bytes(Vec<u8>),
    /// A streamed body, sent with `Transfer-Encoding: chunked`. The closure runs on the
    /// connection's coroutine after the head is written; every `write_chunk` call is one chunk,
    /// flushed before it returns. An `Err` from the closure (or from a write) closes the
    /// connection without the terminating chunk, so the client sees a truncated stream.
    Stream(StreamBody),
}

/// The closure that writes a streamed body.
pub type StreamBody = Box<dyn FnOnce(&mut dyn StreamWriter) -> io::Result<()> + Send>;

/// The sink a streaming body writes to.
pub trait StreamWriter {
    /// Sends `data` as one chunk and flushes it. Empty data is ignored (it would end the body).
    fn write_chunk(&mut self, data: &[u8]) -> io::Result<()>;
}

/// Anything that turns a request into a response. Called once per request on the
/// connection's coroutine; a panic becomes a 500 for that request only.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Response;

    /// The JSON body of an error the server answers by itself (400 bad framing, 408, 413, 431,
    /// 500 after a panic), so that it can be shaped for the client that sent the request.
    /// `path` is None when the request head could not be read. None keeps the server's default
    /// `{"error":{"message","type"}}`.
    fn server_error_body(&self, _path: Option<&str>, _status: u16, _message: &str) -> Option<Vec<u8>> {
        None
    }
}

impl Response {
    /// A response with a complete body and a content type.
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("content-type".to_string(), content_type.to_string())],
            body: Body::Bytes(body),
        }
    }

    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::bytes(status, "application/json", serde_json::to_vec(value).unwrap_or_default())
    }

    /// A chunked response whose body is written by `writer`.
    pub fn stream(
        status: u16,
        content_type: &str,
        writer: impl FnOnce(&mut dyn StreamWriter) -> io::Result<()> + Send + 'static,
    ) -> Response {
        Response {
            status,
            headers: vec![("content-type".to_string(), content_type.to_string())],
            body: Body::Stream(Box::new(writer)),
        }
    }

    /// Adds a header and returns the response (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// The standard reason phrase for a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        529 => "Overloaded",
        _ => "Unknown",
    }
}
