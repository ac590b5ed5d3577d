//! A tiny blocking HTTP/1.1 client for tests: raw sockets, so tests see exactly what the
//! gateway sends (chunk boundaries and timing included).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A parsed response. For chunked bodies `chunks` keeps each chunk with its arrival time.
#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunks: Vec<(Duration, Vec<u8>)>,
    /// Time from sending the request to the end of the response head.
    pub head_after: Duration,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(header_name, _)| header_name.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh connection and reads the whole response.
pub fn request(address: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TestResponse {
    let (stream, started) = send_request(address, method, path, headers, body);
    read_response(BufReader::new(stream), started, method == "HEAD")
}

/// Sends one request on a fresh connection and returns the socket unread, with the time the
/// request was sent; dropping the socket is a client hanging up.
pub fn send_request(address: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (TcpStream, Instant) {
    let stream = TcpStream::connect(address).expect("connect to the gateway");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut writer = stream.try_clone().unwrap();
    let started = Instant::now();
    writer.write_all(head.as_bytes()).unwrap();
    writer.write_all(body).unwrap();
    (stream, started)
}

/// A response whose chunked body is read one chunk at a time, for tests that act in the
/// middle of a stream (for example hang up after the first event).
pub struct OpenResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
}

impl OpenResponse {
    /// Sends the request and reads the response head.
    pub fn start(address: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> OpenResponse {
        let (stream, _) = send_request(address, method, path, headers, body);
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        OpenResponse { status, headers, reader }
    }

    /// The next chunk of a chunked body; None at the end of the body or of the connection.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        let mut size_line = String::new();
        if self.reader.read_line(&mut size_line).unwrap_or(0) == 0 {
            return None;
        }
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16).ok()?;
        if size == 0 {
            return None;
        }
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).ok()?;
        chunk.truncate(size);
        Some(chunk)
    }

    /// Hangs up: closes both directions of the socket at once.
    pub fn close(self) {
        let _ = self.reader.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

/// A JSON request with optional bearer token.
pub fn json_request(address: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&serde_json::Value>) -> TestResponse {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(authorization) = &authorization {
        headers.push(("authorization", authorization));
    }
    let body = body.map(|value| serde_json::to_vec(value).unwrap()).unwrap_or_default();
    request(address, method, path, &headers, &body)
}

fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("read the status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header line has a colon");
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    (status, headers)
}

fn read_response(mut reader: BufReader<TcpStream>, started: Instant, head_only: bool) -> TestResponse {
    let (status, headers) = read_head(&mut reader);
    let head_after = started.elapsed();
    let mut response = TestResponse { status, headers, body: Vec::new(), chunks: Vec::new(), head_after };
    if head_only || status == 204 || status == 304 {
        return response;
    }
    if response.header("transfer-encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            if reader.read_line(&mut size_line).unwrap_or(0) == 0 {
                break; // The connection closed without the final chunk (a cut stream).
            }
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            if size == 0 {
                let mut trailer = String::new();
                let _ = reader.read_line(&mut trailer);
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk).expect("read a chunk");
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf).expect("read the chunk's CRLF");
            response.body.extend_from_slice(&chunk);
            response.chunks.push((started.elapsed(), chunk));
        }
    } else if let Some(length) = response.header("content-length").and_then(|value| value.parse::<usize>().ok()) {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("read the body");
        response.body = body;
    } else {
        reader.read_to_end(&mut response.body).expect("read the body to the end");
    }
    response
}

/// Splits an SSE body into `(event name, data)` pairs.
pub fn sse_events(body: &[u8]) -> Vec<(Option<String>, String)> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = Some(name.trim().to_string());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
                }
            }
            (event.is_some() || !data.is_empty()).then(|| (event, data.join("\n")))
        })
        .collect()
}
