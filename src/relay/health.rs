//! The relay's mutable health state (key cooldowns, breakers, endpoint latencies, sticky
//! routes, round-robin counters) behind one lock, plus the monotonic clock it is keyed on.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use foldhash::HashMap;

use crate::relay::breaker::{BreakerBook, BreakerConfig};
use crate::relay::endpoint_pick::EndpointBook;
use crate::relay::key_pool::{KeyHealth, KeyPoolConfig};
use crate::relay::sticky::StickyTable;

/// Everything the relay learns about upstreams while it runs. Each lock hold is a handful of
/// map operations, never IO, so a plain mutex is fine on coroutine workers.
pub struct Health {
    pub keys: KeyHealth,
    pub breakers: BreakerBook,
    pub endpoints: EndpointBook,
    pub sticky: StickyTable,
    pub round_robin_counters: HashMap<i64, u64>,
}

impl Health {
    pub fn new() -> Health {
        Health {
            keys: KeyHealth::new(KeyPoolConfig::default()),
            breakers: BreakerBook::new(BreakerConfig::default()),
            endpoints: EndpointBook::new(),
            sticky: StickyTable::new(10_000),
            round_robin_counters: HashMap::default(),
        }
    }

    /// The counter value for this request of `group_id`, then advanced.
    pub fn next_round_robin(&mut self, group_id: i64) -> u64 {
        let counter = self.round_robin_counters.entry(group_id).or_insert(0);
        let value = *counter;
        *counter = counter.wrapping_add(1);
        value
    }
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

/// The shared health state.
pub struct HealthCell {
    inner: Mutex<Health>,
    started: Instant,
}

impl HealthCell {
    pub fn new() -> HealthCell {
        HealthCell { inner: Mutex::new(Health::new()), started: Instant::now() }
    }

    pub fn lock(&self) -> MutexGuard<'_, Health> {
        // The books stay consistent between calls, so a panic elsewhere leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Milliseconds on the relay's monotonic clock.
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `instant` on the relay's monotonic clock, for a caller that has already read the clock.
    pub fn ms_at(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.started).as_millis() as u64
    }
}

impl Default for HealthCell {
    fn default() -> HealthCell {
        HealthCell::new()
    }
}
