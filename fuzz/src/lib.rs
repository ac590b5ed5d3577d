//! What the fuzz targets share: deterministic splitting of an input into pieces (the way bytes
//! arrive from a socket), and the drivers that push one input through every conversion of a
//! protocol (request, response, stream), so each target file is one line of intent.
//!
//! The drivers look for panics (the gateway answers bad input with a 4xx, never a crash); every
//! `Result` they get back is deliberately ignored, because an error is the right answer to most
//! fuzz inputs. Where a property must hold whatever the input (splitting the input differently
//! changes nothing, our own output parses again), the target asserts it.

use octopus::protocol::convert::{self, ConvertContext};
use octopus::protocol::ir::{ResponseMeta, WriteOptions};
use octopus::protocol::sse::{SseEvent, SseParser};
use octopus::protocol::usage::{StreamUsageTracker, usage_from_response_body};
use octopus::protocol::{Format, anthropic, antigravity, gemini, openai_chat, openai_responses};
use serde_json::Value;

/// Every wire format, as a client protocol or an upstream channel type.
pub const ALL_FORMATS: [Format; 5] = [
    Format::OpenaiChat,
    Format::OpenaiResponses,
    Format::Anthropic,
    Format::Gemini,
    Format::Antigravity,
];

/// The formats clients speak (Antigravity is upstream-only).
pub const CLIENT_FORMATS: [Format; 4] = [
    Format::OpenaiChat,
    Format::OpenaiResponses,
    Format::Anthropic,
    Format::Gemini,
];

/// Splits `data` into consecutive non-empty pieces whose lengths follow from `seed`: 0 keeps the
/// input whole, anything else cuts it into pieces of 1 to 2^(seed % 8) bytes chosen by a small
/// generator. The same input always splits the same way, so a crash reproduces.
pub fn pieces(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    if seed == 0 || data.is_empty() {
        return vec![data];
    }
    let longest = 1usize << (seed % 8);
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut result = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let length = (state as usize % longest + 1).min(rest.len());
        let (piece, tail) = rest.split_at(length);
        result.push(piece);
        rest = tail;
    }
    result
}

/// The context the relay passes to the converters, with fixed ids and times.
pub fn context(stream: bool) -> ConvertContext {
    ConvertContext {
        upstream_model: "fuzz-upstream-model".to_string(),
        stream,
        default_max_tokens: 1024,
        response_id: "resp_fuzz".to_string(),
        created_unix: 1_700_000_000,
        include_usage: true,
        antigravity_project: "fuzz-project".to_string(),
        request_id: "req-fuzz".to_string(),
        // Codex's free-form tool, so the custom-tool mapping is driven too.
        custom_tools: vec!["apply_patch".to_string()],
    }
}

fn meta() -> ResponseMeta {
    ResponseMeta {
        id: "resp_fuzz".to_string(),
        model: "fuzz-model".to_string(),
        created_unix: 1_700_000_000,
        custom_tools: vec!["apply_patch".to_string()],
    }
}

fn write_options(stream: bool) -> WriteOptions {
    WriteOptions {
        upstream_model: "fuzz-upstream-model".to_string(),
        default_max_tokens: 1024,
        stream,
        antigravity_project: "fuzz-project".to_string(),
        request_id: "req-fuzz".to_string(),
    }
}

/// A client's request body in `client` format: parsed into the IR, written in every format
/// (streamed or not), each written body parsed again and written back in the client's format;
/// plus the relay's entry points (`convert_request`, with image inlining) for every upstream.
pub fn request_round_trip(client: Format, data: &[u8]) {
    // The relay's body scan vouches only for bodies serde_json reads, with the same members.
    octopus::fuzz_entry::check_body_scan_against_serde(data);
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = octopus::relay::count_tokens::estimate_tokens(&body);
    let _ = convert::client_wants_stream_usage(client, &body);
    for upstream in ALL_FORMATS {
        for stream in [false, true] {
            let _ = convert::convert_request(client, upstream, &body, &context(stream));
        }
        let mut fetch = |url: &str| -> Result<(String, String), String> {
            if url.len() % 2 == 0 {
                Ok(("image/png".to_string(), "iVBORw0KGgo=".to_string()))
            } else {
                Err("refused".to_string())
            }
        };
        let parse = || &body;
        let _ = convert::convert_request_with_media(
            client,
            upstream,
            convert::ClientBody::Bytes { bytes: data, parse: &parse },
            &context(false),
            &mut fetch,
            true,
        );
    }
    // The typed reader may leave a body to the `Value` reader, but where it reads one it must
    // read it exactly as the `Value` reader does.
    if let Some(typed) = octopus::protocol::typed_read::read_request(client, data) {
        assert_eq!(parse_request(client, &body).ok(), Some(typed), "the typed reader and the Value reader disagree");
    }
    let Ok(request) = parse_request(client, &body) else {
        return;
    };
    for tool in &request.tools {
        schema_scans_agree_with_the_tree(&tool.parameters);
    }
    for upstream in ALL_FORMATS {
        for stream in [false, true] {
            let Ok(written) = write_request(upstream, &request, &write_options(stream)) else {
                continue;
            };
            // Read back from text, as the upstream will (this can fail only on nesting deeper
            // than serde_json's limit, which the envelope of some formats adds to).
            let Ok(reread) = serde_json::from_str::<Value>(&written.to_string()) else {
                continue;
            };
            let Ok(again) = parse_request(upstream, &reread) else {
                continue;
            };
            let _ = write_request(client, &again, &write_options(stream));
        }
    }
}

fn parse_request(
    format: Format,
    body: &Value,
) -> Result<octopus::protocol::ir::Request, octopus::protocol::ir::ConvertError> {
    match format {
        Format::OpenaiChat => openai_chat::parse_request(body),
        Format::OpenaiResponses => openai_responses::parse_request(body),
        Format::Anthropic => anthropic::parse_request(body),
        Format::Gemini => gemini::parse_request(body),
        // An Antigravity request is a Gemini request inside an envelope.
        Format::Antigravity => gemini::parse_request(&body["request"]),
    }
}

/// A written body (the writers return typed bodies) as a `Value`; serialising one cannot fail.
/// A macro because the fuzz crate does not name serde's `Serialize` trait.
macro_rules! as_value {
    ($body:expr) => {
        serde_json::to_value($body).expect("a written body serialises")
    };
}

fn write_request(
    format: Format,
    request: &octopus::protocol::ir::Request,
    options: &WriteOptions,
) -> Result<Value, octopus::protocol::ir::ConvertError> {
    // The writers return typed bodies; as values they read back the same way.
    match format {
        Format::OpenaiChat => openai_chat::write_request(request, options).map(|body| as_value!(body)),
        Format::OpenaiResponses => openai_responses::write_request(request, options).map(|body| as_value!(body)),
        Format::Anthropic => anthropic::write_request(request, options).map(|body| as_value!(body)),
        Format::Gemini => gemini::write_request(request, options).map(|body| as_value!(body)),
        Format::Antigravity => antigravity::write_request(request, options).map(|body| as_value!(body)),
    }
}

fn parse_response(
    format: Format,
    body: &Value,
) -> Result<octopus::protocol::ir::Response, octopus::protocol::ir::ConvertError> {
    match format {
        Format::OpenaiChat => openai_chat::parse_response(body),
        Format::OpenaiResponses => openai_responses::parse_response(body),
        Format::Anthropic => anthropic::parse_response(body),
        Format::Gemini => gemini::parse_response(body, &meta()),
        Format::Antigravity => antigravity::parse_response(body, &meta()),
    }
}

fn write_response(format: Format, response: &octopus::protocol::ir::Response) -> Option<Value> {
    match format {
        Format::OpenaiChat => Some(as_value!(openai_chat::write_response(response, &meta()))),
        Format::OpenaiResponses => Some(as_value!(openai_responses::write_response(response, &meta()))),
        Format::Anthropic => Some(as_value!(anthropic::write_response(response, &meta()))),
        Format::Gemini => Some(as_value!(gemini::write_response(response, &meta()))),
        Format::Antigravity => None,
    }
}

/// An upstream's complete response body in `upstream` format: usage read from it, converted for
/// every client (the relay's entry point), and through the IR into every client format and back.
/// The writers' byte scans of a tool schema answer as its `Value` tree would. A tree keeps only
/// the last of duplicate member names, which the scan for a name anywhere sees all of, so that
/// scan may say yes where the tree says no (the conservative direction), never the other way.
fn schema_scans_agree_with_the_tree(schema: &octopus::protocol::ir::JsonSchema) {
    let Some(tree) = schema.to_value() else {
        return;
    };
    for name in ["type", "const", "$ref", "properties"] {
        let in_tree = tree.as_object().map(|members| members.contains_key(name));
        assert_eq!(schema.has_top_level_member(name), in_tree, "top-level `{name}` in {}", schema.raw().get());
        let wanted = |member: &str| member == name;
        if octopus::fuzz_entry::has_member_in_tree(&tree, &wanted) {
            assert!(schema.has_member_anywhere(&wanted), "`{name}` anywhere in {}", schema.raw().get());
        }
    }
}

pub fn response_round_trip(upstream: Format, data: &[u8]) {
    let _ = usage_from_response_body(upstream, data);
    for client in CLIENT_FORMATS {
        let _ = convert::convert_response(upstream, client, data, &context(false));
    }
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        // JSON a Value cannot hold (a lone surrogate escape, a number beyond f64) in a member the
        // typed reader skips is still read; bytes that are not UTF-8 never are.
        if std::str::from_utf8(data).is_err() {
            assert_eq!(octopus::protocol::typed_read::read_response(upstream, data, &meta()), None, "the typed reader read bytes that are not UTF-8");
        }
        return;
    };
    // Where the typed reader reads an answer, it reads it as the `Value` reader does.
    if let Some(typed) = octopus::protocol::typed_read::read_response(upstream, data, &meta()) {
        assert_eq!(parse_response(upstream, &body).ok(), Some(typed), "the typed reader and the Value reader disagree");
    }
    let Ok(response) = parse_response(upstream, &body) else {
        return;
    };
    for client in CLIENT_FORMATS {
        let Some(written) = write_response(client, &response) else {
            continue;
        };
        let Ok(reread) = serde_json::from_str::<Value>(&written.to_string()) else {
            continue;
        };
        let _ = usage_from_response_body(client, reread.to_string().as_bytes());
        if let Ok(again) = parse_response(client, &reread) {
            let _ = write_response(upstream, &again);
        }
    }
}

/// Parses an event stream fed in pieces; None when the parser gives up on it.
pub fn parse_events(pieces: &[&[u8]], max_event_size: usize) -> Option<Vec<SseEvent>> {
    let mut parser = SseParser::new(max_event_size);
    let mut events = Vec::new();
    for piece in pieces {
        parser.push(piece, &mut events).ok()?;
    }
    parser.finish(&mut events).ok()?;
    Some(events)
}

/// An upstream's event stream in `upstream` format for one client format, arriving in pieces.
/// The first input byte picks the client format (its low two bits, of [`CLIENT_FORMATS`]), the
/// relay path (bit 2) and the split (the rest, see [`pieces`]); one client and one path per run
/// keep each run short, and the fuzzer varies the byte. The stream's usage is always tracked.
/// Path 0 is the relay's streaming path: the stream transcoded for the client event by event,
/// and what we produced decoded again by the client format's own decoder. Path 1 is its
/// non-stream path over a stream: the events collected into one complete response.
pub fn stream_round_trip(upstream: Format, data: &[u8]) {
    let Some((&settings, stream)) = data.split_first() else {
        return;
    };
    let client = CLIENT_FORMATS[usize::from(settings % 4)];
    let Some(events) = parse_events(&pieces(settings / 8, stream), 1 << 20) else {
        return;
    };
    let mut usage = StreamUsageTracker::new(upstream);
    for event in &events {
        usage.observe(event);
    }
    let _ = usage.usage();
    fast_paths_read_alike(upstream, &events);
    if settings & 4 != 0 {
        let _ = convert::convert_collected_stream(upstream, client, stream, &context(false));
        return;
    }
    let mut transcoder = convert::StreamTranscoder::new(upstream, client, &context(true));
    let mut client_bytes = Vec::new();
    let mut failed = false;
    for event in &events {
        if transcoder.push(event, &mut client_bytes).is_err() {
            failed = true;
            break;
        }
    }
    if !failed {
        transcoder.finish(&mut client_bytes);
    }
    // What we send the client, read back by the client format's own decoder (a parser without
    // a size cap cannot fail).
    let client_events = parse_events(&[&client_bytes], usize::MAX).unwrap_or_default();
    let mut decoded = Vec::new();
    let _ = decode_stream(client, &client_events, &mut decoded);
    let _ = octopus::protocol::collect::response_from_events(&decoded);
}

/// The stream decoders' fast paths (typed reads of the common events) give the events their
/// general path (a `Value` per event) gives, wherever the general path decodes the stream; where
/// it fails, the fast path may read more, which is no difference a client could rely on.
fn fast_paths_read_alike(upstream: Format, events: &[SseEvent]) {
    let mut general = Vec::new();
    if decode_stream_by(upstream, events, &mut general, true).is_err() {
        return;
    }
    let mut fast = Vec::new();
    let fast_result = decode_stream_by(upstream, events, &mut fast, false);
    assert!(fast_result.is_ok(), "{upstream:?}: the fast path failed where the general path did not: {fast_result:?}");
    assert_eq!(fast, general, "{upstream:?}: the fast path decoded otherwise than the general path");
}

fn decode_stream(
    format: Format,
    events: &[SseEvent],
    out: &mut Vec<octopus::protocol::ir::StreamEvent>,
) -> Result<(), octopus::protocol::ir::ConvertError> {
    decode_stream_by(format, events, out, false)
}

/// Decodes `events` with `format`'s decoder, with its fast path or (`general_path_only`) without.
fn decode_stream_by(
    format: Format,
    events: &[SseEvent],
    out: &mut Vec<octopus::protocol::ir::StreamEvent>,
    general_path_only: bool,
) -> Result<(), octopus::protocol::ir::ConvertError> {
    macro_rules! run {
        ($decoder:expr) => {{
            let mut decoder = $decoder;
            if general_path_only {
                decoder = decoder.with_general_path_only();
            }
            for event in events {
                decoder.push(event, out)?;
            }
            decoder.finish(out)
        }};
    }
    match format {
        Format::OpenaiChat => run!(openai_chat::StreamDecoder::new()),
        Format::OpenaiResponses => run!(openai_responses::StreamDecoder::new()),
        Format::Anthropic => run!(anthropic::StreamDecoder::new()),
        Format::Gemini => run!(gemini::StreamDecoder::new(&meta())),
        Format::Antigravity => run!(antigravity::StreamDecoder::new(&meta())),
    }
}

/// Whether two JSON values are equal, numbers within a relative 1e-12: the text form of a float
/// may come back one unit in the last place off (serde_json parses floats fast, not exactly),
/// which is not what the round trips that use this look for.
pub fn json_close(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(left), Value::Number(right)) => match (left.as_f64(), right.as_f64()) {
            _ if left == right => true,
            (Some(left), Some(right)) => {
                (left - right).abs() <= 1e-12 * left.abs().max(right.abs())
            }
            _ => false,
        },
        (Value::Array(left), Value::Array(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .zip(right)
                    .all(|(left, right)| json_close(left, right))
        }
        (Value::Object(left), Value::Object(right)) => {
            left.len() == right.len()
                && left.iter().all(|(key, value)| {
                    right.get(key).is_some_and(|other| json_close(value, other))
                })
        }
        _ => left == right,
    }
}
