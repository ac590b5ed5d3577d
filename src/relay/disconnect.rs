//! Noticing clients that hang up while their request waits on an upstream, and cancelling the
//! upstream call at once so no work continues for nobody (Octopus kept retrying after the client
//! had left: #338).
//!
//! One watcher thread polls every registered request's socket a few times a second with a
//! non-blocking peek. Registering and deregistering are a map insert and remove, so a request
//! that finishes quickly costs almost nothing (no coroutine or timer per request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use foldhash::HashMap;

use crate::http::ClientProbe;
use crate::upstream::control::CallControl;

/// How often the watcher looks at every waiting client.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The in-flight requests being watched.
#[derive(Default)]
pub struct DisconnectWatch {
    entries: Mutex<HashMap<u64, (ClientProbe, CallControl)>>,
    next_id: AtomicU64,
}

/// Keeps a request registered; dropping it stops the watching.
pub struct WatchGuard {
    watch: Arc<DisconnectWatch>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.watch.lock().remove(&self.id);
    }
}

impl DisconnectWatch {
    /// The process-wide watch, with its thread started on first use.
    pub fn global() -> Arc<DisconnectWatch> {
        static GLOBAL: OnceLock<Arc<DisconnectWatch>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let watch = Arc::new(DisconnectWatch::default());
                let polled = Arc::downgrade(&watch);
                let spawned = std::thread::Builder::new().name("disconnect-watch".to_string()).spawn(move || loop {
                    std::thread::sleep(POLL_INTERVAL);
                    let Some(watch) = polled.upgrade() else { return };
                    watch.cancel_abandoned();
                });
                if let Err(error) = spawned {
                    log::error!("cannot start the client disconnect watcher: {error}");
                }
                watch
            })
            .clone()
    }

    /// Watches `client` until the guard is dropped; `control` is cancelled if the client leaves.
    /// The guard must be dropped before the connection's socket is closed (it is: the relay
    /// holds it inside the handler and the stream closure).
    pub fn register(self: &Arc<DisconnectWatch>, client: ClientProbe, control: CallControl) -> WatchGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, (client, control));
        WatchGuard { watch: self.clone(), id }
    }

    /// One pass: cancels the calls of clients that have gone.
    pub fn cancel_abandoned(&self) {
        let entries: Vec<(ClientProbe, CallControl)> = self.lock().values().cloned().collect();
        for (client, control) in entries {
            if !control.is_cancelled() && client.is_closed() {
                control.cancel();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (ClientProbe, CallControl)>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
    fn dropping_the_guard_stops_watching() {
        let watch = Arc::new(DisconnectWatch::default());
        let guard = watch.register(ClientProbe::detached(), CallControl::new());
        assert_eq!(watch.lock().len(), 1);
        drop(guard);
        assert!(watch.lock().is_empty());
    }
}
