//! Per-call read deadlines and cancellation for upstream calls, installed per coroutine.
//!
//! ureq's configuration knows one timeout per phase of a call, set before the call starts. The
//! relay needs more: a first-byte deadline, then a deadline for the gap between two stream
//! events, changed while the body is being read, and a way for another coroutine (the one that
//! sees the client leave) to stop a read that is blocked right now. A `CallControl` carries that
//! state. `with_call_control` installs it for the current coroutine, and our transport consults
//! it on every read and write, whichever pooled connection the call happens to use.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::upstream::transport::SharedSocket;

may::coroutine_local!(static CURRENT_CONTROL: RefCell<Option<CallControl>> = RefCell::new(None));

/// Ids start at 1: 0 marks a socket that no control owns.
static NEXT_CONTROL_ID: AtomicU64 = AtomicU64::new(1);

/// Read deadline and cancellation for the upstream calls of one relay request.
///
/// Cheap to clone; the clones share state, so one clone can be installed with
/// `with_call_control` while another is kept by a different coroutine to `cancel()`.
#[derive(Clone, Debug)]
pub struct CallControl {
    inner: Arc<ControlInner>,
}

#[derive(Debug)]
struct ControlInner {
    id: u64,
    state: Mutex<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    read_timeout: Option<Duration>,
    /// Set while a call waits for its response head (see `set_response_head_deadline`).
    response_head_deadline: Option<Instant>,
    cancelled: bool,
    /// The socket the installed call used last; `cancel()` shuts it down.
    socket: Option<Weak<SharedSocket>>,
}

impl CallControl {
    pub fn new() -> CallControl {
        CallControl {
            inner: Arc::new(ControlInner {
                id: NEXT_CONTROL_ID.fetch_add(1, Ordering::Relaxed),
                state: Mutex::new(ControlState::default()),
            }),
        }
    }

    /// Limits each following transport read: a read that gets no byte within `timeout` fails
    /// with `UpstreamError::Timeout("read")`. ureq's own deadlines still apply; the shorter wins.
    /// `None` removes the limit. A read already waiting keeps the limit it started with.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        self.lock_state().read_timeout = timeout;
    }

    /// Limits the reads of the installed call until its response head is back: a read still
    /// waiting at `deadline` fails as ureq's own response-head timeout does
    /// (`ureq::Timeout::RecvResponse`). `UpstreamClient::send` sets it for a call that asks for a
    /// response-head limit and clears it when the head is back, instead of handing ureq a
    /// per-request config: that clones the agent's whole `Config` into every request.
    pub(crate) fn set_response_head_deadline(&self, deadline: Option<Instant>) {
        self.lock_state().response_head_deadline = deadline;
    }

    /// Stops the call: shuts down the socket it is using, so a read or write blocked on it
    /// returns at once, and makes every later read or write of the installed call fail with
    /// `UpstreamError::Cancelled`. Safe to call from any coroutine or thread, more than once.
    /// A DNS lookup or TCP connect in progress is not interrupted (the connect timeout bounds
    /// them); the call fails at its first read or write after it.
    pub fn cancel(&self) {
        let socket = {
            let mut state = self.lock_state();
            state.cancelled = true;
            state.socket.take()
        };
        if let Some(socket) = socket.and_then(|weak| weak.upgrade()) {
            socket.shutdown_if_owned_by(self.inner.id);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock_state().cancelled
    }

    /// Called by the transport before each read or write: records `socket` as the one to shut
    /// down on `cancel()` and returns the read limits, or `Err(())` once cancelled.
    pub(crate) fn claim(&self, socket: &Arc<SharedSocket>) -> Result<ReadLimits, ()> {
        let mut state = self.lock_state();
        if state.cancelled {
            return Err(());
        }
        let already_recorded = state
            .socket
            .as_ref()
            .is_some_and(|recorded| std::ptr::eq(recorded.as_ptr(), Arc::as_ptr(socket)));
        if !already_recorded {
            state.socket = Some(Arc::downgrade(socket));
        }
        // The owner is set under our lock, so a concurrent cancel() either sees it or already
        // made this claim fail.
        socket.set_owner(self.inner.id);
        Ok(ReadLimits { read_timeout: state.read_timeout, response_head_deadline: state.response_head_deadline })
    }

    fn lock_state(&self) -> MutexGuard<'_, ControlState> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a control asks of the reads of its call, as the transport claims it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReadLimits {
    /// The most any one read may wait (`set_read_timeout`).
    pub read_timeout: Option<Duration>,
    /// When the response head must be back (`set_response_head_deadline`).
    pub response_head_deadline: Option<Instant>,
}

impl Default for CallControl {
    fn default() -> CallControl {
        CallControl::new()
    }
}

/// Runs `body` with `control` installed for the current coroutine (or thread, outside a
/// coroutine). Upstream IO done by `body`, including reads of a response body, obeys it.
/// The previous installation, if any, is restored afterwards, also when `body` panics.
pub fn with_call_control<T>(control: &CallControl, body: impl FnOnce() -> T) -> T {
    let previous = CURRENT_CONTROL.with(|slot| slot.replace(Some(control.clone())));
    let _restore = RestoreControl { previous };
    body()
}

/// The control installed for the current coroutine, if any.
pub(crate) fn current_call_control() -> Option<CallControl> {
    CURRENT_CONTROL.with(|slot| slot.borrow().clone())
}

struct RestoreControl {
    previous: Option<CallControl>,
}

impl Drop for RestoreControl {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT_CONTROL.with(|slot| *slot.borrow_mut() = previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installation_is_scoped_and_nests() {
        assert!(current_call_control().is_none());
        let outer = CallControl::new();
        let inner = CallControl::new();
        with_call_control(&outer, || {
            assert_eq!(current_call_control().unwrap().inner.id, outer.inner.id);
            with_call_control(&inner, || {
                assert_eq!(current_call_control().unwrap().inner.id, inner.inner.id);
            });
            assert_eq!(current_call_control().unwrap().inner.id, outer.inner.id);
        });
        assert!(current_call_control().is_none());
    }

    #[test]
    fn installation_is_restored_after_a_panic() {
        let control = CallControl::new();
        let result = std::panic::catch_unwind(|| with_call_control(&control, || panic!("boom")));
        assert!(result.is_err());
        assert!(current_call_control().is_none());
    }

    #[test]
    fn clones_share_cancellation_and_timeout() {
        let control = CallControl::new();
        let clone = control.clone();
        clone.set_read_timeout(Some(Duration::from_millis(5)));
        assert_eq!(
            control.lock_state().read_timeout,
            Some(Duration::from_millis(5))
        );
        assert!(!control.is_cancelled());
        clone.cancel();
        clone.cancel();
        assert!(control.is_cancelled());
    }
}
