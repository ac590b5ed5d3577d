//! Reads Anthropic Messages requests and responses from their bytes into the IR (see
//! `typed_read`); the rules are `anthropic::parse_request`'s and `parse_response`'s. Blocks only Anthropic's own servers understand (search
//! results, documents built from content blocks) are left to the `Value` reader.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::protocol::anthropic::{
    CLAUDE_CODE_BILLING_LINE, anthropic_signature, finish_reason_from_anthropic, parse_output_format, parse_thinking,
    parse_tool_choice,
};
use crate::protocol::usage::AnthropicUsage;
use crate::protocol::ir::{
    Media, MediaSource, Message, Part, Reasoning, Request, Response, Role, TextPart, ToolCall, JsonSchema, ToolDefinition, ToolResult,
};
use crate::protocol::typed_read::{JsonObject, TextOrList, optional_borrowed_str, read_body};

#[derive(Deserialize)]
struct RequestIn<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    model: Option<Cow<'a, str>>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    stream: Option<bool>,
    #[serde(borrow)]
    system: Option<TextOrList<JsonObject<BlockIn<'a>>>>,
    #[serde(borrow)]
    messages: Option<Vec<JsonObject<MessageIn<'a>>>>,
    #[serde(borrow)]
    tools: Option<Vec<JsonObject<ToolIn<'a>>>>,
    stop_sequences: Option<Vec<String>>,
    // Small and rare: read as `Value`s by the `Value` reader's own functions.
    tool_choice: Option<Value>,
    thinking: Option<Value>,
    output_config: Option<Value>,
    metadata: Option<JsonObject<MetadataIn>>,
}

#[derive(Deserialize)]
struct MetadataIn {
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<TextOrList<JsonObject<BlockIn<'a>>>>,
}

/// Any content block: the members of every block type this reader handles, each optional.
#[derive(Deserialize)]
struct BlockIn<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "optional_borrowed_str")]
    kind: Option<Cow<'a, str>>,
    text: Option<String>,
    cache_control: Option<Value>,
    #[serde(borrow)]
    source: Option<JsonObject<SourceIn<'a>>>,
    title: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<Value>,
    tool_use_id: Option<String>,
    #[serde(borrow)]
    content: Option<TextOrList<JsonObject<BlockIn<'a>>>>,
    is_error: Option<bool>,
    thinking: Option<String>,
    signature: Option<String>,
    data: Option<String>,
}

#[derive(Deserialize)]
struct SourceIn<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "optional_borrowed_str")]
    kind: Option<Cow<'a, str>>,
    media_type: Option<String>,
    data: Option<String>,
    url: Option<String>,
    file_id: Option<String>,
}

#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "optional_borrowed_str")]
    kind: Option<Cow<'a, str>>,
    name: Option<String>,
    description: Option<String>,
    #[serde(borrow)]
    input_schema: Option<&'a RawValue>,
}

/// Reads a Messages request, or `None` when `anthropic::parse_request` must.
pub fn read_request(body: &[u8]) -> Option<Request> {
    let body: RequestIn = read_body(body)?;
    let mut request = Request {
        model: body.model.map(Cow::into_owned).unwrap_or_default(),
        max_tokens: body.max_tokens,
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: body.top_k,
        stream: body.stream.unwrap_or(false),
        ..Request::default()
    };
    match body.system {
        None => {}
        Some(TextOrList::Text(text)) if text.is_empty() => {}
        Some(TextOrList::Text(text)) => request.messages.push(Message::new(Role::System, vec![Part::text(text)])),
        Some(TextOrList::List(blocks)) => {
            let mut parts = Vec::new();
            for JsonObject(block) in blocks {
                let text = block.text?;
                // Claude Code's billing line, dropped as `anthropic::parse_request` explains.
                if !text.starts_with(CLAUDE_CODE_BILLING_LINE) {
                    parts.push(Part::Text(TextPart { text, cache_control: block.cache_control }));
                }
            }
            if !parts.is_empty() {
                request.messages.push(Message::new(Role::System, parts));
            }
        }
    }
    let mut call_names: HashMap<String, String> = HashMap::new();
    for JsonObject(message) in body.messages? {
        read_message(message, &mut call_names, &mut request.messages)?;
    }
    for JsonObject(tool) in body.tools.into_iter().flatten() {
        if tool.kind.as_deref().is_some_and(|kind| kind != "custom") {
            continue;
        }
        request.tools.push(ToolDefinition {
            name: tool.name?,
            description: tool.description,
            parameters: tool.input_schema.map_or_else(JsonSchema::empty_object, JsonSchema::from_raw),
            strict: None,
        });
    }
    if let Some(choice) = &body.tool_choice {
        parse_tool_choice(choice, &mut request).ok()?;
    }
    request.stop = body.stop_sequences.unwrap_or_default();
    request.reasoning = parse_thinking(body.thinking.as_ref(), body.output_config.as_ref()).ok()?;
    request.response_format = parse_output_format(body.output_config.as_ref()).ok()?;
    request.user = body.metadata.and_then(|JsonObject(metadata)| metadata.user_id);
    Some(request)
}

/// One message; a user turn with tool results becomes a tool message and a user message, as in
/// `anthropic::parse_request`.
fn read_message(message: MessageIn, call_names: &mut HashMap<String, String>, out: &mut Vec<Message>) -> Option<()> {
    let role = message.role?;
    let blocks = match message.content {
        None => Vec::new(),
        Some(TextOrList::Text(text)) => vec![JsonObject(text_block(text))],
        Some(TextOrList::List(blocks)) => blocks,
    };
    match role.as_ref() {
        "user" => {
            let had_blocks = !blocks.is_empty();
            let mut results = Vec::new();
            let mut parts = Vec::new();
            for JsonObject(block) in blocks {
                if block.kind.as_deref()? == "tool_result" {
                    results.push(Part::ToolResult(read_tool_result(block, call_names)?));
                } else {
                    parts.extend(read_user_block(block)?);
                }
            }
            if !results.is_empty() {
                out.push(Message::new(Role::Tool, results));
            }
            if !parts.is_empty() || !had_blocks {
                out.push(Message::new(Role::User, parts));
            }
        }
        "assistant" => {
            let mut parts = Vec::new();
            for JsonObject(block) in blocks {
                if let Some(part) = read_assistant_block(block)? {
                    if let Part::ToolCall(call) = &part {
                        call_names.insert(call.id.clone(), call.name.clone());
                    }
                    parts.push(part);
                }
            }
            out.push(Message::new(Role::Assistant, parts));
        }
        "system" => {
            let mut parts = Vec::new();
            for JsonObject(block) in blocks {
                // Only text fills a system turn; other blocks are dropped.
                if block.kind.as_deref()? == "text" {
                    parts.push(Part::Text(TextPart { text: block.text?, cache_control: block.cache_control }));
                }
            }
            if !parts.is_empty() {
                out.push(Message::new(Role::System, parts));
            }
        }
        _ => return None,
    }
    Some(())
}

#[derive(Deserialize)]
struct MessageBodyIn<'a> {
    id: Option<String>,
    model: Option<String>,
    #[serde(borrow)]
    content: Option<Vec<JsonObject<BlockIn<'a>>>>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    stop_reason: Option<Cow<'a, str>>,
    usage: Option<JsonObject<AnthropicUsage>>,
}

/// Reads a `message` body, or `None` when `anthropic::parse_response` must.
pub fn read_response(body: &[u8]) -> Option<Response> {
    let body: MessageBodyIn = read_body(body)?;
    let mut parts = Vec::new();
    for JsonObject(block) in body.content.into_iter().flatten() {
        parts.extend(read_assistant_block(block)?);
    }
    Some(Response {
        id: body.id.unwrap_or_default(),
        model: body.model.unwrap_or_default(),
        parts,
        finish_reason: finish_reason_from_anthropic(body.stop_reason.as_deref().unwrap_or("end_turn")),
        usage: body.usage.map(|JsonObject(usage)| usage.normalize()),
    })
}

/// A string content, as the text block it stands for.
fn text_block<'a>(text: String) -> BlockIn<'a> {
    BlockIn {
        kind: Some(Cow::Borrowed("text")),
        text: Some(text),
        cache_control: None,
        source: None,
        title: None,
        id: None,
        name: None,
        input: None,
        tool_use_id: None,
        content: None,
        is_error: None,
        thinking: None,
        signature: None,
        data: None,
    }
}

/// A block of a user turn (or of a tool result): `None` for a block the `Value` reader must
/// handle, `Some(None)` for one that is dropped.
fn read_user_block(block: BlockIn) -> Option<Option<Part>> {
    Some(match block.kind?.as_ref() {
        "text" => Some(Part::Text(TextPart { text: block.text?, cache_control: block.cache_control })),
        "image" => Some(Part::Image(read_media(block.source?.0, block.title)?)),
        "document" => Some(Part::Document(read_media(block.source?.0, block.title)?)),
        // A file in Anthropic's code-execution container, which other upstreams do not have.
        "container_upload" => None,
        _ => return None,
    })
}

fn read_media(source: SourceIn, filename: Option<String>) -> Option<Media> {
    let source = match source.kind?.as_ref() {
        "base64" => MediaSource::Base64 { media_type: source.media_type?, data: source.data? },
        "url" => MediaSource::Url(source.url?),
        "file" => MediaSource::FileId(source.file_id?),
        "text" => MediaSource::Text(source.data?),
        _ => return None,
    };
    Some(Media { source, detail: None, filename })
}

fn read_tool_result(block: BlockIn, call_names: &HashMap<String, String>) -> Option<ToolResult> {
    let call_id = block.tool_use_id?;
    let content = match block.content {
        None => Vec::new(),
        Some(TextOrList::Text(text)) => vec![Part::text(text)],
        Some(TextOrList::List(blocks)) => {
            let mut parts = Vec::new();
            for JsonObject(inner) in blocks {
                parts.extend(read_user_block(inner)?);
            }
            parts
        }
    };
    Some(ToolResult {
        name: call_names.get(&call_id).cloned(),
        call_id,
        content,
        is_error: block.is_error.unwrap_or(false),
    })
}

/// A block of an assistant turn; `Some(None)` for server-side blocks, which are dropped.
fn read_assistant_block(block: BlockIn) -> Option<Option<Part>> {
    Some(Some(match block.kind?.as_ref() {
        "text" => Part::text(block.text?),
        "thinking" => Part::Reasoning(Reasoning {
            text: block.thinking?,
            signature: anthropic_signature(block.signature.as_deref()),
            redacted: false,
        }),
        "redacted_thinking" => Part::Reasoning(Reasoning {
            text: String::new(),
            signature: anthropic_signature(Some(block.data?.as_str())),
            redacted: true,
        }),
        "tool_use" => Part::ToolCall(ToolCall {
            id: block.id?,
            name: block.name?,
            arguments: block.input.map_or_else(|| "{}".to_string(), |input| input.to_string()),
            signature: None,
        }),
        _ => return Some(None),
    }))
}
