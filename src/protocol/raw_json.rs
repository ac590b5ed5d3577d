//! Edits of a client's raw JSON body that leave every other byte as the client sent it, so a
//! same-format pass-through rewrites the model without re-serialising the whole request.
//!
//! The input has already been parsed once (it is valid JSON); these functions only find the byte
//! ranges of top-level members. Whenever the raw bytes could mean something the scanner does not
//! see literally (a key written with escapes), they answer `None` and the caller takes the slow
//! path through `serde_json::Value`, which is always correct.

use std::ops::Range;

/// The byte ranges of the values of every top-level member named `key` (JSON keeps the last of
/// duplicates, so all are rewritten alike), or `None` when the body is not a plain object the
/// scanner can read with certainty.
pub fn top_level_value_ranges(raw: &[u8], key: &str) -> Option<Vec<Range<usize>>> {
    let mut ranges = Vec::new();
    let mut position = skip_whitespace(raw, 0);
    if raw.get(position) != Some(&b'{') {
        return None;
    }
    position = skip_whitespace(raw, position + 1);
    if raw.get(position) == Some(&b'}') {
        return Some(ranges);
    }
    loop {
        let key_range = string_range(raw, position)?;
        let key_bytes = &raw[key_range.start + 1..key_range.end - 1];
        if key_bytes.contains(&b'\\') {
            // `"mod\u0065l"` is `model` too; rather than decode, let the caller go the slow way.
            return None;
        }
        position = skip_whitespace(raw, key_range.end);
        if raw.get(position) != Some(&b':') {
            return None;
        }
        let value_start = skip_whitespace(raw, position + 1);
        let value_end = value_end(raw, value_start)?;
        if key_bytes == key.as_bytes() {
            ranges.push(value_start..value_end);
        }
        position = skip_whitespace(raw, value_end);
        match raw.get(position) {
            Some(b',') => position = skip_whitespace(raw, position + 1),
            Some(b'}') => break,
            _ => return None,
        }
    }
    // Nothing but whitespace may follow the object.
    (skip_whitespace(raw, position + 1) == raw.len()).then_some(ranges)
}

/// `raw` with each range replaced by `replacement` (ranges ascending and disjoint, as
/// `top_level_value_ranges` returns them).
pub fn replace_ranges(raw: &[u8], ranges: &[Range<usize>], replacement: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + ranges.len() * replacement.len());
    let mut copied_up_to = 0;
    for range in ranges {
        out.extend_from_slice(&raw[copied_up_to..range.start]);
        out.extend_from_slice(replacement);
        copied_up_to = range.end;
    }
    out.extend_from_slice(&raw[copied_up_to..]);
    out
}

/// `raw` (a JSON object) with `member` (`"key":value`, already encoded) added as its last
/// member, or `None` when `raw` does not end like an object.
pub fn append_member(raw: &[u8], member: &[u8]) -> Option<Vec<u8>> {
    let closing = raw.iter().rposition(|byte| !byte.is_ascii_whitespace())?;
    if raw[closing] != b'}' {
        return None;
    }
    let before_closing = raw[..closing].iter().rposition(|byte| !byte.is_ascii_whitespace())?;
    let empty_object = raw[before_closing] == b'{';
    let mut out = Vec::with_capacity(raw.len() + member.len() + 1);
    out.extend_from_slice(&raw[..closing]);
    if !empty_object {
        out.push(b',');
    }
    out.extend_from_slice(member);
    out.extend_from_slice(&raw[closing..]);
    Some(out)
}

/// Whether arrays and objects in `raw` nest deeper than `limit`. A body read without building
/// it (only the head members are decoded) must still be refused where a full parse would be
/// (serde_json stops at 128 levels), and must never reach a converter that recurses.
pub fn nests_deeper_than(raw: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut position = 0;
    while position < raw.len() {
        match raw[position] {
            b'"' => match string_range(raw, position) {
                Some(range) => {
                    position = range.end;
                    continue;
                }
                None => return false,
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        position += 1;
    }
    false
}

fn skip_whitespace(raw: &[u8], mut position: usize) -> usize {
    while raw.get(position).is_some_and(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r')) {
        position += 1;
    }
    position
}

/// The range of the string starting at `start`, quotes included. Strings are most of a chat
/// body's bytes (the messages), so this jumps between quotes and backslashes with memchr.
fn string_range(raw: &[u8], start: usize) -> Option<Range<usize>> {
    if raw.get(start) != Some(&b'"') {
        return None;
    }
    let mut position = start + 1;
    while position < raw.len() {
        position += memchr::memchr2(b'"', b'\\', &raw[position..])?;
        if raw[position] == b'"' {
            return Some(start..position + 1);
        }
        // A backslash escapes the byte after it (`\"` included); `\uXXXX` needs no more care.
        position += 2;
    }
    None
}

/// Where the value starting at `start` ends (exclusive).
fn value_end(raw: &[u8], start: usize) -> Option<usize> {
    match raw.get(start)? {
        b'"' => string_range(raw, start).map(|range| range.end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut position = start;
            while let Some(&byte) = raw.get(position) {
                match byte {
                    b'"' => {
                        position = string_range(raw, position)?.end;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(position + 1);
                        }
                    }
                    _ => {}
                }
                position += 1;
            }
            None
        }
        // Numbers and literals run to the next delimiter.
        _ => {
            let length = raw[start..].iter().position(|byte| matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')).unwrap_or(raw.len() - start);
            (length > 0).then_some(start + length)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn rewrite_model(raw: &str, model: &str) -> Option<Value> {
        let ranges = top_level_value_ranges(raw.as_bytes(), "model")?;
        let replacement = serde_json::to_vec(model).unwrap();
        let out = replace_ranges(raw.as_bytes(), &ranges, &replacement);
        Some(serde_json::from_slice(&out).expect("the rewritten body is JSON"))
    }

    #[test]
    fn the_top_level_model_is_replaced_and_nested_ones_are_not() {
        let raw = r#" { "messages": [{"role":"user","content":"say \"model\": {x}"}], "model" : "group-a", "metadata": {"model": "keep"}, "n": 1 } "#;
        let rewritten = rewrite_model(raw, "gpt-real").unwrap();
        assert_eq!(rewritten["model"], "gpt-real");
        assert_eq!(rewritten["metadata"]["model"], "keep");
        assert_eq!(rewritten["messages"][0]["content"], "say \"model\": {x}");
        assert_eq!(rewritten["n"], 1);
    }

    #[test]
    fn every_duplicate_is_replaced_like_serde_keeps_the_last() {
        let rewritten = rewrite_model(r#"{"model":"a","x":[1,{"y":"]"}],"model":"b"}"#, "real").unwrap();
        assert_eq!(rewritten, json!({"model": "real", "x": [1, {"y": "]"}]}));
    }

    #[test]
    fn values_of_every_kind_are_skipped_exactly() {
        let raw = r#"{"a":-1.5e3,"b":true,"c":null,"d":"\\","e":{},"f":[],"model":"m","g":"\u00e9"}"#;
        let rewritten = rewrite_model(raw, "x").unwrap();
        let mut expected: Value = serde_json::from_str(raw).unwrap();
        expected["model"] = json!("x");
        assert_eq!(rewritten, expected);
    }

    #[test]
    fn escaped_keys_and_non_objects_take_the_slow_path() {
        assert!(top_level_value_ranges(br#"{"mod\u0065l":"a"}"#, "model").is_none());
        assert!(top_level_value_ranges(b"[1]", "model").is_none());
        assert!(top_level_value_ranges(br#"{"model":"a"} x"#, "model").is_none());
        assert!(top_level_value_ranges(br#"{"model":"a""#, "model").is_none());
        assert_eq!(top_level_value_ranges(b" {} ", "model"), Some(Vec::new()));
    }

    #[test]
    fn nesting_is_measured_outside_strings_only() {
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert!(!nests_deeper_than(format!("{{\"x\":{}}}", nested(127)).as_bytes(), 128));
        assert!(nests_deeper_than(format!("{{\"x\":{}}}", nested(128)).as_bytes(), 128));
        assert!(!nests_deeper_than(format!("{{\"x\":\"{}\\\"\"}}", "[".repeat(500)).as_bytes(), 128));
    }

    #[test]
    fn a_member_is_appended_to_full_and_empty_objects() {
        let member = br#""stream_options":{"include_usage":true}"#;
        let full = append_member(b"{\"a\":1 }\n", member).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&full).unwrap(), json!({"a": 1, "stream_options": {"include_usage": true}}));
        let empty = append_member(b"{ }", member).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&empty).unwrap(), json!({"stream_options": {"include_usage": true}}));
        assert!(append_member(b"[1]", member).is_none());
    }
}
