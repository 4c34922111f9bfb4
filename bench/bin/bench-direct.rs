//! `bench-direct`: the workloads of `stormlock bench`, run in-process
//! straight on the backends of a daemon configuration (no gRPC, TLS,
//! validation, authorization or audit), printing the same table or JSON.
//! Run both against the same engine and the daemon's overhead is the ratio.
//!
//!     cargo run --release -p stormlock-bench --features direct --bin bench-direct -- \
//!         --config stormlockd.toml \
//!         --workload uncontended --clients 64 --duration 5s

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use stormlock_bench::direct::BackendTarget;
use stormlock_bench::{Limit, Options, Workload};
use stormlockd::config::{Config, Overrides};
use stormlockd::duration::parse_duration;
use stormlockd::routing::Router;

/// Benchmark a backend adapter in-process with stormlock's bench workloads.
#[derive(Debug, Parser)]
#[command(name = "bench-direct", max_term_width = 100)]
struct Args {
    /// Daemon configuration (TOML) naming the backend(s); resources route
    /// as in the daemon.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory for file-based backends (not the one a running
    /// daemon uses: the embedded store allows one process at a time).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// What every client does: uncontended, contended or renew.
    #[arg(short, long, default_value = "uncontended")]
    workload: Workload,
    /// Concurrent clients, each its own task.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Stop after this many operations in total [default: 10000]
    #[arg(short = 'n', long, conflicts_with = "duration")]
    ops: Option<u64>,
    /// Stop after this long instead.
    #[arg(short, long, value_parser = parse)]
    duration: Option<Duration>,
    /// TTL of the leases taken.
    #[arg(short, long, default_value = "60s", value_parser = parse)]
    ttl: Duration,
    /// How long a contended acquire waits before it counts as an error.
    #[arg(long, default_value = "30s", value_parser = parse)]
    wait: Duration,
    /// Resource names start with this.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn parse(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench-direct: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(70),
        Err(e) => {
            eprintln!("bench-direct: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        ..Overrides::default()
    };
    let config = Config::layered(args.config.as_deref(), &overrides)?;
    let data_dir = config.data_dir();
    let router = Router::connect(
        &config,
        &data_dir,
        None,
        stormlockd::routing::Unreachable::Fail,
    )
    .await
    .context("cannot open the backend")?;
    let kind = config
        .backends
        .get(&config.defaults.backend)
        .map_or("?", |b| b.kind());
    let target = Arc::new(BackendTarget::new(Arc::new(router), "bench"));
    let limit = match args.duration {
        Some(d) => Limit::Time(d),
        None => Limit::Ops(args.ops.unwrap_or(10_000)),
    };
    let options = Options {
        ttl: args.ttl,
        wait: args.wait,
        prefix: args.prefix,
        ..Options::new(args.workload, args.clients, limit)
    };
    let report = stormlock_bench::run(target, options, "direct", kind, None).await;
    match args.format {
        Format::Table => print!("{}", report.table()),
        Format::Json => println!("{}", report.json()),
    }
    Ok(report.ops > 0)
}
