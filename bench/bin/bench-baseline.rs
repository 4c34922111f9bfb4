//! `bench-baseline`: the daemon's transport with nothing behind it. A bare
//! tonic server on the same set-up as `stormlockd` (mutual TLS, HTTP/2, the
//! 64 KiB request limit, TCP_NODELAY, a multi-threaded runtime) whose
//! `stormlock.v1.LockService` answers every call with a reply built once:
//! each Acquire is granted the same lease, each Release releases. `stormlock
//! bench` against it measures what tonic, h2, rustls and tokio cost alone;
//! against the daemon, the difference is the daemon's own work.
//!
//!     stormlockd --data-dir /tmp/sl     # once, to create the development PKI
//!     bench-baseline --data-dir /tmp/sl # prints `listening on 127.0.0.1:PORT`
//!     stormlock --addr 127.0.0.1:PORT --ca /tmp/sl/tls/ca.crt \
//!         --cert /tmp/sl/tls/client.crt --key /tmp/sl/tls/client.key \
//!         bench -w uncontended --clients 16 -d 5s

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use stormlock_api::paths::{DevTls, default_data_dir};
use stormlock_api::pb;
use stormlock_api::pb::lock_service_server::{LockService, LockServiceServer};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// The daemon's limits (`daemon/server.rs`), so that both decode alike.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Serve stormlock.v1.LockService with constant answers over mutual TLS, to
/// measure the gRPC stack alone.
#[derive(Debug, Parser)]
#[command(name = "bench-baseline", max_term_width = 100)]
struct Args {
    /// Address to listen on; the bound address is printed on the first line
    /// of standard output (`listening on ADDR`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A stormlockd data directory whose `tls/` holds the development PKI
    /// (a daemon that ran on it once made it) [default: the daemon's]
    #[arg(long, value_name = "DIR", conflicts_with = "cert")]
    data_dir: Option<PathBuf>,
    /// Server certificate chain (PEM), instead of the development PKI.
    #[arg(long, value_name = "FILE", requires_all = ["key", "client_ca"])]
    cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// CA that signs the client certificates every connection must present.
    #[arg(long, value_name = "FILE", requires = "cert")]
    client_ca: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // tonic builds its server TLS on the process's provider; make it ring,
    // as the daemon does, whatever else a unified build enabled in rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench-baseline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-baseline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = tls_config(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    Server::builder()
        .tls_config(tls)?
        .add_service(
            LockServiceServer::new(Constant::new())
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        )
        .serve_with_incoming_shutdown(
            // Nagle off, as the daemon: small calls would wait ~40 ms each.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown_signal(),
        )
        .await?;
    Ok(())
}

/// The server's identity and the client CA, from flags or a development PKI.
/// A client CA is always set: connections without a client certificate it
/// signed are refused at the handshake, as by the daemon's development mode.
fn tls_config(args: &Args) -> anyhow::Result<ServerTlsConfig> {
    let (cert, key, client_ca) = match (&args.cert, &args.key, &args.client_ca) {
        (Some(cert), Some(key), Some(ca)) => (cert.clone(), key.clone(), ca.clone()),
        _ => {
            let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
            let dev = DevTls::in_data_dir(&data_dir);
            anyhow::ensure!(
                dev.ca_cert().is_file(),
                "no development PKI in {}: start stormlockd once with --data-dir {}, \
                 or pass --cert, --key and --client-ca",
                dev.dir.display(),
                data_dir.display()
            );
            (dev.server_cert(), dev.server_key(), dev.ca_cert())
        }
    };
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&cert)?, read(&key)?))
        .client_ca_root(Certificate::from_pem(read(&client_ca)?)))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// LockService with one answer per RPC, built at start and cloned per call:
/// no validation, no state, no logging.
struct Constant {
    acquire: pb::AcquireResponse,
    release: pb::ReleaseResponse,
    renew: pb::RenewResponse,
    current: pb::CurrentResponse,
    is_held: pb::IsHeldResponse,
    list: pb::ListResponse,
    force_release: pb::ForceReleaseResponse,
}

impl Constant {
    fn new() -> Self {
        // Shaped like a lease the daemon grants, so replies weigh the same
        // on the wire: a resource name, 32 hex digits of id, a principal,
        // two timestamps and a fence.
        let lease = pb::Lease {
            resource: "bench/baseline".to_string(),
            lease_id: "0123456789abcdef0123456789abcdef".to_string(),
            principal: "bench@baseline".to_string(),
            reason: String::new(),
            acquired_at: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 123_456_789,
            }),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_767_225_660,
                nanos: 123_456_789,
            }),
            fence: 1,
        };
        Self {
            acquire: pb::AcquireResponse {
                acquired: true,
                lease: Some(lease.clone()),
                ..Default::default()
            },
            release: pb::ReleaseResponse { released: true },
            renew: pb::RenewResponse {
                lease: Some(lease),
                ..Default::default()
            },
            current: pb::CurrentResponse::default(),
            is_held: pb::IsHeldResponse { held: true },
            list: pb::ListResponse::default(),
            force_release: pb::ForceReleaseResponse::default(),
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl LockService for Constant {
    async fn acquire(&self, _: Request<pb::AcquireRequest>) -> Reply<pb::AcquireResponse> {
        Ok(Response::new(self.acquire.clone()))
    }

    async fn release(&self, _: Request<pb::ReleaseRequest>) -> Reply<pb::ReleaseResponse> {
        Ok(Response::new(self.release))
    }

    async fn renew(&self, _: Request<pb::RenewRequest>) -> Reply<pb::RenewResponse> {
        Ok(Response::new(self.renew.clone()))
    }

    async fn current(&self, _: Request<pb::CurrentRequest>) -> Reply<pb::CurrentResponse> {
        Ok(Response::new(self.current.clone()))
    }

    async fn is_held(&self, _: Request<pb::IsHeldRequest>) -> Reply<pb::IsHeldResponse> {
        Ok(Response::new(self.is_held))
    }

    async fn list(&self, _: Request<pb::ListRequest>) -> Reply<pb::ListResponse> {
        Ok(Response::new(self.list.clone()))
    }

    async fn force_release(
        &self,
        _: Request<pb::ForceReleaseRequest>,
    ) -> Reply<pb::ForceReleaseResponse> {
        Ok(Response::new(self.force_release.clone()))
    }

    async fn reserve(&self, _: Request<pb::ReserveRequest>) -> Reply<pb::ReserveResponse> {
        Ok(Response::new(pb::ReserveResponse::default()))
    }

    async fn unreserve(&self, _: Request<pb::UnreserveRequest>) -> Reply<pb::UnreserveResponse> {
        Ok(Response::new(pb::UnreserveResponse::default()))
    }

    async fn list_reservations(
        &self,
        _: Request<pb::ListReservationsRequest>,
    ) -> Reply<pb::ListReservationsResponse> {
        Ok(Response::new(pb::ListReservationsResponse::default()))
    }

    /// Ends at once: no events, and nothing holds a shutdown up.
    type WatchStream = tokio_stream::Empty<Result<pb::WatchResponse, Status>>;

    async fn watch(&self, _: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        Ok(Response::new(tokio_stream::empty()))
    }
}
