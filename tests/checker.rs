//! The mutual-exclusion checker and the workload that feeds it.
//!
//! Clients spread over one or more daemons repeatedly take a small set of
//! resources, and record each critical section as (resource, fence, start,
//! end) on one monotonic clock (this process's). The checker then flags:
//!
//! - **overlap**: two critical sections of one resource that intersect;
//! - **fence**: a grant whose fence is not strictly greater than the fence of
//!   the grant before it on the same resource;
//! - **lost lease**: a renew or release that found its lease no longer
//!   current although its TTL could not have run out yet;
//! - **outlived**: a critical section that may have outlasted its lease,
//!   which would make an overlap legitimate. A lease granted to a plain try
//!   lasts at least until the Acquire was sent + TTL, and the section must
//!   end before that. A waiting Acquire is granted at an unknown moment
//!   between sending and its answer, so there the section must end within
//!   half the TTL of the answer (the answer's delay being far below that).
//!   The workload keeps critical sections far shorter than the TTL, so this
//!   flags a broken run rather than a broken service.
//!
//! A critical section starts after Acquire returned and ends before Release
//! is sent, so a correct service can never produce an overlap, whatever the
//! network and scheduling delays.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::transport::Channel;

/// One critical section, on the checker's clock.
#[derive(Debug, Clone)]
pub struct Record {
    /// The resource held.
    pub resource: String,
    /// The fence of the lease.
    pub fence: u64,
    /// When the Acquire that granted the lease was sent, if it did not wait
    /// (a waiting Acquire is granted at an unknown later moment).
    pub sent: Option<Duration>,
    /// When the critical section began (after Acquire returned).
    pub start: Duration,
    /// When it ended (before Release was sent).
    pub end: Duration,
    /// The lease's TTL.
    pub ttl: Duration,
    /// Until when the service promised the lease (its latest `expires_at`,
    /// on the checker's clock), when the client went by that promise; the
    /// section then ends by it, and an overlap is the service's fault.
    pub promised: Option<Duration>,
    /// Which client held it (shown in violation messages).
    #[allow(dead_code)]
    pub client: usize,
}

/// Collects critical sections and judges them.
pub struct Checker {
    origin: Instant,
    /// The wall-clock time at `origin`, to place the daemons' timestamps.
    wall_origin: std::time::SystemTime,
    records: Mutex<Vec<Record>>,
    /// Renewals or releases that found their lease gone before its time.
    lost: Mutex<Vec<String>>,
}

impl Checker {
    /// An empty checker whose clock starts now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            wall_origin: std::time::SystemTime::now(),
            records: Mutex::new(Vec::new()),
            lost: Mutex::new(Vec::new()),
        })
    }

    /// The checker's clock.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// A wall-clock time (a lease's `expires_at`) on the checker's clock.
    /// The daemons run on this machine and share its clock.
    pub fn at(&self, t: std::time::SystemTime) -> Duration {
        t.duration_since(self.wall_origin).unwrap_or_default()
    }

    /// Records a critical section.
    pub fn record(&self, record: Record) {
        self.records.lock().expect("checker lock").push(record);
    }

    /// Records a lease found not current while it should have been.
    pub fn lost(&self, what: String) {
        self.lost.lock().expect("checker lock").push(what);
    }

    /// Judges everything recorded so far.
    pub fn verdict(&self) -> Verdict {
        let mut records = self.records.lock().expect("checker lock").clone();
        let mut violations: Vec<String> = self.lost.lock().expect("checker lock").clone();
        records.sort_by(|a, b| a.resource.cmp(&b.resource).then(a.start.cmp(&b.start)));
        let mut resources = 0;
        let mut gaps = Vec::new();
        for group in records.chunk_by(|a, b| a.resource == b.resource) {
            resources += 1;
            // The section that ends last among those seen so far.
            let mut latest: Option<&Record> = None;
            for (i, record) in group.iter().enumerate() {
                if let Some(prev) = latest
                    && record.start > prev.end
                {
                    gaps.push((prev.end, record.start));
                }
                let guaranteed = match (record.promised, record.sent) {
                    (Some(promised), _) => promised,
                    (None, Some(sent)) => sent + record.ttl,
                    (None, None) => record.start + record.ttl / 2,
                };
                if record.end > guaranteed {
                    violations.push(format!("outlived its lease: {record:?}"));
                }
                if let Some(prev) = latest
                    && record.start < prev.end
                {
                    violations.push(format!("overlap: {prev:?} and {record:?}"));
                }
                if i > 0 && record.fence <= group[i - 1].fence {
                    violations.push(format!(
                        "fence did not increase: {:?} then {record:?}",
                        group[i - 1]
                    ));
                }
                if latest.is_none_or(|l| record.end > l.end) {
                    latest = Some(record);
                }
            }
        }
        Verdict {
            acquisitions: records.len(),
            resources,
            violations,
            gaps,
        }
    }
}

/// What the checker found.
#[derive(Debug)]
pub struct Verdict {
    /// Critical sections recorded.
    pub acquisitions: usize,
    /// Distinct resources among them.
    pub resources: usize,
    /// Everything that broke mutual exclusion or fencing (empty to pass).
    pub violations: Vec<String>,
    /// Intervals during which a resource was held by nobody, on the
    /// checker's clock: (end of one section, start of the next).
    pub gaps: Vec<(Duration, Duration)>,
}

impl Verdict {
    /// Fails the test on any violation, showing the first few.
    pub fn assert_clean(&self, label: &str) {
        assert!(
            self.violations.is_empty(),
            "{label}: {} violations in {} acquisitions, first ones:\n{}",
            self.violations.len(),
            self.acquisitions,
            self.violations
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The shape of a workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Resource names are `{prefix}{n}`.
    pub prefix: String,
    /// How many resources the clients fight over.
    pub resources: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Critical sections to complete in total.
    pub acquisitions: usize,
    /// TTL of every lease: far longer than a critical section.
    pub ttl: Duration,
    /// How long an Acquire may wait.
    pub wait: Duration,
    /// Share of the critical sections whose client polls with plain tries
    /// instead of waiting in line.
    pub polling: f64,
    /// Bound on the whole run: past it the clients stop and the test fails.
    pub deadline: Duration,
}

impl Workload {
    /// The suite's default: `STORMLOCK_EXCLUSION_ACQUISITIONS` (default
    /// 2,000) critical sections by 16 clients over 4 resources.
    pub fn standard(prefix: String) -> Self {
        let acquisitions = std::env::var("STORMLOCK_EXCLUSION_ACQUISITIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000);
        Self {
            prefix,
            resources: 4,
            clients: 16,
            acquisitions,
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(10),
            polling: 0.25,
            // Long soaks scale their bound with their size.
            deadline: Duration::from_secs(150).max(Duration::from_millis(acquisitions as u64 * 60)),
        }
    }
}

/// What the clients did besides the critical sections.
#[derive(Debug, Default)]
pub struct Counters {
    /// Critical sections claimed (stops the clients at the target).
    claimed: AtomicUsize,
    /// Critical sections completed.
    pub done: AtomicUsize,
    /// Acquires answered "held" (contention, including waits that ran out).
    pub refused: AtomicUsize,
    /// Calls that failed (a daemon or the backend unreachable) and were
    /// retried through another daemon.
    pub errors: AtomicUsize,
    /// Renewals done inside critical sections.
    pub renewals: AtomicUsize,
    /// Releases answered "not current" after an earlier attempt failed in
    /// transit: that attempt may have released the lease already (its
    /// daemon died before answering), so this is not a lost lease.
    pub ambiguous_releases: AtomicUsize,
}

/// The outcome of [`run`].
pub struct Outcome {
    /// The checker's judgement.
    pub verdict: Verdict,
    /// What the clients did.
    pub counters: Arc<Counters>,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Outcome {
    /// One line for logs and RELIABILITY.md.
    pub fn summary(&self, label: &str) -> String {
        format!(
            "exclusion {label}: {} acquisitions over {} resources, {} renewals, {} refusals, \
             {} retried errors, {} ambiguous releases, {} violations, {:.1}s",
            self.verdict.acquisitions,
            self.verdict.resources,
            self.counters.renewals.load(Ordering::Relaxed),
            self.counters.refused.load(Ordering::Relaxed),
            self.counters.errors.load(Ordering::Relaxed),
            self.counters.ambiguous_releases.load(Ordering::Relaxed),
            self.verdict.violations.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    })
}

/// Runs `workload` with clients spread over `daemons` (one client handle per
/// daemon) and judges it. Counters are shared so that a fault test can watch
/// progress while the run goes on.
pub async fn run(
    workload: &Workload,
    daemons: Vec<LockServiceClient<Channel>>,
    counters: Arc<Counters>,
) -> Outcome {
    assert!(!daemons.is_empty());
    let checker = Checker::new();
    let started = Instant::now();
    let stop_at = started + workload.deadline;
    let tasks: Vec<_> = (0..workload.clients)
        .map(|client| {
            let daemons = daemons.clone();
            let checker = checker.clone();
            let counters = counters.clone();
            let workload = workload.clone();
            tokio::spawn(async move {
                client_loop(client, &workload, daemons, &checker, &counters, stop_at).await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task panicked");
    }
    let elapsed = started.elapsed();
    let verdict = checker.verdict();
    assert!(
        verdict.acquisitions >= workload.acquisitions,
        "only {} of {} acquisitions within {:?} ({} retried errors)",
        verdict.acquisitions,
        workload.acquisitions,
        workload.deadline,
        counters.errors.load(Ordering::Relaxed)
    );
    Outcome {
        verdict,
        counters,
        elapsed,
    }
}

/// A client: claim a critical section, get the lock (waiting, or trying
/// again), hold it briefly (sometimes renewing), release it; calls go to a
/// daemon picked at random, and move to another one when a call fails.
async fn client_loop(
    client: usize,
    workload: &Workload,
    daemons: Vec<LockServiceClient<Channel>>,
    checker: &Checker,
    counters: &Counters,
    stop_at: Instant,
) {
    let mut daemon = client % daemons.len();
    let call_bound = workload.wait + Duration::from_secs(10);
    while counters.claimed.fetch_add(1, Ordering::Relaxed) < workload.acquisitions {
        let resource = format!(
            "{}{}",
            workload.prefix,
            rand::random_range(0..workload.resources)
        );
        // Most clients wait in line; some poll with plain tries.
        let waits = !rand::random_bool(workload.polling);
        let (lease, sent) = loop {
            if Instant::now() > stop_at {
                return;
            }
            if rand::random_bool(0.3) {
                daemon = rand::random_range(0..daemons.len());
            }
            let request = pb::AcquireRequest {
                resource: resource.clone(),
                ttl: duration(workload.ttl),
                wait: if waits { duration(workload.wait) } else { None },
                // No declared principal: under mutual TLS the certificate
                // names the caller.
                reason: format!("exclusion check by client {client}"),
                ..Default::default()
            };
            let sent = checker.now();
            let mut grpc = daemons[daemon].clone();
            match tokio::time::timeout(call_bound, grpc.acquire(request)).await {
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    if answer.acquired {
                        break (answer.lease.expect("a grant carries its lease"), sent);
                    }
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    if !waits {
                        tokio::time::sleep(Duration::from_millis(rand::random_range(1..5))).await;
                    }
                }
                Ok(Err(status)) => {
                    assert!(
                        matches!(
                            status.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Cancelled
                        ),
                        "acquire failed: {status:?}"
                    );
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    daemon = (daemon + 1) % daemons.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => panic!("acquire did not answer within {call_bound:?}"),
            }
        };
        let start = checker.now();
        // The critical section: short, sometimes with a renewal through
        // whichever daemon the client uses now.
        tokio::task::yield_now().await;
        if rand::random_bool(0.1) {
            let (renewed, _) = retry(counters, &mut daemon, &daemons, call_bound, |mut grpc| {
                let request = pb::RenewRequest {
                    resource: resource.clone(),
                    lease_id: lease.lease_id.clone(),
                    ttl: duration(workload.ttl),
                };
                async move { grpc.renew(request).await.map(|r| r.into_inner()) }
            })
            .await;
            match renewed {
                Ok(renewed) => {
                    counters.renewals.fetch_add(1, Ordering::Relaxed);
                    let fence = renewed.lease.map(|l| l.fence);
                    if fence != Some(lease.fence) {
                        checker.lost(format!(
                            "renewal of {resource} fence {} answered fence {fence:?}",
                            lease.fence
                        ));
                    }
                }
                Err(status) => checker.lost(format!(
                    "renewal of {resource} fence {} refused: {status:?}",
                    lease.fence
                )),
            }
        }
        if rand::random_bool(0.5) {
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..3))).await;
        }
        let end = checker.now();
        checker.record(Record {
            resource: resource.clone(),
            fence: lease.fence,
            sent: (!waits).then_some(sent),
            start,
            end,
            ttl: workload.ttl,
            promised: None,
            client,
        });
        if rand::random_bool(0.3) {
            daemon = rand::random_range(0..daemons.len());
        }
        let (released, retried) = retry(counters, &mut daemon, &daemons, call_bound, |mut grpc| {
            let request = pb::ReleaseRequest {
                resource: resource.clone(),
                lease_id: lease.lease_id.clone(),
            };
            async move { grpc.release(request).await.map(|r| r.into_inner()) }
        })
        .await;
        match released {
            Ok(answer) if answer.released => {}
            Ok(_) if retried => {
                counters.ambiguous_releases.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => checker.lost(format!(
                "release of {resource} fence {} found it not current",
                lease.fence
            )),
            Err(status) => panic!("release of {resource} failed: {status:?}"),
        }
        counters.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Calls `call` on the current daemon, moving to the next one while calls
/// fail with UNAVAILABLE (a daemon that died); other answers are returned,
/// with whether an earlier attempt failed in transit.
async fn retry<T, F, Fut>(
    counters: &Counters,
    daemon: &mut usize,
    daemons: &[LockServiceClient<Channel>],
    bound: Duration,
    call: F,
) -> (Result<T, tonic::Status>, bool)
where
    F: Fn(LockServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    for attempt in 0..50 {
        match tokio::time::timeout(bound, call(daemons[*daemon].clone())).await {
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) =>
            {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                *daemon = (*daemon + 1) % daemons.len();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(answer) => return (answer, attempt > 0),
            Err(_) => panic!("call did not answer within {bound:?}"),
        }
    }
    (
        Err(tonic::Status::unavailable(
            "no daemon answered in 50 attempts",
        )),
        true,
    )
}

mod tests {
    use super::*;

    fn section(resource: &str, fence: u64, start: u64, end: u64) -> Record {
        Record {
            resource: resource.to_string(),
            fence,
            sent: Some(Duration::from_millis(start)),
            start: Duration::from_millis(start),
            end: Duration::from_millis(end),
            ttl: Duration::from_secs(10),
            promised: None,
            client: 0,
        }
    }

    fn judge(records: &[Record]) -> Verdict {
        let checker = Checker::new();
        for r in records {
            checker.record(r.clone());
        }
        checker.verdict()
    }

    #[test]
    fn the_checker_passes_a_clean_history() {
        let verdict = judge(&[
            section("a", 1, 0, 10),
            section("b", 1, 5, 30),
            section("a", 2, 11, 20),
            section("a", 7, 20, 25),
        ]);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!((verdict.acquisitions, verdict.resources), (4, 2));
    }

    #[test]
    fn the_checker_flags_overlap_fences_and_outlived_leases() {
        let overlap = judge(&[section("a", 1, 0, 10), section("a", 2, 9, 20)]);
        assert!(overlap.violations[0].starts_with("overlap"), "{overlap:?}");
        // A short section inside a long one overlaps too, even after others.
        let nested = judge(&[
            section("a", 1, 0, 100),
            section("a", 2, 10, 20),
            section("a", 3, 30, 40),
        ]);
        assert_eq!(nested.violations.len(), 2, "{nested:?}");
        let fence = judge(&[section("a", 5, 0, 10), section("a", 5, 11, 20)]);
        assert!(fence.violations[0].starts_with("fence"), "{fence:?}");
        let backwards = judge(&[section("a", 5, 0, 10), section("a", 4, 11, 20)]);
        assert!(
            backwards.violations[0].starts_with("fence"),
            "{backwards:?}"
        );
        let mut waited = section("b", 1, 6_000, 6_001);
        waited.sent = None;
        let mut too_long = section("c", 1, 0, 5_001);
        too_long.sent = None;
        let outlived = judge(&[section("a", 1, 0, 10_001), waited, too_long]);
        assert_eq!(outlived.violations.len(), 2, "{outlived:?}");
        assert!(
            outlived.violations[0].starts_with("outlived"),
            "{outlived:?}"
        );
        let checker = Checker::new();
        checker.lost("release found it not current".into());
        assert_eq!(checker.verdict().violations.len(), 1);
    }
}
