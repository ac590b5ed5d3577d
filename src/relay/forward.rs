//! One generation call end to end: client auth, group lookup, the order of the group's items,
//! one attempt (request conversion, the upstream call, the answer read or its stream started)
//! for `attempts::attempt_in_order` to run across items, keys and endpoints, and the answer
//! (complete or streamed).

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::{Request, Response};
use crate::protocol::convert::{
    client_custom_tools, collects_non_stream_from_stream, convert_collected_stream, convert_response_and_usage, ConvertContext,
};
use crate::protocol::error::{parse_upstream_error, success_body_problem, ErrorKind, SuccessBodyProblem};
use crate::protocol::sse::{SseEvent, SseParser};
use crate::protocol::usage::usage_from_response_body;
use crate::protocol::Format;
use crate::relay::attempts::{attempt_in_order, AttemptLimits, AttemptTarget, Answered};
use crate::relay::balancer::{order_items, CandidateItem};
use crate::relay::client_auth::{authenticate, may_use_model};
use crate::relay::disconnect::{DisconnectWatch, WatchGuard};
use crate::relay::error::RelayError;
use crate::relay::media_fetch::ImageFetcher;
use crate::relay::inbound::{parse_call, InboundCall, RelayRoute};
use crate::relay::outbound::{channel_format, upstream_headers};
use crate::relay::record::RequestRecord;
use crate::relay::response_store::{self, StreamCapture};
use crate::relay::retry::{AttemptOutcome, RetryBudget, TimeoutPhase};
use crate::relay::rng::Rng;
use crate::relay::stream::{is_error_event, EventTranslator};
use crate::relay::transform::{can_serve, prepare_request, Transform};
use crate::relay::{Credential, RelayState};
use crate::store::entities::Group;
use crate::upstream::client::{UpstreamRequest, UpstreamResponse};
use crate::upstream::control::{with_call_control, CallControl};
use crate::upstream::endpoint::upstream_url;
use crate::upstream::error::UpstreamError;
use crate::util;

/// Largest upstream error body read (the rest is not needed to classify or show it).
const MAX_ERROR_BODY_BYTES: u64 = 1024 * 1024;
/// Largest non-stream upstream answer accepted.
const MAX_RESPONSE_BODY_BYTES: u64 = 256 * 1024 * 1024;
/// Our read buffer for upstream streams, kept for the stream's whole life. ureq's input (4 KiB
/// while streaming, `upstream::buffers`) holds what has arrived; one read here takes a few
/// typical events (100 to 600 bytes each), and a longer event simply takes several reads.
const STREAM_READ_BUFFER_BYTES: usize = 2 * 1024;

/// The deadlines of one call.
#[derive(Clone, Copy)]
struct Deadlines {
    first_byte: Duration,
    stream_idle: Duration,
    total_deadline: Instant,
}

impl Deadlines {
    fn remaining(&self) -> Duration {
        self.remaining_at(Instant::now())
    }

    fn remaining_at(&self, now: Instant) -> Duration {
        self.total_deadline.saturating_duration_since(now)
    }
}

/// What one attempt produced.
pub(crate) enum AttemptResult {
    /// A complete 2xx answer, already in the client's format.
    Complete { status: u16, body: Vec<u8>, usage: Option<crate::protocol::usage::Usage> },
    /// A 2xx stream whose first events have arrived; nothing was sent to the client yet.
    StreamReady {
        body: Box<dyn Read + Send>,
        parser: SseParser,
        first_events: Vec<SseEvent>,
        /// The buffer the first events were read with, which the pump goes on reading with.
        read_buffer: Vec<u8>,
        transform: Transform,
        context: Box<ConvertContext>,
    },
    /// The attempt failed; `error` is what the client gets if it was the last one.
    Failed { outcome: AttemptOutcome, error: RelayError, detail: String },
}

/// Who is calling: a client with its key (every relay route), or the admin trying a group from
/// the panel (`POST /api/v1/groups/{id}/test`), who has no client key and gets the channel and
/// model that answered reported back.
pub enum Caller {
    Client,
    Admin { answered_by: AnsweredBy },
}

/// Filled with the (channel, upstream model) that answered an admin's trial.
pub type AnsweredBy = Arc<std::sync::Mutex<Option<(String, String)>>>;

/// Everything about the call that the record needs, filled in as it goes.
pub(crate) struct CallTrace {
    pub(crate) started: Instant,
    pub(crate) record: RequestRecord,
    /// Where an admin caller wants the answering (channel, model).
    answered_by: Option<AnsweredBy>,
    /// Dropped with the trace, once the record is out: the request is no longer in flight.
    _in_flight: crate::relay::InFlightGuard,
}

impl CallTrace {
    /// An empty record for a request that started at `started` and is counted by `in_flight`.
    pub(crate) fn new(in_flight: crate::relay::InFlightGuard, started: Instant, client_format: Format) -> CallTrace {
        CallTrace {
            _in_flight: in_flight,
            answered_by: None,
            started,
            record: RequestRecord {
                started_at_ms: util::unix_millis(),
                client_key_id: None,
                client_key_name: String::new(),
                group: String::new(),
                client_format: client_format.as_str(),
                stream: false,
                channel_id: None,
                channel_name: String::new(),
                key_id: None,
                upstream_model: String::new(),
                status: 0,
                attempts: Vec::new(),
                usage: None,
                ttft_ms: None,
                total_ms: 0,
                error: None,
                request_body: None,
                response_body: None,
            },
        }
    }

    /// The wall-clock second the request started in: key expiry is checked against it, so a
    /// request reads the wall clock once.
    pub(crate) fn started_at_unix_seconds(&self) -> i64 {
        self.record.started_at_ms.div_euclid(1000)
    }

    pub(crate) fn finish(mut self, state: &RelayState, status: u16, error: Option<String>) {
        if let Some(slot) = &self.answered_by {
            *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                Some((self.record.channel_name.clone(), self.record.upstream_model.clone()));
        }
        self.record.status = status;
        self.record.error = error;
        self.record.total_ms = self.started.elapsed().as_millis() as u64;
        let finished_at_unix_ms = util::unix_millis();
        // The key's tokens this minute count against its `tpm` as soon as they are known.
        if let (Some(client_key_id), Some(usage)) = (self.record.client_key_id, self.record.usage.as_ref()) {
            state.rate_limits.charge_tokens(client_key_id, usage.total_tokens(), u64::try_from(finished_at_unix_ms).unwrap_or(0));
        }
        let record = self.record;
        state.records.push_with(|batch, sequence| state.stats.count_into(batch, sequence, record, finished_at_unix_ms));
    }
}

/// Answers `POST /v1/chat/completions`, `/v1/responses`, `/v1/messages` and the Gemini paths.
pub fn handle_generate(state: &Arc<RelayState>, request: &mut Request, route: &RelayRoute, client_format: Format) -> Response {
    handle_generate_for(state, request, route, client_format, Caller::Client)
}

/// `handle_generate` for a given caller.
pub fn handle_generate_for(state: &Arc<RelayState>, request: &mut Request, route: &RelayRoute, client_format: Format, caller: Caller) -> Response {
    let started = Instant::now();
    let Some(in_flight) = state.enter_request() else {
        return RelayError::ShuttingDown("the gateway is shutting down; retry on another node or in a moment".to_string())
            .render(client_format);
    };
    let mut trace = CallTrace::new(in_flight, started, client_format);
    trace.answered_by = match &caller {
        Caller::Admin { answered_by } => Some(answered_by.clone()),
        Caller::Client => None,
    };
    match generate(state, request, route, client_format, &caller, &mut trace) {
        Ok(Answer::Complete(response)) => {
            let status = response.status;
            trace.finish(state, status, None);
            response
        }
        Ok(Answer::Stream(build)) => build(trace),
        Err(error) => {
            let response = error.render(client_format);
            trace.finish(state, response.status, Some(error.to_string()));
            response
        }
    }
}

type StreamBuilder = Box<dyn FnOnce(CallTrace) -> Response>;

enum Answer {
    Complete(Response),
    Stream(StreamBuilder),
}

/// The most response bytes held for a request log. Redaction (which shrinks inline media) runs
/// later on the writer thread, which then cuts to `log_body_max_bytes`; this only bounds memory.
const MAX_LOGGED_RESPONSE_BYTES: usize = 1024 * 1024;

fn keep_for_log(kept: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_LOGGED_RESPONSE_BYTES.saturating_sub(kept.len());
    kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// The stand-in key of an admin's trial request: no id (counted as "no client key"), no limits.
fn admin_trial_key() -> crate::store::entities::ApiKey {
    crate::store::entities::ApiKey {
        id: 0,
        name: "admin (panel test)".to_string(),
        key_hash: String::new(),
        key_prefix: String::new(),
        enabled: true,
        expires_at: None,
        max_cost: None,
        allowed_models: Vec::new(),
        rpm: 0,
        tpm: 0,
        created_at: 0,
        updated_at: 0,
    }
}

/// Refuses a key whose spending (over all time, every node) has reached its `max_cost`.
pub(crate) fn check_spending_cap(state: &RelayState, api_key: &crate::store::entities::ApiKey) -> Result<(), RelayError> {
    let Some(max_cost) = api_key.max_cost else { return Ok(()) };
    let spent = crate::stats::pricing::micros_to_usd(state.stats.spent_micros(api_key.id));
    if spent >= max_cost {
        return Err(RelayError::QuotaExceeded(format!(
            "this API key has reached its spending cap of ${max_cost:.2} (spent ${spent:.4}); raise max_cost or use another key"
        )));
    }
    Ok(())
}

fn generate(
    state: &Arc<RelayState>,
    request: &mut Request,
    route: &RelayRoute,
    client_format: Format,
    caller: &Caller,
    trace: &mut CallTrace,
) -> Result<Answer, RelayError> {
    let snapshot = state.snapshot.current();
    let api_key = match caller {
        Caller::Client => authenticate(&snapshot, request, trace.started_at_unix_seconds())?,
        Caller::Admin { .. } => Arc::new(admin_trial_key()),
    };
    trace.record.client_key_id = (api_key.id != 0).then_some(api_key.id);
    trace.record.client_key_name = api_key.name.clone();
    check_spending_cap(state, &api_key)?;
    state.admit(&api_key, trace.record.started_at_ms)?;
    if state.stats.settings.get().log_bodies {
        // Copied only when the admin asked for bodies in the logs; redacted and cut off the
        // request path, by the stats writer.
        trace.record.request_body = Some(request.body.clone());
        trace.record.response_body = Some(Vec::new());
    }
    let mut call = parse_call(route, request)?;
    trace.record.group = call.model.clone();
    trace.record.stream = call.stream;
    if !may_use_model(&api_key, &call.model) {
        return Err(RelayError::ModelNotAllowed(format!("this API key may not use the model {:?}", call.model)));
    }
    // Resolved before any channel is chosen, so the attempts see a stateless request.
    let mut pending_save = response_store::prepare(state, &api_key, &mut call)?;
    let group = snapshot
        .groups_by_name
        .get(&call.model)
        .cloned()
        .ok_or_else(|| RelayError::UnknownModel(format!("the model {:?} does not exist", call.model)))?;
    let config = &state.config.relay;
    let GroupLimits { first_byte, total_ms, max_attempts } = group_limits(&group, config);
    let deadlines = Deadlines {
        first_byte,
        stream_idle: Duration::from_secs(config.stream_idle_timeout_seconds),
        total_deadline: started_plus(trace.started, total_ms),
    };

    // Items that could serve at all: enabled channel, at least one enabled key, a format the
    // relay can reach from the client's.
    let candidates: Vec<CandidateItem> = group
        .items
        .iter()
        .enumerate()
        .filter(|(_, item)| {
            snapshot.channels_by_id.get(&item.channel_id).is_some_and(|channel| {
                channel.enabled
                    && channel.keys.iter().any(|key| key.enabled)
                    && !channel.base_urls.is_empty()
                    && can_serve(client_format, channel_format(channel.channel_type))
            })
        })
        .map(|(item_index, item)| CandidateItem { item_index, priority: item.priority, weight: item.weight })
        .collect();
    if candidates.is_empty() {
        return Err(RelayError::NoAvailableChannel {
            message: format!(
                "the model {:?} has no enabled channel with a key that can serve this request",
                call.model
            ),
            retry_after_seconds: None,
        });
    }
    let order = {
        let mut health = state.health.lock();
        let counter = health.next_round_robin(group.id);
        let mut rng = Rng::new(state.next_seed());
        let mut order: Vec<usize> =
            order_items(group.mode, &candidates, counter, &mut rng).into_iter().map(|position| candidates[position].item_index).collect();
        let sticky_index =
            if group.sticky_seconds > 0 { health.sticky.get(api_key.id, group.id, state.health.now_ms()) } else { None };
        if let Some(position) = sticky_index.and_then(|sticky_index| order.iter().position(|index| *index == sticky_index)) {
            let item_index = order.remove(position);
            order.insert(0, item_index);
        }
        order
    };

    let control = CallControl::new();
    let watchdog = DisconnectWatch::global().register(request.client, control.clone());
    // The budget's deadline is the request's own start plus the total timeout, the same instant
    // every attempt's timeouts are cut to: started from a later clock reading, it let an attempt
    // begin after the request's time was up.
    let limits = AttemptLimits {
        budget: RetryBudget::new(max_attempts, state.health.ms_at(trace.started), total_ms),
        deadline: deadlines.total_deadline,
        control: &control,
        client: &request.client,
    };
    let Answered { item_index, result } = attempt_in_order(state, &snapshot.channels_by_id, &group, order, &limits, trace, |target| {
        run_attempt(state, &call, target, &deadlines, &control)
    })?;
    remember_sticky(state, &group, api_key.id, item_index);
    match result {
        AttemptResult::Complete { status, body, usage } => {
            trace.record.usage = usage;
            trace.record.ttft_ms = Some(trace.started.elapsed().as_millis() as u64);
            if let Some(kept) = trace.record.response_body.as_mut() {
                keep_for_log(kept, &body);
            }
            drop(watchdog);
            if (200..300).contains(&status)
                && let Some(pending) = pending_save.take()
            {
                pending.save_body(state, &body);
            }
            let content_type = "application/json";
            Ok(Answer::Complete(Response::bytes(status, content_type, body)))
        }
        AttemptResult::StreamReady { body, parser, first_events, read_buffer, transform, context } => {
            let state = state.clone();
            let translator = EventTranslator::new(transform, call.client_format, call.gemini_json_array, &context);
            let content_type = if call.gemini_json_array { "application/json" } else { "text/event-stream" };
            let stream_idle = deadlines.stream_idle;
            let capture = pending_save.take().map(StreamCapture::new);
            Ok(Answer::Stream(Box::new(move |trace: CallTrace| {
                Response::stream(200, content_type, move |writer| {
                    let stream = PumpedStream { translator, body, parser, first_events, read_buffer, capture };
                    pump(&state, writer, stream, control, stream_idle, watchdog, trace)
                })
                .with_header("cache-control", "no-cache")
                .with_header("x-accel-buffering", "no")
            })))
        }
        // attempt_in_order returns only answers; a failure would be the client's error.
        AttemptResult::Failed { error, .. } => Err(error),
    }
}

/// A group's own timeouts and attempts, or the relay's defaults where the group leaves them at 0.
pub(crate) struct GroupLimits {
    pub first_byte: Duration,
    pub total_ms: u64,
    pub max_attempts: u32,
}

pub(crate) fn group_limits(group: &Group, config: &crate::config::RelayConfig) -> GroupLimits {
    GroupLimits {
        first_byte: Duration::from_millis(if group.first_byte_timeout_ms > 0 {
            group.first_byte_timeout_ms
        } else {
            config.first_byte_timeout_seconds * 1000
        }),
        total_ms: if group.total_timeout_ms > 0 { group.total_timeout_ms } else { config.total_timeout_seconds * 1000 },
        max_attempts: if group.max_attempts > 0 { group.max_attempts } else { config.max_attempts },
    }
}

pub(crate) fn started_plus(started: Instant, milliseconds: u64) -> Instant {
    started.checked_add(Duration::from_millis(milliseconds)).unwrap_or(started + Duration::from_secs(86_400 * 365))
}

fn convert_context(state: &RelayState, upstream_model: &str, call: &InboundCall, upstream_format: Format) -> ConvertContext {
    // Only a conversion writes the ids (a pass-through answer keeps the upstream's own), and
    // drawing them is two strings and a seed per attempt. The request id goes only into
    // Antigravity's envelope.
    let converts = call.client_format != upstream_format;
    let mut ids = converts.then(|| Rng::new(state.next_seed()));
    let mut draw_id = |prefix: &str| ids.as_mut().map(|rng| rng.prefixed_alphanumeric(prefix, 24)).unwrap_or_default();
    ConvertContext {
        upstream_model: upstream_model.to_string(),
        stream: call.stream,
        default_max_tokens: state.config.relay.default_max_tokens,
        response_id: draw_id("gen-"),
        created_unix: util::unix_seconds(),
        include_usage: call.client_format != Format::OpenaiChat || call.stream_usage_requested,
        // Filled in from the attempt's credential (configured or discovered with loadCodeAssist).
        antigravity_project: String::new(),
        request_id: if upstream_format == Format::Antigravity { draw_id("agent-") } else { String::new() },
        // Only Responses clients have custom tools, and only a conversion renames their calls;
        // asking anyone else would parse the body.
        custom_tools: if converts && call.client_format == Format::OpenaiResponses { client_custom_tools(call.client_format, call.body()) } else { Vec::new() },
    }
}

fn remember_sticky(state: &RelayState, group: &Group, client_key_id: i64, item_index: usize) {
    if group.sticky_seconds == 0 {
        return;
    }
    let now_ms = state.health.now_ms();
    state.health.lock().sticky.remember(client_key_id, group.id, item_index, Duration::from_secs(group.sticky_seconds), now_ms);
}

fn run_attempt(state: &RelayState, call: &InboundCall, target: &AttemptTarget, deadlines: &Deadlines, control: &CallControl) -> AttemptResult {
    let AttemptTarget { channel, key, base_url, upstream_model } = *target;
    let upstream_format = channel_format(channel.channel_type);
    let credential = match state.credential_for(channel, key, base_url, false) {
        Ok(credential) => credential,
        Err(message) => return credential_failure(message),
    };
    let mut context = convert_context(state, upstream_model, call, upstream_format);
    context.antigravity_project = credential.project.clone().unwrap_or_default();
    let mut images = ImageFetcher::new(&state.upstream, state.config.relay.allow_private_media_urls);
    let prepared = prepare_request(call.client_format, upstream_format, call, upstream_model, &context, &mut images);
    let (body, transform) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            return AttemptResult::Failed {
                outcome: AttemptOutcome::UpstreamStatus { status: 400, retry_after: None, quota_exhausted: false },
                detail: format!("conversion failed: {error}"),
                error,
            };
        }
    };
    let same_format = call.client_format == upstream_format;
    // Some upstreams are asked for a stream even when the client wants one complete answer.
    let collect_stream = !call.stream && collects_non_stream_from_stream(upstream_format);
    let upstream_stream = call.stream || collect_stream;
    let build_request = |credential: &Credential, body: Vec<u8>, response_head_timeout: Duration| {
        let mut headers = upstream_headers(&call.headers, same_format, channel, &credential.secret, upstream_stream);
        headers.extend(credential.extra_headers.iter().cloned());
        UpstreamRequest {
            method: "POST".to_string(),
            url: upstream_url(channel.channel_type, base_url, upstream_model, upstream_stream),
            headers,
            body,
            proxy: (!channel.proxy.is_empty()).then(|| channel.proxy.clone()),
            response_head_timeout: Some(response_head_timeout),
        }
    };
    // One clock reading for the first byte's time limit, its deadline and the socket's timeout.
    let now = Instant::now();
    let first_byte_limit = deadlines.first_byte.min(deadlines.remaining_at(now));
    let first_byte_deadline = now + first_byte_limit;
    control.set_read_timeout(Some(first_byte_limit));
    let retry_body = credential.refreshable.then(|| body.clone());
    let sent = with_call_control(control, || state.upstream.send(build_request(&credential, body, first_byte_limit)));
    let mut response = match sent {
        Ok(response) => response,
        Err(error) => return transport_failure(error, control, false),
    };
    // An OAuth access token may have been revoked or expired early: refresh it once and resend.
    if response.status == 401
        && let Some(body) = retry_body
    {
        let credential = match state.credential_for(channel, key, base_url, true) {
            Ok(credential) => credential,
            Err(message) => return credential_failure(message),
        };
        let response_head_timeout = first_byte_deadline.saturating_duration_since(Instant::now());
        response = match with_call_control(control, || state.upstream.send(build_request(&credential, body, response_head_timeout))) {
            Ok(response) => response,
            Err(error) => return transport_failure(error, control, false),
        };
    }
    if !(200..300).contains(&response.status) {
        return upstream_status_failure(upstream_format, response, control, &[&credential.secret, &key.key]);
    }
    if !call.stream {
        control.set_read_timeout(Some(deadlines.remaining().max(Duration::from_millis(1))));
        let mut body = response.body_buffer();
        let read = with_call_control(control, || response.body.take(MAX_RESPONSE_BODY_BYTES).read_to_end(&mut body));
        if let Err(error) = read {
            return transport_failure(UpstreamError::from_io_error(&error), control, false);
        }
        // A 2xx that is no answer (an error object, an HTML page from a proxy) fails the attempt
        // like an error status would. A body that reports usage is an answer, which keeps the
        // second parse of the check off the common path. A converted answer's usage comes from
        // the conversion's own read of the body.
        let converted_with_usage = match transform {
            Transform::Convert { client, upstream } if !collect_stream => {
                Some(convert_response_and_usage(upstream, client, &body, &context))
            }
            _ => None,
        };
        let upstream_usage = match &converted_with_usage {
            Some(Ok((_, usage))) => *usage,
            Some(Err(_)) => None,
            None if collect_stream => None,
            None => usage_from_response_body(upstream_format, &body),
        };
        if upstream_usage.is_none()
            && !collect_stream
            && let Some(problem) = success_body_problem(upstream_format, &body)
        {
            return success_body_failure(upstream_format, response.status, body, problem);
        }
        let (body, usage) = match transform {
            Transform::PassThrough { .. } => (body, upstream_usage),
            Transform::Convert { client, upstream } => {
                let converted = match converted_with_usage {
                    Some(converted) => converted.map(|(converted, _)| converted),
                    None => convert_collected_stream(upstream, client, &body, &context),
                };
                let converted = match converted {
                    Ok(converted) => converted,
                    Err(error) => {
                        return AttemptResult::Failed {
                            outcome: AttemptOutcome::StreamErrorBeforeFirstByte,
                            error: RelayError::UpstreamUnreachable(format!("the upstream answer could not be converted: {error}")),
                            detail: format!("conversion of the answer failed: {error}"),
                        };
                    }
                };
                // A collected stream's usage is read from the converted answer, its only whole body.
                let usage = if collect_stream { usage_from_response_body(client, &converted) } else { upstream_usage };
                (converted, usage)
            }
        };
        return AttemptResult::Complete { status: response.status, body, usage };
    }
    let is_event_stream = response.header("content-type").is_some_and(|value| value.to_ascii_lowercase().contains("text/event-stream"));
    if !is_event_stream {
        // Some servers answer a stream request that failed with a JSON error and a 200: their
        // explanation is worth the read (bounded in size and by the request's deadline).
        let mut body = Vec::new();
        control.set_read_timeout(Some(deadlines.remaining().max(Duration::from_millis(1))));
        let _ = with_call_control(control, || response.body.take(MAX_ERROR_BODY_BYTES).read_to_end(&mut body));
        if let Some(problem @ SuccessBodyProblem::ErrorObject(_)) = success_body_problem(upstream_format, &body) {
            return success_body_failure(upstream_format, response.status, body, problem);
        }
        return AttemptResult::Failed {
            outcome: AttemptOutcome::StreamErrorBeforeFirstByte,
            error: RelayError::UpstreamUnreachable("the upstream answered a stream request without an event stream".to_string()),
            detail: "no event stream".to_string(),
        };
    }
    // Read until the first complete event with data: until then nothing has reached the client
    // and a failure may still go to another upstream. Blocks without data (comment keep-alives
    // sent while the model starts, or stray text such as an HTML error page) do not count: an
    // error event or the end of the stream may still follow them.
    let mut parser = SseParser::new(state.config.relay.max_sse_event_size);
    let mut first_events = Vec::new();
    let mut body = response.body;
    let mut buffer = vec![0u8; STREAM_READ_BUFFER_BYTES];
    let has_data_event = |events: &[SseEvent]| events.iter().any(|event| !event.data.is_empty());
    while !has_data_event(&first_events) {
        let remaining = first_byte_deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return transport_failure(UpstreamError::Timeout("first event".to_string()), control, false);
        }
        control.set_read_timeout(Some(remaining));
        let read = with_call_control(control, || body.read(&mut buffer));
        let pushed = match read {
            Ok(0) => parser.finish(&mut first_events),
            Ok(count) => parser.push(&buffer[..count], &mut first_events),
            Err(error) => return transport_failure(UpstreamError::from_io_error(&error), control, false),
        };
        if let Err(error) = pushed {
            return AttemptResult::Failed {
                outcome: AttemptOutcome::StreamErrorBeforeFirstByte,
                error: RelayError::UpstreamUnreachable(error.to_string()),
                detail: format!("stream error: {error}"),
            };
        }
        if matches!(read, Ok(0)) && !has_data_event(&first_events) {
            return AttemptResult::Failed {
                outcome: AttemptOutcome::StreamErrorBeforeFirstByte,
                error: RelayError::UpstreamUnreachable("the upstream closed the stream before any event".to_string()),
                detail: "empty stream".to_string(),
            };
        }
    }
    if let Some(error_event) = first_events.iter().find(|event| is_error_event(upstream_format, event)) {
        let error_body = without_secrets(error_event.data.as_bytes().to_vec(), &[&credential.secret, &key.key]);
        let info = parse_upstream_error(upstream_format, 500, &error_body);
        return AttemptResult::Failed {
            outcome: AttemptOutcome::StreamErrorBeforeFirstByte,
            error: RelayError::Upstream {
                upstream_format,
                status: if info.status >= 400 { info.status } else { 502 },
                body: error_body,
                retry_after_seconds: info.retry_after_seconds,
            },
            detail: format!("stream opened with an error: {}", info.message),
        };
    }
    AttemptResult::StreamReady { body, parser, first_events, read_buffer: buffer, transform, context: Box::new(context) }
}

/// A 2xx non-stream answer that `success_body_problem` found to be no answer: the upstream's own
/// error reaches the client (in its format) when there is one, else a 502 quoting the body.
fn success_body_failure(upstream_format: Format, status: u16, body: Vec<u8>, problem: SuccessBodyProblem) -> AttemptResult {
    match problem {
        SuccessBodyProblem::ErrorObject(message) => AttemptResult::Failed {
            outcome: AttemptOutcome::StreamErrorBeforeFirstByte,
            detail: format!("status {status} with an error body: {}", truncate(&message, 300)),
            error: RelayError::Upstream { upstream_format, status: 502, body, retry_after_seconds: None },
        },
        SuccessBodyProblem::NotJson(excerpt) => AttemptResult::Failed {
            outcome: AttemptOutcome::StreamErrorBeforeFirstByte,
            detail: format!("status {status} with a body that is not JSON: {}", truncate(&excerpt, 300)),
            error: RelayError::UpstreamUnreachable(format!(
                "the upstream answered {status} with a body that is not JSON: {}",
                truncate(&excerpt, 200)
            )),
        },
    }
}

/// The key's credential could not be obtained (e.g. an OAuth refresh was refused): treated like
/// an upstream 401, so the key cools down and the next key is tried.
fn credential_failure(message: String) -> AttemptResult {
    AttemptResult::Failed {
        outcome: AttemptOutcome::UpstreamStatus { status: 401, retry_after: None, quota_exhausted: false },
        error: RelayError::UpstreamUnreachable(message.clone()),
        detail: message,
    }
}

pub(crate) fn transport_failure(error: UpstreamError, control: &CallControl, after_first_byte: bool) -> AttemptResult {
    if control.is_cancelled() {
        return AttemptResult::Failed {
            outcome: AttemptOutcome::ClientGone,
            error: RelayError::ClientGone("the client closed the connection".to_string()),
            detail: "client gone".to_string(),
        };
    }
    let (outcome, relay_error) = match &error {
        UpstreamError::Connect(_) => (AttemptOutcome::ConnectError, RelayError::UpstreamUnreachable(error.to_string())),
        UpstreamError::Timeout(phase) if phase == "connect" || phase == "resolve" => {
            (AttemptOutcome::Timeout { phase: TimeoutPhase::Connect }, RelayError::UpstreamTimeout(error.to_string()))
        }
        UpstreamError::Timeout(_) => (
            AttemptOutcome::Timeout { phase: if after_first_byte { TimeoutPhase::AfterFirstByte } else { TimeoutPhase::FirstByte } },
            RelayError::UpstreamTimeout(error.to_string()),
        ),
        _ if after_first_byte => (AttemptOutcome::StreamErrorAfterFirstByte, RelayError::UpstreamUnreachable(error.to_string())),
        _ => (AttemptOutcome::StreamErrorBeforeFirstByte, RelayError::UpstreamUnreachable(error.to_string())),
    };
    AttemptResult::Failed { outcome, error: relay_error, detail: error.to_string() }
}

/// `secrets` are the channel key and the credential sent for it: some OpenAI-compatible
/// providers echo the key in their error message, and it must reach neither the client nor the
/// request log, so the body is cleaned before anything reads it.
pub(crate) fn upstream_status_failure(upstream_format: Format, response: UpstreamResponse, control: &CallControl, secrets: &[&str]) -> AttemptResult {
    let status = response.status;
    let retry_after_header = response.header("retry-after").and_then(|value| value.trim().parse::<u64>().ok());
    let mut body = Vec::new();
    control.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = with_call_control(control, || response.body.take(MAX_ERROR_BODY_BYTES).read_to_end(&mut body));
    let body = without_secrets(body, secrets);
    let info = parse_upstream_error(upstream_format, status, &body);
    let retry_after_seconds = retry_after_header.or(info.retry_after_seconds);
    AttemptResult::Failed {
        outcome: AttemptOutcome::UpstreamStatus {
            status,
            retry_after: retry_after_seconds.map(Duration::from_secs),
            quota_exhausted: info.quota_exhausted,
        },
        error: RelayError::Upstream { upstream_format, status, body, retry_after_seconds },
        detail: format!("status {status}: {}", truncate(&info.message, 300)),
    }
}

/// What a secret echoed by an upstream is replaced with.
const SECRET_REPLACEMENT: &[u8] = b"[channel key]";

/// `body` with every occurrence of each secret replaced. Secrets shorter than 8 bytes are left
/// alone: masking such common strings would garble messages without hiding anything real.
pub(crate) fn without_secrets(body: Vec<u8>, secrets: &[&str]) -> Vec<u8> {
    let mut body = body;
    for secret in secrets.iter().map(|secret| secret.as_bytes()).filter(|secret| secret.len() >= 8) {
        if !body.windows(secret.len()).any(|window| window == secret) {
            continue;
        }
        let mut cleaned = Vec::with_capacity(body.len());
        let mut index = 0;
        while index < body.len() {
            if body[index..].starts_with(secret) {
                cleaned.extend_from_slice(SECRET_REPLACEMENT);
                index += secret.len();
            } else {
                cleaned.push(body[index]);
                index += 1;
            }
        }
        body = cleaned;
    }
    body
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// A committed upstream stream and what turns it into client bytes.
struct PumpedStream {
    translator: EventTranslator,
    body: Box<dyn Read + Send>,
    parser: SseParser,
    first_events: Vec<SseEvent>,
    read_buffer: Vec<u8>,
    /// Set for a stored Responses answer: watches the client bytes for the final response.
    capture: Option<StreamCapture>,
}

/// Forwards the rest of a committed stream, event by event, then emits the record.
fn pump(
    state: &RelayState,
    writer: &mut dyn crate::http::StreamWriter,
    stream: PumpedStream,
    control: CallControl,
    stream_idle: Duration,
    watchdog: WatchGuard,
    mut trace: CallTrace,
) -> std::io::Result<()> {
    let PumpedStream { mut translator, mut body, mut parser, first_events, read_buffer: mut buffer, mut capture } = stream;
    // Grows to the largest event translated; most are a few hundred bytes, and a held stream
    // keeps this for its whole life.
    let mut out = Vec::new();
    let mut client_error: Option<std::io::Error> = None;
    let mut stream_error: Option<String> = None;
    let mut send_events = |events: &[SseEvent], translator: &mut EventTranslator, trace: &mut CallTrace| -> std::io::Result<()> {
        for event in events {
            out.clear();
            translator.translate(event, &mut out);
            if !out.is_empty() {
                if let Some(capture) = capture.as_mut() {
                    capture.observe(state, &out);
                }
                writer.write_chunk(&out)?;
                if let Some(kept) = trace.record.response_body.as_mut() {
                    keep_for_log(kept, &out);
                }
                if trace.record.ttft_ms.is_none() {
                    trace.record.ttft_ms = Some(trace.started.elapsed().as_millis() as u64);
                }
            }
        }
        Ok(())
    };
    if let Err(error) = send_events(&first_events, &mut translator, &mut trace) {
        client_error = Some(error);
    }
    let mut events = Vec::new();
    while client_error.is_none() {
        control.set_read_timeout(Some(stream_idle));
        let read = with_call_control(&control, || body.read(&mut buffer));
        events.clear();
        let parsed = match read {
            Ok(0) => parser.finish(&mut events).map(|_| true),
            Ok(count) => parser.push(&buffer[..count], &mut events).map(|_| false),
            Err(error) => {
                if control.is_cancelled() {
                    // Only the client watchdog cancels: the client left while we waited upstream.
                    client_error = Some(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the client closed the connection"));
                } else {
                    let upstream_error = UpstreamError::from_io_error(&error);
                    stream_error = Some(match upstream_error {
                        UpstreamError::Timeout(_) => format!("the upstream sent nothing for {} s", stream_idle.as_secs()),
                        other => format!("the upstream stream broke: {other}"),
                    });
                }
                break;
            }
        };
        match parsed {
            Ok(ended) => {
                if let Err(error) = send_events(&events, &mut translator, &mut trace) {
                    client_error = Some(error);
                    break;
                }
                if ended {
                    break;
                }
            }
            Err(error) => {
                // The events completed before the bad one in this same read are whole: send them.
                if let Err(write_error) = send_events(&events, &mut translator, &mut trace) {
                    client_error = Some(write_error);
                    break;
                }
                stream_error = Some(error.to_string());
                break;
            }
        }
    }
    drop(watchdog);
    trace.record.usage = translator.usage();
    if let Some(error) = client_error {
        trace.finish(state, 499, Some("the client closed the connection during the stream".to_string()));
        return Err(error);
    }
    if let Some(message) = &stream_error {
        out.clear();
        translator.error(ErrorKind::Upstream, message, &mut out);
        let written = writer.write_chunk(&out);
        trace.finish(state, 200, Some(message.clone()));
        // A JSON array was closed after the error element and is only readable if the body ends
        // properly; an SSE stream is cut short so the client's HTTP layer sees the failure too.
        if translator.is_json_array() {
            return written;
        }
        return Err(std::io::Error::other(message.clone()));
    }
    out.clear();
    let failure = translator.finish(&mut out);
    if let Some(capture) = capture.as_mut() {
        capture.observe(state, &out);
    }
    let written = if out.is_empty() { Ok(()) } else { writer.write_chunk(&out) };
    trace.finish(state, 200, failure.clone());
    match failure {
        // Cut short like a broken stream (see above), so the client's HTTP layer sees it too.
        Some(message) if !translator.is_json_array() => Err(std::io::Error::other(message)),
        _ => written,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_secrets_are_replaced_everywhere_and_short_ones_left_alone() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-live-0123456789 (sk-live-0123456789)"}}"#.to_vec();
        let cleaned = String::from_utf8(without_secrets(body, &["sk-live-0123456789", "abc"])).unwrap();
        assert_eq!(cleaned, r#"{"error":{"message":"Incorrect API key provided: [channel key] ([channel key])"}}"#);
        assert_eq!(without_secrets(b"abc abc".to_vec(), &["abc"]), b"abc abc");
        assert_eq!(without_secrets(b"nothing here".to_vec(), &["sk-live-0123456789"]), b"nothing here");
    }
}
