//! The audit log: one JSON line per acquire, contention, renew, release,
//! force-release, expiry noticed and denial. Lease ids appear only as a short
//! hash, never in full.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::AuditConfig;
use crate::lease::{Lease, LeaseId};
use crate::metrics::Metrics;

/// One audit event; `None` fields are left out of the line.
#[derive(Debug, Default, Serialize)]
pub struct Event<'a> {
    /// What happened: `acquire`, `contention`, `renew`, `renew_refused`,
    /// `release`, `force_release`, `expired`, `denied`, `unauthenticated`.
    pub event: &'a str,
    /// Who did it.
    pub principal: &'a str,
    /// On what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<&'a str>,
    /// The lease's fence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// Short hash of the lease id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The holder, for contention and force-release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<&'a str>,
    /// The reason given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The refused action, for denials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'a str>,
    /// Free detail (TTL, whether a release found its lease…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl<'a> Event<'a> {
    /// An event about `lease`.
    pub fn lease(event: &'a str, principal: &'a str, lease: &'a Lease) -> Self {
        Self {
            event,
            principal,
            resource: Some(&lease.resource),
            fence: Some(lease.fence),
            lease: Some(lease.id.hash()),
            ..Self::default()
        }
    }

    /// An event about a lease id on `resource`.
    pub fn id(event: &'a str, principal: &'a str, resource: &'a str, id: &LeaseId) -> Self {
        Self {
            event,
            principal,
            resource: Some(resource),
            lease: Some(id.hash()),
            ..Self::default()
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

/// Where audit lines go.
pub struct Audit {
    sink: Mutex<Box<dyn Write + Send>>,
    /// Counts acquisitions, contentions, renewals and force-releases: the
    /// audit events are recorded at exactly those points.
    metrics: Option<Arc<Metrics>>,
}

impl Audit {
    /// Opens the sink of `config`: a file (appended to, created 0600) or
    /// standard error.
    pub fn open(config: &AuditConfig) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match &config.path {
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                Box::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(path)?,
                )
            }
            None => Box::new(std::io::stderr()),
        };
        Ok(Self {
            sink: Mutex::new(sink),
            metrics: None,
        })
    }

    /// An audit log that discards everything (benchmarks, unit tests).
    pub fn discard() -> Self {
        Self {
            sink: Mutex::new(Box::new(std::io::sink())),
            metrics: None,
        }
    }

    /// Also counts the lock events in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes one line. A failing sink is reported through the log and does
    /// not fail the request.
    pub fn record(&self, event: &Event<'_>) {
        if let Some(metrics) = &self.metrics {
            metrics.lock_event(event.event);
        }
        let time = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let mut line = match serde_json::to_vec(&Line { time, event }) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an audit event");
                return;
            }
        };
        line.push(b'\n');
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = sink.write_all(&line).and_then(|()| sink.flush()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}
