//! One module per command. Commands that talk to the daemon get a
//! [`Session`], which connects on first use.

use std::io::{self, Write};
use std::time::Duration;

use crate::client::Client;
use crate::config::Settings;
use crate::error::{CliError, CliResult, Exit};

pub mod acquire;
pub mod bench;
pub mod completions;
pub mod current;
pub mod exec;
pub mod force_release;
pub mod is_held;
pub mod list;
pub mod man;
pub mod release;
pub mod renew;
pub mod watch;

/// Settings and the connection they lead to, made once and only when needed.
pub struct Session {
    /// Resolved settings.
    pub settings: Settings,
    client: Option<Client>,
}

impl Session {
    /// A session that has not connected yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            client: None,
        }
    }

    /// The connected client, connecting on the first call.
    pub async fn client(&mut self) -> CliResult<&Client> {
        match &mut self.client {
            Some(client) => Ok(client),
            slot @ None => Ok(slot.insert(Client::connect(&self.settings).await?)),
        }
    }
}

/// Writes command output to stdout. A closed pipe (`stormlock list | head`)
/// is not an error: the reader has what it wanted.
pub fn out(text: &str) -> CliResult<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(CliError::new(
            Exit::Failure,
            anyhow::Error::new(e).context("cannot write to standard output"),
        )),
        _ => Ok(()),
    }
}

/// Writes a message for people to stderr (Python stormlock's messages keep
/// their exact text, without the `stormlock:` prefix of errors).
pub fn note(text: &str) {
    // Nothing sensible is left to do when stderr itself is gone.
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// A TTL or wait as the API wants it.
pub fn proto_duration(what: &str, duration: Duration) -> CliResult<prost_types::Duration> {
    prost_types::Duration::try_from(duration)
        .map_err(|_| CliError::usage(format!("the {what} is too large")))
}
