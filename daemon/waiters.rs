//! The line of callers waiting for a resource on this daemon.
//!
//! Waiters are served first come, first served: only the caller at the head
//! of a resource's line tries the backend; the others wait for their turn.
//! The head is woken at once by a change through this daemon or a
//! notification from the engine ([`Waiters::wake`]), and polls for changes
//! nobody reports (expiry, engines without notifications). A [`Ticket`]
//! leaves the line when dropped, so a caller that goes away leaves nothing
//! behind. [`Waiters::close`] answers every waiter at shutdown.
//!
//! What one caller can make the lines hold is bounded (`[limits]`: waiters
//! per resource and per principal), and every operation but
//! [`Waiters::position`] costs O(log n) under the one lock: a line is
//! ordered by ticket number, so joining, leaving from anywhere in it and
//! finding its head never walk it, and a crowd of callers that give up
//! cannot stall the lines of other resources. `position` walks one line,
//! which the per-resource limit keeps short.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::limits::{Exceeded, Limit, Limits};

/// The lines of all resources with waiters.
#[derive(Default)]
pub struct Waiters {
    state: Mutex<State>,
    limits: Limits,
    next: AtomicU64,
    closed: AtomicBool,
    /// Wakes every waiter at shutdown.
    closing: Notify,
}

#[derive(Default)]
struct State {
    /// Each resource's line by ticket number: numbers only grow, so the
    /// first entry is the head and the order is the order of arrival.
    lines: HashMap<String, BTreeMap<u64, Entry>>,
    /// Waiting calls per principal.
    principals: HashMap<String, usize>,
    /// Waiting calls in all.
    waiting: usize,
}

struct Entry {
    wait_id: Option<String>,
    /// Wakes this waiter; `notify_one` keeps a permit, so a wake-up that
    /// arrives while the waiter is busy is not lost.
    notify: Arc<Notify>,
}

/// A place in a resource's line; leaving the line is dropping it.
pub struct Ticket<'a> {
    waiters: &'a Waiters,
    resource: String,
    principal: String,
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
    /// Lines bounded by `limits` (waiters per resource and per principal).
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a panic in
        // another thread cannot have broken it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the end of `resource`'s line for `principal`, unless the line
    /// or the principal's waiting calls are at their limit. `wait_id` names
    /// the caller for [`Waiters::position`].
    pub fn enqueue(
        &self,
        resource: &str,
        principal: &str,
        wait_id: Option<&str>,
    ) -> Result<Ticket<'_>, Exceeded> {
        let mut state = self.state();
        let limits = &self.limits;
        if state.lines.get(resource).map_or(0, BTreeMap::len) >= limits.max_waiters_per_resource {
            return Err(Exceeded {
                limit: Limit::WaitersPerResource,
                value: limits.max_waiters_per_resource,
                subject: resource.to_string(),
            });
        }
        if state.principals.get(principal).copied().unwrap_or(0) >= limits.max_waiters_per_principal
        {
            return Err(Exceeded {
                limit: Limit::WaitersPerPrincipal,
                value: limits.max_waiters_per_principal,
                subject: principal.to_string(),
            });
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        state.lines.entry(resource.to_string()).or_default().insert(
            number,
            Entry {
                wait_id: wait_id.map(str::to_string),
                notify: notify.clone(),
            },
        );
        *state.principals.entry(principal.to_string()).or_default() += 1;
        state.waiting += 1;
        Ok(Ticket {
            waiters: self,
            resource: resource.to_string(),
            principal: principal.to_string(),
            number,
            notify,
        })
    }

    /// Wakes the caller at the head of `resource`'s line, if any.
    pub fn wake(&self, resource: &str) {
        if let Some((_, head)) = self
            .state()
            .lines
            .get(resource)
            .and_then(BTreeMap::first_key_value)
        {
            head.notify.notify_one();
        }
    }

    /// How many callers wait for `resource`, and the 1-based place of the
    /// one named `wait_id` (0 when it is not waiting).
    pub fn position(&self, resource: &str, wait_id: &str) -> (usize, usize) {
        let state = self.state();
        let Some(line) = state.lines.get(resource) else {
            return (0, 0);
        };
        let place = line
            .values()
            .position(|e| !wait_id.is_empty() && e.wait_id.as_deref() == Some(wait_id))
            .map_or(0, |i| i + 1);
        (line.len(), place)
    }

    /// Number of callers waiting, over all resources.
    pub fn waiting(&self) -> usize {
        self.state().waiting
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
            .state()
            .lines
            .get(&self.resource)
            .and_then(BTreeMap::first_key_value)
            .is_some_and(|(number, _)| *number == self.number)
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
        let mut state = self.waiters.state();
        let State {
            lines,
            principals,
            waiting,
        } = &mut *state;
        if let Some(line) = lines.get_mut(&self.resource) {
            let was_head = line
                .first_key_value()
                .is_some_and(|(number, _)| *number == self.number);
            if line.remove(&self.number).is_some() {
                *waiting = waiting.saturating_sub(1);
            }
            match line.first_key_value() {
                None => {
                    lines.remove(&self.resource);
                }
                // The next in line takes over at once.
                Some((_, next)) if was_head => next.notify.notify_one(),
                Some(_) => {}
            }
        }
        if let Some(count) = principals.get_mut(&self.principal) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                principals.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Limits no test here reaches unless it means to.
    fn roomy() -> Waiters {
        Waiters::new(Limits {
            max_waiters_per_resource: 1_000_000,
            max_waiters_per_principal: 1_000_000,
            max_watches_per_principal: 1,
        })
    }

    fn enqueue<'a>(waiters: &'a Waiters, resource: &str, wait_id: Option<&str>) -> Ticket<'a> {
        waiters
            .enqueue(resource, "p", wait_id)
            .unwrap_or_else(|e| panic!("refused: {e}"))
    }

    #[test]
    fn first_come_first_served_and_leaving_promotes_the_next() {
        let waiters = roomy();
        let a = enqueue(&waiters, "r", Some("a"));
        let b = enqueue(&waiters, "r", Some("b"));
        let c = enqueue(&waiters, "r", None);
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
        let state = waiters.state();
        assert!(state.lines.is_empty(), "empty lines are removed");
        assert!(
            state.principals.is_empty(),
            "principals without waiters are forgotten"
        );
    }

    #[test]
    fn lines_and_principals_are_bounded() {
        let waiters = Waiters::new(Limits {
            max_waiters_per_resource: 2,
            max_waiters_per_principal: 3,
            max_watches_per_principal: 1,
        });
        let a = waiters.enqueue("r", "alice", Some("a")).expect("first");
        let b = waiters.enqueue("r", "bob", Some("b")).expect("second");
        // The line of "r" is full, whoever asks.
        let full = waiters.enqueue("r", "carol", Some("c")).err();
        assert_eq!(
            full,
            Some(Exceeded {
                limit: Limit::WaitersPerResource,
                value: 2,
                subject: "r".to_string(),
            })
        );
        assert_eq!(
            waiters.position("r", "c"),
            (2, 0),
            "a refusal leaves no trace"
        );
        // Alice waits for two more resources, then reaches her own limit.
        let s = waiters.enqueue("s", "alice", None).expect("alice's second");
        let t = waiters.enqueue("t", "alice", None).expect("alice's third");
        let over = waiters.enqueue("u", "alice", None).err();
        assert_eq!(
            over.map(|e| (e.limit, e.value, e.subject)),
            Some((Limit::WaitersPerPrincipal, 3, "alice".to_string()))
        );
        // Others are not affected by Alice's limit.
        let u = waiters.enqueue("u", "bob", None).expect("bob");
        assert_eq!(waiters.waiting(), 5);
        // Leaving frees a place, in the line and for the principal.
        drop(a);
        assert!(b.is_head());
        let c = waiters
            .enqueue("r", "carol", Some("c"))
            .expect("room again");
        assert_eq!(waiters.position("r", "c"), (2, 2));
        drop(s);
        let again = waiters.enqueue("v", "alice", None).expect("alice again");
        drop((b, c, t, u, again));
        assert_eq!(waiters.waiting(), 0);
        assert!(waiters.state().principals.is_empty());
    }

    /// 100,000 callers join a line and give up, each leaving from the
    /// middle of it: that completes, leaves the callers who stay in order
    /// with the right places and the head woken as before, and another
    /// resource's waiter is served meanwhile.
    #[test]
    fn a_hundred_thousand_cancelled_waits() {
        const CANCELLED: usize = 100_000;
        const EVERY: usize = 10_000;
        /// Only stops a stuck test: nothing here is expected to take long.
        const GUARD: Duration = Duration::from_secs(60);
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}"))
        };
        let waiters = Arc::new(roomy());
        let (in_line_tx, in_line) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        // Tickets borrow their lines, so the crowd lives in its own thread.
        let crowd = std::thread::spawn({
            let waiters = waiters.clone();
            move || {
                // The line of "r": one who stays, then the crowd with one who
                // stays after every 10,000 of it.
                let mut staying = vec![enqueue(&waiters, "r", Some("stay-0"))];
                let mut crowd = Vec::with_capacity(CANCELLED);
                for i in 1..=CANCELLED {
                    crowd.push(enqueue(&waiters, "r", None));
                    if i % EVERY == 0 {
                        let id = format!("stay-{}", i / EVERY);
                        staying.push(enqueue(&waiters, "r", Some(&id)));
                    }
                }
                let _ = in_line_tx.send(waiters.position("r", "stay-10"));
                // Every other one leaves first, then the rest, oldest first.
                let mut rest = Vec::with_capacity(CANCELLED / 2);
                for (i, ticket) in crowd.into_iter().enumerate() {
                    if i % 2 == 0 {
                        rest.push(ticket);
                    }
                }
                drop(rest);
                let mut problems = Vec::new();
                for k in 0..staying.len() {
                    let place = waiters.position("r", &format!("stay-{k}"));
                    if place != (staying.len(), k + 1) {
                        problems.push(format!("stay-{k} at {place:?}"));
                    }
                }
                if !staying[0].is_head() {
                    problems.push("the head lost its place".to_string());
                }
                // The head leaves: the next who stayed is woken at once.
                let mut staying = staying.into_iter();
                drop(staying.next());
                if let Some(next) = staying.next() {
                    let woken = runtime()
                        .block_on(async { tokio::time::timeout(GUARD, next.woken()).await });
                    if !next.is_head() || woken != Ok(Wake::Changed) {
                        problems.push(format!("the next one was not promoted: {woken:?}"));
                    }
                }
                let _ = done_tx.send((problems, waiters.waiting()));
            }
        });
        let in_line = in_line
            .recv_timeout(GUARD)
            .unwrap_or_else(|e| panic!("the crowd did not join the line: {e}"));
        assert_eq!(in_line, (CANCELLED + 11, CANCELLED + 11));
        // Meanwhile, a caller waiting for another resource is served.
        let other = enqueue(&waiters, "s", Some("other"));
        assert!(other.is_head());
        assert_eq!(waiters.position("s", "other"), (1, 1));
        waiters.wake("s");
        let served = runtime().block_on(async { tokio::time::timeout(GUARD, other.woken()).await });
        assert_eq!(served, Ok(Wake::Changed));
        drop(other);
        let (problems, waiting) = done
            .recv_timeout(GUARD)
            .unwrap_or_else(|e| panic!("the cancelled waits did not complete: {e}"));
        assert!(problems.is_empty(), "{problems:?}");
        // The crowd is gone, and so are the first two who stayed.
        assert_eq!(waiting, 9);
        assert!(crowd.join().is_ok());
        assert_eq!(waiters.waiting(), 0);
    }

    #[tokio::test]
    async fn a_wake_up_is_kept_until_the_head_looks() {
        let waiters = roomy();
        let a = enqueue(&waiters, "r", None);
        let b = enqueue(&waiters, "r", None);
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
        let waiters = roomy();
        let a = enqueue(&waiters, "r", None);
        let b = enqueue(&waiters, "s", None);
        let (wa, wb, ()) = tokio::join!(a.woken(), b.woken(), async { waiters.close() });
        assert_eq!((wa, wb), (Wake::Closed, Wake::Closed));
        let late = enqueue(&waiters, "t", None);
        assert_eq!(late.woken().await, Wake::Closed);
    }
}
