//! `acquire`: take a lease and print its id; on contention, say who holds it.
//! Also the waiting part that `exec` shares: a spinner with the holder and
//! our place in line, and Ctrl-C that cancels the wait.

use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use nix::sys::signal::Signal;
use rand::Rng;
use stormlock_api::pb;
use tokio::sync::watch;
use unicode_width::UnicodeWidthStr;

use super::{Session, note, proto_duration, write_out};
use crate::args::AcquireArgs;
use crate::client::Client;
use crate::error::{CliError, CliResult, Exit};
use crate::output::{HIDDEN, format_timestamp, since, system_time, truncate};
use crate::signals::Interrupts;
use crate::spinner::Spinner;

/// Runs `acquire`.
pub async fn run(mut session: Session, args: AcquireArgs) -> CliResult {
    let mut interrupts = Interrupts::new()?;
    let attempt = Attempt {
        resource: args.resource,
        ttl: args.ttl,
        reason: args.reason,
        wait: args.wait.unwrap_or_default(),
    };
    match take(&mut session, attempt, &mut interrupts).await? {
        Taken::Granted { lease, .. } => {
            deliver(&mut session, lease).await?;
            Ok(Exit::Success)
        }
        Taken::Held(holder) => {
            report_held(&holder);
            Ok(Exit::Held)
        }
        Taken::Interrupted(signal) => Ok(Exit::signalled(signal as i32)),
    }
}

/// Prints the lease id of `lease`, or, when it cannot be written (a closed
/// pipe, a full disk), releases the lease: a lease whose id nobody got
/// could only be waited out, blocking everyone until its TTL ends.
///
/// The failure is exit 70, never 0 (the caller holds nothing) and never 1,
/// 2 or 4, which would say something about the resource.
async fn deliver(session: &mut Session, lease: pb::Lease) -> CliResult<()> {
    let Err(e) = write_out(&format!("{}\n", lease.lease_id)) else {
        return Ok(());
    };
    let resource = lease.resource.clone();
    let released = match session.client().await {
        Ok(client) => client
            .release(pb::ReleaseRequest {
                resource: lease.resource,
                lease_id: lease.lease_id,
            })
            .await
            .map(drop),
        Err(err) => Err(err),
    };
    let outcome = match released {
        Ok(()) => format!("released the lease on {resource}: nothing is held"),
        Err(err) => format!(
            "could not release the lease on {resource} ({err}): it stays held until it expires \
             at {}",
            format_timestamp(lease.expires_at.as_ref()).unwrap_or_else(|| HIDDEN.into())
        ),
    };
    Err(CliError::new(
        Exit::Failure,
        anyhow::anyhow!("cannot write the lease id to standard output ({e}); {outcome}"),
    ))
}

/// What to ask for.
pub struct Attempt {
    /// The resource to lock.
    pub resource: String,
    /// The TTL asked for; `None`: the config file's, else the daemon's default.
    pub ttl: Option<Duration>,
    /// Why, for anyone refused.
    pub reason: Option<String>,
    /// How long to wait for a held resource; zero: try once.
    pub wait: Duration,
}

/// How an acquisition ended.
pub enum Taken {
    /// We hold the lease (its id is never empty).
    Granted {
        /// The lease.
        lease: pb::Lease,
        /// When the request left, before the daemon started the lease's
        /// clock: counting the TTL from here errs on the safe side.
        sent: Instant,
        /// The window that cut the lease short (it ends when that starts).
        cut_short_by: Option<pb::Window>,
    },
    /// Someone else holds the resource, or a window refuses us.
    Held(Holder),
    /// A signal came first; the call was cancelled, so the daemon grants
    /// nothing to us (and releases what it granted in the race).
    Interrupted(Signal),
}

/// What keeps a resource from us.
pub enum Holder {
    /// A lease (who, if the daemon said).
    Lease(Option<pb::Lease>),
    /// A window in force (a freeze): which, why, until when.
    Window(pb::Window),
}

/// Acquires, waiting if asked, with a spinner when stderr is a terminal; a
/// SIGINT, SIGTERM or SIGHUP cancels the call, connecting included.
pub async fn take(
    session: &mut Session,
    attempt: Attempt,
    interrupts: &mut Interrupts,
) -> CliResult<Taken> {
    let mut call = Box::pin(try_take(session, attempt));
    let (signal, late) = tokio::select! {
        taken = &mut call => return taken,
        signal = interrupts.recv() => (signal, (&mut call).now_or_never()),
    };
    drop(call);
    // A grant that arrived together with the signal is given back rather
    // than left to expire. (One still on the wire is the daemon's to clean
    // up: the call is cancelled.)
    if let Some(Ok(Taken::Granted { lease, .. })) = late {
        let client = session.client().await?;
        let _ = client
            .release(pb::ReleaseRequest {
                resource: lease.resource,
                lease_id: lease.lease_id,
            })
            .await;
    }
    Ok(Taken::Interrupted(signal))
}

async fn try_take(session: &mut Session, attempt: Attempt) -> CliResult<Taken> {
    let ttl = attempt.ttl.or(session.settings.ttl);
    let wait = attempt.wait;
    // Names this call in line, so that Current can tell us our place.
    let wait_id = if wait.is_zero() {
        String::new()
    } else {
        format!("{:032x}", rand::rng().random::<u128>())
    };
    let mut request = pb::AcquireRequest {
        resource: attempt.resource.clone(),
        ttl: ttl.map(|t| proto_duration("TTL", t)).transpose()?,
        wait: None,
        reason: attempt.reason.unwrap_or_default(),
        principal: String::new(),
        wait_id,
    };
    // A daemon that cannot be reached at all is a wrong address or a
    // daemon that is not running: said at once, not waited out.
    session.client().await?;
    let sent = Instant::now();
    let deadline = sent + wait;
    let mut outage = Outage::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        request.wait = (!left.is_zero())
            .then(|| proto_duration("wait", left))
            .transpose()?;
        match acquire_once(session, request.clone(), left).await {
            // The daemon went away while we waited (a restart, a rolling
            // update, a replica lost): wait on through another connection,
            // to the same address, for what is left of the wait. A call
            // that was not waiting (no --wait) reports the failure at once.
            Err(e) if e.exit == Exit::Unreachable && !wait.is_zero() && !left.is_zero() => {
                session.disconnect();
                let pause = outage.next(&e, left);
                tokio::time::sleep(pause).await;
            }
            Err(e) if outage.seen() => {
                return Err(e.context(format!(
                    "gave up waiting for {} after losing stormlockd",
                    attempt.resource
                )));
            }
            Err(e) => return Err(e),
            Ok(response) if !response.acquired => {
                return Ok(Taken::Held(match response.window {
                    Some(window) => Holder::Window(window),
                    None => Holder::Lease(response.holder),
                }));
            }
            Ok(response) => {
                if let (Some(window), Some(lease)) = (&response.cut_short_by, &response.lease) {
                    note(&format!(
                        "stormlock: the lease on {} ends at {}, when {} starts",
                        lease.resource,
                        format_timestamp(lease.expires_at.as_ref())
                            .unwrap_or_else(|| HIDDEN.into()),
                        describe_window_name(window)
                    ));
                }
                let cut_short_by = response.cut_short_by;
                return match response.lease.filter(|lease| !lease.lease_id.is_empty()) {
                    Some(lease) => Ok(Taken::Granted {
                        lease,
                        sent,
                        cut_short_by,
                    }),
                    None => Err(CliError::new(
                        Exit::Failure,
                        anyhow::anyhow!("stormlockd granted the lease but sent no lease id"),
                    )),
                };
            }
        }
    }
}

/// One Acquire call that waits at most `wait`, with a spinner when it
/// waits and stderr is a terminal.
async fn acquire_once(
    session: &mut Session,
    mut request: pb::AcquireRequest,
    wait: Duration,
) -> CliResult<pb::AcquireResponse> {
    let principal = session.settings.principal.clone();
    let client = session.client().await?;
    request.principal = client.declared_principal(&principal);
    if !wait.is_zero() && std::io::stderr().is_terminal() {
        let resource = request.resource.clone();
        let wait_id = request.wait_id.clone();
        let call = client.acquire(request, wait);
        with_spinner(client, &resource, wait_id, call).await
    } else {
        client.acquire(request, wait).await
    }
}

/// A wait that lost its daemon: says so once, then paces the reconnection
/// attempts (a quarter of a second, doubling up to two seconds, never past
/// the end of the wait).
#[derive(Default)]
struct Outage {
    /// The pause before the next attempt; zero before the first outage.
    pause: Duration,
}

impl Outage {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(2);

    /// Whether the daemon was lost at least once.
    fn seen(&self) -> bool {
        !self.pause.is_zero()
    }

    /// The pause before reconnecting after `error`, with `left` of the wait.
    fn next(&mut self, error: &CliError, left: Duration) -> Duration {
        if self.seen() {
            self.pause = (self.pause * 2).min(Self::MAX);
        } else {
            note(&format!(
                "stormlock: {error}; still waiting, reconnecting for the {} left",
                stormlock_api::duration::format_duration(Duration::from_secs(
                    left.as_secs().max(1)
                ))
            ));
            self.pause = Self::FIRST;
        }
        self.pause.min(left)
    }
}

/// Python stormlock's "Lock held" message, then who holds it (or which
/// window refuses us).
pub fn report_held(holder: &Holder) {
    note("Lock held");
    match holder {
        Holder::Lease(Some(holder)) => note(&describe_holder(holder, SystemTime::now())),
        Holder::Lease(None) => note("Held lock not found, try again?"),
        Holder::Window(window) => note(&describe_window(window, SystemTime::now())),
    }
}

/// `freeze "weekend"`, `reservation 1a2b3c4d of alice`.
pub fn describe_window_name(window: &pb::Window) -> String {
    match pb::window::Kind::try_from(window.kind) {
        Ok(pb::window::Kind::Freeze) => format!("freeze {:?}", window.name),
        Ok(pb::window::Kind::Reservation) => {
            format!("reservation {} of {}", window.name, window.owner)
        }
        _ => format!("window {:?}", window.name),
    }
}

/// A window, for people: as a holder is described.
pub fn describe_window(window: &pb::Window, now: SystemTime) -> String {
    describe(
        format!("Window: {}", describe_window_name(window)),
        &window.reason,
        window.starts_at.as_ref(),
        window.ends_at.as_ref(),
        now,
    )
}

/// Who holds a lease, for people; never its id.
pub fn describe_holder(holder: &pb::Lease, now: SystemTime) -> String {
    describe(
        format!("Principal: {}", holder.principal),
        &holder.reason,
        holder.acquired_at.as_ref(),
        holder.expires_at.as_ref(),
        now,
    )
}

/// What keeps a resource from us, for people: `first`, its reason, since
/// when and until when.
fn describe(
    first: String,
    reason: &str,
    from: Option<&prost_types::Timestamp>,
    until: Option<&prost_types::Timestamp>,
    now: SystemTime,
) -> String {
    let now = Some(now);
    let mut lines = vec![first];
    if !reason.is_empty() {
        lines.push(format!("Reason: {reason}"));
    }
    lines.push(format!(
        "Since: {} ({} ago)",
        format_timestamp(from).unwrap_or_else(|| HIDDEN.into()),
        since(system_time(from), now)
    ));
    lines.push(format!(
        "Until: {} (in {})",
        format_timestamp(until).unwrap_or_else(|| HIDDEN.into()),
        since(now, system_time(until))
    ));
    lines.join("\n")
}

/// Shows a spinner on stderr while the daemon makes us wait: the holder,
/// its reason, how long it has held the lock, our wait so far and our place
/// in line, from a Current call about once a second on the same connection.
async fn with_spinner<T>(
    client: &Client,
    resource: &str,
    wait_id: String,
    call: impl Future<Output = CliResult<T>>,
) -> CliResult<T> {
    // Quick answers (the resource was free) should not flash a spinner.
    const DELAY: Duration = Duration::from_millis(300);
    const POLL: Duration = Duration::from_secs(1);
    let (tx, rx) = watch::channel(None);
    let poller = {
        let client = client.clone();
        let request = pb::CurrentRequest {
            resource: resource.to_string(),
            wait_id,
        };
        tokio::spawn(async move {
            loop {
                // A failed poll leaves the last answer up; the wait itself
                // reports real failures.
                if let Ok(current) = client.current(request.clone()).await
                    && tx.send(Some(current)).is_err()
                {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };
    tokio::pin!(call);
    let mut spinner = Spinner::new();
    let mut tick = tokio::time::interval(Spinner::TICK);
    let result = loop {
        tokio::select! {
            result = &mut call => break result,
            _ = tick.tick() => {
                if spinner.elapsed() >= DELAY {
                    let status = rx.borrow();
                    let label = WaitLabel::new(
                        resource,
                        spinner.elapsed(),
                        status.as_ref(),
                        SystemTime::now(),
                    );
                    spinner.draw(&label.fit(spinner.label_width()));
                }
            }
        }
    };
    poller.abort();
    spinner.clear();
    result
}

/// The spinner's text, in parts, so that a narrow terminal shortens the
/// least telling ones: `waiting for R (12s), 2nd of 3 in line; held by
/// bob@ops for 5m: db migration`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WaitLabel {
    /// `waiting for R`.
    resource: String,
    /// How long we have waited so far.
    waited: String,
    /// `, 2nd of 3 in line`, `, next in line`, or nothing.
    place: String,
    /// Who holds the lock, once known.
    holder: Option<String>,
    /// For how long they have held it.
    held_for: String,
    /// Why they hold it (may be empty).
    reason: String,
}

impl WaitLabel {
    fn new(
        resource: &str,
        waited: Duration,
        status: Option<&pb::CurrentResponse>,
        now: SystemTime,
    ) -> Self {
        let waited =
            stormlock_api::duration::format_duration(Duration::from_secs(waited.as_secs()));
        let place = match status.map_or(0, |s| s.queue_position) {
            0 => String::new(),
            1 => ", next in line".to_string(),
            n => format!(
                ", {} of {} in line",
                ordinal(n),
                status.map_or(n, |s| s.waiting.max(n))
            ),
        };
        let lease = status.and_then(|s| s.lease.as_ref());
        Self {
            resource: resource.to_string(),
            waited,
            place,
            holder: lease.map(|l| l.principal.clone()),
            held_for: lease
                .map(|l| since(system_time(l.acquired_at.as_ref()), Some(now)))
                .unwrap_or_default(),
            reason: lease.map(|l| l.reason.clone()).unwrap_or_default(),
        }
    }

    /// The label in full.
    fn text(&self) -> String {
        self.render(&Parts {
            resource: &self.resource,
            waited: true,
            place: true,
            held_for: true,
            reason: &self.reason,
        })
    }

    fn render(&self, parts: &Parts<'_>) -> String {
        let mut label = format!("waiting for {}", parts.resource);
        if parts.waited {
            label.push_str(&format!(" ({})", self.waited));
        }
        if parts.place {
            label.push_str(&self.place);
        }
        if let Some(holder) = &self.holder {
            label.push_str(&format!("; held by {holder}"));
            if parts.held_for && !self.held_for.is_empty() {
                label.push_str(&format!(" for {}", self.held_for));
            }
            if !parts.reason.is_empty() {
                label.push_str(&format!(": {}", parts.reason));
            }
        }
        label
    }

    /// The label within `width` columns: the reason is cut first (with
    /// "…"), then goes, then how long the lock has been held and our place
    /// in line go, then the resource's name is cut (with "…") and the time
    /// waited goes, then "waiting for"; the holder's name stays. Only a
    /// terminal too narrow even for that cuts the end.
    fn fit(&self, width: usize) -> String {
        /// The least of a reason worth showing.
        const READABLE: usize = 10;
        let full = self.text();
        if full.width() <= width {
            return full;
        }
        // Some of the reason, giving up how long the lock has been held and
        // our place in line for it if need be; then none of it.
        let shorter = [(true, true), (true, false), (false, false)];
        let mut parts = Parts {
            resource: &self.resource,
            waited: true,
            place: true,
            held_for: true,
            reason: "",
        };
        for (place, held_for) in shorter {
            let without = Parts {
                place,
                held_for,
                ..parts
            };
            // ": " and a readable part of the reason.
            let room = width.saturating_sub(self.render(&without).width() + 2);
            if !self.reason.is_empty() && room >= READABLE {
                let reason = truncate(&self.reason, room);
                return self.render(&Parts {
                    reason: &reason,
                    ..without
                });
            }
        }
        for (place, held_for) in shorter {
            parts = Parts {
                place,
                held_for,
                ..parts
            };
            let label = self.render(&parts);
            if label.width() <= width {
                return label;
            }
        }
        for waited in [true, false] {
            let bare = self.render(&Parts {
                resource: "",
                waited,
                ..parts
            });
            let room = width.saturating_sub(bare.width());
            if room >= 4 {
                let resource = truncate(&self.resource, room);
                return self.render(&Parts {
                    resource: &resource,
                    waited,
                    ..parts
                });
            }
        }
        // The resource and who holds it, in as few words as that takes.
        if let Some(holder) = &self.holder {
            let tail = format!(": held by {holder}");
            let room = width.saturating_sub(tail.width());
            if room >= 4 {
                return format!("{}{tail}", truncate(&self.resource, room));
            }
        }
        truncate(&self.render(&parts), width)
    }
}

/// Which parts of a [`WaitLabel`] to show.
#[derive(Clone, Copy)]
struct Parts<'a> {
    resource: &'a str,
    waited: bool,
    place: bool,
    held_for: bool,
    reason: &'a str,
}

/// 1st, 2nd, 3rd, 4th … 11th, 12th, 13th … 21st.
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_description_never_shows_the_id() {
        let holder = pb::Lease {
            resource: "r".into(),
            lease_id: "0123456789abcdef0123456789abcdef".into(),
            principal: "bob@ops".into(),
            reason: "db migration".into(),
            acquired_at: Some(prost_types::Timestamp {
                seconds: 1_795_699_726,
                nanos: 0,
            }),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_795_699_726 + 3600,
                nanos: 0,
            }),
            fence: 7,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_699_726 + 600);
        let text = describe_holder(&holder, now);
        assert_eq!(
            text,
            "Principal: bob@ops\nReason: db migration\n\
             Since: 2026-11-26T13:28:46.000+00:00 (10m ago)\n\
             Until: 2026-11-26T14:28:46.000+00:00 (in 50m)"
        );
        assert!(!text.contains(&holder.lease_id));
    }

    #[test]
    fn spinner_label_shows_place_holder_and_reason() {
        let lease = pb::Lease {
            principal: "bob@ops".into(),
            reason: "db migration".into(),
            acquired_at: Some(prost_types::Timestamp {
                seconds: 1000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + 300);
        let status = |position, waiting| pb::CurrentResponse {
            lease: Some(lease.clone()),
            waiting,
            queue_position: position,
            ..Default::default()
        };
        let waited = Duration::from_millis(12_400);
        let label =
            |status: Option<&pb::CurrentResponse>| WaitLabel::new("db", waited, status, now).text();
        let (second, next, unknown) = (status(2, 3), status(1, 1), status(0, 0));
        assert_eq!(
            label(Some(&second)),
            "waiting for db (12s), 2nd of 3 in line; held by bob@ops for 5m: db migration"
        );
        assert_eq!(
            label(Some(&next)),
            "waiting for db (12s), next in line; held by bob@ops for 5m: db migration"
        );
        // A daemon that does not know our place, and no answer yet.
        assert_eq!(
            label(Some(&unknown)),
            "waiting for db (12s); held by bob@ops for 5m: db migration"
        );
        assert_eq!(label(None), "waiting for db (12s)");
    }

    #[test]
    fn a_narrow_spinner_cuts_with_an_ellipsis_and_keeps_the_holder() {
        let lease = pb::Lease {
            principal: "alice@ops-laptop".into(),
            reason: "terraform apply for the quarterly network change".into(),
            acquired_at: Some(prost_types::Timestamp {
                seconds: 1000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let status = pb::CurrentResponse {
            lease: Some(lease),
            waiting: 3,
            queue_position: 2,
            ..Default::default()
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + 300);
        let label = WaitLabel::new(
            "infra/network/prod",
            Duration::from_secs(72),
            Some(&status),
            now,
        );
        let full = label.text();
        assert_eq!(full.width(), 139, "{full}");
        assert_eq!(label.fit(200), full);
        for width in [90, 77, 60, 45, 40, 32, 20] {
            let fitted = label.fit(width);
            assert!(fitted.width() <= width, "{width}: {fitted}");
            if width >= 32 {
                assert!(
                    fitted.contains("held by alice@ops-laptop"),
                    "{width}: {fitted}"
                );
            }
        }
        // The reason is cut first, and the holder always stays.
        for (width, fitted) in [
            (
                90,
                "waiting for infra/network/prod (1m12s); held by alice@ops-laptop: terraform \
                 apply for the…",
            ),
            (
                77,
                "waiting for infra/network/prod (1m12s); held by alice@ops-laptop: terraform …",
            ),
            (
                60,
                "waiting for infra/network… (1m12s); held by alice@ops-laptop",
            ),
            (45, "waiting for infra/…; held by alice@ops-laptop"),
            (40, "infra/network…: held by alice@ops-laptop"),
            (32, "infra…: held by alice@ops-laptop"),
        ] {
            assert_eq!(label.fit(width), fitted, "{width}");
        }
    }

    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .into_iter()
            .map(ordinal)
            .collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }
}
