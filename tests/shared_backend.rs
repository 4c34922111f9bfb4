//! Two daemons sharing one backend keep mutual exclusion: concurrent
//! acquirers spread over both get exactly one winner, and leases taken
//! through one daemon are seen, released and fenced through the other.

use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::transport::Channel;

use crate::support::{TestDaemon, unique};

async fn two_daemons(backend: &str) -> (TestDaemon, TestDaemon) {
    let config = format!("[backends.main]\n{backend}\n");
    (
        TestDaemon::start(&config, false).await,
        TestDaemon::start(&config, false).await,
    )
}

async fn mutual_exclusion(a: &TestDaemon, b: &TestDaemon) {
    let resource = format!("two-daemons/{}", unique());
    let clients: Vec<LockServiceClient<Channel>> = vec![a.client().await, b.client().await];
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let mut client = clients[i % 2].clone();
            let resource = resource.clone();
            tokio::spawn(async move {
                client
                    .acquire(pb::AcquireRequest {
                        resource,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner())
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let answer = task.await.expect("task").expect("acquire");
        if answer.acquired {
            winners.push(answer.lease.expect("lease"));
        } else {
            assert!(answer.holder.is_some(), "a refusal names the holder");
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner across both daemons");

    // Hand the lock back and forth: each release goes through the daemon
    // that did not grant it, each grant must raise the fence.
    let mut last = winners[0].clone();
    for round in 0..10 {
        let (mut releaser, mut acquirer) = if round % 2 == 0 {
            (clients[1].clone(), clients[0].clone())
        } else {
            (clients[0].clone(), clients[1].clone())
        };
        let released = releaser
            .release(pb::ReleaseRequest {
                resource: resource.clone(),
                lease_id: last.lease_id.clone(),
            })
            .await
            .expect("release")
            .into_inner();
        assert!(
            released.released,
            "round {round}: released through the other daemon"
        );
        let next = acquirer
            .acquire(pb::AcquireRequest {
                resource: resource.clone(),
                wait: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .expect("acquire")
            .into_inner();
        assert!(next.acquired, "round {round}");
        let lease = next.lease.expect("lease");
        assert!(
            lease.fence > last.fence,
            "round {round}: fence {} after {}",
            lease.fence,
            last.fence
        );
        last = lease;
    }
}

async fn two_daemons_keep_mutual_exclusion(backend: &str) {
    let (a, b) = two_daemons(backend).await;
    mutual_exclusion(&a, &b).await;
}

on_shared_engines!("two_daemons", two_daemons_keep_mutual_exclusion);
