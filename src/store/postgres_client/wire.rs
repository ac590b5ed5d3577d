//! PostgreSQL's frontend/backend protocol 3.0: building the client's messages and reading the
//! server's, over any byte stream.

use std::io::{self, BufRead};

/// The largest server message accepted: a row of the biggest stored response (capped far below
/// this) fits; a corrupt length does not make us allocate gigabytes.
const LARGEST_MESSAGE_BYTES: usize = 256 << 20;

/// Appends the client's messages to one buffer, so a query goes out in one write.
#[derive(Default)]
pub struct MessageWriter {
    pub buffer: Vec<u8>,
}

impl MessageWriter {
    /// Starts a message of `kind`; `finish_message` fills in its length.
    fn begin(&mut self, kind: u8) -> usize {
        self.buffer.push(kind);
        let length_at = self.buffer.len();
        self.buffer.extend_from_slice(&[0; 4]);
        length_at
    }

    fn finish_message(&mut self, length_at: usize) {
        let length = (self.buffer.len() - length_at) as u32;
        self.buffer[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
    }

    fn c_string(&mut self, text: &str) {
        self.buffer.extend_from_slice(text.as_bytes());
        self.buffer.push(0);
    }

    /// The startup message: protocol 3.0 and the session's parameters.
    pub fn startup(&mut self, parameters: &[(&str, &str)]) {
        let length_at = self.buffer.len();
        self.buffer.extend_from_slice(&[0; 4]);
        self.buffer.extend_from_slice(&196_608u32.to_be_bytes());
        for (name, value) in parameters {
            self.c_string(name);
            self.c_string(value);
        }
        self.buffer.push(0);
        self.finish_message(length_at);
    }

    /// A password message: a plain or MD5-hashed password, or a SASL response's bytes.
    pub fn password(&mut self, password: &[u8]) {
        let length_at = self.begin(b'p');
        self.buffer.extend_from_slice(password);
        self.finish_message(length_at);
    }

    pub fn password_c_string(&mut self, password: &str) {
        let length_at = self.begin(b'p');
        self.c_string(password);
        self.finish_message(length_at);
    }

    pub fn sasl_initial_response(&mut self, mechanism: &str, data: &[u8]) {
        let length_at = self.begin(b'p');
        self.c_string(mechanism);
        self.buffer.extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.buffer.extend_from_slice(data);
        self.finish_message(length_at);
    }

    /// A simple query: one or more statements, no parameters.
    pub fn simple_query(&mut self, sql: &str) {
        let length_at = self.begin(b'Q');
        self.c_string(sql);
        self.finish_message(length_at);
    }

    /// Parse, Bind, Execute and Sync of `sql` as the unnamed statement, every parameter and
    /// every result column in text form. Parameters are sent untyped, so the server infers
    /// each from its use, as it does for a literal.
    pub fn extended_query(&mut self, sql: &str, parameters: &[Option<&str>]) {
        let length_at = self.begin(b'P');
        self.c_string("");
        self.c_string(sql);
        self.buffer.extend_from_slice(&0u16.to_be_bytes());
        self.finish_message(length_at);

        let length_at = self.begin(b'B');
        self.c_string("");
        self.c_string("");
        self.buffer.extend_from_slice(&0u16.to_be_bytes());
        self.buffer.extend_from_slice(&(parameters.len() as u16).to_be_bytes());
        for parameter in parameters {
            match parameter {
                Some(text) => {
                    self.buffer.extend_from_slice(&(text.len() as u32).to_be_bytes());
                    self.buffer.extend_from_slice(text.as_bytes());
                }
                None => self.buffer.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        self.buffer.extend_from_slice(&0u16.to_be_bytes());
        self.finish_message(length_at);

        let length_at = self.begin(b'E');
        self.c_string("");
        self.buffer.extend_from_slice(&0u32.to_be_bytes());
        self.finish_message(length_at);

        let length_at = self.begin(b'S');
        self.finish_message(length_at);
    }

    pub fn terminate(&mut self) {
        let length_at = self.begin(b'X');
        self.finish_message(length_at);
    }
}

/// One message from the server: its type byte and body.
#[derive(Debug)]
pub struct BackendMessage {
    pub kind: u8,
    pub body: Vec<u8>,
}

/// Reads the next message; an EOF in the middle or before it is an `UnexpectedEof` error.
pub fn read_message(reader: &mut impl BufRead) -> io::Result<BackendMessage> {
    let mut header = [0u8; 5];
    reader.read_exact(&mut header)?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=LARGEST_MESSAGE_BYTES).contains(&length) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a server message claims {length} bytes")));
    }
    let mut body = vec![0u8; length - 4];
    reader.read_exact(&mut body)?;
    Ok(BackendMessage { kind: header[0], body })
}

/// Reads the fields of a server message body in order.
pub struct BodyReader<'body> {
    rest: &'body [u8],
}

impl<'body> BodyReader<'body> {
    pub fn new(body: &'body [u8]) -> BodyReader<'body> {
        BodyReader { rest: body }
    }

    fn take(&mut self, count: usize) -> io::Result<&'body [u8]> {
        if self.rest.len() < count {
            return Err(truncated());
        }
        let (taken, rest) = self.rest.split_at(count);
        self.rest = rest;
        Ok(taken)
    }

    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> io::Result<u16> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> io::Result<i32> {
        let bytes = self.take(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn bytes(&mut self, count: usize) -> io::Result<&'body [u8]> {
        self.take(count)
    }

    pub fn rest(&mut self) -> &'body [u8] {
        std::mem::take(&mut self.rest)
    }

    /// A NUL-terminated string (lossy UTF-8: only messages and names come this way).
    pub fn c_string(&mut self) -> io::Result<String> {
        let end = self.rest.iter().position(|byte| *byte == 0).ok_or_else(truncated)?;
        let text = String::from_utf8_lossy(&self.rest[..end]).into_owned();
        self.rest = &self.rest[end + 1..];
        Ok(text)
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "a server message is shorter than its fields")
}

/// The fields of an ErrorResponse or NoticeResponse, by their one-byte codes.
pub fn error_fields(body: &[u8]) -> io::Result<Vec<(u8, String)>> {
    let mut reader = BodyReader::new(body);
    let mut fields = Vec::new();
    loop {
        let code = reader.u8()?;
        if code == 0 {
            return Ok(fields);
        }
        fields.push((code, reader.c_string()?));
    }
}

/// The columns of a DataRow: `None` for NULL, else the value's text (the session's encoding is
/// UTF-8; bytes that are not are an error, not silently replaced).
pub fn data_row(body: &[u8]) -> io::Result<Vec<Option<String>>> {
    let mut reader = BodyReader::new(body);
    let count = reader.u16()?;
    let mut columns = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let length = reader.i32()?;
        if length < 0 {
            columns.push(None);
            continue;
        }
        let bytes = reader.bytes(length as usize)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a column's text is not UTF-8"))?;
        columns.push(Some(text.to_owned()));
    }
    Ok(columns)
}

/// The rows a command touched, from its CommandComplete tag (`INSERT 0 3`, `UPDATE 2`,
/// `DELETE 1`, `SELECT 5`); 0 for tags without a count (`CREATE TABLE`).
pub fn affected_rows(tag: &str) -> u64 {
    tag.rsplit(' ').next().and_then(|last| last.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extended_query_is_framed_as_protocol_3() {
        let mut writer = MessageWriter::default();
        writer.extended_query("SELECT $1", &[Some("7"), None]);
        let expected: Vec<u8> = [
            &b"P\0\0\0\x11\0SELECT $1\0\0\0"[..],
            b"B\0\0\0\x15\0\0\0\0\0\x02\0\0\0\x017\xff\xff\xff\xff\0\0",
            b"E\0\0\0\x09\0\0\0\0\0",
            b"S\0\0\0\x04",
        ]
        .concat();
        assert_eq!(writer.buffer, expected);
    }

    #[test]
    fn startup_carries_the_protocol_version_and_parameters() {
        let mut writer = MessageWriter::default();
        writer.startup(&[("user", "u")]);
        assert_eq!(writer.buffer, b"\0\0\0\x10\0\x03\0\0user\0u\0\0");
    }

    #[test]
    fn messages_are_read_whole_from_any_split() {
        let stream: Vec<u8> = [&b"C\0\0\0\x0fINSERT 0 1\0"[..], b"Z\0\0\0\x05I"].concat();
        let mut reader = io::BufReader::with_capacity(1, &stream[..]);
        let complete = read_message(&mut reader).unwrap();
        assert_eq!((complete.kind, complete.body.as_slice()), (b'C', &b"INSERT 0 1\0"[..]));
        let ready = read_message(&mut reader).unwrap();
        assert_eq!((ready.kind, ready.body.as_slice()), (b'Z', &b"I"[..]));
        assert_eq!(read_message(&mut reader).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut short = io::BufReader::new(&b"C\0\0\0\x02"[..]);
        assert_eq!(read_message(&mut short).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn data_rows_keep_nulls_and_refuse_bad_lengths() {
        let row = data_row(b"\0\x03\0\0\0\x02ab\xff\xff\xff\xff\0\0\0\0").unwrap();
        assert_eq!(row, vec![Some("ab".to_owned()), None, Some(String::new())]);
        assert!(data_row(b"\0\x01\0\0\0\x05ab").is_err());
        assert!(data_row(b"\0\x01\0\0\0\x01\xff").is_err());
    }

    #[test]
    fn command_tags_give_affected_rows() {
        assert_eq!(affected_rows("INSERT 0 3"), 3);
        assert_eq!(affected_rows("UPDATE 12"), 12);
        assert_eq!(affected_rows("CREATE TABLE"), 0);
        assert_eq!(affected_rows("BEGIN"), 0);
    }

    #[test]
    fn error_fields_are_read_by_code() {
        let fields = error_fields(b"SERROR\0C23505\0Mduplicate key\0\0").unwrap();
        assert_eq!(fields, vec![(b'S', "ERROR".to_owned()), (b'C', "23505".to_owned()), (b'M', "duplicate key".to_owned())]);
        assert!(error_fields(b"SERROR").is_err());
    }
}
