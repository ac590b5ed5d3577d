//! octopus-bench: measures the gateway side by side with a direct-to-mock baseline on loopback
//! and prints a Markdown table of absolute numbers and gateway/direct ratios.
//!
//! One run starts a mock upstream in-process, starts the gateway as a subprocess with a private
//! config and SQLite file, configures it over the admin API, then alternates direct and gateway
//! arms (ABAB) so drift on a shared, noisy machine hits both sides alike. Last come the
//! protocol conversion lanes (`conversion.rs`), each read against the pass-through lane. Run it
//! through `scripts/bench`, which builds both programs and raises the open-file limit.

mod compare;
mod conversion;
mod forwarder;
mod gateway;
mod http_client;
mod instructions;
mod lanes;
mod large_bodies;
mod measure;
mod mock_upstream;
mod proc_stats;
mod report;
mod samples;
mod wake_floor;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conversion::{ConversionPlan, GatewayUnderTest};
use crate::forwarder::Forwarder;
use crate::gateway::{Gateway, GroupSpec, configure};
use crate::lanes::lane_groups;
use crate::measure::{
    ErrorTally, LoadKind, SequentialClient, StreamSample, Target, TargetModels, closed_loop, open_held_streams,
    sequential_requests, spaced_requests,
};
use crate::mock_upstream::{Dialect, MockUpstream};
use crate::proc_stats::{cpu_micros, own_thread_cpu_micros, peak_resident_kib, raise_fd_limit, reset_peak_resident, resident, Resident};
use crate::report::{ArmResults, HeldStreams, MemoryResults, RunInfo, RunResults};

const USAGE: &str = "usage: octopus-bench [--quick] [--held-streams N] (--gateway PATH [--compare BASELINE | --stats-off | --instructions | --record | --check] | --direct-only)

  --gateway PATH   the octopus binary to start and measure against the direct baseline
  --static-gateway PATH
                   also start this build (scripts/build-static's) once, configured alike, and
                   report its idle memory beside --gateway's
  --compare PATH   instead of the full run, measure --gateway against this other build of it
                   (e.g. the commit before a change), side by side in alternating rounds
  --stats-off      instead of the full run, measure --gateway against itself with statistics
                   and request logs switched off (OCTOPUS_BENCH_WITHOUT_STATS=1), like --compare
  --instructions   instead of the full run, count instructions and allocations per request of
                   every lane under callgrind (deterministic, unlike timings)
  --record         --instructions, then write the counts to bench/instructions.json
  --check          --instructions, then fail if a lane grew more than 5% over the recorded count
  --direct-only    measure only the mock upstream directly (no gateway)
  --quick          fewer rounds, 100 held streams and short conversion lanes, for smoke tests
  --held-streams N hold N streams instead of 1,000 (100 with --quick); above 1,000 they are
                   paced a second apart. Each takes two descriptors in the bench and two in the
                   gateway, so the open-file limit caps N at about half of it

Environment: BENCH_TASKSET=1 starts the gateway under `taskset -c 1` (scripts/bench pins the
bench itself to CPU 0); BENCH_COMMIT and BENCH_RUSTC label the report.";

/// Upstream model names the mock understands, and the shape they encode.
const WHOLE_MODEL: &str = "bench-upstream";
const PACED_STREAM_MODEL: &str = "stream-64x20";
const PACED_STREAM_DELTAS: u32 = 64;
const PACED_STREAM_PACE: Duration = Duration::from_millis(20);
/// 4 deltas 20 ms apart: short paced streams, many of which give the time to first event a
/// p99 that is not simply the slowest of twenty.
const FIRST_EVENT_STREAM_MODEL: &str = "stream-4x20";
const FIRST_EVENT_STREAM_DELTAS: u32 = 4;
/// First-event streams run in turns of this many per arm, direct then gateway, so that both
/// arms sample the same stretches of a shared machine's noise.
const FIRST_EVENT_STREAMS_PER_TURN: usize = 10;
/// 600 deltas 100 ms apart: a 60-second stream, far longer than the held-streams phase.
const LONG_STREAM_MODEL: &str = "stream-600x100";
/// 300 deltas a second apart: the held streams of a `--held-streams` run above 1,000. The mock
/// serves each stream from a thread of its own on the bench's one core; at 100 ms it could not
/// keep 10,000 streams paced (or open them within the time limit).
const SLOW_LONG_STREAM_MODEL: &str = "stream-300x1000";
/// Held streams above this count use `SLOW_LONG_STREAM_MODEL`.
const HELD_STREAMS_AT_FULL_PACE: usize = 1000;

/// The gateway groups, one per upstream model, so clients name a group as their model.
const GROUPS: [GroupSpec; 5] = [
    GroupSpec {
        group_name: "bench",
        channel: Dialect::OpenAiChat,
        upstream_model: WHOLE_MODEL,
        over_tls: false,
    },
    GroupSpec {
        group_name: "bench-stream-64x20",
        channel: Dialect::OpenAiChat,
        upstream_model: PACED_STREAM_MODEL,
        over_tls: false,
    },
    GroupSpec {
        group_name: "bench-stream-600x100",
        channel: Dialect::OpenAiChat,
        upstream_model: LONG_STREAM_MODEL,
        over_tls: false,
    },
    GroupSpec {
        group_name: "bench-stream-300x1000",
        channel: Dialect::OpenAiChat,
        upstream_model: SLOW_LONG_STREAM_MODEL,
        over_tls: false,
    },
    GroupSpec {
        group_name: "bench-stream-4x20",
        channel: Dialect::OpenAiChat,
        upstream_model: FIRST_EVENT_STREAM_MODEL,
        over_tls: false,
    },
];

/// The held-stream groups again, served through an https channel by the TLS mock: the same
/// streams, so the difference per stream is what the TLS session costs.
const TLS_GROUPS: [GroupSpec; 2] = [
    GroupSpec {
        group_name: "bench-tls-stream-600x100",
        channel: Dialect::OpenAiChat,
        upstream_model: LONG_STREAM_MODEL,
        over_tls: true,
    },
    GroupSpec {
        group_name: "bench-tls-stream-300x1000",
        channel: Dialect::OpenAiChat,
        upstream_model: SLOW_LONG_STREAM_MODEL,
        over_tls: true,
    },
];

/// Concurrency of the throughput arms.
const LOAD_CONCURRENCY: usize = 64;
/// Threads that open the held streams; enough to open 1,000 in a few seconds.
const STREAM_OPENER_THREADS: usize = 16;
/// Upper bounds for phases that could otherwise wait on a broken gateway.
const PHASE_TIME_LIMIT: Duration = Duration::from_secs(120);
/// The pause before each spaced request: an SDK's client between calls, long enough for the
/// gateway's CPU to go idle.
const SPACED_REQUEST_PAUSE: Duration = Duration::from_millis(20);
/// Spaced requests one arm sends before the next arm's turn.
const SPACED_REQUESTS_PER_TURN: usize = 10;
/// The streams phase runs three arms' first-event streams after two arms' paced streams: about
/// 105 s in the full run on this machine, so it gets more room than the others.
const STREAMS_PHASE_TIME_LIMIT: Duration = Duration::from_secs(180);
const HELD_STREAMS_OPEN_LIMIT: Duration = Duration::from_secs(60);
/// Held streams settle this long before the RSS sample, so buffers allocated on the first
/// few events are counted and those given back after the first few are not: the upstream
/// connection's output goes after four reads without a write, and the deeper stack pages after
/// half a second. Slow-paced held streams settle for five of their events.
const HELD_STREAMS_SETTLE: Duration = Duration::from_secs(1);
const SLOW_HELD_STREAMS_SETTLE: Duration = Duration::from_secs(5);
/// The idle memory rows are sampled after this long without a request: the gateway's store
/// threads give back their database caches after three quiet seconds, as they would on a server
/// that sits idle between uses.
pub const IDLE_QUIET: Duration = Duration::from_secs(4);
/// How long the mock's open streams may take to end after the clients closed theirs.
const UPSTREAM_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// The open-file limit asked for: two descriptors per held stream in this process (client
/// and mock side) plus headroom.
const WANTED_FD_LIMIT: u64 = 65_536;

/// What to do with instruction counts (`--instructions`, `--record`, `--check`).
#[derive(Clone, Copy, PartialEq)]
enum InstructionMode {
    Print,
    Record,
    Check,
}

struct Options {
    quick: bool,
    /// `--held-streams N`: overrides the plan's count.
    held_streams: Option<usize>,
    instructions: Option<InstructionMode>,
    /// `--compare` or `--stats-off`: what to measure the gateway against instead of the full run.
    baseline: Option<compare::Baseline>,
    /// None for a direct-only run.
    gateway_binary: Option<PathBuf>,
    /// The static (musl) build, whose idle memory is reported too: it is what routers run.
    static_gateway_binary: Option<PathBuf>,
}

/// How much of everything a run does.
struct Plan {
    mode: &'static str,
    warmup_requests: usize,
    latency_rounds: usize,
    requests_per_round: usize,
    /// Whole requests per arm with `SPACED_REQUEST_PAUSE` before each.
    spaced_requests: usize,
    load_rounds: usize,
    load_duration: Duration,
    stream_rounds: usize,
    streams_per_round: usize,
    /// Short paced streams per arm, for the time to first event (`FIRST_EVENT_STREAM_MODEL`).
    first_event_streams: usize,
    held_streams: usize,
    /// Restarts timed from spawn to the first 200 (`Gateway::cold_starts`).
    cold_starts: usize,
    conversion: ConversionPlan,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            mode: "full",
            warmup_requests: 500,
            latency_rounds: 7,
            requests_per_round: 300,
            spaced_requests: 150,
            load_rounds: 2,
            load_duration: Duration::from_millis(2500),
            stream_rounds: 2,
            streams_per_round: 10,
            first_event_streams: 200,
            held_streams: 1000,
            cold_starts: 20,
            conversion: ConversionPlan {
                warmup_requests: 200,
                latency_rounds: 7,
                requests_per_round: 200,
                cpu_rounds: 6,
                cpu_duration: Duration::from_secs(1),
                stream_cpu_duration: Duration::from_secs(1),
            },
        }
    }

    fn quick() -> Plan {
        Plan {
            mode: "quick",
            warmup_requests: 100,
            latency_rounds: 3,
            requests_per_round: 100,
            spaced_requests: 30,
            load_rounds: 1,
            load_duration: Duration::from_millis(1500),
            stream_rounds: 1,
            streams_per_round: 3,
            first_event_streams: 10,
            held_streams: 100,
            cold_starts: 3,
            conversion: ConversionPlan {
                warmup_requests: 50,
                latency_rounds: 3,
                requests_per_round: 50,
                cpu_rounds: 2,
                cpu_duration: Duration::from_millis(500),
                stream_cpu_duration: Duration::from_millis(500),
            },
        }
    }
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("octopus-bench: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let (Some(gateway_binary), Some(mode)) = (&options.gateway_binary, options.instructions) {
        return run_instructions(gateway_binary, mode);
    }
    if let (Some(gateway_binary), Some(baseline)) = (&options.gateway_binary, &options.baseline) {
        let started = Instant::now();
        let plan = if options.quick {
            compare::ComparePlan { rounds: 4, requests_per_round: 200, load_duration: Duration::from_millis(1_000) }
        } else {
            compare::ComparePlan { rounds: compare_rounds(), requests_per_round: 400, load_duration: Duration::from_millis(2_000) }
        };
        let (pin_to_cpu, _) = gateway_pinning();
        return match compare::run(gateway_binary, baseline, &plan, pin_to_cpu, &|message| progress(started, message)) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("octopus-bench: {message}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&options) {
        Ok(results) => {
            print!("{}", report::render(&results));
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("octopus-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_options() -> Result<Options, String> {
    let mut quick = false;
    let mut held_streams = None;
    let mut direct_only = false;
    let mut gateway_binary = None;
    let mut static_gateway_binary = None;
    let mut baseline = None;
    let mut instructions = None;
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--quick" => quick = true,
            "--direct-only" => direct_only = true,
            "--held-streams" => {
                let count = arguments.next().ok_or("--held-streams needs a count")?;
                let count = count
                    .parse::<usize>()
                    .ok()
                    .filter(|count| *count > 0)
                    .ok_or_else(|| format!("--held-streams needs a positive count, not `{count}`"))?;
                held_streams = Some(count);
            }
            "--gateway" => {
                let path = arguments.next().ok_or("--gateway needs a path")?;
                gateway_binary = Some(PathBuf::from(path));
            }
            "--static-gateway" => {
                let path = arguments.next().ok_or("--static-gateway needs a path")?;
                static_gateway_binary = Some(PathBuf::from(path));
            }
            "--compare" => {
                let path = arguments.next().ok_or("--compare needs a path")?;
                baseline = Some(compare::Baseline::OtherBuild(PathBuf::from(path)));
            }
            "--stats-off" => baseline = Some(compare::Baseline::SameBuildWithoutStats),
            "--instructions" => instructions = Some(InstructionMode::Print),
            "--record" => instructions = Some(InstructionMode::Record),
            "--check" => instructions = Some(InstructionMode::Check),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if direct_only {
        gateway_binary = None;
    } else if gateway_binary.is_none() {
        return Err("give --gateway PATH or --direct-only".to_string());
    }
    if (baseline.is_some() || instructions.is_some()) && gateway_binary.is_none() {
        return Err("--compare, --stats-off, --instructions, --record and --check need --gateway too".to_string());
    }
    Ok(Options {
        quick,
        held_streams,
        instructions,
        baseline,
        gateway_binary,
        static_gateway_binary,
    })
}

/// Where `--record` writes the counts and `--check` reads them.
fn instructions_record_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("instructions.json")
}

fn run_instructions(gateway_binary: &std::path::Path, mode: InstructionMode) -> ExitCode {
    let started = Instant::now();
    let record_path = instructions_record_path();
    let recorded = match mode {
        InstructionMode::Record => None,
        InstructionMode::Print | InstructionMode::Check => {
            let recorded = std::fs::read_to_string(&record_path)
                .map_err(|error| format!("cannot read {}: {error}", record_path.display()))
                .and_then(|text| serde_json::from_str(&text).map_err(|error| format!("{} is not JSON: {error}", record_path.display())))
                .and_then(|value| instructions::from_json(&value).map_err(|error| format!("{}: {error}", record_path.display())));
            match (recorded, mode) {
                (Ok(recorded), _) => Some(recorded),
                (Err(message), InstructionMode::Check) => {
                    eprintln!("octopus-bench: {message}");
                    return ExitCode::FAILURE;
                }
                (Err(_), _) => None,
            }
        }
    };
    let counts = match instructions::measure(gateway_binary, &|message| progress(started, message)) {
        Ok(counts) => counts,
        Err(message) => {
            eprintln!("octopus-bench: {message}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", instructions::render(&counts, recorded.as_deref()));
    match mode {
        InstructionMode::Print => ExitCode::SUCCESS,
        InstructionMode::Record => {
            let commit = std::env::var("BENCH_COMMIT").unwrap_or_else(|_| "unknown".to_string());
            let rustc = std::env::var("BENCH_RUSTC").unwrap_or_else(|_| "rustc ?".to_string());
            let text = serde_json::to_string_pretty(&instructions::to_json(&counts, &commit, &rustc)).expect("counts serialise") + "\n";
            match std::fs::write(&record_path, text) {
                Ok(()) => {
                    eprintln!("recorded in {}", record_path.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("octopus-bench: cannot write {}: {error}", record_path.display());
                    ExitCode::FAILURE
                }
            }
        }
        InstructionMode::Check => {
            let problems = instructions::regressions(&counts, recorded.as_deref().unwrap_or_default());
            if problems.is_empty() {
                eprintln!("instruction counts within {:.0}% of {}", instructions::ALLOWED_GROWTH * 100.0, record_path.display());
                ExitCode::SUCCESS
            } else {
                for problem in &problems {
                    eprintln!("regression: {problem}");
                }
                ExitCode::FAILURE
            }
        }
    }
}

/// Progress goes to stderr so stdout carries only the Markdown report.
fn progress(run_started: Instant, message: &str) {
    eprintln!("[{:6.1} s] {message}", run_started.elapsed().as_secs_f64());
}

fn run(options: &Options) -> Result<RunResults, String> {
    let run_started = Instant::now();
    let mut plan = if options.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(held_streams) = options.held_streams {
        plan.held_streams = held_streams;
    }

    let fd_limit = raise_fd_limit(WANTED_FD_LIMIT);
    // Two per held stream, plus the gateway's pooled upstream connections from the throughput
    // phase (their mock ends live here) and this process's own files and sockets.
    let needed_fds = (plan.held_streams * 2 + LOAD_CONCURRENCY + 96) as u64;
    if fd_limit < needed_fds {
        return Err(format!(
            "the open-file limit is {fd_limit}, the held-streams phase needs {needed_fds}; raise it with `ulimit -n`"
        ));
    }

    let mock = MockUpstream::start().map_err(|error| format!("cannot start the mock: {error}"))?;
    // Only streams through the gateway are held over TLS: the bench's client speaks plain HTTP.
    let tls_mock = match &options.gateway_binary {
        Some(_) => Some(MockUpstream::start_tls().map_err(|error| format!("cannot start the TLS mock: {error}"))?),
        None => None,
    };
    progress(run_started, &format!("mock upstream on {}", mock.address()));

    let (pin_to_cpu, pinning) = gateway_pinning();
    progress(run_started, "cross-CPU round trips without a gateway (the floor under the added latency)");
    let wake_floor = match wake_floor::measure(pin_to_cpu) {
        Ok(floor) => Some(floor),
        Err(error) => {
            eprintln!("octopus-bench: the cross-CPU round trips could not be measured: {error}");
            None
        }
    };
    let mut gateway = match &options.gateway_binary {
        Some(binary) => Some(Gateway::start(binary, pin_to_cpu, &[])?),
        None => None,
    };
    let gateway_pid = gateway.as_ref().map(Gateway::pid);
    let gateway_rss = || gateway_pid.and_then(resident);
    let idle_gateway_rss = || gateway_pid.and_then(idle_resident);
    let mut memory = MemoryResults {
        at_start: idle_gateway_rss(),
        ..MemoryResults::default()
    };

    let direct_models = TargetModels {
        whole: WHOLE_MODEL,
        paced_stream: PACED_STREAM_MODEL,
        first_event_stream: FIRST_EVENT_STREAM_MODEL,
        long_stream: held_stream_model(plan.held_streams),
    };
    let direct = Target::new(mock.address(), "sk-mock-1", &direct_models);
    // The zero-work forwarder takes the direct arm's requests to the same mock, on the
    // gateway's CPU; it is measured only beside a gateway, which it is there to explain.
    let forwarder = match &options.gateway_binary {
        Some(_) => Some(
            Forwarder::start(mock.address(), pin_to_cpu)
                .map_err(|error| format!("cannot start the zero-work forwarder: {error}"))?,
        ),
        None => None,
    };
    let through_forwarder = forwarder
        .as_ref()
        .map(|forwarder| Target::new(forwarder.address(), "sk-mock-1", &direct_models));
    let mut client_key = None;
    let through_gateway = match &gateway {
        Some(gateway) => {
            progress(
                run_started,
                &format!("gateway pid {} on {}", gateway.pid(), gateway.address()),
            );
            let groups: Vec<GroupSpec> = GROUPS.into_iter().chain(TLS_GROUPS).chain(lane_groups()).collect();
            let key = configure(gateway.address(), mock.address(), tls_mock.as_ref().map(MockUpstream::address), &groups).map_err(|error| {
                format!(
                    "configuring the gateway failed: {error}\ngateway log:\n{}",
                    gateway.log_tail()
                )
            })?;
            let target = Target::new(gateway.address(), &key, &gateway_models(held_stream_group(plan.held_streams)));
            client_key = Some(key);
            Some(target)
        }
        None => None,
    };
    memory.idle_configured = idle_gateway_rss();

    let mut direct_results = ArmResults::default();
    let mut gateway_results = through_gateway.as_ref().map(|_| ArmResults::default());
    let mut direct_client = SequentialClient::new(direct.address);
    let mut gateway_client = through_gateway
        .as_ref()
        .map(|target| SequentialClient::new(target.address));
    let mut forwarder_results = through_forwarder.as_ref().map(|_| ArmResults::default());
    let mut forwarder_client = through_forwarder
        .as_ref()
        .map(|target| SequentialClient::new(target.address));

    // Warm-up: connections, allocator pools and the gateway's caches, on both arms. An arm
    // whose every warm-up request failed cannot be measured, so stop with its first error.
    progress(run_started, "warm-up");
    let phase_deadline = Instant::now() + PHASE_TIME_LIMIT;
    warm_up(
        &mut direct_client,
        &direct,
        plan.warmup_requests,
        phase_deadline,
        "direct",
    )?;
    if let (Some(client), Some(target), Some(gateway)) =
        (gateway_client.as_mut(), &through_gateway, &gateway)
    {
        warm_up(
            client,
            target,
            plan.warmup_requests,
            phase_deadline,
            "gateway",
        )
        .map_err(|error| format!("{error}\ngateway log:\n{}", gateway.log_tail()))?;
    }
    if let (Some(client), Some(target)) = (forwarder_client.as_mut(), &through_forwarder) {
        warm_up(client, target, plan.warmup_requests, phase_deadline, "forwarder")?;
    }
    memory.after_warmup = gateway_rss();

    ensure_gateway_running(&mut gateway, "warm-up")?;
    progress(run_started, "latency at c=1");
    let phase_deadline = Instant::now() + PHASE_TIME_LIMIT;
    let mut arms = turn_arms(
        (&mut direct_client, &direct, &mut direct_results),
        [
            (gateway_client.as_mut(), through_gateway.as_ref(), gateway_results.as_mut()),
            (forwarder_client.as_mut(), through_forwarder.as_ref(), forwarder_results.as_mut()),
        ],
    );
    for _ in 0..plan.latency_rounds {
        for (client, target, results) in arms.iter_mut() {
            latency_round(&mock, client, target, &plan, phase_deadline, results);
        }
    }

    progress(run_started, &format!("latency at c=1, {} ms before each request", SPACED_REQUEST_PAUSE.as_millis()));
    let phase_deadline = Instant::now() + PHASE_TIME_LIMIT;
    in_turns(&mut arms, plan.spaced_requests, SPACED_REQUESTS_PER_TURN, |client, target, count, results| {
        spaced_turn(client, target, count, phase_deadline, results)
    });

    ensure_gateway_running(&mut gateway, "latency at c=1")?;
    progress(run_started, &format!("throughput at c={LOAD_CONCURRENCY}"));
    for _ in 0..plan.load_rounds {
        load_round(&mock, &direct, Proxy::None, &plan, &mut direct_results);
        if let (Some(target), Some(results)) = (&through_gateway, gateway_results.as_mut()) {
            load_round(&mock, target, gateway_pid.map_or(Proxy::None, Proxy::Process), &plan, results);
        }
        if let (Some(target), Some(results), Some(forwarder)) = (&through_forwarder, forwarder_results.as_mut(), &forwarder) {
            load_round(&mock, target, Proxy::BenchThread(forwarder.thread_id()), &plan, results);
        }
    }
    memory.after_load = gateway_rss();
    ensure_gateway_running(&mut gateway, "throughput")?;

    progress(
        run_started,
        &format!("streams ({PACED_STREAM_MODEL}) at c=1"),
    );
    let phase_deadline = Instant::now() + STREAMS_PHASE_TIME_LIMIT;
    // One untimed stream per arm first, so the gateway's first streaming request is not a sample.
    let _ = direct_client.timed_stream(
        &direct.paced_stream_request,
        PACED_STREAM_DELTAS,
        PACED_STREAM_PACE,
    );
    if let (Some(client), Some(target)) = (gateway_client.as_mut(), &through_gateway) {
        let _ = client.timed_stream(
            &target.paced_stream_request,
            PACED_STREAM_DELTAS,
            PACED_STREAM_PACE,
        );
    }
    for _ in 0..plan.stream_rounds {
        stream_round(
            &mock,
            &mut direct_client,
            &direct,
            &plan,
            phase_deadline,
            &mut direct_results,
        );
        if let (Some(client), Some(target), Some(results)) = (
            gateway_client.as_mut(),
            &through_gateway,
            gateway_results.as_mut(),
        ) {
            stream_round(&mock, client, target, &plan, phase_deadline, results);
        }
    }
    // The forwarder runs only the short streams: its first event is all it is there for, and
    // 20 more paced streams would add half a minute. One untimed stream first, as above.
    if let (Some(client), Some(target)) = (forwarder_client.as_mut(), &through_forwarder) {
        let _ = client.timed_stream(&target.first_event_stream_request, FIRST_EVENT_STREAM_DELTAS, PACED_STREAM_PACE);
    }
    let mut arms = turn_arms(
        (&mut direct_client, &direct, &mut direct_results),
        [
            (gateway_client.as_mut(), through_gateway.as_ref(), gateway_results.as_mut()),
            (forwarder_client.as_mut(), through_forwarder.as_ref(), forwarder_results.as_mut()),
        ],
    );
    in_turns(&mut arms, plan.first_event_streams, FIRST_EVENT_STREAMS_PER_TURN, |client, target, count, results| {
        first_event_turn(client, target, count, phase_deadline, results)
    });

    ensure_gateway_running(&mut gateway, "streams")?;
    // Held streams measure the gateway's memory per open stream; a direct-only run still holds
    // them against the mock, which checks the rig can.
    let held_target = through_gateway.as_ref().unwrap_or(&direct);
    progress(
        run_started,
        &format!(
            "holding {} streams ({})",
            plan.held_streams,
            held_stream_model(plan.held_streams)
        ),
    );
    memory.held = hold_streams(&mock, held_target, &plan, gateway_pid);
    ensure_gateway_running(&mut gateway, "held streams")?;
    if let (Some(tls_mock), Some(gateway), Some(client_key)) = (&tls_mock, &gateway, &client_key) {
        progress(run_started, &format!("holding {} streams over TLS", plan.held_streams));
        let over_tls = Target::new(gateway.address(), client_key, &gateway_models(held_stream_pace(plan.held_streams).tls_group.group_name));
        memory.held_over_tls = Some(hold_streams(tls_mock, &over_tls, &plan, gateway_pid));
    }
    ensure_gateway_running(&mut gateway, "held streams over TLS")?;
    if let (Some(gateway), Some(client_key)) = (&gateway, &client_key) {
        progress(
            run_started,
            &format!(
                "{} keep-alive clients sending {} KiB requests at once, then idle",
                large_bodies::LARGE_BODY_CLIENTS,
                large_bodies::LARGE_BODY_BYTES / 1024
            ),
        );
        memory.large_bodies = Some(large_bodies::run(gateway.address(), client_key, GROUPS[0].group_name, gateway.pid()));
    }
    ensure_gateway_running(&mut gateway, "large bodies")?;

    let conversion = match (gateway.as_mut(), client_key) {
        (Some(gateway), Some(client_key)) => {
            let under_test = GatewayUnderTest {
                pid: gateway.pid(),
                address: gateway.address(),
                client_key,
            };
            let results = conversion::run(&mock, &under_test, &plan.conversion, &|message| {
                progress(run_started, message)
            })
            .map_err(|error| {
                let exit = gateway.exit_status().map_or(String::new(), |status| {
                    format!("\nthe gateway is no longer running ({status}; it exits 0 only on SIGINT or SIGTERM)")
                });
                format!("{error}{exit}\ngateway log:\n{}", gateway.log_tail())
            })?;
            Some(results)
        }
        _ => None,
    };

    // Last, since each restart gives the gateway a new pid: the memory figures above are the
    // first process's.
    if let Some(gateway) = gateway.as_mut() {
        progress(run_started, &format!("cold starts ({})", plan.cold_starts));
        memory.cold_starts = gateway.cold_starts(plan.cold_starts)?;
    }
    if let (Some(binary), true) = (&options.static_gateway_binary, gateway.is_some()) {
        progress(run_started, &format!("idle memory of {}", binary.display()));
        let static_gateway = Gateway::start(binary, pin_to_cpu, &[])?;
        memory.static_at_start = idle_resident(static_gateway.pid());
        let groups: Vec<GroupSpec> = GROUPS.into_iter().chain(TLS_GROUPS).chain(lane_groups()).collect();
        configure(static_gateway.address(), mock.address(), tls_mock.as_ref().map(MockUpstream::address), &groups)
            .map_err(|error| format!("configuring {} failed: {error}", binary.display()))?;
        memory.static_idle_configured = idle_resident(static_gateway.pid());
    }
    progress(run_started, "done");
    let gateway_log_lines = gateway.as_ref().map_or(0, |gateway| {
        let log = gateway.log_tail();
        if !log.trim().is_empty() {
            eprintln!("gateway log (tail):\n{log}");
        }
        log.lines().count()
    });
    drop(gateway);
    Ok(RunResults {
        info: run_info(&plan, pinning),
        direct: direct_results,
        gateway: gateway_results,
        forwarder: forwarder_results,
        memory,
        gateway_log_lines,
        held_target: if through_gateway.is_some() {
            "gateway"
        } else {
            "direct"
        },
        conversion,
        wake_floor,
    })
}

/// Stops the run when the gateway has exited during `phase`, rather than measuring errors
/// against a dead process. The gateway exits 0 only after SIGINT or SIGTERM, so that status
/// means something on the machine signalled it.
fn ensure_gateway_running(gateway: &mut Option<Gateway>, phase: &str) -> Result<(), String> {
    let Some(gateway) = gateway.as_mut() else {
        return Ok(());
    };
    match gateway.exit_status() {
        None => Ok(()),
        Some(status) => Err(format!(
            "the gateway exited during the {phase} phase ({status}; it exits 0 only on SIGINT or SIGTERM)\ngateway log:\n{}",
            gateway.log_tail()
        )),
    }
}

fn warm_up(
    client: &mut SequentialClient,
    target: &Target,
    count: usize,
    deadline: Instant,
    arm: &str,
) -> Result<(), String> {
    let mut errors = ErrorTally::default();
    let samples = sequential_requests(client, &target.whole_request, count, deadline, &mut errors);
    if samples.is_empty() {
        return Err(format!(
            "every {arm} warm-up request failed; first error: {}",
            errors.first.unwrap_or_default()
        ));
    }
    Ok(())
}

/// What runs between the client and the mock in a load round, whose CPU time is read.
#[derive(Clone, Copy)]
enum Proxy {
    /// The direct arm.
    None,
    /// The gateway's process.
    Process(u32),
    /// A thread of the bench itself (the zero-work forwarder's).
    BenchThread(u32),
}

impl Proxy {
    fn cpu_micros(self) -> Option<u64> {
        match self {
            Proxy::None => None,
            Proxy::Process(pid) => cpu_micros(pid),
            Proxy::BenchThread(thread_id) => own_thread_cpu_micros(thread_id),
        }
    }
}

/// One closed loop at c=64 against `target`, with the CPU of the proxy in between and of the
/// bench over it.
fn load_round(
    mock: &MockUpstream,
    target: &Target,
    proxy: Proxy,
    plan: &Plan,
    results: &mut ArmResults,
) {
    let bench_pid = std::process::id();
    let accepted_before = mock.accepted_connections();
    let proxy_cpu_before = proxy.cpu_micros();
    let rig_cpu_before = cpu_micros(bench_pid).unwrap_or(0);
    let outcome = closed_loop(
        target.address,
        Arc::clone(&target.whole_request),
        LoadKind::Whole,
        LOAD_CONCURRENCY,
        plan.load_duration,
    );
    let rig_cpu_after = cpu_micros(bench_pid).unwrap_or(0);
    let proxy_cpu_after = proxy.cpu_micros();
    if let (Some(before), Some(after)) = (proxy_cpu_before, proxy_cpu_after) {
        *results.proxy_cpu_micros.get_or_insert(0) += after.saturating_sub(before);
    }
    results.rig_cpu_micros += rig_cpu_after.saturating_sub(rig_cpu_before);
    results.upstream_connections += mock.accepted_connections() - accepted_before;
    results.load.completed += outcome.completed;
    results.load.elapsed += outcome.elapsed;
    results.load.latencies.extend(outcome.latencies);
    results.load.errors.absorb(outcome.errors);
}

/// One arm of a side-by-side c=1 phase: its client, its requests and where its samples go.
type TurnArm<'a> = (&'a mut SequentialClient, &'a Target, &'a mut ArmResults);

/// The arms a c=1 phase measures side by side, in the order they take turns: direct first, then
/// each of `others` (the gateway, the zero-work forwarder) that is measured in this run.
fn turn_arms<'a>(
    direct: TurnArm<'a>,
    others: [(Option<&'a mut SequentialClient>, Option<&'a Target>, Option<&'a mut ArmResults>); 2],
) -> Vec<TurnArm<'a>> {
    let mut arms = vec![direct];
    for (client, target, results) in others {
        if let (Some(client), Some(target), Some(results)) = (client, target, results) {
            arms.push((client, target, results));
        }
    }
    arms
}

/// Runs `total` requests or streams per arm in turns of at most `per_turn`, every arm taking
/// each turn in order, so drift on a shared machine hits them alike; `turn` runs one arm's turn.
fn in_turns(
    arms: &mut [TurnArm],
    total: usize,
    per_turn: usize,
    mut turn: impl FnMut(&mut SequentialClient, &Target, usize, &mut ArmResults),
) {
    let mut done = 0;
    while done < total {
        let count = per_turn.min(total - done);
        for (client, target, results) in arms.iter_mut() {
            turn(client, target, count, results);
        }
        done += count;
    }
}

/// One arm's turn of whole requests at c=1 with a pause before each.
fn spaced_turn(client: &mut SequentialClient, target: &Target, count: usize, deadline: Instant, results: &mut ArmResults) {
    let samples =
        spaced_requests(client, &target.whole_request, count, SPACED_REQUEST_PAUSE, deadline, &mut results.latency_errors);
    results.spaced_latency.extend(samples);
}

/// One arm's round of sequential whole requests at c=1.
fn latency_round(
    mock: &MockUpstream,
    client: &mut SequentialClient,
    target: &Target,
    plan: &Plan,
    deadline: Instant,
    results: &mut ArmResults,
) {
    let accepted_before = mock.accepted_connections();
    let samples = sequential_requests(
        client,
        &target.whole_request,
        plan.requests_per_round,
        deadline,
        &mut results.latency_errors,
    );
    results.latency_rounds.push(samples);
    results.upstream_connections += mock.accepted_connections() - accepted_before;
}

fn stream_round(
    mock: &MockUpstream,
    client: &mut SequentialClient,
    target: &Target,
    plan: &Plan,
    deadline: Instant,
    results: &mut ArmResults,
) {
    let accepted_before = mock.accepted_connections();
    let samples = timed_streams(
        client,
        &target.paced_stream_request,
        PACED_STREAM_DELTAS,
        plan.streams_per_round,
        deadline,
        "streams",
        &mut results.stream_errors,
    );
    results.streams.extend(samples);
    results.upstream_connections += mock.accepted_connections() - accepted_before;
}

/// Runs `count` short paced streams one after another, for their time to first event.
fn first_event_turn(
    client: &mut SequentialClient,
    target: &Target,
    count: usize,
    deadline: Instant,
    results: &mut ArmResults,
) {
    let samples = timed_streams(
        client,
        &target.first_event_stream_request,
        FIRST_EVENT_STREAM_DELTAS,
        count,
        deadline,
        "first-event streams",
        &mut results.stream_errors,
    );
    results.first_event_streams.extend(samples);
}

/// Runs `count` streams of `request` one after another (deltas `PACED_STREAM_PACE` apart) and
/// returns their timings, stopping at `deadline`; `what` names them in the error that says so.
fn timed_streams(
    client: &mut SequentialClient,
    request: &[u8],
    delta_count: u32,
    count: usize,
    deadline: Instant,
    what: &str,
    errors: &mut ErrorTally,
) -> Vec<StreamSample> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        if Instant::now() >= deadline {
            errors.record(format!("phase deadline reached before all {what} were run"));
            break;
        }
        match client.timed_stream(request, delta_count, PACED_STREAM_PACE) {
            Ok(sample) => samples.push(sample),
            Err(message) => errors.record(message),
        }
    }
    samples
}

/// Opens `plan.held_streams` of `target`'s long streams, samples the gateway's RSS while they
/// are open, closes them and checks that the upstream streams behind them end too.
fn hold_streams(mock: &MockUpstream, target: &Target, plan: &Plan, gateway_pid: Option<u32>) -> HeldStreams {
    let mut memory = HeldStreams::default();
    let gateway_rss = || gateway_pid.and_then(resident);
    memory.before_holding = gateway_rss();
    // The peak while the streams open: each request in flight holds its deep stack and buffers,
    // and the first 256 streams keep that stack for half a second (the gateway releases later
    // ones at their first event), so RSS passes its settled level.
    let peak_was_reset = gateway_pid.is_some_and(reset_peak_resident);
    let upstream_before = mock.open_streams();
    let held = open_held_streams(
        target.address,
        Arc::clone(&target.long_stream_request),
        plan.held_streams,
        STREAM_OPENER_THREADS,
        Instant::now() + HELD_STREAMS_OPEN_LIMIT,
    );
    memory.held_open = held.connections.len();
    memory.held_errors = held.errors;
    memory.held_open_time = held.open_time;
    std::thread::sleep(held_stream_pace(plan.held_streams).settle);
    memory.holding_streams = gateway_rss();
    memory.peak_while_opening_kib = gateway_pid.filter(|_| peak_was_reset).and_then(peak_resident_kib);
    memory.upstream_open_while_held = mock.open_streams().saturating_sub(upstream_before);
    let mut connections = held.connections;
    for connection in &mut connections {
        if let Some(last_bytes) = connection.closed_by_server() {
            memory.held_closed_by_server.record(format!(
                "last bytes before the close: {:?}",
                String::from_utf8_lossy(&last_bytes)
            ));
        }
    }

    drop(connections);
    let closed_at = Instant::now();
    while mock.open_streams() > upstream_before && closed_at.elapsed() < UPSTREAM_CLOSE_WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    memory.upstream_close_wait = closed_at.elapsed();
    memory.upstream_open_after_close = mock.open_streams().saturating_sub(upstream_before);
    memory.after_close = gateway_rss();
    memory
}

/// The gateway's resident memory after `IDLE_QUIET` without a request from this bench.
fn idle_resident(pid: u32) -> Option<Resident> {
    std::thread::sleep(IDLE_QUIET);
    resident(pid)
}

/// Pins the gateway to CPU 1 when BENCH_TASKSET=1 and taskset and a second CPU exist.
fn gateway_pinning() -> (Option<u32>, String) {
    if std::env::var("BENCH_TASKSET").as_deref() != Ok("1") {
        return (None, "off".to_string());
    }
    let has_taskset = std::process::Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_taskset || online_cpus() < 2 {
        return (
            None,
            "requested but unavailable (needs taskset and 2 CPUs)".to_string(),
        );
    }
    let bench_cpus = proc_status_field("Cpus_allowed_list").unwrap_or_else(|| "?".to_string());
    (
        Some(1),
        format!("gateway on CPU 1, bench on CPU {bench_cpus}"),
    )
}

/// CPUs online on the machine; unlike `available_parallelism` this ignores the bench's own
/// affinity, which `scripts/bench` may have narrowed to CPU 0.
fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let count = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(count).unwrap_or(1)
}

fn proc_status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(name))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn run_info(plan: &Plan, pinning: String) -> RunInfo {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "?".to_string());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cpus = online_cpus();
    RunInfo {
        mode: plan.mode,
        commit: std::env::var("BENCH_COMMIT").unwrap_or_else(|_| "unknown".to_string()),
        rustc: std::env::var("BENCH_RUSTC").unwrap_or_else(|_| "rustc ?".to_string()),
        kernel,
        cpu: format!("{cpu_model} × {cpus}"),
        pinning,
        latency_rounds: plan.latency_rounds,
        requests_per_round: plan.requests_per_round,
        spaced_pause: SPACED_REQUEST_PAUSE,
        concurrency: LOAD_CONCURRENCY,
        load_rounds: plan.load_rounds,
        load_duration: plan.load_duration,
        stream_model: PACED_STREAM_MODEL,
        stream_pace: PACED_STREAM_PACE,
        streams_per_arm: plan.stream_rounds * plan.streams_per_round,
        first_event_stream_model: FIRST_EVENT_STREAM_MODEL,
        first_event_streams_per_arm: plan.first_event_streams,
        held_stream_model: held_stream_model(plan.held_streams),
        held_stream_count: plan.held_streams,
    }
}

/// Rounds of `--compare` and `--stats-off`: 30 (about three and a half minutes), or
/// `BENCH_ROUNDS`. On a shared machine one round's ratio swings by ten points either way (seen
/// here: 0.91 to 1.23 within one `--stats-off` run), so the median of ten rounds often landed a few
/// points away from that of thirty.
fn compare_rounds() -> usize {
    std::env::var("BENCH_ROUNDS").ok().and_then(|rounds| rounds.parse().ok()).filter(|rounds| (1..=200).contains(rounds)).unwrap_or(30)
}

/// The upstream model of the held streams: paced at 100 ms up to 1,000 streams, a second above.
/// The gateway groups a target through the gateway asks for, with `long_stream` as the group of
/// its held streams (plain or over TLS).
fn gateway_models(long_stream: &str) -> TargetModels<'_> {
    TargetModels {
        whole: GROUPS[0].group_name,
        paced_stream: GROUPS[1].group_name,
        first_event_stream: GROUPS[4].group_name,
        long_stream,
    }
}

fn held_stream_model(held_streams: usize) -> &'static str {
    held_stream_pace(held_streams).group.upstream_model
}

/// The gateway group that serves `held_stream_model`.
fn held_stream_group(held_streams: usize) -> &'static str {
    held_stream_pace(held_streams).group.group_name
}

/// How a held-streams phase of this size is paced: the group its streams use and how long they
/// settle before the RSS sample.
struct HeldStreamPace {
    group: &'static GroupSpec,
    /// The same streams from the TLS mock.
    tls_group: &'static GroupSpec,
    settle: Duration,
}

fn held_stream_pace(held_streams: usize) -> HeldStreamPace {
    if held_streams > HELD_STREAMS_AT_FULL_PACE {
        HeldStreamPace { group: &GROUPS[3], tls_group: &TLS_GROUPS[1], settle: SLOW_HELD_STREAMS_SETTLE }
    } else {
        HeldStreamPace { group: &GROUPS[2], tls_group: &TLS_GROUPS[0], settle: HELD_STREAMS_SETTLE }
    }
}
