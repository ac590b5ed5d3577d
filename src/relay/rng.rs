//! A small seeded pseudo-random generator (SplitMix64) for the relay's balancing decisions.
//!
//! Balancing needs fast, decent randomness, not secrecy, and its tests need to replay the same
//! choices from a fixed seed. SplitMix64 keeps eight bytes of state, passes the usual statistical
//! batteries for this kind of use, and costs a handful of arithmetic operations per number. In
//! production the caller seeds it from `crate::util::os_random_u64()`; tests pass a constant.

/// Letters of an alphanumeric id taken from one 64-bit draw (see `prefixed_alphanumeric`).
const DIGITS_PER_DRAW: usize = 10;

/// A SplitMix64 generator. Cheap to create, so the relay can make one per request.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        // The increment is the golden-ratio constant of SplitMix64; the two multiply-xorshift
        // rounds are its finaliser, which spreads every state bit over every output bit.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// A uniform number in `0..bound`, without modulo bias. `below(0)` returns 0.
    ///
    /// This is Lemire's multiply-and-reject method: the high half of a 128-bit product is
    /// uniform once the few low-half values that would favour small results are rejected.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            // A zero bound is a caller bug, but panicking in the request path would be worse than
            // returning the only value a `0..=0` range could hold.
            return 0;
        }
        let mut product = u128::from(self.next_u64()) * u128::from(bound);
        let mut low_half = product as u64;
        if low_half < bound {
            let threshold = bound.wrapping_neg() % bound;
            while low_half < threshold {
                product = u128::from(self.next_u64()) * u128::from(bound);
                low_half = product as u64;
            }
        }
        (product >> 64) as u64
    }

    /// A uniform number in `[0, 1)` with 53 bits of precision.
    pub fn unit_f64(&mut self) -> f64 {
        const TWO_TO_MINUS_53: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * TWO_TO_MINUS_53
    }

    /// Puts `values` in a uniformly random order (Fisher-Yates).
    pub fn shuffle<T>(&mut self, values: &mut [T]) {
        for upper in (1..values.len()).rev() {
            let other = self.below(upper as u64 + 1) as usize;
            values.swap(upper, other);
        }
    }

    /// `length` characters from `[0-9A-Za-z]`, for identifiers that must differ from each other
    /// but need not be secret (response and request ids made up for an upstream or a client).
    /// Secrets (keys, tokens) come from `crate::util::random_alphanumeric`, which asks the
    /// operating system each time: a system call per id was, before this, two of the syscalls
    /// of every relayed request.
    pub fn alphanumeric(&mut self, length: usize) -> String {
        self.prefixed_alphanumeric("", length)
    }

    /// `prefix` followed by `length` random letters and digits, allocated once (ids made for
    /// every request).
    pub fn prefixed_alphanumeric(&mut self, prefix: &str, length: usize) -> String {
        let alphabet = crate::util::ALPHANUMERIC;
        // Built as bytes: `String::push` encodes each char as UTF-8, several times the work
        // of a byte push, and the one check at the end is a fast ASCII scan.
        let mut id = Vec::with_capacity(prefix.len() + length);
        id.extend_from_slice(prefix.as_bytes());
        // One draw gives several letters: it is read as a fraction in [0, 1) whose base-62
        // digits are the letters' indexes. A digit is the high half of the fraction times 62 and
        // the low half is the rest of the fraction. 62 is even, so each digit leaves one more
        // low bit at zero; after DIGITS_PER_DRAW digits 54 random bits remain, and a digit's
        // bias stays below 62 / 2^54. A draw per letter cost five times as much.
        let mut fraction = 0u64;
        for index in 0..length {
            if index % DIGITS_PER_DRAW == 0 {
                fraction = self.next_u64();
            }
            let product = u128::from(fraction) * alphabet.len() as u128;
            id.push(alphabet[(product >> 64) as usize]);
            fraction = product as u64;
        }
        String::from_utf8(id).expect("a str prefix and ASCII letters")
    }
}

#[cfg(test)]
mod tests {
    use crate::relay::rng::Rng;

    #[test]
    fn alphanumeric_ids_use_the_whole_alphabet_and_differ_between_seeds() {
        let mut rng = Rng::new(11);
        let long = rng.alphanumeric(20_000);
        assert_eq!(long.len(), 20_000);
        let mut seen = std::collections::BTreeSet::new();
        for character in long.chars() {
            assert!(character.is_ascii_alphanumeric(), "{character:?}");
            seen.insert(character);
        }
        assert_eq!(seen.len(), 62, "every letter and digit appears");
        assert_ne!(Rng::new(1).alphanumeric(24), Rng::new(2).alphanumeric(24));
    }

    #[test]
    fn every_letter_of_a_draw_is_uniform() {
        // Ten letters share a draw, so the last of them, the most worn-down digit of the draw's
        // fraction, is checked position by position like the first.
        let mut rng = Rng::new(5);
        let ids: Vec<String> = (0..31_000).map(|_| rng.alphanumeric(12)).collect();
        for position in [0, 9, 10, 11] {
            let mut counts = [0u32; 62];
            for id in &ids {
                let letter = id.as_bytes()[position];
                let index = crate::util::ALPHANUMERIC.iter().position(|candidate| *candidate == letter).expect("a letter of the alphabet");
                counts[index] += 1;
            }
            // Each letter expects 500 (standard deviation about 22); 400..=600 is over four.
            assert!(counts.iter().all(|count| (400..=600).contains(count)), "position {position}: {counts:?}");
        }
    }

    #[test]
    fn seed_zero_matches_the_published_splitmix64_sequence() {
        // The first outputs of SplitMix64 seeded with 0, as printed by the reference C code.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn same_seed_gives_same_sequence_and_different_seeds_differ() {
        let mut first = Rng::new(42);
        let mut second = Rng::new(42);
        let mut third = Rng::new(43);
        let first_values: Vec<u64> = (0..16).map(|_| first.next_u64()).collect();
        let second_values: Vec<u64> = (0..16).map(|_| second.next_u64()).collect();
        let third_values: Vec<u64> = (0..16).map(|_| third.next_u64()).collect();
        assert_eq!(first_values, second_values);
        assert_ne!(first_values, third_values);
    }

    #[test]
    fn below_stays_in_range_and_covers_it_evenly() {
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 5];
        for _ in 0..50_000 {
            let value = rng.below(5);
            assert!(value < 5);
            counts[value as usize] += 1;
        }
        for count in counts {
            // Each bucket expects 10,000; 4% slack is far beyond six standard deviations.
            assert!(
                (9_600..=10_400).contains(&count),
                "uneven bucket: {counts:?}"
            );
        }
    }

    #[test]
    fn below_handles_edge_bounds() {
        let mut rng = Rng::new(1);
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
        for _ in 0..1_000 {
            assert!(rng.below(u64::MAX) < u64::MAX);
        }
    }

    #[test]
    fn unit_f64_is_in_the_half_open_unit_interval() {
        let mut rng = Rng::new(99);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let value = rng.unit_f64();
            assert!((0.0..1.0).contains(&value));
            sum += value;
        }
        let mean = sum / 10_000.0;
        assert!((0.48..0.52).contains(&mean), "mean {mean}");
    }

    #[test]
    fn shuffle_is_a_permutation_and_reproducible() {
        let mut values: Vec<u32> = (0..20).collect();
        let mut again = values.clone();
        Rng::new(5).shuffle(&mut values);
        Rng::new(5).shuffle(&mut again);
        assert_eq!(values, again);
        assert_ne!(values, (0..20).collect::<Vec<u32>>());
        let mut sorted = values.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<u32>>());

        let mut empty: [u8; 0] = [];
        Rng::new(5).shuffle(&mut empty);
        let mut single = [9];
        Rng::new(5).shuffle(&mut single);
        assert_eq!(single, [9]);
    }
}
