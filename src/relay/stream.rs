//! Turning upstream SSE events into client bytes, one event at a time: pass-through (with the
//! forced usage chunk stripped), conversion through the IR, and Gemini's JSON-array framing.
//! Usage is tracked on the upstream events without buffering the response.

use serde_json::Value;

use crate::protocol::convert::{ConvertContext, StreamTranscoder};
use crate::protocol::error::{render_stream_error, ErrorKind};
use crate::protocol::sse::{SseEvent, SseParser};
use crate::protocol::usage::{StreamUsageTracker, Usage};
use crate::protocol::Format;
use crate::relay::transform::Transform;

/// Per-stream conversion state.
pub struct EventTranslator {
    transform: Transform,
    client_format: Format,
    usage: StreamUsageTracker,
    transcoder: Option<StreamTranscoder>,
    /// Set for Gemini clients that asked for the JSON-array stream instead of SSE.
    json_array: Option<JsonArrayFraming>,
}

struct JsonArrayFraming {
    reframer: SseParser,
    items_written: usize,
}

impl EventTranslator {
    pub fn new(transform: Transform, client_format: Format, gemini_json_array: bool, context: &ConvertContext) -> EventTranslator {
        let transcoder = match transform {
            Transform::Convert { client, upstream } => Some(StreamTranscoder::new(upstream, client, context)),
            Transform::PassThrough { .. } => None,
        };
        EventTranslator {
            transform,
            client_format,
            usage: StreamUsageTracker::new(transform.upstream_format()),
            transcoder,
            json_array: gemini_json_array.then(|| JsonArrayFraming { reframer: SseParser::new(usize::MAX), items_written: 0 }),
        }
    }

    /// Appends the client bytes for one upstream event (possibly none).
    pub fn translate(&mut self, event: &SseEvent, out: &mut Vec<u8>) {
        self.usage.observe(event);
        let mut sse_bytes = Vec::new();
        match (&self.transform, &mut self.transcoder) {
            (Transform::PassThrough { strip_usage_chunk, .. }, _) => {
                if !(*strip_usage_chunk && is_bare_usage_chunk(event)) {
                    sse_bytes.extend_from_slice(&event.raw);
                    // An event flushed at the end of the upstream body may lack its blank line.
                    if !(event.raw.ends_with(b"\n\n") || event.raw.ends_with(b"\r\r") || event.raw.ends_with(b"\r\n\r\n")) {
                        sse_bytes.extend_from_slice(b"\n\n");
                    }
                }
            }
            (Transform::Convert { .. }, Some(transcoder)) => {
                if let Err(error) = transcoder.push(event, &mut sse_bytes) {
                    // A malformed upstream event is reported once, in the client's format.
                    sse_bytes.extend(render_stream_error(self.client_format, ErrorKind::Upstream, &error.to_string()));
                }
            }
            (Transform::Convert { .. }, None) => {}
        }
        self.frame(&sse_bytes, out);
    }

    /// Appends whatever closes the stream for the client (final converted events, `]`).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let mut sse_bytes = Vec::new();
        if let Some(transcoder) = &mut self.transcoder {
            transcoder.finish(&mut sse_bytes);
        }
        self.frame(&sse_bytes, out);
        if let Some(framing) = &mut self.json_array {
            out.extend_from_slice(if framing.items_written == 0 { b"[]" } else { b"\n]" });
        }
    }

    /// Appends an in-stream error event in the client's format; a JSON array is closed after it.
    pub fn error(&mut self, kind: ErrorKind, message: &str, out: &mut Vec<u8>) {
        let sse_bytes = render_stream_error(self.client_format, kind, message);
        self.frame(&sse_bytes, out);
        if self.json_array.is_some() {
            out.extend_from_slice(b"\n]");
        }
    }

    /// Whether the client gets a JSON array (Gemini without `alt=sse`) instead of SSE.
    pub fn is_json_array(&self) -> bool {
        self.json_array.is_some()
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage.usage()
    }

    fn frame(&mut self, sse_bytes: &[u8], out: &mut Vec<u8>) {
        let Some(framing) = &mut self.json_array else {
            out.extend_from_slice(sse_bytes);
            return;
        };
        let mut events = Vec::new();
        // The reframer has no size limit (usize::MAX): its input was already size-checked upstream.
        let _ = framing.reframer.push(sse_bytes, &mut events);
        for event in events {
            out.extend_from_slice(if framing.items_written == 0 { b"[" } else { b",\r\n" });
            out.extend_from_slice(event.data.as_bytes());
            framing.items_written += 1;
        }
    }
}

/// The usage-only chunk OpenAI sends last when `include_usage` is on: `choices: []` and a usage.
fn is_bare_usage_chunk(event: &SseEvent) -> bool {
    if !event.data.contains("\"usage\"") {
        return false;
    }
    let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else { return false };
    chunk.get("choices").and_then(Value::as_array).is_some_and(|choices| choices.is_empty())
        && chunk.get("usage").is_some_and(|usage| !usage.is_null())
}

/// Whether the first event of a stream is an error, which means the upstream failed before
/// producing anything and the attempt may be retried elsewhere.
pub fn is_error_event(format: Format, event: &SseEvent) -> bool {
    let named = event.event.as_deref();
    if matches!(named, Some("error") | Some("response.failed")) {
        return true;
    }
    match format {
        Format::OpenaiChat | Format::Gemini | Format::Antigravity => {
            event.data.starts_with("{\"error\"")
                || (event.data.contains("\"error\"")
                    && serde_json::from_str::<Value>(&event.data).is_ok_and(|value| value.get("error").is_some_and(|error| !error.is_null())))
        }
        Format::Anthropic | Format::OpenaiResponses => false,
    }
}
