//! The connection to the daemon: TLS set-up, one channel per process, a
//! deadline on every call, and failures turned into exit statuses.

use std::error::Error as StdError;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stormlock_api::paths::DevTls;
use stormlock_api::pb;
use stormlock_api::pb::lock_service_client::LockServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};

use crate::address::{Address, Scheme};
use crate::config::{Principal, Settings, TlsFiles, Token};
use crate::error::{CliError, CliResult, Exit, exit_for_code};

/// Longest wait for a TCP connection, and again for the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 ping interval, and how long a ping may go unanswered.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Which TLS files to load and which name to check the daemon's certificate
/// against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    /// CA certificate that signed the daemon's certificate.
    pub ca: PathBuf,
    /// Client certificate and key, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the daemon's certificate must carry.
    pub domain: String,
    /// Whether these are the daemon's development certificates.
    pub dev: bool,
}

/// Decides how to secure the connection to `addr`: `None` for plain text.
///
/// `dev` is the development PKI to fall back on for a loopback address when
/// no TLS setting is given at all.
pub fn plan_tls(addr: &Address, files: &TlsFiles, dev: &DevTls) -> CliResult<Option<TlsPlan>> {
    if addr.scheme == Scheme::Plain {
        if files.is_empty() {
            return Ok(None);
        }
        return Err(CliError::usage(format!(
            "{addr} is a plain-text address but TLS files are set (--ca/--cert/--key, \
             STORMLOCK_CA/CERT/KEY or the config file): use https:// or drop them"
        )));
    }
    if files.is_empty() {
        if !addr.is_loopback() {
            return Err(CliError::usage(format!(
                "no TLS settings for {addr}: pass --ca (and --cert/--key for mutual TLS), \
                 or use http://{}:{} for a daemon run with --insecure",
                addr.host, addr.port
            )));
        }
        let paths = [dev.ca_cert(), dev.client_cert(), dev.client_key()];
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(CliError::new(
                Exit::Unreachable,
                anyhow::anyhow!(
                    "no TLS settings and no development certificates in {} ({} is missing): \
                     start stormlockd first or pass --ca/--cert/--key",
                    dev.dir.display(),
                    missing.display()
                ),
            ));
        }
        // The development server certificate names localhost, 127.0.0.1 and
        // ::1; other loopback IPs reach the same daemon under "localhost".
        let domain = if addr.is_ip() {
            "localhost".to_string()
        } else {
            addr.host.clone()
        };
        let [ca, cert, key] = paths;
        return Ok(Some(TlsPlan {
            ca,
            identity: Some((cert, key)),
            domain,
            dev: true,
        }));
    }
    let Some(ca) = files.ca.clone() else {
        return Err(CliError::usage(
            "TLS needs the CA certificate that signed the daemon's certificate: pass --ca \
             (or STORMLOCK_CA, or ca in the config file)",
        ));
    };
    let identity = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => {
            return Err(CliError::usage(
                "a client certificate needs its key and the other way round: \
                 pass both --cert and --key",
            ));
        }
    };
    Ok(Some(TlsPlan {
        ca,
        identity,
        domain: addr.host.clone(),
        dev: false,
    }))
}

/// Refuses to send a bearer token without TLS (`plan` is `None`): anyone
/// on the way could read it and use it until it is revoked.
pub fn refuse_token_in_clear_text(
    addr: &Address,
    plan: Option<&TlsPlan>,
    token: Option<&Token>,
) -> CliResult<()> {
    match (plan, token) {
        (None, Some(token)) => {
            let tls = Address {
                scheme: Scheme::Tls,
                ..addr.clone()
            };
            Err(CliError::usage(format!(
                "a bearer token is set ({}), but {addr} is plain text: the token would travel \
                 in clear text, so nothing was sent. Use TLS ({tls}, with --ca), or unset the \
                 token to talk to a daemon run with --insecure",
                token.source
            )))
        }
        _ => Ok(()),
    }
}

fn read_pem(path: &Path, what: &str, plan: &TlsPlan) -> CliResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        // Development files vanish when the daemon's data dir goes: that is
        // a daemon that is not there, not a usage error.
        let exit = if plan.dev {
            Exit::Unreachable
        } else {
            Exit::Usage
        };
        CliError::new(
            exit,
            anyhow::anyhow!("cannot read {what} {}: {e}", path.display()),
        )
    })
}

fn tls_config(plan: &TlsPlan, handshake_timeout: Duration) -> CliResult<ClientTlsConfig> {
    let ca = read_pem(&plan.ca, "CA certificate", plan)?;
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(plan.domain.clone())
        .timeout(handshake_timeout);
    if let Some((cert, key)) = &plan.identity {
        let cert = read_pem(cert, "client certificate", plan)?;
        let key = read_pem(key, "client key", plan)?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    Ok(config)
}

/// A connected client with the settings every call needs.
#[derive(Clone)]
pub struct Client {
    rpc: LockServiceClient<Channel>,
    addr: Address,
    timeout: Duration,
    /// Whether the connection uses TLS.
    tls: bool,
    /// Whether a client certificate or a token identifies us (then the
    /// daemon takes the principal from it, and a defaulted principal is not
    /// sent).
    has_identity: bool,
    /// `authorization: Bearer …` for daemons that take tokens.
    authorization: Option<MetadataValue<Ascii>>,
}

impl Client {
    /// Connects to the daemon described by `settings`.
    pub async fn connect(settings: &Settings) -> CliResult<Self> {
        let dev = DevTls::in_data_dir(&settings.daemon_data_dir);
        let plan = plan_tls(&settings.addr, &settings.tls, &dev)?;
        refuse_token_in_clear_text(&settings.addr, plan.as_ref(), settings.token.as_ref())?;
        let connect_timeout = CONNECT_TIMEOUT.min(settings.timeout);
        let mut endpoint = Endpoint::from_shared(settings.addr.uri())
            .map_err(|e| CliError::usage(format!("invalid daemon address {}: {e}", settings.addr)))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // Long calls (a watch, exec's renewals) learn that the daemon
            // is gone even when no packet says so.
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true);
        if let Some(plan) = &plan {
            endpoint = endpoint
                .tls_config(tls_config(plan, connect_timeout)?)
                .map_err(|e| {
                    CliError::new(Exit::Usage, e).context(format!(
                        "cannot use the TLS files (CA {}{})",
                        plan.ca.display(),
                        plan.identity
                            .as_ref()
                            .map(|(c, k)| format!(
                                ", certificate {}, key {}",
                                c.display(),
                                k.display()
                            ))
                            .unwrap_or_default()
                    ))
                })?;
        }
        let addr = settings.addr.clone();
        // TCP connect, then the TLS handshake, each bounded by connect_timeout.
        let channel = match tokio::time::timeout(2 * connect_timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => {
                let failure = TransportFailure::new(&e);
                let message = format!("cannot connect to stormlockd at {addr}: {}", failure.text);
                return Err(failure.error(message, plan.is_some(), false));
            }
            Err(_) => {
                return Err(CliError::new(
                    Exit::Unreachable,
                    anyhow::anyhow!(
                        "cannot connect to stormlockd at {addr}: no answer within {}",
                        stormlock_api::duration::format_duration(2 * connect_timeout)
                    ),
                ));
            }
        };
        let authorization = match &settings.token {
            Some(token) => Some(
                format!("Bearer {}", token.secret)
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        CliError::usage(
                            "the bearer token contains characters a header cannot carry",
                        )
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            rpc: LockServiceClient::new(channel),
            addr,
            timeout: settings.timeout,
            tls: plan.is_some(),
            has_identity: plan.is_some_and(|p| p.identity.is_some()) || authorization.is_some(),
            authorization,
        })
    }

    /// The generated stub on this connection, for callers that want the raw
    /// status of each call (`bench`).
    pub fn rpc(&self) -> LockServiceClient<Channel> {
        self.rpc.clone()
    }

    /// A request carrying our deadline (so a waiting Acquire ends with us)
    /// and our token, if any.
    pub fn request<T>(&self, message: T, budget: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(budget);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    /// The principal to declare: an explicit one always, the default one only
    /// when no client certificate speaks for us.
    pub fn declared_principal(&self, principal: &Principal) -> String {
        if principal.explicit || !self.has_identity {
            principal.name.clone()
        } else {
            String::new()
        }
    }

    /// Acquire, allowing `wait` on top of the usual timeout.
    pub async fn acquire(
        &self,
        req: pb::AcquireRequest,
        wait: Duration,
    ) -> CliResult<pb::AcquireResponse> {
        let budget = self.timeout + wait;
        let mut rpc = self.rpc.clone();
        self.finish(budget, rpc.acquire(self.request(req, budget)))
            .await
    }

    /// Release.
    pub async fn release(&self, req: pb::ReleaseRequest) -> CliResult<pb::ReleaseResponse> {
        let mut rpc = self.rpc.clone();
        self.finish(self.timeout, rpc.release(self.request(req, self.timeout)))
            .await
    }

    /// Renew.
    pub async fn renew(&self, req: pb::RenewRequest) -> CliResult<pb::RenewResponse> {
        self.renew_within(req, self.timeout).await
    }

    /// Renew, giving up after `budget`.
    pub async fn renew_within(
        &self,
        req: pb::RenewRequest,
        budget: Duration,
    ) -> CliResult<pb::RenewResponse> {
        let mut rpc = self.rpc.clone();
        self.finish(budget, rpc.renew(self.request(req, budget)))
            .await
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Opens a Watch stream. Only opening it is bounded by the timeout; the
    /// stream itself lasts until either side ends it (HTTP/2 keep-alives
    /// notice a daemon that vanished without a word).
    pub async fn watch(
        &self,
        req: pb::WatchRequest,
    ) -> CliResult<tonic::Streaming<pb::WatchResponse>> {
        let mut rpc = self.rpc.clone();
        let mut request = Request::new(req);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        self.finish(self.timeout, rpc.watch(request)).await
    }

    /// The error for a failed read from a stream.
    pub fn stream_error(&self, status: Status) -> CliError {
        self.status_error(status, self.timeout)
    }

    /// Current.
    pub async fn current(&self, req: pb::CurrentRequest) -> CliResult<pb::CurrentResponse> {
        let mut rpc = self.rpc.clone();
        self.finish(self.timeout, rpc.current(self.request(req, self.timeout)))
            .await
    }

    /// IsHeld.
    pub async fn is_held(&self, req: pb::IsHeldRequest) -> CliResult<pb::IsHeldResponse> {
        let mut rpc = self.rpc.clone();
        self.finish(self.timeout, rpc.is_held(self.request(req, self.timeout)))
            .await
    }

    /// One page of List.
    pub async fn list(&self, req: pb::ListRequest) -> CliResult<pb::ListResponse> {
        let mut rpc = self.rpc.clone();
        self.finish(self.timeout, rpc.list(self.request(req, self.timeout)))
            .await
    }

    /// ForceRelease.
    pub async fn force_release(
        &self,
        req: pb::ForceReleaseRequest,
    ) -> CliResult<pb::ForceReleaseResponse> {
        let mut rpc = self.rpc.clone();
        self.finish(
            self.timeout,
            rpc.force_release(self.request(req, self.timeout)),
        )
        .await
    }

    async fn finish<T>(
        &self,
        budget: Duration,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> CliResult<T> {
        match tokio::time::timeout(budget, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.status_error(status, budget)),
            Err(_) => Err(self.timed_out(budget)),
        }
    }

    fn timed_out(&self, budget: Duration) -> CliError {
        CliError::new(
            Exit::Unreachable,
            anyhow::anyhow!(
                "no answer from stormlockd at {} within {} (see --timeout)",
                self.addr,
                stormlock_api::duration::format_duration(budget)
            ),
        )
    }

    /// Turns a failed call into an exit status and one clear message.
    fn status_error(&self, status: Status, budget: Duration) -> CliError {
        // A status with a source was made on this side from a transport
        // failure; one without came from the daemon.
        let Some(source) = status.source() else {
            return server_error(&status);
        };
        if chain(source).any(|e| e.is::<tonic::TimeoutExpired>()) {
            return self.timed_out(budget);
        }
        let failure = TransportFailure::new(source);
        let message = format!(
            "connection to stormlockd at {} failed: {}",
            self.addr, failure.text
        );
        failure.error(message, self.tls, self.tls && !self.has_identity)
    }
}

/// The error for a status the daemon sent.
pub fn server_error(status: &Status) -> CliError {
    use tonic::Code;
    let what = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => "invalid request",
        Code::Unauthenticated => "not authenticated",
        Code::PermissionDenied => "permission denied",
        Code::FailedPrecondition | Code::NotFound => "lease not current",
        Code::Unavailable => "daemon or backend unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Unimplemented => "not supported by this stormlockd",
        _ => "stormlockd failed",
    };
    let message = status.message().trim();
    let text = if message.is_empty() {
        format!("{what} ({:?})", status.code())
    } else {
        format!("{what}: {message}")
    };
    CliError {
        evicted: stormlock_api::details::eviction(status),
        ..CliError::new(exit_for_code(status.code()), anyhow::anyhow!(text))
    }
}

fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn StdError + 'static)| {
        (*e).source()
    })
}

/// A failure below gRPC, read from its cause chain.
struct TransportFailure {
    /// The causes, outermost first, without repeats or tonic's bare
    /// "transport error".
    text: String,
}

/// What a transport failure means for the exit status.
#[derive(Debug, PartialEq, Eq)]
enum FailureKind {
    /// TLS refused an identity, ours or the daemon's; with a hint.
    Refused(&'static str),
    /// Anything else: the daemon could not be reached.
    Other,
}

/// TLS alerts that refuse a certificate, and what to tell the operator.
/// rustls reports them inside `io::Error`s as text, so they are matched by name.
const REFUSALS: [(&str, &str); 8] = [
    (
        "CertificateRequired",
        "the daemon requires a client certificate: pass --cert and --key",
    ),
    (
        "BadCertificate",
        "the daemon does not accept this client certificate",
    ),
    (
        "UnknownCA",
        "the daemon does not trust the CA of this client certificate",
    ),
    (
        "CertificateUnknown",
        "the daemon does not accept this client certificate",
    ),
    (
        "CertificateExpired",
        "the daemon says the client certificate has expired",
    ),
    (
        "CertificateRevoked",
        "the daemon says the client certificate is revoked",
    ),
    ("AccessDenied", "the daemon refused this client certificate"),
    (
        "invalid peer certificate",
        "the daemon's certificate does not verify against the CA given (--ca)",
    ),
];

impl TransportFailure {
    fn new(error: &(dyn StdError + 'static)) -> Self {
        let mut parts: Vec<String> = Vec::new();
        for e in chain(error) {
            let part = e.to_string();
            let known = parts.iter().any(|p| p.contains(part.as_str()));
            if !part.is_empty() && part != "transport error" && !known {
                parts.push(part);
            }
        }
        Self {
            text: parts.join(": "),
        }
    }

    fn kind(&self) -> FailureKind {
        REFUSALS
            .iter()
            .find(|(name, _)| self.text.contains(name))
            .map_or(FailureKind::Other, |(_, hint)| FailureKind::Refused(hint))
    }

    /// The error to report, with its exit status and a hint where the raw
    /// text is cryptic. `no_identity` says we presented no client
    /// certificate over TLS.
    fn error(&self, message: String, tls: bool, no_identity: bool) -> CliError {
        let (exit, hint) = match self.kind() {
            FailureKind::Refused(hint) => (Exit::Denied, hint),
            // A daemon that wants a client certificate and gets none ends the
            // connection right after the handshake; depending on timing the
            // client sees the alert, a closed connection or a broken pipe.
            FailureKind::Other if no_identity => (
                Exit::Denied,
                "most likely the daemon requires a client certificate: pass --cert and --key, \
                 or set STORMLOCK_CERT and STORMLOCK_KEY",
            ),
            // What TLS reads from a plain-text server, and the other way round.
            FailureKind::Other if tls && self.text.contains("corrupt message") => (
                Exit::Unreachable,
                "is the daemon serving plain text? then use http://",
            ),
            FailureKind::Other if !tls && self.text.contains("frame with invalid size") => (
                Exit::Unreachable,
                "is the daemon serving TLS? then drop http://",
            ),
            FailureKind::Other => (Exit::Unreachable, ""),
        };
        let text = match hint {
            "" => message,
            hint => format!("{message} ({hint})"),
        };
        CliError::new(exit, anyhow::anyhow!(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Address {
        Address::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn dev_with_files() -> (tempfile::TempDir, DevTls) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dev = DevTls::in_data_dir(tmp.path());
        std::fs::create_dir_all(&dev.dir).expect("mkdir");
        for p in [dev.ca_cert(), dev.client_cert(), dev.client_key()] {
            std::fs::write(p, "pem").expect("write");
        }
        (tmp, dev)
    }

    #[test]
    fn loopback_without_settings_uses_dev_certificates() {
        let (_tmp, dev) = dev_with_files();
        let none = TlsFiles::default();
        for (text, domain) in [
            ("127.0.0.1:7466", "localhost"),
            ("127.0.0.2:7466", "localhost"),
            ("[::1]:7466", "localhost"),
            ("localhost:7466", "localhost"),
        ] {
            let plan = plan_tls(&addr(text), &none, &dev).ok().flatten();
            let plan = plan.unwrap_or_else(|| panic!("{text}"));
            assert!(plan.dev);
            assert_eq!(plan.domain, domain);
            assert_eq!(plan.ca, dev.ca_cert());
            assert_eq!(plan.identity, Some((dev.client_cert(), dev.client_key())));
        }
    }

    #[test]
    fn missing_dev_certificates_mean_no_daemon() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dev = DevTls::in_data_dir(tmp.path());
        let err = plan_tls(&addr("127.0.0.1:7466"), &TlsFiles::default(), &dev)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.exit, Exit::Unreachable);
        let text = err.to_string();
        assert!(text.contains("start stormlockd first"), "{text}");
        assert!(text.contains(&dev.dir.display().to_string()), "{text}");
    }

    #[test]
    fn explicit_settings() {
        let (_tmp, dev) = dev_with_files();
        let files = TlsFiles {
            ca: Some("ca.pem".into()),
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
        };
        let plan = plan_tls(&addr("locks.example:443"), &files, &dev)
            .ok()
            .flatten();
        assert_eq!(
            plan,
            Some(TlsPlan {
                ca: "ca.pem".into(),
                identity: Some(("c.pem".into(), "k.pem".into())),
                domain: "locks.example".into(),
                dev: false,
            })
        );
        // Any setting turns the development fallback off, even on loopback.
        let only_ca = TlsFiles {
            ca: Some("ca.pem".into()),
            ..TlsFiles::default()
        };
        let plan = plan_tls(&addr("127.0.0.1:1"), &only_ca, &dev)
            .ok()
            .flatten();
        assert!(plan.is_some_and(|p| !p.dev && p.identity.is_none() && p.domain == "127.0.0.1"));
    }

    #[test]
    fn inconsistent_settings_are_usage_errors() {
        let (_tmp, dev) = dev_with_files();
        let usage = |a: &str, files: TlsFiles| {
            plan_tls(&addr(a), &files, &dev)
                .map(|_| ())
                .unwrap_err()
                .exit
        };
        let cert_only = TlsFiles {
            ca: Some("ca".into()),
            cert: Some("c".into()),
            key: None,
        };
        assert_eq!(usage("h:1", cert_only), Exit::Usage);
        let no_ca = TlsFiles {
            cert: Some("c".into()),
            key: Some("k".into()),
            ..TlsFiles::default()
        };
        assert_eq!(usage("h:1", no_ca), Exit::Usage);
        assert_eq!(usage("remote:1", TlsFiles::default()), Exit::Usage);
        let ca = TlsFiles {
            ca: Some("ca".into()),
            ..TlsFiles::default()
        };
        assert_eq!(usage("http://h:1", ca), Exit::Usage);
        assert_eq!(
            plan_tls(&addr("http://remote:1"), &TlsFiles::default(), &dev).ok(),
            Some(None)
        );
    }

    #[test]
    fn no_token_over_plain_text() {
        let (_tmp, dev) = dev_with_files();
        let token = Token {
            secret: "s3cret".into(),
            source: "STORMLOCK_TOKEN".into(),
        };
        let refused = |text: &str| {
            let addr = addr(text);
            let plan = plan_tls(&addr, &TlsFiles::default(), &dev).ok().flatten();
            refuse_token_in_clear_text(&addr, plan.as_ref(), Some(&token)).err()
        };
        for text in ["http://127.0.0.1:7466", "http://locks.example:80"] {
            let err = refused(text).unwrap_or_else(|| panic!("{text} accepted"));
            assert_eq!(err.exit, Exit::Usage);
            let message = err.to_string();
            assert!(message.contains("clear text"), "{message}");
            assert!(message.contains("STORMLOCK_TOKEN"), "{message}");
            assert!(message.contains("https://"), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
        assert!(refused("127.0.0.1:7466").is_none(), "development TLS");
        assert!(refused("https://localhost:7466").is_none());
        let addr = addr("http://127.0.0.1:7466");
        assert!(refuse_token_in_clear_text(&addr, None, None).is_ok());
    }

    #[test]
    fn server_statuses() {
        let err = server_error(&Status::invalid_argument("resource name is empty"));
        assert_eq!(err.exit, Exit::Usage);
        assert_eq!(err.to_string(), "invalid request: resource name is empty");
        let err = server_error(&Status::permission_denied("alice may not force-release x"));
        assert_eq!(err.exit, Exit::Denied);
        let err = server_error(&Status::unavailable(""));
        assert_eq!(err.exit, Exit::Unreachable);
        assert_eq!(
            err.to_string(),
            "daemon or backend unavailable (Unavailable)"
        );
    }

    #[test]
    fn transport_failures() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let failure = TransportFailure::new(&refused);
        assert_eq!(failure.kind(), FailureKind::Other);
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        let failure = TransportFailure::new(&alert);
        assert!(
            matches!(failure.kind(), FailureKind::Refused(hint) if hint.contains("--cert")),
            "{:?}",
            failure.kind()
        );
        let wrapped = anyhow::Error::new(alert)
            .context("transport error")
            .context("outer");
        let failure = TransportFailure::new(wrapped.as_ref());
        assert_eq!(
            failure.text, "outer: received fatal alert: CertificateRequired",
            "no bare 'transport error', no repeats"
        );
    }
}
