//! OpenAI Responses to and from the IR: requests, responses, and stream events.
//!
//! Lossy choices, each deliberate (protocols.md §1B, §2B, §3B and "Responses-specific traps"):
//! - `previous_response_id` is resolved by the relay (`relay::response_store`) before a request
//!   gets here, by prepending the stored conversation to `input`; this pure converter cannot
//!   resolve it and refuses one that reaches it. `conversation`, `item_reference` items and
//!   stored `prompt` templates point at state kept by OpenAI and are refused likewise, with a
//!   `ConvertError` that the relay answers with a 400.
//! - Chat-style `role:"tool"` messages and `assistant.tool_calls` in `input` are refused, as the
//!   Responses API itself refuses them.
//! - Hosted tools (web search, file search, code interpreter…) and the call items they leave in
//!   `input` have no equivalent in other formats and are dropped.
//! - `custom` tools (free-form input, Codex's `apply_patch`) become function tools with one
//!   string parameter, and calls of them come back to the client as `custom_tool_call`s; see
//!   `protocol::custom_tools`.
//! - Requests written for a Responses upstream: a leading system message becomes `instructions`,
//!   later system and developer messages stay input items in place; function tools get
//!   `strict:false` unless the client chose, because Responses would otherwise make them strict;
//!   `stop`, penalties, seed and top_k are dropped (Responses has none of them) and `n > 1` is
//!   refused; `max_output_tokens` is raised to the API's minimum of 16; reasoning turns on
//!   `include:["reasoning.encrypted_content"]` so that the next turn can hand the reasoning back.
//! - Reasoning is sent upstream only as a reasoning item carrying `encrypted_content` that a
//!   Responses upstream issued. Its `id` is left out: with the encrypted content the item is
//!   self-contained, while an `rs_…` id makes OpenAI look the item up in its store.
//! - Function-call items are sent without their `fc_…` item ids (only `call_id` correlates calls
//!   and outputs).
//! - Responses and streams written for a client carry the gateway's id (`ResponseMeta::id`), not
//!   the upstream's message or completion id, and number their items after it.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::protocol::Format;
use crate::protocol::custom_tools::{self, StreamingInputDecoder};
use crate::protocol::error::{ErrorKind, parse_upstream_error};
use crate::protocol::ir::{
    ConvertError, FinishReason, Media, MediaSource, Message, Part, Reasoning, ReasoningConfig,
    ReasoningEffort, Request, Response, ResponseFormat, ResponseMeta, Role, Signature, StreamEvent,
    TextPart, ToolCall, ToolChoice, JsonSchema, ToolDefinition, ToolResult, WriteOptions, join_borrowing, part_texts,
};
use crate::protocol::json::{AsFieldPath, FieldPath, element, object_of,
    field, index, join, log_dropped_fields, object, opt_array, opt_bool, opt_f64,
    opt_str, opt_u64, req_str, string_or_parts,
};
use crate::protocol::sse::{SseEvent, write_json_event};
use crate::protocol::typed_read::{JsonObject, optional_borrowed_str};
use crate::protocol::usage::{Usage, usage_from_value};

/// The smallest `max_output_tokens` the Responses API accepts.
const MIN_MAX_OUTPUT_TOKENS: u64 = 16;

/// What a client should do instead of pointing at stored state.
const STATELESS_ADVICE: &str = "send the whole conversation in input instead";

/// Reads a Responses request body.
pub fn parse_request(body: &Value) -> Result<Request, ConvertError> {
    object(body, "")?;
    refuse_stored_state(body)?;
    let mut request = Request {
        model: opt_str(body, "model", "")?.unwrap_or_default().to_string(),
        max_tokens: opt_u64(body, "max_output_tokens", "")?,
        temperature: opt_f64(body, "temperature", "")?,
        top_p: opt_f64(body, "top_p", "")?,
        parallel_tool_calls: opt_bool(body, "parallel_tool_calls", "")?,
        stream: opt_bool(body, "stream", "")?.unwrap_or(false),
        ..Request::default()
    };
    if let Some(instructions) = opt_str(body, "instructions", "")?
        && !instructions.is_empty()
    {
        let part = Part::text(instructions);
        request
            .messages
            .push(Message::new(Role::System, vec![part]));
    }
    match field(body, "input") {
        None => return Err(ConvertError::new("input", "is required")),
        Some(Value::String(text)) => {
            let parts = if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::text(text.clone())]
            };
            request.messages.push(Message::new(Role::User, parts));
        }
        Some(Value::Array(items)) => {
            // Function-call outputs do not repeat the tool's name, but Gemini needs it.
            let mut call_names: HashMap<String, String> = HashMap::new();
            for (position, item) in items.iter().enumerate() {
                let path = index("input", position);
                parse_input_item(item, &path, &mut call_names, &mut request.messages)?;
            }
        }
        Some(_) => {
            return Err(ConvertError::new(
                "input",
                "expected a string or an array of items",
            ));
        }
    }

    if let Some(tools) = opt_array(body, "tools", "")? {
        for (position, tool) in tools.iter().enumerate() {
            if let Some(definition) = parse_tool(tool, &index("tools", position))? {
                request.tools.push(definition);
            }
        }
    }
    request.tool_choice = match field(body, "tool_choice") {
        None => None,
        Some(choice) => Some(parse_tool_choice(choice)?),
    };
    request.reasoning = parse_reasoning(body)?;
    if let Some(text) = field(body, "text") {
        if let Some(format) = field(text, "format") {
            request.response_format = Some(parse_text_format(format)?);
        }
        request.verbosity = opt_str(text, "verbosity", "text")?.map(str::to_string);
    }
    // `include` asks for extra output (encrypted reasoning, logprobs, search sources) that only
    // OpenAI produces; the writer for a Responses upstream sets its own. `truncation` and the
    // rest steer OpenAI's own storage, caching and scheduling.
    log_dropped_fields(
        Format::OpenaiResponses,
        body,
        &[
            "include",
            "truncation",
            "store",
            "background",
            "service_tier",
            "prompt_cache_key",
            "prompt_cache_retention",
            "max_tool_calls",
            "top_logprobs",
            "stream_options",
        ],
    );
    // `safety_identifier` is the newer name for the end-user id.
    request.user = match opt_str(body, "user", "")? {
        Some(user) => Some(user.to_string()),
        None => opt_str(body, "safety_identifier", "")?.map(str::to_string),
    };
    request.metadata = match field(body, "metadata") {
        None => None,
        Some(metadata) => Some(object(metadata, "metadata")?.clone()),
    };
    Ok(request)
}

/// Refuses fields that point at state kept by OpenAI, which a stateless gateway cannot expand
/// into history for another upstream.
fn refuse_stored_state(body: &Value) -> Result<(), ConvertError> {
    if opt_str(body, "previous_response_id", "")?.is_some_and(|id| !id.is_empty()) {
        return Err(ConvertError::new(
            "previous_response_id",
            format!(
                "previous_response_id must be resolved into input before conversion; \
                 {STATELESS_ADVICE}"
            ),
        ));
    }
    if field(body, "conversation").is_some() {
        return Err(ConvertError::new(
            "conversation",
            format!(
                "this gateway does not store conversations, so conversation cannot be resolved; \
                 {STATELESS_ADVICE}"
            ),
        ));
    }
    if field(body, "prompt").is_some() {
        return Err(ConvertError::new(
            "prompt",
            "stored prompt templates live at OpenAI and cannot be used with this upstream",
        ));
    }
    Ok(())
}

/// Reads one input item into the conversation. Items that belong to one assistant turn
/// (reasoning, message, function calls) are gathered into one assistant message, and consecutive
/// function-call outputs into one tool message, so that formats with strict turn rules get the
/// calls and their results together.
fn parse_input_item(
    item: &Value,
    path: &FieldPath,
    call_names: &mut HashMap<String, String>,
    out: &mut Vec<Message>,
) -> Result<(), ConvertError> {
    object(item, path)?;
    let item_type = match opt_str(item, "type", path)? {
        Some(item_type) => item_type,
        None if field(item, "role").is_some() => "message",
        None => return Err(ConvertError::new(join(path, "type"), "is required")),
    };
    match item_type {
        "message" => parse_message_item(item, path, out),
        "function_call" => {
            let call = ToolCall {
                id: req_str(item, "call_id", path)?.to_string(),
                name: req_str(item, "name", path)?.to_string(),
                arguments: match field(item, "arguments") {
                    None => String::new(),
                    Some(Value::String(arguments)) => arguments.clone(),
                    // Some clients send the arguments as an object instead of a JSON string.
                    Some(other) => other.to_string(),
                },
                signature: None,
            };
            call_names.insert(call.id.clone(), call.name.clone());
            assistant_message(out).parts.push(Part::ToolCall(call));
            Ok(())
        }
        // A custom tool's call carries free-form text; the other formats get it as the one
        // string argument of the function tool the custom tool became (see `parse_tool`).
        "custom_tool_call" => {
            let call = ToolCall {
                id: req_str(item, "call_id", path)?.to_string(),
                name: req_str(item, "name", path)?.to_string(),
                arguments: custom_tools::arguments_for_input(
                    opt_str(item, "input", path)?.unwrap_or_default(),
                ),
                signature: None,
            };
            call_names.insert(call.id.clone(), call.name.clone());
            assistant_message(out).parts.push(Part::ToolCall(call));
            Ok(())
        }
        "function_call_output" | "custom_tool_call_output" => {
            let call_id = req_str(item, "call_id", path)?.to_string();
            let output_path = join(path, "output");
            let content = parse_content(field(item, "output"), &output_path)?;
            let result = Part::ToolResult(ToolResult {
                name: call_names.get(&call_id).cloned(),
                call_id,
                content,
                is_error: false,
            });
            match out.last_mut() {
                Some(last) if last.role == Role::Tool => last.parts.push(result),
                _ => out.push(Message::new(Role::Tool, vec![result])),
            }
            Ok(())
        }
        "reasoning" => {
            if let Some(reasoning) = parse_reasoning_item(item, path)? {
                assistant_message(out).parts.push(reasoning);
            }
            Ok(())
        }
        "item_reference" => Err(ConvertError::new(
            path,
            format!(
                "this gateway does not store responses, so item references cannot be resolved; \
                 {STATELESS_ADVICE}"
            ),
        )),
        // Hosted tool calls are dropped with their tools (see `parse_tool`).
        other if is_hosted_tool_item(other) => {
            log::debug!(
                "responses request: {path} is a {other:?} item of a tool only OpenAI runs; dropped"
            );
            Ok(())
        }
        other => Err(ConvertError::new(
            join(path, "type"),
            format!("unsupported input item type {other:?}"),
        )),
    }
}

/// Items left by hosted tools (`web_search_call`, `computer_call_output`, `mcp_list_tools`…).
fn is_hosted_tool_item(item_type: &str) -> bool {
    item_type.ends_with("_call")
        || item_type.ends_with("_call_output")
        || item_type.starts_with("mcp_")
}

/// The assistant message that the next reasoning or function-call item belongs to: the last
/// message when it is an assistant turn, else a new one.
fn assistant_message(out: &mut Vec<Message>) -> &mut Message {
    let continues = out.last().is_some_and(|last| last.role == Role::Assistant);
    if !continues {
        out.push(Message::new(Role::Assistant, Vec::new()));
    }
    out.last_mut()
        .expect("an assistant message was just ensured")
}

fn parse_message_item(
    item: &Value,
    path: &FieldPath,
    out: &mut Vec<Message>,
) -> Result<(), ConvertError> {
    let role = req_str(item, "role", path)?;
    if role == "tool" {
        return Err(ConvertError::new(
            join(path, "role"),
            "Chat-style tool messages are not valid Responses input; send a function_call_output item instead",
        ));
    }
    if field(item, "tool_calls").is_some() {
        return Err(ConvertError::new(
            join(path, "tool_calls"),
            "Chat-style tool_calls are not valid Responses input; send function_call items instead",
        ));
    }
    let parts = parse_content(field(item, "content"), &join(path, "content"))?;
    let role = match role {
        "system" => Role::System,
        "developer" => Role::Developer,
        "user" => Role::User,
        "assistant" => {
            // A message continues the assistant turn that its reasoning or calls opened, but a
            // second message after text is a separate turn.
            let continues = out.last().is_some_and(|last| {
                last.role == Role::Assistant
                    && !matches!(last.parts.last(), Some(Part::Text(_) | Part::Refusal(_)))
            });
            if continues {
                out.last_mut().expect("checked above").parts.extend(parts);
            } else {
                out.push(Message::new(Role::Assistant, parts));
            }
            return Ok(());
        }
        other => {
            return Err(ConvertError::new(
                join(path, "role"),
                format!("unsupported role {other:?}"),
            ));
        }
    };
    out.push(Message::new(role, parts));
    Ok(())
}

/// Reads `content`: a string, or an array of parts.
fn parse_content(content: Option<&Value>, path: &FieldPath) -> Result<Vec<Part>, ConvertError> {
    string_or_parts(content, path, parse_content_part)
}

fn parse_content_part(part: &Value, path: &FieldPath) -> Result<Part, ConvertError> {
    object(part, path)?;
    match req_str(part, "type", path)? {
        // `text` is not in the API reference, but several clients send it.
        "input_text" | "output_text" | "text" => Ok(Part::Text(TextPart {
            text: req_str(part, "text", path)?.to_string(),
            cache_control: None,
        })),
        "refusal" => Ok(Part::Refusal(req_str(part, "refusal", path)?.to_string())),
        "input_image" => {
            let source = if let Some(url) = opt_str(part, "image_url", path)? {
                MediaSource::from_url(url)
            } else if let Some(file_id) = opt_str(part, "file_id", path)? {
                MediaSource::FileId(file_id.to_string())
            } else {
                return Err(ConvertError::new(path, "needs image_url or file_id"));
            };
            Ok(Part::Image(Media {
                source,
                detail: opt_str(part, "detail", path)?.map(str::to_string),
                filename: None,
            }))
        }
        "input_file" => {
            let filename = opt_str(part, "filename", path)?;
            let source = if let Some(data) = opt_str(part, "file_data", path)? {
                match MediaSource::from_url(data) {
                    // Bare base64 without a data URL: the type can only come from the name.
                    MediaSource::Url(data) => MediaSource::Base64 {
                        media_type: media_type_from_filename(filename).to_string(),
                        data,
                    },
                    inline => inline,
                }
            } else if let Some(file_id) = opt_str(part, "file_id", path)? {
                MediaSource::FileId(file_id.to_string())
            } else if let Some(url) = opt_str(part, "file_url", path)? {
                MediaSource::Url(url.to_string())
            } else {
                return Err(ConvertError::new(
                    path,
                    "needs file_data, file_id or file_url",
                ));
            };
            Ok(Part::Document(Media {
                source,
                detail: None,
                filename: filename.map(str::to_string),
            }))
        }
        other => Err(ConvertError::new(
            join(path, "type"),
            format!("unsupported content part type {other:?}"),
        )),
    }
}

fn media_type_from_filename(filename: Option<&str>) -> &'static str {
    let extension = filename
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, extension)| extension.to_ascii_lowercase());
    match extension.as_deref() {
        Some("txt") => "text/plain",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        // PDF is the file type every format accepts, and what clients send in practice.
        _ => "application/pdf",
    }
}

/// Reads a reasoning item (input or output): the summary texts, or the raw reasoning text when
/// there is no summary, and the encrypted content as a Responses-bound signature.
fn parse_reasoning_item(item: &Value, path: &FieldPath) -> Result<Option<Part>, ConvertError> {
    let mut texts = Vec::new();
    for key in ["summary", "content"] {
        for (position, entry) in opt_array(item, key, path)?
            .into_iter()
            .flatten()
            .enumerate()
        {
            let entry_path = element(path, key, position);
            if let Some(text) = opt_str(entry, "text", &entry_path)?
                && !text.is_empty()
            {
                texts.push(text);
            }
        }
        if !texts.is_empty() {
            break;
        }
    }
    let signature = opt_str(item, "encrypted_content", path)?
        .filter(|content| !content.is_empty())
        .map(|content| Signature {
            provider: Format::OpenaiResponses,
            value: content.to_string(),
        });
    if texts.is_empty() && signature.is_none() {
        return Ok(None);
    }
    Ok(Some(Part::Reasoning(Reasoning {
        text: texts.join("\n\n"),
        signature,
        redacted: false,
    })))
}

fn parse_tool(tool: &Value, path: &FieldPath) -> Result<Option<ToolDefinition>, ConvertError> {
    object(tool, path)?;
    match opt_str(tool, "type", path)? {
        None | Some("function") => {}
        // Custom tools take free-form text (often constrained by a grammar) where every other
        // format takes a JSON object: they become a function with one string parameter, and
        // the response writers turn its calls back into custom tool calls.
        Some("custom") => {
            let format = field(tool, "format");
            return Ok(Some(ToolDefinition {
                name: req_str(tool, "name", path)?.to_string(),
                description: Some(custom_tools::function_description(
                    opt_str(tool, "description", path)?,
                    format,
                )),
                parameters: JsonSchema::from_value(&custom_tools::input_schema()),
                strict: None,
            }));
        }
        // Hosted tools run at OpenAI; other formats have nothing to run them.
        Some(tool_type) => {
            log::debug!(
                "responses request: {path} is a {tool_type:?} tool, which only OpenAI runs; dropped"
            );
            return Ok(None);
        }
    }
    Ok(Some(ToolDefinition {
        name: req_str(tool, "name", path)?.to_string(),
        description: opt_str(tool, "description", path)?.map(str::to_string),
        parameters: field(tool, "parameters").map_or_else(JsonSchema::empty_object, JsonSchema::from_value),
        strict: opt_bool(tool, "strict", path)?,
    }))
}

fn parse_tool_choice(choice: &Value) -> Result<ToolChoice, ConvertError> {
    let path = &"tool_choice".as_field_path();
    match choice {
        Value::String(mode) => tool_choice_mode(mode, path),
        Value::Object(_) => match req_str(choice, "type", path)? {
            "function" | "custom" => Ok(ToolChoice::Named(
                req_str(choice, "name", path)?.to_string(),
            )),
            // The subset of allowed tools has no equivalent elsewhere; only the mode is kept.
            "allowed_tools" => tool_choice_mode(req_str(choice, "mode", path)?, path),
            other => Err(ConvertError::new(
                join(path, "type"),
                format!("unsupported tool choice type {other:?}"),
            )),
        },
        _ => Err(ConvertError::new(path, "expected a string or an object")),
    }
}

fn tool_choice_mode(mode: &str, path: &FieldPath) -> Result<ToolChoice, ConvertError> {
    match mode {
        "auto" => Ok(ToolChoice::Auto),
        "none" => Ok(ToolChoice::None),
        "required" => Ok(ToolChoice::Required),
        _ => Err(ConvertError::new(path, format!("unknown mode {mode:?}"))),
    }
}

fn parse_reasoning(body: &Value) -> Result<Option<ReasoningConfig>, ConvertError> {
    let Some(reasoning) = field(body, "reasoning") else {
        return Ok(None);
    };
    let path = "reasoning";
    let effort = match opt_str(reasoning, "effort", path)? {
        None => None,
        Some(name) => Some(
            ReasoningEffort::from_name(name)
                .ok_or_else(|| ConvertError::new(join(path, "effort"), "unknown effort"))?,
        ),
    };
    let summary = opt_str(reasoning, "summary", path)?.map(str::to_string);
    if effort.is_none() && summary.is_none() {
        return Ok(None);
    }
    Ok(Some(ReasoningConfig {
        effort,
        summary,
        ..ReasoningConfig::default()
    }))
}

fn parse_text_format(format: &Value) -> Result<ResponseFormat, ConvertError> {
    let path = "text.format";
    match req_str(format, "type", path)? {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => Ok(ResponseFormat::JsonSchema {
            name: opt_str(format, "name", path)?.map(str::to_string),
            description: opt_str(format, "description", path)?.map(str::to_string),
            schema: field(format, "schema")
                .cloned()
                .unwrap_or_else(|| json!({})),
            strict: opt_bool(format, "strict", path)?,
        }),
        other => Err(ConvertError::new(
            join(path, "type"),
            format!("unknown type {other:?}"),
        )),
    }
}

/// A Responses request body as it is written, borrowing the IR's texts and the tools' schemas:
/// building it as a `Value` copied every text of the conversation and parsed every schema once
/// more, only to serialise the copy and drop it. Members are in alphabetical order, the order
/// the sorted maps of `json!` wrote them in, so the upstream gets the same bytes as before except
/// for the schemas, which keep the client's member order.
#[derive(Serialize)]
pub struct ResponsesRequestOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    include: Option<[&'static str; 1]>,
    input: Vec<InputItemOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instructions: Option<Cow<'request, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'request Map<String, Value>>,
    model: &'request str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<ReasoningOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<TextOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<ToolOut<'request>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'request str>,
}

/// One input item. Each variant's members are in alphabetical order, `type` among them.
#[derive(Serialize)]
#[serde(untagged)]
enum InputItemOut<'request> {
    Message {
        content: ContentOut<'request>,
        role: &'static str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
    FunctionCall {
        arguments: &'request str,
        call_id: &'request str,
        name: &'request str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
    FunctionCallOutput {
        call_id: &'request str,
        output: ContentOut<'request>,
        #[serde(rename = "type")]
        kind: &'static str,
    },
    Reasoning {
        encrypted_content: &'request str,
        summary: Vec<ContentPartOut<'request>>,
        #[serde(rename = "type")]
        kind: &'static str,
    },
}

impl<'request> InputItemOut<'request> {
    fn message(role: &'static str, content: ContentOut<'request>) -> InputItemOut<'request> {
        InputItemOut::Message { content, role, kind: "message" }
    }
}

/// A message's content or a tool's output: a string, or parts.
#[derive(Serialize)]
#[serde(untagged)]
enum ContentOut<'request> {
    Text(Cow<'request, str>),
    Parts(Vec<ContentPartOut<'request>>),
}

/// One content part of any kind: input text, image and file parts, output text and refusals,
/// and reasoning summaries.
#[derive(Serialize, Default)]
struct ContentPartOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'request str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_id: Option<&'request str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_url: Option<&'request str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<&'request str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'request str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'request str>,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl<'request> ContentPartOut<'request> {
    fn text(kind: &'static str, text: &'request str) -> ContentPartOut<'request> {
        ContentPartOut { text: Some(text), kind, ..ContentPartOut::default() }
    }
}

#[derive(Serialize)]
struct ReasoningOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    effort: Option<&'static str>,
    summary: &'request str,
}

#[derive(Serialize)]
struct TextOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<TextFormatOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verbosity: Option<&'request str>,
}

#[derive(Serialize)]
struct TextFormatOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'request str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'request str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'request Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolChoiceOut<'request> {
    Mode(&'static str),
    Named {
        name: &'request str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
}

#[derive(Serialize)]
struct ToolOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'request str>,
    name: &'request str,
    parameters: &'request RawValue,
    strict: bool,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Writes a Responses request body for an upstream.
pub fn write_request<'request>(
    request: &'request Request,
    options: &'request WriteOptions,
) -> Result<ResponsesRequestOut<'request>, ConvertError> {
    if request.n.is_some_and(|n| n > 1) {
        return Err(ConvertError::new(
            "n",
            "openai responses cannot return more than one choice",
        ));
    }
    let mut messages: Vec<(usize, &Message)> = request.messages.iter().enumerate().collect();
    let mut instructions = None;
    if let Some((_, first)) = messages.first()
        && first.role == Role::System
        && !first.parts.is_empty()
        && first.parts.iter().all(|part| matches!(part, Part::Text(_)))
    {
        instructions = Some(system_text(first));
        messages.remove(0);
    }
    let mut input = Vec::new();
    for (position, message) in messages {
        write_message(message, &index("messages", position), &mut input)?;
    }

    let tools_given = !request.tools.is_empty();
    let tools = match tools_given {
        true => Some(request.tools.iter().map(write_tool).collect()),
        false => None,
    };
    let reasoning = request.reasoning.as_ref().and_then(write_reasoning);
    let text = TextOut {
        format: request.response_format.as_ref().map(write_text_format),
        verbosity: request.verbosity.as_deref(),
    };
    Ok(ResponsesRequestOut {
        include: reasoning.is_some().then_some(["reasoning.encrypted_content"]),
        input,
        instructions,
        max_output_tokens: request.max_tokens.map(|limit| limit.max(MIN_MAX_OUTPUT_TOKENS)),
        metadata: request.metadata.as_ref(),
        model: &options.upstream_model,
        parallel_tool_calls: request.parallel_tool_calls.filter(|_| tools_given),
        reasoning,
        stream: options.stream.then_some(true),
        temperature: request.temperature,
        text: (text.format.is_some() || text.verbosity.is_some()).then_some(text),
        tool_choice: request.tool_choice.as_ref().filter(|_| tools_given).map(write_tool_choice),
        tools,
        top_p: request.top_p,
        user: request.user.as_deref(),
    })
}

/// The text of a system or developer message, parts separated by a blank line; borrowed when
/// there is one part.
fn system_text(message: &Message) -> Cow<'_, str> {
    join_borrowing(part_texts(&message.parts).filter(|text| !text.is_empty()), "\n\n")
}

fn write_message<'request>(
    message: &'request Message,
    path: &FieldPath,
    items: &mut Vec<InputItemOut<'request>>,
) -> Result<(), ConvertError> {
    match message.role {
        Role::System | Role::Developer => {
            let text = system_text(message);
            if text.is_empty() {
                return Ok(());
            }
            let role = if message.role == Role::System {
                "system"
            } else {
                "developer"
            };
            items.push(InputItemOut::message(role, ContentOut::Text(text)));
        }
        // An empty user turn carries nothing.
        Role::User if message.parts.is_empty() => {}
        Role::User => {
            let parts = input_parts(&message.parts, path)?;
            let content = match parts.as_slice() {
                [ContentPartOut { kind: "input_text", text: Some(text), .. }] => ContentOut::Text(Cow::Borrowed(*text)),
                _ => ContentOut::Parts(parts),
            };
            items.push(InputItemOut::message("user", content));
        }
        Role::Assistant => write_assistant_items(&message.parts, items),
        Role::Tool => {
            for (position, part) in message.parts.iter().enumerate() {
                let Part::ToolResult(result) = part else {
                    continue;
                };
                items.push(InputItemOut::FunctionCallOutput {
                    call_id: &result.call_id,
                    output: write_tool_output(result, &element(path, "content", position))?,
                    kind: "function_call_output",
                });
            }
        }
    }
    Ok(())
}

/// User content as Responses input parts.
fn input_parts<'request>(parts: &'request [Part], path: &FieldPath) -> Result<Vec<ContentPartOut<'request>>, ConvertError> {
    let mut written = Vec::new();
    for (position, part) in parts.iter().enumerate() {
        let written_part = match part {
            Part::Text(text) if text.text.is_empty() => continue,
            Part::Text(text) => ContentPartOut::text("input_text", &text.text),
            Part::Refusal(text) => ContentPartOut::text("input_text", text),
            Part::Image(media) => {
                let mut image = ContentPartOut {
                    // The API reference lists `detail` as required.
                    detail: Some(media.detail.as_deref().unwrap_or("auto")),
                    kind: "input_image",
                    ..ContentPartOut::default()
                };
                match &media.source {
                    MediaSource::FileId(file_id) => image.file_id = Some(file_id),
                    MediaSource::Text(_) => {
                        return Err(ConvertError::new(
                            element(path, "content", position),
                            "a text image source is not supported by openai responses",
                        ));
                    }
                    source => image.image_url = source.to_url(),
                }
                image
            }
            Part::Document(media) => match &media.source {
                MediaSource::Text(text) => ContentPartOut::text("input_text", text),
                MediaSource::FileId(file_id) => {
                    ContentPartOut { file_id: Some(file_id), kind: "input_file", ..ContentPartOut::default() }
                }
                MediaSource::Url(url) => {
                    ContentPartOut { file_url: Some(url), kind: "input_file", ..ContentPartOut::default() }
                }
                MediaSource::Base64 { media_type, .. } => {
                    // OpenAI wants a file name with inline file data.
                    let default_name = if media_type == "application/pdf" {
                        "document.pdf"
                    } else {
                        "document"
                    };
                    ContentPartOut {
                        file_data: media.source.to_url(),
                        filename: Some(media.filename.as_deref().unwrap_or(default_name)),
                        kind: "input_file",
                        ..ContentPartOut::default()
                    }
                }
            },
            Part::Audio { .. } => {
                return Err(ConvertError::new(
                    element(path, "content", position),
                    "audio input is not supported by openai responses",
                ));
            }
            Part::ToolCall(_) | Part::ToolResult(_) | Part::Reasoning(_) => continue,
        };
        written.push(written_part);
    }
    Ok(written)
}

/// A tool result: a string, or input parts when it holds images or files. An error result gets
/// an `Error: ` prefix, since Responses has no error flag.
fn write_tool_output<'request>(result: &'request ToolResult, path: &FieldPath) -> Result<ContentOut<'request>, ConvertError> {
    let has_media = result
        .content
        .iter()
        .any(|part| matches!(part, Part::Image(_) | Part::Document(_)));
    if !has_media {
        let text = result.text();
        return Ok(ContentOut::Text(if result.is_error {
            Cow::Owned(format!("Error: {text}"))
        } else {
            text
        }));
    }
    let mut parts = input_parts(&result.content, path)?;
    if result.is_error {
        parts.insert(0, ContentPartOut::text("input_text", "Error:"));
    }
    Ok(ContentOut::Parts(parts))
}

/// An assistant turn as output items in part order: reasoning, messages (consecutive text and
/// refusal parts share one) and function calls.
fn write_assistant_items<'request>(parts: &'request [Part], items: &mut Vec<InputItemOut<'request>>) {
    let mut content: Vec<ContentPartOut> = Vec::new();
    let flush = |content: &mut Vec<ContentPartOut<'request>>, items: &mut Vec<InputItemOut<'request>>| {
        if !content.is_empty() {
            items.push(InputItemOut::message("assistant", ContentOut::Parts(std::mem::take(content))));
        }
    };
    for part in parts {
        match part {
            Part::Text(text) if text.text.is_empty() => {}
            Part::Text(text) => content.push(ContentPartOut::text("output_text", &text.text)),
            Part::Refusal(text) => {
                content.push(ContentPartOut { refusal: Some(text), kind: "refusal", ..ContentPartOut::default() })
            }
            Part::Reasoning(reasoning) => {
                let Some(signature) = responses_signature(reasoning) else {
                    continue;
                };
                flush(&mut content, items);
                let summary = match reasoning.text.is_empty() {
                    true => Vec::new(),
                    false => vec![ContentPartOut::text("summary_text", &reasoning.text)],
                };
                items.push(InputItemOut::Reasoning { encrypted_content: signature, summary, kind: "reasoning" });
            }
            Part::ToolCall(call) => {
                flush(&mut content, items);
                items.push(InputItemOut::FunctionCall {
                    arguments: normalized_arguments(&call.arguments),
                    call_id: &call.id,
                    name: &call.name,
                    kind: "function_call",
                });
            }
            Part::Image(_) | Part::Document(_) | Part::Audio { .. } | Part::ToolResult(_) => {}
        }
    }
    flush(&mut content, items);
}

/// The encrypted content of reasoning that a Responses upstream issued; reasoning from anywhere
/// else cannot be handed to OpenAI.
fn responses_signature(reasoning: &Reasoning) -> Option<&str> {
    reasoning
        .signature
        .as_ref()
        .filter(|signature| signature.provider == Format::OpenaiResponses)
        .map(|signature| signature.value.as_str())
}

/// A reasoning item's `summary` in a response: one summary text, or none.
fn summary_parts(text: &str) -> Value {
    if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    }
}

/// Arguments as OpenAI expects them: a JSON string that always parses.
fn normalized_arguments(arguments: &str) -> &str {
    if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    }
}

fn write_tool(tool: &ToolDefinition) -> ToolOut<'_> {
    ToolOut {
        description: tool.description.as_deref(),
        name: &tool.name,
        parameters: tool.parameters.raw(),
        // Responses makes a tool strict when `strict` is left out, which rejects the loose
        // schemas Chat and Anthropic clients send, so the non-strict default of those formats
        // is spelled out.
        strict: tool.strict.unwrap_or(false),
        kind: "function",
    }
}

fn write_tool_choice(choice: &ToolChoice) -> ToolChoiceOut<'_> {
    match choice {
        ToolChoice::Auto => ToolChoiceOut::Mode("auto"),
        ToolChoice::None => ToolChoiceOut::Mode("none"),
        ToolChoice::Required => ToolChoiceOut::Mode("required"),
        ToolChoice::Named(name) => ToolChoiceOut::Named { name, kind: "function" },
    }
}

/// The `reasoning` object, or None when reasoning stays at the model's default or is off.
fn write_reasoning(config: &ReasoningConfig) -> Option<ReasoningOut<'_>> {
    let effort = config.effective_effort();
    let turned_on = match effort {
        Some(ReasoningEffort::None) => false,
        Some(_) => true,
        None => config.summary.is_some(),
    };
    if !turned_on {
        return None;
    }
    Some(ReasoningOut {
        effort: effort.map(ReasoningEffort::as_str),
        // Summaries are the only reasoning text OpenAI returns; without them clients of other
        // formats would see no thinking at all.
        summary: config.summary.as_deref().unwrap_or("auto"),
    })
}

fn write_text_format(format: &ResponseFormat) -> TextFormatOut<'_> {
    let plain = |kind| TextFormatOut { description: None, name: None, schema: None, strict: None, kind };
    match format {
        ResponseFormat::Text => plain("text"),
        ResponseFormat::JsonObject => plain("json_object"),
        ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        } => TextFormatOut {
            description: description.as_deref(),
            // A name is required; "response" is what OpenAI's SDKs use by default.
            name: Some(name.as_deref().unwrap_or("response")),
            schema: Some(schema),
            strict: *strict,
            kind: "json_schema",
        },
    }
}

/// Reads a Responses response body.
pub fn parse_response(body: &Value) -> Result<Response, ConvertError> {
    object(body, "")?;
    let output =
        opt_array(body, "output", "")?.ok_or_else(|| ConvertError::new("output", "is required"))?;
    let mut parts = Vec::new();
    for (position, item) in output.iter().enumerate() {
        parts.extend(parse_output_item(item, &index("output", position))?);
    }
    let has_tool_calls = parts.iter().any(|part| matches!(part, Part::ToolCall(_)));
    let status = opt_str(body, "status", "")?.unwrap_or("completed");
    let incomplete_reason = match field(body, "incomplete_details") {
        Some(details) => opt_str(details, "reason", "incomplete_details")?,
        None => None,
    };
    Ok(Response {
        id: opt_str(body, "id", "")?.unwrap_or_default().to_string(),
        model: opt_str(body, "model", "")?.unwrap_or_default().to_string(),
        parts,
        finish_reason: finish_reason_from_status(status, incomplete_reason, has_tool_calls),
        usage: field(body, "usage")
            .and_then(|usage| usage_from_value(Format::OpenaiResponses, usage)),
    })
}

/// The parts of one output item; items of hosted tools give none.
fn parse_output_item(item: &Value, path: &FieldPath) -> Result<Vec<Part>, ConvertError> {
    object(item, path)?;
    let mut parts = Vec::new();
    match opt_str(item, "type", path)?.unwrap_or_default() {
        "message" => {
            let content_path = join(path, "content");
            for (position, part) in opt_array(item, "content", path)?
                .into_iter()
                .flatten()
                .enumerate()
            {
                let part_path = index(&content_path, position);
                match opt_str(part, "type", &part_path)?.unwrap_or_default() {
                    "output_text" => {
                        let text = req_str(part, "text", &part_path)?;
                        if !text.is_empty() {
                            parts.push(Part::text(text));
                        }
                    }
                    "refusal" => {
                        let refusal = req_str(part, "refusal", &part_path)?;
                        parts.push(Part::Refusal(refusal.to_string()));
                    }
                    _ => {}
                }
            }
        }
        "reasoning" => parts.extend(parse_reasoning_item(item, path)?),
        "function_call" => parts.push(Part::ToolCall(ToolCall {
            id: req_str(item, "call_id", path)?.to_string(),
            name: req_str(item, "name", path)?.to_string(),
            arguments: opt_str(item, "arguments", path)?
                .unwrap_or_default()
                .to_string(),
            signature: None,
        })),
        _ => {}
    }
    Ok(parts)
}

/// Responses has no finish reason; it follows from the status (protocols.md §5 table).
fn finish_reason_from_status(
    status: &str,
    incomplete_reason: Option<&str>,
    has_tool_calls: bool,
) -> FinishReason {
    match status {
        "incomplete" if incomplete_reason == Some("content_filter") => FinishReason::ContentFilter,
        "incomplete" => FinishReason::Length,
        "failed" | "cancelled" => FinishReason::Error,
        _ if has_tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// The response `status`, `incomplete_details` and `error` for a finish reason.
fn status_fields(reason: FinishReason) -> (&'static str, Value, Value) {
    match reason {
        FinishReason::Stop | FinishReason::ToolCalls => ("completed", Value::Null, Value::Null),
        FinishReason::Length => (
            "incomplete",
            json!({"reason": "max_output_tokens"}),
            Value::Null,
        ),
        FinishReason::ContentFilter => (
            "incomplete",
            json!({"reason": "content_filter"}),
            Value::Null,
        ),
        FinishReason::Error => (
            "failed",
            Value::Null,
            json!({"code": "server_error", "message": "the upstream model stopped with an error"}),
        ),
    }
}

/// The Responses `usage` object.
pub fn usage_value(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens(),
    })
}

/// An output item id, numbered after the response id so that it is unique and stable.
fn item_id(prefix: &str, response_id: &str, output_index: usize) -> String {
    let tail = response_id
        .split_once('_')
        .map_or(response_id, |(_, tail)| tail);
    format!("{prefix}_{tail}_{output_index}")
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    object_of([
        ("id", id.into()),
        ("type", "message".into()),
        ("status", status.into()),
        ("role", "assistant".into()),
        ("content", content.into()),
    ])
}

fn reasoning_item(id: &str, text: &str, encrypted_content: Option<&str>) -> Value {
    let mut item = json!({"id": id, "type": "reasoning", "summary": summary_parts(text)});
    if let Some(encrypted_content) = encrypted_content {
        item["encrypted_content"] = encrypted_content.into();
    }
    item
}

fn function_call_item(id: &str, status: &str, call: &ToolCall) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    })
}

/// A call of one of the client's custom tools, with its free-form `input`.
fn custom_tool_call_item(id: &str, status: &str, call: &ToolCall, input: &str) -> Value {
    json!({
        "id": id,
        "type": "custom_tool_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "input": input,
    })
}

/// Whether `name` is one of the client's custom tools, whose calls are written as custom calls.
fn is_custom_tool(meta_custom_tools: &[String], name: &str) -> bool {
    meta_custom_tools.iter().any(|custom| custom == name)
}

/// Writes a Responses response body for a client. The id is the gateway's (`meta.id`): a Responses
/// id names a response object, which an upstream message or completion id is not. Reasoning signed
/// by another provider is written without its signature, since the client would hand it back to us
/// as OpenAI's.
pub fn write_response<'response>(response: &'response Response, meta: &'response ResponseMeta) -> ResponseOut<'response> {
    let id = meta.id.as_str();
    let mut output: Vec<Value> = Vec::new();
    let mut content: Vec<Value> = Vec::new();
    let flush = |content: &mut Vec<Value>, output: &mut Vec<Value>| {
        if !content.is_empty() {
            let item_id = item_id("msg", id, output.len());
            output.push(message_item(&item_id, "completed", std::mem::take(content)));
        }
    };
    for part in &response.parts {
        match part {
            Part::Text(text) if text.text.is_empty() => {}
            Part::Text(text) => content.push(output_text(&text.text)),
            Part::Refusal(text) => content.push(json!({"type": "refusal", "refusal": text})),
            Part::Reasoning(reasoning) => {
                let signature = responses_signature(reasoning);
                if reasoning.text.is_empty() && signature.is_none() {
                    continue;
                }
                flush(&mut content, &mut output);
                let item_id = item_id("rs", id, output.len());
                output.push(reasoning_item(&item_id, &reasoning.text, signature));
            }
            Part::ToolCall(call) if is_custom_tool(&meta.custom_tools, &call.name) => {
                flush(&mut content, &mut output);
                let item_id = item_id("ctc", id, output.len());
                let input = custom_tools::input_from_arguments(&call.arguments);
                output.push(custom_tool_call_item(&item_id, "completed", call, &input));
            }
            Part::ToolCall(call) => {
                flush(&mut content, &mut output);
                let item_id = item_id("fc", id, output.len());
                let call = ToolCall {
                    arguments: normalized_arguments(&call.arguments).to_string(),
                    ..call.clone()
                };
                output.push(function_call_item(&item_id, "completed", &call));
            }
            Part::Image(_) | Part::Document(_) | Part::Audio { .. } | Part::ToolResult(_) => {}
        }
    }
    flush(&mut content, &mut output);
    let (status, incomplete_details, error) = status_fields(response.finish_reason);
    ResponseOut {
        created_at: meta.created_unix,
        error,
        id,
        incomplete_details,
        model: non_empty_or(&response.model, &meta.model),
        object: "response",
        output,
        status,
        usage: response.usage.as_ref().map(usage_value),
    }
}

/// A `response` object. The output items are the values the stream encoder builds too, moved
/// in: `json!` would have deep-copied them. Fields are in alphabetical order, the order the
/// sorted maps of `json!` wrote them in, so clients get the same bytes as before.
#[derive(Serialize)]
pub struct ResponseOut<'response> {
    created_at: i64,
    error: Value,
    id: &'response str,
    incomplete_details: Value,
    model: &'response str,
    object: &'static str,
    output: Vec<Value>,
    status: &'static str,
    usage: Option<Value>,
}

fn non_empty_or<'a>(value: &'a str, fallback: &'a str) -> &'a str {
    if value.is_empty() { fallback } else { value }
}

/// What an upstream output item turns into, by output index.
enum DecodedItem {
    /// `emitted_text`: deltas were seen, so the text in `output_item.done` is not repeated.
    Message {
        emitted_text: bool,
    },
    /// `last_part`: the summary or content part the last delta belonged to, to separate parts.
    Reasoning {
        emitted_text: bool,
        last_part: Option<(bool, u64)>,
    },
    Tool {
        index: usize,
        has_arguments: bool,
        ended: bool,
    },
    Other,
}

/// One per-token event as `StreamDecoder::fast_delta` reads it: text borrowed where no escape
/// forces a copy, and every other member skipped.
#[derive(Deserialize)]
struct DeltaEventIn<'event> {
    #[serde(rename = "type", borrow, default, deserialize_with = "optional_borrowed_str")]
    kind: Option<Cow<'event, str>>,
    output_index: Option<u64>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    delta: Option<Cow<'event, str>>,
    summary_index: Option<u64>,
    content_index: Option<u64>,
}

/// Turns a Responses upstream stream into IR events.
///
/// Tool calls are keyed by `output_index`. Servers that skip the delta events and only send
/// `output_item.done`, or only the terminal event, still produce the full output: each item's
/// text, arguments and encrypted reasoning are taken from the done item when no delta carried them.
#[derive(Default)]
pub struct StreamDecoder {
    started: bool,
    items: HashMap<u64, DecodedItem>,
    next_tool_index: usize,
    finished: bool,
    failed: bool,
    /// Every event through the general path, for checks that the fast path reads alike
    /// (`with_general_path_only`).
    general_path_only: bool,
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

    /// Decodes one upstream event; keepalives and unknown events produce nothing.
    pub fn push(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        if event.data.trim().is_empty() || self.finished || self.failed {
            return Ok(());
        }
        if self.started && !self.general_path_only && self.fast_delta(event, out) {
            return Ok(());
        }
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|error| ConvertError::new("stream", format!("invalid event JSON: {error}")))?;
        let event_type = opt_str(&data, "type", "")?
            .or(event.event.as_deref())
            .unwrap_or_default();
        let output_index = opt_u64(&data, "output_index", "")?.unwrap_or(0);
        match event_type {
            "response.created" | "response.in_progress" => {
                self.ensure_start(field(&data, "response"), out)?;
            }
            "response.output_item.added" => {
                self.ensure_start(None, out)?;
                let item =
                    field(&data, "item").ok_or_else(|| ConvertError::new("item", "is required"))?;
                self.item_added(output_index, item, out)?;
            }
            "response.output_item.done" => {
                self.ensure_start(None, out)?;
                let item =
                    field(&data, "item").ok_or_else(|| ConvertError::new("item", "is required"))?;
                self.item_done(output_index, item, out)?;
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                self.ensure_start(None, out)?;
                self.text_delta(output_index, opt_str(&data, "delta", "")?, out);
            }
            "response.reasoning_summary_text.delta" => {
                let part = (true, opt_u64(&data, "summary_index", "")?.unwrap_or(0));
                self.ensure_start(None, out)?;
                self.reasoning_delta(output_index, part, opt_str(&data, "delta", "")?, out);
            }
            "response.reasoning_text.delta" => {
                let part = (false, opt_u64(&data, "content_index", "")?.unwrap_or(0));
                self.ensure_start(None, out)?;
                self.reasoning_delta(output_index, part, opt_str(&data, "delta", "")?, out);
            }
            "response.function_call_arguments.delta" => {
                let fragment = opt_str(&data, "delta", "")?.unwrap_or_default();
                self.arguments(output_index, fragment, false, out);
            }
            "response.function_call_arguments.done" => {
                let arguments = opt_str(&data, "arguments", "")?.unwrap_or_default();
                self.arguments(output_index, arguments, true, out);
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.terminal(event_type, field(&data, "response"), out)?;
            }
            "error" => {
                let info =
                    parse_upstream_error(Format::OpenaiResponses, 500, event.data.as_bytes());
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

    fn ensure_start(
        &mut self,
        response: Option<&Value>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let (id, model) = match response {
            Some(response) => (
                opt_str(response, "id", "response")?.unwrap_or_default(),
                opt_str(response, "model", "response")?.unwrap_or_default(),
            ),
            None => ("", ""),
        };
        out.push(StreamEvent::Start {
            id: id.to_string(),
            model: model.to_string(),
        });
        Ok(())
    }

    fn item_added(
        &mut self,
        output_index: u64,
        item: &Value,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        let path = &"item".as_field_path();
        let decoded = match opt_str(item, "type", path)?.unwrap_or_default() {
            "function_call" => {
                let index = self.next_tool_index;
                self.next_tool_index += 1;
                let id = match opt_str(item, "call_id", path)? {
                    Some(call_id) => call_id,
                    None => opt_str(item, "id", path)?.unwrap_or_default(),
                };
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: id.to_string(),
                    name: opt_str(item, "name", path)?.unwrap_or_default().to_string(),
                });
                // Some compatible servers send the whole arguments with the added item.
                let arguments = opt_str(item, "arguments", path)?.filter(|text| !text.is_empty());
                if let Some(arguments) = arguments {
                    out.push(StreamEvent::ToolCallArgsDelta {
                        index,
                        fragment: arguments.to_string(),
                    });
                }
                DecodedItem::Tool {
                    index,
                    has_arguments: arguments.is_some(),
                    ended: false,
                }
            }
            "message" => DecodedItem::Message {
                emitted_text: false,
            },
            "reasoning" => DecodedItem::Reasoning {
                emitted_text: false,
                last_part: None,
            },
            _ => DecodedItem::Other,
        };
        self.items.insert(output_index, decoded);
        Ok(())
    }

    /// Completes an item: whatever its deltas did not carry comes from the done item.
    fn item_done(
        &mut self,
        output_index: u64,
        item: &Value,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        if !self.items.contains_key(&output_index) {
            self.item_added(output_index, item, out)?;
        }
        let path = &"item".as_field_path();
        match self.items.get_mut(&output_index) {
            Some(DecodedItem::Message { emitted_text }) => {
                if !*emitted_text {
                    *emitted_text = true;
                    for part in parse_output_item(item, path)? {
                        if let Part::Text(TextPart { text, .. }) | Part::Refusal(text) = part {
                            out.push(StreamEvent::TextDelta(text));
                        }
                    }
                }
            }
            Some(DecodedItem::Reasoning { emitted_text, .. }) => {
                let parsed = parse_reasoning_item(item, path)?;
                if let Some(Part::Reasoning(reasoning)) = parsed {
                    if !*emitted_text && !reasoning.text.is_empty() {
                        out.push(StreamEvent::ReasoningDelta(reasoning.text));
                    }
                    // The encrypted content is final only here: the added item may carry an
                    // earlier value.
                    if let Some(signature) = reasoning.signature {
                        out.push(StreamEvent::ReasoningSignature {
                            provider: signature.provider,
                            signature: signature.value,
                        });
                    }
                }
                *emitted_text = true;
            }
            Some(DecodedItem::Tool { .. }) => {
                let arguments = opt_str(item, "arguments", path)?.unwrap_or_default();
                self.arguments(output_index, arguments, true, out);
                self.end_tool(output_index, out);
            }
            Some(DecodedItem::Other) | None => {}
        }
        Ok(())
    }

    /// Most events are one token of text, reasoning or arguments: they are read into borrowed
    /// fields instead of a `Value` (which cost more than everything else done per token).
    /// Returns false for every other event and for anything `DeltaEventIn` does not read (a
    /// member of the wrong type, a repeated member); the general path then reads it, with its
    /// precise errors.
    fn fast_delta(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> bool {
        let Ok(JsonObject(delta)) = serde_json::from_str::<JsonObject<DeltaEventIn>>(&event.data) else {
            return false;
        };
        let event_type = delta.kind.as_deref().or(event.event.as_deref()).unwrap_or_default();
        let output_index = delta.output_index.unwrap_or(0);
        let text = delta.delta.as_deref();
        match event_type {
            "response.output_text.delta" | "response.refusal.delta" => self.text_delta(output_index, text, out),
            "response.reasoning_summary_text.delta" => {
                self.reasoning_delta(output_index, (true, delta.summary_index.unwrap_or(0)), text, out)
            }
            "response.reasoning_text.delta" => {
                self.reasoning_delta(output_index, (false, delta.content_index.unwrap_or(0)), text, out)
            }
            "response.function_call_arguments.delta" => self.arguments(output_index, text.unwrap_or_default(), false, out),
            _ => return false,
        }
        true
    }

    fn text_delta(&mut self, output_index: u64, delta: Option<&str>, out: &mut Vec<StreamEvent>) {
        let entry = self
            .items
            .entry(output_index)
            .or_insert(DecodedItem::Message {
                emitted_text: false,
            });
        if let DecodedItem::Message { emitted_text } = entry {
            *emitted_text = true;
        }
        if let Some(delta) = delta.filter(|delta| !delta.is_empty()) {
            out.push(StreamEvent::TextDelta(delta.to_string()));
        }
    }

    fn reasoning_delta(
        &mut self,
        output_index: u64,
        part: (bool, u64),
        delta: Option<&str>,
        out: &mut Vec<StreamEvent>,
    ) {
        let entry = self
            .items
            .entry(output_index)
            .or_insert(DecodedItem::Reasoning {
                emitted_text: false,
                last_part: None,
            });
        let Some(delta) = delta.filter(|delta| !delta.is_empty()) else {
            return;
        };
        if let DecodedItem::Reasoning {
            emitted_text,
            last_part,
        } = entry
        {
            // Summary parts are separate paragraphs, as in a non-stream reasoning item.
            if last_part.is_some_and(|last| last != part) {
                out.push(StreamEvent::ReasoningDelta("\n\n".to_string()));
            }
            *last_part = Some(part);
            *emitted_text = true;
        }
        out.push(StreamEvent::ReasoningDelta(delta.to_string()));
    }

    /// An argument fragment, or with `complete` the whole arguments, which are only used when no
    /// fragment came before them.
    fn arguments(
        &mut self,
        output_index: u64,
        fragment: &str,
        complete: bool,
        out: &mut Vec<StreamEvent>,
    ) {
        let Some(DecodedItem::Tool {
            index,
            has_arguments,
            ended: false,
        }) = self.items.get_mut(&output_index)
        else {
            return;
        };
        if fragment.is_empty() || (complete && *has_arguments) {
            return;
        }
        *has_arguments = true;
        out.push(StreamEvent::ToolCallArgsDelta {
            index: *index,
            fragment: fragment.to_string(),
        });
    }

    /// Closes one call; a call that never got arguments gets `{}` so that it stays valid JSON.
    fn end_tool(&mut self, output_index: u64, out: &mut Vec<StreamEvent>) {
        let Some(DecodedItem::Tool {
            index,
            has_arguments,
            ended,
        }) = self.items.get_mut(&output_index)
        else {
            return;
        };
        if *ended {
            return;
        }
        if !*has_arguments {
            out.push(StreamEvent::ToolCallArgsDelta {
                index: *index,
                fragment: "{}".to_string(),
            });
            *has_arguments = true;
        }
        out.push(StreamEvent::ToolCallEnd { index: *index });
        *ended = true;
    }

    fn terminal(
        &mut self,
        event_type: &str,
        response: Option<&Value>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        self.ensure_start(response, out)?;
        let path = "response";
        if let Some(response) = response {
            // Items that no event announced, from servers that only send the final response.
            for (position, item) in opt_array(response, "output", path)?
                .into_iter()
                .flatten()
                .enumerate()
            {
                let position = position as u64;
                if !self.items.contains_key(&position) {
                    self.item_done(position, item, out)?;
                }
            }
        }
        let mut open_tools: Vec<(usize, u64)> = self
            .items
            .iter()
            .filter_map(|(output_index, item)| match item {
                DecodedItem::Tool {
                    index,
                    ended: false,
                    ..
                } => Some((*index, *output_index)),
                _ => None,
            })
            .collect();
        open_tools.sort_unstable();
        for (_, output_index) in open_tools {
            self.end_tool(output_index, out);
        }
        if let Some(usage) = response
            .and_then(|response| field(response, "usage"))
            .and_then(|usage| usage_from_value(Format::OpenaiResponses, usage))
        {
            out.push(StreamEvent::Usage(usage));
        }
        self.finished = true;
        if event_type == "response.failed" {
            let error = response.and_then(|response| field(response, "error"));
            let (kind, message) = match error {
                Some(error) => {
                    let body = json!({"error": error}).to_string();
                    let info = parse_upstream_error(Format::OpenaiResponses, 500, body.as_bytes());
                    (info.kind, info.message)
                }
                None => (ErrorKind::Upstream, "upstream response failed".to_string()),
            };
            out.push(StreamEvent::Error { kind, message });
            return Ok(());
        }
        let incomplete_reason =
            match response.and_then(|response| field(response, "incomplete_details")) {
                Some(details) => opt_str(details, "reason", "response.incomplete_details")?,
                None => None,
            };
        let status = if event_type == "response.incomplete" {
            "incomplete"
        } else {
            "completed"
        };
        out.push(StreamEvent::Finish {
            reason: finish_reason_from_status(status, incomplete_reason, self.next_tool_index > 0),
        });
        Ok(())
    }

    /// Ends the stream; one that stopped before a terminal `response.*` event was cut off.
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

/// The message or reasoning item the encoder has open.
enum OpenItem {
    Message {
        output_index: usize,
        item_id: String,
        text: String,
    },
    Reasoning {
        output_index: usize,
        item_id: String,
        text: String,
        /// A summary part was opened (reasoning may come as encrypted content alone).
        summary_open: bool,
        encrypted_content: Option<String>,
    },
}

/// A function-call or custom-tool-call item being written, by IR tool index.
struct ToolItem {
    output_index: usize,
    item_id: String,
    call: ToolCall,
    done: bool,
    /// Set for a call of one of the client's custom tools: its input is decoded out of the
    /// argument fragments and streamed as `response.custom_tool_call_input.delta` events.
    custom: Option<CustomInput>,
}

/// The free-form input of a custom tool call being streamed.
struct CustomInput {
    decoder: StreamingInputDecoder,
    /// The input text sent in deltas so far.
    streamed: String,
}

/// A per-token delta event (`response.output_text.delta`, `response.reasoning_summary_text.delta`,
/// `response.function_call_arguments.delta`, `response.custom_tool_call_input.delta`), written
/// from borrowed parts rather than `emit`'s map: these run for every token. Members are in
/// alphabetical order, as that map writes them.
#[derive(Serialize)]
struct DeltaOut<'event> {
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<u32>,
    delta: &'event str,
    item_id: &'event str,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<[(); 0]>,
    output_index: usize,
    sequence_number: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary_index: Option<u32>,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Writes `delta` with the next sequence number. A free function over the counter, not a method,
/// so that it can run while the encoder's open item (which `delta` borrows from) is borrowed.
fn write_delta(next_sequence_number: &mut u64, mut delta: DeltaOut, out: &mut Vec<u8>) {
    delta.sequence_number = *next_sequence_number;
    *next_sequence_number += 1;
    write_json_event(out, Some(delta.kind), &delta);
}

impl<'event> DeltaOut<'event> {
    /// A delta with the members every kind has; the caller adds the ones its kind needs.
    fn new(kind: &'static str, item_id: &'event str, output_index: usize, delta: &'event str) -> DeltaOut<'event> {
        DeltaOut {
            content_index: None,
            delta,
            item_id,
            logprobs: None,
            output_index,
            sequence_number: 0,
            summary_index: None,
            kind,
        }
    }
}

/// Writes IR events as a Responses stream for a client.
///
/// Every event is `event: <type>` plus `data: {type, sequence_number, …}` with strictly increasing
/// sequence numbers. An open message or reasoning item is closed (with its `.done` events carrying
/// the accumulated text) before an item of another kind opens; function-call items stay open until
/// their `ToolCallEnd`, since Chat upstreams may interleave the arguments of parallel calls. The
/// terminal `response.completed`, `response.incomplete` or `response.failed` waits for `finish`,
/// because a Chat upstream sends its usage after the finish reason, and carries every item and the
/// usage.
pub struct StreamEncoder {
    id: String,
    model: String,
    custom_tools: Vec<String>,
    created_at: i64,
    next_sequence_number: u64,
    started: bool,
    open: Option<OpenItem>,
    tools: HashMap<usize, ToolItem>,
    next_output_index: usize,
    /// Finished items and their output index, for the terminal event.
    output: Vec<(usize, Value)>,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
    failed: bool,
}

impl StreamEncoder {
    pub fn new(meta: &ResponseMeta) -> StreamEncoder {
        StreamEncoder {
            id: meta.id.clone(),
            model: meta.model.clone(),
            custom_tools: meta.custom_tools.clone(),
            created_at: meta.created_unix,
            next_sequence_number: 0,
            started: false,
            open: None,
            tools: HashMap::new(),
            next_output_index: 0,
            output: Vec::new(),
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
            StreamEvent::Start { model, .. } => {
                // The id stays the gateway's, as in `write_response`.
                if !self.started && !model.is_empty() {
                    self.model = model.clone();
                }
                self.ensure_started(out);
            }
            StreamEvent::TextDelta(text) => {
                if text.is_empty() {
                    return;
                }
                self.open_message(out);
                let Some(OpenItem::Message {
                    output_index,
                    item_id,
                    text: accumulated,
                }) = &mut self.open
                else {
                    return;
                };
                accumulated.push_str(text);
                let delta = DeltaOut {
                    content_index: Some(0),
                    logprobs: Some([]),
                    ..DeltaOut::new("response.output_text.delta", item_id, *output_index, text)
                };
                write_delta(&mut self.next_sequence_number, delta, out);
            }
            StreamEvent::ReasoningDelta(text) => {
                if text.is_empty() {
                    return;
                }
                self.open_reasoning(out);
                self.open_summary_part(out);
                let Some(OpenItem::Reasoning {
                    output_index,
                    item_id,
                    text: accumulated,
                    ..
                }) = &mut self.open
                else {
                    return;
                };
                accumulated.push_str(text);
                let delta = DeltaOut {
                    summary_index: Some(0),
                    ..DeltaOut::new("response.reasoning_summary_text.delta", item_id, *output_index, text)
                };
                write_delta(&mut self.next_sequence_number, delta, out);
            }
            StreamEvent::ReasoningSignature {
                provider,
                signature,
            } => {
                // Only OpenAI can read its encrypted reasoning; other providers' signatures would
                // come back to us as if OpenAI had issued them.
                if *provider != Format::OpenaiResponses {
                    return;
                }
                self.open_reasoning(out);
                if let Some(OpenItem::Reasoning {
                    encrypted_content, ..
                }) = &mut self.open
                {
                    *encrypted_content = Some(signature.clone());
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.ensure_started(out);
                self.close_open(out);
                let output_index = self.take_output_index();
                let custom = is_custom_tool(&self.custom_tools, name);
                let prefix = if custom { "ctc" } else { "fc" };
                let tool = ToolItem {
                    output_index,
                    item_id: item_id(prefix, &self.id, output_index),
                    call: ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                        signature: None,
                    },
                    done: false,
                    custom: custom.then(|| CustomInput {
                        decoder: StreamingInputDecoder::new(),
                        streamed: String::new(),
                    }),
                };
                let item = if custom {
                    custom_tool_call_item(&tool.item_id, "in_progress", &tool.call, "")
                } else {
                    function_call_item(&tool.item_id, "in_progress", &tool.call)
                };
                let data = object_of([("output_index", output_index.into()), ("item", item)]);
                self.emit("response.output_item.added", data, out);
                self.tools.insert(*index, tool);
            }
            StreamEvent::ToolCallArgsDelta { index, fragment } => {
                let Some(tool) = self.tools.get_mut(index).filter(|tool| !tool.done) else {
                    return;
                };
                tool.call.arguments.push_str(fragment);
                let (event_type, delta) = match &mut tool.custom {
                    Some(custom) => {
                        let text = custom.decoder.push(fragment);
                        custom.streamed.push_str(&text);
                        ("response.custom_tool_call_input.delta", text)
                    }
                    None => (
                        "response.function_call_arguments.delta",
                        fragment.to_string(),
                    ),
                };
                // A fragment that only opens the JSON object holds no input text yet.
                if delta.is_empty() && tool.custom.is_some() {
                    return;
                }
                let delta = DeltaOut::new(event_type, &tool.item_id, tool.output_index, &delta);
                write_delta(&mut self.next_sequence_number, delta, out);
            }
            StreamEvent::ToolCallEnd { index } => self.close_tool(*index, out),
            StreamEvent::Finish { reason } => {
                self.ensure_started(out);
                self.close_all(out);
                self.finish_reason = Some(*reason);
            }
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
            StreamEvent::Error { kind, message } => {
                self.ensure_started(out);
                let (error_type, code) = kind.openai_type_and_code();
                let code = code.unwrap_or(error_type);
                // The API reference puts code and message at the top of the event, while the
                // wire has been seen nesting them in `error`; clients of either kind find them.
                let data = json!({
                    "code": code,
                    "message": message,
                    "param": null,
                    "error": {"type": error_type, "code": code, "message": message, "param": null},
                });
                self.emit("error", data, out);
                let error = json!({"code": code, "message": message});
                let response = self.response_object("failed", error, Value::Null);
                self.emit("response.failed", object_of([("response", response)]), out);
                self.failed = true;
            }
        }
    }

    /// Closes every open item and writes the terminal event with the output and usage.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.failed {
            return;
        }
        self.ensure_started(out);
        self.close_all(out);
        let reason = self.finish_reason.unwrap_or(FinishReason::Stop);
        let (status, incomplete_details, error) = status_fields(reason);
        let response = self.response_object(status, error, incomplete_details);
        let event_type = format!("response.{status}");
        self.emit(&event_type, object_of([("response", response)]), out);
    }

    fn emit(&mut self, event_type: &str, mut data: Value, out: &mut Vec<u8>) {
        data["type"] = event_type.into();
        data["sequence_number"] = self.next_sequence_number.into();
        self.next_sequence_number += 1;
        write_json_event(out, Some(event_type), &data);
    }

    fn take_output_index(&mut self) -> usize {
        let output_index = self.next_output_index;
        self.next_output_index += 1;
        output_index
    }

    /// The response object of the lifecycle events, with the items finished so far.
    fn response_object(&mut self, status: &str, error: Value, incomplete_details: Value) -> Value {
        self.output.sort_by_key(|(output_index, _)| *output_index);
        let output: Vec<Value> = self.output.iter().map(|(_, item)| item.clone()).collect();
        let usage = match (status, &self.usage) {
            ("in_progress", _) | (_, None) => Value::Null,
            (_, Some(usage)) => usage_value(usage),
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete_details,
            "model": self.model,
            "output": output,
            "usage": usage,
        })
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        for event_type in ["response.created", "response.in_progress"] {
            let response = self.response_object("in_progress", Value::Null, Value::Null);
            self.emit(event_type, object_of([("response", response)]), out);
        }
    }

    fn open_message(&mut self, out: &mut Vec<u8>) {
        self.ensure_started(out);
        if matches!(self.open, Some(OpenItem::Message { .. })) {
            return;
        }
        self.close_all(out);
        let output_index = self.take_output_index();
        let item_id = item_id("msg", &self.id, output_index);
        let item = message_item(&item_id, "in_progress", Vec::new());
        let data = object_of([("output_index", output_index.into()), ("item", item)]);
        self.emit("response.output_item.added", data, out);
        let data = json!({
            "item_id": item_id,
            "output_index": output_index,
            "content_index": 0,
            "part": output_text(""),
        });
        self.emit("response.content_part.added", data, out);
        self.open = Some(OpenItem::Message {
            output_index,
            item_id,
            text: String::new(),
        });
    }

    fn open_reasoning(&mut self, out: &mut Vec<u8>) {
        self.ensure_started(out);
        if matches!(self.open, Some(OpenItem::Reasoning { .. })) {
            return;
        }
        self.close_all(out);
        let output_index = self.take_output_index();
        let item_id = item_id("rs", &self.id, output_index);
        let item = reasoning_item(&item_id, "", None);
        let data = object_of([("output_index", output_index.into()), ("item", item)]);
        self.emit("response.output_item.added", data, out);
        self.open = Some(OpenItem::Reasoning {
            output_index,
            item_id,
            text: String::new(),
            summary_open: false,
            encrypted_content: None,
        });
    }

    fn open_summary_part(&mut self, out: &mut Vec<u8>) {
        let Some(OpenItem::Reasoning {
            output_index,
            item_id,
            summary_open,
            ..
        }) = &mut self.open
        else {
            return;
        };
        if *summary_open {
            return;
        }
        *summary_open = true;
        let data = json!({
            "item_id": item_id,
            "output_index": output_index,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": ""},
        });
        self.emit("response.reasoning_summary_part.added", data, out);
    }

    /// Closes the open message or reasoning item and every open function call.
    fn close_all(&mut self, out: &mut Vec<u8>) {
        self.close_open(out);
        let mut open_tools: Vec<usize> = self
            .tools
            .iter()
            .filter(|(_, tool)| !tool.done)
            .map(|(index, _)| *index)
            .collect();
        open_tools.sort_unstable();
        for index in open_tools {
            self.close_tool(index, out);
        }
    }

    fn close_open(&mut self, out: &mut Vec<u8>) {
        match self.open.take() {
            None => {}
            Some(OpenItem::Message {
                output_index,
                item_id,
                text,
            }) => {
                let data = json!({
                    "item_id": item_id,
                    "output_index": output_index,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                });
                self.emit("response.output_text.done", data, out);
                let data = json!({
                    "item_id": item_id,
                    "output_index": output_index,
                    "content_index": 0,
                    "part": output_text(&text),
                });
                self.emit("response.content_part.done", data, out);
                let item = message_item(&item_id, "completed", vec![output_text(&text)]);
                self.finish_item(output_index, item, out);
            }
            Some(OpenItem::Reasoning {
                output_index,
                item_id,
                text,
                summary_open,
                encrypted_content,
            }) => {
                if summary_open {
                    let data = json!({
                        "item_id": item_id,
                        "output_index": output_index,
                        "summary_index": 0,
                        "text": text,
                    });
                    self.emit("response.reasoning_summary_text.done", data, out);
                    let data = json!({
                        "item_id": item_id,
                        "output_index": output_index,
                        "summary_index": 0,
                        "part": {"type": "summary_text", "text": text},
                    });
                    self.emit("response.reasoning_summary_part.done", data, out);
                }
                let item = reasoning_item(&item_id, &text, encrypted_content.as_deref());
                self.finish_item(output_index, item, out);
            }
        }
    }

    fn close_tool(&mut self, index: usize, out: &mut Vec<u8>) {
        let Some(tool) = self.tools.get_mut(&index).filter(|tool| !tool.done) else {
            return;
        };
        tool.done = true;
        let output_index = tool.output_index;
        if let Some(custom) = tool.custom.take() {
            let item_id = tool.item_id.clone();
            let call = tool.call.clone();
            self.close_custom_tool(output_index, &item_id, &call, custom, out);
            return;
        }
        tool.call.arguments = normalized_arguments(&tool.call.arguments).to_string();
        let data = json!({
            "item_id": tool.item_id,
            "output_index": output_index,
            "arguments": tool.call.arguments,
        });
        let item = function_call_item(&tool.item_id, "completed", &tool.call);
        self.emit("response.function_call_arguments.done", data, out);
        self.finish_item(output_index, item, out);
    }

    /// Ends a custom tool call. Its input is the one the complete arguments hold, unless that
    /// does not continue the text the deltas already sent (arguments cut off mid-string), in
    /// which case the streamed text is the input. Whatever the deltas have not sent yet goes out
    /// as one last delta, so that they always add up to the `.done` input.
    fn close_custom_tool(
        &mut self,
        output_index: usize,
        item_id: &str,
        call: &ToolCall,
        custom: CustomInput,
        out: &mut Vec<u8>,
    ) {
        let parsed = custom_tools::input_from_arguments(&call.arguments);
        let input = if parsed.starts_with(&custom.streamed) {
            parsed
        } else {
            custom.streamed.clone()
        };
        let rest = &input[custom.streamed.len()..];
        if !rest.is_empty() {
            let delta = DeltaOut::new("response.custom_tool_call_input.delta", item_id, output_index, rest);
            write_delta(&mut self.next_sequence_number, delta, out);
        }
        let data = json!({"item_id": item_id, "output_index": output_index, "input": input});
        self.emit("response.custom_tool_call_input.done", data, out);
        let item = custom_tool_call_item(item_id, "completed", call, &input);
        self.finish_item(output_index, item, out);
    }

    fn finish_item(&mut self, output_index: usize, item: Value, out: &mut Vec<u8>) {
        let data = json!({"output_index": output_index, "item": item.clone()});
        self.emit("response.output_item.done", data, out);
        self.output.push((output_index, item));
    }
}

#[cfg(test)]
mod stream_tests {
    use serde_json::Value;

    use crate::protocol::Format;
    use crate::protocol::error::ErrorKind;
    use crate::protocol::ir::{FinishReason, ResponseMeta, StreamEvent};
    use crate::protocol::openai_responses::{StreamDecoder, StreamEncoder};
    use crate::protocol::sse::SseEvent;
    use crate::protocol::{anthropic, gemini, openai_chat, testkit};

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

    /// The recorded Responses streams, with recordings of several back-to-back responses split
    /// into one name per response.
    fn recorded_names() -> Vec<String> {
        let mut names = Vec::new();
        for name in testkit::all_streams() {
            if !name.starts_with("openai-responses/") {
                continue;
            }
            let text = String::from_utf8(testkit::provider_file(&name)).unwrap();
            let terminal_events = text
                .lines()
                .filter(|line| !line.trim().is_empty())
                .filter(|line| {
                    let payload: Value = serde_json::from_str(line).expect("chunk is JSON");
                    let event_type = payload["type"].as_str().unwrap_or_default();
                    matches!(
                        event_type,
                        "response.completed" | "response.incomplete" | "response.failed"
                    )
                })
                .count();
            if terminal_events > 1 {
                names.extend((0..terminal_events).map(|turn| format!("{name}#{turn}")));
            } else {
                names.push(name);
            }
        }
        names
    }

    /// The fast path for per-token events decodes them as the general path does: each recorded
    /// stream, and made-up events for the kinds the recordings lack, are decoded both ways.
    #[test]
    fn fast_deltas_decode_as_the_general_path_does() {
        let made_up = [
            r#"{"type":"response.created","response":{"id":"resp_1","model":"gpt-5"}}"#,
            r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"reasoning","id":"rs_1"}}"#,
            r#"{"type":"response.reasoning_summary_text.delta","output_index":0,"summary_index":0,"delta":"First."}"#,
            r#"{"type":"response.reasoning_summary_text.delta","output_index":0,"summary_index":1,"delta":"Second \"quoted\"."}"#,
            r#"{"type":"response.reasoning_text.delta","output_index":0,"content_index":0,"delta":"raw"}"#,
            r#"{"type":"response.output_item.added","output_index":1,"item":{"type":"message","id":"msg_1"}}"#,
            r#"{"type":"response.refusal.delta","output_index":1,"delta":"No."}"#,
            r#"{"output_index":1,"delta":"typed by its event line"}"#,
            r#"{"type":"response.output_item.added","output_index":2,"item":{"type":"function_call","id":"fc_1","call_id":"call_1","name":"f"}}"#,
            r#"{"type":"response.function_call_arguments.delta","output_index":2,"delta":"{\"a\":"}"#,
            r#"{"type":"response.function_call_arguments.delta","output_index":2,"delta":"1}"}"#,
            r#"{"type":"response.completed","response":{"id":"resp_1","model":"gpt-5","status":"completed"}}"#,
        ];
        let made_up: String = made_up
            .iter()
            .map(|data| match data.contains("typed by its event line") {
                true => format!("event: response.output_text.delta\ndata: {data}\n\n"),
                false => format!("data: {data}\n\n"),
            })
            .collect();
        let mut streams = vec![("made-up".to_string(), testkit::parse_pieces(&[made_up.as_bytes()]))];
        for name in recorded_names() {
            let events = testkit::parse_pieces(&[&testkit::stream_bytes(&name)]);
            streams.push((name, events));
        }
        const FAST_KINDS: [&str; 5] = [
            "response.output_text.delta",
            "response.refusal.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_text.delta",
            "response.function_call_arguments.delta",
        ];
        let mut streams_with_calls = 0;
        let mut fast_events = 0;
        for (name, events) in &streams {
            let fast = decode(events);
            let mut general = StreamDecoder::new().with_general_path_only();
            let mut general_events = Vec::new();
            for event in events {
                general.push(event, &mut general_events).expect("event decodes");
            }
            general.finish(&mut general_events).expect("stream ends");
            assert_eq!(fast, general_events, "{name}");
            streams_with_calls += usize::from(fast.iter().any(|event| matches!(event, StreamEvent::ToolCallArgsDelta { .. })));
            // Every per-token event of these streams takes the fast path.
            for event in events.iter().filter(|event| FAST_KINDS.iter().any(|kind| event.data.contains(kind))) {
                let read = serde_json::from_str::<crate::protocol::typed_read::JsonObject<super::DeltaEventIn>>(&event.data);
                assert!(read.is_ok(), "{name}: {} is not read typed", event.data);
            }
            fast_events += events.iter().filter(|event| FAST_KINDS.iter().any(|kind| event.data.contains(kind))).count();
        }
        assert!(streams_with_calls >= 2, "the streams call tools in {streams_with_calls}");
        assert!(fast_events >= 100, "{fast_events} per-token events");
    }

    /// Each tool call as (id, name, joined arguments), by IR index.
    fn joined_calls(events: &[StreamEvent]) -> Vec<(String, String, String)> {
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for event in events {
            match event {
                StreamEvent::ToolCallStart { index, id, name } => {
                    assert_eq!(*index, calls.len());
                    calls.push((id.clone(), name.clone(), String::new()));
                }
                StreamEvent::ToolCallArgsDelta { index, fragment } => {
                    calls[*index].2.push_str(fragment)
                }
                _ => {}
            }
        }
        calls
    }

    fn joined_text(events: &[StreamEvent], reasoning: bool) -> String {
        events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::TextDelta(text) if !reasoning => Some(text.as_str()),
                StreamEvent::ReasoningDelta(text) if reasoning => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn recorded_streams_decode_the_same_however_they_are_split() {
        let names = recorded_names();
        assert_eq!(names.len(), 7, "{names:?}");
        for name in &names {
            let bytes = testkit::stream_bytes(name);
            let whole = decode(&testkit::parse_pieces(&[&bytes]));
            assert!(
                matches!(whole.first(), Some(StreamEvent::Start { id, .. }) if id.starts_with("resp_")),
                "{name}"
            );
            assert!(
                matches!(
                    whole.last(),
                    Some(StreamEvent::Finish { .. } | StreamEvent::Error { .. })
                ),
                "{name}: no terminal event"
            );
            testkit::assert_split_decoding_matches(name, &bytes, &whole, 100, decode);
        }
    }

    #[test]
    fn function_call_arguments_join_to_the_recorded_json() {
        let events = recorded("openai-responses/function-call-stream.chunks.txt");
        let calls = joined_calls(&events);
        assert_eq!(
            calls,
            [(
                "call_H5DxLSFnsGhiROnUiDHmgyc8".to_string(),
                "weather".to_string(),
                r#"{"location":"San Francisco"}"#.to_string()
            )]
        );
        assert!(events.contains(&StreamEvent::ToolCallEnd { index: 0 }));
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Finish {
                reason: FinishReason::ToolCalls
            })
        );
    }

    #[test]
    fn reasoning_summary_and_final_encrypted_content_come_before_the_call() {
        let name = "openai-responses/reasoning-function-calls-4-turns.chunks.txt#0";
        let events = recorded(name);
        assert!(
            joined_text(&events, true).starts_with("**Calculating step-by-step using calculator**")
        );
        let signature_at = events
            .iter()
            .position(|event| matches!(event, StreamEvent::ReasoningSignature { .. }))
            .expect("signature");
        let call_at = events
            .iter()
            .position(|event| matches!(event, StreamEvent::ToolCallStart { .. }))
            .expect("call");
        assert!(signature_at < call_at);
        // The signature is the encrypted content of `output_item.done`, not the earlier value
        // that `output_item.added` carried.
        let text = String::from_utf8(testkit::stream_bytes(name)).unwrap();
        let encrypted_of = |event_type: &str| -> String {
            let line = text
                .lines()
                .find(|line| {
                    line.starts_with("data: ")
                        && line.contains(event_type)
                        && line.contains("\"reasoning\"")
                })
                .expect("reasoning item event");
            let payload: Value = serde_json::from_str(&line["data: ".len()..]).unwrap();
            payload["item"]["encrypted_content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let added = encrypted_of("response.output_item.added");
        let done = encrypted_of("response.output_item.done");
        assert_ne!(added, done);
        assert_eq!(
            events[signature_at],
            StreamEvent::ReasoningSignature {
                provider: Format::OpenaiResponses,
                signature: done
            }
        );
        let calls = joined_calls(&events);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].2, r#"{"a":12,"b":7,"op":"add"}"#);
    }

    #[test]
    fn four_turn_agent_loop_calls_three_times_then_answers() {
        let base = "openai-responses/reasoning-function-calls-4-turns.chunks.txt";
        let mut arguments = Vec::new();
        for turn in 0..3 {
            let events = recorded(&format!("{base}#{turn}"));
            arguments.extend(joined_calls(&events).into_iter().map(|call| call.2));
            assert!(events.contains(&StreamEvent::Finish {
                reason: FinishReason::ToolCalls
            }));
        }
        assert_eq!(
            arguments,
            [
                r#"{"a":12,"b":7,"op":"add"}"#,
                r#"{"a":19,"b":3,"op":"multiply"}"#,
                r#"{"a":57,"b":10,"op":"multiply"}"#
            ]
        );
        let last = recorded(&format!("{base}#3"));
        assert_eq!(joined_text(&last, false), "The final result is **570**.");
        assert!(last.contains(&StreamEvent::Finish {
            reason: FinishReason::Stop
        }));
    }

    /// protocols.md §8 case 46 on the Responses side: `error` then `response.failed` is one error.
    #[test]
    fn case_46_error_then_failed_is_one_error() {
        let events = recorded("openai-responses/error-stream.chunks.txt");
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(events[0], StreamEvent::Start { .. }));
        assert!(matches!(
            &events[1],
            StreamEvent::Error { kind: ErrorKind::RateLimited, message } if message.starts_with("You exceeded your current quota")
        ));
    }

    /// Every IR stream the other decoders produce from the recordings.
    fn ir_streams() -> Vec<(String, Vec<StreamEvent>)> {
        let mut streams = Vec::new();
        for name in testkit::all_streams() {
            let events = testkit::parse_pieces(&[&testkit::stream_bytes(&name)]);
            let mut out = Vec::new();
            if name.starts_with("openai-chat/") {
                let mut decoder = openai_chat::StreamDecoder::new();
                for event in &events {
                    decoder.push(event, &mut out).unwrap();
                }
                decoder.finish(&mut out).unwrap();
            } else if name.starts_with("anthropic-messages/") {
                let mut decoder = anthropic::StreamDecoder::new();
                for event in &events {
                    decoder.push(event, &mut out).unwrap();
                }
                decoder.finish(&mut out).unwrap();
            } else if name.starts_with("gemini/") {
                let mut decoder = gemini::StreamDecoder::new(&meta());
                for event in &events {
                    decoder.push(event, &mut out).unwrap();
                }
                decoder.finish(&mut out).unwrap();
            } else {
                continue;
            }
            streams.push((name, out));
        }
        for name in recorded_names() {
            let events = recorded(&name);
            streams.push((name, events));
        }
        streams
    }

    fn meta() -> ResponseMeta {
        ResponseMeta {
            id: "resp_gateway".to_string(),
            model: "gateway-model".to_string(),
            created_unix: 1_700_000_000,
            custom_tools: Vec::new(),
        }
    }

    fn encode(events: &[StreamEvent]) -> Vec<u8> {
        let mut encoder = StreamEncoder::new(&meta());
        let mut out = Vec::new();
        for event in events {
            encoder.encode(event, &mut out);
        }
        encoder.finish(&mut out);
        out
    }

    /// Checks the Responses event grammar of an encoded stream: named events matching their
    /// `type`, sequence numbers 0, 1, 2…, the lifecycle events, every item added before its
    /// deltas and done once, `.done` events carrying the joined deltas, and one terminal event
    /// whose output is every done item in output order.
    fn check_grammar(name: &str, bytes: &[u8]) {
        let events = testkit::parse_pieces(&[bytes]);
        let payloads: Vec<Value> = events
            .iter()
            .map(|event| serde_json::from_str(&event.data).expect("event data is JSON"))
            .collect();
        for (position, (event, payload)) in events.iter().zip(&payloads).enumerate() {
            assert_eq!(event.event.as_deref(), payload["type"].as_str(), "{name}");
            assert_eq!(payload["sequence_number"], position, "{name}");
        }
        let types: Vec<&str> = payloads
            .iter()
            .map(|payload| payload["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types[..2],
            ["response.created", "response.in_progress"],
            "{name}"
        );
        let terminal = [
            "response.completed",
            "response.incomplete",
            "response.failed",
        ];
        let last = *types.last().unwrap();
        assert!(terminal.contains(&last), "{name}: ends with {last}");
        let terminals = types.iter().filter(|kind| terminal.contains(kind)).count();
        assert_eq!(terminals, 1, "{name}");

        let mut open: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
        let mut done_items: Vec<(u64, Value)> = Vec::new();
        let mut deltas: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
        for payload in &payloads {
            let kind = payload["type"].as_str().unwrap();
            let output_index = payload["output_index"].as_u64();
            match kind {
                "response.output_item.added" => {
                    let output_index = output_index.unwrap();
                    assert!(!open.contains_key(&output_index), "{name}: added twice");
                    assert!(
                        done_items.iter().all(|(done, _)| *done != output_index),
                        "{name}: output index reused"
                    );
                    let item_id = payload["item"]["id"].as_str().unwrap().to_string();
                    open.insert(output_index, item_id);
                }
                "response.output_item.done" => {
                    let output_index = output_index.unwrap();
                    let item_id = open.remove(&output_index).expect("done after added");
                    assert_eq!(payload["item"]["id"], item_id.as_str(), "{name}");
                    done_items.push((output_index, payload["item"].clone()));
                }
                "response.output_text.delta"
                | "response.reasoning_summary_text.delta"
                | "response.function_call_arguments.delta" => {
                    let output_index = output_index.unwrap();
                    let item_id = open.get(&output_index).expect("delta on an open item");
                    assert_eq!(payload["item_id"], item_id.as_str(), "{name}");
                    let delta = payload["delta"].as_str().unwrap();
                    deltas.entry(output_index).or_default().push_str(delta);
                }
                "response.output_text.done" | "response.reasoning_summary_text.done" => {
                    let joined = deltas
                        .get(&output_index.unwrap())
                        .cloned()
                        .unwrap_or_default();
                    assert_eq!(payload["text"], joined.as_str(), "{name}");
                }
                "response.function_call_arguments.done" => {
                    let joined = deltas
                        .get(&output_index.unwrap())
                        .cloned()
                        .unwrap_or_default();
                    let expected = if joined.trim().is_empty() {
                        "{}".to_string()
                    } else {
                        joined
                    };
                    assert_eq!(payload["arguments"], expected.as_str(), "{name}");
                }
                _ => {}
            }
        }
        if last != "response.failed" {
            assert!(open.is_empty(), "{name}: items left open");
        }
        done_items.sort_by_key(|(output_index, _)| *output_index);
        let items: Vec<Value> = done_items.into_iter().map(|(_, item)| item).collect();
        let response = &payloads.last().unwrap()["response"];
        assert_eq!(response["output"], Value::Array(items), "{name}");
        assert_eq!(
            response["status"],
            last.trim_start_matches("response."),
            "{name}"
        );
    }

    #[test]
    fn encoded_streams_follow_the_responses_grammar() {
        let streams = ir_streams();
        assert!(streams.len() >= 15, "only {} streams", streams.len());
        for (name, events) in &streams {
            check_grammar(name, &encode(events));
        }
    }

    /// What a client can rebuild from a stream: text, reasoning, calls, how it ended and usage.
    fn summary(events: &[StreamEvent]) -> (String, String, Vec<(String, String, String)>, String) {
        let ending = events
            .iter()
            .rev()
            .find_map(|event| match event {
                StreamEvent::Finish { reason } => Some(format!("{reason:?}")),
                StreamEvent::Error { message, .. } => Some(format!("error: {message}")),
                _ => None,
            })
            .unwrap_or_default();
        let calls = joined_calls(events)
            .into_iter()
            .map(|(id, name, arguments)| {
                let arguments = if arguments.is_empty() {
                    "{}".to_string()
                } else {
                    arguments
                };
                (id, name, arguments)
            })
            .collect();
        (
            joined_text(events, false),
            joined_text(events, true),
            calls,
            ending,
        )
    }

    #[test]
    fn encoded_streams_decode_back_to_the_same_content() {
        for (name, events) in ir_streams() {
            let encoded = encode(&events);
            let decoded = decode(&testkit::parse_pieces(&[&encoded]));
            assert_eq!(summary(&decoded), summary(&events), "{name}");
            let last_usage = |events: &[StreamEvent]| {
                events.iter().rev().find_map(|event| match event {
                    StreamEvent::Usage(usage) => Some(*usage),
                    _ => None,
                })
            };
            let failed = events
                .iter()
                .any(|event| matches!(event, StreamEvent::Error { .. }));
            if !failed {
                assert_eq!(last_usage(&decoded), last_usage(&events), "{name}");
            }
        }
    }

    #[test]
    fn only_responses_signatures_reach_the_client() {
        let reasoning = |provider| {
            vec![
                StreamEvent::Start {
                    id: String::new(),
                    model: String::new(),
                },
                StreamEvent::ReasoningDelta("thinking".to_string()),
                StreamEvent::ReasoningSignature {
                    provider,
                    signature: "opaque".to_string(),
                },
                StreamEvent::TextDelta("answer".to_string()),
                StreamEvent::Finish {
                    reason: FinishReason::Stop,
                },
            ]
        };
        let last_output = |bytes: &[u8]| -> Value {
            let events = testkit::parse_pieces(&[bytes]);
            let payload: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
            payload["response"]["output"].clone()
        };
        let own = last_output(&encode(&reasoning(Format::OpenaiResponses)));
        assert_eq!(own[0]["encrypted_content"], "opaque");
        assert_eq!(own[0]["summary"][0]["text"], "thinking");
        let foreign = last_output(&encode(&reasoning(Format::Anthropic)));
        assert!(foreign[0].get("encrypted_content").is_none());
        assert_eq!(foreign[1]["content"][0]["text"], "answer");
    }
}

#[cfg(test)]
mod body_tests {
    use serde_json::json;

    use crate::protocol::Format;
    use crate::protocol::ir::{
        Message, Part, Reasoning, Request, ResponseMeta, Role, Signature, WriteOptions,
    };
    use crate::protocol::openai_responses::{
        parse_request, parse_response, write_request, write_response,
    };
    use crate::protocol::testkit;

    fn meta() -> ResponseMeta {
        ResponseMeta {
            id: "resp_gateway".to_string(),
            model: "gateway-model".to_string(),
            created_unix: 1_700_000_000,
            custom_tools: Vec::new(),
        }
    }

    #[test]
    fn recorded_responses_survive_a_write_and_read_back() {
        for name in [
            "openai-responses/text-response.json",
            "openai-responses/function-call-response.json",
            "openai-responses/reasoning-response.json",
        ] {
            let parsed = parse_response(&testkit::provider_json(name)).unwrap();
            let written = serde_json::to_value(write_response(&parsed, &meta())).unwrap();
            assert_eq!(written["id"], "resp_gateway", "{name}");
            assert_eq!(written["object"], "response");
            let mut read_back = parse_response(&written).unwrap();
            read_back.id = parsed.id.clone();
            assert_eq!(read_back, parsed, "{name}");
        }
    }

    #[test]
    fn recorded_encrypted_reasoning_is_kept_for_responses_only() {
        let body = testkit::provider_json("openai-responses/reasoning-response.json");
        let parsed = parse_response(&body).unwrap();
        let Part::Reasoning(reasoning) = &parsed.parts[0] else {
            panic!("reasoning first: {:?}", parsed.parts);
        };
        let signature = reasoning.signature.as_ref().expect("encrypted content");
        assert_eq!(signature.provider, Format::OpenaiResponses);
        assert_eq!(signature.value, body["output"][0]["encrypted_content"]);
        // The next turn hands it back to a Responses upstream, without the item id.
        let request = Request {
            messages: vec![
                Message::new(Role::User, vec![Part::text("12 + 7, times 3, times 10?")]),
                Message::new(Role::Assistant, parsed.parts.clone()),
                Message::new(Role::User, vec![Part::text("Thanks")]),
            ],
            ..Request::default()
        };
        let options = WriteOptions {
            upstream_model: "gpt-5-mini".to_string(),
            default_max_tokens: 4096,
            stream: false,
            ..WriteOptions::default()
        };
        let written = serde_json::to_value(write_request(&request, &options).unwrap()).unwrap();
        let item = &written["input"][1];
        assert_eq!(item["type"], "reasoning");
        assert!(item.get("id").is_none());
        assert_eq!(
            item["encrypted_content"],
            body["output"][0]["encrypted_content"]
        );
    }

    #[test]
    fn reasoning_signed_elsewhere_is_never_sent_to_responses() {
        for provider in [Format::Anthropic, Format::Gemini] {
            let reasoning = Part::Reasoning(Reasoning {
                text: "thought".to_string(),
                signature: Some(Signature {
                    provider,
                    value: "sig".to_string(),
                }),
                redacted: false,
            });
            let request = Request {
                messages: vec![
                    Message::new(Role::User, vec![Part::text("hi")]),
                    Message::new(Role::Assistant, vec![reasoning, Part::text("hello")]),
                ],
                ..Request::default()
            };
            let options = WriteOptions {
                upstream_model: "m".to_string(),
                default_max_tokens: 4096,
                stream: false,
                ..WriteOptions::default()
            };
            let written = serde_json::to_value(write_request(&request, &options).unwrap()).unwrap();
            assert_eq!(
                written["input"][1],
                json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]})
            );
        }
    }

    #[test]
    fn reasoning_and_calls_of_one_turn_stay_one_assistant_message() {
        let body = json!({
            "input": [
                {"role": "user", "content": "go"},
                {"type": "reasoning", "summary": [], "encrypted_content": "e1"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "reasoning", "summary": [], "encrypted_content": "e2"},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "1"},
                {"type": "function_call_output", "call_id": "c2", "output": "2"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "b"}]}
            ]
        });
        let request = parse_request(&body).unwrap();
        let shape: Vec<(Role, usize)> = request
            .messages
            .iter()
            .map(|message| (message.role, message.parts.len()))
            .collect();
        assert_eq!(
            shape,
            [
                (Role::User, 1),
                (Role::Assistant, 4),
                (Role::Tool, 2),
                (Role::Assistant, 1),
                (Role::Assistant, 1)
            ]
        );
    }
}
