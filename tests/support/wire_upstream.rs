//! The provider side of wire-format tests: a scripted answer (reasoning, text, one tool call,
//! usage) written in each upstream format, complete or streamed the way the real provider
//! streams it, and checks that a request the gateway sent upstream really carries what the
//! client asked for (system prompt, image, tool definition, reasoning control, model, stream
//! mode, credentials) in that format's own shape.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::mock_upstream::{RecordedRequest, Reply, StreamEnd, sse};
use crate::support::wire::{ChannelKind, Checked, UsageSummary, brief, ensure, expect_field};

/// What a mock provider answers, independent of the format it is written in.
#[derive(Clone, Debug)]
pub struct ScriptedAnswer {
    /// Reasoning text deltas (thinking, summary, thought parts); empty for none.
    pub reasoning: Vec<String>,
    /// Answer text deltas; empty for none.
    pub text: Vec<String>,
    pub tool_call: Option<ScriptedToolCall>,
    /// Input includes cached tokens and output includes reasoning tokens, as in the IR.
    pub usage: UsageSummary,
}

/// A tool call whose JSON arguments arrive in fragments where the format fragments them.
#[derive(Clone, Debug)]
pub struct ScriptedToolCall {
    /// The call id in the formats that have one (Gemini gets none, as its public API sends none).
    pub id: String,
    pub name: String,
    pub argument_fragments: Vec<String>,
}

impl ScriptedToolCall {
    pub fn arguments(&self) -> String {
        self.argument_fragments.concat()
    }

    pub fn arguments_object(&self) -> Value {
        serde_json::from_str(&self.arguments()).expect("scripted tool arguments are JSON")
    }
}

/// The id a Responses upstream gives the function-call item (its `call_id` is the call's id).
pub const RESPONSES_FUNCTION_ITEM_ID: &str = "fc_mock_1";
/// The signatures mock providers attach to reasoning; they must never reach another provider.
pub const ANTHROPIC_SIGNATURE: &str = "sig-anthropic-mock";
pub const GEMINI_SIGNATURE: &str = "sig-gemini-mock";
pub const RESPONSES_ENCRYPTED_CONTENT: &str = "enc-responses-mock";

impl ScriptedAnswer {
    fn reasoning_text(&self) -> String {
        self.reasoning.concat()
    }

    fn text(&self) -> String {
        self.text.concat()
    }
}

/// Whether `request` asks for a stream, by the rules of its format: the streaming endpoint for
/// Gemini and Antigravity, the body's `stream` flag for the others.
pub fn request_streams(kind: ChannelKind, request: &RecordedRequest) -> bool {
    match kind {
        ChannelKind::Gemini | ChannelKind::Antigravity => {
            request.path.contains(":streamGenerateContent")
        }
        _ => request.json().get("stream").and_then(Value::as_bool) == Some(true),
    }
}

/// The mock's answer to `request` in `kind`'s format: streamed when the request asks for a
/// stream (Chat sends its usage chunk only when `stream_options.include_usage` is set, as
/// OpenAI does), complete otherwise.
pub fn scripted_reply(
    kind: ChannelKind,
    answer: &ScriptedAnswer,
    request: &RecordedRequest,
    model: &str,
) -> Reply {
    if !request_streams(kind, request) {
        let body = complete_answer(kind, answer, model);
        return Reply::Json {
            status: 200,
            headers: Vec::new(),
            body: body.to_string(),
        };
    }
    let include_usage = request
        .json()
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    Reply::Sse {
        events: streamed_answer(kind, answer, model, include_usage),
        gap: Duration::ZERO,
        end: StreamEnd::Finish,
    }
}

/// The complete (non-stream) body of `answer` in `kind`'s format.
pub fn complete_answer(kind: ChannelKind, answer: &ScriptedAnswer, model: &str) -> Value {
    match kind {
        ChannelKind::OpenaiChat => chat_complete(answer, model),
        ChannelKind::OpenaiResponses => responses_complete(answer, model),
        ChannelKind::Anthropic => anthropic_complete(answer, model),
        ChannelKind::Gemini => gemini_complete(answer, model),
        ChannelKind::Antigravity => antigravity_wrap(gemini_complete(answer, model)),
    }
}

/// The SSE events (each framed, ending in a blank line) of `answer` in `kind`'s format.
pub fn streamed_answer(
    kind: ChannelKind,
    answer: &ScriptedAnswer,
    model: &str,
    include_usage: bool,
) -> Vec<String> {
    match kind {
        ChannelKind::OpenaiChat => chat_stream(answer, model, include_usage),
        ChannelKind::OpenaiResponses => responses_stream(answer, model),
        ChannelKind::Anthropic => anthropic_stream(answer, model),
        // Gemini frames its events with CRLF in practice; the Antigravity mock uses LF, so both
        // line endings are exercised.
        ChannelKind::Gemini => gemini_chunks(answer, model)
            .iter()
            .map(|chunk| format!("data: {chunk}\r\n\r\n"))
            .collect(),
        ChannelKind::Antigravity => gemini_chunks(answer, model)
            .into_iter()
            .map(|chunk| sse(None, &antigravity_wrap(chunk)))
            .collect(),
    }
}

fn chat_usage(usage: &UsageSummary) -> Value {
    json!({
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    })
}

fn chat_complete(answer: &ScriptedAnswer, model: &str) -> Value {
    let mut message = json!({"role": "assistant", "content": Value::Null, "refusal": Value::Null});
    if !answer.text.is_empty() {
        message["content"] = json!(answer.text());
    }
    if !answer.reasoning.is_empty() {
        message["reasoning_content"] = json!(answer.reasoning_text());
    }
    if let Some(call) = &answer.tool_call {
        message["tool_calls"] = json!([{"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments()}}]);
    }
    let finish_reason = if answer.tool_call.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "message": message, "logprobs": Value::Null, "finish_reason": finish_reason}],
        "usage": chat_usage(&answer.usage),
    })
}

fn chat_stream(answer: &ScriptedAnswer, model: &str, include_usage: bool) -> Vec<String> {
    let chunk = |delta: Value, finish_reason: Value| {
        let mut chunk = json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": Value::Null, "finish_reason": finish_reason}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        sse(None, &chunk)
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": Value::Null}),
        Value::Null,
    )];
    for delta in &answer.reasoning {
        events.push(chunk(json!({"reasoning_content": delta}), Value::Null));
    }
    for delta in &answer.text {
        events.push(chunk(json!({"content": delta}), Value::Null));
    }
    if let Some(call) = &answer.tool_call {
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}]}),
            Value::Null,
        ));
        for fragment in &call.argument_fragments {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                Value::Null,
            ));
        }
    }
    let finish_reason = if answer.tool_call.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    events.push(chunk(json!({}), json!(finish_reason)));
    if include_usage {
        events.push(sse(
            None,
            &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                    "system_fingerprint": "fp_mock", "choices": [], "usage": chat_usage(&answer.usage)}),
        ));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

fn responses_usage(usage: &UsageSummary) -> Value {
    json!({
        "input_tokens": usage.input,
        "input_tokens_details": {"cached_tokens": usage.cached},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.input + usage.output,
    })
}

fn responses_reasoning_item(answer: &ScriptedAnswer) -> Value {
    json!({"type": "reasoning", "id": "rs_mock_1", "summary": [{"type": "summary_text", "text": answer.reasoning_text()}],
           "encrypted_content": RESPONSES_ENCRYPTED_CONTENT})
}

fn responses_message_item(answer: &ScriptedAnswer, status: &str) -> Value {
    json!({"type": "message", "id": "msg_mock_1", "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": answer.text(), "annotations": [], "logprobs": []}]})
}

fn responses_function_item(call: &ScriptedToolCall, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": RESPONSES_FUNCTION_ITEM_ID, "call_id": call.id, "name": call.name,
           "arguments": arguments, "status": status})
}

fn responses_output(answer: &ScriptedAnswer) -> Vec<Value> {
    let mut output = Vec::new();
    if !answer.reasoning.is_empty() {
        output.push(responses_reasoning_item(answer));
    }
    if !answer.text.is_empty() {
        output.push(responses_message_item(answer, "completed"));
    }
    if let Some(call) = &answer.tool_call {
        output.push(responses_function_item(
            call,
            &call.arguments(),
            "completed",
        ));
    }
    output
}

fn responses_object(model: &str, status: &str, output: Vec<Value>, usage: Value) -> Value {
    json!({
        "id": "resp_mock", "object": "response", "created_at": 1_700_000_000, "status": status,
        "error": Value::Null, "incomplete_details": Value::Null, "model": model, "output": output,
        "parallel_tool_calls": true, "usage": usage,
    })
}

fn responses_complete(answer: &ScriptedAnswer, model: &str) -> Value {
    responses_object(
        model,
        "completed",
        responses_output(answer),
        responses_usage(&answer.usage),
    )
}

fn responses_stream(answer: &ScriptedAnswer, model: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut sequence_number = 0;
    let mut push = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(sequence_number);
        sequence_number += 1;
        events.push(sse(Some(name), &data));
    };
    push(
        "response.created",
        json!({"response": responses_object(model, "in_progress", Vec::new(), Value::Null)}),
    );
    push(
        "response.in_progress",
        json!({"response": responses_object(model, "in_progress", Vec::new(), Value::Null)}),
    );
    let mut output_index = 0;
    if !answer.reasoning.is_empty() {
        let item_id = "rs_mock_1";
        push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": {"type": "reasoning", "id": item_id, "summary": []}}),
        );
        let part = |text: &str| json!({"type": "summary_text", "text": text});
        push(
            "response.reasoning_summary_part.added",
            json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "part": part("")}),
        );
        for delta in &answer.reasoning {
            push(
                "response.reasoning_summary_text.delta",
                json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "delta": delta}),
            );
        }
        let text = answer.reasoning_text();
        push(
            "response.reasoning_summary_text.done",
            json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "text": text}),
        );
        push(
            "response.reasoning_summary_part.done",
            json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "part": part(&text)}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": responses_reasoning_item(answer)}),
        );
        output_index += 1;
    }
    if !answer.text.is_empty() {
        let item_id = "msg_mock_1";
        push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}}),
        );
        let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
        push(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "part": part("")}),
        );
        for delta in &answer.text {
            push(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "delta": delta, "logprobs": []}),
            );
        }
        let text = answer.text();
        push(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}),
        );
        push(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "part": part(&text)}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": responses_message_item(answer, "completed")}),
        );
        output_index += 1;
    }
    if let Some(call) = &answer.tool_call {
        push(
            "response.output_item.added",
            json!({"output_index": output_index, "item": responses_function_item(call, "", "in_progress")}),
        );
        for fragment in &call.argument_fragments {
            push(
                "response.function_call_arguments.delta",
                json!({"item_id": RESPONSES_FUNCTION_ITEM_ID, "output_index": output_index, "delta": fragment}),
            );
        }
        push(
            "response.function_call_arguments.done",
            json!({"item_id": RESPONSES_FUNCTION_ITEM_ID, "output_index": output_index, "arguments": call.arguments()}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": output_index, "item": responses_function_item(call, &call.arguments(), "completed")}),
        );
    }
    push(
        "response.completed",
        json!({"response": responses_complete(answer, model)}),
    );
    events
}

fn anthropic_usage(usage: &UsageSummary, output_tokens: u64) -> Value {
    // Anthropic's input_tokens excludes cache reads (protocols.md §2C).
    json!({"input_tokens": usage.input - usage.cached, "cache_creation_input_tokens": 0,
           "cache_read_input_tokens": usage.cached, "output_tokens": output_tokens})
}

fn anthropic_complete(answer: &ScriptedAnswer, model: &str) -> Value {
    let mut content = Vec::new();
    if !answer.reasoning.is_empty() {
        content.push(json!({"type": "thinking", "thinking": answer.reasoning_text(), "signature": ANTHROPIC_SIGNATURE}));
    }
    if !answer.text.is_empty() {
        content.push(json!({"type": "text", "text": answer.text()}));
    }
    if let Some(call) = &answer.tool_call {
        content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments_object()}));
    }
    let stop_reason = if answer.tool_call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason, "stop_sequence": Value::Null, "usage": anthropic_usage(&answer.usage, answer.usage.output),
    })
}

fn anthropic_stream(answer: &ScriptedAnswer, model: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut push = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        events.push(sse(Some(name), &data));
    };
    push(
        "message_start",
        json!({"message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
                           "stop_reason": Value::Null, "stop_sequence": Value::Null, "usage": anthropic_usage(&answer.usage, 1)}}),
    );
    let mut index = 0;
    if !answer.reasoning.is_empty() {
        push(
            "content_block_start",
            json!({"index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        );
        push("ping", json!({}));
        for delta in &answer.reasoning {
            push(
                "content_block_delta",
                json!({"index": index, "delta": {"type": "thinking_delta", "thinking": delta}}),
            );
        }
        push(
            "content_block_delta",
            json!({"index": index, "delta": {"type": "signature_delta", "signature": ANTHROPIC_SIGNATURE}}),
        );
        push("content_block_stop", json!({"index": index}));
        index += 1;
    }
    if !answer.text.is_empty() {
        push(
            "content_block_start",
            json!({"index": index, "content_block": {"type": "text", "text": ""}}),
        );
        for delta in &answer.text {
            push(
                "content_block_delta",
                json!({"index": index, "delta": {"type": "text_delta", "text": delta}}),
            );
        }
        push("content_block_stop", json!({"index": index}));
        index += 1;
    }
    if let Some(call) = &answer.tool_call {
        push(
            "content_block_start",
            json!({"index": index, "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}}),
        );
        for fragment in &call.argument_fragments {
            push(
                "content_block_delta",
                json!({"index": index, "delta": {"type": "input_json_delta", "partial_json": fragment}}),
            );
        }
        push("content_block_stop", json!({"index": index}));
    }
    let stop_reason = if answer.tool_call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    push(
        "message_delta",
        json!({"delta": {"stop_reason": stop_reason, "stop_sequence": Value::Null}, "usage": {"output_tokens": answer.usage.output}}),
    );
    push("message_stop", json!({}));
    events
}

fn gemini_usage(usage: &UsageSummary) -> Value {
    // Gemini's candidatesTokenCount excludes thoughts; promptTokenCount includes cached tokens.
    let mut metadata = json!({
        "promptTokenCount": usage.input,
        "candidatesTokenCount": usage.output - usage.reasoning,
        "totalTokenCount": usage.input + usage.output,
    });
    if usage.cached > 0 {
        metadata["cachedContentTokenCount"] = json!(usage.cached);
    }
    if usage.reasoning > 0 {
        metadata["thoughtsTokenCount"] = json!(usage.reasoning);
    }
    metadata
}

fn gemini_response(parts: Vec<Value>, finish: bool, usage: Value, model: &str) -> Value {
    let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    if finish {
        candidate["finishReason"] = json!("STOP");
    }
    json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "mock-response-id"})
}

fn gemini_function_call_part(call: &ScriptedToolCall) -> Value {
    // Gemini 3 puts the thought signature on the function-call part.
    json!({"functionCall": {"name": call.name, "args": call.arguments_object()}, "thoughtSignature": GEMINI_SIGNATURE})
}

fn gemini_complete(answer: &ScriptedAnswer, model: &str) -> Value {
    let mut parts = Vec::new();
    if !answer.reasoning.is_empty() {
        parts.push(json!({"text": answer.reasoning_text(), "thought": true}));
    }
    if !answer.text.is_empty() {
        let mut part = json!({"text": answer.text()});
        if !answer.reasoning.is_empty() {
            part["thoughtSignature"] = json!(GEMINI_SIGNATURE);
        }
        parts.push(part);
    }
    if let Some(call) = &answer.tool_call {
        parts.push(gemini_function_call_part(call));
    }
    gemini_response(parts, true, gemini_usage(&answer.usage), model)
}

/// One Gemini chunk per reasoning or text delta and one for the whole function call; the last
/// carries `finishReason` and the final usage, the others only the prompt count so far.
fn gemini_chunks(answer: &ScriptedAnswer, model: &str) -> Vec<Value> {
    let mut parts_per_chunk: Vec<Value> = Vec::new();
    for delta in &answer.reasoning {
        parts_per_chunk.push(json!({"text": delta, "thought": true}));
    }
    for (position, delta) in answer.text.iter().enumerate() {
        let mut part = json!({"text": delta});
        if position == 0 && !answer.reasoning.is_empty() {
            part["thoughtSignature"] = json!(GEMINI_SIGNATURE);
        }
        parts_per_chunk.push(part);
    }
    if let Some(call) = &answer.tool_call {
        parts_per_chunk.push(gemini_function_call_part(call));
    }
    let last = parts_per_chunk.len().saturating_sub(1);
    parts_per_chunk
        .into_iter()
        .enumerate()
        .map(|(position, part)| {
            let finish = position == last;
            let usage = if finish {
                gemini_usage(&answer.usage)
            } else {
                json!({"promptTokenCount": answer.usage.input, "totalTokenCount": answer.usage.input})
            };
            gemini_response(vec![part], finish, usage, model)
        })
        .collect()
}

/// The Antigravity envelope around a Gemini response or chunk.
pub fn antigravity_wrap(response: Value) -> Value {
    json!({"response": response, "traceId": "mock-trace-id"})
}

/// An image sent inline as base64.
#[derive(Clone, Debug)]
pub struct InlineImage {
    pub media_type: String,
    pub data: String,
}

impl InlineImage {
    pub fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.media_type, self.data)
    }
}

/// A function tool the client defines, with one string property.
#[derive(Clone, Debug)]
pub struct ToolExpectation {
    pub name: String,
    pub property: String,
}

/// A system turn the client put after its user turn (Claude Code's system-in-messages).
#[derive(Clone, Debug)]
pub struct MidSystemExpectation {
    pub text: String,
    /// The client's format has system turns inside the conversation, so an upstream format that
    /// has them too must keep this one after the user's turn. A Gemini client can only send it
    /// in `systemInstruction`, so then it only has to reach the system slot.
    pub after_user: bool,
}

/// What a request sent upstream must carry.
#[derive(Clone, Debug)]
pub struct UpstreamExpectation {
    pub model: String,
    /// The channel key; for Antigravity the OAuth access token.
    pub key: String,
    pub stream: bool,
    /// Text that must appear in the format's system slot.
    pub system: Option<String>,
    /// Text that must appear in a user turn.
    pub user_text: String,
    /// A system turn the client sent after its user turn.
    pub mid_system: Option<MidSystemExpectation>,
    pub image: Option<InlineImage>,
    pub tool: Option<ToolExpectation>,
    /// A reasoning control must be on.
    pub reasoning: bool,
    /// The client spoke another format, so the request was converted (conversion-only rules
    /// apply, such as explicit `strict: false` on Responses tools).
    pub converted: bool,
    /// The Antigravity project the envelope must name.
    pub project: Option<String>,
}

/// Every way `request` falls short of `expected` in `kind`'s format; empty when it is right.
pub fn check_request(
    kind: ChannelKind,
    request: &RecordedRequest,
    expected: &UpstreamExpectation,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut note = |result: Checked<()>| {
        if let Err(problem) = result {
            problems.push(problem);
        }
    };
    note(ensure(request.method == "POST", || {
        format!("method {} instead of POST", request.method)
    }));
    let body: Value = match serde_json::from_slice(&request.body) {
        Ok(body @ Value::Object(_)) => body,
        _ => {
            note(Err(format!(
                "the upstream body is not a JSON object: {}",
                String::from_utf8_lossy(&request.body)
            )));
            return problems;
        }
    };
    let unknown = unknown_fields(kind, &body);
    note(ensure(unknown.is_empty(), || {
        format!(
            "fields the {} API rejects as unknown: {unknown:?}",
            kind.name()
        )
    }));
    if let Some(mid_system) = &expected.mid_system {
        note(check_mid_system(kind, request, &body, expected, mid_system));
    }
    match kind {
        ChannelKind::OpenaiChat => check_chat(request, &body, expected, &mut note),
        ChannelKind::OpenaiResponses => check_responses(request, &body, expected, &mut note),
        ChannelKind::Anthropic => check_anthropic(request, &body, expected, &mut note),
        ChannelKind::Gemini => {
            let model = &expected.model;
            let path_ok = if expected.stream {
                request
                    .path
                    .ends_with(&format!("/models/{model}:streamGenerateContent"))
                    && request.query.split('&').any(|pair| pair == "alt=sse")
            } else {
                request
                    .path
                    .ends_with(&format!("/models/{model}:generateContent"))
            };
            note(ensure(path_ok, || {
                format!(
                    "path {}?{} is not the {} endpoint of model {model}",
                    request.path,
                    request.query,
                    stream_word(expected.stream)
                )
            }));
            let key_ok = request.header("x-goog-api-key") == Some(expected.key.as_str())
                || request
                    .query
                    .split('&')
                    .any(|pair| pair == format!("key={}", expected.key));
            note(ensure(key_ok, || {
                "the Gemini key is neither in x-goog-api-key nor in ?key=".to_string()
            }));
            check_gemini_request(&body, expected, false, "body", &mut note);
        }
        ChannelKind::Antigravity => {
            let streaming = request.path.ends_with("/v1internal:streamGenerateContent")
                && request.query.split('&').any(|pair| pair == "alt=sse");
            let complete = request.path.ends_with("/v1internal:generateContent");
            // A non-stream client may be served from the streaming endpoint (the answer is then
            // assembled from the stream); a stream client needs the streaming endpoint.
            let path_ok = if expected.stream {
                streaming
            } else {
                streaming || complete
            };
            note(ensure(path_ok, || {
                format!(
                    "path {}?{} is not a v1internal {} endpoint",
                    request.path,
                    request.query,
                    stream_word(expected.stream)
                )
            }));
            note(ensure(
                request.header("authorization")
                    == Some(format!("Bearer {}", expected.key).as_str()),
                || {
                    format!(
                        "authorization {:?} is not the bearer access token",
                        request.header("authorization").map(|_| "(other)")
                    )
                },
            ));
            note(ensure(request.header("x-goog-api-key").is_none(), || {
                "Antigravity must not get x-goog-api-key".to_string()
            }));
            if let Some(project) = &expected.project {
                note(expect_field(&body, "project", &json!(project), "body"));
            }
            note(expect_field(&body, "model", &json!(expected.model), "body"));
            match body.get("request") {
                Some(inner @ Value::Object(_)) => {
                    check_gemini_request(inner, expected, true, "body.request", &mut note)
                }
                other => note(Err(format!(
                    "body.request: expected the Gemini request object, got {}",
                    other.map(brief).unwrap_or("nothing".into())
                ))),
            }
        }
    }
    problems
}

/// Top-level request fields each API accepts. All of them answer an unknown field with a 400
/// (Anthropic: "Extra inputs are not permitted"; OpenAI: "Unrecognized request argument";
/// Gemini: "Unknown name"), so a converter must never leak one format's fields into another.
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "reasoning_effort",
    "response_format",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "modalities",
    "audio",
    "prediction",
    "verbosity",
    "safety_identifier",
    "prompt_cache_key",
    "web_search_options",
    "functions",
    "function_call",
];
const RESPONSES_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "max_tool_calls",
    "temperature",
    "top_p",
    "top_logprobs",
    "reasoning",
    "text",
    "include",
    "store",
    "stream",
    "stream_options",
    "metadata",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "previous_response_id",
    "conversation",
    "truncation",
    "service_tier",
    "background",
    "prompt",
];
const ANTHROPIC_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "output_config",
    "context_management",
];
const GEMINI_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "cachedContent",
    "cached_content",
    "labels",
];
const GEMINI_GENERATION_FIELDS: &[&str] = &[
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "thinkingConfig",
    "responseLogprobs",
    "logprobs",
    "mediaResolution",
    "speechConfig",
    "imageConfig",
    "enableEnhancedCivicAnswers",
];
const ANTIGRAVITY_FIELDS: &[&str] = &[
    "project",
    "model",
    "request",
    "userAgent",
    "requestType",
    "requestId",
];

/// The fields of `body` (and of a Gemini `generationConfig`) that `kind`'s API does not know.
pub fn unknown_fields(kind: ChannelKind, body: &Value) -> Vec<String> {
    fn unknown_in(object: &Value, known: &[&str], prefix: &str) -> Vec<String> {
        object
            .as_object()
            .map(|map| {
                map.keys()
                    .filter(|key| !known.contains(&key.as_str()))
                    .map(|key| format!("{prefix}{key}"))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn gemini_unknown(request: &Value, prefix: &str, extra: &[&str]) -> Vec<String> {
        let known: Vec<&str> = GEMINI_FIELDS.iter().chain(extra).copied().collect();
        let mut unknown = unknown_in(request, &known, prefix);
        for key in ["generationConfig", "generation_config"] {
            if let Some(config) = request.get(key) {
                unknown.extend(unknown_in(
                    config,
                    GEMINI_GENERATION_FIELDS,
                    &format!("{prefix}{key}."),
                ));
            }
        }
        unknown
    }
    match kind {
        ChannelKind::OpenaiChat => unknown_in(body, CHAT_FIELDS, ""),
        ChannelKind::OpenaiResponses => unknown_in(body, RESPONSES_FIELDS, ""),
        ChannelKind::Anthropic => unknown_in(body, ANTHROPIC_FIELDS, ""),
        ChannelKind::Gemini => gemini_unknown(body, "", &[]),
        ChannelKind::Antigravity => {
            let mut unknown = unknown_in(body, ANTIGRAVITY_FIELDS, "");
            if let Some(request) = body.get("request") {
                // The inner request also carries the conversation's session id.
                unknown.extend(gemini_unknown(request, "request.", &["sessionId"]));
            }
            unknown
        }
    }
}

fn stream_word(stream: bool) -> &'static str {
    if stream { "streaming" } else { "non-stream" }
}

/// The `stream` flag of an OpenAI or Anthropic body: true when streaming, absent or false otherwise.
fn check_stream_flag(body: &Value, stream: bool) -> Checked<()> {
    let flag = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    ensure(flag == stream, || {
        format!("body.stream is {:?}, expected {stream}", body.get("stream"))
    })
}

/// The JSON schema of the test tool: an object with the expected property.
fn check_schema(schema: Option<&Value>, tool: &ToolExpectation, path: &str) -> Checked<()> {
    let schema = schema.ok_or_else(|| format!("{path}: the tool has no parameter schema"))?;
    let schema_type = schema.get("type").and_then(Value::as_str).unwrap_or("");
    ensure(schema_type.eq_ignore_ascii_case("object"), || {
        format!("{path}.type: expected object, got {}", brief(schema))
    })?;
    ensure(
        schema
            .pointer(&format!("/properties/{}", tool.property))
            .is_some(),
        || {
            format!(
                "{path}.properties: no {:?} property in {}",
                tool.property,
                brief(schema)
            )
        },
    )
}

/// Texts of Chat or Anthropic-style content: a string, or text parts/blocks.
fn content_texts(content: Option<&Value>, text_types: &[&str]) -> Vec<String> {
    match content {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|part| {
                part.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|kind| text_types.contains(&kind))
            })
            .filter_map(|part| part.get("text").and_then(Value::as_str).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn any_contains(texts: &[String], needle: &str) -> bool {
    texts.iter().any(|text| text.contains(needle))
}

/// Where a system turn from the middle of the conversation must land: at its position on Chat
/// and Responses (and on Anthropic when the body passed through), in the one system slot
/// elsewhere (Anthropic's `system`, Gemini's `systemInstruction`).
fn check_mid_system(
    kind: ChannelKind,
    request: &RecordedRequest,
    body: &Value,
    expected: &UpstreamExpectation,
    mid_system: &MidSystemExpectation,
) -> Checked<()> {
    let text = mid_system.text.as_str();
    // The positions of the first turn with one of `roles` whose text contains `needle`.
    let position = |turns: &[Value], roles: &[&str], needle: &str, text_types: &[&str]| {
        turns.iter().position(|turn| {
            turn.get("role")
                .and_then(Value::as_str)
                .is_some_and(|role| roles.contains(&role))
                && any_contains(&content_texts(turn.get("content"), text_types), needle)
        })
    };
    let in_place = |turns: &[Value], system_roles: &[&str], text_types: &[&str]| -> Checked<()> {
        let system_at = position(turns, system_roles, text, text_types)
            .ok_or_else(|| format!("no {system_roles:?} turn says {text:?}"))?;
        if mid_system.after_user {
            let user_at = position(turns, &["user"], &expected.user_text, text_types)
                .ok_or_else(|| "the user turn is missing".to_string())?;
            ensure(system_at > user_at, || {
                format!("the system turn {text:?} moved before the user's turn")
            })?;
        }
        Ok(())
    };
    let empty = Vec::new();
    match kind {
        ChannelKind::OpenaiChat => {
            let messages = body
                .get("messages")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            in_place(messages, &["system", "developer"], &["text"])
        }
        ChannelKind::OpenaiResponses => {
            let input = body
                .get("input")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            let in_instructions = body
                .get("instructions")
                .and_then(Value::as_str)
                .is_some_and(|instructions| instructions.contains(text));
            if in_instructions && !mid_system.after_user {
                return Ok(());
            }
            in_place(input, &["system", "developer"], &["input_text", "text"])
        }
        ChannelKind::Anthropic if !expected.converted => {
            // Passed through: the turn stays in `messages` and the client's beta goes along.
            let messages = body
                .get("messages")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            in_place(messages, &["system"], &["text"])?;
            ensure(
                request
                    .header("anthropic-beta")
                    .is_some_and(|betas| betas.contains("mid-conversation-system")),
                || "the client's anthropic-beta header did not reach the upstream".to_string(),
            )
        }
        ChannelKind::Anthropic => ensure(
            any_contains(&content_texts(body.get("system"), &["text"]), text),
            || format!("body.system does not say {text:?}"),
        ),
        ChannelKind::Gemini | ChannelKind::Antigravity => {
            let pointer = if kind == ChannelKind::Gemini {
                "/systemInstruction/parts"
            } else {
                "/request/systemInstruction/parts"
            };
            let texts: Vec<String> = body
                .pointer(pointer)
                .and_then(Value::as_array)
                .unwrap_or(&empty)
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str).map(str::to_string))
                .collect();
            ensure(any_contains(&texts, text), || {
                format!("{pointer} does not say {text:?}")
            })
        }
    }
}

fn check_chat(
    request: &RecordedRequest,
    body: &Value,
    expected: &UpstreamExpectation,
    note: &mut impl FnMut(Checked<()>),
) {
    note(ensure(request.path.ends_with("/chat/completions"), || {
        format!("path {} is not /chat/completions", request.path)
    }));
    note(ensure(
        request.header("authorization") == Some(format!("Bearer {}", expected.key).as_str()),
        || "the bearer key is missing or wrong".to_string(),
    ));
    note(expect_field(body, "model", &json!(expected.model), "body"));
    note(check_stream_flag(body, expected.stream));
    if !expected.stream {
        // OpenAI: "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        note(ensure(
            body.get("stream_options").is_none_or(Value::is_null),
            || "stream_options on a non-stream request (OpenAI rejects it)".to_string(),
        ));
    }
    if expected.stream {
        note(ensure(
            body.pointer("/stream_options/include_usage") == Some(&json!(true)),
            || {
                "a Chat stream must ask for stream_options.include_usage (usage is needed for billing)".to_string()
            },
        ));
    }
    let empty = Vec::new();
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    note(ensure(!messages.is_empty(), || {
        "body.messages: missing or empty".to_string()
    }));
    let texts_of = |roles: &[&str]| -> Vec<String> {
        messages
            .iter()
            .filter(|message| {
                message
                    .get("role")
                    .and_then(Value::as_str)
                    .is_some_and(|role| roles.contains(&role))
            })
            .flat_map(|message| content_texts(message.get("content"), &["text"]))
            .collect()
    };
    if let Some(system) = &expected.system {
        note(ensure(
            any_contains(&texts_of(&["system", "developer"]), system),
            || format!("no system or developer message says {system:?}"),
        ));
    }
    note(ensure(
        any_contains(&texts_of(&["user"]), &expected.user_text),
        || format!("no user message says {:?}", expected.user_text),
    ));
    if let Some(image) = &expected.image {
        let found = messages
            .iter()
            .filter(|message| message["role"] == "user")
            .any(|message| {
                message["content"].as_array().is_some_and(|parts| {
                    parts.iter().any(|part| {
                        part["type"] == "image_url"
                            && part.pointer("/image_url/url").and_then(Value::as_str)
                                == Some(&image.data_url())
                    })
                })
            });
        note(ensure(found, || {
            "no user image_url part carries the image as a data URL".to_string()
        }));
    }
    if let Some(tool) = &expected.tool {
        note(check_chat_tools(body, tool));
    }
    if expected.reasoning {
        let effort = body.get("reasoning_effort").and_then(Value::as_str);
        note(ensure(
            effort.is_some_and(|effort| effort != "none"),
            || {
                format!(
                    "reasoning_effort is {:?}, expected an effort",
                    body.get("reasoning_effort")
                )
            },
        ));
    }
}

fn check_chat_tools(body: &Value, tool: &ToolExpectation) -> Checked<()> {
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| "body.tools: missing".to_string())?;
    let found = tools
        .iter()
        .find(|definition| {
            definition.pointer("/function/name").and_then(Value::as_str) == Some(tool.name.as_str())
        })
        .ok_or_else(|| {
            format!(
                "body.tools: no function named {:?} in {}",
                tool.name,
                brief(&json!(tools))
            )
        })?;
    ensure(found["type"] == "function", || {
        format!(
            "body.tools[].type: expected function, got {}",
            brief(&found["type"])
        )
    })?;
    check_schema(
        found.pointer("/function/parameters"),
        tool,
        "body.tools[].function.parameters",
    )
}

fn check_responses(
    request: &RecordedRequest,
    body: &Value,
    expected: &UpstreamExpectation,
    note: &mut impl FnMut(Checked<()>),
) {
    note(ensure(request.path.ends_with("/responses"), || {
        format!("path {} is not /responses", request.path)
    }));
    note(ensure(
        request.header("authorization") == Some(format!("Bearer {}", expected.key).as_str()),
        || "the bearer key is missing or wrong".to_string(),
    ));
    note(expect_field(body, "model", &json!(expected.model), "body"));
    note(check_stream_flag(body, expected.stream));
    let items: Vec<Value> = match body.get("input") {
        Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
        Some(Value::Array(items)) => items.clone(),
        other => {
            note(Err(format!(
                "body.input: expected a string or an array, got {}",
                other.map(brief).unwrap_or("nothing".into())
            )));
            Vec::new()
        }
    };
    let texts_of = |roles: &[&str]| -> Vec<String> {
        items
            .iter()
            .filter(|item| item.get("type").is_none_or(|kind| kind == "message"))
            .filter(|item| {
                item.get("role")
                    .and_then(Value::as_str)
                    .is_some_and(|role| roles.contains(&role))
            })
            .flat_map(|item| content_texts(item.get("content"), &["input_text"]))
            .collect()
    };
    if let Some(system) = &expected.system {
        let in_instructions = body
            .get("instructions")
            .and_then(Value::as_str)
            .is_some_and(|text| text.contains(system.as_str()));
        note(ensure(
            in_instructions || any_contains(&texts_of(&["system", "developer"]), system),
            || format!("neither instructions nor a system/developer input message says {system:?}"),
        ));
    }
    note(ensure(
        any_contains(&texts_of(&["user"]), &expected.user_text),
        || format!("no user input message says {:?}", expected.user_text),
    ));
    if let Some(image) = &expected.image {
        let found = items
            .iter()
            .filter(|item| item["role"] == "user")
            .any(|item| {
                item["content"].as_array().is_some_and(|parts| {
                    parts.iter().any(|part| {
                        part["type"] == "input_image"
                            && part["image_url"].as_str() == Some(&image.data_url())
                    })
                })
            });
        note(ensure(found, || {
            "no user input_image part carries the image as a data URL".to_string()
        }));
    }
    if let Some(tool) = &expected.tool {
        note(check_responses_tools(body, tool, expected.converted));
    }
    if expected.reasoning {
        let effort = body.pointer("/reasoning/effort").and_then(Value::as_str);
        note(ensure(
            effort.is_some_and(|effort| effort != "none"),
            || {
                format!(
                    "reasoning.effort is {:?}, expected an effort",
                    body.get("reasoning")
                )
            },
        ));
    }
}

fn check_anthropic(
    request: &RecordedRequest,
    body: &Value,
    expected: &UpstreamExpectation,
    note: &mut impl FnMut(Checked<()>),
) {
    note(ensure(request.path.ends_with("/messages"), || {
        format!("path {} is not /messages", request.path)
    }));
    note(ensure(
        request.header("x-api-key") == Some(expected.key.as_str()),
        || "x-api-key is missing or wrong".to_string(),
    ));
    note(ensure(
        request.header("anthropic-version").is_some(),
        || "anthropic-version header missing".to_string(),
    ));
    note(expect_field(body, "model", &json!(expected.model), "body"));
    note(check_stream_flag(body, expected.stream));
    let max_tokens = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(0);
    note(ensure(max_tokens > 0, || {
        format!(
            "body.max_tokens is required, got {:?}",
            body.get("max_tokens")
        )
    }));
    let empty = Vec::new();
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    note(ensure(!messages.is_empty(), || {
        "body.messages: missing or empty".to_string()
    }));
    // A system turn inside `messages` is valid only under Claude Code's beta, so only a body
    // the client sent that way (passed through) may carry one.
    note(ensure(
        messages.iter().all(|message| {
            message["role"] == "user"
                || message["role"] == "assistant"
                || (message["role"] == "system" && !expected.converted)
        }),
        || "body.messages: only user and assistant roles are allowed".to_string(),
    ));
    note(ensure(
        messages
            .first()
            .is_none_or(|message| message["role"] == "user"),
        || "body.messages: the first turn must be the user's".to_string(),
    ));
    if let Some(system) = &expected.system {
        let texts = content_texts(body.get("system"), &["text"]);
        note(ensure(any_contains(&texts, system), || {
            format!(
                "body.system does not say {system:?}: {:?}",
                body.get("system").map(brief)
            )
        }));
    }
    let user_texts: Vec<String> = messages
        .iter()
        .filter(|message| message["role"] == "user")
        .flat_map(|message| content_texts(message.get("content"), &["text"]))
        .collect();
    note(ensure(
        any_contains(&user_texts, &expected.user_text),
        || format!("no user message says {:?}", expected.user_text),
    ));
    if let Some(image) = &expected.image {
        let wanted = json!({"type": "base64", "media_type": image.media_type, "data": image.data});
        let found = messages
            .iter()
            .filter(|message| message["role"] == "user")
            .any(|message| {
                message["content"].as_array().is_some_and(|blocks| {
                    blocks
                        .iter()
                        .any(|block| block["type"] == "image" && block["source"] == wanted)
                })
            });
        note(ensure(found, || {
            "no user image block carries the image as a base64 source".to_string()
        }));
    }
    if let Some(tool) = &expected.tool {
        note(check_anthropic_tools(body, tool));
    }
    if expected.reasoning {
        let thinking = body.get("thinking").cloned().unwrap_or(Value::Null);
        let enabled = thinking["type"] == "enabled"
            && thinking["budget_tokens"]
                .as_u64()
                .is_some_and(|budget| budget >= 1024 && budget < max_tokens);
        let adaptive = thinking["type"] == "adaptive";
        note(ensure(enabled || adaptive, || {
            format!(
                "thinking must be enabled with 1024 <= budget_tokens < max_tokens ({max_tokens}), got {}",
                brief(&thinking)
            )
        }));
    }
}

/// The flat Responses function tool; `strict: false` is explicit when the tool was converted.
fn check_responses_tools(body: &Value, tool: &ToolExpectation, converted: bool) -> Checked<()> {
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| "body.tools: missing".to_string())?;
    let found = tools
        .iter()
        .find(|definition| definition["name"].as_str() == Some(tool.name.as_str()))
        .ok_or_else(|| {
            format!(
                "body.tools: no flat function tool named {:?} in {}",
                tool.name,
                brief(&json!(tools))
            )
        })?;
    ensure(found["type"] == "function", || {
        format!(
            "body.tools[].type: expected function, got {}",
            brief(&found["type"])
        )
    })?;
    check_schema(found.get("parameters"), tool, "body.tools[].parameters")?;
    if converted {
        // Responses makes omitted `strict` mean strict mode; converted tools must not change meaning.
        ensure(found.get("strict") == Some(&json!(false)), || {
            format!(
                "a converted tool must send strict: false explicitly, got {}",
                brief(found)
            )
        })?;
    }
    Ok(())
}

/// The Anthropic tool with its `input_schema`.
fn check_anthropic_tools(body: &Value, tool: &ToolExpectation) -> Checked<()> {
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| "body.tools: missing".to_string())?;
    let found = tools
        .iter()
        .find(|definition| definition["name"].as_str() == Some(tool.name.as_str()))
        .ok_or_else(|| {
            format!(
                "body.tools: no tool named {:?} in {}",
                tool.name,
                brief(&json!(tools))
            )
        })?;
    ensure(
        found.get("type").is_none_or(|kind| kind == "custom"),
        || format!("body.tools[].type: unexpected {}", brief(&found["type"])),
    )?;
    check_schema(found.get("input_schema"), tool, "body.tools[].input_schema")
}

/// The Gemini function declaration; Antigravity needs `parameters`.
fn check_gemini_tools(
    body: &Value,
    tool: &ToolExpectation,
    antigravity: bool,
    path: &str,
) -> Checked<()> {
    let declarations: Vec<&Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{path}.tools: missing"))?
        .iter()
        .filter_map(|entry| entry.get("functionDeclarations").and_then(Value::as_array))
        .flatten()
        .collect();
    let found = declarations
        .iter()
        .find(|declaration| declaration["name"].as_str() == Some(tool.name.as_str()))
        .ok_or_else(|| {
            format!(
                "{path}.tools: no functionDeclarations entry named {:?}",
                tool.name
            )
        })?;
    if antigravity {
        // Antigravity needs the OpenAPI-subset `parameters`, not `parametersJsonSchema`.
        check_schema(
            found.get("parameters"),
            tool,
            &format!("{path}.tools[].functionDeclarations[].parameters"),
        )
    } else {
        check_schema(
            found
                .get("parameters")
                .or_else(|| found.get("parametersJsonSchema")),
            tool,
            &format!("{path}.tools[].functionDeclarations[]"),
        )
    }
}

/// Checks a Gemini `GenerateContentRequest` (the body, or Antigravity's inner `request`).
fn check_gemini_request(
    body: &Value,
    expected: &UpstreamExpectation,
    antigravity: bool,
    path: &str,
    note: &mut impl FnMut(Checked<()>),
) {
    let empty = Vec::new();
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    note(ensure(!contents.is_empty(), || {
        format!("{path}.contents: missing or empty")
    }));
    note(ensure(
        contents
            .iter()
            .all(|content| content["role"] == "user" || content["role"] == "model"),
        || format!("{path}.contents: only user and model roles are allowed"),
    ));
    let parts_of = |role: &str| -> Vec<Value> {
        contents
            .iter()
            .filter(|content| content["role"] == role)
            .flat_map(|content| content["parts"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let user_parts = parts_of("user");
    let user_texts: Vec<String> = user_parts
        .iter()
        .filter_map(|part| part["text"].as_str().map(str::to_string))
        .collect();
    note(ensure(
        any_contains(&user_texts, &expected.user_text),
        || {
            format!(
                "{path}.contents: no user text says {:?}",
                expected.user_text
            )
        },
    ));
    if let Some(system) = &expected.system {
        let texts: Vec<String> = body
            .pointer("/systemInstruction/parts")
            .and_then(Value::as_array)
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|part| part["text"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        note(ensure(any_contains(&texts, system), || {
            format!("{path}.systemInstruction.parts does not say {system:?}")
        }));
    }
    if let Some(image) = &expected.image {
        let wanted = json!({"mimeType": image.media_type, "data": image.data});
        note(ensure(
            user_parts
                .iter()
                .any(|part| part.get("inlineData") == Some(&wanted)),
            || format!("{path}.contents: no user inlineData part carries the image"),
        ));
    }
    if let Some(tool) = &expected.tool {
        note(check_gemini_tools(body, tool, antigravity, path));
    }
    if expected.reasoning {
        let config = body
            .pointer("/generationConfig/thinkingConfig")
            .cloned()
            .unwrap_or(Value::Null);
        let budget_on = config
            .get("thinkingBudget")
            .and_then(Value::as_i64)
            .is_some_and(|budget| budget != 0);
        let level_on = config
            .get("thinkingLevel")
            .and_then(Value::as_str)
            .is_some();
        let includes_thoughts = config.get("includeThoughts") == Some(&json!(true));
        note(ensure((budget_on || level_on) && includes_thoughts, || {
            format!(
                "{path}.generationConfig.thinkingConfig must turn thinking on and include thoughts, got {}",
                brief(&config)
            )
        }));
    }
}
