//! Recognising relay requests: which client protocol, which group (model), streaming or not.

use serde_json::Value;

use crate::http::Request;
use crate::protocol::Format;
use crate::relay::error::RelayError;

/// A parsed client call on one of the generation endpoints.
#[derive(Debug)]
pub struct InboundCall {
    pub client_format: Format,
    /// The group name the client asked for.
    pub model: String,
    pub stream: bool,
    /// Gemini's `:streamGenerateContent` without `alt=sse` answers with a JSON array, not SSE.
    pub gemini_json_array: bool,
    /// The body as JSON (always an object).
    pub body: Value,
    /// The client's bytes of `body`, while `body` still matches them: whoever edits `body` sets
    /// this to `None`. Same-format pass-through splices the model into them.
    pub raw_body: Option<Vec<u8>>,
    /// The client's headers (lower-case names), for forwarding.
    pub headers: Vec<(String, String)>,
}

/// Which relay endpoint a request targets.
pub enum RelayRoute {
    Generate(Format),
    /// `POST /v1beta/models/{model}:generateContent` or `:streamGenerateContent`.
    GeminiGenerate { model: String, stream: bool },
    /// `POST /v1beta/models/{model}:countTokens`, answered locally.
    GeminiCountTokens { model: String },
    /// `POST /v1/embeddings` (OpenAI's shape).
    Embeddings,
    ListModels,
    ListGeminiModels,
}

/// Matches a path to a relay endpoint; None when it is not a relay path.
pub fn route(method: &str, path: &str) -> Option<RelayRoute> {
    match (method, path) {
        ("POST", "/v1/chat/completions") => Some(RelayRoute::Generate(Format::OpenaiChat)),
        ("POST", "/v1/responses") => Some(RelayRoute::Generate(Format::OpenaiResponses)),
        ("POST", "/v1/messages") => Some(RelayRoute::Generate(Format::Anthropic)),
        ("GET", "/v1/models") => Some(RelayRoute::ListModels),
        ("GET", "/v1beta/models") => Some(RelayRoute::ListGeminiModels),
        ("POST", "/v1/embeddings") => Some(RelayRoute::Embeddings),
        ("POST", _) => {
            // The Google GenAI SDKs call `/v1beta/...` by default, but `/v1/...` (and `/v1alpha`)
            // when configured or with a custom base URL; all mean the same here.
            let rest = ["/v1beta/models/", "/v1/models/", "/v1alpha/models/"].iter().find_map(|prefix| path.strip_prefix(prefix))?;
            let (model, method_name) = rest.rsplit_once(':')?;
            let model = crate::util::percent_decode(model);
            match method_name {
                "generateContent" => Some(RelayRoute::GeminiGenerate { model, stream: false }),
                "streamGenerateContent" => Some(RelayRoute::GeminiGenerate { model, stream: true }),
                "countTokens" => Some(RelayRoute::GeminiCountTokens { model }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The client protocol a path belongs to, used to shape errors even for requests that fail
/// before they are understood.
pub fn format_for_path(path: &str) -> Format {
    if path.starts_with("/v1beta/") || path.starts_with("/v1alpha/") || (path.starts_with("/v1/models/") && path.contains(':')) {
        Format::Gemini
    } else if path == "/v1/messages" {
        Format::Anthropic
    } else if path == "/v1/responses" || path.starts_with("/v1/responses/") {
        Format::OpenaiResponses
    } else {
        Format::OpenaiChat
    }
}

/// Parses the body of a generation call.
pub fn parse_call(route: &RelayRoute, request: &Request) -> Result<InboundCall, RelayError> {
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|error| RelayError::InvalidRequest(format!("the request body is not valid JSON: {error}")))?;
    if !body.is_object() {
        return Err(RelayError::InvalidRequest("the request body must be a JSON object".to_string()));
    }
    match route {
        RelayRoute::GeminiGenerate { model, stream } => Ok(InboundCall {
            client_format: Format::Gemini,
            model: model.clone(),
            stream: *stream,
            gemini_json_array: *stream && request.query_param("alt").as_deref() != Some("sse"),
            body,
            raw_body: Some(request.body.clone()),
            headers: request.headers.clone(),
        }),
        RelayRoute::Generate(format) => {
            let model = body
                .get("model")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|model| !model.is_empty())
                .ok_or_else(|| RelayError::InvalidRequest("the request must name a model (a group name)".to_string()))?
                .to_string();
            let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
            Ok(InboundCall {
                client_format: *format,
                model,
                stream,
                gemini_json_array: false,
                body,
                raw_body: Some(request.body.clone()),
                headers: request.headers.clone(),
            })
        }
        RelayRoute::ListModels | RelayRoute::ListGeminiModels | RelayRoute::GeminiCountTokens { .. } | RelayRoute::Embeddings => {
            Err(RelayError::Internal("this endpoint is not a generation call".to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_paths_carry_model_and_stream_mode() {
        match route("POST", "/v1beta/models/my-group:streamGenerateContent") {
            Some(RelayRoute::GeminiGenerate { model, stream }) => {
                assert_eq!(model, "my-group");
                assert!(stream);
            }
            _ => panic!("expected a Gemini route"),
        }
        assert!(matches!(route("POST", "/v1beta/models/a%2Fb:generateContent"), Some(RelayRoute::GeminiGenerate { model, stream: false }) if model == "a/b"));
        assert!(matches!(route("POST", "/v1beta/models/x:countTokens"), Some(RelayRoute::GeminiCountTokens { model }) if model == "x"));
        assert!(matches!(route("POST", "/v1/models/x:countTokens"), Some(RelayRoute::GeminiCountTokens { model }) if model == "x"));
        assert_eq!(format_for_path("/v1/models/x:countTokens"), Format::Gemini);
        assert!(route("POST", "/v1beta/models/x:embedContent").is_none());
        assert!(matches!(route("POST", "/v1/embeddings"), Some(RelayRoute::Embeddings)));
        assert!(matches!(route("POST", "/v1/models/g:generateContent"), Some(RelayRoute::GeminiGenerate { model, stream: false }) if model == "g"));
        assert_eq!(format_for_path("/v1/models/g:streamGenerateContent"), Format::Gemini);
        assert_eq!(format_for_path("/v1/models"), Format::OpenaiChat);
        assert!(route("GET", "/v1/chat/completions").is_none());
        assert!(matches!(route("GET", "/v1/models"), Some(RelayRoute::ListModels)));
    }
}
