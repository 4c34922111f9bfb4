//! Integration tests: one binary, one module per area.

#[macro_use]
mod support;

mod backend_faults;
mod backend_tls;
mod backends;
mod bad_input;
mod bench;
mod checker;
mod cli_security;
mod conformance;
mod connections;
mod daemon_faults;
#[cfg(feature = "dynamodb")]
mod dynamodb_backend;
mod e2e;
mod exclusion;
mod fault_timings;
mod first_hour;
mod freezes;
mod limits;
mod nemesis;
mod notify;
mod operations;
mod promises;
mod proxy;
mod python_compat;
mod reload;
mod reservations;
mod security;
mod service;
mod shared_backend;
mod sql_backends;
mod waiting;
mod watch;
mod workflows;
