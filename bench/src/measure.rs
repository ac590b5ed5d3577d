//! The measuring loops: sequential timed requests, a closed loop at fixed concurrency, timed
//! SSE streams and a set of held-open streams. Each loop is bounded by a count and a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::http_client::{ClientConnection, build_request};
use crate::mock_upstream::{openai_scheduled_gap_before, openai_stream_event_count};

/// No single read or write may wait longer than this; a stuck gateway shows up as errors.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Worker threads only run the small client; 256 KiB stacks keep 1,000 of them cheap.
const WORKER_STACK_BYTES: usize = 256 * 1024;
/// After a failed connect, a load worker waits this long so a refusing server is not spun on.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(2);

/// One side of the comparison: where requests go and the exact bytes they carry.
pub struct Target {
    pub address: SocketAddr,
    /// Non-streaming chat completion (~200-byte body).
    pub whole_request: Arc<Vec<u8>>,
    /// Streaming chat completion whose upstream model is `stream-64x20`.
    pub paced_stream_request: Vec<u8>,
    /// Streaming chat completion whose upstream model is `stream-4x20`.
    pub first_event_stream_request: Vec<u8>,
    /// Streaming chat completion whose upstream model is `stream-600x100` (60-second streams).
    pub long_stream_request: Arc<Vec<u8>>,
}

/// The model names a target's requests use (upstream names direct, group names via the gateway).
pub struct TargetModels<'a> {
    pub whole: &'a str,
    pub paced_stream: &'a str,
    pub first_event_stream: &'a str,
    pub long_stream: &'a str,
}

impl Target {
    pub fn new(address: SocketAddr, bearer: &str, models: &TargetModels) -> Target {
        let request = |model: &str, stream: bool| {
            let body = chat_request_body(model, stream);
            build_request(
                "POST",
                address,
                "/v1/chat/completions",
                Some(bearer),
                Some(&body),
            )
        };
        Target {
            address,
            whole_request: Arc::new(request(models.whole, false)),
            paced_stream_request: request(models.paced_stream, true),
            first_event_stream_request: request(models.first_event_stream, true),
            long_stream_request: Arc::new(request(models.long_stream, true)),
        }
    }
}

/// A realistic small chat request. Streams ask for the usage chunk so the gateway has no
/// reason to drop it and event counts stay comparable between the two arms.
fn chat_request_body(model: &str, stream: bool) -> Vec<u8> {
    let mut body = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello in one short sentence."}
        ],
        "max_tokens": 32,
        "temperature": 0.2,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body.to_string().into_bytes()
}

/// Errors seen by one arm: how many, and the first one for the report.
#[derive(Debug, Default)]
pub struct ErrorTally {
    pub count: u64,
    pub first: Option<String>,
}

impl ErrorTally {
    pub fn record(&mut self, message: String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(message);
        }
    }

    pub fn absorb(&mut self, other: ErrorTally) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// One keep-alive connection used for a strictly sequential run; reconnects after errors,
/// outside the timed part of a request.
pub struct SequentialClient {
    address: SocketAddr,
    connection: Option<ClientConnection>,
}

impl SequentialClient {
    pub fn new(address: SocketAddr) -> SequentialClient {
        SequentialClient {
            address,
            connection: None,
        }
    }

    fn ready_connection(&mut self) -> Result<&mut ClientConnection, String> {
        let reusable = self.connection.as_ref().is_some_and(|c| c.is_reusable());
        if !reusable {
            let connection = ClientConnection::connect(self.address, IO_TIMEOUT)
                .map_err(|error| format!("connect to {}: {error}", self.address))?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("connection was just set"))
    }

    /// Sends one request and returns its round-trip time in nanoseconds.
    pub fn timed_request(&mut self, request: &[u8]) -> Result<u64, String> {
        self.successful_exchange(request)
            .map(|(elapsed, _)| elapsed)
    }

    /// Sends one request and returns the body of its 200 answer, for checking what came back.
    pub fn answer_body(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        self.successful_exchange(request).map(|(_, body)| body)
    }

    /// One exchange: its round-trip time in nanoseconds and the body, or why it failed.
    fn successful_exchange(&mut self, request: &[u8]) -> Result<(u64, Vec<u8>), String> {
        let connection = self.ready_connection()?;
        let started = Instant::now();
        let response = connection.exchange(request);
        let elapsed = started.elapsed().as_nanos() as u64;
        match response {
            Ok(response) if response.status == 200 => Ok((elapsed, response.body)),
            Ok(response) => Err(format!(
                "status {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            )),
            Err(error) => {
                self.connection = None;
                Err(format!("request failed: {error}"))
            }
        }
    }

    /// Runs one paced OpenAI-dialect stream to its end and measures its timing.
    pub fn timed_stream(
        &mut self,
        request: &[u8],
        delta_count: u32,
        pace: Duration,
    ) -> Result<StreamSample, String> {
        let connection = self.ready_connection()?;
        let started = Instant::now();
        let outcome = match connection.stream(request, &mut |_| true) {
            Ok(outcome) => outcome,
            Err(error) => {
                self.connection = None;
                return Err(format!("stream failed: {error}"));
            }
        };
        if outcome.status != 200 {
            return Err(format!(
                "stream status {}: {}",
                outcome.status,
                String::from_utf8_lossy(&outcome.error_body)
            ));
        }
        let arrivals = &outcome.event_arrivals;
        let Some(first_arrival) = arrivals.first() else {
            return Err("stream ended without any event".to_string());
        };
        let mut max_gap = Duration::ZERO;
        let mut max_lateness_nanos = 0i64;
        for (event_index, pair) in arrivals.windows(2).enumerate().map(|(i, p)| (i + 1, p)) {
            let gap = pair[1] - pair[0];
            max_gap = max_gap.max(gap);
            let scheduled = openai_scheduled_gap_before(event_index, delta_count, pace);
            let lateness = gap.as_nanos() as i64 - scheduled.as_nanos() as i64;
            max_lateness_nanos = max_lateness_nanos.max(lateness);
        }
        Ok(StreamSample {
            first_event_nanos: (*first_arrival - started).as_nanos() as u64,
            events: arrivals.len(),
            expected_events: openai_stream_event_count(delta_count),
            max_gap_nanos: max_gap.as_nanos() as u64,
            max_lateness_nanos,
        })
    }
}

/// Timing of one complete stream.
#[derive(Debug, Clone)]
pub struct StreamSample {
    /// Request written -> first SSE event complete.
    pub first_event_nanos: u64,
    pub events: usize,
    pub expected_events: usize,
    /// The longest pause between two consecutive events.
    pub max_gap_nanos: u64,
    /// The most any gap exceeded the mock's schedule for it (a Nagle stall shows as ~40 ms).
    pub max_lateness_nanos: i64,
}

/// Sequential timed requests: up to `count`, stopping early at `deadline`.
pub fn sequential_requests(
    client: &mut SequentialClient,
    request: &[u8],
    count: usize,
    deadline: Instant,
    errors: &mut ErrorTally,
) -> Vec<u64> {
    spaced_requests(client, request, count, Duration::ZERO, deadline, errors)
}

/// `sequential_requests` with `pause` before each request, as an SDK's client leaves between
/// calls: the gateway's CPU goes idle in between, and its caches cool.
pub fn spaced_requests(
    client: &mut SequentialClient,
    request: &[u8],
    count: usize,
    pause: Duration,
    deadline: Instant,
    errors: &mut ErrorTally,
) -> Vec<u64> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        if Instant::now() >= deadline {
            errors.record("phase deadline reached before all requests were sent".to_string());
            break;
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        match client.timed_request(request) {
            Ok(nanos) => samples.push(nanos),
            Err(message) => errors.record(message),
        }
    }
    samples
}

/// What a closed-loop run achieved.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// Completed requests (whole answers or streams read to their end) with status 200.
    pub completed: u64,
    pub errors: ErrorTally,
    pub elapsed: Duration,
    /// Round-trip time of every completed request (a stream: until its end), in nanoseconds.
    pub latencies: Vec<u64>,
    /// SSE events received over all completed streams (0 for whole answers).
    pub events: u64,
}

/// What the requests of a closed loop ask for, and so how their answers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// A whole JSON answer.
    Whole,
    /// An SSE stream, read to its end with its events counted.
    Stream,
}

/// `concurrency` workers, each with its own keep-alive connection, send the same request back
/// to back for `duration`. Connections are opened before the clock starts, so the figure is
/// requests over established connections.
pub fn closed_loop(
    address: SocketAddr,
    request: Arc<Vec<u8>>,
    kind: LoadKind,
    concurrency: usize,
    duration: Duration,
) -> LoadOutcome {
    let start_line = Arc::new(Barrier::new(concurrency + 1));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let request = Arc::clone(&request);
        let start_line = Arc::clone(&start_line);
        let spawned = std::thread::Builder::new()
            .name("load-worker".to_string())
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || load_worker(address, &request, kind, &start_line, duration));
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(error) => panic!("cannot start a load worker thread: {error}"),
        }
    }
    start_line.wait();
    let started = Instant::now();
    let mut outcome = LoadOutcome::default();
    for worker in workers {
        let (latencies, events, errors) = worker.join().expect("load worker panicked");
        outcome.completed += latencies.len() as u64;
        outcome.latencies.extend(latencies);
        outcome.events += events;
        outcome.errors.absorb(errors);
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// One closed-loop worker; returns the latencies of its completed requests, the SSE events
/// they carried and its errors.
fn load_worker(
    address: SocketAddr,
    request: &[u8],
    kind: LoadKind,
    start_line: &Barrier,
    duration: Duration,
) -> (Vec<u64>, u64, ErrorTally) {
    let mut errors = ErrorTally::default();
    let mut events = 0u64;
    let mut connection = ClientConnection::connect(address, IO_TIMEOUT).ok();
    start_line.wait();
    let deadline = Instant::now() + duration;
    let mut latencies = Vec::with_capacity(16 * 1024);
    while Instant::now() < deadline {
        let Some(open) = connection.as_mut().filter(|c| c.is_reusable()) else {
            match ClientConnection::connect(address, IO_TIMEOUT) {
                Ok(fresh) => connection = Some(fresh),
                Err(error) => {
                    errors.record(format!("connect: {error}"));
                    std::thread::sleep(RECONNECT_BACKOFF);
                }
            }
            continue;
        };
        let started = Instant::now();
        let answer = match kind {
            LoadKind::Whole => open.exchange(request).map(|response| {
                let error_body = (response.status != 200).then_some(response.body);
                (response.status, 0, error_body)
            }),
            LoadKind::Stream => open.stream(request, &mut |_| true).map(|outcome| {
                let error_body = (outcome.status != 200).then_some(outcome.error_body);
                (
                    outcome.status,
                    outcome.event_arrivals.len() as u64,
                    error_body,
                )
            }),
        };
        match answer {
            Ok((200, answer_events, _)) => {
                latencies.push(started.elapsed().as_nanos() as u64);
                events += answer_events;
            }
            Ok((status, _, error_body)) => errors.record(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&error_body.unwrap_or_default())
            )),
            Err(error) => {
                errors.record(format!("request failed: {error}"));
                connection = None;
            }
        }
    }
    (latencies, events, errors)
}

/// Counts per arm of `interleaved_closed_loops`.
#[derive(Default)]
pub struct ArmCounts {
    /// Requests answered with status 200.
    pub completed: u64,
    pub errors: ErrorTally,
}

/// A closed loop of `concurrency` workers against two servers at once, taking turns: every
/// `slice` all workers move from one server to the other, starting with `first`, for
/// `slices_per_arm` turns each. Each worker keeps a keep-alive connection to both.
///
/// Two servers measured this way meet the same machine within a fraction of a second of each
/// other, where phases of seconds each let a neighbour's busy spell fall on one of them only.
pub fn interleaved_closed_loops(
    addresses: [SocketAddr; 2],
    requests: [Arc<Vec<u8>>; 2],
    concurrency: usize,
    slice: Duration,
    slices_per_arm: usize,
    first: usize,
) -> [ArmCounts; 2] {
    // The arm being loaded, or `STOPPED` once every slice has run.
    const STOPPED: usize = usize::MAX;
    let active = Arc::new(AtomicUsize::new(first));
    let start_line = Arc::new(Barrier::new(concurrency + 1));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (requests, active, start_line) = (requests.clone(), Arc::clone(&active), Arc::clone(&start_line));
        let spawned = std::thread::Builder::new()
            .name("load-worker".to_string())
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || {
                let mut connections = addresses.map(|address| ClientConnection::connect(address, IO_TIMEOUT).ok());
                let mut counts = [ArmCounts::default(), ArmCounts::default()];
                start_line.wait();
                loop {
                    let arm = active.load(Ordering::Acquire);
                    if arm == STOPPED {
                        break;
                    }
                    let Some(open) = connections[arm].as_mut().filter(|connection| connection.is_reusable()) else {
                        match ClientConnection::connect(addresses[arm], IO_TIMEOUT) {
                            Ok(fresh) => connections[arm] = Some(fresh),
                            Err(error) => {
                                counts[arm].errors.record(format!("connect: {error}"));
                                std::thread::sleep(RECONNECT_BACKOFF);
                            }
                        }
                        continue;
                    };
                    match open.exchange(&requests[arm]) {
                        Ok(response) if response.status == 200 => counts[arm].completed += 1,
                        Ok(response) => counts[arm]
                            .errors
                            .record(format!("status {}: {}", response.status, String::from_utf8_lossy(&response.body))),
                        Err(error) => {
                            counts[arm].errors.record(format!("request failed: {error}"));
                            connections[arm] = None;
                        }
                    }
                }
                counts
            });
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(error) => panic!("cannot start a load worker thread: {error}"),
        }
    }
    start_line.wait();
    for turn in 1..2 * slices_per_arm {
        std::thread::sleep(slice);
        active.store((first + turn) % 2, Ordering::Release);
    }
    std::thread::sleep(slice);
    active.store(STOPPED, Ordering::Release);
    let mut totals = [ArmCounts::default(), ArmCounts::default()];
    for worker in workers {
        for (total, counts) in totals.iter_mut().zip(worker.join().expect("load worker panicked")) {
            total.completed += counts.completed;
            total.errors.absorb(counts.errors);
        }
    }
    totals
}

/// Streams held open at once, each having delivered its first event.
pub struct HeldStreams {
    /// Open connections with the rest of their stream unread; dropping them closes the streams.
    pub connections: Vec<ClientConnection>,
    pub errors: ErrorTally,
    /// How long opening all of them took.
    pub open_time: Duration,
}

/// Opens `count` streams with `opener_threads` threads, each stream read only up to its first
/// event, and returns the connections still open. Stops opening at `deadline`.
pub fn open_held_streams(
    address: SocketAddr,
    request: Arc<Vec<u8>>,
    count: usize,
    opener_threads: usize,
    deadline: Instant,
) -> HeldStreams {
    let started = Instant::now();
    let opener_threads = opener_threads.clamp(1, count.max(1));
    let mut openers = Vec::with_capacity(opener_threads);
    for opener_index in 0..opener_threads {
        // Spread the remainder so the shares add up to exactly `count`.
        let share = count / opener_threads + usize::from(opener_index < count % opener_threads);
        let request = Arc::clone(&request);
        let spawned = std::thread::Builder::new()
            .name("stream-opener".to_string())
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || open_streams(address, &request, share, deadline));
        match spawned {
            Ok(opener) => openers.push(opener),
            Err(error) => panic!("cannot start a stream opener thread: {error}"),
        }
    }
    let mut held = HeldStreams {
        connections: Vec::with_capacity(count),
        errors: ErrorTally::default(),
        open_time: Duration::ZERO,
    };
    for opener in openers {
        let (connections, errors) = opener.join().expect("stream opener panicked");
        held.connections.extend(connections);
        held.errors.absorb(errors);
    }
    held.open_time = started.elapsed();
    held
}

fn open_streams(
    address: SocketAddr,
    request: &[u8],
    count: usize,
    deadline: Instant,
) -> (Vec<ClientConnection>, ErrorTally) {
    let mut connections = Vec::with_capacity(count);
    let mut errors = ErrorTally::default();
    for _ in 0..count {
        if Instant::now() >= deadline {
            errors.record("deadline reached while opening streams".to_string());
            break;
        }
        let mut connection = match ClientConnection::connect(address, IO_TIMEOUT) {
            Ok(connection) => connection,
            Err(error) => {
                errors.record(format!("connect: {error}"));
                continue;
            }
        };
        // Read only until the first event has arrived; the stream then stays open unread.
        match connection.stream(request, &mut |events_so_far| events_so_far < 1) {
            Ok(outcome) if outcome.status == 200 && !outcome.event_arrivals.is_empty() => {
                connections.push(connection);
            }
            Ok(outcome) => errors.record(format!(
                "stream status {}: {}",
                outcome.status,
                String::from_utf8_lossy(&outcome.error_body)
            )),
            Err(error) => errors.record(format!("stream failed: {error}")),
        }
    }
    (connections, errors)
}
