//! Reloading while serving (SIGHUP): the configuration file is read and
//! validated in full again; what can change live is put in force at once
//! (tokens, administrators, access rules, TTLs, the longest wait and the
//! freeze windows), the
//! audit file is reopened (log rotation) and the TLS files are read again.
//! What cannot change without a restart (listeners, backends, the routing
//! of resources to backends, limits…) is reported and left as it was, never
//! half-applied. An invalid file changes nothing: the daemon says why and
//! keeps serving with what it had.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::audit::Audit;
use crate::auth::Auth;
use crate::config::{Config, ConfigError, Overrides};
use crate::locks::Locks;
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::service::{Policies, Policy};
use crate::tls::ReloadingTls;
use crate::windows::Freezes;

/// Where the configuration comes from, to be read again.
#[derive(Clone)]
pub struct Source {
    /// The file (`--config`); `None`: the embedded default.
    pub file: Option<PathBuf>,
    /// Flags and `STORMLOCKD_*` variables, which win over the file.
    pub overrides: Overrides,
    /// The address the daemon listens on (for the policy checks).
    pub listen: SocketAddr,
    /// Sets the log filter; `None` when a flag or variable chose it (they
    /// win over the file's `log_level`).
    pub set_log_level: Option<SetLogLevel>,
}

/// Puts a log level or filter in force (see `log_level`).
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("file", &self.file)
            .field("overrides", &self.overrides)
            .field("listen", &self.listen)
            .field("set_log_level", &self.set_log_level.is_some())
            .finish()
    }
}

/// A configuration as read: validated, and the file's own tables, to tell
/// which parts changed.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The validated configuration, flags on top.
    pub config: Config,
    /// The file's top-level tables as written (empty without a file).
    raw: toml::Table,
}

impl Snapshot {
    /// Reads `file` once (none: the embedded default), the text validated
    /// and its tables kept, `overrides` on top.
    pub fn read(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let (config, raw) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.display().to_string(),
                    source: e,
                })?;
                let config = Config::parse(&text, &path.display().to_string())?;
                // Parsed already, so this cannot fail; an empty table would
                // only hide which parts changed.
                (config, toml::from_str(&text).unwrap_or_default())
            }
            None => (Config::default(), toml::Table::new()),
        };
        Ok(Self {
            config: config.layer(overrides),
            raw,
        })
    }
}

/// The parts of the file a running daemon cannot change: they are read at
/// start only. `[defaults]` is split: its `backend` and `backend_timeout`
/// are here too, its TTLs and `max_wait` are live.
const RESTART_ONLY: &[&str] = &[
    "listen",
    "health_listen",
    "metrics_listen",
    "shutdown_grace",
    "data_dir",
    "insecure",
    "tls",
    "audit",
    "connections",
    "limits",
    "backends",
];

/// The parts a reload puts in force.
const LIVE: &[&str] = &[
    "auth",
    "defaults",
    "resources",
    "freezes",
    "reservations",
    "notify",
    "log_level",
];

/// What a reload found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The live parts that changed and are now in force.
    pub applied: BTreeSet<String>,
    /// The parts that changed but need a restart (left as they were).
    pub needs_restart: BTreeSet<String>,
}

/// Puts reloads in force on a running daemon.
pub struct Reloader {
    source: Source,
    /// The configuration in force (its restart-only parts as started).
    current: Snapshot,
    /// The development client identity, an administrator of its own daemon.
    dev_admin: Option<String>,
    policies: Policies,
    router: Arc<Router>,
    locks: Arc<Locks>,
    audit: Arc<Audit>,
    tls: Option<Arc<ReloadingTls>>,
    metrics: Arc<Metrics>,
}

/// What a [`Reloader`] acts on.
pub struct Targets {
    /// The service's policy.
    pub policies: Policies,
    /// The routes, for their TTLs.
    pub router: Arc<Router>,
    /// The lock core, for its freeze windows.
    pub locks: Arc<Locks>,
    /// The audit log, reopened.
    pub audit: Arc<Audit>,
    /// The served TLS files, read again.
    pub tls: Option<Arc<ReloadingTls>>,
    /// Where reloads are counted.
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// Reloads `source`, whose configuration in force is `current`.
    pub fn new(
        source: Source,
        current: Snapshot,
        dev_admin: Option<String>,
        targets: Targets,
    ) -> Self {
        Self {
            source,
            current,
            dev_admin,
            policies: targets.policies,
            router: targets.router,
            locks: targets.locks,
            audit: targets.audit,
            tls: targets.tls,
            metrics: targets.metrics,
        }
    }

    /// One reload: reads and validates the file, puts its live parts in
    /// force, reopens the audit file and reads the TLS files again. An
    /// invalid file changes nothing and is the error.
    pub async fn reload(&mut self) -> Result<Outcome, String> {
        let result = self.apply();
        match &result {
            Ok(outcome) => {
                self.metrics
                    .reloaded(true, !outcome.needs_restart.is_empty());
            }
            Err(_) => self.metrics.reloaded(false, false),
        }
        // Rotation and renewed certificates do not depend on the file.
        let audit = self.audit.clone();
        match tokio::task::spawn_blocking(move || audit.reopen()).await {
            Ok(Ok(true)) => info!("audit log reopened"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                error!(error = %e, "cannot reopen the audit log; still writing to the file it had open")
            }
            Err(e) => error!(error = %e, "audit reopen task failed"),
        }
        if let Some(tls) = self.tls.clone() {
            match tokio::task::spawn_blocking(move || tls.reload()).await {
                Ok(Ok(true)) => info!("TLS files changed: new connections use the new certificate"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    error!(error = %e, "TLS files changed but cannot be used; still serving the previous certificate")
                }
                Err(e) => error!(error = %e, "TLS reload task failed"),
            }
        }
        result
    }

    fn apply(&mut self) -> Result<Outcome, String> {
        let next = Snapshot::read(self.source.file.as_deref(), &self.source.overrides)
            .map_err(|e| e.to_string())?;
        let new = &next.config;
        crate::server::check_policy(new, self.source.listen).map_err(|e| e.to_string())?;
        let mut outcome = Outcome::default();
        let old = &self.current;
        for key in RESTART_ONLY {
            if old.raw.get(*key) != next.raw.get(*key) {
                outcome.needs_restart.insert(format!("[{key}]"));
            }
        }
        let (od, nd) = (&old.config.defaults, &new.defaults);
        if od.backend != nd.backend {
            outcome.needs_restart.insert("[defaults] backend".into());
        }
        if od.backend_timeout != nd.backend_timeout {
            outcome
                .needs_restart
                .insert("[defaults] backend_timeout".into());
        }
        // Switching authentication on or off changes what every caller is,
        // and how the audit log marks names: a restart.
        let require_credentials = crate::server::requires_credentials(new);
        let was = crate::server::requires_credentials(&old.config);
        if require_credentials != was {
            outcome.needs_restart.insert(
                "authentication switched on or off ([[auth.tokens]], [tls] client_ca)".into(),
            );
        }
        let auth = if require_credentials == was {
            let mut auth = Auth::from_config(&new.auth, was)?;
            auth.admins.extend(self.dev_admin.iter().cloned());
            auth
        } else {
            // Not half-applied: tokens without the authentication they
            // belong to would leave everyone else anonymous.
            self.policies.current().auth.clone()
        };
        // Validated in full: now nothing below can fail but the routing,
        // which changes nothing when it fails.
        let routing = self.router.retime(new);
        if routing.is_err() {
            outcome
                .needs_restart
                .insert("[[resources]] routing (patterns, order or backends)".into());
        }
        self.policies.replace(Policy {
            auth,
            max_wait: nd.max_wait,
        });
        self.locks.set_freezes(Freezes::new(new.freezes.clone()));
        self.locks.reservations().set_limits(new.reservations);
        self.locks
            .events()
            .notify()
            .set(&new.notify, Some(&self.metrics));
        if old.config.log_level != new.log_level {
            match &self.source.set_log_level {
                // Validated with the file: cannot fail but for a bug.
                Some(set) => {
                    if let Err(e) = set(new.log_level.as_deref().unwrap_or("info")) {
                        error!(error = %e, "cannot change the log level");
                    }
                }
                None => warn!(
                    "log_level changed in the file, but --log-level, STORMLOCKD_LOG or RUST_LOG chose the level, and they win"
                ),
            }
        }
        for key in LIVE {
            if old.raw.get(*key) != next.raw.get(*key) {
                outcome.applied.insert(format!("[{key}]"));
            }
        }
        if require_credentials != was {
            outcome.applied.remove("[auth]");
        }
        // What is in force: the live parts of the new file over the
        // restart-only parts the daemon started with.
        let mut raw = next.raw.clone();
        for key in RESTART_ONLY {
            match old.raw.get(*key) {
                Some(value) => raw.insert((*key).to_string(), value.clone()),
                None => raw.remove(*key),
            };
        }
        let mut config = next.config.clone();
        if require_credentials != was {
            config.auth = old.config.auth.clone();
            match old.raw.get("auth") {
                Some(value) => raw.insert("auth".to_string(), value.clone()),
                None => raw.remove("auth"),
            };
        }
        if routing.is_err() {
            config.resources = old.config.resources.clone();
        }
        config.defaults.backend = od.backend.clone();
        config.defaults.backend_timeout = od.backend_timeout;
        self.current = Snapshot { config, raw };
        Ok(outcome)
    }

    /// Takes SIGHUP from now on (it never terminates the daemon again);
    /// [`Listening::run`] reloads on each.
    pub fn listen_for_sighup(self) -> std::io::Result<Listening> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Listening {
            hangups: signal(SignalKind::hangup())?,
            reloader: self,
        })
    }
}

/// A [`Reloader`] that has taken SIGHUP.
pub struct Listening {
    hangups: tokio::signal::unix::Signal,
    reloader: Reloader,
}

impl Listening {
    /// Reloads on every SIGHUP until `stop` completes; each outcome logged.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                received = self.hangups.recv() => if received.is_none() { return },
            }
            info!("SIGHUP: reloading");
            match self.reloader.reload().await {
                Ok(outcome) => log_outcome(&outcome, self.reloader.source.file.as_deref()),
                Err(why) => {
                    error!(error = %why, "reload refused: the configuration is invalid; still serving with the previous one")
                }
            }
        }
    }
}

fn log_outcome(outcome: &Outcome, file: Option<&std::path::Path>) {
    let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
    let file = file.map_or_else(|| "none".to_string(), |p| p.display().to_string());
    // The warning first: "configuration reloaded" ends the report.
    if !outcome.needs_restart.is_empty() {
        warn!(
            needs_restart = %list(&outcome.needs_restart),
            "these changes need a restart and were NOT applied; the daemon runs them as it started"
        );
    }
    if outcome.applied.is_empty() {
        info!(config = %file, "configuration reloaded: nothing that a reload changes is different");
    } else {
        info!(config = %file, changed = %list(&outcome.applied), "configuration reloaded: changes in force");
    }
}
