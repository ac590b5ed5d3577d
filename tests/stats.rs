//! Statistics, prices, request logs and settings end to end: real gateway, real databases, the
//! loopback mock upstream, every client protocol.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use octopus::store::entities::{ModelPrice, StatsGrouping};
use support::databases::{self, TestDatabase};
use support::gateway::TestGateway;
use support::http_client::{json_request, request};
use support::lanes::{Lane, LANES};
use support::mock_upstream::MockUpstream;

/// Every mock answer reports 10 input and 5 output tokens; at 2 and 8 USD per 1M tokens that is
/// 10 * 2 + 5 * 8 = 60 micro-dollars a request.
const COST_PER_REQUEST_MICROS: i64 = 60;

fn get(gateway: &TestGateway, token: &str, path: &str) -> Value {
    let response = json_request(gateway.address, "GET", path, Some(token), None);
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.json()
}

fn send(gateway: &TestGateway, lane: &Lane, key: &str, group: &str, stream: bool) -> u16 {
    let headers = lane.auth_headers(key);
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let body = lane.body(group, stream).to_string();
    let response = request(gateway.address, "POST", &lane.path(group, stream), &header_refs, body.as_bytes());
    assert_eq!(response.status, 200, "{} stream={stream}: {}", lane.name(), response.text());
    response.status
}

fn poll<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn set_default_price(gateway: &TestGateway, model: &str, input: f64, output: f64) {
    let price = ModelPrice { model: model.to_string(), input, output, ..ModelPrice::default() };
    gateway.running().store.call(move |store| store.upsert_price(&price)).expect("store the price");
}

/// One channel and group per protocol (pass-through), a price for each upstream model, one key.
fn configure(gateway: &TestGateway, token: &str, mock: &MockUpstream) -> String {
    for lane in LANES {
        set_default_price(gateway, &format!("up-{}", lane.name()), 2.0, 8.0);
    }
    for lane in LANES {
        let channel = gateway.create_channel(
            token,
            json!({"name": format!("ch-{}", lane.name()), "type": lane.channel_type,
                   "base_urls": [lane.base_url(&mock.base_url())], "keys": ["sk-upstream-000000001"]}),
        );
        gateway.create_group(token, json!({"name": format!("g-{}", lane.name()), "items": [{"channel_id": channel, "model": format!("up-{}", lane.name())}]}));
    }
    gateway.create_client_key(token, json!({"name": "laptop"}))
}

fn check_counted(gateway: &TestGateway, token: &str, expected_requests: i64) {
    let summary = get(gateway, token, "/api/v1/stats/summary");
    assert_eq!(summary["requests"], expected_requests, "{summary}");
    assert_eq!(summary["success"], expected_requests);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["input_tokens"], expected_requests * 10);
    assert_eq!(summary["output_tokens"], expected_requests * 5);
    let expected_cost = (expected_requests * COST_PER_REQUEST_MICROS) as f64 / 1e6;
    assert!((summary["cost"].as_f64().unwrap() - expected_cost).abs() < 1e-9, "{summary}");

    let channels = get(gateway, token, "/api/v1/stats/channels");
    let items = channels["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{channels}");
    for item in items {
        assert_eq!(item["requests"], expected_requests / 4, "{item}");
        assert!(item["channel_name"].as_str().unwrap().starts_with("ch-"));
    }
    let models = get(gateway, token, "/api/v1/stats/models");
    assert_eq!(models["items"].as_array().unwrap().len(), 4);
    assert!(models["items"][0]["model"].as_str().unwrap().starts_with("up-"));
    let groups = get(gateway, token, "/api/v1/stats/groups");
    assert_eq!(groups["items"].as_array().unwrap().len(), 4);
    let keys = get(gateway, token, "/api/v1/stats/api-keys");
    assert_eq!(keys["items"][0]["api_key_name"], "laptop");
    assert_eq!(keys["items"][0]["requests"], expected_requests);

    let daily = get(gateway, token, "/api/v1/stats/daily?days=7&tz=%2B08:00");
    let days = daily["items"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(days.iter().map(|day| day["requests"].as_i64().unwrap()).sum::<i64>(), expected_requests);
    assert_eq!(days[6]["requests"], expected_requests, "today (at +08:00) holds every request: {daily}");
    let hourly = get(gateway, token, "/api/v1/stats/hourly?tz=+08:00");
    let hours = hourly["items"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    assert_eq!(hours.iter().map(|hour| hour["requests"].as_i64().unwrap()).sum::<i64>(), expected_requests);
}

fn every_protocol_is_counted_priced_logged_and_kept(database: TestDatabase) {
    let mock = MockUpstream::default_success();
    let mut gateway = TestGateway::start(database);
    let token = gateway.admin_token();
    let key = configure(&gateway, &token, &mock);
    for lane in LANES {
        for stream in [false, true] {
            send(&gateway, &lane, &key, &format!("g-{}", lane.name()), stream);
        }
    }
    gateway.wait_for_records(8);
    // Live: nothing has been written yet (the save interval is a minute), the API merges.
    check_counted(&gateway, &token, 8);

    let logs = poll("8 logs", || {
        let logs = get(&gateway, &token, "/api/v1/logs?page_size=5");
        (logs["total"] == 8).then_some(logs)
    });
    assert_eq!(logs["items"].as_array().unwrap().len(), 5);
    assert_eq!(logs["page_size"], 5);
    let newest = &logs["items"][0];
    assert_eq!(newest["api_key_name"], "laptop");
    assert_eq!(newest["success"], true);
    assert_eq!(newest["input_tokens"], 10);
    assert!((newest["cost"].as_f64().unwrap() - 60e-6).abs() < 1e-12, "{newest}");
    assert!(newest["latency_ms"].as_i64().is_some());
    let detail = get(&gateway, &token, &format!("/api/v1/logs/{}", newest["id"]));
    assert_eq!(detail["attempt_details"].as_array().unwrap().len(), 1, "{detail}");
    assert_eq!(detail["attempt_details"][0]["outcome"], "success");
    assert!(detail["attempt_details"][0]["base_url"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    assert!(!detail.to_string().contains("sk-upstream"), "no channel key in a log: {detail}");
    let streamed = get(&gateway, &token, "/api/v1/logs?group=g-openai_chat&status=success");
    assert_eq!(streamed["total"], 2);
    let failed = get(&gateway, &token, "/api/v1/logs?status=failed");
    assert_eq!(failed["total"], 0);
    let rfc3339 = |unix_seconds: i64| octopus::stats::log_view::rfc3339_millis(unix_seconds * 1_000);
    let now = octopus::util::unix_seconds();
    for (query, expected) in [
        (format!("from={}", rfc3339(now - 3_600)), 8),
        (format!("from={}", rfc3339(now + 3_600)), 0),
        (format!("to={}", rfc3339(now - 3_600)), 0),
        (format!("from={}&to={}&group=g-gemini", rfc3339(now - 60), rfc3339(now + 60)), 2),
    ] {
        let page = get(&gateway, &token, &format!("/api/v1/logs?{query}"));
        assert_eq!(page["total"], expected, "{query}: {page}");
    }

    // A restart writes everything and reads it back: every total is kept.
    gateway.restart();
    let token = gateway.login_token_after_change();
    check_counted(&gateway, &token, 8);
    let persisted = gateway.running().store.call(|store| store.stats_grouped(i64::MIN / 4, i64::MAX / 4, StatsGrouping::Total)).unwrap();
    assert_eq!(persisted[0].counters.requests, 8, "the restart wrote the deltas");
    assert_eq!(persisted[0].counters.cost_micros, 8 * COST_PER_REQUEST_MICROS);
}

#[test]
fn every_protocol_is_counted_priced_logged_and_kept_across_a_restart() {
    for database in databases::all() {
        every_protocol_is_counted_priced_logged_and_kept(database);
    }
}

#[test]
fn the_request_after_the_spending_cap_is_refused_naming_the_cap() {
    let mock = MockUpstream::default_success();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    // 10 input tokens at 100,000 USD per 1M tokens: $1 a request.
    set_default_price(&gateway, "expensive", 100_000.0, 0.0);
    let channel = gateway.create_channel(&token, json!({"name": "c", "type": "openai_chat", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-upstream-000000001"]}));
    gateway.create_group(&token, json!({"name": "g", "items": [{"channel_id": channel, "model": "expensive"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "capped", "max_cost": 1.5}));
    let auth = format!("Bearer {key}");
    let body = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    for expected in [200, 200] {
        let response = request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &auth)], body.as_bytes());
        assert_eq!(response.status, expected, "{}", response.text());
        let seen = gateway.wait_for_records(1).len();
        poll("the spend to be counted", || (gateway.wait_for_records(seen).len() >= seen).then_some(()));
    }
    poll("$2 spent", || {
        let keys = get(&gateway, &token, "/api/v1/stats/api-keys");
        (keys["items"][0]["cost"].as_f64() == Some(2.0)).then_some(())
    });
    let refused = request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &auth)], body.as_bytes());
    assert_eq!(refused.status, 429, "{}", refused.text());
    let message = refused.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("spending cap of $1.50"), "{message}");
    assert_eq!(mock.request_count(), 2, "the refused request never reached the upstream");
}

fn two_nodes_sum_exactly(database: TestDatabase) {
    let mock = MockUpstream::default_success();
    let gateway = TestGateway::start(database);
    let token = gateway.admin_token();
    let key = configure(&gateway, &token, &mock);
    let second = gateway.second_node();
    let second_address = second.local_addr();
    let lane = LANES[0];
    let group = format!("g-{}", lane.name());
    let headers = lane.auth_headers(&key);
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    for round in 0..10 {
        let address = if round % 2 == 0 { gateway.address } else { second_address };
        let body = lane.body(&group, round % 3 == 0).to_string();
        let response = request(address, "POST", &lane.path(&group, round % 3 == 0), &header_refs, body.as_bytes());
        assert_eq!(response.status, 200, "{}", response.text());
    }
    second.shutdown();
    // Node one still holds its own five in memory; its API shows the database (node two's five)
    // plus its own deltas.
    gateway.wait_for_records(5);
    let summary = get(&gateway, &token, "/api/v1/stats/summary");
    assert_eq!(summary["requests"], 10, "{summary}");
    assert_eq!(summary["input_tokens"], 100);
    assert!((summary["cost"].as_f64().unwrap() - 600e-6).abs() < 1e-9);
}

#[test]
fn two_gateways_on_one_server_database_sum_exactly() {
    for database in [databases::postgres(), databases::mysql()].into_iter().flatten() {
        two_nodes_sum_exactly(database);
    }
}

#[test]
fn settings_validate_apply_live_and_prune_logs() {
    let mock = MockUpstream::default_success();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let settings = get(&gateway, &token, "/api/v1/settings");
    assert_eq!(settings["stats_save_interval_seconds"], 60);
    assert_eq!(settings["log_max_rows"], 100_000);
    // The harness points the catalogue at a closed loopback port (hermetic tests).
    assert_eq!(settings["models_dev_url"], "http://127.0.0.1:9");

    let bad = json_request(gateway.address, "PUT", "/api/v1/settings", Some(&token), Some(&json!({"log_bodies": true, "log_retention_days": 0})));
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("log_retention_days"));
    assert_eq!(get(&gateway, &token, "/api/v1/settings")["log_bodies"], false, "nothing of a bad PUT is applied");
    let unknown = json_request(gateway.address, "PUT", "/api/v1/settings", Some(&token), Some(&json!({"nope": 1})));
    assert_eq!(unknown.status, 400);

    let channel = gateway.create_channel(&token, json!({"name": "c", "type": "openai_chat", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-upstream-000000001"]}));
    gateway.create_group(&token, json!({"name": "g", "items": [{"channel_id": channel, "model": "m"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    let changed = json_request(gateway.address, "PUT", "/api/v1/settings", Some(&token), Some(&json!({"log_bodies": true, "stats_save_interval_seconds": 1})));
    assert_eq!(changed.status, 200, "{}", changed.text());
    let auth = format!("Bearer {key}");
    for _ in 0..5 {
        let body = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}], "api_key": "a-secret-in-a-body"}).to_string();
        let response = request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &auth)], body.as_bytes());
        assert_eq!(response.status, 200, "{}", response.text());
    }
    // Written by the writer within the new one-second interval, without a restart.
    poll("stats written to the database", || {
        let rows = gateway.running().store.call(|store| store.stats_grouped(i64::MIN / 4, i64::MAX / 4, StatsGrouping::Total)).unwrap();
        (rows[0].counters.requests == 5).then_some(())
    });
    let logs = poll("5 logs", || {
        let logs = get(&gateway, &token, "/api/v1/logs");
        (logs["total"] == 5).then_some(logs)
    });
    let detail = get(&gateway, &token, &format!("/api/v1/logs/{}", logs["items"][0]["id"]));
    let request_body = detail["request_body"].as_str().expect("bodies are kept when log_bodies is on");
    assert!(request_body.contains("\"hi\"") && !request_body.contains("a-secret-in-a-body"), "{request_body}");
    assert!(detail["response_body"].as_str().unwrap().contains("Hello from the mock"));

    let pruned = json_request(gateway.address, "PUT", "/api/v1/settings", Some(&token), Some(&json!({"log_max_rows": 2})));
    assert_eq!(pruned.status, 200);
    poll("logs pruned to 2 within seconds", || (get(&gateway, &token, "/api/v1/logs")["total"] == 2).then_some(()));
    let jobs = get(&gateway, &token, "/api/v1/jobs");
    assert!(jobs["items"].as_array().unwrap().iter().any(|job| job["name"] == "prune_logs" && job["last_ok"] == true), "{jobs}");
}

#[test]
fn metrics_are_off_by_default_then_guarded_by_their_token() {
    let mock = MockUpstream::default_success();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    assert_eq!(request(gateway.address, "GET", "/metrics", &[], b"").status, 404);
    let channel = gateway.create_channel(&token, json!({"name": "c", "type": "openai_chat", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-upstream-000000001"]}));
    gateway.create_group(&token, json!({"name": "g", "items": [{"channel_id": channel, "model": "m"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    let body = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    // A request while metrics are off is not in the series: they count from when they are on.
    request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &format!("Bearer {key}"))], body.as_bytes());
    gateway.wait_for_records(1);
    let enabled = json_request(gateway.address, "PUT", "/api/v1/settings", Some(&token), Some(&json!({"metrics_enabled": true, "metrics_token": "scrape-me"})));
    assert_eq!(enabled.status, 200);
    request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &format!("Bearer {key}"))], body.as_bytes());
    gateway.wait_for_records(2);
    assert_eq!(request(gateway.address, "GET", "/metrics", &[], b"").status, 401);
    assert_eq!(request(gateway.address, "GET", "/metrics", &[("authorization", "Bearer wrong")], b"").status, 401);
    let metrics = request(gateway.address, "GET", "/metrics", &[("authorization", "Bearer scrape-me")], b"");
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    assert!(text.contains("octopus_requests_total{group=\"g\",channel=\"c\",status=\"200\"} 1"), "{text}");
    assert!(text.contains("octopus_request_duration_seconds_bucket{group=\"g\",channel=\"c\",status=\"200\",le=\"+Inf\"} 1"));
    assert!(text.contains("octopus_upstream_attempts_total{channel=\"c\",outcome=\"success\"} 1"));
    assert!(text.contains("octopus_records_dropped_total 0"));
    assert!(text.contains("octopus_stats_writer_queue_depth 0"));
    assert!(text.contains("octopus_stats_last_flush_timestamp_seconds"));
}

#[test]
fn the_live_tail_sends_each_new_log() {
    use std::io::{BufRead, BufReader, Write};
    let mock = MockUpstream::default_success();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let channel = gateway.create_channel(&token, json!({"name": "c", "type": "openai_chat", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-upstream-000000001"]}));
    gateway.create_group(&token, json!({"name": "g", "items": [{"channel_id": channel, "model": "m"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    assert_eq!(request(gateway.address, "GET", "/api/v1/logs/tail", &[], b"").status, 401, "the tail needs a session");

    let mut socket = std::net::TcpStream::connect(gateway.address).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(socket, "GET /api/v1/logs/tail?token={token} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    // Wait for the stream to open before the request, so the log is published to this listener.
    while !line.contains(": connected") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    let body = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &format!("Bearer {key}"))], body.as_bytes());
    let item = loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if let Some(data) = line.trim().strip_prefix("data: ") {
            break serde_json::from_str::<Value>(data).unwrap();
        }
    };
    assert_eq!(item["group"], "g");
    assert_eq!(item["status_code"], 200);
    assert_eq!(item["api_key_name"], "k");
    // A request seen on the tail opens at once, and the logs page lists it, though the writer
    // writes logs only about once a second.
    let detail = get(&gateway, &token, &format!("/api/v1/logs/{}", item["id"]));
    assert_eq!(detail["id"], item["id"], "{detail}");
    let page = get(&gateway, &token, "/api/v1/logs");
    assert_eq!(page["total"], 1, "{page}");
}

#[test]
fn bad_statistics_queries_are_clear_400s() {
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    for path in [
        "/api/v1/stats/daily?days=0",
        "/api/v1/stats/daily?tz=8",
        "/api/v1/stats/hourly?date=2026-02-30",
        "/api/v1/stats/summary?from=yesterday",
        "/api/v1/logs?status=maybe",
        "/api/v1/logs?page_size=100000",
    ] {
        let response = json_request(gateway.address, "GET", path, Some(&token), None);
        assert_eq!(response.status, 400, "{path}: {}", response.text());
        assert!(response.json()["error"]["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(json_request(gateway.address, "GET", "/api/v1/logs/123", Some(&token), None).status, 404);
    let empty = get(&gateway, &token, "/api/v1/stats/summary");
    assert_eq!(empty["requests"], 0);
    assert_eq!(empty["cost"], 0.0);
}

fn old_days_roll_up_into_daily_rows(database: TestDatabase) {
    use octopus::store::entities::{StatsCounters, StatsKey, StatsRow};
    let gateway = TestGateway::start(database);
    let token = gateway.admin_token();
    let now = octopus::util::unix_seconds();
    let old_day = (now / 86_400 - 40) * 86_400;
    let recent_hour = now / 3_600 * 3_600 - 3_600;
    let row = |hour: i64, channel_id: i64, requests: i64| StatsRow {
        key: StatsKey { hour, channel_id, api_key_id: 1, group: "g".to_string(), model: "m".to_string() },
        counters: StatsCounters { requests, success: requests, input_tokens: 10 * requests, cost_micros: 7 * requests, ..StatsCounters::default() },
    };
    let mut rows: Vec<StatsRow> = (0..24).map(|hour| row(old_day + hour * 3_600, 1 + hour % 2, 1)).collect();
    rows.push(row(recent_hour, 1, 5));
    gateway.running().store.call(move |store| store.add_stats(&rows)).unwrap();
    let before = get(&gateway, &token, "/api/v1/stats/summary");
    assert_eq!(before["requests"], 29);

    let stats = gateway.running().stats.clone();
    let summary = octopus::sync::jobs::roll_up_stats(&stats, now).unwrap();
    assert!(summary.contains("rolled 1 days"), "{summary}");
    let old = gateway.running().store.call(move |store| store.stats_grouped(old_day, old_day + 86_400, StatsGrouping::Hour)).unwrap();
    assert_eq!(old.len(), 1, "one bucket hour left for the old day: {old:?}");
    assert_eq!((old[0].key.hour, old[0].counters.requests), (old_day, 24));
    let per_channel = gateway.running().store.call(move |store| store.stats_grouped(old_day, old_day + 86_400, StatsGrouping::Channel)).unwrap();
    assert_eq!(per_channel.iter().map(|row| row.counters.requests).collect::<Vec<_>>(), [12, 12], "dimensions survive");
    let after = get(&gateway, &token, "/api/v1/stats/summary");
    assert_eq!(after, before, "totals are unchanged");
    let recent = gateway.running().store.call(move |store| store.stats_grouped(recent_hour, recent_hour + 3_600, StatsGrouping::Hour)).unwrap();
    assert_eq!(recent[0].counters.requests, 5, "recent hours keep their detail");
    assert!(octopus::sync::jobs::roll_up_stats(&stats, now).unwrap().contains("rolled 0 days"));
    let daily = get(&gateway, &token, "/api/v1/stats/daily?days=60");
    assert_eq!(daily["items"].as_array().unwrap().iter().map(|day| day["requests"].as_i64().unwrap()).sum::<i64>(), 29);
}

#[test]
fn old_hours_roll_up_into_daily_rows_with_totals_unchanged() {
    for database in databases::all() {
        old_days_roll_up_into_daily_rows(database);
    }
}

#[test]
fn converted_lanes_and_clients_that_hang_up_are_counted() {
    use std::io::{Read, Write};
    let mock = MockUpstream::start(|request| support::mock_upstream::paced_reply(request, Duration::from_millis(40)));
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    set_default_price(&gateway, "claude-up", 2.0, 8.0);
    let anthropic = gateway.create_channel(&token, json!({"name": "a", "type": "anthropic", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-ant-000000000001"]}));
    gateway.create_group(&token, json!({"name": "claude", "items": [{"channel_id": anthropic, "model": "claude-up"}]}));
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    // An OpenAI Chat client that did not ask for usage, streaming from an Anthropic channel.
    let body = json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let response = request(gateway.address, "POST", "/v1/chat/completions", &[("authorization", &format!("Bearer {key}"))], body.as_bytes());
    assert_eq!(response.status, 200);
    assert!(!response.text().contains("\"usage\""), "the client did not ask for usage");
    // A client that leaves after the first bytes of a stream.
    let mut socket = std::net::TcpStream::connect(gateway.address).unwrap();
    write!(socket, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0_u8; 64];
    let _ = socket.read(&mut first).unwrap();
    drop(socket);
    let records = gateway.wait_for_records(2);
    let summary = poll("both requests counted", || {
        let summary = get(&gateway, &token, "/api/v1/stats/summary");
        (summary["requests"] == 2).then_some(summary)
    });
    assert_eq!(summary["success"], 1);
    assert_eq!(summary["failed"], 1, "the abandoned stream counts as failed: {records:#?}");
    // The converted stream reported 10 in / 5 out; the abandoned one counts what its upstream had
    // reported when the client left (Anthropic's message_start carries the input tokens).
    assert_eq!(summary["input_tokens"], 20, "{summary}");
    assert!(summary["output_tokens"].as_i64().unwrap() >= 5);
    let failed = poll("the failed log", || {
        let logs = get(&gateway, &token, "/api/v1/logs?status=failed");
        (logs["total"] == 1).then_some(logs)
    });
    assert_eq!(failed["items"][0]["status_code"], 499);
    assert!(failed["items"][0]["error"].as_str().unwrap().contains("closed the connection"));
}

fn counts_survive_lost_database_connections(database: TestDatabase) {
    let mock = MockUpstream::default_success();
    let mut gateway = TestGateway::start_with(database, |config| config.database.connections = 2);
    let token = gateway.admin_token();
    let key = configure(&gateway, &token, &mock);
    let lane = LANES[0];
    let group = format!("g-{}", lane.name());
    for _ in 0..3 {
        send(&gateway, &lane, &key, &group, false);
    }
    gateway.wait_for_records(3);
    // Write the first three, then take the database away from under the gateway.
    let changed = json_request(gateway.address, "PUT", "/api/v1/settings", Some(&token), Some(&json!({"stats_save_interval_seconds": 1})));
    assert_eq!(changed.status, 200);
    std::thread::sleep(Duration::from_millis(1_500));
    gateway.database.cut_connections();
    // The relay keeps serving from its in-memory configuration meanwhile.
    for _ in 0..3 {
        send(&gateway, &lane, &key, &group, true);
    }
    gateway.wait_for_records(6);
    // The pool reconnects by itself and the writer's retries land every request.
    let database_type = gateway.database.database_type;
    poll("every request in the database after the reconnect", || {
        let rows = gateway.running().store.call(|store| store.stats_grouped(i64::MIN / 4, i64::MAX / 4, StatsGrouping::Total)).ok()?;
        (rows[0].counters.requests == 6).then_some(())
    });
    poll("the admin API answering again", || {
        let response = json_request(gateway.address, "GET", "/api/v1/stats/summary", Some(&token), None);
        (response.status == 200 && response.json()["requests"] == 6).then_some(())
    });
    gateway.restart();
    let token = gateway.login_token_after_change();
    assert_eq!(get(&gateway, &token, "/api/v1/stats/summary")["requests"], 6, "{database_type}");
    let logs = poll("six logs", || {
        let logs = get(&gateway, &token, "/api/v1/logs");
        (logs["total"] == 6).then_some(logs)
    });
    assert_eq!(logs["total"], 6);
}

#[test]
fn counted_requests_survive_lost_database_connections() {
    for database in [databases::postgres(), databases::mysql()].into_iter().flatten() {
        counts_survive_lost_database_connections(database);
    }
}

#[test]
fn the_admin_tries_a_group_through_the_real_relay() {
    let mock = MockUpstream::start(support::mock_upstream::fail_by_model("anthropic"));
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let broken = gateway.create_channel(&token, json!({"name": "broken", "type": "anthropic", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-ant-000000000001"]}));
    let working = gateway.create_channel(&token, json!({"name": "working", "type": "anthropic", "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-ant-000000000002"]}));
    let group = gateway.create_group(&token, json!({"name": "tried", "mode": "failover", "items": [
        {"channel_id": broken, "model": "fail-503", "priority": 0}, {"channel_id": working, "model": "claude-ok", "priority": 1}]}));
    let trial = gateway.admin_post(&token, &format!("/api/v1/groups/{group}/test"), json!({"prompt": "Say hi"}), 200);
    assert_eq!(trial["ok"], true, "{trial}");
    assert_eq!(trial["status"], 200);
    assert_eq!(trial["text"], "Hello from the mock", "converted from Anthropic to the trial's chat shape");
    assert_eq!(trial["channel_name"], "working", "failed over past the broken item");
    assert_eq!(trial["model"], "claude-ok");
    assert!(trial["latency_ms"].as_u64().is_some());
    let sent = mock.requests().last().unwrap().json();
    assert_eq!(sent["messages"][0]["content"], "Say hi");

    let only_broken = gateway.create_group(&token, json!({"name": "broken-only", "items": [{"channel_id": broken, "model": "fail-401"}]}));
    let failed = gateway.admin_post(&token, &format!("/api/v1/groups/{only_broken}/test"), json!({"prompt": "Say hi"}), 200);
    assert_eq!(failed["ok"], false, "{failed}");
    assert_eq!(failed["status"], 401);
    assert!(failed["error"].as_str().unwrap().contains("said no"), "{failed}");
    let missing = json_request(gateway.address, "POST", "/api/v1/groups/999/test", Some(&token), Some(&json!({"prompt": "x"})));
    assert_eq!(missing.status, 404);
    let empty = json_request(gateway.address, "POST", &format!("/api/v1/groups/{group}/test"), Some(&token), Some(&json!({"prompt": " "})));
    assert_eq!(empty.status, 422);
    // Trials are counted and logged like any request, without a client key.
    let logs = poll("the trial logs", || {
        let logs = get(&gateway, &token, "/api/v1/logs");
        (logs["total"] == 2).then_some(logs)
    });
    assert_eq!(logs["items"][1]["api_key_name"], "admin (panel test)");
    assert_eq!(logs["items"][1]["api_key_id"], Value::Null);
}
