//! The admin API's error type and its JSON rendering: `{"error": {"message", "type"}}`.

use std::fmt;

use crate::http::Response;
use crate::store::StoreError;

/// Every way an admin API call can fail, each with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 400: the body is not valid JSON or the request is malformed.
    Malformed(String),
    /// 401: no token, an unknown or expired token, or wrong credentials.
    Unauthenticated(String),
    /// 404: no such resource or route.
    NotFound(String),
    /// 405: the route exists but not for this method; `allow` lists the methods it has, for
    /// the `Allow` header RFC 9110 requires on a 405.
    MethodNotAllowed { message: String, allow: String },
    /// 409: a unique name is already taken.
    Conflict(String),
    /// 422: well-formed JSON whose content is invalid (unknown channel type, empty base URL list...).
    Invalid(String),
    /// 502: an upstream the admin asked us to reach (model sync) failed or refused.
    UpstreamFailed(String),
    /// 429: too many failed logins from this address.
    TooManyRequests { message: String, retry_after_seconds: u64 },
    /// 503: the database cannot serve right now (lost connection, full disk, held lock); the
    /// message says so, since there is nothing secret in it and the admin can act on it.
    Unavailable(String),
    /// 500: a database or other internal failure; details go to the log, not the client.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Malformed(_) => 400,
            ApiError::Unauthenticated(_) => 401,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Conflict(_) => 409,
            ApiError::Invalid(_) => 422,
            ApiError::TooManyRequests { .. } => 429,
            ApiError::UpstreamFailed(_) => 502,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            ApiError::Malformed(_) => "malformed_request",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::Invalid(_) => "invalid_request",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::UpstreamFailed(_) => "upstream_error",
            ApiError::Unavailable(_) => "database_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn message(&self) -> &str {
        match self {
            ApiError::Malformed(message)
            | ApiError::Unauthenticated(message)
            | ApiError::NotFound(message)
            | ApiError::MethodNotAllowed { message, .. }
            | ApiError::Conflict(message)
            | ApiError::Invalid(message)
            | ApiError::UpstreamFailed(message)
            | ApiError::Unavailable(message)
            | ApiError::TooManyRequests { message, .. } => message,
            ApiError::Internal(_) => "internal error; see the gateway log",
        }
    }

    pub fn to_response(&self) -> Response {
        match self {
            ApiError::Internal(detail) => log::error!("admin api: {detail}"),
            ApiError::Unavailable(detail) => log::warn!("admin api: {detail}"),
            _ => {}
        }
        let body = serde_json::json!({"error": {"message": self.message(), "type": self.type_name()}});
        let response = Response::json(self.status(), &body);
        match self {
            ApiError::TooManyRequests { retry_after_seconds, .. } => {
                response.with_header("retry-after", &retry_after_seconds.to_string())
            }
            ApiError::Unauthenticated(_) => response.with_header("www-authenticate", "Bearer"),
            ApiError::MethodNotAllowed { allow, .. } => response.with_header("allow", allow),
            _ => response,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {}", self.status(), self.message())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Duplicate(what) => ApiError::Conflict(format!("already exists: {what}")),
            StoreError::MissingReference(what) => ApiError::Invalid(format!("refers to something missing: {what}")),
            StoreError::Backend(message) => ApiError::Internal(message),
            StoreError::Unavailable(message) => ApiError::Unavailable(format!(
                "the database is unavailable ({message}); the relay keeps serving from memory, retry this call later"
            )),
        }
    }
}
