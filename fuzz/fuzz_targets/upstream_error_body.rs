//! An upstream's error answer: the first input byte picks the upstream format (modulo 5) and the
//! client format (the quotient, modulo 4), the next two the HTTP status (any u16), the rest is
//! the body. It is read, then converted and rendered for the client, as a response and as an
//! in-stream error. Nothing may panic, and every body we render ourselves is JSON (in-stream
//! errors are SSE whose data is JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::protocol::error::{
    convert_error, parse_upstream_error, render_error, render_stream_error,
};
use octopus_fuzz::{ALL_FORMATS, CLIENT_FORMATS};

fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let [format_byte, status_low, status_high, body @ ..] = data else {
        return;
    };
    let format_index = usize::from(*format_byte);
    let upstream = ALL_FORMATS[format_index % ALL_FORMATS.len()];
    let client = CLIENT_FORMATS[format_index / ALL_FORMATS.len() % CLIENT_FORMATS.len()];
    let status = u16::from_le_bytes([*status_low, *status_high]);
    let info = parse_upstream_error(upstream, status, body);
    let (_, converted) = convert_error(upstream, client, status, body);
    // Passed through unchanged (same error family, a JSON body with `error`) or rendered by us.
    if converted != body {
        assert!(is_json(&converted), "a converted error is not JSON");
    }
    let rendered = render_error(client, info.status, info.kind, &info.message);
    assert!(is_json(&rendered), "a rendered error is not JSON");
    let streamed = render_stream_error(client, info.kind, &info.message);
    let events = octopus_fuzz::parse_events(&[&streamed], usize::MAX).unwrap_or_default();
    assert!(!events.is_empty(), "an in-stream error has no event");
    for event in events {
        assert!(
            is_json(event.data.as_bytes()),
            "an in-stream error event is not JSON"
        );
    }
});
