//! The single plug-in point for the relay: convert request bodies, response bodies and streams
//! between any client format and any upstream format through the IR.
//!
//! When the client and the upstream speak the same format nothing is converted: requests only get
//! the upstream model name, and responses and stream events pass through byte for byte.

use serde_json::Value;

use crate::protocol::Format;
use crate::protocol::ir::{
    ConvertError, Media, MediaSource, Part, Request, Response, ResponseMeta, StreamEvent, WriteOptions,
};
use crate::protocol::sse::SseEvent;
use crate::protocol::usage::{Usage, usage_from_response_body};
use crate::protocol::{anthropic, antigravity, custom_tools, gemini, json_writer, openai_chat, openai_responses, typed_read};

/// What a conversion needs to know besides the bodies. Ids and times come from the caller, which
/// keeps conversion free of clocks and randomness.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ConvertContext {
    /// The model name the upstream knows; written into converted requests.
    pub upstream_model: String,
    /// The request is streamed.
    pub stream: bool,
    /// Used when the upstream format requires a token limit and the client set none.
    pub default_max_tokens: u32,
    /// The client-facing response id when the upstream supplies none.
    pub response_id: String,
    /// The client-facing creation time.
    pub created_unix: i64,
    /// The client asked for usage in its stream (Chat `stream_options.include_usage`; see
    /// [`client_wants_stream_usage`]). Other client formats always get usage.
    pub include_usage: bool,
    /// The Antigravity account's Google Cloud project, for the request envelope.
    pub antigravity_project: String,
    /// A unique id for the upstream request (Antigravity's `requestId`); may be empty.
    pub request_id: String,
    /// The client's OpenAI Responses `custom` tools by name ([`client_custom_tools`]), whose
    /// calls the answer must give back as `custom_tool_call`s.
    pub custom_tools: Vec<String>,
}

/// Whether the client's request asks for usage in the stream: Chat only sends it when
/// `stream_options.include_usage` is true; the other formats always report usage.
pub fn client_wants_stream_usage(client: Format, body: &Value) -> bool {
    match client {
        Format::OpenaiChat => body["stream_options"]["include_usage"].as_bool() == Some(true),
        _ => true,
    }
}

/// The names of the client's OpenAI Responses `custom` tools, for [`ConvertContext::custom_tools`];
/// other client formats have none.
pub fn client_custom_tools(client: Format, body: &Value) -> Vec<String> {
    match client {
        Format::OpenaiResponses => custom_tools::custom_tool_names(body),
        _ => Vec::new(),
    }
}

/// Formats whose request, response and stream converters through the IR exist.
fn has_converters(format: Format) -> bool {
    matches!(
        format,
        Format::OpenaiChat
            | Format::OpenaiResponses
            | Format::Anthropic
            | Format::Gemini
            | Format::Antigravity
    )
}

/// Whether requests in `client` format can be served by an `upstream` channel: the same format
/// (pass-through) or two formats that both convert through the IR.
pub fn supports(client: Format, upstream: Format) -> bool {
    client == upstream || (has_converters(client) && has_converters(upstream))
}

/// Converts a client request body into the upstream's request body.
pub fn convert_request(
    client: Format,
    upstream: Format,
    body: &Value,
    context: &ConvertContext,
) -> Result<Vec<u8>, ConvertError> {
    if client == upstream {
        let mut body = body.clone();
        if let Some(object) = body.as_object_mut()
            && matches!(
                upstream,
                Format::OpenaiChat | Format::OpenaiResponses | Format::Anthropic
            )
        {
            object.insert("model".into(), context.upstream_model.clone().into());
        }
        return Ok(json_writer::to_vec(&body).expect("a JSON value always serialises into memory"));
    }
    convert_request_with_media(client, upstream, ClientBody::Parsed(body), context, &mut |_| Err(String::new()), false)
}

/// A client's request body as the relay holds it: parsed as JSON, or the bytes the client sent
/// (while nothing has edited them) with the function that parses them, which only runs when
/// something needs the `Value`. Converting from the bytes skips the `Value` tree for the formats
/// `typed_read` handles.
#[derive(Clone, Copy)]
pub enum ClientBody<'body> {
    Parsed(&'body Value),
    Bytes { bytes: &'body [u8], parse: &'body dyn Fn() -> &'body Value },
}

impl<'body> ClientBody<'body> {
    /// The body as JSON, parsed now if it was not yet.
    pub fn value(&self) -> &'body Value {
        match self {
            ClientBody::Parsed(body) => body,
            ClientBody::Bytes { parse, .. } => parse(),
        }
    }
}

/// Fetches the bytes behind an image URL as `(media type, base64 data)`. The relay injects it, so
/// this module stays free of IO.
pub type MediaFetcher<'a> = dyn FnMut(&str) -> Result<(String, String), String> + 'a;

/// Whether an upstream format needs image URLs downloaded and sent inline: Antigravity takes
/// no URLs (Gemini's public API accepts https URLs as `fileData`, so they are left to it).
pub fn needs_inline_images(upstream: Format) -> bool {
    upstream == Format::Antigravity
}

/// `convert_request`, with every http(s) image URL in the conversation replaced by its bytes
/// (through `fetch`) when `inline_images` is set. A failed download is a ConvertError naming
/// the image, so the client learns which URL could not be used.
pub fn convert_request_with_media(
    client: Format,
    upstream: Format,
    body: ClientBody,
    context: &ConvertContext,
    fetch: &mut MediaFetcher,
    inline_images: bool,
) -> Result<Vec<u8>, ConvertError> {
    if client == upstream {
        return convert_request(client, upstream, body.value(), context);
    }
    let typed = match body {
        ClientBody::Bytes { bytes, .. } => typed_read::read_request(client, bytes),
        ClientBody::Parsed(_) => None,
    };
    let mut request = match typed {
        Some(request) => request,
        None => parse_request(client, body.value())?,
    };
    if inline_images {
        inline_image_urls(&mut request, fetch)?;
    }
    let options = WriteOptions {
        upstream_model: context.upstream_model.clone(),
        default_max_tokens: context.default_max_tokens,
        stream: context.stream,
        antigravity_project: context.antigravity_project.clone(),
        request_id: context.request_id.clone(),
    };
    // The converted body is about as long as the client's: most of both is the conversation.
    let expected_length = match body {
        ClientBody::Bytes { bytes, .. } => bytes.len() + bytes.len() / 8,
        ClientBody::Parsed(_) => 0,
    };
    write_request(upstream, &request, &options, expected_length)
}

fn inline_image_urls(request: &mut Request, fetch: &mut MediaFetcher) -> Result<(), ConvertError> {
    for (message_index, message) in request.messages.iter_mut().enumerate() {
        for (part_index, part) in message.parts.iter_mut().enumerate() {
            let path = format!("messages[{message_index}].content[{part_index}]");
            match part {
                Part::Image(media) => inline_one(media, fetch, &path)?,
                Part::ToolResult(result) => {
                    for (inner_index, inner) in result.content.iter_mut().enumerate() {
                        if let Part::Image(media) = inner {
                            inline_one(media, fetch, &format!("{path}.content[{inner_index}]"))?;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn inline_one(media: &mut Media, fetch: &mut MediaFetcher, path: &str) -> Result<(), ConvertError> {
    let MediaSource::Url(url) = &media.source else { return Ok(()) };
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Ok(());
    }
    let (media_type, data) =
        fetch(url).map_err(|problem| ConvertError::new(path, format!("the image {url} could not be used: {problem}")))?;
    media.source = MediaSource::Base64 { media_type, data };
    Ok(())
}

/// Converts a complete upstream response body into the client's response body.
pub fn convert_response(
    upstream: Format,
    client: Format,
    body: &[u8],
    context: &ConvertContext,
) -> Result<Vec<u8>, ConvertError> {
    convert_response_and_usage(upstream, client, body, context).map(|(converted, _)| converted)
}

/// Converts a complete upstream response body into the client's response body, and returns the
/// usage the upstream reported, normalized as `usage_from_response_body` would read it from the
/// same body: the relay bills from it rather than parsing the answer a second time.
pub fn convert_response_and_usage(
    upstream: Format,
    client: Format,
    body: &[u8],
    context: &ConvertContext,
) -> Result<(Vec<u8>, Option<Usage>), ConvertError> {
    if client == upstream {
        return Ok((body.to_vec(), usage_from_response_body(upstream, body)));
    }
    let meta = response_meta(context);
    let response = match typed_read::read_response(upstream, body, &meta) {
        Some(response) => response,
        None => {
            let value: Value = serde_json::from_slice(body).map_err(|error| {
                ConvertError::new("", format!("upstream response is not JSON: {error}"))
            })?;
            parse_response(upstream, &value, &meta)?
        }
    };
    Ok((write_response(client, &response, &meta)?, response.usage))
}

/// Converts an upstream event stream into the client's event stream, one event at a time.
pub struct StreamTranscoder {
    decoder: Decoder,
    encoder: Encoder,
    events: Vec<StreamEvent>,
}

enum Decoder {
    PassThrough,
    OpenaiChat(openai_chat::StreamDecoder),
    OpenaiResponses(openai_responses::StreamDecoder),
    Anthropic(anthropic::StreamDecoder),
    Gemini(gemini::StreamDecoder),
    Antigravity(antigravity::StreamDecoder),
}

impl Decoder {
    /// The IR decoder for an upstream format's event stream.
    fn new(upstream: Format, meta: &ResponseMeta) -> Decoder {
        match upstream {
            Format::OpenaiChat => Decoder::OpenaiChat(openai_chat::StreamDecoder::new()),
            Format::OpenaiResponses => Decoder::OpenaiResponses(openai_responses::StreamDecoder::new()),
            Format::Anthropic => Decoder::Anthropic(anthropic::StreamDecoder::new()),
            Format::Gemini => Decoder::Gemini(gemini::StreamDecoder::new(meta)),
            Format::Antigravity => Decoder::Antigravity(antigravity::StreamDecoder::new(meta)),
        }
    }

    fn push(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), ConvertError> {
        match self {
            Decoder::PassThrough => Ok(()),
            Decoder::OpenaiChat(decoder) => decoder.push(event, out),
            Decoder::OpenaiResponses(decoder) => decoder.push(event, out),
            Decoder::Anthropic(decoder) => decoder.push(event, out),
            Decoder::Gemini(decoder) => decoder.push(event, out),
            Decoder::Antigravity(decoder) => decoder.push(event, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ConvertError> {
        match self {
            Decoder::PassThrough => Ok(()),
            Decoder::OpenaiChat(decoder) => decoder.finish(out),
            Decoder::OpenaiResponses(decoder) => decoder.finish(out),
            Decoder::Anthropic(decoder) => decoder.finish(out),
            Decoder::Gemini(decoder) => decoder.finish(out),
            Decoder::Antigravity(decoder) => decoder.finish(out),
        }
    }
}

/// Whether non-stream requests to this upstream are sent as streams and assembled: Antigravity
/// serves every model on its streaming endpoint (the non-stream one fails for some).
pub fn collects_non_stream_from_stream(upstream: Format) -> bool {
    upstream == Format::Antigravity
}

/// Converts a whole upstream event stream, already read, into the client's complete response.
pub fn convert_collected_stream(
    upstream: Format,
    client: Format,
    body: &[u8],
    context: &ConvertContext,
) -> Result<Vec<u8>, ConvertError> {
    let mut parser = crate::protocol::sse::SseParser::new(usize::MAX);
    let mut sse_events = Vec::new();
    parser
        .push(body, &mut sse_events)
        .and_then(|_| parser.finish(&mut sse_events))
        .map_err(|error| ConvertError::new("", format!("the upstream stream is malformed: {error}")))?;
    let meta = response_meta(context);
    let mut decoder = Decoder::new(upstream, &meta);
    let mut events = Vec::new();
    for event in &sse_events {
        decoder.push(event, &mut events)?;
    }
    decoder.finish(&mut events)?;
    let response = crate::protocol::collect::response_from_events(&events)?;
    write_response(client, &response, &meta)
}

enum Encoder {
    PassThrough,
    OpenaiChat(openai_chat::StreamEncoder),
    OpenaiResponses(openai_responses::StreamEncoder),
    Anthropic(anthropic::StreamEncoder),
    Gemini(gemini::StreamEncoder),
    Unsupported(Format),
}

impl StreamTranscoder {
    /// A transcoder from `upstream` events to `client` bytes. Formats that are not implemented
    /// yet make every `push` fail with a `ConvertError`.
    pub fn new(upstream: Format, client: Format, context: &ConvertContext) -> StreamTranscoder {
        if upstream == client {
            return StreamTranscoder {
                decoder: Decoder::PassThrough,
                encoder: Encoder::PassThrough,
                events: Vec::new(),
            };
        }
        let meta = response_meta(context);
        let decoder = Decoder::new(upstream, &meta);
        let encoder = match client {
            Format::OpenaiChat => Encoder::OpenaiChat(openai_chat::StreamEncoder::new(
                &meta,
                context.include_usage,
            )),
            Format::OpenaiResponses => {
                Encoder::OpenaiResponses(openai_responses::StreamEncoder::new(&meta))
            }
            Format::Anthropic => Encoder::Anthropic(anthropic::StreamEncoder::new(&meta)),
            Format::Gemini => Encoder::Gemini(gemini::StreamEncoder::new(&meta)),
            other => Encoder::Unsupported(other),
        };
        StreamTranscoder {
            decoder,
            encoder,
            events: Vec::new(),
        }
    }

    /// Converts one upstream event, appending the client's bytes to `out`.
    pub fn push(&mut self, event: &SseEvent, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        self.events.clear();
        if let Decoder::PassThrough = self.decoder {
            out.extend_from_slice(&event.raw);
            return Ok(());
        }
        self.decoder.push(event, &mut self.events)?;
        self.encode_pending(out)
    }

    /// Ends the stream: flushes the decoder (a cut-off upstream becomes an error event) and
    /// writes the client format's closing events.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.events.clear();
        if let Decoder::PassThrough = self.decoder {
            return;
        }
        let flushed = self.decoder.finish(&mut self.events);
        if flushed.is_err() || self.encode_pending(out).is_err() {
            return;
        }
        match &mut self.encoder {
            Encoder::OpenaiChat(encoder) => encoder.finish(out),
            Encoder::OpenaiResponses(encoder) => encoder.finish(out),
            Encoder::Anthropic(encoder) => encoder.finish(out),
            Encoder::Gemini(encoder) => encoder.finish(out),
            Encoder::PassThrough | Encoder::Unsupported(_) => {}
        }
    }

    fn encode_pending(&mut self, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        match &mut self.encoder {
            Encoder::OpenaiChat(encoder) => {
                for event in &self.events {
                    encoder.encode(event, out);
                }
            }
            Encoder::OpenaiResponses(encoder) => {
                for event in &self.events {
                    encoder.encode(event, out);
                }
            }
            Encoder::Anthropic(encoder) => {
                for event in &self.events {
                    encoder.encode(event, out);
                }
            }
            Encoder::Gemini(encoder) => {
                for event in &self.events {
                    encoder.encode(event, out);
                }
            }
            Encoder::PassThrough => {}
            Encoder::Unsupported(format) => return Err(not_implemented(*format)),
        }
        Ok(())
    }
}

fn response_meta(context: &ConvertContext) -> ResponseMeta {
    ResponseMeta {
        id: context.response_id.clone(),
        model: context.upstream_model.clone(),
        created_unix: context.created_unix,
        custom_tools: context.custom_tools.clone(),
    }
}

fn not_implemented(format: Format) -> ConvertError {
    ConvertError::new(
        "",
        format!(
            "conversion for format {} is not implemented yet",
            format.as_str()
        ),
    )
}

fn parse_request(format: Format, body: &Value) -> Result<Request, ConvertError> {
    match format {
        Format::OpenaiChat => openai_chat::parse_request(body),
        Format::OpenaiResponses => openai_responses::parse_request(body),
        Format::Anthropic => anthropic::parse_request(body),
        Format::Gemini => gemini::parse_request(body),
        other => Err(not_implemented(other)),
    }
}

/// The upstream's request body as bytes.
fn write_request(
    format: Format,
    request: &Request,
    options: &WriteOptions,
    expected_length: usize,
) -> Result<Vec<u8>, ConvertError> {
    Ok(match format {
        Format::OpenaiChat => body_bytes(&openai_chat::write_request(request, options)?, expected_length),
        Format::OpenaiResponses => body_bytes(&openai_responses::write_request(request, options)?, expected_length),
        Format::Anthropic => body_bytes(&anthropic::write_request(request, options)?, expected_length),
        Format::Gemini => body_bytes(&gemini::write_request(request, options)?, expected_length),
        Format::Antigravity => body_bytes(&antigravity::write_request(request, options)?, expected_length),
    })
}

/// A written body's bytes, in a buffer sized for `expected_length` (at least the writer's
/// default); serialising into memory cannot fail for these types (string keys, finite numbers).
fn body_bytes(body: &impl serde::Serialize, expected_length: usize) -> Vec<u8> {
    json_writer::to_vec_sized(body, expected_length.max(256)).expect("a written body always serialises into memory")
}

/// Gemini and Antigravity name the calls they return after `meta.id`, since they send no ids.
fn parse_response(
    format: Format,
    body: &Value,
    meta: &ResponseMeta,
) -> Result<Response, ConvertError> {
    match format {
        Format::OpenaiChat => openai_chat::parse_response(body),
        Format::OpenaiResponses => openai_responses::parse_response(body),
        Format::Anthropic => anthropic::parse_response(body),
        Format::Gemini => gemini::parse_response(body, meta),
        Format::Antigravity => antigravity::parse_response(body, meta),
    }
}

/// The client's response body as bytes.
fn write_response(
    format: Format,
    response: &Response,
    meta: &ResponseMeta,
) -> Result<Vec<u8>, ConvertError> {
    Ok(match format {
        Format::OpenaiChat => body_bytes(&openai_chat::write_response(response, meta), 0),
        Format::OpenaiResponses => body_bytes(&openai_responses::write_response(response, meta), 0),
        Format::Anthropic => body_bytes(&anthropic::write_response(response, meta), 0),
        Format::Gemini => body_bytes(&gemini::write_response(response, meta), 0),
        other => return Err(not_implemented(other)),
    })
}

#[cfg(test)]
mod tests {
    //! Data-driven conversion tests. Each lane folder under `src/protocol/testdata` is named
    //! `<kind>_<from>_to_<to>` (kind: request, response or stream) and holds `<case>.in.json` and
    //! `<case>.out.json` pairs, one feature per case. `UPDATE_FIXTURES=1` rewrites the expected
    //! files from the current output; review the diff before committing it.
    //!
    //! An input may be `{"$fixture": "<provider file>", "$pointer": "/json/pointer"}` to use a
    //! recorded body from the shared fixtures, and a stream input is
    //! `{"$fixture": "<stream file>"}` or `{"events": [{"event": name, "data": json}]}`, plus an
    //! optional `"include_usage"`. A response or stream input may name the client's Responses
    //! custom tools with `"$custom_tools": [names]`, whose calls are then written as custom tool
    //! calls. A failed conversion is written as `{"convert_error": {...}}`.
    //! A request input may name the upstream model with `"$upstream_model"` (removed before the
    //! conversion) when the output depends on it (Gemini 3, Claude on Antigravity).

    use std::path::{Path, PathBuf};

    use serde_json::{Value, json};

    use crate::protocol::Format;
    use crate::protocol::convert::{
        ClientBody, ConvertContext, StreamTranscoder, client_wants_stream_usage, convert_request,
        convert_request_with_media, convert_response, convert_response_and_usage, parse_request, parse_response,
        response_meta,
    };
    use crate::protocol::usage::usage_from_response_body;
    use crate::protocol::ir::ConvertError;
    use crate::protocol::ir::{Part, ReasoningEffort, Request, Role, WriteOptions};
    use crate::protocol::sse::{SseEvent, SseParser, encode_event};
    use crate::protocol::testkit;
    use crate::protocol::{anthropic, gemini, openai_chat, openai_responses, typed_read};

    fn testdata_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/protocol/testdata")
    }

    fn format_named(name: &str) -> Format {
        match name {
            "chat" => Format::OpenaiChat,
            "responses" => Format::OpenaiResponses,
            "anthropic" => Format::Anthropic,
            "gemini" => Format::Gemini,
            "antigravity" => Format::Antigravity,
            other => panic!("unknown format {other} in a lane name"),
        }
    }

    /// `request_chat_to_anthropic` -> ("request", chat, anthropic).
    fn parse_lane(lane: &str) -> (&str, Format, Format) {
        let (kind, rest) = lane.split_once('_').expect("lane kind");
        let (from, to) = rest.split_once("_to_").expect("lane formats");
        (kind, format_named(from), format_named(to))
    }

    fn context(stream: bool, include_usage: bool) -> ConvertContext {
        ConvertContext {
            upstream_model: "upstream-model".to_string(),
            stream,
            default_max_tokens: 4096,
            response_id: "resp_test".to_string(),
            created_unix: 1_700_000_000,
            include_usage,
            antigravity_project: "test-project".to_string(),
            request_id: "agent-test".to_string(),
            custom_tools: Vec::new(),
        }
    }

    fn read_json(path: &Path) -> Value {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    /// Replaces a `$fixture` reference with the recorded JSON it points at.
    fn resolve_input(input: Value) -> Value {
        let Some(file) = input.get("$fixture").and_then(Value::as_str) else {
            return input;
        };
        let recorded = testkit::provider_json(file);
        let pointer = input.get("$pointer").and_then(Value::as_str).unwrap_or("");
        recorded
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{file} has nothing at {pointer}"))
            .clone()
    }

    fn error_output(error: crate::protocol::ir::ConvertError) -> Value {
        json!({"convert_error": {"path": error.path, "message": error.message}})
    }

    /// The upstream stream bytes a stream case replays.
    fn stream_input(input: &Value) -> Vec<u8> {
        if let Some(file) = input.get("$fixture").and_then(Value::as_str) {
            return testkit::stream_bytes(file);
        }
        let mut bytes = Vec::new();
        for event in input["events"].as_array().expect("events") {
            let data = match &event["data"] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            bytes.extend(encode_event(event["event"].as_str(), &data));
        }
        bytes
    }

    fn parse_stream(bytes: &[u8]) -> Vec<SseEvent> {
        let mut parser = SseParser::new(1 << 20);
        let mut events = Vec::new();
        parser.push(bytes, &mut events).expect("stream parses");
        parser.finish(&mut events).expect("stream parses");
        events
    }

    /// Client stream bytes as a readable list of events with parsed JSON data.
    fn describe_stream(bytes: &[u8]) -> Value {
        let events: Vec<Value> = parse_stream(bytes)
            .into_iter()
            .map(|event| {
                let data = serde_json::from_str(&event.data).unwrap_or(Value::String(event.data));
                match event.event {
                    Some(name) => json!({"event": name, "data": data}),
                    None => json!({"data": data}),
                }
            })
            .collect();
        Value::Array(events)
    }

    fn run_case(lane: &str, input: Value) -> Value {
        let (kind, from, to) = parse_lane(lane);
        match kind {
            "request" => {
                let mut body = resolve_input(input);
                let upstream_model = body
                    .as_object_mut()
                    .and_then(|object| object.remove("$upstream_model"));
                let stream = body["stream"].as_bool() == Some(true);
                let mut context = context(stream, client_wants_stream_usage(from, &body));
                if let Some(Value::String(model)) = upstream_model {
                    context.upstream_model = model;
                }
                // From the bytes, as the relay converts: the typed reader where it can, the
                // `Value` reader for the rest and for every error.
                let bytes = serde_json::to_vec(&body).expect("serialises");
                let parse = || &body;
                let converted = convert_request_with_media(
                    from,
                    to,
                    ClientBody::Bytes { bytes: &bytes, parse: &parse },
                    &context,
                    &mut |_| Err(String::new()),
                    false,
                );
                match converted {
                    Ok(bytes) => serde_json::from_slice(&bytes).expect("written request is JSON"),
                    Err(error) => error_output(error),
                }
            }
            "response" => {
                let mut body = resolve_input(input);
                let mut context = context(false, false);
                context.custom_tools = take_custom_tools(&mut body);
                let body = body.to_string();
                match convert_response_and_usage(from, to, body.as_bytes(), &context) {
                    Ok((bytes, usage)) => {
                        // The relay bills from the usage the conversion read; it must be what
                        // the usage reader finds in the same body.
                        assert_eq!(usage, usage_from_response_body(from, body.as_bytes()), "usage of {from:?} → {to:?}");
                        serde_json::from_slice(&bytes).expect("written response is JSON")
                    }
                    Err(error) => error_output(error),
                }
            }
            "stream" => {
                let include_usage = input["include_usage"].as_bool().unwrap_or(false);
                let mut context = context(true, include_usage);
                context.custom_tools = take_custom_tools(&mut input.clone());
                let mut transcoder = StreamTranscoder::new(from, to, &context);
                let mut out = Vec::new();
                for event in parse_stream(&stream_input(&input)) {
                    if let Err(error) = transcoder.push(&event, &mut out) {
                        return error_output(error);
                    }
                }
                transcoder.finish(&mut out);
                describe_stream(&out)
            }
            other => panic!("unknown lane kind {other}"),
        }
    }

    /// Removes `"$custom_tools"` (the names of the client's Responses custom tools, which a
    /// response or stream case needs to know) from a case input.
    fn take_custom_tools(input: &mut Value) -> Vec<String> {
        let Some(Value::Array(names)) = input
            .as_object_mut()
            .and_then(|object| object.remove("$custom_tools"))
        else {
            return Vec::new();
        };
        names
            .iter()
            .map(|name| name.as_str().expect("custom tool names are strings").to_string())
            .collect()
    }

    /// Checks one case against its expected output; returns a description of any mismatch.
    fn check(lane: &str, case: &str) -> Option<String> {
        let folder = testdata_dir().join(lane);
        let input = read_json(&folder.join(format!("{case}.in.json")));
        let actual = run_case(lane, input);
        let expected_path = folder.join(format!("{case}.out.json"));
        let expected = expected_path.exists().then(|| read_json(&expected_path));
        if expected.as_ref() == Some(&actual) {
            return None;
        }
        let pretty = serde_json::to_string_pretty(&actual).unwrap() + "\n";
        if std::env::var_os("UPDATE_FIXTURES").is_some() {
            std::fs::write(&expected_path, pretty).expect("write expected output");
            return None;
        }
        Some(format!(
            "{lane}/{case}: output differs from {}:\n{pretty}",
            expected_path.display()
        ))
    }

    fn cases(lane: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(testdata_dir().join(lane))
            .expect("lane folder")
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().to_string_lossy().to_string();
                name.strip_suffix(".in.json").map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }

    fn check_lane(lane: &str) {
        let names = cases(lane);
        assert!(!names.is_empty(), "lane {lane} has no cases");
        let failures: Vec<String> = names.iter().filter_map(|case| check(lane, case)).collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_lane_folder_is_tested() {
        let mut lanes: Vec<String> = std::fs::read_dir(testdata_dir())
            .expect("testdata folder")
            .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        lanes.sort();
        assert_eq!(
            lanes,
            [
                "request_anthropic_to_anthropic",
                "request_anthropic_to_antigravity",
                "request_anthropic_to_chat",
                "request_anthropic_to_gemini",
                "request_anthropic_to_responses",
                "request_chat_to_anthropic",
                "request_chat_to_antigravity",
                "request_chat_to_chat",
                "request_chat_to_gemini",
                "request_chat_to_responses",
                "request_gemini_to_anthropic",
                "request_gemini_to_chat",
                "request_gemini_to_gemini",
                "request_responses_to_anthropic",
                "request_responses_to_chat",
                "request_responses_to_gemini",
                "request_responses_to_responses",
                "response_anthropic_to_chat",
                "response_anthropic_to_responses",
                "response_antigravity_to_chat",
                "response_chat_to_anthropic",
                "response_chat_to_gemini",
                "response_chat_to_responses",
                "response_gemini_to_anthropic",
                "response_gemini_to_chat",
                "response_responses_to_chat",
                "stream_anthropic_to_chat",
                "stream_anthropic_to_gemini",
                "stream_anthropic_to_responses",
                "stream_antigravity_to_chat",
                "stream_chat_to_anthropic",
                "stream_chat_to_gemini",
                "stream_chat_to_responses",
                "stream_gemini_to_anthropic",
                "stream_gemini_to_chat",
                "stream_responses_to_anthropic",
                "stream_responses_to_chat",
            ]
        );
    }

    #[test]
    fn request_chat_to_anthropic() {
        check_lane("request_chat_to_anthropic");
    }

    #[test]
    fn request_anthropic_to_chat() {
        check_lane("request_anthropic_to_chat");
    }

    /// Same-format lanes pass the body through; these cases show that nothing the relay reads
    /// first rejects or rewrites what current clients send.
    #[test]
    fn request_anthropic_to_anthropic() {
        check_lane("request_anthropic_to_anthropic");
    }

    #[test]
    fn request_chat_to_chat() {
        check_lane("request_chat_to_chat");
    }

    #[test]
    fn request_responses_to_responses() {
        check_lane("request_responses_to_responses");
    }

    #[test]
    fn request_gemini_to_gemini() {
        check_lane("request_gemini_to_gemini");
    }

    #[test]
    fn request_anthropic_to_antigravity() {
        check_lane("request_anthropic_to_antigravity");
    }

    #[test]
    fn response_anthropic_to_chat() {
        check_lane("response_anthropic_to_chat");
    }

    #[test]
    fn response_chat_to_anthropic() {
        check_lane("response_chat_to_anthropic");
    }

    #[test]
    fn stream_anthropic_to_chat() {
        check_lane("stream_anthropic_to_chat");
    }

    #[test]
    fn stream_chat_to_anthropic() {
        check_lane("stream_chat_to_anthropic");
    }

    #[test]
    fn request_chat_to_responses() {
        check_lane("request_chat_to_responses");
    }

    #[test]
    fn request_responses_to_chat() {
        check_lane("request_responses_to_chat");
    }

    #[test]
    fn request_responses_to_anthropic() {
        check_lane("request_responses_to_anthropic");
    }

    #[test]
    fn request_responses_to_gemini() {
        check_lane("request_responses_to_gemini");
    }

    #[test]
    fn request_anthropic_to_responses() {
        check_lane("request_anthropic_to_responses");
    }

    #[test]
    fn response_responses_to_chat() {
        check_lane("response_responses_to_chat");
    }

    #[test]
    fn response_chat_to_responses() {
        check_lane("response_chat_to_responses");
    }

    #[test]
    fn response_anthropic_to_responses() {
        check_lane("response_anthropic_to_responses");
    }

    #[test]
    fn stream_responses_to_chat() {
        check_lane("stream_responses_to_chat");
    }

    #[test]
    fn stream_chat_to_responses() {
        check_lane("stream_chat_to_responses");
    }

    #[test]
    fn stream_anthropic_to_responses() {
        check_lane("stream_anthropic_to_responses");
    }

    #[test]
    fn stream_responses_to_anthropic() {
        check_lane("stream_responses_to_anthropic");
    }

    #[test]
    fn request_chat_to_gemini() {
        check_lane("request_chat_to_gemini");
    }

    #[test]
    fn request_anthropic_to_gemini() {
        check_lane("request_anthropic_to_gemini");
    }

    #[test]
    fn request_gemini_to_chat() {
        check_lane("request_gemini_to_chat");
    }

    #[test]
    fn request_gemini_to_anthropic() {
        check_lane("request_gemini_to_anthropic");
    }

    #[test]
    fn request_chat_to_antigravity() {
        check_lane("request_chat_to_antigravity");
    }

    #[test]
    fn response_gemini_to_chat() {
        check_lane("response_gemini_to_chat");
    }

    #[test]
    fn response_gemini_to_anthropic() {
        check_lane("response_gemini_to_anthropic");
    }

    #[test]
    fn response_chat_to_gemini() {
        check_lane("response_chat_to_gemini");
    }

    #[test]
    fn response_antigravity_to_chat() {
        check_lane("response_antigravity_to_chat");
    }

    #[test]
    fn stream_gemini_to_chat() {
        check_lane("stream_gemini_to_chat");
    }

    #[test]
    fn stream_gemini_to_anthropic() {
        check_lane("stream_gemini_to_anthropic");
    }

    #[test]
    fn stream_chat_to_gemini() {
        check_lane("stream_chat_to_gemini");
    }

    #[test]
    fn stream_anthropic_to_gemini() {
        check_lane("stream_anthropic_to_gemini");
    }

    #[test]
    fn stream_antigravity_to_chat() {
        check_lane("stream_antigravity_to_chat");
    }

    #[test]
    fn same_format_requests_only_get_the_upstream_model() {
        let body = json!({"model": "my-group", "messages": [], "custom_field": {"kept": true}});
        let converted = convert_request(
            Format::OpenaiChat,
            Format::OpenaiChat,
            &body,
            &context(false, false),
        )
        .unwrap();
        let converted: Value = serde_json::from_slice(&converted).unwrap();
        assert_eq!(converted["model"], "upstream-model");
        assert_eq!(converted["custom_field"], body["custom_field"]);
    }

    #[test]
    fn same_format_responses_and_streams_pass_through_byte_for_byte() {
        let body = testkit::provider_file("anthropic-messages/text-response.json");
        let context = context(true, false);
        assert_eq!(
            convert_response(Format::Anthropic, Format::Anthropic, &body, &context).unwrap(),
            body
        );
        let stream =
            testkit::stream_bytes("anthropic-messages/cassette-tool-use-stream-roundtrip.json#0");
        let mut transcoder = StreamTranscoder::new(Format::Anthropic, Format::Anthropic, &context);
        let mut out = Vec::new();
        for event in parse_stream(&stream) {
            transcoder.push(&event, &mut out).unwrap();
        }
        transcoder.finish(&mut out);
        assert_eq!(out, stream);
    }

    #[test]
    fn formats_not_implemented_yet_fail_with_a_convert_error() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let context = context(false, false);
        // No client speaks Antigravity, so it has no request parser and no stream encoder.
        let error =
            convert_request(Format::Antigravity, Format::OpenaiChat, &body, &context).unwrap_err();
        assert_eq!(
            error.message,
            "conversion for format antigravity is not implemented yet"
        );
        let chat_body = testkit::provider_file("openai-chat/text-response.json");
        let error = convert_response(
            Format::OpenaiChat,
            Format::Antigravity,
            &chat_body,
            &context,
        )
        .unwrap_err();
        assert_eq!(
            error.message,
            "conversion for format antigravity is not implemented yet"
        );
        let mut transcoder =
            StreamTranscoder::new(Format::OpenaiChat, Format::Antigravity, &context);
        let event = SseEvent {
            data: "{}".to_string(),
            ..SseEvent::default()
        };
        assert!(transcoder.push(&event, &mut Vec::new()).is_err());
        let mut out = Vec::new();
        transcoder.finish(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn stream_usage_is_opt_in_only_for_chat_clients() {
        let asked = json!({"stream": true, "stream_options": {"include_usage": true}});
        let silent = json!({"stream": true});
        assert!(client_wants_stream_usage(Format::OpenaiChat, &asked));
        assert!(!client_wants_stream_usage(Format::OpenaiChat, &silent));
        assert!(client_wants_stream_usage(Format::Anthropic, &silent));
    }

    #[test]
    fn a_response_that_is_not_json_is_an_error() {
        let error = convert_response(
            Format::Anthropic,
            Format::OpenaiChat,
            b"<html>",
            &context(false, false),
        )
        .unwrap_err();
        assert!(error.message.starts_with("upstream response is not JSON"));
    }

    /// Parts of a request that a format cannot carry, removed before comparing round trips.
    fn without_known_losses(format: Format, mut request: Request) -> Request {
        request.model.clear();
        // A call without arguments is written as `{}`, which means the same.
        for message in &mut request.messages {
            for part in &mut message.parts {
                if let Part::ToolCall(call) = part
                    && call.arguments.trim().is_empty()
                {
                    call.arguments = "{}".to_string();
                }
            }
        }
        match format {
            Format::OpenaiChat => {
                // Chat requests are written with `system` for developer messages, without
                // reasoning history and without metadata, and always ask for stream usage.
                for message in &mut request.messages {
                    if message.role == Role::Developer {
                        message.role = Role::System;
                    }
                    message
                        .parts
                        .retain(|part| !matches!(part, Part::Reasoning(_)));
                }
                request.metadata = None;
                request.include_usage = request.stream;
            }
            Format::Anthropic => {
                // Anthropic has one system prompt, so system messages come back as one.
                let system: Vec<Part> = request
                    .messages
                    .iter()
                    .filter(|message| message.role == Role::System)
                    .flat_map(|message| message.parts.clone())
                    .collect();
                request
                    .messages
                    .retain(|message| message.role != Role::System);
                if !system.is_empty() {
                    request
                        .messages
                        .insert(0, crate::protocol::ir::Message::new(Role::System, system));
                }
                request.include_usage = false;
                // Thinking is left off when the last assistant turn called tools without an
                // Anthropic-signed thinking block (Claude Code sends such histories).
                let last_assistant = request
                    .messages
                    .iter()
                    .rev()
                    .find(|message| message.role == Role::Assistant);
                let calls_tools_unsigned = last_assistant.is_some_and(|message| {
                    message.parts.iter().any(|part| matches!(part, Part::ToolCall(_)))
                        && !message.parts.iter().any(|part| matches!(part, Part::Reasoning(_)))
                });
                if calls_tools_unsigned {
                    request.reasoning = None;
                }
                // Adaptive thinking (an effort) is written as the budget that effort stands for.
                if let Some(reasoning) = &mut request.reasoning
                    && reasoning.budget_tokens.is_none()
                {
                    let budget = match reasoning.effort {
                        Some(ReasoningEffort::Minimal | ReasoningEffort::Low) => Some(1024),
                        Some(ReasoningEffort::Medium) => Some(2048),
                        Some(ReasoningEffort::High) => Some(4096),
                        Some(ReasoningEffort::XHigh) => Some(8192),
                        Some(ReasoningEffort::None) | None => None,
                    };
                    if budget.is_some() {
                        reasoning.effort = None;
                        reasoning.budget_tokens = budget;
                    }
                }
            }
            Format::OpenaiResponses => openai_responses_known_losses(&mut request),
            Format::Gemini => {
                // Consecutive turns of one role are merged into one content.
                let mut merged: Vec<crate::protocol::ir::Message> = Vec::new();
                for message in request.messages.drain(..) {
                    match merged.last_mut() {
                        Some(last) if last.role == message.role => last.parts.extend(message.parts),
                        _ => merged.push(message),
                    }
                }
                request.messages = merged;
                // Gemini gets no call ids and the parser names calls by position, so ids are
                // compared by order of first appearance. History without signatures gets the
                // bypass value on its calls.
                let mut renamed = std::collections::HashMap::new();
                let mut rename = |id: &mut String| {
                    let next = format!("id{}", renamed.len());
                    *id = renamed.entry(id.clone()).or_insert(next).clone();
                };
                for part in request
                    .messages
                    .iter_mut()
                    .flat_map(|message| &mut message.parts)
                {
                    match part {
                        Part::ToolCall(call) => {
                            rename(&mut call.id);
                            if call.signature.as_ref().is_some_and(|signature| {
                                signature.value == gemini::SIGNATURE_BYPASS
                            }) {
                                call.signature = None;
                            }
                        }
                        Part::ToolResult(result) => rename(&mut result.call_id),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        request
    }

    /// What a Responses request loses when it is written back (see openai_responses.rs).
    fn openai_responses_known_losses(request: &mut Request) {
        use crate::protocol::ir::ReasoningEffort;
        for tool in &mut request.tools {
            tool.strict = tool.strict.or(Some(false));
        }
        request.max_tokens = request.max_tokens.map(|limit| limit.max(16));
        request.reasoning = request
            .reasoning
            .take()
            .filter(|config| match config.effort {
                Some(effort) => effort != ReasoningEffort::None,
                None => config.summary.is_some(),
            })
            .map(|mut config| {
                config.summary = config.summary.or(Some("auto".to_string()));
                config
            });
        for message in &mut request.messages {
            if matches!(message.role, Role::System | Role::Developer) {
                let text = crate::protocol::ir::hoisted_system_parts(std::slice::from_ref(message))
                    .iter()
                    .map(|part| part.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n\n");
                message.parts = vec![Part::text(text)];
            }
            // Only reasoning that OpenAI encrypted can be handed back to it.
            message.parts.retain(|part| match part {
                Part::Reasoning(reasoning) => reasoning
                    .signature
                    .as_ref()
                    .is_some_and(|signature| signature.provider == Format::OpenaiResponses),
                _ => true,
            });
            with_media_defaults(&mut message.parts);
        }
    }

    /// Responses spells out an image's `detail` and an inline file's name.
    fn with_media_defaults(parts: &mut [Part]) {
        use crate::protocol::ir::MediaSource;
        for part in parts {
            match part {
                Part::Image(media) => {
                    media.detail = media.detail.take().or(Some("auto".to_string()));
                }
                Part::Document(media) if matches!(media.source, MediaSource::Base64 { .. }) => {
                    media.filename = media.filename.take().or(Some("document.pdf".to_string()));
                }
                Part::ToolResult(result) => with_media_defaults(&mut result.content),
                _ => {}
            }
        }
    }

    /// Wherever a typed reader reads a request fixture, it reads it as the format's `Value` reader
    /// does; and it reads most of them, so the relay's fast path is the one the fixtures pin.
    #[test]
    fn typed_readers_read_requests_as_the_value_readers_do() {
        for (prefix, format) in [("request_chat_to_", Format::OpenaiChat), ("request_anthropic_to_", Format::Anthropic)] {
            check_typed_reader(prefix, |bytes| typed_read::read_request(format, bytes), |body| parse_request(format, body));
        }
    }

    /// The same for the answers of Chat, Anthropic and Gemini upstreams.
    #[test]
    fn typed_readers_read_responses_as_the_value_readers_do() {
        let meta = response_meta(&context(false, false));
        for (prefix, format) in [
            ("response_chat_to_", Format::OpenaiChat),
            ("response_anthropic_to_", Format::Anthropic),
            ("response_gemini_to_", Format::Gemini),
        ] {
            check_typed_reader(prefix, |bytes| typed_read::read_response(format, bytes, &meta), |body| parse_response(format, body, &meta));
        }
    }

    /// Reads every fixture input of the lanes starting with `prefix` both ways: the typed reader
    /// must agree wherever it reads one, and must read at least four in five.
    fn check_typed_reader<T: PartialEq + std::fmt::Debug>(
        prefix: &str,
        read_typed: impl Fn(&[u8]) -> Option<T>,
        read_value: impl Fn(&Value) -> Result<T, ConvertError>,
    ) {
        let mut lanes: Vec<String> = std::fs::read_dir(testdata_dir())
            .expect("testdata")
            .filter_map(|entry| entry.ok()?.file_name().to_str().map(str::to_string))
            .filter(|lane| lane.starts_with(prefix))
            .collect();
        lanes.sort();
        assert!(!lanes.is_empty(), "no lanes start with {prefix}");
        let (mut typed_cases, mut value_cases) = (0, Vec::new());
        for lane in &lanes {
            for case in cases(lane) {
                let mut body = resolve_input(read_json(&testdata_dir().join(lane).join(format!("{case}.in.json"))));
                take_custom_tools(&mut body);
                let bytes = serde_json::to_vec(&body).expect("serialises");
                let by_value = read_value(&body);
                match read_typed(&bytes) {
                    Some(typed) => {
                        assert_eq!(by_value, Ok(typed), "{lane}/{case}");
                        typed_cases += 1;
                    }
                    None => {
                        let outcome = by_value.map_or_else(|error| error.to_string(), |_| "read".to_string());
                        value_cases.push(format!("{lane}/{case}: {outcome}"));
                    }
                }
            }
        }
        // The cases left to the `Value` reader are its errors and what the typed reader does not
        // model; they must stay the few.
        assert!(
            typed_cases >= 4 * value_cases.len(),
            "{prefix}: {typed_cases} cases read typed, {} left to the Value reader: {value_cases:#?}",
            value_cases.len()
        );
    }

    /// Format -> IR -> same format -> IR keeps the meaning of every request fixture.
    #[test]
    fn requests_round_trip_through_their_own_format() {
        let mut checked = 0;
        for (lane, format) in [
            ("request_chat_to_anthropic", Format::OpenaiChat),
            ("request_anthropic_to_chat", Format::Anthropic),
            ("request_responses_to_chat", Format::OpenaiResponses),
            ("request_responses_to_anthropic", Format::OpenaiResponses),
            ("request_gemini_to_chat", Format::Gemini),
            ("request_gemini_to_anthropic", Format::Gemini),
        ] {
            for case in cases(lane) {
                let mut body = resolve_input(read_json(
                    &testdata_dir().join(lane).join(format!("{case}.in.json")),
                ));
                let upstream_model = body
                    .as_object_mut()
                    .and_then(|object| object.remove("$upstream_model"));
                let parse = |body: &Value| match format {
                    Format::OpenaiChat => openai_chat::parse_request(body),
                    Format::OpenaiResponses => openai_responses::parse_request(body),
                    Format::Gemini => gemini::parse_request(body),
                    _ => anthropic::parse_request(body),
                };
                let Ok(first) = parse(&body) else { continue };
                // A Gemini body names no model; thinking levels only survive on Gemini 3.
                let default_model = match format {
                    Format::Gemini => "gemini-3-pro-preview".to_string(),
                    _ => first.model.clone(),
                };
                let options = WriteOptions {
                    upstream_model: match upstream_model {
                        Some(Value::String(model)) => model,
                        _ => default_model,
                    },
                    default_max_tokens: 4096,
                    stream: first.stream,
                    ..WriteOptions::default()
                };
                let written = match format {
                    Format::OpenaiChat => openai_chat::write_request(&first, &options)
                        .map(|body| serde_json::to_value(body).expect("serialises")),
                    Format::OpenaiResponses => openai_responses::write_request(&first, &options)
                        .map(|body| serde_json::to_value(body).expect("serialises")),
                    Format::Gemini => gemini::write_request(&first, &options)
                        .map(|body| serde_json::to_value(body).expect("serialises")),
                    _ => anthropic::write_request(&first, &options)
                        .map(|body| serde_json::to_value(body).expect("serialises")),
                };
                let Ok(written) = written else { continue };
                let second = parse(&written).unwrap_or_else(|error| {
                    panic!("{lane}/{case}: the written request does not parse: {error}")
                });
                let mut expected = without_known_losses(format, first);
                let actual = without_known_losses(format, second);
                if format == Format::Anthropic {
                    // The writer always sets max_tokens; the client may have left it out.
                    expected.max_tokens = actual.max_tokens;
                }
                assert_eq!(actual, expected, "{lane}/{case}");
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} requests were round-tripped");
    }
}
