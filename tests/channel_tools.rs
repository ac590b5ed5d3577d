//! The admin's channel tools for the panel: fetching the models of an unsaved channel and the
//! channel test, against loopback mock upstreams.

mod support;

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use support::databases;
use support::gateway::TestGateway;
use support::http_client::json_request;
use support::mock_upstream::{MockUpstream, Reply};

/// A mock whose OpenAI model list can be changed while the test runs; other requests get the
/// mock's default answers.
fn model_list_mock(models: &[&str]) -> (MockUpstream, Arc<Mutex<Vec<String>>>) {
    let listed = Arc::new(Mutex::new(models.iter().map(|model| model.to_string()).collect::<Vec<_>>()));
    let listed_for_mock = listed.clone();
    let mock = MockUpstream::start(move |request| {
        if request.path.ends_with("/models") {
            let data: Vec<Value> = listed_for_mock.lock().unwrap().iter().map(|id| json!({"id": id})).collect();
            Reply::Json { status: 200, headers: Vec::new(), body: json!({"object": "list", "data": data}).to_string() }
        } else {
            support::mock_upstream::default_reply(request)
        }
    });
    (mock, listed)
}

fn unauthorized_mock() -> MockUpstream {
    MockUpstream::start(|_| Reply::Json {
        status: 401,
        headers: Vec::new(),
        body: json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}).to_string(),
    })
}

fn channel_body(name: &str, base_url: &str, auto_group: &str) -> Value {
    json!({
        "name": name, "type": "openai_chat", "base_urls": [format!("{base_url}/v1")],
        "keys": ["sk-upstream-000000001"], "auto_sync": true, "auto_group": auto_group,
    })
}

#[test]
fn fetch_models_lists_an_unsaved_channel() {
    let (mock, _listed) = model_list_mock(&["gpt-4o", "gpt-4o-mini", "dall-e-3"]);
    let failing = unauthorized_mock();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let body = json!({"type": "openai_chat", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-upstream-000000001"], "match_regex": "^gpt"});
    let response = json_request(gateway.address, "POST", "/api/v1/channels/fetch-models", Some(&token), Some(&body));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!({"models": ["gpt-4o", "gpt-4o-mini"]}));
    let stored = json_request(gateway.address, "GET", "/api/v1/channels", Some(&token), None).json();
    assert_eq!(stored, json!([]), "nothing is saved");

    let missing_type = json!({"base_urls": [mock.base_url()], "keys": ["sk-upstream-000000001"]});
    let response = json_request(gateway.address, "POST", "/api/v1/channels/fetch-models", Some(&token), Some(&missing_type));
    assert_eq!(response.status, 422, "{}", response.text());

    let body = json!({"type": "openai_chat", "base_urls": [failing.base_url()], "keys": ["sk-upstream-000000001"]});
    let response = json_request(gateway.address, "POST", "/api/v1/channels/fetch-models", Some(&token), Some(&body));
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(response.text().contains("Incorrect API key provided"), "{}", response.text());
}

#[test]
fn channel_test_reports_success_and_upstream_failures_without_the_key() {
    let (mock, _listed) = model_list_mock(&[]);
    let failing = unauthorized_mock();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let good = gateway.create_channel(&token, channel_body("good", &mock.base_url(), "none"));
    let response = json_request(gateway.address, "POST", &format!("/api/v1/channels/{good}/test"), Some(&token), Some(&json!({"model": "gpt-4o"})));
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["ok"], json!(true), "{body}");
    assert_eq!(body["status"], json!(200));
    assert!(body["latency_ms"].is_u64());
    let sent = mock.requests().into_iter().find(|request| request.method == "POST").expect("a test request");
    assert_eq!(sent.path, "/v1/chat/completions");
    let sent_body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(sent_body["model"], "gpt-4o");
    assert_eq!(sent_body["max_tokens"], 16);

    // Without a model and with none listed, the admin is told to name one.
    let response = json_request(gateway.address, "POST", &format!("/api/v1/channels/{good}/test"), Some(&token), None);
    assert_eq!(response.status, 422, "{}", response.text());

    let bad = gateway.create_channel(&token, json!({"name": "bad", "type": "openai_chat", "base_urls": [failing.base_url()], "keys": ["sk-upstream-000000001"], "models": ["gpt-4o"]}));
    let response = json_request(gateway.address, "POST", &format!("/api/v1/channels/{bad}/test"), Some(&token), Some(&json!({})));
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["ok"], json!(false));
    assert_eq!(body["status"], json!(401));
    assert!(body["message"].as_str().unwrap().contains("Incorrect API key provided"), "{body}");
    assert!(!response.text().contains("sk-upstream-000000001"));
    assert_eq!(json_request(gateway.address, "POST", "/api/v1/channels/999/test", Some(&token), None).status, 404);
}

#[test]
fn the_channel_list_shows_each_base_urls_measured_delay() {
    let (mock, _listed) = model_list_mock(&[]);
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let channel = gateway.create_channel(&token, json!({"name": "c", "type": "openai_chat",
        "base_urls": [format!("{}/v1", mock.base_url()), "http://127.0.0.1:9/v1"], "keys": ["sk-upstream-000000001"]}));
    gateway.create_group(&token, json!({"name": "g", "items": [{"channel_id": channel, "model": "m"}]}));
    let listed = json_request(gateway.address, "GET", "/api/v1/channels", Some(&token), None).json();
    assert_eq!(listed[0]["endpoints"][0]["delay_ms"], Value::Null, "not measured yet: {listed}");
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    let body = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let response = support::http_client::request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &format!("Bearer {key}"))], body.as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    let listed = json_request(gateway.address, "GET", "/api/v1/channels", Some(&token), None).json();
    let endpoints = listed[0]["endpoints"].as_array().unwrap().clone();
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[0]["url"], format!("{}/v1", mock.base_url()));
    assert!(endpoints[0]["delay_ms"].is_u64(), "measured by the request: {listed}");
    assert_eq!(endpoints[0]["demoted"], false);
}
