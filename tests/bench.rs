//! A tiny run of every benchmark workload, straight on the memory backend
//! and through a daemon with `stormlock bench`, so the instruments cannot
//! rot. Counts and errors are checked; timings never are.

use std::sync::Arc;
use std::time::Duration;

use stormlock_bench::direct::BackendTarget;
use stormlock_bench::{self as bench, Limit, Options, Workload};
use stormlockd::config::Config;
use stormlockd::routing::Router;

use crate::support::TestDaemon;

const MEMORY: &str = "[backends.main]\ntype = \"memory\"\n";
const OPS: u64 = 300;
const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_workloads_complete_without_errors() {
    let config = Config::parse(MEMORY, "test").expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    let router = Router::connect(&config, dir.path(), None)
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
        let mut command = tokio::process::Command::new(crate::support::stormlock());
        command
            .arg("--addr")
            .arg(daemon.addr.to_string())
            .arg("--ca")
            .arg(dev.ca_cert())
            .arg("--cert")
            .arg(dev.client_cert())
            .arg("--key")
            .arg(dev.client_key())
            .args(["bench", "--clients", "8", "--connections", "2", "-n"])
            .arg(OPS.to_string())
            .args(["-w", workload.as_str(), "-f", "json", "--threads"])
            .arg(threads.to_string())
            .current_dir(home.path())
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path())
            .env_remove("STORMLOCK_CONFIG")
            .env_remove("STORMLOCK_TOKEN")
            .env_remove("STORMLOCK_TIMEOUT")
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("stormlock bench ends")
            .expect("run stormlock bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{workload}: {stderr}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
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
