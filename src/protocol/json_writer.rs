//! Compact JSON from serde types, byte for byte what `serde_json::to_vec` writes, with less work
//! per string: the bodies a conversion writes are mostly member names and strings, and
//! serde_json's string writer was the largest single cost a converted request adds
//! over a pass-through one (callgrind: about 200 instructions per string, 50 strings per request).
//!
//! The difference is in how a string is written: serde_json looks every byte up in a table and
//! writes the quotes and each run between escapes through `io::Write`; here the bytes are scanned
//! eight at a time for anything that needs an escape, and the string goes into the output vector
//! with one reservation. Escapes are serde_json's: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and
//! `\u00xx` (lower-case hex) for the other control characters; nothing else is escaped.
//!
//! Used for whole request and response bodies (callgrind: 1.5% fewer instructions per converted
//! request). Streamed events stay with serde_json: an event's delta is a member name and a token
//! of a few bytes, and there this writer measured about 90 instructions per event more.
//!
//! Numbers are written by serde_json itself, so integers and floats (a non-finite float is
//! `null`) come out exactly as before. `serde_json::value::RawValue` is written verbatim,
//! recognised by the private struct name serde_json gives it (the unit tests fail if that name
//! changes).

use std::fmt::{self, Display};

use serde::ser::{self, Serialize};

use crate::protocol::raw_json::ESCAPED_IN_A_STRING;

/// The struct name through which `serde_json::value::RawValue` serialises its text.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Why a value could not be written as JSON: a map key that is not a string, number, bool or
/// char, or a custom `Serialize` implementation's own error.
#[derive(Debug)]
pub struct WriteError(String);

impl Display for WriteError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for WriteError {}

impl ser::Error for WriteError {
    fn custom<T: Display>(message: T) -> WriteError {
        WriteError(message.to_string())
    }
}

/// `value` as compact JSON.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, WriteError> {
    to_vec_sized(value, 256)
}

/// `value` as compact JSON, written into a buffer that starts with room for `expected_length`
/// bytes: a converted request is about as long as the client's, and a large one would otherwise
/// be copied through a dozen doublings of the buffer.
pub fn to_vec_sized<T: Serialize + ?Sized>(value: &T, expected_length: usize) -> Result<Vec<u8>, WriteError> {
    let mut out = Vec::with_capacity(expected_length);
    value.serialize(&mut JsonWriter { out: &mut out })?;
    Ok(out)
}

struct JsonWriter<'out> {
    out: &'out mut Vec<u8>,
}

impl<'out> JsonWriter<'out> {
    /// Starts an array or object (`opening`), inside `{"variant":` for an enum variant's
    /// fields; `closing` is written when it ends.
    fn open<'writer>(&'writer mut self, variant: Option<&str>, opening: u8, closing: &'static [u8]) -> Compound<'writer, 'out> {
        if let Some(variant) = variant {
            self.out.push(b'{');
            write_string(self.out, variant);
            self.out.push(b':');
        }
        self.out.push(opening);
        Compound { writer: self, first: true, closing, raw: false }
    }
}

/// Appends `text` as a JSON string, quotes included.
fn write_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut written = 0;
    while let Some(offset) = first_byte_to_escape(&bytes[written..]) {
        let at = written + offset;
        out.extend_from_slice(&bytes[written..at]);
        write_escape(out, bytes[at]);
        written = at + 1;
    }
    out.extend_from_slice(&bytes[written..]);
    out.push(b'"');
}

/// Appends a struct field's name as a JSON string and its colon. Field names are the most
/// frequent strings of a converted body, and they are identifiers that need no escape, so they
/// take one check and one copy; a name that does need escapes goes through `write_string`.
fn write_field_name(out: &mut Vec<u8>, name: &'static str) {
    if first_byte_to_escape(name.as_bytes()).is_some() {
        write_string(out, name);
        out.push(b':');
        return;
    }
    out.reserve(name.len() + 3);
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// The index of the first byte that JSON requires escaped (a control character, `"` or `\`).
fn first_byte_to_escape(bytes: &[u8]) -> Option<usize> {
    // Most member names and streamed tokens are shorter than a word: a table lookup per byte is
    // cheaper for them than padding a copy out to eight bytes.
    if bytes.len() < 8 {
        return position_of_byte_to_escape(bytes);
    }
    let word_at = |offset: usize| u64::from_ne_bytes(bytes[offset..offset + 8].try_into().expect("eight bytes"));
    let mut offset = 0;
    while offset + 8 <= bytes.len() {
        if word_has_byte_to_escape(word_at(offset)) {
            return position_of_byte_to_escape(&bytes[offset..offset + 8]).map(|index| offset + index);
        }
        offset += 8;
    }
    // The rest is tested with the last eight bytes, which overlap bytes already found clean: a
    // flag (the word test is exact about whether a byte matches) is in the rest.
    if offset < bytes.len() && word_has_byte_to_escape(word_at(bytes.len() - 8)) {
        return position_of_byte_to_escape(&bytes[offset..]).map(|index| offset + index);
    }
    None
}

/// Whether any of the eight bytes of `word` needs an escape. Standard SWAR tests, exact about
/// whether any byte matches: a byte below 0x20, and a byte equal to '"' or '\' (found as a zero
/// byte after the XOR). Bytes of 0x80 and up have their high bit set and are masked out of the
/// "below 0x20" test by `!word`.
fn word_has_byte_to_escape(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let zero_in_quote = quote.wrapping_sub(ONES) & !quote;
    let zero_in_backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | zero_in_quote | zero_in_backslash) & HIGH_BITS != 0
}

/// Which byte it is: the borrow in the word tests can flag a later byte too, so the bytes are
/// looked at one by one; the first match is exact.
fn position_of_byte_to_escape(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&byte| ESCAPED_IN_A_STRING[usize::from(byte)])
}

fn write_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
    let short = match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX_DIGITS[usize::from(byte >> 4)], HEX_DIGITS[usize::from(byte & 0xf)]]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

/// The integer methods of a serializer, each handing its value to `$write` (a closure-like
/// `|writer, value| expression` over the serializer and the number).
macro_rules! integers_through {
    (|$writer:ident: Self, $value:ident| $write:expr) => {
        integers_through!(@each |$writer, $value| $write;
            serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64, serialize_i128: i128,
            serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64, serialize_u128: u128);
    };
    (@each |$writer:ident, $value:ident| $write:expr; $($method:ident: $type:ty),*) => {
        $(
            #[allow(unused_variables)]
            fn $method(self, $value: $type) -> Result<(), WriteError> {
                let $writer = self;
                $write
            }
        )*
    };
}

/// `integers_through!`, and the two float methods too.
macro_rules! numbers_through {
    (|$writer:ident: Self, $value:ident| $write:expr) => {
        integers_through!(|$writer: Self, $value| $write);
        integers_through!(@each |$writer, $value| $write; serialize_f32: f32, serialize_f64: f64);
    };
}

/// Numbers go through serde_json, so their text is exactly its text.
fn write_number<N: Serialize>(out: &mut Vec<u8>, number: N) -> Result<(), WriteError> {
    serde_json::to_writer(out, &number).map_err(|error| WriteError(error.to_string()))
}

impl<'writer, 'out> ser::Serializer for &'writer mut JsonWriter<'out> {
    type Ok = ();
    type Error = WriteError;
    type SerializeSeq = Compound<'writer, 'out>;
    type SerializeTuple = Compound<'writer, 'out>;
    type SerializeTupleStruct = Compound<'writer, 'out>;
    type SerializeTupleVariant = Compound<'writer, 'out>;
    type SerializeMap = Compound<'writer, 'out>;
    type SerializeStruct = Compound<'writer, 'out>;
    type SerializeStructVariant = Compound<'writer, 'out>;

    numbers_through!(|writer: Self, value| write_number(writer.out, value));

    fn serialize_bool(self, value: bool) -> Result<(), WriteError> {
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        Ok(())
    }

    fn serialize_char(self, value: char) -> Result<(), WriteError> {
        write_string(self.out, value.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_str(self, value: &str) -> Result<(), WriteError> {
        write_string(self.out, value);
        Ok(())
    }

    fn serialize_bytes(self, value: &[u8]) -> Result<(), WriteError> {
        // serde_json writes bytes as an array of numbers.
        use ser::SerializeSeq;
        let mut seq = self.serialize_seq(Some(value.len()))?;
        for byte in value {
            seq.serialize_element(byte)?;
        }
        seq.end()
    }

    fn serialize_none(self) -> Result<(), WriteError> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), WriteError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), WriteError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), WriteError> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<(), WriteError> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<(), WriteError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), WriteError> {
        self.out.push(b'{');
        write_string(self.out, variant);
        self.out.push(b':');
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'writer, 'out>, WriteError> {
        Ok(self.open(None, b'[', b"]"))
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'writer, 'out>, WriteError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Compound<'writer, 'out>, WriteError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'writer, 'out>, WriteError> {
        Ok(self.open(Some(variant), b'[', b"]}"))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'writer, 'out>, WriteError> {
        Ok(self.open(None, b'{', b"}"))
    }

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Compound<'writer, 'out>, WriteError> {
        if name == RAW_VALUE_TOKEN {
            return Ok(Compound { writer: self, first: true, closing: b"", raw: true });
        }
        Ok(self.open(None, b'{', b"}"))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'writer, 'out>, WriteError> {
        Ok(self.open(Some(variant), b'{', b"}}"))
    }
}

/// An array, object or `RawValue` being written: `closing` is what `end` appends.
pub struct Compound<'writer, 'out> {
    writer: &'writer mut JsonWriter<'out>,
    first: bool,
    closing: &'static [u8],
    /// A `RawValue`: its one field is a string of JSON text, written as it is.
    raw: bool,
}

impl Compound<'_, '_> {
    fn separate(&mut self) {
        if !std::mem::replace(&mut self.first, false) {
            self.writer.out.push(b',');
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WriteError> {
        self.separate();
        value.serialize(&mut *self.writer)
    }

    fn member<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), WriteError> {
        if self.raw {
            return value.serialize(RawTextWriter { out: self.writer.out });
        }
        self.separate();
        write_field_name(self.writer.out, key);
        value.serialize(&mut *self.writer)
    }

    fn finish(self) -> Result<(), WriteError> {
        self.writer.out.extend_from_slice(self.closing);
        Ok(())
    }
}

/// The four array-like compounds (a sequence, a tuple, a tuple struct, a tuple variant's
/// fields): each element is written after a comma when it is not the first.
macro_rules! array_compound {
    ($($trait:ident :: $method:ident),*) => {
        $(
            impl ser::$trait for Compound<'_, '_> {
                type Ok = ();
                type Error = WriteError;

                fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WriteError> {
                    self.element(value)
                }

                fn end(self) -> Result<(), WriteError> {
                    self.finish()
                }
            }
        )*
    };
}

array_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = WriteError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), WriteError> {
        self.separate();
        key.serialize(MapKeyWriter { out: self.writer.out })?;
        self.writer.out.push(b':');
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WriteError> {
        value.serialize(&mut *self.writer)
    }

    fn end(self) -> Result<(), WriteError> {
        self.finish()
    }
}

/// A struct's and a struct variant's fields: `"name":value`, after a comma when not the first.
macro_rules! object_compound {
    ($($trait:ident),*) => {
        $(
            impl ser::$trait for Compound<'_, '_> {
                type Ok = ();
                type Error = WriteError;

                fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), WriteError> {
                    self.member(key, value)
                }

                fn end(self) -> Result<(), WriteError> {
                    self.finish()
                }
            }
        )*
    };
}

object_compound!(SerializeStruct, SerializeStructVariant);

fn key_must_be_a_string() -> WriteError {
    WriteError("key must be a string".to_string())
}

/// Writes a map key: strings as they are; chars, integers and bools quoted, as serde_json does.
struct MapKeyWriter<'out> {
    out: &'out mut Vec<u8>,
}

impl MapKeyWriter<'_> {
    fn quoted_number<N: Serialize>(self, number: N) -> Result<(), WriteError> {
        self.out.push(b'"');
        write_number(self.out, number)?;
        self.out.push(b'"');
        Ok(())
    }
}

/// The serializer methods a key or raw-text writer refuses, each with `$error`.
macro_rules! refuse_all_but_strings {
    ($error:expr) => {
        type SerializeSeq = ser::Impossible<(), WriteError>;
        type SerializeTuple = ser::Impossible<(), WriteError>;
        type SerializeTupleStruct = ser::Impossible<(), WriteError>;
        type SerializeTupleVariant = ser::Impossible<(), WriteError>;
        type SerializeMap = ser::Impossible<(), WriteError>;
        type SerializeStruct = ser::Impossible<(), WriteError>;
        type SerializeStructVariant = ser::Impossible<(), WriteError>;

        fn serialize_f32(self, _value: f32) -> Result<(), WriteError> {
            Err($error)
        }
        fn serialize_f64(self, _value: f64) -> Result<(), WriteError> {
            Err($error)
        }
        fn serialize_bytes(self, _value: &[u8]) -> Result<(), WriteError> {
            Err($error)
        }
        fn serialize_none(self) -> Result<(), WriteError> {
            Err($error)
        }
        fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), WriteError> {
            Err($error)
        }
        fn serialize_unit(self) -> Result<(), WriteError> {
            Err($error)
        }
        fn serialize_unit_struct(self, _name: &'static str) -> Result<(), WriteError> {
            Err($error)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _value: &T,
        ) -> Result<(), WriteError> {
            Err($error)
        }
        fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, WriteError> {
            Err($error)
        }
        fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, WriteError> {
            Err($error)
        }
        fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeTupleStruct, WriteError> {
            Err($error)
        }
        fn serialize_tuple_variant(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeTupleVariant, WriteError> {
            Err($error)
        }
        fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, WriteError> {
            Err($error)
        }
        fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeStruct, WriteError> {
            Err($error)
        }
        fn serialize_struct_variant(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeStructVariant, WriteError> {
            Err($error)
        }
    };
}

impl ser::Serializer for MapKeyWriter<'_> {
    type Ok = ();
    type Error = WriteError;

    refuse_all_but_strings!(key_must_be_a_string());
    integers_through!(|writer: Self, value| writer.quoted_number(value));

    fn serialize_str(self, value: &str) -> Result<(), WriteError> {
        write_string(self.out, value);
        Ok(())
    }

    fn serialize_char(self, value: char) -> Result<(), WriteError> {
        write_string(self.out, value.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<(), WriteError> {
        write_string(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<(), WriteError> {
        value.serialize(self)
    }

    fn serialize_bool(self, value: bool) -> Result<(), WriteError> {
        self.out.extend_from_slice(if value { b"\"true\"" } else { b"\"false\"" });
        Ok(())
    }
}

fn raw_value_is_text() -> WriteError {
    WriteError("a raw JSON value must be text".to_string())
}

/// Writes the text of a `RawValue` as it is: serde_json checked it was JSON when it was made.
struct RawTextWriter<'out> {
    out: &'out mut Vec<u8>,
}

impl ser::Serializer for RawTextWriter<'_> {
    type Ok = ();
    type Error = WriteError;

    refuse_all_but_strings!(raw_value_is_text());
    integers_through!(|_writer: Self, _value| Err(raw_value_is_text()));

    fn serialize_str(self, value: &str) -> Result<(), WriteError> {
        self.out.extend_from_slice(value.as_bytes());
        Ok(())
    }

    fn serialize_char(self, _value: char) -> Result<(), WriteError> {
        Err(raw_value_is_text())
    }

    fn serialize_unit_variant(self, _name: &'static str, _index: u32, _variant: &'static str) -> Result<(), WriteError> {
        Err(raw_value_is_text())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, _value: &T) -> Result<(), WriteError> {
        Err(raw_value_is_text())
    }

    fn serialize_bool(self, _value: bool) -> Result<(), WriteError> {
        Err(raw_value_is_text())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use serde::Serialize;
    use serde_json::value::RawValue;
    use serde_json::{Value, json};

    use super::*;

    /// Our bytes and serde_json's for `value`, which must be the same.
    fn assert_same_as_serde_json<T: Serialize + ?Sized>(value: &T) {
        let ours = to_vec(value).expect("writes");
        let theirs = serde_json::to_vec(value).expect("serde_json writes");
        assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
    }

    #[test]
    fn every_character_below_0x80_is_escaped_as_serde_json_escapes_it() {
        for byte in 0u8..0x80 {
            let text = format!("a{}b", char::from(byte));
            assert_same_as_serde_json(&text);
            // At every position of an eight-byte chunk and in the tail after it.
            for position in 0..20 {
                let mut text = "x".repeat(20);
                text.replace_range(position..position + 1, &char::from(byte).to_string());
                assert_same_as_serde_json(&text);
            }
        }
    }

    #[test]
    fn several_escapes_and_multibyte_text_in_one_string() {
        assert_same_as_serde_json("línea 1\nlínea 2\t\"citado\" \\ fin\u{1}\u{1f}\u{7f} 日本語 🐙");
        assert_same_as_serde_json("");
        assert_same_as_serde_json(&"\"".repeat(17));
        assert_same_as_serde_json(&"é".repeat(33));
    }

    /// The word tests, the overlapping last word and the short-string path against a plain
    /// search: every length up to 40, each byte that needs an escape (and a few that do not but
    /// sit next to them in value) at every position, with a second one after it.
    #[test]
    fn the_first_byte_to_escape_is_found_at_every_length_and_position() {
        let plain = |bytes: &[u8]| bytes.iter().position(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\');
        for length in 0..=40 {
            let clean: Vec<u8> = (0..length).map(|index| b"az09 ~!#[]{}\xc3\xa9"[index % 14]).collect();
            assert_eq!(first_byte_to_escape(&clean), None, "length {length}");
            for position in 0..length {
                for special in [0x00, 0x1f, b'"', b'\\', b'\n', 0x20, b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
                    let mut bytes = clean.clone();
                    bytes[position] = special;
                    if position + 3 < length {
                        bytes[position + 3] = b'"';
                    }
                    assert_eq!(first_byte_to_escape(&bytes), plain(&bytes), "length {length}, {special:#x} at {position}");
                }
            }
        }
    }

    #[test]
    fn a_field_name_that_needs_an_escape_still_gets_it() {
        #[derive(Serialize)]
        struct OddNames {
            plain: u8,
            #[serde(rename = "quote\"back\\slash\ttab")]
            odd: u8,
            #[serde(rename = "eight_by")]
            exactly_eight: u8,
        }
        assert_same_as_serde_json(&OddNames { plain: 1, odd: 2, exactly_eight: 3 });
    }

    #[test]
    fn numbers_are_serde_jsons_numbers() {
        for value in [json!(0), json!(-1), json!(i64::MIN), json!(u64::MAX), json!(0.1), json!(-0.0), json!(1e300), json!(2.5e-8), json!(1.0)] {
            assert_same_as_serde_json(&value);
        }
        assert_same_as_serde_json(&(f64::NAN, f64::INFINITY, f32::MIN_POSITIVE, 1.5f32, i128::MIN, u128::MAX));
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(u8, &'static str),
        Struct { side: f64, label: Option<&'static str> },
    }

    #[derive(Serialize)]
    struct Everything<'text> {
        flag: bool,
        nothing: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        #[serde(rename = "with \"quotes\"")]
        renamed: &'text str,
        shapes: Vec<Shape>,
        bytes: &'text [u8],
        unit: (),
        empty_list: Vec<u8>,
        empty_map: BTreeMap<String, u8>,
        number_keys: BTreeMap<i32, &'text str>,
        bool_keys: BTreeMap<bool, u8>,
        char_keys: BTreeMap<char, u8>,
        raw: &'text RawValue,
        value: Value,
    }

    #[test]
    fn structs_enums_maps_and_raw_values_are_written_as_serde_json_writes_them() {
        let raw = RawValue::from_string(r#"{"type":"object", "properties" : {}}"#.to_string()).unwrap();
        let everything = Everything {
            flag: true,
            nothing: None,
            skipped: None,
            renamed: "x",
            shapes: vec![Shape::Unit, Shape::Newtype(7), Shape::Tuple(1, "a"), Shape::Struct { side: 2.0, label: None }],
            bytes: b"\x00\xff",
            unit: (),
            empty_list: Vec::new(),
            empty_map: BTreeMap::new(),
            number_keys: BTreeMap::from([(-3, "minus three"), (10, "ten")]),
            bool_keys: BTreeMap::from([(false, 0), (true, 1)]),
            char_keys: BTreeMap::from([('"', 1), ('k', 2)]),
            raw: &raw,
            value: json!({"nested": [1, "two", null, {"three": [true]}], "": {}}),
        };
        assert_same_as_serde_json(&everything);
        assert_same_as_serde_json(&json!([[], {}, [[]], {"a": {}}]));
    }

    #[test]
    fn a_key_that_is_not_a_string_is_an_error() {
        let map = BTreeMap::from([(vec![1], 1)]);
        assert!(serde_json::to_vec(&map).is_err());
        assert_eq!(to_vec(&map).unwrap_err().to_string(), "key must be a string");
    }

    /// Every JSON document of the converter fixtures, read into a `Value` and written again.
    #[test]
    fn every_fixture_document_is_written_as_serde_json_writes_it() {
        let mut documents = 0;
        let mut directories = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol/testdata")];
        while let Some(directory) = directories.pop() {
            for entry in std::fs::read_dir(&directory).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    directories.push(path);
                } else if path.extension().is_some_and(|extension| extension == "json") {
                    let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                    assert_same_as_serde_json(&value);
                    documents += 1;
                }
            }
        }
        assert!(documents > 100, "only {documents} fixture documents were found");
    }
}
