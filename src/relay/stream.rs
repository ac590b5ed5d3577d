//! Turning upstream SSE events into client bytes, one event at a time: pass-through (with the
//! forced usage chunk stripped), conversion through the IR, and Gemini's JSON-array framing.
//! Usage is tracked on the upstream events without buffering the response.

use serde_json::Value;

use crate::protocol::convert::{ConvertContext, StreamTranscoder};
use crate::protocol::error::{parse_upstream_error, render_stream_error, ErrorKind};
use crate::protocol::sse::{Marker, SseEvent, SseParser, USAGE_KEY};
use crate::protocol::stream_end::is_final_event;
use crate::protocol::usage::{StreamUsageTracker, Usage};
use crate::protocol::Format;
use crate::relay::transform::Transform;

static ERROR_KEY: Marker = Marker::new("\"error\"");

/// Per-stream conversion state.
pub struct EventTranslator {
    transform: Transform,
    client_format: Format,
    usage: StreamUsageTracker,
    transcoder: Option<StreamTranscoder>,
    /// Set for Gemini clients that asked for the JSON-array stream instead of SSE.
    json_array: Option<JsonArrayFraming>,
    ending: StreamEnding,
}

/// How the upstream stream went, from its events: whether its format's final event arrived and
/// whether it sent an error. A stream that ends without the one or with the other failed, even
/// though its bytes arrived intact.
struct StreamEnding {
    format: Format,
    final_event_seen: bool,
    upstream_error: Option<String>,
}

impl StreamEnding {
    fn observe(&mut self, event: &SseEvent) {
        if self.upstream_error.is_none() && is_error_event(self.format, event) {
            self.upstream_error = Some(parse_upstream_error(self.format, 500, event.data.as_bytes()).message);
        } else if !self.final_event_seen {
            self.final_event_seen = is_final_event(self.format, event);
        }
    }
}

/// The message recorded (and, for streams relayed as they are, sent) when the upstream stream
/// ended before its final event.
pub const CUT_OFF_MESSAGE: &str = "the upstream stream ended before it finished";

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
            ending: StreamEnding { format: transform.upstream_format(), final_event_seen: false, upstream_error: None },
        }
    }

    /// Appends the client bytes for one upstream event (possibly none).
    pub fn translate(&mut self, event: &SseEvent, out: &mut Vec<u8>) {
        self.usage.observe(event);
        self.ending.observe(event);
        if let (Transform::PassThrough { strip_usage_chunk, .. }, None) = (&self.transform, &self.json_array) {
            // The common relayed stream: the event's bytes go straight to the client's buffer.
            if !(*strip_usage_chunk && is_bare_usage_chunk(event)) {
                append_raw_event(event, out);
            }
            return;
        }
        // Events framed as SSE go straight to the client's buffer; a JSON array is reframed.
        let mut to_reframe = Vec::new();
        let sse_bytes = if self.json_array.is_some() { &mut to_reframe } else { &mut *out };
        match (&self.transform, &mut self.transcoder) {
            (Transform::PassThrough { strip_usage_chunk, .. }, _) => {
                if !(*strip_usage_chunk && is_bare_usage_chunk(event)) {
                    append_raw_event(event, sse_bytes);
                }
            }
            (Transform::Convert { .. }, Some(transcoder)) => {
                if let Err(error) = transcoder.push(event, sse_bytes) {
                    // A malformed upstream event is reported once, in the client's format.
                    sse_bytes.extend(render_stream_error(self.client_format, ErrorKind::Upstream, &error.to_string()));
                }
            }
            (Transform::Convert { .. }, None) => {}
        }
        if self.json_array.is_some() {
            self.frame(&to_reframe, out);
        }
    }

    /// Appends whatever closes the stream for the client (final converted events, `]`) once the
    /// upstream stream has ended. Returns why the stream failed when the upstream sent an error
    /// event or stopped before its final event; the client has been told in its own format
    /// either way (by the upstream's relayed error event, by the converter, or by an error event
    /// appended here for a relayed stream that was cut off).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Option<String> {
        let mut sse_bytes = Vec::new();
        if let Some(transcoder) = &mut self.transcoder {
            transcoder.finish(&mut sse_bytes);
        }
        let failure = match &self.ending.upstream_error {
            Some(message) => Some(format!("the upstream stream failed: {message}")),
            None if !self.ending.final_event_seen => {
                if matches!(self.transform, Transform::PassThrough { .. }) {
                    sse_bytes.extend(render_stream_error(self.client_format, ErrorKind::Upstream, CUT_OFF_MESSAGE));
                }
                Some(CUT_OFF_MESSAGE.to_string())
            }
            None => None,
        };
        self.frame(&sse_bytes, out);
        if let Some(framing) = &mut self.json_array {
            out.extend_from_slice(if framing.items_written == 0 { b"[]" } else { b"\n]" });
        }
        failure
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

/// Appends a relayed event as the upstream sent it.
fn append_raw_event(event: &SseEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(&event.raw);
    // An event flushed at the end of the upstream body may lack its blank line.
    if !(event.raw.ends_with(b"\n\n") || event.raw.ends_with(b"\r\r") || event.raw.ends_with(b"\r\n\r\n")) {
        out.extend_from_slice(b"\n\n");
    }
}

/// The usage-only chunk OpenAI sends last when `include_usage` is on: `choices: []` and a usage.
fn is_bare_usage_chunk(event: &SseEvent) -> bool {
    if !USAGE_KEY.is_in(&event.data) {
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
                || (ERROR_KEY.is_in(&event.data)
                    && serde_json::from_str::<Value>(&event.data).is_ok_and(|value| value.get("error").is_some_and(|error| !error.is_null())))
        }
        Format::Anthropic | Format::OpenaiResponses => false,
    }
}
