//! The events of `Watch` streams, derived from what this daemon sees, with
//! one poller per backend shared by all of them.
//!
//! Every open watch subscribes to the daemon's [`Hub`]. While at least one
//! watch needs a backend (the one its resource routes to, or every backend
//! for a prefix), one task for that backend (its poller) keeps a snapshot of
//! the leases the watches select there and turns changes into events, which
//! it hands to each watch whose selection contains the resource (and whose
//! [`Filter`] lets it through). The engine is read once per change and per
//! poll whatever the number of watches: a selection that another one covers
//! (the same resource or prefix, or a longer prefix) is not read on its own.
//! A poller stops when the last watch that needs its backend goes; a slow
//! or hung engine holds up only the watches that read it.
//!
//! Changes made through this daemon are applied exactly as announced; for
//! anything else (another daemon, expiry) the poller reads a resource again
//! when the engine hints at a change, and reads every selection at the
//! earliest expiry it knows of and at least every [`POLL`], and turns the
//! difference into events. A change that comes and goes between two reads
//! of a polled engine is not seen; everything that changes the state a
//! reader can observe for longer than that is. A new watch reports what
//! changes after it started, not the state it starts from.
//!
//! Events of one resource are ordered by fence: announcements and reads can
//! arrive out of order (this daemon announces a grant after the engine
//! answered, while the engine's own hint may already have led to a read of
//! a newer lease), so an announced lease with a fence below the last one
//! seen for that resource is stale and dropped, never reported as a change
//! (it would end the newer, live lease in the stream). What the engine
//! answers to a read is the truth and always applies.
//!
//! A watch that falls behind never holds up the others: each has a queue of
//! [`QUEUE`] events, and one whose client lets it fill up is ended with
//! `UNAVAILABLE` ("fell behind"), after the events already queued, so its
//! client knows it missed some and watches again (the CLI does so).
//! A read that fails ends the watches that depend on it with the backend's
//! error (the others go on), as the daemon's shutdown ends every watch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt as _};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;

use crate::backend::{Backend, BackendError};
use crate::changes::{Changes, Signal};
use crate::error::Error;
use crate::lease::{Lease, LeaseStatus};
use crate::limits::{Exceeded, Limit};
use crate::metrics::Metrics;
use crate::routing::Router;

/// How often the selections are read even without hints.
pub const POLL: Duration = Duration::from_secs(1);
/// Expiry moves smaller than this, read from the engine, are read noise
/// (engines report expiry with up to a second of rounding), not renewals.
const RENEWAL_THRESHOLD: Duration = Duration::from_millis(1500);

/// Where a lease's state came from, for [`Poller::transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Announced by this daemon as it granted or renewed: exact.
    Exact,
    /// Read from the engine: its expiry may carry rounding noise.
    Engine,
}
/// Leases per page when reading a prefix.
const PAGE: usize = 1000;
/// Events a watch may have undelivered before it is ended for falling
/// behind.
pub const QUEUE: usize = 256;
/// Selections read at once.
const PARALLEL_READS: usize = 16;
/// The shortest time between two reads of every selection, so that a lease
/// the engine still reports past its expiry (clock skew) cannot make the
/// poller spin.
const MIN_PAUSE: Duration = Duration::from_millis(100);

/// What a watch selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selection {
    /// One resource.
    Resource(String),
    /// Every resource whose name starts with this prefix ("" = all).
    Prefix(String),
}

impl Selection {
    /// Whether `resource` is selected.
    pub fn contains(&self, resource: &str) -> bool {
        match self {
            Self::Resource(r) => r == resource,
            Self::Prefix(p) => resource.starts_with(p.as_str()),
        }
    }

    /// Whether everything `other` selects is selected by this one too.
    pub fn covers(&self, other: &Selection) -> bool {
        match (self, other) {
            (Self::Prefix(p), Self::Prefix(q) | Self::Resource(q)) => q.starts_with(p.as_str()),
            (Self::Resource(r), Self::Resource(s)) => r == s,
            (Self::Resource(_), Self::Prefix(_)) => false,
        }
    }
}

/// The fewest selections that together select everything `selections` do:
/// duplicates and selections covered by another are left out.
fn cover<'a>(selections: impl Iterator<Item = &'a Selection>) -> Vec<Selection> {
    let distinct: HashSet<&Selection> = selections.collect();
    let prefixes: HashSet<&str> = distinct
        .iter()
        .filter_map(|s| match s {
            Selection::Prefix(p) => Some(p.as_str()),
            Selection::Resource(_) => None,
        })
        .collect();
    // Covered by a prefix of it: a strictly shorter prefix for a prefix,
    // any prefix (itself included) for a resource.
    let covered = |name: &str, strictly: bool| {
        name.char_indices()
            .map(|(i, _)| &name[..i])
            .chain((!strictly).then_some(name))
            .any(|p| prefixes.contains(p))
    };
    let mut cover: Vec<Selection> = distinct
        .into_iter()
        .filter(|s| match s {
            Selection::Prefix(p) => !covered(p, true),
            Selection::Resource(r) => !covered(r, false),
        })
        .cloned()
        .collect();
    cover.sort();
    cover
}

/// What happened to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Granted.
    Acquired,
    /// Given a new expiry.
    Renewed,
    /// Released by its holder.
    Released,
    /// Lapsed.
    Expired,
    /// Broken by an administrator.
    ForceReleased,
}

/// One event of a watch.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// What happened.
    pub kind: EventKind,
    /// The lease, as it was after the event.
    pub lease: Lease,
    /// When this daemon noticed.
    pub observed_at: SystemTime,
    /// For [`EventKind::ForceReleased`]: the administrator and the reason.
    pub broken_by: Option<(String, String)>,
}

impl WatchEvent {
    fn new(kind: EventKind, lease: Lease) -> Self {
        Self {
            kind,
            lease,
            observed_at: SystemTime::now(),
            broken_by: None,
        }
    }
}

/// Which events one watch may see, beyond its selection (say, only the
/// resources its caller may read). It runs in the poller as each event is
/// handed out, before the event takes a place in the watch's queue, so it
/// must be quick and must not call into the hub.
pub type Filter = Arc<dyn Fn(&WatchEvent) -> bool + Send + Sync>;

/// The watches of one daemon and the pollers they share, one per backend.
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    router: Arc<Router>,
    changes: Arc<Changes>,
    /// `max_watches_per_principal`.
    max_per_principal: usize,
    metrics: Option<Arc<Metrics>>,
    state: Mutex<HubState>,
    /// Per backend: wakes its poller when watches come or go.
    kicks: BTreeMap<String, Notify>,
}

struct HubState {
    subscribers: HashMap<u64, Subscriber>,
    /// Open watches per principal.
    principals: HashMap<String, usize>,
    next: u64,
    /// Per backend: what its poller is doing.
    pollers: BTreeMap<String, PollerState>,
}

#[derive(Default)]
struct PollerState {
    /// Whether its task runs.
    running: bool,
    /// Watches came or went since it last looked.
    dirty: bool,
    /// What its snapshot covers: read at least once and kept up to date. A
    /// watch whose selection it covers starts on this backend at once.
    polled: Vec<Selection>,
}

struct Subscriber {
    selection: Selection,
    filter: Option<Filter>,
    events: mpsc::Sender<WatchEvent>,
    /// Why the watch ended, for its stream to report once the queued events
    /// are out.
    end: Arc<Mutex<Option<Error>>>,
    /// The backends that may hold what it selects: the one its resource
    /// routes to, or every one for a prefix.
    backends: Vec<String>,
    /// The backends whose poller has read its selection: their events are
    /// changes relative to a state the watch started from.
    started: BTreeSet<String>,
}

impl HubState {
    /// Ends watch `id` with `error`, if it is still open, and marks its
    /// backends' pollers for a look (the caller kicks them).
    fn end(&mut self, id: u64, error: Error) -> Vec<String> {
        let Some(subscriber) = self.subscribers.remove(&id) else {
            return Vec::new();
        };
        *lock(&subscriber.end) = Some(error);
        self.touch(&subscriber.backends);
        subscriber.backends
    }

    /// Marks the pollers of `backends` for a look at the watches.
    fn touch(&mut self, backends: &[String]) {
        for name in backends {
            if let Some(poller) = self.pollers.get_mut(name) {
                poller.dirty = true;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a panic in
    // another thread cannot have broken it.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn kick(&self, backends: &[String]) {
        for name in backends {
            if let Some(kick) = self.kicks.get(name) {
                kick.notify_one();
            }
        }
    }

    /// The backends that may hold what `selection` selects.
    fn backends_of(&self, selection: &Selection) -> Vec<String> {
        match selection {
            Selection::Resource(r) => vec![self.router.route(r).backend_name.clone()],
            Selection::Prefix(_) => self.router.backends().keys().cloned().collect(),
        }
    }
}

impl Hub {
    /// Watches over `router`'s backends, fed by `changes`, at most
    /// `max_per_principal` open at once per principal; their number is kept
    /// in `metrics` when given.
    pub fn new(
        router: Arc<Router>,
        changes: Arc<Changes>,
        max_per_principal: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let names = router.backends().keys();
        let kicks = names.clone().map(|n| (n.clone(), Notify::new())).collect();
        let pollers = names.map(|n| (n.clone(), PollerState::default())).collect();
        Self {
            inner: Arc::new(Inner {
                router,
                changes,
                max_per_principal,
                metrics,
                state: Mutex::new(HubState {
                    subscribers: HashMap::new(),
                    principals: HashMap::new(),
                    next: 0,
                    pollers,
                }),
                kicks,
            }),
        }
    }

    /// Starts a watch of `selection` for `principal`, whose events pass
    /// `filter` if given; refused when the principal has its most watches
    /// open or the daemon is shutting down. The watch ends when the returned
    /// stream is dropped.
    pub fn subscribe(
        &self,
        principal: &str,
        selection: Selection,
        filter: Option<Filter>,
    ) -> Result<Subscription, Error> {
        let inner = &self.inner;
        let backends = inner.backends_of(&selection);
        let mut state = lock(&inner.state);
        // Pollers to start subscribe to the signals before the closed flag
        // is looked at (it is set before the closing signal is sent): a
        // watch either sees the flag here or a poller sees the signal.
        let starting: Vec<(String, broadcast::Receiver<Signal>)> = backends
            .iter()
            .filter(|name| state.pollers.get(*name).is_some_and(|p| !p.running))
            .map(|name| (name.clone(), inner.changes.subscribe()))
            .collect();
        if inner.changes.is_closed() {
            return Err(shutting_down());
        }
        let open = state.principals.get(principal).copied().unwrap_or(0);
        if open >= inner.max_per_principal {
            drop(state);
            if let Some(metrics) = &inner.metrics {
                metrics.limit_refused(Limit::WatchesPerPrincipal);
            }
            return Err(Exceeded {
                limit: Limit::WatchesPerPrincipal,
                value: inner.max_per_principal,
                subject: principal.to_string(),
            }
            .into());
        }
        let id = state.next;
        state.next += 1;
        let (tx, rx) = mpsc::channel(QUEUE);
        let end = Arc::new(Mutex::new(None));
        let started = backends
            .iter()
            .filter(|name| {
                state
                    .pollers
                    .get(*name)
                    .is_some_and(|p| p.polled.iter().any(|s| s.covers(&selection)))
            })
            .cloned()
            .collect();
        state.subscribers.insert(
            id,
            Subscriber {
                selection,
                filter,
                events: tx,
                end: end.clone(),
                backends: backends.clone(),
                started,
            },
        );
        *state.principals.entry(principal.to_string()).or_default() += 1;
        state.touch(&backends);
        for (name, signals) in starting {
            if let Some(poller) = state.pollers.get_mut(&name) {
                poller.running = true;
            }
            if let Some(backend) = inner.router.backends().get(&name) {
                tokio::spawn(poll(inner.clone(), name, backend.clone(), signals));
            }
        }
        drop(state);
        inner.kick(&backends);
        if let Some(metrics) = &inner.metrics {
            metrics.watch_opened();
        }
        Ok(Subscription {
            events: rx,
            end,
            inner: inner.clone(),
            id,
            principal: principal.to_string(),
            finished: false,
        })
    }

    /// Open watches.
    pub fn watching(&self) -> usize {
        lock(&self.inner.state).principals.values().sum()
    }
}

/// One watch: a stream of its events, ending (after the events queued
/// before) with the error that ended it, if any. Dropping it ends the watch.
pub struct Subscription {
    events: mpsc::Receiver<WatchEvent>,
    end: Arc<Mutex<Option<Error>>>,
    inner: Arc<Inner>,
    id: u64,
    principal: String,
    finished: bool,
}

impl Stream for Subscription {
    type Item = Result<WatchEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.events.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(event))),
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(lock(&self.end).take().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        let backends = match state.subscribers.remove(&self.id) {
            Some(subscriber) => subscriber.backends,
            // Ended by a poller, which looked at the watches already.
            None => Vec::new(),
        };
        state.touch(&backends);
        if let Some(open) = state.principals.get_mut(&self.principal) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                state.principals.remove(&self.principal);
            }
        }
        drop(state);
        // Their pollers drop what nobody watches any more, or stop.
        inner.kick(&backends);
        if let Some(metrics) = &inner.metrics {
            metrics.watch_closed();
        }
    }
}

/// A poller's own state: the snapshot of what the watches select on its
/// backend.
struct Poller {
    inner: Arc<Inner>,
    /// The backend's name, and the backend.
    name: String,
    backend: Arc<dyn Backend>,
    snapshot: BTreeMap<String, Lease>,
    /// The highest fence seen per resource, to drop stale news.
    fences: BTreeMap<String, u64>,
    /// A copy of its [`PollerState::polled`], which only it changes.
    polled: Vec<Selection>,
}

/// Runs while there are watches of backend `name`: one task for all of
/// them.
async fn poll(
    inner: Arc<Inner>,
    name: String,
    backend: Arc<dyn Backend>,
    mut signals: broadcast::Receiver<Signal>,
) {
    let mut poller = Poller {
        inner,
        name,
        backend,
        snapshot: BTreeMap::new(),
        fences: BTreeMap::new(),
        polled: Vec::new(),
    };
    let mut next_poll = Instant::now() + POLL;
    let mut last_read = Instant::now();
    loop {
        if !poller.refresh().await {
            return;
        }
        // The next read of everything: the poll interval (counted from the
        // last read, whatever arrives meanwhile), or just after the earliest
        // expiry in the snapshot.
        let wake = poller
            .earliest_expiry()
            .map_or(next_poll, |at| at.min(next_poll))
            .max(last_read + MIN_PAUSE);
        let kick = poller.inner.kicks.get(&poller.name);
        let mut events = Vec::new();
        let outcome = tokio::select! {
            () = async {
                match kick {
                    Some(kick) => kick.notified().await,
                    None => std::future::pending().await,
                }
            } => Ok(()),
            signal = signals.recv() => match signal {
                Ok(Signal::Closing) | Err(broadcast::error::RecvError::Closed) => {
                    poller.stop();
                    return;
                }
                Ok(signal) => poller.apply(signal, &mut events).await,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    last_read = Instant::now();
                    next_poll = last_read + POLL;
                    poller.resync(&mut events).await
                }
            },
            () = tokio::time::sleep_until(wake) => {
                last_read = Instant::now();
                next_poll = last_read + POLL;
                poller.resync(&mut events).await
            }
        };
        poller.deliver(events);
        for (selection, error) in outcome.err().unwrap_or_default() {
            poller.fail(&selection, &error);
        }
    }
}

/// Selections whose read failed, with the error.
type Failures = Vec<(Selection, BackendError)>;

impl Poller {
    /// Takes on the watches that came and forgets what those that went
    /// selected. False when none are left: the poller stops.
    async fn refresh(&mut self) -> bool {
        let wanted = {
            let mut guard = lock(&self.inner.state);
            let state = &mut *guard;
            let Some(me) = state.pollers.get_mut(&self.name) else {
                return false;
            };
            if !me.dirty {
                return true;
            }
            me.dirty = false;
            let mine: Vec<&Selection> = state
                .subscribers
                .values()
                .filter(|s| s.backends.contains(&self.name))
                .map(|s| &s.selection)
                .collect();
            if mine.is_empty() {
                me.running = false;
                me.polled.clear();
                return false;
            }
            cover(mine.into_iter())
        };
        let new: Vec<Selection> = wanted
            .iter()
            .filter(|w| !self.polled.iter().any(|p| p.covers(w)))
            .cloned()
            .collect();
        self.polled = wanted;
        self.forget_uncovered();
        let mut events = Vec::new();
        let failures = self.read_into(&new, &mut events).await;
        let failed: Vec<&Selection> = failures.iter().map(|(s, _)| s).collect();
        self.polled.retain(|p| !failed.contains(&p));
        self.forget_uncovered();
        self.deliver(events);
        for (selection, error) in &failures {
            self.fail(selection, error);
        }
        // The new watches start from the snapshot as it is now.
        let mut guard = lock(&self.inner.state);
        let state = &mut *guard;
        if let Some(me) = state.pollers.get_mut(&self.name) {
            me.polled = self.polled.clone();
        }
        for subscriber in state.subscribers.values_mut() {
            if subscriber.backends.contains(&self.name)
                && self.polled.iter().any(|p| p.covers(&subscriber.selection))
            {
                subscriber.started.insert(self.name.clone());
            }
        }
        true
    }

    /// Drops from the snapshot what no watch selects any more.
    fn forget_uncovered(&mut self) {
        let polled = &self.polled;
        let covered = |resource: &String| polled.iter().any(|p| p.contains(resource));
        self.snapshot.retain(|resource, _| covered(resource));
        self.fences.retain(|resource, _| covered(resource));
    }

    /// Whether `resource` is watched and lives on this poller's backend.
    fn covered(&self, resource: &str) -> bool {
        self.polled.iter().any(|p| p.contains(resource))
            && self.inner.router.route(resource).backend_name == self.name
    }

    fn earliest_expiry(&self) -> Option<Instant> {
        let now = SystemTime::now();
        self.snapshot
            .values()
            .map(|l| l.expires_at.duration_since(now).unwrap_or_default())
            .min()
            .map(|d| Instant::now() + d + MIN_PAUSE)
    }

    async fn apply(
        &mut self,
        signal: Signal,
        events: &mut Vec<WatchEvent>,
    ) -> Result<(), Failures> {
        match signal {
            Signal::Changed(resource) if self.covered(&resource) => {
                self.reread(&resource, events).await?;
            }
            Signal::Acquired(lease)
                if self
                    .snapshot
                    .get(&lease.resource)
                    .is_some_and(|l| l.id == lease.id) =>
            {
                // A grant an engine read showed first (the watch started, or
                // the engine's hint was read, between the grant and its
                // announcement) was reported as acquired then: its
                // announcement is no renewal. Only the exact expiry is new.
                self.snapshot
                    .insert(lease.resource.clone(), (*lease).clone());
            }
            Signal::Acquired(lease) | Signal::Renewed(lease)
                if self.covered(&lease.resource)
                    // Stale: a newer lease of this resource was seen already.
                    && self
                        .fences
                        .get(&lease.resource)
                        .is_none_or(|&highest| lease.fence >= highest) =>
            {
                let old = self.snapshot.get(&lease.resource).cloned();
                // Announced by this daemon: exact, so every renewal counts.
                self.transition(old, Some((*lease).clone()), events, Reading::Exact)
                    .await
                    .map_err(|e| vec![(Selection::Resource(lease.resource.clone()), e)])?;
            }
            Signal::Released { resource, id } => {
                if self.snapshot.get(&*resource).is_some_and(|l| l.id == id)
                    && let Some(lease) = self.snapshot.remove(&*resource)
                {
                    events.push(WatchEvent::new(EventKind::Released, lease));
                }
            }
            Signal::ForceReleased {
                lease,
                actor,
                reason,
            } => {
                if self
                    .snapshot
                    .get(&lease.resource)
                    .is_some_and(|l| l.id == lease.id)
                    && let Some(lease) = self.snapshot.remove(&lease.resource)
                {
                    events.push(WatchEvent {
                        broken_by: Some((actor.to_string(), reason.to_string())),
                        ..WatchEvent::new(EventKind::ForceReleased, lease)
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads one resource again.
    async fn reread(
        &mut self,
        resource: &str,
        events: &mut Vec<WatchEvent>,
    ) -> Result<(), Failures> {
        let failed = |e| vec![(Selection::Resource(resource.to_string()), e)];
        let now = self.backend.current(resource).await.map_err(failed)?;
        let old = self.snapshot.get(resource).cloned();
        self.transition(old, now, events, Reading::Engine)
            .await
            .map_err(failed)
    }

    /// Reads every selection again.
    async fn resync(&mut self, events: &mut Vec<WatchEvent>) -> Result<(), Failures> {
        let polled = self.polled.clone();
        let failures = self.read_into(&polled, events).await;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    /// Reads `selections` and records how each of their resources changed
    /// since the snapshot; the selections whose read failed.
    async fn read_into(
        &mut self,
        selections: &[Selection],
        events: &mut Vec<WatchEvent>,
    ) -> Failures {
        if selections.is_empty() {
            return Vec::new();
        }
        let (router, name, backend) = (&self.inner.router, &self.name, &self.backend);
        let reads: Vec<_> = futures::stream::iter(selections.iter().cloned())
            .map(|selection| async move {
                let result = read(router, name, backend, &selection).await;
                (selection, result)
            })
            .buffered(PARALLEL_READS)
            .collect()
            .await;
        let mut failures = Vec::new();
        for (selection, result) in reads {
            let mut fresh = match result {
                Ok(fresh) => fresh,
                Err(e) => {
                    failures.push((selection, e));
                    continue;
                }
            };
            let mut resources: Vec<String> = self
                .snapshot
                .keys()
                .filter(|r| selection.contains(r))
                .cloned()
                .collect();
            resources.extend(
                fresh
                    .keys()
                    .filter(|r| !self.snapshot.contains_key(*r))
                    .cloned(),
            );
            for resource in resources {
                let old = self.snapshot.get(&resource).cloned();
                let new = fresh.remove(&resource);
                if let Err(e) = self.transition(old, new, events, Reading::Engine).await {
                    failures.push((Selection::Resource(resource), e));
                }
            }
        }
        failures
    }

    /// Records that the lease of a resource went from `old` to `new`, and
    /// the events that explain it. On an error nothing is recorded: the
    /// next read tries again.
    async fn transition(
        &mut self,
        old: Option<Lease>,
        new: Option<Lease>,
        events: &mut Vec<WatchEvent>,
        reading: Reading,
    ) -> Result<(), BackendError> {
        match (old, new) {
            (None, None) => {}
            (None, Some(new)) => {
                self.fences.insert(new.resource.clone(), new.fence);
                self.snapshot.insert(new.resource.clone(), new.clone());
                events.push(WatchEvent::new(EventKind::Acquired, new));
            }
            (Some(old), Some(new)) if old.id == new.id => {
                self.fences.insert(new.resource.clone(), new.fence);
                let moved = match new.expires_at.duration_since(old.expires_at) {
                    Ok(later) => later,
                    Err(earlier) => earlier.duration(),
                };
                if reading == Reading::Exact || moved >= RENEWAL_THRESHOLD {
                    self.snapshot.insert(new.resource.clone(), new.clone());
                    events.push(WatchEvent::new(EventKind::Renewed, new));
                } else if new.expires_at < old.expires_at {
                    // Read noise, or a renewal to a shorter TTL too small to
                    // report: keep the earlier expiry, which judges the end.
                    self.snapshot.insert(new.resource.clone(), new);
                }
            }
            (Some(old), new) => {
                let ended = self.ended(&old).await?;
                self.snapshot.remove(&old.resource);
                events.push(ended);
                if let Some(new) = new {
                    self.fences.insert(new.resource.clone(), new.fence);
                    self.snapshot.insert(new.resource.clone(), new.clone());
                    events.push(WatchEvent::new(EventKind::Acquired, new));
                }
            }
        }
        Ok(())
    }

    /// Why `lease` is gone: broken, lapsed or released.
    async fn ended(&self, lease: &Lease) -> Result<WatchEvent, BackendError> {
        if let LeaseStatus::NotCurrent {
            evicted: Some(eviction),
        } = self.backend.status(&lease.resource, &lease.id).await?
        {
            return Ok(WatchEvent {
                broken_by: Some((eviction.actor, eviction.reason)),
                ..WatchEvent::new(EventKind::ForceReleased, lease.clone())
            });
        }
        // Gone within read noise of its last known expiry: it lapsed (a
        // release through this daemon is announced exactly, not judged).
        let kind = if lease.expires_at <= SystemTime::now() + RENEWAL_THRESHOLD {
            EventKind::Expired
        } else {
            EventKind::Released
        };
        Ok(WatchEvent::new(kind, lease.clone()))
    }

    /// Hands `events` to every watch started on this backend that selects
    /// them and whose filter lets them through; ends a watch whose queue is
    /// full.
    fn deliver(&self, events: Vec<WatchEvent>) {
        if events.is_empty() {
            return;
        }
        let mut state = lock(&self.inner.state);
        let mut behind = Vec::new();
        for (id, subscriber) in &state.subscribers {
            if !subscriber.started.contains(&self.name) {
                continue;
            }
            for event in &events {
                if !subscriber.selection.contains(&event.lease.resource)
                    || subscriber.filter.as_ref().is_some_and(|f| !f(event))
                {
                    continue;
                }
                match subscriber.events.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        behind.push(*id);
                        break;
                    }
                    // Its stream is gone; dropping it removes it.
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
        let mut kick = Vec::new();
        for id in behind {
            kick.extend(state.end(id, fell_behind()));
        }
        drop(state);
        self.inner.kick(&kick);
    }

    /// Ends the watches that need `selection` read on this backend with
    /// `error`.
    fn fail(&mut self, selection: &Selection, error: &BackendError) {
        let mut state = lock(&self.inner.state);
        let failed: Vec<u64> = state
            .subscribers
            .iter()
            .filter(|(_, s)| {
                s.backends.contains(&self.name)
                    && match selection {
                        // A resource's read is needed by every watch selecting it.
                        Selection::Resource(r) => s.selection.contains(r),
                        Selection::Prefix(_) => selection.covers(&s.selection),
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        let mut kick = Vec::new();
        for id in failed {
            kick.extend(state.end(id, Error::Backend(copy(error))));
        }
        drop(state);
        self.inner.kick(&kick);
    }

    /// Shutdown: every watch ends with UNAVAILABLE and the poller stops.
    fn stop(&mut self) {
        let mut state = lock(&self.inner.state);
        let ids: Vec<u64> = state.subscribers.keys().copied().collect();
        for id in ids {
            state.end(id, shutting_down());
        }
        if let Some(me) = state.pollers.get_mut(&self.name) {
            me.running = false;
            me.polled.clear();
        }
    }
}

/// The leases `selection` selects now on backend `name` (only those whose
/// resource routes there: a prefix is read on every backend).
async fn read(
    router: &Router,
    name: &str,
    backend: &Arc<dyn Backend>,
    selection: &Selection,
) -> Result<BTreeMap<String, Lease>, BackendError> {
    let mut leases = BTreeMap::new();
    match selection {
        Selection::Resource(resource) => {
            if let Some(lease) = backend.current(resource).await? {
                leases.insert(resource.clone(), lease);
            }
        }
        Selection::Prefix(prefix) => {
            let mut after: Option<String> = None;
            loop {
                let page = backend.list(prefix, after.as_deref(), PAGE).await?;
                let more = page.len() >= PAGE;
                after = page.last().map(|l| l.resource.clone());
                leases.extend(
                    page.into_iter()
                        .filter(|l| router.route(&l.resource).backend_name == name)
                        .map(|l| (l.resource.clone(), l)),
                );
                if !more || after.is_none() {
                    break;
                }
            }
        }
    }
    Ok(leases)
}

/// The same error again, for each watch it ends.
fn copy(error: &BackendError) -> BackendError {
    match error {
        BackendError::NotCurrent { evicted } => BackendError::NotCurrent {
            evicted: evicted.clone(),
        },
        BackendError::Unavailable { backend, message } => BackendError::Unavailable {
            backend: backend.clone(),
            message: message.clone(),
        },
        BackendError::Internal { backend, message } => BackendError::Internal {
            backend: backend.clone(),
            message: message.clone(),
        },
        BackendError::Config { backend, message } => BackendError::Config {
            backend: backend.clone(),
            message: message.clone(),
        },
    }
}

fn shutting_down() -> Error {
    Error::ShuttingDown("the daemon is shutting down; watch again".to_string())
}

fn fell_behind() -> Error {
    Error::FellBehind(format!(
        "this watch fell behind: more than {QUEUE} events were waiting for its client, so it was \
         ended rather than hold up other watches; events after those were missed: read the \
         current state (List, Current) and watch again"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::memory::MemoryBackend;
    use crate::config::Config;
    use crate::lease::{AcquireRequest, Acquisition, LeaseId};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Bounds a stuck test only.
    const GUARD: Duration = Duration::from_secs(20);

    /// A memory backend that counts the reads watches make.
    #[derive(Default)]
    struct Counting {
        inner: MemoryBackend,
        reads: AtomicUsize,
    }

    impl Counting {
        fn read(&self) {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl Backend for Counting {
        async fn acquire(&self, req: &AcquireRequest) -> crate::backend::Result<Acquisition> {
            self.inner.acquire(req).await
        }
        async fn release(&self, resource: &str, id: &LeaseId) -> crate::backend::Result<bool> {
            self.inner.release(resource, id).await
        }
        async fn renew(
            &self,
            resource: &str,
            id: &LeaseId,
            ttl: Duration,
        ) -> crate::backend::Result<Lease> {
            self.inner.renew(resource, id, ttl).await
        }
        async fn current(&self, resource: &str) -> crate::backend::Result<Option<Lease>> {
            self.read();
            self.inner.current(resource).await
        }
        async fn status(
            &self,
            resource: &str,
            id: &LeaseId,
        ) -> crate::backend::Result<LeaseStatus> {
            self.read();
            self.inner.status(resource, id).await
        }
        async fn list(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
        ) -> crate::backend::Result<Vec<Lease>> {
            self.read();
            self.inner.list(prefix, after, limit).await
        }
        async fn force_release(
            &self,
            resource: &str,
            actor: &str,
            reason: &str,
        ) -> crate::backend::Result<Option<Lease>> {
            self.inner.force_release(resource, actor, reason).await
        }
        async fn health(&self) -> crate::backend::Result<()> {
            Ok(())
        }
    }

    struct Fixture {
        backend: Arc<Counting>,
        changes: Arc<Changes>,
        hub: Hub,
    }

    fn fixture(max_per_principal: usize) -> Fixture {
        let config = Config::parse("[backends.main]\ntype = \"memory\"\n", "test").expect("config");
        let backend = Arc::new(Counting::default());
        let backends = [("main".to_string(), backend.clone() as Arc<dyn Backend>)].into();
        let router = Arc::new(Router::new(&config, backends).expect("router"));
        let changes = Arc::new(Changes::default());
        let hub = Hub::new(router, changes.clone(), max_per_principal, None);
        Fixture {
            backend,
            changes,
            hub,
        }
    }

    fn prefix(p: &str) -> Selection {
        Selection::Prefix(p.to_string())
    }

    fn lease(resource: &str, fence: u64) -> Lease {
        let now = SystemTime::now();
        Lease {
            resource: resource.to_string(),
            id: LeaseId::generate(),
            principal: "p".to_string(),
            reason: String::new(),
            acquired_at: now,
            expires_at: now + Duration::from_secs(600),
            fence,
            ttl: Some(Duration::from_secs(600)),
        }
    }

    /// Waits until every watch has started (its selection was read).
    async fn started(hub: &Hub) {
        tokio::time::timeout(GUARD, async {
            while lock(&hub.inner.state)
                .subscribers
                .values()
                .any(|s| s.backends.iter().any(|b| !s.started.contains(b)))
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the watches did not start"));
    }

    async fn next(watch: &mut Subscription) -> Option<Result<WatchEvent, Error>> {
        tokio::time::timeout(GUARD, watch.next())
            .await
            .unwrap_or_else(|_| panic!("no event"))
    }

    #[test]
    fn the_cover_leaves_out_what_another_selection_selects() {
        let selections = [
            prefix("a/"),
            prefix("a/b/"),
            Selection::Resource("a/x".into()),
            Selection::Resource("b".into()),
            Selection::Resource("b".into()),
            prefix("bc"),
            Selection::Resource("c".into()),
            prefix("c"),
        ];
        let mut expected = vec![
            prefix("a/"),
            prefix("c"),
            Selection::Resource("b".into()),
            prefix("bc"),
        ];
        expected.sort();
        assert_eq!(cover(selections.iter()), expected);
        assert_eq!(cover([prefix(""), prefix("x")].iter()), vec![prefix("")]);
        assert!(!Selection::Resource("a".into()).covers(&prefix("a")));
        assert!(prefix("a").covers(&Selection::Resource("a".into())));
    }

    /// A request for a lease on `r` by `p` lasting `ttl`.
    fn request_r(ttl: Duration) -> AcquireRequest {
        AcquireRequest {
            resource: "r".into(),
            id: LeaseId::generate(),
            principal: "p".into(),
            reason: String::new(),
            ttl,
        }
    }

    /// A grant announced after a newer lease of the same resource was read
    /// (out of order) must not end that newer, live lease in the stream.
    #[tokio::test]
    async fn a_stale_announcement_is_dropped() {
        let Fixture {
            backend,
            changes,
            hub,
        } = fixture(10);
        let mut events = hub
            .subscribe("p", Selection::Resource("r".into()), None)
            .expect("watch");
        // The watch reads its (empty) selection before anything happens.
        started(&hub).await;
        let memory = &backend.inner;
        let grant = request_r;
        let Ok(Acquisition::Granted(first)) = memory.acquire(&grant(Duration::from_secs(60))).await
        else {
            panic!("granted");
        };
        assert!(memory.release("r", &first.id).await.expect("release"));
        let Ok(Acquisition::Granted(second)) =
            memory.acquire(&grant(Duration::from_secs(60))).await
        else {
            panic!("granted");
        };
        // The engine's hint comes first and the watch reads the second lease;
        // only then does the announcement of the first arrive.
        changes.announce(Signal::Changed("r".into()));
        let seen = next(&mut events)
            .await
            .expect("an event")
            .expect("no error");
        assert_eq!(
            (seen.kind, seen.lease.fence),
            (EventKind::Acquired, second.fence)
        );
        changes.announce(Signal::Acquired(Arc::new(first.clone())));
        // A later change is the next event: the stale one made none.
        assert!(memory.release("r", &second.id).await.expect("release"));
        changes.announce(Signal::Released {
            resource: "r".into(),
            id: second.id.clone(),
        });
        let after = next(&mut events)
            .await
            .expect("an event")
            .expect("no error");
        assert_eq!(
            (after.kind, after.lease.fence),
            (EventKind::Released, second.fence),
            "the stale announcement became an event"
        );
    }

    /// A renewal announced by this daemon is an event however little it
    /// moves the expiry (read from the engine, such a move is noise).
    #[tokio::test]
    async fn every_renewal_through_this_daemon_is_reported() {
        let Fixture {
            backend,
            changes,
            hub,
            ..
        } = fixture(10);
        let mut events = hub
            .subscribe("p", Selection::Resource("r".into()), None)
            .expect("watch");
        started(&hub).await;
        let memory = &backend.inner;
        let request = request_r(Duration::from_secs(60));
        let Ok(Acquisition::Granted(lease)) = memory.acquire(&request).await else {
            panic!("granted");
        };
        changes.announce(Signal::Acquired(Arc::new(lease.clone())));
        let seen = next(&mut events)
            .await
            .expect("an event")
            .expect("no error");
        assert_eq!(seen.kind, EventKind::Acquired);
        // Renewed at once for the same TTL: the expiry moves by far less
        // than the engine's read noise.
        let renewed = memory
            .renew("r", &lease.id, Duration::from_secs(60))
            .await
            .expect("renew");
        changes.announce(Signal::Renewed(Arc::new(renewed.clone())));
        let seen = next(&mut events)
            .await
            .expect("an event")
            .expect("no error");
        assert_eq!(
            (seen.kind, seen.lease.expires_at),
            (EventKind::Renewed, renewed.expires_at)
        );
    }

    /// A lease renewed to a shorter TTL by less than the read noise, read
    /// from the engine, is judged by its new expiry when it goes: it lapsed,
    /// and is not called released.
    #[tokio::test]
    async fn an_expiry_is_not_called_a_release() {
        let Fixture {
            backend,
            changes,
            hub,
            ..
        } = fixture(10);
        let mut events = hub
            .subscribe("p", Selection::Resource("r".into()), None)
            .expect("watch");
        started(&hub).await;
        let memory = &backend.inner;
        let request = request_r(Duration::from_secs(2));
        let Ok(Acquisition::Granted(lease)) = memory.acquire(&request).await else {
            panic!("granted");
        };
        changes.announce(Signal::Changed("r".into()));
        let seen = next(&mut events)
            .await
            .expect("an event")
            .expect("no error");
        assert_eq!(seen.kind, EventKind::Acquired);
        // Elsewhere, renewed to 1 s: 1 s earlier, under the noise threshold.
        memory
            .renew("r", &lease.id, Duration::from_secs(1))
            .await
            .expect("renew");
        changes.announce(Signal::Changed("r".into()));
        // It lapses; the watch notices on a later read.
        let seen = next(&mut events)
            .await
            .expect("an event")
            .expect("no error");
        assert_eq!(
            (seen.kind, seen.lease.fence),
            (EventKind::Expired, lease.fence),
            "{seen:?}"
        );
    }

    /// Fifty watches of one prefix cost the engine what one does: the same
    /// reads per poll, counted over the same number of polls (the clock is
    /// tokio's paused one, so polls are exact).
    #[tokio::test(start_paused = true)]
    async fn fifty_watches_read_the_engine_as_one_does() {
        let f = fixture(100);
        let reads_over_ten_polls = |watches: usize| {
            let f = &f;
            async move {
                let open: Vec<Subscription> = (0..watches)
                    .map(|_| f.hub.subscribe("p", prefix("jobs/"), None).expect("watch"))
                    .collect();
                started(&f.hub).await;
                let before = f.backend.reads.load(Ordering::SeqCst);
                tokio::time::sleep(POLL * 10 + POLL / 2).await;
                let reads = f.backend.reads.load(Ordering::SeqCst) - before;
                drop(open);
                reads
            }
        };
        let one = reads_over_ten_polls(1).await;
        let fifty = reads_over_ten_polls(50).await;
        assert!((9..=11).contains(&one), "one watch: {one} reads");
        assert!(fifty <= one + 1, "fifty watches: {fifty} reads, one: {one}");
        // Watches of a resource under that prefix, or of a longer prefix,
        // are served by the same reads.
        let _wide = f.hub.subscribe("p", prefix("jobs/"), None).expect("watch");
        let _narrow = f
            .hub
            .subscribe("p", prefix("jobs/a/"), None)
            .expect("watch");
        let _one = f
            .hub
            .subscribe("p", Selection::Resource("jobs/b".into()), None)
            .expect("watch");
        started(&f.hub).await;
        let before = f.backend.reads.load(Ordering::SeqCst);
        tokio::time::sleep(POLL * 10 + POLL / 2).await;
        let nested = f.backend.reads.load(Ordering::SeqCst) - before;
        assert!(nested <= one + 1, "nested selections: {nested} reads");
    }

    /// A watch whose client does not read is ended once its queue is full,
    /// after the events queued; the others get every event meanwhile.
    #[tokio::test]
    async fn a_watch_that_falls_behind_is_ended_and_holds_up_nobody() {
        let f = fixture(10);
        let mut slow = f.hub.subscribe("p", prefix("q/"), None).expect("watch");
        let mut fast = f.hub.subscribe("p", prefix("q/"), None).expect("watch");
        started(&f.hub).await;
        let total = QUEUE + 50;
        for i in 0..total {
            f.changes
                .announce(Signal::Acquired(Arc::new(lease(&format!("q/{i}"), 1))));
            let event = next(&mut fast).await.expect("event").expect("no error");
            assert_eq!(event.lease.resource, format!("q/{i}"));
        }
        for i in 0..QUEUE {
            let event = next(&mut slow)
                .await
                .expect("queued event")
                .expect("no error");
            assert_eq!(event.lease.resource, format!("q/{i}"), "in order");
        }
        let end = next(&mut slow).await.expect("the end");
        assert!(
            matches!(&end, Err(Error::FellBehind(m)) if m.contains("fell behind")),
            "{end:?}"
        );
        assert!(next(&mut slow).await.is_none(), "nothing after the end");
        // The fast one goes on.
        f.changes
            .announce(Signal::Acquired(Arc::new(lease("q/last", 1))));
        let event = next(&mut fast).await.expect("event").expect("no error");
        assert_eq!(event.lease.resource, "q/last");
    }

    /// A filter chooses what one watch sees; what it filters out takes no
    /// place in the watch's queue.
    #[tokio::test]
    async fn a_filter_applies_per_watch() {
        let f = fixture(10);
        let only_public: Filter = Arc::new(|e: &WatchEvent| e.lease.resource.starts_with("x/pub"));
        let mut public = f
            .hub
            .subscribe("p", prefix("x/"), Some(only_public))
            .expect("watch");
        let mut everything = f.hub.subscribe("p", prefix("x/"), None).expect("watch");
        started(&f.hub).await;
        for i in 0..QUEUE * 2 {
            f.changes.announce(Signal::Acquired(Arc::new(lease(
                &format!("x/secret/{i}"),
                1,
            ))));
            next(&mut everything)
                .await
                .expect("event")
                .expect("no error");
        }
        f.changes
            .announce(Signal::Acquired(Arc::new(lease("x/public", 1))));
        let seen = next(&mut public).await.expect("event").expect("no error");
        assert_eq!(seen.lease.resource, "x/public");
    }

    /// At most `max_per_principal` watches per principal; one that ends
    /// makes room. The poller stops with the last watch and starts again
    /// with the next.
    #[tokio::test]
    async fn watches_per_principal_are_bounded_and_the_poller_stops() {
        let f = fixture(2);
        let a = f.hub.subscribe("alice", prefix("w/"), None).expect("first");
        let b = f
            .hub
            .subscribe("alice", prefix("w/"), None)
            .expect("second");
        let refused = f.hub.subscribe("alice", prefix("w/"), None).err();
        let message = match refused {
            Some(Error::ResourceExhausted(m)) => m,
            other => panic!("not refused: {other:?}"),
        };
        assert!(
            message.contains("limits.max_watches_per_principal = 2") && message.contains("alice"),
            "{message}"
        );
        let bob = f
            .hub
            .subscribe("bob", prefix("w/"), None)
            .expect("bob is not alice");
        assert_eq!(f.hub.watching(), 3);
        drop(a);
        let mut again = f
            .hub
            .subscribe("alice", prefix("w/"), None)
            .expect("room again");
        drop((b, bob));
        started(&f.hub).await;
        f.changes
            .announce(Signal::Acquired(Arc::new(lease("w/1", 1))));
        assert!(next(&mut again).await.is_some_and(|e| e.is_ok()));
        drop(again);
        assert_eq!(f.hub.watching(), 0);
        tokio::time::timeout(GUARD, async {
            while lock(&f.hub.inner.state).pollers.values().any(|p| p.running) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the poller did not stop with the last watch"));
        let mut later = f.hub.subscribe("carol", prefix("w/"), None).expect("watch");
        started(&f.hub).await;
        f.changes
            .announce(Signal::Acquired(Arc::new(lease("w/2", 2))));
        let event = next(&mut later).await.expect("event").expect("no error");
        assert_eq!(event.lease.resource, "w/2");
    }

    /// An engine whose reads never answer (frozen, without the daemon's
    /// per-call timeout around it).
    #[derive(Default)]
    struct Hung(MemoryBackend);

    #[async_trait::async_trait]
    impl Backend for Hung {
        async fn acquire(&self, req: &AcquireRequest) -> crate::backend::Result<Acquisition> {
            self.0.acquire(req).await
        }
        async fn release(&self, resource: &str, id: &LeaseId) -> crate::backend::Result<bool> {
            self.0.release(resource, id).await
        }
        async fn renew(
            &self,
            resource: &str,
            id: &LeaseId,
            ttl: Duration,
        ) -> crate::backend::Result<Lease> {
            self.0.renew(resource, id, ttl).await
        }
        async fn current(&self, _: &str) -> crate::backend::Result<Option<Lease>> {
            std::future::pending().await
        }
        async fn status(&self, _: &str, _: &LeaseId) -> crate::backend::Result<LeaseStatus> {
            std::future::pending().await
        }
        async fn list(
            &self,
            _: &str,
            _: Option<&str>,
            _: usize,
        ) -> crate::backend::Result<Vec<Lease>> {
            std::future::pending().await
        }
        async fn force_release(
            &self,
            resource: &str,
            actor: &str,
            reason: &str,
        ) -> crate::backend::Result<Option<Lease>> {
            self.0.force_release(resource, actor, reason).await
        }
        async fn health(&self) -> crate::backend::Result<()> {
            Ok(())
        }
    }

    /// Each backend has its own poller: one whose engine hangs holds up
    /// only the watches that need it.
    #[tokio::test]
    async fn a_hung_engine_holds_up_only_the_watches_that_read_it() {
        let config = Config::parse(
            "[backends.main]\ntype = \"memory\"\n[backends.frozen]\ntype = \"memory\"\n\
             [[resources]]\nmatch = \"cold/**\"\nbackend = \"frozen\"\n",
            "test",
        )
        .expect("config");
        let backends = [
            (
                "main".to_string(),
                Arc::new(Counting::default()) as Arc<dyn Backend>,
            ),
            (
                "frozen".to_string(),
                Arc::new(Hung::default()) as Arc<dyn Backend>,
            ),
        ]
        .into();
        let router = Arc::new(Router::new(&config, backends).expect("router"));
        let changes = Arc::new(Changes::default());
        let hub = Hub::new(router, changes.clone(), 10, None);
        // A prefix reads every backend: this one waits for the frozen one.
        let _everything = hub.subscribe("p", prefix(""), None).expect("watch");
        let mut warm = hub
            .subscribe("p", Selection::Resource("warm/r".into()), None)
            .expect("watch");
        tokio::time::timeout(GUARD, async {
            while !lock(&hub.inner.state).subscribers.values().any(|s| {
                s.selection == Selection::Resource("warm/r".into()) && s.started.contains("main")
            }) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the watch of a healthy backend did not start"));
        changes.announce(Signal::Acquired(Arc::new(lease("warm/r", 1))));
        let event = next(&mut warm).await.expect("event").expect("no error");
        assert_eq!(event.lease.resource, "warm/r");
        assert!(
            lock(&hub.inner.state)
                .subscribers
                .values()
                .all(|s| !s.started.contains("frozen")),
            "nothing was read from the frozen engine"
        );
    }

    #[tokio::test]
    async fn shutdown_ends_every_watch_and_refuses_new_ones() {
        let f = fixture(10);
        let mut watch = f.hub.subscribe("p", prefix(""), None).expect("watch");
        started(&f.hub).await;
        f.changes.close();
        let end = next(&mut watch).await;
        assert!(matches!(end, Some(Err(Error::ShuttingDown(_)))), "{end:?}");
        let late = f.hub.subscribe("p", prefix(""), None).err();
        assert!(matches!(late, Some(Error::ShuttingDown(_))), "{late:?}");
    }
}
