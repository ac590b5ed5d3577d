//! Request heads and body framing as a connection reads them: bytes arrive in pieces (the
//! second input byte picks the split), leading empty lines are skipped, the end of the head is
//! searched incrementally, the head is parsed, and its body (Content-Length or chunked) is
//! consumed before the next pipelined request. The first input byte picks the header-count cap.
//!
//! Properties: the incremental search for the end of a head finds the same end as a search of
//! the whole buffer, and the parser takes exactly the bytes up to that end, no fewer (anything
//! left over would be read as the body or the next request: a smuggling hazard).
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::fuzz_entry::{BodyFraming, ChunkedDecoder, find_head_end, parse_request_head};

/// The connection's defaults for the chunked decoder are the body and head caps; small ones
/// here make the limits reachable.
const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_OVERHEAD_BYTES: usize = 1024;
/// Pipelined requests read from one input at most.
const MAX_REQUESTS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let [settings, seed, stream @ ..] = data else {
        return;
    };
    let max_header_count = [1, 4, 16, 100][usize::from(*settings) % 4];
    let mut arrivals = octopus_fuzz::pieces(*seed, stream).into_iter();
    let mut buffer: Vec<u8> = Vec::new();
    let mut receive = |buffer: &mut Vec<u8>| match arrivals.next() {
        Some(piece) if !piece.is_empty() => {
            buffer.extend_from_slice(piece);
            true
        }
        _ => false,
    };
    for _ in 0..MAX_REQUESTS {
        let leading_empty_lines = buffer
            .iter()
            .take_while(|byte| matches!(byte, b'\r' | b'\n'))
            .count();
        buffer.drain(..leading_empty_lines);
        while buffer.is_empty() {
            if !receive(&mut buffer) {
                return;
            }
            let leading_empty_lines = buffer
                .iter()
                .take_while(|byte| matches!(byte, b'\r' | b'\n'))
                .count();
            buffer.drain(..leading_empty_lines);
        }
        let mut scan_from = 0;
        let mut skipped_an_end = false;
        let head = loop {
            let (head_end, next_scan_from) = find_head_end(&buffer, scan_from);
            if !skipped_an_end {
                assert_eq!(
                    head_end,
                    find_head_end(&buffer, 0).0,
                    "the incremental search disagrees with a whole scan"
                );
            }
            scan_from = next_scan_from;
            if let Some(head_end) = head_end {
                match parse_request_head(&buffer[..head_end], max_header_count) {
                    // The connection answers 400/431 and closes.
                    Err(error) => {
                        assert!(
                            matches!(error.status, 400 | 431),
                            "unexpected status {}",
                            error.status
                        );
                        return;
                    }
                    Ok(Some((head, head_length))) => {
                        assert_eq!(
                            head_length, head_end,
                            "the parser and the head search disagree on where the head ends"
                        );
                        buffer.drain(..head_length);
                        break head;
                    }
                    // The connection reads on; the next search starts after this end.
                    Ok(None) => skipped_an_end = true,
                }
            }
            if !receive(&mut buffer) {
                return;
            }
        };
        if !head.keep_alive {
            return;
        }
        match head.body_framing {
            BodyFraming::Empty => {}
            BodyFraming::Length(length) => {
                if length > MAX_BODY_BYTES as u64 {
                    return;
                }
                while (buffer.len() as u64) < length {
                    if !receive(&mut buffer) {
                        return;
                    }
                }
                buffer.drain(..length as usize);
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(MAX_BODY_BYTES, MAX_OVERHEAD_BYTES);
                let mut body = Vec::new();
                loop {
                    let Ok(consumed) = decoder.decode(&buffer, &mut body) else {
                        return;
                    };
                    assert!(consumed <= buffer.len());
                    buffer.drain(..consumed);
                    if decoder.is_done() {
                        break;
                    }
                    if !receive(&mut buffer) {
                        return;
                    }
                }
                assert!(body.len() <= MAX_BODY_BYTES);
            }
        }
    }
});
