//! Bodies kept in request logs: secrets and media taken out, then cut to a size limit (the first
//! two input bytes, little-endian). The kept text never runs past the limit by more than the
//! note that says how much was cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::stats::redact::body_for_log;

/// The longest note `cut` appends (`…[N more bytes not kept]`, N up to 20 digits).
const MAX_NOTE_BYTES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let [low, high, body @ ..] = data else { return };
    let limit = usize::from(u16::from_le_bytes([*low, *high]));
    let kept = body_for_log(body, limit);
    assert!(
        kept.len() <= limit + MAX_NOTE_BYTES,
        "{} bytes kept for a limit of {limit}",
        kept.len()
    );
});
