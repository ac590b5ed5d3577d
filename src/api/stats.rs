//! `GET /api/v1/stats/...`: totals, days, hours and per-dimension numbers, always live (database
//! rows merged with the deltas not yet written).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::api::error::ApiError;
use crate::api::{store_call, AdminContext};
use crate::http::{Request, Response};
use crate::stats::pricing::micros_to_usd;
use crate::stats::query::{fold_days, fold_hours, format_date, hour_range_of_days, parse_date, parse_rfc3339, parse_utc_offset};
use crate::store::entities::{StatsCounters, StatsGrouping, StatsRow};
use crate::util::unix_seconds;

/// Bounds of "all time" for hour ranges: far beyond any real timestamp, far from overflow.
const ALL_TIME: (i64, i64) = (-(1_i64 << 50), 1_i64 << 50);
/// The longest daily series one call may ask for (ten years).
const MAX_DAYS: i64 = 3_660;

/// The token, count and cost fields every statistics item carries.
pub fn counters_json(counters: &StatsCounters) -> Map<String, Value> {
    let value = json!({
        "requests": counters.requests,
        "success": counters.success,
        "failed": counters.failed,
        "input_tokens": counters.input_tokens,
        "output_tokens": counters.output_tokens,
        "cache_read_tokens": counters.cache_read_tokens,
        "cache_write_tokens": counters.cache_write_tokens,
        "reasoning_tokens": counters.reasoning_tokens,
        "cost": micros_to_usd(counters.cost_micros),
    });
    object(value)
}

/// The fields plus average latency and time to first token.
fn counters_with_averages(counters: &StatsCounters) -> Map<String, Value> {
    let mut map = counters_json(counters);
    let average = |sum: i64, count: i64| if count > 0 { json!((sum as f64 / count as f64).round() as i64) } else { json!(0) };
    map.insert("avg_latency_ms".to_string(), average(counters.latency_ms_sum, counters.requests));
    map.insert("avg_ttft_ms".to_string(), average(counters.ttft_ms_sum, counters.ttft_count));
    map
}

/// `?from=&to=` (RFC 3339) as an hour range; absent bounds are open.
fn hour_range(request: &Request) -> Result<(i64, i64), ApiError> {
    let bound = |name: &str| -> Result<Option<i64>, ApiError> {
        match request.query_param(name) {
            None => Ok(None),
            Some(text) if text.is_empty() => Ok(None),
            Some(text) => parse_rfc3339(&text)
                .map(Some)
                .ok_or_else(|| ApiError::Malformed(format!("{name} must be an RFC 3339 time such as 2026-12-04T00:00:00Z, got {text:?}"))),
        }
    };
    let from = bound("from")?.map_or(ALL_TIME.0, |seconds| seconds.div_euclid(3_600) * 3_600);
    let to = bound("to")?.map_or(ALL_TIME.1, |seconds| (seconds + 3_599).div_euclid(3_600) * 3_600);
    Ok((from, to))
}

fn utc_offset(request: &Request) -> Result<i64, ApiError> {
    match request.query_param("tz") {
        None => Ok(0),
        Some(text) if text.is_empty() => Ok(0),
        // A literal `+08:00` in a query string arrives as ` 08:00` (form encoding turns `+` into a
        // space), so a leading space is read as the plus it was.
        Some(text) => parse_utc_offset(&text.replacen(' ', "+", 1))
            .ok_or_else(|| ApiError::Malformed(format!("tz must be a UTC offset such as +08:00 or -05:00, got {text:?}"))),
    }
}

fn grouped(context: &AdminContext, from: i64, to: i64, grouping: StatsGrouping) -> Result<Vec<StatsRow>, ApiError> {
    context.stats.grouped(from, to, grouping).map_err(ApiError::from)
}

pub fn summary(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let (from, to) = hour_range(request)?;
    let rows = grouped(context, from, to, StatsGrouping::Total)?;
    let mut total = StatsCounters::default();
    rows.iter().for_each(|row| total.add(&row.counters));
    Ok(Response::json(200, &Value::Object(counters_with_averages(&total))))
}

pub fn daily(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let days = match request.query_param("days") {
        None => 30,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|days| (1..=MAX_DAYS).contains(days))
            .ok_or_else(|| ApiError::Malformed(format!("days must be a whole number from 1 to {MAX_DAYS}, got {text:?}")))?,
    };
    let offset = utc_offset(request)?;
    let now = unix_seconds();
    let today = (now + offset).div_euclid(86_400);
    let (from, to) = hour_range_of_days(today - days + 1, today, offset);
    let rows = grouped(context, from, to, StatsGrouping::Hour)?;
    let items: Vec<Value> = fold_days(&rows, days, offset, now)
        .into_iter()
        .map(|(day, counters)| {
            let mut item = counters_json(&counters);
            item.insert("date".to_string(), json!(format_date(day)));
            Value::Object(item)
        })
        .collect();
    Ok(Response::json(200, &json!({ "items": items })))
}

pub fn hourly(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let offset = utc_offset(request)?;
    let day = match request.query_param("date") {
        None => (unix_seconds() + offset).div_euclid(86_400),
        Some(text) => parse_date(&text).ok_or_else(|| ApiError::Malformed(format!("date must be YYYY-MM-DD, got {text:?}")))?,
    };
    let (from, to) = hour_range_of_days(day, day, offset);
    let rows = grouped(context, from, to, StatsGrouping::Hour)?;
    let items: Vec<Value> = fold_hours(&rows, day, offset)
        .iter()
        .enumerate()
        .map(|(hour, counters)| {
            let mut item = counters_json(counters);
            item.insert("hour".to_string(), json!(hour));
            Value::Object(item)
        })
        .collect();
    Ok(Response::json(200, &json!({ "date": format_date(day), "items": items })))
}

/// Items sorted by requests, busiest first.
fn ranked(rows: Vec<StatsRow>, identity: impl Fn(&StatsRow) -> Map<String, Value>) -> Response {
    let mut rows = rows;
    rows.retain(|row| row.counters.requests > 0);
    rows.sort_by(|left, right| right.counters.requests.cmp(&left.counters.requests).then_with(|| left.key.cmp(&right.key)));
    let items: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut item = identity(row);
            item.extend(counters_with_averages(&row.counters));
            Value::Object(item)
        })
        .collect();
    Response::json(200, &json!({ "items": items }))
}

fn channel_names(context: &AdminContext) -> Result<HashMap<i64, String>, ApiError> {
    Ok(store_call(context, |store| store.list_channels())?.into_iter().map(|channel| (channel.id, channel.name)).collect())
}

/// The name shown for an id that is no longer in the database.
fn name_or_deleted(names: &HashMap<i64, String>, id: i64) -> Value {
    match (id, names.get(&id)) {
        (0, _) => Value::Null,
        (_, Some(name)) => json!(name),
        (_, None) => json!(format!("#{id} (deleted)")),
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

pub fn by_channel(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let (from, to) = hour_range(request)?;
    let rows = grouped(context, from, to, StatsGrouping::Channel)?;
    let names = channel_names(context)?;
    Ok(ranked(rows, |row| {
        let id = row.key.channel_id;
        object(json!({ "channel_id": if id == 0 { Value::Null } else { json!(id) }, "channel_name": name_or_deleted(&names, id) }))
    }))
}

pub fn by_api_key(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let (from, to) = hour_range(request)?;
    let rows = grouped(context, from, to, StatsGrouping::ApiKey)?;
    let names: HashMap<i64, String> =
        store_call(context, |store| store.list_api_keys())?.into_iter().map(|key| (key.id, key.name)).collect();
    Ok(ranked(rows, |row| {
        let id = row.key.api_key_id;
        object(json!({ "api_key_id": if id == 0 { Value::Null } else { json!(id) }, "api_key_name": name_or_deleted(&names, id) }))
    }))
}

pub fn by_group(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let (from, to) = hour_range(request)?;
    let rows = grouped(context, from, to, StatsGrouping::Group)?;
    Ok(ranked(rows, |row| object(json!({ "group": row.key.group }))))
}

pub fn by_model(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let (from, to) = hour_range(request)?;
    let rows = grouped(context, from, to, StatsGrouping::ChannelModel)?;
    let names = channel_names(context)?;
    Ok(ranked(rows, |row| {
        let id = row.key.channel_id;
        object(json!({
            "channel_id": if id == 0 { Value::Null } else { json!(id) },
            "channel_name": name_or_deleted(&names, id),
            "model": row.key.model,
        }))
    }))
}
