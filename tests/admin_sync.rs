//! Model sync (`POST /api/v1/channels/{id}/sync-models`) against mock provider model lists, and
//! endpoint probes that rank a channel's base URLs.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::databases;
use support::gateway::TestGateway;
use support::http_client::json_request;
use support::mock_upstream::{MockUpstream, Reply};

fn json_reply(body: serde_json::Value) -> Reply {
    Reply::Json { status: 200, headers: Vec::new(), body: body.to_string() }
}

#[test]
fn openai_model_list_is_synced_and_filtered() {
    let mock = MockUpstream::start(|request| {
        assert_eq!(request.path, "/v1/models");
        json_reply(json!({"object": "list", "data": [{"id": "gpt-4o"}, {"id": "text-embedding-3"}, {"id": "gpt-4o-mini"}, {"id": "gpt-4o"}]}))
    });
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let channel = gateway.create_channel(&token, json!({
        "name": "c", "type": "openai_chat", "base_urls": [format!("{}/v1", mock.base_url())],
        "keys": ["sk-upstream-000000001"], "models": ["old-model"], "match_regex": "^gpt-",
    }));
    let response = json_request(gateway.address, "POST", &format!("/api/v1/channels/{channel}/sync-models"), Some(&token), None);
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["models"], json!(["gpt-4o", "gpt-4o-mini"]));
    assert_eq!(body["sync"]["added"], json!(["gpt-4o", "gpt-4o-mini"]));
    assert_eq!(body["sync"]["removed"], json!(["old-model"]));
    assert_eq!(mock.requests()[0].header("authorization"), Some("Bearer sk-upstream-000000001"));
    let stored = json_request(gateway.address, "GET", &format!("/api/v1/channels/{channel}"), Some(&token), None).json();
    assert_eq!(stored["models"], json!(["gpt-4o", "gpt-4o-mini"]));
}

#[test]
fn anthropic_and_gemini_lists_are_followed_across_pages() {
    let anthropic = MockUpstream::start(|request| {
        assert_eq!(request.header("x-api-key"), Some("sk-ant-000000000001"));
        if request.query.contains("after_id=claude-b") {
            json_reply(json!({"data": [{"type": "model", "id": "claude-c"}], "has_more": false, "last_id": "claude-c"}))
        } else {
            json_reply(json!({"data": [{"type": "model", "id": "claude-a"}, {"type": "model", "id": "claude-b"}], "has_more": true, "last_id": "claude-b"}))
        }
    });
    let gemini = MockUpstream::start(|request| {
        assert_eq!(request.header("x-goog-api-key"), Some("gemini-key-0000001"));
        if request.query.contains("pageToken=next%2Fpage") {
            json_reply(json!({"models": [{"name": "models/gemini-2.5-flash"}]}))
        } else {
            json_reply(json!({"models": [{"name": "models/gemini-2.5-pro"}], "nextPageToken": "next/page"}))
        }
    });
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let anthropic_channel = gateway.create_channel(&token, json!({"name": "a", "type": "anthropic", "base_urls": [format!("{}/v1", anthropic.base_url())], "keys": ["sk-ant-000000000001"]}));
    let gemini_channel = gateway.create_channel(&token, json!({"name": "g", "type": "gemini", "base_urls": [format!("{}/v1beta", gemini.base_url())], "keys": ["gemini-key-0000001"]}));
    let synced = json_request(gateway.address, "POST", &format!("/api/v1/channels/{anthropic_channel}/sync-models"), Some(&token), None);
    assert_eq!(synced.json()["models"], json!(["claude-a", "claude-b", "claude-c"]), "{}", synced.text());
    let synced = json_request(gateway.address, "POST", &format!("/api/v1/channels/{gemini_channel}/sync-models"), Some(&token), None);
    assert_eq!(synced.json()["models"], json!(["gemini-2.5-pro", "gemini-2.5-flash"]), "{}", synced.text());
}

#[test]
fn a_failing_upstream_is_a_502_and_keeps_the_old_list() {
    let mock = MockUpstream::start(|_| Reply::Json { status: 401, headers: Vec::new(), body: json!({"error": {"message": "bad key", "type": "invalid_request_error"}}).to_string() });
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let channel = gateway.create_channel(&token, json!({"name": "c", "type": "openai_chat", "base_urls": [mock.base_url()], "keys": ["sk-upstream-000000001"], "models": ["keep-me"]}));
    let response = json_request(gateway.address, "POST", &format!("/api/v1/channels/{channel}/sync-models"), Some(&token), None);
    assert_eq!(response.status, 502);
    assert!(response.json()["error"]["message"].as_str().unwrap().contains("401"), "{}", response.text());
    let stored = json_request(gateway.address, "GET", &format!("/api/v1/channels/{channel}"), Some(&token), None).json();
    assert_eq!(stored["models"], json!(["keep-me"]));
    assert_eq!(json_request(gateway.address, "POST", "/api/v1/channels/999/sync-models", Some(&token), None).status, 404);
}

#[test]
fn probes_measure_live_endpoints_and_demote_dead_ones() {
    let live = MockUpstream::start(|_| Reply::Json { status: 404, headers: Vec::new(), body: "{}".to_string() });
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gateway = TestGateway::start_with(databases::sqlite(), |config| config.relay.probe_interval_seconds = 3600);
    let token = gateway.admin_token();
    let dead_url = format!("http://127.0.0.1:{dead_port}/v1");
    let live_url = format!("{}/v1", live.base_url());
    let channel = gateway.create_channel(&token, json!({"name": "c", "type": "openai_chat", "base_urls": [dead_url, live_url], "keys": ["sk-upstream-000000001"]}));
    let relay = gateway.gateway.as_ref().unwrap().relay.clone();
    let started = Instant::now();
    loop {
        let (dead, alive) = {
            let health = relay.health.lock();
            (health.endpoints.status(channel, &dead_url), health.endpoints.status(channel, &live_url))
        };
        if let (Some(dead), Some(alive)) = (dead, alive) {
            assert!(dead.demoted, "a refused connection demotes the URL");
            assert!(!alive.demoted);
            assert!(alive.latency_ms.is_some(), "any HTTP answer counts as reachable");
            let order = relay.health.lock().endpoints.order_endpoints(channel, &[dead_url.clone(), live_url.clone()]);
            assert_eq!(order, vec![1, 0], "the live URL goes first");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the new channel was never probed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(live.requests().iter().any(|request| request.method == "HEAD"));
}

/// Some servers answer the HEAD probe with a body anyway (an SSE stream, even). The probe's
/// connection must never be reused by the relay, or the next request would wait behind (or read)
/// those stray bytes: it asks for `connection: close`.
#[test]
fn probes_never_share_their_connection_with_relayed_requests() {
    let mock = MockUpstream::start(|request| {
        if request.method == "HEAD" {
            Reply::Sse { events: vec!["data: {}\n\n".to_string(); 3], gap: Duration::from_millis(50), end: support::mock_upstream::StreamEnd::Finish }
        } else {
            support::mock_upstream::default_reply(request)
        }
    });
    let gateway = TestGateway::start_with(databases::sqlite(), |config| config.relay.probe_interval_seconds = 3600);
    let token = gateway.admin_token();
    let base_url = format!("{}/v1", mock.base_url());
    let channel = gateway.create_channel(&token, json!({"name": "c", "type": "openai_chat", "base_urls": [base_url.clone()], "keys": ["sk-upstream-000000001"]}));
    gateway.create_group(&token, json!({"name": "g", "items": [{"channel_id": channel, "model": "m"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    let relay = gateway.gateway.as_ref().unwrap().relay.clone();
    let started = Instant::now();
    while relay.health.lock().endpoints.status(channel, &base_url).is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "the channel was never probed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let probe = mock.requests().into_iter().find(|request| request.method == "HEAD").expect("a probe");
    assert_eq!(probe.header("connection"), Some("close"));
    for _ in 0..5 {
        let body = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]});
        let response = json_request(gateway.address, "POST", "/v1/chat/completions", Some(&key), Some(&body));
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["choices"][0]["message"]["content"], "Hello from the mock");
    }
}
