//! Reads OpenAI Chat Completions requests and responses from their bytes into the IR (see
//! `typed_read`); the rules are `openai_chat::parse_request`'s and `parse_response`'s.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::protocol::ir::{
    Media, MediaSource, Message, Part, Reasoning, ReasoningConfig, ReasoningEffort, Request, Response, Role,
    TextPart, ToolCall, JsonSchema, ToolDefinition, ToolResult,
};
use crate::protocol::openai_chat::{finish_reason_from_chat, parse_response_format, parse_stop, parse_tool_choice};
use crate::protocol::usage::ChatUsage;
use crate::protocol::typed_read::{JsonObject, TextOrList, TextOrObject, optional_borrowed_str, read_body};

#[derive(Deserialize)]
struct RequestIn<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    messages: Option<Vec<JsonObject<MessageIn<'a>>>>,
    #[serde(borrow)]
    tools: Option<Vec<JsonObject<ToolIn<'a>>>>,
    // The members below are small and rare; they are read as `Value`s by the `Value` reader's
    // own functions.
    tool_choice: Option<Value>,
    stop: Option<Value>,
    response_format: Option<Value>,
    parallel_tool_calls: Option<bool>,
    max_completion_tokens: Option<u64>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    n: Option<u64>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    reasoning_effort: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<JsonObject<StreamOptionsIn>>,
    verbosity: Option<String>,
    user: Option<String>,
    safety_identifier: Option<String>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct StreamOptionsIn {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<TextOrList<JsonObject<PartIn<'a>>>>,
    name: Option<String>,
    tool_call_id: Option<String>,
    reasoning_content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<JsonObject<ToolCallIn>>>,
}

#[derive(Deserialize)]
struct PartIn<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "optional_borrowed_str")]
    kind: Option<Cow<'a, str>>,
    text: Option<String>,
    cache_control: Option<Value>,
    refusal: Option<String>,
    #[serde(borrow)]
    image_url: Option<TextOrObject<'a, ImageUrlIn<'a>>>,
    input_audio: Option<JsonObject<AudioIn>>,
    #[serde(borrow)]
    file: Option<JsonObject<FileIn<'a>>>,
}

#[derive(Deserialize)]
struct ImageUrlIn<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    url: Option<Cow<'a, str>>,
    detail: Option<String>,
}

#[derive(Deserialize)]
struct AudioIn {
    data: Option<String>,
    format: Option<String>,
}

#[derive(Deserialize)]
struct FileIn<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    file_data: Option<Cow<'a, str>>,
    file_id: Option<String>,
    filename: Option<String>,
}

#[derive(Deserialize)]
struct ToolCallIn {
    id: Option<String>,
    function: Option<JsonObject<FunctionCallIn>>,
}

#[derive(Deserialize)]
struct FunctionCallIn {
    name: Option<String>,
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "optional_borrowed_str")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<JsonObject<FunctionIn<'a>>>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    name: Option<String>,
    description: Option<String>,
    #[serde(borrow)]
    parameters: Option<&'a RawValue>,
    strict: Option<bool>,
}

/// Reads a Chat Completions request, or `None` when `openai_chat::parse_request` must.
pub fn read_request(body: &[u8]) -> Option<Request> {
    let body: RequestIn = read_body(body)?;
    let mut request = Request {
        model: body.model.map(Cow::into_owned).unwrap_or_default(),
        ..Request::default()
    };
    // Tool messages do not repeat the tool's name, but Gemini needs it, so it is looked up here.
    let mut call_names: HashMap<String, String> = HashMap::new();
    for JsonObject(message) in body.messages? {
        request.messages.push(read_message(message, &mut call_names)?);
    }
    for JsonObject(tool) in body.tools.into_iter().flatten() {
        if tool.kind.as_deref().is_some_and(|kind| kind != "function") {
            continue;
        }
        let JsonObject(function) = tool.function?;
        request.tools.push(ToolDefinition {
            name: function.name?,
            description: function.description,
            parameters: function.parameters.map_or_else(JsonSchema::empty_object, JsonSchema::from_raw),
            strict: function.strict,
        });
    }
    request.tool_choice = match &body.tool_choice {
        None => None,
        Some(choice) => Some(parse_tool_choice(choice).ok()?),
    };
    request.parallel_tool_calls = body.parallel_tool_calls;
    request.max_tokens = body.max_completion_tokens.or(body.max_tokens);
    request.temperature = body.temperature;
    request.top_p = body.top_p;
    request.seed = body.seed;
    request.presence_penalty = body.presence_penalty;
    request.frequency_penalty = body.frequency_penalty;
    request.n = body.n;
    request.stop = parse_stop(body.stop.as_ref()).ok()?;
    if let Some(effort) = body.reasoning_effort {
        request.reasoning = Some(ReasoningConfig {
            effort: Some(ReasoningEffort::from_name(&effort)?),
            ..ReasoningConfig::default()
        });
    }
    request.response_format = match &body.response_format {
        None => None,
        Some(format) => Some(parse_response_format(format).ok()?),
    };
    request.stream = body.stream.unwrap_or(false);
    request.include_usage = body.stream_options.and_then(|JsonObject(options)| options.include_usage).unwrap_or(false);
    request.verbosity = body.verbosity;
    request.user = body.user.or(body.safety_identifier);
    request.metadata = body.metadata;
    Some(request)
}

fn read_message(message: MessageIn, call_names: &mut HashMap<String, String>) -> Option<Message> {
    let mut read = match message.role?.as_ref() {
        "system" => Message::new(Role::System, read_content(message.content)?),
        "developer" => Message::new(Role::Developer, read_content(message.content)?),
        "user" => Message::new(Role::User, read_content(message.content)?),
        "assistant" => Message::new(Role::Assistant, read_assistant_parts(message.reasoning_content, message.content, message.refusal, message.tool_calls, call_names)?),
        "tool" => {
            let call_id = message.tool_call_id?;
            let content = read_content(message.content)?;
            let name = call_names.get(&call_id).cloned();
            Message::new(Role::Tool, vec![Part::ToolResult(ToolResult { call_id, name, content, is_error: false })])
        }
        _ => return None,
    };
    read.name = message.name;
    Some(read)
}

/// An assistant turn's parts, in a request's history or a response: reasoning, content, refusal
/// and tool calls, as `openai_chat::parse_assistant` orders them.
fn read_assistant_parts(
    reasoning: Option<String>,
    content: Option<TextOrList<JsonObject<PartIn>>>,
    refusal: Option<String>,
    tool_calls: Option<Vec<JsonObject<ToolCallIn>>>,
    call_names: &mut HashMap<String, String>,
) -> Option<Vec<Part>> {
    let mut parts = Vec::new();
    if let Some(reasoning) = reasoning.filter(|reasoning| !reasoning.is_empty()) {
        parts.push(Part::Reasoning(Reasoning { text: reasoning, signature: None, redacted: false }));
    }
    parts.extend(read_content(content)?);
    if let Some(refusal) = refusal.filter(|refusal| !refusal.is_empty()) {
        parts.push(Part::Refusal(refusal));
    }
    for JsonObject(call) in tool_calls.into_iter().flatten() {
        let JsonObject(function) = call.function?;
        let id = call.id?;
        let name = function.name?;
        let arguments = match function.arguments {
            None => String::new(),
            Some(Value::String(arguments)) => arguments,
            Some(other) => other.to_string(),
        };
        call_names.insert(id.clone(), name.clone());
        parts.push(Part::ToolCall(ToolCall { id, name, arguments, signature: None }));
    }
    Some(parts)
}

#[derive(Deserialize)]
struct CompletionIn<'a> {
    id: Option<String>,
    model: Option<String>,
    #[serde(borrow)]
    choices: Option<Vec<JsonObject<ChoiceIn<'a>>>>,
    usage: Option<JsonObject<ChatUsage>>,
}

#[derive(Deserialize)]
struct ChoiceIn<'a> {
    #[serde(borrow)]
    message: Option<JsonObject<ResponseMessageIn<'a>>>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResponseMessageIn<'a> {
    #[serde(borrow)]
    content: Option<TextOrList<JsonObject<PartIn<'a>>>>,
    reasoning_content: Option<String>,
    /// What some compatible servers call `reasoning_content`.
    reasoning: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<JsonObject<ToolCallIn>>>,
}

/// Reads a `chat.completion` body (its first choice), or `None` when
/// `openai_chat::parse_response` must.
pub fn read_response(body: &[u8]) -> Option<Response> {
    let body: CompletionIn = read_body(body)?;
    let JsonObject(choice) = body.choices?.into_iter().next()?;
    let JsonObject(message) = choice.message?;
    let mut parts =
        read_assistant_parts(message.reasoning_content, message.content, message.refusal, message.tool_calls, &mut HashMap::new())?;
    if let Some(reasoning) = message.reasoning.filter(|reasoning| !reasoning.is_empty())
        && !parts.iter().any(|part| matches!(part, Part::Reasoning(_)))
    {
        parts.insert(0, Part::Reasoning(Reasoning { text: reasoning, signature: None, redacted: false }));
    }
    let has_tool_calls = parts.iter().any(|part| matches!(part, Part::ToolCall(_)));
    Some(Response {
        id: body.id.unwrap_or_default(),
        model: body.model.unwrap_or_default(),
        finish_reason: finish_reason_from_chat(choice.finish_reason.as_deref().unwrap_or("stop"), has_tool_calls),
        parts,
        usage: body.usage.map(|JsonObject(usage)| usage.normalize()),
    })
}

fn read_content(content: Option<TextOrList<JsonObject<PartIn>>>) -> Option<Vec<Part>> {
    match content {
        None => Some(Vec::new()),
        Some(TextOrList::Text(text)) if text.is_empty() => Some(Vec::new()),
        Some(TextOrList::Text(text)) => Some(vec![Part::text(text)]),
        Some(TextOrList::List(parts)) => parts.into_iter().map(|JsonObject(part)| read_part(part)).collect(),
    }
}

fn read_part(part: PartIn) -> Option<Part> {
    Some(match part.kind?.as_ref() {
        "text" => Part::Text(TextPart { text: part.text?, cache_control: part.cache_control }),
        "refusal" => Part::Refusal(part.refusal?),
        "image_url" => {
            let (url, detail) = match part.image_url? {
                TextOrObject::Text(url) => (url, None),
                TextOrObject::Object(image) => (image.url?, image.detail),
            };
            Part::Image(Media { source: MediaSource::from_url(&url), detail, filename: None })
        }
        "input_audio" => {
            let JsonObject(audio) = part.input_audio?;
            Part::Audio { data: audio.data?, format: audio.format? }
        }
        "file" => {
            let JsonObject(file) = part.file?;
            let source = match (file.file_data, file.file_id) {
                (Some(data), _) => match MediaSource::from_url(&data) {
                    MediaSource::Url(_) => return None,
                    inline => inline,
                },
                (None, Some(file_id)) => MediaSource::FileId(file_id),
                (None, None) => return None,
            };
            Part::Document(Media { source, detail: None, filename: file.filename })
        }
        _ => return None,
    })
}
