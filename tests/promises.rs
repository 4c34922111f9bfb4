//! Security promises of the README, each checked through a real daemon:
//! plain text is refused on a non-loopback address, lease ids never reach
//! the daemon's log at any level or in either format, certificate
//! identities from DNS and URI SANs, and the audit line of a refused renew.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, string::Ia5String,
};
use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::support::{DaemonProcess, TestDaemon, secs, stormlockd, unique};

/// Without `[tls]` and without `--insecure`, the daemon serves its
/// development PKI on loopback only: on any other address it refuses to
/// start, before it binds or creates anything, and says what to do.
#[test]
fn plain_text_on_a_non_loopback_address_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // TEST-NET-1: not an address of this machine, and never bound here.
    let out = Command::new(stormlockd())
        .args(["--listen", "192.0.2.1:7466", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("STORMLOCKD_CONFIG")
        .env_remove("STORMLOCKD_INSECURE")
        .env_remove("STORMLOCKD_DATA_DIR")
        .env_remove("STORMLOCKD_LISTEN")
        .output()
        .expect("run stormlockd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 192.0.2.1:7466 without TLS"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure"), "says what to do: {stderr}");
    assert!(
        !dir.path().join("data/tls").exists(),
        "no development PKI for a non-loopback address"
    );

    // The same settings are served on loopback (with the development PKI),
    // and plain text elsewhere only when asked for.
    let resolve = |listen: &str, insecure: bool| {
        let config = stormlockd::config::Config::parse("", "test")
            .expect("config")
            .layer(&stormlockd::config::Overrides {
                data_dir: Some(dir.path().join("resolved")),
                insecure,
                ..Default::default()
            });
        stormlockd::server::Settings::resolve(config, listen.parse().expect("address"))
            .map(|s| s.transport)
    };
    assert!(matches!(
        resolve("10.1.2.3:7466", false),
        Err(stormlockd::server::ServerError::Refused(_))
    ));
    assert!(matches!(
        resolve("[2001:db8::1]:7466", false),
        Err(stormlockd::server::ServerError::Refused(_))
    ));
    assert!(matches!(
        resolve("10.1.2.3:7466", true),
        Ok(stormlockd::server::Transport::Insecure)
    ));
    assert!(matches!(
        resolve("127.0.0.1:7466", false),
        Ok(stormlockd::server::Transport::Tls(_))
    ));
}

/// Every kind of call, at the most verbose level, in both log formats: the
/// log names the calls (so the level took effect) but never a lease id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_ids_never_reach_the_log_at_any_level() {
    for format in ["text", "json"] {
        let config = "[backends.main]\ntype = \"memory\"\n";
        let daemon = DaemonProcess::start(
            config,
            &[
                ("STORMLOCKD_LOG", "trace"),
                ("STORMLOCKD_LOG_FORMAT", format),
            ],
        )
        .await;
        let ids = every_call(daemon.client()).await;
        let log = daemon.log();
        assert!(
            log.contains("finished"),
            "{format}: the calls are logged at debug:\n{log}"
        );
        for id in &ids {
            assert_eq!(id.len(), 32, "{id:?}");
            assert!(
                !log.contains(id.as_str()),
                "{format}: lease id {id} in the log:\n{log}"
            );
        }
    }
}

/// Acquires, contends, renews, checks, lists, watches, waits, releases and
/// renews a released lease through `client` (a daemon that authenticates
/// nobody: declared principals); returns every lease id it was given.
async fn every_call(mut client: LockServiceClient<Channel>) -> Vec<String> {
    let resource = format!("logged/{}", unique());
    let acquire = |principal: &str, wait: i64| pb::AcquireRequest {
        resource: resource.clone(),
        principal: principal.to_string(),
        reason: "log test".to_string(),
        wait: if wait > 0 { secs(wait) } else { None },
        ..Default::default()
    };
    let mut watch = client
        .watch(pb::WatchRequest {
            prefix: "logged/".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let first = client
        .acquire(acquire("alice", 0))
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("granted");
    let held = client
        .acquire(acquire("bob", 0))
        .await
        .expect("contention")
        .into_inner();
    assert!(!held.acquired);
    client
        .renew(pb::RenewRequest {
            resource: resource.clone(),
            lease_id: first.lease_id.clone(),
            ttl: secs(600),
        })
        .await
        .expect("renew");
    for call in [
        pb::IsHeldRequest {
            resource: resource.clone(),
            lease_id: first.lease_id.clone(),
        },
        pb::IsHeldRequest {
            resource: resource.clone(),
            lease_id: "0".repeat(32),
        },
    ] {
        client.is_held(call).await.expect("is_held");
    }
    client
        .current(pb::CurrentRequest {
            resource: resource.clone(),
            ..Default::default()
        })
        .await
        .expect("current");
    client.list(pb::ListRequest::default()).await.expect("list");
    // A waiter, served when alice releases.
    let mut waiter = client.clone();
    let carol = acquire("carol", 30);
    let waiting = tokio::spawn(async move { waiter.acquire(carol).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .current(pb::CurrentRequest {
            resource: resource.clone(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner()
        .waiting
        == 0
    {
        assert!(Instant::now() < deadline, "the waiter never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .release(pb::ReleaseRequest {
            resource: resource.clone(),
            lease_id: first.lease_id.clone(),
        })
        .await
        .expect("release");
    let second = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiter was served")
        .expect("task")
        .expect("acquire")
        .into_inner()
        .lease
        .expect("granted to the waiter");
    let refused = client
        .renew(pb::RenewRequest {
            resource: resource.clone(),
            lease_id: first.lease_id.clone(),
            ttl: None,
        })
        .await
        .expect_err("renew of a released lease");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let denied = client
        .force_release(pb::ForceReleaseRequest {
            resource: resource.clone(),
            reason: "nobody is an administrator here".into(),
        })
        .await
        .expect_err("no administrator");
    assert_eq!(denied.code(), Code::PermissionDenied);
    client
        .release(pb::ReleaseRequest {
            resource: resource.clone(),
            lease_id: second.lease_id.clone(),
        })
        .await
        .expect("release");
    // The watch saw it all (with the ids, for nobody here is anybody).
    let event = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("an event")
        .expect("stream")
        .expect("open");
    assert!(event.lease.is_some());
    vec![first.lease_id, second.lease_id]
}

/// A CA, a server certificate for localhost, and client certificates.
struct Pki {
    dir: std::path::PathBuf,
    ca_key: KeyPair,
    ca: CertificateParams,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "promises CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).expect("write");
        let pki = Self {
            dir: dir.to_path_buf(),
            ca_key,
            ca,
        };
        pki.issue(
            "server",
            "localhost",
            vec![SanType::DnsName(ia5("localhost"))],
        );
        pki
    }

    /// Issues `file`.crt/.key with common name `cn` and the SANs `sans`.
    fn issue(&self, file: &str, cn: &str, sans: Vec<SanType>) {
        let issuer = Issuer::new(self.ca.clone(), &self.ca_key);
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        std::fs::write(self.dir.join(format!("{file}.crt")), cert.pem()).expect("write");
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).expect("write");
    }

    async fn client(&self, daemon: &TestDaemon, file: &str) -> LockServiceClient<Channel> {
        let read = |name: String| std::fs::read(self.dir.join(name)).expect("pki file");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt".into())))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                read(format!("{file}.crt")),
                read(format!("{file}.key")),
            ));
        let channel = Endpoint::from_shared(format!("https://{}", daemon.addr))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        LockServiceClient::new(channel)
    }
}

fn ia5(text: &str) -> Ia5String {
    Ia5String::try_from(text).expect("IA5 string")
}

/// A daemon with mutual TLS on `pki`, principals taken from `identity`,
/// `admins` as administrators, and its audit log in `dir`.
async fn daemon_with_identity(dir: &Path, identity: &str, admins: &str) -> TestDaemon {
    let d = dir.display();
    let config = format!(
        "[tls]\ncert = \"{d}/server.crt\"\nkey = \"{d}/server.key\"\nclient_ca = \"{d}/ca.crt\"\n\
         [auth]\nidentity = \"{identity}\"\nadmins = [{admins:?}]\n\
         [audit]\npath = \"{d}/audit.log\"\n\
         [backends.main]\ntype = \"memory\"\n"
    );
    TestDaemon::start_in(&config, false, dir).await
}

async fn principal_of(client: &mut LockServiceClient<Channel>, resource: &str) -> String {
    client
        .acquire(pb::AcquireRequest {
            resource: resource.to_string(),
            ..Default::default()
        })
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("granted")
        .principal
}

/// `identity = "dns_san"` and `"uri_san"` take the principal from the
/// client certificate's DNS or URI SAN, never from its CN, for leases and
/// administrator rights alike; a certificate without one is refused.
#[tokio::test]
async fn dns_and_uri_san_identities_through_a_daemon() {
    for (identity, name, san) in [
        (
            "dns_san",
            "deployer.ci.example.com",
            SanType::DnsName(ia5("deployer.ci.example.com")),
        ),
        (
            "uri_san",
            "spiffe://example.org/ns/ci/sa/deployer",
            SanType::URI(ia5("spiffe://example.org/ns/ci/sa/deployer")),
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(dir.path());
        let (admin_name, admin_san) = match identity {
            "dns_san" => (
                "oncall.example.com",
                SanType::DnsName(ia5("oncall.example.com")),
            ),
            _ => (
                "spiffe://example.org/oncall",
                SanType::URI(ia5("spiffe://example.org/oncall")),
            ),
        };
        // The CNs name someone else: they must not count.
        pki.issue("deployer", "cn-of-deployer", vec![san]);
        pki.issue("oncall", "oncall", vec![admin_san]);
        pki.issue("cn-only", "oncall", Vec::new());
        let daemon = daemon_with_identity(dir.path(), identity, admin_name).await;

        let mut deployer = pki.client(&daemon, "deployer").await;
        assert_eq!(
            principal_of(&mut deployer, "san/one").await,
            name,
            "{identity}"
        );
        let mut oncall = pki.client(&daemon, "oncall").await;
        assert_eq!(principal_of(&mut oncall, "san/two").await, admin_name);
        let broken = oncall
            .force_release(pb::ForceReleaseRequest {
                resource: "san/one".into(),
                reason: "san test".into(),
            })
            .await
            .expect("the SAN names an administrator")
            .into_inner()
            .released
            .expect("broken");
        assert_eq!(broken.principal, name);
        let denied = deployer
            .force_release(pb::ForceReleaseRequest {
                resource: "san/two".into(),
                reason: "san test".into(),
            })
            .await
            .expect_err("not an administrator");
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

        let mut cn_only = pki.client(&daemon, "cn-only").await;
        let refused = cn_only
            .current(pb::CurrentRequest {
                resource: "san/one".into(),
                ..Default::default()
            })
            .await
            .expect_err("no SAN of that kind");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(
            refused
                .message()
                .contains(&format!("no {identity} identity")),
            "{refused:?}"
        );
    }
}

/// A refused renew is audited as `renew_refused`: who, on what, the lease's
/// hash (never the id) and why.
#[tokio::test]
async fn a_refused_renew_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    pki.issue("alice", "alice", Vec::new());
    let daemon = daemon_with_identity(dir.path(), "cn", "ops").await;
    let mut alice = pki.client(&daemon, "alice").await;
    let lease = alice
        .acquire(pb::AcquireRequest {
            resource: "audited/renew".into(),
            ..Default::default()
        })
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("granted");
    alice
        .release(pb::ReleaseRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect("release");
    let refused = alice
        .renew(pb::RenewRequest {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
            ttl: None,
        })
        .await
        .expect_err("renew of a released lease");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let id = stormlockd::lease::LeaseId::parse(&lease.lease_id).expect("a lease id");
    let audit = dir.path().join("audit.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("\"renew_refused\"")) {
            assert!(
                !text.contains(&lease.lease_id),
                "a lease id in the audit log"
            );
            break serde_json::from_str::<serde_json::Value>(line).expect("a JSON line");
        }
        assert!(Instant::now() < deadline, "no renew_refused line:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["event"], "renew_refused", "{line}");
    assert_eq!(line["principal"], "alice", "{line}");
    assert_eq!(line["resource"], "audited/renew", "{line}");
    assert_eq!(line["lease"], id.hash(), "{line}");
    assert!(
        line["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "says why: {line}"
    );
}
