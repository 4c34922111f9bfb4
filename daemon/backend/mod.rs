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
#[cfg(any(
    feature = "redis",
    feature = "etcd",
    feature = "postgres",
    feature = "mysql",
    feature = "dynamodb"
))]
mod url;

#[cfg(any(
    feature = "redis",
    feature = "etcd",
    feature = "postgres",
    feature = "mysql",
    feature = "dynamodb"
))]
pub use url::redact_url;

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

/// A resource's reservation book as an engine stores it: the lock core's
/// encoding of the resource's reservations (opaque to backends) and a
/// version for compare-and-swap. Books are replaced whole and never
/// deleted (an emptied book stays, like a fence counter), so a version
/// never comes back with other contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Book {
    /// The resource the reservations are on.
    pub resource: String,
    /// The core's encoding of them.
    pub body: Vec<u8>,
    /// Changes with every write, and is never 0 ("no book yet").
    pub version: u64,
}

/// What a backend that keeps no reservation books answers (test doubles).
pub fn no_books(backend: &str) -> BackendError {
    BackendError::internal(backend, "this backend keeps no reservations")
}

/// `connect_timeout` of every adapter that has one, when the table leaves it
/// out: long enough for a TLS handshake to a distant engine, short enough
/// that a dead one is reported before clients give up waiting.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a call may go unanswered before the connection it was sent on is
/// given up rather than reused: far above a healthy round trip, below any
/// sensible `backend_timeout`. A silent connection (a frozen engine, a
/// half-open TCP connection whose peer vanished) never fails by itself, and
/// the daemon's `backend_timeout` cancels the call before any error could
/// come; reused, it would make every later call on it time out too.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) const SILENT_CONNECTION: Duration = Duration::from_millis(500);

/// The reason given for a lock held in Python stormlock's format, by every
/// adapter that honours `python_stormlock = true` (see MIGRATING.md): its
/// holder is reported with the principal Python stored, fence 0 (Python
/// stormlock has no fences) and the Python lease id.
#[cfg(any(
    feature = "redis",
    feature = "etcd",
    feature = "postgres",
    feature = "mysql",
    feature = "dynamodb"
))]
pub const PYTHON_STORMLOCK_REASON: &str = "held by Python stormlock";

/// The holder of `resource` when Python stormlock holds it: its 16-byte
/// lease id (Redis's random bytes, PostgreSQL's UUID, MySQL's `BINARY(16)`,
/// DynamoDB's 32 hex digits; etcd's lease id padded with zero bytes in
/// front) as a lease id, or `None` when the id is not 16 bytes (not written
/// by Python stormlock).
#[cfg(any(
    feature = "redis",
    feature = "etcd",
    feature = "postgres",
    feature = "mysql",
    feature = "dynamodb"
))]
pub(crate) fn python_stormlock_holder(
    resource: &str,
    id: &[u8],
    principal: String,
    acquired_at: std::time::SystemTime,
    expires_at: std::time::SystemTime,
) -> Option<Lease> {
    if id.len() != crate::lease::LEASE_ID_LEN / 2 {
        return None;
    }
    Some(Lease {
        resource: resource.to_string(),
        id: LeaseId::parse(&hex::encode(id))?,
        principal,
        reason: PYTHON_STORMLOCK_REASON.to_string(),
        acquired_at,
        expires_at,
        fence: 0,
        ttl: None,
    })
}

/// Serde's default for `connect_timeout` (a function, as serde wants).
#[cfg(any(
    feature = "redis",
    feature = "etcd",
    feature = "postgres",
    feature = "mysql",
    feature = "dynamodb"
))]
fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}

/// Checks the timeout setting `key` of a `[backends.NAME]` table. Durations
/// come in whole seconds, and zero would fail every call at once.
#[cfg(any(
    feature = "redis",
    feature = "etcd",
    feature = "postgres",
    feature = "mysql",
    feature = "dynamodb"
))]
fn check_timeout(key: &str, value: Duration) -> std::result::Result<(), String> {
    if value.is_zero() {
        return Err(format!("{key}: must be at least 1s"));
    }
    Ok(())
}

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
///   each call with [`crate::routing::WithTimeout`]).
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

    /// The reservation book of `resource`, if one was ever written.
    async fn book(&self, _resource: &str) -> Result<Option<Book>> {
        Err(no_books("?"))
    }

    /// Stores `body` as the book of `resource` if the book's version is
    /// still `expected` (0: none was ever written), atomically on the
    /// engine; returns whether it did (`false`: another writer came first,
    /// read it again).
    async fn write_book(&self, _resource: &str, _expected: u64, _body: &[u8]) -> Result<bool> {
        Err(no_books("?"))
    }

    /// Up to `limit` books whose resource starts with `prefix` and sorts
    /// strictly after `after`, in resource (byte) order.
    async fn books(&self, _prefix: &str, _after: Option<&str>, _limit: usize) -> Result<Vec<Book>> {
        Err(no_books("?"))
    }

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
    /// Checks every setting that can be checked without connecting
    /// (timeouts, key prefixes, table names, URLs and their schemes, TLS
    /// settings that contradict each other), when the configuration is
    /// parsed, so that `check-config` reports it with its key. The message
    /// starts with the key within `[backends.NAME]`.
    ///
    /// Each adapter's `connect` runs the same checks, so a backend built
    /// without a parsed configuration (tests, tools) is held to them too.
    /// Files named by TLS settings are read when connecting.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Self::Embedded(_) | Self::Memory(_) => Ok(()),
            #[cfg(feature = "redis")]
            Self::Redis(c) => c.validate(),
            #[cfg(feature = "etcd")]
            Self::Etcd(c) => c.validate(),
            #[cfg(feature = "postgres")]
            Self::Postgres(c) => c.validate(sql::SqlEngine::Postgres),
            #[cfg(feature = "mysql")]
            Self::Mysql(c) => c.validate(sql::SqlEngine::Mysql),
            #[cfg(feature = "dynamodb")]
            Self::Dynamodb(c) => c.validate(),
        }
    }

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

/// A client certificate and its key, read from a backend's `cert_file` and
/// `key_file`: as PEM (what the Redis and MySQL drivers take) and parsed
/// (what rustls takes, for PostgreSQL).
#[cfg_attr(
    not(any(feature = "redis", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]
pub(crate) struct ClientIdentity {
    /// `cert_file`'s contents.
    pub cert_pem: Vec<u8>,
    /// `key_file`'s contents.
    pub key_pem: Vec<u8>,
    /// The certificate chain of `cert_file`.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The private key of `key_file`.
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

/// Reads backend `name`'s client certificate `cert` and key `key`, and
/// checks at start what the drivers would only find at the first
/// handshake: that the files read, hold a certificate and a private key
/// (PEM), and that the two belong together. Errors name the setting.
#[cfg_attr(
    not(any(feature = "redis", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]
pub(crate) fn client_identity(
    name: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<ClientIdentity> {
    use rustls::pki_types::pem::{Error as PemError, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let refuse = |setting: &str, path: &std::path::Path, why: String| {
        BackendError::config(name, format!("{setting} {}: {why}", path.display()))
    };
    let read = |setting: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| refuse(setting, path, format!("cannot read: {e}")))
    };
    let cert_pem = read("cert_file", cert)?;
    let key_pem = read("key_file", key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| refuse("cert_file", cert, format!("unreadable PEM: {e}")))?;
    if chain.is_empty() {
        return Err(refuse(
            "cert_file",
            cert,
            "no PEM certificate in the file".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        PemError::NoItemsFound => refuse("key_file", key, "no PEM private key in the file".into()),
        e => refuse("key_file", key, format!("unreadable PEM: {e}")),
    })?;
    rustls::sign::CertifiedKey::from_der(
        chain.clone(),
        private.clone_key(),
        &crate::tls::crypto_provider(),
    )
    .map_err(|e| {
        refuse(
            "key_file",
            key,
            format!("not the key of cert_file {}: {e}", cert.display()),
        )
    })?;
    Ok(ClientIdentity {
        cert_pem,
        key_pem,
        chain,
        key: private,
    })
}

/// Why a backend is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To serve locks: the schema is created where `create_table` allows.
    Serve,
    /// To check a configuration (`stormlockd check-config`): nothing is
    /// created or changed.
    Check,
}

/// What connecting does with a table-based engine's schema (SQL,
/// DynamoDB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schema {
    /// Create what is missing, then check it.
    Create,
    /// Check it; anything missing is a configuration error.
    Require,
    /// Check what exists; anything missing is reported, not created.
    Inspect,
}

impl Schema {
    /// The treatment for a backend with `create_table = create`.
    pub(crate) fn new(create: bool, purpose: Purpose) -> Self {
        match (create, purpose) {
            (false, _) => Self::Require,
            (true, Purpose::Serve) => Self::Create,
            (true, Purpose::Check) => Self::Inspect,
        }
    }

    /// How [`Schema::Inspect`] reports `what` missing.
    pub(crate) fn missing(what: &str) -> String {
        format!(
            "{what} does not exist yet; the daemon creates it at its first start (create_table = true)"
        )
    }
}

/// Checks the backend `name` as `stormlockd check-config` does, creating
/// nothing: the embedded store is looked at, not opened for writing; an
/// engine is connected to and health-checked within `timeout`. Returns what
/// it found, for the operator.
pub async fn check(
    name: &str,
    config: &BackendConfig,
    data_dir: &std::path::Path,
    timeout: Duration,
) -> Result<String> {
    let (backend, pending): (Arc<dyn Backend>, Option<String>) = match config {
        BackendConfig::Embedded(c) => {
            return embedded::EmbeddedBackend::check(name, c, data_dir).await;
        }
        #[cfg(feature = "postgres")]
        BackendConfig::Postgres(c) => {
            let (backend, pending) =
                postgres::PostgresBackend::open(name, c, Purpose::Check).await?;
            (Arc::new(backend), pending)
        }
        #[cfg(feature = "mysql")]
        BackendConfig::Mysql(c) => {
            let (backend, pending) = mysql::MysqlBackend::open(name, c, Purpose::Check).await?;
            (Arc::new(backend), pending)
        }
        #[cfg(feature = "dynamodb")]
        BackendConfig::Dynamodb(c) => {
            let (backend, pending) =
                dynamodb::DynamodbBackend::open(name, c, Purpose::Check).await?;
            (Arc::new(backend), pending)
        }
        _ => (connect(name, config, data_dir).await?, None),
    };
    // A table not created yet cannot answer a health check that reads it
    // (DynamoDB's); connecting already showed that the engine answers.
    if let Some(pending) = pending {
        return Ok(format!("answers; {pending}"));
    }
    match tokio::time::timeout(timeout, backend.health()).await {
        Ok(answer) => answer.map(|()| "answers".to_string()),
        Err(_) => Err(BackendError::unavailable(
            name,
            format!(
                "no answer to its health check within {} (backend_timeout)",
                crate::duration::format_duration(timeout)
            ),
        )),
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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// What `Config::parse` says of a file whose only backend is `body`, or
    /// "" when it accepts it.
    fn refused(body: &str) -> String {
        Config::parse(&format!("[backends.main]\n{body}\n"), "test")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    /// Each `(body, key)` is refused at parse time naming `key` within
    /// `[backends.main]`.
    #[cfg(any(
        feature = "redis",
        feature = "etcd",
        feature = "postgres",
        feature = "mysql",
        feature = "dynamodb"
    ))]
    fn refused_naming(cases: &[(String, &str)]) {
        for (body, key) in cases {
            let err = refused(body);
            assert!(
                err.contains(&format!("backends.main: {key}: ")),
                "{body}\nrefused with {err:?}, not naming {key}"
            );
        }
    }

    #[test]
    fn engines_without_settings_pass() {
        assert_eq!(refused("type = \"memory\""), "");
        assert_eq!(refused("type = \"embedded\"\npath = \"x.redb\""), "");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_settings_are_checked_when_parsed() {
        let ok = "type = \"redis\"\nurl = \"redis://:pw@h:6379/0\"\n";
        assert_eq!(refused(ok), "");
        assert_eq!(
            refused("type = \"redis\"\nurl = \"rediss://h:6380\"\nca_file = \"ca.pem\""),
            ""
        );
        refused_naming(&[
            ("type = \"redis\"\nurl = \"http://h/\"".to_string(), "url"),
            (
                "type = \"redis\"\nurl = \"redis://h/db\"".to_string(),
                "url",
            ),
            (format!("{ok}prefix = \"\""), "prefix"),
            (format!("{ok}prefix = \"a*\""), "prefix"),
            (format!("{ok}connect_timeout = \"0s\""), "connect_timeout"),
            (format!("{ok}ca_file = \"ca.pem\""), "ca_file"),
        ]);
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_settings_are_checked_when_parsed() {
        let ok = "type = \"etcd\"\nendpoints = [\"http://a:2379\", \"http://b:2379\"]\n";
        let tls = "type = \"etcd\"\nendpoints = [\"https://a:2379\"]\nca_file = \"ca.pem\"\n";
        assert_eq!(refused(ok), "");
        assert_eq!(refused(tls), "");
        refused_naming(&[
            ("type = \"etcd\"\nendpoints = []".to_string(), "endpoints"),
            (
                "type = \"etcd\"\nendpoints = [\"http://a:2379\", \"b:2379\"]".to_string(),
                "endpoints[1]",
            ),
            (
                "type = \"etcd\"\nendpoints = [\"http://a:2379\", \"https://b:2379\"]".to_string(),
                "endpoints",
            ),
            (format!("{ok}prefix = \"/no-slash\""), "prefix"),
            (format!("{ok}connect_timeout = \"0s\""), "connect_timeout"),
            (format!("{ok}username = \"u\""), "password"),
            (format!("{ok}cert_file = \"c.pem\""), "cert_file"),
            (
                "type = \"etcd\"\nendpoints = [\"https://a:2379\"]".to_string(),
                "ca_file",
            ),
            (format!("{tls}cert_file = \"c.pem\""), "key_file"),
        ]);
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_settings_are_checked_when_parsed() {
        let ok = "type = \"postgres\"\nurl = \"postgres://u:pw@db/ops\"\n";
        assert_eq!(refused(ok), "");
        assert_eq!(refused(&format!("{ok}table = \"ops.locks\"")), "");
        refused_naming(&[
            (
                "type = \"postgres\"\nurl = \"mysql://db/ops\"".to_string(),
                "url",
            ),
            (
                "type = \"postgres\"\nurl = \"postgres://db/ops?sslmode=sometimes\"".to_string(),
                "url",
            ),
            (format!("{ok}table = \"a-b\""), "table"),
            (format!("{ok}python_table = \"py\""), "python_table"),
            (
                format!("{ok}python_stormlock = true\npython_table = \"Py\""),
                "python_table",
            ),
            (format!("{ok}table = \"a.b.c\""), "table"),
            (format!("{ok}pool_size = 0"), "pool_size"),
            (format!("{ok}connect_timeout = \"0s\""), "connect_timeout"),
            (format!("{ok}ca_file = \"ca.pem\""), "ca_file"),
            (
                format!("{ok}tls = \"require\"\nca_file = \"ca.pem\""),
                "ca_file",
            ),
        ]);
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn mysql_settings_are_checked_when_parsed() {
        let ok = "type = \"mysql\"\nurl = \"mysql://u:pw@db:3306/ops\"\n";
        assert_eq!(refused(ok), "");
        assert_eq!(refused(&format!("{ok}python_stormlock = true")), "");
        refused_naming(&[
            (
                "type = \"mysql\"\nurl = \"postgres://db/ops\"".to_string(),
                "url",
            ),
            (
                "type = \"mysql\"\nurl = \"mysql://db/ops?pool_max=x\"".to_string(),
                "url",
            ),
            (format!("{ok}table = \"ops.locks\""), "table"),
            (format!("{ok}python_table = \"py\""), "python_table"),
            (
                format!("{ok}python_stormlock = true\npython_table = \"a-b\""),
                "python_table",
            ),
            (format!("{ok}pool_size = 0"), "pool_size"),
            (format!("{ok}connect_timeout = \"0s\""), "connect_timeout"),
            (format!("{ok}ca_file = \"ca.pem\""), "ca_file"),
        ]);
    }

    #[cfg(feature = "dynamodb")]
    #[test]
    fn dynamodb_settings_are_checked_when_parsed() {
        let ok = "type = \"dynamodb\"\n";
        assert_eq!(refused(ok), "");
        refused_naming(&[
            (format!("{ok}table = \"ab\""), "table"),
            (format!("{ok}region = \"EU West\""), "region"),
            (format!("{ok}endpoint = \"localhost:8000\""), "endpoint"),
            (format!("{ok}timeout = \"0s\""), "timeout"),
            (format!("{ok}connect_timeout = \"0s\""), "connect_timeout"),
        ]);
    }

    /// A URL refused at parse time never shows its password.
    #[cfg(all(feature = "redis", feature = "postgres"))]
    #[test]
    fn refusals_never_show_passwords() {
        for body in [
            "type = \"redis\"\nurl = \"http://u:hunter2@h/\"",
            "type = \"redis\"\nurl = \"redis://u:hunter2@h/db\"",
            "type = \"postgres\"\nurl = \"postgres://u:hunter2@h/db?sslmode=sometimes\"",
            "type = \"postgres\"\nurl = \"postgres://u:hunter2@h/db?password=hunter2&x=\"",
        ] {
            let err = refused(body);
            assert!(!err.is_empty(), "{body} accepted");
            assert!(!err.contains("hunter2"), "{body}: {err}");
        }
    }
}
