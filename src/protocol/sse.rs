//! Incremental Server-Sent Events parsing and encoding, keeping each event's raw bytes for pass-through.
//!
//! The parser follows the WHATWG event-stream rules: lines end with LF, CRLF or a lone CR, a blank
//! line ends an event, `:` lines are comments, a single space after the field colon is dropped and
//! several `data:` lines are joined with `\n`. It never grows its buffer past the configured event
//! size, so a hostile upstream cannot make the gateway buffer an endless line.

use std::fmt;
use std::sync::OnceLock;

use crate::util::text_lossy;

const BYTE_ORDER_MARK: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched event.
///
/// A block without any `data:` line (a comment keep-alive such as `: ping`, or a lone `event:`
/// line) is still reported, with empty `data`, so that pass-through can forward it; converters
/// skip events whose `data` is empty.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SseEvent {
    /// The `event:` field, if the block had a non-empty one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, if the block had one.
    pub id: Option<String>,
    /// The bytes of the block exactly as received, including its terminating blank line. Stray
    /// blank lines before a block belong to it, so the raw bytes of all events put together are the
    /// stream (minus a leading byte-order mark). A final block flushed by [`SseParser::finish`]
    /// has no terminating blank line; add one when forwarding it.
    pub raw: Vec<u8>,
}

/// Why the parser gave up on a stream.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SseError {
    /// An event (or a single unterminated line) grew past the configured maximum size. The parser
    /// has dropped its buffer and rejects everything after this.
    EventTooLarge { limit: usize },
}

impl fmt::Display for SseError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::EventTooLarge { limit } => {
                write!(formatter, "sse: event larger than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// An incremental event-stream parser: push bytes as they arrive, collect whole events.
pub struct SseParser {
    max_event_size: usize,
    /// The raw bytes of the block being assembled: its complete lines, then the partial line.
    pending: Vec<u8>,
    /// Where the unterminated line starts inside `pending`.
    line_start: usize,
    /// The last line ended with a CR and the next byte, which may be the LF of a CRLF, is unseen.
    after_cr: bool,
    /// That CR-terminated line was blank: dispatch once we know whether an LF belongs to it, so
    /// the raw bytes do not depend on where the stream was split.
    dispatch_after_cr: bool,
    fields: PendingFields,
    /// The first bytes of the stream while they may still turn out to be a byte-order mark.
    start_window: Option<Vec<u8>>,
    failed: bool,
}

/// The fields of the block being assembled.
#[derive(Default)]
struct PendingFields {
    has_lines: bool,
    event: Option<String>,
    data: String,
    data_lines: usize,
    id: Option<String>,
}

impl SseParser {
    /// A parser that rejects any event whose raw bytes exceed `max_event_size`.
    pub fn new(max_event_size: usize) -> SseParser {
        SseParser {
            max_event_size,
            pending: Vec::new(),
            line_start: 0,
            after_cr: false,
            dispatch_after_cr: false,
            fields: PendingFields::default(),
            start_window: Some(Vec::with_capacity(BYTE_ORDER_MARK.len())),
            failed: false,
        }
    }

    /// Feeds the next bytes of the stream and appends every event they complete to `events`.
    ///
    /// A blank line ended by a lone CR at the very end of `bytes` is dispatched on the next push
    /// (or at `finish`), because only the next byte tells whether it is half of a CRLF.
    pub fn push(&mut self, bytes: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.failed {
            return Err(SseError::EventTooLarge {
                limit: self.max_event_size,
            });
        }
        let mut input = bytes;
        if let Some(mut window) = self.start_window.take() {
            let taken = (BYTE_ORDER_MARK.len() - window.len()).min(input.len());
            window.extend_from_slice(&input[..taken]);
            input = &input[taken..];
            if window.len() < BYTE_ORDER_MARK.len() && BYTE_ORDER_MARK.starts_with(&window) {
                self.start_window = Some(window);
                return Ok(());
            }
            if window != BYTE_ORDER_MARK {
                self.feed(&window, events)?;
            }
        }
        self.feed(input, events)
    }

    /// Ends the stream: flushes a final event that was not followed by a blank line.
    pub fn finish(&mut self, events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.failed {
            return Err(SseError::EventTooLarge {
                limit: self.max_event_size,
            });
        }
        if let Some(window) = self.start_window.take() {
            self.feed(&window, events)?;
        }
        if self.after_cr {
            self.end_cr_line(events);
        }
        if self.line_start < self.pending.len() {
            process_line(&self.pending[self.line_start..], &mut self.fields);
            self.line_start = self.pending.len();
        }
        if self.fields.has_lines {
            self.dispatch(events);
        }
        self.pending.clear();
        self.line_start = 0;
        Ok(())
    }

    fn feed(&mut self, input: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = input;
        while !rest.is_empty() {
            if self.after_cr {
                if rest[0] == b'\n' {
                    self.append(&rest[..1])?;
                    rest = &rest[1..];
                }
                self.end_cr_line(events);
                continue;
            }
            // memchr's SIMD search: a byte-by-byte scan cost about nine instructions per byte
            // of every relayed event.
            let Some(position) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.append(rest)?;
                break;
            };
            self.append(&rest[..=position])?;
            let terminator = rest[position];
            rest = &rest[position + 1..];
            let line_end = self.pending.len() - 1;
            let is_blank = line_end == self.line_start;
            if !is_blank {
                process_line(&self.pending[self.line_start..line_end], &mut self.fields);
            }
            if terminator == b'\r' {
                self.after_cr = true;
                self.dispatch_after_cr = is_blank;
            } else {
                self.line_start = self.pending.len();
                if is_blank {
                    self.dispatch(events);
                }
            }
        }
        Ok(())
    }

    /// Completes a line that ended with a CR once the byte after it is known (or the stream ended).
    fn end_cr_line(&mut self, events: &mut Vec<SseEvent>) {
        self.after_cr = false;
        self.line_start = self.pending.len();
        if self.dispatch_after_cr {
            self.dispatch_after_cr = false;
            self.dispatch(events);
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        let needed = self.pending.len() + bytes.len();
        if needed > self.max_event_size {
            self.failed = true;
            self.pending = Vec::new();
            return Err(SseError::EventTooLarge {
                limit: self.max_event_size,
            });
        }
        if needed > self.pending.capacity() {
            // Grow geometrically, but never past the limit, so capacity stays bounded too.
            let target = needed
                .max(self.pending.capacity() * 2)
                .min(self.max_event_size);
            self.pending.reserve_exact(target - self.pending.len());
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// Emits the assembled block, if it has any line besides blank ones.
    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        if !self.fields.has_lines {
            // Stray blank lines stay in `pending` and become the start of the next event's raw.
            return;
        }
        let fields = std::mem::take(&mut self.fields);
        events.push(SseEvent {
            event: fields.event,
            data: fields.data,
            id: fields.id,
            raw: self.pending.clone(),
        });
        self.pending.clear();
        self.line_start = 0;
    }

    #[cfg(test)]
    fn buffer_capacity(&self) -> usize {
        self.pending.capacity()
    }
}

/// Applies one non-blank line (without its terminator) to the block being assembled.
fn process_line(line: &[u8], fields: &mut PendingFields) {
    fields.has_lines = true;
    if line[0] == b':' {
        return;
    }
    let (name, value) = match line.iter().position(|&byte| byte == b':') {
        Some(colon) => {
            let value = &line[colon + 1..];
            (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &line[line.len()..]),
    };
    match name {
        b"event" => {
            fields.event = (!value.is_empty()).then(|| text_lossy(value).into_owned());
        }
        b"data" => {
            if fields.data_lines > 0 {
                fields.data.push('\n');
            }
            fields.data.push_str(&text_lossy(value));
            fields.data_lines += 1;
        }
        b"id" if !value.contains(&0) => {
            fields.id = Some(text_lossy(value).into_owned());
        }
        _ => {}
    }
}

/// Encodes one event as `event: <name>\n` (when given), one `data:` line per line of `data`, and
/// the blank line that dispatches it.
pub fn encode_event(event: Option<&str>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    write_event(&mut out, event, data);
    out
}

/// Appends the encoding of one event to `out`, like [`encode_event`] without the allocation.
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    // A CR inside data would end the line early for the receiver, so every line break style is
    // turned into its own `data:` line.
    let normalized;
    let data = if data.contains('\r') {
        normalized = data.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        data
    };
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Appends one event whose data is `value` serialised as compact JSON. Compact JSON never holds a raw line
/// break (strings escape them), so it is one `data:` line, written straight into `out`: going
/// through `Value`'s `Display` first cost about three times as much (formatter calls per token)
/// and a temporary string per event.
pub fn write_json_event(out: &mut Vec<u8>, event: Option<&str>, value: &impl serde::Serialize) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, value).expect("our event types and JSON values always serialise into memory");
    out.extend_from_slice(b"\n\n");
}

/// A fixed string that every relayed event is searched for (usage, errors, the final event).
///
/// `str::contains` costs several instructions per byte there, memchr's SIMD search a fraction of
/// one; but `memchr::memmem::find` builds its searcher anew on every call, which on events of a
/// few hundred bytes cost three times the search itself (a sixth of a relayed stream's
/// instructions). A `Marker` is a `static` whose searcher is built on first use and kept.
pub struct Marker {
    needle: &'static str,
    finder: OnceLock<memchr::memmem::Finder<'static>>,
}

impl Marker {
    pub const fn new(needle: &'static str) -> Marker {
        Marker { needle, finder: OnceLock::new() }
    }

    /// Where the marker first occurs in `haystack`, as a byte offset.
    pub fn find_in(&self, haystack: &str) -> Option<usize> {
        self.finder.get_or_init(|| memchr::memmem::Finder::new(self.needle)).find(haystack.as_bytes())
    }

    pub fn is_in(&self, haystack: &str) -> bool {
        self.find_in(haystack).is_some()
    }

    pub fn needle_len(&self) -> usize {
        self.needle.len()
    }
}

/// The `usage` key of Chat, Responses and Anthropic events.
pub static USAGE_KEY: Marker = Marker::new("\"usage\"");

#[cfg(test)]
mod tests {
    use crate::protocol::sse::{Marker, SseError, SseEvent, SseParser, encode_event, write_json_event};

    #[test]
    fn a_marker_finds_what_str_find_finds_and_keeps_working_after_its_first_use() {
        static MARKER: Marker = Marker::new("\"usage\"");
        let haystacks = [
            "",
            "\"usage\"",
            "{\"id\":\"x\",\"usage\":{\"prompt_tokens\":1}}",
            "{\"usage_note\":\"usage\"}",
            "{\"choices\":[{\"delta\":{\"content\":\"the word usage, unquoted\"}}]}",
            "a long prefix with no marker at all, longer than one SIMD vector of sixty-four bytes; \"usage\"",
        ];
        for _ in 0..2 {
            for haystack in haystacks {
                assert_eq!(MARKER.find_in(haystack), haystack.find("\"usage\""), "{haystack}");
                assert_eq!(MARKER.is_in(haystack), haystack.contains("\"usage\""), "{haystack}");
            }
        }
        assert_eq!(MARKER.needle_len(), 7);
    }

    #[test]
    fn a_json_event_is_the_same_bytes_as_its_text_encoded() {
        let value = serde_json::json!({"text": "line one\nline two\r\n", "n": 1});
        let mut written = Vec::new();
        write_json_event(&mut written, Some("delta"), &value);
        assert_eq!(written, encode_event(Some("delta"), &value.to_string()));
        let mut unnamed = Vec::new();
        write_json_event(&mut unnamed, None, &value);
        assert_eq!(unnamed, encode_event(None, &value.to_string()));
    }
    use crate::protocol::testkit;

    const LIMIT: usize = 1 << 20;

    fn parse_pieces(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new(LIMIT);
        let mut events = Vec::new();
        for piece in pieces {
            parser.push(piece, &mut events).expect("push");
        }
        parser.finish(&mut events).expect("finish");
        events
    }

    fn event(name: Option<&str>, data: &str, raw: &str) -> SseEvent {
        SseEvent {
            event: name.map(str::to_string),
            data: data.to_string(),
            id: None,
            raw: raw.as_bytes().to_vec(),
        }
    }

    #[test]
    fn every_recorded_stream_parses_the_same_however_it_is_split() {
        let names = testkit::all_streams();
        assert!(
            names.len() >= 23,
            "expected the recorded streams, found {names:?}"
        );
        for name in &names {
            let bytes = testkit::stream_bytes(name);
            let whole = parse_pieces(&[&bytes]);
            assert!(!whole.is_empty(), "{name}: no events");
            assert!(
                whole.iter().all(|event| !event.data.is_empty()),
                "{name}: an event without data"
            );
            let joined: Vec<u8> = whole.iter().flat_map(|event| event.raw.clone()).collect();
            assert_eq!(
                joined, bytes,
                "{name}: raw bytes do not add up to the stream"
            );

            let byte_pieces: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                parse_pieces(&byte_pieces),
                whole,
                "{name}: one byte at a time"
            );
            for split in testkit::split_points(&bytes, 1000) {
                let (head, tail) = bytes.split_at(split);
                assert_eq!(
                    parse_pieces(&[head, tail]),
                    whole,
                    "{name}: split at {split}"
                );
            }
        }
    }

    #[test]
    fn crlf_stream_from_gemini_gives_plain_json_data() {
        let bytes = testkit::stream_bytes("gemini/text-stream.sse");
        let events = parse_pieces(&[&bytes]);
        assert_eq!(events.len(), 3);
        for event in &events {
            assert!(event.event.is_none());
            serde_json::from_str::<serde_json::Value>(&event.data).expect("data is JSON");
            assert!(event.raw.ends_with(b"\r\n\r\n"));
        }
    }

    #[test]
    fn stream_without_final_blank_line_is_flushed_by_finish() {
        let bytes = testkit::stream_bytes("gemini/prompt-blocked-stream.sse");
        let mut parser = SseParser::new(LIMIT);
        let mut events = Vec::new();
        parser.push(&bytes, &mut events).unwrap();
        assert!(events.is_empty());
        parser.finish(&mut events).unwrap();
        assert_eq!(events.len(), 1);
        assert!(events[0].data.contains("\"blockReason\": \"SAFETY\""));
        assert_eq!(events[0].raw, bytes);
    }

    #[test]
    fn lf_crlf_and_cr_line_endings_are_equivalent() {
        let lf = parse_pieces(&[b"event: a\ndata: 1\n\ndata: 2\n\n"]);
        let crlf = parse_pieces(&[b"event: a\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n"]);
        let cr = parse_pieces(&[b"event: a\rdata: 1\r\rdata: 2\r\r"]);
        for events in [&lf, &crlf, &cr] {
            let fields: Vec<(Option<&str>, &str)> = events
                .iter()
                .map(|event| (event.event.as_deref(), event.data.as_str()))
                .collect();
            assert_eq!(fields, [(Some("a"), "1"), (None, "2")]);
        }
        assert_eq!(crlf[0].raw, b"event: a\r\ndata: 1\r\n\r\n");
        assert_eq!(cr[1].raw, b"data: 2\r\r");
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_break() {
        let events = parse_pieces(&[b"data: 1\r", b"\ndata: 2\r\n\r", b"\n", b"data: 3\r\n\r\n"]);
        assert_eq!(
            events,
            [
                event(None, "1\n2", "data: 1\r\ndata: 2\r\n\r\n"),
                event(None, "3", "data: 3\r\n\r\n"),
            ]
        );
    }

    #[test]
    fn blank_line_ended_by_cr_waits_for_the_next_byte() {
        let mut parser = SseParser::new(LIMIT);
        let mut events = Vec::new();
        parser.push(b"data: x\r\r", &mut events).unwrap();
        assert!(events.is_empty(), "the next byte may be the LF of a CRLF");
        parser.push(b"data: y", &mut events).unwrap();
        assert_eq!(events, [event(None, "x", "data: x\r\r")]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let events = parse_pieces(&[b"data: first\ndata:second\ndata:  third\ndata\n\n"]);
        assert_eq!(events[0].data, "first\nsecond\n third\n");
    }

    #[test]
    fn comments_are_ignored_but_kept_in_raw() {
        let events = parse_pieces(&[b": keep-alive\n\n:hello\ndata: {}\n\n"]);
        assert_eq!(
            events,
            [
                event(None, "", ": keep-alive\n\n"),
                event(None, "{}", ":hello\ndata: {}\n\n"),
            ]
        );
    }

    #[test]
    fn id_and_unknown_fields() {
        let events = parse_pieces(&[b"id: 7\nretry: 100\nfoo: bar\nevent:\ndata: x\n\n"]);
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[0].event, None);
        assert_eq!(events[0].data, "x");
    }

    #[test]
    fn stray_blank_lines_join_the_next_event() {
        let events = parse_pieces(&[b"\n\r\ndata: x\n\n\n"]);
        assert_eq!(events, [event(None, "x", "\n\r\ndata: x\n\n")]);
    }

    #[test]
    fn leading_byte_order_mark_is_dropped_even_when_split() {
        let whole = parse_pieces(&[b"\xEF\xBB\xBFdata: x\n\n"]);
        let split = parse_pieces(&[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"]);
        assert_eq!(whole, [event(None, "x", "data: x\n\n")]);
        assert_eq!(split, whole);
        let not_a_mark = parse_pieces(&[b"\xEF", b"data: x\n\n"]);
        assert_eq!(not_a_mark[0].raw, b"\xEFdata: x\n\n");
        let short_stream = parse_pieces(&[b"\xEF\xBB"]);
        assert_eq!(short_stream[0].raw, b"\xEF\xBB");
    }

    #[test]
    fn oversized_event_is_rejected_without_growing_the_buffer() {
        let limit = 64;
        let mut parser = SseParser::new(limit);
        let mut events = Vec::new();
        let exact = format!("data: {}\n\n", "a".repeat(limit - 8));
        assert_eq!(exact.len(), limit);
        parser.push(exact.as_bytes(), &mut events).unwrap();
        assert_eq!(events.len(), 1);

        for _ in 0..6 {
            parser.push(b"data: aaaa", &mut events).unwrap();
            assert!(parser.buffer_capacity() <= limit);
        }
        let error = parser.push(&[b'a'; 100], &mut events).unwrap_err();
        assert_eq!(error, SseError::EventTooLarge { limit });
        assert!(parser.buffer_capacity() <= limit);
        assert_eq!(error.to_string(), "sse: event larger than 64 bytes");
        assert!(parser.push(b"\n\n", &mut events).is_err());
        assert!(parser.finish(&mut events).is_err());
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn one_long_line_is_rejected_too() {
        let mut parser = SseParser::new(16);
        let mut events = Vec::new();
        let result = parser.push(&[b'x'; 17], &mut events);
        assert_eq!(result, Err(SseError::EventTooLarge { limit: 16 }));
    }

    #[test]
    fn encoded_events_parse_back() {
        let encoded = encode_event(Some("message_start"), "{\"a\":1}");
        assert_eq!(encoded, b"event: message_start\ndata: {\"a\":1}\n\n");
        let multi = encode_event(None, "one\ntwo\r\nthree\rfour");
        assert_eq!(
            multi,
            b"data: one\ndata: two\ndata: three\ndata: four\n\n".as_slice()
        );
        let events = parse_pieces(&[&encoded, &multi, &encode_event(None, " padded")]);
        assert_eq!(events[0].event.as_deref(), Some("message_start"));
        assert_eq!(events[1].data, "one\ntwo\nthree\nfour");
        assert_eq!(events[2].data, " padded");
    }
}
