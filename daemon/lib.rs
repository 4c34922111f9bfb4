//! Stormlock: a lease-based lock service for human operators and their scripts.
//!
//! # Layout
//!
//! Requests flow one way: [`server`] → [`service`] (validate with
//! [`validate`], identify with [`auth`], route with [`routing`]) → a
//! [`backend`] → its engine.
//!
//! - [`pb`]: the generated gRPC types and stubs of `stormlock.v1` (wire only).
//! - [`lease`]: the daemon's own lease model, shared by service and backends.
//! - [`backend`]: the `Backend` trait and one module per engine.
//! - [`config`]: the daemon's TOML configuration.
//! - [`error`]: request errors and their one mapping to gRPC status codes.
//! - [`audit`]: the audit log (one JSON line per event).
//! - [`metrics`]: Prometheus metrics and their HTTP listener.
//! - [`telemetry`]: per-request tracing spans and request metrics (a tower
//!   layer around the gRPC server).
//! - [`tls`]: certificates, the development PKI, client identities.
//! - [`changes`]: who hears that a resource changed (waiters, watches), fed
//!   by this daemon's own calls and the engines' notifications.
//! - [`waiters`]: the first-come-first-served line of callers waiting for a
//!   resource.
//! - [`watch`]: the events of a `Watch` stream.
//! - [`duration`]: operator-friendly durations (`4 seconds`, `1d2h`).
//! - [`bench`]: load generation shared by `stormlock bench` and the
//!   in-process backend benchmark.
//! - [`paths`]: default data directory and development TLS file locations,
//!   shared by the daemon and the CLI.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod auth;
pub mod backend;
pub mod bench;
pub mod changes;
pub mod config;
pub mod duration;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod paths;
pub mod pb;
pub mod routing;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod validate;
pub mod waiters;
pub mod watch;
