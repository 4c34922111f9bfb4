//! Integration tests: one binary, one module per area.

mod backend_faults;
mod backends;
mod conformance;
#[cfg(feature = "dynamodb")]
mod dynamodb_backend;
mod e2e;
mod service;
mod sql_backends;
mod support;
