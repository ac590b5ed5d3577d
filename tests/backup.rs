//! Backup end to end on every database: export a configured gateway, import the document into a
//! fresh one, and check that it is the same gateway (same export, client keys and channels
//! working, new ids past the imported ones); bad documents change nothing.

mod support;

use serde_json::{json, Value};

use octopus::store::backup::Backup;
use octopus::store::entities::{Group, GroupItem, GroupMode};
use support::databases::{self, TestDatabase};
use support::gateway::TestGateway;
use support::http_client::{json_request, request};
use support::lanes::{Lane, LANES};
use support::mock_upstream::MockUpstream;

fn get(gateway: &TestGateway, token: &str, path: &str) -> Value {
    let response = json_request(gateway.address, "GET", path, Some(token), None);
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.json()
}

/// The exported document without the one field that differs between two exports.
fn export_without_time(gateway: &TestGateway, token: &str, include_stats: bool) -> Value {
    let mut document = get(gateway, token, &format!("/api/v1/export?include_stats={include_stats}"));
    assert!(document["exported_at"].as_str().is_some_and(|time| time.ends_with('Z')), "{document}");
    document.as_object_mut().unwrap().remove("exported_at");
    document
}

fn relay(gateway: &TestGateway, lane: &Lane, client_key: &str, group: &str) -> u16 {
    let headers = lane.auth_headers(client_key);
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let body = lane.body(group, false).to_string();
    request(gateway.address, "POST", &lane.path(group, false), &header_refs, body.as_bytes()).status
}

/// Two channels (one with a disabled key and a remark, headers and a model list), a group over
/// both, a client key with limits, a default and a channel price and changed settings. Returns
/// the client key's secret.
fn configure(gateway: &TestGateway, token: &str, mock: &MockUpstream) -> String {
    let lane = &LANES[0];
    let first = gateway.create_channel(
        token,
        json!({"name": "primary", "type": lane.channel_type, "base_urls": [lane.base_url(&mock.base_url())],
               "keys": [{"key": "sk-upstream-primary-0001", "remark": "main"}, {"key": "sk-upstream-spare-00002", "enabled": false, "remark": "spare"}],
               "models": ["up-model", "other-model"], "headers": {"x-team": "blue"}}),
    );
    // A deleted channel leaves a gap, so the imported ids are not simply 1, 2, 3.
    let doomed = gateway.create_channel(
        token,
        json!({"name": "doomed", "type": "anthropic", "base_urls": ["https://example.invalid/v1"], "keys": ["sk-doomed-key-000000"]}),
    );
    let deleted = json_request(gateway.address, "DELETE", &format!("/api/v1/channels/{doomed}"), Some(token), None);
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let second = gateway.create_channel(
        token,
        json!({"name": "backup-anthropic", "type": "anthropic", "base_urls": ["https://example.invalid/v1"],
               "keys": ["sk-ant-backup-key-0003"], "enabled": false}),
    );
    gateway.create_group(
        token,
        json!({"name": "chat", "mode": "failover", "max_attempts": 2,
               "items": [{"channel_id": first, "model": "up-model", "priority": 1}, {"channel_id": second, "model": "claude", "weight": 3}]}),
    );
    gateway.admin_post(token, "/api/v1/prices", json!({"model": "up-model", "input": 2.0, "output": 8.0}), 201);
    gateway.admin_post(token, "/api/v1/prices", json!({"model": "claude", "channel_id": second, "input": 3.0, "output": 15.0, "cache_read": 0.3}), 201);
    let settings = json_request(gateway.address, "PUT", "/api/v1/settings", Some(token), Some(&json!({"log_bodies": true, "log_max_rows": 5000})));
    assert_eq!(settings.status, 200, "{}", settings.text());
    gateway.create_client_key(token, json!({"name": "laptop", "max_cost": 12.5, "allowed_models": ["chat"], "rpm": 100, "tpm": 1_000_000}))
}

fn import(gateway: &TestGateway, token: &str, document: &Value) -> (u16, Value) {
    let response = json_request(gateway.address, "POST", "/api/v1/import", Some(token), Some(document));
    (response.status, response.json())
}

fn fresh_database_of(database_type: &str) -> TestDatabase {
    match database_type {
        "postgres" => databases::postgres().expect("PostgreSQL is configured"),
        "mysql" => databases::mysql().expect("MySQL is configured"),
        _ => databases::sqlite(),
    }
}

#[test]
fn an_imported_backup_is_the_same_gateway() {
    for database in databases::all() {
        let database_type = database.database_type;
        let mock = MockUpstream::default_success();
        let source = TestGateway::start(database);
        let source_token = source.login_token();
        let client_key = configure(&source, &source_token, &mock);
        assert_eq!(relay(&source, &LANES[0], &client_key, "chat"), 200, "{database_type}");
        source.wait_for_records(1);

        let download = json_request(source.address, "GET", "/api/v1/export?include_stats=true", Some(&source_token), None);
        assert_eq!(download.status, 200, "{database_type}: {}", download.text());
        let disposition = download.header("content-disposition").unwrap_or_default().to_string();
        assert!(disposition.starts_with("attachment; filename=\"octopus-backup-2"), "{disposition}");
        assert!(disposition.ends_with(".json\""), "{disposition}");
        let document = download.json();
        assert_eq!(document["format"], "octopus-backup");
        assert_eq!(document["version"], 1);
        let channels = document["channels"].as_array().unwrap();
        assert_eq!(channels.len(), 2, "{database_type}: {document}");
        assert_eq!(channels[0]["keys"][1], json!({"id": channels[0]["keys"][1]["id"], "key": "sk-upstream-spare-00002", "enabled": false, "remark": "spare"}));
        let api_key = &document["api_keys"][0];
        assert_eq!(api_key["key_hash"].as_str().unwrap().len(), 64);
        assert!(api_key.get("key").is_none(), "a client key's secret is never exported: {api_key}");
        assert_eq!((api_key["rpm"].clone(), api_key["tpm"].clone()), (json!(100), json!(1_000_000)), "{database_type}");
        assert!(!document.to_string().contains(&client_key), "{database_type}: the client key's secret leaked");
        assert_eq!(document["settings"]["log_max_rows"], 5000);
        let stats = document["stats"].as_array().unwrap();
        assert_eq!(stats.iter().map(|row| row["requests"].as_i64().unwrap()).sum::<i64>(), 1, "{database_type}: {stats:?}");
        let plain = export_without_time(&source, &source_token, false);
        assert!(plain.get("stats").is_none(), "stats only when asked: {plain}");

        // A fresh gateway on a fresh database of the same kind.
        let target = TestGateway::start(fresh_database_of(database_type));
        let target_token = target.login_token();
        let (status, answer) = import(&target, &target_token, &document);
        assert_eq!(status, 200, "{database_type}: {answer}");
        assert_eq!(
            answer,
            json!({"imported": {"channels": 2, "groups": 1, "api_keys": 1, "prices": 2, "settings": octopus::settings::SETTING_NAMES.len(), "stats": stats.len()}}),
            "{database_type}"
        );

        // The same document comes back out, statistics included.
        let mut expected = document.clone();
        expected.as_object_mut().unwrap().remove("exported_at");
        assert_eq!(export_without_time(&target, &target_token, true), expected, "{database_type}");
        // The admin session survived the import, and the live settings follow the document.
        assert_eq!(get(&target, &target_token, "/api/v1/settings")["log_bodies"], true, "{database_type}");
        let summary = get(&target, &target_token, "/api/v1/stats/summary");
        assert_eq!(summary["requests"], 1, "{database_type}: {summary}");

        // The client key made on the source works here (its hash came along), through the
        // imported channel and its imported key.
        let hits_before = mock.request_count();
        assert_eq!(relay(&target, &LANES[0], &client_key, "chat"), 200, "{database_type}");
        // Counted once the stats writer has taken the record (it looks every few milliseconds).
        target.wait_for_records(1);
        assert_eq!(mock.request_count(), hits_before + 1);
        let upstream_key = LANES[0].upstream_key(&mock.requests()[hits_before]).map(str::to_string);
        assert_eq!(upstream_key.as_deref(), Some("sk-upstream-primary-0001"), "{database_type}");

        // New rows get ids past the imported ones (PostgreSQL sequences were moved).
        let largest = |kind: &str| document[kind].as_array().unwrap().iter().map(|row| row["id"].as_i64().unwrap()).max().unwrap();
        let new_channel = target.create_channel(
            &target_token,
            json!({"name": "after-import", "type": "openai_chat", "base_urls": ["https://example.invalid/v1"], "keys": ["sk-after-import-0001"]}),
        );
        assert!(new_channel > largest("channels"), "{database_type}: channel id {new_channel}");
        let new_group = target.create_group(&target_token, json!({"name": "after-import"}));
        assert!(new_group > largest("groups"), "{database_type}: group id {new_group}");
        let new_key = target.admin_post(&target_token, "/api/v1/api-keys", json!({"name": "after-import"}), 201);
        assert!(new_key["id"].as_i64().unwrap() > largest("api_keys"), "{database_type}: {new_key}");
        let new_price = target.admin_post(&target_token, "/api/v1/prices", json!({"model": "after-import", "input": 1, "output": 1}), 201);
        assert!(new_price["id"].as_i64().unwrap() > largest("prices"), "{database_type}: {new_price}");
        let all_key_ids: Vec<i64> = document["channels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|channel| channel["keys"].as_array().unwrap().iter().map(|key| key["id"].as_i64().unwrap()))
            .collect();
        let new_channel_json = get(&target, &target_token, &format!("/api/v1/channels/{new_channel}"));
        let new_key_id = new_channel_json["key_info"][0]["id"].as_i64().unwrap();
        assert!(new_key_id > *all_key_ids.iter().max().unwrap(), "{database_type}: key id {new_key_id}");

        // A document without stats replaces the configuration but leaves the statistics alone.
        let summary_before = get(&target, &target_token, "/api/v1/stats/summary")["requests"].clone();
        let (status, answer) = import(&target, &target_token, &plain);
        assert_eq!(status, 200, "{database_type}: {answer}");
        assert_eq!(answer["imported"]["stats"], 0);
        assert_eq!(get(&target, &target_token, "/api/v1/stats/summary")["requests"], summary_before, "{database_type}");
        assert_eq!(export_without_time(&target, &target_token, false), plain, "{database_type}: the extra rows are gone");

        // Statistics in a document replace all of them, counters not written yet included: the
        // request relayed on the target above is gone, the source's one is back.
        let (status, answer) = import(&target, &target_token, &document);
        assert_eq!(status, 200, "{database_type}: {answer}");
        assert_eq!(get(&target, &target_token, "/api/v1/stats/summary")["requests"], 1, "{database_type}");
        assert_eq!(export_without_time(&target, &target_token, true), expected, "{database_type}");
    }
}

#[test]
fn a_bad_document_is_refused_and_changes_nothing() {
    for database in databases::all() {
        let database_type = database.database_type;
        let mock = MockUpstream::default_success();
        let gateway = TestGateway::start(database);
        let token = gateway.login_token();
        configure(&gateway, &token, &mock);
        let before = export_without_time(&gateway, &token, true);
        let channel_ids: Vec<i64> = before["channels"].as_array().unwrap().iter().map(|channel| channel["id"].as_i64().unwrap()).collect();
        let missing_channel = channel_ids.iter().max().unwrap() + 100;

        let mut document = before.clone();
        // Emptied first, so a half-done import would show.
        document["api_keys"] = json!([]);
        let mut dangling = document.clone();
        dangling["groups"][0]["items"][1]["channel_id"] = json!(missing_channel);
        let mut duplicate_names = document.clone();
        duplicate_names["channels"][1]["name"] = duplicate_names["channels"][0]["name"].clone();
        let mut wrong_type = document.clone();
        wrong_type["channels"][0]["enabled"] = json!("yes");
        let mut bad_mode = document.clone();
        bad_mode["groups"][0]["mode"] = json!("fastest");
        let mut bad_setting = document.clone();
        bad_setting["settings"]["log_retention_days"] = json!(0);
        let cases = [
            (dangling, format!("groups[0].items[1].channel_id refers to channel {missing_channel} which is not in the document")),
            (duplicate_names, "channels[1].name \"primary\" repeats the name of channels[0]".to_string()),
            (wrong_type, "channels[0].enabled must be true or false".to_string()),
            (bad_mode, "groups[0].mode \"fastest\" is not a mode".to_string()),
            (bad_setting, "settings: log_retention_days".to_string()),
            (json!({"format": "something-else", "version": 1}), "format must be \"octopus-backup\"".to_string()),
        ];
        for (bad, expected) in cases {
            let (status, answer) = import(&gateway, &token, &bad);
            assert_eq!(status, 422, "{database_type}: {answer}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(&expected), "{database_type}: {message}");
        }
        let malformed = request(
            gateway.address,
            "POST",
            "/api/v1/import",
            &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
            b"{\"format\": \"octopus-backup\",",
        );
        assert_eq!(malformed.status, 400, "{database_type}: {}", malformed.text());
        let anonymous = json_request(gateway.address, "GET", "/api/v1/export", None, None);
        assert_eq!(anonymous.status, 401, "the export holds secrets");
        let anonymous = json_request(gateway.address, "POST", "/api/v1/import", None, Some(&before));
        assert_eq!(anonymous.status, 401);

        assert_eq!(export_without_time(&gateway, &token, true), before, "{database_type}: a refused import changed something");
    }
}

#[test]
fn a_database_error_during_an_import_rolls_everything_back() {
    for database in databases::all() {
        let database_type = database.database_type;
        let mock = MockUpstream::default_success();
        let gateway = TestGateway::start(database);
        let token = gateway.login_token();
        configure(&gateway, &token, &mock);
        let before = export_without_time(&gateway, &token, true);

        // The API would refuse this: the last group item points at no channel, so the foreign
        // key fails after everything before it was deleted and inserted.
        let backup = Backup {
            groups: vec![Group {
                id: 1,
                name: "orphan".to_string(),
                mode: GroupMode::RoundRobin,
                items: vec![GroupItem { channel_id: 999_999, model: "nothing".to_string(), priority: 0, weight: 1 }],
                max_attempts: 0,
                first_byte_timeout_ms: 0,
                total_timeout_ms: 0,
                sticky_seconds: 0,
                match_regex: String::new(),
                created_at: 0,
                updated_at: 0,
            }],
            settings: vec![("setting.log_bodies".to_string(), "false".to_string())],
            stats: Some(Vec::new()),
            ..Backup::default()
        };
        let outcome = gateway.running().store.call(move |store| store.replace_configuration(&backup));
        assert!(outcome.is_err(), "{database_type}: the dangling item was stored");
        assert_eq!(export_without_time(&gateway, &token, true), before, "{database_type}: a failed import left changes");
    }
}
