//! Request head parsing (no IO): request line and headers into a `RequestHead`, with the
//! framing and connection rules of RFC 9112 that decide where the body ends.
//!
//! Every ambiguity that could let two parsers disagree about where a request ends (both
//! Content-Length and Transfer-Encoding, differing lengths, an unknown transfer coding) is
//! rejected, and the caller closes the connection after the error response.

use std::mem::MaybeUninit;

/// The parsed head of one request.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    /// The path part of the target, before any `?`.
    pub path: String,
    /// The query after `?`, without it; empty when there is none.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names in lower case, values trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body_framing: BodyFraming,
    /// Whether the client allows the connection to stay open after this request.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue` and waits for an interim response.
    pub expects_continue: bool,
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A head the server must refuse, with the status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadError {
    pub status: u16,
    pub message: &'static str,
}

impl HeadError {
    fn bad_request(message: &'static str) -> HeadError {
        HeadError {
            status: 400,
            message,
        }
    }
}

/// Parses a complete head from the start of `bytes`. Returns the head and its length in bytes
/// (the body starts right after), or `None` when `bytes` holds only part of a head.
///
/// Never inlined: its header slots take 1.5 KiB of stack. Inlined into the connection's
/// function (a 2,744-byte frame then, 1,240 now), they stayed on the stack under every streamed
/// response, and a held TLS stream's reads, which go deeper than a plain socket's (rustls'
/// `complete_io` alone takes 1.8 KiB), reached 9.5 to 10.5 KiB below the stack's top: a third
/// page kept resident per stream after `stack_pages` released the rest. Now they stay within
/// two pages, and 1,000 held TLS streams take 30.3 KiB each instead of 32.9 (plain streams
/// reached 7.9 KiB, just within two pages, and now have 1.5 KiB more to spare).
#[inline(never)]
pub fn parse_request_head(
    bytes: &[u8],
    max_header_count: usize,
) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut stack_slots = [const { MaybeUninit::<httparse::Header>::uninit() }; STACK_HEADER_SLOTS];
    if max_header_count <= STACK_HEADER_SLOTS {
        return parse_head_into(bytes, &mut stack_slots[..max_header_count]);
    }
    match parse_head_into(bytes, &mut stack_slots) {
        Err(HeadError { status: 431, .. }) => parse_head_into(bytes, &mut vec![MaybeUninit::uninit(); max_header_count]),
        parsed => parsed,
    }
}

/// Header slots on the stack: enough for every ordinary request (an SDK sends about fifteen
/// headers). A head with more, up to the configured maximum, is parsed again into slots on the
/// heap; allocating and clearing the maximum for every request cost more than httparse's parse.
const STACK_HEADER_SLOTS: usize = 48;

/// `parse_request_head` with `header_slots` as its limit; too many headers is a 431.
fn parse_head_into<'bytes>(
    bytes: &'bytes [u8],
    header_slots: &mut [MaybeUninit<httparse::Header<'bytes>>],
) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut parsed = httparse::Request::new(&mut []);
    let head_length = match parsed.parse_with_uninit_headers(bytes, header_slots) {
        Ok(httparse::Status::Complete(head_length)) => head_length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError {
                status: 431,
                message: "too many request headers",
            });
        }
        Err(httparse::Error::Version) => {
            return Err(HeadError::bad_request("unsupported HTTP version"));
        }
        Err(_) => return Err(HeadError::bad_request("malformed request head")),
    };
    // httparse fills all three once the head is complete.
    let (Some(method), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HeadError::bad_request("malformed request line"));
    };
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|header| {
            let value = crate::util::text_lossy(header.value).trim().to_string();
            (header.name.to_ascii_lowercase(), value)
        })
        .collect();
    let body_framing = body_framing(&headers)?;
    let (path, query) = split_target(target);
    let wants_close = has_token(&headers, "connection", "close");
    let wants_keep_alive = has_token(&headers, "connection", "keep-alive");
    // RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing as
    // far as intermediaries are concerned, so the connection must not be reused after it.
    let has_transfer_encoding_in_http_1_0 =
        minor_version == 0 && body_framing == BodyFraming::Chunked;
    let keep_alive = !wants_close
        && (minor_version == 1 || wants_keep_alive)
        && !has_transfer_encoding_in_http_1_0;
    let expects_continue = minor_version == 1 && has_token(&headers, "expect", "100-continue");
    let head = RequestHead {
        method: method.to_string(),
        path,
        query,
        minor_version,
        headers,
        body_framing,
        keep_alive,
        expects_continue,
    };
    Ok(Some((head, head_length)))
}

/// Decides the body framing from Content-Length and Transfer-Encoding.
fn body_framing(headers: &[(String, String)]) -> Result<BodyFraming, HeadError> {
    let transfer_codings = comma_separated_tokens(headers, "transfer-encoding");
    let has_transfer_encoding = headers.iter().any(|(name, _)| name == "transfer-encoding");
    let has_content_length = headers.iter().any(|(name, _)| name == "content-length");
    if has_transfer_encoding && has_content_length {
        return Err(HeadError::bad_request(
            "both Content-Length and Transfer-Encoding are present",
        ));
    }
    if has_transfer_encoding {
        if transfer_codings != ["chunked"] {
            return Err(HeadError::bad_request("unsupported Transfer-Encoding"));
        }
        return Ok(BodyFraming::Chunked);
    }
    let mut content_length = None;
    // A list of identical values (`5, 5`, or the header repeated) is allowed by RFC 9110
    // section 8.6; anything else is ambiguous.
    for value in headers
        .iter()
        .filter(|(name, _)| name == "content-length")
        .flat_map(|(_, value)| value.split(','))
    {
        let length = parse_content_length(value.trim())?;
        if content_length.is_some_and(|previous| previous != length) {
            return Err(HeadError::bad_request("conflicting Content-Length values"));
        }
        content_length = Some(length);
    }
    Ok(match content_length {
        Some(0) | None => BodyFraming::Empty,
        Some(length) => BodyFraming::Length(length),
    })
}

/// Parses a Content-Length value: decimal digits only, no sign, no overflow.
fn parse_content_length(value: &str) -> Result<u64, HeadError> {
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(HeadError::bad_request("invalid Content-Length"));
    }
    value
        .parse::<u64>()
        .map_err(|_| HeadError::bad_request("invalid Content-Length"))
}

/// Whether any header with this name lists `token` (lower case) among its comma-separated
/// tokens, in any case.
fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(header_name, _)| header_name == name)
        .flat_map(|(_, value)| value.split(','))
        .any(|listed| listed.trim().eq_ignore_ascii_case(token))
}

/// All comma-separated tokens of every header with this name, trimmed and lower-cased.
fn comma_separated_tokens(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(header_name, _)| header_name == name)
        .flat_map(|(_, value)| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// Splits a request target into path and query. An absolute-form target
/// (`http://host/path?query`, which RFC 9112 requires servers to accept) loses its scheme
/// and authority first.
fn split_target(target: &str) -> (String, String) {
    let origin_form = match without_scheme(target) {
        Some(authority_and_rest) => authority_and_rest
            .find(['/', '?'])
            .map_or("/", |start| &authority_and_rest[start..]),
        None => target,
    };
    let (path, query) = origin_form.split_once('?').unwrap_or((origin_form, ""));
    let path = if path.is_empty() { "/" } else { path };
    (path.to_string(), query.to_string())
}

/// The rest of an absolute-form target after `http://` or `https://` (any case).
fn without_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].into_iter().find_map(|scheme| {
        let prefix = target.get(..scheme.len())?;
        prefix
            .eq_ignore_ascii_case(scheme)
            .then(|| &target[scheme.len()..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RequestHead, HeadError> {
        let (head, length) = parse_request_head(text.as_bytes(), 16)?.expect("complete head");
        assert_eq!(length, text.len());
        Ok(head)
    }

    #[test]
    fn parses_method_path_query_and_lower_cased_headers() {
        let head = parse(
            "POST /v1/chat?key=abc&x=1 HTTP/1.1\r\nHost: a\r\nX-Custom-Thing:  value  \r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/v1/chat");
        assert_eq!(head.query, "key=abc&x=1");
        assert_eq!(
            head.headers,
            vec![
                ("host".to_string(), "a".to_string()),
                ("x-custom-thing".to_string(), "value".to_string())
            ]
        );
        assert_eq!(head.body_framing, BodyFraming::Empty);
        assert!(head.keep_alive);
        assert!(!head.expects_continue);
    }

    #[test]
    fn reports_a_partial_head() {
        assert!(
            parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n", 16)
                .unwrap()
                .is_none()
        );
        assert!(parse_request_head(b"GE", 16).unwrap().is_none());
    }

    #[test]
    fn accepts_absolute_form_targets() {
        let head = parse("GET http://example.com:8080/a/b?c=d HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((head.path.as_str(), head.query.as_str()), ("/a/b", "c=d"));
        let head = parse("GET HTTPS://example.com HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((head.path.as_str(), head.query.as_str()), ("/", ""));
    }

    #[test]
    fn decides_keep_alive_from_version_and_connection_header() {
        assert!(parse("GET / HTTP/1.1\r\n\r\n").unwrap().keep_alive);
        assert!(
            !parse("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !parse("GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn decides_body_framing() {
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n")
                .unwrap()
                .body_framing,
            BodyFraming::Length(12)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .body_framing,
            BodyFraming::Empty
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n")
                .unwrap()
                .body_framing,
            BodyFraming::Length(7)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 7, 7\r\n\r\n")
                .unwrap()
                .body_framing,
            BodyFraming::Length(7)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")
                .unwrap()
                .body_framing,
            BodyFraming::Chunked
        );
        let head =
            parse("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert!(head.expects_continue);
    }

    #[test]
    fn rejects_ambiguous_or_invalid_framing() {
        let rejected = [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for text in rejected {
            let error = parse(text).expect_err(text);
            assert_eq!(error.status, 400, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_heads_and_too_many_headers() {
        for text in [
            "GET /\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "\u{1}GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse_request_head(text.as_bytes(), 16).unwrap_err().status,
                400,
                "{text:?}"
            );
        }
        let many_headers: String = (0..17).map(|index| format!("x-{index}: 1\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many_headers}\r\n");
        assert_eq!(
            parse_request_head(text.as_bytes(), 16).unwrap_err().status,
            431
        );
    }

    #[test]
    fn heads_with_more_headers_than_the_stack_holds_are_read_up_to_the_limit() {
        let head_with = |count: usize| {
            let headers: String = (0..count).map(|index| format!("X-Header-{index}: value {index}\r\n")).collect();
            format!("GET / HTTP/1.1\r\n{headers}Connection: Close\r\n\r\n")
        };
        let text = head_with(STACK_HEADER_SLOTS + 20);
        let (head, length) = parse_request_head(text.as_bytes(), 100).unwrap().unwrap();
        assert_eq!(length, text.len());
        assert_eq!(head.headers.len(), STACK_HEADER_SLOTS + 21);
        assert_eq!(head.headers[STACK_HEADER_SLOTS + 19], (format!("x-header-{}", STACK_HEADER_SLOTS + 19), format!("value {}", STACK_HEADER_SLOTS + 19)));
        assert!(!head.keep_alive, "the last header, past the stack's slots, was read");
        assert_eq!(parse_request_head(head_with(100).as_bytes(), 100).unwrap_err().status, 431);
        assert!(parse_request_head(head_with(99).as_bytes(), 100).unwrap().is_some());
    }
}
