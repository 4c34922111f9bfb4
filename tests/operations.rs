//! Running in production: Prometheus metrics that move with traffic, health
//! that follows the backends (and a liveness name that does not), and
//! `stormlockd check-config` catching each class of mistake.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stormlock_api::pb;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::{
    PrivateEngine, TestDaemon, metric_sample as sample, scrape_metrics as scrape,
};

/// Bound on every wait for the daemon to notice something.
const PATIENCE: Duration = Duration::from_secs(20);

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

fn acquire(resource: &str, principal: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        resource: resource.to_string(),
        principal: principal.to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let metrics = free_addr();
    let config = format!("metrics_listen = \"{metrics}\"\n[backends.main]\ntype = \"memory\"\n");
    let daemon = TestDaemon::start(&config, true).await;
    let before = scrape(metrics).await;
    assert!(
        before.contains("stormlock_build_info{version=\""),
        "{before}"
    );
    assert_eq!(sample(&before, "stormlock_acquisitions_total"), 0.0);

    let mut client = daemon.client().await;
    let granted = client
        .acquire(acquire("ops/db", "alice"))
        .await
        .expect("acquire")
        .into_inner();
    assert!(granted.acquired);
    let busy = client
        .acquire(acquire("ops/db", "bob"))
        .await
        .expect("second acquire")
        .into_inner();
    assert!(!busy.acquired);
    let refused = client
        .acquire(acquire("", "bob"))
        .await
        .expect_err("empty resource");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let lease = granted.lease.expect("lease");
    client
        .renew(pb::RenewRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
            ..Default::default()
        })
        .await
        .expect("renew");

    // A caller waiting for the lock shows in the waiters gauge.
    let mut waiter = client.clone();
    let waiting = tokio::spawn(async move {
        let mut request = acquire("ops/db", "carol");
        request.wait = Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        });
        waiter.acquire(request).await
    });
    let until = Instant::now() + PATIENCE;
    while sample(&scrape(metrics).await, "stormlock_waiters") != 1.0 {
        assert!(Instant::now() < until, "the waiter never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .release(pb::ReleaseRequest {
            resource: lease.resource,
            lease_id: lease.lease_id,
        })
        .await
        .expect("release");
    let took = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("waiter answered")
        .expect("waiter task")
        .expect("waiter acquire")
        .into_inner();
    assert!(took.acquired);

    let after = scrape(metrics).await;
    for (series, want) in [
        ("stormlock_acquisitions_total", 2.0),
        ("stormlock_contentions_total", 1.0),
        ("stormlock_renewals_total", 1.0),
        ("stormlock_force_releases_total", 0.0),
        ("stormlock_waiters", 0.0),
        ("stormlock_requests_total{rpc=\"Acquire\",code=\"OK\"}", 3.0),
        (
            "stormlock_requests_total{rpc=\"Acquire\",code=\"INVALID_ARGUMENT\"}",
            1.0,
        ),
        ("stormlock_requests_total{rpc=\"Renew\",code=\"OK\"}", 1.0),
        ("stormlock_requests_total{rpc=\"Release\",code=\"OK\"}", 1.0),
        (
            "stormlock_request_duration_seconds_count{rpc=\"Acquire\"}",
            4.0,
        ),
        (
            "stormlock_backend_request_duration_seconds_count{backend=\"main\",operation=\"release\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&after, series), want, "{series} in:\n{after}");
    }
    // Only LockService calls are counted, under known method names.
    assert!(!after.contains("grpc.health"), "{after}");
    // One client, one connection, counted while it is open.
    assert_eq!(
        sample(&after, "stormlock_connections{listener=\"api\"}"),
        1.0,
        "{after}"
    );
    drop(client);
    let until = Instant::now() + PATIENCE;
    while sample(
        &scrape(metrics).await,
        "stormlock_connections{listener=\"api\"}",
    ) != 0.0
    {
        assert!(
            Instant::now() < until,
            "the closed connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.shutdown().await.expect("clean shutdown");
}

async fn status(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let answer = health
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("health check")
        .into_inner();
    ServingStatus::try_from(answer.status).expect("known status")
}

/// Polls until the overall and the LockService status are both `want`.
async fn wait_for_health(health: &mut HealthClient<Channel>, want: ServingStatus) {
    let until = Instant::now() + PATIENCE;
    loop {
        let overall = status(health, "").await;
        let service = status(health, "stormlock.v1.LockService").await;
        if overall == want && service == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "health stayed {overall:?}/{service:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_backend_and_liveness_does_not() {
    let Some(engine) = PrivateEngine::start("redis") else {
        return;
    };
    let metrics = free_addr();
    let config = format!(
        "metrics_listen = \"{metrics}\"\n[defaults]\nbackend_timeout = \"1s\"\n\
         [backends.main]\ntype = \"redis\"\nurl = \"{}\"\n",
        engine.url
    );
    let daemon = TestDaemon::start(&config, true).await;
    let mut health = HealthClient::new(daemon.channel().await);
    wait_for_health(&mut health, ServingStatus::Serving).await;
    assert_eq!(
        status(&mut health, "liveness").await,
        ServingStatus::Serving
    );

    engine.stop();
    wait_for_health(&mut health, ServingStatus::NotServing).await;
    assert_eq!(
        status(&mut health, "liveness").await,
        ServingStatus::Serving,
        "liveness must not follow the backend"
    );
    let down = scrape(metrics).await;
    assert_eq!(
        sample(&down, "stormlock_backend_up{backend=\"main\"}"),
        0.0,
        "{down}"
    );
    assert!(
        down.lines().any(|l| l
            .starts_with("stormlock_backend_errors_total{backend=\"main\",operation=\"health\"")),
        "{down}"
    );

    engine.restart();
    wait_for_health(&mut health, ServingStatus::Serving).await;
    assert_eq!(
        status(&mut health, "liveness").await,
        ServingStatus::Serving
    );
    let up = scrape(metrics).await;
    assert_eq!(sample(&up, "stormlock_backend_up{backend=\"main\"}"), 1.0);
    daemon.shutdown().await.expect("clean shutdown");
}

/// Runs `stormlockd check-config` on `config` written to a file; returns
/// the exit code and standard output + error.
fn check_config(dir: &Path, config: &str) -> (i32, String) {
    check_config_with(dir, config, &[])
}

/// [`check_config`] with `env` set for the daemon.
fn check_config_with(dir: &Path, config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let file = dir.join("stormlock.toml");
    std::fs::write(&file, config).expect("write config");
    let out = Command::new(crate::support::stormlockd())
        .arg("check-config")
        .arg(&file)
        .env_remove("STORMLOCKD_CONFIG")
        .env("STORMLOCKD_DATA_DIR", dir)
        .envs(env.iter().copied())
        .output()
        .expect("run stormlockd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_config_catches_each_class_of_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.path().join("server.crt"), cert.cert.pem()).expect("write cert");
    let memory = "[backends.main]\ntype = \"memory\"\n";
    let closed = free_addr();
    let mut cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "TOML syntax",
            "listen = \"127.0.0.1:7466\"\n[defaults\nttl = \"1h\"\n".to_string(),
            vec!["line 2, column"],
        ),
        (
            "unknown key",
            format!("{memory}[defaults]\nttl = \"1h\"\ntll = \"2h\"\n"),
            vec!["line 5", "tll"],
        ),
        (
            "bad duration",
            format!("{memory}[defaults]\nttl = \"5 fortnights\"\n"),
            vec!["line 4", "ttl", "fortnights"],
        ),
        (
            "unknown backend in a resource rule",
            format!("{memory}[[resources]]\nmatch = \"prod/*\"\nbackend = \"disk\"\n"),
            vec!["resources[0].backend", "disk"],
        ),
        (
            "bad glob",
            format!("{memory}[[resources]]\nmatch = \"prod/[\"\n"),
            vec!["line 4", "match", "prod/["],
        ),
        (
            "bad auth rule",
            format!(
                "{memory}[[auth.rules]]\nprincipals = [\"*\"]\nresources = [\"*\"]\nactions = [\"fly\"]\n"
            ),
            vec!["line 6", "actions", "fly"],
        ),
        (
            "missing TLS certificate",
            format!("{memory}[tls]\ncert = \"nope.crt\"\nkey = \"nope.key\"\n"),
            vec!["nope.crt"],
        ),
        (
            "TLS key file without a key",
            format!("{memory}[tls]\ncert = \"server.crt\"\nkey = \"server.crt\"\n"),
            vec!["server.crt", "no PEM private key"],
        ),
    ];
    if cfg!(feature = "redis") {
        cases.push((
            "unreachable backend",
            format!("[backends.main]\ntype = \"redis\"\nurl = \"redis://{closed}/\"\n"),
            vec!["\"main\"", "unavailable"],
        ));
    }
    for (class, config, wanted) in cases {
        let (code, text) = check_config(dir.path(), &config);
        assert_ne!(code, 0, "{class}: accepted\n{config}");
        assert!(
            !text.contains("panicked"),
            "{class}: panicked instead of an error: {text}"
        );
        for want in wanted {
            assert!(
                text.contains(want),
                "{class}: {want:?} missing from {text:?}"
            );
        }
    }
    let (code, text) = check_config(dir.path(), memory);
    assert_eq!(code, 0, "a valid config: {text}");
    assert!(text.contains("ok"), "{text}");

    // The routing table, for comparing daemons before a rollout, with the
    // warning about moving resources between backends.
    let routed = "[backends.main]\ntype = \"memory\"\n[backends.other]\ntype = \"memory\"\n\
                  [[resources]]\nmatch = \"prod/*\"\nbackend = \"other\"\n";
    let (code, text) = check_config(dir.path(), routed);
    assert_eq!(code, 0, "a valid config: {text}");
    let rule = text
        .lines()
        .find(|l| l.contains("prod/*"))
        .unwrap_or_default();
    assert!(rule.ends_with("-> other"), "{text}");
    assert!(
        text.contains("(anything else)") && text.contains("-> main"),
        "{text}"
    );
    assert!(text.contains("Routing changes"), "{text}");
}

/// The plain-text `health_listen` serves `grpc.health.v1.Health` and
/// nothing else: no LockService, no reflection, even in plain text to a
/// daemon whose API port takes only mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_port_serves_only_health() {
    let health_addr = free_addr();
    let config = format!("health_listen = \"{health_addr}\"\n[backends.main]\ntype = \"memory\"\n");
    let daemon = TestDaemon::start(&config, false).await;
    let until = Instant::now() + PATIENCE;
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://{health_addr}"))
            .expect("endpoint")
            .connect()
            .await
        {
            Ok(channel) => break channel,
            Err(e) => assert!(Instant::now() < until, "health port: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut health = HealthClient::new(channel.clone());
    wait_for_health(&mut health, ServingStatus::Serving).await;
    assert_eq!(
        status(&mut health, "liveness").await,
        ServingStatus::Serving
    );

    let mut locks = pb::lock_service_client::LockServiceClient::new(channel.clone());
    let refused = locks
        .acquire(acquire("health/port", "alice"))
        .await
        .expect_err("LockService on the health port");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    let refused = locks
        .list(pb::ListRequest::default())
        .await
        .expect_err("LockService on the health port");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let refused = reflection
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .expect_err("reflection on the health port");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");

    // Nothing was acquired through it.
    let current = daemon
        .client()
        .await
        .current(pb::CurrentRequest {
            resource: "health/port".into(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner();
    assert_eq!(current.lease, None);
    daemon.shutdown().await.expect("clean shutdown");
}

/// The JSON lines of a log; every line must be one.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Whether `line` is the debug line that ends a `Current` call.
fn finished_current(line: &serde_json::Value) -> bool {
    line["level"] == "DEBUG"
        && line["message"] == "finished"
        && line["span"]["rpc"] == "Current"
        && line["code"].is_string()
        && line["elapsed_ms"].is_number()
}

/// Whether `line` is an HTTP/2 library's debug line.
fn h2_debug(line: &serde_json::Value) -> bool {
    line["level"] == "DEBUG" && line["target"].as_str().is_some_and(|t| t.starts_with("h2"))
}

/// `--log-format` and `--log-level` (and their variables): text by default
/// at `info`; JSON lines on request; a bare level for the daemon alone, a
/// full filter as given.
#[test]
fn log_format_and_level_switches() {
    use crate::e2e::Daemon;
    // Runs one call, stops the daemon (every line written) and returns its log.
    let logged = |args: &[&str]| {
        let mut daemon = Daemon::start_with(args);
        daemon.cli(&["current", "log/x"]).exit(1);
        daemon.terminate();
        daemon.log()
    };

    let log = logged(&[]);
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains("finished"), "no debug lines at info: {log}");
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()),
        "text, not JSON: {log}"
    );

    let log = logged(&["--log-format", "json", "--log-level", "debug"]);
    let lines = json_lines(&log);
    assert!(lines.iter().any(finished_current), "{log}");
    assert!(
        !lines.iter().any(h2_debug),
        "a bare level leaves the libraries at info: {log}"
    );

    let log = logged(&["--log-format", "json", "--log-level", "h2=debug,info"]);
    let lines = json_lines(&log);
    assert!(lines.iter().any(h2_debug), "a full filter as given: {log}");
    assert!(!lines.iter().any(finished_current), "{log}");

    let log = logged(&["--log-level", "warn"]);
    assert!(!log.contains("listening"), "nothing below warn: {log}");
}

/// The same switches from `STORMLOCKD_LOG` and `STORMLOCKD_LOG_FORMAT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_switches_from_the_environment() {
    let daemon = crate::support::DaemonProcess::start(
        "[backends.main]\ntype = \"memory\"\n",
        &[
            ("STORMLOCKD_LOG", "debug"),
            ("STORMLOCKD_LOG_FORMAT", "json"),
        ],
    )
    .await;
    let mut client = daemon.client();
    client
        .current(pb::CurrentRequest {
            resource: "log/env".into(),
            ..Default::default()
        })
        .await
        .expect("current");
    let until = Instant::now() + PATIENCE;
    loop {
        let log = daemon.log();
        // The line being written may be incomplete.
        let mut lines = log.lines().filter_map(|l| serde_json::from_str(l).ok());
        if lines.any(|l: serde_json::Value| finished_current(&l)) {
            return;
        }
        assert!(Instant::now() < until, "no finished line:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A daemon that starts while an engine is unreachable starts anyway: it
/// serves its other backends, answers UNAVAILABLE for that engine's
/// resources, reports it NOT_SERVING under its own health name (the overall
/// status stays SERVING: another backend answers), and connects by itself
/// once the engine is reachable. It used to exit at start, so every pod
/// started during an outage crash-looped.
mod start_with_an_engine_down {
    use super::*;
    use crate::proxy::{Fault, FaultProxy, address_in, proxied, upstream_of};

    async fn starts_and_connects_later(backend: &str) {
        // A proxy that resets every connection in front of the engine.
        let proxy = FaultProxy::start(upstream_of(&address_in(backend))).await;
        proxy.set(Fault::Reset);
        let proxied = proxied(backend, &proxy);
        assert_ne!(proxied, backend, "the address was not rewritten");
        let config = format!(
            "[backends.main]\ntype = \"memory\"\n\
             [[resources]]\nmatch = \"remote/**\"\nbackend = \"remote\"\n\
             [backends.remote]\n{proxied}\n"
        );
        let daemon = TestDaemon::start(&config, false).await;
        let mut client = daemon.client().await;
        let mut health = HealthClient::new(daemon.channel().await);

        let local = client
            .acquire(pb::AcquireRequest {
                resource: format!("local/{}", crate::support::unique()),
                ..Default::default()
            })
            .await
            .expect("the other backend is served")
            .into_inner();
        assert!(local.acquired, "{local:?}");
        let remote = format!("remote/{}", crate::support::unique());
        let refused = client
            .acquire(pb::AcquireRequest {
                resource: remote.clone(),
                ..Default::default()
            })
            .await
            .expect_err("the engine is unreachable");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("remote"),
            "names the backend: {refused:?}"
        );
        let until = Instant::now() + PATIENCE;
        while status(&mut health, "stormlock.backend.remote").await != ServingStatus::NotServing {
            assert!(
                Instant::now() < until,
                "the unreachable backend is not reported"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            status(&mut health, "stormlock.backend.main").await,
            ServingStatus::Serving
        );
        wait_for_health(&mut health, ServingStatus::Serving).await;

        // The engine becomes reachable: the daemon connects by itself.
        proxy.set(Fault::None);
        let until = Instant::now() + 3 * PATIENCE;
        let granted = loop {
            match client
                .acquire(pb::AcquireRequest {
                    resource: remote.clone(),
                    ..Default::default()
                })
                .await
            {
                Ok(answer) => break answer.into_inner(),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    assert!(Instant::now() < until, "never connected: {status:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert!(granted.acquired, "{granted:?}");
        let until = Instant::now() + PATIENCE;
        while status(&mut health, "stormlock.backend.remote").await != ServingStatus::Serving {
            assert!(Instant::now() < until, "the backend stays NOT_SERVING");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        daemon.shutdown().await.expect("clean shutdown");
    }

    on_shared_engines!("down_at_start", starts_and_connects_later);
}

/// `check-config` creates no table: with `create_table = true` (the
/// default) it says a missing table is created at the daemon's first start,
/// and leaves it missing (the same check with `create_table = false` still
/// finds it missing); once a daemon created it, the check finds it.
async fn check_config_creates_no_table(backend: &str, env: &[(&str, &str)], table: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!("[audit]\npath = \"/dev/null\"\n[backends.main]\n{backend}\n");
    let (code, text) = check_config_with(dir.path(), &config, env);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "{table:?} does not exist yet; the daemon creates it at its first start"
        )),
        "{text}"
    );
    let strict = format!("{config}create_table = false\n");
    let (code, text) = check_config_with(dir.path(), &strict, env);
    assert_eq!(code, 1, "check-config created {table}: {text}");
    assert!(
        text.contains("does not exist") || text.contains("doesn't exist"),
        "{text}"
    );

    let daemon = crate::support::DaemonProcess::start(&config, env).await;
    drop(daemon);
    let (code, text) = check_config_with(dir.path(), &strict, env);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("main (") && text.contains("): answers\n"),
        "{text}"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn check_config_creates_no_postgres_table() {
    let Some(url) = crate::support::engine_url("STORMLOCK_TEST_POSTGRES_URL") else {
        return;
    };
    let table = format!("check_{}", crate::support::unique());
    let backend = format!("type = \"postgres\"\nurl = {url:?}\ntable = {table:?}");
    check_config_creates_no_table(&backend, &[], &table).await;
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn check_config_creates_no_mysql_table() {
    let Some(url) = crate::support::engine_url("STORMLOCK_TEST_MYSQL_URL") else {
        return;
    };
    let table = format!("check_{}", crate::support::unique());
    let backend = format!("type = \"mysql\"\nurl = {url:?}\ntable = {table:?}");
    check_config_creates_no_table(&backend, &[], &table).await;
}

#[cfg(feature = "dynamodb")]
#[tokio::test]
async fn check_config_creates_no_dynamodb_table() {
    let Some(endpoint) = crate::support::engine_url("STORMLOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let table = format!("check-{}", crate::support::unique());
    let backend = format!(
        "type = \"dynamodb\"\nendpoint = {endpoint:?}\ntable = {table:?}\nregion = \"us-east-1\""
    );
    check_config_creates_no_table(&backend, crate::exclusion::DYNAMODB_ENV, &table).await;
}
