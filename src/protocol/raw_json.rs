//! Edits of a client's raw JSON body that leave every other byte as the client sent it, so a
//! same-format pass-through rewrites the model without re-serialising the whole request, and a
//! nesting check that does not build the body.
//!
//! The input has already been parsed once (it is valid JSON), and that parse found where the
//! top-level `model` values are (`relay::inbound`); these functions only cut and join bytes.

use std::ops::Range;

/// `raw` with each range replaced by `replacement` (ranges ascending and disjoint, as
/// `InboundCall::raw_model_ranges` gives them).
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn every_range_is_replaced_and_the_bytes_between_are_kept() {
        let raw = br#"{"model":"a","x":[1],"model":"b"}"#;
        let out = replace_ranges(raw, &[9..12, 29..32], br#""real""#);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"model":"real","x":[1],"model":"real"}"#);
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
