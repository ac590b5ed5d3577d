//! Edits of a client's raw JSON body that leave every other byte as the client sent it, so a
//! same-format pass-through rewrites the model without re-serialising the whole request; a
//! nesting check that does not build the body; and the validating scan that finds a body's
//! top-level members on the relay's first read of it.
//!
//! The edits' input has already been read once (it is valid JSON), and that read found where the
//! top-level `model` values are (`relay::inbound`); they only cut and join bytes.

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

/// The range of the string starting at `start`, quotes included; `None` when no string starts
/// there or it is not closed. For text already known to be JSON: escapes are skipped, not
/// checked. Strings are most of a chat body's bytes (the messages), so this jumps between quotes
/// and backslashes with memchr.
pub(crate) fn string_range(raw: &[u8], start: usize) -> Option<Range<usize>> {
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

/// A top-level member of a JSON object: where its name's contents (between the quotes, escapes
/// as written) and its value lie in the text.
pub struct TopLevelMember {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// Checks that `raw` is one JSON object that serde_json reads, nesting at most `limit` deep, and
/// returns its top-level members in order (duplicates included). One pass over the bytes, several
/// times cheaper than serde_json's skipping of the members it is not asked for, which was the
/// largest single cost of a relayed request.
///
/// `None` means this scan does not vouch for the text, not that it is invalid: the caller then
/// reads it with serde_json, which decides and names the problem. So the scan may refuse what
/// serde_json accepts, but must never accept what it refuses; it follows serde_json's grammar for
/// skipped values (escapes are checked for form only, as serde_json checks a skipped string's).
/// The caller has checked that `raw` is UTF-8.
pub fn validated_top_level_members(raw: &[u8], limit: usize) -> Option<Vec<TopLevelMember>> {
    let mut members = Vec::new();
    for_each_validated_top_level_member(raw, limit, &mut |member| {
        members.push(member);
        Some(())
    })?;
    Some(members)
}

/// `validated_top_level_members`, calling `visit` with each member as it is found instead of
/// collecting them (the relay's path allocates nothing for them). `visit` may stop the scan with
/// `None`, which is then the answer.
pub fn for_each_validated_top_level_member(
    raw: &[u8],
    limit: usize,
    visit: &mut dyn FnMut(TopLevelMember) -> Option<()>,
) -> Option<()> {
    let mut scan = ValidatingScan { raw, position: 0, limit };
    scan.skip_whitespace();
    if scan.raw.get(scan.position) != Some(&b'{') {
        return None;
    }
    scan.object(1, Some(visit))?;
    scan.skip_whitespace();
    (scan.position == raw.len()).then_some(())
}

/// The bytes a JSON string may not hold as they are: the quote, the backslash and the control
/// characters. They end a run of plain string contents when reading, and are escaped when
/// writing (`json_writer`).
pub(crate) const ESCAPED_IN_A_STRING: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Where the run of plain string contents starting at `position` ends: at a quote, a backslash,
/// a control character, or the end of `raw`. Strings are most of a chat body's bytes, so they are
/// read eight bytes at a time: a word holds such a byte when one of three classic bit tests
/// (a byte equal to `"`, equal to `\\`, below 0x20) flags it, and the lowest flag is always
/// exact (a false flag can only follow a true one, through the borrow of the subtraction).
fn plain_run_end(raw: &[u8], mut position: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGH_BITS;
    while let Some(chunk) = raw.get(position..position + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let flags = zero_byte(word ^ (ONES * u64::from(b'"')))
            | zero_byte(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGH_BITS);
        if flags != 0 {
            return position + (flags.trailing_zeros() / 8) as usize;
        }
        position += 8;
    }
    while position < raw.len() && !ESCAPED_IN_A_STRING[usize::from(raw[position])] {
        position += 1;
    }
    position
}

/// Whether `contents` can stand between a JSON string's quotes as they are: no quote, backslash
/// or control character, so nothing to decode.
pub(crate) fn is_plain_string_contents(contents: &[u8]) -> bool {
    plain_run_end(contents, 0) == contents.len()
}

struct ValidatingScan<'a> {
    raw: &'a [u8],
    position: usize,
    limit: usize,
}

impl ValidatingScan<'_> {
    fn skip_whitespace(&mut self) {
        while matches!(self.raw.get(self.position), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.position += 1;
        }
    }

    /// Consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.raw.get(self.position) == Some(&byte);
        self.position += usize::from(next);
        next
    }

    /// One value at `depth` (the depth of the container holding it), whitespace before it skipped.
    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_whitespace();
        match *self.raw.get(self.position)? {
            b'{' => self.object(depth + 1, None),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object opening at the current byte; its members are given to `visit` if there is one.
    fn object(&mut self, depth: usize, mut visit: Option<&mut dyn FnMut(TopLevelMember) -> Option<()>>) -> Option<()> {
        if depth > self.limit {
            return None;
        }
        self.position += 1;
        self.skip_whitespace();
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            self.skip_whitespace();
            let name = self.string()?;
            self.skip_whitespace();
            if !self.eat(b':') {
                return None;
            }
            self.skip_whitespace();
            let value_start = self.position;
            self.value(depth)?;
            if let Some(visit) = visit.as_deref_mut() {
                visit(TopLevelMember { name, value: value_start..self.position })?;
            }
            self.skip_whitespace();
            if !self.eat(b',') {
                return self.eat(b'}').then_some(());
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > self.limit {
            return None;
        }
        self.position += 1;
        self.skip_whitespace();
        if self.eat(b']') {
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.skip_whitespace();
            if !self.eat(b',') {
                return self.eat(b']').then_some(());
            }
        }
    }

    /// A string opening at the current byte; returns the range of its contents.
    fn string(&mut self) -> Option<Range<usize>> {
        if self.raw.get(self.position) != Some(&b'"') {
            return None;
        }
        let start = self.position + 1;
        let mut position = start;
        loop {
            position = plain_run_end(self.raw, position);
            match *self.raw.get(position)? {
                b'"' => {
                    self.position = position + 1;
                    return Some(start..position);
                }
                b'\\' => {
                    position += match *self.raw.get(position + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if self.raw.get(position + 2..position + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                        _ => return None,
                    };
                }
                // A control character, which a JSON string may not hold unescaped.
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.raw[self.position..].starts_with(word).then(|| self.position += word.len())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`; what follows is the caller's.
    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        if !self.eat(b'0') {
            if !matches!(self.raw.get(self.position), Some(b'1'..=b'9')) {
                return None;
            }
            self.skip_digits();
        }
        if self.eat(b'.') && self.skip_digits() == 0 {
            return None;
        }
        if (self.eat(b'e') || self.eat(b'E')) && {
            let _ = self.eat(b'+') || self.eat(b'-');
            self.skip_digits() == 0
        } {
            return None;
        }
        Some(())
    }

    /// Skips a run of digits and says how long it was.
    fn skip_digits(&mut self) -> usize {
        let start = self.position;
        while matches!(self.raw.get(self.position), Some(b'0'..=b'9')) {
            self.position += 1;
        }
        self.position - start
    }
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
    fn a_plain_run_ends_at_the_first_quote_backslash_or_control_byte() {
        let simple = |raw: &[u8], start: usize| {
            (start..raw.len()).find(|&position| ESCAPED_IN_A_STRING[usize::from(raw[position])]).unwrap_or(raw.len())
        };
        for byte in 0..=255u8 {
            for position in 0..20 {
                // Bytes that end a run after the first one too, to catch a flag out of order.
                let mut raw = vec![b'a'; 24];
                raw[position] = byte;
                raw[position + 2] = b'"';
                for start in 0..4 {
                    assert_eq!(plain_run_end(&raw, start), simple(&raw, start), "byte {byte:#x} at {position} from {start}");
                }
            }
        }
    }

    #[test]
    fn the_scan_reads_bodies_as_serde_json_does() {
        let vouched = [
            r#"{"model":"gpt","messages":[{"role":"user","content":"hi \"there\" \\ \/ \b\f\n\r\t \u00e9 \ud83d\ude00"}],"stream":true}"#,
            " {\n\t\"model\" : \"m\" , \"n\" : -0.5e+10 , \"x\" : [ ] , \"y\" : { } , \"z\" : [null,true,false,0,-1,12.25,1E3] }\r\n",
            r#"{"model":"a","model":"b","stream_options":{"include_usage":true}}"#,
            r#"{"lone":"\ud800","big":1e999,"é":"✓"}"#,
            "{}",
        ];
        for body in vouched {
            assert!(crate::fuzz_entry::check_body_scan_against_serde(body.as_bytes()), "the scan should read {body}");
        }
        let refused = [
            r#"["not an object"]"#, r#"{"a":1,}"#, r#"{"a":01}"#, r#"{"a":1.}"#, r#"{"a":.5}"#, r#"{"a":1e}"#,
            r#"{"a":-}"#, r#"{"a":tru}"#, r#"{"a":"\x"}"#, r#"{"a":"\u12g4"}"#, "{\"a\":\"tab\there\"}", r#"{"a":1} x"#,
            r#"{"a" 1}"#, r#"{a:1}"#, r#"{"a":[1 2]}"#, r#"{"a":"unterminated}"#, r#"{"a":1"#, "", "  ", r#"{"a":NaN}"#,
            r#"{"a":+1}"#, "\u{feff}{}",
        ];
        for body in refused {
            assert!(!crate::fuzz_entry::check_body_scan_against_serde(body.as_bytes()), "the scan should leave {body:?} to serde_json");
        }
        let nested = |levels: usize| format!("{{\"x\":{}{}}}", "[".repeat(levels - 1), "]".repeat(levels - 1));
        assert!(crate::fuzz_entry::check_body_scan_against_serde(nested(128).as_bytes()));
        assert!(!crate::fuzz_entry::check_body_scan_against_serde(nested(129).as_bytes()));

        // Mutations of valid bodies: a byte dropped, doubled or replaced, everywhere.
        let mut vouched_mutants = 0;
        for body in vouched {
            let bytes = body.as_bytes();
            for position in 0..bytes.len() {
                for replacement in [None, Some(bytes[position]), Some(b'"'), Some(b'\\'), Some(b'}'), Some(b','), Some(b'0'), Some(b' ')] {
                    let mut mutant = bytes[..position].to_vec();
                    if let Some(byte) = replacement {
                        mutant.push(byte);
                    }
                    mutant.extend_from_slice(&bytes[position + 1..]);
                    if std::str::from_utf8(&mutant).is_ok() {
                        vouched_mutants += usize::from(crate::fuzz_entry::check_body_scan_against_serde(&mutant));
                    }
                }
            }
        }
        assert!(vouched_mutants > 100, "only {vouched_mutants} mutants were read by the scan");
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
