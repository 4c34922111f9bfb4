//! Integration tests: one binary, one module per area.

mod backends;
mod conformance;
mod security;
mod service;
mod support;
