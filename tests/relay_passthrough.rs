//! Same-protocol pass-through for each client protocol: answers, model rewriting, the channel
//! key upstream, streaming event by event, usage in the request record, OpenAI Chat's forced
//! `include_usage`, header forwarding, and Gemini's key and JSON-array stream variants.

mod support;

use std::time::Duration;

use serde_json::{Value, json};

use support::http_client::sse_events;
use support::lanes::{GEMINI, Lane, OPENAI_CHAT};
use support::mock_upstream::{MockUpstream, StreamEnd, paced_reply, stream_reply};
use support::relay_fixture::{GROUP, RelayFixture, UPSTREAM_MODEL};

const CHANNEL_KEY: &str = "sk-channel-secret-0001";
const DEFAULT_TEXT: &str = "Hello from the mock";

crate::lane_tests!(
    non_stream_answer_passes_through_with_model_rewritten_and_channel_key,
    stream_arrives_event_by_event_without_buffering,
    client_headers_are_filtered_and_channel_headers_apply_last,
);

fn non_stream_answer_passes_through_with_model_rewritten_and_channel_key(lane: &Lane) {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    let channel = fixture.single_channel(lane, &mock, CHANNEL_KEY);

    let response = fixture.call(lane, GROUP, false);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(lane.text(&response.json()), DEFAULT_TEXT);

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, lane.upstream_path(UPSTREAM_MODEL, false));
    assert_eq!(
        seen[0].model(),
        UPSTREAM_MODEL,
        "the group name is rewritten to the item's model"
    );
    assert_eq!(lane.upstream_key(&seen[0]), Some(CHANNEL_KEY));
    let sent_body = seen[0].json();
    let client_body = lane.body(GROUP, false);
    for (field, value) in client_body.as_object().unwrap() {
        if field != "model" {
            assert_eq!(
                &sent_body[field], value,
                "{field} is passed through unchanged"
            );
        }
    }

    let record = fixture.records(1).pop().unwrap();
    assert_eq!(record.status, 200);
    assert_eq!(record.group, GROUP);
    assert_eq!(record.client_format, lane.name());
    assert!(!record.stream);
    assert_eq!(record.channel_id, Some(channel));
    assert_eq!(record.upstream_model, UPSTREAM_MODEL);
    assert_eq!(record.attempts.len(), 1, "{:?}", record.attempts);
    assert_eq!(record.attempts[0].status, Some(200));
    let usage = record
        .usage
        .expect("usage is read from the non-stream body");
    assert_eq!((usage.input_tokens, usage.output_tokens), (10, 5));
    assert!(record.ttft_ms.is_some());
    assert!(record.error.is_none(), "{:?}", record.error);
}

fn stream_arrives_event_by_event_without_buffering(lane: &Lane) {
    let gap = Duration::from_millis(50);
    let mock = MockUpstream::start(move |request| paced_reply(request, gap));
    let fixture = RelayFixture::start();
    fixture.single_channel(lane, &mock, CHANNEL_KEY);

    let response = fixture.call(lane, GROUP, true);
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|value| value.starts_with("text/event-stream")),
        "{:?}",
        response.headers
    );
    assert_eq!(lane.stream_text(&response.body), DEFAULT_TEXT);

    // One text delta per chunk: the words are not coalesced into one write.
    let text_chunks = response
        .chunks
        .iter()
        .filter(|(_, chunk)| !lane.stream_text(chunk).is_empty())
        .count();
    assert_eq!(
        text_chunks, 4,
        "each word arrives in its own chunk: {:?}",
        response.chunks
    );
    // The mock sends an event every 50 ms; a buffering relay would deliver them all at once.
    let first_at = response.chunks.first().unwrap().0;
    let last_at = response.chunks.last().unwrap().0;
    let event_count = sse_events(&response.body).len() as u32;
    assert!(
        last_at - first_at >= gap * (event_count - 2),
        "{event_count} events 50 ms apart arrived within {:?}: buffered",
        last_at - first_at
    );

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, lane.upstream_path(UPSTREAM_MODEL, true));
    assert_eq!(seen[0].model(), UPSTREAM_MODEL);
    assert_eq!(lane.upstream_key(&seen[0]), Some(CHANNEL_KEY));
    if lane.name() == "gemini" {
        assert_eq!(seen[0].query, "alt=sse");
    }

    let record = fixture.records(1).pop().unwrap();
    assert_eq!(record.status, 200);
    assert!(record.stream);
    let usage = record.usage.expect("usage is tracked on the stream");
    assert_eq!((usage.input_tokens, usage.output_tokens), (10, 5));
    let ttft = record
        .ttft_ms
        .expect("a stream records its time to first byte");
    assert!(
        ttft + 100 < record.total_ms,
        "ttft {ttft} ms is the first event, not the end ({} ms)",
        record.total_ms
    );
    assert!(record.error.is_none(), "{:?}", record.error);
}

fn client_headers_are_filtered_and_channel_headers_apply_last(lane: &Lane) {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    let channel = fixture.channel_with(json!({
        "name": "main", "type": lane.channel_type, "base_urls": [lane.base_url(&mock.base_url())], "keys": [CHANNEL_KEY],
        "headers": {"x-override-me": "from-channel", "x-channel-only": "yes"},
    }));
    fixture
        .group(json!({"name": GROUP, "items": [{"channel_id": channel, "model": UPSTREAM_MODEL}]}));
    let client_key = fixture.client_key.clone();
    let bearer = format!("Bearer {client_key}");
    let extra_headers = [
        ("anthropic-beta", "prompt-caching-2024-07-31"),
        ("openai-beta", "assistants=v2"),
        ("x-stainless-lang", "python"),
        ("x-override-me", "from-client"),
        ("keep-alive", "timeout=5"),
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("te", "trailers"),
        ("cookie", "session=abc"),
        // Every place a client key can travel, on top of the lane's own header.
        ("authorization", bearer.as_str()),
        ("x-api-key", client_key.as_str()),
        ("x-goog-api-key", client_key.as_str()),
    ];
    let mut auth_headers = lane.auth_headers(&client_key);
    auth_headers.retain(|(name, _)| !extra_headers.iter().any(|(extra, _)| extra == name));
    let response = fixture.call_raw(
        &lane.path(GROUP, false),
        &auth_headers,
        &extra_headers,
        lane.body(GROUP, false).to_string().as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", response.text());

    let seen = &mock.requests()[0];
    assert_eq!(
        seen.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(seen.header("openai-beta"), Some("assistants=v2"));
    assert_eq!(seen.header("x-stainless-lang"), Some("python"));
    assert_eq!(
        seen.header("x-override-me"),
        Some("from-channel"),
        "channel headers apply last"
    );
    assert_eq!(seen.header("x-channel-only"), Some("yes"));
    for hop_by_hop in ["keep-alive", "proxy-authorization", "te", "cookie"] {
        assert_eq!(
            seen.header(hop_by_hop),
            None,
            "{hop_by_hop} must not reach the upstream"
        );
    }
    assert_ne!(
        seen.header("connection"),
        Some("close"),
        "the client's connection header is hop-by-hop"
    );
    assert_eq!(seen.header("host"), Some(mock.address.to_string().as_str()));
    assert_eq!(lane.upstream_key(seen), Some(CHANNEL_KEY));
    for (name, value) in &seen.headers {
        assert!(
            !value.contains(&client_key),
            "the client key reached the upstream in {name}"
        );
    }
    assert!(!seen.query.contains(&client_key));
    // Only the lane's own credential header is set upstream.
    let credential_headers: Vec<&str> = ["authorization", "x-api-key", "x-goog-api-key"]
        .into_iter()
        .filter(|name| seen.header(name).is_some())
        .collect();
    assert_eq!(credential_headers.len(), 1, "{:?}", seen.headers);
}

#[test]
fn openai_chat_stream_forces_include_usage_and_strips_the_usage_chunk() {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    fixture.single_channel(&OPENAI_CHAT, &mock, CHANNEL_KEY);

    let response = fixture.call(&OPENAI_CHAT, GROUP, true);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        mock.requests()[0].json()["stream_options"]["include_usage"],
        true,
        "forced on upstream"
    );
    let events = sse_events(&response.body);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    for (_, data) in &events {
        let chunk: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        assert!(
            chunk["usage"].is_null(),
            "the client did not ask for usage, so the usage chunk is stripped: {data}"
        );
    }
    assert_eq!(OPENAI_CHAT.stream_text(&response.body), DEFAULT_TEXT);
    let usage = fixture.records(1)[0].usage.expect("usage is still counted");
    assert_eq!((usage.input_tokens, usage.output_tokens), (10, 5));
}

#[test]
fn openai_chat_stream_keeps_the_usage_chunk_the_client_asked_for() {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    fixture.single_channel(&OPENAI_CHAT, &mock, CHANNEL_KEY);

    let mut body = OPENAI_CHAT.body(GROUP, true);
    body["stream_options"] = json!({"include_usage": true});
    let response = fixture.call_raw(
        &OPENAI_CHAT.path(GROUP, true),
        &OPENAI_CHAT.auth_headers(&fixture.client_key),
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let usage_chunks: Vec<Value> = sse_events(&response.body)
        .iter()
        .filter_map(|(_, data)| serde_json::from_str::<Value>(data).ok())
        .filter(|chunk| !chunk["usage"].is_null())
        .collect();
    assert_eq!(usage_chunks.len(), 1, "{}", response.text());
    assert_eq!(usage_chunks[0]["choices"], json!([]));
    assert_eq!(usage_chunks[0]["usage"]["prompt_tokens"], 10);
    assert_eq!(
        mock.requests()[0].json()["stream_options"]["include_usage"],
        true
    );
}

#[test]
fn gemini_accepts_the_client_key_in_the_query_and_in_x_goog_api_key() {
    let mock = MockUpstream::default_success();
    let fixture = RelayFixture::start();
    fixture.single_channel(&GEMINI, &mock, CHANNEL_KEY);
    let body = GEMINI.body(GROUP, false).to_string();

    let path = format!("{}?key={}", GEMINI.path(GROUP, false), fixture.client_key);
    let response = fixture.call_raw(&path, &[], &[], body.as_bytes());
    assert_eq!(response.status, 200, "?key=: {}", response.text());
    assert_eq!(GEMINI.text(&response.json()), DEFAULT_TEXT);

    let header = [("x-goog-api-key", fixture.client_key.clone())];
    let response = fixture.call_raw(&GEMINI.path(GROUP, false), &header, &[], body.as_bytes());
    assert_eq!(response.status, 200, "x-goog-api-key: {}", response.text());

    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.query, "", "the client's ?key= is not forwarded");
        assert_eq!(request.header("x-goog-api-key"), Some(CHANNEL_KEY));
    }
}

#[test]
fn gemini_stream_without_alt_sse_is_a_json_array() {
    let mock = MockUpstream::start(|request| paced_reply(request, Duration::from_millis(20)));
    let fixture = RelayFixture::start();
    fixture.single_channel(&GEMINI, &mock, CHANNEL_KEY);

    let path = format!("/v1beta/models/{GROUP}:streamGenerateContent");
    let response = fixture.call_raw(
        &path,
        &GEMINI.auth_headers(&fixture.client_key),
        &[],
        GEMINI.body(GROUP, true).to_string().as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/json")),
        "{:?}",
        response.headers
    );
    let items = response.json();
    let items = items.as_array().expect("the body is a JSON array");
    assert_eq!(
        items.len(),
        4,
        "one array element per upstream chunk: {}",
        response.text()
    );
    let text: String = items.iter().map(|item| GEMINI.text(item)).collect();
    assert_eq!(text, DEFAULT_TEXT);
    assert_eq!(items[3]["usageMetadata"]["candidatesTokenCount"], 5);
    assert!(
        response.chunks.len() >= 4,
        "array elements are still written as they arrive: {:?}",
        response.chunks.len()
    );
    assert_eq!(
        mock.requests()[0].query,
        "alt=sse",
        "the upstream is always asked for SSE"
    );
    let usage = fixture.records(1)[0].usage.expect("usage is tracked");
    assert_eq!((usage.input_tokens, usage.output_tokens), (10, 5));
}

#[test]
fn a_broken_gemini_json_array_stream_still_ends_as_valid_json() {
    let mock = MockUpstream::start(|request| stream_reply(request, &["Hello", " world"], Duration::ZERO, StreamEnd::Reset));
    let fixture = RelayFixture::start();
    fixture.single_channel(&GEMINI, &mock, CHANNEL_KEY);
    let path = format!("/v1beta/models/{GROUP}:streamGenerateContent");
    let response = fixture.call_raw(&path, &GEMINI.auth_headers(&fixture.client_key), &[], GEMINI.body(GROUP, true).to_string().as_bytes());
    assert_eq!(response.status, 200);
    let items = response.json();
    let items = items.as_array().expect("the body is still a JSON array");
    let last = items.last().unwrap();
    assert!(last["error"]["message"].as_str().unwrap().contains("broke"), "{last}");
    let text: String = items[..items.len() - 1].iter().map(|item| GEMINI.text(item)).collect();
    assert_eq!(text, "Hello world");
}
