//! A small blocking PostgreSQL client: what the store needs of the wire protocol, nothing more.
//!
//! One connection over TCP (or a Unix socket), authenticated by trust, password, MD5 or
//! SCRAM-SHA-256; statements run through the extended protocol with parameters and results in
//! text form, so the server converts types exactly as it does for literals. It replaced the
//! `postgres` crate, whose tokio runtime, futures and type machinery were 868 KB of the static
//! binary (issue 11: a router binary). Like every store driver it blocks, so it runs only on
//! the store pool's std threads.

mod config;
mod scram;
mod wire;

use std::fmt;
use std::io::{self, BufReader};

pub use config::ConnectionConfig;
use wire::{BackendMessage, BodyReader, MessageWriter};

use crate::store::database_socket::DatabaseSocket;
use crate::store::client_error::ClientError;
use crate::store::text_row::TextRow;
use crate::store::transaction::{self, TransactionControl};

use crate::util::{base64_encode, hex, os_random_bytes};

/// SQLSTATE of a unique constraint violation.
pub const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE of a foreign key violation.
pub const FOREIGN_KEY_VIOLATION: &str = "23503";

/// An error the server reported (an ErrorResponse).
#[derive(Debug, Clone)]
pub struct DatabaseError {
    pub severity: String,
    /// The SQLSTATE, e.g. `23505`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The constraint a violation is about.
    pub constraint: Option<String>,
}

impl DatabaseError {
    fn from_fields(fields: Vec<(u8, String)>) -> DatabaseError {
        let mut error = DatabaseError {
            severity: "ERROR".to_owned(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
            constraint: None,
        };
        for (code, value) in fields {
            match code {
                // 'V' is the severity never translated; 'S' may be localised.
                b'V' => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                b'n' => error.constraint = Some(value),
                _ => {}
            }
        }
        error
    }
}

impl fmt::Display for DatabaseError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(formatter, "; {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(formatter, "; hint: {hint}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong talking to the server; its server report is boxed, since
/// the fields are many and the error travels through every `Result` of the store.
pub type Error = ClientError<Box<DatabaseError>>;

/// A value sent as a statement parameter, in PostgreSQL's text form (`None` is NULL).
pub trait ToSql {
    fn to_sql_text(&self) -> Option<String>;
}

impl ToSql for i64 {
    fn to_sql_text(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl ToSql for bool {
    fn to_sql_text(&self) -> Option<String> {
        Some(if *self { "t" } else { "f" }.to_owned())
    }
}

impl ToSql for f64 {
    fn to_sql_text(&self) -> Option<String> {
        // Rust's shortest round-trip form reads back as the same double; the special values
        // take PostgreSQL's spelling.
        Some(if self.is_nan() {
            "NaN".to_owned()
        } else if self.is_infinite() {
            if *self > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
        } else {
            self.to_string()
        })
    }
}

impl ToSql for str {
    fn to_sql_text(&self) -> Option<String> {
        Some(self.to_owned())
    }
}

impl ToSql for String {
    fn to_sql_text(&self) -> Option<String> {
        Some(self.clone())
    }
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_sql_text(&self) -> Option<String> {
        (**self).to_sql_text()
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_sql_text(&self) -> Option<String> {
        self.as_ref().and_then(ToSql::to_sql_text)
    }
}

/// An array of integers, as `{1,2,3}` (for `= ANY($1)`).
impl ToSql for Vec<i64> {
    fn to_sql_text(&self) -> Option<String> {
        let items: Vec<String> = self.iter().map(i64::to_string).collect();
        Some(format!("{{{}}}", items.join(",")))
    }
}

/// One result row, its columns in text form.
pub type Row = TextRow<Error>;

/// One connection. After an IO or protocol error it is closed for good (`is_closed`); the
/// store pool then opens a new one.
pub struct Client {
    reader: BufReader<DatabaseSocket>,
    writer: MessageWriter,
    closed: bool,
}

/// The outcome of one statement: its rows and the rows its command touched.
struct Outcome {
    rows: Vec<Row>,
    affected: u64,
    /// The CommandComplete tag of the last command (`COMMIT`, or `ROLLBACK` for a COMMIT of
    /// a failed transaction).
    last_tag: String,
}

impl Client {
    /// Connects, logs in and waits until the server is ready for queries.
    pub fn connect(config: &ConnectionConfig) -> Result<Client, Error> {
        let socket = open_socket(config)?;
        let mut client = Client { reader: BufReader::with_capacity(16 * 1024, socket), writer: MessageWriter::default(), closed: false };
        let mut parameters = vec![
            ("user", config.user.as_str()),
            ("database", config.database.as_str()),
            ("client_encoding", "UTF8"),
            // Doubles come back with every digit, so a price or cost reads back as written.
            ("extra_float_digits", "3"),
            ("application_name", config.application_name.as_deref().unwrap_or("octopus")),
        ];
        if let Some(options) = &config.options {
            parameters.push(("options", options));
        }
        client.writer.startup(&parameters);
        client.flush()?;
        client.authenticate(config)?;
        client.read_until_ready().map(|_| client)
    }

    /// Runs `sql` with `parameters` and returns its rows.
    pub fn query(&mut self, sql: &str, parameters: &[&dyn ToSql]) -> Result<Vec<Row>, Error> {
        self.run(sql, parameters).map(|outcome| outcome.rows)
    }

    /// Runs `sql` and returns its only row; no row is an error.
    pub fn query_one(&mut self, sql: &str, parameters: &[&dyn ToSql]) -> Result<Row, Error> {
        self.query_opt(sql, parameters)?
            .ok_or_else(|| Error::Conversion("the query returned no row".to_owned()))
    }

    /// Runs `sql` and returns its first row, if any.
    pub fn query_opt(&mut self, sql: &str, parameters: &[&dyn ToSql]) -> Result<Option<Row>, Error> {
        Ok(self.run(sql, parameters)?.rows.into_iter().next())
    }

    /// Runs `sql` and returns how many rows it inserted, updated or deleted.
    pub fn execute(&mut self, sql: &str, parameters: &[&dyn ToSql]) -> Result<u64, Error> {
        self.run(sql, parameters).map(|outcome| outcome.affected)
    }

    /// Runs one or more `;`-separated statements without parameters (migrations).
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.simple_query(sql).map(|_| ())
    }

    /// Sends `sql` in the simple query protocol and reads every answer up to ReadyForQuery.
    fn simple_query(&mut self, sql: &str) -> Result<Outcome, Error> {
        self.ensure_open()?;
        self.writer.simple_query(sql);
        self.flush()?;
        self.read_until_ready()
    }

    /// Begins a transaction; it rolls back when dropped without `commit`.
    pub fn transaction(&mut self) -> Result<Transaction<'_>, Error> {
        Transaction::begin(self)
    }

    fn ensure_open(&self) -> Result<(), Error> {
        if self.closed {
            return Err(Error::Io(io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")));
        }
        Ok(())
    }

    fn run(&mut self, sql: &str, parameters: &[&dyn ToSql]) -> Result<Outcome, Error> {
        self.ensure_open()?;
        let texts: Vec<Option<String>> = parameters.iter().map(|parameter| parameter.to_sql_text()).collect();
        let borrowed: Vec<Option<&str>> = texts.iter().map(Option::as_deref).collect();
        self.writer.extended_query(sql, &borrowed);
        self.flush()?;
        self.read_until_ready()
    }

    fn flush(&mut self) -> Result<(), Error> {
        let result = self.reader.get_mut().write_all(&self.writer.buffer);
        self.writer.buffer.clear();
        result.map_err(|error| self.broken(Error::Io(error)))
    }

    /// Marks the connection closed and passes `error` on.
    fn broken(&mut self, error: Error) -> Error {
        self.closed = true;
        error
    }

    fn read(&mut self) -> Result<BackendMessage, Error> {
        wire::read_message(&mut self.reader).map_err(|error| {
            let error = if error.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")
            } else {
                error
            };
            self.broken(Error::Io(error))
        })
    }

    fn protocol_error(&mut self, message: String) -> Error {
        self.broken(Error::Protocol(message))
    }

    /// Reads the answers to what was sent up to ReadyForQuery. The first ErrorResponse is
    /// returned once the server is ready again, so the connection stays in step.
    fn read_until_ready(&mut self) -> Result<Outcome, Error> {
        let mut outcome = Outcome { rows: Vec::new(), affected: 0, last_tag: String::new() };
        let mut first_error = None;
        loop {
            let message = self.read()?;
            match message.kind {
                b'D' => {
                    let columns = wire::data_row(&message.body).map_err(|error| self.broken(Error::Io(error)))?;
                    outcome.rows.push(Row::new(columns));
                }
                b'C' => {
                    let tag = BodyReader::new(&message.body).c_string().map_err(|error| self.broken(Error::Io(error)))?;
                    outcome.affected = wire::affected_rows(&tag);
                    outcome.last_tag = tag;
                }
                b'E' => {
                    let fields = wire::error_fields(&message.body).map_err(|error| self.broken(Error::Io(error)))?;
                    let error = DatabaseError::from_fields(fields);
                    // FATAL and PANIC end the session: the server closes the socket without a
                    // ReadyForQuery (a missing database, an administrator's shutdown).
                    if error.severity == "FATAL" || error.severity == "PANIC" {
                        return Err(self.broken(Error::Server(Box::new(error))));
                    }
                    first_error.get_or_insert(Error::Server(Box::new(error)));
                }
                b'N' => {
                    if let Ok(fields) = wire::error_fields(&message.body) {
                        log::debug!("postgres: {}", DatabaseError::from_fields(fields));
                    }
                }
                b'Z' => {
                    return match first_error {
                        Some(error) => Err(error),
                        None => Ok(outcome),
                    };
                }
                // ParseComplete, BindComplete, RowDescription, EmptyQueryResponse, NoData,
                // ParameterStatus, BackendKeyData, NotificationResponse: nothing to keep.
                b'1' | b'2' | b'T' | b'I' | b'n' | b'S' | b'K' | b'A' => {}
                other => {
                    return Err(self.protocol_error(format!("unexpected message '{}' from the server", other.escape_ascii())));
                }
            }
        }
    }

    /// Answers the server's authentication request, whichever method pg_hba.conf chose.
    fn authenticate(&mut self, config: &ConnectionConfig) -> Result<(), Error> {
        let mut scram: Option<scram::ScramExchange> = None;
        loop {
            let message = self.read()?;
            match message.kind {
                b'R' => {}
                b'E' => {
                    let fields = wire::error_fields(&message.body).map_err(|error| self.broken(Error::Io(error)))?;
                    self.closed = true;
                    return Err(Error::Server(Box::new(DatabaseError::from_fields(fields))));
                }
                b'N' => continue,
                other => {
                    return Err(self.protocol_error(format!("unexpected message '{}' during login", other.escape_ascii())));
                }
            }
            let mut body = BodyReader::new(&message.body);
            let request = body.i32().map_err(|error| self.broken(Error::Io(error)))?;
            match request {
                0 => return Ok(()),
                3 => {
                    let password = self.password_for(config)?;
                    self.writer.password_c_string(&password);
                }
                5 => {
                    let salt = body.bytes(4).map_err(|error| self.broken(Error::Io(error)))?.to_vec();
                    let password = self.password_for(config)?;
                    self.writer.password_c_string(&md5_password(&config.user, &password, &salt));
                }
                10 => {
                    let mut mechanisms = Vec::new();
                    while let Ok(mechanism) = body.c_string() {
                        if mechanism.is_empty() {
                            break;
                        }
                        mechanisms.push(mechanism);
                    }
                    if !mechanisms.iter().any(|mechanism| mechanism == "SCRAM-SHA-256") {
                        return Err(self.protocol_error(format!(
                            "the server offers SASL mechanisms {mechanisms:?}; only SCRAM-SHA-256 without channel binding is supported"
                        )));
                    }
                    let password = self.password_for(config)?;
                    let mut nonce = [0u8; 18];
                    os_random_bytes(&mut nonce);
                    let exchange = scram::ScramExchange::new(&password, base64_encode(&nonce));
                    self.writer.sasl_initial_response("SCRAM-SHA-256", exchange.client_first().as_bytes());
                    scram = Some(exchange);
                }
                11 => {
                    let server_first = String::from_utf8_lossy(body.rest()).into_owned();
                    let exchange = scram.as_mut().ok_or_else(|| Error::Protocol("a SCRAM step before its start".to_owned()))?;
                    let client_final = exchange.client_final(&server_first).map_err(Error::Protocol);
                    let client_final = client_final.map_err(|error| self.broken(error))?;
                    self.writer.password(client_final.as_bytes());
                }
                12 => {
                    let server_final = String::from_utf8_lossy(body.rest()).into_owned();
                    let exchange = scram.as_ref().ok_or_else(|| Error::Protocol("a SCRAM end before its start".to_owned()))?;
                    let verified = exchange.verify_server_final(&server_final).map_err(Error::Protocol);
                    verified.map_err(|error| self.broken(error))?;
                    continue;
                }
                other => {
                    return Err(self.protocol_error(format!(
                        "the server asks for authentication method {other} (Kerberos, GSSAPI or SSPI), which is not supported; \
                         use password, md5 or scram-sha-256 in pg_hba.conf"
                    )));
                }
            }
            self.flush()?;
        }
    }

    fn password_for(&mut self, config: &ConnectionConfig) -> Result<String, Error> {
        match &config.password {
            Some(password) => Ok(password.clone()),
            None => Err(self.protocol_error(format!(
                "the server asks user '{}' for a password and the database URL has none",
                config.user
            ))),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if !self.closed {
            self.writer.terminate();
            let _ = self.flush();
        }
    }
}

/// PostgreSQL's MD5 password answer: `md5` + hex(md5(hex(md5(password + user)) + salt)).
fn md5_password(user: &str, password: &str, salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    let inner = hex(&Md5::digest([password.as_bytes(), user.as_bytes()].concat()));
    let outer = Md5::digest([inner.as_bytes(), salt].concat());
    format!("md5{}", hex(&outer))
}

fn open_socket(config: &ConnectionConfig) -> io::Result<DatabaseSocket> {
    if config.uses_unix_socket() {
        let path = format!("{}/.s.PGSQL.{}", config.host.trim_end_matches('/'), config.port);
        return DatabaseSocket::connect_unix(&path);
    }
    DatabaseSocket::connect_tcp(&config.host, config.port, config.connect_timeout)
}

/// An open transaction; dereferences to its client for statements.
pub type Transaction<'client> = transaction::Transaction<'client, Client>;

impl TransactionControl for Client {
    type Error = Error;
    const BACKEND: &'static str = "postgres";

    fn is_closed(&self) -> bool {
        self.closed
    }

    fn run_control_statement(&mut self, sql: &str) -> Result<(), Error> {
        let outcome = self.simple_query(sql)?;
        // PostgreSQL answers the COMMIT of a transaction a failed statement aborted with a
        // ROLLBACK and no error.
        if sql == "COMMIT" && outcome.last_tag == "ROLLBACK" {
            return Err(Error::Conversion("the transaction was rolled back: a statement in it failed".to_owned()));
        }
        Ok(())
    }
}

/// Parses a connection string (see `config::parse`).
pub fn parse_config(text: &str) -> Result<ConnectionConfig, Error> {
    config::parse(text).map_err(Error::Config)
}

/// Parses `url` and connects.
pub fn connect(url: &str) -> Result<Client, Error> {
    Client::connect(&parse_config(url)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::text_row::FromColumnText;

    #[test]
    fn md5_answer_matches_postgres() {
        // SELECT 'md5' || md5(md5('secret' || 'octopus') || 'abcd'), computed by PostgreSQL 15.
        assert_eq!(md5_password("octopus", "secret", b"abcd"), "md502d546a76c75f2f619d2fe9b1c5232a9");
    }

    #[test]
    fn values_round_trip_through_their_text_form() {
        for number in [0.1, 1e-7, 123456789.125, f64::MAX, f64::MIN_POSITIVE, -0.0, f64::INFINITY, f64::NEG_INFINITY] {
            let text = number.to_sql_text().unwrap();
            assert_eq!(f64::from_column_text(Some(&text)).unwrap().to_bits(), number.to_bits(), "{text}");
        }
        assert!(f64::from_column_text(Some(&f64::NAN.to_sql_text().unwrap())).unwrap().is_nan());
        assert_eq!(i64::from_column_text(Some(&i64::MIN.to_sql_text().unwrap())).unwrap(), i64::MIN);
        assert!(bool::from_column_text(Some("t")).unwrap());
        assert!(!bool::from_column_text(Some("f")).unwrap());
        assert!(bool::from_column_text(Some("yes")).is_err());
        assert_eq!(Option::<i64>::from_column_text(None).unwrap(), None);
        assert!(i64::from_column_text(None).unwrap_err().contains("NULL"));
        assert_eq!(None::<i64>.to_sql_text(), None);
        assert_eq!(vec![1i64, -2, 3].to_sql_text().as_deref(), Some("{1,-2,3}"));
        assert_eq!(Vec::<i64>::new().to_sql_text().as_deref(), Some("{}"));
    }
}
