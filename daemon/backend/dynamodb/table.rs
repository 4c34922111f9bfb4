//! The table itself: checked at start, created (with TTL cleanup) when
//! allowed. See "Permissions" in the module documentation for what this needs.

use std::time::Duration;

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TableDescription, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};

use super::codec::{CLEANUP_AT, KIND, RESOURCE};
use super::{DynamodbBackend, error_code};
use crate::backend::{BackendError, Result, Schema};

/// How long to wait for a table being created to become usable.
const TABLE_READY_WAIT: Duration = Duration::from_secs(60);

impl DynamodbBackend {
    /// Makes sure the table exists with our key schema, creating it and
    /// enabling TTL cleanup when `schema` allows. With [`Schema::Inspect`], a
    /// missing table is what it returns.
    pub(super) async fn prepare_table(&self, schema: Schema) -> Result<Option<String>> {
        match self.describe_table().await? {
            Some(table) => self.check_key_schema(&table)?,
            None if schema == Schema::Create => self.create_table().await?,
            None if schema == Schema::Inspect => {
                return Ok(Some(Schema::missing(&format!("table {:?}", self.table))));
            }
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
        if schema == Schema::Create {
            self.enable_ttl().await;
        }
        Ok(None)
    }

    /// The table's description, `None` when it does not exist.
    pub(super) async fn describe_table(&self) -> Result<Option<TableDescription>> {
        self.describe(&self.table).await
    }

    /// The description of table `name`, `None` when it does not exist.
    async fn describe(&self, name: &str) -> Result<Option<TableDescription>> {
        match self.client.describe_table().table_name(name).send().await {
            Ok(out) => Ok(out.table().cloned()),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(self.sdk_error("DescribeTable", e)),
        }
    }

    /// With `python_stormlock = true`, checks that Python stormlock's table
    /// exists with its key schema (partition key `resource`, a string, and
    /// nothing else): the setting asks for exclusion with Python stormlock,
    /// which a missing table would silently lose. Python stormlock does not
    /// create it either.
    pub(super) async fn check_python_table(&self) -> Result<()> {
        let Some(python) = &self.python_table else {
            return Ok(());
        };
        let why = match self.describe(python).await? {
            Some(table) if has_key_schema(&table, &[(RESOURCE, KeyType::Hash)]) => return Ok(()),
            Some(_) => "has another key schema than Python stormlock's",
            None => "does not exist",
        };
        Err(BackendError::config(
            &self.name,
            format!(
                "python_stormlock = true, but Python stormlock's table {python:?} {why} \
                 (partition key \"{RESOURCE}\", a string, only): set python_table to the table \
                 Python stormlock uses (see MIGRATING.md)"
            ),
        ))
    }

    fn check_key_schema(&self, table: &TableDescription) -> Result<()> {
        if has_key_schema(table, &[(RESOURCE, KeyType::Hash), (KIND, KeyType::Range)]) {
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
}

/// Whether `table`'s key schema is exactly `keys`, each a string attribute.
fn has_key_schema(table: &TableDescription, keys: &[(&str, KeyType)]) -> bool {
    table.key_schema().len() == keys.len()
        && keys.iter().all(|(attr, key_type)| {
            table
                .key_schema()
                .iter()
                .any(|k| k.attribute_name() == *attr && k.key_type() == key_type)
                && table.attribute_definitions().iter().any(|d| {
                    d.attribute_name() == *attr && *d.attribute_type() == ScalarAttributeType::S
                })
        })
}
