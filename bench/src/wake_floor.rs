//! The machine's floor under the gateway's added latency: how long a one-byte round trip takes
//! between the bench's CPU and the gateway's CPU when no gateway is involved.
//!
//! At c=1 the gateway adds two cross-CPU round trips to every request: the client's request wakes
//! the gateway on its CPU and the gateway's upstream request wakes the mock on the bench's, then
//! the mock's answer wakes the gateway and the gateway's answer wakes the client. The direct arm
//! has none of them (client and mock share the bench's CPU). On a virtual machine, waking an idle
//! virtual CPU costs tens of microseconds or more, so this floor says how much of the "added"
//! column no gateway code can remove. It is measured in the same run, because it changes with the
//! host's load.
//!
//! Two threads of the bench process pass a byte back and forth over a Unix socket pair; the echo
//! thread is pinned to the gateway's CPU when the gateway is pinned.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::samples::percentile;

/// Round trips timed back to back (the c=1 latency phase sends its requests back to back).
const BACK_TO_BACK_ROUND_TRIPS: usize = 2_000;
/// Round trips timed with a pause before each, like a client that pauses between requests or a
/// stream whose events arrive 20 ms apart; the receiving CPU has gone idle by then.
const SPACED_ROUND_TRIPS: usize = 150;
const SPACING: Duration = Duration::from_millis(20);

/// Round-trip times in nanoseconds, sorted.
pub struct WakeFloor {
    pub back_to_back: Vec<u64>,
    pub spaced: Vec<u64>,
    pub spacing: Duration,
    /// The CPU the echo thread ran on, if pinned.
    pub echo_cpu: Option<u32>,
}

/// The floor under the gateway's added latency at `fraction` (0.5 for the median) of `samples`:
/// two round trips, as one relayed request makes.
pub fn added_latency_floor(samples: &[u64], fraction: f64) -> u64 {
    2 * percentile(&mut samples.to_vec(), fraction)
}

/// Measures the round trips (about 3.5 s). `echo_cpu` is the gateway's CPU when it is pinned.
pub fn measure(echo_cpu: Option<u32>) -> std::io::Result<WakeFloor> {
    let (mut near, mut far) = UnixStream::pair()?;
    let echo = std::thread::Builder::new().name("wake-floor-echo".to_string()).spawn(move || {
        if let Some(cpu) = echo_cpu {
            pin_current_thread(cpu);
        }
        let mut byte = [0u8; 1];
        // Ends when the measuring side closes its end (read returns 0) or on any error.
        while matches!(far.read(&mut byte), Ok(1)) {
            if far.write_all(&byte).is_err() {
                break;
            }
        }
    })?;
    let mut round_trip = |pause: Option<Duration>| -> std::io::Result<u64> {
        if let Some(pause) = pause {
            std::thread::sleep(pause);
        }
        let mut byte = [7u8; 1];
        let started = Instant::now();
        near.write_all(&byte)?;
        near.read_exact(&mut byte)?;
        Ok(started.elapsed().as_nanos() as u64)
    };
    // A few untimed round trips first, so the echo thread is pinned and parked in its read.
    for _ in 0..50 {
        round_trip(None)?;
    }
    let mut back_to_back = Vec::with_capacity(BACK_TO_BACK_ROUND_TRIPS);
    for _ in 0..BACK_TO_BACK_ROUND_TRIPS {
        back_to_back.push(round_trip(None)?);
    }
    let mut spaced = Vec::with_capacity(SPACED_ROUND_TRIPS);
    for _ in 0..SPACED_ROUND_TRIPS {
        spaced.push(round_trip(Some(SPACING))?);
    }
    drop(near);
    let _ = echo.join();
    back_to_back.sort_unstable();
    spaced.sort_unstable();
    Ok(WakeFloor { back_to_back, spaced, spacing: SPACING, echo_cpu })
}

/// Pins the calling thread to `cpu`. A failure leaves it unpinned, which the report's
/// pinning line already describes for the gateway.
pub fn pin_current_thread(cpu: u32) {
    // SAFETY: cpu_set_t is plain data, zeroed is its empty set, and sched_setaffinity(0, ...)
    // only changes the calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_two_round_trips_at_the_asked_percentile() {
        let round_trips: Vec<u64> = (1..=100).map(|micros| micros * 1_000).collect();
        assert_eq!(added_latency_floor(&round_trips, 0.5), 100_000);
        assert_eq!(added_latency_floor(&round_trips, 0.99), 198_000);
    }

    #[test]
    fn every_round_trip_is_timed_and_the_echo_thread_ends() {
        let floor = measure(None).expect("a Unix socket pair on this machine");
        assert_eq!((floor.back_to_back.len(), floor.spaced.len()), (BACK_TO_BACK_ROUND_TRIPS, SPACED_ROUND_TRIPS));
        assert!(floor.back_to_back.windows(2).all(|pair| pair[0] <= pair[1]), "sorted");
        assert!(floor.back_to_back[0] > 0 && floor.spaced[0] > 0);
        // The pause before a spaced round trip is not part of its time: the median trip takes
        // microseconds, far below the pause (a timed pause would put every trip above it).
        assert!(floor.spaced[floor.spaced.len() / 2] < SPACING.as_nanos() as u64, "the pause was timed");
    }
}
