//! Stormlock: a lease-based lock service for human operators and their scripts.
//!
//! # Layout
//!
//! - [`pb`]: the generated gRPC types and stubs of `stormlock.v1` (wire only).
//! - [`lease`]: the daemon's own lease model, shared by service and backends.
//! - [`backend`]: the `Backend` trait and one module per engine.
//! - [`duration`]: operator-friendly durations (`4 seconds`, `1d2h`).
//! - [`paths`]: default data directory and development TLS file locations,
//!   shared by the daemon and the CLI.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod duration;
pub mod lease;
pub mod paths;
pub mod pb;
