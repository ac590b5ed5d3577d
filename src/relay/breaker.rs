//! Circuit breakers per (channel, key, model): stop sending traffic to an upstream that keeps
//! failing, and let a single probe through once its cooldown has passed.
//!
//! States and transitions (users asked for exactly this with a visible countdown, #168/#146):
//!
//! ```text
//!   Closed --N consecutive failures--> Open(cooldown) --cooldown over, next allow()--> HalfOpen
//!     ^                                   ^                                                |
//!     |                                   +----------- probe fails (trips + 1) ------------+
//!     +----------------------- any success (trips reset) ----------------------------------+
//! ```
//!
//! The cooldown is `base_cooldown_ms * 2^(trips - 1)`, capped at `max_cooldown_ms`. The book is a
//! plain struct with an injected millisecond clock; the relay shares one behind a mutex. Any
//! monotonic millisecond clock works as long as every call on one book uses the same one.

use std::collections::HashMap;

/// What one breaker guards: an upstream model reached through one key of one channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BreakerKey {
    pub channel_id: i64,
    pub key_id: i64,
    /// The model name sent upstream (the group item's model).
    pub model: String,
}

/// Tuning for every breaker of a book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker; 0 behaves as 1.
    pub failure_threshold: u32,
    /// Cooldown after the first trip; it doubles with every further trip.
    pub base_cooldown_ms: u64,
    /// Upper bound of the doubled cooldown.
    pub max_cooldown_ms: u64,
    /// How long an admitted probe may stay unreported before another probe is admitted. A probe
    /// whose outcome never arrives (the coroutine panicked, a bug skipped the report) would
    /// otherwise keep the breaker half-open forever.
    pub probe_lease_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 5,
            base_cooldown_ms: 60_000,
            max_cooldown_ms: 600_000,
            probe_lease_ms: 120_000,
        }
    }
}

/// The answer to "may this attempt go upstream?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerDecision {
    /// The breaker is closed: go ahead.
    Allow,
    /// The cooldown is over and this attempt is the single probe; its outcome decides whether
    /// the breaker closes or opens again. The caller must report it (success, failure or
    /// inconclusive).
    HalfOpenProbe,
    /// Skip this (channel, key, model). While a probe is in flight `retry_in_ms` is what is
    /// left of the probe's lease, the latest moment another attempt could be admitted.
    Open { retry_in_ms: u64 },
}

/// The state of one breaker that is not closed, for the admin panel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenBreaker {
    pub key: BreakerKey,
    /// How many times in a row the breaker has opened without a success in between.
    pub trips: u32,
    pub phase: OpenPhase,
}

/// Where an open breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenPhase {
    /// Still cooling down.
    CoolingDown { retry_in_ms: u64 },
    /// The cooldown is over; the next attempt becomes the probe.
    ReadyToProbe,
    /// A probe is in flight.
    Probing,
}

/// All breakers of the gateway. Breakers that are closed with no recent failure take no memory.
#[derive(Debug, Default)]
pub struct BreakerBook {
    config: BreakerConfig,
    entries: HashMap<BreakerKey, Entry>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    consecutive_failures: u32,
    trips: u32,
    phase: Phase,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Closed,
    Open { until_ms: u64 },
    HalfOpen { lease_until_ms: u64 },
}

impl BreakerBook {
    pub fn new(config: BreakerConfig) -> BreakerBook {
        BreakerBook {
            config,
            entries: HashMap::new(),
        }
    }

    /// Decides whether an attempt on `key` may go upstream now. Admitting the probe is a state
    /// change, which is why this takes `&mut self`.
    pub fn allow(&mut self, key: &BreakerKey, now_ms: u64) -> BreakerDecision {
        let Some(entry) = self.entries.get_mut(key) else {
            return BreakerDecision::Allow;
        };
        match entry.phase {
            Phase::Closed => BreakerDecision::Allow,
            Phase::Open { until_ms } if now_ms < until_ms => BreakerDecision::Open {
                retry_in_ms: until_ms - now_ms,
            },
            Phase::HalfOpen { lease_until_ms } if now_ms < lease_until_ms => {
                BreakerDecision::Open {
                    retry_in_ms: lease_until_ms - now_ms,
                }
            }
            // Either the cooldown is over, or the previous probe's lease ran out unreported.
            Phase::Open { .. } | Phase::HalfOpen { .. } => {
                entry.phase = Phase::HalfOpen {
                    lease_until_ms: now_ms.saturating_add(self.config.probe_lease_ms),
                };
                BreakerDecision::HalfOpenProbe
            }
        }
    }

    /// An attempt on `key` succeeded: the breaker closes and forgets its trips.
    ///
    /// A success counts in every state, including from a request admitted before the breaker
    /// opened: it is direct evidence that the upstream works.
    pub fn record_success(&mut self, key: &BreakerKey) {
        self.entries.remove(key);
    }

    /// An attempt on `key` failed in a way that counts against the upstream (see
    /// `retry::effects`).
    pub fn record_failure(&mut self, key: &BreakerKey, now_ms: u64) {
        let config = self.config;
        let entry = match self.entries.get_mut(key) {
            Some(entry) => entry,
            None => self.entries.entry(key.clone()).or_insert(Entry {
                consecutive_failures: 0,
                trips: 0,
                phase: Phase::Closed,
            }),
        };
        match entry.phase {
            Phase::Closed => {
                entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
                if entry.consecutive_failures >= config.failure_threshold.max(1) {
                    trip(entry, &config, now_ms);
                }
            }
            // Requests admitted before the breaker opened keep finishing for a while; their
            // failures are old news and must not stretch the cooldown or stack trips.
            Phase::Open { .. } => {}
            Phase::HalfOpen { .. } => trip(entry, &config, now_ms),
        }
    }

    /// An attempt on `key` ended without saying anything about the upstream's health (the
    /// client left, the request itself was bad, the key was rate limited). If it was the probe,
    /// the probe slot is freed at once so the next attempt can probe instead of waiting out the
    /// lease; otherwise nothing changes.
    pub fn record_inconclusive(&mut self, key: &BreakerKey, now_ms: u64) {
        if let Some(entry) = self.entries.get_mut(key)
            && let Phase::HalfOpen { .. } = entry.phase
        {
            entry.phase = Phase::Open { until_ms: now_ms };
        }
    }

    /// Every breaker that is not closed, sorted by key, with its remaining cooldown.
    pub fn snapshot(&self, now_ms: u64) -> Vec<OpenBreaker> {
        let mut open_breakers: Vec<OpenBreaker> = self
            .entries
            .iter()
            .filter_map(|(key, entry)| {
                let phase = match entry.phase {
                    Phase::Closed => return None,
                    Phase::Open { until_ms } if now_ms < until_ms => OpenPhase::CoolingDown {
                        retry_in_ms: until_ms - now_ms,
                    },
                    Phase::Open { .. } => OpenPhase::ReadyToProbe,
                    Phase::HalfOpen { lease_until_ms } if now_ms < lease_until_ms => {
                        OpenPhase::Probing
                    }
                    Phase::HalfOpen { .. } => OpenPhase::ReadyToProbe,
                };
                Some(OpenBreaker {
                    key: key.clone(),
                    trips: entry.trips,
                    phase,
                })
            })
            .collect();
        open_breakers.sort_by(|left, right| left.key.cmp(&right.key));
        open_breakers
    }
}

/// The cooldown after the `trips`-th consecutive trip: doubling from the base, capped.
fn cooldown_ms(config: &BreakerConfig, trips: u32) -> u64 {
    let doublings = trips.saturating_sub(1);
    let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
    config
        .base_cooldown_ms
        .saturating_mul(factor)
        .min(config.max_cooldown_ms)
}

fn trip(entry: &mut Entry, config: &BreakerConfig, now_ms: u64) {
    entry.trips = entry.trips.saturating_add(1);
    entry.consecutive_failures = 0;
    let until_ms = now_ms.saturating_add(cooldown_ms(config, entry.trips));
    entry.phase = Phase::Open { until_ms };
}

#[cfg(test)]
mod tests {
    use crate::relay::breaker::{
        BreakerBook, BreakerConfig, BreakerDecision, BreakerKey, OpenBreaker, OpenPhase,
        cooldown_ms,
    };

    fn key(model: &str) -> BreakerKey {
        BreakerKey {
            channel_id: 1,
            key_id: 10,
            model: model.to_string(),
        }
    }

    fn fail_times(book: &mut BreakerBook, key: &BreakerKey, times: u32, now_ms: u64) {
        for _ in 0..times {
            book.record_failure(key, now_ms);
        }
    }

    #[test]
    fn default_config_matches_the_documented_values() {
        let config = BreakerConfig::default();
        assert_eq!(config.failure_threshold, 5);
        assert_eq!(config.base_cooldown_ms, 60_000);
        assert_eq!(config.max_cooldown_ms, 600_000);
    }

    #[test]
    fn cooldown_doubles_per_trip_up_to_the_cap() {
        let config = BreakerConfig::default();
        let cooldowns: Vec<u64> = (1..=6).map(|trips| cooldown_ms(&config, trips)).collect();
        assert_eq!(
            cooldowns,
            vec![60_000, 120_000, 240_000, 480_000, 600_000, 600_000]
        );
        assert_eq!(cooldown_ms(&config, u32::MAX), 600_000);
    }

    #[test]
    fn unknown_key_is_allowed_and_stays_out_of_the_snapshot() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        assert_eq!(book.allow(&key("m"), 0), BreakerDecision::Allow);
        assert!(book.snapshot(0).is_empty());
    }

    #[test]
    fn stays_closed_below_the_threshold() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 4, 1_000);
        assert_eq!(book.allow(&key("m"), 1_000), BreakerDecision::Allow);
        assert!(book.snapshot(1_000).is_empty());
    }

    #[test]
    fn a_success_resets_the_consecutive_failure_count() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 4, 1_000);
        book.record_success(&key("m"));
        fail_times(&mut book, &key("m"), 4, 2_000);
        assert_eq!(book.allow(&key("m"), 2_000), BreakerDecision::Allow);
    }

    #[test]
    fn opens_after_threshold_consecutive_failures_and_counts_down() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 5, 1_000);
        assert_eq!(
            book.allow(&key("m"), 1_000),
            BreakerDecision::Open {
                retry_in_ms: 60_000
            }
        );
        assert_eq!(
            book.allow(&key("m"), 31_000),
            BreakerDecision::Open {
                retry_in_ms: 30_000
            }
        );
        assert_eq!(
            book.snapshot(31_000),
            vec![OpenBreaker {
                key: key("m"),
                trips: 1,
                phase: OpenPhase::CoolingDown {
                    retry_in_ms: 30_000
                },
            }]
        );
    }

    #[test]
    fn breakers_are_independent_per_model_key_and_channel() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 5, 0);
        assert_eq!(book.allow(&key("other-model"), 0), BreakerDecision::Allow);
        let other_key = BreakerKey {
            key_id: 11,
            ..key("m")
        };
        assert_eq!(book.allow(&other_key, 0), BreakerDecision::Allow);
        let other_channel = BreakerKey {
            channel_id: 2,
            ..key("m")
        };
        assert_eq!(book.allow(&other_channel, 0), BreakerDecision::Allow);
    }

    #[test]
    fn after_the_cooldown_exactly_one_probe_is_admitted() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 5, 0);
        assert_eq!(
            book.allow(&key("m"), 60_000),
            BreakerDecision::HalfOpenProbe
        );
        // A second attempt while the probe is in flight is turned away until the lease ends.
        assert_eq!(
            book.allow(&key("m"), 60_500),
            BreakerDecision::Open {
                retry_in_ms: 119_500
            }
        );
        assert_eq!(book.snapshot(60_500)[0].phase, OpenPhase::Probing);
    }

    #[test]
    fn a_successful_probe_closes_and_resets_trips() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 5, 0);
        assert_eq!(
            book.allow(&key("m"), 60_000),
            BreakerDecision::HalfOpenProbe
        );
        book.record_success(&key("m"));
        assert_eq!(book.allow(&key("m"), 60_001), BreakerDecision::Allow);
        assert!(book.snapshot(60_001).is_empty());
        // Trips were reset: the next trip cools down for the base period again.
        fail_times(&mut book, &key("m"), 5, 100_000);
        assert_eq!(
            book.allow(&key("m"), 100_000),
            BreakerDecision::Open {
                retry_in_ms: 60_000
            }
        );
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubled_cooldown() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 5, 0);
        assert_eq!(
            book.allow(&key("m"), 60_000),
            BreakerDecision::HalfOpenProbe
        );
        book.record_failure(&key("m"), 61_000);
        assert_eq!(
            book.allow(&key("m"), 61_000),
            BreakerDecision::Open {
                retry_in_ms: 120_000
            }
        );
        assert_eq!(book.snapshot(61_000)[0].trips, 2);

        // Keep failing probes: 240 s, 480 s, then the 600 s cap.
        let mut now_ms = 61_000 + 120_000;
        for expected_cooldown_ms in [240_000, 480_000, 600_000, 600_000] {
            assert_eq!(
                book.allow(&key("m"), now_ms),
                BreakerDecision::HalfOpenProbe
            );
            book.record_failure(&key("m"), now_ms);
            assert_eq!(
                book.allow(&key("m"), now_ms),
                BreakerDecision::Open {
                    retry_in_ms: expected_cooldown_ms
                }
            );
            now_ms += expected_cooldown_ms;
        }
    }

    #[test]
    fn failures_while_open_do_not_extend_the_cooldown() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 5, 0);
        fail_times(&mut book, &key("m"), 20, 30_000);
        assert_eq!(
            book.allow(&key("m"), 30_000),
            BreakerDecision::Open {
                retry_in_ms: 30_000
            }
        );
        assert_eq!(book.snapshot(30_000)[0].trips, 1);
    }

    #[test]
    fn a_success_while_open_closes_the_breaker() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 5, 0);
        book.record_success(&key("m"));
        assert_eq!(book.allow(&key("m"), 1), BreakerDecision::Allow);
    }

    #[test]
    fn an_inconclusive_probe_frees_the_probe_slot_at_once() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 5, 0);
        assert_eq!(
            book.allow(&key("m"), 60_000),
            BreakerDecision::HalfOpenProbe
        );
        book.record_inconclusive(&key("m"), 61_000);
        assert_eq!(book.snapshot(61_000)[0].phase, OpenPhase::ReadyToProbe);
        assert_eq!(
            book.allow(&key("m"), 61_000),
            BreakerDecision::HalfOpenProbe
        );
        assert_eq!(book.snapshot(61_000)[0].trips, 1);
    }

    #[test]
    fn an_inconclusive_outcome_leaves_closed_and_cooling_breakers_alone() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 4, 0);
        book.record_inconclusive(&key("m"), 0);
        book.record_failure(&key("m"), 0);
        assert_eq!(
            book.allow(&key("m"), 0),
            BreakerDecision::Open {
                retry_in_ms: 60_000
            }
        );
        book.record_inconclusive(&key("m"), 10_000);
        assert_eq!(
            book.allow(&key("m"), 10_000),
            BreakerDecision::Open {
                retry_in_ms: 50_000
            }
        );
    }

    #[test]
    fn an_unreported_probe_is_replaced_after_its_lease() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 5, 0);
        assert_eq!(
            book.allow(&key("m"), 60_000),
            BreakerDecision::HalfOpenProbe
        );
        assert_eq!(
            book.allow(&key("m"), 179_999),
            BreakerDecision::Open { retry_in_ms: 1 }
        );
        assert_eq!(
            book.allow(&key("m"), 180_000),
            BreakerDecision::HalfOpenProbe
        );
    }

    #[test]
    fn cooldown_over_without_traffic_shows_ready_to_probe() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("m"), 5, 0);
        assert_eq!(book.snapshot(60_000)[0].phase, OpenPhase::ReadyToProbe);
    }

    #[test]
    fn a_zero_threshold_opens_on_the_first_failure() {
        let config = BreakerConfig {
            failure_threshold: 0,
            ..BreakerConfig::default()
        };
        let mut book = BreakerBook::new(config);
        book.record_failure(&key("m"), 0);
        assert_eq!(
            book.allow(&key("m"), 0),
            BreakerDecision::Open {
                retry_in_ms: 60_000
            }
        );
    }

    #[test]
    fn snapshot_lists_only_open_breakers_sorted_by_key() {
        let mut book = BreakerBook::new(BreakerConfig::default());
        fail_times(&mut book, &key("zeta"), 5, 0);
        fail_times(&mut book, &key("alpha"), 5, 0);
        fail_times(&mut book, &key("closed"), 2, 0);
        let models: Vec<String> = book
            .snapshot(0)
            .into_iter()
            .map(|open_breaker| open_breaker.key.model)
            .collect();
        assert_eq!(models, vec!["alpha".to_string(), "zeta".to_string()]);
    }
}
