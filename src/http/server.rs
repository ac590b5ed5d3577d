//! The HTTP/1.1 server loop on may::net (accept, parse, limits, keep-alive, chunked writer).
//!
//! `Server::start` binds the listener and runs the accept loop on its own coroutine; every
//! accepted connection gets a coroutine of its own (see `connection.rs`), so a slow client only
//! ever parks its own coroutine. The accept loop admits connections under the cap (see
//! `admission.rs`) and keeps one spare descriptor so that running out of descriptors sheds
//! clients with a 503 instead of leaving them in the backlog or spinning.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use may::coroutine::JoinHandle;
use may::net::TcpListener;

use crate::http::Handler;
use crate::http::admission::{Admission, BodyBudget, ConnectionTable, shed_connection, shed_without_waiting};
use crate::http::connection::serve_connection;

/// How long a keep-alive connection waits for its next request before it gives back the memory
/// its last request left it. A request after such a pause faults those pages back in (about 8
/// more page faults: 9.7 per request instead of 1.9, measured with requests 1.6 s apart), so
/// the pause is longer than the keep-alive expiry of the common SDK HTTP stacks (Node's undici
/// 4 s, Python's httpx 5 s), which close an idle connection themselves: a client that calls again
/// within seconds finds its connection as it left it. Connections kept open longer (curl, Go's
/// 90 s, urllib3's) give the memory back.
pub const RELEASE_IDLE_MEMORY_AFTER: Duration = Duration::from_secs(6);

/// Caps and timeouts applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// More request headers than this get a 431.
    pub max_header_count: usize,
    /// A request line plus headers longer than this gets a 431.
    pub max_head_bytes: usize,
    /// A body longer than this (by Content-Length, or while decoding chunks) gets a 413.
    pub max_body_bytes: usize,
    /// How long a keep-alive connection may wait for the first byte of its next request.
    pub idle_timeout: Duration,
    /// A keep-alive connection idle this long gives back the memory its last request left it
    /// (its deep stack pages, its read buffer, its worker heap's free pages) and waits on for
    /// the rest of `idle_timeout`.
    pub release_idle_memory_after: Duration,
    /// No read of a request body may wait longer than this (else the connection is closed).
    pub read_timeout: Duration,
    /// A request head must arrive in full within this time: of the accept for a connection's
    /// first request, of its first byte for later ones (else 408, or a close when nothing came).
    pub request_head_timeout: Duration,
    /// Every window of `request_head_timeout` must bring a body this many bytes a second
    /// (else 408 and close); 0 turns the check off.
    pub min_body_bytes_per_second: usize,
    /// Open connections on this listener above which new ones evict a connection waiting for a
    /// head, or are shed with 503 when none waits.
    pub max_connections: usize,
    /// Request-body bytes all connections of this listener may hold at once; a body that would
    /// pass it gets a 503 with `Retry-After`.
    pub max_buffered_body_bytes: usize,
    /// A write to the client that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            max_header_count: 100,
            max_head_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(75),
            release_idle_memory_after: RELEASE_IDLE_MEMORY_AFTER,
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            request_head_timeout: Duration::from_secs(10),
            min_body_bytes_per_second: 4096,
            max_connections: 1024,
            max_buffered_body_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The connection figures of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCounts {
    pub open: usize,
    pub max: usize,
    /// Connections closed while waiting for a request head, to make room for new ones.
    pub evicted: u64,
    /// Connections answered 503 (or closed at once) because every slot was busy.
    pub shed: u64,
}

/// A running server. Dropping it (or calling `shutdown`) stops accepting connections.
#[must_use = "the server stops when this value is dropped"]
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<SharedState>,
    accept_loop: Option<JoinHandle<()>>,
}

/// What the accept loop and every connection share.
pub(crate) struct SharedState {
    pub(crate) limits: ServerLimits,
    pub(crate) handler: Arc<dyn Handler>,
    /// Set by `shutdown`: no new connections, and open ones close after their current request.
    pub(crate) stopping: AtomicBool,
    pub(crate) connections: Arc<ConnectionTable>,
    pub(crate) body_budget: BodyBudget,
}

/// The listen backlog. The standard library listens with 128, which under a burst of new
/// connections makes clients wait for SYN retransmits (about one second each).
const LISTEN_BACKLOG: libc::c_int = 1024;
/// How long `shutdown` waits for the accept loop to end before giving up on it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

impl Server {
    /// Binds `address` (e.g. `0.0.0.0:8080`, port 0 for any free port), starts the accept loop
    /// on its own coroutine and returns at once.
    pub fn start(
        address: &str,
        limits: ServerLimits,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Server> {
        // The standard library's bind, unlike may's, does not set SO_REUSEPORT, so a second
        // server on the same port fails instead of silently sharing it.
        let std_listener = std::net::TcpListener::bind(address)?;
        // SAFETY: the descriptor is a bound, listening socket owned by `std_listener`; listen()
        // on it again only changes the backlog (Linux accepts this).
        if unsafe { libc::listen(std_listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let local_addr = std_listener.local_addr()?;
        // SAFETY: `into_raw_fd` gives up ownership, so the may listener is the descriptor's
        // only owner.
        let listener = unsafe { TcpListener::from_raw_fd(std_listener.into_raw_fd()) };
        let shared = Arc::new(SharedState {
            limits,
            handler,
            stopping: AtomicBool::new(false),
            connections: Arc::new(ConnectionTable::new(limits.max_connections)),
            body_budget: BodyBudget::new(limits.max_buffered_body_bytes),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_loop = may::go!(move || accept_connections(listener, accept_shared));
        Ok(Server {
            local_addr,
            shared,
            accept_loop: Some(accept_loop),
        })
    }

    /// The address the server listens on (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections open now, and how many were evicted or shed since start.
    pub fn connection_counts(&self) -> ConnectionCounts {
        let table = &self.shared.connections;
        ConnectionCounts {
            open: table.open_connections(),
            max: table.max_connections(),
            evicted: table.evicted_total.load(Ordering::Relaxed),
            shed: table.shed_total.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting connections and closes the listener. Open connections finish their
    /// current request and then close.
    pub fn shutdown(self) {
        drop(self);
    }

    fn stop(&mut self) {
        let Some(accept_loop) = self.accept_loop.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Release);
        // The accept loop is parked in accept(); a connection of our own wakes it so it can
        // see the flag.
        let wake_address =
            SocketAddr::new(loopback_for(self.local_addr.ip()), self.local_addr.port());
        if let Err(error) =
            may::net::TcpStream::connect_timeout(&wake_address, Duration::from_secs(1))
        {
            log::warn!(
                "could not wake the accept loop of {}: {error}",
                self.local_addr
            );
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while !accept_loop.is_done() {
            if Instant::now() >= deadline {
                log::warn!(
                    "the accept loop of {} did not stop in time",
                    self.local_addr
                );
                return;
            }
            may::coroutine::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback address reaching a listener bound to `ip` (which may be unspecified).
fn loopback_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// How long the accept loop pauses when accept() fails for want of descriptors or memory and
/// the spare descriptor is gone too, so that it does not spin.
const ACCEPT_FAILURE_PAUSE: Duration = Duration::from_millis(100);
/// The accept loop logs failures at most this often (a flood would otherwise flood the log).
const ACCEPT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(5);

fn accept_connections(listener: TcpListener, shared: Arc<SharedState>) {
    // A descriptor held in reserve: when accept() fails with EMFILE, closing it lets us accept
    // the waiting client and tell it 503, instead of leaving it to time out in the backlog.
    let mut spare_descriptor = open_spare_descriptor();
    let mut failures_since_log = 0u64;
    let mut last_failure_log: Option<Instant> = None;
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => match shared.connections.admit(stream.as_raw_fd()) {
                Admission::Serve(slot, waiting) => {
                    let connection_shared = Arc::clone(&shared);
                    may::go!(move || serve_connection(stream, peer, &connection_shared, slot, waiting));
                    shared.connections.wait_for_evicted();
                }
                Admission::Shed(slot) => {
                    may::go!(move || shed_connection(stream, slot));
                }
                Admission::Close => drop(stream),
            },
            Err(error) => {
                let raw_error = error.raw_os_error();
                // The client gave up before we accepted it, or a signal interrupted us.
                if matches!(raw_error, Some(libc::ECONNABORTED | libc::EINTR)) {
                    continue;
                }
                failures_since_log += 1;
                if last_failure_log.is_none_or(|logged| logged.elapsed() >= ACCEPT_FAILURE_LOG_INTERVAL) {
                    log::warn!(
                        "accept failed {failures_since_log} time(s) (last: {error}); {} of {} connections open",
                        shared.connections.open_connections(),
                        shared.connections.max_connections()
                    );
                    failures_since_log = 0;
                    last_failure_log = Some(Instant::now());
                }
                let out_of_descriptors = matches!(raw_error, Some(libc::EMFILE | libc::ENFILE));
                if out_of_descriptors && spare_descriptor.take().is_some() {
                    // The spare is closed now: accept the waiting client, answer 503, close it.
                    shared.connections.shed_total.fetch_add(1, Ordering::Relaxed);
                    if let Ok((stream, _)) = listener.accept() {
                        shed_without_waiting(&stream);
                    }
                    spare_descriptor = open_spare_descriptor();
                } else {
                    // Out of memory, or the spare is gone as well: pause so we do not spin,
                    // and let open connections finish and free resources.
                    may::coroutine::sleep(ACCEPT_FAILURE_PAUSE);
                    if spare_descriptor.is_none() {
                        spare_descriptor = open_spare_descriptor();
                    }
                }
            }
        }
    }
}

fn open_spare_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}
