//! Integration tests: one binary, one module per area.

mod backends;
mod conformance;
mod sql_backends;
mod support;
