//! A value built from the store's rows (the relay's snapshot, the price book) that several
//! threads may rebuild at once, where the rebuild that began last is the one that stays.
//!
//! Rebuilds run on different pool threads: after each admin write, on a timer and after a price
//! sync. Without an order, a rebuild that read the rows before a write could finish after the
//! one the write started and put the old rows back, until the next rebuild (for the price book,
//! the next write: requests were charged at a price the admin had already changed). So every
//! rebuild takes a ticket before it reads, and a result is only installed when no rebuild with a
//! later ticket has installed one. A later ticket was taken after the writes an earlier one was
//! taken for, so its rows include them.

use std::sync::{Arc, Mutex, RwLock};

pub struct RebuiltView<T> {
    current: RwLock<Arc<T>>,
    /// The next ticket to hand out, and the ticket of the value installed, behind one lock so
    /// the check and the install that it allows happen together.
    tickets: Mutex<Tickets>,
}

#[derive(Default)]
struct Tickets {
    next: u64,
    installed: u64,
}

/// One rebuild, from `RebuiltView::begin` (before the store is read) to `install`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildTicket(u64);

impl<T> RebuiltView<T> {
    pub fn new(initial: T) -> RebuiltView<T> {
        RebuiltView { current: RwLock::new(Arc::new(initial)), tickets: Mutex::new(Tickets { next: 1, installed: 0 }) }
    }

    /// The value in force. Readers clone the `Arc` and never wait on a rebuild.
    pub fn current(&self) -> Arc<T> {
        // The lock is only held to clone or swap an Arc, so poisoning cannot leave it half-written.
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Starts a rebuild: call before reading the rows the value is built from.
    pub fn begin(&self) -> RebuildTicket {
        let mut tickets = self.tickets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let ticket = tickets.next;
        tickets.next += 1;
        RebuildTicket(ticket)
    }

    /// Puts `value` in force unless a rebuild that began later has installed its own already.
    /// Returns whether it was installed.
    pub fn install(&self, ticket: RebuildTicket, value: T) -> bool {
        let mut tickets = self.tickets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if ticket.0 < tickets.installed {
            return false;
        }
        tickets.installed = ticket.0;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(value);
        true
    }
}

impl<T: Default> Default for RebuiltView<T> {
    fn default() -> RebuiltView<T> {
        RebuiltView::new(T::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_that_read_earlier_but_finished_last_does_not_put_old_rows_back() {
        let view = RebuiltView::new("start");
        let stale_reader = view.begin();
        let fresh_reader = view.begin();
        assert!(view.install(fresh_reader, "after the write"));
        assert!(!view.install(stale_reader, "before the write"));
        assert_eq!(*view.current(), "after the write");
    }

    #[test]
    fn rebuilds_finishing_in_the_order_they_began_are_all_installed() {
        let view = RebuiltView::new(0);
        for value in 1..=3 {
            let ticket = view.begin();
            assert!(view.install(ticket, value));
            assert_eq!(*view.current(), value);
        }
    }

    #[test]
    fn the_initial_value_is_in_force_until_the_first_install() {
        let view: RebuiltView<Vec<u8>> = RebuiltView::default();
        let ticket = view.begin();
        assert!(view.current().is_empty());
        assert!(view.install(ticket, vec![1]));
        assert_eq!(*view.current(), vec![1]);
    }
}
