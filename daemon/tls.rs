//! TLS for the daemon: loading configured certificates (and loading them
//! again when their files change, so a renewed certificate is served without
//! a restart), creating the development PKI used when nothing is configured,
//! and reading the client's identity from its certificate.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::paths::DevTls;

/// The one rustls crypto provider the daemon links (ring; see the workspace
/// `Cargo.toml`). Every TLS configuration the daemon builds names it.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring rustls' process-wide crypto provider. Clients that build their
/// TLS on the process default (the redis and MySQL drivers) find no default
/// otherwise and would panic. Called by the daemon at start and by every
/// backend that needs it; a second call (or another thread's first) is
/// harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The AWS SDK's HTTPS client, on ring: the SDK's own default client is
/// rustls on aws-lc-rs, a second crypto library. Otherwise the same as
/// that default (system roots, proxy settings from the environment).
#[cfg(feature = "dynamodb")]
pub fn aws_https_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig};
    Builder::new().build_with_connector_fn(|settings, runtime_components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = runtime_components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The development PKI could not be written.
    #[error("cannot write development certificates in {path}: {source}")]
    Write {
        /// The file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate development certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A private key that others may read (the message has the fix).
    #[error("{0}")]
    Unsafe(String),
    /// A configured file holds no usable PEM of the expected kind.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Which part of a client certificate names the principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// The subject's common name (default).
    #[default]
    Cn,
    /// The DNS subject alternative name.
    DnsSan,
    /// The URI subject alternative name (e.g. a SPIFFE id).
    UriSan,
}

impl IdentitySource {
    /// The name used in the configuration (`[auth] identity`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cn => "cn",
            Self::DnsSan => "dns_san",
            Self::UriSan => "uri_san",
        }
    }
}

/// Paths of the server's certificate, key and (for mutual TLS) client CA.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: std::path::PathBuf,
    /// Server private key (PEM).
    pub key: std::path::PathBuf,
    /// CA whose certificates clients must present; `None`: no client certificates.
    pub client_ca: Option<std::path::PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The PEM certificates in `path`; an error when there is none.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The first PEM private key in `path`.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            invalid(path, "no PEM private key in the file")
        }
        e => invalid(path, format!("unreadable PEM: {e}")),
    })
}

/// Checks that `files` read and hold what they should (certificates in the
/// chain and the CA, a private key in the key file) and that they make a
/// server configuration: the key matches the certificate (`check-config`).
pub fn check_files(files: &TlsFiles) -> Result<(), TlsError> {
    server_config(files, false).map(drop)
}

/// Builds the gRPC listener's rustls configuration from `files`, for HTTP/2
/// (ALPN `h2`). With a client CA, clients must present a certificate signed
/// by it during the handshake, unless `client_auth_optional` (bearer tokens
/// configured): then a client may also present none, and its calls are
/// judged per call.
pub fn server_config(
    files: &TlsFiles,
    client_auth_optional: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&files.cert, format!("TLS setup: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = if client_auth_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid(ca, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        invalid(
            &files.key,
            format!(
                "cannot serve the certificate {} with this key: {e}",
                files.cert.display()
            ),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How often the files of a [`ReloadingTls`] are read to see whether they
/// changed (three small files: negligible).
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// The gRPC listener's TLS configuration, built again from its files when
/// their contents change: cert-manager (or any renewal) replaces the
/// certificate, key or client CA in place, and new connections get the new
/// ones while established connections carry on. A change that does not make
/// a valid configuration (say the certificate was replaced but not yet its
/// key) is logged and the previous configuration kept, until it does.
pub struct ReloadingTls {
    files: TlsFiles,
    client_auth_optional: bool,
    current: RwLock<Loaded>,
}

/// A configuration and the digest of the file contents it was built from.
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    digest: [u8; 32],
}

impl ReloadingTls {
    /// Builds the configuration of `files` (see [`server_config`]).
    pub fn load(files: &TlsFiles, client_auth_optional: bool) -> Result<Self, TlsError> {
        let digest = files_digest(files)?;
        let config = server_config(files, client_auth_optional)?;
        Ok(Self {
            files: files.clone(),
            client_auth_optional,
            current: RwLock::new(Loaded { config, digest }),
        })
    }

    /// The configuration to use for the next handshake.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .config
            .clone()
    }

    /// Reads the files again: `Ok(true)` when their contents changed and
    /// now serve; `Ok(false)` when unchanged; an error (the previous
    /// configuration stays) when they cannot be read or do not fit together.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let digest = files_digest(&self.files)?;
        if digest
            == self
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .digest
        {
            return Ok(false);
        }
        let config = server_config(&self.files, self.client_auth_optional)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Loaded { config, digest };
        Ok(true)
    }

    /// Reloads every `every` until `stop` completes, logging what changed
    /// (with the new certificate's expiry) and what could not be loaded
    /// (once per distinct error, so a half-replaced set is not a flood).
    pub async fn follow(
        self: Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut last_error = None;
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(every) => {}
            }
            let this = self.clone();
            let outcome = tokio::task::spawn_blocking(move || this.reload()).await;
            match outcome {
                Ok(Ok(true)) => {
                    last_error = None;
                    tracing::info!(
                        cert = %self.files.cert.display(),
                        not_after = %not_after(&self.files.cert).unwrap_or_else(|| "?".into()),
                        "TLS files changed: new connections use the new certificate"
                    );
                }
                Ok(Ok(false)) => last_error = None,
                Ok(Err(e)) => {
                    let message = e.to_string();
                    if last_error.as_ref() != Some(&message) {
                        tracing::error!(error = %message, "TLS files changed but cannot be used; still serving the previous certificate");
                        last_error = Some(message);
                    }
                }
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

/// SHA-256 over the contents of the certificate, key and client CA files.
fn files_digest(files: &TlsFiles) -> Result<[u8; 32], TlsError> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for path in [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        let contents = read(path)?;
        hash.update((contents.len() as u64).to_be_bytes());
        hash.update(&contents);
    }
    Ok(hash.finalize().into())
}

/// When the first certificate in `path` expires, for the log.
fn not_after(path: &Path) -> Option<String> {
    let pem = std::fs::read(path).ok()?;
    let der = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    Some(cert.validity().not_after.to_string())
}

/// Creates the development PKI in `dev` unless it exists: a CA, a server
/// certificate for `localhost`/`127.0.0.1`/`::1` and a client certificate for
/// `client_identity`. Files are private (0600) and reused on later starts.
/// Returns the server's [`TlsFiles`] (mutual TLS with the development CA).
pub fn ensure_dev_pki(dev: &DevTls, client_identity: &str) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles {
        cert: dev.server_cert(),
        key: dev.server_key(),
        client_ca: Some(dev.ca_cert()),
    };
    let all = [
        dev.ca_cert(),
        dev.ca_key(),
        dev.server_cert(),
        dev.server_key(),
        dev.client_cert(),
        dev.client_key(),
    ];
    // The CA key mints administrator certificates; the others are keys too.
    for key in [dev.ca_key(), dev.server_key(), dev.client_key()] {
        crate::private::check_file(&key, "a development PKI key").map_err(TlsError::Unsafe)?;
    }
    if all.iter().all(|p| p.exists()) {
        return Ok(files);
    }
    create_private_dir(&dev.dir)?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Stormlock development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "stormlockd");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, client_identity);
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer)?;

    write_private(&dev.ca_key(), &ca_key.serialize_pem())?;
    write_private(&dev.server_key(), &server_key.serialize_pem())?;
    write_private(&dev.client_key(), &client_key.serialize_pem())?;
    write_private(&dev.server_cert(), &server_cert.pem())?;
    write_private(&dev.client_cert(), &client_cert.pem())?;
    // The CA certificate last: its presence marks a complete set.
    write_private(&dev.ca_cert(), &ca_cert.pem())?;
    Ok(files)
}

/// The identity in the development client certificate of `dev`, if readable.
pub fn dev_client_identity(dev: &DevTls) -> Option<String> {
    let pem = std::fs::read(dev.client_cert()).ok()?;
    let der = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    identity_from_der(der.as_ref(), IdentitySource::Cn).ok()
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: dir.display().to_string(),
        source,
    };
    // The data directory above it is created private too.
    crate::private::create_dir(dir).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Remembers the identity of each client certificate seen, so that a
/// connection's calls do not parse its certificate again and again (the
/// parse was an eighth of the daemon's instructions per call). Clones
/// share one cache.
#[derive(Debug, Clone, Default)]
pub struct IdentityCache {
    /// By the certificate's length and last bytes (the end of the issuer's
    /// signature, which differs between any two certificates), so a lookup
    /// hashes 72 bytes rather than a kilobyte; within a bucket, the whole
    /// certificate is compared.
    seen: Arc<Mutex<HashMap<CertificateTail, Vec<Remembered>>>>,
}

/// A certificate's length and last [`TAIL`] bytes.
type CertificateTail = (usize, [u8; TAIL]);

/// A certificate and its identity (or why it has none).
type Remembered = (Box<[u8]>, Result<String, String>);

/// Bytes of the certificate's end that key the cache.
const TAIL: usize = 64;

/// Certificates remembered at most; past it the cache starts afresh.
const IDENTITY_CACHE_SIZE: usize = 4096;

impl IdentityCache {
    /// [`identity_from_der`], remembered.
    pub fn identity(&self, der: &[u8], source: IdentitySource) -> Result<String, String> {
        let mut tail = [0; TAIL];
        let end = &der[der.len().saturating_sub(TAIL)..];
        tail[..end.len()].copy_from_slice(end);
        let key = (der.len(), tail);
        let lookup = |seen: &HashMap<CertificateTail, Vec<Remembered>>| {
            seen.get(&key)
                .and_then(|bucket| bucket.iter().find(|(cert, _)| **cert == *der))
                .map(|(_, identity)| identity.clone())
        };
        let lock = || self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(identity) = lookup(&lock()) {
            return identity;
        }
        // Parsed without the lock, so other calls are not held up by it.
        let identity = identity_from_der(der, source);
        let mut seen = lock();
        if lookup(&seen).is_none() {
            if seen.len() >= IDENTITY_CACHE_SIZE {
                seen.clear();
            }
            seen.entry(key)
                .or_default()
                .push((der.into(), identity.clone()));
        }
        identity
    }
}

/// The principal named by a DER client certificate, per `source`, or why
/// there is none. A certificate that names several candidates (two CNs, two
/// DNS or URI SANs) is refused as ambiguous: which one a verifier picks is a
/// choice an attacker with a permissive issuer could steer.
pub fn identity_from_der(der: &[u8], source: IdentitySource) -> Result<String, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|_| "the client certificate cannot be parsed")?;
    let candidates: Vec<String> = match source {
        IdentitySource::Cn => cert
            .subject()
            .iter_common_name()
            .map(|cn| {
                cn.as_str()
                    .map(str::to_string)
                    .map_err(|_| "the client certificate's CN is not a string")
            })
            .collect::<Result<_, _>>()?,
        IdentitySource::DnsSan | IdentitySource::UriSan => {
            let san = cert
                .subject_alternative_name()
                .map_err(|_| "the client certificate's subject alternative names are malformed")?;
            san.map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match (name, source) {
                        (GeneralName::DNSName(dns), IdentitySource::DnsSan) => {
                            Some(dns.to_string())
                        }
                        (GeneralName::URI(uri), IdentitySource::UriSan) => Some(uri.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
        }
    };
    match candidates.as_slice() {
        [one] if !one.is_empty() => Ok(one.clone()),
        [] | [_] => Err(format!(
            "the client certificate has no {} identity",
            source.as_str()
        )),
        several => Err(format!(
            "the client certificate names {} {} identities ({}): ambiguous, refused",
            several.len(),
            source.as_str(),
            several.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_pki_is_created_once_private_and_names_the_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = DevTls::in_data_dir(dir.path());
        ensure_dev_pki(&dev, "alice@laptop").expect("create");
        let first = std::fs::read(dev.ca_cert()).expect("ca");
        ensure_dev_pki(&dev, "someone-else").expect("reuse");
        assert_eq!(std::fs::read(dev.ca_cert()).expect("ca"), first, "reused");
        assert_eq!(dev_client_identity(&dev).as_deref(), Some("alice@laptop"));
        use std::os::unix::fs::PermissionsExt;
        for file in [
            dev.ca_key(),
            dev.server_key(),
            dev.client_key(),
            dev.ca_cert(),
        ] {
            let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
    }

    #[test]
    fn server_config_from_files_and_their_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = DevTls::in_data_dir(dir.path());
        let files = ensure_dev_pki(&dev, "alice").expect("create");
        for optional in [false, true] {
            let config = server_config(&files, optional).expect("server config");
            assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        }
        check_files(&files).expect("valid files");

        let mismatched = TlsFiles {
            key: dev.client_key(),
            ..files.clone()
        };
        let err = check_files(&mismatched).expect_err("key of another certificate");
        assert!(
            err.to_string()
                .contains(&dev.client_key().display().to_string()),
            "{err}"
        );
        let no_key = TlsFiles {
            key: dev.server_cert(),
            ..files.clone()
        };
        let err = check_files(&no_key).expect_err("no key");
        assert!(err.to_string().contains("no PEM private key"), "{err}");
        let no_ca = TlsFiles {
            client_ca: Some(dev.client_key()),
            ..files
        };
        let err = check_files(&no_ca).expect_err("no CA certificate");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn identity_sources() {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["svc.example.com".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, "team-a");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/ns/ci/sa/deployer"
                .try_into()
                .expect("uri"),
        ));
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der().as_ref();
        assert_eq!(
            identity_from_der(der, IdentitySource::Cn).as_deref(),
            Ok("team-a")
        );
        assert_eq!(
            identity_from_der(der, IdentitySource::DnsSan).as_deref(),
            Ok("svc.example.com")
        );
        assert_eq!(
            identity_from_der(der, IdentitySource::UriSan).as_deref(),
            Ok("spiffe://example.org/ns/ci/sa/deployer")
        );
        assert!(identity_from_der(b"not a certificate", IdentitySource::Cn).is_err());
    }

    #[test]
    fn several_candidate_identities_are_ambiguous() {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![
            "alice.example.com".to_string(),
            "admin.example.com".to_string(),
        ])
        .expect("params");
        // rcgen keeps one value per attribute type; the CN's OID as a
        // custom type adds a second CN.
        params.distinguished_name.push(DnType::CommonName, "alice");
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 3]), "admin");
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der().as_ref();
        for source in [IdentitySource::Cn, IdentitySource::DnsSan] {
            let refused = identity_from_der(der, source).expect_err("ambiguous");
            assert!(refused.contains("ambiguous"), "{refused}");
        }
        let refused = identity_from_der(der, IdentitySource::UriSan).expect_err("none");
        assert!(refused.contains("no uri_san identity"), "{refused}");
    }

    fn certificate(cn: &str) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_identity_cache_answers_like_the_parser() {
        let cache = IdentityCache::default();
        let certs: Vec<_> = ["alice", "bob", "carol"].map(certificate).into();
        for _ in 0..3 {
            for (cert, name) in certs.iter().zip(["alice", "bob", "carol"]) {
                assert_eq!(
                    cache.identity(cert, IdentitySource::Cn).as_deref(),
                    Ok(name)
                );
            }
        }
        assert!(cache.identity(b"junk", IdentitySource::Cn).is_err());
        assert!(cache.identity(b"junk", IdentitySource::Cn).is_err());
    }

    #[test]
    fn the_identity_cache_compares_whole_certificates() {
        let cache = IdentityCache::default();
        let real = certificate("alice");
        assert_eq!(
            cache.identity(&real, IdentitySource::Cn).as_deref(),
            Ok("alice")
        );
        // Same length and same last bytes (the cache's bucket), different
        // certificate: it must not borrow alice's identity.
        let mut forged = vec![0; real.len()];
        let tail = real.len() - TAIL;
        forged[tail..].copy_from_slice(&real[tail..]);
        assert!(cache.identity(&forged, IdentitySource::Cn).is_err());
        assert_eq!(
            cache.identity(&real, IdentitySource::Cn).as_deref(),
            Ok("alice")
        );
    }

    #[test]
    fn the_identity_cache_stays_bounded() {
        let cache = IdentityCache::default();
        for n in 0..(IDENTITY_CACHE_SIZE + 10) {
            let der = format!("not a certificate {n}");
            assert!(cache.identity(der.as_bytes(), IdentitySource::Cn).is_err());
        }
        let seen = cache.seen.lock().expect("lock");
        assert!(seen.len() <= IDENTITY_CACHE_SIZE, "{}", seen.len());
    }
}
