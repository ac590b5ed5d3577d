//! Admission control: the cap on open connections, evicting connections that only wait for a
//! request head, shedding with a short 503, and the budget of request-body bytes held at once.
//!
//! A connection that waits for a request head costs us a descriptor and nothing else, and a
//! client can open thousands of them (slowloris). So when the cap is reached, a new connection
//! takes the slot of the connection that has waited longest for its next head, rather than being
//! turned away: a well-behaved client sends its head at once and is never the longest waiter.
//! Only when every open connection is busy (reading a body or running a request) is a new one
//! shed with `503` and `Retry-After`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use may::net::TcpStream;

use crate::may_io::SteadyTcpStream;

/// How many shed connections may be answered at once; more are closed without an answer, so
/// shedding itself cannot use up descriptors or coroutines.
pub(crate) const MAX_CONNECTIONS_BEING_SHED: usize = 64;
/// How far evicted connections that have not closed yet may take the open count past the cap
/// before the accept loop waits for them (see `wait_for_evicted`).
pub(crate) const MAX_EVICTED_NOT_YET_CLOSED: usize = 64;
/// The longest the accept loop waits for evicted connections to close.
const EVICTION_WAIT_LIMIT: Duration = Duration::from_millis(200);
/// How long a shed connection is kept to let the client read its 503 before we close.
const SHED_LINGER: Duration = Duration::from_millis(500);
/// What a shed connection is told: a short 503 the client can act on, in OpenAI's error shape,
/// since the request is never read and nothing says which protocol the client speaks (the
/// gateway's own 503s take the same shape on OpenAI paths). A test checks that the declared
/// length is the body's: a client reads exactly that many bytes, and one too many made strict
/// clients report a connection closed inside the body instead of the 503.
const SHED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 125\r\n\r\n{\"error\":{\"message\":\"the gateway is at its connection limit; retry\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}\n";

/// The open connections of one listener and the ones among them waiting for a request head.
pub(crate) struct ConnectionTable {
    max_connections: usize,
    open: AtomicUsize,
    being_shed: AtomicUsize,
    /// Connections waiting for (the rest of) a request head, by ticket: tickets grow, so the
    /// first entry is the connection that has waited longest.
    waiting_for_head: Mutex<BTreeMap<u64, RawFd>>,
    next_ticket: AtomicU64,
    /// Totals since start, for the log and for tests.
    pub(crate) evicted_total: AtomicU64,
    pub(crate) shed_total: AtomicU64,
}

/// What the accept loop does with a new connection.
pub(crate) enum Admission {
    /// Serve it; the slot is given back when the value is dropped. The connection counts as
    /// waiting for its first head from the moment it is admitted, so that a burst of new
    /// connections can evict each other before their coroutines have even run.
    Serve(ConnectionSlot, WaitingForHead),
    /// Answer 503 and close (the connection counts against `being_shed` until the guard drops).
    Shed(ShedSlot),
    /// Too many connections are being shed already: close at once.
    Close,
}

impl ConnectionTable {
    pub(crate) fn new(max_connections: usize) -> ConnectionTable {
        ConnectionTable {
            max_connections: max_connections.max(1),
            open: AtomicUsize::new(0),
            being_shed: AtomicUsize::new(0),
            waiting_for_head: Mutex::new(BTreeMap::new()),
            next_ticket: AtomicU64::new(0),
            evicted_total: AtomicU64::new(0),
            shed_total: AtomicU64::new(0),
        }
    }

    /// Decides about a connection just accepted. Only the accept loop calls this, so the count
    /// cannot be raced past the cap by another admission.
    /// `fd` is the new connection's socket.
    pub(crate) fn admit(self: &Arc<Self>, fd: RawFd) -> Admission {
        let open = self.open.load(Ordering::Acquire);
        if open < self.max_connections || self.evict_longest_waiting() {
            // After an eviction the count is one over the cap until the evicted connection's
            // coroutine wakes up and ends, which it does at once.
            self.open.fetch_add(1, Ordering::AcqRel);
            return Admission::Serve(ConnectionSlot { table: Arc::clone(self) }, self.wait_for_head(fd));
        }
        self.shed_total.fetch_add(1, Ordering::Relaxed);
        if self.being_shed.fetch_add(1, Ordering::AcqRel) < MAX_CONNECTIONS_BEING_SHED {
            Admission::Shed(ShedSlot { table: Arc::clone(self) })
        } else {
            self.being_shed.fetch_sub(1, Ordering::AcqRel);
            Admission::Close
        }
    }

    /// Shuts down the socket of the connection that has waited longest for a request head; its
    /// coroutine then reads end-of-file and ends. False when no connection is waiting.
    fn evict_longest_waiting(&self) -> bool {
        let mut waiting = lock(&self.waiting_for_head);
        let Some((_, fd)) = waiting.pop_first() else {
            return false;
        };
        // SAFETY: a connection removes its entry under this lock before its socket is closed, so
        // `fd` is still that connection's open socket; shutdown() only wakes its pending read.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        self.evicted_total.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Lets evicted connections close before more are accepted: a burst of connections would
    /// otherwise be accepted faster than the evicted ones' coroutines run, and every one of them
    /// holds a descriptor until it does. Called by the accept loop after each admission.
    pub(crate) fn wait_for_evicted(&self) {
        if self.open.load(Ordering::Acquire) <= self.max_connections {
            return;
        }
        may::coroutine::yield_now();
        let deadline = Instant::now() + EVICTION_WAIT_LIMIT;
        while self.open.load(Ordering::Acquire) > self.max_connections + MAX_EVICTED_NOT_YET_CLOSED && Instant::now() < deadline {
            may::coroutine::sleep(Duration::from_millis(1));
        }
    }

    /// Marks the connection on `fd` as waiting for a request head until the guard is dropped.
    pub(crate) fn wait_for_head(self: &Arc<Self>, fd: RawFd) -> WaitingForHead {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        lock(&self.waiting_for_head).insert(ticket, fd);
        WaitingForHead { table: Arc::clone(self), ticket }
    }

    /// Connections open now (served ones, not the ones being shed).
    pub(crate) fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map stays consistent even if a holder panicked: every critical section is one call.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One open connection's place under the cap.
pub(crate) struct ConnectionSlot {
    table: Arc<ConnectionTable>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.table.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection being answered with 503.
pub(crate) struct ShedSlot {
    table: Arc<ConnectionTable>,
}

impl Drop for ShedSlot {
    fn drop(&mut self) {
        self.table.being_shed.fetch_sub(1, Ordering::AcqRel);
    }
}

/// While this lives, the connection may be evicted to make room for a new one. It must be
/// dropped before the connection's socket is closed.
pub(crate) struct WaitingForHead {
    table: Arc<ConnectionTable>,
    ticket: u64,
}

impl Drop for WaitingForHead {
    fn drop(&mut self) {
        lock(&self.table.waiting_for_head).remove(&self.ticket);
    }
}

/// Answers a connection over the cap with a 503 and closes it after a short linger (on its own
/// coroutine, so the accept loop never waits for a client).
pub(crate) fn shed_connection(stream: TcpStream, slot: ShedSlot) {
    let _slot = slot;
    let mut stream = SteadyTcpStream(stream);
    if stream.set_write_timeout(Some(SHED_LINGER)).is_err() || stream.write_all(SHED_RESPONSE).is_err() {
        return;
    }
    write_off_and_linger(&mut stream);
}

/// Writes the 503 to a connection accepted with the spare descriptor, without parking: the
/// send buffer of a fresh socket has room for it, and there is no descriptor left to linger with.
pub(crate) fn shed_without_waiting(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is the open socket owned by `stream`; MSG_DONTWAIT never blocks.
    unsafe {
        libc::send(stream.as_raw_fd(), SHED_RESPONSE.as_ptr().cast(), SHED_RESPONSE.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
}

/// Closes our side and reads what the client still sends for a moment, so that closing with
/// unread input does not reset the connection before the client has read the 503.
fn write_off_and_linger(stream: &mut SteadyTcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + SHED_LINGER;
    let mut scratch = [0u8; 4096];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return;
        }
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The request-body bytes all connections of a listener may hold at once: a body is counted
/// from before it is read until its response has been written.
pub(crate) struct BodyBudget {
    max_bytes: usize,
    reserved: AtomicUsize,
}

impl BodyBudget {
    pub(crate) fn new(max_bytes: usize) -> BodyBudget {
        BodyBudget { max_bytes, reserved: AtomicUsize::new(0) }
    }

    /// An empty reservation, grown as a body arrives.
    pub(crate) fn empty_reservation(&self) -> BodyReservation<'_> {
        BodyReservation { budget: self, bytes: 0 }
    }

    fn take(&self, bytes: usize) -> bool {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                reserved.checked_add(bytes).filter(|total| *total <= self.max_bytes)
            })
            .is_ok()
    }
}

/// Bytes of a `BodyBudget` held by one request; given back when dropped.
pub(crate) struct BodyReservation<'budget> {
    budget: &'budget BodyBudget,
    bytes: usize,
}

impl BodyReservation<'_> {
    /// Grows the reservation to `total` bytes; false (nothing changed) when the budget is spent.
    pub(crate) fn grow_to(&mut self, total: usize) -> bool {
        if total <= self.bytes {
            return true;
        }
        if !self.budget.take(total - self.bytes) {
            return false;
        }
        self.bytes = total;
        true
    }
}

impl Drop for BodyReservation<'_> {
    fn drop(&mut self) {
        self.budget.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shed_response_declares_its_body_length_and_carries_an_openai_error() {
        let text = std::str::from_utf8(SHED_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .expect("a Content-Length header")
            .parse()
            .unwrap();
        assert_eq!(declared, body.len(), "{text}");
        let error: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(error["error"]["code"], "overloaded");
        assert!(error["error"]["message"].as_str().unwrap().contains("connection limit"));
    }

    #[test]
    fn the_body_budget_refuses_what_would_pass_its_limit_and_gets_bytes_back() {
        let budget = BodyBudget::new(100);
        let mut first = budget.empty_reservation();
        assert!(first.grow_to(60));
        let mut second = budget.empty_reservation();
        assert!(!second.grow_to(41));
        assert!(second.grow_to(40));
        drop(first);
        assert!(second.grow_to(100));
        drop(second);
        assert_eq!(budget.reserved.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_full_table_evicts_the_longest_waiting_connection_and_sheds_when_none_waits() {
        let table = Arc::new(ConnectionTable::new(2));
        // Admitted connections wait for their first head until they are being served.
        let Admission::Serve(_first, first_waiting) = table.admit(-1) else { panic!("first connection not served") };
        let Admission::Serve(_second, second_waiting) = table.admit(-1) else { panic!("second connection not served") };
        drop((first_waiting, second_waiting));
        // Nobody waits for a head: the third is shed.
        assert!(matches!(table.admit(-1), Admission::Shed(_)));
        // A socket pair stands in for a connection waiting for its head.
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair() writes.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }, 0);
        let waiting = table.wait_for_head(fds[0]);
        let Admission::Serve(_third, _third_waiting) = table.admit(-1) else { panic!("third connection not served after eviction") };
        assert_eq!(table.evicted_total.load(Ordering::Relaxed), 1);
        // The evicted socket reads end-of-file.
        let mut byte = [0u8; 1];
        // SAFETY: fds[0] is open; recv with MSG_DONTWAIT does not block.
        assert_eq!(unsafe { libc::recv(fds[0], byte.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) }, 0);
        drop(waiting);
        // SAFETY: both descriptors are ours and closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
