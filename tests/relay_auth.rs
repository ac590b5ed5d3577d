//! Client-side refusals for each client protocol, in that protocol's own error shape: missing,
//! wrong, disabled and expired client keys, a key not allowed the model, an unknown group and a
//! malformed body. None of them reaches the upstream.

mod support;

use serde_json::json;

use support::lanes::{
    AUTHENTICATION_ERROR, INVALID_REQUEST_ERROR, Lane, NOT_FOUND_ERROR, PERMISSION_ERROR,
};
use support::mock_upstream::MockUpstream;
use support::relay_fixture::{GROUP, RelayFixture};

crate::lane_tests!(
    client_key_problems_are_refused_in_the_client_shape,
    request_problems_are_refused_in_the_client_shape
);

fn client_key_problems_are_refused_in_the_client_shape(lane: &Lane) {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    fixture.single_channel(lane, &mock, "sk-channel-secret-0001");
    fixture.group(json!({"name": "other-model", "items": []}));
    let disabled_key = fixture.client_key_with(json!({"name": "disabled", "enabled": false}));
    let expired_key =
        fixture.client_key_with(json!({"name": "expired", "expires_at": 1_000_000_000}));
    let limited_key =
        fixture.client_key_with(json!({"name": "limited", "allowed_models": ["other-model"]}));
    let body = lane.body(GROUP, false).to_string();
    let path = lane.path(GROUP, false);

    let missing = fixture.call_raw(&path, &[], &[], body.as_bytes());
    let message = lane.assert_error(&missing, 401, AUTHENTICATION_ERROR);
    assert!(
        message.contains("missing API key"),
        "missing key: {message}"
    );

    let wrong = fixture.call_as(
        lane,
        GROUP,
        false,
        "sk-octopus-notarealkeynotarealkeynotarealkeynotarealkey00",
        &[],
    );
    let message = lane.assert_error(&wrong, 401, AUTHENTICATION_ERROR);
    assert!(message.contains("invalid API key"), "wrong key: {message}");

    let disabled = fixture.call_as(lane, GROUP, false, &disabled_key, &[]);
    let message = lane.assert_error(&disabled, 401, AUTHENTICATION_ERROR);
    assert!(message.contains("disabled"), "disabled key: {message}");

    let expired = fixture.call_as(lane, GROUP, false, &expired_key, &[]);
    let message = lane.assert_error(&expired, 401, AUTHENTICATION_ERROR);
    assert!(message.contains("expired"), "expired key: {message}");

    let not_allowed = fixture.call_as(lane, GROUP, false, &limited_key, &[]);
    let message = lane.assert_error(&not_allowed, 403, PERMISSION_ERROR);
    assert!(message.contains(GROUP), "not allowed: {message}");

    // The same stream calls are refused the same way, before any stream starts.
    let stream_missing = fixture.call_raw(
        &lane.path(GROUP, true),
        &[],
        &[],
        lane.body(GROUP, true).to_string().as_bytes(),
    );
    lane.assert_error(&stream_missing, 401, AUTHENTICATION_ERROR);

    assert_eq!(
        mock.request_count(),
        0,
        "no refused request reaches the upstream"
    );
    let allowed = fixture.call_as(lane, GROUP, false, &fixture.client_key, &[]);
    assert_eq!(allowed.status, 200, "{}", allowed.text());
}

fn request_problems_are_refused_in_the_client_shape(lane: &Lane) {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    fixture.single_channel(lane, &mock, "sk-channel-secret-0001");

    let unknown = fixture.call(lane, "no-such-group", false);
    let message = lane.assert_error(&unknown, 404, NOT_FOUND_ERROR);
    assert!(
        message.contains("no-such-group"),
        "unknown group: {message}"
    );

    let unknown_stream = fixture.call(lane, "no-such-group", true);
    lane.assert_error(&unknown_stream, 404, NOT_FOUND_ERROR);

    let auth = lane.auth_headers(&fixture.client_key);
    let malformed = fixture.call_raw(
        &lane.path(GROUP, false),
        &auth,
        &[],
        b"{\"model\": \"team-model\", \"messages\": [",
    );
    let message = lane.assert_error(&malformed, 400, INVALID_REQUEST_ERROR);
    assert!(message.contains("not valid JSON"), "malformed: {message}");

    let not_an_object = fixture.call_raw(&lane.path(GROUP, false), &auth, &[], b"[1, 2]");
    lane.assert_error(&not_an_object, 400, INVALID_REQUEST_ERROR);

    assert_eq!(
        mock.request_count(),
        0,
        "no refused request reaches the upstream"
    );
    // Each refusal was recorded with the status the client got.
    let statuses: Vec<u16> = fixture
        .records(4)
        .iter()
        .map(|record| record.status)
        .collect();
    assert_eq!(statuses, [404, 404, 400, 400]);
}

#[test]
fn openai_body_without_a_model_is_a_400() {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    let lane = support::lanes::OPENAI_CHAT;
    fixture.single_channel(&lane, &mock, "sk-channel-secret-0001");
    let response = fixture.call_raw(
        &lane.path(GROUP, false),
        &lane.auth_headers(&fixture.client_key),
        &[],
        br#"{"messages": [{"role": "user", "content": "hi"}]}"#,
    );
    let message = lane.assert_error(&response, 400, INVALID_REQUEST_ERROR);
    assert!(message.contains("model"), "{message}");
    assert_eq!(mock.request_count(), 0);
}
