//! Request-log ids made by the gateway: time-ordered, unique across nodes, and small enough to
//! survive a JavaScript number (below 2^53).
//!
//! An id is `(milliseconds since 2026-01-01) * 4096 + node * 128 + sequence`: 5 random bits name
//! the node and 7 bits count within a millisecond; past 128 in one millisecond the id borrows
//! the next millisecond, so ids only ever grow. 2^53 / 4096 ms is about 69 years of room.

use std::sync::Mutex;

/// 2026-01-01T00:00:00Z in Unix milliseconds.
const EPOCH_MS: i64 = 1_767_225_600_000;
const SEQUENCE_BITS: i64 = 7;
const NODE_BITS: i64 = 5;

pub struct LogIdGenerator {
    node: i64,
    /// The last (millisecond, sequence) handed out.
    last: Mutex<(i64, i64)>,
}

impl LogIdGenerator {
    pub fn new(seed: u64) -> LogIdGenerator {
        LogIdGenerator { node: (seed % (1 << NODE_BITS)) as i64, last: Mutex::new((0, 0)) }
    }

    /// A new id for a log written at `now_ms` (Unix milliseconds).
    pub fn next(&self, now_ms: i64) -> i64 {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let millis = (now_ms - EPOCH_MS).max(0);
        let (last_millis, last_sequence) = *last;
        let next = if millis > last_millis {
            (millis, 0)
        } else if last_sequence + 1 < (1 << SEQUENCE_BITS) {
            (last_millis, last_sequence + 1)
        } else {
            (last_millis + 1, 0)
        };
        *last = next;
        (next.0 << (NODE_BITS + SEQUENCE_BITS)) | (self.node << SEQUENCE_BITS) | next.1
    }
}

/// The smallest id made at or after `unix_millis`: time bounds become primary-key ranges.
pub fn first_id_at(unix_millis: i64) -> i64 {
    (unix_millis - EPOCH_MS).max(0) << (NODE_BITS + SEQUENCE_BITS)
}

/// The Unix milliseconds an id was made at (give or take the borrowed milliseconds).
pub fn millis_of(id: i64) -> i64 {
    (id >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_grow_even_past_128_in_one_millisecond_and_fit_javascript() {
        let generator = LogIdGenerator::new(3);
        let now = EPOCH_MS + 1_000;
        let ids: Vec<i64> = (0..300).map(|_| generator.next(now)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(millis_of(ids[0]), now);
        let far_future = EPOCH_MS + 60 * 365 * 24 * 3_600_000;
        assert!(generator.next(far_future) < (1_i64 << 53));
    }

    #[test]
    fn time_bounds_are_id_bounds() {
        let generator = LogIdGenerator::new(31);
        let at = EPOCH_MS + 77_000;
        let id = generator.next(at);
        assert!(first_id_at(at) <= id && id < first_id_at(at + 1));
        assert_eq!(first_id_at(0), 0);
    }

    #[test]
    fn a_clock_going_back_does_not_reuse_ids() {
        let generator = LogIdGenerator::new(0);
        let first = generator.next(EPOCH_MS + 5_000);
        let second = generator.next(EPOCH_MS + 4_000);
        assert!(second > first);
    }
}
