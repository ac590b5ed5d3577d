//! The chunked request-body decoder, fed the input whole and in pieces (the second input byte
//! picks the split; the first picks the body and overhead caps).
//!
//! Properties: where the input is cut changes nothing (the same body, the same number of bytes
//! consumed, the same error), the body never exceeds its cap, and no more is consumed than given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::fuzz_entry::{ChunkedDecoder, ChunkedError};

/// What decoding gave: the body so far, the bytes consumed (0 after an error, which does not
/// say how far it got), whether the body ended, the error.
type Outcome = (Vec<u8>, usize, bool, Option<ChunkedError>);

fn decode(pieces: &[&[u8]], max_body_bytes: usize, max_overhead_bytes: usize) -> Outcome {
    let mut decoder = ChunkedDecoder::new(max_body_bytes, max_overhead_bytes);
    let mut body = Vec::new();
    let mut consumed_total = 0;
    for piece in pieces {
        match decoder.decode(piece, &mut body) {
            Ok(consumed) => {
                assert!(consumed <= piece.len());
                consumed_total += consumed;
                if decoder.is_done() {
                    break;
                }
                assert_eq!(
                    consumed,
                    piece.len(),
                    "an unfinished body leaves input unconsumed"
                );
            }
            Err(error) => return (body, 0, false, Some(error)),
        }
    }
    (body, consumed_total, decoder.is_done(), None)
}

fuzz_target!(|data: &[u8]| {
    let [settings, seed, stream @ ..] = data else {
        return;
    };
    let max_body_bytes = [0, 1, 16, 1024, 1 << 20, usize::MAX][usize::from(*settings) % 6];
    let max_overhead_bytes = [0, 8, 256, 1 << 16][usize::from(*settings / 8) % 4];
    let whole = decode(&[stream], max_body_bytes, max_overhead_bytes);
    assert!(whole.0.len() <= max_body_bytes);
    let split = decode(
        &octopus_fuzz::pieces(*seed, stream),
        max_body_bytes,
        max_overhead_bytes,
    );
    assert_eq!(whole, split, "splitting the input changed the outcome");
});
