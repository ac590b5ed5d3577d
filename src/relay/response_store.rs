//! Stored OpenAI Responses: `store` and `previous_response_id` on `POST /v1/responses`, and the
//! `GET|DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items` endpoints.
//!
//! The gateway keeps each answered response's whole conversation (input items, earlier turns
//! already expanded, and output items) in the database under the `resp_…` id the client saw.
//! A later request naming it as `previous_response_id` gets that conversation prepended to its
//! own input and the field removed, before any channel is chosen: the request that reaches the
//! attempt loop is an ordinary stateless one, so it converts to every channel type, and an
//! OpenAI Responses upstream never sees an id it did not issue.
//!
//! Reads go through `StorePool::call` (the coroutine parks, no worker blocks). Writes never
//! delay an answer: they go over a bounded channel to one saver thread, and are dropped with a
//! warning when that channel is full or a response is over `MAX_STORED_RESPONSE_BYTES`. A
//! response is queued before its last bytes reach the client and stays readable from memory
//! until its row is written, so a client that continues at once never races the database write
//! (on the same node; nodes sharing a database see it once it is written, a few milliseconds).
//! Only the client key that created a response may read, continue or delete it; for any other
//! key it does not exist (404), so ids cannot be probed across keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use serde_json::{Map, Value, json};

use crate::http::{Request, Response};
use crate::protocol::Format;
use crate::protocol::sse::{SseEvent, SseParser};
use crate::relay::RelayState;
use crate::relay::client_auth::authenticate;
use crate::relay::error::RelayError;
use crate::relay::inbound::{InboundCall, continued_response_id};
use crate::store::entities::{ApiKey, StoredResponse};
use crate::store::pool::StorePool;
use crate::util;

/// The largest response (input items, output items and response object together) that is
/// stored. A longer conversation is still answered, but cannot be continued by id: the client
/// gets a 404 for it and must send the history itself.
pub const MAX_STORED_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// The most bytes all stored responses may hold together; the job `prune_responses` deletes the
/// oldest beyond it (after the expired ones), so a busy gateway on a small disk stays bounded.
pub const MAX_STORED_RESPONSES_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
/// Saves waiting for the saver thread. Past this the database is not keeping up, and a save is
/// dropped (and logged) rather than holding memory or the client.
const SAVE_QUEUE_CAPACITY: usize = 256;

/// Responses queued for the saver thread and not written yet, by id.
type Unsaved = Arc<Mutex<HashMap<String, Arc<StoredResponse>>>>;

/// The sending side of the saver thread, and the responses it has not written yet.
pub struct ResponseSaver {
    sender: crossbeam_channel::Sender<Arc<StoredResponse>>,
    /// Bounded by the queue: an entry is added only when its send succeeds and removed once
    /// the saver thread is done with it.
    unsaved: Unsaved,
}

impl ResponseSaver {
    /// Starts the saver thread; it ends once the saver is dropped and the queue is drained.
    pub fn start(store: StorePool) -> ResponseSaver {
        let (sender, receiver) = crossbeam_channel::bounded::<Arc<StoredResponse>>(SAVE_QUEUE_CAPACITY);
        let unsaved: Unsaved = Arc::default();
        let unsaved_for_thread = unsaved.clone();
        let spawned = thread::Builder::new().name("response-saver".to_string()).spawn(move || {
            for response in receiver {
                let id = response.id.clone();
                // A response deleted while it waited is not written at all.
                if !lock(&unsaved_for_thread).contains_key(&id) {
                    continue;
                }
                let to_write = response.clone();
                if let Err(error) = store.call(move |store| store.save_response(&to_write)) {
                    log::warn!("could not store the response {id}: {error}");
                }
                let mut unsaved = lock(&unsaved_for_thread);
                if unsaved.get(&id).is_some_and(|waiting| Arc::ptr_eq(waiting, &response)) {
                    unsaved.remove(&id);
                }
            }
        });
        if let Err(error) = spawned {
            log::error!("cannot start the response saver thread, responses will not be stored: {error}");
        }
        ResponseSaver { sender, unsaved }
    }

    fn save(&self, response: StoredResponse) {
        let response = Arc::new(response);
        let id = response.id.clone();
        lock(&self.unsaved).insert(id.clone(), response.clone());
        if self.sender.try_send(response).is_err() {
            lock(&self.unsaved).remove(&id);
            log::warn!("the response store is not keeping up; not storing the response {id}");
        }
    }

    /// A response queued and not yet written.
    fn unsaved(&self, id: &str) -> Option<StoredResponse> {
        lock(&self.unsaved).get(id).map(|response| StoredResponse::clone(response))
    }

    /// Forgets a queued response so that it is not written; whether one was queued.
    fn forget(&self, id: &str) -> bool {
        lock(&self.unsaved).remove(id).is_some()
    }
}

fn lock(unsaved: &Unsaved) -> MutexGuard<'_, HashMap<String, Arc<StoredResponse>>> {
    unsaved.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What is needed to store the answer of one `POST /v1/responses` once it is known.
pub struct PendingSave {
    api_key_id: i64,
    model: String,
    /// The whole conversation this request sent, as a JSON array of input items.
    input_items: Vec<Value>,
    expire_after_seconds: i64,
}

/// Resolves `previous_response_id` in a Responses call (rewriting its body into a stateless
/// request) and decides whether its answer is to be stored. Other protocols pass untouched.
pub fn prepare(state: &RelayState, api_key: &ApiKey, call: &mut InboundCall) -> Result<Option<PendingSave>, RelayError> {
    // A stateless call (read from the body's head) ends below with nothing to store either way;
    // knowing it up front spares parsing and copying the whole conversation.
    if call.client_format != Format::OpenaiResponses || call.stateless_responses_call {
        return Ok(None);
    }
    let Some(body) = call.body().as_object() else { return Ok(None) };
    let mut input_items = match body.get("input") {
        None => Vec::new(),
        Some(Value::String(text)) => vec![json!({"type": "message", "role": "user", "content": text})],
        Some(Value::Array(items)) => items.clone(),
        // Left for the converter, which answers with the precise 400.
        Some(_) => return Ok(None),
    };
    let previous_id = continued_response_id(body.get("previous_response_id"))?.map(str::to_string);
    if let Some(previous_id) = previous_id {
        let previous = load_owned(state, api_key.id, &previous_id)?
            .ok_or_else(|| RelayError::NotFound(format!("Previous response with id '{previous_id}' not found.")))?;
        let mut history = continuation_items(&previous);
        history.append(&mut input_items);
        input_items = history;
        if let Some(body) = call.body_mut().as_object_mut() {
            body.remove("previous_response_id");
            body.insert("input".to_string(), Value::Array(input_items.clone()));
        }
    }
    if call.body().get("store").and_then(Value::as_bool) == Some(false) {
        return Ok(None);
    }
    let hours = state.stats.settings.get().response_store_hours;
    Ok(Some(PendingSave {
        api_key_id: api_key.id,
        model: call.model.clone(),
        input_items,
        expire_after_seconds: i64::try_from(hours.saturating_mul(3_600)).unwrap_or(i64::MAX),
    }))
}

impl PendingSave {
    /// Stores a complete (non-stream) answer: the client's body, in the Responses format.
    pub fn save_body(self, state: &RelayState, body: &[u8]) {
        match serde_json::from_slice::<Value>(body) {
            Ok(response) => self.save_response_object(state, response),
            Err(error) => log::warn!("not storing a response whose body is not JSON: {error}"),
        }
    }

    /// Queues the response object for the saver thread.
    fn save_response_object(self, state: &RelayState, mut response: Value) {
        let Some(id) = response.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()).map(str::to_string) else {
            log::warn!("not storing a response without an id");
            return;
        };
        let output_items = response.get("output").cloned().unwrap_or_else(|| Value::Array(Vec::new()));
        if let Some(object) = response.as_object_mut() {
            // What the client sees on a later GET says that the response is stored.
            object.insert("store".to_string(), Value::Bool(true));
        }
        let mut input_items = self.input_items;
        give_item_ids(&mut input_items);
        let input_items = Value::Array(input_items).to_string();
        let output_items = output_items.to_string();
        let response_json = response.to_string();
        let size_bytes = input_items.len() + output_items.len() + response_json.len();
        if size_bytes > MAX_STORED_RESPONSE_BYTES {
            log::warn!(
                "not storing the response {id}: {size_bytes} bytes is over the {MAX_STORED_RESPONSE_BYTES}-byte cap; \
                 the client must send the history itself to continue it"
            );
            return;
        }
        let created_at = response.get("created_at").and_then(Value::as_i64).unwrap_or_else(util::unix_seconds);
        let now = util::unix_seconds();
        state.response_saver.save(StoredResponse {
            id,
            api_key_id: self.api_key_id,
            created_at,
            expires_at: now.saturating_add(self.expire_after_seconds),
            model: self.model,
            response_json,
            input_items,
            output_items,
            size_bytes: size_bytes as i64,
        });
    }
}

/// Watches the client bytes of a Responses stream for the terminal event, whose `response` is
/// the object to store. Only complete and incomplete answers are stored; a failed one is not.
/// The caller shows it each chunk before writing it, so the response is queued (and readable)
/// before the client can have read the end of the stream and sent its next turn.
pub struct StreamCapture {
    pending: Option<PendingSave>,
    parser: SseParser,
    events: Vec<SseEvent>,
}

impl StreamCapture {
    pub fn new(pending: PendingSave) -> StreamCapture {
        // The terminal event repeats the whole output, so it may be as large as a stored response.
        StreamCapture { pending: Some(pending), parser: SseParser::new(MAX_STORED_RESPONSE_BYTES * 2), events: Vec::new() }
    }

    /// Looks at the next client bytes; stores the response when they hold the terminal event.
    pub fn observe(&mut self, state: &RelayState, client_bytes: &[u8]) {
        if self.pending.is_none() {
            return;
        }
        self.events.clear();
        if self.parser.push(client_bytes, &mut self.events).is_err() {
            // An oversized event: the response is over the cap anyway.
            return;
        }
        for event in &self.events {
            let name = event.event.as_deref().unwrap_or_default();
            if !matches!(name, "response.completed" | "response.incomplete") && !event.data.contains("\"response.completed\"") {
                continue;
            }
            if let Ok(mut data) = serde_json::from_str::<Value>(&event.data)
                && matches!(data.get("type").and_then(Value::as_str), Some("response.completed" | "response.incomplete"))
                && let Some(response) = data.get_mut("response").map(Value::take)
                && let Some(pending) = self.pending.take()
            {
                pending.save_response_object(state, response);
                return;
            }
        }
    }
}

/// The items that continue a stored response: its input, then its output. Item ids are left
/// out, because an upstream would try to look them up in its own store (where ours are unknown),
/// and reasoning items without `encrypted_content` are dropped: they can only be resolved by id.
fn continuation_items(previous: &StoredResponse) -> Vec<Value> {
    let parse = |text: &str| match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let mut items = parse(&previous.input_items);
    items.extend(parse(&previous.output_items));
    items
        .into_iter()
        .filter(|item| {
            item.get("type").and_then(Value::as_str) != Some("reasoning")
                || item.get("encrypted_content").is_some_and(|content| content.is_string())
        })
        .map(|mut item| {
            if let Some(object) = item.as_object_mut() {
                object.remove("id");
            }
            item
        })
        .collect()
}

/// Gives every stored input item an id, as OpenAI's `input_items` list shows them and pages by.
fn give_item_ids(items: &mut [Value]) {
    for item in items.iter_mut() {
        let Some(object) = item.as_object_mut() else { continue };
        if object.get("id").and_then(Value::as_str).is_some() {
            continue;
        }
        let is_message = object.get("type").and_then(Value::as_str).is_none_or(|item_type| item_type == "message");
        let prefix = if is_message { "msg" } else { "item" };
        object.insert("id".to_string(), Value::String(format!("{prefix}_{}", util::random_alphanumeric(24))));
    }
}

/// The stored response with this id if it belongs to `api_key_id` and has not expired.
fn load_owned(state: &RelayState, api_key_id: i64, id: &str) -> Result<Option<StoredResponse>, RelayError> {
    let stored = match state.response_saver.unsaved(id) {
        Some(unsaved) => Some(unsaved),
        None => {
            let id_owned = id.to_string();
            state
                .store
                .call(move |store| store.response_by_id(&id_owned))
                .map_err(|error| RelayError::Internal(format!("the response store could not be read: {error}")))?
        }
    };
    let now = util::unix_seconds();
    Ok(stored.filter(|stored| stored.api_key_id == api_key_id && stored.expires_at > now))
}

/// Answers `GET /v1/responses/{id}`, `DELETE /v1/responses/{id}` and
/// `GET /v1/responses/{id}/input_items`; None for other paths.
pub fn handle(state: &RelayState, request: &Request) -> Option<Response> {
    let rest = request.path.strip_prefix("/v1/responses/")?;
    let (id, input_items) = match rest.strip_suffix("/input_items") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    if id.is_empty() || id.contains('/') {
        return None;
    }
    let id = util::percent_decode(id);
    let answer = match (request.method.as_str(), input_items) {
        ("GET", false) => get_response(state, request, &id),
        ("DELETE", false) => delete_response(state, request, &id),
        ("GET", true) => list_input_items(state, request, &id),
        _ => return None,
    };
    Some(answer.unwrap_or_else(|error| error.render(Format::OpenaiResponses)))
}

fn not_found(id: &str) -> RelayError {
    RelayError::NotFound(format!("Response with id '{id}' not found."))
}

fn owned_or_not_found(state: &RelayState, request: &Request, id: &str) -> Result<StoredResponse, RelayError> {
    let api_key = authenticate(&state.snapshot.current(), request, util::unix_seconds())?;
    load_owned(state, api_key.id, id)?.ok_or_else(|| not_found(id))
}

fn get_response(state: &RelayState, request: &Request, id: &str) -> Result<Response, RelayError> {
    let stored = owned_or_not_found(state, request, id)?;
    Ok(Response::bytes(200, "application/json", stored.response_json.into_bytes()))
}

fn delete_response(state: &RelayState, request: &Request, id: &str) -> Result<Response, RelayError> {
    let stored = owned_or_not_found(state, request, id)?;
    let was_queued = state.response_saver.forget(&stored.id);
    let id_owned = stored.id.clone();
    let deleted = state
        .store
        .call(move |store| store.delete_response(&id_owned))
        .map_err(|error| RelayError::Internal(format!("the response store could not be written: {error}")))?;
    if !deleted && !was_queued {
        return Err(not_found(id));
    }
    Ok(Response::json(200, &json!({"id": stored.id, "object": "response", "deleted": true})))
}

/// OpenAI's input item list: newest first unless `order=asc`, `limit` 1 to 100 (default 20),
/// `after` an item id to continue from.
fn list_input_items(state: &RelayState, request: &Request, id: &str) -> Result<Response, RelayError> {
    let stored = owned_or_not_found(state, request, id)?;
    let mut items = match serde_json::from_str::<Value>(&stored.input_items) {
        Ok(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    match request.query_param("order").as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(other) => return Err(RelayError::InvalidRequest(format!("order must be asc or desc, got {other:?}"))),
    }
    let limit = match request.query_param("limit") {
        None => 20,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=100).contains(&limit) => limit,
            _ => return Err(RelayError::InvalidRequest(format!("limit must be a whole number from 1 to 100, got {text:?}"))),
        },
    };
    if let Some(after) = request.query_param("after") {
        let position = items.iter().position(|item| item.get("id").and_then(Value::as_str) == Some(after.as_str()));
        items = match position {
            Some(position) => items.split_off(position + 1),
            None => Vec::new(),
        };
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    let item_id = |item: Option<&Value>| item.and_then(|item| item.get("id")).cloned().unwrap_or(Value::Null);
    let mut list = Map::new();
    list.insert("object".to_string(), Value::String("list".to_string()));
    list.insert("first_id".to_string(), item_id(items.first()));
    list.insert("last_id".to_string(), item_id(items.last()));
    list.insert("has_more".to_string(), Value::Bool(has_more));
    list.insert("data".to_string(), Value::Array(items));
    Ok(Response::json(200, &Value::Object(list)))
}

/// Deletes expired responses, then the oldest beyond `MAX_STORED_RESPONSES_TOTAL_BYTES` (the
/// scheduler job `prune_responses`).
pub fn prune(store: &StorePool, now: i64) -> Result<String, String> {
    let deleted = store
        .call(move |store| store.prune_responses(now, MAX_STORED_RESPONSES_TOTAL_BYTES))
        .map_err(|error| error.to_string())?;
    Ok(format!("deleted {deleted} stored responses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(input_items: Value, output_items: Value) -> StoredResponse {
        StoredResponse {
            id: "resp_1".to_string(),
            api_key_id: 1,
            created_at: 0,
            expires_at: 10,
            model: "m".to_string(),
            response_json: "{}".to_string(),
            input_items: input_items.to_string(),
            output_items: output_items.to_string(),
            size_bytes: 0,
        }
    }

    #[test]
    fn a_continuation_is_input_then_output_without_ids_or_unresolvable_reasoning() {
        let previous = stored(
            json!([{"id": "msg_a", "type": "message", "role": "user", "content": "hi"}]),
            json!([
                {"id": "rs_1", "type": "reasoning", "summary": []},
                {"id": "rs_2", "type": "reasoning", "summary": [], "encrypted_content": "opaque"},
                {"id": "msg_b", "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]}
            ]),
        );
        assert_eq!(
            Value::Array(continuation_items(&previous)),
            json!([
                {"type": "message", "role": "user", "content": "hi"},
                {"type": "reasoning", "summary": [], "encrypted_content": "opaque"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]}
            ])
        );
    }

    #[test]
    fn broken_stored_json_continues_with_nothing_rather_than_failing() {
        let mut previous = stored(json!([]), json!([]));
        previous.input_items = "not json".to_string();
        assert!(continuation_items(&previous).is_empty());
    }

    #[test]
    fn stored_input_items_get_ids_once() {
        let mut items = vec![json!({"role": "user", "content": "a"}), json!({"type": "function_call_output", "call_id": "c", "output": "x"}), json!({"id": "keep", "role": "user", "content": "b"})];
        give_item_ids(&mut items);
        assert!(items[0]["id"].as_str().unwrap().starts_with("msg_"));
        assert!(items[1]["id"].as_str().unwrap().starts_with("item_"));
        assert_eq!(items[2]["id"], "keep");
    }

    #[test]
    fn the_size_cap_deletes_the_oldest_beyond_the_total() {
        let newest_first = vec![("c".to_string(), 40), ("b".to_string(), 40), ("a".to_string(), 40)];
        assert_eq!(crate::store::responses_over_size_cap(newest_first.clone(), 100), vec!["a".to_string()]);
        assert_eq!(crate::store::responses_over_size_cap(newest_first, 1_000), Vec::<String>::new());
    }
}
