//! `exec`: run a command while holding a lock.
//!
//! The lease is taken first (waiting if asked); the command then runs in a
//! process group of its own with `STORMLOCK_RESOURCE`, `STORMLOCK_LEASE_ID`
//! and `STORMLOCK_FENCE` in its environment, and without `STORMLOCK_TOKEN`,
//! while the lease is renewed every third of its TTL. SIGINT, SIGTERM and
//! SIGHUP are passed on to the group.
//! When the lease is lost the whole group gets SIGTERM, then SIGKILL after the
//! grace period, and exec exits with 123. The lease is released on every way
//! out.
//!
//! Its own outcomes use the statuses 123 to 127 (`crate::error`), so that a
//! command's own status, passed on unchanged, never reads as one of them:
//! `terraform plan -detailed-exitcode` exits 2 for "changes present", which
//! must not look like "lock held".
//!
//! Its own process group lets exec stop everything the command started. In a
//! terminal, that group must also become the terminal's foreground group,
//! or a command that reads the terminal (`terraform apply` asking for
//! "yes") would be stopped by SIGTTIN; exec hands the terminal back after.
//! When the command is stopped from the terminal (Ctrl-Z), exec stops too,
//! so that the shell, which waits for exec, gets its prompt back.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, raise};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::{Pid, getpgrp, tcgetpgrp, tcsetpgrp};
use stormlock_api::pb;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use super::acquire::{Attempt, Taken, describe_window_name, report_held, take};
use super::{Session, note, proto_duration};
use crate::args::ExecArgs;
use crate::client::Client;
use crate::error::{CliError, CliResult, Exit};
use crate::output::system_time;
use crate::signals::Interrupts;

/// Runs `exec`.
pub async fn run(mut session: Session, args: ExecArgs) -> CliResult {
    let mut interrupts = Interrupts::new()?;
    let ttl = args.ttl.or(session.settings.ttl);
    let attempt = Attempt {
        resource: args.resource.clone(),
        ttl,
        reason: args.reason.clone(),
        wait: args.wait.unwrap_or_default(),
    };
    let (lease, sent, cut_short_by) = match take(&mut session, attempt, &mut interrupts).await? {
        Taken::Granted {
            lease,
            sent,
            cut_short_by,
        } => (lease, sent, cut_short_by),
        Taken::Held(holder) => {
            report_held(&holder);
            return Ok(Exit::ExecHeld);
        }
        Taken::Interrupted(signal) => return Ok(Exit::signalled(signal as i32)),
    };
    let client = session.client().await?.clone();
    let outcome = match Renewal::new(&lease, sent.into(), ttl) {
        Ok(mut renewal) => {
            renewal.cut_short_by = cut_short_by.as_ref().map(describe_window_name);
            supervise(&client, renewal, &args, &mut interrupts).await
        }
        Err(err) => Err(err),
    };
    release(&client, &lease).await;
    outcome
}

/// Runs the command and watches over it until it ends or the lease is lost.
async fn supervise(
    client: &Client,
    renewal: Renewal,
    args: &ExecArgs,
    interrupts: &mut Interrupts,
) -> CliResult {
    let lease = &renewal.lease;
    let Some((program, rest)) = args.command.split_first() else {
        return Err(CliError::usage("exec needs a command after --"));
    };
    let mut child = match spawn(program, rest, lease) {
        Ok(child) => child,
        Err(err) => {
            // As a shell: 127 when there is no such command, 126 otherwise.
            let (exit, what) = match err.kind() {
                std::io::ErrorKind::NotFound => (Exit::CommandNotFound, "command not found"),
                _ => (Exit::CannotRun, "cannot run the command"),
            };
            note(&format!(
                "stormlock: {}: {what}: {err}",
                program.to_string_lossy()
            ));
            return Ok(exit);
        }
    };
    let Some(pgid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
    else {
        // Only a child already reaped has no id, and nothing reaped it yet.
        return Err(CliError::new(
            Exit::Failure,
            anyhow::anyhow!("the command started but has no process id"),
        ));
    };
    let foreground = Foreground::give(pgid);
    let renewing = async {
        // Renewals notice a lost lease at the latest; a watch, where the
        // daemon has one, at once.
        tokio::select! {
            lost = renewal.run(client) => lost,
            lost = watch_for_loss(client, lease) => lost,
        }
    };
    tokio::pin!(renewing);
    // Told when the command stops (Ctrl-Z), to suspend along with it.
    let mut stops = match &foreground {
        Some(_) => Some(signal(SignalKind::child()).map_err(|e| {
            CliError::new(Exit::Failure, e).context("cannot install a SIGCHLD handler")
        })?),
        None => None,
    };
    let outcome = loop {
        tokio::select! {
            Some(()) = async { stops.as_mut()?.recv().await } => {
                if let (Some(foreground), Ok(WaitStatus::Stopped(..))) = (
                    &foreground,
                    waitid(Id::Pid(pgid), WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG),
                ) {
                    foreground.suspend();
                }
            }
            status = child.wait() => break match status {
                Ok(status) => Ok(exit_of(status)),
                Err(e) => Err(CliError::new(Exit::Failure, e)
                    .context("cannot wait for the command")),
            },
            signal = interrupts.recv() => {
                // Not fatal: a group that is already gone has nothing to stop.
                let _ = killpg(pgid, signal);
                if signal != Signal::SIGINT {
                    // As a shell does on hang-up: a stopped command could act
                    // on neither until continued.
                    let _ = killpg(pgid, Signal::SIGCONT);
                }
            }
            lost = &mut renewing => {
                note(&format!(
                    "stormlock: lost the lock on {}: {lost}; stopping the command",
                    lease.resource
                ));
                stop_group(&mut child, pgid, args.grace).await;
                break Ok(Exit::LeaseLost);
            }
        }
    };
    drop(foreground);
    outcome
}

fn spawn(program: &OsString, rest: &[OsString], lease: &pb::Lease) -> std::io::Result<Child> {
    Command::new(program)
        .args(rest)
        .env("STORMLOCK_RESOURCE", &lease.resource)
        .env("STORMLOCK_LEASE_ID", &lease.lease_id)
        .env("STORMLOCK_FENCE", lease.fence.to_string())
        // The command gets the lease, not our credentials: nothing it runs
        // (third-party tools, scripts that log their environment) sees the
        // token.
        .env_remove("STORMLOCK_TOKEN")
        // A group of its own, led by the command: killpg reaches everything
        // it starts, and the terminal can be handed to exactly that group.
        .process_group(0)
        .spawn()
}

/// A command's exit status as a shell reports it: its code, or 128+N when
/// signal N killed it.
fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Status(u8::try_from(code & 0xff).unwrap_or(u8::MAX)),
        (None, Some(signal)) => Exit::signalled(signal),
        // Neither exited nor killed: `wait` reports neither stopped nor
        // continued children, so this cannot be; say it is ours, not theirs.
        (None, None) => Exit::ExecFailed,
    }
}

/// SIGTERM to the whole group, SIGKILL to whatever is left of it after
/// `grace`.
async fn stop_group(child: &mut Child, pgid: Pid, grace: Duration) {
    let deadline = Instant::now() + grace;
    let _ = killpg(pgid, Signal::SIGTERM);
    // Stopped members (^Z, SIGTTIN) act on SIGTERM only once continued.
    let _ = killpg(pgid, Signal::SIGCONT);
    let _ = tokio::time::timeout_at(deadline, child.wait()).await;
    // The leader is gone (or out of time); its children may still be
    // finishing up. killpg with no signal only asks whether any is left.
    while Instant::now() < deadline && killpg(pgid, None).is_ok() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if killpg(pgid, None).is_ok() {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    // SIGKILL cannot be refused; reap the leader if it is still there.
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// Gives the lease back, saying so when that fails: the command is over, so
/// the outcome is the command's either way.
async fn release(client: &Client, lease: &pb::Lease) {
    let request = pb::ReleaseRequest {
        resource: lease.resource.clone(),
        lease_id: lease.lease_id.clone(),
    };
    if let Err(err) = client.release(request).await {
        note(&format!(
            "stormlock: could not release the lock on {} ({err}); it expires by itself",
            lease.resource
        ));
    }
}

/// Resolves when the daemon reports the end of `lease`: broken, expired,
/// released with its id, or the resource taken with a newer fence, and
/// `IsHeld` confirms it. A watch event is a hint (it may be stale or
/// reordered); stopping the command is for sure: when `IsHeld` says the
/// lease is still current, or cannot tell, the watch goes on and renewals
/// keep deciding. Never resolves where the daemon cannot watch.
async fn watch_for_loss(client: &Client, lease: &pb::Lease) -> String {
    let request = pb::WatchRequest {
        resource: lease.resource.clone(),
        prefix: String::new(),
    };
    loop {
        match client.watch(request.clone()).await {
            Ok(mut stream) => {
                while let Ok(Some(event)) = stream.message().await {
                    if let Some(lost) = loss(&event, lease.fence)
                        && confirm(client, lease).await == Confirmed::NotHeld
                    {
                        return lost;
                    }
                }
            }
            Err(err) if err.exit == Exit::Unreachable => {}
            // Not served, or not allowed: renewals will do.
            Err(_) => return std::future::pending().await,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What `IsHeld` says of a lease a watch event reported lost.
#[derive(Debug, PartialEq, Eq)]
enum Confirmed {
    Held,
    NotHeld,
    CannotTell,
}

async fn confirm(client: &Client, lease: &pb::Lease) -> Confirmed {
    let asked = client
        .is_held(pb::IsHeldRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await;
    match asked {
        Ok(answer) if answer.held => Confirmed::Held,
        Ok(_) => Confirmed::NotHeld,
        // Force-released: the daemon says so with FAILED_PRECONDITION.
        Err(err) if err.exit == Exit::NotCurrent => Confirmed::NotHeld,
        Err(_) => Confirmed::CannotTell,
    }
}

/// Whether a watch event ends the lease with fence `fence`, and how to say so.
fn loss(event: &pb::WatchResponse, fence: u64) -> Option<String> {
    let lease = event.lease.as_ref()?;
    let kind = pb::EventType::try_from(event.r#type).ok()?;
    match kind {
        pb::EventType::ForceReleased if lease.fence == fence => {
            let mut text = format!("force-released by {}", event.actor);
            if !event.reason.is_empty() {
                text.push_str(&format!(" ({})", event.reason));
            }
            Some(text)
        }
        pb::EventType::Expired if lease.fence == fence => Some("it expired".to_string()),
        pb::EventType::Released if lease.fence == fence => {
            Some("it was released by someone holding its id".to_string())
        }
        pb::EventType::Acquired if lease.fence > fence => Some(format!(
            "{} acquired the resource (fence {})",
            lease.principal, lease.fence
        )),
        _ => None,
    }
}

/// Keeps a lease alive: renews it every third of its TTL, and retries failed
/// renewals until the lease would have expired.
struct Renewal {
    /// The lease being kept.
    lease: pb::Lease,
    /// The TTL sent with every renewal: what acquire asked for (`None`: the
    /// daemon's default, which is also what acquire got).
    ttl: Option<Duration>,
    /// The lease's length, as the daemon granted it.
    length: Duration,
    /// When the lease expires at the latest, on our clock: counted from when
    /// the last successful request left, before the daemon started its clock.
    expires: Instant,
    /// The window the lease was cut short by, as granted: it ends when that
    /// starts (`freeze "weekend"`).
    cut_short_by: Option<String>,
}

impl Renewal {
    /// How often failed renewals are tried again before the lease expires.
    const RETRY: Duration = Duration::from_secs(1);
    /// How long before a window's start a command under a lease it cut
    /// short is stopped.
    const WINDOW_MARGIN: Duration = Duration::from_secs(1);
    /// How long before it stops for a window that is how exec warns on its
    /// terminal (each once; those already past when the lease was cut
    /// short make one warning).
    const WARNINGS: [Duration; 2] = [Duration::from_secs(600), Duration::from_secs(60)];

    fn new(lease: &pb::Lease, sent: Instant, ttl: Option<Duration>) -> CliResult<Self> {
        let acquired = system_time(lease.acquired_at.as_ref());
        let expires = system_time(lease.expires_at.as_ref());
        let length = match (acquired, expires) {
            (Some(a), Some(e)) => e.duration_since(a).ok(),
            _ => None,
        }
        .filter(|length| !length.is_zero())
        .ok_or_else(|| {
            CliError::new(
                Exit::Failure,
                anyhow::anyhow!("stormlockd granted a lease without a valid expiry"),
            )
        })?;
        Ok(Self {
            lease: lease.clone(),
            ttl,
            length,
            expires: sent + length,
            cut_short_by: None,
        })
    }

    /// Renews until the lease is lost, and says why it was.
    async fn run(&self, client: &Client) -> String {
        let mut expires = self.expires;
        let mut cut_short_by = self.cut_short_by.clone();
        let mut last_sent = expires - self.length;
        let mut failure: Option<CliError> = None;
        // How many of WARNINGS were given (or passed).
        let mut warned = 0;
        loop {
            let next = if failure.is_none() {
                last_sent + self.length / 3
            } else {
                Instant::now() + Self::RETRY
            };
            // Renewed up to the start of a window that would refuse us: the
            // command stops just before it starts (the daemon refuses
            // renewals in its last second anyway), with warnings ahead.
            if let (Some(window), None) = (&cut_short_by, &failure) {
                let stop = expires.checked_sub(Self::WINDOW_MARGIN).unwrap_or(expires);
                let warn_at = |i: usize| {
                    Self::WARNINGS
                        .get(i)
                        .map(|ahead| stop.checked_sub(*ahead).unwrap_or(stop))
                };
                let wake = warn_at(warned).map_or(next.min(stop), |w| next.min(stop).min(w));
                tokio::time::sleep_until(wake).await;
                let now = Instant::now();
                if now >= stop {
                    return format!("{window} starts");
                }
                if warn_at(warned).is_some_and(|w| now >= w) {
                    let left = Duration::from_secs((stop - now).as_secs_f64().round() as u64);
                    super::note(&format!(
                        "stormlock exec: {window} starts in {}: the command will be stopped then",
                        stormlock_api::duration::format_duration(left + Self::WINDOW_MARGIN)
                    ));
                    while warn_at(warned).is_some_and(|w| now >= w) {
                        warned += 1;
                    }
                    if now < next {
                        continue;
                    }
                }
            } else {
                tokio::time::sleep_until(next.min(expires)).await;
            }
            let now = Instant::now();
            if now >= expires {
                return match failure {
                    Some(err) => format!("it expired: renewals failed ({err})"),
                    None => "it expired before it could be renewed".to_string(),
                };
            }
            let request = pb::RenewRequest {
                resource: self.lease.resource.clone(),
                lease_id: self.lease.lease_id.clone(),
                ttl: match self.ttl.map(|t| proto_duration("TTL", t)).transpose() {
                    Ok(ttl) => ttl,
                    Err(err) => return err.to_string(),
                },
            };
            // A renewal that answers after the lease expired is no use.
            let budget = client.timeout().min(expires - now);
            match client.renew_within(request, budget).await {
                Ok(response) => {
                    last_sent = now;
                    expires = now + self.length;
                    // Cut short by a window that would refuse us: the lease
                    // ends when it starts, whatever its TTL.
                    cut_short_by = response.cut_short_by.as_ref().map(describe_window_name);
                    if let Some(start) = response
                        .cut_short_by
                        .as_ref()
                        .and_then(|window| system_time(window.starts_at.as_ref()))
                    {
                        let left = start.duration_since(SystemTime::now()).unwrap_or_default();
                        expires = expires.min(now + left);
                    }
                    failure = None;
                }
                Err(CliError {
                    window: Some(window),
                    ..
                }) => {
                    return format!("{} starts", describe_window_name(&window));
                }
                Err(err) if err.exit == Exit::NotCurrent => {
                    return err.eviction().unwrap_or_else(|| {
                        "the lease is not current any more (expired or released)".to_string()
                    });
                }
                // Unreachable daemon or backend, or anything else: the lease
                // may still be ours; try again until it cannot be.
                Err(err) => failure = Some(err),
            }
        }
    }
}

/// The terminal handed to the command's process group; handed back on drop.
struct Foreground {
    /// Our controlling terminal.
    tty: std::fs::File,
    /// The group that had the terminal before (ours).
    previous: Pid,
    /// The command's group.
    command: Pid,
}

impl Foreground {
    /// Makes `pgid` the foreground group of our controlling terminal, if we
    /// have one and are in its foreground (not run with `&`).
    fn give(pgid: Pid) -> Option<Self> {
        // The controlling terminal, whichever of stdin, stdout and stderr
        // (if any) it is: a command reading /dev/tty needs it as well.
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        let previous = tcgetpgrp(&tty).ok()?;
        if previous != getpgrp() {
            return None;
        }
        without_sigttou(|| tcsetpgrp(&tty, pgid)).ok()?;
        // The command may have read the terminal before it was its own and
        // been stopped for it (SIGTTIN); let it go on.
        let _ = killpg(pgid, Signal::SIGCONT);
        Some(Self {
            tty,
            previous,
            command: pgid,
        })
    }

    /// Hands the terminal from the command's group to `to`, unless someone
    /// (the shell, after `bg`) has taken it since.
    fn hand_over(&self, from: Pid, to: Pid) {
        if tcgetpgrp(&self.tty).ok() == Some(from) {
            let _ = without_sigttou(|| tcsetpgrp(&self.tty, to));
        }
    }

    /// The command was stopped (Ctrl-Z): stop too, so that the shell, which
    /// waits for exec, gets the terminal back; once continued in the
    /// foreground (`fg`), give the terminal to the command again, and
    /// continue it. Renewals stop meanwhile: a lease that expires during a
    /// long suspension is lost, as it should be.
    fn suspend(&self) {
        self.hand_over(self.command, self.previous);
        let _ = raise(Signal::SIGTSTP);
        self.hand_over(self.previous, self.command);
        let _ = killpg(self.command, Signal::SIGCONT);
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        self.hand_over(self.command, self.previous);
    }
}

/// Runs `f` with SIGTTOU blocked on this thread: a process outside the
/// terminal's foreground group may only set the foreground group then,
/// instead of being stopped by SIGTTOU.
fn without_sigttou<T>(f: impl FnOnce() -> nix::Result<T>) -> nix::Result<T> {
    let ttou = SigSet::from(Signal::SIGTTOU);
    let previous = ttou.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    let result = f();
    previous.thread_set_mask()?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_like_a_shell() {
        assert_eq!(exit_of(ExitStatus::from_raw(0)), Exit::Status(0));
        assert_eq!(exit_of(ExitStatus::from_raw(7 << 8)), Exit::Status(7));
        // Killed by SIGTERM (15), by SIGKILL (9).
        assert_eq!(exit_of(ExitStatus::from_raw(15)).code(), 143);
        assert_eq!(exit_of(ExitStatus::from_raw(9)).code(), 137);
    }

    #[test]
    fn watch_events_that_end_the_lease() {
        let event = |kind: pb::EventType, fence, actor: &str, why: &str| pb::WatchResponse {
            r#type: kind as i32,
            lease: Some(pb::Lease {
                principal: "bob".into(),
                fence,
                ..Default::default()
            }),
            observed_at: None,
            actor: actor.into(),
            reason: why.into(),
            window: None,
        };
        use pb::EventType::*;
        assert_eq!(
            loss(&event(ForceReleased, 7, "oncall", "incident 7"), 7).as_deref(),
            Some("force-released by oncall (incident 7)")
        );
        assert_eq!(
            loss(&event(Expired, 7, "", ""), 7).as_deref(),
            Some("it expired")
        );
        assert!(loss(&event(Released, 7, "", ""), 7).is_some());
        assert!(loss(&event(Acquired, 8, "", ""), 7).is_some_and(|t| t.contains("bob")));
        // Our own renewals and grant, and events of earlier leases, are not.
        assert_eq!(loss(&event(Renewed, 7, "", ""), 7), None);
        assert_eq!(loss(&event(Acquired, 7, "", ""), 7), None);
        assert_eq!(loss(&event(ForceReleased, 6, "oncall", ""), 7), None);
        assert_eq!(loss(&event(Expired, 6, "", ""), 7), None);
    }

    #[test]
    fn renewal_length_comes_from_the_lease() {
        let lease = |seconds: i64| pb::Lease {
            lease_id: "id".into(),
            acquired_at: Some(prost_types::Timestamp {
                seconds: 1000,
                nanos: 0,
            }),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1000 + seconds,
                nanos: 0,
            }),
            ..Default::default()
        };
        let sent = Instant::now();
        let renewal = Renewal::new(&lease(30), sent, None).map_err(|e| e.to_string());
        assert!(
            matches!(&renewal, Ok(r) if r.length == Duration::from_secs(30)
                && r.expires == sent + Duration::from_secs(30)),
            "{:?}",
            renewal.map(|r| r.length)
        );
        assert!(Renewal::new(&lease(0), sent, None).is_err());
        assert!(Renewal::new(&pb::Lease::default(), sent, None).is_err());
    }
}
