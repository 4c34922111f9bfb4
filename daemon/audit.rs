//! The audit log: one JSON line per acquire, contention, renew, release,
//! force-release, expiry noticed and denial. Lease ids appear only as a short
//! hash, never in full. On a daemon that authenticates nobody, every line
//! says that its principals were only declared (`"principal_declared":
//! true`), as does a refused caller's declared name everywhere.
//!
//! Requests never wait for the sink: lines go through a bounded queue, and
//! when a stalled sink has let it fill, further lines are dropped, counted
//! (`stormlock_audit_lines_dropped`) and reported in the log.

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::AuditConfig;
use crate::duration::format_duration;
use crate::events::LockEvent;
use crate::lease::{Lease, LeaseId};

/// One audit line's fields; `None` fields are left out of the line.
#[derive(Debug, Default, Serialize)]
struct Record<'a> {
    /// When, RFC 3339 in UTC.
    time: &'a str,
    /// Always `audit`: tells these lines from the daemon's JSON logs when
    /// both go to one stream (stderr by default).
    #[serde(rename = "type")]
    kind: &'static str,
    /// What happened: `acquire`, `contention`, `frozen`, `renew`, `renew_refused`,
    /// `release`, `force_release`, `expired`, `denied`, `unauthenticated`.
    event: &'static str,
    /// Who did it.
    principal: &'a str,
    /// On what.
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
    /// The lease's fence.
    #[serde(skip_serializing_if = "Option::is_none")]
    fence: Option<u64>,
    /// Short hash of the lease id.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<String>,
    /// The holder, for contention and force-release.
    #[serde(skip_serializing_if = "Option::is_none")]
    holder: Option<&'a str>,
    /// The reason given.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    /// The refused action, for denials.
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
    /// Free detail (TTL, whether a release found its lease…).
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Cow<'a, str>>,
    /// The principals of this line were declared by the caller, not proven
    /// by a certificate or a token.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    principal_declared: bool,
}

/// "reservation 1a2b3c4d from … until …".
fn describe_reservation(r: &crate::reservations::Reservation) -> String {
    format!(
        "reservation {} from {} until {}",
        r.id,
        crate::windows::utc(r.starts_at),
        crate::windows::utc(r.ends_at)
    )
}

impl<'a> Record<'a> {
    /// A line about `lease`.
    fn lease(event: &'static str, principal: &'a str, lease: &'a Lease) -> Self {
        Self {
            event,
            principal,
            resource: Some(&lease.resource),
            fence: Some(lease.fence),
            lease: Some(lease.id.hash()),
            ..Self::default()
        }
    }

    /// A line about a lease id on `resource`.
    fn id(event: &'static str, principal: &'a str, resource: &'a str, id: &LeaseId) -> Self {
        Self {
            event,
            principal,
            resource: Some(resource),
            lease: Some(id.hash()),
            ..Self::default()
        }
    }

    /// The lines of `event` (an acquisition that noticed an expiry has two).
    fn of(event: &'a LockEvent) -> impl Iterator<Item = Record<'a>> {
        let (first, second) = match event {
            // Not an outcome: the wait's outcome (a grant or a refusal) is
            // recorded when it comes.
            LockEvent::Waiting { .. } => return None.into_iter().chain(None),
            LockEvent::Acquired {
                lease,
                ttl,
                expired,
                ..
            } => {
                let acquired = Record {
                    reason: Some(&lease.reason),
                    detail: Some(Cow::Owned(format!("ttl {}", format_duration(*ttl)))),
                    ..Record::lease("acquire", &lease.principal, lease)
                };
                let expired = expired.as_ref().map(|old| Record {
                    holder: Some(&old.principal),
                    detail: Some(Cow::Owned(format!("taken over by fence {}", lease.fence))),
                    ..Record::lease("expired", &old.principal, old)
                });
                match expired {
                    Some(expired) => (expired, Some(acquired)),
                    None => (acquired, None),
                }
            }
            LockEvent::Contended {
                principal,
                reason,
                holder,
            } => (
                Record {
                    holder: Some(&holder.principal),
                    reason: Some(reason),
                    ..Record::lease("contention", principal, holder)
                },
                None,
            ),
            LockEvent::Frozen {
                principal,
                resource,
                reason,
                window,
            } => (
                Record {
                    event: "frozen",
                    principal,
                    resource: Some(resource),
                    reason: Some(reason),
                    detail: Some(Cow::Owned(window.describe())),
                    ..Record::default()
                },
                None,
            ),
            LockEvent::Renewed {
                principal,
                lease,
                ttl,
            } => (
                Record {
                    detail: Some(Cow::Owned(format!("ttl {}", format_duration(*ttl)))),
                    ..Record::lease("renew", principal, lease)
                },
                None,
            ),
            LockEvent::RenewRefused {
                principal,
                resource,
                id,
                detail,
            } => (
                Record {
                    detail: Some(Cow::Borrowed(detail)),
                    ..Record::id("renew_refused", principal, resource, id)
                },
                None,
            ),
            LockEvent::Released {
                principal,
                resource,
                id,
                was_current,
            } => (
                Record {
                    detail: Some(Cow::Borrowed(if *was_current {
                        "released"
                    } else {
                        "was not current"
                    })),
                    ..Record::id("release", principal, resource, id)
                },
                None,
            ),
            LockEvent::ForceReleased {
                lease,
                actor,
                reason,
            } => (
                Record {
                    holder: Some(&lease.principal),
                    reason: Some(reason),
                    ..Record::lease("force_release", actor, lease)
                },
                None,
            ),
            LockEvent::Reserved { reservation } => (
                Record {
                    event: "reserve",
                    principal: &reservation.owner,
                    resource: Some(&reservation.resource),
                    reason: Some(&reservation.reason),
                    detail: Some(Cow::Owned(describe_reservation(reservation))),
                    ..Record::default()
                },
                None,
            ),
            LockEvent::Unreserved {
                actor,
                reservation,
                reason,
            } => (
                Record {
                    event: "unreserve",
                    principal: actor,
                    resource: Some(&reservation.resource),
                    holder: Some(&reservation.owner),
                    reason: Some(reason),
                    detail: Some(Cow::Owned(describe_reservation(reservation))),
                    ..Record::default()
                },
                None,
            ),
            LockEvent::Denied {
                principal,
                action,
                resource,
            } => (
                Record {
                    event: "denied",
                    principal,
                    resource: Some(resource),
                    action: Some(action.as_str()),
                    ..Record::default()
                },
                None,
            ),
            LockEvent::Unauthenticated { declared, detail } => (
                Record {
                    event: "unauthenticated",
                    principal: declared,
                    detail: Some(Cow::Borrowed(detail)),
                    principal_declared: true,
                    ..Record::default()
                },
                None,
            ),
        };
        Some(first).into_iter().chain(second)
    }
}

/// Bytes reserved for an encoded line: a lease's line with a resource and
/// principal of a few dozen characters and a short reason takes about 250.
const LINE_CAPACITY: usize = 384;

/// How many encoded lines may wait for the writer; past it, lines are
/// dropped and counted rather than making requests wait for a stalled sink.
const QUEUE_LINES: usize = 8192;

/// How long [`Audit::flush`] waits for a stalled sink before giving up (at
/// shutdown, a sink that never drains must not hold the daemon forever).
const FLUSH_PATIENCE: Duration = Duration::from_secs(5);

/// How long the writer waits, once a line has arrived, for others to join
/// it before writing. While it waits, requests hand over their lines without
/// waking it: a quiet daemon writes each line within this time, a busy one
/// writes once per interval instead of once per line.
const LINGER: Duration = Duration::from_millis(2);

enum Message {
    Line(Vec<u8>),
    Flush(mpsc::SyncSender<()>),
    /// Every line queued before goes to the old sink, every line after to
    /// this one (log rotation).
    Reopen(Box<dyn Write + Send>, mpsc::SyncSender<()>),
}

/// Where audit lines go.
///
/// Requests encode their line and hand it to a writer thread, which gives
/// others [`LINGER`] to join the first, writes whatever has queued and then
/// flushes once: one `write` (and one thread wake-up) per batch rather than
/// per line, and never a file write (nor a wait for one) on a request's path.
pub struct Audit {
    /// `None`: discard.
    queue: Option<mpsc::SyncSender<Message>>,
    /// The file, reopened by [`Audit::reopen`]; `None`: standard error or
    /// another sink.
    path: Option<std::path::PathBuf>,
    /// Every principal is only declared (a daemon that authenticates nobody).
    declared: bool,
    /// Lines dropped because the queue was full.
    dropped: Counter,
    /// Dropping now (reported once per burst).
    dropping: AtomicBool,
}

impl Audit {
    /// Opens the sink of `config`: a file (appended to, created 0600) or
    /// standard error, and starts its writer thread.
    pub fn open(config: &AuditConfig) -> std::io::Result<Self> {
        Self::open_counting(config, Counter::default())
    }

    /// [`Audit::open`], counting the lines written in `written`.
    pub fn open_counting(config: &AuditConfig, written: Counter) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match &config.path {
            Some(path) => Box::new(open_file(path)?),
            None => Box::new(std::io::stderr()),
        };
        Ok(Self {
            path: config.path.clone(),
            ..Self::to_sink_queued(sink, QUEUE_LINES, written)?
        })
    }

    /// Writes to `sink` from a writer thread.
    pub fn to_sink(sink: Box<dyn Write + Send>) -> std::io::Result<Self> {
        Self::to_sink_queued(sink, QUEUE_LINES, Counter::default())
    }

    fn to_sink_queued(
        sink: Box<dyn Write + Send>,
        lines: usize,
        written: Counter,
    ) -> std::io::Result<Self> {
        let (queue, received) = mpsc::sync_channel(lines);
        std::thread::Builder::new()
            .name("stormlock-audit".into())
            .spawn(move || write_lines(sink, received, &written))?;
        Ok(Self {
            queue: Some(queue),
            ..Self::discard()
        })
    }

    /// An audit log that discards everything (benchmarks, unit tests).
    pub fn discard() -> Self {
        Self {
            queue: None,
            path: None,
            declared: false,
            dropped: Counter::default(),
            dropping: AtomicBool::new(false),
        }
    }

    /// Marks every line's principals as declared: for a daemon that
    /// authenticates nobody.
    pub fn principals_declared(mut self, declared: bool) -> Self {
        self.declared = declared;
        self
    }

    /// Counts dropped lines in `counter` (the metrics' own).
    pub fn count_dropped_in(mut self, counter: Counter) -> Self {
        self.dropped = counter;
        self
    }

    /// Queues one line for the writer, never waiting for it: when the queue
    /// is full (a stalled sink), the line is dropped and counted. A failing
    /// sink is reported through the log and does not fail the request.
    pub fn record(&self, event: &LockEvent) {
        let Some(queue) = &self.queue else {
            return;
        };
        let time = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        for mut record in Record::of(event) {
            record.time = &time;
            record.kind = "audit";
            record.principal_declared |= self.declared;
            // Most lines fit, so the buffer is allocated once.
            let mut line = Vec::with_capacity(LINE_CAPACITY);
            if let Err(e) = serde_json::to_writer(&mut line, &record) {
                tracing::error!(error = %e, "cannot encode an audit event");
                return;
            }
            line.push(b'\n');
            match queue.try_send(Message::Line(line)) {
                Ok(()) => {
                    if self.dropping.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            dropped_so_far = self.dropped.get(),
                            "the audit log keeps up again"
                        );
                    }
                }
                Err(mpsc::TrySendError::Full(_)) => {
                    self.dropped.inc();
                    if !self.dropping.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            queued = QUEUE_LINES,
                            "the audit log's sink is not keeping up: dropping audit lines \
                             (counted in stormlock_audit_lines_dropped) until it does"
                        );
                    }
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    self.dropped.inc();
                    tracing::error!("the audit writer has stopped; an audit line was lost");
                }
            }
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Blocks until every line recorded before the call is written and
    /// flushed to the sink (at shutdown; tests), or [`FLUSH_PATIENCE`] has
    /// passed with the sink stalled.
    pub fn flush(&self) {
        self.in_turn(Message::Flush);
    }

    /// Opens the audit file again by its name and writes every line recorded
    /// from now on there, each line to exactly one of the two files: for log
    /// rotation (`mv audit.log audit.log.1`, then SIGHUP). Returns once the
    /// lines recorded before are written to the old file (bounded by
    /// [`FLUSH_PATIENCE`]); `Ok(false)` when the sink is no file. A file
    /// that cannot be opened leaves the old one in use.
    pub fn reopen(&self) -> std::io::Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let file = open_file(path)?;
        self.in_turn(|done| Message::Reopen(Box::new(file), done));
        Ok(true)
    }

    /// Queues the message `make` builds behind every line recorded so far
    /// and waits until the writer has acted on it.
    fn in_turn(&self, make: impl FnOnce(mpsc::SyncSender<()>) -> Message) {
        let Some(queue) = &self.queue else {
            return;
        };
        let (done, wait) = mpsc::sync_channel(1);
        let deadline = Instant::now() + FLUSH_PATIENCE;
        let mut message = make(done);
        loop {
            match queue.try_send(message) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    tracing::error!("the audit log's sink is stalled; not all lines were written");
                    return;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if wait.recv_timeout(left).is_err() {
            tracing::error!("the audit log's sink is stalled; not all lines were written");
        }
    }
}

/// The audit file at `path`, appended to, created readable by its owner only.
fn open_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The writer thread: waits for a line, lingers, writes what has queued,
/// flushes, repeats; ends when the [`Audit`] is dropped, after writing
/// everything queued.
fn write_lines(sink: Box<dyn Write + Send>, queue: mpsc::Receiver<Message>, count: &Counter) {
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    let mut flushed = Vec::new();
    let mut failing = false;
    while let Ok(first) = queue.recv() {
        std::thread::sleep(LINGER);
        let mut message = Some(first);
        let mut written = Ok(());
        // Lines in the buffer, counted once they reach the sink.
        let mut lines = 0;
        while let Some(m) = message {
            match m {
                Message::Line(line) => {
                    if written.is_ok() {
                        written = out.write_all(&line);
                        lines += 1;
                    }
                }
                Message::Flush(done) => flushed.push(done),
                Message::Reopen(sink, done) => {
                    // The old file gets everything queued before, whole.
                    if let Err(e) = written.and_then(|()| out.flush()) {
                        tracing::error!(error = %e, "cannot write the audit log before reopening it");
                    } else {
                        count.inc_by(lines);
                    }
                    lines = 0;
                    written = Ok(());
                    out = BufWriter::with_capacity(64 * 1024, sink);
                    flushed.push(done);
                }
            }
            message = queue.try_recv().ok();
        }
        let written = written.and_then(|()| out.flush());
        if written.is_ok() {
            count.inc_by(lines);
        }
        match written {
            // Reported once per outage, not once per line.
            Err(e) if !failing => {
                tracing::error!(error = %e, "cannot write the audit log");
                failing = true;
            }
            Err(_) => {}
            Ok(()) if failing => {
                tracing::info!("the audit log is writable again");
                failing = false;
            }
            Ok(()) => {}
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A sink whose contents the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            String::from_utf8(bytes)
                .expect("UTF-8")
                .lines()
                .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
                .collect()
        }
    }

    fn lease(n: u64) -> Lease {
        let now = std::time::SystemTime::now();
        Lease {
            resource: "db/main".to_string(),
            id: LeaseId::generate(),
            principal: "alice".to_string(),
            reason: "deploy".to_string(),
            acquired_at: now,
            expires_at: now + Duration::from_secs(60),
            fence: n,
            ttl: Some(Duration::from_secs(60)),
        }
    }

    fn event(n: u64) -> LockEvent {
        LockEvent::Acquired {
            lease: Arc::new(lease(n)),
            ttl: Duration::from_secs(60),
            expired: None,
            waited: false,
        }
    }

    /// Rotation: the file renamed, then reopened while lines keep coming
    /// from other threads; every line is in exactly one of the two files,
    /// whole, and counted as written once.
    #[test]
    fn reopen_moves_to_a_new_file_without_losing_or_repeating_a_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let written = Counter::default();
        let config = AuditConfig {
            path: Some(path.clone()),
        };
        let audit = Arc::new(Audit::open_counting(&config, written.clone()).expect("open"));
        let recorders: Vec<_> = (0..4)
            .map(|t| {
                let audit = audit.clone();
                std::thread::spawn(move || {
                    for n in 0..500 {
                        audit.record(&event(t * 1000 + n));
                    }
                })
            })
            .collect();
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        assert_eq!(audit.reopen().ok(), Some(true));
        for r in recorders {
            r.join().expect("recorder");
        }
        audit.flush();
        let fences = |file: &std::path::Path| -> Vec<u64> {
            std::fs::read_to_string(file)
                .expect("audit file")
                .lines()
                .map(|l| {
                    let line: serde_json::Value = serde_json::from_str(l).expect("whole line");
                    line["fence"].as_u64().expect("fence")
                })
                .collect()
        };
        let (old, new) = (fences(&rotated), fences(&path));
        assert!(!new.is_empty(), "lines after the reopen go to the new file");
        let mut all: Vec<u64> = old.iter().chain(&new).copied().collect();
        all.sort_unstable();
        let expected: Vec<u64> = (0..4)
            .flat_map(|t| (0..500).map(move |n| t * 1000 + n))
            .collect();
        assert_eq!(all, expected, "each line once");
        assert_eq!(written.get(), 2000);
        assert_eq!(audit.dropped(), 0);
        // Standard error has nothing to reopen.
        assert_eq!(
            Audit::open(&AuditConfig { path: None })
                .expect("stderr")
                .reopen()
                .ok(),
            Some(false)
        );
    }

    #[test]
    fn a_noticed_expiry_comes_first_and_no_line_holds_a_lease_id() {
        let sink = Shared::default();
        let audit = Audit::to_sink(Box::new(sink.clone())).expect("writer thread");
        let old = Lease {
            principal: "bob".to_string(),
            ..lease(6)
        };
        let new = lease(7);
        let ids = [old.id.expose().to_string(), new.id.expose().to_string()];
        audit.record(&LockEvent::Acquired {
            lease: Arc::new(new),
            ttl: Duration::from_secs(90),
            expired: Some(old),
            waited: true,
        });
        audit.flush();
        let lines = sink.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["event"], "expired");
        assert_eq!(lines[0]["principal"], "bob");
        assert_eq!(lines[0]["fence"], 6);
        assert_eq!(lines[0]["detail"], "taken over by fence 7");
        assert_eq!(lines[1]["event"], "acquire");
        assert_eq!(lines[1]["principal"], "alice");
        assert_eq!(lines[1]["reason"], "deploy");
        assert_eq!(lines[1]["detail"], "ttl 1m30s");
        let text = serde_json::to_string(&lines).expect("json");
        for id in ids {
            assert!(!text.contains(&id), "a full lease id in {text}");
        }
    }

    #[test]
    fn flush_writes_every_line_recorded_before_it_in_order() {
        let sink = Shared::default();
        let audit = Audit::to_sink(Box::new(sink.clone())).expect("writer thread");
        for n in 0..20_000 {
            audit.record(&event(n));
        }
        audit.flush();
        let lines = sink.lines();
        assert_eq!(lines.len(), 20_000);
        for (n, line) in lines.iter().enumerate() {
            assert_eq!(line["fence"], n as u64);
            assert_eq!(line["event"], "acquire");
            assert_eq!(line["resource"], "db/main");
            assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')));
            assert_eq!(line["type"], "audit", "told apart from log lines");
            assert!(line.get("holder").is_none(), "absent fields are left out");
        }
    }

    #[test]
    fn records_from_many_threads_are_whole_lines() {
        let sink = Shared::default();
        let audit = Arc::new(Audit::to_sink(Box::new(sink.clone())).expect("writer thread"));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let audit = audit.clone();
                std::thread::spawn(move || {
                    for n in 0..1_000 {
                        audit.record(&event(t * 1_000 + n));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        audit.flush();
        let mut fences: Vec<u64> = sink
            .lines()
            .iter()
            .map(|l| l["fence"].as_u64().expect("fence"))
            .collect();
        fences.sort_unstable();
        assert_eq!(fences, (0..8_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_failing_sink_does_not_block_or_panic() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk gone"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::Error::other("disk gone"))
            }
        }
        let audit = Audit::to_sink(Box::new(Broken)).expect("writer thread");
        for n in 0..100_000 {
            audit.record(&event(n));
        }
        audit.flush();
    }

    #[test]
    fn lines_queued_during_a_write_go_out_in_one_write() {
        use std::sync::mpsc::{Receiver, Sender, channel};
        /// Counts writes; the first one reports that it started, then waits
        /// for the test's go-ahead.
        struct Gated {
            writes: Arc<std::sync::atomic::AtomicUsize>,
            started: Option<Sender<()>>,
            go: Receiver<()>,
        }
        impl Write for Gated {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(started) = self.started.take() {
                    let _ = started.send(());
                    let _ = self.go.recv();
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (started_tx, started) = channel();
        let (go, go_rx) = channel();
        let audit = Audit::to_sink(Box::new(Gated {
            writes: writes.clone(),
            started: Some(started_tx),
            go: go_rx,
        }))
        .expect("writer thread");
        audit.record(&event(0));
        started.recv().expect("the first write starts");
        // The writer is busy: these queue up behind it.
        for n in 1..=300 {
            audit.record(&event(n));
        }
        go.send(()).expect("writer waiting");
        audit.flush();
        assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A sink that says when a write starts, then blocks until told to go on.
    struct Stalled {
        entered: mpsc::Sender<()>,
        go: mpsc::Receiver<()>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.go.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_drops_and_counts_lines_instead_of_blocking() {
        let (entered, writing) = mpsc::channel();
        let (go, wait) = mpsc::channel();
        let audit = Audit::to_sink_queued(
            Box::new(Stalled { entered, go: wait }),
            4,
            Counter::default(),
        )
        .expect("writer thread");
        audit.record(&event(0));
        writing.recv().expect("the writer is in the sink");
        // The writer is stuck: four lines fit in the queue, the rest are
        // dropped, and `record` never waits.
        for n in 1..=100 {
            audit.record(&event(n));
        }
        assert_eq!(audit.dropped(), 96);
        drop(go);
        audit.flush();
        audit.record(&event(101));
        assert_eq!(audit.dropped(), 96, "nothing dropped once it keeps up");
    }

    #[test]
    fn declared_principals_are_marked() {
        let sink = Shared::default();
        let audit = Audit::to_sink(Box::new(sink.clone()))
            .expect("writer thread")
            .principals_declared(true);
        audit.record(&event(1));
        audit.flush();
        let authenticating = Audit::to_sink(Box::new(sink.clone())).expect("writer thread");
        authenticating.record(&event(2));
        authenticating.record(&LockEvent::Unauthenticated {
            declared: "ops".to_string(),
            detail: "no client certificate or bearer token".to_string(),
        });
        authenticating.flush();
        let lines = sink.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["principal_declared"], true);
        assert!(lines[1].get("principal_declared").is_none(), "{}", lines[1]);
        assert_eq!(lines[2]["event"], "unauthenticated");
        assert_eq!(lines[2]["principal_declared"], true);
    }

    #[test]
    fn discard_records_nothing_and_flush_returns() {
        let audit = Audit::discard();
        audit.record(&event(1));
        audit.flush();
    }
}
