//! Faults seen through the daemons, as clients see them:
//!
//! - a daemon SIGKILLed under load: leases survive, clients move to the
//!   other daemon and renew and release them, the checker finds nothing;
//! - the backend stopped and restarted, or frozen (SIGSTOP) and thawed:
//!   every RPC fails with UNAVAILABLE (never hangs), service resumes by
//!   itself once the engine is back, and leases survive where the engine
//!   keeps them;
//! - a holder whose renewals are blocked (its daemon frozen): its lease
//!   expires, the next holder gets a higher fence, and the old holder's
//!   renewal fails with FAILED_PRECONDITION.
//!
//! `tests/backend_faults.rs` covers the same engine faults at the adapter
//! level. How fast is for the benchmarks: the bounds here are hang guards,
//! far beyond the configured timeouts, that only stop a stuck test.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::checker::{self, Counters, Workload};
use crate::support::{
    DaemonProcess, PrivateEngine, TestDaemon, acquire_request, engine_url, secs, unique,
};

/// The daemons' `backend_timeout` in these tests.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Hang guard for waits on an outcome (recovery, health, progress): far
/// beyond any timeout the daemons are configured with.
const HANG_GUARD: Duration = Duration::from_secs(30);
/// Audit lines would drown the output.
const QUIET: &str = "[audit]\npath = \"/dev/null\"\n";

async fn acquire(
    client: &mut LockServiceClient<Channel>,
    resource: &str,
    ttl: i64,
    wait: i64,
) -> Result<pb::AcquireResponse, Status> {
    let request = acquire_request(resource, ttl, wait);
    tokio::time::timeout(
        Duration::from_secs(wait.unsigned_abs() + 30),
        client.acquire(request),
    )
    .await
    .expect("acquire must not hang")
    .map(|r| r.into_inner())
}

async fn granted(client: &mut LockServiceClient<Channel>, resource: &str, ttl: i64) -> pb::Lease {
    let answer = acquire(client, resource, ttl, 0).await.expect("acquire");
    assert!(answer.acquired, "{resource} is free");
    answer.lease.expect("lease")
}

async fn renew(
    client: &mut LockServiceClient<Channel>,
    lease: &pb::Lease,
    ttl: i64,
) -> Result<pb::Lease, Status> {
    let request = pb::RenewRequest {
        resource: lease.resource.clone(),
        lease_id: lease.lease_id.clone(),
        ttl: secs(ttl),
    };
    tokio::time::timeout(Duration::from_secs(30), client.renew(request))
        .await
        .expect("renew must not hang")
        .map(|r| r.into_inner().lease.expect("renewed lease"))
}

async fn release(client: &mut LockServiceClient<Channel>, lease: &pb::Lease) -> bool {
    let request = pb::ReleaseRequest {
        resource: lease.resource.clone(),
        lease_id: lease.lease_id.clone(),
    };
    tokio::time::timeout(Duration::from_secs(30), client.release(request))
        .await
        .expect("release must not hang")
        .expect("release")
        .into_inner()
        .released
}

async fn current(client: &mut LockServiceClient<Channel>, resource: &str) -> Option<pb::Lease> {
    let request = pb::CurrentRequest {
        resource: resource.to_string(),
        ..Default::default()
    };
    tokio::time::timeout(Duration::from_secs(30), client.current(request))
        .await
        .expect("current must not hang")
        .expect("current")
        .into_inner()
        .lease
}

// --- SIGKILL one daemon under load ------------------------------------------

/// Two `stormlockd` processes on `backend`; leases taken through A, then A
/// is SIGKILLed while clients keep working through both.
async fn kill_one_daemon_under_load(label: &str, backend: &str) {
    let config = format!("{QUIET}[backends.main]\n{backend}\n");
    let mut a = DaemonProcess::start(&config, &[]).await;
    let b = DaemonProcess::start(&config, &[]).await;
    let run = unique();

    let mut through_a = a.client();
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(granted(&mut through_a, &format!("kill/{run}/held-{i}"), 120).await);
    }

    // Leases of the load are short, so that one granted by A just before it
    // died, whose answer never reached its client, frees up soon.
    let workload = Workload {
        acquisitions: 600,
        ttl: Duration::from_secs(5),
        ..Workload::standard(format!("kill/{run}/load-"))
    };
    let counters = Arc::new(Counters::default());
    let load = tokio::spawn({
        let daemons = vec![a.client(), a.client(), b.client(), b.client()];
        let counters = counters.clone();
        async move { checker::run(&workload, daemons, counters).await }
    });
    let deadline = Instant::now() + 2 * HANG_GUARD;
    while counters.done.load(Ordering::Relaxed) < 150 {
        assert!(Instant::now() < deadline, "the load made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    let outcome = load.await.expect("load");
    eprintln!("{} (daemon A SIGKILLed)", outcome.summary(label));
    outcome.verdict.assert_clean(label);
    assert!(
        outcome.counters.errors.load(Ordering::Relaxed) > 0,
        "the clients noticed the dead daemon and moved"
    );

    // The leases taken through the dead daemon live on, and their holders
    // renew and release them through the other one.
    let mut through_b = b.client();
    for lease in &held {
        let seen = current(&mut through_b, &lease.resource)
            .await
            .expect("the lease survived its daemon");
        assert_eq!(seen.fence, lease.fence);
        let renewed = renew(&mut through_b, lease, 60)
            .await
            .expect("renew through the other daemon");
        assert_eq!(renewed.fence, lease.fence);
        assert!(release(&mut through_b, lease).await, "released");
        assert!(current(&mut through_b, &lease.resource).await.is_none());
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_daemon_under_load_redis() {
    let Some(url) = engine_url("STORMLOCK_TEST_REDIS_URL") else {
        return;
    };
    let backend = format!(
        "type = \"redis\"\nurl = {url:?}\nprefix = \"kill-{}:\"",
        unique()
    );
    kill_one_daemon_under_load("redis", &backend).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_daemon_under_load_postgres() {
    let Some(url) = engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
        return;
    };
    let backend = format!("type = \"postgres\"\nurl = {url:?}\ntable = \"daemon_faults\"");
    kill_one_daemon_under_load("postgres", &backend).await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_daemon_under_load_etcd() {
    let Some(url) = engine_url("STORMLOCK_TEST_ETCD_ENDPOINT") else {
        return;
    };
    let backend = format!(
        "type = \"etcd\"\nendpoints = [{url:?}]\nprefix = \"/kill-{}/\"",
        unique()
    );
    kill_one_daemon_under_load("etcd", &backend).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_daemon_under_load_mysql() {
    let Some(url) = engine_url("STORMLOCK_TEST_MYSQL_URL") else {
        return;
    };
    let backend = format!("type = \"mysql\"\nurl = {url:?}\ntable = \"daemon_faults\"");
    kill_one_daemon_under_load("mysql", &backend).await;
}

// --- One daemon frozen mid-load ---------------------------------------------

/// Resources the load holds through the daemon that freezes, one per client
/// (so that the frozen daemon is caught mid-grant, holding row locks, and not
/// only waiting on a contended row).
const BUSY: usize = 16;

/// Two daemons on `backend`; 16 clients load daemon A with short leases on
/// a resource each, then A is frozen (SIGSTOP) in the middle of whatever it
/// was doing, likely inside an engine transaction. Through daemon B, other
/// resources must still be granted (at most three `backend_timeout`
/// failures each), and the loaded ones eventually (the stalled session's
/// locks must be freed by the engine; `same_resource` is the hang guard).
async fn stall_one_daemon_under_load(backend: &str, same_resource: Duration) {
    let config = format!(
        "{QUIET}[defaults]\nbackend_timeout = \"{}s\"\n[backends.main]\n{backend}\n",
        BACKEND_TIMEOUT.as_secs()
    );
    let a = DaemonProcess::start(&config, &[]).await;
    let b = DaemonProcess::start(&config, &[]).await;
    let run = unique();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let granted_under_load = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load: Vec<_> = (0..16)
        .map(|i| {
            let mut client = a.client();
            let resource = format!("stall/{run}/busy-{}", i % BUSY);
            let (stop, granted) = (stop.clone(), granted_under_load.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = acquire_request(&resource, 3, 0);
                    let answer =
                        tokio::time::timeout(Duration::from_secs(2), client.acquire(request)).await;
                    if let Ok(Ok(answer)) = answer
                        && let Some(lease) = answer.into_inner().lease
                    {
                        granted.fetch_add(1, Ordering::Relaxed);
                        let request = pb::ReleaseRequest {
                            resource: lease.resource.clone(),
                            lease_id: lease.lease_id.clone(),
                        };
                        // Load: a release lost to the freeze is fine, its
                        // lease lapses in 3 s.
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), client.release(request))
                                .await;
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + HANG_GUARD;
    while granted_under_load.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "the load made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.freeze();

    let mut through_b = b.client();
    let mut failures = 0;
    for i in 0..10 {
        let resource = format!("stall/{run}/other-{i}");
        let mut attempts = 0;
        loop {
            attempts += 1;
            match acquire(&mut through_b, &resource, 60, 0).await {
                Ok(answer) if answer.acquired => break,
                Ok(answer) => panic!("{resource} is free, yet: {answer:?}"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    failures += 1;
                    assert!(
                        attempts < 4,
                        "{resource}: {attempts} attempts failed while another daemon is frozen: {status:?}"
                    );
                }
            }
        }
    }
    for i in 0..BUSY {
        let resource = format!("stall/{run}/busy-{i}");
        let deadline = Instant::now() + same_resource;
        loop {
            assert!(
                Instant::now() < deadline,
                "{resource} never granted after its holder's daemon froze"
            );
            match acquire(&mut through_b, &resource, 60, 5).await {
                Ok(answer) if answer.acquired => break,
                Ok(_) | Err(_) => {}
            }
        }
    }
    eprintln!("stall: {failures} failed attempts on other resources while a daemon was frozen");
    a.thaw();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
}

/// A daemon frozen inside a MySQL/MariaDB transaction used to hold the
/// shared fence counter's row lock: every acquisition on every daemon
/// waited for it (0 of 10 granted here). MariaDB ends the stalled session
/// after 10 s idle in its transaction (`idle_transaction_timeout`).
#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_daemon_stalls_nobody_else_mysql() {
    let Some(url) = engine_url("STORMLOCK_TEST_MYSQL_URL") else {
        return;
    };
    let backend = format!("type = \"mysql\"\nurl = {url:?}\ntable = \"daemon_stall\"");
    stall_one_daemon_under_load(&backend, 2 * HANG_GUARD).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_daemon_stalls_nobody_else_postgres() {
    let Some(url) = engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
        return;
    };
    let backend = format!("type = \"postgres\"\nurl = {url:?}\ntable = \"daemon_stall\"");
    stall_one_daemon_under_load(&backend, 2 * HANG_GUARD).await;
}

// --- The backend stopped, restarted, frozen ---------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outage {
    /// Stop the engine, start it again on the same port and data.
    Restart,
    /// SIGSTOP the engine, then SIGCONT.
    Freeze,
}

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// Every RPC through `client` fails with UNAVAILABLE, each within the bound.
async fn assert_unavailable(client: &LockServiceClient<Channel>, lease: &pb::Lease) {
    let resource = lease.resource.clone();
    let c = || client.clone();
    let calls: Vec<(&str, Call)> = vec![
        ("acquire", {
            let (mut c, r) = (c(), format!("{resource}-other"));
            Box::pin(async move { acquire(&mut c, &r, 60, 0).await.map(drop) })
        }),
        ("acquire with wait", {
            let (mut c, r) = (c(), resource.clone());
            Box::pin(async move { acquire(&mut c, &r, 60, 30).await.map(drop) })
        }),
        ("renew", {
            let (mut c, l) = (c(), lease.clone());
            Box::pin(async move { renew(&mut c, &l, 60).await.map(drop) })
        }),
        ("current", {
            let (mut c, r) = (c(), resource.clone());
            Box::pin(async move {
                c.current(pb::CurrentRequest {
                    resource: r,
                    ..Default::default()
                })
                .await
                .map(drop)
            })
        }),
        ("is_held", {
            let (mut c, l) = (c(), lease.clone());
            Box::pin(async move {
                c.is_held(pb::IsHeldRequest {
                    resource: l.resource,
                    lease_id: l.lease_id,
                })
                .await
                .map(drop)
            })
        }),
        ("list", {
            let mut c = c();
            Box::pin(async move { c.list(pb::ListRequest::default()).await.map(drop) })
        }),
        ("release", {
            let (mut c, r) = (c(), resource.clone());
            Box::pin(async move {
                c.release(pb::ReleaseRequest {
                    resource: r,
                    lease_id: "0".repeat(32),
                })
                .await
                .map(drop)
            })
        }),
        ("force_release", {
            let (mut c, r) = (c(), format!("{resource}-other"));
            Box::pin(async move {
                c.force_release(pb::ForceReleaseRequest {
                    resource: r,
                    reason: "fault test".into(),
                })
                .await
                .map(drop)
            })
        }),
    ];
    for (what, call) in calls {
        let result = tokio::time::timeout(HANG_GUARD, call)
            .await
            .unwrap_or_else(|_| panic!("{what} hung while the backend was down"));
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    }
}

/// Waits (bounded by the hang guard) until `client` grants fresh leases
/// again.
async fn assert_recovers(client: &LockServiceClient<Channel>, resource: &str) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let answer = acquire(&mut client.clone(), resource, 60, 0).await;
        if let Ok(answer) = &answer
            && answer.acquired
        {
            let lease = answer.lease.clone().expect("lease");
            assert!(release(&mut client.clone(), &lease).await);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after the engine's return: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The health service's verdict on the lock service, polled until it is
/// `want` (bounded).
async fn assert_health(daemon: &TestDaemon, want: tonic_health::ServingStatus) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(daemon.channel().await);
    let want = match want {
        tonic_health::ServingStatus::Serving => {
            tonic_health::pb::health_check_response::ServingStatus::Serving
        }
        _ => tonic_health::pb::health_check_response::ServingStatus::NotServing,
    };
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "stormlock.v1.LockService".into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        if status == want as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health stayed {status} instead of {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two daemons on the private `engine` (`backend` is the backend table
/// without its URL, which `{url}` stands for). `durable`: the engine keeps
/// leases across the outage.
async fn outage(engine: &'static str, backend: &str, outage: Outage, durable: bool) {
    let Some(engine) = PrivateEngine::start(engine) else {
        return;
    };
    let config = format!(
        "{QUIET}[defaults]\nbackend_timeout = \"{}s\"\n[backends.main]\n{}\n",
        BACKEND_TIMEOUT.as_secs(),
        backend.replace("{url}", &engine.url)
    );
    let a = TestDaemon::start(&config, false).await;
    let b = TestDaemon::start(&config, false).await;
    let (mut through_a, mut through_b) = (a.client().await, b.client().await);
    let run = unique();
    let lease = granted(&mut through_a, &format!("outage/{run}/held"), 300).await;

    match outage {
        Outage::Restart => engine.stop(),
        Outage::Freeze => engine.freeze(),
    }
    assert_unavailable(&through_a, &lease).await;
    assert_unavailable(&through_b, &lease).await;
    assert_health(&a, tonic_health::ServingStatus::NotServing).await;

    match outage {
        Outage::Restart => engine.restart(),
        Outage::Freeze => engine.thaw(),
    }
    assert_recovers(&through_a, &format!("outage/{run}/after-a")).await;
    assert_recovers(&through_b, &format!("outage/{run}/after-b")).await;
    assert_health(&a, tonic_health::ServingStatus::Serving).await;

    // The acquisitions answered UNAVAILABLE during the outage may still have
    // been applied once the engine came back (a frozen engine runs what was
    // queued): the daemons' clean-up releases them, within its re-check
    // interval, instead of leaving them held for their 60 s TTL.
    let other = format!("{}-other", lease.resource);
    let deadline = Instant::now() + HANG_GUARD;
    while current(&mut through_b, &other).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "{other}, whose acquisition failed during the outage, is still held"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    if durable {
        let seen = current(&mut through_b, &lease.resource)
            .await
            .expect("the lease survived the outage");
        assert_eq!(seen.fence, lease.fence);
        let renewed = renew(&mut through_b, &lease, 60).await.expect("renew");
        assert_eq!(renewed.fence, lease.fence);
        assert!(release(&mut through_a, &lease).await, "released");
        let next = granted(&mut through_b, &lease.resource, 60).await;
        assert!(
            next.fence > lease.fence,
            "{} after {}",
            next.fence,
            lease.fence
        );
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_restart_redis() {
    // The private Redis keeps nothing on disk: its leases die with it.
    outage(
        "redis",
        "type = \"redis\"\nurl = \"{url}\"\nconnect_timeout = \"1s\"",
        Outage::Restart,
        false,
    )
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_freeze_redis() {
    outage(
        "redis",
        "type = \"redis\"\nurl = \"{url}\"\nconnect_timeout = \"1s\"",
        Outage::Freeze,
        true,
    )
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_restart_postgres() {
    outage(
        "postgres",
        "type = \"postgres\"\nurl = \"{url}\"",
        Outage::Restart,
        true,
    )
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_freeze_postgres() {
    outage(
        "postgres",
        "type = \"postgres\"\nurl = \"{url}\"",
        Outage::Freeze,
        true,
    )
    .await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_restart_etcd() {
    outage(
        "etcd",
        "type = \"etcd\"\nendpoints = [\"{url}\"]\nconnect_timeout = \"1s\"",
        Outage::Restart,
        true,
    )
    .await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_freeze_etcd() {
    outage(
        "etcd",
        "type = \"etcd\"\nendpoints = [\"{url}\"]\nconnect_timeout = \"1s\"",
        Outage::Freeze,
        true,
    )
    .await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_restart_mysql() {
    outage(
        "mysql",
        "type = \"mysql\"\nurl = \"{url}\"",
        Outage::Restart,
        true,
    )
    .await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_freeze_mysql() {
    outage(
        "mysql",
        "type = \"mysql\"\nurl = \"{url}\"",
        Outage::Freeze,
        true,
    )
    .await;
}

// --- Expiry while the holder's renewals are blocked --------------------------

/// The holder's daemon freezes (its renewals hang), the lease lapses, the
/// next holder gets a higher fence through the other daemon, and once the
/// holder's daemon thaws its renewal fails with FAILED_PRECONDITION.
/// `config` is the daemons' whole configuration.
async fn expiry_while_renewals_blocked(config: &str, env: &[(&str, &str)]) {
    let holder_daemon = DaemonProcess::start(config, env).await;
    let other_daemon = DaemonProcess::start(config, env).await;
    let (mut holder, mut next) = (holder_daemon.client(), other_daemon.client());
    let resource = format!("expiry/{}", unique());
    let old = granted(&mut holder, &resource, 2).await;

    holder_daemon.freeze();
    let blocked = tokio::spawn({
        let (mut holder, old) = (holder.clone(), old.clone());
        async move { renew(&mut holder, &old, 60).await }
    });
    let taken = acquire(&mut next, &resource, 60, 20)
        .await
        .expect("acquire");
    assert!(taken.acquired, "the lapsed lease is taken over");
    let new = taken.lease.expect("lease");
    assert!(new.fence > old.fence, "{} after {}", new.fence, old.fence);
    holder_daemon.thaw();

    // The blocked renewal must not succeed. Its daemon, frozen as long as
    // the TTL, may find its own engine connection timed out and answer
    // UNAVAILABLE once (as after any long process pause); then the renewal
    // is refused for what it is.
    let status = blocked
        .await
        .expect("renew task")
        .expect_err("the blocked renewal fails once its daemon answers");
    assert!(
        matches!(status.code(), Code::FailedPrecondition | Code::Unavailable),
        "{status:?}"
    );
    let deadline = Instant::now() + HANG_GUARD;
    let status = loop {
        let status = renew(&mut holder, &old, 60).await.expect_err("renew");
        if status.code() != Code::Unavailable || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(!release(&mut holder, &old).await, "the old lease is gone");
    let seen = current(&mut holder, &resource).await.expect("held");
    assert_eq!(seen.fence, new.fence, "the new holder keeps the lock");
    assert!(release(&mut next, &new).await);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_while_renewals_blocked_redis() {
    let Some(url) = engine_url("STORMLOCK_TEST_REDIS_URL") else {
        return;
    };
    let config = format!(
        "{QUIET}[backends.main]\ntype = \"redis\"\nurl = {url:?}\nprefix = \"exp-{}:\"\n",
        unique()
    );
    expiry_while_renewals_blocked(&config, &[]).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_while_renewals_blocked_postgres() {
    let Some(url) = engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
        return;
    };
    let config = format!(
        "{QUIET}[backends.main]\ntype = \"postgres\"\nurl = {url:?}\ntable = \"daemon_faults\"\n"
    );
    expiry_while_renewals_blocked(&config, &[]).await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_while_renewals_blocked_etcd() {
    let Some(url) = engine_url("STORMLOCK_TEST_ETCD_ENDPOINT") else {
        return;
    };
    let config = format!(
        "{QUIET}[backends.main]\ntype = \"etcd\"\nendpoints = [{url:?}]\nprefix = \"/exp-{}/\"\n",
        unique()
    );
    expiry_while_renewals_blocked(&config, &[]).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_while_renewals_blocked_mysql() {
    let Some(url) = engine_url("STORMLOCK_TEST_MYSQL_URL") else {
        return;
    };
    let config = format!(
        "{QUIET}[backends.main]\ntype = \"mysql\"\nurl = {url:?}\ntable = \"daemon_faults\"\n"
    );
    expiry_while_renewals_blocked(&config, &[]).await;
}

#[cfg(feature = "dynamodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_while_renewals_blocked_dynamodb() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let config =
        crate::exclusion::dynamodb_config(&endpoint, &format!("stormlock-exp-{}", unique()));
    expiry_while_renewals_blocked(&config, crate::exclusion::DYNAMODB_ENV).await;
}
