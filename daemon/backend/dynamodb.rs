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
//! # Table layout
//!
//! Partition key `resource` (S), sort key `kind` (S); two items per resource:
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
//! # Costs
//!
//! Acquire: one consistent read, plus two writes when the resource is free.
//! Release, renew: one write. Current: one read; status: one query.
//! Force-release: one read and a two-item transaction. `List` scans the whole
//! table (filtering on the server, sorting here): fine for the hundreds to
//! thousands of locks operators hold, but its cost grows with the table.
//!
//! # Permissions
//!
//! The daemon needs `dynamodb:GetItem`, `PutItem`, `UpdateItem`,
//! `DeleteItem`, `Query`, `Scan` and `DescribeTable` on the table; with
//! `create_table = true` also `CreateTable`, `DescribeTimeToLive` and
//! `UpdateTimeToLive`. Credentials and region come from the usual AWS chain
//! (environment, profile files, SSO, ECS task role, EC2 instance metadata).
//!
//! # Configuration
//!
//! ```toml
//! [backends.shared]
//! type = "dynamodb"
//! table = "stormlock"        # default
//! region = "eu-west-1"       # default: the AWS chain
//! create_table = false       # default: true
//! timeout = "2s"             # per request, default
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

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Region;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus, TransactWriteItem, Update,
};
use serde::Deserialize;

use super::{Backend, BackendError, Result};
use crate::lease::{AcquireRequest, Acquisition, Eviction, Lease, LeaseId, LeaseStatus};

/// `[backends.NAME]` with `type = "dynamodb"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamodbConfig {
    /// Name of the table holding the leases (3–255 characters of
    /// `A-Z a-z 0-9 _ - .`). Default: `stormlock`.
    #[serde(default = "default_table")]
    pub table: String,
    /// AWS region, such as `eu-west-1`. Default: the AWS chain (`AWS_REGION`,
    /// the profile, instance metadata).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL replacing AWS's, for local emulators such as moto or
    /// DynamoDB Local (`http://127.0.0.1:8000`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Create the table (on-demand billing) when it is missing, wait until it
    /// is usable, and enable TTL cleanup on `cleanup_at`. Default: true.
    /// Without it the table must exist with the layout described in the
    /// module documentation.
    #[serde(default = "default_create_table")]
    pub create_table: bool,
    /// How long to wait for a TCP/TLS connection to DynamoDB. Default: `2s`.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// How long one DynamoDB request may take, retries included, before the
    /// backend reports itself unavailable. A lock operation makes one to
    /// three requests (more when it loses a race). Default: `2s`.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub timeout: Duration,
}

fn default_table() -> String {
    "stormlock".to_string()
}

fn default_create_table() -> bool {
    true
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl Default for DynamodbConfig {
    fn default() -> Self {
        Self {
            table: default_table(),
            region: None,
            endpoint: None,
            create_table: default_create_table(),
            connect_timeout: default_connect_timeout(),
            timeout: default_timeout(),
        }
    }
}

impl DynamodbConfig {
    /// Checks every key; the message names the key and what is wrong.
    fn validate(&self) -> std::result::Result<(), String> {
        let table_ok = (3..=255).contains(&self.table.len())
            && self
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !table_ok {
            return Err(format!(
                "table {:?} is not a valid DynamoDB table name: use 3 to 255 characters from A-Z, a-z, 0-9, '_', '-' and '.'",
                self.table
            ));
        }
        if let Some(region) = &self.region {
            let region_ok = !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !region_ok {
                return Err(format!(
                    "region {region:?} is not an AWS region name (like \"eu-west-1\")"
                ));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(|host| host.is_empty() || host.contains(char::is_whitespace)) {
                return Err(format!(
                    "endpoint {endpoint:?} is not an http:// or https:// URL"
                ));
            }
        }
        if self.connect_timeout.is_zero() {
            return Err("connect_timeout must be at least one second".to_string());
        }
        if self.timeout.is_zero() {
            return Err("timeout must be at least one second".to_string());
        }
        Ok(())
    }
}

/// Attribute names and key values of the table layout (module docs).
const RESOURCE: &str = "resource";
const KIND: &str = "kind";
const LEASE: &str = "lease";
const RECORD: &str = "record";
const LEASE_ID: &str = "lease_id";
const PRINCIPAL: &str = "principal";
const REASON: &str = "reason";
const ACQUIRED_MS: &str = "acquired_ms";
const EXPIRES_MS: &str = "expires_ms";
const FENCE: &str = "fence";
const CLEANUP_AT: &str = "cleanup_at";
const EVICTED_ID: &str = "evicted_id";
const EVICTED_BY: &str = "evicted_by";
const EVICTED_REASON: &str = "evicted_reason";

/// How long after expiry DynamoDB may delete a lease item. Expired leases are
/// ignored anyway; the delay keeps the cleanup far behind any in-flight
/// acquisition (see "Fences" in the module docs).
const CLEANUP_GRACE: Duration = Duration::from_secs(3600);

/// `expires_ms` of a released or force-released lease item: free on every
/// daemon's clock, while the item keeps its fence.
const RELEASED_MS: u64 = 0;

/// When DynamoDB may delete a lease item that lapsed or was freed at `ms`.
fn cleanup_after(ms: u64) -> u64 {
    ms.div_ceil(1000).saturating_add(CLEANUP_GRACE.as_secs())
}

/// A fence number taken longer ago than this is not used: its put could land
/// too late (see "Fences" in the module docs).
const FENCE_MAX_AGE: Duration = Duration::from_secs(60);

/// Attempts of an acquisition or force-release that keeps losing races (a
/// holder that vanished between the write and the read, a stale fence
/// number) before giving up with `Unavailable`.
const ATTEMPTS: u32 = 8;

/// How long to wait for a table being created to become usable.
const TABLE_READY_WAIT: Duration = Duration::from_secs(60);

type Item = HashMap<String, AttributeValue>;

/// A DynamoDB table of leases.
pub struct DynamodbBackend {
    name: String,
    table: String,
    client: Client,
}

impl DynamodbBackend {
    /// Connects with credentials and region from the usual AWS chain, checks
    /// the table (creating it when allowed) and returns the backend.
    pub async fn connect(name: &str, config: &DynamodbConfig) -> Result<Self> {
        Self::connect_with(
            name,
            config,
            aws_config::defaults(BehaviorVersion::latest()),
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
        config
            .validate()
            .map_err(|message| BackendError::config(name, message))?;
        let mut loader = loader
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
        let mut builder = aws_sdk_dynamodb::config::Builder::from(&sdk);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let backend = Self {
            name: name.to_string(),
            table: config.table.clone(),
            client: Client::from_conf(builder.build()),
        };
        backend.prepare_table(config.create_table).await?;
        Ok(backend)
    }

    /// Makes sure the table exists with our key schema, creating it and
    /// enabling TTL cleanup when `create` allows.
    async fn prepare_table(&self, create: bool) -> Result<()> {
        match self.describe_table().await? {
            Some(table) => self.check_key_schema(&table)?,
            None if create => self.create_table().await?,
            None => {
                return Err(BackendError::config(
                    &self.name,
                    format!(
                        "table {:?} does not exist and create_table = false: create it (partition key \"{RESOURCE}\" string, sort key \"{KIND}\" string) or set create_table = true",
                        self.table
                    ),
                ));
            }
        }
        if create {
            self.enable_ttl().await;
        }
        Ok(())
    }

    /// The table's description, `None` when it does not exist.
    async fn describe_table(&self) -> Result<Option<aws_sdk_dynamodb::types::TableDescription>> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(out) => Ok(out.table().cloned()),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(self.sdk_error("DescribeTable", e)),
        }
    }

    fn check_key_schema(&self, table: &aws_sdk_dynamodb::types::TableDescription) -> Result<()> {
        let has_key = |attr: &str, key_type: KeyType| {
            table
                .key_schema()
                .iter()
                .any(|k| k.attribute_name() == attr && *k.key_type() == key_type)
                && table.attribute_definitions().iter().any(|d| {
                    d.attribute_name() == attr && *d.attribute_type() == ScalarAttributeType::S
                })
        };
        if table.key_schema().len() == 2
            && has_key(RESOURCE, KeyType::Hash)
            && has_key(KIND, KeyType::Range)
        {
            Ok(())
        } else {
            Err(BackendError::config(
                &self.name,
                format!(
                    "table {:?} exists with another key schema: stormlock needs partition key \"{RESOURCE}\" (string) and sort key \"{KIND}\" (string); choose another table",
                    self.table
                ),
            ))
        }
    }

    async fn create_table(&self) -> Result<()> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |name: &str, key_type: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
        };
        let internal = |e| BackendError::internal(&self.name, e);
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr(RESOURCE).map_err(internal)?)
            .attribute_definitions(attr(KIND).map_err(internal)?)
            .key_schema(key(RESOURCE, KeyType::Hash).map_err(internal)?)
            .key_schema(key(KIND, KeyType::Range).map_err(internal)?)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(backend = %self.name, table = %self.table, "created DynamoDB table")
            }
            // Another replica created it first.
            Err(e) if error_code(&e) == Some("ResourceInUseException") => {}
            Err(e) => return Err(self.sdk_error("CreateTable", e)),
        }
        let deadline = tokio::time::Instant::now() + TABLE_READY_WAIT;
        loop {
            let status = self.describe_table().await?;
            let status = status.as_ref().and_then(|t| t.table_status());
            if status == Some(&TableStatus::Active) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::unavailable(
                    &self.name,
                    format!(
                        "table {:?} not active {TABLE_READY_WAIT:?} after creation (status {status:?})",
                        self.table
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Turns on TTL cleanup of expired lease items. Leases work without it
    /// (expiry is judged on `expires_ms`), so failures — an emulator without
    /// TTL, a role without `UpdateTimeToLive` — are only logged.
    async fn enable_ttl(&self) {
        let current = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await;
        let description = match current {
            Ok(out) => out.time_to_live_description().cloned(),
            Err(e) => {
                tracing::warn!(backend = %self.name, table = %self.table, error = %DisplayErrorContext(&e), "cannot read TTL settings; expired leases will not be cleaned up");
                return;
            }
        };
        let status = description.as_ref().and_then(|d| d.time_to_live_status());
        let attribute = description.as_ref().and_then(|d| d.attribute_name());
        match status {
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling) => {
                if attribute != Some(CLEANUP_AT) {
                    tracing::warn!(backend = %self.name, table = %self.table, attribute = ?attribute, "TTL is enabled on another attribute; expired leases will not be cleaned up");
                }
                return;
            }
            Some(TimeToLiveStatus::Disabling) => {
                tracing::warn!(backend = %self.name, table = %self.table, "TTL is being disabled; expired leases will not be cleaned up");
                return;
            }
            _ => {}
        }
        let spec = match TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(CLEANUP_AT)
            .build()
        {
            Ok(spec) => spec,
            Err(e) => {
                tracing::warn!(backend = %self.name, error = %e, "cannot build TTL settings");
                return;
            }
        };
        match self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(spec)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(backend = %self.name, table = %self.table, attribute = CLEANUP_AT, "enabled TTL cleanup")
            }
            Err(e) => {
                tracing::warn!(backend = %self.name, table = %self.table, error = %DisplayErrorContext(&e), "cannot enable TTL; expired leases will not be cleaned up")
            }
        }
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

    /// The lease stored in `item` if it is live at `now_ms`.
    fn live(&self, item: &Item, now_ms: u64) -> Result<Option<Lease>> {
        let expires = self.number(item, EXPIRES_MS)?;
        if expires <= now_ms {
            return Ok(None);
        }
        self.lease_of(item).map(Some)
    }

    fn lease_of(&self, item: &Item) -> Result<Lease> {
        let resource = self.string(item, RESOURCE)?;
        let id = self.string(item, LEASE_ID)?;
        let id =
            LeaseId::parse(&id).ok_or_else(|| self.corrupt(&resource, "malformed lease_id"))?;
        let time = |attr: &str| -> Result<SystemTime> {
            let ms = self.number(item, attr)?;
            UNIX_EPOCH
                .checked_add(Duration::from_millis(ms))
                .ok_or_else(|| self.corrupt(&resource, format!("{attr} out of range")))
        };
        Ok(Lease {
            id,
            principal: self.string(item, PRINCIPAL)?,
            reason: self.string(item, REASON)?,
            acquired_at: time(ACQUIRED_MS)?,
            expires_at: time(EXPIRES_MS)?,
            fence: self.number(item, FENCE)?,
            resource,
        })
    }

    /// The eviction of `id` recorded in the record item, if any.
    fn eviction_of(&self, record: Option<&Item>, id: &LeaseId) -> Result<Option<Eviction>> {
        let Some(record) = record else {
            return Ok(None);
        };
        match record.get(EVICTED_ID) {
            Some(AttributeValue::S(evicted)) if evicted == id.expose() => Ok(Some(Eviction {
                id: id.clone(),
                actor: self.string(record, EVICTED_BY)?,
                reason: self.string(record, EVICTED_REASON)?,
            })),
            _ => Ok(None),
        }
    }

    fn string(&self, item: &Item, attr: &str) -> Result<String> {
        match item.get(attr) {
            Some(AttributeValue::S(s)) => Ok(s.clone()),
            _ => Err(self.corrupt(
                &resource_of(item),
                format!("{attr} missing or not a string"),
            )),
        }
    }

    fn number(&self, item: &Item, attr: &str) -> Result<u64> {
        match item.get(attr) {
            Some(AttributeValue::N(n)) => n.parse().map_err(|_| {
                self.corrupt(&resource_of(item), format!("{attr} = {n:?} is not a count"))
            }),
            _ => Err(self.corrupt(
                &resource_of(item),
                format!("{attr} missing or not a number"),
            )),
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
            return Ok(Some(Acquisition::Held(holder)));
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
        let cleanup_at = expires_ms
            .div_ceil(1000)
            .saturating_add(CLEANUP_GRACE.as_secs());
        let mut item = key(&req.resource, LEASE);
        item.insert(
            LEASE_ID.into(),
            AttributeValue::S(req.id.expose().to_string()),
        );
        item.insert(PRINCIPAL.into(), AttributeValue::S(req.principal.clone()));
        item.insert(REASON.into(), AttributeValue::S(req.reason.clone()));
        item.insert(ACQUIRED_MS.into(), number(now_ms));
        item.insert(EXPIRES_MS.into(), number(expires_ms));
        item.insert(FENCE.into(), number(fence));
        item.insert(CLEANUP_AT.into(), number(cleanup_at));
        let lease = self.lease_of(&item)?;
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(
                "(attribute_not_exists(#r) OR #e <= :now) AND (attribute_not_exists(#f) OR #f < :fence)",
            )
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
            return Ok(Some(Acquisition::Held(holder)));
        }
        self.raise_fence(&req.resource, self.number(&old, FENCE)?)
            .await?;
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
            return Ok(Some(None));
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
        let record = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(resource, RECORD)))
            .update_expression("SET #ei = :id, #eb = :actor, #er = :reason")
            .expression_attribute_names("#ei", EVICTED_ID)
            .expression_attribute_names("#eb", EVICTED_BY)
            .expression_attribute_names("#er", EVICTED_REASON)
            .expression_attribute_values(":id", AttributeValue::S(lease.id.expose().to_string()))
            .expression_attribute_values(":actor", AttributeValue::S(actor.to_string()))
            .expression_attribute_values(":reason", AttributeValue::S(reason.to_string()))
            .build()
            .map_err(internal)?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(free).build())
            .transact_items(TransactWriteItem::builder().update(record).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(Some(Some(lease))),
            // The lease was renewed, released or lapsed meanwhile, or another
            // write touched one of the items: look again.
            Err(e) if error_code(&e) == Some("TransactionCanceledException") => Ok(None),
            Err(e) => Err(self.sdk_error("TransactWriteItems", e)),
        }
    }
}

#[async_trait]
impl Backend for DynamodbBackend {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
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
        let now_ms = millis(SystemTime::now());
        // The item stays, marked free, so that its fence keeps stale numbers
        // out (see "Fences").
        let released = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(resource, LEASE)))
            .update_expression("SET #e = :released, #c = :cleanup")
            .condition_expression("#id = :id AND #e > :now")
            .expression_attribute_names("#id", LEASE_ID)
            .expression_attribute_names("#e", EXPIRES_MS)
            .expression_attribute_names("#c", CLEANUP_AT)
            .expression_attribute_values(":id", AttributeValue::S(id.expose().to_string()))
            .expression_attribute_values(":now", number(now_ms))
            .expression_attribute_values(":released", number(RELEASED_MS))
            .expression_attribute_values(":cleanup", number(cleanup_after(now_ms)))
            .send()
            .await;
        match released {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(self.sdk_error("UpdateItem", e)),
        }
    }

    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        let now_ms = millis(SystemTime::now());
        let expires_ms = now_ms.saturating_add(millis_of(ttl));
        let cleanup_at = expires_ms
            .div_ceil(1000)
            .saturating_add(CLEANUP_GRACE.as_secs());
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(resource, LEASE)))
            .update_expression("SET #e = :expires, #c = :cleanup")
            .condition_expression("#id = :id AND #e > :now")
            .expression_attribute_names("#id", LEASE_ID)
            .expression_attribute_names("#e", EXPIRES_MS)
            .expression_attribute_names("#c", CLEANUP_AT)
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
                let record = self.get(resource, RECORD).await?;
                Err(BackendError::NotCurrent {
                    evicted: self.eviction_of(record.as_ref(), id)?,
                })
            }
            Err(e) => Err(self.sdk_error("UpdateItem", e)),
        }
    }

    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        self.live_lease(resource, millis(SystemTime::now())).await
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
        let mut filter = "#k = :lease AND #e > :now".to_string();
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
                .expression_attribute_values(":lease", AttributeValue::S(LEASE.to_string()))
                .expression_attribute_values(":now", number(now_ms))
                .set_exclusive_start_key(start.take());
            if !prefix.is_empty() || after.is_some() {
                scan = scan.expression_attribute_names("#r", RESOURCE);
            }
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

    async fn health(&self) -> Result<()> {
        let table = self.describe_table().await?.ok_or_else(|| {
            BackendError::unavailable(&self.name, format!("table {:?} does not exist", self.table))
        })?;
        match table.table_status() {
            Some(TableStatus::Active | TableStatus::Updating) => Ok(()),
            other => Err(BackendError::unavailable(
                &self.name,
                format!("table {:?} is not usable (status {other:?})", self.table),
            )),
        }
    }
}

/// The primary key of one item of `resource`.
fn key(resource: &str, kind: &str) -> Item {
    HashMap::from([
        (
            RESOURCE.to_string(),
            AttributeValue::S(resource.to_string()),
        ),
        (KIND.to_string(), AttributeValue::S(kind.to_string())),
    ])
}

fn resource_of(item: &Item) -> String {
    match item.get(RESOURCE) {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => "?".to_string(),
    }
}

fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// Milliseconds since the Unix epoch (0 for times before it).
fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, millis_of)
}

fn millis_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> std::result::Result<DynamodbConfig, toml::de::Error> {
        toml::from_str(toml)
    }

    #[test]
    fn defaults() {
        let c = config("").expect("empty config");
        assert_eq!(c.table, "stormlock");
        assert!(c.create_table);
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn durations_and_unknown_keys() {
        let c = config("timeout = \"5s\"\nconnect_timeout = \"1 seconds\"").expect("durations");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        let err = config("tabel = \"x\"").map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("tabel"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("table = \"ab\"", "table"),
            ("table = \"has space\"", "table"),
            ("region = \"EU West\"", "region"),
            ("endpoint = \"localhost:8000\"", "endpoint"),
            ("timeout = \"0s\"", "timeout"),
            ("connect_timeout = \"0s\"", "connect_timeout"),
        ];
        for (toml, key) in cases {
            let err = config(toml).expect(toml).validate().unwrap_err();
            assert!(err.starts_with(key), "{toml}: {err}");
        }
        let ok = config(
            "table = \"a.b-c_D9\"\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:8000\"",
        )
        .expect("valid");
        assert_eq!(ok.validate(), Ok(()));
    }
}
