//! The error an upstream call returns, and the transport-level failures it is classified from.

use std::error::Error as StdError;
use std::fmt;
use std::io;

/// Why an upstream call failed before or while its response was read.
///
/// An upstream HTTP status (4xx, 5xx) is never an error: it comes back as data in
/// `UpstreamResponse`. Messages never contain URLs, header values or proxy credentials,
/// so they are safe to log and to show in the admin panel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be made: the host name did not resolve, the TCP connect was
    /// refused or unreachable. Nothing was sent, so the call can be retried anywhere.
    Connect(String),
    /// A deadline passed. The text names the phase: `resolve`, `connect`, `send request`,
    /// `response head` (the request's `response_head_timeout`), `response body`, `call`, or
    /// `read` (no byte arrived within the `CallControl` read timeout).
    Timeout(String),
    /// The TLS handshake or a TLS record failed, for example an unknown certificate issuer.
    Tls(String),
    /// The proxy refused or broke the tunnel (an HTTP CONNECT status other than 200, a
    /// SOCKS5 reply other than success, a malformed proxy answer).
    Proxy(String),
    /// The connection failed after it was made: reset, closed early, a malformed response.
    Io(String),
    /// The request could not be sent as given: a bad URL, method, header or proxy URL.
    InvalidRequest(String),
    /// The call's `CallControl` was cancelled.
    Cancelled,
}

impl UpstreamError {
    /// Classifies an error returned by the response body reader (or any IO error that went
    /// through our transport). Body reader errors carry an `UpstreamError` inside, so this
    /// recovers it exactly; other IO errors are classified by their kind.
    pub fn from_io_error(error: &io::Error) -> UpstreamError {
        if let Some(inner) = error.get_ref() {
            if let Some(upstream_error) = inner.downcast_ref::<UpstreamError>() {
                return upstream_error.clone();
            }
            if let Some(failure) = inner.downcast_ref::<TransportFailure>() {
                return failure.to_upstream_error();
            }
            if let Some(ureq_error) = inner.downcast_ref::<ureq::Error>() {
                return classify_ureq_error(ureq_error);
            }
        }
        if error.kind() == io::ErrorKind::TimedOut {
            return UpstreamError::Timeout("read".to_string());
        }
        UpstreamError::Io(error.to_string())
    }

    /// The `io::ErrorKind` used when this error travels inside an `io::Error`. None of them is
    /// `UnexpectedEof`, `ConnectionAborted` or `ConnectionReset`: ureq's body reader takes those
    /// for the peer closing the connection and would hide the real cause.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            UpstreamError::Connect(_) => io::ErrorKind::NotConnected,
            UpstreamError::Timeout(_) => io::ErrorKind::TimedOut,
            UpstreamError::Tls(_) => io::ErrorKind::InvalidData,
            UpstreamError::Proxy(_) => io::ErrorKind::Other,
            UpstreamError::Io(_) => io::ErrorKind::Other,
            UpstreamError::InvalidRequest(_) => io::ErrorKind::InvalidInput,
            UpstreamError::Cancelled => io::ErrorKind::Other,
        }
    }

    /// Wraps this error in an `io::Error` that `from_io_error` turns back into it.
    pub fn into_io_error(self) -> io::Error {
        io::Error::new(self.io_kind(), self)
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect(message) => write!(formatter, "connect: {message}"),
            UpstreamError::Timeout(phase) => write!(formatter, "timeout: {phase}"),
            UpstreamError::Tls(message) => write!(formatter, "tls: {message}"),
            UpstreamError::Proxy(message) => write!(formatter, "proxy: {message}"),
            UpstreamError::Io(message) => write!(formatter, "io: {message}"),
            UpstreamError::InvalidRequest(message) => {
                write!(formatter, "invalid request: {message}")
            }
            UpstreamError::Cancelled => write!(formatter, "cancelled"),
        }
    }
}

impl StdError for UpstreamError {}

/// A failure raised by our own connectors and transport. It travels through ureq inside an
/// `io::Error` (ureq hands `Error::Io` back unchanged, also through TLS), so the client can tell
/// a connect failure from a later IO error, and a `CallControl` timeout from ureq's own.
#[derive(Debug)]
pub(crate) enum TransportFailure {
    Connect(String),
    Proxy(String),
    Tls(String),
    /// The `CallControl` read timeout passed with no byte read.
    ReadTimeout,
    Cancelled,
}

impl TransportFailure {
    pub(crate) fn to_upstream_error(&self) -> UpstreamError {
        match self {
            TransportFailure::Connect(message) => UpstreamError::Connect(message.clone()),
            TransportFailure::Proxy(message) => UpstreamError::Proxy(message.clone()),
            TransportFailure::Tls(message) => UpstreamError::Tls(message.clone()),
            TransportFailure::ReadTimeout => UpstreamError::Timeout("read".to_string()),
            TransportFailure::Cancelled => UpstreamError::Cancelled,
        }
    }

    pub(crate) fn into_io_error(self) -> io::Error {
        let kind = self.to_upstream_error().io_kind();
        io::Error::new(kind, self)
    }

    pub(crate) fn into_ureq_error(self) -> ureq::Error {
        ureq::Error::Io(self.into_io_error())
    }
}

impl fmt::Display for TransportFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_upstream_error(), formatter)
    }
}

impl StdError for TransportFailure {}

/// Turns a ureq error into our error. Our transport's own failures are found inside
/// `Error::Io`; the rest map by variant. ureq's own texts are used only where they cannot
/// contain a URL or a header value.
pub(crate) fn classify_ureq_error(error: &ureq::Error) -> UpstreamError {
    use ureq::Error;
    match error {
        Error::Io(io_error) => UpstreamError::from_io_error(io_error),
        Error::Timeout(reason) => UpstreamError::Timeout(timeout_phase(*reason).to_string()),
        Error::HostNotFound => UpstreamError::Connect("host not found".to_string()),
        Error::ConnectionFailed => UpstreamError::Connect("connection failed".to_string()),
        Error::ConnectProxyFailed(reason) => UpstreamError::Proxy(reason.clone()),
        Error::InvalidProxyUrl => UpstreamError::InvalidRequest("invalid proxy url".to_string()),
        Error::BadUri(_) => UpstreamError::InvalidRequest("invalid url".to_string()),
        Error::Http(_) => UpstreamError::InvalidRequest("invalid request parts".to_string()),
        Error::Protocol(protocol_error) => UpstreamError::Io(format!("protocol: {protocol_error}")),
        Error::Tls(message) => UpstreamError::Tls(message.to_string()),
        Error::Rustls(rustls_error) => UpstreamError::Tls(rustls_error.to_string()),
        Error::TlsRequired => UpstreamError::Tls("no tls transport for an https url".to_string()),
        Error::LargeResponseHeader(size, limit) => {
            UpstreamError::Io(format!("response head of {size} bytes exceeds {limit}"))
        }
        Error::Other(inner) => match inner.downcast_ref::<TransportFailure>() {
            Some(failure) => failure.to_upstream_error(),
            None => UpstreamError::Io(inner.to_string()),
        },
        other => UpstreamError::Io(other.to_string()),
    }
}

/// Our phase names for ureq's timeout reasons (see `UpstreamError::Timeout`).
fn timeout_phase(reason: ureq::Timeout) -> &'static str {
    use ureq::Timeout;
    match reason {
        Timeout::Resolve => "resolve",
        Timeout::Connect => "connect",
        Timeout::SendRequest | Timeout::SendBody | Timeout::Await100 => "send request",
        Timeout::RecvResponse => "response head",
        Timeout::RecvBody => "response body",
        Timeout::PerRead => "read",
        Timeout::PerWrite => "write",
        _ => "call",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_survive_a_trip_through_ureq_and_io() {
        let ureq_error = TransportFailure::ReadTimeout.into_ureq_error();
        assert_eq!(
            classify_ureq_error(&ureq_error),
            UpstreamError::Timeout("read".to_string())
        );

        let io_error = ureq_error.into_io();
        assert_eq!(io_error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            UpstreamError::from_io_error(&io_error),
            UpstreamError::Timeout("read".to_string())
        );

        let wrapped = ureq::Error::Timeout(ureq::Timeout::RecvResponse).into_io();
        assert_eq!(
            UpstreamError::from_io_error(&wrapped),
            UpstreamError::Timeout("response head".to_string())
        );
    }

    #[test]
    fn upstream_error_round_trips_through_io_error() {
        let io_error = UpstreamError::Cancelled.into_io_error();
        assert_eq!(io_error.kind(), io::ErrorKind::Other);
        assert_eq!(
            UpstreamError::from_io_error(&io_error),
            UpstreamError::Cancelled
        );
    }

    #[test]
    fn display_has_short_prefixes_and_no_trailing_period() {
        let cases = [
            (
                UpstreamError::Connect("refused".to_string()),
                "connect: refused",
            ),
            (UpstreamError::Timeout("read".to_string()), "timeout: read"),
            (
                UpstreamError::Tls("unknown issuer".to_string()),
                "tls: unknown issuer",
            ),
            (
                UpstreamError::Proxy("refused".to_string()),
                "proxy: refused",
            ),
            (UpstreamError::Io("reset".to_string()), "io: reset"),
            (
                UpstreamError::InvalidRequest("invalid url".to_string()),
                "invalid request: invalid url",
            ),
            (UpstreamError::Cancelled, "cancelled"),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn plain_io_errors_are_classified_by_kind() {
        let timed_out = io::Error::new(io::ErrorKind::TimedOut, "timeout");
        assert_eq!(
            UpstreamError::from_io_error(&timed_out),
            UpstreamError::Timeout("read".to_string())
        );
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(
            UpstreamError::from_io_error(&reset),
            UpstreamError::Io("reset by peer".to_string())
        );
    }
}
