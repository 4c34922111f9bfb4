//! Bad input on every RPC: one table of malformed requests, each answered
//! INVALID_ARGUMENT with a message that says what is wrong; afterwards the
//! daemon still serves and nothing was granted. Well-formed lease ids that
//! are not the caller's change nothing.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::{TestDaemon, secs};

const CONFIG: &str =
    "[defaults]\nmax_ttl = \"1d\"\nmax_wait = \"1h\"\n[backends.main]\ntype = \"memory\"\n";

fn span(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// One malformed request: what its refusal must mention, and the call.
struct Case {
    rpc: &'static str,
    needle: &'static str,
    call: Box<dyn Fn(LockServiceClient<Channel>) -> Call>,
}

fn acquire(needle: &'static str, edit: impl Fn(&mut pb::AcquireRequest) + 'static) -> Case {
    Case {
        rpc: "Acquire",
        needle,
        call: Box::new(move |mut c| {
            let mut req = pb::AcquireRequest {
                resource: "ok".into(),
                ..Default::default()
            };
            edit(&mut req);
            Box::pin(async move { c.acquire(req).await.map(drop) })
        }),
    }
}

/// The same malformed resource, lease id and TTL on Release, Renew and
/// IsHeld.
fn with_lease(needle: &'static str, resource: &str, lease_id: &str) -> Vec<Case> {
    let (r, id) = (resource.to_string(), lease_id.to_string());
    let (r2, id2, r3, id3) = (r.clone(), id.clone(), r.clone(), id.clone());
    vec![
        Case {
            rpc: "Release",
            needle,
            call: Box::new(move |mut c| {
                let req = pb::ReleaseRequest {
                    resource: r.clone(),
                    lease_id: id.clone(),
                };
                Box::pin(async move { c.release(req).await.map(drop) })
            }),
        },
        Case {
            rpc: "Renew",
            needle,
            call: Box::new(move |mut c| {
                let req = pb::RenewRequest {
                    resource: r2.clone(),
                    lease_id: id2.clone(),
                    ttl: None,
                };
                Box::pin(async move { c.renew(req).await.map(drop) })
            }),
        },
        Case {
            rpc: "IsHeld",
            needle,
            call: Box::new(move |mut c| {
                let req = pb::IsHeldRequest {
                    resource: r3.clone(),
                    lease_id: id3.clone(),
                };
                Box::pin(async move { c.is_held(req).await.map(drop) })
            }),
        },
    ]
}

fn renew_ttl(needle: &'static str, ttl: Option<prost_types::Duration>) -> Case {
    Case {
        rpc: "Renew",
        needle,
        call: Box::new(move |mut c| {
            let req = pb::RenewRequest {
                resource: "ok".into(),
                lease_id: "0".repeat(32),
                ttl,
            };
            Box::pin(async move { c.renew(req).await.map(drop) })
        }),
    }
}

fn current(needle: &'static str, resource: &str) -> Case {
    let resource = resource.to_string();
    Case {
        rpc: "Current",
        needle,
        call: Box::new(move |mut c| {
            let req = pb::CurrentRequest {
                resource: resource.clone(),
                ..Default::default()
            };
            Box::pin(async move { c.current(req).await.map(drop) })
        }),
    }
}

fn list(needle: &'static str, prefix: &str, page_token: &str) -> Case {
    let (prefix, page_token) = (prefix.to_string(), page_token.to_string());
    Case {
        rpc: "List",
        needle,
        call: Box::new(move |mut c| {
            let req = pb::ListRequest {
                prefix: prefix.clone(),
                page_size: 10,
                page_token: page_token.clone(),
            };
            Box::pin(async move { c.list(req).await.map(drop) })
        }),
    }
}

fn force(needle: &'static str, resource: &str, reason: &str) -> Case {
    let (resource, reason) = (resource.to_string(), reason.to_string());
    Case {
        rpc: "ForceRelease",
        needle,
        call: Box::new(move |mut c| {
            let req = pb::ForceReleaseRequest {
                resource: resource.clone(),
                reason: reason.clone(),
            };
            Box::pin(async move { c.force_release(req).await.map(drop) })
        }),
    }
}

fn cases() -> Vec<Case> {
    let long = "x".repeat(513);
    let token = |text: &str| hex::encode(text.as_bytes());
    let mut cases = vec![
        acquire("resource is empty", |r| r.resource = String::new()),
        acquire("513 bytes", |r| r.resource = "x".repeat(513)),
        acquire("control character", |r| r.resource = "a\nb".into()),
        acquire("control character", |r| r.resource = "a\u{0}b".into()),
        acquire("control character", |r| r.resource = "\u{1b}[31mred".into()),
        acquire("control character", |r| r.resource = "del\u{7f}".into()),
        acquire("control character", |r| r.resource = "c1\u{85}".into()),
        acquire("at least 1s", |r| r.ttl = secs(0)),
        acquire("negative", |r| r.ttl = secs(-5)),
        acquire("negative", |r| r.ttl = secs(i64::MIN)),
        acquire("exceeds the maximum", |r| r.ttl = secs(86_401)),
        acquire("exceeds the maximum", |r| r.ttl = secs(i64::MAX)),
        acquire("whole seconds", |r| r.ttl = span(1, 5)),
        acquire("negative", |r| r.ttl = span(1, -5)),
        acquire("malformed", |r| r.ttl = span(1, 2_000_000_000)),
        acquire("negative", |r| r.wait = secs(-1)),
        acquire("exceeds the maximum", |r| r.wait = secs(7200)),
        acquire("exceeds the maximum", |r| r.wait = secs(i64::MAX)),
        acquire("negative", |r| r.wait = span(0, -1)),
        acquire("negative", |r| r.wait = secs(i64::MIN)),
        acquire("malformed", |r| r.wait = span(1, 1_000_000_000)),
        acquire("reason", |r| r.reason = "r".repeat(1025)),
        acquire("control character", |r| r.reason = "line\nbreak".into()),
        acquire("principal", |r| r.principal = "p".repeat(300)),
        renew_ttl("at least 1s", secs(0)),
        renew_ttl("negative", secs(-1)),
        renew_ttl("negative", secs(i64::MIN)),
        renew_ttl("exceeds the maximum", secs(i64::MAX)),
        renew_ttl("whole seconds", span(3, 1)),
        current("resource is empty", ""),
        current("513 bytes", &long),
        current("control character", "tab\there"),
        list("control character", "\u{1b}", ""),
        list("513 bytes", &long, ""),
        list("page_token", "a", "not-hex"),
        list("page_token", "a", "abc"),
        list("page_token", "", "fffe"),
        list("page_token", "team/", &token("other/x")),
        list("page_token", "", &token("a\nb")),
        list("page_token", "", &"ab".repeat(2000)),
        force("reason is required", "ok", ""),
        force("reason is required", "ok", "   "),
        force("reason", "ok", &"r".repeat(1025)),
        force("control character", "ok", "why\u{7}"),
        force("resource is empty", "", "because"),
    ];
    let id = "0".repeat(32);
    for (needle, lease_id) in [
        ("lease_id is empty", String::new()),
        ("not a Stormlock lease id", "nope".into()),
        ("not a Stormlock lease id", "f".repeat(5000)),
        ("not a Stormlock lease id", "A".repeat(32)),
        (
            "not a Stormlock lease id",
            "123e4567-e89b-12d3-a456-426614174000".into(),
        ),
        ("not a Stormlock lease id", format!("{id} ")),
    ] {
        cases.extend(with_lease(needle, "ok", &lease_id));
    }
    cases.extend(with_lease("resource is empty", "", &id));
    cases.extend(with_lease("513 bytes", &long, &id));
    cases.extend(with_lease("control character", "a\rb", &id));
    cases
}

#[tokio::test]
async fn every_rpc_refuses_malformed_values_with_a_message_and_keeps_serving() {
    let daemon = TestDaemon::start(CONFIG, false).await;
    let client = daemon.client().await;
    let cases = cases();
    assert!(cases.len() > 60, "the table covers every RPC");
    for case in &cases {
        let answer = tokio::time::timeout(Duration::from_secs(10), (case.call)(client.clone()))
            .await
            .unwrap_or_else(|_| panic!("{} ({}) hung", case.rpc, case.needle));
        let status = answer.expect_err(case.needle);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{} ({}): {status:?}",
            case.rpc,
            case.needle
        );
        assert!(
            status.message().contains(case.needle),
            "{}: {:?} not in {:?}",
            case.rpc,
            case.needle,
            status.message()
        );
    }

    // A request larger than any valid one is refused by the transport
    // before it is buffered, without taking the daemon down.
    let mut huge = client.clone();
    let status = huge
        .acquire(pb::AcquireRequest {
            resource: "x".repeat(100_000),
            ..Default::default()
        })
        .await
        .expect_err("a 100 kB request");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    // Still serving, and nothing was taken by the refused calls.
    let ok = client
        .clone()
        .acquire(pb::AcquireRequest {
            resource: "ok".into(),
            ..Default::default()
        })
        .await
        .expect("acquire after bad input")
        .into_inner();
    assert!(ok.acquired);
    assert_eq!(ok.lease.expect("lease").fence, 1, "no refused call granted");
}

/// Watch selections: exactly one of resource and prefix, each well-formed.
/// A selection is judged before the stream starts: a bad one is refused
/// as the call's answer, a good one gets a stream.
#[tokio::test]
async fn watch_refuses_bad_selections() {
    let daemon = TestDaemon::start(CONFIG, false).await;
    let client = daemon.client().await;
    let first = |req: pb::WatchRequest| {
        let mut c = client.clone();
        async move { c.watch(req).await.map(drop) }
    };
    for good in [
        pb::WatchRequest {
            resource: "ok".into(),
            prefix: String::new(),
        },
        pb::WatchRequest {
            resource: String::new(),
            prefix: "ok/".into(),
        },
        pb::WatchRequest::default(),
    ] {
        first(good.clone())
            .await
            .unwrap_or_else(|e| panic!("{good:?} refused: {e:?}"));
    }
    for (needle, resource, prefix) in [
        ("resource", "a", "b"),
        ("control character", "a\nb", ""),
        ("control character", "", "\u{1b}"),
        ("513 bytes", &"x".repeat(513) as &str, ""),
        ("513 bytes", "", &"x".repeat(513) as &str),
    ] {
        let status = first(pb::WatchRequest {
            resource: resource.into(),
            prefix: prefix.into(),
        })
        .await
        .expect_err(needle);
        assert_eq!(status.code(), Code::InvalidArgument, "{needle}: {status:?}");
        assert!(status.message().contains(needle), "{needle}: {status:?}");
    }
}

/// Lease ids that are well-formed but not the caller's: wrong resource,
/// never issued, already released. They change nothing.
#[tokio::test]
async fn foreign_lease_ids_change_nothing() {
    let daemon = TestDaemon::start(CONFIG, false).await;
    let mut client = daemon.client().await;
    let take = |resource: &'static str| {
        let mut c = client.clone();
        async move {
            c.acquire(pb::AcquireRequest {
                resource: resource.into(),
                ..Default::default()
            })
            .await
            .expect("acquire")
            .into_inner()
            .lease
            .expect("granted")
        }
    };
    let a = take("foreign/a").await;
    let b = take("foreign/b").await;
    let released = take("foreign/c").await;
    assert!(
        client
            .release(pb::ReleaseRequest {
                resource: "foreign/c".into(),
                lease_id: released.lease_id.clone(),
            })
            .await
            .expect("release")
            .into_inner()
            .released
    );
    let never_issued = stormlockd::lease::LeaseId::generate().expose().to_string();
    for (what, id) in [
        ("b's id on a", b.lease_id.clone()),
        ("never issued", never_issued),
        ("released elsewhere", released.lease_id.clone()),
    ] {
        let answer = client
            .release(pb::ReleaseRequest {
                resource: "foreign/a".into(),
                lease_id: id.clone(),
            })
            .await
            .expect(what)
            .into_inner();
        assert!(!answer.released, "{what}: released someone else's lease");
        let status = client
            .renew(pb::RenewRequest {
                resource: "foreign/a".into(),
                lease_id: id.clone(),
                ttl: secs(60),
            })
            .await
            .expect_err(what);
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{what}: {status:?}"
        );
        let held = client
            .is_held(pb::IsHeldRequest {
                resource: "foreign/a".into(),
                lease_id: id,
            })
            .await
            .expect(what)
            .into_inner()
            .held;
        assert!(!held, "{what}");
    }
    let still = client
        .current(pb::CurrentRequest {
            resource: "foreign/a".into(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner()
        .lease
        .expect("a is still held");
    assert_eq!(still.lease_id, a.lease_id);
    assert_eq!(still.fence, a.fence);
}
