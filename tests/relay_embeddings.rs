//! `POST /v1/embeddings` over real sockets: pass-through to OpenAI-type channels, conversion to
//! and from Gemini's `batchEmbedContents`, Anthropic channels skipped, clear errors when nothing
//! can serve, failover, and every call counted in the statistics.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::http_client::{json_request, TestResponse};
use support::lanes::{ANTHROPIC, GEMINI, OPENAI_CHAT, OPENAI_RESPONSES};
use support::mock_upstream::{default_reply, error_reply, MockUpstream};
use support::relay_fixture::{RelayFixture, GROUP, UPSTREAM_MODEL};

fn embed(fixture: &RelayFixture, key: &str, body: &Value) -> TestResponse {
    fixture.call_raw("/v1/embeddings", &[("authorization", format!("Bearer {key}"))], &[], body.to_string().as_bytes())
}

fn assert_openai_error(response: &TestResponse, status: u16, error_type: &str) -> String {
    assert_eq!(response.status, status, "{}", response.text());
    let body = response.json();
    assert_eq!(body["error"]["type"], error_type, "{body}");
    body["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn openai_type_channels_get_the_body_with_the_model_rewritten() {
    for lane in [OPENAI_CHAT, OPENAI_RESPONSES] {
        let mock = MockUpstream::default_success();
        let fixture = RelayFixture::start();
        fixture.single_channel(&lane, &mock, "sk-channel-secret-0001");
        let body = json!({"model": GROUP, "input": ["first", "second"], "encoding_format": "float", "dimensions": 3, "user": "u-1"});
        let response = embed(&fixture, &fixture.client_key, &body);
        assert_eq!(response.status, 200, "{}: {}", lane.name(), response.text());
        let answer = response.json();
        assert_eq!(answer["object"], "list");
        assert_eq!(answer["data"][1]["embedding"], json!([0.25, -0.5, 1.0]));
        assert_eq!(answer["usage"]["prompt_tokens"], 6);

        let sent = &mock.requests()[0];
        assert_eq!(sent.path, "/v1/embeddings", "{}", lane.name());
        assert_eq!(sent.header("authorization"), Some("Bearer sk-channel-secret-0001"));
        assert_eq!(sent.json(), json!({"model": UPSTREAM_MODEL, "input": ["first", "second"], "encoding_format": "float", "dimensions": 3, "user": "u-1"}));

        let record = &fixture.records(1)[0];
        assert_eq!(record.status, 200);
        assert_eq!(record.group, GROUP);
        assert_eq!(record.client_format, "openai_embeddings");
        assert_eq!(record.usage.map(|usage| usage.input_tokens), Some(6), "OpenAI's usage.prompt_tokens is counted");
    }
}

#[test]
fn gemini_channels_get_batch_embed_contents_and_answer_in_openai_shape() {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    fixture.single_channel(&GEMINI, &mock, "gemini-channel-key");
    let body = json!({"model": GROUP, "input": ["abcdefgh", "abcd"], "dimensions": 3});
    let response = embed(&fixture, &fixture.client_key, &body);
    assert_eq!(response.status, 200, "{}", response.text());
    // "abcdefgh" is 2 estimated tokens and "abcd" 1: Gemini reports no usage, so the
    // count_tokens estimate stands in for it.
    assert_eq!(
        response.json(),
        json!({
            "object": "list",
            "data": [
                {"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.0]},
                {"object": "embedding", "index": 1, "embedding": [0.25, -0.5, 1.0]},
            ],
            "model": UPSTREAM_MODEL,
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        })
    );
    let sent = &mock.requests()[0];
    assert_eq!(sent.path, format!("/v1beta/models/{UPSTREAM_MODEL}:batchEmbedContents"));
    assert_eq!(sent.header("x-goog-api-key"), Some("gemini-channel-key"));
    let model = format!("models/{UPSTREAM_MODEL}");
    assert_eq!(
        sent.json(),
        json!({"requests": [
            {"model": model, "content": {"parts": [{"text": "abcdefgh"}]}, "outputDimensionality": 3},
            {"model": model, "content": {"parts": [{"text": "abcd"}]}, "outputDimensionality": 3},
        ]})
    );
    assert_eq!(fixture.records(1)[0].usage.map(|usage| usage.input_tokens), Some(3));

    // Gemini cannot embed token ids: with no OpenAI-type channel in the group that is a 400.
    let tokens = embed(&fixture, &fixture.client_key, &json!({"model": GROUP, "input": [1, 2, 3]}));
    let message = assert_openai_error(&tokens, 400, "invalid_request_error");
    assert!(message.contains("token ids"), "{message}");
    assert_eq!(mock.request_count(), 1);
}

#[test]
fn anthropic_channels_are_skipped_and_a_group_of_only_them_is_a_clear_400() {
    let anthropic_mock = MockUpstream::default_success();
    let openai_mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    let anthropic = fixture.channel(&ANTHROPIC, "claude", &[ANTHROPIC.base_url(&anthropic_mock.base_url())], &["sk-ant"]);
    let openai = fixture.channel(&OPENAI_CHAT, "openai", &[OPENAI_CHAT.base_url(&openai_mock.base_url())], &["sk-oai"]);
    fixture.group(json!({"name": GROUP, "mode": "failover", "items": [
        {"channel_id": anthropic, "model": "claude-x", "priority": 0},
        {"channel_id": openai, "model": "text-embedding-3-small", "priority": 1},
    ]}));
    fixture.group(json!({"name": "claude-only", "items": [{"channel_id": anthropic, "model": "claude-x"}]}));

    let response = embed(&fixture, &fixture.client_key, &json!({"model": GROUP, "input": "hello"}));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(anthropic_mock.request_count(), 0, "Anthropic channels are never asked for embeddings");
    assert_eq!(openai_mock.requests()[0].json()["model"], "text-embedding-3-small");

    let refused = embed(&fixture, &fixture.client_key, &json!({"model": "claude-only", "input": "hello"}));
    let message = assert_openai_error(&refused, 400, "invalid_request_error");
    assert!(message.contains("Anthropic"), "{message}");
    let unknown = embed(&fixture, &fixture.client_key, &json!({"model": "no-such-group", "input": "hello"}));
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let malformed = embed(&fixture, &fixture.client_key, &json!({"model": GROUP, "input": {"text": "x"}}));
    assert_openai_error(&malformed, 400, "invalid_request_error");
    let anonymous = fixture.call_raw("/v1/embeddings", &[], &[], br#"{"model":"team-model","input":"x"}"#);
    assert_openai_error(&anonymous, 401, "authentication_error");
    assert_eq!(openai_mock.request_count(), 1);
}

#[test]
fn a_failing_channel_fails_over_to_the_next_and_limits_apply() {
    let failing = MockUpstream::start(|request| error_reply("openai_chat", 500, &format!("down for {}", request.path)));
    let healthy = MockUpstream::start(default_reply);
    let fixture = RelayFixture::start();
    let first = fixture.channel(&OPENAI_CHAT, "failing", &[OPENAI_CHAT.base_url(&failing.base_url())], &["sk-1"]);
    let second = fixture.channel(&GEMINI, "healthy", &[GEMINI.base_url(&healthy.base_url())], &["g-1"]);
    fixture.group(json!({"name": GROUP, "mode": "failover", "items": [
        {"channel_id": first, "model": "emb-a", "priority": 0},
        {"channel_id": second, "model": "emb-b", "priority": 1},
    ]}));
    let response = embed(&fixture, &fixture.client_key, &json!({"model": GROUP, "input": "hello"}));
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(failing.request_count() >= 1);
    assert_eq!(healthy.request_count(), 1);
    let record = &fixture.records(1)[0];
    assert!(record.attempts.len() >= 2, "{:?}", record.attempts);

    // A key's rpm covers embeddings too.
    let limited_key = fixture.client_key_with(json!({"name": "limited", "rpm": 1}));
    let second_of_minute = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 60;
    if second_of_minute >= 55 {
        std::thread::sleep(Duration::from_secs(61 - second_of_minute));
    }
    assert_eq!(embed(&fixture, &limited_key, &json!({"model": GROUP, "input": "a"})).status, 200);
    let refused = embed(&fixture, &limited_key, &json!({"model": GROUP, "input": "a"}));
    assert_openai_error(&refused, 429, "rate_limit_error");
    assert!(refused.header("retry-after").is_some());
}

#[test]
fn embeddings_are_counted_in_the_stats_summary() {
    let openai_mock = MockUpstream::default_success();
    let gemini_mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    let openai = fixture.channel(&OPENAI_CHAT, "openai", &[OPENAI_CHAT.base_url(&openai_mock.base_url())], &["sk-oai"]);
    let gemini = fixture.channel(&GEMINI, "gemini", &[GEMINI.base_url(&gemini_mock.base_url())], &["g-key"]);
    fixture.group(json!({"name": "emb-openai", "items": [{"channel_id": openai, "model": "text-embedding-3-small"}]}));
    fixture.group(json!({"name": "emb-gemini", "items": [{"channel_id": gemini, "model": "text-embedding-004"}]}));

    // OpenAI reports 3 prompt tokens an input; "abcdefgh" is estimated at 2 for Gemini.
    assert_eq!(embed(&fixture, &fixture.client_key, &json!({"model": "emb-openai", "input": ["a", "b"]})).status, 200);
    assert_eq!(embed(&fixture, &fixture.client_key, &json!({"model": "emb-gemini", "input": "abcdefgh"})).status, 200);
    fixture.records(2);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let summary = json_request(fixture.gateway.address, "GET", "/api/v1/stats/summary", Some(&fixture.admin_token), None).json();
        if summary["requests"] == 2 {
            assert_eq!(summary["success"], 2, "{summary}");
            assert_eq!(summary["input_tokens"], 8, "{summary}");
            assert_eq!(summary["output_tokens"], 0, "{summary}");
            break;
        }
        assert!(Instant::now() < deadline, "the summary never counted both calls: {summary}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
