//! One module per command. Commands that talk to the daemon get a
//! [`Session`], which connects on first use.

use std::io::{self, BufRead, Write};
use std::time::Duration;

use crate::client::Client;
use crate::config::{Env, ProcessEnv, Settings};
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
pub mod migrate_config;
pub mod release;
pub mod renew;
pub mod reserve;
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

    /// Forgets the connection: the next [`Session::client`] connects anew
    /// (after the daemon went away).
    pub fn disconnect(&mut self) {
        self.client = None;
    }
}

/// Writes `text` to stdout and flushes it; any failure, a closed pipe
/// included, is an error (for output that must arrive, such as a lease id).
pub fn write_out(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
}

/// Writes command output to stdout. A closed pipe (`stormlock list | head`)
/// is not an error: the reader has what it wanted.
pub fn out(text: &str) -> CliResult<()> {
    match write_out(text) {
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

/// The lease id a command acts on: LEASE_ID as given, one line of standard
/// input for `-`, else `$STORMLOCK_LEASE_ID`. Read before connecting, so a
/// missing id is a usage error that costs no call.
pub fn lease_id(given: Option<String>) -> CliResult<String> {
    lease_id_from(
        given,
        ProcessEnv.var("STORMLOCK_LEASE_ID"),
        &mut io::stdin().lock(),
    )
}

fn lease_id_from(
    given: Option<String>,
    from_env: Option<String>,
    stdin: &mut dyn BufRead,
) -> CliResult<String> {
    match given.as_deref() {
        Some("-") => {
            let mut line = String::new();
            stdin.read_line(&mut line).map_err(|e| {
                CliError::usage(format!("cannot read the lease id from standard input: {e}"))
            })?;
            match line.trim() {
                "" => Err(CliError::usage(
                    "LEASE_ID is -, but standard input has no lease id",
                )),
                id => Ok(id.to_string()),
            }
        }
        Some(id) => Ok(id.to_string()),
        None => from_env.ok_or_else(|| {
            CliError::usage(
                "no lease id: give LEASE_ID, set STORMLOCK_LEASE_ID, or pass - to read it \
                 from standard input",
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(given: Option<&str>, env: Option<&str>, stdin: &str) -> Result<String, String> {
        lease_id_from(
            given.map(str::to_string),
            env.map(str::to_string),
            &mut stdin.as_bytes(),
        )
        .map_err(|e| {
            assert_eq!(e.exit, Exit::Usage);
            e.to_string()
        })
    }

    #[test]
    fn lease_id_sources() {
        assert_eq!(id(Some("abc"), Some("env"), "in\n"), Ok("abc".into()));
        assert_eq!(id(None, Some("env"), "in\n"), Ok("env".into()));
        assert_eq!(id(Some("-"), Some("env"), "  in \nmore\n"), Ok("in".into()));
        let missing = id(None, None, "in\n").unwrap_err();
        assert!(missing.contains("STORMLOCK_LEASE_ID"), "{missing}");
        assert!(missing.contains("pass -"), "{missing}");
        let empty = id(Some("-"), None, "").unwrap_err();
        assert!(empty.contains("standard input"), "{empty}");
        assert!(id(Some("-"), None, "\n").is_err());
    }
}
