//! Reading request and response bodies straight from their bytes into the IR, without a
//! `serde_json::Value` tree in between: the fast path of the converted lanes.
//!
//! Building a `Value` tree of the client's body, walking it into the IR and dropping it was the
//! largest cost of a converted request (about a fifth of its instructions). The readers here
//! deserialise borrowing structs shaped like the format and build the IR from them.
//!
//! The contract that keeps them safe: a typed reader returns `None` for any body it does not
//! model exactly (a missing required member, a member of an unexpected type, a value it does not
//! know), and the format's `Value` reader then reads the body and names the problem. So the typed
//! readers never decide an error, and wherever they return `Some` their IR must equal the
//! `Value` reader's. The tests below check that on every request fixture, and the request and
//! response fuzz targets (`fuzz/src/lib.rs`) on arbitrary bodies. Two traps the fuzzing found and
//! `read_body` and `JsonObject` close: serde_json skips unread members without checking that
//! they are UTF-8, and serde's derived structs also accept arrays. One leniency stays, on purpose:
//! a member the typed reader skips may hold JSON that a `Value` cannot (a lone surrogate escape, a
//! number beyond `f64`), which the `Value` reader refuses as a whole body and the typed reader
//! reads, as a pass-through would have forwarded it.
//!
//! With debug logging on, the typed readers step aside: the `Value` readers log each member they
//! drop, and keeping that in one place is worth more than speed while debugging.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::protocol::Format;
use crate::protocol::ir::{Request, Response, ResponseMeta};

pub mod anthropic;
pub mod gemini;
pub mod openai_chat;

/// Reads a request of `format` from its bytes, or `None` when the `Value` reader must.
pub fn read_request(format: Format, body: &[u8]) -> Option<Request> {
    if log::log_enabled!(log::Level::Debug) {
        return None;
    }
    match format {
        Format::OpenaiChat => openai_chat::read_request(body),
        Format::Anthropic => anthropic::read_request(body),
        _ => None,
    }
}

/// Reads an upstream's response body of `format` from its bytes, or `None` when the `Value`
/// reader must. `meta` names the calls an answer leaves without an id, as the `Value` reader does.
pub fn read_response(format: Format, body: &[u8], meta: &ResponseMeta) -> Option<Response> {
    if log::log_enabled!(log::Level::Debug) {
        return None;
    }
    match format {
        Format::OpenaiChat => openai_chat::read_response(body),
        Format::Anthropic => anthropic::read_response(body),
        Format::Gemini => gemini::read_response(body, meta),
        _ => None,
    }
}

/// Deserialises a body's top level, which must be a JSON object, from bytes that must be UTF-8.
///
/// serde_json skips the members nobody asked for without checking that their strings are UTF-8,
/// so the whole body is checked first: the `Value` readers refuse such a body, and so must this.
pub(super) fn read_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    let text = std::str::from_utf8(body).ok()?;
    serde_json::from_str::<JsonObject<T>>(text).ok().map(|JsonObject(value)| value)
}

/// A `T` read only from a JSON object. Serde's derived structs also accept an array of their
/// members in order, which no format allows and the `Value` readers refuse, so every struct a
/// typed reader reads is wrapped in this.
pub(super) struct JsonObject<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct JsonObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for JsonObjectVisitor<T> {
            type Value = JsonObject<T>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, members: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(members)).map(JsonObject)
            }
        }

        deserializer.deserialize_map(JsonObjectVisitor(PhantomData))
    }
}

/// A member that is either a string or an array of `Item`s (message content in most formats).
pub(super) enum TextOrList<Item> {
    Text(String),
    List(Vec<Item>),
}

impl<'de, Item: Deserialize<'de>> Deserialize<'de> for TextOrList<Item> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextOrListVisitor<Item>(PhantomData<Item>);

        impl<'de, Item: Deserialize<'de>> Visitor<'de> for TextOrListVisitor<Item> {
            type Value = TextOrList<Item>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a string or an array")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(TextOrList::Text(text.to_string()))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(TextOrList::Text(text))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(items.size_hint().unwrap_or(0));
                while let Some(item) = items.next_element()? {
                    list.push(item);
                }
                Ok(TextOrList::List(list))
            }
        }

        deserializer.deserialize_any(TextOrListVisitor(PhantomData))
    }
}

/// Reads an optional string member, borrowed from the input where it holds no escape. serde
/// borrows only a bare `Cow<str>` field marked `borrow`: inside an `Option` the `Cow` is always
/// owned, which copied every text these readers meant to borrow. For
/// `#[serde(borrow, default, deserialize_with = "optional_borrowed_str")]` on an
/// `Option<Cow<str>>` field; `default` keeps a missing member `None`.
pub(super) fn optional_borrowed_str<'de: 'a, 'a, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    struct BorrowedStr<'a>(Cow<'a, str>);

    impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct BorrowedStrVisitor<'a>(PhantomData<&'a ()>);

            impl<'de: 'a, 'a> Visitor<'de> for BorrowedStrVisitor<'a> {
                type Value = BorrowedStr<'a>;

                fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                    formatter.write_str("a string")
                }

                fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                    Ok(BorrowedStr(Cow::Borrowed(text)))
                }

                fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                    Ok(BorrowedStr(Cow::Owned(text.to_string())))
                }

                fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Self::Value, E> {
                    Ok(BorrowedStr(Cow::Owned(text)))
                }
            }

            deserializer.deserialize_str(BorrowedStrVisitor(PhantomData))
        }
    }

    Ok(Option::<BorrowedStr<'a>>::deserialize(deserializer)?.map(|BorrowedStr(text)| text))
}

/// A member that is either a string or an object (Chat's `image_url`, sent both ways).
pub(super) enum TextOrObject<'a, Object> {
    Text(Cow<'a, str>),
    Object(Object),
}

impl<'de: 'a, 'a, Object: Deserialize<'de>> Deserialize<'de> for TextOrObject<'a, Object> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextOrObjectVisitor<'a, Object>(PhantomData<(&'a (), Object)>);

        impl<'de: 'a, 'a, Object: Deserialize<'de>> Visitor<'de> for TextOrObjectVisitor<'a, Object> {
            type Value = TextOrObject<'a, Object>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a string or an object")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(TextOrObject::Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(TextOrObject::Text(Cow::Owned(text.to_string())))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(TextOrObject::Text(Cow::Owned(text)))
            }

            fn visit_map<A: MapAccess<'de>>(self, members: A) -> Result<Self::Value, A::Error> {
                Object::deserialize(MapAccessDeserializer::new(members)).map(TextOrObject::Object)
            }
        }

        deserializer.deserialize_any(TextOrObjectVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::protocol::convert::{ClientBody, ConvertContext, convert_request_with_media};
    use crate::protocol::ir::Part;
    use crate::protocol::typed_read::read_request;
    use crate::protocol::{Format, anthropic, openai_chat};

    fn by_value(format: Format, body: &Value) -> crate::protocol::ir::Request {
        match format {
            Format::OpenaiChat => openai_chat::parse_request(body),
            _ => anthropic::parse_request(body),
        }
        .expect("the Value reader reads it")
    }

    #[test]
    fn escaped_and_plain_strings_read_alike() {
        let body = json!({
            "model": "m\u{e9}",
            "messages": [
                {"role": "system", "content": "line one\nline \"two\" \u{1F600}"},
                {"role": "user", "content": [
                    {"type": "text", "text": "tab\there"},
                    {"type": "image_url", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a\u{2028}b.png", "detail": "low"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"b": 1, "a": [2]}}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "done"}
            ],
            "stop": ["\n\n"],
            "reasoning_effort": "low"
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let typed = read_request(Format::OpenaiChat, &bytes).expect("read typed");
        assert_eq!(typed, by_value(Format::OpenaiChat, &body));
        assert!(
            matches!(&typed.messages[3].parts[..], [Part::ToolResult(result)] if result.name.as_deref() == Some("f")),
            "the tool result names the function of its call: {:?}",
            typed.messages[3]
        );
    }

    /// Gemini answers: what the typed reader reads equals the `Value` reader's reading, and the
    /// shapes it does not model are left to that reader.
    #[test]
    fn gemini_answers_read_alike_or_are_left_to_the_value_reader() {
        use crate::protocol::gemini;
        use crate::protocol::ir::ResponseMeta;
        use crate::protocol::typed_read::read_response;
        let meta = ResponseMeta { id: "resp_7".to_string(), model: "m".to_string(), created_unix: 0, custom_tools: Vec::new() };
        let read_alike = [
            // Text with a signature, a thought, and two calls without ids (numbered alike).
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Let me look.", "thoughtSignature": "c2ln"},
                {"text": "pondering", "thought": true},
                {"functionCall": {"name": "a", "args": {"z": 1, "y": [true]}}},
                {"functionCall": {"id": "", "name": "b"}, "thought_signature": "c2lnMg=="}
            ]}, "finishReason": "STOP", "index": 0, "safetyRatings": []}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "thoughtsTokenCount": 2},
                "modelVersion": "gemini-2.5-flash", "responseId": "r1"}),
            // protobuf JSON's snake_case spelling, and the candidate with index 0 not first.
            json!({"candidates": [{"index": 1, "content": {"parts": [{"text": "second"}]}},
                {"index": 0, "content": {"parts": [{"text": "first"}]}, "finish_reason": "MAX_TOKENS"}],
                "usage_metadata": {"prompt_token_count": 1}, "model_version": "v"}),
            json!({"candidates": [{"content": null, "finishReason": "SAFETY"}]}),
        ];
        for body in &read_alike {
            let bytes = serde_json::to_vec(body).unwrap();
            let typed = read_response(Format::Gemini, &bytes, &meta).unwrap_or_else(|| panic!("read typed: {body}"));
            assert_eq!(Ok(typed), gemini::parse_response(body, &meta), "{body}");
        }
        let left = [
            r#"{"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}}]}"#,
            r#"{"candidates": [{"content": {"parts": [{"executableCode": {"code": "1"}}]}}]}"#,
            r#"{"promptFeedback": {"blockReason": "SAFETY"}}"#,
            r#"{"candidates": [], "promptFeedback": {"blockReason": "SAFETY"}}"#,
            r#"{"candidates": [{"finishReason": "STOP", "finish_reason": "MAX_TOKENS"}]}"#,
            r#"{"candidates": [{"index": "0", "content": {"parts": [{"text": "hi"}]}}]}"#,
            r#"{"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}"#,
            r#"{"candidates": [["not", "an", "object"]]}"#,
        ];
        for body in left {
            assert_eq!(read_response(Format::Gemini, body.as_bytes(), &meta), None, "{body}");
        }
    }

    /// Usage objects are read by the same structs as `usage_from_value` reads a parsed one: odd
    /// counts (strings, floats, nulls, negatives) read alike, and a usage that is no object
    /// leaves the whole body to the `Value` reader, which then reports no usage.
    #[test]
    fn usage_objects_read_alike_in_every_shape() {
        use crate::protocol::ir::ResponseMeta;
        use crate::protocol::typed_read::read_response;
        use crate::protocol::{gemini, openai_chat};
        let meta = ResponseMeta { id: "resp_7".to_string(), model: "m".to_string(), created_unix: 0, custom_tools: Vec::new() };
        let usages = [
            json!({"prompt_tokens": "12", "completion_tokens": 3.7, "prompt_tokens_details": null,
                "completion_tokens_details": {"reasoning_tokens": -4}, "prompt_cache_hit_tokens": 5}),
            json!({"input_tokens": 7, "output_tokens": null, "cache_read_input_tokens": "2",
                "cache_creation_input_tokens": 1e3, "service_tier": "standard"}),
            json!({"promptTokenCount": 3, "toolUsePromptTokenCount": "4", "candidatesTokenCount": 2,
                "thoughtsTokenCount": 1, "cachedContentTokenCount": null}),
            json!({}),
            json!(null),
            json!(["not", "an", "object"]),
            json!("12"),
        ];
        for usage in usages {
            let bodies = [
                (Format::OpenaiChat, json!({"id": "c", "model": "m", "choices": [{"index": 0,
                    "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], "usage": usage})),
                (Format::Anthropic, json!({"id": "msg", "model": "m", "content": [{"type": "text", "text": "hi"}],
                    "stop_reason": "end_turn", "usage": usage})),
                (Format::Gemini, json!({"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
                    "usageMetadata": usage})),
            ];
            for (format, body) in bodies {
                let by_value = match format {
                    Format::OpenaiChat => openai_chat::parse_response(&body),
                    Format::Anthropic => anthropic::parse_response(&body),
                    _ => gemini::parse_response(&body, &meta),
                }
                .expect("the Value reader reads it");
                match read_response(format, &serde_json::to_vec(&body).unwrap(), &meta) {
                    Some(typed) => assert_eq!(typed, by_value, "{body}"),
                    None => assert!(!usage.is_object() && !usage.is_null() && by_value.usage.is_none(), "left over: {body}"),
                }
            }
        }
    }

    #[test]
    fn bodies_it_does_not_model_are_left_to_the_value_reader() {
        let left = [
            (Format::OpenaiChat, r#"{"messages": [{"role": "user", "content": 5}]}"#),
            (Format::OpenaiChat, r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#),
            (Format::OpenaiChat, r#"{"model": "a", "model": "b", "messages": []}"#),
            (Format::OpenaiChat, r#"{"messages": [], "reasoning_effort": "enormous"}"#),
            (Format::OpenaiChat, r#"{"model": "m"}"#),
            (Format::OpenaiChat, r#"["not", "an", "object"]"#),
            (Format::Anthropic, r#"{"messages": [{"role": "user", "content": [{"type": "search_result", "title": "t", "source": "s", "content": []}]}]}"#),
            (Format::Anthropic, r#"{"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "content", "content": []}}]}]}"#),
            (Format::Anthropic, r#"{"messages": [], "tool_choice": {"type": "sometimes"}}"#),
            // Arrays where objects belong, which serde's derived structs would read in order.
            (Format::Anthropic, r#"{"messages": [], "metadata": ["someone"]}"#),
            (Format::OpenaiChat, r#"{"messages": [["user", "hi"]]}"#),
            (Format::OpenaiChat, r#"[null, [{"role": "user", "content": "hi"}]]"#),
        ];
        for (format, body) in left {
            assert_eq!(read_request(format, body.as_bytes()), None, "{body}");
        }
        // Bytes that are not UTF-8 in a member no reader looks at.
        let not_utf8 = b"{\"messages\": [], \"unread\": \"\xff\"}";
        assert_eq!(read_request(Format::OpenaiChat, not_utf8), None);
        assert!(serde_json::from_slice::<Value>(not_utf8).is_err(), "the Value reader refuses it too");
    }

    /// A schema kept as text may hold JSON a `Value` cannot; a writer that must rewrite it answers
    /// with an error naming the tool instead of failing, and one that sends it as it is does so.
    #[test]
    fn a_schema_no_value_can_hold_is_an_error_where_it_must_be_rewritten() {
        let body = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "odd", "parameters":
            {"properties": {"a": {"description": "\ud800", "maximum": 1e999}}}}}]}"#;
        let unreadable = || -> &Value { panic!("the typed reader reads this body") };
        let context = ConvertContext { upstream_model: "m".to_string(), ..ConvertContext::default() };
        let convert = |upstream| {
            convert_request_with_media(
                Format::OpenaiChat,
                upstream,
                ClientBody::Bytes { bytes: body, parse: &unreadable },
                &context,
                &mut |_| Err(String::new()),
                false,
            )
        };
        for upstream in [Format::Anthropic, Format::Antigravity] {
            let error = convert(upstream).expect_err("the schema must be rewritten for this upstream");
            assert!(error.to_string().contains("\"odd\""), "{upstream:?}: {error}");
        }
        // Gemini rewrites only a schema with a keyword it does not take, and this one has none;
        // Responses takes every schema as it is.
        for upstream in [Format::Gemini, Format::OpenaiResponses] {
            let written = String::from_utf8(convert(upstream).expect("the schema is sent as it is")).unwrap();
            assert!(written.contains(r#""description": "\ud800", "maximum": 1e999"#), "{upstream:?}: {written}");
        }
    }

    /// `optional_borrowed_str` borrows a string without escapes, copies one with escapes, and
    /// reads null and a missing member as `None`; a bare `Option<Cow<str>>` would have copied all.
    #[test]
    fn optional_strings_are_borrowed_where_they_can_be() {
        use std::borrow::Cow;

        use serde::Deserialize;

        use crate::protocol::typed_read::optional_borrowed_str;

        #[derive(Deserialize)]
        struct Member<'a> {
            #[serde(borrow, default, deserialize_with = "optional_borrowed_str")]
            text: Option<Cow<'a, str>>,
        }
        let read = |json: &'static str| serde_json::from_str::<Member>(json).map(|member| member.text);
        assert!(matches!(read(r#"{"text": "plain"}"#), Ok(Some(Cow::Borrowed("plain")))));
        assert!(matches!(read(r#"{"text": "line\nbreak"}"#), Ok(Some(Cow::Owned(text))) if text == "line\nbreak"));
        assert!(matches!(read(r#"{"text": null}"#), Ok(None)));
        assert!(matches!(read(r#"{}"#), Ok(None)));
        assert!(read(r#"{"text": 7}"#).is_err(), "a number is no string");
    }

    #[test]
    fn anthropic_string_content_and_tool_results_read_alike() {
        let body = json!({
            "model": "claude",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1"}, {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": ""},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"z": 1, "a": 2}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "ok"}], "is_error": true},
                    {"type": "text", "text": "next"}
                ]}
            ],
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "metadata": {"user_id": "u1"}
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let typed = read_request(Format::Anthropic, &bytes).expect("read typed");
        assert_eq!(typed, by_value(Format::Anthropic, &body));
    }
}
