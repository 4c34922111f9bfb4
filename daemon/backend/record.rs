//! The lease state machine of one resource, judged on a given clock. The
//! `memory` and `embedded` backends keep one [`Record`] per resource and apply
//! these transitions; engines with their own atomic primitives (SQL, Redis,
//! etcd, DynamoDB) implement the same rules natively.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::BackendError;
use crate::lease::{AcquireRequest, Acquisition, Eviction, Lease, LeaseId, LeaseStatus};

/// Everything stored for one resource. It outlives its leases so the fence
/// never goes back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    /// The highest fence ever granted on this resource.
    pub fence: u64,
    /// The last granted lease, which may have expired.
    pub lease: Option<Lease>,
    /// The last lease broken by an administrator.
    pub evicted: Option<Eviction>,
}

impl Record {
    /// The lease if it has not expired at `now`.
    pub fn live(&self, now: SystemTime) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.expires_at > now)
    }

    /// Grants `req` unless a live lease holds the resource.
    pub fn acquire(&mut self, req: &AcquireRequest, now: SystemTime) -> Acquisition {
        if let Some(holder) = self.live(now) {
            return Acquisition::contended(&req.id, holder.clone());
        }
        self.fence += 1;
        let lease = Lease {
            resource: req.resource.clone(),
            id: req.id.clone(),
            principal: req.principal.clone(),
            reason: req.reason.clone(),
            acquired_at: now,
            expires_at: now + req.ttl,
            fence: self.fence,
        };
        self.lease = Some(lease.clone());
        Acquisition::Granted(lease)
    }

    /// Releases `id` if it is the live lease; returns whether it was.
    pub fn release(&mut self, id: &LeaseId, now: SystemTime) -> bool {
        let current = self.live(now).is_some_and(|l| &l.id == id);
        if current {
            self.lease = None;
        }
        current
    }

    /// Extends `id` to `now + ttl` if it is the live lease.
    pub fn renew(
        &mut self,
        id: &LeaseId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Lease, BackendError> {
        match self.lease.as_mut() {
            Some(lease) if lease.expires_at > now && &lease.id == id => {
                lease.expires_at = now + ttl;
                Ok(lease.clone())
            }
            _ => Err(BackendError::NotCurrent {
                evicted: self.eviction_of(id),
            }),
        }
    }

    /// Whether `id` is the live lease.
    pub fn status(&self, id: &LeaseId, now: SystemTime) -> LeaseStatus {
        match self.live(now) {
            Some(lease) if &lease.id == id => LeaseStatus::Current(lease.clone()),
            _ => LeaseStatus::NotCurrent {
                evicted: self.eviction_of(id),
            },
        }
    }

    /// Breaks the live lease, if any, remembering who did it and why.
    pub fn force_release(&mut self, actor: &str, reason: &str, now: SystemTime) -> Option<Lease> {
        let broken = self.live(now).cloned()?;
        self.evicted = Some(Eviction {
            id: broken.id.clone(),
            actor: actor.to_string(),
            reason: reason.to_string(),
        });
        self.lease = None;
        Some(broken)
    }

    fn eviction_of(&self, id: &LeaseId) -> Option<Eviction> {
        self.evicted.clone().filter(|e| &e.id == id)
    }
}
