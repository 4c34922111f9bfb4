//! Bounds every backend call, so that an engine that hangs (SIGSTOP, a dead
//! TCP peer, a full pool) turns into a fast `Unavailable` instead of a hang.
//! Being the one place every call passes, it also times and counts them.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::backend::{Backend, BackendError, Book, ChangeStream, Result};
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};
use crate::metrics::{BackendMetrics, Metrics};

/// Wraps a backend so that each call fails with [`BackendError::Unavailable`]
/// after `timeout`.
pub struct WithTimeout {
    name: String,
    inner: Arc<dyn Backend>,
    timeout: Duration,
    /// Latency and errors per operation, when the daemon keeps metrics.
    metrics: Option<BackendMetrics>,
}

impl WithTimeout {
    /// Bounds each call of `inner` (named `name` in errors) by `timeout`.
    pub fn new(name: &str, inner: Arc<dyn Backend>, timeout: Duration) -> Self {
        Self {
            name: name.to_string(),
            inner,
            timeout,
            metrics: None,
        }
    }

    /// Also records each call's latency and failures in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics.backend(&self.name));
        self
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, call).await;
        if let Some(metrics) = &self.metrics {
            let elapsed = started.elapsed();
            match &result {
                Ok(answer) => {
                    // A lease that is not current is an answer, not a failure.
                    let failure = answer
                        .as_ref()
                        .err()
                        .filter(|e| !matches!(e, BackendError::NotCurrent { .. }))
                        .map(BackendError::kind);
                    metrics.call(operation, elapsed, failure);
                }
                Err(_) => metrics.timeout(operation, elapsed),
            }
        }
        match result {
            Ok(result) => result,
            Err(_) => Err(BackendError::unavailable(
                &self.name,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }
}

#[async_trait]
impl Backend for WithTimeout {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
        self.bounded("acquire", self.inner.acquire(req)).await
    }
    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        self.bounded("release", self.inner.release(resource, id))
            .await
    }
    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        self.bounded("renew", self.inner.renew(resource, id, ttl))
            .await
    }
    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        self.bounded("current", self.inner.current(resource)).await
    }
    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        self.bounded("status", self.inner.status(resource, id))
            .await
    }
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>> {
        self.bounded("list", self.inner.list(prefix, after, limit))
            .await
    }
    async fn force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Lease>> {
        self.bounded(
            "force_release",
            self.inner.force_release(resource, actor, reason),
        )
        .await
    }
    async fn book(&self, resource: &str) -> Result<Option<Book>> {
        self.bounded("book", self.inner.book(resource)).await
    }
    async fn write_book(&self, resource: &str, expected: u64, body: &[u8]) -> Result<bool> {
        self.bounded(
            "write_book",
            self.inner.write_book(resource, expected, body),
        )
        .await
    }
    async fn books(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Book>> {
        self.bounded("books", self.inner.books(prefix, after, limit))
            .await
    }
    async fn health(&self) -> Result<()> {
        self.bounded("health", self.inner.health()).await
    }
    async fn subscribe(&self) -> Result<Option<ChangeStream>> {
        self.bounded("subscribe", self.inner.subscribe()).await
    }
}
