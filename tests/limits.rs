//! Bounded cost per caller, through a daemon: `[limits]` refuses the waiter
//! or watch beyond a limit with RESOURCE_EXHAUSTED (and a message naming the
//! limit, its value and its key) while those within it are served as
//! before; and watches share one poller, so the engine reads as much for
//! fifty watches as for one.

use std::net::SocketAddr;
use std::time::Duration;

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::transport::Channel;

use crate::support::{TestDaemon, free_port, metric_sample_or, scrape_metrics, secs, unique};

const MEMORY: &str = "[backends.main]\ntype = \"memory\"\n";
/// Bound on every wait here; none is expected to take long.
const BOUND: Duration = Duration::from_secs(20);

fn config(limits: &str) -> String {
    format!("[limits]\n{limits}\n{MEMORY}")
}

async fn take(
    client: &mut LockServiceClient<Channel>,
    resource: &str,
    principal: &str,
) -> pb::Lease {
    let answer = client
        .acquire(pb::AcquireRequest {
            resource: resource.to_string(),
            principal: principal.to_string(),
            ..Default::default()
        })
        .await
        .expect("acquire")
        .into_inner();
    assert!(answer.acquired, "{resource} should be free");
    answer.lease.expect("lease")
}

async fn release(client: &mut LockServiceClient<Channel>, lease: &pb::Lease) {
    let released = client
        .release(pb::ReleaseRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("release")
        .into_inner()
        .released;
    assert!(released, "{} released", lease.resource);
}

/// Starts an Acquire of `resource` by `principal` that waits up to a minute.
fn wait_for(
    client: &LockServiceClient<Channel>,
    resource: &str,
    principal: &str,
    wait_id: &str,
) -> tokio::task::JoinHandle<Result<pb::AcquireResponse, tonic::Status>> {
    let mut client = client.clone();
    let request = pb::AcquireRequest {
        resource: resource.to_string(),
        principal: principal.to_string(),
        wait: secs(60),
        wait_id: wait_id.to_string(),
        reason: format!("waiter {wait_id}"),
        ..Default::default()
    };
    tokio::spawn(async move { client.acquire(request).await.map(|r| r.into_inner()) })
}

/// Polls `Current` until the waiter `wait_id` has its place in line.
async fn in_line(client: &mut LockServiceClient<Channel>, resource: &str, wait_id: &str) -> u32 {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let answer = client
            .current(pb::CurrentRequest {
                resource: resource.to_string(),
                wait_id: wait_id.to_string(),
            })
            .await
            .expect("current")
            .into_inner();
        if answer.queue_position > 0 {
            return answer.queue_position;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{wait_id} never joined the line of {resource}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A waiting Acquire that the limit refuses at once.
async fn refused_wait(
    client: &LockServiceClient<Channel>,
    resource: &str,
    principal: &str,
) -> tonic::Status {
    let answer = tokio::time::timeout(BOUND, wait_for(client, resource, principal, "over"))
        .await
        .expect("answered at once, not after waiting")
        .expect("task");
    let status = answer.expect_err("over the limit");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    status
}

async fn granted(
    waiter: tokio::task::JoinHandle<Result<pb::AcquireResponse, tonic::Status>>,
    who: &str,
) -> pb::Lease {
    let answer = tokio::time::timeout(BOUND, waiter)
        .await
        .unwrap_or_else(|_| panic!("{who} still waiting"))
        .expect("task")
        .unwrap_or_else(|e| panic!("{who}: {e}"));
    assert!(answer.acquired, "{who}: {answer:?}");
    let lease = answer.lease.expect("lease");
    assert_eq!(lease.reason, format!("waiter {who}"), "served in order");
    lease
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_third_waiter_for_a_resource_is_refused() {
    let daemon = TestDaemon::start(&config("max_waiters_per_resource = 2"), false).await;
    let mut client = daemon.client().await;
    let resource = format!("line/{}", unique());
    let holder = take(&mut client, &resource, "").await;
    let a = wait_for(&client, &resource, "", "a");
    assert_eq!(in_line(&mut client, &resource, "a").await, 1);
    let b = wait_for(&client, &resource, "", "b");
    assert_eq!(in_line(&mut client, &resource, "b").await, 2);

    let status = refused_wait(&client, &resource, "").await;
    assert!(
        status.message().contains(&format!("{resource:?}"))
            && status
                .message()
                .contains("limits.max_waiters_per_resource = 2"),
        "{status:?}"
    );
    // Trying once (no wait) is not waiting: the usual answer.
    let once = client
        .acquire(pb::AcquireRequest {
            resource: resource.clone(),
            ..Default::default()
        })
        .await
        .expect("a try is not refused")
        .into_inner();
    assert!(!once.acquired);
    assert_eq!(once.holder.map(|h| h.fence), Some(holder.fence));

    // The two in line are served in order.
    release(&mut client, &holder).await;
    let first = granted(a, "a").await;
    release(&mut client, &first).await;
    let second = granted(b, "b").await;
    assert!(second.fence > first.fence);
    release(&mut client, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_principal_with_two_waiters_is_refused_a_third() {
    // Plain text: callers declare who they are, so there can be several.
    let daemon = TestDaemon::start(&config("max_waiters_per_principal = 2"), true).await;
    let mut client = daemon.client().await;
    let run = unique();
    let resources: Vec<String> = (1..=3).map(|i| format!("mine/{run}/{i}")).collect();
    let mut holders = Vec::new();
    for resource in &resources {
        holders.push(take(&mut client, resource, "holder").await);
    }
    let a = wait_for(&client, &resources[0], "alice", "a");
    in_line(&mut client, &resources[0], "a").await;
    let b = wait_for(&client, &resources[1], "alice", "b");
    in_line(&mut client, &resources[1], "b").await;

    let status = refused_wait(&client, &resources[2], "alice").await;
    assert!(
        status.message().contains("\"alice\"")
            && status
                .message()
                .contains("limits.max_waiters_per_principal = 2"),
        "{status:?}"
    );
    // Another principal may still wait for that resource.
    let carol = wait_for(&client, &resources[2], "carol", "c");
    assert_eq!(in_line(&mut client, &resources[2], "c").await, 1);

    // Alice's two waiters get their locks.
    release(&mut client, &holders[0]).await;
    let first = granted(a, "a").await;
    release(&mut client, &holders[1]).await;
    let second = granted(b, "b").await;
    // Done waiting, Alice may wait again.
    let again = wait_for(&client, &resources[0], "alice", "again");
    assert_eq!(in_line(&mut client, &resources[0], "again").await, 1);
    release(&mut client, &first).await;
    granted(again, "again").await;
    release(&mut client, &holders[2]).await;
    granted(carol, "c").await;
    release(&mut client, &second).await;
}

async fn open_watch(
    client: &mut LockServiceClient<Channel>,
    prefix: &str,
) -> Result<tonic::Streaming<pb::WatchResponse>, tonic::Status> {
    client
        .watch(pb::WatchRequest {
            prefix: prefix.to_string(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_principal_with_two_watches_is_refused_a_third_until_one_ends() {
    let daemon = TestDaemon::start(&config("max_watches_per_principal = 2"), false).await;
    let mut client = daemon.client().await;
    let prefix = format!("watched/{}/", unique());
    let first = open_watch(&mut client, &prefix).await.expect("first");
    let mut second = open_watch(&mut client, &prefix).await.expect("second");
    let status = open_watch(&mut client, &prefix).await.expect_err("third");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("limits.max_watches_per_principal = 2"),
        "{status:?}"
    );

    // Once a watch ends, a new one is accepted (the daemon notices the end
    // when the cancellation arrives, so look until it has).
    drop(first);
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut third = loop {
        match open_watch(&mut client, &prefix).await {
            Ok(watch) => break watch,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no room after a watch ended"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let status = open_watch(&mut client, &prefix)
        .await
        .expect_err("full again");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // Both open watches work.
    let lease = take(&mut client, &format!("{prefix}r"), "").await;
    for events in [&mut second, &mut third] {
        let event = tokio::time::timeout(BOUND, events.message())
            .await
            .expect("an event in time")
            .expect("the watch goes on")
            .expect("an event");
        assert_eq!(event.lease.map(|l| l.fence), Some(lease.fence));
    }
}

/// The daemon's backend calls so far: engine reads (`list`, `current`,
/// `status`) and health checks, from its own metrics.
async fn backend_calls(metrics: SocketAddr) -> (f64, f64) {
    let text = scrape_metrics(metrics).await;
    let count = |operation: &str| {
        let series = format!(
            "stormlock_backend_request_duration_seconds_count{{backend=\"main\",operation=\"{operation}\"}}"
        );
        metric_sample_or(&text, &series).unwrap_or(0.0)
    };
    (
        count("list") + count("current") + count("status"),
        count("health"),
    )
}

/// Engine reads while the daemon runs `checks` more health checks (its own
/// clock: one every 200 ms in tests, five per watch poll).
async fn reads_over(metrics: SocketAddr, checks: f64) -> f64 {
    let (reads, health) = backend_calls(metrics).await;
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let (now_reads, now_health) = backend_calls(metrics).await;
        if now_health >= health + checks {
            return now_reads - reads;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon stopped its health checks"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_watchers_cost_the_engine_what_one_does() {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let daemon = TestDaemon::start(
        &format!(
            "metrics_listen = \"{metrics}\"\n{}",
            config("max_watches_per_principal = 100")
        ),
        false,
    )
    .await;
    let mut client = daemon.client().await;
    let prefix = format!("many/{}/", unique());
    let mut watches = vec![open_watch(&mut client, &prefix).await.expect("watch")];
    // Settle: the first read of the selection is behind us.
    reads_over(metrics, 5.0).await;
    let one = reads_over(metrics, 15.0).await;
    for _ in 1..50 {
        watches.push(open_watch(&mut client, &prefix).await.expect("watch"));
    }
    reads_over(metrics, 5.0).await;
    let fifty = reads_over(metrics, 15.0).await;
    assert!(one >= 1.0, "one watch polls the engine: {one} reads");
    assert!(
        fifty <= one * 2.0 + 3.0,
        "fifty watches made {fifty} engine reads where one made {one}, over as many polls"
    );
    // And all fifty are served: a change reaches every one of them.
    let lease = take(&mut client, &format!("{prefix}r"), "").await;
    for events in &mut watches {
        let event = tokio::time::timeout(BOUND, events.message())
            .await
            .expect("an event in time")
            .expect("the watch goes on")
            .expect("an event");
        assert_eq!(event.lease.map(|l| l.fence), Some(lease.fence));
    }
}
