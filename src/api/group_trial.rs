//! `POST /api/v1/groups/{id}/test`: sends one prompt through the real relay path of a group
//! (routing, failover, conversion) on the admin's behalf, for the panel's try-it box.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::{body, store_call, AdminContext};
use crate::http::{ClientProbe, Request, Response};
use crate::protocol::Format;
use crate::relay::forward::{handle_generate_for, Caller};
use crate::relay::inbound;

/// The answer is kept short: this checks that the group works, it is not a chat.
const TRIAL_MAX_TOKENS: u64 = 256;
const MAX_PROMPT_CHARS: usize = 8_000;

pub fn test(context: &AdminContext, request: &Request, id: i64) -> Result<Response, ApiError> {
    let map = body::json_object(request, &["prompt"], &[])?;
    let prompt = body::required_string(&map, "prompt")?;
    if prompt.trim().is_empty() || prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::Invalid(format!("prompt must be 1 to {MAX_PROMPT_CHARS} characters")));
    }
    let group = store_call(context, move |store| store.group_by_id(id))?.ok_or_else(|| ApiError::NotFound(format!("no group with id {id}")))?;
    let relay = context.relay.upgrade().ok_or_else(|| ApiError::Internal("the relay is not running".to_string()))?;
    let body = json!({
        "model": group.name,
        "max_tokens": TRIAL_MAX_TOKENS,
        "messages": [{"role": "user", "content": prompt}],
    });
    let mut trial = Request {
        method: "POST".to_string(),
        path: "/v1/chat/completions".to_string(),
        query: String::new(),
        headers: vec![("content-type".to_string(), "application/json".to_string())],
        body: body.to_string().into_bytes(),
        peer: request.peer,
        client: ClientProbe::detached(),
    };
    let route = inbound::route(&trial.method, &trial.path).ok_or_else(|| ApiError::Internal("no relay route for chat completions".to_string()))?;
    let answered_by = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let response = handle_generate_for(&relay, &mut trial, &route, Format::OpenaiChat, Caller::Admin { answered_by: answered_by.clone() });
    let latency_ms = started.elapsed().as_millis() as u64;
    let status = response.status;
    let answer: Value = match &response.body {
        crate::http::Body::Bytes(bytes) => serde_json::from_slice(bytes).unwrap_or(Value::Null),
        crate::http::Body::Stream(_) => Value::Null,
    };
    let (channel_name, model) = answered_by.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone().unwrap_or_default();
    let ok = (200..300).contains(&status);
    Ok(Response::json(
        200,
        &json!({
            "ok": ok,
            "status": status,
            "latency_ms": latency_ms,
            "text": if ok { answer["choices"][0]["message"]["content"].clone() } else { Value::Null },
            "channel_name": if channel_name.is_empty() { Value::Null } else { json!(channel_name) },
            "model": if model.is_empty() { Value::Null } else { json!(model) },
            "error": if ok { Value::Null } else { answer["error"]["message"].clone() },
        }),
    ))
}
