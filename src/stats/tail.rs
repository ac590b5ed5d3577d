//! The live tail of request logs (`GET /api/v1/logs/tail`): every new log, as JSON, to every
//! listener.
//!
//! Listeners are coroutines waiting on may channels; the writer thread publishes without ever
//! blocking (a listener that stopped reading is dropped).

use std::sync::{Arc, Mutex};

use crate::stats::log_view::log_item;
use crate::store::entities::LogRow;

/// A listener falls this many logs behind before it is cut off.
const LISTENER_BACKLOG: usize = 1_000;

struct Listener {
    sender: may::sync::mpsc::Sender<Arc<str>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Default)]
pub struct Tail {
    listeners: Mutex<Vec<Listener>>,
}

/// What a listener reads from.
pub struct TailReceiver {
    pub receiver: may::sync::mpsc::Receiver<Arc<str>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl TailReceiver {
    /// Marks one received item as consumed.
    pub fn consumed(&self) {
        self.queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Tail {
    pub fn subscribe(&self) -> TailReceiver {
        let (sender, receiver) = may::sync::mpsc::channel();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        self.lock().push(Listener { sender, queued: queued.clone() });
        TailReceiver { receiver, queued }
    }

    /// Sends the log to every listener that is still there and keeping up. The row is read back
    /// into a log only when someone listens: almost always nobody does.
    pub fn publish(&self, row: &LogRow) {
        let mut listeners = self.lock();
        if listeners.is_empty() {
            return;
        }
        let log = match row.clone().into_log() {
            Ok(log) => log,
            Err(error) => {
                log::error!("live tail: {error}");
                return;
            }
        };
        let json: Arc<str> = Arc::from(log_item(&log).to_string());
        listeners.retain(|listener| {
            if listener.queued.load(std::sync::atomic::Ordering::Relaxed) >= LISTENER_BACKLOG {
                return false;
            }
            listener.queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            listener.sender.send(json.clone()).is_ok()
        });
    }

    pub fn listener_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Listener>> {
        self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
