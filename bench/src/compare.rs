//! `--compare BASELINE`: the gateway under test against another build of it (a baseline, e.g.
//! the commit before a change), measured side by side in one run, for before/after questions
//! such as "what do statistics cost per request".
//!
//! Both gateways run at once on the same mock, each pinned like the main run's gateway; rounds
//! alternate which one goes first so drift on a shared machine hits both alike. Each round
//! measures c=1 latency (sequential keep-alive requests) and gateway CPU per request at c=64.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gateway::{configure, Gateway};
use crate::measure::{closed_loop, sequential_requests, ErrorTally, LoadKind, SequentialClient, Target, TargetModels};
use crate::mock_upstream::MockUpstream;
use crate::proc_stats::cpu_micros;
use crate::samples::{median, median_of_round_medians, percentile, pooled};

/// Everything one gateway did across the rounds.
#[derive(Default)]
struct Arm {
    latency_rounds: Vec<Vec<u64>>,
    /// Per round: (gateway CPU microseconds, completed requests).
    load_rounds: Vec<(u64, u64)>,
    errors: ErrorTally,
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
        let key = configure(gateway.address(), mock.address(), &groups).map_err(|error| format!("configuring {} failed: {error}", gateway.address()))?;
        let models = TargetModels { whole: groups[0].group_name, paced_stream: groups[0].group_name, long_stream: groups[0].group_name };
        targets.push(Target::new(gateway.address(), &key, &models));
    }
    let pids = [baseline.pid(), under_test.pid()];
    let mut clients: Vec<SequentialClient> = targets.iter().map(|target| SequentialClient::new(target.address)).collect();
    for (index, client) in clients.iter_mut().enumerate() {
        crate::warm_up(client, &targets[index], 300, Instant::now() + crate::PHASE_TIME_LIMIT, "compare")?;
    }
    let mut arms = [Arm::default(), Arm::default()];
    for round in 0..plan.rounds {
        progress(&format!("compare: round {} of {}", round + 1, plan.rounds));
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let deadline = Instant::now() + crate::PHASE_TIME_LIMIT;
            let samples = sequential_requests(&mut clients[index], &targets[index].whole_request, plan.requests_per_round, deadline, &mut arms[index].errors);
            arms[index].latency_rounds.push(samples);
        }
        for index in order {
            let before = cpu_micros(pids[index]).unwrap_or(0);
            let outcome = closed_loop(targets[index].address, Arc::clone(&targets[index].whole_request), LoadKind::Whole, crate::LOAD_CONCURRENCY, plan.load_duration);
            let after = cpu_micros(pids[index]).unwrap_or(0);
            arms[index].load_rounds.push((after.saturating_sub(before), outcome.completed));
            arms[index].errors.absorb(outcome.errors);
        }
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
    let _ = writeln!(out, "| Errors | {} | {} | |", arms[0].errors.count, arms[1].errors.count);
    out
}
