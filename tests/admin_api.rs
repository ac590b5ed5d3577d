//! The admin API over real sockets, on every database backend: auth, CRUD round trips,
//! validation errors and the OpenAPI document.

mod support;

use serde_json::{json, Value};

use support::databases;
use support::gateway::TestGateway;
use support::http_client::{json_request, request};

#[test]
fn login_password_change_and_old_token_revocation() {
    let gateway = TestGateway::start(databases::sqlite());
    let address = gateway.address;
    let wrong = json_request(address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "nope"})));
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["type"], "unauthenticated");

    let login = json_request(address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "admin"})));
    assert_eq!(login.status, 200);
    let session = login.json();
    assert_eq!(session["must_change_password"], true, "the default password must be flagged");
    assert!(session["expires_at"].as_i64().unwrap() > octopus::util::unix_seconds());
    let old_token = session["token"].as_str().unwrap().to_string();
    assert_eq!(json_request(address, "GET", "/api/v1/channels", Some(&old_token), None).status, 200);

    let too_short = json_request(address, "POST", "/api/v1/auth/password", Some(&old_token), Some(&json!({"old_password": "admin", "new_password": "short"})));
    assert_eq!(too_short.status, 422);
    let wrong_old = json_request(address, "POST", "/api/v1/auth/password", Some(&old_token), Some(&json!({"old_password": "bad", "new_password": "long enough now"})));
    assert_eq!(wrong_old.status, 401);

    let changed = json_request(address, "POST", "/api/v1/auth/password", Some(&old_token), Some(&json!({"old_password": "admin", "new_password": "long enough now"})));
    assert_eq!(changed.status, 200, "{}", changed.text());
    let new_token = changed.json()["token"].as_str().unwrap().to_string();
    assert_eq!(changed.json()["must_change_password"], false);

    let with_old = json_request(address, "GET", "/api/v1/channels", Some(&old_token), None);
    assert_eq!(with_old.status, 401, "a password change must end old sessions");
    assert_eq!(json_request(address, "GET", "/api/v1/channels", Some(&new_token), None).status, 200);
    let me = json_request(address, "GET", "/api/v1/auth/me", Some(&new_token), None).json();
    assert_eq!(me["must_change_password"], false);

    let relogin = json_request(address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "long enough now"})));
    assert_eq!(relogin.status, 200);
    assert_eq!(relogin.json()["must_change_password"], false);
    assert_eq!(json_request(address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "admin"}))).status, 401);
}

#[test]
fn requests_without_a_valid_token_are_refused() {
    let gateway = TestGateway::start(databases::sqlite());
    for (method, path) in [("GET", "/api/v1/channels"), ("POST", "/api/v1/groups"), ("DELETE", "/api/v1/api-keys/1"), ("GET", "/api/v1/channel-types")] {
        let response = json_request(gateway.address, method, path, None, Some(&json!({})));
        assert_eq!(response.status, 401, "{method} {path}");
        assert_eq!(response.json()["error"]["type"], "unauthenticated");
        let forged = json_request(gateway.address, method, path, Some("deadbeef"), Some(&json!({})));
        assert_eq!(forged.status, 401, "{method} {path} with a made-up token");
    }
}

#[test]
fn repeated_failed_logins_from_one_address_are_throttled() {
    let gateway = TestGateway::start_with(databases::sqlite(), |config| {
        config.auth.max_failed_logins = 3;
    });
    for _ in 0..3 {
        let response = json_request(gateway.address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "guess"})));
        assert_eq!(response.status, 401);
    }
    let blocked = json_request(gateway.address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "admin"})));
    assert_eq!(blocked.status, 429, "even the right password waits while throttled");
    assert!(blocked.header("retry-after").unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(blocked.json()["error"]["type"], "rate_limited");
}

fn crud_round_trip(gateway: &TestGateway) {
    let address = gateway.address;
    let token = gateway.admin_token();
    let token = Some(token.as_str());

    // Channels.
    let created = json_request(address, "POST", "/api/v1/channels", token, Some(&json!({
        "name": "openai-main", "type": "openai_chat", "base_urls": ["https://api.example.com/v1/", "https://backup.example.com/v1"],
        "keys": ["sk-first-secret-000001", {"key": "sk-second-secret-00002", "enabled": false, "remark": "spare"}],
        "models": ["gpt-4o", "gpt-4o-mini", "gpt-4o"], "headers": {"X-Team": "blue"}, "auto_sync": true, "match_regex": "^gpt-",
    })));
    assert_eq!(created.status, 201, "{}", created.text());
    let channel = created.json();
    let channel_id = channel["id"].as_i64().unwrap();
    assert_eq!(channel["base_urls"], json!(["https://api.example.com/v1", "https://backup.example.com/v1"]));
    assert_eq!(channel["keys"], json!(["sk-f...0001", "sk-s...0002"]), "keys are masked when read back");
    assert_eq!(channel["models"], json!(["gpt-4o", "gpt-4o-mini"]));
    assert_eq!(channel["key_info"][1]["enabled"], false);
    assert!(!created.text().contains("sk-first-secret-000001"), "a secret must never be echoed");
    let fetched = json_request(address, "GET", &format!("/api/v1/channels/{channel_id}"), token, None).json();
    assert_eq!(fetched, channel);

    // Sending the masked list back keeps both secrets and ids; a new key is added.
    let first_key_id = channel["key_info"][0]["id"].as_i64().unwrap();
    let mut update = fetched.clone();
    update["keys"] = json!([channel["keys"][0], "sk-third-secret-000003"]);
    update["name"] = json!("openai-renamed");
    let updated = json_request(address, "PUT", &format!("/api/v1/channels/{channel_id}"), token, Some(&update));
    assert_eq!(updated.status, 200, "{}", updated.text());
    let updated = updated.json();
    assert_eq!(updated["name"], "openai-renamed");
    assert_eq!(updated["key_info"][0]["id"].as_i64().unwrap(), first_key_id, "kept keys keep their id");
    assert_eq!(updated["keys"], json!(["sk-f...0001", "sk-t...0003"]));
    let partial = json_request(address, "PUT", &format!("/api/v1/channels/{channel_id}"), token, Some(&json!({"enabled": false})));
    assert_eq!(partial.json()["enabled"], false);
    assert_eq!(partial.json()["keys"], json!(["sk-f...0001", "sk-t...0003"]), "a partial update leaves keys alone");

    // Groups.
    let group = json_request(address, "POST", "/api/v1/groups", token, Some(&json!({
        "name": "smart", "mode": "failover", "max_attempts": 4, "sticky_seconds": 60,
        "items": [{"channel_id": channel_id, "model": "gpt-4o", "priority": 2}, {"channel_id": channel_id, "model": "gpt-4o-mini", "priority": 1, "weight": 3}],
    })));
    assert_eq!(group.status, 201, "{}", group.text());
    let group = group.json();
    let group_id = group["id"].as_i64().unwrap();
    assert_eq!(group["mode"], "failover");
    assert_eq!(group["items"][0]["weight"], 1, "weight defaults to 1");
    assert_eq!(group["items"][1]["weight"], 3);
    let listed = json_request(address, "GET", "/api/v1/groups", token, None).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0], group);
    let regrouped = json_request(address, "PUT", &format!("/api/v1/groups/{group_id}"), token, Some(&json!({"mode": "weighted", "items": [{"channel_id": channel_id, "model": "gpt-4o"}]})));
    assert_eq!(regrouped.status, 200);
    assert_eq!(regrouped.json()["items"].as_array().unwrap().len(), 1);
    assert_eq!(regrouped.json()["max_attempts"], 4);

    // API keys: the secret is shown once; later reads show only the prefix.
    let created_key = json_request(address, "POST", "/api/v1/api-keys", token, Some(&json!({"name": "laptop", "max_cost": 12.5, "allowed_models": ["smart"], "expires_at": 4102444800i64})));
    assert_eq!(created_key.status, 201, "{}", created_key.text());
    let created_key = created_key.json();
    let secret = created_key["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk-octopus-") && secret.len() == 59);
    let key_id = created_key["id"].as_i64().unwrap();
    let fetched_key = json_request(address, "GET", &format!("/api/v1/api-keys/{key_id}"), token, None);
    assert!(!fetched_key.text().contains(&secret));
    assert_eq!(fetched_key.json()["key_prefix"], secret[..15]);
    assert_eq!(fetched_key.json()["max_cost"], 12.5);
    let edited = json_request(address, "PUT", &format!("/api/v1/api-keys/{key_id}"), token, Some(&json!({"enabled": false, "max_cost": null, "expires_at": 0})));
    assert_eq!(edited.status, 200);
    assert_eq!(edited.json()["enabled"], false);
    assert_eq!(edited.json()["max_cost"], Value::Null);
    assert_eq!(edited.json()["expires_at"], Value::Null);
    let keys = json_request(address, "GET", "/api/v1/api-keys", token, None);
    assert!(!keys.text().contains(&secret));

    // Duplicates are 409.
    let duplicate = json_request(address, "POST", "/api/v1/groups", token, Some(&json!({"name": "smart"})));
    assert_eq!(duplicate.status, 409, "{}", duplicate.text());
    assert_eq!(duplicate.json()["error"]["type"], "conflict");
    assert_eq!(json_request(address, "POST", "/api/v1/api-keys", token, Some(&json!({"name": "laptop"}))).status, 409);
    assert_eq!(
        json_request(address, "POST", "/api/v1/channels", token, Some(&json!({"name": "openai-renamed", "type": "anthropic", "base_urls": ["https://x.example"]}))).status,
        409
    );

    // Deleting a channel removes the group items that used it.
    assert_eq!(json_request(address, "DELETE", &format!("/api/v1/channels/{channel_id}"), token, None).status, 200);
    assert_eq!(json_request(address, "GET", &format!("/api/v1/channels/{channel_id}"), token, None).status, 404);
    let orphaned = json_request(address, "GET", &format!("/api/v1/groups/{group_id}"), token, None).json();
    assert_eq!(orphaned["items"], json!([]));
    assert_eq!(json_request(address, "DELETE", &format!("/api/v1/groups/{group_id}"), token, None).status, 200);
    assert_eq!(json_request(address, "DELETE", &format!("/api/v1/api-keys/{key_id}"), token, None).status, 200);
    assert_eq!(json_request(address, "DELETE", &format!("/api/v1/api-keys/{key_id}"), token, None).status, 404);
    assert_eq!(json_request(address, "GET", "/api/v1/groups", token, None).json(), json!([]));
}

#[test]
fn crud_round_trips_on_every_database() {
    for database in databases::all() {
        let backend = database.database_type;
        let gateway = TestGateway::start(database);
        eprintln!("crud round trip on {backend}");
        crud_round_trip(&gateway);
    }
}

#[test]
fn invalid_input_gets_a_clear_error_and_changes_nothing() {
    let gateway = TestGateway::start(databases::sqlite());
    let address = gateway.address;
    let admin_token = gateway.admin_token();
    let token = Some(admin_token.as_str());
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/api/v1/channels", json!({"name": "x", "type": "openai_typo", "base_urls": ["https://a.example"]}), 422, "unknown channel type"),
        ("/api/v1/channels", json!({"name": "x", "type": "anthropic", "base_urls": []}), 422, "base_urls must list at least one URL"),
        ("/api/v1/channels", json!({"name": "x", "type": "anthropic", "base_urls": ["ftp://a.example"]}), 422, "not an http"),
        ("/api/v1/channels", json!({"name": "x", "type": "anthropic", "base_urls": ["https://a.example"], "match_regex": "(["}), 422, "match_regex"),
        ("/api/v1/channels", json!({"name": "x", "type": "anthropic", "base_urls": ["https://a.example"], "proxy": "gopher://p"}), 422, "proxy"),
        ("/api/v1/channels", json!({"name": "", "type": "anthropic", "base_urls": ["https://a.example"]}), 422, "name must not be empty"),
        ("/api/v1/channels", json!({"name": "x", "base_urls": ["https://a.example"]}), 422, "type is required"),
        ("/api/v1/channels", json!({"name": "x", "type": "gemini", "base_urls": ["https://a.example"], "colour": "red"}), 422, "unknown field \"colour\""),
        ("/api/v1/groups", json!({"name": "g", "items": [{"channel_id": 999, "model": "m"}]}), 422, "no channel with id 999"),
        ("/api/v1/groups", json!({"name": "g", "mode": "fastest"}), 422, "unknown mode"),
        // Patterns are regex-lite's, which has no Unicode classes: refused when saved, not at sync.
        ("/api/v1/groups", json!({"name": "g", "match_regex": "^\\p{Greek}"}), 422, "match_regex is not a valid regular expression"),
        ("/api/v1/groups", json!({"name": "g", "items": [{"channel_id": 1}]}), 422, "model"),
        ("/api/v1/api-keys", json!({"name": "k", "max_cost": -1}), 422, "max_cost"),
        ("/api/v1/api-keys", json!({"name": 5}), 422, "name must be a string"),
    ];
    for (path, body, status, message) in cases {
        let response = json_request(address, "POST", path, token, Some(&body));
        assert_eq!(response.status, status, "{path} {body}: {}", response.text());
        let text = response.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(text.contains(message), "{path} {body}: {text:?} should mention {message:?}");
    }
    for raw in [&b"{not json"[..], b"[1,2]", b""] {
        let response = request(address, "POST", "/api/v1/channels", &[("authorization", &format!("Bearer {admin_token}")), ("content-type", "application/json")], raw);
        assert_eq!(response.status, 400, "{:?}", String::from_utf8_lossy(raw));
        assert_eq!(response.json()["error"]["type"], "malformed_request");
    }
    assert_eq!(json_request(address, "GET", "/api/v1/channels", token, None).json(), json!([]));
    assert_eq!(json_request(address, "GET", "/api/v1/groups", token, None).json(), json!([]));
    assert_eq!(json_request(address, "GET", "/api/v1/channels/abc", token, None).status, 404);
    let patch = json_request(address, "PATCH", "/api/v1/channels", token, None);
    assert_eq!(patch.status, 405);
    assert_eq!(patch.header("allow"), Some("GET, HEAD, POST"), "RFC 9110 wants the allowed methods on a 405");
    assert_eq!(json_request(address, "GET", "/api/v1/nothing-here", token, None).status, 404);
}

#[test]
fn channel_types_openapi_health_and_panel_are_served() {
    let gateway = TestGateway::start(databases::sqlite());
    let address = gateway.address;
    let token = gateway.admin_token();
    let types = json_request(address, "GET", "/api/v1/channel-types", Some(&token), None).json();
    let names: Vec<&str> = types.as_array().unwrap().iter().map(|entry| entry["type"].as_str().unwrap()).collect();
    assert_eq!(names, ["openai_chat", "openai_responses", "anthropic", "gemini", "antigravity"]);
    assert_eq!(types[2]["path"], "/messages");
    assert_eq!(types[3]["default_base_url"], "https://generativelanguage.googleapis.com/v1beta");
    let health = request(address, "GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let document = request(address, "GET", "/api/v1/openapi.json", &[], b"");
    assert_eq!(document.status, 200);
    assert!(document.json()["paths"]["/api/v1/channels/{id}"]["put"].is_object());
    let page = request(address, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.text().contains("octopus"));
    let etag = page.header("etag").unwrap().to_string();
    assert_eq!(request(address, "GET", "/", &[("if-none-match", &etag)], b"").status, 304);
}

/// Two admins saving different settings at the same moment: each save reads the settings it
/// changes, stores its field and sets the result in memory. Without an order between them the
/// one set last dropped the other's field from memory (the database kept it), so the gateway ran
/// with a retention the panel no longer showed until its next start.
#[test]
fn simultaneous_saves_of_different_settings_both_stay_in_force() {
    let gateway = TestGateway::start(databases::sqlite());
    let address = gateway.address;
    let token = gateway.admin_token();
    for round in 0..20_u64 {
        let (days, rows) = (10 + round, 5_000 + round);
        let start_together = std::sync::Arc::new(std::sync::Barrier::new(2));
        let saves: Vec<_> = [json!({"log_retention_days": days}), json!({"log_max_rows": rows})]
            .into_iter()
            .map(|change| {
                let (token, start_together) = (token.clone(), start_together.clone());
                std::thread::spawn(move || {
                    start_together.wait();
                    json_request(address, "PUT", "/api/v1/settings", Some(&token), Some(&change))
                })
            })
            .collect();
        for save in saves {
            let response = save.join().unwrap();
            assert_eq!(response.status, 200, "{}", response.text());
        }
        let settings = json_request(address, "GET", "/api/v1/settings", Some(&token), None).json();
        assert_eq!(
            (settings["log_retention_days"].as_u64(), settings["log_max_rows"].as_u64()),
            (Some(days), Some(rows)),
            "round {round}: both saves must be in force"
        );
    }
}
