//! The gRPC handlers of `stormlock.v1.LockService`: validate, identify the
//! caller, route to a backend, and translate between protobuf and the
//! daemon's own types. Nothing here knows which engine holds a lease.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use crate::audit::{Audit, Event};
use crate::auth::{Auth, Caller};
use crate::backend::Backend;
use crate::backend::BackendError;
use crate::changes::{Changes, Signal};
use crate::config::Action;
use crate::error::Error;
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};
use crate::pb;
use crate::routing::Router;
use crate::validate;
use crate::waiters::Wake;
use crate::watch::{self, EventKind, LockEvent, Selection};
use futures::Stream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

/// Default and largest List page sizes.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
/// How often a waiter re-checks a resource that changes elsewhere (another
/// daemon, expiry between polls).
const WAIT_POLL: Duration = Duration::from_millis(500);
/// Kept free at the end of a caller's deadline so that a waiter still gets
/// its "held" answer instead of DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(200);

/// The lock service.
pub struct LockService {
    router: Arc<Router>,
    auth: Auth,
    audit: Arc<Audit>,
    changes: Arc<Changes>,
    max_wait: Duration,
}

impl LockService {
    /// A service over `router`'s backends.
    pub fn new(router: Arc<Router>, auth: Auth, audit: Arc<Audit>, max_wait: Duration) -> Self {
        Self {
            router,
            auth,
            audit,
            changes: Arc::new(Changes::default()),
            max_wait,
        }
    }

    /// The hub that hears of changes: the server feeds it the engines'
    /// notifications and closes it at shutdown.
    pub fn changes(&self) -> Arc<Changes> {
        self.changes.clone()
    }

    /// Identifies the caller; refusals are audited.
    fn identify<T>(&self, request: &Request<T>, declared: &str) -> Result<Caller, Error> {
        self.auth.caller(request, declared).inspect_err(|e| {
            self.audit.record(&Event {
                event: "unauthenticated",
                principal: declared,
                detail: Some(e.to_string()),
                ..Event::default()
            });
        })
    }

    /// Checks that `caller` may do `action` on `resource`; denials are audited.
    fn permit(&self, caller: &Caller, action: Action, resource: &str) -> Result<(), Error> {
        tracing::Span::current()
            .record("principal", caller.principal.as_str())
            .record("resource", resource);
        self.auth
            .authorize(caller, action, resource)
            .inspect_err(|_| {
                self.audit.record(&Event {
                    event: "denied",
                    principal: &caller.principal,
                    resource: Some(resource),
                    action: Some(action.as_str()),
                    ..Event::default()
                });
            })
    }

    async fn acquire(
        &self,
        caller: &Caller,
        req: pb::AcquireRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::AcquireResponse, Error> {
        let resource = validate::resource(&req.resource)?;
        self.permit(caller, Action::Acquire, resource)?;
        let route = self.router.route(resource);
        let ttl = validate::ttl(req.ttl.as_ref(), route.ttl, route.max_ttl)?;
        let wait = validate::wait(req.wait.as_ref(), self.max_wait)?;
        let reason = validate::reason(&req.reason)?;
        let wait_id = validate::wait_id(&req.wait_id)?;
        let request = Arc::new(AcquireRequest {
            resource: resource.to_string(),
            id: LeaseId::generate(),
            principal: caller.principal.clone(),
            reason: reason.to_string(),
            ttl,
        });
        if wait.is_zero() {
            let outcome = attempt(&route.backend, &request).await?;
            return Ok(self.answer(caller, &request, outcome, None));
        }
        let mut until = Instant::now() + wait;
        if let Some(deadline) = deadline {
            until = until.min(deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline));
        }
        // First come, first served: only the head of the line tries the
        // backend; a caller that goes away leaves the line with its ticket.
        let ticket = self.changes.waiters().enqueue(resource, wait_id);
        // The holder seen by the previous attempt, to notice its expiry.
        let mut last_holder: Option<Lease> = None;
        loop {
            let out_of_time = Instant::now() >= until;
            let head = ticket.is_head();
            if head || out_of_time {
                match attempt(&route.backend, &request).await? {
                    granted @ Acquisition::Granted(_) => {
                        // Leaving the line lets the next caller take its turn.
                        drop(ticket);
                        return Ok(self.answer(caller, &request, granted, last_holder));
                    }
                    Acquisition::Held(holder) if out_of_time => {
                        return Ok(self.answer(caller, &request, Acquisition::Held(holder), None));
                    }
                    Acquisition::Held(holder) => last_holder = Some(holder),
                }
            }
            // Sleep until woken (a change here or reported by the engine),
            // the end of the wait, or, at the head, the next poll or the
            // holder's expiry.
            let mut pause = until.saturating_duration_since(Instant::now());
            if head {
                pause = pause.min(WAIT_POLL);
                if let Some(holder) = &last_holder {
                    let to_expiry = holder
                        .expires_at
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    pause = pause.min(to_expiry + Duration::from_millis(20));
                }
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

    /// The answer to an acquisition, audited and announced. `previous` is
    /// the holder a waiter saw before, to report its expiry.
    fn answer(
        &self,
        caller: &Caller,
        request: &AcquireRequest,
        outcome: Acquisition,
        previous: Option<Lease>,
    ) -> pb::AcquireResponse {
        match outcome {
            Acquisition::Granted(lease) => {
                if let Some(expired) = previous.filter(|h| h.expires_at <= lease.acquired_at) {
                    self.audit.record(&Event {
                        holder: Some(&expired.principal),
                        detail: Some(format!("taken over by fence {}", lease.fence)),
                        ..Event::lease("expired", &expired.principal, &expired)
                    });
                }
                self.audit.record(&Event {
                    reason: Some(&lease.reason),
                    detail: Some(format!(
                        "ttl {}",
                        crate::duration::format_duration(request.ttl)
                    )),
                    ..Event::lease("acquire", &caller.principal, &lease)
                });
                let response = pb::AcquireResponse {
                    acquired: true,
                    lease: Some(to_pb(&lease, caller)),
                    holder: None,
                };
                self.changes.announce(Signal::Acquired(Arc::new(lease)));
                response
            }
            Acquisition::Held(holder) => {
                self.audit.record(&Event {
                    holder: Some(&holder.principal),
                    reason: Some(&request.reason),
                    ..Event::lease("contention", &caller.principal, &holder)
                });
                pb::AcquireResponse {
                    acquired: false,
                    lease: None,
                    holder: Some(to_pb(&holder, caller)),
                }
            }
        }
    }

    async fn renew(
        &self,
        caller: &Caller,
        req: pb::RenewRequest,
    ) -> Result<pb::RenewResponse, Error> {
        let resource = validate::resource(&req.resource)?;
        let id = validate::lease_id(&req.lease_id)?;
        self.permit(caller, Action::Renew, resource)?;
        let route = self.router.route(resource);
        let ttl = validate::ttl(req.ttl.as_ref(), route.ttl, route.max_ttl)?;
        match route.backend.renew(resource, &id, ttl).await {
            Ok(lease) => {
                self.audit.record(&Event {
                    detail: Some(format!("ttl {}", crate::duration::format_duration(ttl))),
                    ..Event::lease("renew", &caller.principal, &lease)
                });
                let response = pb::RenewResponse {
                    lease: Some(to_pb(&lease, caller)),
                };
                self.changes.announce(Signal::Renewed(Arc::new(lease)));
                Ok(response)
            }
            Err(err @ BackendError::NotCurrent { .. }) => {
                self.audit.record(&Event {
                    detail: Some(err.to_string()),
                    ..Event::id("renew_refused", &caller.principal, resource, &id)
                });
                Err(err.into())
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn release(
        &self,
        caller: &Caller,
        req: pb::ReleaseRequest,
    ) -> Result<pb::ReleaseResponse, Error> {
        let resource = validate::resource(&req.resource)?;
        let id = validate::lease_id(&req.lease_id)?;
        self.permit(caller, Action::Release, resource)?;
        let released = self
            .router
            .route(resource)
            .backend
            .release(resource, &id)
            .await?;
        if released {
            self.changes.announce(Signal::Released {
                resource: resource.into(),
                id: id.clone(),
            });
        }
        self.audit.record(&Event {
            detail: Some(
                if released {
                    "released"
                } else {
                    "was not current"
                }
                .to_string(),
            ),
            ..Event::id("release", &caller.principal, resource, &id)
        });
        Ok(pb::ReleaseResponse { released })
    }

    async fn current(
        &self,
        caller: &Caller,
        req: pb::CurrentRequest,
    ) -> Result<pb::CurrentResponse, Error> {
        let resource = validate::resource(&req.resource)?;
        let wait_id = validate::wait_id(&req.wait_id)?;
        self.permit(caller, Action::Read, resource)?;
        let (waiting, place) = self
            .changes
            .waiters()
            .position(resource, wait_id.unwrap_or_default());
        let lease = self
            .router
            .route(resource)
            .backend
            .current(resource)
            .await?;
        Ok(pb::CurrentResponse {
            lease: lease.map(|l| to_pb(&l, caller)),
            waiting: u32::try_from(waiting).unwrap_or(u32::MAX),
            queue_position: u32::try_from(place).unwrap_or(u32::MAX),
        })
    }

    async fn is_held(
        &self,
        caller: &Caller,
        req: pb::IsHeldRequest,
    ) -> Result<pb::IsHeldResponse, Error> {
        let resource = validate::resource(&req.resource)?;
        let id = validate::lease_id(&req.lease_id)?;
        self.permit(caller, Action::Read, resource)?;
        let status = self
            .router
            .route(resource)
            .backend
            .status(resource, &id)
            .await?;
        match status {
            LeaseStatus::Current(_) => Ok(pb::IsHeldResponse { held: true }),
            LeaseStatus::NotCurrent { evicted: None } => Ok(pb::IsHeldResponse { held: false }),
            // The evicted holder learns who broke its lease and why.
            LeaseStatus::NotCurrent { evicted } => Err(BackendError::NotCurrent { evicted }.into()),
        }
    }

    async fn list(&self, caller: &Caller, req: pb::ListRequest) -> Result<pb::ListResponse, Error> {
        let prefix = validate::prefix(&req.prefix)?;
        self.permit(caller, Action::List, prefix)?;
        let after = validate::page_token(&req.page_token, prefix)?;
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let (leases, more) = self.router.list(prefix, after.as_deref(), limit).await?;
        let next_page_token = match leases.last() {
            Some(last) if more => validate::make_page_token(&last.resource),
            _ => String::new(),
        };
        Ok(pb::ListResponse {
            leases: leases.iter().map(|l| to_pb(l, caller)).collect(),
            next_page_token,
        })
    }

    async fn force_release(
        &self,
        caller: &Caller,
        req: pb::ForceReleaseRequest,
    ) -> Result<pb::ForceReleaseResponse, Error> {
        let resource = validate::resource(&req.resource)?;
        let reason = validate::reason(&req.reason)?;
        if reason.trim().is_empty() {
            return Err(Error::invalid("reason is required to force-release"));
        }
        self.permit(caller, Action::ForceRelease, resource)?;
        let broken = self
            .router
            .route(resource)
            .backend
            .force_release(resource, &caller.principal, reason)
            .await?;
        if let Some(lease) = &broken {
            self.audit.record(&Event {
                holder: Some(&lease.principal),
                reason: Some(reason),
                ..Event::lease("force_release", &caller.principal, lease)
            });
        }
        let response = pb::ForceReleaseResponse {
            released: broken.as_ref().map(|l| to_pb(l, caller)),
        };
        if let Some(lease) = broken {
            self.changes.announce(Signal::ForceReleased {
                lease: Arc::new(lease),
                actor: caller.principal.as_str().into(),
                reason: reason.into(),
            });
        }
        Ok(response)
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
/// granted for sure (the caller left); else the grant may still land, so
/// look again a few times before giving up.
async fn release_orphan(backend: Arc<dyn Backend>, request: Arc<AcquireRequest>, granted: bool) {
    let mut after = Duration::ZERO;
    for pause in [0, 1, 5, 30].map(Duration::from_secs) {
        after += pause;
        if after > request.ttl {
            return;
        }
        tokio::time::sleep(pause).await;
        match backend.release(&request.resource, &request.id).await {
            Ok(true) => {
                tracing::info!(
                    resource = request.resource.as_str(),
                    lease = %request.id,
                    "released a lease whose caller went away before it was granted"
                );
                return;
            }
            Ok(false) if granted => return,
            Ok(false) | Err(_) => {}
        }
    }
}

/// A lease for the wire; the id only for its holder and administrators.
fn to_pb(lease: &Lease, caller: &Caller) -> pb::Lease {
    pb::Lease {
        resource: lease.resource.clone(),
        lease_id: if caller.may_see_lease_of(&lease.principal) {
            lease.id.expose().to_string()
        } else {
            String::new()
        },
        principal: lease.principal.clone(),
        reason: lease.reason.clone(),
        acquired_at: Some(lease.acquired_at.into()),
        expires_at: Some(lease.expires_at.into()),
        fence: lease.fence,
    }
}

/// A watch event for the wire; lease ids as in [`to_pb`].
fn event_to_pb(event: &LockEvent, caller: &Caller) -> pb::WatchResponse {
    let kind = match event.kind {
        EventKind::Acquired => pb::EventType::Acquired,
        EventKind::Renewed => pb::EventType::Renewed,
        EventKind::Released => pb::EventType::Released,
        EventKind::Expired => pb::EventType::Expired,
        EventKind::ForceReleased => pb::EventType::ForceReleased,
    };
    let (actor, reason) = event.broken_by.clone().unwrap_or_default();
    pb::WatchResponse {
        r#type: kind.into(),
        lease: Some(to_pb(&event.lease, caller)),
        observed_at: Some(event.observed_at.into()),
        actor,
        reason,
    }
}

/// The caller's deadline from the `grpc-timeout` header, if any.
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lock_service_server::LockService for LockService {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let caller = self.identify(&request, &request.get_ref().principal)?;
        let deadline = deadline(&request);
        Ok(Response::new(
            self.acquire(&caller, request.into_inner(), deadline)
                .await?,
        ))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = self.identify(&request, "")?;
        Ok(Response::new(
            self.release(&caller, request.into_inner()).await?,
        ))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let caller = self.identify(&request, "")?;
        Ok(Response::new(
            self.renew(&caller, request.into_inner()).await?,
        ))
    }

    async fn current(
        &self,
        request: Request<pb::CurrentRequest>,
    ) -> Result<Response<pb::CurrentResponse>, Status> {
        let caller = self.identify(&request, "")?;
        Ok(Response::new(
            self.current(&caller, request.into_inner()).await?,
        ))
    }

    async fn is_held(
        &self,
        request: Request<pb::IsHeldRequest>,
    ) -> Result<Response<pb::IsHeldResponse>, Status> {
        let caller = self.identify(&request, "")?;
        Ok(Response::new(
            self.is_held(&caller, request.into_inner()).await?,
        ))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let caller = self.identify(&request, "")?;
        Ok(Response::new(
            self.list(&caller, request.into_inner()).await?,
        ))
    }

    async fn force_release(
        &self,
        request: Request<pb::ForceReleaseRequest>,
    ) -> Result<Response<pb::ForceReleaseResponse>, Status> {
        let caller = self.identify(&request, "")?;
        Ok(Response::new(
            self.force_release(&caller, request.into_inner()).await?,
        ))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.identify(&request, "")?;
        let req = request.into_inner();
        let selection = match (req.resource.is_empty(), req.prefix.is_empty()) {
            (false, false) => {
                return Err(Error::invalid("set either resource or prefix, not both").into());
            }
            (false, true) => Selection::Resource(validate::resource(&req.resource)?.to_string()),
            (true, _) => Selection::Prefix(validate::prefix(&req.prefix)?.to_string()),
        };
        let scope = match &selection {
            Selection::Resource(r) | Selection::Prefix(r) => r.as_str(),
        };
        self.permit(&caller, Action::Watch, scope)?;
        let events = watch::start(self.router.clone(), self.changes.clone(), selection);
        let stream = tokio_stream::wrappers::ReceiverStream::new(events).map(move |item| {
            item.map(|event| event_to_pb(&event, &caller))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A memory backend whose grants take a while, as over a slow network
    /// (or which fails them at once, when `unavailable`), and which counts
    /// grants and releases.
    #[derive(Default)]
    struct Slow {
        inner: MemoryBackend,
        unavailable: bool,
        grants: AtomicUsize,
        releases: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Backend for Slow {
        async fn acquire(&self, req: &AcquireRequest) -> crate::backend::Result<Acquisition> {
            if self.unavailable {
                return Err(BackendError::unavailable("slow", "connection refused"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let outcome = self.inner.acquire(req).await;
            if matches!(outcome, Ok(Acquisition::Granted(_))) {
                self.grants.fetch_add(1, Ordering::SeqCst);
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
}
