//! Requests exactly as today's coding agents send them (issue 10), through a real gateway to every
//! channel type.
//!
//! The recorded turns of `tests/fixtures/clients/` (Claude Code, Codex and Gemini CLI, each a
//! first turn and the turn carrying a shell call's result, and Codex's turn carrying an
//! `apply_patch` custom tool call; recorded by `scripts/record-client`) go to every channel
//! type, streamed and not: the upstream must get a valid request of its format carrying the
//! client's system prompt, user text, tools, calls and results, and the client a valid answer
//! in its protocol, a call of its own tool included. Claude Code 2.1 also puts `role: "system"`
//! turns inside `messages`, after the first user turn, under the beta
//! `mid-conversation-system-2026-04-07`; two older trimmed recordings of that (Claude Code
//! 2.1.197), shared with the protocol fixtures, are checked in detail first.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use support::databases;
use support::gateway::TestGateway;
use support::http_client::request;
use support::mock_upstream::{MockUpstream, RecordedRequest};
use support::wire::{ChannelKind, ClientProtocol, UsageSummary};
use support::wire::{Summary, ToolCallSummary};
use support::wire_client::{Rules, validate_response};
use support::wire_upstream::{
    ScriptedAnswer, ScriptedToolCall, UpstreamExpectation, check_request, scripted_reply,
};

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
/// answers in its format with `answer` (at first "hi there").
struct AgentGateway {
    gateway: TestGateway,
    client_key: String,
    mocks: Vec<(ChannelKind, MockUpstream)>,
    answer: Arc<Mutex<ScriptedAnswer>>,
}

fn start_agent_gateway() -> AgentGateway {
    let gateway = TestGateway::start_with(databases::sqlite(), |config| {
        config.antigravity.project = ANTIGRAVITY_PROJECT.to_string();
        config.relay.max_attempts = 1;
    });
    let token = gateway.admin_token();
    let mut mocks = Vec::new();
    let shared_answer = Arc::new(Mutex::new(answer()));
    for channel in ChannelKind::ALL {
        let model = upstream_model(channel);
        let current = Arc::clone(&shared_answer);
        let mock = MockUpstream::start(move |request: &RecordedRequest| {
            let answer = current.lock().unwrap().clone();
            scripted_reply(channel, &answer, request, &model)
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
        answer: shared_answer,
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

// ---------------------------------------------------------------------------------------------
// Recorded turns of today's agent CLIs (`tests/fixtures/clients/`).

/// How the prompt `scripts/record-client` gives every client begins.
const RECORDED_PROMPT: &str = "Run `echo hi` in the shell";
/// The patch Codex's turn after `apply_patch` carries, and the one the upstream answers with.
const PATCH: &str = "*** Begin Patch\n*** Add File: hello.txt\n+hi\n*** End Patch\n";
/// The shell tools of the recorded clients, with the property that takes the command.
const SHELL_TOOLS: [(&str, &str); 3] = [
    ("Bash", "command"),
    ("exec_command", "cmd"),
    ("run_shell_command", "command"),
];

/// One request a coding agent CLI sent, as `scripts/record-client` saved it.
struct AgentTurn {
    /// The fixture's file name, which names the client, its version, the date and the turn.
    name: String,
    client: String,
    protocol: ClientProtocol,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl AgentTurn {
    /// Whether the client streamed this request.
    fn streamed(&self) -> bool {
        match self.protocol {
            ClientProtocol::Gemini => self.path.contains(":streamGenerateContent"),
            _ => self.body["stream"] == true,
        }
    }
}

fn agent_turns() -> Vec<AgentTurn> {
    let folder = format!("{}/tests/fixtures/clients", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .unwrap_or_else(|error| panic!("read {folder}: {error}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    let turns: Vec<AgentTurn> = names
        .into_iter()
        .map(|name| {
            let path = format!("{folder}/{name}");
            let text = std::fs::read_to_string(&path).unwrap();
            let fixture: Value =
                serde_json::from_str(&text).unwrap_or_else(|error| panic!("{path}: {error}"));
            let request_path = fixture["path"].as_str().expect("a path").to_string();
            let protocol = if request_path.starts_with("/v1/messages") {
                ClientProtocol::Anthropic
            } else if request_path.starts_with("/v1/responses") {
                ClientProtocol::OpenaiResponses
            } else if request_path.contains(":streamGenerateContent")
                || request_path.contains(":generateContent")
            {
                ClientProtocol::Gemini
            } else {
                panic!("{name}: unknown endpoint {request_path}");
            };
            let headers = fixture["headers"]
                .as_object()
                .expect("headers")
                .iter()
                .map(|(header, value)| (header.clone(), value.as_str().unwrap().to_string()))
                .collect();
            AgentTurn {
                client: fixture["client"].as_str().expect("a client").to_string(),
                name,
                protocol,
                path: request_path,
                headers,
                body: fixture["body"].clone(),
            }
        })
        .collect();
    // Every client must have both turns, so a recording that lost one fails here.
    for client in ["claude-code", "codex", "gemini-cli"] {
        for turn in ["first-turn", "tool-result-turn"] {
            assert!(
                turns.iter().any(|agent| agent.client == client
                    && agent.name.ends_with(&format!(".{turn}.json"))),
                "tests/fixtures/clients has no {turn} of {client}"
            );
        }
    }
    assert!(
        turns
            .iter()
            .any(|turn| turn.name.ends_with(".custom-tool-result-turn.json")),
        "tests/fixtures/clients has no Codex turn with an apply_patch call"
    );
    turns
}

/// A tool call as the client's protocol says it: its name and its arguments (a custom tool's
/// free-form input as a JSON string).
#[derive(Clone, PartialEq, Debug)]
struct CallView {
    id: Option<String>,
    name: String,
    arguments: Value,
}

/// A tool result: the id (or, on Gemini, the name) of the call it answers, and its text.
#[derive(Clone, PartialEq, Debug)]
struct ResultView {
    answers: Option<String>,
    text: String,
}

/// What a request body of one format says about tools, in order.
#[derive(Default, Debug)]
struct ToolView {
    /// The tools the model can call (those that any format can carry).
    tools: Vec<String>,
    calls: Vec<CallView>,
    results: Vec<ResultView>,
}

fn text_or_parts(value: &Value, text_types: &[&str]) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| {
                part.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(|kind| text_types.contains(&kind))
            })
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The text of a Gemini `functionResponse.response` (its one `output`/`result`/`error` field,
/// as the gateway reads it).
fn gemini_response_text(response: &Value) -> String {
    if let Some(object) = response.as_object()
        && object.len() == 1
        && let Some(value) = object
            .get("output")
            .or_else(|| object.get("result"))
            .or_else(|| object.get("error"))
    {
        return value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
    }
    response.to_string()
}

fn parse_json_arguments(arguments: &Value) -> Value {
    match arguments {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::String(text.clone())),
        other => other.clone(),
    }
}

/// Reads the tools, calls and results of a request body of `format`. With `custom_as_json`, a
/// Responses custom tool call is read the way another format carries it, `{"input": ...}`.
fn tool_view(format: ChannelKind, body: &Value, custom_as_json: bool) -> ToolView {
    let mut view = ToolView::default();
    let empty = Vec::new();
    match format {
        ChannelKind::OpenaiChat => {
            for tool in body["tools"].as_array().unwrap_or(&empty) {
                view.tools
                    .push(tool["function"]["name"].as_str().unwrap().to_string());
            }
            for message in body["messages"].as_array().unwrap_or(&empty) {
                for call in message["tool_calls"].as_array().unwrap_or(&empty) {
                    view.calls.push(CallView {
                        id: call["id"].as_str().map(str::to_string),
                        name: call["function"]["name"].as_str().unwrap().to_string(),
                        arguments: parse_json_arguments(&call["function"]["arguments"]),
                    });
                }
                if message["role"] == "tool" {
                    view.results.push(ResultView {
                        answers: message["tool_call_id"].as_str().map(str::to_string),
                        text: text_or_parts(&message["content"], &["text"]),
                    });
                }
            }
        }
        ChannelKind::OpenaiResponses => {
            for tool in body["tools"].as_array().unwrap_or(&empty) {
                if tool["type"] == "function" || tool["type"] == "custom" {
                    view.tools.push(tool["name"].as_str().unwrap().to_string());
                }
            }
            let items = body["input"].as_array().unwrap_or(&empty);
            for item in items {
                let arguments = match item["type"].as_str() {
                    Some("function_call") => parse_json_arguments(&item["arguments"]),
                    Some("custom_tool_call") if custom_as_json => json!({"input": item["input"]}),
                    Some("custom_tool_call") => item["input"].clone(),
                    Some("function_call_output" | "custom_tool_call_output") => {
                        view.results.push(ResultView {
                            answers: item["call_id"].as_str().map(str::to_string),
                            text: text_or_parts(&item["output"], &["input_text", "output_text"]),
                        });
                        continue;
                    }
                    _ => continue,
                };
                view.calls.push(CallView {
                    id: item["call_id"].as_str().map(str::to_string),
                    name: item["name"].as_str().unwrap().to_string(),
                    arguments,
                });
            }
        }
        ChannelKind::Anthropic => {
            for tool in body["tools"].as_array().unwrap_or(&empty) {
                // Server tools (`web_search_20250305`, ...) have a type and no schema.
                if tool.get("input_schema").is_some() {
                    view.tools.push(tool["name"].as_str().unwrap().to_string());
                }
            }
            for message in body["messages"].as_array().unwrap_or(&empty) {
                for block in message["content"].as_array().unwrap_or(&empty) {
                    if block["type"] == "tool_use" {
                        view.calls.push(CallView {
                            id: block["id"].as_str().map(str::to_string),
                            name: block["name"].as_str().unwrap().to_string(),
                            arguments: block["input"].clone(),
                        });
                    } else if block["type"] == "tool_result" {
                        view.results.push(ResultView {
                            answers: block["tool_use_id"].as_str().map(str::to_string),
                            text: text_or_parts(&block["content"], &["text"]),
                        });
                    }
                }
            }
        }
        ChannelKind::Gemini | ChannelKind::Antigravity => {
            let request = if format == ChannelKind::Antigravity {
                &body["request"]
            } else {
                body
            };
            for tool in request["tools"].as_array().unwrap_or(&empty) {
                for declaration in tool["functionDeclarations"].as_array().unwrap_or(&empty) {
                    view.tools
                        .push(declaration["name"].as_str().unwrap().to_string());
                }
            }
            for content in request["contents"].as_array().unwrap_or(&empty) {
                for part in content["parts"].as_array().unwrap_or(&empty) {
                    if let Some(call) = part.get("functionCall") {
                        view.calls.push(CallView {
                            id: call["id"].as_str().map(str::to_string),
                            name: call["name"].as_str().unwrap().to_string(),
                            arguments: call.get("args").cloned().unwrap_or(json!({})),
                        });
                    } else if let Some(response) = part.get("functionResponse") {
                        view.results.push(ResultView {
                            answers: response["name"].as_str().map(str::to_string),
                            text: gemini_response_text(&response["response"]),
                        });
                    }
                }
            }
        }
    }
    view
}

/// How the client's system prompt begins: the text every upstream's system slot must carry.
fn system_start(turn: &AgentTurn) -> String {
    let text = match turn.protocol {
        ClientProtocol::Anthropic => turn.body["system"]
            .as_array()
            .expect("Claude Code sends system blocks")
            .iter()
            .filter_map(|block| block["text"].as_str())
            .find(|text| !text.starts_with("x-anthropic-billing-header"))
            .expect("a system text")
            .to_string(),
        ClientProtocol::OpenaiResponses => match turn.body["instructions"].as_str() {
            Some(instructions) => instructions.to_string(),
            None => turn.body["input"]
                .as_array()
                .unwrap()
                .iter()
                .find(|item| item["role"] == "developer" || item["role"] == "system")
                .map(|item| text_or_parts(&item["content"], &["input_text"]))
                .expect("Codex sends its prompt as a developer message"),
        },
        ClientProtocol::Gemini => turn.body["systemInstruction"]["parts"][0]["text"]
            .as_str()
            .expect("Gemini CLI sends a systemInstruction")
            .to_string(),
        ClientProtocol::OpenaiChat => unreachable!("no recorded agent speaks Chat"),
    };
    text.chars().take(60).collect()
}

/// Whether the client turned reasoning on with a level the other formats can carry: Claude
/// Code's adaptive thinking, Codex's `reasoning.effort` (sent for models it knows). Gemini CLI
/// only asks for thought summaries, and Codex for an unknown model only for a reasoning summary,
/// which leave the level to the model.
fn asks_for_reasoning(turn: &AgentTurn) -> bool {
    match turn.protocol {
        ClientProtocol::Anthropic => turn.body["thinking"]["type"] != "disabled",
        ClientProtocol::OpenaiResponses => turn.body["reasoning"]["effort"].is_string(),
        _ => false,
    }
}

/// What the upstream answers a recorded turn with, and the call the client must get: the
/// client's own shell tool on a first turn, Codex's `apply_patch` (a custom tool) after the
/// shell call's result, text otherwise. A Responses channel answers Codex's `apply_patch` turn
/// with text: the mock writes function calls, and a real Responses upstream would answer a
/// custom tool with a `custom_tool_call` that passes through untouched.
fn scripted_turn_answer(
    turn: &AgentTurn,
    channel: ChannelKind,
) -> (ScriptedAnswer, Option<ToolCallSummary>) {
    let view = tool_view(turn.protocol.channel(), &turn.body, false);
    let mut answer = answer();
    let call = if view.results.is_empty() {
        let (name, property) = SHELL_TOOLS
            .into_iter()
            .find(|(name, _)| view.tools.iter().any(|tool| tool == name))
            .unwrap_or_else(|| panic!("{}: no known shell tool in {:?}", turn.name, view.tools));
        Some((
            name,
            json!({property: "echo hi"}),
            json!({property: "echo hi"}),
        ))
    } else if view.results.len() == 1
        && view.tools.iter().any(|tool| tool == "apply_patch")
        && channel != ChannelKind::OpenaiResponses
    {
        Some(("apply_patch", json!({"input": PATCH}), json!(PATCH)))
    } else {
        None
    };
    let Some((name, arguments, client_arguments)) = call else {
        return (answer, None);
    };
    let arguments = arguments.to_string();
    let middle = arguments.len() / 2;
    answer.text.clear();
    answer.tool_call = Some(ScriptedToolCall {
        id: "call_agent_1".to_string(),
        name: name.to_string(),
        argument_fragments: vec![
            arguments[..middle].to_string(),
            arguments[middle..].to_string(),
        ],
    });
    let expected = ToolCallSummary {
        id: None,
        name: name.to_string(),
        arguments: client_arguments,
    };
    (answer, Some(expected))
}

/// Sends a recorded turn as its client would, to `channel`'s group, streamed or not.
fn send_turn(
    agents: &AgentGateway,
    turn: &AgentTurn,
    channel: ChannelKind,
    stream: bool,
) -> (support::http_client::TestResponse, Value) {
    let group = format!("agents-{}", channel.name());
    let mut body = turn.body.clone();
    let path = match turn.protocol {
        ClientProtocol::Gemini if stream => {
            format!("/v1beta/models/{group}:streamGenerateContent?alt=sse")
        }
        ClientProtocol::Gemini => format!("/v1beta/models/{group}:generateContent"),
        _ => {
            body["model"] = json!(group);
            body["stream"] = json!(stream);
            turn.path.clone()
        }
    };
    let key = agents.client_key.as_str();
    let bearer = format!("Bearer {key}");
    let auth = match turn.protocol {
        ClientProtocol::Anthropic => ("x-api-key", key),
        ClientProtocol::Gemini => ("x-goog-api-key", key),
        _ => ("authorization", bearer.as_str()),
    };
    let mut headers: Vec<(&str, &str)> = turn
        .headers
        .iter()
        // A client that does not stream does not ask for an event stream.
        .filter(|(name, _)| stream || name != "accept")
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    headers.push(auth);
    let response = request(
        agents.gateway.address,
        "POST",
        &path,
        &headers,
        body.to_string().as_bytes(),
    );
    (response, body)
}

/// Checks what `channel`'s upstream got for a recorded turn: a valid request of its format
/// (model, key, stream mode, no field its API rejects) with the client's system prompt, user
/// text, tools, calls and results; a body in the client's own format passes through unchanged
/// but for the model.
fn check_turn_upstream(
    turn: &AgentTurn,
    channel: ChannelKind,
    stream: bool,
    sent: &Value,
    upstream: &RecordedRequest,
    label: &str,
) {
    let body: Value = serde_json::from_slice(&upstream.body).expect("the upstream body is JSON");
    if channel == turn.protocol.channel() {
        let mut expected = sent.clone();
        if channel != ChannelKind::Gemini {
            expected["model"] = json!(upstream_model(channel));
        }
        assert_eq!(
            body, expected,
            "{label}: a same-protocol body passes through"
        );
        return;
    }
    let after_a_call = !tool_view(turn.protocol.channel(), &turn.body, false)
        .calls
        .is_empty();
    let expectation = UpstreamExpectation {
        model: upstream_model(channel),
        key: channel_key(channel),
        stream,
        system: Some(system_start(turn)),
        user_text: RECORDED_PROMPT.to_string(),
        mid_system: None,
        image: None,
        tool: None,
        // Anthropic refuses thinking after a tool call made without its own signed thinking
        // block, so the gateway leaves thinking off there (`protocol::anthropic`).
        reasoning: asks_for_reasoning(turn) && !(channel == ChannelKind::Anthropic && after_a_call),
        converted: true,
        project: (channel == ChannelKind::Antigravity).then(|| ANTIGRAVITY_PROJECT.to_string()),
    };
    let problems = check_request(channel, upstream, &expectation);
    assert!(problems.is_empty(), "{label}: {problems:#?}");

    let client = tool_view(turn.protocol.channel(), &turn.body, true);
    let converted = tool_view(channel, &body, false);
    assert_eq!(converted.tools, client.tools, "{label}: tools");
    let names_and_arguments = |calls: &[CallView]| -> Vec<(String, Value)> {
        calls
            .iter()
            .map(|call| (call.name.clone(), call.arguments.clone()))
            .collect()
    };
    assert_eq!(
        names_and_arguments(&converted.calls),
        names_and_arguments(&client.calls),
        "{label}: calls"
    );
    let texts = |results: &[ResultView]| -> Vec<String> {
        results.iter().map(|result| result.text.clone()).collect()
    };
    assert_eq!(
        texts(&converted.results),
        texts(&client.results),
        "{label}: results"
    );
    // Every result answers a call of the converted conversation: by id, or on Gemini (whose
    // public API sends no ids) by name.
    for result in &converted.results {
        let answered = converted.calls.iter().any(|call| {
            result.answers.is_some()
                && (call.id == result.answers || Some(&call.name) == result.answers.as_ref())
        });
        assert!(
            answered,
            "{label}: {result:?} answers no call of {:?}",
            converted.calls
        );
    }
}

#[test]
fn recorded_agent_turns_work_on_every_channel_type_streamed_and_not() {
    let agents = start_agent_gateway();
    let turns = agent_turns();
    let mut exchanges = 0;
    for turn in &turns {
        for (channel, mock) in &agents.mocks {
            // As the client sent it first, then in the other mode.
            for stream in [turn.streamed(), !turn.streamed()] {
                let label = format!(
                    "{} on the {} channel, stream {stream}",
                    turn.name,
                    channel.name()
                );
                let (answer, expected_call) = scripted_turn_answer(turn, *channel);
                *agents.answer.lock().unwrap() = answer;
                let (response, sent) = send_turn(&agents, turn, *channel, stream);
                let summary: Summary =
                    validate_response(turn.protocol, stream, &response, Rules::STRICT)
                        .unwrap_or_else(|problem| {
                            panic!("{label}: {problem}\n{}", response.text())
                        });
                match &expected_call {
                    Some(call) => {
                        let got: Vec<(&str, &Value)> = summary
                            .tool_calls
                            .iter()
                            .map(|got| (got.name.as_str(), &got.arguments))
                            .collect();
                        assert_eq!(got, [(call.name.as_str(), &call.arguments)], "{label}");
                        assert_eq!(summary.text, "", "{label}");
                    }
                    None => {
                        assert_eq!(summary.text, "hi there", "{label}");
                        assert!(summary.tool_calls.is_empty(), "{label}");
                    }
                }
                let upstream = mock
                    .requests()
                    .pop()
                    .unwrap_or_else(|| panic!("{label}: the upstream was never called"));
                check_turn_upstream(turn, *channel, stream, &sent, &upstream, &label);
                exchanges += 1;
            }
        }
    }
    assert_eq!(exchanges, turns.len() * ChannelKind::ALL.len() * 2);
}

/// The recordings cover what the gateway has to carry: Codex's real `apply_patch` custom tool
/// with its grammar, a custom tool call and its output in the history, and each client's
/// shell call with its result.
#[test]
fn recorded_agent_turns_hold_the_tool_rounds_they_are_named_for() {
    for turn in agent_turns() {
        let view = tool_view(turn.protocol.channel(), &turn.body, false);
        let expected_results = if turn.name.ends_with(".first-turn.json") {
            0
        } else if turn.name.ends_with(".tool-result-turn.json") {
            1
        } else {
            2
        };
        assert_eq!(view.results.len(), expected_results, "{}", turn.name);
        assert_eq!(view.calls.len(), expected_results, "{}", turn.name);
        if expected_results > 0 {
            assert!(
                view.results[0].text.contains("hi"),
                "{}: {:?}",
                turn.name,
                view.results
            );
        }
        if turn.name.ends_with(".custom-tool-result-turn.json") {
            let apply_patch = turn.body["tools"]
                .as_array()
                .unwrap()
                .iter()
                .find(|tool| tool["name"] == "apply_patch")
                .expect("Codex offers apply_patch");
            assert_eq!(apply_patch["type"], "custom", "{}", turn.name);
            assert_eq!(apply_patch["format"]["type"], "grammar", "{}", turn.name);
            assert_eq!(view.calls[1].arguments, json!(PATCH), "{}", turn.name);
            assert!(
                view.results[1].text.contains("A hello.txt"),
                "{}",
                turn.name
            );
        }
        let protocols: BTreeSet<&str> = ["claude-code", "codex", "gemini-cli"].into();
        assert!(protocols.contains(turn.client.as_str()), "{}", turn.name);
    }
}
