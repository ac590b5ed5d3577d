//! The conversion phase: each lane of `lanes.rs` measured for added latency at c=1 against a
//! direct call to the mock in the upstream's own protocol, and for the gateway's CPU per
//! request in a closed loop; the streamed lanes for the gateway's CPU per SSE event. Lanes
//! take turns within every round, so drift on a shared machine reaches all of them alike and
//! every lane can be read as a ratio to the pass-through lane measured beside it.
//!
//! CPU is the gateway process's own utime + stime from /proc, so neighbours on the machine
//! slow it down without being counted in it; that makes CPU per request the steadier figure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lanes::{
    LANE_MODEL, LANE_STREAM_DELTAS, LANE_STREAM_MODEL, Lane, STREAM_LANES, WHOLE_LANES,
    answer_text, chat_request,
};
use crate::measure::{
    ErrorTally, LoadKind, LoadOutcome, SequentialClient, closed_loop, sequential_requests,
};
use crate::mock_upstream::{CANNED_TEXT, Dialect, MockUpstream};
use crate::proc_stats::cpu_micros;

/// Concurrency of the CPU-per-request loops: enough to keep both of a small box's cores busy
/// through the gateway without measuring a pile-up of queued requests.
pub const CONVERSION_CONCURRENCY: usize = 8;
/// CPU is read this long after a loop ends, so work the gateway does just after answering (its
/// stats writer logging the requests) is counted in the lane that caused it, not the next one.
pub const CPU_TAIL: Duration = Duration::from_millis(200);
/// Untimed streams per streamed lane before the loops, which also check the lane works.
const WARMUP_STREAMS: usize = 5;
/// An upper bound for the c=1 rounds, which could otherwise wait on a broken gateway.
const LATENCY_PHASE_LIMIT: Duration = Duration::from_secs(120);
/// The key the direct baseline sends; the mock checks no key.
const DIRECT_KEY: &str = "sk-mock-1";

/// How much of everything the conversion phase does.
#[derive(Debug, Clone, Copy)]
pub struct ConversionPlan {
    pub warmup_requests: usize,
    pub latency_rounds: usize,
    pub requests_per_round: usize,
    /// Rounds of the CPU loops; each round runs every lane once, whole and streamed.
    pub cpu_rounds: usize,
    pub cpu_duration: Duration,
    pub stream_cpu_duration: Duration,
}

/// The gateway under test and how to reach it.
pub struct GatewayUnderTest {
    pub pid: u32,
    pub address: SocketAddr,
    pub client_key: String,
}

/// One non-streaming lane's measurements.
pub struct LaneResults {
    pub lane: Lane,
    pub direct_rounds: Vec<Vec<u64>>,
    pub gateway_rounds: Vec<Vec<u64>>,
    pub direct_errors: ErrorTally,
    pub gateway_errors: ErrorTally,
    /// The gateway's closed loops at `CONVERSION_CONCURRENCY`, all rounds added together.
    pub load: LoadOutcome,
    /// Gateway CPU per round (each loop with its `CPU_TAIL`), counted against completed requests.
    pub cpu_rounds: Vec<CpuRound>,
}

/// One streamed lane's measurements: closed loops of whole streams through the gateway.
pub struct StreamLaneResults {
    pub lane: Lane,
    /// `completed` counts streams read to their end, `events` their SSE events.
    pub load: LoadOutcome,
    /// Gateway CPU per round, counted against SSE events received.
    pub cpu_rounds: Vec<CpuRound>,
}

/// The gateway CPU one closed-loop round cost, and how much work (requests or SSE events) it
/// completed.
#[derive(Debug, Clone, Copy)]
pub struct CpuRound {
    pub cpu_micros: u64,
    pub units: u64,
}

/// All rounds' CPU over all rounds' work, in microseconds per unit.
pub fn pooled_cpu_per_unit(rounds: &[CpuRound]) -> Option<f64> {
    let cpu: u64 = rounds.iter().map(|round| round.cpu_micros).sum();
    let units: u64 = rounds.iter().map(|round| round.units).sum();
    (units > 0).then(|| cpu as f64 / units as f64)
}

/// The median over rounds of `lane`'s CPU per unit divided by `baseline`'s in the same round.
/// Pairing by round compares lanes measured seconds apart, so a neighbour's load that comes and
/// goes during the run moves both sides of each ratio instead of one lane's whole figure.
pub fn paired_cpu_ratio(lane: &[CpuRound], baseline: &[CpuRound]) -> Option<f64> {
    let per_unit =
        |round: &CpuRound| (round.units > 0).then(|| round.cpu_micros as f64 / round.units as f64);
    let mut ratios: Vec<f64> = lane
        .iter()
        .zip(baseline)
        .filter_map(|(lane_round, baseline_round)| {
            let base = per_unit(baseline_round).filter(|base| *base > 0.0)?;
            Some(per_unit(lane_round)? / base)
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let middle = ratios.len() / 2;
    Some(if ratios.len().is_multiple_of(2) {
        (ratios[middle - 1] + ratios[middle]) / 2.0
    } else {
        ratios[middle]
    })
}

pub struct ConversionResults {
    pub plan: ConversionPlan,
    pub whole: Vec<LaneResults>,
    pub streams: Vec<StreamLaneResults>,
}

/// Runs the whole conversion phase against `gateway`, reporting progress through `progress`.
pub fn run(
    mock: &MockUpstream,
    gateway: &GatewayUnderTest,
    plan: &ConversionPlan,
    progress: &dyn Fn(&str),
) -> Result<ConversionResults, String> {
    let mut lanes: Vec<LaneRig> = WHOLE_LANES
        .iter()
        .map(|lane| LaneRig::new(*lane, mock.address(), gateway))
        .collect();

    progress("conversion lanes: warm-up and answer checks");
    let deadline = Instant::now() + LATENCY_PHASE_LIMIT;
    for rig in &mut lanes {
        rig.warm_up(mock, plan.warmup_requests, deadline)?;
    }

    progress("conversion lanes: latency at c=1");
    let deadline = Instant::now() + LATENCY_PHASE_LIMIT;
    for round in 0..plan.latency_rounds {
        for lane_index in rotated(round, lanes.len()) {
            let rig = &mut lanes[lane_index];
            let samples = sequential_requests(
                &mut rig.direct_client,
                &rig.direct_request,
                plan.requests_per_round,
                deadline,
                &mut rig.results.direct_errors,
            );
            rig.results.direct_rounds.push(samples);
            let samples = sequential_requests(
                &mut rig.gateway_client,
                &rig.gateway_request,
                plan.requests_per_round,
                deadline,
                &mut rig.results.gateway_errors,
            );
            rig.results.gateway_rounds.push(samples);
        }
    }

    progress(&format!(
        "conversion lanes: gateway CPU per request at c={CONVERSION_CONCURRENCY}"
    ));
    for round in 0..plan.cpu_rounds {
        for lane_index in rotated(round, lanes.len()) {
            let rig = &mut lanes[lane_index];
            let (outcome, cpu) = measured_loop(
                gateway,
                &rig.gateway_request,
                LoadKind::Whole,
                plan.cpu_duration,
            );
            rig.results.cpu_rounds.push(CpuRound {
                cpu_micros: cpu,
                units: outcome.completed,
            });
            absorb(&mut rig.results.load, outcome);
        }
    }

    progress(&format!(
        "conversion lanes: gateway CPU per SSE event ({LANE_STREAM_MODEL}) at c={CONVERSION_CONCURRENCY}"
    ));
    let mut streams: Vec<(Arc<Vec<u8>>, StreamLaneResults)> = Vec::new();
    for lane in STREAM_LANES {
        let request = chat_request(
            lane.client,
            gateway.address,
            &gateway.client_key,
            lane.group.group_name,
            true,
        );
        warm_up_streams(mock, gateway, &lane, &request)?;
        streams.push((
            Arc::new(request),
            StreamLaneResults {
                lane,
                load: LoadOutcome::default(),
                cpu_rounds: Vec::new(),
            },
        ));
    }
    for round in 0..plan.cpu_rounds {
        for lane_index in rotated(round, streams.len()) {
            let (request, results) = &mut streams[lane_index];
            let (outcome, cpu) =
                measured_loop(gateway, request, LoadKind::Stream, plan.stream_cpu_duration);
            results.cpu_rounds.push(CpuRound {
                cpu_micros: cpu,
                units: outcome.events,
            });
            absorb(&mut results.load, outcome);
        }
    }

    Ok(ConversionResults {
        plan: *plan,
        whole: lanes.into_iter().map(|rig| rig.results).collect(),
        streams: streams.into_iter().map(|(_, results)| results).collect(),
    })
}

/// The lane indices `0..count` starting at `round`, wrapping around: each round starts with a
/// different lane, so no lane always runs first (on a gateway just back from another phase) or
/// always after the same neighbour.
fn rotated(round: usize, count: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |offset| (round + offset) % count.max(1))
}

/// One non-streaming lane's clients, prebuilt requests and results.
struct LaneRig {
    direct_client: SequentialClient,
    direct_request: Vec<u8>,
    gateway_client: SequentialClient,
    gateway_request: Arc<Vec<u8>>,
    results: LaneResults,
}

impl LaneRig {
    fn new(lane: Lane, mock_address: SocketAddr, gateway: &GatewayUnderTest) -> LaneRig {
        LaneRig {
            direct_client: SequentialClient::new(mock_address),
            direct_request: chat_request(
                lane.upstream(),
                mock_address,
                DIRECT_KEY,
                LANE_MODEL,
                false,
            ),
            gateway_client: SequentialClient::new(gateway.address),
            gateway_request: Arc::new(chat_request(
                lane.client,
                gateway.address,
                &gateway.client_key,
                lane.group.group_name,
                false,
            )),
            results: LaneResults {
                lane,
                direct_rounds: Vec::new(),
                gateway_rounds: Vec::new(),
                direct_errors: ErrorTally::default(),
                gateway_errors: ErrorTally::default(),
                load: LoadOutcome::default(),
                cpu_rounds: Vec::new(),
            },
        }
    }

    /// Checks that both sides answer with the mock's text in the protocol they were asked in,
    /// and that every gateway request reached the mock in the lane's upstream protocol (so the
    /// lane converts what it claims to); then warms both sides up.
    fn warm_up(
        &mut self,
        mock: &MockUpstream,
        count: usize,
        deadline: Instant,
    ) -> Result<(), String> {
        let lane = self.results.lane;
        let mut errors = ErrorTally::default();
        let direct_body = self
            .direct_client
            .answer_body(&self.direct_request)
            .map_err(|error| format!("lane {}: direct request failed: {error}", lane.label))?;
        check_answer(lane.upstream(), &direct_body, "direct", &lane)?;
        let _ = sequential_requests(
            &mut self.direct_client,
            &self.direct_request,
            count,
            deadline,
            &mut errors,
        );

        let upstream_before = mock.answered_requests(lane.upstream());
        let gateway_body = self
            .gateway_client
            .answer_body(&self.gateway_request)
            .map_err(|error| format!("lane {}: gateway request failed: {error}", lane.label))?;
        check_answer(lane.client, &gateway_body, "gateway", &lane)?;
        let gateway_answers = 1 + sequential_requests(
            &mut self.gateway_client,
            &self.gateway_request,
            count,
            deadline,
            &mut errors,
        )
        .len();
        let upstream_answers = mock.answered_requests(lane.upstream()) - upstream_before;

        if let Some(first) = errors.first {
            return Err(format!(
                "lane {}: {} warm-up requests failed; first error: {first}",
                lane.label, errors.count
            ));
        }
        if upstream_answers != gateway_answers {
            return Err(format!(
                "lane {}: the gateway answered {gateway_answers} requests but the mock answered {upstream_answers} in the {:?} protocol",
                lane.label,
                lane.upstream()
            ));
        }
        Ok(())
    }
}

/// Checks that `body` is a whole answer in `dialect` carrying the mock's canned text.
fn check_answer(dialect: Dialect, body: &[u8], arm: &str, lane: &Lane) -> Result<(), String> {
    match answer_text(dialect, body) {
        Some(text) if text == CANNED_TEXT => Ok(()),
        _ => Err(format!(
            "lane {}: the {arm} answer is not a {dialect:?} answer with the mock's text: {}",
            lane.label,
            String::from_utf8_lossy(body)
        )),
    }
}

/// Runs a few streams through a streamed lane, checking each reaches its end with at least
/// one event per delta and is served by the mock in the lane's upstream protocol.
fn warm_up_streams(
    mock: &MockUpstream,
    gateway: &GatewayUnderTest,
    lane: &Lane,
    request: &[u8],
) -> Result<(), String> {
    let mut client = SequentialClient::new(gateway.address);
    let upstream_before = mock.answered_requests(lane.upstream());
    for _ in 0..WARMUP_STREAMS {
        let sample = client
            .timed_stream(request, LANE_STREAM_DELTAS, Duration::ZERO)
            .map_err(|error| format!("streamed lane {}: {error}", lane.label))?;
        if sample.events < LANE_STREAM_DELTAS as usize {
            return Err(format!(
                "streamed lane {}: a stream of {LANE_STREAM_DELTAS} deltas arrived as {} events",
                lane.label, sample.events
            ));
        }
    }
    let upstream_streams = mock.answered_requests(lane.upstream()) - upstream_before;
    if upstream_streams != WARMUP_STREAMS {
        return Err(format!(
            "streamed lane {}: {WARMUP_STREAMS} streams through the gateway, {upstream_streams} answered by the mock in the {:?} protocol",
            lane.label,
            lane.upstream()
        ));
    }
    Ok(())
}

/// One closed loop through the gateway and the gateway CPU it cost, read `CPU_TAIL` after the
/// loop ends.
fn measured_loop(
    gateway: &GatewayUnderTest,
    request: &Arc<Vec<u8>>,
    kind: LoadKind,
    duration: Duration,
) -> (LoadOutcome, u64) {
    let cpu_before = cpu_micros(gateway.pid);
    let outcome = closed_loop(
        gateway.address,
        Arc::clone(request),
        kind,
        CONVERSION_CONCURRENCY,
        duration,
    );
    std::thread::sleep(CPU_TAIL);
    let cpu_after = cpu_micros(gateway.pid);
    let cpu = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => 0,
    };
    (outcome, cpu)
}

fn absorb(total: &mut LoadOutcome, round: LoadOutcome) {
    total.completed += round.completed;
    total.elapsed += round.elapsed;
    total.events += round.events;
    total.latencies.extend(round.latencies);
    total.errors.absorb(round.errors);
}

#[cfg(test)]
mod tests {
    use crate::conversion::{CpuRound, paired_cpu_ratio, pooled_cpu_per_unit, rotated};

    #[test]
    fn rounds_rotate_which_lane_goes_first() {
        let orders: Vec<Vec<usize>> = (0..5).map(|round| rotated(round, 4).collect()).collect();
        assert_eq!(orders[0], [0, 1, 2, 3]);
        assert_eq!(orders[1], [1, 2, 3, 0]);
        assert_eq!(orders[3], [3, 0, 1, 2]);
        assert_eq!(orders[4], [0, 1, 2, 3]);
        assert_eq!(rotated(7, 0).count(), 0);
    }

    #[test]
    fn cpu_ratios_pair_rounds_and_take_the_median() {
        let round = |cpu_micros, units| CpuRound { cpu_micros, units };
        // The baseline doubles its cost in round 2 (a noisy neighbour); the lane does too, so
        // every paired ratio is 1.5 although the pooled figures drift.
        let baseline = [round(1000, 10), round(2000, 10), round(1000, 10)];
        let lane = [round(1500, 10), round(3000, 10), round(1500, 10)];
        assert_eq!(paired_cpu_ratio(&lane, &baseline), Some(1.5));
        assert_eq!(pooled_cpu_per_unit(&baseline), Some(4000.0 / 30.0));
        // One outlying round does not move the median; rounds with no work are skipped.
        let lane = [
            round(1500, 10),
            round(9000, 10),
            round(1500, 10),
            round(5, 0),
        ];
        assert_eq!(paired_cpu_ratio(&lane, &baseline), Some(1.5));
        let even = [round(1000, 10), round(3000, 10)];
        assert_eq!(paired_cpu_ratio(&even, &baseline[..2]), Some(1.25));
        assert_eq!(paired_cpu_ratio(&[], &baseline), None);
        assert_eq!(pooled_cpu_per_unit(&[round(7, 0)]), None);
    }
}
