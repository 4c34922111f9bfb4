//! The lock core: what acquiring, waiting, renewing, releasing and breaking
//! a lease mean, on top of the routed backends, and the [`LockEvent`] each
//! outcome emits. It takes validated requests from an already identified
//! and authorized caller; the gRPC layer ([`crate::service`]) only
//! translates, identifies, validates and permits. `bench-direct` drives this
//! same core in-process.
//!
//! Rules kept here, in one place:
//! - contention is an answer ([`Acquisition::Held`]), not an error;
//! - waiters are served first come, first served per resource on this
//!   daemon, and only the head of the line tries the engine;
//! - what one caller can hold is bounded (`[limits]`): waiters per resource
//!   and per principal, watches per principal;
//! - a grant whose caller went away, or whose outcome is unknown, is
//!   released in the background ([`attempt`]);
//! - an evicted lease's holder learns who broke it and why.

use std::sync::{Arc, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{Backend, BackendError};
use crate::error::Error;
use crate::events::{Events, LockEvent};
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};
use crate::reservations::{Ask, Booking, Ledger, Reservation};
use crate::routing::{Route, Router};
use crate::waiters::Wake;
use crate::watch::{self, Selection, Subscription};
use crate::window_events::{SharedFreezes, WindowEvent, WindowEvents};
use crate::windows::{Freezes, Window};

/// How often a waiter re-checks a resource that changes elsewhere (another
/// daemon, expiry between polls).
const WAIT_POLL: Duration = Duration::from_millis(500);
/// Kept free at the end of a caller's deadline so that a waiter still gets
/// its "held" answer instead of DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(200);

/// How long an acquisition may wait for a held resource.
#[derive(Debug, Clone, Default)]
pub struct Wait {
    /// Zero: try once.
    pub up_to: Duration,
    /// The caller's deadline, if it set one; the wait ends before it.
    pub deadline: Option<Instant>,
    /// The caller's handle on its place in line (see `Current`).
    pub wait_id: Option<String>,
}

/// A resource's current state as this daemon sees it.
#[derive(Debug, Clone)]
pub struct Current {
    /// The current lease, if any.
    pub lease: Option<Lease>,
    /// Callers waiting for it on this daemon.
    pub waiting: usize,
    /// The place in line of the asked-for wait id (1 = next), 0 if absent.
    pub place: usize,
}

/// What an acquisition came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The lease was granted. With a window: the lease was cut short to end
    /// when that window starts (it would refuse the holder).
    Granted(Lease, Option<Window>),
    /// Someone else holds the resource: their lease.
    Held(Lease),
    /// A window in force refuses the caller.
    Frozen(Window),
}

/// What the windows allow a caller now.
enum Gate {
    /// A lease for this long; with the window that shortened it.
    Open(Duration, Option<Window>),
    /// Nothing: this window refuses the caller now (or within a second).
    Closed(Window),
}

/// The lock core.
pub struct Locks {
    router: Arc<Router>,
    events: Events,
    /// The open watches and the pollers they share.
    watches: watch::Hub,
    /// The freeze windows in force (replaced whole by a reload).
    freezes: SharedFreezes,
    /// The reservations, and this daemon's copy of them.
    reservations: Arc<Ledger>,
    /// Freezes starting and ending, reservations made and cancelled.
    window_events: WindowEvents,
}

impl Locks {
    /// A core over `router`'s backends, emitting to `events`; its waiters
    /// and watches are bounded by the change hub's limits.
    pub fn new(router: Arc<Router>, events: Events) -> Self {
        let changes = events.changes();
        let watches = watch::Hub::new(
            router.clone(),
            changes.clone(),
            changes.limits().max_watches_per_principal,
            events.metrics().cloned(),
        );
        let reservations = Arc::new(Ledger::new(router.clone()));
        reservations.spawn_refresher();
        let freezes = SharedFreezes::default();
        let window_events = WindowEvents::start(freezes.clone(), &reservations);
        Self {
            router,
            events,
            watches,
            freezes,
            reservations,
            window_events,
        }
    }

    /// The window events from now on (for watches).
    pub fn window_events(&self) -> tokio::sync::broadcast::Receiver<WindowEvent> {
        self.window_events.subscribe()
    }

    /// The reservations.
    pub fn reservations(&self) -> &Arc<Ledger> {
        &self.reservations
    }

    /// Books `ask`, or names the reservation in the way; audited.
    pub async fn reserve(&self, ask: Ask) -> Result<Booking, Error> {
        let booking = self.reservations.reserve(ask).await?;
        if let Booking::Reserved(reservation) = &booking {
            self.events.emit(LockEvent::Reserved {
                reservation: reservation.clone(),
            });
        }
        Ok(booking)
    }

    /// Cancels reservation `id` of `resource` for `actor` (its owner, or
    /// an administrator giving a reason); audited. `Ok(None)`: there was
    /// no such reservation (any more).
    pub async fn unreserve(
        &self,
        resource: &str,
        id: &str,
        actor: &str,
        admin: bool,
        reason: &str,
    ) -> Result<Option<Reservation>, Error> {
        let cancelled = self
            .reservations
            .unreserve(resource, id, actor, admin, reason)
            .await?;
        if let Some(reservation) = &cancelled {
            self.events.emit(LockEvent::Unreserved {
                actor: actor.to_string(),
                reservation: reservation.clone(),
                reason: reason.to_string(),
            });
        }
        Ok(cancelled)
    }

    /// The freeze windows in force.
    pub fn freezes(&self) -> Arc<Freezes> {
        self.freezes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `freezes` in force for every call from now on (start, reload).
    pub fn set_freezes(&self, freezes: Freezes) {
        *self.freezes.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(freezes);
    }

    /// The window in force that refuses `principal` on `resource` now, if
    /// any (of several, the one that ends last).
    pub fn window(&self, resource: &str, principal: &str) -> Option<Window> {
        self.refusing(resource, principal, SystemTime::now())
    }

    /// The freeze or reservation in force that refuses `principal` on
    /// `resource` at `now`: of several, the one that ends last.
    fn refusing(&self, resource: &str, principal: &str, now: SystemTime) -> Option<Window> {
        let freeze = self.freezes().refusing(resource, principal, now);
        let reservation = self.reservations.refusing(resource, principal, now);
        freeze
            .into_iter()
            .chain(reservation)
            .max_by_key(|w| w.ends_at)
    }

    /// What the windows allow `principal` on `resource` now, for a lease
    /// of `ttl`: the whole of it, the part before a window that would
    /// refuse the principal starts (whole seconds, as every TTL), or
    /// nothing while such a window is in force or less than a second away.
    fn gate(&self, resource: &str, principal: &str, ttl: Duration) -> Gate {
        let freezes = self.freezes();
        if freezes.is_empty() && self.reservations.is_empty() {
            return Gate::Open(ttl, None);
        }
        let now = SystemTime::now();
        if let Some(window) = self.refusing(resource, principal, now) {
            return Gate::Closed(window);
        }
        let next_freeze = freezes.next_refusing(resource, principal, now, now + ttl);
        let next_reservation = self
            .reservations
            .next_refusing(resource, principal, now, now + ttl);
        match next_freeze
            .into_iter()
            .chain(next_reservation)
            .min_by_key(|w| w.starts_at)
        {
            None => Gate::Open(ttl, None),
            Some(window) => {
                let before = window.starts_at.duration_since(now).unwrap_or_default();
                match before.as_secs() {
                    0 => Gate::Closed(window),
                    secs => Gate::Open(Duration::from_secs(secs), Some(window)),
                }
            }
        }
    }

    /// One attempt through the windows: refused by one, or tried on the
    /// engine with the TTL they allow.
    async fn try_once(
        &self,
        backend: &Arc<dyn Backend>,
        request: &Arc<AcquireRequest>,
    ) -> Result<Outcome, Error> {
        match self.gate(&request.resource, &request.principal, request.ttl) {
            Gate::Closed(window) => Ok(Outcome::Frozen(window)),
            Gate::Open(ttl, cut) => {
                let shortened;
                let request = if ttl == request.ttl {
                    request
                } else {
                    shortened = Arc::new(AcquireRequest {
                        ttl,
                        ..AcquireRequest::clone(request)
                    });
                    &shortened
                };
                Ok(match attempt(backend, request).await? {
                    Acquisition::Granted(lease) => Outcome::Granted(lease, cut),
                    Acquisition::Held(holder) => Outcome::Held(holder),
                })
            }
        }
    }

    /// Where `resource` lives, and its default and maximum TTL.
    pub fn route(&self, resource: &str) -> &Arc<Route> {
        self.router.route(resource)
    }

    /// The routed backends.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Where this core's events go.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Grants `request` or says who holds the resource (or which window
    /// refuses the caller), waiting in line as long as `wait` allows: a
    /// waiter waits through a window, and is served when it ends.
    pub async fn acquire(&self, request: AcquireRequest, wait: Wait) -> Result<Outcome, Error> {
        let request = Arc::new(request);
        let backend = &self.route(&request.resource).backend;
        if wait.up_to.is_zero() {
            let outcome = self.try_once(backend, &request).await?;
            return Ok(self.answer(&request, outcome, None, false));
        }
        let mut until = Instant::now() + wait.up_to;
        if let Some(deadline) = wait.deadline {
            until = until.min(deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline));
        }
        // First come, first served: only the head of the line tries the
        // backend; a caller that goes away leaves the line with its ticket.
        // A full line, or a principal with its most calls waiting, is
        // refused before anything is tried.
        let ticket = self
            .events
            .changes()
            .waiters()
            .enqueue(
                &request.resource,
                &request.principal,
                wait.wait_id.as_deref(),
            )
            .inspect_err(|exceeded| {
                if let Some(metrics) = self.events.metrics() {
                    metrics.limit_refused(exceeded.limit);
                }
            })?;
        // The holder seen by the previous attempt, to notice its expiry.
        let mut last_holder: Option<Lease> = None;
        // Whether the caller has had to wait (and was announced waiting).
        let mut waited = false;
        loop {
            let out_of_time = Instant::now() >= until;
            let head = ticket.is_head();
            // When the window that refused the head of the line ends.
            let mut closed_until = None;
            if head || out_of_time {
                match self.try_once(backend, &request).await? {
                    granted @ Outcome::Granted(..) => {
                        // Leaving the line lets the next caller take its turn.
                        drop(ticket);
                        return Ok(self.answer(&request, granted, last_holder, waited));
                    }
                    refused if out_of_time => {
                        return Ok(self.answer(&request, refused, None, waited));
                    }
                    Outcome::Held(holder) => last_holder = Some(holder),
                    Outcome::Frozen(window) => closed_until = Some(window.ends_at),
                }
            }
            // Sleep until woken (a change here or reported by the engine),
            // the end of the wait, or, at the head, the next poll, the
            // holder's expiry or the end of the window that refused it (a
            // wake-up meanwhile only checks the window again, in memory).
            let mut pause = until.saturating_duration_since(Instant::now());
            if let Some(end) = closed_until {
                let to_end = end.duration_since(SystemTime::now()).unwrap_or_default();
                // Polled too: a reload may end or remove the window.
                pause = pause.min(to_end).min(WAIT_POLL);
            } else if head {
                pause = pause.min(WAIT_POLL);
                if let Some(holder) = &last_holder {
                    let to_expiry = holder
                        .expires_at
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    pause = pause.min(to_expiry + Duration::from_millis(20));
                }
            }
            if !waited {
                waited = true;
                self.events.emit(LockEvent::Waiting {
                    principal: request.principal.clone(),
                    resource: request.resource.clone(),
                    reason: request.reason.clone(),
                    holder: last_holder.clone(),
                });
            }
            tokio::select! {
                wake = ticket.woken() => {
                    if wake == Wake::Closed {
                        return Err(Error::ShuttingDown(
                            "the daemon is shutting down; try again".to_string(),
                        ));
                    }
                }
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Emits the event of an acquisition's outcome. `previous` is the
    /// holder a waiter saw before, to report its expiry; `waited`, whether
    /// the caller had to wait.
    fn answer(
        &self,
        request: &AcquireRequest,
        outcome: Outcome,
        previous: Option<Lease>,
        waited: bool,
    ) -> Outcome {
        match &outcome {
            Outcome::Granted(lease, cut) => self.events.emit(LockEvent::Acquired {
                lease: Arc::new(lease.clone()),
                // Cut short by a window: the TTL it got.
                ttl: match cut {
                    None => request.ttl,
                    Some(_) => lease
                        .expires_at
                        .duration_since(lease.acquired_at)
                        .unwrap_or(request.ttl),
                },
                expired: previous.filter(|h| h.expires_at <= lease.acquired_at),
                waited,
            }),
            Outcome::Held(holder) => self.events.emit(LockEvent::Contended {
                principal: request.principal.clone(),
                reason: request.reason.clone(),
                holder: holder.clone(),
            }),
            Outcome::Frozen(window) => self.events.emit(LockEvent::Frozen {
                principal: request.principal.clone(),
                resource: request.resource.clone(),
                reason: request.reason.clone(),
                window: window.clone(),
            }),
        }
        outcome
    }

    /// Sets a current lease's expiry to now + `ttl`, for `principal`; with
    /// no `ttl`, to now + the lease's own TTL ([`Locks::own_ttl`]). Never
    /// past the start of a window that would refuse `principal`: the lease
    /// is then renewed until that start (the window is returned), and not
    /// at all while such a window is in force or less than a second away.
    pub async fn renew(
        &self,
        principal: &str,
        resource: &str,
        id: &LeaseId,
        ttl: Option<Duration>,
    ) -> Result<(Lease, Option<Window>), Error> {
        let route = self.route(resource);
        let ttl = match ttl {
            Some(ttl) => ttl,
            None => Self::own_ttl(route, resource, id)
                .await
                .map_err(|err| self.renew_refused(principal, resource, id, err))?,
        };
        let (ttl, cut) = match self.gate(resource, principal, ttl) {
            Gate::Open(ttl, cut) => (ttl, cut),
            Gate::Closed(window) => {
                let err = Error::Frozen {
                    message: format!(
                        "the lease on {resource} cannot be renewed: {}",
                        window.describe()
                    ),
                    window: Box::new(window),
                };
                self.events.emit(LockEvent::RenewRefused {
                    principal: principal.to_string(),
                    resource: resource.to_string(),
                    id: id.clone(),
                    detail: err.to_string(),
                });
                return Err(err);
            }
        };
        match route.backend.renew(resource, id, ttl).await {
            Ok(lease) => {
                self.events.emit(LockEvent::Renewed {
                    principal: principal.to_string(),
                    lease: Arc::new(lease.clone()),
                    ttl,
                });
                Ok((lease, cut))
            }
            Err(err) => Err(self.renew_refused(principal, resource, id, err)),
        }
    }

    /// A renewal's backend error, with the `renew_refused` event of a lease
    /// that is not current.
    fn renew_refused(
        &self,
        principal: &str,
        resource: &str,
        id: &LeaseId,
        err: BackendError,
    ) -> Error {
        if let BackendError::NotCurrent { .. } = &err {
            self.events.emit(LockEvent::RenewRefused {
                principal: principal.to_string(),
                resource: resource.to_string(),
                id: id.clone(),
                detail: err.to_string(),
            });
        }
        err.into()
    }

    /// The TTL a renewal that names none gets: the one the lease was granted
    /// or last renewed with, within the resource's maximum (which a reload
    /// may have lowered since); the resource's default TTL where the
    /// engine's record has none (a lease stored by an older version). It
    /// reads the lease first, so a renewal with another TTL landing between
    /// the read and this renewal is overridden by the TTL read, as by any
    /// later renewal.
    async fn own_ttl(
        route: &Route,
        resource: &str,
        id: &LeaseId,
    ) -> Result<Duration, BackendError> {
        match route.backend.status(resource, id).await? {
            LeaseStatus::Current(lease) => {
                let ttls = route.ttls();
                Ok(lease.ttl.map_or(ttls.ttl, |own| own.min(ttls.max_ttl)))
            }
            LeaseStatus::NotCurrent { evicted } => Err(BackendError::NotCurrent { evicted }),
        }
    }

    /// Releases a lease for `principal`; whether it was still current.
    pub async fn release(
        &self,
        principal: &str,
        resource: &str,
        id: &LeaseId,
    ) -> Result<bool, Error> {
        let was_current = self.route(resource).backend.release(resource, id).await?;
        self.events.emit(LockEvent::Released {
            principal: principal.to_string(),
            resource: resource.into(),
            id: id.clone(),
            was_current,
        });
        Ok(was_current)
    }

    /// Who holds `resource`, and its line on this daemon.
    pub async fn current(&self, resource: &str, wait_id: Option<&str>) -> Result<Current, Error> {
        let (waiting, place) = self
            .events
            .changes()
            .waiters()
            .position(resource, wait_id.unwrap_or_default());
        let lease = self.route(resource).backend.current(resource).await?;
        Ok(Current {
            lease,
            waiting,
            place,
        })
    }

    /// Whether `id` is the current lease of `resource`. An evicted lease is
    /// an error that says who broke it and why, so its holder learns it.
    pub async fn is_held(&self, resource: &str, id: &LeaseId) -> Result<bool, Error> {
        match self.route(resource).backend.status(resource, id).await? {
            LeaseStatus::Current(_) => Ok(true),
            LeaseStatus::NotCurrent { evicted: None } => Ok(false),
            LeaseStatus::NotCurrent { evicted } => Err(BackendError::NotCurrent { evicted }.into()),
        }
    }

    /// Up to `limit` held leases under `prefix` after resource `after`, in
    /// name order, across backends; and whether more follow.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Lease>, bool), Error> {
        Ok(self.router.list(prefix, after, limit).await?)
    }

    /// Breaks the current lease of `resource`, if any, for administrator
    /// `actor`; the broken lease.
    pub async fn force_release(
        &self,
        actor: &str,
        resource: &str,
        reason: &str,
    ) -> Result<Option<Lease>, Error> {
        let broken = self
            .route(resource)
            .backend
            .force_release(resource, actor, reason)
            .await?;
        if let Some(lease) = &broken {
            self.events.emit(LockEvent::ForceReleased {
                lease: Arc::new(lease.clone()),
                actor: actor.into(),
                reason: reason.into(),
            });
        }
        Ok(broken)
    }

    /// Starts a watch of `selection` for `principal` (see [`crate::watch`]);
    /// refused when the principal has its most watches open.
    pub fn watch(&self, principal: &str, selection: Selection) -> Result<Subscription, Error> {
        self.watches.subscribe(principal, selection, None)
    }

    /// Like [`Locks::watch`], for a watch that sees only the events
    /// `filter` lets through (applied as events are handed out, so what it
    /// filters out takes no place in the watch's queue).
    pub fn watch_filtered(
        &self,
        principal: &str,
        selection: Selection,
        filter: watch::Filter,
    ) -> Result<Subscription, Error> {
        self.watches.subscribe(principal, selection, Some(filter))
    }
}

/// One acquisition attempt whose outcome is never lost. Polled once in
/// place, an engine that answers at once is done; otherwise the attempt
/// goes on in its own task, so a caller that goes away mid-call (a
/// cancelled RPC drops the handler) cannot leave behind a lease nobody
/// knows the id of: the task releases it. When the outcome is unknown (the
/// engine did not answer in time, but may still apply the grant), the id is
/// released in the background too; ids are never reused, so this touches
/// nothing else.
async fn attempt(
    backend: &Arc<dyn Backend>,
    request: &Arc<AcquireRequest>,
) -> Result<Acquisition, BackendError> {
    let (backend, request) = (backend.clone(), request.clone());
    let mut acquisition = Box::pin({
        let (backend, request) = (backend.clone(), request.clone());
        async move { backend.acquire(&request).await }
    });
    // An engine that answers at once (memory) needs no task of its own.
    if let Poll::Ready(outcome) = futures::poll!(acquisition.as_mut()) {
        if outcome_unknown(&outcome) {
            tokio::spawn(release_orphan(backend, request, false));
        }
        return outcome;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let outcome = acquisition.await;
        let unknown = outcome_unknown(&outcome);
        let orphan = match tx.send(outcome) {
            Err(Ok(Acquisition::Granted(_))) => Some(true),
            _ if unknown => Some(false),
            _ => None,
        };
        if let Some(granted) = orphan {
            release_orphan(backend, request, granted).await;
        }
    });
    rx.await.unwrap_or_else(|_| {
        Err(BackendError::Internal {
            backend: String::new(),
            message: "the acquisition task ended without an answer".to_string(),
        })
    })
}

/// Whether the engine may have applied an acquisition it did not confirm.
fn outcome_unknown(outcome: &Result<Acquisition, BackendError>) -> bool {
    matches!(outcome, Err(BackendError::Unavailable { .. }))
}

/// Releases the lease `request` may have created. `granted`: it was
/// granted for sure (the caller left), so one release settles it. Otherwise
/// the grant may still land (a statement queued behind a frozen engine, a
/// pooled connection that sends it late): keep looking, at growing
/// intervals up to [`ORPHAN_RECHECK`] (then [`ORPHAN_RECHECK_LATER`]), until
/// the lease's own TTL has passed since the attempt began. A grant that
/// lands within that time holds the resource at most one interval.
async fn release_orphan(backend: Arc<dyn Backend>, request: Arc<AcquireRequest>, granted: bool) {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::ZERO;
    loop {
        tokio::time::sleep(pause).await;
        match backend.release(&request.resource, &request.id).await {
            Ok(true) => {
                tracing::info!(
                    resource = request.resource.as_str(),
                    lease = %request.id,
                    "released a lease whose caller never learnt it was granted"
                );
                return;
            }
            Ok(false) if granted => return,
            Ok(false) | Err(_) => {}
        }
        if started.elapsed() >= request.ttl {
            return;
        }
        // Late grants are rare and grow rarer with time: look often at
        // first, then once a minute, which bounds the cost of the many
        // unknown outcomes a long outage leaves behind.
        let recheck = if started.elapsed() < Duration::from_secs(60) {
            ORPHAN_RECHECK
        } else {
            ORPHAN_RECHECK_LATER
        };
        pause = (pause * 2)
            .max(Duration::from_millis(500))
            .min(recheck)
            .min(request.ttl.saturating_sub(started.elapsed()));
    }
}

/// The longest pause between two looks for a grant that may still land, in
/// the first minute after the attempt.
const ORPHAN_RECHECK: Duration = Duration::from_secs(10);
/// The same, afterwards.
const ORPHAN_RECHECK_LATER: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A memory backend whose grants take a while, as over a slow network
    /// (or which fails them at once, when `unavailable`, and then applies
    /// them `late` if set, as a statement queued behind a frozen engine
    /// does), or which applies them slowly and then loses the answer
    /// (`lost_answer`), and which counts grants and releases.
    #[derive(Default)]
    struct Slow {
        inner: Arc<MemoryBackend>,
        unavailable: bool,
        late: Option<Duration>,
        lost_answer: bool,
        grants: AtomicUsize,
        releases: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Backend for Slow {
        async fn acquire(&self, req: &AcquireRequest) -> crate::backend::Result<Acquisition> {
            if self.unavailable {
                if let Some(delay) = self.late {
                    let (inner, req) = (self.inner.clone(), req.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = inner.acquire(&req).await;
                    });
                }
                return Err(BackendError::unavailable("slow", "connection refused"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let outcome = self.inner.acquire(req).await;
            if matches!(outcome, Ok(Acquisition::Granted(_))) {
                self.grants.fetch_add(1, Ordering::SeqCst);
            }
            if self.lost_answer {
                return Err(BackendError::unavailable("slow", "connection reset"));
            }
            outcome
        }
        async fn release(&self, resource: &str, id: &LeaseId) -> crate::backend::Result<bool> {
            self.releases.fetch_add(1, Ordering::SeqCst);
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
            self.inner.current(resource).await
        }
        async fn status(
            &self,
            resource: &str,
            id: &LeaseId,
        ) -> crate::backend::Result<LeaseStatus> {
            self.inner.status(resource, id).await
        }
        async fn list(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
        ) -> crate::backend::Result<Vec<Lease>> {
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

    fn request(resource: &str) -> Arc<AcquireRequest> {
        Arc::new(AcquireRequest {
            resource: resource.to_string(),
            id: LeaseId::generate(),
            principal: "p".to_string(),
            reason: String::new(),
            ttl: Duration::from_secs(60),
        })
    }

    #[tokio::test]
    async fn a_grant_whose_caller_left_is_released() {
        let slow = Arc::new(Slow::default());
        let backend: Arc<dyn Backend> = slow.clone();
        // The caller goes away while the engine is granting.
        let gone =
            tokio::time::timeout(Duration::from_millis(50), attempt(&backend, &request("r"))).await;
        assert!(gone.is_err(), "the attempt should still be running");
        // The grant lands, finds nobody to answer and is released.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while slow.grants.load(Ordering::SeqCst) == 0
            || backend.current("r").await.ok().flatten().is_some()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the orphaned lease was not released (grants: {})",
                slow.grants.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A caller that stays gets its lease as usual.
        let kept = attempt(&backend, &request("r")).await;
        assert!(matches!(kept, Ok(Acquisition::Granted(_))), "{kept:?}");
        assert!(backend.current("r").await.ok().flatten().is_some());
        assert_eq!(slow.grants.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_immediate_answer_needs_no_task_and_an_unknown_one_is_released() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        let granted = attempt(&backend, &request("r")).await;
        assert!(
            matches!(granted, Ok(Acquisition::Granted(_))),
            "{granted:?}"
        );
        let held = attempt(&backend, &request("r")).await;
        assert!(matches!(held, Ok(Acquisition::Held(_))), "{held:?}");

        // An engine that fails at once may still have applied the grant:
        // the id is released in the background all the same.
        let failing = Arc::new(Slow {
            unavailable: true,
            ..Slow::default()
        });
        let backend: Arc<dyn Backend> = failing.clone();
        let outcome = attempt(&backend, &request("r")).await;
        assert!(
            matches!(outcome, Err(BackendError::Unavailable { .. })),
            "{outcome:?}"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while failing.releases.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the unknown outcome was never released"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A slow engine that applies the grant and then loses its answer: the
    /// caller (still there) gets UNAVAILABLE, and the lease, which nobody
    /// knows the id of, is released in the background.
    #[tokio::test]
    async fn a_slow_grant_whose_answer_was_lost_is_released() {
        let slow = Arc::new(Slow {
            lost_answer: true,
            ..Slow::default()
        });
        let backend: Arc<dyn Backend> = slow.clone();
        let outcome = attempt(&backend, &request("r")).await;
        assert!(
            matches!(outcome, Err(BackendError::Unavailable { .. })),
            "{outcome:?}"
        );
        assert_eq!(slow.grants.load(Ordering::SeqCst), 1, "the grant landed");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while backend.current("r").await.ok().flatten().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lease of a lost answer was not released"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A lease granted to a caller that left, and already gone when the
    /// clean-up comes (expired, broken): one release settles it, no
    /// re-checks until its TTL.
    #[tokio::test(start_paused = true)]
    async fn a_granted_orphan_found_gone_is_released_once() {
        let slow = Arc::new(Slow::default());
        let backend: Arc<dyn Backend> = slow.clone();
        release_orphan(backend, request("r"), true).await;
        assert_eq!(slow.releases.load(Ordering::SeqCst), 1);
        // An unknown outcome keeps looking until the TTL has passed.
        let backend: Arc<dyn Backend> = slow.clone();
        release_orphan(backend, request("r"), false).await;
        assert!(slow.releases.load(Ordering::SeqCst) > 2);
    }

    /// An unknown outcome is looked for often in the first minute (pauses
    /// doubling from 0.5 s up to 10 s), then once a minute until the TTL:
    /// 10 looks in the first minute, 21 over a 10-minute TTL.
    #[tokio::test(start_paused = true)]
    async fn an_unknown_outcome_is_looked_for_often_then_once_a_minute() {
        let slow = Arc::new(Slow::default());
        let backend: Arc<dyn Backend> = slow.clone();
        let mut req = (*request("r")).clone();
        req.ttl = Duration::from_secs(600);
        let cleanup = tokio::spawn(release_orphan(backend, Arc::new(req), false));
        tokio::time::sleep(Duration::from_secs(60)).await;
        let first_minute = slow.releases.load(Ordering::SeqCst);
        cleanup.await.expect("clean-up");
        let all = slow.releases.load(Ordering::SeqCst);
        assert!(
            (9..=11).contains(&first_minute),
            "{first_minute} looks in the first minute"
        );
        assert!((19..=23).contains(&all), "{all} looks in 10 minutes");
    }

    /// A grant that lands long after the daemon answered UNAVAILABLE (here
    /// 50 s, past the 36 s that clean-up used to give up after) is still
    /// released within one re-check interval, while its 10-minute lease
    /// would have held the resource for the full TTL.
    #[tokio::test(start_paused = true)]
    async fn a_grant_that_lands_late_is_released_within_its_ttl() {
        let inner = Arc::new(MemoryBackend::default());
        let backend: Arc<dyn Backend> = Arc::new(Slow {
            inner: inner.clone(),
            unavailable: true,
            late: Some(Duration::from_secs(50)),
            ..Slow::default()
        });
        let mut req = (*request("r")).clone();
        req.ttl = Duration::from_secs(600);
        let outcome = attempt(&backend, &Arc::new(req)).await;
        assert!(
            matches!(outcome, Err(BackendError::Unavailable { .. })),
            "{outcome:?}"
        );
        tokio::time::sleep(Duration::from_secs(51)).await;
        assert!(
            inner.current("r").await.expect("current").is_some(),
            "the late grant landed"
        );
        tokio::time::sleep(ORPHAN_RECHECK_LATER).await;
        assert_eq!(
            inner.current("r").await.expect("current"),
            None,
            "the late grant was released by the clean-up"
        );
    }

    /// A backend whose leases have no TTL of their own, as an engine record
    /// stored by an earlier version reads.
    struct Forgetful(MemoryBackend);

    #[async_trait::async_trait]
    impl Backend for Forgetful {
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
        async fn current(&self, resource: &str) -> crate::backend::Result<Option<Lease>> {
            self.0.current(resource).await
        }
        async fn status(
            &self,
            resource: &str,
            id: &LeaseId,
        ) -> crate::backend::Result<LeaseStatus> {
            Ok(match self.0.status(resource, id).await? {
                LeaseStatus::Current(lease) => LeaseStatus::Current(Lease { ttl: None, ..lease }),
                other => other,
            })
        }
        async fn list(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
        ) -> crate::backend::Result<Vec<Lease>> {
            self.0.list(prefix, after, limit).await
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

    /// A lock core with a default TTL of 2 minutes and a maximum of 10 on
    /// `backend`.
    fn core(backend: Arc<dyn Backend>) -> Locks {
        let config = crate::config::Config::parse(
            "[defaults]\nttl = \"2m\"\nmax_ttl = \"10m\"\n[backends.main]\ntype = \"memory\"\n",
            "test",
        )
        .expect("config");
        let router = Router::new(
            &config,
            std::collections::BTreeMap::from([("main".to_string(), backend)]),
        )
        .expect("router");
        let events = Events::new(
            Arc::new(crate::audit::Audit::discard()),
            None,
            Arc::new(crate::changes::Changes::new(config.limits)),
        );
        Locks::new(Arc::new(router), events)
    }

    /// How long `lease` has left, in whole seconds rounded up.
    fn left(lease: &Lease) -> u64 {
        let left = lease
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        left.as_secs() + u64::from(left.subsec_nanos() > 0)
    }

    #[tokio::test]
    async fn a_renewal_without_a_ttl_keeps_the_lease_s_own() {
        let locks = core(Arc::new(MemoryBackend::default()));
        let mut req = (*request("r")).clone();
        req.ttl = Duration::from_secs(5);
        let Ok(Acquisition::Granted(lease)) = locks.route("r").backend.acquire(&req).await else {
            panic!("not granted");
        };
        let (renewed, _) = locks.renew("p", "r", &lease.id, None).await.expect("renew");
        assert_eq!(renewed.ttl, Some(Duration::from_secs(5)));
        assert_eq!(
            left(&renewed),
            5,
            "the lease's own 5 s, not the default 2 min"
        );
        // A TTL given is the lease's own from then on.
        let longer = Some(Duration::from_secs(30));
        locks
            .renew("p", "r", &lease.id, longer)
            .await
            .expect("renew");
        let (renewed, _) = locks.renew("p", "r", &lease.id, None).await.expect("renew");
        assert_eq!(left(&renewed), 30);
        // Not the holder's: refused as any stale renewal is.
        let stranger = LeaseId::generate();
        let refused = locks.renew("p", "r", &stranger, None).await;
        assert!(refused.is_err(), "{refused:?}");
    }

    #[tokio::test]
    async fn a_lease_without_a_ttl_of_its_own_renews_for_the_default_within_the_maximum() {
        let locks = core(Arc::new(Forgetful(MemoryBackend::default())));
        let mut req = (*request("r")).clone();
        req.ttl = Duration::from_secs(5);
        let Ok(Acquisition::Granted(lease)) = locks.route("r").backend.acquire(&req).await else {
            panic!("not granted");
        };
        let (renewed, _) = locks.renew("p", "r", &lease.id, None).await.expect("renew");
        assert_eq!(left(&renewed), 120, "the resource's default TTL");

        // An own TTL above a maximum lowered since is cut to it.
        let locks = core(Arc::new(MemoryBackend::default()));
        req.ttl = Duration::from_secs(3600);
        let Ok(Acquisition::Granted(lease)) = locks.route("r").backend.acquire(&req).await else {
            panic!("not granted");
        };
        let (renewed, _) = locks.renew("p", "r", &lease.id, None).await.expect("renew");
        assert_eq!(left(&renewed), 600, "the resource's maximum TTL");
    }
}
