//! TLS for the daemon: loading configured certificates, creating the
//! development PKI used when nothing is configured, and reading the client's
//! identity from its certificate.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::Deserialize;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::paths::DevTls;

/// Makes ring rustls' process-wide crypto provider, as tonic uses. Clients
/// that build their TLS on the process default (the redis and MySQL
/// drivers) cannot choose by themselves when more than one provider is
/// linked (the AWS SDK brings aws-lc-rs) and would panic. Called by the
/// daemon at start and by every backend that needs it; a second call (or
/// another thread's first) is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    /// The first DNS subject alternative name.
    DnsSan,
    /// The first URI subject alternative name (e.g. a SPIFFE id).
    UriSan,
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

/// Checks that `files` read and hold what they should: certificates in the
/// chain and the CA, a private key in the key file (`check-config`).
pub fn check_files(files: &TlsFiles) -> Result<(), TlsError> {
    let invalid = |path: &Path, message: &str| TlsError::Invalid {
        path: path.display().to_string(),
        message: message.to_string(),
    };
    for path in std::iter::once(&files.cert).chain(&files.client_ca) {
        let pem = read(path)?;
        let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
        match certs {
            Ok(certs) if !certs.is_empty() => {}
            Ok(_) => return Err(invalid(path, "no PEM certificate in the file")),
            Err(e) => return Err(invalid(path, &format!("unreadable PEM: {e}"))),
        }
    }
    let pem = read(&files.key)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(invalid(&files.key, "no PEM private key in the file")),
        Err(e) => Err(invalid(&files.key, &format!("unreadable PEM: {e}"))),
    }
}

/// Builds tonic's server TLS settings from `files`. With a client CA, clients
/// without a certificate signed by it are refused during the handshake.
pub fn server_config(files: &TlsFiles) -> Result<ServerTlsConfig, TlsError> {
    let identity = Identity::from_pem(read(&files.cert)?, read(&files.key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(config)
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
    let der = rustls_pemfile::certs(&mut pem.as_slice()).next()?.ok()?;
    identity_from_der(der.as_ref(), IdentitySource::Cn)
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

/// A certificate and its identity.
type Remembered = (Box<[u8]>, Option<String>);

/// Bytes of the certificate's end that key the cache.
const TAIL: usize = 64;

/// Certificates remembered at most; past it the cache starts afresh.
const IDENTITY_CACHE_SIZE: usize = 4096;

impl IdentityCache {
    /// [`identity_from_der`], remembered.
    pub fn identity(&self, der: &[u8], source: IdentitySource) -> Option<String> {
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

/// The principal named by a DER client certificate, per `source`.
pub fn identity_from_der(der: &[u8], source: IdentitySource) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    match source {
        IdentitySource::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        IdentitySource::DnsSan | IdentitySource::UriSan => {
            let san = cert.subject_alternative_name().ok().flatten()?;
            san.value
                .general_names
                .iter()
                .find_map(|name| match (name, source) {
                    (GeneralName::DNSName(dns), IdentitySource::DnsSan) => Some(dns.to_string()),
                    (GeneralName::URI(uri), IdentitySource::UriSan) => Some(uri.to_string()),
                    _ => None,
                })
        }
    }
    .filter(|id| !id.is_empty())
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
            Some("team-a")
        );
        assert_eq!(
            identity_from_der(der, IdentitySource::DnsSan).as_deref(),
            Some("svc.example.com")
        );
        assert_eq!(
            identity_from_der(der, IdentitySource::UriSan).as_deref(),
            Some("spiffe://example.org/ns/ci/sa/deployer")
        );
        assert_eq!(
            identity_from_der(b"not a certificate", IdentitySource::Cn),
            None
        );
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
                    Some(name)
                );
            }
        }
        assert_eq!(cache.identity(b"junk", IdentitySource::Cn), None);
        assert_eq!(cache.identity(b"junk", IdentitySource::Cn), None);
    }

    #[test]
    fn the_identity_cache_compares_whole_certificates() {
        let cache = IdentityCache::default();
        let real = certificate("alice");
        assert_eq!(
            cache.identity(&real, IdentitySource::Cn).as_deref(),
            Some("alice")
        );
        // Same length and same last bytes (the cache's bucket), different
        // certificate: it must not borrow alice's identity.
        let mut forged = vec![0; real.len()];
        let tail = real.len() - TAIL;
        forged[tail..].copy_from_slice(&real[tail..]);
        assert_eq!(cache.identity(&forged, IdentitySource::Cn), None);
        assert_eq!(
            cache.identity(&real, IdentitySource::Cn).as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn the_identity_cache_stays_bounded() {
        let cache = IdentityCache::default();
        for n in 0..(IDENTITY_CACHE_SIZE + 10) {
            let der = format!("not a certificate {n}");
            assert_eq!(cache.identity(der.as_bytes(), IdentitySource::Cn), None);
        }
        let seen = cache.seen.lock().expect("lock");
        assert!(seen.len() <= IDENTITY_CACHE_SIZE, "{}", seen.len());
    }
}
