//! Running the daemon: transport security, the gRPC server with health and
//! reflection, backend health checks, the metrics listener, and graceful
//! shutdown. Connections are accepted and bounded by [`crate::connections`].

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::audit::Audit;
use crate::auth::Auth;
use crate::backend::BackendError;
use crate::changes::Changes;
use crate::config::Config;
use crate::connections::{
    self, ConnectionLimits, Expiring, HEALTH_MAX_CONNECTIONS, METRICS_CONNECTION_LIFETIME,
    METRICS_FIRST_BYTE_TIMEOUT, METRICS_MAX_CONNECTIONS, PlainHandshake, TlsHandshake,
};
use crate::events::Events;
use crate::locks::Locks;
use crate::metrics::Metrics;
use crate::paths::DevTls;
use crate::pb::lock_service_server::LockServiceServer;
use crate::reload::{Reloader, Snapshot, Source, Targets};
use crate::routing::{Router, Unreachable};
use crate::service::{LockService, Policies, Policy};
use crate::telemetry::RequestLayer;
use crate::tls::{self, TlsError, TlsFiles};

/// Largest request message of every service (the API, health, reflection):
/// the biggest valid request is a few KiB, so anything larger is refused by
/// the transport (OUT_OF_RANGE) before it is buffered.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response message (a full List page of maximal leases fits).
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// How long in-flight calls may take to finish at shutdown, unless
/// configured (`shutdown_grace`).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Refused by policy (e.g. plain text on a public address).
    #[error("{0}")]
    Refused(String),
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A backend could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// How clients reach the daemon.
#[derive(Debug, Clone)]
pub enum Transport {
    /// TLS with these files (mutual TLS when a client CA is set).
    Tls(TlsFiles),
    /// Plain text: only with an explicit `--insecure`.
    Insecure,
}

/// Everything `run` needs, resolved from config, flags and environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The validated configuration, with its implicit backend added.
    pub config: Config,
    /// The state directory.
    pub data_dir: PathBuf,
    /// Transport security.
    pub transport: Transport,
    /// Principals with administrator rights, including the development
    /// client identity when the development PKI is in use.
    pub auth: Auth,
    /// How often backends are health-checked.
    pub health_interval: Duration,
    /// How often the TLS files are read to see whether they changed.
    pub tls_reload_check: Duration,
    /// The development client identity, made an administrator.
    pub dev_admin: Option<String>,
    /// Where SIGHUP reloads the configuration from, and the file as read
    /// at start for reloads to compare with; `None`: no reloads.
    pub reload: Option<(Source, Snapshot)>,
}

impl Settings {
    /// Resolves transport security for serving `config` (layered: see
    /// [`Config::layered`]) on `listen`: configured TLS; else plain text if
    /// `insecure` is set; else, on loopback only, the development PKI in the
    /// data directory (created on first start).
    pub fn resolve(config: Config, listen: SocketAddr) -> Result<Self, ServerError> {
        let data_dir = config.data_dir();
        let insecure = config.insecure;
        let require_credentials = requires_credentials(&config);
        check_policy(&config, listen)?;
        let mut auth =
            Auth::from_config(&config.auth, require_credentials).map_err(ServerError::Refused)?;
        let mut dev_admin = None;
        let transport = match (&config.tls, insecure) {
            (Some(t), _) => Transport::Tls(TlsFiles {
                cert: data_dir.join(&t.cert),
                key: data_dir.join(&t.key),
                client_ca: t.client_ca.as_ref().map(|p| data_dir.join(p)),
            }),
            (None, true) => Transport::Insecure,
            (None, false) if listen.ip().is_loopback() => {
                let dev = DevTls::in_data_dir(&data_dir);
                let first = !dev.ca_cert().exists();
                let files = tls::ensure_dev_pki(&dev, &crate::paths::local_principal())?;
                if first {
                    info!(dir = %dev.dir.display(), "created a development CA with server and client certificates");
                }
                // The development CA issues one client certificate: the local
                // operator's, who administers this private daemon.
                if let Some(identity) = tls::dev_client_identity(&dev) {
                    auth.admins.insert(identity.clone());
                    dev_admin = Some(identity);
                }
                Transport::Tls(files)
            }
            // Refused by `check_policy` above.
            (None, false) => {
                return Err(ServerError::Refused(format!(
                    "refusing to listen on {listen} without TLS"
                )));
            }
        };
        if let Transport::Tls(files) = &transport {
            info!(
                cert = %files.cert.display(),
                key = %files.key.display(),
                client_ca = %files.client_ca.as_ref().map_or_else(|| "none".to_string(), |p| p.display().to_string()),
                "TLS files"
            );
        }
        Ok(Self {
            config,
            data_dir,
            transport,
            auth,
            dev_admin,
            health_interval: Duration::from_secs(2),
            tls_reload_check: tls::RELOAD_CHECK,
            reload: None,
        })
    }

    /// Reloads from `source` on SIGHUP, `snapshot` being what was read at
    /// start (see [`crate::reload`]). Without it SIGHUP is left alone (an
    /// in-process server in tests).
    pub fn reloading_from(mut self, source: Source, snapshot: Snapshot) -> Self {
        self.reload = Some((source, snapshot));
        self
    }
}

/// Whether a daemon with `config` authenticates its callers: mutual TLS,
/// tokens, or the development PKI (always mutual TLS).
pub fn requires_credentials(config: &Config) -> bool {
    config.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
        || !config.auth.tokens.is_empty()
        || (config.tls.is_none() && !config.insecure)
}

/// The start-up refusals that depend on the configuration alone (no file,
/// no engine): what `stormlockd check-config --offline` checks beyond
/// parsing, and what the daemon checks first at start.
pub fn check_policy(config: &Config, listen: SocketAddr) -> Result<(), ServerError> {
    let insecure = config.insecure && config.tls.is_none();
    if config.tls.is_none() && !config.insecure && !listen.ip().is_loopback() {
        return Err(ServerError::Refused(format!(
            "refusing to listen on {listen} without TLS: configure [tls] cert and key, \
             bind a loopback address, or pass --insecure to serve plain text on purpose"
        )));
    }
    if insecure && !config.auth.tokens.is_empty() {
        return Err(ServerError::Refused(
            "[[auth.tokens]] configured on a plain-text listener (--insecure): bearer tokens \
             would cross the network readable by anyone on the path; serve TLS ([tls] cert \
             and key, or drop --insecure on a loopback address for the development \
             certificates), or remove the tokens"
                .to_string(),
        ));
    }
    let mutual_tls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    // Without [tls] (and not --insecure) the daemon serves the development
    // PKI, which is mutual TLS.
    let development = config.tls.is_none() && !config.insecure;
    if !(mutual_tls || development || !config.auth.tokens.is_empty()) {
        refuse_rights_nobody_can_prove(config)?;
    }
    Ok(())
}

/// Refuses administrators and access rules on a daemon that authenticates
/// nobody: there every caller only declares a name, so anyone could claim an
/// administrator's name or slip past a rule by naming someone else.
fn refuse_rights_nobody_can_prove(config: &Config) -> Result<(), ServerError> {
    let configured: Vec<&str> = [
        ("[auth] admins", !config.auth.admins.is_empty()),
        ("[[auth.rules]]", !config.auth.rules.is_empty()),
    ]
    .into_iter()
    .filter_map(|(what, set)| set.then_some(what))
    .collect();
    if configured.is_empty() {
        return Ok(());
    }
    let (why, remedy) = if config.insecure {
        (
            "it serves plain text (--insecure), where neither certificates nor tokens can work",
            "serve TLS with [tls] client_ca (mutual TLS) or [[auth.tokens]] (stormlockd new-token)",
        )
    } else {
        (
            "its TLS has no [tls] client_ca and it has no [[auth.tokens]]",
            "add [tls] client_ca (mutual TLS) or [[auth.tokens]] (stormlockd new-token)",
        )
    };
    Err(ServerError::Refused(format!(
        "{} configured, but this daemon authenticates nobody ({why}), so any caller could \
         claim any name: {remedy}, or remove {}",
        configured.join(" and "),
        if configured.len() == 1 { "it" } else { "them" }
    )))
}

/// Binds `addr` (for binaries; tests bind `127.0.0.1:0` themselves).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Serves the daemon on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight calls finish and returns. Each step is a
/// function below, in the order they run.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new());
    let audit = open_audit(&settings, &metrics)?;
    let core = start_core(&settings, &metrics, audit.clone()).await?;
    let stop = Stop::new();
    let health = start_health(&core, &metrics, settings.health_interval, &stop).await;
    let metrics_server = start_metrics_listener(&settings.config, &metrics, &core, &stop).await?;
    let budgets = ConnectionBudgets::fit(&settings.config);
    let health_server =
        start_health_listener(&settings.config, &health, (budgets.health, &metrics), &stop).await?;
    let grpc = configure_transport(&settings, &listener, budgets.api)?;
    if let ListenerHandshake::Tls(TlsHandshake(files)) = &grpc.handshake {
        tokio::spawn(
            files
                .clone()
                .follow(settings.tls_reload_check, stop.stopped()),
        );
    }
    let policies = Policies::new(Policy {
        auth: settings.auth.clone(),
        max_wait: settings.config.defaults.max_wait,
    });
    let service = LockService::with_policies(core.locks.clone(), policies.clone());
    if let Some((source, snapshot)) = &settings.reload {
        let reloader = Reloader::new(
            source.clone(),
            snapshot.clone(),
            settings.dev_admin.clone(),
            Targets {
                policies,
                router: core.router.clone(),
                locks: core.locks.clone(),
                audit: audit.clone(),
                tls: match &grpc.handshake {
                    ListenerHandshake::Tls(TlsHandshake(files)) => Some(files.clone()),
                    ListenerHandshake::Plain => None,
                },
                metrics: metrics.clone(),
            },
        );
        // Taken now, before serving: SIGHUP must never end the daemon.
        let stopped = stop.stopped();
        match reloader.listen_for_sighup() {
            Ok(listening) => {
                tokio::spawn(listening.run(stopped));
            }
            Err(e) => warn!(error = %e, "cannot take SIGHUP: reloads are off"),
        }
    }
    let grace = settings
        .config
        .shutdown_grace
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    let result = serve(
        grpc,
        listener,
        Services {
            locks: service,
            health: health.service.clone(),
            metrics: metrics.clone(),
        },
        Draining {
            shutdown,
            grace,
            reporter: health.reporter.clone(),
            changes: core.changes.clone(),
            stop: stop.clone(),
        },
    )
    .await;
    health.task.abort();
    for follower in core.followers {
        follower.abort();
    }
    if let Some(server) = health_server {
        let _ = server.await;
    }
    if let Some(server) = metrics_server
        && let Ok(Err(e)) = server.await
    {
        warn!(error = %e, "the metrics listener failed");
    }
    // Every audit line of the calls that finished reaches the sink.
    let _ = tokio::task::spawn_blocking(move || audit.flush()).await;
    result?;
    info!("stopped");
    Ok(())
}

/// Tells the background tasks (health checks, listeners) that shutdown began.
#[derive(Clone)]
struct Stop {
    tx: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Stop {
    fn new() -> Self {
        Self {
            tx: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    fn signal(&self) {
        self.tx.send_replace(true);
    }

    /// Completes once [`Stop::signal`] was called.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// Step 1: the audit sink; its lines mark declared principals on a daemon
/// that authenticates nobody, and lines it must drop are counted.
fn open_audit(settings: &Settings, metrics: &Metrics) -> Result<Arc<Audit>, ServerError> {
    let config = &settings.config;
    let audit =
        Audit::open_counting(&config.audit, metrics.audit_lines_written()).map_err(|e| {
            let path = config.audit.path.as_deref().unwrap_or(Path::new("-"));
            ServerError::Refused(format!("cannot open the audit log {}: {e}", path.display()))
        })?;
    Ok(Arc::new(
        audit
            .principals_declared(!settings.auth.require_credentials)
            .count_dropped_in(metrics.audit_lines_dropped()),
    ))
}

/// The lock core and what feeds it.
struct Core {
    router: Arc<Router>,
    /// The hub of changes (waiters, watches).
    changes: Arc<Changes>,
    locks: Arc<Locks>,
    /// Tasks relaying the engines' change notifications.
    followers: Vec<tokio::task::JoinHandle<()>>,
}

/// Step 2: connects the backends and builds the lock core, whose events go
/// to the audit log, the metrics and the hub of changes; the engines'
/// notifications wake waiters and watches at once.
async fn start_core(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    audit: Arc<Audit>,
) -> Result<Core, ServerError> {
    let router = Arc::new(
        Router::connect(
            &settings.config,
            &settings.data_dir,
            Some(metrics),
            Unreachable::ConnectLater,
        )
        .await?,
    );
    for name in router.backends().keys() {
        metrics.set_backend_up(name, true);
    }
    let changes = Arc::new(Changes::new(settings.config.limits));
    let events = Events::new(audit, Some(metrics.clone()), changes.clone());
    events.notify().set(&settings.config.notify, Some(metrics));
    let locks = Arc::new(Locks::new(router.clone(), events));
    locks.set_freezes(crate::windows::Freezes::new(
        settings.config.freezes.clone(),
    ));
    locks
        .reservations()
        .set_limits(settings.config.reservations);
    let followers = router
        .backends()
        .iter()
        .map(|(name, backend)| {
            tokio::spawn(crate::changes::follow(
                name.clone(),
                backend.clone(),
                changes.clone(),
            ))
        })
        .collect();
    Ok(Core {
        router,
        changes,
        locks,
        followers,
    })
}

/// The gRPC health service and the task that keeps it true.
struct Health {
    reporter: HealthReporter,
    service: HealthServer,
    task: tokio::task::JoinHandle<()>,
}

type HealthServer =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

/// The health service name of backend `name`.
pub fn backend_service(name: &str) -> String {
    format!("stormlock.backend.{name}")
}

/// Step 3: the health service, SERVING, and the backend checks that flip it.
async fn start_health(core: &Core, metrics: &Arc<Metrics>, every: Duration, stop: &Stop) -> Health {
    let reporter = HealthReporter::new();
    let service = HealthServer::new(tonic_health::server::HealthService::from_health_reporter(
        reporter.clone(),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    set_health(&reporter, ServingStatus::Serving).await;
    let task = tokio::spawn(watch_backends(
        core.router.clone(),
        reporter.clone(),
        metrics.clone(),
        every,
        stop.stopped(),
    ));
    Health {
        reporter,
        service,
        task,
    }
}

type Listener = Option<tokio::task::JoinHandle<Result<(), std::io::Error>>>;

/// Step 4: the Prometheus listener, when configured.
async fn start_metrics_listener(
    config: &Config,
    metrics: &Arc<Metrics>,
    core: &Core,
    stop: &Stop,
) -> Result<Listener, ServerError> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let listener = bind(addr).await?;
    let local = listener.local_addr().unwrap_or(addr);
    info!(
        addr = %local,
        max_connections = METRICS_MAX_CONNECTIONS,
        "serving Prometheus metrics at /metrics"
    );
    let changes = core.changes.clone();
    let before_scrape = Arc::new(move |m: &Metrics| m.set_waiters(changes.waiters().waiting()));
    // Its own few slots, each for a bounded time: a flood of connections
    // (or ones that never send a request) can neither use up the daemon's
    // file descriptors nor keep the scraper out for long.
    let incoming = connections::incoming(
        listener,
        Expiring(METRICS_CONNECTION_LIFETIME),
        METRICS_FIRST_BYTE_TIMEOUT,
        METRICS_MAX_CONNECTIONS,
        metrics.open_connections("metrics"),
    );
    Ok(Some(tokio::spawn(crate::metrics::serve(
        connections::Accepted::new(incoming, local),
        metrics.clone(),
        before_scrape,
        stop.stopped(),
    ))))
}

/// How many connections each listener may have open: the configured
/// `max_connections` for the API, a few for the health port, all within
/// the open-file limit with the metrics port's few.
struct ConnectionBudgets {
    api: usize,
    health: usize,
}

impl ConnectionBudgets {
    fn fit(config: &Config) -> Self {
        let wanted = config.connections.max_connections;
        let health = if config.health_listen.is_some() {
            HEALTH_MAX_CONNECTIONS.min(wanted)
        } else {
            0
        };
        let metrics = if config.metrics_listen.is_some() {
            METRICS_MAX_CONNECTIONS
        } else {
            0
        };
        let others = health + metrics;
        let fit = connections::fit_open_files(wanted.saturating_add(others));
        Self {
            api: wanted.min(fit.saturating_sub(others)).max(1),
            health,
        }
    }
}

/// The HTTP/2 limits of `[connections]` on `builder`.
fn http2_limits(builder: Server, limits: &ConnectionLimits) -> Server {
    let mut builder = builder
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout));
    if let Some(age) = limits.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    if let Some(grace) = limits.max_connection_age_grace {
        builder = builder.max_connection_age_grace(grace);
    }
    builder
}

/// Step 5: the plain-text health listener for probes, when configured, with
/// the limits of `[connections]` and `max_connections` of its own.
async fn start_health_listener(
    config: &Config,
    health: &Health,
    (max_connections, metrics): (usize, &Metrics),
    stop: &Stop,
) -> Result<Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>, ServerError> {
    let Some(addr) = config.health_listen else {
        return Ok(None);
    };
    let listener = bind(addr).await?;
    info!(addr = %local_addr(&listener), max_connections, "serving plaintext gRPC health checks");
    let limits = &config.connections;
    let incoming = connections::incoming(
        listener,
        PlainHandshake,
        limits.handshake_timeout,
        max_connections,
        metrics.open_connections("health"),
    );
    Ok(Some(tokio::spawn(
        http2_limits(Server::builder(), limits)
            .add_service(health.service.clone())
            .serve_with_incoming_shutdown(incoming, stop.stopped()),
    )))
}

/// How the gRPC listener's connections begin.
enum ListenerHandshake {
    Tls(TlsHandshake),
    Plain,
}

/// The gRPC server and how its listener takes connections.
struct Grpc {
    builder: Server,
    handshake: ListenerHandshake,
    handshake_timeout: Duration,
    max_connections: usize,
}

/// Step 6: transport security and connection limits of the gRPC listener.
fn configure_transport(
    settings: &Settings,
    listener: &TcpListener,
    max_connections: usize,
) -> Result<Grpc, ServerError> {
    let limits = &settings.config.connections;
    let handshake = match &settings.transport {
        Transport::Tls(files) => {
            // With bearer tokens configured, a client certificate becomes
            // optional at the handshake; requests without either are then
            // refused per call.
            let optional = !settings.auth.tokens.is_empty();
            let config = Arc::new(tls::ReloadingTls::load(files, optional)?);
            let mode = if files.client_ca.is_some() {
                "mutual TLS"
            } else {
                "TLS"
            };
            info!(
                addr = %local_addr(listener),
                mode,
                max_connections,
                handshake_timeout = ?limits.handshake_timeout,
                "listening"
            );
            ListenerHandshake::Tls(TlsHandshake(config))
        }
        Transport::Insecure => {
            warn!(addr = %local_addr(listener), max_connections, "listening in PLAIN TEXT (--insecure): anyone who can reach this address can take and break locks");
            ListenerHandshake::Plain
        }
    };
    if !settings.auth.require_credentials {
        warn!(
            "callers are not authenticated (no [tls] client_ca, no [[auth.tokens]]): anyone who \
             can reach this address may take and release locks under any name they declare; \
             nobody is an administrator"
        );
    }
    Ok(Grpc {
        builder: http2_limits(Server::builder(), limits),
        handshake,
        handshake_timeout: limits.handshake_timeout,
        max_connections,
    })
}

/// The gRPC server running, whichever its connections' type.
type Serving = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// What the gRPC listener serves.
struct Services {
    locks: LockService,
    health: HealthServer,
    metrics: Arc<Metrics>,
}

/// How the gRPC listener stops.
struct Draining<F> {
    /// Completes when the daemon should stop.
    shutdown: F,
    /// How long in-flight calls may take after that.
    grace: Duration,
    reporter: HealthReporter,
    changes: Arc<Changes>,
    stop: Stop,
}

/// Step 7: serves the API, health and reflection until shutdown, then
/// drains: NOT_SERVING, no new calls, waiters and watches answered,
/// in-flight calls given `grace` to finish.
async fn serve<F>(
    transport: Grpc,
    listener: TcpListener,
    services: Services,
    draining: Draining<F>,
) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Refused(format!("reflection: {e}")))?
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServerError::Refused(format!("reflection: {e}")))?
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let Draining {
        shutdown,
        grace,
        reporter,
        changes,
        stop,
    } = draining;
    let (grace_tx, grace_rx) = tokio::sync::oneshot::channel::<()>();
    let open = services.metrics.open_connections("api");
    let router = transport
        .builder
        .layer(RequestLayer::new(services.metrics))
        .add_service(
            LockServiceServer::new(services.locks)
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        )
        .add_service(services.health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let signal = async move {
        shutdown.await;
        info!(grace = ?grace, "shutting down: no new calls, finishing in-flight ones");
        set_health(&reporter, ServingStatus::NotServing).await;
        // Waiters get UNAVAILABLE (so they retry elsewhere) and watches
        // end, rather than holding the shutdown up.
        changes.close();
        stop.signal();
        let _ = grace_tx.send(());
    };
    let (timeout, max) = (transport.handshake_timeout, transport.max_connections);
    let server: Serving = match transport.handshake {
        ListenerHandshake::Tls(tls) => Box::pin(router.serve_with_incoming_shutdown(
            connections::incoming(listener, tls, timeout, max, open),
            signal,
        )),
        ListenerHandshake::Plain => Box::pin(router.serve_with_incoming_shutdown(
            connections::incoming(listener, PlainHandshake, timeout, max, open),
            signal,
        )),
    };
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => Ok(result?),
        _ = async {
            match grace_rx.await {
                Ok(()) => tokio::time::sleep(grace).await,
                // The server ended on its own: its branch completes.
                Err(_) => std::future::pending().await,
            }
        } => {
            warn!(grace = ?grace, "in-flight calls did not finish within the shutdown grace period; exiting anyway");
            Ok(())
        }
    }
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

const SERVICE_NAME: &str = "stormlock.v1.LockService";

/// Health service name that is SERVING for as long as the process answers,
/// whatever the backends: for liveness probes, so that a backend outage does
/// not restart every daemon.
pub const LIVENESS_SERVICE: &str = "liveness";

/// Sets the overall status ("") and the LockService's, which always agree.
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Checks every backend at once and then each `every`, until `stop`
/// completes. Each backend has its own status, `stormlock.backend.NAME`
/// (NOT_SERVING while it fails its check, or is not connected yet); the
/// overall status and `stormlock.v1.LockService` are NOT_SERVING only while
/// every backend fails: a daemon with one engine down still serves the
/// resources of the others, and readiness must not take it out of rotation
/// for them.
async fn watch_backends(
    router: Arc<Router>,
    reporter: HealthReporter,
    metrics: Arc<Metrics>,
    every: Duration,
    stop: impl Future<Output = ()>,
) {
    let check = async {
        let mut healthy = true;
        // What each backend's status was last set to.
        let mut reported: BTreeMap<&String, bool> = BTreeMap::new();
        loop {
            let checks = router.backends().iter().map(|(name, backend)| async move {
                let result = backend.health().await;
                (name, result)
            });
            let mut failures = Vec::new();
            for (name, result) in futures::future::join_all(checks).await {
                let ok = result.is_ok();
                metrics.set_backend_up(name, ok);
                let before = reported.insert(name, ok);
                if before == Some(ok) {
                    if let Err(e) = result {
                        failures.push(format!("{name}: {e}"));
                    }
                    continue;
                }
                let status = match result {
                    Ok(()) => {
                        if before.is_some() {
                            info!(backend = name.as_str(), "backend reachable again: SERVING");
                        }
                        ServingStatus::Serving
                    }
                    Err(e) => {
                        warn!(backend = name.as_str(), error = %e, "backend unreachable: NOT_SERVING");
                        failures.push(format!("{name}: {e}"));
                        ServingStatus::NotServing
                    }
                };
                reporter
                    .set_service_status(&backend_service(name), status)
                    .await;
            }
            let now_healthy = failures.len() < router.backends().len();
            if now_healthy != healthy {
                healthy = now_healthy;
                let status = if healthy {
                    info!("a backend is reachable again: SERVING");
                    ServingStatus::Serving
                } else {
                    warn!(failures = ?failures, "every backend is unreachable: NOT_SERVING");
                    ServingStatus::NotServing
                };
                set_health(&reporter, status).await;
            }
            tokio::time::sleep(every).await;
        }
    };
    // Once shutdown begins the status stays NOT_SERVING.
    tokio::select! {
        () = check => {}
        () = stop => {}
    }
}
