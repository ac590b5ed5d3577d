//! Health of each channel's upstream keys: which key a request should use, and which keys are
//! cooling down after a rate limit, an auth failure or an exhausted quota.
//!
//! Spreading rule: among the keys that may be used, pick the one picked least recently. The
//! recency is a pick counter, not the clock, so many picks within one millisecond still rotate
//! through the keys like round robin; only keys never picked tie, and those ties are broken at
//! random so that several gateway nodes started together do not all hammer the first key. This
//! replaces Octopus's "lowest cumulative cost" rule, which sent every request to the same key
//! until its cost overtook the others.
//!
//! Cooldowns are the fix for Octopus #245: there a failed forward recorded status 0, so the
//! "skip keys that returned 429" rule never fired and a rate-limited key kept being chosen. Here
//! the relay reports the outcome through `record_rate_limited` and friends, and the very next
//! pick skips the key.
//!
//! Key ids must be the stored (non-zero) ids: all state is kept per (channel id, key id).
//! Times are milliseconds of any monotonic clock, the same one for every call on one book.

use std::time::Duration;

use foldhash::HashMap;

use crate::relay::rng::Rng;
use crate::store::entities::ChannelKey;

/// Cooldown lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPoolConfig {
    /// Cooldown after a 429 without a usable `Retry-After`.
    pub rate_limit_cooldown_ms: u64,
    /// Upper bound on an upstream's `Retry-After`, so a hostile or broken value (a day, a year)
    /// cannot bench a key for longer than an admin would notice.
    pub max_retry_after_ms: u64,
    /// Cooldown after 401/403: the key is revoked or lacks access, which rarely fixes itself
    /// within minutes, so it stays out long enough not to waste an attempt per request.
    pub auth_failure_cooldown_ms: u64,
    /// Cooldown after a 402 or a 429 that says the quota or balance is used up.
    pub quota_exhausted_cooldown_ms: u64,
}

impl Default for KeyPoolConfig {
    fn default() -> KeyPoolConfig {
        KeyPoolConfig {
            rate_limit_cooldown_ms: 60_000,
            max_retry_after_ms: 600_000,
            auth_failure_cooldown_ms: 30 * 60_000,
            quota_exhausted_cooldown_ms: 30 * 60_000,
        }
    }
}

/// Why a key is cooling down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CooldownReason {
    RateLimited,
    AuthFailed,
    QuotaExhausted,
}

/// The key chosen for an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyChoice {
    /// Position of the key in the `keys` slice passed to `pick_key`.
    pub key_index: usize,
    pub key_id: i64,
}

/// The outcome of `pick_key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPick {
    Chosen(KeyChoice),
    /// Every enabled key not excluded is cooling down; the earliest becomes usable at
    /// `free_at_ms`. The caller moves on to the next item and can report when to come back.
    AllCoolingDown {
        free_at_ms: u64,
    },
    /// No enabled key is left that this request has not tried already.
    NoKeyLeft,
}

/// A key that is cooling down, for the admin panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyCooldown {
    pub channel_id: i64,
    pub key_id: i64,
    pub reason: CooldownReason,
    pub remaining_ms: u64,
}

/// Per-key state of every channel.
#[derive(Debug, Default)]
pub struct KeyHealth {
    config: KeyPoolConfig,
    channels: HashMap<i64, HashMap<i64, KeyState>>,
    /// Increases with every pick; a key's `last_pick` is the value it had when picked.
    pick_sequence: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct KeyState {
    /// 0 means never picked.
    last_pick: u64,
    cooldown: Option<Cooldown>,
}

#[derive(Clone, Copy, Debug)]
struct Cooldown {
    started_ms: u64,
    until_ms: u64,
    reason: CooldownReason,
}

impl KeyState {
    fn cooling_until(&self, now_ms: u64) -> Option<u64> {
        self.cooldown
            .map(|cooldown| cooldown.until_ms)
            .filter(|&until_ms| until_ms > now_ms)
    }
}

impl KeyHealth {
    pub fn new(config: KeyPoolConfig) -> KeyHealth {
        KeyHealth {
            config,
            channels: HashMap::default(),
            pick_sequence: 0,
        }
    }

    /// Chooses the key for the next attempt on `channel_id`: an enabled key, not in `exclude`
    /// (the ids this request already tried), not cooling down, picked least recently. The
    /// choice counts as a use of the key.
    pub fn pick_key(
        &mut self,
        channel_id: i64,
        keys: &[ChannelKey],
        exclude: &[i64],
        now_ms: u64,
        rng: &mut Rng,
    ) -> KeyPick {
        let channel = self.channels.entry(channel_id).or_default();
        // Keys removed from the channel would otherwise stay in the book forever.
        if channel.len() > keys.len() {
            channel.retain(|key_id, _| keys.iter().any(|key| key.id == *key_id));
        }

        let mut earliest_free_ms: Option<u64> = None;
        let mut best: Option<(KeyChoice, u64)> = None;
        let mut tied_with_best = 0u64;
        for (key_index, key) in keys.iter().enumerate() {
            if !key.enabled || exclude.contains(&key.id) {
                continue;
            }
            let state = channel.get(&key.id).copied().unwrap_or_default();
            if let Some(until_ms) = state.cooling_until(now_ms) {
                earliest_free_ms = Some(earliest_free_ms.map_or(until_ms, |ms| ms.min(until_ms)));
                continue;
            }
            let choice = KeyChoice {
                key_index,
                key_id: key.id,
            };
            match best {
                Some((_, best_last_pick)) if state.last_pick > best_last_pick => {}
                Some((_, best_last_pick)) if state.last_pick == best_last_pick => {
                    // Reservoir sampling: the k-th tied key replaces the choice with
                    // probability 1/k, which leaves every tied key equally likely.
                    tied_with_best += 1;
                    if rng.below(tied_with_best) == 0 {
                        best = Some((choice, state.last_pick));
                    }
                }
                _ => {
                    best = Some((choice, state.last_pick));
                    tied_with_best = 1;
                }
            }
        }

        match (best, earliest_free_ms) {
            (Some((choice, _)), _) => {
                self.pick_sequence += 1;
                channel.entry(choice.key_id).or_default().last_pick = self.pick_sequence;
                KeyPick::Chosen(choice)
            }
            (None, Some(free_at_ms)) => KeyPick::AllCoolingDown { free_at_ms },
            (None, None) => KeyPick::NoKeyLeft,
        }
    }

    /// The key got a 429. It cools down for `retry_after` (capped at `max_retry_after_ms`) when
    /// the upstream sent one, else for `rate_limit_cooldown_ms`. A zero `Retry-After` is
    /// honoured: the upstream says the key is usable again now.
    pub fn record_rate_limited(
        &mut self,
        channel_id: i64,
        key_id: i64,
        retry_after: Option<Duration>,
        now_ms: u64,
    ) {
        let length_ms = match retry_after {
            Some(retry_after) => duration_ms(retry_after).min(self.config.max_retry_after_ms),
            None => self.config.rate_limit_cooldown_ms,
        };
        self.start_cooldown(
            channel_id,
            key_id,
            CooldownReason::RateLimited,
            length_ms,
            now_ms,
        );
    }

    /// The key got a 401 or 403.
    pub fn record_auth_failure(&mut self, channel_id: i64, key_id: i64, now_ms: u64) {
        let length_ms = self.config.auth_failure_cooldown_ms;
        self.start_cooldown(
            channel_id,
            key_id,
            CooldownReason::AuthFailed,
            length_ms,
            now_ms,
        );
    }

    /// The key's quota or balance is used up (a 402, or a 429 that says so).
    pub fn record_quota_exhausted(&mut self, channel_id: i64, key_id: i64, now_ms: u64) {
        let length_ms = self.config.quota_exhausted_cooldown_ms;
        self.start_cooldown(
            channel_id,
            key_id,
            CooldownReason::QuotaExhausted,
            length_ms,
            now_ms,
        );
    }

    /// An attempt with the key, sent at `attempt_started_ms`, succeeded. A cooldown that began
    /// before the attempt was sent ends: the key has proven it works again. A cooldown that
    /// began while the attempt was in flight stays, because the upstream accepted this request
    /// before it started refusing others.
    pub fn record_success(&mut self, channel_id: i64, key_id: i64, attempt_started_ms: u64) {
        let Some(state) = self
            .channels
            .get_mut(&channel_id)
            .and_then(|channel| channel.get_mut(&key_id))
        else {
            return;
        };
        if state
            .cooldown
            .is_some_and(|cooldown| cooldown.started_ms < attempt_started_ms)
        {
            state.cooldown = None;
        }
    }

    /// Every key still cooling down at `now_ms`, sorted by channel and key id.
    pub fn cooling_keys(&self, now_ms: u64) -> Vec<KeyCooldown> {
        let mut cooling_keys: Vec<KeyCooldown> = self
            .channels
            .iter()
            .flat_map(|(&channel_id, channel)| {
                channel.iter().filter_map(move |(&key_id, state)| {
                    let cooldown = state.cooldown?;
                    let until_ms = state.cooling_until(now_ms)?;
                    Some(KeyCooldown {
                        channel_id,
                        key_id,
                        reason: cooldown.reason,
                        remaining_ms: until_ms - now_ms,
                    })
                })
            })
            .collect();
        cooling_keys.sort_by_key(|cooling_key| (cooling_key.channel_id, cooling_key.key_id));
        cooling_keys
    }

    fn start_cooldown(
        &mut self,
        channel_id: i64,
        key_id: i64,
        reason: CooldownReason,
        length_ms: u64,
        now_ms: u64,
    ) {
        let state = self
            .channels
            .entry(channel_id)
            .or_default()
            .entry(key_id)
            .or_default();
        let until_ms = now_ms.saturating_add(length_ms);
        // A short rate-limit cooldown must not cut short a running auth or quota cooldown.
        if state
            .cooling_until(now_ms)
            .is_some_and(|current_until_ms| current_until_ms >= until_ms)
        {
            return;
        }
        state.cooldown = Some(Cooldown {
            started_ms: now_ms,
            until_ms,
            reason,
        });
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::relay::key_pool::{
        CooldownReason, KeyChoice, KeyCooldown, KeyHealth, KeyPick, KeyPoolConfig,
    };
    use crate::relay::rng::Rng;
    use crate::store::entities::ChannelKey;

    const CHANNEL: i64 = 7;

    fn keys(ids: &[i64]) -> Vec<ChannelKey> {
        ids.iter()
            .map(|&id| ChannelKey {
                id,
                key: format!("sk-test-{id}"),
                enabled: true,
                remark: String::new(),
            })
            .collect()
    }

    fn chosen_id(pick: KeyPick) -> i64 {
        match pick {
            KeyPick::Chosen(choice) => choice.key_id,
            other => panic!("expected a key, got {other:?}"),
        }
    }

    #[test]
    fn r245_a_429_on_key_a_makes_the_next_pick_choose_key_b() {
        // See: Octopus #245. A 429 on one key must fall over to the channel's other key; there
        // the cooldown never fired because a failed forward recorded status 0.
        let channel_keys = keys(&[101, 102]);
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        let mut rng = Rng::new(1);
        let key_a = chosen_id(book.pick_key(CHANNEL, &channel_keys, &[], 1_000, &mut rng));
        let key_b = if key_a == 101 { 102 } else { 101 };
        book.record_rate_limited(CHANNEL, key_a, None, 1_000);

        // The same request retries with key A excluded and gets key B.
        let retry = book.pick_key(CHANNEL, &channel_keys, &[key_a], 1_000, &mut rng);
        assert_eq!(chosen_id(retry), key_b);
        // Later requests keep getting key B, although B was used more recently than A, until
        // A's cooldown is over; then the rotation includes A again.
        for now_ms in [1_001, 30_000, 60_999] {
            let pick = book.pick_key(CHANNEL, &channel_keys, &[], now_ms, &mut rng);
            assert_eq!(chosen_id(pick), key_b, "at {now_ms} ms");
        }
        let pick = book.pick_key(CHANNEL, &channel_keys, &[], 61_000, &mut rng);
        assert_eq!(chosen_id(pick), key_a);
    }

    #[test]
    fn picks_rotate_through_healthy_keys_within_one_millisecond() {
        let channel_keys = keys(&[1, 2, 3]);
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        let mut rng = Rng::new(9);
        let first_three: Vec<i64> = (0..3)
            .map(|_| chosen_id(book.pick_key(CHANNEL, &channel_keys, &[], 5, &mut rng)))
            .collect();
        let mut sorted = first_three.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![1, 2, 3]);
        // From then on the rotation repeats in the same order: least recently picked first.
        for round in 0..3 {
            for &expected in &first_three {
                let pick = book.pick_key(CHANNEL, &channel_keys, &[], 5, &mut rng);
                assert_eq!(chosen_id(pick), expected, "round {round}");
            }
        }
    }

    #[test]
    fn never_used_keys_tie_break_at_random_but_reproducibly() {
        let channel_keys = keys(&[1, 2, 3, 4]);
        let mut first_pick_counts = [0u32; 4];
        for seed in 0..4_000 {
            let mut book = KeyHealth::new(KeyPoolConfig::default());
            let pick = book.pick_key(CHANNEL, &channel_keys, &[], 0, &mut Rng::new(seed));
            first_pick_counts[(chosen_id(pick) - 1) as usize] += 1;
        }
        for count in first_pick_counts {
            assert!(
                (850..=1_150).contains(&count),
                "counts {first_pick_counts:?}"
            );
        }
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        let mut again = KeyHealth::new(KeyPoolConfig::default());
        assert_eq!(
            book.pick_key(CHANNEL, &channel_keys, &[], 0, &mut Rng::new(3)),
            again.pick_key(CHANNEL, &channel_keys, &[], 0, &mut Rng::new(3))
        );
    }

    #[test]
    fn skips_disabled_and_excluded_keys_and_reports_the_key_index() {
        let mut channel_keys = keys(&[1, 2, 3]);
        channel_keys[0].enabled = false;
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        let pick = book.pick_key(CHANNEL, &channel_keys, &[2], 0, &mut Rng::new(0));
        assert_eq!(
            pick,
            KeyPick::Chosen(KeyChoice {
                key_index: 2,
                key_id: 3
            })
        );
        let pick = book.pick_key(CHANNEL, &channel_keys, &[2, 3], 0, &mut Rng::new(0));
        assert_eq!(pick, KeyPick::NoKeyLeft);
        assert_eq!(
            book.pick_key(CHANNEL, &[], &[], 0, &mut Rng::new(0)),
            KeyPick::NoKeyLeft
        );
    }

    #[test]
    fn all_cooling_down_reports_the_earliest_free_time() {
        let channel_keys = keys(&[1, 2, 3]);
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        book.record_rate_limited(CHANNEL, 1, Some(Duration::from_secs(30)), 1_000);
        book.record_rate_limited(CHANNEL, 2, None, 1_000);
        book.record_auth_failure(CHANNEL, 3, 1_000);
        let pick = book.pick_key(CHANNEL, &channel_keys, &[], 2_000, &mut Rng::new(0));
        assert_eq!(pick, KeyPick::AllCoolingDown { free_at_ms: 31_000 });
        // Excluded keys do not count towards the earliest free time.
        let pick = book.pick_key(CHANNEL, &channel_keys, &[1], 2_000, &mut Rng::new(0));
        assert_eq!(pick, KeyPick::AllCoolingDown { free_at_ms: 61_000 });
        // Once the first cooldown is over the key is usable again.
        let pick = book.pick_key(CHANNEL, &channel_keys, &[], 31_000, &mut Rng::new(0));
        assert_eq!(chosen_id(pick), 1);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        book.record_rate_limited(CHANNEL, 1, Some(Duration::from_secs(5)), 0);
        book.record_rate_limited(CHANNEL, 2, Some(Duration::from_secs(86_400)), 0);
        book.record_rate_limited(CHANNEL, 3, Some(Duration::ZERO), 0);
        let remaining: Vec<(i64, u64)> = book
            .cooling_keys(0)
            .into_iter()
            .map(|cooling_key| (cooling_key.key_id, cooling_key.remaining_ms))
            .collect();
        assert_eq!(remaining, vec![(1, 5_000), (2, 600_000)]);
    }

    #[test]
    fn auth_and_quota_failures_cool_down_for_thirty_minutes_by_default() {
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        book.record_auth_failure(CHANNEL, 1, 0);
        book.record_quota_exhausted(CHANNEL, 2, 0);
        assert_eq!(
            book.cooling_keys(1_000),
            vec![
                KeyCooldown {
                    channel_id: CHANNEL,
                    key_id: 1,
                    reason: CooldownReason::AuthFailed,
                    remaining_ms: 1_799_000,
                },
                KeyCooldown {
                    channel_id: CHANNEL,
                    key_id: 2,
                    reason: CooldownReason::QuotaExhausted,
                    remaining_ms: 1_799_000,
                },
            ]
        );
        assert!(book.cooling_keys(1_800_000).is_empty());
    }

    #[test]
    fn cooldown_lengths_follow_the_config() {
        let config = KeyPoolConfig {
            rate_limit_cooldown_ms: 1_000,
            max_retry_after_ms: 2_000,
            auth_failure_cooldown_ms: 3_000,
            quota_exhausted_cooldown_ms: 4_000,
        };
        let mut book = KeyHealth::new(config);
        book.record_rate_limited(CHANNEL, 1, None, 0);
        book.record_rate_limited(CHANNEL, 2, Some(Duration::from_secs(60)), 0);
        book.record_auth_failure(CHANNEL, 3, 0);
        book.record_quota_exhausted(CHANNEL, 4, 0);
        let remaining: Vec<u64> = book
            .cooling_keys(0)
            .into_iter()
            .map(|cooling_key| cooling_key.remaining_ms)
            .collect();
        assert_eq!(remaining, vec![1_000, 2_000, 3_000, 4_000]);
    }

    #[test]
    fn a_rate_limit_does_not_shorten_a_longer_cooldown() {
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        book.record_auth_failure(CHANNEL, 1, 0);
        book.record_rate_limited(CHANNEL, 1, None, 10_000);
        let cooling = book.cooling_keys(10_000);
        assert_eq!(cooling[0].reason, CooldownReason::AuthFailed);
        assert_eq!(cooling[0].remaining_ms, 1_790_000);
        // A longer cooldown does replace a shorter one.
        book.record_rate_limited(CHANNEL, 2, None, 0);
        book.record_auth_failure(CHANNEL, 2, 0);
        assert_eq!(book.cooling_keys(0)[1].reason, CooldownReason::AuthFailed);
    }

    #[test]
    fn success_sent_after_the_cooldown_began_clears_it() {
        let channel_keys = keys(&[1]);
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        book.record_auth_failure(CHANNEL, 1, 1_000);
        book.record_success(CHANNEL, 1, 2_000);
        assert!(book.cooling_keys(2_500).is_empty());
        assert_eq!(
            chosen_id(book.pick_key(CHANNEL, &channel_keys, &[], 2_500, &mut Rng::new(0))),
            1
        );
    }

    #[test]
    fn success_of_an_attempt_sent_before_the_cooldown_keeps_it() {
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        book.record_rate_limited(CHANNEL, 1, None, 1_000);
        book.record_success(CHANNEL, 1, 900);
        book.record_success(CHANNEL, 1, 1_000);
        assert_eq!(book.cooling_keys(1_500).len(), 1);
        // A success for a key the book has never seen is a no-op.
        book.record_success(CHANNEL, 99, 0);
        book.record_success(99, 1, 0);
        assert_eq!(book.cooling_keys(1_500).len(), 1);
    }

    #[test]
    fn channels_keep_separate_state() {
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        book.record_rate_limited(1, 5, None, 0);
        let pick = book.pick_key(2, &keys(&[5]), &[], 0, &mut Rng::new(0));
        assert_eq!(chosen_id(pick), 5);
    }

    #[test]
    fn keys_removed_from_the_channel_are_forgotten() {
        let mut book = KeyHealth::new(KeyPoolConfig::default());
        book.record_rate_limited(CHANNEL, 1, None, 0);
        book.record_rate_limited(CHANNEL, 2, None, 0);
        assert_eq!(book.cooling_keys(0).len(), 2);
        let pick = book.pick_key(CHANNEL, &keys(&[3]), &[], 0, &mut Rng::new(0));
        assert_eq!(chosen_id(pick), 3);
        assert!(book.cooling_keys(0).is_empty());
    }
}
