//! Backends when their engine fails: stopped, restarted, frozen, or not
//! there at start. Each test has an engine of its own (`PrivateEngine`).
//!
//! The contract: through [`WithTimeout`] every call fails with
//! `Unavailable` (never hangs), and once the engine is back, calls succeed
//! again without any intervention. How soon is for the benchmarks: the
//! bounds here only stop a stuck test.

#![cfg(any(feature = "redis", feature = "etcd"))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use stormlockd::backend::{Backend, BackendError};
use stormlockd::lease::Acquisition;
use stormlockd::routing::WithTimeout;

use crate::conformance::request;

/// The per-call bound the tests configure.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Hang guard: far beyond any bound the backends are configured with, so
/// that only a call that never ends trips it.
const HANG_GUARD: Duration = Duration::from_secs(30);

fn bounded(inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
    Arc::new(WithTimeout::new("test", inner, CALL_TIMEOUT))
}

/// One backend call, its answer reduced to success or the error.
type Call<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BackendError>> + Send + 'a>>;

/// Every kind of call fails with `Unavailable` rather than hanging.
async fn assert_unavailable(backend: &dyn Backend, resource: &str) {
    let req = request(resource, "alice", 60);
    let calls: [(&str, Call<'_>); 4] = [
        ("health", Box::pin(backend.health())),
        (
            "acquire",
            Box::pin(async { backend.acquire(&req).await.map(|_| ()) }),
        ),
        (
            "current",
            Box::pin(async { backend.current(resource).await.map(|_| ()) }),
        ),
        (
            "list",
            Box::pin(async { backend.list("", None, 10).await.map(|_| ()) }),
        ),
    ];
    for (what, call) in calls {
        let result = tokio::time::timeout(HANG_GUARD, call)
            .await
            .unwrap_or_else(|_| panic!("{what} hung while the engine is down"));
        assert!(
            matches!(result, Err(BackendError::Unavailable { .. })),
            "{what} while the engine is down: {result:?}"
        );
    }
}

/// Waits (bounded by the hang guard) until the backend grants a fresh lease
/// again.
async fn assert_recovers(backend: &dyn Backend, resource: &str) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let answer = backend.acquire(&request(resource, "alice", 60)).await;
        if let Ok(Acquisition::Granted(_)) = answer {
            backend.health().await.expect("healthy after recovery");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: last answer {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port on loopback where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Connecting to an engine that is not there fails with a clear error
/// rather than hanging.
async fn assert_connect_fails<T>(
    connect: impl std::future::Future<Output = Result<T, BackendError>>,
) {
    let result = tokio::time::timeout(HANG_GUARD, connect)
        .await
        .expect("connect must not hang");
    match result {
        Err(BackendError::Unavailable { message, .. }) => {
            assert!(
                message.contains("127.0.0.1"),
                "the error names the engine: {message}"
            );
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::support::PrivateEngine;
    use stormlockd::backend::redis::{RedisBackend, RedisConfig};

    fn config(url: &str) -> RedisConfig {
        toml::from_str(&format!("url = {url:?}\nconnect_timeout = \"1s\"")).expect("config")
    }

    async fn backend(engine: &PrivateEngine) -> Arc<dyn Backend> {
        let inner = RedisBackend::connect("test", &config(&engine.url))
            .await
            .expect("connect");
        bounded(Arc::new(inner))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_and_restart() {
        let Some(engine) = PrivateEngine::start("redis") else {
            return;
        };
        let backend = backend(&engine).await;
        assert_recovers(backend.as_ref(), "faults/redis/before").await;
        engine.stop();
        assert_unavailable(backend.as_ref(), "faults/redis/down").await;
        engine.restart();
        assert_recovers(backend.as_ref(), "faults/redis/after").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn freeze_and_thaw() {
        let Some(engine) = PrivateEngine::start("redis") else {
            return;
        };
        let backend = backend(&engine).await;
        assert_recovers(backend.as_ref(), "faults/redis/before").await;
        engine.freeze();
        assert_unavailable(backend.as_ref(), "faults/redis/frozen").await;
        engine.thaw();
        assert_recovers(backend.as_ref(), "faults/redis/thawed").await;
    }

    #[tokio::test]
    async fn unreachable_at_start() {
        let url = format!("redis://127.0.0.1:{}/", closed_port());
        let config = config(&url);
        assert_connect_fails(RedisBackend::connect("test", &config)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frozen_at_start() {
        let Some(engine) = PrivateEngine::start("redis") else {
            return;
        };
        engine.freeze();
        let config = config(&engine.url);
        assert_connect_fails(RedisBackend::connect("test", &config)).await;
        engine.thaw();
    }

    /// Sets the engine's `maxmemory-policy`.
    async fn set_policy(engine: &PrivateEngine, policy: &str) {
        let client = ::redis::Client::open(engine.url.as_str()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        ::redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async::<()>(&mut conn)
            .await
            .expect("CONFIG SET");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_policy_that_may_evict_leases_is_refused() {
        let Some(engine) = PrivateEngine::start("redis") else {
            return;
        };
        // The default is noeviction: the backend starts.
        RedisBackend::connect("test", &config(&engine.url))
            .await
            .expect("noeviction is accepted");
        for (policy, what) in [
            ("volatile-lru", "live leases"),
            ("volatile-ttl", "live leases"),
            ("allkeys-lru", "fence counters"),
        ] {
            set_policy(&engine, policy).await;
            match RedisBackend::connect("test", &config(&engine.url)).await {
                Err(BackendError::Config { message, .. }) => {
                    assert!(message.contains(policy), "{message}");
                    assert!(message.contains(what), "{message}");
                    assert!(message.contains("noeviction"), "{message}");
                }
                Err(other) => panic!("{policy}: wrong error: {other}"),
                Ok(_) => panic!("{policy}: the backend started"),
            }
        }
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use crate::proxy::{Fault, FaultProxy, through, upstream_of};
    use crate::support::{PrivateEngine, engine_url};
    use stormlockd::backend::etcd::{EtcdBackend, EtcdConfig};
    use stormlockd::lease::LeaseStatus;

    fn config(endpoint: &str) -> EtcdConfig {
        toml::from_str(&format!(
            "endpoints = [{endpoint:?}]\nconnect_timeout = \"1s\""
        ))
        .expect("config")
    }

    async fn backend(engine: &PrivateEngine) -> Arc<dyn Backend> {
        let inner = EtcdBackend::connect("test", &config(&engine.url))
            .await
            .expect("connect");
        bounded(Arc::new(inner))
    }

    /// A backend on the shared etcd through a fault proxy.
    async fn proxied(url: &str, proxy: &FaultProxy) -> Arc<dyn Backend> {
        let mut config = config(&through(url, proxy.addr));
        config.prefix = format!("/faults-{}/", crate::support::unique());
        let inner = EtcdBackend::connect("test", &config)
            .await
            .expect("connect");
        bounded(Arc::new(inner))
    }

    /// A value no other request carries, to pick out the request under test.
    fn marker() -> &'static str {
        Box::leak(format!("marker-{}", crate::support::unique()).into_boxed_str())
    }

    /// Renewal moves the key to a new etcd lease in a transaction. When that
    /// transaction is applied but its answer is lost, revoking the new lease
    /// (as renewal once did on any error) would delete the holder's key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewal_whose_answer_is_lost_keeps_the_lease() {
        let Some(url) = engine_url("STORMLOCK_TEST_ETCD_ENDPOINT") else {
            return;
        };
        let proxy = FaultProxy::start(upstream_of(&url)).await;
        let backend = proxied(&url, &proxy).await;
        let resource = "faults/etcd/renew-lost";
        let mut alice = request(resource, "alice", 60);
        alice.reason = marker().to_string();
        assert!(matches!(
            backend.acquire(&alice).await,
            Ok(Acquisition::Granted(_))
        ));
        // The renewal's transaction carries the lock's value, reason included.
        proxy.set(Fault::ResetAfter(Box::leak(
            alice.reason.clone().into_bytes().into_boxed_slice(),
        )));
        let renewed = backend
            .renew(resource, &alice.id, Duration::from_secs(60))
            .await;
        proxy.set(Fault::None);
        assert!(
            matches!(renewed, Ok(_) | Err(BackendError::Unavailable { .. })),
            "{renewed:?}"
        );
        assert!(
            matches!(
                backend.status(resource, &alice.id).await,
                Ok(LeaseStatus::Current(_))
            ),
            "the holder's lease survives a renewal with an unknown outcome"
        );
        backend
            .renew(resource, &alice.id, Duration::from_secs(60))
            .await
            .expect("the lease can still be renewed");
        let bob = request(resource, "bob", 60);
        assert!(matches!(
            backend.acquire(&bob).await,
            Ok(Acquisition::Held(_))
        ));
        assert!(backend.release(resource, &alice.id).await.expect("release"));
    }

    /// An acquisition whose transaction is applied but whose answer is lost
    /// learns the outcome by reading the key: granted, not a ghost lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acquisition_whose_answer_is_lost_is_granted() {
        let Some(url) = engine_url("STORMLOCK_TEST_ETCD_ENDPOINT") else {
            return;
        };
        let proxy = FaultProxy::start(upstream_of(&url)).await;
        let backend = proxied(&url, &proxy).await;
        let resource = "faults/etcd/acquire-lost";
        let mut alice = request(resource, "alice", 60);
        alice.reason = marker().to_string();
        proxy.set(Fault::ResetAfter(Box::leak(
            alice.reason.clone().into_bytes().into_boxed_slice(),
        )));
        let outcome = backend.acquire(&alice).await;
        proxy.set(Fault::None);
        assert!(
            matches!(outcome, Ok(Acquisition::Granted(_))),
            "{outcome:?}"
        );
        assert!(backend.release(resource, &alice.id).await.expect("release"));
    }

    /// etcd raises a TTL below its minimum (1.5 election timeouts: 2 s on a
    /// default etcd) without a word in LeaseGrant's answer's name; the
    /// reported expiry must still be the engine's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ttl_below_the_minimum_reports_the_engines_expiry() {
        let Some(engine) = PrivateEngine::start_with(
            "etcd",
            &[
                ("STORMLOCK_ETCD_HEARTBEAT_MS", "100"),
                ("STORMLOCK_ETCD_ELECTION_TIMEOUT_MS", "1000"),
            ],
        ) else {
            return;
        };
        let backend = backend(&engine).await;
        crate::conformance::expiry_is_what_was_reported(backend).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_and_restart() {
        let Some(engine) = PrivateEngine::start("etcd") else {
            return;
        };
        let backend = backend(&engine).await;
        assert_recovers(backend.as_ref(), "faults/etcd/before").await;
        engine.stop();
        assert_unavailable(backend.as_ref(), "faults/etcd/down").await;
        engine.restart();
        assert_recovers(backend.as_ref(), "faults/etcd/after").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn freeze_and_thaw() {
        let Some(engine) = PrivateEngine::start("etcd") else {
            return;
        };
        let backend = backend(&engine).await;
        assert_recovers(backend.as_ref(), "faults/etcd/before").await;
        engine.freeze();
        assert_unavailable(backend.as_ref(), "faults/etcd/frozen").await;
        engine.thaw();
        assert_recovers(backend.as_ref(), "faults/etcd/thawed").await;
    }

    /// Fences survive an etcd restart: the revision is persisted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fence_survives_restart() {
        let Some(engine) = PrivateEngine::start("etcd") else {
            return;
        };
        let backend = backend(&engine).await;
        let req = request("faults/etcd/fence", "alice", 60);
        let Ok(Acquisition::Granted(first)) = backend.acquire(&req).await else {
            panic!("acquire")
        };
        assert!(
            backend
                .release("faults/etcd/fence", &req.id)
                .await
                .expect("release")
        );
        engine.stop();
        engine.restart();
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            match backend
                .acquire(&request("faults/etcd/fence", "bob", 60))
                .await
            {
                Ok(Acquisition::Granted(next)) => {
                    assert!(
                        next.fence > first.fence,
                        "{} after {}",
                        next.fence,
                        first.fence
                    );
                    return;
                }
                other => assert!(Instant::now() < deadline, "no recovery: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn unreachable_at_start() {
        let endpoint = format!("http://127.0.0.1:{}", closed_port());
        let config = config(&endpoint);
        assert_connect_fails(EtcdBackend::connect("test", &config)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frozen_at_start() {
        let Some(engine) = PrivateEngine::start("etcd") else {
            return;
        };
        engine.freeze();
        let config = config(&engine.url);
        assert_connect_fails(EtcdBackend::connect("test", &config)).await;
        engine.thaw();
    }
}
