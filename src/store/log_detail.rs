//! The `detail` column of a request log: every field no filter needs, as one positional JSON array.
//!
//! A log row is written for every relay request, so its cost is part of every request's cost.
//! Binding and storing two dozen columns cost more than the rest of the statistics together
//! (measured with callgrind: about 16,000 instructions a row on SQLite), while the admin API
//! filters only on the key, group, channel, outcome and time. Those stay columns; the rest is
//! this one text value: a JSON array without keys.
//!
//! Layout (version 1, append-only: a later field goes at the end and is optional when read):
//! `[api_key_name, channel_name, model, client_format, status_code, attempts, input_tokens,
//! output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_micros, ttft_ms
//! (or null), latency_ms, stream (0 or 1), error, attempt_details]`, where each attempt is
//! `[channel_id, channel_name, key_id, base_url, model, outcome, status (or null), duration_ms]`.
//! An attempt's `channel_name` and `model` are `null` when they are the log's own: most requests
//! succeed at their first try, and every byte of a row is written twice (the WAL, then the
//! database file), so those repeats cost more than the rest of the row's statistics work.
//! Rows written before that rule carry the names; rows migrated from the older wide table keep
//! their attempts as JSON objects; all of them read back.

use serde::Deserialize;

use crate::store::entities::{LoggedAttempt, RequestLog};
use crate::store::{StoreError, StoreResult};

/// The fields a `detail` text holds, borrowed: from a `RequestLog`, or straight from the relay's
/// record when the stats writer queues a new row (so a request's strings are never copied into
/// an intermediate log first).
pub struct DetailFields<'a, Attempts> {
    pub api_key_name: &'a str,
    pub channel_name: &'a str,
    pub model: &'a str,
    pub client_format: &'a str,
    pub status_code: u16,
    pub attempts: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_micros: i64,
    pub ttft_ms: Option<i64>,
    pub latency_ms: i64,
    pub stream: bool,
    pub error: &'a str,
    /// The tries, oldest first.
    pub attempt_details: Attempts,
}

/// One try inside `DetailFields`, borrowed.
pub struct AttemptFields<'a> {
    pub channel_id: i64,
    pub channel_name: &'a str,
    pub key_id: i64,
    pub base_url: &'a str,
    pub model: &'a str,
    pub outcome: &'a str,
    pub status: Option<u16>,
    pub duration_ms: u64,
}

impl<'a> AttemptFields<'a> {
    pub fn of_logged(attempt: &'a LoggedAttempt) -> AttemptFields<'a> {
        AttemptFields {
            channel_id: attempt.channel_id,
            channel_name: &attempt.channel_name,
            key_id: attempt.key_id,
            base_url: &attempt.base_url,
            model: &attempt.model,
            outcome: &attempt.outcome,
            status: attempt.status,
            duration_ms: attempt.duration_ms,
        }
    }
}

/// The `detail` text of a stored log.
pub fn encode_log(log: &RequestLog) -> String {
    encode(DetailFields {
        api_key_name: &log.api_key_name,
        channel_name: &log.channel_name,
        model: &log.model,
        client_format: &log.client_format,
        status_code: log.status_code,
        attempts: log.attempts,
        input_tokens: log.input_tokens,
        output_tokens: log.output_tokens,
        cache_read_tokens: log.cache_read_tokens,
        cache_write_tokens: log.cache_write_tokens,
        reasoning_tokens: log.reasoning_tokens,
        cost_micros: log.cost_micros,
        ttft_ms: log.ttft_ms,
        latency_ms: log.latency_ms,
        stream: log.stream,
        error: &log.error,
        attempt_details: log.attempt_details.iter().map(AttemptFields::of_logged),
    })
}

/// The `detail` text of the fields. Written by hand rather than through serde: this runs for
/// every request, and serde_json's per-element machinery cost three times the bytes it wrote
/// (measured with callgrind). Strings that need escaping (rare: quotes, backslashes, control
/// characters) still go through serde_json's escaper.
pub fn encode<'a>(fields: DetailFields<'a, impl Iterator<Item = AttemptFields<'a>>>) -> String {
    // Room for the strings and numbers of a request with one or two tries, so the text is
    // allocated once.
    let strings = fields.api_key_name.len() + fields.channel_name.len() + fields.model.len() + fields.error.len();
    let mut text = String::with_capacity(256 + 2 * strings);
    encode_into(&mut text, fields);
    text
}

/// `encode`, appended to `text` (the stats batches' shared buffer).
pub fn encode_into<'a>(text: &mut String, fields: DetailFields<'a, impl Iterator<Item = AttemptFields<'a>>>) {
    let mut out = DetailWriter(text);
    out.0.push('[');
    for text in [fields.api_key_name, fields.channel_name, fields.model, fields.client_format] {
        out.string(text);
        out.0.push(',');
    }
    for number in [
        i64::from(fields.status_code),
        fields.attempts,
        fields.input_tokens,
        fields.output_tokens,
        fields.cache_read_tokens,
        fields.cache_write_tokens,
        fields.reasoning_tokens,
        fields.cost_micros,
    ] {
        out.integer(number);
        out.0.push(',');
    }
    out.optional_integer(fields.ttft_ms);
    out.0.push(',');
    out.integer(fields.latency_ms);
    out.0.push_str(if fields.stream { ",1," } else { ",0," });
    out.string(fields.error);
    out.0.push_str(",[");
    for (index, attempt) in fields.attempt_details.enumerate() {
        out.0.push_str(if index == 0 { "[" } else { ",[" });
        out.integer(attempt.channel_id);
        out.0.push(',');
        out.string_unless_same(attempt.channel_name, fields.channel_name);
        out.0.push(',');
        out.integer(attempt.key_id);
        out.0.push(',');
        out.string(attempt.base_url);
        out.0.push(',');
        out.string_unless_same(attempt.model, fields.model);
        out.0.push(',');
        out.string(attempt.outcome);
        out.0.push(',');
        out.optional_integer(attempt.status.map(i64::from));
        out.0.push(',');
        out.integer(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX));
        out.0.push(']');
    }
    out.0.push_str("]]");
}

/// JSON text appended piece by piece.
struct DetailWriter<'text>(&'text mut String);

impl DetailWriter<'_> {
    /// A JSON string literal.
    #[inline]
    fn string(&mut self, text: &str) {
        if needs_escaping(text.as_bytes()) {
            self.0.push_str(&serde_json::to_string(text).expect("a string is always serialisable"));
        } else {
            self.0.push('"');
            self.0.push_str(text);
            self.0.push('"');
        }
    }

    /// `null` when `text` is the log's own value (`same_as`), which the reader puts back.
    #[inline]
    fn string_unless_same(&mut self, text: &str, same_as: &str) {
        if text == same_as {
            self.0.push_str("null");
        } else {
            self.string(text);
        }
    }

    fn optional_integer(&mut self, number: Option<i64>) {
        match number {
            Some(number) => self.integer(number),
            None => self.0.push_str("null"),
        }
    }

    /// Decimal digits of an integer, without the formatting machinery of `write!`.
    #[inline]
    fn integer(&mut self, number: i64) {
        if (0..10).contains(&number) {
            // Token counts of zero and single-digit flags are the most common numbers here.
            self.0.push(char::from(b'0' + number as u8));
            return;
        }
        if number < 0 {
            self.0.push('-');
        }
        crate::util::push_decimal_text(self.0, number.unsigned_abs());
    }
}

/// Whether a JSON string literal of these bytes needs escapes: a quote, a backslash or a control
/// character. Checked eight bytes at a time (the usual bit tricks for "some byte is below n" and
/// "some byte equals c"), since every string of every log passes through here.
fn needs_escaping(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return bytes.iter().any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\');
    }
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        if word_needs_escaping(u64::from_le_bytes(chunk.try_into().expect("chunks of eight"))) {
            return true;
        }
    }
    // The last partial chunk is checked as the last eight bytes, overlapping checked ones.
    !chunks.remainder().is_empty()
        && word_needs_escaping(u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().expect("eight bytes")))
}

/// Whether any of the eight bytes of `word` is a control character, a quote or a backslash.
#[inline]
fn word_needs_escaping(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    // A byte below 0x20 (its high bit clear) borrows when 0x20 is subtracted from it; a byte
    // equal to c becomes zero when XORed with c, and a zero byte borrows when 1 is subtracted.
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let zero_in = |value: u64| value.wrapping_sub(ONES) & !value;
    (control | zero_in(quote) | zero_in(backslash)) & HIGH_BITS != 0
}

/// Fills the fields of `log` kept in its `detail` text.
pub fn decode_into(text: &str, log: &mut RequestLog) -> StoreResult<()> {
    let detail: DetailIn = serde_json::from_str(text)
        .map_err(|error| StoreError::Backend(format!("request_logs.detail of log {} is not readable: {error}", log.id)))?;
    log.api_key_name = detail.0;
    log.channel_name = detail.1;
    log.model = detail.2;
    log.client_format = detail.3;
    log.status_code = detail.4;
    log.attempts = detail.5;
    log.input_tokens = detail.6;
    log.output_tokens = detail.7;
    log.cache_read_tokens = detail.8;
    log.cache_write_tokens = detail.9;
    log.reasoning_tokens = detail.10;
    log.cost_micros = detail.11;
    log.ttft_ms = detail.12;
    log.latency_ms = detail.13;
    log.stream = detail.14 != 0;
    log.error = detail.15;
    log.attempt_details =
        detail.16.into_iter().map(|attempt| attempt.into_attempt(&log.channel_name, &log.model)).collect();
    Ok(())
}

#[derive(Deserialize)]
struct DetailIn(
    String,
    String,
    String,
    String,
    u16,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    i64,
    u8,
    String,
    Vec<AttemptIn>,
);

/// An attempt as this version writes it (channel name and model `null` when they are the
/// log's), or as the wide table kept it (an object).
#[derive(Deserialize)]
#[serde(untagged)]
enum AttemptIn {
    Positional(i64, Option<String>, i64, String, Option<String>, String, Option<u16>, u64),
    Named(LoggedAttempt),
}

impl AttemptIn {
    /// The attempt, with a left-out channel name or model taken from its log.
    fn into_attempt(self, log_channel_name: &str, log_model: &str) -> LoggedAttempt {
        match self {
            AttemptIn::Positional(channel_id, channel_name, key_id, base_url, model, outcome, status, duration_ms) => {
                LoggedAttempt {
                    channel_id,
                    channel_name: channel_name.unwrap_or_else(|| log_channel_name.to_string()),
                    key_id,
                    base_url,
                    model: model.unwrap_or_else(|| log_model.to_string()),
                    outcome,
                    status,
                    duration_ms,
                }
            }
            AttemptIn::Named(attempt) => attempt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_log() -> RequestLog {
        RequestLog {
            id: 7,
            time_ms: 1_780_000_000_000,
            api_key_id: Some(3),
            api_key_name: "laptop \"quoted\"".to_string(),
            group: "smart".to_string(),
            channel_id: Some(2),
            channel_name: "openai ✓".to_string(),
            model: "gpt-4o-mini".to_string(),
            client_format: "openai_chat".to_string(),
            status_code: 200,
            success: true,
            attempts: 2,
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 4,
            cache_write_tokens: 1,
            reasoning_tokens: 2,
            cost_micros: 20_000,
            ttft_ms: None,
            latency_ms: 123,
            stream: true,
            error: "line\nbreak".to_string(),
            attempt_details: vec![
                LoggedAttempt {
                    channel_id: 2,
                    channel_name: "openai ✓".to_string(),
                    key_id: 9,
                    base_url: "http://127.0.0.1:9/v1".to_string(),
                    model: "gpt-4o-mini".to_string(),
                    outcome: "rate_limited".to_string(),
                    status: Some(429),
                    duration_ms: 4,
                },
                LoggedAttempt { outcome: "success".to_string(), status: None, ..LoggedAttempt::default() },
            ],
            request_body: None,
            response_body: None,
        }
    }

    #[test]
    fn every_detail_field_reads_back() {
        let log = sample_log();
        let text = encode_log(&log);
        let mut read = RequestLog { id: log.id, time_ms: log.time_ms, api_key_id: log.api_key_id, group: log.group.clone(), channel_id: log.channel_id, success: log.success, ..RequestLog::default() };
        decode_into(&text, &mut read).unwrap();
        assert_eq!(read, log);
    }

    #[test]
    fn the_layout_is_positional() {
        let text = encode_log(&sample_log());
        assert!(text.starts_with(r#"["laptop \"quoted\"","openai ✓","gpt-4o-mini","openai_chat",200,2,10,5,4,1,2,20000,null,123,1,"line\nbreak",[[2,"#), "{text}");
    }

    #[test]
    fn extreme_numbers_and_escapes_are_valid_json() {
        let mut log = sample_log();
        log.cost_micros = i64::MIN;
        log.latency_ms = i64::MAX;
        log.error = "tab\t, quote \", backslash \\, bell \u{7}".to_string();
        log.attempt_details[0].duration_ms = u64::MAX;
        let text = encode_log(&log);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed[11], serde_json::json!(i64::MIN));
        assert_eq!(parsed[13], serde_json::json!(i64::MAX));
        let mut read = RequestLog::default();
        decode_into(&text, &mut read).unwrap();
        assert_eq!(read.error, log.error);
        assert_eq!(read.attempt_details[0].duration_ms, i64::MAX as u64);
        let empty = RequestLog { attempt_details: Vec::new(), ..log };
        assert!(encode_log(&empty).ends_with(",[]]"));
    }

    #[test]
    fn the_escape_check_agrees_with_the_plain_one_for_every_byte_at_every_position() {
        let plain = |bytes: &[u8]| bytes.iter().any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\');
        for length in [1, 7, 8, 9, 16, 23] {
            for position in 0..length {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; length];
                    bytes[position] = byte;
                    assert_eq!(needs_escaping(&bytes), plain(&bytes), "byte {byte:#04x} at {position} of {length}");
                }
            }
        }
        assert!(!needs_escaping("é ✓ ünïcödé text without escapes".as_bytes()));
    }

    #[test]
    fn an_attempt_leaves_out_the_channel_name_and_model_it_shares_with_its_log() {
        let mut log = sample_log();
        log.attempt_details[1].channel_name = "anthropic".to_string();
        log.attempt_details[1].model = "claude".to_string();
        let text = encode_log(&log);
        assert!(text.ends_with(r#"[[2,null,9,"http://127.0.0.1:9/v1",null,"rate_limited",429,4],[0,"anthropic",0,"","claude","success",null,0]]]"#), "{text}");
        let mut read = RequestLog { id: log.id, time_ms: log.time_ms, api_key_id: log.api_key_id, group: log.group.clone(), channel_id: log.channel_id, success: log.success, ..RequestLog::default() };
        decode_into(&text, &mut read).unwrap();
        assert_eq!(read, log);
    }

    #[test]
    fn attempts_written_with_every_name_still_read() {
        let text = r#"["k","c","m","openai_chat",200,1,0,0,0,0,0,0,null,9,0,"",[[1,"other",4,"u","other-model","success",200,9]]]"#;
        let mut log = RequestLog::default();
        decode_into(text, &mut log).unwrap();
        assert_eq!(log.attempt_details[0].channel_name, "other");
        assert_eq!(log.attempt_details[0].model, "other-model");
    }

    #[test]
    fn attempts_of_migrated_rows_are_objects() {
        let text = r#"["k","c","m","anthropic",502,1,0,0,0,0,0,0,null,9,0,"boom",[{"channel_id":1,"channel_name":"c","key_id":4,"base_url":"u","model":"m","outcome":"upstream_error","status":502,"duration_ms":9}]]"#;
        let mut log = RequestLog::default();
        decode_into(text, &mut log).unwrap();
        assert_eq!(log.attempt_details[0].key_id, 4);
        assert_eq!(log.attempt_details[0].status, Some(502));
        assert_eq!(log.error, "boom");
        assert!(!log.stream);
    }

    #[test]
    fn an_unreadable_detail_names_the_log() {
        let mut log = RequestLog { id: 42, ..RequestLog::default() };
        let error = decode_into("[1,2]", &mut log).unwrap_err().to_string();
        assert!(error.contains("log 42"), "{error}");
    }
}
