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
            ttl: Some(req.ttl),
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
                lease.ttl = Some(ttl);
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

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    fn request(principal: &str, ttl: u64) -> AcquireRequest {
        AcquireRequest {
            resource: "r".to_string(),
            id: LeaseId::generate(),
            principal: principal.to_string(),
            reason: format!("by {principal}"),
            ttl: Duration::from_secs(ttl),
        }
    }

    fn granted(record: &mut Record, req: &AcquireRequest, now: SystemTime) -> Lease {
        match record.acquire(req, now) {
            Acquisition::Granted(lease) => lease,
            other => panic!("not granted: {other:?}"),
        }
    }

    #[test]
    fn a_lease_is_live_until_its_expiry_and_not_at_it() {
        let mut record = Record::default();
        let alice = request("alice", 10);
        let lease = granted(&mut record, &alice, at(0));
        assert_eq!(
            (lease.acquired_at, lease.expires_at, lease.fence),
            (at(0), at(10), 1)
        );
        assert_eq!(
            (lease.principal.as_str(), lease.reason.as_str()),
            ("alice", "by alice")
        );
        assert!(record.live(at(9)).is_some());
        assert!(record.live(at(10)).is_none(), "expired at its expiry");
        let bob = request("bob", 10);
        match record.acquire(&bob, at(9)) {
            Acquisition::Held(holder) => assert_eq!(holder.id, alice.id),
            other => panic!("{other:?}"),
        }
        // The same acquisition again is its own lease, not contention.
        assert_eq!(granted(&mut record, &alice, at(9)).fence, 1);
        let next = granted(&mut record, &bob, at(10));
        assert_eq!((next.fence, next.expires_at), (2, at(20)));
    }

    #[test]
    fn release_takes_only_the_live_lease_of_its_id() {
        let mut record = Record::default();
        let alice = request("alice", 10);
        granted(&mut record, &alice, at(0));
        assert!(
            !record.release(&LeaseId::generate(), at(1)),
            "a stranger's id"
        );
        assert!(record.live(at(1)).is_some());
        assert!(
            !record.release(&alice.id, at(10)),
            "expired: nothing to release"
        );
        let mut again = Record::default();
        granted(&mut again, &alice, at(0));
        assert!(again.release(&alice.id, at(9)));
        assert!(again.live(at(9)).is_none());
        assert!(!again.release(&alice.id, at(9)), "once");
        assert_eq!(again.fence, 1, "the fence stays");
        assert_eq!(granted(&mut again, &request("bob", 5), at(9)).fence, 2);
    }

    #[test]
    fn renew_extends_only_the_live_lease_of_its_id() {
        let mut record = Record::default();
        let alice = request("alice", 10);
        granted(&mut record, &alice, at(0));
        let renewed = record
            .renew(&alice.id, Duration::from_secs(30), at(9))
            .expect("renew");
        assert_eq!((renewed.expires_at, renewed.fence), (at(39), 1));
        assert_eq!(record.live(at(38)).map(|l| l.expires_at), Some(at(39)));
        // Shorter works too.
        let shorter = record
            .renew(&alice.id, Duration::from_secs(1), at(20))
            .expect("renew");
        assert_eq!(shorter.expires_at, at(21));
        assert!(matches!(
            record.renew(&LeaseId::generate(), Duration::from_secs(5), at(20)),
            Err(BackendError::NotCurrent { evicted: None })
        ));
        assert!(matches!(
            record.renew(&alice.id, Duration::from_secs(5), at(21)),
            Err(BackendError::NotCurrent { evicted: None })
        ));
        assert!(
            record.live(at(21)).is_none(),
            "a refused renewal changes nothing"
        );
    }

    #[test]
    fn status_says_current_only_for_the_live_lease() {
        let mut record = Record::default();
        let alice = request("alice", 10);
        let lease = granted(&mut record, &alice, at(0));
        assert_eq!(record.status(&alice.id, at(9)), LeaseStatus::Current(lease));
        assert_eq!(
            record.status(&alice.id, at(10)),
            LeaseStatus::NotCurrent { evicted: None }
        );
        assert_eq!(
            record.status(&LeaseId::generate(), at(5)),
            LeaseStatus::NotCurrent { evicted: None }
        );
    }

    #[test]
    fn force_release_breaks_the_live_lease_and_tells_only_its_holder() {
        let mut record = Record::default();
        let alice = request("alice", 10);
        let lease = granted(&mut record, &alice, at(0));
        assert_eq!(record.force_release("ops", "stuck", at(5)), Some(lease));
        assert!(record.live(at(5)).is_none());
        let eviction = Eviction {
            id: alice.id.clone(),
            actor: "ops".to_string(),
            reason: "stuck".to_string(),
        };
        assert_eq!(
            record.status(&alice.id, at(6)),
            LeaseStatus::NotCurrent {
                evicted: Some(eviction.clone())
            }
        );
        match record.renew(&alice.id, Duration::from_secs(5), at(6)) {
            Err(BackendError::NotCurrent { evicted }) => assert_eq!(evicted, Some(eviction)),
            other => panic!("{other:?}"),
        }
        // Anyone else's id learns nothing of it.
        let stranger = LeaseId::generate();
        assert_eq!(
            record.status(&stranger, at(6)),
            LeaseStatus::NotCurrent { evicted: None }
        );
        assert!(matches!(
            record.renew(&stranger, Duration::from_secs(5), at(6)),
            Err(BackendError::NotCurrent { evicted: None })
        ));
        assert_eq!(record.force_release("ops", "again", at(6)), None, "free");
        let next = granted(&mut record, &request("bob", 10), at(6));
        assert_eq!(next.fence, 2);
    }

    #[test]
    fn force_release_of_an_expired_lease_breaks_nothing() {
        let mut record = Record::default();
        let alice = request("alice", 10);
        granted(&mut record, &alice, at(0));
        assert_eq!(record.force_release("ops", "late", at(10)), None);
        assert_eq!(
            record.status(&alice.id, at(10)),
            LeaseStatus::NotCurrent { evicted: None },
            "an expired lease was not evicted"
        );
        assert!(record.evicted.is_none());
    }
}
