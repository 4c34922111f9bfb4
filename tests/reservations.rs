//! Reservations through the service: booked through one daemon and refused
//! through another, never two overlapping, refused like a held lock to
//! everyone but their owner, leases cut short at their start, cancelled by
//! their owner or an administrator; and through the real binaries.

use std::time::{Duration, SystemTime};

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{TestDaemon, secs, unique};

const MEMORY: &str = "[backends.main]\ntype = \"memory\"\n";

fn at(t: Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(t.expect("timestamp")).expect("time")
}

fn reserve(resource: &str, from: Option<SystemTime>, until: SystemTime) -> pb::ReserveRequest {
    pb::ReserveRequest {
        resource: resource.to_string(),
        starts_at: from.map(Into::into),
        ends_at: Some(until.into()),
        reason: "load test".to_string(),
        ..Default::default()
    }
}

fn acquire(resource: &str, ttl: i64) -> pb::AcquireRequest {
    pb::AcquireRequest {
        resource: resource.to_string(),
        ttl: secs(ttl),
        ..Default::default()
    }
}

async fn book(
    client: &mut LockServiceClient<Channel>,
    req: pb::ReserveRequest,
) -> pb::ReserveResponse {
    client.reserve(req).await.expect("reserve").into_inner()
}

#[tokio::test]
async fn a_reservation_refuses_everyone_but_its_owner() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut alice = daemon.client_as("alice").await;
    let mut bob = daemon.client_as("bob").await;
    let now = SystemTime::now();
    let booked = book(
        &mut alice,
        reserve("staging", None, now + Duration::from_secs(3600)),
    )
    .await;
    assert!(booked.reserved);
    let reservation = booked.reservation.expect("reservation");
    assert_eq!(reservation.owner, "alice");
    assert_eq!(reservation.resource, "staging");
    assert_eq!(reservation.id.len(), 8);

    let refused = bob
        .acquire(acquire("staging", 60))
        .await
        .expect("acquire")
        .into_inner();
    assert!(!refused.acquired);
    assert_eq!(refused.holder, None);
    let window = refused.window.expect("the reservation refuses");
    assert_eq!(window.kind(), pb::window::Kind::Reservation);
    assert_eq!(window.name, reservation.id);
    assert_eq!(window.owner, "alice");
    assert_eq!(window.reason, "load test");

    let current = bob
        .current(pb::CurrentRequest {
            resource: "staging".into(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner();
    assert_eq!(current.window.map(|w| w.owner).as_deref(), Some("alice"));

    let mine = alice
        .acquire(acquire("staging", 60))
        .await
        .expect("acquire")
        .into_inner();
    assert!(mine.acquired, "the owner acquires: {mine:?}");
    assert_eq!(mine.cut_short_by, None);
}

#[tokio::test]
async fn no_lease_of_anyone_else_runs_past_the_start_of_a_reservation() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut alice = daemon.client_as("alice").await;
    let mut bob = daemon.client_as("bob").await;
    let start = SystemTime::now() + Duration::from_secs(120);
    let booked = book(
        &mut alice,
        reserve("staging", Some(start), start + Duration::from_secs(600)),
    )
    .await;
    assert!(booked.reserved);
    let granted = bob
        .acquire(acquire("staging", 600))
        .await
        .expect("acquire")
        .into_inner();
    assert!(granted.acquired);
    let cut = granted.cut_short_by.expect("cut short");
    assert_eq!(cut.kind(), pb::window::Kind::Reservation);
    let lease = granted.lease.expect("lease");
    let expires = at(lease.expires_at);
    assert!(expires <= start, "{expires:?} after the start {start:?}");
    assert!(expires + Duration::from_secs(5) >= start);

    // The owner's own lease is not cut.
    let released = bob
        .release(pb::ReleaseRequest {
            resource: "staging".into(),
            lease_id: lease.lease_id,
        })
        .await
        .expect("release")
        .into_inner();
    assert!(released.released);
    let own = alice
        .acquire(acquire("staging", 600))
        .await
        .expect("acquire")
        .into_inner();
    assert!(own.acquired);
    assert_eq!(own.cut_short_by, None);
}

#[tokio::test]
async fn overlaps_are_refused_naming_the_one_in_the_way_and_only_owners_cancel() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut alice = daemon.client_as("alice").await;
    let mut bob = daemon.client_as("bob").await;
    let mut admin = daemon.client().await;
    let start = SystemTime::now() + Duration::from_secs(3600);
    let end = start + Duration::from_secs(3600);
    let first = book(&mut alice, reserve("staging", Some(start), end))
        .await
        .reservation
        .expect("reserved");
    let overlapping = book(
        &mut bob,
        reserve(
            "staging",
            Some(start + Duration::from_secs(1800)),
            end + Duration::from_secs(1800),
        ),
    )
    .await;
    assert!(!overlapping.reserved);
    assert_eq!(overlapping.reservation, None);
    assert_eq!(overlapping.overlapping.as_ref(), Some(&first));
    // Right after it: fine.
    let after = book(
        &mut bob,
        reserve("staging", Some(end), end + Duration::from_secs(60)),
    )
    .await;
    assert!(after.reserved);

    let listed = bob
        .list_reservations(pb::ListReservationsRequest {
            prefix: "stag".into(),
        })
        .await
        .expect("list")
        .into_inner();
    let owners: Vec<&str> = listed
        .reservations
        .iter()
        .map(|r| r.owner.as_str())
        .collect();
    assert_eq!(owners, ["alice", "bob"], "by start");

    let unreserve = |id: &str, reason: &str| pb::UnreserveRequest {
        resource: "staging".into(),
        id: id.to_string(),
        reason: reason.to_string(),
        ..Default::default()
    };
    let denied = bob
        .unreserve(unreserve(&first.id, ""))
        .await
        .expect_err("not bob's");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let no_reason = admin
        .unreserve(unreserve(&first.id, ""))
        .await
        .expect_err("an administrator says why");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    let cancelled = admin
        .unreserve(unreserve(&first.id, "maintenance"))
        .await
        .expect("admin cancels")
        .into_inner();
    assert_eq!(cancelled.cancelled, Some(first.clone()));
    let again = alice
        .unreserve(unreserve(&first.id, ""))
        .await
        .expect("idempotent")
        .into_inner();
    assert_eq!(again.cancelled, None);
}

#[tokio::test]
async fn bad_reservations_are_refused_saying_why() {
    let daemon = TestDaemon::start(
        &format!("{MEMORY}[reservations]\nmax_ahead = \"7d\"\nmax_length = \"1d\"\n"),
        false,
    )
    .await;
    let mut alice = daemon.client_as("alice").await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    for (req, expect) in [
        (
            pb::ReserveRequest {
                ends_at: None,
                ..reserve("staging", None, now + hour)
            },
            "ends_at is required",
        ),
        (
            pb::ReserveRequest {
                reason: " ".into(),
                ..reserve("staging", None, now + hour)
            },
            "reason is required",
        ),
        (reserve("", None, now + hour), "resource"),
        (
            reserve("staging", Some(now + hour), now + Duration::from_secs(60)),
            "must end after it starts",
        ),
        (
            reserve("staging", Some(now + 8 * 24 * hour), now + 9 * 24 * hour),
            "reservations.max_ahead",
        ),
        (
            reserve("staging", None, now + 2 * 24 * hour),
            "reservations.max_length",
        ),
    ] {
        let err = alice.reserve(req).await.expect_err(expect);
        assert_eq!(err.code(), Code::InvalidArgument, "{expect}: {err:?}");
        assert!(err.message().contains(expect), "{expect}: {err:?}");
    }
    let bad_id = alice
        .unreserve(pb::UnreserveRequest {
            resource: "staging".into(),
            id: "../x".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad id");
    assert_eq!(bad_id.code(), Code::InvalidArgument);
}

/// Two daemons on one engine: of many overlapping bookings spread over
/// both, exactly one succeeds; a reservation booked through one is
/// enforced by the other within its refresh.
async fn two_daemons_book_once(backend: &str) {
    let config = format!("[backends.main]\n{backend}\n");
    let a = TestDaemon::start(&config, false).await;
    let b = TestDaemon::start(&config, false).await;
    let resource = format!("reservations/{}", unique());
    let start = SystemTime::now() + Duration::from_secs(3600);
    let clients = [a.client_as("alice").await, b.client_as("bob").await];
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let mut client = clients[(i % 2) as usize].clone();
            let req = reserve(
                &resource,
                Some(start + Duration::from_secs(i * 60)),
                start + Duration::from_secs(3600 + i * 60),
            );
            tokio::spawn(async move { client.reserve(req).await.map(|r| r.into_inner()) })
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        let answer = task.await.expect("task").expect("reserve");
        if answer.reserved {
            reserved += 1;
        } else {
            assert!(answer.overlapping.is_some(), "{answer:?}");
        }
    }
    assert_eq!(reserved, 1, "exactly one of the overlapping bookings");

    // In force now, booked through a; b refuses carol within its refresh.
    let now_resource = format!("{resource}-now");
    let mut alice = a.client_as("alice").await;
    let booked = book(
        &mut alice,
        reserve(
            &now_resource,
            None,
            SystemTime::now() + Duration::from_secs(600),
        ),
    )
    .await;
    assert!(booked.reserved);
    let mut carol = b.client_as("carol").await;
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = carol
                .acquire(acquire(&now_resource, 5))
                .await
                .expect("acquire")
                .into_inner();
            if let Some(window) = answer.window {
                return window;
            }
            if let Some(lease) = answer.lease {
                carol
                    .release(pb::ReleaseRequest {
                        resource: now_resource.clone(),
                        lease_id: lease.lease_id,
                    })
                    .await
                    .expect("release");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the other daemon learns of the reservation");
    assert_eq!(refused.owner, "alice");
}

mod two_daemons {
    use super::two_daemons_book_once;
    on_shared_engines!("reservations", two_daemons_book_once);
}

/// The CLI: `reserve` prints the id, `reservations` lists it, an overlap
/// exits 2 naming it, `unreserve` cancels (exit 1 the second time).
#[test]
fn the_cli_books_lists_and_cancels() {
    use crate::e2e::Daemon;
    let daemon = Daemon::start_with(&[]);
    let id = daemon
        .cli(&[
            "reserve",
            "staging",
            "--from",
            "+1h",
            "--for",
            "2h",
            "--reason",
            "load test",
        ])
        .ok()
        .line();
    assert_eq!(id.len(), 8, "{id}");

    let listed = daemon.cli(&["reservations", "-f", "json"]).ok();
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(rows[0]["kind"], "reservation", "{rows}");
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["resource"], "staging");
    assert_eq!(rows[0]["reason"], "load test");
    let table = daemon.cli(&["reservations", "stag"]).ok();
    assert!(table.stdout.starts_with("RESOURCE"), "{table:?}");
    assert!(
        table.stdout.contains(&format!("reservation {id}")),
        "{table:?}"
    );

    let overlap = daemon
        .cli(&[
            "reserve", "staging", "--from", "+2h", "--until", "+4h", "--reason", "other",
        ])
        .exit(2);
    assert!(overlap.stdout.is_empty(), "{overlap:?}");
    assert!(
        overlap
            .stderr
            .contains("Reservation overlaps another on staging")
            && overlap.stderr.contains(&id),
        "{overlap:?}"
    );

    let bad = daemon
        .cli(&[
            "reserve",
            "staging",
            "--until",
            "next week",
            "--reason",
            "x",
        ])
        .exit(64);
    assert!(bad.stderr.contains("is not a time"), "{bad:?}");

    // In force now: `list` says so under its table.
    let now_id = daemon
        .cli(&[
            "reserve",
            "lab/gpu",
            "--for",
            "1h",
            "--reason",
            "training run",
        ])
        .ok()
        .line();
    let list = daemon.cli(&["list"]).ok();
    assert!(list.stdout.contains("Windows in force:"), "{list:?}");
    assert!(
        list.stdout.lines().any(|l| l.contains("lab/gpu")
            && l.contains(&format!("reservation {now_id} of "))
            && l.contains("(training run)")),
        "{list:?}"
    );
    assert!(
        !list.stdout.contains(&format!("reservation {id}")),
        "not in force yet: {list:?}"
    );
    daemon.cli(&["unreserve", "lab/gpu", &now_id]).ok();
    let list = daemon.cli(&["list"]).ok();
    assert!(!list.stdout.contains("Windows in force:"), "{list:?}");

    daemon.cli(&["unreserve", "staging", &id]).ok();
    let again = daemon.cli(&["unreserve", "staging", &id]).exit(1);
    assert!(again.stderr.contains("no reservation"), "{again:?}");
    let empty = daemon.cli(&["reservations"]).ok();
    assert!(empty.stdout.is_empty(), "{empty:?}");
}

/// `Watch` reports bookings and cancellations of its resources, and the
/// freezes that cover them starting and ending; lease events go on as usual.
#[tokio::test]
async fn watch_shows_windows_starting_ending_booked_and_cancelled() {
    let start = SystemTime::now() + Duration::from_secs(2);
    let secs_since_epoch = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    };
    let start_text = time::OffsetDateTime::from_unix_timestamp(secs_since_epoch(start) as i64 + 1)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let config = format!(
        "{MEMORY}[[freezes]]\nname = \"short\"\nmatch = [\"staging/**\"]\nstart = \"{start_text}\"\n\
         duration = \"2s\"\nreason = \"a short freeze\"\n"
    );
    let daemon = TestDaemon::start(&config, false).await;
    let mut alice = daemon.client_as("alice").await;
    let mut watcher = daemon.client().await;
    let mut events = watcher
        .watch(pb::WatchRequest {
            prefix: "staging/".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut other = watcher
        .watch(pb::WatchRequest {
            resource: "prod/db".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();

    let booked = book(
        &mut alice,
        reserve(
            "staging/db",
            Some(SystemTime::now() + Duration::from_secs(3600)),
            SystemTime::now() + Duration::from_secs(7200),
        ),
    )
    .await
    .reservation
    .expect("reserved");
    // A lease event in between: both kinds arrive on one stream.
    alice
        .acquire(acquire("staging/web", 60))
        .await
        .expect("acquire");

    let mut seen = Vec::new();
    let wanted = [
        pb::EventType::Reserved,
        pb::EventType::Acquired,
        pb::EventType::FreezeStarted,
        pb::EventType::FreezeEnded,
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !wanted.iter().all(|w| seen.iter().any(|(k, _)| k == w)) {
        let event = tokio::time::timeout_at(deadline, events.message())
            .await
            .expect("every event within 20 s")
            .expect("watch")
            .expect("open");
        let kind = pb::EventType::try_from(event.r#type).expect("known");
        seen.push((kind, event));
    }
    let find = |kind| {
        seen.iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, e)| e.clone())
            .expect("seen")
    };
    let reserved = find(pb::EventType::Reserved).window.expect("window");
    assert_eq!(reserved.name, booked.id);
    assert_eq!(reserved.resource, "staging/db");
    assert_eq!(reserved.owner, "alice");
    let started = find(pb::EventType::FreezeStarted).window.expect("window");
    assert_eq!(started.name, "short");
    assert_eq!(started.kind(), pb::window::Kind::Freeze);
    let ended = find(pb::EventType::FreezeEnded).window.expect("window");
    assert_eq!(ended.name, "short");
    let positions = |kind| seen.iter().position(|(k, _)| *k == kind);
    assert!(positions(pb::EventType::FreezeStarted) < positions(pb::EventType::FreezeEnded));

    // Cancelled before its end: unreserved.
    alice
        .unreserve(pb::UnreserveRequest {
            resource: "staging/db".into(),
            id: booked.id.clone(),
            ..Default::default()
        })
        .await
        .expect("unreserve");
    let cancelled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.message().await.expect("watch").expect("open");
            if event.r#type == pb::EventType::Unreserved as i32 {
                return event;
            }
        }
    })
    .await
    .expect("unreserved within 10 s");
    assert_eq!(cancelled.window.map(|w| w.name), Some(booked.id));

    // A watch of another resource saw none of it: its first event is its
    // own resource's.
    alice
        .acquire(acquire("prod/db", 60))
        .await
        .expect("acquire");
    let first = tokio::time::timeout(Duration::from_secs(10), other.message())
        .await
        .expect("an event")
        .expect("watch")
        .expect("open");
    assert_eq!(first.r#type, pb::EventType::Acquired as i32, "{first:?}");
}
