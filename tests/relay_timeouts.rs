//! Timeouts with upstreams that stall, for each client protocol: a slow first byte or first
//! event moves to the next item, a silent gap in a stream ends it with an error event in the
//! client's format, and the overall deadline bounds the whole request (non-stream bodies too).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::lanes::{Lane, OPENAI_CHAT, TIMEOUT_ERROR};
use support::mock_upstream::{
    DEFAULT_WORDS, MockUpstream, Reply, StreamEnd, default_reply, stream_events,
};
use support::relay_fixture::{GROUP, RelayFixture};

crate::lane_tests!(
    slow_first_byte_moves_to_the_next_item,
    silent_gap_in_a_stream_ends_it_with_an_error_event,
    overall_deadline_bounds_the_request,
);

/// Answers by upstream model: `stall-head` never sends a head, `stall-first-event` sends a
/// stream head and then nothing, anything else succeeds.
fn stalling_by_model(request: &support::mock_upstream::RecordedRequest) -> Reply {
    match request.model().as_str() {
        "stall-head" => Reply::StallBeforeHead(Duration::from_secs(10)),
        "stall-first-event" => Reply::Sse {
            events: Vec::new(),
            gap: Duration::ZERO,
            end: StreamEnd::Stall(Duration::from_secs(10)),
        },
        _ => default_reply(request),
    }
}

fn slow_first_byte_moves_to_the_next_item(lane: &Lane) {
    let mock = MockUpstream::start(stalling_by_model);
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    fixture.failover_group(
        "stalled-head",
        channel,
        &["stall-head", "healthy"],
        json!({"first_byte_timeout_ms": 300}),
    );
    fixture.failover_group(
        "stalled-event",
        channel,
        &["stall-first-event", "healthy"],
        json!({"first_byte_timeout_ms": 300}),
    );

    for (group, stream) in [
        ("stalled-head", false),
        ("stalled-head", true),
        ("stalled-event", true),
    ] {
        let started = Instant::now();
        let response = fixture.call(lane, group, stream);
        let elapsed = started.elapsed();
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
        assert!(
            elapsed >= Duration::from_millis(280),
            "{group}: the first item was given its 300 ms: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(2500),
            "{group} stream={stream}: took {elapsed:?}"
        );
    }
    assert_eq!(mock.hits_for_model("stall-head"), 2);
    assert_eq!(mock.hits_for_model("stall-first-event"), 1);
    for record in fixture.records(3) {
        assert_eq!(record.attempts.len(), 2, "{:?}", record.attempts);
        assert!(
            record.attempts[0].outcome.contains("timed out")
                || record.attempts[0].outcome.contains("timeout"),
            "{:?}",
            record.attempts[0]
        );
        assert_eq!(record.attempts[1].status, Some(200));
    }
}

fn silent_gap_in_a_stream_ends_it_with_an_error_event(lane: &Lane) {
    let stalling_lane = *lane;
    let mock = MockUpstream::start(move |request| {
        let events = stream_events(stalling_lane.channel_type, &request.model(), &DEFAULT_WORDS);
        let first_words = stalling_lane.events_through_text(&events, 2);
        Reply::Sse {
            events: first_words,
            gap: Duration::ZERO,
            end: StreamEnd::Stall(Duration::from_secs(10)),
        }
    });
    let fixture = RelayFixture::start_with(|config| config.relay.stream_idle_timeout_seconds = 1);
    fixture.single_channel(lane, &mock, "sk-key-000000001");

    let started = Instant::now();
    let response = fixture.call(lane, GROUP, true);
    let elapsed = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        lane.stream_text(&response.body),
        "Hello from",
        "the events before the gap reach the client"
    );
    let message = lane
        .stream_error(&response.body)
        .unwrap_or_else(|| panic!("no error event in the client's format: {}", response.text()));
    assert!(message.contains("sent nothing"), "{message}");
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_millis(3000),
        "the 1 s idle limit ended the stream after {elapsed:?}"
    );
    let (error_at, _) = response.chunks.last().unwrap();
    let (last_text_at, _) = response
        .chunks
        .iter()
        .rev()
        .find(|(_, chunk)| !lane.stream_text(chunk).is_empty())
        .unwrap();
    assert!(
        *error_at - *last_text_at >= Duration::from_millis(950),
        "the error event comes after the silent second"
    );

    assert_eq!(
        mock.request_count(),
        1,
        "nothing is retried once events reached the client"
    );
    let record = &fixture.records(1)[0];
    assert_eq!(record.status, 200);
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|error| error.contains("sent nothing")),
        "{:?}",
        record.error
    );
    // The stalled upstream connection is closed, not left to the mock's own timeout.
    let deadline = Instant::now() + Duration::from_secs(1);
    while mock.peer_hangups().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        mock.peer_hangups().len(),
        1,
        "the gateway hung up on the silent upstream"
    );
}

fn overall_deadline_bounds_the_request(lane: &Lane) {
    let mock = MockUpstream::start(|_| Reply::StallBeforeHead(Duration::from_secs(10)));
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    fixture.failover_group(
        GROUP,
        channel,
        &["slow-1", "slow-2", "slow-3"],
        json!({"first_byte_timeout_ms": 5000, "total_timeout_ms": 600}),
    );

    for stream in [false, true] {
        let started = Instant::now();
        let response = fixture.call(lane, GROUP, stream);
        let elapsed = started.elapsed();
        lane.assert_error(&response, 504, TIMEOUT_ERROR);
        assert!(
            elapsed >= Duration::from_millis(550),
            "answered before the deadline: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(2500),
            "the 600 ms deadline was overrun: {elapsed:?}"
        );
    }
    assert_eq!(
        mock.request_count(),
        2,
        "no attempt starts after the deadline"
    );
}

#[test]
fn non_stream_body_that_stalls_is_bounded_by_the_overall_deadline() {
    let lane = OPENAI_CHAT;
    let truncated = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"id\": \"chatcmpl-partial\", ";
    let mock = MockUpstream::start(move |_| Reply::Raw {
        bytes: truncated.to_string(),
        end: StreamEnd::Stall(Duration::from_secs(10)),
    });
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        &lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    fixture.failover_group(
        GROUP,
        channel,
        &["slow-body"],
        json!({"total_timeout_ms": 700}),
    );

    let started = Instant::now();
    let response = fixture.call(&lane, GROUP, false);
    let elapsed = started.elapsed();
    lane.assert_error(&response, 504, TIMEOUT_ERROR);
    assert!(
        elapsed >= Duration::from_millis(650) && elapsed < Duration::from_millis(2500),
        "took {elapsed:?}"
    );
    assert_eq!(mock.request_count(), 1);
}
