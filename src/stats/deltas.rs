//! Counters not yet written, per statistics bucket, found without copying the bucket's names.
//!
//! Every finished request adds to one bucket, and almost always to one that exists already. A map
//! keyed by `StatsKey` would need an owned key (two `String` copies) just to look it up; here the
//! key can be borrowed from the record, and the names are copied only when a bucket is new.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::store::entities::{StatsCounters, StatsKey};

/// A bucket as borrowed from a record.
#[derive(Clone, Copy, Debug)]
pub struct BucketRef<'record> {
    pub hour: i64,
    pub channel_id: i64,
    pub api_key_id: i64,
    pub group: &'record str,
    pub model: &'record str,
}

/// Counters per bucket.
#[derive(Default)]
pub struct Deltas {
    counters: HashMap<StatsKey, StatsCounters>,
    /// The bucket the last request went to, kept apart from the map: consecutive requests
    /// almost always share their bucket, and comparing it is cheaper than hashing its names.
    /// A bucket is never in both places.
    recent: Option<(StatsKey, StatsCounters)>,
}

impl Deltas {
    /// Adds to the bucket, creating it (and copying its names) when it is new.
    pub fn add(&mut self, bucket: BucketRef<'_>, counters: &StatsCounters) {
        if let Some((key, existing)) = &mut self.recent
            && key.parts() == bucket.parts()
        {
            existing.add(counters);
            return;
        }
        let mut promoted = match self.counters.remove_entry(&bucket as &dyn BucketView) {
            Some(entry) => entry,
            None => (
                StatsKey {
                    hour: bucket.hour,
                    channel_id: bucket.channel_id,
                    api_key_id: bucket.api_key_id,
                    group: bucket.group.to_string(),
                    model: bucket.model.to_string(),
                },
                StatsCounters::default(),
            ),
        };
        promoted.1.add(counters);
        if let Some((key, previous)) = self.recent.replace(promoted) {
            self.counters.insert(key, previous);
        }
    }

    /// Adds every bucket of `other`, leaving it empty.
    pub fn absorb(&mut self, other: &mut Deltas) {
        for (key, counters) in other.counters.drain().chain(other.recent.take()) {
            match &mut self.recent {
                Some((recent_key, recent)) if *recent_key == key => recent.add(&counters),
                _ => self.counters.entry(key).or_default().add(&counters),
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&StatsKey, &StatsCounters)> {
        self.counters.iter().chain(self.recent.iter().map(|(key, counters)| (key, counters)))
    }

    pub fn len(&self) -> usize {
        self.counters.len() + usize::from(self.recent.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.counters.clear();
        self.recent = None;
    }
}

/// What both an owned `StatsKey` and a `BucketRef` answer, so the map can be searched with
/// either. The hash must equal `StatsKey`'s derived one: the same fields in the same order
/// (checked by a test).
trait BucketView {
    fn parts(&self) -> (i64, i64, i64, &str, &str);
}

impl BucketView for StatsKey {
    fn parts(&self) -> (i64, i64, i64, &str, &str) {
        (self.hour, self.channel_id, self.api_key_id, &self.group, &self.model)
    }
}

impl BucketView for BucketRef<'_> {
    fn parts(&self) -> (i64, i64, i64, &str, &str) {
        (self.hour, self.channel_id, self.api_key_id, self.group, self.model)
    }
}

impl<'key> Borrow<dyn BucketView + 'key> for StatsKey {
    fn borrow(&self) -> &(dyn BucketView + 'key) {
        self
    }
}

impl Hash for dyn BucketView + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (hour, channel_id, api_key_id, group, model) = self.parts();
        hour.hash(state);
        channel_id.hash(state);
        api_key_id.hash(state);
        group.hash(state);
        model.hash(state);
    }
}

impl PartialEq for dyn BucketView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn BucketView + '_ {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, RandomState};

    fn one_request() -> StatsCounters {
        StatsCounters { requests: 1, success: 1, input_tokens: 10, ..StatsCounters::default() }
    }

    #[test]
    fn a_borrowed_bucket_hashes_like_the_owned_key() {
        let owned = StatsKey { hour: 3600, channel_id: 2, api_key_id: 3, group: "smart".to_string(), model: "gpt".to_string() };
        let borrowed = BucketRef { hour: 3600, channel_id: 2, api_key_id: 3, group: "smart", model: "gpt" };
        let hasher = RandomState::new();
        assert_eq!(hasher.hash_one(&owned), hasher.hash_one(&borrowed as &dyn BucketView));
        // A name moved from one field to the next must not land in the same bucket.
        let shifted = BucketRef { group: "smartgpt", model: "", ..borrowed };
        assert_ne!(hasher.hash_one(&owned), hasher.hash_one(&shifted as &dyn BucketView));
    }

    #[test]
    fn requests_of_one_bucket_add_up_and_other_buckets_stay_apart() {
        let mut deltas = Deltas::default();
        let bucket = BucketRef { hour: 0, channel_id: 1, api_key_id: 0, group: "g", model: "m" };
        deltas.add(bucket, &one_request());
        deltas.add(bucket, &one_request());
        deltas.add(BucketRef { model: "other", ..bucket }, &one_request());
        assert_eq!(deltas.len(), 2);
        let same: Vec<i64> = deltas.iter().filter(|(key, _)| key.model == "m").map(|(_, counters)| counters.requests).collect();
        assert_eq!(same, vec![2]);

        let mut total = Deltas::default();
        total.add(bucket, &one_request());
        total.absorb(&mut deltas);
        assert!(deltas.is_empty());
        let merged: Vec<(i64, i64)> = total.iter().filter(|(key, _)| key.model == "m").map(|(_, counters)| (counters.requests, counters.input_tokens)).collect();
        assert_eq!(merged, vec![(3, 30)]);
    }

    #[test]
    fn alternating_buckets_keep_one_entry_each() {
        let mut deltas = Deltas::default();
        let first = BucketRef { hour: 0, channel_id: 1, api_key_id: 0, group: "g", model: "m" };
        let second = BucketRef { channel_id: 2, ..first };
        for _ in 0..3 {
            deltas.add(first, &one_request());
            deltas.add(second, &one_request());
        }
        deltas.add(second, &one_request());
        assert_eq!(deltas.len(), 2);
        let mut counts: Vec<(i64, i64)> = deltas.iter().map(|(key, counters)| (key.channel_id, counters.requests)).collect();
        counts.sort_unstable();
        assert_eq!(counts, vec![(1, 3), (2, 4)]);

        // Absorbing into a map whose recent bucket is one of the incoming ones adds to it.
        let mut total = Deltas::default();
        total.add(second, &one_request());
        total.absorb(&mut deltas);
        assert!(deltas.is_empty());
        let mut totals: Vec<(i64, i64)> = total.iter().map(|(key, counters)| (key.channel_id, counters.requests)).collect();
        totals.sort_unstable();
        assert_eq!(totals, vec![(1, 3), (2, 5)]);
        total.clear();
        assert!(total.is_empty() && total.iter().next().is_none());
    }
}
