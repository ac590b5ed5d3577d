//! The SSE parser, fed the input whole and in pieces (the second input byte picks the split; the
//! first picks the event size cap), and the SSE encoder on every event it finds.
//!
//! Properties: where the stream is cut changes nothing (the same events, the same error); the raw
//! bytes of the events put together are the stream (minus a byte-order mark and trailing blank
//! lines); and encoding an event then parsing it gives the same name and data back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::protocol::sse::{SseError, SseEvent, SseParser, encode_event};

const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

fn parse(pieces: &[&[u8]], max_event_size: usize) -> (Vec<SseEvent>, Option<SseError>) {
    let mut parser = SseParser::new(max_event_size);
    let mut events = Vec::new();
    for piece in pieces {
        if let Err(error) = parser.push(piece, &mut events) {
            return (events, Some(error));
        }
    }
    let error = parser.finish(&mut events).err();
    (events, error)
}

fuzz_target!(|data: &[u8]| {
    let [settings, seed, stream @ ..] = data else {
        return;
    };
    let max_event_size = [1, 3, 16, 256, 1 << 20][usize::from(*settings) % 5];
    let whole = parse(&[stream], max_event_size);
    let split = parse(&octopus_fuzz::pieces(*seed, stream), max_event_size);
    assert_eq!(whole, split, "splitting the stream changed the outcome");
    let (events, error) = whole;
    if error.is_none() {
        let raw: Vec<u8> = events
            .iter()
            .flat_map(|event| event.raw.iter().copied())
            .collect();
        let expected = stream.strip_prefix(BYTE_ORDER_MARK).unwrap_or(stream);
        assert!(
            expected.starts_with(&raw),
            "the raw bytes of the events are not the stream"
        );
        assert!(
            expected[raw.len()..]
                .iter()
                .all(|byte| matches!(byte, b'\r' | b'\n')),
            "bytes other than blank lines were left out of every event"
        );
    }
    for event in &events {
        if event.data.is_empty() && event.event.is_none() {
            continue;
        }
        let encoded = encode_event(event.event.as_deref(), &event.data);
        let (again, error) = parse(&[&encoded], usize::MAX);
        assert!(error.is_none());
        assert_eq!(again.len(), 1, "one encoded event parses as one event");
        assert_eq!(
            (&again[0].event, &again[0].data),
            (&event.event, &event.data),
            "encoding changed the event"
        );
    }
});
