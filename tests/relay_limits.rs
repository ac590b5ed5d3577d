//! Per-client-key limits (`rpm`, `tpm`) over real sockets on every client protocol: the 429 in
//! the client's own shape with `Retry-After`, other keys unaffected; the admin API's validation
//! of the limits; and Gemini's `countTokens`, answered locally.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use support::http_client::{json_request, TestResponse};
use support::lanes::{ErrorTypes, Lane, AUTHENTICATION_ERROR, GEMINI, NOT_FOUND_ERROR};
use support::mock_upstream::MockUpstream;
use support::relay_fixture::{RelayFixture, GROUP};

const RATE_LIMIT_ERROR: ErrorTypes =
    ErrorTypes { openai: "rate_limit_error", anthropic: "rate_limit_error", google: "RESOURCE_EXHAUSTED" };

crate::lane_tests!(
    requests_over_rpm_get_429_with_retry_after_in_the_client_shape,
    tokens_over_tpm_get_429_with_retry_after_in_the_client_shape
);

/// Limits count in fixed minutes: a test that needs several calls in one window waits out the
/// last seconds of a minute rather than straddle two windows.
fn stay_clear_of_minute_boundary() {
    let second_of_minute = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() % 60;
    if second_of_minute >= 55 {
        std::thread::sleep(Duration::from_secs(61 - second_of_minute));
    }
}

fn assert_rate_limited(lane: &Lane, response: &TestResponse, what: &str) {
    let message = lane.assert_error(response, 429, RATE_LIMIT_ERROR);
    assert!(message.contains(what), "{}: {message}", lane.name());
    let retry_after: u64 = response
        .header("retry-after")
        .unwrap_or_else(|| panic!("{}: a rate-limited answer carries Retry-After", lane.name()))
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=60).contains(&retry_after), "{}: Retry-After {retry_after}", lane.name());
}

fn requests_over_rpm_get_429_with_retry_after_in_the_client_shape(lane: &Lane) {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    fixture.single_channel(lane, &mock, "sk-channel-secret-0001");
    let limited_key = fixture.client_key_with(json!({"name": "limited", "rpm": 2}));
    stay_clear_of_minute_boundary();

    for _ in 0..2 {
        let allowed = fixture.call_as(lane, GROUP, false, &limited_key, &[]);
        assert_eq!(allowed.status, 200, "{}: {}", lane.name(), allowed.text());
    }
    let refused = fixture.call_as(lane, GROUP, false, &limited_key, &[]);
    assert_rate_limited(lane, &refused, "2 requests per minute");
    // A stream call is refused the same way, before any stream starts.
    let refused_stream = fixture.call_as(lane, GROUP, true, &limited_key, &[]);
    assert_rate_limited(lane, &refused_stream, "requests per minute");
    assert_eq!(mock.request_count(), 2, "refused requests never reach the upstream");

    // Another key is not affected.
    let other = fixture.call(lane, GROUP, false);
    assert_eq!(other.status, 200, "{}: {}", lane.name(), other.text());
}

fn tokens_over_tpm_get_429_with_retry_after_in_the_client_shape(lane: &Lane) {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    fixture.single_channel(lane, &mock, "sk-channel-secret-0001");
    // Every mock answer uses 15 tokens: the first call leaves the key under 20, the second
    // takes it over, the third is refused.
    let limited_key = fixture.client_key_with(json!({"name": "thrifty", "tpm": 20}));
    stay_clear_of_minute_boundary();

    let first = fixture.call_as(lane, GROUP, false, &limited_key, &[]);
    assert_eq!(first.status, 200, "{}: {}", lane.name(), first.text());
    let second = fixture.call_as(lane, GROUP, true, &limited_key, &[]);
    assert_eq!(second.status, 200, "{}: {}", lane.name(), second.text());
    // The stream's tokens are charged when its record is finished, just after the last byte.
    let _ = fixture.records(2);
    let refused = fixture.call_as(lane, GROUP, false, &limited_key, &[]);
    assert_rate_limited(lane, &refused, "20 tokens per minute");
    assert_eq!(mock.request_count(), 2);

    let other = fixture.call(lane, GROUP, false);
    assert_eq!(other.status, 200, "{}: {}", lane.name(), other.text());
}

#[test]
fn the_admin_api_reads_writes_and_validates_limits() {
    let fixture = RelayFixture::start();
    let address = fixture.gateway.address;
    let token = Some(fixture.admin_token.as_str());
    let created = json_request(address, "POST", "/api/v1/api-keys", token, Some(&json!({"name": "limits", "rpm": 30, "tpm": 5000})));
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    assert_eq!((created["rpm"].clone(), created["tpm"].clone()), (json!(30), json!(5000)));
    let id = created["id"].as_i64().unwrap();

    let updated = json_request(address, "PUT", &format!("/api/v1/api-keys/{id}"), token, Some(&json!({"rpm": 0})));
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!((updated.json()["rpm"].clone(), updated.json()["tpm"].clone()), (json!(0), json!(5000)));
    let read = json_request(address, "GET", &format!("/api/v1/api-keys/{id}"), token, None).json();
    assert_eq!((read["rpm"].clone(), read["tpm"].clone()), (json!(0), json!(5000)));
    let plain = json_request(address, "POST", "/api/v1/api-keys", token, Some(&json!({"name": "plain"}))).json();
    assert_eq!((plain["rpm"].clone(), plain["tpm"].clone()), (json!(0), json!(0)));

    for bad in [json!({"rpm": -1}), json!({"tpm": 1.5}), json!({"rpm": "10"}), json!({"tpm": 1u64 << 60})] {
        let refused = json_request(address, "PUT", &format!("/api/v1/api-keys/{id}"), token, Some(&bad));
        assert_eq!(refused.status, 422, "{bad}: {}", refused.text());
        let message = refused.json()["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("rpm") || message.contains("tpm"), "{bad}: {message}");
    }
}

#[test]
fn gemini_count_tokens_is_answered_locally() {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    fixture.single_channel(&GEMINI, &mock, "sk-channel-secret-0001");
    let auth = GEMINI.auth_headers(&fixture.client_key);
    let contents = json!({"contents": [{"role": "user", "parts": [{"text": "How many tokens is this sentence?"}]}]});
    let body = contents.to_string();

    for prefix in ["/v1beta", "/v1"] {
        let counted = fixture.call_raw(&format!("{prefix}/models/{GROUP}:countTokens"), &auth, &[], body.as_bytes());
        assert_eq!(counted.status, 200, "{prefix}: {}", counted.text());
        let total = counted.json()["totalTokens"].as_u64().expect("totalTokens is a number");
        assert!((5..=40).contains(&total), "{prefix}: {total}");
    }
    // The SDKs' other form wraps a whole generateContent request; it counts the same.
    let wrapped = json!({"generateContentRequest": {"model": format!("models/{GROUP}"), "contents": contents["contents"]}});
    let counted = fixture.call_raw(&format!("/v1beta/models/{GROUP}:countTokens"), &auth, &[], wrapped.to_string().as_bytes());
    assert_eq!(counted.status, 200, "{}", counted.text());
    assert!(counted.json()["totalTokens"].as_u64().unwrap() > 0);

    let unknown = fixture.call_raw("/v1beta/models/no-such-group:countTokens", &auth, &[], body.as_bytes());
    let message = GEMINI.assert_error(&unknown, 404, NOT_FOUND_ERROR);
    assert!(message.contains("no-such-group"), "{message}");
    let anonymous = fixture.call_raw(&format!("/v1beta/models/{GROUP}:countTokens"), &[], &[], body.as_bytes());
    GEMINI.assert_error(&anonymous, 401, AUTHENTICATION_ERROR);
    assert_eq!(mock.request_count(), 0, "countTokens never reaches the upstream");
}
