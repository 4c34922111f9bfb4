//! The backend conformance suite: one set of cases, run unchanged against
//! every backend (`conformance_tests!` instantiates it for one backend).
//!
//! Every case uses resource names under a fresh random prefix, so the suite
//! can run against a shared engine and in parallel with itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use stormlockd::backend::{Backend, BackendError};
use stormlockd::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};

/// A resource name unique to this run of one case.
pub fn unique(case: &str) -> String {
    format!("conformance/{}/{case}", &LeaseId::generate().expose()[..10])
}

/// An acquisition request for `resource` by `principal`.
pub fn request(resource: &str, principal: &str, ttl_secs: u64) -> AcquireRequest {
    AcquireRequest {
        resource: resource.to_string(),
        id: LeaseId::generate(),
        principal: principal.to_string(),
        reason: format!("conformance test by {principal}"),
        ttl: Duration::from_secs(ttl_secs),
    }
}

async fn granted(backend: &dyn Backend, req: &AcquireRequest) -> Lease {
    match backend.acquire(req).await {
        Ok(Acquisition::Granted(lease)) => lease,
        other => panic!("expected {} to be granted, got {other:?}", req.resource),
    }
}

async fn held(backend: &dyn Backend, req: &AcquireRequest) -> Lease {
    match backend.acquire(req).await {
        Ok(Acquisition::Held(holder)) => holder,
        other => panic!("expected {} to be held, got {other:?}", req.resource),
    }
}

/// Sleeps past the expiry of a lease taken with a 1 s TTL. Expiry has
/// one-second granularity on some engines, hence the margin.
async fn past_expiry() {
    tokio::time::sleep(Duration::from_millis(2_200)).await;
}

fn within(a: SystemTime, b: SystemTime, tolerance: Duration) -> bool {
    let diff = a.duration_since(b).or_else(|_| b.duration_since(a));
    diff.is_ok_and(|d| d <= tolerance)
}

/// Acquire, contend, release, reacquire: the basic life of a lease.
pub async fn acquire_contend_release(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("basic");
    let alice = request(&resource, "alice", 60);
    let lease = granted(b, &alice).await;
    assert_eq!(lease.resource, resource);
    assert_eq!(lease.id, alice.id);
    assert_eq!(lease.principal, "alice");
    assert_eq!(lease.reason, alice.reason);
    assert!(lease.fence > 0, "fences start above zero");
    let now = SystemTime::now();
    assert!(
        within(lease.acquired_at, now, Duration::from_secs(5)),
        "acquired_at is now"
    );
    let ttl = lease
        .expires_at
        .duration_since(lease.acquired_at)
        .unwrap_or_default();
    assert!(
        (59..=61).contains(&ttl.as_secs()),
        "expires_at - acquired_at = {ttl:?}, want the 60 s TTL"
    );

    let bob = request(&resource, "bob", 60);
    let holder = held(b, &bob).await;
    assert_eq!(holder.id, alice.id, "contention reports the holder");
    assert_eq!(holder.principal, "alice");
    assert_eq!(holder.reason, alice.reason);
    assert_eq!(holder.fence, lease.fence);

    let current = b.current(&resource).await.expect("current");
    assert_eq!(current.as_ref().map(|l| &l.id), Some(&alice.id));
    assert!(matches!(
        b.status(&resource, &alice.id).await,
        Ok(LeaseStatus::Current(_))
    ));
    assert!(matches!(
        b.status(&resource, &bob.id).await,
        Ok(LeaseStatus::NotCurrent { evicted: None })
    ));

    assert!(
        !b.release(&resource, &bob.id).await.expect("release"),
        "a foreign id releases nothing"
    );
    assert!(b.current(&resource).await.expect("current").is_some());
    assert!(b.release(&resource, &alice.id).await.expect("release"));
    assert!(
        !b.release(&resource, &alice.id).await.expect("release"),
        "release is idempotent"
    );
    assert_eq!(b.current(&resource).await.expect("current"), None);
    assert!(matches!(
        b.status(&resource, &alice.id).await,
        Ok(LeaseStatus::NotCurrent { .. })
    ));

    let again = granted(b, &bob).await;
    assert!(again.fence > lease.fence, "fence increases across release");
}

/// Releasing or renewing a resource nobody ever locked is harmless.
pub async fn unknown_resource(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("never");
    let id = LeaseId::generate();
    assert!(!b.release(&resource, &id).await.expect("release"));
    assert!(matches!(
        b.renew(&resource, &id, Duration::from_secs(5)).await,
        Err(BackendError::NotCurrent { evicted: None })
    ));
    assert_eq!(b.current(&resource).await.expect("current"), None);
    assert!(matches!(
        b.status(&resource, &id).await,
        Ok(LeaseStatus::NotCurrent { evicted: None })
    ));
    assert_eq!(
        b.force_release(&resource, "admin", "test")
            .await
            .expect("force"),
        None
    );
}

/// Renew moves the expiry with a new TTL; wrong, released and expired leases
/// cannot be renewed.
pub async fn renew(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("renew");
    let req = request(&resource, "alice", 2);
    let lease = granted(b, &req).await;

    let renewed = b
        .renew(&resource, &req.id, Duration::from_secs(600))
        .await
        .expect("renew");
    assert_eq!(renewed.id, req.id);
    assert_eq!(renewed.fence, lease.fence, "renew keeps the fence");
    let left = renewed
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        left > Duration::from_secs(590),
        "renew applies the new TTL, {left:?} left"
    );
    // A shorter TTL works too (etcd needs a new lease for this).
    let shorter = b
        .renew(&resource, &req.id, Duration::from_secs(30))
        .await
        .expect("renew");
    let left = shorter
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        left <= Duration::from_secs(31) && left >= Duration::from_secs(25),
        "{left:?}"
    );

    let stranger = LeaseId::generate();
    assert!(matches!(
        b.renew(&resource, &stranger, Duration::from_secs(5)).await,
        Err(BackendError::NotCurrent { .. })
    ));
    assert!(b.release(&resource, &req.id).await.expect("release"));
    assert!(matches!(
        b.renew(&resource, &req.id, Duration::from_secs(5)).await,
        Err(BackendError::NotCurrent { .. })
    ));

    let short = request(&resource, "alice", 1);
    granted(b, &short).await;
    past_expiry().await;
    assert!(matches!(
        b.renew(&resource, &short.id, Duration::from_secs(5)).await,
        Err(BackendError::NotCurrent { .. })
    ));
}

/// Every read of a lease tells the TTL it was granted or last renewed with,
/// which the lock core renews for when a renewal names none.
pub async fn lease_keeps_its_ttl(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("ttl");
    let req = request(&resource, "alice", 7);
    let seven = Some(Duration::from_secs(7));
    assert_eq!(granted(b, &req).await.ttl, seven, "as granted");
    let current = b.current(&resource).await.expect("current");
    assert_eq!(current.and_then(|l| l.ttl), seven, "as read");
    // Contention shows the holder's TTL too.
    let other = request(&resource, "bob", 60);
    assert_eq!(held(b, &other).await.ttl, seven, "as the holder");

    let renewed = b
        .renew(&resource, &req.id, Duration::from_secs(90))
        .await
        .expect("renew");
    let ninety = Some(Duration::from_secs(90));
    assert_eq!(renewed.ttl, ninety, "as renewed");
    match b.status(&resource, &req.id).await.expect("status") {
        LeaseStatus::Current(lease) => assert_eq!(lease.ttl, ninety, "status after renewal"),
        other => panic!("not current after renewal: {other:?}"),
    }
    let listed = b
        .list(&resource, None, 10)
        .await
        .expect("list")
        .into_iter()
        .find(|l| l.resource == resource)
        .and_then(|l| l.ttl);
    assert_eq!(listed, ninety, "as listed");

    // The next lease has its own.
    assert!(b.release(&resource, &req.id).await.expect("release"));
    let next = request(&resource, "bob", 3);
    assert_eq!(granted(b, &next).await.ttl, Some(Duration::from_secs(3)));
    let current = b.current(&resource).await.expect("current");
    assert_eq!(current.and_then(|l| l.ttl), Some(Duration::from_secs(3)));
}

/// An expired lease frees the resource and stops being current.
pub async fn expiry(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("expiry");
    let first = request(&resource, "alice", 1);
    let lease = granted(b, &first).await;
    past_expiry().await;
    assert_eq!(b.current(&resource).await.expect("current"), None);
    assert!(matches!(
        b.status(&resource, &first.id).await,
        Ok(LeaseStatus::NotCurrent { .. })
    ));
    let list = b.list(&resource, None, 10).await.expect("list");
    assert!(list.is_empty(), "expired leases are not listed: {list:?}");
    let second = request(&resource, "bob", 60);
    let next = granted(b, &second).await;
    assert!(next.fence > lease.fence, "fence increases across expiry");
    assert!(
        !b.release(&resource, &first.id).await.expect("release"),
        "expired lease releases nothing"
    );
    assert!(matches!(
        b.status(&resource, &second.id).await,
        Ok(LeaseStatus::Current(_))
    ));
}

/// An expired lease that nobody took over is still gone: releasing it
/// releases nothing, force-releasing it breaks nothing and records no
/// eviction, and the next lease gets a higher fence.
pub async fn expired_release_and_force_release(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("expired-state");
    let first = request(&resource, "alice", 1);
    let lease = granted(b, &first).await;
    past_expiry().await;
    assert!(
        !b.release(&resource, &first.id).await.expect("release"),
        "an expired lease releases nothing"
    );
    assert_eq!(
        b.force_release(&resource, "admin", "too late")
            .await
            .expect("force"),
        None,
        "an expired lease is not broken"
    );
    assert!(matches!(
        b.status(&resource, &first.id).await,
        Ok(LeaseStatus::NotCurrent { evicted: None })
    ));
    assert!(matches!(
        b.renew(&resource, &first.id, Duration::from_secs(5)).await,
        Err(BackendError::NotCurrent { evicted: None })
    ));
    // Released twice over and broken once: the resource is simply free.
    let second = request(&resource, "bob", 60);
    let next = granted(b, &second).await;
    assert!(next.fence > lease.fence, "fence increases across expiry");
    assert!(matches!(
        b.status(&resource, &second.id).await,
        Ok(LeaseStatus::Current(_))
    ));
    assert!(b.release(&resource, &second.id).await.expect("release"));
}

/// After a force-release, only the evicted lease's id is told who broke it:
/// any other id (a stranger's, or the next holder's) is simply not current.
pub async fn eviction_is_reported_only_to_the_evicted(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("evicted-stranger");
    let alice = request(&resource, "alice", 600);
    granted(b, &alice).await;
    b.force_release(&resource, "oncall", "stuck")
        .await
        .expect("force")
        .expect("a lease was broken");
    let stranger = LeaseId::generate();
    assert!(matches!(
        b.status(&resource, &stranger).await,
        Ok(LeaseStatus::NotCurrent { evicted: None })
    ));
    assert!(matches!(
        b.renew(&resource, &stranger, Duration::from_secs(5)).await,
        Err(BackendError::NotCurrent { evicted: None })
    ));
    assert!(!b.release(&resource, &stranger).await.expect("release"));
    // The evicted holder still learns who and why.
    match b.status(&resource, &alice.id).await {
        Ok(LeaseStatus::NotCurrent { evicted: Some(e) }) => assert_eq!(e.actor, "oncall"),
        other => panic!("evicted lease status: {other:?}"),
    }
    // The next holder is current, not evicted, and cannot be mistaken for
    // the lease that was broken.
    let bob = request(&resource, "bob", 60);
    granted(b, &bob).await;
    assert!(matches!(
        b.status(&resource, &bob.id).await,
        Ok(LeaseStatus::Current(_))
    ));
    assert!(b.release(&resource, &bob.id).await.expect("release"));
    assert!(matches!(
        b.status(&resource, &bob.id).await,
        Ok(LeaseStatus::NotCurrent { evicted: None })
    ));
}

/// An acquisition tried again with the lease id that already holds the
/// resource (its first attempt was applied and the answer lost) is granted
/// that same lease, not told that the resource is held by itself.
pub async fn acquire_is_idempotent(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("idempotent");
    let alice = request(&resource, "alice", 60);
    let first = granted(b, &alice).await;
    let again = granted(b, &alice).await;
    assert_eq!(again.id, first.id);
    assert_eq!(again.fence, first.fence, "the same lease, not a new one");
    let bob = request(&resource, "bob", 60);
    assert_eq!(held(b, &bob).await.id, alice.id);
    assert!(b.release(&resource, &alice.id).await.expect("release"));
    assert!(
        !b.release(&resource, &alice.id).await.expect("release"),
        "one lease, released once"
    );
}

/// `expires_at` is the engine's truth: the lease stays current until then
/// (never early, the promise a holder works by) and is gone soon after (not
/// kept much longer than reported, as when an engine raises a short TTL to
/// its minimum without saying so).
pub async fn expiry_is_what_was_reported(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("reported-expiry");
    let lease = granted(b, &request(&resource, "alice", 1)).await;
    let deadline = SystemTime::now() + Duration::from_secs(10);
    let mut last_seen = SystemTime::now();
    loop {
        let asked = SystemTime::now();
        match b.current(&resource).await.expect("current") {
            Some(current) if current.expires_at > asked => last_seen = asked,
            _ => break,
        }
        assert!(asked < deadline, "a 1 s lease still current after 10 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let gone = SystemTime::now();
    assert!(
        gone + Duration::from_millis(50) >= lease.expires_at,
        "the lease ended {:?} before its reported expiry",
        lease.expires_at.duration_since(gone).unwrap_or_default()
    );
    let late = last_seen
        .duration_since(lease.expires_at)
        .unwrap_or_default();
    assert!(
        late <= Duration::from_millis(1_200),
        "the lease was still current {late:?} after its reported expiry"
    );
}

/// Fences strictly increase over many acquisitions mixing every way a lease
/// ends.
pub async fn fences_strictly_increase(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("fence");
    let mut last = 0;
    for round in 0..6 {
        let req = request(&resource, "alice", 1);
        let lease = granted(b, &req).await;
        assert!(
            lease.fence > last,
            "round {round}: fence {} after {last}",
            lease.fence
        );
        last = lease.fence;
        match round % 3 {
            0 => assert!(b.release(&resource, &req.id).await.expect("release")),
            1 => assert!(
                b.force_release(&resource, "admin", "rotate")
                    .await
                    .expect("force")
                    .is_some()
            ),
            _ => past_expiry().await,
        }
    }
}

/// Of 32 concurrent acquirers of one resource exactly one wins, and every
/// loser sees the winner as the holder.
pub async fn concurrent_acquirers(backend: Arc<dyn Backend>) {
    let resource = unique("race");
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let backend = backend.clone();
            let req = request(&resource, &format!("worker-{i}"), 60);
            tokio::spawn(async move { backend.acquire(&req).await })
        })
        .collect();
    let mut winners = Vec::new();
    let mut holders = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(Acquisition::Granted(lease)) => winners.push(lease),
            Ok(Acquisition::Held(holder)) => holders.push(holder),
            Err(e) => panic!("acquire failed: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    let winner = &winners[0];
    for holder in &holders {
        assert_eq!(holder.id, winner.id, "losers see the winner");
    }
}

/// List returns live leases under a prefix, in order, a page at a time.
pub async fn list_and_paginate(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let base = unique("list");
    let names = ["a", "b/x", "b/y", "c"].map(|n| format!("{base}/{n}"));
    for name in &names {
        granted(b, &request(name, "alice", 60)).await;
    }
    let expiring = format!("{base}/d");
    granted(b, &request(&expiring, "alice", 1)).await;
    granted(b, &request(&format!("{base}-sibling/a"), "alice", 60)).await;
    past_expiry().await;

    let all = b.list(&format!("{base}/"), None, 100).await.expect("list");
    let got: Vec<_> = all.iter().map(|l| l.resource.clone()).collect();
    assert_eq!(got, names.to_vec(), "live leases under the prefix, sorted");

    let sub = b
        .list(&format!("{base}/b/"), None, 100)
        .await
        .expect("list");
    assert_eq!(sub.len(), 2);

    let first = b.list(&format!("{base}/"), None, 2).await.expect("list");
    assert_eq!(first.len(), 2);
    let after = first.last().map(|l| l.resource.clone());
    let second = b
        .list(&format!("{base}/"), after.as_deref(), 2)
        .await
        .expect("list");
    let mut paged: Vec<_> = first
        .iter()
        .chain(&second)
        .map(|l| l.resource.clone())
        .collect();
    let after = second.last().map(|l| l.resource.clone());
    let third = b
        .list(&format!("{base}/"), after.as_deref(), 2)
        .await
        .expect("list");
    assert!(third.is_empty(), "no third page: {third:?}");
    paged.sort();
    assert_eq!(paged, names.to_vec(), "pages cover everything once");
}

/// Force-release breaks the lease, records who and why, and raises the fence.
pub async fn force_release(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("force");
    let req = request(&resource, "alice", 600);
    let lease = granted(b, &req).await;
    let broken = b
        .force_release(&resource, "oncall", "stuck deploy")
        .await
        .expect("force")
        .expect("a lease was broken");
    assert_eq!(broken.id, req.id);
    assert_eq!(b.current(&resource).await.expect("current"), None);
    match b.status(&resource, &req.id).await {
        Ok(LeaseStatus::NotCurrent { evicted: Some(e) }) => {
            assert_eq!(e.actor, "oncall");
            assert_eq!(e.reason, "stuck deploy");
        }
        other => panic!("evicted lease status: {other:?}"),
    }
    match b.renew(&resource, &req.id, Duration::from_secs(5)).await {
        Err(BackendError::NotCurrent { evicted: Some(e) }) => assert_eq!(e.actor, "oncall"),
        other => panic!("renew of an evicted lease: {other:?}"),
    }
    assert!(!b.release(&resource, &req.id).await.expect("release"));
    let next = granted(b, &request(&resource, "bob", 60)).await;
    assert!(
        next.fence > lease.fence,
        "fence increases across force-release"
    );
    assert!(matches!(
        b.status(&resource, &next.id).await,
        Ok(LeaseStatus::Current(_))
    ));
}

/// Names at the limits: 512 bytes, multi-byte UTF-8, quotes, wildcards and
/// separators are stored and returned exactly.
pub async fn names_at_limits(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let base = unique("names");
    let long = format!("{base}/{}", "x".repeat(512 - base.len() - 1));
    assert_eq!(long.len(), 512);
    let names = [
        long,
        format!("{base}/ünïcødé/锁/🔒"),
        format!("{base}/it's \"quoted\""),
        format!("{base}/%_*?[]{{}}\\"),
        format!("{base}/a b\tc"),
        format!("{base}/;DROP TABLE locks;--"),
    ];
    for name in &names {
        let req = request(name, "alice", 60);
        let lease = granted(b, &req).await;
        assert_eq!(&lease.resource, name);
        let current = b.current(name).await.expect("current").expect("held");
        assert_eq!(&current.resource, name);
        assert_eq!(current.id, req.id);
    }
    let listed = b.list(&format!("{base}/"), None, 100).await.expect("list");
    assert_eq!(listed.len(), names.len(), "{listed:?}");
    // A prefix with LIKE/glob metacharacters matches literally.
    let literal = b.list(&format!("{base}/%"), None, 100).await.expect("list");
    assert_eq!(literal.len(), 1, "{literal:?}");
}

/// Reasons and principals of up to 1 KiB survive the round trip.
pub async fn long_reason(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("reason");
    let mut req = request(&resource, &"p".repeat(256), 60);
    req.reason = "r".repeat(1024);
    let lease = granted(b, &req).await;
    assert_eq!(lease.reason.len(), 1024);
    let holder = held(b, &request(&resource, "bob", 60)).await;
    assert_eq!(holder.reason, req.reason);
    assert_eq!(holder.principal, req.principal);
}

/// The health check answers.
pub async fn health(backend: Arc<dyn Backend>) {
    backend.health().await.expect("healthy");
}

/// A reservation book is written only over the version it was read at:
/// the first write of a missing book, then each write over the last, with
/// any other expected version refused; bodies come back byte for byte.
pub async fn books_compare_and_swap(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let resource = unique("book/ünïcode ✓");
    assert_eq!(b.book(&resource).await.expect("book"), None, "no book yet");
    assert!(
        !b.write_book(&resource, 7, b"x").await.expect("write"),
        "a version that was never written is refused"
    );
    assert!(b.write_book(&resource, 0, b"first").await.expect("write"));
    let first = b.book(&resource).await.expect("book").expect("written");
    assert_eq!(first.resource, resource);
    assert_eq!(first.body, b"first");
    assert_ne!(first.version, 0, "0 stands for no book");
    assert!(
        !b.write_book(&resource, 0, b"again").await.expect("write"),
        "a second first write is refused"
    );
    // Any bytes, large enough for a full book.
    let body: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    assert!(
        b.write_book(&resource, first.version, &body)
            .await
            .expect("write")
    );
    let second = b.book(&resource).await.expect("book").expect("written");
    assert_eq!(second.body, body);
    assert_ne!(
        second.version, first.version,
        "every write changes the version"
    );
    assert!(
        !b.write_book(&resource, first.version, b"stale")
            .await
            .expect("write"),
        "a write over an older version is refused"
    );
    assert!(
        b.write_book(&resource, second.version, b"{}")
            .await
            .expect("write")
    );
    let third = b.book(&resource).await.expect("book").expect("written");
    assert_eq!(third.body, b"{}");
    assert_ne!(third.version, second.version);
    assert_ne!(third.version, first.version);
}

/// Of several writers over the same version, exactly one wins.
pub async fn concurrent_book_writers(backend: Arc<dyn Backend>) {
    let resource = unique("book-race");
    for round in 0..3u32 {
        let expected = backend
            .book(&resource)
            .await
            .expect("book")
            .map_or(0, |b| b.version);
        let writers = (0..8u32).map(|i| {
            let (backend, resource) = (backend.clone(), resource.clone());
            tokio::spawn(async move {
                let body = format!("round {round} writer {i}");
                let won = backend
                    .write_book(&resource, expected, body.as_bytes())
                    .await
                    .expect("write");
                won.then_some(body)
            })
        });
        let winners: Vec<String> = futures::future::join_all(writers)
            .await
            .into_iter()
            .filter_map(|r| r.expect("writer"))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let book = backend
            .book(&resource)
            .await
            .expect("book")
            .expect("written");
        assert_eq!(
            book.body,
            winners[0].as_bytes(),
            "the winner's body is stored"
        );
    }
}

/// Books are listed under a prefix in resource order, a page at a time.
pub async fn books_list_and_paginate(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    let base = unique("books");
    let names = ["a", "b/x", "b/y", "c"].map(|n| format!("{base}/{n}"));
    // Written out of order, and a sibling outside the prefix.
    for name in names.iter().rev().chain([&format!("{base}-sibling/a")]) {
        assert!(b.write_book(name, 0, name.as_bytes()).await.expect("write"));
    }
    let all = b
        .books(&format!("{base}/"), None, 100)
        .await
        .expect("books");
    let got: Vec<_> = all.iter().map(|b| b.resource.clone()).collect();
    assert_eq!(got, names.to_vec(), "books under the prefix, sorted");
    for book in &all {
        assert_eq!(book.body, book.resource.as_bytes());
        assert_ne!(book.version, 0);
    }
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = b
            .books(&format!("{base}/"), after.as_deref(), 3)
            .await
            .expect("books");
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|b| b.resource.clone());
        paged.extend(page.into_iter().map(|b| b.resource));
    }
    assert_eq!(
        paged,
        names.to_vec(),
        "pages cover everything once, in order"
    );
    let sub = b
        .books(&format!("{base}/b/"), None, 100)
        .await
        .expect("books");
    assert_eq!(sub.len(), 2);
    // A cursor that sorts before the prefix starts at the prefix, whatever
    // lies between (other cases' books).
    let early = b
        .books(&format!("{base}/"), Some("conformance/"), 100)
        .await
        .expect("books");
    assert_eq!(early.len(), names.len(), "{early:?}");
}

/// Instantiates every conformance case as a `#[tokio::test]` for the backend
/// that `$make` builds: an async expression yielding `Option<Arc<dyn Backend>>`,
/// `None` when the engine is not available (see `support::engine_url`).
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance::conformance_tests!(@cases $make;
            acquire_contend_release, unknown_resource, renew, lease_keeps_its_ttl, expiry,
            expired_release_and_force_release, eviction_is_reported_only_to_the_evicted,
            acquire_is_idempotent, expiry_is_what_was_reported,
            fences_strictly_increase, concurrent_acquirers, list_and_paginate,
            force_release, names_at_limits, long_reason, health,
            books_compare_and_swap, concurrent_book_writers, books_list_and_paginate);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if let Some(backend) = $make {
                    $crate::conformance::$case(backend).await
                }
            }
        )*
    };
}
pub(crate) use conformance_tests;
