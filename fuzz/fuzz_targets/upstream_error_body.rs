//! An upstream's error answer: the first input byte picks the upstream format, the next two the
//! HTTP status (any u16), the rest is the body. It is read, then converted and rendered for every
//! client format, as a response and as an in-stream error. Nothing may panic, and every body we
//! render ourselves is JSON (in-stream errors are SSE whose data is JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::protocol::error::{
    convert_error, parse_upstream_error, render_error, render_stream_error,
};
use octopus_fuzz::{ALL_FORMATS, CLIENT_FORMATS};

fuzz_target!(|data: &[u8]| {
    let [format_byte, status_low, status_high, body @ ..] = data else {
        return;
    };
    let upstream = ALL_FORMATS[usize::from(*format_byte) % ALL_FORMATS.len()];
    let status = u16::from_le_bytes([*status_low, *status_high]);
    let info = parse_upstream_error(upstream, status, body);
    for client in CLIENT_FORMATS {
        let (_, converted) = convert_error(upstream, client, status, body);
        // Passed through unchanged (same error family, a JSON body with `error`) or rendered by us.
        if converted != body {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&converted).is_ok(),
                "a rendered error is not JSON"
            );
        }
        let rendered = render_error(client, info.status, info.kind, &info.message);
        assert!(
            serde_json::from_slice::<serde_json::Value>(&rendered).is_ok(),
            "a rendered error is not JSON"
        );
        let streamed = render_stream_error(client, info.kind, &info.message);
        let events = octopus_fuzz::parse_events(&[&streamed], usize::MAX).unwrap_or_default();
        assert!(!events.is_empty(), "an in-stream error has no event");
        for event in events {
            assert!(
                serde_json::from_str::<serde_json::Value>(&event.data).is_ok(),
                "an in-stream error event is not JSON"
            );
        }
    }
});
