//! Recognising relay requests: which client protocol, which group (model), streaming or not.

use std::cell::OnceCell;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::http::Request;
use crate::protocol::{raw_json, Format};
use crate::relay::error::RelayError;

/// The deepest nesting of arrays and objects a call body may have: serde_json's own limit, so a
/// body refused by a full parse is refused before anything reads it.
const MAX_BODY_NESTING: usize = 128;

/// A parsed client call on one of the generation endpoints.
///
/// Only the members the relay always needs are read up front (`BodyHead`); the whole body is
/// parsed into a `Value` the first time something asks for it (`body`). A same-format
/// pass-through never does: it forwards the client's bytes with the model spliced in, and
/// building and dropping a `Value` tree was about a sixth of such a request's instructions.
#[derive(Debug)]
pub struct InboundCall {
    pub client_format: Format,
    /// The group name the client asked for.
    pub model: String,
    pub stream: bool,
    /// Gemini's `:streamGenerateContent` without `alt=sse` answers with a JSON array, not SSE.
    pub gemini_json_array: bool,
    /// `stream_options.include_usage` is `true` (OpenAI Chat clients ask for the usage chunk so).
    pub stream_usage_requested: bool,
    /// The body has a `stream_options` member at all.
    pub has_stream_options: bool,
    /// A Responses call that asks for nothing to be stored (`store: false`) and continues no
    /// earlier response (no `previous_response_id`): the response store has nothing to do
    /// with it, and needs no parse of its body to know so. Codex sends these, with the whole
    /// conversation in every body. False when unknown.
    pub stateless_responses_call: bool,
    /// The client's headers (lower-case names), for forwarding.
    pub headers: Vec<(String, String)>,
    /// The client's bytes, while the body has not been edited (see `body_mut`).
    raw_body: Option<Vec<u8>>,
    /// Where the values of the top-level `model` members are in `raw_body` (JSON keeps the last
    /// of duplicates; a pass-through rewrites them all alike), found by the parse that read the
    /// call so that the pass-through need not scan the bytes again.
    raw_model_ranges: Vec<Range<usize>>,
    parsed_body: OnceCell<Value>,
}

impl InboundCall {
    /// The body as JSON (an object), parsed on first use.
    pub fn body(&self) -> &Value {
        self.parsed_body.get_or_init(|| {
            // The bytes were checked to be a JSON object when the call was read, so this parse
            // succeeds; `Null` would only make a conversion answer 400.
            self.raw_body.as_deref().and_then(|raw| serde_json::from_slice(raw).ok()).unwrap_or(Value::Null)
        })
    }

    /// The body for editing. The client's bytes no longer stand for it afterwards.
    pub fn body_mut(&mut self) -> &mut Value {
        self.body();
        self.raw_body = None;
        self.parsed_body.get_mut().expect("the body was parsed just above")
    }

    /// The client's bytes of the body, unless the relay edited it.
    pub fn raw_body(&self) -> Option<&[u8]> {
        self.raw_body.as_deref()
    }

    /// The byte ranges of the top-level `model` values in `raw_body` (ascending), while there is
    /// one; empty when the body has no `model` member.
    pub fn raw_model_ranges(&self) -> &[Range<usize>] {
        if self.raw_body.is_some() { &self.raw_model_ranges } else { &[] }
    }

    /// A call made from a body already in hand (tests, and callers that build bodies).
    pub fn from_value(client_format: Format, model: &str, stream: bool, body: Value) -> InboundCall {
        let head = BodyHead { stream_options: body.get("stream_options").cloned(), ..BodyHead::default() };
        let mut call = InboundCall::new(client_format, model.to_string(), stream, false, HeadFacts::of(&head), None, Vec::new());
        call.parsed_body = OnceCell::from(body);
        call
    }

    fn new(
        client_format: Format,
        model: String,
        stream: bool,
        gemini_json_array: bool,
        facts: HeadFacts,
        raw_body: Option<Vec<u8>>,
        headers: Vec<(String, String)>,
    ) -> InboundCall {
        InboundCall {
            client_format,
            model,
            stream,
            gemini_json_array,
            stream_usage_requested: facts.stream_usage_requested,
            has_stream_options: facts.has_stream_options,
            stateless_responses_call: client_format == Format::OpenaiResponses && facts.stateless_responses_call,
            headers,
            // The ranges are offsets into the bytes the head was parsed from, which `raw_body` is.
            raw_model_ranges: if raw_body.is_some() { facts.raw_model_ranges } else { Vec::new() },
            raw_body,
            parsed_body: OnceCell::new(),
        }
    }
}

/// The earlier response a Responses call continues, from its `previous_response_id` member:
/// none when the member is absent, null or empty; a 400 when it is not a string.
pub fn continued_response_id(previous_response_id: Option<&Value>) -> Result<Option<&str>, RelayError> {
    match previous_response_id {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if id.is_empty() => Ok(None),
        Some(Value::String(id)) => Ok(Some(id)),
        Some(_) => Err(RelayError::InvalidRequest("previous_response_id must be a string".to_string())),
    }
}

/// What a call keeps of its body's head: owned, so the body's bytes can move into the call once
/// the head, which borrows them, is read.
struct HeadFacts {
    stream_usage_requested: bool,
    has_stream_options: bool,
    stateless_responses_call: bool,
    /// Where the top-level `model` values lie in the bytes the head was parsed from; empty for
    /// a head made up from a `Value`.
    raw_model_ranges: Vec<Range<usize>>,
}

impl HeadFacts {
    fn of(head: &BodyHead<'_>) -> HeadFacts {
        let stream_options = head.stream_options.as_ref();
        // A value that is not a string is for response_store::prepare to refuse.
        let continues_nothing = matches!(continued_response_id(head.previous_response_id.as_ref()), Ok(None));
        let raw_model_ranges = match head.parsed_from {
            Some(parsed_from) => head
                .model_values
                .iter()
                .map(|value| {
                    let start = value.get().as_ptr() as usize - parsed_from.as_ptr() as usize;
                    start..start + value.get().len()
                })
                .collect(),
            None => Vec::new(),
        };
        HeadFacts {
            stream_usage_requested: stream_options.and_then(|options| options.get("include_usage")).and_then(Value::as_bool) == Some(true),
            has_stream_options: stream_options.is_some(),
            stateless_responses_call: head.store == Some(Value::Bool(false)) && continues_nothing,
            raw_model_ranges,
        }
    }
}

/// The top-level members of a call body the relay reads before anything else. Every other
/// member is skipped without being built (it is still checked to be valid JSON). Duplicates keep
/// the last, as a full parse does.
#[derive(Debug, Default)]
struct BodyHead<'de> {
    model: Option<Value>,
    stream: Option<Value>,
    stream_options: Option<Value>,
    /// Responses' `store` and `previous_response_id`, which decide whether the response store
    /// must read the body.
    store: Option<Value>,
    previous_response_id: Option<Value>,
    /// Every top-level `model` value as written, borrowed from the parsed bytes.
    model_values: Vec<&'de RawValue>,
    /// The bytes the head was parsed from (None for a head made up from a `Value`).
    parsed_from: Option<&'de [u8]>,
    /// Whether the read already found that the body nests at most `MAX_BODY_NESTING` deep.
    nesting_checked: bool,
}

impl<'de> BodyHead<'de> {
    /// Reads the head of a body that is UTF-8. The validating scan of `raw_json` reads nearly
    /// every body; one it does not vouch for (invalid, too deep, an escaped member name, a head
    /// member serde_json refuses) is read by serde_json, which decides and names the problem.
    fn parse(body: &'de [u8]) -> serde_json::Result<BodyHead<'de>> {
        if let Some(head) = BodyHead::from_scan(body) {
            return Ok(head);
        }
        let mut head: BodyHead<'de> = serde_json::from_slice(body)?;
        head.parsed_from = Some(body);
        Ok(head)
    }

    fn from_scan(body: &'de [u8]) -> Option<BodyHead<'de>> {
        let mut head = BodyHead { parsed_from: Some(body), nesting_checked: true, ..BodyHead::default() };
        raw_json::for_each_validated_top_level_member(body, MAX_BODY_NESTING, &mut |member| {
            let value = &body[member.value];
            match &body[member.name] {
                b"model" => {
                    let raw: &'de RawValue = serde_json::from_slice(value).ok()?;
                    head.model = Some(serde_json::from_str(raw.get()).ok()?);
                    head.model_values.push(raw);
                }
                b"stream" => head.stream = Some(serde_json::from_slice(value).ok()?),
                b"stream_options" => head.stream_options = Some(serde_json::from_slice(value).ok()?),
                b"store" => head.store = Some(serde_json::from_slice(value).ok()?),
                b"previous_response_id" => head.previous_response_id = Some(serde_json::from_slice(value).ok()?),
                // An escaped name might spell one of the above.
                name if name.contains(&b'\\') => return None,
                _ => {}
            }
            Some(())
        })?;
        Some(head)
    }
}

impl<'de> Deserialize<'de> for BodyHead<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<BodyHead<'de>, D::Error> {
        deserializer.deserialize_map(BodyHeadVisitor)
    }
}

/// A top-level member name, told apart without allocating a `String` for it.
enum HeadKey {
    Model,
    Stream,
    StreamOptions,
    Store,
    PreviousResponseId,
    Other,
}

impl<'de> Deserialize<'de> for HeadKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HeadKey, D::Error> {
        deserializer.deserialize_identifier(HeadKeyVisitor)
    }
}

struct HeadKeyVisitor;

impl Visitor<'_> for HeadKeyVisitor {
    type Value = HeadKey;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<HeadKey, E> {
        Ok(match name {
            "model" => HeadKey::Model,
            "stream" => HeadKey::Stream,
            "stream_options" => HeadKey::StreamOptions,
            "store" => HeadKey::Store,
            "previous_response_id" => HeadKey::PreviousResponseId,
            _ => HeadKey::Other,
        })
    }
}

struct BodyHeadVisitor;

impl<'de> Visitor<'de> for BodyHeadVisitor {
    type Value = BodyHead<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BodyHead<'de>, A::Error> {
        let mut head = BodyHead::default();
        while let Some(key) = map.next_key::<HeadKey>()? {
            match key {
                HeadKey::Model => {
                    let raw: &'de RawValue = map.next_value()?;
                    head.model = Some(serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?);
                    head.model_values.push(raw);
                }
                HeadKey::Stream => head.stream = Some(map.next_value()?),
                HeadKey::StreamOptions => head.stream_options = Some(map.next_value()?),
                HeadKey::Store => head.store = Some(map.next_value()?),
                HeadKey::PreviousResponseId => head.previous_response_id = Some(map.next_value()?),
                HeadKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// Which relay endpoint a request targets.
pub enum RelayRoute {
    Generate(Format),
    /// `POST /v1beta/models/{model}:generateContent` or `:streamGenerateContent`.
    GeminiGenerate { model: String, stream: bool },
    /// `POST /v1beta/models/{model}:countTokens`, answered locally.
    GeminiCountTokens { model: String },
    /// `POST /v1/embeddings` (OpenAI's shape).
    Embeddings,
    ListModels,
    ListGeminiModels,
}

/// Matches a path to a relay endpoint; None when it is not a relay path.
pub fn route(method: &str, path: &str) -> Option<RelayRoute> {
    match (method, path) {
        ("POST", "/v1/chat/completions") => Some(RelayRoute::Generate(Format::OpenaiChat)),
        ("POST", "/v1/responses") => Some(RelayRoute::Generate(Format::OpenaiResponses)),
        ("POST", "/v1/messages") => Some(RelayRoute::Generate(Format::Anthropic)),
        ("GET", "/v1/models") => Some(RelayRoute::ListModels),
        ("GET", "/v1beta/models") => Some(RelayRoute::ListGeminiModels),
        ("POST", "/v1/embeddings") => Some(RelayRoute::Embeddings),
        ("POST", _) => {
            // The Google GenAI SDKs call `/v1beta/...` by default, but `/v1/...` (and `/v1alpha`)
            // when configured or with a custom base URL; all mean the same here.
            let rest = ["/v1beta/models/", "/v1/models/", "/v1alpha/models/"].iter().find_map(|prefix| path.strip_prefix(prefix))?;
            let (model, method_name) = rest.rsplit_once(':')?;
            let model = crate::util::percent_decode(model);
            match method_name {
                "generateContent" => Some(RelayRoute::GeminiGenerate { model, stream: false }),
                "streamGenerateContent" => Some(RelayRoute::GeminiGenerate { model, stream: true }),
                "countTokens" => Some(RelayRoute::GeminiCountTokens { model }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The client protocol a path belongs to, used to shape errors even for requests that fail
/// before they are understood.
pub fn format_for_path(path: &str) -> Format {
    if path.starts_with("/v1beta/") || path.starts_with("/v1alpha/") || (path.starts_with("/v1/models/") && path.contains(':')) {
        Format::Gemini
    } else if path == "/v1/messages" {
        Format::Anthropic
    } else if path == "/v1/responses" || path.starts_with("/v1/responses/") {
        Format::OpenaiResponses
    } else {
        Format::OpenaiChat
    }
}

/// Reads a generation call: its protocol, group and streaming choice, and the body's bytes and
/// headers, which move from `request` into the call when it is valid (copies were an allocation
/// for the whole conversation and two for every header, on every request).
pub fn parse_call(route: &RelayRoute, request: &mut Request) -> Result<InboundCall, RelayError> {
    // Skipped members are not decoded as text, so the bytes are checked here once.
    if let Err(error) = std::str::from_utf8(&request.body) {
        return Err(RelayError::InvalidRequest(format!("the request body is not valid JSON: it is not UTF-8 ({error})")));
    }
    let head = BodyHead::parse(&request.body).map_err(|error| {
        if error.classify() == serde_json::error::Category::Data {
            RelayError::InvalidRequest("the request body must be a JSON object".to_string())
        } else {
            RelayError::InvalidRequest(format!("the request body is not valid JSON: {error}"))
        }
    })?;
    if !head.nesting_checked && raw_json::nests_deeper_than(&request.body, MAX_BODY_NESTING) {
        return Err(RelayError::InvalidRequest(format!(
            "the request body is not valid JSON: it nests deeper than {MAX_BODY_NESTING} levels"
        )));
    }
    let (format, model, stream, gemini_json_array) = match route {
        RelayRoute::GeminiGenerate { model, stream } => {
            let gemini_json_array = *stream && request.query_param("alt").as_deref() != Some("sse");
            (Format::Gemini, model.clone(), *stream, gemini_json_array)
        }
        RelayRoute::Generate(format) => {
            let model = head
                .model
                .as_ref()
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|model| !model.is_empty())
                .ok_or_else(|| RelayError::InvalidRequest("the request must name a model (a group name)".to_string()))?
                .to_string();
            let stream = head.stream.as_ref().and_then(Value::as_bool).unwrap_or(false);
            (*format, model, stream, false)
        }
        RelayRoute::ListModels | RelayRoute::ListGeminiModels | RelayRoute::GeminiCountTokens { .. } | RelayRoute::Embeddings => {
            return Err(RelayError::Internal("this endpoint is not a generation call".to_string()));
        }
    };
    let facts = HeadFacts::of(&head);
    let body = std::mem::take(&mut request.body);
    Ok(InboundCall::new(format, model, stream, gemini_json_array, facts, Some(body), std::mem::take(&mut request.headers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw `model` values the call remembers for `raw`.
    fn model_values(raw: &str) -> Vec<&str> {
        let head = BodyHead::parse(raw.as_bytes()).expect("valid JSON");
        let call = InboundCall::new(Format::OpenaiChat, "g".to_string(), false, false, HeadFacts::of(&head), Some(raw.as_bytes().to_vec()), Vec::new());
        call.raw_model_ranges().iter().map(|range| &raw[range.clone()]).collect()
    }

    #[test]
    fn the_top_level_model_values_are_found_and_nested_ones_are_not() {
        let raw = r#" { "messages": [{"role":"user","content":"say \"model\": {x}"}], "model" : "group-a", "metadata": {"model": "keep"}, "n": 1 } "#;
        assert_eq!(model_values(raw), [r#""group-a""#]);
        assert_eq!(model_values(r#"{"model":"a","x":[1,{"y":"]"}],"model":"b"}"#), [r#""a""#, r#""b""#], "every duplicate");
        assert_eq!(model_values(r#"{"mod\u0065l":"a"}"#), [r#""a""#], "a name written with escapes");
        let kinds = r#"{"a":-1.5e3,"b":true,"c":null,"d":"\\","e":{},"f":[],"model":"m\u00e9","g":"\u00e9"}"#;
        assert_eq!(model_values(kinds), [r#""m\u00e9""#]);
        assert_eq!(model_values(r#"{"model": 5 }"#), ["5"]);
        assert!(model_values(r#"{"messages":[]}"#).is_empty());
    }

    #[test]
    fn a_responses_call_is_stateless_when_it_stores_nothing_and_continues_nothing() {
        let stateless = |format: Format, raw: &str| {
            let head = BodyHead::parse(raw.as_bytes()).expect("valid JSON");
            InboundCall::new(format, "g".to_string(), false, false, HeadFacts::of(&head), Some(raw.as_bytes().to_vec()), Vec::new())
                .stateless_responses_call
        };
        let responses = Format::OpenaiResponses;
        assert!(stateless(responses, r#"{"model":"g","store":false,"input":[{"role":"user","content":"hi"}]}"#));
        assert!(stateless(responses, r#"{"store":false,"previous_response_id":null}"#));
        assert!(stateless(responses, r#"{"previous_response_id":"","store":false}"#));
        assert!(stateless(responses, r#"{"store":true,"store":false}"#), "the last of duplicates counts");
        // Names with escapes are read by serde_json instead of the scan, to the same answer.
        assert!(stateless(responses, r#"{"st\u006fre":false}"#));
        assert!(!stateless(responses, r#"{"store":false,"previous_response_id":"resp_1"}"#));
        assert!(!stateless(responses, r#"{"store":false,"previous_response_id":7}"#), "left to prepare to refuse");
        assert!(!stateless(responses, r#"{"store":true}"#));
        assert!(!stateless(responses, r#"{"store":"false"}"#));
        assert!(!stateless(responses, r#"{"input":"hi"}"#), "store defaults to true");
        assert!(!stateless(responses, r#"{"metadata":{"store":false}}"#), "only the top level counts");
        assert!(!stateless(Format::OpenaiChat, r#"{"store":false}"#));
        assert!(!InboundCall::from_value(responses, "g", false, serde_json::json!({"store": false})).stateless_responses_call, "unknown");
    }

    #[test]
    fn an_edited_body_has_no_raw_model_ranges() {
        let raw = br#"{"model":"a"}"#;
        let head = BodyHead::parse(raw).unwrap();
        let mut call = InboundCall::new(Format::OpenaiChat, "a".to_string(), false, false, HeadFacts::of(&head), Some(raw.to_vec()), Vec::new());
        assert_eq!(call.raw_model_ranges().to_vec(), vec![Range { start: 9, end: 12 }]);
        call.body_mut()["model"] = Value::from("edited");
        assert!(call.raw_model_ranges().is_empty());
    }

    #[test]
    fn gemini_paths_carry_model_and_stream_mode() {
        match route("POST", "/v1beta/models/my-group:streamGenerateContent") {
            Some(RelayRoute::GeminiGenerate { model, stream }) => {
                assert_eq!(model, "my-group");
                assert!(stream);
            }
            _ => panic!("expected a Gemini route"),
        }
        assert!(matches!(route("POST", "/v1beta/models/a%2Fb:generateContent"), Some(RelayRoute::GeminiGenerate { model, stream: false }) if model == "a/b"));
        assert!(matches!(route("POST", "/v1beta/models/x:countTokens"), Some(RelayRoute::GeminiCountTokens { model }) if model == "x"));
        assert!(matches!(route("POST", "/v1/models/x:countTokens"), Some(RelayRoute::GeminiCountTokens { model }) if model == "x"));
        assert_eq!(format_for_path("/v1/models/x:countTokens"), Format::Gemini);
        assert!(route("POST", "/v1beta/models/x:embedContent").is_none());
        assert!(matches!(route("POST", "/v1/embeddings"), Some(RelayRoute::Embeddings)));
        assert!(matches!(route("POST", "/v1/models/g:generateContent"), Some(RelayRoute::GeminiGenerate { model, stream: false }) if model == "g"));
        assert_eq!(format_for_path("/v1/models/g:streamGenerateContent"), Format::Gemini);
        assert_eq!(format_for_path("/v1/models"), Format::OpenaiChat);
        assert!(route("GET", "/v1/chat/completions").is_none());
        assert!(matches!(route("GET", "/v1/models"), Some(RelayRoute::ListModels)));
    }
}
