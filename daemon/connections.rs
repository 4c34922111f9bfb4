//! What one connection may cost the daemon, before and after its caller is
//! authenticated: the `[connections]` settings, and the listener that
//! enforces them on the gRPC port and the plain-text health port.
//!
//! The listener accepts connections itself rather than leaving it to tonic:
//!
//! - At most `max_connections` are open at once, counted from `accept` until
//!   the connection closes. At the limit the daemon stops accepting: new
//!   connections wait in the kernel's backlog (the client sees a slow
//!   connect, not an error) and are taken in turn as slots free.
//! - A connection must finish its TLS handshake (in plain text: send the
//!   HTTP/2 preface) within `handshake_timeout`, or it is closed, so a
//!   connection that never sends a byte holds its slot that long at most.
//!   Handshakes run concurrently: a slow one never delays the next accept.
//! - When `accept` fails for want of resources (out of file descriptors),
//!   the listener pauses, 50 ms doubling up to 1 s, logs once per burst of
//!   failures and carries on; it never spins and never gives up.
//!
//! The HTTP/2 limits (streams per connection, keepalive pings, connection
//! age) are tonic's, set from the same settings by `server`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

use crate::duration::format_duration;

/// Default `handshake_timeout`: ample for a TLS handshake across the world,
/// short enough that idle connections cannot hold the slots for long.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `max_connections`: far more than a lock service's clients need,
/// and within the open-file limits of systemd services and containers
/// (the daemon raises its soft limit to fit; see [`fit_open_files`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `max_streams_per_connection`: hyper's own default, which tonic
/// removes; every waiting Acquire and every Watch holds one stream.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 200;
/// Default `keepalive_interval`: how long a connection may be silent before
/// the daemon pings it.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// Default `keepalive_timeout`: how long a ping may go unanswered before the
/// connection is closed as dead.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest `max_connections` accepted: beyond it the file-descriptor limit,
/// not this setting, would be the bound.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;

/// Connections to the plain-text health port at most (counted apart from
/// the API's, and at most `max_connections`): probes need a handful, and a
/// flood there must not take the API's slots.
pub const HEALTH_MAX_CONNECTIONS: usize = 64;

/// Connections to the metrics port at most: a scraper needs one or two, and
/// a flood there must take neither the API's slots nor its file
/// descriptors.
pub const METRICS_MAX_CONNECTIONS: usize = 16;

/// How long a connection to the metrics port may take to send its first
/// byte: one that sends nothing gives its slot back this soon.
pub const METRICS_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection to the metrics port may last. A scrape takes
/// milliseconds; the bound frees the slots of connections that send their
/// request a byte at a time, or keep one open for ever.
pub const METRICS_CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// `[connections]`: limits on every connection to the gRPC port (and the
/// plain-text health port). Durations are whole seconds or more (`"10s"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawConnectionLimits")]
pub struct ConnectionLimits {
    /// Time for a new connection to finish its TLS handshake (plain text:
    /// to send the HTTP/2 preface); past it the connection is closed.
    /// Default `10s`.
    pub handshake_timeout: Duration,
    /// Connections open at once, handshaking or established. At the limit
    /// new connections wait in the kernel's backlog until one closes.
    /// Default 10,000.
    pub max_connections: usize,
    /// Concurrent calls (HTTP/2 streams) on one connection; a client's
    /// calls beyond it wait for one to finish. Default 200.
    pub max_streams_per_connection: u32,
    /// A connection silent this long is pinged. Default `60s`.
    pub keepalive_interval: Duration,
    /// A ping unanswered this long closes the connection. Default `20s`.
    pub keepalive_timeout: Duration,
    /// Connections older than this are asked to close (HTTP/2 GOAWAY):
    /// calls in flight finish, clients reconnect for new ones. Default: no
    /// limit.
    pub max_connection_age: Option<Duration>,
    /// How long calls in flight may take after `max_connection_age` before
    /// the connection is closed anyway. Default: as long as they take.
    pub max_connection_age_grace: Option<Duration>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_connection_age: None,
            max_connection_age_grace: None,
        }
    }
}

impl ConnectionLimits {
    /// Checks every value; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let at_least_1s = |key: &str, value: Duration| {
            if value < Duration::from_secs(1) {
                Err(format!(
                    "connections.{key}: must be at least 1s (got {})",
                    format_duration(value)
                ))
            } else {
                Ok(())
            }
        };
        at_least_1s("handshake_timeout", self.handshake_timeout)?;
        at_least_1s("keepalive_interval", self.keepalive_interval)?;
        at_least_1s("keepalive_timeout", self.keepalive_timeout)?;
        if let Some(age) = self.max_connection_age {
            at_least_1s("max_connection_age", age)?;
        }
        if let Some(grace) = self.max_connection_age_grace {
            at_least_1s("max_connection_age_grace", grace)?;
            if self.max_connection_age.is_none() {
                return Err(
                    "connections.max_connection_age_grace: needs max_connection_age".to_string(),
                );
            }
        }
        if !(1..=MAX_MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(format!(
                "connections.max_connections: must be between 1 and {MAX_MAX_CONNECTIONS} \
                 (got {})",
                self.max_connections
            ));
        }
        if self.max_streams_per_connection == 0 {
            return Err(
                "connections.max_streams_per_connection: must be at least 1 (got 0)".to_string(),
            );
        }
        Ok(())
    }
}

/// `[connections]` as written, before [`ConnectionLimits::validate`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnectionLimits {
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    handshake_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_streams_per_connection: Option<u32>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    keepalive_interval: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    keepalive_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    max_connection_age: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    max_connection_age_grace: Option<Duration>,
}

impl TryFrom<RawConnectionLimits> for ConnectionLimits {
    type Error = String;

    fn try_from(raw: RawConnectionLimits) -> Result<Self, String> {
        let default = Self::default();
        let limits = Self {
            handshake_timeout: raw.handshake_timeout.unwrap_or(default.handshake_timeout),
            max_connections: raw.max_connections.unwrap_or(default.max_connections),
            max_streams_per_connection: raw
                .max_streams_per_connection
                .unwrap_or(default.max_streams_per_connection),
            keepalive_interval: raw.keepalive_interval.unwrap_or(default.keepalive_interval),
            keepalive_timeout: raw.keepalive_timeout.unwrap_or(default.keepalive_timeout),
            max_connection_age: raw.max_connection_age,
            max_connection_age_grace: raw.max_connection_age_grace,
        };
        limits.validate()?;
        Ok(limits)
    }
}

/// File descriptors kept for everything but client connections (backend
/// pools, the audit log, the embedded store, the metrics listener), or a
/// quarter of the limit when that is smaller.
const RESERVED_FILES: u64 = 256;

/// How many client connections fit in the open-file limit, up to `wanted`.
/// Raises the soft limit (within the hard one) to fit `wanted` plus a
/// reserve, as Go programs do at start; when even the hard limit is short,
/// says so once and returns what fits, so that connections never take the
/// descriptors the backends need.
pub fn fit_open_files(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    let wanted_u64 = u64::try_from(wanted).unwrap_or(u64::MAX);
    let needed = wanted_u64.saturating_add(RESERVED_FILES);
    let mut limit = soft;
    if soft < needed {
        let raised = needed.min(hard);
        match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
            Ok(()) => {
                debug!(from = soft, to = raised, "raised the open-file limit");
                limit = raised;
            }
            Err(e) => debug!(error = %e, "cannot raise the open-file limit"),
        }
    }
    let reserve = RESERVED_FILES.min(limit / 4);
    let fit = limit.saturating_sub(reserve).max(1);
    if fit >= wanted_u64 {
        return wanted;
    }
    let fit = usize::try_from(fit).unwrap_or(wanted);
    warn!(
        open_file_limit = limit,
        wanted,
        serving = fit,
        "the open-file limit (ulimit -n, systemd LimitNOFILE) is too low for \
         [connections] max_connections: at most {fit} connections are served; raise the \
         limit or lower max_connections"
    );
    fit
}

/// A connection's first exchange, done by the listener within the
/// handshake timeout before the connection is handed to the gRPC server.
pub(crate) trait Handshake: Clone + Send + Sync + 'static {
    /// The connection once the handshake is done.
    type Io: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;

    /// Performs the handshake on `tcp`.
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// The TLS handshake, with the configuration current at the time (its
/// files are reloaded when they change). The resulting stream's connect
/// info is tonic's `TlsConnectInfo`, so `Request::peer_certs` sees client
/// certificates as it did when tonic did the handshake.
#[derive(Clone)]
pub(crate) struct TlsHandshake(pub(crate) Arc<crate::tls::ReloadingTls>);

impl Handshake for TlsHandshake {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    async fn handshake(&self, tcp: TcpStream) -> io::Result<Self::Io> {
        tokio_rustls::TlsAcceptor::from(self.0.config())
            .accept(tcp)
            .await
    }
}

/// The client's HTTP/2 connection preface (RFC 9113, 3.4).
const PREFACE_LEN: usize = 24;

/// Plain text: the handshake is receiving the client's HTTP/2 preface, so a
/// connection that sends nothing is closed like a stalled TLS handshake.
#[derive(Clone)]
pub(crate) struct PlainHandshake;

impl Handshake for PlainHandshake {
    type Io = Prefaced;

    async fn handshake(&self, mut tcp: TcpStream) -> io::Result<Prefaced> {
        let mut preface = [0; PREFACE_LEN];
        tcp.read_exact(&mut preface).await?;
        Ok(Prefaced {
            preface,
            replayed: 0,
            tcp,
        })
    }
}

/// A plain-text connection whose preface was read by the listener: reads
/// replay it, then continue on the socket.
pub(crate) struct Prefaced {
    preface: [u8; PREFACE_LEN],
    replayed: usize,
    tcp: TcpStream,
}

impl AsyncRead for Prefaced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < PREFACE_LEN {
            let rest = &this.preface[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefaced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Connected for Prefaced {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

/// The metrics port's HTTP/1: the handshake is the request's first byte
/// arriving (within the listener's handshake timeout); the connection then
/// fails every read and write once `lifetime` has passed, which closes it.
#[derive(Clone)]
pub(crate) struct Expiring(pub(crate) Duration);

impl Handshake for Expiring {
    type Io = Expires;

    async fn handshake(&self, tcp: TcpStream) -> io::Result<Expires> {
        if tcp.peek(&mut [0; 1]).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Expires {
            tcp,
            end: Box::pin(tokio::time::sleep(self.0)),
        })
    }
}

/// A connection that ends at a deadline (see [`Expiring`]).
pub(crate) struct Expires {
    tcp: TcpStream,
    end: Pin<Box<tokio::time::Sleep>>,
}

impl Expires {
    /// An error once the deadline has passed; else registers for it, so
    /// that a connection idle in a read is woken and closed then.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.end.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection outlived its lifetime",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Expires {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Expires {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Connected for Expires {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

/// The connections of [`incoming`] as an HTTP server's listener (axum's),
/// for the metrics port.
pub(crate) struct Accepted<Io> {
    incoming: Incoming<Io>,
    local: SocketAddr,
}

impl<Io> Accepted<Io> {
    /// `incoming`, accepted on `listener`.
    pub(crate) fn new(incoming: Incoming<Io>, local: SocketAddr) -> Self {
        Self { incoming, local }
    }
}

impl<Io> axum::serve::Listener for Accepted<Io>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = Conn<Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.next().await {
            // The address is only logged by the server; the local one will do.
            Some(Ok(conn)) => (conn, self.local),
            // The accept loop ended: the server is stopping.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// An accepted connection holding one of the listener's slots until it is
/// dropped (closed).
pub(crate) struct Conn<Io> {
    io: Io,
    _slot: Slot,
}

/// One of a listener's slots, taken by an accepted connection (handshaking
/// or served) and counted in the listener's open-connections gauge while
/// it lasts.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, open: Gauge) -> Self {
        open.inc();
        Self {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Conn<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Conn<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<Io: Connected> Connected for Conn<Io> {
    type ConnectInfo = Io::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Connections handed to the gRPC server once their handshake is done.
pub(crate) type Incoming<Io> =
    Pin<Box<dyn Stream<Item = Result<Conn<Io>, Infallible>> + Send + 'static>>;

/// Serves `listener` with at most `max_connections` open and `handshake`
/// done within `handshake_timeout`, counting the connections open in `open`.
/// The accept loop runs until the returned stream is dropped (the gRPC
/// server stopped); then the listener closes and unfinished handshakes are
/// abandoned.
pub(crate) fn incoming<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    handshake_timeout: Duration,
    max_connections: usize,
    open: Gauge,
) -> Incoming<H::Io> {
    // Finished handshakes wait here for the server to take them; it takes
    // them as fast as it can spawn a task each.
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(
        max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    tokio::spawn(accept_loop(
        listener,
        handshake,
        handshake_timeout,
        (slots, open),
        tx,
    ));
    Box::pin(ReceiverStream::new(rx).map(Ok))
}

async fn accept_loop<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    handshake_timeout: Duration,
    (slots, open): (Arc<Semaphore>, Gauge),
    tx: mpsc::Sender<Conn<H::Io>>,
) {
    let mut handshakes = JoinSet::new();
    // A slot is taken before accepting: at the limit, connections stay in
    // the kernel's backlog.
    let mut slot: Option<OwnedSemaphorePermit> = None;
    let mut failures = AcceptFailures::default();
    let mut paused_until: Option<Instant> = None;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            () = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now)),
                if paused_until.is_some() => paused_until = None,
            permit = slots.clone().acquire_owned(), if slot.is_none() => match permit {
                Ok(permit) => slot = Some(permit),
                // The semaphore is never closed.
                Err(_) => return,
            },
            accepted = listener.accept(), if slot.is_some() && paused_until.is_none() => {
                match accepted {
                    Ok((tcp, peer)) => {
                        failures.succeeded();
                        if let Some(permit) = slot.take() {
                            handshakes.spawn(handshake_one(
                                handshake.clone(),
                                tcp,
                                peer,
                                handshake_timeout,
                                Slot::new(permit, open.clone()),
                                tx.clone(),
                            ));
                        }
                    }
                    Err(e) => {
                        if let Some(pause) = failures.failed(&e) {
                            paused_until = Some(Instant::now() + pause);
                        }
                    }
                }
            }
        }
    }
}

async fn handshake_one<H: Handshake>(
    handshake: H,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    slot: Slot,
    tx: mpsc::Sender<Conn<H::Io>>,
) {
    // Requests and answers are small: waiting to coalesce them (Nagle)
    // cost ~40 ms per call.
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    match tokio::time::timeout(timeout, handshake.handshake(tcp)).await {
        Ok(Ok(io)) => {
            // Fails only when the server stopped: the connection is dropped.
            let _ = tx.send(Conn { io, _slot: slot }).await;
        }
        Ok(Err(e)) => debug!(%peer, error = %e, "handshake failed"),
        Err(_) => debug!(%peer, timeout = ?timeout, "handshake timed out: connection closed"),
    }
}

/// First pause after `accept` failed for want of resources.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// Longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// A burst of failing `accept`s: how long to pause, and logging it once.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// Failures since the last successful accept.
    count: u64,
    /// The next pause.
    pause: Duration,
}

impl AcceptFailures {
    /// Records a failure; returns how long to pause before the next
    /// attempt, or `None` when the error concerned only that connection
    /// (reset or aborted before it was taken), which is no reason to wait.
    fn failed(&mut self, error: &io::Error) -> Option<Duration> {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock
        ) {
            debug!(error = %error, "a connection was lost before it was accepted");
            return None;
        }
        if self.count == 0 {
            warn!(
                error = %error,
                "cannot accept connections; retrying with pauses of up to {}s, logged once \
                 until it works again",
                MAX_PAUSE.as_secs()
            );
            self.pause = FIRST_PAUSE;
        }
        self.count += 1;
        let pause = self.pause;
        debug!(error = %error, failures = self.count, pause = ?pause, "accept failed; pausing");
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        Some(pause)
    }

    /// Records a successful accept, which ends a burst of failures.
    fn succeeded(&mut self) {
        if self.count > 0 {
            info!(failures = self.count, "accepting connections again");
            self.count = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        #[serde(default)]
        connections: ConnectionLimits,
    }

    fn parse(text: &str) -> Result<ConnectionLimits, String> {
        toml::from_str::<File>(text)
            .map(|f| f.connections)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply_to_a_missing_table_and_to_missing_keys() {
        assert_eq!(parse("").expect("empty"), ConnectionLimits::default());
        let limits = parse("[connections]\nmax_connections = 50\n").expect("partial");
        assert_eq!(limits.max_connections, 50);
        assert_eq!(limits.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(limits.max_connection_age, None);
        assert!(ConnectionLimits::default().validate().is_ok());
    }

    #[test]
    fn every_key_is_read() {
        let limits = parse(
            "[connections]\nhandshake_timeout = \"3s\"\nmax_connections = 7\n\
             max_streams_per_connection = 2\nkeepalive_interval = \"1m\"\n\
             keepalive_timeout = \"5s\"\nmax_connection_age = \"1h\"\n\
             max_connection_age_grace = \"30s\"\n",
        )
        .expect("valid");
        assert_eq!(
            limits,
            ConnectionLimits {
                handshake_timeout: Duration::from_secs(3),
                max_connections: 7,
                max_streams_per_connection: 2,
                keepalive_interval: Duration::from_secs(60),
                keepalive_timeout: Duration::from_secs(5),
                max_connection_age: Some(Duration::from_secs(3600)),
                max_connection_age_grace: Some(Duration::from_secs(30)),
            }
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (text, wanted) in [
            (
                "handshake_timeout = \"0s\"",
                "connections.handshake_timeout",
            ),
            (
                "keepalive_interval = \"0s\"",
                "connections.keepalive_interval",
            ),
            (
                "keepalive_timeout = \"0s\"",
                "connections.keepalive_timeout",
            ),
            (
                "max_connection_age = \"0s\"",
                "connections.max_connection_age",
            ),
            ("max_connections = 0", "connections.max_connections"),
            ("max_connections = 2000000", "connections.max_connections"),
            (
                "max_streams_per_connection = 0",
                "max_streams_per_connection",
            ),
            ("max_connections = -1", "max_connections"),
            ("handshake_timeout = \"soon\"", "soon"),
            ("max_conections = 5", "max_conections"),
            (
                "max_connection_age_grace = \"5s\"",
                "needs max_connection_age",
            ),
        ] {
            let err = parse(&format!("[connections]\n{text}\n")).expect_err(text);
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn accept_failures_pause_longer_up_to_a_second_and_reset() {
        let mut failures = AcceptFailures::default();
        let emfile = io::Error::from_raw_os_error(24);
        let pauses: Vec<_> = (0..7).filter_map(|_| failures.failed(&emfile)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            pauses,
            [
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000)
            ]
        );
        failures.succeeded();
        assert_eq!(failures.count, 0);
        assert_eq!(failures.failed(&emfile), Some(ms(50)));
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(failures.failed(&reset), None);
    }

    #[test]
    fn the_open_file_limit_fits_small_wants_unchanged() {
        assert_eq!(fit_open_files(1), 1);
    }
}
