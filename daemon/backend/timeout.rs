//! Bounds every backend call, so that an engine that hangs (SIGSTOP, a dead
//! TCP peer, a full pool) turns into a fast `Unavailable` instead of a hang.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Backend, BackendError, ChangeStream, Result};
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};

/// Wraps a backend so that each call fails with [`BackendError::Unavailable`]
/// after `timeout`.
pub struct WithTimeout {
    name: String,
    inner: Arc<dyn Backend>,
    timeout: Duration,
}

impl WithTimeout {
    /// Bounds each call of `inner` (named `name` in errors) by `timeout`.
    pub fn new(name: &str, inner: Arc<dyn Backend>, timeout: Duration) -> Self {
        Self {
            name: name.to_string(),
            inner,
            timeout,
        }
    }

    async fn bounded<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
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
        self.bounded(self.inner.acquire(req)).await
    }
    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        self.bounded(self.inner.release(resource, id)).await
    }
    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        self.bounded(self.inner.renew(resource, id, ttl)).await
    }
    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        self.bounded(self.inner.current(resource)).await
    }
    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        self.bounded(self.inner.status(resource, id)).await
    }
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>> {
        self.bounded(self.inner.list(prefix, after, limit)).await
    }
    async fn force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Lease>> {
        self.bounded(self.inner.force_release(resource, actor, reason))
            .await
    }
    async fn health(&self) -> Result<()> {
        self.bounded(self.inner.health()).await
    }
    async fn subscribe(&self) -> Result<Option<ChangeStream>> {
        self.bounded(self.inner.subscribe()).await
    }
}
