//! The bench's HTTP/1.1 client: one keep-alive connection per caller, requests prebuilt as
//! bytes so the timed path is one write and one framed read, and SSE streams timed per event.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::wire::{BodyEnd, BufferedSocket, SseEventCounter};

/// Caps a non-streaming response body; the mock's bodies are a few hundred bytes.
const MAX_RESPONSE_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A complete non-streaming response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// What a streamed response delivered, with arrival times.
#[derive(Debug)]
pub struct StreamOutcome {
    pub status: u16,
    /// Arrival instant of each completed SSE event, in order.
    pub event_arrivals: Vec<Instant>,
    /// The body of a non-200 answer, for the error message.
    pub error_body: Vec<u8>,
}

/// A keep-alive client connection. After an error or a `Connection: close` answer it must be
/// dropped; `is_reusable` says so.
pub struct ClientConnection {
    socket: BufferedSocket,
    reusable: bool,
}

impl ClientConnection {
    /// Connects with TCP_NODELAY (a request is one write, but a stalled ACK must never be what
    /// we measure) and a read/write timeout so no call can hang the run.
    pub fn connect(address: SocketAddr, io_timeout: Duration) -> io::Result<ClientConnection> {
        let stream = TcpStream::connect_timeout(&address, io_timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(io_timeout))?;
        stream.set_write_timeout(Some(io_timeout))?;
        Ok(ClientConnection {
            socket: BufferedSocket::new(stream),
            reusable: true,
        })
    }

    pub fn is_reusable(&self) -> bool {
        self.reusable
    }

    /// For a held stream: drops what has arrived and, when the server has closed the
    /// connection, returns the last bytes it sent. The connection is not reusable afterwards.
    pub fn closed_by_server(&mut self) -> Option<Vec<u8>> {
        self.reusable = false;
        let mut tail = Vec::new();
        self.socket
            .discard_available_and_check_closed(&mut tail)
            .then_some(tail)
    }

    /// Sends a prebuilt request and reads the whole response.
    pub fn exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        self.reusable = false;
        self.socket.write_all(request)?;
        let head = self.read_response_head()?;
        let body = self
            .socket
            .read_body_to_vec(head.response_framing(), MAX_RESPONSE_BODY_BYTES)?;
        self.reusable = !head.connection_close;
        Ok(Response {
            status: head.status(),
            body,
        })
    }

    /// Sends a prebuilt streaming request and times its SSE events. `keep_reading` sees the
    /// number of events so far and returns false to stop early (the connection then stays
    /// open with the rest of the stream unread, which is how streams are held open).
    pub fn stream(
        &mut self,
        request: &[u8],
        keep_reading: &mut dyn FnMut(usize) -> bool,
    ) -> io::Result<StreamOutcome> {
        self.reusable = false;
        self.socket.write_all(request)?;
        let head = self.read_response_head()?;
        let status = head.status();
        if status != 200 {
            let error_body = self
                .socket
                .read_body_to_vec(head.response_framing(), MAX_RESPONSE_BODY_BYTES)?;
            self.reusable = !head.connection_close;
            return Ok(StreamOutcome {
                status,
                event_arrivals: Vec::new(),
                error_body,
            });
        }
        let mut counter = SseEventCounter::default();
        let mut event_arrivals = Vec::new();
        let end = self
            .socket
            .read_body(head.response_framing(), &mut |piece, arrived_at| {
                let completed = counter.feed(piece);
                for _ in 0..completed {
                    event_arrivals.push(arrived_at);
                }
                completed == 0 || keep_reading(event_arrivals.len())
            })?;
        self.reusable = end == BodyEnd::Complete && !head.connection_close;
        Ok(StreamOutcome {
            status,
            event_arrivals,
            error_body: Vec::new(),
        })
    }

    fn read_response_head(&mut self) -> io::Result<crate::wire::Head> {
        self.socket.read_head()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })
    }
}

/// Builds a request with a JSON body (or none) as the exact bytes to send.
pub fn build_request(
    method: &str,
    address: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    json_body: Option<&[u8]>,
) -> Vec<u8> {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("Authorization", value.as_str()))
        .collect();
    build_request_with_headers(method, address, path, &headers, json_body)
}

/// Like `build_request`, with the auth (or any other) headers given by name and value, for
/// protocols that do not use a bearer token (`x-api-key`, `x-goog-api-key`).
pub fn build_request_with_headers(
    method: &str,
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    json_body: Option<&[u8]>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = json_body.unwrap_or(b"");
    if json_body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if json_body.is_some() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// One request on a fresh connection, for admin calls and health checks.
pub fn one_shot(
    address: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json_body: Option<&[u8]>,
    io_timeout: Duration,
) -> io::Result<Response> {
    let request = build_request(method, address, path, bearer, json_body);
    ClientConnection::connect(address, io_timeout)?.exchange(&request)
}
