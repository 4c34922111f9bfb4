//! `python_stormlock = true`: a daemon and the real Python stormlock 0.4.1
//! CLI on one engine exclude each other, both ways. Python stormlock comes
//! from the test venv (`scripts/setup`, `tests/requirements.txt`); without
//! it the tests are skipped, and fail under `STORMLOCK_TEST_REQUIRE_ENGINES`
//! like a missing engine.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::transport::Channel;

use crate::support::{TestDaemon, acquire_request, secs, skip_for_want_of, unique};

/// The version whose formats the daemon speaks.
const PYTHON_STORMLOCK_VERSION: &str = "0.4.1";

/// What `stormlock acquire` of Python stormlock exits with when the lock is
/// held (its `cli.acquire`).
const PYTHON_HELD: i32 = 2;

/// The principal the Python CLI locks as, and the daemon's client's.
const PY_PRINCIPAL: &str = "py-alice";
const RS_PRINCIPAL: &str = "deployer";

/// A Python stormlock lease id as the daemon writes ids: PostgreSQL's
/// UUIDs come with dashes, MySQL's hex in upper case, etcd's lease ids with
/// up to 16 digits; the daemon shows the same 16 bytes as 32 lower-case hex
/// digits (etcd's padded with zeros in front).
fn plain_id(id: &str) -> String {
    format!("{:0>32}", id.trim().replace('-', "").to_ascii_lowercase())
}

/// The venv's `bin` directory, where Python stormlock's CLI is installed.
fn venv_bin() -> PathBuf {
    let venv = std::env::var_os("STORMLOCK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/stormlock/venv")
        });
    venv.join("bin")
}

/// The Python stormlock CLI with a configuration file for one engine.
struct Python {
    bin: PathBuf,
    config: tempfile::NamedTempFile,
}

impl Python {
    /// The CLI of the venv (never the Rust `stormlock` on the PATH), locking
    /// as [`PY_PRINCIPAL`] on `backend` with the INI `section` body; `None`
    /// (skipped) when it is not installed.
    fn new(backend: &str, section: &str) -> Option<Self> {
        let bin = venv_bin().join("stormlock");
        let python = venv_bin().join("python3");
        if !bin.is_file() || !python.is_file() {
            skip_for_want_of(&format!(
                "Python stormlock {PYTHON_STORMLOCK_VERSION} ({}; run scripts/setup)",
                bin.display()
            ));
            return None;
        }
        let version = Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('stormlock'))",
            ])
            .output()
            .expect("run the venv's python3");
        assert_eq!(
            String::from_utf8_lossy(&version.stdout).trim(),
            PYTHON_STORMLOCK_VERSION,
            "the venv's Python stormlock ({}): {}",
            bin.display(),
            String::from_utf8_lossy(&version.stderr)
        );
        // Each of Python stormlock's backends imports its own driver.
        let driver = Command::new(&python)
            .args(["-c", &format!("import stormlock.backends.{backend}")])
            .output()
            .expect("run the venv's python3");
        if !driver.status.success() {
            skip_for_want_of(&format!(
                "Python stormlock's {backend} backend ({}; tests/requirements.txt)",
                String::from_utf8_lossy(&driver.stderr).trim()
            ));
            return None;
        }
        let config = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(
            config.path(),
            format!(
                "[default]\nttl = 1 minutes\nprincipal = {PY_PRINCIPAL}\nbackend = {backend}\n\
                 [backend.{backend}]\n{section}\n"
            ),
        )
        .expect("write the Python stormlock configuration");
        Some(Self { bin, config })
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(self.config.path())
            .args(args)
            .env_remove("STORMLOCK_CONFIG")
            .output()
            .expect("run Python stormlock");
        eprintln!(
            "python stormlock {args:?}: {} stdout {:?} stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `stormlock acquire --ttl "N seconds" R`: the lease id, or the exit
    /// code and output when refused.
    fn acquire(&self, resource: &str, ttl: u64) -> Result<String, Output> {
        let out = self.run(&["acquire", "--ttl", &format!("{ttl} seconds"), resource]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(out)
        }
    }

    /// Asserts that Python stormlock's `acquire` is refused as held, and
    /// returns the holder's id it prints.
    fn assert_refused(&self, resource: &str, why: &str) -> String {
        match self.acquire(resource, 60) {
            Ok(id) => panic!("{why}: Python stormlock was granted {resource} ({id})"),
            Err(out) => {
                assert_eq!(out.status.code(), Some(PYTHON_HELD), "{why}");
                assert!(
                    String::from_utf8_lossy(&out.stderr).contains("Lock held"),
                    "{why}"
                );
                plain_id(&String::from_utf8_lossy(&out.stdout))
            }
        }
    }

    fn release(&self, resource: &str, id: &str) {
        let out = self.run(&["release", resource, id]);
        assert!(out.status.success(), "Python stormlock release");
    }

    /// `stormlock renew R ID`: its exit code (0 renewed, 3 lock expired).
    fn renew(&self, resource: &str, id: &str) -> Option<i32> {
        self.run(&["renew", resource, id]).status.code()
    }

    /// `stormlock current -f json R`: (principal, id), or `None` when free.
    fn current(&self, resource: &str) -> Option<(String, String)> {
        let out = self.run(&["current", "-f", "json", resource]);
        if !out.status.success() {
            assert_eq!(out.status.code(), Some(1), "Python stormlock current");
            return None;
        }
        let lease: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("Python stormlock's JSON");
        let field = |name: &str| lease[name].as_str().unwrap_or_default().to_string();
        Some((field("principal"), plain_id(&field("id"))))
    }
}

async fn try_acquire(
    client: &mut LockServiceClient<Channel>,
    resource: &str,
    ttl: i64,
) -> pb::AcquireResponse {
    client
        .acquire(acquire_request(resource, ttl, 0))
        .await
        .expect("acquire")
        .into_inner()
}

/// Waits until `when` has passed on this machine's clock (the engines run
/// on it too): the point of the wait is that a TTL ran out.
async fn wait_past(when: SystemTime) {
    if let Ok(left) = when.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(300)).await;
    }
}

/// What differs between the engines' migration modes.
#[derive(Clone, Copy)]
struct Engine {
    /// A lease that lapsed without a release leaves its mirror, which Python
    /// takes as held until the daemon takes the resource over again
    /// (DynamoDB: Python stormlock only ever creates items).
    lapsed_mirror_stays: bool,
}

/// Redis, PostgreSQL, MySQL and etcd.
const MIRRORS_LAPSE: Engine = Engine {
    lapsed_mirror_stays: false,
};

/// Both ways, with the daemon's backend `backend` (which has
/// `python_stormlock = true`) and the Python CLI `py` on the same engine.
async fn exclude_each_other(backend: &str, py: &Python, engine: Engine) {
    let daemon = TestDaemon::start(&format!("[backends.main]\n{backend}\n"), false).await;
    let mut client = daemon.client_as(RS_PRINCIPAL).await;
    let mut admin = daemon.client().await;
    let resource = format!("pycompat/{}/deploy", unique());

    // Python holds: the daemon refuses, naming Python's holder.
    let py_lease = py
        .acquire(&resource, 60)
        .expect("Python stormlock acquires");
    let refused = try_acquire(&mut client, &resource, 60).await;
    assert!(!refused.acquired, "granted while Python stormlock holds");
    let holder = refused.holder.expect("the refusal names the holder");
    assert_eq!(holder.principal, PY_PRINCIPAL);
    assert_eq!(holder.reason, "held by Python stormlock");
    assert_eq!(holder.fence, 0);
    assert_eq!(
        holder.lease_id, "",
        "the holder's id is not the caller's to see"
    );
    let current = admin
        .current(pb::CurrentRequest {
            resource: resource.clone(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner();
    let shown = current.lease.expect("Current reports Python's lock");
    assert_eq!(shown.principal, PY_PRINCIPAL);
    assert_eq!(
        shown.lease_id,
        plain_id(&py_lease),
        "administrators see Python's id"
    );

    // Force-release of Python's lock.
    let forced = admin
        .force_release(pb::ForceReleaseRequest {
            resource: resource.clone(),
            reason: "python_compat test: a stuck Python lock".to_string(),
        })
        .await
        .expect("force-release")
        .into_inner()
        .released;
    // Broken as Python's release would: reported as Python's, gone for
    // Python, and its holder's renewal fails as for a lock that expired.
    let broken = forced.expect("the Python lock was broken");
    assert_eq!(broken.principal, PY_PRINCIPAL);
    assert_eq!(broken.reason, "held by Python stormlock");
    assert_eq!(broken.lease_id, plain_id(&py_lease));
    assert_eq!(py.current(&resource), None);
    assert_eq!(
        py.renew(&resource, &py_lease),
        Some(3),
        "renewal of a broken lock"
    );
    let py_lease = py
        .acquire(&resource, 60)
        .expect("Python stormlock acquires after the force-release");

    // Python releases: the daemon grants.
    py.release(&resource, &py_lease);
    // TTLs long enough for the Python processes that check them: each one
    // takes a second or more on a loaded machine (a 3 s lease once lapsed
    // between two of them).
    let granted = try_acquire(&mut client, &resource, 10).await;
    assert!(granted.acquired, "refused after Python stormlock released");
    let lease = granted.lease.expect("lease");

    // The daemon holds: Python is refused and sees the holder, with the same
    // id as the daemon's lease.
    let shown_id = py.assert_refused(&resource, "while the daemon holds");
    assert_eq!(shown_id, lease.lease_id);
    assert_eq!(
        py.current(&resource),
        Some((RS_PRINCIPAL.to_string(), lease.lease_id.clone()))
    );

    // Renewed past its first TTL, the lease still keeps Python out.
    let first_expiry: SystemTime = lease
        .expires_at
        .and_then(|t| t.try_into().ok())
        .expect("expires_at");
    client
        .renew(pb::RenewRequest {
            resource: resource.clone(),
            lease_id: lease.lease_id.clone(),
            ttl: secs(60),
        })
        .await
        .expect("renew");
    wait_past(first_expiry).await;
    py.assert_refused(&resource, "after renewal, past the first TTL");

    // Released through the daemon: Python acquires.
    let released = client
        .release(pb::ReleaseRequest {
            resource: resource.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("release")
        .into_inner();
    assert!(released.released);
    let py_lease = py
        .acquire(&resource, 60)
        .expect("Python stormlock acquires after the daemon released");
    py.release(&resource, &py_lease);

    // Force-released by an administrator: Python acquires.
    let lease = try_acquire(&mut client, &resource, 60).await;
    assert!(lease.acquired);
    py.assert_refused(&resource, "before force-release");
    admin
        .force_release(pb::ForceReleaseRequest {
            resource: resource.clone(),
            reason: "python_compat test".to_string(),
        })
        .await
        .expect("force-release");
    let py_lease = py
        .acquire(&resource, 60)
        .expect("Python stormlock acquires after a force-release");
    py.release(&resource, &py_lease);

    // Expired: Python acquires.
    let lease = try_acquire(&mut client, &resource, 5).await;
    assert!(lease.acquired);
    py.assert_refused(&resource, "before expiry");
    let expiry: SystemTime = lease
        .lease
        .and_then(|l| l.expires_at)
        .and_then(|t| t.try_into().ok())
        .expect("expires_at");
    // Python's MySQL backend takes a lapsed row over only once `expires <
    // NOW()`, NOW() in whole seconds: up to a second after it lapsed.
    wait_past(expiry + Duration::from_secs(1)).await;
    if engine.lapsed_mirror_stays {
        // Python never takes over an item; the daemon does, and its release
        // frees the resource for Python.
        py.assert_refused(&resource, "after the lease lapsed without a release");
        let again = try_acquire(&mut client, &resource, 60).await;
        assert!(again.acquired, "the daemon takes its lapsed mirror over");
        let released = client
            .release(pb::ReleaseRequest {
                resource: resource.clone(),
                lease_id: again.lease.expect("lease").lease_id,
            })
            .await
            .expect("release")
            .into_inner();
        assert!(released.released);
    }
    let py_lease = py
        .acquire(&resource, 60)
        .expect("Python stormlock acquires after the lease expired");
    py.release(&resource, &py_lease);
    assert!(py.current(&resource).is_none());
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::support::engine_url;

    fn python(url: &str) -> Option<Python> {
        Python::new("redis", &format!("url = {url}"))
    }

    fn backend(url: &str, prefix: &str, python_stormlock: bool) -> String {
        format!(
            "type = \"redis\"\nurl = {url:?}\nprefix = \"{prefix}\"\n\
             python_stormlock = {python_stormlock}"
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_excludes_python_stormlock_both_ways() {
        let Some(url) = engine_url("STORMLOCK_TEST_REDIS_URL") else {
            return;
        };
        let Some(py) = python(&url) else { return };
        let prefix = format!("pycompat-{}:", unique());
        exclude_each_other(&backend(&url, &prefix, true), &py, MIRRORS_LAPSE).await;
    }

    /// A resource whose Python stormlock key would be one of the daemon's
    /// own keys is refused rather than mixed up with them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_refuses_resources_named_like_its_own_keys() {
        let Some(url) = engine_url("STORMLOCK_TEST_REDIS_URL") else {
            return;
        };
        let prefix = format!("pycompat-{}:", unique());
        let config = format!("[backends.main]\n{}\n", backend(&url, &prefix, true));
        let daemon = TestDaemon::start(&config, false).await;
        let mut client = daemon.client_as(RS_PRINCIPAL).await;
        let refused = client
            .acquire(acquire_request(&format!("{prefix}lease:x"), 60, 0))
            .await
            .err()
            .map(|status| status.message().to_string())
            .unwrap_or_default();
        assert!(refused.contains("python_stormlock"), "{refused:?}");
        let fine = try_acquire(&mut client, &format!("{prefix}other:x"), 60).await;
        assert!(fine.acquired);
    }

    /// Without the setting the two tools do not see each other: this is
    /// what the migration mode is for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_without_the_setting_ignores_python_stormlock() {
        let Some(url) = engine_url("STORMLOCK_TEST_REDIS_URL") else {
            return;
        };
        let Some(py) = python(&url) else { return };
        let prefix = format!("pycompat-{}:", unique());
        let config = format!("[backends.main]\n{}\n", backend(&url, &prefix, false));
        let daemon = TestDaemon::start(&config, false).await;
        let mut client = daemon.client_as(RS_PRINCIPAL).await;
        let resource = format!("pycompat/{}/deploy", unique());
        let py_lease = py
            .acquire(&resource, 60)
            .expect("Python stormlock acquires");
        assert!(try_acquire(&mut client, &resource, 60).await.acquired);
        py.release(&resource, &py_lease);
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::support::engine_url;

    /// Python stormlock's table as MIGRATING.md documents it, named `table`.
    async fn create_python_table(url: &str, table: &str) {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        let ddl = stormlockd::backend::postgres::PYTHON_DDL
            .replace("CREATE TABLE stormlock ", &format!("CREATE TABLE {table} "));
        client
            .batch_execute(&ddl)
            .await
            .expect("create Python's table");
    }

    fn backend(url: &str, python_table: Option<&str>) -> String {
        let mut body = format!(
            "type = \"postgres\"\nurl = {url:?}\ntable = \"locks_{}\"",
            unique()
        );
        if let Some(table) = python_table {
            body.push_str(&format!(
                "\npython_stormlock = true\npython_table = \"{table}\""
            ));
        }
        body
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_excludes_python_stormlock_both_ways() {
        let Some(url) = engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
            return;
        };
        let table = format!("py_{}", unique());
        let Some(py) = Python::new(
            "postgresql",
            &format!("connection = {url}\ntable = {table}"),
        ) else {
            return;
        };
        create_python_table(&url, &table).await;
        exclude_each_other(&backend(&url, Some(&table)), &py, MIRRORS_LAPSE).await;
    }

    /// The setting asks for exclusion with Python stormlock: without its
    /// table the backend refuses to start, naming it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_refuses_to_start_without_the_python_table() {
        let Some(url) = engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
            return;
        };
        let missing = format!("py_missing_{}", unique());
        refuses_to_start_without(&backend(&url, Some(&missing)), &missing).await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use mysql_async::prelude::Queryable;

    use super::*;
    use crate::support::{PrivateEngine, engine_url};

    /// Python stormlock's table as MIGRATING.md documents it, named `table`
    /// (kept if it exists).
    pub(super) async fn create_python_table(url: &str, table: &str) {
        let opts = mysql_async::Opts::from_url(url).expect("MySQL URL");
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .expect("connect to MySQL");
        let ddl = stormlockd::backend::mysql::PYTHON_DDL.replace(
            "CREATE TABLE stormlock ",
            &format!("CREATE TABLE IF NOT EXISTS {table} "),
        );
        conn.query_drop(ddl).await.expect("create Python's table");
        conn.disconnect().await.expect("disconnect");
    }

    /// Python's `[backend.mysql]` for the server of `url` and its `table`:
    /// the driver's keyword arguments.
    fn python(url: &str, table: &str) -> Option<Python> {
        let opts = mysql_async::Opts::from_url(url).expect("MySQL URL");
        Python::new(
            "mysql",
            &format!(
                "host = {}\nport = {}\nuser = {}\ndatabase = {}\ntable = {table}",
                opts.ip_or_hostname(),
                opts.tcp_port(),
                opts.user().unwrap_or("root"),
                opts.db_name().unwrap_or_default()
            ),
        )
    }

    fn backend(url: &str, python_table: Option<&str>) -> String {
        let mut body = format!(
            "type = \"mysql\"\nurl = {url:?}\ntable = \"locks_{}\"",
            unique()
        );
        if let Some(table) = python_table {
            body.push_str(&format!(
                "\npython_stormlock = true\npython_table = \"{table}\""
            ));
        }
        body
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_excludes_python_stormlock_both_ways() {
        let Some(url) = engine_url("STORMLOCK_TEST_MYSQL_URL") else {
            return;
        };
        let table = format!("py_{}", unique());
        let Some(py) = python(&url, &table) else {
            return;
        };
        create_python_table(&url, &table).await;
        exclude_each_other(&backend(&url, Some(&table)), &py, MIRRORS_LAPSE).await;
    }

    /// Python stormlock writes its times in the server's time zone; the
    /// daemon's sessions run in UTC. On a server whose zone is five and a
    /// half hours off UTC, each still sees the other's locks held for as
    /// long as they are, and the daemon reports Python's times right.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_python_times_in_the_servers_time_zone() {
        if engine_url("STORMLOCK_TEST_MYSQL_URL").is_none() {
            return;
        }
        // A POSIX zone, so that no time zone data is needed: UTC+05:30.
        let Some(engine) = PrivateEngine::start_with("mysql", &[("TZ", "XST-5:30")]) else {
            return;
        };
        let table = format!("py_{}", unique());
        let Some(py) = python(&engine.url, &table) else {
            return;
        };
        create_python_table(&engine.url, &table).await;
        let config = format!("[backends.main]\n{}\n", backend(&engine.url, Some(&table)));
        let daemon = TestDaemon::start(&config, false).await;
        let mut client = daemon.client_as(RS_PRINCIPAL).await;
        let resource = format!("pycompat/{}/tz", unique());

        let py_lease = py
            .acquire(&resource, 600)
            .expect("Python stormlock acquires");
        let asked = SystemTime::now();
        let refused = try_acquire(&mut client, &resource, 60).await;
        assert!(!refused.acquired, "granted while Python stormlock holds");
        let holder = refused.holder.expect("the refusal names the holder");
        let time = |t: Option<prost_types::Timestamp>| -> SystemTime {
            t.and_then(|t| t.try_into().ok()).expect("a time")
        };
        let near = |t: SystemTime, target: SystemTime| {
            let off = t
                .duration_since(target)
                .or_else(|_| target.duration_since(t))
                .unwrap_or_default();
            off < Duration::from_secs(60)
        };
        let since = time(holder.acquired_at);
        let until = time(holder.expires_at);
        assert!(
            near(since, asked),
            "Python's creation time read as {since:?}"
        );
        assert!(
            near(until, asked + Duration::from_secs(600)),
            "Python's expiry read as {until:?}"
        );
        py.release(&resource, &py_lease);

        // The daemon's mirror is held on Python's clock, and renewed.
        let granted = try_acquire(&mut client, &resource, 60).await;
        assert!(granted.acquired);
        let lease = granted.lease.expect("lease");
        py.assert_refused(&resource, "while the daemon holds");
        assert_eq!(
            py.current(&resource),
            Some((RS_PRINCIPAL.to_string(), lease.lease_id.clone()))
        );
        client
            .renew(pb::RenewRequest {
                resource: resource.clone(),
                lease_id: lease.lease_id.clone(),
                ttl: secs(120),
            })
            .await
            .expect("renew");
        py.assert_refused(&resource, "after renewal");
    }

    /// The setting asks for exclusion with Python stormlock: without its
    /// table the backend refuses to start, naming it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_refuses_to_start_without_the_python_table() {
        let Some(url) = engine_url("STORMLOCK_TEST_MYSQL_URL") else {
            return;
        };
        let missing = format!("py_missing_{}", unique());
        refuses_to_start_without(&backend(&url, Some(&missing)), &missing).await;
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use crate::support::engine_url;

    /// Python's `[backend.etcd]` for the member at `endpoint`, with its
    /// keys under `prefix`.
    fn python(endpoint: &str, prefix: &str) -> Option<Python> {
        let address = endpoint.trim_start_matches("http://");
        let (host, port) = address.rsplit_once(':').expect("host:port");
        Python::new(
            "etcd",
            &format!("host = {host}\nport = {port}\nprefix = {prefix}"),
        )
    }

    fn backend(endpoint: &str, prefix: &str, python_prefix: &str) -> String {
        format!(
            "type = \"etcd\"\nendpoints = [{endpoint:?}]\nprefix = \"{prefix}\"\n\
             python_stormlock = true\npython_prefix = \"{python_prefix}\""
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn etcd_excludes_python_stormlock_both_ways() {
        let Some(endpoint) = engine_url("STORMLOCK_TEST_ETCD_ENDPOINT") else {
            return;
        };
        let base = format!("/pycompat-{}/", unique());
        let python_prefix = format!("{base}py/");
        let Some(py) = python(&endpoint, &python_prefix) else {
            return;
        };
        let backend = backend(&endpoint, &format!("{base}sl/"), &python_prefix);
        exclude_each_other(&backend, &py, MIRRORS_LAPSE).await;
    }

    /// With Python stormlock's default prefix `/`, a resource whose Python
    /// keys would be the daemon's own keys is refused rather than mixed up
    /// with them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn etcd_refuses_resources_whose_python_keys_are_its_own() {
        let Some(endpoint) = engine_url("STORMLOCK_TEST_ETCD_ENDPOINT") else {
            return;
        };
        let own = format!("pycompat-{}", unique());
        let config = format!(
            "[backends.main]\n{}\n",
            backend(&endpoint, &format!("/{own}/"), "/")
        );
        let daemon = TestDaemon::start(&config, false).await;
        let mut client = daemon.client_as(RS_PRINCIPAL).await;
        let odd = format!("{own}/lock/x");
        let refused = client
            .acquire(acquire_request(&odd, 60, 0))
            .await
            .err()
            .map(|status| status.message().to_string())
            .unwrap_or_default();
        assert!(refused.contains("python_stormlock"), "{refused:?}");
        // Its Python keys are never read as Python's: it is simply free.
        let current = client
            .current(pb::CurrentRequest {
                resource: odd,
                ..Default::default()
            })
            .await
            .expect("current")
            .into_inner();
        assert!(current.lease.is_none());
        let fine = try_acquire(&mut client, &format!("{own}/other/x"), 60).await;
        assert!(fine.acquired);
    }
}

#[cfg(feature = "dynamodb")]
mod dynamodb {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };

    use super::*;
    use crate::support::{engine_url, in_aws_environment};

    /// DynamoDB: Python stormlock only ever creates items.
    const CREATES_ONLY: Engine = Engine {
        lapsed_mirror_stays: true,
    };

    /// Runs `test` on a multi-threaded runtime in a process with the
    /// emulator's credentials (see [`in_aws_environment`]), with the
    /// emulator's endpoint.
    fn with_emulator<F>(name: &str, test: impl FnOnce(String) -> F)
    where
        F: std::future::Future<Output = ()>,
    {
        in_aws_environment(module_path!(), name, || {
            let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
                return;
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(test(endpoint));
        });
    }

    use crate::support::dynamodb_emulator as emulator;

    /// Python stormlock's table (partition key `resource` only), which
    /// Python does not create either.
    pub(super) async fn create_python_table(endpoint: &str, table: &str) {
        let sdk = emulator().endpoint_url(endpoint).load().await;
        let attribute = AttributeDefinition::builder()
            .attribute_name("resource")
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("attribute");
        let key = KeySchemaElement::builder()
            .attribute_name("resource")
            .key_type(KeyType::Hash)
            .build()
            .expect("key");
        aws_sdk_dynamodb::Client::new(&sdk)
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute)
            .key_schema(key)
            .send()
            .await
            .expect("create Python's table");
    }

    fn python(endpoint: &str, table: &str) -> Option<Python> {
        Python::new(
            "dynamodb",
            &format!(
                "table = {table}\nendpoint = {endpoint}\nregion = us-east-1\n\
                 access_key_id = test\nsecret_access_key = test"
            ),
        )
    }

    /// The emulator answers one request at a time, slowly at first: long
    /// budgets, as in the other DynamoDB tests.
    fn backend(endpoint: &str, python_table: &str) -> String {
        format!(
            "type = \"dynamodb\"\nendpoint = {endpoint:?}\ntable = \"locks-{}\"\n\
             region = \"us-east-1\"\ntimeout = \"15s\"\npython_stormlock = true\n\
             python_table = \"{python_table}\"\n[defaults]\nbackend_timeout = \"15s\"",
            unique()
        )
    }

    #[test]
    fn dynamodb_excludes_python_stormlock_both_ways() {
        with_emulator(
            "dynamodb_excludes_python_stormlock_both_ways",
            |endpoint| async move {
                let table = format!("py-{}", unique());
                let Some(py) = python(&endpoint, &table) else {
                    return;
                };
                create_python_table(&endpoint, &table).await;
                exclude_each_other(&backend(&endpoint, &table), &py, CREATES_ONLY).await;
            },
        );
    }

    /// A Python lock that lapsed without a release keeps Python clients out
    /// (Python only creates items); the daemon counts it as lapsed, takes
    /// the resource over, and its release frees it for Python again.
    #[test]
    fn dynamodb_takes_over_lapsed_python_locks() {
        with_emulator(
            "dynamodb_takes_over_lapsed_python_locks",
            |endpoint| async move {
                let table = format!("py-{}", unique());
                let Some(py) = python(&endpoint, &table) else {
                    return;
                };
                create_python_table(&endpoint, &table).await;
                let config = format!("[backends.main]\n{}\n", backend(&endpoint, &table));
                let daemon = TestDaemon::start(&config, false).await;
                let mut client = daemon.client_as(RS_PRINCIPAL).await;
                let resource = format!("pycompat/{}/lapsed", unique());

                py.acquire(&resource, 2).expect("Python stormlock acquires");
                // Python's expiry is whole seconds, rounded down.
                wait_past(SystemTime::now() + Duration::from_secs(2)).await;
                py.assert_refused(&resource, "after its own lock lapsed");
                let granted = try_acquire(&mut client, &resource, 60).await;
                assert!(
                    granted.acquired,
                    "the daemon takes a lapsed Python lock over"
                );
                let lease = granted.lease.expect("lease");
                assert_eq!(
                    py.current(&resource),
                    Some((RS_PRINCIPAL.to_string(), lease.lease_id.clone()))
                );
                let released = client
                    .release(pb::ReleaseRequest {
                        resource: resource.clone(),
                        lease_id: lease.lease_id,
                    })
                    .await
                    .expect("release")
                    .into_inner();
                assert!(released.released);
                let py_lease = py
                    .acquire(&resource, 60)
                    .expect("Python stormlock acquires after the daemon released");
                py.release(&resource, &py_lease);
            },
        );
    }

    /// The setting asks for exclusion with Python stormlock: without its
    /// table the backend refuses to start, naming it.
    #[test]
    fn dynamodb_refuses_to_start_without_the_python_table() {
        with_emulator(
            "dynamodb_refuses_to_start_without_the_python_table",
            |endpoint| async move {
                let missing = format!("py-missing-{}", unique());
                let body = backend(&endpoint, &missing);
                let (body, _) = body.split_once("\n[defaults]").expect("backend keys");
                refuses_to_start_without(body, &missing).await;
            },
        );
    }
}

/// Connecting the backend of the TOML table `body` fails, naming the
/// migration setting and Python's table `missing`.
async fn refuses_to_start_without(body: &str, missing: &str) {
    let config: stormlockd::backend::BackendConfig = toml::from_str(body).expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = stormlockd::backend::connect("main", &config, dir.path())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(refused.contains(missing), "{refused:?}");
    assert!(refused.contains("python_stormlock"), "{refused:?}");
}

/// The conformance suite, unchanged, with `python_stormlock = true` on the
/// engines whose mode this file brought: writing mirrors in the same steps
/// as the grants must keep every promise a backend makes without them.
mod conformance_in_migration_mode {
    #[cfg(feature = "mysql")]
    mod mysql {
        use std::sync::Arc;

        use stormlockd::backend::Backend;
        use stormlockd::backend::mysql::{MysqlBackend, MysqlConfig};

        async fn make() -> Option<Arc<dyn Backend>> {
            let url = crate::support::engine_url("STORMLOCK_TEST_MYSQL_URL")?;
            super::super::mysql::create_python_table(&url, "conformance_py").await;
            let config: MysqlConfig = toml::from_str(&format!(
                "url = {url:?}\ntable = \"conformance_py_locks\"\npython_stormlock = true\n\
                 python_table = \"conformance_py\""
            ))
            .expect("config");
            let backend = MysqlBackend::connect("test", &config)
                .await
                .expect("connect to MySQL");
            Some(Arc::new(backend))
        }
        crate::conformance::conformance_tests!(make().await);
    }

    #[cfg(feature = "etcd")]
    mod etcd {
        use std::sync::Arc;

        use stormlockd::backend::Backend;
        use stormlockd::backend::etcd::{EtcdBackend, EtcdConfig};

        async fn make() -> Option<Arc<dyn Backend>> {
            let endpoint = crate::support::engine_url("STORMLOCK_TEST_ETCD_ENDPOINT")?;
            let base = format!("/pycompat-conformance-{}/", crate::support::unique());
            let config: EtcdConfig = toml::from_str(&format!(
                "endpoints = [{endpoint:?}]\nprefix = \"{base}sl/\"\npython_stormlock = true\n\
                 python_prefix = \"{base}py/\""
            ))
            .expect("config");
            let backend = EtcdBackend::connect("test", &config)
                .await
                .expect("connect to etcd");
            Some(Arc::new(backend))
        }
        crate::conformance::conformance_tests!(make().await);
    }

    #[cfg(feature = "dynamodb")]
    mod dynamodb {
        use std::sync::Arc;
        use std::time::Duration;

        use stormlockd::backend::Backend;
        use stormlockd::backend::dynamodb::{DynamodbBackend, DynamodbConfig};

        use super::super::dynamodb::create_python_table;
        use crate::support::dynamodb_emulator as emulator;

        async fn make() -> Option<Arc<dyn Backend>> {
            let endpoint = crate::support::engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT")?;
            // Tables of its own per test keep the cases independent.
            let unique = crate::support::unique();
            let python_table = format!("py-{unique}");
            create_python_table(&endpoint, &python_table).await;
            let config = DynamodbConfig {
                table: format!("locks-{unique}"),
                region: Some("us-east-1".to_string()),
                endpoint: Some(endpoint),
                timeout: Duration::from_secs(15),
                python_stormlock: true,
                python_table: Some(python_table),
                ..DynamodbConfig::default()
            };
            let backend = DynamodbBackend::connect_with("test", &config, emulator())
                .await
                .expect("connect to DynamoDB");
            Some(Arc::new(backend))
        }
        crate::conformance::conformance_tests!(make().await);
    }
}
