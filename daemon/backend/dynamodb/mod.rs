//! `type = "dynamodb"`: leases in an Amazon DynamoDB table, shared by every
//! daemon that points at it. Each operation is one or a few single-item
//! conditional writes and consistent reads.
//!
//! # Time
//!
//! DynamoDB has no clock that a condition expression can read, so expiry is
//! judged on the **daemon's clock**: every write carries the daemon's `now`
//! and the conditions compare stored expiry times against it. Replicas that
//! share a table must keep their clocks synchronised (NTP): a replica whose
//! clock runs `s` ahead sees leases lapse `s` early and can grant a resource
//! whose holder still believes its lease current. (AWS refuses requests whose
//! SigV4 signature time is more than 5 minutes off its own clock, which bounds
//! how far a working replica can drift, but seconds already matter here.)
//!
//! Each daemon therefore checks its clock against DynamoDB's on every
//! response (the `Date` header, see `clock.rs`): when it is known to be off
//! by more than `max_clock_skew` (default 1 s), the backend grants and
//! renews nothing and reports itself unavailable, saying by how much and
//! why, until the clock is fixed. Two daemons that pass the check are within
//! twice the bound of each other; leases much longer than that bound keep
//! the remaining risk small, and short TTLs on this backend deserve a
//! tighter NTP discipline than the check can enforce.
//!
//! A renewal's expiry is its daemon's `now` plus the TTL, computed before
//! the write is sent, so a write that arrives late carries an old `now`. The
//! lease item keeps the `now` of the renewal that last landed
//! (`renewed_ms`), and a renewal computed earlier than that does not apply
//! (it answers the lease as it stands): a copy of a renewal that the network
//! held back while the SDK's retry went through, landing after a newer
//! renewal, would otherwise shorten the lease under its holder.
//!
//! # Table layout
//!
//! Partition key `resource` (S), sort key `kind` (S); two items per resource,
//! and one per reservation book:
//!
//! - `kind = "lease"`: the current lease, or the last one if it expired
//!   without being released: `lease_id`, `principal`, `reason`,
//!   `acquired_ms`, `expires_ms` (milliseconds since the Unix epoch, daemon
//!   clock), `fence`, and `cleanup_at`, the table's TTL attribute (epoch
//!   seconds, one hour after expiry) so that DynamoDB eventually deletes
//!   leases nobody released. Release and force-release do not delete the
//!   item: they mark it free (`expires_ms = 0`) and keep its `fence`.
//! - `kind = "record"`: what must outlive leases and never carries a TTL:
//!   `fence`, the highest fence handed out (a counter), and the last
//!   force-release: `evicted_id`, `evicted_by`, `evicted_reason`.
//! - books: every resource's reservation book lives in one partition,
//!   `resource = "\u{1}books"` (a name no resource can have: names have no
//!   control characters), with the resource's name as `kind`: `body` (B),
//!   the lock core's encoding, opaque here; `version` (N), 1 on the first
//!   write and one more per write; `write_token`, which tells a write
//!   retried by the SDK after a lost answer from a competitor's. Books carry
//!   no TTL and are never deleted, so a version never comes back with other
//!   contents. A write is one `PutItem` on condition that the version is
//!   still the one the writer read (`attribute_not_exists(kind)` for the
//!   first); listing books under a prefix is a `Query` of that partition
//!   (sort keys come back in byte order, which is UTF-8 order). Nothing
//!   about books depends on the daemon's clock, so book calls are not
//!   refused when it is off (see "Time"); `list` leaves the books'
//!   partition out.
//!
//! # Fences
//!
//! An acquisition first takes a number from the record item's counter
//! (`ADD fence 1`, returning the new value), then puts the lease item on
//! condition that the resource is free **and** that any lease item there
//! carries a smaller fence. A counter value taken before a competitor's
//! newer one therefore can never overwrite that competitor's lease item,
//! even after it expired: the acquirer takes a fresh number and tries again.
//! This is why a release keeps the lease item and its fence: had it deleted
//! the item, a number taken before a competitor's newer one could be put
//! after that competitor released, granting a lower fence after a higher one
//! (the mutual-exclusion checker caught exactly that). DynamoDB's TTL
//! cleanup deleting the item an hour later loses nothing, because the
//! counter lives on the record item, which is never deleted.
//! Should the counter ever fall behind a lease item's fence (the record item
//! deleted by hand), the next acquirer raises it above that fence: fences
//! survive the loss of either item, though not of both.
//!
//! The one way a stale number could land on a deleted item is a put applied
//! after a newer lease was granted, expired *and* cleaned up. Numbers taken
//! more than a minute before the put is sent are discarded, AWS rejects a
//! request more than 5 minutes after it was signed, and the TTL attribute is
//! set an hour after expiry, so the cleanup always comes far too late for
//! that. (A transaction over both items would close even this window, at
//! twice the write cost, with conflicts between concurrent acquirers to
//! retry, and without atomicity on moto, the emulator the tests use.)
//!
//! # Python stormlock
//!
//! With `python_stormlock = true`, Python stormlock 0.4.1's table
//! (`python_table`, partition key `resource` only, one item per held lock:
//! `principal`, `lease`, `created`, `expires`) is consulted and written
//! too. Acquire reads it first (a live Python item is the holder), then
//! puts the lease item and the lease's mirror in Python's table in one
//! transaction (`TransactWriteItems`), the mirror on condition that Python's
//! item is absent, lapsed (`expires <= now`) or a mirror of this deployment
//! (its `stormlockd` attribute names this table): the daemon and a Python
//! client can never both win. Renew rewrites the mirror after the lease
//! unless Python holds the item then; release deletes it after the lease,
//! and force-release after the broken lease, or deletes a live Python lock's
//! item when no Stormlock lease holds the resource (and a lapsed one's,
//! which Python would take as held for ever, see below). `current` reports
//! a live Python lock as held; `list` shows Stormlock's leases only.
//!
//! Python stormlock's own condition is only `attribute_not_exists(resource)`
//! (its `or` of two conditions is Python's, not DynamoDB's): a Python
//! client never takes over an item, live or lapsed, that was not deleted.
//! So a Python lock that lapsed without being released keeps Python clients
//! out until the item is deleted (this backend counts it as lapsed and
//! overwrites it), and so does the mirror of a lease that lapsed here
//! without a release.
//!
//! # Costs
//!
//! Acquire: one consistent read, plus two writes when the resource is free.
//! Release, renew: one write. Current: one read; status: one query.
//! Force-release: one read and a two-item transaction. `List` scans the whole
//! table (filtering on the server, sorting here): fine for the hundreds to
//! thousands of locks operators hold, but its cost grows with the table
//! (books included). A book: one read, or one write; listing books queries
//! their partition, in pages of at most 1 MB.
//!
//! # Permissions
//!
//! The daemon needs `dynamodb:GetItem`, `PutItem`, `UpdateItem`,
//! `DeleteItem`, `Query`, `Scan` and `DescribeTable` on the table; with
//! `create_table = true` also `CreateTable`, `DescribeTimeToLive` and
//! `UpdateTimeToLive`; with `python_stormlock = true` also `GetItem`,
//! `PutItem`, `DeleteItem` and `DescribeTable` on `python_table`.
//! Credentials and region come from the usual AWS chain (environment,
//! profile files, SSO, ECS task role, EC2 instance metadata).
//!
//! # Configuration
//!
//! ```toml
//! [backends.shared]
//! type = "dynamodb"
//! table = "stormlock"        # default
//! region = "eu-west-1"       # default: the AWS chain
//! # endpoint = "https://dynamo.internal:8443"   # a DynamoDB-compatible service
//! # ca_file = "/etc/stormlock/dynamo-ca.pem"    # its private CA (https:// only)
//! create_table = false       # default: true
//! timeout = "2s"             # per request, default
//! max_clock_skew = "1s"      # default; at least 1s (Date has whole seconds)
//! python_stormlock = false   # true while migrating from Python stormlock
//! # python_table = "stormlock"   # Python stormlock's table (never `table`)
//! ```
//!
//! With `create_table = false`, create the table beforehand:
//!
//! ```text
//! aws dynamodb create-table --table-name stormlock --billing-mode PAY_PER_REQUEST \
//!   --attribute-definitions AttributeName=resource,AttributeType=S AttributeName=kind,AttributeType=S \
//!   --key-schema AttributeName=resource,KeyType=HASH AttributeName=kind,KeyType=RANGE
//! aws dynamodb update-time-to-live --table-name stormlock \
//!   --time-to-live-specification Enabled=true,AttributeName=cleanup_at
//! ```
//!
//! # Layout
//!
//! This file holds the client and the operations; `config.rs` the table of
//! settings and its checks; `table.rs` checking and creating the DynamoDB
//! table; `codec.rs` the items' attributes, written and read back;
//! `clock.rs` the check of this daemon's clock against DynamoDB's.

mod clock;
mod codec;
mod config;
mod table;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Region;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TableStatus,
    TransactWriteItem, Update,
};

use super::{Backend, BackendError, Book, Purpose, Result, Schema};
use crate::lease::{AcquireRequest, Acquisition, Eviction, Lease, LeaseId, LeaseStatus};
use codec::{
    BOOKS, CLEANUP_AT, EVICTED_BY, EVICTED_ID, EVICTED_REASON, EXPIRES_MS, FENCE, Item, KIND,
    LEASE, LEASE_ID, PY_EXPIRES, PY_LEASE, PY_MIRROR_OF, RECORD, RELEASE_TOKEN, RELEASED_MS,
    RENEWED_MS, RESOURCE, TTL_MS, VERSION, cleanup_after, key, millis, millis_of, number,
    python_key,
};
pub use config::DynamodbConfig;

/// A fence number taken longer ago than this is not used: its put could land
/// too late (see "Fences" in the module docs).
const FENCE_MAX_AGE: Duration = Duration::from_secs(60);

/// Attempts of an acquisition or force-release that keeps losing races (a
/// holder that vanished between the write and the read, a stale fence
/// number) before giving up with `Unavailable`.
const ATTEMPTS: u32 = 8;

/// The condition of the put that grants a lease item: the resource is free,
/// and any lease item there carries a smaller fence (see "Fences").
const GRANT_CONDITION: &str =
    "(attribute_not_exists(#r) OR #e <= :now) AND (attribute_not_exists(#f) OR #f < :fence)";

/// The condition on which a mirror may be written over Python's item: it
/// is absent, lapsed, or a mirror of this deployment (`#m` = `:table`).
const MIRROR_CONDITION: &str = "attribute_not_exists(#r) OR #e <= :now_s OR #m = :table";

/// Books asked for per `Query` page (DynamoDB also ends a page at 1 MB).
const BOOKS_PAGE: usize = 100;

/// A DynamoDB table of leases.
pub struct DynamodbBackend {
    name: String,
    table: String,
    client: Client,
    /// This daemon's clock against DynamoDB's.
    clock: std::sync::Arc<clock::ClockCheck>,
    /// `python_stormlock`: Python stormlock's table, whose locks are
    /// honoured and written; `None` when the mode is off.
    python_table: Option<String>,
}

/// An HTTPS client like [`crate::tls::aws_https_client`] (rustls on ring,
/// proxy settings from the environment) that trusts the certificate
/// authorities in `ca_file` instead of the system roots. The file is checked
/// here: the SDK's client would panic on a certificate it cannot parse.
fn https_client_trusting(
    name: &str,
    ca_file: &std::path::Path,
) -> Result<aws_sdk_dynamodb::config::SharedHttpClient> {
    use aws_smithy_http_client::tls::{
        Provider, TlsContext, TrustStore, rustls_provider::CryptoMode,
    };
    use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let refuse =
        |why: String| BackendError::config(name, format!("ca_file {}: {why}", ca_file.display()));
    let pem = std::fs::read(ca_file).map_err(|e| refuse(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| refuse(format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(refuse("no PEM certificate in the file".to_string()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| refuse(format!("not a usable CA certificate: {e}")))?;
    }
    let context = TlsContext::builder()
        .with_trust_store(
            TrustStore::empty()
                .with_native_roots(false)
                .with_pem_certificate(pem),
        )
        .build()
        .map_err(|e| refuse(format!("TLS setup: {e}")))?;
    Ok(
        Builder::new().build_with_connector_fn(move |settings, runtime_components| {
            let mut connector = ConnectorBuilder::default()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .tls_context(context.clone());
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = runtime_components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector.set_proxy_config(Some(ProxyConfig::from_env()));
            connector.build()
        }),
    )
}

impl DynamodbBackend {
    /// Connects with credentials and region from the usual AWS chain, checks
    /// the table (creating it when allowed) and returns the backend.
    pub async fn connect(name: &str, config: &DynamodbConfig) -> Result<Self> {
        Self::open(name, config, Purpose::Serve)
            .await
            .map(|(backend, _)| backend)
    }

    /// Like [`DynamodbBackend::connect`], for `purpose`: to check, it
    /// creates nothing, and a table it would create is reported (the
    /// `String`) rather than refused.
    pub async fn open(
        name: &str,
        config: &DynamodbConfig,
        purpose: Purpose,
    ) -> Result<(Self, Option<String>)> {
        Self::connect_for(
            name,
            config,
            aws_config::defaults(BehaviorVersion::latest()),
            purpose,
        )
        .await
    }

    /// Like [`DynamodbBackend::connect`], with `loader` as the base of the AWS
    /// configuration: callers can set credentials or other SDK settings
    /// explicitly (tests against an emulator use static credentials). The
    /// settings of `config` are applied on top.
    pub async fn connect_with(
        name: &str,
        config: &DynamodbConfig,
        loader: aws_config::ConfigLoader,
    ) -> Result<Self> {
        Self::connect_for(name, config, loader, Purpose::Serve)
            .await
            .map(|(backend, _)| backend)
    }

    /// [`DynamodbBackend::connect_with`] for `purpose` (see
    /// [`DynamodbBackend::open`]).
    pub async fn connect_for(
        name: &str,
        config: &DynamodbConfig,
        loader: aws_config::ConfigLoader,
        purpose: Purpose,
    ) -> Result<(Self, Option<String>)> {
        config
            .validate()
            .map_err(|message| BackendError::config(name, message))?;
        let mut loader = loader
            .http_client(crate::tls::aws_https_client())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_timeout(config.timeout)
                    .build(),
            )
            // The default first backoff (up to 1 s) would eat most of a call's
            // budget; retry sooner and let the operation timeout bound it.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(50))
                    .with_max_backoff(Duration::from_millis(500)),
            );
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(BackendError::config(
                name,
                "region is not set and none was found in the AWS environment (AWS_REGION, profile): set region",
            ));
        }
        let clock = clock::ClockCheck::new(config.max_clock_skew);
        let mut builder =
            aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(clock.interceptor());
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        // `validate` allows a `ca_file` only with an https:// endpoint. Set
        // on this client only: the credential providers built by `loader`
        // keep the system roots for STS, SSO and instance metadata.
        if let Some(ca_file) = &config.ca_file {
            builder = builder.http_client(https_client_trusting(name, ca_file)?);
        }
        let python_table = config
            .python_table()
            .map_err(|message| BackendError::config(name, message))?
            .map(str::to_string);
        let backend = Self {
            name: name.to_string(),
            table: config.table.clone(),
            client: Client::from_conf(builder.build()),
            clock,
            python_table,
        };
        let pending = backend
            .prepare_table(Schema::new(config.create_table, purpose))
            .await?;
        backend.check_python_table().await?;
        Ok((backend, pending))
    }

    /// Refuses (unavailable, with the reason) while this daemon's clock is
    /// off DynamoDB's by more than `max_clock_skew`: its expiry judgements
    /// would be wrong.
    fn clock_in_sync(&self) -> Result<()> {
        self.clock
            .verdict()
            .map_err(|why| BackendError::unavailable(&self.name, why))
    }

    /// Maps an SDK failure to our errors: a malformed request is our bug,
    /// anything else (network, throttling, credentials, missing table) makes
    /// the backend unavailable until it is fixed.
    fn sdk_error<E, R>(&self, op: &str, err: SdkError<E, R>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let message = format!(
            "{op} on table {:?}: {}",
            self.table,
            DisplayErrorContext(&err)
        );
        match error_code(&err) {
            Some("ValidationException" | "SerializationException") => {
                BackendError::internal(&self.name, message)
            }
            _ => BackendError::unavailable(&self.name, message),
        }
    }

    fn corrupt(&self, resource: &str, what: impl std::fmt::Display) -> BackendError {
        BackendError::internal(
            &self.name,
            format!("item of {resource:?} in table {:?}: {what}", self.table),
        )
    }

    /// An item that does not decode, reported as this table's.
    fn bad_item(&self, corrupt: codec::Corrupt) -> BackendError {
        self.corrupt(&corrupt.resource, corrupt.what)
    }

    /// [`codec::live`], a bad item reported as this table's.
    fn live(&self, item: &Item, now_ms: u64) -> Result<Option<Lease>> {
        codec::live(item, now_ms).map_err(|c| self.bad_item(c))
    }

    /// [`codec::lease_of`], a bad item reported as this table's.
    fn lease_of(&self, item: &Item) -> Result<Lease> {
        codec::lease_of(item).map_err(|c| self.bad_item(c))
    }

    /// [`codec::eviction_of`], a bad item reported as this table's.
    fn eviction_of(&self, record: Option<&Item>, id: &LeaseId) -> Result<Option<Eviction>> {
        codec::eviction_of(record, id).map_err(|c| self.bad_item(c))
    }

    /// [`codec::book_of`], a bad item reported as this table's.
    fn book_of(&self, item: &Item) -> Result<Book> {
        codec::book_of(item).map_err(|c| self.bad_item(c))
    }

    /// [`codec::number_of`], a bad item reported as this table's.
    fn number(&self, item: &Item, attr: &str) -> Result<u64> {
        codec::number_of(item, attr).map_err(|c| self.bad_item(c))
    }

    /// Reads one item of `resource` with a consistent read.
    async fn get(&self, resource: &str, kind: &str) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(resource, kind)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk_error("GetItem", e))?;
        Ok(out.item().cloned())
    }

    /// The lease of `resource` if it is live at `now_ms`.
    async fn live_lease(&self, resource: &str, now_ms: u64) -> Result<Option<Lease>> {
        match self.get(resource, LEASE).await? {
            Some(item) => self.live(&item, now_ms),
            None => Ok(None),
        }
    }

    /// The item of `resource` in Python stormlock's `table`, read
    /// consistently.
    async fn python_item(&self, table: &str, resource: &str) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(python_key(resource)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk_error("GetItem", e))?;
        Ok(out.item().cloned())
    }

    /// [`codec::python_lock`], a bad item reported as Python's `table`'s.
    fn python_lock(&self, table: &str, item: &Item, now_ms: u64) -> Result<Option<Lease>> {
        codec::python_lock(item, now_ms, &self.table).map_err(|c| {
            BackendError::internal(
                &self.name,
                format!("item of {:?} in table {table:?}: {}", c.resource, c.what),
            )
        })
    }

    /// The Python stormlock lock on `resource` if the mode is on and one
    /// holds it at `now_ms`.
    async fn python_holder(&self, resource: &str, now_ms: u64) -> Result<Option<Lease>> {
        let Some(table) = &self.python_table else {
            return Ok(None);
        };
        match self.python_item(table, resource).await? {
            Some(item) => self.python_lock(table, &item, now_ms),
            None => Ok(None),
        }
    }

    /// Writes the mirror of `lease` over Python's item unless a Python lock
    /// that is not this deployment's mirror holds it (then it stays).
    async fn mirror(&self, table: &str, lease: &Lease, now_ms: u64) -> Result<()> {
        let written = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(codec::mirror_item(lease, &self.table)))
            .condition_expression(format!("{MIRROR_CONDITION} OR #l = :id"))
            .expression_attribute_names("#r", RESOURCE)
            .expression_attribute_names("#e", PY_EXPIRES)
            .expression_attribute_names("#m", PY_MIRROR_OF)
            .expression_attribute_names("#l", PY_LEASE)
            .expression_attribute_values(":now_s", number(now_ms / 1000))
            .expression_attribute_values(":table", AttributeValue::S(self.table.clone()))
            .expression_attribute_values(":id", AttributeValue::S(lease.id.expose().to_string()))
            .send()
            .await;
        match written {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(self.sdk_error("PutItem", e)),
        }
    }

    /// Deletes Python's item of `resource` if it is the mirror of lease `id`.
    async fn unmirror(&self, resource: &str, id: &LeaseId) -> Result<()> {
        let Some(table) = &self.python_table else {
            return Ok(());
        };
        let deleted = self
            .client
            .delete_item()
            .table_name(table)
            .set_key(Some(python_key(resource)))
            .condition_expression("#l = :id")
            .expression_attribute_names("#l", PY_LEASE)
            .expression_attribute_values(":id", AttributeValue::S(id.expose().to_string()))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(self.sdk_error("DeleteItem", e)),
        }
    }

    /// Takes the next number from the resource's fence counter, creating the
    /// record item on first use.
    async fn next_fence(&self, resource: &str) -> Result<u64> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(resource, RECORD)))
            .update_expression("ADD #f :one")
            .expression_attribute_names("#f", FENCE)
            .expression_attribute_values(":one", number(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| self.sdk_error("UpdateItem", e))?;
        let attributes = out
            .attributes()
            .ok_or_else(|| self.corrupt(resource, "fence counter update returned nothing"))?;
        self.number(attributes, FENCE)
    }

    /// One acquisition attempt: `Ok(None)` means a race was lost in a way that
    /// calls for another attempt.
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Option<Acquisition>> {
        let started = SystemTime::now();
        if let Some(holder) = self.live_lease(&req.resource, millis(started)).await? {
            return Ok(Some(Acquisition::contended(&req.id, holder)));
        }
        if let Some(holder) = self.python_holder(&req.resource, millis(started)).await? {
            return Ok(Some(Acquisition::contended(&req.id, holder)));
        }
        let fence = self.next_fence(&req.resource).await?;
        let now = SystemTime::now();
        // Also catches the wall clock jumping backwards.
        if now
            .duration_since(started)
            .map_or(true, |age| age > FENCE_MAX_AGE)
        {
            return Ok(None);
        }
        let now_ms = millis(now);
        let expires_ms = now_ms.saturating_add(millis_of(req.ttl));
        let item = codec::lease_item(req, now_ms, expires_ms, fence);
        let lease = self.lease_of(&item)?;
        if let Some(table) = &self.python_table {
            return self
                .grant_with_mirror(req, (item, lease), table, now_ms, fence)
                .await;
        }
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(GRANT_CONDITION)
            .expression_attribute_names("#r", RESOURCE)
            .expression_attribute_names("#e", EXPIRES_MS)
            .expression_attribute_names("#f", FENCE)
            .expression_attribute_values(":now", number(now_ms))
            .expression_attribute_values(":fence", number(fence))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match put {
            Ok(_) => return Ok(Some(Acquisition::Granted(lease))),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                    failed.item().cloned()
                }
                _ => return Err(self.sdk_error("PutItem", e)),
            },
        };
        // Emulators that ignore ReturnValuesOnConditionCheckFailure send no
        // item; read it instead.
        let old = match old {
            Some(item) => Some(item),
            None => self.get(&req.resource, LEASE).await?,
        };
        // A live holder is the answer. Otherwise the holder vanished since the
        // write, or the lapsed lease there carries a fence at least ours:
        // our number is stale, or the counter fell behind (its item deleted
        // by hand). Either way, try again with a number above that fence.
        let Some(old) = old else {
            return Ok(None);
        };
        if let Some(holder) = self.live(&old, now_ms)? {
            return Ok(Some(Acquisition::contended(&req.id, holder)));
        }
        self.raise_fence(&req.resource, self.number(&old, FENCE)?)
            .await?;
        Ok(None)
    }

    /// The grant of [`Self::try_acquire`] with `python_stormlock = true`:
    /// the lease item and its mirror in Python's `table`, in one
    /// transaction. `Ok(None)` calls for another attempt.
    async fn grant_with_mirror(
        &self,
        req: &AcquireRequest,
        (item, lease): (Item, Lease),
        table: &str,
        now_ms: u64,
        fence: u64,
    ) -> Result<Option<Acquisition>> {
        let internal = |e| BackendError::internal(&self.name, e);
        let grant = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(GRANT_CONDITION)
            .expression_attribute_names("#r", RESOURCE)
            .expression_attribute_names("#e", EXPIRES_MS)
            .expression_attribute_names("#f", FENCE)
            .expression_attribute_values(":now", number(now_ms))
            .expression_attribute_values(":fence", number(fence))
            .build()
            .map_err(internal)?;
        let mirror = Put::builder()
            .table_name(table)
            .set_item(Some(codec::mirror_item(&lease, &self.table)))
            .condition_expression(MIRROR_CONDITION)
            .expression_attribute_names("#r", RESOURCE)
            .expression_attribute_names("#e", PY_EXPIRES)
            .expression_attribute_names("#m", PY_MIRROR_OF)
            .expression_attribute_values(":now_s", number(now_ms / 1000))
            .expression_attribute_values(":table", AttributeValue::S(self.table.clone()))
            .build()
            .map_err(internal)?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(grant).build())
            .transact_items(TransactWriteItem::builder().put(mirror).build())
            .send()
            .await;
        match result {
            Ok(_) => return Ok(Some(Acquisition::Granted(lease))),
            // A condition failed, or another write touched an item: look
            // again at both, as the single put does.
            Err(e) if error_code(&e) == Some("TransactionCanceledException") => {}
            Err(e) => return Err(self.sdk_error("TransactWriteItems", e)),
        }
        if let Some(old) = self.get(&req.resource, LEASE).await? {
            if let Some(holder) = self.live(&old, now_ms)? {
                return Ok(Some(Acquisition::contended(&req.id, holder)));
            }
            let stale = self.number(&old, FENCE)?;
            if stale >= fence {
                self.raise_fence(&req.resource, stale).await?;
            }
        }
        if let Some(holder) = self.python_holder(&req.resource, now_ms).await? {
            return Ok(Some(Acquisition::contended(&req.id, holder)));
        }
        Ok(None)
    }

    /// Makes the resource's fence counter at least `floor`.
    async fn raise_fence(&self, resource: &str, floor: u64) -> Result<()> {
        let raised = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(resource, RECORD)))
            .update_expression("SET #f = :floor")
            .condition_expression("attribute_not_exists(#f) OR #f < :floor")
            .expression_attribute_names("#f", FENCE)
            .expression_attribute_values(":floor", number(floor))
            .send()
            .await;
        match raised {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(self.sdk_error("UpdateItem", e)),
        }
    }

    /// One force-release attempt: `Ok(None)` means the lease changed under us.
    async fn try_force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Option<Lease>>> {
        let now_ms = millis(SystemTime::now());
        let Some(lease) = self.live_lease(resource, now_ms).await? else {
            return self.force_release_python(resource, now_ms).await;
        };
        let internal = |e| BackendError::internal(&self.name, e);
        // One transaction, so the lease never ends without the record of who
        // broke it. Like a release, it keeps the item and its fence.
        let free = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(resource, LEASE)))
            .update_expression("SET #e = :released, #c = :cleanup")
            .condition_expression("#id = :id AND #e = :expires AND #e > :now")
            .expression_attribute_names("#id", LEASE_ID)
            .expression_attribute_names("#e", EXPIRES_MS)
            .expression_attribute_names("#c", CLEANUP_AT)
            .expression_attribute_values(":id", AttributeValue::S(lease.id.expose().to_string()))
            .expression_attribute_values(":expires", number(millis(lease.expires_at)))
            .expression_attribute_values(":now", number(now_ms))
            .expression_attribute_values(":released", number(RELEASED_MS))
            .expression_attribute_values(":cleanup", number(cleanup_after(now_ms)))
            .build()
            .map_err(internal)?;
        // As for a release: the token recognises this call's own
        // transaction when the SDK retried it after a lost answer.
        let token = format!("{:016x}", rand::random::<u64>());
        let record = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(resource, RECORD)))
            .update_expression("SET #ei = :id, #eb = :actor, #er = :reason, #t = :token")
            .expression_attribute_names("#ei", EVICTED_ID)
            .expression_attribute_names("#eb", EVICTED_BY)
            .expression_attribute_names("#er", EVICTED_REASON)
            .expression_attribute_names("#t", RELEASE_TOKEN)
            .expression_attribute_values(":id", AttributeValue::S(lease.id.expose().to_string()))
            .expression_attribute_values(":actor", AttributeValue::S(actor.to_string()))
            .expression_attribute_values(":reason", AttributeValue::S(reason.to_string()))
            .expression_attribute_values(":token", AttributeValue::S(token.clone()))
            .build()
            .map_err(internal)?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(free).build())
            .transact_items(TransactWriteItem::builder().update(record).build())
            .send()
            .await;
        let broken = match result {
            Ok(_) => true,
            // The lease was renewed, released or lapsed meanwhile, or another
            // write touched one of the items: look again.
            Err(e) if error_code(&e) == Some("TransactionCanceledException") => {
                let record = self.get(resource, RECORD).await?;
                record.is_some_and(|item| codec::evicted_by(&item, &lease.id, &token))
            }
            Err(e) => return Err(self.sdk_error("TransactWriteItems", e)),
        };
        if !broken {
            return Ok(None);
        }
        self.unmirror(resource, &lease.id).await?;
        Ok(Some(Some(lease)))
    }

    /// The lease item's part of [`Backend::release`].
    async fn release_lease(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        let now_ms = millis(SystemTime::now());
        // The SDK retries a write whose answer was lost; when the first
        // attempt had applied, the retry fails its condition. The token this
        // call writes with the release tells that case (our own release)
        // from a lease released or broken by someone else.
        let token = format!("{:016x}", rand::random::<u64>());
        // The item stays, marked free, so that its fence keeps stale numbers
        // out (see "Fences").
        let released = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(resource, LEASE)))
            .update_expression("SET #e = :released, #c = :cleanup, #t = :token")
            .condition_expression("#id = :id AND #e > :now")
            .expression_attribute_names("#id", LEASE_ID)
            .expression_attribute_names("#e", EXPIRES_MS)
            .expression_attribute_names("#c", CLEANUP_AT)
            .expression_attribute_names("#t", RELEASE_TOKEN)
            .expression_attribute_values(":id", AttributeValue::S(id.expose().to_string()))
            .expression_attribute_values(":now", number(now_ms))
            .expression_attribute_values(":released", number(RELEASED_MS))
            .expression_attribute_values(":cleanup", number(cleanup_after(now_ms)))
            .expression_attribute_values(":token", AttributeValue::S(token.clone()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match released {
            Ok(_) => return Ok(true),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                    failed.item().cloned()
                }
                _ => return Err(self.sdk_error("UpdateItem", e)),
            },
        };
        // Emulators that ignore ReturnValuesOnConditionCheckFailure send no
        // item; read it instead (a newer lease there reads as "not ours",
        // which is what the item says by then).
        let old = match old {
            Some(item) => Some(item),
            None => self.get(resource, LEASE).await?,
        };
        Ok(old.is_some_and(|item| codec::released_by(&item, id, &token)))
    }

    /// The lease item's part of [`Backend::renew`].
    async fn renew_lease(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        self.clock_in_sync()?;
        let now_ms = millis(SystemTime::now());
        let expires_ms = now_ms.saturating_add(millis_of(ttl));
        let cleanup_at = cleanup_after(expires_ms);
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(resource, LEASE)))
            .update_expression("SET #e = :expires, #c = :cleanup, #t = :ttl, #rn = :now")
            // A copy of an older renewal that the network held back (the SDK
            // retried it, the retry applied, and a newer renewal followed)
            // must not land over the newer one and shorten the lease: the
            // nemesis saw a release find its lease lapsed 0.9 s early.
            .condition_expression(
                "#id = :id AND #e > :now AND (attribute_not_exists(#rn) OR #rn <= :now)",
            )
            .expression_attribute_names("#id", LEASE_ID)
            .expression_attribute_names("#e", EXPIRES_MS)
            .expression_attribute_names("#c", CLEANUP_AT)
            .expression_attribute_names("#t", TTL_MS)
            .expression_attribute_names("#rn", RENEWED_MS)
            .expression_attribute_values(":ttl", number(millis_of(ttl)))
            .expression_attribute_values(":id", AttributeValue::S(id.expose().to_string()))
            .expression_attribute_values(":now", number(now_ms))
            .expression_attribute_values(":expires", number(expires_ms))
            .expression_attribute_values(":cleanup", number(cleanup_at))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match updated {
            Ok(out) => match out.attributes() {
                Some(item) => self.lease_of(item),
                None => Err(self.corrupt(resource, "renew returned no item")),
            },
            Err(e) if is_condition_failure(&e) => {
                // Still ours and current, renewed since by a renewal
                // computed later (on a daemon whose clock is a little
                // ahead): the lease as it stands is the answer.
                if let Some(lease) = self.live_lease(resource, now_ms).await?
                    && lease.id == *id
                {
                    return Ok(lease);
                }
                let record = self.get(resource, RECORD).await?;
                Err(BackendError::NotCurrent {
                    evicted: self.eviction_of(record.as_ref(), id)?,
                })
            }
            Err(e) => Err(self.sdk_error("UpdateItem", e)),
        }
    }

    /// Force-release where no Stormlock lease holds `resource`: with
    /// `python_stormlock = true`, deletes Python's item, breaking a live
    /// Python lock (returned), or clearing a lapsed item or stale mirror,
    /// which Python clients would take as held for ever. `Ok(None)`: the
    /// item changed under us.
    async fn force_release_python(
        &self,
        resource: &str,
        now_ms: u64,
    ) -> Result<Option<Option<Lease>>> {
        let Some(table) = &self.python_table else {
            return Ok(Some(None));
        };
        let Some(item) = self.python_item(table, resource).await? else {
            return Ok(Some(None));
        };
        let holder = self.python_lock(table, &item, now_ms)?;
        // Exactly the item read: a new Python lock is left alone.
        let mut delete = self
            .client
            .delete_item()
            .table_name(table)
            .set_key(Some(python_key(resource)));
        let mut condition = Vec::new();
        for (i, (name, value)) in item.iter().enumerate() {
            condition.push(format!("#a{i} = :v{i}"));
            delete = delete
                .expression_attribute_names(format!("#a{i}"), name)
                .expression_attribute_values(format!(":v{i}"), value.clone());
        }
        let deleted = delete
            .condition_expression(condition.join(" AND "))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(Some(holder)),
            Err(e) if is_condition_failure(&e) => Ok(None),
            Err(e) => Err(self.sdk_error("DeleteItem", e)),
        }
    }
}

#[async_trait]
impl Backend for DynamodbBackend {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
        self.clock_in_sync()?;
        for attempt in 0..ATTEMPTS {
            if let Some(answer) = self.try_acquire(req).await? {
                return Ok(answer);
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
        Err(BackendError::unavailable(
            &self.name,
            format!(
                "acquire of {:?} kept losing races after {ATTEMPTS} attempts",
                req.resource
            ),
        ))
    }

    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        let released = self.release_lease(resource, id).await?;
        // After the lease, so that Python never finds the resource free
        // while the lease is current; a lapsed lease's mirror goes too
        // (Python would never take it over).
        self.unmirror(resource, id).await?;
        Ok(released)
    }

    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        let renewed = self.renew_lease(resource, id, ttl).await?;
        if let Some(table) = &self.python_table {
            // Extends the mirror (a moment after the lease, never before),
            // or writes it again if it went missing, unless a Python client
            // holds the resource now.
            self.mirror(table, &renewed, millis(SystemTime::now()))
                .await?;
        }
        Ok(renewed)
    }

    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        let now_ms = millis(SystemTime::now());
        if let Some(lease) = self.live_lease(resource, now_ms).await? {
            return Ok(Some(lease));
        }
        self.python_holder(resource, now_ms).await
    }

    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        let now_ms = millis(SystemTime::now());
        // Both items of the resource in one consistent query.
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#r = :r")
            .expression_attribute_names("#r", RESOURCE)
            .expression_attribute_values(":r", AttributeValue::S(resource.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk_error("Query", e))?;
        let find = |kind: &str| {
            out.items()
                .iter()
                .find(|item| matches!(item.get(KIND), Some(AttributeValue::S(k)) if k == kind))
        };
        if let Some(item) = find(LEASE)
            && let Some(lease) = self.live(item, now_ms)?
            && &lease.id == id
        {
            return Ok(LeaseStatus::Current(lease));
        }
        Ok(LeaseStatus::NotCurrent {
            evicted: self.eviction_of(find(RECORD), id)?,
        })
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now_ms = millis(SystemTime::now());
        // DynamoDB has no ordered index over all partition keys, so this scans
        // the table, filtering on the server and sorting here (see "Costs").
        // A book whose resource is named "lease" has that `kind` too.
        let mut filter = "#k = :lease AND #e > :now AND #r <> :books".to_string();
        if !prefix.is_empty() {
            filter.push_str(" AND begins_with(#r, :prefix)");
        }
        if after.is_some() {
            filter.push_str(" AND #r > :after");
        }
        let mut leases = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut scan = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression(&filter)
                .expression_attribute_names("#k", KIND)
                .expression_attribute_names("#e", EXPIRES_MS)
                .expression_attribute_names("#r", RESOURCE)
                .expression_attribute_values(":lease", AttributeValue::S(LEASE.to_string()))
                .expression_attribute_values(":now", number(now_ms))
                .expression_attribute_values(":books", AttributeValue::S(BOOKS.to_string()))
                .set_exclusive_start_key(start.take());
            if !prefix.is_empty() {
                scan = scan
                    .expression_attribute_values(":prefix", AttributeValue::S(prefix.to_string()));
            }
            if let Some(after) = after {
                scan = scan
                    .expression_attribute_values(":after", AttributeValue::S(after.to_string()));
            }
            let out = scan.send().await.map_err(|e| self.sdk_error("Scan", e))?;
            for item in out.items() {
                leases.push(self.lease_of(item)?);
            }
            // Keep memory bounded by what the caller asked for.
            if leases.len() > limit.saturating_mul(2).max(1024) {
                leases.sort_unstable_by(|a, b| a.resource.cmp(&b.resource));
                leases.truncate(limit);
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        // Rust orders strings by UTF-8 bytes, like DynamoDB's `>` above.
        leases.sort_unstable_by(|a, b| a.resource.cmp(&b.resource));
        leases.truncate(limit);
        Ok(leases)
    }

    async fn force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Lease>> {
        for attempt in 0..ATTEMPTS {
            if let Some(answer) = self.try_force_release(resource, actor, reason).await? {
                return Ok(answer);
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
        Err(BackendError::unavailable(
            &self.name,
            format!("force-release of {resource:?} kept losing races after {ATTEMPTS} attempts"),
        ))
    }

    // Books are not judged by the clock: no `clock_in_sync` here.

    async fn book(&self, resource: &str) -> Result<Option<Book>> {
        match self.get(BOOKS, resource).await? {
            Some(item) => self.book_of(&item).map(Some),
            None => Ok(None),
        }
    }

    async fn write_book(&self, resource: &str, expected: u64, body: &[u8]) -> Result<bool> {
        let Some(version) = expected.checked_add(1) else {
            // No version this backend ever wrote.
            return Ok(false);
        };
        // The SDK retries a write whose answer was lost; when the first
        // attempt had applied, the retry fails its condition. The token
        // tells that case (our own write) from a competitor's.
        let token = format!("{:016x}", rand::random::<u64>());
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(codec::book_item(resource, body, version, &token)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let put = if expected == 0 {
            put.condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", KIND)
        } else {
            put.condition_expression("#v = :expected")
                .expression_attribute_names("#v", VERSION)
                .expression_attribute_values(":expected", number(expected))
        };
        let old = match put.send().await {
            Ok(_) => return Ok(true),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                    failed.item().cloned()
                }
                _ => return Err(self.sdk_error("PutItem", e)),
            },
        };
        // Emulators that ignore ReturnValuesOnConditionCheckFailure send no
        // item; read it instead (a later write there reads as "not ours",
        // which is what the book says by then).
        let old = match old {
            Some(item) => Some(item),
            None => self.get(BOOKS, resource).await?,
        };
        Ok(old.is_some_and(|item| codec::written_by(&item, version, &token)))
    }

    async fn books(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Book>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One condition on the sort key at most: past `after` when it lies
        // in or beyond the prefix's names (the names past it that start
        // with the prefix come first, so the first that does not ends the
        // listing), else the prefix itself. Empty strings are no key
        // values: without a prefix, the whole partition.
        let (condition, bound) = match after {
            Some(after) if !after.is_empty() && after >= prefix => {
                ("#r = :books AND #k > :bound", Some(after))
            }
            _ if prefix.is_empty() => ("#r = :books", None),
            _ => ("#r = :books AND begins_with(#k, :bound)", Some(prefix)),
        };
        let mut books = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = (limit - books.len()).min(BOOKS_PAGE);
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(condition)
                .expression_attribute_names("#r", RESOURCE)
                .expression_attribute_values(":books", AttributeValue::S(BOOKS.to_string()))
                .consistent_read(true)
                .limit(i32::try_from(page).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            if let Some(bound) = bound {
                query = query
                    .expression_attribute_names("#k", KIND)
                    .expression_attribute_values(":bound", AttributeValue::S(bound.to_string()));
            }
            let out = query.send().await.map_err(|e| self.sdk_error("Query", e))?;
            for item in out.items() {
                let book = self.book_of(item)?;
                if !book.resource.starts_with(prefix) {
                    return Ok(books);
                }
                books.push(book);
                if books.len() == limit {
                    return Ok(books);
                }
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(books),
            }
        }
    }

    async fn health(&self) -> Result<()> {
        let table = self.describe_table().await?.ok_or_else(|| {
            BackendError::unavailable(&self.name, format!("table {:?} does not exist", self.table))
        })?;
        match table.table_status() {
            Some(TableStatus::Active | TableStatus::Updating) => self.clock_in_sync(),
            other => Err(BackendError::unavailable(
                &self.name,
                format!("table {:?} is not usable (status {other:?})", self.table),
            )),
        }
    }
}

/// A short pause between attempts that lost a race, so that competitors
/// spread out.
fn backoff(attempt: u32) -> Duration {
    let jitter = u64::from(rand::random::<u8>() % 20);
    Duration::from_millis(10 * u64::from(attempt + 1) + jitter)
}

fn error_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    err.as_service_error().and_then(|e| e.code())
}

fn is_condition_failure<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    error_code(err) == Some("ConditionalCheckFailedException")
}
