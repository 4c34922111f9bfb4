//! The in-process target of `bench-direct`: the daemon's own lock core
//! ([`stormlockd::locks::Locks`]) on the backends of a daemon configuration,
//! through the daemon's routing, per-call timeout and waiting line, without
//! gRPC, TLS, validation, authorization or an audit sink.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stormlockd::audit::Audit;
use stormlockd::changes::Changes;
use stormlockd::error::Error;
use stormlockd::events::Events;
use stormlockd::lease::{AcquireRequest, LeaseId};
use stormlockd::locks::{Locks, Outcome, Wait};
use stormlockd::routing::Router;

use crate::{OpError, OpResult, Target};

/// Drives the lock core in-process.
pub struct BackendTarget {
    locks: Locks,
    principal: String,
}

impl BackendTarget {
    /// A target over the backends of `router`, acting as `principal`.
    pub fn new(router: Arc<Router>, principal: impl Into<String>) -> Self {
        let events = Events::new(
            Arc::new(Audit::discard()),
            None,
            Arc::new(Changes::default()),
        );
        Self {
            locks: Locks::new(router, events),
            principal: principal.into(),
        }
    }
}

fn lease_id(id: &str) -> OpResult<LeaseId> {
    LeaseId::parse(id).ok_or_else(|| OpError::new("invalid_lease_id"))
}

/// The bench's error code of a lock core error.
fn op_error(err: Error) -> OpError {
    OpError::new(match &err {
        Error::Backend(err) => err.kind(),
        Error::ShuttingDown(_) | Error::FellBehind(_) => "unavailable",
        Error::ResourceExhausted(_) => "resource_exhausted",
        Error::InvalidArgument(_) => "invalid_argument",
        Error::Unauthenticated(_) => "unauthenticated",
        Error::PermissionDenied(_) => "permission_denied",
        Error::Frozen { .. } => "failed_precondition",
    })
}

#[async_trait]
impl Target for BackendTarget {
    async fn acquire(
        &self,
        _client: usize,
        resource: &str,
        ttl: Duration,
        wait: Duration,
    ) -> OpResult<Option<String>> {
        let request = AcquireRequest {
            resource: resource.to_string(),
            id: LeaseId::generate(),
            principal: self.principal.clone(),
            reason: String::new(),
            ttl,
        };
        let wait = Wait {
            up_to: wait,
            ..Wait::default()
        };
        match self.locks.acquire(request, wait).await.map_err(op_error)? {
            Outcome::Granted(lease, _) => Ok(Some(lease.id.expose().to_string())),
            Outcome::Held(_) | Outcome::Frozen(_) => Ok(None),
        }
    }

    async fn release(&self, _client: usize, resource: &str, id: &str) -> OpResult<()> {
        let id = lease_id(id)?;
        self.locks
            .release(&self.principal, resource, &id)
            .await
            .map_err(op_error)?;
        Ok(())
    }

    async fn renew(&self, _client: usize, resource: &str, id: &str, ttl: Duration) -> OpResult<()> {
        let id = lease_id(id)?;
        self.locks
            .renew(&self.principal, resource, &id, Some(ttl))
            .await
            .map_err(op_error)?;
        Ok(())
    }
}
