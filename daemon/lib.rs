//! `stormlockd`: the Stormlock daemon, a lease-based lock service for human
//! operators and their scripts.
//!
//! # Layout
//!
//! Requests flow one way: [`server`] → [`service`] (identify with [`auth`],
//! validate with [`validate`], permit with [`auth`]) → [`locks`] (the lock
//! core: waiting, outcomes, events) → [`routing`] → a [`backend`] → its
//! engine. Every outcome is one typed [`events::LockEvent`], fanned out to
//! [`audit`], [`metrics`] and [`changes`].
//!
//! - [`pb`], [`duration`], [`paths`]: the contract shared with the clients,
//!   from the `stormlock-api` crate.
//! - [`lease`]: the daemon's own lease model, shared by service and backends.
//! - [`locks`]: the lock core: acquire with waiting, renew, release, break,
//!   orphan clean-up; emits one [`events::LockEvent`] per outcome.
//! - [`events`]: the typed events and their one fan-out.
//! - [`glob`]: resource and principal patterns, compiled at parse time for
//!   routing and access rules.
//! - [`backend`]: the `Backend` trait and one module per engine.
//! - [`config`]: the daemon's TOML configuration.
//! - [`error`]: request errors and their one mapping to gRPC status codes.
//! - [`audit`]: the audit log (one JSON line per event).
//! - [`metrics`]: Prometheus metrics and their HTTP listener.
//! - [`telemetry`]: per-request tracing spans and request metrics (a tower
//!   layer around the gRPC server).
//! - [`private`]: files only the daemon's user may read (data dir, store,
//!   keys).
//! - [`tls`]: certificates, the development PKI, client identities.
//! - [`changes`]: who hears that a resource changed (waiters, watches), fed
//!   by this daemon's own calls and the engines' notifications.
//! - [`waiters`]: the first-come-first-served line of callers waiting for a
//!   resource.
//! - [`watch`]: the events of a `Watch` stream.

#![forbid(unsafe_code)]

pub use stormlock_api::{duration, paths, pb};

pub mod audit;
pub mod auth;
pub mod backend;
pub mod changes;
pub mod config;
pub mod connections;
pub mod error;
pub mod events;
pub mod glob;
pub mod lease;
pub mod limits;
pub mod locks;
pub mod metrics;
pub mod notify;
pub mod private;
pub mod reload;
pub mod reservations;
pub mod routing;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod validate;
pub mod waiters;
pub mod watch;
pub mod window_events;
pub mod windows;
