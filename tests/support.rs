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
        let out = cmd.arg(self.dir.path()).output().expect("run tests/engines.sh");
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
        assert!(children.code().is_some_and(|c| c <= 1), "pkill -{signal} --parent");
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
