//! The Amp CLI proxy: provider paths through the relay (and its statistics), management paths
//! reverse-proxied to a loopback mock Amp server with the Amp key in place of the client's.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use octopus::config::Config;
use support::databases;
use support::gateway::TestGateway;
use support::http_client::{json_request, request, OpenResponse};
use support::mock_upstream::{MockUpstream, Reply, StreamEnd};

const AMP_KEY: &str = "sgamp_user_injected_0001";

/// A mock Amp server: JSON for everything, except SSE for `/api/threads/stream`.
fn mock_amp() -> MockUpstream {
    MockUpstream::start(|recorded| {
        if recorded.path == "/api/threads/stream" {
            let events = (0..4).map(|index| format!("data: {{\"part\":{index}}}\n\n")).collect();
            // Far enough apart that a loaded machine (CI builds beside the tests) still hands
            // them over one by one; at 60 ms, a stall of the test once merged three into one read.
            return Reply::Sse { events, gap: Duration::from_millis(150), end: StreamEnd::Finish };
        }
        let body = json!({"path": recorded.path, "method": recorded.method, "ok": true}).to_string();
        Reply::Json { status: 200, headers: vec![("x-amp-served".to_string(), "yes".to_string())], body }
    })
}

fn amp_enabled(amp: &MockUpstream, restrict_to_localhost: bool) -> impl FnOnce(&mut Config) {
    let upstream_url = amp.base_url();
    move |config: &mut Config| {
        config.ampcode.enabled = true;
        config.ampcode.upstream_url = upstream_url;
        config.ampcode.upstream_api_key = AMP_KEY.to_string();
        config.ampcode.restrict_management_to_localhost = restrict_to_localhost;
    }
}

#[test]
fn management_calls_reach_amp_with_the_amp_key_and_never_the_clients() {
    let amp = mock_amp();
    let gateway = TestGateway::start_with(databases::sqlite(), amp_enabled(&amp, true));
    let token = gateway.login_token();
    let client_key = gateway.create_client_key(&token, json!({"name": "amp"}));

    // A loopback peer without any key is let through (restrict_management_to_localhost = true).
    let response = request(gateway.address, "POST", "/api/internal?getUserInfo", &[("content-type", "application/json")], br#"{"method":"getUserInfo"}"#);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-amp-served"), Some("yes"));
    assert_eq!(response.json()["path"], "/api/internal");

    // A client sending its gateway key everywhere it can: none of it may reach Amp.
    let bearer = format!("Bearer {client_key}");
    let path = format!("/api/threads/T-1?key={client_key}&limit=5");
    let response = request(
        gateway.address,
        "PUT",
        &path,
        &[("authorization", &bearer), ("x-api-key", &client_key), ("x-goog-api-key", &client_key), ("cookie", "octopus=1"), ("x-amp-client", "cli")],
        b"{\"title\":\"t\"}",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["method"], "PUT");
    for path in ["/threads/T-1", "/settings", "/auth/cli-login", "/docs", "/api/telemetry"] {
        assert_eq!(request(gateway.address, "GET", path, &[], b"").status, 200, "{path}");
    }

    let seen = amp.requests();
    assert_eq!(seen.len(), 7);
    for recorded in &seen {
        assert_eq!(recorded.header("authorization"), Some(format!("Bearer {AMP_KEY}").as_str()), "{}", recorded.path);
        let everything = format!("{:?} {} {}", recorded.headers, recorded.query, String::from_utf8_lossy(&recorded.body));
        assert!(!everything.contains(&client_key), "the client key reached Amp: {everything}");
        assert!(recorded.header("x-api-key").is_none() && recorded.header("x-goog-api-key").is_none() && recorded.header("cookie").is_none());
    }
    assert_eq!(seen[0].query, "getUserInfo");
    assert_eq!(seen[0].body, br#"{"method":"getUserInfo"}"#);
    assert_eq!(seen[1].path, "/api/threads/T-1");
    assert_eq!(seen[1].query, "limit=5");
    assert_eq!(seen[1].header("x-amp-client"), Some("cli"));
    assert_eq!(seen[1].body, b"{\"title\":\"t\"}");
}

#[test]
fn without_the_loopback_allowance_a_valid_client_key_is_required() {
    let amp = mock_amp();
    let gateway = TestGateway::start_with(databases::sqlite(), amp_enabled(&amp, false));
    let token = gateway.login_token();
    let client_key = gateway.create_client_key(&token, json!({"name": "amp"}));

    let response = request(gateway.address, "GET", "/api/user", &[], b"");
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(response.json()["error"]["type"], "authentication_error");
    let response = request(gateway.address, "GET", "/api/user", &[("authorization", "Bearer sk-octopus-not-a-real-key")], b"");
    assert_eq!(response.status, 401);
    assert_eq!(amp.request_count(), 0, "refused calls must not reach Amp");

    let bearer = format!("Bearer {client_key}");
    assert_eq!(request(gateway.address, "GET", "/api/user", &[("authorization", &bearer)], b"").status, 200);
    assert_eq!(request(gateway.address, "GET", "/api/user", &[("x-api-key", &client_key)], b"").status, 200);
    let seen = amp.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|recorded| recorded.api_key() == AMP_KEY));
}

#[test]
fn a_streamed_management_answer_arrives_in_pieces() {
    let amp = mock_amp();
    let gateway = TestGateway::start_with(databases::sqlite(), amp_enabled(&amp, true));
    let started = Instant::now();
    let mut response = OpenResponse::start(gateway.address, "GET", "/api/threads/stream", &[("accept", "text/event-stream")], b"");
    assert_eq!(response.status, 200);
    let content_type = response.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("content-type")).map(|(_, value)| value.clone());
    assert_eq!(content_type.as_deref(), Some("text/event-stream"));
    let first = response.next_chunk().expect("a first chunk");
    let first_at = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&first), "data: {\"part\":0}\n\n");
    let mut rest = Vec::new();
    while let Some(chunk) = response.next_chunk() {
        rest.push(String::from_utf8_lossy(&chunk).into_owned());
    }
    assert_eq!(rest.concat(), "data: {\"part\":1}\n\ndata: {\"part\":2}\n\ndata: {\"part\":3}\n\n");
    assert!(rest.len() >= 2, "the events came in one piece: {rest:?}");
    assert!(started.elapsed() >= first_at + Duration::from_millis(120), "the first event waited for the whole stream");
}

#[test]
fn provider_routes_are_relayed_with_client_keys_and_counted() {
    let llm = MockUpstream::default_success();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.login_token();
    let mut channels = Vec::new();
    for (name, channel_type, base) in [("o", "openai_chat", "/v1"), ("a", "anthropic", "/v1"), ("g", "gemini", "/v1beta")] {
        channels.push(gateway.create_channel(
            &token,
            json!({"name": name, "type": channel_type, "base_urls": [format!("{}{base}", llm.base_url())], "keys": ["sk-upstream-000000001"]}),
        ));
    }
    gateway.create_group(&token, json!({"name": "gpt-5", "items": [{"channel_id": channels[0], "model": "up-gpt"}]}));
    gateway.create_group(&token, json!({"name": "claude-sonnet-4-5", "items": [{"channel_id": channels[1], "model": "up-claude"}]}));
    gateway.create_group(&token, json!({"name": "gemini-2.5-flash", "items": [{"channel_id": channels[2], "model": "up-gemini"}]}));
    let client_key = gateway.create_client_key(&token, json!({"name": "amp"}));
    let bearer = format!("Bearer {client_key}");

    let chat = json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]});
    let response = request(gateway.address, "POST", "/api/provider/openai/v1/chat/completions", &[("authorization", &bearer)], chat.to_string().as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["choices"][0]["message"]["content"], "Hello from the mock");

    let responses = json!({"model": "gpt-5", "input": "hi"});
    let response = request(gateway.address, "POST", "/api/provider/openai/v1/responses", &[("authorization", &bearer)], responses.to_string().as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());

    let messages = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = request(
        gateway.address,
        "POST",
        "/api/provider/anthropic/v1/messages",
        &[("x-api-key", &client_key), ("anthropic-version", "2023-06-01")],
        messages.to_string().as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.text().contains("message_stop"), "{}", response.text());

    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let response = request(
        gateway.address,
        "POST",
        "/api/provider/google/v1beta/models/gemini-2.5-flash:generateContent",
        &[("x-goog-api-key", &client_key)],
        gemini.to_string().as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", response.text());

    // Without a client key the provider routes answer 401 in the caller's protocol.
    let response = request(gateway.address, "POST", "/api/provider/anthropic/v1/messages", &[], messages.to_string().as_bytes());
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["type"], "error", "{}", response.text());
    let unknown = request(gateway.address, "POST", "/api/provider/openai/v1/nothing", &[("authorization", &bearer)], b"{}");
    assert_eq!(unknown.status, 404);

    let seen = llm.requests();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|recorded| recorded.api_key() == "sk-upstream-000000001"));

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let summary: Value = json_request(gateway.address, "GET", "/api/v1/stats/summary", Some(&token), None).json();
        // Four served calls plus the refused one, which the relay counts as a failure.
        if summary["success"] == 4 && summary["requests"] == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "provider calls not counted: {summary}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn disabled_amp_serves_no_management_path_and_the_admin_api_and_panel_keep_working() {
    let gateway = TestGateway::start(databases::sqlite());
    for path in ["/api/internal", "/api/user", "/api/threads/T-1", "/api/telemetry"] {
        let response = request(gateway.address, "GET", path, &[], b"");
        assert_eq!(response.status, 404, "{path}: {}", response.text());
    }
    // The panel's client-side routes are untouched while Amp is off.
    let panel = request(gateway.address, "GET", "/settings", &[], b"");
    assert_eq!(panel.status, 200);
    assert!(panel.header("content-type").unwrap().starts_with("text/html"));
    let token = gateway.login_token();
    assert_eq!(json_request(gateway.address, "GET", "/api/v1/settings", Some(&token), None).status, 200);
}

#[test]
fn enabled_amp_leaves_the_admin_api_and_panel_alone() {
    let amp = mock_amp();
    let gateway = TestGateway::start_with(databases::sqlite(), amp_enabled(&amp, true));
    let token = gateway.login_token();
    assert_eq!(json_request(gateway.address, "GET", "/api/v1/settings", Some(&token), None).status, 200);
    assert_eq!(json_request(gateway.address, "GET", "/api/v1/stats/summary", Some(&token), None).status, 200);
    assert_eq!(request(gateway.address, "GET", "/healthz", &[], b"").status, 200);
    let panel = request(gateway.address, "GET", "/", &[], b"");
    assert_eq!(panel.status, 200);
    assert!(panel.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(amp.request_count(), 0);
}
