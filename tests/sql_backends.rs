//! PostgreSQL and MySQL/MariaDB backends beyond the conformance suite:
//! configuration checks, the documented schema, fences that survive deleted
//! rows, and behaviour while the engine is down, frozen or unreachable.
//!
//! Each case is written once, generic over an [`Engine`], and [`sql_cases!`]
//! instantiates every case for each engine; what only one engine has (the
//! PostgreSQL TLS modes, MySQL's session time zone) lives in its module.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stormlockd::backend::sql::SqlConfig;
use stormlockd::backend::{Backend, BackendError};
use stormlockd::lease::{Acquisition, Lease, LeaseId};
use stormlockd::routing::WithTimeout;

use crate::conformance::request;
use crate::support::{PrivateEngine, engine_url};

/// The bound the failure tests put on each call, as the daemon would.
const CALL_TIMEOUT: Duration = Duration::from_millis(1_500);

/// Hang guard: far beyond every timeout the tests configure, so that only a
/// call that never ends trips it (how fast is for the benchmarks).
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Table names that every engine must refuse before anything reaches it.
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

/// What the shared cases need to know of one SQL engine: how to reach it,
/// how an operator's plain connection does things behind the backend's
/// back, and where its rules differ.
trait Engine {
    /// The backend under test.
    type Backend: Backend;
    /// A plain connection, as an operator's client would have.
    type Admin;
    /// The URL scheme.
    const SCHEME: &'static str;
    /// The variable `tests/engines.sh run` sets to the shared engine's URL.
    const URL_VAR: &'static str;
    /// The [`PrivateEngine`] to start for tests that stop or freeze it.
    const PRIVATE: &'static str;
    /// The backend's name in messages.
    const NAME: &'static str;
    /// Table names refused by this engine only, beside [`BAD_TABLES`].
    const BAD_TABLES: &'static [&'static str];

    async fn connect(config: &SqlConfig) -> Result<Self::Backend, BackendError>;

    async fn admin(url: &str) -> Self::Admin;

    /// Settings only this engine refuses, given a valid URL of its own:
    /// (URL, extra TOML, words the configuration error must name).
    fn refused_settings(url: &str) -> Vec<(String, &'static str, &'static [&'static str])>;

    /// Creates the schema or database `name`, makes it the admin's current
    /// one and runs the documented DDL there. Returns the URL and the extra
    /// TOML under which a backend finds that table.
    async fn install_documented_schema(
        admin: &mut Self::Admin,
        url: &str,
        name: &str,
    ) -> (String, String);

    /// The fences stored for `resource` in the admin's current
    /// `stormlock_locks`, one per row.
    async fn stored_fences(admin: &mut Self::Admin, resource: &str) -> Vec<u64>;

    /// Breaks the fence counter of the documented schema, as an operator
    /// could, in a way the backend must refuse at start. Returns words its
    /// configuration error names.
    async fn break_fence_counter(admin: &mut Self::Admin) -> &'static [&'static str];

    /// Deletes `resource`'s row from `table` (a cleanup job); returns the
    /// number of rows deleted.
    async fn delete_row(admin: &mut Self::Admin, table: &str, resource: &str) -> u64;

    /// Makes the admin's current `stormlock_locks` a schema of a version
    /// before reservations: without the books table `stormlock_locks_books`.
    async fn drop_books_table(admin: &mut Self::Admin);

    /// Makes the admin's current `stormlock_locks` a table of a version
    /// before leases kept their TTL: without the `ttl_ms` column.
    async fn drop_ttl_column(admin: &mut Self::Admin);
}

/// Defines one test per shared case for `$engine`, each named after its
/// case. Use it inside the engine's module.
macro_rules! sql_cases {
    ($engine:ty) => {
        sql_cases!(@cases $engine, tokio::test;
            refuses_invalid_table_names, refuses_invalid_settings,
            debug_output_hides_the_password, unreachable_at_start_fails_fast,
            missing_table_without_create_is_a_clear_error,
            documented_schema_works_without_create, missing_books_table_leaves_locks_working,
            unicode_text_round_trips,
            fence_survives_row_deletion, a_table_of_an_older_version_gains_ttl_ms);
        sql_cases!(@cases $engine, tokio::test(flavor = "multi_thread", worker_threads = 4);
            fences_increase_under_contention);
        sql_cases!(@cases $engine, tokio::test(flavor = "multi_thread", worker_threads = 2);
            freeze_then_thaw, stop_then_restart);
    };
    (@cases $engine:ty, $test:meta; $($case:ident),*) => {
        $(
            #[$test]
            async fn $case() {
                $crate::sql_backends::$case::<$engine>().await
            }
        )*
    };
}

fn config(url: &str, extra: &str) -> SqlConfig {
    toml::from_str(&format!("url = {url:?}\n{extra}")).expect("config")
}

async fn connect<E: Engine>(url: &str, extra: &str) -> Result<E::Backend, BackendError> {
    E::connect(&config(url, extra)).await
}

/// A URL of the engine's scheme on a port nothing listens on.
fn unreachable_url<E: Engine>() -> String {
    let (scheme, port) = (E::SCHEME, closed_port());
    format!("{scheme}://stormlock@127.0.0.1:{port}/stormlock")
}

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

/// Asserts that `call` fails with `Unavailable` rather than hanging.
async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, BackendError>>,
) {
    let result = tokio::time::timeout(HANG_GUARD, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"));
    assert!(
        matches!(result, Err(BackendError::Unavailable { .. })),
        "{what}: expected Unavailable, got {result:?}"
    );
}

/// Polls the health check until it passes (bounded by the hang guard).
async fn assert_recovers(backend: &dyn Backend) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let health = backend.health().await;
        if health.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "not recovered: {health:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
struct Thaw<'a>(&'a PrivateEngine);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

/// An engine of the test's own behind the daemon's call bound, or `None`
/// when engines are not available.
async fn private<E: Engine>() -> Option<(PrivateEngine, WithTimeout)> {
    let engine = PrivateEngine::start(E::PRIVATE)?;
    let backend = connect::<E>(&engine.url, "connect_timeout = \"1s\"")
        .await
        .expect("connect");
    let bounded = WithTimeout::new(E::NAME, Arc::new(backend), CALL_TIMEOUT);
    Some((engine, bounded))
}

async fn refuses_invalid_table_names<E: Engine>() {
    let url = unreachable_url::<E>();
    for table in BAD_TABLES.iter().chain(E::BAD_TABLES) {
        let result = connect::<E>(&url, &format!("table = {table:?}")).await;
        assert_config_error(result.map(drop), &["table"]);
    }
}

async fn refuses_invalid_settings<E: Engine>() {
    let url = unreachable_url::<E>();
    for (url, extra, words) in E::refused_settings(&url) {
        assert_config_error(connect::<E>(&url, extra).await.map(drop), words);
    }
    assert_config_error(
        connect::<E>(&url, "pool_size = 0").await.map(drop),
        &["pool_size"],
    );
    assert_config_error(
        connect::<E>(&url, "ca_file = \"/ca.pem\"").await.map(drop),
        &["ca_file"],
    );
    for key in ["tabel", "create"] {
        let unknown = toml::from_str::<SqlConfig>(&format!("url = {url:?}\n{key} = \"x\""));
        let message = unknown.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains(key),
            "unknown keys are refused: {message:?}"
        );
    }
    let bad_tls = toml::from_str::<SqlConfig>(&format!("url = {url:?}\ntls = \"maybe\""));
    let message = bad_tls.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("maybe"),
        "unknown TLS modes are refused: {message:?}"
    );
}

async fn debug_output_hides_the_password<E: Engine>() {
    let url = format!("{}://app:hunter2@db/locks", E::SCHEME);
    let shown = format!("{:?}", config(&url, ""));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("app"), "{shown}");
}

async fn unreachable_at_start_fails_fast<E: Engine>() {
    let result = tokio::time::timeout(
        HANG_GUARD,
        connect::<E>(&unreachable_url::<E>(), "connect_timeout = \"1s\""),
    )
    .await
    .expect("connect must not hang");
    match result {
        Err(e @ BackendError::Unavailable { .. }) => {
            let message = e.to_string();
            assert!(message.contains("connect"), "says why: {message}");
        }
        other => panic!("expected Unavailable, got {:?}", other.map(drop)),
    }
}

async fn missing_table_without_create_is_a_clear_error<E: Engine>() {
    let Some(url) = engine_url(E::URL_VAR) else {
        return;
    };
    let table = unique_name("missing");
    let result = connect::<E>(&url, &format!("table = {table:?}\ncreate_table = false")).await;
    assert_config_error(result.map(drop), &[&table, "create_table"]);
}

/// The documented DDL, run by an operator, is what the backend expects, and
/// a fence counter broken afterwards is refused at start.
async fn documented_schema_works_without_create<E: Engine>() {
    let Some(url) = engine_url(E::URL_VAR) else {
        return;
    };
    let mut admin = E::admin(&url).await;
    let (url, extra) = E::install_documented_schema(&mut admin, &url, &unique_name("ops")).await;
    let extra = format!("{extra}\ncreate_table = false");
    let backend = connect::<E>(&url, &extra)
        .await
        .expect("connect to existing schema");
    let lease = granted(&backend, "ddl/x").await;
    assert_eq!(E::stored_fences(&mut admin, "ddl/x").await, [lease.fence]);
    assert!(
        backend.write_book("ddl/x", 0, b"book").await.expect("book"),
        "the documented DDL has the books table"
    );
    let words = E::break_fence_counter(&mut admin).await;
    assert_config_error(connect::<E>(&url, &extra).await.map(drop), words);
}

/// A schema set up by hand before reservations lacks the books table: the
/// backend starts and serves locks, the book calls fail naming the table,
/// and once it is created they work, without a restart.
async fn missing_books_table_leaves_locks_working<E: Engine>() {
    let Some(url) = engine_url(E::URL_VAR) else {
        return;
    };
    let mut admin = E::admin(&url).await;
    let (url, extra) =
        E::install_documented_schema(&mut admin, &url, &unique_name("nobooks")).await;
    E::drop_books_table(&mut admin).await;
    let strict = format!("{extra}\ncreate_table = false");
    let backend = connect::<E>(&url, &strict)
        .await
        .expect("starts without the books table");
    let lease = granted(&backend, "nobooks/x").await;
    assert!(
        backend
            .release("nobooks/x", &lease.id)
            .await
            .expect("release")
    );
    let words = &["stormlock_locks_books", "documented DDL"];
    assert_config_error(backend.book("nobooks/x").await, words);
    assert_config_error(backend.write_book("nobooks/x", 0, b"x").await, words);
    assert_config_error(backend.books("nobooks/", None, 10).await, words);
    let again = granted(&backend, "nobooks/x").await;
    assert!(again.fence > lease.fence, "locks still work");

    // A daemon allowed to create the schema adds the table.
    connect::<E>(&url, &extra)
        .await
        .expect("creates the books table");
    assert_eq!(backend.book("nobooks/x").await.expect("book"), None);
    assert!(
        backend
            .write_book("nobooks/x", 0, b"x")
            .await
            .expect("write")
    );
    let books = backend.books("nobooks/", None, 10).await.expect("books");
    assert_eq!(books.len(), 1);
}

/// A table made by a version before leases kept their TTL lacks `ttl_ms`:
/// refused with the statement that adds it when the daemon may not change
/// the table, given the column when it may, and its leases keep their TTL
/// from then on.
async fn a_table_of_an_older_version_gains_ttl_ms<E: Engine>() {
    let Some(url) = engine_url(E::URL_VAR) else {
        return;
    };
    let mut admin = E::admin(&url).await;
    let (url, extra) = E::install_documented_schema(&mut admin, &url, &unique_name("old")).await;
    let lease = granted(
        &connect::<E>(&url, &extra).await.expect("connect"),
        "old/before",
    )
    .await;
    E::drop_ttl_column(&mut admin).await;
    let strict = format!("{extra}\ncreate_table = false");
    assert_config_error(
        connect::<E>(&url, &strict).await.map(drop),
        &["ttl_ms", "ALTER TABLE", "ADD COLUMN", "create_table = true"],
    );

    let backend = connect::<E>(&url, &extra).await.expect("adds the column");
    // A lease stored before has no TTL of its own; a new one has.
    let before = backend.current("old/before").await.expect("current");
    assert_eq!(before.map(|l| (l.id, l.ttl)), Some((lease.id, None)));
    let after = granted(&backend, "old/after").await;
    assert_eq!(after.ttl, Some(Duration::from_secs(60)));
    let read = backend.current("old/after").await.expect("current");
    assert_eq!(read.and_then(|l| l.ttl), Some(Duration::from_secs(60)));
    connect::<E>(&url, &strict)
        .await
        .expect("the table has every column now");
}

/// Workers take turns on one resource: every grant's fence exceeds every
/// fence granted before it, even when the counter is shared by concurrent
/// grants and drawn by many connections.
async fn fences_increase_under_contention<E: Engine>() {
    let Some(url) = engine_url(E::URL_VAR) else {
        return;
    };
    let backend: Arc<dyn Backend> = Arc::new(
        connect::<E>(&url, "table = \"contention_locks\"")
            .await
            .expect("connect"),
    );
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

/// Principals and reasons outside ASCII (4-byte UTF-8 included) are stored
/// and returned exactly, to the holder and to whoever is refused.
async fn unicode_text_round_trips<E: Engine>() {
    let Some(url) = engine_url(E::URL_VAR) else {
        return;
    };
    let backend = connect::<E>(&url, "table = \"unicode_locks\"")
        .await
        .expect("connect");
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

/// Deleting a resource's row (a cleanup job) does not reset its fence.
async fn fence_survives_row_deletion<E: Engine>() {
    let Some(url) = engine_url(E::URL_VAR) else {
        return;
    };
    let table = unique_name("cleanup");
    let backend = connect::<E>(&url, &format!("table = {table:?}"))
        .await
        .expect("connect");
    let resource = "cleanup/x";
    let first = granted(&backend, resource).await;
    assert!(backend.release(resource, &first.id).await.expect("release"));
    let mut admin = E::admin(&url).await;
    let deleted = E::delete_row(&mut admin, &table, resource).await;
    assert_eq!(deleted, 1, "the row was kept after release");
    let second = granted(&backend, resource).await;
    assert!(
        second.fence > first.fence,
        "{} after {}",
        second.fence,
        first.fence
    );
}

/// While the engine hangs, every call and a fresh start give up within
/// their bound; once it answers again, the lease is still there.
async fn freeze_then_thaw<E: Engine>() {
    let Some((engine, backend)) = private::<E>().await else {
        return;
    };
    let before = granted(&backend, "freeze/x").await;
    engine.freeze();
    let thaw_on_exit = Thaw(&engine);
    assert_unavailable("health", backend.health()).await;
    assert_unavailable("acquire", backend.acquire(&request("freeze/y", "bob", 60))).await;
    assert_unavailable("current", backend.current("freeze/x")).await;
    assert_unavailable(
        "renew",
        backend.renew("freeze/x", &before.id, Duration::from_secs(60)),
    )
    .await;
    // A daemon starting while the engine hangs gives up.
    let fresh = tokio::time::timeout(
        HANG_GUARD,
        connect::<E>(&engine.url, "connect_timeout = \"1s\""),
    )
    .await
    .expect("connect must not hang");
    assert!(
        matches!(fresh, Err(BackendError::Unavailable { .. })),
        "{:?}",
        fresh.map(drop)
    );
    drop(thaw_on_exit);
    assert_recovers(&backend).await;
    let current = backend.current("freeze/x").await.expect("current");
    assert_eq!(current.map(|l| l.id), Some(before.id));
}

/// While the engine is down every call fails fast; after a restart the
/// lease and the fence counter are still there.
async fn stop_then_restart<E: Engine>() {
    let Some((engine, backend)) = private::<E>().await else {
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

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use stormlockd::backend::postgres::{DDL, PostgresBackend};

    struct Postgres;

    impl Engine for Postgres {
        type Backend = PostgresBackend;
        type Admin = tokio_postgres::Client;
        const SCHEME: &'static str = "postgres";
        const URL_VAR: &'static str = "STORMLOCK_TEST_POSTGRES_URL";
        const PRIVATE: &'static str = "postgres";
        const NAME: &'static str = "pg";
        const BAD_TABLES: &'static [&'static str] = &[];

        async fn connect(config: &SqlConfig) -> Result<PostgresBackend, BackendError> {
            PostgresBackend::connect(Self::NAME, config).await
        }

        async fn admin(url: &str) -> tokio_postgres::Client {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client
        }

        fn refused_settings(url: &str) -> Vec<(String, &'static str, &'static [&'static str])> {
            vec![
                ("mysql://root@x/db".to_string(), "", &["url"]),
                (format!("{url}?sslmode=sometimes"), "", &["url"]),
                (
                    url.to_string(),
                    "tls = \"verify-full\"\nca_file = \"/nonexistent/ca.pem\"",
                    &["ca_file", "/nonexistent/ca.pem"],
                ),
            ]
        }

        async fn install_documented_schema(
            admin: &mut tokio_postgres::Client,
            url: &str,
            schema: &str,
        ) -> (String, String) {
            admin
                .batch_execute(&format!(
                    "CREATE SCHEMA {schema}; SET search_path TO {schema};"
                ))
                .await
                .expect("schema");
            admin.batch_execute(DDL).await.expect("documented DDL");
            let extra = format!("table = \"{schema}.stormlock_locks\"");
            (url.to_string(), extra)
        }

        async fn stored_fences(admin: &mut tokio_postgres::Client, resource: &str) -> Vec<u64> {
            let rows = admin
                .query(
                    "SELECT fence FROM stormlock_locks WHERE resource = $1",
                    &[&resource],
                )
                .await
                .expect("read back");
            rows.iter()
                .map(|row| u64::try_from(row.get::<_, i64>(0)).expect("a fence is positive"))
                .collect()
        }

        /// A cached sequence would hand out fences out of order.
        async fn break_fence_counter(
            admin: &mut tokio_postgres::Client,
        ) -> &'static [&'static str] {
            admin
                .batch_execute("ALTER SEQUENCE stormlock_locks_fence CACHE 20")
                .await
                .expect("alter");
            &["CACHE 1"]
        }

        async fn drop_books_table(admin: &mut tokio_postgres::Client) {
            admin
                .batch_execute("DROP TABLE stormlock_locks_books")
                .await
                .expect("drop the books table");
        }

        async fn drop_ttl_column(admin: &mut tokio_postgres::Client) {
            admin
                .batch_execute("ALTER TABLE stormlock_locks DROP COLUMN ttl_ms")
                .await
                .expect("drop ttl_ms");
        }

        async fn delete_row(
            admin: &mut tokio_postgres::Client,
            table: &str,
            resource: &str,
        ) -> u64 {
            admin
                .execute(
                    &format!("DELETE FROM \"{table}\" WHERE resource = $1"),
                    &[&resource],
                )
                .await
                .expect("delete")
        }
    }

    sql_cases!(Postgres);

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

        let Some(engine) = PrivateEngine::start(Postgres::PRIVATE) else {
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
        let client = Postgres::admin(&engine.url).await;
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
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let ssl: String = Postgres::admin(&engine.url)
                .await
                .query_one("SHOW ssl", &[])
                .await
                .expect("SHOW ssl")
                .get(0);
            if ssl == "on" {
                break;
            }
            assert!(Instant::now() < deadline, "ssl not on after reload");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let require = connect::<Postgres>(&engine.url, "tls = \"require\"")
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
        let full = connect::<Postgres>(&by_name, &verified)
            .await
            .expect("verify-full by name");
        granted(&full, "tls/verify-full").await;

        let wrong_name = connect::<Postgres>(&engine.url, &verified).await.map(drop);
        match wrong_name {
            Err(e @ BackendError::Unavailable { .. }) => {
                assert!(e.to_string().contains("certificate"), "{e}");
            }
            other => panic!("a certificate for another name is refused: {other:?}"),
        }
        let unknown_ca = connect::<Postgres>(&by_name, "tls = \"verify-full\"")
            .await
            .map(drop);
        match unknown_ca {
            Err(e @ BackendError::Unavailable { .. }) => {
                assert!(e.to_string().contains("certificate"), "{e}");
            }
            other => panic!("a certificate from an unknown CA is refused: {other:?}"),
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use mysql_async::prelude::Queryable;
    use stormlockd::backend::mysql::{DDL, MysqlBackend};

    struct Mysql;

    impl Engine for Mysql {
        type Backend = MysqlBackend;
        type Admin = mysql_async::Conn;
        const SCHEME: &'static str = "mysql";
        const URL_VAR: &'static str = "STORMLOCK_TEST_MYSQL_URL";
        const PRIVATE: &'static str = "mysql";
        const NAME: &'static str = "my";
        /// The database comes from the URL.
        const BAD_TABLES: &'static [&'static str] = &["stormlock.locks"];

        async fn connect(config: &SqlConfig) -> Result<MysqlBackend, BackendError> {
            MysqlBackend::connect(Self::NAME, config).await
        }

        async fn admin(url: &str) -> mysql_async::Conn {
            let opts = mysql_async::Opts::from_url(url).expect("url");
            mysql_async::Conn::new(opts).await.expect("connect")
        }

        fn refused_settings(url: &str) -> Vec<(String, &'static str, &'static [&'static str])> {
            vec![
                ("postgres://x/db".to_string(), "", &["url"]),
                (format!("{url}?pool_max=x"), "", &["url"]),
            ]
        }

        async fn install_documented_schema(
            admin: &mut mysql_async::Conn,
            url: &str,
            database: &str,
        ) -> (String, String) {
            admin
                .query_drop(format!("CREATE DATABASE {database}"))
                .await
                .expect("database");
            admin
                .query_drop(format!("USE {database}"))
                .await
                .expect("use");
            admin.query_drop(DDL).await.expect("documented DDL");
            (with_database(url, database), String::new())
        }

        async fn stored_fences(admin: &mut mysql_async::Conn, resource: &str) -> Vec<u64> {
            admin
                .exec(
                    "SELECT fence FROM stormlock_locks WHERE resource = ?",
                    (resource,),
                )
                .await
                .expect("read back")
        }

        /// Without its one row the counter has nothing to count from.
        async fn break_fence_counter(admin: &mut mysql_async::Conn) -> &'static [&'static str] {
            admin
                .query_drop("DELETE FROM stormlock_locks_fence")
                .await
                .expect("delete the counter");
            &["stormlock_locks_fence", "id = 1"]
        }

        async fn drop_books_table(admin: &mut mysql_async::Conn) {
            admin
                .query_drop("DROP TABLE stormlock_locks_books")
                .await
                .expect("drop the books table");
        }

        async fn drop_ttl_column(admin: &mut mysql_async::Conn) {
            admin
                .query_drop("ALTER TABLE stormlock_locks DROP COLUMN ttl_ms")
                .await
                .expect("drop ttl_ms");
        }

        async fn delete_row(admin: &mut mysql_async::Conn, table: &str, resource: &str) -> u64 {
            admin
                .exec_drop(
                    format!("DELETE FROM `{table}` WHERE resource = ?"),
                    (resource,),
                )
                .await
                .expect("delete");
            admin.affected_rows()
        }
    }

    sql_cases!(Mysql);

    /// `url` with its database replaced by `database`.
    fn with_database(url: &str, database: &str) -> String {
        let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
        format!("{base}/{database}")
    }

    /// TLS required of a server that offers none fails clearly.
    #[tokio::test]
    async fn tls_required_of_a_plain_server_is_refused() {
        let Some(url) = engine_url(Mysql::URL_VAR) else {
            return;
        };
        for mode in ["require", "verify-full"] {
            let result = connect::<Mysql>(&url, &format!("tls = {mode:?}"))
                .await
                .map(drop);
            match result {
                Err(e @ BackendError::Unavailable { .. }) => {
                    assert!(e.to_string().contains("SSL"), "{mode}: {e}");
                }
                other => panic!("{mode}: expected Unavailable, got {other:?}"),
            }
        }
        let plain = connect::<Mysql>(&url, "tls = \"disable\"")
            .await
            .expect("disable");
        plain.health().await.expect("health");
    }

    /// Times are UTC whatever the server's own time zone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_use_utc() {
        let Some(engine) = PrivateEngine::start(Mysql::PRIVATE) else {
            return;
        };
        let mut conn = Mysql::admin(&engine.url).await;
        conn.query_drop("SET GLOBAL time_zone = '+05:00'")
            .await
            .expect("server zone");
        let backend = connect::<Mysql>(&engine.url, "").await.expect("connect");
        let lease = granted(&backend, "utc/x").await;
        let now = std::time::SystemTime::now();
        let skew = (lease.acquired_at.duration_since(now)).unwrap_or_else(|e| e.duration());
        assert!(
            skew < Duration::from_secs(60),
            "acquired_at is off by {skew:?}"
        );
    }
}
