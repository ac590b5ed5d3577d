//! The recorded provider data in the `shared/fixtures` folder that sits beside the repository
//! (beside the main checkout, or one level further up for a worktree), loaded by path as
//! `shared/fixtures/README.md` describes.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// The `shared/fixtures` folder.
pub fn fixtures_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for candidate in [manifest.join("../shared"), manifest.join("../../shared")] {
        if candidate.is_dir() {
            return candidate.join("fixtures");
        }
    }
    panic!(
        "the shared fixtures folder is neither at ../shared nor at ../../shared from {}",
        manifest.display()
    );
}

/// The bytes of `providers/<relative>`.
pub fn provider_file(relative: &str) -> Vec<u8> {
    let path = fixtures_dir().join("providers").join(relative);
    std::fs::read(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// The wire bytes of a recorded stream, as its provider sent them.
///
/// `*.sse` files are the body as it was. `*.chunks.txt` files hold one JSON payload per line and
/// get the framing their provider uses: an `event: <type>` line for Anthropic and Responses,
/// bare `data:` lines for OpenAI Chat and Gemini. `cassette-*.json#N` is the body of recorded
/// exchange N.
pub fn stream_bytes(relative: &str) -> Vec<u8> {
    if let Some((file, index)) = relative.split_once('#') {
        let exchanges: Value =
            serde_json::from_slice(&provider_file(file)).expect("a cassette is JSON");
        let index: usize = index.parse().expect("an exchange index");
        let body = exchanges[index]["response"]["body"]
            .as_str()
            .expect("a streamed exchange body is a string");
        return body.as_bytes().to_vec();
    }
    let bytes = provider_file(relative);
    if relative.ends_with(".sse") {
        return bytes;
    }
    assert!(
        relative.ends_with(".chunks.txt"),
        "not a stream fixture: {relative}"
    );
    let named_events =
        relative.starts_with("anthropic-messages/") || relative.starts_with("openai-responses/");
    let text = String::from_utf8(bytes).expect("chunk files are UTF-8");
    let mut framed = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        if named_events {
            let payload: Value = serde_json::from_str(line).expect("each chunk line is JSON");
            let event_type = payload["type"].as_str().expect("each chunk has a type");
            framed.extend_from_slice(format!("event: {event_type}\n").as_bytes());
        }
        framed.extend_from_slice(format!("data: {line}\n\n").as_bytes());
    }
    framed
}
