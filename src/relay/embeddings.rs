//! `POST /v1/embeddings` (OpenAI's shape): relayed through the group's OpenAI-type channels in
//! pass-through and its Gemini channels through `batchEmbedContents`, with the same client-key
//! checks, limits, balancing, key pool, circuit breakers and retries as generation calls, and
//! one `RequestRecord` per request so embeddings are counted in the statistics.
//!
//! Anthropic and Antigravity have no embeddings endpoint: their items are left out of the
//! group for this call. Gemini reports no token usage for embeddings, so its prompt tokens are
//! the count_tokens estimate; OpenAI's `usage.prompt_tokens` is used as reported.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{Request, Response};
use crate::protocol::embeddings::{gemini_request, openai_prompt_tokens, openai_response_from_gemini, openai_upstream_body, parse_request, EmbeddingsRequest};
use crate::protocol::usage::Usage;
use crate::protocol::Format;
use crate::relay::balancer::{order_items, CandidateItem};
use crate::relay::client_auth::{authenticate, may_use_model};
use crate::relay::count_tokens::estimate_text_tokens;
use crate::relay::disconnect::DisconnectWatch;
use crate::relay::error::RelayError;
use crate::relay::attempts::{attempt_in_order, AttemptLimits, AttemptTarget, Answered};
use crate::relay::forward::{check_spending_cap, group_limits, started_plus, GroupLimits, transport_failure, upstream_status_failure, AttemptResult, CallTrace};
use crate::relay::outbound::{channel_format, upstream_headers};
use crate::relay::retry::{AttemptOutcome, RetryBudget};
use crate::relay::rng::Rng;
use crate::relay::RelayState;
use crate::store::entities::{Channel, ChannelType};
use crate::upstream::client::UpstreamRequest;
use crate::upstream::control::{with_call_control, CallControl};
use crate::upstream::endpoint::embeddings_url;

/// Errors of this endpoint are in OpenAI's shape, the only protocol it speaks.
const CLIENT_FORMAT: Format = Format::OpenaiChat;
/// The record's client format, so logs tell embeddings from chat calls.
const RECORD_CLIENT_FORMAT: &str = "openai_embeddings";
/// Largest upstream answer accepted (a big batch of large vectors as JSON text).
const MAX_RESPONSE_BODY_BYTES: u64 = 128 * 1024 * 1024;

/// Answers `POST /v1/embeddings`.
pub fn handle(state: &Arc<RelayState>, request: &Request) -> Response {
    let Some(in_flight) = state.enter_request() else {
        return RelayError::ShuttingDown("the gateway is shutting down; retry on another node or in a moment".to_string())
            .render(CLIENT_FORMAT);
    };
    let mut trace = CallTrace::new(in_flight, Instant::now(), CLIENT_FORMAT);
    trace.record.client_format = RECORD_CLIENT_FORMAT;
    match embed(state, request, &mut trace) {
        Ok(response) => {
            let status = response.status;
            trace.finish(state, status, None);
            response
        }
        Err(error) => {
            let response = error.render(CLIENT_FORMAT);
            trace.finish(state, response.status, Some(error.to_string()));
            response
        }
    }
}

fn embed(state: &Arc<RelayState>, request: &Request, trace: &mut CallTrace) -> Result<Response, RelayError> {
    let snapshot = state.snapshot.current();
    let api_key = authenticate(&snapshot, request, trace.started_at_unix_seconds())?;
    trace.record.client_key_id = Some(api_key.id);
    trace.record.client_key_name = api_key.name.clone();
    check_spending_cap(state, &api_key)?;
    state.admit(&api_key, trace.record.started_at_ms)?;
    if state.stats.settings.get().log_bodies {
        trace.record.request_body = Some(request.body.clone());
        trace.record.response_body = Some(Vec::new());
    }
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|error| RelayError::InvalidRequest(format!("the request body is not valid JSON: {error}")))?;
    let parsed = parse_request(&body).map_err(RelayError::InvalidRequest)?;
    trace.record.group = parsed.model.clone();
    if !may_use_model(&api_key, &parsed.model) {
        return Err(RelayError::ModelNotAllowed(format!("this API key may not use the model {:?}", parsed.model)));
    }
    let group = snapshot
        .groups_by_name
        .get(&parsed.model)
        .cloned()
        .ok_or_else(|| RelayError::UnknownModel(format!("the model {:?} does not exist", parsed.model)))?;

    // Items whose channel type can embed this input at all; a group with none is a request no
    // upstream can serve (400), one whose embedding channels are all disabled is a 503.
    // `embeddings_url` is the one place that knows which channel types have an embeddings
    // endpoint; its answer for an empty base says whether the type has one at all.
    let can_embed = |channel: &Channel| {
        embeddings_url(channel.channel_type, "", "").is_some() && (parsed.texts.is_some() || channel.channel_type != ChannelType::Gemini)
    };
    let embedding_items: Vec<usize> = group
        .items
        .iter()
        .enumerate()
        .filter(|(_, item)| snapshot.channels_by_id.get(&item.channel_id).is_some_and(|channel| can_embed(channel)))
        .map(|(item_index, _)| item_index)
        .collect();
    if embedding_items.is_empty() {
        let what = if parsed.texts.is_some() { "embeddings" } else { "embeddings of token ids" };
        return Err(RelayError::InvalidRequest(format!(
            "the model {:?} has no channel that can serve {what}: OpenAI-type and Gemini channels embed text, only OpenAI-type channels embed token ids, Anthropic and Antigravity channels do not embed",
            parsed.model
        )));
    }
    let candidates: Vec<CandidateItem> = embedding_items
        .into_iter()
        .filter(|item_index| {
            let item = &group.items[*item_index];
            snapshot.channels_by_id.get(&item.channel_id).is_some_and(|channel| {
                channel.enabled && channel.keys.iter().any(|key| key.enabled) && !channel.base_urls.is_empty()
            })
        })
        .map(|item_index| {
            let item = &group.items[item_index];
            CandidateItem { item_index, priority: item.priority, weight: item.weight }
        })
        .collect();
    if candidates.is_empty() {
        return Err(RelayError::NoAvailableChannel {
            message: format!(
                "the model {:?} has no enabled embedding channel with a key",
                parsed.model
            ),
            retry_after_seconds: None,
        });
    }
    let order: Vec<usize> = {
        let mut health = state.health.lock();
        let counter = health.next_round_robin(group.id);
        let mut rng = Rng::new(state.next_seed());
        order_items(group.mode, &candidates, counter, &mut rng).into_iter().map(|position| candidates[position].item_index).collect()
    };

    let config = &state.config.relay;
    let GroupLimits { first_byte, total_ms, max_attempts } = group_limits(&group, config);
    let deadline = started_plus(trace.started, total_ms);
    let control = CallControl::new();
    let _watchdog = DisconnectWatch::global().register(request.client, control.clone());
    let limits = AttemptLimits {
        budget: RetryBudget::new(max_attempts, state.health.ms_at(trace.started), total_ms),
        deadline,
        control: &control,
        client: &request.client,
    };
    let Answered { result, .. } = attempt_in_order(state, &snapshot.channels_by_id, &group, order, &limits, trace, |target| {
        let head_timeout = first_byte.min(deadline.saturating_duration_since(Instant::now()));
        run_attempt(state, &parsed, &body, target, head_timeout, deadline, &control)
    })?;
    match result {
        AttemptResult::Complete { status, body, usage } => {
            trace.record.usage = usage;
            trace.record.ttft_ms = Some(trace.started.elapsed().as_millis() as u64);
            if let Some(kept) = trace.record.response_body.as_mut() {
                kept.extend_from_slice(&body[..body.len().min(1024 * 1024)]);
            }
            Ok(Response::bytes(status, "application/json", body))
        }
        AttemptResult::StreamReady { .. } => Err(RelayError::Internal("an embeddings attempt cannot stream".to_string())),
        // attempt_in_order returns only answers; a failure would be the client's error.
        AttemptResult::Failed { error, .. } => Err(error),
    }
}

fn run_attempt(
    state: &RelayState,
    parsed: &EmbeddingsRequest,
    client_body: &Value,
    target: &AttemptTarget,
    head_timeout: Duration,
    deadline: Instant,
    control: &CallControl,
) -> AttemptResult {
    let channel = target.channel;
    let upstream_format = channel_format(channel.channel_type);
    let Some(url) = embeddings_url(channel.channel_type, target.base_url, target.upstream_model) else {
        return AttemptResult::Failed {
            outcome: AttemptOutcome::UpstreamStatus { status: 400, retry_after: None, quota_exhausted: false },
            error: RelayError::InvalidRequest(format!("the channel {} cannot serve embeddings", channel.name)),
            detail: "no embeddings endpoint".to_string(),
        };
    };
    let gemini = channel.channel_type == ChannelType::Gemini;
    let body = match (&parsed.texts, gemini) {
        (Some(texts), true) => gemini_request(texts, target.upstream_model, parsed.dimensions),
        (None, true) => {
            return AttemptResult::Failed {
                outcome: AttemptOutcome::UpstreamStatus { status: 400, retry_after: None, quota_exhausted: false },
                error: RelayError::InvalidRequest("Gemini channels cannot embed token ids; send text".to_string()),
                detail: "token ids for a Gemini channel".to_string(),
            };
        }
        (_, false) => openai_upstream_body(client_body, target.upstream_model),
    };
    let credential = match state.credential_for(channel, target.key, target.base_url, false) {
        Ok(credential) => credential,
        Err(message) => {
            return AttemptResult::Failed {
                outcome: AttemptOutcome::UpstreamStatus { status: 401, retry_after: None, quota_exhausted: false },
                error: RelayError::UpstreamUnreachable(message.clone()),
                detail: message,
            };
        }
    };
    let mut headers = upstream_headers(&[], false, channel, &credential.secret, false);
    headers.extend(credential.extra_headers.iter().cloned());
    let upstream_request = UpstreamRequest {
        method: "POST".to_string(),
        url,
        headers,
        body,
        proxy: (!channel.proxy.is_empty()).then(|| channel.proxy.clone()),
        response_head_timeout: Some(head_timeout),
    };
    control.set_read_timeout(Some(head_timeout));
    let response = match with_call_control(control, || state.upstream.send(upstream_request)) {
        Ok(response) => response,
        Err(error) => return transport_failure(error, control, false),
    };
    if !(200..300).contains(&response.status) {
        return upstream_status_failure(upstream_format, response, control, &[&credential.secret, &target.key.key]);
    }
    control.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))));
    let mut answer = Vec::new();
    let status = response.status;
    let mut upstream_body = response.body;
    if let Err(error) = with_call_control(control, || upstream_body.by_ref().take(MAX_RESPONSE_BODY_BYTES).read_to_end(&mut answer)) {
        return transport_failure(crate::upstream::error::UpstreamError::from_io_error(&error), control, false);
    }
    let estimated_tokens = estimated_prompt_tokens(parsed, client_body);
    if !gemini {
        let prompt_tokens = openai_prompt_tokens(&answer).unwrap_or(estimated_tokens);
        return AttemptResult::Complete { status, body: answer, usage: Some(prompt_usage(prompt_tokens)) };
    }
    match openai_response_from_gemini(&answer, target.upstream_model, estimated_tokens, parsed.base64) {
        Ok(converted) => AttemptResult::Complete { status, body: converted, usage: Some(prompt_usage(estimated_tokens)) },
        Err(message) => AttemptResult::Failed {
            outcome: AttemptOutcome::StreamErrorBeforeFirstByte,
            error: RelayError::UpstreamUnreachable(format!("the upstream answer could not be converted: {message}")),
            detail: format!("conversion of the answer failed: {message}"),
        },
    }
}

/// Prompt tokens when the upstream reports none: the count_tokens estimate of the texts, or
/// the number of token ids sent.
fn estimated_prompt_tokens(parsed: &EmbeddingsRequest, client_body: &Value) -> u64 {
    match &parsed.texts {
        Some(texts) => texts.iter().map(|text| estimate_text_tokens(text)).sum(),
        None => client_body
            .get("input")
            .and_then(Value::as_array)
            .map(|items| items.iter().map(|item| item.as_array().map_or(1, Vec::len) as u64).sum())
            .unwrap_or(0),
    }
}

fn prompt_usage(prompt_tokens: u64) -> Usage {
    Usage { input_tokens: prompt_tokens, ..Usage::default() }
}
