//! Reservations: a resource booked ahead by one principal, from one time to
//! another. While a reservation is in force everyone else's acquire is
//! refused as by a held lock, and no lease of anyone else is granted or
//! renewed past its start (the lock core's gate, as for freezes).
//!
//! # Where they live
//!
//! Each resource's reservations are one *book* in the resource's backend
//! ([`Backend::book`]): this module's encoding, replaced whole by
//! compare-and-swap, so two daemons booking overlapping times can never both
//! succeed: one write wins, the other reads again and finds the overlap.
//!
//! # What each daemon knows
//!
//! The gate runs on every acquire and renewal, in memory: a [`Ledger`] keeps
//! every daemon's copy of the reservations that have not ended, read from
//! every backend every `refresh` (1 s) and updated at once by this daemon's
//! own bookings. A reservation booked through another daemon is therefore
//! enforced here within `refresh`; a lease granted in that second, like one
//! held when the reservation was made, runs to its expiry but is not renewed
//! into the reservation. The same read cleans up: a book holding only
//! reservations that have ended is written back empty.
//!
//! Times are judged on the daemon's clock, as freeze windows are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::backend::{Backend, BackendError, Book};
use crate::error::Error;
use crate::routing::Router;
use crate::windows::{Window, WindowKind};

/// Default of `max_ahead`: a quarter, enough to plan a release train.
pub const DEFAULT_MAX_AHEAD: Duration = Duration::from_secs(92 * 86_400);
/// Default of `max_length`: two weeks, so nobody books prod for a year.
pub const DEFAULT_MAX_LENGTH: Duration = Duration::from_secs(14 * 86_400);
/// Default of `max_per_resource`.
pub const DEFAULT_MAX_PER_RESOURCE: usize = 64;
/// Default of `refresh`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
/// Longest reason kept, as for leases.
pub const MAX_REASON: usize = 1024;

/// Attempts of one booking when other daemons keep writing the same book.
const MAX_ATTEMPTS: usize = 16;
/// Books read from one backend per call while refreshing.
const PAGE: usize = 500;

/// `[reservations]`: how far ahead and for how long a resource may be booked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "LimitsTable")]
pub struct ReservationLimits {
    /// How far ahead a reservation may start.
    pub max_ahead: Duration,
    /// How long one reservation may last.
    pub max_length: Duration,
    /// Reservations of one resource that have not ended.
    pub max_per_resource: usize,
    /// How often each daemon reads every book again.
    pub refresh: Duration,
}

impl Default for ReservationLimits {
    fn default() -> Self {
        Self {
            max_ahead: DEFAULT_MAX_AHEAD,
            max_length: DEFAULT_MAX_LENGTH,
            max_per_resource: DEFAULT_MAX_PER_RESOURCE,
            refresh: DEFAULT_REFRESH,
        }
    }
}

/// `[reservations]` as written: every key optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsTable {
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    max_ahead: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    max_length: Option<Duration>,
    max_per_resource: Option<usize>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    refresh: Option<Duration>,
}

impl TryFrom<LimitsTable> for ReservationLimits {
    type Error = String;

    fn try_from(t: LimitsTable) -> Result<Self, String> {
        let d = Self::default();
        let limits = Self {
            max_ahead: t.max_ahead.unwrap_or(d.max_ahead),
            max_length: t.max_length.unwrap_or(d.max_length),
            max_per_resource: t.max_per_resource.unwrap_or(d.max_per_resource),
            refresh: t.refresh.unwrap_or(d.refresh),
        };
        if limits.max_length < Duration::from_secs(60) {
            return Err("reservations.max_length must be at least 1m".into());
        }
        if limits.max_per_resource == 0 || limits.max_per_resource > 1000 {
            return Err("reservations.max_per_resource must be between 1 and 1000".into());
        }
        // Durations in the config are whole seconds.
        if limits.refresh < Duration::from_secs(1) || limits.refresh > Duration::from_secs(60) {
            return Err("reservations.refresh must be between 1s and 60s".into());
        }
        Ok(limits)
    }
}

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Unique among the resource's reservations.
    pub id: String,
    /// The resource booked.
    pub resource: String,
    /// Who booked it.
    pub owner: String,
    /// Why.
    pub reason: String,
    /// When it starts.
    pub starts_at: SystemTime,
    /// When it ends.
    pub ends_at: SystemTime,
    /// When it was booked.
    pub created_at: SystemTime,
}

impl Reservation {
    /// Whether it is in force at `t`.
    pub fn covers(&self, t: SystemTime) -> bool {
        self.starts_at <= t && t < self.ends_at
    }

    /// Whether it shares any instant with `[from, until)`.
    pub fn overlaps(&self, from: SystemTime, until: SystemTime) -> bool {
        self.starts_at < until && from < self.ends_at
    }

    /// It as a window that refuses everyone but its owner.
    pub fn window(&self) -> Window {
        Window {
            kind: WindowKind::Reservation,
            name: self.id.clone(),
            owner: self.owner.clone(),
            resource: self.resource.clone(),
            reason: self.reason.clone(),
            starts_at: self.starts_at,
            ends_at: self.ends_at,
        }
    }
}

/// The stored form of a book: versioned JSON, times in milliseconds since
/// the Unix epoch.
#[derive(Serialize, Deserialize)]
struct Stored {
    v: u32,
    reservations: Vec<StoredReservation>,
}

#[derive(Serialize, Deserialize)]
struct StoredReservation {
    id: String,
    owner: String,
    reason: String,
    starts_ms: u64,
    ends_ms: u64,
    created_ms: u64,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The reservations of a book.
fn decode(backend: &str, book: &Book) -> Result<Vec<Reservation>, BackendError> {
    let stored: Stored = serde_json::from_slice(&book.body).map_err(|e| {
        BackendError::internal(
            backend,
            format!("corrupt reservation book of {:?}: {e}", book.resource),
        )
    })?;
    if stored.v != 1 {
        return Err(BackendError::internal(
            backend,
            format!(
                "reservation book of {:?} has version {} (this daemon reads 1): a newer daemon wrote it",
                book.resource, stored.v
            ),
        ));
    }
    Ok(stored
        .reservations
        .into_iter()
        .map(|r| Reservation {
            id: r.id,
            resource: book.resource.clone(),
            owner: r.owner,
            reason: r.reason,
            starts_at: time(r.starts_ms),
            ends_at: time(r.ends_ms),
            created_at: time(r.created_ms),
        })
        .collect())
}

fn encode(list: &[Reservation]) -> Vec<u8> {
    let stored = Stored {
        v: 1,
        reservations: list
            .iter()
            .map(|r| StoredReservation {
                id: r.id.clone(),
                owner: r.owner.clone(),
                reason: r.reason.clone(),
                starts_ms: millis(r.starts_at),
                ends_ms: millis(r.ends_at),
                created_ms: millis(r.created_at),
            })
            .collect(),
    };
    // Plain strings and numbers: serializing cannot fail.
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// A new id, unique among `taken`: 8 hex digits, short enough to type.
fn new_id(taken: &[Reservation]) -> String {
    loop {
        let id = format!("{:08x}", rand::random::<u32>());
        if !taken.iter().any(|r| r.id == id) {
            return id;
        }
    }
}

/// What a booking came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Booking {
    /// Booked.
    Reserved(Reservation),
    /// Refused: this reservation overlaps.
    Overlaps(Reservation),
}

/// A booking asked for.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The resource.
    pub resource: String,
    /// Who books it.
    pub owner: String,
    /// Why.
    pub reason: String,
    /// When it starts; `None` or a time past: now.
    pub starts_at: Option<SystemTime>,
    /// When it ends.
    pub ends_at: SystemTime,
}

/// This daemon's copy of the reservations that have not ended, by resource.
type Snapshot = HashMap<String, Vec<Reservation>>;

/// The reservations: booking and cancelling through the backends, and the
/// copy the gate reads.
pub struct Ledger {
    router: Arc<Router>,
    limits: RwLock<ReservationLimits>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// When this daemon last changed each resource's copy itself, so that a
    /// refresh that read the books before does not undo it.
    recent: Mutex<HashMap<String, Instant>>,
}

impl Ledger {
    /// A ledger over `router`'s backends, empty until its first refresh.
    pub fn new(router: Arc<Router>) -> Self {
        Self {
            router,
            limits: RwLock::new(ReservationLimits::default()),
            snapshot: RwLock::default(),
            recent: Mutex::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> ReservationLimits {
        *self.limits.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `limits` in force (start, reload).
    pub fn set_limits(&self, limits: ReservationLimits) {
        *self.limits.write().unwrap_or_else(PoisonError::into_inner) = limits;
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every reservation this daemon knows of that had not ended at its
    /// last refresh (or booking).
    pub fn known(&self) -> Vec<Reservation> {
        self.snapshot().values().flatten().cloned().collect()
    }

    /// Whether no reservation is known (the gate is then free).
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// The reservation of someone other than `principal` in force on
    /// `resource` at `now`.
    pub fn refusing(&self, resource: &str, principal: &str, now: SystemTime) -> Option<Window> {
        self.snapshot()
            .get(resource)?
            .iter()
            .find(|r| r.owner != principal && r.covers(now))
            .map(Reservation::window)
    }

    /// The first reservation of someone other than `principal` on
    /// `resource` starting after `now` and before `before`.
    pub fn next_refusing(
        &self,
        resource: &str,
        principal: &str,
        now: SystemTime,
        before: SystemTime,
    ) -> Option<Window> {
        self.snapshot()
            .get(resource)?
            .iter()
            .filter(|r| r.owner != principal && r.starts_at > now && r.starts_at < before)
            .min_by_key(|r| r.starts_at)
            .map(Reservation::window)
    }

    /// Replaces this daemon's copy of `resource`'s reservations.
    fn remember(&self, resource: &str, list: &[Reservation]) {
        let mut snapshot = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(resource.to_string(), Instant::now());
        let mut next = Snapshot::clone(&snapshot);
        if list.is_empty() {
            next.remove(resource);
        } else {
            next.insert(resource.to_string(), list.to_vec());
        }
        *snapshot = Arc::new(next);
    }

    /// Checks an ask against the limits: the times it books.
    fn times(&self, ask: &Ask, now: SystemTime) -> Result<(SystemTime, SystemTime), Error> {
        let limits = self.limits();
        let starts_at = ask.starts_at.filter(|t| *t > now).unwrap_or(now);
        if ask.ends_at <= starts_at {
            return Err(Error::invalid(
                "the reservation must end after it starts (and after now)",
            ));
        }
        let ahead = starts_at.duration_since(now).unwrap_or_default();
        if ahead > limits.max_ahead {
            return Err(Error::invalid(format!(
                "a reservation may start at most {} ahead (reservations.max_ahead)",
                crate::duration::format_duration(limits.max_ahead)
            )));
        }
        let length = ask.ends_at.duration_since(starts_at).unwrap_or_default();
        if length > limits.max_length {
            return Err(Error::invalid(format!(
                "a reservation may last at most {} (reservations.max_length)",
                crate::duration::format_duration(limits.max_length)
            )));
        }
        Ok((starts_at, ask.ends_at))
    }

    /// Books `ask`, or names the reservation in the way.
    pub async fn reserve(&self, ask: Ask) -> Result<Booking, Error> {
        let route = self.router.route(&ask.resource).clone();
        for _ in 0..MAX_ATTEMPTS {
            let (version, mut list) =
                read(&route.backend_name, &*route.backend, &ask.resource).await?;
            let now = SystemTime::now();
            let (starts_at, ends_at) = self.times(&ask, now)?;
            list.retain(|r| r.ends_at > now);
            if let Some(existing) = list.iter().find(|r| r.overlaps(starts_at, ends_at)) {
                let existing = existing.clone();
                self.remember(&ask.resource, &list);
                return Ok(Booking::Overlaps(existing));
            }
            let max = self.limits().max_per_resource;
            if list.len() >= max {
                return Err(Error::ResourceExhausted(format!(
                    "{:?} has {max} reservations that have not ended, the most allowed \
                     (reservations.max_per_resource)",
                    ask.resource
                )));
            }
            // In the stored precision, so that what is answered is what
            // every daemon reads.
            let reservation = Reservation {
                id: new_id(&list),
                resource: ask.resource.clone(),
                owner: ask.owner.clone(),
                reason: ask.reason.clone(),
                starts_at: time(millis(starts_at)),
                ends_at: time(millis(ends_at)),
                created_at: time(millis(now)),
            };
            list.push(reservation.clone());
            list.sort_by_key(|r| r.starts_at);
            if route
                .backend
                .write_book(&ask.resource, version, &encode(&list))
                .await?
            {
                self.remember(&ask.resource, &list);
                return Ok(Booking::Reserved(reservation));
            }
        }
        Err(busy(&route.backend_name, &ask.resource))
    }

    /// Cancels reservation `id` of `resource` for `actor`: its owner, or an
    /// administrator (`admin`) giving a `reason`. `Ok(None)`: no such
    /// reservation (any more).
    pub async fn unreserve(
        &self,
        resource: &str,
        id: &str,
        actor: &str,
        admin: bool,
        reason: &str,
    ) -> Result<Option<Reservation>, Error> {
        let route = self.router.route(resource).clone();
        for _ in 0..MAX_ATTEMPTS {
            let (version, mut list) = read(&route.backend_name, &*route.backend, resource).await?;
            let now = SystemTime::now();
            list.retain(|r| r.ends_at > now);
            let Some(at) = list.iter().position(|r| r.id == id) else {
                self.remember(resource, &list);
                return Ok(None);
            };
            if list[at].owner != actor {
                if !admin {
                    return Err(Error::PermissionDenied(format!(
                        "reservation {id} of {resource:?} is {:?}'s: only its owner or an \
                         administrator may cancel it",
                        list[at].owner
                    )));
                }
                if reason.trim().is_empty() {
                    return Err(Error::invalid(format!(
                        "reservation {id} of {resource:?} is {:?}'s: a reason is required \
                         to cancel someone else's reservation",
                        list[at].owner
                    )));
                }
            }
            let cancelled = list.remove(at);
            if route
                .backend
                .write_book(resource, version, &encode(&list))
                .await?
            {
                self.remember(resource, &list);
                return Ok(Some(cancelled));
            }
        }
        Err(busy(&route.backend_name, resource))
    }

    /// Every reservation that has not ended on a resource under `prefix`,
    /// read from the backends now, by resource then start.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Reservation>, Error> {
        let now = SystemTime::now();
        let mut all = Vec::new();
        for (name, backend) in self.router.backends() {
            for book in self.read_backend(name, backend, prefix).await? {
                all.extend(decode(name, &book)?.into_iter().filter(|r| r.ends_at > now));
            }
        }
        all.sort_by(|a, b| (&a.resource, a.starts_at).cmp(&(&b.resource, b.starts_at)));
        Ok(all)
    }

    /// Every book under `prefix` on backend `name` whose resource is routed
    /// there (a routing change may leave others behind).
    async fn read_backend(
        &self,
        name: &str,
        backend: &Arc<dyn Backend>,
        prefix: &str,
    ) -> Result<Vec<Book>, BackendError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = backend.books(prefix, after.as_deref(), PAGE).await?;
            let full = page.len() >= PAGE;
            after = page.last().map(|b| b.resource.clone());
            out.extend(
                page.into_iter()
                    .filter(|book| self.router.route(&book.resource).backend_name == name),
            );
            if !full {
                return Ok(out);
            }
        }
    }

    /// Reads every book again: this daemon's copy of the reservations that
    /// have not ended, and books holding only ended ones written back
    /// empty. What cannot be read (a backend down, a book this daemon
    /// cannot decode) keeps its last copy, and the first such error is
    /// returned once the rest is in force.
    pub async fn refresh(&self) -> Result<(), BackendError> {
        let started = Instant::now();
        let now = SystemTime::now();
        let previous = self.snapshot();
        let mut next = Snapshot::new();
        let mut failure: Option<BackendError> = None;
        for (name, backend) in self.router.backends() {
            let books = match self.read_backend(name, backend, "").await {
                Ok(books) => books,
                Err(e) => {
                    next.extend(
                        previous
                            .iter()
                            .filter(|(resource, _)| {
                                &self.router.route(resource).backend_name == name
                            })
                            .map(|(resource, list)| (resource.clone(), list.clone())),
                    );
                    failure.get_or_insert(e);
                    continue;
                }
            };
            for book in books {
                let mut list = match decode(name, &book) {
                    Ok(list) => list,
                    Err(e) => {
                        if let Some(list) = previous.get(&book.resource) {
                            next.insert(book.resource.clone(), list.clone());
                        }
                        failure.get_or_insert(e);
                        continue;
                    }
                };
                let before = list.len();
                list.retain(|r| r.ends_at > now);
                if list.len() < before && list.is_empty() {
                    // Another daemon may clean up or book at the same time:
                    // whoever writes first wins, and nothing is lost.
                    let _cleaned = backend
                        .write_book(&book.resource, book.version, &encode(&list))
                        .await;
                }
                if !list.is_empty() {
                    next.insert(book.resource, list);
                }
            }
        }
        let mut snapshot = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // What this daemon booked or cancelled while the books were read is
        // newer than what was read.
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        for (resource, at) in recent.iter() {
            if *at >= started {
                match snapshot.get(resource) {
                    Some(list) => next.insert(resource.clone(), list.clone()),
                    None => next.remove(resource),
                };
            }
        }
        recent.retain(|_, at| *at >= started);
        *snapshot = Arc::new(next);
        failure.map_or(Ok(()), Err)
    }

    /// Refreshes every `refresh` for as long as the ledger lives (a task on
    /// the current runtime). Failures are logged when they start and when
    /// they end, not every second; the last copy stays in force meanwhile.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ledger: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut failing = false;
            loop {
                let Some(this) = ledger.upgrade() else { return };
                let pause = this.limits().refresh;
                match this.refresh().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("reservations read again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        warn!(error = %e, "cannot read the reservations; keeping the last copy");
                    }
                    Err(_) => {}
                }
                drop(this);
                tokio::time::sleep(pause).await;
            }
        });
    }
}

/// The version and reservations of `resource`'s book (0 and none: no book).
async fn read(
    name: &str,
    backend: &dyn Backend,
    resource: &str,
) -> Result<(u64, Vec<Reservation>), BackendError> {
    match backend.book(resource).await? {
        Some(book) => Ok((book.version, decode(name, &book)?)),
        None => Ok((0, Vec::new())),
    }
}

fn busy(backend: &str, resource: &str) -> Error {
    Error::Backend(BackendError::unavailable(
        backend,
        format!("the reservations of {resource:?} kept changing: try again"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::config::Config;

    fn ledger() -> Arc<Ledger> {
        let config = Config::parse("[backends.main]\ntype = \"memory\"\n", "test").expect("config");
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let router = Router::new(
            &config,
            std::collections::BTreeMap::from([("main".to_string(), backend)]),
        )
        .expect("router");
        Arc::new(Ledger::new(Arc::new(router)))
    }

    /// A booking `from_s` to `until_s` seconds after a whole second fixed
    /// for the process (so that bookings made one after the other touch
    /// exactly).
    fn ask(owner: &str, from_s: u64, until_s: u64) -> Ask {
        static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let now = time(*BASE.get_or_init(|| millis(SystemTime::now()) / 1000 * 1000 + 1000));
        Ask {
            resource: "staging".into(),
            owner: owner.into(),
            reason: "load test".into(),
            starts_at: Some(now + Duration::from_secs(from_s)),
            ends_at: now + Duration::from_secs(until_s),
        }
    }

    /// A reservation is in force from its start, up to but not at its end:
    /// the next one may start at that instant.
    #[test]
    fn a_reservation_covers_its_start_and_not_its_end() {
        let t = time(1_800_000_000_000);
        let r = Reservation {
            id: "a1b2c3d4".into(),
            resource: "staging".into(),
            owner: "alice".into(),
            reason: "load test".into(),
            starts_at: t,
            ends_at: t + Duration::from_secs(60),
            created_at: t,
        };
        let ms = Duration::from_millis(1);
        assert!(!r.covers(t - ms));
        assert!(r.covers(t));
        assert!(r.covers(r.ends_at - ms));
        assert!(!r.covers(r.ends_at));
        assert!(!r.covers(r.ends_at + ms));
    }

    #[tokio::test]
    async fn overlapping_bookings_are_refused_naming_the_one_in_the_way() {
        let ledger = ledger();
        let Booking::Reserved(first) = ledger
            .reserve(ask("alice", 3600, 7200))
            .await
            .expect("reserve")
        else {
            panic!("not reserved")
        };
        assert_eq!(first.id.len(), 8);
        for (from, until) in [(3000, 3601), (7199, 9000), (3700, 3800), (0, 10_000)] {
            assert_eq!(
                ledger
                    .reserve(ask("bob", from, until))
                    .await
                    .expect("reserve"),
                Booking::Overlaps(first.clone()),
                "{from}..{until}"
            );
        }
        // Touching ends do not overlap.
        for (from, until) in [(3000, 3600), (7200, 9000)] {
            assert!(matches!(
                ledger
                    .reserve(ask("bob", from, until))
                    .await
                    .expect("reserve"),
                Booking::Reserved(_)
            ));
        }
        let listed = ledger.list("").await.expect("list");
        assert_eq!(listed.len(), 3);
        assert!(listed.windows(2).all(|w| w[0].starts_at <= w[1].starts_at));
    }

    #[tokio::test]
    async fn the_gate_refuses_others_and_cuts_short_before_a_start() {
        let ledger = ledger();
        ledger.reserve(ask("alice", 0, 600)).await.expect("now");
        ledger
            .reserve(ask("alice", 3600, 7200))
            .await
            .expect("later");
        let now = SystemTime::now() + Duration::from_secs(1);
        let window = ledger.refusing("staging", "bob", now).expect("in force");
        assert_eq!(window.kind, WindowKind::Reservation);
        assert_eq!(window.owner, "alice");
        assert!(
            ledger.refusing("staging", "alice", now).is_none(),
            "the owner"
        );
        assert!(
            ledger.refusing("prod", "bob", now).is_none(),
            "another resource"
        );
        let next = ledger
            .next_refusing("staging", "bob", now, now + Duration::from_secs(7200))
            .expect("the later one");
        assert!(next.starts_at > now + Duration::from_secs(3000));
        assert!(
            ledger
                .next_refusing("staging", "bob", now, now + Duration::from_secs(3000))
                .is_none()
        );
    }

    #[test]
    fn limits_are_read_from_the_config_within_their_bounds() {
        let parse = |table: &str| {
            Config::parse(
                &format!("[backends.main]\ntype = \"memory\"\n\n[reservations]\n{table}\n"),
                "test",
            )
            .map(|c| c.reservations)
            .map_err(|e| format!("{e:#}"))
        };
        assert_eq!(parse(""), Ok(ReservationLimits::default()));
        let set = parse(
            "max_ahead = \"7d\"\nmax_length = \"1m\"\nmax_per_resource = 1\nrefresh = \"1s\"",
        )
        .expect("the lower bounds");
        assert_eq!(
            set,
            ReservationLimits {
                max_ahead: Duration::from_secs(7 * 86_400),
                max_length: Duration::from_secs(60),
                max_per_resource: 1,
                refresh: Duration::from_secs(1),
            }
        );
        let upper = parse("max_per_resource = 1000\nrefresh = \"60s\"").expect("the upper bounds");
        assert_eq!(
            (upper.max_per_resource, upper.refresh),
            (1000, Duration::from_secs(60))
        );
        for (table, key) in [
            ("max_length = \"59s\"", "reservations.max_length"),
            ("max_per_resource = 0", "reservations.max_per_resource"),
            ("max_per_resource = 1001", "reservations.max_per_resource"),
            ("refresh = \"0s\"", "reservations.refresh"),
            ("refresh = \"61s\"", "reservations.refresh"),
        ] {
            let err = parse(table).expect_err(table);
            assert!(err.contains(key), "{table}: {err}");
        }
        assert!(parse("max_wait = \"1h\"").is_err(), "an unknown key");
    }

    #[tokio::test]
    async fn by_default_a_booking_may_start_a_quarter_ahead_and_last_two_weeks() {
        const DAY: u64 = 86_400;
        let ledger = ledger();
        let booked = |r: Result<Booking, Error>| matches!(r, Ok(Booking::Reserved(_)));
        assert!(booked(
            ledger.reserve(ask("a", 91 * DAY, 91 * DAY + 3600)).await
        ));
        assert!(!booked(
            ledger.reserve(ask("a", 93 * DAY, 93 * DAY + 3600)).await
        ));
        assert!(booked(ledger.reserve(ask("a", DAY, 14 * DAY)).await));
        assert!(!booked(ledger.reserve(ask("a", 20 * DAY, 35 * DAY)).await));
    }

    #[tokio::test]
    async fn limits_and_bad_times_are_refused_with_their_key() {
        let ledger = ledger();
        let message = |r: Result<Booking, Error>| match r {
            Err(e) => e.to_string(),
            Ok(b) => panic!("accepted: {b:?}"),
        };
        assert!(
            message(ledger.reserve(ask("a", 200 * 86_400, 201 * 86_400)).await)
                .contains("reservations.max_ahead")
        );
        assert!(
            message(ledger.reserve(ask("a", 0, 30 * 86_400)).await)
                .contains("reservations.max_length")
        );
        assert!(message(ledger.reserve(ask("a", 600, 300)).await).contains("must end after"));
        ledger.set_limits(ReservationLimits {
            max_per_resource: 2,
            ..ReservationLimits::default()
        });
        ledger.reserve(ask("a", 0, 10)).await.expect("one");
        ledger.reserve(ask("a", 10, 20)).await.expect("two");
        assert!(matches!(
            ledger.reserve(ask("a", 20, 30)).await,
            Err(Error::ResourceExhausted(m)) if m.contains("reservations.max_per_resource")
        ));
    }

    #[tokio::test]
    async fn only_the_owner_or_an_administrator_cancels() {
        let ledger = ledger();
        let Booking::Reserved(r) = ledger
            .reserve(ask("alice", 60, 120))
            .await
            .expect("reserve")
        else {
            panic!("not reserved")
        };
        assert!(matches!(
            ledger.unreserve("staging", &r.id, "bob", false, "").await,
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            ledger.unreserve("staging", &r.id, "root", true, " ").await,
            Err(Error::InvalidArgument(m)) if m.contains("a reason is required")
        ));
        assert_eq!(
            ledger
                .unreserve("staging", &r.id, "root", true, "outage")
                .await
                .expect("admin"),
            Some(r.clone())
        );
        assert_eq!(
            ledger
                .unreserve("staging", &r.id, "alice", false, "")
                .await
                .expect("again"),
            None
        );
        assert!(ledger.is_empty());
    }

    #[tokio::test]
    async fn a_book_that_cannot_be_read_keeps_its_last_copy_and_spoils_no_other() {
        let ledger = ledger();
        let Booking::Reserved(kept) = ledger
            .reserve(ask("alice", 60, 120))
            .await
            .expect("reserve")
        else {
            panic!("not reserved")
        };
        let backend = ledger.router.route("staging").backend.clone();
        let book = backend
            .book("staging")
            .await
            .expect("book")
            .expect("written");
        assert!(
            backend
                .write_book("staging", book.version, b"{not json")
                .await
                .expect("write")
        );
        let other = Ledger::new(ledger.router.clone());
        other
            .reserve(Ask {
                resource: "prod".into(),
                ..ask("bob", 60, 120)
            })
            .await
            .expect("elsewhere");
        let err = ledger
            .refresh()
            .await
            .expect_err("a corrupt book is reported");
        assert!(
            err.to_string().contains("corrupt reservation book"),
            "{err}"
        );
        assert_eq!(ledger.snapshot()["staging"], [kept], "the last copy stays");
        assert_eq!(
            ledger.snapshot()["prod"][0].owner,
            "bob",
            "the others are read"
        );
    }

    #[tokio::test]
    async fn a_book_of_ended_reservations_is_cleaned_up_and_others_are_seen() {
        let ledger = ledger();
        ledger
            .reserve(Ask {
                starts_at: None,
                ends_at: SystemTime::now() + Duration::from_millis(500),
                ..ask("alice", 0, 1)
            })
            .await
            .expect("short");
        // Booked by another daemon on the same backend.
        let other = Ledger::new(ledger.router.clone());
        other
            .reserve(Ask {
                resource: "prod".into(),
                ..ask("bob", 60, 120)
            })
            .await
            .expect("elsewhere");
        assert!(ledger.snapshot().get("prod").is_none(), "not seen yet");
        tokio::time::sleep(Duration::from_millis(600)).await;
        ledger.refresh().await.expect("refresh");
        assert!(ledger.snapshot().get("staging").is_none(), "ended");
        assert_eq!(ledger.snapshot()["prod"][0].owner, "bob");
        let backend = &ledger.router.route("staging").backend;
        let book = backend.book("staging").await.expect("book").expect("kept");
        assert!(
            decode("main", &book).expect("decode").is_empty(),
            "written back empty"
        );
    }
}
