//! The admin endpoints around model sync (auto-group per mode, the `model_sync` job, fetching the
//! models of an unsaved channel, the channel test, backups of the new fields, the channel list's
//! measured delays) against loopback mocks.

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

fn sync(gateway: &TestGateway, token: &str, channel: i64) -> Value {
    let response = json_request(gateway.address, "POST", &format!("/api/v1/channels/{channel}/sync-models"), Some(token), None);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// The (channel, model, priority) items of a group, in order.
fn group_items(gateway: &TestGateway, token: &str, group: i64) -> Vec<(i64, String, i64)> {
    let body = json_request(gateway.address, "GET", &format!("/api/v1/groups/{group}"), Some(token), None).json();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["channel_id"].as_i64().unwrap(), item["model"].as_str().unwrap().to_string(), item["priority"].as_i64().unwrap()))
        .collect()
}

#[test]
fn auto_group_exact_fuzzy_and_regex_add_items_and_vanished_models_leave() {
    for database in databases::all() {
        let (mock, listed) = model_list_mock(&["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"]);
        let gateway = TestGateway::start(database);
        let token = gateway.admin_token();
        let other = gateway.create_channel(&token, json!({"name": "other", "type": "openai_chat", "base_urls": ["http://127.0.0.1:1"], "keys": ["sk-other-0000000001"]}));
        let exact_group = gateway.create_group(&token, json!({"name": "gpt-4o", "items": [{"channel_id": other, "model": "x", "priority": 4}]}));
        let fuzzy_group = gateway.create_group(&token, json!({"name": "Claude"}));
        let regex_group = gateway.create_group(&token, json!({"name": "small", "match_regex": "mini$"}));

        let exact = gateway.create_channel(&token, channel_body("exact", &mock.base_url(), "exact"));
        let synced = sync(&gateway, &token, exact);
        assert_eq!(synced["models"], json!(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"]));
        assert_eq!(synced["sync"]["groups_changed"], json!(["gpt-4o"]));
        assert_eq!(group_items(&gateway, &token, exact_group), vec![(other, "x".to_string(), 4), (exact, "gpt-4o".to_string(), 5)]);

        let fuzzy = gateway.create_channel(&token, channel_body("fuzzy", &mock.base_url(), "fuzzy"));
        let synced = sync(&gateway, &token, fuzzy);
        assert_eq!(synced["sync"]["groups_changed"], json!(["gpt-4o", "Claude"]));
        assert_eq!(group_items(&gateway, &token, fuzzy_group), vec![(fuzzy, "claude-sonnet-4".to_string(), 0)]);
        assert_eq!(
            group_items(&gateway, &token, exact_group)[2..],
            [(fuzzy, "gpt-4o".to_string(), 6), (fuzzy, "gpt-4o-mini".to_string(), 7)]
        );

        let regex = gateway.create_channel(&token, channel_body("regex", &mock.base_url(), "regex"));
        sync(&gateway, &token, regex);
        assert_eq!(group_items(&gateway, &token, regex_group), vec![(regex, "gpt-4o-mini".to_string(), 0)]);

        // A second sync with the same list changes nothing and adds no duplicate.
        let again = sync(&gateway, &token, regex);
        assert_eq!(again["sync"]["groups_changed"], json!([]));
        assert_eq!(group_items(&gateway, &token, regex_group).len(), 1);

        // The upstream drops gpt-4o-mini: its items of this channel leave, other channels' stay.
        listed.lock().unwrap().retain(|model| model != "gpt-4o-mini");
        let shrunk = sync(&gateway, &token, regex);
        assert_eq!(shrunk["sync"]["removed"], json!(["gpt-4o-mini"]));
        assert_eq!(shrunk["sync"]["groups_changed"], json!(["small"]));
        assert!(group_items(&gateway, &token, regex_group).is_empty());
        assert_eq!(group_items(&gateway, &token, exact_group).len(), 4, "the fuzzy channel's items are its own");

        // Auto-group values and group expressions are validated.
        let bad = json_request(gateway.address, "PUT", &format!("/api/v1/channels/{regex}"), Some(&token), Some(&json!({"auto_group": "sometimes"})));
        assert_eq!(bad.status, 422);
        assert!(bad.text().contains("auto_group"), "{}", bad.text());
        let bad = json_request(gateway.address, "PUT", &format!("/api/v1/groups/{regex_group}"), Some(&token), Some(&json!({"match_regex": "("})));
        assert_eq!(bad.status, 422);
        assert!(bad.text().contains("match_regex"), "{}", bad.text());
    }
}

#[test]
fn the_job_syncs_only_enabled_auto_sync_channels_and_names_failures() {
    let (mock, _listed) = model_list_mock(&["gpt-4o"]);
    let failing = unauthorized_mock();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let group = gateway.create_group(&token, json!({"name": "gpt-4o"}));
    let synced = gateway.create_channel(&token, channel_body("synced", &mock.base_url(), "exact"));
    let mut manual_body = channel_body("manual", &mock.base_url(), "exact");
    manual_body["auto_sync"] = json!(false);
    let manual = gateway.create_channel(&token, manual_body);
    let mut disabled_body = channel_body("disabled", &mock.base_url(), "exact");
    disabled_body["enabled"] = json!(false);
    let disabled = gateway.create_channel(&token, disabled_body);
    gateway.create_channel(&token, channel_body("broken", &failing.base_url(), "exact"));

    let relay = gateway.gateway.as_ref().unwrap().relay.clone();
    let error = octopus::sync::jobs::model_sync_job(&relay).expect_err("the broken channel fails");
    assert!(error.contains("broken"), "{error}");
    assert!(!error.contains("synced (id"), "{error}");

    let models_of = |id: i64| json_request(gateway.address, "GET", &format!("/api/v1/channels/{id}"), Some(&token), None).json()["models"].clone();
    assert_eq!(models_of(synced), json!(["gpt-4o"]));
    assert_eq!(models_of(manual), json!([]));
    assert_eq!(models_of(disabled), json!([]));
    assert_eq!(group_items(&gateway, &token, group), vec![(synced, "gpt-4o".to_string(), 0)]);
    // The relay serves the new item at once: the job reloaded the snapshot.
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    let request = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let response = json_request(gateway.address, "POST", "/v1/chat/completions", Some(&key), Some(&request));
    assert_eq!(response.status, 200, "{}", response.text());
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
fn backups_carry_auto_group_and_group_expressions() {
    for database in databases::all() {
        let gateway = TestGateway::start(database);
        let token = gateway.admin_token();
        let channel = gateway.create_channel(&token, channel_body("c", "http://127.0.0.1:1", "regex"));
        let group = gateway.create_group(&token, json!({"name": "small", "match_regex": "mini$"}));
        let document = json_request(gateway.address, "GET", "/api/v1/export", Some(&token), None).json();
        assert_eq!(document["channels"][0]["auto_group"], "regex");
        assert_eq!(document["groups"][0]["match_regex"], "mini$");

        // Change both, import the document, and the exported values come back.
        json_request(gateway.address, "PUT", &format!("/api/v1/channels/{channel}"), Some(&token), Some(&json!({"auto_group": "none"})));
        json_request(gateway.address, "PUT", &format!("/api/v1/groups/{group}"), Some(&token), Some(&json!({"match_regex": ""})));
        let imported = json_request(gateway.address, "POST", "/api/v1/import", Some(&token), Some(&document));
        assert_eq!(imported.status, 200, "{}", imported.text());
        let stored_channel = json_request(gateway.address, "GET", &format!("/api/v1/channels/{channel}"), Some(&token), None).json();
        assert_eq!(stored_channel["auto_group"], "regex");
        let stored_group = json_request(gateway.address, "GET", &format!("/api/v1/groups/{group}"), Some(&token), None).json();
        assert_eq!(stored_group["match_regex"], "mini$");

        // A document with a bad value is refused with the path of the field.
        let mut bad = document.clone();
        bad["channels"][0]["auto_group"] = json!("always");
        let refused = json_request(gateway.address, "POST", "/api/v1/import", Some(&token), Some(&bad));
        assert!((400..500).contains(&refused.status), "{}", refused.text());
        assert!(refused.text().contains("auto_group"), "{}", refused.text());
    }
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
