//! Per-client-key limits: requests per minute (`rpm`) and tokens per minute (`tpm`), 0 = off.
//!
//! Each key has two counters in fixed 60 s windows (aligned to the Unix minute). A counter is
//! one `AtomicU64` packing the window's number and the count, so starting a new window and
//! counting in it are one compare-and-swap: coroutines on every worker update it without a
//! lock, and no count is lost to a race between "reset" and "add". The counters live in a map
//! sharded by key id beside the snapshot; a shard's lock is only taken to find (or, once per key,
//! insert) the counters, never while counting.
//!
//! Requests are counted when they start (and refused over `rpm`); tokens are charged when a
//! request's record is finished and its usage known, and a request is refused while the current
//! window's tokens have reached `tpm`. A fixed window lets a client use up to twice the limit
//! across one window boundary; that is the usual trade for exact, lock-free counting.
//! The decisions take the time as an argument, so the tests need no clock.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use foldhash::HashMap;

use crate::store::entities::ApiKey;

/// Length of one window.
pub const WINDOW_MS: u64 = 60_000;
/// Number of map shards; a power of two comfortably above the worker count.
const SHARD_COUNT: usize = 16;
/// The low bits of a packed counter hold the count, the high bits the window number.
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Window numbers are kept modulo 2^24 minutes (about 31 years): only equality is compared.
const WINDOW_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// Why a request may not start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitRefusal {
    /// The key has started `limit` requests in this window.
    RequestsPerMinute { limit: u64, retry_after_seconds: u64 },
    /// The key's finished requests used `limit` tokens or more in this window.
    TokensPerMinute { limit: u64, retry_after_seconds: u64 },
}

impl LimitRefusal {
    /// Seconds until the window frees, for `Retry-After`.
    pub fn retry_after_seconds(&self) -> u64 {
        match self {
            LimitRefusal::RequestsPerMinute { retry_after_seconds, .. }
            | LimitRefusal::TokensPerMinute { retry_after_seconds, .. } => *retry_after_seconds,
        }
    }

    /// The message the client reads.
    pub fn message(&self) -> String {
        match self {
            LimitRefusal::RequestsPerMinute { limit, retry_after_seconds } => format!(
                "this API key is limited to {limit} requests per minute; retry in {retry_after_seconds} s"
            ),
            LimitRefusal::TokensPerMinute { limit, retry_after_seconds } => format!(
                "this API key is limited to {limit} tokens per minute; retry in {retry_after_seconds} s"
            ),
        }
    }
}

/// One counter in fixed windows, updated with compare-and-swap only.
#[derive(Default, Debug)]
pub struct WindowCounter {
    packed: AtomicU64,
}

impl WindowCounter {
    /// The count in the window containing `now_ms` (0 when the counter is from an older window).
    pub fn count(&self, now_ms: u64) -> u64 {
        let (window, count) = unpack(self.packed.load(Ordering::Acquire));
        if window == window_number(now_ms) { count } else { 0 }
    }

    /// Adds one if the window's count is below `limit`; returns whether it did.
    pub fn try_add_one(&self, limit: u64, now_ms: u64) -> bool {
        let current_window = window_number(now_ms);
        let mut observed = self.packed.load(Ordering::Acquire);
        loop {
            let (window, count) = unpack(observed);
            let count = if window == current_window { count } else { 0 };
            if count >= limit {
                return false;
            }
            match self.packed.compare_exchange_weak(observed, pack(current_window, count + 1), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => observed = actual,
            }
        }
    }

    /// Adds `amount` to the window containing `now_ms`, saturating at the count's capacity.
    pub fn add(&self, amount: u64, now_ms: u64) {
        let current_window = window_number(now_ms);
        let mut observed = self.packed.load(Ordering::Acquire);
        loop {
            let (window, count) = unpack(observed);
            let count = if window == current_window { count } else { 0 };
            let next = pack(current_window, count.saturating_add(amount).min(COUNT_MASK));
            match self.packed.compare_exchange_weak(observed, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => observed = actual,
            }
        }
    }
}

/// The counters of one client key.
#[derive(Default, Debug)]
pub struct KeyCounters {
    pub requests: WindowCounter,
    pub tokens: WindowCounter,
}

/// Every client key's counters, sharded by key id.
pub struct RateLimits {
    shards: Vec<RwLock<HashMap<i64, Arc<KeyCounters>>>>,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits { shards: (0..SHARD_COUNT).map(|_| RwLock::new(HashMap::default())).collect() }
    }
}

impl RateLimits {
    /// Checks the key's limits at `now_ms` and, when the request may start, counts it.
    /// Keys with both limits off cost nothing here.
    pub fn admit(&self, api_key: &ApiKey, now_ms: u64) -> Result<(), LimitRefusal> {
        if api_key.rpm == 0 && api_key.tpm == 0 {
            return Ok(());
        }
        let counters = self.counters(api_key.id);
        decide(&counters, api_key.rpm, api_key.tpm, now_ms)
    }

    /// Charges the tokens of a finished request to its key's current window. Charged whether or
    /// not the key has a `tpm` now, so a limit set later starts from the true count.
    pub fn charge_tokens(&self, api_key_id: i64, tokens: u64, now_ms: u64) {
        if tokens == 0 {
            return;
        }
        self.counters(api_key_id).tokens.add(tokens, now_ms);
    }

    /// Drops the counters of keys that no longer exist (called after each snapshot reload), so
    /// the map stays as small as the key list.
    pub fn forget_keys_except(&self, live_key_ids: &HashSet<i64>) {
        for shard in &self.shards {
            let mut map = shard.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if map.keys().any(|id| !live_key_ids.contains(id)) {
                map.retain(|id, _| live_key_ids.contains(id));
            }
        }
    }

    /// The counters of a key, created on first use.
    pub fn counters(&self, api_key_id: i64) -> Arc<KeyCounters> {
        let shard = &self.shards[(api_key_id as u64 as usize) % SHARD_COUNT];
        // The locks only guard the map's shape (a lookup or one insert), so a poisoned one still
        // holds a consistent map.
        if let Some(counters) = shard.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&api_key_id) {
            return counters.clone();
        }
        shard.write().unwrap_or_else(|poisoned| poisoned.into_inner()).entry(api_key_id).or_default().clone()
    }
}

/// The decision for one request: the token limit is checked first (it only reads), so a request
/// refused for tokens does not use up one of the key's requests.
pub fn decide(counters: &KeyCounters, rpm: u64, tpm: u64, now_ms: u64) -> Result<(), LimitRefusal> {
    let retry_after_seconds = seconds_until_next_window(now_ms);
    if tpm > 0 && counters.tokens.count(now_ms) >= tpm {
        return Err(LimitRefusal::TokensPerMinute { limit: tpm, retry_after_seconds });
    }
    if rpm > 0 && !counters.requests.try_add_one(rpm, now_ms) {
        return Err(LimitRefusal::RequestsPerMinute { limit: rpm, retry_after_seconds });
    }
    Ok(())
}

/// Whole seconds until the window containing `now_ms` ends, at least 1.
pub fn seconds_until_next_window(now_ms: u64) -> u64 {
    let remaining_ms = WINDOW_MS - now_ms % WINDOW_MS;
    remaining_ms.div_ceil(1000).max(1)
}

fn window_number(now_ms: u64) -> u64 {
    (now_ms / WINDOW_MS) & WINDOW_MASK
}

fn pack(window: u64, count: u64) -> u64 {
    ((window & WINDOW_MASK) << COUNT_BITS) | (count & COUNT_MASK)
}

fn unpack(packed: u64) -> (u64, u64) {
    (packed >> COUNT_BITS, packed & COUNT_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of some minute, well past the epoch.
    const MINUTE_START_MS: u64 = 29_000_000 * WINDOW_MS;

    fn key(id: i64, rpm: u64, tpm: u64) -> ApiKey {
        ApiKey {
            id,
            name: format!("key-{id}"),
            key_hash: String::new(),
            key_prefix: String::new(),
            enabled: true,
            expires_at: None,
            max_cost: None,
            allowed_models: Vec::new(),
            rpm,
            tpm,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn requests_over_rpm_are_refused_until_the_next_window() {
        let limits = RateLimits::default();
        let limited = key(1, 2, 0);
        assert_eq!(limits.admit(&limited, MINUTE_START_MS + 100), Ok(()));
        assert_eq!(limits.admit(&limited, MINUTE_START_MS + 200), Ok(()));
        assert_eq!(
            limits.admit(&limited, MINUTE_START_MS + 20_500),
            Err(LimitRefusal::RequestsPerMinute { limit: 2, retry_after_seconds: 40 })
        );
        // The refused request was not counted, and the next window starts from zero.
        assert_eq!(limits.counters(1).requests.count(MINUTE_START_MS + 59_999), 2);
        assert_eq!(limits.admit(&limited, MINUTE_START_MS + WINDOW_MS), Ok(()));
        assert_eq!(limits.counters(1).requests.count(MINUTE_START_MS + WINDOW_MS), 1);
    }

    #[test]
    fn tokens_are_charged_after_the_fact_and_checked_before_the_next_request() {
        let limits = RateLimits::default();
        let limited = key(7, 0, 1000);
        assert_eq!(limits.admit(&limited, MINUTE_START_MS), Ok(()));
        limits.charge_tokens(7, 999, MINUTE_START_MS + 1_000);
        // Below the limit a request may still start (and may then go over it).
        assert_eq!(limits.admit(&limited, MINUTE_START_MS + 2_000), Ok(()));
        limits.charge_tokens(7, 500, MINUTE_START_MS + 3_000);
        assert_eq!(
            limits.admit(&limited, MINUTE_START_MS + 59_001),
            Err(LimitRefusal::TokensPerMinute { limit: 1000, retry_after_seconds: 1 })
        );
        assert_eq!(limits.admit(&limited, MINUTE_START_MS + WINDOW_MS + 1), Ok(()));
    }

    #[test]
    fn a_token_refusal_does_not_use_up_a_request() {
        let limits = RateLimits::default();
        let limited = key(3, 5, 10);
        limits.charge_tokens(3, 10, MINUTE_START_MS);
        assert!(matches!(limits.admit(&limited, MINUTE_START_MS + 1), Err(LimitRefusal::TokensPerMinute { .. })));
        assert_eq!(limits.counters(3).requests.count(MINUTE_START_MS + 1), 0);
    }

    #[test]
    fn keys_are_counted_apart_and_unlimited_keys_are_not_tracked() {
        let limits = RateLimits::default();
        let limited = key(1, 1, 0);
        let other = key(17, 1, 0); // The same shard as key 1.
        let unlimited = key(2, 0, 0);
        assert_eq!(limits.admit(&limited, MINUTE_START_MS), Ok(()));
        assert!(limits.admit(&limited, MINUTE_START_MS).is_err());
        assert_eq!(limits.admit(&other, MINUTE_START_MS), Ok(()));
        for _ in 0..100 {
            assert_eq!(limits.admit(&unlimited, MINUTE_START_MS), Ok(()));
        }
        assert_eq!(limits.counters(2).requests.count(MINUTE_START_MS), 0);
    }

    #[test]
    fn counters_of_deleted_keys_are_forgotten() {
        let limits = RateLimits::default();
        limits.charge_tokens(1, 10, MINUTE_START_MS);
        limits.charge_tokens(2, 10, MINUTE_START_MS);
        limits.forget_keys_except(&HashSet::from([2]));
        assert_eq!(limits.counters(1).tokens.count(MINUTE_START_MS), 0);
        assert_eq!(limits.counters(2).tokens.count(MINUTE_START_MS), 10);
    }

    #[test]
    fn retry_after_counts_whole_seconds_to_the_window_end() {
        assert_eq!(seconds_until_next_window(MINUTE_START_MS), 60);
        assert_eq!(seconds_until_next_window(MINUTE_START_MS + 59_000), 1);
        assert_eq!(seconds_until_next_window(MINUTE_START_MS + 59_999), 1);
        assert_eq!(seconds_until_next_window(MINUTE_START_MS + 30_001), 30);
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_limit() {
        let limits = Arc::new(RateLimits::default());
        let limited = key(9, 1000, 0);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limits = limits.clone();
                let limited = limited.clone();
                std::thread::spawn(move || (0..500).filter(|_| limits.admit(&limited, MINUTE_START_MS + 5).is_ok()).count())
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|thread| thread.join().unwrap_or(0)).sum();
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn counts_saturate_instead_of_spilling_into_the_window_number() {
        let counter = WindowCounter::default();
        counter.add(u64::MAX, MINUTE_START_MS);
        counter.add(5, MINUTE_START_MS);
        assert_eq!(counter.count(MINUTE_START_MS), COUNT_MASK);
        assert_eq!(counter.count(MINUTE_START_MS + WINDOW_MS), 0);
    }
}
