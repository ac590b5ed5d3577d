//! The `octopus` process under overload: floods of idle and slow connections past the cap,
//! bodies slower than the minimum pace, huge announced bodies, a flood of large bodies, and
//! running out of file descriptors. The gateway must keep serving the admin API and prompt
//! clients, shed with 503 rather than die, keep its memory bounded (VmRSS/VmHWM from /proc), and
//! serve normally once the flood stops. Counts and deadlines are bounded; the deadlines are only
//! generous failure guards, never speed assertions. Each test prints its figures (`--nocapture`).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::databases::temp_dir;
use support::http_client::json_request;
use support::mock_upstream::MockUpstream;

const BINARY: &str = env!("CARGO_BIN_EXE_octopus");

/// A gateway process; killed when dropped.
struct Process {
    child: Child,
    address: SocketAddr,
    log_path: std::path::PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Resident and peak resident memory in KiB, from /proc/PID/status.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("read /proc/PID/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|number| number.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().expect("poll the gateway").is_none(), "the gateway exited; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Starts the binary with `server` settings merged into a test config. `descriptor_limit` sets
/// both the soft and hard RLIMIT_NOFILE of the child (so raising to the hard limit changes
/// nothing and the limit is exact).
fn start(label: &str, server: Value, descriptor_limit: Option<u64>) -> Process {
    // The floods hold hundreds of sockets in this process too, and the tests run in parallel:
    // a soft limit of 1024 would not do.
    octopus::http::descriptor_limit::raise_to_hard_limit().expect("raise this process's open-file limit");
    let directory = temp_dir(label);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let database = directory.join("data.db").to_string_lossy().to_string();
    let mut server_config = json!({"host": "127.0.0.1", "port": port});
    for (key, value) in server.as_object().expect("server settings are an object") {
        server_config[key] = value.clone();
    }
    let config = json!({"server": server_config, "database": {"type": "sqlite", "path": database},
                        "log": {"level": "info"}, "relay": {"probe_interval_seconds": 0}});
    let config_path = directory.join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let log_path = directory.join("gateway.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(BINARY);
    command
        .args(["start", "--config", config_path.to_str().unwrap()])
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    if let Some(limit) = descriptor_limit {
        // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = command.spawn().unwrap();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut process = Process { child, address, log_path };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(try_request(address, "GET", "/healthz", &[], b""), Ok((200, _))) {
        process.assert_alive();
        assert!(Instant::now() < deadline, "the gateway did not start; log:\n{}", process.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    process
}

/// Logs in, points a group at the mock and returns the admin token and a client key.
fn configure(address: SocketAddr, mock: &MockUpstream) -> (String, String) {
    let login = json_request(address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "admin"})));
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["token"].as_str().unwrap().to_string();
    let channel = json_request(address, "POST", "/api/v1/channels", Some(&token), Some(&json!({"name": "c", "type": "openai_chat",
        "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-upstream-000000001"]})));
    assert_eq!(channel.status, 201, "{}", channel.text());
    let group = json_request(address, "POST", "/api/v1/groups", Some(&token), Some(&json!({"name": "g",
        "items": [{"channel_id": channel.json()["id"], "model": "m"}]})));
    assert_eq!(group.status, 201, "{}", group.text());
    let key = json_request(address, "POST", "/api/v1/api-keys", Some(&token), Some(&json!({"name": "k"})));
    assert_eq!(key.status, 201, "{}", key.text());
    (token, key.json()["key"].as_str().unwrap().to_string())
}

/// One request on a fresh connection (`Connection: close`); the status and body, or the IO
/// error when the gateway closed or reset the connection instead of answering.
fn try_request(address: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_response(&response).ok_or_else(|| std::io::Error::new(ErrorKind::UnexpectedEof, "closed without a response"))
}

/// The status and body of a complete `Connection: close` response.
fn parse_response(response: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Some((status, body))
}

fn relay_request(address: SocketAddr, key: &str) -> std::io::Result<(u16, String)> {
    let body = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    try_request(address, "POST", "/v1/chat/completions", &[("authorization", &format!("Bearer {key}")), ("content-type", "application/json")], body.as_bytes())
}

/// What became of a flood connection, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloodState {
    /// Still open, nothing received.
    Open,
    /// Answered 503 (shed).
    Shed,
    /// Answered with another status (a 408 for a head that came too slowly), then closed.
    Answered,
    /// Closed or reset without an answer (evicted, or dropped after the head timeout).
    Closed,
}

/// A connection of the flood: idle (sends nothing) or slow (trickles a head one byte at a time).
struct FloodConnection {
    stream: TcpStream,
    slow: bool,
    received: Vec<u8>,
    state: FloodState,
}

impl FloodConnection {
    fn open(address: SocketAddr, slow: bool) -> Option<FloodConnection> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()?;
        stream.set_nonblocking(true).ok()?;
        let mut connection = FloodConnection { stream, slow, received: Vec::new(), state: FloodState::Open };
        if slow {
            let _ = connection.stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ");
        }
        Some(connection)
    }

    /// Sends the next byte of a slow head and looks at what came back.
    fn step(&mut self) -> FloodState {
        if self.state != FloodState::Open {
            return self.state;
        }
        if self.slow {
            let _ = self.stream.write(b"a");
        }
        let mut buffer = [0u8; 4096];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => self.received.extend_from_slice(&buffer[..count]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return FloodState::Open,
                Err(_) => break,
            }
        }
        self.state = match parse_response(&self.received) {
            Some((503, _)) => FloodState::Shed,
            Some(_) => FloodState::Answered,
            None => FloodState::Closed,
        };
        self.state
    }
}

fn count(flood: &[FloodConnection], state: FloodState) -> usize {
    flood.iter().filter(|connection| connection.state == state).count()
}

fn step_all(flood: &mut [FloodConnection]) {
    for connection in flood.iter_mut() {
        connection.step();
    }
}

#[test]
fn a_flood_of_idle_and_slow_connections_past_the_cap_leaves_the_admin_api_and_prompt_clients_served() {
    const FLOOD: usize = 600;
    let mock = MockUpstream::default_success();
    // 512 descriptors and no max_connections: the cap is derived, (512 - 256) / 2 = 128.
    let mut gateway = start("overload-slowloris", json!({"request_head_timeout_seconds": 3}), Some(512));
    let (token, key) = configure(gateway.address, &mock);
    assert!(gateway.log().contains("open-file limit 512"), "the start log names the descriptor limit:\n{}", gateway.log());
    let (rss_before, _) = gateway.memory_kib();

    let flood_started = Instant::now();
    let mut flood: Vec<FloodConnection> = (0..FLOOD).filter_map(|index| FloodConnection::open(gateway.address, index % 2 == 1)).collect();
    assert_eq!(flood.len(), FLOOD, "every flood connection is accepted by the kernel");
    std::thread::sleep(Duration::from_millis(300));
    step_all(&mut flood);

    // During the flood: the admin API and the relay answer, on new connections.
    let mut served_during_flood = 0;
    for _ in 0..5 {
        let health = try_request(gateway.address, "GET", "/healthz", &[], b"");
        assert!(matches!(health, Ok((200, _))), "{health:?}; log:\n{}", gateway.log());
        let stats = try_request(gateway.address, "GET", "/api/v1/channels", &[("authorization", &format!("Bearer {token}"))], b"").unwrap();
        assert_eq!(stats.0, 200, "{}", stats.1);
        let relayed = relay_request(gateway.address, &key).unwrap();
        assert_eq!(relayed.0, 200, "{}", relayed.1);
        served_during_flood += 3;
        step_all(&mut flood);
    }
    let (rss_during, _) = gateway.memory_kib();
    step_all(&mut flood);
    let still_open = count(&flood, FloodState::Open);
    // At most the cap is open; the requests above took slots of flood connections too.
    assert!(still_open <= 128, "{still_open} flood connections still open past the cap of 128");
    let turned_away = FLOOD - still_open;

    // Slow and idle connections are dropped once the head timeout (3 s) passes; 30 s is a guard.
    let guard = Instant::now() + Duration::from_secs(30);
    while count(&flood, FloodState::Open) > 0 {
        assert!(Instant::now() < guard, "{} flood connections outlived the head timeout", count(&flood, FloodState::Open));
        std::thread::sleep(Duration::from_millis(200));
        step_all(&mut flood);
    }
    let (shed, answered, closed) = (count(&flood, FloodState::Shed), count(&flood, FloodState::Answered), count(&flood, FloodState::Closed));
    let slow_answered_408 = flood.iter().filter(|connection| parse_response(&connection.received).is_some_and(|(status, _)| status == 408)).count();
    assert_eq!(shed + answered + closed, FLOOD);
    assert_eq!(answered, slow_answered_408, "only 408s besides 503s");
    drop(flood);

    let flood_ended = Instant::now();
    let relayed = relay_request(gateway.address, &key).unwrap();
    assert_eq!(relayed.0, 200, "{}", relayed.1);
    let recovery = flood_ended.elapsed();
    assert_eq!(try_request(gateway.address, "GET", "/healthz", &[], b"").unwrap().0, 200);
    gateway.assert_alive();
    // The derived cap keeps the gateway clear of its descriptor limit.
    assert!(!gateway.log().contains("accept failed"), "descriptors ran out under the derived cap:\n{}", gateway.log());
    let (rss_after, peak) = gateway.memory_kib();
    eprintln!(
        "slowloris: {FLOOD} flood connections (half idle, half trickling) against a cap of 128: {turned_away} evicted or shed at once, \
         {shed} shed with 503, {slow_answered_408} answered 408, {closed} closed; {served_during_flood} admin and relay requests served during the flood; \
         flood lasted {:?}; first relay 200 {recovery:?} after it; VmRSS before {rss_before} KiB, during {rss_during} KiB, after {rss_after} KiB, VmHWM {peak} KiB",
        flood_ended - flood_started
    );
    // An open connection costs about 17 KiB and at most 128 are open; 32 MiB is generous, while
    // 600 connections each holding a buffer of head bytes would pass it.
    assert!(rss_during < rss_before + 32 * 1024, "VmRSS grew from {rss_before} to {rss_during} KiB during the flood");
    assert!(peak < 256 * 1024, "VmHWM {peak} KiB");
}

#[test]
fn a_body_slower_than_the_minimum_pace_gets_408_while_a_prompt_body_is_read() {
    let mut gateway = start("overload-slow-body", json!({"request_head_timeout_seconds": 1, "min_body_bytes_per_second": 1000}), None);
    let mut slow = TcpStream::connect(gateway.address).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 50000\r\n\r\n").unwrap();
    // 100 bytes every 300 ms is about 330 bytes a second, a third of the minimum pace.
    let guard = Instant::now() + Duration::from_secs(20);
    let mut received = Vec::new();
    let mut sent = 0;
    // The gateway answers and then closes its side, so reading to the end ends the loop. Once
    // the answer has begun the client stops sending: bytes sent into a closed socket would make
    // the kernel reset the connection and drop the answer before it is read.
    loop {
        assert!(Instant::now() < guard, "the slow body was not cut off");
        if received.is_empty() && slow.write_all(&[b'x'; 100]).is_ok() {
            sent += 100;
        }
        let mut buffer = [0u8; 4096];
        match slow.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => received.extend_from_slice(&buffer[..count]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if received.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let status = parse_response(&received).map(|(status, _)| status);
    assert_eq!(status, Some(408), "the slow body's answer: {}", String::from_utf8_lossy(&received));
    assert!(sent < 50_000, "the body was cut off before it was complete");
    // Bytes sent fast at first earn no credit: 30000 bytes at once (30 s worth at the minimum
    // pace), then 10 bytes every 200 ms. Paced by windows of 1 s, the body is cut off within a
    // window or two; an average over the whole body would let the trickle run for 30 s (1500 bytes).
    let mut bursty = TcpStream::connect(gateway.address).unwrap();
    bursty.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    bursty.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 50000\r\n\r\n").unwrap();
    bursty.write_all(&[b'x'; 30_000]).unwrap();
    let mut trickled = 0;
    let mut bursty_received = Vec::new();
    loop {
        assert!(Instant::now() < guard + Duration::from_secs(20), "the bursty body was not cut off");
        if bursty_received.is_empty() && bursty.write_all(&[b'x'; 10]).is_ok() {
            trickled += 10;
        }
        let mut buffer = [0u8; 4096];
        match bursty.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => bursty_received.extend_from_slice(&buffer[..count]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if bursty_received.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(parse_response(&bursty_received).map(|(status, _)| status), Some(408), "{}", String::from_utf8_lossy(&bursty_received));
    assert!(trickled < 500, "the trickle after a fast start ran on for {trickled} bytes");
    // A prompt client with the same body size is read in full (then refused for its missing key).
    let prompt = try_request(gateway.address, "POST", "/v1/chat/completions", &[], &vec![b'x'; 50_000]).unwrap();
    assert_eq!(prompt.0, 401, "{}", prompt.1);
    gateway.assert_alive();
    eprintln!("slow body: cut off with 408 after {sent} of 50000 bytes at about 330 B/s (minimum 1000 B/s in windows of 1 s); after a fast 30000 bytes, a trickle was cut off after {trickled} bytes");
}

#[test]
fn a_huge_announced_body_is_refused_with_413_in_the_clients_shape_before_it_is_read() {
    let mut gateway = start("overload-huge-length", json!({"max_body_bytes": 1048576, "max_buffered_body_bytes": 4194304}), None);
    let (_, peak_before) = gateway.memory_kib();
    for _ in 0..20 {
        for path in ["/v1/chat/completions", "/v1/messages"] {
            let mut stream = TcpStream::connect(gateway.address).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            // A terabyte is announced and not a byte of it sent: the answer cannot wait for it.
            stream
                .write_all(format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1099511627776\r\n\r\n").as_bytes())
                .unwrap();
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response);
            let (status, body) = parse_response(&response).expect("an answer to the huge announced body");
            assert_eq!(status, 413, "{body}");
            let body: Value = serde_json::from_str(&body).unwrap();
            if path == "/v1/messages" {
                assert_eq!(body["type"], "error", "Anthropic's error shape: {body}");
                assert_eq!(body["error"]["type"], "request_too_large", "{body}");
            } else {
                assert_eq!(body["error"]["code"], "request_too_large", "OpenAI's error shape: {body}");
            }
        }
    }
    // A chunked body stops at the cap: 2 MiB in 64 KiB chunks against a 1 MiB cap.
    let mut stream = TcpStream::connect(gateway.address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
    let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
    let mut chunks_sent = 0;
    for _ in 0..32 {
        if stream.write_all(chunk.as_bytes()).is_err() {
            break;
        }
        chunks_sent += 1;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    assert_eq!(parse_response(&response).map(|(status, _)| status), Some(413), "{}", String::from_utf8_lossy(&response));
    gateway.assert_alive();
    let (_, peak_after) = gateway.memory_kib();
    eprintln!("huge bodies: 40 requests announcing 1 TiB each got 413 unread; a chunked 2 MiB body got 413 ({chunks_sent} of 32 chunks written); VmHWM {peak_before} -> {peak_after} KiB");
    assert!(peak_after < peak_before + 16 * 1024, "VmHWM grew from {peak_before} to {peak_after} KiB");
}

#[test]
fn a_flood_of_large_bodies_is_held_to_the_body_budget() {
    const CLIENTS: usize = 48;
    const BODY_BYTES: usize = 8 * 1024 * 1024;
    const FIRST_PART: usize = 64 * 1024;
    // Bodies of 8 MiB are allowed, but only 16 MiB of bodies at once.
    let mut gateway = start("overload-large-bodies", json!({"max_body_bytes": BODY_BYTES, "max_buffered_body_bytes": 2 * BODY_BYTES}), None);
    let (rss_before, peak_before) = gateway.memory_kib();
    let body = Arc::new(vec![b'x'; BODY_BYTES]);
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let address = gateway.address;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (body, barrier) = (body.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                stream.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
                let head = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {BODY_BYTES}\r\n\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body[..FIRST_PART]);
                // Every client has announced its body before any sends the rest.
                barrier.wait();
                let _ = stream.write_all(&body[FIRST_PART..]);
                let mut response = Vec::new();
                let _ = stream.read_to_end(&mut response);
                parse_response(&response)
            })
        })
        .collect();
    let mut peak_during = 0;
    let mut answers = Vec::new();
    for client in clients {
        peak_during = peak_during.max(gateway.memory_kib().0);
        answers.push(client.join().unwrap());
    }
    let read_in_full = answers.iter().filter(|answer| matches!(answer, Some((401, _)))).count();
    let shed: Vec<&(u16, String)> = answers.iter().flatten().filter(|(status, _)| *status == 503).collect();
    let unanswered = answers.iter().filter(|answer| answer.is_none()).count();
    assert_eq!(read_in_full + shed.len() + unanswered, CLIENTS, "only 401 (read, no key) and 503 (over the budget): {answers:?}");
    assert!(read_in_full >= 2, "at least the two bodies the budget holds were read");
    assert!(!shed.is_empty(), "48 bodies of 8 MiB announced at once against a 16 MiB budget must shed some");
    assert!(shed[0].1.contains("retry"), "the 503 says to retry: {}", shed[0].1);
    assert_eq!(serde_json::from_str::<Value>(&shed[0].1).unwrap()["error"]["code"], "overloaded", "OpenAI's error shape");
    let after = try_request(gateway.address, "POST", "/v1/chat/completions", &[], &body[..BODY_BYTES]).unwrap();
    assert_eq!(after.0, 401, "a full-size body is read once the flood is over: {}", after.1);
    gateway.assert_alive();
    let (rss_after, peak_after) = gateway.memory_kib();
    eprintln!(
        "large bodies: {CLIENTS} clients x 8 MiB against a 16 MiB budget: {read_in_full} read, {} shed with 503, {unanswered} cut without an answer; \
         VmRSS before {rss_before} KiB, sampled peak during {peak_during} KiB, after {rss_after} KiB; VmHWM {peak_before} -> {peak_after} KiB",
        shed.len()
    );
    // All 48 bodies at once would be 384 MiB; the budget holds two (16 MiB) plus copies.
    assert!(peak_after < peak_before + 128 * 1024, "VmHWM grew from {peak_before} to {peak_after} KiB");
}

#[test]
fn running_out_of_descriptors_sheds_without_crashing_and_serves_again_after() {
    const FLOOD: usize = 300;
    let mock = MockUpstream::default_success();
    // A cap far above the 96 descriptors the process has: accept() itself runs out.
    let mut gateway = start("overload-descriptors", json!({"max_connections": 5000, "request_head_timeout_seconds": 2}), Some(96));
    let (_, key) = configure(gateway.address, &mock);
    let flood_started = Instant::now();
    let mut flood: Vec<FloodConnection> = (0..FLOOD).filter_map(|_| FloodConnection::open(gateway.address, false)).collect();
    let connected = flood.len();
    std::thread::sleep(Duration::from_millis(500));
    step_all(&mut flood);
    gateway.assert_alive();
    let shed_at_once = count(&flood, FloodState::Shed);
    // Idle connections are dropped after the 2 s head timeout, and the ones still in the
    // backlog are accepted (or shed) as descriptors free up; 60 s is a guard.
    let guard = Instant::now() + Duration::from_secs(60);
    while count(&flood, FloodState::Open) > 0 {
        assert!(Instant::now() < guard, "{} flood connections never got an answer or a close", count(&flood, FloodState::Open));
        std::thread::sleep(Duration::from_millis(200));
        step_all(&mut flood);
    }
    let (shed, closed) = (count(&flood, FloodState::Shed), count(&flood, FloodState::Closed));
    drop(flood);
    let flood_ended = Instant::now();
    let guard = Instant::now() + Duration::from_secs(30);
    loop {
        gateway.assert_alive();
        if matches!(relay_request(gateway.address, &key), Ok((200, _))) {
            break;
        }
        assert!(Instant::now() < guard, "the gateway did not serve again after the flood; log:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovery = flood_ended.elapsed();
    assert_eq!(try_request(gateway.address, "GET", "/healthz", &[], b"").unwrap().0, 200);
    let log = gateway.log();
    assert!(shed > 0, "some connections were told 503 when descriptors ran out");
    assert!(log.contains("accept failed"), "the descriptor shortage is logged:\n{log}");
    assert!(!log.contains("panicked"), "no panic:\n{log}");
    let (rss, peak) = gateway.memory_kib();
    eprintln!(
        "descriptors: {connected} connections against 96 descriptors: {shed_at_once} shed with 503 in the first 0.5 s, {shed} in all, {closed} closed; \
         flood lasted {:?}; relay 200 again {recovery:?} after it; VmRSS {rss} KiB, VmHWM {peak} KiB",
        flood_ended - flood_started
    );
}

/// Opens a connection that sends a head announcing a body, waits for the gateway's
/// `100 Continue` (so the head has been read and the body is being waited for), sends part of
/// the body and stalls: a busy connection, which cannot be evicted.
fn open_busy_connection(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 100000\r\n\r\n").unwrap();
    let mut continue_line = [0u8; 25];
    stream.read_exact(&mut continue_line).expect("a 100 Continue");
    assert_eq!(&continue_line, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"{\"model\":").unwrap();
    stream
}

#[test]
fn when_every_slot_is_busy_new_connections_get_503_and_a_separate_admin_listener_keeps_answering() {
    const CAP: usize = 20;
    let admin_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin_address: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    // No minimum pace, so stalled bodies hold their slots for the 30 s read timeout.
    let mut gateway = start(
        "overload-busy",
        json!({"max_connections": CAP, "min_body_bytes_per_second": 0, "admin_listen": admin_address.to_string()}),
        None,
    );
    let busy: Vec<TcpStream> = (0..CAP).map(|_| open_busy_connection(gateway.address)).collect();
    // Every slot is busy: the relay's address sheds, with a short 503 the client can act on.
    let mut raw = TcpStream::connect(gateway.address).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut response = Vec::new();
    let _ = raw.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 503"), "{response}");
    assert!(response.contains("retry-after: 1") && response.contains("connection: close"), "{response}");
    assert!(response.contains("connection limit"), "{response}");
    for _ in 0..5 {
        let shed = try_request(gateway.address, "GET", "/healthz", &[], b"");
        assert!(matches!(shed, Ok((503, _))), "{shed:?}");
    }
    // The admin listener has its own table: its slots are untouched by the relay's flood.
    for _ in 0..5 {
        let health = try_request(admin_address, "GET", "/healthz", &[], b"");
        assert!(matches!(health, Ok((200, _))), "{health:?}");
    }
    let login = try_request(admin_address, "POST", "/api/v1/auth/login", &[("content-type", "application/json")], br#"{"username":"admin","password":"admin"}"#);
    assert!(matches!(login, Ok((200, _))), "{login:?}");
    // The busy clients leave; the relay's address serves again.
    drop(busy);
    let guard = Instant::now() + Duration::from_secs(20);
    while !matches!(try_request(gateway.address, "GET", "/healthz", &[], b""), Ok((200, _))) {
        assert!(Instant::now() < guard, "the relay's address did not serve again");
        std::thread::sleep(Duration::from_millis(50));
    }
    gateway.assert_alive();
}
