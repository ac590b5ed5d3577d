//! Integration tests of the upstream client against loopback mock upstreams, proxies and a TLS
//! mock, with the client running in may coroutines on a 2-worker runtime.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use octopus::upstream::client::{ClientOptions, UpstreamClient, UpstreamRequest, UpstreamResponse};
use octopus::upstream::control::{CallControl, with_call_control};
use octopus::upstream::error::UpstreamError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The longest any test waits for its coroutines before failing.
const TEST_DEADLINE: Duration = Duration::from_secs(15);
/// Mock connections give up on a silent peer after this long.
const MOCK_IO_TIMEOUT: Duration = Duration::from_secs(5);

// ----- runtime and client helpers -----

fn init_runtime() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        may::config().set_stack_size(0x8000).set_workers(2);
    });
}

/// Runs `body` in a may coroutine and returns its result, failing the test after TEST_DEADLINE.
fn in_coroutine<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    init_runtime();
    let (sender, receiver) = mpsc::channel();
    may::go!(move || {
        let _ = sender.send(body());
    });
    receiver
        .recv_timeout(TEST_DEADLINE)
        .expect("the coroutine did not finish in time")
}

fn client() -> UpstreamClient {
    client_with(ClientOptions {
        connect_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    })
}

fn client_with(options: ClientOptions) -> UpstreamClient {
    UpstreamClient::new(options).expect("client options are valid")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn post(url: String, body: &str) -> UpstreamRequest {
    UpstreamRequest {
        method: "POST".to_string(),
        url,
        headers: vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("authorization".to_string(), "Bearer sk-test".to_string()),
        ],
        body: body.as_bytes().to_vec(),
        proxy: None,
        response_head_timeout: None,
    }
}

fn read_body(response: &mut UpstreamResponse) -> String {
    let mut text = String::new();
    response
        .body
        .read_to_string(&mut text)
        .expect("the body reads to its end");
    text
}

fn header<'a>(response: &'a UpstreamResponse, name: &str) -> Option<&'a str> {
    response.header(name)
}

// ----- the mock upstream -----

#[derive(Clone, Debug)]
struct MockRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl MockRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header_name, _)| header_name.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

type Handler = Arc<dyn Fn(&MockRequest, &mut dyn Write) -> io::Result<()> + Send + Sync>;

/// A loopback HTTP/1.1 server, one std thread per connection, keep-alive. It stops accepting
/// when dropped.
struct MockServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<MockRequest>>>,
    stopping: Arc<AtomicBool>,
}

impl MockServer {
    fn start(
        handler: impl Fn(&MockRequest, &mut dyn Write) -> io::Result<()> + Send + Sync + 'static,
    ) -> MockServer {
        let handler: Handler = Arc::new(handler);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        MockServer::start_accepting(move |stream| {
            serve_http(stream, &handler, &recorded);
        })
        .with_requests(requests)
    }

    /// Accepts connections and hands each to `serve` on its own thread.
    fn start_accepting(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> MockServer {
        let listener = listen_on_loopback();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        {
            let accepted = accepted.clone();
            let stopping = stopping.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    stream.set_read_timeout(Some(MOCK_IO_TIMEOUT)).unwrap();
                    stream.set_nodelay(true).unwrap();
                    let serve = serve.clone();
                    thread::spawn(move || serve(stream));
                }
            });
        }
        MockServer {
            addr,
            accepted,
            requests: Arc::new(Mutex::new(Vec::new())),
            stopping,
        }
    }

    fn with_requests(mut self, requests: Arc<Mutex<Vec<MockRequest>>>) -> MockServer {
        self.requests = requests;
        self
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<MockRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// A listener with a backlog of 1024: std's 128 drops SYNs when 200 clients connect at once,
/// and a dropped SYN costs a one-second retransmit.
fn listen_on_loopback() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: the descriptor belongs to `listener`, which is alive for the call.
    let result = unsafe { libc::listen(listener.as_raw_fd(), 1024) };
    assert_eq!(result, 0, "listen(1024) failed");
    listener
}

/// Serves requests on one connection until the peer closes it or a handler fails.
fn serve_http(stream: impl Read + Write, handler: &Handler, recorded: &Mutex<Vec<MockRequest>>) {
    let mut reader = BufReader::new(stream);
    for _ in 0..1000 {
        let Some(request) = read_request(&mut reader) else {
            return;
        };
        recorded.lock().unwrap().push(request.clone());
        let stream = reader.get_mut();
        if handler(&request, stream)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
    }
}

fn read_request(reader: &mut impl BufRead) -> Option<MockRequest> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).ok()? == 0 {
        return None;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let content_length = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body).ok()?;
    Some(MockRequest {
        method,
        path,
        headers,
        body,
    })
}

fn respond(
    stream: &mut dyn Write,
    status: &str,
    extra_headers: &str,
    body: &str,
) -> io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

fn echo_ok(request: &MockRequest, stream: &mut dyn Write) -> io::Result<()> {
    let body = format!("{{\"echo\":{}}}", String::from_utf8_lossy(&request.body));
    respond(stream, "200 OK", "", &body)
}

fn start_sse_head(stream: &mut dyn Write) -> io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )?;
    stream.flush()
}

fn write_chunk(stream: &mut dyn Write, data: &str) -> io::Result<()> {
    write!(stream, "{:x}\r\n{data}\r\n", data.len())?;
    stream.flush()
}

// ----- tests: concurrency, streaming, reuse, statuses, errors -----

#[test]
fn two_hundred_concurrent_slow_requests_do_not_block_the_workers() {
    let mock = MockServer::start(|request, stream| {
        thread::sleep(Duration::from_millis(200));
        echo_ok(request, stream)
    });
    let client = client();
    let url = mock.url("/delay");
    init_runtime();

    let started = Instant::now();
    let (sender, receiver) = mpsc::channel();
    for request_index in 0..200 {
        let client = client.clone();
        let url = url.clone();
        let sender = sender.clone();
        may::go!(move || {
            let outcome = client
                .send(post(url, &request_index.to_string()))
                .map(|mut response| (response.status, read_body(&mut response)));
            let _ = sender.send((request_index, outcome));
        });
    }
    let mut finished = 0;
    for _ in 0..200 {
        let (request_index, outcome) = receiver
            .recv_timeout(TEST_DEADLINE)
            .expect("all requests finish");
        let (status, body) = outcome.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, format!("{{\"echo\":{request_index}}}"));
        finished += 1;
    }
    let elapsed = started.elapsed();
    assert_eq!(finished, 200);
    // Serially this takes 40 s; blocked workers would give about 20 s with 2 workers.
    assert!(
        elapsed < Duration::from_secs(2),
        "200 requests took {elapsed:?}"
    );
}

#[test]
fn stream_events_arrive_as_they_are_sent() {
    let mock = MockServer::start(|_, stream| {
        start_sse_head(stream)?;
        for event_index in 0..5 {
            if event_index > 0 {
                thread::sleep(Duration::from_millis(100));
            }
            write_chunk(stream, &format!("data: {{\"event\":{event_index}}}\n\n"))?;
        }
        write!(stream, "0\r\n\r\n")
    });
    let client = client();
    let url = mock.url("/v1/chat/completions");

    let arrival_offsets = in_coroutine(move || {
        let started = Instant::now();
        let response = client.send(post(url, "{\"stream\":true}")).unwrap();
        assert_eq!(response.status, 200);
        let mut offsets = Vec::new();
        let mut lines = BufReader::new(response.body);
        for _ in 0..100 {
            let mut line = String::new();
            if lines.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if line.starts_with("data:") {
                offsets.push(started.elapsed());
            }
        }
        offsets
    });

    assert_eq!(arrival_offsets.len(), 5);
    let first = arrival_offsets[0];
    let last = arrival_offsets[4];
    assert!(
        first < Duration::from_millis(250),
        "first event after {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(350),
        "events arrived together: {arrival_offsets:?}"
    );
}

#[test]
fn sequential_requests_reuse_one_connection() {
    let mock = MockServer::start(echo_ok);
    let client = client();
    let url = mock.url("/v1/messages");

    let bodies = in_coroutine(move || {
        let mut first = client.send(post(url.clone(), "1")).unwrap();
        let first_body = read_body(&mut first);
        let mut second = client.send(post(url, "2")).unwrap();
        (first_body, read_body(&mut second))
    });

    assert_eq!(
        bodies,
        ("{\"echo\":1}".to_string(), "{\"echo\":2}".to_string())
    );
    assert_eq!(mock.accepted(), 1);
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v1/messages");
    assert_eq!(requests[0].header("authorization"), Some("Bearer sk-test"));
    assert_eq!(requests[0].header("accept-encoding"), Some("identity"));
    assert_eq!(requests[0].header("content-length"), Some("1"));
    let hosts: Vec<&(String, String)> = requests[0].headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case("host")).collect();
    assert_eq!(hosts.len(), 1, "one Host header: {hosts:?}");
    assert_eq!(hosts[0].1, mock.addr.to_string());
}

/// Runs `count` calls to `url` at once, each in its own coroutine, and returns their bodies in
/// call order. The mock holds every answer until all `count` requests have arrived, so each
/// call has a connection of its own.
fn concurrent_calls(client: &UpstreamClient, url: &str, count: usize) -> Vec<String> {
    init_runtime();
    let (sender, receiver) = mpsc::channel();
    for index in 0..count {
        let (client, url, sender) = (client.clone(), url.to_string(), sender.clone());
        may::go!(move || {
            let body = client.send(post(url, &index.to_string())).map(|mut response| read_body(&mut response));
            let _ = sender.send((index, body));
        });
    }
    let mut bodies = vec![String::new(); count];
    for _ in 0..count {
        let (index, body) = receiver.recv_timeout(TEST_DEADLINE).expect("every call finishes");
        bodies[index] = body.expect("the call succeeds");
    }
    bodies
}

/// A mock that answers only once `wave` requests are waiting, so that many calls are in flight
/// on as many connections at the same time.
fn start_barrier_mock(wave: usize) -> MockServer {
    let arrived = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
    MockServer::start(move |request, stream| {
        let (count, all_here) = &*arrived;
        let mut arrivals = count.lock().unwrap();
        let wave_end = (*arrivals / wave + 1) * wave;
        *arrivals += 1;
        all_here.notify_all();
        let arrivals = all_here.wait_timeout_while(arrivals, MOCK_IO_TIMEOUT, |arrivals| *arrivals < wave_end).unwrap().0;
        drop(arrivals);
        echo_ok(request, stream)
    })
}

#[test]
fn a_second_wave_of_concurrent_calls_reuses_the_first_waves_connections() {
    let mock = start_barrier_mock(8);
    let client = client();
    let url = mock.url("/wave");
    let expected: Vec<String> = (0..8).map(|index| format!("{{\"echo\":{index}}}")).collect();

    assert_eq!(concurrent_calls(&client, &url, 8), expected);
    assert_eq!(mock.accepted(), 8);
    assert_eq!(concurrent_calls(&client, &url, 8), expected);
    assert_eq!(mock.accepted(), 8, "every call of the second wave found an idle connection");
}

#[test]
fn no_more_idle_connections_per_host_are_kept_than_configured() {
    let mock = start_barrier_mock(8);
    let client = client_with(ClientOptions {
        connect_timeout: Duration::from_secs(3),
        max_idle_connections_per_host: 3,
        ..ClientOptions::default()
    });
    let url = mock.url("/wave");

    concurrent_calls(&client, &url, 8);
    assert_eq!(mock.accepted(), 8);
    // Three connections were kept; the other five calls of the next wave connect anew.
    concurrent_calls(&client, &url, 8);
    assert_eq!(mock.accepted(), 13);
}

/// Each call under its own `CallControl`, as the relay makes them: the connection goes back to
/// the pool owned by a call, which the transport does not peek at, so what the server does while
/// the connection idles must be caught when it is taken out again.
#[test]
fn a_pooled_connection_spoiled_while_idle_is_not_reused() {
    let mock = MockServer::start(|request, stream| {
        echo_ok(request, stream)?;
        match request.path.as_str() {
            // Bytes after the answer, sent once the client has put the connection back.
            "/stray-bytes" => {
                thread::sleep(Duration::from_millis(50));
                stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
                stream.flush()
            }
            // The server ends the connection after its answer.
            "/close" => Err(io::Error::other("closing after the answer")),
            _ => Ok(()),
        }
    });
    let client = client();
    let (stray_url, close_url, plain_url) = (mock.url("/stray-bytes"), mock.url("/close"), mock.url("/plain"));

    let bodies = in_coroutine(move || {
        let call = |url: &String, body: &str| {
            let control = CallControl::new();
            with_call_control(&control, || read_body(&mut client.send(post(url.clone(), body)).unwrap()))
        };
        let mut bodies = vec![call(&stray_url, "1")];
        may::coroutine::sleep(Duration::from_millis(200));
        bodies.push(call(&close_url, "2"));
        may::coroutine::sleep(Duration::from_millis(200));
        bodies.push(call(&plain_url, "3"));
        bodies.push(call(&plain_url, "4"));
        bodies
    });

    assert_eq!(bodies, ["{\"echo\":1}", "{\"echo\":2}", "{\"echo\":3}", "{\"echo\":4}"]);
    // The stray bytes and the close each cost the pooled connection; the last two calls share one.
    assert_eq!(mock.accepted(), 3);
}

/// Answers with the request body echoed and a response head of about 12 KiB, larger than the
/// first size of a connection's input buffer.
fn echo_with_a_long_head(request: &MockRequest, stream: &mut dyn Write) -> io::Result<()> {
    let body = format!("{{\"echo\":{}}}", String::from_utf8_lossy(&request.body));
    let long_header = format!("x-long: {}\r\n", "h".repeat(12 * 1024));
    respond(stream, "200 OK", &long_header, &body)
}

/// Two requests on one connection, each with a 300 KB body both ways and a long response head:
/// the connection's buffers grow for the head, write the body in pieces, give the output back
/// while the long response is read, and take it again for the second request.
fn large_bodies_and_heads_both_ways(client: UpstreamClient, url: String) {
    let digits: String = (0..300_000).map(|index| char::from(b'0' + (index % 10) as u8)).collect();
    let sent = digits.clone();
    let (first, second) = in_coroutine(move || {
        let mut first = client.send(post(url.clone(), &sent)).unwrap();
        let first_body = (first.status, header(&first, "x-long").map(str::len), read_body(&mut first));
        let mut second = client.send(post(url, &sent[..1000])).unwrap();
        (first_body, (second.status, read_body(&mut second)))
    });
    assert_eq!(first.0, 200);
    assert_eq!(first.1, Some(12 * 1024));
    assert_eq!(first.2, format!("{{\"echo\":{digits}}}"));
    assert_eq!(second, (200, format!("{{\"echo\":{}}}", &digits[..1000])));
}

#[test]
fn large_bodies_and_long_heads_pass_through_plain_connections() {
    let mock = MockServer::start(echo_with_a_long_head);
    large_bodies_and_heads_both_ways(client(), mock.url("/v1/x"));
    assert_eq!(mock.accepted(), 1);
    assert_eq!(mock.requests()[0].body.len(), 300_000);
}

#[test]
fn dropping_a_body_midway_closes_its_connection() {
    let write_failed = Arc::new(AtomicBool::new(false));
    let mock = {
        let write_failed = write_failed.clone();
        MockServer::start(move |request, stream| {
            if request.path != "/slow" {
                return echo_ok(request, stream);
            }
            start_sse_head(stream)?;
            for _ in 0..40 {
                if let Err(error) = write_chunk(stream, "data: {}\n\n") {
                    write_failed.store(true, Ordering::SeqCst);
                    return Err(error);
                }
                thread::sleep(Duration::from_millis(50));
            }
            write!(stream, "0\r\n\r\n")
        })
    };
    let client = client();
    let slow_url = mock.url("/slow");
    let fast_url = mock.url("/fast");

    let status = in_coroutine(move || {
        let mut response = client.send(post(slow_url, "{}")).unwrap();
        let mut first_bytes = [0u8; 8];
        response.body.read_exact(&mut first_bytes).unwrap();
        drop(response);
        let mut next = client.send(post(fast_url, "{}")).unwrap();
        read_body(&mut next);
        next.status
    });

    assert_eq!(status, 200);
    assert_eq!(
        mock.accepted(),
        2,
        "the dropped connection must not be reused"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while !write_failed.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        write_failed.load(Ordering::SeqCst),
        "the mock kept writing to a closed connection"
    );
}

#[test]
fn error_statuses_come_back_as_data() {
    let mock = MockServer::start(|_, stream| {
        respond(
            stream,
            "429 Too Many Requests",
            "retry-after: 7\r\n",
            "{\"error\":{\"message\":\"slow down\"}}",
        )
    });
    let client = client();
    let url = mock.url("/v1/chat/completions");

    let (status, retry_after, body) = in_coroutine(move || {
        let mut response = client.send(post(url, "{}")).unwrap();
        let retry_after = header(&response, "retry-after").map(str::to_string);
        (response.status, retry_after, read_body(&mut response))
    });

    assert_eq!(status, 429);
    assert_eq!(retry_after.as_deref(), Some("7"));
    assert_eq!(body, "{\"error\":{\"message\":\"slow down\"}}");
}

#[test]
fn the_client_also_works_from_a_plain_thread() {
    // The sync scheduler calls upstreams from a std thread, outside any coroutine.
    init_runtime();
    let mock = MockServer::start(echo_ok);
    let client = client();
    let url = mock.url("/v1/models");
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let outcome = client
            .send(post(url, "5"))
            .map(|mut response| (response.status, read_body(&mut response)));
        let _ = sender.send(outcome);
    });

    let outcome = receiver
        .recv_timeout(TEST_DEADLINE)
        .expect("the thread finishes");

    assert_eq!(outcome, Ok((200, "{\"echo\":5}".to_string())));
}

#[test]
fn a_closed_port_is_a_connect_error() {
    let closed_addr = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = client();

    let outcome =
        in_coroutine(move || client.send(post(format!("http://{closed_addr}/v1/x"), "{}")));

    match outcome {
        Err(UpstreamError::Connect(message)) => {
            assert!(message.contains(&closed_addr.to_string()), "{message}")
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[test]
fn a_slow_response_head_times_out() {
    let mock = MockServer::start(|request, stream| {
        thread::sleep(Duration::from_millis(1500));
        echo_ok(request, stream)
    });
    let client = client();
    let url = mock.url("/v1/x");

    let (outcome, elapsed) = in_coroutine(move || {
        let mut request = post(url, "{}");
        request.response_head_timeout = Some(Duration::from_millis(200));
        let started = Instant::now();
        let outcome = client.send(request).map(|response| response.status);
        (outcome, started.elapsed())
    });

    assert_eq!(
        outcome,
        Err(UpstreamError::Timeout("response head".to_string()))
    );
    assert!(
        elapsed < Duration::from_millis(1000),
        "timed out after {elapsed:?}"
    );
}

/// Under a `CallControl` (as every relay call runs), the response-head limit is the control's
/// deadline, applied by the transport: the same error as ureq's own limit, for a server that
/// says nothing and for one that stops in the middle of its head.
#[test]
fn a_slow_response_head_times_out_under_a_call_control() {
    let silent = MockServer::start(|request, stream| {
        thread::sleep(Duration::from_millis(1500));
        echo_ok(request, stream)
    });
    let half_a_head = MockServer::start(|request, stream| {
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: appl")?;
        stream.flush()?;
        thread::sleep(Duration::from_millis(1500));
        echo_ok(request, stream)
    });
    for url in [silent.url("/v1/x"), half_a_head.url("/v1/x")] {
        let client = client();
        let (outcome, elapsed, control_is_clear) = in_coroutine(move || {
            let control = CallControl::new();
            let mut request = post(url, "{}");
            request.response_head_timeout = Some(Duration::from_millis(200));
            let started = Instant::now();
            let outcome = with_call_control(&control, || client.send(request).map(|response| response.status));
            (outcome, started.elapsed(), control.is_cancelled())
        });
        assert_eq!(outcome, Err(UpstreamError::Timeout("response head".to_string())));
        assert!(elapsed >= Duration::from_millis(180), "timed out early, after {elapsed:?}");
        assert!(elapsed < Duration::from_millis(1000), "timed out after {elapsed:?}");
        assert!(!control_is_clear, "a timeout is not a cancel");
    }
}

/// The response-head deadline ends with the head: a stream whose events come after it passed
/// is read to its end, over plain TCP and over TLS.
#[test]
fn the_response_head_deadline_does_not_limit_the_body() {
    fn slow_events(stream: &mut dyn Write) -> io::Result<()> {
        start_sse_head(stream)?;
        thread::sleep(Duration::from_millis(400));
        write_chunk(stream, "data: one\n\n")?;
        thread::sleep(Duration::from_millis(300));
        write_chunk(stream, "data: two\n\n")?;
        stream.write_all(b"0\r\n\r\n")?;
        stream.flush()
    }
    let plain = MockServer::start(|_, stream| slow_events(stream));
    let tls_config = tls_server_config();
    let handler: Handler = Arc::new(|_: &MockRequest, stream: &mut dyn Write| slow_events(stream));
    let tls = MockServer::start_accepting(move |stream| {
        let Ok(connection) = rustls::ServerConnection::new(tls_config.clone()) else {
            return;
        };
        serve_http(rustls::StreamOwned::new(connection, stream), &handler, &Arc::new(Mutex::new(Vec::new())));
    });
    let urls = [plain.url("/v1/chat/completions"), format!("https://localhost:{}/v1/chat/completions", tls.addr.port())];
    for url in urls {
        let client = client_with(ClientOptions {
            extra_ca_pem_file: Some(fixture("ca.pem")),
            connect_timeout: Duration::from_secs(3),
            ..ClientOptions::default()
        });
        let body = in_coroutine(move || {
            let control = CallControl::new();
            let mut request = post(url, "{}");
            request.response_head_timeout = Some(Duration::from_millis(200));
            with_call_control(&control, || client.send(request).map(|mut response| read_body(&mut response)))
        });
        assert_eq!(body, Ok("data: one\n\ndata: two\n\n".to_string()));
    }
}

// ----- tests: CallControl -----

/// A mock that sends the response head of a stream and then stays silent for two seconds.
fn stalling_stream_mock() -> MockServer {
    MockServer::start(|_, stream| {
        start_sse_head(stream)?;
        thread::sleep(Duration::from_secs(2));
        Ok(())
    })
}

#[test]
fn call_control_read_timeout_fails_a_stalled_read() {
    let mock = stalling_stream_mock();
    let client = client();
    let url = mock.url("/v1/chat/completions");

    let (error, elapsed) = in_coroutine(move || {
        let control = CallControl::new();
        with_call_control(&control, || {
            let mut response = client.send(post(url, "{}")).unwrap();
            control.set_read_timeout(Some(Duration::from_millis(300)));
            let started = Instant::now();
            let mut buffer = [0u8; 64];
            let error = response.body.read(&mut buffer).unwrap_err();
            (error, started.elapsed())
        })
    });

    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    assert_eq!(
        UpstreamError::from_io_error(&error),
        UpstreamError::Timeout("read".to_string())
    );
    assert!(
        elapsed >= Duration::from_millis(250),
        "timed out early, after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1200),
        "timed out late, after {elapsed:?}"
    );
}

#[test]
fn call_control_read_timeout_also_bounds_the_wait_for_the_head() {
    let mock = MockServer::start(|request, stream| {
        thread::sleep(Duration::from_millis(1500));
        echo_ok(request, stream)
    });
    let client = client();
    let url = mock.url("/v1/x");

    let (outcome, elapsed) = in_coroutine(move || {
        let control = CallControl::new();
        control.set_read_timeout(Some(Duration::from_millis(200)));
        let started = Instant::now();
        let outcome = with_call_control(&control, || {
            client.send(post(url, "{}")).map(|response| response.status)
        });
        (outcome, started.elapsed())
    });

    assert_eq!(outcome, Err(UpstreamError::Timeout("read".to_string())));
    assert!(
        elapsed < Duration::from_millis(1000),
        "timed out after {elapsed:?}"
    );
}

#[test]
fn cancel_from_another_coroutine_unblocks_a_stalled_read() {
    let mock = stalling_stream_mock();
    let client = client();
    let url = mock.url("/v1/chat/completions");

    let (error, blocked_for) = in_coroutine(move || {
        let control = CallControl::new();
        let canceller = control.clone();
        may::go!(move || {
            may::coroutine::sleep(Duration::from_millis(300));
            canceller.cancel();
        });
        with_call_control(&control, || {
            let mut response = client.send(post(url, "{}")).unwrap();
            let started = Instant::now();
            let mut buffer = [0u8; 64];
            let error = response.body.read(&mut buffer).unwrap_err();
            (error, started.elapsed())
        })
    });

    assert_eq!(
        UpstreamError::from_io_error(&error),
        UpstreamError::Cancelled
    );
    assert!(
        blocked_for < Duration::from_millis(1200),
        "cancel took effect after {blocked_for:?}"
    );
}

#[test]
fn cancel_unblocks_a_call_waiting_for_its_head_and_fails_later_calls() {
    let mock = MockServer::start(|request, stream| {
        thread::sleep(Duration::from_secs(2));
        echo_ok(request, stream)
    });
    let client = client();
    let url = mock.url("/v1/x");

    let (first, elapsed, second) = in_coroutine(move || {
        let control = CallControl::new();
        let canceller = control.clone();
        may::go!(move || {
            may::coroutine::sleep(Duration::from_millis(200));
            canceller.cancel();
        });
        with_call_control(&control, || {
            let started = Instant::now();
            let first = client
                .send(post(url.clone(), "{}"))
                .map(|response| response.status);
            let elapsed = started.elapsed();
            let second = client.send(post(url, "{}")).map(|response| response.status);
            (first, elapsed, second)
        })
    });

    assert_eq!(first, Err(UpstreamError::Cancelled));
    assert!(
        elapsed < Duration::from_millis(1200),
        "cancel took effect after {elapsed:?}"
    );
    assert_eq!(second, Err(UpstreamError::Cancelled));
    assert_eq!(
        mock.accepted(),
        1,
        "a cancelled call must not open new connections"
    );
}

#[test]
fn a_finished_calls_control_cannot_cancel_the_next_user_of_its_connection() {
    let mock = MockServer::start(echo_ok);
    let client = client();
    let url = mock.url("/v1/x");

    let (first_status, second_body) = in_coroutine(move || {
        let first_control = CallControl::new();
        let first_status = with_call_control(&first_control, || {
            let mut response = client.send(post(url.clone(), "1")).unwrap();
            read_body(&mut response);
            response.status
        });
        // The connection is back in the pool; a late cancel of the first call must not touch
        // it while the second call uses it.
        let second_control = CallControl::new();
        let second_body = with_call_control(&second_control, || {
            let mut response = client.send(post(url, "2")).unwrap();
            first_control.cancel();
            read_body(&mut response)
        });
        (first_status, second_body)
    });

    assert_eq!(first_status, 200);
    assert_eq!(second_body, "{\"echo\":2}");
    assert_eq!(mock.accepted(), 1);
}

// ----- tests: TLS -----

fn tls_server_config() -> Arc<rustls::ServerConfig> {
    let certificate_pem = std::fs::read(fixture("server.pem")).unwrap();
    let key_pem = std::fs::read(fixture("server.key")).unwrap();
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&certificate_pem)
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(&key_pem).unwrap();
    // The gateway's own provider (src/upstream/tls.rs says why ring's is kept).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
    Arc::new(config)
}

/// An HTTPS mock upstream serving `echo_ok` with the fixture certificate.
fn start_tls_mock() -> MockServer {
    let config = tls_server_config();
    let handler: Handler = Arc::new(echo_ok);
    let requests = Arc::new(Mutex::new(Vec::new()));
    let recorded = requests.clone();
    MockServer::start_accepting(move |stream| {
        let Ok(connection) = rustls::ServerConnection::new(config.clone()) else {
            return;
        };
        serve_http(
            rustls::StreamOwned::new(connection, stream),
            &handler,
            &recorded,
        );
    })
    .with_requests(requests)
}

#[test]
fn tls_succeeds_with_the_extra_ca_file() {
    let mock = start_tls_mock();
    let client = client_with(ClientOptions {
        extra_ca_pem_file: Some(fixture("ca.pem")),
        connect_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    });
    // "localhost" also exercises the resolver and the server name check on a DNS name.
    let url = format!("https://localhost:{}/v1/x", mock.addr.port());

    let (status, body) = in_coroutine(move || {
        let mut response = client.send(post(url, "42")).unwrap();
        (response.status, read_body(&mut response))
    });

    assert_eq!(status, 200);
    assert_eq!(body, "{\"echo\":42}");
}

#[test]
fn large_bodies_and_long_heads_pass_through_tls_connections() {
    let config = tls_server_config();
    let handler: Handler = Arc::new(echo_with_a_long_head);
    let mock = MockServer::start_accepting(move |stream| {
        let Ok(connection) = rustls::ServerConnection::new(config.clone()) else {
            return;
        };
        serve_http(rustls::StreamOwned::new(connection, stream), &handler, &Mutex::new(Vec::new()));
    });
    let client = client_with(ClientOptions {
        extra_ca_pem_file: Some(fixture("ca.pem")),
        ..ClientOptions::default()
    });
    large_bodies_and_heads_both_ways(client, format!("https://localhost:{}/v1/x", mock.addr.port()));
    assert_eq!(mock.accepted(), 1);
}

#[test]
fn tls_fails_without_the_extra_ca_file() {
    let mock = start_tls_mock();
    let client = client();
    let url = format!("https://127.0.0.1:{}/v1/x", mock.addr.port());

    let outcome =
        in_coroutine(move || client.send(post(url, "{}")).map(|response| response.status));

    match outcome {
        Err(UpstreamError::Tls(message)) => assert!(message.contains("UnknownIssuer"), "{message}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[test]
fn a_bad_ca_file_is_refused_at_startup() {
    let error = UpstreamClient::new(ClientOptions {
        extra_ca_pem_file: Some(fixture("no-such-ca.pem")),
        ..ClientOptions::default()
    })
    .unwrap_err();
    assert!(error.contains("no-such-ca.pem"), "{error}");
}

// ----- tests: proxies -----

/// Copies bytes both ways between two sockets until either side closes.
fn pipe_both_ways(client_side: TcpStream, upstream_side: TcpStream) {
    let mut client_reader = client_side.try_clone().unwrap();
    let mut upstream_writer = upstream_side.try_clone().unwrap();
    let forward = thread::spawn(move || {
        let _ = io::copy(&mut client_reader, &mut upstream_writer);
        let _ = upstream_writer.shutdown(Shutdown::Write);
    });
    let mut upstream_reader = upstream_side;
    let mut client_writer = client_side;
    let _ = io::copy(&mut upstream_reader, &mut client_writer);
    let _ = client_writer.shutdown(Shutdown::Write);
    let _ = forward.join();
}

fn connect_to(target: &str) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = target.to_socket_addrs()?.collect();
    let stream = TcpStream::connect(&addrs[..])?;
    stream.set_read_timeout(Some(MOCK_IO_TIMEOUT))?;
    Ok(stream)
}

/// What a mock proxy saw: the target it was asked for and the credentials offered.
#[derive(Clone, Debug, Default, PartialEq)]
struct ProxyRecord {
    target: String,
    credentials: Option<String>,
}

/// An HTTP CONNECT proxy.
fn start_connect_proxy() -> (MockServer, Arc<Mutex<Vec<ProxyRecord>>>) {
    let records = Arc::new(Mutex::new(Vec::new()));
    let recorded = records.clone();
    let proxy = MockServer::start_accepting(move |mut client_side| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            if client_side.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let target = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let credentials = head
            .lines()
            .find_map(|line| {
                line.strip_prefix("Proxy-Authorization: ")
                    .or_else(|| line.strip_prefix("proxy-authorization: "))
            })
            .map(str::to_string);
        recorded.lock().unwrap().push(ProxyRecord {
            target: target.clone(),
            credentials,
        });
        let Ok(upstream_side) = connect_to(&target) else {
            let _ = client_side.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
            return;
        };
        if client_side
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_ok()
        {
            pipe_both_ways(client_side, upstream_side);
        }
    });
    (proxy, records)
}

/// A SOCKS5 proxy that requires `user`/`pass` when `require_auth`.
fn start_socks5_proxy(require_auth: bool) -> (MockServer, Arc<Mutex<Vec<ProxyRecord>>>) {
    let records = Arc::new(Mutex::new(Vec::new()));
    let recorded = records.clone();
    let proxy = MockServer::start_accepting(move |mut client_side| {
        let Ok(record) = socks5_server_handshake(&mut client_side, require_auth) else {
            return;
        };
        recorded.lock().unwrap().push(record.clone());
        let Ok(upstream_side) = connect_to(&record.target) else {
            let _ = client_side.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]);
            return;
        };
        if client_side
            .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
            .is_ok()
        {
            pipe_both_ways(client_side, upstream_side);
        }
    });
    (proxy, records)
}

fn socks5_server_handshake(stream: &mut TcpStream, require_auth: bool) -> io::Result<ProxyRecord> {
    let mut greeting = [0u8; 2];
    stream.read_exact(&mut greeting)?;
    let mut methods = vec![0u8; usize::from(greeting[1])];
    stream.read_exact(&mut methods)?;
    let mut credentials = None;
    if require_auth {
        if !methods.contains(&2) {
            stream.write_all(&[5, 0xff])?;
            return Err(io::Error::other("no acceptable method"));
        }
        stream.write_all(&[5, 2])?;
        let mut version_and_length = [0u8; 2];
        stream.read_exact(&mut version_and_length)?;
        let mut username = vec![0u8; usize::from(version_and_length[1])];
        stream.read_exact(&mut username)?;
        let mut password_length = [0u8; 1];
        stream.read_exact(&mut password_length)?;
        let mut password = vec![0u8; usize::from(password_length[0])];
        stream.read_exact(&mut password)?;
        let pair = format!(
            "{}:{}",
            String::from_utf8_lossy(&username),
            String::from_utf8_lossy(&password)
        );
        stream.write_all(&[1, if pair == "user:pass" { 0 } else { 1 }])?;
        credentials = Some(pair);
    } else {
        stream.write_all(&[5, 0])?;
    }

    let mut request_head = [0u8; 4];
    stream.read_exact(&mut request_head)?;
    let host = match request_head[3] {
        1 => {
            let mut octets = [0u8; 4];
            stream.read_exact(&mut octets)?;
            std::net::Ipv4Addr::from(octets).to_string()
        }
        3 => {
            let mut length = [0u8; 1];
            stream.read_exact(&mut length)?;
            let mut name = vec![0u8; usize::from(length[0])];
            stream.read_exact(&mut name)?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => return Err(io::Error::other("unexpected address type")),
    };
    let mut port = [0u8; 2];
    stream.read_exact(&mut port)?;
    Ok(ProxyRecord {
        target: format!("{host}:{}", u16::from_be_bytes(port)),
        credentials,
    })
}

#[test]
fn an_http_connect_proxy_tunnels_to_the_upstream() {
    let mock = MockServer::start(echo_ok);
    let (proxy, records) = start_connect_proxy();
    let client = client();
    let url = mock.url("/v1/x");
    let proxy_url = format!("http://user:pass@{}", proxy.addr);

    let (status, body) = in_coroutine(move || {
        let mut request = post(url, "7");
        request.proxy = Some(proxy_url);
        let mut response = client.send(request).unwrap();
        (response.status, read_body(&mut response))
    });

    assert_eq!((status, body.as_str()), (200, "{\"echo\":7}"));
    assert_eq!(
        records.lock().unwrap().clone(),
        vec![ProxyRecord {
            target: mock.addr.to_string(),
            credentials: Some("Basic dXNlcjpwYXNz".to_string()),
        }]
    );
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn an_http_connect_proxy_carries_tls_to_the_upstream() {
    let mock = start_tls_mock();
    let (proxy, records) = start_connect_proxy();
    let client = client_with(ClientOptions {
        extra_ca_pem_file: Some(fixture("ca.pem")),
        connect_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    });
    let url = format!("https://127.0.0.1:{}/v1/x", mock.addr.port());
    let proxy_url = format!("http://{}", proxy.addr);

    let (status, body) = in_coroutine(move || {
        let mut request = post(url, "8");
        request.proxy = Some(proxy_url);
        let mut response = client.send(request).unwrap();
        (response.status, read_body(&mut response))
    });

    assert_eq!((status, body.as_str()), (200, "{\"echo\":8}"));
    assert_eq!(records.lock().unwrap()[0].target, mock.addr.to_string());
}

#[test]
fn a_socks5h_proxy_with_auth_resolves_the_host_name_itself() {
    let mock = MockServer::start(echo_ok);
    let (proxy, records) = start_socks5_proxy(true);
    let client = client();
    let url = format!("http://localhost:{}/v1/x", mock.addr.port());
    let proxy_url = format!("socks5h://user:pass@{}", proxy.addr);

    let (status, body) = in_coroutine(move || {
        let mut request = post(url, "9");
        request.proxy = Some(proxy_url);
        let mut response = client.send(request).unwrap();
        (response.status, read_body(&mut response))
    });

    assert_eq!((status, body.as_str()), (200, "{\"echo\":9}"));
    assert_eq!(
        records.lock().unwrap().clone(),
        vec![ProxyRecord {
            target: format!("localhost:{}", mock.addr.port()),
            credentials: Some("user:pass".to_string()),
        }]
    );
}

#[test]
fn a_socks5_proxy_without_auth_gets_the_target_address() {
    let mock = MockServer::start(echo_ok);
    let (proxy, records) = start_socks5_proxy(false);
    let client = client();
    let url = mock.url("/v1/x");
    let proxy_url = format!("socks5://{}", proxy.addr);

    let (status, body) = in_coroutine(move || {
        let mut request = post(url, "10");
        request.proxy = Some(proxy_url);
        let mut response = client.send(request).unwrap();
        (response.status, read_body(&mut response))
    });

    assert_eq!((status, body.as_str()), (200, "{\"echo\":10}"));
    assert_eq!(records.lock().unwrap()[0].target, mock.addr.to_string());
}

#[test]
fn a_socks5_proxy_refusing_our_credentials_is_a_proxy_error() {
    let mock = MockServer::start(echo_ok);
    let (proxy, _records) = start_socks5_proxy(true);
    let client = client();
    let url = mock.url("/v1/x");
    let proxy_url = format!("socks5://user:wrong-secret@{}", proxy.addr);

    let outcome = in_coroutine(move || {
        let mut request = post(url, "{}");
        request.proxy = Some(proxy_url);
        client.send(request).map(|response| response.status)
    });

    match outcome {
        Err(UpstreamError::Proxy(message)) => {
            assert!(!message.contains("wrong-secret"), "{message}")
        }
        other => panic!("expected a proxy error, got {other:?}"),
    }
    assert!(mock.requests().is_empty());
}
