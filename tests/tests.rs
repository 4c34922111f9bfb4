//! Integration tests: one binary, one module per area.

mod backend_faults;
mod backend_tls;
mod backends;
mod conformance;
mod support;
