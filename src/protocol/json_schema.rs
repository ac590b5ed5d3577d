//! A tool's JSON Schema as it travels through the IR: the JSON text it arrived in, with the few
//! questions writers ask of it answered by scanning the text rather than building a tree.

use std::ops::ControlFlow;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::protocol::raw_json;

/// A tool's JSON Schema, kept as the JSON text it arrived in. Most writers send a schema on
/// unchanged, and building a `Value` tree of every schema, serialising it and dropping it was a
/// large part of a converted request's cost; writers that must look inside (Gemini's sanitiser,
/// Anthropic's top-level `type`) read it themselves. Two schemas are equal when they are the same
/// JSON value, whatever their key order and spacing.
#[derive(Clone, Debug)]
pub struct JsonSchema(Box<RawValue>);

impl JsonSchema {
    /// The schema of a tool that declares none: an object with no properties.
    pub fn empty_object() -> JsonSchema {
        JsonSchema::from_value(&serde_json::json!({"type": "object", "properties": {}}))
    }

    /// A schema read as a `Value`.
    pub fn from_value(schema: &Value) -> JsonSchema {
        JsonSchema(serde_json::value::to_raw_value(schema).expect("a Value always serialises"))
    }

    /// A schema as the JSON text it was sent in.
    pub fn from_raw(schema: &RawValue) -> JsonSchema {
        JsonSchema(schema.to_owned())
    }

    /// The schema's JSON text, to be written as it is.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// The schema as a `Value`, for writers that rewrite it; `None` for JSON a `Value` cannot
    /// hold (a lone surrogate escape, a number beyond `f64`), which a schema the typed readers
    /// kept as text may contain.
    pub fn to_value(&self) -> Option<Value> {
        serde_json::from_str(self.0.get()).ok()
    }
}

impl PartialEq for JsonSchema {
    fn eq(&self, other: &JsonSchema) -> bool {
        self.0.get() == other.0.get()
            || matches!((self.to_value(), other.to_value()), (Some(mine), Some(theirs)) if mine == theirs)
    }
}

impl JsonSchema {
    /// Whether the schema is an object with a top-level member called `name` (of any value);
    /// `None` when the schema is not an object at all.
    pub fn has_top_level_member(&self, name: &str) -> Option<bool> {
        let text = self.0.get();
        if text.bytes().find(|byte| !byte.is_ascii_whitespace()) != Some(b'{') {
            return None;
        }
        let mut found = false;
        for_each_member_name(text, |depth, member| {
            found = depth == 1 && member.is(name);
            if found { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        Some(found)
    }

    /// Whether any object anywhere in the schema has a member whose name `is_wanted`. A
    /// conservative question: a property that happens to be called so counts too, and so does
    /// a name whose escapes do not decode.
    pub fn has_member_anywhere(&self, is_wanted: &dyn Fn(&str) -> bool) -> bool {
        let mut found = false;
        for_each_member_name(self.0.get(), |_, member| {
            found = member.decoded().is_none_or(|name| is_wanted(&name));
            if found { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        found
    }
}

/// A member name as it appears in the text, between its quotes.
struct MemberName<'text> {
    quoted_contents: &'text str,
}

impl MemberName<'_> {
    /// The name, with its escapes decoded; `None` for an escape no string can hold (a lone
    /// surrogate).
    fn decoded(&self) -> Option<std::borrow::Cow<'_, str>> {
        if !self.quoted_contents.contains('\\') {
            return Some(std::borrow::Cow::Borrowed(self.quoted_contents));
        }
        let quoted = format!("\"{}\"", self.quoted_contents);
        serde_json::from_str::<String>(&quoted).ok().map(std::borrow::Cow::Owned)
    }

    fn is(&self, name: &str) -> bool {
        self.quoted_contents == name || self.decoded().is_some_and(|decoded| decoded == name)
    }
}

/// Calls `visit` with every member name in `text` and the depth of the object holding it (1 for
/// the outermost value's members), until `visit` breaks. It scans the bytes rather than
/// parsing: a schema is checked on every converted request, and walking it with a deserializer
/// cost several times more. (Jumping between quotes and braces with memchr measured slower: in a
/// schema they are a few bytes apart.)
///
/// `text` is JSON that was validated when its `RawValue` was made, so the scan only has to tell
/// strings from structure: a string followed by a colon is a member name.
fn for_each_member_name(text: &str, mut visit: impl FnMut(usize, MemberName<'_>) -> ControlFlow<()>) {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut position = 0;
    while position < bytes.len() {
        match bytes[position] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let Some(string) = raw_json::string_range(bytes, position) else {
                    return;
                };
                position = string.end;
                let after = bytes[position..].iter().find(|byte| !byte.is_ascii_whitespace());
                // Both ends are quotes, so they are character boundaries.
                if after == Some(&b':')
                    && visit(depth, MemberName { quoted_contents: &text[string.start + 1..string.end - 1] }).is_break()
                {
                    return;
                }
                continue;
            }
            _ => {}
        }
        position += 1;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use crate::protocol::json_schema::JsonSchema;

    fn schema(text: &str) -> JsonSchema {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        JsonSchema::from_raw(&raw)
    }

    #[test]
    fn top_level_members_are_found_by_name_escaped_or_not() {
        assert_eq!(schema(r#"{"type": "object"}"#).has_top_level_member("type"), Some(true));
        assert_eq!(schema(r#"{"t\u0079pe": null}"#).has_top_level_member("type"), Some(true));
        assert_eq!(schema(r#"{"properties": {"type": {"type": "string"}}}"#).has_top_level_member("type"), Some(false));
        assert_eq!(schema(r#"["type"]"#).has_top_level_member("type"), None);
        assert_eq!(schema(r#""type""#).has_top_level_member("type"), None);
    }

    #[test]
    fn member_names_are_found_at_any_depth_but_not_in_values() {
        let names = |name: &str| name == "$ref" || name == "const";
        assert!(schema(r##"{"anyOf": [{"items": {"$ref": "#/$defs/a"}}]}"##).has_member_anywhere(&names));
        assert!(schema(r#"{"properties": {"const": {"type": "string"}}}"#).has_member_anywhere(&names));
        assert!(!schema(r#"{"enum": ["$ref", "const"], "description": "const"}"#).has_member_anywhere(&names));
        assert!(!schema(r#"[1, 2.5, -3, true, null, {"a": [{}]}]"#).has_member_anywhere(&names));
    }

    /// A small deterministic generator of JSON texts full of what could trip a byte scanner:
    /// quotes, backslashes, braces and colons inside strings, escaped names, odd spacing.
    fn generated_json(seed: &mut u64, depth: u32, out: &mut String) {
        fn below(seed: &mut u64, bound: u64) -> u64 {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed % bound
        }
        const STRINGS: [&str; 8] =
            [r#""type""#, r#""t\u0079pe""#, r#""a\"b:""#, r#""{[\\""#, r#""""#, r#""x\\\"}""#, r#""é ✓""#, r#""const""#];
        const SPACES: [&str; 4] = ["", " ", "\n\t", "  \r\n"];
        let space = SPACES[below(seed, 4) as usize];
        match if depth > 3 { below(seed, 3) } else { below(seed, 6) } {
            0 => out.push_str(STRINGS[below(seed, 8) as usize]),
            1 => out.push_str(["1", "-2.5e3", "true", "null", "false"][below(seed, 5) as usize]),
            2 => out.push_str(STRINGS[below(seed, 8) as usize]),
            3 | 4 => {
                out.push('{');
                // Distinct names: a tree keeps only the last of duplicates, where the scans are
                // conservative and see them all.
                let first_name = below(seed, 7);
                for member in 0..below(seed, 4) {
                    if member > 0 {
                        out.push(',');
                    }
                    out.push_str(space);
                    let name = match (first_name + member) % 7 {
                        // `type`, written plain or with an escape.
                        0 => STRINGS[below(seed, 2) as usize],
                        other => STRINGS[other as usize + 1],
                    };
                    out.push_str(name);
                    out.push_str(space);
                    out.push(':');
                    out.push_str(space);
                    generated_json(seed, depth + 1, out);
                }
                out.push_str(space);
                out.push('}');
            }
            _ => {
                out.push('[');
                for item in 0..below(seed, 4) {
                    if item > 0 {
                        out.push_str(", ");
                    }
                    generated_json(seed, depth + 1, out);
                }
                out.push(']');
            }
        }
    }

    #[test]
    fn the_byte_scans_answer_as_a_parsed_tree_would() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let wanted_names: [&dyn Fn(&str) -> bool; 3] =
            [&|name| name == "type", &|name| name == "const" || name == "a\"b:", &|name| name.starts_with('{')];
        let mut checked_objects = 0;
        for _ in 0..5_000 {
            let mut text = String::new();
            generated_json(&mut seed, 0, &mut text);
            let Ok(raw) = serde_json::from_str::<Box<RawValue>>(&text) else { continue };
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            let schema = JsonSchema::from_raw(&raw);
            for name in ["type", "a\"b:", "{[\\", "é ✓"] {
                let expected = value.as_object().map(|members| members.contains_key(name));
                assert_eq!(schema.has_top_level_member(name), expected, "{name} at the top of {text}");
            }
            for is_wanted in wanted_names {
                assert_eq!(schema.has_member_anywhere(is_wanted), crate::fuzz_entry::has_member_in_tree(&value, is_wanted), "{text}");
            }
            checked_objects += usize::from(value.is_object());
        }
        assert!(checked_objects > 1_000, "the generator made only {checked_objects} objects");
    }

    #[test]
    fn a_member_name_no_string_can_hold_counts_as_wanted_but_is_no_top_level_match() {
        let lone_surrogate = schema(r#"{"\ud800": 1, "properties": {}}"#);
        assert_eq!(lone_surrogate.has_top_level_member("type"), Some(false));
        assert!(lone_surrogate.has_member_anywhere(&|name| name == "const"));
    }

    #[test]
    fn schemas_are_equal_as_json_values() {
        assert_eq!(schema(r#"{"a": 1, "b": [true]}"#), schema(r#"{ "b" : [ true ], "a" : 1 }"#));
        assert_ne!(schema(r#"{"a": 1}"#), schema(r#"{"a": 2}"#));
    }
}
