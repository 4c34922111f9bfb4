//! The gRPC service, served in-process over mutual TLS (or plain text where a
//! test needs declared principals), exercised with the generated client.

use std::time::{Duration, Instant};

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{TestDaemon, secs};

const MEMORY: &str = "[backends.main]\ntype = \"memory\"\n";

fn acquire(resource: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        resource: resource.to_string(),
        ..Default::default()
    }
}

async fn take(
    client: &mut LockServiceClient<Channel>,
    req: pb::AcquireRequest,
) -> pb::AcquireResponse {
    client.acquire(req).await.expect("acquire").into_inner()
}

#[tokio::test]
async fn acquire_contend_release_over_mutual_tls() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let mut req = acquire("deploy/prod");
    req.reason = "release 42".to_string();
    req.ttl = secs(120);
    let first = take(&mut client, req).await;
    assert!(first.acquired);
    let lease = first.lease.expect("lease");
    assert_eq!(lease.lease_id.len(), 32);
    assert_eq!(
        lease.principal,
        stormlock_api::paths::local_principal(),
        "principal from the certificate"
    );
    assert_eq!(lease.reason, "release 42");
    let acquired = lease.acquired_at.expect("acquired_at");
    let expires = lease.expires_at.expect("expires_at");
    assert_eq!(expires.seconds - acquired.seconds, 120);

    let second = take(&mut client, acquire("deploy/prod")).await;
    assert!(!second.acquired, "contention is a normal answer");
    assert!(second.lease.is_none());
    let holder = second.holder.expect("holder");
    assert_eq!(holder.reason, "release 42");
    assert_eq!(holder.fence, lease.fence);

    let current = client
        .current(pb::CurrentRequest {
            resource: "deploy/prod".into(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner();
    assert_eq!(
        current.lease.map(|l| l.lease_id),
        Some(lease.lease_id.clone())
    );

    let held = client
        .is_held(pb::IsHeldRequest {
            resource: "deploy/prod".into(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("is_held")
        .into_inner();
    assert!(held.held);

    let released = client
        .release(pb::ReleaseRequest {
            resource: "deploy/prod".into(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("release")
        .into_inner();
    assert!(released.released);
    let again = client
        .release(pb::ReleaseRequest {
            resource: "deploy/prod".into(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("release is idempotent")
        .into_inner();
    assert!(!again.released, "says the lease was no longer current");

    let err = client
        .renew(pb::RenewRequest {
            resource: "deploy/prod".into(),
            lease_id: lease.lease_id,
            ttl: secs(5),
        })
        .await
        .expect_err("renew of a released lease");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let next = take(&mut client, acquire("deploy/prod")).await;
    assert!(next.lease.expect("lease").fence > lease.fence);
}

#[tokio::test]
async fn lease_ids_are_shown_only_to_their_holder() {
    // Plain text: declared principals apply.
    let daemon = TestDaemon::start(MEMORY, true).await;
    let mut client = daemon.client().await;
    let mut mine = acquire("db/migrate");
    mine.principal = "alice".into();
    mine.reason = "schema v7".into();
    let lease = take(&mut client, mine).await.lease.expect("granted");
    assert_eq!(lease.principal, "alice");
    assert!(!lease.lease_id.is_empty(), "the holder sees its id");

    let mut theirs = acquire("db/migrate");
    theirs.principal = "bob".into();
    let refused = take(&mut client, theirs).await;
    let holder = refused.holder.expect("holder");
    assert_eq!(holder.principal, "alice");
    assert_eq!(holder.reason, "schema v7");
    assert!(holder.lease_id.is_empty(), "others never see the id");

    // Anonymous callers (no declared principal) do not see it either.
    let current = client
        .current(pb::CurrentRequest {
            resource: "db/migrate".into(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner()
        .lease
        .expect("held");
    assert!(current.lease_id.is_empty());
}

#[tokio::test]
async fn list_pages_across_routed_backends() {
    let daemon = TestDaemon::start(
        r#"
        [backends.main]
        type = "memory"
        [backends.other]
        type = "memory"
        [[resources]]
        match = "team/b*"
        backend = "other"
        "#,
        false,
    )
    .await;
    let mut client = daemon.client().await;
    let names = ["team/a1", "team/a2", "team/b1", "team/b2", "team/c1", "zzz"];
    for name in names {
        assert!(take(&mut client, acquire(name)).await.acquired);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = client
            .list(pb::ListRequest {
                prefix: "team/".into(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.leases.len() <= 2);
        seen.extend(page.leases.into_iter().map(|l| l.resource));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        seen,
        ["team/a1", "team/a2", "team/b1", "team/b2", "team/c1"]
    );
    let all = client
        .list(pb::ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.leases.len(), names.len());
    assert!(all.next_page_token.is_empty());
}

/// Polls `Current` until a caller waits for `resource` (bounded).
async fn in_line(client: &mut LockServiceClient<Channel>, resource: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let current = client
            .current(pb::CurrentRequest {
                resource: resource.into(),
                ..Default::default()
            })
            .await
            .expect("current")
            .into_inner();
        if current.waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "nobody joined the line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_waiter_is_woken_by_release_and_by_expiry() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let lease = take(&mut client, acquire("queue"))
        .await
        .lease
        .expect("lease");

    let mut waiter = daemon.client().await;
    let mut req = acquire("queue");
    req.wait = secs(20);
    let waiting = tokio::spawn(async move { waiter.acquire(req).await });
    in_line(&mut client, "queue").await;
    assert!(!waiting.is_finished(), "waits while held");
    client
        .release(pb::ReleaseRequest {
            resource: "queue".into(),
            lease_id: lease.lease_id,
        })
        .await
        .expect("release");
    let got = waiting.await.expect("task").expect("acquire").into_inner();
    assert!(got.acquired, "the waiter got the lock");
    assert!(got.lease.expect("lease").fence > lease.fence);

    // Expiry: the holder never releases.
    let mut short = acquire("expiring");
    short.ttl = secs(1);
    assert!(take(&mut client, short).await.acquired);
    let mut req = acquire("expiring");
    req.wait = secs(20);
    let got = take(&mut client, req).await;
    assert!(got.acquired, "granted once the holder's lease expired");

    // A wait shorter than the lease ends with the holder, not an error.
    let mut req = acquire("expiring");
    req.wait = secs(1);
    let got = take(&mut client, req).await;
    assert!(!got.acquired);
    assert!(got.holder.is_some());
}

/// Tries to take `resource` through a channel presenting `identity`; the
/// daemon must refuse the connection or the call (a transport-level refusal
/// of the TLS handshake, or UNAUTHENTICATED), and nothing may be acquired.
async fn assert_refused(
    daemon: &TestDaemon,
    identity: Option<tonic::transport::Identity>,
    resource: &str,
    who: &str,
) {
    let Ok(channel) = daemon.channel_with(identity).await else {
        return;
    };
    let status = LockServiceClient::new(channel)
        .acquire(acquire(resource))
        .await
        .expect_err(who);
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Unauthenticated
        ),
        "{who}: {status:?}"
    );
}

#[tokio::test]
async fn clients_without_a_certificate_from_the_ca_are_refused() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    assert_refused(&daemon, None, "x", "no client certificate").await;

    let other = tempfile::tempdir().expect("tempdir");
    let dev = stormlock_api::paths::DevTls::in_data_dir(other.path());
    stormlockd::tls::ensure_dev_pki(&dev, "mallory").expect("foreign PKI");
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(dev.client_cert()).expect("cert"),
        std::fs::read(dev.client_key()).expect("key"),
    );
    assert_refused(&daemon, Some(identity), "x", "certificate from another CA").await;

    // Nothing was acquired by either, and the real client still works.
    let mut client = daemon.client().await;
    let answer = take(&mut client, acquire("x")).await;
    assert!(answer.acquired, "{answer:?}");
    assert_eq!(
        answer.lease.map(|l| l.fence),
        Some(1),
        "the first lease on x"
    );
}

#[tokio::test]
async fn force_release_is_for_admins_and_tells_the_evicted_holder() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut admin = daemon.client().await;
    let lease = take(&mut admin, acquire("stuck"))
        .await
        .lease
        .expect("lease");
    let broken = admin
        .force_release(pb::ForceReleaseRequest {
            resource: "stuck".into(),
            reason: "holder is gone".into(),
        })
        .await
        .expect("force")
        .into_inner();
    assert_eq!(broken.released.map(|l| l.fence), Some(lease.fence));
    let err = admin
        .renew(pb::RenewRequest {
            resource: "stuck".into(),
            lease_id: lease.lease_id.clone(),
            ttl: None,
        })
        .await
        .expect_err("evicted");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("holder is gone"),
        "{:?}",
        err.message()
    );
    assert!(
        err.message()
            .contains(&stormlock_api::paths::local_principal()),
        "{:?}",
        err.message()
    );
    let next = take(&mut admin, acquire("stuck"))
        .await
        .lease
        .expect("lease");
    assert!(next.fence > lease.fence);

    // Without TLS nobody is an administrator.
    let plain = TestDaemon::start(MEMORY, true).await;
    let mut client = plain.client().await;
    take(&mut client, acquire("stuck")).await;
    let err = client
        .force_release(pb::ForceReleaseRequest {
            resource: "stuck".into(),
            reason: "because".into(),
        })
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("force-release"),
        "{:?}",
        err.message()
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let channel = daemon.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "stormlock.v1.LockService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = stream.message().await.expect("message").expect("response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"stormlock.v1.LockService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn embedded_default_keeps_locks_and_fences_across_restarts() {
    let data = tempfile::tempdir().expect("tempdir");
    let daemon = TestDaemon::start_in("", false, data.path()).await;
    let mut client = daemon.client().await;
    let mut req = acquire("survivor");
    req.ttl = secs(600);
    let lease = take(&mut client, req).await.lease.expect("lease");
    drop(client);
    daemon.shutdown().await.expect("clean shutdown");

    let daemon = TestDaemon::start_in("", false, data.path()).await;
    let mut client = daemon.client().await;
    let current = client
        .current(pb::CurrentRequest {
            resource: "survivor".into(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner()
        .lease
        .expect("still held after restart");
    assert_eq!(current.lease_id, lease.lease_id);
    client
        .release(pb::ReleaseRequest {
            resource: "survivor".into(),
            lease_id: lease.lease_id,
        })
        .await
        .expect("release");
    drop(client);
    daemon.shutdown().await.expect("clean shutdown");

    let daemon = TestDaemon::start_in("", false, data.path()).await;
    let mut client = daemon.client().await;
    let next = take(&mut client, acquire("survivor"))
        .await
        .lease
        .expect("lease");
    assert!(next.fence > lease.fence, "fence survives restarts");
}

/// Lifetime of a lease in whole seconds, as granted or renewed.
fn lifetime(lease: &pb::Lease) -> i64 {
    let acquired = lease.acquired_at.expect("acquired_at").seconds;
    lease.expires_at.expect("expires_at").seconds - acquired
}

/// The default and maximum TTL of the first matching `[[resources]]` rule
/// apply through the service, for Acquire and Renew, up to and including
/// the maximum; resources no rule matches keep `[defaults]`.
#[tokio::test]
async fn per_resource_ttl_and_max_ttl_apply_through_the_service() {
    let daemon = TestDaemon::start(
        r#"
        [defaults]
        ttl = "1h"
        max_ttl = "2h"
        [backends.main]
        type = "memory"
        [[resources]]
        match = "prod/**"
        ttl = "4h"
        max_ttl = "1d"
        [[resources]]
        match = "long/*"
        ttl = "3h"
        "#,
        false,
    )
    .await;
    let mut client = daemon.client().await;
    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;
    let with_ttl = |resource: &str, ttl: Option<i64>| pb::AcquireRequest {
        ttl: ttl.and_then(secs),
        ..acquire(resource)
    };
    for (resource, ttl, want) in [
        ("prod/a", None, 4 * HOUR),
        ("prod/deep/b", Some(DAY), DAY),
        ("other/a", None, HOUR),
        ("other/b", Some(2 * HOUR), 2 * HOUR),
        // No max_ttl in the rule: its TTL is the most it allows.
        ("long/a", None, 3 * HOUR),
        ("long/b", Some(3 * HOUR), 3 * HOUR),
        // `*` stays within one level: the default route.
        ("long/x/y", None, HOUR),
    ] {
        let answer = take(&mut client, with_ttl(resource, ttl)).await;
        assert!(answer.acquired, "{resource}");
        let lease = answer.lease.expect("lease");
        assert_eq!(lifetime(&lease), want, "{resource} with ttl {ttl:?}");
    }
    for (resource, ttl, max) in [
        ("prod/c", DAY + 1, "1d"),
        ("other/c", 2 * HOUR + 1, "2h"),
        ("other/d", 3 * HOUR, "2h"),
        ("long/c", 3 * HOUR + 1, "3h"),
        ("long/x/z", 3 * HOUR, "2h"),
    ] {
        let err = client
            .acquire(with_ttl(resource, Some(ttl)))
            .await
            .expect_err(resource);
        assert_eq!(err.code(), Code::InvalidArgument, "{resource}: {err:?}");
        assert!(
            err.message().contains(&format!("maximum of {max}")),
            "{resource}: {err:?}"
        );
    }

    // Renew: the rule's maximum, and the lease's own TTL when none is asked.
    let lease = take(&mut client, acquire("prod/renewed"))
        .await
        .lease
        .expect("lease");
    let renew = |ttl: Option<i64>| pb::RenewRequest {
        resource: lease.resource.clone(),
        lease_id: lease.lease_id.clone(),
        ttl: ttl.and_then(secs),
    };
    let renewed = client
        .renew(renew(Some(DAY)))
        .await
        .expect("renew to the maximum")
        .into_inner()
        .lease
        .expect("lease");
    assert!(lifetime(&renewed) >= DAY, "{renewed:?}");
    let err = client
        .renew(renew(Some(DAY + 1)))
        .await
        .expect_err("renew past the maximum");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("maximum of 1d"), "{err:?}");
    let renewed = client
        .renew(renew(None))
        .await
        .expect("renew")
        .into_inner()
        .lease
        .expect("lease");
    assert!(
        lifetime(&renewed) >= DAY,
        "renewed for its own 1d (as last renewed), not the rule's 4h: {renewed:?}"
    );
    // A lease granted with the rule's default TTL keeps that one.
    let lease = take(&mut client, acquire("prod/defaulted"))
        .await
        .lease
        .expect("lease");
    let renewed = client
        .renew(pb::RenewRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
            ttl: None,
        })
        .await
        .expect("renew")
        .into_inner()
        .lease
        .expect("lease");
    assert!(
        (4 * HOUR..DAY).contains(&lifetime(&renewed)),
        "renewed for the rule's 4h it was granted with: {renewed:?}"
    );
}

/// An expired lease that nobody took over can be neither released nor
/// force-released through the service; its id is not held.
#[tokio::test]
async fn an_expired_lease_is_neither_released_nor_force_released() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let mut short = acquire("expired/one");
    short.ttl = secs(1);
    let lease = take(&mut client, short).await.lease.expect("lease");
    // The scenario: the lease lapses.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let released = client
        .release(pb::ReleaseRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("release")
        .into_inner();
    assert!(!released.released, "an expired lease releases nothing");
    let broken = client
        .force_release(pb::ForceReleaseRequest {
            resource: lease.resource.clone(),
            reason: "too late".into(),
        })
        .await
        .expect("force-release")
        .into_inner();
    assert_eq!(broken.released, None, "an expired lease is not broken");
    let held = client
        .is_held(pb::IsHeldRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("is_held: expired, not evicted")
        .into_inner();
    assert!(!held.held);
    let next = take(&mut client, acquire("expired/one"))
        .await
        .lease
        .expect("free again");
    assert_eq!(next.fence, lease.fence + 1, "nothing granted in between");
}

/// `page_size` is capped at 1000 leases a page; 0 means 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_page_size_is_capped() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let client = daemon.client().await;
    let total = 1001;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut client = client.clone();
        tasks.spawn(async move {
            for i in (worker..total).step_by(8) {
                let answer = take(&mut client, acquire(&format!("many/{i:04}"))).await;
                assert!(answer.acquired, "many/{i:04}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("acquirer");
    }
    let mut client = client;
    let list = |page_size: u32, page_token: String| pb::ListRequest {
        prefix: "many/".into(),
        page_size,
        page_token,
    };
    let default = client
        .list(list(0, String::new()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(default.leases.len(), 100, "page size 0: the default");
    assert!(!default.next_page_token.is_empty());

    let first = client
        .list(list(u32::MAX, String::new()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.leases.len(), 1000, "capped at 1000");
    assert_eq!(
        first.leases.last().map(|l| l.resource.as_str()),
        Some("many/0999")
    );
    assert!(!first.next_page_token.is_empty(), "more follow");
    let second = client
        .list(list(u32::MAX, first.next_page_token))
        .await
        .expect("list")
        .into_inner();
    let rest: Vec<_> = second.leases.iter().map(|l| l.resource.as_str()).collect();
    assert_eq!(rest, ["many/1000"]);
    assert!(second.next_page_token.is_empty(), "the last page");
}
