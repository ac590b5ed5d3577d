//! A ureq connector and transport on `may::net::TcpStream`, so upstream IO parks the coroutine
//! instead of blocking the worker thread, with SOCKS5 proxies and `CallControl` support.
//!
//! ureq's own `TcpConnector` uses blocking std sockets: inside a coroutine a blocked read
//! freezes every coroutine on that worker (measured: 10 req/s instead of 925, see
//! design/runtime-spike.md §3). Its SOCKS connector has the same problem, so SOCKS5 is done here
//! on the may stream too. HTTP CONNECT proxies need nothing from us: ureq's
//! `ConnectProxyConnector` runs the agent's connector chain (this connector) to reach the proxy.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use std::{fmt, io};

use ureq::ProxyProtocol;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::transport::time::{Duration as UreqDuration, Instant as UreqInstant};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, ShutdownHandle,
    Transport, TransportAdapter,
};

use crate::may_io::SteadyTcpStream;
use crate::upstream::buffers::ConnectionBuffers;
use crate::upstream::control::{CallControl, ReadLimits, current_call_control};
use crate::upstream::error::TransportFailure;
use crate::upstream::resolver::{default_port, host_and_port};
use crate::upstream::socks::{SocksCredentials, SocksTarget, socks5_handshake};
use crate::util::{applied_timeout_fits, receive_without_waiting};

/// The owner id of a socket that no `CallControl` is using.
const NO_OWNER: u64 = 0;

/// The shortest connect attempt per address when a host has several.
const MIN_CONNECT_ATTEMPT: Duration = Duration::from_millis(10);

/// Opens `may::net::TcpStream`s: directly to the resolved addresses, or through a SOCKS5
/// proxy when the agent's proxy is `socks5://` or `socks5h://`. Put it after ureq's
/// `ConnectProxyConnector` and before the TLS connector in the chain.
#[derive(Debug, Default)]
pub(crate) struct MayConnector;

impl<In: Transport> Connector<In> for MayConnector {
    type Out = Either<In, MayTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        // An earlier connector (the CONNECT proxy tunnel) already made the connection.
        if let Some(transport) = chained {
            return Ok(Some(Either::A(transport)));
        }
        let deadline = connect_deadline(details);
        let transport = match socks_proxy_for(details.config, details.uri)? {
            Some(proxy) => connect_through_socks(details, &proxy, deadline)?,
            None => {
                let stream = connect_to_any(&details.addrs, deadline)?;
                new_transport(stream, details)?
            }
        };
        Ok(Some(Either::B(transport)))
    }
}

/// Which limit a read waits under, so that a timeout is reported as the one that struck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadLimiter {
    /// ureq's own limit for the phase the call is in.
    Ureq,
    /// The `CallControl`'s limit on any one read.
    ControlRead,
    /// The `CallControl`'s deadline for the response head.
    ResponseHead,
}

impl ReadLimiter {
    /// The error of a read that ran out of time under this limit; `ureq_reason` names ureq's.
    fn timeout_error(self, ureq_reason: ureq::Timeout) -> ureq::Error {
        match self {
            ReadLimiter::Ureq => ureq::Error::Timeout(ureq_reason),
            ReadLimiter::ControlRead => TransportFailure::ReadTimeout.into_ureq_error(),
            // Reported as ureq reports its own response-head timeout, which it replaces.
            ReadLimiter::ResponseHead => ureq::Error::Timeout(ureq::Timeout::RecvResponse),
        }
    }
}

/// The shortest of a read's limits (`None`: no limit) and which one it is; ureq's wins a tie.
fn shortest_read_limit(
    ureq_limit: Option<Duration>,
    control_read_timeout: Option<Duration>,
    response_head_remaining: Option<Duration>,
) -> (Option<Duration>, ReadLimiter) {
    let mut shortest = (ureq_limit, ReadLimiter::Ureq);
    for (limit, limiter) in [
        (control_read_timeout, ReadLimiter::ControlRead),
        (response_head_remaining, ReadLimiter::ResponseHead),
    ] {
        if let Some(limit) = limit
            && shortest.0.is_none_or(|current| limit < current)
        {
            shortest = (Some(limit), limiter);
        }
    }
    shortest
}

/// One TCP connection on a may stream, with ureq's buffers.
pub(crate) struct MayTransport {
    /// Reads and writes retry may's spurious errors (`crate::may_io`).
    stream: SteadyTcpStream,
    socket: Arc<SharedSocket>,
    buffers: ConnectionBuffers,
    /// The timeouts last set on the stream, to skip setting them again (see
    /// `util::applied_timeout_fits`).
    applied_read_timeout: Option<Duration>,
    applied_write_timeout: Option<Duration>,
}

impl MayTransport {
    fn new(stream: may::net::TcpStream, buffers: ConnectionBuffers) -> MayTransport {
        let socket = Arc::new(SharedSocket::new(stream.as_raw_fd()));
        MayTransport {
            stream: SteadyTcpStream(stream),
            socket,
            buffers,
            applied_read_timeout: None,
            applied_write_timeout: None,
        }
    }

    /// Checks cancellation and records this socket with the installed `CallControl`, whose
    /// read limits are returned. Without a control the socket has no owner, so a stale
    /// `cancel()` from an earlier call on this pooled connection cannot reach it.
    fn claim_for_current_call(&self) -> Result<(Option<CallControl>, ReadLimits), ureq::Error> {
        let Some(control) = current_call_control() else {
            self.socket.set_owner(NO_OWNER);
            return Ok((None, ReadLimits::default()));
        };
        match control.claim(&self.socket) {
            Ok(limits) => Ok((Some(control), limits)),
            Err(()) => Err(TransportFailure::Cancelled.into_ureq_error()),
        }
    }

    fn apply_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if !applied_timeout_fits(self.applied_read_timeout, timeout) {
            self.stream.set_read_timeout(timeout)?;
            self.applied_read_timeout = timeout;
        }
        Ok(())
    }

    fn apply_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if !applied_timeout_fits(self.applied_write_timeout, timeout) {
            self.stream.set_write_timeout(timeout)?;
            self.applied_write_timeout = timeout;
        }
        Ok(())
    }
}

impl Transport for MayTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let (control, _) = self.claim_for_current_call()?;
        let timeout = timeout.for_write();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        self.apply_write_timeout(timeout.not_zero().map(|limit| *limit))?;
        let Some(bytes) = self.buffers.take_output(amount) else {
            // A request head, held back until its body joins it or the response is read.
            return Ok(());
        };
        let written = self.stream.write_all(bytes);
        write_result(written, control.as_ref(), timeout.reason)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let (control, limits) = self.claim_for_current_call()?;
        let timeout = timeout.for_read();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let response_head_remaining = limits
            .response_head_deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        let (limit, limiter) = shortest_read_limit(
            timeout.not_zero().map(|limit| *limit),
            limits.read_timeout,
            response_head_remaining,
        );
        if limit.is_some_and(|limit| limit.is_zero()) {
            return Err(limiter.timeout_error(timeout.reason));
        }
        if self.buffers.holds_output() {
            // A request without a body: its head goes out now, under the read's time limit.
            self.apply_write_timeout(limit)?;
            let held = self.buffers.take_held_output().unwrap_or_default();
            let written = self.stream.write_all(held);
            write_result(written, control.as_ref(), timeout.reason)?;
        }
        self.apply_read_timeout(limit)?;
        let ready = if self.buffers.output_is_idle() {
            // The response has started and the output waits for the next request. Only when
            // nothing is ready to read, so that this read would wait (a stream between events,
            // a slow answer), is the output given back before it does.
            let ready = receive_without_waiting(self.socket.fd, self.buffers.input_append_buf(), 0);
            if ready.is_none() {
                self.buffers.release_output();
            }
            ready
        } else {
            None
        };
        if ready.is_none() && self.buffers.awaits_answer() && may::coroutine::is_coroutine() {
            // A request was just sent, and no upstream answers within the microseconds it takes
            // to get here: reading now would only fail, a system call spent before the
            // coroutine parks until the answer comes. The worker's other coroutines run first
            // instead; under load the answer has usually arrived by then.
            may::coroutine::yield_now();
        }
        let result = ready.unwrap_or_else(|| loop {
            match self.stream.read(self.buffers.input_append_buf()) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        });
        // A cancel shuts the socket down, which usually ends the read with EOF rather than an
        // error: the flag is what tells the two apart.
        if control.is_some_and(|control| control.is_cancelled()) {
            return Err(TransportFailure::Cancelled.into_ureq_error());
        }
        let amount = match result {
            Ok(amount) => amount,
            Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                return Err(limiter.timeout_error(timeout.reason));
            }
            Err(error) => return Err(ureq::Error::Io(error)),
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // ureq asks this when the connection goes back to the pool and when it is taken out
        // again: either way the call that used it is over.
        let returning_from_a_call = self.socket.take_owner() != NO_OWNER;
        // Bytes already buffered belong to no request: a server that sent more than its answer
        // (a body after a HEAD response, say) would have them read as the next call's response.
        if !self.buffers.input().is_empty() || self.buffers.holds_output() {
            return false;
        }
        // A connection coming back from a call is peeked at again when it is taken out, just
        // before its next use, which also catches what the server sent or closed meanwhile. A
        // peek on its way back would be a second system call per request that decides nothing.
        returning_from_a_call || peek_says_open(self.stream.as_raw_fd())
    }
}

/// What a write to the socket means for ureq: a cancel (which shuts the socket down, so the
/// write's own error says nothing) comes first, then a timeout, then any other IO error.
fn write_result(written: io::Result<()>, control: Option<&CallControl>, reason: ureq::Timeout) -> Result<(), ureq::Error> {
    if control.is_some_and(|control| control.is_cancelled()) {
        return Err(TransportFailure::Cancelled.into_ureq_error());
    }
    match written {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::TimedOut => Err(ureq::Error::Timeout(reason)),
        Err(error) => Err(ureq::Error::Io(error)),
    }
}

impl Drop for MayTransport {
    fn drop(&mut self) {
        // Runs before the stream field closes the file descriptor, so a concurrent cancel()
        // can never shut down a descriptor number that the kernel has already reused.
        self.socket.mark_closed();
    }
}

impl fmt::Debug for MayTransport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("MayTransport")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// The part of a connection that `CallControl::cancel()` and ureq's `Agent::shutdown()` may
/// touch from another coroutine or thread: the raw descriptor, guarded so that it is only
/// shut down while the transport still owns it open.
#[derive(Debug)]
pub(crate) struct SharedSocket {
    fd: RawFd,
    state: Mutex<SocketState>,
}

#[derive(Debug)]
struct SocketState {
    open: bool,
    /// The id of the `CallControl` whose call is using the socket, or `NO_OWNER`.
    owner: u64,
}

impl SharedSocket {
    fn new(fd: RawFd) -> SharedSocket {
        SharedSocket {
            fd,
            state: Mutex::new(SocketState {
                open: true,
                owner: NO_OWNER,
            }),
        }
    }

    pub(crate) fn set_owner(&self, owner: u64) {
        self.lock_state().owner = owner;
    }

    /// Leaves the socket without an owner and returns the one it had.
    fn take_owner(&self) -> u64 {
        std::mem::replace(&mut self.lock_state().owner, NO_OWNER)
    }

    /// Shuts the socket down if the call of control `owner` is still the one using it.
    pub(crate) fn shutdown_if_owned_by(&self, owner: u64) {
        let state = self.lock_state();
        if state.open && state.owner == owner {
            shutdown_descriptor(self.fd);
        }
    }

    fn mark_closed(&self) {
        self.lock_state().open = false;
    }

    fn lock_state(&self) -> MutexGuard<'_, SocketState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ShutdownHandle for SharedSocket {
    fn shutdown(&self) {
        let state = self.lock_state();
        if state.open {
            shutdown_descriptor(self.fd);
        }
    }
}

fn shutdown_descriptor(fd: RawFd) {
    // SAFETY: the caller holds the socket state lock and saw it open, and the transport marks
    // it closed under that lock before its stream closes the descriptor, so `fd` is ours.
    // shutdown() on a socket wakes every reader and writer blocked on it; an error means it
    // was shut down already, which is what we want.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// A non-blocking one-byte peek: an idle, healthy keep-alive connection has nothing to read.
/// EOF, an error or unexpected bytes all mean the connection must not be reused.
fn peek_says_open(fd: RawFd) -> bool {
    receive_without_waiting(fd, &mut [0u8; 1], libc::MSG_PEEK).is_none()
}

fn new_transport(
    stream: may::net::TcpStream,
    details: &ConnectionDetails,
) -> Result<MayTransport, ureq::Error> {
    let buffers = ConnectionBuffers::new(
        details.config.input_buffer_size(),
        details.config.output_buffer_size(),
    );
    let transport = MayTransport::new(stream, buffers);
    let handle: Weak<dyn ShutdownHandle> =
        Arc::downgrade(&transport.socket) as Weak<dyn ShutdownHandle>;
    (details.register_shutdown)(handle)?;
    Ok(transport)
}

/// When the connect phase of `details` ends: ureq's connect budget counts from `details.now`.
fn connect_deadline(details: &ConnectionDetails) -> Option<Instant> {
    match (details.timeout.after, details.now) {
        (UreqDuration::Exact(after), UreqInstant::Exact(started)) => started.checked_add(after),
        (UreqDuration::Exact(after), _) => Instant::now().checked_add(after),
        (UreqDuration::NotHappening, _) => None,
    }
}

/// The connect timeout of `details` less the time already spent connecting, for the
/// handshakes (SOCKS5, TLS) that follow the TCP connect within the same budget.
pub(crate) fn remaining_connect_timeout(details: &ConnectionDetails) -> NextTimeout {
    let mut timeout = details.timeout;
    if let Some(deadline) = connect_deadline(details) {
        timeout.after = UreqDuration::Exact(deadline.saturating_duration_since(Instant::now()));
    }
    timeout
}

/// Tries the addresses in order, sharing the connect budget among those left, and returns
/// the first stream that connects.
fn connect_to_any(
    addrs: &[SocketAddr],
    deadline: Option<Instant>,
) -> Result<may::net::TcpStream, ureq::Error> {
    let mut last_error: Option<(SocketAddr, io::Error)> = None;
    for (index, addr) in addrs.iter().enumerate() {
        let addresses_left = (addrs.len() - index) as u32;
        let attempt = match deadline {
            Some(deadline) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                Some((remaining / addresses_left).max(MIN_CONNECT_ATTEMPT))
            }
            None => None,
        };
        let result = match attempt {
            Some(limit) => may::net::TcpStream::connect_timeout(addr, limit),
            None => may::net::TcpStream::connect(addr),
        };
        match result {
            Ok(stream) => {
                // LLM stream events are small writes that must not wait for Nagle.
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last_error = Some((*addr, error)),
        }
    }
    match last_error {
        Some((_, error)) if error.kind() == io::ErrorKind::TimedOut => {
            Err(ureq::Error::Timeout(ureq::Timeout::Connect))
        }
        Some((addr, error)) => {
            Err(TransportFailure::Connect(format!("{addr}: {error}")).into_ureq_error())
        }
        None if addrs.is_empty() => {
            Err(TransportFailure::Connect("no address to connect to".to_string()).into_ureq_error())
        }
        None => Err(ureq::Error::Timeout(ureq::Timeout::Connect)),
    }
}

/// The SOCKS5 proxy to use for `uri`, if the agent has one and `uri` is not exempt.
fn socks_proxy_for(config: &Config, uri: &Uri) -> Result<Option<ureq::Proxy>, ureq::Error> {
    let Some(proxy) = config.proxy() else {
        return Ok(None);
    };
    match proxy.protocol() {
        ProxyProtocol::Socks5 | ProxyProtocol::Socks5h if !proxy.is_no_proxy(uri) => {
            Ok(Some(proxy.clone()))
        }
        ProxyProtocol::Socks4 | ProxyProtocol::Socks4A => Err(TransportFailure::Proxy(
            "SOCKS4 proxies are not supported, use socks5:// or socks5h://".to_string(),
        )
        .into_ureq_error()),
        _ => Ok(None),
    }
}

fn connect_through_socks(
    details: &ConnectionDetails,
    proxy: &ureq::Proxy,
    deadline: Option<Instant>,
) -> Result<MayTransport, ureq::Error> {
    let proxy_addrs = details.resolver.resolve(
        proxy.uri(),
        details.config,
        remaining_connect_timeout(details),
    )?;
    let stream = connect_to_any(&proxy_addrs, deadline).map_err(|error| match error {
        ureq::Error::Io(io_error) => {
            TransportFailure::Proxy(format!("cannot reach the SOCKS5 proxy: {io_error}"))
                .into_ureq_error()
        }
        other => other,
    })?;
    let transport = new_transport(stream, details)?;

    let target = socks_target(details)?;
    let credentials = match (proxy.username(), proxy.password()) {
        (None, None) => None,
        (username, password) => Some(SocksCredentials {
            username: username.unwrap_or_default(),
            password: password.unwrap_or_default(),
        }),
    };
    // The adapter turns the transport into Read + Write with the connect deadline, and keeps
    // the handshake on the same code path (timeouts, cancellation) as every other read.
    let mut adapter = TransportAdapter::new(transport, details.current_time.clone());
    adapter.set_timeout(remaining_connect_timeout(details));
    socks5_handshake(&mut adapter, &target, credentials.as_ref()).map_err(ureq::Error::from)?;
    Ok(adapter.into_inner())
}

/// What to ask the SOCKS5 proxy to connect to: the address ureq resolved locally for
/// `socks5://`, an IP literal as such, or else the host name for the proxy to resolve.
fn socks_target<'a>(details: &'a ConnectionDetails) -> Result<SocksTarget<'a>, ureq::Error> {
    if let Some(addr) = details.addrs.first() {
        return Ok(SocksTarget::Address(*addr));
    }
    let uri = details.uri;
    let authority = uri
        .authority()
        .ok_or_else(|| ureq::Error::BadUri("missing host".to_string()))?;
    let (bare_host, named_port) = host_and_port(authority.as_str());
    // The target is an http or https URL (`client::http_request` refuses others).
    let port = named_port.or_else(|| default_port(uri.scheme_str())).unwrap_or(80);
    Ok(match bare_host.parse::<IpAddr>() {
        Ok(ip) => SocksTarget::Address(SocketAddr::new(ip, port)),
        Err(_) => SocksTarget::Domain(bare_host, port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_read_limit_wins_and_is_named() {
        let ms = Duration::from_millis;
        assert_eq!(shortest_read_limit(None, None, None), (None, ReadLimiter::Ureq));
        assert_eq!(shortest_read_limit(Some(ms(5)), None, None), (Some(ms(5)), ReadLimiter::Ureq));
        assert_eq!(shortest_read_limit(None, Some(ms(7)), None), (Some(ms(7)), ReadLimiter::ControlRead));
        assert_eq!(shortest_read_limit(None, None, Some(ms(9))), (Some(ms(9)), ReadLimiter::ResponseHead));
        assert_eq!(shortest_read_limit(Some(ms(5)), Some(ms(3)), Some(ms(4))), (Some(ms(3)), ReadLimiter::ControlRead));
        assert_eq!(shortest_read_limit(Some(ms(5)), Some(ms(6)), Some(ms(4))), (Some(ms(4)), ReadLimiter::ResponseHead));
        assert_eq!(shortest_read_limit(Some(ms(5)), Some(ms(5)), Some(ms(5))), (Some(ms(5)), ReadLimiter::Ureq), "ureq's wins a tie");
        assert_eq!(shortest_read_limit(Some(ms(5)), None, Some(Duration::ZERO)), (Some(Duration::ZERO), ReadLimiter::ResponseHead));
    }

    #[test]
    fn each_limit_times_out_with_its_own_error() {
        let reason = ureq::Timeout::RecvBody;
        assert!(matches!(ReadLimiter::Ureq.timeout_error(reason), ureq::Error::Timeout(ureq::Timeout::RecvBody)));
        assert!(matches!(ReadLimiter::ResponseHead.timeout_error(reason), ureq::Error::Timeout(ureq::Timeout::RecvResponse)));
        assert_eq!(
            crate::upstream::error::classify_ureq_error(&ReadLimiter::ControlRead.timeout_error(reason)),
            crate::upstream::error::UpstreamError::Timeout("read".to_string())
        );
    }

    #[test]
    fn stale_owner_cannot_shut_down_the_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let socket = SharedSocket::new(client.as_raw_fd());

        socket.set_owner(7);
        socket.shutdown_if_owned_by(8);
        assert!(peek_says_open(client.as_raw_fd()));

        socket.mark_closed();
        socket.shutdown_if_owned_by(7);
        assert!(peek_says_open(client.as_raw_fd()));

        let open_socket = SharedSocket::new(client.as_raw_fd());
        open_socket.set_owner(7);
        open_socket.shutdown_if_owned_by(7);
        assert!(!peek_says_open(client.as_raw_fd()));
    }

    /// A stream between events: once its response has started and nothing more is ready, the
    /// transport gives the output back before the read waits; bytes already there are read at
    /// once and the output is kept.
    #[test]
    fn a_read_that_would_wait_for_a_started_response_releases_the_output_first() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = may::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut transport = MayTransport::new(stream, ConnectionBuffers::new(16 * 1024, 16 * 1024));
        let timeout = NextTimeout {
            after: UreqDuration::Exact(Duration::from_secs(10)),
            reason: ureq::Timeout::RecvResponse,
            ..NextTimeout::default()
        };
        let request = b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}";
        transport.buffers().output()[..request.len()].copy_from_slice(request);
        transport.transmit_output(request.len(), timeout).unwrap();
        let mut received = vec![0u8; request.len()];
        server.read_exact(&mut received).unwrap();
        assert_eq!(received, request);
        let read_and_consume = |transport: &mut MayTransport| -> Vec<u8> {
            assert!(transport.await_input(timeout).unwrap());
            let input = transport.buffers.input().to_vec();
            transport.buffers.input_consume(input.len());
            input
        };

        server.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
        assert!(read_and_consume(&mut transport).starts_with(b"HTTP/1.1 200 OK"));
        assert!(transport.buffers.output_is_idle(), "the response has started");

        server.write_all(b"5\r\nhello\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(read_and_consume(&mut transport), b"5\r\nhello\r\n");
        assert!(transport.buffers.output_is_idle(), "bytes that were ready keep the output");

        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            server.write_all(b"5\r\nworld\r\n").unwrap();
            server
        });
        assert_eq!(read_and_consume(&mut transport), b"5\r\nworld\r\n");
        assert!(!transport.buffers.output_is_idle(), "a read that had to wait gave the output back first");
        let _server = writer.join().unwrap();
    }

    #[test]
    fn peek_sees_unexpected_bytes_and_eof() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert!(peek_says_open(client.as_raw_fd()));
        server.write_all(b"x").unwrap();
        server.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!peek_says_open(client.as_raw_fd()));
        drop(server);
        let mut drained = [0u8; 1];
        (&client).read_exact(&mut drained).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!peek_says_open(client.as_raw_fd()));
    }
}
