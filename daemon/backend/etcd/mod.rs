//! `type = "etcd"`: leases as etcd keys bound to etcd leases.
//!
//! # Key layout
//!
//! With the default prefix `/stormlock/`, resource `R` uses:
//!
//! - `/stormlock/lock/R`: JSON `{id, principal, reason, acquired_at}`
//!   (`acquired_at` in Unix milliseconds, on the daemon's clock: etcd has no
//!   clock to read), attached to an etcd lease whose TTL is the lock's TTL.
//!   etcd revokes the lease when it lapses, which deletes the key: expiry is
//!   judged by etcd, and `expires_at` is reported from the lease's remaining
//!   TTL. The fence is the key's `create_revision`: etcd's revision only ever
//!   grows (compaction included), each acquisition creates the key anew, and
//!   renewal re-puts it without changing it.
//! - `/stormlock/evicted/R`: JSON `{id, actor, reason}` of the last
//!   force-release, on no lease, so it survives.
//! - `/stormlock/books/R`: the resource's reservation book, the lock core's
//!   encoding as the value (opaque bytes), on no lease and never deleted.
//!   Its version is the key's `mod_revision`, which etcd's global revision
//!   makes different from every earlier one.
//!
//! The three namespaces (`lock/`, `evicted/`, `books/`) never overlap, so no
//! resource's key is another's of another kind, and the watch on `lock/`
//! never sees a book.
//!
//! # Operations
//!
//! - acquire: grant a lease, then one transaction: if the key's
//!   `create_revision` is 0 (absent), put it on the lease; else read it. A
//!   holder whose lease vanished in between is retried.
//! - renew with a new TTL: etcd cannot change a lease's TTL, so grant a new
//!   lease, move the key to it in a transaction that checks the key's
//!   `mod_revision` and old lease id are still what was read, then revoke the
//!   old lease (which no longer holds any key).
//! - release and force-release: transactions on `mod_revision`, then revoke
//!   the lease so it does not linger.
//! - list: a range read over the lock keys under the prefix, in key order
//!   (etcd sorts keys bytewise, which is UTF-8 order).
//! - write_book: one transaction: if the book key's `mod_revision` is still
//!   the version the writer read (for no book yet: its `create_revision` is
//!   0, i.e. the key is absent), put the new body. books: a range read over
//!   the book keys, like list.
//! - notifications: each daemon watches the lock keys under the prefix; a put
//!   (acquire, renew) or delete (release, force-release, expiry) wakes its
//!   waiters and watchers at once.
//!
//! # Python stormlock
//!
//! With `python_stormlock = true`, Python stormlock 0.4.1's keys of a
//! resource (`{python_prefix}R/id`, `/p`, `/c`, on one etcd lease; see
//! [`codec::PythonKeys`]) take part in the same transactions: acquire also
//! requires Python's `/id` key to be absent (`create_revision` 0) and puts
//! the lease's mirror there — Python's three keys, with Stormlock's lease
//! id as Python's id, on the lock's own etcd lease, so they lapse with it;
//! when refused, the transaction reads Python's keys too, and a Python lock
//! is reported as the holder (its etcd lease id as the lease id, padded with
//! zeros to 32 hex digits). Renew moves the mirror to the new etcd lease
//! with the lock key (writing it again if it went missing and Python did
//! not take the resource); release and force-release delete it with the
//! lock key, in nested transactions that touch Python's keys only while
//! they are on the lock's etcd lease. Force-release of a resource that
//! Python holds revokes the Python lock's etcd lease, as Python's own
//! release does, which deletes its keys and tells its holder at the next
//! renewal. `current` reports a Python lock as held; `list` shows
//! Stormlock's leases only. A resource whose Python keys would be this
//! backend's own keys (books included) is refused in this mode.
//!
//! Reads that report a lease look up its etcd lease's remaining TTL, which
//! etcd gives in whole seconds, so `expires_at` may be up to a second early.
//! etcd raises TTLs below its minimum (1.5 election timeouts: 2 s with the
//! default 1 s election timeout), and a lapsed lease is revoked by the
//! leader within about half a second; until then it is still current.
//!
//! # Configuration
//!
//! ```toml
//! [backends.shared]
//! type = "etcd"
//! endpoints = ["https://etcd-0:2379", "https://etcd-1:2379", "https://etcd-2:2379"]
//! ca_file = "/etc/stormlock/etcd-ca.pem"
//! cert_file = "/etc/stormlock/etcd-client.pem"   # mutual TLS, optional
//! key_file = "/etc/stormlock/etcd-client.key"
//! username = "stormlock"                         # etcd auth, optional
//! password = "..."
//! prefix = "/stormlock/"
//! connect_timeout = "2s"
//! python_stormlock = false                       # true while migrating
//! # python_prefix = "/"                          # Python stormlock's prefix
//! ```
//!
//! With etcd authentication, the user needs read and write on the prefix
//! (`etcdctl role grant-permission ROLE --prefix=true readwrite /stormlock/`),
//! and in migration mode on Python's keys too (its `prefix`).
//!
//! # Layout
//!
//! This file holds the client and the operations; `config.rs` the table above
//! and its checks; `codec.rs` the stored values and key arithmetic.

mod codec;
mod config;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::{StreamExt, TryStreamExt};

use super::{Backend, BackendError, Book, ChangeStream, Result};
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};
use codec::{PythonKeys, prefix_end};
pub use config::EtcdConfig;

/// How often an idle connection is pinged, so that a dead member is noticed
/// before the next call needs it.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Rounds of read-then-transaction before giving up when other writers keep
/// changing the key in between (each round is a few milliseconds; losing
/// this many in a row means the key is being hammered).
const MAX_ROUNDS: usize = 8;

/// Leases looked up at once when listing.
const LIST_CONCURRENCY: usize = 16;

/// Books read per range read: books are up to about 64 KiB each, and the
/// client refuses answers above 4 MiB.
const BOOKS_BATCH: usize = 32;

/// A lock key as read, with what the transactions compare on.
struct Held {
    lease: Lease,
    /// The etcd lease the key is attached to.
    etcd_lease: i64,
    mod_revision: i64,
}

/// Leases in etcd through one (load-balanced, self-reconnecting) client.
pub struct EtcdBackend {
    name: String,
    client: Client,
    /// `{prefix}lock/`.
    lock_prefix: String,
    /// `{prefix}evicted/`.
    evicted_prefix: String,
    /// `{prefix}books/`.
    books_prefix: String,
    /// `python_stormlock`: Python stormlock's `prefix`, whose keys are
    /// honoured and written; `None` when the mode is off.
    python_prefix: Option<String>,
}

/// A Python stormlock lock as read, with the etcd lease its keys are on.
struct PythonHeld {
    lease: Lease,
    etcd_lease: i64,
}

fn read_file(name: &str, key: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        BackendError::config(name, format!("{key} {}: cannot read: {e}", path.display()))
    })
}

/// Validates `config` and turns it into the client's options, reading the
/// TLS files it names.
fn connect_options(name: &str, config: &EtcdConfig) -> Result<ConnectOptions> {
    let refuse = |message: String| BackendError::config(name, message);
    config.validate().map_err(refuse)?;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_keep_alive(KEEP_ALIVE_INTERVAL, config.connect_timeout)
        // A member cut off from its cluster answers at once instead of
        // waiting for a leader.
        .with_require_leader(true)
        .with_auto_token_refresh(true);
    // `validate` has checked that these come in pairs, and that `ca_file`
    // is set exactly when the endpoints are https://.
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options = options.with_user(user, password);
    }
    if let Some(ca_file) = &config.ca_file {
        let mut tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read_file(name, "ca_file", ca_file)?));
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            tls = tls.identity(Identity::from_pem(
                read_file(name, "cert_file", cert)?,
                read_file(name, "key_file", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

impl EtcdBackend {
    /// Validates `config`, connects, checks that the cluster answers within
    /// `connect_timeout` and returns the backend named `name`.
    pub async fn connect(name: &str, config: &EtcdConfig) -> Result<Self> {
        let options = connect_options(name, config)?;
        let python_prefix = config
            .python_prefix()
            .map_err(|message| BackendError::config(name, message))?
            .map(str::to_string);
        let timeout = config.connect_timeout;
        let endpoints = config.endpoints_shown().join(", ");
        let backend = async {
            let client = Client::connect(&config.endpoints, Some(options)).await?;
            let backend = Self {
                name: name.to_string(),
                client,
                lock_prefix: format!("{}lock/", config.prefix),
                evicted_prefix: format!("{}evicted/", config.prefix),
                books_prefix: format!("{}books/", config.prefix),
                python_prefix,
            };
            backend
                .client
                .clone()
                .get(
                    backend.lock_prefix.as_str(),
                    Some(GetOptions::new().with_count_only()),
                )
                .await?;
            Ok::<_, etcd_client::Error>(backend)
        };
        match tokio::time::timeout(timeout, backend).await {
            Ok(Ok(backend)) => Ok(backend),
            Ok(Err(e)) if is_auth_error(&e) => Err(BackendError::config(
                name,
                format!("etcd at {endpoints} refused the credentials: {e}"),
            )),
            Ok(Err(e)) if is_transient(&e) => Err(BackendError::unavailable(
                name,
                format!("cannot reach etcd at {endpoints}: {e}"),
            )),
            Ok(Err(e)) => Err(BackendError::config(
                name,
                format!("etcd at {endpoints}: {e}"),
            )),
            Err(_) => Err(BackendError::unavailable(
                name,
                format!("cannot reach etcd at {endpoints}: no answer within {timeout:?}"),
            )),
        }
    }

    fn lock_key(&self, resource: &str) -> String {
        format!("{}{resource}", self.lock_prefix)
    }

    fn evicted_key(&self, resource: &str) -> String {
        format!("{}{resource}", self.evicted_prefix)
    }

    fn book_key(&self, resource: &str) -> String {
        format!("{}{resource}", self.books_prefix)
    }

    /// The book stored in `kv`, a key under the book prefix.
    fn book_of(&self, kv: &KeyValue) -> Result<Book> {
        let resource = kv
            .key()
            .strip_prefix(self.books_prefix.as_bytes())
            .and_then(|r| std::str::from_utf8(r).ok())
            .ok_or_else(|| self.corrupt("book key is not UTF-8"))?;
        let version = u64::try_from(kv.mod_revision())
            .ok()
            .filter(|&v| v != 0)
            .ok_or_else(|| self.corrupt(format!("book of {resource:?} has no revision")))?;
        Ok(Book {
            resource: resource.to_string(),
            body: kv.value().to_vec(),
            version,
        })
    }

    /// Python stormlock's keys of `resource` when the mode is on, unless
    /// one of them is one of this backend's own keys (such a resource is
    /// never granted in this mode): `Err` with that key then.
    fn python_keys_checked(
        &self,
        resource: &str,
    ) -> std::result::Result<Option<PythonKeys>, String> {
        let Some(prefix) = &self.python_prefix else {
            return Ok(None);
        };
        let keys = PythonKeys::new(prefix, resource);
        let own = |key: &&str| {
            [&self.lock_prefix, &self.evicted_prefix, &self.books_prefix]
                .iter()
                .any(|own| key.starts_with(own.as_str()))
        };
        if let Some(key) = keys.all().into_iter().find(own) {
            return Err(key.to_string());
        }
        Ok(Some(keys))
    }

    /// Python stormlock's keys of `resource` when the mode is on and they
    /// are not this backend's own (see [`Self::python_keys_checked`]).
    fn python_keys(&self, resource: &str) -> Option<PythonKeys> {
        self.python_keys_checked(resource).ok().flatten()
    }

    /// Refuses, in migration mode, a resource whose Python keys would be
    /// this backend's own keys (lock, eviction or book keys of other
    /// resources).
    fn check_python_keys(&self, resource: &str) -> Result<()> {
        self.python_keys_checked(resource).map(drop).map_err(|key| {
            BackendError::config(
                &self.name,
                format!(
                    "resource {resource:?} cannot be locked with python_stormlock = true: \
                     Python stormlock's key for it, {key:?}, is one of this backend's own keys"
                ),
            )
        })
    }

    /// The operations that write the mirror of `lease` (Python's three
    /// keys) on `etcd_lease`.
    fn mirror_puts(keys: &PythonKeys, lease: &Lease, etcd_lease: i64) -> Vec<TxnOp> {
        let values = PythonKeys::values(&lease.id, &lease.principal, lease.acquired_at);
        keys.all()
            .into_iter()
            .zip(values)
            .map(|(key, value)| {
                TxnOp::put(key, value, Some(PutOptions::new().with_lease(etcd_lease)))
            })
            .collect()
    }

    /// Breaks the Python stormlock lock on `resource`, if the mode is on
    /// and there is one, by revoking its etcd lease as Python's release
    /// does: etcd deletes its keys, and its holder's next renewal fails.
    async fn force_release_python(&self, resource: &str) -> Result<Option<Lease>> {
        let Some(held) = self.python_current(resource).await? else {
            return Ok(None);
        };
        match self.client.clone().lease_revoke(held.etcd_lease).await {
            Ok(_) => Ok(Some(held.lease)),
            // Released or lapsed since it was read: nothing left to break.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(self.engine_error(e)),
        }
    }

    /// A nested transaction that deletes Python's keys if they are the
    /// mirror on `etcd_lease` (Python's own keys are on Python's lease).
    fn unmirror(keys: &PythonKeys, etcd_lease: i64) -> TxnOp {
        TxnOp::txn(
            Txn::new()
                .when([Compare::lease(
                    keys.id.as_str(),
                    CompareOp::Equal,
                    etcd_lease,
                )])
                .and_then(keys.all().map(|key| TxnOp::delete(key, None))),
        )
    }

    /// A Python stormlock lock from the values of its keys (`id`,
    /// principal, created, each `None` when absent), with its expiry; `None`
    /// when there is none or its etcd lease is gone.
    async fn python_held(
        &self,
        resource: &str,
        [id, principal, created]: [Option<KeyValue>; 3],
    ) -> Result<Option<PythonHeld>> {
        let Some(id) = id else {
            return Ok(None);
        };
        let stored = codec::decode_python(
            resource,
            (id.value(), id.lease()),
            principal.as_ref().map(KeyValue::value),
            created.as_ref().map(KeyValue::value),
            SystemTime::now(),
        )
        .map_err(|what| self.corrupt(what))?;
        let Some(expires_at) = self.expiry(stored.etcd_lease).await? else {
            return Ok(None);
        };
        let lease = super::python_stormlock_holder(
            resource,
            &stored.id,
            stored.principal,
            stored.created,
            expires_at,
        )
        .ok_or_else(|| self.corrupt("Python stormlock id"))?;
        Ok(Some(PythonHeld {
            lease,
            etcd_lease: stored.etcd_lease,
        }))
    }

    /// The Python stormlock lock on `resource`, if the mode is on and
    /// there is one.
    async fn python_current(&self, resource: &str) -> Result<Option<PythonHeld>> {
        let Some(keys) = self.python_keys(resource) else {
            return Ok(None);
        };
        let txn = Txn::new().and_then(keys.all().map(|key| TxnOp::get(key, None)));
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.engine_error(e))?;
        self.python_held(resource, read_python(&resp.op_responses(), 0))
            .await
    }

    fn engine_error(&self, e: etcd_client::Error) -> BackendError {
        if is_transient(&e) || is_auth_error(&e) {
            BackendError::unavailable(&self.name, e)
        } else {
            BackendError::internal(&self.name, e)
        }
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> BackendError {
        BackendError::internal(&self.name, format!("corrupt record: {what}"))
    }

    /// When `etcd_lease` ends at the latest, `None` when etcd no longer has
    /// it (expired or revoked: its keys are gone or going). Reckoned from
    /// before the question was asked, so never late.
    async fn expiry(&self, etcd_lease: i64) -> Result<Option<SystemTime>> {
        let asked = SystemTime::now();
        let ttl = self
            .client
            .clone()
            .lease_time_to_live(etcd_lease, None)
            .await
            .map_err(|e| self.engine_error(e))?
            .ttl();
        Ok(u64::try_from(ttl)
            .ok()
            .map(|secs| asked + Duration::from_secs(secs)))
    }

    /// Decodes a lock key's value and looks up its lease's remaining TTL;
    /// `None` when the lease is gone.
    async fn held(&self, resource: &str, kv: &KeyValue) -> Result<Option<Held>> {
        let stored = codec::decode_lock(resource, kv).map_err(|what| self.corrupt(what))?;
        let Some(expires_at) = self.expiry(stored.etcd_lease).await? else {
            return Ok(None);
        };
        Ok(Some(Held {
            lease: Lease {
                resource: resource.to_string(),
                id: stored.id,
                principal: stored.principal,
                reason: stored.reason,
                acquired_at: stored.acquired_at,
                expires_at,
                fence: stored.fence,
                ttl: stored.ttl,
            },
            etcd_lease: stored.etcd_lease,
            mod_revision: stored.mod_revision,
        }))
    }

    /// Like [`Self::held`] for a key read from a range.
    async fn held_key(&self, kv: &KeyValue) -> Result<Option<Held>> {
        let resource = kv
            .key()
            .strip_prefix(self.lock_prefix.as_bytes())
            .and_then(|r| std::str::from_utf8(r).ok())
            .ok_or_else(|| self.corrupt("lock key is not UTF-8"))?;
        self.held(resource, kv).await
    }

    /// The lock key of `resource` and its eviction record, read together.
    async fn read(
        &self,
        resource: &str,
    ) -> Result<(Option<KeyValue>, Option<codec::EvictionValue>)> {
        let txn = Txn::new().and_then([
            TxnOp::get(self.lock_key(resource), None),
            TxnOp::get(self.evicted_key(resource), None),
        ]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.engine_error(e))?;
        let mut gets = resp.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
            _ => None,
        });
        let lock = gets.next().flatten();
        let evicted = match gets.next().flatten() {
            Some(kv) => Some(
                codec::decode_eviction(resource, kv.value()).map_err(|what| self.corrupt(what))?,
            ),
            None => None,
        };
        Ok((lock, evicted))
    }

    /// The current lease of `resource`, with what transactions compare on.
    async fn current_held(&self, resource: &str) -> Result<Option<Held>> {
        let resp = self
            .client
            .clone()
            .get(self.lock_key(resource), None)
            .await
            .map_err(|e| self.engine_error(e))?;
        match resp.kvs().first() {
            Some(kv) => self.held(resource, kv).await,
            None => Ok(None),
        }
    }

    /// Revokes an etcd lease nobody needs any more. Failure is harmless: the
    /// lease lapses by itself at its TTL and holds no key.
    async fn discard(&self, etcd_lease: i64) {
        if let Err(e) = self.client.clone().lease_revoke(etcd_lease).await {
            tracing::debug!(backend = self.name.as_str(), error = %e, "revoking an unused etcd lease failed");
        }
    }

    /// After a transaction whose outcome is unknown (the request may have
    /// been applied and its answer lost), reads the key: the holder when it
    /// now lives on `etcd_lease` (the transaction was applied). Otherwise the
    /// new etcd lease holds nothing: it is revoked when the read shows that,
    /// and left to lapse at its TTL when the read fails too — never revoked
    /// blindly, since revoking it would delete a key it holds.
    async fn applied(&self, resource: &str, etcd_lease: i64) -> Option<Held> {
        // The read goes over the connection that just failed: give the
        // client a moment to connect again before calling the outcome
        // unknown (the caller's time is bounded by `backend_timeout`).
        for attempt in 0..3 {
            match self.current_held(resource).await {
                Ok(Some(held)) if held.etcd_lease == etcd_lease => return Some(held),
                Ok(_) => {
                    self.discard(etcd_lease).await;
                    return None;
                }
                Err(_) if attempt < 2 => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => {}
            }
        }
        None
    }

    async fn grant(&self, ttl: Duration) -> Result<(i64, Duration)> {
        // etcd TTLs are whole seconds; round up so a lease never ends early.
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
        let granted = self
            .client
            .clone()
            .lease_grant(secs, None)
            .await
            .map_err(|e| self.engine_error(e))?;
        let ttl = u64::try_from(granted.ttl()).unwrap_or(0);
        Ok((granted.id(), Duration::from_secs(ttl)))
    }

    async fn not_current(&self, resource: &str, id: &LeaseId) -> BackendError {
        match self.read(resource).await {
            Ok((_, evicted)) => BackendError::NotCurrent {
                evicted: codec::eviction_of(evicted, id),
            },
            Err(e) => e,
        }
    }

    fn contended(&self, what: &str, resource: &str) -> BackendError {
        BackendError::unavailable(
            &self.name,
            format!("{what} of {resource:?} kept racing with other writers; try again"),
        )
    }
}

/// The key read by operation `index` of a transaction's answer (a get),
/// `None` when it found none.
fn read_at(responses: &[TxnOpResponse], index: usize) -> Option<KeyValue> {
    match responses.get(index) {
        Some(TxnOpResponse::Get(get)) => get.kvs().first().cloned(),
        _ => None,
    }
}

/// The keys read by three consecutive gets of a transaction's answer,
/// starting with operation `first`: Python stormlock's keys.
fn read_python(responses: &[TxnOpResponse], first: usize) -> [Option<KeyValue>; 3] {
    [0, 1, 2].map(|i| read_at(responses, first + i))
}

fn is_transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

fn is_auth_error(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied)
                // etcd reports a wrong password as InvalidArgument.
                || status.message().contains("authentication failed")
        }
        _ => false,
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
        self.check_python_keys(&req.resource)?;
        let key = self.lock_key(&req.resource);
        let python = self.python_keys(&req.resource);
        for _ in 0..MAX_ROUNDS {
            // etcd counts the lease down from when it granted it, some time
            // after this: an expiry reckoned from here is never late.
            let granted_from = SystemTime::now();
            let (etcd_lease, granted_ttl) = self.grant(req.ttl).await?;
            // Stored with millisecond precision; report what later reads see.
            let acquired_at = codec::truncate_to_millis(SystemTime::now());
            let value =
                codec::encode_lock(&req.id, &req.principal, &req.reason, acquired_at, req.ttl)
                    .map_err(|e| BackendError::internal(&self.name, e))?;
            let lease = Lease {
                resource: req.resource.clone(),
                id: req.id.clone(),
                principal: req.principal.clone(),
                reason: req.reason.clone(),
                acquired_at,
                expires_at: granted_from + granted_ttl,
                // The put creates the key: its revision, once known.
                fence: 0,
                ttl: Some(req.ttl),
            };
            let mut when = vec![Compare::create_revision(key.as_str(), CompareOp::Equal, 0)];
            let mut then = vec![TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(etcd_lease)),
            )];
            let mut otherwise = vec![TxnOp::get(key.as_str(), None)];
            // Python's lock excludes, and the grant is mirrored for Python,
            // in the same step.
            if let Some(keys) = &python {
                when.push(Compare::create_revision(
                    keys.id.as_str(),
                    CompareOp::Equal,
                    0,
                ));
                then.extend(Self::mirror_puts(keys, &lease, etcd_lease));
                otherwise.extend(keys.all().map(|k| TxnOp::get(k, None)));
            }
            let txn = Txn::new().when(when).and_then(then).or_else(otherwise);
            let resp = match self.client.clone().txn(txn).await {
                Ok(resp) => resp,
                Err(e) => {
                    // Unknown outcome: the grant may have been applied.
                    return match self.applied(&req.resource, etcd_lease).await {
                        Some(held) => Ok(Acquisition::Granted(held.lease)),
                        None => Err(self.engine_error(e)),
                    };
                }
            };
            if resp.succeeded() {
                let revision = resp
                    .header()
                    .map(|h| h.revision())
                    .and_then(|r| u64::try_from(r).ok())
                    .ok_or_else(|| self.corrupt("transaction without revision"))?;
                return Ok(Acquisition::Granted(Lease {
                    // The put created the key at this revision.
                    fence: revision,
                    ..lease
                }));
            }
            self.discard(etcd_lease).await;
            let responses = resp.op_responses();
            if let Some(kv) = read_at(&responses, 0)
                && let Some(held) = self.held(&req.resource, &kv).await?
            {
                return Ok(Acquisition::contended(&req.id, held.lease));
            }
            if python.is_some()
                && let Some(held) = self
                    .python_held(&req.resource, read_python(&responses, 1))
                    .await?
            {
                return Ok(Acquisition::contended(&req.id, held.lease));
            }
            // The holder vanished between the transaction and the lease
            // lookup: the resource is free now, try again.
        }
        Err(self.contended("acquisition", &req.resource))
    }

    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        let key = self.lock_key(resource);
        for _ in 0..MAX_ROUNDS {
            let Some(held) = self.current_held(resource).await? else {
                return Ok(false);
            };
            if &held.lease.id != id {
                return Ok(false);
            }
            let mut then = vec![TxnOp::delete(key.as_str(), None)];
            if let Some(keys) = self.python_keys(resource) {
                then.push(Self::unmirror(&keys, held.etcd_lease));
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    held.mod_revision,
                )])
                .and_then(then);
            let resp = self
                .client
                .clone()
                .txn(txn)
                .await
                .map_err(|e| self.engine_error(e))?;
            if resp.succeeded() {
                self.discard(held.etcd_lease).await;
                return Ok(true);
            }
            // Renewed or replaced in between: look again.
        }
        Err(self.contended("release", resource))
    }

    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        let key = self.lock_key(resource);
        for _ in 0..MAX_ROUNDS {
            let held = match self.current_held(resource).await? {
                Some(held) if &held.lease.id == id => held,
                _ => return Err(self.not_current(resource, id).await),
            };
            let renewed_at = SystemTime::now();
            let (etcd_lease, granted_ttl) = self.grant(ttl).await?;
            let value = codec::encode_lock(
                id,
                &held.lease.principal,
                &held.lease.reason,
                held.lease.acquired_at,
                ttl,
            )
            .map_err(|e| BackendError::internal(&self.name, e))?;
            let mut then = vec![TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(etcd_lease)),
            )];
            if let Some(keys) = self.python_keys(resource) {
                // The mirror moves to the new etcd lease with the lock key,
                // or is written again when it went missing, unless Python
                // holds the resource now (its keys are on its own lease).
                let mirror = Self::mirror_puts(&keys, &held.lease, etcd_lease);
                then.push(TxnOp::txn(
                    Txn::new()
                        .when([Compare::lease(
                            keys.id.as_str(),
                            CompareOp::Equal,
                            held.etcd_lease,
                        )])
                        .and_then(mirror.clone())
                        .or_else([TxnOp::txn(
                            Txn::new()
                                .when([Compare::create_revision(
                                    keys.id.as_str(),
                                    CompareOp::Equal,
                                    0,
                                )])
                                .and_then(mirror),
                        )]),
                ));
            }
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, held.mod_revision),
                    Compare::lease(key.as_str(), CompareOp::Equal, held.etcd_lease),
                ])
                .and_then(then);
            let resp = match self.client.clone().txn(txn).await {
                Ok(resp) => resp,
                Err(e) => {
                    // Unknown outcome: if the key moved to the new lease,
                    // revoking that lease would delete the holder's key.
                    return match self.applied(resource, etcd_lease).await {
                        Some(renewed) => {
                            self.discard(held.etcd_lease).await;
                            Ok(renewed.lease)
                        }
                        None => Err(self.engine_error(e)),
                    };
                }
            };
            if resp.succeeded() {
                // The key now lives on the new lease; the old one holds nothing.
                self.discard(held.etcd_lease).await;
                return Ok(Lease {
                    expires_at: renewed_at + granted_ttl,
                    ttl: Some(ttl),
                    ..held.lease
                });
            }
            self.discard(etcd_lease).await;
        }
        Err(self.contended("renewal", resource))
    }

    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        if let Some(held) = self.current_held(resource).await? {
            return Ok(Some(held.lease));
        }
        Ok(self.python_current(resource).await?.map(|held| held.lease))
    }

    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        let (lock, evicted) = self.read(resource).await?;
        if let Some(kv) = lock
            && let Some(held) = self.held(resource, &kv).await?
            && &held.lease.id == id
        {
            return Ok(LeaseStatus::Current(held.lease));
        }
        Ok(LeaseStatus::NotCurrent {
            evicted: codec::eviction_of(evicted, id),
        })
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut start: Vec<u8> = match after {
            // The smallest key strictly after `after`.
            Some(after) if after >= prefix => {
                [self.lock_prefix.as_bytes(), after.as_bytes(), b"\0"].concat()
            }
            _ => [self.lock_prefix.as_bytes(), prefix.as_bytes()].concat(),
        };
        let end = prefix_end(&[self.lock_prefix.as_bytes(), prefix.as_bytes()].concat());
        let batch = i64::try_from(limit).unwrap_or(i64::MAX).min(1_000);
        let mut leases = Vec::new();
        // Each round moves `start` past the keys it read or ends, so the
        // loop ends; the daemon's call timeout bounds its time.
        loop {
            if start >= end {
                return Ok(leases);
            }
            let resp = self
                .client
                .clone()
                .get(
                    start.clone(),
                    Some(GetOptions::new().with_range(end.clone()).with_limit(batch)),
                )
                .await
                .map_err(|e| self.engine_error(e))?;
            let kvs = resp.kvs();
            // A loop, not a closure, so the futures' borrows stay simple.
            let mut lookups = Vec::with_capacity(kvs.len());
            for kv in kvs {
                lookups.push(self.held_key(kv));
            }
            let found: Vec<Option<Held>> = futures::stream::iter(lookups)
                .buffered(LIST_CONCURRENCY)
                .try_collect()
                .await?;
            for held in found.into_iter().flatten() {
                if leases.len() == limit {
                    return Ok(leases);
                }
                leases.push(held.lease);
            }
            match kvs.last() {
                Some(last) if resp.more() && leases.len() < limit => {
                    start = [last.key(), b"\0"].concat();
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
        let key = self.lock_key(resource);
        for _ in 0..MAX_ROUNDS {
            let Some(held) = self.current_held(resource).await? else {
                return self.force_release_python(resource).await;
            };
            let record = codec::encode_eviction(&held.lease.id, actor, reason)
                .map_err(|e| BackendError::internal(&self.name, e))?;
            let mut then = vec![
                TxnOp::put(self.evicted_key(resource), record, None),
                TxnOp::delete(key.as_str(), None),
            ];
            if let Some(keys) = self.python_keys(resource) {
                then.push(Self::unmirror(&keys, held.etcd_lease));
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    held.mod_revision,
                )])
                .and_then(then);
            let resp = self
                .client
                .clone()
                .txn(txn)
                .await
                .map_err(|e| self.engine_error(e))?;
            if resp.succeeded() {
                self.discard(held.etcd_lease).await;
                return Ok(Some(held.lease));
            }
        }
        Err(self.contended("force-release", resource))
    }

    async fn book(&self, resource: &str) -> Result<Option<Book>> {
        let resp = self
            .client
            .clone()
            .get(self.book_key(resource), None)
            .await
            .map_err(|e| self.engine_error(e))?;
        resp.kvs().first().map(|kv| self.book_of(kv)).transpose()
    }

    async fn write_book(&self, resource: &str, expected: u64, body: &[u8]) -> Result<bool> {
        let key = self.book_key(resource);
        let unchanged = if expected == 0 {
            // No book yet: the key was never created.
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
        } else {
            let Ok(revision) = i64::try_from(expected) else {
                // No revision etcd ever gave: not the book's version.
                return Ok(false);
            };
            Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)
        };
        let txn = Txn::new()
            .when([unchanged])
            .and_then([TxnOp::put(key.as_str(), body, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.engine_error(e))?;
        Ok(resp.succeeded())
    }

    async fn books(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Book>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut start: Vec<u8> = match after {
            // The smallest key strictly after `after`.
            Some(after) if after >= prefix => {
                [self.books_prefix.as_bytes(), after.as_bytes(), b"\0"].concat()
            }
            _ => [self.books_prefix.as_bytes(), prefix.as_bytes()].concat(),
        };
        let end = prefix_end(&[self.books_prefix.as_bytes(), prefix.as_bytes()].concat());
        let mut books = Vec::new();
        // Each round moves `start` past the keys it read or ends, so the
        // loop ends; the daemon's call timeout bounds its time.
        while start < end && books.len() < limit {
            let batch = (limit - books.len()).min(BOOKS_BATCH);
            let resp = self
                .client
                .clone()
                .get(
                    start.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_limit(i64::try_from(batch).unwrap_or(1)),
                    ),
                )
                .await
                .map_err(|e| self.engine_error(e))?;
            for kv in resp.kvs() {
                books.push(self.book_of(kv)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => start = [last.key(), b"\0"].concat(),
                _ => break,
            }
        }
        Ok(books)
    }

    async fn health(&self) -> Result<()> {
        self.client
            .clone()
            .get(
                self.lock_prefix.as_str(),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map(|_| ())
            .map_err(|e| self.engine_error(e))
    }
    async fn subscribe(&self) -> Result<Option<ChangeStream>> {
        let stream = self
            .client
            .clone()
            .watch(
                self.lock_prefix.as_str(),
                Some(WatchOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| self.engine_error(e))?;
        let prefix = self.lock_prefix.clone();
        // Every put (acquire, renew) and delete (release, force-release,
        // expiry: etcd deletes the key when its lease lapses) of a lock key.
        // The stream (which owns the watch's request side) ends on an error.
        Ok(Some(
            stream
                .take_while(|response| std::future::ready(response.is_ok()))
                .flat_map(move |response| {
                    let names: Vec<String> = response
                        .map(|r| {
                            r.events()
                                .iter()
                                .filter_map(|event| event.kv())
                                .filter_map(|kv| kv.key_str().ok())
                                .filter_map(|key| key.strip_prefix(prefix.as_str()))
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    futures::stream::iter(names)
                })
                .boxed(),
        ))
    }
}
