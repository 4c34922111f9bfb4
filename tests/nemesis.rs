//! Mutual exclusion under faults: the checker (`tests/checker.rs`) judges a
//! workload run while a nemesis breaks the network and the daemons.
//!
//! Per engine, two real daemons share the engine, each through a fault
//! proxy of its own (`tests/proxy.rs`). Clients spread over both daemons
//! take twelve resources with short TTLs (1–3 s), hold one in twenty of
//! them for up to two TTLs by renewing, and go strictly by the service's promise: a
//! critical section ends by the lease's latest `expires_at` whatever
//! happens to the calls, as a careful client's work would. Meanwhile the
//! nemesis, one fault at a time: adds latency, blackholes one daemon's
//! engine connections or both (the engine frozen, as far as the daemons can
//! tell), resets them, leaves them half-open, drops the engine's replies
//! (requests applied, answers lost), freezes a daemon (SIGSTOP) or kills one
//! (SIGKILL) and starts it again.
//!
//! The run passes with no violation (no overlap of two sections, fences
//! strictly increasing, no lease lost before its promise) and with every
//! resource taken again within one TTL (plus the daemons' backend timeout)
//! after each fault ends: "orphaned" time, a resource held by nobody alive,
//! is reported and bounded.
//!
//! `STORMLOCK_NEMESIS_ACQUISITIONS` sets the critical sections per engine
//! (default 2,000); `scripts/soak` runs longer ones.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::transport::Channel;

use crate::checker::{Checker, Record};
use crate::proxy::{Fault, FaultProxy, through, upstream_of};
use crate::support::{DaemonProcess, engine_url, unique};

/// How long a daemon waits for its engine before answering UNAVAILABLE.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a fault lasts.
const LONGEST_FAULT: Duration = Duration::from_millis(2_000);
/// The longest TTL the clients ask for.
const LONGEST_TTL: Duration = Duration::from_secs(3);
/// How many resources the clients fight over.
const RESOURCES: usize = 12;
/// How long a waiting Acquire may wait.
const WAIT: Duration = Duration::from_secs(2);

/// How fast an engine is expected to go under the nemesis.
#[derive(Clone, Copy)]
struct Pace {
    /// Concurrent clients.
    clients: usize,
    /// Time allowed per acquisition (the run's deadline).
    per_acquisition: Duration,
    /// Added to the longest stretch a resource may stay free.
    slack: Duration,
}

impl Pace {
    const FAST: Self = Self {
        clients: 16,
        per_acquisition: Duration::from_millis(200),
        slack: Duration::ZERO,
    };
}

/// What a nemesis run counted besides the checker's verdict.
#[derive(Default)]
struct Counts {
    claimed: AtomicUsize,
    refused: AtomicUsize,
    /// Calls whose outcome is unknown (an error or no answer in time).
    unknown: AtomicUsize,
    renewals: AtomicUsize,
    /// Sections that ended early because a renewal could not be confirmed.
    cut_short: AtomicUsize,
    /// Grants that arrived after their own `expires_at`: not used, as a
    /// careful client does.
    late: AtomicUsize,
}

/// A fault the nemesis applied, on the checker's clock.
#[derive(Debug, Clone)]
struct Applied {
    what: String,
    from: Duration,
    until: Duration,
}

/// One daemon and the proxy between it and the engine.
struct Node {
    daemon: tokio::sync::Mutex<DaemonProcess>,
    proxy: FaultProxy,
    client: LockServiceClient<Channel>,
}

/// Runs the nemesis on `engine` (an address the proxies forward to), with
/// daemons configured by `backend(proxied address)` (a `[backends.main]`
/// body) and `env`.
async fn run(
    label: &str,
    engine: SocketAddr,
    backend: impl Fn(SocketAddr) -> String,
    env: &[(&str, &str)],
    pace: Pace,
) {
    let acquisitions: usize = std::env::var("STORMLOCK_NEMESIS_ACQUISITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let proxy = FaultProxy::start(engine).await;
        let config = format!(
            "[audit]\npath = \"/dev/null\"\n[defaults]\nbackend_timeout = \"{}s\"\n\
             [backends.main]\n{}\n",
            BACKEND_TIMEOUT.as_secs(),
            backend(proxy.addr)
        );
        let daemon = DaemonProcess::start(&config, env).await;
        let client = daemon.client();
        nodes.push(Node {
            daemon: tokio::sync::Mutex::new(daemon),
            proxy,
            client,
        });
    }
    let nodes = Arc::new(nodes);
    let checker = Checker::new();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(Mutex::new(Vec::<Applied>::new()));
    let prefix = format!("nemesis/{}/", unique());
    // Generous: about twice what a run takes on a loaded 2-core machine
    // (the emulated DynamoDB, one request at a time, gets more).
    let deadline = Instant::now()
        + Duration::from_secs(60)
            .max(pace.per_acquisition * u32::try_from(acquisitions).unwrap_or(u32::MAX));

    let nemesis = tokio::spawn(nemesis(
        label.to_string(),
        nodes.clone(),
        checker.clone(),
        counts.clone(),
        faults.clone(),
        stop.clone(),
    ));
    let started = Instant::now();
    let tasks: Vec<_> = (0..pace.clients)
        .map(|n| {
            let nodes = nodes.clone();
            let checker = checker.clone();
            let counts = counts.clone();
            let prefix = prefix.clone();
            tokio::spawn(async move {
                client_loop(
                    n,
                    &prefix,
                    acquisitions,
                    &nodes,
                    &checker,
                    &counts,
                    deadline,
                )
                .await;
            })
        })
        .collect();
    for task in tasks {
        if let Err(e) = task.await {
            panic!("a client panicked: {}", panic_message(e));
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = nemesis.await {
        panic!("the nemesis panicked: {}", panic_message(e));
    }
    let elapsed = started.elapsed();

    let verdict = checker.verdict();
    let faults = faults.lock().expect("faults").clone();
    // Orphaned time: how long a resource stayed free (held by nobody alive)
    // after the last fault that began before it was taken again.
    let mut orphaned = Duration::ZERO;
    let mut orphaned_at = None;
    let mut unavailable = Duration::ZERO;
    for &(free, taken) in &verdict.gaps {
        unavailable = unavailable.max(taken - free);
        let since = faults
            .iter()
            .filter(|f| f.from < taken)
            .map(|f| f.until)
            .fold(free, Duration::max);
        let gap = taken.saturating_sub(since);
        if gap > orphaned {
            orphaned = gap;
            orphaned_at = Some((free, taken));
        }
    }
    let summary = format!(
        "nemesis {label}: {} acquisitions over {} resources, {} renewals, {} refusals, \
         {} unknown outcomes, {} sections cut short, {} late grants, {} faults, \
         {} violations, longest free stretch {:.2}s, orphaned after a fault {:.2}s, {:.1}s",
        verdict.acquisitions,
        verdict.resources,
        counts.renewals.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.unknown.load(Ordering::Relaxed),
        counts.cut_short.load(Ordering::Relaxed),
        counts.late.load(Ordering::Relaxed),
        faults.len(),
        verdict.violations.len(),
        unavailable.as_secs_f64(),
        orphaned.as_secs_f64(),
        elapsed.as_secs_f64(),
    );
    eprintln!("{summary}");
    // On failure the faults and the daemons' last lines come first and the
    // verdict last: a CI log that keeps only the head and the tail of the
    // run keeps the reason.
    let mut report = String::new();
    // Faults follow each other closely, so a resource may stay free through
    // two or three of them; a stretch much longer than that means a daemon
    // did not recover from one (it kept a dead connection, say).
    // (Slack for a loaded machine, where debug daemons answer slowly; the
    // failure this guards against kept resources free for a minute.)
    let longest_free =
        LONGEST_FAULT * 3 + LONGEST_TTL + BACKEND_TIMEOUT * 3 + Duration::from_secs(8) + pace.slack;
    if !verdict.violations.is_empty()
        || orphaned > LONGEST_TTL + BACKEND_TIMEOUT * 2
        || unavailable > longest_free
        || verdict.acquisitions < acquisitions
    {
        let _ = writeln!(report, "faults:");
        for f in &faults {
            let _ = writeln!(
                report,
                "  {:>8.3}..{:>8.3} {}",
                f.from.as_secs_f64(),
                f.until.as_secs_f64(),
                f.what
            );
        }
        for node in nodes.iter() {
            let log = node.daemon.lock().await.log();
            let tail: Vec<_> = log.lines().rev().take(30).collect();
            let _ = writeln!(
                report,
                "daemon log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
    }
    report.push_str(&summary);
    verdict.assert_clean(&report);
    assert!(
        verdict.acquisitions >= acquisitions,
        "{report}\nonly {} of {acquisitions} acquisitions before the deadline",
        verdict.acquisitions
    );
    assert!(
        orphaned <= LONGEST_TTL + BACKEND_TIMEOUT * 2,
        "{report}\na resource stayed free {orphaned:?} after a fault ({orphaned_at:?})"
    );
    assert!(
        unavailable <= longest_free,
        "{report}\na resource stayed free {unavailable:?} under faults of {LONGEST_FAULT:?} at most"
    );
}

/// What a task's panic said, to repeat it last in the test's output (the
/// first report may be lost in the middle of a long log).
fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "(not a string)".to_string())
}

/// One fault after another until `stop`: each lasts up to [`LONGEST_FAULT`],
/// with a healthy stretch between two.
async fn nemesis(
    label: String,
    nodes: Arc<Vec<Node>>,
    checker: Arc<Checker>,
    counts: Arc<Counts>,
    applied: Arc<Mutex<Vec<Applied>>>,
    stop: Arc<AtomicBool>,
) {
    // Progress every ten seconds, not every fault: a failure's report must
    // not drown in it.
    let mut reported = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rand::random_range(300..1_200))).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let hold =
            Duration::from_millis(rand::random_range(300..=LONGEST_FAULT.as_millis() as u64));
        let one = rand::random_range(0..nodes.len());
        let from = checker.now();
        if from >= reported + Duration::from_secs(10) {
            reported = from;
            eprintln!(
                "nemesis {label}: {:.1}s, {} sections claimed, {} unknown outcomes, {} faults so far",
                from.as_secs_f64(),
                counts.claimed.load(Ordering::Relaxed),
                counts.unknown.load(Ordering::Relaxed),
                applied.lock().expect("faults").len()
            );
        }
        let what = match rand::random_range(0..8) {
            0 => {
                let delay = Duration::from_millis(rand::random_range(100..600));
                nodes[one].proxy.set(Fault::Latency(delay));
                tokio::time::sleep(hold).await;
                format!("latency {delay:?} to daemon {one}")
            }
            1 => {
                proxy_fault(
                    &nodes[one..=one],
                    Fault::Blackhole,
                    hold,
                    &format!("blackhole daemon {one}"),
                )
                .await
            }
            2 => {
                proxy_fault(
                    &nodes,
                    Fault::Blackhole,
                    hold,
                    "blackhole both (engine frozen)",
                )
                .await
            }
            3 => proxy_fault(&nodes, Fault::Reset, hold, "reset both").await,
            4 => {
                proxy_fault(
                    &nodes[one..=one],
                    Fault::HalfOpen,
                    hold,
                    &format!("half-open daemon {one}"),
                )
                .await
            }
            5 => {
                proxy_fault(
                    &nodes[one..=one],
                    Fault::DropReplies,
                    hold,
                    &format!("drop replies to daemon {one}"),
                )
                .await
            }
            6 => {
                let daemon = nodes[one].daemon.lock().await;
                daemon.freeze();
                tokio::time::sleep(hold).await;
                daemon.thaw();
                format!("SIGSTOP daemon {one}")
            }
            _ => {
                let mut daemon = nodes[one].daemon.lock().await;
                daemon.restart().await;
                format!("SIGKILL and restart daemon {one}")
            }
        };
        for node in nodes.iter() {
            node.proxy.set(Fault::None);
        }
        applied.lock().expect("faults").push(Applied {
            what,
            from,
            until: checker.now(),
        });
    }
    for node in nodes.iter() {
        node.proxy.set(Fault::None);
    }
}

async fn proxy_fault(nodes: &[Node], fault: Fault, hold: Duration, what: &str) -> String {
    for node in nodes {
        node.proxy.set(fault);
    }
    tokio::time::sleep(hold).await;
    for node in nodes {
        node.proxy.set(Fault::None);
    }
    format!("{what} for {hold:?}")
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    })
}

fn expiry(checker: &Checker, lease: &pb::Lease) -> Duration {
    let expires = lease.expires_at.expect("a lease has an expiry");
    let t = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(expires.seconds).expect("expiry after 1970"),
            u32::try_from(expires.nanos).expect("nanos"),
        );
    checker.at(t)
}

/// Whether `status` says the call's outcome is unknown (rather than a
/// refusal the test did not expect).
fn unknown(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

/// A client of the nemesis run; see the module docs.
#[allow(clippy::too_many_arguments)]
async fn client_loop(
    n: usize,
    prefix: &str,
    acquisitions: usize,
    nodes: &[Node],
    checker: &Checker,
    counts: &Counts,
    deadline: Instant,
) {
    let mut node = n % nodes.len();
    while counts.claimed.fetch_add(1, Ordering::Relaxed) < acquisitions {
        let resource = format!("{prefix}{}", rand::random_range(0..RESOURCES));
        let ttl = Duration::from_secs(rand::random_range(1..=LONGEST_TTL.as_secs()));
        let waits = rand::random_bool(0.75);
        // Take the lock, or give up on this section (another one is claimed).
        let lease = loop {
            if Instant::now() > deadline {
                return;
            }
            let request = pb::AcquireRequest {
                resource: resource.clone(),
                ttl: duration(ttl),
                wait: if waits { duration(WAIT) } else { None },
                reason: format!("nemesis client {n}"),
                ..Default::default()
            };
            let mut grpc = nodes[node].client.clone();
            let bound = WAIT + BACKEND_TIMEOUT * 3;
            match tokio::time::timeout(bound, grpc.acquire(request)).await {
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    if answer.acquired {
                        break answer.lease.expect("a grant carries its lease");
                    }
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    if !waits {
                        tokio::time::sleep(Duration::from_millis(rand::random_range(1..10))).await;
                    }
                }
                Ok(Err(status)) if unknown(&status) => {
                    counts.unknown.fetch_add(1, Ordering::Relaxed);
                    node = (node + 1) % nodes.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(status)) => panic!("acquire of {resource} failed: {status:?}"),
                Err(_) => {
                    counts.unknown.fetch_add(1, Ordering::Relaxed);
                    node = (node + 1) % nodes.len();
                }
            }
        };
        let start = checker.now();
        let mut promised = expiry(checker, &lease);
        if promised <= start {
            // Granted, but the answer came after the lease's end (its daemon
            // was frozen in between, say): there is no section to hold, and
            // a newer holder may already have it. Nothing to release either.
            counts.late.fetch_add(1, Ordering::Relaxed);
            // The section this claim was for did not happen: claim again.
            counts.claimed.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        // Most sections are short; some last up to two TTLs, renewing when
        // half the lease is left.
        let planned = if rand::random_bool(0.95) {
            Duration::from_millis(rand::random_range(0..20))
        } else {
            ttl.mul_f64(rand::random_range(0.5..2.0))
        };
        let finish = start + planned;
        loop {
            let now = checker.now();
            if now >= finish || now >= promised {
                break;
            }
            let renew_at = promised.saturating_sub(ttl / 2).max(now);
            if finish <= renew_at {
                tokio::time::sleep(finish - now).await;
                break;
            }
            tokio::time::sleep(renew_at - now).await;
            // The renewal must be confirmed before the promise runs out.
            let left = promised.saturating_sub(checker.now());
            if rand::random_bool(0.3) {
                node = rand::random_range(0..nodes.len());
            }
            let mut grpc = nodes[node].client.clone();
            let request = pb::RenewRequest {
                resource: resource.clone(),
                lease_id: lease.lease_id.clone(),
                ttl: duration(ttl),
            };
            match tokio::time::timeout(left, grpc.renew(request)).await {
                Ok(Ok(answer)) => {
                    counts.renewals.fetch_add(1, Ordering::Relaxed);
                    let renewed = answer
                        .into_inner()
                        .lease
                        .expect("a renewal carries its lease");
                    if renewed.fence != lease.fence {
                        checker.lost(format!(
                            "renewal of {resource} fence {} answered fence {}",
                            lease.fence, renewed.fence
                        ));
                    }
                    promised = expiry(checker, &renewed);
                }
                Ok(Err(status)) if unknown(&status) => {
                    counts.unknown.fetch_add(1, Ordering::Relaxed);
                    counts.cut_short.fetch_add(1, Ordering::Relaxed);
                    node = (node + 1) % nodes.len();
                    break;
                }
                Ok(Err(status)) => {
                    // Refused: fine once the promise has run out (the
                    // renewal may have reached the engine late), a lost
                    // lease before.
                    if checker.now() < promised {
                        checker.lost(format!(
                            "renewal of {resource} fence {} refused {:?} before its expiry: {status:?}",
                            lease.fence,
                            promised - checker.now()
                        ));
                    }
                    counts.cut_short.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_) => {
                    counts.unknown.fetch_add(1, Ordering::Relaxed);
                    counts.cut_short.fetch_add(1, Ordering::Relaxed);
                    node = (node + 1) % nodes.len();
                    break;
                }
            }
        }
        let end = checker.now().min(promised);
        checker.record(Record {
            resource: resource.clone(),
            fence: lease.fence,
            sent: None,
            start,
            end,
            ttl,
            promised: Some(promised),
            client: n,
        });
        if checker.now() < promised {
            let mut grpc = nodes[node].client.clone();
            let request = pb::ReleaseRequest {
                resource: resource.clone(),
                lease_id: lease.lease_id.clone(),
            };
            let left = promised.saturating_sub(checker.now()) + BACKEND_TIMEOUT;
            match tokio::time::timeout(left, grpc.release(request)).await {
                Ok(Ok(answer)) => {
                    let answered = checker.now();
                    if !answer.into_inner().released && answered < promised {
                        checker.lost(format!(
                            "release of {resource} fence {} found it not current {:?} before its expiry",
                            lease.fence,
                            promised - answered
                        ));
                    }
                }
                Ok(Err(status)) if unknown(&status) => {
                    counts.unknown.fetch_add(1, Ordering::Relaxed);
                    node = (node + 1) % nodes.len();
                }
                Ok(Err(status)) => panic!("release of {resource} failed: {status:?}"),
                Err(_) => {
                    counts.unknown.fetch_add(1, Ordering::Relaxed);
                    node = (node + 1) % nodes.len();
                }
            }
        }
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_redis() {
    let Some(url) = engine_url("STORMLOCK_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("nemesis-{}:", unique());
    run(
        "redis",
        upstream_of(&url),
        |proxy| {
            format!(
                "type = \"redis\"\nurl = {:?}\nprefix = {prefix:?}",
                through(&url, proxy)
            )
        },
        &[],
        Pace::FAST,
    )
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_postgres() {
    let Some(url) = engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
        return;
    };
    run(
        "postgres",
        upstream_of(&url),
        |proxy| {
            format!(
                "type = \"postgres\"\nurl = {:?}\ntable = \"nemesis\"",
                through(&url, proxy)
            )
        },
        &[],
        Pace::FAST,
    )
    .await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_mysql() {
    let Some(url) = engine_url("STORMLOCK_TEST_MYSQL_URL") else {
        return;
    };
    run(
        "mysql",
        upstream_of(&url),
        |proxy| {
            format!(
                "type = \"mysql\"\nurl = {:?}\ntable = \"nemesis\"",
                through(&url, proxy)
            )
        },
        &[],
        Pace::FAST,
    )
    .await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_etcd() {
    let Some(url) = engine_url("STORMLOCK_TEST_ETCD_ENDPOINT") else {
        return;
    };
    let prefix = format!("/nemesis-{}/", unique());
    run(
        "etcd",
        upstream_of(&url),
        |proxy| {
            format!(
                "type = \"etcd\"\nendpoints = [{:?}]\nprefix = {prefix:?}",
                through(&url, proxy)
            )
        },
        &[],
        Pace::FAST,
    )
    .await;
}

/// The emulator answers one request at a time: fewer clients, and an
/// emulator of this test's own, so that the other DynamoDB tests running
/// beside it (the suite runs tests in parallel) do not queue ahead of its
/// requests, which kept resources free for longer than the faults explain.
#[cfg(feature = "dynamodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_dynamodb() {
    if engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT").is_none() {
        return;
    }
    let Some(engine) = crate::support::PrivateEngine::start("dynamodb") else {
        return;
    };
    let endpoint = engine.url.clone();
    let table = format!("stormlock-nemesis-{}", unique());
    run(
        "dynamodb",
        upstream_of(&endpoint),
        |proxy| {
            format!(
                "type = \"dynamodb\"\nendpoint = {:?}\ntable = {table:?}\nregion = \"us-east-1\"",
                through(&endpoint, proxy)
            )
        },
        crate::exclusion::DYNAMODB_ENV,
        // The emulator answers one request at a time, and the SDK waits up
        // to its own request timeout: fewer clients, more time.
        Pace {
            clients: 8,
            per_acquisition: Duration::from_millis(300),
            slack: Duration::from_secs(8),
        },
    )
    .await;
}
