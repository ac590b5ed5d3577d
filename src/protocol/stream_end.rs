//! Whether an upstream stream event is the one its format ends a complete answer with.
//!
//! A stream that stops before that event was cut off (a proxy timed out, the provider crashed
//! and closed the connection cleanly), and a client must learn it as an error, not as a short
//! success. The converting decoders know this for themselves; this check is for streams relayed
//! as they are, where nothing else looks inside the events. It is called on every event, so it
//! only looks for the marker in the text, the way the usage tracker does.

use crate::protocol::Format;
use crate::protocol::sse::{Marker, SseEvent};

static RESPONSES_FINAL_TYPES: [Marker; 3] = [
    Marker::new("\"response.completed\""),
    Marker::new("\"response.incomplete\""),
    Marker::new("\"response.failed\""),
];
static MESSAGE_STOP_TYPE: Marker = Marker::new("\"message_stop\"");
static FINISH_REASON_KEY: Marker = Marker::new("\"finish_reason\"");
static GEMINI_FINISH_REASON_KEY: Marker = Marker::new("\"finishReason\"");

/// True for the event that completes a stream in `format`:
/// - Chat Completions: `data: [DONE]`, or a chunk with a finish reason (some compatible servers
///   never send `[DONE]`);
/// - Responses: `response.completed`, `response.incomplete` or `response.failed`;
/// - Anthropic: `message_stop`;
/// - Gemini and Antigravity: a chunk with a `finishReason` (their streams have no end marker).
pub fn is_final_event(format: Format, event: &SseEvent) -> bool {
    let data = event.data.as_str();
    match format {
        Format::OpenaiChat => data.trim() == "[DONE]" || has_finish_reason(data),
        Format::OpenaiResponses => match event.event.as_deref() {
            Some(name) => is_responses_final(name),
            None => RESPONSES_FINAL_TYPES.iter().any(|marker| marker.is_in(data)),
        },
        Format::Anthropic => match event.event.as_deref() {
            Some(name) => name == "message_stop",
            None => MESSAGE_STOP_TYPE.is_in(data),
        },
        Format::Gemini | Format::Antigravity => GEMINI_FINISH_REASON_KEY.is_in(data),
    }
}

/// Whether a Responses event type ends the response.
pub(crate) fn is_responses_final(name: &str) -> bool {
    matches!(
        name,
        "response.completed" | "response.incomplete" | "response.failed"
    )
}

/// Whether some `"finish_reason"` key in the chunk has a value other than `null`.
fn has_finish_reason(data: &str) -> bool {
    let mut rest = data;
    while let Some(position) = FINISH_REASON_KEY.find_in(rest) {
        rest = &rest[position + FINISH_REASON_KEY.needle_len()..];
        let value = rest
            .trim_start()
            .strip_prefix(':')
            .map(str::trim_start)
            .unwrap_or("");
        if !value.is_empty() && !value.starts_with("null") {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: name.map(str::to_string),
            data: data.to_string(),
            id: None,
            raw: Vec::new(),
        }
    }

    #[test]
    fn chat_ends_with_done_or_a_finish_reason() {
        assert!(is_final_event(Format::OpenaiChat, &event(None, "[DONE]")));
        assert!(is_final_event(
            Format::OpenaiChat,
            &event(None, r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#)
        ));
        assert!(is_final_event(
            Format::OpenaiChat,
            &event(None, r#"{"choices":[{"finish_reason" : "length"}]}"#)
        ));
        assert!(!is_final_event(
            Format::OpenaiChat,
            &event(
                None,
                r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}"#
            )
        ));
        assert!(!is_final_event(
            Format::OpenaiChat,
            &event(
                None,
                r#"{"choices":[{"delta":{"content":"\"finish_reason\""}}]}"#
            )
        ));
    }

    #[test]
    fn responses_anthropic_and_gemini_end_with_their_terminal_events() {
        assert!(is_final_event(
            Format::OpenaiResponses,
            &event(Some("response.completed"), "{}")
        ));
        assert!(is_final_event(
            Format::OpenaiResponses,
            &event(None, r#"{"type":"response.incomplete"}"#)
        ));
        assert!(!is_final_event(
            Format::OpenaiResponses,
            &event(
                Some("response.output_text.delta"),
                r#"{"delta":"response.completed"}"#
            )
        ));
        assert!(is_final_event(
            Format::Anthropic,
            &event(Some("message_stop"), r#"{"type":"message_stop"}"#)
        ));
        assert!(!is_final_event(
            Format::Anthropic,
            &event(Some("message_delta"), r#"{"type":"message_delta"}"#)
        ));
        assert!(is_final_event(
            Format::Gemini,
            &event(None, r#"{"candidates":[{"finishReason":"STOP"}]}"#)
        ));
        assert!(is_final_event(
            Format::Antigravity,
            &event(
                None,
                r#"{"response":{"candidates":[{"finishReason":"STOP"}]}}"#
            )
        ));
        assert!(!is_final_event(
            Format::Gemini,
            &event(None, r#"{"candidates":[{"content":{}}]}"#)
        ));
    }
}
