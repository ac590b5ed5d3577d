//! Upstream URLs and auth headers per channel type (DESIGN.md §3), as pure functions.
//!
//! A channel's base URL normally gets the type's path appended after its trailing slashes are
//! trimmed. A base URL ending in `#` is an escape hatch for providers with unusual paths: it
//! is used verbatim, without the `#` and without any appended path, model or query (the caller
//! then owns the whole URL, including `?alt=sse` for Gemini streams).

use crate::store::entities::ChannelType;
use crate::util::concat;

/// The URL of a generate call for `upstream_model` on a channel of `channel_type`.
pub fn upstream_url(
    channel_type: ChannelType,
    base_url: &str,
    upstream_model: &str,
    stream: bool,
) -> String {
    if let Some(verbatim) = base_url.strip_suffix('#') {
        return verbatim.to_string();
    }
    let base = base_url.trim_end_matches('/');
    // Gemini lists its models as `models/<id>`; accept either form.
    let model = upstream_model
        .strip_prefix("models/")
        .unwrap_or(upstream_model);
    match (channel_type, stream) {
        (ChannelType::OpenaiChat, _) => concat(&[base, "/chat/completions"]),
        (ChannelType::OpenaiResponses, _) => concat(&[base, "/responses"]),
        (ChannelType::Anthropic, _) => concat(&[base, "/messages"]),
        (ChannelType::Gemini, false) => concat(&[base, "/models/", model, ":generateContent"]),
        (ChannelType::Gemini, true) => concat(&[base, "/models/", model, ":streamGenerateContent?alt=sse"]),
        (ChannelType::Antigravity, false) => concat(&[base, "/v1internal:generateContent"]),
        (ChannelType::Antigravity, true) => concat(&[base, "/v1internal:streamGenerateContent?alt=sse"]),
    }
}

/// The URL of an embeddings call, or None for channel types that cannot embed (Anthropic,
/// Antigravity). A verbatim base URL (ending in `#`) names a generate endpoint, so as for model
/// lists the `#` is dropped and the embeddings path appended.
pub fn embeddings_url(
    channel_type: ChannelType,
    base_url: &str,
    upstream_model: &str,
) -> Option<String> {
    let base = base_url.trim_end_matches('#').trim_end_matches('/');
    let model = upstream_model
        .strip_prefix("models/")
        .unwrap_or(upstream_model);
    match channel_type {
        ChannelType::OpenaiChat | ChannelType::OpenaiResponses => {
            Some(format!("{base}/embeddings"))
        }
        ChannelType::Gemini => Some(format!("{base}/models/{model}:batchEmbedContents")),
        ChannelType::Anthropic | ChannelType::Antigravity => None,
    }
}

/// The auth headers for `key`. For Antigravity `key` must already be an OAuth access token
/// (the caller refreshes it); Antigravity must never get `x-goog-api-key`.
pub fn auth_headers(channel_type: ChannelType, key: &str) -> Vec<(String, String)> {
    match channel_type {
        ChannelType::OpenaiChat | ChannelType::OpenaiResponses | ChannelType::Antigravity => {
            vec![("authorization".to_string(), concat(&["Bearer ", key]))]
        }
        ChannelType::Anthropic => vec![
            ("x-api-key".to_string(), key.to_string()),
            ("anthropic-version".to_string(), "2023-06-01".to_string()),
        ],
        ChannelType::Gemini => vec![("x-goog-api-key".to_string(), key.to_string())],
    }
}

/// The URL and headers that list a channel's models, for model sync.
///
/// OpenAI, Anthropic and Gemini take a `GET`. Anthropic pages with `after_id` and Gemini with
/// `pageToken`: the caller appends those for the next page (`&` after the query given here).
/// Antigravity takes a `POST` with the JSON body `{"project": "<id>"}`, which the caller sends.
/// A base URL ending in `#` is treated as an ordinary base here: the `#` is dropped and the
/// list path appended, since a verbatim generate URL says nothing about where models are listed.
pub fn models_list_request(
    channel_type: ChannelType,
    base_url: &str,
    key: &str,
) -> (String, Vec<(String, String)>) {
    let base = base_url.trim_end_matches('#').trim_end_matches('/');
    let url = match channel_type {
        ChannelType::OpenaiChat | ChannelType::OpenaiResponses => format!("{base}/models"),
        ChannelType::Anthropic => format!("{base}/models?limit=1000"),
        ChannelType::Gemini => format!("{base}/models?pageSize=1000"),
        ChannelType::Antigravity => format!("{base}/v1internal:fetchAvailableModels"),
    };
    (url, auth_headers(channel_type, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn openai_chat() {
        let channel_type = ChannelType::OpenaiChat;
        assert_eq!(
            upstream_url(channel_type, "https://api.openai.com/v1/", "gpt-4o", true),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            auth_headers(channel_type, "sk-1"),
            headers(&[("authorization", "Bearer sk-1")])
        );
        assert_eq!(channel_type.default_base_url(), "https://api.openai.com/v1");
        assert_eq!(
            models_list_request(channel_type, "https://api.openai.com/v1", "sk-1"),
            (
                "https://api.openai.com/v1/models".to_string(),
                headers(&[("authorization", "Bearer sk-1")])
            )
        );
    }

    #[test]
    fn openai_responses() {
        let channel_type = ChannelType::OpenaiResponses;
        assert_eq!(
            upstream_url(channel_type, "https://api.openai.com/v1", "o3", false),
            "https://api.openai.com/v1/responses"
        );
        assert_eq!(
            auth_headers(channel_type, "sk-2"),
            headers(&[("authorization", "Bearer sk-2")])
        );
        assert_eq!(channel_type.default_base_url(), "https://api.openai.com/v1");
    }

    #[test]
    fn anthropic() {
        let channel_type = ChannelType::Anthropic;
        assert_eq!(
            upstream_url(
                channel_type,
                "https://api.anthropic.com/v1//",
                "claude-sonnet-4-5",
                true
            ),
            "https://api.anthropic.com/v1/messages"
        );
        let expected_headers =
            headers(&[("x-api-key", "sk-ant"), ("anthropic-version", "2023-06-01")]);
        assert_eq!(auth_headers(channel_type, "sk-ant"), expected_headers);
        assert_eq!(
            channel_type.default_base_url(),
            "https://api.anthropic.com/v1"
        );
        assert_eq!(
            models_list_request(channel_type, "https://api.anthropic.com/v1", "sk-ant"),
            (
                "https://api.anthropic.com/v1/models?limit=1000".to_string(),
                expected_headers
            )
        );
    }

    #[test]
    fn gemini() {
        let channel_type = ChannelType::Gemini;
        let base = "https://generativelanguage.googleapis.com/v1beta";
        assert_eq!(
            upstream_url(channel_type, base, "gemini-2.5-flash", false),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            upstream_url(
                channel_type,
                "https://generativelanguage.googleapis.com/v1beta/",
                "models/gemini-2.5-flash",
                true
            ),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        let expected_headers = headers(&[("x-goog-api-key", "AIza")]);
        assert_eq!(auth_headers(channel_type, "AIza"), expected_headers);
        assert_eq!(channel_type.default_base_url(), base);
        assert_eq!(
            models_list_request(channel_type, base, "AIza"),
            (format!("{base}/models?pageSize=1000"), expected_headers)
        );
    }

    #[test]
    fn antigravity() {
        let channel_type = ChannelType::Antigravity;
        let base = "https://cloudcode-pa.googleapis.com";
        assert_eq!(
            upstream_url(channel_type, base, "claude-sonnet-4-5", false),
            "https://cloudcode-pa.googleapis.com/v1internal:generateContent"
        );
        assert_eq!(
            upstream_url(
                channel_type,
                "https://cloudcode-pa.googleapis.com/",
                "gemini-3-flash",
                true
            ),
            "https://cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse"
        );
        let expected_headers = headers(&[("authorization", "Bearer ya29.token")]);
        assert_eq!(auth_headers(channel_type, "ya29.token"), expected_headers);
        assert!(
            auth_headers(channel_type, "ya29.token")
                .iter()
                .all(|(name, _)| name != "x-goog-api-key")
        );
        assert_eq!(channel_type.default_base_url(), base);
        assert_eq!(
            models_list_request(channel_type, base, "ya29.token"),
            (
                format!("{base}/v1internal:fetchAvailableModels"),
                expected_headers
            )
        );
    }

    #[test]
    fn a_base_ending_in_hash_is_used_verbatim() {
        for channel_type in ChannelType::ALL {
            for stream in [false, true] {
                assert_eq!(
                    upstream_url(
                        channel_type,
                        "https://proxy.example/custom/path/#",
                        "model-x",
                        stream
                    ),
                    "https://proxy.example/custom/path/"
                );
            }
        }
        assert_eq!(
            models_list_request(ChannelType::OpenaiChat, "https://proxy.example/v1/#", "k").0,
            "https://proxy.example/v1/models"
        );
    }

    #[test]
    fn embeddings_go_to_openai_and_gemini_paths_only() {
        assert_eq!(
            embeddings_url(
                ChannelType::OpenaiResponses,
                "https://api.openai.com/v1/",
                "m"
            ),
            Some("https://api.openai.com/v1/embeddings".to_string())
        );
        assert_eq!(
            embeddings_url(
                ChannelType::Gemini,
                "https://generativelanguage.googleapis.com/v1beta",
                "models/text-embedding-004"
            ),
            Some(
                "https://generativelanguage.googleapis.com/v1beta/models/text-embedding-004:batchEmbedContents"
                    .to_string()
            )
        );
        assert_eq!(
            embeddings_url(
                ChannelType::OpenaiChat,
                "https://proxy.example/v1/chat#",
                "m"
            ),
            Some("https://proxy.example/v1/chat/embeddings".to_string())
        );
        assert_eq!(
            embeddings_url(ChannelType::Anthropic, "https://x", "m"),
            None
        );
        assert_eq!(
            embeddings_url(ChannelType::Antigravity, "https://x", "m"),
            None
        );
    }
}
