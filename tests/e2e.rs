//! End to end: the real `stormlock` against a real `stormlockd` on loopback,
//! talking mutual TLS with the daemon's development certificates. Walks
//! Python stormlock 0.4.1's CLI test (`tests/test_cli.sh`) and the newer
//! commands, formats and exit statuses.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::support::free_port;
pub(crate) use crate::support::{stormlock, stormlockd};

/// A daemon of this test's own; dropping it kills exactly that process.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) dir: tempfile::TempDir,
    /// Extra command-line arguments, kept for [`Daemon::restart`].
    extra: Vec<String>,
}

fn spawn_daemon(dir: &Path, port: u16, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .expect("log file");
    Command::new(stormlockd())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .env_remove("STORMLOCKD_DATA_DIR")
        .env_remove("STORMLOCKD_CONFIG")
        .env_remove("STORMLOCKD_LISTEN")
        .env_remove("STORMLOCKD_INSECURE")
        // The level comes from the test (flags, the config file's
        // log_level), never from the shell that runs the suite.
        .env_remove("STORMLOCKD_LOG")
        .env_remove("RUST_LOG")
        // The CLI's variables, exported in the same shell, must not reach
        // the daemon: were they read, it would fail (no such config file) or
        // keep its state elsewhere.
        .env("STORMLOCK_CONFIG", dir.join("cli-only.toml"))
        .env("STORMLOCK_DATA_DIR", dir.join("cli-data"))
        .env("STORMLOCK_LISTEN", "127.0.0.1:1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn stormlockd")
}

impl Daemon {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a daemon with extra command-line arguments; `{dir}` in them
    /// stands for the test's directory.
    pub(crate) fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("stormlock-e2e-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let extra: Vec<String> = extra
            .iter()
            .map(|a| a.replace("{dir}", &dir.path().display().to_string()))
            .collect();
        let child = spawn_daemon(dir.path(), port, &extra);
        let mut daemon = Self {
            child,
            port,
            dir,
            extra,
        };
        daemon.wait_ready();
        daemon
    }

    /// Stops the daemon and starts it again with the same address, data and
    /// arguments.
    pub(crate) fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.start_again();
    }

    /// Starts the daemon again after it exited (see [`Daemon::terminate`]),
    /// with the same address, data and arguments.
    pub(crate) fn start_again(&mut self) {
        self.child = spawn_daemon(self.dir.path(), self.port, &self.extra);
        self.wait_ready();
    }

    /// SIGTERM, then waits (bounded) for the daemon to exit; returns how.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGHUP (reload) and waits (bounded) until the daemon has
    /// logged the outcome of one more reload than before.
    pub(crate) fn reload(&self) -> String {
        let outcomes = |log: &str| {
            log.matches("configuration reloaded").count() + log.matches("reload refused").count()
        };
        let before = outcomes(&self.log());
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -HUP");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if outcomes(&log) > before {
                return log;
            }
            assert!(Instant::now() < deadline, "no reload logged:\n{log}");
            sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("stormlockd exited early ({status}):\n{}", self.log());
            }
            let ready = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.data_dir().join("tls/client.key").is_file();
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stormlockd not ready after 30 s:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Runs `call` with a LockService client presenting the development
    /// client certificate (an administrator). For synchronous tests only:
    /// it runs its own Tokio runtime.
    pub(crate) fn grpc<T, F>(&self, call: impl FnOnce(LockServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let tls = self.data_dir().join("tls");
        let read = |file: &str| std::fs::read(tls.join(file)).expect("development PKI");
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")))
            .identity(Identity::from_pem(read("client.crt"), read("client.key")))
            .domain_name("localhost");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
                .expect("endpoint")
                .tls_config(config)
                .expect("tls")
                .connect()
                .await
                .expect("connect");
            call(LockServiceClient::new(channel)).await
        })
    }

    /// Waits (bounded) until `n` callers wait in line for `resource`.
    pub(crate) fn until_waiting(&self, resource: &str, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let waiting = self.grpc(|mut client| async move {
                client
                    .current(pb::CurrentRequest {
                        resource: resource.to_string(),
                        ..Default::default()
                    })
                    .await
                    .expect("current")
                    .into_inner()
                    .waiting
            });
            if waiting == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{waiting} waiting for {resource}, not {n}"
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// The fence of the lease on `resource`, if it is held.
    pub(crate) fn fence(&self, resource: &str) -> Option<u64> {
        self.grpc(|mut client| async move {
            client
                .current(pb::CurrentRequest {
                    resource: resource.to_string(),
                    ..Default::default()
                })
                .await
                .expect("current")
                .into_inner()
                .lease
                .map(|l| l.fence)
        })
    }

    /// `program` with the environment of [`Daemon::command`].
    pub(crate) fn with_env(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        cli_env(
            &mut command,
            self.dir.path(),
            &self.data_dir(),
            Some(self.port),
        );
        command
    }

    /// The CLI against this daemon, to start in the background.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        cli_command(args, self.dir.path(), &self.data_dir(), Some(self.port))
    }

    /// Runs the CLI against this daemon with a clean environment: no config
    /// file, the daemon's development certificates.
    pub(crate) fn cli(&self, args: &[&str]) -> Run {
        run_cli(args, self.dir.path(), &self.data_dir(), Some(self.port))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one CLI run did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }
    pub(crate) fn exit(self, code: i32) -> Self {
        assert_eq!(self.code, code, "expected exit {code}: {self:?}");
        self
    }
    pub(crate) fn line(&self) -> String {
        self.stdout.trim_end_matches('\n').to_string()
    }
}

pub(crate) fn run_cli(args: &[&str], home: &Path, data_dir: &Path, port: Option<u16>) -> Run {
    let mut command = cli_command(args, home, data_dir, port);
    command.stdin(Stdio::null());
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run stormlock");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// The CLI with a clean environment: no config file, `data_dir`'s
/// development certificates, the daemon on `port`.
pub(crate) fn cli_command(
    args: &[&str],
    home: &Path,
    data_dir: &Path,
    port: Option<u16>,
) -> Command {
    let mut command = Command::new(stormlock());
    command.args(args);
    cli_env(&mut command, home, data_dir, port);
    command
}

/// The clean environment of [`cli_command`], for a command that runs the CLI.
pub(crate) fn cli_env(command: &mut Command, home: &Path, data_dir: &Path, port: Option<u16>) {
    command
        .current_dir(home)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("STORMLOCK_DATA_DIR", data_dir);
    for var in [
        "STORMLOCK_CONFIG",
        "STORMLOCK_ADDR",
        "STORMLOCK_CA",
        "STORMLOCK_CERT",
        "STORMLOCK_KEY",
        "STORMLOCK_PRINCIPAL",
        "STORMLOCK_TIMEOUT",
        "STORMLOCK_TOKEN",
        "COLUMNS",
    ] {
        command.env_remove(var);
    }
    if let Some(port) = port {
        command.env("STORMLOCK_ADDR", format!("127.0.0.1:{port}"));
    }
}

/// Runs the CLI without any daemon.
fn cli_alone(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    run_cli(args, dir.path(), &dir.path().join("data"), None)
}

fn assert_iso_ms(text: &str) {
    // 2026-11-26T13:28:46.123+00:00
    let b = text.as_bytes();
    let ok = text.len() == 29
        && text.ends_with("+00:00")
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && text[20..23].bytes().all(|c| c.is_ascii_digit());
    assert!(
        ok,
        "not an ISO-8601 UTC timestamp with milliseconds: {text:?}"
    );
}

#[test]
fn python_stormlock_cli_flow() {
    let d = Daemon::start();
    let (r1, r2) = ("e2e_test", "e2e_test2");

    let id1 = d.cli(&["acquire", r1]).ok().line();
    assert_eq!(id1.len(), 32, "{id1:?}");
    d.cli(&["is-held", r1, &id1]).ok();

    let current = d.cli(&["current", "-f", "oneline", r1]).ok().line();
    let fields: Vec<&str> = current.split('\t').collect();
    assert_eq!(fields.len(), 3, "{current:?}");
    let principal = fields[0].to_string();
    assert!(!principal.is_empty());
    assert_iso_ms(fields[1]);
    assert_eq!(fields[2], id1);

    let held = d.cli(&["acquire", r1]).exit(2);
    assert_eq!(held.stdout, "", "nothing on stdout when held");
    assert!(held.stderr.starts_with("Lock held\n"), "{held:?}");
    assert!(held.stderr.contains(&principal), "{held:?}");
    assert!(held.stderr.contains("Since: ") && held.stderr.contains("Until: "));
    assert!(!held.stderr.contains(&id1), "never the holder's lease id");

    let res2_id = d.cli(&["acquire", r2]).ok().line();
    d.cli(&["release", r1, &id1]).ok();

    let id2 = d.cli(&["acquire", r1, "-t", "4 seconds"]).ok().line();
    assert_ne!(id1, id2);
    d.cli(&["is-held", r1, &id1]).exit(1);

    sleep(Duration::from_secs(2));
    d.cli(&["renew", r1, &id2, "-t", "4 seconds"]).ok();
    sleep(Duration::from_secs(2));
    d.cli(&["acquire", r1]).exit(2);
    // Renewed at ~2 s for 4 s: expired by ~6 s.
    sleep(Duration::from_millis(2500));

    let expired = d.cli(&["renew", r1, &id2, "-t", "4 seconds"]).exit(3);
    assert!(expired.stderr.starts_with("Lock expired"), "{expired:?}");
    d.cli(&["is-held", r1, &id2]).exit(1);
    d.cli(&["release", r2, &res2_id]).ok();
    d.cli(&["current", r2]).exit(1);
}

/// `renew` without `-t` renews for the lease's own TTL, the one it was
/// granted or last renewed with, never the daemon's default (an hour): a
/// 4 s lease renewed so lapses 4 s later.
#[test]
fn renew_without_a_ttl_keeps_the_lease_s_own() {
    let d = Daemon::start();
    let id = d.cli(&["acquire", "own-ttl/a", "-t", "4s"]).ok().line();
    sleep(Duration::from_secs(2));
    d.cli(&["renew", "own-ttl/a", &id]).ok();
    // Past the first expiry (4 s): held through the renewal.
    sleep(Duration::from_millis(2500));
    d.cli(&["is-held", "own-ttl/a", &id]).ok();
    // Renewed at ~2 s for 4 s: lapsed by ~6 s, as an hour's would not be.
    sleep(Duration::from_millis(2500));
    d.cli(&["is-held", "own-ttl/a", &id]).exit(1);

    // A renewal with a TTL sets the lease's own.
    let id = d.cli(&["acquire", "own-ttl/b", "-t", "2s"]).ok().line();
    d.cli(&["renew", "own-ttl/b", &id, "-t", "1h"]).ok();
    d.cli(&["renew", "own-ttl/b", &id]).ok();
    sleep(Duration::from_millis(2500));
    d.cli(&["is-held", "own-ttl/b", &id]).ok();
}

#[test]
fn every_format_against_a_live_daemon() {
    let d = Daemon::start();
    let id = d
        .cli(&["acquire", "fmt/one", "--reason", "format check", "-t", "1h"])
        .ok()
        .line();

    assert_eq!(
        d.cli(&["current", "-f", "id", "fmt/one"]).ok().stdout,
        format!("{id}\n")
    );
    assert_eq!(
        d.cli(&["current", "--id-only", "fmt/one"]).ok().stdout,
        format!("{id}\n")
    );

    // Python's formats print Python's three fields; `long` prints them all.
    let rows = d.cli(&["current", "fmt/one"]).ok().stdout;
    let labels: Vec<&str> = rows.lines().filter_map(|l| l.split(": ").next()).collect();
    assert_eq!(labels, ["Principal", "Created", "Id"]);
    assert!(rows.ends_with(&format!("Id: {id}\n")), "{rows}");
    assert_eq!(
        d.cli(&["current", "-f", "rows", "fmt/one"]).ok().stdout,
        rows
    );
    let long = d.cli(&["current", "-f", "long", "fmt/one"]).ok().stdout;
    let labels: Vec<&str> = long.lines().filter_map(|l| l.split(": ").next()).collect();
    for label in ["Principal", "Created", "Id", "Expires", "Fence", "Reason"] {
        assert!(labels.contains(&label), "{label} missing from {long}");
    }
    assert!(long.contains("Reason: format check\n"), "{long}");

    let lines = d.cli(&["current", "-f", "lines", "fmt/one"]).ok().stdout;
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_iso_ms(lines[1]);
    assert_eq!(lines[2], id);

    let json = d.cli(&["current", "-f", "json", "fmt/one"]).ok().stdout;
    let keys: Vec<&str> = [
        "id",
        "created",
        "principal",
        "expires",
        "fence",
        "reason",
        "resource",
    ]
    .into_iter()
    .collect();
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| json.find(&format!("\"{k}\": ")).unwrap_or(usize::MAX))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "key order: {json}"
    );
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value["id"], id.as_str());
    assert_eq!(value["resource"], "fmt/one");
    assert_eq!(value["reason"], "format check");
    assert!(json.starts_with(&format!("{{\"id\": \"{id}\", \"created\": \"")));

    let cols = d.cli(&["current", "-f", "cols", "fmt/one"]).ok().stdout;
    let cols: Vec<&str> = cols.lines().collect();
    assert_eq!(cols.len(), 2);
    assert!(cols[0].starts_with("PRINCIPAL "), "{cols:?}");
    let width = cols[0].find("CREATED").expect("a CREATED column");
    assert_eq!(
        cols[0][width..].find("ID"),
        Some(width),
        "equal column widths: {cols:?}"
    );
    assert_eq!(&cols[1][2 * width..2 * width + 32], id, "{cols:?}");
}

#[test]
fn list_shows_held_locks() {
    let d = Daemon::start();
    d.cli(&["list"]).ok();
    for r in ["team/a", "team/b", "other"] {
        d.cli(&["acquire", r, "--reason", &format!("why {r}")]).ok();
    }
    let table = d.cli(&["list"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("RESOURCE"), "{table}");
    assert!(
        lines[0].contains("PRINCIPAL") && lines[0].contains("FENCE"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert!(table.contains("why team/b"), "{table}");

    let under = d.cli(&["list", "team/"]).ok().stdout;
    assert_eq!(under.lines().count(), 3, "{under}");
    assert!(!under.contains("other"), "{under}");

    let json = d.cli(&["list", "team/", "-f", "json"]).ok().stdout;
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let resources: Vec<&str> = value
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["resource"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(resources, ["team/a", "team/b"]);
}

#[test]
fn force_release_breaks_the_lease() {
    let d = Daemon::start();
    let id = d
        .cli(&["acquire", "fr", "--reason", "long job"])
        .ok()
        .line();
    let broken = d
        .cli(&["force-release", "fr", "--reason", "incident 7"])
        .ok();
    assert!(
        broken.stdout.starts_with("Force-released fr:\n"),
        "{broken:?}"
    );
    assert!(broken.stdout.contains("Reason: long job"), "{broken:?}");
    let renew = d.cli(&["renew", "fr", &id]).exit(3);
    assert!(renew.stderr.starts_with("Lock expired\n"), "{renew:?}");
    assert!(
        renew.stderr.contains("force-released by "),
        "who broke it: {renew:?}"
    );
    assert!(renew.stderr.contains("incident 7"), "and why: {renew:?}");
    let held = d.cli(&["is-held", "fr", &id]).exit(1);
    assert!(held.stderr.contains("incident 7"), "{held:?}");
    d.cli(&["force-release", "fr", "--reason", "again"]).exit(1);
    d.cli(&["force-release", "fr"]).exit(64);
}

#[test]
fn waiting_for_a_lock() {
    let d = Daemon::start();
    d.cli(&["acquire", "w", "-t", "2 seconds"]).ok();
    let waited = d.cli(&["acquire", "w", "--wait", "20 seconds"]).ok();
    assert_eq!(
        waited.line().len(),
        32,
        "only the id, no spinner off a terminal: {waited:?}"
    );
    assert_eq!(waited.stderr, "");
    let gave_up = d.cli(&["acquire", "w", "--wait", "1s"]).exit(2);
    assert!(gave_up.stderr.starts_with("Lock held"), "{gave_up:?}");
}

#[test]
fn no_client_certificate_is_refused() {
    let d = Daemon::start();
    let ca = d.data_dir().join("tls/ca.crt");
    let ca = ca.to_string_lossy();
    let run = d.cli(&["--ca", &ca, "current", "x"]).exit(5);
    assert!(run.stderr.starts_with("stormlock: "), "{run:?}");
    assert!(run.stderr.contains("client certificate"), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");
    eprintln!(
        "without a client certificate: exit {}: {}",
        run.code,
        run.stderr.trim()
    );
}

/// Nothing answers: exit 4, never a hang (the connect timeout ends a
/// silent listener; how fast is for benchmarks, not tests).
#[test]
fn daemon_not_running_is_exit_4() {
    // Certificates present (a daemon ran here), nothing listening.
    let d = Daemon::start();
    let port = free_port();
    let run = run_cli(
        &["is-held", "r", "id"],
        d.dir.path(),
        &d.data_dir(),
        Some(port),
    )
    .exit(4);
    assert!(
        run.stderr.starts_with("stormlock: cannot connect"),
        "{run:?}"
    );

    // Something listens but never answers: the connect timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let args = ["--timeout", "2s", "current", "r"];
    let run = run_cli(&args, d.dir.path(), &d.data_dir(), Some(port)).exit(4);
    assert!(
        run.stderr.starts_with("stormlock: cannot connect"),
        "{run:?}"
    );

    // No certificates at all: say where they were looked for.
    let run = cli_alone(&["current", "r"]).exit(4);
    assert!(run.stderr.contains("start stormlockd first"), "{run:?}");
}

#[test]
fn config_file_in_the_working_directory() {
    let d = Daemon::start();
    let config = d.dir.path().join(".stormlock.toml");
    let ca = d.data_dir().join("tls/ca.crt");
    let cert = d.data_dir().join("tls/client.crt");
    let key = d.data_dir().join("tls/client.key");
    std::fs::write(
        &config,
        format!(
            "addr = \"https://localhost:{}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\nttl = \"90s\"\n",
            d.port, ca, cert, key
        ),
    )
    .expect("write config");
    // No STORMLOCK_ADDR: the file says where the daemon is.
    let id = run_cli(
        &["acquire", "cfg"],
        d.dir.path(),
        Path::new("/nonexistent"),
        None,
    )
    .ok()
    .line();
    let json = d.cli(&["current", "-f", "json", "cfg"]).ok().stdout;
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value["id"], id.as_str());
    let clock = |key: &str| -> i64 {
        let t = value[key].as_str().unwrap_or_default();
        t.get(11..19)
            .unwrap_or_default()
            .split(':')
            .filter_map(|p| p.parse::<i64>().ok())
            .fold(0, |acc, p| acc * 60 + p)
    };
    let ttl = (clock("expires") - clock("created")).rem_euclid(86_400);
    assert_eq!(ttl, 90, "the config file's ttl: {json}");

    std::fs::write(&config, "adress = \"h:1\"\n").expect("write config");
    let run = run_cli(&["current", "cfg"], d.dir.path(), &d.data_dir(), None).exit(64);
    assert!(run.stderr.contains(".stormlock.toml"), "{run:?}");
    assert!(run.stderr.contains("adress"), "{run:?}");
}

#[test]
fn usage_errors_and_documentation() {
    let bad_ttl = cli_alone(&["acquire", "r", "-t", "4 weeks"]).exit(64);
    assert!(bad_ttl.stderr.contains("weeks"), "{bad_ttl:?}");
    cli_alone(&["acquire", "r", "--no-such-flag"]).exit(64);
    cli_alone(&[]).exit(64);
    cli_alone(&["--addr", "ftp://x", "current", "r"]).exit(64);

    let help = cli_alone(&["--help"]).ok();
    assert!(help.stdout.contains("acquire"), "{help:?}");
    let help = cli_alone(&["current", "--help"]).ok();
    assert!(
        help.stdout.contains("read principal created id"),
        "{help:?}"
    );
    cli_alone(&["--version"]).ok();

    let bash = cli_alone(&["completions", "bash"]).ok();
    assert!(bash.stdout.contains("stormlock"), "{bash:?}");
    let man = cli_alone(&["man"]).ok();
    assert!(man.stdout.starts_with(".TH"), "{man:?}");
}

/// SIGTERM: the daemon stops accepting, answers what is in flight (here a
/// waiting acquire) and exits 0. The waiter is answered UNAVAILABLE, so that
/// it is not holding the shutdown up, and waits on through the next daemon
/// on the same address (a restart, a rolling update), within its own wait.
#[test]
fn a_wait_outlives_a_daemon_restart() {
    let mut daemon = Daemon::start();
    let id = daemon
        .cli(&["acquire", "-t", "1h", "shutdown/r"])
        .ok()
        .line();
    assert_eq!(id.len(), 32);
    // In line before the daemon is asked to stop, so that the shutdown, not
    // a failed connection, is what answers it first.
    let waiter = daemon
        .command(&["acquire", "--wait", "2m", "shutdown/r"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn waiter");
    daemon.until_waiting("shutdown/r", 1);
    let exit = daemon.terminate();
    assert!(exit.success(), "exit status {exit}:\n{}", daemon.log());
    assert!(daemon.log().contains("shutting down"), "{}", daemon.log());
    // The embedded store kept the lease: the waiter waits again in line of
    // the new daemon, and gets the lock once it is released there.
    daemon.start_again();
    daemon.until_waiting("shutdown/r", 1);
    daemon.cli(&["release", "shutdown/r", &id]).ok();
    let waited = waiter.wait_with_output().expect("waiter");
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(
        waited.status.code(),
        Some(0),
        "acquired after the restart: {stderr}"
    );
    assert!(
        stderr.contains("shutting down") && stderr.contains("still waiting"),
        "the outage is said once: {stderr}"
    );
    let new_id = String::from_utf8_lossy(&waited.stdout).trim().to_string();
    assert_eq!(new_id.len(), 32, "{new_id:?}");
    assert_eq!(
        daemon.cli(&["is-held", "shutdown/r", &new_id]).code,
        0,
        "the waiter holds the lock"
    );
}

/// A daemon that does not come back within the wait: the waiter gives up
/// when its wait ends, unreachable (4; `exec`: 125, its command not run),
/// saying that it lost the daemon. A daemon that is not there when the wait
/// starts is reported at once (a wrong address is not waited out).
#[test]
fn a_wait_ends_when_the_daemon_does_not_come_back() {
    let mut daemon = Daemon::start();
    daemon.cli(&["acquire", "-t", "1h", "gone/r"]).ok();
    let spawn = |args: &[&str]| {
        daemon
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn waiter")
    };
    let acquire = spawn(&["acquire", "--wait", "3s", "gone/r"]);
    let exec = spawn(&["exec", "--wait", "3s", "gone/r", "--", "true"]);
    daemon.until_waiting("gone/r", 2);
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    for (waiter, code) in [(acquire, 4), (exec, 125)] {
        let waited = waiter.wait_with_output().expect("waiter");
        let stderr = String::from_utf8_lossy(&waited.stderr);
        assert_eq!(waited.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains("still waiting"), "{stderr}");
        assert!(
            stderr.contains("gave up waiting for gone/r after losing stormlockd"),
            "{stderr}"
        );
        assert!(waited.stdout.is_empty(), "nothing acquired");
    }
    let at_start = daemon.cli(&["acquire", "--wait", "1h", "gone/r"]).exit(4);
    assert!(
        !at_start.stderr.contains("still waiting"),
        "{}",
        at_start.stderr
    );
}

/// A tool without a client certificate authenticates with a bearer token
/// from `--token-file`; a wrong or missing token is refused with exit 5.
#[test]
fn bearer_token_from_a_file() {
    let setup = tempfile::tempdir().expect("tempdir");
    let config = setup.path().join("stormlockd.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nprincipal = \"ci-deployer\"\nsha256 = \"{}\"\n",
            stormlockd::auth::hash_token("right-token")
        ),
    )
    .expect("config");
    std::fs::write(setup.path().join("right"), "right-token\n").expect("token");
    std::fs::write(setup.path().join("wrong"), "wrong-token\n").expect("token");
    let config = config.display().to_string();
    let daemon = Daemon::start_with(&["--config", &config]);
    let ca = daemon.data_dir().join("tls/ca.crt").display().to_string();
    let right = setup.path().join("right").display().to_string();
    let wrong = setup.path().join("wrong").display().to_string();

    let id = daemon
        .cli(&["--ca", &ca, "--token-file", &right, "acquire", "ci/deploy"])
        .ok()
        .line();
    assert_eq!(id.len(), 32);
    let json = daemon
        .cli(&[
            "--ca",
            &ca,
            "--token-file",
            &right,
            "current",
            "-f",
            "json",
            "ci/deploy",
        ])
        .ok();
    assert!(
        json.stdout.contains("\"principal\": \"ci-deployer\""),
        "{}",
        json.stdout
    );
    let refused = daemon
        .cli(&["--ca", &ca, "--token-file", &wrong, "current", "ci/deploy"])
        .exit(5);
    assert!(refused.stderr.contains("token"), "{}", refused.stderr);
    daemon.cli(&["--ca", &ca, "current", "ci/deploy"]).exit(5);
}

#[test]
fn the_cli_variables_never_reconfigure_a_daemon() {
    // Every daemon of these tests starts with the CLI's STORMLOCK_CONFIG,
    // STORMLOCK_DATA_DIR and STORMLOCK_LISTEN set to somewhere else.
    let daemon = Daemon::start();
    let out = daemon.command(&["current", "env/x"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(daemon.data_dir().join("tls/ca.crt").is_file());
    assert!(!daemon.dir.path().join("cli-data").exists());
    let log = daemon.log();
    for (old, new) in [
        ("STORMLOCK_CONFIG", "STORMLOCKD_CONFIG"),
        ("STORMLOCK_DATA_DIR", "STORMLOCKD_DATA_DIR"),
        ("STORMLOCK_LISTEN", "STORMLOCKD_LISTEN"),
    ] {
        let said = log
            .lines()
            .filter(|l| l.contains(&format!("ignoring {old}:")) && l.contains(new))
            .count();
        assert_eq!(said, 1, "{old} should be noted once:\n{log}");
    }
}

#[test]
fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    let daemon = Daemon::start();
    let out = daemon.command(&["current", "log/x"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let log = daemon.log();
    assert!(log.contains("listening"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file:\n{log:?}"
    );
}
