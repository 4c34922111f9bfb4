//! Integration tests: one binary, one module per area.

#[macro_use]
mod support;

mod backend_faults;
mod backend_tls;
mod backends;
mod conformance;
#[cfg(feature = "dynamodb")]
mod dynamodb_backend;
mod e2e;
mod security;
mod service;
mod shared_backend;
mod sql_backends;
mod waiting;
mod watch;
mod workflows;
