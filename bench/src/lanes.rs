//! The conversion lanes: which client protocol meets which channel type, and the request each
//! side sends. Every lane sends the same small chat (a system prompt, one user message and one
//! tool definition), written in the client's own protocol to the gateway and in the upstream's
//! own protocol to the mock for the direct baseline, so the conversion has real work to do and
//! both sides ask for the same thing.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::gateway::GroupSpec;
use crate::http_client::build_request_with_headers;
use crate::mock_upstream::Dialect;

/// The upstream model of the non-streaming lanes; the mock answers it with its canned reply.
pub const LANE_MODEL: &str = "bench-upstream";
/// The upstream model of the streamed lanes: 64 content deltas with no pause between them, so
/// a closed loop measures the gateway's work per event rather than the mock's pacing.
pub const LANE_STREAM_MODEL: &str = "stream-64x0";
pub const LANE_STREAM_DELTAS: u32 = 64;

/// One way through the gateway: a client protocol, and the group (hence channel type) it calls.
#[derive(Debug, Clone, Copy)]
pub struct Lane {
    /// Shown in the report, e.g. `OpenAI Chat → anthropic`.
    pub label: &'static str,
    pub client: Dialect,
    pub group: GroupSpec,
}

impl Lane {
    /// The protocol the upstream speaks, which is also the direct baseline's protocol.
    pub fn upstream(&self) -> Dialect {
        self.group.channel
    }

    pub fn is_pass_through(&self) -> bool {
        self.client == self.upstream()
    }
}

/// The non-streaming lanes; the pass-through lane (listed first) is the one the others are
/// compared with.
pub const WHOLE_LANES: [Lane; 4] = [
    Lane {
        label: "OpenAI Chat → openai_chat (pass-through)",
        client: Dialect::OpenAiChat,
        group: GroupSpec {
            group_name: "lane-openai-to-openai",
            channel: Dialect::OpenAiChat,
            upstream_model: LANE_MODEL,
            over_tls: false,
        },
    },
    Lane {
        label: "OpenAI Chat → anthropic",
        client: Dialect::OpenAiChat,
        group: GroupSpec {
            group_name: "lane-openai-to-anthropic",
            channel: Dialect::Anthropic,
            upstream_model: LANE_MODEL,
            over_tls: false,
        },
    },
    Lane {
        label: "Anthropic → openai_chat",
        client: Dialect::Anthropic,
        group: GroupSpec {
            group_name: "lane-anthropic-to-openai",
            channel: Dialect::OpenAiChat,
            upstream_model: LANE_MODEL,
            over_tls: false,
        },
    },
    Lane {
        label: "OpenAI Chat → gemini",
        client: Dialect::OpenAiChat,
        group: GroupSpec {
            group_name: "lane-openai-to-gemini",
            channel: Dialect::Gemini,
            upstream_model: LANE_MODEL,
            over_tls: false,
        },
    },
];

/// The streamed lanes; the pass-through lane (listed first) is the one the others are compared
/// with. Each converted one decodes a different upstream stream and encodes for a different
/// client.
pub const STREAM_LANES: [Lane; 4] = [
    Lane {
        label: "OpenAI Chat → openai_chat (pass-through)",
        client: Dialect::OpenAiChat,
        group: GroupSpec {
            group_name: "lane-stream-openai-to-openai",
            channel: Dialect::OpenAiChat,
            upstream_model: LANE_STREAM_MODEL,
            over_tls: false,
        },
    },
    Lane {
        label: "OpenAI Chat → anthropic",
        client: Dialect::OpenAiChat,
        group: GroupSpec {
            group_name: "lane-stream-openai-to-anthropic",
            channel: Dialect::Anthropic,
            upstream_model: LANE_STREAM_MODEL,
            over_tls: false,
        },
    },
    Lane {
        label: "Anthropic → openai_chat",
        client: Dialect::Anthropic,
        group: GroupSpec {
            group_name: "lane-stream-anthropic-to-openai",
            channel: Dialect::OpenAiChat,
            upstream_model: LANE_STREAM_MODEL,
            over_tls: false,
        },
    },
    Lane {
        label: "OpenAI Chat → gemini",
        client: Dialect::OpenAiChat,
        group: GroupSpec {
            group_name: "lane-stream-openai-to-gemini",
            channel: Dialect::Gemini,
            upstream_model: LANE_STREAM_MODEL,
            over_tls: false,
        },
    },
];

/// The groups every lane needs on the gateway.
pub fn lane_groups() -> impl Iterator<Item = GroupSpec> {
    WHOLE_LANES
        .into_iter()
        .chain(STREAM_LANES)
        .map(|lane| lane.group)
}

const SYSTEM_PROMPT: &str = "You are a terse weather assistant. Answer in one short sentence and call get_weather when the user asks about the weather somewhere.";
const USER_MESSAGE: &str = "Is it going to rain in Lisbon this afternoon?";
const TOOL_NAME: &str = "get_weather";
const TOOL_DESCRIPTION: &str = "Current weather and the forecast for the next hours in one city.";
const MAX_OUTPUT_TOKENS: u32 = 64;
const TEMPERATURE: f64 = 0.2;

/// The tool's parameters as JSON Schema (the same object in all three protocols).
fn tool_parameters() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name, e.g. Lisbon"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "hours": {"type": "integer", "description": "How many hours of forecast", "minimum": 1, "maximum": 48}
        },
        "required": ["city"]
    })
}

/// The lane chat as a request body in `dialect`. OpenAI streams ask for the usage chunk so
/// pass-through and converted streams end alike.
pub fn chat_body(dialect: Dialect, model: &str, stream: bool) -> Value {
    match dialect {
        Dialect::OpenAiChat => {
            let mut body = json!({
                "model": model,
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": USER_MESSAGE}
                ],
                "tools": [{
                    "type": "function",
                    "function": {
                        "name": TOOL_NAME,
                        "description": TOOL_DESCRIPTION,
                        "parameters": tool_parameters()
                    }
                }],
                "tool_choice": "auto",
                "max_tokens": MAX_OUTPUT_TOKENS,
                "temperature": TEMPERATURE,
            });
            if stream {
                body["stream"] = json!(true);
                body["stream_options"] = json!({"include_usage": true});
            }
            body
        }
        Dialect::Anthropic => {
            let mut body = json!({
                "model": model,
                "system": SYSTEM_PROMPT,
                "messages": [{"role": "user", "content": USER_MESSAGE}],
                "tools": [{
                    "name": TOOL_NAME,
                    "description": TOOL_DESCRIPTION,
                    "input_schema": tool_parameters()
                }],
                "tool_choice": {"type": "auto"},
                "max_tokens": MAX_OUTPUT_TOKENS,
                "temperature": TEMPERATURE,
            });
            if stream {
                body["stream"] = json!(true);
            }
            body
        }
        // Gemini names the model and the streaming choice in the path, not in the body.
        Dialect::Gemini => json!({
            "systemInstruction": {"parts": [{"text": SYSTEM_PROMPT}]},
            "contents": [{"role": "user", "parts": [{"text": USER_MESSAGE}]}],
            "tools": [{"functionDeclarations": [{
                "name": TOOL_NAME,
                "description": TOOL_DESCRIPTION,
                "parameters": tool_parameters()
            }]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
            "generationConfig": {"maxOutputTokens": MAX_OUTPUT_TOKENS, "temperature": TEMPERATURE},
        }),
    }
}

/// The exact bytes of the lane chat sent in `dialect` to `address`: that protocol's path and
/// its own auth header carrying `key`.
pub fn chat_request(
    dialect: Dialect,
    address: SocketAddr,
    key: &str,
    model: &str,
    stream: bool,
) -> Vec<u8> {
    let body = chat_body(dialect, model, stream).to_string().into_bytes();
    let bearer = format!("Bearer {key}");
    let (path, headers) = match dialect {
        Dialect::OpenAiChat => (
            "/v1/chat/completions".to_string(),
            vec![("Authorization", bearer.as_str())],
        ),
        Dialect::Anthropic => (
            "/v1/messages".to_string(),
            vec![("x-api-key", key), ("anthropic-version", "2023-06-01")],
        ),
        Dialect::Gemini => {
            let method = if stream {
                "streamGenerateContent?alt=sse"
            } else {
                "generateContent"
            };
            (
                format!("/v1beta/models/{model}:{method}"),
                vec![("x-goog-api-key", key)],
            )
        }
    };
    build_request_with_headers("POST", address, &path, &headers, Some(&body))
}

/// The assistant's text in a whole answer in `dialect`, or None when the body is not such an
/// answer; used to check that a lane's answer came back in the client's protocol.
pub fn answer_text(dialect: Dialect, body: &[u8]) -> Option<String> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let text = match dialect {
        Dialect::OpenAiChat => &answer["choices"][0]["message"]["content"],
        Dialect::Anthropic => &answer["content"][0]["text"],
        Dialect::Gemini => &answer["candidates"][0]["content"]["parts"][0]["text"],
    };
    text.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::http_client::ClientConnection;
    use crate::mock_upstream::{CANNED_TEXT, MockUpstream};

    const TEST_TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn every_dialect_request_reaches_its_own_mock_endpoint_and_reads_back() {
        let mock = MockUpstream::start().expect("mock starts");
        let address = mock.address();
        let mut connection = ClientConnection::connect(address, TEST_TIMEOUT).expect("connect");
        for dialect in [Dialect::OpenAiChat, Dialect::Anthropic, Dialect::Gemini] {
            let answered_before = mock.answered_requests(dialect);
            let request = chat_request(dialect, address, "sk-test", LANE_MODEL, false);
            let response = connection.exchange(&request).expect("exchange");
            assert_eq!(response.status, 200, "{dialect:?}");
            assert_eq!(
                answer_text(dialect, &response.body).as_deref(),
                Some(CANNED_TEXT),
                "{dialect:?}"
            );
            assert_eq!(mock.answered_requests(dialect), answered_before + 1);

            let request = chat_request(dialect, address, "sk-test", LANE_STREAM_MODEL, true);
            let outcome = connection.stream(&request, &mut |_| true).expect("stream");
            assert_eq!(outcome.status, 200, "{dialect:?}");
            assert!(
                outcome.event_arrivals.len() >= LANE_STREAM_DELTAS as usize,
                "{dialect:?} sent {} events",
                outcome.event_arrivals.len()
            );
            assert_eq!(mock.answered_requests(dialect), answered_before + 2);
        }
        assert!(connection.is_reusable());
    }

    #[test]
    fn requests_carry_each_protocols_auth_header_and_the_tool() {
        let address = SocketAddr::from(([127, 0, 0, 1], 9));
        let openai = String::from_utf8(chat_request(
            Dialect::OpenAiChat,
            address,
            "sk-a",
            "m",
            false,
        ))
        .unwrap();
        assert!(openai.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"));
        assert!(openai.contains("\r\nAuthorization: Bearer sk-a\r\n"));
        let anthropic =
            String::from_utf8(chat_request(Dialect::Anthropic, address, "sk-b", "m", true))
                .unwrap();
        assert!(anthropic.starts_with("POST /v1/messages HTTP/1.1\r\n"));
        assert!(anthropic.contains("\r\nx-api-key: sk-b\r\nanthropic-version: 2023-06-01\r\n"));
        let gemini =
            String::from_utf8(chat_request(Dialect::Gemini, address, "sk-c", "m", true)).unwrap();
        assert!(
            gemini.starts_with("POST /v1beta/models/m:streamGenerateContent?alt=sse HTTP/1.1\r\n")
        );
        assert!(gemini.contains("\r\nx-goog-api-key: sk-c\r\n"));

        let gemini_body = chat_body(Dialect::Gemini, "m", false);
        assert_eq!(
            gemini_body["tools"][0]["functionDeclarations"][0]["name"],
            TOOL_NAME
        );
        assert_eq!(
            chat_body(Dialect::Anthropic, "m", false)["tools"][0]["input_schema"],
            tool_parameters()
        );
        assert_eq!(
            chat_body(Dialect::OpenAiChat, "m", true)["stream_options"]["include_usage"],
            true
        );
    }

    #[test]
    fn each_lane_list_starts_with_its_pass_through_lane() {
        assert!(WHOLE_LANES[0].is_pass_through());
        assert!(STREAM_LANES[0].is_pass_through());
        assert!(WHOLE_LANES[1..].iter().all(|lane| !lane.is_pass_through()));
        assert!(STREAM_LANES[1..].iter().all(|lane| !lane.is_pass_through()));
        let mut names: Vec<&str> = lane_groups().map(|group| group.group_name).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "group names are unique");
    }
}
