//! Mutual exclusion under concurrency, judged by the checker
//! (`tests/checker.rs`): clients spread over two daemons sharing one backend
//! (one daemon for the single-daemon backends) take a few resources over and
//! over; zero violations is the only pass.
//!
//! `STORMLOCK_EXCLUSION_ACQUISITIONS` sets the number of critical sections
//! per backend (default 2,000); `scripts/soak` runs long soaks.

use std::sync::Arc;
use std::time::Duration;

use stormlock_api::pb::lock_service_client::LockServiceClient;
use tonic::transport::Channel;

use crate::checker::{self, Counters, Workload};
use crate::support::{DaemonProcess, TestDaemon, engine_url, unique};

/// Two connections to each daemon, so the clients share a few HTTP/2
/// connections as real clients on several hosts would.
async fn clients(daemons: &[&TestDaemon]) -> Vec<LockServiceClient<Channel>> {
    let mut clients = Vec::new();
    for daemon in daemons {
        clients.push(daemon.client().await);
        clients.push(daemon.client().await);
    }
    clients
}

async fn check(label: &str, daemons: Vec<LockServiceClient<Channel>>) {
    check_with(
        label,
        daemons,
        Workload::standard(format!("exclusion/{}/", unique())),
    )
    .await;
}

async fn check_with(label: &str, daemons: Vec<LockServiceClient<Channel>>, workload: Workload) {
    let outcome = checker::run(&workload, daemons, Arc::new(Counters::default())).await;
    eprintln!("{}", outcome.summary(label));
    outcome.verdict.assert_clean(label);
}

/// Audit lines of thousands of acquisitions would drown the test's output.
const QUIET: &str = "[audit]\npath = \"/dev/null\"\n";

async fn two_daemons(label: &str, backend: &str) {
    let config = format!("{QUIET}[backends.main]\n{backend}\n");
    let a = TestDaemon::start(&config, false).await;
    let b = TestDaemon::start(&config, false).await;
    check(label, clients(&[&a, &b]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_one_daemon() {
    let daemon = TestDaemon::start(
        &format!("{QUIET}[backends.main]\ntype = \"memory\"\n"),
        false,
    )
    .await;
    check("memory", clients(&[&daemon]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_one_daemon() {
    let daemon = TestDaemon::start(QUIET, false).await;
    check("embedded", clients(&[&daemon]).await).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_two_daemons() {
    let Some(url) = engine_url("STORMLOCK_TEST_REDIS_URL") else {
        return;
    };
    let backend = format!(
        "type = \"redis\"\nurl = {url:?}\nprefix = \"excl-{}:\"",
        unique()
    );
    two_daemons("redis", &backend).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_daemons() {
    let Some(url) = engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
        return;
    };
    two_daemons(
        "postgres",
        &format!("type = \"postgres\"\nurl = {url:?}\ntable = \"exclusion\""),
    )
    .await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_two_daemons() {
    let Some(url) = engine_url("STORMLOCK_TEST_ETCD_ENDPOINT") else {
        return;
    };
    let backend = format!(
        "type = \"etcd\"\nendpoints = [{url:?}]\nprefix = \"/excl-{}/\"",
        unique()
    );
    two_daemons("etcd", &backend).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_two_daemons() {
    let Some(url) = engine_url("STORMLOCK_TEST_MYSQL_URL") else {
        return;
    };
    two_daemons(
        "mysql",
        &format!("type = \"mysql\"\nurl = {url:?}\ntable = \"exclusion\""),
    )
    .await;
}

/// The DynamoDB daemons are real processes: the AWS SDK takes the emulator's
/// dummy credentials from the environment, which a test must not change in
/// its own process.
#[cfg(feature = "dynamodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_two_daemons() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let config = dynamodb_config(&endpoint, &format!("stormlock-excl-{}", unique()));
    let a = DaemonProcess::start(&config, DYNAMODB_ENV).await;
    let b = DaemonProcess::start(&config, DYNAMODB_ENV).await;
    let daemons = vec![a.client(), a.client(), b.client(), b.client()];
    // The emulator answers one request at a time (tests/moto_serial.py), a
    // few hundred a second: fewer clients, all waiting in line rather than
    // polling, and more time.
    let standard = Workload::standard(format!("exclusion/{}/", unique()));
    let workload = Workload {
        clients: 8,
        polling: 0.0,
        deadline: standard.deadline.max(Duration::from_secs(270)),
        ..standard
    };
    check_with("dynamodb", daemons, workload).await;
}

/// The environment of a daemon on the DynamoDB emulator.
pub const DYNAMODB_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// A daemon configuration on `table` of the emulator at `endpoint`. The
/// emulator is slow to answer its first requests, hence the long timeouts.
pub fn dynamodb_config(endpoint: &str, table: &str) -> String {
    format!(
        "{QUIET}[defaults]\nbackend_timeout = \"15s\"\n[backends.main]\ntype = \"dynamodb\"\n\
         endpoint = {endpoint:?}\ntable = {table:?}\nregion = \"us-east-1\"\ntimeout = \"15s\"\n"
    )
}
