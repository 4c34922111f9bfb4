//! The events of a `Watch` stream, derived from what a watch sees.
//!
//! A watch keeps a snapshot of the leases it selects (one resource, or every
//! resource under a prefix). Changes made through this daemon are applied
//! exactly as announced; for anything else (another daemon, expiry) the
//! watch reads the resource again when the engine hints at a change, at the
//! earliest expiry it knows of, and at least every [`POLL`], and turns the
//! difference into events. A change that comes and goes between two reads
//! of a polled engine is not seen; everything that changes the state a
//! reader can observe for longer than that is.
//!
//! Events of one resource are ordered by fence: announcements and reads can
//! arrive out of order (this daemon announces a grant after the engine
//! answered, while the engine's own hint may already have led to a read of
//! a newer lease), so an announced lease with a fence below the last one
//! the watch has seen for that resource is stale and dropped, never
//! reported as a change (it would end the newer, live lease in the stream).
//! What the engine answers to a read is the truth and always applies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc};

use crate::backend::BackendError;
use crate::changes::{Changes, Signal};
use crate::error::Error;
use crate::lease::{Lease, LeaseStatus};
use crate::routing::Router;

/// How often a watch reads its selection even without hints.
pub const POLL: Duration = Duration::from_secs(1);
/// Expiry moves smaller than this are read noise (engines report expiry
/// with up to a second of rounding), not renewals.
const RENEWAL_THRESHOLD: Duration = Duration::from_millis(1500);
/// Leases per page when reading a prefix.
const PAGE: usize = 1000;
/// Events a slow client may fall behind before the watch waits for it.
const QUEUE: usize = 256;

/// What a watch selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One resource.
    Resource(String),
    /// Every resource whose name starts with this prefix ("" = all).
    Prefix(String),
}

impl Selection {
    fn contains(&self, resource: &str) -> bool {
        match self {
            Self::Resource(r) => r == resource,
            Self::Prefix(p) => resource.starts_with(p.as_str()),
        }
    }
}

/// What happened to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Granted.
    Acquired,
    /// Given a new expiry.
    Renewed,
    /// Released by its holder.
    Released,
    /// Lapsed.
    Expired,
    /// Broken by an administrator.
    ForceReleased,
}

/// One event of a watch.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// What happened.
    pub kind: EventKind,
    /// The lease, as it was after the event.
    pub lease: Lease,
    /// When this daemon noticed.
    pub observed_at: SystemTime,
    /// For [`EventKind::ForceReleased`]: the administrator and the reason.
    pub broken_by: Option<(String, String)>,
}

impl WatchEvent {
    fn new(kind: EventKind, lease: Lease) -> Self {
        Self {
            kind,
            lease,
            observed_at: SystemTime::now(),
            broken_by: None,
        }
    }
}

/// Starts watching `selection`; the events (or the error that ended the
/// watch) arrive on the returned channel, which the watch stops feeding
/// when it is dropped.
pub fn start(
    router: Arc<Router>,
    changes: Arc<Changes>,
    selection: Selection,
) -> mpsc::Receiver<Result<WatchEvent, Error>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    // Subscribed before the first read, so nothing falls in between.
    let signals = changes.subscribe();
    let watch = Watch {
        router,
        changes,
        selection,
        snapshot: BTreeMap::new(),
        fences: BTreeMap::new(),
        signals,
    };
    tokio::spawn(watch.run(tx));
    rx
}

struct Watch {
    router: Arc<Router>,
    changes: Arc<Changes>,
    selection: Selection,
    snapshot: BTreeMap<String, Lease>,
    /// The highest fence seen per resource, to drop stale news.
    fences: BTreeMap<String, u64>,
    signals: broadcast::Receiver<Signal>,
}

impl Watch {
    async fn run(mut self, tx: mpsc::Sender<Result<WatchEvent, Error>>) {
        if let Err(e) = self.watch(&tx).await {
            let _ = tx.send(Err(e)).await;
        }
    }

    async fn watch(&mut self, tx: &mpsc::Sender<Result<WatchEvent, Error>>) -> Result<(), Error> {
        if self.changes.is_closed() {
            return Err(shutting_down());
        }
        self.snapshot = self.read_all().await?;
        self.fences = self
            .snapshot
            .iter()
            .map(|(resource, lease)| (resource.clone(), lease.fence))
            .collect();
        loop {
            let mut events = Vec::new();
            let pause = self.pause();
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                signal = self.signals.recv() => match signal {
                    Ok(Signal::Closing) => return Err(shutting_down()),
                    Ok(signal) => self.apply(signal, &mut events).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync(&mut events).await?,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = tokio::time::sleep(pause) => self.resync(&mut events).await?,
            }
            for event in events {
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// Until the next read: the poll interval, or just after the earliest
    /// expiry in the snapshot.
    fn pause(&self) -> Duration {
        let now = SystemTime::now();
        self.snapshot
            .values()
            .map(|l| l.expires_at.duration_since(now).unwrap_or_default())
            .min()
            .map_or(POLL, |d| (d + Duration::from_millis(100)).min(POLL))
            .max(Duration::from_millis(100))
    }

    async fn apply(&mut self, signal: Signal, events: &mut Vec<WatchEvent>) -> Result<(), Error> {
        match signal {
            Signal::Changed(resource) if self.selection.contains(&resource) => {
                self.reread(&resource, events).await?;
            }
            Signal::Acquired(lease) | Signal::Renewed(lease)
                if self.selection.contains(&lease.resource)
                    // Stale: a newer lease of this resource was seen already.
                    && self
                        .fences
                        .get(&lease.resource)
                        .is_none_or(|&highest| lease.fence >= highest) =>
            {
                let old = self.snapshot.get(&lease.resource).cloned();
                self.transition(old, Some((*lease).clone()), events).await?;
            }
            Signal::Released { resource, id } => {
                if self.snapshot.get(&*resource).is_some_and(|l| l.id == id)
                    && let Some(lease) = self.snapshot.remove(&*resource)
                {
                    events.push(WatchEvent::new(EventKind::Released, lease));
                }
            }
            Signal::ForceReleased {
                lease,
                actor,
                reason,
            } => {
                if self
                    .snapshot
                    .get(&lease.resource)
                    .is_some_and(|l| l.id == lease.id)
                    && let Some(lease) = self.snapshot.remove(&lease.resource)
                {
                    events.push(WatchEvent {
                        broken_by: Some((actor.to_string(), reason.to_string())),
                        ..WatchEvent::new(EventKind::ForceReleased, lease)
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads one resource again.
    async fn reread(&mut self, resource: &str, events: &mut Vec<WatchEvent>) -> Result<(), Error> {
        let now = self
            .router
            .route(resource)
            .backend
            .current(resource)
            .await?;
        let old = self.snapshot.get(resource).cloned();
        self.transition(old, now, events).await
    }

    /// Reads the whole selection again.
    async fn resync(&mut self, events: &mut Vec<WatchEvent>) -> Result<(), Error> {
        let mut fresh = self.read_all().await?;
        let mut resources: Vec<String> = self.snapshot.keys().cloned().collect();
        resources.extend(
            fresh
                .keys()
                .filter(|r| !self.snapshot.contains_key(*r))
                .cloned(),
        );
        for resource in resources {
            let old = self.snapshot.get(&resource).cloned();
            let new = fresh.remove(&resource);
            self.transition(old, new, events).await?;
        }
        Ok(())
    }

    async fn read_all(&self) -> Result<BTreeMap<String, Lease>, BackendError> {
        let mut leases = BTreeMap::new();
        match &self.selection {
            Selection::Resource(resource) => {
                let route = self.router.route(resource);
                if let Some(lease) = route.backend.current(resource).await? {
                    leases.insert(resource.clone(), lease);
                }
            }
            Selection::Prefix(prefix) => {
                let mut after: Option<String> = None;
                loop {
                    let (page, more) = self.router.list(prefix, after.as_deref(), PAGE).await?;
                    after = page.last().map(|l| l.resource.clone());
                    leases.extend(page.into_iter().map(|l| (l.resource.clone(), l)));
                    if !more || after.is_none() {
                        break;
                    }
                }
            }
        }
        Ok(leases)
    }

    /// Records that the lease of a resource went from `old` to `new`, and
    /// the events that explain it.
    async fn transition(
        &mut self,
        old: Option<Lease>,
        new: Option<Lease>,
        events: &mut Vec<WatchEvent>,
    ) -> Result<(), Error> {
        if let Some(new) = &new {
            self.fences.insert(new.resource.clone(), new.fence);
        }
        match (old, new) {
            (None, None) => {}
            (None, Some(new)) => {
                self.snapshot.insert(new.resource.clone(), new.clone());
                events.push(WatchEvent::new(EventKind::Acquired, new));
            }
            (Some(old), Some(new)) if old.id == new.id => {
                let moved = match new.expires_at.duration_since(old.expires_at) {
                    Ok(later) => later,
                    Err(earlier) => earlier.duration(),
                };
                if moved >= RENEWAL_THRESHOLD {
                    self.snapshot.insert(new.resource.clone(), new.clone());
                    events.push(WatchEvent::new(EventKind::Renewed, new));
                }
            }
            (Some(old), new) => {
                self.snapshot.remove(&old.resource);
                events.push(self.ended(old).await?);
                if let Some(new) = new {
                    self.snapshot.insert(new.resource.clone(), new.clone());
                    events.push(WatchEvent::new(EventKind::Acquired, new));
                }
            }
        }
        Ok(())
    }

    /// Why `lease` is gone: broken, lapsed or released.
    async fn ended(&self, lease: Lease) -> Result<WatchEvent, Error> {
        let backend = &self.router.route(&lease.resource).backend;
        if let LeaseStatus::NotCurrent {
            evicted: Some(eviction),
        } = backend.status(&lease.resource, &lease.id).await?
        {
            return Ok(WatchEvent {
                broken_by: Some((eviction.actor, eviction.reason)),
                ..WatchEvent::new(EventKind::ForceReleased, lease)
            });
        }
        let kind = if lease.expires_at <= SystemTime::now() {
            EventKind::Expired
        } else {
            EventKind::Released
        };
        Ok(WatchEvent::new(kind, lease))
    }
}

fn shutting_down() -> Error {
    Error::ShuttingDown("the daemon is shutting down; watch again".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::memory::MemoryBackend;
    use crate::config::Config;
    use crate::lease::{AcquireRequest, Acquisition, LeaseId};

    /// A grant announced after a newer lease of the same resource was read
    /// (out of order) must not end that newer, live lease in the stream.
    #[tokio::test]
    async fn a_stale_announcement_is_dropped() {
        let config = Config::parse("[backends.main]\ntype = \"memory\"\n", "test").expect("config");
        let memory = Arc::new(MemoryBackend::new());
        let backends = [("main".to_string(), memory.clone() as Arc<dyn Backend>)].into();
        let router = Arc::new(Router::new(&config, backends).expect("router"));
        let changes = Arc::new(Changes::default());
        let mut events = start(router, changes.clone(), Selection::Resource("r".into()));
        // Let the watch read its (empty) selection before anything happens.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let grant = |ttl| AcquireRequest {
            resource: "r".into(),
            id: LeaseId::generate(),
            principal: "p".into(),
            reason: String::new(),
            ttl,
        };
        let Ok(Acquisition::Granted(first)) = memory.acquire(&grant(Duration::from_secs(60))).await
        else {
            panic!("granted");
        };
        assert!(memory.release("r", &first.id).await.expect("release"));
        let Ok(Acquisition::Granted(second)) =
            memory.acquire(&grant(Duration::from_secs(60))).await
        else {
            panic!("granted");
        };
        // The engine's hint comes first and the watch reads the second lease;
        // only then does the announcement of the first arrive.
        changes.announce(Signal::Changed("r".into()));
        let seen = events.recv().await.expect("an event").expect("no error");
        assert_eq!(
            (seen.kind, seen.lease.fence),
            (EventKind::Acquired, second.fence)
        );
        changes.announce(Signal::Acquired(Arc::new(first.clone())));
        let next = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
        assert!(
            next.is_err(),
            "the stale announcement became an event: {next:?}"
        );
    }
}
