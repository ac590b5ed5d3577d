//! The client side of wire-format tests: builds a request in each client protocol (system prompt,
//! user text, optional inline image, function tool and reasoning control), and validates what
//! came back strictly against the protocol's grammar before reducing it to a [`Summary`].
//!
//! The validators check what a client SDK relies on: required fields and their types, finish
//! and stop reasons, usage that adds up (no double-counted cache or reasoning tokens), and for
//! streams the event grammar: Chat's role chunk, tool-call indexes and `[DONE]`; Anthropic's
//! `message_start`, contiguous block indexes, matching delta kinds and `message_stop`;
//! Responses' `sequence_number`s and item/part pairing up to `response.completed`; Gemini's
//! complete chunks with `finishReason` and `usageMetadata` on the last one.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::support::http_client::{TestResponse, request, sse_events};
use crate::support::wire::{
    Checked, ClientProtocol, FinishKind, Summary, ToolCallSummary, UsageSummary, array_field,
    brief, count_field, ensure, expect_field, field, non_empty_string_field, optional_count_field,
    optional_string_field, parse_arguments, string_field,
};
use crate::support::wire_upstream::{InlineImage, ToolExpectation};

/// What the client asks the gateway for.
#[derive(Clone, Debug)]
pub struct ClientAsk {
    /// The group name, which is the model.
    pub group: String,
    pub stream: bool,
    pub system: Option<String>,
    pub user_text: String,
    /// A system turn after the user's turn, as Claude Code 2.1 sends them inside `messages`.
    /// Chat and Responses clients send a `system` message or item at that position; Gemini has
    /// no system turn inside `contents`, so its client adds a second `systemInstruction` part.
    pub mid_system: Option<String>,
    pub image: Option<InlineImage>,
    /// A function tool with one required string property.
    pub tool: Option<ToolExpectation>,
    /// Turn reasoning on with a medium effort (or a 2048-token budget where budgets are used).
    pub reasoning: bool,
    pub max_tokens: u64,
}

/// A request ready to send.
#[derive(Clone, Debug)]
pub struct ClientCall {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl ClientCall {
    pub fn send(&self, address: SocketAddr) -> TestResponse {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        request(
            address,
            "POST",
            &self.path,
            &headers,
            self.body.to_string().as_bytes(),
        )
    }
}

/// The Anthropic beta under which Claude Code sends system turns inside `messages`.
pub const MID_CONVERSATION_SYSTEM_BETA: &str = "mid-conversation-system-2026-04-07";

/// The thinking budget clients that use budgets ask for; below `ClientAsk::max_tokens`.
pub const CLIENT_THINKING_BUDGET: u64 = 2048;

fn tool_schema(tool: &ToolExpectation) -> Value {
    json!({"type": "object", "properties": {tool.property.clone(): {"type": "string", "description": "The city name"}}, "required": [tool.property]})
}

/// The request a client of `protocol` sends for `ask`, authenticated with the client key `key`
/// the way that protocol's SDK sends it.
pub fn client_call(protocol: ClientProtocol, ask: &ClientAsk, key: &str) -> ClientCall {
    let content_type = ("content-type".to_string(), "application/json".to_string());
    match protocol {
        ClientProtocol::OpenaiChat => {
            let mut messages = Vec::new();
            if let Some(system) = &ask.system {
                messages.push(json!({"role": "system", "content": system}));
            }
            let user_content = match &ask.image {
                Some(image) => {
                    json!([{"type": "text", "text": ask.user_text}, {"type": "image_url", "image_url": {"url": image.data_url()}}])
                }
                None => json!(ask.user_text),
            };
            messages.push(json!({"role": "user", "content": user_content}));
            if let Some(mid_system) = &ask.mid_system {
                messages.push(json!({"role": "system", "content": mid_system}));
            }
            let mut body = json!({"model": ask.group, "messages": messages, "max_completion_tokens": ask.max_tokens});
            if let Some(tool) = &ask.tool {
                body["tools"] = json!([{"type": "function", "function": {"name": tool.name, "description": "Current weather of a city", "parameters": tool_schema(tool)}}]);
            }
            if ask.reasoning {
                body["reasoning_effort"] = json!("medium");
            }
            if ask.stream {
                body["stream"] = json!(true);
                body["stream_options"] = json!({"include_usage": true});
            }
            ClientCall {
                path: "/v1/chat/completions".to_string(),
                headers: vec![
                    content_type,
                    ("authorization".to_string(), format!("Bearer {key}")),
                ],
                body,
            }
        }
        ClientProtocol::OpenaiResponses => {
            let mut content = vec![json!({"type": "input_text", "text": ask.user_text})];
            if let Some(image) = &ask.image {
                content.push(json!({"type": "input_image", "image_url": image.data_url()}));
            }
            let mut input = vec![json!({"role": "user", "content": content})];
            if let Some(mid_system) = &ask.mid_system {
                input.push(json!({"role": "system", "content": [{"type": "input_text", "text": mid_system}]}));
            }
            let mut body =
                json!({"model": ask.group, "input": input, "max_output_tokens": ask.max_tokens});
            if let Some(system) = &ask.system {
                body["instructions"] = json!(system);
            }
            if let Some(tool) = &ask.tool {
                body["tools"] = json!([{"type": "function", "name": tool.name, "description": "Current weather of a city", "parameters": tool_schema(tool)}]);
            }
            if ask.reasoning {
                body["reasoning"] = json!({"effort": "medium", "summary": "auto"});
            }
            if ask.stream {
                body["stream"] = json!(true);
            }
            ClientCall {
                path: "/v1/responses".to_string(),
                headers: vec![
                    content_type,
                    ("authorization".to_string(), format!("Bearer {key}")),
                ],
                body,
            }
        }
        ClientProtocol::Anthropic => {
            let mut content = vec![json!({"type": "text", "text": ask.user_text})];
            if let Some(image) = &ask.image {
                content.push(json!({"type": "image", "source": {"type": "base64", "media_type": image.media_type, "data": image.data}}));
            }
            let mut messages = vec![json!({"role": "user", "content": content})];
            if let Some(mid_system) = &ask.mid_system {
                messages.push(json!({"role": "system", "content": mid_system}));
            }
            let mut body =
                json!({"model": ask.group, "max_tokens": ask.max_tokens, "messages": messages});
            if let Some(system) = &ask.system {
                body["system"] = json!(system);
            }
            if let Some(tool) = &ask.tool {
                body["tools"] = json!([{"name": tool.name, "description": "Current weather of a city", "input_schema": tool_schema(tool)}]);
            }
            if ask.reasoning {
                body["thinking"] =
                    json!({"type": "enabled", "budget_tokens": CLIENT_THINKING_BUDGET});
            }
            if ask.stream {
                body["stream"] = json!(true);
            }
            let mut headers = vec![
                content_type,
                ("x-api-key".to_string(), key.to_string()),
                ("anthropic-version".to_string(), "2023-06-01".to_string()),
            ];
            if ask.mid_system.is_some() {
                // Claude Code names the beta that allows system turns inside `messages`.
                headers.push((
                    "anthropic-beta".to_string(),
                    MID_CONVERSATION_SYSTEM_BETA.to_string(),
                ));
            }
            ClientCall {
                path: "/v1/messages".to_string(),
                headers,
                body,
            }
        }
        ClientProtocol::Gemini => {
            let mut parts = vec![json!({"text": ask.user_text})];
            if let Some(image) = &ask.image {
                parts.push(
                    json!({"inlineData": {"mimeType": image.media_type, "data": image.data}}),
                );
            }
            let mut generation_config = json!({"maxOutputTokens": ask.max_tokens});
            if ask.reasoning {
                generation_config["thinkingConfig"] =
                    json!({"thinkingBudget": CLIENT_THINKING_BUDGET, "includeThoughts": true});
            }
            let mut body = json!({"contents": [{"role": "user", "parts": parts}], "generationConfig": generation_config});
            let mut system_parts: Vec<Value> = ask
                .system
                .iter()
                .map(|system| json!({"text": system}))
                .collect();
            system_parts.extend(
                ask.mid_system
                    .iter()
                    .map(|mid_system| json!({"text": mid_system})),
            );
            if !system_parts.is_empty() {
                body["systemInstruction"] = json!({"parts": system_parts});
            }
            if let Some(tool) = &ask.tool {
                body["tools"] = json!([{"functionDeclarations": [{"name": tool.name, "description": "Current weather of a city", "parameters": tool_schema(tool)}]}]);
            }
            let path = if ask.stream {
                format!("/v1beta/models/{}:streamGenerateContent?alt=sse", ask.group)
            } else {
                format!("/v1beta/models/{}:generateContent", ask.group)
            };
            ClientCall {
                path,
                headers: vec![
                    content_type,
                    ("x-goog-api-key".to_string(), key.to_string()),
                ],
                body,
            }
        }
    }
}

/// How strict a validation is about things recorded streams may lack.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Usage must be reported (always, for a client that asked for it).
    pub expect_usage: bool,
}

impl Rules {
    pub const STRICT: Rules = Rules { expect_usage: true };
}

/// Validates a whole gateway response for a client of `protocol` and summarizes it.
pub fn validate_response(
    protocol: ClientProtocol,
    stream: bool,
    response: &TestResponse,
    rules: Rules,
) -> Checked<Summary> {
    ensure(response.status == 200, || {
        format!("HTTP {}: {}", response.status, cut(&response.text()))
    })?;
    let content_type = response.header("content-type").unwrap_or("");
    if stream {
        ensure(content_type.starts_with("text/event-stream"), || {
            format!("content-type {content_type:?} for a stream")
        })?;
        validate_stream(protocol, &response.body, rules)
    } else {
        ensure(content_type.starts_with("application/json"), || {
            format!("content-type {content_type:?} for a JSON answer")
        })?;
        let body: Value = serde_json::from_slice(&response.body).map_err(|error| {
            format!("the body is not JSON ({error}): {}", cut(&response.text()))
        })?;
        validate_complete(protocol, &body, rules)
    }
}

/// Validates a complete (non-stream) body of `protocol`.
pub fn validate_complete(protocol: ClientProtocol, body: &Value, rules: Rules) -> Checked<Summary> {
    match protocol {
        ClientProtocol::OpenaiChat => chat_complete(body, rules),
        ClientProtocol::OpenaiResponses => responses_complete(body, rules),
        ClientProtocol::Anthropic => anthropic_complete(body, rules),
        ClientProtocol::Gemini => gemini_complete(body, rules),
    }
}

/// Validates an SSE body of `protocol`.
pub fn validate_stream(protocol: ClientProtocol, body: &[u8], rules: Rules) -> Checked<Summary> {
    let events = sse_events(body);
    ensure(!events.is_empty(), || {
        "the stream has no events".to_string()
    })?;
    match protocol {
        ClientProtocol::OpenaiChat => chat_stream(&events, rules),
        ClientProtocol::OpenaiResponses => responses_stream(&events, rules),
        ClientProtocol::Anthropic => anthropic_stream(&events, rules),
        ClientProtocol::Gemini => gemini_stream(&events, rules),
    }
}

fn cut(text: &str) -> String {
    if text.len() <= 400 {
        return text.to_string();
    }
    let mut end = 400;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn parse_event_json(data: &str, position: usize) -> Checked<Value> {
    let value: Value = serde_json::from_str(data).map_err(|error| {
        format!(
            "event {position}: data is not JSON ({error}): {}",
            cut(data)
        )
    })?;
    ensure(value.is_object(), || {
        format!("event {position}: data is not a JSON object: {}", cut(data))
    })?;
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// OpenAI Chat Completions

fn chat_finish(reason: &str) -> FinishKind {
    match reason {
        "stop" => FinishKind::Stop,
        "tool_calls" => FinishKind::ToolCalls,
        "length" => FinishKind::Length,
        "content_filter" => FinishKind::ContentFilter,
        other => FinishKind::Other(other.to_string()),
    }
}

fn chat_usage(usage: &Value, path: &str) -> Checked<UsageSummary> {
    let prompt = count_field(usage, "prompt_tokens", path)?;
    let completion = count_field(usage, "completion_tokens", path)?;
    let total = count_field(usage, "total_tokens", path)?;
    ensure(total == prompt + completion, || {
        format!(
            "{path}: total_tokens {total} != prompt_tokens {prompt} + completion_tokens {completion}"
        )
    })?;
    let cached = match usage.get("prompt_tokens_details") {
        None | Some(Value::Null) => 0,
        Some(details) => optional_count_field(
            details,
            "cached_tokens",
            &format!("{path}.prompt_tokens_details"),
        )?,
    };
    let reasoning = match usage.get("completion_tokens_details") {
        None | Some(Value::Null) => 0,
        Some(details) => optional_count_field(
            details,
            "reasoning_tokens",
            &format!("{path}.completion_tokens_details"),
        )?,
    };
    ensure(cached <= prompt, || {
        format!(
            "{path}: cached_tokens {cached} > prompt_tokens {prompt} (prompt_tokens must include them)"
        )
    })?;
    ensure(reasoning <= completion, || {
        format!(
            "{path}: reasoning_tokens {reasoning} > completion_tokens {completion} (completion_tokens must include them)"
        )
    })?;
    Ok(UsageSummary {
        input: prompt,
        cached,
        output: completion,
        reasoning,
    })
}

fn chat_complete(body: &Value, rules: Rules) -> Checked<Summary> {
    expect_field(body, "object", &json!("chat.completion"), "body")?;
    non_empty_string_field(body, "id", "body")?;
    count_field(body, "created", "body")?;
    string_field(body, "model", "body")?;
    let choices = array_field(body, "choices", "body")?;
    ensure(choices.len() == 1, || {
        format!("body.choices: expected one choice, got {}", choices.len())
    })?;
    let choice = &choices[0];
    expect_field(choice, "index", &json!(0), "body.choices[0]")?;
    let message = field(choice, "message", "body.choices[0]")?;
    expect_field(
        message,
        "role",
        &json!("assistant"),
        "body.choices[0].message",
    )?;
    let mut summary = Summary {
        text: optional_string_field(message, "content", "body.choices[0].message")?
            .unwrap_or("")
            .to_string(),
        reasoning: optional_string_field(message, "reasoning_content", "body.choices[0].message")?
            .unwrap_or("")
            .to_string(),
        ..Summary::default()
    };
    match message.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (position, call) in calls.iter().enumerate() {
                let path = format!("body.choices[0].message.tool_calls[{position}]");
                let id = non_empty_string_field(call, "id", &path)?;
                expect_field(call, "type", &json!("function"), &path)?;
                let function = field(call, "function", &path)?;
                let name = non_empty_string_field(function, "name", &format!("{path}.function"))?;
                let arguments = string_field(function, "arguments", &format!("{path}.function"))?;
                summary.tool_calls.push(ToolCallSummary {
                    id: Some(id.to_string()),
                    name: name.to_string(),
                    arguments: parse_arguments(arguments, &format!("{path}.function.arguments"))?,
                });
            }
        }
        Some(other) => {
            return Err(format!(
                "body.choices[0].message.tool_calls: expected an array, got {}",
                brief(other)
            ));
        }
    }
    summary.finish = Some(chat_finish(string_field(
        choice,
        "finish_reason",
        "body.choices[0]",
    )?));
    match body.get("usage") {
        Some(usage @ Value::Object(_)) => summary.usage = Some(chat_usage(usage, "body.usage")?),
        _ if rules.expect_usage => return Err("body.usage: missing".to_string()),
        _ => {}
    }
    Ok(summary)
}

/// A tool call being assembled from stream deltas.
struct PendingCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

fn chat_stream(events: &[(Option<String>, String)], rules: Rules) -> Checked<Summary> {
    let (last_name, last_data) = events.last().expect("events are not empty");
    ensure(last_name.is_none() && last_data == "[DONE]", || {
        format!(
            "the last event must be data: [DONE], got {last_name:?} {}",
            cut(last_data)
        )
    })?;
    let mut summary = Summary::default();
    let mut calls: Vec<PendingCall> = Vec::new();
    let mut stream_id: Option<String> = None;
    let mut finished = false;
    let mut usage_seen = false;
    for (position, (name, data)) in events[..events.len() - 1].iter().enumerate() {
        ensure(name.is_none(), || {
            format!("event {position}: Chat events have no event name, got {name:?}")
        })?;
        ensure(data != "[DONE]", || {
            format!("event {position}: [DONE] before the end")
        })?;
        let chunk = parse_event_json(data, position)?;
        let path = format!("chunk {position}");
        expect_field(&chunk, "object", &json!("chat.completion.chunk"), &path)?;
        let id = non_empty_string_field(&chunk, "id", &path)?;
        match &stream_id {
            None => stream_id = Some(id.to_string()),
            Some(first) => ensure(first == id, || {
                format!("{path}: id {id:?} differs from the first chunk's {first:?}")
            })?,
        }
        count_field(&chunk, "created", &path)?;
        string_field(&chunk, "model", &path)?;
        let choices = array_field(&chunk, "choices", &path)?;
        match chunk.get("usage") {
            None | Some(Value::Null) => {}
            Some(usage) => {
                ensure(!usage_seen, || format!("{path}: a second usage"))?;
                if rules.expect_usage {
                    ensure(choices.is_empty() && finished, || {
                        format!(
                            "{path}: usage must come in its own chunk with choices [] after the finish chunk"
                        )
                    })?;
                }
                summary.usage = Some(chat_usage(usage, &format!("{path}.usage"))?);
                usage_seen = true;
            }
        }
        if choices.is_empty() {
            ensure(
                usage_seen && chunk.get("usage").is_some_and(|usage| !usage.is_null()),
                || format!("{path}: choices [] without usage"),
            )?;
            continue;
        }
        ensure(!finished, || {
            format!("{path}: a choice chunk after the finish chunk")
        })?;
        ensure(choices.len() == 1, || {
            format!("{path}: expected one choice, got {}", choices.len())
        })?;
        let choice = &choices[0];
        expect_field(choice, "index", &json!(0), &path)?;
        let delta = field(choice, "delta", &path)?;
        ensure(delta.is_object(), || format!("{path}.delta: not an object"))?;
        let delta_path = format!("{path}.delta");
        if position == 0 {
            expect_field(delta, "role", &json!("assistant"), &delta_path)?;
        } else if let Some(role) = delta.get("role") {
            ensure(role == "assistant", || format!("{delta_path}.role: {role}"))?;
        }
        summary
            .text
            .push_str(optional_string_field(delta, "content", &delta_path)?.unwrap_or(""));
        summary.reasoning.push_str(
            optional_string_field(delta, "reasoning_content", &delta_path)?.unwrap_or(""),
        );
        match delta.get("tool_calls") {
            None | Some(Value::Null) => {}
            Some(Value::Array(entries)) => {
                for (entry_position, entry) in entries.iter().enumerate() {
                    let entry_path = format!("{delta_path}.tool_calls[{entry_position}]");
                    let index = count_field(entry, "index", &entry_path)? as usize;
                    let function = entry.get("function").cloned().unwrap_or(Value::Null);
                    let fragment = optional_string_field(
                        &function,
                        "arguments",
                        &format!("{entry_path}.function"),
                    )?
                    .unwrap_or("");
                    if index == calls.len() {
                        // The first delta of a call names it completely.
                        let id = non_empty_string_field(entry, "id", &entry_path)?;
                        expect_field(entry, "type", &json!("function"), &entry_path)?;
                        let name = non_empty_string_field(
                            &function,
                            "name",
                            &format!("{entry_path}.function"),
                        )?;
                        calls.push(PendingCall {
                            id: Some(id.to_string()),
                            name: name.to_string(),
                            arguments: fragment.to_string(),
                        });
                    } else {
                        ensure(index < calls.len(), || {
                            format!(
                                "{entry_path}.index {index}: indexes must be contiguous (next is {})",
                                calls.len()
                            )
                        })?;
                        let call = &mut calls[index];
                        if let Some(id) = optional_string_field(entry, "id", &entry_path)? {
                            ensure(call.id.as_deref() == Some(id), || {
                                format!(
                                    "{entry_path}.id {id:?} changes the call's id {:?}",
                                    call.id
                                )
                            })?;
                        }
                        if let Some(name) = optional_string_field(
                            &function,
                            "name",
                            &format!("{entry_path}.function"),
                        )? {
                            ensure(name == call.name || name.is_empty(), || {
                                format!(
                                    "{entry_path}.function.name {name:?} changes the call's name {:?}",
                                    call.name
                                )
                            })?;
                        }
                        call.arguments.push_str(fragment);
                    }
                }
            }
            Some(other) => {
                return Err(format!(
                    "{delta_path}.tool_calls: expected an array, got {}",
                    brief(other)
                ));
            }
        }
        if let Some(reason) = optional_string_field(choice, "finish_reason", &path)? {
            summary.finish = Some(chat_finish(reason));
            finished = true;
        }
    }
    ensure(finished, || "no chunk has a finish_reason".to_string())?;
    ensure(!rules.expect_usage || usage_seen, || {
        "no usage chunk (the client asked for stream_options.include_usage)".to_string()
    })?;
    for (index, call) in calls.into_iter().enumerate() {
        let arguments = parse_arguments(
            &call.arguments,
            &format!("tool call {index} (joined fragments)"),
        )?;
        summary.tool_calls.push(ToolCallSummary {
            id: call.id,
            name: call.name,
            arguments,
        });
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages

fn anthropic_finish(reason: &str) -> FinishKind {
    match reason {
        "end_turn" | "stop_sequence" | "pause_turn" => FinishKind::Stop,
        "tool_use" => FinishKind::ToolCalls,
        "max_tokens" | "model_context_window_exceeded" => FinishKind::Length,
        "refusal" => FinishKind::ContentFilter,
        other => FinishKind::Other(other.to_string()),
    }
}

/// Anthropic usage, normalized: `input_tokens` excludes both cache counts, so they are added.
fn anthropic_usage(usage: &Value, path: &str) -> Checked<UsageSummary> {
    let input = count_field(usage, "input_tokens", path)?;
    let cache_read = optional_count_field(usage, "cache_read_input_tokens", path)?;
    let cache_write = optional_count_field(usage, "cache_creation_input_tokens", path)?;
    let output = count_field(usage, "output_tokens", path)?;
    Ok(UsageSummary {
        input: input + cache_read + cache_write,
        cached: cache_read,
        output,
        reasoning: 0,
    })
}

fn anthropic_tool_use(block: &Value, path: &str) -> Checked<(String, String, Value)> {
    let id = non_empty_string_field(block, "id", path)?;
    let name = non_empty_string_field(block, "name", path)?;
    let input = field(block, "input", path)?;
    ensure(input.is_object(), || {
        format!("{path}.input: expected an object, got {}", brief(input))
    })?;
    Ok((id.to_string(), name.to_string(), input.clone()))
}

fn anthropic_complete(body: &Value, rules: Rules) -> Checked<Summary> {
    expect_field(body, "type", &json!("message"), "body")?;
    non_empty_string_field(body, "id", "body")?;
    expect_field(body, "role", &json!("assistant"), "body")?;
    string_field(body, "model", "body")?;
    let mut summary = Summary::default();
    for (position, block) in array_field(body, "content", "body")?.iter().enumerate() {
        let path = format!("body.content[{position}]");
        match string_field(block, "type", &path)? {
            "text" => summary.text.push_str(string_field(block, "text", &path)?),
            "thinking" => {
                summary
                    .reasoning
                    .push_str(string_field(block, "thinking", &path)?);
                optional_string_field(block, "signature", &path)?;
            }
            "redacted_thinking" => {
                string_field(block, "data", &path)?;
            }
            "tool_use" => {
                let (id, name, input) = anthropic_tool_use(block, &path)?;
                summary.tool_calls.push(ToolCallSummary {
                    id: Some(id),
                    name,
                    arguments: input,
                });
            }
            other => return Err(format!("{path}.type: unexpected block type {other:?}")),
        }
    }
    summary.finish = Some(anthropic_finish(string_field(body, "stop_reason", "body")?));
    match body.get("usage") {
        Some(usage @ Value::Object(_)) => {
            summary.usage = Some(anthropic_usage(usage, "body.usage")?)
        }
        _ if rules.expect_usage => return Err("body.usage: missing".to_string()),
        _ => {}
    }
    Ok(summary)
}

/// The content block open in an Anthropic stream.
struct OpenBlock {
    index: u64,
    kind: String,
    text: String,
    /// tool_use only: id, name and the input given at the start.
    tool: Option<(String, String, Value)>,
    saw_json_delta: bool,
}

fn anthropic_stream(events: &[(Option<String>, String)], rules: Rules) -> Checked<Summary> {
    let mut summary = Summary::default();
    let mut started = false;
    let mut open: Option<OpenBlock> = None;
    let mut blocks_started = 0u64;
    let mut message_delta_seen = false;
    let mut stopped = false;
    let mut usage: Option<UsageSummary> = None;
    for (position, (name, data)) in events.iter().enumerate() {
        let name = name
            .as_deref()
            .ok_or_else(|| format!("event {position}: Anthropic events must be named"))?;
        let event = parse_event_json(data, position)?;
        let path = format!("event {position} ({name})");
        expect_field(&event, "type", &json!(name), &path)?;
        ensure(!stopped, || format!("{path}: an event after message_stop"))?;
        if name == "ping" {
            continue;
        }
        if name == "error" {
            return Err(format!("{path}: in-stream error {}", brief(&event)));
        }
        if name == "message_start" {
            ensure(!started, || format!("{path}: a second message_start"))?;
            ensure(position == 0, || {
                format!("{path}: message_start must be the first event")
            })?;
            let message = field(&event, "message", &path)?;
            let message_path = format!("{path}.message");
            non_empty_string_field(message, "id", &message_path)?;
            expect_field(message, "type", &json!("message"), &message_path)?;
            expect_field(message, "role", &json!("assistant"), &message_path)?;
            expect_field(message, "content", &json!([]), &message_path)?;
            string_field(message, "model", &message_path)?;
            let start_usage = field(message, "usage", &message_path)?;
            usage = Some(anthropic_usage(
                start_usage,
                &format!("{message_path}.usage"),
            )?);
            started = true;
            continue;
        }
        ensure(started, || format!("{path}: before message_start"))?;
        match name {
            "content_block_start" => {
                ensure(open.is_none(), || {
                    format!(
                        "{path}: a block starts while block {} is open",
                        open.as_ref().map(|block| block.index).unwrap_or(0)
                    )
                })?;
                ensure(!message_delta_seen, || {
                    format!("{path}: a block after message_delta")
                })?;
                let index = count_field(&event, "index", &path)?;
                ensure(index == blocks_started, || {
                    format!(
                        "{path}: index {index}, expected {blocks_started} (indexes count every block, from 0)"
                    )
                })?;
                let block = field(&event, "content_block", &path)?;
                let block_path = format!("{path}.content_block");
                let kind = string_field(block, "type", &block_path)?.to_string();
                let mut tool = None;
                match kind.as_str() {
                    "text" => expect_field(block, "text", &json!(""), &block_path)?,
                    "thinking" => {
                        string_field(block, "thinking", &block_path)?;
                        optional_string_field(block, "signature", &block_path)?;
                    }
                    "redacted_thinking" => {
                        string_field(block, "data", &block_path)?;
                    }
                    "tool_use" => tool = Some(anthropic_tool_use(block, &block_path)?),
                    other => {
                        return Err(format!(
                            "{block_path}.type: unexpected block type {other:?}"
                        ));
                    }
                }
                open = Some(OpenBlock {
                    index,
                    kind,
                    text: String::new(),
                    tool,
                    saw_json_delta: false,
                });
                blocks_started += 1;
            }
            "content_block_delta" => {
                let index = count_field(&event, "index", &path)?;
                let block = open
                    .as_mut()
                    .ok_or_else(|| format!("{path}: a delta outside any block"))?;
                ensure(index == block.index, || {
                    format!("{path}: index {index}, but block {} is open", block.index)
                })?;
                let delta = field(&event, "delta", &path)?;
                let delta_path = format!("{path}.delta");
                let delta_type = string_field(delta, "type", &delta_path)?;
                match (block.kind.as_str(), delta_type) {
                    ("text", "text_delta") => {
                        block
                            .text
                            .push_str(string_field(delta, "text", &delta_path)?)
                    }
                    ("text", "citations_delta") => {}
                    ("thinking", "thinking_delta") => {
                        block
                            .text
                            .push_str(string_field(delta, "thinking", &delta_path)?)
                    }
                    ("thinking", "signature_delta") => {
                        string_field(delta, "signature", &delta_path)?;
                    }
                    ("tool_use", "input_json_delta") => {
                        block
                            .text
                            .push_str(string_field(delta, "partial_json", &delta_path)?);
                        block.saw_json_delta = true;
                    }
                    (kind, other) => {
                        return Err(format!("{delta_path}: a {other} in a {kind} block"));
                    }
                }
            }
            "content_block_stop" => {
                let index = count_field(&event, "index", &path)?;
                let block = open
                    .take()
                    .ok_or_else(|| format!("{path}: no block is open"))?;
                ensure(index == block.index, || {
                    format!("{path}: index {index}, but block {} is open", block.index)
                })?;
                match block.kind.as_str() {
                    "text" => summary.text.push_str(&block.text),
                    "thinking" => summary.reasoning.push_str(&block.text),
                    "tool_use" => {
                        let (id, name, start_input) =
                            block.tool.expect("tool_use blocks keep their start");
                        let arguments = if block.saw_json_delta {
                            parse_arguments(
                                &block.text,
                                &format!("{path}: the joined input_json_delta"),
                            )?
                        } else {
                            start_input
                        };
                        summary.tool_calls.push(ToolCallSummary {
                            id: Some(id),
                            name,
                            arguments,
                        });
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                ensure(open.is_none(), || {
                    format!("{path}: message_delta while a block is open")
                })?;
                ensure(!message_delta_seen, || {
                    format!("{path}: a second message_delta")
                })?;
                let delta = field(&event, "delta", &path)?;
                summary.finish = Some(anthropic_finish(string_field(
                    delta,
                    "stop_reason",
                    &format!("{path}.delta"),
                )?));
                let delta_usage = field(&event, "usage", &path)?;
                let usage_path = format!("{path}.usage");
                let output = count_field(delta_usage, "output_tokens", &usage_path)?;
                let mut merged = usage.unwrap_or_default();
                merged.output = output;
                // Newer API versions repeat the input counts here; they replace the start's.
                if delta_usage
                    .get("input_tokens")
                    .is_some_and(|count| !count.is_null())
                {
                    let input = count_field(delta_usage, "input_tokens", &usage_path)?;
                    let cache_read =
                        optional_count_field(delta_usage, "cache_read_input_tokens", &usage_path)?;
                    let cache_write = optional_count_field(
                        delta_usage,
                        "cache_creation_input_tokens",
                        &usage_path,
                    )?;
                    merged.input = input + cache_read + cache_write;
                    merged.cached = cache_read;
                }
                usage = Some(merged);
                message_delta_seen = true;
            }
            "message_stop" => {
                ensure(message_delta_seen, || {
                    format!("{path}: message_stop without message_delta")
                })?;
                stopped = true;
            }
            other => return Err(format!("{path}: unknown event {other:?}")),
        }
    }
    ensure(stopped, || {
        "the stream does not end with message_stop".to_string()
    })?;
    if rules.expect_usage || usage.is_some() {
        summary.usage = usage;
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// OpenAI Responses

fn responses_usage(usage: &Value, path: &str) -> Checked<UsageSummary> {
    let input = count_field(usage, "input_tokens", path)?;
    let output = count_field(usage, "output_tokens", path)?;
    let total = count_field(usage, "total_tokens", path)?;
    ensure(total == input + output, || {
        format!("{path}: total_tokens {total} != input_tokens {input} + output_tokens {output}")
    })?;
    let cached = match usage.get("input_tokens_details") {
        None | Some(Value::Null) => 0,
        Some(details) => optional_count_field(
            details,
            "cached_tokens",
            &format!("{path}.input_tokens_details"),
        )?,
    };
    let reasoning = match usage.get("output_tokens_details") {
        None | Some(Value::Null) => 0,
        Some(details) => optional_count_field(
            details,
            "reasoning_tokens",
            &format!("{path}.output_tokens_details"),
        )?,
    };
    ensure(cached <= input, || {
        format!("{path}: cached_tokens {cached} > input_tokens {input}")
    })?;
    ensure(reasoning <= output, || {
        format!("{path}: reasoning_tokens {reasoning} > output_tokens {output}")
    })?;
    Ok(UsageSummary {
        input,
        cached,
        output,
        reasoning,
    })
}

/// What one output item contributes to the summary.
#[derive(Default, PartialEq, Debug)]
struct ItemMeaning {
    kind: String,
    text: String,
    reasoning: String,
    /// Call id, name and the JSON arguments (a custom tool call: its free-form input).
    call: Option<(String, String, String)>,
}

fn responses_item(item: &Value, path: &str) -> Checked<ItemMeaning> {
    let kind = string_field(item, "type", path)?.to_string();
    let mut meaning = ItemMeaning {
        kind: kind.clone(),
        ..ItemMeaning::default()
    };
    match kind.as_str() {
        "message" => {
            non_empty_string_field(item, "id", path)?;
            expect_field(item, "role", &json!("assistant"), path)?;
            for (position, part) in array_field(item, "content", path)?.iter().enumerate() {
                let part_path = format!("{path}.content[{position}]");
                match string_field(part, "type", &part_path)? {
                    "output_text" => {
                        meaning
                            .text
                            .push_str(string_field(part, "text", &part_path)?);
                        array_field(part, "annotations", &part_path)?;
                    }
                    "refusal" => {
                        string_field(part, "refusal", &part_path)?;
                    }
                    other => return Err(format!("{part_path}.type: unexpected {other:?}")),
                }
            }
        }
        "function_call" => {
            let call_id = non_empty_string_field(item, "call_id", path)?;
            let name = non_empty_string_field(item, "name", path)?;
            let arguments = string_field(item, "arguments", path)?;
            meaning.call = Some((call_id.to_string(), name.to_string(), arguments.to_string()));
        }
        "custom_tool_call" => {
            non_empty_string_field(item, "id", path)?;
            let call_id = non_empty_string_field(item, "call_id", path)?;
            let name = non_empty_string_field(item, "name", path)?;
            let input = string_field(item, "input", path)?;
            meaning.call = Some((call_id.to_string(), name.to_string(), input.to_string()));
        }
        "reasoning" => {
            non_empty_string_field(item, "id", path)?;
            for (position, part) in array_field(item, "summary", path)?.iter().enumerate() {
                let part_path = format!("{path}.summary[{position}]");
                expect_field(part, "type", &json!("summary_text"), &part_path)?;
                meaning
                    .reasoning
                    .push_str(string_field(part, "text", &part_path)?);
            }
            if meaning.reasoning.is_empty()
                && let Some(Value::Array(parts)) = item.get("content")
            {
                for (position, part) in parts.iter().enumerate() {
                    let part_path = format!("{path}.content[{position}]");
                    expect_field(part, "type", &json!("reasoning_text"), &part_path)?;
                    meaning
                        .reasoning
                        .push_str(string_field(part, "text", &part_path)?);
                }
            }
        }
        other => return Err(format!("{path}.type: unexpected output item {other:?}")),
    }
    Ok(meaning)
}

fn responses_finish(response: &Value, has_calls: bool, path: &str) -> Checked<FinishKind> {
    Ok(match string_field(response, "status", path)? {
        "completed" if has_calls => FinishKind::ToolCalls,
        "completed" => FinishKind::Stop,
        "incomplete" => {
            let details = field(response, "incomplete_details", path)?;
            match string_field(details, "reason", &format!("{path}.incomplete_details"))? {
                "max_output_tokens" => FinishKind::Length,
                "content_filter" => FinishKind::ContentFilter,
                other => FinishKind::Other(other.to_string()),
            }
        }
        other => FinishKind::Other(other.to_string()),
    })
}

fn add_item(summary: &mut Summary, meaning: ItemMeaning, path: &str) -> Checked<()> {
    summary.text.push_str(&meaning.text);
    summary.reasoning.push_str(&meaning.reasoning);
    if let Some((call_id, name, arguments)) = meaning.call {
        // A custom tool call's input is free-form text, summarized as a JSON string.
        let arguments = if meaning.kind == "custom_tool_call" {
            Value::String(arguments)
        } else {
            parse_arguments(&arguments, &format!("{path}.arguments"))?
        };
        summary.tool_calls.push(ToolCallSummary {
            id: Some(call_id),
            name,
            arguments,
        });
    }
    Ok(())
}

fn responses_complete(body: &Value, rules: Rules) -> Checked<Summary> {
    expect_field(body, "object", &json!("response"), "body")?;
    non_empty_string_field(body, "id", "body")?;
    count_field(body, "created_at", "body")?;
    string_field(body, "model", "body")?;
    let mut summary = Summary::default();
    for (position, item) in array_field(body, "output", "body")?.iter().enumerate() {
        let path = format!("body.output[{position}]");
        let meaning = responses_item(item, &path)?;
        add_item(&mut summary, meaning, &path)?;
    }
    let status = string_field(body, "status", "body")?;
    ensure(
        status != "completed" || body.get("incomplete_details").is_none_or(Value::is_null),
        || "body.incomplete_details must be null when completed".to_string(),
    )?;
    summary.finish = Some(responses_finish(
        body,
        !summary.tool_calls.is_empty(),
        "body",
    )?);
    match body.get("usage") {
        Some(usage @ Value::Object(_)) => {
            summary.usage = Some(responses_usage(usage, "body.usage")?)
        }
        _ if rules.expect_usage => return Err("body.usage: missing".to_string()),
        _ => {}
    }
    Ok(summary)
}

/// An output item of a Responses stream, from `response.output_item.added` to `.done`.
struct StreamItem {
    id: String,
    kind: String,
    /// Message: the text of the closed parts, and the open part with its text so far.
    text: String,
    part_open: Option<(u64, String)>,
    parts: u64,
    /// Function call: call id and name, the arguments so far and whether `.done` came.
    call: Option<(String, String)>,
    arguments: String,
    arguments_done: bool,
    /// Reasoning: summary text (or raw reasoning text) so far.
    reasoning: String,
}

/// The open item an event names by `output_index` and `item_id`, which must be of `kind`.
fn open_item<'a>(
    open: &'a mut BTreeMap<u64, StreamItem>,
    event: &Value,
    kind: &str,
    path: &str,
) -> Checked<&'a mut StreamItem> {
    let output_index = count_field(event, "output_index", path)?;
    let item = open
        .get_mut(&output_index)
        .ok_or_else(|| format!("{path}: output_index {output_index} is not an open item"))?;
    ensure(item.kind == kind, || {
        format!(
            "{path}: item {output_index} is a {}, not a {kind}",
            item.kind
        )
    })?;
    expect_field(event, "item_id", &json!(item.id), path)?;
    Ok(item)
}

/// Items may overlap: the official SDKs accumulate events by `output_index`, and a gateway
/// converting from Chat keeps parallel function calls open because Chat may interleave their
/// argument fragments. Every event must still name an open item (by `output_index` and
/// `item_id`), each item must be added before its events and done after them, and the terminal
/// response must list the items exactly as they were streamed.
fn responses_stream(events: &[(Option<String>, String)], rules: Rules) -> Checked<Summary> {
    let mut last_sequence: Option<u64> = None;
    let mut created = false;
    let mut terminal: Option<Value> = None;
    let mut open: BTreeMap<u64, StreamItem> = BTreeMap::new();
    // One entry per added item, by output_index; None until the item is done.
    let mut streamed: Vec<Option<ItemMeaning>> = Vec::new();
    for (position, (name, data)) in events.iter().enumerate() {
        let name = name
            .as_deref()
            .ok_or_else(|| format!("event {position}: Responses events must be named"))?;
        let event = parse_event_json(data, position)?;
        let path = format!("event {position} ({name})");
        expect_field(&event, "type", &json!(name), &path)?;
        ensure(terminal.is_none(), || {
            format!("{path}: an event after the terminal event")
        })?;
        let sequence = count_field(&event, "sequence_number", &path)?;
        ensure(last_sequence.is_none_or(|last| sequence > last), || {
            format!("{path}: sequence_number {sequence} after {last_sequence:?}")
        })?;
        last_sequence = Some(sequence);
        if name == "response.created" {
            ensure(position == 0, || {
                format!("{path}: response.created must be the first event")
            })?;
            let response = field(&event, "response", &path)?;
            non_empty_string_field(response, "id", &format!("{path}.response"))?;
            expect_field(
                response,
                "object",
                &json!("response"),
                &format!("{path}.response"),
            )?;
            let status = string_field(response, "status", &format!("{path}.response"))?;
            ensure(status == "in_progress" || status == "queued", || {
                format!("{path}: status {status:?}")
            })?;
            created = true;
            continue;
        }
        ensure(created, || format!("{path}: before response.created"))?;
        let item_path = format!("{path} item");
        match name {
            "response.in_progress" | "response.queued" | "keepalive" => {}
            "response.output_item.added" => {
                let output_index = count_field(&event, "output_index", &path)?;
                ensure(output_index == streamed.len() as u64, || {
                    format!(
                        "{path}: output_index {output_index}, expected {}",
                        streamed.len()
                    )
                })?;
                let item = field(&event, "item", &path)?;
                let kind = string_field(item, "type", &item_path)?.to_string();
                let id = non_empty_string_field(item, "id", &item_path)?.to_string();
                ensure(open.values().all(|other| other.id != id), || {
                    format!("{item_path}: id {id:?} is already open")
                })?;
                let mut stream_item = StreamItem {
                    id,
                    kind: kind.clone(),
                    text: String::new(),
                    part_open: None,
                    parts: 0,
                    call: None,
                    arguments: String::new(),
                    arguments_done: false,
                    reasoning: String::new(),
                };
                match kind.as_str() {
                    "message" => expect_field(item, "role", &json!("assistant"), &item_path)?,
                    "function_call" | "custom_tool_call" => {
                        let call_id = non_empty_string_field(item, "call_id", &item_path)?;
                        let name = non_empty_string_field(item, "name", &item_path)?;
                        let so_far = if kind == "function_call" {
                            "arguments"
                        } else {
                            "input"
                        };
                        stream_item.arguments = optional_string_field(item, so_far, &item_path)?
                            .unwrap_or("")
                            .to_string();
                        stream_item.call = Some((call_id.to_string(), name.to_string()));
                    }
                    "reasoning" => {}
                    other => {
                        return Err(format!(
                            "{item_path}.type: unexpected output item {other:?}"
                        ));
                    }
                }
                open.insert(output_index, stream_item);
                streamed.push(None);
            }
            "response.output_item.done" => {
                let output_index = count_field(&event, "output_index", &path)?;
                let item_state = open.remove(&output_index).ok_or_else(|| {
                    format!("{path}: output_index {output_index} is not an open item")
                })?;
                ensure(item_state.part_open.is_none(), || {
                    format!("{path}: the item's content part is still open")
                })?;
                let item = field(&event, "item", &path)?;
                let meaning = responses_item(item, &item_path)?;
                ensure(meaning.kind == item_state.kind, || {
                    format!(
                        "{item_path}: type {:?}, was added as {:?}",
                        meaning.kind, item_state.kind
                    )
                })?;
                expect_field(item, "id", &json!(item_state.id), &item_path)?;
                match item_state.kind.as_str() {
                    "message" => ensure(meaning.text == item_state.text, || {
                        format!(
                            "{item_path}: text {:?}, streamed {:?}",
                            meaning.text, item_state.text
                        )
                    })?,
                    "function_call" | "custom_tool_call" => {
                        ensure(item_state.arguments_done, || {
                            format!(
                                "{path}: no arguments or input .done event before the item ends"
                            )
                        })?;
                        let (call_id, name) = item_state
                            .call
                            .clone()
                            .expect("function items keep their call");
                        ensure(
                            meaning.call == Some((call_id, name, item_state.arguments.clone())),
                            || {
                                format!(
                                    "{item_path}: {:?} differs from the streamed call {:?} {:?}",
                                    meaning.call, item_state.call, item_state.arguments
                                )
                            },
                        )?;
                    }
                    _ => ensure(meaning.reasoning == item_state.reasoning, || {
                        format!(
                            "{item_path}: reasoning {:?}, streamed {:?}",
                            meaning.reasoning, item_state.reasoning
                        )
                    })?,
                }
                streamed[output_index as usize] = Some(meaning);
            }
            "response.content_part.added"
            | "response.content_part.done"
            | "response.output_text.delta"
            | "response.output_text.done" => {
                let item_state = open_item(&mut open, &event, "message", &path)?;
                let content_index = count_field(&event, "content_index", &path)?;
                match name {
                    "response.content_part.added" => {
                        ensure(item_state.part_open.is_none(), || {
                            format!("{path}: a part is already open")
                        })?;
                        ensure(content_index == item_state.parts, || {
                            format!(
                                "{path}: content_index {content_index}, expected {}",
                                item_state.parts
                            )
                        })?;
                        let part = field(&event, "part", &path)?;
                        let part_type = string_field(part, "type", &format!("{path}.part"))?;
                        ensure(part_type == "output_text" || part_type == "refusal", || {
                            format!("{path}.part.type: {part_type:?}")
                        })?;
                        item_state.part_open = Some((content_index, String::new()));
                        item_state.parts += 1;
                    }
                    "response.output_text.delta" => {
                        let (open_index, text) = item_state
                            .part_open
                            .as_mut()
                            .ok_or_else(|| format!("{path}: no content part is open"))?;
                        ensure(content_index == *open_index, || {
                            format!(
                                "{path}: content_index {content_index}, open part is {open_index}"
                            )
                        })?;
                        text.push_str(string_field(&event, "delta", &path)?);
                    }
                    "response.output_text.done" => {
                        let (open_index, text) = item_state
                            .part_open
                            .as_ref()
                            .ok_or_else(|| format!("{path}: no content part is open"))?;
                        ensure(content_index == *open_index, || {
                            format!(
                                "{path}: content_index {content_index}, open part is {open_index}"
                            )
                        })?;
                        expect_field(&event, "text", &json!(text), &path)?;
                    }
                    _ => {
                        let (open_index, text) = item_state
                            .part_open
                            .take()
                            .ok_or_else(|| format!("{path}: no content part is open"))?;
                        ensure(content_index == open_index, || {
                            format!(
                                "{path}: content_index {content_index}, open part is {open_index}"
                            )
                        })?;
                        let part = field(&event, "part", &path)?;
                        if part["type"] == "output_text" {
                            expect_field(part, "text", &json!(text), &format!("{path}.part"))?;
                        }
                        item_state.text.push_str(&text);
                    }
                }
            }
            "response.custom_tool_call_input.delta" | "response.custom_tool_call_input.done" => {
                let item_state = open_item(&mut open, &event, "custom_tool_call", &path)?;
                ensure(!item_state.arguments_done, || {
                    format!("{path}: after custom_tool_call_input.done")
                })?;
                if name.ends_with(".delta") {
                    item_state
                        .arguments
                        .push_str(string_field(&event, "delta", &path)?);
                } else {
                    expect_field(&event, "input", &json!(item_state.arguments), &path)?;
                    item_state.arguments_done = true;
                }
            }
            "response.function_call_arguments.delta" | "response.function_call_arguments.done" => {
                let item_state = open_item(&mut open, &event, "function_call", &path)?;
                ensure(!item_state.arguments_done, || {
                    format!("{path}: after function_call_arguments.done")
                })?;
                if name.ends_with(".delta") {
                    item_state
                        .arguments
                        .push_str(string_field(&event, "delta", &path)?);
                } else {
                    expect_field(&event, "arguments", &json!(item_state.arguments), &path)?;
                    item_state.arguments_done = true;
                }
            }
            "response.reasoning_summary_part.added"
            | "response.reasoning_summary_part.done"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_summary_text.done"
            | "response.reasoning_text.delta"
            | "response.reasoning_text.done" => {
                let item_state = open_item(&mut open, &event, "reasoning", &path)?;
                if name.ends_with("text.delta") {
                    item_state
                        .reasoning
                        .push_str(string_field(&event, "delta", &path)?);
                }
            }
            "response.completed" | "response.incomplete" => {
                ensure(open.is_empty(), || {
                    format!(
                        "{path}: items {:?} are still open",
                        open.keys().collect::<Vec<_>>()
                    )
                })?;
                terminal = Some(field(&event, "response", &path)?.clone());
            }
            "response.failed" | "error" => {
                return Err(format!("{path}: the stream failed: {}", brief(&event)));
            }
            other => return Err(format!("{path}: unknown event {other:?}")),
        }
    }
    let response = terminal.ok_or_else(|| {
        "the stream does not end with response.completed or response.incomplete".to_string()
    })?;
    let path = "terminal response";
    let output = array_field(&response, "output", path)?;
    ensure(output.len() == streamed.len(), || {
        format!(
            "{path}.output has {} items, {} were streamed",
            output.len(),
            streamed.len()
        )
    })?;
    let mut summary = Summary::default();
    for (position, (item, streamed_meaning)) in output.iter().zip(streamed).enumerate() {
        let item_path = format!("{path}.output[{position}]");
        let streamed_meaning = streamed_meaning.expect("every item was done before the end");
        let meaning = responses_item(item, &item_path)?;
        ensure(meaning == streamed_meaning, || {
            format!("{item_path}: {meaning:?} differs from the streamed {streamed_meaning:?}")
        })?;
        add_item(&mut summary, meaning, &item_path)?;
    }
    summary.finish = Some(responses_finish(
        &response,
        !summary.tool_calls.is_empty(),
        path,
    )?);
    match response.get("usage") {
        Some(usage @ Value::Object(_)) => {
            summary.usage = Some(responses_usage(usage, &format!("{path}.usage"))?)
        }
        _ if rules.expect_usage => return Err(format!("{path}.usage: missing")),
        _ => {}
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// Gemini

fn gemini_finish(reason: &str, has_calls: bool) -> FinishKind {
    match reason {
        "STOP" if has_calls => FinishKind::ToolCalls,
        "STOP" => FinishKind::Stop,
        "MAX_TOKENS" => FinishKind::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
            FinishKind::ContentFilter
        }
        other => FinishKind::Other(other.to_string()),
    }
}

/// Gemini usage, normalized: `candidatesTokenCount` excludes thoughts, so they are added.
fn gemini_usage(usage: &Value, path: &str) -> Checked<UsageSummary> {
    let prompt = count_field(usage, "promptTokenCount", path)?;
    let candidates = optional_count_field(usage, "candidatesTokenCount", path)?;
    let thoughts = optional_count_field(usage, "thoughtsTokenCount", path)?;
    let tool_prompt = optional_count_field(usage, "toolUsePromptTokenCount", path)?;
    let cached = optional_count_field(usage, "cachedContentTokenCount", path)?;
    let total = count_field(usage, "totalTokenCount", path)?;
    ensure(
        total == prompt + candidates + thoughts + tool_prompt,
        || {
            format!(
                "{path}: totalTokenCount {total} != prompt {prompt} + candidates {candidates} + thoughts {thoughts} + tool-use prompt {tool_prompt}"
            )
        },
    )?;
    ensure(cached <= prompt, || {
        format!("{path}: cachedContentTokenCount {cached} > promptTokenCount {prompt}")
    })?;
    Ok(UsageSummary {
        input: prompt + tool_prompt,
        cached,
        output: candidates + thoughts,
        reasoning: thoughts,
    })
}

/// Reads one candidate's parts into the summary; returns its finishReason, if any.
fn gemini_candidate<'a>(
    response: &'a Value,
    summary: &mut Summary,
    path: &str,
) -> Checked<Option<&'a str>> {
    let candidates = array_field(response, "candidates", path)?;
    ensure(candidates.len() == 1, || {
        format!(
            "{path}.candidates: expected one candidate, got {}",
            candidates.len()
        )
    })?;
    let candidate = &candidates[0];
    let candidate_path = format!("{path}.candidates[0]");
    let finish_reason = optional_string_field(candidate, "finishReason", &candidate_path)?;
    let content = match candidate.get("content") {
        Some(content) => content,
        None => {
            ensure(finish_reason.is_some(), || {
                format!("{candidate_path}: no content and no finishReason")
            })?;
            return Ok(finish_reason);
        }
    };
    let content_path = format!("{candidate_path}.content");
    if let Some(role) = content.get("role") {
        ensure(role == "model", || {
            format!("{content_path}.role: {role}, expected model")
        })?;
    }
    let parts = match content.get("parts") {
        None => &Vec::new(),
        Some(_) => array_field(content, "parts", &content_path)?,
    };
    for (position, part) in parts.iter().enumerate() {
        let part_path = format!("{content_path}.parts[{position}]");
        ensure(part.is_object(), || format!("{part_path}: not an object"))?;
        optional_string_field(part, "thoughtSignature", &part_path)?;
        if let Some(call) = part.get("functionCall") {
            let call_path = format!("{part_path}.functionCall");
            let name = non_empty_string_field(call, "name", &call_path)?;
            let args = match call.get("args") {
                None => json!({}),
                Some(args) => {
                    ensure(args.is_object(), || {
                        format!("{call_path}.args: expected an object, got {}", brief(args))
                    })?;
                    args.clone()
                }
            };
            let id = optional_string_field(call, "id", &call_path)?.map(str::to_string);
            summary.tool_calls.push(ToolCallSummary {
                id,
                name: name.to_string(),
                arguments: args,
            });
        } else if part.get("text").is_some() {
            let text = string_field(part, "text", &part_path)?;
            let thought = match part.get("thought") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(flag)) => *flag,
                Some(other) => {
                    return Err(format!(
                        "{part_path}.thought: expected a boolean, got {}",
                        brief(other)
                    ));
                }
            };
            if thought {
                summary.reasoning.push_str(text);
            } else {
                summary.text.push_str(text);
            }
        } else if part.get("inlineData").is_none() && part.get("fileData").is_none() {
            // A part with only a signature is how Gemini hands back a trailing signature.
            ensure(part.get("thoughtSignature").is_some(), || {
                format!(
                    "{part_path}: a part with no text, functionCall or data: {}",
                    brief(part)
                )
            })?;
        }
    }
    Ok(finish_reason)
}

fn gemini_complete(body: &Value, rules: Rules) -> Checked<Summary> {
    let mut summary = Summary::default();
    let finish_reason = gemini_candidate(body, &mut summary, "body")?
        .ok_or_else(|| "body.candidates[0].finishReason: missing".to_string())?;
    summary.finish = Some(gemini_finish(finish_reason, !summary.tool_calls.is_empty()));
    match body.get("usageMetadata") {
        Some(usage @ Value::Object(_)) => {
            summary.usage = Some(gemini_usage(usage, "body.usageMetadata")?)
        }
        _ if rules.expect_usage => return Err("body.usageMetadata: missing".to_string()),
        _ => {}
    }
    Ok(summary)
}

fn gemini_stream(events: &[(Option<String>, String)], rules: Rules) -> Checked<Summary> {
    let mut summary = Summary::default();
    let mut finish_reason: Option<String> = None;
    let last = events.len() - 1;
    for (position, (name, data)) in events.iter().enumerate() {
        ensure(name.is_none(), || {
            format!("event {position}: Gemini events have no event name, got {name:?}")
        })?;
        ensure(data != "[DONE]", || {
            format!("event {position}: Gemini streams have no [DONE]")
        })?;
        let chunk = parse_event_json(data, position)?;
        let path = format!("chunk {position}");
        ensure(finish_reason.is_none(), || {
            format!("{path}: a chunk after the one with finishReason")
        })?;
        if let Some(reason) = gemini_candidate(&chunk, &mut summary, &path)? {
            finish_reason = Some(reason.to_string());
        }
        if position == last {
            match chunk.get("usageMetadata") {
                Some(usage @ Value::Object(_)) => {
                    summary.usage = Some(gemini_usage(usage, &format!("{path}.usageMetadata"))?)
                }
                _ if rules.expect_usage => {
                    return Err(format!("{path}: the last chunk has no usageMetadata"));
                }
                _ => {}
            }
        } else if let Some(usage @ Value::Object(_)) = chunk.get("usageMetadata") {
            // Usage is cumulative; an intermediate report must still add up.
            gemini_usage(usage, &format!("{path}.usageMetadata"))?;
        }
    }
    let reason = finish_reason.ok_or_else(|| "the last chunk has no finishReason".to_string())?;
    summary.finish = Some(gemini_finish(&reason, !summary.tool_calls.is_empty()));
    Ok(summary)
}
