//! `--compare BASELINE`: the gateway under test against another build of it (a baseline, e.g.
//! the commit before a change), measured side by side in one run, for before/after questions
//! such as "what do statistics cost per request".
//!
//! Both gateways run at once on the same mock, each pinned like the main run's gateway; rounds
//! alternate which one goes first so drift on a shared machine hits both alike. Each round
//! measures c=1 latency (sequential keep-alive requests) and gateway CPU per request at c=64:
//! the closed loop moves between the two gateways every quarter second, and both gateways' CPU
//! is read over the whole round, after each has had time to write the round's request logs. The report also
//! gives the share of each gateway's CPU spent on its statistics threads, read per thread from
//! /proc: a figure that does not depend on two noisy runs agreeing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gateway::{configure, counted_and_logged, Gateway};
use crate::measure::{interleaved_closed_loops, sequential_requests, ErrorTally, SequentialClient, Target, TargetModels};
use crate::mock_upstream::MockUpstream;
use crate::proc_stats::{cpu_micros, thread_cpu_micros};
use crate::samples::{median, median_of_round_medians, percentile, pooled};

/// Everything one gateway did across the rounds.
#[derive(Default)]
struct Arm {
    latency_rounds: Vec<Vec<u64>>,
    /// Per round: (gateway CPU microseconds, completed requests).
    load_rounds: Vec<(u64, u64)>,
    errors: ErrorTally,
    /// CPU of the whole gateway and of its statistics threads over all rounds (microseconds).
    all_rounds_cpu: u64,
    stats_threads_cpu: u64,
    /// Requests counted and request logs written, read from the admin API after the rounds.
    counted_and_logged: Option<(u64, u64)>,
}

impl Arm {
    fn cpu_per_request_rounds(&self) -> Vec<u64> {
        // Nanoseconds, so the shared median helper keeps sub-microsecond detail.
        self.load_rounds.iter().filter(|(_, completed)| *completed > 0).map(|(cpu, completed)| cpu * 1_000 / completed).collect()
    }
}

/// What the gateway under test is measured against.
pub enum Baseline {
    /// Another build of the gateway, e.g. the commit before a change.
    OtherBuild(PathBuf),
    /// The same build with statistics and request logs switched off, to price what they cost.
    SameBuildWithoutStats,
}

/// After each load phase, how long the gateway gets before its CPU time is read: it writes
/// request logs about every second, so without this wait the writes of a phase's last second
/// would fall outside every measured window and the statistics would look cheaper than they are.
const WRITER_SETTLE: Duration = Duration::from_millis(1_300);

/// How long the c=64 load stays on one gateway before it moves to the other. Short turns pair
/// the two arms closely in time; each turn still holds thousands of requests.
const LOAD_SLICE: Duration = Duration::from_millis(250);

/// The threads that do the statistics' work: the stats writer (pricing, counting, encoding log
/// rows) and the store pool (the database writes; outside the bench's traffic they only serve
/// the snapshot refresh, which both gateways do alike).
fn is_stats_thread(name: &str) -> bool {
    name == "stats-writer" || name.starts_with("store-")
}

/// Summed CPU of the statistics threads of `pid` (microseconds).
fn stats_threads_cpu(pid: u32) -> u64 {
    thread_cpu_micros(pid).into_iter().filter(|(name, _)| is_stats_thread(name)).map(|(_, cpu)| cpu).sum()
}

/// The gateway's benchmark switch for `Baseline::SameBuildWithoutStats`.
const WITHOUT_STATS: (&str, &str) = ("OCTOPUS_BENCH_WITHOUT_STATS", "1");

pub struct ComparePlan {
    pub rounds: usize,
    pub requests_per_round: usize,
    pub load_duration: Duration,
}

/// Runs the comparison and returns the Markdown report.
pub fn run(gateway_binary: &Path, baseline: &Baseline, plan: &ComparePlan, pin_to_cpu: Option<u32>, progress: &dyn Fn(&str)) -> Result<String, String> {
    let mock = MockUpstream::start().map_err(|error| format!("cannot start the mock: {error}"))?;
    let (baseline_label, baseline) = match baseline {
        Baseline::OtherBuild(binary) => (format!("`{}`", binary.display()), Gateway::start(binary, pin_to_cpu, &[])?),
        Baseline::SameBuildWithoutStats => (
            format!("the same build with `{}={}` (statistics and request logs off)", WITHOUT_STATS.0, WITHOUT_STATS.1),
            Gateway::start(gateway_binary, pin_to_cpu, &[WITHOUT_STATS])?,
        ),
    };
    let under_test = Gateway::start(gateway_binary, pin_to_cpu, &[])?;
    let groups = [crate::GROUPS[0]];
    let mut targets = Vec::new();
    for gateway in [&baseline, &under_test] {
        let key = configure(gateway.address(), mock.address(), None, &groups).map_err(|error| format!("configuring {} failed: {error}", gateway.address()))?;
        let models = TargetModels { whole: groups[0].group_name, paced_stream: groups[0].group_name, first_event_stream: groups[0].group_name, long_stream: groups[0].group_name };
        targets.push(Target::new(gateway.address(), &key, &models));
    }
    let pids = [baseline.pid(), under_test.pid()];
    let mut clients: Vec<SequentialClient> = targets.iter().map(|target| SequentialClient::new(target.address)).collect();
    for (index, client) in clients.iter_mut().enumerate() {
        crate::warm_up(client, &targets[index], 300, Instant::now() + crate::PHASE_TIME_LIMIT, "compare")?;
    }
    let mut arms = [Arm::default(), Arm::default()];
    let window_start = pids.map(|pid| (cpu_micros(pid).unwrap_or(0), stats_threads_cpu(pid)));
    for round in 0..plan.rounds {
        progress(&format!("compare: round {} of {}", round + 1, plan.rounds));
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let deadline = Instant::now() + crate::PHASE_TIME_LIMIT;
            let samples = sequential_requests(&mut clients[index], &targets[index].whole_request, plan.requests_per_round, deadline, &mut arms[index].errors);
            arms[index].latency_rounds.push(samples);
        }
        // Both gateways' CPU is read over the same window: the load takes turns between them
        // every `LOAD_SLICE`, and the window ends after the writers have caught up.
        let before = pids.map(|pid| cpu_micros(pid).unwrap_or(0));
        let slices_per_arm = (plan.load_duration.as_millis() / LOAD_SLICE.as_millis()).max(1) as usize;
        let addresses = [targets[0].address, targets[1].address];
        let requests = [Arc::clone(&targets[0].whole_request), Arc::clone(&targets[1].whole_request)];
        let counts = interleaved_closed_loops(addresses, requests, crate::LOAD_CONCURRENCY, LOAD_SLICE, slices_per_arm, order[0]);
        std::thread::sleep(WRITER_SETTLE);
        for (index, arm_counts) in counts.into_iter().enumerate() {
            let after = cpu_micros(pids[index]).unwrap_or(0);
            arms[index].load_rounds.push((after.saturating_sub(before[index]), arm_counts.completed));
            arms[index].errors.absorb(arm_counts.errors);
        }
    }
    for (index, arm) in arms.iter_mut().enumerate() {
        arm.all_rounds_cpu = cpu_micros(pids[index]).unwrap_or(0).saturating_sub(window_start[index].0);
        arm.stats_threads_cpu = stats_threads_cpu(pids[index]).saturating_sub(window_start[index].1);
    }
    // The last logs are written within a second of the last round (or sooner, by their count).
    std::thread::sleep(WRITER_SETTLE);
    for (index, gateway) in [&baseline, &under_test].into_iter().enumerate() {
        arms[index].counted_and_logged = Some(counted_and_logged(gateway.address())?);
    }
    Ok(render(&arms, &baseline_label, gateway_binary, plan))
}

fn render(arms: &[Arm; 2], baseline_label: &str, gateway_binary: &Path, plan: &ComparePlan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### Gateway against a baseline build ({} alternating rounds)\n", plan.rounds);
    let _ = writeln!(out, "baseline: {baseline_label} · under test: `{}`\n", gateway_binary.display());
    let _ = writeln!(out, "| Metric | Baseline | Under test | Under test / baseline |");
    let _ = writeln!(out, "|---|--:|--:|--:|");
    let row = |out: &mut String, label: &str, baseline: u64, under_test: u64| {
        let ratio = if baseline > 0 { format!("{:.3}×", under_test as f64 / baseline as f64) } else { "—".to_string() };
        let _ = writeln!(out, "| {label} | {:.1} µs | {:.1} µs | {ratio} |", baseline as f64 / 1_000.0, under_test as f64 / 1_000.0);
    };
    row(&mut out, "Latency p50, c=1 (median of round medians)", median_of_round_medians(&arms[0].latency_rounds), median_of_round_medians(&arms[1].latency_rounds));
    let p99 = |arm: &Arm| percentile(&mut pooled(&arm.latency_rounds), 0.99);
    row(&mut out, "Latency p99, c=1 (all samples)", p99(&arms[0]), p99(&arms[1]));
    row(
        &mut out,
        &format!("Gateway CPU per request, c={} (median of rounds)", crate::LOAD_CONCURRENCY),
        median(&mut arms[0].cpu_per_request_rounds()),
        median(&mut arms[1].cpu_per_request_rounds()),
    );
    let total = |arm: &Arm| {
        let (cpu, completed) = arm.load_rounds.iter().fold((0, 0), |(cpu, completed), round| (cpu + round.0, completed + round.1));
        (cpu * 1_000).checked_div(completed).unwrap_or(0)
    };
    row(&mut out, "Gateway CPU per request, all rounds pooled", total(&arms[0]), total(&arms[1]));
    let share = |arm: &Arm| {
        if arm.all_rounds_cpu == 0 { "—".to_string() } else { format!("{:.1}%", arm.stats_threads_cpu as f64 * 100.0 / arm.all_rounds_cpu as f64) }
    };
    let _ = writeln!(out, "| Share of the gateway's CPU on the stats-writer and store threads, all rounds | {} | {} | |", share(&arms[0]), share(&arms[1]));
    let counted = |arm: &Arm| arm.counted_and_logged.map_or("—".to_string(), |(requests, logs)| format!("{requests} / {logs}"));
    let _ = writeln!(out, "| Requests counted / request logs written (all phases) | {} | {} | |", counted(&arms[0]), counted(&arms[1]));
    let _ = writeln!(out, "| Errors | {} | {} | |", arms[0].errors.count, arms[1].errors.count);
    // Round by round, so a trend (a slow start, a busy spell) shows instead of hiding in a median.
    let ratios: Vec<String> = arms[0]
        .cpu_per_request_rounds()
        .iter()
        .zip(arms[1].cpu_per_request_rounds())
        .map(|(baseline, under_test)| if *baseline > 0 { format!("{:.2}", under_test as f64 / *baseline as f64) } else { "—".to_string() })
        .collect();
    let _ = writeln!(out, "\nCPU per request, under test / baseline, round by round: {}", ratios.join(", "));
    out
}
