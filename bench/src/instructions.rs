//! `--instructions` and `--check`: what the gateway executes per request, counted by callgrind
//! (instructions and calls to the allocator), per conversion lane and with statistics off, and
//! the check of those counts against the ones recorded in `bench/instructions.json`.
//!
//! Timings on a shared two-core machine move by tens of percent from run to run; instruction
//! counts do not (callgrind counts the same work the same way whatever else runs), so they are
//! what a CI gate can hold. The gateway runs under `valgrind --tool=callgrind`; for each lane the
//! counters are zeroed after a warm-up, a fixed number of sequential requests is sent, and the
//! counters are dumped (`callgrind_control`). Work the gateway does whatever the traffic (timer
//! ticks of the stats writer, the scheduler) is measured in a quiet period and subtracted in
//! proportion to the time each lane took.
//!
//! To see where the instructions go, set `BENCH_CALLGRIND_KEEP=DIR`: each lane's dump is copied
//! there (named after the lane) for `callgrind_annotate`; use an unstripped build (e.g. the
//! `ci-release` profile) so the dumps name functions.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::gateway::{Gateway, GroupSpec, configure};
use crate::lanes::{LANE_STREAM_DELTAS, Lane, STREAM_LANES, WHOLE_LANES, chat_request, lane_groups};
use crate::measure::SequentialClient;
use crate::mock_upstream::{MockUpstream, client_stream_event_count};

/// Requests per lane before the counters are zeroed: connections, pools and caches settle.
const WARM_UP_REQUESTS: usize = 30;
/// Requests counted per lane. Enough that per-request work dominates the once-per-lane noise.
const COUNTED_REQUESTS: usize = 200;
/// Streams are 64 events each, so fewer of them give as many instructions to count.
const COUNTED_STREAMS: usize = 40;
/// After the last counted request, the time for the stats writer to take the records (it looks
/// every 25 ms) and write their log rows (about every second), so their cost is counted too.
const WRITER_SETTLE: Duration = Duration::from_millis(1_500);
/// The quiet period that prices the gateway's idle work per second.
const IDLE_PERIOD: Duration = Duration::from_secs(3);
/// Under valgrind, startup (argon2 of the seeded admin password included) takes many seconds.
const VALGRIND_STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// A lane whose count grew by more than this fraction over the recorded one fails `--check`.
pub const ALLOWED_GROWTH: f64 = 0.05;
/// The benchmark switch that turns statistics and request logs off in the gateway.
const WITHOUT_STATS: (&str, &str) = ("OCTOPUS_BENCH_WITHOUT_STATS", "1");

/// The name of the lane that measures the pass-through lane with statistics off.
const STATS_OFF_LABEL: &str = "OpenAI Chat → openai_chat (pass-through), statistics off";

/// One lane's counts per request.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneCount {
    pub label: String,
    pub instructions_per_request: f64,
    pub allocations_per_request: f64,
}

/// What one callgrind dump holds that we use.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct DumpTotals {
    instructions: u64,
    allocations: u64,
}

/// Measures every lane and returns the counts, pass-through first.
pub fn measure(gateway_binary: &Path, progress: &dyn Fn(&str)) -> Result<Vec<LaneCount>, String> {
    require_valgrind()?;
    let mock = MockUpstream::start().map_err(|error| format!("cannot start the mock: {error}"))?;
    let mut counts = Vec::new();
    {
        progress("instructions: starting the gateway under callgrind");
        let rig = CallgrindGateway::start(gateway_binary, mock.address(), &[])?;
        let idle_per_second = rig.idle_instructions_per_second()?;
        for lane in WHOLE_LANES {
            progress(&format!("instructions: {}", lane.label));
            counts.push(rig.count_lane(&lane, lane.label, false, idle_per_second)?);
        }
        for lane in STREAM_LANES {
            let label = format!("{}, streamed ({LANE_STREAM_DELTAS} events)", lane.label);
            progress(&format!("instructions: {label}"));
            counts.push(rig.count_lane(&lane, &label, true, idle_per_second)?);
        }
    }
    progress("instructions: the pass-through lane with statistics off");
    let rig = CallgrindGateway::start(gateway_binary, mock.address(), &[WITHOUT_STATS])?;
    let idle_per_second = rig.idle_instructions_per_second()?;
    counts.push(rig.count_lane(&WHOLE_LANES[0], STATS_OFF_LABEL, false, idle_per_second)?);
    Ok(counts)
}

fn require_valgrind() -> Result<(), String> {
    for program in ["valgrind", "callgrind_control"] {
        let found = Command::new(program).arg("--version").output().is_ok_and(|output| output.status.success());
        if !found {
            return Err(format!("`{program}` is not installed (Debian package valgrind)"));
        }
    }
    Ok(())
}

/// A gateway running under callgrind, configured with every lane's group.
struct CallgrindGateway {
    gateway: Gateway,
    client_key: String,
    dump_dir: PathBuf,
}

impl CallgrindGateway {
    fn start(binary: &Path, mock: std::net::SocketAddr, environment: &[(&str, &str)]) -> Result<CallgrindGateway, String> {
        let dump_dir = std::env::temp_dir().join(format!("octopus-bench-{}-callgrind-{}", std::process::id(), environment.len()));
        std::fs::create_dir_all(&dump_dir).map_err(|error| format!("cannot create {}: {error}", dump_dir.display()))?;
        let prefix = vec![
            "valgrind".to_string(),
            "--tool=callgrind".to_string(),
            format!("--callgrind-out-file={}/callgrind.out", dump_dir.display()),
            // Only totals are read; skipping per-instruction detail keeps dumps small.
            "--dump-instr=no".to_string(),
            "--quiet".to_string(),
        ];
        let gateway = Gateway::start_under(&prefix, binary, environment, VALGRIND_STARTUP_TIMEOUT)?;
        let groups: Vec<GroupSpec> = lane_groups().collect();
        let client_key = configure(gateway.address(), mock, None, &groups)
            .map_err(|error| format!("configuring the gateway under callgrind failed: {error}\ngateway log:\n{}", gateway.log_tail()))?;
        Ok(CallgrindGateway { gateway, client_key, dump_dir })
    }

    /// Instructions per second the gateway runs with no traffic at all.
    fn idle_instructions_per_second(&self) -> Result<f64, String> {
        self.zero_counters()?;
        let started = Instant::now();
        std::thread::sleep(IDLE_PERIOD);
        let totals = self.dump_counters(None)?;
        Ok(totals.instructions as f64 / started.elapsed().as_secs_f64())
    }

    /// Warms the lane up, then counts `COUNTED_REQUESTS` requests (or `COUNTED_STREAMS` streams).
    fn count_lane(&self, lane: &Lane, label: &str, stream: bool, idle_per_second: f64) -> Result<LaneCount, String> {
        let request = chat_request(lane.client, self.gateway.address(), &self.client_key, lane.group.group_name, stream);
        let mut client = SequentialClient::new(self.gateway.address());
        let send = |client: &mut SequentialClient| -> Result<(), String> {
            if stream {
                let sample = client.timed_stream(&request, LANE_STREAM_DELTAS, Duration::ZERO)?;
                let expected_events = client_stream_event_count(lane.client, LANE_STREAM_DELTAS);
                if sample.events != expected_events {
                    return Err(format!("a stream ended after {} of {expected_events} events", sample.events));
                }
                Ok(())
            } else {
                client.timed_request(&request).map(|_| ())
            }
        };
        for _ in 0..WARM_UP_REQUESTS {
            send(&mut client).map_err(|error| format!("{label}: warm-up request failed: {error}"))?;
        }
        std::thread::sleep(WRITER_SETTLE);
        let counted = if stream { COUNTED_STREAMS } else { COUNTED_REQUESTS };
        self.zero_counters()?;
        let started = Instant::now();
        for _ in 0..counted {
            send(&mut client).map_err(|error| format!("{label}: request failed: {error}\ngateway log:\n{}", self.gateway.log_tail()))?;
        }
        std::thread::sleep(WRITER_SETTLE);
        let totals = self.dump_counters(Some(label))?;
        let idle = idle_per_second * started.elapsed().as_secs_f64();
        Ok(LaneCount {
            label: label.to_string(),
            instructions_per_request: (totals.instructions as f64 - idle).max(0.0) / counted as f64,
            allocations_per_request: totals.allocations as f64 / counted as f64,
        })
    }

    fn zero_counters(&self) -> Result<(), String> {
        self.callgrind_control("-z")
    }

    /// Dumps the counters to a new file and reads its totals; a lane's dump is kept when
    /// `BENCH_CALLGRIND_KEEP` names a directory.
    fn dump_counters(&self, lane_label: Option<&str>) -> Result<DumpTotals, String> {
        let before = dump_files(&self.dump_dir);
        self.callgrind_control("-d")?;
        let newest = dump_files(&self.dump_dir)
            .into_iter()
            .filter(|path| !before.contains(path))
            .max_by_key(|path| std::fs::metadata(path).and_then(|meta| meta.modified()).ok())
            .ok_or_else(|| format!("callgrind wrote no dump into {}", self.dump_dir.display()))?;
        let text = std::fs::read_to_string(&newest).map_err(|error| format!("cannot read {}: {error}", newest.display()))?;
        if let (Some(label), Some(keep)) = (lane_label, std::env::var_os("BENCH_CALLGRIND_KEEP")) {
            let name: String = label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
            let kept = Path::new(&keep).join(format!("callgrind.{name}.out"));
            std::fs::write(&kept, &text).map_err(|error| format!("cannot keep the dump as {}: {error}", kept.display()))?;
        }
        parse_dump(&text).ok_or_else(|| format!("{} has no `summary:` or `totals:` line", newest.display()))
    }

    fn callgrind_control(&self, option: &str) -> Result<(), String> {
        let output = Command::new("callgrind_control")
            .arg(option)
            .arg(self.gateway.pid().to_string())
            .output()
            .map_err(|error| format!("cannot run callgrind_control: {error}"))?;
        if !output.status.success() {
            return Err(format!("callgrind_control {option} failed: {}", String::from_utf8_lossy(&output.stderr)));
        }
        Ok(())
    }
}

impl Drop for CallgrindGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dump_dir);
    }
}

fn dump_files(directory: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(directory)
        .map(|entries| entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect())
        .unwrap_or_default()
}

/// The allocator entry points whose calls count as allocations (`realloc` moves or grows one):
/// Rust's (the gateway's global allocator is mimalloc, which these reach without passing through
/// C's `malloc`) and C's (SQLite and other C code call those directly).
const ALLOCATOR_FUNCTIONS: [&str; 7] = [
    "__rustc::__rust_alloc",
    "__rustc::__rust_alloc_zeroed",
    "__rustc::__rust_realloc",
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
];

/// Reads the instruction total and the calls into the allocator from a callgrind dump.
///
/// Function names are compressed: the first mention is `(id) name`, later ones only `(id)`. A
/// call is a `cfn=` line naming the callee followed by `calls=COUNT ...`.
fn parse_dump(text: &str) -> Option<DumpTotals> {
    let mut allocator_ids: Vec<String> = Vec::new();
    let mut instructions = None;
    let mut allocations = 0u64;
    let mut callee_is_allocator = false;
    for line in text.lines() {
        if let Some(total) = line.strip_prefix("summary:").or_else(|| line.strip_prefix("totals:")) {
            instructions = total.split_whitespace().next().and_then(|number| number.parse::<u64>().ok()).or(instructions);
        } else if let Some(callee) = line.strip_prefix("cfn=") {
            callee_is_allocator = names_allocator(callee, &mut allocator_ids);
        } else if let Some(calls) = line.strip_prefix("calls=") {
            if callee_is_allocator {
                allocations += calls.split_whitespace().next().and_then(|number| number.parse::<u64>().ok()).unwrap_or(0);
            }
            callee_is_allocator = false;
        } else if let Some(function) = line.strip_prefix("fn=") {
            // Definitions introduce ids too; a later `cfn=(id)` may refer to them.
            names_allocator(function, &mut allocator_ids);
        }
    }
    instructions.map(|instructions| DumpTotals { instructions, allocations })
}

/// Whether a compressed function reference (`(id) name` or `(id)`) is an allocator entry point,
/// remembering the ids of those defined with their name.
fn names_allocator(reference: &str, allocator_ids: &mut Vec<String>) -> bool {
    let reference = reference.trim();
    let (id, name) = match reference.strip_prefix('(').and_then(|rest| rest.split_once(')')) {
        Some((id, name)) => (id.to_string(), name.trim()),
        None => (String::new(), reference),
    };
    if name.is_empty() {
        return allocator_ids.contains(&id);
    }
    let is_allocator = ALLOCATOR_FUNCTIONS.contains(&name);
    if is_allocator && !id.is_empty() && !allocator_ids.contains(&id) {
        allocator_ids.push(id);
    }
    is_allocator
}

/// The Markdown table of one measurement, with the ratios against pass-through and, when given,
/// against the recorded counts.
pub fn render(counts: &[LaneCount], recorded: Option<&[LaneCount]>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### Instructions and allocations per request (callgrind)\n");
    let _ = writeln!(out, "| Lane | Instructions / request | vs pass-through | Allocations / request | Recorded instructions | Change |");
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|");
    let pass_through = counts.first().map_or(0.0, |count| count.instructions_per_request);
    for count in counts {
        let ratio = if pass_through > 0.0 { format!("{:.2}×", count.instructions_per_request / pass_through) } else { "—".to_string() };
        let recorded_count = recorded.and_then(|recorded| recorded.iter().find(|other| other.label == count.label));
        let (recorded_text, change) = match recorded_count {
            Some(recorded) => (
                format!("{:.0}", recorded.instructions_per_request),
                format!("{:+.1}%", (count.instructions_per_request / recorded.instructions_per_request - 1.0) * 100.0),
            ),
            None => ("—".to_string(), "—".to_string()),
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {ratio} | {:.1} | {recorded_text} | {change} |",
            count.label, count.instructions_per_request, count.allocations_per_request
        );
    }
    if let (Some(on), Some(off)) = (counts.first(), counts.iter().find(|count| count.label == STATS_OFF_LABEL)) {
        let _ = writeln!(
            out,
            "\nStatistics and request logs cost {:.0} instructions per pass-through request ({:+.1}%).",
            on.instructions_per_request - off.instructions_per_request,
            (on.instructions_per_request / off.instructions_per_request - 1.0) * 100.0
        );
    }
    out
}

/// The lanes whose instruction count grew more than `ALLOWED_GROWTH` over the recorded one, or
/// that the record lacks; empty when the check passes.
pub fn regressions(counts: &[LaneCount], recorded: &[LaneCount]) -> Vec<String> {
    let mut problems = Vec::new();
    for count in counts {
        match recorded.iter().find(|other| other.label == count.label) {
            Some(recorded) if count.instructions_per_request > recorded.instructions_per_request * (1.0 + ALLOWED_GROWTH) => problems.push(format!(
                "{}: {:.0} instructions per request, recorded {:.0} (+{:.1}%, allowed +{:.0}%)",
                count.label,
                count.instructions_per_request,
                recorded.instructions_per_request,
                (count.instructions_per_request / recorded.instructions_per_request - 1.0) * 100.0,
                ALLOWED_GROWTH * 100.0
            )),
            Some(_) => {}
            None => problems.push(format!("{}: no recorded count (run `scripts/bench --record`)", count.label)),
        }
    }
    problems
}

/// The recorded counts, as `bench/instructions.json` holds them.
pub fn to_json(counts: &[LaneCount], commit: &str, rustc: &str) -> Value {
    json!({
        "about": "Instructions and allocator calls per request, counted by callgrind (scripts/bench --record); scripts/bench --check fails when a lane grows by more than 5%.",
        "commit": commit,
        "rustc": rustc,
        "lanes": counts.iter().map(|count| json!({
            "label": count.label,
            "instructions_per_request": count.instructions_per_request.round(),
            "allocations_per_request": (count.allocations_per_request * 10.0).round() / 10.0,
        })).collect::<Vec<_>>(),
    })
}

pub fn from_json(value: &Value) -> Result<Vec<LaneCount>, String> {
    let lanes = value.get("lanes").and_then(Value::as_array).ok_or("the record has no `lanes` array")?;
    lanes
        .iter()
        .map(|lane| {
            Ok(LaneCount {
                label: lane.get("label").and_then(Value::as_str).ok_or("a lane has no `label`")?.to_string(),
                instructions_per_request: lane.get("instructions_per_request").and_then(Value::as_f64).ok_or("a lane has no `instructions_per_request`")?,
                allocations_per_request: lane.get("allocations_per_request").and_then(Value::as_f64).unwrap_or(0.0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\n\nfn=(1) main\n10 5\ncfn=(2) malloc\ncalls=3 0\n11 90\ncfn=(3) free\ncalls=3 0\n12 30\ncfn=(2)\ncalls=4 0\n13 40\n\nfn=(2)\n1 50\ncfn=(4) realloc\ncalls=2 0\n2 8\n\nsummary: 1234\ntotals: 1234\n";

    #[test]
    fn a_dump_gives_its_total_and_the_calls_into_the_allocator() {
        assert_eq!(parse_dump(DUMP), Some(DumpTotals { instructions: 1234, allocations: 9 }));
    }

    #[test]
    fn a_dump_without_totals_is_refused() {
        assert_eq!(parse_dump("events: Ir\nfn=(1) main\n"), None);
    }

    fn count(label: &str, instructions: f64) -> LaneCount {
        LaneCount { label: label.to_string(), instructions_per_request: instructions, allocations_per_request: 1.0 }
    }

    #[test]
    fn growth_past_five_percent_and_unrecorded_lanes_fail_the_check() {
        let recorded = [count("a", 100_000.0), count("b", 100_000.0)];
        let measured = [count("a", 104_900.0), count("b", 105_100.0), count("c", 1.0)];
        let problems = regressions(&measured, &recorded);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("b: 105100"));
        assert!(problems[1].starts_with("c: no recorded count"));
    }

    #[test]
    fn the_record_reads_back() {
        let counts = [count("a", 1234.0), count("b", 99.0)];
        assert_eq!(from_json(&to_json(&counts, "abc", "rustc")).unwrap(), counts);
    }
}
