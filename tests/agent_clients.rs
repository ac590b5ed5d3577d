//! Requests exactly as today's coding agents send them (issue 10), through a real gateway to every
//! channel type. Claude Code 2.1 puts `role: "system"` turns inside `messages`, after the first
//! user turn, under the beta `mid-conversation-system-2026-04-07`; the body here is one recorded
//! from Claude Code 2.1.197 on a loopback listener (trimmed), shared with the protocol fixtures.

mod support;

use serde_json::{Value, json};

use support::databases;
use support::gateway::TestGateway;
use support::http_client::request;
use support::mock_upstream::{MockUpstream, RecordedRequest};
use support::wire::{ChannelKind, ClientProtocol, UsageSummary};
use support::wire_client::{Rules, validate_response};
use support::wire_upstream::{ScriptedAnswer, scripted_reply};

/// A recorded Claude Code request and the turns each converted upstream request must have.
struct Recording {
    /// The fixture under `src/protocol/testdata/request_anthropic_to_chat/`.
    fixture: &'static str,
    /// Chat message roles, the top-level system first.
    chat_roles: &'static [&'static str],
    /// Responses input items as `type:role`.
    responses_items: &'static [&'static str],
    /// Gemini content roles.
    gemini_roles: &'static [&'static str],
}

const RECORDINGS: [Recording; 2] = [
    // `claude -p "say hi" --model my-group`: a gateway group name, no settings.
    Recording {
        fixture: "recorded_claude_code_group_name_sends_system_turn.in.json",
        chat_roles: &["system", "user", "system"],
        responses_items: &["message:user", "message:system"],
        gemini_roles: &["user"],
    },
    // The turn after a Bash call: user, system, the call, its result.
    Recording {
        fixture: "recorded_claude_code_system_in_messages.in.json",
        chat_roles: &["system", "user", "system", "assistant", "tool"],
        responses_items: &[
            "message:user",
            "message:system",
            "function_call:",
            "function_call_output:",
        ],
        gemini_roles: &["user", "model", "user"],
    },
];
/// How the system turn inside `messages` of the recording begins.
const MID_SYSTEM_START: &str = "Available agent types for the Agent tool:";
/// The beta list Claude Code 2.1.197 sent with the recording.
const CLAUDE_CODE_BETAS: &str = "claude-code-20250219,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,context-management-2025-06-27,prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07";
const ANTIGRAVITY_PROJECT: &str = "agent-clients-project";

fn answer() -> ScriptedAnswer {
    ScriptedAnswer {
        reasoning: Vec::new(),
        text: vec!["hi".to_string(), " there".to_string()],
        tool_call: None,
        usage: UsageSummary {
            input: 10,
            cached: 0,
            output: 2,
            reasoning: 0,
        },
    }
}

fn upstream_model(channel: ChannelKind) -> String {
    format!("{}-agent-model", channel.name().replace('_', "-"))
}

fn channel_key(channel: ChannelKind) -> String {
    match channel {
        ChannelKind::Antigravity => "ya29.agent-clients-token".to_string(),
        other => format!("sk-agent-{}-0001", other.name().replace('_', "-")),
    }
}

/// The roles of a list of turns, in order.
fn roles(turns: &Value) -> Vec<String> {
    turns
        .as_array()
        .expect("a list of turns")
        .iter()
        .map(|turn| turn["role"].as_str().unwrap_or("(none)").to_string())
        .collect()
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Checks where the recorded system turn landed in the request `channel`'s upstream got.
fn check_upstream_request(
    recording: &Recording,
    channel: ChannelKind,
    upstream: &RecordedRequest,
    sent: &Value,
) {
    let body: Value = serde_json::from_slice(&upstream.body).expect("the upstream body is JSON");
    let label = format!("{}: {}", recording.fixture, channel.name());
    match channel {
        ChannelKind::OpenaiChat => {
            // The top-level system first, then the turns in the client's order.
            assert_eq!(roles(&body["messages"]), recording.chat_roles, "{label}");
            assert!(
                text_of(&body["messages"][2]["content"]).starts_with(MID_SYSTEM_START),
                "{label}"
            );
            assert!(
                !body.to_string().contains("x-anthropic-billing-header"),
                "{label}"
            );
        }
        ChannelKind::OpenaiResponses => {
            let items = body["input"].as_array().expect("input items");
            let kinds: Vec<String> = items
                .iter()
                .map(|item| {
                    format!(
                        "{}:{}",
                        item["type"].as_str().unwrap_or(""),
                        item["role"].as_str().unwrap_or("")
                    )
                })
                .collect();
            assert_eq!(kinds, recording.responses_items, "{label}");
            assert!(
                text_of(&items[1]["content"]).starts_with(MID_SYSTEM_START),
                "{label}"
            );
            assert!(
                body["instructions"]
                    .as_str()
                    .unwrap()
                    .contains("You are a Claude agent"),
                "{label}"
            );
        }
        ChannelKind::Anthropic => {
            // Passed through untouched but for the model, with the client's betas.
            let mut expected = sent.clone();
            expected["model"] = json!(upstream_model(channel));
            assert_eq!(body, expected, "{label}");
            let betas = upstream.header("anthropic-beta").unwrap_or("");
            assert!(
                betas.contains("mid-conversation-system-2026-04-07"),
                "{label}: betas {betas:?}"
            );
        }
        ChannelKind::Gemini | ChannelKind::Antigravity => {
            let request = if channel == ChannelKind::Gemini {
                &body
            } else {
                &body["request"]
            };
            let parts = request["systemInstruction"]["parts"]
                .as_array()
                .expect("systemInstruction parts");
            // The top-level system blocks first (without Claude Code's billing line), then the
            // system turn from inside `messages`.
            assert_eq!(parts.len(), 3, "{label}");
            assert!(
                parts[0]["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("You are a Claude agent"),
                "{label}"
            );
            assert!(
                parts[2]["text"]
                    .as_str()
                    .unwrap()
                    .starts_with(MID_SYSTEM_START),
                "{label}"
            );
            assert_eq!(
                roles(&request["contents"]),
                recording.gemini_roles,
                "{label}"
            );
        }
    }
}

#[test]
fn claude_code_system_turns_inside_messages_work_on_every_channel_type() {
    let agents = start_agent_gateway();
    for recording in &RECORDINGS {
        let recorded = testdata(&format!("request_anthropic_to_chat/{}", recording.fixture));
        for (channel, mock) in &agents.mocks {
            check_recording_on_channel(&agents, recording, &recorded, *channel, mock);
        }
    }
}

fn check_recording_on_channel(
    agents: &AgentGateway,
    recording: &Recording,
    recorded: &Value,
    channel: ChannelKind,
    mock: &MockUpstream,
) {
    // Claude Code streams; its one-shot helpers (titles, summaries) do not.
    for stream in [true, false] {
        let mut sent = recorded.clone();
        sent["model"] = json!(format!("agents-{}", channel.name()));
        sent["stream"] = json!(stream);
        let headers = [
            ("content-type", "application/json"),
            ("x-api-key", agents.client_key.as_str()),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", CLAUDE_CODE_BETAS),
            ("user-agent", "claude-cli/2.1.197 (external, sdk-cli)"),
            ("x-app", "cli"),
        ];
        let response = request(
            agents.gateway.address,
            "POST",
            "/v1/messages?beta=true",
            &headers,
            sent.to_string().as_bytes(),
        );
        let label = format!(
            "{}: {} channel, stream {stream}",
            recording.fixture,
            channel.name()
        );
        let summary =
            validate_response(ClientProtocol::Anthropic, stream, &response, Rules::STRICT)
                .unwrap_or_else(|problem| panic!("{label}: {problem}\n{}", response.text()));
        assert_eq!(summary.text, "hi there", "{label}");
        let upstream = mock
            .requests()
            .pop()
            .unwrap_or_else(|| panic!("{label}: the upstream was never called"));
        check_upstream_request(recording, channel, &upstream, &sent);
    }
}

/// A gateway with one group per channel type (`agents-<channel>`), each served by a mock that
/// answers "hi there" in its format.
struct AgentGateway {
    gateway: TestGateway,
    client_key: String,
    mocks: Vec<(ChannelKind, MockUpstream)>,
}

fn start_agent_gateway() -> AgentGateway {
    let gateway = TestGateway::start_with(databases::sqlite(), |config| {
        config.antigravity.project = ANTIGRAVITY_PROJECT.to_string();
        config.relay.max_attempts = 1;
    });
    let token = gateway.admin_token();
    let mut mocks = Vec::new();
    for channel in ChannelKind::ALL {
        let model = upstream_model(channel);
        let mock = MockUpstream::start(move |request: &RecordedRequest| {
            scripted_reply(channel, &answer(), request, &model)
        });
        let channel_id = gateway.create_channel(
            &token,
            json!({"name": format!("agents-{}", channel.name()), "type": channel.name(),
                   "base_urls": [channel.base_url(&mock.base_url())], "keys": [channel_key(channel)]}),
        );
        gateway.create_group(
            &token,
            json!({"name": format!("agents-{}", channel.name()), "items": [{"channel_id": channel_id, "model": upstream_model(channel)}]}),
        );
        mocks.push((channel, mock));
    }
    let client_key = gateway.create_client_key(&token, json!({"name": "agents"}));
    AgentGateway {
        gateway,
        client_key,
        mocks,
    }
}

fn testdata(relative: &str) -> Value {
    let path = format!(
        "{}/src/protocol/testdata/{relative}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {path}: {error}"));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Sends `body` as a non-stream client of `protocol` to `group`.
fn send_as(
    agents: &AgentGateway,
    protocol: ClientProtocol,
    group: &str,
    mut body: Value,
) -> support::http_client::TestResponse {
    let key = agents.client_key.as_str();
    let (path, auth) = match protocol {
        ClientProtocol::OpenaiChat => (
            "/v1/chat/completions".to_string(),
            ("authorization", format!("Bearer {key}")),
        ),
        ClientProtocol::OpenaiResponses => (
            "/v1/responses".to_string(),
            ("authorization", format!("Bearer {key}")),
        ),
        ClientProtocol::Anthropic => ("/v1/messages".to_string(), ("x-api-key", key.to_string())),
        ClientProtocol::Gemini => (
            format!("/v1beta/models/{group}:generateContent"),
            ("x-goog-api-key", key.to_string()),
        ),
    };
    if protocol != ClientProtocol::Gemini {
        body["model"] = json!(group);
    }
    let headers = [
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
        (auth.0, auth.1.as_str()),
    ];
    request(
        agents.gateway.address,
        "POST",
        &path,
        &headers,
        body.to_string().as_bytes(),
    )
}

/// Fields current SDKs send that another format has no equivalent for are dropped, never
/// refused: each protocol's request full of them is answered on every other channel type.
#[test]
fn fields_without_an_equivalent_do_not_cause_errors_on_any_channel_type() {
    let agents = start_agent_gateway();
    for (protocol, fixture) in [
        (
            ClientProtocol::Anthropic,
            "request_anthropic_to_chat/fields_without_equivalent_are_dropped.in.json",
        ),
        (
            ClientProtocol::OpenaiChat,
            "request_chat_to_anthropic/fields_without_equivalent_are_dropped.in.json",
        ),
        (
            ClientProtocol::OpenaiResponses,
            "request_responses_to_chat/fields_without_equivalent_are_dropped.in.json",
        ),
        (
            ClientProtocol::Gemini,
            "request_gemini_to_chat/fields_without_equivalent_are_dropped.in.json",
        ),
    ] {
        for channel in ChannelKind::ALL {
            let group = format!("agents-{}", channel.name());
            let response = send_as(&agents, protocol, &group, testdata(fixture));
            let label = format!(
                "{} client with {fixture} on the {} channel",
                protocol.name(),
                channel.name()
            );
            let summary = validate_response(protocol, false, &response, Rules::STRICT)
                .unwrap_or_else(|problem| panic!("{label}: {problem}\n{}", response.text()));
            assert_eq!(summary.text, "hi there", "{label}");
        }
    }
}

/// A Gemini `cachedContent` names prompt parts stored at Google: it passes through to Gemini
/// channels, and elsewhere is refused with a 400 in Gemini's own error shape that names it.
#[test]
fn gemini_cached_content_is_refused_in_the_clients_shape_off_gemini() {
    let agents = start_agent_gateway();
    let body = testdata("request_gemini_to_chat/cached_content_is_refused.in.json");
    let response = send_as(
        &agents,
        ClientProtocol::Gemini,
        "agents-gemini",
        body.clone(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let (_, gemini_mock) = agents
        .mocks
        .iter()
        .find(|(channel, _)| *channel == ChannelKind::Gemini)
        .unwrap();
    let upstream: Value =
        serde_json::from_slice(&gemini_mock.requests().pop().unwrap().body).unwrap();
    assert_eq!(upstream["cachedContent"], body["cachedContent"]);

    let response = send_as(&agents, ClientProtocol::Gemini, "agents-openai_chat", body);
    assert_eq!(response.status, 400, "{}", response.text());
    let error: Value = serde_json::from_str(&response.text()).expect("a JSON error");
    assert_eq!(error["error"]["status"], "INVALID_ARGUMENT", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cachedContent"),
        "{error}"
    );
    let (_, chat_mock) = agents
        .mocks
        .iter()
        .find(|(channel, _)| *channel == ChannelKind::OpenaiChat)
        .unwrap();
    assert!(
        chat_mock.requests().is_empty(),
        "a refused request must not reach the upstream"
    );
}
