//! Building the upstream request for one attempt: body (pass-through or converted), URL and headers.

use serde_json::{json, Value};

use crate::protocol::{json_writer, raw_json, Format};
use crate::relay::inbound::InboundCall;
use crate::store::entities::{Channel, ChannelType};
use crate::upstream::endpoint::auth_headers;

/// The wire format a channel type speaks.
pub fn channel_format(channel_type: ChannelType) -> Format {
    match channel_type {
        ChannelType::OpenaiChat => Format::OpenaiChat,
        ChannelType::OpenaiResponses => Format::OpenaiResponses,
        ChannelType::Anthropic => Format::Anthropic,
        ChannelType::Gemini => Format::Gemini,
        ChannelType::Antigravity => Format::Antigravity,
    }
}

/// Client headers that must never travel upstream: hop-by-hop headers, the client's own
/// credentials, and headers the upstream client computes itself.
const DROPPED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "cookie",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// When formats differ, only these client headers are meaningful upstream.
const CONVERSION_HEADERS: &[&str] = &["user-agent", "accept-language"];

/// The headers of an upstream request: filtered client headers, then the channel's auth, then
/// the channel's custom headers (applied last so an admin can override anything).
pub fn upstream_headers(
    client_headers: &[(String, String)],
    same_format: bool,
    channel: &Channel,
    credential: &str,
    stream: bool,
) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = client_headers
        .iter()
        .filter(|(name, _)| {
            if same_format {
                !DROPPED_HEADERS.contains(&name.as_str())
            } else {
                CONVERSION_HEADERS.contains(&name.as_str())
            }
        })
        .cloned()
        .collect();
    for (name, value) in auth_headers(channel.channel_type, credential) {
        set_header(&mut headers, &name, &value, same_format);
    }
    set_header(&mut headers, "content-type", "application/json", false);
    if stream {
        set_header(&mut headers, "accept", "text/event-stream", false);
    }
    for (name, value) in &channel.headers {
        set_header(&mut headers, &name.to_ascii_lowercase(), value, false);
    }
    headers
}

/// Sets a header, replacing any of the same name; with `keep_existing`, a value the client
/// already sent (e.g. its own `anthropic-version`) wins.
fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: &str, keep_existing: bool) {
    if let Some(existing) = headers.iter_mut().find(|(header_name, _)| header_name.eq_ignore_ascii_case(name)) {
        if !keep_existing || name == "authorization" || name == "x-api-key" || name == "x-goog-api-key" {
            existing.1 = value.to_string();
        }
        return;
    }
    headers.push((name.to_string(), value.to_string()));
}

/// Same-format pass-through: the body with only the model rewritten. For OpenAI Chat streams
/// `stream_options.include_usage` is forced on so usage can always be counted; the returned
/// flag says whether the client asked for it itself (if not, the usage chunk is stripped).
///
/// The common cases splice the new model into the client's bytes; anything unusual (an edited
/// body, no `model` member, `stream_options` present without `include_usage: true`) edits the
/// parsed body instead. Re-serialising the whole request was the largest cost of a pass-through.
pub fn pass_through_body(format: Format, call: &InboundCall, upstream_model: &str) -> (Vec<u8>, bool) {
    let client_wants_usage = format != Format::OpenaiChat || !call.stream || call.stream_usage_requested;
    if let Some(bytes) = call.raw_body().and_then(|raw| splice_pass_through(format, call, raw, upstream_model, client_wants_usage)) {
        return (bytes, client_wants_usage);
    }
    let mut body = call.body().clone();
    match format {
        Format::Gemini | Format::Antigravity => {}
        _ => body["model"] = Value::String(upstream_model.to_string()),
    }
    if !client_wants_usage {
        match body.get_mut("stream_options").and_then(Value::as_object_mut) {
            Some(options) => {
                options.insert("include_usage".to_string(), Value::Bool(true));
            }
            None => body["stream_options"] = json!({"include_usage": true}),
        }
    }
    (json_writer::to_vec(&body).unwrap_or_default(), client_wants_usage)
}

/// `pass_through_body` on the client's bytes, or `None` when only the parsed body can do it.
fn splice_pass_through(format: Format, call: &InboundCall, raw: &[u8], upstream_model: &str, client_wants_usage: bool) -> Option<Vec<u8>> {
    let mut bytes = match format {
        // Gemini names the model in the path: the body goes as it came.
        Format::Gemini | Format::Antigravity => raw.to_vec(),
        _ => {
            // Found while the call was read, escaped member names included.
            let ranges = call.raw_model_ranges();
            if ranges.is_empty() {
                return None;
            }
            let model = serde_json::to_vec(upstream_model).ok()?;
            raw_json::replace_ranges(raw, ranges, &model)
        }
    };
    if !client_wants_usage {
        // Only the common case splices: no `stream_options` at all.
        if call.has_stream_options {
            return None;
        }
        bytes = raw_json::append_member(&bytes, br#""stream_options":{"include_usage":true}"#)?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn channel(channel_type: ChannelType, custom: &[(&str, &str)]) -> Channel {
        Channel {
            id: 1,
            name: "c".to_string(),
            channel_type,
            enabled: true,
            base_urls: vec!["http://127.0.0.1:1".to_string()],
            keys: Vec::new(),
            models: Vec::new(),
            headers: custom.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect::<BTreeMap<_, _>>(),
            proxy: String::new(),
            auto_sync: false,
            match_regex: String::new(),
            auto_group: crate::store::entities::AutoGroup::None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    fn value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(header_name, _)| header_name == name).map(|(_, value)| value.as_str())
    }

    #[test]
    fn pass_through_keeps_betas_drops_client_auth_and_hop_by_hop() {
        let client = headers(&[
            ("authorization", "Bearer sk-octopus-client"),
            ("x-api-key", "sk-octopus-client"),
            ("anthropic-beta", "tools-2024"),
            ("anthropic-version", "2023-01-01"),
            ("connection", "keep-alive"),
            ("content-length", "12"),
            ("x-stainless-lang", "js"),
        ]);
        let built = upstream_headers(&client, true, &channel(ChannelType::Anthropic, &[("x-custom", "1")]), "sk-ant-real", false);
        assert_eq!(value(&built, "x-api-key"), Some("sk-ant-real"));
        assert_eq!(value(&built, "authorization"), None);
        assert_eq!(value(&built, "anthropic-beta"), Some("tools-2024"));
        assert_eq!(value(&built, "anthropic-version"), Some("2023-01-01"), "the client's version wins in pass-through");
        assert_eq!(value(&built, "x-stainless-lang"), Some("js"));
        assert_eq!(value(&built, "connection"), None);
        assert_eq!(value(&built, "content-length"), None);
        assert_eq!(value(&built, "x-custom"), Some("1"));
    }

    #[test]
    fn custom_headers_apply_last_and_conversion_forwards_little() {
        let client = headers(&[("openai-beta", "assistants=v2"), ("user-agent", "sdk/1")]);
        let built = upstream_headers(&client, false, &channel(ChannelType::OpenaiChat, &[("Authorization", "Bearer override")]), "sk-real", true);
        assert_eq!(value(&built, "authorization"), Some("Bearer override"));
        assert_eq!(value(&built, "openai-beta"), None);
        assert_eq!(value(&built, "user-agent"), Some("sdk/1"));
        assert_eq!(value(&built, "accept"), Some("text/event-stream"));
    }

    #[test]
    fn chat_streams_force_include_usage_and_remember_the_client_choice() {
        let body = json!({"model": "group", "stream": true, "messages": []});
        let (bytes, wanted) = pass_through_body(Format::OpenaiChat, &InboundCall::from_value(Format::OpenaiChat, "group", true, body), "gpt-real");
        let sent: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(sent["model"], "gpt-real");
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert!(!wanted);
        let body = json!({"model": "group", "stream": true, "stream_options": {"include_usage": true}});
        assert!(pass_through_body(Format::OpenaiChat, &InboundCall::from_value(Format::OpenaiChat, "group", true, body), "m").1);
        let gemini = json!({"contents": []});
        let (bytes, _) = pass_through_body(Format::Gemini, &InboundCall::from_value(Format::Gemini, "group", true, gemini.clone()), "gemini-real");
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), gemini);
    }

    /// The spliced bytes must mean exactly what the `Value` path produces, for every case the
    /// splice takes and every case it hands back.
    #[test]
    fn splicing_the_raw_body_means_the_same_as_editing_the_value() {
        let cases = [
            (Format::OpenaiChat, false, r#"{"model":"group","messages":[{"role":"user","content":"hi \"model\""}]}"#),
            (Format::OpenaiChat, true, r#"{"model":"group","stream":true,"messages":[]}"#),
            (Format::OpenaiChat, true, r#"{"model":"group","stream":true,"stream_options":{"include_usage":true}}"#),
            (Format::OpenaiChat, true, r#"{"model":"group","stream":true,"stream_options":{"include_usage":false}}"#),
            (Format::OpenaiChat, true, r#"{"model":"group","stream":true,"stream_options":{}}"#),
            (Format::Anthropic, true, r#" {"system":"s","model" : "group","model":"dup","max_tokens":5} "#),
            (Format::OpenaiResponses, false, r#"{"mod\u0065l":"group","input":"x"}"#),
            (Format::Gemini, true, r#"{"contents":[{"parts":[{"text":"x"}]}]}"#),
        ];
        for (format, stream, raw) in cases {
            let body: Value = serde_json::from_str(raw).unwrap();
            let (spliced, spliced_wants) = pass_through_body(format, &read_call(format, raw, stream), "real-model");
            let (edited, edited_wants) = pass_through_body(format, &InboundCall::from_value(format, "group", stream, body), "real-model");
            assert_eq!(spliced_wants, edited_wants, "{raw}");
            assert_eq!(serde_json::from_slice::<Value>(&spliced).unwrap(), serde_json::from_slice::<Value>(&edited).unwrap(), "{raw}");
        }
        // The common case really is spliced: the client's own spacing survives.
        let raw = r#"{ "model" :  "group",  "messages": [] }"#;
        let (bytes, _) = pass_through_body(Format::OpenaiChat, &read_call(Format::OpenaiChat, raw, false), "m2");
        assert_eq!(String::from_utf8(bytes).unwrap(), r#"{ "model" :  "m2",  "messages": [] }"#);
    }

    /// Every client body of the converter fixtures (OpenAI Chat, Responses and Anthropic), read
    /// as a call and passed through, means the same spliced as edited.
    #[test]
    fn every_fixture_body_means_the_same_spliced_as_edited() {
        let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol/testdata");
        let mut checked = 0;
        for directory in std::fs::read_dir(&testdata).unwrap() {
            let directory = directory.unwrap().path();
            let name = directory.file_name().unwrap().to_string_lossy().into_owned();
            let format = match name.strip_prefix("request_").and_then(|rest| rest.split('_').next()) {
                Some("chat") => Format::OpenaiChat,
                Some("anthropic") => Format::Anthropic,
                Some("responses") => Format::OpenaiResponses,
                _ => continue,
            };
            for file in std::fs::read_dir(&directory).unwrap() {
                let path = file.unwrap().path();
                if !path.to_string_lossy().ends_with(".in.json") {
                    continue;
                }
                let raw = std::fs::read_to_string(&path).unwrap();
                let body: Value = serde_json::from_str(&raw).unwrap();
                if body.get("model").and_then(Value::as_str).is_none_or(|model| model.trim().is_empty()) {
                    continue;
                }
                // As written, and streamed when the fixture does not say (a streamed Chat call
                // without stream_options is the case that appends a member).
                let mut variants = vec![raw.clone()];
                if body.get("stream").is_none() {
                    let streamed = raw_json::append_member(raw.as_bytes(), br#""stream":true"#).unwrap();
                    variants.push(String::from_utf8(streamed).unwrap());
                }
                for raw in variants {
                    let body: Value = serde_json::from_str(&raw).unwrap();
                    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
                    let (spliced, spliced_wants) = pass_through_body(format, &read_call(format, &raw, stream), "real-model");
                    let (edited, edited_wants) =
                        pass_through_body(format, &InboundCall::from_value(format, "group", stream, body), "real-model");
                    assert_eq!(spliced_wants, edited_wants, "{}", path.display());
                    let spliced: Value = serde_json::from_slice(&spliced).unwrap();
                    assert_eq!(spliced, serde_json::from_slice::<Value>(&edited).unwrap(), "{}", path.display());
                    assert_eq!(spliced["model"], "real-model", "{}", path.display());
                    checked += 1;
                }
            }
        }
        assert!(checked >= 100, "only {checked} fixture bodies were checked");
    }

    /// The call the relay reads from a client sending `raw` in `format`.
    fn read_call(format: Format, raw: &str, stream: bool) -> InboundCall {
        let (path, route) = match format {
            Format::Gemini => (
                if stream { "/v1beta/models/group:streamGenerateContent?alt=sse" } else { "/v1beta/models/group:generateContent" },
                crate::relay::inbound::RelayRoute::GeminiGenerate { model: "group".to_string(), stream },
            ),
            _ => ("/v1/x", crate::relay::inbound::RelayRoute::Generate(format)),
        };
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let mut request = crate::http::Request {
            method: "POST".to_string(),
            path: path.to_string(),
            query: query.to_string(),
            headers: Vec::new(),
            body: raw.as_bytes().to_vec(),
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            client: crate::http::ClientProbe::detached(),
        };
        crate::relay::inbound::parse_call(&route, &mut request).expect("the test body is a valid call")
    }
}
