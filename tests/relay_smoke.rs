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

#[test]
fn chat_client_on_an_anthropic_channel_and_back() {
    let mock = MockUpstream::default_success();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let anthropic = gateway.create_channel(&token, json!({"name": "a", "type": "anthropic", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-ant-upstream-0001"]}));
    let openai = gateway.create_channel(&token, json!({"name": "o", "type": "openai_chat", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-openai-upstream-01"]}));
    gateway.create_group(&token, json!({"name": "claude", "items": [{"channel_id": anthropic, "model": "claude-real"}]}));
    gateway.create_group(&token, json!({"name": "gpt", "items": [{"channel_id": openai, "model": "gpt-real"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    let auth = format!("Bearer {key}");

    let body = json!({"model": "claude", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]});
    let response = request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &auth)], body.to_string().as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    let answer = response.json();
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello from the mock");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 10);
    let sent = mock.requests().last().unwrap().json();
    assert_eq!(sent["model"], "claude-real");
    assert_eq!(sent["system"], "be brief");
    assert!(sent["max_tokens"].as_u64().unwrap() > 0);

    let body = json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &auth)], body.to_string().as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    let events = sse_events(&response.body);
    let text: String = events
        .iter()
        .filter(|(_, data)| data != "[DONE]")
        .filter_map(|(_, data)| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "Hello from the mock");
    assert_eq!(events.last().unwrap().1, "[DONE]");

    let body = json!({"model": "gpt", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = request(gateway.address, "POST", "/v1/messages", &[("x-api-key", &key), ("anthropic-version", "2023-06-01")], body.to_string().as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    let names: Vec<String> = sse_events(&response.body).into_iter().filter_map(|(name, _)| name).collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(names.iter().any(|name| name == "content_block_delta"));
}

#[test]
fn anthropic_count_tokens_is_answered_locally() {
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let channel = gateway.create_channel(&token, json!({"name": "c", "type": "openai_chat", "base_urls": ["http://127.0.0.1:9/v1"], "keys": ["sk-unused-000000001"]}));
    gateway.create_group(&token, json!({"name": "g", "items": [{"channel_id": channel, "model": "m"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    let body = json!({"model": "g", "messages": [{"role": "user", "content": "x".repeat(400)}]});
    let response = request(gateway.address, "POST", "/v1/messages/count_tokens", &[("x-api-key", &key)], body.to_string().as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    let tokens = response.json()["input_tokens"].as_u64().unwrap();
    assert!((100..110).contains(&tokens), "{tokens}");
    let unknown = request(gateway.address, "POST", "/v1/messages/count_tokens", &[("x-api-key", &key)], br#"{"model":"nope","messages":[]}"#);
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["type"], "error");
    let unauthenticated = request(gateway.address, "POST", "/v1/messages/count_tokens", &[], body.to_string().as_bytes());
    assert_eq!(unauthenticated.status, 401);
    assert_eq!(unauthenticated.json()["error"]["type"], "authentication_error");
}

#[test]
fn server_level_errors_on_relay_paths_use_the_client_protocol_shape() {
    let gateway = TestGateway::start_with(databases::sqlite(), |config| config.server.max_body_bytes = 1000);
    let big = format!("{{\"model\":\"g\",\"pad\":\"{}\"}}", "x".repeat(5000));
    let anthropic = request(gateway.address, "POST", "/v1/messages", &[], big.as_bytes());
    assert_eq!(anthropic.status, 413);
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(anthropic.json()["error"]["type"], "request_too_large");
    let gemini = request(gateway.address, "POST", "/v1beta/models/g:generateContent", &[], big.as_bytes());
    assert_eq!(gemini.status, 413);
    assert_eq!(gemini.json()["error"]["code"], 413);
    let admin = request(gateway.address, "POST", "/api/v1/channels", &[], big.as_bytes());
    assert_eq!(admin.status, 413);
    assert_eq!(admin.json()["error"]["type"], "request_too_large");
}

#[test]
fn image_urls_are_downloaded_and_inlined_for_antigravity() {
    use support::mock_upstream::Reply;
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot-really-pixels";
    let mock = MockUpstream::start(|request| match request.path.as_str() {
        // A wrong image type: the bytes decide which one is sent upstream.
        "/cat.png" => Reply::Binary { status: 200, content_type: "image/jpeg".to_string(), bytes: PNG.to_vec() },
        "/missing.png" => Reply::Json { status: 404, headers: Vec::new(), body: "{}".to_string() },
        _ => support::mock_upstream::default_reply(request),
    });
    let gateway = TestGateway::start_with(databases::sqlite(), |config| {
        config.antigravity.project = "test-project".to_string();
        // The image server is on loopback (tests/media_fetch.rs has the refusals).
        config.relay.allow_private_media_urls = true;
    });
    let token = gateway.admin_token();
    let channel = gateway.create_channel(&token, json!({"name": "ag", "type": "antigravity", "base_urls": [mock.base_url()], "keys": ["ya29.access-token-for-tests"]}));
    gateway.create_group(&token, json!({"name": "ag", "items": [{"channel_id": channel, "model": "gemini-2.5-flash"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    let auth = format!("Bearer {key}");
    let ask = |image_url: String| {
        json!({"model": "ag", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]}]})
    };
    let response = request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &auth)], ask(format!("{}/cat.png", mock.base_url())).to_string().as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["choices"][0]["message"]["content"], "Hello from the mock");
    let sent = mock.requests().into_iter().find(|request| request.path.contains("v1internal")).expect("the upstream call");
    // A non-stream client answer is assembled from Antigravity's streaming endpoint.
    assert_eq!(sent.path, "/v1internal:streamGenerateContent");
    assert_eq!(sent.query, "alt=sse");
    assert_eq!(sent.header("authorization"), Some("Bearer ya29.access-token-for-tests"));
    let envelope = sent.json();
    assert_eq!(envelope["project"], "test-project");
    // Only Antigravity's envelope carries a request id, drawn for each attempt.
    let request_id = envelope["requestId"].as_str().expect("a request id");
    assert!(request_id.starts_with("agent-") && request_id.len() == 30, "{request_id}");
    let parts = &envelope["request"]["contents"][0]["parts"];
    let inline = parts.as_array().unwrap().iter().find_map(|part| part.get("inlineData")).expect("the image is inline");
    assert_eq!(inline["mimeType"], "image/png");
    assert_eq!(inline["data"], octopus::util::base64_encode(PNG));

    let missing = request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &auth)], ask(format!("{}/missing.png", mock.base_url())).to_string().as_bytes());
    assert_eq!(missing.status, 400, "{}", missing.text());
    let message = missing.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("missing.png") && message.contains("404"), "{message}");
}
