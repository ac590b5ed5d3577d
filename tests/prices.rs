//! Prices end to end over real sockets: the models.dev sync against a local server serving the
//! shared fixture, the price tiers (channel > default > models.dev > unpriced) through the API,
//! and price CRUD with its errors on every database backend.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::databases::{self, TestDatabase};
use support::gateway::TestGateway;
use support::http_client::{json_request, request};
use support::lanes::ANTHROPIC;
use support::mock_upstream::MockUpstream;
use support::shared_fixtures::fixtures_dir;

/// A model only the full catalogue prices (its provider is not in the compiled-in snapshot), so
/// pricing it proves the synced catalogue is in force.
const SYNC_ONLY_MODEL: &str = "aion-labs-aion-2-0";

/// A loopback stand-in for models.dev: `/api.json` is the shared fixture, `/broken/api.json` is
/// not JSON, anything else is a 404. One thread, one request per connection.
fn start_models_dev() -> SocketAddr {
    let catalogue = std::fs::read(fixtures_dir().join("models-dev/api.json")).expect("read the models.dev fixture");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the models.dev stand-in");
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.trim().is_empty() => break,
                    Ok(_) => {}
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body): (&str, &[u8]) = match path.as_str() {
                "/api.json" => ("200 OK", &catalogue),
                "/broken/api.json" => ("200 OK", b"<html>not the catalogue</html>"),
                _ => ("404 Not Found", b"{\"error\":\"no such file\"}"),
            };
            let head = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
        }
    });
    address
}

fn get(gateway: &TestGateway, token: &str, path: &str) -> (u16, Value) {
    let response = json_request(gateway.address, "GET", path, Some(token), None);
    (response.status, response.json())
}

fn send(gateway: &TestGateway, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let response = json_request(gateway.address, method, path, Some(token), Some(&body));
    (response.status, response.json())
}

fn set_models_dev_url(gateway: &TestGateway, token: &str, url: &str) {
    let (status, settings) = send(gateway, token, "PUT", "/api/v1/settings", json!({"models_dev_url": url}));
    assert_eq!(status, 200, "{settings}");
}

/// The scheduler syncs prices once at start against the default (unreachable in tests, or the
/// real models.dev in CI): waits for that run to end so it cannot land after a test's own sync.
fn wait_for_start_up_sync(gateway: &TestGateway, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, jobs) = get(gateway, token, "/api/v1/jobs");
        assert_eq!(status, 200, "{jobs}");
        let job = jobs["items"].as_array().unwrap().iter().find(|job| job["name"] == "price_sync").cloned().expect("a price_sync job");
        if job["runs"].as_u64().unwrap_or(0) >= 1 && job["running"] == false {
            return;
        }
        assert!(Instant::now() < deadline, "the start-up price sync did not finish: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn effective(gateway: &TestGateway, token: &str, channel_id: Option<i64>, model: &str) -> Value {
    let channel = channel_id.map(|id| format!("channel_id={id}&")).unwrap_or_default();
    let (status, price) = get(gateway, token, &format!("/api/v1/prices/effective?{channel}model={model}"));
    assert_eq!(status, 200, "{price}");
    price
}

#[test]
fn sync_from_a_local_models_dev_and_a_failing_one_keeps_the_catalogue() {
    let models_dev = start_models_dev();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.login_token();
    wait_for_start_up_sync(&gateway, &token);

    assert_eq!(effective(&gateway, &token, None, SYNC_ONLY_MODEL)["source"], "unpriced", "the snapshot does not hold it");
    let snapshot_price = effective(&gateway, &token, None, "claude-sonnet-4-5");
    assert_eq!(snapshot_price["source"], "models.dev", "the compiled-in snapshot prices well-known models before any sync");
    assert_eq!(snapshot_price["input"], 3.0);

    set_models_dev_url(&gateway, &token, &format!("http://{models_dev}"));
    let (status, synced) = send(&gateway, &token, "POST", "/api/v1/prices/sync", json!({}));
    assert_eq!(status, 200, "{synced}");
    let models = synced["models"].as_u64().unwrap();
    assert!(models > 1_000, "{synced}");
    let synced_at = synced["at"].as_str().expect("at is a time").to_string();
    assert!(synced_at.ends_with('Z') && synced_at.contains('T'), "{synced_at}");

    let (status, sync_status) = get(&gateway, &token, "/api/v1/prices/sync");
    assert_eq!(status, 200);
    assert_eq!(sync_status["last_sync_at"], synced_at.as_str());
    assert_eq!(sync_status["last_error"], Value::Null);
    assert_eq!(sync_status["models"], models);
    let synced_price = effective(&gateway, &token, None, SYNC_ONLY_MODEL);
    assert_eq!((synced_price["source"].as_str(), synced_price["input"].as_f64(), synced_price["cache_read"].as_f64()), (Some("models.dev"), Some(1.0), Some(0.25)));

    for (suffix, expected_in_error) in [("/broken", "not valid JSON"), ("/missing", "404")] {
        set_models_dev_url(&gateway, &token, &format!("http://{models_dev}{suffix}"));
        let (status, failed) = send(&gateway, &token, "POST", "/api/v1/prices/sync", json!({}));
        assert_eq!(status, 502, "{failed}");
        assert_eq!(failed["error"]["type"], "upstream_error");
        let (_, after_failure) = get(&gateway, &token, "/api/v1/prices/sync");
        let last_error = after_failure["last_error"].as_str().expect("the failure is shown");
        assert!(last_error.contains(expected_in_error), "{last_error}");
        assert_eq!(after_failure["last_sync_at"], synced_at.as_str(), "the last good sync stays shown");
        assert_eq!(after_failure["models"], models, "the catalogue in force stays");
        assert_eq!(effective(&gateway, &token, None, SYNC_ONLY_MODEL)["source"], "models.dev");
    }

    set_models_dev_url(&gateway, &token, &format!("http://{models_dev}"));
    let (status, _) = send(&gateway, &token, "POST", "/api/v1/prices/sync", json!({}));
    assert_eq!(status, 200);
    assert_eq!(get(&gateway, &token, "/api/v1/prices/sync").1["last_error"], Value::Null, "a good sync clears the error");
}

/// The tiers through the API: defaults view, channel view and effective prices, as rows are
/// added, changed and deleted.
fn tiers_and_crud(database: TestDatabase) {
    let gateway = TestGateway::start(database);
    let token = gateway.login_token();
    let anthropic = gateway.create_channel(
        &token,
        json!({"name": "anthropic", "type": "anthropic", "base_urls": ["https://api.anthropic.com/v1"], "keys": ["sk-ant-test-key-0001"],
               "models": ["claude-sonnet-4-5-20250929", "private-model"]}),
    );
    let openai = gateway.create_channel(
        &token,
        json!({"name": "openai", "type": "openai_chat", "base_urls": ["https://api.openai.com/v1"], "keys": ["sk-test-key-000000002"], "models": []}),
    );
    gateway.create_group(&token, json!({"name": "g", "items": [{"channel_id": openai, "model": "gpt-4o"}, {"channel_id": anthropic, "model": "grouped-only"}]}));

    let (status, defaults) = get(&gateway, &token, "/api/v1/prices");
    assert_eq!(status, 200, "{defaults}");
    let models: Vec<&str> = defaults["items"].as_array().unwrap().iter().map(|item| item["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["claude-sonnet-4-5-20250929", "gpt-4o", "grouped-only", "private-model"], "every model in use, sorted");
    let sonnet = &defaults["items"][0];
    assert_eq!(
        (sonnet["id"].clone(), sonnet["channel_id"].clone(), sonnet["source"].clone(), sonnet["input"].clone(), sonnet["cache_write"].clone()),
        (Value::Null, Value::Null, json!("models.dev"), json!(3.0), json!(3.75))
    );
    assert_eq!(defaults["items"][3], json!({"id": null, "model": "private-model", "channel_id": null, "input": 0.0, "output": 0.0, "cache_read": 0.0, "cache_write": 0.0, "source": "unpriced"}));

    let (status, channel_view) = get(&gateway, &token, &format!("/api/v1/prices?channel_id={anthropic}"));
    assert_eq!(status, 200, "{channel_view}");
    let sources: Vec<(&str, &str)> = channel_view["items"].as_array().unwrap().iter().map(|item| (item["model"].as_str().unwrap(), item["source"].as_str().unwrap())).collect();
    assert_eq!(sources, [("claude-sonnet-4-5-20250929", "models.dev"), ("grouped-only", "unpriced"), ("private-model", "unpriced")]);
    assert_eq!(effective(&gateway, &token, Some(anthropic), "private-model")["source"], "unpriced");

    // Default price: beats the catalogue and fills the unpriced row.
    let (status, default_row) = send(&gateway, &token, "POST", "/api/v1/prices", json!({"model": "private-model", "input": 1.0, "output": 2.0}));
    assert_eq!(status, 201, "{default_row}");
    let default_id = default_row["id"].as_i64().unwrap();
    assert_eq!((default_row["source"].as_str(), default_row["channel_id"].clone(), default_row["cache_read"].as_f64()), (Some("default"), Value::Null, Some(0.0)));
    let price = effective(&gateway, &token, Some(anthropic), "private-model");
    assert_eq!(price, json!({"model": "private-model", "channel_id": anthropic, "input": 1.0, "output": 2.0, "cache_read": 0.0, "cache_write": 0.0, "source": "default"}));
    let (_, sonnet_default) = send(&gateway, &token, "POST", "/api/v1/prices", json!({"model": "claude-sonnet-4-5-20250929", "channel_id": null, "input": 0.5, "output": 0.5}));
    assert_eq!(effective(&gateway, &token, Some(anthropic), "claude-sonnet-4-5-20250929")["source"], "default", "a default beats models.dev");

    // Channel price: beats the default on its channel only.
    let (status, channel_row) = send(&gateway, &token, "POST", "/api/v1/prices", json!({"model": "private-model", "channel_id": anthropic, "input": 5, "output": 6, "cache_read": 0.5, "cache_write": 6.25}));
    assert_eq!(status, 201, "{channel_row}");
    let channel_row_id = channel_row["id"].as_i64().unwrap();
    assert_eq!((channel_row["source"].as_str(), channel_row["channel_id"].as_i64()), (Some("channel"), Some(anthropic)));
    assert_eq!(effective(&gateway, &token, Some(anthropic), "private-model")["input"], 5.0);
    assert_eq!(effective(&gateway, &token, Some(openai), "private-model")["source"], "default");
    assert_eq!(effective(&gateway, &token, None, "private-model")["source"], "default");

    let (_, channel_view) = get(&gateway, &token, &format!("/api/v1/prices?channel_id={anthropic}"));
    let private = channel_view["items"].as_array().unwrap().iter().find(|item| item["model"] == "private-model").unwrap().clone();
    assert_eq!((private["id"].as_i64(), private["channel_id"].as_i64(), private["source"].as_str()), (Some(channel_row_id), Some(anthropic), Some("channel")));
    let sonnet = channel_view["items"].as_array().unwrap().iter().find(|item| item["model"] == "claude-sonnet-4-5-20250929").unwrap().clone();
    assert_eq!((sonnet["id"].clone(), sonnet["channel_id"].clone(), sonnet["source"].as_str()), (sonnet_default["id"].clone(), Value::Null, Some("default")));
    let (_, openai_view) = get(&gateway, &token, &format!("/api/v1/prices?channel_id={openai}"));
    assert_eq!(openai_view["items"].as_array().unwrap().len(), 1, "the group's model: {openai_view}");
    assert_eq!((openai_view["items"][0]["model"].as_str(), openai_view["items"][0]["source"].as_str()), (Some("gpt-4o"), Some("models.dev")));
    let (_, defaults) = get(&gateway, &token, "/api/v1/prices");
    let private_default = defaults["items"].as_array().unwrap().iter().find(|item| item["model"] == "private-model").unwrap().clone();
    assert_eq!((private_default["id"].as_i64(), private_default["source"].as_str()), (Some(default_id), Some("default")), "the defaults view shows no channel rows");

    // Updates keep the row and the fields left out.
    let (status, updated) = send(&gateway, &token, "PUT", &format!("/api/v1/prices/{channel_row_id}"), json!({"output": 7.5}));
    assert_eq!(status, 200, "{updated}");
    assert_eq!((updated["id"].as_i64(), updated["input"].as_f64(), updated["output"].as_f64(), updated["cache_write"].as_f64()), (Some(channel_row_id), Some(5.0), Some(7.5), Some(6.25)));
    assert_eq!(effective(&gateway, &token, Some(anthropic), "private-model")["output"], 7.5);
    let (status, echoed) = send(&gateway, &token, "PUT", &format!("/api/v1/prices/{channel_row_id}"), updated.clone());
    assert_eq!(status, 200, "a row sent back as read is accepted: {echoed}");

    // Deleting falls back a tier at a time.
    let (status, _) = send(&gateway, &token, "DELETE", &format!("/api/v1/prices/{channel_row_id}"), json!({}));
    assert_eq!(status, 200);
    assert_eq!(effective(&gateway, &token, Some(anthropic), "private-model")["source"], "default");
    let (status, _) = send(&gateway, &token, "DELETE", &format!("/api/v1/prices/{default_id}"), json!({}));
    assert_eq!(status, 200);
    assert_eq!(effective(&gateway, &token, Some(anthropic), "private-model")["source"], "unpriced");
    let (status, missing) = send(&gateway, &token, "DELETE", &format!("/api/v1/prices/{default_id}"), json!({}));
    assert_eq!((status, missing["error"]["type"].as_str()), (404, Some("not_found")));

    // Errors: each names what is wrong, and nothing is stored.
    let before = get(&gateway, &token, "/api/v1/prices").1;
    let sonnet_default_id = sonnet_default["id"].as_i64().unwrap();
    for (method, path, body, expected_status, expected_in_message) in [
        ("POST", "/api/v1/prices".to_string(), json!({"input": 1, "output": 1}), 422, "model"),
        ("POST", "/api/v1/prices".to_string(), json!({"model": "  ", "input": 1, "output": 1}), 422, "model"),
        ("POST", "/api/v1/prices".to_string(), json!({"model": "m", "input": -1, "output": 1}), 422, "input"),
        ("POST", "/api/v1/prices".to_string(), json!({"model": "m", "input": 1, "output": "cheap"}), 422, "output"),
        ("POST", "/api/v1/prices".to_string(), json!({"model": "m", "input": 1}), 422, "output"),
        ("POST", "/api/v1/prices".to_string(), json!({"model": "m", "input": 1, "output": 1, "cache_read": -0.1}), 422, "cache_read"),
        ("POST", "/api/v1/prices".to_string(), json!({"model": "m", "input": 1, "output": 1, "channel_id": 999_999}), 422, "channel_id"),
        ("POST", "/api/v1/prices".to_string(), json!({"model": "m", "input": 1, "output": 1, "channel_id": "one"}), 422, "channel_id"),
        ("POST", "/api/v1/prices".to_string(), json!({"model": "m", "input": 1, "output": 1, "price": 3}), 422, "price"),
        ("PUT", format!("/api/v1/prices/{sonnet_default_id}"), json!({"cache_write": -3}), 422, "cache_write"),
        ("PUT", format!("/api/v1/prices/{sonnet_default_id}"), json!({"model": "other"}), 422, "model"),
        ("PUT", format!("/api/v1/prices/{sonnet_default_id}"), json!({"channel_id": anthropic}), 422, "channel_id"),
        ("PUT", "/api/v1/prices/999999".to_string(), json!({"input": 1}), 404, "999999"),
    ] {
        let (status, error) = send(&gateway, &token, method, &path, body.clone());
        assert_eq!(status, expected_status, "{method} {path} {body}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected_in_message), "{method} {path} {body}: {message}");
    }
    assert_eq!(get(&gateway, &token, "/api/v1/prices").1, before, "failed writes change nothing");
    assert_eq!(get(&gateway, &token, "/api/v1/prices?channel_id=999999").0, 404);
    assert_eq!(get(&gateway, &token, "/api/v1/prices?channel_id=abc").0, 400);
    assert_eq!(get(&gateway, &token, "/api/v1/prices/effective?channel_id=999999&model=m").0, 404);
    assert_eq!(get(&gateway, &token, "/api/v1/prices/effective").0, 400);
    assert_eq!(json_request(gateway.address, "GET", "/api/v1/prices", None, None).status, 401);
}

#[test]
fn price_tiers_and_crud_on_sqlite() {
    tiers_and_crud(databases::sqlite());
}

#[test]
fn price_tiers_and_crud_on_postgres() {
    if let Some(database) = databases::postgres() {
        tiers_and_crud(database);
    }
}

#[test]
fn price_tiers_and_crud_on_mysql() {
    if let Some(database) = databases::mysql() {
        tiers_and_crud(database);
    }
}

/// A model no row and no catalogue entry prices is shown as unpriced, at zero.
#[test]
fn an_unknown_model_is_unpriced_and_costs_nothing() {
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.login_token();
    let price = effective(&gateway, &token, None, "no-such-model-anywhere");
    assert_eq!(price, json!({"model": "no-such-model-anywhere", "channel_id": null, "input": 0.0, "output": 0.0, "cache_read": 0.0, "cache_write": 0.0, "source": "unpriced"}));
}

/// The relay charges by the same tiers: a request on a model only the catalogue prices costs what
/// models.dev says (the mock reports 10 input and 5 output tokens: 10 * 3 + 5 * 15 = 105
/// micro-dollars for Claude Sonnet 4.5), and a channel price set through the API applies to the
/// next request at once (10 * 1 + 5 * 2 = 20 more).
#[test]
fn relayed_requests_are_charged_at_the_catalogue_price_then_at_the_channel_price() {
    let mock = MockUpstream::default_success();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.login_token();
    let channel = gateway.create_channel(
        &token,
        json!({"name": "anthropic", "type": ANTHROPIC.channel_type, "base_urls": [ANTHROPIC.base_url(&mock.base_url())], "keys": ["sk-upstream-000000001"]}),
    );
    gateway.create_group(&token, json!({"name": "sonnet", "items": [{"channel_id": channel, "model": "claude-sonnet-4-5-20250929"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "laptop"}));
    let call = || {
        let headers = ANTHROPIC.auth_headers(&key);
        let header_refs: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let body = ANTHROPIC.body("sonnet", false).to_string();
        let response = request(gateway.address, "POST", &ANTHROPIC.path("sonnet", false), &header_refs, body.as_bytes());
        assert_eq!(response.status, 200, "{}", response.text());
    };
    let wait_for_cost = |expected_micros: i64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, summary) = get(&gateway, &token, "/api/v1/stats/summary");
            if (summary["cost"].as_f64().unwrap_or(-1.0) - expected_micros as f64 / 1e6).abs() < 1e-12 {
                return;
            }
            assert!(Instant::now() < deadline, "expected a total cost of {expected_micros} micro-dollars: {summary}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    assert_eq!(effective(&gateway, &token, Some(channel), "claude-sonnet-4-5-20250929")["source"], "models.dev");
    call();
    wait_for_cost(105);

    let (status, row) = send(&gateway, &token, "POST", "/api/v1/prices", json!({"model": "claude-sonnet-4-5-20250929", "channel_id": channel, "input": 1, "output": 2}));
    assert_eq!(status, 201, "{row}");
    call();
    wait_for_cost(125);
}
