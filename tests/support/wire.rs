//! The shared vocabulary of the wire-format tests: what an answer means once its format is taken
//! away (a [`Summary`]), the four client protocols and five channel types, and small strict JSON
//! accessors whose errors name the path of the offending field.
//!
//! `wire_upstream` scripts the mock providers and checks the requests they receive;
//! `wire_client` builds client requests and validates, strictly, what the gateway answers.

#![allow(dead_code)]

use std::fmt;

use serde_json::{Map, Value};

/// A protocol a client can speak to the gateway.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ClientProtocol {
    OpenaiChat,
    OpenaiResponses,
    Anthropic,
    Gemini,
}

impl ClientProtocol {
    pub const ALL: [ClientProtocol; 4] = [
        ClientProtocol::OpenaiChat,
        ClientProtocol::OpenaiResponses,
        ClientProtocol::Anthropic,
        ClientProtocol::Gemini,
    ];

    /// The channel-type spelling of the same format.
    pub fn name(self) -> &'static str {
        self.channel().name()
    }

    /// The channel type that speaks this protocol (pass-through when they meet).
    pub fn channel(self) -> ChannelKind {
        match self {
            ClientProtocol::OpenaiChat => ChannelKind::OpenaiChat,
            ClientProtocol::OpenaiResponses => ChannelKind::OpenaiResponses,
            ClientProtocol::Anthropic => ChannelKind::Anthropic,
            ClientProtocol::Gemini => ChannelKind::Gemini,
        }
    }

    pub fn from_name(name: &str) -> Option<ClientProtocol> {
        ClientProtocol::ALL
            .into_iter()
            .find(|protocol| protocol.name() == name)
    }

    pub fn format(self) -> octopus::protocol::Format {
        self.channel().format()
    }
}

/// A channel type, which is also the wire format its upstream speaks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ChannelKind {
    OpenaiChat,
    OpenaiResponses,
    Anthropic,
    Gemini,
    Antigravity,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 5] = [
        ChannelKind::OpenaiChat,
        ChannelKind::OpenaiResponses,
        ChannelKind::Anthropic,
        ChannelKind::Gemini,
        ChannelKind::Antigravity,
    ];

    /// The channel type as the admin API spells it.
    pub fn name(self) -> &'static str {
        match self {
            ChannelKind::OpenaiChat => "openai_chat",
            ChannelKind::OpenaiResponses => "openai_responses",
            ChannelKind::Anthropic => "anthropic",
            ChannelKind::Gemini => "gemini",
            ChannelKind::Antigravity => "antigravity",
        }
    }

    pub fn from_name(name: &str) -> Option<ChannelKind> {
        ChannelKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }

    pub fn format(self) -> octopus::protocol::Format {
        octopus::protocol::Format::from_name(self.name()).expect("every channel kind is a format")
    }

    /// The base URL of a channel of this kind on a mock at `mock_base_url` (`http://host:port`),
    /// with the path prefix the real provider's base URL has.
    pub fn base_url(self, mock_base_url: &str) -> String {
        match self {
            ChannelKind::OpenaiChat | ChannelKind::OpenaiResponses | ChannelKind::Anthropic => {
                format!("{mock_base_url}/v1")
            }
            ChannelKind::Gemini => format!("{mock_base_url}/v1beta"),
            ChannelKind::Antigravity => mock_base_url.to_string(),
        }
    }

    /// Whether the format reports reasoning tokens in its usage (Anthropic does not).
    pub fn reports_reasoning_tokens(self) -> bool {
        self != ChannelKind::Anthropic
    }
}

/// How an answer ended, in the IR's terms.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum FinishKind {
    Stop,
    ToolCalls,
    Length,
    ContentFilter,
    /// A raw reason the validator does not map.
    Other(String),
}

/// One tool call as the client sees it.
#[derive(Clone, PartialEq, Debug)]
pub struct ToolCallSummary {
    /// None where the client format has no call id (Gemini may omit it).
    pub id: Option<String>,
    pub name: String,
    /// The arguments parsed into JSON (always an object for a valid call); for a call of an
    /// OpenAI Responses custom tool, its free-form input as a JSON string.
    pub arguments: Value,
}

/// Token counts, normalized as protocols.md §5 says: input includes cached tokens, output
/// includes reasoning tokens; 0 stands for "not reported".
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct UsageSummary {
    pub input: u64,
    pub cached: u64,
    pub output: u64,
    pub reasoning: u64,
}

/// What an answer means, whatever format carried it.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Summary {
    /// The answer text, all text parts joined.
    pub text: String,
    /// The reasoning (thinking, summary) text joined.
    pub reasoning: String,
    pub tool_calls: Vec<ToolCallSummary>,
    pub finish: Option<FinishKind>,
    /// None when the answer carried no usage at all.
    pub usage: Option<UsageSummary>,
}

impl Summary {
    /// The differences between `self` (what was expected) and `actual`, one line each. Tool-call
    /// ids are compared only where the expectation has one; `usage` only where it has one.
    pub fn differences(&self, actual: &Summary) -> Vec<String> {
        let mut differences = Vec::new();
        if self.text != actual.text {
            differences.push(format!(
                "text: expected {:?}, got {:?}",
                self.text, actual.text
            ));
        }
        if self.reasoning != actual.reasoning {
            differences.push(format!(
                "reasoning: expected {:?}, got {:?}",
                self.reasoning, actual.reasoning
            ));
        }
        if self.tool_calls.len() != actual.tool_calls.len() {
            differences.push(format!(
                "tool calls: expected {:?}, got {:?}",
                self.tool_calls, actual.tool_calls
            ));
        } else {
            for (expected, got) in self.tool_calls.iter().zip(&actual.tool_calls) {
                if expected.name != got.name || expected.arguments != got.arguments {
                    differences.push(format!(
                        "tool call: expected {}({}), got {}({})",
                        expected.name, expected.arguments, got.name, got.arguments
                    ));
                }
                if let Some(expected_id) = &expected.id
                    && got.id.as_ref() != Some(expected_id)
                {
                    differences.push(format!(
                        "tool call id: expected {expected_id:?}, got {:?}",
                        got.id
                    ));
                }
            }
        }
        if self.finish != actual.finish {
            differences.push(format!(
                "finish: expected {:?}, got {:?}",
                self.finish, actual.finish
            ));
        }
        if self.usage.is_some() && self.usage != actual.usage {
            differences.push(format!(
                "usage: expected {:?}, got {:?}",
                self.usage, actual.usage
            ));
        }
        differences
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "text {:?}, reasoning {:?}, tools [",
            self.text, self.reasoning
        )?;
        for call in &self.tool_calls {
            write!(formatter, "{}({}) ", call.name, call.arguments)?;
        }
        write!(
            formatter,
            "], finish {:?}, usage {:?}",
            self.finish, self.usage
        )
    }
}

/// A check result: Err carries a message naming where the check failed.
pub type Checked<T> = Result<T, String>;

/// Fails with `message()` unless `condition` holds.
pub fn ensure(condition: bool, message: impl FnOnce() -> String) -> Checked<()> {
    if condition { Ok(()) } else { Err(message()) }
}

/// `value[key]`, which must be present (null counts as present).
pub fn field<'a>(value: &'a Value, key: &str, path: &str) -> Checked<&'a Value> {
    value
        .as_object()
        .ok_or_else(|| format!("{path}: expected an object, got {}", brief(value)))?
        .get(key)
        .ok_or_else(|| format!("{path}.{key}: missing"))
}

/// `value[key]` as a string.
pub fn string_field<'a>(value: &'a Value, key: &str, path: &str) -> Checked<&'a str> {
    let found = field(value, key, path)?;
    found
        .as_str()
        .ok_or_else(|| format!("{path}.{key}: expected a string, got {}", brief(found)))
}

/// `value[key]` as a non-empty string.
pub fn non_empty_string_field<'a>(value: &'a Value, key: &str, path: &str) -> Checked<&'a str> {
    let found = string_field(value, key, path)?;
    ensure(!found.is_empty(), || format!("{path}.{key}: empty"))?;
    Ok(found)
}

/// `value[key]` as a string, or None when it is absent or null.
pub fn optional_string_field<'a>(
    value: &'a Value,
    key: &str,
    path: &str,
) -> Checked<Option<&'a str>> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(format!(
            "{path}.{key}: expected a string or null, got {}",
            brief(other)
        )),
    }
}

/// `value[key]` as a whole non-negative number.
pub fn count_field(value: &Value, key: &str, path: &str) -> Checked<u64> {
    let found = field(value, key, path)?;
    found.as_u64().ok_or_else(|| {
        format!(
            "{path}.{key}: expected a whole number, got {}",
            brief(found)
        )
    })
}

/// `value[key]` as a whole number, 0 when absent or null.
pub fn optional_count_field(value: &Value, key: &str, path: &str) -> Checked<u64> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(found) => found.as_u64().ok_or_else(|| {
            format!(
                "{path}.{key}: expected a whole number, got {}",
                brief(found)
            )
        }),
    }
}

/// `value[key]` as an array.
pub fn array_field<'a>(value: &'a Value, key: &str, path: &str) -> Checked<&'a Vec<Value>> {
    let found = field(value, key, path)?;
    found
        .as_array()
        .ok_or_else(|| format!("{path}.{key}: expected an array, got {}", brief(found)))
}

/// `value[key]` as an object.
pub fn object_field<'a>(
    value: &'a Value,
    key: &str,
    path: &str,
) -> Checked<&'a Map<String, Value>> {
    let found = field(value, key, path)?;
    found
        .as_object()
        .ok_or_else(|| format!("{path}.{key}: expected an object, got {}", brief(found)))
}

/// `value[key]` must equal `expected`.
pub fn expect_field(value: &Value, key: &str, expected: &Value, path: &str) -> Checked<()> {
    let found = field(value, key, path)?;
    ensure(found == expected, || {
        format!("{path}.{key}: expected {expected}, got {}", brief(found))
    })
}

/// Parses tool-call arguments the way a client SDK would: the string must be a JSON object
/// (an empty string means no arguments).
pub fn parse_arguments(arguments: &str, path: &str) -> Checked<Value> {
    if arguments.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let parsed: Value = serde_json::from_str(arguments)
        .map_err(|error| format!("{path}: arguments {arguments:?} are not JSON ({error})"))?;
    ensure(parsed.is_object(), || {
        format!("{path}: arguments {arguments:?} are not a JSON object")
    })?;
    Ok(parsed)
}

/// A short rendering of a JSON value for error messages.
pub fn brief(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text
    }
}
