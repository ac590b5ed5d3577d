//! Idle keep-alive upstream connections, kept per host for the next call, in place of ureq's
//! connection pool for agents that connect directly.
//!
//! ureq's pool keeps every idle connection in one list behind the agent's lock and, twice per
//! call, walks the whole list comparing pool keys (scheme, authority, proxy) field by field to
//! count connections per host; it also asks each connection taken out whether it is still open,
//! which for our transport is a system call, while holding that lock. With 64 calls in flight
//! that was about a tenth of the gateway's user-space CPU per request (perf, c=64) and, on more
//! than one worker thread, a contended lock. Here the idle connections of a host are a stack
//! found by one hash lookup; the lock is held only to push or pop, and the liveness check runs
//! after it is released.
//!
//! How it plugs into ureq: the agent's own pool is set to keep nothing, and `IdlePoolConnector`
//! wraps the agent's connector chain. ureq asks a connection whether it is open (`is_open`)
//! only when a call is done with it and it could be reused; `PooledTransport` remembers that
//! answer and, when ureq then drops the connection (its pool keeps none), puts the inner
//! transport on this pool's stack instead of closing it. A connection that ureq closes (an
//! error, `connection: close`, a body not read to its end) is dropped without that question and
//! closes as before.
//!
//! The newest idle connection is reused first, so a burst's extra connections stop being used
//! and age out, and the one reused is the least likely to have been closed by the server's own
//! idle timeout meanwhile.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use ureq::http::uri::Scheme;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// How many idle connections are kept, and for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdleLimits {
    pub per_host: usize,
    pub total: usize,
    pub max_age: Duration,
}

/// The idle connections of every host, newest last. Pure bookkeeping with the time passed in:
/// nothing here does IO, and transports that leave it are returned to the caller, which drops
/// (closes) them after releasing the lock.
pub(crate) struct IdleConnections<T> {
    /// By authority (`host:port`, with any user info); index 0 is `http`, 1 is `https`.
    hosts: HashMap<Box<str>, [Vec<IdleConnection<T>>; 2], RandomState>,
    total: usize,
    limits: IdleLimits,
    /// When the next sweep for connections past their age is due (hosts no longer called keep
    /// theirs until then).
    next_sweep: Instant,
}

struct IdleConnection<T> {
    transport: T,
    idle_since: Instant,
}

/// A transport taken out of the pool, and any that were found too old on the way.
pub(crate) struct Taken<T> {
    pub transport: Option<T>,
    pub expired: Vec<T>,
}

impl<T> IdleConnections<T> {
    pub(crate) fn new(limits: IdleLimits, now: Instant) -> IdleConnections<T> {
        IdleConnections { hosts: HashMap::default(), total: 0, limits, next_sweep: now + limits.max_age }
    }

    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// The newest idle connection to `authority` that is younger than the age limit. Older ones
    /// on the same stack are removed and returned in `expired`.
    pub(crate) fn take_newest(&mut self, authority: &str, https: bool, now: Instant) -> Taken<T> {
        let mut expired = self.sweep_if_due(now);
        let Some(stacks) = self.hosts.get_mut(authority) else {
            return Taken { transport: None, expired };
        };
        let stack = &mut stacks[usize::from(https)];
        let Some(newest) = stack.pop() else {
            return Taken { transport: None, expired };
        };
        self.total -= 1;
        if is_fresh(&newest, now, self.limits.max_age) {
            return Taken { transport: Some(newest.transport), expired };
        }
        // The stack is ordered by age: the newest being too old means all of them are.
        self.total -= stack.len();
        expired.push(newest.transport);
        expired.extend(stack.drain(..).map(|idle| idle.transport));
        Taken { transport: None, expired }
    }

    /// Keeps `transport` as the newest idle connection to `authority`. Returns what has to be
    /// closed: the host's oldest connection when its stack is full, the transport itself when
    /// the pool as a whole is, and whatever a due sweep found too old.
    pub(crate) fn put(&mut self, authority: &str, https: bool, transport: T, now: Instant) -> Vec<T> {
        let mut closing = self.sweep_if_due(now);
        if self.limits.per_host == 0 || self.total >= self.limits.total {
            closing.push(transport);
            return closing;
        }
        let stacks = match self.hosts.get_mut(authority) {
            Some(stacks) => stacks,
            None => self.hosts.entry(Box::from(authority)).or_insert_with(|| [Vec::new(), Vec::new()]),
        };
        let stack = &mut stacks[usize::from(https)];
        if stack.len() >= self.limits.per_host {
            closing.push(stack.remove(0).transport);
            self.total -= 1;
        }
        stack.push(IdleConnection { transport, idle_since: now });
        self.total += 1;
        closing
    }

    fn sweep_if_due(&mut self, now: Instant) -> Vec<T> {
        if now < self.next_sweep {
            return Vec::new();
        }
        self.next_sweep = now + self.limits.max_age;
        let max_age = self.limits.max_age;
        let mut expired = Vec::new();
        for stacks in self.hosts.values_mut() {
            for stack in stacks.iter_mut() {
                let fresh_from = stack.iter().position(|idle| is_fresh(idle, now, max_age)).unwrap_or(stack.len());
                expired.extend(stack.drain(..fresh_from).map(|idle| idle.transport));
            }
        }
        self.total -= expired.len();
        // A host that has nothing idle leaves the map, so hosts called once do not pile up.
        self.hosts.retain(|_, stacks| stacks.iter().any(|stack| !stack.is_empty()));
        expired
    }
}

fn is_fresh<T>(idle: &IdleConnection<T>, now: Instant, max_age: Duration) -> bool {
    now.saturating_duration_since(idle.idle_since) < max_age
}

/// The transports are boxed: the chain's transport holds its buffers' bookkeeping and the TLS
/// session inline, over a kilobyte that every push, pop and hand-over would otherwise copy.
type SharedIdle<T> = Arc<Mutex<IdleConnections<T>>>;

fn lock<T>(idle: &Mutex<IdleConnections<T>>) -> MutexGuard<'_, IdleConnections<T>> {
    // Nothing done under this lock panics (it moves values between vectors; running out of
    // memory aborts), so recovering from poisoning only keeps a future bug from failing every
    // upstream call after it.
    idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Wraps an agent's connector chain: a call to a host with an idle, still open connection gets
/// that one; otherwise the chain makes a new one. Only for agents without a proxy: ureq's
/// CONNECT proxy connector reaches the proxy through the agent's whole chain, which would ask
/// this pool for connections to the proxy itself. The connector (with its agent) holds the only
/// strong reference to the pool: dropping it closes the idle connections, and one in use closes
/// when ureq drops it, finding no pool to go back to.
pub(crate) struct IdlePoolConnector<C: Connector> {
    chain: C,
    idle: SharedIdle<Box<C::Out>>,
}

impl<C: Connector> IdlePoolConnector<C> {
    pub(crate) fn new(chain: C, limits: IdleLimits) -> IdlePoolConnector<C> {
        IdlePoolConnector { chain, idle: Arc::new(Mutex::new(IdleConnections::new(limits, Instant::now()))) }
    }
}

impl<C: Connector> fmt::Debug for IdlePoolConnector<C> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("IdlePoolConnector")
            .field("chain", &self.chain)
            .field("idle", &lock(&self.idle).len())
            .finish()
    }
}

impl<C: Connector> Connector for IdlePoolConnector<C> {
    type Out = PooledTransport<C::Out>;

    fn connect(&self, details: &ConnectionDetails, _chained: Option<()>) -> Result<Option<Self::Out>, ureq::Error> {
        let authority = details.uri.authority().map(|authority| authority.as_str()).unwrap_or_default();
        let https = details.uri.scheme() == Some(&Scheme::HTTPS);
        loop {
            let taken = lock(&self.idle).take_newest(authority, https, Instant::now());
            drop(taken.expired);
            let Some(mut transport) = taken.transport else { break };
            // The liveness check (a non-blocking peek for our transport) runs outside the lock.
            if transport.is_open() {
                return Ok(Some(self.wrap(transport, authority, https)));
            }
        }
        let fresh = self.chain.connect(details, None)?;
        Ok(fresh.map(|transport| self.wrap(Box::new(transport), authority, https)))
    }
}

impl<C: Connector> IdlePoolConnector<C> {
    fn wrap(&self, transport: Box<C::Out>, authority: &str, https: bool) -> PooledTransport<C::Out> {
        PooledTransport {
            transport: Some(transport),
            authority: Box::from(authority),
            https,
            idle: Arc::downgrade(&self.idle),
            reusable: false,
        }
    }
}

/// A connection lent to ureq for one call. When ureq has found it reusable (`is_open` on the
/// way back) and drops it, the inner transport goes back to the idle pool.
pub(crate) struct PooledTransport<T: Transport> {
    transport: Option<Box<T>>,
    authority: Box<str>,
    https: bool,
    idle: Weak<Mutex<IdleConnections<Box<T>>>>,
    reusable: bool,
}

impl<T: Transport> PooledTransport<T> {
    fn inner(&mut self) -> &mut T {
        self.transport.as_mut().expect("a pooled transport is only emptied when dropped")
    }
}

impl<T: Transport> Transport for PooledTransport<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner().buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.reusable = false;
        self.inner().transmit_output(amount, timeout)
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.reusable = false;
        self.inner().maybe_await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.reusable = false;
        self.inner().await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        // ureq asks only when a call is done with the connection and it may be reused.
        self.reusable = self.inner().is_open();
        self.reusable
    }

    fn is_tls(&self) -> bool {
        self.transport.as_ref().is_some_and(|transport| transport.is_tls())
    }
}

impl<T: Transport> Drop for PooledTransport<T> {
    fn drop(&mut self) {
        if !self.reusable {
            return;
        }
        let (Some(transport), Some(idle)) = (self.transport.take(), self.idle.upgrade()) else {
            return;
        };
        let closing = lock(&idle).put(&self.authority, self.https, transport, Instant::now());
        drop(closing);
    }
}

impl<T: Transport> fmt::Debug for PooledTransport<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("PooledTransport").field("transport", &self.transport).field("https", &self.https).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: IdleLimits = IdleLimits { per_host: 2, total: 3, max_age: Duration::from_secs(15) };

    fn pool(start: Instant) -> IdleConnections<&'static str> {
        IdleConnections::new(LIMITS, start)
    }

    #[test]
    fn the_newest_connection_of_the_host_and_scheme_is_taken_first() {
        let start = Instant::now();
        let mut idle = pool(start);
        assert!(idle.put("a:443", true, "a-old", start).is_empty());
        assert!(idle.put("a:443", true, "a-new", start + Duration::from_secs(1)).is_empty());
        assert!(idle.put("a:443", false, "a-plain", start).is_empty());
        let later = start + Duration::from_secs(2);
        assert_eq!(idle.take_newest("b:443", true, later).transport, None);
        assert_eq!(idle.take_newest("a:443", true, later).transport, Some("a-new"));
        assert_eq!(idle.take_newest("a:443", true, later).transport, Some("a-old"));
        assert_eq!(idle.take_newest("a:443", true, later).transport, None);
        assert_eq!(idle.take_newest("a:443", false, later).transport, Some("a-plain"));
        assert_eq!(idle.len(), 0);
    }

    #[test]
    fn a_full_host_closes_its_oldest_and_a_full_pool_refuses_more() {
        let start = Instant::now();
        let mut idle = pool(start);
        assert!(idle.put("a:80", false, "a1", start).is_empty());
        assert!(idle.put("a:80", false, "a2", start).is_empty());
        assert_eq!(idle.put("a:80", false, "a3", start), vec!["a1"]);
        assert!(idle.put("b:80", false, "b1", start).is_empty());
        assert_eq!(idle.len(), 3);
        assert_eq!(idle.put("c:80", false, "c1", start), vec!["c1"]);
        assert_eq!(idle.len(), 3);
        assert_eq!(idle.take_newest("a:80", false, start).transport, Some("a3"));
        assert_eq!(idle.take_newest("a:80", false, start).transport, Some("a2"));
    }

    #[test]
    fn connections_past_their_age_are_not_reused_and_leave_with_the_taker() {
        let start = Instant::now();
        let seconds = |count| start + Duration::from_secs(count);
        let mut idle = pool(start);
        // Sweeps run at 15 s and 30 s; neither finds a1 or a2 old enough.
        assert!(idle.take_newest("x:80", false, seconds(15)).expired.is_empty());
        idle.put("a:80", false, "a1", seconds(16));
        idle.put("a:80", false, "a2", seconds(17));
        assert!(idle.take_newest("x:80", false, seconds(30)).expired.is_empty());
        let taken = idle.take_newest("a:80", false, seconds(33));
        assert_eq!(taken.transport, None);
        assert_eq!(taken.expired, vec!["a2", "a1"]);
        assert_eq!(idle.len(), 0);
    }

    #[test]
    fn the_sweep_closes_old_connections_of_hosts_no_longer_called() {
        let start = Instant::now();
        let mut idle = pool(start);
        idle.put("gone:80", false, "gone", start);
        idle.put("busy:80", false, "busy-old", start);
        idle.put("busy:80", false, "busy-new", start + Duration::from_secs(10));
        // Before the sweep is due nothing is closed, even past the age.
        let early = idle.take_newest("other:80", false, start + Duration::from_secs(14));
        assert!(early.expired.is_empty());
        let swept = idle.take_newest("other:80", false, start + Duration::from_secs(16));
        assert_eq!(swept.transport, None);
        let mut expired = swept.expired;
        expired.sort();
        assert_eq!(expired, vec!["busy-old", "gone"]);
        assert_eq!(idle.len(), 1);
        assert_eq!(idle.hosts.len(), 1);
        assert_eq!(idle.take_newest("busy:80", false, start + Duration::from_secs(16)).transport, Some("busy-new"));
    }
}
