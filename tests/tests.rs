//! Integration tests: one binary, one module per area.

mod backend_faults;
mod backend_tls;
mod backends;
mod bench;
mod conformance;
#[cfg(feature = "dynamodb")]
mod dynamodb_backend;
mod e2e;
mod security;
mod service;
mod shared_backend;
mod sql_backends;
mod support;
