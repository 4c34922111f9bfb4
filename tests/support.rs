//! Shared test helpers: engines started by `tests/engines.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The client URL of the shared test engine in `$var` (set by
/// `tests/engines.sh run`). `None` skips the test when run outside the
/// script; under the script (`STORMLOCK_TEST_REQUIRE_ENGINES=1`) a missing
/// engine fails the test instead, so CI can never skip silently.
pub fn engine_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("STORMLOCK_TEST_REQUIRE_ENGINES").is_none(),
                "{var} is not set although engines are required"
            );
            eprintln!("skipped: {var} is not set (run the tests under tests/engines.sh run)");
            None
        }
    }
}

/// An engine of this test's own, for tests that stop, restart or freeze it.
/// Dropping it stops the engine and removes its state.
pub struct PrivateEngine {
    engine: &'static str,
    dir: tempfile::TempDir,
    /// The client URL; stays the same across [`PrivateEngine::restart`].
    pub url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/engines.sh")
}

impl PrivateEngine {
    /// Starts `engine` (`redis`, `etcd`, `postgres`, `mysql`, `dynamodb`), or
    /// `None` when engines are not available (see [`engine_url`]).
    pub fn start(engine: &'static str) -> Option<Self> {
        let available = Command::new("bash")
            .arg("-c")
            .arg(format!("command -v {}", binary(engine)))
            .output()
            .is_ok_and(|o| o.status.success());
        if !available {
            assert!(
                std::env::var_os("STORMLOCK_TEST_REQUIRE_ENGINES").is_none(),
                "{engine} is not installed although engines are required"
            );
            eprintln!("skipped: {engine} is not installed");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("stormlock-private-")
            .tempdir()
            .expect("tempdir");
        let mut engine = Self {
            engine,
            dir,
            url: String::new(),
        };
        engine.url = engine.run_script("start");
        Some(engine)
    }

    fn run_script(&self, action: &str) -> String {
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg(action);
        if action == "start" {
            cmd.arg(self.engine);
        }
        let out = cmd
            .arg(self.dir.path())
            .output()
            .expect("run tests/engines.sh");
        assert!(
            out.status.success(),
            "engines.sh {action} {} failed: {}",
            self.engine,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn pid(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .expect("engine pid")
            .trim()
            .to_string()
    }

    /// Signals the engine and its child processes: PostgreSQL serves each
    /// connection from a child in a session of its own, which must stop and
    /// resume too.
    fn signal(&self, signal: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
        // Exits with 1 when the engine has no children, which is fine.
        let children = Command::new("pkill")
            .arg(format!("-{signal}"))
            .arg("--parent")
            .arg(&pid)
            .status()
            .expect("pkill");
        assert!(
            children.code().is_some_and(|c| c <= 1),
            "pkill -{signal} --parent"
        );
    }

    /// Stops the engine, keeping its data and port.
    pub fn stop(&self) {
        self.run_script("stop");
    }

    /// Starts the engine again on the same port and data.
    pub fn restart(&self) {
        let url = self.run_script("start");
        assert_eq!(url, self.url, "restarted on the same address");
    }

    /// Freezes the engine (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Thaws a frozen engine (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn binary(engine: &str) -> &str {
    match engine {
        "redis" => "redis-server",
        "postgres" => "pg_ctlcluster",
        "mysql" => "mariadbd",
        "dynamodb" => "python3",
        other => other,
    }
}

/// A daemon served in-process on `127.0.0.1:0`, stopped when dropped.
pub struct TestDaemon {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its data directory (development PKI under `tls/`).
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), stormlock::server::ServerError>>>,
}

impl TestDaemon {
    /// Starts a daemon with `config` (TOML). `insecure` serves plain text;
    /// otherwise the development PKI (mutual TLS) is used.
    pub async fn start(config: &str, insecure: bool) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut daemon = Self::start_in(config, insecure, tmp.path()).await;
        daemon._tmp = Some(tmp);
        daemon
    }

    /// Like [`TestDaemon::start`] with state in `data_dir`, which outlives it.
    pub async fn start_in(config: &str, insecure: bool, data_dir: &Path) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = stormlock::config::Config::parse(config, "test").expect("test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut settings =
            stormlock::server::Settings::resolve(config, data_dir.to_path_buf(), addr, insecure)
                .expect("settings");
        settings.health_interval = std::time::Duration::from_millis(200);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(stormlock::server::run(listener, settings, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The development PKI of this daemon.
    pub fn dev_tls(&self) -> stormlock::paths::DevTls {
        stormlock::paths::DevTls::in_data_dir(&self.data_dir)
    }

    /// A channel with the development client certificate (or plain text for
    /// an insecure daemon).
    pub async fn channel(&self) -> tonic::transport::Channel {
        let dev = self.dev_tls();
        if !dev.ca_cert().exists() {
            return self.channel_with(None).await.expect("connect");
        }
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(dev.client_cert()).expect("client cert"),
            std::fs::read(dev.client_key()).expect("client key"),
        );
        self.channel_with(Some(identity)).await.expect("connect")
    }

    /// A channel presenting `identity` (none: no client certificate). For an
    /// insecure daemon the channel is plain text and `identity` is ignored.
    pub async fn channel_with(
        &self,
        identity: Option<tonic::transport::Identity>,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let dev = self.dev_tls();
        if !dev.ca_cert().exists() {
            return tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))?
                .connect()
                .await;
        }
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(dev.ca_cert()).expect("ca"),
            ))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        tonic::transport::Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(tls)?
            .connect()
            .await
    }

    /// A LockService client over [`TestDaemon::channel`].
    pub async fn client(
        &self,
    ) -> stormlock::pb::lock_service_client::LockServiceClient<tonic::transport::Channel> {
        stormlock::pb::lock_service_client::LockServiceClient::new(self.channel().await)
    }

    /// Stops the daemon gracefully and returns how `run` ended.
    pub async fn shutdown(mut self) -> Result<(), stormlock::server::ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The `[backends.NAME]` body (TOML) for the shared test engine `engine`
/// (`redis`, `postgres`, `etcd`, `mysql`), with keys under a prefix or in
/// a table named after `name` so tests do not see each other's locks;
/// `None` when the engine is not available (see [`engine_url`]).
pub fn shared_backend(engine: &str, name: &str) -> Option<String> {
    let unique = unique();
    Some(match engine {
        "redis" => {
            let url = engine_url("STORMLOCK_TEST_REDIS_URL")?;
            format!("type = \"redis\"\nurl = {url:?}\nprefix = \"{name}-{unique}:\"")
        }
        "postgres" => {
            let url = engine_url("STORMLOCK_TEST_POSTGRES_URL")?;
            format!("type = \"postgres\"\nurl = {url:?}\ntable = \"{name}\"")
        }
        "etcd" => {
            let url = engine_url("STORMLOCK_TEST_ETCD_ENDPOINT")?;
            format!("type = \"etcd\"\nendpoints = [{url:?}]\nprefix = \"/{name}-{unique}/\"")
        }
        "mysql" => {
            let url = engine_url("STORMLOCK_TEST_MYSQL_URL")?;
            format!("type = \"mysql\"\nurl = {url:?}\ntable = \"{name}\"")
        }
        other => panic!("no shared test engine {other:?}"),
    })
}

/// Defines one test per shared engine, each behind its cargo feature, that
/// runs `$run(&backend_toml)` on a backend from [`shared_backend`] named
/// `$name`. Use it inside a module named after what is tested.
macro_rules! on_shared_engines {
    ($name:expr, $run:path) => {
        on_shared_engines!(@one "redis", redis, $name, $run);
        on_shared_engines!(@one "postgres", postgres, $name, $run);
        on_shared_engines!(@one "etcd", etcd, $name, $run);
        on_shared_engines!(@one "mysql", mysql, $name, $run);
    };
    (@one $feature:literal, $engine:ident, $name:expr, $run:path) => {
        #[cfg(feature = $feature)]
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $engine() {
            if let Some(backend) = $crate::support::shared_backend($feature, &$name) {
                $run(&backend).await;
            }
        }
    };
}

/// A short random name part, so that tests sharing an engine never meet.
pub fn unique() -> String {
    stormlock::lease::LeaseId::generate().expose()[..10].to_string()
}

/// `seconds` as a protobuf duration.
pub fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}
