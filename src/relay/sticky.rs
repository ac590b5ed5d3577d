//! Sticky routing: remembers which group item last served a client key, so its next requests
//! go to the same item while the entry lives (prompt caches on the provider side stay warm).
//!
//! The relay tries the remembered item first and falls back to the balancer's order; on a
//! success it calls `remember` again, which also refreshes the time to live. The table is
//! bounded: beyond its capacity the entry remembered longest ago is dropped, so a flood of
//! client keys cannot grow memory without limit. Times are milliseconds of any monotonic clock,
//! the same one for every call on one table.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Default capacity: comfortably more (client key, group) pairs than a small team uses.
pub const DEFAULT_STICKY_CAPACITY: usize = 10_000;

/// The sticky routing table of the gateway.
#[derive(Debug)]
pub struct StickyTable {
    capacity: usize,
    entries: HashMap<StickyKey, StickyEntry>,
    /// The same entries by the sequence number of their last `remember`, oldest first.
    by_age: BTreeMap<u64, StickyKey>,
    next_sequence: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StickyKey {
    client_key_id: i64,
    group_id: i64,
}

#[derive(Clone, Copy, Debug)]
struct StickyEntry {
    item_index: usize,
    expires_ms: u64,
    sequence: u64,
}

impl Default for StickyTable {
    fn default() -> StickyTable {
        StickyTable::new(DEFAULT_STICKY_CAPACITY)
    }
}

impl StickyTable {
    /// A table holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> StickyTable {
        StickyTable {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            next_sequence: 0,
        }
    }

    /// The item that last served this client key in this group, if the entry has not expired.
    /// It is a position in `Group::items` as it was when remembered: after a configuration
    /// change the caller must check that it is still in range and still usable.
    pub fn get(&mut self, client_key_id: i64, group_id: i64, now_ms: u64) -> Option<usize> {
        let key = StickyKey {
            client_key_id,
            group_id,
        };
        let entry = *self.entries.get(&key)?;
        if entry.expires_ms <= now_ms {
            self.remove(&key);
            return None;
        }
        Some(entry.item_index)
    }

    /// Remembers that `item_index` served this client key in this group, for `ttl` from
    /// `now_ms`. A zero `ttl` (stickiness turned off) forgets any entry instead.
    pub fn remember(
        &mut self,
        client_key_id: i64,
        group_id: i64,
        item_index: usize,
        ttl: Duration,
        now_ms: u64,
    ) {
        let key = StickyKey {
            client_key_id,
            group_id,
        };
        self.remove(&key);
        if ttl.is_zero() {
            return;
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.entries.insert(
            key,
            StickyEntry {
                item_index,
                expires_ms: now_ms.saturating_add(ttl_ms),
                sequence,
            },
        );
        self.by_age.insert(sequence, key);
        while self.entries.len() > self.capacity {
            let Some((_, oldest_key)) = self.by_age.pop_first() else {
                break;
            };
            self.entries.remove(&oldest_key);
        }
    }

    /// Number of entries held, expired ones included until they are looked up or evicted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn remove(&mut self, key: &StickyKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_age.remove(&entry.sequence);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::relay::sticky::{DEFAULT_STICKY_CAPACITY, StickyTable};

    const TTL: Duration = Duration::from_secs(300);

    #[test]
    fn remembers_per_client_key_and_group() {
        let mut table = StickyTable::default();
        table.remember(1, 10, 2, TTL, 0);
        table.remember(1, 11, 0, TTL, 0);
        table.remember(2, 10, 1, TTL, 0);
        assert_eq!(table.get(1, 10, 1_000), Some(2));
        assert_eq!(table.get(1, 11, 1_000), Some(0));
        assert_eq!(table.get(2, 10, 1_000), Some(1));
        assert_eq!(table.get(2, 11, 1_000), None);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let mut table = StickyTable::default();
        table.remember(1, 10, 2, TTL, 1_000);
        assert_eq!(table.get(1, 10, 300_999), Some(2));
        assert_eq!(table.get(1, 10, 301_000), None);
        // The expired entry was dropped on lookup.
        assert!(table.is_empty());
    }

    #[test]
    fn remembering_again_replaces_the_item_and_refreshes_the_ttl() {
        let mut table = StickyTable::default();
        table.remember(1, 10, 2, TTL, 0);
        table.remember(1, 10, 3, TTL, 200_000);
        assert_eq!(table.get(1, 10, 400_000), Some(3));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_zero_ttl_forgets_the_entry() {
        let mut table = StickyTable::default();
        table.remember(1, 10, 2, TTL, 0);
        table.remember(1, 10, 3, Duration::ZERO, 0);
        assert_eq!(table.get(1, 10, 0), None);
        assert!(table.is_empty());
    }

    #[test]
    fn beyond_capacity_the_oldest_remembered_entry_is_evicted() {
        let mut table = StickyTable::new(3);
        table.remember(1, 10, 0, TTL, 0);
        table.remember(2, 10, 0, TTL, 1);
        table.remember(3, 10, 0, TTL, 2);
        // Refreshing client 1 makes client 2 the oldest.
        table.remember(1, 10, 5, TTL, 3);
        table.remember(4, 10, 0, TTL, 4);
        assert_eq!(table.len(), 3);
        assert_eq!(table.get(2, 10, 5), None);
        assert_eq!(table.get(1, 10, 5), Some(5));
        assert_eq!(table.get(3, 10, 5), Some(0));
        assert_eq!(table.get(4, 10, 5), Some(0));
    }

    #[test]
    fn default_capacity_holds_ten_thousand_entries() {
        let mut table = StickyTable::default();
        let total = DEFAULT_STICKY_CAPACITY as i64 + 500;
        for client_key_id in 0..total {
            table.remember(client_key_id, 1, 0, TTL, client_key_id as u64);
        }
        assert_eq!(table.len(), DEFAULT_STICKY_CAPACITY);
        assert_eq!(table.get(499, 1, total as u64), None);
        assert_eq!(table.get(500, 1, total as u64), Some(0));
        assert_eq!(table.get(total - 1, 1, total as u64), Some(0));
    }

    #[test]
    fn capacity_zero_still_keeps_the_latest_entry() {
        let mut table = StickyTable::new(0);
        table.remember(1, 10, 4, TTL, 0);
        table.remember(2, 10, 6, TTL, 0);
        assert_eq!(table.get(1, 10, 0), None);
        assert_eq!(table.get(2, 10, 0), Some(6));
    }

    #[test]
    fn a_huge_ttl_saturates_instead_of_wrapping() {
        let mut table = StickyTable::default();
        table.remember(1, 10, 1, Duration::MAX, 5);
        assert_eq!(table.get(1, 10, u64::MAX - 1), Some(1));
    }
}
