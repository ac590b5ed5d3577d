//! Wiring: logging, store, admin API, relay and the HTTP server, plus signal-driven shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use crate::amp::{self, AmpRoute};
use crate::amp::proxy::AmpProxy;
use crate::api::{self, security_headers, AdminContext};
use crate::config::{self, Config};
use crate::http::descriptor_limit;
use crate::http::server::{Server, ServerLimits};
use crate::http::{cors, Handler, Request, Response};
use crate::relay::record::RecentRecords;
use crate::relay::{self, RelayState};
use crate::settings::{Settings, SettingsCell};
use crate::stats::batches::CountedBatches;
use crate::stats::price_state::PriceState;
use crate::stats::writer::StatsWriter;
use crate::stats::StatsService;
use crate::store::pool::StorePool;
use crate::sync::scheduler::Scheduler;
use crate::sync::{endpoint_probe, jobs};
use crate::upstream::client::{ClientOptions, UpstreamClient};

/// How many counted requests one relay thread's batch may hold for the stats writer before new
/// ones are dropped.
const RECORD_QUEUE_CAPACITY: usize = 10_000;
/// How often each node reloads the relay snapshot, so several nodes on one database converge.
const SNAPSHOT_REFRESH_INTERVAL: Duration = Duration::from_secs(15);

/// Coroutine stack size in words (256 KiB). The default 32 KiB overflowed with TLS in the
/// runtime spike; untouched stack pages cost no memory, so we leave generous room for deep JSON.
pub const COROUTINE_STACK_WORDS: usize = 0x8000;

/// How long SIGINT/SIGTERM waits for relay requests in flight before writing statistics and
/// exiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Coroutines kept ready for reuse between requests.
const COROUTINE_POOL_CAPACITY: usize = 64;

/// The longest a coroutine worker waits in epoll when no socket has a timeout pending. may's
/// default, 10 ms, woke every worker a hundred times a second on an idle gateway (0.3% of a
/// core each, and a wake-up a router's CPU is kept from sleeping for). Nothing the gateway does
/// waits for these wake-ups: sockets and coroutines scheduled from other threads wake a worker
/// through its event fd, and socket timeouts set the wait themselves. What the periodic wake-up
/// still does is let an idle worker steal coroutines queued behind a busy one, so it stays short
/// enough to bound that.
const IDLE_POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// Sets the process-wide may runtime options once (the first caller's worker count wins).
pub fn configure_runtime(workers: usize) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tune_allocator();
        let workers = if workers == 0 {
            std::thread::available_parallelism().map(|count| count.get()).unwrap_or(2)
        } else {
            workers
        };
        // may keeps a pool of ready coroutines; each pooled one holds a touched page of its stack,
        // so its default of 1000 costs about 8 MiB at idle. It also fills the whole pool when
        // its scheduler starts (a stack mapped, guarded and touched per coroutine: about two
        // milliseconds for 64 on a small machine, before the gateway can answer). So the
        // scheduler is started here with a pool of one, and the capacity raised after: finished
        // coroutines then fill the pool as the load needs them, up to the capacity.
        may::config()
            .set_workers(workers)
            .set_stack_size(COROUTINE_STACK_WORDS)
            .set_pool_capacity(1)
            .set_timeout_ns(IDLE_POLL_TIMEOUT.as_nanos() as u64);
        // Spawning the first coroutine starts the scheduler. That is done on a thread of its own:
        // may builds its scheduler in a stack frame of about 150 KiB, and on the main thread those
        // pages would stay resident for the life of the process (the main stack never shrinks),
        // while a thread's stack is unmapped when it is joined.
        // may's timer and event-loop threads take this thread's name.
        let starter = std::thread::Builder::new()
            .name("coroutines".into())
            .spawn(|| {
                let _ = may::go!(|| ()).join();
            })
            .expect("could not start a thread to start the coroutine scheduler");
        starter.join().expect("the coroutine scheduler failed to start");
        may::config().set_pool_capacity(COROUTINE_POOL_CAPACITY);
    });
}

/// Keeps glibc's heap small on small machines. A fixed mmap threshold stops glibc from raising it
/// after a large free (argon2's 19 MiB working memory would otherwise stay in the heap for
/// good), and two arenas stop every thread that ever allocated from keeping a heap of its own.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning parameters; it is called once at start-up.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// A started gateway: its address and the handle to stop it.
pub struct Gateway {
    server: Server,
    /// The admin API and panel's own listener when `server.admin_listen` is set.
    admin_server: Option<Server>,
    pub store: StorePool,
    pub relay: Arc<RelayState>,
    pub stats: Arc<StatsService>,
    pub scheduler: Arc<Scheduler>,
    writer: StatsWriter,
}

impl Gateway {
    /// The relay's address (and the admin API's too, unless `server.admin_listen` is set).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where the admin API and the panel answer.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_server.as_ref().unwrap_or(&self.server).local_addr()
    }

    /// Stops accepting connections, lets the relay requests in flight finish (up to `grace`),
    /// then writes every statistic and log still in memory.
    pub fn shutdown_gracefully(self, grace: Duration) {
        self.relay.begin_shutdown();
        // What overload protection did over the process's life, for the operator.
        let counts = self.server.connection_counts();
        log::info!(
            "connections at shutdown: {} open (cap {}); since start {} evicted while waiting for a request head, {} shed with 503",
            counts.open,
            counts.max,
            counts.evicted,
            counts.shed
        );
        self.server.shutdown();
        if let Some(admin_server) = self.admin_server {
            admin_server.shutdown();
        }
        let deadline = std::time::Instant::now() + grace;
        while self.relay.in_flight() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.relay.in_flight();
        if left > 0 {
            log::warn!("{left} relay requests still running after the shutdown grace period; stopping anyway");
        }
        self.writer.stop_and_flush();
    }

    /// Stops at once (tests): no grace for requests in flight, but statistics are still written.
    pub fn shutdown(self) {
        self.shutdown_gracefully(Duration::ZERO);
    }
}

/// Why the gateway could not start.
#[derive(Debug)]
pub enum StartError {
    /// The database could not be opened or prepared.
    Store(String),
    /// The upstream HTTP client could not be built (e.g. a bad extra CA file).
    Upstream(String),
    /// The listening socket could not be opened.
    Listen(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Store(message) => write!(formatter, "cannot open the database: {message}"),
            StartError::Upstream(message) => write!(formatter, "cannot set up the upstream client: {message}"),
            StartError::Listen(message) => write!(formatter, "cannot listen: {message}"),
        }
    }
}

/// Set to 1, the relay counts and logs nothing: `scripts/bench --stats-off` runs the same build
/// with and without it to measure what statistics cost per request. Deliberately not a config
/// key: no user should run a gateway that forgets its requests and its spending caps.
const BENCH_WITHOUT_STATS_VARIABLE: &str = "OCTOPUS_BENCH_WITHOUT_STATS";

/// Opens the store, seeds the admin account and starts serving. Returns once listening.
pub fn start(config: Config) -> Result<Gateway, StartError> {
    start_keeping_records(config, 0)
}

/// `start`, also keeping the last `kept_records` finished-request records in memory
/// (`RelayState::recent`). Tests read them; a production gateway keeps none, since copying every
/// record for a list nobody reads is work on every request.
pub fn start_keeping_records(config: Config, kept_records: usize) -> Result<Gateway, StartError> {
    configure_runtime(config.server.workers);
    let config = Arc::new(config);
    let store = StorePool::open(&config.database.database_type, &config.database.path, config.database.connections)
        .map_err(|error| StartError::Store(error.to_string()))?;
    // Hashing the first password is deliberately slow (argon2: about 25 ms and 19 MiB), so it is
    // done only when there is no admin to seed, not on every start.
    let has_admin = store.call(|store| store.has_admin()).map_err(|error| StartError::Store(error.to_string()))?;
    let seeded = if has_admin {
        false
    } else {
        let admin_password_hash = api::auth::hash_password(api::auth::DEFAULT_ADMIN_PASSWORD);
        store
            .call(move |store| store.seed_admin(api::auth::DEFAULT_ADMIN_USERNAME, &admin_password_hash))
            .map_err(|error| StartError::Store(error.to_string()))?
    };
    if seeded {
        log::warn!("created the admin account admin/admin; log in and change the password");
    }
    let upstream = UpstreamClient::new(ClientOptions {
        extra_ca_pem_file: (!config.relay.extra_ca_file.is_empty()).then(|| config.relay.extra_ca_file.clone().into()),
        connect_timeout: Duration::from_secs(config.relay.connect_timeout_seconds),
        max_idle_connections_per_host: 64,
        user_agent: format!("octopus/{}", env!("CARGO_PKG_VERSION")),
    })
    .map_err(StartError::Upstream)?;
    let settings = store.call(|store| Settings::load(store)).map_err(|error| StartError::Store(error.to_string()))?;
    let settings = Arc::new(SettingsCell::new(settings));
    let prices = PriceState::new(None);
    let mut stats = StatsService::new(store.clone(), settings.clone(), prices);
    let mut records = CountedBatches::new(RECORD_QUEUE_CAPACITY);
    if std::env::var_os(BENCH_WITHOUT_STATS_VARIABLE).is_some_and(|value| value == "1") {
        log::warn!("{BENCH_WITHOUT_STATS_VARIABLE}=1: statistics and request logs are off (a benchmark switch, not for use)");
        records = CountedBatches::discarding();
    }
    let records = Arc::new(records);
    let recent = Arc::new(RecentRecords::new(kept_records));
    if kept_records > 0 {
        stats.recent = Some(recent.clone());
    }
    let stats = Arc::new(stats);
    {
        let stats = stats.clone();
        store.call(move |store| stats.prices.rebuild(store)).map_err(|error| StartError::Store(error.to_string()))?;
    }
    stats.refresh_spending();
    let writer = StatsWriter::spawn(stats.clone(), records.clone());
    let relay = Arc::new(RelayState::new(config.clone(), store.clone(), upstream, records, recent, stats.clone()));
    relay.reload_snapshot().map_err(|error| StartError::Store(error.to_string()))?;
    spawn_snapshot_refresher(Arc::downgrade(&relay));
    let probing = config.relay.probe_interval_seconds > 0;
    let relay_for_admin = relay.clone();
    let stats_for_admin = stats.clone();
    let on_change = Box::new(move || {
        if let Err(error) = relay_for_admin.reload_snapshot() {
            log::error!("could not reload the relay configuration: {error}");
        }
        let stats = stats_for_admin.clone();
        if let Err(error) = stats_for_admin.store.call(move |store| stats.prices.rebuild(store)) {
            log::error!("could not reload the prices: {error}");
        }
        if probing {
            endpoint_probe::probe_new_endpoints_soon(&relay_for_admin);
        }
    });
    let scheduler = Arc::new(Scheduler::default());
    jobs::register_all(&scheduler, &config, &relay, &stats);
    scheduler.start();
    let admin = AdminContext {
        store: store.clone(),
        config: config.clone(),
        login_throttle: std::sync::Mutex::new(api::auth::LoginThrottle::default()),
        upstream: relay.upstream.clone(),
        on_change,
        stats: stats.clone(),
        settings,
        scheduler: scheduler.clone(),
        relay: Arc::downgrade(&relay),
    };
    if config.ampcode.enabled {
        log::info!("Amp CLI proxy enabled: management paths go to {}", config.ampcode.upstream_url);
    }
    let amp = AmpProxy::new(config.ampcode.clone());
    let parts = Arc::new(GatewayParts { admin, relay: relay.clone(), amp });
    let limits = ServerLimits {
        max_header_count: config.server.max_header_count,
        max_head_bytes: config.server.max_head_bytes,
        max_body_bytes: config.server.max_body_bytes,
        idle_timeout: Duration::from_secs(config.server.idle_timeout_seconds),
        release_idle_memory_after: crate::http::server::RELEASE_IDLE_MEMORY_AFTER,
        read_timeout: Duration::from_secs(config.server.read_timeout_seconds),
        write_timeout: Duration::from_secs(config.server.write_timeout_seconds),
        request_head_timeout: Duration::from_secs(config.server.request_head_timeout_seconds),
        min_body_bytes_per_second: config.server.min_body_bytes_per_second,
        max_connections: match config.server.max_connections {
            // A separate admin listener takes its own connections out of the descriptors first.
            0 if !config.server.admin_listen.trim().is_empty() => descriptor_limit::default_max_connections(
                descriptor_limit::current_soft_limit().saturating_sub(ADMIN_LISTENER_MAX_CONNECTIONS as u64),
            ),
            0 => descriptor_limit::default_max_connections(descriptor_limit::current_soft_limit()),
            configured => configured,
        },
        max_buffered_body_bytes: config.server.max_buffered_body_bytes,
    };
    let admin_listen = config.server.admin_listen.trim();
    let main_surface = if admin_listen.is_empty() { Surface::Everything } else { Surface::RelayOnly };
    let address = format!("{}:{}", config.server.host, config.server.port);
    let handler = Arc::new(GatewayHandler { parts: parts.clone(), surface: main_surface });
    let server = Server::start(&address, limits, handler).map_err(|error| StartError::Listen(format!("{address}: {error}")))?;
    log::info!("octopus listening on {} ({} database)", server.local_addr(), store.backend_name());
    let admin_server = if admin_listen.is_empty() {
        None
    } else {
        let handler = Arc::new(GatewayHandler { parts, surface: Surface::AdminOnly });
        // The admin listener has a connection table of its own, so a flood on the relay's
        // address never takes its slots; it needs few, as only the panel and admin tools use it.
        let admin_limits = ServerLimits { max_connections: limits.max_connections.min(ADMIN_LISTENER_MAX_CONNECTIONS), ..limits };
        let admin_server =
            Server::start(admin_listen, admin_limits, handler).map_err(|error| StartError::Listen(format!("{admin_listen} (server.admin_listen): {error}")))?;
        log::info!("admin API and panel listening on {}", admin_server.local_addr());
        Some(admin_server)
    };
    Ok(Gateway { server, admin_server, store, relay, stats, writer, scheduler })
}

/// The connection cap of the `server.admin_listen` listener (at most `server.max_connections`).
const ADMIN_LISTENER_MAX_CONNECTIONS: usize = 256;

/// Reloads the relay snapshot periodically; stops when the gateway is gone.
fn spawn_snapshot_refresher(relay: std::sync::Weak<RelayState>) {
    std::thread::Builder::new()
        .name("snapshot-refresh".to_string())
        .spawn(move || loop {
            std::thread::sleep(SNAPSHOT_REFRESH_INTERVAL);
            let Some(relay) = relay.upgrade() else { return };
            if let Err(error) = relay.reload_snapshot() {
                log::warn!("periodic reload of the relay configuration failed: {error}");
            }
        })
        .expect("spawn the snapshot refresher");
}

/// What both listeners share when `server.admin_listen` splits them.
struct GatewayParts {
    admin: AdminContext,
    relay: Arc<RelayState>,
    amp: AmpProxy,
}

/// Which parts one listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Surface {
    /// One listener for everything (the default).
    Everything,
    /// The relay's listener when the admin API has its own: relay, Amp and `/healthz`.
    RelayOnly,
    /// The `server.admin_listen` listener: admin API, panel, `/metrics` and `/healthz`.
    AdminOnly,
}

/// Routes every request to the admin API, the relay or the panel, as its listener allows, and
/// adds the headers browsers are told (security headers, CORS).
struct GatewayHandler {
    parts: Arc<GatewayParts>,
    surface: Surface,
}

impl Handler for GatewayHandler {
    fn handle(&self, mut request: Request) -> Response {
        let parts = &*self.parts;
        let serves_relay = self.surface != Surface::AdminOnly;
        let serves_admin = self.surface != Surface::RelayOnly;
        if cors::is_preflight(&request) {
            return self.preflight(&request);
        }
        // Amp's paths come first: its management subtrees under `/api/` are not the admin API
        // (which is `/api/v1`), and its provider paths are relay calls under another name.
        if serves_relay {
            match amp::route(&request.path, parts.amp.config.enabled) {
                Some(AmpRoute::Management) => return parts.amp.handle(&parts.relay, request),
                Some(AmpRoute::Provider { relay_path }) => {
                    request.path = relay_path;
                    // No CORS here: Amp is a command-line client, and its paths are not opened
                    // to web pages (see http::cors).
                    if let Some(response) = relay::handle(&parts.relay, &mut request) {
                        return response;
                    }
                    let message = format!("no Amp provider route {} {}", request.method, request.path);
                    return relay::error::RelayError::NotFound(message).render(relay::inbound::format_for_path(&request.path));
                }
                None => {}
            }
        }
        let path = request.path.as_str();
        if path == "/healthz" {
            return security_headers::for_api(api::handle(&parts.admin, &request));
        }
        if serves_admin {
            if path == "/metrics" && (request.method == "GET" || request.method == "HEAD") {
                return security_headers::for_api(api::metrics::handle(&parts.admin, &parts.relay, &request));
            }
            if path.starts_with("/api/") {
                return security_headers::for_api(api::handle(&parts.admin, &request));
            }
        }
        if serves_relay {
            // A generation call takes the request's headers with its body, so the origin is
            // read first (SDKs send none; browsers do).
            let origin = request.header("origin").map(str::to_string);
            if let Some(response) = relay::handle(&parts.relay, &mut request) {
                return self.with_cors(origin.as_deref(), response);
            }
        }
        if serves_admin && let Some(response) = api::ui::serve(&request) {
            return security_headers::for_panel(response);
        }
        let message = format!("no route {} {}", request.method, request.path);
        if serves_relay && request.path.starts_with("/v1") {
            // Relay clients get the error in their own protocol's shape.
            let response = relay::error::RelayError::NotFound(message).render(relay::inbound::format_for_path(&request.path));
            return self.with_cors(request.header("origin"), response);
        }
        security_headers::for_api(Response::json(404, &serde_json::json!({"error": {"message": message, "type": "not_found"}})))
    }

    fn server_error_body(&self, path: Option<&str>, status: u16, message: &str) -> Option<Vec<u8>> {
        let path = path.filter(|path| path.starts_with("/v1"))?;
        let kind = match status {
            413 => crate::protocol::error::ErrorKind::RequestTooLarge,
            400 | 408 | 431 => crate::protocol::error::ErrorKind::InvalidRequest,
            503 => crate::protocol::error::ErrorKind::Overloaded,
            _ => crate::protocol::error::ErrorKind::Internal,
        };
        Some(crate::protocol::error::render_error(relay::inbound::format_for_path(path), status, kind, message))
    }
}

impl GatewayHandler {
    /// A browser asks before a cross-origin call. Only relay paths on a listener that serves the
    /// relay can be allowed, and only for origins in `cors_allowed_origins` (see `http::cors`).
    fn preflight(&self, request: &Request) -> Response {
        let origin = request.header("origin").unwrap_or("");
        let relay_path = self.surface != Surface::AdminOnly && cors::is_relay_path(&request.path);
        if relay_path {
            let allowed = self.parts.admin.settings.get();
            if cors::origin_allowed(origin, &allowed.cors_allowed_origins) {
                return cors::allowed_preflight_response(request, origin);
            }
            let message = format!("the origin {origin:?} may not call this gateway from a browser; the admin can allow it in the setting cors_allowed_origins");
            let format = relay::inbound::format_for_path(&request.path);
            let body = crate::protocol::error::render_error(format, 403, crate::protocol::error::ErrorKind::PermissionDenied, &message);
            return Response::bytes(403, "application/json", body);
        }
        let message = "cross-origin calls to the admin API and the panel are not allowed";
        security_headers::for_api(Response::json(403, &serde_json::json!({"error": {"message": message, "type": "forbidden"}})))
    }

    /// Lets an allowed page read a relay answer. Requests without `Origin` (every non-browser
    /// client) skip the settings read altogether.
    fn with_cors(&self, origin: Option<&str>, response: Response) -> Response {
        let Some(origin) = origin else { return response };
        if cors::origin_allowed(origin, &self.parts.admin.settings.get().cors_allowed_origins) {
            return cors::with_allowed_origin(response, origin);
        }
        response
    }
}

/// `octopus start`: load the config, start, and run until SIGINT or SIGTERM. Returns the exit code.
pub fn run(config_path: &Path) -> i32 {
    let loaded = match config::load(config_path, &config::environment_overrides()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("octopus: config error: {error}");
            return 1;
        }
    };
    init_logging(&loaded.config.log.level);
    if loaded.created {
        log::info!("wrote the default configuration to {}", loaded.path.display());
    }
    match descriptor_limit::raise_to_hard_limit() {
        Ok(limits) if limits.soft_after > limits.soft_before => {
            log::info!("raised the open-file limit from {} to {} (the hard limit)", limits.soft_before, limits.soft_after)
        }
        Ok(limits) => log::info!("open-file limit {} (hard limit {})", limits.soft_after, limits.hard),
        Err(error) => log::warn!("could not raise the open-file limit: {error}"),
    }
    // Block the shutdown signals before any thread starts so that every thread inherits the mask
    // and only the main thread's sigwait receives them.
    let signals = block_shutdown_signals();
    let gateway = match start(loaded.config) {
        Ok(gateway) => gateway,
        Err(error) => {
            log::error!("{error}");
            eprintln!("octopus: {error}");
            return 1;
        }
    };
    let signal = wait_for_signal(&signals);
    log::info!("received signal {signal}, shutting down");
    gateway.shutdown_gracefully(SHUTDOWN_GRACE);
    log::info!("statistics and logs written; bye");
    0
}

fn init_logging(level: &str) {
    crate::logging::init(config::parse_log_level(level).unwrap_or(log::LevelFilter::Info));
}

fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on a zeroed, then initialised, local sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` was initialised by block_shutdown_signals and `signal` is a valid out pointer.
    unsafe {
        libc::sigwait(set, &mut signal);
    }
    signal
}
