//! Google Gemini `generateContent` to and from the IR: requests, responses, and `alt=sse` streams.
//!
//! Rules of the Gemini API that the writers enforce (protocols.md §1D, §5):
//! - The model and the stream flag live in the URL, so request bodies carry neither; a Gemini
//!   client's model comes from its URL and the parsed IR model stays empty.
//! - Roles are `user` and `model` only. System and developer messages are hoisted, in order, into
//!   `systemInstruction` (`ir::hoisted_system_parts`); tool results become `functionResponse`
//!   parts of a user turn; consecutive turns of the same role are merged and empty parts dropped,
//!   because Gemini rejects empty `parts`.
//! - Gemini has no reliable call ids. Parsing a Gemini history gives each call without an id the
//!   deterministic id `call_<turn>_<n>` and pairs each `functionResponse` with the earliest
//!   unanswered call of the same name; parsing a response gives `call_<response id>_<n>`.
//!   Writing for Gemini sends no ids and names every `functionResponse` after the call it answers.
//! - A `functionResponse.response` must be an object: a result that is a JSON object is sent as
//!   that object, any other text as `{"result": text}`, and an error as `{"error": …}`.
//! - Thought signatures are kept in the IR tagged `Format::Gemini` (on the call for a
//!   `functionCall` part, otherwise as a reasoning part) and only ever written back to Gemini or
//!   Antigravity. A model turn with function calls but no signature at all (history from another
//!   provider) gets the documented bypass value [`SIGNATURE_BYPASS`] on its first call, which
//!   Gemini 3 otherwise rejects (protocols.md §8 case 19).
//! - Tool schemas go out as `parametersJsonSchema` without the keywords Gemini rejects
//!   (`$schema`, `$ref`/`$defs` inlined, `additionalProperties`, `const` turned into `enum`,
//!   `default`, `examples`).
//! - Image URLs that are not data URLs become `fileData` with a MIME type guessed from the
//!   extension; fetching them is IO and not done here.
//!
//! Parsers accept camelCase and snake_case field names alike, as Google's proto JSON does.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::protocol::Format;
use crate::protocol::error::{ErrorKind, parse_upstream_error, render_stream_error};
use crate::protocol::ir::{
    ConvertError, FinishReason, Media, MediaSource, Message, Part, Reasoning, ReasoningConfig,
    ReasoningEffort, Request, Response, ResponseFormat, ResponseMeta, Role, Signature, StreamEvent,
    ToolCall, ToolChoice, JsonSchema, ToolDefinition, ToolResult, WriteOptions, hoisted_system_parts,
};
use crate::protocol::json::{AsFieldPath, FieldPath, element,
    field, index, insert_some, join, log_dropped_fields, object, opt_array, opt_bool, opt_f64,
    opt_i64, opt_str, opt_u64, req_str,
};
use crate::protocol::sse::{SseEvent, write_json_event};
use crate::protocol::typed_read::gemini::read_stream_chunk;
use crate::protocol::usage::{Usage, usage_from_value};

/// The documented `thoughtSignature` value that tells Gemini to skip signature validation, for
/// function calls in history that no Gemini model signed.
pub const SIGNATURE_BYPASS: &str = "skip_thought_signature_validator";

/// Gemini accepts at most five stop sequences.
const MAX_STOP_SEQUENCES: usize = 5;

/// The largest thinking budget every Gemini 2.5 model accepts (Flash's maximum).
const MAX_THINKING_BUDGET: u64 = 24_576;

/// How many `$ref`s deep a tool schema is inlined; recursive schemas stop there.
const MAX_REF_DEPTH: usize = 8;

/// Schema keywords Gemini rejects; `$ref` and `$defs` are inlined before they are dropped.
const DROPPED_SCHEMA_KEYWORDS: [&str; 8] = [
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "definitions",
    "additionalProperties",
    "default",
    "examples",
];

/// Reads a `generateContent` request body from a Gemini client.
pub fn parse_request(body: &Value) -> Result<Request, ConvertError> {
    object(body, "")?;
    // A cached content holds part of the prompt (often the system instruction and long
    // documents) at Google; another upstream would answer without it, which is a different
    // question, so the request is refused rather than silently changed.
    let cached_key = key(body, "cachedContent");
    if field(body, &cached_key).is_some() {
        return Err(ConvertError::new(
            cached_key,
            "cached contents are stored at Google and cannot be sent to this upstream; send the \
             cached parts in contents or systemInstruction instead",
        ));
    }
    // Safety thresholds, labels and the response modalities steer Google's own serving; another
    // upstream answers with its own defaults.
    log_dropped_fields(
        Format::Gemini,
        body,
        &["safetySettings", "safety_settings", "labels"],
    );
    let mut request = Request::default();
    let system_key = key(body, "systemInstruction");
    if let Some(system) = field(body, &system_key) {
        let parts = parse_system_instruction(system, &system_key.as_field_path())?;
        if !parts.is_empty() {
            request.messages.push(Message::new(Role::System, parts));
        }
    }
    let contents_key = key(body, "contents");
    let contents = opt_array(body, &contents_key, "")?
        .ok_or_else(|| ConvertError::new("contents", "is required"))?;
    let mut matcher = CallMatcher::default();
    for (turn, content) in contents.iter().enumerate() {
        let path = index(&contents_key, turn);
        parse_content(content, turn, &path, &mut matcher, &mut request.messages)?;
    }
    request.tools = parse_tools(body)?;
    request.tool_choice = parse_tool_config(body)?;
    let config_key = key(body, "generationConfig");
    if let Some(config) = field(body, &config_key) {
        parse_generation_config(config, &config_key.as_field_path(), &mut request)?;
    }
    Ok(request)
}

/// The name under which `value` holds a field: its camelCase name, or the snake_case name that
/// proto JSON also accepts. The camelCase name when neither is present.
fn key(value: &Value, camel: &str) -> String {
    if value.get(camel).is_some() {
        return camel.to_string();
    }
    let mut snake = String::with_capacity(camel.len() + 4);
    for character in camel.chars() {
        if character.is_ascii_uppercase() {
            snake.push('_');
            snake.push(character.to_ascii_lowercase());
        } else {
            snake.push(character);
        }
    }
    if value.get(&snake).is_some() {
        snake
    } else {
        camel.to_string()
    }
}

fn parse_system_instruction(system: &Value, path: &FieldPath) -> Result<Vec<Part>, ConvertError> {
    // Some clients send a plain string, which the REST API also accepts.
    if let Value::String(text) = system {
        return Ok(if text.is_empty() {
            Vec::new()
        } else {
            vec![Part::text(text.clone())]
        });
    }
    let mut parts = Vec::new();
    for (position, part) in opt_array(system, "parts", path)?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let part_path = element(path, "parts", position);
        if let Some(text) = opt_str(part, "text", &part_path)?
            && !text.is_empty()
        {
            parts.push(Part::text(text));
        }
    }
    Ok(parts)
}

/// Pairs each `functionResponse` of a Gemini history with the call it answers.
#[derive(Default)]
struct CallMatcher {
    /// The calls of the latest model turn that no response has answered yet: (id, name).
    pending: Vec<(String, String)>,
}

impl CallMatcher {
    /// The id for a response: its own id, else the earliest unanswered call of the same name,
    /// else a fresh id for a response that answers no known call.
    fn response_id(&mut self, own_id: Option<&str>, name: &str, fallback: String) -> String {
        if let Some(id) = own_id {
            self.pending.retain(|(pending_id, _)| pending_id != id);
            return id.to_string();
        }
        match self
            .pending
            .iter()
            .position(|(_, pending_name)| pending_name == name)
        {
            Some(position) => self.pending.remove(position).0,
            None => fallback,
        }
    }
}

/// Reads one content. A user turn with `functionResponse` parts becomes a tool message (the
/// results, in order) followed by a user message with the remaining parts.
fn parse_content(
    content: &Value,
    turn: usize,
    path: &FieldPath,
    matcher: &mut CallMatcher,
    out: &mut Vec<Message>,
) -> Result<(), ConvertError> {
    object(content, path)?;
    let role = opt_str(content, "role", path)?.unwrap_or("user");
    let parts_path = join(path, "parts");
    let parts = opt_array(content, "parts", path)?
        .map(Vec::as_slice)
        .unwrap_or_default();
    match role {
        "model" => {
            let parsed = parse_model_parts(parts, &parts_path, &mut |ordinal| {
                format!("call_{turn}_{ordinal}")
            })?;
            matcher.pending = parsed
                .iter()
                .filter_map(|part| match part {
                    Part::ToolCall(call) => Some((call.id.clone(), call.name.clone())),
                    _ => None,
                })
                .collect();
            if !parsed.is_empty() {
                out.push(Message::new(Role::Assistant, parsed));
            }
        }
        // `function` is the role older clients use for function responses.
        "user" | "function" => {
            let mut results = Vec::new();
            let mut others = Vec::new();
            for (position, part) in parts.iter().enumerate() {
                let part_path = index(&parts_path, position);
                object(part, &part_path)?;
                let response_key = key(part, "functionResponse");
                if let Some(response) = field(part, &response_key) {
                    let response_path = join(&part_path, &response_key);
                    let fallback = format!("call_{turn}_{position}");
                    let result =
                        parse_function_response(response, &response_path, fallback, matcher)?;
                    results.push(Part::ToolResult(result));
                } else if let Some(parsed) = parse_user_part(part, &part_path)? {
                    others.push(parsed);
                }
            }
            if !results.is_empty() {
                out.push(Message::new(Role::Tool, results));
            }
            if !others.is_empty() {
                out.push(Message::new(Role::User, others));
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

fn parse_function_response(
    response: &Value,
    path: &FieldPath,
    fallback_id: String,
    matcher: &mut CallMatcher,
) -> Result<ToolResult, ConvertError> {
    let name = req_str(response, "name", path)?;
    let own_id = opt_str(response, "id", path)?.filter(|id| !id.is_empty());
    let call_id = matcher.response_id(own_id, name, fallback_id);
    let (text, is_error) = function_response_text(field(response, "response"));
    let content = if text.is_empty() {
        Vec::new()
    } else {
        vec![Part::text(text)]
    };
    Ok(ToolResult {
        call_id,
        name: Some(name.to_string()),
        content,
        is_error,
    })
}

/// The text of a `functionResponse.response` and whether it reports an error. The wrappers Gemini
/// documents (`output`, `error`) and the one writers use (`result`) are unwrapped; any other
/// object is the result itself, as JSON text.
fn function_response_text(response: Option<&Value>) -> (String, bool) {
    let text_of = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match response {
        None => (String::new(), false),
        Some(Value::Object(map)) if map.len() == 1 => {
            if let Some(value) = map.get("result").or_else(|| map.get("output")) {
                (text_of(value), false)
            } else if let Some(value) = map.get("error") {
                (text_of(value), true)
            } else {
                (text_of(&Value::Object(map.clone())), false)
            }
        }
        Some(other) => (text_of(other), false),
    }
}

fn parse_user_part(part: &Value, path: &FieldPath) -> Result<Option<Part>, ConvertError> {
    if let Some(text) = opt_str(part, "text", path)? {
        return Ok((!text.is_empty()).then(|| Part::text(text)));
    }
    if let Some(media) = parse_media_part(part, path)? {
        return Ok(Some(media));
    }
    // Code execution parts only mean something to Gemini's own tool.
    let server_side = ["executableCode", "codeExecutionResult"]
        .iter()
        .any(|name| field(part, &key(part, name)).is_some());
    if server_side {
        return Ok(None);
    }
    Err(ConvertError::new(path, "unsupported part"))
}

/// Reads an `inlineData` or `fileData` part; None for any other part.
fn parse_media_part(part: &Value, path: &FieldPath) -> Result<Option<Part>, ConvertError> {
    let inline_key = key(part, "inlineData");
    if let Some(inline) = field(part, &inline_key) {
        let inline_path = join(path, &inline_key);
        let media_type = req_str(inline, &key(inline, "mimeType"), &inline_path)?;
        let data = req_str(inline, "data", &inline_path)?;
        return Ok(Some(inline_part(media_type, data)));
    }
    let file_key = key(part, "fileData");
    if let Some(file) = field(part, &file_key) {
        let file_path = join(path, &file_key);
        let uri = req_str(file, &key(file, "fileUri"), &file_path)?;
        let media_type = opt_str(file, &key(file, "mimeType"), &file_path)?;
        let media_type = media_type.unwrap_or_else(|| guess_media_type(uri, false));
        let media = Media {
            source: MediaSource::Url(uri.to_string()),
            detail: None,
            filename: None,
        };
        return Ok(Some(if media_type.starts_with("image/") {
            Part::Image(media)
        } else {
            Part::Document(media)
        }));
    }
    Ok(None)
}

fn inline_part(media_type: &str, data: &str) -> Part {
    if let Some(subtype) = media_type.strip_prefix("audio/") {
        let format = match subtype {
            "mpeg" | "mp3" => "mp3",
            "wav" | "x-wav" | "wave" => "wav",
            other => other,
        };
        return Part::Audio {
            data: data.to_string(),
            format: format.to_string(),
        };
    }
    let media = Media {
        source: MediaSource::Base64 {
            media_type: media_type.to_string(),
            data: data.to_string(),
        },
        detail: None,
        filename: None,
    };
    if media_type.starts_with("image/") {
        Part::Image(media)
    } else {
        Part::Document(media)
    }
}

/// A MIME type for a file URL, from its extension; Gemini requires one on `fileData`. Unknown
/// extensions get JPEG for images and PDF for documents, the most common kinds.
fn guess_media_type(url: &str, image: bool) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let extension = path
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        _ if image => "image/jpeg",
        _ => "application/pdf",
    }
}

pub(crate) fn gemini_signature(value: &str) -> Signature {
    Signature {
        provider: Format::Gemini,
        value: value.to_string(),
    }
}

/// Reads the parts of a model turn (history or response). `synthesize_id` gives the id of the
/// n-th call that has none.
///
/// A signature on a `functionCall` part stays on the call; one on a thought part stays on that
/// reasoning; one on a plain text part (or an otherwise empty part) becomes an empty reasoning
/// part right after the text, which the writers put back on the text part.
pub(crate) fn parse_model_parts(
    parts: &[Value],
    path: &FieldPath,
    synthesize_id: &mut dyn FnMut(usize) -> String,
) -> Result<Vec<Part>, ConvertError> {
    let mut out = Vec::new();
    let mut n_calls = 0;
    for (position, part) in parts.iter().enumerate() {
        let part_path = index(path, position);
        object(part, &part_path)?;
        let signature = opt_str(part, &key(part, "thoughtSignature"), &part_path)?
            .filter(|signature| !signature.is_empty())
            .map(gemini_signature);
        let call_key = key(part, "functionCall");
        if let Some(call) = field(part, &call_key) {
            let call_path = join(&part_path, &call_key);
            let id = match opt_str(call, "id", &call_path)?.filter(|id| !id.is_empty()) {
                Some(id) => id.to_string(),
                None => synthesize_id(n_calls),
            };
            n_calls += 1;
            out.push(Part::ToolCall(ToolCall {
                id,
                name: req_str(call, "name", &call_path)?.to_string(),
                arguments: field(call, "args")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".to_string()),
                signature,
            }));
            continue;
        }
        if let Some(text) = opt_str(part, "text", &part_path)? {
            if opt_bool(part, "thought", &part_path)? == Some(true) {
                if !text.is_empty() || signature.is_some() {
                    out.push(Part::Reasoning(Reasoning {
                        text: text.to_string(),
                        signature,
                        redacted: false,
                    }));
                }
                continue;
            }
            if !text.is_empty() {
                out.push(Part::text(text));
            }
        } else if let Some(media) = parse_media_part(part, &part_path)? {
            out.push(media);
        }
        // Code execution parts have no portable equivalent and are skipped; a signature on them
        // or on a text part is kept as its own reasoning part.
        if let Some(signature) = signature {
            out.push(Part::Reasoning(Reasoning {
                text: String::new(),
                signature: Some(signature),
                redacted: false,
            }));
        }
    }
    Ok(out)
}

fn parse_tools(body: &Value) -> Result<Vec<ToolDefinition>, ConvertError> {
    let tools_key = key(body, "tools");
    let mut definitions = Vec::new();
    for (position, tool) in opt_array(body, &tools_key, "")?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let tool_path = index(&tools_key, position);
        // Built-in tools (googleSearch, codeExecution, urlContext) have no portable equivalent.
        let declarations_key = key(tool, "functionDeclarations");
        let declarations_path = join(&tool_path, &declarations_key);
        for (inner, declaration) in opt_array(tool, &declarations_key, &tool_path)?
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = index(&declarations_path, inner);
            let json_schema_key = key(declaration, "parametersJsonSchema");
            let parameters = if let Some(schema) = field(declaration, &json_schema_key) {
                JsonSchema::from_value(schema)
            } else if let Some(schema) = field(declaration, "parameters") {
                JsonSchema::from_value(&lowercase_schema_types(schema))
            } else {
                JsonSchema::empty_object()
            };
            definitions.push(ToolDefinition {
                name: req_str(declaration, "name", &path)?.to_string(),
                description: opt_str(declaration, "description", &path)?.map(str::to_string),
                parameters,
                strict: None,
            });
        }
    }
    Ok(definitions)
}

fn parse_tool_config(body: &Value) -> Result<Option<ToolChoice>, ConvertError> {
    let config_key = key(body, "toolConfig");
    let Some(config) = field(body, &config_key) else {
        return Ok(None);
    };
    let calling_key = key(config, "functionCallingConfig");
    let Some(calling) = field(config, &calling_key) else {
        return Ok(None);
    };
    let path = join(&config_key, &calling_key);
    let allowed_key = key(calling, "allowedFunctionNames");
    let mut allowed = Vec::new();
    for (position, name) in opt_array(calling, &allowed_key, &path)?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = name.as_str().ok_or_else(|| {
            ConvertError::new(
                index(&join(&path, &allowed_key), position),
                "expected a string",
            )
        })?;
        allowed.push(name.to_string());
    }
    let Some(mode) = opt_str(calling, "mode", &path)? else {
        return Ok(None);
    };
    let choice = match mode.to_ascii_uppercase().as_str() {
        "MODE_UNSPECIFIED" => return Ok(None),
        // VALIDATED lets the model call a function or answer, like AUTO, with the calls checked
        // against their schemas.
        "AUTO" | "VALIDATED" => ToolChoice::Auto,
        "NONE" => ToolChoice::None,
        "ANY" if allowed.len() == 1 => ToolChoice::Named(allowed.swap_remove(0)),
        "ANY" => ToolChoice::Required,
        _ => {
            return Err(ConvertError::new(
                join(&path, "mode"),
                format!("unknown mode {mode:?}"),
            ));
        }
    };
    Ok(Some(choice))
}

fn parse_generation_config(
    config: &Value,
    path: &FieldPath,
    request: &mut Request,
) -> Result<(), ConvertError> {
    object(config, path)?;
    request.temperature = opt_f64(config, "temperature", path)?;
    request.top_p = opt_f64(config, &key(config, "topP"), path)?;
    request.top_k = opt_u64(config, &key(config, "topK"), path)?;
    request.n = opt_u64(config, &key(config, "candidateCount"), path)?;
    request.max_tokens = opt_u64(config, &key(config, "maxOutputTokens"), path)?;
    request.seed = opt_i64(config, "seed", path)?;
    request.presence_penalty = opt_f64(config, &key(config, "presencePenalty"), path)?;
    request.frequency_penalty = opt_f64(config, &key(config, "frequencyPenalty"), path)?;
    let stop_key = key(config, "stopSequences");
    for (position, sequence) in opt_array(config, &stop_key, path)?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let sequence = sequence.as_str().ok_or_else(|| {
            ConvertError::new(index(&join(path, &stop_key), position), "expected a string")
        })?;
        request.stop.push(sequence.to_string());
    }

    let json_schema = field(config, &key(config, "responseJsonSchema")).cloned();
    let openapi_schema = field(config, &key(config, "responseSchema")).map(lowercase_schema_types);
    let schema = json_schema.or(openapi_schema);
    request.response_format = match opt_str(config, &key(config, "responseMimeType"), path)? {
        Some("application/json") => Some(match schema {
            Some(schema) => ResponseFormat::JsonSchema {
                name: None,
                description: None,
                schema,
                strict: None,
            },
            None => ResponseFormat::JsonObject,
        }),
        Some("text/plain") => Some(ResponseFormat::Text),
        // Other types (text/x.enum) have no equivalent elsewhere.
        _ => None,
    };

    let thinking_key = key(config, "thinkingConfig");
    if let Some(thinking) = field(config, &thinking_key) {
        let thinking_path = join(path, &thinking_key);
        let budget = opt_i64(thinking, &key(thinking, "thinkingBudget"), &thinking_path)?;
        let level = opt_str(thinking, &key(thinking, "thinkingLevel"), &thinking_path)?;
        let effort = match level.map(str::to_ascii_lowercase).as_deref() {
            None | Some("thinking_level_unspecified") => None,
            Some("minimal") => Some(ReasoningEffort::Minimal),
            Some("low") => Some(ReasoningEffort::Low),
            Some("medium") => Some(ReasoningEffort::Medium),
            Some("high") => Some(ReasoningEffort::High),
            Some(other) => {
                return Err(ConvertError::new(
                    join(&thinking_path, "thinkingLevel"),
                    format!("unknown thinking level {other:?}"),
                ));
            }
        };
        let include = opt_bool(thinking, &key(thinking, "includeThoughts"), &thinking_path)?;
        request.reasoning = Some(ReasoningConfig {
            effort,
            // -1 asks for a dynamic budget, which is what leaving the budget out means elsewhere.
            budget_tokens: budget.and_then(|budget| u64::try_from(budget).ok()),
            // Gemini's default is to leave thoughts out.
            include_thoughts: Some(include.unwrap_or(false)),
            summary: None,
        });
    }
    Ok(())
}

/// Which Google request body is written: they differ in schemas, ids and a few quirks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Target {
    Gemini,
    Antigravity,
}

/// Who reads the model parts being written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// Gemini, as history: no call ids; reasoning signed by another provider is dropped.
    Gemini,
    /// Antigravity, as history: call ids kept (Claude-backed models need them); for Claude
    /// models reasoning without a Gemini-family signature is dropped as well.
    Antigravity { claude: bool },
    /// A Gemini client, as a response: everything it can show, signatures only if Gemini's.
    Client,
}

/// A `generateContent` request body as it is written: the top level, the generation config and
/// the tool declarations are serialised straight from the IR rather than built as `Value` maps
/// first. Fields are in alphabetical order, the order the sorted maps of `json!` wrote them in,
/// so the upstream gets the same bytes as before.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateRequestOut<'request> {
    contents: Vec<ContentOut<Vec<PartOut<'request>>>>,
    #[serde(skip_serializing_if = "GenerationConfigOut::is_empty")]
    generation_config: GenerationConfigOut<'request>,
    /// Antigravity only: a stable id for the conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstructionOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfigOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<[ToolsOut<'request>; 1]>,
}

#[derive(Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct GenerationConfigOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'request [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
}

impl GenerationConfigOut<'_> {
    /// Nothing set: the body then leaves `generationConfig` out.
    fn is_empty(&self) -> bool {
        *self == GenerationConfigOut::default()
    }
}

#[derive(Serialize)]
struct SystemInstructionOut<'request> {
    parts: Vec<TextOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
}

#[derive(Serialize)]
struct TextOut<'request> {
    text: &'request str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfigOut {
    function_calling_config: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolsOut<'request> {
    function_declarations: Vec<FunctionDeclarationOut<'request>>,
}

/// A function declaration; its schema goes under `parametersJsonSchema` for Gemini and under
/// `parameters` (the OpenAPI subset) for Antigravity.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclarationOut<'request> {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'request str>,
    name: &'request str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<SchemaOut<'request>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<SchemaOut<'request>>,
}

/// A tool's schema as written: the client's text when the sanitiser would not change it.
#[derive(Serialize)]
#[serde(untagged)]
enum SchemaOut<'request> {
    AsSent(&'request RawValue),
    Sanitized(Value),
}

/// Writes a tool's schema in `style`. Gemini's JSON Schema style only differs from the client's
/// schema where a keyword the sanitiser rewrites appears, which a scan of the text finds without
/// building the schema; Antigravity's upper-case OpenAPI types always need the rewrite.
fn write_schema(tool: &ToolDefinition, style: SchemaStyle) -> Result<SchemaOut<'_>, ConvertError> {
    // The keywords `sanitize_schema_node` drops or rewrites in JSON Schema style.
    let rewritten = style == SchemaStyle::OpenApi
        || tool.parameters.has_member_anywhere(&|name| DROPPED_SCHEMA_KEYWORDS.contains(&name) || name == "const");
    if rewritten {
        Ok(SchemaOut::Sanitized(sanitize_schema(&tool.schema_value()?, style)))
    } else {
        Ok(SchemaOut::AsSent(tool.parameters.raw()))
    }
}

/// Writes a `generateContent` request body for a Gemini upstream.
pub fn write_request<'request>(
    request: &'request Request,
    options: &WriteOptions,
) -> Result<GenerateRequestOut<'request>, ConvertError> {
    write_generate_request(request, options, Target::Gemini)
}

/// Writes the Gemini request body for either target; Antigravity wraps it in its envelope.
pub(crate) fn write_generate_request<'request>(
    request: &'request Request,
    options: &WriteOptions,
    target: Target,
) -> Result<GenerateRequestOut<'request>, ConvertError> {
    let model = options.upstream_model.to_ascii_lowercase();
    let claude = target == Target::Antigravity && model.starts_with("claude");
    let reader = match target {
        Target::Gemini => Reader::Gemini,
        Target::Antigravity => Reader::Antigravity { claude },
    };
    if request.verbosity.is_some() {
        log::debug!("gemini upstream: the client's verbosity has no equivalent; dropped");
    }

    let system: Vec<TextOut> = hoisted_system_parts(&request.messages)
        .iter()
        .map(|part| TextOut { text: &part.text })
        .collect();
    let system_instruction = (!system.is_empty()).then(|| SystemInstructionOut {
        parts: system,
        // Antigravity wants the role spelled out; Gemini ignores it.
        role: (target == Target::Antigravity).then_some("user"),
    });
    // Claude models behind Antigravity validate Claude signatures, not Gemini's bypass value.
    let bypass_signatures = !claude;
    let contents = write_contents(&request.messages, reader, bypass_signatures)?;

    let mut tools = None;
    let mut tool_config = None;
    if !request.tools.is_empty() {
        let style = match target {
            Target::Gemini => SchemaStyle::JsonSchema,
            Target::Antigravity => SchemaStyle::OpenApi,
        };
        let declarations = request
            .tools
            .iter()
            .map(|tool| {
                let schema = Some(write_schema(tool, style)?);
                let (parameters, parameters_json_schema) = match style {
                    SchemaStyle::OpenApi => (schema, None),
                    SchemaStyle::JsonSchema => (None, schema),
                };
                Ok(FunctionDeclarationOut {
                    description: tool.description.as_deref(),
                    name: &tool.name,
                    parameters,
                    parameters_json_schema,
                })
            })
            .collect::<Result<_, ConvertError>>()?;
        tools = Some([ToolsOut { function_declarations: declarations }]);
        tool_config = function_calling_config(request.tool_choice.as_ref(), claude)
            .map(|function_calling_config| ToolConfigOut { function_calling_config });
    }

    let mut config = GenerationConfigOut {
        candidate_count: request.n,
        frequency_penalty: request.frequency_penalty,
        presence_penalty: request.presence_penalty,
        seed: request.seed,
        stop_sequences: &request.stop[..request.stop.len().min(MAX_STOP_SEQUENCES)],
        temperature: request.temperature,
        top_k: request.top_k,
        top_p: request.top_p,
        ..GenerationConfigOut::default()
    };
    let mut max_tokens = request.max_tokens;
    if let Some(reasoning) = &request.reasoning {
        let gemini3 = model.contains("gemini-3");
        if let Some(thinking) = thinking_config(reasoning, gemini3, claude) {
            // Claude counts the thinking budget inside the output limit and needs room beyond it.
            if claude
                && let (Some(limit), Some(budget)) =
                    (max_tokens, thinking["thinkingBudget"].as_u64())
                && limit <= budget
            {
                max_tokens = Some(budget.saturating_add(limit));
            }
            config.thinking_config = Some(thinking);
        }
    }
    config.max_output_tokens = max_tokens;
    match &request.response_format {
        None => {}
        Some(ResponseFormat::Text) => config.response_mime_type = Some("text/plain"),
        Some(ResponseFormat::JsonObject) => config.response_mime_type = Some("application/json"),
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            config.response_mime_type = Some("application/json");
            match target {
                Target::Gemini => {
                    config.response_json_schema = Some(sanitize_schema(schema, SchemaStyle::JsonSchema));
                }
                Target::Antigravity => {
                    config.response_schema = Some(sanitize_schema(schema, SchemaStyle::OpenApi));
                }
            }
        }
    }
    Ok(GenerateRequestOut {
        contents,
        generation_config: config,
        session_id: None,
        system_instruction,
        tool_config,
        tools,
    })
}

/// `functionCallingConfig` for a tool choice; None leaves Gemini's default (AUTO). Claude models
/// behind Antigravity take VALIDATED where Gemini takes AUTO or ANY.
fn function_calling_config(choice: Option<&ToolChoice>, claude: bool) -> Option<Value> {
    let mut config = match choice {
        None if claude => json!({"mode": "AUTO"}),
        None => return None,
        Some(ToolChoice::Auto) => json!({"mode": "AUTO"}),
        Some(ToolChoice::None) => json!({"mode": "NONE"}),
        Some(ToolChoice::Required) => json!({"mode": "ANY"}),
        Some(ToolChoice::Named(name)) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    };
    if claude && config["mode"] != "NONE" {
        config["mode"] = "VALIDATED".into();
    }
    Some(config)
}

/// `thinkingConfig` from the IR reasoning controls (protocols.md §5): an explicit budget is sent
/// as a budget (clamped for Gemini); an effort becomes `thinkingLevel` on Gemini 3 and a budget
/// elsewhere. Thoughts are included whenever thinking is on, unless the client said otherwise.
fn thinking_config(reasoning: &ReasoningConfig, gemini3: bool, claude: bool) -> Option<Value> {
    let mut config = Map::new();
    if let Some(budget) = reasoning.budget_tokens {
        let budget = if claude {
            budget
        } else {
            budget.min(MAX_THINKING_BUDGET)
        };
        config.insert("thinkingBudget".into(), budget.into());
    } else if let Some(effort) = reasoning.effort {
        if gemini3 {
            // Gemini 3 cannot turn thinking off; low is the least every Gemini 3 model accepts.
            let level = match effort {
                ReasoningEffort::None | ReasoningEffort::Low => "low",
                ReasoningEffort::Minimal => "minimal",
                ReasoningEffort::Medium => "medium",
                ReasoningEffort::High | ReasoningEffort::XHigh => "high",
            };
            config.insert("thinkingLevel".into(), level.into());
        } else {
            let budget: u64 = match effort {
                ReasoningEffort::None => 0,
                ReasoningEffort::Minimal => 512,
                ReasoningEffort::Low => 1024,
                ReasoningEffort::Medium => 8192,
                ReasoningEffort::High | ReasoningEffort::XHigh => MAX_THINKING_BUDGET,
            };
            config.insert("thinkingBudget".into(), budget.into());
        }
    }
    let thinking_on = reasoning.effective_effort() != Some(ReasoningEffort::None);
    let include = reasoning.include_thoughts.or(thinking_on.then_some(true));
    insert_some(&mut config, "includeThoughts", include);
    (!config.is_empty()).then_some(Value::Object(config))
}

/// One Gemini part as it is written, borrowing the IR's texts: building every part as a `Value`
/// copied each text of the conversation only to serialise and drop the copy. Members are in
/// alphabetical order, the order the sorted maps of `json!` wrote them in, so upstreams and
/// clients get the same bytes as before.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct PartOut<'message> {
    #[serde(skip_serializing_if = "Option::is_none")]
    file_data: Option<FileDataOut<'message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCallOut<'message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponseOut<'message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_data: Option<InlineDataOut<'message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'message str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<&'message str>,
}

impl<'message> PartOut<'message> {
    fn text(text: &'message str) -> PartOut<'message> {
        PartOut { text: Some(text), ..PartOut::default() }
    }

    /// A text part that nothing else has claimed: a thought signature may still go onto it.
    fn is_plain_text(&self) -> bool {
        self.text.is_some() && self.thought.is_none() && self.thought_signature.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileDataOut<'message> {
    file_uri: &'message str,
    mime_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InlineDataOut<'message> {
    data: &'message str,
    mime_type: Cow<'message, str>,
}

#[derive(Serialize)]
struct FunctionCallOut<'message> {
    /// The arguments as an object: Gemini rejects a string, and a call whose arguments are not
    /// a JSON object gets an empty one.
    args: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Cow<'message, str>>,
    name: &'message str,
}

#[derive(Serialize)]
struct FunctionResponseOut<'message> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    name: &'message str,
    response: FunctionResultOut<'message>,
}

/// `functionResponse.response`, which must be an object (see the module docs).
#[derive(Serialize)]
#[serde(untagged)]
enum FunctionResultOut<'message> {
    /// A result whose text is a JSON object is sent as that object.
    Object(Map<String, Value>),
    Result { result: Cow<'message, str> },
    Error { error: ErrorResultOut<'message> },
}

/// A failed tool's result under `error`: its object, or else its text.
#[derive(Serialize)]
#[serde(untagged)]
enum ErrorResultOut<'message> {
    Object(Map<String, Value>),
    Text(Cow<'message, str>),
}

/// Converts the conversation (minus system messages) into Gemini contents: alternating roles,
/// no empty parts, function responses named after their calls.
fn write_contents(
    messages: &[Message],
    reader: Reader,
    bypass_signatures: bool,
) -> Result<Vec<ContentOut<Vec<PartOut<'_>>>>, ConvertError> {
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    let mut contents: Vec<ContentOut<Vec<PartOut>>> = Vec::new();
    for (position, message) in messages.iter().enumerate() {
        let path = index("messages", position);
        let (role, parts) = match message.role {
            Role::System | Role::Developer => continue,
            Role::User => ("user", write_user_parts(&message.parts, &path)?),
            Role::Tool => (
                "user",
                write_function_responses(&message.parts, &path, &call_names, reader)?,
            ),
            Role::Assistant => {
                for part in &message.parts {
                    if let Part::ToolCall(call) = part {
                        call_names.insert(&call.id, &call.name);
                    }
                }
                ("model", write_model_parts(&message.parts, &path, reader)?)
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => contents.push(ContentOut { parts, role }),
        }
    }
    if bypass_signatures {
        for content in contents.iter_mut().filter(|content| content.role == "model") {
            add_signature_bypass(&mut content.parts);
        }
    }
    Ok(contents)
}

/// Puts [`SIGNATURE_BYPASS`] on the first function call of a model turn that carries no thought
/// signature at all, which is history another provider produced.
fn add_signature_bypass(parts: &mut [PartOut]) {
    if parts.iter().any(|part| part.thought_signature.is_some()) {
        return;
    }
    if let Some(call) = parts.iter_mut().find(|part| part.function_call.is_some()) {
        call.thought_signature = Some(SIGNATURE_BYPASS);
    }
}

fn write_user_parts<'message>(parts: &'message [Part], path: &FieldPath) -> Result<Vec<PartOut<'message>>, ConvertError> {
    let mut written = Vec::new();
    for (position, part) in parts.iter().enumerate() {
        match part {
            Part::Text(text) if text.text.is_empty() => {}
            Part::Text(text) => written.push(PartOut::text(&text.text)),
            Part::Refusal(text) => written.push(PartOut::text(text)),
            Part::Image(media) => written.push(media_part(media, true, &element(path, "content", position))?),
            Part::Document(media) => written.push(media_part(media, false, &element(path, "content", position))?),
            Part::Audio { data, format } => written.push(audio_part(data, format)),
            Part::ToolCall(_) | Part::ToolResult(_) | Part::Reasoning(_) => {}
        }
    }
    Ok(written)
}

fn media_part<'message>(media: &'message Media, image: bool, path: &FieldPath) -> Result<PartOut<'message>, ConvertError> {
    Ok(match &media.source {
        MediaSource::Base64 { media_type, data } => PartOut {
            inline_data: Some(InlineDataOut { data, mime_type: Cow::Borrowed(media_type) }),
            ..PartOut::default()
        },
        MediaSource::Url(url) => PartOut {
            file_data: Some(FileDataOut { file_uri: url, mime_type: guess_media_type(url, image) }),
            ..PartOut::default()
        },
        MediaSource::Text(text) => PartOut::text(text),
        MediaSource::FileId(_) => {
            return Err(ConvertError::new(
                path,
                "file ids cannot be resolved on gemini",
            ));
        }
    })
}

fn audio_part<'message>(data: &'message str, format: &str) -> PartOut<'message> {
    let mime_type = match format {
        "mp3" | "mpeg" => Cow::Borrowed("audio/mp3"),
        other => Cow::Owned(format!("audio/{other}")),
    };
    PartOut { inline_data: Some(InlineDataOut { data, mime_type }), ..PartOut::default() }
}

/// Tool results as `functionResponse` parts, then any images they returned as parts of the same
/// user turn.
fn write_function_responses<'message>(
    parts: &'message [Part],
    path: &FieldPath,
    call_names: &HashMap<&str, &'message str>,
    reader: Reader,
) -> Result<Vec<PartOut<'message>>, ConvertError> {
    let mut written = Vec::new();
    let mut media = Vec::new();
    for (position, part) in parts.iter().enumerate() {
        let Part::ToolResult(result) = part else {
            continue;
        };
        let part_path = element(path, "content", position);
        let name = match &result.name {
            Some(name) => name.as_str(),
            None => call_names
                .get(result.call_id.as_str())
                .copied()
                .ok_or_else(|| {
                    ConvertError::new(
                        part_path,
                        format!(
                            "gemini needs the function name of tool result {:?}, and no earlier call has that id",
                            result.call_id
                        ),
                    )
                })?,
        };
        let id = matches!(reader, Reader::Antigravity { .. }).then(|| call_id_for_antigravity(&result.call_id));
        written.push(PartOut {
            function_response: Some(FunctionResponseOut { id, name, response: function_result(result) }),
            ..PartOut::default()
        });
        for (inner, content) in result.content.iter().enumerate() {
            match content {
                Part::Image(image) => media.push(media_part(image, true, &element(&part_path, "content", inner))?),
                Part::Document(document) => {
                    media.push(media_part(document, false, &element(&part_path, "content", inner))?)
                }
                _ => {}
            }
        }
    }
    written.extend(media);
    Ok(written)
}

/// `functionResponse.response` for a tool result (see the module docs).
fn function_result(result: &ToolResult) -> FunctionResultOut<'_> {
    let text = result.text();
    // Only a text that opens like an object can be one; the others are not parsed at all.
    let object = match text.trim_start().starts_with('{') {
        true => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(object)) => Some(object),
            _ => None,
        },
        false => None,
    };
    match (object, result.is_error) {
        (Some(object), false) => FunctionResultOut::Object(object),
        (None, false) => FunctionResultOut::Result { result: text },
        (Some(object), true) => FunctionResultOut::Error { error: ErrorResultOut::Object(object) },
        (None, true) => FunctionResultOut::Error { error: ErrorResultOut::Text(text) },
    }
}

/// Claude-backed Antigravity models pass call ids to Claude, which allows only `[A-Za-z0-9_-]`;
/// other characters become `_` on both the call and its response, so they still match.
fn call_id_for_antigravity(id: &str) -> String {
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

fn write_model_parts<'message>(
    parts: &'message [Part],
    path: &FieldPath,
    reader: Reader,
) -> Result<Vec<PartOut<'message>>, ConvertError> {
    let mut written: Vec<PartOut> = Vec::new();
    for (position, part) in parts.iter().enumerate() {
        match part {
            Part::Reasoning(reasoning) => {
                if let Some(part) = reasoning_part(reasoning, reader, &mut written) {
                    written.push(part);
                }
            }
            Part::Text(text) if text.text.is_empty() => {}
            Part::Text(text) => written.push(PartOut::text(&text.text)),
            Part::Refusal(text) => written.push(PartOut::text(text)),
            Part::ToolCall(call) => written.push(function_call_part(call, reader)),
            Part::Image(media) => written.push(media_part(media, true, &element(path, "content", position))?),
            Part::Document(media) => written.push(media_part(media, false, &element(path, "content", position))?),
            Part::Audio { data, format } => written.push(audio_part(data, format)),
            Part::ToolResult(_) => {}
        }
    }
    Ok(written)
}

/// The part for one reasoning, or None when it is dropped or its signature went onto the text
/// part before it (where Gemini put it).
fn reasoning_part<'message>(
    reasoning: &'message Reasoning,
    reader: Reader,
    written: &mut [PartOut<'message>],
) -> Option<PartOut<'message>> {
    if reasoning.redacted {
        return None;
    }
    let gemini_signature = reasoning
        .signature
        .as_ref()
        .filter(|signature| signature.provider == Format::Gemini)
        .map(|signature| signature.value.as_str());
    let foreign = reasoning.signature.is_some() && gemini_signature.is_none();
    match reader {
        Reader::Gemini | Reader::Antigravity { claude: false } if foreign => return None,
        Reader::Antigravity { claude: true } if gemini_signature.is_none() => return None,
        _ => {}
    }
    if reasoning.text.is_empty() {
        let signature = gemini_signature?;
        if let Some(previous) = written.last_mut()
            && previous.is_plain_text()
        {
            previous.thought_signature = Some(signature);
            return None;
        }
        return Some(PartOut { thought_signature: Some(signature), ..PartOut::text("") });
    }
    Some(PartOut {
        thought: Some(true),
        thought_signature: gemini_signature,
        ..PartOut::text(&reasoning.text)
    })
}

fn function_call_part(call: &ToolCall, reader: Reader) -> PartOut<'_> {
    let id = match reader {
        Reader::Gemini => None,
        Reader::Antigravity { .. } => Some(Cow::Owned(call_id_for_antigravity(&call.id))),
        Reader::Client => (!call.id.is_empty()).then_some(Cow::Borrowed(call.id.as_str())),
    };
    let thought_signature = call
        .signature
        .as_ref()
        .filter(|signature| signature.provider == Format::Gemini)
        .map(|signature| signature.value.as_str());
    PartOut {
        function_call: Some(FunctionCallOut { args: call.arguments_object(), id, name: &call.name }),
        thought_signature,
        ..PartOut::default()
    }
}

/// How a schema is written: Gemini's `parametersJsonSchema` takes JSON Schema, Antigravity's
/// `parameters` the OpenAPI subset with upper-case type names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SchemaStyle {
    JsonSchema,
    OpenApi,
}

/// A schema without the keywords Gemini rejects (protocols.md §5): references are inlined from
/// `$defs`/`definitions`, `const` becomes a one-value `enum`, and only keyword positions are
/// touched, so a property that happens to be called `default` survives.
fn sanitize_schema(schema: &Value, style: SchemaStyle) -> Value {
    let mut definitions = Map::new();
    for definitions_key in ["definitions", "$defs"] {
        if let Some(Value::Object(found)) = schema.get(definitions_key) {
            definitions.extend(found.clone());
        }
    }
    sanitize_schema_node(schema, &definitions, style, 0)
}

fn sanitize_schema_node(
    node: &Value,
    definitions: &Map<String, Value>,
    style: SchemaStyle,
    ref_depth: usize,
) -> Value {
    let Value::Object(keywords) = node else {
        return node.clone();
    };
    // Borrowed unless a `$ref` brings in keywords: copying every node here copied each subtree
    // once per level above it.
    let mut keywords: Cow<'_, Map<String, Value>> = Cow::Borrowed(keywords);
    let mut ref_depth = ref_depth;
    let reference = match keywords.get("$ref") {
        Some(Value::String(reference)) => Some(
            reference
                .strip_prefix("#/$defs/")
                .or_else(|| reference.strip_prefix("#/definitions/"))
                .and_then(|name| definitions.get(name)),
        ),
        _ => None,
    };
    if let Some(target) = reference {
        if let Some(Value::Object(target)) = target
            && ref_depth < MAX_REF_DEPTH
        {
            // The node's own keywords (a description, say) win over the definition's.
            let merged = keywords.to_mut();
            for (keyword, value) in target {
                merged.entry(keyword.clone()).or_insert_with(|| value.clone());
            }
            ref_depth += 1;
        } else if !keywords.contains_key("type") {
            // An unknown or too deeply recursive reference: any object will do.
            keywords.to_mut().insert("type".into(), "object".into());
        }
    }
    let mut sanitized = Map::new();
    for (keyword, value) in keywords.iter() {
        if DROPPED_SCHEMA_KEYWORDS.contains(&keyword.as_str()) {
            continue;
        }
        if keyword == "const" {
            if !keywords.contains_key("enum") {
                sanitized.insert("enum".into(), json!([value]));
            }
            // The OpenAPI subset only has string enums and wants the type spelled out.
            if style == SchemaStyle::OpenApi && value.is_string() && !keywords.contains_key("type")
            {
                sanitized.insert("type".into(), "STRING".into());
            }
            continue;
        }
        if keyword == "type" && style == SchemaStyle::OpenApi {
            match value {
                Value::String(type_name) => {
                    sanitized.insert("type".into(), type_name.to_ascii_uppercase().into());
                }
                // OpenAPI has one type per schema and says `nullable` instead of "null".
                Value::Array(type_names) => {
                    let names: Vec<&str> = type_names.iter().filter_map(Value::as_str).collect();
                    if let Some(first) = names.iter().find(|name| **name != "null") {
                        sanitized.insert("type".into(), first.to_ascii_uppercase().into());
                    }
                    if names.contains(&"null") {
                        sanitized.insert("nullable".into(), true.into());
                    }
                }
                other => {
                    sanitized.insert("type".into(), other.clone());
                }
            }
            continue;
        }
        let mut transform =
            |inner: &Value| sanitize_schema_node(inner, definitions, style, ref_depth);
        let value = map_subschemas(keyword, value, &mut transform).unwrap_or_else(|| value.clone());
        sanitized.insert(keyword.clone(), value);
    }
    Value::Object(sanitized)
}

/// A Gemini OpenAPI schema (`"type": "OBJECT"`) as JSON Schema (`"type": "object"`).
fn lowercase_schema_types(node: &Value) -> Value {
    let Value::Object(keywords) = node else {
        return node.clone();
    };
    let mut converted = Map::new();
    for (keyword, value) in keywords {
        let value = match (keyword.as_str(), value) {
            ("type", Value::String(type_name)) => type_name.to_ascii_lowercase().into(),
            _ => map_subschemas(keyword, value, &mut lowercase_schema_types)
                .unwrap_or_else(|| value.clone()),
        };
        converted.insert(keyword.clone(), value);
    }
    Value::Object(converted)
}

/// Applies `transform` to the schemas directly inside `value` when `keyword` holds subschemas;
/// None for any other keyword.
fn map_subschemas(
    keyword: &str,
    value: &Value,
    transform: &mut dyn FnMut(&Value) -> Value,
) -> Option<Value> {
    match (keyword, value) {
        ("properties" | "patternProperties" | "$defs" | "definitions", Value::Object(schemas)) => {
            Some(Value::Object(
                schemas
                    .iter()
                    .map(|(name, schema)| (name.clone(), transform(schema)))
                    .collect(),
            ))
        }
        (
            "items" | "not" | "additionalProperties" | "additionalItems" | "contains",
            Value::Object(_),
        ) => Some(transform(value)),
        ("items" | "anyOf" | "oneOf" | "allOf" | "prefixItems", Value::Array(schemas)) => {
            Some(Value::Array(schemas.iter().map(&mut *transform).collect()))
        }
        _ => None,
    }
}

/// Reads a `generateContent` response body (the first candidate). Calls without an id get
/// `call_<meta.id>_<n>`, which is unique per request because the caller's id is.
pub fn parse_response(body: &Value, meta: &ResponseMeta) -> Result<Response, ConvertError> {
    object(body, "")?;
    let candidate = first_candidate(body)?;
    let mut parts = Vec::new();
    let mut finish_reason = FinishReason::Stop;
    if let Some(candidate) = candidate {
        if let Some(content) = field(candidate, "content") {
            let content_parts = opt_array(content, "parts", "candidates[0].content")?
                .map(Vec::as_slice)
                .unwrap_or_default();
            parts = parse_model_parts(content_parts, &"candidates[0].content.parts".as_field_path(), &mut |n| {
                synthesized_call_id(&meta.id, n)
            })?;
        }
        let has_calls = parts.iter().any(|part| matches!(part, Part::ToolCall(_)));
        let reason = opt_str(candidate, &key(candidate, "finishReason"), "candidates[0]")?;
        finish_reason = finish_reason_from_gemini(reason.unwrap_or("STOP"), has_calls);
    } else if prompt_block_reason(body).is_some() {
        finish_reason = FinishReason::ContentFilter;
    }
    let usage_key = key(body, "usageMetadata");
    Ok(Response {
        id: opt_str(body, &key(body, "responseId"), "")?
            .unwrap_or_default()
            .to_string(),
        model: opt_str(body, &key(body, "modelVersion"), "")?
            .unwrap_or_default()
            .to_string(),
        parts,
        finish_reason,
        usage: field(body, &usage_key).and_then(|usage| usage_from_value(Format::Gemini, usage)),
    })
}

pub(crate) fn synthesized_call_id(seed: &str, ordinal: usize) -> String {
    format!("call_{seed}_{ordinal}")
}

/// The candidate with index 0 (or the first one); None when the prompt was blocked.
fn first_candidate(body: &Value) -> Result<Option<&Value>, ConvertError> {
    let candidates = opt_array(body, "candidates", "")?
        .map(Vec::as_slice)
        .unwrap_or_default();
    Ok(candidates
        .iter()
        .find(|candidate| candidate.get("index").and_then(Value::as_u64).unwrap_or(0) == 0))
}

/// `promptFeedback.blockReason`, set when Gemini refused the prompt and returned no candidates.
fn prompt_block_reason(body: &Value) -> Option<&str> {
    let feedback = field(body, &key(body, "promptFeedback"))?;
    field(feedback, &key(feedback, "blockReason"))?.as_str()
}

/// Maps a Gemini finish reason (protocols.md §5). Gemini says STOP even after a function call,
/// and Antigravity may say OTHER, so calls win over those.
pub(crate) fn finish_reason_from_gemini(reason: &str, has_calls: bool) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
            FinishReason::ContentFilter
        }
        image if image.starts_with("IMAGE_") => FinishReason::ContentFilter,
        _ if has_calls => FinishReason::ToolCalls,
        "OTHER"
        | "MALFORMED_FUNCTION_CALL"
        | "UNEXPECTED_TOOL_CALL"
        | "TOO_MANY_TOOL_CALLS"
        | "MISSING_THOUGHT_SIGNATURE" => FinishReason::Error,
        _ => FinishReason::Stop,
    }
}

fn finish_reason_to_gemini(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::ToolCalls => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter => "SAFETY",
        FinishReason::Error => "OTHER",
    }
}

/// Gemini's `usageMetadata`: candidates exclude thoughts, and the thought and cached counts
/// appear only when there are some. Fields are in alphabetical order, like every typed body
/// written here: the order the sorted maps of `json!` used, so clients get the same bytes.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageOut {
    #[serde(skip_serializing_if = "is_zero")]
    cached_content_token_count: u64,
    candidates_token_count: u64,
    prompt_token_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    thoughts_token_count: u64,
    total_token_count: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

impl UsageOut {
    fn new(usage: &Usage) -> UsageOut {
        UsageOut {
            cached_content_token_count: usage.cached_tokens,
            candidates_token_count: usage.output_tokens.saturating_sub(usage.reasoning_tokens),
            prompt_token_count: usage.input_tokens,
            thoughts_token_count: usage.reasoning_tokens,
            total_token_count: usage.total_tokens(),
        }
    }
}

/// The `usageMetadata` object as a `Value`, for stream chunks built as values.
pub fn usage_value(usage: &Usage) -> Value {
    serde_json::to_value(UsageOut::new(usage)).expect("usage serialises")
}

/// A `generateContent` response body, serialised from the IR rather than built as a `Value`
/// tree first; the parts are the history writer's values, moved in.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResponseOut<'response> {
    candidates: [CandidateOut<'response>; 1],
    model_version: &'response str,
    response_id: &'response str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_metadata: Option<UsageOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CandidateOut<'response> {
    content: ContentOut<Vec<PartOut<'response>>>,
    finish_reason: &'static str,
    index: u32,
}

/// Writes a `generateContent` response body for a Gemini client.
pub fn write_response<'response>(response: &'response Response, meta: &'response ResponseMeta) -> GenerateResponseOut<'response> {
    // Writing for a client cannot fail: media parts in a response are inline or URLs.
    let parts = write_model_parts(&response.parts, &FieldPath::ROOT, Reader::Client).unwrap_or_default();
    
    GenerateResponseOut {
        candidates: [CandidateOut {
            content: ContentOut { parts, role: "model" },
            finish_reason: finish_reason_to_gemini(response.finish_reason),
            index: 0,
        }],
        model_version: non_empty_or(&response.model, &meta.model),
        response_id: non_empty_or(&response.id, &meta.id),
        usage_metadata: response.usage.as_ref().map(UsageOut::new),
    }
}

fn non_empty_or<'a>(value: &'a str, fallback: &'a str) -> &'a str {
    if value.is_empty() { fallback } else { value }
}

/// Reads a chunk's bytes (a call id seed and the calls before it for calls without an id), or
/// declines.
pub(crate) type ChunkReader = fn(&[u8], &str, usize) -> Option<StreamChunk>;

/// What one stream chunk says, read from its bytes or from a `Value`.
pub(crate) struct StreamChunk {
    pub(crate) response_id: Option<String>,
    pub(crate) model_version: Option<String>,
    pub(crate) usage: Option<Usage>,
    /// The first candidate's parts, calls numbered on from the stream's calls before.
    pub(crate) parts: Vec<Part>,
    pub(crate) finish_reason: Option<String>,
    /// No candidate, and the prompt was refused (`promptFeedback.blockReason`).
    pub(crate) blocked: bool,
}

/// Turns a Gemini `alt=sse` upstream stream into IR events.
///
/// Each chunk holds new parts; a `functionCall` part arrives whole and becomes a start, one
/// argument fragment and an end. `usageMetadata` is cumulative, so a usage event is sent whenever
/// it changes and the last one wins. The stream has no terminator: the chunk with a finish
/// reason (or a blocked prompt) ends it, and one that stops before that was cut off.
pub struct StreamDecoder {
    call_id_seed: String,
    started: bool,
    n_calls: usize,
    usage: Option<Usage>,
    finished: bool,
    failed: bool,
    /// Every chunk through the general path, for checks that the typed read gives the same
    /// events (`with_general_path_only`).
    general_path_only: bool,
}

impl StreamDecoder {
    /// Synthesized call ids are `call_<meta.id>_<n>`, as in [`parse_response`].
    pub fn new(meta: &ResponseMeta) -> StreamDecoder {
        StreamDecoder {
            call_id_seed: meta.id.clone(),
            started: false,
            n_calls: 0,
            usage: None,
            finished: false,
            failed: false,
            general_path_only: false,
        }
    }

    /// This decoder with its typed read off: every chunk is read through a `Value`. The typed
    /// read must give the same events wherever the general path decodes a stream; the fuzz
    /// targets check that with this.
    pub fn with_general_path_only(mut self) -> StreamDecoder {
        self.general_path_only = true;
        self
    }

    /// Decodes one upstream event. The common chunks are read straight from their bytes
    /// (`typed_read::gemini::read_stream_chunk`), the rest through a `Value`, which owns the
    /// precise errors; both give the same [`StreamChunk`].
    pub fn push(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        let data = event.data.trim();
        if data.is_empty() || self.failed {
            return Ok(());
        }
        if self.push_read(read_stream_chunk, data, out) {
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|error| ConvertError::new("stream", format!("invalid chunk JSON: {error}")))?;
        self.push_chunk(&chunk, out)
    }

    /// Decodes one chunk that `read` reads from its bytes (a `typed_read::gemini` reader), and
    /// returns whether it could; after an error every chunk counts as read, and yields nothing.
    pub(crate) fn push_read(&mut self, read: ChunkReader, data: &str, out: &mut Vec<StreamEvent>) -> bool {
        if self.failed {
            return true;
        }
        if self.general_path_only {
            return false;
        }
        match read(data.as_bytes(), &self.call_id_seed, self.n_calls) {
            Some(chunk) => {
                self.apply_chunk(chunk, out);
                true
            }
            None => false,
        }
    }

    /// Decodes one parsed chunk; Antigravity unwraps its envelope and calls this.
    pub(crate) fn push_chunk(
        &mut self,
        chunk: &Value,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ConvertError> {
        if self.failed {
            return Ok(());
        }
        if field(chunk, "error").is_some() {
            let info = parse_upstream_error(Format::Gemini, 500, chunk.to_string().as_bytes());
            out.push(StreamEvent::Error {
                kind: info.kind,
                message: info.message,
            });
            self.failed = true;
            return Ok(());
        }
        object(chunk, "")?;
        // The id and model are only read from the first chunk, and the finish reason only until
        // one came, so that a later chunk's odd member is no error.
        let (response_id, model_version) = match self.started {
            true => (None, None),
            false => (
                opt_str(chunk, &key(chunk, "responseId"), "")?.map(str::to_string),
                opt_str(chunk, &key(chunk, "modelVersion"), "")?.map(str::to_string),
            ),
        };
        let usage = field(chunk, &key(chunk, "usageMetadata")).and_then(|usage| usage_from_value(Format::Gemini, usage));
        let candidate = first_candidate(chunk)?;
        let mut parts = Vec::new();
        if let Some(candidate) = candidate
            && let Some(content) = field(candidate, "content")
        {
            let content_parts = opt_array(content, "parts", "candidates[0].content")?
                .map(Vec::as_slice)
                .unwrap_or_default();
            let seed = &self.call_id_seed;
            let first_ordinal = self.n_calls;
            parts = parse_model_parts(content_parts, &"candidates[0].content.parts".as_field_path(), &mut |n| {
                synthesized_call_id(seed, first_ordinal + n)
            })?;
        }
        let finish_reason = match (candidate, self.finished) {
            (Some(candidate), false) => {
                opt_str(candidate, &key(candidate, "finishReason"), "candidates[0]")?.map(str::to_string)
            }
            _ => None,
        };
        let blocked = candidate.is_none() && prompt_block_reason(chunk).is_some();
        self.apply_chunk(StreamChunk { response_id, model_version, usage, parts, finish_reason, blocked }, out);
        Ok(())
    }

    /// The events of one chunk, however it was read.
    fn apply_chunk(&mut self, chunk: StreamChunk, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.response_id.unwrap_or_default(),
                model: chunk.model_version.unwrap_or_default(),
            });
        }
        // Usage goes first so that an encoder opening its message on the first content (Anthropic's
        // message_start) already knows the prompt size.
        if let Some(usage) = chunk.usage
            && self.usage != Some(usage)
        {
            self.usage = Some(usage);
            out.push(StreamEvent::Usage(usage));
        }
        for part in chunk.parts {
            self.emit_part(part, out);
        }
        if self.finished {
            return;
        }
        let reason = match chunk.finish_reason {
            Some(reason) => Some(finish_reason_from_gemini(&reason, self.n_calls > 0)),
            None => chunk.blocked.then_some(FinishReason::ContentFilter),
        };
        if let Some(reason) = reason {
            out.push(StreamEvent::Finish { reason });
            self.finished = true;
        }
    }

    fn emit_part(&mut self, part: Part, out: &mut Vec<StreamEvent>) {
        match part {
            Part::Text(text) => out.push(StreamEvent::TextDelta(text.text)),
            Part::Refusal(text) => out.push(StreamEvent::TextDelta(text)),
            Part::Reasoning(reasoning) => {
                if !reasoning.text.is_empty() {
                    out.push(StreamEvent::ReasoningDelta(reasoning.text));
                }
                if let Some(signature) = reasoning.signature {
                    out.push(StreamEvent::ReasoningSignature {
                        provider: signature.provider,
                        signature: signature.value,
                    });
                }
            }
            Part::ToolCall(call) => {
                let index = self.n_calls;
                self.n_calls += 1;
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: call.id,
                    name: call.name,
                });
                // Sent while the call is open so that a Gemini encoder can put it back on the call.
                if let Some(signature) = call.signature {
                    out.push(StreamEvent::ReasoningSignature {
                        provider: signature.provider,
                        signature: signature.value,
                    });
                }
                out.push(StreamEvent::ToolCallArgsDelta {
                    index,
                    fragment: call.arguments,
                });
                out.push(StreamEvent::ToolCallEnd { index });
            }
            // Generated media has no stream event.
            Part::Image(_) | Part::Document(_) | Part::Audio { .. } | Part::ToolResult(_) => {}
        }
    }

    /// Ends the stream; one that stopped before a finish reason was cut off.
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

/// A tool call whose arguments are still arriving.
struct BufferedCall {
    index: usize,
    call: ToolCall,
}

/// Writes IR events as a Gemini `alt=sse` stream for a client: `data:` chunks, no terminator.
///
/// Text and thoughts go out as they arrive. A tool call's argument fragments are buffered until
/// the call ends, because Gemini clients expect one whole `functionCall` part. The last chunk,
/// written by `finish`, carries the finish reason and the usage.
pub struct StreamEncoder {
    id: String,
    model: String,
    open_calls: Vec<BufferedCall>,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
    failed: bool,
}

impl StreamEncoder {
    pub fn new(meta: &ResponseMeta) -> StreamEncoder {
        StreamEncoder {
            id: meta.id.clone(),
            model: meta.model.clone(),
            open_calls: Vec::new(),
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
                if !text.is_empty() {
                    self.write_chunk([PartOut::text(text)], out);
                }
            }
            StreamEvent::ReasoningDelta(text) => {
                if !text.is_empty() {
                    self.write_chunk([PartOut { thought: Some(true), ..PartOut::text(text) }], out);
                }
            }
            StreamEvent::ReasoningSignature {
                provider,
                signature,
            } => {
                if *provider != Format::Gemini {
                    return;
                }
                let signature = gemini_signature(signature);
                match self.open_calls.last_mut() {
                    Some(open) => open.call.signature = Some(signature),
                    None => self.write_chunk(
                        [PartOut { thought_signature: Some(&signature.value), ..PartOut::text("") }],
                        out,
                    ),
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.open_calls.push(BufferedCall {
                    index: *index,
                    call: ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                        signature: None,
                    },
                });
            }
            StreamEvent::ToolCallArgsDelta { index, fragment } => {
                if let Some(open) = self.open_calls.iter_mut().find(|open| open.index == *index) {
                    open.call.arguments.push_str(fragment);
                }
            }
            StreamEvent::ToolCallEnd { index } => {
                if let Some(position) = self.open_calls.iter().position(|open| open.index == *index)
                {
                    let open = self.open_calls.remove(position);
                    self.write_call(&open.call, out);
                }
            }
            StreamEvent::Finish { reason } => {
                self.flush_calls(out);
                self.finish_reason = Some(*reason);
            }
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
            StreamEvent::Error { kind, message } => {
                out.extend(render_stream_error(Format::Gemini, *kind, message));
                self.failed = true;
            }
        }
    }

    /// Writes the last chunk: the finish reason and the usage.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.failed {
            return;
        }
        self.flush_calls(out);
        let reason = self.finish_reason.unwrap_or(FinishReason::Stop);
        let chunk = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [{"text": ""}]},
                "finishReason": finish_reason_to_gemini(reason),
                "index": 0,
            }],
            "usageMetadata": usage_value(&self.usage.unwrap_or_default()),
            "modelVersion": self.model,
            "responseId": self.id,
        });
        write_json_event(out, None, &chunk);
    }

    fn flush_calls(&mut self, out: &mut Vec<u8>) {
        for open in std::mem::take(&mut self.open_calls) {
            self.write_call(&open.call, out);
        }
    }

    fn write_call(&self, call: &ToolCall, out: &mut Vec<u8>) {
        self.write_chunk([function_call_part(call, Reader::Client)], out);
    }

    /// One chunk with `parts`, serialised from borrowed parts rather than built as a `Value`:
    /// this runs for every streamed token.
    fn write_chunk<Parts: Serialize>(&self, parts: Parts, out: &mut Vec<u8>) {
        let chunk = StreamChunkOut {
            candidates: [StreamCandidateOut { content: ContentOut { parts, role: "model" }, index: 0 }],
            model_version: &self.model,
            response_id: &self.id,
        };
        write_json_event(out, None, &chunk);
    }
}

/// A streamed chunk with one candidate. Members are in alphabetical order, as the sorted map of
/// `json!` wrote them before.
#[derive(Serialize)]
struct StreamChunkOut<'chunk, Parts: Serialize> {
    candidates: [StreamCandidateOut<Parts>; 1],
    #[serde(rename = "modelVersion")]
    model_version: &'chunk str,
    #[serde(rename = "responseId")]
    response_id: &'chunk str,
}

#[derive(Serialize)]
struct StreamCandidateOut<Parts: Serialize> {
    content: ContentOut<Parts>,
    index: u32,
}

/// One Gemini content (a turn) as it is written: its parts are a `Vec` of [`PartOut`], or an
/// array of one in a streamed chunk.
#[derive(Serialize)]
struct ContentOut<Parts: Serialize> {
    parts: Parts,
    role: &'static str,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::protocol::Format;
    use crate::protocol::gemini::{
        SIGNATURE_BYPASS, SchemaStyle, StreamDecoder, StreamEncoder, parse_request, parse_response,
        sanitize_schema, usage_value, write_request,
    };
    use crate::protocol::ir::{
        FinishReason, Message, Part, Reasoning, Request, ResponseMeta, Role, Signature,
        StreamEvent, ToolCall, WriteOptions,
    };
    use crate::protocol::sse::SseEvent;
    use crate::protocol::testkit;
    use crate::protocol::usage::Usage;

    fn meta() -> ResponseMeta {
        ResponseMeta {
            id: "resp_1".to_string(),
            model: "gemini-2.5-flash".to_string(),
            created_unix: 0,
            custom_tools: Vec::new(),
        }
    }

    fn decode(events: &[SseEvent]) -> Vec<StreamEvent> {
        let mut decoder = StreamDecoder::new(&meta());
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

    fn testdata(relative: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/protocol/testdata")
            .join(relative);
        serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("fixture is JSON")
    }

    /// Every chunk of every recorded stream, and chunks of the shapes the recordings lack (calls
    /// without ids across chunks, thoughts, signatures, snake_case), decode the same read from
    /// their bytes as through a `Value`; and the recordings' chunks do take the typed path.
    #[test]
    fn typed_chunks_decode_as_the_value_path_does() {
        let decode_through_values = |events: &[SseEvent]| {
            let mut decoder = StreamDecoder::new(&meta());
            let mut out = Vec::new();
            for event in events {
                let chunk: Value = serde_json::from_str(&event.data).expect("chunk JSON");
                decoder.push_chunk(&chunk, &mut out).expect("chunk decodes");
            }
            decoder.finish(&mut out).expect("stream ends");
            out
        };
        let made_up = [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "pondering", "thought": true}, {"text": "", "thoughtSignature": "c2ln"}]}, "index": 0}],
                "usageMetadata": {"promptTokenCount": 3, "thoughtsTokenCount": 2}, "modelVersion": "gemini-2.5-pro", "responseId": "r9"}),
            json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "a", "args": {"z": 1}}}]}}],
                "usage_metadata": {"prompt_token_count": 3, "candidates_token_count": 4}}),
            json!({"candidates": [{"content": {"parts": [{"text": "and "}, {"functionCall": {"name": "b"}, "thoughtSignature": "c2lnMg=="}]}}]}),
            json!({"candidates": [{"content": {"parts": [{"text": "done"}]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 9, "totalTokenCount": 12}}),
        ];
        let made_up: Vec<SseEvent> = testkit::parse_pieces(&[made_up.iter().map(|chunk| format!("data: {chunk}\n\n")).collect::<String>().as_bytes()]);
        let mut streams = vec![("made-up".to_string(), made_up)];
        for name in testkit::all_streams().into_iter().filter(|name| name.starts_with("gemini/")) {
            let events = testkit::parse_pieces(&[&testkit::stream_bytes(&name)]);
            streams.push((name, events));
        }
        let mut typed_chunks = 0;
        for (name, events) in &streams {
            assert_eq!(decode(events), decode_through_values(events), "{name}");
            typed_chunks += events.iter().filter(|event| super::read_stream_chunk(event.data.as_bytes(), "resp_1", 0).is_some()).count();
        }
        let all_chunks: usize = streams.iter().map(|(_, events)| events.len()).sum();
        assert!(typed_chunks * 10 >= all_chunks * 9, "{typed_chunks} of {all_chunks} chunks read typed");
    }

    #[test]
    fn recorded_streams_decode_the_same_however_they_are_split() {
        let names: Vec<String> = testkit::all_streams()
            .into_iter()
            .filter(|name| name.starts_with("gemini/"))
            .collect();
        assert_eq!(names.len(), 6);
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

    /// protocols.md §8 case 43: the last chunk is an empty text part carrying only a signature.
    #[test]
    fn case_43_trailing_signature_is_kept_without_a_text_delta() {
        let events = recorded("gemini/gemini3-text-trailing-signature-stream.chunks.txt");
        assert!(
            !events
                .iter()
                .any(|event| matches!(event, StreamEvent::TextDelta(text) if text.is_empty()))
        );
        let signature = events.iter().find_map(|event| match event {
            StreamEvent::ReasoningSignature {
                provider,
                signature,
            } => Some((*provider, signature.len())),
            _ => None,
        });
        assert!(matches!(signature, Some((Format::Gemini, length)) if length > 100));
        let usages: Vec<u64> = events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::Usage(usage) => Some(usage.output_tokens),
                _ => None,
            })
            .collect();
        assert_eq!(usages.last(), Some(&208), "the last usageMetadata wins");
    }

    #[test]
    fn a_function_call_is_one_start_one_fragment_and_an_end() {
        let events = recorded("gemini/gemini3-function-call-signature-stream.chunks.txt");
        let calls: Vec<&StreamEvent> = events
            .iter()
            .filter(|event| {
                matches!(
                    event,
                    StreamEvent::ToolCallStart { .. }
                        | StreamEvent::ToolCallArgsDelta { .. }
                        | StreamEvent::ToolCallEnd { .. }
                        | StreamEvent::ReasoningSignature { .. }
                )
            })
            .collect();
        assert_eq!(calls.len(), 4);
        assert!(
            matches!(calls[0], StreamEvent::ToolCallStart { index: 0, id, name }
            if id == "call_resp_1_0" && name == "weather")
        );
        assert!(matches!(
            calls[1],
            StreamEvent::ReasoningSignature {
                provider: Format::Gemini,
                ..
            }
        ));
        assert!(
            matches!(calls[2], StreamEvent::ToolCallArgsDelta { index: 0, fragment }
            if fragment == r#"{"location":"San Francisco"}"#)
        );
        assert_eq!(calls[3], &StreamEvent::ToolCallEnd { index: 0 });
        assert!(events.contains(&StreamEvent::Finish {
            reason: FinishReason::ToolCalls
        }));
    }

    /// protocols.md §8 case 24: proto JSON accepts both spellings, so both give the same IR.
    #[test]
    fn case_24_camel_and_snake_case_give_the_same_request() {
        let camel = parse_request(&testdata(
            "request_gemini_to_chat/case24_camel_case_tool_history.in.json",
        ))
        .unwrap();
        let snake = parse_request(&testdata(
            "request_gemini_to_chat/case24_snake_case_tool_history.in.json",
        ))
        .unwrap();
        assert_eq!(camel, snake);
        assert_eq!(camel.model, "", "the model comes from the URL");
        assert_eq!(camel.max_tokens, Some(256));
        assert_eq!(camel.stop, ["END"]);
    }

    #[test]
    fn signatures_go_back_where_gemini_put_them() {
        let body = testkit::provider_json("gemini/thoughts-function-call-response.json");
        let response = parse_response(&body, &meta()).unwrap();
        let call = response
            .parts
            .iter()
            .find_map(|part| match part {
                Part::ToolCall(call) => Some(call.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(call.id, "call_resp_1_0");
        assert_eq!(call.signature.as_ref().unwrap().provider, Format::Gemini);
        let request = Request {
            messages: vec![
                Message::new(Role::User, vec![Part::text("Days until New Year's Eve?")]),
                Message::new(
                    Role::Assistant,
                    vec![
                        Part::text("Counting."),
                        Part::Reasoning(Reasoning {
                            text: String::new(),
                            signature: Some(Signature {
                                provider: Format::Gemini,
                                value: "text-signature".to_string(),
                            }),
                            redacted: false,
                        }),
                        Part::ToolCall(call.clone()),
                    ],
                ),
            ],
            ..Request::default()
        };
        let written = serde_json::to_value(write_request(&request, &WriteOptions::default()).unwrap()).unwrap();
        let parts = &written["contents"][1]["parts"];
        assert_eq!(
            parts[0],
            json!({"text": "Counting.", "thoughtSignature": "text-signature"})
        );
        assert_eq!(
            parts[1]["thoughtSignature"],
            call.signature.unwrap().value,
            "a signed call keeps its own signature, not the bypass value"
        );
        assert_eq!(parts.as_array().unwrap().len(), 2);
    }

    #[test]
    fn foreign_signatures_never_reach_gemini() {
        let call = ToolCall {
            id: "toolu_1".to_string(),
            name: "now".to_string(),
            arguments: "{}".to_string(),
            signature: None,
        };
        let thinking = Part::Reasoning(Reasoning {
            text: "Claude thinking".to_string(),
            signature: Some(Signature {
                provider: Format::Anthropic,
                value: "anthropic-signature".to_string(),
            }),
            redacted: false,
        });
        let request = Request {
            messages: vec![
                Message::new(Role::User, vec![Part::text("Time?")]),
                Message::new(Role::Assistant, vec![thinking, Part::ToolCall(call)]),
            ],
            ..Request::default()
        };
        let written = serde_json::to_value(write_request(&request, &WriteOptions::default()).unwrap()).unwrap();
        assert_eq!(
            written["contents"][1]["parts"],
            json!([{"functionCall": {"name": "now", "args": {}}, "thoughtSignature": SIGNATURE_BYPASS}])
        );
    }

    #[test]
    fn schema_sanitizer_only_touches_keyword_positions() {
        let schema = json!({
            "type": "object",
            "properties": {
                "default": {"type": "string", "default": "x"},
                "const": {"const": 3},
                "node": {"$ref": "#/$defs/node"}
            },
            "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}
        });
        let sanitized = sanitize_schema(&schema, SchemaStyle::JsonSchema);
        assert_eq!(
            sanitized["properties"]["default"],
            json!({"type": "string"})
        );
        assert_eq!(sanitized["properties"]["const"], json!({"enum": [3]}));
        assert!(sanitized.get("$defs").is_none());
        // A recursive reference is inlined a bounded number of times and then ends in an object.
        let mut depth = 0;
        let mut node = &sanitized["properties"]["node"];
        while let Some(next) = node.pointer("/properties/next") {
            node = next;
            depth += 1;
            assert!(depth < 20, "recursion did not stop");
        }
        assert_eq!(node, &json!({"type": "object"}));
        let openapi = sanitize_schema(&schema, SchemaStyle::OpenApi);
        assert_eq!(openapi["type"], "OBJECT");
        assert_eq!(openapi["properties"]["default"]["type"], "STRING");
    }

    #[test]
    fn usage_metadata_reports_thoughts_apart() {
        let usage = Usage {
            input_tokens: 100,
            output_tokens: 70,
            cached_tokens: 40,
            cache_write_tokens: 0,
            reasoning_tokens: 50,
        };
        assert_eq!(
            usage_value(&usage),
            json!({
                "promptTokenCount": 100,
                "candidatesTokenCount": 20,
                "thoughtsTokenCount": 50,
                "cachedContentTokenCount": 40,
                "totalTokenCount": 170,
            })
        );
    }

    /// What a stream means, independent of how it was cut into events.
    fn summary(
        events: &[StreamEvent],
    ) -> (String, String, Vec<(String, String)>, Option<FinishReason>) {
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        let mut finish = None;
        for event in events {
            match event {
                StreamEvent::TextDelta(delta) => text.push_str(delta),
                StreamEvent::ReasoningDelta(delta) => reasoning.push_str(delta),
                StreamEvent::ToolCallStart { name, .. } => {
                    calls.push((name.clone(), String::new()))
                }
                StreamEvent::ToolCallArgsDelta { fragment, .. } => {
                    calls.last_mut().unwrap().1.push_str(fragment)
                }
                StreamEvent::Finish { reason } => finish = Some(*reason),
                _ => {}
            }
        }
        (text, reasoning, calls, finish)
    }

    /// The encoder's output is a Gemini stream that the decoder reads back to the same content.
    #[test]
    fn encoded_streams_decode_to_the_same_content() {
        let events = vec![
            StreamEvent::Start {
                id: "chatcmpl-1".to_string(),
                model: "gpt-4o".to_string(),
            },
            StreamEvent::ReasoningDelta("Thinking.".to_string()),
            StreamEvent::TextDelta("Hello".to_string()),
            StreamEvent::TextDelta(String::new()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_a".to_string(),
                name: "get_weather".to_string(),
            },
            StreamEvent::ToolCallArgsDelta {
                index: 0,
                fragment: "{\"city\":".to_string(),
            },
            StreamEvent::ToolCallArgsDelta {
                index: 0,
                fragment: "\"Oslo\"}".to_string(),
            },
            StreamEvent::Finish {
                reason: FinishReason::ToolCalls,
            },
            StreamEvent::Usage(Usage {
                input_tokens: 9,
                output_tokens: 4,
                ..Usage::default()
            }),
        ];
        let mut encoder = StreamEncoder::new(&meta());
        let mut bytes = Vec::new();
        for event in &events {
            encoder.encode(event, &mut bytes);
        }
        encoder.finish(&mut bytes);
        let decoded = decode(&testkit::parse_pieces(&[&bytes]));
        assert_eq!(
            summary(&decoded),
            (
                "Hello".to_string(),
                "Thinking.".to_string(),
                vec![("get_weather".to_string(), r#"{"city":"Oslo"}"#.to_string())],
                Some(FinishReason::ToolCalls)
            )
        );
        assert!(decoded.contains(&StreamEvent::Start {
            id: "chatcmpl-1".to_string(),
            model: "gpt-4o".to_string()
        }));
        assert!(decoded.contains(&StreamEvent::Usage(Usage {
            input_tokens: 9,
            output_tokens: 4,
            ..Usage::default()
        })));
    }
}
