//! Anthropic Messages to and from the IR: requests, responses, and stream events.
//!
//! Hard rules of the Messages API that the request writer enforces (protocols.md §1C, §5):
//! - `max_tokens` is required: the client's value, else `WriteOptions::default_max_tokens`.
//! - `temperature` is clamped to 0–1; penalties, seed and `n` have no equivalent (`n > 1` is
//!   refused rather than silently answered once).
//! - System and developer messages are hoisted, in order, into the top-level `system`
//!   (`ir::hoisted_system_parts`).
//! - Roles alternate: consecutive turns of the same role are merged, and in a user turn the
//!   `tool_result` blocks come first.
//! - Thinking: an effort becomes a budget (low 1024, medium 2048, high 4096, xhigh 8192; at least
//!   1024), `max_tokens` is raised above the budget, temperature and top_k are removed, top_p below
//!   0.95 is removed and a forced tool choice becomes `auto`. Thinking is left off when the last
//!   assistant turn called tools without an Anthropic-signed thinking block, which the API would
//!   otherwise reject with a 400.
//! - Reasoning with a signature from another provider is never sent; unsigned reasoning is dropped
//!   too, because Anthropic requires a signature on every thinking block.
//! - Tool-use ids are limited to `[A-Za-z0-9_-]`; other characters become `_` on both the call
//!   and its result, so they still match.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Value, json};

use crate::protocol::Format;
use crate::protocol::error::{ErrorKind, parse_upstream_error, render_stream_error};
use crate::protocol::ir::{
    ConvertError, FinishReason, Media, MediaSource, Message, Part, Reasoning, ReasoningConfig,
    ReasoningEffort, Request, Response, ResponseFormat, ResponseMeta, Role, Signature, StreamEvent,
    TextPart, ToolCall, ToolChoice, JsonSchema, ToolDefinition, ToolResult, WriteOptions, hoisted_system_parts,
};
use crate::protocol::json::{FieldPath, element,
    field, index, join, log_dropped_fields, object, opt_array, opt_bool, opt_f64,
    opt_str, opt_u64, req_str,
};
use crate::protocol::raw_json;
use crate::protocol::sse::{SseEvent, write_json_event};
use crate::protocol::typed_read::optional_borrowed_str;
use crate::protocol::usage::{StreamUsageTracker, Usage, usage_from_value};

/// The smallest thinking budget the API accepts.
const MIN_THINKING_BUDGET: u64 = 1024;

/// How the system block begins that Claude Code adds for Anthropic's billing.
pub(crate) const CLAUDE_CODE_BILLING_LINE: &str = "x-anthropic-billing-header:";

/// Image types the Messages API accepts.
const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Reads a Messages request body.
pub fn parse_request(body: &Value) -> Result<Request, ConvertError> {
    object(body, "")?;
    let mut request = Request {
        model: opt_str(body, "model", "")?.unwrap_or_default().to_string(),
        max_tokens: opt_u64(body, "max_tokens", "")?,
        temperature: opt_f64(body, "temperature", "")?,
        top_p: opt_f64(body, "top_p", "")?,
        top_k: opt_u64(body, "top_k", "")?,
        stream: opt_bool(body, "stream", "")?.unwrap_or(false),
        ..Request::default()
    };

    match field(body, "system") {
        None => {}
        Some(Value::String(text)) if text.is_empty() => {}
        Some(Value::String(text)) => {
            let part = Part::text(text.clone());
            request
                .messages
                .push(Message::new(Role::System, vec![part]));
        }
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::new();
            for (position, block) in blocks.iter().enumerate() {
                let path = index("system", position);
                let text = req_str(block, "text", &path)?;
                // Claude Code opens its system prompt with a billing line for Anthropic
                // (`x-anthropic-billing-header: cc_version=...`). It tells another provider's
                // model nothing, and a line that changes between versions at the very start of
                // the prompt would defeat that provider's prefix caching.
                if text.starts_with(CLAUDE_CODE_BILLING_LINE) {
                    log::debug!("anthropic request: {path} is Claude Code's billing line; dropped");
                    continue;
                }
                parts.push(Part::Text(TextPart {
                    text: text.to_string(),
                    cache_control: field(block, "cache_control").cloned(),
                }));
            }
            if !parts.is_empty() {
                request.messages.push(Message::new(Role::System, parts));
            }
        }
        Some(_) => return Err(ConvertError::new("system", "expected a string or an array")),
    }

    let messages = opt_array(body, "messages", "")?
        .ok_or_else(|| ConvertError::new("messages", "is required"))?;
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (position, message) in messages.iter().enumerate() {
        let path = index("messages", position);
        parse_message(message, &path, &mut call_names, &mut request.messages)?;
    }

    if let Some(tools) = opt_array(body, "tools", "")? {
        for (position, tool) in tools.iter().enumerate() {
            let path = index("tools", position);
            // Server tools (web search, code execution…) carry a versioned type and have no
            // portable equivalent; only custom tools are converted.
            if opt_str(tool, "type", &path)?.is_some_and(|tool_type| tool_type != "custom") {
                continue;
            }
            request.tools.push(ToolDefinition {
                name: req_str(tool, "name", &path)?.to_string(),
                description: opt_str(tool, "description", &path)?.map(str::to_string),
                parameters: field(tool, "input_schema").map_or_else(JsonSchema::empty_object, JsonSchema::from_value),
                strict: None,
            });
        }
    }
    if let Some(choice) = field(body, "tool_choice") {
        parse_tool_choice(choice, &mut request)?;
    }
    if let Some(stop) = opt_array(body, "stop_sequences", "")? {
        for (position, sequence) in stop.iter().enumerate() {
            let sequence = sequence.as_str().ok_or_else(|| {
                ConvertError::new(index("stop_sequences", position), "expected a string")
            })?;
            request.stop.push(sequence.to_string());
        }
    }
    request.reasoning = parse_thinking(field(body, "thinking"), field(body, "output_config"))?;
    request.response_format = parse_output_format(field(body, "output_config"))?;
    if let Some(metadata) = field(body, "metadata") {
        request.user = opt_str(metadata, "user_id", "metadata")?.map(str::to_string);
    }
    // Context editing, remote MCP servers and code-execution containers run inside Anthropic's
    // API; another upstream gets the conversation exactly as the client sent it and no server
    // tools, which it can still answer.
    log_dropped_fields(
        Format::Anthropic,
        body,
        &[
            "context_management",
            "mcp_servers",
            "container",
            "service_tier",
        ],
    );
    Ok(request)
}

/// Reads `tool_choice` into the request: the choice, and `disable_parallel_tool_use`.
pub(crate) fn parse_tool_choice(choice: &Value, request: &mut Request) -> Result<(), ConvertError> {
    let path = "tool_choice";
    request.tool_choice = Some(match req_str(choice, "type", path)? {
        "auto" => ToolChoice::Auto,
        "any" => ToolChoice::Required,
        "none" => ToolChoice::None,
        "tool" => ToolChoice::Named(req_str(choice, "name", path)?.to_string()),
        other => {
            return Err(ConvertError::new(
                join(path, "type"),
                format!("unknown type {other:?}"),
            ));
        }
    });
    if opt_bool(choice, "disable_parallel_tool_use", path)? == Some(true) {
        request.parallel_tool_calls = Some(false);
    }
    Ok(())
}

/// Reads `output_config.format`: a JSON schema the answer must follow.
pub(crate) fn parse_output_format(output_config: Option<&Value>) -> Result<Option<ResponseFormat>, ConvertError> {
    let Some(format) = output_config.and_then(|config| field(config, "format")) else {
        return Ok(None);
    };
    let path = "output_config.format";
    if req_str(format, "type", path)? != "json_schema" {
        return Ok(None);
    }
    Ok(Some(ResponseFormat::JsonSchema {
        name: None,
        description: None,
        schema: field(format, "schema")
            .cloned()
            .unwrap_or_else(|| json!({})),
        strict: None,
    }))
}

/// Reads `thinking`, with the effort of adaptive thinking from `output_config`.
pub(crate) fn parse_thinking(
    thinking: Option<&Value>,
    output_config: Option<&Value>,
) -> Result<Option<ReasoningConfig>, ConvertError> {
    let Some(thinking) = thinking else {
        return Ok(None);
    };
    let path = "thinking";
    let config = match req_str(thinking, "type", path)? {
        "enabled" => ReasoningConfig {
            budget_tokens: opt_u64(thinking, "budget_tokens", path)?,
            include_thoughts: Some(true),
            ..ReasoningConfig::default()
        },
        "disabled" => ReasoningConfig {
            effort: Some(ReasoningEffort::None),
            ..ReasoningConfig::default()
        },
        "adaptive" => {
            let effort = match output_config {
                Some(config) => opt_str(config, "effort", "output_config")?,
                None => None,
            };
            // Anthropic's documented default effort is high.
            let effort = match effort.unwrap_or("high") {
                "low" => ReasoningEffort::Low,
                "medium" => ReasoningEffort::Medium,
                "max" => ReasoningEffort::XHigh,
                _ => ReasoningEffort::High,
            };
            ReasoningConfig {
                effort: Some(effort),
                include_thoughts: Some(true),
                ..ReasoningConfig::default()
            }
        }
        other => {
            return Err(ConvertError::new(
                join(path, "type"),
                format!("unknown type {other:?}"),
            ));
        }
    };
    Ok(Some(config))
}

/// Reads one message. A user turn with `tool_result` blocks becomes a tool message (the results,
/// in order) followed by a user message with the remaining blocks.
fn parse_message(
    message: &Value,
    path: &FieldPath,
    call_names: &mut HashMap<String, String>,
    out: &mut Vec<Message>,
) -> Result<(), ConvertError> {
    object(message, path)?;
    let role = req_str(message, "role", path)?;
    let content_path = join(path, "content");
    let blocks: Vec<Value> = match field(message, "content") {
        None => Vec::new(),
        Some(Value::String(text)) => vec![json!({"type": "text", "text": text})],
        Some(Value::Array(blocks)) => blocks.clone(),
        Some(_) => {
            return Err(ConvertError::new(
                content_path,
                "expected a string or an array",
            ));
        }
    };
    match role {
        "user" => {
            let mut results = Vec::new();
            let mut parts = Vec::new();
            for (position, block) in blocks.iter().enumerate() {
                let block_path = index(&content_path, position);
                if req_str(block, "type", &block_path)? == "tool_result" {
                    results.push(Part::ToolResult(parse_tool_result(
                        block,
                        &block_path,
                        call_names,
                    )?));
                } else {
                    parts.extend(parse_user_block(block, &block_path)?);
                }
            }
            if !results.is_empty() {
                out.push(Message::new(Role::Tool, results));
            }
            if !parts.is_empty() || blocks.is_empty() {
                out.push(Message::new(Role::User, parts));
            }
        }
        "assistant" => {
            let mut parts = Vec::new();
            for (position, block) in blocks.iter().enumerate() {
                let block_path = index(&content_path, position);
                if let Some(part) = parse_assistant_block(block, &block_path)? {
                    if let Part::ToolCall(call) = &part {
                        call_names.insert(call.id.clone(), call.name.clone());
                    }
                    parts.push(part);
                }
            }
            out.push(Message::new(Role::Assistant, parts));
        }
        // Claude Code 2.1 (beta `mid-conversation-system-2026-04-07`) sends system turns inside
        // `messages`, after the first user turn. They stay at their position in the IR: formats
        // with positional system messages keep them there, and formats with one system prompt
        // hoist them (`ir::hoisted_system_parts`).
        "system" => {
            let mut parts = Vec::new();
            for (position, block) in blocks.iter().enumerate() {
                let block_path = index(&content_path, position);
                match req_str(block, "type", &block_path)? {
                    "text" => parts.push(Part::Text(TextPart {
                        text: req_str(block, "text", &block_path)?.to_string(),
                        cache_control: field(block, "cache_control").cloned(),
                    })),
                    other => log::debug!(
                        "anthropic request: {block_path} is a {other:?} block in a system message, \
                         which only text can fill; dropped"
                    ),
                }
            }
            if !parts.is_empty() {
                out.push(Message::new(Role::System, parts));
            }
        }
        other => {
            return Err(ConvertError::new(
                join(path, "role"),
                format!("unsupported role {other:?}"),
            ));
        }
    }
    Ok(())
}

fn parse_user_block(block: &Value, path: &FieldPath) -> Result<Option<Part>, ConvertError> {
    match req_str(block, "type", path)? {
        "text" => {
            let text = req_str(block, "text", path)?;
            Ok(Some(Part::Text(TextPart {
                text: text.to_string(),
                cache_control: field(block, "cache_control").cloned(),
            })))
        }
        "image" => Ok(Some(Part::Image(parse_media(block, path)?))),
        "document" => Ok(Some(Part::Document(parse_media(block, path)?))),
        "search_result" => Ok(Some(Part::text(search_result_text(block, path)?))),
        // A file uploaded into Anthropic's code-execution container; other upstreams have no
        // container to put it in.
        "container_upload" => {
            log::debug!("anthropic request: {path} is a container_upload block; dropped");
            Ok(None)
        }
        other => Err(ConvertError::new(
            join(path, "type"),
            format!("unsupported content block type {other:?}"),
        )),
    }
}

/// A `search_result` block (a client-side RAG result with its source, for citations) as plain
/// text: the title, the source and the content, which is what the model needs to use it.
/// Citations are Anthropic's own feature and are not asked for elsewhere.
fn search_result_text(block: &Value, path: &FieldPath) -> Result<String, ConvertError> {
    let mut lines = Vec::new();
    for key in ["title", "source"] {
        if let Some(value) = opt_str(block, key, path)?
            && !value.is_empty()
        {
            lines.push(value.to_string());
        }
    }
    let content_path = join(path, "content");
    for (position, inner) in opt_array(block, "content", path)?
        .into_iter()
        .flatten()
        .enumerate()
    {
        lines.push(req_str(inner, "text", &index(&content_path, position))?.to_string());
    }
    Ok(lines.join("\n"))
}

fn parse_media(block: &Value, path: &FieldPath) -> Result<Media, ConvertError> {
    let source_path = join(path, "source");
    let source =
        field(block, "source").ok_or_else(|| ConvertError::new(source_path, "is required"))?;
    let source = match req_str(source, "type", &source_path)? {
        "base64" => MediaSource::Base64 {
            media_type: req_str(source, "media_type", &source_path)?.to_string(),
            data: req_str(source, "data", &source_path)?.to_string(),
        },
        "url" => MediaSource::Url(req_str(source, "url", &source_path)?.to_string()),
        "file" => MediaSource::FileId(req_str(source, "file_id", &source_path)?.to_string()),
        "text" => MediaSource::Text(req_str(source, "data", &source_path)?.to_string()),
        "content" => {
            let blocks = opt_array(source, "content", &source_path)?
                .cloned()
                .unwrap_or_default();
            let texts: Vec<&str> = blocks
                .iter()
                .filter_map(|block| block["text"].as_str())
                .collect();
            MediaSource::Text(texts.join("\n"))
        }
        other => {
            return Err(ConvertError::new(
                join(&source_path, "type"),
                format!("unsupported source type {other:?}"),
            ));
        }
    };
    Ok(Media {
        source,
        detail: None,
        filename: opt_str(block, "title", path)?.map(str::to_string),
    })
}

fn parse_tool_result(
    block: &Value,
    path: &FieldPath,
    call_names: &HashMap<String, String>,
) -> Result<ToolResult, ConvertError> {
    let call_id = req_str(block, "tool_use_id", path)?.to_string();
    let content_path = join(path, "content");
    let content = match field(block, "content") {
        None => Vec::new(),
        Some(Value::String(text)) => vec![Part::text(text.clone())],
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::new();
            for (position, inner) in blocks.iter().enumerate() {
                parts.extend(parse_user_block(inner, &index(&content_path, position))?);
            }
            parts
        }
        Some(_) => {
            return Err(ConvertError::new(
                content_path,
                "expected a string or an array",
            ));
        }
    };
    Ok(ToolResult {
        name: call_names.get(&call_id).cloned(),
        call_id,
        content,
        is_error: opt_bool(block, "is_error", path)?.unwrap_or(false),
    })
}

fn parse_assistant_block(block: &Value, path: &FieldPath) -> Result<Option<Part>, ConvertError> {
    let part = match req_str(block, "type", path)? {
        "text" => Part::text(req_str(block, "text", path)?),
        "thinking" => Part::Reasoning(Reasoning {
            text: req_str(block, "thinking", path)?.to_string(),
            signature: anthropic_signature(opt_str(block, "signature", path)?),
            redacted: false,
        }),
        "redacted_thinking" => Part::Reasoning(Reasoning {
            text: String::new(),
            signature: anthropic_signature(Some(req_str(block, "data", path)?)),
            redacted: true,
        }),
        "tool_use" => Part::ToolCall(ToolCall {
            id: req_str(block, "id", path)?.to_string(),
            name: req_str(block, "name", path)?.to_string(),
            arguments: field(block, "input")
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".to_string()),
            signature: None,
        }),
        // Server-side tool blocks (`server_tool_use`, `web_search_tool_result` and the like)
        // record work Anthropic's servers did; only Anthropic can read them back.
        other => {
            log::debug!(
                "anthropic: {path} is a {other:?} block with no equivalent elsewhere; dropped"
            );
            return Ok(None);
        }
    };
    Ok(Some(part))
}

pub(crate) fn anthropic_signature(value: Option<&str>) -> Option<Signature> {
    value
        .filter(|value| !value.is_empty())
        .map(|value| Signature {
            provider: Format::Anthropic,
            value: value.to_string(),
        })
}

/// A Messages request body as it is written. The top level and the tools are serialised
/// straight from the IR (a tool's schema by reference, not copied), because building the whole
/// body as a `Value` tree, then serialising and dropping it, cost a converted request more
/// instructions than anything else it did. Fields are in alphabetical order, the order the
/// sorted maps of `json!` wrote them in, so the upstream gets the same bytes as before.
#[derive(Serialize)]
pub struct RequestOut<'request> {
    max_tokens: u64,
    messages: Vec<TurnOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataOut<'request>>,
    model: &'request str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<Value>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'request [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<SystemOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'request>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
}

#[derive(Serialize)]
struct MetadataOut<'request> {
    user_id: &'request str,
}

/// The top-level system prompt: a plain string when it is one part without a cache hint.
#[derive(Serialize)]
#[serde(untagged)]
enum SystemOut<'request> {
    Text(&'request str),
    Blocks(Vec<BlockOut<'request>>),
}

/// One turn of the conversation as the Messages API takes it. Turns borrow the IR's text: a long
/// conversation's text is most of a request, and building a `Value` tree of it copied all of it
/// once more.
#[derive(Serialize)]
struct TurnOut<'request> {
    content: ContentOut<'request>,
    role: &'static str,
}

/// A turn's or a tool result's `content`: a plain string, or blocks.
enum ContentOut<'request> {
    Text(&'request str),
    Blocks(Vec<BlockOut<'request>>),
}

impl Serialize for ContentOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ContentOut::Text(text) => serializer.serialize_str(text),
            ContentOut::Blocks(blocks) => blocks.serialize(serializer),
        }
    }
}

/// A content block of a request.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'request> {
    Text {
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'request Value>,
        text: &'request str,
    },
    Image {
        source: SourceOut<'request>,
    },
    Document {
        source: SourceOut<'request>,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<&'request str>,
    },
    ToolResult {
        content: ContentOut<'request>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
        tool_use_id: String,
    },
    ToolUse {
        id: String,
        input: serde_json::Map<String, Value>,
        name: &'request str,
    },
    Thinking {
        signature: &'request str,
        thinking: &'request str,
    },
    RedactedThinking {
        data: &'request str,
    },
}

/// Where an image's or a document's bytes come from.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum SourceOut<'request> {
    Url { url: &'request str },
    Base64 { data: &'request str, media_type: &'request str },
    Text { data: &'request str, media_type: &'static str },
}

#[derive(Serialize)]
struct ToolChoiceOut<'request> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_parallel_tool_use: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'request str>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct ToolOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'request str>,
    input_schema: Cow<'request, RawValue>,
    name: &'request str,
}

/// Writes a Messages request body for an upstream.
pub fn write_request<'request>(
    request: &'request Request,
    options: &'request WriteOptions,
) -> Result<RequestOut<'request>, ConvertError> {
    if request.n.is_some_and(|n| n > 1) {
        return Err(ConvertError::new(
            "n",
            "anthropic cannot return more than one choice",
        ));
    }
    let system = match hoisted_system_parts(&request.messages).as_slice() {
        [] => None,
        [only] if only.cache_control.is_none() => Some(SystemOut::Text(&only.text)),
        parts => Some(SystemOut::Blocks(parts.iter().map(|part| text_block(part)).collect())),
    };
    let mut written = RequestOut {
        max_tokens: request.max_tokens.unwrap_or(u64::from(options.default_max_tokens)),
        messages: write_messages(&request.messages)?,
        metadata: request.user.as_deref().map(|user_id| MetadataOut { user_id }),
        model: &options.upstream_model,
        output_config: None,
        stop_sequences: &request.stop,
        stream: options.stream,
        system,
        temperature: None,
        thinking: None,
        tool_choice: None,
        tools: request.tools.iter().map(write_tool).collect::<Result<_, _>>()?,
        top_k: None,
        top_p: None,
    };

    let thinking_budget = thinking_budget(request);
    if let Some(budget) = thinking_budget {
        if written.max_tokens <= budget {
            written.max_tokens = budget.saturating_add(written.max_tokens);
        }
        written.thinking = Some(json!({"type": "enabled", "budget_tokens": budget}));
    } else {
        let turned_off = request
            .reasoning
            .as_ref()
            .and_then(ReasoningConfig::effective_effort)
            == Some(ReasoningEffort::None);
        if turned_off {
            written.thinking = Some(json!({"type": "disabled"}));
        }
        written.temperature = request.temperature.map(|value| value.clamp(0.0, 1.0));
        written.top_k = request.top_k;
    }
    written.top_p = request
        .top_p
        .filter(|top_p| thinking_budget.is_none() || *top_p >= 0.95);

    if !request.tools.is_empty() {
        let (kind, name) = match &request.tool_choice {
            None | Some(ToolChoice::Auto) => ("auto", None),
            Some(ToolChoice::None) => ("none", None),
            // Thinking does not allow forcing a tool.
            Some(ToolChoice::Required | ToolChoice::Named(_)) if thinking_budget.is_some() => {
                ("auto", None)
            }
            Some(ToolChoice::Required) => ("any", None),
            Some(ToolChoice::Named(name)) => ("tool", Some(name.as_str())),
        };
        let serial_calls = request.parallel_tool_calls == Some(false) && kind != "none";
        if request.tool_choice.is_some() || serial_calls {
            written.tool_choice = Some(ToolChoiceOut {
                disable_parallel_tool_use: serial_calls,
                name,
                kind,
            });
        }
    }
    if let Some(ResponseFormat::JsonSchema { schema, .. }) = &request.response_format {
        written.output_config = Some(json!({"format": {"type": "json_schema", "schema": schema}}));
    }
    if request.verbosity.is_some() {
        log::debug!("anthropic upstream: the client's verbosity has no equivalent; dropped");
    }
    Ok(written)
}

/// The thinking budget to request, or None when thinking stays off.
fn thinking_budget(request: &Request) -> Option<u64> {
    let reasoning = request.reasoning.as_ref()?;
    let budget = match reasoning.budget_tokens {
        Some(0) => return None,
        Some(budget) => budget.max(MIN_THINKING_BUDGET),
        None => match reasoning.effort? {
            ReasoningEffort::None => return None,
            ReasoningEffort::Minimal | ReasoningEffort::Low => 1024,
            ReasoningEffort::Medium => 2048,
            ReasoningEffort::High => 4096,
            ReasoningEffort::XHigh => 8192,
        },
    };
    let last_assistant = request
        .messages
        .iter()
        .rev()
        .find(|message| message.role == Role::Assistant);
    if let Some(message) = last_assistant {
        let calls_tools = message
            .parts
            .iter()
            .any(|part| matches!(part, Part::ToolCall(_)));
        let signed = message.parts.iter().any(|part| {
            matches!(part, Part::Reasoning(Reasoning { signature: Some(signature), .. })
                if signature.provider == Format::Anthropic)
        });
        if calls_tools && !signed {
            return None;
        }
    }
    Some(budget)
}

/// Converts the conversation (minus system messages) into alternating Anthropic turns.
fn write_messages(messages: &[Message]) -> Result<Vec<TurnOut<'_>>, ConvertError> {
    let mut turns: Vec<(&'static str, Vec<BlockOut>)> = Vec::new();
    for (position, message) in messages.iter().enumerate() {
        let path = index("messages", position);
        let (role, blocks) = match message.role {
            Role::System | Role::Developer => continue,
            Role::User => ("user", write_user_blocks(&message.parts, &path)?),
            Role::Tool => ("user", write_tool_results(&message.parts, &path)?),
            Role::Assistant => ("assistant", write_assistant_blocks(&message.parts)),
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    Ok(turns
        .into_iter()
        .map(|(role, mut blocks)| {
            // Tool results must open the user turn that answers the calls.
            blocks.sort_by_key(|block| !matches!(block, BlockOut::ToolResult { .. }));
            let content = match blocks.as_slice() {
                [BlockOut::Text { cache_control: None, text }] => ContentOut::Text(text),
                _ => ContentOut::Blocks(blocks),
            };
            TurnOut { content, role }
        })
        .collect())
}

fn text_block(part: &TextPart) -> BlockOut<'_> {
    BlockOut::Text { cache_control: part.cache_control.as_ref(), text: &part.text }
}

fn write_user_blocks<'request>(parts: &'request [Part], path: &FieldPath) -> Result<Vec<BlockOut<'request>>, ConvertError> {
    let mut blocks = Vec::new();
    for (position, part) in parts.iter().enumerate() {
        let part_path = element(path, "content", position);
        match part {
            Part::Text(text) if text.text.is_empty() => {}
            Part::Text(text) => blocks.push(text_block(text)),
            Part::Refusal(text) => blocks.push(BlockOut::Text { cache_control: None, text }),
            Part::Image(media) => blocks.push(image_block(media, &part_path)?),
            Part::Document(media) => blocks.push(document_block(media, &part_path)?),
            Part::Audio { .. } => {
                return Err(ConvertError::new(
                    part_path,
                    "audio input is not supported by anthropic",
                ));
            }
            Part::ToolCall(_) | Part::ToolResult(_) | Part::Reasoning(_) => {}
        }
    }
    Ok(blocks)
}

fn image_block<'request>(media: &'request Media, path: &FieldPath) -> Result<BlockOut<'request>, ConvertError> {
    let source = match &media.source {
        MediaSource::Url(url) => SourceOut::Url { url },
        MediaSource::Base64 { media_type, data } => {
            if !IMAGE_MEDIA_TYPES.contains(&media_type.as_str()) {
                return Err(ConvertError::new(
                    path,
                    format!("image type {media_type} is not supported by anthropic"),
                ));
            }
            SourceOut::Base64 { data, media_type }
        }
        MediaSource::FileId(_) | MediaSource::Text(_) => {
            return Err(ConvertError::new(
                path,
                "file ids cannot be resolved on anthropic",
            ));
        }
    };
    Ok(BlockOut::Image { source })
}

fn document_block<'request>(media: &'request Media, path: &FieldPath) -> Result<BlockOut<'request>, ConvertError> {
    let source = match &media.source {
        MediaSource::Url(url) => SourceOut::Url { url },
        MediaSource::Base64 { media_type, data } => {
            if media_type != "application/pdf" {
                return Err(ConvertError::new(
                    path,
                    format!("document type {media_type} is not supported by anthropic"),
                ));
            }
            SourceOut::Base64 { data, media_type }
        }
        MediaSource::Text(text) => SourceOut::Text { data: text, media_type: "text/plain" },
        MediaSource::FileId(_) => {
            return Err(ConvertError::new(
                path,
                "file ids cannot be resolved on anthropic",
            ));
        }
    };
    Ok(BlockOut::Document { source, title: media.filename.as_deref() })
}

fn write_tool_results<'request>(parts: &'request [Part], path: &FieldPath) -> Result<Vec<BlockOut<'request>>, ConvertError> {
    let mut blocks = Vec::new();
    for (position, part) in parts.iter().enumerate() {
        let Part::ToolResult(result) = part else {
            continue;
        };
        let part_path = element(path, "content", position);
        let content = match result.content.as_slice() {
            [] => ContentOut::Text(""),
            [Part::Text(text)] => ContentOut::Text(&text.text),
            parts => ContentOut::Blocks(write_user_blocks(parts, &part_path)?),
        };
        blocks.push(BlockOut::ToolResult { content, is_error: result.is_error, tool_use_id: tool_use_id(&result.call_id) });
    }
    Ok(blocks)
}

fn write_assistant_blocks(parts: &[Part]) -> Vec<BlockOut<'_>> {
    let mut blocks = Vec::new();
    for part in parts {
        match part {
            Part::Reasoning(reasoning) => {
                let Some(signature) = &reasoning.signature else {
                    continue;
                };
                if signature.provider != Format::Anthropic {
                    continue;
                }
                if reasoning.redacted {
                    blocks.push(BlockOut::RedactedThinking { data: &signature.value });
                } else {
                    blocks.push(BlockOut::Thinking { signature: &signature.value, thinking: &reasoning.text });
                }
            }
            Part::Text(text) if text.text.is_empty() => {}
            Part::Text(text) => blocks.push(text_block(text)),
            Part::Refusal(text) => blocks.push(BlockOut::Text { cache_control: None, text }),
            Part::ToolCall(call) => blocks.push(BlockOut::ToolUse {
                id: tool_use_id(&call.id),
                input: call.arguments_object(),
                name: &call.name,
            }),
            Part::Image(_) | Part::Document(_) | Part::Audio { .. } | Part::ToolResult(_) => {}
        }
    }
    blocks
}

/// A tool-use id Anthropic accepts (`^[a-zA-Z0-9_-]+$`), mapped the same way for calls and results.
fn tool_use_id(id: &str) -> String {
    if id.is_empty() {
        return "toolu_missing".to_string();
    }
    id.chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || character == '_' || character == '-' {
                character
            } else {
                '_'
            }
        })
        .collect()
}

/// A tool with its schema borrowed; only a schema the API would refuse is rewritten.
fn write_tool(tool: &ToolDefinition) -> Result<ToolOut<'_>, ConvertError> {
    // The API insists on an object schema with a `type` at the top.
    let input_schema = match tool.parameters.has_top_level_member("type") {
        Some(true) => Cow::Borrowed(tool.parameters.raw()),
        Some(false) => {
            let mut schema = tool.schema_value()?;
            schema["type"] = "object".into();
            Cow::Owned(to_raw_value(&schema).expect("a Value always serialises"))
        }
        None => Cow::Owned(JsonSchema::empty_object().raw().to_owned()),
    };
    Ok(ToolOut {
        description: tool.description.as_deref(),
        input_schema,
        name: &tool.name,
    })
}

/// Reads a Messages response body.
pub fn parse_response(body: &Value) -> Result<Response, ConvertError> {
    object(body, "")?;
    let mut parts = Vec::new();
    for (position, block) in opt_array(body, "content", "")?
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(part) = parse_assistant_block(block, &index("content", position))? {
            parts.push(part);
        }
    }
    let stop_reason = opt_str(body, "stop_reason", "")?.unwrap_or("end_turn");
    Ok(Response {
        id: opt_str(body, "id", "")?.unwrap_or_default().to_string(),
        model: opt_str(body, "model", "")?.unwrap_or_default().to_string(),
        parts,
        finish_reason: finish_reason_from_anthropic(stop_reason),
        usage: field(body, "usage").and_then(|usage| usage_from_value(Format::Anthropic, usage)),
    })
}

pub(crate) fn finish_reason_from_anthropic(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn finish_reason_to_anthropic(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Error => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// The Anthropic `usage` object: `input_tokens` excludes cache reads and writes. Fields are in
/// alphabetical order, like every typed body written here: the order the sorted maps of `json!`
/// used, so clients get the same bytes either way.
#[derive(Serialize)]
struct UsageOut {
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    input_tokens: u64,
    output_tokens: u64,
}

impl UsageOut {
    fn new(usage: &Usage) -> UsageOut {
        UsageOut {
            cache_creation_input_tokens: usage.cache_write_tokens,
            cache_read_input_tokens: usage.cached_tokens,
            input_tokens: usage
                .input_tokens
                .saturating_sub(usage.cached_tokens)
                .saturating_sub(usage.cache_write_tokens),
            output_tokens: usage.output_tokens,
        }
    }
}

/// The `usage` object as a `Value`, for stream events that add to it.
pub fn usage_value(usage: &Usage) -> Value {
    serde_json::to_value(UsageOut::new(usage)).expect("usage serialises")
}

/// A `message` body, serialised straight from the IR's strings rather than built as a `Value`
/// tree first (which cost more than reading the upstream's answer).
#[derive(Serialize)]
pub struct MessageOut<'response> {
    content: Vec<ContentBlockOut<'response>>,
    id: &'response str,
    model: &'response str,
    role: &'static str,
    stop_reason: &'static str,
    stop_sequence: Option<()>,
    #[serde(rename = "type")]
    kind: &'static str,
    usage: UsageOut,
}

/// One content block of a response; each variant names its own `type`.
#[derive(Serialize)]
#[serde(untagged)]
enum ContentBlockOut<'response> {
    RedactedThinking {
        data: &'response str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
    Thinking {
        signature: &'response str,
        thinking: &'response str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
    Text {
        text: &'response str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
    ToolUse {
        id: String,
        input: serde_json::Map<String, Value>,
        name: &'response str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
}

/// Writes a Messages response body for a client. Reasoning signed by another provider is written
/// without its signature, since the client would send it back to us as if Anthropic had signed it.
pub fn write_response<'response>(response: &'response Response, meta: &'response ResponseMeta) -> MessageOut<'response> {
    let mut content = Vec::new();
    for part in &response.parts {
        match part {
            Part::Reasoning(reasoning) => {
                let signature = reasoning
                    .signature
                    .as_ref()
                    .filter(|signature| signature.provider == Format::Anthropic);
                if reasoning.redacted {
                    if let Some(signature) = signature {
                        content.push(ContentBlockOut::RedactedThinking {
                            data: &signature.value,
                            kind: "redacted_thinking",
                        });
                    }
                    continue;
                }
                // A bare signature from another provider (Gemini signs plain text parts) has
                // nothing to show.
                if reasoning.text.is_empty() && signature.is_none() {
                    continue;
                }
                content.push(ContentBlockOut::Thinking {
                    signature: signature.map(|signature| signature.value.as_str()).unwrap_or(""),
                    thinking: &reasoning.text,
                    kind: "thinking",
                });
            }
            Part::Text(text) if text.text.is_empty() => {}
            Part::Text(text) => content.push(ContentBlockOut::Text { text: &text.text, kind: "text" }),
            Part::Refusal(text) => content.push(ContentBlockOut::Text { text, kind: "text" }),
            Part::ToolCall(call) => content.push(ContentBlockOut::ToolUse {
                id: tool_use_id(&call.id),
                input: call.arguments_object(),
                name: &call.name,
                kind: "tool_use",
            }),
            Part::Image(_) | Part::Document(_) | Part::Audio { .. } | Part::ToolResult(_) => {}
        }
    }
    
    MessageOut {
        content,
        id: if response.id.is_empty() { &meta.id } else { &response.id },
        model: if response.model.is_empty() { &meta.model } else { &response.model },
        role: "assistant",
        stop_reason: finish_reason_to_anthropic(response.finish_reason),
        stop_sequence: None,
        kind: "message",
        usage: UsageOut::new(&response.usage.unwrap_or_default()),
    }
}

/// What an upstream content block turns into.
#[derive(Clone, Copy)]
enum DecodedBlock {
    Text,
    Thinking,
    Tool { index: usize, has_arguments: bool },
    Ignored,
}

/// Turns an Anthropic upstream stream into IR events.
pub struct StreamDecoder {
    blocks: HashMap<u64, DecodedBlock>,
    next_tool_index: usize,
    usage: StreamUsageTracker,
    finished: bool,
    failed: bool,
    /// Every event through the general path, for checks that the fast path reads alike
    /// (`with_general_path_only`).
    general_path_only: bool,
}

impl Default for StreamDecoder {
    fn default() -> StreamDecoder {
        StreamDecoder {
            blocks: HashMap::new(),
            next_tool_index: 0,
            usage: StreamUsageTracker::new(Format::Anthropic),
            finished: false,
            failed: false,
            general_path_only: false,
        }
    }
}

/// The field of a content block delta that carries its text, by delta type.
fn delta_content_field(kind: &str) -> Option<&'static str> {
    match kind {
        "text_delta" => Some("text"),
        "thinking_delta" => Some("thinking"),
        "signature_delta" => Some("signature"),
        "input_json_delta" => Some("partial_json"),
        _ => None,
    }
}

/// A `content_block_delta` event as the encoder writes it. Fields are in alphabetical order,
/// the order the sorted map of `json!` wrote them in, so the bytes clients get did not change.
#[derive(Serialize)]
struct BlockDeltaOut<'delta> {
    delta: &'delta DeltaOut<'delta>,
    index: usize,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// A delta of one type with its one text field (`text`, `thinking`, `signature` or
/// `partial_json`, each sorting before `type`).
struct DeltaOut<'text> {
    kind: &'static str,
    field: &'static str,
    value: &'text str,
}

impl Serialize for DeltaOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry(self.field, self.value)?;
        map.serialize_entry("type", self.kind)?;
        map.end()
    }
}

/// The block index, delta type and content of a delta written exactly as the API writes it,
/// compactly and in its member order, e.g.
/// `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"…"}}`.
/// Nearly every event of a streamed answer is one (text, thinking, or a tool call's arguments),
/// and reading it by its bytes costs a tenth of a deserializer's walk. Anything else, from other
/// spacing to an extra member, is `None` and goes to the deserializer, which decides about it.
fn exact_block_delta(data: &str) -> Option<(u64, &'static str, Cow<'_, str>)> {
    const HEAD: &str = r#"{"type":"content_block_delta","index":"#;
    /// What follows the index for each delta type, up to the content string's opening quote.
    const KINDS: [(&str, &str); 4] = [
        ("text_delta", r#","delta":{"type":"text_delta","text":""#),
        ("input_json_delta", r#","delta":{"type":"input_json_delta","partial_json":""#),
        ("thinking_delta", r#","delta":{"type":"thinking_delta","thinking":""#),
        ("signature_delta", r#","delta":{"type":"signature_delta","signature":""#),
    ];
    const TAIL: &str = r#""}}"#;
    let after_head = data.strip_prefix(HEAD)?;
    let digits = after_head.bytes().take_while(u8::is_ascii_digit).count();
    // JSON numbers have no leading zeros; a long run would overflow.
    if digits == 0 || digits > 18 || (digits > 1 && after_head.starts_with('0')) {
        return None;
    }
    let block_index = after_head[..digits].parse().ok()?;
    let after_index = &after_head[digits..];
    let (kind, between) = KINDS.into_iter().find(|(_, between)| after_index.starts_with(between))?;
    let content = after_index[between.len()..].strip_suffix(TAIL)?;
    if raw_json::is_plain_string_contents(content.as_bytes()) {
        return Some((block_index, kind, Cow::Borrowed(content)));
    }
    // Escapes (a newline is one) are decoded by serde_json from the quoted string; an unescaped
    // quote or control byte inside fails there and leaves the event to the deserializer.
    let quoted_start = data.len() - after_index.len() + between.len() - 1;
    let quoted_content = &data[quoted_start..quoted_start + content.len() + 2];
    serde_json::from_str::<String>(quoted_content).ok().map(|content| (block_index, kind, Cow::Owned(content)))
}

/// A `content_block_delta` event, borrowed from its text where no escape forces a copy.
#[derive(Deserialize)]
struct BlockDeltaIn<'event> {
    #[serde(rename = "type", borrow, default, deserialize_with = "optional_borrowed_str")]
    kind: Option<Cow<'event, str>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<DeltaIn<'event>>,
}

#[derive(Deserialize)]
struct DeltaIn<'event> {
    #[serde(rename = "type", borrow, default)]
    kind: Cow<'event, str>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    text: Option<Cow<'event, str>>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    thinking: Option<Cow<'event, str>>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    signature: Option<Cow<'event, str>>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    partial_json: Option<Cow<'event, str>>,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// This decoder with its fast path off: every event is read through a `Value`. The fast
    /// path must give the same events wherever the general path decodes a stream; the fuzz
    /// targets check that with this.
    pub fn with_general_path_only(mut self) -> StreamDecoder {
        self.general_path_only = true;
        self
    }

    /// Decodes one upstream event; `ping` and unknown events produce nothing.
    pub fn push(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        if event.data.trim().is_empty() || self.failed {
            return Ok(());
        }
        if event.event.as_deref() == Some("content_block_delta") && !self.general_path_only && self.fast_block_delta(event, out) {
            return Ok(());
        }
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|error| ConvertError::new("stream", format!("invalid event JSON: {error}")))?;
        let event_type = opt_str(&data, "type", "")?
            .or(event.event.as_deref())
            .unwrap_or_default();
        match event_type {
            "message_start" => {
                let message = field(&data, "message")
                    .ok_or_else(|| ConvertError::new("message", "is required"))?;
                out.push(StreamEvent::Start {
                    id: opt_str(message, "id", "message")?
                        .unwrap_or_default()
                        .to_string(),
                    model: opt_str(message, "model", "message")?
                        .unwrap_or_default()
                        .to_string(),
                });
                self.observe_usage(event, out);
            }
            "content_block_start" => self.start_block(&data, out)?,
            "content_block_delta" => self.block_delta(&data, out)?,
            "content_block_stop" => {
                let block_index = opt_u64(&data, "index", "")?.unwrap_or(0);
                if let Some(DecodedBlock::Tool {
                    index,
                    has_arguments,
                }) = self.blocks.remove(&block_index)
                {
                    if !has_arguments {
                        // A call without arguments still needs valid JSON downstream.
                        out.push(StreamEvent::ToolCallArgsDelta {
                            index,
                            fragment: "{}".to_string(),
                        });
                    }
                    out.push(StreamEvent::ToolCallEnd { index });
                }
            }
            "message_delta" => {
                self.observe_usage(event, out);
                if let Some(delta) = field(&data, "delta")
                    && let Some(reason) = opt_str(delta, "stop_reason", "delta")?
                {
                    out.push(StreamEvent::Finish {
                        reason: finish_reason_from_anthropic(reason),
                    });
                    self.finished = true;
                }
            }
            "error" => {
                let info = parse_upstream_error(Format::Anthropic, 500, event.data.as_bytes());
                out.push(StreamEvent::Error {
                    kind: info.kind,
                    message: info.message,
                });
                self.failed = true;
            }
            _ => {}
        }
        Ok(())
    }

    fn observe_usage(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) {
        let before = self.usage.usage();
        self.usage.observe(event);
        if let Some(usage) = self.usage.usage()
            && Some(usage) != before
        {
            out.push(StreamEvent::Usage(usage));
        }
    }

    fn start_block(
        &mut self,
        data: &Value,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        let block_index = opt_u64(data, "index", "")?.unwrap_or(0);
        let block = field(data, "content_block")
            .ok_or_else(|| ConvertError::new("content_block", "is required"))?;
        let path = "content_block";
        let decoded = match opt_str(block, "type", path)?.unwrap_or_default() {
            "text" => {
                if let Some(text) = opt_str(block, "text", path)?.filter(|text| !text.is_empty()) {
                    out.push(StreamEvent::TextDelta(text.to_string()));
                }
                DecodedBlock::Text
            }
            "thinking" => {
                if let Some(text) =
                    opt_str(block, "thinking", path)?.filter(|text| !text.is_empty())
                {
                    out.push(StreamEvent::ReasoningDelta(text.to_string()));
                }
                DecodedBlock::Thinking
            }
            "tool_use" => {
                let index = self.next_tool_index;
                self.next_tool_index += 1;
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: req_str(block, "id", path)?.to_string(),
                    name: req_str(block, "name", path)?.to_string(),
                });
                // Some compatible servers send the whole input in the start block.
                let input = field(block, "input")
                    .filter(|input| input.as_object().is_some_and(|object| !object.is_empty()));
                if let Some(input) = input {
                    out.push(StreamEvent::ToolCallArgsDelta {
                        index,
                        fragment: input.to_string(),
                    });
                }
                DecodedBlock::Tool {
                    index,
                    has_arguments: input.is_some(),
                }
            }
            _ => DecodedBlock::Ignored,
        };
        self.blocks.insert(block_index, decoded);
        Ok(())
    }

    fn block_delta(
        &mut self,
        data: &Value,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        let block_index = opt_u64(data, "index", "")?.unwrap_or(0);
        let Some(delta) = field(data, "delta") else {
            return Ok(());
        };
        let path = "delta";
        let kind = opt_str(delta, "type", path)?.unwrap_or_default();
        let Some(content_field) = delta_content_field(kind) else {
            return Ok(());
        };
        let content = opt_str(delta, content_field, path)?.unwrap_or_default();
        self.apply_block_delta(block_index, kind, content, out);
        Ok(())
    }

    /// The most frequent event of a stream, read into borrowed fields instead of a `Value` (which
    /// cost more than everything else done per event). Returns false when the event is not a
    /// well-formed `content_block_delta`; the general path then reads it, with its precise errors.
    fn fast_block_delta(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> bool {
        if let Some((block_index, kind, content)) = exact_block_delta(&event.data) {
            self.apply_block_delta(block_index, kind, &content, out);
            return true;
        }
        let Ok(parsed) = serde_json::from_str::<BlockDeltaIn<'_>>(&event.data) else {
            return false;
        };
        if parsed.kind.as_deref().unwrap_or_else(|| event.event.as_deref().unwrap_or_default()) != "content_block_delta" {
            return false;
        }
        if let Some(delta) = parsed.delta {
            let content = match delta_content_field(&delta.kind) {
                Some("text") => delta.text,
                Some("thinking") => delta.thinking,
                Some("signature") => delta.signature,
                Some(_) => delta.partial_json,
                None => None,
            };
            self.apply_block_delta(parsed.index.unwrap_or(0), &delta.kind, content.as_deref().unwrap_or_default(), out);
        }
        true
    }

    fn apply_block_delta(&mut self, block_index: u64, kind: &str, content: &str, out: &mut Vec<StreamEvent>) {
        if content.is_empty() {
            return;
        }
        match kind {
            "text_delta" => out.push(StreamEvent::TextDelta(content.to_string())),
            "thinking_delta" => out.push(StreamEvent::ReasoningDelta(content.to_string())),
            "signature_delta" => out.push(StreamEvent::ReasoningSignature {
                provider: Format::Anthropic,
                signature: content.to_string(),
            }),
            "input_json_delta" => {
                if let Some(DecodedBlock::Tool { index, has_arguments }) = self.blocks.get_mut(&block_index) {
                    *has_arguments = true;
                    out.push(StreamEvent::ToolCallArgsDelta { index: *index, fragment: content.to_string() });
                }
            }
            _ => {}
        }
    }

    /// Ends the stream; one that stopped before `message_delta` carried a stop reason was cut off.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ConvertError> {
        if !self.finished && !self.failed {
            out.push(StreamEvent::Error {
                kind: ErrorKind::Upstream,
                message: "upstream stream ended before it finished".to_string(),
            });
        }
        Ok(())
    }
}

/// The block the encoder has open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text,
    Thinking,
    Tool(usize),
}

/// Writes IR events as an Anthropic stream for a client.
///
/// `message_start` waits for the first content so that it can carry the input usage when the
/// upstream reported it early; `message_delta` (stop reason and final usage) and `message_stop`
/// wait for `finish`, because a Chat upstream sends its usage after the finish reason. Argument
/// fragments for a tool call whose block is already closed cannot be placed and are dropped:
/// Anthropic blocks are sequential, and upstreams stream calls one after another in practice.
pub struct StreamEncoder {
    id: String,
    model: String,
    start_sent: bool,
    open: Option<OpenBlock>,
    next_block_index: usize,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
    failed: bool,
}

impl StreamEncoder {
    pub fn new(meta: &ResponseMeta) -> StreamEncoder {
        StreamEncoder {
            id: meta.id.clone(),
            model: meta.model.clone(),
            start_sent: false,
            open: None,
            next_block_index: 0,
            finish_reason: None,
            usage: None,
            failed: false,
        }
    }

    pub fn encode(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        if self.failed {
            return;
        }
        match event {
            StreamEvent::Start { id, model } => {
                if !id.is_empty() {
                    self.id = id.clone();
                }
                if !model.is_empty() {
                    self.model = model.clone();
                }
            }
            StreamEvent::TextDelta(text) => {
                self.ensure_block(OpenBlock::Text, out);
                self.block_delta(&DeltaOut { kind: "text_delta", field: "text", value: text }, out);
            }
            StreamEvent::ReasoningDelta(text) => {
                self.ensure_block(OpenBlock::Thinking, out);
                self.block_delta(&DeltaOut { kind: "thinking_delta", field: "thinking", value: text }, out);
            }
            StreamEvent::ReasoningSignature {
                provider,
                signature,
            } => {
                if *provider == Format::Anthropic && self.open == Some(OpenBlock::Thinking) {
                    self.block_delta(&DeltaOut { kind: "signature_delta", field: "signature", value: signature }, out);
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.ensure_start(out);
                self.close_block(out);
                let block =
                    json!({"type": "tool_use", "id": tool_use_id(id), "name": name, "input": {}});
                self.open_block(OpenBlock::Tool(*index), block, out);
            }
            StreamEvent::ToolCallArgsDelta { index, fragment } => {
                if self.open == Some(OpenBlock::Tool(*index)) {
                    self.block_delta(&DeltaOut { kind: "input_json_delta", field: "partial_json", value: fragment }, out);
                }
            }
            StreamEvent::ToolCallEnd { index } => {
                if self.open == Some(OpenBlock::Tool(*index)) {
                    self.close_block(out);
                }
            }
            StreamEvent::Finish { reason } => {
                self.ensure_start(out);
                self.close_block(out);
                self.finish_reason = Some(*reason);
            }
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
            StreamEvent::Error { kind, message } => {
                out.extend(render_stream_error(Format::Anthropic, *kind, message));
                self.failed = true;
            }
        }
    }

    /// Writes `message_delta` with the stop reason and the final usage, then `message_stop`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.failed {
            return;
        }
        self.ensure_start(out);
        self.close_block(out);
        let reason = self.finish_reason.unwrap_or(FinishReason::Stop);
        let usage = usage_value(&self.usage.unwrap_or_default());
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": finish_reason_to_anthropic(reason), "stop_sequence": null},
            "usage": usage,
        });
        write_json_event(out, Some("message_delta"), &delta);
        write_json_event(out, Some("message_stop"), &json!({"type": "message_stop"}));
    }

    fn ensure_start(&mut self, out: &mut Vec<u8>) {
        if self.start_sent {
            return;
        }
        self.start_sent = true;
        let mut usage = usage_value(&self.usage.unwrap_or_default());
        usage["output_tokens"] = 0.into();
        let start = json!({
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage,
            },
        });
        write_json_event(out, Some("message_start"), &start);
    }

    fn ensure_block(&mut self, kind: OpenBlock, out: &mut Vec<u8>) {
        self.ensure_start(out);
        if self.open == Some(kind) {
            return;
        }
        self.close_block(out);
        let block = match kind {
            OpenBlock::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            _ => json!({"type": "text", "text": ""}),
        };
        self.open_block(kind, block, out);
    }

    fn open_block(&mut self, kind: OpenBlock, block: Value, out: &mut Vec<u8>) {
        let start = json!({
            "type": "content_block_start",
            "index": self.next_block_index,
            "content_block": block,
        });
        write_json_event(out, Some("content_block_start"), &start);
        self.open = Some(kind);
        self.next_block_index += 1;
    }

    /// One `content_block_delta`, serialised from borrowed parts: this runs for every streamed
    /// token, and building it as a `Value` cost more than the rest of the event.
    fn block_delta(&mut self, delta: &DeltaOut<'_>, out: &mut Vec<u8>) {
        let event = BlockDeltaOut { delta, index: self.next_block_index - 1, kind: "content_block_delta" };
        write_json_event(out, Some("content_block_delta"), &event);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            let stop = json!({"type": "content_block_stop", "index": self.next_block_index - 1});
            write_json_event(out, Some("content_block_stop"), &stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use serde_json::value::RawValue;

    use crate::protocol::anthropic::{tool_use_id, write_tool};
    use crate::protocol::ir::{JsonSchema, ToolDefinition};

    /// The API refuses a tool whose schema is not an object with a top-level `type`; such a
    /// schema is mended, and any other is sent as the client wrote it.
    #[test]
    fn tool_schemas_get_the_object_type_the_api_insists_on() {
        let cases = [
            (r#"{"properties": {"a": {"type": "string"}}}"#, json!({"type": "object", "properties": {"a": {"type": "string"}}})),
            (r#"{"type": "object", "properties": {}}"#, json!({"type": "object", "properties": {}})),
            (r#"{"type": null}"#, json!({"type": null})),
            (r#"{"t\u0079pe": "object"}"#, json!({"type": "object"})),
            (r#"["type"]"#, json!({"type": "object", "properties": {}})),
            (r#""object""#, json!({"type": "object", "properties": {}})),
        ];
        for (schema, expected) in cases {
            // As the typed readers keep it: the client's text, escapes and all.
            let raw: Box<RawValue> = serde_json::from_str(schema).unwrap();
            let tool = ToolDefinition {
                name: "f".to_string(),
                description: None,
                parameters: JsonSchema::from_raw(&raw),
                strict: None,
            };
            let written = serde_json::to_value(write_tool(&tool).unwrap()).unwrap();
            assert_eq!(written["input_schema"], expected, "{schema}");
        }
    }

    #[test]
    fn tool_use_ids_are_sanitized_consistently() {
        assert_eq!(tool_use_id("call_abc-1"), "call_abc-1");
        assert_eq!(
            tool_use_id("functions.get_weather:0"),
            "functions_get_weather_0"
        );
        assert_eq!(tool_use_id(""), "toolu_missing");
    }
}

#[cfg(test)]
mod stream_tests {
    use crate::protocol::Format;
    use crate::protocol::anthropic::StreamDecoder;
    use crate::protocol::ir::{FinishReason, StreamEvent};
    use crate::protocol::sse::SseEvent;
    use crate::protocol::testkit;

    #[test]
    fn deltas_keep_the_bytes_of_a_sorted_json_map() {
        use crate::protocol::anthropic::StreamEncoder;
        use crate::protocol::ir::ResponseMeta;
        use crate::protocol::sse::encode_event;
        let meta = ResponseMeta { id: "msg_1".to_string(), model: "m".to_string(), created_unix: 0, custom_tools: Vec::new() };
        let mut encoder = StreamEncoder::new(&meta);
        let mut out = Vec::new();
        encoder.encode(&StreamEvent::TextDelta("a \"quoted\" line\n".to_string()), &mut out);
        let written = String::from_utf8(out).unwrap();
        let expected = serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a \"quoted\" line\n"}});
        let expected = String::from_utf8(encode_event(Some("content_block_delta"), &expected.to_string())).unwrap();
        assert!(written.ends_with(&expected), "{written}");
    }

    #[test]
    fn deltas_read_by_their_bytes_decode_as_the_deserializer_reads_them() {
        let delta_event = |data: &str| SseEvent {
            event: Some("content_block_delta".to_string()),
            data: data.to_string(),
            id: None,
            raw: Vec::new(),
        };
        let delta = |index: &str, kind: &str, field: &str, content: &str| {
            format!(r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"{kind}","{field}":"{content}"}}}}"#)
        };
        let text = |index: &str, content: &str| delta(index, "text_delta", "text", content);
        let cases = [
            text("0", "Hello"),
            text("12", r#"line\nbreak \"quoted\" \\ \u00e9 \ud83d\ude00 \"}}"#),
            text("3", "é ✓ 😀"),
            text("0", ""),
            delta("1", "input_json_delta", "partial_json", r#"{\"city\": \"Lis"#),
            delta("0", "thinking_delta", "thinking", "Let me think"),
            delta("0", "signature_delta", "signature", "EqQBCkgIARABGAIiQL"),
            text("01", "leading zero"),
            text("0", r#"unescaped " quote"#),
            text("0", "control \u{1} byte"),
            text("0", r#"\"#),
            text("99999999999999999999", "huge index"),
            text("-1", "negative"),
            format!("{} ", text("0", "trailing space")),
            delta("0", "text_delta", "thinking", "a member the type does not name"),
            delta("0", "citations_delta", "text", "a type it does not know"),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","extra":1}}"#.to_string(),
        ];
        for data in &cases {
            let exact = super::exact_block_delta(data);
            // The deserializer's reading: BlockDeltaIn and the member each type names, as the
            // general fast path reads them.
            let general = serde_json::from_str::<super::BlockDeltaIn<'_>>(data).ok().and_then(|parsed| {
                let delta = parsed.delta?;
                let content = match super::delta_content_field(&delta.kind)? {
                    "text" => delta.text,
                    "thinking" => delta.thinking,
                    "signature" => delta.signature,
                    _ => delta.partial_json,
                };
                Some((parsed.index.unwrap_or(0), delta.kind.into_owned(), content.unwrap_or_default().into_owned()))
            });
            if let Some((index, kind, content)) = &exact {
                assert_eq!(Some((*index, kind.to_string(), content.to_string())), general, "{data}");
            }
            // Events the byte reader leaves alone decode (or fail) as before, through push.
            let mut decoder = StreamDecoder::new();
            let mut out = Vec::new();
            let pushed = decoder.push(&delta_event(data), &mut out);
            match general {
                Some((_, kind, text)) if kind == "text_delta" && !text.is_empty() => {
                    assert_eq!(out, vec![StreamEvent::TextDelta(text)], "{data}")
                }
                Some((_, kind, text)) if kind == "thinking_delta" => assert_eq!(out, vec![StreamEvent::ReasoningDelta(text)], "{data}"),
                Some(_) => {}
                None => assert!(pushed.is_err() || out.is_empty(), "{data}"),
            }
        }
        let read_by_bytes = cases.iter().filter(|data| super::exact_block_delta(data).is_some()).count();
        assert_eq!(read_by_bytes, 7, "the well-formed compact deltas (and only they) are read by their bytes");
    }

    #[test]
    fn a_delta_event_of_the_wrong_shape_gets_the_general_paths_error() {
        let mut decoder = StreamDecoder::new();
        let mut out = Vec::new();
        let event = SseEvent { event: Some("content_block_delta".to_string()), data: r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":5}}"#.to_string(), id: None, raw: Vec::new() };
        let error = decoder.push(&event, &mut out).unwrap_err().to_string();
        assert!(error.contains("text"), "{error}");
        assert!(out.is_empty());
    }

    fn decode(events: &[SseEvent]) -> Vec<StreamEvent> {
        let mut decoder = StreamDecoder::new();
        let mut out = Vec::new();
        for event in events {
            decoder.push(event, &mut out).expect("event decodes");
        }
        decoder.finish(&mut out).expect("stream ends");
        out
    }

    fn recorded(name: &str) -> Vec<StreamEvent> {
        decode(&testkit::parse_pieces(&[&testkit::stream_bytes(name)]))
    }

    #[test]
    fn recorded_streams_decode_the_same_however_they_are_split() {
        let names: Vec<String> = testkit::all_streams()
            .into_iter()
            .filter(|name| name.starts_with("anthropic-messages/"))
            .collect();
        assert_eq!(names.len(), 5);
        for name in &names {
            let bytes = testkit::stream_bytes(name);
            let whole = decode(&testkit::parse_pieces(&[&bytes]));
            assert!(
                matches!(whole.first(), Some(StreamEvent::Start { .. })),
                "{name}"
            );
            assert!(
                whole
                    .iter()
                    .any(|event| matches!(event, StreamEvent::Finish { .. })),
                "{name}: no finish"
            );
            testkit::assert_split_decoding_matches(name, &bytes, &whole, 100, decode);
        }
    }

    #[test]
    fn thinking_signature_is_tagged_as_anthropic() {
        let events = recorded("anthropic-messages/thinking-signature-stream.chunks.txt");
        let signature = events.iter().find_map(|event| match event {
            StreamEvent::ReasoningSignature {
                provider,
                signature,
            } => Some((*provider, signature.len())),
            _ => None,
        });
        assert!(matches!(signature, Some((Format::Anthropic, length)) if length > 100));
        let reasoning: String = events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::ReasoningDelta(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert!(reasoning.starts_with("The previous result was 925."));
    }

    #[test]
    fn empty_tool_input_becomes_an_empty_object() {
        let events =
            recorded("anthropic-messages/text-then-tool-use-empty-input-stream.chunks.txt");
        let fragments: Vec<&str> = events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::ToolCallArgsDelta { fragment, .. } => Some(fragment.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(fragments, ["{}"]);
        assert!(events.contains(&StreamEvent::ToolCallEnd { index: 0 }));
        assert!(events.contains(&StreamEvent::Finish {
            reason: FinishReason::ToolCalls
        }));
    }

    #[test]
    fn usage_grows_from_message_start_to_message_delta() {
        let events = recorded("anthropic-messages/cassette-tool-use-stream-roundtrip.json#1");
        let outputs: Vec<u64> = events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::Usage(usage) => Some(usage.output_tokens),
                _ => None,
            })
            .collect();
        assert!(outputs.len() >= 2 && outputs.windows(2).all(|pair| pair[0] <= pair[1]));
    }
}

#[cfg(test)]
mod signature_tests {
    use serde_json::json;

    use crate::protocol::Format;
    use crate::protocol::anthropic::{write_request, write_response};
    use crate::protocol::ir::{
        FinishReason, Message, Part, Reasoning, ReasoningConfig, ReasoningEffort, Request,
        Response, ResponseMeta, Role, Signature, ToolCall, ToolResult, WriteOptions,
    };

    fn options() -> WriteOptions {
        WriteOptions {
            upstream_model: "claude".to_string(),
            default_max_tokens: 4096,
            stream: false,
            ..WriteOptions::default()
        }
    }

    fn reasoning(provider: Format) -> Part {
        Part::Reasoning(Reasoning {
            text: "thinking".to_string(),
            signature: Some(Signature {
                provider,
                value: "sig".to_string(),
            }),
            redacted: false,
        })
    }

    fn tool_loop(signature_provider: Format) -> Request {
        let call = Part::ToolCall(ToolCall {
            id: "call_1".to_string(),
            name: "now".to_string(),
            arguments: "{}".to_string(),
            signature: None,
        });
        let result = Part::ToolResult(ToolResult {
            call_id: "call_1".to_string(),
            name: Some("now".to_string()),
            content: vec![Part::text("noon")],
            is_error: false,
        });
        Request {
            messages: vec![
                Message::new(Role::User, vec![Part::text("time?")]),
                Message::new(Role::Assistant, vec![reasoning(signature_provider), call]),
                Message::new(Role::Tool, vec![result]),
            ],
            reasoning: Some(ReasoningConfig {
                effort: Some(ReasoningEffort::Low),
                ..ReasoningConfig::default()
            }),
            ..Request::default()
        }
    }

    /// protocols.md §8 case 18: Gemini-signed history never reaches Anthropic, and thinking is
    /// left off so the unsigned tool turn is not rejected.
    #[test]
    fn case_18_foreign_signatures_are_dropped_and_thinking_disabled() {
        let written = serde_json::to_value(write_request(&tool_loop(Format::Gemini), &options()).unwrap()).unwrap();
        assert_eq!(
            written["messages"][1]["content"],
            json!([{"type": "tool_use", "id": "call_1", "name": "now", "input": {}}])
        );
        assert!(written.get("thinking").is_none());
    }

    #[test]
    fn anthropic_signatures_are_kept_and_thinking_stays_on() {
        let written = serde_json::to_value(write_request(&tool_loop(Format::Anthropic), &options()).unwrap()).unwrap();
        assert_eq!(
            written["messages"][1]["content"][0],
            json!({"type": "thinking", "thinking": "thinking", "signature": "sig"})
        );
        assert_eq!(
            written["thinking"],
            json!({"type": "enabled", "budget_tokens": 1024})
        );
    }

    #[test]
    fn responses_never_hand_foreign_signatures_to_clients() {
        let response = Response {
            id: String::new(),
            model: String::new(),
            parts: vec![reasoning(Format::Gemini), Part::text("answer")],
            finish_reason: FinishReason::Stop,
            usage: None,
        };
        let meta = ResponseMeta {
            id: "msg_x".to_string(),
            model: "m".to_string(),
            created_unix: 0,
            custom_tools: Vec::new(),
        };
        let written = serde_json::to_value(write_response(&response, &meta)).unwrap();
        assert_eq!(written["content"][0]["signature"], "");
        assert_eq!(written["id"], "msg_x");
    }
}
