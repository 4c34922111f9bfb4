//! The values stored under the lock and eviction keys (JSON), and the key
//! arithmetic of range reads. Decoders return what was wrong as text, which
//! the backend reports as a corrupt record of this engine.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::KeyValue;
use serde::{Deserialize, Serialize};

use crate::lease::{Eviction, LeaseId};

/// The stored value of a lock key.
#[derive(Serialize, Deserialize)]
struct LockValue {
    id: String,
    principal: String,
    reason: String,
    /// Unix milliseconds.
    acquired_at: u64,
}

/// The stored value of an eviction record.
#[derive(Serialize, Deserialize)]
pub(super) struct EvictionValue {
    id: String,
    actor: String,
    reason: String,
}

/// A lock key as read: the lease but its expiry, which only etcd's lease
/// knows, and what the transactions compare on.
pub(super) struct StoredLock {
    pub id: LeaseId,
    pub principal: String,
    pub reason: String,
    pub acquired_at: SystemTime,
    /// The key's `create_revision`.
    pub fence: u64,
    /// The etcd lease the key is attached to.
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

/// The value of the lock key for lease `id`. `acquired_at` is stored in
/// milliseconds (see [`truncate_to_millis`]).
pub(super) fn encode_lock(
    id: &LeaseId,
    principal: &str,
    reason: &str,
    acquired_at: SystemTime,
) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&LockValue {
        id: id.expose().to_string(),
        principal: principal.to_string(),
        reason: reason.to_string(),
        acquired_at: millis_since_epoch(acquired_at),
    })
    .map_err(|e| e.to_string())
}

/// Reads the lock key of `resource`.
pub(super) fn decode_lock(resource: &str, kv: &KeyValue) -> Result<StoredLock, String> {
    let value: LockValue =
        serde_json::from_slice(kv.value()).map_err(|e| format!("lock of {resource:?}: {e}"))?;
    let id = LeaseId::parse(&value.id).ok_or_else(|| format!("lock of {resource:?}: bad id"))?;
    if kv.lease() == 0 {
        return Err(format!("lock of {resource:?} has no etcd lease"));
    }
    let fence = u64::try_from(kv.create_revision())
        .map_err(|_| format!("lock of {resource:?}: bad create_revision"))?;
    Ok(StoredLock {
        id,
        principal: value.principal,
        reason: value.reason,
        acquired_at: UNIX_EPOCH + Duration::from_millis(value.acquired_at),
        fence,
        etcd_lease: kv.lease(),
        mod_revision: kv.mod_revision(),
    })
}

/// The value of the eviction key: lease `id` broken by `actor` for `reason`.
pub(super) fn encode_eviction(id: &LeaseId, actor: &str, reason: &str) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&EvictionValue {
        id: id.expose().to_string(),
        actor: actor.to_string(),
        reason: reason.to_string(),
    })
    .map_err(|e| e.to_string())
}

/// Reads the eviction key of `resource`.
pub(super) fn decode_eviction(resource: &str, value: &[u8]) -> Result<EvictionValue, String> {
    serde_json::from_slice(value).map_err(|e| format!("eviction of {resource:?}: {e}"))
}

/// The eviction record if it is about lease `id`.
pub(super) fn eviction_of(evicted: Option<EvictionValue>, id: &LeaseId) -> Option<Eviction> {
    evicted.filter(|e| e.id == id.expose()).map(|e| Eviction {
        id: id.clone(),
        actor: e.actor,
        reason: e.reason,
    })
}

/// `t` as a lock key stores it, so that the daemon reports what later reads
/// will see.
pub(super) fn truncate_to_millis(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis_since_epoch(t))
}

fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The smallest key above every key that starts with `prefix` (etcd's
/// "prefix end"); empty means "to the end of the keyspace".
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn evictions_round_trip() {
        let id = LeaseId::generate();
        let stored = encode_eviction(&id, "ops", "stuck").and_then(|v| decode_eviction("r", &v));
        let eviction = eviction_of(stored.ok(), &id);
        assert_eq!(eviction.map(|e| e.reason), Some("stuck".to_string()));
        let other = LeaseId::generate();
        let stored = encode_eviction(&other, "ops", "stuck").and_then(|v| decode_eviction("r", &v));
        assert!(eviction_of(stored.ok(), &id).is_none(), "another lease's");
        assert!(decode_eviction("r", b"{").is_err());
    }

    #[test]
    fn times_keep_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_micros(1_500_250);
        assert_eq!(
            truncate_to_millis(t),
            UNIX_EPOCH + Duration::from_millis(1_500)
        );
    }
}
