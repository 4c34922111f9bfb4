//! `type = "postgres"`: leases in one PostgreSQL table, judged on the
//! server's clock (`now()`), through a pool of `tokio-postgres` connections.
//!
//! # Schema
//!
//! One row per resource ([`DDL`]), kept after its lease ends: it holds the
//! last eviction record, and `lease_id` is set only while a lease is granted.
//! A lease is live when `lease_id IS NOT NULL AND expires_at > now()`.
//! Fences come from a sequence beside the table, drawn while the row is
//! locked, so they increase per resource across releases, expiries,
//! force-releases, restarts and deleted rows alike.
//!
//! Reservation books live in a second table, the locks table's name with
//! `_books` (on the table part of `schema.table`): one row per resource with
//! the lock core's document (`body`) and a `version` bumped on every write.
//! A first write is `INSERT … ON CONFLICT DO NOTHING` of version 1, a later
//! one `UPDATE … WHERE version = ` the version it was read at; either
//! reports through `RETURNING` whether it wrote. A database set up by hand
//! (`create_table = false`) without that table still serves locks: start-up
//! warns, and the book calls fail with [`BackendError::Config`] naming the
//! table.
//!
//! # Calls
//!
//! Every call is one or two single statements in autocommit mode, each atomic
//! on its own under READ COMMITTED:
//!
//! - acquire: `UPDATE … WHERE` the row is free `RETURNING` the new lease
//!   (`nextval` is evaluated on the locked, latest row version). When nothing
//!   was updated, one statement inserts a free placeholder row if none exists
//!   and returns the live holder; an empty answer (new row, or the holder left
//!   in between) means: try the update again.
//! - release / renew / force-release: one `UPDATE … WHERE` the lease is
//!   current, reporting through `RETURNING` whether it was.
//! - current / status: the row and the server's `now()`, judged by the same
//!   rules as every other backend; list: a range scan in byte order
//!   (`COLLATE "C"`) with a literal prefix test (`starts_with`, no `LIKE`).
//!
//! # Python stormlock
//!
//! With `python_stormlock = true`, Python stormlock 0.4.1's table
//! (`python_table`, [`PYTHON_DDL`]) is consulted and written too: acquire
//! first claims the resource's Python row in a transaction (an upsert that
//! succeeds only when the row is missing, expired or already this lease's,
//! and then holds the row lock), grants in the same transaction, and rolls
//! both back when either is held; so a Python client and the daemon can
//! never both win. The claimed row is the lease's mirror: its `lease` is the
//! lease id as a UUID, `principal` the holder, `expires` the lease's
//! expiry. Renew extends it right after the lease (so it never lapses
//! first); release and force-release delete it when it is the lease's.
//! Force-release of a resource no Stormlock lease holds deletes a live
//! Python lock's row (by its id), as Python's release does. `current` reports a live
//! Python row as held; `list` shows Stormlock's leases only.
//!
//! # Notifications
//!
//! Every acquire, renew, release and force-release also calls `pg_notify` in
//! its `RETURNING` clause (no extra round trip; delivered on commit) on the
//! table's channel, `stormlock_` followed by 16 hex digits of the SHA-256 of
//! the configured table name. Each daemon `LISTEN`s on one extra connection,
//! outside the pool, and wakes its waiters and watchers at once. Expiry
//! sends nothing: the daemons poll for it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Manager, Pool, Runtime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Row;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::sql::{self, MAX_ATTEMPTS, SqlConfig, SqlEngine, StoredRow, TableName, TlsMode};
use super::{Backend, BackendError, Book, ChangeStream, Purpose, Result, Schema};
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};
use futures::StreamExt;
use tokio_postgres::AsyncMessage;

/// Attempts of one acquisition whose resource keeps changing hands between
/// its two statements (free when the grant was tried, held again, or free
/// again, when the holder was read): the first [`MAX_ATTEMPTS`] at once,
/// the rest after a growing pause, all within the daemon's backend timeout.
const SETTLE_ATTEMPTS: u32 = 2 * MAX_ATTEMPTS;

/// The schema, as created on start when `create_table = true`. Operators
/// without DDL rights run it themselves (replacing `stormlock_locks` with the
/// configured table name throughout, also in `stormlock_locks_fence` and
/// `stormlock_locks_books`) and set `create_table = false`; the daemon then
/// needs `SELECT, INSERT, UPDATE` on the table and on its books table, and
/// `USAGE` on the sequence.
pub const DDL: &str = r#"-- Fences for every resource of the table. A sequence, not a column, so that
-- deleting old rows can never make a fence go back. CACHE 1 (the default):
-- with a larger cache, connections hand out values out of order.
CREATE SEQUENCE IF NOT EXISTS "stormlock_locks_fence" AS BIGINT CACHE 1;
CREATE TABLE IF NOT EXISTS "stormlock_locks" (
    -- Byte-order collation: listing order equals the daemon's string order.
    resource       TEXT COLLATE "C" PRIMARY KEY,
    -- Set while a lease is granted; NULL once released or force-released.
    lease_id       TEXT,
    principal      TEXT,
    reason         TEXT,
    acquired_at    TIMESTAMPTZ,
    expires_at     TIMESTAMPTZ,
    fence          BIGINT NOT NULL DEFAULT 0,
    -- The last lease broken by an administrator, who and why.
    evicted_id     TEXT,
    evicted_by     TEXT,
    evicted_reason TEXT,
    evicted_at     TIMESTAMPTZ,
    -- The TTL the lease was granted or last renewed with, in milliseconds,
    -- which a renewal that names none keeps.
    ttl_ms         BIGINT
);
-- Reservation books: the lock core's document of each resource's
-- reservations, replaced whole when version is still the one read (never 0;
-- bumped on every write). Rows are never deleted.
CREATE TABLE IF NOT EXISTS "stormlock_locks_books" (
    resource TEXT COLLATE "C" PRIMARY KEY,
    body     BYTEA NOT NULL,
    version  BIGINT NOT NULL
);
"#;

/// Python stormlock 0.4.1's table (named by `python_table`, default
/// `stormlock`), which Python stormlock does not create. Its timestamps have
/// no time zone: both tools write and compare them in their session's
/// `TimeZone`, which must therefore be the same for every client.
pub const PYTHON_DDL: &str = r#"CREATE TABLE stormlock (
  resource text PRIMARY KEY,
  lease uuid NOT NULL,
  principal text NOT NULL,
  created timestamp without time zone NOT NULL DEFAULT CURRENT_TIMESTAMP,
  expires timestamp without time zone NOT NULL
);
"#;

/// `[backends.NAME]` with `type = "postgres"`: the keys both SQL engines
/// share.
pub type PostgresConfig = SqlConfig;

/// Parses a `postgres://` or `postgresql://` URL as the client will use it,
/// without connecting. The message starts with the key.
pub(super) fn parse_url(url: &str) -> std::result::Result<tokio_postgres::Config, String> {
    super::url::split_scheme("url", url, &["postgres", "postgresql"])?;
    url.parse()
        .map_err(|e| format!("url: not a valid PostgreSQL URL: {}", sql::describe(&e)))
}

/// Every column of a row, in [`StoredRow`] order.
const COLUMNS: &str = "resource, lease_id, principal, reason, acquired_at, expires_at, fence, \
                       evicted_id, evicted_by, evicted_reason, ttl_ms";

/// The statements of one table, rendered once with its validated name.
struct Statements {
    /// The `LISTEN`/`NOTIFY` channel of the table.
    channel: String,
    grant: String,
    hold: String,
    release: String,
    renew: String,
    read: String,
    list: String,
    force: String,
    /// On the reservation books table.
    books: BookStatements,
    /// With `python_stormlock = true`.
    python: Option<PythonStatements>,
}

/// The statements on the reservation books table.
struct BookStatements {
    /// The table, for messages.
    table: TableName,
    /// (resource): its book.
    read: String,
    /// (resource, body): writes version 1 unless a book exists; returns a
    /// row when it wrote.
    insert: String,
    /// (resource, body, expected version): writes the next version over
    /// `expected`; returns a row when it wrote.
    update: String,
    /// (prefix, after, limit): books in byte order, as `list`.
    list: String,
    /// Every column, to check the table at start.
    probe: String,
}

impl BookStatements {
    fn new(table: &TableName) -> Self {
        let books = table.books();
        let t = books.quoted('"');
        Self {
            read: format!("SELECT resource, body, version FROM {t} WHERE resource = $1"),
            insert: format!(
                "INSERT INTO {t} (resource, body, version) VALUES ($1, $2, 1) \
                 ON CONFLICT (resource) DO NOTHING RETURNING version"
            ),
            update: format!(
                "UPDATE {t} SET body = $2, version = version + 1 \
                 WHERE resource = $1 AND version = $3 RETURNING version"
            ),
            list: format!(
                "SELECT resource, body, version FROM {t} \
                 WHERE resource COLLATE \"C\" >= $1 AND starts_with(resource, $1) \
                   AND ($2::text IS NULL OR resource COLLATE \"C\" > $2) \
                 ORDER BY resource COLLATE \"C\" LIMIT $3"
            ),
            probe: format!("SELECT resource, body, version FROM {t} LIMIT 0"),
            table: books,
        }
    }
}

/// The statements on Python stormlock's table. A lease id travels as text
/// and is cast to `uuid`, which takes 32 hex digits as they are.
struct PythonStatements {
    /// The table, for messages.
    table: String,
    /// Claims the row for lease $2 (principal $3, TTL $4 µs): inserts it, or
    /// overwrites it when it has expired or is already this lease's
    /// (keeping its creation time then). Returns a row when claimed.
    claim: String,
    /// The live row as (id bytes, principal, created, expires, now).
    holder: String,
    /// Deletes the row of lease $2.
    release: String,
    /// Every column, to check the table at start.
    probe: String,
}

impl PythonStatements {
    fn new(table: &TableName) -> Self {
        let t = table.quoted('"');
        let ttl = "$4::bigint * interval '1 microsecond'";
        Self {
            table: table.display(),
            claim: format!(
                "INSERT INTO {t} AS t (resource, lease, principal, created, expires) \
                 VALUES ($1, $2::text::uuid, $3, current_timestamp, current_timestamp + {ttl}) \
                 ON CONFLICT (resource) DO UPDATE SET lease = excluded.lease, \
                   principal = excluded.principal, expires = excluded.expires, \
                   created = CASE WHEN t.lease = excluded.lease THEN t.created \
                     ELSE excluded.created END \
                 WHERE t.lease = excluded.lease OR t.expires <= current_timestamp \
                 RETURNING 1"
            ),
            holder: format!(
                "SELECT uuid_send(lease), principal, created::timestamptz, expires::timestamptz, \
                   current_timestamp FROM {t} WHERE resource = $1 AND expires > current_timestamp"
            ),
            release: format!(
                "DELETE FROM {t} WHERE resource = $1 AND lease = $2::text::uuid RETURNING resource"
            ),
            probe: format!("SELECT resource, lease, principal, created, expires FROM {t} LIMIT 0"),
        }
    }
}

impl Statements {
    fn new(table: &TableName, python: Option<&TableName>) -> Self {
        let t = table.quoted('"');
        // The sequence's name travels as a regclass literal; it is validated
        // and quoted, so it cannot contain a single quote.
        let fence = format!("nextval('{}')", table.fence().quoted('"'));
        let live = "lease_id IS NOT NULL AND expires_at > now()";
        // Every change tells the daemons listening on the table's channel;
        // PostgreSQL delivers the notification when the statement commits.
        let channel = table.channel();
        let notify = format!("pg_notify('{channel}', resource)");
        let ttl = "$5::bigint * interval '1 microsecond'";
        Self {
            grant: format!(
                "UPDATE {t} SET lease_id = $2, principal = $3, reason = $4, acquired_at = now(), \
                 expires_at = now() + {ttl}, fence = {fence}, ttl_ms = $5::bigint / 1000 \
                 WHERE resource = $1 AND (lease_id IS NULL OR expires_at <= now()) \
                 RETURNING {COLUMNS}, {notify}"
            ),
            hold: format!(
                "WITH placeholder AS (\
                   INSERT INTO {t} (resource) VALUES ($1) ON CONFLICT (resource) DO NOTHING) \
                 SELECT {COLUMNS} FROM {t} WHERE resource = $1 AND {live}"
            ),
            release: format!(
                "UPDATE {t} SET lease_id = NULL \
                 WHERE resource = $1 AND lease_id = $2 AND expires_at > now() \
                 RETURNING fence, {notify}"
            ),
            renew: format!(
                "UPDATE {t} SET expires_at = now() + {}, ttl_ms = $3::bigint / 1000 \
                 WHERE resource = $1 AND lease_id = $2 AND expires_at > now() \
                 RETURNING {COLUMNS}, {notify}",
                ttl.replace("$5", "$3")
            ),
            read: format!("SELECT {COLUMNS}, now() FROM {t} WHERE resource = $1"),
            list: format!(
                "SELECT {COLUMNS} FROM {t} \
                 WHERE resource COLLATE \"C\" >= $1 AND starts_with(resource, $1) \
                   AND ($2::text IS NULL OR resource COLLATE \"C\" > $2) AND {live} \
                 ORDER BY resource COLLATE \"C\" LIMIT $3"
            ),
            // RETURNING shows the new row, where evicted_id is the old
            // lease_id; the lease's other columns are left as they were.
            force: format!(
                "UPDATE {t} SET lease_id = NULL, evicted_id = lease_id, evicted_by = $2, \
                   evicted_reason = $3, evicted_at = now() \
                 WHERE resource = $1 AND {live} \
                 RETURNING resource, evicted_id, principal, reason, acquired_at, expires_at, \
                   fence, evicted_id, evicted_by, evicted_reason, ttl_ms, {notify}"
            ),
            channel,
            books: BookStatements::new(table),
            python: python.map(PythonStatements::new),
        }
    }
}

/// Why a table without `ttl_ms` (made by an older version) is refused when
/// the daemon may not change it.
fn missing_ttl_column(backend: &str, table: &str, alter: &str) -> BackendError {
    BackendError::config(
        backend,
        format!(
            "table {table:?} lacks the column ttl_ms, in which this version keeps the TTL of \
             each lease (a renewal without a TTL keeps it): run {alter}, or set \
             create_table = true"
        ),
    )
}

/// A pool of connections to one PostgreSQL database and one locks table.
pub struct PostgresBackend {
    name: String,
    pool: Pool,
    sql: Statements,
    /// For the dedicated `LISTEN` connection, outside the pool.
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    connect_timeout: Duration,
}

impl PostgresBackend {
    /// Validates `config`, connects, and creates or checks the schema. Fails
    /// with [`BackendError::Config`] for invalid settings or a missing or
    /// mismatched table, and [`BackendError::Unavailable`] when the server
    /// cannot be reached within `connect_timeout`.
    pub async fn connect(name: &str, config: &PostgresConfig) -> Result<Self> {
        Self::open(name, config, Purpose::Serve)
            .await
            .map(|(backend, _)| backend)
    }

    /// Like [`PostgresBackend::connect`], for `purpose`: to check, it
    /// creates nothing, and a schema it would create is reported (the
    /// `String`) rather than refused.
    pub async fn open(
        name: &str,
        config: &PostgresConfig,
        purpose: Purpose,
    ) -> Result<(Self, Option<String>)> {
        let refuse = |message: String| BackendError::config(name, message);
        config.validate(SqlEngine::Postgres).map_err(refuse)?;
        let table = config.table_name(SqlEngine::Postgres).map_err(refuse)?;
        let python_table = config
            .python_table_name(SqlEngine::Postgres)
            .map_err(refuse)?;
        let mut pg = parse_url(&config.url).map_err(refuse)?;
        pg.connect_timeout(config.connect_timeout);
        // Notices a peer that vanished without closing the connection.
        pg.keepalives_idle(Duration::from_secs(30));
        if pg.get_application_name().is_none() {
            pg.application_name("stormlockd");
        }
        // Unset: the URL's `sslmode` stands (tokio-postgres defaults to prefer).
        if let Some(mode) = config.tls {
            pg.ssl_mode(match mode {
                TlsMode::Disable => SslMode::Disable,
                TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
            });
        }
        let tls = tls_connector(name, config)?;
        let pool = Pool::builder(Manager::new(pg.clone(), tls.clone()))
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| BackendError::config(name, format!("connection pool: {e}")))?;
        let backend = Self {
            name: name.to_string(),
            pool,
            sql: Statements::new(&table, python_table.as_ref()),
            pg,
            tls,
            connect_timeout: config.connect_timeout,
        };
        let schema = Schema::new(config.create_table, purpose);
        let pending = backend.prepare_schema(&table, schema).await?;
        let books = backend.check_books(schema, purpose).await?;
        backend.check_python_table().await?;
        Ok((backend, pending.or(books)))
    }

    /// Checks the reservation books table, which [`DDL`] creates with the
    /// locks table. A database set up by hand before reservations existed
    /// lacks it: that stops nothing (its locks keep working), start-up warns
    /// and the book calls fail naming it. Returns what a check reports.
    async fn check_books(&self, schema: Schema, purpose: Purpose) -> Result<Option<String>> {
        let client = self.client().await?;
        let books = &self.sql.books;
        let e = match client.query(&books.probe, &[]).await {
            Ok(_) => return Ok(None),
            Err(e) if is_schema_error(&e) => e,
            Err(e) => return Err(self.error(e)),
        };
        if schema == Schema::Inspect && e.code() == Some(&SqlState::UNDEFINED_TABLE) {
            return Ok(Some(Schema::missing(&format!(
                "the reservation books table {:?}",
                books.table.display()
            ))));
        }
        let message = sql::books_unusable_message(&books.table, &sql::describe(&e));
        if purpose == Purpose::Serve {
            tracing::warn!(backend = self.name.as_str(), "{message}");
        }
        Ok(Some(message))
    }

    /// Runs one statement on the reservation books table: a table that is
    /// missing or may not be used is the operator's to fix (see
    /// [`PostgresBackend::check_books`]).
    async fn book_query(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        self.query_mapped(statement, params, |e| {
            if is_schema_error(&e) {
                sql::books_unusable(&self.name, &self.sql.books.table, &sql::describe(&e))
            } else {
                self.error(e)
            }
        })
        .await
    }

    /// A row of the books table as a book.
    fn book(&self, row: &Row) -> Result<Book> {
        let unexpected = |e: tokio_postgres::Error| {
            BackendError::internal(
                &self.name,
                format!("unexpected book row shape: {}", sql::describe(&e)),
            )
        };
        sql::book(
            &self.name,
            row.try_get(0).map_err(unexpected)?,
            row.try_get(1).map_err(unexpected)?,
            row.try_get(2).map_err(unexpected)?,
        )
    }

    /// Creates the schema if allowed, then checks that the table has every
    /// column and the sequence exists, so that a mismatch shows at start
    /// rather than at the first acquisition. With [`Schema::Inspect`], a
    /// missing table or sequence is what it returns.
    async fn prepare_schema(&self, table: &TableName, schema: Schema) -> Result<Option<String>> {
        let mut client = self.client().await?;
        let shown = table.display();
        let schema_error = |e: tokio_postgres::Error, doing: &str| match e.code() {
            Some(code) if code.code().starts_with("42") => BackendError::config(
                &self.name,
                format!(
                    "table {shown:?}: {doing} failed: {}; create it with the documented DDL \
                     or set create_table = true",
                    sql::describe(&e)
                ),
            ),
            _ => self.error(e),
        };
        if schema == Schema::Create {
            let ddl = sql::render_ddl(DDL, table, '"');
            let created = async {
                let tx = client.transaction().await?;
                // Daemons starting together would otherwise race on creating
                // the same table (a unique violation in the catalog).
                let key = format!("stormlock schema {shown}");
                tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])
                    .await?;
                tx.batch_execute(&ddl).await?;
                tx.commit().await
            }
            .await;
            created.map_err(|e| match e.code() {
                Some(code) if code.code().starts_with("42") => BackendError::config(
                    &self.name,
                    format!(
                        "cannot create table {shown:?}: {}; create it with the documented DDL \
                         and set create_table = false",
                        sql::describe(&e)
                    ),
                ),
                _ => self.error(e),
            })?;
        }
        // Tables created before leases kept their TTL lack `ttl_ms`.
        let column = format!("SELECT ttl_ms FROM {} LIMIT 0", table.quoted('"'));
        if let Err(e) = client.query(&column, &[]).await
            && e.code() == Some(&SqlState::UNDEFINED_COLUMN)
        {
            let alter = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS ttl_ms BIGINT",
                table.quoted('"')
            );
            match schema {
                Schema::Create => client.batch_execute(&alter).await.map_err(|e| {
                    BackendError::config(
                        &self.name,
                        format!(
                            "cannot add the column ttl_ms to table {shown:?}: {}; run {alter}",
                            sql::describe(&e)
                        ),
                    )
                })?,
                Schema::Inspect => {
                    return Ok(Some(Schema::missing(&format!(
                        "the column ttl_ms of table {shown:?}"
                    ))));
                }
                Schema::Require => return Err(missing_ttl_column(&self.name, &shown, &alter)),
            }
        }
        let probe = format!("SELECT {COLUMNS} FROM {} LIMIT 0", table.quoted('"'));
        match client.query(&probe, &[]).await {
            Err(e) if schema == Schema::Inspect && e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                return Ok(Some(Schema::missing(&format!("table {shown:?}"))));
            }
            read => read.map_err(|e| schema_error(e, "reading the table"))?,
        };
        let sequence = table.fence().quoted('"');
        let cache: Option<i64> = client
            .query_opt(
                "SELECT seqcache FROM pg_sequence WHERE seqrelid = to_regclass($1)",
                &[&sequence],
            )
            .await
            .and_then(|row| row.map(|row| row.try_get(0)).transpose())
            .map_err(|e| schema_error(e, "looking up the fence sequence"))?;
        match cache {
            None if schema == Schema::Inspect => Ok(Some(Schema::missing(&format!(
                "the fence sequence {sequence}"
            )))),
            None => Err(BackendError::config(
                &self.name,
                format!(
                    "table {shown:?}: the fence sequence {sequence} does not exist; create it \
                     with the documented DDL or set create_table = true"
                ),
            )),
            // Each connection would draw from its own cached block, and a
            // later grant could get a smaller fence than an earlier one.
            Some(cache) if cache > 1 => Err(BackendError::config(
                &self.name,
                format!(
                    "table {shown:?}: the fence sequence {sequence} has CACHE {cache}; fences \
                     must come in order, so run ALTER SEQUENCE {sequence} CACHE 1"
                ),
            )),
            Some(_) => Ok(None),
        }
    }

    /// With `python_stormlock = true`, checks that Python stormlock's table
    /// exists with its columns: the setting asks for exclusion with it, which
    /// a missing table would silently lose.
    async fn check_python_table(&self) -> Result<()> {
        let Some(python) = &self.sql.python else {
            return Ok(());
        };
        let client = self.client().await?;
        client.query(&python.probe, &[]).await.map_err(|e| match e.code() {
            Some(code) if code.code().starts_with("42") => BackendError::config(
                &self.name,
                format!(
                    "python_stormlock = true, but Python stormlock's table {:?} cannot be read: \
                     {}; create it (see MIGRATING.md) or set python_table to the table Python \
                     stormlock uses",
                    python.table,
                    sql::describe(&e)
                ),
            ),
            _ => self.error(e),
        })?;
        Ok(())
    }

    /// The live Python stormlock lock on `resource`, if any.
    async fn python_holder(&self, resource: &str) -> Result<Option<Lease>> {
        let Some(python) = &self.sql.python else {
            return Ok(None);
        };
        let rows = self.query(&python.holder, &[&resource]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let unexpected = |e: tokio_postgres::Error| {
            BackendError::internal(
                &self.name,
                format!(
                    "unexpected row in {:?}: {}",
                    python.table,
                    sql::describe(&e)
                ),
            )
        };
        let id: Vec<u8> = row.try_get(0).map_err(unexpected)?;
        let principal: String = row.try_get(1).map_err(unexpected)?;
        let created: SystemTime = row.try_get(2).map_err(unexpected)?;
        let expires: SystemTime = row.try_get(3).map_err(unexpected)?;
        super::python_stormlock_holder(resource, &id, principal, created, expires)
            .map(Some)
            .ok_or_else(|| {
                BackendError::internal(
                    &self.name,
                    format!("{:?}: lease is not a UUID", python.table),
                )
            })
    }

    /// Acquire with `python_stormlock = true`: claim Python's row and grant in
    /// one transaction, or report whichever holder is there.
    async fn acquire_with_python(
        &self,
        req: &AcquireRequest,
        python: &PythonStatements,
    ) -> Result<Acquisition> {
        let ttl = sql::ttl_micros(req.ttl);
        let mut attempt = 0;
        while attempt < MAX_ATTEMPTS {
            attempt += 1;
            let mut in_use = InUse {
                client: Some(self.client().await?),
                since: std::time::Instant::now(),
                answered: false,
            };
            let outcome = async {
                let tx = in_use.get_mut().transaction().await?;
                let claim = tx.prepare_cached(&python.claim).await?;
                let id = req.id.expose();
                let claimed = tx
                    .query(&claim, &[&req.resource, &id, &req.principal, &ttl])
                    .await?;
                if claimed.is_empty() {
                    return Ok(None);
                }
                let grant = tx.prepare_cached(&self.sql.grant).await?;
                let params: [&(dyn ToSql + Sync); 5] =
                    [&req.resource, &id, &req.principal, &req.reason, &ttl];
                let granted = tx.query(&grant, &params).await?;
                if granted.is_empty() {
                    // Dropped without commit: the claim is rolled back.
                    return Ok(None);
                }
                tx.commit().await?;
                Ok::<_, tokio_postgres::Error>(granted.into_iter().next())
            }
            .await;
            in_use.answered = true;
            drop(in_use);
            match outcome {
                Ok(Some(row)) => return Ok(Acquisition::Granted(self.lease(&row)?)),
                Ok(None) => {}
                Err(e) if is_retryable(&e) && attempt < MAX_ATTEMPTS => {
                    sql::pause_before_retry(attempt).await;
                    continue;
                }
                Err(e) => return Err(self.error(e)),
            }
            // Stormlock's holder first: its mirror is the Python row.
            let holder = self.query(&self.sql.hold, &[&req.resource]).await?;
            if let Some(row) = holder.first() {
                return Ok(Acquisition::contended(&req.id, self.lease(row)?));
            }
            if let Some(holder) = self.python_holder(&req.resource).await? {
                return Ok(Acquisition::contended(&req.id, holder));
            }
        }
        Err(BackendError::unavailable(
            &self.name,
            format!(
                "{:?} changed hands too often to settle within {MAX_ATTEMPTS} attempts",
                req.resource
            ),
        ))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| {
            BackendError::unavailable(&self.name, format!("no connection: {}", sql::describe(&e)))
        })
    }

    /// Runs one statement, again after a deadlock or serialization failure.
    async fn query(&self, statement: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.query_mapped(statement, params, |e| self.error(e))
            .await
    }

    /// [`PostgresBackend::query`], with the statement's final error turned
    /// into this backend's by `error`.
    async fn query_mapped(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
        error: impl Fn(tokio_postgres::Error) -> BackendError,
    ) -> Result<Vec<Row>> {
        let mut attempt = 0;
        loop {
            let mut in_use = InUse {
                client: Some(self.client().await?),
                since: std::time::Instant::now(),
                answered: false,
            };
            let result = async {
                let client = in_use.get();
                let prepared = client.prepare_cached(statement).await?;
                client.query(&prepared, params).await
            }
            .await;
            in_use.answered = true;
            match result {
                Ok(rows) => return Ok(rows),
                Err(e) if is_retryable(&e) && attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    sql::pause_before_retry(attempt).await;
                }
                Err(e) => return Err(error(e)),
            }
        }
    }

    /// Maps an error of a statement: the connection or server going away is
    /// [`BackendError::Unavailable`], anything the server refused is
    /// [`BackendError::Internal`] (user input never reaches SQL text).
    fn error(&self, e: tokio_postgres::Error) -> BackendError {
        let message = sql::describe(&e);
        match e.code() {
            Some(code) if !is_unavailable(code) => BackendError::internal(&self.name, message),
            _ => BackendError::unavailable(&self.name, message),
        }
    }

    fn stored(&self, row: &Row) -> Result<StoredRow> {
        let unexpected = |e: tokio_postgres::Error| {
            BackendError::internal(
                &self.name,
                format!("unexpected row shape: {}", sql::describe(&e)),
            )
        };
        let fence: i64 = row.try_get(6).map_err(unexpected)?;
        Ok(StoredRow {
            resource: row.try_get(0).map_err(unexpected)?,
            lease_id: row.try_get(1).map_err(unexpected)?,
            principal: row.try_get(2).map_err(unexpected)?,
            reason: row.try_get(3).map_err(unexpected)?,
            acquired_at: row.try_get(4).map_err(unexpected)?,
            expires_at: row.try_get(5).map_err(unexpected)?,
            fence: u64::try_from(fence).map_err(|_| {
                BackendError::internal(&self.name, format!("negative fence {fence}"))
            })?,
            evicted_id: row.try_get(7).map_err(unexpected)?,
            evicted_by: row.try_get(8).map_err(unexpected)?,
            evicted_reason: row.try_get(9).map_err(unexpected)?,
            ttl: row
                .try_get::<_, Option<i64>>(10)
                .map_err(unexpected)?
                .map(|ms| Duration::from_millis(ms.unsigned_abs())),
        })
    }

    /// The lease a statement's `RETURNING` row describes.
    fn lease(&self, row: &Row) -> Result<Lease> {
        self.stored(row)?.lease(&self.name)?.ok_or_else(|| {
            BackendError::internal(&self.name, "statement returned a row without a lease")
        })
    }

    /// The resource's row and the server's clock, when the row exists.
    async fn read(&self, resource: &str) -> Result<Option<(StoredRow, SystemTime)>> {
        let rows = self.query(&self.sql.read, &[&resource]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let now: SystemTime = row.try_get(11).map_err(|e| {
            BackendError::internal(&self.name, format!("server clock: {}", sql::describe(&e)))
        })?;
        Ok(Some((self.stored(row)?, now)))
    }
}

/// Errors of the schema (SQLSTATE class 42: a missing table or column, a
/// missing privilege) rather than of the connection or the data.
fn is_schema_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|code| code.code().starts_with("42"))
}

fn is_retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|code| {
        *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// Server errors that mean "not now" rather than "never": connection
/// problems, shutdowns, too many clients, conflicts that outlasted the
/// retries, and a server that has just become a read-only standby.
fn is_unavailable(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || code.code().starts_with("40")
        || code.code().starts_with("57P")
        || code.code().starts_with("53")
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
        if let Some(python) = &self.sql.python {
            return self.acquire_with_python(req, python).await;
        }
        let ttl = sql::ttl_micros(req.ttl);
        for attempt in 0..SETTLE_ATTEMPTS {
            // Holders that come and go between our two statements, many
            // times in a row: step out of their rhythm for a moment.
            if attempt >= MAX_ATTEMPTS {
                sql::pause_before_retry(attempt - MAX_ATTEMPTS).await;
            }
            let granted = self
                .query(
                    &self.sql.grant,
                    &[
                        &req.resource,
                        &req.id.expose(),
                        &req.principal,
                        &req.reason,
                        &ttl,
                    ],
                )
                .await?;
            if let Some(row) = granted.first() {
                return Ok(Acquisition::Granted(self.lease(row)?));
            }
            let holder = self.query(&self.sql.hold, &[&req.resource]).await?;
            if let Some(row) = holder.first() {
                return Ok(Acquisition::contended(&req.id, self.lease(row)?));
            }
        }
        Err(BackendError::unavailable(
            &self.name,
            format!(
                "{:?} changed hands too often to settle within {SETTLE_ATTEMPTS} attempts",
                req.resource
            ),
        ))
    }

    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        if let Some(python) = &self.sql.python {
            self.query(&python.release, &[&resource, &id.expose()])
                .await?;
        }
        let rows = self
            .query(&self.sql.release, &[&resource, &id.expose()])
            .await?;
        Ok(!rows.is_empty())
    }

    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        let ttl = sql::ttl_micros(ttl);
        let rows = self
            .query(&self.sql.renew, &[&resource, &id.expose(), &ttl])
            .await?;
        if let Some(row) = rows.first() {
            let lease = self.lease(row)?;
            if let Some(python) = &self.sql.python {
                // Extends the mirror (a moment after the lease, never
                // before), or writes it again if it went missing, unless a
                // Python client holds the row now.
                self.query(
                    &python.claim,
                    &[&resource, &id.expose(), &lease.principal, &ttl],
                )
                .await?;
            }
            return Ok(lease);
        }
        let evicted = match self.read(resource).await? {
            Some((row, _)) => row.record(&self.name)?.evicted.filter(|e| &e.id == id),
            None => None,
        };
        Err(BackendError::NotCurrent { evicted })
    }

    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        let lease = match self.read(resource).await? {
            Some((row, now)) => row.record(&self.name)?.live(now).cloned(),
            None => None,
        };
        match lease {
            Some(lease) => Ok(Some(lease)),
            None => self.python_holder(resource).await,
        }
    }

    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        Ok(match self.read(resource).await? {
            Some((row, now)) => row.record(&self.name)?.status(id, now),
            None => LeaseStatus::NotCurrent { evicted: None },
        })
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>> {
        let rows = self
            .query(&self.sql.list, &[&prefix, &after, &sql::limit(limit)])
            .await?;
        rows.iter().map(|row| self.lease(row)).collect()
    }

    async fn force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Lease>> {
        let rows = self
            .query(&self.sql.force, &[&resource, &actor, &reason])
            .await?;
        let broken = rows.first().map(|row| self.lease(row)).transpose()?;
        let Some(python) = &self.sql.python else {
            return Ok(broken);
        };
        if let Some(lease) = &broken {
            self.query(&python.release, &[&resource, &lease.id.expose()])
                .await?;
            return Ok(broken);
        }
        // No Stormlock lease: a Python stormlock lock is broken as
        // Python's release would (its row deleted, by its own id, so a lock
        // Python took again meanwhile stays).
        let Some(held) = self.python_holder(resource).await? else {
            return Ok(None);
        };
        let deleted = self
            .query(&python.release, &[&resource, &held.id.expose()])
            .await?;
        Ok((!deleted.is_empty()).then_some(held))
    }

    async fn book(&self, resource: &str) -> Result<Option<Book>> {
        let rows = self.book_query(&self.sql.books.read, &[&resource]).await?;
        rows.first().map(|row| self.book(row)).transpose()
    }

    async fn write_book(&self, resource: &str, expected: u64, body: &[u8]) -> Result<bool> {
        let books = &self.sql.books;
        let rows = if expected == 0 {
            self.book_query(&books.insert, &[&resource, &body]).await?
        } else {
            // A version beyond BIGINT was never written: nothing to match.
            let Some(expected) = sql::stored_version(expected) else {
                return Ok(false);
            };
            self.book_query(&books.update, &[&resource, &body, &expected])
                .await?
        };
        Ok(!rows.is_empty())
    }

    async fn books(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Book>> {
        let rows = self
            .book_query(&self.sql.books.list, &[&prefix, &after, &sql::limit(limit)])
            .await?;
        rows.iter().map(|row| self.book(row)).collect()
    }

    async fn health(&self) -> Result<()> {
        self.query("SELECT 1", &[]).await.map(drop)
    }

    async fn subscribe(&self) -> Result<Option<ChangeStream>> {
        let connected = tokio::time::timeout(self.connect_timeout, async {
            let (client, mut connection) = self.pg.connect(self.tls.clone()).await?;
            // The connection delivers notifications only while it is
            // polled; a task drives it and forwards them, and ends (closing
            // the stream) when the connection does.
            let (tx, rx) = tokio::sync::mpsc::channel::<String>(1024);
            tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if let AsyncMessage::Notification(n) = message
                        && tx.send(n.payload().to_string()).await.is_err()
                    {
                        break;
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN \"{}\"", self.sql.channel))
                .await?;
            Ok::<_, tokio_postgres::Error>((client, rx))
        })
        .await;
        let (client, rx) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(self.error(e)),
            Err(_) => {
                return Err(BackendError::unavailable(
                    &self.name,
                    format!("cannot LISTEN within {:?}", self.connect_timeout),
                ));
            }
        };
        // The client lives as long as the stream: dropping it closes the
        // connection and ends the subscription.
        Ok(Some(
            futures::stream::unfold((rx, client), |(mut rx, client)| async move {
                let resource = rx.recv().await?;
                Some((resource, (rx, client)))
            })
            .boxed(),
        ))
    }
}

/// The TLS connector for the configured mode. It is only used when the
/// connection's `sslmode` asks for TLS.
fn tls_connector(name: &str, config: &PostgresConfig) -> Result<MakeRustlsConnect> {
    // Explicit provider: the process may link more than one rustls backend,
    // and then there is no unambiguous default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BackendError::internal(name, format!("TLS setup: {e}")))?;
    let builder = match config.tls {
        Some(TlsMode::VerifyFull) => {
            builder.with_root_certificates(roots(name, config.ca_file.as_deref())?)
        }
        // `require`, or `sslmode=prefer|require` in the URL: encrypted but
        // unauthenticated, as libpq does without a root certificate.
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider))),
    };
    // `validate` allows a client certificate only with `tls` set to
    // `require` or `verify-full`.
    let client = match config.client_identity(name)? {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(|e| BackendError::config(name, format!("cert_file: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(client))
}

fn roots(name: &str, ca_file: Option<&std::path::Path>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let Some(path) = ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let refuse =
        |why: String| BackendError::config(name, format!("ca_file {}: {why}", path.display()));
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| refuse(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| refuse(e.to_string()))?;
        roots.add(cert).map_err(|e| refuse(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(refuse("no PEM certificate found".to_string()));
    }
    Ok(roots)
}

/// Accepts any server certificate but still checks the handshake signatures:
/// `require` mode, which encrypts without authenticating the server.
#[derive(Debug)]
struct AnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A pooled connection in use. Dropped before its call was answered (the
/// daemon's `backend_timeout` cancelled it) after
/// [`super::SILENT_CONNECTION`], the connection is taken out of the pool and
/// closed instead of going back to serve the next call.
struct InUse {
    client: Option<deadpool_postgres::Object>,
    since: std::time::Instant,
    answered: bool,
}

impl InUse {
    fn get(&self) -> &deadpool_postgres::Object {
        self.client
            .as_ref()
            .expect("the connection is taken only when InUse is dropped")
    }

    fn get_mut(&mut self) -> &mut deadpool_postgres::Object {
        self.client
            .as_mut()
            .expect("the connection is taken only when InUse is dropped")
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if !self.answered
            && self.since.elapsed() >= super::SILENT_CONNECTION
            && let Some(client) = self.client.take()
        {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}
