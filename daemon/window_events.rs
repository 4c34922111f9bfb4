//! The window events of `Watch` streams: a freeze started or ended, a
//! resource booked, a reservation cancelled. One task per daemon compares
//! what is in force and what is booked with what it saw a tick before (the
//! reservations' refresh, 1 s) and broadcasts the differences; every watch
//! picks those of its selection. Bookings through other daemons are seen
//! when this daemon's copy of the reservations is refreshed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::reservations::{Ledger, Reservation};
use crate::windows::{Freeze, Freezes, Window};

/// Window events kept for a watch that is slow to read them.
const BACKLOG: usize = 256;

/// What happened to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowEventKind {
    /// A freeze's occurrence started.
    FreezeStarted,
    /// A freeze's occurrence ended (or the freeze was removed).
    FreezeEnded,
    /// A resource was booked.
    Reserved,
    /// A reservation was cancelled before it ended.
    Unreserved,
}

/// One window event.
#[derive(Debug, Clone)]
pub struct WindowEvent {
    /// What happened.
    pub kind: WindowEventKind,
    /// The window.
    pub window: Window,
    /// For a freeze: the freeze, whose patterns say what it covers.
    pub freeze: Option<Freeze>,
    /// When this daemon noticed.
    pub observed_at: SystemTime,
}

/// The freezes in force, as the lock core holds them.
pub type SharedFreezes = Arc<RwLock<Arc<Freezes>>>;

/// What one tick saw: freezes in force (by name) and reservations (by
/// resource and id).
#[derive(Default)]
struct Seen {
    freezes: BTreeMap<String, (Window, Freeze)>,
    reservations: BTreeMap<(String, String), Reservation>,
}

fn look(freezes: &Freezes, ledger: &Ledger, now: SystemTime) -> Seen {
    Seen {
        freezes: freezes
            .iter()
            .filter_map(|f| f.at(now).map(|w| (f.name().to_string(), (w, f.clone()))))
            .collect(),
        reservations: ledger
            .known()
            .into_iter()
            .map(|r| ((r.resource.clone(), r.id.clone()), r))
            .collect(),
    }
}

/// The events between two looks.
fn differences(before: &Seen, after: &Seen, now: SystemTime) -> Vec<WindowEvent> {
    let event = |kind, window: &Window, freeze: Option<&Freeze>| WindowEvent {
        kind,
        window: window.clone(),
        freeze: freeze.cloned(),
        observed_at: now,
    };
    let mut events = Vec::new();
    for (name, (window, freeze)) in &before.freezes {
        if after
            .freezes
            .get(name)
            .is_none_or(|(w, _)| w.starts_at != window.starts_at)
        {
            events.push(event(WindowEventKind::FreezeEnded, window, Some(freeze)));
        }
    }
    for (name, (window, freeze)) in &after.freezes {
        if before
            .freezes
            .get(name)
            .is_none_or(|(w, _)| w.starts_at != window.starts_at)
        {
            events.push(event(WindowEventKind::FreezeStarted, window, Some(freeze)));
        }
    }
    let ids = |seen: &Seen| seen.reservations.keys().cloned().collect::<BTreeSet<_>>();
    let (old, new) = (ids(before), ids(after));
    for key in old.difference(&new) {
        let r = &before.reservations[key];
        // Gone before its end: cancelled (one that ended is just over).
        if r.ends_at > now {
            events.push(event(WindowEventKind::Unreserved, &r.window(), None));
        }
    }
    for key in new.difference(&old) {
        let r = &after.reservations[key];
        events.push(event(WindowEventKind::Reserved, &r.window(), None));
    }
    events
}

/// The window events of one daemon.
pub struct WindowEvents {
    sender: broadcast::Sender<WindowEvent>,
}

impl WindowEvents {
    /// Starts watching `freezes` and `ledger` (a task on the current
    /// runtime, for as long as the ledger lives).
    pub fn start(freezes: SharedFreezes, ledger: &Arc<Ledger>) -> Self {
        let (sender, _) = broadcast::channel(BACKLOG);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let ledger: Weak<Ledger> = Arc::downgrade(ledger);
            let sender = sender.clone();
            runtime.spawn(async move {
                let mut seen: Option<Seen> = None;
                loop {
                    let Some(this) = ledger.upgrade() else { return };
                    let pause = this.limits().refresh;
                    let now = SystemTime::now();
                    let current = freezes
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    let after = look(&current, &this, now);
                    drop(this);
                    if let Some(before) = &seen {
                        for event in differences(before, &after, now) {
                            // An error only means that nobody watches.
                            let _ = sender.send(event);
                        }
                    }
                    seen = Some(after);
                    tokio::time::sleep(pause).await;
                }
            });
        }
        Self { sender }
    }

    /// The events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<WindowEvent> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reservation(id: &str, ends_in: u64) -> Reservation {
        let now = SystemTime::now();
        Reservation {
            id: id.into(),
            resource: "staging".into(),
            owner: "alice".into(),
            reason: "load test".into(),
            starts_at: now,
            ends_at: now + Duration::from_secs(ends_in),
            created_at: now,
        }
    }

    fn seen(reservations: &[Reservation]) -> Seen {
        Seen {
            freezes: BTreeMap::new(),
            reservations: reservations
                .iter()
                .map(|r| ((r.resource.clone(), r.id.clone()), r.clone()))
                .collect(),
        }
    }

    #[test]
    fn freezes_start_and_end_and_each_occurrence_starts_again() {
        let freeze: Freeze = toml::from_str(
            "name = \"hourly\"\nmatch = [\"deploy/**\"]\nschedule = \"0 * * * *\"\nduration = \"10m\"\n",
        )
        .expect("freeze");
        let freezes = Freezes::new(vec![freeze]);
        let ledger = {
            let config =
                crate::config::Config::parse("[backends.main]\ntype = \"memory\"\n", "test")
                    .expect("config");
            let backend: Arc<dyn crate::backend::Backend> =
                Arc::new(crate::backend::memory::MemoryBackend::new());
            let router = crate::routing::Router::new(
                &config,
                BTreeMap::from([("main".to_string(), backend)]),
            )
            .expect("router");
            Ledger::new(Arc::new(router))
        };
        let hour = |h: u64, m: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(h * 3600 + m * 60);
        let kinds = |a: SystemTime, b: SystemTime| -> Vec<WindowEventKind> {
            differences(&look(&freezes, &ledger, a), &look(&freezes, &ledger, b), b)
                .into_iter()
                .map(|e| e.kind)
                .collect()
        };
        assert_eq!(
            kinds(hour(5, 59), hour(6, 0)),
            [WindowEventKind::FreezeStarted]
        );
        assert_eq!(kinds(hour(6, 0), hour(6, 5)), []);
        assert_eq!(
            kinds(hour(6, 5), hour(6, 10)),
            [WindowEventKind::FreezeEnded]
        );
        // One tick missed the gap between two occurrences: the old one
        // ended, the new one started.
        assert_eq!(
            kinds(hour(6, 5), hour(7, 5)),
            [WindowEventKind::FreezeEnded, WindowEventKind::FreezeStarted]
        );
        // Removed by a reload while in force: ended.
        let after = Seen::default();
        let ended: Vec<_> = differences(&look(&freezes, &ledger, hour(6, 5)), &after, hour(6, 6))
            .into_iter()
            .map(|e| (e.kind, e.window.name))
            .collect();
        assert_eq!(
            ended,
            [(WindowEventKind::FreezeEnded, "hourly".to_string())]
        );
    }

    #[test]
    fn booked_cancelled_and_ended_reservations() {
        let now = SystemTime::now() + Duration::from_secs(1);
        let (kept, cancelled, ended) = (
            reservation("a", 600),
            reservation("b", 600),
            reservation("c", 0),
        );
        let booked = reservation("d", 600);
        let before = seen(&[kept.clone(), cancelled, ended]);
        let after = seen(&[kept, booked]);
        let events: Vec<(WindowEventKind, String)> = differences(&before, &after, now)
            .into_iter()
            .map(|e| (e.kind, e.window.name))
            .collect();
        assert_eq!(
            events,
            [
                (WindowEventKind::Unreserved, "b".to_string()),
                (WindowEventKind::Reserved, "d".to_string())
            ]
        );
    }
}
