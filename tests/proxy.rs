//! A TCP fault proxy for tests: placed between a daemon and an engine, it
//! forwards bytes both ways and injects network faults that can be switched
//! on and off while a run goes on.
//!
//! Faults and what the daemon sees:
//!
//! - [`Fault::Latency`]: every chunk, each way, arrives late.
//! - [`Fault::Blackhole`]: nothing arrives, nothing is refused. New
//!   connections are accepted but not connected through; what was sent is
//!   held back and delivered when the fault clears, as TCP would once a
//!   partition heals.
//! - [`Fault::Reset`]: every open connection is reset (RST); new ones are
//!   reset as soon as they are accepted.
//! - [`Fault::HalfOpen`]: the engine's end of every open connection
//!   vanishes without a word (a crashed host): the daemon's end stays open
//!   and silent for good, whatever happens later. New connections are
//!   silent while the fault lasts.
//! - [`Fault::DropReplies`]: requests reach the engine, which applies them;
//!   the replies are lost. A connection that lost a reply is reset when the
//!   fault clears (its protocol stream has a hole and cannot carry on).
//!
//! - [`Fault::ResetAfter`]: bytes pass until the daemon sends a chunk that
//!   contains a pattern (a value written by the request under test); that
//!   request reaches the engine, which applies it, and the connection is
//!   reset before the answer can come back: an error whose outcome is
//!   unknown, at exactly the request the test is after.
//!   [`Fault::ResetOnceAfter`] does it to the first such connection only and
//!   then heals, so that a client's retry of the same request goes through.
//!
//! Dropping the proxy stops it and closes every connection it holds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A network fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass unharmed.
    None,
    /// Every chunk is delayed this long in each direction.
    Latency(Duration),
    /// Nothing passes until the fault clears; nothing is lost.
    Blackhole,
    /// Connections are reset.
    Reset,
    /// Open connections go silent for good, as if the engine's host died.
    HalfOpen,
    /// Requests pass, replies are lost.
    DropReplies,
    /// The connection that carries a request containing these bytes is
    /// reset once the engine had time to apply it.
    ResetAfter(&'static [u8]),
    /// Like `ResetAfter`, for the first matching connection only; the fault
    /// then clears by itself.
    ResetOnceAfter(&'static [u8]),
}

/// A running proxy; see the module docs.
pub struct FaultProxy {
    /// Where the daemon connects.
    pub addr: SocketAddr,
    fault: Arc<watch::Sender<Fault>>,
    task: tokio::task::JoinHandle<()>,
    /// Client ends of half-open connections, kept open until the proxy stops.
    graveyard: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        let fault = Arc::new(watch::Sender::new(Fault::None));
        let graveyard = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            fault.clone(),
            graveyard.clone(),
        ));
        Self {
            addr,
            fault,
            task,
            graveyard,
        }
    }

    /// Switches to `fault` (`Fault::None` heals).
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault in force (a `ResetOnceAfter` that fired reads `None`).
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// How many connections a `HalfOpen` fault has silenced so far.
    pub fn half_open(&self) -> usize {
        self.graveyard.lock().expect("graveyard").len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.fault.send_replace(Fault::Reset);
        self.graveyard.lock().expect("graveyard").clear();
    }
}

/// Rewrites the `host:port` of `url` (with or without a scheme, user info
/// or path) to `addr`, so that a backend URL points at a proxy.
pub fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{scheme}{userinfo}{addr}{tail}")
}

/// The engine's address in a backend's TOML settings (from
/// `support::shared_backend`): its `url`, `endpoint` or first `endpoints`.
pub fn address_in(backend_toml: &str) -> String {
    backend_toml
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(" = ")?;
            let value = value.trim_matches(['[', ']', '"']);
            matches!(key, "url" | "endpoint" | "endpoints").then(|| value.to_string())
        })
        .expect("the engine's address")
}

/// `backend_toml` with the engine's address pointing at `proxy`.
pub fn proxied(backend_toml: &str, proxy: &FaultProxy) -> String {
    let url = address_in(backend_toml);
    backend_toml.replace(&url, &through(&url, proxy.addr))
}

/// The socket address in `url` (see [`through`]), resolved.
pub fn upstream_of(url: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("no socket address in {url:?}"))
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    fault: Arc<watch::Sender<Fault>>,
    graveyard: Arc<Mutex<Vec<TcpStream>>>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                connections.spawn(connection(client, upstream, fault.clone(), graveyard.clone()));
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Closes `stream` with a reset rather than a FIN. (`SO_LINGER` is
/// deprecated in tokio because a non-zero linger blocks the thread on drop;
/// a zero linger resets at once.)
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Waits while `fault` keeps new connections silent; `false` when the
/// connection must be reset instead.
async fn admitted(faults: &mut watch::Receiver<Fault>) -> bool {
    loop {
        let fault = *faults.borrow_and_update();
        match fault {
            Fault::Reset => return false,
            Fault::Blackhole | Fault::HalfOpen => {
                if faults.changed().await.is_err() {
                    return false;
                }
            }
            _ => return true,
        }
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    fault: Arc<watch::Sender<Fault>>,
    graveyard: Arc<Mutex<Vec<TcpStream>>>,
) {
    let mut faults = fault.subscribe();
    if !admitted(&mut faults).await {
        return reset(client);
    }
    let Ok(Ok(server)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await
    else {
        return reset(client);
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut to_server = vec![0u8; 64 * 1024];
    let mut to_client = vec![0u8; 64 * 1024];
    // Whether a reply was dropped: the stream can no longer be trusted.
    let mut holed = false;
    loop {
        tokio::select! {
            read = client_read.read(&mut to_server) => {
                let Ok(n @ 1..) = read else { break };
                if !pass(&mut faults, &to_server[..n], &mut server_write, false).await {
                    break;
                }
                let matches = |pattern: &[u8]| to_server[..n].windows(pattern.len()).any(|w| w == pattern);
                let current = *faults.borrow();
                let hit = match current {
                    Fault::ResetAfter(pattern) => matches(pattern),
                    // Only the first connection to match: the check and the
                    // clearing are one step.
                    Fault::ResetOnceAfter(pattern) => fault.send_if_modified(|now| {
                        let first = *now == current && matches(pattern);
                        if first {
                            *now = Fault::None;
                        }
                        first
                    }),
                    _ => false,
                };
                if hit {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
            read = server_read.read(&mut to_client) => {
                let Ok(n @ 1..) = read else { break };
                if *faults.borrow() == Fault::DropReplies {
                    holed = true;
                    continue;
                }
                if !pass(&mut faults, &to_client[..n], &mut client_write, true).await {
                    break;
                }
            }
            changed = faults.changed() => {
                if changed.is_err() {
                    break;
                }
                match *faults.borrow_and_update() {
                    Fault::Reset => break,
                    Fault::HalfOpen => {
                        // The engine's side is gone; the daemon's stays open.
                        drop((server_read, server_write));
                        if let Ok(client) = client_read.reunite(client_write) {
                            graveyard.lock().expect("graveyard").push(client);
                        }
                        return;
                    }
                    Fault::None | Fault::Latency(_) if holed => break,
                    _ => {}
                }
            }
        }
    }
    if let Ok(client) = client_read.reunite(client_write) {
        reset(client);
    }
    if let Ok(server) = server_read.reunite(server_write) {
        reset(server);
    }
}

/// Forwards `bytes` under the fault in force; `false` when the connection
/// must end.
async fn pass(
    faults: &mut watch::Receiver<Fault>,
    bytes: &[u8],
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    reply: bool,
) -> bool {
    loop {
        let fault = *faults.borrow();
        match fault {
            Fault::None | Fault::ResetAfter(_) | Fault::ResetOnceAfter(_) => break,
            Fault::DropReplies if !reply => break,
            Fault::DropReplies => return true,
            Fault::Latency(delay) => {
                tokio::time::sleep(delay).await;
                break;
            }
            Fault::Reset | Fault::HalfOpen => return false,
            Fault::Blackhole => {
                if faults.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
    to.write_all(bytes).await.is_ok()
}

mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten_to_the_proxy() {
        let proxy: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(
            through("redis://:pw@127.0.0.1:6379/3", proxy),
            "redis://:pw@127.0.0.1:4000/3"
        );
        assert_eq!(
            through("postgres://u@localhost:5432/test?sslmode=disable", proxy),
            "postgres://u@127.0.0.1:4000/test?sslmode=disable"
        );
        assert_eq!(
            through("http://127.0.0.1:2379", proxy),
            "http://127.0.0.1:4000"
        );
        assert_eq!(through("127.0.0.1:2379", proxy), "127.0.0.1:4000");
        assert_eq!(
            upstream_of("mysql://root@127.0.0.1:3306/test"),
            "127.0.0.1:3306".parse().expect("addr")
        );
    }

    /// An echo server behind the proxy, one fault after another.
    #[tokio::test]
    async fn faults_do_what_they_say() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_addr = echo.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::<u8>::new()));
        let seen = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        seen.lock().expect("seen").extend_from_slice(&buf[..n]);
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = FaultProxy::start(echo_addr).await;
        let short = Duration::from_millis(300);
        let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
        let mut buf = [0u8; 16];

        c.write_all(b"a").await.expect("write");
        c.read_exact(&mut buf[..1]).await.expect("echo");
        assert_eq!(&buf[..1], b"a");

        // Blackhole: held back, then delivered.
        proxy.set(Fault::Blackhole);
        c.write_all(b"b").await.expect("write");
        assert!(tokio::time::timeout(short, c.read(&mut buf)).await.is_err());
        proxy.set(Fault::None);
        c.read_exact(&mut buf[..1])
            .await
            .expect("echo after healing");
        assert_eq!(&buf[..1], b"b");

        // Dropped reply: the request arrives, the answer does not, and the
        // connection is reset once the fault clears.
        proxy.set(Fault::DropReplies);
        c.write_all(b"c").await.expect("write");
        assert!(tokio::time::timeout(short, c.read(&mut buf)).await.is_err());
        assert!(received.lock().expect("seen").ends_with(b"c"));
        proxy.set(Fault::None);
        let after = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
        assert!(
            matches!(after, Ok(Err(_)) | Ok(Ok(0))),
            "a holed connection ends: {after:?}"
        );

        // Reset: open connections end, new ones too.
        let mut d = TcpStream::connect(proxy.addr).await.expect("connect");
        d.write_all(b"d").await.expect("write");
        d.read_exact(&mut buf[..1]).await.expect("echo");
        proxy.set(Fault::Reset);
        let after = tokio::time::timeout(Duration::from_secs(5), d.read(&mut buf)).await;
        assert!(matches!(after, Ok(Err(_)) | Ok(Ok(0))), "reset: {after:?}");

        // Half-open: the connection stays open and silent even after healing.
        proxy.set(Fault::None);
        let mut e = TcpStream::connect(proxy.addr).await.expect("connect");
        e.write_all(b"e").await.expect("write");
        e.read_exact(&mut buf[..1]).await.expect("echo");
        proxy.set(Fault::HalfOpen);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while proxy.half_open() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the connection never went half-open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.set(Fault::None);
        e.write_all(b"f")
            .await
            .expect("a half-open connection takes writes");
        assert!(tokio::time::timeout(short, e.read(&mut buf)).await.is_err());

        // Reset after a pattern: the request arrives, then the connection ends.
        let mut g = TcpStream::connect(proxy.addr).await.expect("connect");
        proxy.set(Fault::ResetAfter(b"xyz"));
        g.write_all(b"1").await.expect("write");
        g.read_exact(&mut buf[..1])
            .await
            .expect("echo before the pattern");
        g.write_all(b"-xyz-").await.expect("write");
        let mut got = Vec::new();
        let after = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut got)).await;
        assert!(after.is_ok(), "the connection ends");
        assert!(received.lock().expect("seen").ends_with(b"-xyz-"));

        // Reset once after a pattern: the first carrier ends, a retry passes.
        proxy.set(Fault::ResetOnceAfter(b"xyz"));
        let mut h = TcpStream::connect(proxy.addr).await.expect("connect");
        h.write_all(b"-xyz-").await.expect("write");
        let mut got = Vec::new();
        let after = tokio::time::timeout(Duration::from_secs(5), h.read_to_end(&mut got)).await;
        assert!(after.is_ok(), "the first carrier ends");
        let mut i = TcpStream::connect(proxy.addr).await.expect("connect");
        i.write_all(b"-xyz-").await.expect("write");
        i.read_exact(&mut buf[..5])
            .await
            .expect("the retry is echoed");
        assert_eq!(&buf[..5], b"-xyz-");

        // Latency: late (a delay each way is the fault itself, so this lower
        // bound is its behaviour, and no slowness can make it fail), but
        // there.
        let mut f = TcpStream::connect(proxy.addr).await.expect("connect");
        proxy.set(Fault::Latency(Duration::from_millis(100)));
        let sent = std::time::Instant::now();
        f.write_all(b"g").await.expect("write");
        f.read_exact(&mut buf[..1]).await.expect("echo");
        let delay = sent.elapsed();
        assert!(delay >= Duration::from_millis(200), "{delay:?}");
        assert_eq!(&buf[..1], b"g");
    }
}
