//! Upstream faults where no other upstream can step in, so the client must get the failure:
//! for OpenAI Chat and Anthropic clients, in pass-through and converted both ways, each fault
//! must end the request (no hung coroutine), leave no upstream connection open or pooled
//! broken, answer the client in its own error shape (an in-stream error event once the stream
//! headers are out) and count the request as failed, with its reason, in the statistics and the
//! request log.
//!
//! The failover side of several faults (a stall, a reset or garbage moving on to the next item,
//! the idle gap after some events) is tested in `relay_streaming.rs`, `relay_timeouts.rs` and
//! `relay_failover.rs`; this file covers what happens when the fault is the last word.
//!
//! Each test prints one `FAULT-TABLE` line per request (run with `--nocapture`): fault, route,
//! what the client got and what the log says.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::http_client::json_request;
use support::lanes::{ANTHROPIC, Lane, OPENAI_CHAT};
use support::mock_upstream::{
    DEFAULT_WORDS, MockUpstream, RecordedRequest, Reply, StreamEnd, default_reply, error_reply,
    format_of, stream_events, with_header,
};
use support::relay_fixture::RelayFixture;

/// A client protocol calling through a channel of some type.
#[derive(Clone, Copy, Debug)]
struct Route {
    name: &'static str,
    client: Lane,
    channel_type: &'static str,
}

const ROUTES: [Route; 4] = [
    Route {
        name: "chat",
        client: OPENAI_CHAT,
        channel_type: "openai_chat",
    },
    Route {
        name: "anthropic",
        client: ANTHROPIC,
        channel_type: "anthropic",
    },
    Route {
        name: "chat-via-anthropic",
        client: OPENAI_CHAT,
        channel_type: "anthropic",
    },
    Route {
        name: "anthropic-via-chat",
        client: ANTHROPIC,
        channel_type: "openai_chat",
    },
];

/// How long a scripted stall lasts: far longer than any limit the gateway is given here, so a
/// request that ends was ended by the gateway (which `peer_hangups` confirms), not by the mock.
const STALL: Duration = Duration::from_secs(25);

/// What the client got for one request.
#[derive(Clone, Debug)]
struct Answer {
    route: Route,
    stream: bool,
    status: u16,
    /// The error message, from the error body or from the in-stream error event.
    message: String,
    /// Whether the error came as an event after a 200 and the stream headers.
    in_stream: bool,
    retry_after: Option<String>,
}

/// A gateway whose every route has a `fault-<route>` group (one channel on the faulty base URL)
/// and a `healthy-<route>` group (a channel on the mock, model `healthy`).
struct Bench {
    fixture: RelayFixture,
    mock: MockUpstream,
}

struct BenchSetup {
    /// The faulty channel's base URL without the `/v1` suffix; the mock when None.
    fault_base_url: Option<String>,
    channel_keys: Vec<&'static str>,
    /// Extra fields of the fault groups (timeouts).
    group_fields: Value,
    stream_idle_timeout_seconds: u64,
    max_sse_event_size: usize,
}

impl Default for BenchSetup {
    fn default() -> BenchSetup {
        BenchSetup {
            fault_base_url: None,
            channel_keys: vec!["sk-fault-key-000000001"],
            group_fields: json!({}),
            stream_idle_timeout_seconds: 120,
            max_sse_event_size: 32 * 1024 * 1024,
        }
    }
}

impl Bench {
    /// The mock answers model `healthy` normally and everything else with `fault`.
    fn start(
        setup: BenchSetup,
        fault: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> Bench {
        let mock = MockUpstream::start(move |request| {
            if request.model() == "healthy" {
                default_reply(request)
            } else {
                fault(request)
            }
        });
        let (idle, max_event) = (setup.stream_idle_timeout_seconds, setup.max_sse_event_size);
        let fixture = RelayFixture::start_with(|config| {
            config.relay.stream_idle_timeout_seconds = idle;
            config.relay.max_sse_event_size = max_event;
            config.relay.connect_timeout_seconds = 3;
        });
        let fault_base = setup
            .fault_base_url
            .clone()
            .unwrap_or_else(|| mock.base_url());
        for route in ROUTES {
            let fault_channel = fixture.channel_with(json!({
                "name": format!("fault-{}", route.name), "type": route.channel_type,
                "base_urls": [format!("{fault_base}/v1")], "keys": setup.channel_keys,
            }));
            let mut group = json!({"name": format!("fault-{}", route.name), "items": [{"channel_id": fault_channel, "model": "fault"}]});
            for (field, value) in setup.group_fields.as_object().unwrap() {
                group[field] = value.clone();
            }
            fixture.group(group);
            let healthy_channel = fixture.channel_with(json!({
                "name": format!("healthy-{}", route.name), "type": route.channel_type,
                "base_urls": [format!("{}/v1", mock.base_url())], "keys": ["sk-healthy-key-000001"],
            }));
            fixture.group(json!({"name": format!("healthy-{}", route.name), "items": [{"channel_id": healthy_channel, "model": "healthy"}]}));
        }
        Bench { fixture, mock }
    }

    /// Calls the route's fault group and checks the answer is an error in the client's shape.
    fn call(&self, route: Route, stream: bool) -> Answer {
        let response = self
            .fixture
            .call(&route.client, &format!("fault-{}", route.name), stream);
        let retry_after = response.header("retry-after").map(str::to_string);
        if response.status == 200 {
            assert!(
                stream,
                "{}: a non-stream fault was answered 200: {}",
                route.name,
                response.text()
            );
            let message = route
                .client
                .stream_error(&response.body)
                .unwrap_or_else(|| {
                    panic!(
                        "{} stream: no error event in the client's format: {}",
                        route.name,
                        response.text()
                    )
                });
            return Answer {
                route,
                stream,
                status: 200,
                message,
                in_stream: true,
                retry_after,
            };
        }
        assert!(
            response.status >= 400,
            "{}: {}",
            route.name,
            response.text()
        );
        let parts = route.client.error_parts(&response, response.status);
        Answer {
            route,
            stream,
            status: response.status,
            message: parts.message,
            in_stream: false,
            retry_after,
        }
    }

    /// Calls every route's fault group, for each of `streams`.
    fn call_all(&self, streams: &[bool]) -> Vec<Answer> {
        let mut answers = Vec::new();
        for route in ROUTES {
            for stream in streams {
                answers.push(self.call(route, *stream));
            }
        }
        answers
    }

    /// After the faults the gateway still serves every route, stream or not, from the same
    /// upstream: no broken connection was handed out again by its pool.
    fn healthy_requests_succeed(&self) -> usize {
        let mut count = 0;
        for route in ROUTES {
            for stream in [false, true] {
                let response =
                    self.fixture
                        .call(&route.client, &format!("healthy-{}", route.name), stream);
                assert_eq!(
                    response.status,
                    200,
                    "{} stream={stream} after the fault: {}",
                    route.name,
                    response.text()
                );
                let text = if stream {
                    route.client.stream_text(&response.body)
                } else {
                    route.client.text(&response.json())
                };
                assert_eq!(
                    text, "Hello from the mock",
                    "{} stream={stream}",
                    route.name
                );
                assert_eq!(route.client.stream_error(&response.body), None);
                count += 1;
            }
        }
        count
    }

    /// The log rows of the failed requests, once the writer has written `expected` of them.
    fn failed_logs(&self, expected: usize) -> Vec<Value> {
        poll(&format!("{expected} failed logs"), || {
            let logs = self.get(&format!(
                "/api/v1/logs?status=failed&page_size={}",
                expected.max(1) + 10
            ));
            (logs["total"] == expected).then(|| logs["items"].as_array().unwrap().clone())
        })
    }

    fn get(&self, path: &str) -> Value {
        let response = json_request(
            self.fixture.gateway.address,
            "GET",
            path,
            Some(&self.fixture.admin_token),
            None,
        );
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
        response.json()
    }

    /// Checks the counting and the log of every answer, then the healthy requests, and prints the
    /// table rows. `reason` says whether a logged error names the fault.
    fn check_counted_and_logged(
        &self,
        fault: &str,
        answers: &[Answer],
        reason: impl Fn(&Answer, &str) -> bool,
    ) {
        let logs = self.failed_logs(answers.len());
        let summary = self.get("/api/v1/stats/summary");
        assert_eq!(summary["requests"], answers.len(), "{summary}");
        assert_eq!(
            summary["failed"],
            answers.len(),
            "every faulted request counts as failed: {summary}"
        );
        assert_eq!(summary["success"], 0, "{summary}");
        for answer in answers {
            let group = format!("fault-{}", answer.route.name);
            let matching: Vec<&Value> = logs
                .iter()
                .filter(|log| log["group"] == group.as_str() && log["stream"] == answer.stream)
                .collect();
            assert_eq!(
                matching.len(),
                1,
                "{group} stream={}: {logs:#?}",
                answer.stream
            );
            let log = matching[0];
            assert_eq!(log["success"], false);
            assert_eq!(log["status_code"], answer.status, "{log}");
            let error = log["error"]
                .as_str()
                .unwrap_or_else(|| panic!("a failed request logs its reason: {log}"));
            assert!(
                reason(answer, error),
                "{fault} {group} stream={}: the logged error does not name the fault: {error:?}",
                answer.stream
            );
            eprintln!(
                "FAULT-TABLE | {fault} | {} | {} | {}{} {:?} | {:?}",
                answer.route.name,
                if answer.stream { "stream" } else { "complete" },
                answer.status,
                if answer.in_stream {
                    " + error event"
                } else {
                    ""
                },
                answer.message,
                error,
            );
        }
        let healthy = self.healthy_requests_succeed();
        let summary = poll("the healthy requests counted", || {
            let summary = self.get("/api/v1/stats/summary");
            (summary["requests"] == answers.len() + healthy).then_some(summary)
        });
        assert_eq!(summary["success"], healthy, "{summary}");
        assert_eq!(summary["failed"], answers.len(), "{summary}");
    }

    /// Waits until the mock holds at most `limit` connections from the gateway.
    fn open_connections_settle_at_most(&self, limit: usize, what: &str) {
        let settled = eventually(Duration::from_secs(5), || {
            self.mock.open_connections() <= limit
        });
        assert!(
            settled,
            "{what}: the gateway keeps {} connections to the upstream open (at most {limit} expected)",
            self.mock.open_connections()
        );
    }
}

/// Polls `probe` every 50 ms for up to 10 s.
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

/// The first events of the default stream in the request's format, through the second text
/// delta: a stream that was going well.
fn first_events(request: &RecordedRequest) -> Vec<String> {
    let lane = if format_of(request) == "anthropic" {
        ANTHROPIC
    } else {
        OPENAI_CHAT
    };
    lane.events_through_text(
        &stream_events(format_of(request), &request.model(), &DEFAULT_WORDS),
        2,
    )
}

/// A response head and the start of a complete body that promises more than it sends.
fn partial_json_body(request: &RecordedRequest) -> String {
    let body =
        support::mock_upstream::complete_body(format_of(request), "fault", "Hello from the mock")
            .to_string();
    let partial = &body[..body.len() / 2];
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{partial}",
        body.len()
    )
}

#[test]
fn connection_reset_mid_answer() {
    let bench = Bench::start(BenchSetup::default(), |request| {
        if request.wants_stream() {
            Reply::Sse {
                events: first_events(request),
                gap: Duration::from_millis(10),
                end: StreamEnd::Reset,
            }
        } else {
            Reply::Raw {
                bytes: partial_json_body(request),
                end: StreamEnd::Reset,
            }
        }
    });
    let answers = bench.call_all(&[false, true]);
    for answer in &answers {
        if answer.stream {
            assert!(
                answer.in_stream && answer.message.contains("broke"),
                "{answer:?}"
            );
        } else {
            assert_eq!(answer.status, 502, "{answer:?}");
        }
    }
    bench.open_connections_settle_at_most(0, "after resets");
    bench.check_counted_and_logged("connection reset mid-answer", &answers, |answer, error| {
        if answer.stream {
            error.contains("broke")
        } else {
            error.contains("502")
        }
    });
}

#[test]
fn garbage_instead_of_events() {
    let bench = Bench::start(BenchSetup::default(), |request| {
        if request.wants_stream() {
            Reply::Sse {
                events: vec!["<html><body>502 Bad Gateway</body></html>\n\n".to_string()],
                gap: Duration::ZERO,
                end: StreamEnd::Finish,
            }
        } else {
            Reply::Raw {
                bytes: "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 41\r\n\r\n<html><body>502 Bad Gateway</body></html>".to_string(),
                end: StreamEnd::Finish,
            }
        }
    });
    let answers = bench.call_all(&[false, true]);
    for answer in &answers {
        assert_eq!(answer.status, 502, "{answer:?}");
    }
    // The answers were complete HTTP messages: a connection may stay pooled, sound.
    bench.open_connections_settle_at_most(1, "after garbage");
    bench.check_counted_and_logged("garbage SSE / garbage body", &answers, |_, error| {
        error.contains("502")
    });
}

#[test]
fn garbage_after_the_first_events() {
    let bench = Bench::start(BenchSetup::default(), |request| {
        let mut events = first_events(request);
        events.push("data: {\"choices\": [{\"delta\": {\"content\": \"tru\n\n".to_string());
        events.push("<html>upstream proxy error</html>\n\n".to_string());
        Reply::Sse {
            events,
            gap: Duration::from_millis(10),
            end: StreamEnd::Finish,
        }
    });
    let answers = bench.call_all(&[true]);
    for answer in &answers {
        assert!(answer.in_stream, "{answer:?}");
    }
    bench.open_connections_settle_at_most(1, "after garbage");
    bench.check_counted_and_logged("garbage SSE after events", &answers, |_, error| {
        error.contains("ended before it finished")
    });
}

#[test]
fn stream_that_ends_before_its_final_event() {
    let bench = Bench::start(BenchSetup::default(), |request| Reply::Sse {
        events: first_events(request),
        gap: Duration::from_millis(10),
        end: StreamEnd::Finish,
    });
    let answers = bench.call_all(&[true]);
    for answer in &answers {
        assert!(answer.in_stream, "{answer:?}");
        assert!(answer.message.contains("ended"), "{answer:?}");
    }
    bench.open_connections_settle_at_most(1, "after truncated streams");
    bench.check_counted_and_logged("truncated SSE", &answers, |_, error| {
        error.contains("ended")
    });
}

#[test]
fn event_larger_than_the_cap() {
    let words: Vec<String> = vec![
        "Hello".into(),
        " from".into(),
        "x".repeat(16 * 1024),
        " the".into(),
    ];
    let setup = BenchSetup {
        max_sse_event_size: 4096,
        ..BenchSetup::default()
    };
    let bench = Bench::start(setup, move |request| {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        Reply::Sse {
            events: stream_events(format_of(request), "fault", &words),
            gap: Duration::from_millis(30),
            end: StreamEnd::Finish,
        }
    });
    let answers = bench.call_all(&[true]);
    for answer in &answers {
        assert!(answer.in_stream, "{answer:?}");
        assert!(answer.message.contains("4096"), "{answer:?}");
    }
    bench.open_connections_settle_at_most(0, "after an oversized event");
    bench.check_counted_and_logged("event larger than the cap", &answers, |_, error| {
        error.contains("4096")
    });
}

#[test]
fn success_status_with_an_error_body() {
    let bench = Bench::start(BenchSetup::default(), |request| {
        let format = format_of(request);
        if request.wants_stream() {
            let mut events = first_events(request);
            let lane = if format == "anthropic" {
                ANTHROPIC
            } else {
                OPENAI_CHAT
            };
            events.push(lane.upstream_error_event("the model crashed mid-answer"));
            Reply::Sse {
                events,
                gap: Duration::from_millis(10),
                end: StreamEnd::Finish,
            }
        } else {
            let Reply::Json { body, .. } = error_reply(format, 500, "the model crashed") else {
                unreachable!()
            };
            Reply::Json {
                status: 200,
                headers: Vec::new(),
                body,
            }
        }
    });
    let answers = bench.call_all(&[false, true]);
    for answer in &answers {
        if answer.stream {
            assert!(
                answer.in_stream && answer.message.contains("crashed mid-answer"),
                "{answer:?}"
            );
        } else {
            assert!(
                answer.status >= 500 && answer.message.contains("the model crashed"),
                "{answer:?}"
            );
        }
    }
    bench.open_connections_settle_at_most(1, "after error bodies");
    bench.check_counted_and_logged("200 with an error body", &answers, |_, error| {
        error.contains("crashed")
    });
}

/// A storm of 429s: 8 clients, 5 requests each, against a channel with two keys. Each key is
/// tried once, then cools down, and the rest of the storm is answered without calling the upstream.
fn rate_limit_storm(retry_after: Option<&'static str>) {
    let setup = BenchSetup {
        channel_keys: vec!["sk-fault-key-000000001", "sk-fault-key-000000002"],
        ..BenchSetup::default()
    };
    let bench = Arc::new(Bench::start(setup, move |request| {
        let reply = error_reply(format_of(request), 429, "rate limit reached for requests");
        match retry_after {
            Some(seconds) => with_header(reply, "retry-after", seconds),
            None => reply,
        }
    }));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|client_index| {
            let (bench, answers) = (bench.clone(), answers.clone());
            std::thread::spawn(move || {
                for request_index in 0..5 {
                    let route = ROUTES[(client_index + request_index) % ROUTES.len()];
                    let answer = bench.call(route, request_index % 2 == 1);
                    answers.lock().unwrap().push(answer);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a storm client failed");
    }
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 40);
    let upstream_hits = bench
        .mock
        .requests()
        .iter()
        .filter(|request| request.model() != "healthy")
        .count();
    // Each of the 4 fault channels has 2 keys, each called once; a key is called again only by a
    // request that reached it before its first 429 came back. A request tries both keys of its
    // channel, so each of the 8 clients can repeat up to two (a bound of one per client failed
    // once in CI with 17). A storm without cool-downs would make 80 calls, two per request.
    assert!(
        upstream_hits <= 4 * 2 + 8 * 2,
        "the storm was amplified: {upstream_hits} upstream calls for 40 requests"
    );
    for answer in &answers {
        assert!(answer.status == 429 || answer.status == 503, "{answer:?}");
        assert!(!answer.in_stream, "{answer:?}");
        if answer.status == 429 {
            assert!(answer.message.contains("rate limit reached"), "{answer:?}");
            assert_eq!(
                answer.retry_after.as_deref(),
                retry_after,
                "the upstream's Retry-After reaches the client"
            );
        } else {
            assert!(answer.message.contains("cooling down"), "{answer:?}");
            // The 503 says when the first key is free again.
            let seconds: u64 = answer
                .retry_after
                .as_deref()
                .expect("a 503 for keys cooling down carries Retry-After")
                .parse()
                .expect("Retry-After is whole seconds");
            assert!(seconds >= 1, "{answer:?}");
            if let Some(upstream_seconds) = retry_after {
                assert!(seconds <= upstream_seconds.parse::<u64>().unwrap(), "{answer:?}");
            }
        }
    }
    // Eight clients at most: the pool holds no more connections than were ever used at once.
    bench.open_connections_settle_at_most(8, "after the storm");
    let fault = if retry_after.is_some() {
        "429 storm with Retry-After"
    } else {
        "429 storm without Retry-After"
    };
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<Answer> = answers
        .iter()
        .filter(|answer| seen.insert((answer.route.name, answer.stream, answer.status)))
        .cloned()
        .collect();
    eprintln!(
        "{fault}: {upstream_hits} upstream calls for {} requests; one row per distinct answer:",
        answers.len()
    );
    let logs = bench.failed_logs(answers.len());
    for answer in &distinct {
        let log = logs
            .iter()
            .find(|log| {
                log["group"] == format!("fault-{}", answer.route.name).as_str()
                    && log["stream"] == answer.stream
                    && log["status_code"] == answer.status
            })
            .unwrap_or_else(|| panic!("no log for {answer:?}"));
        let error = log["error"]
            .as_str()
            .expect("a failed request logs its reason");
        assert!(
            error.contains("429") || error.contains("cooling down"),
            "{error}"
        );
        eprintln!(
            "FAULT-TABLE | {fault} | {} | {} | {} {:?} retry-after={:?} | {:?}",
            answer.route.name,
            if answer.stream { "stream" } else { "complete" },
            answer.status,
            answer.message,
            answer.retry_after,
            error
        );
    }
    let summary = bench.get("/api/v1/stats/summary");
    assert_eq!(summary["failed"], 40, "{summary}");
    assert_eq!(summary["requests"], 40, "{summary}");
}

#[test]
fn rate_limit_storm_with_retry_after() {
    rate_limit_storm(Some("30"));
}

#[test]
fn rate_limit_storm_without_retry_after() {
    rate_limit_storm(None);
}

#[test]
fn slow_first_byte_past_the_timeout() {
    let setup = BenchSetup {
        group_fields: json!({"first_byte_timeout_ms": 500}),
        ..BenchSetup::default()
    };
    let bench = Bench::start(setup, |request| {
        if request.wants_stream() {
            // A head, then no event at all.
            Reply::Sse {
                events: Vec::new(),
                gap: Duration::ZERO,
                end: StreamEnd::Stall(STALL),
            }
        } else {
            Reply::StallBeforeHead(STALL)
        }
    });
    let answers = bench.call_all(&[false, true]);
    for answer in &answers {
        assert_eq!(answer.status, 504, "{answer:?}");
    }
    assert!(
        eventually(Duration::from_secs(3), || bench.mock.peer_hangups().len()
            == answers.len()),
        "the gateway hung up on every stalled upstream: {} of {}",
        bench.mock.peer_hangups().len(),
        answers.len()
    );
    bench.open_connections_settle_at_most(0, "after first-byte timeouts");
    bench.check_counted_and_logged("slow first byte past the timeout", &answers, |_, error| {
        error.contains("timeout") || error.contains("timed out")
    });
}

#[test]
fn silent_stream_past_the_idle_timeout() {
    let setup = BenchSetup {
        stream_idle_timeout_seconds: 1,
        ..BenchSetup::default()
    };
    let bench = Bench::start(setup, |request| Reply::Sse {
        events: first_events(request),
        gap: Duration::ZERO,
        end: StreamEnd::Stall(STALL),
    });
    let answers = bench.call_all(&[true]);
    for answer in &answers {
        assert!(
            answer.in_stream && answer.message.contains("sent nothing"),
            "{answer:?}"
        );
    }
    assert!(eventually(Duration::from_secs(3), || bench
        .mock
        .peer_hangups()
        .len()
        == answers.len()));
    bench.open_connections_settle_at_most(0, "after idle timeouts");
    bench.check_counted_and_logged(
        "silent stream past the idle timeout",
        &answers,
        |_, error| error.contains("sent nothing"),
    );
}

#[test]
fn upstream_that_never_closes() {
    // Headers and part of the body, then silence with the connection held open: a stream's
    // first event is cut in the middle, a complete body stops halfway through its length.
    let setup = BenchSetup {
        group_fields: json!({"first_byte_timeout_ms": 600, "total_timeout_ms": 1500}),
        ..BenchSetup::default()
    };
    let bench = Bench::start(setup, |request| {
        if request.wants_stream() {
            let first = first_events(request).remove(0);
            let partial = &first[..first.len() / 2];
            Reply::Raw {
                bytes: format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{partial}\r\n",
                    partial.len()
                ),
                end: StreamEnd::Stall(STALL),
            }
        } else {
            Reply::Raw {
                bytes: partial_json_body(request),
                end: StreamEnd::Stall(STALL),
            }
        }
    });
    let answers = bench.call_all(&[false, true]);
    for answer in &answers {
        assert_eq!(answer.status, 504, "{answer:?}");
    }
    assert!(eventually(Duration::from_secs(3), || bench
        .mock
        .peer_hangups()
        .len()
        == answers.len()));
    bench.open_connections_settle_at_most(0, "after upstreams that never close");
    bench.check_counted_and_logged("upstream that never closes", &answers, |_, error| {
        error.contains("timeout") || error.contains("timed out")
    });
}

#[test]
fn unresolvable_host_name() {
    let setup = BenchSetup {
        fault_base_url: Some("http://octopus-nonexistent.invalid".to_string()),
        ..BenchSetup::default()
    };
    let bench = Bench::start(setup, default_reply);
    let answers = bench.call_all(&[false, true]);
    for answer in &answers {
        // 504 if this machine's resolver times out instead of answering that the name does not exist.
        assert!(answer.status == 502 || answer.status == 504, "{answer:?}");
    }
    bench.check_counted_and_logged("DNS failure", &answers, |_, error| {
        error.contains("host not found") || error.contains("resolve")
    });
}

/// A loopback listener that counts the connections it holds and serves each with `serve`.
struct RawListener {
    address: SocketAddr,
    open_connections: Arc<AtomicUsize>,
}

impl RawListener {
    fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> RawListener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let open_connections = Arc::new(AtomicUsize::new(0));
        let counter = open_connections.clone();
        let serve = Arc::new(serve);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (counter, serve) = (counter.clone(), serve.clone());
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    serve(stream);
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        RawListener {
            address,
            open_connections,
        }
    }

    /// A plain HTTP server: whatever arrives (a TLS ClientHello here) gets a 400 and a close.
    fn plain_http() -> RawListener {
        RawListener::start(|mut stream| {
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        })
    }

    /// A TLS server with the test certificate, whose CA the gateway does not trust.
    fn untrusted_tls() -> RawListener {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let fixture = |name: &str| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/tls")
                .join(name)
        };
        let certificates: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(fixture("server.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
        // The gateway's own provider (src/upstream/tls.rs says why ring's is kept).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
        let config = Arc::new(config);
        RawListener::start(move |stream| {
            let Ok(connection) = rustls::ServerConnection::new(config.clone()) else {
                return;
            };
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let mut buffer = [0u8; 1024];
            // The handshake runs inside this read; the gateway refuses the certificate and leaves.
            let _ = tls.read(&mut buffer);
        })
    }

    fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::SeqCst)
    }
}

fn tls_failure(fault: &str, listener: RawListener) {
    let setup = BenchSetup {
        fault_base_url: Some(format!("https://{}", listener.address)),
        ..BenchSetup::default()
    };
    let bench = Bench::start(setup, default_reply);
    let answers = bench.call_all(&[false, true]);
    for answer in &answers {
        assert_eq!(answer.status, 502, "{answer:?}");
    }
    assert!(
        eventually(Duration::from_secs(5), || listener.open_connections() == 0),
        "{fault}: {} connections left open",
        listener.open_connections()
    );
    bench.check_counted_and_logged(fault, &answers, |_, error| error.contains("tls"));
}

#[test]
fn tls_to_a_plain_http_listener() {
    tls_failure("TLS to a plain-HTTP port", RawListener::plain_http());
}

#[test]
fn tls_with_an_untrusted_certificate() {
    tls_failure(
        "TLS with an untrusted certificate",
        RawListener::untrusted_tls(),
    );
}

#[test]
fn success_status_with_an_error_body_instead_of_a_stream() {
    let bench = Bench::start(BenchSetup::default(), |request| {
        let Reply::Json { body, .. } = error_reply(format_of(request), 500, "the model crashed")
        else {
            unreachable!()
        };
        Reply::Json {
            status: 200,
            headers: Vec::new(),
            body,
        }
    });
    let answers = bench.call_all(&[true]);
    for answer in &answers {
        assert!(
            !answer.in_stream
                && answer.status >= 500
                && answer.message.contains("the model crashed"),
            "{answer:?}"
        );
    }
    bench.open_connections_settle_at_most(1, "after error bodies");
    bench.check_counted_and_logged(
        "200 with a JSON error body to a stream request",
        &answers,
        |_, error| error.contains("crashed"),
    );
}
