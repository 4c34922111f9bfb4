//! The Watch RPC: events for a resource or a prefix, from changes made
//! through this daemon, through another daemon on a shared backend, and by
//! expiry; lease ids hidden as elsewhere; shutdown ends the stream.

use std::time::Duration;

use stormlock_api::pb::{self, EventType, lock_service_client::LockServiceClient};
use tonic::Streaming;
use tonic::transport::Channel;

use crate::support::{TestDaemon, acquire_request, secs, unique};

const MEMORY: &str = "[backends.main]\ntype = \"memory\"\n";
const BOUND: Duration = Duration::from_secs(20);

/// Opens a watch through `watcher` and returns once it reports changes.
/// A new watch reads its selection before it reports anything, and nothing
/// says when that is done; so `probe`, a resource in the selection, is taken
/// through `actor` and held until the watch reports it (a watch that polls
/// sees a held lease within a poll), then released, and the watch's events
/// are consumed up to that release. Events of one resource come in fence
/// order, so none of the probe's is left behind.
async fn watching(
    watcher: &mut LockServiceClient<Channel>,
    actor: &mut LockServiceClient<Channel>,
    request: pb::WatchRequest,
    probe: &str,
) -> Streaming<pb::WatchResponse> {
    let mut events = watcher.watch(request).await.expect("watch").into_inner();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let lease = acquire(actor, probe, 60, 0).await;
        let seen = tokio::time::timeout(
            Duration::from_millis(1_500),
            until_fence(&mut events, lease.fence, |_| true),
        )
        .await
        .is_ok();
        release(actor, &lease).await;
        if seen {
            until_fence(&mut events, lease.fence, |event| {
                matches!(kind(event), EventType::Released | EventType::Expired)
            })
            .await;
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch never reported {probe}"
        );
    }
}

/// Reads events until one about the lease with `fence` that `check`
/// accepts; the events before it must be about older leases.
async fn until_fence(
    events: &mut Streaming<pb::WatchResponse>,
    fence: u64,
    check: impl Fn(&pb::WatchResponse) -> bool,
) {
    loop {
        let event = next(events, "the probe").await;
        let seen = event.lease.as_ref().map_or(0, |l| l.fence);
        assert!(seen <= fence, "an event after the probe's: {event:?}");
        if seen == fence && check(&event) {
            return;
        }
    }
}

async fn release(client: &mut LockServiceClient<Channel>, lease: &pb::Lease) {
    let released = client
        .release(pb::ReleaseRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("release")
        .into_inner();
    assert!(released.released, "{lease:?}");
}

async fn next(events: &mut Streaming<pb::WatchResponse>, what: &str) -> pb::WatchResponse {
    tokio::time::timeout(BOUND, events.message())
        .await
        .unwrap_or_else(|_| panic!("no event for {what} within {BOUND:?}"))
        .unwrap_or_else(|e| panic!("watch failed waiting for {what}: {e}"))
        .unwrap_or_else(|| panic!("watch ended waiting for {what}"))
}

fn kind(event: &pb::WatchResponse) -> EventType {
    EventType::try_from(event.r#type).unwrap_or(EventType::Unspecified)
}

async fn acquire(
    client: &mut LockServiceClient<Channel>,
    resource: &str,
    ttl: i64,
    wait: i64,
) -> pb::Lease {
    let answer = client
        .acquire(pb::AcquireRequest {
            reason: "watched".to_string(),
            ..acquire_request(resource, ttl, wait)
        })
        .await
        .expect("acquire")
        .into_inner();
    assert!(answer.acquired, "{resource}: {answer:?}");
    answer.lease.expect("lease")
}

/// Every kind of event, caused through `actor` and watched through
/// `watcher` (the same daemon or another one on the same backend).
async fn every_event(watcher: &TestDaemon, actor: &TestDaemon) {
    let prefix = format!("watch/{}/", unique());
    let mut client = actor.client().await;
    let mut events = watching(
        &mut watcher.client().await,
        &mut client,
        pb::WatchRequest {
            prefix: prefix.clone(),
            ..Default::default()
        },
        &format!("{prefix}probe"),
    )
    .await;

    let resource = format!("{prefix}deploy");
    let lease = acquire(&mut client, &resource, 5, 0).await;
    let event = next(&mut events, "acquire").await;
    assert_eq!(kind(&event), EventType::Acquired);
    let seen = event.lease.expect("lease");
    assert_eq!(
        (seen.resource.as_str(), seen.fence, seen.reason.as_str()),
        (resource.as_str(), lease.fence, "watched")
    );
    assert!(event.observed_at.is_some());

    client
        .renew(pb::RenewRequest {
            resource: resource.clone(),
            lease_id: lease.lease_id.clone(),
            ttl: secs(60),
        })
        .await
        .expect("renew");
    let event = next(&mut events, "renew").await;
    assert_eq!(kind(&event), EventType::Renewed);

    client
        .release(pb::ReleaseRequest {
            resource: resource.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("release");
    let event = next(&mut events, "release").await;
    assert_eq!(kind(&event), EventType::Released);
    assert_eq!(event.lease.map(|l| l.fence), Some(lease.fence));

    let broken = acquire(&mut client, &resource, 60, 0).await;
    assert_eq!(
        kind(&next(&mut events, "second acquire").await),
        EventType::Acquired
    );
    client
        .force_release(pb::ForceReleaseRequest {
            resource: resource.clone(),
            reason: "stuck deploy".to_string(),
        })
        .await
        .expect("force-release");
    let event = next(&mut events, "force-release").await;
    assert_eq!(kind(&event), EventType::ForceReleased);
    assert_eq!(event.reason, "stuck deploy");
    assert!(!event.actor.is_empty(), "the actor is named");
    assert_eq!(event.lease.map(|l| l.fence), Some(broken.fence));

    // A lease left to expire; long enough to be seen by a watch that polls
    // (every second) before it lapses.
    let short = acquire(&mut client, &resource, 3, 0).await;
    assert_eq!(
        kind(&next(&mut events, "short acquire").await),
        EventType::Acquired
    );
    let event = next(&mut events, "expiry").await;
    assert_eq!(kind(&event), EventType::Expired);
    assert_eq!(event.lease.map(|l| l.fence), Some(short.fence));

    // Resources outside the prefix are not reported.
    let outside = format!("elsewhere/{}", unique());
    acquire(&mut client, &outside, 60, 0).await;
    let lease = acquire(&mut client, &format!("{prefix}second"), 60, 0).await;
    let event = next(&mut events, "acquire after one outside the prefix").await;
    assert_eq!(
        event.lease.map(|l| l.resource),
        Some(lease.resource.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_through_one_daemon() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    every_event(&daemon, &daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resource_watch_sees_only_its_resource() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let resource = format!("one/{}", unique());
    let mut events = watching(
        &mut client.clone(),
        &mut client,
        pb::WatchRequest {
            resource: resource.clone(),
            ..Default::default()
        },
        &resource,
    )
    .await;
    // A longer name with the same beginning is another resource.
    acquire(&mut client, &format!("{resource}x"), 60, 0).await;
    let lease = acquire(&mut client, &resource, 60, 0).await;
    let event = next(&mut events, "acquire").await;
    assert_eq!(event.lease.map(|l| l.lease_id), Some(lease.lease_id));
}

/// Changes elsewhere keep coming (here every few milliseconds, through the
/// same daemon): the watch still reads its selection on time and reports
/// the expiry nobody announces.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_is_reported_while_other_resources_keep_changing() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let run = unique();
    let resource = format!("lapse/{run}/watched");
    let mut events = watching(
        &mut client.clone(),
        &mut client,
        pb::WatchRequest {
            resource: resource.clone(),
            ..Default::default()
        },
        &resource,
    )
    .await;
    let short = acquire(&mut client, &resource, 2, 0).await;
    assert_eq!(
        kind(&next(&mut events, "acquire").await),
        EventType::Acquired
    );
    // Busy neighbours: acquire and release another resource until the
    // expiry is reported.
    let busy = {
        let mut client = client.clone();
        let other = format!("lapse/{run}/busy");
        tokio::spawn(async move {
            loop {
                let lease = acquire(&mut client, &other, 60, 0).await;
                release(&mut client, &lease).await;
            }
        })
    };
    let event = next(&mut events, "expiry").await;
    busy.abort();
    assert_eq!(kind(&event), EventType::Expired);
    assert_eq!(event.lease.map(|l| l.fence), Some(short.fence));
}

#[tokio::test]
async fn bad_selections_are_refused() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    for (request, words) in [
        (
            pb::WatchRequest {
                resource: "a".to_string(),
                prefix: "b".to_string(),
            },
            "not both",
        ),
        (
            pb::WatchRequest {
                resource: "bad\nname".to_string(),
                ..Default::default()
            },
            "control character",
        ),
        (
            pb::WatchRequest {
                prefix: "x".repeat(600),
                ..Default::default()
            },
            "limit",
        ),
    ] {
        let status = client.watch(request.clone()).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{request:?}");
        assert!(status.message().contains(words), "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_ends_the_stream_with_unavailable() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut client = daemon.client().await;
    let probe = format!("probe/{}", unique());
    let mut events = watching(
        &mut client.clone(),
        &mut client,
        pb::WatchRequest::default(),
        &probe,
    )
    .await;
    let stopped = tokio::time::timeout(BOUND, daemon.shutdown())
        .await
        .expect("shutdown within the bound");
    assert!(stopped.is_ok(), "{stopped:?}");
    let end = tokio::time::timeout(BOUND, events.message())
        .await
        .expect("bounded");
    let status = end.expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

/// Every event of `resource` that `events` reports up to the acquisition
/// of `marker` (a resource in the same selection), in order.
async fn events_until(
    events: &mut Streaming<pb::WatchResponse>,
    resource: &str,
    marker: &str,
) -> Vec<pb::WatchResponse> {
    let mut seen = Vec::new();
    loop {
        let event = next(events, marker).await;
        let about = event.lease.as_ref().map(|l| l.resource.clone());
        if about.as_deref() == Some(marker) {
            return seen;
        }
        if about.as_deref() == Some(resource) {
            seen.push(event);
        }
    }
}

/// A watch shows a lease's id only to its holder and to administrators:
/// another caller watching the same resource sees every event with the id
/// left empty, as in Current and List.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_shows_lease_ids_only_to_holders_and_administrators() {
    let daemon = TestDaemon::start(MEMORY, false).await;
    let mut admin = daemon.client().await;
    let mut alice = daemon.client_as("alice").await;
    let bob = daemon.client_as("bob").await;
    let prefix = format!("ids/{}/", unique());
    let request = pb::WatchRequest {
        prefix: prefix.clone(),
        ..Default::default()
    };
    let probe = format!("{prefix}probe");
    let mut by_admin = watching(&mut admin.clone(), &mut admin, request.clone(), &probe).await;
    let mut by_alice = watching(&mut alice.clone(), &mut admin, request.clone(), &probe).await;
    let mut by_bob = watching(&mut bob.clone(), &mut admin, request, &probe).await;

    let resource = format!("{prefix}deploy");
    let lease = acquire(&mut alice, &resource, 60, 0).await;
    alice
        .renew(pb::RenewRequest {
            resource: resource.clone(),
            lease_id: lease.lease_id.clone(),
            ttl: secs(600),
        })
        .await
        .expect("renew");
    release(&mut alice, &lease).await;
    let broken = acquire(&mut alice, &resource, 60, 0).await;
    admin
        .force_release(pb::ForceReleaseRequest {
            resource: resource.clone(),
            reason: "ids test".to_string(),
        })
        .await
        .expect("force-release");
    let marker = format!("{prefix}marker");
    acquire(&mut admin, &marker, 60, 0).await;

    let expected = [
        (EventType::Acquired, &lease.lease_id),
        (EventType::Renewed, &lease.lease_id),
        (EventType::Released, &lease.lease_id),
        (EventType::Acquired, &broken.lease_id),
        (EventType::ForceReleased, &broken.lease_id),
    ];
    for (who, events, shown) in [
        ("an administrator", &mut by_admin, true),
        ("the holder", &mut by_alice, true),
        ("another caller", &mut by_bob, false),
    ] {
        let seen = events_until(events, &resource, &marker).await;
        let got: Vec<(EventType, String, String)> = seen
            .iter()
            .map(|e| {
                let l = e.lease.clone().unwrap_or_default();
                (kind(e), l.lease_id, l.principal)
            })
            .collect();
        let want: Vec<(EventType, String, String)> = expected
            .iter()
            .map(|(k, id)| {
                let id = if shown { id.to_string() } else { String::new() };
                (*k, id, "alice".to_string())
            })
            .collect();
        assert_eq!(got, want, "what {who} sees");
    }
}

async fn across_daemons(backend: &str) {
    let config = format!("[backends.main]\n{backend}\n");
    let a = TestDaemon::start(&config, false).await;
    let b = TestDaemon::start(&config, false).await;
    every_event(&a, &b).await;
}

mod events_from_another_daemon {
    on_shared_engines!("watched", super::across_daemons);
}
