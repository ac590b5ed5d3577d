//! The internal representation (IR) every format converts to and from: requests, responses and
//! stream events.
//!
//! Hub and spoke: each format module parses its JSON into these types and writes them back out, so
//! N formats need 2N converters. The IR deliberately has no `Serialize` impl; only format modules
//! know JSON. Fields holding `serde_json::Value` carry opaque payloads (JSON schemas, metadata,
//! cache hints) that no format interprets.
//!
//! Conventions every format module follows:
//! - System and developer messages stay where the client put them. Formats that have a single
//!   top-level system prompt (Anthropic, Gemini) hoist all of them, in order, with
//!   [`hoisted_system_parts`]: a system message in the middle of a conversation moves to the front
//!   rather than being turned into user text, because it keeps its authority that way.
//! - Tool results live in `Role::Tool` messages as [`Part::ToolResult`]; formats that put them in a
//!   user turn split or merge them at the edge.
//! - Reasoning signatures are tagged with the format that produced them and are only ever written
//!   back to that same format.
//! - Tool-call arguments are a JSON string, as in Chat; [`ToolCall::arguments_object`] applies the
//!   one policy for malformed arguments.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Value};

use crate::protocol::Format;
use crate::protocol::error::ErrorKind;
pub use crate::protocol::json_schema::JsonSchema;
use crate::protocol::usage::Usage;

/// A generation request.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Request {
    /// The model the client asked for; writers replace it with the upstream model.
    pub model: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolDefinition>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// How many alternative completions the client wants (Chat `n`, Gemini `candidateCount`).
    pub n: Option<u64>,
    pub reasoning: Option<ReasoningConfig>,
    pub response_format: Option<ResponseFormat>,
    /// How terse the answer should be (Chat `verbosity`, Responses `text.verbosity`: `low`,
    /// `medium`, `high`); kept as a string because no other format interprets it.
    pub verbosity: Option<String>,
    pub stream: bool,
    /// The client asked for usage in its stream (Chat `stream_options.include_usage`).
    pub include_usage: bool,
    /// An end-user id (Chat/Responses `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    /// OpenAI-style string metadata; formats without it drop it.
    pub metadata: Option<Map<String, Value>>,
}

/// Who wrote a message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    System,
    /// OpenAI's newer name for system instructions; treated like `System` everywhere else.
    Developer,
    User,
    Assistant,
    /// Tool results; the message holds only [`Part::ToolResult`] parts.
    Tool,
}

/// One turn of the conversation.
#[derive(Clone, PartialEq, Debug)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
    /// Chat's optional participant name.
    pub name: Option<String>,
}

impl Message {
    /// A message with the given role and parts and no name.
    pub fn new(role: Role, parts: Vec<Part>) -> Message {
        Message {
            role,
            parts,
            name: None,
        }
    }
}

/// One piece of message or response content.
#[derive(Clone, PartialEq, Debug)]
pub enum Part {
    Text(TextPart),
    Image(Media),
    /// A file such as a PDF.
    Document(Media),
    /// Base64 audio with its format (`wav`, `mp3`).
    Audio {
        data: String,
        format: String,
    },
    /// Assistant only.
    ToolCall(ToolCall),
    /// Tool messages only.
    ToolResult(ToolResult),
    /// Assistant only: thinking text, or an opaque redacted block.
    Reasoning(Reasoning),
    /// Assistant only: the model declined (Chat `refusal`).
    Refusal(String),
}

#[derive(Clone, PartialEq, Debug)]
pub struct TextPart {
    pub text: String,
    /// Anthropic's `cache_control` hint, kept opaque.
    pub cache_control: Option<Value>,
}

impl Part {
    /// A plain text part.
    pub fn text(text: impl Into<String>) -> Part {
        Part::Text(TextPart {
            text: text.into(),
            cache_control: None,
        })
    }
}

/// An image or document, by reference or inline.
#[derive(Clone, PartialEq, Debug)]
pub struct Media {
    pub source: MediaSource,
    /// OpenAI's image `detail` (`low`, `high`, `auto`).
    pub detail: Option<String>,
    pub filename: Option<String>,
}

#[derive(Clone, PartialEq, Debug)]
pub enum MediaSource {
    /// An http(s) URL (or any URL that is not a data URL).
    Url(String),
    /// Inline bytes, base64-encoded, with their MIME type.
    Base64 { media_type: String, data: String },
    /// A provider file id (OpenAI `file_id`, Anthropic `file_id`); not portable across providers.
    FileId(String),
    /// A plain-text document (Anthropic `source.type: "text"`).
    Text(String),
}

impl MediaSource {
    /// Reads a URL, turning `data:<mime>;base64,<data>` into inline bytes.
    pub fn from_url(url: &str) -> MediaSource {
        if let Some(rest) = url.strip_prefix("data:")
            && let Some((header, data)) = rest.split_once(',')
            && let Some(media_type) = header.strip_suffix(";base64")
        {
            return MediaSource::Base64 {
                media_type: media_type.to_string(),
                data: data.to_string(),
            };
        }
        MediaSource::Url(url.to_string())
    }

    /// The source as a URL, inline bytes as a data URL; None for file ids and text documents.
    pub fn to_url(&self) -> Option<String> {
        match self {
            MediaSource::Url(url) => Some(url.clone()),
            MediaSource::Base64 { media_type, data } => {
                Some(format!("data:{media_type};base64,{data}"))
            }
            MediaSource::FileId(_) | MediaSource::Text(_) => None,
        }
    }
}

/// A call the assistant made.
#[derive(Clone, PartialEq, Debug)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON string, exactly as the model produced them.
    pub arguments: String,
    /// Gemini puts a thought signature on function-call parts.
    pub signature: Option<Signature>,
}

impl ToolCall {
    /// The arguments as a JSON object, for formats that need one (Anthropic `input`, Gemini
    /// `args`). Policy for anything else: an empty string, malformed JSON (a model cut off
    /// mid-call) or a JSON value that is not an object all become `{}`, so one bad call in the
    /// history cannot make the whole conversation unusable.
    pub fn arguments_object(&self) -> Map<String, Value> {
        match serde_json::from_str::<Value>(&self.arguments) {
            Ok(Value::Object(object)) => object,
            _ => Map::new(),
        }
    }
}

/// The result of one tool call.
#[derive(Clone, PartialEq, Debug)]
pub struct ToolResult {
    pub call_id: String,
    /// The tool's name, resolved from the matching call when the format does not repeat it
    /// (Gemini needs it on `functionResponse`).
    pub name: Option<String>,
    /// Text and image parts.
    pub content: Vec<Part>,
    /// Anthropic `is_error`; other formats have no field for it.
    pub is_error: bool,
}

impl ToolResult {
    /// The text parts joined, the usual content for formats that take a string; borrowed when
    /// there is only one, as there almost always is.
    pub fn text(&self) -> Cow<'_, str> {
        join_borrowing(part_texts(&self.content), "")
    }
}

/// Thinking the model did, with its provider-bound signature.
#[derive(Clone, PartialEq, Debug)]
pub struct Reasoning {
    pub text: String,
    pub signature: Option<Signature>,
    /// Anthropic `redacted_thinking`: there is no text and `signature` holds the opaque data.
    pub redacted: bool,
}

/// An opaque reasoning signature and the format whose upstream issued it.
#[derive(Clone, PartialEq, Debug)]
pub struct Signature {
    pub provider: Format,
    pub value: String,
}

/// A function the model may call.
#[derive(Clone, PartialEq, Debug)]
pub struct ToolDefinition {
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of the arguments.
    pub parameters: JsonSchema,
    pub strict: Option<bool>,
}

impl ToolDefinition {
    /// The schema as a `Value`, for writers that rewrite it, or an error naming the tool when its
    /// schema holds JSON a `Value` cannot (see [`JsonSchema::to_value`]).
    pub fn schema_value(&self) -> Result<Value, ConvertError> {
        self.parameters.to_value().ok_or_else(|| {
            ConvertError::new(
                "tools",
                format!(
                    "the parameters schema of {:?} holds JSON that cannot be converted (a lone surrogate escape or a number beyond the range of a double)",
                    self.name
                ),
            )
        })
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ToolChoice {
    Auto,
    None,
    /// The model must call some tool.
    Required,
    /// The model must call this tool.
    Named(String),
}

/// Reasoning controls. A format sets what it has; writers derive the rest.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ReasoningConfig {
    pub effort: Option<ReasoningEffort>,
    /// A token budget (Anthropic `budget_tokens`, Gemini `thinkingBudget`).
    pub budget_tokens: Option<u64>,
    /// Return thought summaries (Gemini `includeThoughts`).
    pub include_thoughts: Option<bool>,
    /// Responses `reasoning.summary`.
    pub summary: Option<String>,
}

impl ReasoningConfig {
    /// The effort, or one derived from the budget (≤1024 low, ≤8192 medium, else high, as
    /// axonhub's `thinkingBudgetToReasoningEffort`).
    pub fn effective_effort(&self) -> Option<ReasoningEffort> {
        if self.effort.is_some() {
            return self.effort;
        }
        self.budget_tokens.map(|budget| match budget {
            0 => ReasoningEffort::None,
            1..=1024 => ReasoningEffort::Low,
            1025..=8192 => ReasoningEffort::Medium,
            _ => ReasoningEffort::High,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReasoningEffort {
    /// Reasoning off.
    None,
    Minimal,
    Low,
    Medium,
    High,
    /// OpenAI `xhigh`, Anthropic adaptive `max`.
    XHigh,
}

impl ReasoningEffort {
    /// The OpenAI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::None => "none",
            ReasoningEffort::Minimal => "minimal",
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
            ReasoningEffort::XHigh => "xhigh",
        }
    }

    /// Reads the OpenAI spelling.
    pub fn from_name(name: &str) -> Option<ReasoningEffort> {
        match name {
            "none" => Some(ReasoningEffort::None),
            "minimal" => Some(ReasoningEffort::Minimal),
            "low" => Some(ReasoningEffort::Low),
            "medium" => Some(ReasoningEffort::Medium),
            "high" => Some(ReasoningEffort::High),
            "xhigh" => Some(ReasoningEffort::XHigh),
            _ => None,
        }
    }
}

/// Structured output.
#[derive(Clone, PartialEq, Debug)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: Option<String>,
        description: Option<String>,
        schema: Value,
        strict: Option<bool>,
    },
}

/// A complete (non-stream) response. Only the first choice is kept: the gateway converts n>1 only
/// between identical formats, where bodies pass through untouched.
#[derive(Clone, PartialEq, Debug)]
pub struct Response {
    /// The upstream's id; may be empty (Gemini), in which case writers use the caller's id.
    pub id: String,
    /// The model the upstream reported; may be empty.
    pub model: String,
    /// Text, reasoning, refusal and tool-call parts, in output order.
    pub parts: Vec<Part>,
    pub finish_reason: FinishReason,
    pub usage: Option<Usage>,
}

/// Why generation stopped (protocols.md §5 finish-reason table).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Error,
}

/// One step of a streamed response.
///
/// Order: `Start` first; tool calls are numbered by `index` among tool calls only (not among all
/// content blocks), 0, 1, 2…; every `ToolCallStart` precedes that call's argument fragments.
/// `Finish` may come before the last `Usage` (Chat sends usage in a trailing chunk), so encoders
/// write their terminal events in `finish`, not on `Finish`. Several `Usage` events may appear;
/// each one is the complete usage so far and the last one wins.
#[derive(Clone, PartialEq, Debug)]
pub enum StreamEvent {
    Start {
        id: String,
        model: String,
    },
    TextDelta(String),
    ReasoningDelta(String),
    ReasoningSignature {
        provider: Format,
        signature: String,
    },
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolCallArgsDelta {
        index: usize,
        fragment: String,
    },
    ToolCallEnd {
        index: usize,
    },
    Finish {
        reason: FinishReason,
    },
    Usage(Usage),
    /// The upstream failed mid-stream, or the stream ended early; nothing follows.
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// A request or response that cannot be converted, with the path of the offending field
/// (`messages[2].content[0].image_url`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConvertError {
    pub path: String,
    pub message: String,
}

impl ConvertError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConvertError {
        ConvertError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(formatter, "{}", self.message)
        } else {
            write!(formatter, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConvertError {}

/// What a request writer needs besides the IR.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct WriteOptions {
    /// The model name the upstream knows.
    pub upstream_model: String,
    /// Used when the format requires a token limit (Anthropic) and the client set none.
    pub default_max_tokens: u32,
    /// Ask the upstream for a stream.
    pub stream: bool,
    /// The Google Cloud project of the Antigravity account (from `loadCodeAssist`), written as the
    /// envelope's `project`; empty for other formats.
    pub antigravity_project: String,
    /// A unique id for this upstream request, written as Antigravity's `requestId` (left out when
    /// empty); other formats ignore it.
    pub request_id: String,
}

/// Values a response writer uses when the IR lacks them (and always for `created_unix`).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ResponseMeta {
    pub id: String,
    pub model: String,
    pub created_unix: i64,
    /// The names of the client's OpenAI Responses `custom` tools: a Responses writer answers a
    /// call of one of them with a `custom_tool_call` (see `protocol::custom_tools`).
    pub custom_tools: Vec<String>,
}

/// The text parts of every system and developer message, in conversation order: the hoisting
/// policy for formats with one top-level system prompt (see the module docs).
pub fn hoisted_system_parts(messages: &[Message]) -> Vec<&TextPart> {
    messages
        .iter()
        .filter(|message| matches!(message.role, Role::System | Role::Developer))
        .flat_map(|message| &message.parts)
        .filter_map(|part| match part {
            Part::Text(text) if !text.text.is_empty() => Some(text),
            _ => None,
        })
        .collect()
}

/// The texts of the text parts, in order.
pub fn part_texts(parts: &[Part]) -> impl Iterator<Item = &str> {
    parts.iter().filter_map(|part| match part {
        Part::Text(text) => Some(text.text.as_str()),
        _ => None,
    })
}

/// `texts` joined with `separator`, borrowed when there is only one: writers that take one
/// string then do not copy the single text they almost always get.
pub fn join_borrowing<'a>(mut texts: impl Iterator<Item = &'a str>, separator: &str) -> Cow<'a, str> {
    let Some(first) = texts.next() else {
        return Cow::Borrowed("");
    };
    let Some(second) = texts.next() else {
        return Cow::Borrowed(first);
    };
    let mut joined = [first, separator, second].concat();
    for text in texts {
        joined.push_str(separator);
        joined.push_str(text);
    }
    Cow::Owned(joined)
}

/// The text of all text parts, concatenated.
pub fn join_text(parts: &[Part]) -> String {
    part_texts(parts).collect()
}

#[cfg(test)]
mod tests {
    use crate::protocol::ir::{
        MediaSource, Message, Part, ReasoningConfig, ReasoningEffort, Role, ToolCall,
        hoisted_system_parts,
    };

    #[test]
    fn data_urls_become_inline_media() {
        assert_eq!(
            MediaSource::from_url("data:image/png;base64,iVBORw0KGgo="),
            MediaSource::Base64 {
                media_type: "image/png".to_string(),
                data: "iVBORw0KGgo=".to_string()
            }
        );
        let url = MediaSource::from_url("https://example.com/cat.png");
        assert_eq!(
            url,
            MediaSource::Url("https://example.com/cat.png".to_string())
        );
        let not_base64 = MediaSource::from_url("data:text/plain,hello");
        assert_eq!(
            not_base64,
            MediaSource::Url("data:text/plain,hello".to_string())
        );
        let inline = MediaSource::from_url("data:application/pdf;base64,JVBE");
        assert_eq!(
            inline.to_url().as_deref(),
            Some("data:application/pdf;base64,JVBE")
        );
    }

    #[test]
    fn malformed_arguments_become_an_empty_object() {
        let call = |arguments: &str| ToolCall {
            id: "call_1".to_string(),
            name: "f".to_string(),
            arguments: arguments.to_string(),
            signature: None,
        };
        assert_eq!(call("{\"a\":1}").arguments_object()["a"], 1);
        for bad in ["", "{bad", "[1,2]", "\"text\"", "null"] {
            assert!(call(bad).arguments_object().is_empty(), "{bad}");
        }
    }

    #[test]
    fn effort_is_derived_from_budget() {
        let budget = |tokens| ReasoningConfig {
            budget_tokens: Some(tokens),
            ..ReasoningConfig::default()
        };
        assert_eq!(budget(0).effective_effort(), Some(ReasoningEffort::None));
        assert_eq!(budget(1024).effective_effort(), Some(ReasoningEffort::Low));
        assert_eq!(
            budget(8192).effective_effort(),
            Some(ReasoningEffort::Medium)
        );
        assert_eq!(
            budget(10000).effective_effort(),
            Some(ReasoningEffort::High)
        );
        assert_eq!(ReasoningConfig::default().effective_effort(), None);
        for effort in ["none", "minimal", "low", "medium", "high", "xhigh"] {
            assert_eq!(ReasoningEffort::from_name(effort).unwrap().as_str(), effort);
        }
    }

    #[test]
    fn system_parts_are_hoisted_in_order() {
        let messages = vec![
            Message::new(Role::System, vec![Part::text("one")]),
            Message::new(Role::User, vec![Part::text("hi")]),
            Message::new(Role::Developer, vec![Part::text("two"), Part::text("")]),
        ];
        let texts: Vec<&str> = hoisted_system_parts(&messages)
            .iter()
            .map(|part| part.text.as_str())
            .collect();
        assert_eq!(texts, ["one", "two"]);
    }
}
