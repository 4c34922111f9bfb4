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
/// UUIDs come with dashes, the same 16 bytes in hex without.
fn plain_id(id: &str) -> String {
    id.trim().replace('-', "")
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

/// Both ways, with the daemon's backend `backend` (which has
/// `python_stormlock = true`) and the Python CLI `py` on the same engine.
async fn exclude_each_other(backend: &str, py: &Python) {
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
    wait_past(expiry).await;
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
        exclude_each_other(&backend(&url, &prefix, true), &py).await;
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
        exclude_each_other(&backend(&url, Some(&table)), &py).await;
    }

    /// The setting asks for exclusion with Python stormlock: without its
    /// table the backend refuses to start, naming it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_refuses_to_start_without_the_python_table() {
        let Some(url) = engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
            return;
        };
        let missing = format!("py_missing_{}", unique());
        let config: stormlockd::backend::BackendConfig =
            toml::from_str(&backend(&url, Some(&missing))).expect("config");
        let dir = tempfile::tempdir().expect("tempdir");
        let refused = stormlockd::backend::connect("main", &config, dir.path())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains(&missing), "{refused:?}");
        assert!(refused.contains("python_stormlock"), "{refused:?}");
    }
}
