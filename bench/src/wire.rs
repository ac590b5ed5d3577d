//! HTTP/1.1 framing over a buffered std socket, shared by the bench client and the mock upstream.
//!
//! Only what the benchmark needs: one start line plus the three headers that decide framing
//! (Content-Length, Transfer-Encoding: chunked, Connection), bodies by length, chunked or until
//! close, and every body piece stamped with the instant of the socket read that delivered it, so
//! streaming events can be timed where they arrived rather than where they were parsed.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// Where a buffer starts; it doubles when a head or chunk-size line does not fit.
const INITIAL_BUFFER_BYTES: usize = 16 * 1024;
/// A head or chunk-size line longer than this is treated as a broken peer.
const MAX_LINE_BUFFER_BYTES: usize = 1024 * 1024;

/// A request or response head reduced to what framing and routing need.
#[derive(Debug)]
pub struct Head {
    /// `POST /v1/chat/completions HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start_line: String,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// True for `Connection: close`, and for HTTP/1.0 without `Connection: keep-alive`.
    pub connection_close: bool,
}

impl Head {
    /// The status code of a response head (0 when the start line is malformed).
    pub fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// How the body of a request with this head is framed: a request without a length has none.
    pub fn request_framing(&self) -> BodyFraming {
        if self.chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::Length(self.content_length.unwrap_or(0))
        }
    }

    /// How the body of a response with this head is framed: without a length it runs to close.
    pub fn response_framing(&self) -> BodyFraming {
        if self.chunked {
            BodyFraming::Chunked
        } else if let Some(length) = self.content_length {
            BodyFraming::Length(length)
        } else {
            BodyFraming::UntilClose
        }
    }
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Length(u64),
    Chunked,
    UntilClose,
}

/// How reading a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The whole body was read; the connection is positioned at the next message.
    Complete,
    /// The sink asked to stop; the rest of the body is still unread on the socket.
    StoppedEarly,
}

/// A TCP stream (or a TLS session over one) with a read buffer that survives across messages (keep-alive, pipelining).
pub struct BufferedSocket<S = TcpStream> {
    stream: S,
    buffer: Vec<u8>,
    /// Unconsumed bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
    /// When the latest successful read returned; every byte in the buffer arrived by then.
    last_read_at: Instant,
}

impl<S: Read + Write> BufferedSocket<S> {
    pub fn new(stream: S) -> BufferedSocket<S> {
        BufferedSocket {
            stream,
            buffer: vec![0; INITIAL_BUFFER_BYTES],
            start: 0,
            end: 0,
            last_read_at: Instant::now(),
        }
    }

    /// Writes a whole message (or one streaming frame) with a single call, so with TCP_NODELAY
    /// each frame leaves as it is written and is never split across an artificial pause.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next head. `Ok(None)` means the peer closed cleanly between messages, which
    /// is how a keep-alive connection normally ends.
    pub fn read_head(&mut self) -> io::Result<Option<Head>> {
        loop {
            if let Some(head_length) = find(&self.buffer[self.start..self.end], b"\r\n\r\n") {
                let head_bytes = &self.buffer[self.start..self.start + head_length];
                let head = parse_head(head_bytes)?;
                self.start += head_length + 4;
                return Ok(Some(head));
            }
            let at_message_start = self.start == self.end;
            if self.fill()? == 0 {
                if at_message_start {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a message head",
                ));
            }
        }
    }

    /// Reads a body, handing each piece to `sink` with the instant its bytes arrived. The sink
    /// returns false to stop early (the rest stays unread and the connection is then unusable
    /// for further messages).
    pub fn read_body(
        &mut self,
        framing: BodyFraming,
        sink: &mut dyn FnMut(&[u8], Instant) -> bool,
    ) -> io::Result<BodyEnd> {
        match framing {
            BodyFraming::Length(length) => self.read_length_body(length, sink),
            BodyFraming::Chunked => self.read_chunked_body(sink),
            BodyFraming::UntilClose => self.read_until_close(sink),
        }
    }

    /// Reads a whole body into memory, refusing bodies larger than `limit`.
    pub fn read_body_to_vec(&mut self, framing: BodyFraming, limit: usize) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut too_large = false;
        self.read_body(framing, &mut |piece, _| {
            if body.len() + piece.len() > limit {
                too_large = true;
                return false;
            }
            body.extend_from_slice(piece);
            true
        })?;
        if too_large {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
        }
        Ok(body)
    }

    fn read_length_body(
        &mut self,
        length: u64,
        sink: &mut dyn FnMut(&[u8], Instant) -> bool,
    ) -> io::Result<BodyEnd> {
        let mut remaining = length;
        while remaining > 0 {
            if self.start == self.end && self.fill()? == 0 {
                return Err(unexpected_eof("connection closed inside a body"));
            }
            let available = (self.end - self.start) as u64;
            let take = available.min(remaining) as usize;
            let keep_going = sink(
                &self.buffer[self.start..self.start + take],
                self.last_read_at,
            );
            self.start += take;
            remaining -= take as u64;
            if !keep_going {
                return Ok(BodyEnd::StoppedEarly);
            }
        }
        Ok(BodyEnd::Complete)
    }

    fn read_chunked_body(
        &mut self,
        sink: &mut dyn FnMut(&[u8], Instant) -> bool,
    ) -> io::Result<BodyEnd> {
        loop {
            let size_line = self.read_line()?;
            // Chunk extensions (`;name=value`) are legal and ignored.
            let size_text = size_line.split(';').next().unwrap_or("").trim();
            let chunk_size = u64::from_str_radix(size_text, 16).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "malformed chunk size line")
            })?;
            if chunk_size == 0 {
                // Trailer fields, if any, end with an empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(BodyEnd::Complete);
            }
            if self.read_length_body(chunk_size, sink)? == BodyEnd::StoppedEarly {
                return Ok(BodyEnd::StoppedEarly);
            }
            if !self.read_line()?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk data not followed by CRLF",
                ));
            }
        }
    }

    fn read_until_close(
        &mut self,
        sink: &mut dyn FnMut(&[u8], Instant) -> bool,
    ) -> io::Result<BodyEnd> {
        loop {
            if self.start < self.end {
                let keep_going = sink(&self.buffer[self.start..self.end], self.last_read_at);
                self.start = self.end;
                if !keep_going {
                    return Ok(BodyEnd::StoppedEarly);
                }
            }
            if self.fill()? == 0 {
                return Ok(BodyEnd::Complete);
            }
        }
    }

    /// One line without its CRLF (a bare LF is accepted too).
    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(newline) = find(&self.buffer[self.start..self.end], b"\n") {
                let line = &self.buffer[self.start..self.start + newline];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let text = String::from_utf8_lossy(line).into_owned();
                self.start += newline + 1;
                return Ok(text);
            }
            if self.fill()? == 0 {
                return Err(unexpected_eof("connection closed inside a line"));
            }
        }
    }

    /// Reads more bytes after the unconsumed ones; returns 0 at end of stream. Consumed bytes
    /// are discarded first and the buffer grows only when a single line does not fit.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buffer.len() {
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buffer.len() < MAX_LINE_BUFFER_BYTES {
                let doubled = self.buffer.len() * 2;
                self.buffer.resize(doubled, 0);
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "head or line longer than the buffer limit",
                ));
            }
        }
        let count = self.stream.read(&mut self.buffer[self.end..])?;
        if count > 0 {
            self.end += count;
            self.last_read_at = Instant::now();
        }
        Ok(count)
    }
}

impl BufferedSocket<TcpStream> {
    /// Reads and discards whatever has arrived, without waiting, and says whether the peer
    /// has closed the connection (end of stream or a reset) in the meantime. `tail` receives
    /// the last bytes seen (including unread buffered ones), to show why a peer closed.
    pub fn discard_available_and_check_closed(&mut self, tail: &mut Vec<u8>) -> bool {
        const TAIL_BYTES: usize = 240;
        let mut keep_tail = |bytes: &[u8]| {
            tail.extend_from_slice(bytes);
            let excess = tail.len().saturating_sub(TAIL_BYTES);
            tail.drain(..excess);
        };
        keep_tail(&self.buffer[self.start..self.end]);
        if self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let mut closed = false;
        // Bounded: a held stream delivers a few hundred bytes per 100 ms.
        for _ in 0..1024 {
            self.start = 0;
            self.end = 0;
            match self.stream.read(&mut self.buffer) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(count) => keep_tail(&self.buffer[..count]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let _ = self.stream.set_nonblocking(false);
        closed
    }
}

fn parse_head(bytes: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or("").to_string();
    // The version is the first word of a response and the last word of a request.
    let is_http10 = start_line.starts_with("HTTP/1.0") || start_line.ends_with("HTTP/1.0");
    let mut head = Head {
        start_line,
        content_length: None,
        chunked: false,
        connection_close: is_http10,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = value.parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "malformed Content-Length")
            })?;
            head.content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                head.connection_close = true;
            } else if value.contains("keep-alive") {
                head.connection_close = false;
            }
        }
    }
    Ok(head)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn unexpected_eof(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, message.to_string())
}

/// Frames `payload` as one chunk of a chunked body.
pub fn chunk_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 12);
    frame.extend_from_slice(format!("{:x}\r\n", payload.len()).as_bytes());
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\n");
    frame
}

/// The last chunk of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Counts server-sent events in a byte stream that arrives in arbitrary pieces: an event ends
/// at a blank line after at least one non-blank line (LF or CRLF line endings alike).
#[derive(Debug, Default)]
pub struct SseEventCounter {
    /// Whether the current line has any byte other than CR so far.
    line_has_content: bool,
    /// Whether the event being read has at least one non-blank line.
    event_has_content: bool,
}

impl SseEventCounter {
    /// Feeds one piece and returns how many events it completed.
    pub fn feed(&mut self, piece: &[u8]) -> usize {
        let mut completed = 0;
        for &byte in piece {
            match byte {
                b'\n' => {
                    if self.line_has_content {
                        self.event_has_content = true;
                    } else if self.event_has_content {
                        completed += 1;
                        self.event_has_content = false;
                    }
                    self.line_has_content = false;
                }
                b'\r' => {}
                _ => self.line_has_content = true,
            }
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_counter_counts_events_split_at_every_byte() {
        let stream = b"data: {\"a\":1}\n\ndata: x\r\n\r\nevent: e\ndata: y\n\n\n\ndata: [DONE]\n\n";
        for split in 0..=stream.len() {
            let mut counter = SseEventCounter::default();
            let (first, second) = stream.split_at(split);
            let completed = counter.feed(first) + counter.feed(second);
            // The extra blank lines after the third event do not make an event of their own.
            assert_eq!(completed, 4, "split at byte {split}");
        }
    }

    #[test]
    fn response_heads_parse_framing() {
        let chunked = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").unwrap();
        assert_eq!(chunked.status(), 200);
        assert_eq!(chunked.response_framing(), BodyFraming::Chunked);
        let sized =
            parse_head(b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\nConnection: close")
                .unwrap();
        assert_eq!(sized.status(), 404);
        assert_eq!(sized.response_framing(), BodyFraming::Length(12));
        assert!(sized.connection_close);
        let unframed = parse_head(b"HTTP/1.0 200 OK").unwrap();
        assert_eq!(unframed.response_framing(), BodyFraming::UntilClose);
        assert!(unframed.connection_close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x").is_err());
    }
}
