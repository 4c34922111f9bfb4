//! `type = "redis"`: leases in Redis (one instance or a Sentinel-managed
//! primary; Redis Cluster is not supported because one operation touches a
//! shared index key and the resource's keys, which may live in different
//! slots).
//!
//! # Key layout
//!
//! With the default prefix `stormlock:`, resource `R` uses:
//!
//! - `stormlock:lease:R`: a hash (`id`, `principal`, `reason`, `acquired_s`,
//!   `acquired_us`, `fence`) whose Redis expiry is the lease's expiry, so the
//!   engine's clock decides when a lease lapses and Redis removes it itself;
//! - `stormlock:fence:R`: the fence counter (`INCR`), never expiring, so the
//!   next lease gets a higher fence after release, expiry or force-release;
//! - `stormlock:evicted:R`: a hash (`id`, `actor`, `reason`) of the last
//!   force-release, never expiring, so a broken lease's holder learns why;
//! - `stormlock:index`: a sorted set of resource names, all with score 0, so
//!   `ZRANGEBYLEX` lists them in byte order (which is the order of UTF-8
//!   strings) for `list` and pagination. Members whose lease key has expired
//!   are removed lazily by `list`;
//! - `stormlock:book:R`: a hash (`version`, `body`), the resource's
//!   reservation book: the lock core's encoding (`body`, opaque bytes) and
//!   its version (`HINCRBY`, 1 on the first write). Never expiring and never
//!   deleted, so a version never comes back with other contents;
//! - `stormlock:books`: a sorted set of the names of resources with a book,
//!   all with score 0, listed with `ZRANGEBYLEX` like `stormlock:index`;
//! - `stormlock:changes`: a pub/sub channel (not a key) on which every
//!   acquire, renew, release and force-release publishes the resource's
//!   name, so that daemons sharing the Redis wake their waiters and watchers
//!   at once. Expiry is not published (it would need keyspace notifications
//!   configured on the server); the daemons poll for it.
//!
//! Every operation is one Lua script, so each is atomic on the engine, and
//! times come from Redis `TIME` inside the script, never from the daemon. A
//! book is written by `write_book.lua` only if its version is still the one
//! the writer read (compare-and-swap); listing books reads a bounded batch
//! of names and their books per script.
//!
//! # Python stormlock
//!
//! With `python_stormlock = true` the scripts also get key `R` itself, where
//! Python stormlock 0.4.1 keeps its lock on `R` (a hash `id`, `p`, `c` with
//! the lock's expiry; see `python.lua`), in the same atomic step: acquire
//! refuses while a Python lock is there and reports its holder, and every
//! granted lease is mirrored into that hash (its id as 16 bytes, its
//! principal, the grant time, the same expiry, and a field `stormlockd` with
//! the prefix, marking it as this deployment's), which renew extends and
//! release and force-release delete. Force-release of a resource no
//! Stormlock lease holds deletes a Python lock's hash, as Python's release
//! does. `current` reports a Python lock as held; `list` walks the index
//! and shows Stormlock's leases only. A resource
//! whose name is one of this backend's own keys (books and their index
//! included) is refused in this mode.
//!
//! # Requirements on the engine
//!
//! Fences survive a Redis restart only with persistence (AOF or RDB), and no
//! key may ever be evicted: `maxmemory-policy noeviction` is the only safe
//! policy. `volatile-*` policies evict exactly the keys that carry a TTL —
//! the live leases, so a second holder could be granted a held lock — and
//! `allkeys-*` policies evict the fence counters and books too. The backend
//! refuses to start on any other policy it can read; where `CONFIG GET` is
//! not permitted (managed Redis), it says at start that it cannot check and
//! that `noeviction` is required. Counters and eviction records stay after
//! their leases, one small key each per resource ever locked, by design; so
//! do books, one per resource ever reserved.
//!
//! # Connections
//!
//! One multiplexed connection ([`ConnectionManager`]) carries every call: the
//! scripts take microseconds, and pipelining on one connection beats a pool
//! of idle ones, so there is no `pool_size`. The manager reconnects by itself
//! when the connection drops; a connection that stays silent for longer than
//! `connect_timeout` (a frozen or partitioned server, whose TCP connection
//! never fails) is replaced on the next call.
//!
//! # Configuration
//!
//! ```toml
//! [backends.shared]
//! type = "redis"
//! url = "rediss://stormlock:secret@redis.internal:6380/0"
//! ca_file = "/etc/stormlock/redis-ca.pem"   # private CA, optional
//! cert_file = "/etc/stormlock/redis-client.pem"   # client certificate, optional
//! key_file = "/etc/stormlock/redis-client.key"
//! prefix = "stormlock:"
//! connect_timeout = "2s"
//! python_stormlock = false   # true while migrating from Python stormlock
//! ```
//!
//! # Layout
//!
//! This file holds the connection and the operations; `config.rs` the table
//! above and its checks; `scripts.rs` the Lua scripts (the `*.lua` files
//! beside it); `codec.rs` the reading of their replies.

mod codec;
mod config;
mod scripts;

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ErrorKind, RedisError, ServerErrorKind, Value};

use super::{Backend, BackendError, Book, ChangeStream, Result, redact_url};
use crate::lease::{AcquireRequest, Acquisition, Eviction, Lease, LeaseId, LeaseStatus};
use codec::{array, int, text, ttl_millis};
pub use config::RedisConfig;
use scripts::Scripts;

/// The current connection and a generation number, so that concurrent
/// callers that saw the same connection time out replace it only once.
struct Connection {
    generation: u64,
    manager: ConnectionManager,
}

/// Leases in Redis, through one multiplexed, self-reconnecting connection.
pub struct RedisBackend {
    name: String,
    /// Where errors say the engine is, without credentials.
    address: String,
    client: Client,
    manager_config: ConnectionManagerConfig,
    connection: Mutex<Connection>,
    prefix: String,
    scripts: Scripts,
    connect_timeout: Duration,
    /// `python_stormlock`: honour and write Python stormlock's locks.
    python: bool,
}

/// Books read per `books.lua` run: a bounded reply (books are up to about
/// 64 KiB each) and a short script.
const BOOKS_BATCH: usize = 64;

/// `ZRANGEBYLEX` bounds of the names that start with `prefix` and sort
/// strictly after `after`: `[x` includes x, `(x` excludes it, `-`/`+` are
/// the ends. Names are UTF-8, which never contains the byte 0xFF, so
/// `(prefix 0xFF` is above every name that starts with the prefix.
fn lex_range(prefix: &str, after: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let min: Vec<u8> = match after {
        Some(after) if after >= prefix => [b"(", after.as_bytes()].concat(),
        _ if prefix.is_empty() => b"-".to_vec(),
        _ => [b"[", prefix.as_bytes()].concat(),
    };
    let max: Vec<u8> = if prefix.is_empty() {
        b"+".to_vec()
    } else {
        [b"(", prefix.as_bytes(), b"\xff"].concat()
    };
    (min, max)
}

/// Refuses an engine that may evict keys: only `noeviction` keeps every
/// lease and every fence counter. `policy` is `None` when `CONFIG GET` is not
/// permitted (managed Redis), which is said once at start.
fn check_eviction_policy(name: &str, address: &str, policy: Option<&String>) -> Result<()> {
    match policy.map(String::as_str) {
        Some("noeviction") => Ok(()),
        Some(policy) => Err(BackendError::config(
            name,
            format!(
                "{address} has maxmemory-policy {policy}, which may evict {}: a lock could then \
                 be granted twice or a fence go back. Set `maxmemory-policy noeviction` \
                 (CONFIG SET maxmemory-policy noeviction, and in redis.conf)",
                if policy.starts_with("volatile-") {
                    "live leases (the keys with a TTL)"
                } else {
                    "leases and fence counters"
                }
            ),
        )),
        None => {
            tracing::warn!(
                backend = name,
                address,
                "cannot read maxmemory-policy (CONFIG GET is not permitted here): make sure it is \
                 noeviction, the only policy under which Redis never evicts a lease or a fence counter"
            );
            Ok(())
        }
    }
}

fn read_file(name: &str, key: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        BackendError::config(name, format!("{key} {}: cannot read: {e}", path.display()))
    })
}

/// The client certificate for the driver (see [`super::client_identity`]).
fn client_identity(
    name: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<redis::ClientTlsConfig> {
    let identity = super::client_identity(name, cert, key)?;
    Ok(redis::ClientTlsConfig {
        client_cert: identity.cert_pem,
        client_key: identity.key_pem,
    })
}

impl RedisBackend {
    /// Validates `config`, checks that the engine answers within
    /// `connect_timeout` and returns the backend named `name`.
    pub async fn connect(name: &str, config: &RedisConfig) -> Result<Self> {
        let refuse = |message: String| BackendError::config(name, message);
        config.validate().map_err(refuse)?;
        let tls = config.tls().map_err(refuse)?;
        if tls && rustls::crypto::CryptoProvider::get_default().is_none() {
            // The redis crate builds its TLS configuration on rustls'
            // process-wide default provider.
            crate::tls::install_crypto_provider();
        }
        // `validate` allows TLS files only with a rediss:// URL, and a
        // client certificate only with its key.
        let client_tls = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => Some(client_identity(name, cert, key)?),
            _ => None,
        };
        let client = if config.ca_file.is_some() || client_tls.is_some() {
            let root_cert = match &config.ca_file {
                Some(path) => Some(read_file(name, "ca_file", path)?),
                None => None,
            };
            Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
        } else {
            Client::open(config.url.as_str())
        }
        .map_err(|e| BackendError::config(name, format!("url {}: {e}", redact_url(&config.url))))?;
        let info = client.get_connection_info();
        let address = format!(
            "{}://{}/{}",
            if tls { "rediss" } else { "redis" },
            info.addr(),
            info.redis_settings().db()
        );

        let timeout = config.connect_timeout;
        let connection_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let probe = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&connection_config)
                .await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut conn)
                .await;
            Ok::<_, RedisError>(policy.ok())
        };
        let policy = match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(policy)) => policy,
            Ok(Err(e)) if e.kind() == ErrorKind::AuthenticationFailed => {
                return Err(BackendError::config(
                    name,
                    format!("url {address}: credentials refused: {e}"),
                ));
            }
            Ok(Err(e)) => {
                return Err(BackendError::unavailable(
                    name,
                    format!("cannot reach {address}: {e}"),
                ));
            }
            Err(_) => {
                return Err(BackendError::unavailable(
                    name,
                    format!("cannot reach {address}: no answer within {timeout:?}"),
                ));
            }
        };
        check_eviction_policy(name, &address, policy.as_ref().and_then(|p| p.get(1)))?;

        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Short, capped backoff: a restarted engine is used again within
            // half a second instead of after an ever longer sleep.
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(6);
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
                .map_err(|e| BackendError::config(name, format!("url {address}: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            address,
            client,
            manager_config,
            connection: Mutex::new(Connection {
                generation: 0,
                manager,
            }),
            prefix: config.prefix.clone(),
            scripts: Scripts::new(),
            connect_timeout: timeout,
            python: config.python_stormlock,
        })
    }

    fn key(&self, kind: &str, resource: &str) -> String {
        format!("{}{kind}:{resource}", self.prefix)
    }

    /// Whether `name` is, or could be, one of this backend's own keys.
    fn is_own_key(&self, name: &str) -> bool {
        name.strip_prefix(self.prefix.as_str()).is_some_and(|rest| {
            rest == "index"
                || rest == "books"
                || ["lease:", "fence:", "evicted:", "book:"]
                    .iter()
                    .any(|kind| rest.starts_with(kind))
        })
    }

    /// Python stormlock's key for `resource` (the name itself) when
    /// `python_stormlock` is on, unless that is one of this backend's own
    /// keys (such a resource is never granted in this mode).
    fn python_key<'a>(&self, resource: &'a str) -> Option<&'a str> {
        (self.python && !self.is_own_key(resource)).then_some(resource)
    }

    /// The pub/sub channel on which every change publishes its resource.
    fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }

    fn current_connection(&self) -> (u64, ConnectionManager) {
        // The guarded value is replaced in one assignment, so it is
        // consistent even if a holder panicked.
        let conn = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        (conn.generation, conn.manager.clone())
    }

    /// Replaces the connection of `generation` (if no one did yet) with a
    /// fresh one that connects on first use.
    fn replace_connection(&self, generation: u64) {
        let mut conn = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        if conn.generation != generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            self.manager_config.clone(),
        ) {
            Ok(manager) => {
                conn.generation += 1;
                conn.manager = manager;
            }
            Err(e) => {
                tracing::warn!(backend = self.name.as_str(), error = %e, "cannot replace Redis connection")
            }
        }
    }

    /// Runs a script invocation, mapping engine errors.
    async fn run(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Value> {
        let (generation, mut manager) = self.current_connection();
        // A silent connection (a frozen engine, a half-open TCP connection)
        // is never dropped by the manager itself, and the daemon's
        // `backend_timeout` may cancel this call before the connection's
        // own response timeout fires: either way, a call left unanswered
        // that long gives the connection up, and a new one finds out
        // whether the server is back.
        let mut unanswered = Unanswered {
            backend: self,
            generation,
            since: std::time::Instant::now(),
            answered: false,
        };
        let outcome = invocation.invoke_async::<Value>(&mut manager).await;
        unanswered.answered = !matches!(&outcome, Err(e) if e.is_timeout());
        outcome.map_err(|e| self.engine_error(e))
    }

    fn engine_error(&self, e: RedisError) -> BackendError {
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::AuthenticationFailed
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                    )
            )
            || e.code() == Some("BUSY");
        if transient {
            BackendError::unavailable(&self.name, format!("{}: {e}", self.address))
        } else {
            BackendError::internal(&self.name, format!("{}: {e}", self.address))
        }
    }

    fn corrupt(&self, what: &str) -> BackendError {
        BackendError::internal(
            &self.name,
            format!("unexpected reply from {}: {what}", self.address),
        )
    }

    /// [`codec::lease`], a bad reply reported as this engine's.
    fn lease(&self, resource: &str, now: SystemTime, value: &Value) -> Result<Option<Lease>> {
        codec::lease(resource, now, value).map_err(|what| self.corrupt(&what))
    }

    /// [`codec::book`], a bad reply reported as this engine's.
    fn book_of(&self, resource: &str, version: &Value, body: &Value) -> Result<Option<Book>> {
        codec::book(resource, version, body).map_err(|what| self.corrupt(&what))
    }

    /// [`codec::time`], a bad reply reported as this engine's.
    fn time(&self, value: &Value) -> Result<SystemTime> {
        codec::time(value).map_err(|what| self.corrupt(&what))
    }

    /// [`codec::eviction_of`], a bad reply reported as this engine's.
    fn eviction_of(&self, value: &Value, id: &LeaseId) -> Result<Option<Eviction>> {
        codec::eviction_of(value, id).map_err(|what| self.corrupt(&what))
    }

    /// [`codec::python_lock`], a bad reply reported as this engine's.
    fn python_lock(&self, resource: &str, now: SystemTime, value: &Value) -> Result<Option<Lease>> {
        codec::python_lock(resource, now, value).map_err(|what| self.corrupt(&what))
    }

    /// `{TIME, lease, eviction, Python lock}` of `resource`; the Python lock
    /// only when `python` and the mode is on.
    async fn read(
        &self,
        resource: &str,
        python: bool,
    ) -> Result<(SystemTime, Option<Lease>, Value, Option<Lease>)> {
        let mut invocation = self.scripts.read.prepare_invoke();
        invocation
            .key(self.key("lease", resource))
            .key(self.key("evicted", resource));
        if let Some(key) = self.python_key(resource).filter(|_| python) {
            invocation.key(key).arg(&self.prefix);
        }
        let reply = self.run(&invocation).await?;
        match array(&reply) {
            Some([now, lease, eviction, python]) => {
                let now = self.time(now)?;
                Ok((
                    now,
                    self.lease(resource, now, lease)?,
                    eviction.clone(),
                    self.python_lock(resource, now, python)?,
                ))
            }
            _ => Err(self.corrupt("read reply is not four fields")),
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
        if self.python && self.is_own_key(&req.resource) {
            return Err(BackendError::config(
                &self.name,
                format!(
                    "resource {:?} cannot be locked with python_stormlock = true: Python \
                     stormlock's key for it is one of this backend's own keys (prefix {:?})",
                    req.resource, self.prefix
                ),
            ));
        }
        let mut invocation = self.scripts.acquire.prepare_invoke();
        invocation
            .key(self.key("lease", &req.resource))
            .key(self.key("fence", &req.resource))
            .key(format!("{}index", self.prefix))
            .arg(req.id.expose())
            .arg(&req.principal)
            .arg(&req.reason)
            .arg(ttl_millis(req.ttl))
            .arg(&req.resource)
            .arg(self.channel());
        if let Some(key) = self.python_key(&req.resource) {
            invocation.key(key).arg(&self.prefix);
        }
        let reply = self.run(&invocation).await?;
        let Some([granted, now, lease]) = array(&reply) else {
            return Err(self.corrupt("acquire reply is not three fields"));
        };
        let now = self.time(now)?;
        let granted = int(granted);
        let lease = if granted == Some(2) {
            self.python_lock(&req.resource, now, lease)?
        } else {
            self.lease(&req.resource, now, lease)?
        }
        .ok_or_else(|| self.corrupt("acquire returned no lease"))?;
        Ok(match granted {
            Some(1) => Acquisition::Granted(lease),
            _ => Acquisition::contended(&req.id, lease),
        })
    }

    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(self.key("lease", resource))
            .key(format!("{}index", self.prefix))
            .arg(id.expose())
            .arg(resource)
            .arg(self.channel());
        if let Some(key) = self.python_key(resource) {
            invocation.key(key);
        }
        let reply = self.run(&invocation).await?;
        Ok(int(&reply) == Some(1))
    }

    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation
            .key(self.key("lease", resource))
            .key(self.key("evicted", resource))
            .arg(id.expose())
            .arg(ttl_millis(ttl))
            .arg(resource)
            .arg(self.channel());
        if let Some(key) = self.python_key(resource) {
            invocation.key(key).arg(&self.prefix);
        }
        let reply = self.run(&invocation).await?;
        let Some([renewed, now, detail]) = array(&reply) else {
            return Err(self.corrupt("renew reply is not three fields"));
        };
        let now = self.time(now)?;
        if int(renewed) == Some(1) {
            self.lease(resource, now, detail)?
                .ok_or_else(|| self.corrupt("renew returned no lease"))
        } else {
            Err(BackendError::NotCurrent {
                evicted: self.eviction_of(detail, id)?,
            })
        }
    }

    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        let (_, lease, _, python) = self.read(resource, true).await?;
        Ok(lease.or(python))
    }

    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        let (_, lease, eviction, _) = self.read(resource, false).await?;
        Ok(match lease {
            Some(lease) if &lease.id == id => LeaseStatus::Current(lease),
            _ => LeaseStatus::NotCurrent {
                evicted: self.eviction_of(&eviction, id)?,
            },
        })
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (mut min, max) = lex_range(prefix, after);
        let batch = limit.saturating_mul(2).clamp(64, 1_000);
        let lease_prefix = format!("{}lease:", self.prefix);
        let mut leases = Vec::new();
        // Each round scans at least one name past `min` or ends the range,
        // so the loop ends; the daemon's call timeout bounds its time.
        loop {
            let reply = self
                .run(
                    self.scripts
                        .list
                        .key(format!("{}index", self.prefix))
                        .arg(&lease_prefix)
                        .arg(&min)
                        .arg(&max)
                        .arg(batch)
                        .arg(limit - leases.len()),
                )
                .await?;
            let Some([now, found, last, exhausted]) = array(&reply) else {
                return Err(self.corrupt("list reply is not four fields"));
            };
            let now = self.time(now)?;
            for entry in array(found).ok_or_else(|| self.corrupt("list entries"))? {
                let Some([name, lease]) = array(entry) else {
                    return Err(self.corrupt("list entry is not two fields"));
                };
                let name = text(name).ok_or_else(|| self.corrupt("resource name is not UTF-8"))?;
                if let Some(lease) = self.lease(&name, now, lease)? {
                    leases.push(lease);
                }
            }
            let last = match last {
                Value::BulkString(bytes) => Some(bytes.as_slice()),
                _ => None,
            };
            match last {
                Some(last) if leases.len() < limit && int(exhausted) != Some(1) => {
                    min = [b"(", last].concat();
                }
                _ => return Ok(leases),
            }
        }
    }

    async fn force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Lease>> {
        let mut invocation = self.scripts.force_release.prepare_invoke();
        invocation
            .key(self.key("lease", resource))
            .key(format!("{}index", self.prefix))
            .key(self.key("evicted", resource))
            .arg(actor)
            .arg(reason)
            .arg(resource)
            .arg(self.channel());
        if let Some(key) = self.python_key(resource) {
            invocation.key(key).arg(&self.prefix);
        }
        let reply = self.run(&invocation).await?;
        match array(&reply).unwrap_or_default() {
            [now, lease] => {
                let now = self.time(now)?;
                self.lease(resource, now, lease)
            }
            // A Python stormlock lock, broken as Python's release would.
            [now, _, python] => {
                let now = self.time(now)?;
                self.python_lock(resource, now, python)
            }
            _ => Err(self.corrupt("force-release reply is not two or three fields")),
        }
    }

    async fn book(&self, resource: &str) -> Result<Option<Book>> {
        let reply = self
            .run(&self.scripts.book.key(self.key("book", resource)))
            .await?;
        let Some([version, body]) = array(&reply) else {
            return Err(self.corrupt("book reply is not two fields"));
        };
        self.book_of(resource, version, body)
    }

    async fn write_book(&self, resource: &str, expected: u64, body: &[u8]) -> Result<bool> {
        let reply = self
            .run(
                self.scripts
                    .write_book
                    .key(self.key("book", resource))
                    .key(format!("{}books", self.prefix))
                    .arg(expected)
                    .arg(body)
                    .arg(resource),
            )
            .await?;
        match int(&reply) {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => Err(self.corrupt("write_book reply is not 0 or 1")),
        }
    }

    async fn books(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Book>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (mut min, max) = lex_range(prefix, after);
        let book_prefix = format!("{}book:", self.prefix);
        let mut books = Vec::new();
        // Each round reads at least one name past `min` or ends the range,
        // so the loop ends; the daemon's call timeout bounds its time.
        loop {
            let batch = (limit - books.len()).min(BOOKS_BATCH);
            let reply = self
                .run(
                    self.scripts
                        .books
                        .key(format!("{}books", self.prefix))
                        .arg(&book_prefix)
                        .arg(&min)
                        .arg(&max)
                        .arg(batch),
                )
                .await?;
            let Some([found, last, exhausted]) = array(&reply) else {
                return Err(self.corrupt("books reply is not three fields"));
            };
            for entry in array(found).ok_or_else(|| self.corrupt("books entries"))? {
                let Some([name, version, body]) = array(entry) else {
                    return Err(self.corrupt("books entry is not three fields"));
                };
                let name = text(name).ok_or_else(|| self.corrupt("resource name is not UTF-8"))?;
                let book = self
                    .book_of(&name, version, body)?
                    .ok_or_else(|| self.corrupt("books entry without a book"))?;
                books.push(book);
            }
            match last {
                Value::BulkString(last) if books.len() < limit && int(exhausted) != Some(1) => {
                    min = [b"(", last.as_slice()].concat();
                }
                _ => return Ok(books),
            }
        }
    }

    async fn subscribe(&self) -> Result<Option<ChangeStream>> {
        let channel = self.channel();
        let subscribed = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(self.connect_timeout, subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return Err(self.engine_error(e)),
            Err(_) => {
                return Err(BackendError::unavailable(
                    &self.name,
                    format!(
                        "{}: cannot subscribe within {:?}",
                        self.address, self.connect_timeout
                    ),
                ));
            }
        };
        Ok(Some(
            pubsub
                .into_on_message()
                .filter_map(|message| async move { message.get_payload::<String>().ok() })
                .boxed(),
        ))
    }

    async fn health(&self) -> Result<()> {
        let (generation, mut manager) = self.current_connection();
        match redis::cmd("PING").query_async::<()>(&mut manager).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if e.is_timeout() {
                    self.replace_connection(generation);
                }
                Err(self.engine_error(e))
            }
        }
    }
}

/// A call in flight on connection `generation`: when it ends without an
/// answer (timed out, or dropped by the caller's own timeout) after
/// [`super::SILENT_CONNECTION`], the connection is replaced.
struct Unanswered<'a> {
    backend: &'a RedisBackend,
    generation: u64,
    since: std::time::Instant,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered && self.since.elapsed() >= super::SILENT_CONNECTION {
            self.backend.replace_connection(self.generation);
        }
    }
}
