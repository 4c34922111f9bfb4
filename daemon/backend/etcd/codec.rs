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
    /// The TTL the lease was granted or last renewed with, in milliseconds;
    /// absent from the locks of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
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
    /// The TTL it was granted or last renewed with (`None` from an older
    /// version).
    pub ttl: Option<Duration>,
    /// The key's `create_revision`.
    pub fence: u64,
    /// The etcd lease the key is attached to.
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

/// The value of the lock key for lease `id`, granted or renewed for `ttl`.
/// `acquired_at` is stored in milliseconds (see [`truncate_to_millis`]).
pub(super) fn encode_lock(
    id: &LeaseId,
    principal: &str,
    reason: &str,
    acquired_at: SystemTime,
    ttl: Duration,
) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&LockValue {
        id: id.expose().to_string(),
        principal: principal.to_string(),
        reason: reason.to_string(),
        acquired_at: millis_since_epoch(acquired_at),
        ttl_ms: Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
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
        ttl: value.ttl_ms.map(Duration::from_millis),
        fence,
        etcd_lease: kv.lease(),
        mod_revision: kv.mod_revision(),
    })
}

/// Python stormlock 0.4.1's keys for one resource (`python_stormlock =
/// true`): `{prefix}R/id` holds its lease id (the etcd lease's, in
/// lower-case hex), `/p` the principal and `/c` the creation time (a
/// native-endian `f64` of Unix seconds: little-endian wherever it ran), all
/// three on the lock's etcd lease.
pub(super) struct PythonKeys {
    pub id: String,
    pub principal: String,
    pub created: String,
}

impl PythonKeys {
    pub(super) fn new(prefix: &str, resource: &str) -> Self {
        let base = format!("{prefix}{resource}");
        Self {
            id: format!("{base}/id"),
            principal: format!("{base}/p"),
            created: format!("{base}/c"),
        }
    }

    /// The three keys, in the order of [`PythonKeys::values`].
    pub(super) fn all(&self) -> [&str; 3] {
        [&self.id, &self.principal, &self.created]
    }

    /// The values of the mirror of lease `id` held by `principal` since
    /// `acquired_at`, in the order of [`PythonKeys::all`]. Python's id is
    /// Stormlock's lease id, so that both tools show the same id.
    pub(super) fn values(id: &LeaseId, principal: &str, acquired_at: SystemTime) -> [Vec<u8>; 3] {
        let created = acquired_at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        [
            id.expose().as_bytes().to_vec(),
            principal.as_bytes().to_vec(),
            created.to_le_bytes().to_vec(),
        ]
    }
}

/// A Python stormlock lock as read: what the daemon reports of it, but the
/// expiry, which only its etcd lease knows.
pub(super) struct StoredPython {
    /// Its id as 16 bytes: the etcd lease id (8 bytes) with 8 zero bytes in
    /// front, so that it reads as 32 hex digits that Python's CLI still
    /// takes (it parses the id as a hexadecimal number).
    pub id: Vec<u8>,
    pub principal: String,
    pub created: SystemTime,
    /// The etcd lease its keys are on.
    pub etcd_lease: i64,
}

/// Reads Python stormlock's keys of `resource`: the value of `id` and the
/// etcd lease it is on, and the values of the `principal` and `created`
/// keys when present. Lenient where Python's record does not
/// matter to exclusion (a principal that is not UTF-8 is shown lossily, an
/// unreadable creation time as `now`); an id that is no hexadecimal number
/// of at most 32 digits, or keys on no etcd lease (which Python never
/// writes), are refused.
pub(super) fn decode_python(
    resource: &str,
    (id, etcd_lease): (&[u8], i64),
    principal: Option<&[u8]>,
    created: Option<&[u8]>,
    now: SystemTime,
) -> Result<StoredPython, String> {
    let text = std::str::from_utf8(id).map(str::trim).unwrap_or_default();
    let padded = format!("{text:0>32}");
    let id_bytes = (!text.is_empty() && padded.len() == 32)
        .then(|| hex::decode(&padded).ok())
        .flatten()
        .ok_or_else(|| {
            format!("Python stormlock lock of {resource:?}: its id is not a lease id: {text:?}")
        })?;
    if etcd_lease == 0 {
        return Err(format!(
            "Python stormlock lock of {resource:?}: its keys are on no etcd lease"
        ));
    }
    let created = created
        .and_then(|value| <[u8; 8]>::try_from(value).ok())
        .map(f64::from_le_bytes)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .map_or(now, |d| UNIX_EPOCH + d);
    Ok(StoredPython {
        id: id_bytes,
        principal: principal
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default(),
        created,
        etcd_lease,
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
    fn python_locks_are_read_and_mirrors_written() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let keys = PythonKeys::new("/", "db/main");
        assert_eq!(keys.all(), ["/db/main/id", "/db/main/p", "/db/main/c"]);
        let created = 990.5_f64.to_le_bytes();
        let read = decode_python(
            "db/main",
            (b"694d7c1e2f3a", 0x694d_7c1e_2f3a),
            Some(b"py-alice"),
            Some(&created),
            now,
        );
        let Ok(python) = read else { panic!("not read") };
        assert_eq!(hex::encode(&python.id), format!("{:0>32}", "694d7c1e2f3a"));
        assert_eq!(python.principal, "py-alice");
        assert_eq!(python.created, UNIX_EPOCH + Duration::from_millis(990_500));
        assert_eq!(python.etcd_lease, 0x694d_7c1e_2f3a);
        // Lenient where Python's record does not matter to exclusion.
        let odd = decode_python("r", (b"ab", 7), None, Some(b"yesterday"), now);
        assert_eq!(odd.as_ref().map(|p| p.created).ok(), Some(now));
        assert_eq!(odd.map(|p| p.principal).ok().as_deref(), Some(""));
        for (id, lease) in [(&b"xyz"[..], 7), (b"", 7), (&[b'a'; 33][..], 7), (b"ab", 0)] {
            assert!(decode_python("r", (id, lease), None, None, now).is_err());
        }
        // A mirror reads back as the lease it mirrors.
        let id = LeaseId::generate();
        let [mirror_id, principal, created] = PythonKeys::values(&id, "deployer", now);
        let read = decode_python("r", (&mirror_id, 9), Some(&principal), Some(&created), now);
        assert_eq!(
            read.as_ref().map(|p| hex::encode(&p.id)).ok().as_deref(),
            Some(id.expose())
        );
        assert_eq!(read.map(|p| p.created).ok(), Some(now));
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
