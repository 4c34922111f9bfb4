//! Integration tests: one binary, one module per area.

mod backends;
mod conformance;
mod service;
mod support;
