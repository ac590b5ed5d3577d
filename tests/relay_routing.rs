//! Routing within a group, end to end: round robin, failover by priority, weighted standby
//! items, sticky routing per client key, and disabled channels and keys left out. These rules do
//! not depend on the client protocol, so each test uses one lane (spread over the four).

mod support;

use serde_json::json;

use support::lanes::{ANTHROPIC, GEMINI, OPENAI_CHAT, OPENAI_RESPONSES};
use support::mock_upstream::{MockUpstream, fail_by_model};
use support::relay_fixture::{GROUP, RelayFixture};

#[test]
fn round_robin_alternates_between_two_channels() {
    let lane = OPENAI_CHAT;
    let (first_mock, second_mock) = (
        MockUpstream::default_success(),
        MockUpstream::default_success(),
    );
    let fixture = RelayFixture::start();
    let first = fixture.channel(
        &lane,
        "first",
        &[lane.base_url(&first_mock.base_url())],
        &["sk-first-0000001"],
    );
    let second = fixture.channel(
        &lane,
        "second",
        &[lane.base_url(&second_mock.base_url())],
        &["sk-second-000001"],
    );
    fixture.group(json!({"name": GROUP, "mode": "round_robin", "items": [{"channel_id": first, "model": "m"}, {"channel_id": second, "model": "m"}]}));

    for request_index in 0..6 {
        assert_eq!(
            fixture.call(&lane, GROUP, request_index % 2 == 0).status,
            200
        );
    }
    let channels: Vec<i64> = fixture
        .records(6)
        .iter()
        .map(|record| record.channel_id.unwrap())
        .collect();
    for pair in channels.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {channels:?}");
    }
    assert_eq!(
        (first_mock.request_count(), second_mock.request_count()),
        (3, 3)
    );
}

#[test]
fn failover_mode_tries_items_by_ascending_priority_ties_in_listed_order() {
    let lane = ANTHROPIC;
    let mock = MockUpstream::start(fail_by_model(lane.channel_type));
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        &lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    let item = |model: &str, priority: i32| json!({"channel_id": channel, "model": model, "priority": priority});
    fixture.group(json!({"name": "ordered", "mode": "failover", "items": [item("p5", 5), item("p1-listed-first", 1), item("p3", 3), item("p1-listed-second", 1)]}));
    fixture.group(json!({"name": "first-fails", "mode": "failover", "items": [item("p5-healthy", 5), item("fail-500", 1), item("p3-healthy", 3)]}));

    for _ in 0..3 {
        assert_eq!(fixture.call(&lane, "ordered", false).status, 200);
    }
    assert_eq!(
        mock.hits_for_model("p1-listed-first"),
        3,
        "lowest priority first, ties in listed order"
    );
    assert_eq!(mock.request_count(), 3);

    for _ in 0..2 {
        assert_eq!(fixture.call(&lane, "first-fails", true).status, 200);
    }
    assert_eq!(mock.hits_for_model("fail-500"), 2);
    assert_eq!(
        mock.hits_for_model("p3-healthy"),
        2,
        "the next priority answers"
    );
    assert_eq!(mock.hits_for_model("p5-healthy"), 0);
}

#[test]
fn weighted_mode_keeps_weight_zero_items_as_standby() {
    let lane = GEMINI;
    let mock = MockUpstream::start(fail_by_model(lane.channel_type));
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        &lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    let item =
        |model: &str, weight: u32| json!({"channel_id": channel, "model": model, "weight": weight});
    fixture.group(json!({"name": "weighted", "mode": "weighted", "items": [item("standby", 0), item("weighted-a", 3), item("weighted-b", 1)]}));
    fixture.group(json!({"name": "weighted-failing", "mode": "weighted", "items": [item("standby", 0), item("fail-503", 5)]}));

    for _ in 0..6 {
        assert_eq!(fixture.call(&lane, "weighted", false).status, 200);
    }
    assert_eq!(
        mock.hits_for_model("standby"),
        0,
        "a weight-0 item is not used while others work"
    );
    assert_eq!(
        mock.hits_for_model("weighted-a") + mock.hits_for_model("weighted-b"),
        6
    );

    assert_eq!(fixture.call(&lane, "weighted-failing", false).status, 200);
    assert_eq!(
        mock.hits_for_model("standby"),
        1,
        "the standby item takes over when the weighted one fails"
    );
}

#[test]
fn sticky_routing_keeps_each_client_key_on_its_item() {
    let lane = OPENAI_RESPONSES;
    let (first_mock, second_mock) = (
        MockUpstream::default_success(),
        MockUpstream::default_success(),
    );
    let fixture = RelayFixture::start();
    let first = fixture.channel(
        &lane,
        "first",
        &[lane.base_url(&first_mock.base_url())],
        &["sk-first-0000001"],
    );
    let second = fixture.channel(
        &lane,
        "second",
        &[lane.base_url(&second_mock.base_url())],
        &["sk-second-000001"],
    );
    fixture.group(json!({
        "name": GROUP, "mode": "round_robin", "sticky_seconds": 60,
        "items": [{"channel_id": first, "model": "m"}, {"channel_id": second, "model": "m"}],
    }));
    let other_key = fixture.client_key_with(json!({"name": "other"}));

    // Interleaved, so plain round robin would move each key to the other channel every time.
    for request_index in 0..8 {
        let key = if request_index % 2 == 0 {
            fixture.client_key.clone()
        } else {
            other_key.clone()
        };
        assert_eq!(
            fixture
                .call_as(&lane, GROUP, request_index % 4 < 2, &key, &[])
                .status,
            200
        );
    }
    let records = fixture.records(8);
    let channels_of = |key_name: &str| -> Vec<i64> {
        records
            .iter()
            .filter(|record| record.client_key_name == key_name)
            .map(|record| record.channel_id.unwrap())
            .collect()
    };
    let (client_channels, other_channels) = (channels_of("client"), channels_of("other"));
    assert_eq!(client_channels.len(), 4);
    assert!(
        client_channels
            .iter()
            .all(|channel| *channel == client_channels[0]),
        "{client_channels:?}"
    );
    assert!(
        other_channels
            .iter()
            .all(|channel| *channel == other_channels[0]),
        "{other_channels:?}"
    );
    assert_ne!(
        client_channels[0], other_channels[0],
        "the two keys started on different items and stayed there"
    );
    assert_eq!(
        (first_mock.request_count(), second_mock.request_count()),
        (4, 4)
    );
}

#[test]
fn disabled_channels_are_skipped() {
    let lane = ANTHROPIC;
    let (disabled_mock, enabled_mock) = (
        MockUpstream::default_success(),
        MockUpstream::default_success(),
    );
    let fixture = RelayFixture::start();
    let disabled = fixture.channel_with(json!({
        "name": "off", "type": lane.channel_type, "enabled": false,
        "base_urls": [lane.base_url(&disabled_mock.base_url())], "keys": ["sk-off-00000001"],
    }));
    let enabled = fixture.channel(
        &lane,
        "on",
        &[lane.base_url(&enabled_mock.base_url())],
        &["sk-on-000000001"],
    );
    fixture.group(json!({"name": GROUP, "mode": "round_robin", "items": [{"channel_id": disabled, "model": "m"}, {"channel_id": enabled, "model": "m"}]}));

    for request_index in 0..4 {
        assert_eq!(
            fixture.call(&lane, GROUP, request_index % 2 == 0).status,
            200
        );
    }
    assert_eq!(disabled_mock.request_count(), 0);
    assert_eq!(enabled_mock.request_count(), 4);
    assert!(
        fixture
            .records(4)
            .iter()
            .all(|record| record.attempts.len() == 1)
    );
}

#[test]
fn disabled_key_is_never_used_and_enabled_keys_share_the_load() {
    let lane = GEMINI;
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    let channel = fixture.channel_with(json!({
        "name": "keys", "type": lane.channel_type, "base_urls": [lane.base_url(&mock.base_url())],
        "keys": [{"key": "sk-disabled-0001", "enabled": false}, "sk-enabled-00001", "sk-enabled-00002"],
    }));
    fixture.group(json!({"name": GROUP, "items": [{"channel_id": channel, "model": "m"}]}));

    for request_index in 0..6 {
        assert_eq!(
            fixture.call(&lane, GROUP, request_index % 2 == 0).status,
            200
        );
    }
    let keys: Vec<String> = mock
        .requests()
        .iter()
        .map(|request| lane.upstream_key(request).unwrap().to_string())
        .collect();
    assert!(
        !keys.iter().any(|key| key == "sk-disabled-0001"),
        "{keys:?}"
    );
    let first_count = keys.iter().filter(|key| *key == "sk-enabled-00001").count();
    assert_eq!(
        first_count, 3,
        "least-recently-used rotation spreads requests evenly: {keys:?}"
    );
}

#[test]
fn group_whose_every_channel_is_disabled_answers_503_in_the_client_shape() {
    let lane = OPENAI_CHAT;
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    let disabled = fixture.channel_with(json!({
        "name": "off", "type": lane.channel_type, "enabled": false,
        "base_urls": [lane.base_url(&mock.base_url())], "keys": ["sk-off-00000001"],
    }));
    fixture.group(json!({"name": GROUP, "items": [{"channel_id": disabled, "model": "m"}]}));

    let response = fixture.call(&lane, GROUP, false);
    let parts = lane.error_parts(&response, 503);
    assert_eq!(parts.error_type, "server_error");
    assert!(parts.message.contains(GROUP), "{}", parts.message);
    assert_eq!(mock.request_count(), 0);
}
