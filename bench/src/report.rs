//! The results of a run and their Markdown rendering (absolute numbers and gateway/direct ratios).

use std::fmt::Write as _;
use std::time::Duration;

use crate::conversion::{
    CONVERSION_CONCURRENCY, CPU_TAIL, ConversionResults, LaneResults, paired_cpu_ratio,
    pooled_cpu_per_unit,
};
use crate::lanes::{LANE_STREAM_DELTAS, LANE_STREAM_MODEL};
use crate::large_bodies::{LargeBodies, IDLE_BEFORE_READING, LARGE_BODY_BYTES, LARGE_BODY_CLIENTS, REQUESTS_PER_CLIENT};
use crate::measure::{ErrorTally, LoadOutcome, StreamSample};
use crate::proc_stats::Resident;
use crate::samples::{median_of_round_medians, percentile, pooled};
use crate::wake_floor::{WakeFloor, added_latency_floor};

/// A gap this much longer than scheduled is flagged as a stall. Linux's minimum delayed-ACK
/// timer is 40 ms, so a Nagle stall shows as a gap about 40 ms over the pace; the margin below
/// 40 ms keeps such a stall from hiding behind timer rounding.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(30);
/// A gateway throughput within this fraction of the direct figure means the rig (mock plus
/// client), not the gateway, was the bottleneck.
const MOCK_BOUND_FRACTION: f64 = 0.9;

/// What the run was and where it ran.
pub struct RunInfo {
    pub mode: &'static str,
    pub commit: String,
    pub rustc: String,
    pub kernel: String,
    pub cpu: String,
    pub pinning: String,
    pub latency_rounds: usize,
    pub requests_per_round: usize,
    /// The pause before each spaced c=1 request.
    pub spaced_pause: Duration,
    pub concurrency: usize,
    pub load_rounds: usize,
    pub load_duration: Duration,
    pub stream_model: &'static str,
    pub stream_pace: Duration,
    pub streams_per_arm: usize,
    pub first_event_stream_model: &'static str,
    pub first_event_streams_per_arm: usize,
    pub held_stream_model: &'static str,
    pub held_stream_count: usize,
}

/// Everything measured on one side of the comparison.
#[derive(Default)]
pub struct ArmResults {
    pub latency_rounds: Vec<Vec<u64>>,
    /// Whole requests at c=1 sent with a pause before each (errors in `latency_errors`).
    pub spaced_latency: Vec<u64>,
    pub latency_errors: ErrorTally,
    /// All load rounds added together.
    pub load: LoadOutcome,
    /// CPU the proxy on the gateway's CPU used during this arm's load rounds: the gateway
    /// process, or the zero-work forwarder's thread. None for the direct arm.
    pub proxy_cpu_micros: Option<u64>,
    /// CPU the bench process (client and mock) used during this arm's load rounds; for the
    /// forwarder arm that includes the forwarder, which runs in the bench process.
    pub rig_cpu_micros: u64,
    pub streams: Vec<StreamSample>,
    /// The short streams run for the time to first event only.
    pub first_event_streams: Vec<StreamSample>,
    pub stream_errors: ErrorTally,
    /// Connections the mock accepted during this arm's timed phases: the client's own on the
    /// direct arm, the gateway's upstream connections on the gateway arm (reuse check).
    pub upstream_connections: usize,
}

/// Resident memory of the gateway (KiB) at the points of the run, and the held-streams phase.
#[derive(Default)]
pub struct MemoryResults {
    pub at_start: Option<Resident>,
    pub idle_configured: Option<Resident>,
    /// The static (musl) build's, started on its own with the same configuration.
    pub static_at_start: Option<Resident>,
    pub static_idle_configured: Option<Resident>,
    pub after_warmup: Option<Resident>,
    pub after_load: Option<Resident>,
    /// Restarts on the run's database, each from spawn to the first `GET /healthz` 200.
    pub cold_starts: Vec<Duration>,
    /// Streams held through the gateway to the plain-HTTP mock (or to the mock directly).
    pub held: HeldStreams,
    /// The same number held through the gateway to the TLS mock: what a TLS session adds.
    pub held_over_tls: Option<HeldStreams>,
    /// Keep-alive clients sending 150 KiB requests at once, then idle; None in a direct-only run.
    pub large_bodies: Option<LargeBodies>,
}

/// One held-streams phase: the gateway's memory around it and how the streams fared.
#[derive(Default)]
pub struct HeldStreams {
    /// Just before the streams are opened.
    pub before_holding: Option<Resident>,
    pub holding_streams: Option<Resident>,
    /// The highest VmRSS (KiB) from just before the held streams opened until they settled.
    pub peak_while_opening_kib: Option<u64>,
    pub after_close: Option<Resident>,
    pub held_open: usize,
    pub held_errors: ErrorTally,
    pub held_open_time: Duration,
    /// Streams the mock was writing while they were held, and a few seconds after the clients
    /// closed them (anything left means the gateway did not propagate the close upstream).
    pub upstream_open_while_held: usize,
    pub upstream_open_after_close: usize,
    pub upstream_close_wait: Duration,
    /// Held streams the server had already closed when the bench was about to close them.
    pub held_closed_by_server: ErrorTally,
}

pub struct RunResults {
    pub info: RunInfo,
    pub direct: ArmResults,
    /// None when the run was direct-only.
    pub gateway: Option<ArmResults>,
    /// The zero-work TCP forwarder on the gateway's CPU (`forwarder.rs`): its latency, c=64 load
    /// and first-event arms only. None when the run was direct-only.
    pub forwarder: Option<ArmResults>,
    pub memory: MemoryResults,
    /// Lines in the tail of the gateway's log (warn level and above); printed to stderr.
    pub gateway_log_lines: usize,
    /// Where the held streams went: "gateway" or, in a direct-only run, "direct".
    pub held_target: &'static str,
    /// The conversion lanes; None when the run was direct-only.
    pub conversion: Option<ConversionResults>,
    /// The machine's cross-CPU round trip without a gateway; None when it could not be measured.
    pub wake_floor: Option<WakeFloor>,
}

/// Renders the whole report as Markdown.
pub fn render(results: &RunResults) -> String {
    let mut out = String::new();
    let info = &results.info;
    let _ = writeln!(out, "## octopus benchmark ({} run)\n", info.mode);
    let _ = writeln!(
        out,
        "commit `{}` · {} · Linux {} · {} · pinning: {}\n",
        info.commit, info.rustc, info.kernel, info.cpu, info.pinning
    );
    if results.gateway.is_none() {
        let _ = writeln!(
            out,
            "**Direct-only run**: no gateway was measured; the gateway columns are empty.\n"
        );
    }
    render_main_table(&mut out, results);
    render_memory_table(&mut out, results);
    render_notes(&mut out, results);
    if let Some(conversion) = &results.conversion {
        render_conversion(&mut out, conversion);
    }
    out
}

fn render_main_table(out: &mut String, results: &RunResults) {
    let info = &results.info;
    let direct = &results.direct;
    let gateway = results.gateway.as_ref();
    let _ = writeln!(
        out,
        "| Metric | Direct | Gateway | Added | Gateway / direct |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|");

    let pooled_direct = pooled(&direct.latency_rounds);
    let pooled_gateway = gateway.map(|arm| pooled(&arm.latency_rounds));
    let samples_per_arm = pooled_direct.len();
    latency_row(
        out,
        &format!(
            "Latency p50, c=1 (median of {} round medians)",
            info.latency_rounds
        ),
        median_of_round_medians(&direct.latency_rounds),
        gateway.map(|arm| median_of_round_medians(&arm.latency_rounds)),
    );
    latency_row(
        out,
        &format!(
            "Latency p99, c=1 (all {} samples per arm)",
            group_thousands(samples_per_arm as u64)
        ),
        percentile(&mut pooled_direct.clone(), 0.99),
        pooled_gateway.map(|mut samples| percentile(&mut samples, 0.99)),
    );
    if let Some(floor) = &results.wake_floor {
        floor_row(
            out,
            &format!(
                "Floor under the added latency, c=1: two cross-CPU round trips{}, no gateway, p50 / p99 ({} back to back)",
                floor.echo_cpu.map_or(String::new(), |cpu| format!(" to CPU {cpu}")),
                group_thousands(floor.back_to_back.len() as u64)
            ),
            &floor.back_to_back,
        );
        floor_row(
            out,
            &format!(
                "… the same with {} ms before each round trip, as between stream events ({} round trips)",
                floor.spacing.as_millis(),
                floor.spaced.len()
            ),
            &floor.spaced,
        );
    }
    if let Some(forwarder) = &results.forwarder {
        added_pair_row(
            out,
            "… through a zero-work TCP forwarder on the gateway's CPU instead (one epoll thread copying bytes, no parsing), p50 / p99",
            median_of_round_medians(&forwarder.latency_rounds) as i64 - median_of_round_medians(&direct.latency_rounds) as i64,
            percentile(&mut pooled(&forwarder.latency_rounds), 0.99) as i64
                - percentile(&mut pooled_direct.clone(), 0.99) as i64,
        );
    }
    let spaced_label = format!(
        "Latency, c=1 with {} ms before each request ({} per arm)",
        info.spaced_pause.as_millis(),
        direct.spaced_latency.len()
    );
    for (name, fraction) in [("p50", 0.5), ("p99", 0.99)] {
        latency_row(
            out,
            &format!("{spaced_label}, {name}"),
            percentile(&mut direct.spaced_latency.clone(), fraction),
            gateway.map(|arm| percentile(&mut arm.spaced_latency.clone(), fraction)),
        );
    }
    if let Some(forwarder) = &results.forwarder {
        let added_at = |fraction: f64| {
            percentile(&mut forwarder.spaced_latency.clone(), fraction) as i64
                - percentile(&mut direct.spaced_latency.clone(), fraction) as i64
        };
        added_pair_row(out, "… through the zero-work forwarder instead, p50 / p99", added_at(0.5), added_at(0.99));
    }
    count_row(
        out,
        "Errors, c=1",
        direct.latency_errors.count,
        gateway.map(|arm| arm.latency_errors.count),
    );

    let load_label = format!(
        "Throughput, c={} closed loop ({} × {:.1} s per arm)",
        info.concurrency,
        info.load_rounds,
        info.load_duration.as_secs_f64()
    );
    let direct_rps = requests_per_second(&direct.load);
    let gateway_rps = gateway.map(|arm| requests_per_second(&arm.load));
    let _ = writeln!(
        out,
        "| {load_label} | {} req/s | {} | | {} |",
        group_thousands(direct_rps as u64),
        gateway_rps.map_or("—".to_string(), |rps| format!(
            "{} req/s",
            group_thousands(rps as u64)
        )),
        gateway_rps.map_or(String::new(), |rps| ratio(rps, direct_rps)),
    );
    latency_row(
        out,
        &format!("Latency p50, c={}", info.concurrency),
        percentile(&mut direct.load.latencies.clone(), 0.5),
        gateway.map(|arm| percentile(&mut arm.load.latencies.clone(), 0.5)),
    );
    latency_row(
        out,
        &format!("Latency p99, c={}", info.concurrency),
        percentile(&mut direct.load.latencies.clone(), 0.99),
        gateway.map(|arm| percentile(&mut arm.load.latencies.clone(), 0.99)),
    );
    count_row(
        out,
        &format!("Errors, c={}", info.concurrency),
        direct.load.errors.count,
        gateway.map(|arm| arm.load.errors.count),
    );
    let gateway_cpu = gateway.and_then(|arm| cpu_per_request(arm.proxy_cpu_micros?, &arm.load));
    let _ = writeln!(
        out,
        "| CPU per request, c={}: gateway process | — | {} | | |",
        info.concurrency,
        gateway_cpu.map_or("—".to_string(), cpu_cell),
    );
    if let Some(forwarder) = results.forwarder.as_ref().filter(|arm| arm.load.completed > 0) {
        let forwarder_cpu = forwarder.proxy_cpu_micros.and_then(|micros| cpu_per_request(micros, &forwarder.load));
        let _ = writeln!(
            out,
            "| … the zero-work forwarder's thread instead (one epoll thread on the gateway's CPU copying bytes: what the kernel takes from any proxy) | — | {} | | |",
            forwarder_cpu.map_or("—".to_string(), cpu_cell),
        );
        let forwarder_rps = requests_per_second(&forwarder.load);
        let _ = writeln!(
            out,
            "| Throughput, c={} through the zero-work forwarder | | {} req/s | | {} |",
            info.concurrency,
            group_thousands(forwarder_rps as u64),
            ratio(forwarder_rps, direct_rps),
        );
    }
    let direct_rig_cpu = cpu_per_request(direct.rig_cpu_micros, &direct.load);
    let gateway_rig_cpu = gateway.and_then(|arm| cpu_per_request(arm.rig_cpu_micros, &arm.load));
    let _ = writeln!(
        out,
        "| CPU per request, c={}: bench rig (client + mock) | {} | {} | | |",
        info.concurrency,
        direct_rig_cpu.map_or("—".to_string(), cpu_cell),
        gateway_rig_cpu.map_or("—".to_string(), cpu_cell),
    );

    // Every stream's first event counts: the long paced ones and the short ones run for this.
    let stream_label = format!(
        "c=1, {} streams per arm: {} {}, {} {}",
        info.streams_per_arm + info.first_event_streams_per_arm,
        info.streams_per_arm,
        info.stream_model,
        info.first_event_streams_per_arm,
        info.first_event_stream_model,
    );
    let first_events = |arm: &ArmResults| -> Vec<u64> {
        arm.streams
            .iter()
            .chain(&arm.first_event_streams)
            .map(|sample| sample.first_event_nanos)
            .collect()
    };
    latency_row(
        out,
        &format!("Time to first event p50, {stream_label}"),
        percentile(&mut first_events(direct), 0.5),
        gateway.map(|arm| percentile(&mut first_events(arm), 0.5)),
    );
    latency_row(
        out,
        &format!("Time to first event p99, {stream_label}"),
        percentile(&mut first_events(direct), 0.99),
        gateway.map(|arm| percentile(&mut first_events(arm), 0.99)),
    );
    if let Some(forwarder) = &results.forwarder {
        // The forwarder runs only the short streams, so it is set against those alone.
        let short_first_events = |arm: &ArmResults| -> Vec<u64> {
            arm.first_event_streams.iter().map(|sample| sample.first_event_nanos).collect()
        };
        let added_at = |arm: &ArmResults, fraction: f64| {
            percentile(&mut short_first_events(arm), fraction) as i64
                - percentile(&mut short_first_events(direct), fraction) as i64
        };
        if let Some(gateway) = gateway {
            added_pair_row(
                out,
                &format!(
                    "… the {} {} streams alone, p50 / p99",
                    info.first_event_streams_per_arm, info.first_event_stream_model
                ),
                added_at(gateway, 0.5),
                added_at(gateway, 0.99),
            );
        }
        added_pair_row(
            out,
            "… the same streams through the zero-work forwarder instead, p50 / p99",
            added_at(forwarder, 0.5),
            added_at(forwarder, 0.99),
        );
    }
    let max_gap = |arm: &ArmResults| {
        arm.streams
            .iter()
            .map(|s| s.max_gap_nanos)
            .max()
            .unwrap_or(0)
    };
    let max_lateness = |arm: &ArmResults| {
        arm.streams
            .iter()
            .map(|s| s.max_lateness_nanos)
            .max()
            .unwrap_or(0)
    };
    let _ = writeln!(
        out,
        "| Max inter-event gap (pace {} ms) | {} | {} | | |",
        info.stream_pace.as_millis(),
        format_millis(max_gap(direct) as i64),
        gateway.map_or("—".to_string(), |arm| format_millis(max_gap(arm) as i64)),
    );
    let stall_flag = |lateness: i64| {
        if lateness > STALL_THRESHOLD.as_nanos() as i64 {
            " **STALL**"
        } else {
            ""
        }
    };
    let _ = writeln!(
        out,
        "| Max gap over schedule (stall if > {} ms) | {}{} | {} | | |",
        STALL_THRESHOLD.as_millis(),
        format_millis(max_lateness(direct)),
        stall_flag(max_lateness(direct)),
        gateway.map_or("—".to_string(), |arm| format!(
            "{}{}",
            format_millis(max_lateness(arm)),
            stall_flag(max_lateness(arm))
        )),
    );
    let events = |arm: &ArmResults| {
        let all_streams = || arm.streams.iter().chain(&arm.first_event_streams);
        let received: usize = all_streams().map(|s| s.events).sum();
        let expected: usize = all_streams().map(|s| s.expected_events).sum();
        format!(
            "{} / {}",
            group_thousands(received as u64),
            group_thousands(expected as u64)
        )
    };
    let _ = writeln!(
        out,
        "| Events received / expected | {} | {} | | |",
        events(direct),
        gateway.map_or("—".to_string(), events),
    );
    count_row(
        out,
        "Errors, streams",
        direct.stream_errors.count,
        gateway.map(|arm| arm.stream_errors.count),
    );
    if let Some(forwarder) = &results.forwarder {
        let _ = writeln!(
            out,
            "| Errors through the zero-work forwarder: c=1 {}, c={} {}, streams {} | | | | |",
            forwarder.latency_errors.count, info.concurrency, forwarder.load.errors.count, forwarder.stream_errors.count
        );
    }
    count_row(
        out,
        "Connections the mock accepted (all timed phases)",
        direct.upstream_connections as u64,
        gateway.map(|arm| arm.upstream_connections as u64),
    );
    let _ = writeln!(out);
}

fn render_memory_table(out: &mut String, results: &RunResults) {
    let memory = &results.memory;
    let quiet = crate::IDLE_QUIET.as_secs();
    let info = &results.info;
    if results.gateway.is_some() {
        let _ = writeln!(out, "| Gateway memory | VmRSS | of which anonymous (RssAnon) |");
        let _ = writeln!(out, "|---|--:|--:|");
        let rows = [
            (&*format!("At start, idle ({quiet} s after the first `/healthz` 200)"), memory.at_start),
            (
                &*format!("Idle, configured ({quiet} s after the last admin call), before the first relayed request"),
                memory.idle_configured,
            ),
            ("After warm-up", memory.after_warmup),
            ("After the c=64 load", memory.after_load),
        ];
        // The static build's rows appear only when the run measured one.
        let static_rows = [
            (&*format!("Static musl build: at start, idle ({quiet} s after the first `/healthz` 200)"), memory.static_at_start),
            (&*format!("Static musl build: idle, configured ({quiet} s after the last admin call)"), memory.static_idle_configured),
        ];
        for (label, kib) in rows {
            resident_row(out, label, kib);
        }
        let held = &memory.held;
        render_held_rows(out, held, "After the streams, before holding streams", &format!("Holding {} streams (`{}`)", group_thousands(held.held_open as u64), info.held_stream_model));
        if let Some(over_tls) = &memory.held_over_tls {
            render_held_rows(
                out,
                over_tls,
                "Before holding streams over TLS",
                &format!("Holding {} streams over TLS (the same, from an https channel to the TLS mock)", group_thousands(over_tls.held_open as u64)),
            );
        }
        if let Some(large) = &memory.large_bodies {
            render_large_body_rows(out, large);
        }
        for (label, kib) in static_rows.into_iter().filter(|(_, kib)| kib.is_some()) {
            resident_row(out, label, kib);
        }
        per_stream_row(out, "**Per open stream** ((holding − after warm-up)", held, memory.after_warmup);
        per_stream_row(out, "Per open stream, marginal ((holding − just before)", held, held.before_holding);
        if let Some(over_tls) = &memory.held_over_tls {
            per_stream_row(out, "**Per open stream over TLS**, marginal ((holding − just before)", over_tls, over_tls.before_holding);
        }
        if let Some(large) = &memory.large_bodies {
            per_idle_connection_row(out, large);
        }
        let _ = writeln!(out);
        if !memory.cold_starts.is_empty() {
            let mut times: Vec<f64> = memory.cold_starts.iter().map(|time| time.as_secs_f64() * 1000.0).collect();
            times.sort_by(f64::total_cmp);
            let _ = writeln!(
                out,
                "**Cold start to first 200** (restarted {} times on the run's database, spawn to `GET /healthz`): \
                 median {:.1} ms, fastest {:.1} ms, slowest {:.1} ms.",
                times.len(),
                times[times.len() / 2],
                times[0],
                times[times.len() - 1]
            );
            let _ = writeln!(out);
        }
    }
}

/// A memory row: VmRSS and RssAnon.
fn resident_row(out: &mut String, label: &str, kib: Option<Resident>) {
    let _ = writeln!(
        out,
        "| {label} | {} | {} |",
        kib.map_or("—".to_string(), |resident| format_kib(resident.total_kib)),
        kib.map_or("—".to_string(), |resident| format_kib(resident.anonymous_kib))
    );
}

/// The rows of one held-streams phase: before, holding, the peak while opening, after closing.
fn render_held_rows(out: &mut String, held: &HeldStreams, before_label: &str, holding_label: &str) {
    resident_row(out, before_label, held.before_holding);
    resident_row(out, holding_label, held.holding_streams);
    if let Some(peak_kib) = held.peak_while_opening_kib {
        let _ = writeln!(
            out,
            "| … peak while they opened and settled (VmHWM, reset just before they opened) | {} | — |",
            format_kib(peak_kib)
        );
    }
    resident_row(out, "After closing them", held.after_close);
}

/// The rows of the large-body phase: before, the peak against the bytes in flight, the clients'
/// connections idle, after they closed.
fn render_large_body_rows(out: &mut String, large: &LargeBodies) {
    let clients = LARGE_BODY_CLIENTS;
    let body_kib = LARGE_BODY_BYTES / 1024;
    resident_row(
        out,
        &format!("Before {clients} keep-alive clients send {body_kib} KiB requests, all at once, {REQUESTS_PER_CLIENT} rounds"),
        large.before,
    );
    if let (Some(peak_kib), Some(before)) = (large.peak_kib, large.before) {
        let in_flight_kib = LargeBodies::body_bytes_in_flight() / 1024;
        let _ = writeln!(
            out,
            "| … peak while they were answered (VmHWM, reset just before): {:.2}× the {} of request bodies in flight above the level before | {} | — |",
            peak_kib.saturating_sub(before.total_kib) as f64 / in_flight_kib as f64,
            format_kib(in_flight_kib),
            format_kib(peak_kib)
        );
    }
    resident_row(
        out,
        &format!("Their {} connections open and idle for {} s", large.idle_connections, IDLE_BEFORE_READING.as_secs()),
        large.idle_connections_open,
    );
    resident_row(out, "After closing them", large.after_close);
}

/// Memory per idle keep-alive connection after a large request: (idle and open − closed) / count.
fn per_idle_connection_row(out: &mut String, large: &LargeBodies) {
    let label = format!("**Per idle keep-alive connection** after a {} KiB request ((idle and open − after closing)", LARGE_BODY_BYTES / 1024);
    per_unit_row(out, &label, large.idle_connections_open, large.after_close, large.idle_connections);
}

/// Memory per held stream against `baseline`, when both samples exist and streams were held.
fn per_stream_row(out: &mut String, label: &str, held: &HeldStreams, baseline: Option<Resident>) {
    per_unit_row(out, label, held.holding_streams, baseline, held.held_open);
}

/// `(with − baseline) / count` for VmRSS and RssAnon, labelled `{label} / {count})`, when both
/// samples exist and the count is not zero.
fn per_unit_row(out: &mut String, label: &str, with: Option<Resident>, baseline: Option<Resident>, count: usize) {
    if let (Some(with), Some(baseline)) = (with, baseline)
        && count > 0
    {
        let per_unit = |with: u64, baseline: u64| (with as f64 - baseline as f64) / count as f64;
        let _ = writeln!(
            out,
            "| {label} / {}) | {:.1} KiB | {:.1} KiB |",
            group_thousands(count as u64),
            per_unit(with.total_kib, baseline.total_kib),
            per_unit(with.anonymous_kib, baseline.anonymous_kib)
        );
    }
}

/// How one held-streams phase went: streams opened, upstream streams, closes, first errors.
fn held_note(out: &mut String, name: &str, held: &HeldStreams, asked: usize) {
    let _ = writeln!(
        out,
        "- {name}: {} of {} open after {:.1} s; the mock was writing {} of them; \
         {} had been closed by the server before the bench closed them; \
         {} upstream streams still open {:.1} s after the clients closed.",
        group_thousands(held.held_open as u64),
        group_thousands(asked as u64),
        held.held_open_time.as_secs_f64(),
        held.upstream_open_while_held,
        held.held_closed_by_server.count,
        held.upstream_open_after_close,
        held.upstream_close_wait.as_secs_f64(),
    );
    if let Some(first) = &held.held_errors.first {
        let _ = writeln!(out, "- {name}: {} errors (first: {})", held.held_errors.count, one_line(first));
    }
    if let Some(first) = &held.held_closed_by_server.first {
        let _ = writeln!(out, "- {name}: first closed by the server: {}", one_line(first));
    }
}

fn render_notes(out: &mut String, results: &RunResults) {
    let memory = &results.memory;
    let info = &results.info;
    let _ = writeln!(out, "Notes:");
    held_note(out, &format!("Held streams ({})", results.held_target), &memory.held, info.held_stream_count);
    if let Some(over_tls) = &memory.held_over_tls {
        held_note(out, "Held streams over TLS (gateway)", over_tls, info.held_stream_count);
    }
    if let Some(large) = &memory.large_bodies {
        let _ = writeln!(
            out,
            "- Large bodies: {} of {} requests answered 200, {} errors{}.",
            large.answered,
            LargeBodies::requests_sent(),
            large.errors.count,
            large.errors.first.as_deref().map(|first| format!(" (first: {})", one_line(first))).unwrap_or_default()
        );
    }
    if let Some(gateway) = &results.gateway {
        let direct_rps = requests_per_second(&results.direct.load);
        let gateway_rps = requests_per_second(&gateway.load);
        if direct_rps > 0.0 && gateway_rps >= MOCK_BOUND_FRACTION * direct_rps {
            let _ = writeln!(
                out,
                "- Gateway throughput is within 10% of direct: mock-bound, the rig was the limit."
            );
        }
    }
    if results.gateway_log_lines > 0 {
        let _ = writeln!(
            out,
            "- The gateway logged {} lines at warn level or above (tail on stderr).",
            results.gateway_log_lines
        );
    }
    let arms = [
        ("direct", Some(&results.direct)),
        ("gateway", results.gateway.as_ref()),
    ];
    for (name, arm) in arms {
        let Some(arm) = arm else { continue };
        for (phase, tally) in [
            ("c=1", &arm.latency_errors),
            ("load", &arm.load.errors),
            ("streams", &arm.stream_errors),
        ] {
            if let Some(first) = &tally.first {
                let _ = writeln!(out, "- First {name} {phase} error: {}", one_line(first));
            }
        }
    }
    let _ = writeln!(
        out,
        "- c=1 latency: {} interleaved rounds (direct, gateway, direct, ...) of {} requests per arm after warm-up; added = gateway − direct.",
        info.latency_rounds, info.requests_per_round
    );
}

/// The conversion lanes: added latency against each lane's own direct baseline, gateway CPU
/// per request and per SSE event, each also as a ratio to the pass-through lane.
fn render_conversion(out: &mut String, conversion: &ConversionResults) {
    let plan = &conversion.plan;
    let _ = writeln!(out, "\n### Protocol conversion lanes\n");
    let _ = writeln!(
        out,
        "Every lane sends the same small chat (system prompt, user message, one tool) in the client's \
         protocol to the gateway; its direct baseline sends that chat straight to the mock in the \
         upstream's protocol. Added = gateway − direct at c=1 ({} interleaved rounds of {} requests per arm). \
         CPU = the gateway's utime + stime ÷ completed requests at c={CONVERSION_CONCURRENCY} \
         ({} rounds × {:.1} s per lane, lanes taking turns, each read {} ms after its loop). \
         \"vs pass-through\" is the median over rounds of the ratio within each round.\n",
        plan.latency_rounds,
        plan.requests_per_round,
        plan.cpu_rounds,
        plan.cpu_duration.as_secs_f64(),
        CPU_TAIL.as_millis(),
    );
    let _ = writeln!(
        out,
        "| Lane (client → channel) | Direct p50 | Gateway p50 | Added p50 | Added p99 | Added p50 vs pass-through | Gateway CPU per request | CPU vs pass-through | Gateway req/s, c={CONVERSION_CONCURRENCY} | Errors (direct / gateway) |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let added_p50 = |lane: &LaneResults| {
        median_of_round_medians(&lane.gateway_rounds) as i64
            - median_of_round_medians(&lane.direct_rounds) as i64
    };
    let pass_through = conversion
        .whole
        .iter()
        .find(|lane| lane.lane.is_pass_through());
    let pass_through_added = pass_through.map_or(0, added_p50);
    for lane in &conversion.whole {
        let direct_p99 = percentile(&mut pooled(&lane.direct_rounds), 0.99);
        let gateway_p99 = percentile(&mut pooled(&lane.gateway_rounds), 0.99);
        let added = added_p50(lane);
        let added_ratio = if pass_through_added > 0 {
            ratio(added as f64, pass_through_added as f64)
        } else {
            "—".to_string()
        };
        let cpu_ratio = pass_through
            .and_then(|base| paired_cpu_ratio(&lane.cpu_rounds, &base.cpu_rounds))
            .map_or("—".to_string(), |value| format!("{value:.2}×"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {added_ratio} | {} | {cpu_ratio} | {} | {} / {} |",
            lane.lane.label,
            format_duration(median_of_round_medians(&lane.direct_rounds)),
            format_duration(median_of_round_medians(&lane.gateway_rounds)),
            format_signed(added),
            format_signed(gateway_p99 as i64 - direct_p99 as i64),
            format_micros(pooled_cpu_per_unit(&lane.cpu_rounds), 1),
            group_thousands(requests_per_second(&lane.load) as u64),
            lane.direct_errors.count,
            lane.gateway_errors.count + lane.load.errors.count,
        );
    }

    let _ = writeln!(
        out,
        "\n| Streamed lane (client → channel), `{LANE_STREAM_MODEL}`, c={CONVERSION_CONCURRENCY}, {} × {:.1} s | Streams | SSE events per stream | Gateway CPU per stream | Gateway CPU per SSE event | CPU per event vs pass-through | Errors |",
        plan.cpu_rounds,
        plan.stream_cpu_duration.as_secs_f64(),
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|");
    let stream_pass_through = conversion
        .streams
        .iter()
        .find(|lane| lane.lane.is_pass_through());
    for lane in &conversion.streams {
        let streams = lane.load.completed;
        let events_per_stream = (streams > 0).then(|| lane.load.events as f64 / streams as f64);
        let cpu_micros: u64 = lane.cpu_rounds.iter().map(|round| round.cpu_micros).sum();
        let cpu_per_stream = (streams > 0).then(|| cpu_micros as f64 / streams as f64);
        let cpu_ratio = stream_pass_through
            .and_then(|base| paired_cpu_ratio(&lane.cpu_rounds, &base.cpu_rounds))
            .map_or("—".to_string(), |value| format!("{value:.2}×"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {cpu_ratio} | {} |",
            lane.lane.label,
            group_thousands(streams),
            events_per_stream.map_or("—".to_string(), |events| format!("{events:.1}")),
            format_micros(cpu_per_stream, 1),
            format_micros(pooled_cpu_per_unit(&lane.cpu_rounds), 2),
            lane.load.errors.count,
        );
    }
    let _ = writeln!(
        out,
        "\nNotes on the lanes:\n- The mock streams {LANE_STREAM_DELTAS} deltas with no pause; SSE events are counted as the client receives them (OpenAI chunks, or Anthropic events for the Anthropic client), so CPU per event compares lanes whose clients see a few events more or fewer."
    );
    let _ = writeln!(
        out,
        "- CPU counts only the gateway process (all its threads, including the stats writer), so a noisy neighbour slows it without adding to it; latency has no such shield. On a shared machine read the ratios, not the absolute figures."
    );
    for lane in &conversion.whole {
        for (arm, tally) in [
            ("direct", &lane.direct_errors),
            ("gateway c=1", &lane.gateway_errors),
            ("gateway load", &lane.load.errors),
        ] {
            if let Some(first) = &tally.first {
                let _ = writeln!(
                    out,
                    "- First {arm} error on lane {}: {}",
                    lane.lane.label,
                    one_line(first)
                );
            }
        }
    }
    for lane in &conversion.streams {
        if let Some(first) = &lane.load.errors.first {
            let _ = writeln!(
                out,
                "- First error on streamed lane {}: {}",
                lane.lane.label,
                one_line(first)
            );
        }
    }
}

/// Microseconds with `decimals` places, or a dash when there is no figure.
fn format_micros(micros: Option<f64>, decimals: usize) -> String {
    micros.map_or("—".to_string(), |micros| {
        format!("{micros:.decimals$} µs")
    })
}

fn latency_row(out: &mut String, label: &str, direct_nanos: u64, gateway_nanos: Option<u64>) {
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {} | {} |",
        format_duration(direct_nanos),
        gateway_nanos.map_or("—".to_string(), format_duration),
        gateway_nanos.map_or(String::new(), |gateway| format_signed(
            gateway as i64 - direct_nanos as i64
        )),
        gateway_nanos.map_or(String::new(), |gateway| ratio(
            gateway as f64,
            direct_nanos as f64
        )),
    );
}

/// A floor measured without any gateway, shown in the "Added" column it bounds.
fn floor_row(out: &mut String, label: &str, round_trips: &[u64]) {
    let _ = writeln!(
        out,
        "| {label} | | | +{} / +{} | |",
        format_duration(added_latency_floor(round_trips, 0.5)),
        format_duration(added_latency_floor(round_trips, 0.99)),
    );
}

/// An arm measured beside the gateway to explain its added latency: only the "Added" column.
fn added_pair_row(out: &mut String, label: &str, added_p50_nanos: i64, added_p99_nanos: i64) {
    let _ = writeln!(
        out,
        "| {label} | | | {} / {} | |",
        format_signed(added_p50_nanos),
        format_signed(added_p99_nanos),
    );
}

fn count_row(out: &mut String, label: &str, direct: u64, gateway: Option<u64>) {
    let _ = writeln!(
        out,
        "| {label} | {direct} | {} | | |",
        gateway.map_or("—".to_string(), |count| count.to_string())
    );
}

fn requests_per_second(load: &LoadOutcome) -> f64 {
    if load.elapsed.is_zero() {
        return 0.0;
    }
    load.completed as f64 / load.elapsed.as_secs_f64()
}

fn cpu_per_request(cpu_micros: u64, load: &LoadOutcome) -> Option<f64> {
    (load.completed > 0).then(|| cpu_micros as f64 / load.completed as f64)
}

/// A CPU-per-request figure as a table cell.
fn cpu_cell(micros: f64) -> String {
    format!("{micros:.1} µs")
}

fn ratio(gateway: f64, direct: f64) -> String {
    if direct <= 0.0 {
        return "—".to_string();
    }
    format!("{:.2}×", gateway / direct)
}

/// Microseconds below 10 ms, milliseconds above.
fn format_duration(nanos: u64) -> String {
    if nanos < 10_000_000 {
        format!("{} µs", group_thousands((nanos + 500) / 1000))
    } else {
        format!("{:.1} ms", nanos as f64 / 1e6)
    }
}

fn format_signed(nanos: i64) -> String {
    let sign = if nanos < 0 { "−" } else { "+" };
    format!("{sign}{}", format_duration(nanos.unsigned_abs()))
}

/// Milliseconds with one decimal, for gaps measured against a pace in milliseconds.
fn format_millis(nanos: i64) -> String {
    format!("{:.1} ms", nanos as f64 / 1e6)
}

fn format_kib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// Error messages may quote bodies with newlines and pipes; keep the note to one table-safe line.
fn one_line(message: &str) -> String {
    let flat: String = message
        .chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '|' {
                ' '
            } else {
                c
            }
        })
        .collect();
    flat.chars().take(300).collect()
}
