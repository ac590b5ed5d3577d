//! The access log of the real binary at the default `info` level: requests relayed from several
//! threads at once, so that the stats writer takes many finished requests in one batch, must each
//! leave exactly one whole line (time, level, client format, group, channel, status) in the
//! captured output, with no line torn or merged with another.

mod support;


use serde_json::json;

use support::binary::{start_logged, stop_and_read_log};
use support::databases::temp_dir;
use support::http_client::{json_request, request};
use support::mock_upstream::{MockUpstream, default_reply};

const THREADS: usize = 8;
const REQUESTS_PER_THREAD: usize = 25;

#[test]
fn every_relayed_request_has_one_whole_access_line() {
    let mock = MockUpstream::start(default_reply);
    let dir = temp_dir("access-log");
    let (mut child, address) = start_logged(&dir, &[("OCTOPUS_LOG_LEVEL", "info")]);

    let login = json_request(address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "admin"})));
    let first_token = login.json()["token"].as_str().unwrap().to_string();
    let changed = json_request(
        address,
        "POST",
        "/api/v1/auth/password",
        Some(&first_token),
        Some(&json!({"old_password": "admin", "new_password": "access-log-password-1"})),
    );
    assert_eq!(changed.status, 200, "{}", changed.text());
    let token = changed.json()["token"].as_str().unwrap().to_string();
    let channel = json_request(
        address,
        "POST",
        "/api/v1/channels",
        Some(&token),
        Some(&json!({"name": "mock-channel", "type": "openai_chat", "base_urls": [mock.base_url()], "keys": ["sk-upstream"]})),
    );
    assert_eq!(channel.status, 201, "{}", channel.text());
    let channel_id = channel.json()["id"].as_i64().unwrap();
    let group = json_request(
        address,
        "POST",
        "/api/v1/groups",
        Some(&token),
        Some(&json!({"name": "logged-group", "items": [{"channel_id": channel_id, "model": "m"}]})),
    );
    assert_eq!(group.status, 201, "{}", group.text());
    let created_key = json_request(address, "POST", "/api/v1/api-keys", Some(&token), Some(&json!({"name": "k"})));
    let bearer = format!("Bearer {}", created_key.json()["key"].as_str().unwrap());

    let chat = json!({"model": "logged-group", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                for _ in 0..REQUESTS_PER_THREAD {
                    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
                    let response = request(address, "POST", "/v1/chat/completions", &headers, chat.as_bytes());
                    assert_eq!(response.status, 200, "{}", response.text());
                }
            });
        }
    });

    // Stop the gateway so every line is written, then read them all.
    let log = stop_and_read_log(&mut child, &dir);

    for line in log.lines() {
        assert!(is_time_stamped(line), "every line starts with its time and level: {line:?}\nthe log:\n{log}");
    }
    let access_lines: Vec<&str> = log.lines().filter(|line| line.contains(" model=logged-group ")).collect();
    assert_eq!(access_lines.len(), THREADS * REQUESTS_PER_THREAD, "one access line per request:\n{log}");
    for line in access_lines {
        let (_, message) = line.split_once(" [INFO] ").unwrap_or_else(|| panic!("access lines are at info level: {line:?}"));
        assert!(
            message.starts_with("openai_chat model=logged-group channel=mock-channel status=200 attempts=1 ttft_ms="),
            "{line:?}"
        );
        assert!(message.contains(" total_ms="), "{line:?}");
        assert_eq!(line.matches(" [INFO] ").count(), 1, "one record per line: {line:?}");
    }
}

/// `2026-12-06T03:00:00.123Z [LEVEL] ...`
fn is_time_stamped(line: &str) -> bool {
    let bytes = line.as_bytes();
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ [";
    bytes.len() > shape.len()
        && shape.bytes().zip(bytes).all(|(expected, &actual)| if expected == b'd' { actual.is_ascii_digit() } else { expected == actual })
        && ["INFO] ", "WARN] ", "ERROR] ", "DEBUG] ", "TRACE] "].iter().any(|level| line[shape.len()..].starts_with(level))
}
