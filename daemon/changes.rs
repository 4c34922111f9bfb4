//! Who must hear that a resource changed: the callers waiting for it on this
//! daemon ([`Waiters`]) and the open `Watch` streams ([`crate::watch`]).
//!
//! Changes made through this daemon are announced exactly, as they happen
//! ([`Signal::Acquired`] …). Changes made elsewhere arrive as hints from the
//! engine's own notifications ([`follow`], [`Signal::Changed`]): look again.
//! What no engine reports (expiry on most engines, engines without
//! notifications) is found by polling, in the waiters and in the watches'
//! pollers (one per backend).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::backend::Backend;
use crate::events::LockEvent;
use crate::lease::{Lease, LeaseId};
use crate::limits::Limits;
use crate::waiters::Waiters;

/// How many signals a watches' poller may fall behind before it re-reads
/// everything instead.
const SIGNAL_BUFFER: usize = 4096;

/// A change, as the watches hear it.
#[derive(Debug, Clone)]
pub enum Signal {
    /// The engine says this resource changed (through any daemon).
    Changed(Arc<str>),
    /// A lease was granted through this daemon.
    Acquired(Arc<Lease>),
    /// A lease was renewed through this daemon.
    Renewed(Arc<Lease>),
    /// A lease was released through this daemon.
    Released {
        /// The resource.
        resource: Arc<str>,
        /// The released lease.
        id: LeaseId,
    },
    /// A lease was broken through this daemon.
    ForceReleased {
        /// The broken lease.
        lease: Arc<Lease>,
        /// The administrator.
        actor: Arc<str>,
        /// Why.
        reason: Arc<str>,
    },
    /// The daemon is shutting down.
    Closing,
}

/// The daemon's hub of changes.
pub struct Changes {
    waiters: Waiters,
    signals: broadcast::Sender<Signal>,
    limits: Limits,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Changes {
    /// A hub whose waiters and watches are bounded by `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            waiters: Waiters::new(limits),
            signals: broadcast::channel(SIGNAL_BUFFER).0,
            limits,
        }
    }

    /// The limits on waiters and watches.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The lines of waiting callers.
    pub fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    /// Announces `signal`: wakes the head of the resource's line when the
    /// resource may have become free, and tells every watch.
    pub fn announce(&self, signal: Signal) {
        match &signal {
            Signal::Changed(resource) | Signal::Released { resource, .. } => {
                self.waiters.wake(resource)
            }
            Signal::ForceReleased { lease, .. } => self.waiters.wake(&lease.resource),
            Signal::Acquired(_) | Signal::Renewed(_) | Signal::Closing => {}
        }
        // An error only means that nobody watches.
        let _ = self.signals.send(signal);
    }

    /// Announces what a [`LockEvent`] changed: grants, renewals, releases
    /// of current leases and force-releases; other events change nothing.
    pub fn announce_event(&self, event: &LockEvent) {
        let signal = match event {
            LockEvent::Acquired { lease, .. } => Signal::Acquired(lease.clone()),
            LockEvent::Renewed { lease, .. } => Signal::Renewed(lease.clone()),
            LockEvent::Released {
                resource,
                id,
                was_current: true,
                ..
            } => Signal::Released {
                resource: resource.clone(),
                id: id.clone(),
            },
            LockEvent::ForceReleased {
                lease,
                actor,
                reason,
            } => Signal::ForceReleased {
                lease: lease.clone(),
                actor: actor.clone(),
                reason: reason.clone(),
            },
            LockEvent::Released { .. }
            | LockEvent::Waiting { .. }
            | LockEvent::Contended { .. }
            | LockEvent::Frozen { .. }
            | LockEvent::Reserved { .. }
            | LockEvent::Unreserved { .. }
            | LockEvent::RenewRefused { .. }
            | LockEvent::Denied { .. }
            | LockEvent::Unauthenticated { .. } => return,
        };
        self.announce(signal);
    }

    /// A receiver of every signal announced from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    /// Shutdown: every waiter and every watch is answered.
    pub fn close(&self) {
        self.waiters.close();
        self.announce(Signal::Closing);
    }

    /// Whether [`Changes::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.waiters.is_closed()
    }
}

/// Relays the change notifications of backend `name` to `changes` for as
/// long as the task runs, subscribing again (with a capped backoff) whenever
/// the subscription breaks. Returns at once for an engine without
/// notifications.
pub async fn follow(name: String, backend: Arc<dyn Backend>, changes: Arc<Changes>) {
    const FIRST_PAUSE: Duration = Duration::from_millis(250);
    const LONGEST_PAUSE: Duration = Duration::from_secs(5);
    let mut pause = FIRST_PAUSE;
    let mut failing = false;
    loop {
        match backend.subscribe().await {
            Ok(None) => return,
            Ok(Some(mut stream)) => {
                if failing {
                    info!(
                        backend = name.as_str(),
                        "following change notifications again"
                    );
                }
                failing = false;
                pause = FIRST_PAUSE;
                while let Some(resource) = stream.next().await {
                    changes.announce(Signal::Changed(resource.into()));
                }
                warn!(
                    backend = name.as_str(),
                    "change notifications interrupted; subscribing again (waiters and watches poll meanwhile)"
                );
            }
            Err(e) => {
                if !failing {
                    warn!(backend = name.as_str(), error = %e, "cannot follow change notifications; retrying (waiters and watches poll meanwhile)");
                }
                failing = true;
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}
