//! Google Antigravity (Cloud Code `v1internal`) to and from the IR: a Gemini request inside the
//! Antigravity envelope, and Gemini responses and stream chunks wrapped in `{"response", "traceId"}`.
//! Upstream only: no client speaks this format.
//!
//! The envelope (protocols.md §7) is `{project, model, request, userAgent: "antigravity",
//! requestType: "agent", requestId}` with `sessionId` inside `request`. The project and request id
//! come from the caller (`WriteOptions`), since this module may not invent them. The session id
//! must stay the same across the turns of one conversation; it is derived from the first user
//! message, which every later request of the conversation repeats.
//!
//! The inner request differs from Gemini's (see `gemini::write_generate_request`): tool schemas
//! are `parameters` in the OpenAPI subset with upper-case types, `systemInstruction` has role
//! `user`, call ids are sent and echoed on `functionResponse.id` (Claude-backed models need them),
//! Claude models get `functionCallingConfig.mode: VALIDATED` and an output limit above the thinking
//! budget, and `safetySettings` is never written.

use serde::Serialize;
use serde_json::Value;

use crate::protocol::gemini::{self, GenerateRequestOut, Target};
use crate::protocol::ir::{
    ConvertError, Part, Request, Response, ResponseMeta, Role, StreamEvent, WriteOptions,
};
use crate::protocol::json::field;
use crate::protocol::sse::SseEvent;
use crate::protocol::typed_read::gemini::read_antigravity_stream_chunk;
use crate::util::sha256_hex;

/// The Antigravity request envelope around a Gemini body. Fields are in alphabetical order, the
/// order the sorted maps of `json!` wrote them in.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvelopeOut<'request> {
    model: &'request str,
    project: &'request str,
    request: GenerateRequestOut<'request>,
    #[serde(skip_serializing_if = "str::is_empty")]
    request_id: &'request str,
    request_type: &'static str,
    user_agent: &'static str,
}

/// Writes the Antigravity request envelope for an upstream.
pub fn write_request<'request>(
    request: &'request Request,
    options: &'request WriteOptions,
) -> Result<EnvelopeOut<'request>, ConvertError> {
    let mut inner = gemini::write_generate_request(request, options, Target::Antigravity)?;
    inner.session_id = session_id(request);
    Ok(EnvelopeOut {
        model: &options.upstream_model,
        project: &options.antigravity_project,
        request: inner,
        request_id: &options.request_id,
        request_type: "agent",
        user_agent: "antigravity",
    })
}

/// A session id that is stable across one conversation: `-` and a positive 63-bit number taken
/// from the SHA-256 of the first user message's text, the shape Antigravity's own client sends.
/// None when the conversation has no user text.
fn session_id(request: &Request) -> Option<String> {
    let first_user_text = request
        .messages
        .iter()
        .filter(|message| message.role == Role::User)
        .flat_map(|message| &message.parts)
        .find_map(|part| match part {
            Part::Text(text) if !text.text.is_empty() => Some(text.text.as_str()),
            _ => None,
        })?;
    let digest = sha256_hex(first_user_text.as_bytes());
    let number = u64::from_str_radix(&digest[..16], 16).ok()? & (i64::MAX as u64);
    Some(format!("-{number}"))
}

/// The Gemini body inside an Antigravity envelope; a body without one is taken as it is.
fn unwrap_envelope(body: &Value) -> &Value {
    match field(body, "response") {
        Some(inner) if inner.is_object() => inner,
        _ => body,
    }
}

/// Reads an Antigravity response body. Call ids that Claude-backed models send are kept.
pub fn parse_response(body: &Value, meta: &ResponseMeta) -> Result<Response, ConvertError> {
    gemini::parse_response(unwrap_envelope(body), meta)
}

/// Turns an Antigravity upstream stream into IR events: each chunk is unwrapped and decoded as
/// Gemini. Errors arrive in the Google shape, unwrapped.
pub struct StreamDecoder {
    inner: gemini::StreamDecoder,
}

impl StreamDecoder {
    pub fn new(meta: &ResponseMeta) -> StreamDecoder {
        StreamDecoder {
            inner: gemini::StreamDecoder::new(meta),
        }
    }

    /// This decoder with its typed read off (see `gemini::StreamDecoder::with_general_path_only`).
    pub fn with_general_path_only(self) -> StreamDecoder {
        StreamDecoder { inner: self.inner.with_general_path_only() }
    }

    /// Decodes one upstream event.
    pub fn push(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        let data = event.data.trim();
        if data.is_empty() || self.inner.push_read(read_antigravity_stream_chunk, data, out) {
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|error| ConvertError::new("stream", format!("invalid chunk JSON: {error}")))?;
        self.inner.push_chunk(unwrap_envelope(&chunk), out)
    }

    /// Ends the stream; one that stopped before a finish reason was cut off.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ConvertError> {
        self.inner.finish(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::protocol::antigravity::{StreamDecoder, write_request};
    use crate::protocol::gemini;
    use crate::protocol::ir::{
        Message, Part, Request, ResponseMeta, Role, StreamEvent, WriteOptions,
    };
    use crate::protocol::sse::{SseEvent, encode_event};
    use crate::protocol::testkit;

    fn conversation(texts: &[&str]) -> Request {
        let messages = texts
            .iter()
            .enumerate()
            .map(|(position, text)| {
                let role = if position % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                Message::new(role, vec![Part::text(*text)])
            })
            .collect();
        Request {
            messages,
            ..Request::default()
        }
    }

    fn session_of(request: &Request) -> Value {
        let options = WriteOptions {
            upstream_model: "gemini-2.5-flash".to_string(),
            ..WriteOptions::default()
        };
        serde_json::to_value(write_request(request, &options).unwrap()).unwrap()["request"]["sessionId"].clone()
    }

    #[test]
    fn session_id_is_stable_across_turns_and_differs_between_conversations() {
        let first = session_of(&conversation(&["Plan a trip"]));
        let later = session_of(&conversation(&["Plan a trip", "Where to?", "Lisbon"]));
        let other = session_of(&conversation(&["Write a poem"]));
        assert_eq!(first, later);
        assert_ne!(first, other);
        let text = first.as_str().unwrap();
        assert!(
            text.starts_with('-') && text[1..].parse::<i64>().is_ok(),
            "{text}"
        );
        assert_eq!(session_of(&Request::default()), Value::Null);
    }

    #[test]
    fn envelope_leaves_out_an_empty_request_id() {
        let written = serde_json::to_value(write_request(&conversation(&["Hi"]), &WriteOptions::default()).unwrap()).unwrap();
        assert!(written.get("requestId").is_none());
        assert_eq!(written["userAgent"], "antigravity");
        assert_eq!(written["requestType"], "agent");
        assert!(written["request"].get("safetySettings").is_none());
    }

    fn decode_all(events: &[SseEvent], antigravity: bool) -> Vec<StreamEvent> {
        let meta = ResponseMeta {
            id: "resp_1".to_string(),
            model: String::new(),
            created_unix: 0,
            custom_tools: Vec::new(),
        };
        let mut out = Vec::new();
        if antigravity {
            let mut decoder = StreamDecoder::new(&meta);
            for event in events {
                decoder.push(event, &mut out).unwrap();
            }
            decoder.finish(&mut out).unwrap();
        } else {
            let mut decoder = gemini::StreamDecoder::new(&meta);
            for event in events {
                decoder.push(event, &mut out).unwrap();
            }
            decoder.finish(&mut out).unwrap();
        }
        out
    }

    /// Every recorded Gemini stream, wrapped chunk by chunk in the Antigravity envelope, decodes to
    /// the same events as the bare stream, almost every chunk read from its bytes.
    #[test]
    fn wrapped_recorded_streams_decode_like_gemini() {
        let names: Vec<String> = testkit::all_streams()
            .into_iter()
            .filter(|name| name.starts_with("gemini/"))
            .collect();
        assert!(!names.is_empty());
        let (mut typed_chunks, mut all_chunks) = (0, 0);
        for name in &names {
            let events = testkit::parse_pieces(&[&testkit::stream_bytes(name)]);
            let mut wrapped = Vec::new();
            for event in events.iter().filter(|event| !event.data.is_empty()) {
                let chunk: Value = serde_json::from_str(&event.data).unwrap();
                let envelope = serde_json::json!({"response": chunk, "traceId": "trace-1"});
                wrapped.extend(encode_event(None, &envelope.to_string()));
            }
            let wrapped_events = testkit::parse_pieces(&[&wrapped]);
            typed_chunks += wrapped_events
                .iter()
                .filter(|event| super::read_antigravity_stream_chunk(event.data.as_bytes(), "resp_1", 0).is_some())
                .count();
            all_chunks += wrapped_events.len();
            assert_eq!(
                decode_all(&wrapped_events, true),
                decode_all(&events, false),
                "{name}"
            );
        }
        // The wrapped chunks are read from their bytes, as the bare ones are.
        assert!(typed_chunks * 10 >= all_chunks * 9, "{typed_chunks} of {all_chunks} chunks read typed");
    }
}
