//! Backends over TLS with a private CA, and with credentials: engines of the
//! test's own, started with certificates generated here.

#![cfg(any(feature = "redis", feature = "etcd"))]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use stormlockd::backend::{Backend, BackendError};
use stormlockd::lease::Acquisition;

use crate::support::free_port;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stormlock test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write PEM");
        };
        write("ca.pem", ca.pem());
        for (name, sans) in [
            ("server", vec!["127.0.0.1".to_string()]),
            ("client", vec!["client".to_string()]),
        ] {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(sans).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer).expect("sign");
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// An engine process of this test; killed (by its own pid) when dropped.
struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed(binary: &str) -> bool {
    let found = Command::new("bash")
        .arg("-c")
        .arg(format!("command -v {binary}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        crate::support::skip_for_want_of(&format!("{binary} (not installed)"));
    }
    found
}

/// Starts `command` and waits (bounded) until it accepts TCP on `port`.
fn spawn(mut command: Command, port: u16, log: &Path) -> Engine {
    let log = std::fs::File::create(log).expect("log file");
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start engine");
    let engine = Engine(child);
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return engine;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("engine on port {port} did not start within 10 s");
}

async fn acquires(backend: &dyn Backend) {
    let req = crate::conformance::request(&crate::conformance::unique("tls"), "alice", 60);
    assert!(matches!(
        backend.acquire(&req).await,
        Ok(Acquisition::Granted(_))
    ));
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use stormlockd::backend::redis::{RedisBackend, RedisConfig};

    fn config(url: &str, ca_file: Option<&Path>) -> RedisConfig {
        let mut text = format!("url = {url:?}\nconnect_timeout = \"2s\"\n");
        if let Some(ca) = ca_file {
            text.push_str(&format!("ca_file = {:?}\n", ca.display().to_string()));
        }
        toml::from_str(&text).expect("config")
    }

    /// `rediss://` with a private CA and a password: works with the CA and
    /// the right password, fails clearly without either.
    #[tokio::test]
    async fn rediss_with_private_ca_and_password() {
        if !installed("redis-server") {
            return;
        }
        let pki = Pki::new();
        let port = free_port();
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(pki.path("server.pem"))
            .arg("--tls-key-file")
            .arg(pki.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(pki.path("ca.pem"))
            .args(["--requirepass", "s3cret"])
            .arg("--dir")
            .arg(pki.dir.path());
        let _engine = spawn(command, port, &pki.path("redis.log"));

        let url = format!("rediss://:s3cret@127.0.0.1:{port}/");
        let ca = pki.path("ca.pem");
        let backend = RedisBackend::connect("test", &config(&url, Some(&ca)))
            .await
            .expect("connect over TLS");
        acquires(&backend).await;
        backend.health().await.expect("healthy");

        let untrusted = RedisBackend::connect("test", &config(&url, None))
            .await
            .err();
        assert!(
            matches!(&untrusted, Some(BackendError::Unavailable { .. })),
            "a server signed by an unknown CA is refused: {untrusted:?}"
        );

        let wrong = format!("rediss://:wrong@127.0.0.1:{port}/");
        let refused = RedisBackend::connect("test", &config(&wrong, Some(&ca)))
            .await
            .err();
        let message = refused
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            matches!(&refused, Some(BackendError::Config { .. }))
                && message.contains("credentials"),
            "a wrong password is a configuration error: {refused:?}"
        );
        assert!(
            !message.contains("wrong"),
            "the password never shows: {message}"
        );
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use stormlockd::backend::etcd::{EtcdBackend, EtcdConfig};

    fn config(endpoint: &str, pki: &Pki, client_cert: bool) -> EtcdConfig {
        let file = |name: &str| format!("{:?}", pki.path(name).display().to_string());
        let mut text = format!(
            "endpoints = [{endpoint:?}]\nconnect_timeout = \"2s\"\nca_file = {}\n",
            file("ca.pem")
        );
        if client_cert {
            text.push_str(&format!(
                "cert_file = {}\nkey_file = {}\n",
                file("client.pem"),
                file("client.key")
            ));
        }
        toml::from_str(&text).expect("config")
    }

    /// https:// endpoints with a private CA and client certificates (mutual
    /// TLS): works with the client certificate, refused without it.
    #[tokio::test]
    async fn mutual_tls_with_private_ca() {
        if !installed("etcd") {
            return;
        }
        let pki = Pki::new();
        let (port, peer) = (free_port(), free_port());
        let client_url = format!("https://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new("etcd");
        command
            .args(["--name", "t", "--data-dir"])
            .arg(pki.path("etcd"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args([
                "--initial-cluster",
                &format!("t={peer_url}"),
                "--initial-cluster-state",
                "new",
            ])
            .args(["--heartbeat-interval", "20", "--election-timeout", "200"])
            .arg("--cert-file")
            .arg(pki.path("server.pem"))
            .arg("--key-file")
            .arg(pki.path("server.key"))
            .arg("--trusted-ca-file")
            .arg(pki.path("ca.pem"))
            .arg("--client-cert-auth");
        let _engine = spawn(command, port, &pki.path("etcd.log"));

        // The port opens before etcd serves; retry the connection briefly.
        let mut backend = None;
        for _ in 0..50 {
            match EtcdBackend::connect("test", &config(&client_url, &pki, true)).await {
                Ok(b) => {
                    backend = Some(b);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let backend = backend.expect("connect with mutual TLS");
        acquires(&backend).await;

        let refused = EtcdBackend::connect("test", &config(&client_url, &pki, false)).await;
        assert!(
            matches!(refused, Err(BackendError::Unavailable { .. })),
            "no client certificate, no connection: {:?}",
            refused.map(drop)
        );
    }

    /// With etcd authentication on, the configured user works and a wrong
    /// password is a configuration error that never shows the password.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn username_and_password() {
        let Some(engine) = crate::support::PrivateEngine::start("etcd") else {
            return;
        };
        let mut admin = etcd_client::Client::connect([engine.url.as_str()], None)
            .await
            .expect("connect as admin");
        admin
            .user_add("root", "rootpw", None)
            .await
            .expect("add root");
        admin
            .user_grant_role("root", "root")
            .await
            .expect("grant root");
        admin.auth_enable().await.expect("enable auth");

        let config = |password: &str| -> EtcdConfig {
            toml::from_str(&format!(
                "endpoints = [{:?}]\nusername = \"root\"\npassword = {password:?}",
                engine.url
            ))
            .expect("config")
        };
        let backend = EtcdBackend::connect("test", &config("rootpw"))
            .await
            .expect("connect with credentials");
        acquires(&backend).await;

        let refused = EtcdBackend::connect("test", &config("hunter2")).await.err();
        let message = refused
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            matches!(&refused, Some(BackendError::Config { .. }))
                && message.contains("credentials"),
            "a wrong password is a configuration error: {refused:?}"
        );
        assert!(
            !message.contains("hunter2"),
            "the password never shows: {message}"
        );
    }
}
