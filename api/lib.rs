//! The contract between `stormlockd` and its clients.
//!
//! # Layout
//!
//! - [`pb`]: the generated gRPC types and stubs of `stormlock.v1` (wire only)
//!   and the descriptor set that reflection serves.
//! - [`details`]: typed details of error answers (who broke a lease).
//! - [`duration`]: operator-friendly durations (`4 seconds`, `1d2h`), parsed
//!   and printed the same way by the daemon's config and the CLI's flags.
//! - [`paths`]: the default port, data directory, development PKI file names
//!   and local principal, so that a CLI on the daemon's host finds it with no
//!   configuration.
//!
//! It depends on no engine and on nothing else of the workspace: the CLI
//! links this crate, never the daemon.

pub mod details;
pub mod duration;
pub mod paths;
pub mod pb;
