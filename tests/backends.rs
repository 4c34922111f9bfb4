//! The conformance suite instantiated for each backend.

use std::sync::Arc;

use stormlockd::backend::Backend;

mod memory {
    use super::*;
    use stormlockd::backend::memory::MemoryBackend;

    async fn make() -> Option<Arc<dyn Backend>> {
        Some(Arc::new(MemoryBackend::new()))
    }
    crate::conformance::conformance_tests!(make().await);
}

mod embedded {
    use super::*;
    use stormlockd::backend::embedded::{EmbeddedBackend, EmbeddedConfig};
    use stormlockd::lease::Acquisition;

    async fn open(dir: &std::path::Path) -> EmbeddedBackend {
        EmbeddedBackend::open("test", &EmbeddedConfig::default(), dir)
            .await
            .expect("open embedded store")
    }

    async fn make() -> Option<Arc<dyn Backend>> {
        let dir = tempfile::tempdir().expect("tempdir");
        // The store stays open for the test; keep the directory on purpose so
        // it outlives `make` (the OS temp dir is cleaned by the system).
        let path = dir.keep();
        Some(Arc::new(open(&path).await))
    }
    crate::conformance::conformance_tests!(make().await);

    /// A store is created whole or not at all: what a first start stopped
    /// half-way left behind (a half-written `locks.redb.new`) is replaced,
    /// and the store opens.
    #[tokio::test]
    async fn a_first_start_stopped_half_way_leaves_no_store_that_cannot_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("locks.redb.new"), b"redb\0half-written").expect("leftover");
        let store = open(dir.path()).await;
        let granted = store
            .acquire(&crate::conformance::request("whole/r", "alice", 60))
            .await
            .expect("acquire");
        assert!(matches!(granted, Acquisition::Granted(_)), "{granted:?}");
        assert!(dir.path().join("locks.redb").is_file());
        assert!(!dir.path().join("locks.redb.new").exists());
        drop(store);
        // And it opens again, with what it holds.
        let again = open(dir.path()).await;
        assert!(again.current("whole/r").await.expect("current").is_some());
    }

    /// Leases and fences survive closing and reopening the file.
    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let req = crate::conformance::request("restart/x", "alice", 600);
        let fence = {
            let store = open(dir.path()).await;
            let Ok(Acquisition::Granted(lease)) = store.acquire(&req).await else {
                panic!("acquire")
            };
            lease.fence
        };
        let store = open(dir.path()).await;
        let current = store
            .current("restart/x")
            .await
            .expect("current")
            .expect("held");
        assert_eq!(current.id, req.id);
        assert!(store.release("restart/x", &req.id).await.expect("release"));
        drop(store);
        let store = open(dir.path()).await;
        let next = crate::conformance::request("restart/x", "bob", 600);
        let Ok(Acquisition::Granted(lease)) = store.acquire(&next).await else {
            panic!("acquire")
        };
        assert!(lease.fence > fence, "fence survives reopen");
    }

    /// A second daemon cannot open a store that one already holds.
    #[tokio::test]
    async fn single_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = open(dir.path()).await;
        let second = EmbeddedBackend::open("test", &EmbeddedConfig::default(), dir.path()).await;
        let err = second.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("cannot open"), "second open refused: {err:?}");
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use stormlockd::backend::redis::{RedisBackend, RedisConfig};

    /// A config for the shared test engine, with a prefix of its own so that
    /// runs never see each other's keys.
    pub fn config(url: String) -> RedisConfig {
        let id = stormlockd::lease::LeaseId::generate();
        toml::from_str(&format!(
            "url = {url:?}\nprefix = \"stormlock-test-{}:\"\nconnect_timeout = \"2s\"",
            &id.expose()[..8]
        ))
        .expect("redis config")
    }

    async fn make() -> Option<Arc<dyn Backend>> {
        let url = crate::support::engine_url("STORMLOCK_TEST_REDIS_URL")?;
        let backend = RedisBackend::connect("test", &config(url))
            .await
            .expect("connect to redis");
        Some(Arc::new(backend))
    }
    crate::conformance::conformance_tests!(make().await);

    /// Settings that cannot work are refused before any connection, naming
    /// the key.
    #[tokio::test]
    async fn bad_config_is_refused() {
        for (toml, key) in [
            ("url = \"http://127.0.0.1:1/\"", "url"),
            ("url = \"redis://127.0.0.1:1/\"\nprefix = \"a*\"", "prefix"),
            (
                "url = \"redis://127.0.0.1:1/\"\nca_file = \"ca.pem\"",
                "ca_file",
            ),
            (
                "url = \"rediss://127.0.0.1:1/\"\nca_file = \"/nonexistent/ca.pem\"",
                "ca_file",
            ),
        ] {
            let config: RedisConfig = toml::from_str(toml).expect("parse");
            let err = RedisBackend::connect("test", &config).await.err();
            assert!(
                matches!(&err, Some(stormlockd::backend::BackendError::Config { message, .. }) if message.contains(key)),
                "{toml}: {err:?}"
            );
        }
    }
    /// The key layout the module documents: the lease key expires with the
    /// lease, the fence counter never expires, and the index forgets expired
    /// leases when listing passes over them.
    #[tokio::test]
    async fn key_layout_and_lazy_index_cleanup() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_REDIS_URL") else {
            return;
        };
        let config = config(url.clone());
        let backend = RedisBackend::connect("test", &config)
            .await
            .expect("connect");
        let resource = crate::conformance::unique("layout");
        let req = crate::conformance::request(&resource, "alice", 1);
        backend.acquire(&req).await.expect("acquire");

        let client = ::redis::Client::open(url).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let prefix = &config.prefix;
        let pttl = |key: String| {
            let mut conn = conn.clone();
            async move {
                ::redis::cmd("PTTL")
                    .arg(key)
                    .query_async::<i64>(&mut conn)
                    .await
                    .expect("PTTL")
            }
        };
        let lease_ttl = pttl(format!("{prefix}lease:{resource}")).await;
        assert!(
            (1..=1_000).contains(&lease_ttl),
            "lease key expires: {lease_ttl}"
        );
        assert_eq!(
            pttl(format!("{prefix}fence:{resource}")).await,
            -1,
            "fence never expires"
        );
        let index = format!("{prefix}index");
        let members: Vec<String> = ::redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("ZRANGE");
        assert_eq!(members, vec![resource.clone()]);

        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        assert!(backend.list("", None, 10).await.expect("list").is_empty());
        let left: i64 = ::redis::cmd("ZCARD")
            .arg(&index)
            .query_async(&mut conn)
            .await
            .expect("ZCARD");
        assert_eq!(left, 0, "listing removed the expired member");
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use stormlockd::backend::etcd::{EtcdBackend, EtcdConfig};

    /// A config for the shared test engine, with a prefix of its own so that
    /// runs never see each other's keys.
    pub fn config(endpoint: String) -> EtcdConfig {
        let id = stormlockd::lease::LeaseId::generate();
        toml::from_str(&format!(
            "endpoints = [{endpoint:?}]\nprefix = \"/stormlock-test-{}/\"\nconnect_timeout = \"2s\"",
            &id.expose()[..8]
        ))
        .expect("etcd config")
    }

    async fn make() -> Option<Arc<dyn Backend>> {
        let endpoint = crate::support::engine_url("STORMLOCK_TEST_ETCD_ENDPOINT")?;
        let backend = EtcdBackend::connect("test", &config(endpoint))
            .await
            .expect("connect to etcd");
        Some(Arc::new(backend))
    }
    crate::conformance::conformance_tests!(make().await);

    /// Renewal moves the key to a new etcd lease and keeps its
    /// create_revision, so the fence stays while the TTL changes either way.
    #[tokio::test]
    async fn renew_keeps_fence_over_many_ttls() {
        let Some(backend) = make().await else { return };
        let resource = crate::conformance::unique("etcd-renew");
        let req = crate::conformance::request(&resource, "alice", 5);
        let stormlockd::lease::Acquisition::Granted(lease) =
            backend.acquire(&req).await.expect("acquire")
        else {
            panic!("granted")
        };
        for secs in [60, 3, 3600, 1] {
            let renewed = backend
                .renew(&resource, &req.id, std::time::Duration::from_secs(secs))
                .await
                .expect("renew");
            assert_eq!(renewed.fence, lease.fence);
            let current = backend
                .current(&resource)
                .await
                .expect("current")
                .expect("held");
            assert_eq!(current.fence, lease.fence);
            let left = current
                .expires_at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            assert!(left.as_secs() <= secs, "{secs}s renewal leaves {left:?}");
        }
        assert!(backend.release(&resource, &req.id).await.expect("release"));
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use stormlockd::backend::postgres::{PostgresBackend, PostgresConfig};

    async fn make() -> Option<Arc<dyn Backend>> {
        let url = crate::support::engine_url("STORMLOCK_TEST_POSTGRES_URL")?;
        let config: PostgresConfig =
            toml::from_str(&format!("url = {url:?}\ntable = \"conformance_locks\""))
                .expect("config");
        let backend = PostgresBackend::connect("test", &config)
            .await
            .expect("connect to PostgreSQL");
        Some(Arc::new(backend))
    }
    crate::conformance::conformance_tests!(make().await);
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use stormlockd::backend::mysql::{MysqlBackend, MysqlConfig};

    async fn make() -> Option<Arc<dyn Backend>> {
        let url = crate::support::engine_url("STORMLOCK_TEST_MYSQL_URL")?;
        let config: MysqlConfig =
            toml::from_str(&format!("url = {url:?}\ntable = \"conformance_locks\""))
                .expect("config");
        let backend = MysqlBackend::connect("test", &config)
            .await
            .expect("connect to MySQL");
        Some(Arc::new(backend))
    }
    crate::conformance::conformance_tests!(make().await);
}

#[cfg(feature = "dynamodb")]
mod dynamodb {
    use super::*;
    use crate::dynamodb_backend::{connect, fresh_table};

    async fn make() -> Option<Arc<dyn Backend>> {
        let endpoint = crate::support::engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT")?;
        // A table per test keeps the cases independent; moto creates tables
        // instantly.
        let backend = connect(&endpoint, &fresh_table())
            .await
            .expect("connect to DynamoDB");
        Some(Arc::new(backend))
    }
    crate::conformance::conformance_tests!(make().await);
}
