//! The official OpenAI, Anthropic and Google GenAI Python SDKs against a real gateway: requests
//! shaped exactly as the SDKs send them, answers parsed by the SDKs, streamed text arriving in
//! several pieces. scripts/test installs the SDKs and sets OCTOPUS_TEST_PYTHON.

mod support;

use std::process::Command;

use serde_json::{json, Value};

use support::databases;
use support::gateway::TestGateway;
use support::mock_upstream::MockUpstream;

#[test]
fn official_sdks_get_answers_and_streams_in_pieces() {
    let Some(python) = std::env::var("OCTOPUS_TEST_PYTHON").ok().filter(|path| !path.is_empty()) else {
        if std::env::var("CI").is_ok() {
            panic!("OCTOPUS_TEST_PYTHON is not set: CI requires the SDK test (run through scripts/test)");
        }
        eprintln!("NOTICE: OCTOPUS_TEST_PYTHON is not set; skipping the official SDK test (run through scripts/test)");
        return;
    };
    let mock = MockUpstream::default_success();
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    for (group, channel_type, suffix) in [
        ("sdk-chat", "openai_chat", "/v1"),
        ("sdk-responses", "openai_responses", "/v1"),
        ("sdk-anthropic", "anthropic", "/v1"),
        ("sdk-gemini", "gemini", "/v1beta"),
    ] {
        let channel = gateway.create_channel(&token, json!({"name": group, "type": channel_type, "base_urls": [format!("{}{suffix}", mock.base_url())], "keys": ["upstream-key-0000001"]}));
        gateway.create_group(&token, json!({"name": group, "items": [{"channel_id": channel, "model": format!("{group}-upstream")}]}));
    }
    let key = gateway.create_client_key(&token, json!({"name": "sdk"}));
    // Same protocol on both sides (pass-through) first, then every SDK on a group whose channel
    // speaks another protocol (Claude Code on an OpenAI channel, Codex on Anthropic, ...).
    let pass_through = ["sdk-chat", "sdk-responses", "sdk-anthropic", "sdk-gemini"];
    let converted = ["sdk-anthropic", "sdk-gemini", "sdk-chat", "sdk-responses"];
    for groups in [pass_through, converted] {
        run_sdk_script(&python, gateway.address, &key, groups);
    }
    // The SDKs' own headers reached the upstream in pass-through (minus the client's key).
    let requests = mock.requests();
    assert!(requests.iter().any(|request| request.header("x-stainless-lang").is_some()));
    assert!(requests.iter().all(|request| !request.headers.iter().any(|(_, value)| value.contains(&key))));
}

fn run_sdk_script(python: &str, address: std::net::SocketAddr, key: &str, groups: [&str; 4]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/clients.py");
    let output = Command::new(python)
        .arg(script)
        .arg(format!("http://{address}"))
        .arg(key)
        .args(groups)
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "SDK script failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let results: Vec<Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let calls: Vec<&str> = results.iter().map(|result| result["call"].as_str().unwrap()).collect();
    assert_eq!(
        calls,
        [
            "openai.chat",
            "openai.chat.stream",
            "openai.responses",
            "openai.responses.stream",
            "anthropic.messages",
            "anthropic.messages.stream",
            "google.generate_content",
            "google.generate_content_stream",
            "openai.models",
        ]
    );
    for result in &results[..8] {
        assert_eq!(result["text"], "Hello from the mock", "{groups:?}: {result}");
        if result["call"].as_str().unwrap().contains("stream") {
            assert!(result["chunks"].as_u64().unwrap() >= 4, "streamed text must arrive in several pieces: {result}");
        }
    }
    assert_eq!(results[8]["text"], "sdk-anthropic,sdk-chat,sdk-gemini,sdk-responses");
}
