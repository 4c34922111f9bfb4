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
//! - `stormlock:changes`: a pub/sub channel (not a key) on which every
//!   acquire, renew, release and force-release publishes the resource's
//!   name, so that daemons sharing the Redis wake their waiters and watchers
//!   at once. Expiry is not published (it would need keyspace notifications
//!   configured on the server); the daemons poll for it.
//!
//! Every operation is one Lua script, so each is atomic on the engine, and
//! times come from Redis `TIME` inside the script, never from the daemon.
//!
//! # Requirements on the engine
//!
//! Fences survive a Redis restart only with persistence (AOF or RDB), and the
//! counters must never be evicted: use `maxmemory-policy noeviction` or a
//! `volatile-*` policy. The backend logs a warning at start when it can see
//! an `allkeys-*` policy. Counters and eviction records stay after their
//! leases, one small key each per resource ever locked, by design.
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
//! prefix = "stormlock:"
//! connect_timeout = "2s"
//! ```

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use serde::Deserialize;

use super::{Backend, BackendError, ChangeStream, Result};
use crate::lease::{AcquireRequest, Acquisition, Eviction, Lease, LeaseId, LeaseStatus};
use futures::StreamExt;

/// `[backends.NAME]` with `type = "redis"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host[:port][/db]`, or `rediss://…` for TLS.
    pub url: String,
    /// Prepended to every key this backend writes, so that several
    /// deployments (or other applications) can share one Redis. Default
    /// `stormlock:`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long to wait for a connection (TCP, TLS, AUTH) and for a reply on
    /// an open connection before giving up on it. Default `2s`.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// PEM file with the certificate authorities to trust for `rediss://`,
    /// for a server with a private CA; without it the public web roots are
    /// trusted.
    pub ca_file: Option<PathBuf>,
}

// By hand, because the URL may carry a password.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn default_prefix() -> String {
    "stormlock:".to_string()
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// The URL with any password replaced by `***`, for logs and errors.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// Characters refused in a key prefix: controls and whitespace confuse
/// operators' tools, and glob metacharacters would turn `SCAN MATCH prefix*`
/// (the usual way to inspect a prefix) into something else.
fn check_prefix(name: &str, prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > 128 {
        return Err(BackendError::config(
            name,
            "prefix must be 1 to 128 bytes long (default \"stormlock:\")",
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || "*?[]\\{}".contains(*c))
    {
        return Err(BackendError::config(
            name,
            format!(
                "prefix {prefix:?} contains {bad:?}; control characters, whitespace and *?[]\\{{}} are not allowed"
            ),
        ));
    }
    Ok(())
}

/// Shared Lua: the live lease in hash `key` as `{id, principal, reason,
/// acquired_s, acquired_us, fence, pttl}`, or `{}` when there is none. A
/// missing field or a key without expiry comes back as such and is reported
/// as a corrupt record by the daemon.
const LEASE_AT: &str = r"
local function lease_at(key)
  local pttl = redis.call('PTTL', key)
  if pttl == -2 then return {} end
  local h = redis.call('HMGET', key, 'id', 'principal', 'reason', 'acquired_s', 'acquired_us', 'fence')
  return {h[1], h[2], h[3], h[4], h[5], h[6], pttl}
end
";

/// KEYS: lease, fence, index. ARGV: id, principal, reason, ttl_ms, resource,
/// changes channel. Returns `{granted 0|1, TIME, lease}` where lease is the new lease or the
/// holder's.
const ACQUIRE: &str = r"
local now = redis.call('TIME')
local holder = lease_at(KEYS[1])
if #holder > 0 then return {0, now, holder} end
local fence = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'principal', ARGV[2], 'reason', ARGV[3],
  'acquired_s', now[1], 'acquired_us', now[2], 'fence', fence)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[5])
return {1, now, lease_at(KEYS[1])}
";

/// KEYS: lease, index. ARGV: id, resource, changes channel. Returns 1 if
/// the lease was current (and is now gone), else 0.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[2])
  return 1
end
return 0
";

/// KEYS: lease, evicted. ARGV: id, ttl_ms, resource, changes channel.
/// Returns `{1, TIME, lease}` when renewed, else `{0, TIME, eviction}` with
/// eviction `{id, actor, reason}`.
const RENEW: &str = r"
local now = redis.call('TIME')
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PUBLISH', ARGV[4], ARGV[3])
  return {1, now, lease_at(KEYS[1])}
end
return {0, now, redis.call('HMGET', KEYS[2], 'id', 'actor', 'reason')}
";

/// KEYS: lease, evicted. Returns `{TIME, lease, eviction}` as one snapshot.
const READ: &str = r"
return {redis.call('TIME'), lease_at(KEYS[1]), redis.call('HMGET', KEYS[2], 'id', 'actor', 'reason')}
";

/// KEYS: lease, index, evicted. ARGV: actor, reason, resource, changes
/// channel. Returns
/// `{TIME, lease}` with the broken lease, or `{}` when the resource was free.
const FORCE_RELEASE: &str = r"
local now = redis.call('TIME')
local lease = lease_at(KEYS[1])
if #lease > 0 then
  redis.call('HSET', KEYS[3], 'id', lease[1], 'actor', ARGV[1], 'reason', ARGV[2])
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[3])
end
return {now, lease}
";

/// KEYS: index. ARGV: lease key prefix, min and max (ZRANGEBYLEX syntax),
/// batch size, limit. Scans up to `batch` names, drops those whose lease has
/// expired from the index, and returns `{TIME, {{name, lease}...}, last
/// scanned name or false, 1 if the range is exhausted}`. The caller loops,
/// so one script never scans more than a batch.
const LIST: &str = r"
local now = redis.call('TIME')
local batch = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local names = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', 0, batch)
local found = {}
local last = false
local stopped = false
for _, name in ipairs(names) do
  last = name
  local lease = lease_at(ARGV[1] .. name)
  if #lease == 0 then
    redis.call('ZREM', KEYS[1], name)
  else
    found[#found + 1] = {name, lease}
    if #found >= limit then
      stopped = true
      break
    end
  end
end
local exhausted = 0
if not stopped and #names < batch then exhausted = 1 end
return {now, found, last, exhausted}
";

/// The scripts, compiled (hashed) once; `invoke_async` runs them by SHA and
/// loads them again after a Redis restart (`NOSCRIPT`).
struct Scripts {
    acquire: Script,
    release: Script,
    renew: Script,
    read: Script,
    force_release: Script,
    list: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_lease_at = |body: &str| Script::new(&format!("{LEASE_AT}{body}"));
        Self {
            acquire: with_lease_at(ACQUIRE),
            release: Script::new(RELEASE),
            renew: with_lease_at(RENEW),
            read: with_lease_at(READ),
            force_release: with_lease_at(FORCE_RELEASE),
            list: with_lease_at(LIST),
        }
    }
}

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
}

impl RedisBackend {
    /// Validates `config`, checks that the engine answers within
    /// `connect_timeout` and returns the backend named `name`.
    pub async fn connect(name: &str, config: &RedisConfig) -> Result<Self> {
        check_prefix(name, &config.prefix)?;
        if config.connect_timeout.is_zero() {
            return Err(BackendError::config(
                name,
                "connect_timeout must be at least 1 second",
            ));
        }
        let tls = config.url.starts_with("rediss://");
        if !tls && !config.url.starts_with("redis://") {
            return Err(BackendError::config(
                name,
                format!(
                    "url {} must start with redis:// or rediss:// (TLS)",
                    redact_url(&config.url)
                ),
            ));
        }
        if tls && rustls::crypto::CryptoProvider::get_default().is_none() {
            // The redis crate builds its TLS configuration on rustls'
            // process-wide default provider.
            crate::tls::install_crypto_provider();
        }
        let client = match &config.ca_file {
            Some(path) if tls => {
                let root_cert = std::fs::read(path).map_err(|e| {
                    BackendError::config(
                        name,
                        format!("ca_file {}: cannot read: {e}", path.display()),
                    )
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                Client::build_with_tls(config.url.as_str(), certs)
            }
            Some(_) => {
                return Err(BackendError::config(
                    name,
                    "ca_file is only used with a rediss:// url",
                ));
            }
            None => Client::open(config.url.as_str()),
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
        // CONFIG may be disabled (managed Redis); then there is nothing to check.
        if let Some(policy) = policy.as_ref().and_then(|p| p.get(1))
            && policy.starts_with("allkeys-")
        {
            tracing::warn!(
                backend = name,
                policy = policy.as_str(),
                "Redis may evict fence counters under memory pressure (maxmemory-policy allkeys-*); \
                 use noeviction or a volatile-* policy so fences never go back"
            );
        }

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
        })
    }

    fn key(&self, kind: &str, resource: &str) -> String {
        format!("{}{kind}:{resource}", self.prefix)
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
        match invocation.invoke_async::<Value>(&mut manager).await {
            Ok(value) => Ok(value),
            Err(e) => {
                if e.is_timeout() {
                    // A silent connection is never dropped by the manager
                    // itself; a new one finds out whether the server is back.
                    self.replace_connection(generation);
                }
                Err(self.engine_error(e))
            }
        }
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

    /// Reads `{id, principal, reason, acquired_s, acquired_us, fence, pttl}`
    /// of `resource` as a lease, `None` for `{}`.
    fn lease(&self, resource: &str, now: SystemTime, value: &Value) -> Result<Option<Lease>> {
        let fields = array(value).ok_or_else(|| self.corrupt("lease is not an array"))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let [id, principal, reason, acquired_s, acquired_us, fence, pttl] = fields else {
            return Err(self.corrupt("lease has the wrong number of fields"));
        };
        let corrupt =
            |field: &str| self.corrupt(&format!("lease of {resource:?} has a bad {field}"));
        let id = text(id)
            .and_then(|t| LeaseId::parse(&t))
            .ok_or_else(|| corrupt("id"))?;
        let acquired_s = int(acquired_s).and_then(|s| u64::try_from(s).ok());
        let acquired_us = int(acquired_us).and_then(|us| u64::try_from(us).ok());
        let (Some(acquired_s), Some(acquired_us)) = (acquired_s, acquired_us) else {
            return Err(corrupt("acquired_s/acquired_us"));
        };
        let pttl = int(pttl)
            .and_then(|ms| u64::try_from(ms).ok())
            .ok_or_else(|| corrupt("expiry (the key does not expire)"))?;
        Ok(Some(Lease {
            resource: resource.to_string(),
            id,
            principal: text(principal).ok_or_else(|| corrupt("principal"))?,
            reason: text(reason).ok_or_else(|| corrupt("reason"))?,
            acquired_at: UNIX_EPOCH
                + Duration::from_secs(acquired_s)
                + Duration::from_micros(acquired_us),
            expires_at: now + Duration::from_millis(pttl),
            fence: int(fence)
                .and_then(|f| u64::try_from(f).ok())
                .ok_or_else(|| corrupt("fence"))?,
        }))
    }

    /// Reads a `TIME` reply.
    fn time(&self, value: &Value) -> Result<SystemTime> {
        match array(value) {
            Some([secs, micros]) => {
                let secs = int(secs).and_then(|s| u64::try_from(s).ok());
                let micros = int(micros).and_then(|us| u64::try_from(us).ok());
                match (secs, micros) {
                    (Some(s), Some(us)) => {
                        Ok(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us))
                    }
                    _ => Err(self.corrupt("TIME is not two numbers")),
                }
            }
            _ => Err(self.corrupt("TIME is not two numbers")),
        }
    }

    /// Reads an `{id, actor, reason}` eviction record, keeping it only if it
    /// is about lease `id`.
    fn eviction_of(&self, value: &Value, id: &LeaseId) -> Result<Option<Eviction>> {
        match array(value) {
            Some([evicted, actor, reason]) => {
                if text(evicted).as_deref() != Some(id.expose()) {
                    return Ok(None);
                }
                let (Some(actor), Some(reason)) = (text(actor), text(reason)) else {
                    return Err(self.corrupt("eviction record lacks actor or reason"));
                };
                Ok(Some(Eviction {
                    id: id.clone(),
                    actor,
                    reason,
                }))
            }
            _ => Err(self.corrupt("eviction record is not three fields")),
        }
    }

    /// `{TIME, lease, eviction}` of `resource`.
    async fn read(&self, resource: &str) -> Result<(SystemTime, Option<Lease>, Value)> {
        let reply = self
            .run(
                self.scripts
                    .read
                    .key(self.key("lease", resource))
                    .key(self.key("evicted", resource)),
            )
            .await?;
        match array(&reply) {
            Some([now, lease, eviction]) => {
                let now = self.time(now)?;
                Ok((now, self.lease(resource, now, lease)?, eviction.clone()))
            }
            _ => Err(self.corrupt("read reply is not three fields")),
        }
    }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn array(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

#[async_trait]
impl Backend for RedisBackend {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
        let reply = self
            .run(
                self.scripts
                    .acquire
                    .key(self.key("lease", &req.resource))
                    .key(self.key("fence", &req.resource))
                    .key(format!("{}index", self.prefix))
                    .arg(req.id.expose())
                    .arg(&req.principal)
                    .arg(&req.reason)
                    .arg(ttl_millis(req.ttl))
                    .arg(&req.resource)
                    .arg(self.channel()),
            )
            .await?;
        let Some([granted, now, lease]) = array(&reply) else {
            return Err(self.corrupt("acquire reply is not three fields"));
        };
        let now = self.time(now)?;
        let lease = self
            .lease(&req.resource, now, lease)?
            .ok_or_else(|| self.corrupt("acquire returned no lease"))?;
        Ok(match int(granted) {
            Some(1) => Acquisition::Granted(lease),
            _ => Acquisition::Held(lease),
        })
    }

    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        let reply = self
            .run(
                self.scripts
                    .release
                    .key(self.key("lease", resource))
                    .key(format!("{}index", self.prefix))
                    .arg(id.expose())
                    .arg(resource)
                    .arg(self.channel()),
            )
            .await?;
        Ok(int(&reply) == Some(1))
    }

    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        let reply = self
            .run(
                self.scripts
                    .renew
                    .key(self.key("lease", resource))
                    .key(self.key("evicted", resource))
                    .arg(id.expose())
                    .arg(ttl_millis(ttl))
                    .arg(resource)
                    .arg(self.channel()),
            )
            .await?;
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
        Ok(self.read(resource).await?.1)
    }

    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        let (_, lease, eviction) = self.read(resource).await?;
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
        // ZRANGEBYLEX bounds: `[x` includes x, `(x` excludes it, `-`/`+` are
        // the ends. Names are UTF-8, which never contains the byte 0xFF, so
        // `(prefix 0xFF` is above every name that starts with the prefix.
        let mut min: Vec<u8> = match after {
            Some(after) if after >= prefix => [b"(", after.as_bytes()].concat(),
            _ if prefix.is_empty() => b"-".to_vec(),
            _ => [b"[", prefix.as_bytes()].concat(),
        };
        let max: Vec<u8> = if prefix.is_empty() {
            b"+".to_vec()
        } else {
            [b"(", prefix.as_bytes(), b"\xff"].concat()
        };
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
        let reply = self
            .run(
                self.scripts
                    .force_release
                    .key(self.key("lease", resource))
                    .key(format!("{}index", self.prefix))
                    .key(self.key("evicted", resource))
                    .arg(actor)
                    .arg(reason)
                    .arg(resource)
                    .arg(self.channel()),
            )
            .await?;
        let Some([now, lease]) = array(&reply) else {
            return Err(self.corrupt("force-release reply is not two fields"));
        };
        let now = self.time(now)?;
        self.lease(resource, now, lease)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://:secret@host/"), "rediss://:***@host/");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("nonsense"), "<not a URL>");
        let config = RedisConfig {
            url: "redis://u:hunter2@h/".to_string(),
            prefix: default_prefix(),
            connect_timeout: default_connect_timeout(),
            ca_file: None,
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("t", "stormlock:").is_ok());
        assert!(check_prefix("t", "team-a/locks:").is_ok());
        for bad in ["", "a*", "a?", "a[b]", "a\\", "a b", "a\nb", "{tag}"] {
            let err = check_prefix("t", bad).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("prefix")), "{bad:?}");
        }
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let config: RedisConfig = toml::from_str(r#"url = "redis://h/""#).expect("parse");
        assert_eq!(config.prefix, "stormlock:");
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        let config: RedisConfig =
            toml::from_str("url = \"redis://h/\"\nconnect_timeout = \"5s\"").expect("parse");
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        assert!(toml::from_str::<RedisConfig>("url = \"redis://h/\"\npool = 3").is_err());
    }
}
