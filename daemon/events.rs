//! What happened: one typed [`LockEvent`] per outcome of the lock core and
//! of the service's gate (authentication, authorization), emitted once
//! through [`Events`] and fanned out to every consumer — the audit log, the
//! metrics, the change hub (waiters and watches) and the webhooks. Consumers match on the
//! variants; nothing downstream compares event names as strings.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::Audit;
use crate::changes::Changes;
use crate::config::Action;
use crate::lease::{Lease, LeaseId};
use crate::metrics::Metrics;
use crate::notify::Notify;
use crate::windows::Window;

/// One outcome.
#[derive(Debug, Clone)]
pub enum LockEvent {
    /// A lease was granted.
    Acquired {
        /// The new lease.
        lease: Arc<Lease>,
        /// The TTL it was granted for.
        ttl: Duration,
        /// The previous holder, when a waiter saw it and its lease had lapsed
        /// by the time of this grant: its expiry, noticed.
        expired: Option<Lease>,
        /// Whether the caller waited for it (was refused at first, or stood
        /// behind others in the line).
        waited: bool,
    },
    /// A caller joined the line for a resource: refused at first, it waits.
    Waiting {
        /// Who waits.
        principal: String,
        /// The resource.
        resource: String,
        /// The reason they gave.
        reason: String,
        /// The holder their first attempt saw, if they tried (the head of
        /// the line does; the others wait for their turn).
        holder: Option<Lease>,
    },
    /// An acquisition was refused: `holder` holds the resource.
    Contended {
        /// Who asked.
        principal: String,
        /// The reason they gave.
        reason: String,
        /// The current lease.
        holder: Lease,
    },
    /// An acquisition was refused by a window (a freeze) in force.
    Frozen {
        /// Who asked.
        principal: String,
        /// The resource.
        resource: String,
        /// The reason they gave.
        reason: String,
        /// The window that refused them.
        window: Window,
    },
    /// A lease got a new expiry.
    Renewed {
        /// Who renewed it (its holder, or an administrator).
        principal: String,
        /// The lease after renewal.
        lease: Arc<Lease>,
        /// The TTL it was renewed for.
        ttl: Duration,
    },
    /// A renewal was refused because the lease is not current.
    RenewRefused {
        /// Who asked.
        principal: String,
        /// The resource.
        resource: String,
        /// The lease that is not current.
        id: LeaseId,
        /// Why, for people (e.g. who broke it).
        detail: String,
    },
    /// A release was asked for.
    Released {
        /// Who asked.
        principal: String,
        /// The resource.
        resource: Arc<str>,
        /// The lease.
        id: LeaseId,
        /// Whether the lease was still current (else nothing changed).
        was_current: bool,
    },
    /// An administrator broke a lease.
    ForceReleased {
        /// The broken lease.
        lease: Arc<Lease>,
        /// The administrator.
        actor: Arc<str>,
        /// Why.
        reason: Arc<str>,
    },
    /// A resource was booked.
    Reserved {
        /// The new reservation.
        reservation: crate::reservations::Reservation,
    },
    /// A reservation was cancelled.
    Unreserved {
        /// Who cancelled it (its owner, or an administrator).
        actor: String,
        /// The cancelled reservation.
        reservation: crate::reservations::Reservation,
        /// Why (given by an administrator; may be empty for the owner).
        reason: String,
    },
    /// A caller was refused an action.
    Denied {
        /// The caller.
        principal: String,
        /// What they tried.
        action: Action,
        /// On what.
        resource: String,
    },
    /// A request came with no acceptable credentials.
    Unauthenticated {
        /// The principal the request declared, if any.
        declared: String,
        /// Why it was refused.
        detail: String,
    },
}

/// Where events go: built once by the server, shared by the service and
/// the lock core.
#[derive(Clone)]
pub struct Events {
    audit: Arc<Audit>,
    metrics: Option<Arc<Metrics>>,
    changes: Arc<Changes>,
    notify: Arc<Notify>,
}

impl Events {
    /// Events recorded in `audit`, counted in `metrics` (when given) and
    /// announced to `changes`.
    pub fn new(audit: Arc<Audit>, metrics: Option<Arc<Metrics>>, changes: Arc<Changes>) -> Self {
        Self {
            audit,
            metrics,
            changes,
            notify: Arc::new(Notify::default()),
        }
    }

    /// The webhooks (`[[notify]]`; none until set).
    pub fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }

    /// The change hub (waiters, watches).
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    /// The metrics, when the daemon keeps them (for what is not a lock
    /// event: open watches, refusals by a limit).
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Fans `event` out to every consumer.
    pub fn emit(&self, event: LockEvent) {
        self.audit.record(&event);
        if let Some(metrics) = &self.metrics {
            metrics.lock_event(&event);
        }
        self.changes.announce_event(&event);
        self.notify.offer(&event);
    }
}
