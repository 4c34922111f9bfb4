//! Integration tests: one binary, one module per area.

mod backends;
mod conformance;
#[cfg(feature = "dynamodb")]
mod dynamodb_backend;
mod support;
