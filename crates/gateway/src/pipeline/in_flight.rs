//! Commits in flight, by ticket. The dedup window marks a pending id with the 8-byte
//! ticket of the submission that holds it (no reference-counted handle per id: cloning
//! one per event cost two contended atomic operations on the hot path); a repeat of that
//! id looks its first copy's outcome up here, under the window's shard lock, so the
//! entry is always still there (see `Ticket`).

use super::Outcome;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Outcome channels of the submissions whose commit has not ended, and whether each
/// is durable (its events are dropped if the commit fails; accepted-mode events are kept
/// and retried until stored).
#[derive(Default)]
pub(crate) struct InFlight {
    next: AtomicU64,
    open: Mutex<HashMap<u64, (Outcome, bool)>>,
}

impl InFlight {
    /// Opens a ticket for a submission whose commit outcome `rx` will carry.
    pub(crate) fn open(self: &Arc<Self>, rx: &Outcome, durable: bool) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, (rx.clone(), durable));
        Ticket { id, registry: self.clone() }
    }

    /// The outcome of ticket `id`'s commit and whether it is durable, while it is open.
    pub(crate) fn get(&self, id: u64) -> Option<(Outcome, bool)> {
        self.lock().get(&id).cloned()
    }

    /// Tickets open now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Outcome, bool)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A submission's ticket, closed when dropped. Whoever holds it drops it only after its
/// ids were settled or forgotten in the dedup window, so no id is pending under a closed
/// ticket.
pub(crate) struct Ticket {
    id: u64,
    registry: Arc<InFlight>,
}

impl Ticket {
    /// The ticket's number, the token the dedup window keeps for its pending ids.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    #[test]
    fn a_ticket_is_found_while_open_and_gone_once_dropped() {
        let reg = Arc::new(InFlight::default());
        let (tx, rx) = watch::channel(None);
        let a = reg.open(&rx, true);
        let b = reg.open(&rx, false);
        assert_ne!(a.id(), b.id());
        assert!(reg.get(a.id()).is_some_and(|(o, durable)| o.same_channel(&rx) && durable));
        assert!(reg.get(b.id()).is_some_and(|(_, durable)| !durable));
        drop(a);
        assert_eq!(reg.len(), 1);
        tx.send_replace(Some(Ok(())));
        drop(b);
        assert_eq!(reg.len(), 0);
    }
}
