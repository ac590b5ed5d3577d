//! Token usage: one normalized shape, read from the streams and bodies of every format for billing.
//!
//! Normalization follows protocols.md §5: input counts include cache reads and cache writes, and
//! output counts include reasoning. Anthropic reports `input_tokens` without its cache fields, and
//! Gemini reports `candidatesTokenCount` without thoughts, so both are added up here. Counts are
//! read leniently (floats, strings and negative numbers become whole non-negative counts) and summed
//! with saturating arithmetic, because a buggy upstream must not be able to panic the relay.

use serde::{Deserialize, Deserializer};

use crate::protocol::Format;
use crate::protocol::sse::{Marker, SseEvent, USAGE_KEY};
use crate::protocol::stream_end::{is_final_event, is_responses_final};

static USAGE_METADATA_KEY: Marker = Marker::new("\"usageMetadata\"");

/// Token counts of one request, normalized across formats.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub struct Usage {
    /// All prompt tokens, including cached reads and cache writes.
    pub input_tokens: u64,
    /// All generated tokens, including reasoning.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's cache (Anthropic only).
    pub cache_write_tokens: u64,
    /// Generated tokens spent on reasoning.
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Input plus output.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Follows a stream of one upstream format and keeps the usage it reports.
///
/// Only events that can carry usage are parsed as JSON, after a substring check, so observing a
/// long stream of text deltas costs one short search per event.
pub struct StreamUsageTracker {
    format: Format,
    usage: Option<Usage>,
    /// Anthropic spreads usage over `message_start` and `message_delta`, so the raw counts are kept
    /// and normalized on demand.
    anthropic: Option<AnthropicUsage>,
}

impl StreamUsageTracker {
    /// A tracker for a stream in the upstream's `format`.
    pub fn new(format: Format) -> StreamUsageTracker {
        StreamUsageTracker {
            format,
            usage: None,
            anthropic: None,
        }
    }

    /// Looks at one event and updates the usage if the event reports any.
    pub fn observe(&mut self, event: &SseEvent) {
        let data = event.data.as_str();
        match self.format {
            Format::OpenaiChat => {
                if !USAGE_KEY.is_in(data) {
                    return;
                }
                // Some compatible upstreams send usage on a content chunk and again later; the
                // last non-null report is the complete one.
                if let Ok(ChatBody { usage: Some(usage) }) = serde_json::from_str(data) {
                    self.usage = Some(usage.normalize());
                }
            }
            Format::OpenaiResponses => {
                // Only the terminal event carries the response's usage; the check that finds it
                // is the one that tells a relayed stream complete.
                if !is_final_event(Format::OpenaiResponses, event) || !USAGE_KEY.is_in(data) {
                    return;
                }
                if let Ok(parsed) = serde_json::from_str::<ResponsesEvent>(data)
                    && is_responses_final(&parsed.event_type)
                    && let Some(usage) = parsed.response.and_then(|response| response.usage)
                {
                    self.usage = Some(usage.normalize());
                }
            }
            Format::Anthropic => {
                if !USAGE_KEY.is_in(data) {
                    return;
                }
                let Ok(parsed) = serde_json::from_str::<AnthropicEvent>(data) else {
                    return;
                };
                let reported = match parsed.event_type.as_str() {
                    "message_start" => parsed.message.and_then(|message| message.usage),
                    "message_delta" => parsed.usage,
                    _ => None,
                };
                if let Some(reported) = reported {
                    let merged = match self.anthropic {
                        Some(previous) => previous.merge_cumulative(reported),
                        None => reported,
                    };
                    self.anthropic = Some(merged);
                    self.usage = Some(merged.normalize());
                }
            }
            Format::Gemini | Format::Antigravity => {
                if !USAGE_METADATA_KEY.is_in(data) {
                    return;
                }
                if let Some(usage) = gemini_usage_from_json(self.format, data.as_bytes()) {
                    self.usage = Some(usage);
                }
            }
        }
    }

    /// The usage seen so far, or None if the stream has reported none.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// Reads the usage of a complete (non-stream) response body.
pub fn usage_from_response_body(format: Format, body: &[u8]) -> Option<Usage> {
    match format {
        Format::OpenaiChat => from_json_text::<ChatBody>(body)?
            .usage
            .map(ChatUsage::normalize),
        Format::OpenaiResponses => {
            let parsed: ResponsesBody = from_json_text(body)?;
            // A stored terminal event also parses: its usage sits one level down.
            let usage = parsed
                .usage
                .or_else(|| parsed.response.and_then(|response| response.usage))?;
            Some(usage.normalize())
        }
        Format::Anthropic => from_json_text::<AnthropicBody>(body)?
            .usage
            .map(AnthropicUsage::normalize),
        Format::Gemini | Format::Antigravity => {
            if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
                // streamGenerateContent without alt=sse answers with a JSON array of chunks, whose
                // last usageMetadata is the cumulative one.
                let chunks: Vec<GeminiEnvelope> = from_json_text(body)?;
                return chunks
                    .into_iter()
                    .filter_map(GeminiEnvelope::usage)
                    .next_back();
            }
            gemini_usage_from_json(format, body)
        }
    }
}

/// Normalizes a usage object that is already parsed: the `usage` object of an OpenAI or Anthropic
/// body, or Gemini's `usageMetadata`.
pub fn usage_from_value(format: Format, usage: &serde_json::Value) -> Option<Usage> {
    if !usage.is_object() {
        return None;
    }
    match format {
        Format::OpenaiChat => ChatUsage::deserialize(usage).ok().map(ChatUsage::normalize),
        Format::OpenaiResponses => ResponsesUsage::deserialize(usage)
            .ok()
            .map(ResponsesUsage::normalize),
        Format::Anthropic => AnthropicUsage::deserialize(usage)
            .ok()
            .map(AnthropicUsage::normalize),
        Format::Gemini | Format::Antigravity => GeminiUsage::deserialize(usage)
            .ok()
            .map(GeminiUsage::normalize),
    }
}

/// Reads `json` into `T`, or None if it does not fit. Text that is UTF-8 as a whole is read as a
/// str: serde_json then borrows each member name as it is, where from bytes it checks every name
/// for UTF-8 on its own (about 100 instructions each, eleven names in a short chat answer).
/// Text that is not UTF-8 is read from bytes, as before, so a stray byte in an ignored string
/// still leaves the usage readable.
fn from_json_text<'de, T: Deserialize<'de>>(json: &'de [u8]) -> Option<T> {
    match std::str::from_utf8(json) {
        Ok(text) => serde_json::from_str(text).ok(),
        Err(_) => serde_json::from_slice(json).ok(),
    }
}

fn gemini_usage_from_json(format: Format, json: &[u8]) -> Option<Usage> {
    let envelope: GeminiEnvelope = from_json_text(json)?;
    if format == Format::Gemini {
        return envelope.usage_metadata.map(GeminiUsage::normalize);
    }
    envelope.usage()
}

/// Deserializes a token count from whatever a provider sent: a number of any kind, a numeric
/// string (proto JSON writes int64 as strings) or null. Anything negative or unreadable is 0.
fn lenient_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    let count = match value {
        Some(serde_json::Value::Number(number)) => number_to_count(&number),
        Some(serde_json::Value::String(text)) => text
            .trim()
            .parse::<serde_json::Number>()
            .map(|number| number_to_count(&number))
            .unwrap_or(0),
        _ => 0,
    };
    Ok(count)
}

fn number_to_count(number: &serde_json::Number) -> u64 {
    if let Some(count) = number.as_u64() {
        return count;
    }
    match number.as_f64() {
        // `as` saturates at the bounds of u64 and maps NaN to 0.
        Some(float) if float > 0.0 => float as u64,
        _ => 0,
    }
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(default)]
    usage: Option<ChatUsage>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ChatUsage {
    #[serde(deserialize_with = "lenient_count")]
    prompt_tokens: u64,
    #[serde(deserialize_with = "lenient_count")]
    completion_tokens: u64,
    prompt_tokens_details: Option<ChatPromptDetails>,
    completion_tokens_details: Option<ChatCompletionDetails>,
    /// DeepSeek's name for cached prompt tokens.
    #[serde(deserialize_with = "lenient_count")]
    prompt_cache_hit_tokens: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChatPromptDetails {
    #[serde(deserialize_with = "lenient_count")]
    cached_tokens: u64,
    /// Reported by some OpenAI-compatible routers in front of Anthropic models.
    #[serde(deserialize_with = "lenient_count")]
    cache_write_tokens: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChatCompletionDetails {
    #[serde(deserialize_with = "lenient_count")]
    reasoning_tokens: u64,
}

impl ChatUsage {
    /// The counts as `Usage`.
    pub(crate) fn normalize(self) -> Usage {
        let details = self.prompt_tokens_details.unwrap_or_default();
        let cached_tokens = if details.cached_tokens > 0 {
            details.cached_tokens
        } else {
            self.prompt_cache_hit_tokens
        };
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cached_tokens,
            cache_write_tokens: details.cache_write_tokens,
            reasoning_tokens: self
                .completion_tokens_details
                .map(|details| details.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct ResponsesEvent {
    #[serde(rename = "type", default)]
    event_type: String,
    #[serde(default)]
    response: Option<ResponsesBody>,
}

#[derive(Deserialize)]
struct ResponsesBody {
    #[serde(default)]
    usage: Option<ResponsesUsage>,
    #[serde(default)]
    response: Option<Box<ResponsesBody>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResponsesUsage {
    #[serde(deserialize_with = "lenient_count")]
    input_tokens: u64,
    #[serde(deserialize_with = "lenient_count")]
    output_tokens: u64,
    input_tokens_details: Option<ResponsesInputDetails>,
    output_tokens_details: Option<ChatCompletionDetails>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResponsesInputDetails {
    #[serde(deserialize_with = "lenient_count")]
    cached_tokens: u64,
}

impl ResponsesUsage {
    fn normalize(self) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cached_tokens: self
                .input_tokens_details
                .map(|details| details.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: self
                .output_tokens_details
                .map(|details| details.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type", default)]
    event_type: String,
    #[serde(default)]
    message: Option<AnthropicBody>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicBody {
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// Anthropic's own counts; `input_tokens` excludes both cache fields.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(default)]
pub(crate) struct AnthropicUsage {
    #[serde(deserialize_with = "lenient_count")]
    input_tokens: u64,
    #[serde(deserialize_with = "lenient_count")]
    output_tokens: u64,
    #[serde(deserialize_with = "lenient_count")]
    cache_read_input_tokens: u64,
    #[serde(deserialize_with = "lenient_count")]
    cache_creation_input_tokens: u64,
}

impl AnthropicUsage {
    /// Counts in `message_delta` are cumulative, so a later report never lowers a count: taking the
    /// larger value also survives servers that send zeros for fields they do not repeat.
    fn merge_cumulative(self, later: AnthropicUsage) -> AnthropicUsage {
        AnthropicUsage {
            input_tokens: self.input_tokens.max(later.input_tokens),
            output_tokens: self.output_tokens.max(later.output_tokens),
            cache_read_input_tokens: self
                .cache_read_input_tokens
                .max(later.cache_read_input_tokens),
            cache_creation_input_tokens: self
                .cache_creation_input_tokens
                .max(later.cache_creation_input_tokens),
        }
    }

    /// The counts as `Usage`.
    pub(crate) fn normalize(self) -> Usage {
        Usage {
            input_tokens: self
                .input_tokens
                .saturating_add(self.cache_read_input_tokens)
                .saturating_add(self.cache_creation_input_tokens),
            output_tokens: self.output_tokens,
            cached_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_creation_input_tokens,
            reasoning_tokens: 0,
        }
    }
}

/// A Gemini response, or an Antigravity envelope around one.
#[derive(Deserialize)]
struct GeminiEnvelope {
    #[serde(rename = "usageMetadata", default)]
    usage_metadata: Option<GeminiUsage>,
    #[serde(default)]
    response: Option<GeminiBody>,
}

#[derive(Deserialize)]
struct GeminiBody {
    #[serde(rename = "usageMetadata", default)]
    usage_metadata: Option<GeminiUsage>,
}

impl GeminiEnvelope {
    /// The usage of either shape: Antigravity wraps the Gemini body in `response`.
    fn usage(self) -> Option<Usage> {
        let inner = self.response.and_then(|body| body.usage_metadata);
        inner.or(self.usage_metadata).map(GeminiUsage::normalize)
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct GeminiUsage {
    #[serde(deserialize_with = "lenient_count")]
    prompt_token_count: u64,
    #[serde(deserialize_with = "lenient_count")]
    tool_use_prompt_token_count: u64,
    #[serde(deserialize_with = "lenient_count")]
    cached_content_token_count: u64,
    #[serde(deserialize_with = "lenient_count")]
    candidates_token_count: u64,
    #[serde(deserialize_with = "lenient_count")]
    thoughts_token_count: u64,
}

impl GeminiUsage {
    /// The counts as `Usage`.
    pub(crate) fn normalize(self) -> Usage {
        Usage {
            // Tool-use prompt tokens are billed as input (total = prompt + toolUse + candidates +
            // thoughts), so they count as input here.
            input_tokens: self
                .prompt_token_count
                .saturating_add(self.tool_use_prompt_token_count),
            output_tokens: self
                .candidates_token_count
                .saturating_add(self.thoughts_token_count),
            cached_tokens: self.cached_content_token_count,
            cache_write_tokens: 0,
            reasoning_tokens: self.thoughts_token_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::Format;
    use crate::protocol::sse::{SseEvent, SseParser};
    use crate::protocol::testkit;
    use crate::protocol::usage::{
        StreamUsageTracker, Usage, usage_from_response_body, usage_from_value,
    };

    /// A body that is not UTF-8 in a string the usage does not need is still read, as it was
    /// before UTF-8 bodies were read as text.
    #[test]
    fn usage_is_read_past_a_stray_byte_in_an_ignored_string() {
        let mut body = br#"{"id":"x","choices":[{"message":{"content":"caf"#.to_vec();
        body.push(0xE9);
        body.extend_from_slice(br#""}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#);
        assert!(std::str::from_utf8(&body).is_err());
        let usage = usage_from_response_body(Format::OpenaiChat, &body).expect("usage");
        assert_eq!((usage.input_tokens, usage.output_tokens), (7, 3));
        let text = String::from_utf8_lossy(&body).into_owned();
        let usage = usage_from_response_body(Format::OpenaiChat, text.as_bytes()).expect("usage");
        assert_eq!((usage.input_tokens, usage.output_tokens), (7, 3));
    }

    fn stream_usage(format: Format, name: &str) -> Option<Usage> {
        let mut parser = SseParser::new(1 << 20);
        let mut events = Vec::new();
        parser
            .push(&testkit::stream_bytes(name), &mut events)
            .unwrap();
        parser.finish(&mut events).unwrap();
        let mut tracker = StreamUsageTracker::new(format);
        for event in &events {
            tracker.observe(event);
        }
        tracker.usage()
    }

    fn usage(input: u64, output: u64, cached: u64, cache_write: u64, reasoning: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cached_tokens: cached,
            cache_write_tokens: cache_write,
            reasoning_tokens: reasoning,
        }
    }

    fn data_event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: name.map(str::to_string),
            data: data.to_string(),
            id: None,
            raw: Vec::new(),
        }
    }

    #[test]
    fn openai_chat_streams() {
        let cases = [
            (
                "openai-chat/text-stream-with-usage.sse",
                Some(usage(14, 30, 0, 0, 0)),
            ),
            (
                "openai-chat/text-stream-obfuscation.chunks.txt",
                Some(usage(16, 300, 0, 0, 0)),
            ),
            (
                "openai-chat/deepseek-reasoning-tool-call-stream.chunks.txt",
                Some(usage(339, 83, 320, 0, 39)),
            ),
            (
                "openai-chat/tool-call-stream.sse",
                Some(usage(44, 16, 0, 0, 0)),
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(stream_usage(Format::OpenaiChat, name), expected, "{name}");
        }
    }

    #[test]
    fn responses_streams_take_usage_from_the_terminal_event() {
        assert_eq!(
            stream_usage(
                Format::OpenaiResponses,
                "openai-responses/text-stream.chunks.txt"
            ),
            Some(usage(802, 20, 0, 0, 0))
        );
        let failed = stream_usage(
            Format::OpenaiResponses,
            "openai-responses/error-stream.chunks.txt",
        );
        assert_eq!(failed, None, "the failed response reports usage null");
        let unnamed = data_event(
            None,
            r#"{"type":"response.incomplete","response":{"usage":{"input_tokens":5,"output_tokens":7,"output_tokens_details":{"reasoning_tokens":3}}}}"#,
        );
        let mut tracker = StreamUsageTracker::new(Format::OpenaiResponses);
        tracker.observe(&unnamed);
        assert_eq!(tracker.usage(), Some(usage(5, 7, 0, 0, 3)));
    }

    #[test]
    fn responses_multi_turn_recording_keeps_the_last_completed_usage() {
        let observed = stream_usage(
            Format::OpenaiResponses,
            "openai-responses/reasoning-function-calls-4-turns.chunks.txt",
        )
        .expect("usage");
        assert!(observed.input_tokens > 0 && observed.output_tokens > 0);
        assert!(observed.reasoning_tokens <= observed.output_tokens);
    }

    #[test]
    fn anthropic_streams_add_cache_fields_and_take_cumulative_output() {
        assert_eq!(
            stream_usage(
                Format::Anthropic,
                "anthropic-messages/text-then-tool-use-empty-input-stream.chunks.txt"
            ),
            Some(usage(565, 48, 0, 0, 0))
        );
        assert_eq!(
            stream_usage(
                Format::Anthropic,
                "anthropic-messages/cassette-tool-use-stream-roundtrip.json#0"
            )
            .map(|usage| usage.input_tokens),
            Some(656)
        );
        let mut tracker = StreamUsageTracker::new(Format::Anthropic);
        tracker.observe(&data_event(
            Some("message_start"),
            r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":1}}}"#,
        ));
        assert_eq!(tracker.usage(), Some(usage(130, 1, 100, 20, 0)));
        tracker.observe(&data_event(
            Some("message_delta"),
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":42}}"#,
        ));
        assert_eq!(tracker.usage(), Some(usage(130, 42, 100, 20, 0)));
    }

    #[test]
    fn gemini_streams_take_the_last_usage_metadata() {
        assert_eq!(
            stream_usage(Format::Gemini, "gemini/text-stream.sse"),
            Some(usage(7, 10, 0, 0, 0))
        );
        assert_eq!(
            stream_usage(Format::Gemini, "gemini/thoughts-then-text-stream.sse"),
            Some(usage(10, 48 + 540, 0, 0, 540))
        );
        assert_eq!(
            stream_usage(
                Format::Gemini,
                "gemini/gemini3-text-trailing-signature-stream.chunks.txt"
            ),
            Some(usage(9, 23 + 185, 0, 0, 185))
        );
        assert_eq!(
            stream_usage(Format::Gemini, "gemini/prompt-blocked-stream.sse"),
            None
        );
    }

    #[test]
    fn antigravity_streams_unwrap_the_response_envelope() {
        let mut tracker = StreamUsageTracker::new(Format::Antigravity);
        tracker.observe(&data_event(
            None,
            r#"{"response":{"candidates":[],"usageMetadata":{"promptTokenCount":3,"cachedContentTokenCount":2,"candidatesTokenCount":4,"thoughtsTokenCount":5,"toolUsePromptTokenCount":1}},"traceId":"t"}"#,
        ));
        assert_eq!(tracker.usage(), Some(usage(4, 9, 2, 0, 5)));
    }

    #[test]
    fn response_bodies() {
        let body = |name: &str| testkit::provider_file(name);
        assert_eq!(
            usage_from_response_body(Format::OpenaiChat, &body("openai-chat/text-response.json"))
                .map(|usage| usage.total_tokens()),
            Some(
                testkit::provider_json("openai-chat/text-response.json")["usage"]["total_tokens"]
                    .as_u64()
                    .unwrap()
            )
        );
        assert_eq!(
            usage_from_response_body(
                Format::Anthropic,
                &body("anthropic-messages/text-response.json")
            ),
            Some(usage(12, 29, 0, 0, 0))
        );
        assert_eq!(
            usage_from_response_body(
                Format::OpenaiResponses,
                &body("openai-responses/text-response.json")
            )
            .map(|usage| usage.input_tokens > 0),
            Some(true)
        );
        let gemini = testkit::provider_json("gemini/thoughts-function-call-response.json");
        let metadata = &gemini["usageMetadata"];
        let expected_output = metadata["candidatesTokenCount"].as_u64().unwrap()
            + metadata["thoughtsTokenCount"].as_u64().unwrap();
        let observed = usage_from_response_body(
            Format::Gemini,
            &body("gemini/thoughts-function-call-response.json"),
        )
        .unwrap();
        assert_eq!(observed.output_tokens, expected_output);
        let wrapped = serde_json::json!({"response": gemini, "traceId": "x"}).to_string();
        assert_eq!(
            usage_from_response_body(Format::Antigravity, wrapped.as_bytes()),
            Some(observed)
        );
        assert_eq!(
            usage_from_response_body(Format::Anthropic, b"not json"),
            None
        );
    }

    #[test]
    fn parsed_usage_objects_normalize_like_bodies() {
        let anthropic = serde_json::json!({"input_tokens": 1, "cache_read_input_tokens": 2, "output_tokens": 3});
        assert_eq!(
            usage_from_value(Format::Anthropic, &anthropic),
            Some(usage(3, 3, 2, 0, 0))
        );
        assert_eq!(
            usage_from_value(Format::OpenaiChat, &serde_json::Value::Null),
            None
        );
    }

    #[test]
    fn gemini_json_array_body_uses_the_last_usage() {
        let body = br#"[{"usageMetadata":{"promptTokenCount":3}},{"candidates":[]},{"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":9}}]"#;
        assert_eq!(
            usage_from_response_body(Format::Gemini, body),
            Some(usage(3, 9, 0, 0, 0))
        );
    }

    #[test]
    fn hostile_counts_are_clamped_not_panicking() {
        let body = br#"{"usage":{"prompt_tokens":-5,"completion_tokens":2.7,"prompt_tokens_details":{"cached_tokens":"12"},"completion_tokens_details":{"reasoning_tokens":1e30}}}"#;
        assert_eq!(
            usage_from_response_body(Format::OpenaiChat, body),
            Some(usage(0, 2, 12, 0, u64::MAX))
        );
        let huge = format!(
            r#"{{"usage":{{"input_tokens":{max},"cache_read_input_tokens":{max},"output_tokens":1}}}}"#,
            max = u64::MAX
        );
        assert_eq!(
            usage_from_response_body(Format::Anthropic, huge.as_bytes())
                .map(|usage| usage.input_tokens),
            Some(u64::MAX)
        );
    }

    #[test]
    fn events_without_usage_are_skipped_cheaply() {
        let mut tracker = StreamUsageTracker::new(Format::OpenaiChat);
        tracker.observe(&data_event(None, "[DONE]"));
        tracker.observe(&data_event(None, r#"{"choices":[],"usage":null}"#));
        assert_eq!(tracker.usage(), None);
    }
}
