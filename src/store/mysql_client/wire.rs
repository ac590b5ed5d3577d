//! MySQL's client/server protocol: packet framing, length-encoded values, the server's
//! greeting, OK and ERR packets, and text result rows.

use std::io::{self, Read};

/// A packet's payload is at most this long; a longer one continues in the next packet.
const LARGEST_PAYLOAD: usize = 0xff_ffff;
/// The largest logical packet accepted from the server (a row of a stored response fits).
const LARGEST_MESSAGE_BYTES: usize = 256 << 20;

/// Reads one logical packet (joining the parts of a long one) and checks its sequence number.
pub fn read_packet(reader: &mut impl Read, sequence: &mut u8) -> io::Result<Vec<u8>> {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 4];
        reader.read_exact(&mut header)?;
        let length = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        if header[3] != *sequence {
            return Err(invalid(format!("packet sequence {} where {} was due", header[3], sequence)));
        }
        *sequence = sequence.wrapping_add(1);
        if payload.len() + length > LARGEST_MESSAGE_BYTES {
            return Err(invalid(format!("a server packet of more than {LARGEST_MESSAGE_BYTES} bytes")));
        }
        let start = payload.len();
        payload.resize(start + length, 0);
        reader.read_exact(&mut payload[start..])?;
        if length < LARGEST_PAYLOAD {
            return Ok(payload);
        }
    }
}

/// Frames `payload` as packets (split at 16 MiB) onto `out`, advancing `sequence`.
pub fn write_packet(out: &mut Vec<u8>, payload: &[u8], sequence: &mut u8) {
    let mut chunks = payload.chunks(LARGEST_PAYLOAD).peekable();
    if payload.is_empty() {
        out.extend_from_slice(&[0, 0, 0, *sequence]);
        *sequence = sequence.wrapping_add(1);
        return;
    }
    while let Some(chunk) = chunks.next() {
        let length = chunk.len() as u32;
        out.extend_from_slice(&length.to_le_bytes()[..3]);
        out.push(*sequence);
        *sequence = sequence.wrapping_add(1);
        out.extend_from_slice(chunk);
        // A payload that is an exact multiple of the limit ends with an empty packet.
        if chunks.peek().is_none() && chunk.len() == LARGEST_PAYLOAD {
            out.extend_from_slice(&[0, 0, 0, *sequence]);
            *sequence = sequence.wrapping_add(1);
        }
    }
}

pub fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads the fields of a packet payload in order.
pub struct PayloadReader<'payload> {
    pub rest: &'payload [u8],
}

impl<'payload> PayloadReader<'payload> {
    pub fn new(payload: &'payload [u8]) -> PayloadReader<'payload> {
        PayloadReader { rest: payload }
    }

    pub fn bytes(&mut self, count: usize) -> io::Result<&'payload [u8]> {
        if self.rest.len() < count {
            return Err(invalid("a server packet is shorter than its fields".to_owned()));
        }
        let (taken, rest) = self.rest.split_at(count);
        self.rest = rest;
        Ok(taken)
    }

    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> io::Result<u16> {
        let bytes = self.bytes(2)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    pub fn u32(&mut self) -> io::Result<u32> {
        let bytes = self.bytes(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A NUL-terminated string (or the rest, if there is no NUL).
    pub fn c_bytes(&mut self) -> &'payload [u8] {
        match self.rest.iter().position(|byte| *byte == 0) {
            Some(end) => {
                let text = &self.rest[..end];
                self.rest = &self.rest[end + 1..];
                text
            }
            None => std::mem::take(&mut self.rest),
        }
    }

    /// A length-encoded integer; `None` for the NULL marker (0xfb).
    pub fn length_encoded(&mut self) -> io::Result<Option<u64>> {
        let first = self.u8()?;
        Ok(Some(match first {
            0xfb => return Ok(None),
            0xfc => self.u16()? as u64,
            0xfd => {
                let bytes = self.bytes(3)?;
                u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]) as u64
            }
            0xfe => {
                let bytes = self.bytes(8)?;
                u64::from_le_bytes(bytes.try_into().expect("eight bytes"))
            }
            0xff => return Err(invalid("a length starts with 0xff".to_owned())),
            small => small as u64,
        }))
    }

    /// A length-encoded string; `None` for NULL.
    pub fn length_encoded_bytes(&mut self) -> io::Result<Option<&'payload [u8]>> {
        match self.length_encoded()? {
            Some(length) => {
                let length = usize::try_from(length).map_err(|_| invalid("a huge length".to_owned()))?;
                self.bytes(length).map(Some)
            }
            None => Ok(None),
        }
    }
}

/// Appends `value` as a length-encoded integer.
pub fn put_length_encoded(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=250 => out.push(value as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(value as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(value as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

/// The server's greeting (protocol version 10).
#[derive(Debug)]
pub struct Greeting {
    pub server_version: String,
    pub capabilities: u32,
    /// The 20-byte nonce for the password proof.
    pub nonce: Vec<u8>,
    pub auth_plugin: String,
}

pub fn parse_greeting(payload: &[u8]) -> io::Result<Greeting> {
    let mut reader = PayloadReader::new(payload);
    let protocol = reader.u8()?;
    if protocol == 0xff {
        return Err(invalid(format!("the server refused the connection: {}", ServerError::parse(payload)?)));
    }
    if protocol != 10 {
        return Err(invalid(format!("server protocol version {protocol}; only 10 is spoken")));
    }
    let server_version = String::from_utf8_lossy(reader.c_bytes()).into_owned();
    let _connection_id = reader.u32()?;
    let mut nonce = reader.bytes(8)?.to_vec();
    reader.u8()?;
    let mut capabilities = reader.u16()? as u32;
    let mut auth_plugin = "mysql_native_password".to_owned();
    if !reader.rest.is_empty() {
        let _character_set = reader.u8()?;
        let _status = reader.u16()?;
        capabilities |= (reader.u16()? as u32) << 16;
        let nonce_length = reader.u8()? as usize;
        reader.bytes(10)?;
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let rest_length = nonce_length.saturating_sub(8).max(13);
            let second_part = reader.bytes(rest_length.min(reader.rest.len()))?;
            // The second part ends with a NUL that is not part of the nonce.
            nonce.extend_from_slice(second_part.strip_suffix(&[0]).unwrap_or(second_part));
        }
        if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            auth_plugin = String::from_utf8_lossy(reader.c_bytes()).into_owned();
        }
    }
    Ok(Greeting { server_version, capabilities, nonce, auth_plugin })
}

pub const CLIENT_LONG_PASSWORD: u32 = 1;
pub const CLIENT_FOUND_ROWS: u32 = 2;
pub const CLIENT_CONNECT_WITH_DB: u32 = 8;
pub const CLIENT_PROTOCOL_41: u32 = 0x200;
pub const CLIENT_TRANSACTIONS: u32 = 0x2000;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
pub const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x20_0000;

/// The status flag saying the session treats backslash as an ordinary character in strings.
pub const SERVER_STATUS_NO_BACKSLASH_ESCAPES: u16 = 0x200;

/// utf8mb4 with its general collation: every Unicode character, one byte per ASCII character.
pub const UTF8MB4_GENERAL_CI: u8 = 45;

/// An OK packet's counts and status.
#[derive(Debug, Default, PartialEq)]
pub struct OkPacket {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
}

pub fn parse_ok(payload: &[u8]) -> io::Result<OkPacket> {
    let mut reader = PayloadReader::new(payload);
    reader.u8()?;
    let affected_rows = reader.length_encoded()?.unwrap_or(0);
    let last_insert_id = reader.length_encoded()?.unwrap_or(0);
    let status = reader.u16()?;
    Ok(OkPacket { affected_rows, last_insert_id, status })
}

/// An ERR packet: the server's error code, SQLSTATE and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerError {
    pub code: u16,
    pub state: String,
    pub message: String,
}

impl ServerError {
    pub fn parse(payload: &[u8]) -> io::Result<ServerError> {
        let mut reader = PayloadReader::new(payload);
        reader.u8()?;
        let code = reader.u16()?;
        let mut state = String::new();
        if reader.rest.first() == Some(&b'#') {
            reader.u8()?;
            state = String::from_utf8_lossy(reader.bytes(5)?).into_owned();
        }
        let message = String::from_utf8_lossy(reader.rest).into_owned();
        Ok(ServerError { code, state, message })
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ERROR {} ({}): {}", self.code, self.state, self.message)
    }
}

/// Whether `payload` is an EOF packet (0xfe and short; a long 0xfe packet is a row or an
/// auth switch, by context).
pub fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xfe) && payload.len() < 9
}

/// The columns of a text result row: `None` for NULL. Bytes that are not UTF-8 are an error
/// (the session's character set is utf8mb4).
pub fn text_row(payload: &[u8], column_count: usize) -> io::Result<Vec<Option<String>>> {
    let mut reader = PayloadReader::new(payload);
    let mut columns = Vec::with_capacity(column_count);
    for _ in 0..column_count {
        let column = match reader.length_encoded_bytes()? {
            Some(bytes) => Some(
                std::str::from_utf8(bytes)
                    .map_err(|_| invalid("a column's text is not UTF-8".to_owned()))?
                    .to_owned(),
            ),
            None => None,
        };
        columns.push(column);
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_check_their_sequence() {
        let mut out = Vec::new();
        let mut sequence = 0;
        write_packet(&mut out, b"\x03SELECT 1", &mut sequence);
        assert_eq!(out, b"\x09\0\0\0\x03SELECT 1");
        assert_eq!(sequence, 1);
        let mut reading_sequence = 0;
        assert_eq!(read_packet(&mut &out[..], &mut reading_sequence).unwrap(), b"\x03SELECT 1");
        let mut wrong_sequence = 3;
        assert!(read_packet(&mut &out[..], &mut wrong_sequence).is_err());
    }

    #[test]
    fn a_payload_over_16_mib_is_split_and_joined() {
        let payload = vec![7u8; LARGEST_PAYLOAD + 5];
        let mut out = Vec::new();
        let mut sequence = 0;
        write_packet(&mut out, &payload, &mut sequence);
        assert_eq!(sequence, 2);
        let mut reading_sequence = 0;
        assert_eq!(read_packet(&mut &out[..], &mut reading_sequence).unwrap(), payload);

        let exact = vec![1u8; LARGEST_PAYLOAD];
        let mut out = Vec::new();
        let mut sequence = 0;
        write_packet(&mut out, &exact, &mut sequence);
        assert_eq!(sequence, 2, "an exact multiple ends with an empty packet");
        let mut reading_sequence = 0;
        assert_eq!(read_packet(&mut &out[..], &mut reading_sequence).unwrap().len(), LARGEST_PAYLOAD);
    }

    #[test]
    fn length_encoded_integers_round_trip() {
        for value in [0u64, 250, 251, 0xffff, 0x1_0000, 0xff_ffff, 0x100_0000, u64::MAX] {
            let mut out = Vec::new();
            put_length_encoded(&mut out, value);
            assert_eq!(PayloadReader::new(&out).length_encoded().unwrap(), Some(value));
        }
        assert_eq!(PayloadReader::new(&[0xfb]).length_encoded().unwrap(), None);
        assert!(PayloadReader::new(&[0xfc, 1]).length_encoded().is_err());
    }

    #[test]
    fn a_mariadb_greeting_is_read() {
        let mut payload = vec![10];
        payload.extend_from_slice(b"5.5.5-10.11.19-MariaDB\0");
        payload.extend_from_slice(&42u32.to_le_bytes());
        payload.extend_from_slice(b"abcdefgh\0");
        payload.extend_from_slice(&0xf7feu16.to_le_bytes());
        payload.push(45);
        payload.extend_from_slice(&2u16.to_le_bytes());
        payload.extend_from_slice(&0x81bfu16.to_le_bytes());
        payload.push(21);
        payload.extend_from_slice(&[0; 10]);
        payload.extend_from_slice(b"ijklmnopqrst\0");
        payload.extend_from_slice(b"mysql_native_password\0");
        let greeting = parse_greeting(&payload).unwrap();
        assert_eq!(greeting.server_version, "5.5.5-10.11.19-MariaDB");
        assert_eq!(greeting.nonce, b"abcdefghijklmnopqrst");
        assert_eq!(greeting.auth_plugin, "mysql_native_password");
        assert_ne!(greeting.capabilities & CLIENT_PLUGIN_AUTH, 0);
    }

    #[test]
    fn ok_and_error_packets_are_read() {
        let ok = parse_ok(b"\x00\x03\xfc\x00\x01\x02\x02\x00\x00").unwrap();
        assert_eq!(ok, OkPacket { affected_rows: 3, last_insert_id: 256, status: 0x202 });
        let error = ServerError::parse(b"\xff\x26\x04#23000Duplicate entry 'a' for key 'name'").unwrap();
        assert_eq!((error.code, error.state.as_str()), (1062, "23000"));
        assert_eq!(error.message, "Duplicate entry 'a' for key 'name'");
    }

    #[test]
    fn text_rows_keep_nulls() {
        let row = text_row(b"\x02ab\xfb\x00", 3).unwrap();
        assert_eq!(row, vec![Some("ab".to_owned()), None, Some(String::new())]);
        assert!(text_row(b"\x05ab", 1).is_err());
        assert!(is_eof(b"\xfe\0\0\x02\0"));
        assert!(!is_eof(b"\x00"));
    }
}
