//! A first end-to-end check of the relay in pass-through, one client protocol at a time.

mod support;

use serde_json::json;

use support::databases;
use support::gateway::TestGateway;
use support::http_client::{request, sse_events};
use support::mock_upstream::MockUpstream;

#[test]
fn chat_completion_passes_through_non_stream_and_stream() {
    let mock = MockUpstream::default_success();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let channel = gateway.create_channel(&token, json!({"name": "c", "type": "openai_chat", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-upstream-key-0001"]}));
    gateway.create_group(&token, json!({"name": "my-model", "items": [{"channel_id": channel, "model": "gpt-real"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    let auth = format!("Bearer {key}");
    let body = json!({"model": "my-model", "messages": [{"role": "user", "content": "hi"}]});
    let response = request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &auth), ("content-type", "application/json")], body.to_string().as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["choices"][0]["message"]["content"], "Hello from the mock");
    let seen = mock.requests();
    assert_eq!(seen[0].json()["model"], "gpt-real");
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-upstream-key-0001"));

    let body = json!({"model": "my-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &auth)], body.to_string().as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    let events = sse_events(&response.body);
    assert!(response.chunks.len() >= 5, "{:?}", response.chunks.len());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert!(!response.text().contains("\"usage\":{"), "usage chunk stripped: {}", response.text());
    assert_eq!(mock.requests()[1].json()["stream_options"]["include_usage"], true);
}
