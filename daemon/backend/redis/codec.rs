//! Reading the scripts' replies into the lease model. Every reader returns
//! what was wrong as text, which the backend turns into an
//! [`Internal`](crate::backend::BackendError::Internal) error naming the
//! engine: a reply that does not fit is never the caller's fault.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use crate::backend::Book;
use crate::lease::{Eviction, Lease, LeaseId};

/// Reads `{id, principal, reason, acquired_s, acquired_us, fence, pttl,
/// ttl_ms}` of `resource` (see `lease_at.lua`) as a lease, `None` for `{}`;
/// `ttl_ms` is nil for a lease stored by an older version.
pub(super) fn lease(
    resource: &str,
    now: SystemTime,
    value: &Value,
) -> Result<Option<Lease>, String> {
    let fields = array(value).ok_or("lease is not an array")?;
    if fields.is_empty() {
        return Ok(None);
    }
    let [
        id,
        principal,
        reason,
        acquired_s,
        acquired_us,
        fence,
        pttl,
        ttl_ms,
    ] = fields
    else {
        return Err("lease has the wrong number of fields".to_string());
    };
    let corrupt = |field: &str| format!("lease of {resource:?} has a bad {field}");
    let id = text(id)
        .and_then(|t| LeaseId::parse(&t))
        .ok_or_else(|| corrupt("id"))?;
    let acquired_s = int(acquired_s).and_then(|s| u64::try_from(s).ok());
    let acquired_us = int(acquired_us).and_then(|us| u64::try_from(us).ok());
    let (Some(acquired_s), Some(acquired_us)) = (acquired_s, acquired_us) else {
        return Err(corrupt("acquired_s/acquired_us"));
    };
    let pttl = int(pttl)
        .and_then(|ms| u64::try_from(ms).ok())
        .ok_or_else(|| corrupt("expiry (the key does not expire)"))?;
    Ok(Some(Lease {
        resource: resource.to_string(),
        id,
        principal: text(principal).ok_or_else(|| corrupt("principal"))?,
        reason: text(reason).ok_or_else(|| corrupt("reason"))?,
        acquired_at: UNIX_EPOCH
            + Duration::from_secs(acquired_s)
            + Duration::from_micros(acquired_us),
        expires_at: now + Duration::from_millis(pttl),
        fence: int(fence)
            .and_then(|f| u64::try_from(f).ok())
            .ok_or_else(|| corrupt("fence"))?,
        ttl: match ttl_ms {
            Value::Nil => None,
            ms => Some(
                int(ms)
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map(Duration::from_millis)
                    .ok_or_else(|| corrupt("ttl_ms"))?,
            ),
        },
    }))
}

/// Reads `{id, p, c, pttl}` of a Python stormlock lock on `resource` (see
/// `python.lua`) as its holder's lease, `None` for `{}`. Python's own record
/// is read leniently where it does not matter: a principal that is not UTF-8
/// is shown lossily, an unreadable creation time as `now`, and a lock
/// without expiry (which Python never writes) as expiring in
/// [`NO_EXPIRY`]; only an id that is not Python's 16 bytes is refused.
pub(super) fn python_lock(
    resource: &str,
    now: SystemTime,
    value: &Value,
) -> Result<Option<Lease>, String> {
    let fields = array(value).ok_or("Python stormlock lock is not an array")?;
    if fields.is_empty() {
        return Ok(None);
    }
    let [id, principal, created, pttl] = fields else {
        return Err("Python stormlock lock has the wrong number of fields".to_string());
    };
    let bytes = |value: &Value| match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        _ => None,
    };
    let principal = bytes(principal)
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .unwrap_or_default();
    let acquired_at = bytes(created)
        .and_then(|c| String::from_utf8(c).ok())
        .and_then(|c| c.trim().parse::<f64>().ok())
        .and_then(|c| Duration::try_from_secs_f64(c).ok())
        .map_or(now, |c| UNIX_EPOCH + c);
    let expires_at = match int(pttl) {
        Some(ms) if ms >= 0 => now + Duration::from_millis(ms.unsigned_abs()),
        _ => now + NO_EXPIRY,
    };
    let id = bytes(id).unwrap_or_default();
    crate::backend::python_stormlock_holder(resource, &id, principal, acquired_at, expires_at)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "Python stormlock lock of {resource:?} has an id of {} bytes, not 16",
                id.len()
            )
        })
}

/// Reads the `version` and `body` fields of `resource`'s book hash (see
/// `book.lua` and `books.lua`) as its book, `None` when the hash has
/// neither (no book was ever written).
pub(super) fn book(resource: &str, version: &Value, body: &Value) -> Result<Option<Book>, String> {
    let corrupt = |field: &str| format!("book of {resource:?} has a bad {field}");
    match (version, body) {
        (Value::Nil, Value::Nil) => Ok(None),
        (version, Value::BulkString(body)) => Ok(Some(Book {
            resource: resource.to_string(),
            body: body.clone(),
            version: int(version)
                .and_then(|v| u64::try_from(v).ok())
                .filter(|&v| v != 0)
                .ok_or_else(|| corrupt("version"))?,
        })),
        _ => Err(corrupt("body")),
    }
}

/// How far ahead a Python stormlock lock without expiry is reported to
/// expire: it is held until someone releases it.
pub(super) const NO_EXPIRY: Duration = Duration::from_secs(365 * 86_400);

/// Reads a `TIME` reply.
pub(super) fn time(value: &Value) -> Result<SystemTime, String> {
    let not_time = || "TIME is not two numbers".to_string();
    let Some([secs, micros]) = array(value) else {
        return Err(not_time());
    };
    let secs = int(secs).and_then(|s| u64::try_from(s).ok());
    let micros = int(micros).and_then(|us| u64::try_from(us).ok());
    match (secs, micros) {
        (Some(s), Some(us)) => Ok(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us)),
        _ => Err(not_time()),
    }
}

/// Reads an `{id, actor, reason}` eviction record, keeping it only if it is
/// about lease `id`.
pub(super) fn eviction_of(value: &Value, id: &LeaseId) -> Result<Option<Eviction>, String> {
    let Some([evicted, actor, reason]) = array(value) else {
        return Err("eviction record is not three fields".to_string());
    };
    if text(evicted).as_deref() != Some(id.expose()) {
        return Ok(None);
    }
    let (Some(actor), Some(reason)) = (text(actor), text(reason)) else {
        return Err("eviction record lacks actor or reason".to_string());
    };
    Ok(Some(Eviction {
        id: id.clone(),
        actor,
        reason,
    }))
}

/// A TTL as `PEXPIRE` takes it.
pub(super) fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn array(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

pub(super) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn leases_are_read() {
        let id = LeaseId::generate();
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let reply = Value::Array(vec![
            bulk(id.expose()),
            bulk("alice"),
            bulk("deploy"),
            bulk("990"),
            bulk("250000"),
            bulk("7"),
            Value::Int(4_000),
            bulk("5000"),
        ]);
        let read = lease("r", now, &reply).ok().flatten();
        assert_eq!(read.as_ref().map(|l| l.fence), Some(7));
        assert_eq!(
            read.as_ref().and_then(|l| l.ttl),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            read.as_ref().map(|l| l.acquired_at),
            Some(UNIX_EPOCH + Duration::from_micros(990_250_000))
        );
        assert_eq!(
            read.map(|l| l.expires_at),
            Some(now + Duration::from_secs(4))
        );
        assert_eq!(lease("r", now, &Value::Array(Vec::new())), Ok(None));
        let mut fields = match reply {
            Value::Array(fields) => fields,
            _ => Vec::new(),
        };
        // An older version's lease has no TTL of its own; a bad one is corrupt.
        fields[7] = Value::Nil;
        let old = lease("r", now, &Value::Array(fields.clone()));
        assert_eq!(old.map(|l| l.map(|l| l.ttl)), Ok(Some(None)));
        fields[7] = bulk("soon");
        let err = lease("r", now, &Value::Array(fields.clone()))
            .err()
            .unwrap_or_default();
        assert!(err.contains("ttl_ms"), "{err}");
        fields[7] = Value::Nil;
        // A key without expiry (PTTL -1) is a corrupt record, not a lease.
        fields[6] = Value::Int(-1);
        let err = lease("r", now, &Value::Array(fields))
            .err()
            .unwrap_or_default();
        assert!(err.contains("expiry"), "{err}");
    }

    #[test]
    fn python_locks_are_read() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let id = [0xab_u8; 16];
        let reply = |created: &str, pttl: i64| {
            Value::Array(vec![
                Value::BulkString(id.to_vec()),
                bulk("py-alice"),
                bulk(created),
                Value::Int(pttl),
            ])
        };
        let read = python_lock("r", now, &reply("990.5", 3_000)).ok().flatten();
        let Some(lease) = read else {
            panic!("no lease read")
        };
        assert_eq!(lease.id.expose(), "ab".repeat(16));
        assert_eq!(lease.principal, "py-alice");
        assert_eq!(lease.reason, crate::backend::PYTHON_STORMLOCK_REASON);
        assert_eq!(lease.fence, 0);
        assert_eq!(
            lease.acquired_at,
            UNIX_EPOCH + Duration::from_millis(990_500)
        );
        assert_eq!(lease.expires_at, now + Duration::from_secs(3));
        // Lenient where Python's record does not matter to exclusion.
        let odd = python_lock("r", now, &reply("yesterday", -1))
            .ok()
            .flatten();
        assert_eq!(odd.as_ref().map(|l| l.acquired_at), Some(now));
        assert_eq!(odd.map(|l| l.expires_at), Some(now + NO_EXPIRY));
        assert_eq!(python_lock("r", now, &Value::Array(Vec::new())), Ok(None));
        let short = Value::Array(vec![bulk("abc"), bulk("p"), bulk("1"), Value::Int(5)]);
        assert!(python_lock("r", now, &short).is_err());
    }

    #[test]
    fn books_are_read() {
        let read = book("r", &bulk("3"), &Value::BulkString(vec![0, 255]));
        assert_eq!(
            read,
            Ok(Some(Book {
                resource: "r".to_string(),
                body: vec![0, 255],
                version: 3,
            }))
        );
        assert_eq!(book("r", &Value::Nil, &Value::Nil), Ok(None));
        assert!(
            book("r", &bulk("0"), &bulk("x")).is_err(),
            "0 is no version"
        );
        assert!(book("r", &bulk("x"), &bulk("x")).is_err());
        assert!(book("r", &Value::Nil, &bulk("x")).is_err());
        assert!(book("r", &bulk("3"), &Value::Nil).is_err());
    }

    #[test]
    fn times_and_evictions_are_read() {
        let t = time(&Value::Array(vec![bulk("12"), bulk("5")]));
        assert_eq!(t, Ok(UNIX_EPOCH + Duration::from_micros(12_000_005)));
        assert!(time(&Value::Array(vec![bulk("x"), bulk("5")])).is_err());
        let id = LeaseId::generate();
        let record = Value::Array(vec![bulk(id.expose()), bulk("ops"), bulk("stuck")]);
        let eviction = eviction_of(&record, &id).ok().flatten();
        assert_eq!(eviction.map(|e| e.actor), Some("ops".to_string()));
        let other = LeaseId::generate();
        assert!(matches!(eviction_of(&record, &other), Ok(None)));
    }
}
