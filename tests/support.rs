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
            skip_for_want_of(&format!("{var} (run the tests under tests/engines.sh run)"));
            None
        }
    }
}

/// Says that the running test is skipped for want of `what` (a tool, an
/// engine), which the caller then returns for; under `tests/engines.sh run`
/// (`STORMLOCK_TEST_REQUIRE_ENGINES`, as scripts/test and CI run the tests)
/// it fails the test instead, so that nothing is skipped as a pass there.
pub fn skip_for_want_of(what: &str) {
    assert!(
        std::env::var_os("STORMLOCK_TEST_REQUIRE_ENGINES").is_none(),
        "{what} is missing although everything is required (STORMLOCK_TEST_REQUIRE_ENGINES)"
    );
    eprintln!("skipped: {what} is missing");
}

/// An engine of this test's own, for tests that stop, restart or freeze it.
/// Dropping it stops the engine and removes its state.
pub struct PrivateEngine {
    engine: &'static str,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// The client URL; stays the same across [`PrivateEngine::restart`].
    pub url: String,
}

/// The `stormlock` binary built beside this test binary.
pub fn stormlock() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| built_binary("stormlock"))
}

/// The `stormlockd` binary built beside this test binary.
pub fn stormlockd() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| built_binary("stormlockd"))
}

/// A workspace binary in the profile directory this test binary runs from
/// (`target/debug/deps/tests-…` → `target/debug/NAME`): the binaries belong
/// to other packages, so Cargo sets no `CARGO_BIN_EXE_*` for them.
/// `scripts/test` builds the workspace before it runs the tests.
fn built_binary(name: &str) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --all-features` first",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("engines.sh")
}

impl PrivateEngine {
    /// Starts `engine` (`redis`, `etcd`, `postgres`, `mysql`, `dynamodb`), or
    /// `None` when engines are not available (see [`engine_url`]).
    pub fn start(engine: &'static str) -> Option<Self> {
        Self::start_with(engine, &[])
    }

    /// Like [`PrivateEngine::start`], with `env` for `tests/engines.sh`
    /// (such as `STORMLOCK_ETCD_ELECTION_TIMEOUT_MS`), kept for restarts.
    pub fn start_with(engine: &'static str, env: &[(&str, &str)]) -> Option<Self> {
        let available = Command::new("bash")
            .arg("-c")
            .arg(format!("command -v {}", binary(engine)))
            .output()
            .is_ok_and(|o| o.status.success());
        if !available {
            skip_for_want_of(&format!("{engine} (not installed)"));
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("stormlock-private-")
            .tempdir()
            .expect("tempdir");
        let mut engine = Self {
            engine,
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
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
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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
    task: Option<tokio::task::JoinHandle<Result<(), stormlockd::server::ServerError>>>,
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
        stormlockd::tls::install_crypto_provider();
        let config = stormlockd::config::Config::parse(config, "test").expect("test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = config.layer(&stormlockd::config::Overrides {
            data_dir: Some(data_dir.to_path_buf()),
            insecure,
            ..Default::default()
        });
        let mut settings = stormlockd::server::Settings::resolve(config, addr).expect("settings");
        settings.health_interval = std::time::Duration::from_millis(200);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(stormlockd::server::run(listener, settings, async move {
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
    pub fn dev_tls(&self) -> stormlock_api::paths::DevTls {
        stormlock_api::paths::DevTls::in_data_dir(&self.data_dir)
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
    ) -> stormlock_api::pb::lock_service_client::LockServiceClient<tonic::transport::Channel> {
        stormlock_api::pb::lock_service_client::LockServiceClient::new(self.channel().await)
    }

    /// A LockService client presenting a certificate for `name` issued by
    /// this daemon's development CA: an authenticated principal that is not
    /// an administrator (only the development client certificate is).
    pub async fn client_as(
        &self,
        name: &str,
    ) -> stormlock_api::pb::lock_service_client::LockServiceClient<tonic::transport::Channel> {
        let dev = self.dev_tls();
        let ca_key = rcgen::KeyPair::from_pem(
            &std::fs::read_to_string(dev.ca_key()).expect("development CA key"),
        )
        .expect("CA key");
        let ca_pem = std::fs::read_to_string(dev.ca_cert()).expect("development CA");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).expect("client certificate");
        let identity = tonic::transport::Identity::from_pem(cert.pem(), key.serialize_pem());
        stormlock_api::pb::lock_service_client::LockServiceClient::new(
            self.channel_with(Some(identity)).await.expect("connect"),
        )
    }

    /// Stops the daemon gracefully and returns how `run` ended.
    pub async fn shutdown(mut self) -> Result<(), stormlockd::server::ServerError> {
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

/// A real `stormlockd` process serving plain text on a free loopback port,
/// for tests that kill or freeze a daemon. Dropping it kills exactly that
/// process.
pub struct DaemonProcess {
    child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Set once the process is reaped: its pid may then belong to another.
    reaped: bool,
}

impl DaemonProcess {
    /// Starts `stormlockd --insecure` with `config` (TOML) and waits until it
    /// serves. `env` is added to its environment (for example the AWS
    /// credentials of the DynamoDB emulator).
    pub async fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("stormlockd-")
            .tempdir()
            .expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        std::fs::write(dir.path().join("stormlockd.toml"), config).expect("write config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = Self::spawn(dir.path(), port, &env);
        let mut daemon = Self {
            child,
            port,
            dir,
            env,
            reaped: false,
        };
        daemon.wait_serving().await;
        daemon
    }

    fn spawn(dir: &Path, port: u16, env: &[(String, String)]) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .expect("log file");
        Command::new(stormlockd())
            .arg("--config")
            .arg(dir.join("stormlockd.toml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--insecure")
            .env_remove("STORMLOCKD_DATA_DIR")
            .env_remove("STORMLOCKD_CONFIG")
            .env_remove("STORMLOCKD_LISTEN")
            .env_remove("STORMLOCKD_HEALTH_LISTEN")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn stormlockd")
    }

    /// SIGKILL, then the same daemon again on the same port, configuration
    /// and data directory; waits until it serves.
    pub async fn restart(&mut self) {
        if !self.reaped {
            self.kill();
        }
        self.child = Self::spawn(self.dir.path(), self.port, &self.env);
        self.reaped = false;
        self.wait_serving().await;
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    async fn wait_serving(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("stormlockd exited early ({status}):\n{}", self.log());
            }
            if let Ok(channel) = self.endpoint().connect().await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let answer = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if answer.is_ok() {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "stormlockd not serving after 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn endpoint(&self) -> tonic::transport::Endpoint {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
            .expect("endpoint")
            .connect_timeout(std::time::Duration::from_secs(2))
    }

    /// The health status the daemon reports for `service`.
    pub async fn health(
        &self,
        service: &str,
    ) -> tonic_health::pb::health_check_response::ServingStatus {
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(self.endpoint().connect_lazy());
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("health check");
        answer.into_inner().status()
    }

    /// A client that connects lazily, so it keeps working (or failing fast)
    /// across the daemon's death.
    pub fn client(
        &self,
    ) -> stormlock_api::pb::lock_service_client::LockServiceClient<tonic::transport::Channel> {
        stormlock_api::pb::lock_service_client::LockServiceClient::new(
            self.endpoint().connect_lazy(),
        )
    }

    /// SIGKILL: the daemon dies without any clean-up.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill stormlockd");
        self.child.wait().expect("reap stormlockd");
        self.reaped = true;
    }

    fn signal(&self, signal: &str) {
        assert!(!self.reaped, "the daemon is gone");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGSTOP: the daemon keeps its connections but answers nothing.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`DaemonProcess::freeze`].
    pub fn thaw(&self) {
        self.signal("CONT");
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[backends.NAME]` body (TOML) for the shared test engine `engine`
/// (`redis`, `postgres`, `etcd`, `mysql`, `dynamodb`), with keys under a prefix or in
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
        // A table of its own; the emulator answers one request at a time,
        // slowly at first, hence the longer budgets (the `[defaults]` table
        // after the backend's keys is part of the body on purpose).
        "dynamodb" => {
            let url = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT")?;
            format!(
                "type = \"dynamodb\"\nendpoint = {url:?}\ntable = \"{name}-{unique}\"\n\
                 region = \"us-east-1\"\ntimeout = \"15s\"\n[defaults]\nbackend_timeout = \"15s\""
            )
        }
        other => panic!("no shared test engine {other:?}"),
    })
}

/// Marks the copy of a test that [`in_aws_environment`] runs.
const AWS_CHILD: &str = "STORMLOCK_TEST_AWS_CHILD";

/// Runs `run` in a process whose environment has the DynamoDB emulator's
/// dummy AWS credentials, which an in-process daemon reads from its
/// environment (the AWS SDK's default chain). The test process cannot set
/// its own environment (no `unsafe`), so it runs the test `test` (its full
/// path, `module_path!()` of the test and its name) again in a copy of the
/// test binary with those variables, and fails when that copy fails or did
/// not run exactly that test. Skipped like [`engine_url`] when there is no
/// emulator.
pub fn in_aws_environment(module: &str, test: &str, run: impl FnOnce()) {
    if std::env::var_os(AWS_CHILD).is_some() {
        return run();
    }
    if engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT").is_none() {
        return;
    }
    // `tests::watch::x` → `watch::x::dynamodb`, as the harness names it.
    let path = module.split_once("::").map_or(module, |(_, rest)| rest);
    let name = format!("{path}::{test}");
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([
            name.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .envs(crate::exclusion::DYNAMODB_ENV.iter().copied())
        .env(AWS_CHILD, "1")
        .output()
        .expect("run the test binary again");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{name} with the emulator's credentials:\n{stdout}\n{stderr}");
    assert!(out.status.success(), "{name} failed ({})", out.status);
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{name} did not run exactly once"
    );
}

/// Defines one test per shared engine, each behind its cargo feature, that
/// runs `$run(&backend_toml)` on a backend from [`shared_backend`] named
/// `$name`. Use it inside a module named after what is tested. DynamoDB's
/// runs in [`in_aws_environment`].
macro_rules! on_shared_engines {
    ($name:expr, $run:path) => {
        on_shared_engines!(@one "redis", redis, $name, $run);
        on_shared_engines!(@one "postgres", postgres, $name, $run);
        on_shared_engines!(@one "etcd", etcd, $name, $run);
        on_shared_engines!(@one "mysql", mysql, $name, $run);
        #[cfg(feature = "dynamodb")]
        #[test]
        fn dynamodb() {
            $crate::support::in_aws_environment(module_path!(), "dynamodb", || {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(4)
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(async {
                        if let Some(backend) = $crate::support::shared_backend("dynamodb", &$name) {
                            $run(&backend).await;
                        }
                    })
            });
        }
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
    stormlockd::lease::LeaseId::generate().expose()[..10].to_string()
}

/// `seconds` as a protobuf duration.
pub fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// A TCP port free on 127.0.0.1 right now (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// An Acquire of `resource` for `ttl` seconds, waiting up to `wait` seconds
/// (0: try once).
pub fn acquire_request(resource: &str, ttl: i64, wait: i64) -> stormlock_api::pb::AcquireRequest {
    stormlock_api::pb::AcquireRequest {
        resource: resource.to_string(),
        ttl: secs(ttl),
        wait: if wait > 0 { secs(wait) } else { None },
        ..Default::default()
    }
}

/// `GET /metrics` on a daemon's metrics listener at `addr`, retried until
/// the listener answers (20 s at most): the OpenMetrics text, its HTTP
/// status and content type checked.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> String {
    let patience = std::time::Duration::from_secs(20);
    let until = std::time::Instant::now() + patience;
    loop {
        match try_scrape(addr, patience).await {
            Ok(text) => return text,
            Err(e) => assert!(
                std::time::Instant::now() < until,
                "cannot scrape {addr}: {e}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// [`scrape_metrics`] for a test without a runtime of its own.
pub fn scrape_metrics_blocking(addr: std::net::SocketAddr) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(scrape_metrics(addr))
}

async fn try_scrape(
    addr: std::net::SocketAddr,
    patience: std::time::Duration,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut response = String::new();
    tokio::time::timeout(patience, stream.read_to_string(&mut response))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    Ok(body.to_string())
}

/// The value of the sample `series` (name and labels exactly as exposed)
/// in scraped `text`; a series that is not exposed fails the test, so that
/// a renamed metric never reads as 0.
pub fn metric_sample(text: &str, series: &str) -> f64 {
    metric_sample_or(text, series).unwrap_or_else(|| panic!("{series} is not exposed:\n{text}"))
}

/// [`metric_sample`], `None` for a series not exposed (yet: a labelled
/// counter appears with its first count).
pub fn metric_sample_or(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("numeric sample"))
}

/// The AWS configuration for the DynamoDB emulator (moto): its dummy static
/// credentials and region, set here rather than in the process
/// environment. Add the endpoint with `endpoint_url`, or name it in a
/// `DynamodbConfig`.
#[cfg(feature = "dynamodb")]
pub fn dynamodb_emulator() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(stormlockd::tls::aws_https_client())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "stormlock-tests",
        ))
}
