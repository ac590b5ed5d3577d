//! Noticing clients that hang up while their request waits on an upstream, and cancelling the
//! upstream call at once so no work continues for nobody (Octopus kept retrying after the client
//! had left: #338).
//!
//! One watcher thread polls every registered request's socket a few times a second with a
//! non-blocking peek. Registering and deregistering are a map insert and remove, so a request
//! that finishes quickly costs almost nothing (no coroutine or timer per request). With nothing
//! to watch for a second, the thread sleeps until the next registration wakes it: an idle
//! gateway's watcher does not wake five times a second for nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use foldhash::HashMap;

use crate::http::ClientProbe;
use crate::upstream::control::CallControl;

/// How often the watcher looks at every waiting client.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Polls in a row with nothing to watch after which the watcher sleeps until a registration.
/// Five (a second) so that light traffic keeps it awake and registering seldom has to wake it.
const EMPTY_POLLS_BEFORE_SLEEPING: u32 = 5;

/// The in-flight requests being watched.
#[derive(Default)]
pub struct DisconnectWatch {
    watched: Mutex<Watched>,
    next_id: AtomicU64,
    /// The watcher's thread, for `register` to wake it.
    watcher: OnceLock<Thread>,
}

#[derive(Default)]
struct Watched {
    entries: HashMap<u64, (ClientProbe, CallControl)>,
    /// Set, under the same lock as the entries, when the watcher goes to sleep with none: so the
    /// registration that follows always sees it and wakes the watcher.
    watcher_asleep: bool,
}

/// Keeps a request registered; dropping it stops the watching.
pub struct WatchGuard {
    watch: Arc<DisconnectWatch>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.watch.lock().entries.remove(&self.id);
    }
}

impl Drop for DisconnectWatch {
    /// A sleeping watcher wakes, finds its watch gone and ends.
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.get() {
            watcher.unpark();
        }
    }
}

impl DisconnectWatch {
    /// The process-wide watch, with its thread started on first use.
    pub fn global() -> Arc<DisconnectWatch> {
        static GLOBAL: OnceLock<Arc<DisconnectWatch>> = OnceLock::new();
        GLOBAL.get_or_init(DisconnectWatch::start).clone()
    }

    /// A watch with its watcher thread running; the thread ends when the watch is dropped.
    fn start() -> Arc<DisconnectWatch> {
        let watch = Arc::new(DisconnectWatch::default());
        let polled = Arc::downgrade(&watch);
        let spawned = std::thread::Builder::new().name("disconnect-watch".to_string()).spawn(move || {
            let mut empty_polls = 0;
            loop {
                std::thread::sleep(POLL_INTERVAL);
                let Some(watch) = polled.upgrade() else { return };
                empty_polls = if watch.cancel_abandoned() == 0 { empty_polls + 1 } else { 0 };
                if empty_polls >= EMPTY_POLLS_BEFORE_SLEEPING && watch.going_to_sleep() {
                    // The watch is let go while asleep, so that dropping it can end this thread.
                    drop(watch);
                    std::thread::park();
                    let Some(watch) = polled.upgrade() else { return };
                    watch.lock().watcher_asleep = false;
                    empty_polls = 0;
                }
            }
        });
        match spawned {
            Ok(handle) => {
                let _ = watch.watcher.set(handle.thread().clone());
            }
            Err(error) => log::error!("cannot start the client disconnect watcher: {error}"),
        }
        watch
    }

    /// Watches `client` until the guard is dropped; `control` is cancelled if the client leaves.
    /// The guard must be dropped before the connection's socket is closed (it is: the relay
    /// holds it inside the handler and the stream closure).
    pub fn register(self: &Arc<DisconnectWatch>, client: ClientProbe, control: CallControl) -> WatchGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wake_watcher = {
            let mut watched = self.lock();
            watched.entries.insert(id, (client, control));
            std::mem::take(&mut watched.watcher_asleep)
        };
        if wake_watcher && let Some(watcher) = self.watcher.get() {
            watcher.unpark();
        }
        WatchGuard { watch: self.clone(), id }
    }

    /// One pass: cancels the calls of clients that have gone. Returns how many requests it
    /// looked at.
    pub fn cancel_abandoned(&self) -> usize {
        let entries: Vec<(ClientProbe, CallControl)> = self.lock().entries.values().cloned().collect();
        for (client, control) in &entries {
            if !control.is_cancelled() && client.is_closed() {
                control.cancel();
            }
        }
        entries.len()
    }

    /// Marks the watcher asleep when there is nothing to watch; says whether it did.
    fn going_to_sleep(&self) -> bool {
        let mut watched = self.lock();
        watched.watcher_asleep = watched.entries.is_empty();
        watched.watcher_asleep
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn a_closed_client_cancels_its_call_and_a_live_one_does_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut live_client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (live_server_side, _) = listener.accept().unwrap();
        let gone_client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (gone_server_side, _) = listener.accept().unwrap();
        let watch = Arc::new(DisconnectWatch::default());
        let live_control = CallControl::new();
        let gone_control = CallControl::new();
        let _live_guard = watch.register(ClientProbe::for_socket(live_server_side.as_raw_fd()), live_control.clone());
        let _gone_guard = watch.register(ClientProbe::for_socket(gone_server_side.as_raw_fd()), gone_control.clone());
        live_client.write_all(b"pipelined bytes count as alive").unwrap();
        drop(gone_client);
        std::thread::sleep(Duration::from_millis(50));
        watch.cancel_abandoned();
        assert!(gone_control.is_cancelled());
        assert!(!live_control.is_cancelled());
    }

    #[test]
    fn an_idle_watcher_sleeps_and_the_next_registration_wakes_it() {
        let watch = DisconnectWatch::start();
        let started = std::time::Instant::now();
        while !watch.lock().watcher_asleep {
            assert!(started.elapsed() < Duration::from_secs(10), "the watcher never went to sleep");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Asleep, it does not poll: a registration must wake it, or this client's going would
        // never be noticed.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let gone_client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (gone_server_side, _) = listener.accept().unwrap();
        let control = CallControl::new();
        let _guard = watch.register(ClientProbe::for_socket(gone_server_side.as_raw_fd()), control.clone());
        assert!(!watch.lock().watcher_asleep, "registering wakes the watcher");
        drop(gone_client);
        let dropped_at = std::time::Instant::now();
        while !control.is_cancelled() {
            assert!(dropped_at.elapsed() < Duration::from_secs(5), "the woken watcher never noticed the client go");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn dropping_the_guard_stops_watching() {
        let watch = Arc::new(DisconnectWatch::default());
        let guard = watch.register(ClientProbe::detached(), CallControl::new());
        assert_eq!(watch.lock().entries.len(), 1);
        drop(guard);
        assert!(watch.lock().entries.is_empty());
    }
}
