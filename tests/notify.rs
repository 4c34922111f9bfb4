//! Webhooks (`[[notify]]`) through the service, against a local receiver:
//! signed JSON and Slack text, the events chosen on the resources chosen,
//! waits announced and grants after a wait told apart, retries after a 500
//! with the same id, and a receiver that never answers slowing no call.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stormlock_api::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::support::{TestDaemon, free_port, scrape_metrics, secs, unique};

/// How the receiver answers a request.
#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    /// Reads the request and never answers.
    Hang,
}

/// A request the receiver got.
#[derive(Debug)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A webhook receiver on 127.0.0.1: answers with `script` in order, then
/// 200; every request it read goes to the channel.
struct Receiver {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(script: Vec<Reply>) -> Self {
        Self::start_with(script, None).await
    }

    /// Like [`Receiver::start`], over TLS with `tls` (HTTPS).
    async fn start_with(
        script: Vec<Reply>,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, requests) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(script.into_iter()));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let reply = script
                    .lock()
                    .expect("script")
                    .next()
                    .unwrap_or(Reply::Status(200));
                match &tls {
                    None => {
                        tokio::spawn(serve(stream, reply, tx.clone()));
                    }
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            // A client that refuses our certificate ends
                            // here, having sent nothing.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, reply, tx).await;
                            }
                        });
                    }
                }
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request (a hang guard of a minute stops a stuck test).
    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(60), self.requests.recv())
            .await
            .expect("a notification within a minute")
            .expect("the receiver runs")
    }
}

async fn serve<S>(mut stream: S, reply: Reply, tx: mpsc::UnboundedSender<Received>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(request_line.starts_with("POST "), "{request_line}");
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let _ = tx.send(Received {
        path,
        headers,
        body,
    });
    match reply {
        Reply::Status(code) => {
            let answer =
                format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
        Reply::Hang => {
            // Holds the connection open, unanswered, until the test ends.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}

fn config(notify: &str) -> String {
    format!("[backends.main]\ntype = \"memory\"\n\n[[notify]]\n{notify}\n")
}

fn acquire(resource: &str, reason: &str, wait: i64) -> pb::AcquireRequest {
    pb::AcquireRequest {
        resource: resource.to_string(),
        ttl: secs(60),
        wait: if wait > 0 { secs(wait) } else { None },
        reason: reason.to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn signed_json_of_the_chosen_events_on_the_chosen_resources() {
    let mut receiver = Receiver::start(vec![]).await;
    let secret = "s3cret-for-tests";
    let daemon = TestDaemon::start(
        &config(&format!(
            "name = \"ops\"\nurl = \"{}\"\nsecret = \"{secret}\"\n\
             events = [\"acquired\", \"force-released\"]\nmatch = [\"deploy/prod/**\"]",
            receiver.url("/hooks/stormlock?team=ops")
        )),
        false,
    )
    .await;
    let mut alice = daemon.client_as("alice").await;
    let mut admin = daemon.client().await;
    let id = unique();
    // Not chosen: another resource, and an event not listed (release).
    let other = alice
        .acquire(acquire(&format!("staging/{id}"), "try", 0))
        .await
        .expect("acquire")
        .into_inner();
    assert!(other.acquired);
    let prod = format!("deploy/prod/{id}");
    let granted = alice
        .acquire(acquire(&prod, "release 42", 0))
        .await
        .expect("acquire")
        .into_inner();
    let lease = granted.lease.expect("lease");
    alice
        .release(pb::ReleaseRequest {
            resource: prod.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("release");
    let again = alice
        .acquire(acquire(&prod, "release 43", 0))
        .await
        .expect("acquire")
        .into_inner();
    let again = again.lease.expect("lease");
    admin
        .force_release(pb::ForceReleaseRequest {
            resource: prod.clone(),
            reason: "incident 7".to_string(),
        })
        .await
        .expect("force-release");

    let mut seen = Vec::new();
    for _ in 0..3 {
        let got = receiver.next().await;
        assert_eq!(got.path, "/hooks/stormlock?team=ops");
        assert_eq!(got.header("content-type"), Some("application/json"));
        // The signature is the body's, under the secret.
        assert_eq!(
            got.header(stormlockd::notify::SIGNATURE_HEADER),
            Some(stormlockd::notify::signature(secret, &got.body).as_str()),
            "{got:?}"
        );
        let body = got.json();
        assert_eq!(
            got.header(stormlockd::notify::ID_HEADER),
            body["id"].as_str(),
            "the id header is the body's id"
        );
        let text = String::from_utf8_lossy(&got.body).to_string();
        assert!(!text.contains(&lease.lease_id) && !text.contains(&again.lease_id));
        seen.push(body);
    }
    let events: Vec<_> = seen.iter().map(|b| b["event"].as_str()).collect();
    assert_eq!(
        events,
        [Some("acquired"), Some("acquired"), Some("force-released")]
    );
    assert!(seen.iter().all(|b| b["resource"] == prod.as_str()));
    assert_eq!(seen[0]["principal"], "alice");
    assert_eq!(seen[0]["reason"], "release 42");
    assert_eq!(seen[0]["fence"], lease.fence);
    assert_eq!(seen[1]["fence"], again.fence);
    // The administrator who broke it, not its holder.
    assert!(
        seen[2]["principal"]
            .as_str()
            .is_some_and(|p| !p.is_empty() && p != "alice"),
        "{}",
        seen[2]
    );
    assert_eq!(seen[2]["reason"], "incident 7");
    assert_eq!(seen[2]["holder"], "alice");
    assert_eq!(seen[2]["holder_reason"], "release 43");
    assert_eq!(seen[2]["fence"], again.fence);
    assert_ne!(seen[0]["id"], seen[1]["id"]);
    // Nothing else was posted (the staging lock, the release).
    assert!(receiver.requests.try_recv().is_err());
}

#[tokio::test]
async fn waits_are_announced_and_grants_after_a_wait_told_apart_in_slack_text() {
    let mut receiver = Receiver::start(vec![]).await;
    let daemon = TestDaemon::start(
        &config(&format!(
            "name = \"chat\"\nurl = \"{}\"\nformat = \"slack\"\n\
             events = [\"waiting\", \"granted-after-wait\", \"released\"]",
            receiver.url("/services/T0/B0/x")
        )),
        false,
    )
    .await;
    let mut alice = daemon.client_as("alice").await;
    let mut bob = daemon.client_as("bob").await;
    let resource = format!("db/{}", unique());
    let held = alice
        .acquire(acquire(&resource, "migration", 0))
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease");
    let waiter = {
        let resource = resource.clone();
        tokio::spawn(async move {
            bob.acquire(acquire(&resource, "hotfix", 60))
                .await
                .expect("acquire")
                .into_inner()
        })
    };
    let waiting = receiver.next().await;
    assert_eq!(waiting.header(stormlockd::notify::SIGNATURE_HEADER), None);
    assert_eq!(
        waiting.json()["text"],
        format!(
            "`{resource}` waiting by bob (hotfix): held by alice, fence {}",
            held.fence
        )
    );
    alice
        .release(pb::ReleaseRequest {
            resource: resource.clone(),
            lease_id: held.lease_id.clone(),
        })
        .await
        .expect("release");
    let granted = waiter.await.expect("waiter");
    assert!(granted.acquired);
    let fence = granted.lease.expect("lease").fence;
    let mut texts = vec![
        receiver.next().await.json()["text"].clone(),
        receiver.next().await.json()["text"].clone(),
    ];
    texts.sort_by_key(|t| t.as_str().map(str::to_string));
    assert_eq!(
        texts,
        [
            serde_json::json!(format!(
                "`{resource}` granted-after-wait by bob (hotfix), fence {fence}"
            )),
            serde_json::json!(format!("`{resource}` released by alice")),
        ]
    );
}

#[tokio::test]
async fn a_failed_delivery_is_retried_with_the_same_id_and_counted() {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let mut receiver = Receiver::start(vec![Reply::Status(500), Reply::Status(503)]).await;
    let daemon = TestDaemon::start(
        &format!(
            "metrics_listen = \"{metrics}\"\n{}",
            config(&format!(
                "name = \"ops\"\nurl = \"{}\"\nevents = [\"acquired\"]",
                receiver.url("/")
            ))
        ),
        false,
    )
    .await;
    let mut client = daemon.client().await;
    let resource = format!("retry/{}", unique());
    assert!(
        client
            .acquire(acquire(&resource, "r", 0))
            .await
            .expect("acquire")
            .into_inner()
            .acquired
    );
    let first = receiver.next().await;
    let second = receiver.next().await;
    let third = receiver.next().await;
    let id = first.header(stormlockd::notify::ID_HEADER).expect("id");
    assert_eq!(second.header(stormlockd::notify::ID_HEADER), Some(id));
    assert_eq!(third.header(stormlockd::notify::ID_HEADER), Some(id));
    assert_eq!(first.body, third.body);
    // Counted once delivered; the answer to the third attempt is read
    // just before the count.
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape_metrics(metrics).await;
        if text.contains("stormlock_notifications_total{notifier=\"ops\",outcome=\"delivered\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("stormlock_notifications_total{notifier=\"ops\",outcome=\"delivered\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("stormlock_notifications_total{notifier=\"ops\",outcome=\"retried\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_receiver_that_never_answers_slows_no_call() {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let mut receiver = Receiver::start(vec![Reply::Hang; 64]).await;
    // One attempt of up to five minutes, and room for one more in line: a
    // call that waited for the receiver, or for room in the queue, would
    // wait minutes.
    let daemon = TestDaemon::start(
        &format!(
            "metrics_listen = \"{metrics}\"\n{}",
            config(&format!(
                "name = \"stuck\"\nurl = \"{}\"\nevents = [\"acquired\", \"released\"]\n\
                 timeout = \"5m\"\nqueue = 1\nattempts = 1",
                receiver.url("/")
            ))
        ),
        false,
    )
    .await;
    let mut client = daemon.client().await;
    let resource = format!("busy/{}", unique());
    let calls = async {
        for _ in 0..20 {
            let lease = client
                .acquire(acquire(&resource, "r", 0))
                .await
                .expect("acquire")
                .into_inner()
                .lease
                .expect("granted");
            let released = client
                .release(pb::ReleaseRequest {
                    resource: resource.clone(),
                    lease_id: lease.lease_id,
                })
                .await
                .expect("release")
                .into_inner();
            assert!(released.released);
        }
    };
    // A hang guard only: the calls take milliseconds; blocked behind the
    // receiver they would take five minutes.
    tokio::time::timeout(Duration::from_secs(120), calls)
        .await
        .expect("40 calls while the receiver hangs");
    // The receiver got the first notification and holds it; the rest were
    // dropped (one waits in the queue), and counted.
    let first = receiver.next().await;
    assert_eq!(first.json()["event"], "acquired");
    // 40 notifications: one held by the receiver, one in the queue, the
    // rest dropped (one more if the task had not taken the first yet).
    let text = scrape_metrics(metrics).await;
    let dropped = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("stormlock_notifications_total{notifier=\"stuck\",outcome=\"dropped\"} ")
        })
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(matches!(dropped, Some(38 | 39)), "{dropped:?}\n{text}");
}

/// The real binaries over TLS: `stormlock acquire` and `release` through
/// `stormlockd` notify the receiver configured, and SIGHUP moves the
/// notifier to another receiver and other events.
#[test]
fn the_cli_through_the_daemon_notifies_and_a_reload_moves_the_notifier() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut first = runtime.block_on(Receiver::start(vec![]));
    let mut second = runtime.block_on(Receiver::start(vec![]));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stormlockd.toml");
    let write = |receiver: &Receiver, events: &str| {
        std::fs::write(
            &file,
            config(&format!(
                "name = \"ops\"\nurl = \"{}\"\nevents = [{events}]",
                receiver.url("/")
            )),
        )
        .expect("config");
    };
    write(&first, "\"acquired\"");
    let path = file.display().to_string();
    let daemon = crate::e2e::Daemon::start_with(&["--config", &path]);
    let id = daemon
        .cli(&["acquire", "--reason", "release 42", "deploy/prod"])
        .ok()
        .line();
    let got = runtime.block_on(first.next()).json();
    assert_eq!(got["event"], "acquired");
    assert_eq!(got["resource"], "deploy/prod");
    assert_eq!(got["reason"], "release 42");

    write(&second, "\"released\"");
    let log = daemon.reload();
    assert!(log.contains("[notify]"), "{log}");
    daemon.cli(&["release", "deploy/prod", &id]).ok();
    let got = runtime.block_on(second.next()).json();
    assert_eq!(got["event"], "released");
    assert_eq!(got["resource"], "deploy/prod");
    // An acquisition goes nowhere now; the release after it goes to the
    // second receiver, by which time a notifier left on the first would
    // have posted the acquisition there too.
    let id = daemon.cli(&["acquire", "deploy/prod"]).ok().line();
    daemon.cli(&["release", "deploy/prod", &id]).ok();
    let got = runtime.block_on(second.next()).json();
    assert_eq!(got["event"], "released");
    assert!(
        first.requests.try_recv().is_err(),
        "the first receiver heard more"
    );
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, as PEM files.
fn private_pki(dir: &std::path::Path) -> stormlockd::tls::TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hooks test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("sign");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");
    stormlockd::tls::TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: None,
    }
}

/// HTTPS: a receiver whose certificate a private CA signed is reached with
/// `ca` naming that CA, and refused with the public roots (the default):
/// nothing is sent to it, and the failure is counted.
#[tokio::test]
async fn https_with_a_private_ca_and_not_without_it() {
    stormlockd::tls::install_crypto_provider();
    let pki = tempfile::tempdir().expect("tempdir");
    let files = private_pki(pki.path());
    let mut tls = (*stormlockd::tls::server_config(&files, false).expect("server TLS")).clone();
    tls.alpn_protocols.clear();
    let tls = Arc::new(tls);
    let mut trusted = Receiver::start_with(vec![], Some(tls.clone())).await;
    let mut untrusted = Receiver::start_with(vec![], Some(tls)).await;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let https = |r: &Receiver| format!("https://{}/hook", r.addr);
    let daemon = TestDaemon::start(
        &format!(
            "metrics_listen = \"{metrics}\"\n{}\n[[notify]]\nname = \"public\"\nurl = \"{}\"\n\
             events = [\"acquired\"]\nattempts = 1\n",
            config(&format!(
                "name = \"private\"\nurl = \"{}\"\nca = \"{}\"\nevents = [\"acquired\"]",
                https(&trusted),
                pki.path().join("ca.pem").display()
            )),
            https(&untrusted),
        ),
        false,
    )
    .await;
    let mut client = daemon.client().await;
    let resource = format!("tls/{}", unique());
    assert!(
        client
            .acquire(acquire(&resource, "over TLS", 0))
            .await
            .expect("acquire")
            .into_inner()
            .acquired
    );
    let got = trusted.next().await;
    assert_eq!(got.path, "/hook");
    assert_eq!(got.json()["resource"], resource.as_str());
    let failed = "stormlock_notifications_total{notifier=\"public\",outcome=\"failed\"} 1";
    let mut text = String::new();
    for _ in 0..200 {
        text = scrape_metrics(metrics).await;
        if text.contains(failed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains(failed), "{text}");
    assert!(
        untrusted.requests.try_recv().is_err(),
        "nothing reaches a server the public roots do not vouch for"
    );
}
