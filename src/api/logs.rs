//! `GET /api/v1/logs`, `/logs/{id}` and the live tail `/logs/tail` (server-sent events).

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::{auth, store_call, AdminContext};
use crate::http::{Request, Response};
use crate::stats::log_view::{log_detail, log_item};
use crate::stats::query::parse_rfc3339;
use crate::store::entities::LogFilter;

const DEFAULT_PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: u64 = 500;
/// A comment line this often keeps proxies from closing an idle tail and notices a gone client.
const TAIL_KEEPALIVE: Duration = Duration::from_secs(15);

fn whole_number(request: &Request, name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> Result<u64, ApiError> {
    match request.query_param(name) {
        None => Ok(default),
        Some(text) if text.is_empty() => Ok(default),
        Some(text) => text.parse::<u64>().ok().filter(|value| range.contains(value)).ok_or_else(|| {
            ApiError::Malformed(format!("{name} must be a whole number from {} to {}, got {text:?}", range.start(), range.end()))
        }),
    }
}

fn optional_id(request: &Request, name: &str) -> Result<Option<i64>, ApiError> {
    match request.query_param(name) {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => {
            text.parse::<i64>().map(Some).map_err(|_| ApiError::Malformed(format!("{name} must be a whole number, got {text:?}")))
        }
    }
}

fn optional_time_ms(request: &Request, name: &str) -> Result<Option<i64>, ApiError> {
    match request.query_param(name) {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => parse_rfc3339(&text)
            .map(|seconds| Some(seconds * 1_000))
            .ok_or_else(|| ApiError::Malformed(format!("{name} must be an RFC 3339 time such as 2026-12-04T00:00:00Z, got {text:?}"))),
    }
}

fn filter_of(request: &Request) -> Result<LogFilter, ApiError> {
    let success = match request.query_param("status").as_deref() {
        None | Some("") => None,
        Some("success") => Some(true),
        Some("failed") => Some(false),
        Some(other) => return Err(ApiError::Malformed(format!("status must be success or failed, got {other:?}"))),
    };
    Ok(LogFilter {
        group: request.query_param("group").filter(|group| !group.is_empty()),
        channel_id: optional_id(request, "channel_id")?,
        api_key_id: optional_id(request, "api_key_id")?,
        success,
        from_ms: optional_time_ms(request, "from")?,
        to_ms: optional_time_ms(request, "to")?,
    })
}

pub fn list(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let page = whole_number(request, "page", 1, 1..=1_000_000)?;
    let page_size = whole_number(request, "page_size", DEFAULT_PAGE_SIZE, 1..=MAX_PAGE_SIZE)?;
    let filter = filter_of(request)?;
    let offset = (page - 1) * page_size;
    write_queued_logs(context);
    let (logs, total) = store_call(context, move |store| store.list_logs(&filter, offset, page_size))?;
    let items: Vec<Value> = logs.iter().map(log_item).collect();
    Ok(Response::json(200, &json!({ "items": items, "total": total, "page": page, "page_size": page_size })))
}

pub fn get(context: &AdminContext, id: i64) -> Result<Response, ApiError> {
    write_queued_logs(context);
    let log = store_call(context, move |store| store.log_by_id(id))?
        .ok_or_else(|| ApiError::NotFound(format!("no request log with id {id} (it may have been pruned)")))?;
    Ok(Response::json(200, &log_detail(&log)))
}

/// Writes the request logs the stats writer holds before a read. It writes them about once a
/// second, while the dashboard and the live tail show a request within a tenth of one: without
/// this the logs page could lack requests the dashboard had just counted, and a request just
/// seen on the live tail could not be opened. A write that fails leaves them queued for the
/// writer's next try, and the read goes on.
fn write_queued_logs(context: &AdminContext) {
    if let Err(error) = context.stats.flush_logs() {
        log::debug!("writing the queued request logs before a read failed: {error}");
    }
}

/// The live tail: `data: <log item>` for every request finished from now on. Browsers cannot
/// set headers on an `EventSource`, so the session token is also accepted as `?token=`.
pub fn tail(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    match request.query_param("token") {
        Some(token) if !token.is_empty() => auth::authenticate_token(context, &token)?,
        _ => auth::authenticate(context, request)?,
    };
    let listener = context.stats.tail.subscribe();
    Ok(Response::stream(200, "text/event-stream", move |writer| {
        writer.write_chunk(b"retry: 3000\n: connected\n\n")?;
        loop {
            match listener.receiver.recv_timeout(TAIL_KEEPALIVE) {
                Ok(item) => {
                    listener.consumed();
                    writer.write_chunk(format!("data: {item}\n\n").as_bytes())?;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => writer.write_chunk(b": keepalive\n\n")?,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    })
    .with_header("cache-control", "no-cache")
    .with_header("x-accel-buffering", "no"))
}
