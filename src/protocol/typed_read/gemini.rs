//! Reads Gemini `generateContent` answers from their bytes into the IR (see `typed_read`); the
//! rules are `gemini::parse_response`'s. Only the shapes a model's answer takes are modelled:
//! text, thoughts and function calls. Media parts, code execution parts, a blocked prompt with no
//! candidate, and both spellings of one member (camelCase and snake_case) at once are left to the
//! `Value` reader.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::protocol::gemini::{StreamChunk, finish_reason_from_gemini, gemini_signature, synthesized_call_id};
use crate::protocol::ir::{Part, Reasoning, Response, ResponseMeta, ToolCall};
use crate::protocol::typed_read::{JsonObject, optional_borrowed_str, read_body};
use crate::protocol::usage::GeminiUsage;

/// The answer's top level. The snake_case aliases are protobuf JSON's other spelling, which the
/// `Value` reader accepts too; with both spellings present serde refuses the body as a duplicate,
/// and the `Value` reader (which prefers camelCase) reads it.
#[derive(Deserialize)]
struct GenerateResponseIn<'a> {
    #[serde(borrow)]
    candidates: Option<Vec<JsonObject<CandidateIn<'a>>>>,
    #[serde(rename = "usageMetadata", alias = "usage_metadata")]
    usage_metadata: Option<JsonObject<GeminiUsage>>,
    #[serde(rename = "modelVersion", alias = "model_version")]
    model_version: Option<String>,
    #[serde(rename = "responseId", alias = "response_id")]
    response_id: Option<String>,
    /// A stream's error chunk, which the `Value` reader turns into an error event.
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct CandidateIn<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    content: Option<JsonObject<ContentIn<'a>>>,
    #[serde(rename = "finishReason", alias = "finish_reason", borrow, default, deserialize_with = "optional_borrowed_str")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ContentIn<'a> {
    #[serde(borrow)]
    parts: Option<Vec<JsonObject<PartIn<'a>>>>,
}

/// A part of the answer. Any member not named here (media, code execution) makes serde refuse
/// the part, so the `Value` reader reads the body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartIn<'a> {
    text: Option<String>,
    thought: Option<bool>,
    #[serde(rename = "thoughtSignature", alias = "thought_signature", borrow, default, deserialize_with = "optional_borrowed_str")]
    thought_signature: Option<Cow<'a, str>>,
    #[serde(rename = "functionCall", alias = "function_call", borrow)]
    function_call: Option<JsonObject<FunctionCallIn<'a>>>,
}

#[derive(Deserialize)]
struct FunctionCallIn<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
    id: Option<Cow<'a, str>>,
    name: Option<String>,
    /// Kept as a `Value` because the `Value` reader writes the arguments out from one, in its
    /// key order and spacing.
    args: Option<Value>,
}

/// Reads a `generateContent` answer, or `None` when `gemini::parse_response` must.
pub fn read_response(body: &[u8], meta: &ResponseMeta) -> Option<Response> {
    let body: GenerateResponseIn = read_body(body)?;
    let (parts, finish_reason) = first_candidate(body.candidates, &meta.id, 0)?;
    let has_calls = parts.iter().any(|part| matches!(part, Part::ToolCall(_)));
    Some(Response {
        id: body.response_id.unwrap_or_default(),
        model: body.model_version.unwrap_or_default(),
        parts,
        finish_reason: finish_reason_from_gemini(finish_reason.as_deref().unwrap_or("STOP"), has_calls),
        usage: body.usage_metadata.map(|JsonObject(usage)| usage.normalize()),
    })
}

/// The parts and finish reason of the candidate with index 0 (or the first one), calls without
/// an id numbered from `calls_before`. None without such a candidate (the prompt may have been
/// blocked, which the `Value` reader reads from `promptFeedback`) or with a part it leaves to
/// that reader.
fn first_candidate<'a>(
    candidates: Option<Vec<JsonObject<CandidateIn<'a>>>>,
    call_id_seed: &str,
    calls_before: usize,
) -> Option<(Vec<Part>, Option<Cow<'a, str>>)> {
    let JsonObject(candidate) = candidates?.into_iter().find(|JsonObject(candidate)| candidate.index.unwrap_or(0) == 0)?;
    let mut parts = Vec::new();
    let mut calls = calls_before;
    if let Some(JsonObject(content)) = candidate.content {
        for JsonObject(part) in content.parts.into_iter().flatten() {
            read_model_part(part, &mut parts, &mut calls, call_id_seed)?;
        }
    }
    Some((parts, candidate.finish_reason))
}

/// Reads one chunk of an `alt=sse` stream (a `generateContent` answer in pieces), or `None` when
/// `gemini::StreamDecoder::push_chunk` must: an error chunk, a chunk without a first candidate
/// (a blocked prompt, usage alone), and whatever `read_response` leaves to the `Value` reader.
/// Calls without an id are numbered from `calls_before`, the calls of the chunks before.
pub(crate) fn read_stream_chunk(data: &[u8], call_id_seed: &str, calls_before: usize) -> Option<StreamChunk> {
    stream_chunk(read_body(data)?, call_id_seed, calls_before)
}

/// An Antigravity stream chunk: a Gemini chunk in `{"response": …}`. A chunk without that
/// envelope (which `antigravity::StreamDecoder` reads as a bare Gemini chunk) is left to the
/// `Value` reader. Members beside `response` are not read, as that reader does not read them.
pub(crate) fn read_antigravity_stream_chunk(data: &[u8], call_id_seed: &str, calls_before: usize) -> Option<StreamChunk> {
    let envelope: EnvelopeIn = read_body(data)?;
    let JsonObject(chunk) = envelope.response?;
    stream_chunk(chunk, call_id_seed, calls_before)
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    #[serde(borrow)]
    response: Option<JsonObject<GenerateResponseIn<'a>>>,
}

fn stream_chunk(body: GenerateResponseIn<'_>, call_id_seed: &str, calls_before: usize) -> Option<StreamChunk> {
    if body.error.is_some() {
        return None;
    }
    let (parts, finish_reason) = first_candidate(body.candidates, call_id_seed, calls_before)?;
    Some(StreamChunk {
        response_id: body.response_id,
        model_version: body.model_version,
        usage: body.usage_metadata.map(|JsonObject(usage)| usage.normalize()),
        parts,
        finish_reason: finish_reason.map(Cow::into_owned),
        blocked: false,
    })
}

/// One part, as `gemini::parse_model_parts` reads it. A call without an id gets one made from
/// `response_id` and the number of calls before it, as the `Value` reader numbers them.
fn read_model_part(part: PartIn<'_>, out: &mut Vec<Part>, calls_before: &mut usize, response_id: &str) -> Option<()> {
    let signature = part.thought_signature.as_deref().filter(|signature| !signature.is_empty()).map(gemini_signature);
    if let Some(JsonObject(call)) = part.function_call {
        let ordinal = *calls_before;
        *calls_before += 1;
        out.push(Part::ToolCall(ToolCall {
            id: match call.id.filter(|id| !id.is_empty()) {
                Some(id) => id.into_owned(),
                None => synthesized_call_id(response_id, ordinal),
            },
            name: call.name?,
            arguments: call.args.map_or_else(|| "{}".to_string(), |args| args.to_string()),
            signature,
        }));
        return Some(());
    }
    if let Some(text) = part.text {
        if part.thought == Some(true) {
            if !text.is_empty() || signature.is_some() {
                out.push(Part::Reasoning(Reasoning { text, signature, redacted: false }));
            }
            return Some(());
        }
        if !text.is_empty() {
            out.push(Part::text(text));
        }
    }
    if let Some(signature) = signature {
        out.push(Part::Reasoning(Reasoning { text: String::new(), signature: Some(signature), redacted: false }));
    }
    Some(())
}
