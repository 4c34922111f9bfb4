//! The line of callers waiting for a resource on this daemon.
//!
//! Waiters are served first come, first served: only the caller at the head
//! of a resource's line tries the backend; the others wait for their turn.
//! The head is woken at once by a change through this daemon or a
//! notification from the engine ([`Waiters::wake`]), and polls for changes
//! nobody reports (expiry, engines without notifications). A [`Ticket`]
//! leaves the line when dropped, so a caller that goes away leaves nothing
//! behind. [`Waiters::close`] answers every waiter at shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The lines of all resources with waiters.
#[derive(Default)]
pub struct Waiters {
    lines: Mutex<HashMap<String, VecDeque<Entry>>>,
    next: AtomicU64,
    closed: AtomicBool,
    /// Wakes every waiter at shutdown.
    closing: Notify,
}

struct Entry {
    number: u64,
    wait_id: Option<String>,
    /// Wakes this waiter; `notify_one` keeps a permit, so a wake-up that
    /// arrives while the waiter is busy is not lost.
    notify: Arc<Notify>,
}

/// A place in a resource's line; leaving the line is dropping it.
pub struct Ticket<'a> {
    waiters: &'a Waiters,
    resource: String,
    number: u64,
    notify: Arc<Notify>,
}

/// What woke a waiter.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Something may have changed: look again.
    Changed,
    /// The daemon is shutting down.
    Closed,
}

impl Waiters {
    fn lines(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Entry>>> {
        // Every critical section leaves the map consistent, so a panic in
        // another thread cannot have broken it.
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the end of `resource`'s line. `wait_id` names the caller for
    /// [`Waiters::position`].
    pub fn enqueue(&self, resource: &str, wait_id: Option<&str>) -> Ticket<'_> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.lines()
            .entry(resource.to_string())
            .or_default()
            .push_back(Entry {
                number,
                wait_id: wait_id.map(str::to_string),
                notify: notify.clone(),
            });
        Ticket {
            waiters: self,
            resource: resource.to_string(),
            number,
            notify,
        }
    }

    /// Wakes the caller at the head of `resource`'s line, if any.
    pub fn wake(&self, resource: &str) {
        if let Some(head) = self.lines().get(resource).and_then(|line| line.front()) {
            head.notify.notify_one();
        }
    }

    /// How many callers wait for `resource`, and the 1-based place of the
    /// one named `wait_id` (0 when it is not waiting).
    pub fn position(&self, resource: &str, wait_id: &str) -> (usize, usize) {
        let lines = self.lines();
        let Some(line) = lines.get(resource) else {
            return (0, 0);
        };
        let place = line
            .iter()
            .position(|e| !wait_id.is_empty() && e.wait_id.as_deref() == Some(wait_id))
            .map_or(0, |i| i + 1);
        (line.len(), place)
    }

    /// Number of callers waiting, over all resources.
    pub fn waiting(&self) -> usize {
        self.lines().values().map(VecDeque::len).sum()
    }

    /// Answers every waiter, present and future, with [`Wake::Closed`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
    }

    /// Whether [`Waiters::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Ticket<'_> {
    /// Whether this ticket is at the head of its line.
    pub fn is_head(&self) -> bool {
        self.waiters
            .lines()
            .get(&self.resource)
            .and_then(|line| line.front())
            .is_some_and(|e| e.number == self.number)
    }

    /// Waits until woken or closed. A wake-up delivered since the last call
    /// returns at once.
    pub async fn woken(&self) -> Wake {
        let closing = self.waiters.closing.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        if self.waiters.is_closed() {
            return Wake::Closed;
        }
        tokio::select! {
            _ = self.notify.notified() => {
                if self.waiters.is_closed() { Wake::Closed } else { Wake::Changed }
            }
            _ = closing => Wake::Closed,
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut lines = self.waiters.lines();
        let Some(line) = lines.get_mut(&self.resource) else {
            return;
        };
        let was_head = line.front().is_some_and(|e| e.number == self.number);
        line.retain(|e| e.number != self.number);
        match line.front() {
            None => {
                lines.remove(&self.resource);
            }
            // The next in line takes over at once.
            Some(next) if was_head => next.notify.notify_one(),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_come_first_served_and_leaving_promotes_the_next() {
        let waiters = Waiters::default();
        let a = waiters.enqueue("r", Some("a"));
        let b = waiters.enqueue("r", Some("b"));
        let c = waiters.enqueue("r", None);
        assert!(a.is_head() && !b.is_head() && !c.is_head());
        assert_eq!(waiters.position("r", "b"), (3, 2));
        assert_eq!(waiters.position("r", "zz"), (3, 0));
        assert_eq!(waiters.position("other", "a"), (0, 0));
        drop(b);
        assert_eq!(waiters.position("r", "a"), (2, 1));
        drop(a);
        assert!(c.is_head());
        assert_eq!(waiters.waiting(), 1);
        drop(c);
        assert_eq!(waiters.waiting(), 0);
        assert!(waiters.lines().is_empty(), "empty lines are removed");
    }

    #[tokio::test]
    async fn a_wake_up_is_kept_until_the_head_looks() {
        let waiters = Waiters::default();
        let a = waiters.enqueue("r", None);
        let b = waiters.enqueue("r", None);
        waiters.wake("r");
        tokio::time::timeout(Duration::from_secs(5), a.woken())
            .await
            .map(|w| assert_eq!(w, Wake::Changed))
            .unwrap_or_else(|_| panic!("the head was not woken"));
        // Only the head is woken.
        let second = tokio::time::timeout(Duration::from_millis(50), b.woken()).await;
        assert!(second.is_err(), "a waiter behind the head was woken");
        // The head leaving wakes the next one.
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), b.woken())
            .await
            .unwrap_or_else(|_| panic!("the new head was not woken"));
    }

    #[tokio::test]
    async fn close_answers_every_waiter() {
        let waiters = Waiters::default();
        let a = waiters.enqueue("r", None);
        let b = waiters.enqueue("s", None);
        let (wa, wb, ()) = tokio::join!(a.woken(), b.woken(), async { waiters.close() });
        assert_eq!((wa, wb), (Wake::Closed, Wake::Closed));
        let late = waiters.enqueue("t", None);
        assert_eq!(late.woken().await, Wake::Closed);
    }
}
