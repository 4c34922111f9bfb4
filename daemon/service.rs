//! The gRPC handlers of `stormlock.v1.LockService`: validate, identify the
//! caller, route to a backend, and translate between protobuf and the
//! daemon's own types. Nothing here knows which engine holds a lease.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::audit::{Audit, Event};
use crate::auth::{Auth, Caller};
use crate::backend::BackendError;
use crate::config::Action;
use crate::error::Error;
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};
use crate::pb;
use crate::routing::Router;
use crate::validate;
use crate::waiters::Waiters;
use futures::Stream;
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
    waiters: Arc<Waiters>,
    max_wait: Duration,
}

impl LockService {
    /// A service over `router`'s backends.
    pub fn new(router: Arc<Router>, auth: Auth, audit: Arc<Audit>, max_wait: Duration) -> Self {
        Self {
            router,
            auth,
            audit,
            waiters: Arc::default(),
            max_wait,
        }
    }

    /// The waiters on this service's resources (for metrics).
    pub fn waiters(&self) -> Arc<Waiters> {
        self.waiters.clone()
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
        let request = AcquireRequest {
            resource: resource.to_string(),
            id: LeaseId::generate(),
            principal: caller.principal.clone(),
            reason: reason.to_string(),
            ttl,
        };
        let mut until = Instant::now() + wait;
        if let Some(deadline) = deadline {
            until = until.min(deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline));
        }
        let waiter = (!wait.is_zero()).then(|| self.waiters.register(resource));
        // The holder seen by the previous attempt, to notice its expiry.
        let mut last_holder: Option<Lease> = None;
        loop {
            let notified = waiter.as_ref().map(|w| {
                let mut notified = Box::pin(w.notify().notified());
                notified.as_mut().enable();
                notified
            });
            match route.backend.acquire(&request).await? {
                Acquisition::Granted(lease) => {
                    if let Some(expired) = last_holder.filter(|h| h.expires_at <= lease.acquired_at)
                    {
                        self.audit.record(&Event {
                            holder: Some(&expired.principal),
                            detail: Some(format!("taken over by fence {}", lease.fence)),
                            ..Event::lease("expired", &expired.principal, &expired)
                        });
                    }
                    self.audit.record(&Event {
                        reason: Some(&lease.reason),
                        detail: Some(format!("ttl {}", crate::duration::format_duration(ttl))),
                        ..Event::lease("acquire", &caller.principal, &lease)
                    });
                    return Ok(pb::AcquireResponse {
                        acquired: true,
                        lease: Some(to_pb(&lease, caller)),
                        holder: None,
                    });
                }
                Acquisition::Held(holder) => {
                    let now = Instant::now();
                    let Some(notified) = notified.filter(|_| now < until) else {
                        self.audit.record(&Event {
                            holder: Some(&holder.principal),
                            reason: Some(&request.reason),
                            ..Event::lease("contention", &caller.principal, &holder)
                        });
                        return Ok(pb::AcquireResponse {
                            acquired: false,
                            lease: None,
                            holder: Some(to_pb(&holder, caller)),
                        });
                    };
                    let to_expiry = holder
                        .expires_at
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    last_holder = Some(holder.clone());
                    let pause = (until - now)
                        .min(WAIT_POLL)
                        .min(to_expiry + Duration::from_millis(20));
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
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
                Ok(pb::RenewResponse {
                    lease: Some(to_pb(&lease, caller)),
                })
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
            self.waiters.wake(resource);
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
        self.permit(caller, Action::Read, resource)?;
        let lease = self
            .router
            .route(resource)
            .backend
            .current(resource)
            .await?;
        Ok(pb::CurrentResponse {
            lease: lease.map(|l| to_pb(&l, caller)),
            ..Default::default()
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
        // Each backend returns its own sorted page; merging them and keeping
        // the first `limit` gives a correct page across backends.
        let pages =
            futures::future::try_join_all(self.router.backends().iter().map(|(name, backend)| {
                let after = after.as_deref();
                async move {
                    let leases = backend.list(prefix, after, limit).await?;
                    Ok::<_, BackendError>(
                        leases
                            .into_iter()
                            .filter(|l| &self.router.route(&l.resource).backend_name == name)
                            .collect::<Vec<_>>(),
                    )
                }
            }))
            .await?;
        let mut leases: Vec<Lease> = pages.into_iter().flatten().collect();
        leases.sort_by(|a, b| a.resource.cmp(&b.resource));
        let more = leases.len() > limit;
        leases.truncate(limit);
        let next_page_token = match leases.last() {
            Some(last) if more || leases.len() == limit => {
                validate::make_page_token(&last.resource)
            }
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
            self.waiters.wake(resource);
            self.audit.record(&Event {
                holder: Some(&lease.principal),
                reason: Some(reason),
                ..Event::lease("force_release", &caller.principal, lease)
            });
        }
        Ok(pb::ForceReleaseResponse {
            released: broken.map(|l| to_pb(&l, caller)),
        })
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
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("Watch is not implemented yet"))
    }
}
