//! `/api/v1/prices`: the price list per tier (defaults, or one channel's effective prices), price
//! CRUD, the effective price of one (channel, model), and the models.dev sync.
//!
//! Prices are USD per 1M tokens. A stored row with `channel_id` null is the default price of a
//! model on every channel; one with a channel id applies to that channel only. Rows that are not
//! stored (`source` `models.dev` or `unpriced`) have `id` null: the panel turns them into stored
//! rows by POSTing them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use crate::api::body;
use crate::api::error::ApiError;
use crate::api::{store_call, AdminContext};
use crate::http::{Request, Response};
use crate::stats::log_view::rfc3339_millis;
use crate::stats::pricing::{Price, PriceBook, PriceSource};
use crate::store::entities::{Channel, Group, ModelPrice};
use crate::sync::price_sync;

const CREATE_FIELDS: &[&str] = &["model", "channel_id", "input", "output", "cache_read", "cache_write"];
const PRICE_FIELDS: &[&str] = &["input", "output", "cache_read", "cache_write"];
const READ_ONLY_FIELDS: &[&str] = &["id", "source"];

/// `GET /api/v1/prices?channel_id=`: without a channel, every default row plus what the models in
/// use would cost without one; with a channel, the price each of its models is charged at.
pub fn list(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let channel_id = optional_channel_query(request)?;
    let (rows, channels, groups) =
        store_call(context, |store| Ok((store.list_prices()?, store.list_channels()?, store.list_groups()?)))?;
    let channel_types = channels.iter().map(|channel| (channel.id, channel.channel_type)).collect();
    // Built from the rows just read rather than taken from the shared book, so a list right after
    // a write shows that write even if another node made it.
    let book = PriceBook::new(&rows, channel_types, Some(context.stats.prices.catalog()));
    let items = match channel_id {
        None => defaults_view(&rows, &channels, &groups, &book),
        Some(channel_id) => {
            let channel = channels
                .iter()
                .find(|channel| channel.id == channel_id)
                .ok_or_else(|| ApiError::NotFound(format!("no channel with id {channel_id}")))?;
            channel_view(channel, &rows, &groups, &book)
        }
    };
    Ok(Response::json(200, &json!({ "items": items })))
}

/// `POST /api/v1/prices`: stores the price of (model, channel_id), replacing the one stored for
/// that pair if there is one.
pub fn create(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let map = body::json_object(request, CREATE_FIELDS, READ_ONLY_FIELDS)?;
    let model = body::check_name("model", &body::required_string(&map, "model")?)?;
    let channel_id = channel_id_field(&map)?;
    let price = Price {
        input: required_price(&map, "input")?,
        output: required_price(&map, "output")?,
        cache_read: optional_price(&map, "cache_read")?.unwrap_or(0.0),
        cache_write: optional_price(&map, "cache_write")?.unwrap_or(0.0),
    };
    let row = ModelPrice {
        id: 0,
        model,
        channel_id,
        input: price.input,
        output: price.output,
        cache_read: price.cache_read,
        cache_write: price.cache_write,
    };
    let stored = store_call(context, move |store| {
        if let Some(channel_id) = row.channel_id
            && store.channel_by_id(channel_id)?.is_none()
        {
            return Ok(None);
        }
        store.upsert_price(&row).map(Some)
    })?
    .ok_or_else(|| ApiError::Invalid(format!("channel_id {} is not a channel", channel_id.unwrap_or_default())))?;
    context.notify_change();
    Ok(Response::json(201, &stored_row_json(&stored)))
}

/// `PUT /api/v1/prices/{id}`: changes any of the four prices. `model` and `channel_id` may be
/// sent back as they are, but not changed: that is another row (delete this one, create that).
pub fn update(context: &AdminContext, request: &Request, id: i64) -> Result<Response, ApiError> {
    let known: Vec<&str> = PRICE_FIELDS.iter().chain(["model", "channel_id"].iter()).copied().collect();
    let map = body::json_object(request, &known, READ_ONLY_FIELDS)?;
    let mut changes = [None; 4];
    for (index, field) in PRICE_FIELDS.iter().enumerate() {
        changes[index] = optional_price(&map, field)?;
    }
    let sent_model = body::optional_string(&map, "model")?;
    let sent_channel = map.contains_key("channel_id").then(|| channel_id_field(&map)).transpose()?;
    let outcome = store_call(context, move |store| {
        let Some(mut row) = store.list_prices()?.into_iter().find(|row| row.id == id) else {
            return Ok(Err(ApiError::NotFound(format!("no price with id {id}"))));
        };
        if sent_model.as_deref().is_some_and(|model| model.trim() != row.model) {
            return Ok(Err(ApiError::Invalid("model cannot be changed; delete this price and create one for the other model".to_string())));
        }
        if sent_channel.is_some_and(|channel_id| channel_id != row.channel_id) {
            return Ok(Err(ApiError::Invalid("channel_id cannot be changed; delete this price and create one for the other channel".to_string())));
        }
        let [input, output, cache_read, cache_write] = changes;
        row.input = input.unwrap_or(row.input);
        row.output = output.unwrap_or(row.output);
        row.cache_read = cache_read.unwrap_or(row.cache_read);
        row.cache_write = cache_write.unwrap_or(row.cache_write);
        store.upsert_price(&row).map(Ok)
    })?;
    let stored = outcome?;
    context.notify_change();
    Ok(Response::json(200, &stored_row_json(&stored)))
}

pub fn delete(context: &AdminContext, id: i64) -> Result<Response, ApiError> {
    if !store_call(context, move |store| store.delete_price(id))? {
        return Err(ApiError::NotFound(format!("no price with id {id}")));
    }
    context.notify_change();
    Ok(Response::json(200, &json!({ "deleted": id })))
}

/// `GET /api/v1/prices/effective?channel_id=&model=`: the price requests are charged at now.
pub fn effective(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let model = request
        .query_param("model")
        .map(|model| model.trim().to_string())
        .filter(|model| !model.is_empty())
        .ok_or_else(|| ApiError::Malformed("the model query parameter is required".to_string()))?;
    let channel_id = optional_channel_query(request)?;
    if let Some(channel_id) = channel_id
        && store_call(context, move |store| store.channel_by_id(channel_id))?.is_none()
    {
        return Err(ApiError::NotFound(format!("no channel with id {channel_id}")));
    }
    let (price, source) = context.stats.prices.book().effective(channel_id, &model);
    let mut shown = price_fields(&model, channel_id, &price, source);
    shown.remove("id");
    Ok(Response::json(200, &Value::Object(shown)))
}

/// `POST /api/v1/prices/sync`: fetches the catalogue now and answers when it is in force.
pub fn sync_now(context: &AdminContext) -> Result<Response, ApiError> {
    price_sync::sync_prices(&context.stats, &context.upstream).map_err(|error| ApiError::UpstreamFailed(format!("price sync failed: {error}")))?;
    let status = context.stats.prices.status();
    Ok(Response::json(
        200,
        &json!({ "models": status.models, "at": status.last_sync_at.map(|seconds| rfc3339_millis(seconds.saturating_mul(1_000))) }),
    ))
}

/// `GET /api/v1/prices/sync`: how the last sync went.
pub fn sync_status(context: &AdminContext) -> Result<Response, ApiError> {
    let status = context.stats.prices.status();
    Ok(Response::json(
        200,
        &json!({
            "last_sync_at": status.last_sync_at.map(|seconds| rfc3339_millis(seconds.saturating_mul(1_000))),
            "last_error": status.last_error,
            "models": status.models,
        }),
    ))
}

/// Every default row, then for each model some channel or group uses without a default row the
/// price the catalogue gives it (or a zero `unpriced` row to fill in), sorted by model.
fn defaults_view(rows: &[ModelPrice], channels: &[Channel], groups: &[Group], book: &PriceBook) -> Vec<Value> {
    let mut items: BTreeMap<String, Value> = BTreeMap::new();
    for row in rows.iter().filter(|row| row.channel_id.is_none()) {
        items.insert(row.model.clone(), stored_row_json(row));
    }
    let used = channels
        .iter()
        .flat_map(|channel| channel.models.iter())
        .chain(groups.iter().flat_map(|group| group.items.iter().map(|item| &item.model)));
    for model in used {
        if !items.contains_key(model) {
            let (price, source) = book.effective(None, model);
            items.insert(model.clone(), Value::Object(price_fields(model, None, &price, source)));
        }
    }
    items.into_values().collect()
}

/// The effective price of every model of `channel` (its model list, the models group items
/// route to it, and its own stored rows), sorted by model.
fn channel_view(channel: &Channel, rows: &[ModelPrice], groups: &[Group], book: &PriceBook) -> Vec<Value> {
    let mut models: BTreeSet<&str> = channel.models.iter().map(String::as_str).collect();
    for group in groups {
        models.extend(group.items.iter().filter(|item| item.channel_id == channel.id).map(|item| item.model.as_str()));
    }
    models.extend(rows.iter().filter(|row| row.channel_id == Some(channel.id)).map(|row| row.model.as_str()));
    let row_ids: HashMap<(Option<i64>, &str), i64> = rows.iter().map(|row| ((row.channel_id, row.model.as_str()), row.id)).collect();
    models
        .into_iter()
        .map(|model| {
            let (price, source) = book.effective(Some(channel.id), model);
            let channel_id = (source == PriceSource::Channel).then_some(channel.id);
            let mut fields = price_fields(model, channel_id, &price, source);
            let id = match source {
                PriceSource::Channel | PriceSource::Default => row_ids.get(&(channel_id, model)).copied(),
                PriceSource::ModelsDev | PriceSource::Unpriced => None,
            };
            fields.insert("id".to_string(), json!(id));
            Value::Object(fields)
        })
        .collect()
}

fn stored_row_json(row: &ModelPrice) -> Value {
    let source = if row.channel_id.is_some() { PriceSource::Channel } else { PriceSource::Default };
    let mut fields = price_fields(&row.model, row.channel_id, &Price::from(row), source);
    fields.insert("id".to_string(), json!(row.id));
    Value::Object(fields)
}

/// One item of the contract's shape, with `id` null (callers set it for stored rows).
fn price_fields(model: &str, channel_id: Option<i64>, price: &Price, source: PriceSource) -> Map<String, Value> {
    let shown = json!({
        "id": null,
        "model": model,
        "channel_id": channel_id,
        "input": price.input,
        "output": price.output,
        "cache_read": price.cache_read,
        "cache_write": price.cache_write,
        "source": source.as_str(),
    });
    match shown {
        Value::Object(fields) => fields,
        _ => Map::new(),
    }
}

/// `?channel_id=`: absent or empty means none; anything else must be a positive id.
fn optional_channel_query(request: &Request) -> Result<Option<i64>, ApiError> {
    match request.query_param("channel_id") {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Ok(None),
        Some(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| ApiError::Malformed(format!("channel_id must be a channel id, got {text:?}"))),
    }
}

/// The body's `channel_id`: null or absent for a default price, else a positive id.
fn channel_id_field(map: &Map<String, Value>) -> Result<Option<i64>, ApiError> {
    match map.get("channel_id") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| ApiError::Invalid("channel_id must be a channel id, or null for a default price".to_string())),
    }
}

fn required_price(map: &Map<String, Value>, field: &str) -> Result<f64, ApiError> {
    optional_price(map, field)?.ok_or_else(|| ApiError::Invalid(format!("{field} is required (USD per 1M tokens)")))
}

/// A price field: a finite number of 0 or more (USD per 1M tokens); null counts as absent.
fn optional_price(map: &Map<String, Value>, field: &str) -> Result<Option<f64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|price| price.is_finite() && *price >= 0.0)
            .map(Some)
            .ok_or_else(|| ApiError::Invalid(format!("{field} must be a number of 0 or more (USD per 1M tokens)"))),
    }
}
