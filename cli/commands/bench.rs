//! `bench`: drive a live daemon with concurrent clients and report
//! throughput, latency percentiles and errors (the workloads and the report
//! are `stormlock_bench`'s, shared with the in-process backend benchmark).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use stormlock_api::pb;
use stormlock_bench::{Limit, OpError, OpResult, Options, Target};
use tonic::{Response, Status};

use super::{Session, note, out, proto_duration};
use crate::args::{BenchArgs, BenchFormat};
use crate::client::Client;
use crate::error::{CliResult, Exit};

/// Operations when neither `--ops` nor `--duration` is given.
const DEFAULT_OPS: u64 = 10_000;
/// Connections opened at once while setting up.
const PARALLEL_CONNECTS: usize = 32;

/// Runs `bench`.
pub async fn run(session: Session, args: BenchArgs) -> CliResult {
    let clients = args.clients as usize;
    let connections = args
        .connections
        .map_or(clients.min(default_connections()), |c| c as usize);
    let pool = connect(&session, connections).await?;
    if let Some(hold) = args.hold_idle {
        return hold_idle(&pool, &session, hold).await;
    }
    let limit = match args.duration {
        Some(d) => Limit::Time(d),
        None => Limit::Ops(args.ops.unwrap_or(DEFAULT_OPS)),
    };
    let options = Options {
        ttl: args.ttl,
        wait: args.wait,
        prefix: args.prefix,
        ..Options::new(args.workload, clients, limit)
    };
    let principal = pool[0].declared_principal(&session.settings.principal);
    let target = Arc::new(DaemonTarget {
        ttl: proto_duration("TTL", args.ttl)?,
        wait: proto_duration("wait", args.wait)?,
        principal,
        timeout: session.settings.timeout,
        pool,
    });
    let name = session.settings.addr.to_string();
    let report = stormlock_bench::run(target, options, "daemon", &name, Some(connections)).await;
    match args.format {
        BenchFormat::Table => out(&report.table())?,
        BenchFormat::Json => out(&format!("{}\n", report.json()))?,
    }
    Ok(if report.ops == 0 {
        Exit::Failure
    } else {
        Exit::Success
    })
}

/// One connection per CPU (capped by the clients): enough to keep the
/// daemon's cores busy without a TLS session per client.
fn default_connections() -> usize {
    cpus()
}

/// One thread per CPU.
pub fn default_threads() -> usize {
    cpus()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Opens `n` connections, each a client of its own.
async fn connect(session: &Session, n: usize) -> CliResult<Vec<Client>> {
    let settings = &session.settings;
    futures::stream::iter(0..n.max(1))
        .map(|_| Client::connect(settings))
        .buffer_unordered(PARALLEL_CONNECTS)
        .try_collect()
        .await
}

/// Makes one call on every connection, so that each is a live HTTP/2
/// connection, then holds them all idle for `hold`.
async fn hold_idle(pool: &[Client], session: &Session, hold: Duration) -> CliResult {
    let probe = |client: &Client| {
        let client = client.clone();
        async move {
            client
                .current(pb::CurrentRequest {
                    resource: "bench/idle".to_string(),
                    ..Default::default()
                })
                .await
        }
    };
    futures::stream::iter(pool)
        .map(probe)
        .buffer_unordered(PARALLEL_CONNECTS)
        .try_collect::<Vec<_>>()
        .await?;
    note(&format!(
        "holding {} connections to {} for {}",
        pool.len(),
        session.settings.addr,
        stormlock_api::duration::format_duration(hold)
    ));
    tokio::time::sleep(hold).await;
    Ok(Exit::Success)
}

/// The daemon, over a pool of connections shared round-robin by clients.
struct DaemonTarget {
    pool: Vec<Client>,
    principal: String,
    ttl: prost_types::Duration,
    wait: prost_types::Duration,
    timeout: Duration,
}

impl DaemonTarget {
    fn client(&self, client: usize) -> &Client {
        &self.pool[client % self.pool.len()]
    }

    /// Runs a call within `budget`; a failure is counted by its gRPC code.
    async fn call<T>(
        budget: Duration,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> OpResult<T> {
        match tokio::time::timeout(budget, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(OpError::new(stormlock_bench::snake_case(&format!(
                "{:?}",
                status.code()
            )))),
            Err(_) => Err(OpError::new("timeout")),
        }
    }
}

#[async_trait]
impl Target for DaemonTarget {
    async fn acquire(
        &self,
        client: usize,
        resource: &str,
        _ttl: Duration,
        wait: Duration,
    ) -> OpResult<Option<String>> {
        let c = self.client(client);
        let request = pb::AcquireRequest {
            resource: resource.to_string(),
            ttl: Some(self.ttl),
            wait: (!wait.is_zero()).then_some(self.wait),
            principal: self.principal.clone(),
            ..Default::default()
        };
        let budget = self.timeout + wait;
        let response = Self::call(budget, c.rpc().acquire(c.request(request, budget))).await?;
        Ok(response
            .acquired
            .then(|| response.lease.map(|l| l.lease_id))
            .flatten())
    }

    async fn release(&self, client: usize, resource: &str, id: &str) -> OpResult<()> {
        let c = self.client(client);
        let request = pb::ReleaseRequest {
            resource: resource.to_string(),
            lease_id: id.to_string(),
        };
        Self::call(
            self.timeout,
            c.rpc().release(c.request(request, self.timeout)),
        )
        .await
        .map(drop)
    }

    async fn renew(&self, client: usize, resource: &str, id: &str, _ttl: Duration) -> OpResult<()> {
        let c = self.client(client);
        let request = pb::RenewRequest {
            resource: resource.to_string(),
            lease_id: id.to_string(),
            ttl: Some(self.ttl),
        };
        Self::call(
            self.timeout,
            c.rpc().renew(c.request(request, self.timeout)),
        )
        .await
        .map(drop)
    }
}
