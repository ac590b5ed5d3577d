//! Orders a group's usable items for one request according to the group's balancing mode.
//!
//! The result is a full order, not a single pick: the relay tries the items in this order until
//! one succeeds or the retry budget runs out, so every mode doubles as failover. Each item is
//! listed once, which is what keeps a request from bouncing between the same two items (the
//! Octopus fork re-picked at random and could repeat an item).

use crate::relay::rng::Rng;
use crate::store::entities::GroupMode;

/// One usable item of a group, as the balancer sees it.
///
/// The relay builds this list from `Group::items` after dropping every item that cannot serve
/// the request (disabled channel, channel without keys), so the balancer never needs to know
/// why an item is missing and every listed item is a real candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CandidateItem {
    /// Position of the item in `Group::items`. The balancer does not read it; it travels with
    /// the candidate so the caller can map a position in the result back to the group item.
    pub item_index: usize,
    /// Failover rank: lower is tried first.
    pub priority: i32,
    /// Relative share in weighted mode; 0 marks a standby item (see `order_items`).
    pub weight: u32,
}

/// The order in which to try `items`, as positions in `items` (not `item_index` values).
///
/// - `RoundRobin`: the list rotated left by `round_robin_counter % n`. The caller keeps one
///   counter per group and increments it per request. (Octopus shared one counter between all
///   groups, so a busy group skewed the rotation of every other group.)
/// - `Random`: a uniform shuffle.
/// - `Failover`: ascending `priority`; equal priorities keep their listed order.
/// - `Weighted`: the first item is drawn with probability `weight / total weight`, then the next
///   from the remaining items in the same way, and so on (weighted sampling without
///   replacement), so a failed first pick still falls over to the others in weighted order.
///   Items of weight 0 are standby items: they are never tried before an item with a positive
///   weight and come last, in listed order. If every weight is 0 the items are treated as equal,
///   which makes the mode behave like `Random` instead of refusing to serve.
///
/// An empty `items` gives an empty order.
pub fn order_items(
    mode: GroupMode,
    items: &[CandidateItem],
    round_robin_counter: u64,
    rng: &mut Rng,
) -> Vec<usize> {
    match mode {
        GroupMode::RoundRobin => round_robin_order(items.len(), round_robin_counter),
        GroupMode::Random => {
            let mut order: Vec<usize> = (0..items.len()).collect();
            rng.shuffle(&mut order);
            order
        }
        GroupMode::Failover => {
            let mut order: Vec<usize> = (0..items.len()).collect();
            // `sort_by_key` is stable, which is what keeps ties in listed order.
            order.sort_by_key(|&position| items[position].priority);
            order
        }
        GroupMode::Weighted => weighted_order(items, rng),
    }
}

fn round_robin_order(item_count: usize, round_robin_counter: u64) -> Vec<usize> {
    if item_count == 0 {
        return Vec::new();
    }
    let start = (round_robin_counter % item_count as u64) as usize;
    (0..item_count)
        .map(|offset| (start + offset) % item_count)
        .collect()
}

fn weighted_order(items: &[CandidateItem], rng: &mut Rng) -> Vec<usize> {
    let every_weight_is_zero = items.iter().all(|item| item.weight == 0);
    let effective_weight = |position: usize| -> u64 {
        if every_weight_is_zero {
            1
        } else {
            u64::from(items[position].weight)
        }
    };

    let mut order = Vec::with_capacity(items.len());
    // The draw pool holds the positive-weight items still undrawn, in listed order. Groups have
    // a handful of items, so the quadratic walk is cheaper than any cleverer structure.
    let mut pool: Vec<usize> = (0..items.len())
        .filter(|&position| effective_weight(position) > 0)
        .collect();
    while !pool.is_empty() {
        let total_weight: u64 = pool
            .iter()
            .map(|&position| effective_weight(position))
            .sum();
        let mut ticket = rng.below(total_weight);
        let mut drawn_slot = pool.len() - 1;
        for (slot, &position) in pool.iter().enumerate() {
            let weight = effective_weight(position);
            if ticket < weight {
                drawn_slot = slot;
                break;
            }
            ticket -= weight;
        }
        order.push(pool.remove(drawn_slot));
    }
    order.extend((0..items.len()).filter(|&position| effective_weight(position) == 0));
    order
}

#[cfg(test)]
mod tests {
    use crate::relay::balancer::{CandidateItem, order_items};
    use crate::relay::rng::Rng;
    use crate::store::entities::GroupMode;

    fn candidates(priorities_and_weights: &[(i32, u32)]) -> Vec<CandidateItem> {
        priorities_and_weights
            .iter()
            .enumerate()
            .map(|(position, &(priority, weight))| CandidateItem {
                // A different numbering than the positions, to catch any mix-up of the two.
                item_index: position * 10 + 3,
                priority,
                weight,
            })
            .collect()
    }

    fn assert_is_permutation(order: &[usize], item_count: usize) {
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..item_count).collect::<Vec<usize>>(),
            "not a permutation: {order:?}"
        );
    }

    #[test]
    fn every_mode_returns_an_empty_order_for_no_items() {
        for mode in [
            GroupMode::RoundRobin,
            GroupMode::Random,
            GroupMode::Failover,
            GroupMode::Weighted,
        ] {
            assert!(order_items(mode, &[], 5, &mut Rng::new(1)).is_empty());
        }
    }

    #[test]
    fn every_mode_returns_a_permutation() {
        let items = candidates(&[(2, 0), (1, 5), (2, 1), (0, 0), (1, 9)]);
        for mode in [
            GroupMode::RoundRobin,
            GroupMode::Random,
            GroupMode::Failover,
            GroupMode::Weighted,
        ] {
            for seed in 0..50 {
                let order = order_items(mode, &items, seed, &mut Rng::new(seed));
                assert_is_permutation(&order, items.len());
            }
        }
    }

    #[test]
    fn round_robin_cycles_exactly() {
        let items = candidates(&[(0, 1), (0, 1), (0, 1)]);
        let expected = [
            vec![0, 1, 2],
            vec![1, 2, 0],
            vec![2, 0, 1],
            vec![0, 1, 2],
            vec![1, 2, 0],
        ];
        for (counter, expected_order) in expected.iter().enumerate() {
            let order = order_items(
                GroupMode::RoundRobin,
                &items,
                counter as u64,
                &mut Rng::new(0),
            );
            assert_eq!(&order, expected_order, "counter {counter}");
        }
        // The counter wraps without a jump in the rotation.
        let order = order_items(GroupMode::RoundRobin, &items, u64::MAX, &mut Rng::new(0));
        assert_eq!(order, vec![0, 1, 2]); // u64::MAX % 3 == 0
    }

    #[test]
    fn round_robin_ignores_priority_and_weight() {
        let items = candidates(&[(9, 0), (0, 100)]);
        assert_eq!(
            order_items(GroupMode::RoundRobin, &items, 0, &mut Rng::new(0)),
            vec![0, 1]
        );
        assert_eq!(
            order_items(GroupMode::RoundRobin, &items, 1, &mut Rng::new(0)),
            vec![1, 0]
        );
    }

    #[test]
    fn failover_sorts_by_priority_and_keeps_ties_in_listed_order() {
        let items = candidates(&[(2, 1), (1, 1), (2, 1), (-1, 1), (1, 1)]);
        let order = order_items(GroupMode::Failover, &items, 7, &mut Rng::new(3));
        assert_eq!(order, vec![3, 1, 4, 0, 2]);
    }

    #[test]
    fn random_is_reproducible_for_a_seed() {
        let items = candidates(&[(0, 1); 6]);
        let first = order_items(GroupMode::Random, &items, 0, &mut Rng::new(11));
        let second = order_items(GroupMode::Random, &items, 0, &mut Rng::new(11));
        assert_eq!(first, second);
    }

    #[test]
    fn random_first_pick_is_roughly_uniform() {
        let items = candidates(&[(0, 1); 4]);
        let mut rng = Rng::new(2024);
        let mut first_pick_counts = [0u32; 4];
        let mut last_pick_counts = [0u32; 4];
        let draws = 40_000;
        for _ in 0..draws {
            let order = order_items(GroupMode::Random, &items, 0, &mut rng);
            first_pick_counts[order[0]] += 1;
            last_pick_counts[order[3]] += 1;
        }
        for counts in [first_pick_counts, last_pick_counts] {
            for count in counts {
                let share = f64::from(count) / f64::from(draws);
                assert!((share - 0.25).abs() < 0.015, "shares {counts:?}");
            }
        }
    }

    #[test]
    fn weighted_first_pick_follows_weights_1_3_6() {
        let items = candidates(&[(0, 1), (0, 3), (0, 6)]);
        let mut rng = Rng::new(0x5EED);
        let mut first_pick_counts = [0u32; 3];
        let draws = 100_000;
        for _ in 0..draws {
            let order = order_items(GroupMode::Weighted, &items, 0, &mut rng);
            first_pick_counts[order[0]] += 1;
        }
        for (count, expected_share) in first_pick_counts.iter().zip([0.10, 0.30, 0.60]) {
            let share = f64::from(*count) / f64::from(draws);
            assert!(
                (share - expected_share).abs() <= 0.015,
                "first-pick counts {first_pick_counts:?}"
            );
        }
    }

    #[test]
    fn weighted_second_pick_is_drawn_from_the_remaining_weights() {
        // With weights 1:3:6 and item 2 drawn first, item 1 follows with probability 3/4.
        let items = candidates(&[(0, 1), (0, 3), (0, 6)]);
        let mut rng = Rng::new(77);
        let mut orders_starting_with_item_2 = 0u32;
        let mut then_item_1 = 0u32;
        for _ in 0..40_000 {
            let order = order_items(GroupMode::Weighted, &items, 0, &mut rng);
            if order[0] == 2 {
                orders_starting_with_item_2 += 1;
                if order[1] == 1 {
                    then_item_1 += 1;
                }
            }
        }
        let share = f64::from(then_item_1) / f64::from(orders_starting_with_item_2);
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }

    #[test]
    fn weighted_puts_zero_weight_items_last_in_listed_order() {
        let items = candidates(&[(0, 0), (0, 5), (0, 0), (0, 1)]);
        for seed in 0..200 {
            let order = order_items(GroupMode::Weighted, &items, 0, &mut Rng::new(seed));
            assert_eq!(&order[2..], &[0, 2], "seed {seed}");
        }
    }

    #[test]
    fn weighted_with_all_zero_weights_behaves_like_equal_weights() {
        let items = candidates(&[(0, 0), (0, 0), (0, 0)]);
        let mut rng = Rng::new(8);
        let mut first_pick_counts = [0u32; 3];
        for _ in 0..30_000 {
            let order = order_items(GroupMode::Weighted, &items, 0, &mut rng);
            assert_is_permutation(&order, 3);
            first_pick_counts[order[0]] += 1;
        }
        for count in first_pick_counts {
            let share = f64::from(count) / 30_000.0;
            assert!(
                (share - 1.0 / 3.0).abs() < 0.015,
                "counts {first_pick_counts:?}"
            );
        }
    }

    #[test]
    fn weighted_is_reproducible_for_a_seed() {
        let items = candidates(&[(0, 2), (0, 7), (0, 1), (0, 4)]);
        let first = order_items(GroupMode::Weighted, &items, 0, &mut Rng::new(31));
        let second = order_items(GroupMode::Weighted, &items, 0, &mut Rng::new(31));
        assert_eq!(first, second);
    }
}
