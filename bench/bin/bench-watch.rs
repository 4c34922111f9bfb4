//! `bench-watch`: what open `Watch` streams cost the engine. It opens
//! `--watchers` watches of one prefix on a running daemon, optionally keeps a
//! resource under that prefix changing (`--churn`), and reads the daemon's
//! own count of backend calls (`stormlock_backend_request_duration_seconds`
//! on its metrics listener) before and after a measured window: the engine
//! reads per second (`list`, `current`, `status`) are what the watches cost.
//!
//!     stormlockd --metrics-listen 127.0.0.1:7467 --data-dir /tmp/sl &
//!     bench-watch --addr 127.0.0.1:7466 --data-dir /tmp/sl \
//!         --metrics 127.0.0.1:7467 --watchers 200 --seconds 10
//!
//! It prints one JSON object: the watchers, the window, the reads by
//! operation and per second, and the events the watchers received.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use stormlock_api::paths::{DevTls, default_data_dir};
use stormlock_api::pb;
use stormlock_api::pb::lock_service_client::LockServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The backend operations that read the engine.
const READS: [&str; 3] = ["list", "current", "status"];

/// Open watches on a daemon and measure the engine reads they cause.
#[derive(Debug, Parser)]
#[command(name = "bench-watch", max_term_width = 100)]
struct Args {
    /// The daemon's gRPC address.
    #[arg(long, value_name = "ADDR")]
    addr: SocketAddr,
    /// The daemon's metrics listener (`metrics_listen`).
    #[arg(long, value_name = "ADDR")]
    metrics: SocketAddr,
    /// The daemon's data directory, whose `tls/` holds the development PKI
    /// (the client certificate used here) [default: the daemon's]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Plain text, for a daemon started with --insecure.
    #[arg(long, conflicts_with = "data_dir")]
    insecure: bool,
    /// Watch streams to open, all of the same prefix.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    watchers: u32,
    /// Watch streams per connection (HTTP/2 servers limit concurrent streams
    /// per connection, hyper to 200 by default).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    per_connection: u32,
    /// The watched prefix.
    #[arg(long, default_value = "bench/watch/")]
    prefix: String,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds between opening the last watch and starting the window.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Milliseconds between two acquire+release pairs of a resource under the
    /// prefix, through the daemon, during the whole run (0: none).
    #[arg(long, default_value_t = 250)]
    churn: u64,
}

/// What a run measured.
#[derive(Debug, Serialize)]
struct Report {
    watchers: u32,
    /// Milliseconds between two acquire+release pairs (0: none).
    churn_ms: u64,
    seconds: f64,
    /// Engine reads in the window, by backend operation.
    reads: BTreeMap<String, u64>,
    reads_per_sec: f64,
    /// Acquire+release pairs made in the window.
    churn_pairs: u64,
    /// Events received by all watchers in the window.
    events: u64,
    /// Watches the daemon ended during the run, by gRPC code.
    ended: BTreeMap<String, u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench-watch: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-watch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds.is_finite() && args.settle >= 0.0,
        "--seconds must be positive and --settle not negative"
    );
    let endpoint = endpoint(&args)?;
    let connections = args.watchers.div_ceil(args.per_connection);
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {}", args.addr))?,
        );
    }
    let events = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    for i in 0..args.watchers {
        let channel = channels[(i / args.per_connection) as usize].clone();
        let mut client = LockServiceClient::new(channel);
        let mut stream = client
            .watch(pb::WatchRequest {
                prefix: args.prefix.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("watch {} of {} refused", i + 1, args.watchers))?
            .into_inner();
        let (events, ended) = (events.clone(), ended.clone());
        tokio::spawn(async move {
            let code = loop {
                match stream.message().await {
                    Ok(Some(_)) => {
                        events.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => break "OK".to_string(),
                    Err(status) => break format!("{:?}", status.code()),
                }
            };
            if let Ok(mut ended) = ended.lock() {
                *ended.entry(code).or_default() += 1;
            }
        });
    }
    eprintln!(
        "bench-watch: {} watches of {:?} open over {connections} connection(s)",
        args.watchers, args.prefix
    );
    let pairs = Arc::new(AtomicU64::new(0));
    let churn = (args.churn > 0).then(|| {
        tokio::spawn(churn(
            LockServiceClient::new(channels[0].clone()),
            format!("{}churn", args.prefix),
            Duration::from_millis(args.churn),
            pairs.clone(),
        ))
    });
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let before = scrape(args.metrics).await?;
    let (events_before, pairs_before) = (
        events.load(Ordering::Relaxed),
        pairs.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let after = scrape(args.metrics).await?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(churn) = churn {
        churn.abort();
    }
    let reads: BTreeMap<String, u64> = READS
        .iter()
        .map(|op| {
            let n =
                after.get(*op).copied().unwrap_or(0.0) - before.get(*op).copied().unwrap_or(0.0);
            (op.to_string(), n.max(0.0) as u64)
        })
        .collect();
    let total: u64 = reads.values().sum();
    let ended = ended.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(Report {
        watchers: args.watchers,
        churn_ms: args.churn,
        seconds,
        reads,
        reads_per_sec: total as f64 / seconds,
        churn_pairs: pairs.load(Ordering::Relaxed) - pairs_before,
        events: events.load(Ordering::Relaxed) - events_before,
        ended,
    })
}

fn endpoint(args: &Args) -> anyhow::Result<Endpoint> {
    if args.insecure {
        return Ok(Endpoint::from_shared(format!("http://{}", args.addr))?);
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let dev = DevTls::in_data_dir(&data_dir);
    anyhow::ensure!(
        dev.ca_cert().is_file(),
        "no development PKI in {} (pass the daemon's --data-dir, or --insecure)",
        dev.dir.display()
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&dev.ca_cert())?))
        .identity(Identity::from_pem(
            read(&dev.client_cert())?,
            read(&dev.client_key())?,
        ))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{}", args.addr))?.tls_config(tls)?)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Acquires and releases `resource` every `every`, counting the pairs.
async fn churn(
    mut client: LockServiceClient<Channel>,
    resource: String,
    every: Duration,
    pairs: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Ok(answer) = client
            .acquire(pb::AcquireRequest {
                resource: resource.clone(),
                ..Default::default()
            })
            .await
        else {
            continue;
        };
        let Some(lease) = answer.into_inner().lease else {
            continue;
        };
        let released = client
            .release(pb::ReleaseRequest {
                resource: resource.clone(),
                lease_id: lease.lease_id,
            })
            .await;
        if released.is_ok() {
            pairs.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The daemon's backend calls so far, summed over backends, by operation
/// (the `_count` of its backend latency histogram).
async fn scrape(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the metrics listener {addr}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("stormlock_backend_request_duration_seconds_count{")
        else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(operation) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("operation=\""))
            .map(|o| o.trim_end_matches('"'))
        else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        *calls.entry(operation.to_string()).or_insert(0.0) += value;
    }
    anyhow::ensure!(
        text.contains("# EOF"),
        "{addr} did not answer with OpenMetrics text"
    );
    Ok(calls)
}
