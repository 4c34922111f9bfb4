//! Backends over TLS with a private CA, with client certificates, and with
//! credentials: engines of the test's own, started with certificates
//! generated here.

#![cfg(any(
    feature = "redis",
    feature = "etcd",
    feature = "postgres",
    feature = "mysql",
    feature = "dynamodb"
))]

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

/// Acquires a resource and releases it again.
async fn acquires_and_releases(backend: &dyn Backend) {
    let req = crate::conformance::request(&crate::conformance::unique("mtls"), "alice", 60);
    let granted = backend.acquire(&req).await;
    assert!(
        matches!(granted, Ok(Acquisition::Granted(_))),
        "acquire: {granted:?}"
    );
    assert_eq!(
        backend.release(&req.resource, &req.id).await.ok(),
        Some(true),
        "release"
    );
}

/// The TOML lines naming `pki`'s client certificate and key.
fn client_cert_toml(pki: &Pki) -> String {
    format!(
        "cert_file = {:?}\nkey_file = {:?}\n",
        pki.path("client.pem").display().to_string(),
        pki.path("client.key").display().to_string()
    )
}

/// What `stormlockd`'s configuration parser says of a file whose only
/// backend is `body`: `None` when it accepts it.
fn parse_error(body: &str) -> Option<String> {
    stormlockd::config::Config::parse(&format!("[backends.main]\n{body}\n"), "test.toml")
        .err()
        .map(|e| e.to_string())
}

/// Each `(body, key)` is refused when the configuration is parsed, naming
/// `key` within `[backends.main]`.
fn refused_when_parsed(cases: &[(String, &str)]) {
    for (body, key) in cases {
        let message = parse_error(body).unwrap_or_default();
        assert!(
            message.contains(&format!("backends.main: {key}: ")),
            "{body}\nrefused with {message:?}, not naming {key}"
        );
    }
}

/// The error of a connection attempt, as text; panics when it succeeded.
fn refusal<T>(result: Result<T, BackendError>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what}: connected"),
        Err(e) => e.to_string(),
    }
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
    /// Starts a Redis that serves TLS only, with `pki`'s server
    /// certificate, and requires a client certificate signed by its CA.
    fn redis_requiring_client_certificates(pki: &Pki) -> (Engine, u16) {
        let port = free_port();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", "0", "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--tls-port", &port.to_string()])
            .args(["--tls-auth-clients", "yes"])
            .arg("--tls-cert-file")
            .arg(pki.path("server.pem"))
            .arg("--tls-key-file")
            .arg(pki.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(pki.path("ca.pem"))
            .arg("--dir")
            .arg(pki.dir.path());
        (spawn(command, port, &pki.path("redis.log")), port)
    }

    /// `tls-auth-clients yes`: the client certificate of `cert_file` and
    /// `key_file` gets in (acquire and release work); without it the
    /// connection is refused at start, saying so.
    #[tokio::test]
    async fn rediss_with_a_client_certificate() {
        if !installed("redis-server") {
            return;
        }
        let pki = Pki::new();
        let (_engine, port) = redis_requiring_client_certificates(&pki);
        let url = format!("rediss://127.0.0.1:{port}/");
        let ca = format!("ca_file = {:?}\n", pki.path("ca.pem").display().to_string());
        let config = |extra: &str| -> RedisConfig {
            toml::from_str(&format!("url = {url:?}\nconnect_timeout = \"2s\"\n{extra}"))
                .expect("config")
        };

        let backend =
            RedisBackend::connect("test", &config(&format!("{ca}{}", client_cert_toml(&pki))))
                .await
                .expect("connect with a client certificate");
        acquires_and_releases(&backend).await;
        backend.health().await.expect("healthy");

        let refused = RedisBackend::connect("test", &config(&ca)).await;
        let message = refusal(refused, "no client certificate");
        assert!(
            message.contains(&format!("127.0.0.1:{port}")) && message.contains("Certificate"),
            "names the server and says why: {message}"
        );
        eprintln!("without a client certificate: {message}");

        // Without a private CA the public roots verify the server, which a
        // private CA's certificate fails, client certificate or not.
        let untrusted = RedisBackend::connect("test", &config(&client_cert_toml(&pki))).await;
        refusal(untrusted, "server signed by an unknown CA");
    }

    /// A client certificate whose key is another's, or a file without a
    /// certificate, is refused before anything is sent, naming the key.
    #[tokio::test]
    async fn unusable_client_certificate_files_are_refused_when_connecting() {
        let pki = Pki::new();
        let file = |name: &str| format!("{:?}", pki.path(name).display().to_string());
        for (cert, key, words) in [
            ("client.pem", "server.key", "key_file"),
            ("client.key", "client.key", "cert_file"),
            ("client.pem", "client.pem", "key_file"),
            ("missing.pem", "client.key", "cert_file"),
        ] {
            let config: RedisConfig = toml::from_str(&format!(
                "url = \"rediss://127.0.0.1:1/\"\ncert_file = {}\nkey_file = {}",
                file(cert),
                file(key)
            ))
            .expect("config");
            let refused = RedisBackend::connect("test", &config).await.err();
            let message = refused
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                matches!(refused, Some(BackendError::Config { .. }))
                    && message.contains(&format!("{words} ")),
                "{cert}/{key}: {message}"
            );
        }
    }

    /// A client certificate needs its key and TLS: refused when the
    /// configuration is parsed (check-config), naming the key.
    #[test]
    fn client_certificate_settings_are_checked_when_parsed() {
        let tls = "type = \"redis\"\nurl = \"rediss://h:6380/0\"\n";
        let plain = "type = \"redis\"\nurl = \"redis://h:6379/0\"\n";
        let pair = "cert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        assert_eq!(parse_error(&format!("{tls}{pair}")), None);
        refused_when_parsed(&[
            (format!("{tls}cert_file = \"c.pem\""), "key_file"),
            (format!("{tls}key_file = \"k.pem\""), "cert_file"),
            (format!("{plain}{pair}"), "cert_file"),
        ]);
        let message = parse_error(&format!("{plain}{pair}")).unwrap_or_default();
        assert!(message.contains("rediss://"), "{message}");
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

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::support::PrivateEngine;
    use stormlockd::backend::postgres::PostgresBackend;
    use stormlockd::backend::sql::SqlConfig;

    async fn admin(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect as admin");
        tokio::spawn(connection);
        client
    }

    /// A PostgreSQL with TLS on (`pki`'s server certificate) whose role
    /// `client` may only log in over TLS with a client certificate signed by
    /// `pki`'s CA and naming it (`hostssl … cert`); `client` owns the
    /// database `tls`. Returns the URL of `client` on `tls`.
    async fn configure(engine: &PrivateEngine, pki: &Pki) -> String {
        use std::os::unix::fs::PermissionsExt;
        // The server runs as postgres and insists on a private key file.
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        mode(pki.dir.path(), 0o755);
        mode(&pki.path("server.pem"), 0o644);
        mode(&pki.path("ca.pem"), 0o644);
        mode(&pki.path("server.key"), 0o600);
        let chown = Command::new("chown")
            .arg("postgres")
            .arg(pki.path("server.key"))
            .status();
        assert!(chown.is_ok_and(|s| s.success()), "chown the key");

        let client = admin(&engine.url).await;
        for (setting, file) in [
            ("ssl_cert_file", "server.pem"),
            ("ssl_key_file", "server.key"),
            ("ssl_ca_file", "ca.pem"),
        ] {
            client
                .batch_execute(&format!(
                    "ALTER SYSTEM SET {setting} = '{}'",
                    pki.path(file).display()
                ))
                .await
                .expect("ALTER SYSTEM");
        }
        client
            .batch_execute("ALTER SYSTEM SET ssl = on")
            .await
            .expect("ssl on");
        client
            .batch_execute("CREATE ROLE client LOGIN")
            .await
            .expect("role");
        client
            .batch_execute("CREATE DATABASE tls OWNER client")
            .await
            .expect("database");
        let hba: String = client
            .query_one("SHOW hba_file", &[])
            .await
            .expect("hba_file")
            .get(0);
        let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "hostssl all client 127.0.0.1/32 cert\nhost all client 127.0.0.1/32 reject\n{rules}"
            ),
        )
        .expect("write pg_hba.conf");
        client
            .execute("SELECT pg_reload_conf()", &[])
            .await
            .expect("reload");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ssl: String = admin(&engine.url)
                .await
                .query_one("SHOW ssl", &[])
                .await
                .expect("SHOW ssl")
                .get(0);
            if ssl == "on" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ssl not on after reload"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, port) = engine.url.rsplit_once(':').expect("port");
        let port = port.split('/').next().expect("port");
        format!("postgres://client@127.0.0.1:{port}/tls")
    }

    /// `hostssl … cert`: the client certificate of `cert_file`/`key_file`
    /// logs in (acquire and release work), in both TLS modes that take one;
    /// without it the server refuses the login and the error says why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_certificate_authentication() {
        let Some(engine) = PrivateEngine::start("postgres") else {
            return;
        };
        let pki = Pki::new();
        let url = configure(&engine, &pki).await;
        let ca = format!("ca_file = {:?}\n", pki.path("ca.pem").display().to_string());
        let connect = |extra: String| {
            let url = url.clone();
            async move {
                let config: SqlConfig = toml::from_str(&format!(
                    "url = {url:?}\nconnect_timeout = \"5s\"\npool_size = 2\n{extra}"
                ))
                .expect("config");
                PostgresBackend::connect("pg", &config).await
            }
        };

        let verified = connect(format!(
            "tls = \"verify-full\"\n{ca}{}",
            client_cert_toml(&pki)
        ))
        .await
        .expect("verify-full with a client certificate");
        acquires_and_releases(&verified).await;
        let encrypted_only = connect(format!("tls = \"require\"\n{}", client_cert_toml(&pki)))
            .await
            .expect("require with a client certificate");
        acquires_and_releases(&encrypted_only).await;

        let message = refusal(
            connect(format!("tls = \"verify-full\"\n{ca}")).await,
            "no client certificate",
        );
        assert!(message.contains("certificate"), "says why: {message}");
        eprintln!("without a client certificate: {message}");
    }

    /// A client certificate needs its key and `tls` set to `require` or
    /// `verify-full`: refused when the configuration is parsed.
    #[test]
    fn client_certificate_settings_are_checked_when_parsed() {
        let url = "type = \"postgres\"\nurl = \"postgres://client@db/ops\"\n";
        let pair = "cert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        for tls in ["require", "verify-full"] {
            assert_eq!(parse_error(&format!("{url}tls = {tls:?}\n{pair}")), None);
        }
        refused_when_parsed(&[
            (
                format!("{url}tls = \"verify-full\"\ncert_file = \"c.pem\""),
                "key_file",
            ),
            (
                format!("{url}tls = \"require\"\nkey_file = \"k.pem\""),
                "cert_file",
            ),
            (format!("{url}tls = \"disable\"\n{pair}"), "cert_file"),
            (format!("{url}{pair}"), "cert_file"),
        ]);
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use stormlockd::backend::mysql::MysqlBackend;
    use stormlockd::backend::sql::SqlConfig;

    /// Starts a MariaDB of this test's own with TLS (`pki`'s server
    /// certificate, client certificates checked against its CA) and a user
    /// `client` that must present one (`REQUIRE X509`), with rights on the
    /// database `stormlock`. Returns the engine and that user's URL.
    fn mariadb_requiring_x509(pki: &Pki) -> (Engine, String) {
        let data = pki.path("mariadb");
        let socket = pki.path("mariadb.sock");
        let installed = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(installed.is_ok_and(|s| s.success()), "mariadb-install-db");
        let port = free_port();
        let mut command = Command::new("mariadbd");
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
            ])
            .arg(format!("--ssl-cert={}", pki.path("server.pem").display()))
            .arg(format!("--ssl-key={}", pki.path("server.key").display()))
            .arg(format!("--ssl-ca={}", pki.path("ca.pem").display()));
        let engine = spawn(command, port, &pki.path("mariadb.log"));
        let created = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", socket.display()))
            .args(["-uroot", "-e"])
            .arg(
                "CREATE DATABASE stormlock; \
                 CREATE USER 'client'@'127.0.0.1' REQUIRE X509; \
                 GRANT ALL ON stormlock.* TO 'client'@'127.0.0.1';",
            )
            .output()
            .expect("run mariadb");
        assert!(
            created.status.success(),
            "create the user: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        (engine, format!("mysql://client@127.0.0.1:{port}/stormlock"))
    }

    /// `REQUIRE X509`: the client certificate of `cert_file`/`key_file` logs
    /// in (acquire and release work), in both TLS modes that take one;
    /// without it the server refuses the login.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_certificate_required_by_the_user() {
        if !installed("mariadbd") {
            return;
        }
        let pki = Pki::new();
        let (_engine, url) = mariadb_requiring_x509(&pki);
        let ca = format!("ca_file = {:?}\n", pki.path("ca.pem").display().to_string());
        let connect = |extra: String| {
            let url = url.clone();
            async move {
                let config: SqlConfig = toml::from_str(&format!(
                    "url = {url:?}\nconnect_timeout = \"5s\"\npool_size = 2\n{extra}"
                ))
                .expect("config");
                MysqlBackend::connect("my", &config).await
            }
        };

        let verified = connect(format!(
            "tls = \"verify-full\"\n{ca}{}",
            client_cert_toml(&pki)
        ))
        .await
        .expect("verify-full with a client certificate");
        acquires_and_releases(&verified).await;
        let encrypted_only = connect(format!("tls = \"require\"\n{}", client_cert_toml(&pki)))
            .await
            .expect("require with a client certificate");
        acquires_and_releases(&encrypted_only).await;

        let message = refusal(
            connect(format!("tls = \"verify-full\"\n{ca}")).await,
            "no client certificate",
        );
        assert!(
            message.contains("Access denied") && message.contains("cert_file"),
            "says why: {message}"
        );
        eprintln!("without a client certificate: {message}");
    }

    /// A client certificate needs its key and `tls` set to `require` or
    /// `verify-full`: refused when the configuration is parsed.
    #[test]
    fn client_certificate_settings_are_checked_when_parsed() {
        let url = "type = \"mysql\"\nurl = \"mysql://client@db:3306/ops\"\n";
        let pair = "cert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        assert_eq!(
            parse_error(&format!("{url}tls = \"require\"\n{pair}")),
            None
        );
        refused_when_parsed(&[
            (
                format!("{url}tls = \"require\"\ncert_file = \"c.pem\""),
                "key_file",
            ),
            (format!("{url}tls = \"disable\"\n{pair}"), "cert_file"),
            (format!("{url}{pair}"), "cert_file"),
        ]);
    }
}

#[cfg(feature = "dynamodb")]
mod dynamodb {
    use super::*;
    use stormlockd::backend::dynamodb::{DynamodbBackend, DynamodbConfig};

    /// The Python that has moto: the tests' venv (as `tests/engines.sh`
    /// finds it), else the system's; `None` (skipped) without moto.
    fn python_with_moto() -> Option<String> {
        let venv = std::env::var("STORMLOCK_VENV").unwrap_or_else(|_| {
            format!(
                "{}/.cache/stormlock/venv",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let found = [format!("{venv}/bin/python3"), "python3".to_string()]
            .into_iter()
            .find(|python| {
                Command::new(python)
                    .args(["-c", "import moto.server"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
        if found.is_none() {
            crate::support::skip_for_want_of("moto (run scripts/setup)");
        }
        found
    }

    /// moto serving HTTPS with `pki`'s server certificate.
    fn moto_over_tls(pki: &Pki, python: &str) -> (Engine, String) {
        let port = free_port();
        let mut command = Command::new(python);
        command
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .arg("--ssl-cert")
            .arg(pki.path("server.pem"))
            .arg("--ssl-key")
            .arg(pki.path("server.key"));
        let engine = spawn(command, port, &pki.path("moto.log"));
        (engine, format!("https://127.0.0.1:{port}"))
    }

    async fn connect(config: &DynamodbConfig) -> Result<DynamodbBackend, BackendError> {
        DynamodbBackend::connect_with("test", config, crate::support::dynamodb_emulator()).await
    }

    /// An https:// endpoint behind a private CA: trusted with `ca_file`
    /// (the table is created, acquire and release work), refused without.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn https_endpoint_with_a_private_ca() {
        let Some(python) = python_with_moto() else {
            return;
        };
        let pki = Pki::new();
        let (_engine, endpoint) = moto_over_tls(&pki, &python);
        let config = |ca_file: Option<PathBuf>| DynamodbConfig {
            table: "stormlock-tls".to_string(),
            region: Some("us-east-1".to_string()),
            endpoint: Some(endpoint.clone()),
            ca_file,
            // moto loads its DynamoDB module on the first request.
            timeout: Duration::from_secs(15),
            ..DynamodbConfig::default()
        };

        let backend = connect(&config(Some(pki.path("ca.pem"))))
            .await
            .expect("connect to the https endpoint with its CA");
        acquires_and_releases(&backend).await;

        let message = refusal(connect(&config(None)).await, "unknown CA");
        eprintln!("without the CA: {message}");
        assert!(
            message.to_lowercase().contains("certificate") || message.contains("UnknownIssuer"),
            "says why: {message}"
        );

        // A file without a certificate is refused before any request.
        let refused = connect(&config(Some(pki.path("client.key")))).await.err();
        assert!(
            matches!(&refused, Some(BackendError::Config { message, .. }) if message.starts_with("ca_file ")),
            "{refused:?}"
        );
    }

    /// `ca_file` is for an https:// endpoint: refused when parsed without
    /// one.
    #[test]
    fn ca_file_needs_an_https_endpoint() {
        let base = "type = \"dynamodb\"\ntable = \"locks\"\nregion = \"eu-west-1\"\n";
        assert_eq!(
            parse_error(&format!(
                "{base}endpoint = \"https://dynamo.internal\"\nca_file = \"ca.pem\""
            )),
            None
        );
        refused_when_parsed(&[
            (format!("{base}ca_file = \"ca.pem\""), "ca_file"),
            (
                format!("{base}endpoint = \"http://127.0.0.1:8000\"\nca_file = \"ca.pem\""),
                "ca_file",
            ),
        ]);
    }
}
