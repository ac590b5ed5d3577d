//! Test helpers: find the shared provider fixtures and replay them as the SSE bytes an upstream sends.

use std::path::PathBuf;

/// The shared fixtures folder, which sits beside the main checkout and beside the worktrees folder.
pub fn fixtures_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for candidate in [manifest.join("../shared"), manifest.join("../../shared")] {
        if candidate.is_dir() {
            return candidate.join("fixtures");
        }
    }
    panic!("shared fixtures not found beside {}", manifest.display());
}

/// The bytes of `providers/<relative>`.
pub fn provider_file(relative: &str) -> Vec<u8> {
    let path = fixtures_dir().join("providers").join(relative);
    std::fs::read(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// A provider fixture parsed as JSON.
pub fn provider_json(relative: &str) -> serde_json::Value {
    serde_json::from_slice(&provider_file(relative)).expect("fixture is JSON")
}

/// The wire bytes of a recorded stream.
///
/// `*.sse` files are used as they are. `*.chunks.txt` files hold one JSON payload per line and are
/// framed as fixtures/README.md says: `event: <type>` lines for Anthropic and Responses, bare
/// `data:` lines for Chat and Gemini. `cassette-*.json#N` names the body of exchange N, and
/// `*.chunks.txt#N` response N of a Responses recording that holds several back to back (each one
/// ends with its terminal `response.*` event).
pub fn stream_bytes(name: &str) -> Vec<u8> {
    if let Some((file, index)) = name.split_once('#') {
        let index: usize = index.parse().expect("exchange index");
        if file.ends_with(".chunks.txt") {
            return recorded_response(file, index);
        }
        let exchanges = provider_json(file);
        let body = &exchanges[index]["response"]["body"];
        return body
            .as_str()
            .expect("stream body is a string")
            .as_bytes()
            .to_vec();
    }
    let bytes = provider_file(name);
    if name.ends_with(".sse") {
        return bytes;
    }
    assert!(
        name.ends_with(".chunks.txt"),
        "not a stream fixture: {name}"
    );
    let with_event_lines =
        name.starts_with("anthropic-messages/") || name.starts_with("openai-responses/");
    let text = String::from_utf8(bytes).expect("chunks are UTF-8");
    let mut out = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        if with_event_lines {
            let payload: serde_json::Value = serde_json::from_str(line).expect("chunk is JSON");
            let event_type = payload["type"].as_str().expect("chunk has a type");
            out.extend_from_slice(format!("event: {event_type}\n").as_bytes());
        }
        out.extend_from_slice(format!("data: {line}\n\n").as_bytes());
    }
    out
}

/// Response `wanted` of a chunks file with several Responses streams back to back.
fn recorded_response(file: &str, wanted: usize) -> Vec<u8> {
    let whole = String::from_utf8(stream_bytes(file)).expect("stream is UTF-8");
    let mut responses = vec![String::new()];
    for event in whole.split_inclusive("\n\n") {
        responses.last_mut().unwrap().push_str(event);
        let terminal = ["completed", "incomplete", "failed"]
            .iter()
            .any(|status| event.starts_with(&format!("event: response.{status}\n")));
        if terminal {
            responses.push(String::new());
        }
    }
    responses.retain(|response| !response.is_empty());
    responses
        .get(wanted)
        .unwrap_or_else(|| panic!("{file} holds {} responses", responses.len()))
        .as_bytes()
        .to_vec()
}

/// Every recorded stream, by the names [`stream_bytes`] accepts.
pub fn all_streams() -> Vec<String> {
    let providers = fixtures_dir().join("providers");
    let mut names = Vec::new();
    for folder in std::fs::read_dir(&providers).expect("providers folder") {
        let folder = folder.expect("folder entry").path();
        let folder_name = folder.file_name().unwrap().to_string_lossy().to_string();
        for file in std::fs::read_dir(&folder).expect("fixture folder") {
            let file_name = file
                .expect("file entry")
                .file_name()
                .to_string_lossy()
                .to_string();
            let relative = format!("{folder_name}/{file_name}");
            if file_name.ends_with(".sse") || file_name.ends_with(".chunks.txt") {
                names.push(relative);
            } else if file_name.starts_with("cassette-") {
                let exchanges = provider_json(&relative);
                for (index, exchange) in exchanges.as_array().unwrap().iter().enumerate() {
                    let headers = &exchange["response"]["headers"];
                    let content_type = headers["content-type"].as_str().unwrap_or("");
                    if content_type.starts_with("text/event-stream") {
                        names.push(format!("{relative}#{index}"));
                    }
                }
            }
        }
    }
    names.sort();
    names
}

/// Where to split a stream in two when checking that splitting changes nothing: every byte of a
/// small stream; for a large one, the bytes around each line terminator (where splitting can go
/// wrong), evenly thinned to at most `limit` points to keep debug-build test time reasonable.
/// Callers also push every stream one byte at a time, which covers every boundary in one pass.
pub fn split_points(bytes: &[u8], limit: usize) -> Vec<usize> {
    if bytes.len() <= 4 * 1024 {
        return (0..=bytes.len()).collect();
    }
    let mut points = Vec::new();
    for (position, &byte) in bytes.iter().enumerate() {
        if byte == b'\n' || byte == b'\r' {
            let first = position.saturating_sub(2);
            let last = (position + 3).min(bytes.len());
            points.extend(first..=last);
        }
    }
    points.dedup();
    let stride = points.len().div_ceil(limit.max(1)).max(1);
    points.into_iter().step_by(stride).collect()
}

/// Parses a stream given as pieces, the way the relay feeds the parser.
pub fn parse_pieces(pieces: &[&[u8]]) -> Vec<crate::protocol::sse::SseEvent> {
    let mut parser = crate::protocol::sse::SseParser::new(1 << 20);
    let mut events = Vec::new();
    for piece in pieces {
        parser.push(piece, &mut events).expect("stream parses");
    }
    parser.finish(&mut events).expect("stream parses");
    events
}

/// Decoding `bytes` fed one byte at a time, and split in two at each of `split_points(bytes,
/// max_splits)`, gives exactly `whole` (what decoding them in one piece gave).
pub fn assert_split_decoding_matches<T: PartialEq + std::fmt::Debug>(
    name: &str,
    bytes: &[u8],
    whole: &[T],
    max_splits: usize,
    decode: impl Fn(&[crate::protocol::sse::SseEvent]) -> Vec<T>,
) {
    let byte_pieces: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(decode(&parse_pieces(&byte_pieces)), whole, "{name} bytewise");
    for split in split_points(bytes, max_splits) {
        let (head, tail) = bytes.split_at(split);
        assert_eq!(decode(&parse_pieces(&[head, tail])), whole, "{name} at {split}");
    }
}
