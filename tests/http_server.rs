//! Raw-socket tests of the HTTP/1.1 server: every rule is checked by writing bytes to a real
//! 127.0.0.1 socket and reading back the response bytes (or the connection closing).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use octopus::http::server::{Server, ServerLimits};
use octopus::http::{Handler, Request, Response};

/// Upper bound for any single wait in these tests, so a broken server fails a test instead of
/// hanging it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn init_runtime() {
    static INIT: Once = Once::new();
    // The application uses 0x8000 words (256 KiB) per coroutine; the stack-depth test checks
    // that this is enough.
    INIT.call_once(|| {
        may::config().set_stack_size(0x8000);
    });
}

struct FnHandler<F>(F);

impl<F: Fn(Request) -> Response + Send + Sync + 'static> Handler for FnHandler<F> {
    fn handle(&self, request: Request) -> Response {
        (self.0)(request)
    }
}

fn start_server(
    limits: ServerLimits,
    handler: impl Fn(Request) -> Response + Send + Sync + 'static,
) -> Server {
    init_runtime();
    Server::start("127.0.0.1:0", limits, Arc::new(FnHandler(handler))).expect("server starts")
}

/// Answers `METHOD PATH QUERY BODY` as plain text.
fn echo(request: Request) -> Response {
    let text = format!(
        "{} {} {} {}",
        request.method,
        request.path,
        request.query,
        String::from_utf8_lossy(&request.body)
    );
    Response::bytes(200, "text/plain", text.into_bytes())
}

fn start_echo_server() -> Server {
    start_server(ServerLimits::default(), echo)
}

/// Limits with short timeouts so the timeout tests stay fast.
fn short_timeouts() -> ServerLimits {
    ServerLimits {
        idle_timeout: Duration::from_millis(300),
        read_timeout: Duration::from_millis(300),
        request_head_timeout: Duration::from_millis(300),
        // These tests are about the read timeout; the minimum body pace has its own test
        // (tests/overload.rs).
        min_body_bytes_per_second: 0,
        ..ServerLimits::default()
    }
}

/// The exact bytes `echo` answers with.
fn echo_response(text: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )
}

/// Like `echo_response`, on a connection the server is about to close.
fn echo_response_closing(text: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
}

/// A raw HTTP client that keeps unread bytes between responses.
struct TestClient {
    stream: TcpStream,
    received: Vec<u8>,
}

/// One response as read by `TestClient`.
struct TestResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The response exactly as it came off the wire.
    raw: String,
}

impl TestResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header_name, _)| header_name.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

impl TestClient {
    fn connect(server: &Server) -> TestClient {
        let stream = TcpStream::connect(server.local_addr()).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        TestClient {
            stream,
            received: Vec::new(),
        }
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .expect("write to server");
    }

    /// Reads once more from the socket; returns the number of bytes (0 at EOF or reset).
    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(received) => {
                self.received.extend_from_slice(&chunk[..received]);
                received
            }
            Err(error) if error.kind() == ErrorKind::ConnectionReset => 0,
            Err(error) => panic!("reading from the server failed: {error}"),
        }
    }

    fn read_response(&mut self) -> TestResponse {
        self.read_response_with(false)
    }

    fn read_head_response(&mut self) -> TestResponse {
        self.read_response_with(true)
    }

    fn read_response_with(&mut self, is_head_request: bool) -> TestResponse {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            if let Some((response, length)) = parse_response(&self.received, is_head_request, false)
            {
                self.received.drain(..length);
                return response;
            }
            assert!(Instant::now() < deadline, "no complete response in time");
            if self.fill() == 0 {
                let (response, length) = parse_response(&self.received, is_head_request, true)
                    .unwrap_or_else(|| {
                        panic!(
                            "connection closed mid-response: {:?}",
                            String::from_utf8_lossy(&self.received)
                        )
                    });
                self.received.drain(..length);
                return response;
            }
        }
    }

    /// Asserts that the server sends nothing more and closes the connection.
    fn expect_closed(&mut self) {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while self.fill() > 0 {
            assert!(
                Instant::now() < deadline,
                "the server kept the connection open"
            );
        }
        assert!(
            self.received.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&self.received)
        );
    }

    /// Sends `request` and returns the raw response text, for exact comparisons.
    fn exchange(&mut self, request: &str) -> String {
        self.send(request);
        self.read_response().raw
    }
}

/// Parses one response from the start of `bytes`; `None` if incomplete. With `at_eof`, a body
/// without framing ends at the end of `bytes`.
fn parse_response(
    bytes: &[u8],
    is_head_request: bool,
    at_eof: bool,
) -> Option<(TestResponse, usize)> {
    let mut header_slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut header_slots);
    let head_length = match parsed.parse(bytes).expect("valid response head") {
        httparse::Status::Complete(head_length) => head_length,
        httparse::Status::Partial => return None,
    };
    let status = parsed.code.unwrap();
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|header| {
            (
                header.name.to_string(),
                String::from_utf8_lossy(header.value).to_string(),
            )
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(header_name, _)| header_name.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    };
    let rest = &bytes[head_length..];
    let (body, body_length) =
        if is_head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if header("transfer-encoding").as_deref() == Some("chunked") {
            decode_chunked_response(rest)?
        } else if let Some(length) = header("content-length") {
            let length: usize = length.parse().unwrap();
            if rest.len() < length {
                return None;
            }
            (rest[..length].to_vec(), length)
        } else if at_eof {
            (rest.to_vec(), rest.len())
        } else {
            return None;
        };
    let total = head_length + body_length;
    let raw = String::from_utf8_lossy(&bytes[..total]).to_string();
    Some((
        TestResponse {
            status,
            headers,
            body,
            raw,
        },
        total,
    ))
}

/// Decodes a complete chunked body (no extensions or trailers, which the server never sends).
fn decode_chunked_response(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut position = 0;
    loop {
        let line_end = position
            + bytes[position..]
                .windows(2)
                .position(|window| window == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&bytes[position..line_end]).unwrap(), 16)
                .expect("hex chunk size");
        let data_start = line_end + 2;
        if bytes.len() < data_start + size + 2 {
            return None;
        }
        assert_eq!(
            &bytes[data_start + size..data_start + size + 2],
            b"\r\n",
            "chunk data must end with CRLF"
        );
        position = data_start + size + 2;
        if size == 0 {
            return Some((body, position));
        }
        body.extend_from_slice(&bytes[data_start..data_start + size]);
    }
}

// Rule 1: keep-alive by default for HTTP/1.1, and pipelining.

#[test]
fn keep_alive_is_the_default_for_http_1_1() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    for index in 0..3 {
        let response =
            client.exchange(&format!("GET /item/{index} HTTP/1.1\r\nHost: test\r\n\r\n"));
        assert_eq!(response, echo_response(&format!("GET /item/{index}  ")));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    client.send(
        "GET /first HTTP/1.1\r\nHost: test\r\n\r\n\
         POST /second HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n\r\nbody\
         GET /third?x=1 HTTP/1.1\r\nHost: test\r\n\r\n",
    );
    assert_eq!(client.read_response().raw, echo_response("GET /first  "));
    assert_eq!(
        client.read_response().raw,
        echo_response("POST /second  body")
    );
    assert_eq!(client.read_response().raw, echo_response("GET /third x=1 "));
}

// Rule 2: Connection: close and HTTP/1.0.

#[test]
fn connection_close_from_the_client_closes_after_the_response() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    client.send(
        "GET /a HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n",
    );
    assert_eq!(
        client.read_response().raw,
        echo_response_closing("GET /a  ")
    );
    client.expect_closed();
}

#[test]
fn http_1_0_without_keep_alive_closes_after_the_response() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    client.send("GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(
        client.read_response().raw,
        echo_response_closing("GET /old  ")
    );
    client.expect_closed();
}

#[test]
fn http_1_0_with_keep_alive_is_honoured() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    let keep_alive_response = |text: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{text}",
            text.len()
        )
    };
    for index in 0..2 {
        let response = client.exchange(&format!(
            "GET /old/{index} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert_eq!(
            response,
            keep_alive_response(&format!("GET /old/{index}  "))
        );
    }
}

// Rule 3: request bodies.

#[test]
fn content_length_body_is_read() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    let response = client
        .exchange("POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\nhello world");
    assert_eq!(response, echo_response("POST /upload  hello world"));
}

#[test]
fn chunked_body_is_decoded_ignoring_extensions_and_trailers() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    let request = "POST /chunks HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: ignored\r\n\r\n";
    assert_eq!(
        client.exchange(request),
        echo_response("POST /chunks  hello world")
    );
    // The connection is still in sync after the trailer.
    assert_eq!(
        client.exchange("GET /after HTTP/1.1\r\n\r\n"),
        echo_response("GET /after  ")
    );
}

#[test]
fn expect_100_continue_gets_an_interim_response_before_the_body_is_read() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    client.send(
        "POST /big HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    let interim = client.read_response();
    assert_eq!(interim.raw, "HTTP/1.1 100 Continue\r\n\r\n");
    client.send("12345");
    assert_eq!(
        client.read_response().raw,
        echo_response("POST /big  12345")
    );
}

// Rule 4: ambiguous or malformed framing gets 400 and the connection closes.

/// Sends `request` on a fresh connection and checks for a 400 followed by the close.
fn assert_bad_request_and_close(server: &Server, request: &str) {
    let mut client = TestClient::connect(server);
    client.send(request);
    let response = client.read_response();
    assert_eq!(response.status, 400, "{request:?} got {}", response.raw);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    let error: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    client.expect_closed();
}

#[test]
fn content_length_with_transfer_encoding_gets_400_and_close() {
    let server = start_echo_server();
    assert_bad_request_and_close(
        &server,
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
}

#[test]
fn invalid_content_lengths_get_400_and_close() {
    let server = start_echo_server();
    for content_length_headers in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: five\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 184467440737095516160\r\n",
    ] {
        assert_bad_request_and_close(
            &server,
            &format!("POST / HTTP/1.1\r\n{content_length_headers}\r\nhello"),
        );
    }
}

#[test]
fn transfer_encoding_other_than_chunked_gets_400_and_close() {
    let server = start_echo_server();
    assert_bad_request_and_close(
        &server,
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nxxxx",
    );
    assert_bad_request_and_close(
        &server,
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    );
}

#[test]
fn malformed_chunk_size_gets_400_and_close() {
    let server = start_echo_server();
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "11111111111111111\r\n",
    ] {
        assert_bad_request_and_close(
            &server,
            &format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}"),
        );
    }
}

#[test]
fn malformed_request_head_gets_400_and_close() {
    let server = start_echo_server();
    for request in [
        "GET /\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        "G@T / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n bad-fold\r\n\r\n",
    ] {
        assert_bad_request_and_close(&server, request);
    }
}

// Rule 5: header and body caps.

#[test]
fn too_many_headers_get_431_and_close() {
    let limits = ServerLimits {
        max_header_count: 10,
        ..ServerLimits::default()
    };
    let server = start_server(limits, echo);
    let mut client = TestClient::connect(&server);
    let ten_headers: String = (0..10)
        .map(|index| format!("x-header-{index}: {index}\r\n"))
        .collect();
    assert_eq!(
        client.exchange(&format!("GET /ok HTTP/1.1\r\n{ten_headers}\r\n")),
        echo_response("GET /ok  ")
    );
    client.send(format!(
        "GET /too-many HTTP/1.1\r\n{ten_headers}x-one-more: 1\r\n\r\n"
    ));
    let response = client.read_response();
    assert_eq!(response.status, 431);
    assert_eq!(response.header("connection"), Some("close"));
    client.expect_closed();
}

#[test]
fn too_large_a_head_gets_431_and_close() {
    let limits = ServerLimits {
        max_head_bytes: 1024,
        ..ServerLimits::default()
    };
    let server = start_server(limits, echo);
    // A complete head over the limit.
    let mut client = TestClient::connect(&server);
    client.send(format!(
        "GET / HTTP/1.1\r\nx-big: {}\r\n\r\n",
        "a".repeat(1100)
    ));
    assert_eq!(client.read_response().status, 431);
    client.expect_closed();
    // A head that never ends: the server must not keep buffering it.
    let mut client = TestClient::connect(&server);
    client.send(format!("GET / HTTP/1.1\r\nx-big: {}", "a".repeat(4000)));
    assert_eq!(client.read_response().status, 431);
    client.expect_closed();
}

#[test]
fn content_length_over_the_body_limit_gets_413_without_reading_the_body() {
    let limits = ServerLimits {
        max_body_bytes: 1024,
        ..ServerLimits::default()
    };
    let server = start_server(limits, echo);
    let mut client = TestClient::connect(&server);
    // The client announces a gigabyte and sends only a little of it: the 413 must come anyway.
    client.send(format!(
        "POST / HTTP/1.1\r\nContent-Length: 1073741824\r\n\r\n{}",
        "x".repeat(2000)
    ));
    let response = client.read_response();
    assert_eq!(response.status, 413);
    assert_eq!(response.header("connection"), Some("close"));
    client.expect_closed();
    // A body exactly at the limit is fine.
    let mut client = TestClient::connect(&server);
    let body = "y".repeat(1024);
    let response = client.exchange(&format!(
        "POST /limit HTTP/1.1\r\nContent-Length: 1024\r\n\r\n{body}"
    ));
    assert_eq!(response, echo_response(&format!("POST /limit  {body}")));
}

#[test]
fn chunked_body_over_the_body_limit_gets_413_and_close() {
    let limits = ServerLimits {
        max_body_bytes: 1024,
        ..ServerLimits::default()
    };
    let server = start_server(limits, echo);
    let mut client = TestClient::connect(&server);
    client.send(format!(
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n{}\r\n201\r\n",
        "x".repeat(0x200)
    ));
    let response = client.read_response();
    assert_eq!(response.status, 413);
    client.expect_closed();
}

// Rule 6: idle and read timeouts.

#[test]
fn idle_keep_alive_connection_is_closed_silently() {
    let server = start_server(short_timeouts(), echo);
    let mut client = TestClient::connect(&server);
    assert_eq!(
        client.exchange("GET / HTTP/1.1\r\n\r\n"),
        echo_response("GET /  ")
    );
    let idle_start = Instant::now();
    client.expect_closed();
    let idle_time = idle_start.elapsed();
    assert!(
        idle_time >= Duration::from_millis(250),
        "closed after only {idle_time:?}"
    );
    assert!(
        idle_time < Duration::from_secs(2),
        "closed only after {idle_time:?}"
    );
}

/// A keep-alive connection idle for `release_idle_memory_after` gives back the stack pages its
/// last request went down to, answers its next request as before, and is still closed after the
/// idle timeout in all, not a second later.
#[test]
fn an_idle_keep_alive_connection_gives_back_its_deep_stack_and_keeps_serving() {
    let deepest_address = Arc::new(AtomicUsize::new(0));
    let recorded = deepest_address.clone();
    let limits = ServerLimits {
        idle_timeout: Duration::from_millis(2_500),
        release_idle_memory_after: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    let server = start_server(limits, move |request| {
        if request.path == "/deep" {
            recorded.store(deepest_stack_address(24), Ordering::SeqCst);
        }
        echo(request)
    });
    let mut client = TestClient::connect(&server);
    assert_eq!(client.exchange("GET /deep HTTP/1.1\r\n\r\n"), echo_response("GET /deep  "));
    let deep_page = deepest_address.load(Ordering::SeqCst) & !(page_bytes() - 1);
    assert!(page_is_resident(deep_page), "the page the request went down to is resident right after it");
    std::thread::sleep(Duration::from_millis(1_600));
    assert!(!page_is_resident(deep_page), "a second idle gave the deep stack page back");
    assert_eq!(client.exchange("GET /after HTTP/1.1\r\n\r\n"), echo_response("GET /after  "));
    let idle_start = Instant::now();
    client.expect_closed();
    let idle_time = idle_start.elapsed();
    assert!(
        (Duration::from_millis(2_400)..Duration::from_millis(3_400)).contains(&idle_time),
        "closed after {idle_time:?}, not after the idle timeout of 2.5 s"
    );
}

/// Recursion with a 2 KiB frame per level (48 KiB for 24 levels, deeper than a request's usual
/// frames); returns the address of the deepest frame.
#[inline(never)]
fn deepest_stack_address(levels: u32) -> usize {
    let mut frame = [0u8; 2048];
    frame[levels as usize % 2048] = levels as u8;
    std::hint::black_box(&mut frame);
    if levels == 0 { frame.as_ptr() as usize } else { std::hint::black_box(deepest_stack_address(levels - 1)) }
}

fn page_bytes() -> usize {
    // SAFETY: sysconf only reads a system constant.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("a page size")
}

/// Whether the page at `page_address` is in memory, asked of the kernel with `mincore`.
fn page_is_resident(page_address: usize) -> bool {
    let mut residency = [0u8; 1];
    // SAFETY: the address is page-aligned and lies in a coroutine stack that stays mapped while
    // its connection is open; the vector has the one byte mincore writes for one page.
    let result = unsafe { libc::mincore(page_address as *mut libc::c_void, page_bytes(), residency.as_mut_ptr()) };
    assert_eq!(result, 0, "mincore: {}", std::io::Error::last_os_error());
    residency[0] & 1 == 1
}

#[test]
fn incomplete_head_gets_408_and_close() {
    let server = start_server(short_timeouts(), echo);
    let mut client = TestClient::connect(&server);
    client.send("GET /slow HTTP/1.1\r\nHost: te");
    let response = client.read_response();
    assert_eq!(response.status, 408);
    assert_eq!(response.header("connection"), Some("close"));
    client.expect_closed();
}

#[test]
fn head_trickled_past_the_read_timeout_gets_408() {
    let server = start_server(short_timeouts(), echo);
    let mut client = TestClient::connect(&server);
    // Every byte arrives well within the read timeout, but the head as a whole does not.
    let started = Instant::now();
    for byte in b"GET /slowloris HTTP/1.1\r\nx-a: b"
        .iter()
        .cycle()
        .take(100)
    {
        if client.stream.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(2)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.read_response().status, 408);
    client.expect_closed();
}

#[test]
fn stalled_body_closes_the_connection_silently() {
    let server = start_server(short_timeouts(), echo);
    let mut client = TestClient::connect(&server);
    client.send("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    let started = Instant::now();
    client.expect_closed();
    assert!(started.elapsed() < Duration::from_secs(2));
}

// Rule 7: an ignored body never desynchronizes the connection.

#[test]
fn handler_that_ignores_the_body_does_not_desynchronize_pipelined_requests() {
    let server = start_server(ServerLimits::default(), |request: Request| {
        Response::bytes(
            200,
            "text/plain",
            format!("path={}", request.path).into_bytes(),
        )
    });
    let mut client = TestClient::connect(&server);
    let body_looking_like_a_request = "GET /smuggled HTTP/1.1\r\n\r\n";
    client.send(format!(
        "POST /first HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body_looking_like_a_request}\
         POST /second HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\n{body_looking_like_a_request}\r\n0\r\n\r\n\
         GET /third HTTP/1.1\r\n\r\n",
        body_looking_like_a_request.len()
    ));
    for path in ["/first", "/second", "/third"] {
        assert_eq!(
            client.read_response().body,
            format!("path={path}").into_bytes()
        );
    }
}

// Rule 8: response framing.

#[test]
fn stream_body_is_sent_chunked_and_terminated() {
    let server = start_server(ServerLimits::default(), |_request: Request| {
        Response::stream(200, "text/event-stream", |writer| {
            writer.write_chunk(b"data: one\n\n")?;
            writer.write_chunk(b"")?;
            writer.write_chunk(b"data: two\n\n")
        })
    });
    let mut client = TestClient::connect(&server);
    let expected = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
                    b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n0\r\n\r\n";
    assert_eq!(client.exchange("GET /events HTTP/1.1\r\n\r\n"), expected);
    // The connection stays usable after a stream.
    assert_eq!(client.exchange("GET /events HTTP/1.1\r\n\r\n"), expected);
}

#[test]
fn stream_error_closes_the_connection_without_the_terminator() {
    let server = start_server(ServerLimits::default(), |_request: Request| {
        Response::stream(200, "text/event-stream", |writer| {
            writer.write_chunk(b"partial")?;
            Err(std::io::Error::other("upstream went away"))
        })
    });
    let mut client = TestClient::connect(&server);
    client.send("GET /events HTTP/1.1\r\n\r\n");
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while client.fill() > 0 {
        assert!(Instant::now() < deadline);
    }
    let expected = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n";
    assert_eq!(String::from_utf8_lossy(&client.received), expected);
}

#[test]
fn head_request_gets_headers_only() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    client.send("HEAD /resource HTTP/1.1\r\n\r\n");
    let response = client.read_head_response();
    let body_length = "HEAD /resource  ".len();
    assert_eq!(
        response.raw,
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: {body_length}\r\n\r\n"
        )
    );
    // Nothing of the body follows: the next response starts right away.
    assert_eq!(
        client.exchange("GET /next HTTP/1.1\r\n\r\n"),
        echo_response("GET /next  ")
    );
}

#[test]
fn bodiless_statuses_have_no_body_and_no_server_header_is_added() {
    let server = start_server(ServerLimits::default(), |request: Request| {
        let status = request.path.trim_start_matches('/').parse().unwrap();
        Response::bytes(status, "text/plain", b"ignored".to_vec())
    });
    let mut client = TestClient::connect(&server);
    assert_eq!(
        client.exchange("GET /204 HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 204 No Content\r\ncontent-type: text/plain\r\n\r\n"
    );
    assert_eq!(
        client.exchange("GET /304 HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 304 Not Modified\r\ncontent-type: text/plain\r\n\r\n"
    );
    let response = client.exchange("GET /404 HTTP/1.1\r\n\r\n");
    assert_eq!(
        response,
        "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\nContent-Length: 7\r\n\r\nignored"
    );
}

// Rule 9: TCP_NODELAY on accepted sockets and a listen backlog of 1024. The test process is
// the server process, so the server's sockets can be found in /proc/self/fd and inspected.

fn socket_address(fd: RawFd, peer: bool) -> Option<SocketAddr> {
    // SAFETY: an all-zero sockaddr_in is a valid value for getsockname/getpeername to fill.
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let pointer = (&raw mut address).cast::<libc::sockaddr>();
    // SAFETY: `pointer` and `length` describe a writable sockaddr_in; a descriptor that is not
    // a socket just makes the call fail.
    let result = unsafe {
        if peer {
            libc::getpeername(fd, pointer, &mut length)
        } else {
            libc::getsockname(fd, pointer, &mut length)
        }
    };
    if result != 0 || i32::from(address.sin_family) != libc::AF_INET {
        return None;
    }
    let ip = Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr));
    Some(SocketAddr::V4(SocketAddrV4::new(
        ip,
        u16::from_be(address.sin_port),
    )))
}

/// The socket in this process with this local address and this peer (`None`: not connected,
/// as for a listener).
fn find_socket(local: SocketAddr, peer: Option<SocketAddr>) -> Option<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .find(|&fd| socket_address(fd, false) == Some(local) && socket_address(fd, true) == peer)
}

fn tcp_option(fd: RawFd, option: libc::c_int) -> libc::c_int {
    let mut value: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `length` describe a writable c_int.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            option,
            (&raw mut value).cast(),
            &mut length,
        )
    };
    assert_eq!(result, 0, "getsockopt failed");
    value
}

#[test]
fn accepted_sockets_have_tcp_nodelay_and_the_listen_backlog_is_1024() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    assert_eq!(
        client.exchange("GET / HTTP/1.1\r\n\r\n"),
        echo_response("GET /  ")
    );
    let client_address = client.stream.local_addr().unwrap();
    let accepted = find_socket(server.local_addr(), Some(client_address))
        .expect("the server side of the connection");
    assert_eq!(tcp_option(accepted, libc::TCP_NODELAY), 1);

    let listener = find_socket(server.local_addr(), None).expect("the listening socket");
    // SAFETY: an all-zero tcp_info is a valid value for getsockopt to fill.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `length` describe a writable tcp_info.
    let result = unsafe {
        libc::getsockopt(
            listener,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut length,
        )
    };
    assert_eq!(result, 0);
    // For a listening socket Linux reports the accept backlog in tcpi_sacked; the kernel caps
    // it at net.core.somaxconn.
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(info.tcpi_sacked, 1024.min(somaxconn));
}

// Rule 10: panics become a 500 for that request only.

const INTERNAL_ERROR_BODY: &str =
    r#"{"error":{"message":"internal error","type":"internal_error"}}"#;

fn panicking_server() -> Server {
    start_server(ServerLimits::default(), |request: Request| {
        match request.path.as_str() {
            "/panic" => panic!("handler panic (expected by the test)"),
            "/panic-in-stream" => Response::stream(200, "text/plain", |_| {
                panic!("stream panic (expected by the test)")
            }),
            "/panic-after-output" => Response::stream(200, "text/plain", |writer| {
                writer.write_chunk(b"started")?;
                panic!("late stream panic (expected by the test)")
            }),
            _ => echo(request),
        }
    })
}

fn assert_internal_error_and_close(client: &mut TestClient) {
    let response = client.read_response();
    let expected = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{INTERNAL_ERROR_BODY}",
        INTERNAL_ERROR_BODY.len()
    );
    assert_eq!(response.raw, expected);
    client.expect_closed();
}

#[test]
fn handler_panic_gets_500_and_the_server_keeps_working() {
    let server = panicking_server();
    let mut bystander = TestClient::connect(&server);
    assert_eq!(
        bystander.exchange("GET /before HTTP/1.1\r\n\r\n"),
        echo_response("GET /before  ")
    );
    let mut client = TestClient::connect(&server);
    client.send("GET /panic HTTP/1.1\r\n\r\n");
    assert_internal_error_and_close(&mut client);
    assert_eq!(
        bystander.exchange("GET /after HTTP/1.1\r\n\r\n"),
        echo_response("GET /after  ")
    );
    let mut newcomer = TestClient::connect(&server);
    assert_eq!(
        newcomer.exchange("GET /new HTTP/1.1\r\n\r\n"),
        echo_response("GET /new  ")
    );
}

#[test]
fn stream_panic_before_any_output_gets_500() {
    let server = panicking_server();
    let mut client = TestClient::connect(&server);
    client.send("GET /panic-in-stream HTTP/1.1\r\n\r\n");
    assert_internal_error_and_close(&mut client);
}

#[test]
fn stream_panic_after_output_closes_the_connection() {
    let server = panicking_server();
    let mut client = TestClient::connect(&server);
    client.send("GET /panic-after-output HTTP/1.1\r\n\r\n");
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while client.fill() > 0 {
        assert!(Instant::now() < deadline);
    }
    let received = String::from_utf8_lossy(&client.received);
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    assert!(received.ends_with("\r\n\r\n7\r\nstarted\r\n"), "{received}");
}

// Rule 11: the Request fields.

#[test]
fn request_fields_are_filled_from_the_connection_and_head() {
    let server = start_server(ServerLimits::default(), |request: Request| {
        let description = serde_json::json!({
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "peer": request.peer.to_string(),
            "client_closed": request.client.is_closed(),
            "key": request.query_param("key"),
        });
        Response::json(200, &description)
    });
    let mut client = TestClient::connect(&server);
    client.send("PATCH /v1/things/7?key=a%20b&flag HTTP/1.1\r\nHost: test\r\nX-Mixed-Case: Value With Spaces \r\n\r\n");
    let response = client.read_response();
    let description: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    let expected = serde_json::json!({
        "method": "PATCH",
        "path": "/v1/things/7",
        "query": "key=a%20b&flag",
        "headers": [["host", "test"], ["x-mixed-case", "Value With Spaces"]],
        "peer": client.stream.local_addr().unwrap().to_string(),
        "client_closed": false,
        "key": "a b",
    });
    assert_eq!(description, expected);
}

#[test]
fn client_probe_notices_a_disconnected_client() {
    let probe_results = Arc::new(Mutex::new(Vec::new()));
    let handler_results = Arc::clone(&probe_results);
    let server = start_server(ServerLimits::default(), move |request: Request| {
        let started = Instant::now();
        while !request.client.is_closed() && started.elapsed() < Duration::from_secs(3) {
            may::coroutine::sleep(Duration::from_millis(5));
        }
        handler_results
            .lock()
            .unwrap()
            .push(request.client.is_closed());
        Response::bytes(200, "text/plain", Vec::new())
    });
    let mut client = TestClient::connect(&server);
    client.send("GET /long HTTP/1.1\r\n\r\n");
    std::thread::sleep(Duration::from_millis(50));
    client.stream.shutdown(Shutdown::Both).unwrap();
    drop(client);
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while probe_results.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the handler never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*probe_results.lock().unwrap(), vec![true]);
}

// Rule 12: requests split across reads.

#[test]
fn head_written_one_byte_at_a_time_is_parsed() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    for byte in b"GET /slow/path?q=1 HTTP/1.1\r\nHost: test\r\nX-Extra: value\r\n\r\n" {
        client.send([*byte]);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        client.read_response().raw,
        echo_response("GET /slow/path q=1 ")
    );
}

#[test]
fn chunked_request_split_at_every_byte_boundary_is_parsed() {
    let server = start_echo_server();
    let mut client = TestClient::connect(&server);
    let request = b"POST /split HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n6\r\npedia \r\n0\r\nx-t: 1\r\n\r\n";
    for split_point in 1..request.len() {
        client.send(&request[..split_point]);
        std::thread::sleep(Duration::from_millis(2));
        client.send(&request[split_point..]);
        assert_eq!(
            client.read_response().raw,
            echo_response("POST /split  Wikipedia "),
            "split at {split_point}"
        );
    }
}

// Rule 13: deep JSON on a coroutine stack.

/// `[{"a":[{"a":...1...}]}]` with `depth` nested arrays and objects in alternation.
fn nested_json(depth: usize) -> String {
    let mut text = String::new();
    for level in 0..depth {
        text.push_str(if level % 2 == 0 { "[" } else { "{\"a\":" });
    }
    text.push('1');
    for level in (0..depth).rev() {
        text.push(if level % 2 == 0 { ']' } else { '}' });
    }
    text
}

#[test]
fn deeply_nested_json_body_round_trips() {
    let server =
        start_server(
            ServerLimits::default(),
            |request: Request| match serde_json::from_slice::<serde_json::Value>(&request.body) {
                Ok(value) => {
                    Response::bytes(200, "application/json", serde_json::to_vec(&value).unwrap())
                }
                Err(error) => Response::json(
                    400,
                    &serde_json::json!({"error": {"message": error.to_string()}}),
                ),
            },
        );
    let mut client = TestClient::connect(&server);
    // 128 levels of nesting: 127 arrays and objects around the innermost value, the deepest
    // document serde_json's default recursion limit accepts.
    let document = nested_json(127);
    let request = format!(
        "POST /echo HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{document}",
        document.len()
    );
    let response = {
        client.send(request);
        client.read_response()
    };
    assert_eq!(response.status, 200, "{}", response.raw);
    assert_eq!(String::from_utf8(response.body).unwrap(), document);
    // One level more is refused by serde_json itself, and the server stays healthy.
    let too_deep = nested_json(128);
    client.send(format!(
        "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n{too_deep}",
        too_deep.len()
    ));
    let response = client.read_response();
    assert_eq!(response.status, 400);
    assert!(String::from_utf8_lossy(&response.body).contains("recursion limit exceeded"));
}

// Rule 14: streamed chunks are not buffered.

#[test]
fn streamed_chunks_arrive_as_they_are_written() {
    let server = start_server(ServerLimits::default(), |_request: Request| {
        Response::stream(200, "text/event-stream", |writer| {
            for index in 0..5 {
                if index > 0 {
                    may::coroutine::sleep(Duration::from_millis(50));
                }
                writer.write_chunk(format!("data: {index}\n\n").as_bytes())?;
            }
            Ok(())
        })
    });
    let mut client = TestClient::connect(&server);
    let sent_at = Instant::now();
    client.send("GET /stream HTTP/1.1\r\n\r\n");
    let first_chunk = "9\r\ndata: 0\n\n\r\n";
    let mut first_chunk_at = None;
    loop {
        let received = String::from_utf8_lossy(&client.received).to_string();
        if first_chunk_at.is_none() && received.contains(first_chunk) {
            first_chunk_at = Some(sent_at.elapsed());
        }
        if received.ends_with("0\r\n\r\n") {
            break;
        }
        assert!(
            sent_at.elapsed() < CLIENT_TIMEOUT && client.fill() > 0,
            "stream ended early: {received:?}"
        );
    }
    let last_chunk_at = sent_at.elapsed();
    let first_chunk_at = first_chunk_at.unwrap();
    assert!(
        last_chunk_at >= Duration::from_millis(200),
        "the stream took only {last_chunk_at:?}"
    );
    assert!(
        last_chunk_at - first_chunk_at >= Duration::from_millis(150),
        "first chunk at {first_chunk_at:?}, last at {last_chunk_at:?}: the chunks were held back"
    );
    let chunks: String = (0..5)
        .map(|index| format!("9\r\ndata: {index}\n\n\r\n"))
        .collect();
    let expected = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n"
    );
    assert_eq!(String::from_utf8_lossy(&client.received), expected);
}

// Rule 15: many concurrent connections.

#[test]
fn two_hundred_concurrent_keep_alive_clients_are_all_answered() {
    let server = start_echo_server();
    let answered = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for client_index in 0..200 {
            let server = &server;
            let answered = &answered;
            scope.spawn(move || {
                let mut client = TestClient::connect(server);
                for request_index in 0..5 {
                    let path = format!("/client/{client_index}/{request_index}");
                    let response =
                        client.exchange(&format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"));
                    assert_eq!(response, echo_response(&format!("GET {path}  ")));
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(answered.load(Ordering::Relaxed), 1000);
}

// Starting and stopping.

#[test]
fn shutdown_returns_promptly_and_stops_accepting() {
    let server = start_echo_server();
    let address = server.local_addr();
    let mut client = TestClient::connect(&server);
    assert_eq!(
        client.exchange("GET / HTTP/1.1\r\n\r\n"),
        echo_response("GET /  ")
    );
    let started = Instant::now();
    server.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shutdown took {:?}",
        started.elapsed()
    );
    let refused = TcpStream::connect_timeout(&address, Duration::from_secs(1));
    assert!(refused.is_err(), "the listener is still open");
}

#[test]
fn starting_on_a_port_in_use_fails() {
    let server = start_echo_server();
    let second = Server::start(
        &server.local_addr().to_string(),
        ServerLimits::default(),
        Arc::new(FnHandler(echo)),
    );
    assert_eq!(
        second.err().map(|error| error.kind()),
        Some(ErrorKind::AddrInUse)
    );
}

// Robustness: mangled input never takes the server down.

/// A small deterministic pseudo-random generator (xorshift64), so failures reproduce.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

/// `valid` with a few bytes replaced, inserted or removed.
fn mangle(valid: &[u8], random: &mut Xorshift) -> Vec<u8> {
    const INTERESTING: &[u8] = b"\r\n :;,-0123456789abcdefABCDEF\x00\x7f\xff";
    let mut bytes = valid.to_vec();
    for _ in 0..1 + random.below(4) {
        let position = random.below(bytes.len());
        let byte = INTERESTING[random.below(INTERESTING.len())];
        match random.below(3) {
            0 => bytes[position] = byte,
            1 => bytes.insert(position, byte),
            _ => {
                bytes.remove(position);
            }
        }
    }
    bytes
}

#[test]
fn mangled_requests_get_an_answer_or_a_close_and_the_server_survives() {
    let server = start_server(short_timeouts(), echo);
    let valid: [&[u8]; 2] = [
        b"POST /a?b=c HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /a HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nt: 1\r\n\r\n",
    ];
    let mut random = Xorshift(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    for iteration in 0..150 {
        let request = mangle(valid[iteration % valid.len()], &mut random);
        let mut client = TestClient::connect(&server);
        client.send(&request);
        // Ending our side lets the server tell an incomplete request from a slow one at once.
        client.stream.shutdown(Shutdown::Write).unwrap();
        while client.fill() > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "the server hung on {:?}",
                String::from_utf8_lossy(&request)
            );
        }
        if !client.received.is_empty() {
            let text = String::from_utf8_lossy(&client.received);
            assert!(
                text.starts_with("HTTP/1.1 "),
                "{text:?} for {:?}",
                String::from_utf8_lossy(&request)
            );
        }
    }
    let mut client = TestClient::connect(&server);
    assert_eq!(
        client.exchange("GET /still-alive HTTP/1.1\r\n\r\n"),
        echo_response("GET /still-alive  ")
    );
}
