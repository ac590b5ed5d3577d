//! One client connection: reads requests in order (keep-alive and pipelining), enforces the
//! limits and timeouts, calls the handler once per request and writes its response.
//!
//! Each request's body is read completely before the handler runs, so whatever the handler
//! does, the next request starts exactly where this one ended. Any framing error closes the
//! connection, because after it we no longer know where the next request would start.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use may::net::TcpStream;

use crate::http::admission::{BodyReservation, ConnectionSlot, WaitingForHead};
use crate::http::chunked::{ChunkedDecoder, ChunkedError};
use crate::http::head::{BodyFraming, HeadError, RequestHead, parse_request_head};
use crate::http::read_buffer::ReadBuffer;
use crate::http::stack_pages::StackEntry;
use crate::http::response_writer::{
    ResponseContext, ResponseOutcome, error_response_bytes, write_response,
};
use crate::http::server::{ServerLimits, SharedState};
use crate::http::{Body, ClientProbe, Request};
use crate::may_io::SteadyTcpStream;

/// Socket reads go into the connection buffer this many bytes at a time.
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// The first read of a new connection goes to the stack, at most this many bytes.
const FIRST_READ_BYTES: usize = 2 * 1024;
/// A Content-Length body buffer starts at most this large and grows as data arrives, so a
/// client announcing a huge body cannot make us allocate it up front.
const INITIAL_BODY_CAPACITY: usize = 1024 * 1024;
/// After an error response, how long we keep reading (and discarding) what the client still
/// sends, so that closing does not reset the connection before the client has read the response.
const LINGER_DURATION: Duration = Duration::from_secs(1);
/// How many bytes that lingering read discards at most.
const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// The 408 message when a body falls behind the minimum pace.
const BODY_TOO_SLOW: &str = "request body arrived too slowly";
/// The 503 message when the listener's budget of buffered request bodies is spent.
const BODY_BUDGET_SPENT: &str = "the gateway is holding too many request bodies at once; retry shortly";

/// Why a connection stops.
enum ConnectionEnd {
    /// Answer with this error status and message, then close.
    Reject(u16, &'static str),
    /// Close without answering: the client went away, stalled in a body, or idled out.
    Drop,
}

impl From<HeadError> for ConnectionEnd {
    fn from(error: HeadError) -> ConnectionEnd {
        ConnectionEnd::Reject(error.status, error.message)
    }
}

/// Serves every request on `stream` until the connection ends.
/// `slot` is the connection's place under the cap, given back when this returns; `waiting`
/// marks it as waiting for its first head (evictable) and must be dropped before the socket.
pub fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: &SharedState, slot: ConnectionSlot, waiting: WaitingForHead) {
    let stack_entry = StackEntry::here();
    let _slot = slot;
    // Small responses and SSE events must leave at once rather than wait for Nagle's algorithm.
    if stream.set_nodelay(true).is_err()
        || stream
            .set_write_timeout(Some(shared.limits.write_timeout))
            .is_err()
    {
        drop(waiting);
        return;
    }
    let mut connection = Connection {
        first_head_wait: Some(waiting),
        stream: SteadyTcpStream(stream),
        peer,
        buffer: ReadBuffer::default(),
        read_timeout: None,
        current_path: None,
        accepted_at: Instant::now(),
        requests_read: 0,
        shared,
        stack_entry,
    };
    match connection.serve_requests() {
        ConnectionEnd::Reject(status, message) => {
            let custom_body =
                shared.handler.server_error_body(connection.current_path.as_deref(), status, message);
            if connection
                .stream
                .write_all(&error_response_bytes(status, message, custom_body))
                .is_ok()
            {
                connection.close_gracefully();
            }
        }
        ConnectionEnd::Drop => {}
    }
    stack_entry.release_at_connection_end(connection.accepted_at.elapsed());
}

struct Connection<'shared> {
    /// The eviction mark set at admission, until the first head arrives. Declared before the
    /// stream so that it is dropped first: an evictable entry must never outlive its socket.
    first_head_wait: Option<WaitingForHead>,
    /// Reads and writes retry may's spurious errors: a new connection's first read used to fail
    /// with another operation's `EINPROGRESS` under load and close the client unanswered.
    stream: SteadyTcpStream,
    peer: SocketAddr,
    /// Bytes received but not consumed yet: the start of the next request, possibly more.
    buffer: ReadBuffer,
    /// The read timeout currently set on the socket, to skip redundant system calls.
    read_timeout: Option<Duration>,
    /// The path of the request being read or served, for shaping a server error response.
    current_path: Option<String>,
    /// The first request's head must arrive within the head timeout of this instant.
    accepted_at: Instant,
    requests_read: u64,
    shared: &'shared SharedState,
    /// The top of this connection's coroutine stack (`stack_pages`).
    stack_entry: StackEntry,
}

impl<'shared> Connection<'shared> {
    /// The request loop; returns how the connection ends.
    fn serve_requests(&mut self) -> ConnectionEnd {
        loop {
            if self.shared.stopping.load(Ordering::Acquire) {
                return ConnectionEnd::Drop;
            }
            self.current_path = None;
            let head = match self.read_head() {
                Ok(head) => head,
                Err(end) => return end,
            };
            self.current_path = Some(head.path.clone());
            // The reservation holds the body's bytes against the listener's budget until the
            // response has been written.
            let (body, _body_reservation) = match self.read_body(&head) {
                Ok(body) => body,
                Err(end) => return end,
            };
            let context = ResponseContext {
                is_head_request: head.method == "HEAD",
                is_http_1_0: head.minor_version == 0,
                keep_alive: head.keep_alive && !self.shared.stopping.load(Ordering::Acquire),
                stack_entry: self.stack_entry,
            };
            let request = Request {
                method: head.method,
                path: head.path,
                query: head.query,
                headers: head.headers,
                body,
                peer: self.peer,
                client: ClientProbe::for_socket(self.stream.as_raw_fd()),
            };
            let (method, path) = (request.method.clone(), request.path.clone());
            let handler = &self.shared.handler;
            let Ok(response) = catch_unwind(AssertUnwindSafe(|| handler.handle(request))) else {
                log::error!("handler panicked on {method} {path}; answering 500");
                return ConnectionEnd::Reject(500, "internal error");
            };
            if matches!(response.body, Body::Stream(_)) {
                // Nothing is read from the client while a stream is sent, and a stream may be
                // held open for minutes: its connection need not keep a read buffer meanwhile.
                self.buffer.release_when_empty();
            }
            match write_response(&mut self.stream, response, context) {
                ResponseOutcome::Sent { keep_alive: true } => {}
                ResponseOutcome::Sent { keep_alive: false } => {
                    self.close_gracefully();
                    return ConnectionEnd::Drop;
                }
                ResponseOutcome::Broken => return ConnectionEnd::Drop,
                ResponseOutcome::PanickedBeforeWriting => {
                    log::error!("streaming body panicked on {method} {path}; answering 500");
                    return ConnectionEnd::Reject(500, "internal error");
                }
            }
            if self.buffer.is_empty() {
                // A large request may have grown the buffer; do not keep that memory while idle.
                self.buffer.shrink_when_empty(4 * READ_CHUNK_BYTES, READ_CHUNK_BYTES);
            }
            // Other connections on this worker run before this one reads again. With requests
            // buffered (pipelined), reading them never parks, and coroutines are not preempted.
            // Without, the client cannot have sent its next request in the microseconds since
            // the answer left: a read now would only fail, a system call spent before the
            // coroutine parks, where under load the request has usually arrived by the time
            // the others have run.
            may::coroutine::yield_now();
        }
    }

    /// Waits for the next request and reads its head, leaving the bytes after it buffered.
    /// While it waits, the connection may be evicted to make room for a new one.
    fn read_head(&mut self) -> Result<RequestHead, ConnectionEnd> {
        let shared = self.shared;
        let limits = shared.limits;
        let _waiting = match self.first_head_wait.take() {
            Some(waiting) => waiting,
            None => shared.connections.wait_for_head(self.stream.as_raw_fd()),
        };
        self.requests_read += 1;
        // RFC 9112 section 2.2: empty lines before a request line are ignored (some clients
        // send a CRLF after a POST body).
        self.discard_leading_empty_lines();
        // A new connection must send its whole first head within the head timeout of the
        // accept, so that connecting and saying nothing holds a slot no longer than trickling.
        let first_request = self.requests_read == 1;
        let mut deadline = first_request.then(|| self.accepted_at + limits.request_head_timeout);
        // Later requests wait in two steps: `release_idle_memory_after`, then, if nothing came,
        // the rest of the idle timeout with the connection's memory given back.
        let mut idle_wait = IdleWait::new(limits.idle_timeout, limits.release_idle_memory_after);
        while self.buffer.is_empty() {
            let wait = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => idle_wait.next_wait(),
            };
            if wait.is_zero() {
                return Err(ConnectionEnd::Drop);
            }
            match self.fill_buffer(wait) {
                Ok(0) => return Err(ConnectionEnd::Drop),
                Ok(_) => self.discard_leading_empty_lines(),
                Err(error) if is_timeout(&error) && deadline.is_none() && idle_wait.in_first_step() => {
                    self.release_idle_memory();
                    idle_wait.enter_second_step();
                }
                Err(_) => return Err(ConnectionEnd::Drop),
            }
        }
        // Later heads must arrive in full within the head timeout of their first byte, so a
        // client trickling bytes cannot hold the connection open forever.
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + limits.request_head_timeout);
        let mut scan_from = 0;
        loop {
            let (head_end, next_scan_from) = find_head_end(self.buffer.data(), scan_from);
            scan_from = next_scan_from;
            if let Some(head_end) = head_end {
                if head_end > limits.max_head_bytes {
                    return Err(ConnectionEnd::Reject(431, "request head is too large"));
                }
                if let Some((head, head_length)) =
                    parse_request_head(&self.buffer.data()[..head_end], limits.max_header_count)?
                {
                    self.buffer.consume(head_length);
                    return Ok(head);
                }
            }
            if self.buffer.len() > limits.max_head_bytes {
                return Err(ConnectionEnd::Reject(431, "request head is too large"));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ConnectionEnd::Reject(408, "request head timed out"));
            }
            match self.fill_buffer(remaining) {
                Ok(0) => return Err(ConnectionEnd::Drop),
                Ok(_) => {}
                Err(error) if is_timeout(&error) => {
                    return Err(ConnectionEnd::Reject(408, "request head timed out"));
                }
                Err(_) => return Err(ConnectionEnd::Drop),
            }
        }
    }

    /// Reads the whole body of the request whose head was just read.
    /// Returns it with its reservation against the listener's body budget.
    fn read_body(&mut self, head: &RequestHead) -> Result<(Vec<u8>, BodyReservation<'shared>), ConnectionEnd> {
        let shared = self.shared;
        let max_body_bytes = shared.limits.max_body_bytes;
        // Refused before a byte of the body is read: an announced size costs us nothing.
        if let BodyFraming::Length(length) = head.body_framing
            && length > max_body_bytes as u64
        {
            return Err(ConnectionEnd::Reject(413, "request body is too large"));
        }
        let mut reservation = shared.body_budget.empty_reservation();
        if let BodyFraming::Length(length) = head.body_framing
            && !reservation.grow_to(length as usize)
        {
            return Err(ConnectionEnd::Reject(503, BODY_BUDGET_SPENT));
        }
        if head.expects_continue && head.body_framing != BodyFraming::Empty {
            // Clients that sent `Expect: 100-continue` hold the body back until told to go on.
            if self
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .is_err()
            {
                return Err(ConnectionEnd::Drop);
            }
        }
        let mut pace = BodyPace::new(&shared.limits);
        let body = match head.body_framing {
            BodyFraming::Empty => Vec::new(),
            // The check above bounds the length by max_body_bytes, a usize.
            BodyFraming::Length(length) => self.read_sized_body(length as usize, &mut pace)?,
            BodyFraming::Chunked => self.read_chunked_body(&mut pace, &mut reservation)?,
        };
        Ok((body, reservation))
    }

    fn read_sized_body(&mut self, length: usize, pace: &mut BodyPace) -> Result<Vec<u8>, ConnectionEnd> {
        let mut body = Vec::with_capacity(length.min(INITIAL_BODY_CAPACITY));
        let buffered = length.min(self.buffer.len());
        body.extend_from_slice(&self.buffer.data()[..buffered]);
        self.buffer.consume(buffered);
        while body.len() < length {
            let timeout = pace.next_read_timeout(body.len())?;
            self.set_read_timeout(timeout).map_err(|_| ConnectionEnd::Drop)?;
            let filled = body.len();
            let wanted = (length - filled).min(64 * 1024);
            body.resize(filled + wanted, 0);
            match self.stream.read(&mut body[filled..]) {
                Ok(received) if received > 0 => body.truncate(filled + received),
                // A body too slow for the minimum pace is told so; one that stops arriving
                // or a vanished client just ends the connection: the client has no use for a
                // response to half a request.
                Err(error) if is_timeout(&error) => return Err(pace.timed_out(timeout)),
                _ => return Err(ConnectionEnd::Drop),
            }
        }
        Ok(body)
    }

    fn read_chunked_body(&mut self, pace: &mut BodyPace, reservation: &mut BodyReservation<'_>) -> Result<Vec<u8>, ConnectionEnd> {
        let limits = self.shared.limits;
        let mut decoder = ChunkedDecoder::new(limits.max_body_bytes, limits.max_head_bytes);
        let mut body = Vec::new();
        let mut received = 0;
        loop {
            let consumed =
                decoder
                    .decode(self.buffer.data(), &mut body)
                    .map_err(|error| match error {
                        ChunkedError::Malformed(message) => ConnectionEnd::Reject(400, message),
                        ChunkedError::TooLarge => {
                            ConnectionEnd::Reject(413, "request body is too large")
                        }
                    })?;
            self.buffer.consume(consumed);
            if !reservation.grow_to(body.len()) {
                return Err(ConnectionEnd::Reject(503, BODY_BUDGET_SPENT));
            }
            if decoder.is_done() {
                return Ok(body);
            }
            let timeout = pace.next_read_timeout(received)?;
            match self.fill_buffer(timeout) {
                Ok(0) => return Err(ConnectionEnd::Drop),
                Ok(count) => received += count,
                Err(error) if is_timeout(&error) => return Err(pace.timed_out(timeout)),
                Err(_) => return Err(ConnectionEnd::Drop),
            }
        }
    }

    /// Gives back what the last request left this connection holding while it waits for the
    /// next: the stack pages that request went down to (about 40 KiB: parsing, routing, the
    /// upstream call) and the read buffer, and the free pages the worker's heap kept from the
    /// request (`allocator::collect_this_threads_free_memory`). An SDK's or agent's pooled
    /// connection can sit idle for minutes between calls, and many such connections would each
    /// keep that memory.
    #[inline(never)]
    fn release_idle_memory(&mut self) {
        self.buffer.release_when_empty();
        self.stack_entry.release_deeper_pages();
        crate::allocator::collect_this_threads_free_memory();
    }

    /// Reads once from the socket, appending to the buffer; returns the byte count (0 at EOF).
    fn fill_buffer(&mut self, timeout: Duration) -> io::Result<usize> {
        self.set_read_timeout(timeout)?;
        if !self.buffer.has_storage() {
            // A new connection waits for its first bytes without a heap buffer: thousands of
            // idle connections would otherwise hold 8 KiB each, and the heap keeps much of that
            // memory after they are gone.
            let mut first_bytes = [0u8; FIRST_READ_BYTES];
            let received = self.stream.read(&mut first_bytes)?;
            self.buffer.extend_from_slice(&first_bytes[..received]);
            return Ok(received);
        }
        let received = self.stream.read(self.buffer.spare(READ_CHUNK_BYTES))?;
        self.buffer.commit(received);
        Ok(received)
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        if !crate::util::applied_timeout_fits(self.read_timeout, Some(timeout)) {
            self.stream.set_read_timeout(Some(timeout))?;
            self.read_timeout = Some(timeout);
        }
        Ok(())
    }

    fn discard_leading_empty_lines(&mut self) {
        let empty_line_bytes = self
            .buffer
            .data()
            .iter()
            .take_while(|byte| matches!(byte, b'\r' | b'\n'))
            .count();
        self.buffer.consume(empty_line_bytes);
    }

    /// Closes our side after a final response. Reading on for a moment lets the client receive
    /// the response: closing a socket with unread input makes the kernel send a reset, which
    /// can destroy the response before the client has read it.
    fn close_gracefully(&mut self) {
        if self.stream.shutdown(Shutdown::Write).is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_DURATION.min(self.shared.limits.read_timeout);
        let mut discarded = 0;
        let mut scratch = vec![0u8; READ_CHUNK_BYTES];
        while discarded < LINGER_MAX_BYTES {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || self.set_read_timeout(remaining).is_err() {
                return;
            }
            match self.stream.read(&mut scratch) {
                Ok(0) | Err(_) => return,
                Ok(received) => discarded += received,
            }
        }
    }
}

/// The minimum pace of a request body: every window (the head timeout) must bring at least
/// `min_body_bytes_per_second` times its length in bytes, or the body ends with a 408. Windows
/// rather than an average over the whole body, so that bytes sent fast at first earn no credit
/// for trickling the rest (an average would let a client that sent 60 MiB quickly then hold its
/// connection and its reserved bytes for hours).
struct BodyPace {
    window: Duration,
    bytes_per_window: usize,
    read_timeout: Duration,
    window_started: Instant,
    received_at_window_start: usize,
}

impl BodyPace {
    fn new(limits: &ServerLimits) -> BodyPace {
        let bytes_per_window = (limits.min_body_bytes_per_second as f64 * limits.request_head_timeout.as_secs_f64()) as usize;
        BodyPace {
            window: limits.request_head_timeout,
            bytes_per_window,
            read_timeout: limits.read_timeout,
            window_started: Instant::now(),
            received_at_window_start: 0,
        }
    }

    /// How long the next body read may wait with `received` bytes of the body in so far: the
    /// rest of the current window (a new one starts once it has its bytes), at most the read
    /// timeout. A 408 when a window ended short.
    fn next_read_timeout(&mut self, received: usize) -> Result<Duration, ConnectionEnd> {
        if self.min_pace_is_off() {
            return Ok(self.read_timeout);
        }
        let now = Instant::now();
        if received.saturating_sub(self.received_at_window_start) >= self.bytes_per_window {
            self.window_started = now;
            self.received_at_window_start = received;
        }
        let remaining = (self.window_started + self.window).saturating_duration_since(now);
        if remaining.is_zero() {
            return Err(ConnectionEnd::Reject(408, BODY_TOO_SLOW));
        }
        Ok(remaining.min(self.read_timeout))
    }

    /// How a body read that waited `timeout` in vain ends the connection: with a 408 when the
    /// window set the timeout (the timer may fire a hair early, so this does not look at the
    /// clock again), silently when the body simply stopped for the read timeout.
    fn timed_out(&self, timeout: Duration) -> ConnectionEnd {
        if !self.min_pace_is_off() && timeout < self.read_timeout {
            ConnectionEnd::Reject(408, BODY_TOO_SLOW)
        } else {
            ConnectionEnd::Drop
        }
    }

    fn min_pace_is_off(&self) -> bool {
        self.bytes_per_window == 0
    }
}

/// Looks for the empty line that ends a head (`\n\r\n` or `\n\n`), scanning from `scan_from`.
/// Returns the end of the head if found, and where the next scan should start.
pub(crate) fn find_head_end(buffer: &[u8], scan_from: usize) -> (Option<usize>, usize) {
    let mut position = scan_from;
    while let Some(offset) = memchr::memchr(b'\n', &buffer[position..]) {
        let line_feed = position + offset;
        match (buffer.get(line_feed + 1), buffer.get(line_feed + 2)) {
            (Some(b'\n'), _) => return (Some(line_feed + 2), line_feed + 2),
            (Some(b'\r'), Some(b'\n')) => return (Some(line_feed + 3), line_feed + 3),
            // The bytes after this line feed have not arrived yet: look here again next time.
            (None, _) | (Some(b'\r'), None) => return (None, line_feed),
            _ => position = line_feed + 1,
        }
    }
    (None, buffer.len())
}

/// The wait of a keep-alive connection for its next request: `first_step` (the server's
/// `release_idle_memory_after`) first, then the rest of the idle timeout, so that the whole
/// wait is the idle timeout.
struct IdleWait {
    idle_timeout: Duration,
    first_step: Duration,
    second_step_started: Option<Instant>,
}

impl IdleWait {
    fn new(idle_timeout: Duration, release_idle_memory_after: Duration) -> IdleWait {
        IdleWait { idle_timeout, first_step: release_idle_memory_after.min(idle_timeout), second_step_started: None }
    }

    fn in_first_step(&self) -> bool {
        self.second_step_started.is_none()
    }

    fn enter_second_step(&mut self) {
        self.second_step_started = Some(Instant::now());
    }

    /// How long the next read may wait. The first step is the same for every request, so a
    /// busy connection keeps the socket's timeout as it is (setting it is a system call).
    fn next_wait(&self) -> Duration {
        match self.second_step_started {
            None => self.first_step,
            Some(started) => (self.idle_timeout - self.first_step).saturating_sub(started.elapsed()),
        }
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody", 0),
            (Some(24), 24)
        );
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\nA: b\n\nbody", 0),
            (Some(21), 21)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), (None, 21));
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r", 0),
            (None, 21)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b", 0), (None, 20));
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\n", 21),
            (Some(24), 24)
        );
    }
}
