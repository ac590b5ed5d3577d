//! Order statistics over latency samples kept as nanoseconds.

/// The nearest-rank percentile (`fraction` in 0..=1) of `samples`, which it sorts.
/// Returns 0 for no samples.
pub fn percentile(samples: &mut [u64], fraction: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    let rank = (fraction * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

pub fn median(samples: &mut [u64]) -> u64 {
    percentile(samples, 0.5)
}

/// The median of the per-round medians: robust against one round hit by a noisy neighbour.
pub fn median_of_round_medians(rounds: &[Vec<u64>]) -> u64 {
    let mut medians: Vec<u64> = rounds
        .iter()
        .filter(|round| !round.is_empty())
        .map(|round| median(&mut round.clone()))
        .collect();
    median(&mut medians)
}

/// All samples of all rounds in one vector.
pub fn pooled(rounds: &[Vec<u64>]) -> Vec<u64> {
    rounds.iter().flatten().copied().collect()
}
