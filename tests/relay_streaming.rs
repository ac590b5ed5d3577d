//! Upstream streams that go wrong, and clients that leave, for each client protocol: a reset
//! after the first event, an empty or garbage stream, a stream that opens with an error event,
//! an oversized event, and client disconnects during a stream and before the first byte.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::http_client::send_request;
use support::lanes::Lane;
use support::mock_upstream::{
    DEFAULT_WORDS, MockUpstream, RecordedRequest, Reply, StreamEnd, default_reply, paced_reply,
    stream_events, stream_reply,
};
use support::relay_fixture::{GROUP, RelayFixture};

crate::lane_tests!(
    reset_after_the_first_events_ends_the_stream_with_an_error_event,
    empty_or_garbage_stream_moves_to_the_next_item,
    stream_opening_with_an_error_event_moves_to_the_next_item,
    oversized_event_ends_the_stream_with_an_error_event,
    client_leaving_mid_stream_stops_the_upstream_stream,
    client_leaving_before_the_first_byte_closes_the_upstream_connection,
    a_stream_that_outlasts_the_stack_release_arrives_whole,
);

/// Polls `condition` every 10 ms for up to `limit`; returns whether it became true.
fn eventually(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// A streamed response releases the deeper pages of its coroutine's stack once it has run for
/// 500 ms (`http::stack_pages`): what the stream relays after that must arrive whole, and the
/// gateway must go on serving.
fn a_stream_that_outlasts_the_stack_release_arrives_whole(lane: &Lane) {
    let mock = MockUpstream::start(|request: &RecordedRequest| paced_reply(request, Duration::from_millis(250)));
    let fixture = RelayFixture::start();
    let channel = fixture.channel(lane, "main", &[lane.base_url(&mock.base_url())], &["sk-key-000000001"]);
    fixture.failover_group(GROUP, channel, &["paced"], json!({}));
    for _ in 0..2 {
        let releases_before = octopus::http::stack_pages::releases();
        let started = Instant::now();
        let response = fixture.call(lane, GROUP, true);
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(started.elapsed() >= Duration::from_millis(600), "the stream outlasted the release delay: {:?}", started.elapsed());
        assert_eq!(lane.stream_text(&response.body), DEFAULT_WORDS.concat(), "{}", response.text());
        assert_eq!(lane.stream_error(&response.body), None);
        assert!(octopus::http::stack_pages::releases() > releases_before, "the stream's stack pages were released");
    }
}

/// With 256 or more streams open, a new stream releases its stack pages at its first event
/// instead of after 500 ms (`http::response_writer`), so a burst of streams does not hold every
/// request's deep pages at once. 400 streams are opened and each waits 5 s after its first
/// event: the last 144 must have released by the time all are open, long before any stream's
/// half second could have released it (that happens only at a stream's next event).
#[test]
fn streams_opened_in_a_burst_release_their_stacks_at_their_first_event() {
    const STREAMS: usize = 400;
    const EARLY_RELEASES: u64 = 144;
    const GAP: Duration = Duration::from_secs(5);
    let lane = support::lanes::OPENAI_CHAT;
    let mock = MockUpstream::start(|request: &RecordedRequest| paced_reply(request, GAP));
    let fixture = RelayFixture::start();
    let channel = fixture.channel(&lane, "main", &[lane.base_url(&mock.base_url())], &["sk-key-000000001"]);
    fixture.failover_group(GROUP, channel, &["paced"], json!({}));

    let releases_before = octopus::http::stack_pages::releases();
    let started = Instant::now();
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut stream = fixture.open_stream(&lane, GROUP);
        assert_eq!(stream.status, 200);
        assert!(stream.next_chunk().is_some(), "the first event arrives");
        streams.push(stream);
    }
    let released_early = eventually(Duration::from_secs(1), || {
        octopus::http::stack_pages::releases() - releases_before >= EARLY_RELEASES
    });
    let checked_after = started.elapsed();
    assert!(
        checked_after < GAP - Duration::from_millis(500),
        "opening the streams took {checked_after:?}: no stream may have reached its second event yet"
    );
    assert!(
        released_early,
        "{} releases while {STREAMS} streams opened, at least {EARLY_RELEASES} expected",
        octopus::http::stack_pages::releases() - releases_before
    );
    for stream in streams {
        stream.close();
    }
}

fn reset_after_the_first_events_ends_the_stream_with_an_error_event(lane: &Lane) {
    let resetting_lane = *lane;
    let mock = MockUpstream::start(move |request: &RecordedRequest| {
        if request.model() != "resets" {
            return default_reply(request);
        }
        let events = stream_events(resetting_lane.channel_type, "resets", &DEFAULT_WORDS);
        Reply::Sse {
            events: resetting_lane.events_through_text(&events, 2),
            gap: Duration::from_millis(20),
            end: StreamEnd::Reset,
        }
    });
    let fixture = RelayFixture::start();
    let channel = fixture.channel(
        lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    fixture.failover_group(GROUP, channel, &["resets", "healthy"], json!({}));

    let response = fixture.call(lane, GROUP, true);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        lane.stream_text(&response.body),
        "Hello from",
        "the events so far reach the client"
    );
    let message = lane
        .stream_error(&response.body)
        .unwrap_or_else(|| panic!("no error event in the client's format: {}", response.text()));
    assert!(message.contains("broke"), "{message}");
    assert_eq!(mock.hits_for_model("resets"), 1);
    assert_eq!(
        mock.hits_for_model("healthy"),
        0,
        "nothing is retried after bytes reached the client"
    );
    let record = &fixture.records(1)[0];
    assert_eq!(record.attempts.len(), 1);
    assert!(record.error.is_some());
}

fn empty_or_garbage_stream_moves_to_the_next_item(lane: &Lane) {
    let mock = MockUpstream::start(|request: &RecordedRequest| match request.model().as_str() {
        "empty" => Reply::Sse {
            events: Vec::new(),
            gap: Duration::ZERO,
            end: StreamEnd::Finish,
        },
        "garbage" => Reply::Sse {
            events: vec!["<html>502 Bad Gateway</html>".to_string()],
            gap: Duration::ZERO,
            end: StreamEnd::Finish,
        },
        "json-instead" => Reply::Json {
            status: 200,
            headers: Vec::new(),
            body: "{\"unexpected\": true}".to_string(),
        },
        _ => default_reply(request),
    });
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
        &["empty", "garbage", "json-instead", "healthy"],
        json!({"max_attempts": 4}),
    );

    let response = fixture.call(lane, GROUP, true);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        lane.stream_text(&response.body),
        "Hello from the mock",
        "{}",
        response.text()
    );
    assert_eq!(
        lane.stream_error(&response.body),
        None,
        "nothing of the failed attempts reaches the client"
    );
    for model in ["empty", "garbage", "json-instead", "healthy"] {
        assert_eq!(mock.hits_for_model(model), 1, "{model}");
    }
    let record = &fixture.records(1)[0];
    let outcomes: Vec<&str> = record
        .attempts
        .iter()
        .map(|attempt| attempt.outcome.as_str())
        .collect();
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    assert_eq!(outcomes[3], "success");
}

fn stream_opening_with_an_error_event_moves_to_the_next_item(lane: &Lane) {
    let error_event = lane.upstream_error_event("Overloaded");
    let mock =
        MockUpstream::start(
            move |request: &RecordedRequest| match request.model().as_str() {
                "opens-with-error" => Reply::Sse {
                    events: vec![error_event.clone()],
                    gap: Duration::ZERO,
                    end: StreamEnd::Finish,
                },
                // Some upstreams (OpenRouter) send comment keep-alives while the model has not started.
                "comment-then-error" => Reply::Sse {
                    events: vec![": PROCESSING\n\n".to_string(), error_event.clone()],
                    gap: Duration::from_millis(20),
                    end: StreamEnd::Finish,
                },
                _ => default_reply(request),
            },
        );
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
        &["opens-with-error", "comment-then-error", "healthy"],
        json!({}),
    );

    let response = fixture.call(lane, GROUP, true);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        lane.stream_text(&response.body),
        "Hello from the mock",
        "{}",
        response.text()
    );
    assert_eq!(
        lane.stream_error(&response.body),
        None,
        "the error events of the failed attempts are not forwarded"
    );
    assert!(
        !response.text().contains("PROCESSING"),
        "nothing of a failed attempt is forwarded: {}",
        response.text()
    );
    for model in ["opens-with-error", "comment-then-error", "healthy"] {
        assert_eq!(mock.hits_for_model(model), 1, "{model}");
    }
    let record = &fixture.records(1)[0];
    assert!(
        record.attempts[0].outcome.contains("Overloaded"),
        "{:?}",
        record.attempts[0]
    );
    assert!(
        record.attempts[1].outcome.contains("Overloaded"),
        "{:?}",
        record.attempts[1]
    );
}

fn oversized_event_ends_the_stream_with_an_error_event(lane: &Lane) {
    let huge_word = "x".repeat(16 * 1024);
    let format = lane.channel_type;
    let mock =
        MockUpstream::start(
            move |request: &RecordedRequest| match request.model().as_str() {
                "huge" => {
                    let mut events = stream_events(
                        format,
                        "huge",
                        &["Hello", " from", &huge_word, " the", " mock"],
                    );
                    // The " from" event travels in the same write as the oversized one, so both arrive
                    // in one read: the complete event before the oversized one must still go out.
                    let huge_index = events
                        .iter()
                        .position(|event| event.len() > 16 * 1024)
                        .expect("the oversized event");
                    let huge_event = events.remove(huge_index);
                    events[huge_index - 1].push_str(&huge_event);
                    // 80 ms apart, so the first events are forwarded before the oversized one arrives.
                    Reply::Sse {
                        events,
                        gap: Duration::from_millis(80),
                        end: StreamEnd::Finish,
                    }
                }
                "huge-first" => {
                    let events = stream_events(format, "huge-first", &[&huge_word]);
                    let huge_event = events
                        .into_iter()
                        .find(|event| event.len() > 16 * 1024)
                        .expect("the oversized event");
                    Reply::Sse {
                        events: vec![huge_event],
                        gap: Duration::ZERO,
                        end: StreamEnd::Finish,
                    }
                }
                _ => default_reply(request),
            },
        );
    let fixture = RelayFixture::start_with(|config| config.relay.max_sse_event_size = 4096);
    let channel = fixture.channel(
        lane,
        "main",
        &[lane.base_url(&mock.base_url())],
        &["sk-key-000000001"],
    );
    fixture.failover_group("huge-later", channel, &["huge", "healthy"], json!({}));
    fixture.failover_group("huge-first", channel, &["huge-first", "healthy"], json!({}));
    fixture.failover_group(GROUP, channel, &["healthy"], json!({}));

    let response = fixture.call(lane, "huge-later", true);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        lane.stream_text(&response.body),
        "Hello from",
        "the stream stops at the oversized event: {}",
        response.text()
    );
    let message = lane
        .stream_error(&response.body)
        .unwrap_or_else(|| panic!("no error event in the client's format: {}", response.text()));
    assert!(
        message.contains("4096"),
        "the error names the limit: {message}"
    );
    assert!(
        !response.text().contains("xxxxxxxx"),
        "no part of the oversized event is forwarded"
    );
    assert_eq!(mock.hits_for_model("huge"), 1);
    assert_eq!(
        mock.hits_for_model("healthy"),
        0,
        "not retried after events reached the client"
    );

    // Before anything reached the client, an oversized event is a failed attempt like any other.
    let response = fixture.call(lane, "huge-first", true);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(lane.stream_text(&response.body), "Hello from the mock");
    assert_eq!(mock.hits_for_model("huge-first"), 1);
    assert!(
        fixture.records(2)[1].attempts[0].outcome.contains("4096"),
        "{:?}",
        fixture.records(2)[1].attempts
    );

    // The gateway is unharmed and serves the next request.
    let next = fixture.call(lane, GROUP, true);
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(lane.stream_text(&next.body), "Hello from the mock");
}

fn client_leaving_mid_stream_stops_the_upstream_stream(lane: &Lane) {
    let words: Vec<String> = (0..50).map(|index| format!("word{index} ")).collect();
    let mock = MockUpstream::start(move |request: &RecordedRequest| {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        stream_reply(
            request,
            &words,
            Duration::from_millis(200),
            StreamEnd::Finish,
        )
    });
    let fixture = RelayFixture::start();
    fixture.single_channel(lane, &mock, "sk-key-000000001");

    let mut stream = fixture.open_stream(lane, GROUP);
    assert_eq!(stream.status, 200);
    assert!(stream.next_chunk().is_some(), "the first event arrives");
    stream.close();
    let closed_at = Instant::now();

    assert!(
        eventually(Duration::from_millis(1500), || mock.aborted_streams() == 1),
        "the upstream stream kept going for nobody"
    );
    let stopped_after = closed_at.elapsed();
    assert!(
        stopped_after < Duration::from_millis(1500),
        "{stopped_after:?}"
    );
    let record = &fixture.records(1)[0];
    assert_eq!(
        record.status, 499,
        "a client that left is recorded as such: {record:?}"
    );
}

fn client_leaving_before_the_first_byte_closes_the_upstream_connection(lane: &Lane) {
    let mock = MockUpstream::start(|_| Reply::StallBeforeHead(Duration::from_secs(10)));
    let fixture = RelayFixture::start();
    fixture.single_channel(lane, &mock, "sk-key-000000001");

    for stream in [false, true] {
        let auth = lane.auth_headers(&fixture.client_key);
        let headers: Vec<(&str, &str)> = auth
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let body = lane.body(GROUP, stream).to_string();
        let hangups_before = mock.peer_hangups().len();
        let requests_before = mock.request_count();
        let (socket, _) = send_request(
            fixture.gateway.address,
            "POST",
            &lane.path(GROUP, stream),
            &headers,
            body.as_bytes(),
        );
        assert!(
            eventually(Duration::from_secs(1), || mock.request_count()
                > requests_before),
            "the upstream call started"
        );
        drop(socket);
        let closed_at = Instant::now();
        assert!(
            eventually(Duration::from_millis(1000), || mock.peer_hangups().len()
                > hangups_before),
            "stream={stream}: the upstream connection stayed open after the client left"
        );
        let hung_up_at = *mock.peer_hangups().last().unwrap();
        assert!(
            hung_up_at.duration_since(closed_at) < Duration::from_millis(800),
            "stream={stream}: took {:?}",
            hung_up_at - closed_at
        );
    }
    assert_eq!(
        mock.request_count(),
        2,
        "a client that left is not retried elsewhere"
    );
    for record in fixture.records(2) {
        assert_eq!(
            record.status, 499,
            "a client that left is recorded as such: {record:?}"
        );
        assert_eq!(record.attempts.len(), 1, "{:?}", record.attempts);
    }
}
