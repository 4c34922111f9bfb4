//! `type = "mysql"`: leases in one MySQL or MariaDB table, judged on the
//! server's clock, through a pool of `mysql_async` connections.
//!
//! # Schema
//!
//! One row per resource ([`DDL`]), kept after its lease ends, like the
//! PostgreSQL backend. Resource names are stored as raw UTF-8 bytes
//! (`VARBINARY`), so that matching is exact (no trailing-space padding, no
//! case folding) and order is byte order, which is the daemon's string order.
//! Times are `DATETIME(6)` in UTC: every session sets `time_zone = '+00:00'`.
//!
//! Fences come from a one-row counter table beside the locks table, bumped
//! with `UPDATE … SET v = LAST_INSERT_ID(v + 1)` in a statement of its own
//! just before the granting transaction (MySQL has no sequences), and the
//! grant takes the larger of that number and the row's last fence + 1. The
//! counter row is thus locked for one statement only: a daemon frozen in the
//! middle of an acquisition (SIGSTOP, a VM pause, a half-open connection)
//! holds the lock of its one resource row, never the counter that every
//! acquisition needs. On MariaDB the server ends such a session after
//! 10 s idle inside a transaction (`idle_transaction_timeout`), which frees
//! that row; MySQL has no such setting, and holds it until `wait_timeout`
//! (8 h by default: lower it for the daemon's user, e.g. to 60 s, if the
//! pool's idle connections can be re-opened). The counter lives apart from
//! the lease rows, so deleting old rows (whose leases ended more than a
//! minute ago) never makes a fence go back.
//!
//! Reservation books live in a third table, the locks table's name with
//! `_books`: one row per resource (`VARBINARY`, like the locks table) with
//! the lock core's document (`body`, a `LONGBLOB`) and a `version` bumped on
//! every write. A first write is an `INSERT` of version 1 (a duplicate key:
//! another writer came first), a later one `UPDATE … WHERE version = ` the
//! version it was read at, which wrote when it matched a row. A database set
//! up by hand (`create_table = false`) without that table still serves
//! locks: start-up warns, and the book calls fail with
//! [`BackendError::Config`] naming the table.
//!
//! # Calls
//!
//! Acquire, renew and force-release run one transaction each: the row is read
//! with `SELECT … FOR UPDATE` along with `SYSDATE(6)` (the server's clock
//! when the row lock is held, where `NOW()` would be the statement's start),
//! judged by the same rules as every other backend, and written back. A
//! missing row is first inserted as a free placeholder outside the
//! transaction, so that contenders lock an existing row instead of a gap
//! (gap locks make concurrent inserters deadlock). Release is one `UPDATE`;
//! current, status and list are plain reads against `NOW(6)`.
//!
//! # Python stormlock
//!
//! With `python_stormlock = true`, Python stormlock 0.4.1's table
//! (`python_table`, [`PYTHON_DDL`]) is consulted and written in the same
//! transactions: acquire locks the resource's Python row (`FOR UPDATE`)
//! after its own, refuses while a live Python lock is there (naming its
//! holder), and otherwise writes the lease's mirror there (`lease` = the
//! lease id's 16 bytes, `principal`, `created`, `expires`) before granting,
//! so a Python client and the daemon can never both win. Renew extends the
//! mirror in its transaction (writing it again if it went missing and no
//! Python client took the row); release deletes it right after the lease;
//! force-release deletes the broken lease's mirror, or breaks a live Python
//! lock (deletes its row) when no Stormlock lease holds the resource.
//! `current` reports a live Python lock as held; `list` shows Stormlock's
//! leases only.
//!
//! Python stormlock writes and compares its times with `NOW()` in its
//! sessions' time zone, the server's default (`@@global.time_zone`), while
//! this backend's sessions run in UTC: every statement on Python's table
//! reads the clock as [`PYTHON_NOW`], the server's clock in that zone, and
//! reports Python's times as offsets from it. Those transactions run under
//! READ COMMITTED: no placeholder rows can be put into Python's table (they
//! would be Python's data), and a locking read of a missing row then takes
//! no gap lock, on which acquisitions of neighbouring names would deadlock.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{
    ClientIdentity, Conn, IsolationLevel, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row,
    SslOpts, Transaction, TxOpts, Value,
};

use super::sql::{self, MAX_ATTEMPTS, SqlConfig, SqlEngine, StoredRow, TableName, TlsMode};
use super::{Backend, BackendError, Book, Purpose, Result, Schema};
use crate::lease::{AcquireRequest, Acquisition, Lease, LeaseId, LeaseStatus};

/// The schema, as created on start when `create_table = true`. Operators
/// without DDL rights run it themselves (replacing `stormlock_locks` with the
/// configured table name throughout, in all three table names) and set
/// `create_table = false`; the daemon then needs `SELECT, INSERT, UPDATE` on
/// the three tables (the locks table, its fence counter and its books).
pub const DDL: &str = r#"-- Raw UTF-8 resource names: exact matching, byte order, no padding.
CREATE TABLE IF NOT EXISTS `stormlock_locks` (
    resource       VARBINARY(512) NOT NULL PRIMARY KEY,
    -- Set while a lease is granted; NULL once released or force-released.
    lease_id       CHAR(32) CHARACTER SET ascii NULL,
    principal      TEXT NULL,
    reason         TEXT NULL,
    acquired_at    DATETIME(6) NULL,
    expires_at     DATETIME(6) NULL,
    fence          BIGINT UNSIGNED NOT NULL DEFAULT 0,
    -- The last lease broken by an administrator, who and why.
    evicted_id     CHAR(32) CHARACTER SET ascii NULL,
    evicted_by     TEXT NULL,
    evicted_reason TEXT NULL,
    evicted_at     DATETIME(6) NULL,
    -- The TTL the lease was granted or last renewed with, in milliseconds,
    -- which a renewal that names none keeps.
    ttl_ms         BIGINT UNSIGNED NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- Fences for every resource of the table: one row, never deleted.
CREATE TABLE IF NOT EXISTS `stormlock_locks_fence` (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    v  BIGINT UNSIGNED NOT NULL
) ENGINE = InnoDB;
INSERT IGNORE INTO `stormlock_locks_fence` (id, v) VALUES (1, 0);
-- Reservation books: the lock core's document of each resource's
-- reservations, replaced whole when version is still the one read (never 0;
-- bumped on every write). Rows are never deleted.
CREATE TABLE IF NOT EXISTS `stormlock_locks_books` (
    resource VARBINARY(512) NOT NULL PRIMARY KEY,
    body     LONGBLOB NOT NULL,
    version  BIGINT NOT NULL
) ENGINE = InnoDB;
"#;

/// Python stormlock 0.4.1's table (named by `python_table`, default
/// `stormlock`), which Python stormlock does not create. Resource names are
/// raw bytes (exact matching, like the locks table); times are Python's
/// `NOW()`, in the server's default time zone.
pub const PYTHON_DDL: &str = r#"CREATE TABLE stormlock (
  resource VARBINARY(512) NOT NULL PRIMARY KEY,
  lease BINARY(16) NOT NULL,
  principal TEXT CHARACTER SET utf8mb4 NOT NULL,
  created DATETIME(6) NOT NULL,
  expires DATETIME(6) NOT NULL
) ENGINE = InnoDB;
"#;

/// The server's clock as Python stormlock reads it (`NOW()` in a session of
/// the server's default time zone), from a session that runs in UTC.
/// `CONVERT_TZ` gives `NULL` for a named zone without the time zone tables:
/// checked at start.
const PYTHON_NOW: &str = "CONVERT_TZ(NOW(6), '+00:00', @@global.time_zone)";

/// How long MariaDB lets a session sit idle inside a transaction before it
/// ends the session. A working daemon sends a transaction's statements back
/// to back, well within a second.
const IDLE_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// `[backends.NAME]` with `type = "mysql"` (MySQL 8 or MariaDB 10.3+): the
/// keys both SQL engines share.
pub type MysqlConfig = SqlConfig;

/// Parses a `mysql://` URL as the client will use it, without connecting.
/// The message starts with the key.
pub(super) fn parse_url(url: &str) -> std::result::Result<Opts, String> {
    super::url::split_scheme("url", url, &["mysql"])?;
    Opts::from_url(url).map_err(|e| format!("url: not a valid MySQL URL: {}", sql::describe(&e)))
}

/// Every column of a row, in [`StoredRow`] order.
const COLUMNS: &str = "resource, lease_id, principal, reason, acquired_at, expires_at, fence, \
                       evicted_id, evicted_by, evicted_reason, ttl_ms";

/// The statements of one table, rendered once with its validated name.
struct Statements {
    read: String,
    lock: String,
    placeholder: String,
    bump: String,
    grant: String,
    renew: String,
    force: String,
    release: String,
    list: String,
    /// On the reservation books table.
    books: BookStatements,
    /// With `python_stormlock = true`.
    python: Option<PythonStatements>,
}

/// The statements on the reservation books table, their parameters named in
/// order.
struct BookStatements {
    /// The table, for messages.
    table: TableName,
    /// (resource): its book.
    read: String,
    /// (resource, body): writes version 1; a duplicate key when a book
    /// exists.
    insert: String,
    /// (body, resource, expected version): writes the next version over
    /// `expected`; affects one row when it wrote.
    update: String,
    /// (prefix, its length, prefix, after, after, limit): books in byte
    /// order, as `list`.
    list: String,
    /// Every column, to check the table at start.
    probe: String,
}

impl BookStatements {
    fn new(table: &TableName) -> Self {
        let books = table.books();
        let t = books.quoted('`');
        Self {
            read: format!("SELECT resource, body, version FROM {t} WHERE resource = ?"),
            insert: format!("INSERT INTO {t} (resource, body, version) VALUES (?, ?, 1)"),
            update: format!(
                "UPDATE {t} SET body = ?, version = version + 1 WHERE resource = ? AND version = ?"
            ),
            list: format!(
                "SELECT resource, body, version FROM {t} \
                 WHERE resource >= ? AND LEFT(resource, ?) = ? AND (? IS NULL OR resource > ?) \
                 ORDER BY resource LIMIT ?"
            ),
            probe: format!("SELECT resource, body, version FROM {t} LIMIT 0"),
            table: books,
        }
    }
}

/// The statements on Python stormlock's table, their parameters named in
/// order. Ids travel as their 16 bytes; TTLs in microseconds.
struct PythonStatements {
    /// The table, for messages.
    table: String,
    /// (resource): its row as (lease, principal, µs since `created`, µs
    /// until `expires`, the server's clock in UTC), locked.
    lock: String,
    /// The same, without a lock.
    read: String,
    /// (lease, lease, principal, TTL, resource): makes the existing row the
    /// mirror of the lease, keeping its creation time when it already was.
    claim: String,
    /// (resource, lease, principal, TTL): inserts the mirror of the lease.
    insert: String,
    /// (resource, lease): deletes the row if it holds the lease.
    delete: String,
    /// Every column, to check the table at start.
    probe: String,
    /// Whether [`PYTHON_NOW`] reads (not `NULL`), and the zone it reads.
    clock: String,
}

impl PythonStatements {
    fn new(table: &TableName) -> Self {
        let t = table.quoted('`');
        let row = format!(
            "SELECT lease, principal, TIMESTAMPDIFF(MICROSECOND, created, {PYTHON_NOW}), \
               TIMESTAMPDIFF(MICROSECOND, {PYTHON_NOW}, expires), NOW(6) \
             FROM {t} WHERE resource = ?"
        );
        let expires = format!("DATE_ADD({PYTHON_NOW}, INTERVAL ? MICROSECOND)");
        Self {
            table: table.display(),
            lock: format!("{row} FOR UPDATE"),
            read: row,
            // MySQL assigns left to right: `created` looks at the old lease.
            claim: format!(
                "UPDATE {t} SET created = IF(lease = ?, created, {PYTHON_NOW}), lease = ?, \
                 principal = ?, expires = {expires} WHERE resource = ?"
            ),
            insert: format!(
                "INSERT INTO {t} (resource, lease, principal, created, expires) \
                 VALUES (?, ?, ?, {PYTHON_NOW}, {expires})"
            ),
            delete: format!("DELETE FROM {t} WHERE resource = ? AND lease = ?"),
            probe: format!("SELECT resource, lease, principal, created, expires FROM {t} LIMIT 0"),
            clock: format!("SELECT {PYTHON_NOW} IS NOT NULL, @@global.time_zone"),
        }
    }
}

/// A row of Python stormlock's table, as read with the server's clock.
struct PythonRow {
    /// `lease`: Python's 16 random bytes, or a mirror's lease id.
    id: Vec<u8>,
    principal: String,
    /// Microseconds since `created`.
    age_us: i64,
    /// Microseconds until `expires`; not positive once it has lapsed.
    left_us: i64,
    /// The server's clock.
    now: SystemTime,
}

impl PythonRow {
    /// Whether the row holds the resource for Python stormlock: live, and
    /// not the mirror of `ours` (the last lease granted on the resource,
    /// whose own row decides whether it is current).
    fn holds(&self, ours: Option<&str>) -> bool {
        self.left_us > 0 && ours.and_then(|id| hex::decode(id).ok()).as_ref() != Some(&self.id)
    }

    /// The Python lock as a lease; `None` when `lease` is not 16 bytes.
    fn lease(&self, resource: &str) -> Option<Lease> {
        let micros = |us: i64| Duration::from_micros(us.unsigned_abs());
        let acquired_at = if self.age_us >= 0 {
            self.now.checked_sub(micros(self.age_us))
        } else {
            self.now.checked_add(micros(self.age_us))
        };
        super::python_stormlock_holder(
            resource,
            &self.id,
            self.principal.clone(),
            acquired_at.unwrap_or(self.now),
            self.now + micros(self.left_us),
        )
    }
}

/// What claiming Python stormlock's row for a lease came to.
enum Claim {
    /// The row is the lease's mirror now.
    Claimed,
    /// A live Python lock holds the resource.
    Held(Lease),
    /// A Python client inserted the row meanwhile.
    Raced,
}

impl Statements {
    fn new(table: &TableName, python: Option<&TableName>) -> Self {
        let t = table.quoted('`');
        let fence = table.fence().quoted('`');
        Self {
            python: python.map(PythonStatements::new),
            books: BookStatements::new(table),
            read: format!("SELECT {COLUMNS}, NOW(6) FROM {t} WHERE resource = ?"),
            lock: format!("SELECT {COLUMNS}, SYSDATE(6) FROM {t} WHERE resource = ? FOR UPDATE"),
            placeholder: format!(
                "INSERT INTO {t} (resource) VALUES (?) ON DUPLICATE KEY UPDATE resource = resource"
            ),
            bump: format!("UPDATE {fence} SET v = LAST_INSERT_ID(v + 1) WHERE id = 1"),
            grant: format!(
                "UPDATE {t} SET lease_id = ?, principal = ?, reason = ?, acquired_at = ?, \
                 expires_at = ?, fence = ?, ttl_ms = ? WHERE resource = ?"
            ),
            renew: format!("UPDATE {t} SET expires_at = ?, ttl_ms = ? WHERE resource = ?"),
            force: format!(
                "UPDATE {t} SET lease_id = NULL, evicted_id = ?, evicted_by = ?, \
                 evicted_reason = ?, evicted_at = ? WHERE resource = ?"
            ),
            release: format!(
                "UPDATE {t} SET lease_id = NULL \
                 WHERE resource = ? AND lease_id = ? AND expires_at > NOW(6)"
            ),
            list: format!(
                "SELECT {COLUMNS} FROM {t} \
                 WHERE resource >= ? AND LEFT(resource, ?) = ? AND (? IS NULL OR resource > ?) \
                   AND lease_id IS NOT NULL AND expires_at > NOW(6) \
                 ORDER BY resource LIMIT ?"
            ),
        }
    }
}

/// Why one attempt of a call failed: engine errors are looked at again to
/// decide on a retry; backend errors are final.
enum Fail {
    Engine(mysql_async::Error),
    Backend(BackendError),
}

impl From<mysql_async::Error> for Fail {
    fn from(e: mysql_async::Error) -> Self {
        Self::Engine(e)
    }
}

impl From<BackendError> for Fail {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

/// What one attempt of a call came to.
enum Step<T> {
    Done(T),
    /// The row was missing and has been inserted: read it again.
    Again,
}

type Attempt<T> = std::result::Result<Step<T>, Fail>;

/// A pool of connections to one MySQL or MariaDB database and one locks
/// table.
pub struct MysqlBackend {
    name: String,
    pool: Pool,
    connect_timeout: Duration,
    sql: Statements,
}

impl MysqlBackend {
    /// Validates `config`, connects, and creates or checks the schema. Fails
    /// with [`BackendError::Config`] for invalid settings or a missing or
    /// mismatched table, and [`BackendError::Unavailable`] when the server
    /// cannot be reached within `connect_timeout`.
    pub async fn connect(name: &str, config: &MysqlConfig) -> Result<Self> {
        Self::open(name, config, Purpose::Serve)
            .await
            .map(|(backend, _)| backend)
    }

    /// Like [`MysqlBackend::connect`], for `purpose`: to check, it creates
    /// nothing, and a schema it would create is reported (the `String`)
    /// rather than refused.
    pub async fn open(
        name: &str,
        config: &MysqlConfig,
        purpose: Purpose,
    ) -> Result<(Self, Option<String>)> {
        let refuse = |message: String| BackendError::config(name, message);
        config.validate(SqlEngine::Mysql).map_err(refuse)?;
        let table = config.table_name(SqlEngine::Mysql).map_err(refuse)?;
        let python_table = config.python_table_name(SqlEngine::Mysql).map_err(refuse)?;
        let opts = parse_url(&config.url).map_err(refuse)?;
        let constraints = PoolConstraints::new(0, config.pool_size)
            .ok_or_else(|| BackendError::config(name, "pool_size: must be at least 1"))?;
        let mut builder = OptsBuilder::from_opts(opts)
            .pool_opts(
                PoolOpts::new()
                    .with_constraints(constraints)
                    // Sessions change nothing but what `setup` sets, so the
                    // round trips of a reset on every check-in buy nothing.
                    .with_reset_connection(false),
            )
            // Affected rows count matched rows, so an update that happens to
            // write the same values still reports the row.
            .client_found_rows(true)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            // UTC for NOW()/SYSDATE() and DATETIME; strict mode so that an
            // oversized value fails instead of being silently truncated.
            // MariaDB (10.3+, the `/*M!` comment) also ends a session
            // that sits idle inside a transaction: the row locks of a
            // daemon frozen mid-acquisition are freed after that long.
            .setup(vec![format!(
                "SET time_zone = '+00:00', \
                 sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION' \
                 /*M!100300 , idle_transaction_timeout = {} */",
                IDLE_TRANSACTION_TIMEOUT.as_secs()
            )]);
        if let Some(mode) = config.tls {
            // `validate` allows a client certificate only with `tls` set
            // to `require` or `verify-full`.
            let identity = config.client_identity(name)?.map(|identity| {
                ClientIdentity::new(identity.cert_pem.into(), identity.key_pem.into())
            });
            builder = builder.ssl_opts(ssl_opts(mode, config.ca_file.as_ref(), identity));
            if mode != TlsMode::Disable {
                // mysql_async builds its rustls configuration on the
                // process-wide default provider.
                crate::tls::install_crypto_provider();
            }
        }
        let backend = Self {
            name: name.to_string(),
            pool: Pool::new(builder),
            connect_timeout: config.connect_timeout,
            sql: Statements::new(&table, python_table.as_ref()),
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
        let mut conn = self.conn().await?;
        let books = &self.sql.books;
        let server = match conn.query_drop(&books.probe).await {
            Ok(()) => return Ok(None),
            Err(mysql_async::Error::Server(server)) if is_schema_error(&server) => server,
            Err(e) => return Err(self.error(e)),
        };
        // ER_NO_SUCH_TABLE: what a check reports rather than refuses.
        if schema == Schema::Inspect && server.code == 1146 {
            return Ok(Some(Schema::missing(&format!(
                "the reservation books table {:?}",
                books.table.display()
            ))));
        }
        let message = sql::books_unusable_message(&books.table, &server.message);
        if purpose == Purpose::Serve {
            tracing::warn!(backend = self.name.as_str(), "{message}");
        }
        Ok(Some(message))
    }

    /// An error of a statement on the reservation books table: a table that
    /// is missing or may not be used is the operator's to fix (see
    /// [`MysqlBackend::check_books`]); other errors are looked at again to
    /// decide on a retry.
    fn book_fail(&self, e: mysql_async::Error) -> Fail {
        match &e {
            mysql_async::Error::Server(server) if is_schema_error(server) => Fail::Backend(
                sql::books_unusable(&self.name, &self.sql.books.table, &server.message),
            ),
            _ => Fail::Engine(e),
        }
    }

    /// A row of the books table as a book.
    fn book(&self, mut row: Row) -> Result<Book> {
        sql::book(
            &self.name,
            self.column(&mut row, 0)?,
            self.column(&mut row, 1)?,
            self.column(&mut row, 2)?,
        )
    }

    async fn try_write_book(&self, resource: &str, expected: u64, body: &[u8]) -> Attempt<bool> {
        let books = &self.sql.books;
        let mut conn = self.conn().await?;
        if expected == 0 {
            return match conn
                .exec_drop(&books.insert, (resource.as_bytes(), body))
                .await
            {
                Ok(()) => Ok(Step::Done(true)),
                // ER_DUP_ENTRY: another writer came first.
                Err(mysql_async::Error::Server(e)) if e.code == 1062 => Ok(Step::Done(false)),
                Err(e) => Err(self.book_fail(e)),
            };
        }
        // A version beyond BIGINT was never written: nothing to match.
        let Some(expected) = sql::stored_version(expected) else {
            return Ok(Step::Done(false));
        };
        conn.exec_drop(&books.update, (body, resource.as_bytes(), expected))
            .await
            .map_err(|e| self.book_fail(e))?;
        // The version changes with every write, so a matched row is a
        // changed row (with or without CLIENT_FOUND_ROWS).
        Ok(Step::Done(conn.affected_rows() == 1))
    }

    /// With `python_stormlock = true`, checks that Python stormlock's table
    /// exists with its columns and that the server's clock reads in
    /// Python's time zone: the setting asks for exclusion with Python
    /// stormlock, which either would silently lose.
    async fn check_python_table(&self) -> Result<()> {
        let Some(python) = &self.sql.python else {
            return Ok(());
        };
        let mut conn = self.conn().await?;
        conn.query_drop(&python.probe).await.map_err(|e| match &e {
            mysql_async::Error::Server(server) if server.state.starts_with("42") => {
                BackendError::config(
                    &self.name,
                    format!(
                        "python_stormlock = true, but Python stormlock's table {:?} cannot be \
                         read: {}; create it (see MIGRATING.md) or set python_table to the \
                         table Python stormlock uses",
                        python.table, server.message
                    ),
                )
            }
            _ => self.error(e),
        })?;
        let clock: Option<(Option<i64>, Option<String>)> = conn
            .query_first(&python.clock)
            .await
            .map_err(|e| self.error(e))?;
        match clock {
            Some((Some(1), _)) => Ok(()),
            other => Err(BackendError::config(
                &self.name,
                format!(
                    "python_stormlock = true, but the server cannot read its clock in its \
                     time_zone {:?} (CONVERT_TZ gives NULL), in which Python stormlock \
                     writes its times: load the server's time zone tables \
                     (mariadb-tzinfo-to-sql, mysql_tzinfo_to_sql) or give it a numeric \
                     time_zone",
                    other.and_then(|(_, zone)| zone).unwrap_or_default()
                ),
            )),
        }
    }

    /// Creates the schema if allowed, then checks that the table has every
    /// column and the fence counter its row, so that a mismatch shows at
    /// start rather than at the first acquisition. With [`Schema::Inspect`],
    /// a missing table or counter row is what it returns.
    async fn prepare_schema(&self, table: &TableName, schema: Schema) -> Result<Option<String>> {
        let mut conn = self.conn().await?;
        let shown = table.display();
        let schema_error = |e: mysql_async::Error, doing: &str| match &e {
            mysql_async::Error::Server(server) if server.state.starts_with("42") => {
                BackendError::config(
                    &self.name,
                    format!(
                        "table {shown:?}: {doing} failed: {}; create it with the documented \
                         DDL or set create_table = true",
                        server.message
                    ),
                )
            }
            _ => self.error(e),
        };
        if schema == Schema::Create {
            let ddl = sql::render_ddl(DDL, table, '`');
            conn.query_drop(ddl).await.map_err(|e| match &e {
                mysql_async::Error::Server(server) if server.state.starts_with("42") => {
                    BackendError::config(
                        &self.name,
                        format!(
                            "cannot create table {shown:?}: {}; create it with the documented \
                             DDL and set create_table = false",
                            server.message
                        ),
                    )
                }
                _ => self.error(e),
            })?;
        }
        // ER_NO_SUCH_TABLE: what a check reports rather than refuses.
        let missing = |e: &mysql_async::Error| {
            schema == Schema::Inspect
                && matches!(e, mysql_async::Error::Server(server) if server.code == 1146)
        };
        // Tables created before leases kept their TTL lack `ttl_ms`
        // (ER_BAD_FIELD_ERROR).
        let column = format!("SELECT ttl_ms FROM {} LIMIT 0", table.quoted('`'));
        if let Err(mysql_async::Error::Server(server)) = conn.query_drop(column).await
            && server.code == 1054
        {
            let alter = format!(
                "ALTER TABLE {} ADD COLUMN ttl_ms BIGINT UNSIGNED NULL",
                table.quoted('`')
            );
            match schema {
                Schema::Create => match conn.query_drop(&alter).await {
                    // ER_DUP_FIELDNAME: another daemon starting added it.
                    Ok(()) => {}
                    Err(mysql_async::Error::Server(server)) if server.code == 1060 => {}
                    Err(e) => {
                        return Err(BackendError::config(
                            &self.name,
                            format!(
                                "cannot add the column ttl_ms to table {shown:?}: {e}; run {alter}"
                            ),
                        ));
                    }
                },
                Schema::Inspect => {
                    return Ok(Some(Schema::missing(&format!(
                        "the column ttl_ms of table {shown:?}"
                    ))));
                }
                Schema::Require => {
                    return Err(BackendError::config(
                        &self.name,
                        format!(
                            "table {shown:?} lacks the column ttl_ms, in which this version keeps \
                             the TTL of each lease (a renewal without a TTL keeps it): run \
                             {alter}, or set create_table = true"
                        ),
                    ));
                }
            }
        }
        let probe = format!("SELECT {COLUMNS} FROM {} LIMIT 0", table.quoted('`'));
        match conn.query_drop(probe).await {
            Err(e) if missing(&e) => return Ok(Some(Schema::missing(&format!("table {shown:?}")))),
            read => read.map_err(|e| schema_error(e, "reading the table"))?,
        }
        let counter = format!("SELECT v FROM {} WHERE id = 1", table.fence().quoted('`'));
        let found: Option<u64> = match conn.query_first(counter).await {
            Err(e) if missing(&e) => None,
            read => read.map_err(|e| schema_error(e, "reading the fence counter"))?,
        };
        if found.is_none() && schema == Schema::Inspect {
            return Ok(Some(Schema::missing(&format!(
                "the fence counter {}",
                table.fence().display()
            ))));
        }
        if found.is_none() {
            return Err(BackendError::config(
                &self.name,
                format!(
                    "table {shown:?}: the fence counter {} has no row with id = 1; create it \
                     with the documented DDL or set create_table = true",
                    table.fence().display()
                ),
            ));
        }
        Ok(None)
    }

    async fn conn(&self) -> Result<Conn> {
        match tokio::time::timeout(self.connect_timeout, self.pool.get_conn()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(BackendError::unavailable(
                &self.name,
                format!(
                    "no connection: {}{}",
                    sql::describe(&e),
                    // The server says the same when the password is wrong
                    // and when the account requires a certificate (`REQUIRE
                    // X509`, `SUBJECT`, `ISSUER`) that was not presented.
                    if matches!(&e, mysql_async::Error::Server(s) if s.code == 1045) {
                        " (wrong user or password, or the account requires a client \
                         certificate: cert_file and key_file)"
                    } else {
                        ""
                    }
                ),
            )),
            Err(_) => Err(BackendError::unavailable(
                &self.name,
                format!("no connection within {:?}", self.connect_timeout),
            )),
        }
    }

    /// Runs `attempt` until it is done, again after a deadlock or when it
    /// asks to, a bounded number of times.
    async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        for round in 1..=MAX_ATTEMPTS {
            match attempt().await {
                Ok(Step::Done(value)) => return Ok(value),
                Ok(Step::Again) => {}
                Err(Fail::Engine(e)) if is_retryable(&e) && round < MAX_ATTEMPTS => {
                    sql::pause_before_retry(round).await;
                }
                Err(Fail::Engine(e)) => return Err(self.error(e)),
                Err(Fail::Backend(e)) => return Err(e),
            }
        }
        Err(BackendError::unavailable(
            &self.name,
            format!("{what} did not settle within {MAX_ATTEMPTS} attempts"),
        ))
    }

    /// Maps an engine error: the connection or server going away is
    /// [`BackendError::Unavailable`], anything the server refused is
    /// [`BackendError::Internal`] (user input never reaches SQL text).
    fn error(&self, e: mysql_async::Error) -> BackendError {
        let message = sql::describe(&e);
        match &e {
            mysql_async::Error::Server(server) if !is_unavailable(server.code) => {
                BackendError::internal(&self.name, message)
            }
            _ => BackendError::unavailable(&self.name, message),
        }
    }

    fn stored(&self, row: &mut Row) -> Result<StoredRow> {
        Ok(StoredRow {
            resource: self.column(row, 0)?,
            lease_id: self.column(row, 1)?,
            principal: self.column(row, 2)?,
            reason: self.column(row, 3)?,
            acquired_at: self.time(row, 4)?,
            expires_at: self.time(row, 5)?,
            fence: self.column(row, 6)?,
            evicted_id: self.column(row, 7)?,
            evicted_by: self.column(row, 8)?,
            evicted_reason: self.column(row, 9)?,
            ttl: self
                .column::<Option<u64>>(row, 10)?
                .map(Duration::from_millis),
        })
    }

    /// The row and the clock column that follows it.
    fn stored_with_clock(&self, mut row: Row) -> Result<(StoredRow, SystemTime)> {
        let stored = self.stored(&mut row)?;
        let now = self
            .time(&mut row, 11)?
            .ok_or_else(|| BackendError::internal(&self.name, "server clock read as NULL"))?;
        Ok((stored, now))
    }

    fn column<T: FromValue>(&self, row: &mut Row, index: usize) -> Result<T> {
        match row.take_opt(index) {
            Some(Ok(value)) => Ok(value),
            Some(Err(e)) => Err(BackendError::internal(
                &self.name,
                format!("unexpected value in column {index}: {e}"),
            )),
            None => Err(BackendError::internal(
                &self.name,
                format!("row has no column {index}"),
            )),
        }
    }

    fn time(&self, row: &mut Row, index: usize) -> Result<Option<SystemTime>> {
        let value: Value = self.column(row, index)?;
        from_datetime(value)
            .map_err(|e| BackendError::internal(&self.name, format!("column {index}: {e}")))
    }

    fn datetime(&self, time: SystemTime) -> Result<Value> {
        to_datetime(time).map_err(|e| BackendError::internal(&self.name, e))
    }

    /// The resource's row and the server's clock, read without locks.
    async fn read(&self, resource: &str) -> Result<Option<(StoredRow, SystemTime)>> {
        let mut conn = self.conn().await?;
        let row: Option<Row> = conn
            .exec_first(&self.sql.read, (resource.as_bytes(),))
            .await
            .map_err(|e| self.error(e))?;
        row.map(|row| self.stored_with_clock(row)).transpose()
    }

    /// Inserts a free row for `resource` unless one exists, so that the next
    /// attempt can lock it.
    async fn placeholder(&self, conn: &mut Conn, resource: &str) -> std::result::Result<(), Fail> {
        conn.exec_drop(&self.sql.placeholder, (resource.as_bytes(),))
            .await?;
        Ok(())
    }

    /// The next number of the fence counter, in a statement of its own.
    async fn take_fence(&self, conn: &mut Conn) -> std::result::Result<u64, Fail> {
        let bumped = conn.exec_iter(&self.sql.bump, ()).await?;
        let (counted, fence) = (bumped.affected_rows(), bumped.last_insert_id());
        bumped.drop_result().await?;
        match (counted, fence) {
            (1, Some(fence)) => Ok(fence),
            _ => Err(BackendError::internal(
                &self.name,
                "the fence counter has no row with id = 1",
            )
            .into()),
        }
    }

    /// Options of the transactions that read and write a resource's rows:
    /// READ COMMITTED when they also touch Python stormlock's table (see the
    /// module docs), the server's default otherwise.
    fn tx_opts(&self) -> TxOpts {
        let mut opts = TxOpts::default();
        if self.sql.python.is_some() {
            opts.with_isolation_level(IsolationLevel::ReadCommitted);
        }
        opts
    }

    /// The row of `resource` in Python stormlock's table, read with
    /// `statement` (locking or not).
    async fn python_row<Q: Queryable>(
        &self,
        on: &mut Q,
        statement: &str,
        resource: &str,
    ) -> std::result::Result<Option<PythonRow>, Fail> {
        let row: Option<Row> = on.exec_first(statement, (resource.as_bytes(),)).await?;
        let Some(mut row) = row else {
            return Ok(None);
        };
        let principal: Vec<u8> = self.column(&mut row, 1)?;
        let offset = |row: &mut Row, index| -> Result<i64> {
            let value: Option<i64> = self.column(row, index)?;
            value.ok_or_else(|| {
                BackendError::internal(
                    &self.name,
                    format!("a time in Python stormlock's table of {resource:?} reads as NULL"),
                )
            })
        };
        Ok(Some(PythonRow {
            id: self.column(&mut row, 0)?,
            principal: String::from_utf8_lossy(&principal).into_owned(),
            age_us: offset(&mut row, 2)?,
            left_us: offset(&mut row, 3)?,
            now: self
                .time(&mut row, 4)?
                .ok_or_else(|| BackendError::internal(&self.name, "server clock read as NULL"))?,
        }))
    }

    /// A row that [`PythonRow::holds`] the resource, as its lease.
    fn python_holder(&self, resource: &str, row: &PythonRow) -> Result<Lease> {
        row.lease(resource).ok_or_else(|| {
            BackendError::internal(
                &self.name,
                format!(
                    "Python stormlock's table {:?}: the lease of {resource:?} is not 16 bytes",
                    self.sql.python.as_ref().map_or("", |p| p.table.as_str())
                ),
            )
        })
    }

    /// Makes the resource's row in Python stormlock's table the mirror of
    /// lease `id` (holder `principal`, for `ttl`), unless a live Python lock
    /// holds it. `ours` is the last lease granted on the resource, whose
    /// mirror may be overwritten. Runs inside `tx`, which holds the row of
    /// the locks table.
    async fn claim_python(
        &self,
        tx: &mut Transaction<'_>,
        python: &PythonStatements,
        (resource, id, principal): (&str, &LeaseId, &str),
        ttl: Duration,
        ours: Option<&str>,
    ) -> std::result::Result<Claim, Fail> {
        let bytes = hex::decode(id.expose())
            .map_err(|e| BackendError::internal(&self.name, format!("lease id: {e}")))?;
        let ttl = sql::ttl_micros(ttl);
        match self.python_row(tx, &python.lock, resource).await? {
            Some(row) if row.holds(ours) => Ok(Claim::Held(self.python_holder(resource, &row)?)),
            Some(_) => {
                tx.exec_drop(
                    &python.claim,
                    (&bytes, &bytes, principal, ttl, resource.as_bytes()),
                )
                .await?;
                Ok(Claim::Claimed)
            }
            None => {
                let inserted = tx
                    .exec_drop(
                        &python.insert,
                        (resource.as_bytes(), &bytes, principal, ttl),
                    )
                    .await;
                match inserted {
                    Ok(()) => Ok(Claim::Claimed),
                    // Duplicate key: a Python client inserted it since the read.
                    Err(mysql_async::Error::Server(e)) if e.code == 1062 => Ok(Claim::Raced),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// A failed attempt as this backend's error.
    fn settle(&self, fail: Fail) -> BackendError {
        match fail {
            Fail::Engine(e) => self.error(e),
            Fail::Backend(e) => e,
        }
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Attempt<Acquisition> {
        let mut conn = self.conn().await?;
        // A number from the shared counter, taken in a statement of its own
        // (autocommit): the counter row is locked for that one statement, so
        // a daemon that stalls mid-transaction (SIGSTOP, a VM pause, a dead
        // peer) blocks its own resource, never everybody's. Under the row
        // lock below, the fence is also above the row's last fence, so it
        // increases per resource whatever order numbers were taken in.
        let taken = self.take_fence(&mut conn).await?;
        let mut tx = conn.start_transaction(self.tx_opts()).await?;
        let row: Option<Row> = tx
            .exec_first(&self.sql.lock, (req.resource.as_bytes(),))
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            self.placeholder(&mut conn, &req.resource).await?;
            return Ok(Step::Again);
        };
        let (stored, now) = self.stored_with_clock(row)?;
        if let Some(holder) = stored.record(&self.name)?.live(now) {
            let holder = holder.clone();
            tx.rollback().await?;
            return Ok(Step::Done(Acquisition::contended(&req.id, holder)));
        }
        if let Some(python) = &self.sql.python {
            let lease = (req.resource.as_str(), &req.id, req.principal.as_str());
            let ours = stored.lease_id.as_deref();
            match self
                .claim_python(&mut tx, python, lease, req.ttl, ours)
                .await?
            {
                Claim::Claimed => {}
                Claim::Held(holder) => {
                    tx.rollback().await?;
                    return Ok(Step::Done(Acquisition::contended(&req.id, holder)));
                }
                Claim::Raced => {
                    tx.rollback().await?;
                    return Ok(Step::Again);
                }
            }
        }
        let fence = taken.max(stored.fence.saturating_add(1));
        let ttl = Duration::from_micros(sql::ttl_micros(req.ttl).unsigned_abs());
        let lease = Lease {
            resource: req.resource.clone(),
            id: req.id.clone(),
            principal: req.principal.clone(),
            reason: req.reason.clone(),
            acquired_at: now,
            expires_at: now + ttl,
            fence,
            ttl: Some(ttl),
        };
        tx.exec_drop(
            &self.sql.grant,
            (
                lease.id.expose(),
                &lease.principal,
                &lease.reason,
                self.datetime(lease.acquired_at)?,
                self.datetime(lease.expires_at)?,
                lease.fence,
                millis(ttl),
                lease.resource.as_bytes(),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(Step::Done(Acquisition::Granted(lease)))
    }

    async fn try_renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Attempt<Lease> {
        let mut conn = self.conn().await?;
        let mut tx = conn.start_transaction(self.tx_opts()).await?;
        let row: Option<Row> = tx
            .exec_first(&self.sql.lock, (resource.as_bytes(),))
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(BackendError::NotCurrent { evicted: None }.into());
        };
        let (stored, now) = self.stored_with_clock(row)?;
        let ttl = Duration::from_micros(sql::ttl_micros(ttl).unsigned_abs());
        let renewed = match stored.record(&self.name)?.renew(id, ttl, now) {
            Ok(lease) => lease,
            Err(e) => {
                tx.rollback().await?;
                return Err(e.into());
            }
        };
        tx.exec_drop(
            &self.sql.renew,
            (
                self.datetime(renewed.expires_at)?,
                millis(ttl),
                resource.as_bytes(),
            ),
        )
        .await?;
        if let Some(python) = &self.sql.python {
            // Extends the mirror, or writes it again if it went missing;
            // a Python client that took the row meanwhile keeps it.
            let lease = (resource, id, renewed.principal.as_str());
            self.claim_python(&mut tx, python, lease, ttl, Some(id.expose()))
                .await?;
        }
        tx.commit().await?;
        Ok(Step::Done(renewed))
    }

    async fn try_force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Attempt<Option<Lease>> {
        let mut conn = self.conn().await?;
        let mut tx = conn.start_transaction(self.tx_opts()).await?;
        let row: Option<Row> = tx
            .exec_first(&self.sql.lock, (resource.as_bytes(),))
            .await?;
        let stored = row.map(|row| self.stored_with_clock(row)).transpose()?;
        if let Some((stored, now)) = &stored
            && let Some(broken) = stored
                .record(&self.name)?
                .force_release(actor, reason, *now)
        {
            tx.exec_drop(
                &self.sql.force,
                (
                    broken.id.expose(),
                    actor,
                    reason,
                    self.datetime(*now)?,
                    resource.as_bytes(),
                ),
            )
            .await?;
            if let Some(python) = &self.sql.python {
                let mirror = hex::decode(broken.id.expose())
                    .map_err(|e| BackendError::internal(&self.name, format!("lease id: {e}")))?;
                tx.exec_drop(&python.delete, (resource.as_bytes(), mirror))
                    .await?;
            }
            tx.commit().await?;
            return Ok(Step::Done(Some(broken)));
        }
        // No Stormlock lease: a live Python lock is broken instead.
        if let Some(python) = &self.sql.python {
            let ours = stored.as_ref().and_then(|(s, _)| s.lease_id.as_deref());
            if let Some(row) = self.python_row(&mut tx, &python.lock, resource).await?
                && row.holds(ours)
            {
                let holder = self.python_holder(resource, &row)?;
                tx.exec_drop(&python.delete, (resource.as_bytes(), &row.id))
                    .await?;
                tx.commit().await?;
                return Ok(Step::Done(Some(holder)));
            }
        }
        tx.rollback().await?;
        Ok(Step::Done(None))
    }
}

/// Errors of the schema (SQLSTATE class 42: a missing table or column, a
/// missing privilege) rather than of the connection or the data.
fn is_schema_error(server: &mysql_async::ServerError) -> bool {
    server.state.starts_with("42")
}

fn is_retryable(e: &mysql_async::Error) -> bool {
    // 1213: deadlock; 1020: MariaDB's "record has changed since last read"
    // under snapshot isolation.
    matches!(e, mysql_async::Error::Server(server) if matches!(server.code, 1213 | 1020))
}

/// Server errors that mean "not now" rather than "never": too many
/// connections, shutdown, lock wait timeout, conflicts that outlasted the
/// retries, killed connections, and a read-only server (a replica after
/// failover).
fn is_unavailable(code: u16) -> bool {
    matches!(
        code,
        1020 | 1040 | 1053 | 1205 | 1213 | 1290 | 1792 | 1836 | 1927 | 4031
    )
}

/// The driver's TLS options for `mode`, with the private CA of `ca_file`
/// (`verify-full` only) and a client certificate (`identity`).
fn ssl_opts(
    mode: TlsMode,
    ca_file: Option<&PathBuf>,
    identity: Option<ClientIdentity>,
) -> Option<SslOpts> {
    let opts = match mode {
        TlsMode::Disable => return None,
        TlsMode::Require => SslOpts::default()
            .with_danger_accept_invalid_certs(true)
            .with_danger_skip_domain_validation(true),
        TlsMode::VerifyFull => match ca_file {
            Some(path) => SslOpts::default()
                .with_root_certs(vec![path.clone().into()])
                .with_disable_built_in_roots(true),
            None => SslOpts::default(),
        },
    };
    Some(opts.with_client_identity(identity))
}

/// A `DATETIME(6)` value (UTC) as a point in time.
fn from_datetime(value: Value) -> std::result::Result<Option<SystemTime>, String> {
    match value {
        Value::NULL => Ok(None),
        Value::Date(year, month, day, hour, minute, second, micros) => {
            let month = time::Month::try_from(month).map_err(|e| e.to_string())?;
            let date = time::Date::from_calendar_date(i32::from(year), month, day)
                .map_err(|e| e.to_string())?;
            let time = time::Time::from_hms_micro(hour, minute, second, micros)
                .map_err(|e| e.to_string())?;
            Ok(Some(
                time::PrimitiveDateTime::new(date, time).assume_utc().into(),
            ))
        }
        other => Err(format!("expected a DATETIME, got {other:?}")),
    }
}

/// A point in time as a `DATETIME(6)` value (UTC).
fn to_datetime(time: SystemTime) -> std::result::Result<Value, String> {
    let utc = time::OffsetDateTime::from(time);
    let year =
        u16::try_from(utc.year()).map_err(|_| format!("year {} out of range", utc.year()))?;
    Ok(Value::Date(
        year,
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.microsecond(),
    ))
}

#[async_trait]
impl Backend for MysqlBackend {
    async fn acquire(&self, req: &AcquireRequest) -> Result<Acquisition> {
        self.retrying("acquire", || self.try_acquire(req)).await
    }

    async fn release(&self, resource: &str, id: &LeaseId) -> Result<bool> {
        let mut conn = self.conn().await?;
        conn.exec_drop(&self.sql.release, (resource.as_bytes(), id.expose()))
            .await
            .map_err(|e| self.error(e))?;
        let released = conn.affected_rows() > 0;
        if let Some(python) = &self.sql.python {
            // After the lease, so that Python never finds the resource free
            // while the lease is current; a lapsed lease's mirror goes too.
            let mirror = hex::decode(id.expose())
                .map_err(|e| BackendError::internal(&self.name, format!("lease id: {e}")))?;
            conn.exec_drop(&python.delete, (resource.as_bytes(), mirror))
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(released)
    }

    async fn renew(&self, resource: &str, id: &LeaseId, ttl: Duration) -> Result<Lease> {
        self.retrying("renew", || self.try_renew(resource, id, ttl))
            .await
    }

    async fn current(&self, resource: &str) -> Result<Option<Lease>> {
        let read = self.read(resource).await?;
        if let Some((row, now)) = &read
            && let Some(lease) = row.record(&self.name)?.live(*now)
        {
            return Ok(Some(lease.clone()));
        }
        let Some(python) = &self.sql.python else {
            return Ok(None);
        };
        let mut conn = self.conn().await?;
        let ours = read.as_ref().and_then(|(row, _)| row.lease_id.as_deref());
        match self
            .python_row(&mut conn, &python.read, resource)
            .await
            .map_err(|e| self.settle(e))?
        {
            Some(row) if row.holds(ours) => self.python_holder(resource, &row).map(Some),
            _ => Ok(None),
        }
    }

    async fn status(&self, resource: &str, id: &LeaseId) -> Result<LeaseStatus> {
        Ok(match self.read(resource).await? {
            Some((row, now)) => row.record(&self.name)?.status(id, now),
            None => LeaseStatus::NotCurrent { evicted: None },
        })
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Lease>> {
        let mut conn = self.conn().await?;
        let after = after.map(str::as_bytes);
        let rows: Vec<Row> = conn
            .exec(
                &self.sql.list,
                (
                    prefix.as_bytes(),
                    prefix.len() as u64,
                    prefix.as_bytes(),
                    after,
                    after,
                    sql::limit(limit),
                ),
            )
            .await
            .map_err(|e| self.error(e))?;
        rows.into_iter()
            .map(|mut row| {
                self.stored(&mut row)?.lease(&self.name)?.ok_or_else(|| {
                    BackendError::internal(&self.name, "listed a row without a lease")
                })
            })
            .collect()
    }

    async fn force_release(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Lease>> {
        self.retrying("force-release", || {
            self.try_force_release(resource, actor, reason)
        })
        .await
    }

    async fn book(&self, resource: &str) -> Result<Option<Book>> {
        let mut conn = self.conn().await?;
        let row: Option<Row> = conn
            .exec_first(&self.sql.books.read, (resource.as_bytes(),))
            .await
            .map_err(|e| self.settle(self.book_fail(e)))?;
        row.map(|row| self.book(row)).transpose()
    }

    async fn write_book(&self, resource: &str, expected: u64, body: &[u8]) -> Result<bool> {
        self.retrying("write_book", || {
            self.try_write_book(resource, expected, body)
        })
        .await
    }

    async fn books(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Book>> {
        let mut conn = self.conn().await?;
        let after = after.map(str::as_bytes);
        let rows: Vec<Row> = conn
            .exec(
                &self.sql.books.list,
                (
                    prefix.as_bytes(),
                    prefix.len() as u64,
                    prefix.as_bytes(),
                    after,
                    after,
                    sql::limit(limit),
                ),
            )
            .await
            .map_err(|e| self.settle(self.book_fail(e)))?;
        rows.into_iter().map(|row| self.book(row)).collect()
    }

    async fn health(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        conn.query_drop("SELECT 1").await.map_err(|e| self.error(e))
    }
}

/// `ttl` in whole milliseconds, as the `ttl_ms` column holds it.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_round_trip_to_the_microsecond() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_164_237_123_456);
        let value = to_datetime(t).map_err(|e| e.to_string());
        assert_eq!(
            value,
            Ok(Value::Date(2025, 11, 26, 13, 37, 17, 123_456)),
            "UTC calendar fields"
        );
        let back = value.and_then(from_datetime);
        assert_eq!(back, Ok(Some(t)));
        assert_eq!(from_datetime(Value::NULL), Ok(None));
        assert!(from_datetime(Value::Int(3)).is_err());
    }
}
