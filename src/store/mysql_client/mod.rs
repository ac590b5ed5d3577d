//! A small blocking MySQL and MariaDB client: what the store needs of the protocol, nothing more.
//!
//! One connection over TCP (or a Unix socket), logged in with `mysql_native_password` or
//! `caching_sha2_password` (its first login over plain TCP encrypts the password with the
//! server's RSA key). Statements go as text (COM_QUERY) with their `?` parameters written in as
//! escaped literals, the way libmysqlclient's `mysql_real_escape_string` does, honouring the
//! session's NO_BACKSLASH_ESCAPES; results come back as text. It replaced the `mysql` crate,
//! whose mysql_common with the regex engine and its Unicode tables, url and idna, and num-bigint
//! were about 1.7 MB of the static binary (issue 11: a router binary). Like every store driver it
//! blocks, so it runs only on the store pool's std threads.

mod auth;
mod config;
mod wire;

use std::io::{self, BufReader};

pub use config::ConnectionConfig;
pub use wire::ServerError;

use crate::store::database_socket::DatabaseSocket;
pub use crate::store::text_row::FromColumnText;
use crate::store::client_error::ClientError;
use crate::store::text_row::TextRow;
use crate::store::transaction::{self, TransactionControl};
use crate::util::os_random_bytes;

/// Everything that can go wrong talking to the server.
pub type Error = ClientError<ServerError>;

/// A statement parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    NULL,
    Int(i64),
    Double(f64),
    Text(String),
}

impl From<i64> for Value {
    fn from(number: i64) -> Value {
        Value::Int(number)
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Value {
        Value::Int(i64::from(flag))
    }
}

impl From<f64> for Value {
    fn from(number: f64) -> Value {
        Value::Double(number)
    }
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::Text(text)
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value::Text(text.to_owned())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::NULL, Into::into)
    }
}

impl<T: Into<Value> + Clone> From<&T> for Value {
    fn from(value: &T) -> Value {
        value.clone().into()
    }
}

/// A statement's positional parameters.
pub struct Params(pub Vec<Value>);

impl From<Vec<Value>> for Params {
    fn from(values: Vec<Value>) -> Params {
        Params(values)
    }
}

impl From<()> for Params {
    fn from(_: ()) -> Params {
        Params(Vec::new())
    }
}

/// Parameters written as a tuple: `(id,)`, `(name, enabled, id)`.
macro_rules! params_from_tuple {
    ($($name:ident),+) => {
        impl<$($name: Into<Value>),+> From<($($name,)+)> for Params {
            #[allow(non_snake_case, reason = "the tuple's elements are named after their types")]
            fn from(($($name,)+): ($($name,)+)) -> Params {
                Params(vec![$($name.into()),+])
            }
        }
    };
}
params_from_tuple!(A);
params_from_tuple!(A, B);
params_from_tuple!(A, B, C);
params_from_tuple!(A, B, C, D);
params_from_tuple!(A, B, C, D, E);
params_from_tuple!(A, B, C, D, E, F);
params_from_tuple!(A, B, C, D, E, F, G);
params_from_tuple!(A, B, C, D, E, F, G, H);
params_from_tuple!(A, B, C, D, E, F, G, H, I);
params_from_tuple!(A, B, C, D, E, F, G, H, I, J);
params_from_tuple!(A, B, C, D, E, F, G, H, I, J, K);
params_from_tuple!(A, B, C, D, E, F, G, H, I, J, K, L);

/// One result row, its columns in text form.
pub type Row = TextRow<Error>;

/// What a row converts to: the `Row` itself, or its first column's value.
pub trait FromRow: Sized {
    fn from_row(row: Row) -> Result<Self, Error>;
}

impl FromRow for Row {
    fn from_row(row: Row) -> Result<Row, Error> {
        Ok(row)
    }
}

impl<T: FromColumnText> FromRow for T {
    fn from_row(row: Row) -> Result<T, Error> {
        row.get(0)
    }
}

/// A row read as a tuple of its first columns: `(String, i64)`.
macro_rules! row_to_tuple {
    ($($name:ident $index:tt),+) => {
        impl<$($name: FromColumnText),+> FromRow for ($($name,)+) {
            fn from_row(row: Row) -> Result<($($name,)+), Error> {
                Ok(($(row.get::<$name>($index)?,)+))
            }
        }
    };
}
row_to_tuple!(A 0, B 1);
row_to_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);

/// One connection. After an IO or protocol error it is closed for good; the store pool then
/// opens a new one.
pub struct Conn {
    reader: BufReader<DatabaseSocket>,
    output: Vec<u8>,
    sequence: u8,
    closed: bool,
    /// The server's status says backslashes are ordinary characters in string literals.
    no_backslash_escapes: bool,
    affected_rows: u64,
    last_insert_id: u64,
}

impl Conn {
    /// Connects and logs in.
    pub fn new(config: &ConnectionConfig) -> Result<Conn, Error> {
        let socket = match &config.socket {
            Some(path) => DatabaseSocket::connect_unix(path)?,
            None => DatabaseSocket::connect_tcp(&config.host, config.port, config.connect_timeout)?,
        };
        let mut connection = Conn {
            reader: BufReader::with_capacity(16 * 1024, socket),
            output: Vec::new(),
            sequence: 0,
            closed: false,
            no_backslash_escapes: false,
            affected_rows: 0,
            last_insert_id: 0,
        };
        connection.log_in(config)?;
        Ok(connection)
    }

    /// Rows matched by the last statement (`CLIENT_FOUND_ROWS`: an UPDATE that changes nothing
    /// still counts the rows it found).
    pub fn affected_rows(&self) -> u64 {
        self.affected_rows
    }

    /// The id the last INSERT generated.
    pub fn last_insert_id(&self) -> u64 {
        self.last_insert_id
    }

    /// Asks the server whether the connection still works.
    pub fn ping(&mut self) -> Result<(), Error> {
        self.command(&[COM_PING])?;
        self.read_result().map(|_| ())
    }

    /// Runs `sql` with its `?` parameters and returns the rows, converted.
    pub fn exec<T: FromRow>(&mut self, sql: impl AsRef<str>, parameters: impl Into<Params>) -> Result<Vec<T>, Error> {
        let statement = self.interpolate(sql.as_ref(), &parameters.into().0)?;
        self.query(statement)
    }

    /// Runs `sql` and returns its first row, if any, converted.
    pub fn exec_first<T: FromRow>(&mut self, sql: impl AsRef<str>, parameters: impl Into<Params>) -> Result<Option<T>, Error> {
        Ok(self.exec(sql, parameters)?.into_iter().next())
    }

    /// Runs `sql` and keeps only its counts (`affected_rows`, `last_insert_id`).
    pub fn exec_drop(&mut self, sql: impl AsRef<str>, parameters: impl Into<Params>) -> Result<(), Error> {
        self.exec::<Row>(sql, parameters).map(|_| ())
    }

    /// Runs `sql` (no parameters) and returns its rows, converted.
    pub fn query<T: FromRow>(&mut self, sql: impl AsRef<str>) -> Result<Vec<T>, Error> {
        let mut payload = vec![COM_QUERY];
        payload.extend_from_slice(sql.as_ref().as_bytes());
        self.command(&payload)?;
        self.read_result()?.into_iter().map(T::from_row).collect()
    }

    pub fn query_first<T: FromRow>(&mut self, sql: impl AsRef<str>) -> Result<Option<T>, Error> {
        Ok(self.query(sql)?.into_iter().next())
    }

    pub fn query_drop(&mut self, sql: impl AsRef<str>) -> Result<(), Error> {
        self.query::<Row>(sql).map(|_| ())
    }

    /// Begins a transaction; it rolls back when dropped without `commit`.
    pub fn start_transaction(&mut self) -> Result<Transaction<'_>, Error> {
        Transaction::begin(self)
    }

    /// `sql` with each `?` outside quotes and comments replaced by the next parameter's literal.
    fn interpolate(&self, sql: &str, parameters: &[Value]) -> Result<String, Error> {
        let mut statement = String::with_capacity(sql.len() + parameters.len() * 8);
        let mut remaining = parameters.iter();
        let mut missing = false;
        scan_placeholders(sql, |piece| match piece {
            SqlPiece::Text(text) => statement.push_str(text),
            SqlPiece::Placeholder => match remaining.next() {
                Some(value) => write_literal(&mut statement, value, self.no_backslash_escapes),
                None => missing = true,
            },
        });
        let unused = remaining.count();
        if missing || unused > 0 {
            return Err(Error::Conversion(format!(
                "the statement's placeholders and its {} parameters do not match",
                parameters.len()
            )));
        }
        if parameters.iter().any(|value| matches!(value, Value::Double(number) if !number.is_finite())) {
            return Err(Error::Conversion("MySQL cannot store an infinite or NaN number".to_owned()));
        }
        Ok(statement)
    }

    /// Sends one command packet (sequence numbers restart with every command).
    fn command(&mut self, payload: &[u8]) -> Result<(), Error> {
        if self.closed {
            return Err(Error::Io(io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")));
        }
        self.sequence = 0;
        self.send(payload)
    }

    fn send(&mut self, payload: &[u8]) -> Result<(), Error> {
        wire::write_packet(&mut self.output, payload, &mut self.sequence);
        let result = self.reader.get_mut().write_all(&self.output);
        self.output.clear();
        result.map_err(|error| self.broken(Error::Io(error)))
    }

    fn broken(&mut self, error: Error) -> Error {
        self.closed = true;
        error
    }

    fn read(&mut self) -> Result<Vec<u8>, Error> {
        wire::read_packet(&mut self.reader, &mut self.sequence).map_err(|error| {
            let error = if error.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")
            } else {
                error
            };
            self.broken(Error::Io(error))
        })
    }

    fn io_error(&mut self, error: io::Error) -> Error {
        self.broken(Error::Io(error))
    }

    fn take_ok(&mut self, payload: &[u8]) -> Result<(), Error> {
        let ok = wire::parse_ok(payload).map_err(|error| self.io_error(error))?;
        self.affected_rows = ok.affected_rows;
        self.last_insert_id = ok.last_insert_id;
        self.no_backslash_escapes = ok.status & wire::SERVER_STATUS_NO_BACKSLASH_ESCAPES != 0;
        Ok(())
    }

    /// Reads a command's answer: an OK (no rows), an ERR, or a result set.
    fn read_result(&mut self) -> Result<Vec<Row>, Error> {
        let first = self.read()?;
        match first.first() {
            Some(0x00) => {
                self.take_ok(&first)?;
                return Ok(Vec::new());
            }
            Some(0xff) => return Err(self.server_error(&first)),
            Some(0xfb) => return Err(self.broken(Error::Protocol("the server asks for a local file".to_owned()))),
            _ => {}
        }
        let column_count = wire::PayloadReader::new(&first)
            .length_encoded()
            .map_err(|error| self.io_error(error))?
            .unwrap_or(0) as usize;
        // Column definitions: the conversions read text, so only their end matters.
        loop {
            let packet = self.read()?;
            if wire::is_eof(&packet) {
                break;
            }
        }
        let mut rows = Vec::new();
        loop {
            let packet = self.read()?;
            if wire::is_eof(&packet) {
                // The EOF's status bytes follow its warning count.
                if let [_, _, _, low, high, ..] = packet[..] {
                    self.no_backslash_escapes = u16::from_le_bytes([low, high]) & wire::SERVER_STATUS_NO_BACKSLASH_ESCAPES != 0;
                }
                self.affected_rows = rows.len() as u64;
                return Ok(rows);
            }
            if packet.first() == Some(&0xff) {
                return Err(self.server_error(&packet));
            }
            let columns = wire::text_row(&packet, column_count).map_err(|error| self.io_error(error))?;
            rows.push(Row::new(columns));
        }
    }

    fn server_error(&mut self, payload: &[u8]) -> Error {
        match ServerError::parse(payload) {
            Ok(error) => Error::Server(error),
            Err(error) => self.io_error(error),
        }
    }

    /// The handshake: the server's greeting, our answer, then whatever the login method needs.
    fn log_in(&mut self, config: &ConnectionConfig) -> Result<(), Error> {
        self.sequence = 0;
        let greeting_packet = self.read()?;
        let greeting = wire::parse_greeting(&greeting_packet).map_err(|error| self.io_error(error))?;
        let mut plugin = greeting.auth_plugin.clone();
        let mut nonce = greeting.nonce.clone();
        let proof = match password_proof(&plugin, &config.password, &nonce) {
            Some(proof) => proof,
            None => {
                // Answer as the classic method; the server switches to the account's own.
                plugin = "mysql_native_password".to_owned();
                auth::native_password_proof(&config.password, &nonce)
            }
        };
        let mut capabilities = wire::CLIENT_LONG_PASSWORD
            | wire::CLIENT_FOUND_ROWS
            | wire::CLIENT_PROTOCOL_41
            | wire::CLIENT_TRANSACTIONS
            | wire::CLIENT_SECURE_CONNECTION
            | wire::CLIENT_PLUGIN_AUTH
            | (greeting.capabilities & wire::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA);
        if !config.database.is_empty() {
            capabilities |= wire::CLIENT_CONNECT_WITH_DB;
        }
        if greeting.capabilities & wire::CLIENT_PROTOCOL_41 == 0 {
            return Err(self.broken(Error::Protocol(format!(
                "server {} is older than MySQL 4.1's protocol",
                greeting.server_version
            ))));
        }
        let mut response = Vec::with_capacity(128);
        response.extend_from_slice(&capabilities.to_le_bytes());
        response.extend_from_slice(&(16u32 << 20).to_le_bytes());
        response.push(wire::UTF8MB4_GENERAL_CI);
        response.extend_from_slice(&[0; 23]);
        response.extend_from_slice(config.user.as_bytes());
        response.push(0);
        if capabilities & wire::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            wire::put_length_encoded(&mut response, proof.len() as u64);
        } else {
            response.push(proof.len() as u8);
        }
        response.extend_from_slice(&proof);
        if !config.database.is_empty() {
            response.extend_from_slice(config.database.as_bytes());
            response.push(0);
        }
        response.extend_from_slice(plugin.as_bytes());
        response.push(0);
        self.send(&response)?;

        loop {
            let packet = self.read()?;
            match packet.first() {
                Some(0x00) => return self.take_ok(&packet),
                Some(0xff) => {
                    let error = self.server_error(&packet);
                    return Err(self.broken(error));
                }
                Some(0xfe) => {
                    // Auth switch: the account uses another method, with a fresh nonce.
                    let mut reader = wire::PayloadReader::new(&packet[1..]);
                    plugin = String::from_utf8_lossy(reader.c_bytes()).into_owned();
                    nonce = reader.rest.strip_suffix(&[0]).unwrap_or(reader.rest).to_vec();
                    let Some(proof) = password_proof(&plugin, &config.password, &nonce) else {
                        return Err(self.broken(Error::Protocol(format!(
                            "the account uses the login method {plugin}, which is not supported \
                             (use mysql_native_password or caching_sha2_password)"
                        ))));
                    };
                    self.send(&proof)?;
                }
                Some(0x01) if plugin == "caching_sha2_password" => match packet.get(1) {
                    // The server had the password's hash cached: the fast proof was enough.
                    Some(3) => {}
                    // A full login: over plain TCP the password goes encrypted with the
                    // server's public key, which we ask for.
                    Some(4) => self.send(&[2])?,
                    _ => {
                        let pem = String::from_utf8_lossy(&packet[1..]).into_owned();
                        let mut seed = [0u8; 20];
                        os_random_bytes(&mut seed);
                        let encrypted = auth::encrypt_password(&config.password, &nonce, &pem, seed)
                            .map_err(|problem| self.broken(Error::Protocol(problem)))?;
                        self.send(&encrypted)?;
                    }
                },
                _ => {
                    return Err(self.broken(Error::Protocol(format!(
                        "unexpected packet 0x{:02x} during login",
                        packet.first().copied().unwrap_or(0)
                    ))));
                }
            }
        }
    }
}

const COM_QUERY: u8 = 0x03;
const COM_PING: u8 = 0x0e;
const COM_QUIT: u8 = 0x01;

/// The proof for login method `plugin`, or `None` for a method this client does not speak.
fn password_proof(plugin: &str, password: &str, nonce: &[u8]) -> Option<Vec<u8>> {
    match plugin {
        "mysql_native_password" => Some(auth::native_password_proof(password, nonce)),
        "caching_sha2_password" => Some(auth::caching_sha2_proof(password, nonce)),
        _ => None,
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.command(&[COM_QUIT]);
        }
    }
}

/// A part of a statement's text: text to copy, or a `?` placeholder.
enum SqlPiece<'sql> {
    Text(&'sql str),
    Placeholder,
}

/// Splits `sql` at the `?` placeholders that stand outside quoted strings, quoted names and
/// comments.
fn scan_placeholders<'sql>(sql: &'sql str, mut emit: impl FnMut(SqlPiece<'sql>)) {
    let bytes = sql.as_bytes();
    let mut start = 0;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            quote @ (b'\'' | b'"' | b'`') => {
                index += 1;
                while index < bytes.len() && bytes[index] != quote {
                    // A backslash escapes the next character inside strings, not inside names.
                    index += if bytes[index] == b'\\' && quote != b'`' { 2 } else { 1 };
                }
                index += 1;
            }
            b'#' => index = line_end(bytes, index),
            b'-' if bytes[index..].starts_with(b"-- ") => index = line_end(bytes, index),
            b'/' if bytes[index..].starts_with(b"/*") => {
                index = sql[index + 2..].find("*/").map_or(bytes.len(), |end| index + 2 + end + 2);
            }
            b'?' => {
                emit(SqlPiece::Text(&sql[start..index]));
                emit(SqlPiece::Placeholder);
                index += 1;
                start = index;
            }
            _ => index += 1,
        }
    }
    emit(SqlPiece::Text(&sql[start.min(sql.len())..]));
}

fn line_end(bytes: &[u8], from: usize) -> usize {
    bytes[from..].iter().position(|byte| *byte == b'\n').map_or(bytes.len(), |end| from + end)
}

/// Appends `value` as an SQL literal.
fn write_literal(out: &mut String, value: &Value, no_backslash_escapes: bool) {
    use std::fmt::Write as _;
    match value {
        Value::NULL => out.push_str("NULL"),
        Value::Int(number) => {
            let _ = write!(out, "{number}");
        }
        // The exponent form makes it a DOUBLE literal (a plain `0.1` would be DECIMAL), and
        // Rust's shortest round-trip digits read back as the same double.
        Value::Double(number) => {
            let _ = write!(out, "{number:e}");
        }
        Value::Text(text) => {
            out.push('\'');
            for character in text.chars() {
                match character {
                    '\'' if no_backslash_escapes => out.push_str("''"),
                    _ if no_backslash_escapes => out.push(character),
                    '\0' => out.push_str("\\0"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\\' => out.push_str("\\\\"),
                    '\'' => out.push_str("\\'"),
                    '"' => out.push_str("\\\""),
                    '\x1a' => out.push_str("\\Z"),
                    other => out.push(other),
                }
            }
            out.push('\'');
        }
    }
}

/// An open transaction; dereferences to its connection for statements.
pub type Transaction<'connection> = transaction::Transaction<'connection, Conn>;

impl TransactionControl for Conn {
    type Error = Error;
    const BACKEND: &'static str = "mysql";

    fn is_closed(&self) -> bool {
        self.closed
    }

    fn run_control_statement(&mut self, sql: &str) -> Result<(), Error> {
        self.query_drop(sql)
    }
}

/// Parses a connection URL (see `config::parse`).
pub fn parse_config(text: &str) -> Result<ConnectionConfig, Error> {
    config::parse(text).map_err(Error::Config)
}

/// Parses `url` and connects.
pub fn connect(url: &str) -> Result<Conn, Error> {
    Conn::new(&parse_config(url)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(value: Value, no_backslash_escapes: bool) -> String {
        let mut out = String::new();
        write_literal(&mut out, &value, no_backslash_escapes);
        out
    }

    #[test]
    fn literals_are_escaped_for_the_session_mode() {
        let text = Value::from("it's a \"b\\c\"\n\0\x1a");
        assert_eq!(literal(text.clone(), false), r#"'it\'s a \"b\\c\"\n\0\Z'"#);
        assert_eq!(literal(text, true), "'it''s a \"b\\c\"\n\0\x1a'");
        assert_eq!(literal(Value::from(None::<i64>), false), "NULL");
        assert_eq!(literal(Value::from(true), false), "1");
        assert_eq!(literal(Value::from(0.1), false), "1e-1");
        assert_eq!(literal(Value::from(-1234.5), false), "-1.2345e3");
        assert_eq!(literal(Value::from(i64::MIN), false), "-9223372036854775808");
    }

    #[test]
    fn placeholders_inside_quotes_and_comments_stay() {
        let mut pieces = Vec::new();
        scan_placeholders("SELECT '?', \"a\\\"?\", `b?`, ? /* ? */ -- ?\n, ? # ?", |piece| {
            pieces.push(match piece {
                SqlPiece::Text(text) => text.to_owned(),
                SqlPiece::Placeholder => "<P>".to_owned(),
            })
        });
        assert_eq!(pieces.concat(), "SELECT '?', \"a\\\"?\", `b?`, <P> /* ? */ -- ?\n, <P> # ?");
    }
}
