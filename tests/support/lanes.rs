//! The four client protocols as test "lanes": how a client of each protocol calls the relay in
//! pass-through (path, body, auth header), which channel type serves it, and how to read text,
//! errors and in-stream errors out of its answers, so that one scenario runs over every protocol.

#![allow(dead_code)]

use serde_json::{Value, json};

use crate::support::http_client::{TestResponse, sse_events};
use crate::support::mock_upstream::RecordedRequest;

/// A client protocol of the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    OpenaiChat,
    OpenaiResponses,
    Anthropic,
    Gemini,
}

/// One client protocol in pass-through to the channel type of the same protocol.
#[derive(Clone, Copy, Debug)]
pub struct Lane {
    pub protocol: Protocol,
    /// The channel type serving the lane; also the mock's name for the format.
    pub channel_type: &'static str,
    /// Appended to a mock's address to make the channel's base URL, as with the real providers.
    pub base_url_suffix: &'static str,
}

pub const OPENAI_CHAT: Lane = Lane {
    protocol: Protocol::OpenaiChat,
    channel_type: "openai_chat",
    base_url_suffix: "/v1",
};
pub const OPENAI_RESPONSES: Lane = Lane {
    protocol: Protocol::OpenaiResponses,
    channel_type: "openai_responses",
    base_url_suffix: "/v1",
};
pub const ANTHROPIC: Lane = Lane {
    protocol: Protocol::Anthropic,
    channel_type: "anthropic",
    base_url_suffix: "/v1",
};
pub const GEMINI: Lane = Lane {
    protocol: Protocol::Gemini,
    channel_type: "gemini",
    base_url_suffix: "/v1beta",
};

pub const LANES: [Lane; 4] = [OPENAI_CHAT, OPENAI_RESPONSES, ANTHROPIC, GEMINI];

/// The error `type` (OpenAI, Anthropic) or `status` (Google) a gateway error carries in each
/// protocol.
#[derive(Clone, Copy, Debug)]
pub struct ErrorTypes {
    pub openai: &'static str,
    pub anthropic: &'static str,
    pub google: &'static str,
}

pub const AUTHENTICATION_ERROR: ErrorTypes = ErrorTypes {
    openai: "authentication_error",
    anthropic: "authentication_error",
    google: "UNAUTHENTICATED",
};
pub const PERMISSION_ERROR: ErrorTypes = ErrorTypes {
    openai: "permission_error",
    anthropic: "permission_error",
    google: "PERMISSION_DENIED",
};
pub const NOT_FOUND_ERROR: ErrorTypes = ErrorTypes {
    openai: "invalid_request_error",
    anthropic: "not_found_error",
    google: "NOT_FOUND",
};
pub const INVALID_REQUEST_ERROR: ErrorTypes = ErrorTypes {
    openai: "invalid_request_error",
    anthropic: "invalid_request_error",
    google: "INVALID_ARGUMENT",
};
pub const TIMEOUT_ERROR: ErrorTypes = ErrorTypes {
    openai: "server_error",
    anthropic: "timeout_error",
    google: "DEADLINE_EXCEEDED",
};

/// An error body taken apart: the `type` (or Google `status`) and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorParts {
    pub error_type: String,
    pub message: String,
}

impl Lane {
    pub fn name(&self) -> &'static str {
        self.channel_type
    }

    /// The base URL of a channel of this lane on a mock at `mock_base_url` (`http://host:port`).
    pub fn base_url(&self, mock_base_url: &str) -> String {
        format!("{mock_base_url}{}", self.base_url_suffix)
    }

    /// The relay path a client of this lane calls for `group`.
    pub fn path(&self, group: &str, stream: bool) -> String {
        match (self.protocol, stream) {
            (Protocol::OpenaiChat, _) => "/v1/chat/completions".to_string(),
            (Protocol::OpenaiResponses, _) => "/v1/responses".to_string(),
            (Protocol::Anthropic, _) => "/v1/messages".to_string(),
            (Protocol::Gemini, false) => format!("/v1beta/models/{group}:generateContent"),
            (Protocol::Gemini, true) => {
                format!("/v1beta/models/{group}:streamGenerateContent?alt=sse")
            }
        }
    }

    /// The path (after the mock's address) the upstream call of this lane goes to.
    pub fn upstream_path(&self, upstream_model: &str, stream: bool) -> String {
        match (self.protocol, stream) {
            (Protocol::OpenaiChat, _) => "/v1/chat/completions".to_string(),
            (Protocol::OpenaiResponses, _) => "/v1/responses".to_string(),
            (Protocol::Anthropic, _) => "/v1/messages".to_string(),
            (Protocol::Gemini, false) => format!("/v1beta/models/{upstream_model}:generateContent"),
            (Protocol::Gemini, true) => {
                format!("/v1beta/models/{upstream_model}:streamGenerateContent")
            }
        }
    }

    /// A minimal SDK-shaped request body for `group`.
    pub fn body(&self, group: &str, stream: bool) -> Value {
        match self.protocol {
            Protocol::OpenaiChat => {
                json!({"model": group, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}]})
            }
            Protocol::OpenaiResponses => {
                json!({"model": group, "stream": stream, "input": "Say hello"})
            }
            Protocol::Anthropic => {
                json!({"model": group, "stream": stream, "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello"}]})
            }
            Protocol::Gemini => {
                json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]})
            }
        }
    }

    /// The headers this lane's official SDK sends the client key (and version) in.
    pub fn auth_headers(&self, client_key: &str) -> Vec<(&'static str, String)> {
        match self.protocol {
            Protocol::OpenaiChat | Protocol::OpenaiResponses => {
                vec![("authorization", format!("Bearer {client_key}"))]
            }
            Protocol::Anthropic => vec![
                ("x-api-key", client_key.to_string()),
                ("anthropic-version", "2023-06-01".to_string()),
            ],
            Protocol::Gemini => vec![("x-goog-api-key", client_key.to_string())],
        }
    }

    /// The channel key the upstream received, read from where this lane's provider expects it.
    pub fn upstream_key<'a>(&self, request: &'a RecordedRequest) -> Option<&'a str> {
        match self.protocol {
            Protocol::OpenaiChat | Protocol::OpenaiResponses => {
                request.header("authorization")?.strip_prefix("Bearer ")
            }
            Protocol::Anthropic => request.header("x-api-key"),
            Protocol::Gemini => request.header("x-goog-api-key"),
        }
    }

    /// The assistant text of a complete (non-stream) answer.
    pub fn text(&self, body: &Value) -> String {
        match self.protocol {
            Protocol::OpenaiChat => body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            Protocol::OpenaiResponses => items(&body["output"])
                .iter()
                .flat_map(|item| items(&item["content"]))
                .filter(|part| part["type"] == "output_text")
                .filter_map(|part| part["text"].as_str().map(str::to_string))
                .collect(),
            Protocol::Anthropic => items(&body["content"])
                .iter()
                .filter_map(|block| block["text"].as_str().map(str::to_string))
                .collect(),
            Protocol::Gemini => gemini_text(body),
        }
    }

    /// The assistant text of a streamed answer, joined from its deltas.
    pub fn stream_text(&self, body: &[u8]) -> String {
        sse_events(body)
            .iter()
            .map(|(event, data)| self.event_text(event.as_deref(), data))
            .collect()
    }

    /// How many events of a streamed answer carry text.
    pub fn text_event_count(&self, body: &[u8]) -> usize {
        sse_events(body)
            .iter()
            .filter(|(event, data)| !self.event_text(event.as_deref(), data).is_empty())
            .count()
    }

    /// The first framed events of `events` (as the mock sends them), up to and including the
    /// `text_events`-th one that carries text: a stream cut short partway through.
    pub fn events_through_text(&self, events: &[String], text_events: usize) -> Vec<String> {
        let mut seen = 0;
        let mut kept = Vec::new();
        for event in events {
            kept.push(event.clone());
            if !self.stream_text(event.as_bytes()).is_empty() {
                seen += 1;
                if seen == text_events {
                    break;
                }
            }
        }
        kept
    }

    /// The text delta one stream event carries (empty for the other events).
    fn event_text(&self, event: Option<&str>, data: &str) -> String {
        let Ok(value) = serde_json::from_str::<Value>(data) else {
            return String::new();
        };
        let delta = match self.protocol {
            Protocol::OpenaiChat => value["choices"][0]["delta"]["content"].as_str(),
            Protocol::OpenaiResponses if event == Some("response.output_text.delta") => {
                value["delta"].as_str()
            }
            Protocol::Anthropic if event == Some("content_block_delta") => {
                value["delta"]["text"].as_str()
            }
            Protocol::Gemini => return gemini_text(&value),
            _ => None,
        };
        delta.unwrap_or("").to_string()
    }

    /// The message of the in-stream error event this lane's clients understand, if the stream
    /// carries one in the right shape (for Responses: an `error` event and then `response.failed`).
    pub fn stream_error(&self, body: &[u8]) -> Option<String> {
        let events = sse_events(body);
        let parsed: Vec<(Option<String>, Value)> = events
            .iter()
            .map(|(event, data)| {
                (
                    event.clone(),
                    serde_json::from_str(data).unwrap_or(Value::Null),
                )
            })
            .collect();
        match self.protocol {
            Protocol::OpenaiChat => parsed.iter().find_map(|(event, value)| {
                let error = value.get("error")?;
                (event.is_none() && error["type"].is_string())
                    .then(|| error["message"].as_str().map(str::to_string))?
            }),
            Protocol::OpenaiResponses => {
                let error_position = parsed.iter().position(|(event, value)| {
                    event.as_deref() == Some("error") && value["type"] == "error"
                })?;
                let failed = parsed[error_position..].iter().any(|(event, value)| {
                    event.as_deref() == Some("response.failed")
                        && value["response"]["status"] == "failed"
                });
                failed.then(|| {
                    parsed[error_position].1["message"]
                        .as_str()
                        .map(str::to_string)
                })?
            }
            Protocol::Anthropic => parsed.iter().find_map(|(event, value)| {
                (event.as_deref() == Some("error")
                    && value["type"] == "error"
                    && value["error"]["type"].is_string())
                .then(|| value["error"]["message"].as_str().map(str::to_string))?
            }),
            Protocol::Gemini => parsed.iter().find_map(|(_, value)| {
                let error = value.get("error")?;
                (error["code"].is_u64() && error["status"].is_string())
                    .then(|| error["message"].as_str().map(str::to_string))?
            }),
        }
    }

    /// Checks that `response` is an error with `status` in this lane's own error shape and
    /// returns its type (Google: status name) and message.
    pub fn error_parts(&self, response: &TestResponse, status: u16) -> ErrorParts {
        assert_eq!(
            response.status,
            status,
            "{}: expected an error with status {status}, got: {}",
            self.name(),
            response.text()
        );
        assert!(
            response
                .header("content-type")
                .is_some_and(|value| value.starts_with("application/json")),
            "{}: error content type {:?}",
            self.name(),
            response.header("content-type")
        );
        let body = response.json();
        let text_field = |value: &Value, what: &str| -> String {
            value
                .as_str()
                .unwrap_or_else(|| panic!("{}: {what} is not a string in {body}", self.name()))
                .to_string()
        };
        match self.protocol {
            Protocol::OpenaiChat | Protocol::OpenaiResponses => {
                let error = &body["error"];
                assert!(
                    error.get("code").is_some(),
                    "{}: OpenAI errors carry a code field: {body}",
                    self.name()
                );
                ErrorParts {
                    error_type: text_field(&error["type"], "error.type"),
                    message: text_field(&error["message"], "error.message"),
                }
            }
            Protocol::Anthropic => {
                assert_eq!(body["type"], "error", "{}: {body}", self.name());
                let error = &body["error"];
                ErrorParts {
                    error_type: text_field(&error["type"], "error.type"),
                    message: text_field(&error["message"], "error.message"),
                }
            }
            Protocol::Gemini => {
                let error = &body["error"];
                assert_eq!(
                    error["code"],
                    json!(status),
                    "{}: Google errors repeat the status as code: {body}",
                    self.name()
                );
                ErrorParts {
                    error_type: text_field(&error["status"], "error.status"),
                    message: text_field(&error["message"], "error.message"),
                }
            }
        }
    }

    /// Checks the status, the shape and the type of a gateway error; returns its message.
    pub fn assert_error(&self, response: &TestResponse, status: u16, types: ErrorTypes) -> String {
        let parts = self.error_parts(response, status);
        assert_eq!(
            parts.error_type,
            self.pick(types),
            "{}: error type of {}",
            self.name(),
            response.text()
        );
        parts.message
    }

    /// This lane's entry of `types`.
    pub fn pick(&self, types: ErrorTypes) -> &'static str {
        match self.protocol {
            Protocol::OpenaiChat | Protocol::OpenaiResponses => types.openai,
            Protocol::Anthropic => types.anthropic,
            Protocol::Gemini => types.google,
        }
    }

    /// An error event as this lane's provider sends it at the start of a stream, after a 200.
    pub fn upstream_error_event(&self, message: &str) -> String {
        match self.protocol {
            Protocol::OpenaiChat => {
                format!(
                    "data: {}\n\n",
                    json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})
                )
            }
            Protocol::OpenaiResponses => format!(
                "event: error\ndata: {}\n\n",
                json!({"type": "error", "code": "server_error", "message": message, "param": null, "sequence_number": 0})
            ),
            Protocol::Anthropic => {
                format!(
                    "event: error\ndata: {}\n\n",
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": message}})
                )
            }
            Protocol::Gemini => format!(
                "data: {}\r\n\r\n",
                json!({"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}})
            ),
        }
    }
}

fn items(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

fn gemini_text(body: &Value) -> String {
    items(&body["candidates"][0]["content"]["parts"])
        .iter()
        .filter_map(|part| part["text"].as_str().map(str::to_string))
        .collect()
}

/// Expands to one test per lane for each named scenario function `fn scenario(lane: &Lane)`:
/// `scenario::openai_chat`, `scenario::openai_responses`, `scenario::anthropic`, `scenario::gemini`.
#[macro_export]
macro_rules! lane_tests {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[test]
                fn openai_chat() {
                    super::$scenario(&$crate::support::lanes::OPENAI_CHAT)
                }
                #[test]
                fn openai_responses() {
                    super::$scenario(&$crate::support::lanes::OPENAI_RESPONSES)
                }
                #[test]
                fn anthropic() {
                    super::$scenario(&$crate::support::lanes::ANTHROPIC)
                }
                #[test]
                fn gemini() {
                    super::$scenario(&$crate::support::lanes::GEMINI)
                }
            }
        )*
    };
}
