//! Waiting for a lock: first come, first served on one daemon; callers that
//! go away leave nothing behind; a release through another daemon wakes a
//! waiter; shutdown answers waiters with UNAVAILABLE; engines with native
//! notifications report changes made through another connection.

use std::time::Duration;

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::transport::Channel;

use crate::support::{TestDaemon, secs, unique};

const MEMORY: &str = "[backends.main]\ntype = \"memory\"\n";
/// Bound on every wait in these tests; none is expected to take long.
const BOUND: Duration = Duration::from_secs(20);

async fn take(client: &mut LockServiceClient<Channel>, resource: &str) -> pb::Lease {
    let answer = client
        .acquire(pb::AcquireRequest {
            resource: resource.to_string(),
            ..Default::default()
        })
        .await
        .expect("acquire")
        .into_inner();
    assert!(answer.acquired, "{resource} should be free");
    answer.lease.expect("lease")
}

async fn release(client: &mut LockServiceClient<Channel>, lease: &pb::Lease) -> bool {
    client
        .release(pb::ReleaseRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("release")
        .into_inner()
        .released
}

async fn current(
    client: &mut LockServiceClient<Channel>,
    resource: &str,
    wait_id: &str,
) -> pb::CurrentResponse {
    client
        .current(pb::CurrentRequest {
            resource: resource.to_string(),
            wait_id: wait_id.to_string(),
        })
        .await
        .expect("current")
        .into_inner()
}

/// Polls `Current` until `check` holds (bounded).
async fn until(
    client: &mut LockServiceClient<Channel>,
    resource: &str,
    wait_id: &str,
    what: &str,
    check: impl Fn(&pb::CurrentResponse) -> bool,
) -> pb::CurrentResponse {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let answer = current(client, resource, wait_id).await;
        if check(&answer) {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a waiting Acquire in its own task.
fn wait_for(
    client: &LockServiceClient<Channel>,
    resource: &str,
    wait_id: &str,
    wait: i64,
) -> tokio::task::JoinHandle<Result<pb::AcquireResponse, tonic::Status>> {
    let mut client = client.clone();
    let request = pb::AcquireRequest {
        resource: resource.to_string(),
        wait: secs(wait),
        wait_id: wait_id.to_string(),
        reason: format!("waiter {wait_id}"),
        ..Default::default()
    };
    tokio::spawn(async move { client.acquire(request).await.map(|r| r.into_inner()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_are_served_first_come_first_served() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let resource = format!("fifo/{}", unique());
    let first = take(&mut client, &resource).await;

    // Five waiters join the line one after the other; each reports its
    // place while it waits.
    let mut waiting = Vec::new();
    for i in 0..5 {
        let id = format!("w{i}");
        waiting.push((id.clone(), wait_for(&client, &resource, &id, 60)));
        let answer = until(&mut client, &resource, &id, "joining the line", |a| {
            a.queue_position > 0
        })
        .await;
        assert_eq!(answer.queue_position, i + 1, "{id}'s place in line");
        assert_eq!(answer.waiting, i + 1);
        assert_eq!(
            answer.lease.map(|l| l.lease_id),
            Some(first.lease_id.clone())
        );
    }

    // Each winner releases at once; the lock must pass down the line in
    // order, with increasing fences.
    assert!(release(&mut client, &first).await);
    let mut fence = first.fence;
    for (id, task) in waiting {
        let answer = tokio::time::timeout(BOUND, task)
            .await
            .expect("bounded")
            .expect("task")
            .expect("acquire");
        assert!(answer.acquired, "{id} got the lock");
        let lease = answer.lease.expect("lease");
        assert_eq!(lease.reason, format!("waiter {id}"), "served in order");
        assert!(lease.fence > fence, "fence increases");
        fence = lease.fence;
        assert!(release(&mut client, &lease).await);
    }
    let done = current(&mut client, &resource, "").await;
    assert_eq!((done.lease, done.waiting), (None, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_that_goes_away_leaves_no_lease() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let resource = format!("gone/{}", unique());
    let holder = take(&mut client, &resource).await;

    let waiter = wait_for(&client, &resource, "leaver", 60);
    until(&mut client, &resource, "leaver", "joining the line", |a| {
        a.queue_position == 1
    })
    .await;
    // The client goes away: the RPC is cancelled.
    waiter.abort();
    until(&mut client, &resource, "leaver", "leaving the line", |a| {
        a.waiting == 0
    })
    .await;

    // Once the holder releases, the next caller gets the very next fence:
    // nothing was granted to the caller that left, neither before this
    // acquisition (it would hold the lock or have used a fence) nor after it
    // (the lock is held).
    assert!(release(&mut client, &holder).await);
    let lease = take(&mut client, &resource).await;
    assert_eq!(
        lease.fence,
        holder.fence + 1,
        "a lease was granted to a caller that left"
    );
}

/// A call deadline shorter than the wait ends the wait: the caller is
/// answered before its deadline with the holder (the daemon keeps a margin
/// so that the answer is not lost to DEADLINE_EXCEEDED) and leaves the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_deadline_ends_a_wait() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let resource = format!("deadline/{}", unique());
    let holder = take(&mut client, &resource).await;
    let mut request = tonic::Request::new(pb::AcquireRequest {
        resource: resource.clone(),
        wait: secs(600),
        wait_id: "hurried".to_string(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(2));
    let mut waiter = client.clone();
    let call = tokio::spawn(async move { waiter.acquire(request).await });
    until(&mut client, &resource, "hurried", "joining the line", |a| {
        a.queue_position == 1
    })
    .await;
    // The hang guard is far below the 600 s wait: only the deadline can end
    // the call in time.
    let answer = tokio::time::timeout(BOUND, call)
        .await
        .expect("the deadline ended the wait")
        .expect("task");
    let answer = answer.expect("answered within the deadline").into_inner();
    assert!(!answer.acquired, "{answer:?}");
    assert_eq!(answer.holder.map(|h| h.fence), Some(holder.fence));
    let after = until(&mut client, &resource, "hurried", "leaving the line", |a| {
        a.waiting == 0
    })
    .await;
    assert_eq!(after.queue_position, 0);
    assert!(release(&mut client, &holder).await);
    assert_eq!(
        take(&mut client, &resource).await.fence,
        holder.fence + 1,
        "nothing was granted to the caller whose deadline passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_whose_wait_runs_out_is_told_who_holds_the_lock() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let resource = format!("timeout/{}", unique());
    let holder = take(&mut client, &resource).await;
    // Two waiters: the second is behind the first when both time out.
    let a = wait_for(&client, &resource, "a", 1);
    let b = wait_for(&client, &resource, "b", 1);
    for task in [a, b] {
        let answer = tokio::time::timeout(BOUND, task)
            .await
            .expect("bounded")
            .expect("task")
            .expect("acquire");
        assert!(!answer.acquired);
        assert_eq!(answer.holder.map(|h| h.fence), Some(holder.fence));
    }
    assert_eq!(current(&mut client, &resource, "").await.waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_answers_waiters_with_unavailable() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let resource = format!("shutdown/{}", unique());
    let _holder = take(&mut client, &resource).await;
    let waiter = wait_for(&client, &resource, "w", 300);
    until(&mut client, &resource, "w", "joining the line", |a| {
        a.queue_position == 1
    })
    .await;
    let stopped = tokio::time::timeout(BOUND, daemon.shutdown())
        .await
        .expect("shutdown within the bound");
    assert!(stopped.is_ok(), "{stopped:?}");
    let answer = tokio::time::timeout(BOUND, waiter)
        .await
        .expect("bounded")
        .expect("task");
    let status = answer.expect_err("the waiter cannot have the lock");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn bad_wait_ids_are_refused() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    for bad in ["has space", "semi;colon", &"x".repeat(65), "ünïcode"] {
        let status = client
            .acquire(pb::AcquireRequest {
                resource: "r".to_string(),
                wait_id: bad.to_string(),
                ..Default::default()
            })
            .await
            .expect_err(bad);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
        assert!(status.message().contains("wait_id"), "{status:?}");
        let status = client
            .current(pb::CurrentRequest {
                resource: "r".to_string(),
                wait_id: bad.to_string(),
            })
            .await
            .expect_err(bad);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }
}

/// A waiter on daemon A gets the lock released through daemon B.
async fn release_elsewhere_wakes_a_waiter(backend: &str) {
    let config = format!("[backends.main]\n{backend}\n");
    let a = TestDaemon::start(&config, false).await;
    let b = TestDaemon::start(&config, false).await;
    let (mut client_a, mut client_b) = (a.client().await, b.client().await);
    let resource = format!("wake/{}", unique());
    let holder = take(&mut client_b, &resource).await;
    let waiter = wait_for(&client_a, &resource, "w", 15);
    until(&mut client_a, &resource, "w", "joining the line", |x| {
        x.queue_position == 1
    })
    .await;
    assert!(release(&mut client_b, &holder).await);
    let answer = tokio::time::timeout(BOUND, waiter)
        .await
        .expect("bounded")
        .expect("task")
        .expect("acquire");
    assert!(answer.acquired, "the waiter on A got the lock: {answer:?}");
    assert!(answer.lease.expect("lease").fence > holder.fence);
}

mod release_elsewhere_wakes_a_waiter {
    on_shared_engines!("wake", super::release_elsewhere_wakes_a_waiter);
}

/// Engines with notifications report a change made through another
/// connection (another daemon) on the subscription; MySQL and DynamoDB have
/// none.
async fn notifications_arrive(config: &str) {
    use futures::StreamExt;
    use stormlockd::backend::{self, BackendConfig};
    use stormlockd::lease::{AcquireRequest, LeaseId};
    #[derive(serde::Deserialize)]
    struct Wrapper {
        b: BackendConfig,
    }
    let parsed: Wrapper = toml::from_str(&format!("[b]\n{config}")).expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = backend::connect("a", &parsed.b, dir.path())
        .await
        .expect("connect a");
    let writer = backend::connect("b", &parsed.b, dir.path())
        .await
        .expect("connect b");
    let subscription = listener.subscribe().await.expect("subscribe");
    if matches!(parsed.b.kind(), "mysql" | "dynamodb") {
        // No notifications: waiters and watches poll.
        assert!(subscription.is_none());
        return;
    }
    let mut changes = subscription.expect("this engine has notifications");
    let resource = format!("notify/{}", unique());
    let request = AcquireRequest {
        resource: resource.clone(),
        id: LeaseId::generate(),
        principal: "p".to_string(),
        reason: String::new(),
        ttl: Duration::from_secs(30),
    };
    writer.acquire(&request).await.expect("acquire");
    writer
        .release(&resource, &request.id)
        .await
        .expect("release");
    for what in ["acquire", "release"] {
        let name = tokio::time::timeout(BOUND, changes.next())
            .await
            .unwrap_or_else(|_| panic!("no notification of the {what}"))
            .expect("subscription open");
        assert_eq!(name, resource, "notification of the {what}");
    }
}

mod notifications_arrive {
    on_shared_engines!(
        format!("notify_{}", super::unique()),
        super::notifications_arrive
    );
}
