//! What the PostgreSQL and MySQL/MariaDB backends share: configuration
//! defaults, table-name validation, TLS modes, and turning a stored row into
//! the lease model (through [`Record`], so both engines judge a row by the same
//! rules as the `memory` and `embedded` backends).
//!
//! Both engines keep one row per resource that outlives its leases: it holds
//! the last eviction record, and its fence comes from a counter that no row
//! deletion can reset (a sequence in PostgreSQL, a one-row counter table in
//! MySQL), so fences keep increasing even when operators delete old rows.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::record::Record;
use super::{BackendError, Result};
use crate::lease::{Eviction, Lease, LeaseId};

/// The table used when the configuration names none.
pub const DEFAULT_TABLE: &str = "stormlock_locks";

/// Suffix of the fence counter's name (a sequence in PostgreSQL, a table in
/// MySQL) next to the locks table.
pub(super) const FENCE_SUFFIX: &str = "_fence";

/// Longest table name: both engines cap identifiers at 63 or 64 bytes, and
/// the fence counter's name adds [`FENCE_SUFFIX`].
pub const MAX_TABLE_LEN: usize = 63 - FENCE_SUFFIX.len();

/// Attempts of one call when the engine reports a deadlock or a
/// serialization failure, or a holder vanishes between two statements.
pub(super) const MAX_ATTEMPTS: u32 = 8;

/// Longest TTL written to the engine. The service caps TTLs far below this;
/// the clamp only keeps timestamps inside every engine's range, so that no
/// input can turn into an engine error.
const MAX_TTL: Duration = Duration::from_secs(100 * 366 * 86_400);

pub(super) fn default_table() -> String {
    DEFAULT_TABLE.to_string()
}

pub(super) fn default_create_table() -> bool {
    true
}

pub(super) fn default_pool_size() -> usize {
    8
}

pub(super) fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// How the connection to the database server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS, without checking the server's certificate: protects against
    /// eavesdropping only (libpq's `sslmode=require`).
    Require,
    /// TLS with the server's certificate checked against `ca_file` (or the
    /// public web roots when unset) and its name against the URL's host.
    VerifyFull,
}

/// Checks the settings every SQL backend has in common.
pub(super) fn check_common(
    backend: &str,
    pool_size: usize,
    connect_timeout: Duration,
    tls: Option<TlsMode>,
    ca_file: Option<&std::path::Path>,
) -> Result<()> {
    if pool_size == 0 {
        return Err(BackendError::config(
            backend,
            "pool_size must be at least 1",
        ));
    }
    if connect_timeout.is_zero() {
        return Err(BackendError::config(
            backend,
            "connect_timeout must be at least 1 second",
        ));
    }
    if ca_file.is_some() && tls != Some(TlsMode::VerifyFull) {
        return Err(BackendError::config(
            backend,
            "ca_file is only used with tls = \"verify-full\"",
        ));
    }
    Ok(())
}

/// A validated table name, optionally schema-qualified. Only names of ASCII
/// letters, digits and underscores pass, so quoting them can never be
/// escaped from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableName {
    schema: Option<String>,
    table: String,
}

impl TableName {
    /// Validates the `table` setting. `schema.table` is accepted only when
    /// `allow_schema` (PostgreSQL; MySQL takes the database from the URL).
    pub(super) fn parse(backend: &str, text: &str, allow_schema: bool) -> Result<Self> {
        let refuse = |why: &str| {
            BackendError::config(
                backend,
                format!(
                    "table {text:?} is not a valid table name: {why}; use letters, digits and \
                     underscores, starting with a letter or underscore{}",
                    if allow_schema {
                        ", optionally as schema.table"
                    } else {
                        ""
                    }
                ),
            )
        };
        let (schema, table) = match text.split_once('.') {
            Some((schema, table)) if allow_schema => (Some(schema), table),
            Some(_) => return Err(refuse("a schema prefix is not supported here")),
            None => (None, text),
        };
        if let Some(schema) = schema {
            check_identifier(schema, 63).map_err(|why| refuse(&format!("schema {why}")))?;
        }
        check_identifier(table, MAX_TABLE_LEN).map_err(|why| refuse(&why))?;
        Ok(Self {
            schema: schema.map(str::to_string),
            table: table.to_string(),
        })
    }

    /// The fence counter's name beside this table.
    pub(super) fn fence(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            table: format!("{}{FENCE_SUFFIX}", self.table),
        }
    }

    /// The name quoted with `quote` (`"` for PostgreSQL, `` ` `` for MySQL),
    /// ready to be placed in a statement.
    pub(super) fn quoted(&self, quote: char) -> String {
        match &self.schema {
            Some(schema) => format!("{quote}{schema}{quote}.{quote}{}{quote}", self.table),
            None => format!("{quote}{}{quote}", self.table),
        }
    }

    /// A notification channel name for this table (PostgreSQL `LISTEN`):
    /// `stormlock_` and 16 hex digits of the SHA-256 of the table's name,
    /// short enough for any table name and free of characters to quote.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(super) fn channel(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.display().as_bytes());
        format!("stormlock_{}", hex::encode(&digest[..8]))
    }

    /// The name as configured, for messages.
    pub(super) fn display(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.table),
            None => self.table.clone(),
        }
    }
}

fn check_identifier(name: &str, max: usize) -> std::result::Result<(), String> {
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return Err("is empty".to_string()),
        Some(b) if !(b.is_ascii_alphabetic() || b == b'_') => {
            return Err("must start with a letter or underscore".to_string());
        }
        Some(_) => {}
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("contains a character other than a letter, digit or underscore".to_string());
    }
    if name.len() > max {
        return Err(format!("is longer than {max} characters"));
    }
    Ok(())
}

/// Puts a validated table name into a DDL template written for
/// [`DEFAULT_TABLE`], whose table and fence names appear quoted with `quote`.
pub(super) fn render_ddl(template: &str, table: &TableName, quote: char) -> String {
    let default = TableName {
        schema: None,
        table: DEFAULT_TABLE.to_string(),
    };
    // The fence name contains the table name, so it is replaced first.
    template
        .replace(&default.fence().quoted(quote), &table.fence().quoted(quote))
        .replace(&default.quoted(quote), &table.quoted(quote))
}

/// One row of the locks table, as either engine returns it.
#[derive(Debug)]
pub(super) struct StoredRow {
    /// The resource the row is for.
    pub resource: String,
    /// The last granted lease's id; `NULL` once released or broken.
    pub lease_id: Option<String>,
    /// The last holder.
    pub principal: Option<String>,
    /// The last holder's reason.
    pub reason: Option<String>,
    /// When the last lease was granted.
    pub acquired_at: Option<SystemTime>,
    /// When the last lease lapses; `NULL` once released or broken.
    pub expires_at: Option<SystemTime>,
    /// The last lease's fence (0 for a row that never held a lease).
    pub fence: u64,
    /// The last broken lease's id.
    pub evicted_id: Option<String>,
    /// Who broke it.
    pub evicted_by: Option<String>,
    /// Why.
    pub evicted_reason: Option<String>,
}

impl StoredRow {
    /// The row's lease, live or not; `None` when released or broken.
    pub(super) fn lease(&self, backend: &str) -> Result<Option<Lease>> {
        let (Some(id), Some(expires_at)) = (&self.lease_id, self.expires_at) else {
            return Ok(None);
        };
        let corrupt = |what: &str| {
            BackendError::internal(
                backend,
                format!("row for resource {:?} has {what}", self.resource),
            )
        };
        Ok(Some(Lease {
            resource: self.resource.clone(),
            id: LeaseId::parse(id).ok_or_else(|| corrupt("a malformed lease_id"))?,
            principal: self.principal.clone().unwrap_or_default(),
            reason: self.reason.clone().unwrap_or_default(),
            acquired_at: self
                .acquired_at
                .ok_or_else(|| corrupt("a lease without acquired_at"))?,
            expires_at,
            fence: self.fence,
        }))
    }

    /// The row as the reference state machine sees it.
    pub(super) fn record(&self, backend: &str) -> Result<Record> {
        let evicted = match &self.evicted_id {
            Some(id) => Some(Eviction {
                id: LeaseId::parse(id).ok_or_else(|| {
                    BackendError::internal(
                        backend,
                        format!(
                            "row for resource {:?} has a malformed evicted_id",
                            self.resource
                        ),
                    )
                })?,
                actor: self.evicted_by.clone().unwrap_or_default(),
                reason: self.evicted_reason.clone().unwrap_or_default(),
            }),
            None => None,
        };
        Ok(Record {
            fence: self.fence,
            lease: self.lease(backend)?,
            evicted,
        })
    }
}

/// A TTL as the engine gets it, in microseconds, clamped to a range every
/// engine can add to its clock.
pub(super) fn ttl_micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.min(MAX_TTL).as_micros()).unwrap_or(i64::MAX)
}

/// A page size as the engine gets it.
pub(super) fn limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The error and its causes, one after the other: driver errors often say
/// little at the top level ("db error") and the useful part in a source.
pub(super) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A connection URL with its password replaced, safe to show in `Debug`
/// output and logs.
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let password = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{password}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// A short pause before another attempt, growing with `attempt`, so that
/// contenders that collided do not collide again in lockstep.
pub(super) async fn pause_before_retry(attempt: u32) {
    let base = 5u64 << attempt.min(6);
    let jitter = rand::random_range(0..=base);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let ok = |t: &str, schema: bool| TableName::parse("b", t, schema).map(|n| n.quoted('"'));
        assert_eq!(ok("locks", false).ok().as_deref(), Some("\"locks\""));
        assert_eq!(ok("_L0cks_2", false).ok().as_deref(), Some("\"_L0cks_2\""));
        assert_eq!(
            ok("ops.locks", true).ok().as_deref(),
            Some("\"ops\".\"locks\"")
        );
        assert!(ok(&"x".repeat(MAX_TABLE_LEN), false).is_ok());
        for bad in [
            "",
            "1locks",
            "locks; DROP TABLE x",
            "lo\"cks",
            "lo`cks",
            "a-b",
            "löcks",
            "a.b.c",
            ".locks",
            "locks.",
            &"x".repeat(MAX_TABLE_LEN + 1),
        ] {
            let err = ok(bad, true)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("table"),
                "{bad:?} refused naming the key: {err:?}"
            );
        }
        assert!(
            ok("ops.locks", false).is_err(),
            "no schema where unsupported"
        );
    }

    #[test]
    fn fence_name_and_rendering() {
        let table = TableName::parse("b", "ops.locks", true).map(|t| t.fence().quoted('"'));
        assert_eq!(table.ok().as_deref(), Some("\"ops\".\"locks_fence\""));
        let template =
            "CREATE SEQUENCE \"stormlock_locks_fence\"; CREATE TABLE \"stormlock_locks\"";
        let Ok(table) = TableName::parse("b", "ops.locks", true) else {
            panic!("valid name")
        };
        assert_eq!(
            render_ddl(template, &table, '"'),
            "CREATE SEQUENCE \"ops\".\"locks_fence\"; CREATE TABLE \"ops\".\"locks\""
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://app:s3cr%40t@db:5432/locks?sslmode=require"),
            "postgres://app:***@db:5432/locks?sslmode=require"
        );
        assert_eq!(redact_url("mysql://root@db/x"), "mysql://root@db/x");
        assert_eq!(redact_url("mysql://db/x"), "mysql://db/x");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn ttls_are_clamped() {
        assert_eq!(ttl_micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(ttl_micros(Duration::MAX), ttl_micros(MAX_TTL));
    }
}
