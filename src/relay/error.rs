//! The one error type of the relay request path, rendered in the client's own protocol at the edge.

use std::fmt;

use crate::http::Response;
use crate::protocol::error::{convert_error, parse_upstream_error, render_error, ErrorKind};
use crate::protocol::Format;

/// Why a relay request did not get an upstream answer through. Each variant knows its status;
/// `render` turns it into the client protocol's error body.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayError {
    /// 400: the body is not JSON, lacks `model`, or asks for something no upstream can do.
    InvalidRequest(String),
    /// 401: no client key, or an unknown, disabled or expired one.
    Unauthenticated(String),
    /// 403: the key may not call this group.
    ModelNotAllowed(String),
    /// 429: the key has spent its `max_cost`.
    QuotaExceeded(String),
    /// 429: the key is over its `rpm` or `tpm`; the client may retry after the window frees.
    RateLimited { message: String, retry_after_seconds: u64 },
    /// 404: no group has this name.
    UnknownModel(String),
    /// 404: no relay endpoint at this path.
    NotFound(String),
    /// 503: the group has no item that could serve this request (disabled channels, no keys,
    /// every key cooling down or every breaker open). When only cooldowns and open breakers stood
    /// in the way, the client is told when the first of them ends (`Retry-After`).
    NoAvailableChannel { message: String, retry_after_seconds: Option<u64> },
    /// The last upstream answer when every attempt failed (or a final 4xx): forwarded with its
    /// status, its error converted from the upstream's format into the client's.
    Upstream { upstream_format: Format, status: u16, body: Vec<u8>, retry_after_seconds: Option<u64> },
    /// 502: the last attempt could not connect or broke before an answer.
    UpstreamUnreachable(String),
    /// 504: the last attempt (or the overall deadline) timed out.
    UpstreamTimeout(String),
    /// 500: a bug or an unexpected internal failure.
    Internal(String),
    /// 503: the gateway is shutting down and takes no new requests.
    ShuttingDown(String),
    /// 499 (nginx's "client closed request"): the client left before the answer. Nobody reads
    /// the response; the status is for the request record.
    ClientGone(String),
}

impl RelayError {
    fn status_kind_message(&self) -> (u16, ErrorKind, &str) {
        match self {
            RelayError::InvalidRequest(message) => (400, ErrorKind::InvalidRequest, message),
            RelayError::Unauthenticated(message) => (401, ErrorKind::Authentication, message),
            RelayError::ModelNotAllowed(message) => (403, ErrorKind::PermissionDenied, message),
            RelayError::QuotaExceeded(message) => (429, ErrorKind::RateLimited, message),
            RelayError::RateLimited { message, .. } => (429, ErrorKind::RateLimited, message),
            RelayError::UnknownModel(message) | RelayError::NotFound(message) => (404, ErrorKind::NotFound, message),
            RelayError::NoAvailableChannel { message, .. } | RelayError::ShuttingDown(message) => (503, ErrorKind::Overloaded, message),
            RelayError::UpstreamUnreachable(message) => (502, ErrorKind::Upstream, message),
            RelayError::UpstreamTimeout(message) => (504, ErrorKind::Timeout, message),
            RelayError::Internal(message) => (500, ErrorKind::Internal, message),
            RelayError::ClientGone(message) => (499, ErrorKind::InvalidRequest, message),
            RelayError::Upstream { status, .. } => (*status, ErrorKind::Upstream, "upstream error"),
        }
    }

    /// The HTTP response for a client speaking `client`.
    pub fn render(&self, client: Format) -> Response {
        if let RelayError::Upstream { upstream_format, status, body, retry_after_seconds } = self {
            let (client_status, client_body) = convert_error(*upstream_format, client, *status, body);
            let response = Response::bytes(client_status, "application/json", client_body);
            return match retry_after_seconds {
                Some(seconds) => response.with_header("retry-after", &seconds.to_string()),
                None => response,
            };
        }
        let (status, kind, message) = self.status_kind_message();
        let response = Response::bytes(status, "application/json", render_error(client, status, kind, message));
        match self {
            RelayError::RateLimited { retry_after_seconds, .. }
            | RelayError::NoAvailableChannel { retry_after_seconds: Some(retry_after_seconds), .. } => {
                response.with_header("retry-after", &retry_after_seconds.to_string())
            }
            _ => response,
        }
    }

    /// The status this error is answered with (before protocol-specific remapping).
    pub fn status(&self) -> u16 {
        self.status_kind_message().0
    }
}

impl fmt::Display for RelayError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayError::Upstream { status, upstream_format, body, .. } => {
                // The upstream's own explanation, so a request log says why, not only that.
                let message = parse_upstream_error(*upstream_format, *status, body).message;
                let message: String = message.chars().take(300).collect();
                write!(formatter, "upstream {} error {status}: {message}", upstream_format.as_str())
            }
            other => {
                let (status, _, message) = other.status_kind_message();
                write!(formatter, "{status}: {message}")
            }
        }
    }
}
