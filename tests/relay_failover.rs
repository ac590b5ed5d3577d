//! Failing over across keys, items and endpoints: which upstream answers decide what, for each
//! client protocol. Key cooldowns (Octopus #245), 5xx to the next item, final 4xx, the last
//! upstream error when everything fails, the attempt cap, demoted endpoints and the circuit
//! breaker.

mod support;

use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use octopus::relay::key_pool::CooldownReason;
use support::lanes::{ANTHROPIC, GEMINI, Lane, OPENAI_CHAT, OPENAI_RESPONSES};
use support::mock_upstream::{
    MockUpstream, RecordedRequest, Reply, default_reply, error_reply, fail_by_model, with_header,
};
use support::relay_fixture::{GROUP, RelayFixture, dead_base_url};

crate::lane_tests!(
    auth_failure_on_a_key_moves_to_the_next_key_of_the_channel,
    r245_rate_limited_key_cools_down_and_the_next_request_skips_it,
    server_errors_fail_over_to_the_next_item,
    client_errors_from_the_upstream_are_final,
    when_every_attempt_fails_the_client_gets_the_last_upstream_error,
);

/// A mock that answers `bad_reply` to every request made with the first key it sees and the
/// default success to any other key, so a test does not depend on which key is picked first.
fn first_key_fails(
    bad_reply: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
) -> MockUpstream {
    let bad_key: Mutex<Option<String>> = Mutex::new(None);
    MockUpstream::start(move |request| {
        let key = request.api_key();
        let is_bad = bad_key.lock().unwrap().get_or_insert_with(|| key.clone()) == &key;
        if is_bad {
            bad_reply(request)
        } else {
            default_reply(request)
        }
    })
}

fn auth_failure_on_a_key_moves_to_the_next_key_of_the_channel(lane: &Lane) {
    for status in [401, 403] {
        let format = lane.channel_type;
        let mock = first_key_fails(move |_| error_reply(format, status, "this key is not valid"));
        let fixture = RelayFixture::start();
        let channel = fixture.channel(
            lane,
            "two-keys",
            &[lane.base_url(&mock.base_url())],
            &["sk-key-a-000000001", "sk-key-b-000000002"],
        );
        fixture.group(json!({"name": GROUP, "items": [{"channel_id": channel, "model": "m"}]}));

        let response = fixture.call(lane, GROUP, false);
        assert_eq!(response.status, 200, "{status}: {}", response.text());
        assert_eq!(lane.text(&response.json()), "Hello from the mock");
        let seen = mock.requests();
        assert_eq!(seen.len(), 2, "{status}: the bad key, then the other key");
        let bad_key = lane.upstream_key(&seen[0]).unwrap().to_string();
        assert_ne!(lane.upstream_key(&seen[1]).unwrap(), bad_key);

        let record = &fixture.records(1)[0];
        let statuses: Vec<Option<u16>> = record
            .attempts
            .iter()
            .map(|attempt| attempt.status)
            .collect();
        assert_eq!(statuses, [Some(status), Some(200)], "{:?}", record.attempts);
        assert!(
            record
                .attempts
                .iter()
                .all(|attempt| attempt.channel_id == channel),
            "both attempts on the same channel"
        );
        let cooldowns = fixture.key_cooldowns();
        assert_eq!(cooldowns.len(), 1, "{cooldowns:?}");
        assert_eq!(cooldowns[0].key_id, record.attempts[0].key_id);
        assert_eq!(cooldowns[0].reason, CooldownReason::AuthFailed);
        assert!(
            cooldowns[0].remaining_ms > 20 * 60_000,
            "an auth failure benches the key for long: {cooldowns:?}"
        );

        // The benched key is left alone: later requests go straight to the good key.
        for _ in 0..3 {
            assert_eq!(fixture.call(lane, GROUP, true).status, 200);
        }
        let seen = mock.requests();
        assert_eq!(seen.len(), 5);
        assert!(
            seen[2..]
                .iter()
                .all(|request| lane.upstream_key(request) != Some(bad_key.as_str())),
            "{status}: the benched key was used again"
        );
    }
}

// See: Octopus issue #245 (a 429 never put the key in cooldown, so it kept being chosen).
fn r245_rate_limited_key_cools_down_and_the_next_request_skips_it(lane: &Lane) {
    let format = lane.channel_type;
    let mock = first_key_fails(move |_| {
        with_header(error_reply(format, 429, "slow down"), "retry-after", "30")
    });
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        lane,
        "two-keys",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-a-000000001", "sk-key-b-000000002"],
    );
    fixture.group(json!({"name": GROUP, "items": [{"channel_id": channel, "model": "m"}]}));

    let response = fixture.call(lane, GROUP, false);
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = mock.requests();
    assert_eq!(
        seen.len(),
        2,
        "the rate-limited key, then the next key of the same channel"
    );
    let limited_key = lane.upstream_key(&seen[0]).unwrap().to_string();
    let record = &fixture.records(1)[0];
    assert_eq!(record.attempts[0].status, Some(429));
    assert_eq!(record.attempts[1].status, Some(200));
    let cooldowns = fixture.key_cooldowns();
    assert_eq!(cooldowns.len(), 1, "{cooldowns:?}");
    assert_eq!(cooldowns[0].key_id, record.attempts[0].key_id);
    assert_eq!(cooldowns[0].reason, CooldownReason::RateLimited);
    assert!(
        (25_000..=30_000).contains(&cooldowns[0].remaining_ms),
        "Retry-After: 30 is honoured: {cooldowns:?}"
    );

    // Least-recently-used rotation alone would pick the rate-limited key next; the 30 s
    // cooldown must keep it out.
    for stream in [false, true, false] {
        assert_eq!(fixture.call(lane, GROUP, stream).status, 200);
    }
    let seen = mock.requests();
    assert_eq!(
        seen.len(),
        5,
        "each later request is answered by the first key tried"
    );
    assert!(
        seen[2..]
            .iter()
            .all(|request| lane.upstream_key(request) != Some(limited_key.as_str())),
        "the cooling key was used again"
    );
}

fn server_errors_fail_over_to_the_next_item(lane: &Lane) {
    let mock = MockUpstream::start(fail_by_model(lane.channel_type));
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    fixture.failover_group("after-500", channel, &["fail-500", "healthy"], json!({}));
    fixture.failover_group("after-503", channel, &["fail-503", "healthy"], json!({}));

    for (group, failing_model) in [("after-500", "fail-500"), ("after-503", "fail-503")] {
        for stream in [false, true] {
            let response = fixture.call(lane, group, stream);
            assert_eq!(
                response.status,
                200,
                "{group} stream={stream}: {}",
                response.text()
            );
            let text = if stream {
                lane.stream_text(&response.body)
            } else {
                lane.text(&response.json())
            };
            assert_eq!(text, "Hello from the mock");
        }
        assert_eq!(
            mock.hits_for_model(failing_model),
            2,
            "{group}: one failing attempt per request"
        );
    }
    assert_eq!(mock.hits_for_model("healthy"), 4);
    let records = fixture.records(4);
    for record in &records {
        assert_eq!(record.attempts.len(), 2, "{:?}", record.attempts);
        assert_eq!(record.upstream_model, "healthy");
    }
    assert_eq!(records[0].attempts[0].status, Some(500));
    assert_eq!(records[2].attempts[0].status, Some(503));
}

fn client_errors_from_the_upstream_are_final(lane: &Lane) {
    let mock = MockUpstream::start(fail_by_model(lane.channel_type));
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    for status in [400, 404, 413, 422] {
        fixture.failover_group(
            &format!("after-{status}"),
            channel,
            &[&format!("fail-{status}"), "healthy"],
            json!({}),
        );
    }

    for status in [400, 404, 413, 422] {
        for stream in [false, true] {
            let response = fixture.call(lane, &format!("after-{status}"), stream);
            let parts = lane.error_parts(&response, status);
            assert_eq!(
                parts.message,
                format!("fail-{status} said no"),
                "the upstream's own explanation reaches the client"
            );
        }
        assert_eq!(
            mock.hits_for_model(&format!("fail-{status}")),
            2,
            "hit once per request, never retried"
        );
    }
    assert_eq!(
        mock.hits_for_model("healthy"),
        0,
        "a final answer is not retried elsewhere"
    );
    let records = fixture.records(8);
    for (record, status) in records.iter().zip([400, 400, 404, 404, 413, 413, 422, 422]) {
        assert_eq!(record.attempts.len(), 1, "{:?}", record.attempts);
        assert_eq!(record.status, status);
    }
}

fn when_every_attempt_fails_the_client_gets_the_last_upstream_error(lane: &Lane) {
    let mock = MockUpstream::start(fail_by_model(lane.channel_type));
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    fixture.failover_group(GROUP, channel, &["fail-500", "fail-503"], json!({}));

    for stream in [false, true] {
        let response = fixture.call(lane, GROUP, stream);
        let parts = lane.error_parts(&response, 503);
        assert_eq!(
            parts.message, "fail-503 said no",
            "the last upstream error, not a generic envelope"
        );
    }
    assert_eq!(mock.hits_for_model("fail-500"), 2);
    assert_eq!(mock.hits_for_model("fail-503"), 2);
    for record in fixture.records(2) {
        assert_eq!(record.status, 503);
        let attempts: Vec<(&str, Option<u16>)> = record
            .attempts
            .iter()
            .map(|attempt| (attempt.upstream_model.as_str(), attempt.status))
            .collect();
        assert_eq!(
            attempts,
            [("fail-500", Some(500)), ("fail-503", Some(503))],
            "every attempt is recorded"
        );
        assert!(
            record
                .attempts
                .iter()
                .all(|attempt| attempt.outcome.starts_with("status 5")),
            "{:?}",
            record.attempts
        );
        assert!(record.error.is_some());
    }
}

#[test]
fn group_max_attempts_caps_the_upstream_calls() {
    let lane = OPENAI_RESPONSES;
    let mock = MockUpstream::start(fail_by_model(lane.channel_type));
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        &lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    let failing = ["fail-500", "fail-502", "fail-503", "fail-504"];
    fixture.failover_group("capped", channel, &failing, json!({"max_attempts": 2}));
    fixture.failover_group("default-cap", channel, &failing, json!({}));

    let response = fixture.call(&lane, "capped", false);
    assert_eq!(lane.error_parts(&response, 502).message, "fail-502 said no");
    assert_eq!(mock.request_count(), 2, "max_attempts 2");

    let response = fixture.call(&lane, "default-cap", false);
    assert_eq!(lane.error_parts(&response, 503).message, "fail-503 said no");
    assert_eq!(mock.request_count(), 5, "the default of 3 attempts");
    let records = fixture.records(2);
    assert_eq!(records[0].attempts.len(), 2);
    assert_eq!(records[1].attempts.len(), 3);
}

#[test]
fn dead_endpoint_fails_over_to_the_next_base_url_and_is_demoted() {
    let lane = ANTHROPIC;
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    let dead = dead_base_url(&lane);
    let live = lane.base_url(&mock.base_url());
    let channel = fixture.channel(
        &lane,
        "two-urls",
        &[dead.clone(), live.clone()],
        &["sk-key-000000001"],
    );
    fixture.group(json!({"name": GROUP, "items": [{"channel_id": channel, "model": "m"}]}));

    let response = fixture.call(&lane, GROUP, false);
    assert_eq!(response.status, 200, "{}", response.text());
    let first = &fixture.records(1)[0];
    let tried: Vec<(&str, Option<u16>)> = first
        .attempts
        .iter()
        .map(|attempt| (attempt.base_url.as_str(), attempt.status))
        .collect();
    assert_eq!(
        tried,
        [(dead.as_str(), None), (live.as_str(), Some(200))],
        "{:?}",
        first.attempts
    );
    assert!(
        first.attempts[0].outcome.contains("connect"),
        "{:?}",
        first.attempts[0]
    );
    assert_eq!(
        first.attempts[0].key_id, first.attempts[1].key_id,
        "a connect error keeps the key"
    );

    for stream in [false, true] {
        assert_eq!(fixture.call(&lane, GROUP, stream).status, 200);
    }
    let records = fixture.records(3);
    for record in &records[1..] {
        let tried: Vec<&str> = record
            .attempts
            .iter()
            .map(|attempt| attempt.base_url.as_str())
            .collect();
        assert_eq!(
            tried,
            [live.as_str()],
            "the demoted URL is no longer tried first"
        );
    }
    assert_eq!(mock.request_count(), 3);
}

#[test]
fn endpoint_that_starts_refusing_is_demoted_below_a_slower_one() {
    let lane = OPENAI_CHAT;
    // The fast mock closes every connection after answering, so no pooled connection outlives it.
    let fast =
        MockUpstream::start(|request| with_header(default_reply(request), "connection", "close"));
    let slow = MockUpstream::start(|request| {
        Reply::Delayed(Duration::from_millis(150), Box::new(default_reply(request)))
    });
    let fixture = RelayFixture::start();
    let fast_address = fast.address;
    let (fast_url, slow_url) = (
        lane.base_url(&fast.base_url()),
        lane.base_url(&slow.base_url()),
    );
    let channel = fixture.channel(
        &lane,
        "two-urls",
        &[fast_url.clone(), slow_url.clone()],
        &["sk-key-000000001"],
    );
    fixture.group(json!({"name": GROUP, "items": [{"channel_id": channel, "model": "m"}]}));
    let tried_urls = |record_index: usize| -> Vec<String> {
        fixture.records(record_index + 1)[record_index]
            .attempts
            .iter()
            .map(|attempt| attempt.base_url.clone())
            .collect()
    };

    // Both URLs unmeasured: the listed order, and the fast one is measured fast.
    assert_eq!(fixture.call(&lane, GROUP, false).status, 200);
    assert_eq!(tried_urls(0), [fast_url.as_str()]);

    drop(fast);
    let refused_by = Instant::now() + Duration::from_secs(1);
    while TcpStream::connect(fast_address).is_ok() && Instant::now() < refused_by {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        TcpStream::connect(fast_address).is_err(),
        "the fast mock's port is closed"
    );

    // The fast URL goes first by latency, is refused, and the slow one answers.
    assert_eq!(fixture.call(&lane, GROUP, false).status, 200);
    assert_eq!(tried_urls(1), [fast_url.as_str(), slow_url.as_str()]);

    // Demoted: despite its better latency the refusing URL now comes after the slow one.
    assert_eq!(fixture.call(&lane, GROUP, true).status, 200);
    assert_eq!(tried_urls(2), [slow_url.as_str()]);
}

#[test]
fn circuit_opens_after_five_consecutive_failures_and_skips_the_item() {
    let lane = GEMINI;
    let mock = MockUpstream::start(fail_by_model(lane.channel_type));
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        &lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    fixture.failover_group(GROUP, channel, &["fail-500", "healthy"], json!({}));

    for request_index in 0..5 {
        let response = fixture.call(&lane, GROUP, request_index % 2 == 1);
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert_eq!(mock.hits_for_model("fail-500"), 5);

    let response = fixture.call(&lane, GROUP, false);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        mock.hits_for_model("fail-500"),
        5,
        "the open circuit is not called"
    );
    assert_eq!(mock.hits_for_model("healthy"), 6);
    let sixth = &fixture.records(6)[5];
    assert_eq!(sixth.attempts.len(), 2, "{:?}", sixth.attempts);
    assert_eq!(sixth.attempts[0].upstream_model, "fail-500");
    assert!(
        sixth.attempts[0].outcome.contains("circuit open"),
        "{:?}",
        sixth.attempts[0]
    );
    assert_eq!(sixth.attempts[0].status, None);
    assert_eq!(sixth.attempts[1].status, Some(200));
}
