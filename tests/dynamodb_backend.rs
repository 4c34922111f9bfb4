//! The DynamoDB backend beyond the conformance suite, against moto: its
//! configuration, the table it creates, fences that survive DynamoDB's TTL
//! cleanup, and an engine that stops answering.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_dynamodb::config::Region;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, TimeToLiveStatus, WriteRequest,
};
use stormlockd::backend::dynamodb::{DynamodbBackend, DynamodbConfig};
use stormlockd::backend::{Backend, BackendError};
use stormlockd::lease::{Acquisition, Lease, LeaseId, LeaseStatus};

use crate::conformance::{request, unique};
use crate::support::{PrivateEngine, dynamodb_emulator as loader, engine_url};

const REGION: &str = "us-east-1";

/// Hang guard: far beyond the call timeouts the tests configure, so that
/// only a call that never ends trips it (how fast is for the benchmarks).
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A table name no other test uses.
pub fn fresh_table() -> String {
    format!("stormlock-test-{}", &LeaseId::generate().expose()[..12])
}

/// Settings for `table` on the emulator. The call timeout is generous: moto
/// loads its DynamoDB module on the first request, which takes seconds on a
/// busy machine; the outage tests set their own.
fn config(endpoint: &str, table: &str) -> DynamodbConfig {
    DynamodbConfig {
        table: table.to_string(),
        region: Some(REGION.to_string()),
        endpoint: Some(endpoint.to_string()),
        timeout: Duration::from_secs(15),
        ..DynamodbConfig::default()
    }
}

/// A backend on `table` of the emulator at `endpoint`, creating the table.
pub async fn connect(endpoint: &str, table: &str) -> Result<DynamodbBackend, BackendError> {
    DynamodbBackend::connect_with("test", &config(endpoint, table), loader()).await
}

/// A plain SDK client on the emulator, to look at and tamper with items the
/// way an operator or DynamoDB's TTL cleanup would.
async fn raw_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let sdk = loader()
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&sdk)
}

fn key(resource: &str, kind: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (
            "resource".to_string(),
            AttributeValue::S(resource.to_string()),
        ),
        ("kind".to_string(), AttributeValue::S(kind.to_string())),
    ])
}

async fn get_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    resource: &str,
    kind: &str,
) -> Option<HashMap<String, AttributeValue>> {
    client
        .get_item()
        .table_name(table)
        .set_key(Some(key(resource, kind)))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item()
        .cloned()
}

async fn delete_item(client: &aws_sdk_dynamodb::Client, table: &str, resource: &str, kind: &str) {
    client
        .delete_item()
        .table_name(table)
        .set_key(Some(key(resource, kind)))
        .send()
        .await
        .expect("DeleteItem");
}

fn number(item: &HashMap<String, AttributeValue>, attr: &str) -> u64 {
    match item.get(attr) {
        Some(AttributeValue::N(n)) => n.parse().expect("number"),
        other => panic!("{attr}: {other:?}"),
    }
}

async fn granted(backend: &dyn Backend, resource: &str, ttl_secs: u64) -> Lease {
    match backend.acquire(&request(resource, "alice", ttl_secs)).await {
        Ok(Acquisition::Granted(lease)) => lease,
        other => panic!("expected {resource} to be granted, got {other:?}"),
    }
}

/// A loopback address where nothing listens.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn assert_config_error(result: Result<DynamodbBackend, BackendError>, words: &[&str]) {
    match result {
        Err(err @ BackendError::Config { .. }) => {
            let message = err.to_string();
            for word in words {
                assert!(message.contains(word), "{word:?} not in {message:?}");
            }
        }
        Err(other) => panic!("expected a configuration error, got {other:?}"),
        Ok(_) => panic!("expected a configuration error, got a backend"),
    }
}

#[tokio::test]
async fn invalid_table_name_is_refused() {
    // Refused before any network call, so no engine is needed.
    for table in ["ab", "with space", "ünïcode", &"x".repeat(256)] {
        let result =
            DynamodbBackend::connect_with("test", &config(&dead_endpoint(), table), loader()).await;
        assert_config_error(result, &["table"]);
    }
}

#[tokio::test]
async fn config_from_toml() {
    let config: stormlockd::backend::BackendConfig = toml::from_str(
        "type = \"dynamodb\"\ntable = \"locks\"\nregion = \"eu-west-1\"\ncreate_table = false\ntimeout = \"5s\"",
    )
    .expect("config");
    assert_eq!(config.kind(), "dynamodb");
    let unknown = toml::from_str::<stormlockd::backend::BackendConfig>(
        "type = \"dynamodb\"\nendpoint_url = \"x\"",
    );
    let message = unknown.map(|_| ()).unwrap_err().to_string();
    assert!(message.contains("endpoint_url"), "{message}");
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable() {
    let mut config = config(&dead_endpoint(), &fresh_table());
    config.timeout = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(1);
    let result = tokio::time::timeout(
        HANG_GUARD,
        DynamodbBackend::connect_with("test", &config, loader()),
    )
    .await
    .expect("connect must not hang");
    assert!(
        matches!(result, Err(BackendError::Unavailable { .. })),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn missing_table_without_create_table_is_a_clear_error() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let table = fresh_table();
    let mut config = config(&endpoint, &table);
    config.create_table = false;
    let result = DynamodbBackend::connect_with("test", &config, loader()).await;
    assert_config_error(result, &[&table, "does not exist", "create_table"]);
    let tables = raw_client(&endpoint)
        .await
        .list_tables()
        .send()
        .await
        .expect("ListTables");
    assert!(
        !tables.table_names().contains(&table),
        "nothing was created"
    );
}

#[tokio::test]
async fn creates_the_table_with_ttl_cleanup_and_reuses_it() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let table = fresh_table();
    let first = connect(&endpoint, &table).await.expect("create");
    let resource = unique("dynamodb/create");
    let lease = granted(&first, &resource, 60).await;

    let client = raw_client(&endpoint).await;
    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .expect("DescribeTimeToLive");
    let ttl = ttl.time_to_live_description().expect("TTL description");
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
    assert_eq!(ttl.attribute_name(), Some("cleanup_at"));

    // The lease item is cleaned up an hour after expiry; the record item,
    // which holds the fence counter, never.
    let item = get_item(&client, &table, &resource, "lease")
        .await
        .expect("lease item");
    let expires = number(&item, "expires_ms");
    assert_eq!(number(&item, "cleanup_at"), expires.div_ceil(1000) + 3600);
    let record = get_item(&client, &table, &resource, "record")
        .await
        .expect("record item");
    assert_eq!(number(&record, "fence"), lease.fence);
    assert!(!record.contains_key("cleanup_at"), "{record:?}");

    // Other daemons find the table as it is, with or without create_table.
    let second = connect(&endpoint, &table).await.expect("reuse");
    assert_eq!(
        second.current(&resource).await.expect("current"),
        Some(lease.clone())
    );
    let mut config = config(&endpoint, &table);
    config.create_table = false;
    let third = DynamodbBackend::connect_with("test", &config, loader())
        .await
        .expect("existing");
    assert_eq!(
        third.current(&resource).await.expect("current"),
        Some(lease)
    );
    third.health().await.expect("healthy");
}

#[tokio::test]
async fn table_with_another_key_schema_is_refused() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let table = fresh_table();
    raw_client(&endpoint)
        .await
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .send()
        .await
        .expect("CreateTable");
    assert_config_error(connect(&endpoint, &table).await, &[&table, "key schema"]);
}

/// The SDK retries a write whose answer was lost. A release whose first
/// attempt had applied must still answer "released" to its holder, and a
/// release of a lease someone else had already freed must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_answer_is_lost_is_reported_as_done() {
    use crate::proxy::{Fault, FaultProxy, through, upstream_of};
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let proxy = FaultProxy::start(upstream_of(&endpoint)).await;
    let backend = connect(&through(&endpoint, proxy.addr), &fresh_table())
        .await
        .expect("connect");
    let resource = unique("dynamodb/release-lost");
    let lease = granted(&backend, &resource, 60).await;
    // Only a release (or force-release) writes `:released`; the first
    // connection that carries it is reset after moto applied the write.
    proxy.set(Fault::ResetOnceAfter(b":released"));
    let released = backend.release(&resource, &lease.id).await;
    assert_eq!(proxy.fault(), Fault::None, "the release met the fault");
    assert!(
        matches!(released, Ok(true)),
        "the holder's own release: {released:?}"
    );
    assert!(matches!(
        backend.status(&resource, &lease.id).await,
        Ok(LeaseStatus::NotCurrent { evicted: None })
    ));
    // A second release of the same lease is not its holder's release.
    assert!(matches!(
        backend.release(&resource, &lease.id).await,
        Ok(false)
    ));
}

/// Likewise a force-release, a transaction the SDK retries: the
/// administrator learns whom they evicted, not that nothing was held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_release_whose_answer_is_lost_reports_the_eviction() {
    use crate::proxy::{Fault, FaultProxy, through, upstream_of};
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let proxy = FaultProxy::start(upstream_of(&endpoint)).await;
    let backend = connect(&through(&endpoint, proxy.addr), &fresh_table())
        .await
        .expect("connect");
    let resource = unique("dynamodb/force-lost");
    let lease = granted(&backend, &resource, 60).await;
    proxy.set(Fault::ResetOnceAfter(b":released"));
    let broken = backend.force_release(&resource, "ops", "stuck").await;
    assert_eq!(
        proxy.fault(),
        Fault::None,
        "the force-release met the fault"
    );
    assert!(
        matches!(&broken, Ok(Some(evicted)) if evicted.id == lease.id),
        "the eviction: {broken:?}"
    );
    assert!(matches!(
        backend.status(&resource, &lease.id).await,
        Ok(LeaseStatus::NotCurrent { evicted: Some(_) })
    ));
}

/// DynamoDB's TTL cleanup deletes lease items some time after they expire;
/// deleting them by hand must not let a fence go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_survives_deletion_of_the_lease_item() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let table = fresh_table();
    let backend = connect(&endpoint, &table).await.expect("connect");
    let client = raw_client(&endpoint).await;
    let resource = unique("dynamodb/ttl");

    let first = granted(&backend, &resource, 1).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    delete_item(&client, &table, &resource, "lease").await;
    let second = granted(&backend, &resource, 60).await;
    assert!(
        second.fence > first.fence,
        "{} after {}",
        second.fence,
        first.fence
    );

    // Even a live lease whose item vanished (an operator's mistake) leaves
    // the counter intact.
    delete_item(&client, &table, &resource, "lease").await;
    let third = granted(&backend, &resource, 60).await;
    assert!(
        third.fence > second.fence,
        "{} after {}",
        third.fence,
        second.fence
    );
    assert!(matches!(
        backend.status(&resource, &third.id).await,
        Ok(LeaseStatus::Current(_))
    ));
}

/// If the record item holding the counter is lost, the fence of the lease
/// item still bounds the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_survives_deletion_of_the_record_item() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let table = fresh_table();
    let backend = connect(&endpoint, &table).await.expect("connect");
    let client = raw_client(&endpoint).await;
    let resource = unique("dynamodb/record");

    let mut last = 0;
    for _ in 0..3 {
        let req = request(&resource, "alice", 60);
        let Ok(Acquisition::Granted(lease)) = backend.acquire(&req).await else {
            panic!("acquire")
        };
        last = lease.fence;
        assert!(backend.release(&resource, &req.id).await.expect("release"));
    }
    let lapsed = granted(&backend, &resource, 1).await;
    assert!(lapsed.fence > last);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    delete_item(&client, &table, &resource, "record").await;
    let next = granted(&backend, &resource, 60).await;
    assert!(
        next.fence > lapsed.fence,
        "{} after {}",
        next.fence,
        lapsed.fence
    );
}

/// Stored values nobody should have written are reported, not trusted.
#[tokio::test]
async fn corrupt_item_is_an_internal_error() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let table = fresh_table();
    let backend = connect(&endpoint, &table).await.expect("connect");
    let resource = unique("dynamodb/corrupt");
    let mut item = key(&resource, "lease");
    item.insert(
        "lease_id".into(),
        AttributeValue::S("not-a-lease-id".into()),
    );
    item.insert("expires_ms".into(), AttributeValue::N(u64::MAX.to_string()));
    raw_client(&endpoint)
        .await
        .put_item()
        .table_name(&table)
        .set_item(Some(item))
        .send()
        .await
        .expect("PutItem");
    assert!(matches!(
        backend.current(&resource).await,
        Err(BackendError::Internal { .. })
    ));
}

/// Listing follows DynamoDB's paging: more than 1 MB of leases spans several
/// scan pages, and the answer is still complete and ordered.
#[tokio::test]
async fn list_pages_through_a_large_table() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let table = fresh_table();
    let backend = connect(&endpoint, &table).await.expect("connect");
    let client = raw_client(&endpoint).await;
    let base = unique("dynamodb/pages");
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    // 160 leases of about 10 KB each, written in batches of 25.
    let names: Vec<String> = (0..160).map(|i| format!("{base}/{i:03}")).collect();
    for chunk in names.chunks(25) {
        let writes = chunk.iter().map(|name| {
            let mut item = key(name, "lease");
            item.insert(
                "lease_id".into(),
                AttributeValue::S(LeaseId::generate().expose().to_string()),
            );
            item.insert("principal".into(), AttributeValue::S("bulk".into()));
            item.insert("reason".into(), AttributeValue::S("r".repeat(10_000)));
            item.insert("acquired_ms".into(), AttributeValue::N(now_ms.to_string()));
            item.insert(
                "expires_ms".into(),
                AttributeValue::N((now_ms + 600_000).to_string()),
            );
            item.insert("fence".into(), AttributeValue::N("1".into()));
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .expect("put");
            WriteRequest::builder().put_request(put).build()
        });
        client
            .batch_write_item()
            .request_items(&table, writes.collect())
            .send()
            .await
            .expect("BatchWriteItem");
    }
    let scan = client.scan().table_name(&table).send().await.expect("Scan");
    assert!(
        scan.last_evaluated_key().is_some(),
        "the table spans several scan pages"
    );

    let all = backend
        .list(&format!("{base}/"), None, 1_000)
        .await
        .expect("list");
    let got: Vec<_> = all.iter().map(|l| l.resource.clone()).collect();
    assert_eq!(got, names);

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = backend
            .list(&format!("{base}/"), after.as_deref(), 70)
            .await
            .expect("list");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|l| l.resource.clone());
        paged.extend(page.into_iter().map(|l| l.resource));
    }
    assert_eq!(paged, names);
}

/// A frozen or stopped engine makes calls fail with `Unavailable` rather
/// than hang, and the backend recovers when the engine is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_or_stopped_engine_is_unavailable() {
    if engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT").is_none() {
        return;
    }
    let Some(engine) = PrivateEngine::start("dynamodb") else {
        return;
    };
    let table = fresh_table();
    // The first connection creates the table and waits out moto's slow first
    // request; the one under test then has a short call timeout.
    connect(&engine.url, &table)
        .await
        .expect("create the table");
    let mut config = config(&engine.url, &table);
    config.timeout = Duration::from_secs(1);
    let backend = DynamodbBackend::connect_with("test", &config, loader())
        .await
        .expect("connect");
    let resource = unique("dynamodb/outage");
    granted(&backend, &resource, 60).await;

    engine.freeze();
    let result = tokio::time::timeout(HANG_GUARD, backend.current(&resource)).await;
    engine.thaw();
    let result = result.expect("current must not hang");
    assert!(
        matches!(result, Err(BackendError::Unavailable { .. })),
        "{result:?}"
    );
    assert!(
        backend
            .current(&resource)
            .await
            .expect("after thaw")
            .is_some()
    );

    engine.stop();
    let result = tokio::time::timeout(HANG_GUARD, backend.acquire(&request(&resource, "bob", 60)))
        .await
        .expect("acquire must not hang");
    assert!(
        matches!(result, Err(BackendError::Unavailable { .. })),
        "{result:?}"
    );
    let health = tokio::time::timeout(HANG_GUARD, backend.health())
        .await
        .expect("health must not hang");
    assert!(
        matches!(health, Err(BackendError::Unavailable { .. })),
        "{health:?}"
    );

    // moto keeps no state across restarts: once the table is back, the same
    // backend works again without reconnecting.
    engine.restart();
    assert!(matches!(
        backend.health().await,
        Err(BackendError::Unavailable { .. })
    ));
    DynamodbBackend::connect_with("test", &config, loader())
        .await
        .expect("recreate the table");
    backend.health().await.expect("healthy again");
    granted(&backend, &resource, 60).await;
}

/// Expiry on DynamoDB is judged on the daemons' clocks: a daemon whose clock
/// runs 30 s ahead would see a lease with 20 s left as expired and grant it
/// again (it did). It must notice from DynamoDB's `Date` that its clock is
/// off, grant nothing, and say so in its answer and its health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_clock_is_off_grants_nothing() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let faketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if !std::path::Path::new(faketime).exists() {
        crate::support::skip_for_want_of(&format!(
            "{faketime} (scripts/setup installs libfaketime)"
        ));
        return;
    }
    use crate::exclusion::{DYNAMODB_ENV, dynamodb_config};
    use crate::support::{DaemonProcess, acquire_request};
    let config = dynamodb_config(&endpoint, &fresh_table());
    let honest = DaemonProcess::start(&config, DYNAMODB_ENV).await;
    let mut env = DYNAMODB_ENV.to_vec();
    env.extend([
        ("LD_PRELOAD", faketime),
        ("FAKETIME", "+30s"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    let ahead = DaemonProcess::start(&config, &env).await;

    let resource = unique("clock-skew");
    let held = honest
        .client()
        .acquire(acquire_request(&resource, 20, 0))
        .await
        .expect("acquire")
        .into_inner();
    assert!(held.acquired, "{held:?}");

    for name in [resource.clone(), unique("clock-skew-free")] {
        let refused = ahead.client().acquire(acquire_request(&name, 20, 0)).await;
        match refused {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(status.message().contains("clock"), "{status:?}");
            }
            Ok(answer) => panic!(
                "a daemon 30 s ahead answered {:?} for {name}",
                answer.into_inner()
            ),
        }
    }
    // Health is checked every 2 s.
    let deadline = Instant::now() + HANG_GUARD;
    while ahead.health("stormlock.v1.LockService").await
        != tonic_health::pb::health_check_response::ServingStatus::NotServing
    {
        assert!(
            Instant::now() < deadline,
            "a daemon whose clock is off still reports SERVING"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ahead.log().contains("clock"),
        "the daemon says why: {}",
        ahead.log()
    );
    let still = honest
        .client()
        .current(stormlock_api::pb::CurrentRequest {
            resource: resource.clone(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner()
        .lease
        .expect("still held");
    assert_eq!(still.fence, held.lease.expect("lease").fence);
}

/// A renewal computed earlier than the one that last landed (a copy the
/// network held back while the SDK's retry applied and a newer renewal
/// followed; here, a daemon whose clock is 2 s behind, within
/// `max_clock_skew`) does not shorten the lease: it answers the lease as it
/// stands. The nemesis saw a release find its lease lapsed 0.9 s early.
#[tokio::test]
async fn an_older_renewal_never_shortens_a_newer_one() {
    let Some(endpoint) = engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let faketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if !std::path::Path::new(faketime).exists() {
        crate::support::skip_for_want_of(&format!(
            "{faketime} (scripts/setup installs libfaketime)"
        ));
        return;
    }
    use crate::exclusion::{DYNAMODB_ENV, dynamodb_config};
    use crate::support::{DaemonProcess, acquire_request};
    let config = format!(
        "{}max_clock_skew = \"5s\"\n",
        dynamodb_config(&endpoint, &fresh_table())
    );
    let honest = DaemonProcess::start(&config, DYNAMODB_ENV).await;
    let mut env = DYNAMODB_ENV.to_vec();
    env.extend([
        ("LD_PRELOAD", faketime),
        ("FAKETIME", "-2s"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    let behind = DaemonProcess::start(&config, &env).await;

    let resource = unique("older-renewal");
    let granted = honest
        .client()
        .acquire(acquire_request(&resource, 60, 0))
        .await
        .expect("acquire")
        .into_inner();
    let lease = granted.lease.expect("granted");
    let renew = || stormlock_api::pb::RenewRequest {
        resource: resource.clone(),
        lease_id: lease.lease_id.clone(),
        ttl: crate::support::secs(60),
    };
    let newer = honest
        .client()
        .renew(renew())
        .await
        .expect("renew")
        .into_inner()
        .lease
        .expect("renewed");
    let older = behind
        .client()
        .renew(renew())
        .await
        .expect("an older renewal of a current lease is no error")
        .into_inner()
        .lease
        .expect("the lease as it stands");
    let seconds = |l: &stormlock_api::pb::Lease| l.expires_at.expect("expiry").seconds;
    assert!(
        seconds(&older) >= seconds(&newer),
        "the older renewal shortened the lease: {} then {}",
        seconds(&newer),
        seconds(&older)
    );
    let now = honest
        .client()
        .current(stormlock_api::pb::CurrentRequest {
            resource: resource.clone(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner()
        .lease
        .expect("still held");
    assert!(seconds(&now) >= seconds(&newer), "{now:?} vs {newer:?}");
    assert_eq!(now.fence, lease.fence);
}
