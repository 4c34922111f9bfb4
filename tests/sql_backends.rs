//! PostgreSQL and MySQL/MariaDB backends beyond the conformance suite:
//! configuration checks, the documented schema, fences that survive deleted
//! rows, and behaviour while the engine is down, frozen or unreachable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stormlock::backend::{Backend, BackendError, WithTimeout};
use stormlock::lease::{Acquisition, Lease, LeaseId};

use crate::conformance::request;

/// The bound the failure tests put on each call, as the daemon would.
const CALL_TIMEOUT: Duration = Duration::from_millis(1_500);

/// Slack on top of a timeout for scheduling on a busy machine.
const SLACK: Duration = Duration::from_millis(1_500);

/// How long an engine that is back may take before calls succeed again.
const RECOVERY: Duration = Duration::from_secs(5);

/// A name unique to this test run, usable as a table, schema or database.
fn unique_name(what: &str) -> String {
    format!("{what}_{}", &LeaseId::generate().expose()[..12])
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

async fn granted(backend: &dyn Backend, resource: &str) -> Lease {
    match backend.acquire(&request(resource, "alice", 60)).await {
        Ok(Acquisition::Granted(lease)) => lease,
        other => panic!("expected {resource} to be granted, got {other:?}"),
    }
}

/// Asserts that `call` fails with `Unavailable` within the timeout and slack.
async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, BackendError>>,
) {
    let started = Instant::now();
    let result = call.await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(BackendError::Unavailable { .. })),
        "{what}: expected Unavailable, got {result:?}"
    );
    assert!(
        elapsed < CALL_TIMEOUT + SLACK,
        "{what}: took {elapsed:?}, bound {CALL_TIMEOUT:?} + {SLACK:?}"
    );
}

/// Polls the health check until it passes, for at most [`RECOVERY`].
async fn assert_recovers(backend: &dyn Backend) {
    let started = Instant::now();
    let mut last = None;
    for _ in 0..200 {
        match backend.health().await {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
        if started.elapsed() > RECOVERY {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not recovered within {RECOVERY:?}: {last:?}");
}

/// Asserts that `result` is a configuration error whose message names every
/// one of `words`.
fn assert_config_error<T: std::fmt::Debug>(result: Result<T, BackendError>, words: &[&str]) {
    match result {
        Err(e @ BackendError::Config { .. }) => {
            let message = e.to_string();
            for word in words {
                assert!(message.contains(word), "{message:?} should name {word:?}");
            }
        }
        other => panic!("expected a configuration error naming {words:?}, got {other:?}"),
    }
}

/// Thaws the engine when dropped, so that a failing assertion does not
/// leave it stopped.
struct Thaw<'a>(&'a crate::support::PrivateEngine);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

/// Table names that must be refused before anything reaches the engine.
const BAD_TABLES: &[&str] = &[
    "",
    "locks; DROP TABLE x",
    "locks;--",
    "1locks",
    "lo\"cks",
    "lo`cks",
    "lo'cks",
    "a-b",
    "löcks",
    "a b",
    "a.b.c",
    "x234567890123456789012345678901234567890123456789012345678",
];

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use stormlock::backend::postgres::{DDL, PostgresBackend, PostgresConfig};

    fn config(url: &str, extra: &str) -> PostgresConfig {
        toml::from_str(&format!("url = {url:?}\n{extra}")).expect("config")
    }

    async fn connect(url: &str, extra: &str) -> Result<PostgresBackend, BackendError> {
        PostgresBackend::connect("pg", &config(url, extra)).await
    }

    /// A plain connection for setting up and inspecting tables.
    async fn admin(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }

    #[tokio::test]
    async fn refuses_invalid_table_names() {
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", closed_port());
        for table in BAD_TABLES {
            let result = connect(&url, &format!("table = {table:?}")).await;
            assert_config_error(result.map(drop), &["table"]);
        }
    }

    #[tokio::test]
    async fn refuses_invalid_settings() {
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", closed_port());
        assert_config_error(connect("mysql://root@x/db", "").await.map(drop), &["url"]);
        assert_config_error(
            connect(&format!("{url}?sslmode=sometimes"), "")
                .await
                .map(drop),
            &["url"],
        );
        assert_config_error(
            connect(&url, "pool_size = 0").await.map(drop),
            &["pool_size"],
        );
        assert_config_error(
            connect(&url, "ca_file = \"/ca.pem\"").await.map(drop),
            &["ca_file"],
        );
        assert_config_error(
            connect(
                &url,
                "tls = \"verify-full\"\nca_file = \"/nonexistent/ca.pem\"",
            )
            .await
            .map(drop),
            &["ca_file", "/nonexistent/ca.pem"],
        );
        let unknown = toml::from_str::<PostgresConfig>(&format!("url = {url:?}\ntabel = \"x\""));
        let message = unknown.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("tabel"),
            "unknown keys are refused: {message:?}"
        );
        let bad_tls = toml::from_str::<PostgresConfig>(&format!("url = {url:?}\ntls = \"maybe\""));
        assert!(bad_tls.is_err(), "unknown TLS modes are refused");
    }

    #[tokio::test]
    async fn debug_output_hides_the_password() {
        let shown = format!("{:?}", config("postgres://app:hunter2@db/locks", ""));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app"), "{shown}");
    }

    #[tokio::test]
    async fn unreachable_at_start_fails_fast() {
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", closed_port());
        let started = Instant::now();
        let result = connect(&url, "connect_timeout = \"1s\"").await;
        assert!(
            started.elapsed() < Duration::from_secs(1) + SLACK,
            "{:?}",
            started.elapsed()
        );
        match result {
            Err(e @ BackendError::Unavailable { .. }) => {
                let message = e.to_string();
                assert!(message.contains("connect"), "says why: {message}");
            }
            other => panic!("expected Unavailable, got {:?}", other.map(drop)),
        }
    }

    #[tokio::test]
    async fn missing_table_without_create_is_a_clear_error() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
            return;
        };
        let table = unique_name("missing");
        let result = connect(&url, &format!("table = {table:?}\ncreate_table = false")).await;
        assert_config_error(result.map(drop), &[&table, "create_table"]);
    }

    /// The documented DDL, run by an operator, is what the backend expects.
    #[tokio::test]
    async fn documented_schema_works_without_create() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
            return;
        };
        let schema = unique_name("ops");
        let client = admin(&url).await;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {schema}; SET search_path TO {schema};"
            ))
            .await
            .expect("schema");
        client.batch_execute(DDL).await.expect("documented DDL");
        let extra = format!("table = \"{schema}.stormlock_locks\"\ncreate_table = false");
        let backend = connect(&url, &extra)
            .await
            .expect("connect to existing schema");
        let lease = granted(&backend, "ddl/x").await;
        let rows = client
            .query(
                "SELECT fence FROM stormlock_locks WHERE resource = 'ddl/x'",
                &[],
            )
            .await
            .expect("read back");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, i64>(0), lease.fence as i64);
    }

    /// Deleting a resource's row (a cleanup job) does not reset its fence.
    #[tokio::test]
    async fn fence_survives_row_deletion() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
            return;
        };
        let table = unique_name("cleanup");
        let backend = connect(&url, &format!("table = {table:?}"))
            .await
            .expect("connect");
        let resource = "cleanup/x";
        let first = granted(&backend, resource).await;
        let second_req = request(resource, "bob", 60);
        assert!(backend.release(resource, &first.id).await.expect("release"));
        let client = admin(&url).await;
        let deleted = client
            .execute(
                &format!("DELETE FROM \"{table}\" WHERE resource = $1"),
                &[&resource],
            )
            .await
            .expect("delete");
        assert_eq!(deleted, 1, "the row was kept after release");
        let Ok(Acquisition::Granted(second)) = backend.acquire(&second_req).await else {
            panic!("reacquire after cleanup")
        };
        assert!(
            second.fence > first.fence,
            "{} after {}",
            second.fence,
            first.fence
        );
    }

    async fn private() -> Option<(crate::support::PrivateEngine, WithTimeout)> {
        let engine = crate::support::PrivateEngine::start("postgres")?;
        let backend = connect(&engine.url, "connect_timeout = \"1s\"")
            .await
            .expect("connect");
        let bounded = WithTimeout::new("pg", Arc::new(backend), CALL_TIMEOUT);
        Some((engine, bounded))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_then_restart() {
        let Some((engine, backend)) = private().await else {
            return;
        };
        let before = granted(&backend, "restart/x").await;
        engine.stop();
        assert_unavailable("health", backend.health()).await;
        assert_unavailable("acquire", backend.acquire(&request("restart/y", "bob", 60))).await;
        assert_unavailable("current", backend.current("restart/x")).await;
        engine.restart();
        assert_recovers(&backend).await;
        let current = backend.current("restart/x").await.expect("current");
        assert_eq!(
            current.map(|l| l.id),
            Some(before.id.clone()),
            "the lease survived"
        );
        assert!(
            backend
                .release("restart/x", &before.id)
                .await
                .expect("release")
        );
        let after = granted(&backend, "restart/x").await;
        assert!(after.fence > before.fence, "fence survives a restart");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn freeze_then_thaw() {
        let Some((engine, backend)) = private().await else {
            return;
        };
        let before = granted(&backend, "freeze/x").await;
        engine.freeze();
        let thaw_on_exit = Thaw(&engine);
        assert_unavailable("health", backend.health()).await;
        assert_unavailable("acquire", backend.acquire(&request("freeze/y", "bob", 60))).await;
        assert_unavailable(
            "renew",
            backend.renew("freeze/x", &before.id, Duration::from_secs(60)),
        )
        .await;
        // A daemon starting while the engine hangs gives up within its bound.
        let started = Instant::now();
        let fresh = connect(&engine.url, "connect_timeout = \"1s\"").await;
        assert!(
            matches!(fresh, Err(BackendError::Unavailable { .. })),
            "{:?}",
            fresh.map(drop)
        );
        assert!(
            started.elapsed() < Duration::from_secs(1) + SLACK,
            "{:?}",
            started.elapsed()
        );
        drop(thaw_on_exit);
        assert_recovers(&backend).await;
        let current = backend.current("freeze/x").await.expect("current");
        assert_eq!(current.map(|l| l.id), Some(before.id));
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use mysql_async::prelude::Queryable;
    use stormlock::backend::mysql::{DDL, MysqlBackend, MysqlConfig};

    fn config(url: &str, extra: &str) -> MysqlConfig {
        toml::from_str(&format!("url = {url:?}\n{extra}")).expect("config")
    }

    async fn connect(url: &str, extra: &str) -> Result<MysqlBackend, BackendError> {
        MysqlBackend::connect("my", &config(url, extra)).await
    }

    /// A plain connection for setting up and inspecting tables.
    async fn admin(url: &str) -> mysql_async::Conn {
        let opts = mysql_async::Opts::from_url(url).expect("url");
        mysql_async::Conn::new(opts).await.expect("connect")
    }

    /// `url` with its database replaced by `database`.
    fn with_database(url: &str, database: &str) -> String {
        let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
        format!("{base}/{database}")
    }

    #[tokio::test]
    async fn refuses_invalid_table_names() {
        let url = format!("mysql://root@127.0.0.1:{}/stormlock", closed_port());
        for table in BAD_TABLES.iter().chain(&["stormlock.locks"]) {
            let result = connect(&url, &format!("table = {table:?}")).await;
            assert_config_error(result.map(drop), &["table"]);
        }
    }

    #[tokio::test]
    async fn refuses_invalid_settings() {
        let url = format!("mysql://root@127.0.0.1:{}/stormlock", closed_port());
        assert_config_error(connect("postgres://x/db", "").await.map(drop), &["url"]);
        assert_config_error(
            connect(&format!("{url}?pool_max=x"), "").await.map(drop),
            &["url"],
        );
        assert_config_error(
            connect(&url, "pool_size = 0").await.map(drop),
            &["pool_size"],
        );
        assert_config_error(
            connect(&url, "ca_file = \"/ca.pem\"").await.map(drop),
            &["ca_file"],
        );
        let unknown = toml::from_str::<MysqlConfig>(&format!("url = {url:?}\ncreate = true"));
        let message = unknown.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("create"),
            "unknown keys are refused: {message:?}"
        );
    }

    #[tokio::test]
    async fn debug_output_hides_the_password() {
        let shown = format!("{:?}", config("mysql://app:hunter2@db/locks", ""));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[tokio::test]
    async fn unreachable_at_start_fails_fast() {
        let url = format!("mysql://root@127.0.0.1:{}/stormlock", closed_port());
        let started = Instant::now();
        let result = connect(&url, "connect_timeout = \"1s\"").await;
        assert!(
            started.elapsed() < Duration::from_secs(1) + SLACK,
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(result, Err(BackendError::Unavailable { .. })),
            "{:?}",
            result.map(drop)
        );
    }

    #[tokio::test]
    async fn missing_table_without_create_is_a_clear_error() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_MYSQL_URL") else {
            return;
        };
        let table = unique_name("missing");
        let result = connect(&url, &format!("table = {table:?}\ncreate_table = false")).await;
        assert_config_error(result.map(drop), &[&table, "create_table"]);
    }

    /// The documented DDL, run by an operator, is what the backend expects.
    #[tokio::test]
    async fn documented_schema_works_without_create() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_MYSQL_URL") else {
            return;
        };
        let database = unique_name("ops");
        let mut conn = admin(&url).await;
        conn.query_drop(format!("CREATE DATABASE {database}"))
            .await
            .expect("database");
        conn.query_drop(format!("USE {database}"))
            .await
            .expect("use");
        conn.query_drop(DDL).await.expect("documented DDL");
        let backend = connect(&with_database(&url, &database), "create_table = false")
            .await
            .expect("connect to existing schema");
        let lease = granted(&backend, "ddl/x").await;
        let fence: Option<u64> = conn
            .query_first("SELECT fence FROM stormlock_locks WHERE resource = 'ddl/x'")
            .await
            .expect("read back");
        assert_eq!(fence, Some(lease.fence));
    }

    /// Deleting a resource's row (a cleanup job) does not reset its fence.
    #[tokio::test]
    async fn fence_survives_row_deletion() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_MYSQL_URL") else {
            return;
        };
        let table = unique_name("cleanup");
        let backend = connect(&url, &format!("table = {table:?}"))
            .await
            .expect("connect");
        let resource = "cleanup/x";
        let first = granted(&backend, resource).await;
        assert!(backend.release(resource, &first.id).await.expect("release"));
        let mut conn = admin(&url).await;
        conn.exec_drop(
            format!("DELETE FROM `{table}` WHERE resource = ?"),
            (resource,),
        )
        .await
        .expect("delete");
        assert_eq!(conn.affected_rows(), 1, "the row was kept after release");
        let second = granted(&backend, resource).await;
        assert!(
            second.fence > first.fence,
            "{} after {}",
            second.fence,
            first.fence
        );
    }

    /// Times are UTC whatever the server's own time zone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_use_utc() {
        let Some(engine) = crate::support::PrivateEngine::start("mysql") else {
            return;
        };
        let mut conn = admin(&engine.url).await;
        conn.query_drop("SET GLOBAL time_zone = '+05:00'")
            .await
            .expect("server zone");
        let backend = connect(&engine.url, "").await.expect("connect");
        let lease = granted(&backend, "utc/x").await;
        let now = std::time::SystemTime::now();
        let skew = (lease.acquired_at.duration_since(now)).unwrap_or_else(|e| e.duration());
        assert!(
            skew < Duration::from_secs(60),
            "acquired_at is off by {skew:?}"
        );
    }

    async fn private() -> Option<(crate::support::PrivateEngine, WithTimeout)> {
        let engine = crate::support::PrivateEngine::start("mysql")?;
        let backend = connect(&engine.url, "connect_timeout = \"1s\"")
            .await
            .expect("connect");
        let bounded = WithTimeout::new("my", Arc::new(backend), CALL_TIMEOUT);
        Some((engine, bounded))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn freeze_then_thaw() {
        let Some((engine, backend)) = private().await else {
            return;
        };
        let before = granted(&backend, "freeze/x").await;
        engine.freeze();
        let thaw_on_exit = Thaw(&engine);
        assert_unavailable("health", backend.health()).await;
        assert_unavailable("acquire", backend.acquire(&request("freeze/y", "bob", 60))).await;
        assert_unavailable("current", backend.current("freeze/x")).await;
        drop(thaw_on_exit);
        assert_recovers(&backend).await;
        let current = backend.current("freeze/x").await.expect("current");
        assert_eq!(current.map(|l| l.id), Some(before.id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_then_restart() {
        let Some((engine, backend)) = private().await else {
            return;
        };
        let before = granted(&backend, "restart/x").await;
        engine.stop();
        assert_unavailable("health", backend.health()).await;
        assert_unavailable("acquire", backend.acquire(&request("restart/y", "bob", 60))).await;
        engine.restart();
        assert_recovers(&backend).await;
        assert!(
            backend
                .release("restart/x", &before.id)
                .await
                .expect("release")
        );
        let after = granted(&backend, "restart/x").await;
        assert!(after.fence > before.fence, "fence survives a restart");
    }
}
