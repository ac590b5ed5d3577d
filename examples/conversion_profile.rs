//! Runs the pure conversion functions in a loop, for profiling them under callgrind without the
//! gateway's coroutines (whose stack switches blur callgrind's attribution of costs to callers).
//!
//! `cargo build --release --example conversion_profile`, then for example
//! `valgrind --tool=callgrind target/release/examples/conversion_profile chat-to-anthropic` and
//! `callgrind_annotate --inclusive=yes` on its output. Cases:
//!
//! - `chat-to-anthropic`, `chat-to-gemini`: the bench's small lane chat (a system prompt, one user
//!   message, one tool) converted for the upstream, and the upstream's answer converted back,
//!   1,000 times;
//! - `large-anthropic-to-chat`, `large-chat-to-anthropic`, `large-anthropic-to-gemini`,
//!   `large-chat-to-gemini`, `large-anthropic-to-responses`, `large-chat-to-responses`: a 219 KB request shaped like an agent client's (a 15 KB system
//!   prompt, 40 tools, 90 turns of text, tool calls and tool results) converted 20 times; it
//!   prints the wall time per conversion too;
//! - `stream-chat-to-responses`, `stream-chat-to-anthropic`: a Chat upstream's stream of 200
//!   reasoning deltas, 100 text deltas and a tool call in 50 argument fragments, transcoded for a
//!   Responses (Codex) or Anthropic client 200 times;
//! - `stream-gemini-to-chat`: a Gemini upstream's stream of 300 text chunks, each with its
//!   running usage, transcoded for a Chat client 200 times;
//! - `stream-responses-to-chat`: a Responses upstream's stream of 100 reasoning summary deltas
//!   and 300 text deltas with the events around them, transcoded for a Chat client 200 times.
//!
//! Build it with debug symbols kept (`CARGO_PROFILE_RELEASE_STRIP=false
//! CARGO_PROFILE_RELEASE_DEBUG=1`) so callgrind can name the functions.

use std::cell::OnceCell;
use std::time::Instant;

use octopus::protocol::Format;
use octopus::protocol::convert::{ClientBody, ConvertContext, StreamTranscoder, convert_request_with_media, convert_response_and_usage};
use octopus::protocol::sse::SseParser;
use serde_json::{Value, json};

const LANE_REQUEST: &str = r#"{"model":"lane","messages":[{"role":"system","content":"You are a terse weather assistant. Answer in one short sentence and call get_weather when the user asks about the weather somewhere."},{"role":"user","content":"Is it going to rain in Lisbon this afternoon?"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Current weather and the forecast for the next hours in one city.","parameters":{"type":"object","properties":{"city":{"type":"string","description":"City name, e.g. Lisbon"},"unit":{"type":"string","enum":["celsius","fahrenheit"]},"hours":{"type":"integer","description":"How many hours of forecast","minimum":1,"maximum":48}},"required":["city"]}}}],"tool_choice":"auto","max_tokens":64,"temperature":0.2}"#;
const ANTHROPIC_ANSWER: &str = r#"{"id":"msg_bench0001","type":"message","role":"assistant","model":"bench-upstream","content":[{"type":"text","text":"Hello! This is a canned reply from the octopus benchmark mock."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":31,"output_tokens":14,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}"#;
const GEMINI_ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello! This is a canned reply from the octopus benchmark mock."}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":31,"candidatesTokenCount":14,"totalTokenCount":45},"modelVersion":"bench-upstream","responseId":"bench0001"}"#;

fn main() {
    let case = std::env::args().nth(1).unwrap_or_default();
    match case.as_str() {
        "chat-to-anthropic" => lane_round_trips(Format::Anthropic, ANTHROPIC_ANSWER),
        "chat-to-gemini" => lane_round_trips(Format::Gemini, GEMINI_ANSWER),
        "large-anthropic-to-chat" => large_requests(&large_anthropic_request(), Format::Anthropic, Format::OpenaiChat),
        "large-chat-to-anthropic" => large_requests(&large_chat_request(), Format::OpenaiChat, Format::Anthropic),
        "large-anthropic-to-gemini" => large_requests(&large_anthropic_request(), Format::Anthropic, Format::Gemini),
        "large-chat-to-gemini" => large_requests(&large_chat_request(), Format::OpenaiChat, Format::Gemini),
        "large-anthropic-to-responses" => large_requests(&large_anthropic_request(), Format::Anthropic, Format::OpenaiResponses),
        "large-chat-to-responses" => large_requests(&large_chat_request(), Format::OpenaiChat, Format::OpenaiResponses),
        "stream-chat-to-responses" => stream_round_trips(Format::OpenaiChat, &chat_stream(), Format::OpenaiResponses),
        "stream-chat-to-anthropic" => stream_round_trips(Format::OpenaiChat, &chat_stream(), Format::Anthropic),
        "stream-gemini-to-chat" => stream_round_trips(Format::Gemini, &gemini_stream(), Format::OpenaiChat),
        "stream-responses-to-chat" => stream_round_trips(Format::OpenaiResponses, &responses_stream(), Format::OpenaiChat),
        _ => {
            eprintln!(
                "usage: conversion_profile chat-to-anthropic|chat-to-gemini|large-anthropic-to-chat|large-chat-to-anthropic|large-anthropic-to-gemini|large-chat-to-gemini|large-anthropic-to-responses|large-chat-to-responses|stream-chat-to-responses|stream-chat-to-anthropic|stream-gemini-to-chat|stream-responses-to-chat"
            );
            std::process::exit(2);
        }
    }
}

fn lane_round_trips(upstream: Format, answer: &str) {
    let context = ConvertContext {
        upstream_model: "bench-upstream".into(),
        default_max_tokens: 4096,
        response_id: "chatcmpl-profile".into(),
        created_unix: 1,
        ..ConvertContext::default()
    };
    let parsed = OnceCell::new();
    let parse = || parsed.get_or_init(|| serde_json::from_str::<Value>(LANE_REQUEST).expect("JSON"));
    let mut written = 0;
    for _ in 0..1_000 {
        let body = ClientBody::Bytes { bytes: LANE_REQUEST.as_bytes(), parse: &parse };
        let request = convert_request_with_media(Format::OpenaiChat, upstream, body, &context, &mut |_| Err(String::new()), false);
        written += request.expect("converts").len();
        let (converted, _usage) = convert_response_and_usage(upstream, Format::OpenaiChat, answer.as_bytes(), &context).expect("converts");
        written += converted.len();
    }
    println!("{written} bytes written");
}

/// A Chat upstream's stream, framed as SSE.
fn chat_stream() -> String {
    let mut chunks = vec![r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}"#.to_string()];
    let chunk = |delta: Value| json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": delta}]}).to_string();
    for i in 0..200 {
        chunks.push(chunk(json!({"reasoning_content": format!("thinking step {i}, ")})));
    }
    for i in 0..100 {
        chunks.push(chunk(json!({"content": format!("word{i} ")})));
    }
    chunks.push(chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": ""}}]})));
    for i in 0..50 {
        chunks.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": if i == 0 { "{\"path\": \"".to_string() } else { format!("part{i}/") }}}]})));
    }
    chunks.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"}"}}]})));
    chunks.push(r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":10,"completion_tokens":300,"total_tokens":310}}"#.to_string());
    chunks.iter().map(|data| format!("data: {data}\n\n")).collect::<String>() + "data: [DONE]\n\n"
}

/// A Gemini upstream's `alt=sse` stream.
fn gemini_stream() -> String {
    let chunk = |text: String, finish: Option<&str>, output_tokens: u32| {
        let mut candidate = json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
        if let Some(reason) = finish {
            candidate["finishReason"] = reason.into();
        }
        json!({"candidates": [candidate], "usageMetadata": {"promptTokenCount": 31, "candidatesTokenCount": output_tokens,
            "totalTokenCount": 31 + output_tokens}, "modelVersion": "gemini-2.5-flash", "responseId": "bench0001"})
    };
    let mut wire = String::new();
    for i in 0..300 {
        wire += &format!("data: {}\r\n\r\n", chunk(format!("word{i} "), None, i));
    }
    wire + &format!("data: {}\r\n\r\n", chunk(String::new(), Some("STOP"), 300))
}

/// A Responses upstream's stream: reasoning summary deltas, then text deltas, with the item
/// events around them and the terminal `response.completed`.
fn responses_stream() -> String {
    let mut events = vec![
        json!({"type": "response.created", "response": {"id": "resp_1", "object": "response", "model": "gpt-5", "status": "in_progress", "output": []}}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "id": "rs_1", "summary": []}}),
    ];
    for i in 0..100 {
        events.push(json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": format!("step {i} ")}));
    }
    events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "ZW5j"}}));
    events.push(json!({"type": "response.output_item.added", "output_index": 1, "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": []}}));
    events.push(json!({"type": "response.content_part.added", "item_id": "msg_1", "output_index": 1, "content_index": 0, "part": {"type": "output_text", "text": ""}}));
    for i in 0..300 {
        events.push(json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1, "content_index": 0, "delta": format!("word{i} "), "logprobs": []}));
    }
    events.push(json!({"type": "response.output_item.done", "output_index": 1, "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text", "text": "words"}]}}));
    events.push(json!({"type": "response.completed", "response": {"id": "resp_1", "object": "response", "model": "gpt-5", "status": "completed",
        "usage": {"input_tokens": 31, "output_tokens": 400, "total_tokens": 431, "output_tokens_details": {"reasoning_tokens": 100}}}}));
    events
        .iter()
        .enumerate()
        .map(|(sequence_number, event)| {
            let mut event = event.clone();
            event["sequence_number"] = sequence_number.into();
            format!("event: {}\ndata: {event}\n\n", event["type"].as_str().expect("typed"))
        })
        .collect()
}

fn stream_round_trips(upstream: Format, wire: &str, client: Format) {
    let mut events = Vec::new();
    SseParser::new(1 << 20).push(wire.as_bytes(), &mut events).expect("the stream parses");
    let context = ConvertContext { upstream_model: "m".into(), stream: true, default_max_tokens: 4096, ..ConvertContext::default() };
    let mut written = 0;
    for _ in 0..200 {
        let mut transcoder = StreamTranscoder::new(upstream, client, &context);
        let mut out = Vec::new();
        for event in &events {
            transcoder.push(event, &mut out).expect("transcodes");
        }
        transcoder.finish(&mut out);
        written += out.len();
    }
    println!("{} events in, {written} bytes written", events.len());
}

fn large_requests(request: &str, client: Format, upstream: Format) {
    let context = ConvertContext { upstream_model: "profile".into(), stream: true, default_max_tokens: 4096, ..ConvertContext::default() };
    let parsed = OnceCell::new();
    let parse = || parsed.get_or_init(|| serde_json::from_str::<Value>(request).expect("JSON"));
    const ROUNDS: u32 = 20;
    let started = Instant::now();
    let mut written = 0;
    for _ in 0..ROUNDS {
        let body = ClientBody::Bytes { bytes: request.as_bytes(), parse: &parse };
        written += convert_request_with_media(client, upstream, body, &context, &mut |_| Err(String::new()), false).expect("converts").len();
    }
    println!("{} bytes in, {} out, {:?} per conversion", request.len(), written / ROUNDS as usize, started.elapsed() / ROUNDS);
}

fn filler(length: usize) -> String {
    "lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(length / 57 + 1)
}

fn tool_schema() -> Value {
    json!({"type": "object", "properties": {
        "path": {"type": "string", "description": filler(200)},
        "limit": {"type": "integer"},
        "flags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}}
    }, "required": ["path"]})
}

fn large_anthropic_request() -> String {
    let tools: Vec<Value> =
        (0..40).map(|i| json!({"name": format!("tool_{i}"), "description": filler(300), "input_schema": tool_schema()})).collect();
    let mut messages = Vec::new();
    for i in 0..30 {
        messages.push(json!({"role": "user", "content": [{"type": "text", "text": filler(2000)}]}));
        messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": filler(300)},
            {"type": "tool_use", "id": format!("toolu_{i}"), "name": "tool_1", "input": {"path": "/src/main.rs", "limit": 200}}]}));
        messages.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": format!("toolu_{i}"), "content": filler(3000)}]}));
    }
    messages.push(json!({"role": "user", "content": "continue"}));
    json!({"model": "claude", "max_tokens": 32000, "stream": true, "tools": tools, "messages": messages,
        "system": [{"type": "text", "text": filler(15000), "cache_control": {"type": "ephemeral"}}]})
    .to_string()
}

fn large_chat_request() -> String {
    let tools: Vec<Value> = (0..40)
        .map(|i| json!({"type": "function", "function": {"name": format!("tool_{i}"), "description": filler(300), "parameters": tool_schema()}}))
        .collect();
    let mut messages = vec![json!({"role": "system", "content": filler(15000)})];
    for i in 0..30 {
        messages.push(json!({"role": "user", "content": filler(2000)}));
        messages.push(json!({"role": "assistant", "content": filler(300), "tool_calls": [{"id": format!("call_{i}"), "type": "function",
            "function": {"name": "tool_1", "arguments": r#"{"path":"/src/main.rs","limit":200}"#}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": filler(3000)}));
    }
    messages.push(json!({"role": "user", "content": "continue"}));
    json!({"model": "gpt", "max_tokens": 32000, "stream": true, "tools": tools, "messages": messages}).to_string()
}
