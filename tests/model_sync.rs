//! Model sync applied to groups: auto-grouping by the `exact`, `fuzzy` and `regex` rules, items of
//! vanished models removed, no duplicate items, and the scheduled job that syncs only `auto_sync`
//! channels. Runs against the loopback mock upstream, on every configured database.

mod support;

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use support::databases;
use support::gateway::TestGateway;
use support::http_client::json_request;
use support::mock_upstream::{MockUpstream, Reply};

/// A mock OpenAI upstream whose model list the test can change between syncs.
fn listing_upstream(models: &Arc<Mutex<Vec<String>>>) -> MockUpstream {
    let models = models.clone();
    MockUpstream::start(move |request| {
        if request.header("authorization") == Some("Bearer sk-refused-0000000001") {
            return Reply::Json {
                status: 401,
                headers: Vec::new(),
                body: json!({"error": {"message": "bad key", "type": "invalid_request_error"}}).to_string(),
            };
        }
        let data: Vec<Value> = models.lock().unwrap().iter().map(|id| json!({"id": id})).collect();
        Reply::Json { status: 200, headers: Vec::new(), body: json!({"object": "list", "data": data}).to_string() }
    })
}

fn set_models(models: &Arc<Mutex<Vec<String>>>, listed: &[&str]) {
    *models.lock().unwrap() = listed.iter().map(|model| model.to_string()).collect();
}

fn sync(gateway: &TestGateway, token: &str, channel: i64) -> Value {
    gateway.admin_post(token, &format!("/api/v1/channels/{channel}/sync-models"), json!({}), 200)
}

/// The group's items as (channel id, model, priority, weight), in stored order.
fn items(gateway: &TestGateway, token: &str, group: i64) -> Vec<(i64, String, i64, i64)> {
    let group = json_request(gateway.address, "GET", &format!("/api/v1/groups/{group}"), Some(token), None).json();
    group["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["channel_id"].as_i64().unwrap(),
                item["model"].as_str().unwrap().to_string(),
                item["priority"].as_i64().unwrap(),
                item["weight"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn auto_group_round(gateway: &TestGateway) {
    let models = Arc::new(Mutex::new(Vec::new()));
    set_models(&models, &["gpt-4o", "gpt-4o-mini"]);
    let mock = listing_upstream(&models);
    let token = gateway.admin_token();
    let channel_body = |name: &str, auto_group: &str| {
        json!({
            "name": name, "type": "openai_chat", "base_urls": [format!("{}/v1", mock.base_url())],
            "keys": ["sk-upstream-000000001"], "auto_group": auto_group, "auto_sync": true,
        })
    };
    let manual = gateway.create_channel(&token, channel_body("manual", "none"));
    let exact = gateway.create_channel(&token, channel_body("exact", "exact"));
    let fuzzy = gateway.create_channel(&token, channel_body("fuzzy", "fuzzy"));
    let regex = gateway.create_channel(&token, channel_body("regex", "regex"));
    assert_eq!(
        json_request(gateway.address, "GET", &format!("/api/v1/channels/{exact}"), Some(&token), None).json()["auto_group"],
        "exact"
    );
    let gpt = gateway.create_group(&token, json!({
        "name": "gpt-4o", "mode": "failover", "items": [{"channel_id": manual, "model": "gpt-4o", "priority": 3}],
    }));
    let mini = gateway.create_group(&token, json!({"name": "MINI", "mode": "failover"}));
    let fast = gateway.create_group(&token, json!({"name": "fast", "mode": "failover", "match_regex": "-mini$"}));

    // Exact: only the group named like the model, appended after the admin's item.
    let synced = sync(gateway, &token, exact);
    assert_eq!(synced["sync"]["groups_changed"], json!(["gpt-4o"]), "{synced}");
    assert_eq!(
        items(gateway, &token, gpt),
        vec![(manual, "gpt-4o".to_string(), 3, 1), (exact, "gpt-4o".to_string(), 4, 1)]
    );

    // Fuzzy: "gpt-4o" is contained in both ids; "MINI" in one, ignoring case.
    let synced = sync(gateway, &token, fuzzy);
    assert_eq!(synced["sync"]["groups_changed"], json!(["gpt-4o", "MINI"]), "{synced}");
    assert_eq!(items(gateway, &token, gpt)[2..], [(fuzzy, "gpt-4o".to_string(), 5, 1), (fuzzy, "gpt-4o-mini".to_string(), 6, 1)]);
    assert_eq!(items(gateway, &token, mini), vec![(fuzzy, "gpt-4o-mini".to_string(), 0, 1)]);

    // Regex: the group's own pattern.
    let synced = sync(gateway, &token, regex);
    assert_eq!(synced["sync"]["groups_changed"], json!(["fast"]), "{synced}");
    assert_eq!(items(gateway, &token, fast), vec![(regex, "gpt-4o-mini".to_string(), 0, 1)]);

    // A second sync with the same list adds nothing, even for an item the admin kept.
    for channel in [exact, fuzzy, regex] {
        assert_eq!(sync(gateway, &token, channel)["sync"]["groups_changed"], json!([]));
    }
    assert_eq!(items(gateway, &token, gpt).len(), 4);

    // The mini model vanishes: the fuzzy channel's items for it go, everyone else's stay.
    set_models(&models, &["gpt-4o"]);
    let synced = sync(gateway, &token, fuzzy);
    assert_eq!(synced["sync"]["removed"], json!(["gpt-4o-mini"]));
    assert_eq!(synced["sync"]["groups_changed"], json!(["gpt-4o", "MINI"]), "{synced}");
    assert_eq!(items(gateway, &token, gpt).len(), 3);
    assert!(items(gateway, &token, mini).is_empty());
    assert_eq!(items(gateway, &token, fast).len(), 1, "the regex channel has not synced yet");

    // The scheduled job syncs only auto_sync channels and names the failing one.
    let manual_body = json_request(
        gateway.address,
        "PUT",
        &format!("/api/v1/channels/{manual}"),
        Some(&token),
        Some(&json!({"auto_sync": false, "models": ["kept-by-hand"]})),
    );
    assert_eq!(manual_body.status, 200, "{}", manual_body.text());
    let refused = gateway.create_channel(&token, json!({
        "name": "refused", "type": "openai_chat", "base_urls": [format!("{}/v1", mock.base_url())],
        "keys": ["sk-refused-0000000001"], "auto_sync": true,
    }));
    let relay = gateway.running().relay.clone();
    let error = octopus::sync::jobs::model_sync_job(&relay).expect_err("one channel fails");
    assert!(error.contains("refused") && error.contains(&format!("id {refused}")), "{error}");
    assert!(!error.contains("manual"), "{error}");
    assert!(items(gateway, &token, fast).is_empty(), "the job synced the regex channel past the failure");
    let manual_stored = json_request(gateway.address, "GET", &format!("/api/v1/channels/{manual}"), Some(&token), None).json();
    assert_eq!(manual_stored["models"], json!(["kept-by-hand"]), "a channel without auto_sync is left alone");
}

#[test]
fn auto_group_rules_and_the_scheduled_job_on_every_database() {
    for database in databases::all() {
        let backend = database.database_type;
        eprintln!("model sync on {backend}");
        let gateway = TestGateway::start(database);
        auto_group_round(&gateway);
    }
}

#[test]
fn invalid_auto_group_settings_are_refused_naming_the_field() {
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let refused = json_request(gateway.address, "POST", "/api/v1/channels", Some(&token), Some(&json!({
        "name": "c", "type": "openai_chat", "base_urls": ["https://a.example"], "auto_group": "sometimes",
    })));
    assert_eq!(refused.status, 422);
    assert!(refused.text().contains("auto_group"), "{}", refused.text());
    let refused = json_request(gateway.address, "POST", "/api/v1/groups", Some(&token), Some(&json!({
        "name": "g", "mode": "failover", "match_regex": "([",
    })));
    assert_eq!(refused.status, 422);
    assert!(refused.text().contains("match_regex"), "{}", refused.text());
}
