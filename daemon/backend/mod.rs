//! Backends: where leases live. One trait, one module per engine, each behind
//! a cargo feature and configured by its own `[backends.NAME]` table.
//!
//! Backends speak the types of [`crate::lease`] and [`BackendError`]; they know
//! nothing of gRPC. Every backend passes the same conformance suite
//! (`tests/conformance.rs`) against a real engine.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod memory;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
mod record;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod sql;
mod timeout;

pub use timeout::WithTimeout;

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The lease is not the resource's current lease (renew).
    #[error("lease is not current{}", .evicted.as_ref().map(|e| format!(": force-released by {} ({})", e.actor, e.reason)).unwrap_or_default())]
    NotCurrent {
        /// Set when the lease was broken by an administrator.
        evicted: Option<crate::lease::Eviction>,
    },
    /// The engine could not be reached or did not answer in time.
    #[error("backend {backend:?} unavailable: {message}")]
    Unavailable {
        /// The backend's configured name.
        backend: String,
        /// What went wrong, for operators.
        message: String,
    },
    /// The engine answered with something this daemon cannot use (corrupt
    /// record, schema mismatch). Never caused by user input.
    #[error("backend {backend:?} failed: {message}")]
    Internal {
        /// The backend's configured name.
        backend: String,
        /// What went wrong, for operators.
        message: String,
    },
    /// The backend's configuration is invalid.
    #[error("backend {backend:?}: {message}")]
    Config {
        /// The backend's configured name.
        backend: String,
        /// Which key is wrong and why.
        message: String,
    },
}

impl BackendError {
    /// A short, stable label of the variant, for metrics and benchmarks.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotCurrent { .. } => "not_current",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal { .. } => "internal",
            Self::Config { .. } => "config",
        }
    }
    /// An [`BackendError::Unavailable`] for `backend` from any displayable error.
    pub fn unavailable(backend: &str, err: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            backend: backend.to_string(),
            message: err.to_string(),
        }
    }
    /// An [`BackendError::Internal`] for `backend` from any displayable error.
    pub fn internal(backend: &str, err: impl std::fmt::Display) -> Self {
        Self::Internal {
            backend: backend.to_string(),
            message: err.to_string(),
        }
    }
    /// A [`BackendError::Config`] for `backend`.
    pub fn config(backend: &str, message: impl Into<String>) -> Self {
        Self::Config {
            backend: backend.to_string(),
            message: message.into(),
        }
    }
}

/// Result of a backend call.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// A store of leases.
///
/// Contract (checked by the conformance suite):
/// - at most one unexpired lease per resource; expiry is judged on the
///   engine's clock where it has one;
/// - every granted lease has a fence greater than any fence ever granted on
///   that resource, across release, expiry, force-release, restarts and the
///   engine's own cleanup;
/// - calls that cannot reach the engine fail with
///   [`BackendError::Unavailable`] rather than hang (the daemon also bounds
///   each call with [`WithTimeout`]).
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Grants `req` if the resource is free (or its lease expired), else
    /// returns the holder's lease.
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition>;

    /// Releases the lease if it is current; returns whether it was. Idempotent.
    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool>;

    /// Sets a current lease's expiry to now + `ttl`; fails with
    /// [`BackendError::NotCurrent`] otherwise.
    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease>;

    /// The unexpired lease on `resource`, if any.
    async fn current(&self, resource: &str) -> Result<Option<Lease>>;

    /// Whether `id` is the current lease of `resource`.
    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus>;

    /// Up to `limit` unexpired leases whose resource starts with `prefix` and
    /// sorts strictly after `after`, in resource order.
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>>;

    /// Breaks the current lease of `resource`, recording who and why; returns
    /// the broken lease, or `None` when the resource was free.
    async fn force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Lease>>;

    /// Checks that the engine answers.
    async fn health(&self) -> Result<()>;

    /// Subscribes to the engine's own change notifications (etcd watch,
    /// PostgreSQL `LISTEN`, Redis pub/sub): a stream of the names of
    /// resources that changed through any daemon. The names are hints to
    /// look again, not events; some changes (expiry on most engines) are not
    /// reported, and the daemon polls for those. The stream ends when the
    /// subscription breaks, and the daemon subscribes again. `None`: the
    /// engine has no notifications and the daemon only polls.
    async fn subscribe(&self) -> Result<Option<ChangeStream>> {
        Ok(None)
    }
}

/// Resource names reported changed by an engine; see [`Backend::subscribe`].
pub type ChangeStream = futures::stream::BoxStream<'static, String>;

/// The `[backends.NAME]` table: `type` selects the engine, the other keys are
/// the engine's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackendConfig {
    /// A single file in the data directory (default).
    Embedded(embedded::EmbeddedConfig),
    /// Process memory: tests and demos only.
    Memory(memory::MemoryConfig),
    /// Redis (`redis://` or `rediss://`).
    #[cfg(feature = "redis")]
    Redis(redis::RedisConfig),
    /// An etcd cluster.
    #[cfg(feature = "etcd")]
    Etcd(etcd::EtcdConfig),
    /// One PostgreSQL table.
    #[cfg(feature = "postgres")]
    Postgres(postgres::PostgresConfig),
    /// One MySQL or MariaDB table.
    #[cfg(feature = "mysql")]
    Mysql(mysql::MysqlConfig),
    /// An Amazon DynamoDB table shared by several daemons.
    #[cfg(feature = "dynamodb")]
    Dynamodb(dynamodb::DynamodbConfig),
}

impl BackendConfig {
    /// The engine's name as written in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "embedded",
            Self::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            Self::Redis(_) => "redis",
            #[cfg(feature = "etcd")]
            Self::Etcd(_) => "etcd",
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
            #[cfg(feature = "mysql")]
            Self::Mysql(_) => "mysql",
            #[cfg(feature = "dynamodb")]
            Self::Dynamodb(_) => "dynamodb",
        }
    }
}

/// Connects to the backend `name` described by `config`. `data_dir` anchors
/// relative paths of file-based backends.
pub async fn connect(
    name: &str,
    config: &BackendConfig,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn Backend>> {
    Ok(match config {
        BackendConfig::Embedded(c) => {
            Arc::new(embedded::EmbeddedBackend::open(name, c, data_dir).await?)
        }
        BackendConfig::Memory(_) => Arc::new(memory::MemoryBackend::new()),
        #[cfg(feature = "redis")]
        BackendConfig::Redis(c) => Arc::new(redis::RedisBackend::connect(name, c).await?),
        #[cfg(feature = "etcd")]
        BackendConfig::Etcd(c) => Arc::new(etcd::EtcdBackend::connect(name, c).await?),
        #[cfg(feature = "postgres")]
        BackendConfig::Postgres(c) => Arc::new(postgres::PostgresBackend::connect(name, c).await?),
        #[cfg(feature = "mysql")]
        BackendConfig::Mysql(c) => Arc::new(mysql::MysqlBackend::connect(name, c).await?),
        #[cfg(feature = "dynamodb")]
        BackendConfig::Dynamodb(c) => Arc::new(dynamodb::DynamodbBackend::connect(name, c).await?),
    })
}
