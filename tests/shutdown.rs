//! The `octopus` process under load: SIGTERM lets requests in flight finish and writes every
//! counted request; kill -9 loses at most one save interval.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use octopus::store::entities::StatsGrouping;
use support::databases::temp_dir;
use support::http_client::{json_request, request};
use support::mock_upstream::{paced_reply, MockUpstream};

const BINARY: &str = env!("CARGO_BIN_EXE_octopus");

struct Process {
    child: Child,
    address: std::net::SocketAddr,
    database: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(label: &str) -> Process {
    let directory = temp_dir(label);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let database = directory.join("data.db").to_string_lossy().to_string();
    let config = json!({"server": {"host": "127.0.0.1", "port": port}, "database": {"type": "sqlite", "path": database},
                        "log": {"level": "warn"}, "relay": {"probe_interval_seconds": 0}});
    let config_path = directory.join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let child = Command::new(BINARY)
        .args(["start", "--config", config_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Process { child, address, database }
}

/// Logs in, points a group at the mock and returns a client key.
fn configure(process: &Process, mock: &MockUpstream) -> (String, String) {
    let login = json_request(process.address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "admin"})));
    let token = login.json()["token"].as_str().unwrap().to_string();
    let channel = json_request(process.address, "POST", "/api/v1/channels", Some(&token), Some(&json!({"name": "c", "type": "openai_chat",
        "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-upstream-000000001"]})));
    assert_eq!(channel.status, 201, "{}", channel.text());
    let group = json_request(process.address, "POST", "/api/v1/groups", Some(&token), Some(&json!({"name": "g",
        "items": [{"channel_id": channel.json()["id"], "model": "m"}]})));
    assert_eq!(group.status, 201);
    let key = json_request(process.address, "POST", "/api/v1/api-keys", Some(&token), Some(&json!({"name": "k"})));
    (token, key.json()["key"].as_str().unwrap().to_string())
}

fn persisted_requests(database: &str) -> i64 {
    let mut store = octopus::store::open("sqlite", database).unwrap();
    store.stats_grouped(i64::MIN / 4, i64::MAX / 4, StatsGrouping::Total).unwrap()[0].counters.requests
}

fn send(address: std::net::SocketAddr, key: &str, stream: bool) -> u16 {
    let body = json!({"model": "g", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    request(address, "POST", "/v1/chat/completions", &[("authorization", &format!("Bearer {key}"))], body.as_bytes()).status
}

#[test]
fn sigterm_during_load_writes_every_answered_request() {
    // Streams of six events 30 ms apart keep requests in flight when the signal arrives.
    let mock = MockUpstream::start(|request| paced_reply(request, Duration::from_millis(30)));
    let mut process = start("sigterm");
    let (_, key) = configure(&process, &mock);
    let answered = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (answered, stop, key, address) = (answered.clone(), stop.clone(), key.clone(), process.address);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    // A refused connection or a 503 after the signal is not an answered request.
                    let status = std::panic::catch_unwind(|| send(address, &key, true)).unwrap_or(0);
                    if status == 200 {
                        answered.fetch_add(1, Ordering::SeqCst);
                    } else {
                        return;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(process.child.id() as i32, libc::SIGTERM) };
    let status = process.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    assert!(status.success(), "exit status {status:?}");
    let answered = answered.load(Ordering::SeqCst);
    assert!(answered > 4, "the load ran: {answered}");
    assert_eq!(persisted_requests(&process.database), answered, "every answered request is in the database");
}

#[test]
fn kill_9_loses_at_most_one_save_interval() {
    let mock = MockUpstream::default_success();
    let mut process = start("kill9");
    let (token, key) = configure(&process, &mock);
    let changed = json_request(process.address, "PUT", "/api/v1/settings", Some(&token), Some(&json!({"stats_save_interval_seconds": 1})));
    assert_eq!(changed.status, 200);
    for _ in 0..6 {
        assert_eq!(send(process.address, &key, false), 200);
    }
    // More than one interval passes: everything answered by then is on disk.
    std::thread::sleep(Duration::from_millis(2_500));
    process.child.kill().unwrap();
    process.child.wait().unwrap();
    assert_eq!(persisted_requests(&process.database), 6);
}
