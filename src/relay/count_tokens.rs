//! `POST /v1/messages/count_tokens` (Anthropic) and `POST /v1beta/models/{m}:countTokens`
//! (Gemini): clients ask before sending large prompts. Answered locally with an estimate, so it
//! works whatever channel type serves the group; the embeddings relay uses the same estimate for
//! upstreams that report no usage.

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

/// Answers Gemini's `countTokens` for the group named in the path with `{"totalTokens": N}`.
pub fn handle_gemini(state: &RelayState, request: &Request, model: &str) -> Response {
    let counted = authorize_and_parse(state, request, |_| Some(model.to_string())).map(|body| {
        // The SDKs send either the contents alone or a whole `generateContentRequest`; both are
        // counted field by field, whichever is present.
        let request_fields = body.get("generateContentRequest").unwrap_or(&body);
        let characters: usize = ["contents", "systemInstruction", "tools"]
            .iter()
            .filter_map(|field| request_fields.get(*field))
            .map(text_length)
            .sum();
        tokens_for_characters(characters)
    });
    match counted {
        Ok(tokens) => Response::json(200, &json!({"totalTokens": tokens})),
        Err(error) => error.render(Format::Gemini),
    }
}

fn count(state: &RelayState, request: &Request) -> Result<u64, RelayError> {
    let body = authorize_and_parse(state, request, |body| body.get("model").and_then(Value::as_str).map(str::to_string))?;
    let characters: usize = ["system", "messages", "tools"].iter().filter_map(|field| body.get(*field)).map(text_length).sum();
    Ok(tokens_for_characters(characters))
}

/// The estimated tokens of a JSON value's text (every string, and the keys of objects).
pub fn estimate_tokens(value: &Value) -> u64 {
    tokens_for_characters(text_length(value))
}

/// The estimated tokens of one text.
pub fn estimate_text_tokens(text: &str) -> u64 {
    tokens_for_characters(text.chars().count())
}

fn tokens_for_characters(characters: usize) -> u64 {
    (characters.div_ceil(CHARACTERS_PER_TOKEN)).max(1) as u64
}

/// Checks the client key, parses the body and checks that the group (found by `group_of`)
/// exists and that the key may use it. Returns the body.
fn authorize_and_parse(state: &RelayState, request: &Request, group_of: impl FnOnce(&Value) -> Option<String>) -> Result<Value, RelayError> {
    let snapshot = state.snapshot.current();
    let api_key = authenticate(&snapshot, request, crate::util::unix_seconds())?;
    let body: Value = if request.body.is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&request.body)
            .map_err(|error| RelayError::InvalidRequest(format!("the request body is not valid JSON: {error}")))?
    };
    let model = group_of(&body).unwrap_or_default();
    if !snapshot.groups_by_name.contains_key(&model) {
        return Err(RelayError::UnknownModel(format!("the model {model:?} does not exist")));
    }
    if !may_use_model(&api_key, &model) {
        return Err(RelayError::ModelNotAllowed(format!("this API key may not use the model {model:?}")));
    }
    Ok(body)
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

    #[test]
    fn gemini_contents_are_estimated_like_anthropic_messages() {
        let contents = json!([{"role": "user", "parts": [{"text": "abcdefgh"}]}]);
        // Keys "role"(4) "parts"(5) "text"(4) + "user"(4) + "abcdefgh"(8) = 25 characters.
        assert_eq!(text_length(&contents), 25);
        assert_eq!(estimate_tokens(&contents), 7);
        assert_eq!(estimate_tokens(&json!("")), 1);
    }
}
