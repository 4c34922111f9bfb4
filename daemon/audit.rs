//! The audit log: one JSON line per acquire, contention, renew, release,
//! force-release, expiry noticed and denial. Lease ids appear only as a short
//! hash, never in full.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::{Arc, mpsc};
use std::time::Duration;

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

/// How many encoded lines may wait for the writer before `record` waits for
/// it in turn (a stalled disk then slows requests rather than losing lines or
/// growing without bound).
const QUEUE_LINES: usize = 8192;

/// How long the writer waits, once a line has arrived, for others to join
/// it before writing. While it waits, requests hand over their lines without
/// waking it: a quiet daemon writes each line within this time, a busy one
/// writes once per interval instead of once per line.
const LINGER: Duration = Duration::from_millis(2);

enum Message {
    Line(Vec<u8>),
    Flush(mpsc::SyncSender<()>),
}

/// Where audit lines go.
///
/// Requests encode their line and hand it to a writer thread, which gives
/// others [`LINGER`] to join the first, writes whatever has queued and then
/// flushes once: one `write` (and one thread wake-up) per batch rather than
/// per line, and never a file write on a request's path.
pub struct Audit {
    /// `None`: discard.
    queue: Option<mpsc::SyncSender<Message>>,
    /// Counts acquisitions, contentions, renewals and force-releases: the
    /// audit events are recorded at exactly those points.
    metrics: Option<Arc<Metrics>>,
}

impl Audit {
    /// Opens the sink of `config`: a file (appended to, created 0600) or
    /// standard error, and starts its writer thread.
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
        Self::to_sink(sink)
    }

    /// Writes to `sink` from a writer thread.
    pub fn to_sink(sink: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("stormlock-audit".into())
            .spawn(move || write_lines(sink, lines))?;
        Ok(Self {
            queue: Some(queue),
            metrics: None,
        })
    }

    /// An audit log that discards everything (benchmarks, unit tests).
    pub fn discard() -> Self {
        Self {
            queue: None,
            metrics: None,
        }
    }

    /// Also counts the lock events in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Queues one line for the writer. A failing sink is reported through
    /// the log and does not fail the request.
    pub fn record(&self, event: &Event<'_>) {
        if let Some(metrics) = &self.metrics {
            metrics.lock_event(event.event);
        }
        let Some(queue) = &self.queue else {
            return;
        };
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
        if queue.send(Message::Line(line)).is_err() {
            tracing::error!("the audit writer has stopped; an audit line was lost");
        }
    }

    /// Blocks until every line recorded before the call is written and
    /// flushed to the sink (at shutdown; tests).
    pub fn flush(&self) {
        let Some(queue) = &self.queue else {
            return;
        };
        let (done, wait) = mpsc::sync_channel(1);
        if queue.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

/// The writer thread: waits for a line, lingers, writes what has queued,
/// flushes, repeats; ends when the [`Audit`] is dropped, after writing
/// everything queued.
fn write_lines(sink: Box<dyn Write + Send>, queue: mpsc::Receiver<Message>) {
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    let mut flushed = Vec::new();
    let mut failing = false;
    while let Ok(first) = queue.recv() {
        std::thread::sleep(LINGER);
        let mut message = Some(first);
        let mut written = Ok(());
        while let Some(m) = message {
            match m {
                Message::Line(line) => {
                    if written.is_ok() {
                        written = out.write_all(&line);
                    }
                }
                Message::Flush(done) => flushed.push(done),
            }
            message = queue.try_recv().ok();
        }
        let written = written.and_then(|()| out.flush());
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

    fn event(n: u64) -> Event<'static> {
        Event {
            event: "acquire",
            principal: "alice",
            resource: Some("db/main"),
            fence: Some(n),
            ..Event::default()
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

    #[test]
    fn discard_records_nothing_and_flush_returns() {
        let audit = Audit::discard();
        audit.record(&event(1));
        audit.flush();
    }
}
