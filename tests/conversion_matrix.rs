//! The acceptance matrix of protocol conversion (issue 4): every client protocol (4) against every
//! channel type (5), non-stream and stream, for text, a tool call, image input, reasoning and a
//! system turn inside the conversation (issue 10, as Claude Code 2.1 sends them): 200 cells, each run through one in-process gateway against mock providers that speak the real
//! formats. Each mock checks that the request it gets carries the feature in its own format; each
//! answer is validated strictly in the client's protocol and compared with what the mock said.
//!
//! A lane that `octopus::protocol::convert::supports` does not report counts as failed, never
//! as skipped: the test fails until every converter exists. A second test replays the recorded
//! real provider streams in `shared/fixtures/providers` through the gateway to every client.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use octopus::protocol::convert::supports;

use support::databases;
use support::gateway::TestGateway;
use support::http_client::sse_events;
use support::mock_upstream::{MockUpstream, RecordedRequest, Reply, StreamEnd, error_reply};
use support::shared_fixtures::stream_bytes;
use support::wire::{
    ChannelKind, ClientProtocol, FinishKind, Summary, ToolCallSummary, UsageSummary,
};
use support::wire_client::{
    ClientAsk, Rules, client_call, validate_complete, validate_response, validate_stream,
};
use support::wire_upstream::{
    ANTHROPIC_SIGNATURE, GEMINI_SIGNATURE, InlineImage, MidSystemExpectation,
    RESPONSES_ENCRYPTED_CONTENT,
    ScriptedAnswer, ScriptedToolCall, ToolExpectation, UpstreamExpectation, antigravity_wrap,
    check_request, complete_answer, scripted_reply, streamed_answer,
};

/// One input feature of a cell.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Feature {
    Text,
    ToolCall,
    Image,
    Reasoning,
    /// A system turn after the user's turn (Anthropic `messages[].role: "system"`).
    SystemInMessages,
}

impl Feature {
    const ALL: [Feature; 5] = [
        Feature::Text,
        Feature::ToolCall,
        Feature::Image,
        Feature::Reasoning,
        Feature::SystemInMessages,
    ];

    fn name(self) -> &'static str {
        match self {
            Feature::Text => "text",
            Feature::ToolCall => "tool_call",
            Feature::Image => "image",
            Feature::Reasoning => "reasoning",
            Feature::SystemInMessages => "system_in_messages",
        }
    }

    fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL
            .into_iter()
            .find(|feature| feature.name() == name)
    }
}

/// One cell of the matrix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Cell {
    client: ClientProtocol,
    channel: ChannelKind,
    stream: bool,
    feature: Feature,
}

const MARKER_START: &str = "[matrix-cell ";

impl Cell {
    fn all() -> Vec<Cell> {
        let mut cells = Vec::new();
        for client in ClientProtocol::ALL {
            for channel in ChannelKind::ALL {
                for stream in [false, true] {
                    for feature in Feature::ALL {
                        cells.push(Cell {
                            client,
                            channel,
                            stream,
                            feature,
                        });
                    }
                }
            }
        }
        cells
    }

    /// The tag written into the user's text, which every format carries to the mock untouched,
    /// so the mock knows which cell a request belongs to.
    fn marker(&self) -> String {
        format!(
            "{MARKER_START}{}>{} {} {}]",
            self.client.name(),
            self.channel.name(),
            mode_name(self.stream),
            self.feature.name()
        )
    }

    /// The cell whose marker appears in a request body.
    fn from_body(body: &str) -> Option<Cell> {
        let start = body.find(MARKER_START)? + MARKER_START.len();
        let end = start + body[start..].find(']')?;
        let mut words = body[start..end].split(' ');
        let (client, channel) = words.next()?.split_once('>')?;
        let stream = match words.next()? {
            "stream" => true,
            "non-stream" => false,
            _ => return None,
        };
        let feature = Feature::from_name(words.next()?)?;
        Some(Cell {
            client: ClientProtocol::from_name(client)?,
            channel: ChannelKind::from_name(channel)?,
            stream,
            feature,
        })
    }

    fn label(&self) -> String {
        format!(
            "{} client -> {} channel, {}, {}",
            self.client.name(),
            self.channel.name(),
            mode_name(self.stream),
            self.feature.name()
        )
    }
}

fn mode_name(stream: bool) -> &'static str {
    if stream { "stream" } else { "non-stream" }
}

const SYSTEM_PROMPT: &str = "Answer briefly.";
/// The system turn a `SystemInMessages` cell sends after the user's turn.
const MID_CONVERSATION_SYSTEM: &str = "Plan mode is on: do not edit files.";
const TEXT_DELTAS: [&str; 4] = ["Hello", " from", " the", " mock"];
const REASONING_DELTAS: [&str; 2] = ["Let me", " think."];
const ARGUMENT_FRAGMENTS: [&str; 3] = ["{\"ci", "ty\":\"Pa", "ris\"}"];
const CLIENT_MAX_TOKENS: u64 = 4096;
const ANTIGRAVITY_PROJECT: &str = "test-project";
/// A 1x1 PNG.
const PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

fn image() -> InlineImage {
    InlineImage {
        media_type: "image/png".to_string(),
        data: PNG_BASE64.to_string(),
    }
}

fn weather_tool() -> ToolExpectation {
    ToolExpectation {
        name: "get_weather".to_string(),
        property: "city".to_string(),
    }
}

fn upstream_model(channel: ChannelKind) -> String {
    format!("{}-upstream-model", channel.name().replace('_', "-"))
}

fn group_name(channel: ChannelKind) -> String {
    format!("matrix-{}", channel.name())
}

fn channel_key(channel: ChannelKind) -> String {
    match channel {
        // Antigravity takes an OAuth access token, used directly as the bearer.
        ChannelKind::Antigravity => "ya29.mock-access-token".to_string(),
        other => format!("sk-mock-{}-0001", other.name().replace('_', "-")),
    }
}

/// The call id each provider gives the tool call; the public Gemini API gives none.
fn upstream_call_id(channel: ChannelKind) -> Option<&'static str> {
    match channel {
        ChannelKind::OpenaiChat | ChannelKind::OpenaiResponses => Some("call_mock_1"),
        ChannelKind::Anthropic => Some("toolu_mock_1"),
        ChannelKind::Gemini | ChannelKind::Antigravity => None,
    }
}

fn user_text(cell: &Cell) -> String {
    let question = match cell.feature {
        Feature::Text => "Say hello.",
        Feature::ToolCall => "What is the weather in Paris?",
        Feature::Image => "Describe this image.",
        Feature::Reasoning => "Think first, then say hello.",
        Feature::SystemInMessages => "Follow the later instruction, then say hello.",
    };
    format!("{question} {}", cell.marker())
}

fn ask(cell: &Cell) -> ClientAsk {
    ClientAsk {
        group: group_name(cell.channel),
        stream: cell.stream,
        system: Some(SYSTEM_PROMPT.to_string()),
        user_text: user_text(cell),
        mid_system: (cell.feature == Feature::SystemInMessages)
            .then(|| MID_CONVERSATION_SYSTEM.to_string()),
        image: (cell.feature == Feature::Image).then(image),
        tool: (cell.feature == Feature::ToolCall).then(weather_tool),
        reasoning: cell.feature == Feature::Reasoning,
        max_tokens: CLIENT_MAX_TOKENS,
    }
}

/// Every provider reports 10 input tokens of which 4 were cached, and 5 output tokens of which
/// 2 were reasoning when the cell reasons.
fn scripted_usage(feature: Feature) -> UsageSummary {
    UsageSummary {
        input: 10,
        cached: 4,
        output: 5,
        reasoning: if feature == Feature::Reasoning { 2 } else { 0 },
    }
}

fn scripted_answer(cell: &Cell) -> ScriptedAnswer {
    let words = |deltas: &[&str]| {
        deltas
            .iter()
            .map(|delta| delta.to_string())
            .collect::<Vec<_>>()
    };
    let tool_call = (cell.feature == Feature::ToolCall).then(|| ScriptedToolCall {
        id: upstream_call_id(cell.channel).unwrap_or("").to_string(),
        name: "get_weather".to_string(),
        argument_fragments: words(&ARGUMENT_FRAGMENTS),
    });
    ScriptedAnswer {
        reasoning: if cell.feature == Feature::Reasoning {
            words(&REASONING_DELTAS)
        } else {
            Vec::new()
        },
        text: if cell.feature == Feature::ToolCall {
            Vec::new()
        } else {
            words(&TEXT_DELTAS)
        },
        tool_call,
        usage: scripted_usage(cell.feature),
    }
}

fn upstream_expectation(cell: &Cell) -> UpstreamExpectation {
    UpstreamExpectation {
        model: upstream_model(cell.channel),
        key: channel_key(cell.channel),
        stream: cell.stream,
        system: Some(SYSTEM_PROMPT.to_string()),
        user_text: cell.marker(),
        mid_system: (cell.feature == Feature::SystemInMessages).then(|| MidSystemExpectation {
            text: MID_CONVERSATION_SYSTEM.to_string(),
            after_user: cell.client != ClientProtocol::Gemini,
        }),
        image: (cell.feature == Feature::Image).then(image),
        tool: (cell.feature == Feature::ToolCall).then(weather_tool),
        reasoning: cell.feature == Feature::Reasoning,
        converted: cell.client.channel() != cell.channel,
        project: (cell.channel == ChannelKind::Antigravity)
            .then(|| ANTIGRAVITY_PROJECT.to_string()),
    }
}

/// What the client must see: the scripted answer, with usage mapped per protocols.md §5. A
/// reasoning token count only survives where both sides have a field for it (Anthropic has
/// none), and call ids survive where both sides have them.
fn expected_summary(cell: &Cell) -> Summary {
    let answer = scripted_answer(cell);
    let mut usage = answer.usage;
    if !cell.channel.reports_reasoning_tokens() || cell.client == ClientProtocol::Anthropic {
        usage.reasoning = 0;
    }
    let tool_calls = answer
        .tool_call
        .iter()
        .map(|call| ToolCallSummary {
            id: upstream_call_id(cell.channel)
                .filter(|_| cell.client != ClientProtocol::Gemini)
                .map(str::to_string),
            name: call.name.clone(),
            arguments: call.arguments_object(),
        })
        .collect();
    Summary {
        text: answer.text.concat(),
        reasoning: answer.reasoning.concat(),
        tool_calls,
        finish: Some(if cell.feature == Feature::ToolCall {
            FinishKind::ToolCalls
        } else {
            FinishKind::Stop
        }),
        usage: Some(usage),
    }
}

/// What the mocks observed, per cell marker.
#[derive(Default)]
struct UpstreamLog {
    problems: HashMap<String, Vec<String>>,
    hits: HashMap<String, usize>,
    /// Requests that named no cell.
    strays: Vec<String>,
}

type SharedLog = Arc<Mutex<UpstreamLog>>;

/// A mock provider of `channel`'s format that checks every request against its cell and
/// answers with the cell's scripted answer.
fn start_matrix_mock(channel: ChannelKind, log: SharedLog) -> MockUpstream {
    MockUpstream::start(move |request: &RecordedRequest| {
        let body = String::from_utf8_lossy(&request.body);
        let Some(cell) = Cell::from_body(&body) else {
            log.lock().unwrap().strays.push(format!(
                "{} {}: {}",
                request.method,
                request.path,
                body.chars().take(300).collect::<String>()
            ));
            return error_reply(channel.name(), 400, "the request names no matrix cell");
        };
        let mut problems = check_request(channel, request, &upstream_expectation(&cell));
        if cell.channel != channel {
            problems.push(format!(
                "the {} mock got a request for the {} channel",
                channel.name(),
                cell.channel.name()
            ));
        }
        {
            let mut log = log.lock().unwrap();
            *log.hits.entry(cell.marker()).or_default() += 1;
            log.problems
                .entry(cell.marker())
                .or_default()
                .extend(problems);
        }
        scripted_reply(
            channel,
            &scripted_answer(&cell),
            request,
            &upstream_model(channel),
        )
    })
}

fn start_gateway() -> TestGateway {
    TestGateway::start_with(databases::sqlite(), |config| {
        config.antigravity.project = ANTIGRAVITY_PROJECT.to_string();
        // One attempt per call: a failing cell must not be retried into a different answer.
        config.relay.max_attempts = 1;
        config.relay.first_byte_timeout_seconds = 5;
        config.relay.stream_idle_timeout_seconds = 5;
        config.relay.total_timeout_seconds = 10;
    })
}

/// Runs one cell; Err lists everything wrong with it.
fn run_cell(
    cell: &Cell,
    gateway: &TestGateway,
    client_key: &str,
    log: &SharedLog,
) -> Result<(), Vec<String>> {
    if !supports(cell.client.format(), cell.channel.format()) {
        return Err(vec![format!(
            "lane not supported: convert::supports({}, {}) is false",
            cell.client.name(),
            cell.channel.name()
        )]);
    }
    let call = client_call(cell.client, &ask(cell), client_key);
    let response = call.send(gateway.address);
    let mut problems = Vec::new();
    match validate_response(cell.client, cell.stream, &response, Rules::STRICT) {
        Ok(summary) => problems.extend(
            expected_summary(cell)
                .differences(&summary)
                .into_iter()
                .map(|difference| format!("client got {difference}")),
        ),
        Err(problem) => problems.push(format!("client side: {problem}")),
    }
    problems.extend(foreign_signatures(cell.client, &response.text()));
    let mut log = log.lock().unwrap();
    match log.hits.remove(&cell.marker()).unwrap_or(0) {
        0 => problems.push("the upstream was never called".to_string()),
        1 => {}
        hits => problems.push(format!("the upstream was called {hits} times")),
    }
    problems.extend(
        log.problems
            .remove(&cell.marker())
            .unwrap_or_default()
            .into_iter()
            .map(|problem| format!("upstream request: {problem}")),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Reasoning signatures are bound to the provider family that issued them (protocols.md §5):
/// a client of another family would hand them back, and a mixed group could send them to a
/// provider that rejects them. Each mock signs its reasoning with a recognisable value.
fn foreign_signatures(client: ClientProtocol, answer: &str) -> Vec<String> {
    [
        (ANTHROPIC_SIGNATURE, ClientProtocol::Anthropic),
        (GEMINI_SIGNATURE, ClientProtocol::Gemini),
        (RESPONSES_ENCRYPTED_CONTENT, ClientProtocol::OpenaiResponses),
    ]
    .into_iter()
    .filter(|(signature, owner)| client != *owner && answer.contains(signature))
    .map(|(signature, owner)| {
        format!(
            "the {} client got the {} provider's reasoning signature {signature:?}",
            client.name(),
            owner.name()
        )
    })
    .collect()
}

fn mark(passed: bool) -> &'static str {
    if passed { "✓" } else { "✗" }
}

/// The result table: one row per client and channel type, one column per mode and feature.
fn matrix_table(results: &HashMap<Cell, Result<(), Vec<String>>>) -> String {
    let mut table = String::new();
    let features: Vec<&str> = Feature::ALL
        .iter()
        .map(|feature| match feature {
            Feature::Text => "text",
            Feature::ToolCall => "tool",
            Feature::Image => "image",
            Feature::Reasoning => "reason",
            Feature::SystemInMessages => "sysmsg",
        })
        .collect();
    let group_width = features.len() * 7 + 1;
    let group = |title: &str| format!("{title:^group_width$}");
    table.push_str(&format!(
        "{:<18}{:<18}|{}|{}\n",
        "client",
        "channel",
        group("non-stream"),
        group("stream")
    ));
    let header: String = features.iter().map(|name| format!("{name:^7}")).collect();
    table.push_str(&format!("{:<36}| {header}| {header}\n", ""));
    for client in ClientProtocol::ALL {
        for channel in ChannelKind::ALL {
            table.push_str(&format!("{:<18}{:<18}|", client.name(), channel.name()));
            for stream in [false, true] {
                table.push(' ');
                for feature in Feature::ALL {
                    let passed = results
                        .get(&Cell {
                            client,
                            channel,
                            stream,
                            feature,
                        })
                        .is_some_and(Result::is_ok);
                    table.push_str(&format!("{:^7}", mark(passed)));
                }
                table.push('|');
            }
            table.push('\n');
        }
    }
    table
}

#[test]
fn every_client_protocol_works_against_every_channel_type() {
    let started = Instant::now();
    let log: SharedLog = Arc::new(Mutex::new(UpstreamLog::default()));
    let mocks: Vec<(ChannelKind, MockUpstream)> = ChannelKind::ALL
        .into_iter()
        .map(|channel| (channel, start_matrix_mock(channel, log.clone())))
        .collect();
    let gateway = start_gateway();
    let token = gateway.admin_token();
    for (channel, mock) in &mocks {
        let channel_id = gateway.create_channel(
            &token,
            json!({"name": format!("matrix-{}", channel.name()), "type": channel.name(),
                   "base_urls": [channel.base_url(&mock.base_url())], "keys": [channel_key(*channel)]}),
        );
        gateway.create_group(&token, json!({"name": group_name(*channel), "items": [{"channel_id": channel_id, "model": upstream_model(*channel)}]}));
    }
    let client_key = gateway.create_client_key(&token, json!({"name": "matrix"}));

    let cells = Cell::all();
    assert_eq!(cells.len(), 200);
    let mut results = HashMap::new();
    for cell in &cells {
        results.insert(*cell, run_cell(cell, &gateway, &client_key, &log));
    }

    println!(
        "\nConversion matrix ({} cells, {:.1} s):\n{}",
        cells.len(),
        started.elapsed().as_secs_f64(),
        matrix_table(&results)
    );
    let failures: Vec<String> = cells
        .iter()
        .filter_map(|cell| match &results[cell] {
            Ok(()) => None,
            Err(problems) => Some(format!(
                "✗ {}\n    {}",
                cell.label(),
                problems.join("\n    ")
            )),
        })
        .collect();
    let strays = std::mem::take(&mut log.lock().unwrap().strays);
    if !failures.is_empty() {
        println!(
            "Failing cells ({} of {}):\n{}",
            failures.len(),
            cells.len(),
            failures.join("\n")
        );
    }
    assert!(
        strays.is_empty(),
        "requests that named no cell reached the mocks: {strays:#?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} matrix cells failed (see the table and the list above)",
        failures.len(),
        cells.len()
    );
}

/// A recorded provider stream and the channel type that replays it.
struct Recording {
    file: &'static str,
    channel: ChannelKind,
}

/// The recorded streams that carry a normal answer (text, reasoning, tool calls); errors,
/// refusals, blocked prompts and `n > 1` are other tests' business. Gemini recordings are also
/// replayed through an Antigravity channel, wrapped in its envelope.
fn recordings() -> Vec<Recording> {
    let mut recordings: Vec<Recording> = [
        (
            "openai-chat/text-stream-with-usage.sse",
            ChannelKind::OpenaiChat,
        ),
        ("openai-chat/tool-call-stream.sse", ChannelKind::OpenaiChat),
        (
            "openai-chat/parallel-tool-calls-stream.sse",
            ChannelKind::OpenaiChat,
        ),
        (
            "openai-chat/length-finish-stream.sse",
            ChannelKind::OpenaiChat,
        ),
        (
            "openai-chat/text-stream-obfuscation.chunks.txt",
            ChannelKind::OpenaiChat,
        ),
        (
            "openai-chat/deepseek-reasoning-tool-call-stream.chunks.txt",
            ChannelKind::OpenaiChat,
        ),
        (
            "openai-responses/text-stream.chunks.txt",
            ChannelKind::OpenaiResponses,
        ),
        (
            "openai-responses/function-call-stream.chunks.txt",
            ChannelKind::OpenaiResponses,
        ),
        (
            "anthropic-messages/thinking-signature-stream.chunks.txt",
            ChannelKind::Anthropic,
        ),
        (
            "anthropic-messages/text-then-tool-use-empty-input-stream.chunks.txt",
            ChannelKind::Anthropic,
        ),
        (
            "anthropic-messages/cassette-tool-use-stream-roundtrip.json#0",
            ChannelKind::Anthropic,
        ),
        (
            "anthropic-messages/cassette-tool-use-stream-roundtrip.json#1",
            ChannelKind::Anthropic,
        ),
    ]
    .into_iter()
    .map(|(file, channel)| Recording { file, channel })
    .collect();
    for file in [
        "gemini/text-stream.sse",
        "gemini/thoughts-then-text-stream.sse",
        "gemini/thoughts-then-function-call-stream.sse",
        "gemini/gemini3-function-call-signature-stream.chunks.txt",
        "gemini/gemini3-text-trailing-signature-stream.chunks.txt",
    ] {
        recordings.push(Recording {
            file,
            channel: ChannelKind::Gemini,
        });
        recordings.push(Recording {
            file,
            channel: ChannelKind::Antigravity,
        });
    }
    recordings
}

/// The recorded stream as its provider sent it. Chat chunk files keep only the payloads, so the
/// `[DONE]` that ends every Chat stream on the wire is put back.
fn recorded_bytes(recording: &Recording) -> Vec<u8> {
    let mut bytes = stream_bytes(recording.file);
    if recording.file.starts_with("openai-chat/") && recording.file.ends_with(".chunks.txt") {
        bytes.extend_from_slice(b"data: [DONE]\n\n");
    }
    bytes
}

/// The recorded stream as `channel` sends it: as recorded, or each Gemini chunk wrapped in the
/// Antigravity envelope.
fn replayed_bytes(recording: &Recording) -> Vec<u8> {
    let bytes = recorded_bytes(recording);
    if recording.channel != ChannelKind::Antigravity {
        return bytes;
    }
    let mut wrapped = Vec::new();
    for (_, data) in sse_events(&bytes) {
        let chunk: Value = serde_json::from_str(&data).expect("a recorded Gemini chunk is JSON");
        wrapped.extend_from_slice(format!("data: {}\n\n", antigravity_wrap(chunk)).as_bytes());
    }
    wrapped
}

/// Cuts a stream into pieces of at most `size` bytes (at character boundaries), so the gateway
/// sees events split across reads as they are on a real connection.
fn pieces(bytes: &[u8], size: usize) -> Vec<String> {
    let text = String::from_utf8(bytes.to_vec()).expect("recorded streams are UTF-8");
    let mut pieces = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    pieces
}

/// What the recording says, read with the validator of its own format; the README's stated
/// facts about some recordings guard that reading.
fn recorded_meaning(recording: &Recording) -> Summary {
    let origin = ClientProtocol::from_name(if recording.channel == ChannelKind::Antigravity {
        "gemini"
    } else {
        recording.channel.name()
    })
    .expect("every recording is in a client protocol's format");
    let summary = validate_stream(
        origin,
        &recorded_bytes(recording),
        Rules {
            expect_usage: false,
        },
    )
    .unwrap_or_else(|problem| {
        panic!(
            "the recording {} does not validate as {}: {problem}",
            recording.file,
            origin.name()
        )
    });
    let calls: Vec<(String, Value)> = summary
        .tool_calls
        .iter()
        .map(|call| (call.name.clone(), call.arguments.clone()))
        .collect();
    let stated: Option<Vec<(&str, Value)>> = match recording.file {
        "openai-chat/tool-call-stream.sse" => {
            Some(vec![("get_weather", json!({"city": "New York City"}))])
        }
        "openai-responses/function-call-stream.chunks.txt" => {
            Some(vec![("weather", json!({"location": "San Francisco"}))])
        }
        "gemini/gemini3-function-call-signature-stream.chunks.txt" => {
            Some(vec![("weather", json!({"location": "San Francisco"}))])
        }
        "anthropic-messages/text-then-tool-use-empty-input-stream.chunks.txt" => {
            Some(vec![(calls[0].0.as_str(), json!({}))])
        }
        _ => None,
    };
    if let Some(stated) = stated {
        let stated: Vec<(String, Value)> = stated
            .into_iter()
            .map(|(name, arguments)| (name.to_string(), arguments))
            .collect();
        assert_eq!(
            calls, stated,
            "the validator reads {} differently from fixtures/README.md",
            recording.file
        );
    }
    if recording.file == "openai-chat/parallel-tool-calls-stream.sse" {
        assert_eq!(calls.len(), 2, "the parallel recording has two calls");
    }
    summary
}

/// The parts of a replayed answer that must survive any conversion: text, tool calls by name
/// and arguments (ids may be synthesized), and the finish reason.
fn replay_differences(expected: &Summary, actual: &Summary) -> Vec<String> {
    let comparable = |summary: &Summary| Summary {
        text: summary.text.clone(),
        tool_calls: summary
            .tool_calls
            .iter()
            .map(|call| ToolCallSummary {
                id: None,
                ..call.clone()
            })
            .collect(),
        finish: summary.finish.clone(),
        ..Summary::default()
    };
    comparable(expected).differences(&comparable(actual))
}

#[test]
fn recorded_provider_streams_replay_through_every_client_protocol() {
    let recordings = recordings();
    let model_of = |index: usize| format!("recording-{index}");
    let served: Arc<HashMap<String, Vec<String>>> = Arc::new(
        recordings
            .iter()
            .enumerate()
            .map(|(index, recording)| (model_of(index), pieces(&replayed_bytes(recording), 700)))
            .collect(),
    );
    let mock = {
        let served = served.clone();
        MockUpstream::start(
            move |request: &RecordedRequest| match served.get(&request.model()) {
                Some(events) => Reply::Sse {
                    events: events.clone(),
                    gap: std::time::Duration::ZERO,
                    end: StreamEnd::Finish,
                },
                None => error_reply("openai_chat", 404, "no recording for this model"),
            },
        )
    };
    let gateway = start_gateway();
    let token = gateway.admin_token();
    let mut channel_ids = HashMap::new();
    for channel in ChannelKind::ALL {
        let id = gateway.create_channel(
            &token,
            json!({"name": format!("replay-{}", channel.name()), "type": channel.name(),
                   "base_urls": [channel.base_url(&mock.base_url())], "keys": [channel_key(channel)]}),
        );
        channel_ids.insert(channel, id);
    }
    for (index, recording) in recordings.iter().enumerate() {
        gateway.create_group(&token, json!({"name": model_of(index), "items": [{"channel_id": channel_ids[&recording.channel], "model": model_of(index)}]}));
    }
    let client_key = gateway.create_client_key(&token, json!({"name": "replay"}));

    let mut table = format!("{:<70}{:<18}", "recording", "channel");
    for client in ClientProtocol::ALL {
        table.push_str(&format!("{:^18}", client.name()));
    }
    table.push('\n');
    let mut failures = Vec::new();
    for (index, recording) in recordings.iter().enumerate() {
        let expected = recorded_meaning(recording);
        table.push_str(&format!(
            "{:<70}{:<18}",
            recording.file,
            recording.channel.name()
        ));
        for client in ClientProtocol::ALL {
            let problems: Vec<String> = if !supports(client.format(), recording.channel.format()) {
                vec![format!(
                    "lane not supported: convert::supports({}, {}) is false",
                    client.name(),
                    recording.channel.name()
                )]
            } else {
                let ask = ClientAsk {
                    group: model_of(index),
                    stream: true,
                    system: None,
                    user_text: "Replay the recording.".to_string(),
                    mid_system: None,
                    image: None,
                    tool: None,
                    reasoning: false,
                    max_tokens: CLIENT_MAX_TOKENS,
                };
                let response = client_call(client, &ask, &client_key).send(gateway.address);
                match validate_response(
                    client,
                    true,
                    &response,
                    Rules {
                        expect_usage: false,
                    },
                ) {
                    Ok(actual) => replay_differences(&expected, &actual),
                    Err(problem) => vec![format!("client side: {problem}")],
                }
            };
            table.push_str(&format!("{:^18}", mark(problems.is_empty())));
            if !problems.is_empty() {
                failures.push(format!(
                    "✗ {} through the {} channel to the {} client\n    {}",
                    recording.file,
                    recording.channel.name(),
                    client.name(),
                    problems.join("\n    ")
                ));
            }
        }
        table.push('\n');
    }
    println!("\nRecorded streams replayed to every client protocol:\n{table}");
    if !failures.is_empty() {
        println!(
            "Failing replays ({}):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    assert!(
        failures.is_empty(),
        "{} replays failed (see the table and the list above)",
        failures.len()
    );
}

/// The validators accept what the mock providers write, in every format, and mean the same by it;
/// and they reject streams with the faults the matrix is there to catch. Without this the matrix
/// could pass by validating nothing.
#[test]
fn validators_accept_provider_answers_and_reject_broken_ones() {
    for client in ClientProtocol::ALL {
        for feature in [Feature::Text, Feature::ToolCall, Feature::Reasoning] {
            let cell = Cell {
                client,
                channel: client.channel(),
                stream: true,
                feature,
            };
            let answer = scripted_answer(&cell);
            let expected = expected_summary(&cell);
            let body = complete_answer(cell.channel, &answer, "m");
            let complete = validate_complete(client, &body, Rules::STRICT)
                .unwrap_or_else(|problem| panic!("{}: {problem}", cell.label()));
            assert_eq!(
                expected.differences(&complete),
                Vec::<String>::new(),
                "{} (non-stream)",
                cell.label()
            );
            let events = streamed_answer(cell.channel, &answer, "m", true);
            let streamed = validate_stream(client, events.concat().as_bytes(), Rules::STRICT)
                .unwrap_or_else(|problem| panic!("{}: {problem}", cell.label()));
            assert_eq!(
                expected.differences(&streamed),
                Vec::<String>::new(),
                "{} (stream)",
                cell.label()
            );
        }
    }

    let stream_of = |client: ClientProtocol, feature: Feature| {
        let cell = Cell {
            client,
            channel: client.channel(),
            stream: true,
            feature,
        };
        streamed_answer(cell.channel, &scripted_answer(&cell), "m", true)
    };
    let rejects = |client: ClientProtocol, events: Vec<String>, fault: &str| {
        let result = validate_stream(client, events.concat().as_bytes(), Rules::STRICT);
        assert!(
            result.is_err(),
            "the {} validator accepted a stream with {fault}: {result:?}",
            client.name()
        );
    };
    let replaced = |events: &[String], position: usize, from: &str, to: &str| {
        let mut events = events.to_vec();
        assert!(
            events[position].contains(from),
            "event {position} has no {from:?}: {}",
            events[position]
        );
        events[position] = events[position].replacen(from, to, 1);
        events
    };

    let chat = stream_of(ClientProtocol::OpenaiChat, Feature::ToolCall);
    rejects(
        ClientProtocol::OpenaiChat,
        chat[..chat.len() - 1].to_vec(),
        "no [DONE]",
    );
    rejects(
        ClientProtocol::OpenaiChat,
        replaced(&chat, 0, ",\"role\":\"assistant\"", ""),
        "no role in the first chunk",
    );
    rejects(
        ClientProtocol::OpenaiChat,
        replaced(&chat, 1, "\"index\":0,\"type\"", "\"index\":1,\"type\""),
        "a tool call index that skips 0",
    );
    rejects(
        ClientProtocol::OpenaiChat,
        replaced(&chat, 1, "\"name\":\"get_weather\"", "\"name\":\"\""),
        "a first tool delta without a name",
    );
    rejects(
        ClientProtocol::OpenaiChat,
        replaced(&chat, 3, "ty\\\":\\\"Pa", "ty\\\"::\\\"Pa"),
        "arguments that do not join to JSON",
    );
    rejects(
        ClientProtocol::OpenaiChat,
        replaced(
            &chat,
            5,
            "\"finish_reason\":\"tool_calls\"",
            "\"finish_reason\":null",
        ),
        "no finish chunk",
    );
    let usage_chunk = chat.len() - 2;
    rejects(
        ClientProtocol::OpenaiChat,
        replaced(
            &chat,
            usage_chunk,
            "\"total_tokens\":15",
            "\"total_tokens\":19",
        ),
        "a total that double counts",
    );
    rejects(
        ClientProtocol::OpenaiChat,
        replaced(
            &chat,
            usage_chunk,
            "\"cached_tokens\":4",
            "\"cached_tokens\":14",
        ),
        "more cached than prompt tokens",
    );

    let anthropic = stream_of(ClientProtocol::Anthropic, Feature::Reasoning);
    rejects(
        ClientProtocol::Anthropic,
        anthropic[1..].to_vec(),
        "no message_start",
    );
    rejects(
        ClientProtocol::Anthropic,
        anthropic[..anthropic.len() - 1].to_vec(),
        "no message_stop",
    );
    let text_start = anthropic
        .iter()
        .position(|event| event.contains("\"text\":\"\",\"type\":\"text\""))
        .expect("a text block");
    rejects(
        ClientProtocol::Anthropic,
        replaced(&anthropic, text_start, "\"index\":1", "\"index\":2"),
        "a block index that skips one",
    );
    rejects(
        ClientProtocol::Anthropic,
        replaced(
            &anthropic,
            text_start + 1,
            "\"text_delta\"",
            "\"thinking_delta\"",
        ),
        "a thinking delta in a text block",
    );
    let mut unclosed = anthropic.clone();
    unclosed.remove(text_start - 1);
    rejects(
        ClientProtocol::Anthropic,
        unclosed,
        "a block that never stops",
    );
    let anthropic_tool = stream_of(ClientProtocol::Anthropic, Feature::ToolCall);
    let json_delta = anthropic_tool
        .iter()
        .position(|event| event.contains("input_json_delta"))
        .expect("a json delta");
    rejects(
        ClientProtocol::Anthropic,
        replaced(&anthropic_tool, json_delta, "{\\\"ci", "[\\\"ci"),
        "input that does not join to a JSON object",
    );

    let responses = stream_of(ClientProtocol::OpenaiResponses, Feature::ToolCall);
    rejects(
        ClientProtocol::OpenaiResponses,
        responses[..responses.len() - 1].to_vec(),
        "no response.completed",
    );
    rejects(
        ClientProtocol::OpenaiResponses,
        replaced(
            &responses,
            3,
            "\"sequence_number\":3",
            "\"sequence_number\":1",
        ),
        "a sequence number going back",
    );
    let arguments_done = responses
        .iter()
        .position(|event| event.contains("function_call_arguments.done"))
        .expect("arguments done");
    rejects(
        ClientProtocol::OpenaiResponses,
        replaced(&responses, arguments_done, "Paris", "Lyon"),
        "arguments.done differing from the deltas",
    );
    let mut no_arguments_done = responses.clone();
    no_arguments_done.remove(arguments_done);
    rejects(
        ClientProtocol::OpenaiResponses,
        no_arguments_done,
        "no function_call_arguments.done",
    );
    let mut never_done = responses.clone();
    never_done.remove(arguments_done + 1);
    rejects(
        ClientProtocol::OpenaiResponses,
        never_done,
        "an item that is never done",
    );
    let arguments_delta = responses
        .iter()
        .position(|event| event.contains("function_call_arguments.delta"))
        .expect("arguments delta");
    rejects(
        ClientProtocol::OpenaiResponses,
        replaced(
            &responses,
            arguments_delta,
            "\"output_index\":0",
            "\"output_index\":1",
        ),
        "a delta naming an item that is not open",
    );
    let text_responses = stream_of(ClientProtocol::OpenaiResponses, Feature::Text);
    let text_done = text_responses
        .iter()
        .position(|event| event.contains("output_text.done"))
        .expect("text done");
    rejects(
        ClientProtocol::OpenaiResponses,
        replaced(&text_responses, text_done, "Hello from the mock", "Hello"),
        "output_text.done differing from the deltas",
    );
    let mut unpaired = text_responses.clone();
    unpaired.remove(text_done + 1);
    rejects(
        ClientProtocol::OpenaiResponses,
        unpaired,
        "a content part that is never done",
    );

    let gemini = stream_of(ClientProtocol::Gemini, Feature::ToolCall);
    let mut with_done = gemini.clone();
    with_done.push("data: [DONE]\n\n".to_string());
    rejects(ClientProtocol::Gemini, with_done, "a [DONE]");
    rejects(
        ClientProtocol::Gemini,
        replaced(&gemini, 0, "\"finishReason\":\"STOP\",", ""),
        "no finishReason",
    );
    rejects(
        ClientProtocol::Gemini,
        replaced(
            &gemini,
            0,
            "\"totalTokenCount\":15",
            "\"totalTokenCount\":13",
        ),
        "usage that does not add up",
    );
    rejects(
        ClientProtocol::Gemini,
        replaced(
            &gemini,
            0,
            "\"args\":{\"city\":\"Paris\"}",
            "\"args\":\"{}\"",
        ),
        "function call args that are not an object",
    );
}

/// The upstream request checks accept a well-formed request and name each fault in a broken one.
#[test]
fn upstream_checks_accept_a_good_request_and_name_each_fault() {
    let cell = Cell {
        client: ClientProtocol::OpenaiChat,
        channel: ChannelKind::Anthropic,
        stream: true,
        feature: Feature::Reasoning,
    };
    let expected = upstream_expectation(&cell);
    let good = json!({
        "model": upstream_model(ChannelKind::Anthropic), "max_tokens": 8192, "stream": true, "system": SYSTEM_PROMPT,
        "messages": [{"role": "user", "content": [{"type": "text", "text": user_text(&cell)}]}],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    });
    let recorded = |body: &Value| RecordedRequest {
        method: "POST".to_string(),
        path: "/v1/messages".to_string(),
        query: String::new(),
        headers: vec![
            ("x-api-key".to_string(), channel_key(ChannelKind::Anthropic)),
            ("anthropic-version".to_string(), "2023-06-01".to_string()),
        ],
        body: body.to_string().into_bytes(),
    };
    assert_eq!(
        check_request(ChannelKind::Anthropic, &recorded(&good), &expected),
        Vec::<String>::new()
    );
    let faults = [
        (
            "/max_completion_tokens",
            json!(4096),
            "max_completion_tokens",
        ),
        (
            "/thinking",
            json!({"type": "enabled", "budget_tokens": 9000}),
            "budget_tokens",
        ),
        ("/system", json!("Something else."), "body.system"),
        ("/stream", json!(false), "body.stream"),
        ("/model", json!("another-model"), "body.model"),
    ];
    for (pointer, value, named) in faults {
        let mut broken = good.clone();
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        broken.pointer_mut(parent).expect("the parent exists")[key] = value;
        let problems = check_request(ChannelKind::Anthropic, &recorded(&broken), &expected);
        assert!(
            problems.iter().any(|problem| problem.contains(named)),
            "{pointer}: {problems:?}"
        );
    }
}

/// The stateful chain, as a coding agent runs it: a question the model answers with a tool call,
/// the tool's output, then a new question; each turn names only the previous response.
const CHAIN_FIRST_QUESTION: &str = "chain turn one: the weather in Paris?";
const CHAIN_TOOL_OUTPUT: &str = "chain tool output: sunny";
const CHAIN_THIRD_QUESTION: &str = "chain turn three: and tomorrow?";

/// Which turn of the chain a request is: the newest thing it carries.
fn chain_turn(body: &str) -> usize {
    if body.contains(CHAIN_THIRD_QUESTION) {
        3
    } else if body.contains(CHAIN_TOOL_OUTPUT) {
        2
    } else {
        1
    }
}

/// A mock of `channel`'s format for the stateful chain: a tool call on the first turn, text
/// naming the turn afterwards; every Responses answer gets its own id, as a real Responses
/// upstream gives.
fn start_chain_mock(channel: ChannelKind) -> MockUpstream {
    let counter = Arc::new(Mutex::new(0usize));
    MockUpstream::start(move |request: &RecordedRequest| {
        let turn = chain_turn(&String::from_utf8_lossy(&request.body));
        let answer = ScriptedAnswer {
            reasoning: Vec::new(),
            text: if turn == 1 { Vec::new() } else { vec!["answer".to_string(), format!(" to turn {turn}")] },
            tool_call: (turn == 1).then(|| ScriptedToolCall {
                id: upstream_call_id(channel).unwrap_or("").to_string(),
                name: "get_weather".to_string(),
                argument_fragments: ARGUMENT_FRAGMENTS.iter().map(|fragment| fragment.to_string()).collect(),
            }),
            usage: scripted_usage(Feature::Text),
        };
        let unique = {
            let mut counter = counter.lock().unwrap();
            *counter += 1;
            format!("resp_chain{}", *counter)
        };
        match scripted_reply(channel, &answer, request, &upstream_model(channel)) {
            Reply::Json { status, headers, body } => Reply::Json { status, headers, body: body.replace("resp_mock", &unique) },
            Reply::Sse { events, gap, end } => {
                Reply::Sse { events: events.into_iter().map(|event| event.replace("resp_mock", &unique)).collect(), gap, end }
            }
            other => other,
        }
    })
}

/// The response object of a Responses answer: the body, or the terminal event's response.
fn responses_object(response: &support::http_client::TestResponse, stream: bool) -> Value {
    if !stream {
        return serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    }
    sse_events(&response.body)
        .into_iter()
        .find(|(name, _)| name.as_deref() == Some("response.completed"))
        .and_then(|(_, data)| serde_json::from_str::<Value>(&data).ok())
        .map(|event| event["response"].clone())
        .unwrap_or(Value::Null)
}

/// Runs the three chained turns against one channel type; Err lists everything wrong.
fn run_chain(gateway: &TestGateway, client_key: &str, channel: ChannelKind, mock: &MockUpstream, stream: bool) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let requests_before = mock.requests().len();
    let tools = json!([{"type": "function", "name": "get_weather", "description": "The weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let mut previous: Option<String> = None;
    let mut call_id = String::new();
    for turn in 1..=3 {
        let input = match turn {
            1 => json!(CHAIN_FIRST_QUESTION),
            2 => json!([{"type": "function_call_output", "call_id": call_id, "output": CHAIN_TOOL_OUTPUT}]),
            _ => json!([{"role": "user", "content": [{"type": "input_text", "text": CHAIN_THIRD_QUESTION}]}]),
        };
        let mut body = json!({"model": group_name(channel), "input": input, "tools": tools, "stream": stream, "max_output_tokens": CLIENT_MAX_TOKENS});
        if let Some(previous) = &previous {
            body["previous_response_id"] = json!(previous);
        }
        let auth = format!("Bearer {client_key}");
        let response = support::http_client::request(
            gateway.address,
            "POST",
            "/v1/responses",
            &[("authorization", &auth), ("content-type", "application/json")],
            body.to_string().as_bytes(),
        );
        match validate_response(ClientProtocol::OpenaiResponses, stream, &response, Rules::STRICT) {
            Ok(summary) if turn == 1 && summary.tool_calls.len() == 1 => {}
            Ok(summary) if turn > 1 && summary.text == format!("answer to turn {turn}") => {}
            Ok(summary) => problems.push(format!("turn {turn}: the client got {summary:?}")),
            Err(problem) => {
                problems.push(format!("turn {turn}: client side: {problem}"));
                return Err(problems);
            }
        }
        let object = responses_object(&response, stream);
        if turn == 1 {
            call_id = object["output"]
                .as_array()
                .and_then(|items| items.iter().find(|item| item["type"] == "function_call"))
                .and_then(|item| item["call_id"].as_str())
                .unwrap_or_default()
                .to_string();
            if call_id.is_empty() {
                problems.push(format!("turn 1: no function call in {object}"));
                return Err(problems);
            }
        }
        previous = object["id"].as_str().map(str::to_string);
        if previous.is_none() {
            problems.push(format!("turn {turn}: no response id in {object}"));
            return Err(problems);
        }
    }
    let requests = mock.requests();
    match requests.get(requests_before + 2) {
        Some(third) => {
            let text = String::from_utf8_lossy(&third.body);
            for needle in [CHAIN_FIRST_QUESTION, "get_weather", "Paris", CHAIN_TOOL_OUTPUT, "answer to turn 2", CHAIN_THIRD_QUESTION] {
                if !text.contains(needle) {
                    problems.push(format!("the third upstream request lacks {needle:?}: {text}"));
                }
            }
            if text.contains("previous_response_id") || text.contains("resp_chain") {
                problems.push("the third upstream request carries a stored response id".to_string());
            }
        }
        None => problems.push(format!("the upstream got {} requests, not 3", requests.len() - requests_before)),
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// The stateful column of the matrix: an OpenAI Responses client chains three turns (a tool
/// call, its output, a new question) with `previous_response_id` and the gateway's response
/// store, against every channel type.
#[test]
fn a_stateful_responses_chain_of_three_turns_works_against_every_channel_type() {
    let gateway = start_gateway();
    let token = gateway.admin_token();
    let mocks: Vec<(ChannelKind, MockUpstream)> = ChannelKind::ALL.into_iter().map(|channel| (channel, start_chain_mock(channel))).collect();
    for (channel, mock) in &mocks {
        let channel_id = gateway.create_channel(
            &token,
            json!({"name": format!("chain-{}", channel.name()), "type": channel.name(),
                   "base_urls": [channel.base_url(&mock.base_url())], "keys": [channel_key(*channel)]}),
        );
        gateway.create_group(&token, json!({"name": group_name(*channel), "items": [{"channel_id": channel_id, "model": upstream_model(*channel)}]}));
    }
    let client_key = gateway.create_client_key(&token, json!({"name": "chain"}));
    let mut table = format!("{:<18}{:<18}|{:^12}|{:^12}\n", "client", "channel", "non-stream", "stream");
    let mut failures = Vec::new();
    for (channel, mock) in &mocks {
        table.push_str(&format!("{:<18}{:<18}|", ClientProtocol::OpenaiResponses.name(), channel.name()));
        for stream in [false, true] {
            let result = run_chain(&gateway, &client_key, *channel, mock, stream);
            table.push_str(&format!("{:^12}|", mark(result.is_ok())));
            if let Err(problems) = result {
                failures.push(format!("✗ {} {}\n    {}", channel.name(), mode_name(stream), problems.join("\n    ")));
            }
        }
        table.push('\n');
    }
    println!("\nStateful Responses chain (3 turns, previous_response_id):\n{table}");
    assert!(failures.is_empty(), "chain failures:\n{}", failures.join("\n"));
}
