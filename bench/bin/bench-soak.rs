//! `bench-soak`: a steady, bounded, mixed load on one running daemon for a
//! long time, sampling what the daemon holds, to tell a leak from a warm-up.
//! It measures growth over time, not throughput: the rate is fixed and
//! modest, and the resources are a fixed set of names under one prefix, so
//! the store's size has a bound too.
//!
//! The load, started `--rate` times a second (at most `--max-in-flight` at
//! once): acquisitions that try once or wait (some naming their wait with a
//! `wait_id`), held briefly, renewed at half their TTL when held longer,
//! released (a few abandoned to expire); waiters that vanish mid-wait, by
//! dropping the call or the whole connection; reads (`Current`, a `List` of
//! the prefix page by page); about one in ten on a connection of its own,
//! opened for it and dropped after; and up to `--watches` `Watch` streams of
//! the prefix or of one resource, opened and dropped over time (after a few
//! events or after a while). A quarter of the picks go to ten hot resources,
//! so that waits and contention happen.
//!
//! Every `--sample-every` seconds it prints one JSON line (`"type":
//! "sample"`): the daemon's RSS, peak RSS, open file descriptors and threads
//! (`/proc/PID`), the tokio tasks, connections, watches and waiters it
//! reports on its metrics listener, the store's size (`--store-file`: the
//! embedded store's file; `--redis-url`: the key count and `used_memory`),
//! and the operations and errors so far. At the end, a `"type": "summary"`
//! line compares the end of the warm-up (`--warmup`, default the first 10 %
//! of the run) with the rest: the value then, the largest after, the last,
//! and the growth per hour (least-squares slope of the samples after the
//! warm-up, and of the second half of them, to tell a measure that levels
//! off from one that keeps growing). After the load, it closes its
//! connections, waits `--settle` seconds and takes a last sample of the idle
//! daemon (`"type": "after_load"`), to compare with the first, taken before
//! the load began: tasks, connections and descriptors should be back. Outcomes the load expects (contention, a wait that ends
//! without the lock, a lease that expired during a stall) are counted as
//! operations; anything else is an error, counted by RPC and gRPC code.
//!
//!     stormlockd --config soak.toml &     # with metrics_listen = "127.0.0.1:7467"
//!     bench-soak --addr 127.0.0.1:7466 --data-dir DIR --metrics 127.0.0.1:7467 \
//!         --pid $! --seconds 3600 --store-file DIR/locks.redb

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use stormlock_api::paths::{DevTls, default_data_dir};
use stormlock_api::pb;
use stormlock_api::pb::lock_service_client::LockServiceClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Bound of one call beyond its own wait: only a stuck call reaches it.
const CALL_BOUND: Duration = Duration::from_secs(10);
/// Connections shared by the operations that do not open their own.
const SHARED_CONNECTIONS: usize = 4;
/// Resources that get a quarter of the picks, so that there is contention.
const HOT: usize = 10;
/// How long a vanishing waiter asks to wait (it leaves long before).
const VANISHING_WAIT: Duration = Duration::from_secs(10);

/// Run a steady mixed load on a daemon and sample its resources over time.
#[derive(Debug, Parser)]
#[command(name = "bench-soak", max_term_width = 100)]
struct Args {
    /// The daemon's gRPC address.
    #[arg(long, value_name = "ADDR")]
    addr: SocketAddr,
    /// The daemon's metrics listener (`metrics_listen`).
    #[arg(long, value_name = "ADDR")]
    metrics: SocketAddr,
    /// The daemon's process id, for its RSS, descriptors and threads.
    #[arg(long)]
    pid: u32,
    /// The daemon's data directory, whose `tls/` holds the development PKI
    /// (the client certificate used here) [default: the daemon's]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Plain text, for a daemon started with --insecure.
    #[arg(long, conflicts_with = "data_dir")]
    insecure: bool,
    /// Length of the run, in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    sample_every: u64,
    /// Seconds of warm-up, compared with the rest [default: a tenth of the run]
    #[arg(long)]
    warmup: Option<u64>,
    /// Operations started per second (each one to four calls).
    #[arg(long, default_value_t = 60.0)]
    rate: f64,
    /// Operations running at once at most; a start beyond it is skipped (and
    /// counted as `skipped`).
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_in_flight: u32,
    /// Resources under the prefix (a fixed set: the store's size is bounded).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    resources: u32,
    /// The prefix of the resources' names.
    #[arg(long, default_value = "soak/")]
    prefix: String,
    /// Watch streams open at most (the default limit per principal is 32).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=1000))]
    watches: u32,
    /// TTL of the leases, in whole seconds; held longer, they are renewed at
    /// half of it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    ttl: u64,
    /// The embedded store's file, whose size is sampled.
    #[arg(long, value_name = "FILE")]
    store_file: Option<PathBuf>,
    /// The Redis the daemon uses (`redis://HOST:PORT/`), whose key count and
    /// memory are sampled.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// A label for the samples (the backend's name, say).
    #[arg(long)]
    label: Option<String>,
    /// Seconds to wait after the load before a last sample of the idle
    /// daemon (`"type": "after_load"`).
    #[arg(long, default_value_t = 15)]
    settle: u64,
    /// Seed of the load's choices [default: random]
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One thread is plenty for this rate, and leaves the CPUs to the daemon.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench-soak: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("bench-soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the load and the sampler; true when the daemon lived to the end.
async fn run(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite() && args.rate <= 10_000.0,
        "--rate must be above 0 and at most 10000"
    );
    let warmup = args.warmup.unwrap_or(args.seconds / 10);
    anyhow::ensure!(
        warmup < args.seconds,
        "--warmup must be shorter than --seconds"
    );
    let endpoint = endpoint(&args)?;
    let mut shared = Vec::new();
    for _ in 0..SHARED_CONNECTIONS {
        shared.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {}", args.addr))?,
        );
    }
    let store = Store::new(&args)?;
    let load = Arc::new(Load {
        endpoint,
        shared,
        names: (0..args.resources)
            .map(|i| format!("{}{i:05}", args.prefix))
            .collect(),
        ttl: Duration::from_secs(args.ttl),
        tally: Arc::default(),
        prefix: args.prefix.clone(),
        wait_ids: AtomicU64::new(0),
    });
    let sampler = Sampler {
        pid: args.pid,
        metrics: args.metrics,
        store,
        label: args.label.clone(),
    };
    let mut rng = match args.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    };

    let started = Instant::now();
    let mut samples = vec![sampler.sample(started, &load.tally).await];
    print_line(&samples[0]);
    if !samples[0].alive {
        anyhow::bail!("the daemon (pid {}) is not running", args.pid);
    }

    let mut watches = tokio::spawn(watch_keeper(
        load.clone(),
        args.watches as usize,
        rng.random(),
    ));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight as usize));
    let mut operations = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = Duration::from_secs(args.sample_every);
    let end = started + Duration::from_secs(args.seconds);
    let mut next_sample = started + every;
    let mut alive = true;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_sample {
            let sample = sampler.sample(started, &load.tally).await;
            print_line(&sample);
            alive = sample.alive;
            samples.push(sample);
            if !alive {
                eprintln!("bench-soak: the daemon (pid {}) is gone", args.pid);
                break;
            }
            next_sample += every;
            continue;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(next_sample.min(end).into()) => continue,
            // Reap finished operations as they go, so the set stays small.
            Some(done) = operations.join_next(), if !operations.is_empty() => {
                if let Err(e) = done {
                    load.tally.error("operation_panicked");
                    eprintln!("bench-soak: an operation failed: {e}");
                }
                continue;
            }
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            load.tally.op("skipped");
            continue;
        };
        let plan = Plan::pick(&mut rng, load.names.len());
        let load = load.clone();
        operations.spawn(async move {
            plan.run(&load).await;
            drop(permit);
        });
    }
    // The last sample, still under load, closes the measured window.
    if alive {
        let sample = sampler.sample(started, &load.tally).await;
        print_line(&sample);
        alive = sample.alive;
        samples.push(sample);
    }
    watches.abort();
    let _ = (&mut watches).await;
    // Let the operations under way finish (a wait ends within its bound),
    // then drop what is left.
    let _ = tokio::time::timeout(CALL_BOUND * 2, async {
        while operations.join_next().await.is_some() {}
    })
    .await;
    operations.shutdown().await;
    let elapsed = started.elapsed();

    // Idle again: with every connection of the load closed and the blocking
    // threads' keep-alive (10 s) past, what the daemon still holds is what a
    // leak would leave behind.
    let tally = load.tally.clone();
    drop(load);
    let after = if alive {
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let mut sample = sampler.sample(started, &tally).await;
        sample.r#type = "after_load";
        print_line(&sample);
        alive = sample.alive;
        Some(sample)
    } else {
        None
    };

    let summary = Summary::new(&args, warmup, &samples, after.as_ref(), elapsed, &tally);
    print_line(&summary);
    eprint!("{}", summary.table());
    Ok(alive)
}

fn print_line(value: &impl Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(value).unwrap_or_default());
    let _ = out.flush();
}

fn endpoint(args: &Args) -> anyhow::Result<Endpoint> {
    if args.insecure {
        return Ok(
            Endpoint::from_shared(format!("http://{}", args.addr))?.connect_timeout(CALL_BOUND)
        );
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let dev = DevTls::in_data_dir(&data_dir);
    anyhow::ensure!(
        dev.ca_cert().is_file(),
        "no development PKI in {} (pass the daemon's --data-dir, or --insecure)",
        dev.dir.display()
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_file(&dev.ca_cert())?))
        .identity(Identity::from_pem(
            read_file(&dev.client_cert())?,
            read_file(&dev.client_key())?,
        ))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{}", args.addr))?
        .tls_config(tls)?
        .connect_timeout(CALL_BOUND))
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

// --- the load ----------------------------------------------------------------

/// Counts of what the load did and of what went wrong.
#[derive(Debug, Default)]
struct Tally {
    /// Calls made (every RPC, a Watch counted once).
    calls: AtomicU64,
    /// Outcomes the load expects, by name.
    ops: Mutex<BTreeMap<&'static str, u64>>,
    /// Anything else, by RPC and gRPC code (or `timeout`, `connect`).
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn op(&self, name: &'static str) {
        if let Ok(mut ops) = self.ops.lock() {
            *ops.entry(name).or_default() += 1;
        }
    }

    fn error(&self, kind: impl Into<String>) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(kind.into()).or_default() += 1;
        }
    }

    fn ops(&self) -> BTreeMap<String, u64> {
        self.ops
            .lock()
            .map(|ops| ops.iter().map(|(k, v)| (k.to_string(), *v)).collect())
            .unwrap_or_default()
    }

    fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// What every operation shares.
struct Load {
    endpoint: Endpoint,
    shared: Vec<Channel>,
    names: Vec<String>,
    ttl: Duration,
    /// Shared with the summary, which outlives the connections.
    tally: Arc<Tally>,
    prefix: String,
    wait_ids: AtomicU64,
}

/// Why a call failed.
enum Failure {
    Status(tonic::Status),
    Timeout,
}

impl Load {
    /// A shared connection, or a new one (counted) when `fresh`.
    async fn channel(&self, fresh: bool, which: usize) -> Option<Channel> {
        if !fresh {
            return self.shared.get(which % self.shared.len()).cloned();
        }
        match tokio::time::timeout(CALL_BOUND, self.endpoint.connect()).await {
            Ok(Ok(channel)) => {
                self.tally.op("connections_opened");
                Some(channel)
            }
            Ok(Err(_)) => {
                self.tally.error("connect");
                None
            }
            Err(_) => {
                self.tally.error("connect:timeout");
                None
            }
        }
    }

    /// Makes a call bounded by `bound`, counting it.
    async fn call<T>(
        &self,
        bound: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Failure> {
        self.tally.calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(bound, call).await {
            Ok(Ok(answer)) => Ok(answer.into_inner()),
            Ok(Err(status)) => Err(Failure::Status(status)),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// Counts `failure` of `rpc` as an error.
    fn failed(&self, rpc: &str, failure: &Failure) {
        match failure {
            Failure::Status(status) => self.tally.error(format!("{rpc}:{:?}", status.code())),
            Failure::Timeout => self.tally.error(format!("{rpc}:timeout")),
        }
    }

    fn acquire_request(&self, resource: usize, wait: Option<Duration>) -> pb::AcquireRequest {
        // Half the waits carry a name, whose bookkeeping must go too.
        let wait_id = match wait {
            Some(_) => {
                let n = self.wait_ids.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(2) {
                    format!("soak-{n}")
                } else {
                    String::new()
                }
            }
            None => String::new(),
        };
        pb::AcquireRequest {
            resource: self.names[resource].clone(),
            ttl: Some(proto_duration(self.ttl)),
            wait: wait.map(proto_duration),
            wait_id,
            ..Default::default()
        }
    }

    /// Releases `lease_id` on `resource`, counting the outcome.
    async fn release(&self, client: &mut LockServiceClient<Channel>, resource: usize, id: String) {
        let request = pb::ReleaseRequest {
            resource: self.names[resource].clone(),
            lease_id: id,
        };
        match self.call(CALL_BOUND, client.release(request)).await {
            Ok(answer) if answer.released => self.tally.op("released"),
            // It expired first: a stall of the daemon or of this process.
            Ok(_) => self.tally.op("release_not_current"),
            Err(failure) => self.failed("release", &failure),
        }
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// One operation of the load, its randomness drawn up front.
enum Plan {
    /// Acquire (trying once or waiting), hold (renewing), release.
    Lock {
        resource: usize,
        wait: Option<Duration>,
        hold: Duration,
        abandon: bool,
        fresh: bool,
        channel: usize,
    },
    /// Hold a resource, start a waiting Acquire on it and vanish mid-wait.
    Vanish {
        resource: usize,
        after: Duration,
        drop_connection: bool,
        channel: usize,
    },
    /// `Current` of one resource, or a `List` of the prefix page by page.
    Read {
        resource: usize,
        list: bool,
        fresh: bool,
        channel: usize,
    },
}

fn pick_resource(rng: &mut StdRng, resources: usize) -> usize {
    if resources > HOT && rng.random_bool(0.25) {
        rng.random_range(0..HOT)
    } else {
        rng.random_range(0..resources)
    }
}

fn millis(rng: &mut StdRng, range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rng.random_range(range))
}

impl Plan {
    fn pick(rng: &mut StdRng, resources: usize) -> Self {
        let resource = pick_resource(rng, resources);
        let channel = rng.random_range(0..SHARED_CONNECTIONS);
        let fresh = rng.random_bool(0.1);
        let roll: f64 = rng.random();
        if roll < 0.08 {
            return Plan::Vanish {
                resource,
                after: millis(rng, 100..800),
                drop_connection: rng.random_bool(0.5),
                channel,
            };
        }
        if roll < 0.12 {
            return Plan::Read {
                resource,
                list: rng.random_bool(0.3),
                fresh,
                channel,
            };
        }
        let hold_roll: f64 = rng.random();
        let hold = if hold_roll < 0.7 {
            millis(rng, 10..300)
        } else if hold_roll < 0.95 {
            millis(rng, 500..2_000)
        } else {
            millis(rng, 2_000..6_000)
        };
        Plan::Lock {
            resource,
            wait: rng.random_bool(0.4).then(|| millis(rng, 1_000..4_000)),
            hold,
            abandon: rng.random_bool(0.04),
            fresh,
            channel,
        }
    }

    async fn run(self, load: &Load) {
        match self {
            Plan::Lock {
                resource,
                wait,
                hold,
                abandon,
                fresh,
                channel,
            } => {
                let Some(channel) = load.channel(fresh, channel).await else {
                    return;
                };
                lock(
                    load,
                    LockServiceClient::new(channel),
                    resource,
                    wait,
                    hold,
                    abandon,
                )
                .await;
            }
            Plan::Vanish {
                resource,
                after,
                drop_connection,
                channel,
            } => vanish(load, resource, after, drop_connection, channel).await,
            Plan::Read {
                resource,
                list,
                fresh,
                channel,
            } => {
                let Some(channel) = load.channel(fresh, channel).await else {
                    return;
                };
                read(load, LockServiceClient::new(channel), resource, list).await;
            }
        }
    }
}

async fn lock(
    load: &Load,
    mut client: LockServiceClient<Channel>,
    resource: usize,
    wait: Option<Duration>,
    hold: Duration,
    abandon: bool,
) {
    let request = load.acquire_request(resource, wait);
    let bound = wait.unwrap_or_default() + CALL_BOUND;
    let answer = match load.call(bound, client.acquire(request)).await {
        Ok(answer) => answer,
        Err(failure) => return load.failed("acquire", &failure),
    };
    let lease = match answer.lease {
        Some(lease) if answer.acquired => lease,
        _ => {
            load.tally.op(if wait.is_some() {
                "wait_not_granted"
            } else {
                "acquire_contended"
            });
            return;
        }
    };
    load.tally.op(if wait.is_some() {
        "wait_granted"
    } else {
        "acquire_granted"
    });
    if abandon {
        // Left to expire: the daemon's expiry path, and its events.
        load.tally.op("lease_abandoned");
        return;
    }
    let mut left = hold;
    let step = load.ttl / 2;
    while !left.is_zero() {
        let nap = left.min(step);
        tokio::time::sleep(nap).await;
        left -= nap;
        if left.is_zero() {
            break;
        }
        let request = pb::RenewRequest {
            resource: load.names[resource].clone(),
            lease_id: lease.lease_id.clone(),
            ttl: Some(proto_duration(load.ttl)),
        };
        match load.call(CALL_BOUND, client.renew(request)).await {
            Ok(_) => load.tally.op("renewed"),
            Err(Failure::Status(s)) if s.code() == tonic::Code::FailedPrecondition => {
                load.tally.op("renew_not_current");
                return;
            }
            Err(failure) => return load.failed("renew", &failure),
        }
    }
    load.release(&mut client, resource, lease.lease_id).await;
}

async fn vanish(
    load: &Load,
    resource: usize,
    after: Duration,
    drop_connection: bool,
    channel: usize,
) {
    let Some(shared) = load.channel(false, channel).await else {
        return;
    };
    let mut holder = LockServiceClient::new(shared);
    // Take the resource first, so that the waiter really waits (when someone
    // else holds it, that does as well).
    let held = match load
        .call(
            CALL_BOUND,
            holder.acquire(load.acquire_request(resource, None)),
        )
        .await
    {
        Ok(answer) if answer.acquired => answer.lease.map(|lease| lease.lease_id),
        Ok(_) => None,
        Err(failure) => {
            load.failed("acquire", &failure);
            None
        }
    };
    let Some(waiter_channel) = load.channel(drop_connection, channel).await else {
        return;
    };
    let mut waiter = LockServiceClient::new(waiter_channel);
    let request = load.acquire_request(resource, Some(VANISHING_WAIT));
    load.tally.calls.fetch_add(1, Ordering::Relaxed);
    // The timeout drops the call mid-wait (a reset stream); with its own
    // connection, the connection goes with it.
    match tokio::time::timeout(after, waiter.acquire(request)).await {
        Err(_) => load.tally.op(if drop_connection {
            "waiter_vanished_with_connection"
        } else {
            "waiter_vanished"
        }),
        Ok(Ok(answer)) => {
            let answer = answer.into_inner();
            match answer.lease {
                Some(lease) if answer.acquired => {
                    load.tally.op("wait_granted");
                    load.release(&mut waiter, resource, lease.lease_id).await;
                }
                _ => load.tally.op("wait_not_granted"),
            }
        }
        Ok(Err(status)) => load.failed("acquire", &Failure::Status(status)),
    }
    drop(waiter);
    if let Some(id) = held {
        load.tally.op("acquire_granted");
        load.release(&mut holder, resource, id).await;
    }
}

async fn read(load: &Load, mut client: LockServiceClient<Channel>, resource: usize, list: bool) {
    if !list {
        let request = pb::CurrentRequest {
            resource: load.names[resource].clone(),
            ..Default::default()
        };
        match load.call(CALL_BOUND, client.current(request)).await {
            Ok(_) => load.tally.op("current"),
            Err(failure) => load.failed("current", &failure),
        }
        return;
    }
    let mut page_token = String::new();
    // The prefix's leases, a page at a time; bounded in case a token repeats.
    for _ in 0..100 {
        let request = pb::ListRequest {
            prefix: load.prefix.clone(),
            page_size: 20,
            page_token: page_token.clone(),
        };
        match load.call(CALL_BOUND, client.list(request)).await {
            Ok(answer) => {
                load.tally.op("list_page");
                if answer.next_page_token.is_empty() {
                    return;
                }
                page_token = answer.next_page_token;
            }
            Err(failure) => return load.failed("list", &failure),
        }
    }
}

/// Keeps up to `target` watches open, opening one every 0.5–3 s, each
/// ending by itself after some events or some time. Aborting it ends them.
async fn watch_keeper(load: Arc<Load>, target: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let open = Arc::new(AtomicUsize::new(0));
    let mut watches = JoinSet::new();
    loop {
        let pause = millis(&mut rng, 500..3_000);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            Some(done) = watches.join_next(), if !watches.is_empty() => {
                if done.is_err() {
                    load.tally.error("watch_panicked");
                }
                continue;
            }
        }
        if open.load(Ordering::Relaxed) >= target {
            continue;
        }
        let resource = rng
            .random_bool(0.2)
            .then(|| pick_resource(&mut rng, load.names.len()));
        let fresh = rng.random_bool(0.3);
        let channel = rng.random_range(0..SHARED_CONNECTIONS);
        let (events, keep) = if rng.random_bool(0.5) {
            (Some(rng.random_range(1..=50u64)), Duration::from_secs(600))
        } else {
            (None, Duration::from_secs(rng.random_range(5..=300)))
        };
        let (load, open) = (load.clone(), open.clone());
        open.fetch_add(1, Ordering::Relaxed);
        watches.spawn(async move {
            watch(&load, resource, fresh, channel, events, keep).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn watch(
    load: &Load,
    resource: Option<usize>,
    fresh: bool,
    channel: usize,
    events: Option<u64>,
    keep: Duration,
) {
    let Some(channel) = load.channel(fresh, channel).await else {
        return;
    };
    let mut client = LockServiceClient::new(channel);
    let request = match resource {
        Some(r) => pb::WatchRequest {
            resource: load.names[r].clone(),
            ..Default::default()
        },
        None => pb::WatchRequest {
            prefix: load.prefix.clone(),
            ..Default::default()
        },
    };
    let mut stream = match load.call(CALL_BOUND, client.watch(request)).await {
        Ok(stream) => stream,
        Err(failure) => return load.failed("watch", &failure),
    };
    load.tally.op("watch_opened");
    let deadline = tokio::time::sleep(keep);
    tokio::pin!(deadline);
    let mut seen = 0u64;
    loop {
        tokio::select! {
            _ = &mut deadline => {
                load.tally.op("watch_dropped_after_time");
                return;
            }
            message = stream.message() => match message {
                Ok(Some(_)) => {
                    seen += 1;
                    load.tally.op("watch_event");
                    if events.is_some_and(|n| seen >= n) {
                        load.tally.op("watch_dropped_after_events");
                        return;
                    }
                }
                // The daemon ends a watch only when it stops or fails.
                Ok(None) => return load.tally.error("watch:ended"),
                Err(status) => return load.failed("watch", &Failure::Status(status)),
            }
        }
    }
}

// --- the samples -------------------------------------------------------------

/// Where the store's size is read.
enum Store {
    None,
    File(PathBuf),
    Redis(String),
}

impl Store {
    fn new(args: &Args) -> anyhow::Result<Self> {
        match (&args.store_file, &args.redis_url) {
            (Some(_), Some(_)) => anyhow::bail!("give --store-file or --redis-url, not both"),
            (Some(file), None) => Ok(Store::File(file.clone())),
            (None, Some(url)) => Ok(Store::Redis(redis_addr(url)?)),
            (None, None) => Ok(Store::None),
        }
    }
}

/// `HOST:PORT` of a `redis://HOST:PORT[/DB]` URL without credentials.
fn redis_addr(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("redis://")
        .with_context(|| format!("--redis-url {url:?}: expected redis://HOST:PORT/"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    anyhow::ensure!(
        !authority.is_empty() && !authority.contains('@'),
        "--redis-url {url:?}: expected redis://HOST:PORT/ without credentials"
    );
    Ok(if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:6379")
    })
}

/// The answer to one inline Redis command: an integer's or a bulk string's text.
async fn redis_command(
    reader: &mut BufReader<tokio::net::TcpStream>,
    command: &str,
) -> anyhow::Result<String> {
    reader
        .get_mut()
        .write_all(format!("{command}\r\n").as_bytes())
        .await?;
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let line = line.trim_end();
    if let Some(n) = line.strip_prefix(':') {
        return Ok(n.to_string());
    }
    let Some(len) = line.strip_prefix('$') else {
        anyhow::bail!("{command}: unexpected answer {line:?}");
    };
    let len: usize = len
        .parse()
        .with_context(|| format!("{command}: {line:?}"))?;
    anyhow::ensure!(len < 1 << 20, "{command}: answer of {len} bytes");
    let mut body = vec![0; len + 2];
    reader.read_exact(&mut body).await?;
    body.truncate(len);
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The Redis server's key count and `used_memory`.
async fn redis_size(addr: &str) -> anyhow::Result<(u64, u64)> {
    let stream = tokio::time::timeout(CALL_BOUND, tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("{addr}: connect timed out"))??;
    let mut reader = BufReader::new(stream);
    let work = async {
        let keys: u64 = redis_command(&mut reader, "DBSIZE").await?.trim().parse()?;
        let info = redis_command(&mut reader, "INFO memory").await?;
        let used = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .context("INFO memory has no used_memory")?
            .trim()
            .parse()?;
        anyhow::Ok((keys, used))
    };
    tokio::time::timeout(CALL_BOUND, work)
        .await
        .with_context(|| format!("{addr}: no answer"))?
}

/// One line of samples.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    elapsed_s: f64,
    /// False once the daemon's process is gone.
    alive: bool,
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
    fds: Option<u64>,
    threads: Option<u64>,
    /// `stormlock_runtime_tasks`.
    tasks: Option<u64>,
    /// `stormlock_connections{listener="api"}`.
    connections: Option<u64>,
    /// `stormlock_watches`.
    watches: Option<u64>,
    /// `stormlock_waiters`.
    waiters: Option<u64>,
    /// The embedded store's file, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    store_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_keys: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_used_memory: Option<u64>,
    /// Calls made so far.
    calls: u64,
    /// Outcomes so far.
    ops: BTreeMap<String, u64>,
    /// Errors of the load so far.
    errors: BTreeMap<String, u64>,
    /// What could not be measured this time, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unmeasured: Vec<String>,
}

impl Sample {
    /// The named measure, for the summary.
    fn measure(&self, name: &str) -> Option<u64> {
        match name {
            "rss_kib" => self.rss_kib,
            "fds" => self.fds,
            "threads" => self.threads,
            "tasks" => self.tasks,
            "connections" => self.connections,
            "watches" => self.watches,
            "waiters" => self.waiters,
            "store_bytes" => self.store_bytes,
            "redis_keys" => self.redis_keys,
            "redis_used_memory" => self.redis_used_memory,
            _ => None,
        }
    }
}

/// The measures the summary compares, in its order.
const MEASURES: [&str; 10] = [
    "rss_kib",
    "fds",
    "threads",
    "tasks",
    "connections",
    "watches",
    "waiters",
    "store_bytes",
    "redis_keys",
    "redis_used_memory",
];

struct Sampler {
    pid: u32,
    metrics: SocketAddr,
    store: Store,
    label: Option<String>,
}

impl Sampler {
    async fn sample(&self, started: Instant, tally: &Tally) -> Sample {
        let mut unmeasured = Vec::new();
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid));
        let alive = status.is_ok();
        let field = |name: &str| {
            status.as_ref().ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
        };
        let (rss_kib, hwm_kib, threads) = (field("VmRSS:"), field("VmHWM:"), field("Threads:"));
        let fds = match std::fs::read_dir(format!("/proc/{}/fd", self.pid)) {
            Ok(dir) => Some(dir.count() as u64),
            Err(e) => {
                unmeasured.push(format!("fds: {e}"));
                None
            }
        };
        let gauges = match scrape(self.metrics).await {
            Ok(gauges) => gauges,
            Err(e) => {
                unmeasured.push(format!("metrics: {e:#}"));
                BTreeMap::new()
            }
        };
        let gauge = |name: &str| gauges.get(name).map(|v| v.max(0.0) as u64);
        let (mut store_bytes, mut redis_keys, mut redis_used_memory) = (None, None, None);
        match &self.store {
            Store::None => {}
            Store::File(path) => match std::fs::metadata(path) {
                Ok(meta) => store_bytes = Some(meta.len()),
                Err(e) => unmeasured.push(format!("{}: {e}", path.display())),
            },
            Store::Redis(addr) => match redis_size(addr).await {
                Ok((keys, used)) => {
                    redis_keys = Some(keys);
                    redis_used_memory = Some(used);
                }
                Err(e) => unmeasured.push(format!("redis: {e:#}")),
            },
        }
        Sample {
            r#type: "sample",
            label: self.label.clone(),
            elapsed_s: started.elapsed().as_secs_f64(),
            alive,
            rss_kib,
            hwm_kib,
            fds,
            threads,
            tasks: gauge("stormlock_runtime_tasks"),
            connections: gauge("stormlock_connections{listener=\"api\"}"),
            watches: gauge("stormlock_watches"),
            waiters: gauge("stormlock_waiters"),
            store_bytes,
            redis_keys,
            redis_used_memory,
            calls: tally.calls.load(Ordering::Relaxed),
            ops: tally.ops(),
            errors: tally.errors(),
            unmeasured,
        }
    }
}

/// The daemon's metrics without `# ` lines: series (name and labels) to value.
async fn scrape(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot reach the metrics listener {addr}"))?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(CALL_BOUND, work)
        .await
        .with_context(|| format!("{addr}: no answer"))??;
    anyhow::ensure!(
        text.contains("# EOF"),
        "{addr} did not answer with OpenMetrics text"
    );
    Ok(text
        .lines()
        .filter(|l| l.starts_with("stormlock_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

// --- the summary -------------------------------------------------------------

/// One measure after the warm-up.
#[derive(Debug, Serialize)]
struct Measure {
    /// At the first sample.
    first: u64,
    /// At the first sample at or after the end of the warm-up.
    at_warmup: u64,
    /// Largest from the end of the warm-up on.
    max_after_warmup: u64,
    last: u64,
    /// Least-squares slope of the samples from the end of the warm-up on,
    /// per hour (null with fewer than two).
    growth_per_hour: Option<f64>,
    /// The same over the second half of those samples only: near zero when
    /// the measure levelled off, whatever it did just after the warm-up.
    growth_per_hour_second_half: Option<f64>,
    /// Once the load stopped and the daemon settled (compare with `first`).
    after_load: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Summary {
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    seconds: f64,
    warmup_s: u64,
    samples: usize,
    rate: f64,
    resources: u32,
    calls: u64,
    calls_per_sec: f64,
    ops: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    error_count: u64,
    measures: BTreeMap<String, Measure>,
}

impl Summary {
    fn new(
        args: &Args,
        warmup: u64,
        samples: &[Sample],
        idle: Option<&Sample>,
        elapsed: Duration,
        tally: &Tally,
    ) -> Self {
        let errors = tally.errors();
        let calls = tally.calls.load(Ordering::Relaxed);
        let mut measures = BTreeMap::new();
        for name in MEASURES {
            let points: Vec<(f64, u64)> = samples
                .iter()
                .filter_map(|s| s.measure(name).map(|v| (s.elapsed_s, v)))
                .collect();
            let after: Vec<(f64, u64)> = points
                .iter()
                .copied()
                .filter(|(t, _)| *t >= warmup as f64)
                .collect();
            let (Some(first), Some(at_warmup), Some(last)) =
                (points.first(), after.first(), after.last())
            else {
                continue;
            };
            measures.insert(
                name.to_string(),
                Measure {
                    first: first.1,
                    at_warmup: at_warmup.1,
                    max_after_warmup: after.iter().map(|p| p.1).max().unwrap_or(0),
                    last: last.1,
                    growth_per_hour: slope(&after).map(|s| s * 3600.0),
                    growth_per_hour_second_half: slope(&after[after.len() / 2..])
                        .map(|s| s * 3600.0),
                    after_load: idle.and_then(|s| s.measure(name)),
                },
            );
        }
        let seconds = elapsed.as_secs_f64();
        Summary {
            r#type: "summary",
            label: args.label.clone(),
            seconds,
            warmup_s: warmup,
            samples: samples.len(),
            rate: args.rate,
            resources: args.resources,
            calls,
            calls_per_sec: calls as f64 / seconds.max(1e-9),
            ops: tally.ops(),
            error_count: errors.values().sum(),
            errors,
            measures,
        }
    }

    /// The summary for a person.
    fn table(&self) -> String {
        let mut out = format!(
            "bench-soak{}: {:.0} s, {} samples, {} calls ({:.0}/s), {} errors{}\n",
            self.label
                .as_deref()
                .map(|l| format!(" {l}"))
                .unwrap_or_default(),
            self.seconds,
            self.samples,
            self.calls,
            self.calls_per_sec,
            self.error_count,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.errors)
            }
        );
        out += &format!(
            "{:<18} {:>11} {:>11} {:>11} {:>11} {:>12} {:>12} {:>11}\n",
            "measure",
            "first",
            "at warm-up",
            "max after",
            "last",
            "growth/hour",
            "2nd half",
            "after load"
        );
        for (name, m) in &self.measures {
            out += &format!(
                "{name:<18} {:>11} {:>11} {:>11} {:>11} {:>12} {:>12} {:>11}\n",
                m.first,
                m.at_warmup,
                m.max_after_warmup,
                m.last,
                rate(m.growth_per_hour),
                rate(m.growth_per_hour_second_half),
                m.after_load
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".to_string()),
            );
        }
        out
    }
}

fn rate(growth: Option<f64>) -> String {
    growth
        .map(|g| format!("{g:+.1}"))
        .unwrap_or_else(|| "-".to_string())
}

/// Least-squares slope of `points` (value per second).
fn slope(points: &[(f64, u64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, v) in points {
        num += (t - mean_t) * (*v as f64 - mean_v);
        den += (t - mean_t) * (t - mean_t);
    }
    (den > 0.0).then(|| num / den)
}
