//! Identity, authorization, lease-id secrecy, force-release and the audit
//! log, on a daemon with its own CA, two teams, an operator and a token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use stormlock_api::pb::{self, lock_service_client::LockServiceClient};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::support::TestDaemon;

const CI_TOKEN: &str = "ci-token-3f9a2c7e61d04b5a";

/// A CA and client certificates for named principals, written to a dir.
struct Pki {
    dir: PathBuf,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write pki file");
}

impl Pki {
    fn new(dir: &Path, clients: &[&str]) -> Self {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca, &ca_key);
        write(&dir.join("ca.crt"), &ca_cert.pem());
        write(&dir.join("ca.key"), &ca_key.serialize_pem());
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        write(&dir.join("server.crt"), &server.pem());
        write(&dir.join("server.key"), &server_key.serialize_pem());
        for name in clients {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.distinguished_name.push(DnType::CommonName, *name);
            let cert = params.signed_by(&key, &issuer).expect("client cert");
            write(&dir.join(format!("{name}.crt")), &cert.pem());
            write(&dir.join(format!("{name}.key")), &key.serialize_pem());
        }
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Issues `file`.crt/.key with the common names `cns` (in order) and
    /// the DNS names `dns`, signed by this CA.
    fn issue(&self, file: &str, cns: &[&str], dns: &[&str]) {
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(self.dir.join("ca.key")).expect("ca key"))
                .expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let issuer = Issuer::new(ca, &ca_key);
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
                .expect("params");
        // rcgen keeps one value per attribute type: further CNs go in
        // under the CN's OID as a custom type.
        for (n, cn) in cns.iter().enumerate() {
            let kind = match n {
                0 => DnType::CommonName,
                _ => DnType::CustomDnType(vec![2, 5, 4, 3]),
            };
            params.distinguished_name.push(kind, *cn);
        }
        let cert = params.signed_by(&key, &issuer).expect("client cert");
        write(&self.dir.join(format!("{file}.crt")), &cert.pem());
        write(&self.dir.join(format!("{file}.key")), &key.serialize_pem());
    }

    fn identity(&self, name: &str) -> Identity {
        Identity::from_pem(
            std::fs::read(self.dir.join(format!("{name}.crt"))).expect("cert"),
            std::fs::read(self.dir.join(format!("{name}.key"))).expect("key"),
        )
    }
}

struct Setup {
    daemon: TestDaemon,
    pki: Pki,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), &["team-a", "team-b", "ops"]);
    let audit = dir.path().join("audit.log");
    let d = dir.path().display();
    let config = format!(
        r#"
        [tls]
        cert = "{d}/server.crt"
        key = "{d}/server.key"
        client_ca = "{d}/ca.crt"
        [audit]
        path = "{d}/audit.log"
        [auth]
        admins = ["ops"]
        default = "deny"
        [[auth.tokens]]
        principal = "ci"
        sha256 = "{hash}"
        [[auth.rules]]
        principals = ["team-a"]
        resources = ["team-a/**"]
        actions = ["*"]
        [[auth.rules]]
        principals = ["team-b"]
        resources = ["team-b/**"]
        actions = ["acquire", "release", "renew"]
        [[auth.rules]]
        principals = ["ci"]
        resources = ["ci/*"]
        actions = ["acquire", "release", "renew", "read"]
        [[auth.rules]]
        principals = ["*"]
        resources = ["**"]
        actions = ["read", "list"]
        [backends.main]
        type = "memory"
        "#,
        hash = stormlockd::auth::hash_token(CI_TOKEN),
    );
    let daemon = TestDaemon::start_in(&config, false, dir.path()).await;
    Setup {
        daemon,
        pki,
        audit,
        _dir: dir,
    }
}

impl Setup {
    async fn channel(
        &self,
        identity: Option<Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let ca = std::fs::read(self.pki.dir.join("ca.crt")).expect("ca");
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Endpoint::from_shared(format!("https://{}", self.daemon.addr))?
            .tls_config(tls)?
            .connect()
            .await
    }

    async fn client(&self, name: &str) -> LockServiceClient<Channel> {
        LockServiceClient::new(
            self.channel(Some(self.pki.identity(name)))
                .await
                .expect("connect"),
        )
    }

    async fn token_client(
        &self,
        token: &str,
    ) -> LockServiceClient<
        InterceptedService<
            Channel,
            impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + use<>,
        >,
    > {
        let channel = self.channel(None).await.expect("connect");
        let header: MetadataValue<_> = format!("Bearer {token}").parse().expect("header");
        LockServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", header.clone());
            Ok(req)
        })
    }
}

fn acquire(resource: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        resource: resource.to_string(),
        reason: format!("testing {resource}"),
        ..Default::default()
    }
}

#[tokio::test]
async fn acls_allow_and_deny_per_action_and_hide_lease_ids() {
    let s = setup().await;
    let mut a = s.client("team-a").await;
    let mut b = s.client("team-b").await;

    let lease = a
        .acquire(acquire("team-a/db"))
        .await
        .expect("allowed")
        .into_inner()
        .lease
        .expect("lease");
    assert_eq!(lease.principal, "team-a", "principal from the certificate");
    assert!(!lease.lease_id.is_empty());

    let err = a
        .acquire(acquire("team-b/db"))
        .await
        .expect_err("team-a on team-b");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("acquire") && err.message().contains("team-b/db"),
        "{}",
        err.message()
    );

    // team-b may read everything (the catch-all rule) but sees no foreign ids.
    let refused = b
        .acquire(acquire("team-a/db"))
        .await
        .expect_err("team-b on team-a");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let current = b
        .current(pb::CurrentRequest {
            resource: "team-a/db".into(),
            ..Default::default()
        })
        .await
        .expect("read allowed")
        .into_inner()
        .lease
        .expect("held");
    assert_eq!(current.principal, "team-a");
    assert!(current.lease_id.is_empty(), "ids are capabilities");
    let listed = b
        .list(pb::ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.leases.iter().all(|l| l.lease_id.is_empty()));

    // team-b may lock its own resources but not force anything.
    let lease_b = b
        .acquire(acquire("team-b/db"))
        .await
        .expect("own")
        .into_inner()
        .lease
        .expect("lease");
    let err = b
        .force_release(pb::ForceReleaseRequest {
            resource: "team-a/db".into(),
            reason: "mine now".into(),
        })
        .await
        .expect_err("not an admin");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("force-release"));

    // team-a cannot release team-b's lease even with the id (no rule for it).
    let err = a
        .release(pb::ReleaseRequest {
            resource: "team-b/db".into(),
            lease_id: lease_b.lease_id.clone(),
        })
        .await
        .expect_err("release denied");
    assert_eq!(err.code(), Code::PermissionDenied);

    // The operator sees every id.
    let mut ops = s.client("ops").await;
    let seen = ops
        .current(pb::CurrentRequest {
            resource: "team-a/db".into(),
            ..Default::default()
        })
        .await
        .expect("admin reads")
        .into_inner()
        .lease
        .expect("held");
    assert_eq!(seen.lease_id, lease.lease_id);

    // A declared principal must match the certificate.
    let mut impostor = acquire("team-a/other");
    impostor.principal = "ops".into();
    let err = a.acquire(impostor).await.expect_err("impostor");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("differs"), "{}", err.message());
}

#[tokio::test]
async fn force_release_tells_the_evicted_holder_who_and_why() {
    let s = setup().await;
    let mut a = s.client("team-a").await;
    let mut ops = s.client("ops").await;
    let lease = a
        .acquire(acquire("team-a/deploy"))
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease");
    let broken = ops
        .force_release(pb::ForceReleaseRequest {
            resource: "team-a/deploy".into(),
            reason: "INC-42 freeze".into(),
        })
        .await
        .expect("admin may force")
        .into_inner()
        .released
        .expect("a lease was broken");
    assert_eq!(broken.fence, lease.fence);
    for err in [
        a.renew(pb::RenewRequest {
            resource: "team-a/deploy".into(),
            lease_id: lease.lease_id.clone(),
            ttl: None,
        })
        .await
        .expect_err("renew after eviction"),
        a.is_held(pb::IsHeldRequest {
            resource: "team-a/deploy".into(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .expect_err("is_held after eviction"),
    ] {
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains("ops") && err.message().contains("INC-42 freeze"),
            "{}",
            err.message()
        );
    }
    let next = a
        .acquire(acquire("team-a/deploy"))
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease");
    assert!(next.fence > lease.fence);
}

#[tokio::test]
async fn tokens_authenticate_tools_and_bad_credentials_are_refused() {
    let s = setup().await;
    let mut ci = s.token_client(CI_TOKEN).await;
    let lease = ci
        .acquire(acquire("ci/build"))
        .await
        .expect("token works")
        .into_inner()
        .lease
        .expect("lease");
    assert_eq!(lease.principal, "ci");
    let err = ci
        .acquire(acquire("team-a/db"))
        .await
        .expect_err("outside its rules");
    assert_eq!(err.code(), Code::PermissionDenied);

    for token in ["wrong-token", "revoked-or-never-issued"] {
        let mut bad = s.token_client(token).await;
        let err = bad
            .current(pb::CurrentRequest {
                resource: "ci/build".into(),
                ..Default::default()
            })
            .await
            .expect_err("bad token");
        assert_eq!(err.code(), Code::Unauthenticated, "{token}");
    }

    // Neither certificate nor token.
    let mut nobody =
        LockServiceClient::new(s.channel(None).await.expect("tls without a client cert"));
    let err = nobody
        .current(pb::CurrentRequest {
            resource: "ci/build".into(),
            ..Default::default()
        })
        .await
        .expect_err("anonymous");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("certificate or bearer token"),
        "{}",
        err.message()
    );

    // A certificate from another CA fails the handshake.
    let other = tempfile::tempdir().expect("tempdir");
    let foreign = Pki::new(other.path(), &["team-a"]);
    let refused = match s.channel(Some(foreign.identity("team-a"))).await {
        Err(_) => true,
        Ok(channel) => LockServiceClient::new(channel)
            .current(pb::CurrentRequest {
                resource: "x".into(),
                ..Default::default()
            })
            .await
            .is_err(),
    };
    assert!(refused, "foreign CA");
}

#[tokio::test]
async fn audit_lines_record_every_event_without_lease_ids() {
    let s = setup().await;
    let mut a = s.client("team-a").await;
    let mut b = s.client("team-b").await;
    let mut ops = s.client("ops").await;
    let lease = a
        .acquire(acquire("team-a/audit"))
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease");
    a.acquire(acquire("team-a/audit"))
        .await
        .expect("contention is an answer");
    a.renew(pb::RenewRequest {
        resource: "team-a/audit".into(),
        lease_id: lease.lease_id.clone(),
        ttl: None,
    })
    .await
    .expect("renew");
    let _ = b.acquire(acquire("team-a/audit")).await;
    ops.force_release(pb::ForceReleaseRequest {
        resource: "team-a/audit".into(),
        reason: "audit test".into(),
    })
    .await
    .expect("force");
    let second = a
        .acquire(acquire("team-a/audit"))
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease");
    a.release(pb::ReleaseRequest {
        resource: "team-a/audit".into(),
        lease_id: second.lease_id.clone(),
    })
    .await
    .expect("release");
    let mut bad = s.token_client("nope").await;
    let _ = bad
        .current(pb::CurrentRequest {
            resource: "x".into(),
            ..Default::default()
        })
        .await;
    // A waiter that takes over an expired lease makes the daemon notice it.
    let mut short = acquire("team-a/expiring");
    short.ttl = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let expiring = a
        .acquire(short)
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease");
    let mut waiting = acquire("team-a/expiring");
    waiting.wait = Some(prost_types::Duration {
        seconds: 10,
        nanos: 0,
    });
    assert!(
        a.acquire(waiting)
            .await
            .expect("wait")
            .into_inner()
            .acquired
    );

    // The daemon writes audit lines from a writer thread: they land soon
    // after the calls return, not necessarily before.
    let expected = [
        "acquire",
        "contention",
        "renew",
        "denied",
        "force_release",
        "release",
        "unauthenticated",
        "expired",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (text, events) = loop {
        let text = std::fs::read_to_string(&s.audit).expect("audit log");
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|k| !kinds.contains(k))
            .collect();
        if missing.is_empty() {
            break (text, events);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing:?} missing from {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let acquire = events
        .iter()
        .find(|e| e["event"] == "acquire")
        .expect("acquire event");
    assert_eq!(acquire["principal"], "team-a");
    assert!(
        acquire.get("principal_declared").is_none(),
        "a certificate proved it: {acquire}"
    );
    let refused = events
        .iter()
        .find(|e| e["event"] == "unauthenticated")
        .expect("refused token");
    assert_eq!(refused["principal_declared"], true, "{refused}");
    assert_eq!(acquire["resource"], "team-a/audit");
    assert_eq!(acquire["fence"], lease.fence);
    assert!(acquire["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        acquire["lease"].as_str().map(str::len),
        Some(12),
        "a short hash"
    );
    let denied = events
        .iter()
        .find(|e| e["event"] == "denied")
        .expect("denial");
    assert_eq!(denied["principal"], "team-b");
    assert_eq!(denied["action"], "acquire");
    let expired = events
        .iter()
        .find(|e| e["event"] == "expired")
        .expect("expiry noticed");
    assert_eq!(expired["resource"], "team-a/expiring");
    assert_eq!(expired["fence"], expiring.fence);
    let forced = events
        .iter()
        .find(|e| e["event"] == "force_release")
        .expect("force");
    assert_eq!(forced["reason"], "audit test");
    assert_eq!(forced["holder"], "team-a");
    assert!(
        !text.contains(&lease.lease_id) && !text.contains(&second.lease_id),
        "no full lease id in the audit log"
    );
}

#[tokio::test]
async fn oversized_requests_are_refused_by_the_transport() {
    let s = setup().await;
    let mut a = s.client("team-a").await;
    let huge = format!("team-a/{}", "x".repeat(200_000));
    let err = a.acquire(acquire(&huge)).await.expect_err("oversized");
    assert!(
        matches!(
            err.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{err:?}"
    );
    let mut long_reason = acquire("team-a/r");
    long_reason.reason = "r".repeat(2000);
    let err = a.acquire(long_reason).await.expect_err("reason > 1 KiB");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        a.acquire(acquire("team-a/after"))
            .await
            .expect("still serving")
            .into_inner()
            .acquired
    );
}

const MEMORY: &str = "[backends.main]\ntype = \"memory\"\n";

#[tokio::test]
async fn a_declared_name_never_reveals_the_holders_lease_id() {
    // Plain text, no tokens: every caller only declares a name.
    let daemon = TestDaemon::start(MEMORY, true).await;
    let mut client = daemon.client().await;
    let mut alice = acquire("db/migrate");
    alice.principal = "alice".into();
    let granted = client.acquire(alice).await.expect("acquire").into_inner();
    let lease = granted.lease.expect("granted");
    assert!(!lease.lease_id.is_empty(), "the caller gets its own new id");

    // Someone else declares the holder's name: the contention answer names
    // the holder but hides the id (which would let them release the lock).
    let mut impostor = acquire("db/migrate");
    impostor.principal = "alice".into();
    let refused = client
        .acquire(impostor)
        .await
        .expect("acquire")
        .into_inner();
    assert!(!refused.acquired);
    let holder = refused.holder.expect("holder");
    assert_eq!(holder.principal, "alice");
    assert_eq!(holder.fence, lease.fence);
    assert!(holder.lease_id.is_empty(), "a declared name proved nothing");
    let listed = client
        .list(pb::ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.leases.len(), 1);
    assert!(listed.leases[0].lease_id.is_empty());
}

/// Settings for `config` on a loopback address (the development PKI, unless
/// the config says otherwise).
fn resolve(config: &str, data_dir: &Path) -> Result<stormlockd::server::Settings, String> {
    let config = stormlockd::config::Config::parse(config, "test")
        .map_err(|e| e.to_string())?
        .layer(&stormlockd::config::Overrides {
            data_dir: Some(data_dir.to_path_buf()),
            ..Default::default()
        });
    stormlockd::server::Settings::resolve(config, "127.0.0.1:0".parse().expect("addr"))
        .map_err(|e| e.to_string())
}

#[test]
fn rights_are_refused_on_a_daemon_that_authenticates_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), &[]);
    let server = |extra: &str| {
        format!(
            "{MEMORY}[tls]\ncert = {:?}\nkey = {:?}\n{extra}",
            pki.dir.join("server.crt"),
            pki.dir.join("server.key")
        )
    };
    for (config, named) in [
        (
            format!("insecure = true\n{MEMORY}[auth]\nadmins = [\"ops\"]\n"),
            "[auth] admins",
        ),
        (
            server(
                "[[auth.rules]]\nprincipals = [\"*\"]\nresources = [\"**\"]\nactions = [\"read\"]\n",
            ),
            "[[auth.rules]]",
        ),
    ] {
        let err = resolve(&config, dir.path()).expect_err(named);
        assert!(err.contains(named), "{err}");
        assert!(
            err.contains("client_ca") && err.contains("[[auth.tokens]]"),
            "{err}"
        );
    }
    // Unauthenticated but with no rights to claim: allowed (and warned about).
    resolve(&format!("insecure = true\n{MEMORY}"), dir.path()).expect("plain text");
    resolve(&server(""), dir.path()).expect("TLS without client CA");
    // With tokens over TLS, callers are authenticated: rights are fine.
    let tokens = format!(
        "[auth]\nadmins = [\"ops\"]\n[[auth.tokens]]\nprincipal = \"ops\"\nsha256 = \"{}\"\n",
        stormlockd::auth::hash_token(CI_TOKEN)
    );
    resolve(&server(&tokens), dir.path()).expect("tokens authenticate");
    // Over plain text a token would cross the network readable: refused,
    // rights or not.
    for config in [
        format!("insecure = true\n{MEMORY}{tokens}"),
        format!(
            "insecure = true\n{MEMORY}[[auth.tokens]]\nprincipal = \"ci\"\nsha256 = \"{}\"\n",
            stormlockd::auth::hash_token(CI_TOKEN)
        ),
    ] {
        let err = resolve(&config, dir.path()).expect_err("tokens over plain text");
        assert!(
            err.contains("[[auth.tokens]]") && err.contains("plain-text"),
            "{err}"
        );
    }
}

#[test]
fn a_star_never_grants_force_release() {
    use stormlockd::config::Action;
    let rules = |actions: &str| {
        let config = stormlockd::config::Config::parse(
            &format!(
                "[auth]\ndefault = \"deny\"\n[[auth.rules]]\nprincipals = [\"team\"]\nresources = [\"**\"]\nactions = {actions}\n"
            ),
            "test",
        )
        .expect("config");
        stormlockd::auth::Auth::from_config(&config.auth, true)
            .expect("auth")
            .acl
    };
    let star = rules("[\"*\"]");
    for action in [
        Action::Acquire,
        Action::Release,
        Action::Read,
        Action::Watch,
    ] {
        assert!(star.allows("team", action, "x"), "{action:?}");
    }
    assert!(!star.allows("team", Action::ForceRelease, "x"));
    let named = rules("[\"*\", \"force-release\"]");
    assert!(named.allows("team", Action::ForceRelease, "x"));
    assert!(named.allows("team", Action::Acquire, "x"));
}

#[tokio::test]
async fn state_is_private_and_shared_keys_or_stores_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("state/stormlock");
    let embedded = "[backends.main]\ntype = \"embedded\"\n";
    let daemon = TestDaemon::start_in(embedded, false, &data).await;
    let mut client = daemon.client().await;
    client.acquire(acquire("x")).await.expect("acquire");
    drop(client);
    drop(daemon);
    for dir in [tmp.path().join("state"), data.clone(), data.join("tls")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&data.join("locks.redb")), 0o600);
    assert_eq!(mode(&data.join("tls/ca.key")), 0o600);

    // A CA key others may read could mint administrators: refused at start.
    let key = data.join("tls/ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = resolve(embedded, &data).expect_err("refused");
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // So is a store others may read (it holds every lease id).
    let store = data.join("locks.redb");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let config = stormlockd::config::Config::parse(embedded, "test")
        .expect("config")
        .with_implicit_backend();
    let err = match stormlockd::routing::Router::connect(
        &config,
        &data,
        None,
        stormlockd::routing::Unreachable::Fail,
    )
    .await
    {
        Ok(_) => panic!("a shared store was opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("chmod 600 {}", store.display())),
        "{err}"
    );
}

/// A daemon whose rules hide things: everyone is denied `secret/**`; carol
/// may see `team-a/*` only (one level); ops is an administrator.
async fn hiding_daemon(dir: &Path) -> (TestDaemon, Pki) {
    let pki = Pki::new(dir, &["alice", "carol", "ops"]);
    let d = dir.display();
    let config = format!(
        r#"
        [tls]
        cert = "{d}/server.crt"
        key = "{d}/server.key"
        client_ca = "{d}/ca.crt"
        [audit]
        path = "{d}/audit.log"
        [auth]
        admins = ["ops"]
        default = "allow"
        [[auth.rules]]
        principals = ["*"]
        resources = ["secret/**"]
        actions = ["*"]
        effect = "deny"
        [[auth.rules]]
        principals = ["carol"]
        resources = ["team-a/*"]
        actions = ["read", "list", "watch"]
        [[auth.rules]]
        principals = ["carol"]
        resources = ["**"]
        actions = ["*"]
        effect = "deny"
        [backends.main]
        type = "memory"
        "#
    );
    (TestDaemon::start_in(&config, false, dir).await, pki)
}

async fn mtls_client(daemon: &TestDaemon, pki: &Pki, name: &str) -> LockServiceClient<Channel> {
    let ca = std::fs::read(pki.dir.join("ca.crt")).expect("ca");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost")
        .identity(pki.identity(name));
    let channel = Endpoint::from_shared(format!("https://{}", daemon.addr))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    LockServiceClient::new(channel)
}

/// Every page of `prefix` as `client` sees it, `page_size` at a time; the
/// resources, and the names the page tokens carry.
async fn list_all(
    client: &mut LockServiceClient<Channel>,
    prefix: &str,
    page_size: u32,
) -> (Vec<String>, Vec<String>) {
    let (mut seen, mut tokens) = (Vec::new(), Vec::new());
    let mut page_token = String::new();
    for _ in 0..100 {
        let page = client
            .list(pb::ListRequest {
                prefix: prefix.to_string(),
                page_size,
                page_token: page_token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        seen.extend(page.leases.into_iter().map(|l| l.resource));
        if page.next_page_token.is_empty() {
            return (seen, tokens);
        }
        let named = hex::decode(&page.next_page_token).expect("hex token");
        tokens.push(String::from_utf8(named).expect("utf-8 token"));
        page_token = page.next_page_token;
    }
    panic!("list of {prefix:?} never ended");
}

#[tokio::test]
async fn list_and_watch_show_only_what_the_caller_may_see() {
    use tokio_stream::StreamExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, pki) = hiding_daemon(dir.path()).await;
    let mut ops = mtls_client(&daemon, &pki, "ops").await;
    let held = [
        "public/a",
        "secret/x",
        "secret/y",
        "secret/z/deep",
        "team-a/x",
        "team-a/x/y",
    ];
    for resource in held {
        let granted = ops.acquire(acquire(resource)).await.expect("acquire");
        assert!(granted.into_inner().acquired, "{resource}");
    }
    let all = list_all(&mut ops, "", 100).await.0;
    assert_eq!(all, held, "an administrator sees everything");

    let mut alice = mtls_client(&daemon, &pki, "alice").await;
    let visible = ["public/a", "team-a/x", "team-a/x/y"];
    for page_size in [1, 2, 100] {
        let (seen, tokens) = list_all(&mut alice, "", page_size).await;
        assert_eq!(seen, visible, "page size {page_size}");
        for token in tokens {
            assert!(
                visible.contains(&token.as_str()),
                "a page token names a hidden lease: {token:?}"
            );
        }
    }
    for prefix in ["secret", "secret/", "secret/z/"] {
        assert_eq!(
            list_all(&mut alice, prefix, 100).await.0,
            Vec::<String>::new()
        );
    }

    let mut carol = mtls_client(&daemon, &pki, "carol").await;
    assert_eq!(
        list_all(&mut carol, "", 1).await.0,
        ["team-a/x"],
        "team-a/* does not reveal team-a/x/y"
    );
    assert_eq!(list_all(&mut carol, "team-a/", 100).await.0, ["team-a/x"]);

    // One resource the caller may not watch is refused; a prefix is filtered.
    let refused = alice
        .watch(pb::WatchRequest {
            resource: "secret/x".into(),
            ..Default::default()
        })
        .await
        .expect_err("watch of a hidden resource");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mut events = alice
        .watch(pb::WatchRequest::default())
        .await
        .expect("watch everything")
        .into_inner();
    // Wait until the watch reports something, then change a hidden and a
    // visible resource, then a marker after both: everything up to the
    // marker must be visible.
    let mut round = 0;
    loop {
        round += 1;
        assert!(round < 50, "the watch never reported anything");
        let resource = format!("public/ping-{round}");
        let lease = ops
            .acquire(acquire(&resource))
            .await
            .expect("ping")
            .into_inner()
            .lease
            .expect("granted");
        ops.release(pb::ReleaseRequest {
            resource,
            lease_id: lease.lease_id,
        })
        .await
        .expect("release ping");
        if let Ok(first) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
            let resource = first
                .expect("stream open")
                .expect("event")
                .lease
                .expect("lease")
                .resource;
            assert!(
                !resource.starts_with("secret/"),
                "the watch reported a hidden resource: {resource}"
            );
            break;
        }
    }
    for resource in ["secret/new", "public/b", "zzz/marker"] {
        ops.acquire(acquire(resource)).await.expect("acquire");
    }
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("the marker's event in time")
            .expect("stream open")
            .expect("event");
        let resource = event.lease.expect("lease").resource;
        assert!(
            !resource.starts_with("secret/"),
            "the watch reported a hidden resource: {resource}"
        );
        if resource == "zzz/marker" {
            break;
        }
    }
}

#[tokio::test]
async fn ambiguous_or_unprintable_certificate_identities_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, pki) = hiding_daemon(dir.path()).await;
    // Two CNs: which one is "the" name is the verifier's guess; an issuer
    // that lets a requester add one would let alice act as ops.
    pki.issue("two-cns", &["alice", "ops"], &[]);
    pki.issue("bidi", &["ops\u{202E}x"], &[]);
    pki.issue("control", &["ops\nx"], &[]);
    for (file, words) in [
        ("two-cns", "ambiguous"),
        ("bidi", "bidirectional"),
        ("control", "control character"),
    ] {
        let mut client = mtls_client(&daemon, &pki, file).await;
        let refused = client
            .acquire(acquire("public/cert"))
            .await
            .expect_err(file);
        assert_eq!(refused.code(), Code::Unauthenticated, "{file}: {refused:?}");
        assert!(
            refused.message().contains(words),
            "{file}: {}",
            refused.message()
        );
    }
    let mut alice = mtls_client(&daemon, &pki, "alice").await;
    assert!(
        alice
            .acquire(acquire("public/cert"))
            .await
            .expect("one CN")
            .into_inner()
            .acquired
    );
}

#[tokio::test]
async fn bidirectional_controls_are_refused_in_names_reasons_and_principals() {
    let daemon = TestDaemon::start(MEMORY, true).await;
    let mut client = daemon.client().await;
    let lookalike = |field: &str| {
        let mut req = acquire("prod/db");
        match field {
            "resource" => req.resource = "prod/\u{202E}bd".into(),
            "reason" => req.reason = "deploy \u{2066}v2\u{2069}".into(),
            _ => req.principal = "ali\u{200F}ce".into(),
        }
        req
    };
    for field in ["resource", "reason", "principal"] {
        let refused = client.acquire(lookalike(field)).await.expect_err(field);
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        assert!(
            refused.message().contains(field) && refused.message().contains("bidirectional"),
            "{field}: {}",
            refused.message()
        );
    }
    // Right-to-left text itself is a name like any other.
    assert!(
        client
            .acquire(acquire("deploy/\u{05E9}\u{05DC}\u{05D5}\u{05DD}"))
            .await
            .expect("Hebrew letters")
            .into_inner()
            .acquired
    );
}

#[tokio::test]
async fn audit_lines_mark_names_that_were_only_declared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.log");
    let config = format!(
        "{MEMORY}[audit]\npath = {:?}\n",
        audit.display().to_string()
    );
    // Plain text, no tokens: the daemon authenticates nobody.
    let daemon = TestDaemon::start_in(&config, true, dir.path()).await;
    let mut client = daemon.client().await;
    let mut request = acquire("db/declared");
    request.principal = "ops".into();
    assert!(
        client
            .acquire(request)
            .await
            .expect("acquire")
            .into_inner()
            .acquired
    );
    let mut round = 0;
    let line: serde_json::Value = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("db/declared")) {
            break serde_json::from_str(line).expect("JSON");
        }
        round += 1;
        assert!(round < 500, "no audit line for the acquisition");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["event"], "acquire");
    assert_eq!(line["principal"], "ops");
    assert_eq!(
        line["principal_declared"], true,
        "\"ops\" was claimed, not proven: {line}"
    );
}

/// Replaces `name` in `dir` with `contents` the way a Secret volume update
/// does: written aside, then renamed over the old file.
fn replace_file(dir: &Path, name: &str, contents: &[u8]) {
    let aside = dir.join(format!(".{name}.new"));
    std::fs::write(&aside, contents).expect("write");
    std::fs::rename(&aside, dir.join(name)).expect("rename");
}

async fn mtls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    name: &str,
) -> Result<Channel, String> {
    let ca = std::fs::read(pki.dir.join("ca.crt")).expect("ca");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost")
        .identity(pki.identity(name));
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5));
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// A renewed certificate (here: a whole new CA, server certificate and
/// client CA, as after a CA rotation) is served without a restart; the
/// connections made before carry on.
#[tokio::test]
async fn renewed_tls_files_are_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_dir, new_dir, live) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("live"),
    );
    for d in [&old_dir, &new_dir, &live] {
        std::fs::create_dir(d).expect("dir");
    }
    let old = Pki::new(&old_dir, &["alice"]);
    let new = Pki::new(&new_dir, &["bob"]);
    let files = ["ca.crt", "server.crt", "server.key"];
    for name in files {
        replace_file(
            &live,
            name,
            &std::fs::read(old.dir.join(name)).expect("read"),
        );
    }
    let l = live.display();
    let config = format!(
        "{MEMORY}[tls]\ncert = \"{l}/server.crt\"\nkey = \"{l}/server.key\"\nclient_ca = \"{l}/ca.crt\"\n[audit]\npath = \"/dev/null\"\n"
    );
    let daemon = TestDaemon::start_in(&config, false, dir.path()).await;
    let mut before = LockServiceClient::new(
        mtls_channel(daemon.addr, &old, "alice")
            .await
            .expect("the first certificate is served"),
    );
    assert!(
        before
            .acquire(acquire("tls/one"))
            .await
            .expect("acquire")
            .into_inner()
            .acquired
    );
    assert!(
        mtls_channel(daemon.addr, &new, "bob").await.is_err(),
        "the new CA is not trusted yet"
    );

    // The key first, then the rest: in between the set does not fit
    // together, and the daemon keeps serving the old one.
    for name in ["server.key", "server.crt", "ca.crt"] {
        replace_file(
            &live,
            name,
            &std::fs::read(new.dir.join(name)).expect("read"),
        );
    }
    let mut round = 0;
    let channel = loop {
        if let Ok(channel) = mtls_channel(daemon.addr, &new, "bob").await {
            break channel;
        }
        round += 1;
        assert!(round < 150, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut after = LockServiceClient::new(channel);
    let lease = after
        .acquire(acquire("tls/two"))
        .await
        .expect("a client of the new CA")
        .into_inner()
        .lease
        .expect("granted");
    assert_eq!(lease.principal, "bob");
    assert!(
        mtls_channel(daemon.addr, &old, "alice").await.is_err(),
        "a new connection with the old CA's certificate is refused"
    );
    assert!(
        before
            .acquire(acquire("tls/three"))
            .await
            .expect("the connection made before the renewal carries on")
            .into_inner()
            .acquired
    );
}
