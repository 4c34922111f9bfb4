//! A tiny run of every benchmark workload, straight on the memory backend,
//! through a daemon with `stormlock bench`, and against `bench-baseline`, so
//! the instruments cannot rot. Counts and errors are checked; timings never
//! are.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use stormlock_api::paths::DevTls;
use stormlock_bench::direct::BackendTarget;
use stormlock_bench::{self as bench, Limit, Options, Workload};
use stormlockd::config::Config;
use stormlockd::routing::Router;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::TestDaemon;

const MEMORY: &str = "[backends.main]\ntype = \"memory\"\n";
const OPS: u64 = 300;
const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_workloads_complete_without_errors() {
    let config = Config::parse(MEMORY, "test").expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    let router = Router::connect(
        &config,
        dir.path(),
        None,
        stormlockd::routing::Unreachable::Fail,
    )
    .await
    .expect("router");
    let target = Arc::new(BackendTarget::new(Arc::new(router), "tester"));
    for workload in Workload::ALL {
        let options = Options::new(workload, CLIENTS, Limit::Ops(OPS));
        let report = tokio::time::timeout(
            Duration::from_secs(60),
            bench::run(target.clone(), options, "direct", "memory", None),
        )
        .await
        .expect("the run ends");
        assert_eq!(report.errors, Default::default(), "{workload}: {report:?}");
        assert_eq!(report.ops, OPS, "{workload}: {report:?}");
        assert_eq!(report.clients, CLIENTS);
        let l = report.latency_us;
        assert!(
            0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
            "{workload}: {l:?}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.json()).expect("json");
        assert_eq!(json["workload"], workload.as_str());
        assert_eq!(json["ops"], OPS);
        assert!(
            report.table().contains("errors      none"),
            "{}",
            report.table()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_workloads_complete_without_errors() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let dev = daemon.dev_tls();
    let home = tempfile::tempdir().expect("tempdir");
    for (n, workload) in Workload::ALL.into_iter().enumerate() {
        // A single-threaded driver and a multi-threaded one.
        let threads = 1 + n % 2;
        let json = run_stormlock_bench(
            daemon.addr,
            &dev,
            home.path(),
            &[
                "--clients",
                "8",
                "--connections",
                "2",
                "-n",
                &OPS.to_string(),
                "-w",
                workload.as_str(),
                "--threads",
                &threads.to_string(),
            ],
        )
        .await;
        assert_eq!(json["via"], "daemon");
        assert_eq!(json["workload"], workload.as_str());
        assert_eq!(json["clients"], 8);
        assert_eq!(json["connections"], 2);
        assert_eq!(json["threads"], threads, "{workload}: {json}");
        assert_eq!(json["ops"], OPS, "{workload}: {json}");
        assert_eq!(json["errors"], serde_json::json!({}), "{workload}: {json}");
        assert!(json["latency_us"]["p50"].as_u64().is_some_and(|p| p > 0));
    }
    // Every lease taken was given back.
    let mut client = daemon.client().await;
    let listed = client
        .list(stormlock_api::pb::ListRequest {
            prefix: "bench/".to_string(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.leases.is_empty(), "{:?}", listed.leases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_serves_the_uncontended_workload() {
    // A daemon makes the development PKI, then goes: the baseline needs
    // only its certificates.
    let data_dir = tempfile::tempdir().expect("tempdir");
    TestDaemon::start_in(MEMORY, false, data_dir.path())
        .await
        .shutdown()
        .await
        .expect("the daemon stops");
    let mut baseline = tokio::process::Command::new(bench_baseline())
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn bench-baseline");
    let stdout = baseline.stdout.take().expect("stdout");
    let first = tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("bench-baseline prints its address")
    .expect("read its standard output")
    .expect("a first line");
    let addr: SocketAddr = first
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an address line: {first:?}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let home = tempfile::tempdir().expect("tempdir");
    let dev = DevTls::in_data_dir(data_dir.path());
    let json = run_stormlock_bench(
        addr,
        &dev,
        home.path(),
        &[
            "--clients",
            "8",
            "-n",
            &OPS.to_string(),
            "-w",
            "uncontended",
        ],
    )
    .await;
    assert_eq!(json["via"], "daemon");
    assert_eq!(json["workload"], "uncontended");
    assert_eq!(json["ops"], OPS, "{json}");
    assert_eq!(json["errors"], serde_json::json!({}), "{json}");

    // SIGTERM stops it cleanly.
    let pid = baseline.id().expect("still running");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
    let out = tokio::time::timeout(Duration::from_secs(30), baseline.wait_with_output())
        .await
        .expect("bench-baseline exits after SIGTERM")
        .expect("wait for bench-baseline");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `stormlock bench -f json ARGS` against `addr` with the client
/// certificate of `dev`, in a clean `home`, and returns its report.
async fn run_stormlock_bench(
    addr: SocketAddr,
    dev: &DevTls,
    home: &Path,
    args: &[&str],
) -> serde_json::Value {
    let mut command = tokio::process::Command::new(crate::support::stormlock());
    command
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--ca")
        .arg(dev.ca_cert())
        .arg("--cert")
        .arg(dev.client_cert())
        .arg("--key")
        .arg(dev.client_key())
        .args(["bench", "-f", "json"])
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("STORMLOCK_CONFIG")
        .env_remove("STORMLOCK_TOKEN")
        .env_remove("STORMLOCK_TIMEOUT")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("stormlock bench ends")
        .expect("run stormlock bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

/// The `bench-baseline` binary built beside this test binary
/// (`target/<profile>/deps/tests-…` → `target/<profile>/bench-baseline`);
/// as for `support::stormlock`, Cargo sets no `CARGO_BIN_EXE_*` for another
/// package's binary.
fn bench_baseline() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .join("bench-baseline");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --all-features` first",
        path.display()
    );
    path
}
