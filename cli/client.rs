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
/// no TLS setting is given at all; `dev_source` says where its data dir
/// came from (`STORMLOCK_DATA_DIR`, or the default).
pub fn plan_tls(
    addr: &Address,
    files: &TlsFiles,
    dev: &DevTls,
    dev_source: &str,
) -> CliResult<Option<TlsPlan>> {
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
                    "no TLS settings and no development certificates in {} ({} is missing; \
                     {dev_source}): start stormlockd first, set STORMLOCK_DATA_DIR to the data \
                     dir of the daemon you started, or pass --ca/--cert/--key",
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
    /// Where the address and certificates came from, for messages.
    origins: Origins,
}

/// Where the connection's settings came from, so that a failure can say
/// which setting to fix.
#[derive(Debug, Clone)]
struct Origins {
    /// `--addr`, `STORMLOCK_ADDR`, `addr in FILE` or `default`.
    addr_source: String,
    /// With the development certificates found by themselves: their
    /// directory and where its data dir came from.
    dev: Option<(PathBuf, &'static str)>,
}

impl Origins {
    /// Where the address came from, and how to give another.
    fn addr(&self, addr: &Address) -> String {
        if self.addr_source == "default" {
            format!(
                "{addr} is the default address: start stormlockd there (scripts/run-daemon), or \
                 give the daemon's address with --addr, STORMLOCK_ADDR or addr in the config file"
            )
        } else {
            format!("the address {addr} comes from {}", self.addr_source)
        }
    }

    /// Where the development certificates were found, and how to use
    /// others; `None` when the TLS files were given.
    fn dev(&self) -> Option<String> {
        self.dev.as_ref().map(|(dir, source)| {
            format!(
                "the development certificates were found in {} ({source}), and the daemon \
                 there uses another data dir or TLS files of its own: set STORMLOCK_DATA_DIR to \
                 its data dir, or pass --ca/--cert/--key",
                dir.display()
            )
        })
    }
}

impl Client {
    /// Connects to the daemon described by `settings`.
    pub async fn connect(settings: &Settings) -> CliResult<Self> {
        let dev = DevTls::in_data_dir(&settings.daemon_data_dir);
        let plan = plan_tls(
            &settings.addr,
            &settings.tls,
            &dev,
            settings.data_dir_source,
        )?;
        let origins = Origins {
            addr_source: settings.addr_source.clone(),
            dev: plan
                .as_ref()
                .filter(|p| p.dev)
                .map(|_| (dev.dir.clone(), settings.data_dir_source)),
        };
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
                let peer = failure.probe(&addr, connect_timeout).await;
                let context = Context {
                    addr: &addr,
                    tls: plan.is_some(),
                    no_identity: false,
                    origins: &origins,
                    peer,
                };
                return Err(failure.error(message, &context));
            }
            Err(_) => {
                return Err(CliError::new(
                    Exit::Unreachable,
                    anyhow::anyhow!(
                        "cannot connect to stormlockd at {addr}: no answer within {} ({})",
                        stormlock_api::duration::format_duration(2 * connect_timeout),
                        origins.addr(&addr)
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
            origins,
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
        self.status_error(status, self.timeout, None)
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

    /// Reserve.
    pub async fn reserve(&self, req: pb::ReserveRequest) -> CliResult<pb::ReserveResponse> {
        let mut rpc = self.rpc.clone();
        self.finish(self.timeout, rpc.reserve(self.request(req, self.timeout)))
            .await
    }

    /// Unreserve.
    pub async fn unreserve(&self, req: pb::UnreserveRequest) -> CliResult<pb::UnreserveResponse> {
        let mut rpc = self.rpc.clone();
        self.finish(self.timeout, rpc.unreserve(self.request(req, self.timeout)))
            .await
    }

    /// ListReservations.
    pub async fn list_reservations(
        &self,
        req: pb::ListReservationsRequest,
    ) -> CliResult<pb::ListReservationsResponse> {
        let mut rpc = self.rpc.clone();
        self.finish(
            self.timeout,
            rpc.list_reservations(self.request(req, self.timeout)),
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
            Ok(Err(status)) => {
                // A failure below gRPC on the first call may be a server that
                // is no stormlockd (the connection itself was made): look.
                let peer = match status.source() {
                    Some(source) => {
                        TransportFailure::new(source)
                            .probe(&self.addr, CONNECT_TIMEOUT.min(self.timeout))
                            .await
                    }
                    None => None,
                };
                Err(self.status_error(status, budget, peer))
            }
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

    /// Turns a failed call into an exit status and one clear message;
    /// `peer` is what answered on the daemon's port, when that was looked at.
    fn status_error(&self, status: Status, budget: Duration, peer: Option<Peer>) -> CliError {
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
        let context = Context {
            addr: &self.addr,
            tls: self.tls,
            no_identity: self.tls && !self.has_identity,
            origins: &self.origins,
            peer,
        };
        failure.error(message, &context)
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
        window: stormlock_api::details::window(status).map(Box::new),
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

    /// Whether the failure came after a TCP connection was made, so that
    /// looking at what answers on the port can tell more (not for a port
    /// nobody listens on, an unknown host, or a refused certificate).
    fn connected(&self) -> bool {
        let text = self.text.to_ascii_lowercase();
        self.kind() == FailureKind::Other
            && !["tcp connect error", "dns error", "connection refused"]
                .iter()
                .any(|not| text.contains(not))
    }

    /// What answers on `addr`'s port, when this failure came after a
    /// connection was made (see [`Peer`]).
    async fn probe(&self, addr: &Address, budget: Duration) -> Option<Peer> {
        if self.connected() {
            Peer::probe(addr, budget).await
        } else {
            None
        }
    }

    /// The error to report, with its exit status and a hint where the raw
    /// text is cryptic.
    fn error(&self, message: String, context: &Context<'_>) -> CliError {
        let (exit, hint) = self.exit_and_hint(context);
        let text = match hint {
            None => message,
            Some(hint) => format!("{message} ({hint})"),
        };
        CliError::new(exit, anyhow::anyhow!(text))
    }

    fn exit_and_hint(&self, context: &Context<'_>) -> (Exit, Option<String>) {
        let Context {
            addr,
            tls,
            no_identity,
            origins,
            peer,
        } = context;
        // What answered on the port explains a mismatch best: a server of
        // the other kind, or no stormlockd at all.
        if let Some(peer) = peer
            && let Some(hint) = peer.hint(addr, *tls, origins)
        {
            return (Exit::Unreachable, Some(hint));
        }
        match self.kind() {
            FailureKind::Refused(hint) => {
                // With certificates found by themselves, "--ca" was never
                // given: say where they came from instead.
                let hint = match origins.dev() {
                    Some(dev) if hint.contains("daemon's certificate") => format!(
                        "the daemon's certificate does not verify against the development CA: \
                         {dev}"
                    ),
                    Some(dev) => format!("{hint}: {dev}"),
                    None => hint.to_string(),
                };
                (Exit::Denied, Some(hint))
            }
            // A daemon that wants a client certificate and gets none ends the
            // connection right after the handshake; depending on timing the
            // client sees the alert, a closed connection or a broken pipe.
            FailureKind::Other if *no_identity => (
                Exit::Denied,
                Some(
                    "most likely the daemon requires a client certificate: pass --cert and \
                     --key, or set STORMLOCK_CERT and STORMLOCK_KEY"
                        .to_string(),
                ),
            ),
            FailureKind::Other if !self.connected() => {
                (Exit::Unreachable, Some(origins.addr(addr)))
            }
            FailureKind::Other => (Exit::Unreachable, None),
        }
    }
}

/// What a failing connection knew about its settings.
struct Context<'a> {
    /// The daemon's address.
    addr: &'a Address,
    /// Whether we spoke TLS.
    tls: bool,
    /// We presented no client certificate over TLS.
    no_identity: bool,
    /// Where the settings came from.
    origins: &'a Origins,
    /// What answers on the port, when that was looked at.
    peer: Option<Peer>,
}

/// What answers on a port, told from its first bytes after an HTTP/2
/// preface (what a gRPC client sends first): a TLS server answers with an
/// alert, a plain-text HTTP/2 server (stormlockd `--insecure`) with its
/// SETTINGS, a web server with an HTTP/1 error, Redis with `-ERR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// TLS records.
    Tls,
    /// Plain-text HTTP/2 frames.
    PlainHttp2,
    /// An HTTP/1 server; its first line.
    Http1(String),
    /// A Redis server (RESP); its first line.
    Redis(String),
    /// Something else; what it said, printable.
    Other(String),
}

impl Peer {
    /// The HTTP/2 connection preface and an empty SETTINGS frame.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

    /// Connects to `addr` afresh, sends [`Peer::PREFACE`] and reads the
    /// answer, all within `budget`; `None` when nothing answered.
    async fn probe(addr: &Address, budget: Duration) -> Option<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let look = async {
            let mut stream = tokio::net::TcpStream::connect((addr.host.as_str(), addr.port))
                .await
                .ok()?;
            stream.write_all(Self::PREFACE).await.ok()?;
            let mut answer = Vec::new();
            let mut buf = [0u8; 256];
            while answer.len() < 64 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
                if Self::read(&answer).is_some() && answer.len() >= 9 {
                    break;
                }
            }
            Some(answer)
        };
        // A server that waits for more (Redis over TLS waits for a line)
        // has said what it had to say by the deadline.
        let answer = tokio::time::timeout(budget, look).await.ok().flatten()?;
        Self::read(&answer)
    }

    /// Tells the server from the first bytes of its answer.
    fn read(answer: &[u8]) -> Option<Self> {
        let first_line = || {
            String::from_utf8_lossy(answer)
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(60)
                .collect::<String>()
        };
        match answer {
            [] => None,
            // A TLS record: alert (21) or handshake (22), version 3.x.
            [21 | 22, 3, ..] => Some(Self::Tls),
            // A frame header: 24-bit length, type 4 (SETTINGS).
            [_, _, _, 4, ..] if answer.len() >= 9 => Some(Self::PlainHttp2),
            _ if answer.starts_with(b"HTTP/") || {
                let text = String::from_utf8_lossy(answer).to_ascii_lowercase();
                text.contains("<html") || text.contains("<!doctype html")
            } =>
            {
                Some(Self::Http1(first_line()))
            }
            [b'-' | b'+', ..] => Some(Self::Redis(first_line())),
            _ => Some(Self::Other(first_line())),
        }
    }

    /// What to tell someone whose `tls` (or plain-text) connection to
    /// `addr` failed with this on the other end; `None` when it is what
    /// was expected there and the failure lies elsewhere.
    fn hint(&self, addr: &Address, tls: bool, origins: &Origins) -> Option<String> {
        let not_stormlockd = |what: &str| {
            format!(
                "that port is {what}, not stormlockd; {}",
                origins.addr(addr)
            )
        };
        match self {
            Self::Tls if tls => None,
            Self::Tls => Some(format!(
                "the server there speaks TLS: drop http:// ({}:{})",
                addr.host, addr.port
            )),
            Self::PlainHttp2 if !tls => None,
            Self::PlainHttp2 => Some(format!(
                "the server there speaks plain-text HTTP/2, as stormlockd --insecure does: use \
                 http://{}:{}",
                addr.host, addr.port
            )),
            Self::Http1(line) => Some(not_stormlockd(&format!(
                "an HTTP/1 web server (it answered {line:?})"
            ))),
            Self::Redis(line) => Some(not_stormlockd(&format!(
                "a Redis server (it answered {line:?})"
            ))),
            Self::Other(line) => Some(not_stormlockd(&format!(
                "some other server (it answered {line:?})"
            ))),
        }
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
            let plan = plan_tls(&addr(text), &none, &dev, "STORMLOCK_DATA_DIR")
                .ok()
                .flatten();
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
        let err = plan_tls(
            &addr("127.0.0.1:7466"),
            &TlsFiles::default(),
            &dev,
            "STORMLOCK_DATA_DIR",
        )
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
        let plan = plan_tls(
            &addr("locks.example:443"),
            &files,
            &dev,
            "STORMLOCK_DATA_DIR",
        )
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
        let plan = plan_tls(&addr("127.0.0.1:1"), &only_ca, &dev, "STORMLOCK_DATA_DIR")
            .ok()
            .flatten();
        assert!(plan.is_some_and(|p| !p.dev && p.identity.is_none() && p.domain == "127.0.0.1"));
    }

    #[test]
    fn inconsistent_settings_are_usage_errors() {
        let (_tmp, dev) = dev_with_files();
        let usage = |a: &str, files: TlsFiles| {
            plan_tls(&addr(a), &files, &dev, "STORMLOCK_DATA_DIR")
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
            plan_tls(
                &addr("http://remote:1"),
                &TlsFiles::default(),
                &dev,
                "STORMLOCK_DATA_DIR"
            )
            .ok(),
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
            let plan = plan_tls(&addr, &TlsFiles::default(), &dev, "STORMLOCK_DATA_DIR")
                .ok()
                .flatten();
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

    fn origins(addr_source: &str, dev: bool) -> Origins {
        Origins {
            addr_source: addr_source.to_string(),
            dev: dev.then(|| {
                (
                    PathBuf::from("/home/a/.local/state/stormlock/tls"),
                    "the data dir from STORMLOCK_DATA_DIR",
                )
            }),
        }
    }

    #[test]
    fn what_answers_on_a_port() {
        // A TLS alert, plain-text HTTP/2 SETTINGS, a web server, Redis.
        assert_eq!(Peer::read(&[21, 3, 3, 0, 2, 2, 50]), Some(Peer::Tls));
        assert_eq!(
            Peer::read(&[0, 0, 24, 4, 0, 0, 0, 0, 0, 0, 3]),
            Some(Peer::PlainHttp2)
        );
        assert_eq!(
            Peer::read(b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\n"),
            Some(Peer::Http1("HTTP/1.1 400 Bad Request".into()))
        );
        assert!(matches!(
            Peer::read(b"<!DOCTYPE HTML>\n<html lang=\"en\">"),
            Some(Peer::Http1(_))
        ));
        assert_eq!(
            Peer::read(b"-ERR unknown command 'PRI'\r\n"),
            Some(Peer::Redis("-ERR unknown command 'PRI'".into()))
        );
        assert_eq!(
            Peer::read(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Some(Peer::Other("SSH-2.0-OpenSSH_9.2".into()))
        );
        assert_eq!(Peer::read(b""), None);
    }

    #[test]
    fn one_hint_per_server_whichever_scheme_was_tried() {
        let a = addr("127.0.0.1:6379");
        let o = origins("--addr", false);
        // Redis and web servers are named as such over TLS and plain text
        // alike, never "use http://" one way and "drop http://" the other.
        for tls in [true, false] {
            let redis = Peer::Redis("-ERR x".into())
                .hint(&a, tls, &o)
                .unwrap_or_default();
            assert!(redis.contains("a Redis server"), "{redis}");
            assert!(redis.contains("not stormlockd"), "{redis}");
            assert!(redis.contains("comes from --addr"), "{redis}");
            assert!(!redis.contains("http://"), "{redis}");
            let web = Peer::Http1("HTTP/1.1 400".into())
                .hint(&a, tls, &o)
                .unwrap_or_default();
            assert!(web.contains("HTTP/1 web server"), "{web}");
        }
        // A stormlockd of the other kind gets the scheme to use.
        let insecure = Peer::PlainHttp2.hint(&a, true, &o).unwrap_or_default();
        assert!(insecure.contains("use http://127.0.0.1:6379"), "{insecure}");
        let tls = Peer::Tls.hint(&a, false, &o).unwrap_or_default();
        assert!(tls.contains("drop http://"), "{tls}");
        assert_eq!(Peer::Tls.hint(&a, true, &o), None);
        assert_eq!(Peer::PlainHttp2.hint(&a, false, &o), None);
    }

    #[test]
    fn development_certificates_are_never_blamed_on_ca() {
        let a = addr("127.0.0.1:7466");
        let failure = TransportFailure {
            text: "invalid peer certificate: BadSignature".into(),
        };
        let context = |origins| Context {
            addr: &a,
            tls: true,
            no_identity: false,
            origins,
            peer: None,
        };
        let dev = origins("default", true);
        let err = failure.error("cannot connect".into(), &context(&dev));
        assert_eq!(err.exit, Exit::Denied);
        let text = err.to_string();
        assert!(!text.contains("--ca)"), "{text}");
        assert!(text.contains("development CA"), "{text}");
        assert!(
            text.contains("/home/a/.local/state/stormlock/tls"),
            "{text}"
        );
        assert!(text.contains("STORMLOCK_DATA_DIR"), "{text}");
        assert!(text.contains("--ca/--cert/--key"), "{text}");
        let given = origins("default", false);
        let text = failure
            .error("cannot connect".into(), &context(&given))
            .to_string();
        assert!(text.contains("the CA given (--ca)"), "{text}");
        // The client side of the development pair, refused.
        let refused = TransportFailure {
            text: "received fatal alert: UnknownCA".into(),
        };
        let text = refused.error("x".into(), &context(&dev)).to_string();
        assert!(
            text.contains("development certificates were found in"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_connection_says_where_the_address_came_from() {
        let a = addr("127.0.0.1:7466");
        let failure = TransportFailure {
            text: "tcp connect error: Connection refused (os error 111)".into(),
        };
        for (source, said) in [
            ("default", "is the default address"),
            ("--addr", "comes from --addr"),
            ("STORMLOCK_ADDR", "comes from STORMLOCK_ADDR"),
            (
                "addr in /home/a/.stormlock.toml",
                "comes from addr in /home/a/.stormlock.toml",
            ),
        ] {
            let o = origins(source, true);
            let context = Context {
                addr: &a,
                tls: true,
                no_identity: false,
                origins: &o,
                peer: None,
            };
            let err = failure.error("cannot connect".into(), &context);
            assert_eq!(err.exit, Exit::Unreachable);
            assert!(err.to_string().contains(said), "{source}: {err}");
        }
    }
}
