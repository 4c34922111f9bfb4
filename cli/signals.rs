//! The signals that ask `stormlock` to stop (SIGINT, SIGTERM, SIGHUP), as a
//! stream: commands that wait or run something decide what stopping means
//! (cancel the wait, pass the signal on to a child, end a watch).

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::error::{CliError, CliResult, Exit};

/// Handlers for SIGINT, SIGTERM and SIGHUP. While one exists, those signals
/// no longer end the process; they arrive through [`Interrupts::recv`].
pub struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Interrupts {
    /// Installs the handlers. Needs a running tokio runtime.
    pub fn new() -> CliResult<Self> {
        let install = |kind: SignalKind| {
            signal(kind).map_err(|e| {
                CliError::new(Exit::Failure, e).context("cannot install signal handlers")
            })
        };
        Ok(Self {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    /// The next signal received.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
    }
}
