//! `completions SHELL`: a completion script from the same clap definition.

use clap::CommandFactory;

use super::out;
use crate::args::{Cli, CompletionsArgs};
use crate::error::{CliResult, Exit};

/// Runs `completions`.
pub fn run(args: &CompletionsArgs) -> CliResult {
    let mut script = Vec::new();
    // Generated into memory: clap_complete panics when its writer fails.
    clap_complete::generate(args.shell, &mut Cli::command(), "stormlock", &mut script);
    out(&String::from_utf8_lossy(&script))?;
    Ok(Exit::Success)
}
