//! The attempt loop of a relayed call, shared by generation (`forward.rs`) and embeddings: the
//! group's items in balancer order, each channel's keys from the key pool, each key's endpoints
//! in health order, under the retry budget and the call's deadline. Every attempt's effects on
//! key, breaker and endpoint health are applied here and every attempt is recorded; what an
//! attempt sends and what the caller does with the answer are the caller's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::HashMap;

use crate::http::ClientProbe;
use crate::relay::breaker::{BreakerDecision, BreakerKey};
use crate::relay::error::RelayError;
use crate::relay::forward::{AttemptResult, CallTrace};
use crate::relay::key_pool::KeyPick;
use crate::relay::record::AttemptRecord;
use crate::relay::retry::{classify, effects, AttemptOutcome, BreakerEffect, KeyPenalty, RetryBudget, Verdict};
use crate::relay::rng::Rng;
use crate::relay::RelayState;
use crate::store::entities::{Channel, ChannelKey, Group};
use crate::upstream::control::CallControl;

/// Where one attempt goes: a channel, one of its keys and base URLs, and the upstream model.
#[derive(Clone, Copy)]
pub(crate) struct AttemptTarget<'a> {
    pub channel: &'a Channel,
    pub key: &'a ChannelKey,
    pub base_url: &'a str,
    pub upstream_model: &'a str,
}

/// What bounds a call's attempts, besides the group's items.
pub(crate) struct AttemptLimits<'a> {
    pub budget: RetryBudget,
    /// The instant the call's total timeout runs out; no attempt starts at or after it.
    pub deadline: Instant,
    /// Cancelled when the client goes away while an attempt waits on the upstream.
    pub control: &'a CallControl,
    /// Probed between attempts, which can each take the length of an upstream timeout.
    pub client: &'a ClientProbe,
}

/// The attempt that answered: the index of its item in the group, and its answer (complete, or
/// a stream whose first events have arrived).
pub(crate) struct Answered {
    pub item_index: usize,
    pub result: AttemptResult,
}

/// Tries the group's items in `order` (indexes into `group.items`) until one answers, calling
/// `attempt` once per (item, key, endpoint) tried. A final failure, a client that has gone and
/// an exhausted budget end the loop; the error is the last attempt's, or a 503 saying why no
/// attempt could be made.
pub(crate) fn attempt_in_order(
    state: &RelayState,
    channels_by_id: &HashMap<i64, Arc<Channel>>,
    group: &Group,
    order: Vec<usize>,
    limits: &AttemptLimits,
    trace: &mut CallTrace,
    mut attempt: impl FnMut(&AttemptTarget) -> AttemptResult,
) -> Result<Answered, RelayError> {
    let mut attempts_made: u32 = 0;
    let mut last_error: Option<RelayError> = None;
    let mut skipped = SkippedItems::default();

    'items: for item_index in order {
        let item = &group.items[item_index];
        let Some(channel) = channels_by_id.get(&item.channel_id) else { continue };
        let mut tried_keys: Vec<i64> = Vec::new();
        'keys: loop {
            // One clock reading for the choice of key and the breaker's verdict.
            let now_ms = state.health.now_ms();
            if !limits.budget.may_try_again(attempts_made, now_ms) {
                break 'items;
            }
            let key = {
                let mut health = state.health.lock();
                let mut rng = Rng::new(state.next_seed());
                match health.keys.pick_key(channel.id, &channel.keys, &tried_keys, now_ms, &mut rng) {
                    KeyPick::Chosen(choice) => &channel.keys[choice.key_index],
                    KeyPick::AllCoolingDown { free_at_ms } => {
                        skipped.wait(&channel.name, "every key is cooling down", free_at_ms.saturating_sub(now_ms));
                        continue 'items;
                    }
                    KeyPick::NoKeyLeft => continue 'items,
                }
            };
            tried_keys.push(key.id);
            let breaker_key = BreakerKey { channel_id: channel.id, key_id: key.id, model: item.model.clone() };
            let decision = state.health.lock().breakers.allow(&breaker_key, now_ms);
            if let BreakerDecision::Open { retry_in_ms } = decision {
                let why = format!("skipped: circuit open ({} s left)", retry_in_ms.div_ceil(1000));
                trace.record.attempts.push(skipped_attempt(channel, key, &item.model, why));
                skipped.wait(&channel.name, "circuit open", retry_in_ms);
                continue 'keys;
            }
            let endpoint_order = state.health.lock().endpoints.order_endpoints(channel.id, &channel.base_urls);
            for endpoint_index in endpoint_order {
                let attempt_started = Instant::now();
                let attempt_started_ms = state.health.ms_at(attempt_started);
                // The remaining-time check covers the budget's millisecond rounding.
                if !limits.budget.may_try_again(attempts_made, attempt_started_ms)
                    || limits.deadline.saturating_duration_since(attempt_started).is_zero()
                {
                    break 'items;
                }
                // The probe is a system call; before the first attempt the request has only just
                // been read, so it would find the client there. It matters between attempts,
                // which can take the length of an upstream timeout.
                if (attempts_made > 0 && limits.client.is_closed()) || limits.control.is_cancelled() {
                    trace.record.attempts.push(skipped_attempt(channel, key, &item.model, "client gone".to_string()));
                    return Err(RelayError::ClientGone("the client closed the connection".to_string()));
                }
                let base_url = &channel.base_urls[endpoint_index];
                attempts_made += 1;
                let target = AttemptTarget { channel, key, base_url, upstream_model: &item.model };
                let result = attempt(&target);
                let duration = attempt_started.elapsed();
                record_attempt(state, trace, &target, &breaker_key, &result, duration, attempt_started_ms);
                match result {
                    AttemptResult::Failed { outcome, error, .. } => {
                        last_error = Some(error);
                        match classify(&outcome) {
                            Verdict::Final => break 'items,
                            Verdict::RetryNextEndpoint => continue,
                            Verdict::RetryNextKey => continue 'keys,
                            Verdict::RetryNextItem => continue 'items,
                        }
                    }
                    answer => return Ok(Answered { item_index, result: answer }),
                }
            }
            // Every endpoint of this channel failed to connect: the next item may be elsewhere.
            continue 'items;
        }
    }
    match last_error {
        Some(error) => Err(error),
        None => Err(skipped.into_error()),
    }
}

/// Applies an attempt's effects to key, breaker and endpoint health, adds it to the call's
/// record and makes its channel, key and model the record's (the last attempt's are the ones a
/// log shows).
fn record_attempt(
    state: &RelayState,
    trace: &mut CallTrace,
    target: &AttemptTarget,
    breaker_key: &BreakerKey,
    result: &AttemptResult,
    duration: Duration,
    attempt_started_ms: u64,
) {
    let (outcome, detail, status) = match result {
        AttemptResult::Failed { outcome, detail, .. } => {
            let status = match outcome {
                AttemptOutcome::UpstreamStatus { status, .. } => Some(*status),
                _ => None,
            };
            (*outcome, detail.clone(), status)
        }
        AttemptResult::Complete { status, .. } => (AttemptOutcome::Success, "success".to_string(), Some(*status)),
        AttemptResult::StreamReady { .. } => (AttemptOutcome::Success, "success".to_string(), Some(200)),
    };
    apply_effects(state, &outcome, target, breaker_key, duration, attempt_started_ms);
    let channel = target.channel;
    trace.record.attempts.push(AttemptRecord {
        channel_id: channel.id,
        channel_name: channel.name.clone(),
        key_id: target.key.id,
        base_url: target.base_url.to_string(),
        upstream_model: target.upstream_model.to_string(),
        outcome: detail,
        status,
        duration_ms: duration.as_millis() as u64,
    });
    trace.record.channel_id = Some(channel.id);
    trace.record.channel_name = channel.name.clone();
    trace.record.key_id = Some(target.key.id);
    trace.record.upstream_model = target.upstream_model.to_string();
}

/// What an attempt's outcome does to its key (penalties), its breaker and its endpoint.
fn apply_effects(
    state: &RelayState,
    outcome: &AttemptOutcome,
    target: &AttemptTarget,
    breaker_key: &BreakerKey,
    duration: Duration,
    attempt_started_ms: u64,
) {
    let (channel, key, base_url) = (target.channel, target.key, target.base_url);
    let effects = effects(outcome);
    // The attempt ended just now: its start and duration say when, without reading the clock.
    let now_ms = attempt_started_ms + duration.as_millis() as u64;
    let mut health = state.health.lock();
    match effects.key_penalty {
        Some(KeyPenalty::RateLimited { retry_after }) => health.keys.record_rate_limited(channel.id, key.id, retry_after, now_ms),
        Some(KeyPenalty::AuthFailed) => health.keys.record_auth_failure(channel.id, key.id, now_ms),
        Some(KeyPenalty::QuotaExhausted) => health.keys.record_quota_exhausted(channel.id, key.id, now_ms),
        None => {}
    }
    match effects.breaker {
        BreakerEffect::Success => health.breakers.record_success(breaker_key),
        BreakerEffect::Failure => health.breakers.record_failure(breaker_key, now_ms),
        BreakerEffect::Inconclusive => health.breakers.record_inconclusive(breaker_key, now_ms),
    }
    if effects.demote_endpoint {
        health.endpoints.record_connect_failure(channel.id, base_url);
    }
    if matches!(outcome, AttemptOutcome::Success) {
        health.keys.record_success(channel.id, key.id, attempt_started_ms);
        health.endpoints.record_first_byte(channel.id, base_url, duration);
    }
}

/// An attempt that was not made (open breaker, client gone), as the record shows it.
fn skipped_attempt(channel: &Channel, key: &ChannelKey, model: &str, outcome: String) -> AttemptRecord {
    AttemptRecord {
        channel_id: channel.id,
        channel_name: channel.name.clone(),
        key_id: key.id,
        base_url: String::new(),
        upstream_model: model.to_string(),
        outcome,
        status: None,
        duration_ms: 0,
    }
}

/// Why the items of a group were passed over without an attempt, and when the first of them may
/// take requests again: what a 503 tells the client (the reasons, and `Retry-After`).
#[derive(Default)]
struct SkippedItems {
    reasons: Vec<String>,
    shortest_wait_ms: Option<u64>,
}

impl SkippedItems {
    /// An item passed over until `wait_ms` from now (keys cooling down, an open breaker).
    fn wait(&mut self, channel_name: &str, why: &str, wait_ms: u64) {
        let wait_seconds = wait_ms.div_ceil(1000);
        self.reasons.push(format!("{channel_name}: {why} ({wait_seconds} s left)"));
        self.shortest_wait_ms = Some(self.shortest_wait_ms.map_or(wait_ms, |shortest| shortest.min(wait_ms)));
    }

    /// The 503 when no attempt could be made; `Retry-After` at least one second.
    fn into_error(self) -> RelayError {
        let reasons = if self.reasons.is_empty() { "no attempt was possible".to_string() } else { self.reasons.join("; ") };
        RelayError::NoAvailableChannel {
            message: format!("no upstream could take the request: {reasons}"),
            retry_after_seconds: self.shortest_wait_ms.map(|wait_ms| wait_ms.div_ceil(1000).max(1)),
        }
    }
}
