//! Deeply nested JSON through every JSON entry point of the gateway (admin API and each relay
//! endpoint), proving the coroutine stack is large enough in debug and optimised builds. The
//! depth is serde_json's own limit: 127 containers around a value (128 levels); one more level
//! is refused with a clean 400.

mod support;

use serde_json::{json, Value};

use support::databases;
use support::gateway::TestGateway;
use support::http_client::request;
use support::mock_upstream::MockUpstream;

fn nested(depth: usize) -> String {
    let mut text = String::from("1");
    for level in 0..depth {
        text = if level % 2 == 0 { format!("[{text}]") } else { format!("{{\"a\":{text}}}") };
    }
    text
}

#[test]
fn deeply_nested_json_reaches_every_entry_point_without_overflow() {
    let mock = MockUpstream::default_success();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let auth = format!("Bearer {token}");
    let deep = nested(126);

    // Admin API: the body is parsed fully before the unknown field is reported.
    let body = format!("{{\"name\":\"x\",\"deep\":{deep}}}");
    let response = request(gateway.address, "POST", "/api/v1/channels", &[("authorization", &auth)], body.as_bytes());
    assert_eq!(response.status, 422, "{}", response.text());
    let too_deep = format!("{{\"deep\":{}}}", nested(128));
    let response = request(gateway.address, "POST", "/api/v1/groups", &[("authorization", &auth)], too_deep.as_bytes());
    assert_eq!(response.status, 400, "{}", response.text());
    // The backup import walks the whole document too.
    let document = format!("{{\"format\":\"octopus-backup\",\"version\":1,\"deep\":{deep}}}");
    let response = request(gateway.address, "POST", "/api/v1/import", &[("authorization", &auth)], document.as_bytes());
    assert_eq!(response.status, 422, "{}", response.text());
    let response = request(gateway.address, "POST", "/api/v1/import", &[("authorization", &auth)], too_deep.as_bytes());
    assert_eq!(response.status, 400, "{}", response.text());

    // Relay: each client protocol parses the body, forwards it (serialising it again) and the
    // mock receives the same nested value.
    let lanes = [
        ("openai_chat", "/v1", "/v1/chat/completions".to_string(), json!({"model": "deep", "messages": [{"role": "user", "content": "hi"}]})),
        ("openai_responses", "/v1", "/v1/responses".to_string(), json!({"model": "deep", "input": "hi"})),
        ("anthropic", "/v1", "/v1/messages".to_string(), json!({"model": "deep", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})),
        ("gemini", "/v1beta", "/v1beta/models/deep:generateContent".to_string(), json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})),
    ];
    for (channel_type, suffix, path, base_body) in lanes {
        let channel = gateway.create_channel(&token, json!({"name": channel_type, "type": channel_type, "base_urls": [format!("{}{suffix}", mock.base_url())], "keys": ["upstream-key-000001"]}));
        let group = json!({"name": "deep", "items": [{"channel_id": channel, "model": "deep-upstream"}]});
        let existing = support::http_client::json_request(gateway.address, "GET", "/api/v1/groups", Some(&token), None).json();
        match existing.as_array().unwrap().first() {
            Some(found) => {
                let id = found["id"].as_i64().unwrap();
                let updated = support::http_client::json_request(gateway.address, "PUT", &format!("/api/v1/groups/{id}"), Some(&token), Some(&group));
                assert_eq!(updated.status, 200);
            }
            None => {
                gateway.create_group(&token, group);
            }
        }
        let client_key = gateway.create_client_key(&token, json!({"name": format!("key-{channel_type}")}));
        let mut text = serde_json::to_string(&base_body).unwrap();
        text.insert_str(text.len() - 1, &format!(",\"metadata_deep\":{deep}"));
        let before = mock.request_count();
        let response = request(gateway.address, "POST", &path, &[("authorization", &format!("Bearer {client_key}"))], text.as_bytes());
        assert_eq!(response.status, 200, "{channel_type}: {}", response.text());
        let received = &mock.requests()[before];
        let expected: Value = serde_json::from_str(&deep).unwrap();
        assert_eq!(received.json()["metadata_deep"], expected, "{channel_type}");
        let overflow = format!("{{\"model\":\"deep\",\"x\":{}}}", nested(128));
        let response = request(gateway.address, "POST", &path, &[("authorization", &format!("Bearer {client_key}"))], overflow.as_bytes());
        assert_eq!(response.status, 400, "{channel_type}: {}", response.text());
    }
}
