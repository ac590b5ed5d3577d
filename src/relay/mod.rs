//! The relay: client endpoints, client-key auth, routing, balancing, retries and the circuit breaker.
//!
//! Architecture invariants: the relay never queries SQL (it reads `snapshot::Snapshot`, rebuilt
//! after admin writes); decisions (balancer, retry, breaker, key pool, endpoint pick, sticky) are
//! pure and clock-injected; every finished request emits exactly one `record::RequestRecord`.

pub mod attempts;
pub mod balancer;
pub mod breaker;
pub mod client_auth;
pub mod count_tokens;
pub mod disconnect;
pub mod embeddings;
pub mod endpoint_pick;
pub mod error;
pub mod forward;
pub mod health;
pub mod inbound;
pub mod key_pool;
pub mod media_fetch;
pub mod models;
pub mod outbound;
pub mod rate_limit;
pub mod record;
pub mod response_store;
pub mod retry;
pub mod rng;
pub mod snapshot;
pub mod sticky;
pub mod stream;
pub mod transform;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::http::{Request, Response};
use crate::relay::health::HealthCell;
use crate::relay::inbound::RelayRoute;
use crate::relay::rate_limit::RateLimits;
use crate::relay::record::RecentRecords;
use crate::relay::snapshot::Snapshot;
use crate::relay::error::RelayError;
use crate::store::entities::{ApiKey, Channel, ChannelKey, ChannelType};
use crate::stats::StatsService;
use crate::stats::batches::CountedBatches;
use crate::store::pool::StorePool;
use crate::store::rebuilt_view::RebuiltView;
use crate::upstream::client::UpstreamClient;
use crate::upstream::google_oauth::AntigravityAuth;

/// Everything the relay shares between requests.
pub struct RelayState {
    pub config: Arc<Config>,
    pub store: StorePool,
    pub snapshot: RebuiltView<Snapshot>,
    pub health: HealthCell,
    pub upstream: UpstreamClient,
    /// Where finished requests are counted for the stats writer.
    pub records: Arc<CountedBatches>,
    pub antigravity: AntigravityAuth,
    /// The last finished requests (filled by the record consumer).
    pub recent: Arc<RecentRecords>,
    /// Spending per client key (for `max_cost`), read on each request of a capped key.
    pub stats: Arc<StatsService>,
    /// Requests and tokens per client key in the current minute (for `rpm` and `tpm`).
    pub rate_limits: RateLimits,
    /// Queues stored OpenAI Responses for their writer thread (see `response_store`).
    pub response_saver: response_store::ResponseSaver,
    /// Requests started and not yet recorded, for the graceful shutdown.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Set when shutdown begins: new relay requests get a 503 and no record.
    shutting_down: std::sync::atomic::AtomicBool,
    seed: AtomicU64,
}

impl RelayState {
    pub fn new(
        config: Arc<Config>,
        store: StorePool,
        upstream: UpstreamClient,
        records: Arc<CountedBatches>,
        recent: Arc<RecentRecords>,
        stats: Arc<StatsService>,
    ) -> RelayState {
        RelayState {
            antigravity: AntigravityAuth::new(upstream.clone(), config.antigravity.clone()),
            response_saver: response_store::ResponseSaver::start(store.clone()),
            config,
            store,
            snapshot: RebuiltView::default(),
            health: HealthCell::new(),
            upstream,
            records,
            recent,
            stats,
            rate_limits: RateLimits::default(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            seed: AtomicU64::new(crate::util::os_random_u64()),
        }
    }

    /// Relay requests started whose record has not been emitted yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request as in flight until the guard is dropped; `None` once shutdown has begun.
    ///
    /// The count goes up before the flag is read and the shutdown sets the flag before it reads
    /// the count (both sequentially consistent), so every request either sees the flag or is
    /// waited for: none is served after the statistics were written.
    pub fn enter_request(self: &Arc<Self>) -> Option<InFlightGuard> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard { state: self.clone() };
        (!self.shutting_down.load(Ordering::SeqCst)).then_some(guard)
    }

    /// Refuses new relay requests from now on (graceful shutdown).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Reloads the snapshot from the store. Callable from coroutines and threads.
    pub fn reload_snapshot(&self) -> Result<(), crate::store::StoreError> {
        let ticket = self.snapshot.begin();
        let snapshot = self.store.call(|store| Snapshot::load(store))?;
        let live_key_ids = snapshot.api_keys_by_hash.values().map(|api_key| api_key.id).collect();
        // A reload that read the rows before a newer one did is dropped, its key list with it.
        if self.snapshot.install(ticket, snapshot) {
            self.rate_limits.forget_keys_except(&live_key_ids);
        }
        Ok(())
    }

    /// Refuses a request of a key over its `rpm` or `tpm`, and counts it otherwise, at
    /// `now_unix_ms` (the request's start).
    pub fn admit(&self, api_key: &ApiKey, now_unix_ms: i64) -> Result<(), RelayError> {
        self.rate_limits.admit(api_key, u64::try_from(now_unix_ms).unwrap_or(0)).map_err(|refusal| RelayError::RateLimited {
            message: refusal.message(),
            retry_after_seconds: refusal.retry_after_seconds(),
        })
    }

    /// A fresh seed for one request's random choices.
    pub fn next_seed(&self) -> u64 {
        // The golden-ratio increment walks the whole u64 space before repeating (SplitMix64's own step).
        self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
    }

    /// What to authenticate an attempt with. Antigravity keys go through the OAuth manager
    /// (refresh tokens exchanged and cached; `force_refresh` after an upstream 401) and carry
    /// the GCP project and the headers Cloud Code expects; other keys are sent as they are.
    pub fn credential_for(&self, channel: &Channel, key: &ChannelKey, base_url: &str, force_refresh: bool) -> Result<Credential, String> {
        if channel.channel_type != ChannelType::Antigravity {
            return Ok(Credential { secret: key.key.clone(), extra_headers: Vec::new(), project: None, refreshable: false });
        }
        let token = self.antigravity.access_token(&key.key, force_refresh).map_err(|error| format!("antigravity credentials: {error}"))?;
        let project = self.antigravity.project_id(&key.key, base_url, &token).map_err(|error| format!("antigravity project: {error}"))?;
        Ok(Credential {
            refreshable: !key.key.trim().starts_with("ya29."),
            secret: token,
            extra_headers: AntigravityAuth::request_headers(),
            project: Some(project),
        })
    }
}

/// The credential of one attempt.
pub struct Credential {
    /// The API key or bearer token.
    pub secret: String,
    /// Provider-specific headers that go with it.
    pub extra_headers: Vec<(String, String)>,
    /// The GCP project (Antigravity only).
    pub project: Option<String>,
    /// Whether a fresh secret can be obtained (an OAuth refresh token), worth one retry on 401.
    pub refreshable: bool,
}

/// Answers a relay request, or None when the path is not a relay endpoint.
pub fn handle(state: &Arc<RelayState>, request: &mut Request) -> Option<Response> {
    if request.method == "POST" && request.path == "/v1/messages/count_tokens" {
        return Some(count_tokens::handle(state, request));
    }
    if request.path.starts_with("/v1/responses/") {
        return response_store::handle(state, request);
    }
    let route = inbound::route(&request.method, &request.path)?;
    let client_format = inbound::format_for_path(&request.path);
    Some(match &route {
        RelayRoute::ListModels | RelayRoute::ListGeminiModels => {
            let snapshot = state.snapshot.current();
            match client_auth::authenticate(&snapshot, request, crate::util::unix_seconds()) {
                // Google's SDKs list `/v1/models` too when configured for v1; their key header tells.
                Ok(api_key) if matches!(route, RelayRoute::ListModels) && request.header("x-goog-api-key").is_none() => {
                    models::list_models(&snapshot, &api_key, request)
                }
                Ok(api_key) => models::list_gemini_models(&snapshot, &api_key, request),
                Err(error) => {
                    let format = if matches!(route, RelayRoute::ListGeminiModels) {
                        crate::protocol::Format::Gemini
                    } else if models::wants_anthropic_shape(request) {
                        crate::protocol::Format::Anthropic
                    } else {
                        crate::protocol::Format::OpenaiChat
                    };
                    error.render(format)
                }
            }
        }
        RelayRoute::Generate(_) | RelayRoute::GeminiGenerate { .. } => forward::handle_generate(state, request, &route, client_format),
        RelayRoute::GeminiCountTokens { model } => count_tokens::handle_gemini(state, request, model),
        RelayRoute::Embeddings => embeddings::handle(state, request),
    })
}

/// Keeps one request counted in `RelayState::in_flight` while it lives.
pub struct InFlightGuard {
    state: Arc<RelayState>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
