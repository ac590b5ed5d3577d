//! `POST /v1/messages/count_tokens` (Anthropic): Claude Code asks it before sending large prompts.
//! Answered locally with an estimate, so it works whatever channel type serves the group.

use serde_json::{json, Value};

use crate::http::{Request, Response};
use crate::protocol::Format;
use crate::relay::client_auth::{authenticate, may_use_model};
use crate::relay::error::RelayError;
use crate::relay::RelayState;

/// Roughly four characters of English or code per token; good enough for a client-side budget.
const CHARACTERS_PER_TOKEN: usize = 4;

pub fn handle(state: &RelayState, request: &Request) -> Response {
    match count(state, request) {
        Ok(tokens) => Response::json(200, &json!({"input_tokens": tokens})),
        Err(error) => error.render(Format::Anthropic),
    }
}

fn count(state: &RelayState, request: &Request) -> Result<u64, RelayError> {
    let snapshot = state.snapshot.current();
    let api_key = authenticate(&snapshot, request, crate::util::unix_seconds())?;
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|error| RelayError::InvalidRequest(format!("the request body is not valid JSON: {error}")))?;
    let model = body.get("model").and_then(Value::as_str).unwrap_or_default();
    if !snapshot.groups_by_name.contains_key(model) {
        return Err(RelayError::UnknownModel(format!("the model {model:?} does not exist")));
    }
    if !may_use_model(&api_key, model) {
        return Err(RelayError::ModelNotAllowed(format!("this API key may not use the model {model:?}")));
    }
    let mut characters = 0;
    for field in ["system", "messages", "tools"] {
        if let Some(value) = body.get(field) {
            characters += text_length(value);
        }
    }
    Ok((characters.div_ceil(CHARACTERS_PER_TOKEN)).max(1) as u64)
}

/// Characters of every string in a JSON value (keys of tool schemas included, since they are sent).
fn text_length(value: &Value) -> usize {
    match value {
        Value::String(text) => text.chars().count(),
        Value::Array(items) => items.iter().map(text_length).sum(),
        Value::Object(map) => map.iter().map(|(key, value)| key.len() + text_length(value)).sum(),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_string_in_system_messages_and_tools() {
        let body = json!({"system": "abcd", "messages": [{"role": "user", "content": "abcdefgh"}]});
        // "abcd" (4) + keys "role"(4) "content"(7) + "user"(4) + "abcdefgh"(8) = 27 characters.
        let characters = text_length(&body["system"]) + text_length(&body["messages"]);
        assert_eq!(characters, 27);
    }
}
