//! The error of our database clients, generic over the server's own error report.

use std::fmt;
use std::io;

use crate::store::text_row::ColumnError;

/// Everything that can go wrong talking to a database server.
#[derive(Debug)]
pub enum ClientError<ServerReport> {
    /// The server refused a statement or the login; after a statement's error the connection
    /// is still usable.
    Server(ServerReport),
    /// Reading or writing the socket failed; the connection is gone.
    Io(io::Error),
    /// The server sent what the client does not expect, or asks for a login method it does not
    /// speak; the connection is closed.
    Protocol(String),
    /// A value does not convert to or from the requested type, or a query returned no row
    /// where one was required.
    Conversion(String),
    /// The connection URL is wrong.
    Config(String),
}

impl<ServerReport: fmt::Display> fmt::Display for ClientError<ServerReport> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Server(report) => report.fmt(formatter),
            ClientError::Io(error) => write!(formatter, "connection error: {error}"),
            ClientError::Protocol(message) => write!(formatter, "protocol error: {message}"),
            ClientError::Conversion(message) | ClientError::Config(message) => formatter.write_str(message),
        }
    }
}

impl<ServerReport: fmt::Display + fmt::Debug> std::error::Error for ClientError<ServerReport> {}

impl<ServerReport> From<io::Error> for ClientError<ServerReport> {
    fn from(error: io::Error) -> Self {
        ClientError::Io(error)
    }
}

impl<ServerReport> From<ColumnError> for ClientError<ServerReport> {
    fn from(error: ColumnError) -> Self {
        ClientError::Conversion(error.0)
    }
}
