//! What a connection may cost the daemon (`[connections]`): handshakes that
//! never finish, too many connections, too many calls on one connection,
//! oversized requests to every service, and the checks of the settings.

use std::net::SocketAddr;
use std::time::Duration;

use stormlock_api::pb;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{DaemonProcess, TestDaemon, free_port};

const MEMORY: &str = "[backends.main]\ntype = \"memory\"\n";

/// Bound on waits for something that should happen promptly, only so that
/// a broken daemon fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(60);

/// How long a call is given to show it is not being served. It only ever
/// has to fail to happen, so a slow machine cannot make the test fail.
const NOT_SERVED_WITHIN: Duration = Duration::from_secs(2);

/// `n` TCP connections to `addr` that never send a byte.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    idle
}

/// Waits until the daemon has closed every connection of `idle` (end of
/// stream or reset), whatever it sent before.
async fn wait_all_closed(idle: Vec<TcpStream>) {
    let closed = futures::future::join_all(idle.into_iter().map(|mut stream| async move {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }));
    tokio::time::timeout(GUARD, closed)
        .await
        .expect("the daemon closed the connections that never finished a handshake");
}

fn health_request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

async fn serving(channel: Channel) -> ServingStatus {
    HealthClient::new(channel)
        .check(health_request(""))
        .await
        .expect("health check")
        .into_inner()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_block_callers_nor_stay_open() {
    let config = format!("{MEMORY}[connections]\nhandshake_timeout = \"3s\"\n");
    let daemon = TestDaemon::start(&config, false).await;
    let idle = idle_connections(daemon.addr, 300).await;

    // A caller with a client certificate is served (and identified by it)
    // while the idle connections wait for their handshakes.
    let mut client = tokio::time::timeout(GUARD, daemon.client())
        .await
        .expect("connected despite 300 idle connections");
    let answer = tokio::time::timeout(
        GUARD,
        client.acquire(crate::support::acquire_request("idle/flood", 60, 0)),
    )
    .await
    .expect("served despite 300 idle connections")
    .expect("acquire")
    .into_inner();
    assert!(answer.acquired);
    let lease = answer.lease.expect("lease");
    assert_eq!(
        lease.principal,
        stormlock_api::paths::local_principal(),
        "the principal comes from the client certificate"
    );

    wait_all_closed(idle).await;
    // Still serving, on the connection made before and on a new one.
    client
        .release(pb::ReleaseRequest {
            resource: "idle/flood".to_string(),
            lease_id: lease.lease_id,
        })
        .await
        .expect("release");
    assert_eq!(
        serving(daemon.channel().await).await,
        ServingStatus::Serving
    );
    daemon.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_connections_must_send_the_http2_preface_in_time() {
    let health_port = free_port();
    let config = format!(
        "health_listen = \"127.0.0.1:{health_port}\"\n{MEMORY}\
         [connections]\nhandshake_timeout = \"1s\"\n"
    );
    let daemon = DaemonProcess::start(&config, &[]).await;
    let api: SocketAddr = ([127, 0, 0, 1], daemon.port).into();
    let health: SocketAddr = ([127, 0, 0, 1], health_port).into();
    let mut idle = idle_connections(api, 20).await;
    idle.extend(idle_connections(health, 20).await);
    // Part of the preface, then nothing.
    let mut partial = TcpStream::connect(api).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut partial, b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    idle.push(partial);
    wait_all_closed(idle).await;
    assert_eq!(daemon.health("").await, ServingStatus::Serving);
    let channel = Endpoint::from_shared(format!("http://{health}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("health port");
    assert_eq!(serving(channel).await, ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_next_one_waits_for_a_free_slot() {
    // The idle connections hold their slots for the whole test.
    let config =
        format!("{MEMORY}[connections]\nmax_connections = 4\nhandshake_timeout = \"5m\"\n");
    let daemon = TestDaemon::start(&config, false).await;
    let mut idle = idle_connections(daemon.addr, 4).await;

    // The kernel completes the TCP connection, but the daemon does not take
    // it: the TLS handshake gets no answer.
    let refused = tokio::time::timeout(NOT_SERVED_WITHIN, daemon.client()).await;
    assert!(
        refused.is_err(),
        "a fifth connection was served with max_connections = 4"
    );

    // One closes: its slot goes to the next connection in line.
    drop(idle.pop());
    let mut client = tokio::time::timeout(GUARD, daemon.client())
        .await
        .expect("served once a slot is free");
    let answer = client
        .acquire(crate::support::acquire_request("slots/a", 60, 0))
        .await
        .expect("acquire")
        .into_inner();
    assert!(answer.acquired);

    // Connections in use keep theirs: with the three idle ones and this
    // client, the limit is reached again.
    let refused = tokio::time::timeout(NOT_SERVED_WITHIN, daemon.client()).await;
    assert!(refused.is_err(), "a fifth connection was served");
    drop(idle);
    let channel = tokio::time::timeout(GUARD, daemon.channel())
        .await
        .expect("served once the idle connections closed");
    assert_eq!(serving(channel).await, ServingStatus::Serving);
    daemon.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_max_streams_wait_for_a_stream_of_their_connection() {
    let config = format!("{MEMORY}[connections]\nmax_streams_per_connection = 2\n");
    let daemon = TestDaemon::start(&config, false).await;
    // One channel is one HTTP/2 connection. A first call makes sure the
    // client has the daemon's settings before it opens more streams.
    let channel = daemon.channel().await;
    assert_eq!(serving(channel.clone()).await, ServingStatus::Serving);
    let mut client = pb::lock_service_client::LockServiceClient::new(channel.clone());
    let watch = |resource: &str| pb::WatchRequest {
        resource: resource.to_string(),
        ..Default::default()
    };
    // A watch's answer starts when the daemon took the call: each of these
    // holds a stream open from then on.
    let first = client
        .watch(watch("streams/a"))
        .await
        .expect("first watch")
        .into_inner();
    let second = client
        .watch(watch("streams/b"))
        .await
        .expect("second watch")
        .into_inner();

    // The third call waits in the client (HTTP/2: the daemon advertised two
    // streams), neither answered nor refused.
    let mut health = HealthClient::new(channel.clone());
    let mut third = Box::pin(health.check(health_request("")));
    let waited = tokio::time::timeout(NOT_SERVED_WITHIN, &mut third).await;
    assert!(
        waited.is_err(),
        "a third concurrent call on the connection was not held back: {waited:?}"
    );
    // Other connections are not affected.
    assert_eq!(
        serving(daemon.channel().await).await,
        ServingStatus::Serving
    );

    // A stream ends: the waiting call goes through.
    drop(first);
    let answer = tokio::time::timeout(GUARD, third)
        .await
        .expect("served once a stream was free")
        .expect("health check");
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
    drop(second);
    daemon.shutdown().await.expect("clean shutdown");
}

/// A name of 100 KiB: past the 64 KiB limit on every request.
fn oversized() -> String {
    "x".repeat(100 * 1024)
}

/// A reflection request (API `$version`, "v1" or "v1alpha") for the file
/// holding `$symbol`: `Ok(Some(()))` when answered, `Ok(None)` when the
/// call ended without an answer.
macro_rules! reflection_call {
    ($version:expr, $channel:expr, $symbol:expr) => {
        match $version {
            "v1" => reflection_call!(@call v1, $channel, $symbol),
            _ => reflection_call!(@call v1alpha, $channel, $symbol),
        }
    };
    (@call $v:ident, $channel:expr, $symbol:expr) => {{
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol($symbol)),
        };
        match ServerReflectionClient::new($channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
        {
            Err(status) => Err(status),
            Ok(answer) => answer.into_inner().message().await.map(|m| m.map(drop)),
        }
    }};
}

/// Sends a 100 KiB health check on `channel`; returns the refusal's code.
async fn oversized_health_check(channel: Channel) -> Code {
    let status = HealthClient::new(channel)
        .check(health_request(&oversized()))
        .await
        .expect_err("a 100 KiB health check was accepted");
    status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_by_health_and_reflection_too() {
    let health_port = free_port();
    let config = format!("health_listen = \"127.0.0.1:{health_port}\"\n{MEMORY}");
    let daemon = TestDaemon::start(&config, false).await;
    let channel = daemon.channel().await;

    assert_eq!(
        oversized_health_check(channel.clone()).await,
        Code::OutOfRange
    );
    assert_eq!(serving(channel.clone()).await, ServingStatus::Serving);

    // tonic-reflection ends the call without an answer when a request
    // cannot be decoded; a request within the limit is answered.
    for version in ["v1", "v1alpha"] {
        let oversized = reflection_call!(version, channel, oversized());
        assert!(
            matches!(&oversized, Ok(None))
                || matches!(&oversized, Err(s) if s.code() == Code::OutOfRange),
            "{version}: a 100 KiB reflection request was answered: {oversized:?}"
        );
        let small = reflection_call!(version, channel, "stormlock.v1.LockService".to_string());
        assert!(matches!(small, Ok(Some(()))), "{version}: {small:?}");
    }
    assert_eq!(serving(channel).await, ServingStatus::Serving);

    // The plain-text health port.
    let health = Endpoint::from_shared(format!("http://127.0.0.1:{health_port}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("health port");
    assert_eq!(
        oversized_health_check(health.clone()).await,
        Code::OutOfRange
    );
    assert_eq!(serving(health).await, ServingStatus::Serving);
    daemon.shutdown().await.expect("clean shutdown");
}

/// Runs `stormlockd check-config` on `config`; returns the exit code and
/// what it printed.
fn check_config(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stormlockd.toml");
    std::fs::write(&file, config).expect("write config");
    let out = std::process::Command::new(crate::support::stormlockd())
        .arg("check-config")
        .arg(&file)
        .env_remove("STORMLOCKD_CONFIG")
        .env("STORMLOCKD_DATA_DIR", dir.path())
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
fn check_config_refuses_bad_connection_limits() {
    let valid = format!(
        "{MEMORY}[connections]\nhandshake_timeout = \"5s\"\nmax_connections = 100\n\
         max_streams_per_connection = 50\nkeepalive_interval = \"30s\"\n\
         keepalive_timeout = \"10s\"\nmax_connection_age = \"1h\"\n\
         max_connection_age_grace = \"1m\"\n"
    );
    let (code, text) = check_config(&valid);
    assert_eq!(code, 0, "valid limits refused: {text}");

    for (setting, wanted) in [
        (
            "handshake_timeout = \"0s\"",
            "connections.handshake_timeout: must be at least 1s",
        ),
        (
            "keepalive_interval = \"0s\"",
            "connections.keepalive_interval: must be at least 1s",
        ),
        (
            "keepalive_timeout = \"0s\"",
            "connections.keepalive_timeout: must be at least 1s",
        ),
        (
            "max_connection_age = \"0s\"",
            "connections.max_connection_age: must be at least 1s",
        ),
        (
            "max_connections = 0",
            "connections.max_connections: must be between 1 and",
        ),
        (
            "max_streams_per_connection = 0",
            "connections.max_streams_per_connection: must be at least 1",
        ),
        (
            "max_connection_age_grace = \"10s\"",
            "connections.max_connection_age_grace: needs max_connection_age",
        ),
        ("handshake_timeout = \"soon\"", "soon"),
        ("max_connections = -5", "max_connections"),
        ("max_conections = 5", "max_conections"),
    ] {
        let (code, text) = check_config(&format!("{MEMORY}[connections]\n{setting}\n"));
        assert_ne!(code, 0, "{setting}: accepted");
        assert!(!text.contains("panicked"), "{setting}: {text}");
        assert!(
            text.contains(wanted),
            "{setting}: {wanted:?} missing from {text:?}"
        );
    }
}

/// A `stormlockd --insecure` process allowed `files` open files (`ulimit
/// -n`), with its metrics listener on; killed when dropped.
struct FileLimitedDaemon {
    child: std::process::Child,
    api: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
}

impl FileLimitedDaemon {
    async fn start(files: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let api: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = dir.path().join("stormlockd.toml");
        std::fs::write(&config, MEMORY).expect("write config");
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log file");
        let child = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
            .arg(crate::support::stormlockd())
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(api.to_string())
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--insecure")
            .env_remove("STORMLOCKD_CONFIG")
            .env_remove("STORMLOCKD_HEALTH_LISTEN")
            .env("STORMLOCKD_LOG", "debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn stormlockd");
        let mut daemon = Self {
            child,
            api,
            metrics,
            dir,
        };
        let started = tokio::time::timeout(GUARD, async {
            loop {
                if let Ok(Some(status)) = daemon.child.try_wait() {
                    panic!("stormlockd exited ({status}):\n{}", daemon.log());
                }
                if let Ok(channel) = daemon.endpoint().connect().await
                    && HealthClient::new(channel)
                        .check(health_request(""))
                        .await
                        .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(started.is_ok(), "stormlockd not serving:\n{}", daemon.log());
        daemon
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.api)).expect("endpoint")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Waits until the log has `text` `times` times (the daemon is alive
    /// meanwhile).
    async fn wait_for_log(&mut self, text: &str, times: usize) {
        let found = tokio::time::timeout(GUARD, async {
            while self.log().matches(text).count() < times {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("stormlockd exited ({status}):\n{}", self.log());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(found.is_ok(), "{text:?} never logged:\n{}", self.log());
    }

    /// The file descriptors the daemon has open now.
    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("the daemon's /proc/PID/fd")
            .count()
    }

    /// Sets the daemon's soft open-file limit (`prlimit`), leaving its
    /// hard limit as it is, so that it can be raised again.
    fn limit_files(&self, files: usize) {
        let status = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(self.child.id().to_string())
            .arg(format!("--nofile={files}:"))
            .status()
            .expect("run prlimit (util-linux)");
        assert!(status.success(), "prlimit: {status}");
    }
}

impl Drop for FileLimitedDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_daemon_pauses_and_recovers() {
    let mut daemon = FileLimitedDaemon::start(128).await;
    assert!(
        daemon.log().contains("open-file limit"),
        "the low limit is reported:\n{}",
        daemon.log()
    );
    // Every listener's connections fit the limit (the metrics port's few
    // too, below): what runs the daemon out of descriptors is a limit
    // lowered under it (or descriptors held elsewhere in the process). A
    // limit of 3 is below every descriptor but standard input, output and
    // error: the daemon keeps those it has and can open no other.
    daemon.limit_files(3);
    let pending = tokio::spawn({
        let endpoint = daemon.endpoint();
        async move {
            let channel = endpoint.connect().await.expect("connect");
            serving(channel).await
        }
    });
    // Several failed attempts, each after a pause (logged at debug).
    daemon.wait_for_log("accept failed; pausing", 3).await;

    daemon.limit_files(128);
    let status = tokio::time::timeout(GUARD, pending)
        .await
        .expect("served once descriptors were free")
        .expect("health check task");
    assert_eq!(status, ServingStatus::Serving);
    // A new connection is accepted, which ends any burst of failures.
    let channel = tokio::time::timeout(GUARD, daemon.endpoint().connect())
        .await
        .expect("connected")
        .expect("connect");
    assert_eq!(serving(channel).await, ServingStatus::Serving);
    assert!(matches!(daemon.child.try_wait(), Ok(None)), "still running");

    // Each burst of failures is a warning as it starts and a note as it
    // ends, however many attempts failed in between.
    let log = daemon.log();
    let bursts = log.matches("cannot accept connections").count();
    assert!(bursts >= 1, "{log}");
    assert_eq!(
        bursts,
        log.matches("accepting connections again").count(),
        "{log}"
    );
    assert!(
        log.matches("accept failed; pausing").count() > bursts,
        "one warning for several failures: {log}"
    );
}

/// The metrics port has a few slots of its own, each for a bounded time: a
/// flood of connections to it takes neither the daemon's file descriptors
/// (the API goes on serving, within a 128-file limit) nor, once connections
/// that send nothing are dropped, the scraper's turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_metrics_port_takes_no_descriptors_from_the_api() {
    let daemon = FileLimitedDaemon::start(128).await;
    let before = daemon.open_files();
    let flood = idle_connections(daemon.metrics, 200).await;
    let channel = tokio::time::timeout(GUARD, daemon.endpoint().connect())
        .await
        .expect("connected")
        .expect("connect");
    assert_eq!(serving(channel).await, ServingStatus::Serving);
    let during = daemon.open_files();
    assert!(
        during <= before + 16 + 2,
        "the flood took {} descriptors (from {before})",
        during.saturating_sub(before)
    );
    assert!(!daemon.log().contains("accept failed"), "{}", daemon.log());
    drop(flood);

    // As many silent connections as the port has slots: each is dropped
    // when it has sent nothing for 2 s, and the scraper gets its turn.
    let silent = idle_connections(daemon.metrics, 16).await;
    let text = tokio::time::timeout(GUARD, crate::support::scrape_metrics(daemon.metrics))
        .await
        .expect("scraped once the silent connections were dropped");
    assert!(
        text.contains("stormlock_connections{listener=\"metrics\"}"),
        "{text}"
    );
    wait_all_closed(silent).await;
}
