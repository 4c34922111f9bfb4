//! The gRPC handlers of `stormlock.v1.LockService`: identify the caller,
//! validate the request, permit the action, hand it to the lock core
//! ([`crate::locks`]) and translate its answer to protobuf. Nothing here
//! knows which engine holds a lease, or what waiting means.

use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::auth::{Auth, Caller};
use crate::config::Action;
use crate::error::{Error, window_to_pb};
use crate::events::LockEvent;
use crate::lease::{AcquireRequest, Lease, LeaseId};
use crate::locks::{Locks, Outcome, Wait};
use crate::pb;
use crate::reservations::{Ask, Booking, Reservation};
use crate::validate;
use crate::watch::{EventKind, Selection, WatchEvent};
use crate::window_events::{WindowEvent, WindowEventKind};
use futures::Stream;
use tonic::{Request, Response, Status};

/// Default and largest List page sizes.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
/// Leases one List call looks at, at most, for a caller who may not see
/// them all; past it, an empty page is an error asking for a narrower prefix.
const MAX_EXAMINED: usize = 10 * MAX_PAGE_SIZE;

/// The lock service.
pub struct LockService {
    locks: Arc<Locks>,
    /// Who is who, who may do what, the longest wait: replaced whole by a
    /// reload, read once per check.
    policy: Policies,
}

/// What a reload may change in the service.
#[derive(Debug)]
pub struct Policy {
    /// Authentication, administrators and access rules.
    pub auth: Auth,
    /// No acquisition waits longer.
    pub max_wait: Duration,
}

/// The [`Policy`] in force, shared by the service, its watch streams and
/// whoever reloads it: each call reads the policy current when it checks,
/// so a revoked token is refused from the next call on.
#[derive(Debug, Clone)]
pub struct Policies(Arc<RwLock<Arc<Policy>>>);

impl Policies {
    /// Starts with `policy`.
    pub fn new(policy: Policy) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(policy))))
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        // Replaced whole, so never seen half-written, even after a panic.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `policy` in force for every call from now on.
    pub fn replace(&self, policy: Policy) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
    }
}

impl LockService {
    /// The gRPC face of `locks`, identifying and authorizing with `auth`;
    /// no acquisition waits longer than `max_wait`.
    pub fn new(locks: Arc<Locks>, auth: Auth, max_wait: Duration) -> Self {
        Self::with_policies(locks, Policies::new(Policy { auth, max_wait }))
    }

    /// The gRPC face of `locks` under the policy in force in `policy`.
    pub fn with_policies(locks: Arc<Locks>, policy: Policies) -> Self {
        Self { locks, policy }
    }

    /// Identifies the caller; refusals are audited.
    fn identify<T>(&self, request: &Request<T>, declared: &str) -> Result<Caller, Error> {
        self.policy
            .current()
            .auth
            .caller(request, declared)
            .inspect_err(|e| {
                self.locks.events().emit(LockEvent::Unauthenticated {
                    declared: declared.to_string(),
                    detail: e.to_string(),
                });
            })
    }

    /// Checks that `caller` may do `action` on `resource`; denials are audited.
    fn permit(&self, caller: &Caller, action: Action, resource: &str) -> Result<(), Error> {
        tracing::Span::current()
            .record("principal", caller.principal.as_str())
            .record("resource", resource);
        self.policy
            .current()
            .auth
            .authorize(caller, action, resource)
            .inspect_err(|_| {
                self.locks.events().emit(LockEvent::Denied {
                    principal: caller.principal.clone(),
                    action,
                    resource: resource.to_string(),
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
        let route = self.locks.route(resource);
        let ttls = route.ttls();
        let ttl = validate::ttl(req.ttl.as_ref(), ttls.ttl, ttls.max_ttl)?;
        let wait = Wait {
            up_to: validate::wait(req.wait.as_ref(), self.policy.current().max_wait)?,
            deadline,
            wait_id: validate::wait_id(&req.wait_id)?.map(str::to_string),
        };
        let request = AcquireRequest {
            resource: resource.to_string(),
            id: LeaseId::generate(),
            principal: caller.principal.clone(),
            reason: validate::reason(&req.reason)?.to_string(),
            ttl,
        };
        Ok(match self.locks.acquire(request, wait).await? {
            Outcome::Granted(lease, cut) => pb::AcquireResponse {
                acquired: true,
                lease: Some(own_to_pb(&lease)),
                cut_short_by: cut.as_ref().map(window_to_pb),
                ..Default::default()
            },
            Outcome::Held(holder) => pb::AcquireResponse {
                acquired: false,
                holder: Some(to_pb(&holder, caller)),
                ..Default::default()
            },
            Outcome::Frozen(window) => pb::AcquireResponse {
                acquired: false,
                window: Some(window_to_pb(&window)),
                ..Default::default()
            },
        })
    }

    async fn renew(
        &self,
        caller: &Caller,
        req: pb::RenewRequest,
    ) -> Result<pb::RenewResponse, Error> {
        let resource = validate::resource(&req.resource)?;
        let id = validate::lease_id(&req.lease_id)?;
        self.permit(caller, Action::Renew, resource)?;
        let route = self.locks.route(resource);
        let ttls = route.ttls();
        // Unset: the lease's own TTL, which the lock core reads.
        let ttl = req
            .ttl
            .as_ref()
            .map(|ttl| validate::ttl(Some(ttl), ttls.ttl, ttls.max_ttl))
            .transpose()?;
        let (lease, cut) = self
            .locks
            .renew(&caller.principal, resource, &id, ttl)
            .await?;
        Ok(pb::RenewResponse {
            lease: Some(own_to_pb(&lease)),
            cut_short_by: cut.as_ref().map(window_to_pb),
        })
    }

    async fn release(
        &self,
        caller: &Caller,
        req: pb::ReleaseRequest,
    ) -> Result<pb::ReleaseResponse, Error> {
        let resource = validate::resource(&req.resource)?;
        let id = validate::lease_id(&req.lease_id)?;
        self.permit(caller, Action::Release, resource)?;
        let released = self.locks.release(&caller.principal, resource, &id).await?;
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
        let current = self.locks.current(resource, wait_id).await?;
        Ok(pb::CurrentResponse {
            lease: current.lease.map(|l| to_pb(&l, caller)),
            waiting: u32::try_from(current.waiting).unwrap_or(u32::MAX),
            queue_position: u32::try_from(current.place).unwrap_or(u32::MAX),
            window: self
                .locks
                .window(resource, &caller.principal)
                .as_ref()
                .map(window_to_pb),
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
        let held = self.locks.is_held(resource, &id).await?;
        Ok(pb::IsHeldResponse { held })
    }

    async fn list(&self, caller: &Caller, req: pb::ListRequest) -> Result<pb::ListResponse, Error> {
        let prefix = validate::prefix(&req.prefix)?;
        let mut after = validate::page_token(&req.page_token, prefix)?;
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        tracing::Span::current()
            .record("principal", caller.principal.as_str())
            .record("resource", prefix);
        // Filtered per resource, not judged on the prefix: a caller sees
        // exactly the leases it may list, whatever prefix it asks for. A
        // page token only ever names a lease the caller saw, so it leaks no
        // hidden name; the pages go on past hidden leases, up to a bound.
        let mut visible = Vec::new();
        let mut examined = 0;
        loop {
            let (batch, more) = self.locks.list(prefix, after.as_deref(), limit).await?;
            // A page that moves nothing forward cannot be followed.
            let more = more && !batch.is_empty();
            examined += batch.len();
            let last_of_batch = batch.len();
            for (n, lease) in batch.into_iter().enumerate() {
                after = Some(lease.resource.clone());
                if !self.may_see(caller, Action::List, &lease.resource) {
                    continue;
                }
                visible.push(lease);
                if visible.len() == limit {
                    return Ok(self.page(&visible, caller, more || n + 1 < last_of_batch));
                }
            }
            if !more {
                return Ok(self.page(&visible, caller, false));
            }
            if examined >= MAX_EXAMINED {
                if visible.is_empty() {
                    return Err(Error::PermissionDenied(format!(
                        "more than {MAX_EXAMINED} leases under {prefix:?} are not visible to {}; \
                         list a narrower prefix",
                        caller.principal
                    )));
                }
                return Ok(self.page(&visible, caller, true));
            }
        }
    }

    /// Whether `caller` may see `resource` in a List or Watch (`action`).
    /// Not audited as a denial: hiding is the answer, not a refusal.
    fn may_see(&self, caller: &Caller, action: Action, resource: &str) -> bool {
        self.policy
            .current()
            .auth
            .authorize(caller, action, resource)
            .is_ok()
    }

    /// A List answer of `leases`, with a token after the last when `more`.
    fn page(&self, leases: &[Lease], caller: &Caller, more: bool) -> pb::ListResponse {
        let next_page_token = match leases.last() {
            Some(last) if more => validate::make_page_token(&last.resource),
            _ => String::new(),
        };
        pb::ListResponse {
            leases: leases.iter().map(|l| to_pb(l, caller)).collect(),
            next_page_token,
        }
    }

    async fn reserve(
        &self,
        caller: &Caller,
        req: pb::ReserveRequest,
    ) -> Result<pb::ReserveResponse, Error> {
        let resource = validate::resource(&req.resource)?;
        let reason = validate::reason(&req.reason)?;
        if reason.trim().is_empty() {
            return Err(Error::invalid(
                "reason is required to reserve: it is shown to everyone refused during it",
            ));
        }
        let ends_at = time(
            "ends_at",
            req.ends_at
                .ok_or_else(|| Error::invalid("ends_at is required: when the reservation ends"))?,
        )?;
        let starts_at = req.starts_at.map(|t| time("starts_at", t)).transpose()?;
        self.permit(caller, Action::Reserve, resource)?;
        let ask = Ask {
            resource: resource.to_string(),
            owner: caller.principal.clone(),
            reason: reason.to_string(),
            starts_at,
            ends_at,
        };
        Ok(match self.locks.reserve(ask).await? {
            Booking::Reserved(r) => pb::ReserveResponse {
                reserved: true,
                reservation: Some(reservation_to_pb(&r)),
                overlapping: None,
            },
            Booking::Overlaps(r) => pb::ReserveResponse {
                reserved: false,
                reservation: None,
                overlapping: Some(reservation_to_pb(&r)),
            },
        })
    }

    async fn unreserve(
        &self,
        caller: &Caller,
        req: pb::UnreserveRequest,
    ) -> Result<pb::UnreserveResponse, Error> {
        let resource = validate::resource(&req.resource)?;
        let id = reservation_id(&req.id)?;
        let reason = validate::reason(&req.reason)?;
        self.permit(caller, Action::Reserve, resource)?;
        let cancelled = self
            .locks
            .unreserve(resource, id, &caller.principal, caller.admin, reason)
            .await?;
        Ok(pb::UnreserveResponse {
            cancelled: cancelled.as_ref().map(reservation_to_pb),
        })
    }

    async fn list_reservations(
        &self,
        caller: &Caller,
        req: pb::ListReservationsRequest,
    ) -> Result<pb::ListReservationsResponse, Error> {
        let prefix = validate::prefix(&req.prefix)?;
        tracing::Span::current()
            .record("principal", caller.principal.as_str())
            .record("resource", prefix);
        // As List: each reservation shown only to whoever may list its
        // resource.
        let reservations = self
            .locks
            .reservations()
            .list(prefix)
            .await?
            .iter()
            .filter(|r| self.may_see(caller, Action::List, &r.resource))
            .map(reservation_to_pb)
            .collect();
        let now = SystemTime::now();
        let freezes = self
            .locks
            .freezes()
            .iter()
            .filter(|f| f.patterns().any(|p| may_cover(p, prefix)))
            .map(|f| pb::Freeze {
                window: f.current_or_next(now).as_ref().map(window_to_pb),
                patterns: f.patterns().map(str::to_string).collect(),
                schedule: f.schedule().to_string(),
            })
            .collect();
        Ok(pb::ListReservationsResponse {
            reservations,
            freezes,
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
            .locks
            .force_release(&caller.principal, resource, reason)
            .await?;
        Ok(pb::ForceReleaseResponse {
            released: broken.as_ref().map(|l| to_pb(l, caller)),
        })
    }
}

/// The id of a reservation as a client sends it.
fn reservation_id(id: &str) -> Result<&str, Error> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::invalid(format!(
            "reservation id {id:?} is not one this daemon gives (letters and digits): \
             see `stormlock reservations`"
        )));
    }
    Ok(id)
}

/// A time a client sent.
fn time(field: &str, t: prost_types::Timestamp) -> Result<SystemTime, Error> {
    SystemTime::try_from(t).map_err(|e| Error::invalid(format!("{field} is not a time: {e}")))
}

/// A reservation for the wire.
fn reservation_to_pb(r: &Reservation) -> pb::Reservation {
    pb::Reservation {
        id: r.id.clone(),
        resource: r.resource.clone(),
        owner: r.owner.clone(),
        reason: r.reason.clone(),
        starts_at: Some(r.starts_at.into()),
        ends_at: Some(r.ends_at.into()),
        created_at: Some(r.created_at.into()),
    }
}

/// Whether `pattern` can match a name under `prefix`: its literal start
/// (up to its first wildcard) and the prefix agree.
fn may_cover(pattern: &str, prefix: &str) -> bool {
    let literal = pattern
        .find(['*', '?', '[', '{'])
        .map_or(pattern, |at| &pattern[..at]);
    literal.starts_with(prefix) || prefix.starts_with(literal)
}

/// A lease for the wire; the id only for its holder and administrators.
fn to_pb(lease: &Lease, caller: &Caller) -> pb::Lease {
    lease_to_pb(lease, caller.may_see_lease_of(&lease.principal))
}

/// The caller's own lease (just granted, or renewed with its id): with
/// its id, whoever the caller is.
fn own_to_pb(lease: &Lease) -> pb::Lease {
    lease_to_pb(lease, true)
}

fn lease_to_pb(lease: &Lease, with_id: bool) -> pb::Lease {
    pb::Lease {
        resource: lease.resource.clone(),
        lease_id: if with_id {
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
fn event_to_pb(event: &WatchEvent, caller: &Caller) -> pb::WatchResponse {
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
        window: None,
    }
}

/// A window event for the wire.
fn window_event_to_pb(event: &WindowEvent) -> pb::WatchResponse {
    let kind = match event.kind {
        WindowEventKind::FreezeStarted => pb::EventType::FreezeStarted,
        WindowEventKind::FreezeEnded => pb::EventType::FreezeEnded,
        WindowEventKind::Reserved => pb::EventType::Reserved,
        WindowEventKind::Unreserved => pb::EventType::Unreserved,
    };
    pb::WatchResponse {
        r#type: kind.into(),
        lease: None,
        observed_at: Some(event.observed_at.into()),
        actor: String::new(),
        reason: String::new(),
        window: Some(window_to_pb(&event.window)),
    }
}

/// The window events of `receiver` as a stream (a watch that fell behind
/// on them skips what it missed: they are rare, and the state is one
/// `reservations` away).
fn window_stream(
    receiver: tokio::sync::broadcast::Receiver<WindowEvent>,
) -> impl Stream<Item = WindowEvent> + Send {
    futures::stream::unfold(receiver, |mut receiver| async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match receiver.recv().await {
                Ok(event) => return Some((event, receiver)),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
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

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let caller = self.identify(&request, &request.get_ref().principal)?;
        Ok(Response::new(
            self.reserve(&caller, request.into_inner()).await?,
        ))
    }

    async fn unreserve(
        &self,
        request: Request<pb::UnreserveRequest>,
    ) -> Result<Response<pb::UnreserveResponse>, Status> {
        let caller = self.identify(&request, &request.get_ref().principal)?;
        Ok(Response::new(
            self.unreserve(&caller, request.into_inner()).await?,
        ))
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let caller = self.identify(&request, "")?;
        Ok(Response::new(
            self.list_reservations(&caller, request.into_inner())
                .await?,
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
        // One resource is judged as asked; a prefix is filtered per
        // resource, like List: a watch shows exactly what its caller may
        // watch. The filter runs as events are handed out, so hidden events
        // take no place in the watch's queue.
        // Window events of the selection: freezes that may cover it, and
        // reservations of its resources the caller may watch.
        let windows = {
            let (policy, watcher, selection) =
                (self.policy.clone(), caller.clone(), selection.clone());
            let selected = move |event: &WindowEvent| match (&event.freeze, &selection) {
                (Some(freeze), Selection::Resource(resource)) => freeze.covers(resource),
                (Some(freeze), Selection::Prefix(prefix)) => {
                    freeze.patterns().any(|p| may_cover(p, prefix))
                }
                (None, selection) => {
                    let resource = &event.window.resource;
                    let inside = match selection {
                        Selection::Resource(r) => r == resource,
                        Selection::Prefix(p) => resource.starts_with(p.as_str()),
                    };
                    inside
                        && policy
                            .current()
                            .auth
                            .authorize(&watcher, Action::Watch, resource)
                            .is_ok()
                }
            };
            futures::StreamExt::filter_map(window_stream(self.locks.window_events()), move |e| {
                futures::future::ready(selected(&e).then(|| Some(Ok(window_event_to_pb(&e)))))
            })
        };
        let events = match &selection {
            Selection::Resource(resource) => {
                self.permit(&caller, Action::Watch, resource)?;
                self.locks.watch(&caller.principal, selection)?
            }
            Selection::Prefix(_) => {
                // The rules in force when each event is handed out: a
                // reload that takes a right away hides what follows.
                let (policy, watcher) = (self.policy.clone(), caller.clone());
                let filter: crate::watch::Filter = Arc::new(move |event: &WatchEvent| {
                    policy
                        .current()
                        .auth
                        .authorize(&watcher, Action::Watch, &event.lease.resource)
                        .is_ok()
                });
                self.locks
                    .watch_filtered(&caller.principal, selection, filter)?
            }
        };
        // The lease events end the watch (an error, the shutdown); the
        // window events come in between.
        let leases = futures::StreamExt::chain(
            futures::StreamExt::map(events, move |item| {
                Some(
                    item.map(|event| event_to_pb(&event, &caller))
                        .map_err(Status::from),
                )
            }),
            futures::stream::once(futures::future::ready(None)),
        );
        let merged = futures::stream::select(leases, windows);
        let stream = futures::StreamExt::filter_map(
            futures::StreamExt::take_while(merged, |item| futures::future::ready(item.is_some())),
            futures::future::ready,
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
