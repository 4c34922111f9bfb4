//! The items of the table layout (see the module documentation): attribute
//! names, the lease item as written, and the lease and eviction as read back.
//! Decoders say what is wrong with an item ([`Corrupt`]); the backend
//! reports it as an internal error naming the table.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::backend::Book;
use crate::lease::{AcquireRequest, Eviction, Lease, LeaseId};

/// One item, as the SDK reads and writes it.
pub(super) type Item = HashMap<String, AttributeValue>;

// Attribute names and key values of the table layout (module docs).
pub(super) const RESOURCE: &str = "resource";
pub(super) const KIND: &str = "kind";
pub(super) const LEASE: &str = "lease";
pub(super) const RECORD: &str = "record";
pub(super) const LEASE_ID: &str = "lease_id";
pub(super) const PRINCIPAL: &str = "principal";
pub(super) const REASON: &str = "reason";
pub(super) const ACQUIRED_MS: &str = "acquired_ms";
pub(super) const EXPIRES_MS: &str = "expires_ms";
pub(super) const FENCE: &str = "fence";
/// The TTL the lease was granted or last renewed with, in milliseconds;
/// absent from the items of older versions.
pub(super) const TTL_MS: &str = "ttl_ms";
pub(super) const CLEANUP_AT: &str = "cleanup_at";
pub(super) const EVICTED_ID: &str = "evicted_id";
pub(super) const EVICTED_BY: &str = "evicted_by";
pub(super) const EVICTED_REASON: &str = "evicted_reason";
/// The token a release (on the lease item) or a force-release (on the record
/// item) writes with it, to recognise its own write when the SDK retried it.
pub(super) const RELEASE_TOKEN: &str = "release_token";
/// When the daemon that last renewed the lease computed its expiry (daemon
/// clock, milliseconds): a renewal computed earlier is a stale duplicate
/// and must not apply over it.
pub(super) const RENEWED_MS: &str = "renewed_ms";

/// The partition of every reservation book, whose sort key (`kind`) is the
/// resource name: no resource has this name (names have no control
/// characters), and one partition lists books in name order without a
/// Scan.
pub(super) const BOOKS: &str = "\u{1}books";
/// A book item's body (B): the lock core's encoding, opaque here.
pub(super) const BODY: &str = "body";
/// A book item's version (N): 1 on the first write, one more per write.
pub(super) const VERSION: &str = "version";
/// The token a book write puts with it, to recognise its own write when the
/// SDK retried it (as [`RELEASE_TOKEN`] does for releases).
pub(super) const WRITE_TOKEN: &str = "write_token";

// Python stormlock 0.4.1's items (`python_table`, partition key
// `resource` only): `resource`, `principal`, `lease` (32 hex digits),
// `created` and `expires` (Unix seconds, each client's clock).
pub(super) const PY_LEASE: &str = "lease";
pub(super) const PY_CREATED: &str = "created";
pub(super) const PY_EXPIRES: &str = "expires";
/// Marks an item of Python's table as the mirror of a lease of this
/// deployment: the daemon's table. Python never reads it, and replaces the
/// whole item when it locks.
pub(super) const PY_MIRROR_OF: &str = "stormlockd";

/// How long after expiry DynamoDB may delete a lease item. Expired leases are
/// ignored anyway; the delay keeps the cleanup far behind any in-flight
/// acquisition (see "Fences" in the module docs).
const CLEANUP_GRACE: Duration = Duration::from_secs(3600);

/// `expires_ms` of a released or force-released lease item: free on every
/// daemon's clock, while the item keeps its fence.
pub(super) const RELEASED_MS: u64 = 0;

/// When DynamoDB may delete a lease item that lapses or was freed at `ms`.
pub(super) fn cleanup_after(ms: u64) -> u64 {
    ms.div_ceil(1000).saturating_add(CLEANUP_GRACE.as_secs())
}

/// Whether lease item `item` was freed by the release of `id` that wrote
/// `token`: a retried release whose first attempt had applied.
pub(super) fn released_by(item: &Item, id: &LeaseId, token: &str) -> bool {
    let is = |attr: &str, value: &str| matches!(item.get(attr), Some(AttributeValue::S(s)) if s == value);
    is(LEASE_ID, id.expose()) && is(RELEASE_TOKEN, token)
}

/// Whether record item `item` tells that the force-release that wrote
/// `token` broke lease `id`.
pub(super) fn evicted_by(item: &Item, id: &LeaseId, token: &str) -> bool {
    let is = |attr: &str, value: &str| matches!(item.get(attr), Some(AttributeValue::S(s)) if s == value);
    is(EVICTED_ID, id.expose()) && is(RELEASE_TOKEN, token)
}

/// What is wrong with an item read from the table.
#[derive(Debug)]
pub(super) struct Corrupt {
    /// The resource the item belongs to (`?` when even that is missing).
    pub resource: String,
    /// The attribute at fault and how.
    pub what: String,
}

/// The primary key of one item of `resource`.
pub(super) fn key(resource: &str, kind: &str) -> Item {
    HashMap::from([
        (
            RESOURCE.to_string(),
            AttributeValue::S(resource.to_string()),
        ),
        (KIND.to_string(), AttributeValue::S(kind.to_string())),
    ])
}

/// The lease item granting `req` at `now_ms` until `expires_ms` with `fence`,
/// with its TTL cleanup time.
pub(super) fn lease_item(req: &AcquireRequest, now_ms: u64, expires_ms: u64, fence: u64) -> Item {
    let mut item = key(&req.resource, LEASE);
    item.insert(
        LEASE_ID.into(),
        AttributeValue::S(req.id.expose().to_string()),
    );
    item.insert(PRINCIPAL.into(), AttributeValue::S(req.principal.clone()));
    item.insert(REASON.into(), AttributeValue::S(req.reason.clone()));
    item.insert(ACQUIRED_MS.into(), number(now_ms));
    item.insert(EXPIRES_MS.into(), number(expires_ms));
    item.insert(FENCE.into(), number(fence));
    item.insert(TTL_MS.into(), number(millis_of(req.ttl)));
    item.insert(CLEANUP_AT.into(), number(cleanup_after(expires_ms)));
    item
}

/// The item of `resource`'s book holding `body` at `version`, written with
/// `token`.
pub(super) fn book_item(resource: &str, body: &[u8], version: u64, token: &str) -> Item {
    let mut item = key(BOOKS, resource);
    item.insert(BODY.into(), AttributeValue::B(body.to_vec().into()));
    item.insert(VERSION.into(), number(version));
    item.insert(WRITE_TOKEN.into(), AttributeValue::S(token.to_string()));
    item
}

/// Whether book item `item` is the write of `version` that carried `token`.
pub(super) fn written_by(item: &Item, version: u64, token: &str) -> bool {
    matches!(item.get(WRITE_TOKEN), Some(AttributeValue::S(t)) if t == token)
        && item.get(VERSION) == Some(&number(version))
}

/// The book stored in book item `item`.
pub(super) fn book_of(item: &Item) -> Result<Book, Corrupt> {
    let resource = match item.get(KIND) {
        Some(AttributeValue::S(resource)) => resource.clone(),
        _ => {
            return Err(Corrupt {
                resource: "?".to_string(),
                what: format!("book item without a {KIND}"),
            });
        }
    };
    let corrupt = |what: String| Corrupt {
        resource: resource.clone(),
        what,
    };
    let version = match item.get(VERSION) {
        Some(AttributeValue::N(n)) => n.parse::<u64>().ok().filter(|&v| v != 0),
        _ => None,
    }
    .ok_or_else(|| corrupt(format!("book {VERSION} missing or not a count above 0")))?;
    let body = match item.get(BODY) {
        Some(AttributeValue::B(body)) => body.clone().into_inner(),
        _ => return Err(corrupt(format!("book {BODY} missing or not binary"))),
    };
    Ok(Book {
        resource,
        body,
        version,
    })
}

/// The key of `resource`'s item in Python stormlock's table.
pub(super) fn python_key(resource: &str) -> Item {
    HashMap::from([(
        RESOURCE.to_string(),
        AttributeValue::S(resource.to_string()),
    )])
}

/// The item of Python stormlock's table that mirrors `lease`, marked as
/// written by the deployment of `table`. Python's times are whole seconds:
/// the creation time rounded down, the expiry up, so that Python never
/// sees the lease end early.
pub(super) fn mirror_item(lease: &Lease, table: &str) -> Item {
    let mut item = python_key(&lease.resource);
    item.insert(PRINCIPAL.into(), AttributeValue::S(lease.principal.clone()));
    item.insert(
        PY_LEASE.into(),
        AttributeValue::S(lease.id.expose().to_string()),
    );
    item.insert(PY_CREATED.into(), number(millis(lease.acquired_at) / 1000));
    item.insert(
        PY_EXPIRES.into(),
        number(millis(lease.expires_at).div_ceil(1000)),
    );
    item.insert(PY_MIRROR_OF.into(), AttributeValue::S(table.to_string()));
    item
}

/// The Python stormlock lock in `item` (of Python's table) if it holds the
/// resource at `now_ms`: not lapsed (Python's own judgement, `expires >
/// now`), and no mirror written by the deployment of `table` (whose own
/// lease item decides). Lenient where Python's record does not matter to
/// exclusion (a missing principal reads as empty, a missing creation time
/// as `now`); an expiry that is no count, or an id that is not 32 hex
/// digits, is corrupt.
pub(super) fn python_lock(item: &Item, now_ms: u64, table: &str) -> Result<Option<Lease>, Corrupt> {
    let expires = number_of(item, PY_EXPIRES)?;
    let mirror = matches!(item.get(PY_MIRROR_OF), Some(AttributeValue::S(t)) if t == table);
    if expires.saturating_mul(1000) <= now_ms || mirror {
        return Ok(None);
    }
    let resource = string_of(item, RESOURCE)?;
    let id = string_of(item, PY_LEASE)?;
    let seconds = |secs: u64| UNIX_EPOCH.checked_add(Duration::from_secs(secs));
    let now = UNIX_EPOCH + Duration::from_millis(now_ms);
    let principal = match item.get(PRINCIPAL) {
        Some(AttributeValue::S(p)) => p.clone(),
        _ => String::new(),
    };
    let created = number_of(item, PY_CREATED).ok().and_then(seconds);
    hex::decode(&id)
        .ok()
        .and_then(|bytes| {
            crate::backend::python_stormlock_holder(
                &resource,
                &bytes,
                principal,
                created.unwrap_or(now),
                seconds(expires)?,
            )
        })
        .map(Some)
        .ok_or(Corrupt {
            resource,
            what: format!("Python stormlock's lease {id:?} is not 32 hex digits"),
        })
}

/// The lease stored in `item` if it is live at `now_ms`.
pub(super) fn live(item: &Item, now_ms: u64) -> Result<Option<Lease>, Corrupt> {
    let expires = number_of(item, EXPIRES_MS)?;
    if expires <= now_ms {
        return Ok(None);
    }
    lease_of(item).map(Some)
}

/// The lease stored in `item`, live or not.
pub(super) fn lease_of(item: &Item) -> Result<Lease, Corrupt> {
    let resource = string_of(item, RESOURCE)?;
    let corrupt = |what: String| Corrupt {
        resource: resource.clone(),
        what,
    };
    let id = string_of(item, LEASE_ID)?;
    let id = LeaseId::parse(&id).ok_or_else(|| corrupt("malformed lease_id".to_string()))?;
    let time = |attr: &str| -> Result<SystemTime, Corrupt> {
        let ms = number_of(item, attr)?;
        UNIX_EPOCH
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| corrupt(format!("{attr} out of range")))
    };
    Ok(Lease {
        id,
        principal: string_of(item, PRINCIPAL)?,
        reason: string_of(item, REASON)?,
        acquired_at: time(ACQUIRED_MS)?,
        expires_at: time(EXPIRES_MS)?,
        fence: number_of(item, FENCE)?,
        ttl: match item.get(TTL_MS) {
            None => None,
            Some(_) => Some(Duration::from_millis(number_of(item, TTL_MS)?)),
        },
        resource,
    })
}

/// The eviction of `id` recorded in the record item, if any.
pub(super) fn eviction_of(
    record: Option<&Item>,
    id: &LeaseId,
) -> Result<Option<Eviction>, Corrupt> {
    let Some(record) = record else {
        return Ok(None);
    };
    match record.get(EVICTED_ID) {
        Some(AttributeValue::S(evicted)) if evicted == id.expose() => Ok(Some(Eviction {
            id: id.clone(),
            actor: string_of(record, EVICTED_BY)?,
            reason: string_of(record, EVICTED_REASON)?,
        })),
        _ => Ok(None),
    }
}

fn string_of(item: &Item, attr: &str) -> Result<String, Corrupt> {
    match item.get(attr) {
        Some(AttributeValue::S(s)) => Ok(s.clone()),
        _ => Err(Corrupt {
            resource: resource_of(item),
            what: format!("{attr} missing or not a string"),
        }),
    }
}

/// The count stored in attribute `attr` of `item`.
pub(super) fn number_of(item: &Item, attr: &str) -> Result<u64, Corrupt> {
    let what = match item.get(attr) {
        Some(AttributeValue::N(n)) => match n.parse() {
            Ok(n) => return Ok(n),
            Err(_) => format!("{attr} = {n:?} is not a count"),
        },
        _ => format!("{attr} missing or not a number"),
    };
    Err(Corrupt {
        resource: resource_of(item),
        what,
    })
}

fn resource_of(item: &Item) -> String {
    match item.get(RESOURCE) {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => "?".to_string(),
    }
}

/// A count as DynamoDB stores numbers.
pub(super) fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub(super) fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, millis_of)
}

/// A duration in whole milliseconds, saturating.
pub(super) fn millis_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_locks_and_mirrors() {
        let python = |expires: u64, mirror_of: Option<&str>| {
            let mut item = python_key("db/main");
            item.insert(PRINCIPAL.into(), AttributeValue::S("py-alice".into()));
            item.insert(PY_LEASE.into(), AttributeValue::S("ab".repeat(16)));
            item.insert(PY_CREATED.into(), number(990));
            item.insert(PY_EXPIRES.into(), number(expires));
            if let Some(table) = mirror_of {
                item.insert(PY_MIRROR_OF.into(), AttributeValue::S(table.into()));
            }
            item
        };
        let held = python_lock(&python(1_001, None), 1_000_500, "locks")
            .ok()
            .flatten();
        let Some(lease) = held else {
            panic!("a live Python lock")
        };
        assert_eq!(lease.id.expose(), "ab".repeat(16));
        assert_eq!(lease.principal, "py-alice");
        assert_eq!(lease.fence, 0);
        assert_eq!(lease.acquired_at, UNIX_EPOCH + Duration::from_secs(990));
        assert_eq!(lease.expires_at, UNIX_EPOCH + Duration::from_secs(1_001));
        // Lapsed (Python's `expires > now`), or a mirror of this deployment.
        assert!(matches!(
            python_lock(&python(1_000, None), 1_000_000, "locks"),
            Ok(None)
        ));
        assert!(matches!(
            python_lock(&python(1_001, Some("locks")), 1_000_500, "locks"),
            Ok(None)
        ));
        let other = python_lock(&python(1_001, Some("other")), 1_000_500, "locks");
        assert!(
            matches!(other, Ok(Some(_))),
            "another deployment's mirror holds"
        );
        let mut bad = python(1_001, None);
        bad.insert(PY_LEASE.into(), AttributeValue::S("xyz".into()));
        assert!(python_lock(&bad, 1_000_500, "locks").is_err());
        // A mirror reads back as its lease, its times in whole seconds.
        let req = AcquireRequest {
            resource: "db/main".to_string(),
            id: LeaseId::generate(),
            principal: "deployer".to_string(),
            reason: String::new(),
            ttl: Duration::from_secs(30),
        };
        let lease = lease_of(&lease_item(&req, 1_000_400, 1_030_400, 3)).ok();
        let Some(lease) = lease else { panic!("lease") };
        let mirror = mirror_item(&lease, "locks");
        assert_eq!(mirror.get(PY_CREATED), Some(&number(1_000)));
        assert_eq!(mirror.get(PY_EXPIRES), Some(&number(1_031)));
        let seen = python_lock(&mirror, 1_000_500, "other").ok().flatten();
        assert_eq!(seen.map(|l| l.id), Some(req.id));
        assert!(matches!(python_lock(&mirror, 1_000_500, "locks"), Ok(None)));
    }

    #[test]
    fn book_items_round_trip() {
        let item = book_item("db/main", &[0, 255, 7], 4, "t1");
        assert_eq!(item.get(RESOURCE), Some(&AttributeValue::S(BOOKS.into())));
        let book = book_of(&item).ok();
        assert_eq!(
            book,
            Some(Book {
                resource: "db/main".to_string(),
                body: vec![0, 255, 7],
                version: 4,
            })
        );
        assert!(written_by(&item, 4, "t1"));
        assert!(!written_by(&item, 4, "t2"), "another writer's");
        assert!(!written_by(&item, 5, "t1"));
        let mut broken = item.clone();
        broken.insert(VERSION.into(), number(0));
        let err = book_of(&broken).err().map(|c| (c.resource, c.what));
        assert_eq!(
            err,
            Some((
                "db/main".to_string(),
                "book version missing or not a count above 0".to_string()
            ))
        );
        let mut broken = item;
        broken.insert(BODY.into(), AttributeValue::S("text".into()));
        assert!(book_of(&broken).is_err());
    }

    #[test]
    fn lease_items_round_trip() {
        let req = AcquireRequest {
            resource: "db/main".to_string(),
            id: LeaseId::generate(),
            principal: "alice".to_string(),
            reason: "migration".to_string(),
            ttl: Duration::from_secs(30),
        };
        let item = lease_item(&req, 1_000, 31_000, 9);
        assert_eq!(item.get(CLEANUP_AT), Some(&number(31 + 3600)));
        let lease = live(&item, 30_999).ok().flatten();
        assert_eq!(lease.as_ref().map(|l| l.fence), Some(9));
        assert_eq!(lease.map(|l| l.id), Some(req.id.clone()));
        assert!(matches!(live(&item, 31_000), Ok(None)), "lapsed");
        let mut broken = item;
        broken.insert(FENCE.into(), AttributeValue::S("nine".into()));
        let err = lease_of(&broken).err();
        assert_eq!(
            err.map(|c| (c.resource, c.what)),
            Some((
                "db/main".to_string(),
                "fence missing or not a number".to_string()
            ))
        );
    }
}
