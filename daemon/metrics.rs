//! Prometheus metrics: the registry every part of the daemon records into,
//! and the HTTP listener that serves it at `GET /metrics` (OpenMetrics text).
//!
//! Each daemon has its own [`Metrics`]; nothing here is global, so several
//! daemons in one process (tests) keep separate counts. Requests are counted
//! by [`crate::telemetry`], lock events by [`crate::audit`], backend calls by
//! the timeout wrapper every backend call goes through.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::events::LockEvent;
use crate::limits::Limit;

/// Content type of the OpenMetrics text format served at `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request latency buckets, in seconds: sub-millisecond local calls up to
/// Acquires that wait for a lock.
const REQUEST_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Backend call latency buckets, in seconds (calls are bounded by
/// `backend_timeout`, 2s by default).
const BACKEND_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    rpc: String,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendErrorLabels {
    backend: String,
    operation: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendNameLabels {
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    notifier: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RpcLabels>,
    acquisitions: Counter,
    contentions: Counter,
    renewals: Counter,
    force_releases: Counter,
    waiters: Gauge,
    watches: Gauge,
    limit_refusals: Family<LimitLabels, Counter>,
    audit_dropped: Counter,
    audit_written: Counter,
    reloads: Family<ReloadLabels, Counter>,
    notifications: Family<NotificationLabels, Counter>,
    config_generation: Gauge,
    last_reload_ok: Gauge,
    restart_pending: Gauge,
    connections: Family<ListenerLabels, Gauge>,
    runtime_tasks: Gauge,
    backend_duration: HistogramFamily<BackendLabels>,
    backend_errors: Family<BackendErrorLabels, Counter>,
    backend_up: Family<BackendNameLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// gRPC status codes, `OK` (0) to `UNAUTHENTICATED` (16).
const CODES: usize = 17;

/// The request metrics of one RPC ([`Metrics::rpc`]).
pub struct RpcMetrics {
    name: String,
    duration: OnceLock<Histogram>,
    /// The `stormlock_requests` counter of each status code, by its number.
    finished: [OnceLock<Counter>; CODES],
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RpcLabels>,
}

impl std::fmt::Debug for RpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetrics")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RpcMetrics {
    /// The RPC's label value.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records the time a call took to produce its response headers.
    pub fn answered(&self, elapsed: Duration) {
        self.duration
            .get_or_init(|| {
                self.request_duration
                    .get_or_create(&RpcLabels {
                        rpc: self.name.clone(),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a finished call with gRPC status `code`.
    pub fn finished(&self, code: tonic::Code) {
        let counter = || {
            self.requests
                .get_or_create(&RequestLabels {
                    rpc: self.name.clone(),
                    code: code_name(code),
                })
                .clone()
        };
        match usize::try_from(i32::from(code))
            .ok()
            .and_then(|n| self.finished.get(n))
        {
            Some(slot) => slot.get_or_init(counter).inc(),
            None => counter().inc(),
        };
    }
}

/// The operations of a backend, as labelled (every [`crate::backend::Backend`]
/// method); another name is looked up at each call.
const OPERATIONS: [&str; 12] = [
    "acquire",
    "release",
    "renew",
    "current",
    "status",
    "list",
    "force_release",
    "book",
    "write_book",
    "books",
    "health",
    "subscribe",
];

/// The metrics of one backend's calls ([`Metrics::backend`]).
pub struct BackendMetrics {
    backend: String,
    /// The latency histogram of each of [`OPERATIONS`].
    durations: [OnceLock<Histogram>; OPERATIONS.len()],
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for BackendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendMetrics")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl BackendMetrics {
    /// Records one call of `operation`, its latency and, when it failed,
    /// why. A lease that is not current is an answer, not an error.
    pub fn call(
        &self,
        operation: &'static str,
        elapsed: Duration,
        error_kind: Option<&'static str>,
    ) {
        self.observe(operation, elapsed);
        if let Some(kind) = error_kind {
            self.metrics
                .count_backend_error(&self.backend, operation, kind);
        }
    }

    /// Records a call of `operation` that did not answer within its bound.
    pub fn timeout(&self, operation: &'static str, elapsed: Duration) {
        self.observe(operation, elapsed);
        self.metrics
            .count_backend_error(&self.backend, operation, "timeout");
    }

    fn observe(&self, operation: &'static str, elapsed: Duration) {
        let lookup = || {
            self.metrics
                .backend_duration
                .get_or_create(&BackendLabels {
                    backend: self.backend.clone(),
                    operation,
                })
                .clone()
        };
        let seconds = elapsed.as_secs_f64();
        match OPERATIONS.iter().position(|known| *known == operation) {
            Some(n) => self.durations[n].get_or_init(lookup).observe(seconds),
            None => lookup().observe(seconds),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero and `stormlock_build_info` set.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "stormlock_requests",
            "LockService calls answered, by RPC and gRPC status code",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RpcLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register(
            "stormlock_request_duration_seconds",
            "Time from a LockService call's arrival to its response headers, by RPC",
            request_duration.clone(),
        );
        let acquisitions = Counter::default();
        registry.register(
            "stormlock_acquisitions",
            "Leases granted",
            acquisitions.clone(),
        );
        let contentions = Counter::default();
        registry.register(
            "stormlock_contentions",
            "Acquires answered with the current holder (lock busy)",
            contentions.clone(),
        );
        let renewals = Counter::default();
        registry.register("stormlock_renewals", "Leases renewed", renewals.clone());
        let force_releases = Counter::default();
        registry.register(
            "stormlock_force_releases",
            "Leases broken by an administrator",
            force_releases.clone(),
        );
        let waiters = Gauge::default();
        registry.register(
            "stormlock_waiters",
            "Acquire calls currently waiting for a lock",
            waiters.clone(),
        );
        let watches = Gauge::default();
        registry.register(
            "stormlock_watches",
            "Watch streams open now",
            watches.clone(),
        );
        let limit_refusals = Family::<LimitLabels, Counter>::default();
        registry.register(
            "stormlock_limit_refusals",
            "Calls refused with RESOURCE_EXHAUSTED by a [limits] limit, by limit",
            limit_refusals.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "stormlock_audit_lines_dropped",
            "Audit lines dropped because the audit log's sink did not keep up",
            audit_dropped.clone(),
        );
        let audit_written = Counter::default();
        registry.register(
            "stormlock_audit_lines_written",
            "Audit lines written to the audit log's sink",
            audit_written.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "stormlock_config_reloads",
            "Configuration reloads (SIGHUP), by result: applied, or refused (the file is invalid; the previous configuration stays)",
            reloads.clone(),
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "stormlock_notifications",
            "Webhook notifications ([[notify]]) by notifier and outcome: delivered, retried (an attempt failed and will be tried again), failed (given up) or dropped (the notifier's queue was full)",
            notifications.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "stormlock_config_generation",
            "How many reloads were applied since the daemon started (0: the configuration it started with)",
            config_generation.clone(),
        );
        let last_reload_ok = Gauge::default();
        last_reload_ok.set(1);
        registry.register(
            "stormlock_config_last_reload_success",
            "1 when the last reload was applied (or none was tried), 0 when it was refused",
            last_reload_ok.clone(),
        );
        let restart_pending = Gauge::default();
        registry.register(
            "stormlock_config_restart_pending",
            "1 when the configuration file has changes that only a restart applies (listeners, backends, routing…)",
            restart_pending.clone(),
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "stormlock_connections",
            "Connections open now (handshaking or served), by listener: api (the gRPC port), health (health_listen) or metrics (metrics_listen)",
            connections.clone(),
        );
        let runtime_tasks = Gauge::default();
        // Set at each scrape from the runtime that serves it: a count that
        // keeps rising under a steady load is a task leak (a stream, a waiter
        // or a connection nobody ends).
        registry.register(
            "stormlock_runtime_tasks",
            "Tokio tasks alive now in the daemon's runtime (connections, streams, waiters, background work)",
            runtime_tasks.clone(),
        );
        let backend_duration: HistogramFamily<BackendLabels> =
            Family::new_with_constructor(|| Histogram::new(BACKEND_BUCKETS));
        // Its count per operation is also the number of engine calls (the
        // engine reads of `list`, `current` and `status` among them).
        registry.register(
            "stormlock_backend_request_duration_seconds",
            "Backend call latency, by backend and operation",
            backend_duration.clone(),
        );
        let backend_errors = Family::<BackendErrorLabels, Counter>::default();
        registry.register(
            "stormlock_backend_errors",
            "Failed backend calls, by backend, operation and kind (unavailable, timeout, internal, config)",
            backend_errors.clone(),
        );
        let backend_up = Family::<BackendNameLabels, Gauge>::default();
        registry.register(
            "stormlock_backend_up",
            "1 while the backend passes its periodic health check, else 0",
            backend_up.clone(),
        );
        registry.register(
            "stormlock_build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            requests,
            request_duration,
            acquisitions,
            contentions,
            renewals,
            force_releases,
            waiters,
            watches,
            limit_refusals,
            audit_dropped,
            audit_written,
            reloads,
            notifications,
            config_generation,
            last_reload_ok,
            restart_pending,
            connections,
            runtime_tasks,
            backend_duration,
            backend_errors,
            backend_up,
        }
    }

    /// The recorders of `rpc`'s calls, resolved once (at start-up, per
    /// method) so that recording a call looks no label up and allocates
    /// nothing. A series appears in the exposition at its first call, as if
    /// it were looked up then.
    pub fn rpc(&self, rpc: &str) -> RpcMetrics {
        RpcMetrics {
            name: rpc.to_string(),
            duration: OnceLock::new(),
            finished: std::array::from_fn(|_| OnceLock::new()),
            requests: self.requests.clone(),
            request_duration: self.request_duration.clone(),
        }
    }

    /// Counts acquisitions, contentions, renewals and force-releases.
    pub fn lock_event(&self, event: &LockEvent) {
        let counter = match event {
            LockEvent::Acquired { .. } => &self.acquisitions,
            // Refused like a held lock: a contention with a window.
            LockEvent::Contended { .. } | LockEvent::Frozen { .. } => &self.contentions,
            LockEvent::Renewed { .. } => &self.renewals,
            LockEvent::ForceReleased { .. } => &self.force_releases,
            LockEvent::RenewRefused { .. }
            | LockEvent::Waiting { .. }
            | LockEvent::Reserved { .. }
            | LockEvent::Unreserved { .. }
            | LockEvent::Released { .. }
            | LockEvent::Denied { .. }
            | LockEvent::Unauthenticated { .. } => return,
        };
        counter.inc();
    }

    /// The recorders of `backend`'s calls: each operation's latency
    /// histogram is looked up once, at its first call.
    pub fn backend(self: &Arc<Self>, backend: &str) -> BackendMetrics {
        BackendMetrics {
            backend: backend.to_string(),
            durations: std::array::from_fn(|_| OnceLock::new()),
            metrics: self.clone(),
        }
    }

    fn count_backend_error(&self, backend: &str, operation: &'static str, kind: &'static str) {
        self.backend_errors
            .get_or_create(&BackendErrorLabels {
                backend: backend.to_string(),
                operation,
                kind,
            })
            .inc();
    }

    /// Sets `stormlock_backend_up` for `backend`.
    pub fn set_backend_up(&self, backend: &str, up: bool) {
        self.backend_up
            .get_or_create(&BackendNameLabels {
                backend: backend.to_string(),
            })
            .set(i64::from(up));
    }

    /// Sets the number of Acquire calls waiting for a lock.
    pub fn set_waiters(&self, waiting: usize) {
        self.waiters.set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Counts a Watch stream opened.
    pub fn watch_opened(&self) {
        self.watches.inc();
    }

    /// Counts a Watch stream closed.
    pub fn watch_closed(&self) {
        self.watches.dec();
    }

    /// Counts a call refused by `limit`.
    pub fn limit_refused(&self, limit: Limit) {
        self.limit_refusals
            .get_or_create(&LimitLabels { limit: limit.key() })
            .inc();
    }

    /// The counter of dropped audit lines, for the audit writer.
    pub fn audit_lines_dropped(&self) -> Counter {
        self.audit_dropped.clone()
    }

    /// The gauge of connections open on `listener` (`api` or `health`).
    pub fn open_connections(&self, listener: &'static str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    /// Sets `stormlock_runtime_tasks` to the tasks alive now in `runtime`.
    pub fn record_runtime(&self, runtime: &tokio::runtime::Handle) {
        let alive = runtime.metrics().num_alive_tasks();
        self.runtime_tasks
            .set(i64::try_from(alive).unwrap_or(i64::MAX));
    }

    /// The counter of `notifier`'s notifications with `outcome`
    /// (`delivered`, `retried`, `failed` or `dropped`).
    pub fn notifications(&self, notifier: &str, outcome: &'static str) -> Counter {
        self.notifications
            .get_or_create(&NotificationLabels {
                notifier: notifier.to_string(),
                outcome,
            })
            .clone()
    }

    /// The counter of audit lines written, for the audit writer.
    pub fn audit_lines_written(&self) -> Counter {
        self.audit_written.clone()
    }

    /// Records a reload: applied (the generation moves on) or refused; and
    /// whether changes that need a restart are waiting.
    pub fn reloaded(&self, applied: bool, restart_pending: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.last_reload_ok.set(i64::from(applied));
        if applied {
            self.config_generation.inc();
            self.restart_pending.set(i64::from(restart_pending));
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an error would mean a broken
        // label encoder, and the partial text is still the best answer.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

/// The gRPC name of `code`, as in the gRPC status code documentation.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes. `before_scrape`
/// runs before each encoding, to refresh gauges read from elsewhere; the
/// runtime's task count is taken from the runtime that answers the scrape.
pub async fn serve<L>(
    listener: L,
    metrics: Arc<Metrics>,
    before_scrape: Arc<dyn Fn(&Metrics) + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    use axum::http::header;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let before_scrape = before_scrape.clone();
            async move {
                before_scrape(&metrics);
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    metrics.record_runtime(&runtime);
                }
                ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Arc::new(Metrics::new());
        let acquire = metrics.rpc("Acquire");
        acquire.finished(tonic::Code::Ok);
        acquire.finished(tonic::Code::Ok);
        acquire.finished(tonic::Code::Unavailable);
        acquire.answered(Duration::from_millis(3));
        let now = std::time::SystemTime::now();
        let lease = Arc::new(crate::lease::Lease {
            resource: "r".to_string(),
            id: crate::lease::LeaseId::generate(),
            principal: "p".to_string(),
            reason: String::new(),
            acquired_at: now,
            expires_at: now,
            fence: 1,
            ttl: None,
        });
        metrics.lock_event(&LockEvent::Acquired {
            lease: lease.clone(),
            ttl: Duration::from_secs(1),
            expired: None,
            waited: false,
        });
        metrics.lock_event(&LockEvent::Released {
            principal: "p".to_string(),
            resource: "r".into(),
            id: lease.id.clone(),
            was_current: true,
        });
        let main = metrics.backend("main");
        main.call("acquire", Duration::from_millis(1), Some("unavailable"));
        main.call("renew", Duration::from_millis(1), None);
        main.call("renew", Duration::from_millis(2), None);
        main.timeout("health", Duration::from_secs(2));
        metrics.set_backend_up("main", true);
        metrics.set_waiters(2);
        metrics.watch_opened();
        metrics.watch_opened();
        metrics.watch_closed();
        metrics.limit_refused(Limit::WaitersPerPrincipal);
        let text = metrics.encode();
        for line in [
            "stormlock_requests_total{rpc=\"Acquire\",code=\"OK\"} 2",
            "stormlock_requests_total{rpc=\"Acquire\",code=\"UNAVAILABLE\"} 1",
            "stormlock_request_duration_seconds_count{rpc=\"Acquire\"} 1",
            "stormlock_acquisitions_total 1",
            "stormlock_contentions_total 0",
            "stormlock_waiters 2",
            "stormlock_watches 1",
            "stormlock_limit_refusals_total{limit=\"max_waiters_per_principal\"} 1",
            "stormlock_backend_request_duration_seconds_count{backend=\"main\",operation=\"renew\"} 2",
            "stormlock_backend_errors_total{backend=\"main\",operation=\"acquire\",kind=\"unavailable\"} 1",
            "stormlock_backend_errors_total{backend=\"main\",operation=\"health\",kind=\"timeout\"} 1",
            "stormlock_backend_up{backend=\"main\"} 1",
            "stormlock_runtime_tasks 0",
            "stormlock_build_info{version=\"",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("operation=\"renew\",kind"), "{text}");
    }

    /// `stormlock_runtime_tasks` as a scrape of `addr` reports it.
    async fn scraped_tasks(addr: std::net::SocketAddr) -> i64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        text.lines()
            .find_map(|l| l.strip_prefix("stormlock_runtime_tasks "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no stormlock_runtime_tasks in:\n{text}"))
    }

    #[tokio::test]
    async fn a_scrape_counts_the_tasks_alive_in_the_runtime() {
        const PARKED: usize = 40;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::new()),
            Arc::new(|_: &Metrics| {}),
            async move {
                let _ = stopped.await;
            },
        ));
        let (release, parked) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..PARKED)
            .map(|_| {
                let mut parked = parked.clone();
                tokio::spawn(async move {
                    let _ = parked.wait_for(|go| *go).await;
                })
            })
            .collect();
        let with_parked = scraped_tasks(addr).await;
        // The parked tasks and the server, at least.
        assert!(with_parked > PARKED as i64, "{with_parked}");
        let _ = release.send(true);
        for task in tasks {
            task.await.unwrap_or_else(|e| panic!("parked task: {e}"));
        }
        let after = scraped_tasks(addr).await;
        // Gone with their tasks; one connection task of the first scrape may
        // still be winding down.
        assert!(
            after + PARKED as i64 <= with_parked + 1,
            "{with_parked} tasks with {PARKED} parked, {after} after they ended"
        );
        let _ = stop.send(());
        let _ = server.await;
    }
}
