//! `[[notify]]`: webhooks. Each notifier posts the lock events it chose
//! (`events`), on the resources it chose (`match`), to its URL: our event
//! object as JSON, signed with HMAC-SHA256 when it has a `secret`, or a
//! Slack incoming-webhook message.
//!
//! Delivery never sits on the path of a call: [`Notify::offer`] puts the
//! notification in the notifier's bounded queue and returns; a task per
//! notifier posts them one after another. A notification is delivered at
//! least once by the daemon that saw its event: retried with back-off after
//! a connection error, a timeout, a 5xx, 408 or 429, given up after
//! `attempts`; its `id` lets a receiver drop the repeats. When the queue is
//! full (a receiver down or slow for long), new notifications are dropped,
//! logged and counted. Redirects are not followed (a 3xx is a failure), so a
//! receiver cannot send our signed body elsewhere. Queued notifications are
//! lost when the daemon stops.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::events::LockEvent;
use crate::glob::PatternSet;
use crate::lease::Lease;
use crate::metrics::Metrics;

/// Default `queue`: notifications waiting for delivery, per notifier.
pub const DEFAULT_QUEUE: usize = 1000;
/// Default `timeout` of one attempt (connect, TLS, request, answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `attempts` per notification.
pub const DEFAULT_ATTEMPTS: u32 = 8;
/// The first pause between two attempts; it doubles up to [`LAST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two attempts.
const LAST_PAUSE: Duration = Duration::from_secs(60);
/// The header carrying the body's HMAC-SHA256 (`sha256=` and hex).
pub const SIGNATURE_HEADER: &str = "x-stormlock-signature";
/// The header carrying the notification's id.
pub const ID_HEADER: &str = "x-stormlock-event-id";

/// The events a notifier can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A lease was granted (at once, or after a wait).
    Acquired,
    /// A lease was granted to a caller who had to wait for it.
    GrantedAfterWait,
    /// Someone joined the line for a held resource.
    Waiting,
    /// A lease was renewed.
    Renewed,
    /// A holder released their lease.
    Released,
    /// A lease expired (noticed by the next acquisition).
    Expired,
    /// An administrator broke a lease.
    ForceReleased,
    /// A resource was booked.
    Reserved,
    /// A reservation was cancelled.
    Unreserved,
}

impl Kind {
    /// The name, as written in `events` and sent in `event`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Acquired => "acquired",
            Kind::GrantedAfterWait => "granted-after-wait",
            Kind::Waiting => "waiting",
            Kind::Renewed => "renewed",
            Kind::Released => "released",
            Kind::Expired => "expired",
            Kind::ForceReleased => "force-released",
            Kind::Reserved => "reserved",
            Kind::Unreserved => "unreserved",
        }
    }
}

/// What a notifier posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Our event object ([`Notification`]), signed when there is a secret.
    #[default]
    Json,
    /// `{"text": "..."}` for a Slack incoming webhook.
    Slack,
}

/// `[[notify]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifierTable {
    name: String,
    url: String,
    #[serde(default)]
    format: Format,
    events: Vec<Kind>,
    #[serde(rename = "match", default)]
    matches: Vec<String>,
    secret: Option<String>,
    ca: Option<PathBuf>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    timeout: Option<Duration>,
    queue: Option<usize>,
    attempts: Option<u32>,
}

/// Where a notifier posts.
#[derive(Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// Path and query.
    path: String,
}

/// One `[[notify]]` entry, checked.
#[derive(Clone, Deserialize)]
#[serde(try_from = "NotifierTable")]
pub struct Notifier {
    name: String,
    target: Target,
    format: Format,
    events: Vec<Kind>,
    patterns: Option<PatternSet>,
    secret: Option<Arc<str>>,
    ca: Option<PathBuf>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    queue: usize,
    attempts: u32,
}

// The URL and the secret stay out of logs: a Slack webhook's URL is its
// credential.
impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl TryFrom<NotifierTable> for Notifier {
    type Error = String;

    fn try_from(t: NotifierTable) -> Result<Self, String> {
        if t.name.is_empty()
            || t.name.len() > 64
            || !t
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(format!(
                "name: {:?}: 1 to 64 letters, digits, '.', '_' or '-'",
                t.name
            ));
        }
        let named = |message: String| format!("notify {:?}: {message}", t.name);
        // The configuration is read twice: as written (for line numbers),
        // then with `${VAR}` expanded. A URL or CA path that still names a
        // variable is checked in the second reading only.
        let unexpanded = t.url.contains("${")
            || t.ca
                .as_ref()
                .is_some_and(|ca| ca.to_string_lossy().contains("${"));
        let target = if unexpanded {
            Target {
                https: false,
                host: String::new(),
                port: 0,
                path: String::new(),
            }
        } else {
            parse_url(&t.url).map_err(|e| named(format!("url: {e}")))?
        };
        if t.events.is_empty() {
            return Err(named(
                "events: give at least one (\"acquired\", \"granted-after-wait\", \"waiting\", \
                 \"renewed\", \"released\", \"expired\", \"force-released\", \"reserved\", \
                 \"unreserved\")"
                    .into(),
            ));
        }
        let patterns = if t.matches.is_empty() {
            None
        } else {
            Some(PatternSet::resources(t.matches).map_err(|e| named(format!("match: {e}")))?)
        };
        let secret = match t.secret {
            Some(s) if s.is_empty() => {
                return Err(named(
                    "secret: empty (leave it out, or set the variable it names)".into(),
                ));
            }
            Some(s) => Some(Arc::from(s)),
            None => None,
        };
        if secret.is_some() && t.format == Format::Slack {
            return Err(named(
                "secret: Slack messages are not signed (the URL is the credential); use format = \"json\" or leave secret out".into(),
            ));
        }
        let timeout = t.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(300) {
            return Err(named("timeout: from 1s to 5m".into()));
        }
        let queue = t.queue.unwrap_or(DEFAULT_QUEUE);
        if !(1..=1_000_000).contains(&queue) {
            return Err(named("queue: from 1 to 1000000".into()));
        }
        let attempts = t.attempts.unwrap_or(DEFAULT_ATTEMPTS);
        if !(1..=100).contains(&attempts) {
            return Err(named("attempts: from 1 to 100".into()));
        }
        if t.ca.is_some() && !target.https && !unexpanded {
            return Err(named("ca: given for an http:// URL".into()));
        }
        let tls = if target.https {
            Some(client_tls(t.ca.as_deref()).map_err(|e| named(format!("ca: {e}")))?)
        } else {
            None
        };
        Ok(Self {
            name: t.name,
            target,
            format: t.format,
            events: t.events,
            patterns,
            secret,
            ca: t.ca,
            tls,
            timeout,
            queue,
            attempts,
        })
    }
}

impl Notifier {
    /// Whether a reload may keep `self` running in place of `other`: the
    /// same settings, and no `ca` (its file may have changed under the same
    /// path, so a notifier with one starts anew on every reload).
    fn unchanged(&self, other: &Self) -> bool {
        self.ca.is_none()
            && other.ca.is_none()
            && self.name == other.name
            && self.target == other.target
            && self.format == other.format
            && self.events == other.events
            && self.patterns.as_ref().map(PatternSet::patterns)
                == other.patterns.as_ref().map(PatternSet::patterns)
            && self.secret == other.secret
            && self.timeout == other.timeout
            && self.queue == other.queue
            && self.attempts == other.attempts
    }
}

/// `http://` or `https://`, a host, an optional port, a path.
fn parse_url(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); write https://host/path"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the scheme must be https:// or http://".into()),
    };
    let authority = uri.authority().ok_or("no host; write https://host/path")?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported: use secret".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(Target {
        https,
        host: host.to_string(),
        port,
        path: if path.is_empty() { "/".into() } else { path },
    })
}

/// HTTPS: the public web's roots (Mozilla's, compiled in), or only the
/// certificates of `ca`.
fn client_tls(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no certificate in it", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The event object a JSON notifier posts.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// The same for every delivery of one event: drop repeats by it.
    pub id: String,
    /// What happened (`acquired`, `force-released`, …).
    pub event: &'static str,
    /// The resource.
    pub resource: String,
    /// When this daemon saw it (RFC 3339, UTC).
    pub observed_at: String,
    /// Who: the holder, the one who waits, the administrator who broke the
    /// lease, or the reservation's owner.
    pub principal: String,
    /// Their reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The lease's fencing token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// When the lease expires (expired: expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The lease's holder, when `principal` is someone else (a force-release,
    /// someone waiting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The holder's reason, with `holder`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder_reason: Option<String>,
    /// A reservation's id, start and end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation: Option<ReservationNote>,
}

/// A reservation in a notification.
#[derive(Debug, Clone, Serialize)]
pub struct ReservationNote {
    /// Its id.
    pub id: String,
    /// When it starts.
    pub starts_at: String,
    /// When it ends.
    pub ends_at: String,
}

fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t).format(&Rfc3339).unwrap_or_default()
}

/// An id from what identifies one event: its kind, its resource and what
/// tells it apart from the resource's other events of that kind.
fn event_id(kind: Kind, resource: &str, which: &str) -> String {
    let mut digest = Sha256::new();
    for part in [kind.as_str(), resource, which] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    hex::encode(&digest.finalize()[..16])
}

impl Notification {
    fn of_lease(kind: Kind, lease: &Lease, now: SystemTime) -> Self {
        Self {
            id: event_id(kind, &lease.resource, &lease.fence.to_string()),
            event: kind.as_str(),
            resource: lease.resource.clone(),
            observed_at: rfc3339(now),
            principal: lease.principal.clone(),
            reason: lease.reason.clone(),
            fence: Some(lease.fence),
            expires_at: Some(rfc3339(lease.expires_at)),
            holder: None,
            holder_reason: None,
            reservation: None,
        }
    }

    /// The notifications `event` makes, for the kinds `wanted` (an
    /// acquisition that noticed an expiry makes two).
    fn of(event: &LockEvent, wanted: impl Fn(Kind) -> bool, now: SystemTime) -> Vec<Self> {
        let mut out = Vec::new();
        match event {
            LockEvent::Acquired {
                lease,
                expired,
                waited,
                ..
            } => {
                if let Some(old) = expired
                    && wanted(Kind::Expired)
                {
                    out.push(Self::of_lease(Kind::Expired, old, now));
                }
                let kind = if *waited && wanted(Kind::GrantedAfterWait) {
                    Some(Kind::GrantedAfterWait)
                } else if wanted(Kind::Acquired) {
                    Some(Kind::Acquired)
                } else {
                    None
                };
                if let Some(kind) = kind {
                    out.push(Self::of_lease(kind, lease, now));
                }
            }
            LockEvent::Waiting {
                principal,
                resource,
                reason,
                holder,
            } if wanted(Kind::Waiting) => {
                let observed_at = rfc3339(now);
                let which = format!("{principal}\0{observed_at}");
                out.push(Self {
                    id: event_id(Kind::Waiting, resource, &which),
                    event: Kind::Waiting.as_str(),
                    resource: resource.clone(),
                    observed_at,
                    principal: principal.clone(),
                    reason: reason.clone(),
                    fence: holder.as_ref().map(|h| h.fence),
                    expires_at: holder.as_ref().map(|h| rfc3339(h.expires_at)),
                    holder: holder.as_ref().map(|h| h.principal.clone()),
                    holder_reason: holder.as_ref().map(|h| h.reason.clone()),
                    reservation: None,
                });
            }
            LockEvent::Renewed { lease, .. } if wanted(Kind::Renewed) => {
                let mut note = Self::of_lease(Kind::Renewed, lease, now);
                // Each renewal of a lease is its own event.
                note.id = event_id(
                    Kind::Renewed,
                    &lease.resource,
                    &format!("{}\0{}", lease.fence, rfc3339(lease.expires_at)),
                );
                out.push(note);
            }
            LockEvent::Released {
                principal,
                resource,
                id,
                was_current: true,
            } if wanted(Kind::Released) => out.push(Self {
                id: event_id(Kind::Released, resource, &id.hash()),
                event: Kind::Released.as_str(),
                resource: resource.to_string(),
                observed_at: rfc3339(now),
                principal: principal.clone(),
                reason: String::new(),
                fence: None,
                expires_at: None,
                holder: None,
                holder_reason: None,
                reservation: None,
            }),
            LockEvent::ForceReleased {
                lease,
                actor,
                reason,
            } if wanted(Kind::ForceReleased) => {
                let mut note = Self::of_lease(Kind::ForceReleased, lease, now);
                note.principal = actor.to_string();
                note.reason = reason.to_string();
                note.holder = Some(lease.principal.clone());
                note.holder_reason = Some(lease.reason.clone());
                out.push(note);
            }
            LockEvent::Reserved { reservation } if wanted(Kind::Reserved) => {
                out.push(Self::of_reservation(Kind::Reserved, reservation, now, None));
            }
            LockEvent::Unreserved {
                actor,
                reservation,
                reason,
            } if wanted(Kind::Unreserved) => out.push(Self::of_reservation(
                Kind::Unreserved,
                reservation,
                now,
                Some((actor, reason)),
            )),
            _ => {}
        }
        out
    }

    fn of_reservation(
        kind: Kind,
        r: &crate::reservations::Reservation,
        now: SystemTime,
        cancelled_by: Option<(&String, &String)>,
    ) -> Self {
        let (principal, reason, holder, holder_reason) = match cancelled_by {
            Some((actor, why)) => (
                actor.clone(),
                why.clone(),
                Some(r.owner.clone()),
                Some(r.reason.clone()),
            ),
            None => (r.owner.clone(), r.reason.clone(), None, None),
        };
        Self {
            id: event_id(kind, &r.resource, &r.id),
            event: kind.as_str(),
            resource: r.resource.clone(),
            observed_at: rfc3339(now),
            principal,
            reason,
            fence: None,
            expires_at: None,
            holder,
            holder_reason,
            reservation: Some(ReservationNote {
                id: r.id.clone(),
                starts_at: rfc3339(r.starts_at),
                ends_at: rfc3339(r.ends_at),
            }),
        }
    }

    /// One line for people (Slack).
    fn text(&self) -> String {
        let mut text = format!("`{}` {}", self.resource, self.event);
        let by = |text: &mut String| {
            text.push_str(&format!(" by {}", self.principal));
            if !self.reason.is_empty() {
                text.push_str(&format!(" ({})", self.reason));
            }
        };
        match self.event {
            "force-released" => {
                by(&mut text);
                if let Some(holder) = &self.holder {
                    text.push_str(&format!(": it was held by {holder}"));
                }
            }
            "expired" => text.push_str(&format!(": held by {} ran out", self.principal)),
            "unreserved" => {
                by(&mut text);
                if let Some(owner) = &self.holder {
                    text.push_str(&format!(": booked by {owner}"));
                }
            }
            "waiting" => {
                by(&mut text);
                if let Some(holder) = &self.holder {
                    text.push_str(&format!(": held by {holder}"));
                }
            }
            _ => by(&mut text),
        }
        if let Some(fence) = self.fence {
            text.push_str(&format!(", fence {fence}"));
        }
        if let Some(r) = &self.reservation {
            text.push_str(&format!(", {} to {}", r.starts_at, r.ends_at));
        }
        text
    }
}

/// A notification ready to post.
struct Message {
    id: String,
    body: Bytes,
}

/// A notifier at work: its settings and its queue.
struct Running {
    notifier: Arc<Notifier>,
    queue: mpsc::Sender<Message>,
    dropped: Option<Counter>,
    waits: Arc<std::sync::Mutex<RecentWaits>>,
}

/// How long a `waiting` notification stands for one principal's waits on
/// one resource: someone retrying a short wait in a loop is announced once
/// a minute, not once a try.
const WAITING_REPEAT: Duration = Duration::from_secs(60);
/// The most (resource, principal) pairs remembered; beyond, the oldest are
/// forgotten (a pair forgotten is announced again).
const WAITING_REMEMBERED: usize = 10_000;

/// The waits announced lately, per (resource, principal).
#[derive(Default)]
struct RecentWaits {
    seen: std::collections::HashMap<(String, String), std::time::Instant>,
}

impl RecentWaits {
    /// Whether a wait of `principal` on `resource` at `now` is news: none
    /// was announced within [`WAITING_REPEAT`].
    fn news(&mut self, resource: &str, principal: &str, now: std::time::Instant) -> bool {
        let key = (resource.to_string(), principal.to_string());
        if let Some(last) = self.seen.get(&key)
            && now.saturating_duration_since(*last) < WAITING_REPEAT
        {
            return false;
        }
        if self.seen.len() >= WAITING_REMEMBERED {
            self.seen
                .retain(|_, at| now.saturating_duration_since(*at) < WAITING_REPEAT);
            if self.seen.len() >= WAITING_REMEMBERED {
                self.seen.clear();
            }
        }
        self.seen.insert(key, now);
        true
    }
}

/// The notifiers in force.
#[derive(Default)]
pub struct Notify {
    running: RwLock<Arc<Vec<Running>>>,
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notify").finish_non_exhaustive()
    }
}

impl Notify {
    /// Puts `notifiers` in force: each one unchanged keeps its queue and
    /// task; the others start anew, and those gone or changed deliver what
    /// they have queued, then stop. Needs a Tokio runtime.
    pub fn set(&self, notifiers: &[Notifier], metrics: Option<&Arc<Metrics>>) {
        let mut running = self
            .running
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = notifiers
            .iter()
            .map(|n| {
                if let Some(same) = running.iter().find(|r| r.notifier.unchanged(n)) {
                    return Running {
                        notifier: same.notifier.clone(),
                        queue: same.queue.clone(),
                        dropped: same.dropped.clone(),
                        waits: same.waits.clone(),
                    };
                }
                let notifier = Arc::new(n.clone());
                let (queue, rx) = mpsc::channel(notifier.queue);
                let counters = metrics.map(|m| Counters::of(m, &notifier.name));
                tokio::spawn(deliver(notifier.clone(), rx, counters.clone()));
                Running {
                    notifier,
                    queue,
                    dropped: counters.map(|c| c.dropped),
                    waits: Arc::default(),
                }
            })
            .collect();
        *running = Arc::new(next);
    }

    /// Queues what `event` means to each notifier; never waits.
    pub fn offer(&self, event: &LockEvent) {
        let running = {
            let guard = self
                .running
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // No notifier (the default): nothing more on the call's path.
            if guard.is_empty() {
                return;
            }
            guard.clone()
        };
        let now = SystemTime::now();
        for r in running.iter() {
            let n = &r.notifier;
            let notes = Notification::of(event, |k| n.events.contains(&k), now);
            for note in notes {
                if let Some(patterns) = &n.patterns
                    && !patterns.is_match(&note.resource)
                {
                    continue;
                }
                if note.event == Kind::Waiting.as_str()
                    && !r
                        .waits
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .news(&note.resource, &note.principal, std::time::Instant::now())
                {
                    continue;
                }
                let message = Message {
                    id: note.id.clone(),
                    body: n.body(&note),
                };
                if r.queue.try_send(message).is_err() {
                    if let Some(dropped) = &r.dropped {
                        dropped.inc();
                    }
                    warn!(
                        notifier = %n.name,
                        event = note.event,
                        resource = %note.resource,
                        "notification dropped: the notifier's queue is full (its receiver is down or slow)"
                    );
                }
            }
        }
    }
}

impl Notifier {
    /// One line for `check-config`: the name, the format, the host (not the
    /// path, often the credential), the events and the resources.
    pub fn describe(&self) -> String {
        let t = &self.target;
        let events: Vec<_> = self.events.iter().map(|k| k.as_str()).collect();
        format!(
            "{}: {} to {}://{}:{}/…, {} on {}{}",
            self.name,
            match self.format {
                Format::Json => "json",
                Format::Slack => "slack",
            },
            if t.https { "https" } else { "http" },
            t.host,
            t.port,
            events.join(", "),
            self.patterns
                .as_ref()
                .map_or_else(|| "every resource".to_string(), |p| p.patterns().join(", ")),
            if self.secret.is_some() {
                ", signed"
            } else {
                ""
            },
        )
    }

    fn body(&self, note: &Notification) -> Bytes {
        let value = match self.format {
            Format::Json => serde_json::to_vec(note),
            Format::Slack => serde_json::to_vec(&serde_json::json!({ "text": note.text() })),
        };
        Bytes::from(value.unwrap_or_default())
    }
}

/// The counters of one notifier.
#[derive(Clone)]
struct Counters {
    delivered: Counter,
    retried: Counter,
    failed: Counter,
    dropped: Counter,
}

impl Counters {
    fn of(metrics: &Metrics, name: &str) -> Self {
        Self {
            delivered: metrics.notifications(name, "delivered"),
            retried: metrics.notifications(name, "retried"),
            failed: metrics.notifications(name, "failed"),
            dropped: metrics.notifications(name, "dropped"),
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Worth another try (network, timeout, 5xx, 408, 429).
    Retry(String),
    /// Refused for good (another status).
    Refused(String),
}

/// The notifier's task: posts its queue, one notification at a time, until
/// every sender is gone and the queue is empty.
async fn deliver(
    notifier: Arc<Notifier>,
    mut rx: mpsc::Receiver<Message>,
    counters: Option<Counters>,
) {
    let count = |pick: fn(&Counters) -> &Counter| {
        if let Some(c) = &counters {
            pick(c).inc();
        }
    };
    while let Some(message) = rx.recv().await {
        let mut pause = FIRST_PAUSE;
        for attempt in 1..=notifier.attempts {
            match post(&notifier, &message).await {
                Attempt::Delivered => {
                    count(|c| &c.delivered);
                    debug!(notifier = %notifier.name, id = %message.id, "notification delivered");
                    break;
                }
                Attempt::Refused(why) => {
                    count(|c| &c.failed);
                    warn!(notifier = %notifier.name, id = %message.id, error = %why, "notification refused by its receiver; not retried");
                    break;
                }
                Attempt::Retry(why) if attempt == notifier.attempts => {
                    count(|c| &c.failed);
                    warn!(notifier = %notifier.name, id = %message.id, attempts = attempt, error = %why, "notification not delivered; given up");
                }
                Attempt::Retry(why) => {
                    count(|c| &c.retried);
                    debug!(notifier = %notifier.name, id = %message.id, attempt, error = %why, "notification not delivered; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LAST_PAUSE);
                }
            }
        }
    }
}

/// One attempt, bounded by the notifier's timeout.
async fn post(notifier: &Notifier, message: &Message) -> Attempt {
    match tokio::time::timeout(notifier.timeout, exchange(notifier, message)).await {
        Err(_) => Attempt::Retry(format!("no answer within {:?}", notifier.timeout)),
        Ok(Err(e)) => Attempt::Retry(e),
        Ok(Ok(status)) if status.is_success() => Attempt::Delivered,
        Ok(Ok(status))
            if status.is_server_error()
                || status == http::StatusCode::REQUEST_TIMEOUT
                || status == http::StatusCode::TOO_MANY_REQUESTS =>
        {
            Attempt::Retry(format!("answered {status}"))
        }
        Ok(Ok(status)) if status.is_redirection() => Attempt::Refused(format!(
            "answered {status}: redirects are not followed; give the final URL"
        )),
        Ok(Ok(status)) => Attempt::Refused(format!("answered {status}")),
    }
}

/// Connects, posts, reads the status; one connection per attempt.
async fn exchange(notifier: &Notifier, message: &Message) -> Result<http::StatusCode, String> {
    let target = &notifier.target;
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connect to {}:{}: {e}", target.host, target.port))?;
    let _ = tcp.set_nodelay(true);
    let authority = if (target.https && target.port == 443) || (!target.https && target.port == 80)
    {
        target.host.clone()
    } else if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let mut request = http::Request::post(target.path.as_str())
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("stormlockd/", env!("CARGO_PKG_VERSION")),
        )
        .header(ID_HEADER, message.id.as_str());
    if let Some(secret) = &notifier.secret {
        request = request.header(SIGNATURE_HEADER, signature(secret, &message.body));
    }
    let request = request
        .body(Full::new(message.body.clone()))
        .map_err(|e| e.to_string())?;
    match &notifier.tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("{}: {e}", target.host))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", target.host))?;
            send(stream, request).await
        }
        None => send(tcp, request).await,
    }
}

async fn send<S>(stream: S, request: http::Request<Full<Bytes>>) -> Result<http::StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        // Only the status counts; the body is never read, so a receiver
        // cannot make the daemon hold a large answer.
        Ok(response.status())
    }
    .await;
    driver.abort();
    result
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseId;

    fn notifier(toml_text: &str) -> Result<Notifier, String> {
        toml::from_str::<Notifier>(toml_text).map_err(|e| e.message().to_string())
    }

    fn lease(fence: u64) -> Lease {
        let now = SystemTime::now();
        Lease {
            resource: "deploy/prod".into(),
            id: LeaseId::generate(),
            principal: "alice".into(),
            reason: "release 42".into(),
            acquired_at: now,
            expires_at: now + Duration::from_secs(60),
            fence,
            ttl: Some(Duration::from_secs(60)),
        }
    }

    #[test]
    fn mistakes_are_refused_with_the_key() {
        let base = "name = \"ops\"\nevents = [\"acquired\"]\n";
        for (extra, expected) in [
            (
                "url = \"ftp://x/\"",
                "url: the scheme must be https:// or http://",
            ),
            ("url = \"https://u:p@x/\"", "url: credentials in the URL"),
            ("url = \"not a url\"", "url: not a URL"),
            (
                "url = \"http://x/\"\nca = \"/nonexistent\"",
                "ca: given for an http:// URL",
            ),
            (
                "url = \"https://x/\"\nca = \"/nonexistent\"",
                "ca: /nonexistent",
            ),
            (
                "url = \"http://x/\"\ntimeout = \"0s\"",
                "timeout: from 1s to 5m",
            ),
            ("url = \"http://x/\"\nqueue = 0", "queue: from 1 to 1000000"),
            (
                "url = \"http://x/\"\nattempts = 0",
                "attempts: from 1 to 100",
            ),
            ("url = \"http://x/\"\nsecret = \"\"", "secret: empty"),
            (
                "url = \"http://x/\"\nformat = \"slack\"\nsecret = \"s\"",
                "Slack messages are not signed",
            ),
            (
                "url = \"http://x/\"\nmatch = [\"\"]",
                "match: a pattern may not be empty",
            ),
        ] {
            let err = notifier(&format!("{base}{extra}")).expect_err(extra);
            assert!(err.contains(expected), "{extra}: {err}");
            assert!(err.starts_with("notify \"ops\": "), "{extra}: {err}");
        }
        let err = notifier("name = \"ops\"\nurl = \"http://x/\"\nevents = []").expect_err("none");
        assert!(err.contains("events: give at least one"), "{err}");
        let err = notifier("name = \"ops\"\nurl = \"http://x/\"\nevents = [\"gone\"]")
            .expect_err("unknown event");
        assert!(err.contains("unknown variant `gone`"), "{err}");
        let err = notifier("name = \"o p\"\nurl = \"http://x/\"\nevents = [\"acquired\"]")
            .expect_err("name");
        assert!(err.contains("name: \"o p\""), "{err}");
    }

    #[test]
    fn a_url_from_the_environment_is_checked_once_expanded() {
        let text = "[[notify]]\nname = \"ops\"\nurl = \"${STORMLOCK_TEST_NOTIFY_URL_UNSET}\"\nevents = [\"acquired\"]\n";
        // Unset: refused for the variable, not taken for a malformed URL.
        let err = crate::config::Config::parse(text, "test")
            .expect_err("an unset variable")
            .to_string();
        assert!(err.contains("STORMLOCK_TEST_NOTIFY_URL_UNSET"), "{err}");
        assert!(!err.contains("not a URL"), "{err}");
        // Set (PATH is always set, and is no URL): refused as a URL.
        let text = text.replace("STORMLOCK_TEST_NOTIFY_URL_UNSET", "PATH");
        let err = crate::config::Config::parse(&text, "test")
            .expect_err("PATH is no URL")
            .to_string();
        assert!(err.contains("notify \"ops\": url:"), "{err}");
    }

    #[test]
    fn defaults_and_targets() {
        let n = notifier(
            "name = \"ops\"\nurl = \"https://hooks.example.com/T/B?x=1\"\nevents = [\"expired\"]",
        )
        .expect("valid");
        assert_eq!(n.format, Format::Json);
        assert_eq!(n.timeout, DEFAULT_TIMEOUT);
        assert_eq!(n.queue, DEFAULT_QUEUE);
        assert_eq!(n.attempts, DEFAULT_ATTEMPTS);
        assert!(n.tls.is_some());
        assert_eq!(n.target.host, "hooks.example.com");
        assert_eq!(n.target.port, 443);
        assert_eq!(n.target.path, "/T/B?x=1");
        let n = notifier("name = \"ops\"\nurl = \"http://[::1]:8080\"\nevents = [\"expired\"]")
            .expect("valid");
        assert!(n.tls.is_none());
        assert_eq!((n.target.host.as_str(), n.target.port), ("::1", 8080));
        assert_eq!(n.target.path, "/");
        // The URL (a Slack webhook's credential) and the secret stay out of
        // logs.
        let n = notifier(
            "name = \"ops\"\nurl = \"http://x/T0KEN\"\nsecret = \"s3cret\"\nevents = [\"expired\"]",
        )
        .expect("valid");
        let shown = format!("{n:?}");
        assert!(
            !shown.contains("T0KEN") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert_eq!(
            n.describe(),
            "ops: json to http://x:80/…, expired on every resource, signed"
        );
    }

    #[test]
    fn an_acquisition_that_noticed_an_expiry_makes_both_and_a_wait_is_told_apart() {
        let old = lease(6);
        let new = lease(7);
        let event = LockEvent::Acquired {
            lease: Arc::new(new.clone()),
            ttl: Duration::from_secs(60),
            expired: Some(old.clone()),
            waited: true,
        };
        let now = SystemTime::now();
        let all = Notification::of(&event, |_| true, now);
        let kinds: Vec<_> = all.iter().map(|n| n.event).collect();
        assert_eq!(kinds, ["expired", "granted-after-wait"]);
        assert_eq!(all[0].fence, Some(6));
        assert_eq!(all[1].fence, Some(7));
        // Only "acquired" chosen: a grant after a wait is still a grant.
        let acquired = Notification::of(&event, |k| k == Kind::Acquired, now);
        assert_eq!(acquired.len(), 1);
        assert_eq!(acquired[0].event, "acquired");
        // The id names the event, not the delivery: the same for the same
        // event seen again, different for another kind or fence.
        let again = Notification::of(&event, |_| true, now + Duration::from_secs(5));
        assert_eq!(again[1].id, all[1].id);
        assert_ne!(all[0].id, all[1].id);
        assert_ne!(acquired[0].id, all[1].id);
        // A grant without a wait is only "acquired".
        let at_once = LockEvent::Acquired {
            lease: Arc::new(new),
            ttl: Duration::from_secs(60),
            expired: None,
            waited: false,
        };
        let kinds: Vec<_> = Notification::of(&at_once, |_| true, now)
            .iter()
            .map(|n| n.event)
            .collect();
        assert_eq!(kinds, ["acquired"]);
        // Nothing chosen: nothing made.
        assert!(Notification::of(&event, |_| false, now).is_empty());
    }

    #[test]
    fn lease_ids_never_leave_in_a_notification() {
        let lease = lease(3);
        let secret = lease.id.expose().to_string();
        let events = [
            LockEvent::Released {
                principal: "alice".into(),
                resource: "deploy/prod".into(),
                id: lease.id.clone(),
                was_current: true,
            },
            LockEvent::ForceReleased {
                lease: Arc::new(lease.clone()),
                actor: "oncall".into(),
                reason: "incident 7".into(),
            },
            LockEvent::Waiting {
                principal: "bob".into(),
                resource: "deploy/prod".into(),
                reason: "hotfix".into(),
                holder: Some(lease.clone()),
            },
        ];
        let n = notifier("name = \"ops\"\nurl = \"http://x/\"\nevents = [\"released\", \"force-released\", \"waiting\"]")
            .expect("valid");
        for event in &events {
            let notes = Notification::of(event, |_| true, SystemTime::now());
            assert_eq!(notes.len(), 1, "{event:?}");
            let body = String::from_utf8(n.body(&notes[0]).to_vec()).expect("utf-8");
            assert!(!body.contains(&secret), "{body}");
        }
        // A release that found the lease gone changed nothing: no event.
        let stale = LockEvent::Released {
            principal: "alice".into(),
            resource: "deploy/prod".into(),
            id: lease.id.clone(),
            was_current: false,
        };
        assert!(Notification::of(&stale, |_| true, SystemTime::now()).is_empty());
        let forced = Notification::of(&events[1], |_| true, SystemTime::now());
        assert_eq!(forced[0].principal, "oncall");
        assert_eq!(forced[0].reason, "incident 7");
        assert_eq!(forced[0].holder.as_deref(), Some("alice"));
        assert_eq!(
            forced[0].text(),
            "`deploy/prod` force-released by oncall (incident 7): it was held by alice, fence 3"
        );
        let waiting = Notification::of(&events[2], |_| true, SystemTime::now());
        assert_eq!(
            waiting[0].text(),
            "`deploy/prod` waiting by bob (hotfix): held by alice, fence 3"
        );
    }

    #[test]
    fn a_reload_keeps_only_a_notifier_whose_settings_did_not_change() {
        let base = "name = \"ops\"\nurl = \"http://x/\"\nevents = [\"expired\"]\n";
        let n = notifier(base).expect("valid");
        assert!(n.unchanged(&notifier(base).expect("valid")));
        for changed in [
            base.replace("http://x/", "http://y/"),
            base.replace("expired", "acquired"),
            format!("{base}secret = \"s\""),
            format!("{base}match = [\"a/**\"]"),
            format!("{base}timeout = \"2s\""),
            format!("{base}queue = 5"),
            format!("{base}attempts = 2"),
            format!("{base}format = \"slack\""),
            base.replace("\"ops\"", "\"ops2\""),
        ] {
            assert!(
                !n.unchanged(&notifier(&changed).expect("valid")),
                "{changed}"
            );
        }
        // With a CA file (which may have changed under its path): anew.
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).expect("write");
        let with_ca = format!(
            "name = \"ops\"\nurl = \"https://x/\"\nevents = [\"expired\"]\nca = {:?}\n",
            ca.display().to_string()
        );
        let n = notifier(&with_ca).expect("valid");
        assert!(!n.unchanged(&notifier(&with_ca).expect("valid")));
    }

    #[test]
    fn a_wait_retried_in_a_loop_is_announced_once_a_minute() {
        let mut recent = RecentWaits::default();
        let t0 = std::time::Instant::now();
        assert!(recent.news("db", "bob", t0));
        assert!(!recent.news("db", "bob", t0 + Duration::from_secs(1)));
        assert!(!recent.news("db", "bob", t0 + WAITING_REPEAT - Duration::from_millis(1)));
        // Someone else, or another resource, is news.
        assert!(recent.news("db", "carol", t0 + Duration::from_secs(1)));
        assert!(recent.news("cache", "bob", t0 + Duration::from_secs(1)));
        // A minute on, again.
        assert!(recent.news("db", "bob", t0 + WAITING_REPEAT));
        // Bounded: past the limit the old pairs go, the fresh ones stay.
        let mut full = RecentWaits::default();
        for i in 0..WAITING_REMEMBERED {
            assert!(full.news(&format!("r{i}"), "p", t0));
        }
        let later = t0 + WAITING_REPEAT;
        assert!(full.news("fresh", "p", later));
        assert_eq!(full.seen.len(), 1);
        assert!(!full.news("fresh", "p", later));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
