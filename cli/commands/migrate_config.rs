//! `migrate-config`: prints the TOML for a Python stormlock 0.4.1 config
//! file (see `crate::migrate`). Reads one file and talks to no daemon.

use super::out;
use crate::args::{MigrateConfigArgs, MigratePart};
use crate::error::{CliError, CliResult, Exit};
use crate::migrate::migrate;
use crate::python_config::PythonConfig;

/// Runs `migrate-config`.
pub fn run(args: &MigrateConfigArgs) -> CliResult {
    let file = &args.file;
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
    let Some(config) = PythonConfig::recognise(&text) else {
        let what = if text.parse::<toml::Table>().is_ok() {
            "is TOML, not Python stormlock's INI: nothing to convert"
        } else {
            "is not a Python stormlock 0.4.1 config file (INI that ConfigParser reads, with \
             backend set in [default], [DEFAULT] or a resource's section)"
        };
        return Err(CliError::usage(format!("{} {what}", file.display())));
    };
    let migration =
        migrate(&config, file).map_err(|e| CliError::usage(format!("{}: {e}", file.display())))?;
    let text = match args.only {
        Some(MigratePart::Cli) => migration.cli,
        Some(MigratePart::Daemon) => migration.daemon,
        None => format!("{}\n{}", migration.cli, migration.daemon),
    };
    out(&text)?;
    Ok(Exit::Success)
}
