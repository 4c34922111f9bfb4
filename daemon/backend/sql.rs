//! What the PostgreSQL and MySQL/MariaDB backends share: their one
//! configuration table ([`SqlConfig`]) and its checks, table-name validation,
//! TLS modes, and turning a stored row into the lease model (through
//! [`Record`], so both engines judge a row by the same rules as the `memory`
//! and `embedded` backends).
//!
//! Both engines keep one row per resource that outlives its leases: it holds
//! the last eviction record, and its fence comes from a counter that no row
//! deletion can reset (a sequence in PostgreSQL, a one-row counter table in
//! MySQL), so fences keep increasing even when operators delete old rows.
//!
//! Reservation books live in a second table beside the locks table (its name
//! with [`BOOKS_SUFFIX`]): one row per resource with the lock core's opaque
//! document and a version, replaced whole by compare-and-swap on the version
//! (a counter bumped on each write, so a version never comes back) and never
//! deleted. Deployments that create their schema themselves and lack it keep
//! their locks; only reservations fail, with [`books_unusable`].

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::record::Record;
use super::{BackendError, Book, Result};
use crate::lease::{Eviction, Lease, LeaseId};

/// The table used when the configuration names none.
pub const DEFAULT_TABLE: &str = "stormlock_locks";

/// Python stormlock's table when `python_table` is not set (its own default).
pub const DEFAULT_PYTHON_TABLE: &str = "stormlock";

/// Suffix of the fence counter's name (a sequence in PostgreSQL, a table in
/// MySQL) next to the locks table.
pub(super) const FENCE_SUFFIX: &str = "_fence";

/// Suffix of the reservation books table's name next to the locks table.
/// No longer than [`FENCE_SUFFIX`], so [`MAX_TABLE_LEN`] holds for it too.
pub(super) const BOOKS_SUFFIX: &str = "_books";

const _: () = assert!(BOOKS_SUFFIX.len() <= FENCE_SUFFIX.len());

/// Longest table name: both engines cap identifiers at 63 or 64 bytes, and
/// the fence counter's name adds [`FENCE_SUFFIX`] (the books table's name
/// adds [`BOOKS_SUFFIX`], which is no longer).
pub const MAX_TABLE_LEN: usize = 63 - FENCE_SUFFIX.len();

/// Attempts of one call when the engine reports a deadlock or a
/// serialization failure, or a holder vanishes between two statements.
pub(super) const MAX_ATTEMPTS: u32 = 8;

/// Longest TTL written to the engine. The service caps TTLs far below this;
/// the clamp only keeps timestamps inside every engine's range, so that no
/// input can turn into an engine error.
const MAX_TTL: Duration = Duration::from_secs(100 * 366 * 86_400);

/// `[backends.NAME]` with `type = "postgres"` or `type = "mysql"`: both
/// engines take the same keys. What differs between them (URL scheme and
/// parameters, `schema.table`) is named per key and checked by
/// [`SqlConfig::validate`] for the [`SqlEngine`] at hand.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// `postgres://user:password@host:port/database` (or `postgresql://`),
    /// whose libpq-style query parameters such as `sslmode` and `options`
    /// are honoured; or `mysql://user:password@host:port/database`, whose
    /// `mysql_async` parameters (`require_ssl`, `verify_ca`, …) are honoured
    /// unless `tls` is set.
    pub url: String,
    /// The locks table: letters, digits and underscores only; on PostgreSQL
    /// also `schema.table` (MySQL takes the database from the URL). Default
    /// `stormlock_locks`; the fence counter (a sequence in PostgreSQL, a
    /// table in MySQL) is named after it with a `_fence` suffix, the
    /// reservation books table with a `_books` suffix.
    #[serde(default = "default_table")]
    pub table: String,
    /// Create the table, its fence counter and its reservation books table
    /// on start if they are missing (default true). With false they must
    /// exist, created with the engine's `DDL`; without the books table locks
    /// still work, and reservations fail naming it.
    #[serde(default = "default_create_table")]
    pub create_table: bool,
    /// Most connections kept open to the server (default 8).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Bound on opening a connection and on waiting for a free one
    /// (default 2 s).
    #[serde(
        default = "super::default_connect_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// `disable`, `require` (encrypted, server not authenticated) or
    /// `verify-full`. Unset: the URL decides: PostgreSQL's `sslmode`
    /// (libpq's default, `prefer`, when absent), MySQL's parameters (plain by
    /// default).
    pub tls: Option<TlsMode>,
    /// PEM file of the certificate authorities that sign the server's
    /// certificate, for `tls = "verify-full"`; unset: the public web roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for a server that requires one
    /// (PostgreSQL `cert` authentication or `clientcert=verify-full`, MySQL
    /// `REQUIRE X509`), with `tls = "require"` or `"verify-full"`; requires
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Migration mode (default false): a lock Python stormlock 0.4.1 holds
    /// in `python_table` counts as held, and every lease this backend grants
    /// is also written there, so that both tools exclude each other. See
    /// MIGRATING.md.
    #[serde(default)]
    pub python_stormlock: bool,
    /// Python stormlock's table (its `table` setting), with
    /// `python_stormlock = true`: letters, digits and underscores (in lower
    /// case on PostgreSQL), optionally `schema.table` (on MySQL a database
    /// other than the URL's). Default `stormlock`.
    pub python_table: Option<String>,
}

impl fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password; configurations end up in logs.
        f.debug_struct("SqlConfig")
            .field("url", &super::redact_url(&self.url))
            .field("table", &self.table)
            .field("create_table", &self.create_table)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("python_stormlock", &self.python_stormlock)
            .field("python_table", &self.python_table)
            .finish()
    }
}

fn default_table() -> String {
    DEFAULT_TABLE.to_string()
}

fn default_create_table() -> bool {
    true
}

fn default_pool_size() -> usize {
    8
}

/// The engine a [`SqlConfig`] is for: the rules that differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlEngine {
    /// PostgreSQL: `postgres://` URLs, `schema.table` names.
    #[cfg(feature = "postgres")]
    Postgres,
    /// MySQL or MariaDB: `mysql://` URLs, tables in the URL's database.
    #[cfg(feature = "mysql")]
    Mysql,
}

impl SqlEngine {
    /// Whether the engine folds the unquoted table names of Python
    /// stormlock's statements to lower case (PostgreSQL does; MySQL keeps
    /// them as written).
    fn folds_unquoted_names(self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => true,
            #[cfg(feature = "mysql")]
            Self::Mysql => false,
        }
    }

    /// Whether `table` may name a schema (`schema.table`).
    fn schema_tables(self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => true,
            #[cfg(feature = "mysql")]
            Self::Mysql => false,
        }
    }

    /// Checks the scheme and what the engine's client parses of `url`,
    /// without connecting.
    fn check_url(self, url: &str) -> std::result::Result<(), String> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres => super::postgres::parse_url(url).map(drop),
            #[cfg(feature = "mysql")]
            Self::Mysql => super::mysql::parse_url(url).map(drop),
        }
    }
}

impl SqlConfig {
    /// Checks every key of the table for `engine` without connecting; the
    /// message starts with the key.
    pub fn validate(&self, engine: SqlEngine) -> std::result::Result<(), String> {
        if self.pool_size == 0 {
            return Err("pool_size: must be at least 1".to_string());
        }
        super::check_timeout("connect_timeout", self.connect_timeout)?;
        if self.ca_file.is_some() && self.tls != Some(TlsMode::VerifyFull) {
            return Err("ca_file: only used with tls = \"verify-full\"".to_string());
        }
        // With `tls` unset the URL decides, and may fall back to plaintext
        // (PostgreSQL's `prefer`) or leave TLS off (MySQL): a client
        // certificate asks for TLS to be named.
        if !matches!(self.tls, Some(TlsMode::Require | TlsMode::VerifyFull))
            && let Some(key) = [("cert_file", &self.cert_file), ("key_file", &self.key_file)]
                .into_iter()
                .find_map(|(key, file)| file.as_ref().map(|_| key))
        {
            return Err(format!(
                "{key}: only used with tls = \"require\" or \"verify-full\""
            ));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err("key_file: must be set with cert_file".to_string()),
            (None, Some(_)) => return Err("cert_file: must be set with key_file".to_string()),
            _ => {}
        }
        self.table_name(engine)?;
        self.python_table_name(engine)?;
        engine.check_url(&self.url)
    }

    /// Python stormlock's table when `python_stormlock = true`, validated;
    /// `None` when the mode is off.
    pub(super) fn python_table_name(
        &self,
        engine: SqlEngine,
    ) -> std::result::Result<Option<TableName>, String> {
        if !self.python_stormlock {
            if self.python_table.is_some() {
                return Err("python_table: only used with python_stormlock = true".to_string());
            }
            return Ok(None);
        }
        let text = self.python_table.as_deref().unwrap_or(DEFAULT_PYTHON_TABLE);
        // Python stormlock puts its name into statements unquoted, which
        // PostgreSQL folds to lower case; quoted here, it must be written so.
        if engine.folds_unquoted_names() && text.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "python_table: {text:?}: write it in lower case, as PostgreSQL reads Python \
                 stormlock's unquoted table name"
            ));
        }
        // `schema.table` on both engines: Python's unquoted name may name
        // another schema (PostgreSQL) or database (MySQL).
        TableName::parse(text, true)
            .map(Some)
            .map_err(|e| format!("python_{e}"))
    }

    /// The validated `table` setting.
    pub(super) fn table_name(&self, engine: SqlEngine) -> std::result::Result<TableName, String> {
        TableName::parse(&self.table, engine.schema_tables())
    }
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

impl SqlConfig {
    /// The client certificate of `cert_file`/`key_file`, `None` without one
    /// (see [`super::client_identity`]).
    pub(super) fn client_identity(&self, name: &str) -> Result<Option<super::ClientIdentity>> {
        // `validate` has checked that they come in pairs.
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => super::client_identity(name, cert, key).map(Some),
            _ => Ok(None),
        }
    }
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
    /// The message starts with the key.
    fn parse(text: &str, allow_schema: bool) -> std::result::Result<Self, String> {
        let refuse = |why: &str| {
            format!(
                "table: {text:?} is not a valid table name: {why}; use letters, digits and \
                 underscores, starting with a letter or underscore{}",
                if allow_schema {
                    ", optionally as schema.table"
                } else {
                    ""
                }
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

    /// The reservation books table's name beside this table.
    pub(super) fn books(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            table: format!("{}{BOOKS_SUFFIX}", self.table),
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
/// [`DEFAULT_TABLE`], whose table, fence and books names appear quoted with
/// `quote`.
pub(super) fn render_ddl(template: &str, table: &TableName, quote: char) -> String {
    let default = TableName {
        schema: None,
        table: DEFAULT_TABLE.to_string(),
    };
    // The fence and books names contain the table name, so they are
    // replaced first.
    template
        .replace(&default.fence().quoted(quote), &table.fence().quoted(quote))
        .replace(&default.books().quoted(quote), &table.books().quoted(quote))
        .replace(&default.quoted(quote), &table.quoted(quote))
}

/// Why a book call failed on the books table itself (missing, or the
/// daemon may not use it: the engine's `why`), for operators: locks keep
/// working without it, reservations need it.
pub(super) fn books_unusable(backend: &str, books: &TableName, why: &str) -> BackendError {
    BackendError::config(backend, books_unusable_message(books, why))
}

/// The text of [`books_unusable`], also what start-up warns with.
pub(super) fn books_unusable_message(books: &TableName, why: &str) -> String {
    format!(
        "the reservation books table {:?} cannot be used: {why}; reservations need it (locks \
         work without it): create it with the documented DDL, which the daemon runs at start \
         with create_table = true, and give the daemon SELECT, INSERT, UPDATE on it",
        books.display()
    )
}

/// The version a write over `expected` compares against, as the engines
/// store it; `None` for a version no book can have (beyond `BIGINT`), which
/// no write can match.
pub(super) fn stored_version(expected: u64) -> Option<i64> {
    i64::try_from(expected).ok()
}

/// A book row (resource, body, version) as the lock core sees it; the
/// version is never 0 or negative in a row this daemon wrote.
pub(super) fn book(backend: &str, resource: String, body: Vec<u8>, version: i64) -> Result<Book> {
    match u64::try_from(version) {
        Ok(version) if version > 0 => Ok(Book {
            resource,
            body,
            version,
        }),
        _ => Err(BackendError::internal(
            backend,
            format!("the book of {resource:?} has version {version}, which no write gives"),
        )),
    }
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
    /// The TTL the last lease was granted or last renewed with (`ttl_ms`;
    /// `NULL` in rows of older versions).
    pub ttl: Option<Duration>,
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
            ttl: self.ttl,
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
        let ok = |t: &str, schema: bool| TableName::parse(t, schema).map(|n| n.quoted('"'));
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
            let err = ok(bad, true).err().unwrap_or_default();
            assert!(
                err.starts_with("table: "),
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
        let table = TableName::parse("ops.locks", true).map(|t| t.fence().quoted('"'));
        assert_eq!(table.ok().as_deref(), Some("\"ops\".\"locks_fence\""));
        let books = TableName::parse("ops.locks", true).map(|t| t.books().quoted('"'));
        assert_eq!(books.ok().as_deref(), Some("\"ops\".\"locks_books\""));
        let template = "CREATE SEQUENCE \"stormlock_locks_fence\"; CREATE TABLE \"stormlock_locks\"; \
                        CREATE TABLE \"stormlock_locks_books\"";
        let Ok(table) = TableName::parse("ops.locks", true) else {
            panic!("valid name")
        };
        assert_eq!(
            render_ddl(template, &table, '"'),
            "CREATE SEQUENCE \"ops\".\"locks_fence\"; CREATE TABLE \"ops\".\"locks\"; \
             CREATE TABLE \"ops\".\"locks_books\""
        );
        // The longest table name leaves room for either suffix.
        let longest = TableName::parse(&"x".repeat(MAX_TABLE_LEN), false);
        let Ok(longest) = longest else {
            panic!("valid name")
        };
        assert!(longest.books().table.len() <= 63);
        assert!(longest.fence().table.len() <= 63);
    }

    #[test]
    fn book_versions() {
        assert_eq!(stored_version(5), Some(5));
        assert_eq!(stored_version(u64::MAX), None);
        let ok = book("db", "r".into(), b"x".to_vec(), 3).ok();
        assert_eq!(
            ok.map(|b| (b.resource, b.body, b.version)),
            Some(("r".into(), b"x".to_vec(), 3))
        );
        for bad in [0, -1] {
            let err = book("db", "r".into(), Vec::new(), bad)
                .err()
                .map(|e| e.kind());
            assert_eq!(err, Some("internal"), "version {bad}");
        }
    }

    #[test]
    fn ttls_are_clamped() {
        assert_eq!(ttl_micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(ttl_micros(Duration::MAX), ttl_micros(MAX_TTL));
    }

    fn config(toml: &str) -> SqlConfig {
        toml::from_str(toml).expect("parse")
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c = config("url = \"mysql://u:hunter2@db/ops\"");
        assert_eq!(c.table, DEFAULT_TABLE);
        assert!(c.create_table);
        assert_eq!(c.pool_size, 8);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!((c.tls, c.ca_file.as_ref()), (None, None));
        assert!(!format!("{c:?}").contains("hunter2"), "password in {c:?}");
        assert!(toml::from_str::<SqlConfig>("url = \"mysql://db/x\"\npool = 3").is_err());
        assert!(!c.python_stormlock);
        assert_eq!(c.python_table, None);
    }

    /// Each engine with a valid URL of its own.
    fn engines() -> Vec<(SqlEngine, &'static str)> {
        vec![
            #[cfg(feature = "postgres")]
            (SqlEngine::Postgres, "postgres://u@db/ops"),
            #[cfg(feature = "mysql")]
            (SqlEngine::Mysql, "mysql://u@db:3306/ops"),
        ]
    }

    #[test]
    fn client_certificates_need_tls_and_come_in_pairs() {
        let pair = "cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n";
        for (engine, url) in engines() {
            let check = |extra: &str| config(&format!("url = {url:?}\n{extra}")).validate(engine);
            for tls in ["require", "verify-full"] {
                assert_eq!(check(&format!("tls = {tls:?}\n{pair}")), Ok(()), "{tls}");
            }
            assert_eq!(
                check(&format!(
                    "tls = \"verify-full\"\nca_file = \"/ca.pem\"\n{pair}"
                )),
                Ok(())
            );
            for (extra, key) in [
                (pair.to_string(), "cert_file"),
                (format!("tls = \"disable\"\n{pair}"), "cert_file"),
                (
                    "tls = \"disable\"\nkey_file = \"/k.pem\"".into(),
                    "key_file",
                ),
                (
                    "tls = \"require\"\ncert_file = \"/c.pem\"".into(),
                    "key_file",
                ),
                (
                    "tls = \"verify-full\"\nkey_file = \"/k.pem\"".into(),
                    "cert_file",
                ),
            ] {
                let err = check(&extra).err().unwrap_or_default();
                assert!(
                    err.starts_with(&format!("{key}: ")),
                    "{engine:?} {extra}: {err}"
                );
            }
            let err = check(pair).err().unwrap_or_default();
            assert!(
                err.contains("tls = \"require\" or \"verify-full\""),
                "{err}"
            );
        }
    }

    #[test]
    fn client_identity_files_are_checked_when_connecting() {
        use rcgen::{CertificateParams, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["client".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let other = KeyPair::generate().expect("key");
        for (name, text) in [
            ("c.pem", cert.pem()),
            ("k.pem", key.serialize_pem()),
            ("other.pem", other.serialize_pem()),
        ] {
            std::fs::write(path(name), text).expect("write");
        }
        let identity = |cert: &str, key: &str| {
            config(&format!(
                "url = \"x://db\"\ntls = \"require\"\ncert_file = {:?}\nkey_file = {:?}",
                path(cert),
                path(key)
            ))
            .client_identity("db")
        };
        let loaded = identity("c.pem", "k.pem").expect("valid").expect("some");
        assert_eq!(loaded.chain.len(), 1);
        assert_eq!(loaded.cert_pem, cert.pem().into_bytes());
        for (cert, key, words) in [
            ("missing.pem", "k.pem", "cert_file"),
            ("k.pem", "k.pem", "no PEM certificate"),
            ("c.pem", "c.pem", "no PEM private key"),
            ("c.pem", "other.pem", "not the key of cert_file"),
        ] {
            let err = identity(cert, key)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(words), "{cert} {key}: {err}");
        }
        let none = config("url = \"x://db\"")
            .client_identity("db")
            .expect("none");
        assert!(none.is_none());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_rules() {
        let url = "url = \"postgres://u:p@db/ops?sslmode=require\"\n";
        let check = |extra: &str| config(&format!("{url}{extra}")).validate(SqlEngine::Postgres);
        assert_eq!(check("table = \"ops.locks\""), Ok(()));
        assert_eq!(
            check("tls = \"verify-full\"\nca_file = \"/ca.pem\""),
            Ok(())
        );
        let url = config("url = \"postgresql://db/ops\"").validate(SqlEngine::Postgres);
        assert_eq!(url, Ok(()));
        let python = |extra: &str| {
            config(&format!(
                "url = \"postgres://db/ops\"\npython_stormlock = true\n{extra}"
            ))
            .python_table_name(SqlEngine::Postgres)
            .map(|t| t.map(|t| t.quoted('"')))
        };
        assert_eq!(python(""), Ok(Some("\"stormlock\"".to_string())));
        assert_eq!(
            python("python_table = \"ops.py_locks\""),
            Ok(Some("\"ops\".\"py_locks\"".to_string()))
        );
        for bad in ["Locks", "a-b", "a.b.c"] {
            let err = python(&format!("python_table = \"{bad}\""))
                .err()
                .unwrap_or_default();
            assert!(err.starts_with("python_table: "), "{bad}: {err}");
        }
        let err = check("python_table = \"locks\"").err().unwrap_or_default();
        assert!(err.starts_with("python_table: "), "{err}");
        let err = config("url = \"mysql://db/ops\"")
            .validate(SqlEngine::Postgres)
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("url: "), "{err}");
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn mysql_rules() {
        let check = |toml: &str| config(toml).validate(SqlEngine::Mysql);
        assert_eq!(check("url = \"mysql://u:p@db:3306/ops\""), Ok(()));
        let python = |extra: &str| {
            config(&format!(
                "url = \"mysql://db/ops\"\npython_stormlock = true\n{extra}"
            ))
            .python_table_name(SqlEngine::Mysql)
            .map(|t| t.map(|t| t.quoted('`')))
        };
        assert_eq!(python(""), Ok(Some("`stormlock`".to_string())));
        // MySQL keeps the case of Python's unquoted name, and takes a
        // database other than the URL's.
        assert_eq!(
            python("python_table = \"Ops.Py_Locks\""),
            Ok(Some("`Ops`.`Py_Locks`".to_string()))
        );
        for bad in ["a-b", "a.b.c", "lo`cks"] {
            let err = python(&format!("python_table = \"{bad}\""))
                .err()
                .unwrap_or_default();
            assert!(err.starts_with("python_table: "), "{bad}: {err}");
        }
        for (toml, key) in [
            ("url = \"mysql://db/ops\"\ntable = \"ops.locks\"", "table"),
            (
                "url = \"mysql://db/ops\"\npython_table = \"stormlock\"",
                "python_table",
            ),
            ("url = \"postgres://db/ops\"", "url"),
            ("url = \"mysql://db/ops?pool_max=x\"", "url"),
        ] {
            let err = check(toml).err().unwrap_or_default();
            assert!(err.starts_with(&format!("{key}: ")), "{toml}: {err}");
        }
    }
}
