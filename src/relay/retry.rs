//! What the relay does after each upstream attempt: the single table of retry rules, what each
//! outcome means for key, breaker and endpoint health, and the cap on attempts and time.
//!
//! Every rule lives here so that the relay's loop only follows verdicts. The rules, with why:
//!
//! | outcome | verdict | health bookkeeping |
//! |---|---|---|
//! | connect error, connect timeout | next endpoint (same key) | demote the base URL |
//! | 401, 403 | next key | key cools down (auth) |
//! | 402, 429 with quota exhausted | next key | key cools down (quota) |
//! | 429 | next key | key cools down (`Retry-After` or default) |
//! | 408, 5xx, 3xx, nonsense status | next item | breaker failure |
//! | first-byte timeout, stream error before the first byte | next item | breaker failure |
//! | 400, 404, 413, 422, other 4xx | final | none |
//! | timeout or stream error after the first byte | final | breaker failure |
//! | client gone | final | none |
//! | success | final | breaker success |
//!
//! - Octopus B retried a member with the same key `max_attempts` times even on 401/403/404, and
//!   users asked to stop that (#376): an auth failure moves to another key at once and benches
//!   the key, and a 404 is answered at once (the relay issue makes 404 final: the client sees
//!   the upstream's own explanation instead of a retry storm).
//! - Octopus B looped until the client left when no member worked (#400, #374, #338): every
//!   request here has a `RetryBudget` with a finite attempt count and deadline, and a client
//!   that has gone ends the request.
//! - Octopus A fell over on any non-2xx, so a malformed request was sent to every channel in
//!   turn and the client got a generic 502 "all channels failed" instead of the upstream's
//!   explanation of what was wrong with it.
//! - Nothing is retried once bytes have reached the client: a second answer cannot be spliced
//!   into a response already half sent.
//!
//! Escalation: `RetryNextKey` becomes `RetryNextItem` when the channel has no other usable key
//! (`key_pool::KeyPick` is not `Chosen`), and `RetryNextEndpoint` becomes `RetryNextItem` when
//! every base URL of the channel has been tried with this key.

use std::time::Duration;

/// How one attempt at an upstream ended, as observed by the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// No connection: refused, reset during connect, DNS or TLS handshake failure.
    ConnectError,
    /// A phase ran out of time.
    Timeout { phase: TimeoutPhase },
    /// The upstream answered with a status that is not a success.
    UpstreamStatus {
        status: u16,
        /// The upstream's `Retry-After`, already parsed into a duration.
        retry_after: Option<Duration>,
        /// The upstream said the key's quota or balance is used up (for example OpenAI's
        /// `insufficient_quota` error code on a 429); the caller detects this from the body.
        quota_exhausted: bool,
    },
    /// The response or stream broke (bad framing, error event, reset) before any byte was sent
    /// to the client.
    StreamErrorBeforeFirstByte,
    /// The stream broke after bytes had reached the client.
    StreamErrorAfterFirstByte,
    /// The client disconnected; nobody is waiting for an answer any more.
    ClientGone,
    /// The upstream answered successfully.
    Success,
}

/// The phase in which a timeout fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// The TCP connect or TLS handshake did not finish.
    Connect,
    /// The request was sent but the response head (or, for a stream, the first event) did not
    /// arrive in time; nothing has reached the client yet.
    FirstByte,
    /// The response stalled after bytes had reached the client.
    AfterFirstByte,
}

/// What the relay does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same channel, another key: the failure belongs to the key (429, 401, 403, 402).
    RetryNextKey,
    /// Same key, another base URL of the channel: the failure belongs to the network path.
    RetryNextEndpoint,
    /// The next item of the group: the failure belongs to the channel or its model.
    RetryNextItem,
    /// Stop and answer the client with this outcome.
    Final,
}

/// A cooldown the key pool should apply to the key used in the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPenalty {
    /// `key_pool::KeyHealth::record_rate_limited`.
    RateLimited { retry_after: Option<Duration> },
    /// `key_pool::KeyHealth::record_auth_failure`.
    AuthFailed,
    /// `key_pool::KeyHealth::record_quota_exhausted`.
    QuotaExhausted,
}

/// What the attempt says about the (channel, key, model) circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerEffect {
    /// `breaker::BreakerBook::record_success`.
    Success,
    /// `breaker::BreakerBook::record_failure`.
    Failure,
    /// `breaker::BreakerBook::record_inconclusive`: the outcome says nothing about the
    /// upstream's health, but a probe must still give back its slot.
    Inconclusive,
}

/// Everything the relay records about an attempt's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptEffects {
    pub key_penalty: Option<KeyPenalty>,
    pub breaker: BreakerEffect,
    /// Call `endpoint_pick::EndpointBook::record_connect_failure` for the base URL used.
    pub demote_endpoint: bool,
}

/// The retry rule: what to do after an attempt ended with `outcome`.
pub fn classify(outcome: &AttemptOutcome) -> Verdict {
    match *outcome {
        // A connect failure says nothing about the key, so the key is kept and only the path
        // changes.
        AttemptOutcome::ConnectError => Verdict::RetryNextEndpoint,
        AttemptOutcome::Timeout {
            phase: TimeoutPhase::Connect,
        } => Verdict::RetryNextEndpoint,
        // The upstream took the request and did not answer in time; another channel may.
        AttemptOutcome::Timeout {
            phase: TimeoutPhase::FirstByte,
        } => Verdict::RetryNextItem,
        AttemptOutcome::Timeout {
            phase: TimeoutPhase::AfterFirstByte,
        } => Verdict::Final,
        AttemptOutcome::UpstreamStatus { status, .. } => classify_status(status),
        AttemptOutcome::StreamErrorBeforeFirstByte => Verdict::RetryNextItem,
        AttemptOutcome::StreamErrorAfterFirstByte => Verdict::Final,
        AttemptOutcome::ClientGone => Verdict::Final,
        AttemptOutcome::Success => Verdict::Final,
    }
}

/// The bookkeeping rule: what an attempt that ended with `outcome` means for the health of the
/// key, the breaker and the base URL it used.
pub fn effects(outcome: &AttemptOutcome) -> AttemptEffects {
    let neutral = AttemptEffects {
        key_penalty: None,
        breaker: BreakerEffect::Inconclusive,
        demote_endpoint: false,
    };
    let upstream_failure = AttemptEffects {
        breaker: BreakerEffect::Failure,
        ..neutral
    };
    match *outcome {
        // The path is at fault, not the key or the model, so the breaker is left alone.
        AttemptOutcome::ConnectError
        | AttemptOutcome::Timeout {
            phase: TimeoutPhase::Connect,
        } => AttemptEffects {
            demote_endpoint: true,
            ..neutral
        },
        AttemptOutcome::Timeout { .. }
        | AttemptOutcome::StreamErrorBeforeFirstByte
        | AttemptOutcome::StreamErrorAfterFirstByte => upstream_failure,
        AttemptOutcome::UpstreamStatus {
            status,
            retry_after,
            quota_exhausted,
        } => match status_class(status, quota_exhausted) {
            StatusClass::RateLimited => AttemptEffects {
                key_penalty: Some(KeyPenalty::RateLimited { retry_after }),
                ..neutral
            },
            StatusClass::AuthFailed => AttemptEffects {
                key_penalty: Some(KeyPenalty::AuthFailed),
                ..neutral
            },
            StatusClass::QuotaExhausted => AttemptEffects {
                key_penalty: Some(KeyPenalty::QuotaExhausted),
                ..neutral
            },
            StatusClass::NotFound | StatusClass::RequestRejected => neutral,
            StatusClass::UpstreamFailure => upstream_failure,
        },
        AttemptOutcome::ClientGone => neutral,
        AttemptOutcome::Success => AttemptEffects {
            breaker: BreakerEffect::Success,
            ..neutral
        },
    }
}

/// The cap on one client request: at most `max_attempts` upstream attempts, none started after
/// `deadline_ms`. The relay always makes the first attempt and asks `may_try_again` after every
/// failed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudget {
    pub max_attempts: u32,
    pub deadline_ms: u64,
}

impl RetryBudget {
    /// The budget of a request that started at `started_ms`. `max_attempts` of 0 counts as 1;
    /// `total_timeout_ms` must already be resolved from the group or config default.
    pub fn new(max_attempts: u32, started_ms: u64, total_timeout_ms: u64) -> RetryBudget {
        RetryBudget {
            max_attempts: max_attempts.max(1),
            deadline_ms: started_ms.saturating_add(total_timeout_ms),
        }
    }

    /// Whether another attempt may start after `attempts_made` attempts.
    pub fn may_try_again(&self, attempts_made: u32, now_ms: u64) -> bool {
        attempts_made < self.max_attempts && now_ms < self.deadline_ms
    }

    /// Time left before the deadline; the relay caps each attempt's timeouts with it so that
    /// the last attempt cannot overrun the request's deadline.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.deadline_ms.saturating_sub(now_ms)
    }
}

/// The meaning of an upstream status, shared by `classify` and `effects` so they cannot drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatusClass {
    /// 429: this key is sending too fast.
    RateLimited,
    /// 401, 403: this key is revoked or lacks access.
    AuthFailed,
    /// 402, or a 429 that says the quota is gone: this key has no credit left. Waiting a minute
    /// does not help, so it is benched like an auth failure.
    QuotaExhausted,
    /// A 404: final, as the relay's contract says, and returned to the client in its own
    /// shape. It is not a breaker failure: a client asking for something that exists nowhere
    /// (an unknown `previous_response_id`) would otherwise trip the breakers of healthy
    /// channels.
    NotFound,
    /// 400, 413, 422 and the other 4xx: the request itself is refused, and would be refused
    /// by every channel. The first channel's answer is the one the client needs to see.
    RequestRejected,
    /// 408, 5xx (including Anthropic's 529 "overloaded"), a redirect (never followed: that
    /// would send the key to another host, so it means a misconfigured base URL), or a status
    /// outside 200..=599: the upstream is at fault.
    UpstreamFailure,
}

fn status_class(status: u16, quota_exhausted: bool) -> StatusClass {
    match status {
        429 if quota_exhausted => StatusClass::QuotaExhausted,
        429 => StatusClass::RateLimited,
        401 | 403 => StatusClass::AuthFailed,
        402 => StatusClass::QuotaExhausted,
        404 => StatusClass::NotFound,
        408 => StatusClass::UpstreamFailure,
        400..=499 => StatusClass::RequestRejected,
        // A success status should arrive as `AttemptOutcome::Success`; if one arrives here it
        // is final and blames nobody.
        200..=299 => StatusClass::RequestRejected,
        _ => StatusClass::UpstreamFailure,
    }
}

fn classify_status(status: u16) -> Verdict {
    // The quota flag only changes the bookkeeping, never the verdict.
    match status_class(status, false) {
        StatusClass::RateLimited | StatusClass::AuthFailed | StatusClass::QuotaExhausted => {
            Verdict::RetryNextKey
        }
        StatusClass::UpstreamFailure => Verdict::RetryNextItem,
        StatusClass::NotFound | StatusClass::RequestRejected => Verdict::Final,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::relay::retry::{
        AttemptEffects, AttemptOutcome, BreakerEffect, KeyPenalty, RetryBudget, TimeoutPhase,
        Verdict, classify, effects,
    };

    const NEUTRAL: AttemptEffects = AttemptEffects {
        key_penalty: None,
        breaker: BreakerEffect::Inconclusive,
        demote_endpoint: false,
    };
    const BREAKER_FAILURE: AttemptEffects = AttemptEffects {
        key_penalty: None,
        breaker: BreakerEffect::Failure,
        demote_endpoint: false,
    };
    const DEMOTE: AttemptEffects = AttemptEffects {
        key_penalty: None,
        breaker: BreakerEffect::Inconclusive,
        demote_endpoint: true,
    };
    const AUTH: AttemptEffects = AttemptEffects {
        key_penalty: Some(KeyPenalty::AuthFailed),
        breaker: BreakerEffect::Inconclusive,
        demote_endpoint: false,
    };
    const QUOTA: AttemptEffects = AttemptEffects {
        key_penalty: Some(KeyPenalty::QuotaExhausted),
        breaker: BreakerEffect::Inconclusive,
        demote_endpoint: false,
    };

    fn status(status: u16) -> AttemptOutcome {
        AttemptOutcome::UpstreamStatus {
            status,
            retry_after: None,
            quota_exhausted: false,
        }
    }

    fn rate_limited(retry_after: Option<Duration>) -> AttemptEffects {
        AttemptEffects {
            key_penalty: Some(KeyPenalty::RateLimited { retry_after }),
            ..NEUTRAL
        }
    }

    fn check(outcome: AttemptOutcome, verdict: Verdict, attempt_effects: AttemptEffects) {
        assert_eq!(classify(&outcome), verdict, "verdict for {outcome:?}");
        assert_eq!(
            effects(&outcome),
            attempt_effects,
            "effects for {outcome:?}"
        );
    }

    #[test]
    fn transport_outcomes() {
        let table = [
            (
                AttemptOutcome::ConnectError,
                Verdict::RetryNextEndpoint,
                DEMOTE,
            ),
            (
                AttemptOutcome::Timeout {
                    phase: TimeoutPhase::Connect,
                },
                Verdict::RetryNextEndpoint,
                DEMOTE,
            ),
            (
                AttemptOutcome::Timeout {
                    phase: TimeoutPhase::FirstByte,
                },
                Verdict::RetryNextItem,
                BREAKER_FAILURE,
            ),
            (
                AttemptOutcome::Timeout {
                    phase: TimeoutPhase::AfterFirstByte,
                },
                Verdict::Final,
                BREAKER_FAILURE,
            ),
            (
                AttemptOutcome::StreamErrorBeforeFirstByte,
                Verdict::RetryNextItem,
                BREAKER_FAILURE,
            ),
            (
                AttemptOutcome::StreamErrorAfterFirstByte,
                Verdict::Final,
                BREAKER_FAILURE,
            ),
            (AttemptOutcome::ClientGone, Verdict::Final, NEUTRAL),
            (
                AttemptOutcome::Success,
                Verdict::Final,
                AttemptEffects {
                    breaker: BreakerEffect::Success,
                    ..NEUTRAL
                },
            ),
        ];
        for (outcome, verdict, attempt_effects) in table {
            check(outcome, verdict, attempt_effects);
        }
    }

    #[test]
    fn every_status_class() {
        let table = [
            // Success statuses should arrive as `Success`; here they are final and neutral.
            (200, Verdict::Final, NEUTRAL),
            (204, Verdict::Final, NEUTRAL),
            // Nonsense and redirects: the upstream or its configured URL is broken.
            (0, Verdict::RetryNextItem, BREAKER_FAILURE),
            (101, Verdict::RetryNextItem, BREAKER_FAILURE),
            (301, Verdict::RetryNextItem, BREAKER_FAILURE),
            (307, Verdict::RetryNextItem, BREAKER_FAILURE),
            // The request is refused everywhere: answer with the first refusal (#376).
            (400, Verdict::Final, NEUTRAL),
            (405, Verdict::Final, NEUTRAL),
            (409, Verdict::Final, NEUTRAL),
            (413, Verdict::Final, NEUTRAL),
            (422, Verdict::Final, NEUTRAL),
            (451, Verdict::Final, NEUTRAL),
            // The key is at fault: never retried on the same key (#376).
            (401, Verdict::RetryNextKey, AUTH),
            (403, Verdict::RetryNextKey, AUTH),
            (402, Verdict::RetryNextKey, QUOTA),
            (429, Verdict::RetryNextKey, rate_limited(None)),
            // The channel lacks the model: try another item, blame nobody.
            (404, Verdict::Final, NEUTRAL),
            // The upstream is at fault.
            (408, Verdict::RetryNextItem, BREAKER_FAILURE),
            (500, Verdict::RetryNextItem, BREAKER_FAILURE),
            (501, Verdict::RetryNextItem, BREAKER_FAILURE),
            (502, Verdict::RetryNextItem, BREAKER_FAILURE),
            (503, Verdict::RetryNextItem, BREAKER_FAILURE),
            (504, Verdict::RetryNextItem, BREAKER_FAILURE),
            (529, Verdict::RetryNextItem, BREAKER_FAILURE),
            (599, Verdict::RetryNextItem, BREAKER_FAILURE),
            (600, Verdict::RetryNextItem, BREAKER_FAILURE),
            (u16::MAX, Verdict::RetryNextItem, BREAKER_FAILURE),
        ];
        for (status_code, verdict, attempt_effects) in table {
            check(status(status_code), verdict, attempt_effects);
        }
    }

    #[test]
    fn rate_limits_carry_retry_after_and_quota_exhaustion_is_auth_like() {
        let retry_after = Some(Duration::from_secs(17));
        check(
            AttemptOutcome::UpstreamStatus {
                status: 429,
                retry_after,
                quota_exhausted: false,
            },
            Verdict::RetryNextKey,
            rate_limited(retry_after),
        );
        // An exhausted quota moves to the next key and benches this one for long, whatever
        // `Retry-After` says: the quota will not come back within seconds.
        check(
            AttemptOutcome::UpstreamStatus {
                status: 429,
                retry_after,
                quota_exhausted: true,
            },
            Verdict::RetryNextKey,
            QUOTA,
        );
        // The quota flag on another status does not turn it into a key failure.
        check(
            AttemptOutcome::UpstreamStatus {
                status: 500,
                retry_after: None,
                quota_exhausted: true,
            },
            Verdict::RetryNextItem,
            BREAKER_FAILURE,
        );
    }

    #[test]
    fn budget_caps_attempts() {
        let budget = RetryBudget::new(3, 1_000, 60_000);
        assert_eq!(
            budget,
            RetryBudget {
                max_attempts: 3,
                deadline_ms: 61_000
            }
        );
        assert!(budget.may_try_again(1, 1_000));
        assert!(budget.may_try_again(2, 1_000));
        assert!(!budget.may_try_again(3, 1_000));
        assert!(!budget.may_try_again(u32::MAX, 1_000));
    }

    #[test]
    fn budget_caps_time() {
        let budget = RetryBudget::new(100, 1_000, 60_000);
        assert!(budget.may_try_again(1, 60_999));
        assert!(!budget.may_try_again(1, 61_000));
        assert_eq!(budget.remaining_ms(1_000), 60_000);
        assert_eq!(budget.remaining_ms(60_999), 1);
        assert_eq!(budget.remaining_ms(90_000), 0);
    }

    #[test]
    fn budget_edge_values() {
        // Zero attempts would make a request that never tries; it counts as one.
        let budget = RetryBudget::new(0, 0, 1_000);
        assert_eq!(budget.max_attempts, 1);
        assert!(!budget.may_try_again(1, 0));
        // A deadline beyond the clock's range saturates instead of wrapping into the past.
        let budget = RetryBudget::new(2, u64::MAX - 5, 1_000);
        assert_eq!(budget.deadline_ms, u64::MAX);
        assert!(budget.may_try_again(1, u64::MAX - 1));
    }

    #[test]
    fn an_endless_failure_loop_stops_within_the_budget() {
        // See: Octopus #400, #374, #338. Simulate a relay loop against an upstream that always
        // answers 503 after 2 s; the loop must end by the attempt cap or the deadline.
        let budget = RetryBudget::new(10, 0, 15_000);
        let mut now_ms = 0;
        let mut attempts_made = 0;
        loop {
            attempts_made += 1;
            now_ms += 2_000;
            assert_eq!(classify(&status(503)), Verdict::RetryNextItem);
            if !budget.may_try_again(attempts_made, now_ms) {
                break;
            }
            assert!(attempts_made < 100, "the budget never ran out");
        }
        assert_eq!(attempts_made, 8);
        assert_eq!(now_ms, 16_000);
    }
}
