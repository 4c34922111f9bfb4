//! Load generation: the workloads, the driver and the report shared by
//! `stormlock bench` (through a daemon, over gRPC) and the `bench-direct`
//! binary (straight on the daemon's lock core, in-process), so that both
//! print the same table and JSON and the daemon's overhead is a plain ratio.
//! The package's other binary, `bench-baseline`, is the opposite reference:
//! a bare tonic server on the daemon's transport (mutual TLS, HTTP/2) that
//! answers every LockService call with a constant, so `stormlock bench`
//! against it measures the gRPC stack alone. `bench-watch` opens `Watch`
//! streams on a daemon and reads its backend-call counts: what watches cost
//! the engine.
//!
//! A [`Target`] is what the load is driven against; `direct::BackendTarget`
//! (feature `direct`) is the in-process one. [`run`] starts one task per
//! client, counts operations and errors and records each successful
//! operation's latency in an HDR histogram.
//!
//! Workloads (one *operation* each):
//!
//! - `uncontended`: acquire then release a resource of the client's own;
//! - `contended`: every client acquires the same resource, waiting for it,
//!   then releases it;
//! - `renew`: renew a lease the client took before the clock started.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Barrier;

#[cfg(feature = "direct")]
pub mod direct;

/// What each client does in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Acquire and release a resource of the client's own.
    Uncontended,
    /// All clients acquire one resource (waiting for it), then release it.
    Contended,
    /// Renew a lease held for the whole run.
    Renew,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 3] = [Self::Uncontended, Self::Contended, Self::Renew];

    /// The workload's name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uncontended => "uncontended",
            Self::Contended => "contended",
            Self::Renew => "renew",
        }
    }

    /// What one operation of the workload is, for people.
    pub fn operation(self) -> &'static str {
        match self {
            Self::Uncontended => "acquire+release",
            Self::Contended => "acquire (waiting)+release",
            Self::Renew => "renew",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|w| w.as_str() == text)
            .ok_or_else(|| {
                format!("unknown workload {text:?} (know: uncontended, contended, renew)")
            })
    }
}

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// After this many operations in total (successful or not).
    Ops(u64),
    /// After this long.
    Time(Duration),
}

/// How to run a workload.
#[derive(Debug, Clone)]
pub struct Options {
    /// The workload.
    pub workload: Workload,
    /// Concurrent clients, each its own task.
    pub clients: usize,
    /// When to stop.
    pub limit: Limit,
    /// TTL of every lease taken.
    pub ttl: Duration,
    /// How long a contended acquire waits before it counts as an error.
    pub wait: Duration,
    /// Resource names start with this; a random suffix keeps runs apart.
    pub prefix: String,
}

impl Options {
    /// Defaults for `workload` with `clients` clients: 60 s leases, 30 s waits.
    pub fn new(workload: Workload, clients: usize, limit: Limit) -> Self {
        Self {
            workload,
            clients,
            limit,
            ttl: Duration::from_secs(60),
            wait: Duration::from_secs(30),
            prefix: "bench".to_string(),
        }
    }
}

/// A failed call, counted by `code` in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// A short snake_case name: a gRPC code (`unavailable`), a backend error
    /// kind (`not_current`), or `held` for an acquire that was refused.
    pub code: String,
}

impl OpError {
    /// An error counted under `code`.
    pub fn new(code: impl Into<String>) -> Self {
        Self { code: code.into() }
    }
}

/// Result of one call against a target.
pub type OpResult<T> = Result<T, OpError>;

/// What the load is driven against: a daemon or a backend. `client` is the
/// calling client's index, so a target can spread clients over connections.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// Acquires `resource`, waiting up to `wait` (zero: try once); the lease
    /// id, or `None` when the resource stayed held.
    async fn acquire(
        &self,
        client: usize,
        resource: &str,
        ttl: Duration,
        wait: Duration,
    ) -> OpResult<Option<String>>;

    /// Releases a lease.
    async fn release(&self, client: usize, resource: &str, id: &str) -> OpResult<()>;

    /// Renews a lease for `ttl`.
    async fn renew(&self, client: usize, resource: &str, id: &str, ttl: Duration) -> OpResult<()>;
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Slowest operation.
    pub max: u64,
    /// Mean, rounded.
    pub mean: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `daemon` or `direct`.
    pub via: String,
    /// The daemon's address, or the backend's type.
    pub target: String,
    /// The workload.
    pub workload: Workload,
    /// What one operation is.
    pub operation: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// Connections the clients shared (daemon runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    /// Threads of the runtime that drove the clients.
    pub threads: usize,
    /// Operations that succeeded.
    pub ops: u64,
    /// Failed operations by error code.
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the measured part.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency of successful operations, microseconds.
    pub latency_us: Latency,
}

impl Report {
    /// Total failed operations.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The report as a small table for people.
    pub fn table(&self) -> String {
        let connections = self
            .connections
            .map(|c| format!(" over {c} connection{}", if c == 1 { "" } else { "s" }))
            .unwrap_or_default();
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let l = &self.latency_us;
        let rows = [
            ("via", format!("{} {}", self.via, self.target)),
            (
                "workload",
                format!("{} (one op = {})", self.workload, self.operation),
            ),
            (
                "clients",
                format!(
                    "{}{connections}, {} thread{}",
                    self.clients,
                    self.threads,
                    if self.threads == 1 { "" } else { "s" }
                ),
            ),
            ("ops", format!("{} in {:.2} s", self.ops, self.seconds)),
            ("throughput", format!("{:.0} ops/s", self.ops_per_sec)),
            (
                "latency",
                format!(
                    "p50 {}  p90 {}  p99 {}  max {}  mean {}",
                    micros(l.p50),
                    micros(l.p90),
                    micros(l.p99),
                    micros(l.max),
                    micros(l.mean)
                ),
            ),
            ("errors", errors),
        ];
        rows.iter().map(|(k, v)| format!("{k:<11} {v}\n")).collect()
    }

    /// The report as one line of JSON.
    pub fn json(&self) -> String {
        // Plain numbers, strings and maps: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Microseconds for people: `850 µs`, `1.24 ms`, `2.1 s`.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// Where a client's results go.
struct Tally {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            // 1 µs to 1 h at three significant digits.
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant histogram bounds are valid"),
            errors: BTreeMap::new(),
        }
    }

    fn ok(&mut self, started: Instant) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(us.max(1));
    }

    fn error(&mut self, err: OpError) {
        *self.errors.entry(err.code).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

/// Shared by the clients of one run.
struct Plan {
    options: Options,
    /// Random per run, so that runs never meet each other's leftovers.
    run: String,
    /// Operations started so far (for [`Limit::Ops`]).
    issued: AtomicU64,
    /// Everyone is set up: start the clock.
    start: Barrier,
    /// When a timed run ends: one instant for every client, set by the
    /// first one through the barrier.
    deadline: std::sync::OnceLock<Instant>,
}

impl Plan {
    fn resource(&self, client: usize) -> String {
        let o = &self.options;
        match o.workload {
            Workload::Contended => format!("{}/{}/contended", o.prefix, self.run),
            w => format!("{}/{}/{w}/{client}", o.prefix, self.run),
        }
    }

    /// Whether another operation may start.
    fn more(&self, deadline: Option<Instant>) -> bool {
        match self.options.limit {
            Limit::Ops(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            Limit::Time(_) => deadline.is_some_and(|d| Instant::now() < d),
        }
    }
}

/// Runs `options` against `target` and reports. `via`, `target_name` and
/// `connections` only label the report.
pub async fn run(
    target: Arc<dyn Target>,
    options: Options,
    via: &str,
    target_name: &str,
    connections: Option<usize>,
) -> Report {
    let clients = options.clients.max(1);
    let plan = Arc::new(Plan {
        run: format!("{:08x}", rand::random::<u32>()),
        issued: AtomicU64::new(0),
        start: Barrier::new(clients + 1),
        deadline: std::sync::OnceLock::new(),
        options: Options { clients, ..options },
    });
    let tasks: Vec<_> = (0..clients)
        .map(|client| tokio::spawn(drive(target.clone(), plan.clone(), client)))
        .collect();
    plan.start.wait().await;
    let started = Instant::now();
    let mut tally = Tally::new();
    for task in tasks {
        match task.await {
            Ok(t) => tally.merge(t),
            Err(_) => tally.error(OpError::new("client_panicked")),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let h = &tally.histogram;
    let ops = h.len();
    let latency_us = if ops == 0 {
        Latency::default()
    } else {
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean().round() as u64,
        }
    };
    Report {
        via: via.to_string(),
        target: target_name.to_string(),
        workload: plan.options.workload,
        operation: plan.options.workload.operation(),
        clients,
        connections,
        threads: tokio::runtime::Handle::current().metrics().num_workers(),
        ops,
        errors: tally.errors,
        seconds,
        ops_per_sec: if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        },
        latency_us,
    }
}

/// One client: set up, wait for the others, loop until the limit, clean up.
async fn drive(target: Arc<dyn Target>, plan: Arc<Plan>, client: usize) -> Tally {
    let o = &plan.options;
    let resource = plan.resource(client);
    let mut tally = Tally::new();
    // The renew workload holds one lease for the whole run.
    let mut held = None;
    if o.workload == Workload::Renew {
        match target
            .acquire(client, &resource, o.ttl, Duration::ZERO)
            .await
        {
            Ok(Some(id)) => held = Some(id),
            Ok(None) => tally.error(OpError::new("held")),
            Err(e) => tally.error(e),
        }
    }
    plan.start.wait().await;
    let deadline = match o.limit {
        Limit::Time(t) => Some(*plan.deadline.get_or_init(|| Instant::now() + t)),
        Limit::Ops(_) => None,
    };
    while plan.more(deadline) {
        let started = Instant::now();
        let result = match (o.workload, &held) {
            (Workload::Renew, Some(id)) => target.renew(client, &resource, id, o.ttl).await,
            // Its lease was refused at set-up (counted there): nothing to renew.
            (Workload::Renew, None) => break,
            (Workload::Uncontended, _) => {
                cycle(&*target, client, &resource, o.ttl, Duration::ZERO).await
            }
            (Workload::Contended, _) => cycle(&*target, client, &resource, o.ttl, o.wait).await,
        };
        match result {
            Ok(()) => tally.ok(started),
            Err(e) => tally.error(e),
        }
        // A target that answers without ever waiting (the memory backend
        // in-process, one that fails fast) would otherwise keep its thread
        // to itself and the clients would run one after another.
        tokio::task::yield_now().await;
    }
    if let Some(id) = held {
        let _ = target.release(client, &resource, &id).await;
    }
    tally
}

/// Acquire then release.
async fn cycle(
    target: &dyn Target,
    client: usize,
    resource: &str,
    ttl: Duration,
    wait: Duration,
) -> OpResult<()> {
    match target.acquire(client, resource, ttl, wait).await? {
        Some(id) => target.release(client, resource, &id).await,
        None => Err(OpError::new("held")),
    }
}

/// A snake_case error code from a CamelCase name (`DeadlineExceeded` →
/// `deadline_exceeded`), for gRPC status codes.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for w in Workload::ALL {
            assert_eq!(w.as_str().parse::<Workload>(), Ok(w));
        }
        assert!("bogus".parse::<Workload>().is_err());
        assert_eq!(snake_case("DeadlineExceeded"), "deadline_exceeded");
        assert_eq!(snake_case("Unavailable"), "unavailable");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(1_240), "1.24 ms");
        assert_eq!(micros(2_100_000), "2.10 s");
    }
}
