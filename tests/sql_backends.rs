//! PostgreSQL and MySQL/MariaDB backends beyond the conformance suite:
//! configuration checks, the documented schema, fences that survive deleted
//! rows, and behaviour while the engine is down, frozen or unreachable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stormlockd::backend::{Backend, BackendError};
use stormlockd::lease::{Acquisition, Lease, LeaseId};
use stormlockd::routing::WithTimeout;

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

/// Principals and reasons outside ASCII (4-byte UTF-8 included) are stored
/// and returned exactly, to the holder and to whoever is refused.
async fn unicode_round_trip(backend: &dyn Backend) {
    let resource = format!("unicode/{}", LeaseId::generate().expose());
    let mut req = request(&resource, "Zoë 🦀 運用", 60);
    req.reason = "déploiement 🚀 — 锁 \"quoted\" 'single' \\ %_".to_string();
    let lease = match backend.acquire(&req).await {
        Ok(Acquisition::Granted(lease)) => lease,
        other => panic!("expected a grant, got {other:?}"),
    };
    assert_eq!(
        (lease.principal.as_str(), lease.reason.as_str()),
        (req.principal.as_str(), req.reason.as_str())
    );
    match backend.acquire(&request(&resource, "bob", 60)).await {
        Ok(Acquisition::Held(holder)) => {
            assert_eq!(holder.principal, req.principal);
            assert_eq!(holder.reason, req.reason);
        }
        other => panic!("expected the resource to be held, got {other:?}"),
    }
    let broken = backend
        .force_release(&resource, "ops 🛠", "rotation ✓")
        .await
        .expect("force");
    assert_eq!(broken.map(|l| l.reason), Some(req.reason.clone()));
    match backend.status(&resource, &req.id).await {
        Ok(stormlockd::lease::LeaseStatus::NotCurrent { evicted: Some(e) }) => {
            assert_eq!(
                (e.actor.as_str(), e.reason.as_str()),
                ("ops 🛠", "rotation ✓")
            );
        }
        other => panic!("expected an eviction record, got {other:?}"),
    }
}

/// Workers take turns on one resource: every grant's fence exceeds every
/// fence granted before it, even when the counter is shared by concurrent
/// grants and drawn by many connections.
async fn fences_increase_under_contention(backend: Arc<dyn Backend>) {
    let resource = format!("contention/{}", LeaseId::generate().expose());
    let highest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(3);
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (backend, resource, highest) = (backend.clone(), resource.clone(), highest.clone());
            tokio::spawn(async move {
                let mut grants = 0;
                for _ in 0..200 {
                    if grants == 10 || Instant::now() > deadline {
                        break;
                    }
                    let req = request(&resource, &format!("worker-{worker}"), 60);
                    match backend.acquire(&req).await {
                        Ok(Acquisition::Granted(lease)) => {
                            // Only the holder touches `highest` until it releases.
                            let before = highest.load(std::sync::atomic::Ordering::SeqCst);
                            assert!(lease.fence > before, "fence {} after {before}", lease.fence);
                            highest.store(lease.fence, std::sync::atomic::Ordering::SeqCst);
                            grants += 1;
                            assert!(backend.release(&resource, &req.id).await.expect("release"));
                        }
                        Ok(Acquisition::Held(_)) => tokio::task::yield_now().await,
                        Err(e) => panic!("acquire failed: {e}"),
                    }
                }
                grants
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("worker");
    }
    assert!(total >= 8, "the resource changed hands {total} times");
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
    use stormlockd::backend::postgres::{DDL, PostgresBackend, PostgresConfig};

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
        // A cached sequence would hand out fences out of order.
        client
            .batch_execute("ALTER SEQUENCE stormlock_locks_fence CACHE 20")
            .await
            .expect("alter");
        assert_config_error(connect(&url, &extra).await.map(drop), &["CACHE 1"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fences_increase_under_contention() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
            return;
        };
        let backend = connect(&url, "table = \"contention_locks\"")
            .await
            .expect("connect");
        super::fences_increase_under_contention(Arc::new(backend)).await;
    }

    #[tokio::test]
    async fn unicode_text_round_trips() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
            return;
        };
        let backend = connect(&url, "table = \"unicode_locks\"")
            .await
            .expect("connect");
        unicode_round_trip(&backend).await;
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

    /// A test CA and a server certificate for `localhost` signed by it, as
    /// PEM files in `dir`: (CA certificate, server certificate, server key).
    fn certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stormlock test CA");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .and_then(|params| params.signed_by(&key, &ca))
            .expect("server certificate");
        let paths = ["ca.pem", "server.pem", "server.key"].map(|name| dir.join(name));
        std::fs::write(&paths[0], ca.pem()).expect("write");
        std::fs::write(&paths[1], cert.pem()).expect("write");
        std::fs::write(&paths[2], key.serialize_pem()).expect("write");
        paths
    }

    /// Every TLS mode against a server whose certificate names `localhost`
    /// and is signed by a private CA.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_modes() {
        use std::os::unix::fs::PermissionsExt;
        use std::process::Command;

        let Some(engine) = crate::support::PrivateEngine::start("postgres") else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let [ca, cert, key] = certificates(dir.path());
        // The server runs as postgres and insists on a private key file.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let chown = Command::new("chown").arg("postgres").arg(&key).status();
        assert!(
            chown.is_ok_and(|s| s.success()),
            "chown the key to postgres"
        );
        let client = admin(&engine.url).await;
        for setting in [
            format!("ssl_cert_file = '{}'", cert.display()),
            format!("ssl_key_file = '{}'", key.display()),
            "ssl = on".to_string(),
        ] {
            client
                .batch_execute(&format!("ALTER SYSTEM SET {setting}"))
                .await
                .expect("ALTER SYSTEM");
        }
        client
            .execute("SELECT pg_reload_conf()", &[])
            .await
            .expect("reload");
        let started = Instant::now();
        loop {
            let ssl: String = admin(&engine.url)
                .await
                .query_one("SHOW ssl", &[])
                .await
                .expect("SHOW ssl")
                .get(0);
            if ssl == "on" {
                break;
            }
            assert!(started.elapsed() < RECOVERY, "ssl not on after reload");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let require = connect(&engine.url, "tls = \"require\"")
            .await
            .expect("require");
        granted(&require, "tls/require").await;
        let encrypted: Option<bool> = client
            .query_one(
                "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = 'stormlockd'",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0);
        assert_eq!(encrypted, Some(true), "the backend's connections use TLS");

        let by_name = engine.url.replace("127.0.0.1", "localhost");
        let verified = format!(
            "tls = \"verify-full\"\nca_file = {:?}",
            ca.display().to_string()
        );
        let full = connect(&by_name, &verified)
            .await
            .expect("verify-full by name");
        granted(&full, "tls/verify-full").await;

        let wrong_name = connect(&engine.url, &verified).await.map(drop);
        match wrong_name {
            Err(e @ BackendError::Unavailable { .. }) => {
                assert!(e.to_string().contains("certificate"), "{e}");
            }
            other => panic!("a certificate for another name is refused: {other:?}"),
        }
        let unknown_ca = connect(&by_name, "tls = \"verify-full\"").await.map(drop);
        match unknown_ca {
            Err(e @ BackendError::Unavailable { .. }) => {
                assert!(e.to_string().contains("certificate"), "{e}");
            }
            other => panic!("a certificate from an unknown CA is refused: {other:?}"),
        }
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
    use stormlockd::backend::mysql::{DDL, MysqlBackend, MysqlConfig};

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

    /// TLS required of a server that offers none fails clearly.
    #[tokio::test]
    async fn tls_required_of_a_plain_server_is_refused() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_MYSQL_URL") else {
            return;
        };
        for mode in ["require", "verify-full"] {
            let result = connect(&url, &format!("tls = {mode:?}")).await.map(drop);
            match result {
                Err(e @ BackendError::Unavailable { .. }) => {
                    assert!(e.to_string().contains("SSL"), "{mode}: {e}");
                }
                other => panic!("{mode}: expected Unavailable, got {other:?}"),
            }
        }
        let plain = connect(&url, "tls = \"disable\"").await.expect("disable");
        plain.health().await.expect("health");
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fences_increase_under_contention() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_MYSQL_URL") else {
            return;
        };
        let backend = connect(&url, "table = \"contention_locks\"")
            .await
            .expect("connect");
        super::fences_increase_under_contention(Arc::new(backend)).await;
    }

    #[tokio::test]
    async fn unicode_text_round_trips() {
        let Some(url) = crate::support::engine_url("STORMLOCK_TEST_MYSQL_URL") else {
            return;
        };
        let backend = connect(&url, "table = \"unicode_locks\"")
            .await
            .expect("connect");
        unicode_round_trip(&backend).await;
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
