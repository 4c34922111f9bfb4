//! The conformance suite instantiated for each backend.

use std::sync::Arc;

use stormlock::backend::Backend;

mod memory {
    use super::*;
    use stormlock::backend::memory::MemoryBackend;

    async fn make() -> Option<Arc<dyn Backend>> {
        Some(Arc::new(MemoryBackend::new()))
    }
    crate::conformance::conformance_tests!(make().await);
}

mod embedded {
    use super::*;
    use stormlock::backend::embedded::{EmbeddedBackend, EmbeddedConfig};
    use stormlock::lease::Acquisition;

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
        let current = store.current("restart/x").await.expect("current").expect("held");
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
