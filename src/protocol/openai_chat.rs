//! OpenAI Chat Completions to and from the IR: requests, responses, and stream chunks.
//!
//! Lossy choices, each deliberate:
//! - Requests written for a Chat upstream use `max_completion_tokens` (OpenAI reasoning models
//!   reject `max_tokens`), send developer messages as `system` (compatible servers often reject the
//!   `developer` role), drop reasoning from assistant history (Chat has no standard field for it)
//!   and always ask for `stream_options.include_usage` when streaming, which billing needs.
//! - A tool result flagged as an error gets an `Error: ` prefix, and images inside tool results
//!   move into a user message right after the tool messages.
//! - Only the first choice of a response or stream is converted (n>1 passes through only between
//!   identical formats).

use std::borrow::Cow;
use std::collections::HashMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::protocol::Format;
use crate::protocol::error::parse_upstream_error;
use crate::protocol::ir::{
    ConvertError, FinishReason, Media, MediaSource, Message, Part, Reasoning, ReasoningConfig,
    ReasoningEffort, Request, Response, ResponseFormat, ResponseMeta, Role, StreamEvent, TextPart,
    ToolCall, ToolChoice, JsonSchema, ToolDefinition, ToolResult, WriteOptions, join_borrowing, join_text, part_texts,
};
use crate::protocol::json::{AsFieldPath, FieldPath, element, object_of,
    field, index, insert_some, join, log_dropped_fields, object, opt_array, opt_bool, opt_f64,
    opt_i64, opt_str, opt_u64, req_str, string_or_parts,
};
use crate::protocol::sse::{SseEvent, write_event, write_json_event};
use crate::protocol::typed_read::{JsonObject, optional_borrowed_str};
use crate::protocol::usage::{Usage, usage_from_value};

/// Reads a Chat Completions request body.
pub fn parse_request(body: &Value) -> Result<Request, ConvertError> {
    object(body, "")?;
    let mut request = Request {
        model: opt_str(body, "model", "")?.unwrap_or_default().to_string(),
        ..Request::default()
    };
    let messages = opt_array(body, "messages", "")?
        .ok_or_else(|| ConvertError::new("messages", "is required"))?;
    // Tool messages do not repeat the tool's name, but Gemini needs it, so it is looked up here.
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (position, message) in messages.iter().enumerate() {
        let path = index("messages", position);
        request
            .messages
            .push(parse_message(message, &path, &mut call_names)?);
    }

    if let Some(tools) = opt_array(body, "tools", "")? {
        for (position, tool) in tools.iter().enumerate() {
            let path = index("tools", position);
            if let Some(definition) = parse_tool(tool, &path)? {
                request.tools.push(definition);
            }
        }
    }
    request.tool_choice = match field(body, "tool_choice") {
        None => None,
        Some(choice) => Some(parse_tool_choice(choice)?),
    };
    request.parallel_tool_calls = opt_bool(body, "parallel_tool_calls", "")?;
    // The newer field wins when a client sends both.
    request.max_tokens = match opt_u64(body, "max_completion_tokens", "")? {
        Some(limit) => Some(limit),
        None => opt_u64(body, "max_tokens", "")?,
    };
    request.temperature = opt_f64(body, "temperature", "")?;
    request.top_p = opt_f64(body, "top_p", "")?;
    request.seed = opt_i64(body, "seed", "")?;
    request.presence_penalty = opt_f64(body, "presence_penalty", "")?;
    request.frequency_penalty = opt_f64(body, "frequency_penalty", "")?;
    request.n = opt_u64(body, "n", "")?;
    request.stop = parse_stop(field(body, "stop"))?;
    if let Some(effort) = opt_str(body, "reasoning_effort", "")? {
        let effort = ReasoningEffort::from_name(effort)
            .ok_or_else(|| ConvertError::new("reasoning_effort", "unknown effort"))?;
        request.reasoning = Some(ReasoningConfig {
            effort: Some(effort),
            ..ReasoningConfig::default()
        });
    }
    request.response_format = match field(body, "response_format") {
        None => None,
        Some(format) => Some(parse_response_format(format)?),
    };
    request.stream = opt_bool(body, "stream", "")?.unwrap_or(false);
    if let Some(options) = field(body, "stream_options") {
        request.include_usage =
            opt_bool(options, "include_usage", "stream_options")?.unwrap_or(false);
    }
    request.verbosity = opt_str(body, "verbosity", "")?.map(str::to_string);
    // `safety_identifier` is the newer name for the end-user id.
    request.user = match opt_str(body, "user", "")? {
        Some(user) => Some(user.to_string()),
        None => opt_str(body, "safety_identifier", "")?.map(str::to_string),
    };
    request.metadata = match field(body, "metadata") {
        None => None,
        Some(metadata) => Some(object(metadata, "metadata")?.clone()),
    };
    // Audio output (`modalities`, `audio`), predicted outputs and the hosted web search only
    // exist at OpenAI; the rest steer OpenAI's storage, caching and scheduling. The answer comes
    // back as text either way, which every Chat client can read.
    log_dropped_fields(
        Format::OpenaiChat,
        body,
        &[
            "audio",
            "modalities",
            "prediction",
            "web_search_options",
            "store",
            "service_tier",
            "logit_bias",
            "logprobs",
            "top_logprobs",
            "prompt_cache_key",
            "prompt_cache_retention",
        ],
    );
    Ok(request)
}

fn parse_message(
    message: &Value,
    path: &FieldPath,
    call_names: &mut HashMap<String, String>,
) -> Result<Message, ConvertError> {
    object(message, path)?;
    let role = req_str(message, "role", path)?;
    let content_path = join(path, "content");
    let mut parsed = match role {
        "system" | "developer" => {
            let role = if role == "system" {
                Role::System
            } else {
                Role::Developer
            };
            Message::new(
                role,
                parse_content(field(message, "content"), &content_path)?,
            )
        }
        "user" => Message::new(
            Role::User,
            parse_content(field(message, "content"), &content_path)?,
        ),
        "assistant" => parse_assistant(message, path, call_names)?,
        "tool" => {
            let call_id = req_str(message, "tool_call_id", path)?.to_string();
            let content = parse_content(field(message, "content"), &content_path)?;
            let name = call_names.get(&call_id).cloned();
            let result = ToolResult {
                call_id,
                name,
                content,
                is_error: false,
            };
            Message::new(Role::Tool, vec![Part::ToolResult(result)])
        }
        _ => {
            return Err(ConvertError::new(
                join(path, "role"),
                format!("unsupported role {role:?}"),
            ));
        }
    };
    parsed.name = opt_str(message, "name", path)?.map(str::to_string);
    Ok(parsed)
}

fn parse_assistant(
    message: &Value,
    path: &FieldPath,
    call_names: &mut HashMap<String, String>,
) -> Result<Message, ConvertError> {
    let mut parts = Vec::new();
    // DeepSeek and most gateways echo reasoning back as `reasoning_content`.
    if let Some(reasoning) = opt_str(message, "reasoning_content", path)?
        && !reasoning.is_empty()
    {
        parts.push(Part::Reasoning(Reasoning {
            text: reasoning.to_string(),
            signature: None,
            redacted: false,
        }));
    }
    parts.extend(parse_content(
        field(message, "content"),
        &join(path, "content"),
    )?);
    if let Some(refusal) = opt_str(message, "refusal", path)?
        && !refusal.is_empty()
    {
        parts.push(Part::Refusal(refusal.to_string()));
    }
    // An earlier audio answer is referenced by an id that only OpenAI can resolve; its
    // transcript, when the client kept one, is in `content`.
    if field(message, "audio").is_some() {
        log::debug!("chat request: {path}.audio refers to audio stored at OpenAI; dropped");
    }
    if let Some(calls) = opt_array(message, "tool_calls", path)? {
        for (position, call) in calls.iter().enumerate() {
            let call_path = element(path, "tool_calls", position);
            let function = field(call, "function")
                .ok_or_else(|| ConvertError::new(join(&call_path, "function"), "is required"))?;
            let function_path = join(&call_path, "function");
            let id = req_str(call, "id", &call_path)?.to_string();
            let name = req_str(function, "name", &function_path)?.to_string();
            let arguments = match field(function, "arguments") {
                None => String::new(),
                Some(Value::String(arguments)) => arguments.clone(),
                // Some clients send the arguments as an object instead of a JSON string.
                Some(other) => other.to_string(),
            };
            call_names.insert(id.clone(), name.clone());
            parts.push(Part::ToolCall(ToolCall {
                id,
                name,
                arguments,
                signature: None,
            }));
        }
    }
    Ok(Message::new(Role::Assistant, parts))
}

/// Reads `content`: a string, null, or an array of parts.
fn parse_content(content: Option<&Value>, path: &FieldPath) -> Result<Vec<Part>, ConvertError> {
    string_or_parts(content, path, parse_content_part)
}

fn parse_content_part(part: &Value, path: &FieldPath) -> Result<Part, ConvertError> {
    object(part, path)?;
    let part_type = req_str(part, "type", path)?;
    match part_type {
        "text" => Ok(Part::Text(TextPart {
            text: req_str(part, "text", path)?.to_string(),
            cache_control: field(part, "cache_control").cloned(),
        })),
        "refusal" => Ok(Part::Refusal(req_str(part, "refusal", path)?.to_string())),
        "image_url" => {
            let image_path = join(path, "image_url");
            let image = field(part, "image_url")
                .ok_or_else(|| ConvertError::new(image_path, "is required"))?;
            // Some clients send the URL directly as a string.
            let (url, detail) = match image {
                Value::String(url) => (url.as_str(), None),
                _ => (
                    req_str(image, "url", &image_path)?,
                    opt_str(image, "detail", &image_path)?,
                ),
            };
            Ok(Part::Image(Media {
                source: MediaSource::from_url(url),
                detail: detail.map(str::to_string),
                filename: None,
            }))
        }
        "input_audio" => {
            let audio_path = join(path, "input_audio");
            let audio = field(part, "input_audio")
                .ok_or_else(|| ConvertError::new(audio_path, "is required"))?;
            Ok(Part::Audio {
                data: req_str(audio, "data", &audio_path)?.to_string(),
                format: req_str(audio, "format", &audio_path)?.to_string(),
            })
        }
        "file" => {
            let file_path = join(path, "file");
            let file =
                field(part, "file").ok_or_else(|| ConvertError::new(file_path, "is required"))?;
            let source = if let Some(data) = opt_str(file, "file_data", &file_path)? {
                match MediaSource::from_url(data) {
                    MediaSource::Url(_) => {
                        return Err(ConvertError::new(
                            join(&file_path, "file_data"),
                            "expected a base64 data URL",
                        ));
                    }
                    inline => inline,
                }
            } else if let Some(file_id) = opt_str(file, "file_id", &file_path)? {
                MediaSource::FileId(file_id.to_string())
            } else {
                return Err(ConvertError::new(file_path, "needs file_data or file_id"));
            };
            Ok(Part::Document(Media {
                source,
                detail: None,
                filename: opt_str(file, "filename", &file_path)?.map(str::to_string),
            }))
        }
        other => Err(ConvertError::new(
            join(path, "type"),
            format!("unsupported content part type {other:?}"),
        )),
    }
}

fn parse_tool(tool: &Value, path: &FieldPath) -> Result<Option<ToolDefinition>, ConvertError> {
    object(tool, path)?;
    // Only function tools have an equivalent in every format; others are dropped.
    if opt_str(tool, "type", path)?.is_some_and(|tool_type| tool_type != "function") {
        return Ok(None);
    }
    let function_path = join(path, "function");
    let function =
        field(tool, "function").ok_or_else(|| ConvertError::new(function_path, "is required"))?;
    Ok(Some(ToolDefinition {
        name: req_str(function, "name", &function_path)?.to_string(),
        description: opt_str(function, "description", &function_path)?.map(str::to_string),
        parameters: field(function, "parameters").map_or_else(JsonSchema::empty_object, JsonSchema::from_value),
        strict: opt_bool(function, "strict", &function_path)?,
    }))
}

/// Reads `stop`: one string or an array of them.
pub(crate) fn parse_stop(stop: Option<&Value>) -> Result<Vec<String>, ConvertError> {
    match stop {
        None => Ok(Vec::new()),
        Some(Value::String(stop)) => Ok(vec![stop.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(position, item)| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ConvertError::new(index("stop", position), "expected a string"))
            })
            .collect(),
        Some(_) => Err(ConvertError::new("stop", "expected a string or an array")),
    }
}

pub(crate) fn parse_tool_choice(choice: &Value) -> Result<ToolChoice, ConvertError> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(ConvertError::new(
                "tool_choice",
                format!("unknown mode {mode:?}"),
            )),
        },
        Value::Object(_) => {
            let function = field(choice, "function")
                .ok_or_else(|| ConvertError::new("tool_choice.function", "is required"))?;
            let name = req_str(function, "name", "tool_choice.function")?;
            Ok(ToolChoice::Named(name.to_string()))
        }
        _ => Err(ConvertError::new(
            "tool_choice",
            "expected a string or an object",
        )),
    }
}

pub(crate) fn parse_response_format(format: &Value) -> Result<ResponseFormat, ConvertError> {
    let path = "response_format";
    match req_str(format, "type", path)? {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let schema_path = join(path, "json_schema");
            let spec = field(format, "json_schema")
                .ok_or_else(|| ConvertError::new(schema_path, "is required"))?;
            Ok(ResponseFormat::JsonSchema {
                name: opt_str(spec, "name", &schema_path)?.map(str::to_string),
                description: opt_str(spec, "description", &schema_path)?.map(str::to_string),
                schema: field(spec, "schema").cloned().unwrap_or_else(|| json!({})),
                strict: opt_bool(spec, "strict", &schema_path)?,
            })
        }
        other => Err(ConvertError::new(
            join(path, "type"),
            format!("unknown type {other:?}"),
        )),
    }
}

/// A Chat Completions request body as it is written: the top level and the tools serialised
/// straight from the IR (a tool's schema by reference, not copied), like the response body
/// below. Fields are in alphabetical order, the order the sorted maps of `json!` wrote them in.
#[derive(Serialize)]
pub struct RequestOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u64>,
    messages: Vec<MessageOut<'request>>,
    model: &'request str,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'request [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptionsOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'request str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verbosity: Option<&'request str>,
}

#[derive(Serialize)]
struct StreamOptionsOut {
    include_usage: bool,
}

#[derive(Serialize)]
struct ToolOut<'request> {
    function: FunctionOut<'request>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct FunctionOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'request str>,
    name: &'request str,
    parameters: &'request RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

/// Writes a Chat Completions request body for an upstream.
pub fn write_request<'request>(
    request: &'request Request,
    options: &'request WriteOptions,
) -> Result<RequestOut<'request>, ConvertError> {
    let mut messages = Vec::new();
    for (position, message) in request.messages.iter().enumerate() {
        write_message(message, &index("messages", position), &mut messages)?;
    }
    let has_tools = !request.tools.is_empty();
    let effort = request
        .reasoning
        .as_ref()
        .and_then(ReasoningConfig::effective_effort)
        .filter(|effort| *effort != ReasoningEffort::None);
    Ok(RequestOut {
        frequency_penalty: request.frequency_penalty,
        max_completion_tokens: request.max_tokens,
        messages,
        model: &options.upstream_model,
        n: request.n,
        parallel_tool_calls: request.parallel_tool_calls.filter(|_| has_tools),
        presence_penalty: request.presence_penalty,
        reasoning_effort: effort.map(ReasoningEffort::as_str),
        response_format: request.response_format.as_ref().map(write_response_format),
        seed: request.seed,
        stop: &request.stop,
        stream: options.stream,
        stream_options: options.stream.then_some(StreamOptionsOut { include_usage: true }),
        temperature: request.temperature,
        tool_choice: request.tool_choice.as_ref().filter(|_| has_tools).map(write_tool_choice),
        tools: request.tools.iter().map(write_tool).collect(),
        top_p: request.top_p,
        user: request.user.as_deref(),
        verbosity: request.verbosity.as_deref(),
    })
}

/// One message of the conversation as Chat takes it. It borrows the IR's text wherever it can:
/// a long conversation's text is most of a request, and building a `Value` tree of it copied all
/// of it once more. Members are declared in alphabetical order, as a `Value` wrote them.
#[derive(Serialize)]
struct MessageOut<'message> {
    content: ContentOut<'message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'message str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'message str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'message>>,
}

impl<'message> MessageOut<'message> {
    fn new(role: &'static str, content: ContentOut<'message>) -> MessageOut<'message> {
        MessageOut { content, name: None, refusal: None, role, tool_call_id: None, tool_calls: Vec::new() }
    }
}

/// A message's `content`: null (an assistant turn of only tool calls), a string, or parts.
enum ContentOut<'message> {
    Null,
    Text(Cow<'message, str>),
    Parts(Vec<ContentPartOut<'message>>),
}

impl Serialize for ContentOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ContentOut::Null => serializer.serialize_unit(),
            ContentOut::Text(text) => serializer.serialize_str(text),
            ContentOut::Parts(parts) => parts.serialize(serializer),
        }
    }
}

/// One part of a user message's content array.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentPartOut<'message> {
    Text { text: &'message str },
    ImageUrl { image_url: ImageUrlOut<'message> },
    File { file: FileOut<'message> },
    InputAudio { input_audio: InputAudioOut<'message> },
}

#[derive(Serialize)]
struct ImageUrlOut<'message> {
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'message str>,
    url: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum FileOut<'message> {
    Id {
        file_id: &'message str,
    },
    Data {
        file_data: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        filename: Option<&'message str>,
    },
}

#[derive(Serialize)]
struct InputAudioOut<'message> {
    data: &'message str,
    format: &'message str,
}

fn write_message<'message>(
    message: &'message Message,
    path: &FieldPath,
    out: &mut Vec<MessageOut<'message>>,
) -> Result<(), ConvertError> {
    let name = message.name.as_deref();
    match message.role {
        Role::System | Role::Developer => {
            // System content is text only; one string is what every compatible server accepts.
            let content = join_borrowing(part_texts(&message.parts), "\n\n");
            out.push(MessageOut { name, ..MessageOut::new("system", ContentOut::Text(content)) });
        }
        // An empty user turn carries nothing, and OpenAI rejects empty content arrays.
        Role::User if message.parts.is_empty() => {}
        Role::User => {
            let content = write_content(&message.parts, path)?;
            out.push(MessageOut { name, ..MessageOut::new("user", content) });
        }
        Role::Assistant => {
            let turn = assistant_turn(&message.parts);
            out.push(MessageOut {
                name,
                refusal: Some(turn.refusal).filter(|refusal| !refusal.is_empty()),
                tool_calls: turn.tool_calls,
                ..MessageOut::new("assistant", turn.content.map_or(ContentOut::Null, |text| ContentOut::Text(Cow::Owned(text))))
            });
        }
        Role::Tool => {
            let mut images = Vec::new();
            for part in &message.parts {
                let Part::ToolResult(result) = part else {
                    continue;
                };
                let text = match (&result.content[..], result.is_error) {
                    (_, false) => result.text(),
                    (_, true) => Cow::Owned(format!("Error: {}", result.text())),
                };
                out.push(MessageOut {
                    tool_call_id: Some(&result.call_id),
                    ..MessageOut::new("tool", ContentOut::Text(text))
                });
                images.extend(result.content.iter().filter(|part| matches!(part, Part::Image(_))));
            }
            if !images.is_empty() {
                let content = write_content_parts(images, path)?;
                out.push(MessageOut::new("user", content));
            }
        }
    }
    Ok(())
}

/// The assistant's turn as Chat writes it, in history and in a response alike: its text (None,
/// written as null, when there is none beside tool calls), its tool calls and its refusal text.
struct AssistantTurn<'parts> {
    content: Option<String>,
    tool_calls: Vec<ToolCallOut<'parts>>,
    refusal: String,
}

fn assistant_turn(parts: &[Part]) -> AssistantTurn<'_> {
    let mut tool_calls = Vec::new();
    let mut refusal = String::new();
    for part in parts {
        match part {
            Part::ToolCall(call) => tool_calls.push(ToolCallOut::new(call)),
            Part::Refusal(text) => refusal.push_str(text),
            _ => {}
        }
    }
    let text = join_text(parts);
    let content = if text.is_empty() && !tool_calls.is_empty() { None } else { Some(text) };
    AssistantTurn { content, tool_calls, refusal }
}

/// Arguments as Chat clients expect them: a JSON string that always parses (an empty string from
/// an argument-less call becomes `{}`).
fn normalized_arguments(arguments: &str) -> &str {
    if arguments.trim().is_empty() { "{}" } else { arguments }
}

/// A single text part is written as a plain string, anything else as an array of parts.
fn write_content<'message>(parts: &'message [Part], path: &FieldPath) -> Result<ContentOut<'message>, ConvertError> {
    if let [Part::Text(text)] = parts {
        return Ok(ContentOut::Text(Cow::Borrowed(&text.text)));
    }
    write_content_parts(parts, path)
}

fn write_content_parts<'message>(
    parts: impl IntoIterator<Item = &'message Part>,
    path: &FieldPath,
) -> Result<ContentOut<'message>, ConvertError> {
    let mut written = Vec::new();
    for (position, part) in parts.into_iter().enumerate() {
        let part_path = element(path, "content", position);
        let written_part = match part {
            Part::Text(text) => ContentPartOut::Text { text: &text.text },
            Part::Image(media) => {
                let url = media.source.to_url().ok_or_else(|| {
                    ConvertError::new(
                        part_path,
                        "this image source is not supported by openai chat",
                    )
                })?;
                ContentPartOut::ImageUrl { image_url: ImageUrlOut { detail: media.detail.as_deref(), url } }
            }
            Part::Document(media) => match &media.source {
                MediaSource::Text(text) => ContentPartOut::Text { text },
                MediaSource::FileId(file_id) => ContentPartOut::File { file: FileOut::Id { file_id } },
                MediaSource::Base64 { .. } => ContentPartOut::File {
                    file: FileOut::Data { file_data: media.source.to_url(), filename: media.filename.as_deref() },
                },
                MediaSource::Url(_) => {
                    return Err(ConvertError::new(
                        part_path,
                        "document URLs are not supported by openai chat",
                    ));
                }
            },
            Part::Audio { data, format } => ContentPartOut::InputAudio { input_audio: InputAudioOut { data, format } },
            Part::Refusal(refusal) => ContentPartOut::Text { text: refusal },
            Part::ToolCall(_) | Part::ToolResult(_) | Part::Reasoning(_) => continue,
        };
        written.push(written_part);
    }
    Ok(ContentOut::Parts(written))
}

fn write_tool(tool: &ToolDefinition) -> ToolOut<'_> {
    ToolOut {
        function: FunctionOut {
            description: tool.description.as_deref(),
            name: &tool.name,
            parameters: tool.parameters.raw(),
            strict: tool.strict,
        },
        kind: "function",
    }
}

fn write_tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => "auto".into(),
        ToolChoice::None => "none".into(),
        ToolChoice::Required => "required".into(),
        ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

fn write_response_format(format: &ResponseFormat) -> Value {
    match format {
        ResponseFormat::Text => json!({"type": "text"}),
        ResponseFormat::JsonObject => json!({"type": "json_object"}),
        ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        } => {
            let mut spec = Map::new();
            // Chat requires a name; "response" is what OpenAI's SDKs use by default.
            spec.insert(
                "name".into(),
                name.clone().unwrap_or_else(|| "response".into()).into(),
            );
            insert_some(&mut spec, "description", description.clone());
            spec.insert("schema".into(), schema.clone());
            insert_some(&mut spec, "strict", *strict);
            object_of([("type", "json_schema".into()), ("json_schema", Value::Object(spec))])
        }
    }
}

/// Reads a Chat Completions response body (the first choice).
pub fn parse_response(body: &Value) -> Result<Response, ConvertError> {
    object(body, "")?;
    let choices = opt_array(body, "choices", "")?
        .ok_or_else(|| ConvertError::new("choices", "is required"))?;
    let choice = choices
        .first()
        .ok_or_else(|| ConvertError::new("choices", "is empty"))?;
    let message_path = "choices[0].message";
    let message =
        field(choice, "message").ok_or_else(|| ConvertError::new(message_path, "is required"))?;
    let mut call_names = HashMap::new();
    let mut parts = parse_assistant(message, &message_path.as_field_path(), &mut call_names)?.parts;
    // Some compatible servers call the reasoning field `reasoning`.
    if let Some(reasoning) = opt_str(message, "reasoning", message_path)?
        && !reasoning.is_empty()
        && !parts.iter().any(|part| matches!(part, Part::Reasoning(_)))
    {
        parts.insert(
            0,
            Part::Reasoning(Reasoning {
                text: reasoning.to_string(),
                signature: None,
                redacted: false,
            }),
        );
    }
    let has_tool_calls = parts.iter().any(|part| matches!(part, Part::ToolCall(_)));
    let finish_reason = finish_reason_from_chat(
        opt_str(choice, "finish_reason", "choices[0]")?.unwrap_or("stop"),
        has_tool_calls,
    );
    Ok(Response {
        id: opt_str(body, "id", "")?.unwrap_or_default().to_string(),
        model: opt_str(body, "model", "")?.unwrap_or_default().to_string(),
        parts,
        finish_reason,
        usage: field(body, "usage").and_then(|usage| usage_from_value(Format::OpenaiChat, usage)),
    })
}

/// Maps a Chat finish reason. Some compatible servers say `stop` after a tool call, and clients of
/// other formats need to know a call is waiting, so calls win.
pub(crate) fn finish_reason_from_chat(reason: &str, has_tool_calls: bool) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        _ if has_tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn finish_reason_to_chat(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Error => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// The Chat `usage` object. Fields are in alphabetical order, like every typed body written
/// here: the order the sorted maps of `json!` used, so clients get the same bytes either way.
#[derive(Serialize)]
struct UsageOut {
    completion_tokens: u64,
    completion_tokens_details: ReasoningTokensOut,
    prompt_tokens: u64,
    prompt_tokens_details: CachedTokensOut,
    total_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningTokensOut {
    reasoning_tokens: u64,
}

#[derive(Serialize)]
struct CachedTokensOut {
    cached_tokens: u64,
}

impl UsageOut {
    fn new(usage: &Usage) -> UsageOut {
        UsageOut {
            completion_tokens: usage.output_tokens,
            completion_tokens_details: ReasoningTokensOut { reasoning_tokens: usage.reasoning_tokens },
            prompt_tokens: usage.input_tokens,
            prompt_tokens_details: CachedTokensOut { cached_tokens: usage.cached_tokens },
            total_tokens: usage.total_tokens(),
        }
    }
}

/// A `chat.completion` body, serialised straight from the IR's strings: building it as a
/// `Value` tree first, then serialising and dropping the tree, cost more instructions than
/// reading the upstream's answer.
#[derive(Serialize)]
pub struct CompletionOut<'response> {
    choices: [CompletionChoiceOut<'response>; 1],
    created: i64,
    id: &'response str,
    model: &'response str,
    object: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct CompletionChoiceOut<'response> {
    finish_reason: &'static str,
    index: u32,
    logprobs: Option<()>,
    message: AssistantMessageOut<'response>,
}

/// The assistant's message of a response. `content` is null only beside tool calls; `refusal`
/// is always present (null without one), as OpenAI writes it.
#[derive(Serialize)]
struct AssistantMessageOut<'response> {
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    refusal: Option<String>,
    role: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'response>>,
}

#[derive(Serialize)]
struct ToolCallOut<'call> {
    function: FunctionCallOut<'call>,
    id: &'call str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct FunctionCallOut<'call> {
    arguments: &'call str,
    name: &'call str,
}

impl<'call> ToolCallOut<'call> {
    fn new(call: &'call ToolCall) -> ToolCallOut<'call> {
        ToolCallOut {
            function: FunctionCallOut {
                arguments: normalized_arguments(&call.arguments),
                name: &call.name,
            },
            id: &call.id,
            kind: "function",
        }
    }
}

/// Writes a Chat Completions response body for a client.
pub fn write_response<'response>(response: &'response Response, meta: &'response ResponseMeta) -> CompletionOut<'response> {
    let turn = assistant_turn(&response.parts);
    let reasoning: String = response
        .parts
        .iter()
        .filter_map(|part| match part {
            Part::Reasoning(reasoning) => Some(reasoning.text.as_str()),
            _ => None,
        })
        .collect();
    CompletionOut {
        choices: [CompletionChoiceOut {
            finish_reason: finish_reason_to_chat(response.finish_reason),
            index: 0,
            logprobs: None,
            message: AssistantMessageOut {
                content: turn.content,
                reasoning_content: Some(reasoning).filter(|text| !text.is_empty()),
                refusal: Some(turn.refusal).filter(|text| !text.is_empty()),
                role: "assistant",
                tool_calls: turn.tool_calls,
            },
        }],
        created: meta.created_unix,
        id: non_empty_or(&response.id, &meta.id),
        model: non_empty_or(&response.model, &meta.model),
        object: "chat.completion",
        usage: response.usage.as_ref().map(UsageOut::new),
    }
}

fn non_empty_or<'a>(value: &'a str, fallback: &'a str) -> &'a str {
    if value.is_empty() { fallback } else { value }
}

/// One tool call being streamed by the upstream.
struct ToolSlot {
    chat_index: u64,
    id: String,
    has_arguments: bool,
    ended: bool,
}

/// Turns a Chat Completions upstream stream into IR events.
#[derive(Default)]
pub struct StreamDecoder {
    started: bool,
    chunk_id: String,
    /// Indexed by IR tool index.
    tools: Vec<ToolSlot>,
    finished: bool,
    saw_done: bool,
    failed: bool,
    /// Every event through the general path, for checks that the fast path reads alike
    /// (`with_general_path_only`).
    general_path_only: bool,
}

/// A chunk as `StreamDecoder::fast_text_chunk` reads it: text borrowed where no escape forces a
/// copy, and only the presence of what sends a chunk down the general path.
#[derive(Deserialize)]
struct TextChunkIn<'chunk> {
    #[serde(borrow, default)]
    choices: Vec<TextChoiceIn<'chunk>>,
    #[serde(default)]
    usage: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct TextChoiceIn<'chunk> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<TextDeltaIn<'chunk>>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct TextDeltaIn<'chunk> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    content: Option<Cow<'chunk, str>>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    refusal: Option<Cow<'chunk, str>>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    reasoning_content: Option<Cow<'chunk, str>>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    reasoning: Option<Cow<'chunk, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<JsonObject<ToolCallDeltaIn<'chunk>>>>,
}

/// A piece of a streamed tool call: its start (id, name) or a piece of its arguments.
#[derive(Deserialize)]
struct ToolCallDeltaIn<'chunk> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    id: Option<Cow<'chunk, str>>,
    #[serde(borrow, default)]
    function: Option<JsonObject<FunctionDeltaIn<'chunk>>>,
}

#[derive(Deserialize)]
struct FunctionDeltaIn<'chunk> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    name: Option<Cow<'chunk, str>>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    arguments: Option<Cow<'chunk, str>>,
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

    /// Decodes one upstream event.
    pub fn push(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        let data = event.data.trim();
        if data.is_empty() || self.failed {
            return Ok(());
        }
        if data == "[DONE]" {
            self.saw_done = true;
            return Ok(());
        }
        if self.started && !self.general_path_only && self.fast_text_chunk(data, out) {
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|error| ConvertError::new("stream", format!("invalid chunk JSON: {error}")))?;
        if field(&chunk, "error").is_some() {
            let info = parse_upstream_error(Format::OpenaiChat, 500, data.as_bytes());
            out.push(StreamEvent::Error {
                kind: info.kind,
                message: info.message,
            });
            self.failed = true;
            return Ok(());
        }
        if !self.started {
            self.started = true;
            self.chunk_id = opt_str(&chunk, "id", "")?.unwrap_or_default().to_string();
            out.push(StreamEvent::Start {
                id: self.chunk_id.clone(),
                model: opt_str(&chunk, "model", "")?
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        for (position, choice) in opt_array(&chunk, "choices", "")?
            .into_iter()
            .flatten()
            .enumerate()
        {
            let choice_index = opt_u64(choice, "index", "")?.unwrap_or(position as u64);
            if choice_index != 0 {
                continue;
            }
            self.decode_choice(choice, out)?;
        }
        if let Some(usage) =
            field(&chunk, "usage").and_then(|usage| usage_from_value(Format::OpenaiChat, usage))
        {
            out.push(StreamEvent::Usage(usage));
        }
        Ok(())
    }

    /// Most chunks after the first carry one piece of text or of a tool call's arguments: they are
    /// read into borrowed fields instead of a `Value` (which cost more than everything else done
    /// per token). Returns false for anything else (a finish reason, usage, errors, other
    /// choices, a field of the wrong type); the general path then reads the chunk, with its
    /// precise errors.
    fn fast_text_chunk(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> bool {
        let Ok(chunk) = serde_json::from_str::<TextChunkIn<'_>>(data) else {
            return false;
        };
        if chunk.error.is_some() || chunk.usage.is_some() || chunk.choices.len() > 1 {
            return false;
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return true;
        };
        if choice.index.unwrap_or(0) != 0 || choice.finish_reason.is_some() {
            return false;
        }
        let Some(delta) = choice.delta else {
            return true;
        };
        if let Some(text) = [&delta.reasoning_content, &delta.reasoning].into_iter().flatten().find(|text| !text.is_empty()) {
            out.push(StreamEvent::ReasoningDelta(text.to_string()));
        }
        for text in [&delta.content, &delta.refusal].into_iter().flatten() {
            if !text.is_empty() {
                out.push(StreamEvent::TextDelta(text.to_string()));
            }
        }
        // Agents stream long tool arguments, a chunk per few characters.
        for (position, JsonObject(call)) in delta.tool_calls.into_iter().flatten().enumerate() {
            let function = call.function.map(|JsonObject(function)| function);
            let (name, arguments) = function.as_ref().map_or((None, None), |function| (function.name.as_deref(), function.arguments.as_deref()));
            self.apply_tool_call_delta(call.index.unwrap_or(position as u64), call.id.as_deref(), name, arguments, out);
        }
        true
    }

    fn decode_choice(
        &mut self,
        choice: &Value,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        if let Some(delta) = field(choice, "delta") {
            for key in ["reasoning_content", "reasoning"] {
                if let Some(text) = opt_str(delta, key, "delta")?
                    && !text.is_empty()
                {
                    out.push(StreamEvent::ReasoningDelta(text.to_string()));
                    break;
                }
            }
            for key in ["content", "refusal"] {
                if let Some(text) = opt_str(delta, key, "delta")?
                    && !text.is_empty()
                {
                    out.push(StreamEvent::TextDelta(text.to_string()));
                }
            }
            if let Some(calls) = opt_array(delta, "tool_calls", "delta")? {
                for (position, call) in calls.iter().enumerate() {
                    self.decode_tool_call(call, position as u64, out)?;
                }
            }
        }
        if let Some(reason) = opt_str(choice, "finish_reason", "choice")? {
            self.end_tools(out);
            out.push(StreamEvent::Finish {
                reason: finish_reason_from_chat(reason, !self.tools.is_empty()),
            });
            self.finished = true;
        }
        Ok(())
    }

    fn decode_tool_call(
        &mut self,
        call: &Value,
        position: u64,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        let chat_index = opt_u64(call, "index", "delta.tool_calls")?.unwrap_or(position);
        let id = opt_str(call, "id", "delta.tool_calls")?;
        let function = field(call, "function");
        let name = match function {
            Some(function) => opt_str(function, "name", "delta.tool_calls.function")?,
            None => None,
        };
        let arguments = match function {
            Some(function) => opt_str(function, "arguments", "delta.tool_calls.function")?,
            None => None,
        };
        self.apply_tool_call_delta(chat_index, id, name, arguments, out);
        Ok(())
    }

    /// Applies one piece of a streamed call at the client's `chat_index`: a new id (or a new
    /// index) starts a call, arguments continue the current one.
    fn apply_tool_call_delta(
        &mut self,
        chat_index: u64,
        id: Option<&str>,
        name: Option<&str>,
        arguments: Option<&str>,
        out: &mut Vec<StreamEvent>,
    ) {
        let id = id.filter(|id| !id.is_empty());
        let current = self
            .tools
            .iter()
            .rposition(|slot| slot.chat_index == chat_index && !slot.ended);
        // A new id on a known index is a new call: some compatible servers number every call 0.
        let is_new = match (current, id) {
            (None, _) => true,
            (Some(slot), Some(id)) => self.tools[slot].id != id,
            (Some(_), None) => false,
        };
        let slot = if is_new {
            if let Some(replaced) = current {
                // The call this one replaces at the same index is complete.
                self.end_tool(replaced, out);
            }
            let ir_index = self.tools.len();
            let id = match id {
                Some(id) => id.to_string(),
                None => format!("call_{}_{ir_index}", self.chunk_id),
            };
            out.push(StreamEvent::ToolCallStart {
                index: ir_index,
                id: id.clone(),
                name: name.unwrap_or_default().to_string(),
            });
            self.tools.push(ToolSlot {
                chat_index,
                id,
                has_arguments: false,
                ended: false,
            });
            ir_index
        } else {
            current.unwrap_or_default()
        };
        if let Some(arguments) = arguments
            && !arguments.is_empty()
        {
            self.tools[slot].has_arguments = true;
            out.push(StreamEvent::ToolCallArgsDelta {
                index: slot,
                fragment: arguments.to_string(),
            });
        }
    }

    fn end_tools(&mut self, out: &mut Vec<StreamEvent>) {
        for ir_index in 0..self.tools.len() {
            self.end_tool(ir_index, out);
        }
    }

    /// Closes one call; a call that never got arguments gets `{}` so that it stays valid JSON.
    fn end_tool(&mut self, ir_index: usize, out: &mut Vec<StreamEvent>) {
        let slot = &mut self.tools[ir_index];
        if slot.ended {
            return;
        }
        if !slot.has_arguments {
            out.push(StreamEvent::ToolCallArgsDelta {
                index: ir_index,
                fragment: "{}".to_string(),
            });
        }
        out.push(StreamEvent::ToolCallEnd { index: ir_index });
        slot.ended = true;
    }

    /// Ends the stream. A stream that stopped without a finish reason or `[DONE]` was cut off,
    /// which the client must learn as an error rather than as a short success.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ConvertError> {
        if self.finished || self.failed {
            return Ok(());
        }
        if self.saw_done && self.started {
            self.end_tools(out);
            let reason = if self.tools.is_empty() {
                FinishReason::Stop
            } else {
                FinishReason::ToolCalls
            };
            out.push(StreamEvent::Finish { reason });
            return Ok(());
        }
        out.push(StreamEvent::Error {
            kind: crate::protocol::error::ErrorKind::Upstream,
            message: "upstream stream ended before it finished".to_string(),
        });
        Ok(())
    }
}

/// Writes IR events as a Chat Completions stream for a client.
pub struct StreamEncoder {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    role_sent: bool,
    usage: Option<Usage>,
    failed: bool,
    /// What follows the delta in every chunk without a finish reason, serialised once per stream
    /// (and again if the upstream's start renames it): the choice's other members, the id, the
    /// model and the object type. Written afresh for each token, these cost more than the delta.
    unfinished_chunk_tail: Option<Vec<u8>>,
}

impl StreamEncoder {
    /// `include_usage`: the client asked for the trailing usage chunk.
    pub fn new(meta: &ResponseMeta, include_usage: bool) -> StreamEncoder {
        StreamEncoder {
            id: meta.id.clone(),
            model: meta.model.clone(),
            created: meta.created_unix,
            include_usage,
            role_sent: false,
            usage: None,
            failed: false,
            unfinished_chunk_tail: None,
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
                self.unfinished_chunk_tail = None;
                self.ensure_role(out);
            }
            StreamEvent::TextDelta(text) => self.delta(&ContentDelta { content: text }, out),
            StreamEvent::ReasoningDelta(text) => self.delta(&ReasoningContentDelta { reasoning_content: text }, out),
            StreamEvent::ReasoningSignature { .. } | StreamEvent::ToolCallEnd { .. } => {}
            StreamEvent::ToolCallStart { index, id, name } => self.delta(
                &ToolCallsDelta {
                    tool_calls: [ToolCallDelta {
                        function: FunctionDelta { arguments: "", name: Some(name) },
                        id: Some(id),
                        index: *index,
                        kind: Some("function"),
                    }],
                },
                out,
            ),
            StreamEvent::ToolCallArgsDelta { index, fragment } => self.delta(
                &ToolCallsDelta {
                    tool_calls: [ToolCallDelta {
                        function: FunctionDelta { arguments: fragment, name: None },
                        id: None,
                        index: *index,
                        kind: None,
                    }],
                },
                out,
            ),
            StreamEvent::Finish { reason } => {
                self.ensure_role(out);
                self.write_chunk(&json!({}), Some(finish_reason_to_chat(*reason)), out);
            }
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
            StreamEvent::Error { kind, message } => {
                out.extend(crate::protocol::error::render_stream_error(
                    Format::OpenaiChat,
                    *kind,
                    message,
                ));
                self.failed = true;
            }
        }
    }

    /// Writes the usage chunk (if the client asked for it) and `[DONE]`. After an error there is
    /// no `[DONE]`, as with OpenAI itself.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.failed {
            return;
        }
        if self.include_usage
            && let Some(usage) = self.usage
        {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": UsageOut::new(&usage),
            });
            write_json_event(out, None, &chunk);
        }
        write_event(out, None, "[DONE]");
    }

    fn ensure_role(&mut self, out: &mut Vec<u8>) {
        if self.role_sent {
            return;
        }
        self.role_sent = true;
        self.write_chunk(&json!({"role": "assistant", "content": ""}), None, out);
    }

    fn delta(&mut self, delta: &impl Serialize, out: &mut Vec<u8>) {
        self.ensure_role(out);
        self.write_chunk(delta, None, out);
    }

    /// One chunk event. Serialised from borrowed parts rather than built as a `Value`: this runs
    /// for every streamed token, and the map it built cost more than the rest of the event.
    fn write_chunk(&mut self, delta: &impl Serialize, finish_reason: Option<&str>, out: &mut Vec<u8>) {
        if finish_reason.is_some() {
            write_json_event(out, None, &self.chunk(delta, finish_reason));
            return;
        }
        // The members are in alphabetical order with the delta first, so a token's chunk is a
        // fixed head, the delta, and this stream's fixed tail.
        if self.unfinished_chunk_tail.is_none() {
            let whole = serde_json::to_vec(&self.chunk(&(), None)).expect("a chunk serialises into memory");
            debug_assert!(whole.starts_with(UNFINISHED_CHUNK_HEAD));
            self.unfinished_chunk_tail = Some(whole[UNFINISHED_CHUNK_HEAD.len() + b"null".len()..].to_vec());
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(UNFINISHED_CHUNK_HEAD);
        serde_json::to_writer(&mut *out, delta).expect("a delta serialises into memory");
        out.extend_from_slice(self.unfinished_chunk_tail.as_deref().expect("the tail was written just above"));
        out.extend_from_slice(b"\n\n");
    }

    /// This stream's chunk with one choice carrying `delta`.
    fn chunk<'chunk, Delta: Serialize>(&'chunk self, delta: &'chunk Delta, finish_reason: Option<&'chunk str>) -> ChunkOut<'chunk, Delta> {
        ChunkOut {
            choices: [ChoiceOut { delta, finish_reason, index: 0, logprobs: None }],
            created: self.created,
            id: &self.id,
            model: &self.model,
            object: "chat.completion.chunk",
        }
    }
}

/// What every chunk's JSON starts with, up to its delta.
const UNFINISHED_CHUNK_HEAD: &[u8] = b"{\"choices\":[{\"delta\":";

/// A `chat.completion.chunk` with one choice. Fields are in alphabetical order, the order the
/// sorted map of `json!` wrote them in, so the bytes clients get did not change.
#[derive(Serialize)]
struct ChunkOut<'chunk, Delta: Serialize> {
    choices: [ChoiceOut<'chunk, Delta>; 1],
    created: i64,
    id: &'chunk str,
    model: &'chunk str,
    object: &'static str,
}

#[derive(Serialize)]
struct ChoiceOut<'chunk, Delta: Serialize> {
    delta: &'chunk Delta,
    finish_reason: Option<&'chunk str>,
    index: u32,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct ContentDelta<'text> {
    content: &'text str,
}

#[derive(Serialize)]
struct ReasoningContentDelta<'text> {
    reasoning_content: &'text str,
}

/// A tool call's start or a piece of its arguments, members in alphabetical order like the rest.
#[derive(Serialize)]
struct ToolCallsDelta<'call> {
    tool_calls: [ToolCallDelta<'call>; 1],
}

#[derive(Serialize)]
struct ToolCallDelta<'call> {
    function: FunctionDelta<'call>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'call str>,
    index: usize,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
}

#[derive(Serialize)]
struct FunctionDelta<'call> {
    arguments: &'call str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'call str>,
}

#[cfg(test)]
mod tests {
    use crate::protocol::ir::{FinishReason, StreamEvent};
    use crate::protocol::openai_chat::StreamDecoder;
    use crate::protocol::sse::SseEvent;
    use crate::protocol::testkit;

    #[test]
    fn chunks_keep_the_bytes_of_a_sorted_json_map() {
        use crate::protocol::ir::ResponseMeta;
        let meta = ResponseMeta { id: "chatcmpl-1".to_string(), model: "m".to_string(), created_unix: 7, custom_tools: Vec::new() };
        let mut encoder = super::StreamEncoder::new(&meta, false);
        let mut out = Vec::new();
        encoder.encode(&StreamEvent::TextDelta("hi \"you\"".to_string()), &mut out);
        encoder.encode(&StreamEvent::ToolCallStart { index: 0, id: "call_1".to_string(), name: "f".to_string() }, &mut out);
        encoder.encode(&StreamEvent::ToolCallArgsDelta { index: 0, fragment: "{\"a\":".to_string() }, &mut out);
        encoder.encode(&StreamEvent::Start { id: "chatcmpl-2".to_string(), model: "n".to_string() }, &mut out);
        encoder.encode(&StreamEvent::ToolCallArgsDelta { index: 0, fragment: "1}".to_string() }, &mut out);
        encoder.encode(&StreamEvent::Finish { reason: FinishReason::Stop }, &mut out);
        let expected = [
            serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]}),
            serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                "choices": [{"index": 0, "delta": {"content": "hi \"you\""}, "logprobs": null, "finish_reason": null}]}),
            serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "f", "arguments": ""}}]}, "logprobs": null, "finish_reason": null}]}),
            serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]},
                    "logprobs": null, "finish_reason": null}]}),
            // An upstream that names the stream late renames every chunk after it.
            serde_json::json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 7, "model": "n",
                "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]},
                    "logprobs": null, "finish_reason": null}]}),
            serde_json::json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 7, "model": "n",
                "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]}),
        ]
        .iter()
        .map(|chunk| format!("data: {chunk}\n\n"))
        .collect::<String>();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    fn decode(events: &[SseEvent]) -> Vec<StreamEvent> {
        let mut decoder = StreamDecoder::new();
        let mut out = Vec::new();
        for event in events {
            decoder.push(event, &mut out).expect("chunk decodes");
        }
        decoder.finish(&mut out).expect("stream ends");
        out
    }

    fn recorded(name: &str) -> Vec<StreamEvent> {
        decode(&testkit::parse_pieces(&[&testkit::stream_bytes(name)]))
    }

    /// The arguments of each tool call, joined, by IR index.
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

    /// The fast path for text and tool-call chunks decodes them as the general path does. A
    /// chunk with `"error": null` goes down the general path (the fast path stops at any error
    /// member) and means the same there, so each recorded stream is decoded both ways.
    #[test]
    fn fast_chunks_decode_as_the_general_path_does() {
        let mut streams_with_calls = 0;
        for name in testkit::all_streams().into_iter().filter(|name| name.starts_with("openai-chat/")) {
            let events = testkit::parse_pieces(&[&testkit::stream_bytes(&name)]);
            let general: Vec<SseEvent> = events
                .iter()
                .map(|event| {
                    let mut event = event.clone();
                    if let Some(rest) = event.data.trim().strip_prefix('{') {
                        event.data = format!("{{\"error\":null,{rest}");
                    }
                    event
                })
                .collect();
            let fast = decode(&events);
            assert_eq!(fast, decode(&general), "{name}");
            streams_with_calls += usize::from(fast.iter().any(|event| matches!(event, StreamEvent::ToolCallArgsDelta { .. })));
        }
        assert!(streams_with_calls >= 2, "the recorded streams call tools in {streams_with_calls}");
    }

    #[test]
    fn recorded_streams_decode_the_same_however_they_are_split() {
        let names: Vec<String> = testkit::all_streams()
            .into_iter()
            .filter(|name| name.starts_with("openai-chat/"))
            .collect();
        assert_eq!(names.len(), 8);
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
            assert!(
                !whole
                    .iter()
                    .any(|event| matches!(event, StreamEvent::Error { .. })),
                "{name}: error"
            );
            testkit::assert_split_decoding_matches(name, &bytes, &whole, 100, decode);
        }
    }

    #[test]
    fn tool_call_arguments_join_to_the_recorded_json() {
        let events = recorded("openai-chat/tool-call-stream.sse");
        let calls = joined_calls(&events);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1, "get_weather");
        assert_eq!(calls[0].2, r#"{"city":"New York City"}"#);
        assert!(events.contains(&StreamEvent::Finish {
            reason: FinishReason::ToolCalls
        }));
    }

    #[test]
    fn parallel_tool_calls_stay_separate() {
        let calls = joined_calls(&recorded("openai-chat/parallel-tool-calls-stream.sse"));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].0, "call_JMW1whyEaYG438VE1OIflxA2");
        assert_eq!(calls[1].0, "call_DNYTawLBoN8fj3KN6qU9N1Ou");
        for (_, _, arguments) in &calls {
            serde_json::from_str::<serde_json::Value>(arguments).expect("arguments are JSON");
        }
    }

    #[test]
    fn deepseek_reasoning_comes_before_the_tool_call() {
        let events = recorded("openai-chat/deepseek-reasoning-tool-call-stream.chunks.txt");
        let first_reasoning = events
            .iter()
            .position(|event| matches!(event, StreamEvent::ReasoningDelta(_)))
            .expect("reasoning");
        let first_call = events
            .iter()
            .position(|event| matches!(event, StreamEvent::ToolCallStart { .. }))
            .expect("tool call");
        assert!(first_reasoning < first_call);
        let usage = events.iter().rev().find_map(|event| match event {
            StreamEvent::Usage(usage) => Some(*usage),
            _ => None,
        });
        assert_eq!(usage.map(|usage| usage.cached_tokens), Some(320));
    }

    #[test]
    fn length_and_obfuscated_streams() {
        let length = recorded("openai-chat/length-finish-stream.sse");
        assert!(length.contains(&StreamEvent::Finish {
            reason: FinishReason::Length
        }));
        let obfuscated = recorded("openai-chat/text-stream-obfuscation.chunks.txt");
        let usages = obfuscated
            .iter()
            .filter(|event| matches!(event, StreamEvent::Usage(_)))
            .count();
        assert_eq!(usages, 1, "usage only from the final chunk");
    }
}
