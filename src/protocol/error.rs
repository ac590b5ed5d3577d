//! Error bodies: rendering the gateway's errors in each client format, reading upstream errors, and
//! converting an upstream error body into the client's format (protocols.md §4).

use serde_json::{Value, json};

use crate::protocol::Format;
use crate::protocol::sse::write_json_event;

/// What went wrong, independent of any wire format.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorKind {
    /// The request is malformed or unsupported (400).
    InvalidRequest,
    /// The key is missing or wrong (401).
    Authentication,
    /// The key may not do this (403).
    PermissionDenied,
    /// The model or route does not exist (404).
    NotFound,
    /// The request body is too big (413).
    RequestTooLarge,
    /// A rate limit or quota was hit (429).
    RateLimited,
    /// The provider is overloaded (503, Anthropic 529).
    Overloaded,
    /// The provider or the gateway ran out of time (504).
    Timeout,
    /// The provider failed in some other way (502).
    Upstream,
    /// The gateway itself failed (500).
    Internal,
}

impl ErrorKind {
    /// The usual HTTP status for this kind, used where no upstream status applies.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::RateLimited => 429,
            ErrorKind::Overloaded => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::Upstream => 502,
            ErrorKind::Internal => 500,
        }
    }

    /// The OpenAI `type` and `code` fields.
    pub fn openai_type_and_code(self) -> (&'static str, Option<&'static str>) {
        match self {
            ErrorKind::InvalidRequest => ("invalid_request_error", None),
            ErrorKind::Authentication => ("authentication_error", Some("invalid_api_key")),
            ErrorKind::PermissionDenied => ("permission_error", Some("permission_denied")),
            ErrorKind::NotFound => ("invalid_request_error", Some("not_found")),
            ErrorKind::RequestTooLarge => ("invalid_request_error", Some("request_too_large")),
            ErrorKind::RateLimited => ("rate_limit_error", Some("rate_limit_exceeded")),
            ErrorKind::Overloaded => ("server_error", Some("overloaded")),
            ErrorKind::Timeout => ("server_error", Some("timeout")),
            ErrorKind::Upstream => ("server_error", Some("upstream_error")),
            ErrorKind::Internal => ("server_error", Some("internal_error")),
        }
    }

    /// The Anthropic `error.type` field.
    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Overloaded => "overloaded_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Upstream | ErrorKind::Internal => "api_error",
        }
    }

    /// The Google RPC `status` field.
    fn google_status(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::RequestTooLarge => "INVALID_ARGUMENT",
            ErrorKind::Authentication => "UNAUTHENTICATED",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::RateLimited => "RESOURCE_EXHAUSTED",
            ErrorKind::Overloaded => "UNAVAILABLE",
            ErrorKind::Timeout => "DEADLINE_EXCEEDED",
            ErrorKind::Upstream | ErrorKind::Internal => "INTERNAL",
        }
    }
}

/// Renders an error body in the client's format. Antigravity has no clients, so it gets the
/// Google shape like Gemini.
pub fn render_error(client: Format, status: u16, kind: ErrorKind, message: &str) -> Vec<u8> {
    error_value(client, status, kind, message)
        .to_string()
        .into_bytes()
}

/// Renders the in-stream error event a client of `client` format understands, for failures after
/// the 200 and the stream headers have been sent.
///
/// Responses gets an `error` event followed by `response.failed`, because clients wait for a
/// terminal event. Both lack `sequence_number`, and the failed response lacks `id`: only the
/// Responses stream encoder knows them, so it should render its own events when it can and this
/// function is the stateless fallback.
pub fn render_stream_error(client: Format, kind: ErrorKind, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    match client {
        Format::OpenaiChat => {
            let body = error_value(client, kind.http_status(), kind, message);
            write_json_event(&mut out, None, &body);
        }
        Format::OpenaiResponses => {
            let (_, code) = kind.openai_type_and_code();
            let code = code.unwrap_or(kind.openai_type_and_code().0);
            let error_event = json!({
                "type": "error",
                "code": code,
                "message": message,
                "param": null,
            });
            write_json_event(&mut out, Some("error"), &error_event);
            let failed_event = json!({
                "type": "response.failed",
                "response": {
                    "object": "response",
                    "status": "failed",
                    "error": {"code": code, "message": message},
                    "incomplete_details": null,
                    "output": [],
                    "usage": null,
                },
            });
            write_json_event(&mut out, Some("response.failed"), &failed_event);
        }
        Format::Anthropic => {
            let body = error_value(client, kind.http_status(), kind, message);
            write_json_event(&mut out, Some("error"), &body);
        }
        Format::Gemini | Format::Antigravity => {
            let body = error_value(client, kind.http_status(), kind, message);
            write_json_event(&mut out, None, &body);
        }
    }
    out
}

fn error_value(client: Format, status: u16, kind: ErrorKind, message: &str) -> Value {
    match client {
        Format::OpenaiChat | Format::OpenaiResponses => {
            let (error_type, code) = kind.openai_type_and_code();
            openai_error_value(message, error_type, code)
        }
        Format::Anthropic => json!({
            "type": "error",
            "error": {"type": kind.anthropic_type(), "message": message},
        }),
        Format::Gemini | Format::Antigravity => json!({
            "error": {"code": status, "message": message, "status": kind.google_status()},
        }),
    }
}

fn openai_error_value(message: &str, error_type: &str, code: Option<&str>) -> Value {
    json!({
        "error": {"message": message, "type": error_type, "param": null, "code": code},
    })
}

/// What the gateway learned from an upstream error response.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UpstreamErrorInfo {
    /// The upstream HTTP status.
    pub status: u16,
    /// The kind, from the body's type or status name when it has one, else from the status.
    pub kind: ErrorKind,
    /// The human-readable message (or a short excerpt of a body that is not JSON).
    pub message: String,
    /// How long the upstream asked us to wait, from Google's `RetryInfo`, rounded up.
    pub retry_after_seconds: Option<u64>,
    /// The account's quota or credit is used up (OpenAI `insufficient_quota`, Anthropic
    /// `billing_error`): retrying on the same key cannot succeed, unlike a rate limit.
    pub quota_exhausted: bool,
}

/// The longest excerpt of a non-JSON error body that is kept as the message.
const MAX_RAW_MESSAGE_CHARS: usize = 500;

/// Reads an upstream error body of any of the three shapes (OpenAI, Anthropic, Google); the
/// upstream format only breaks ties, since compatible servers often answer in another shape.
pub fn parse_upstream_error(upstream: Format, status: u16, body: &[u8]) -> UpstreamErrorInfo {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    // Google's stream endpoint without alt=sse wraps even errors in a JSON array.
    let parsed = match parsed {
        Some(Value::Array(mut items)) if !items.is_empty() => Some(items.swap_remove(0)),
        other => other,
    };
    let error = parsed.as_ref().map(|value| {
        let inner = &value["error"];
        if inner.is_null() { value } else { inner }
    });

    let message = error
        .and_then(|error| match error {
            Value::String(text) => Some(text.clone()),
            _ => error["message"].as_str().map(str::to_string),
        })
        .filter(|message| !message.is_empty())
        .unwrap_or_else(|| raw_message(status, body));

    let type_name = error.and_then(|error| error["type"].as_str()).unwrap_or("");
    let code_name = error.and_then(|error| error["code"].as_str()).unwrap_or("");
    let google_status = error
        .and_then(|error| error["status"].as_str())
        .unwrap_or("");
    let quota_exhausted = type_name == "insufficient_quota"
        || code_name == "insufficient_quota"
        || type_name == "billing_error";
    let kind_by_status = kind_from_status(upstream, status);
    let kind = match kind_from_names(type_name, code_name, google_status) {
        // A generic server error type says less than a 503 or 504 status does.
        Some(ErrorKind::Upstream) | None => kind_by_status,
        Some(kind) => kind,
    };
    let retry_after_seconds = error.and_then(google_retry_delay);

    UpstreamErrorInfo {
        status,
        kind,
        message,
        retry_after_seconds,
        quota_exhausted,
    }
}

/// What is wrong with a 2xx answer body that is not an answer after all.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SuccessBodyProblem {
    /// Not a JSON object (an HTML page from a proxy, a body cut short); holds the body's start.
    NotJson(String),
    /// An error object, `{"error": ...}` or Anthropic's `{"type": "error", ...}`, which some
    /// compatible servers send with a 200; holds the error's message.
    ErrorObject(String),
}

/// Checks a 2xx non-stream body in the upstream's `format` for the two ways it can fail to be an
/// answer. A body that reports usage is an answer, so callers may skip this for those: it parses
/// the whole body again.
pub fn success_body_problem(format: Format, body: &[u8]) -> Option<SuccessBodyProblem> {
    let Ok(parsed) = serde_json::from_slice::<Value>(body) else {
        return Some(SuccessBodyProblem::NotJson(raw_message(200, body)));
    };
    // Google's stream endpoint without alt=sse answers with an array of chunk objects.
    let first = match &parsed {
        Value::Array(items) if matches!(format, Format::Gemini | Format::Antigravity) => {
            items.first()
        }
        other => Some(other),
    };
    let Some(Value::Object(object)) = first else {
        return Some(SuccessBodyProblem::NotJson(raw_message(200, body)));
    };
    let is_error = object.get("error").is_some_and(|error| !error.is_null())
        || object.get("type").and_then(Value::as_str) == Some("error");
    is_error
        .then(|| SuccessBodyProblem::ErrorObject(parse_upstream_error(format, 502, body).message))
}

/// Converts an upstream error into the client's format: the status the client expects and a body
/// in its shape (protocols.md §4 mapping table).
///
/// When the client speaks the upstream's error shape (Chat and Responses share one, as do Gemini
/// and Antigravity), a JSON body with an `error` field is passed through unchanged. Anything else,
/// such as an HTML page from a proxy, is rendered afresh. A `retry-after` header is the caller's
/// job: take it from [`parse_upstream_error`].
pub fn convert_error(upstream: Format, client: Format, status: u16, body: &[u8]) -> (u16, Vec<u8>) {
    if error_family(upstream) == error_family(client) && has_error_field(body) {
        return (status, body.to_vec());
    }
    let info = parse_upstream_error(upstream, status, body);
    let client_status = client_status(client, status, info.kind);
    let rendered = match client {
        Format::OpenaiChat | Format::OpenaiResponses if info.quota_exhausted => openai_error_value(
            &info.message,
            "insufficient_quota",
            Some("insufficient_quota"),
        )
        .to_string()
        .into_bytes(),
        _ => render_error(client, client_status, info.kind, &info.message),
    };
    (client_status, rendered)
}

/// Formats that share one error body shape.
fn error_family(format: Format) -> u8 {
    match format {
        Format::OpenaiChat | Format::OpenaiResponses => 0,
        Format::Anthropic => 1,
        Format::Gemini | Format::Antigravity => 2,
    }
}

fn has_error_field(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object.contains_key("error"),
        Ok(Value::Array(items)) => items
            .first()
            .is_some_and(|item| item.get("error").is_some()),
        _ => false,
    }
}

/// The status a client of `client` format should see for an upstream failure.
fn client_status(client: Format, upstream_status: u16, kind: ErrorKind) -> u16 {
    let status = if (400..600).contains(&upstream_status) {
        upstream_status
    } else {
        kind.http_status()
    };
    match client {
        // Anthropic clients know overload as 529, a status other SDKs do not expect.
        Format::Anthropic if kind == ErrorKind::Overloaded => 529,
        Format::Anthropic => status,
        _ if status == 529 => 503,
        // A 402 from Anthropic's billing means exhausted quota, which OpenAI and Google report as 429.
        _ if status == 402 => 429,
        _ => status,
    }
}

fn kind_from_names(type_name: &str, code_name: &str, google_status: &str) -> Option<ErrorKind> {
    let by_type = match type_name {
        "invalid_request_error" => Some(ErrorKind::InvalidRequest),
        "authentication_error" => Some(ErrorKind::Authentication),
        "permission_error" => Some(ErrorKind::PermissionDenied),
        "not_found_error" => Some(ErrorKind::NotFound),
        "request_too_large" => Some(ErrorKind::RequestTooLarge),
        "rate_limit_error" | "insufficient_quota" | "billing_error" => Some(ErrorKind::RateLimited),
        "overloaded_error" => Some(ErrorKind::Overloaded),
        "timeout_error" => Some(ErrorKind::Timeout),
        "api_error" | "server_error" => Some(ErrorKind::Upstream),
        _ => None,
    };
    let by_code = match code_name {
        "invalid_api_key" => Some(ErrorKind::Authentication),
        "rate_limit_exceeded" | "insufficient_quota" => Some(ErrorKind::RateLimited),
        "model_not_found" => Some(ErrorKind::NotFound),
        _ => None,
    };
    let by_google_status = match google_status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
            Some(ErrorKind::InvalidRequest)
        }
        "UNAUTHENTICATED" => Some(ErrorKind::Authentication),
        "PERMISSION_DENIED" => Some(ErrorKind::PermissionDenied),
        "NOT_FOUND" => Some(ErrorKind::NotFound),
        "RESOURCE_EXHAUSTED" => Some(ErrorKind::RateLimited),
        "UNAVAILABLE" => Some(ErrorKind::Overloaded),
        "DEADLINE_EXCEEDED" => Some(ErrorKind::Timeout),
        "INTERNAL" | "UNKNOWN" | "CANCELLED" => Some(ErrorKind::Upstream),
        _ => None,
    };
    // The code is the most specific (OpenAI's 401 says invalid_request_error + invalid_api_key).
    by_code.or(by_google_status).or(by_type)
}

fn kind_from_status(upstream: Format, status: u16) -> ErrorKind {
    match status {
        400 | 422 => ErrorKind::InvalidRequest,
        401 => ErrorKind::Authentication,
        402 => ErrorKind::RateLimited,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        408 | 504 => ErrorKind::Timeout,
        413 => ErrorKind::RequestTooLarge,
        429 => ErrorKind::RateLimited,
        503 | 529 => ErrorKind::Overloaded,
        // A Gemini 499 is a cancelled call, which the caller treats as an upstream failure.
        499 if matches!(upstream, Format::Gemini | Format::Antigravity) => ErrorKind::Upstream,
        405..=499 => ErrorKind::InvalidRequest,
        _ => ErrorKind::Upstream,
    }
}

/// A short, printable excerpt of a body that has no readable message.
fn raw_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("upstream returned status {status}");
    }
    text.chars().take(MAX_RAW_MESSAGE_CHARS).collect()
}

/// Google's `RetryInfo.retryDelay` ("3.9s") as whole seconds, rounded up.
fn google_retry_delay(error: &Value) -> Option<u64> {
    let details = error["details"].as_array()?;
    let delay = details.iter().find_map(|detail| {
        let is_retry_info = detail["@type"]
            .as_str()
            .is_some_and(|name| name.ends_with("google.rpc.RetryInfo"));
        if is_retry_info {
            detail["retryDelay"].as_str()
        } else {
            None
        }
    })?;
    parse_duration_seconds_ceil(delay)
}

/// Parses a protobuf JSON duration (`"3.9s"`, `"30s"`, `"0.000001s"`) into seconds, rounded up.
fn parse_duration_seconds_ceil(text: &str) -> Option<u64> {
    let number = text.trim().strip_suffix('s')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let seconds: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    if !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let has_fraction = fraction.bytes().any(|byte| byte != b'0');
    Some(seconds.saturating_add(u64::from(has_fraction)))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::protocol::Format;
    use crate::protocol::error::{
        ErrorKind, SuccessBodyProblem, convert_error, parse_duration_seconds_ceil,
        parse_upstream_error, render_error, render_stream_error, success_body_problem,
    };
    use crate::protocol::sse::SseParser;
    use crate::protocol::testkit;

    fn as_json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("JSON")
    }

    fn gemini_rate_limit_body() -> Vec<u8> {
        json!({"error": {
            "code": 429,
            "message": "You have exhausted your capacity on this model. Your quota will reset after 3s.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED"},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3.9s"}
            ]
        }})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn render_error_in_each_client_shape() {
        assert_eq!(
            as_json(&render_error(
                Format::OpenaiChat,
                429,
                ErrorKind::RateLimited,
                "slow down"
            )),
            json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})
        );
        assert_eq!(
            as_json(&render_error(
                Format::OpenaiResponses,
                400,
                ErrorKind::InvalidRequest,
                "bad"
            )),
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": null, "code": null}})
        );
        assert_eq!(
            as_json(&render_error(
                Format::Anthropic,
                529,
                ErrorKind::Overloaded,
                "busy"
            )),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        );
        assert_eq!(
            as_json(&render_error(
                Format::Gemini,
                401,
                ErrorKind::Authentication,
                "who"
            )),
            json!({"error": {"code": 401, "message": "who", "status": "UNAUTHENTICATED"}})
        );
        assert_eq!(
            render_error(Format::Antigravity, 404, ErrorKind::NotFound, "none"),
            render_error(Format::Gemini, 404, ErrorKind::NotFound, "none")
        );
    }

    #[test]
    fn every_kind_renders_with_its_documented_names() {
        let expected = [
            (
                ErrorKind::InvalidRequest,
                400,
                "invalid_request_error",
                "INVALID_ARGUMENT",
            ),
            (
                ErrorKind::Authentication,
                401,
                "authentication_error",
                "UNAUTHENTICATED",
            ),
            (
                ErrorKind::PermissionDenied,
                403,
                "permission_error",
                "PERMISSION_DENIED",
            ),
            (ErrorKind::NotFound, 404, "not_found_error", "NOT_FOUND"),
            (
                ErrorKind::RequestTooLarge,
                413,
                "request_too_large",
                "INVALID_ARGUMENT",
            ),
            (
                ErrorKind::RateLimited,
                429,
                "rate_limit_error",
                "RESOURCE_EXHAUSTED",
            ),
            (
                ErrorKind::Overloaded,
                503,
                "overloaded_error",
                "UNAVAILABLE",
            ),
            (
                ErrorKind::Timeout,
                504,
                "timeout_error",
                "DEADLINE_EXCEEDED",
            ),
            (ErrorKind::Upstream, 502, "api_error", "INTERNAL"),
            (ErrorKind::Internal, 500, "api_error", "INTERNAL"),
        ];
        for (kind, status, anthropic_type, google_status) in expected {
            assert_eq!(kind.http_status(), status);
            let anthropic = as_json(&render_error(Format::Anthropic, status, kind, "m"));
            assert_eq!(anthropic["error"]["type"], anthropic_type);
            let google = as_json(&render_error(Format::Gemini, status, kind, "m"));
            assert_eq!(google["error"]["status"], google_status);
            assert_eq!(google["error"]["code"], status);
            let openai = as_json(&render_error(Format::OpenaiChat, status, kind, "m"));
            assert!(openai["error"]["type"].is_string());
            assert_eq!(openai["error"]["param"], Value::Null);
        }
    }

    #[test]
    fn parse_reads_messages_from_all_three_shapes() {
        let openai = parse_upstream_error(
            Format::OpenaiChat,
            400,
            &testkit::provider_file("openai-chat/error-unsupported-parameter.json"),
        );
        assert_eq!(openai.kind, ErrorKind::InvalidRequest);
        assert!(
            openai
                .message
                .starts_with("Unsupported parameter: 'max_tokens'")
        );
        assert!(!openai.quota_exhausted);

        let gemini = parse_upstream_error(
            Format::Gemini,
            400,
            &testkit::provider_file("gemini/error-api-key.json"),
        );
        assert_eq!(gemini.kind, ErrorKind::InvalidRequest);
        assert_eq!(
            gemini.message,
            "API key not valid. Please pass a valid API key."
        );
        assert_eq!(gemini.retry_after_seconds, None);

        let cassette = testkit::provider_json("anthropic-messages/cassette-tool-use-then-400.json");
        let body = cassette[1]["response"]["body"].to_string();
        let anthropic = parse_upstream_error(Format::Anthropic, 400, body.as_bytes());
        assert_eq!(anthropic.kind, ErrorKind::InvalidRequest);
        assert!(anthropic.message.contains("unexpected `tool_use_id`"));
    }

    #[test]
    fn parse_detects_quota_and_retry_delay() {
        let quota = parse_upstream_error(
            Format::OpenaiResponses,
            429,
            &testkit::provider_file("openai-responses/error-insufficient-quota.json"),
        );
        assert_eq!(quota.kind, ErrorKind::RateLimited);
        assert!(quota.quota_exhausted);

        let limited = parse_upstream_error(Format::Gemini, 429, &gemini_rate_limit_body());
        assert_eq!(limited.kind, ErrorKind::RateLimited);
        assert_eq!(limited.retry_after_seconds, Some(4));
        assert!(!limited.quota_exhausted);

        let cassette = testkit::provider_json("anthropic-messages/cassette-429-then-stream.json");
        let body = cassette[0]["response"]["body"].to_string();
        let anthropic = parse_upstream_error(Format::Anthropic, 429, body.as_bytes());
        assert_eq!(anthropic.kind, ErrorKind::RateLimited);
        assert!(!anthropic.quota_exhausted);
    }

    #[test]
    fn parse_falls_back_to_status_and_raw_text() {
        let html = parse_upstream_error(Format::OpenaiChat, 502, b"<html>Bad gateway</html>");
        assert_eq!(html.kind, ErrorKind::Upstream);
        assert_eq!(html.message, "<html>Bad gateway</html>");
        let empty = parse_upstream_error(Format::Anthropic, 529, b"");
        assert_eq!(empty.kind, ErrorKind::Overloaded);
        assert_eq!(empty.message, "upstream returned status 529");
        let array = parse_upstream_error(
            Format::Gemini,
            503,
            br#"[{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}]"#,
        );
        assert_eq!(
            (array.kind, array.message.as_str()),
            (ErrorKind::Overloaded, "overloaded")
        );
        let long = vec![b'x'; 5000];
        assert_eq!(
            parse_upstream_error(Format::Gemini, 500, &long)
                .message
                .len(),
            500
        );
        let plain_string =
            parse_upstream_error(Format::OpenaiChat, 403, br#"{"error":"forbidden"}"#);
        assert_eq!(
            (plain_string.kind, plain_string.message.as_str()),
            (ErrorKind::PermissionDenied, "forbidden")
        );
    }

    #[test]
    fn openai_invalid_api_key_is_authentication() {
        let body = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let info = parse_upstream_error(Format::OpenaiChat, 401, body);
        assert_eq!(info.kind, ErrorKind::Authentication);
    }

    /// protocols.md §8 case 47.
    #[test]
    fn case_47_error_mapping() {
        let (status, body) = convert_error(
            Format::Gemini,
            Format::Anthropic,
            429,
            &gemini_rate_limit_body(),
        );
        assert_eq!(status, 429);
        assert_eq!(as_json(&body)["error"]["type"], "rate_limit_error");
        assert_eq!(
            parse_upstream_error(Format::Gemini, 429, &gemini_rate_limit_body())
                .retry_after_seconds,
            Some(4)
        );

        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let (status, body) = convert_error(Format::Anthropic, Format::OpenaiChat, 529, overloaded);
        assert_eq!(status, 503);
        assert_eq!(
            as_json(&body),
            json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded"}})
        );

        let unauthorized = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let (status, body) = convert_error(Format::OpenaiChat, Format::Gemini, 401, unauthorized);
        assert_eq!(status, 401);
        assert_eq!(
            as_json(&body),
            json!({"error": {"code": 401, "message": "Incorrect API key provided", "status": "UNAUTHENTICATED"}})
        );
    }

    #[test]
    fn convert_follows_the_mapping_table() {
        let unavailable = br#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
        let (status, body) = convert_error(Format::Gemini, Format::Anthropic, 503, unavailable);
        assert_eq!(
            (status, as_json(&body)["error"]["type"].clone()),
            (529, json!("overloaded_error"))
        );
        let (status, body) = convert_error(Format::Gemini, Format::OpenaiChat, 503, unavailable);
        assert_eq!(
            (status, as_json(&body)["error"]["type"].clone()),
            (503, json!("server_error"))
        );
        let (status, body) = convert_error(
            Format::Gemini,
            Format::OpenaiChat,
            429,
            &gemini_rate_limit_body(),
        );
        assert_eq!(
            (status, as_json(&body)["error"]["code"].clone()),
            (429, json!("rate_limit_exceeded"))
        );

        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let (status, body) = convert_error(Format::Anthropic, Format::Gemini, 529, overloaded);
        assert_eq!(
            (status, as_json(&body)["error"]["status"].clone()),
            (503, json!("UNAVAILABLE"))
        );
        let rate_limited =
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#;
        let (status, body) = convert_error(Format::Anthropic, Format::Gemini, 429, rate_limited);
        assert_eq!(
            (status, as_json(&body)["error"]["status"].clone()),
            (429, json!("RESOURCE_EXHAUSTED"))
        );

        let quota = testkit::provider_file("openai-responses/error-insufficient-quota.json");
        let (status, body) = convert_error(Format::OpenaiResponses, Format::Anthropic, 429, &quota);
        assert_eq!(
            (status, as_json(&body)["error"]["type"].clone()),
            (429, json!("rate_limit_error"))
        );
        let (status, body) = convert_error(Format::OpenaiResponses, Format::Gemini, 429, &quota);
        assert_eq!(
            (status, as_json(&body)["error"]["status"].clone()),
            (429, json!("RESOURCE_EXHAUSTED"))
        );

        let billing = br#"{"type":"error","error":{"type":"billing_error","message":"credit balance too low"}}"#;
        let (status, body) = convert_error(Format::Anthropic, Format::OpenaiChat, 402, billing);
        assert_eq!(
            (status, as_json(&body)["error"]["code"].clone()),
            (429, json!("insufficient_quota"))
        );

        let gemini_400 = testkit::provider_file("gemini/error-api-key.json");
        let (status, body) = convert_error(Format::Gemini, Format::Anthropic, 400, &gemini_400);
        assert_eq!(
            (status, as_json(&body)["error"]["type"].clone()),
            (400, json!("invalid_request_error"))
        );
        let forbidden = br#"{"error":{"code":403,"message":"no","status":"PERMISSION_DENIED"}}"#;
        let (_, body) = convert_error(Format::Antigravity, Format::Anthropic, 403, forbidden);
        assert_eq!(as_json(&body)["error"]["type"], "permission_error");
    }

    #[test]
    fn convert_passes_same_shape_bodies_through_unchanged() {
        let quota = testkit::provider_file("openai-responses/error-insufficient-quota.json");
        assert_eq!(
            convert_error(Format::OpenaiResponses, Format::OpenaiChat, 429, &quota),
            (429, quota.clone())
        );
        let gemini_400 = testkit::provider_file("gemini/error-api-key.json");
        assert_eq!(
            convert_error(Format::Antigravity, Format::Gemini, 400, &gemini_400),
            (400, gemini_400.clone())
        );
        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            convert_error(Format::Anthropic, Format::Anthropic, 529, overloaded),
            (529, overloaded.to_vec())
        );
        let (status, body) = convert_error(
            Format::Anthropic,
            Format::Anthropic,
            502,
            b"<html>bad gateway</html>",
        );
        assert_eq!(status, 502);
        assert_eq!(as_json(&body)["error"]["type"], "api_error");
    }

    #[test]
    fn stream_errors_are_valid_events_in_the_client_format() {
        let parse = |bytes: Vec<u8>| {
            let mut parser = SseParser::new(1 << 16);
            let mut events = Vec::new();
            parser.push(&bytes, &mut events).unwrap();
            assert!(bytes.ends_with(b"\n\n"));
            events
        };
        let chat = parse(render_stream_error(
            Format::OpenaiChat,
            ErrorKind::Overloaded,
            "busy",
        ));
        assert_eq!(chat.len(), 1);
        assert_eq!(chat[0].event, None);
        assert_eq!(as_json(chat[0].data.as_bytes())["error"]["message"], "busy");

        let responses = parse(render_stream_error(
            Format::OpenaiResponses,
            ErrorKind::Overloaded,
            "busy",
        ));
        let names: Vec<Option<&str>> = responses
            .iter()
            .map(|event| event.event.as_deref())
            .collect();
        assert_eq!(names, [Some("error"), Some("response.failed")]);
        let error = as_json(responses[0].data.as_bytes());
        assert_eq!(
            (error["type"].clone(), error["message"].clone()),
            (json!("error"), json!("busy"))
        );
        let failed = as_json(responses[1].data.as_bytes());
        assert_eq!(failed["response"]["status"], "failed");
        assert_eq!(failed["response"]["error"]["code"], "overloaded");

        let anthropic = parse(render_stream_error(
            Format::Anthropic,
            ErrorKind::Overloaded,
            "busy",
        ));
        assert_eq!(anthropic[0].event.as_deref(), Some("error"));
        assert_eq!(
            as_json(anthropic[0].data.as_bytes()),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        );

        let gemini = parse(render_stream_error(
            Format::Gemini,
            ErrorKind::Overloaded,
            "busy",
        ));
        assert_eq!(
            as_json(gemini[0].data.as_bytes()),
            json!({"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}})
        );
    }

    #[test]
    fn durations_round_up() {
        let cases = [
            ("3.9s", Some(4)),
            ("30s", Some(30)),
            ("0.000001s", Some(1)),
            ("2.000s", Some(2)),
            ("0s", Some(0)),
            ("abc", None),
            ("s", None),
            ("1.5", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration_seconds_ceil(text), expected, "{text}");
        }
    }

    #[test]
    fn success_bodies_that_are_not_answers() {
        let answer = br#"{"id":"x","choices":[{"message":{"content":"error"}}],"error":null}"#;
        assert_eq!(success_body_problem(Format::OpenaiChat, answer), None);
        assert_eq!(
            success_body_problem(Format::Gemini, br#"[{"candidates":[]}]"#),
            None
        );
        assert_eq!(
            success_body_problem(
                Format::OpenaiChat,
                br#"{"error":{"message":"the model crashed","type":"server_error"}}"#
            ),
            Some(SuccessBodyProblem::ErrorObject(
                "the model crashed".to_string()
            ))
        );
        assert_eq!(
            success_body_problem(
                Format::Anthropic,
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            Some(SuccessBodyProblem::ErrorObject("Overloaded".to_string()))
        );
        assert_eq!(
            success_body_problem(Format::Anthropic, b"<html>502 Bad Gateway</html>"),
            Some(SuccessBodyProblem::NotJson(
                "<html>502 Bad Gateway</html>".to_string()
            ))
        );
        assert!(matches!(
            success_body_problem(Format::OpenaiChat, b"[1, 2]"),
            Some(SuccessBodyProblem::NotJson(_))
        ));
        assert!(matches!(
            success_body_problem(Format::OpenaiChat, br#"{"id": "cut"#),
            Some(SuccessBodyProblem::NotJson(_))
        ));
    }
}
