//! A benchmark, not a test: how soon a backend answers `UNAVAILABLE` when
//! its engine fails, and how soon it grants again once the engine is back.
//! The tests only assert the outcomes (and stop a stuck call); these are the
//! timing goals, measured. Ignored by default; `scripts/bench --faults`
//! runs it against the engines of `tests/engines.sh` and prints one line
//! per engine and fault (BENCHMARKS.md §7).

use std::sync::Arc;
use std::time::{Duration, Instant};

use stormlockd::backend::{self, Backend, BackendConfig, BackendError};
use stormlockd::lease::Acquisition;
use stormlockd::routing::WithTimeout;

use crate::conformance::request;
use crate::proxy::{Fault, FaultProxy, address_in, proxied, upstream_of};
use crate::support::{shared_backend, unique};

/// The per-call bound, as `[defaults] backend_timeout` sets it.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Hang guard: only a backend that never recovers trips it.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// One measurement: the first call under `fault`, and the recovery after.
struct Timing {
    engine: &'static str,
    fault: &'static str,
    unavailable_after: Duration,
    granted_again_after: Duration,
}

async fn measure(engine: &'static str, body: &str) -> Vec<Timing> {
    let proxy = FaultProxy::start(upstream_of(&address_in(body))).await;
    let config: BackendConfig = toml::from_str(&proxied(body, &proxy)).expect("backend config");
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = backend::connect("bench", &config, dir.path())
        .await
        .expect("connect");
    let backend: Arc<dyn Backend> = Arc::new(WithTimeout::new("bench", inner, BACKEND_TIMEOUT));
    let mut timings = Vec::new();
    for (fault, name) in [
        (Fault::Blackhole, "blackhole"),
        (Fault::Reset, "reset"),
        (Fault::HalfOpen, "half-open"),
    ] {
        // Warm: a connection is open and answering before the fault.
        let resource = format!("fault-timings/{}", unique());
        granted(backend.as_ref(), &resource).await;
        proxy.set(fault);
        let asked = Instant::now();
        let answer = backend.acquire(&request(&resource, "bob", 60)).await;
        let unavailable_after = asked.elapsed();
        assert!(
            matches!(answer, Err(BackendError::Unavailable { .. })),
            "{engine} under {name}: {answer:?}"
        );
        proxy.set(Fault::None);
        let healed = Instant::now();
        granted(backend.as_ref(), &format!("fault-timings/{}", unique())).await;
        timings.push(Timing {
            engine,
            fault: name,
            unavailable_after,
            granted_again_after: healed.elapsed(),
        });
    }
    timings
}

/// Acquires `resource` as soon as the backend grants anything (bounded by
/// the hang guard).
async fn granted(backend: &dyn Backend, resource: &str) {
    let until = Instant::now() + HANG_GUARD;
    loop {
        if let Ok(Acquisition::Granted(_)) = backend.acquire(&request(resource, "alice", 60)).await
        {
            return;
        }
        assert!(Instant::now() < until, "{resource} never granted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench --faults"]
async fn fault_timings() {
    let mut rows = Vec::new();
    for engine in ["redis", "postgres", "etcd", "mysql"] {
        let Some(body) = shared_backend(engine, "fault_timings") else {
            eprintln!("fault timings: no {engine} (run under tests/engines.sh)");
            continue;
        };
        rows.extend(measure(engine, &body).await);
    }
    println!("| engine | fault | UNAVAILABLE after | granted again after the fault ends |");
    println!("|---|---|---:|---:|");
    for t in &rows {
        println!(
            "| {} | {} | {:.2} s | {:.2} s |",
            t.engine,
            t.fault,
            t.unavailable_after.as_secs_f64(),
            t.granted_again_after.as_secs_f64()
        );
    }
    assert!(!rows.is_empty(), "no engine to measure");
}
