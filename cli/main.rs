//! `stormlock`: the command-line client of stormlockd.
//!
//! # Layout
//!
//! - `args`: the clap definition (parsing, help, completions, man page).
//! - `config`: client settings from flags, environment and config file.
//! - `python_config`: Python stormlock 0.4.1's config file, read for what
//!   still applies.
//! - `address`: the daemon address forms.
//! - `client`: TLS, the connection, call deadlines, failures → exit statuses.
//! - `error`: exit statuses and the error type commands return.
//! - `migrate`: `migrate-config`, Python stormlock's config file as TOML.
//! - `output`: the lease formats shared with Python stormlock 0.4.1.
//! - `spinner`: progress on stderr while waiting.
//! - `signals`: SIGINT, SIGTERM and SIGHUP for commands that wait or run others.
//! - `commands`: one module per command.

#![forbid(unsafe_code)]

mod address;
mod args;
mod client;
mod commands;
mod config;
mod error;
mod migrate;
mod output;
mod python_config;
mod signals;
mod spinner;

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, GlobalArgs};
use crate::commands::Session;
use crate::config::ProcessEnv;
use crate::error::{CliError, CliResult, Exit};

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let program = argv.next().unwrap_or_else(|| "stormlock".into());
    let argv = args::join_negative_values(argv.collect());
    let cli = match Cli::try_parse_from(std::iter::once(program).chain(argv.iter().cloned())) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            let exit = args::clap_exit(&err);
            if exit == Exit::Success {
                return exit.into();
            }
            let refused = args::refused(&argv);
            if let Some(hint) = &refused.hint {
                commands::note(hint);
            }
            return if refused.exec { Exit::ExecFailed } else { exit }.into();
        }
    };
    match run(cli) {
        Ok(exit) => exit.into(),
        Err(err) => {
            commands::note(&format!("stormlock: {err}"));
            err.exit.into()
        }
    }
}

fn run(cli: Cli) -> CliResult {
    let global = cli.global;
    let resource = cli.command.resource().map(str::to_string);
    let resource = resource.as_deref();
    match cli.command {
        Command::Completions(args) => commands::completions::run(&args),
        Command::Man(args) => commands::man::run(&args),
        Command::MigrateConfig(args) => commands::migrate_config::run(&args),
        Command::Acquire(args) => remote(&global, resource, |s| commands::acquire::run(s, args)),
        Command::Release(args) => remote(&global, resource, |s| commands::release::run(s, args)),
        Command::Renew(args) => remote(&global, resource, |s| commands::renew::run(s, args)),
        Command::Current(args) => remote(&global, resource, |s| commands::current::run(s, args)),
        Command::IsHeld(args) => remote(&global, resource, |s| commands::is_held::run(s, args)),
        Command::List(args) => remote(&global, resource, |s| commands::list::run(s, args)),
        Command::ForceRelease(args) => {
            remote(&global, resource, |s| commands::force_release::run(s, args))
        }
        Command::Reserve(args) => {
            remote(&global, resource, |s| commands::reserve::reserve(s, args))
        }
        Command::Reservations(args) => {
            remote(&global, resource, |s| commands::reserve::list(s, args))
        }
        Command::Unreserve(args) => {
            remote(&global, resource, |s| commands::reserve::unreserve(s, args))
        }
        // Whatever fails in Stormlock before the command runs is 125 under
        // exec, apart from the command's own statuses.
        Command::Exec(args) => {
            remote(&global, resource, |s| commands::exec::run(s, args)).map_err(CliError::in_exec)
        }
        Command::Watch(args) => remote(&global, resource, |s| commands::watch::run(s, args)),
        Command::Bench(args) => {
            let threads = args
                .threads
                .map_or_else(commands::bench::default_threads, |n| n as usize);
            remote_on(&global, resource, threads, |s| {
                commands::bench::run(s, args)
            })
        }
    }
}

/// Resolves the settings (for a command on `resource`, if it names one) and
/// runs a command that talks to the daemon on a single-threaded runtime: one
/// call at a time needs no more.
fn remote<F, Fut>(global: &GlobalArgs, resource: Option<&str>, command: F) -> CliResult
where
    F: FnOnce(Session) -> Fut,
    Fut: Future<Output = CliResult>,
{
    remote_on(global, resource, 1, command)
}

/// Like [`remote`], on `threads` threads (`bench` drives many clients at
/// once).
fn remote_on<F, Fut>(
    global: &GlobalArgs,
    resource: Option<&str>,
    threads: usize,
    command: F,
) -> CliResult
where
    F: FnOnce(Session) -> Fut,
    Fut: Future<Output = CliResult>,
{
    let env = ProcessEnv;
    let config = config::load(global.config.as_deref(), &env, resource)?;
    if let Some(note) = config.as_ref().and_then(config::LoadedConfig::python_note) {
        commands::note(&note);
    }
    let settings = config::resolve(global, &env, config.as_ref())?;
    let mut builder = if threads > 1 {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| CliError::new(Exit::Failure, e).context("cannot start the async runtime"))?;
    runtime.block_on(command(Session::new(settings)))
}
