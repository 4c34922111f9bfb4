//! `man`: the man page (roff) from the same clap definition.

use clap::CommandFactory;

use super::out;
use crate::args::Cli;
use crate::error::{CliError, CliResult, Exit};

/// Runs `man`.
pub fn run() -> CliResult {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| CliError::new(Exit::Failure, e))?;
    out(&String::from_utf8_lossy(&page))?;
    Ok(Exit::Success)
}
