//! The command line: one clap definition from which parsing, `--help`, shell
//! completions and the man page all come.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

use stormlock_api::duration::parse_duration;
use stormlock_bench::Workload;

use crate::error::Exit;

const AFTER_HELP: &str = "\
Exit status:
  0   success
  1   not held, or the resource is free
  2   held by someone else
  3   the lease is not current (expired, released or force-released)
  4   the daemon or its backend cannot be reached (or did not answer in time)
  5   not authenticated, or not allowed
  64  usage error: bad arguments, bad configuration, or a request the daemon refused as invalid
  70  the daemon failed in an unexpected way; or acquire could not write the
      lease id (closed pipe, full disk) and released the lease: nothing is held
  128+N  interrupted by signal N while waiting (130 for Ctrl-C)

exec passes its command's status on unchanged (128+N if signal N killed it),
and has statuses of its own, apart from the above and from those most commands
use (as timeout and env do):
  123  the lease was lost while the command ran; the command was stopped
  124  the lock is held (with or without --wait); the command did not run
  125  stormlock failed before the command ran (unreachable, refused, usage or
       configuration error, daemon failure); standard error says what
  126  the command cannot be run
  127  the command was not found

Durations are written like \"4 seconds\", \"30 min\", \"1 days\", \"4h\", \"30m\" or \"1d2h\".";

/// Lease-based locks for operators and their scripts.
///
/// Talks to a stormlockd daemon. Settings come from flags, then environment
/// variables, then the first config file found (-c FILE, $STORMLOCK_CONFIG,
/// ./.stormlock.toml, $XDG_CONFIG_HOME/stormlock/config.toml,
/// ~/.stormlock.toml), then defaults.
#[derive(Debug, Parser)]
#[command(name = "stormlock", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// Connection and identity settings, accepted before or after the command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command shares.
#[derive(Debug, Default, Args)]
pub struct GlobalArgs {
    /// Client config file: TOML, or Python stormlock's INI, read for its
    /// principal and ttl only [env: STORMLOCK_CONFIG]
    #[arg(short = 'c', long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Daemon address: HOST:PORT, https://HOST:PORT, or http://HOST:PORT for a
    /// daemon run with --insecure [env: STORMLOCK_ADDR] [default: 127.0.0.1:7466]
    #[arg(long, global = true, value_name = "ADDR")]
    pub addr: Option<String>,
    /// CA certificate (PEM) that signed the daemon's certificate [env: STORMLOCK_CA]
    /// [default on a loopback address without --ca, --cert and --key: the
    /// daemon's development certificates in $STORMLOCK_DATA_DIR/tls, else in
    /// its default data dir]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS [env: STORMLOCK_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS [env: STORMLOCK_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Who you are, for a daemon that authenticates nobody; with a client
    /// certificate or token the daemon names you, and refuses a different
    /// name given here [env: STORMLOCK_PRINCIPAL] [default: $USER@hostname]
    #[arg(long, global = true, value_name = "NAME")]
    pub principal: Option<String>,
    /// File holding a bearer token (or set STORMLOCK_TOKEN), for daemons that
    /// authenticate tools by token instead of a client certificate
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Give up on a call after this long; --wait adds to it
    /// [env: STORMLOCK_TIMEOUT] [default: 10s]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Acquire a lock and print the lease id.
    ///
    /// When the resource is held, prints "Lock held" and who holds it on
    /// standard error and exits with 2.
    Acquire(AcquireArgs),
    /// Release a lock (idempotent).
    Release(LeaseArgs),
    /// Renew a lock: set its expiry to now plus the TTL.
    ///
    /// When the lease is not current, prints "Lock expired" (and who broke it,
    /// if it was force-released) on standard error and exits with 3.
    Renew(RenewArgs),
    /// Show the lease currently holding a resource.
    ///
    /// Exits with 1 and "no lock held" on standard error when the resource is free.
    ///
    /// rows (the default), lines, oneline and cols print exactly Python
    /// stormlock's fields, in its order: principal, created (ISO-8601, UTC,
    /// milliseconds) and id, so that scripts written for it keep working:
    ///
    ///     read principal created id < <(stormlock current -f oneline RESOURCE)
    ///
    /// The newer fields (expires, fence, reason, resource) come after Python's
    /// in json and in long ("Name: value" lines of every field):
    ///
    ///     stormlock current -f long RESOURCE
    ///
    /// A lease id you may not see (you are neither its holder nor an administrator)
    /// prints as "-", and as null in json.
    #[command(
        verbatim_doc_comment,
        about = "Show the lease currently holding a resource"
    )]
    Current(CurrentArgs),
    /// Check whether a lease is still current: exit 0 if it is, 1 if not.
    IsHeld(LeaseArgs),
    /// List the held locks, optionally only those under a prefix.
    ///
    /// The table (resource, principal, reason, held for, expires in, fence) fits
    /// a terminal ($COLUMNS when set, else its width) and keeps reasons
    /// readable: fence and held for go first, then long principals and
    /// resource names are cut, then expires in goes, and only then is the
    /// reason cut. Through a pipe or into a file it is never cut, whatever
    /// $COLUMNS says.
    List(ListArgs),
    /// Run a command while holding a lock.
    ///
    /// Acquires RESOURCE, runs the command with STORMLOCK_RESOURCE,
    /// STORMLOCK_LEASE_ID and STORMLOCK_FENCE in its environment (and without
    /// STORMLOCK_TOKEN), renews the lease in the background (every third of its
    /// TTL), and releases it when the command ends, whichever way it ends.
    /// SIGINT, SIGTERM and SIGHUP are passed on to the command.
    ///
    /// The command runs in its own process group, which is given the terminal
    /// when exec runs in a terminal's foreground (Ctrl-Z suspends both, fg
    /// resumes them; renewals pause meanwhile). If the lease is lost (renewal
    /// refused, force-released, or expired because renewals could not get
    /// through), the whole group gets SIGTERM, then SIGKILL after --grace.
    ///
    /// Exit status: the command's own, unchanged (128+N if it died of signal
    /// N), so that `terraform plan -detailed-exitcode` still exits 2 for
    /// "changes present". exec's own outcomes keep apart from it:
    ///   123  the lease was lost while the command ran; the command was stopped
    ///   124  the lock is held (with or without --wait): the holder and reason
    ///        are on standard error, and the command did not run
    ///   125  stormlock failed before the command ran: daemon or backend
    ///        unreachable, refused, usage or configuration error, daemon failure
    ///   126  the command cannot be run
    ///   127  the command was not found
    ///   128+N  signal N ended the wait before the command ran
    ///
    /// Example (put `--` before the command):
    ///
    ///     stormlock exec -t 5m --wait 20m --reason "migrate" db/migrate -- ./migrate.sh up
    #[command(verbatim_doc_comment, about = "Run a command while holding a lock")]
    Exec(ExecArgs),
    /// Print lock events as they happen: one line each, or JSON lines.
    ///
    /// Watches one resource, every resource under a prefix (--prefix, or a
    /// name that ends with "/"), or with neither, every resource. Text lines are: time, event (acquired,
    /// renewed, released, expired, force-released), resource, principal,
    /// fence=N, then the holder's reason, or who broke the lease and why.
    /// Windows too: freeze-started and freeze-ended for freezes that cover
    /// what is watched, reserved and unreserved for its reservations
    /// (time, event, resource, owner, the window, from, until, why).
    /// Reconnects by itself when the daemon goes away; Ctrl-C ends it (exit 0).
    #[command(verbatim_doc_comment, about = "Print lock events as they happen")]
    Watch(WatchArgs),
    /// Break the lease holding a resource, without its id (administrators).
    ///
    /// Exits with 1 when the resource was not held.
    ForceRelease(ForceReleaseArgs),
    /// Book a resource ahead: nobody else can acquire it while the
    /// reservation is in force, and nobody else's lease is granted or
    /// renewed past its start.
    ///
    /// Prints the reservation's id (for unreserve). WHEN is an RFC 3339 time
    /// (2026-12-24T14:00:00+01:00), a local date and time ("2026-12-24
    /// 14:00", in --tz or the local time zone) or an offset from now ("+2h",
    /// "+1d12h"). Exits with 2 when another reservation overlaps (it is
    /// named on standard error). The daemon bounds how far ahead and for how
    /// long ([reservations] in its config).
    ///
    ///     stormlock reserve staging --from "2026-12-24 14:00" --for 2h --reason "load test"
    #[command(verbatim_doc_comment, about = "Book a resource ahead")]
    Reserve(ReserveArgs),
    /// List the reservations that have not ended and the freeze windows, with
    /// who, when and why.
    Reservations(ReservationsArgs),
    /// Cancel a reservation: yours, or anyone's as an administrator with
    /// --reason. Exits with 1 when there was no such reservation.
    Unreserve(UnreserveArgs),
    /// Measure a daemon: drive it with concurrent clients, then report
    /// throughput, latency percentiles and errors.
    ///
    /// Workloads (one operation each): uncontended, every client acquires and
    /// releases a resource of its own; contended, all clients acquire one
    /// resource, waiting for it, then release it; renew, every client renews
    /// a lease of its own. Resources are named PREFIX/RANDOM/..., and every
    /// lease taken is released by the end. Exits with 70 when no operation
    /// succeeded.
    Bench(BenchArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the man page (roff): stormlock(1), or with COMMAND that
    /// command's own page, with its options and exit statuses.
    ///
    ///     stormlock man | man -l -
    ///     stormlock man exec | man -l -
    #[command(
        verbatim_doc_comment,
        about = "Print the man page (roff), or a command's"
    )]
    Man(ManArgs),
    /// Print the TOML that replaces a Python stormlock 0.4.1 config file.
    ///
    /// Reads Python stormlock's INI file (.stormlock.cfg) and prints two
    /// parts: this CLI's config file (principal, ttl) and the tables for the
    /// daemon's config file: [defaults], one [backends.NAME] per backend
    /// found (with python_stormlock = true and Python's table or prefix, so
    /// that both tools exclude each other during the migration) and
    /// [[resources]] for
    /// resources with a backend or TTL of their own. What the daemon cannot
    /// express is said in a comment. Passwords are never printed: the daemon
    /// reads them from ${VAR} placeholders, and a comment names each
    /// variable to set. Talks to no daemon.
    ///
    ///     stormlock migrate-config --only cli ~/.stormlock.cfg > ~/.stormlock.toml
    #[command(
        verbatim_doc_comment,
        about = "Print the TOML that replaces a Python stormlock 0.4.1 config file"
    )]
    MigrateConfig(MigrateConfigArgs),
}

impl Command {
    /// The one resource the command acts on, if it names one: a Python
    /// stormlock config file has settings per resource.
    pub fn resource(&self) -> Option<&str> {
        match self {
            Self::Acquire(a) => Some(&a.resource),
            Self::Release(l) | Self::IsHeld(l) => Some(&l.resource),
            Self::Renew(r) => Some(&r.lease.resource),
            Self::Current(c) => Some(&c.resource),
            Self::Exec(e) => Some(&e.resource),
            Self::ForceRelease(f) => Some(&f.resource),
            Self::Reserve(r) => Some(&r.resource),
            Self::Unreserve(u) => Some(&u.resource),
            Self::List(_)
            | Self::Reservations(_)
            | Self::Watch(_)
            | Self::Bench(_)
            | Self::Completions(_)
            | Self::Man(_)
            | Self::MigrateConfig(_) => None,
        }
    }
}

/// `acquire`.
#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// The resource to lock.
    pub resource: String,
    /// How long the lease lasts unless renewed [default: the config file's
    /// ttl, else the daemon's default for the resource]
    #[arg(short, long, value_name = "TTL", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Why you take the lock; shown to anyone who is refused.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Wait up to this long for the lock if it is held (default: try once).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub wait: Option<Duration>,
}

/// `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The resource to lock.
    pub resource: String,
    /// How long the lease lasts unless renewed; exec renews it every third of
    /// this [default: the config file's ttl, else the daemon's default]
    #[arg(short, long, value_name = "TTL", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Why you take the lock; shown to anyone who is refused.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Wait up to this long for the lock if it is held (default: try once).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub wait: Option<Duration>,
    /// When the lease is lost, how long the command gets between SIGTERM and
    /// SIGKILL.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, default_value = "10s")]
    pub grace: Duration,
    /// The command and its arguments, after "--".
    #[arg(
        required = true,
        last = true,
        value_name = "COMMAND",
        num_args = 1..,
        allow_hyphen_values = true
    )]
    pub command: Vec<std::ffi::OsString>,
}

/// `watch`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").args(["resource", "prefix"])))]
pub struct WatchArgs {
    /// The resource to watch; a name ending with "/" watches everything under
    /// it [default: every resource]
    pub resource: Option<String>,
    /// Watch every resource whose name starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = WatchFormat::Text)]
    pub format: WatchFormat,
}

/// How `watch` prints events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WatchFormat {
    /// One line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Commands that act on one lease of one resource.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// The resource the lease is on.
    pub resource: String,
    /// The lease id printed by acquire; "-" reads it from standard input (one
    /// line), and without it $STORMLOCK_LEASE_ID is used, so that the id
    /// never shows in `ps`
    pub lease_id: Option<String>,
}

/// `renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The resource and lease.
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// The new time to live, counted from now [default: the lease's own,
    /// the TTL it was granted or last renewed with]
    #[arg(short, long, value_name = "TTL", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
}

/// `current`.
#[derive(Debug, Args)]
pub struct CurrentArgs {
    /// The resource to look at.
    pub resource: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = LeaseFormat::Rows)]
    pub format: LeaseFormat,
    /// Same as --format=id.
    #[arg(long)]
    pub id_only: bool,
}

/// How `current` prints a lease.
///
/// Python stormlock 0.4.1's formats keep exactly its fields (principal,
/// created, id); json and long add expires, fence, reason and resource after
/// them. A lease id you may not see (you are neither its holder nor an
/// administrator) prints as "-", and as null in json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LeaseFormat {
    /// The lease id alone.
    Id,
    /// One JSON object: id, created, principal (Python's), then expires,
    /// fence, reason, resource.
    Json,
    /// Python's fields one per line: principal, created, id.
    Lines,
    /// Python's fields tab-separated on one line, so that `read principal
    /// created id` gets each in its own variable.
    Oneline,
    /// Python's fields as a header row and a value row in columns.
    Cols,
    /// Python's fields as "Name: value" lines (the default).
    Rows,
    /// Every field as "Name: value" lines: Python's, then expires, fence,
    /// reason and resource.
    Long,
}

/// `list`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("under").args(["prefix", "prefix_option"])))]
pub struct ListArgs {
    /// Only resources whose name starts with this.
    pub prefix: Option<String>,
    /// The same as PREFIX, spelled as `watch --prefix` spells it.
    #[arg(long = "prefix", id = "prefix_option", value_name = "PREFIX")]
    pub prefix_option: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

/// How `list` prints leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Columns sized to the terminal.
    Table,
    /// A JSON array of lease objects (keys as in `current -f json`).
    Json,
}

/// `force-release`.
#[derive(Debug, Args)]
pub struct ForceReleaseArgs {
    /// The resource to free.
    pub resource: String,
    /// Why (required); audit-logged and shown to the evicted holder.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

/// `reserve`.
#[derive(Debug, Args)]
pub struct ReserveArgs {
    /// The resource to book.
    pub resource: String,
    /// When the reservation starts [default: now]
    #[arg(long, value_name = "WHEN")]
    pub from: Option<String>,
    /// When it ends.
    #[arg(
        long,
        value_name = "WHEN",
        required_unless_present = "for_",
        conflicts_with = "for_"
    )]
    pub until: Option<String>,
    /// How long it lasts, from its start ("2h", "1d").
    #[arg(long = "for", id = "for_", value_name = "DURATION", value_parser = parse_timeout)]
    pub for_: Option<Duration>,
    /// Why (required): shown to everyone refused during it.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// The time zone of local times in WHEN (an IANA name such as
    /// Europe/Berlin) [default: the local time zone]
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
}

/// `reservations`.
#[derive(Debug, Args)]
pub struct ReservationsArgs {
    /// Only resources whose name starts with this.
    pub prefix: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

/// `unreserve`.
#[derive(Debug, Args)]
pub struct UnreserveArgs {
    /// The resource booked.
    pub resource: String,
    /// The reservation's id (as `reserve` printed it).
    pub id: String,
    /// Why: required to cancel someone else's reservation (administrators).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
}

/// `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What every client does: uncontended, contended or renew.
    #[arg(short, long, default_value = "uncontended", value_parser = parse_workload)]
    pub workload: Workload,
    /// Concurrent clients, each its own task.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Connections the clients share, round-robin [default: one per CPU, at
    /// most one per client]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: Option<u32>,
    /// Threads driving the clients [default: one per CPU]. On the daemon's
    /// own machine, `--threads 1` leaves the daemon more of the CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Stop after this many operations in total [default: 10000]
    #[arg(short = 'n', long, value_name = "N", conflicts_with = "duration")]
    pub ops: Option<u64>,
    /// Stop after this long instead of after a number of operations.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_timeout)]
    pub duration: Option<Duration>,
    /// TTL of the leases taken.
    #[arg(short, long, value_name = "TTL", default_value = "60s", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// How long a contended acquire waits before it counts as an error.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_ttl)]
    pub wait: Duration,
    /// Resource names start with this.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = BenchFormat::Table)]
    pub format: BenchFormat,
    /// Run no workload: open --connections connections, make one call on
    /// each, and hold them open and idle this long (to measure the daemon's
    /// memory per connection).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout,
          conflicts_with_all = ["ops", "duration"])]
    pub hold_idle: Option<Duration>,
}

/// How `bench` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchFormat {
    /// A small table for people.
    Table,
    /// One JSON object on one line.
    Json,
}

/// `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The command whose page to print (acquire, exec, …) [default: the
    /// page of stormlock itself]
    pub command: Option<String>,
}

/// `migrate-config`.
#[derive(Debug, Args)]
pub struct MigrateConfigArgs {
    /// Python stormlock's config file (INI).
    pub file: PathBuf,
    /// Print one part only: this CLI's config file, or the daemon's tables.
    #[arg(long, value_enum, value_name = "PART")]
    pub only: Option<MigratePart>,
}

/// The parts `migrate-config` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigratePart {
    /// This CLI's config file (~/.stormlock.toml).
    Cli,
    /// The tables for stormlockd's config file.
    Daemon,
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The exit status for a command line clap refused: 0 for `--help` and
/// `--version` (printed to stdout), 64 for real errors, since clap's usual 2
/// means "held" here.
pub fn clap_exit(err: &clap::Error) -> Exit {
    if err.use_stderr() {
        Exit::Usage
    } else {
        Exit::Success
    }
}

/// The command line as clap leaves it when it refuses it: which command it
/// was for, and what to add for a mistake clap's own message does not
/// explain.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refused {
    /// The command was `exec`: its usage errors exit with 125, apart from
    /// its command's statuses.
    pub exec: bool,
    /// A line to print after clap's message.
    pub hint: Option<String>,
}

/// Reads a command line clap refused (`args` without the program name):
/// whether the command is `exec`, and, when `exec` was given no `--` (clap
/// then takes the command for arguments of exec, or finds none), where to
/// put it.
pub fn refused(args: &[OsString]) -> Refused {
    let cli = <Cli as clap::CommandFactory>::command();
    let Some((name, at)) = command_in(&cli, args, 0) else {
        return Refused::default();
    };
    if name != "exec" {
        return Refused::default();
    }
    let rest = &args[at + 1..];
    if rest.iter().any(|a| a == "--") {
        return Refused {
            exec: true,
            hint: None,
        };
    }
    let example = cli
        .find_subcommand("exec")
        .and_then(|exec| {
            // Exec's options and the global ones, then RESOURCE, then what
            // was meant as the command.
            let (resource, at) = positional_in(&cli, exec, rest, 0)?;
            let (command, next) = positional_in(&cli, exec, rest, at + 1)?;
            let more = if next + 1 < rest.len() { " …" } else { "" };
            Some(format!(
                "stormlock exec {} -- {}{more}",
                resource.to_string_lossy(),
                command.to_string_lossy()
            ))
        })
        .unwrap_or_else(|| "stormlock exec [OPTIONS] RESOURCE -- COMMAND [ARGS…]".to_string());
    Refused {
        exec: true,
        hint: Some(format!("stormlock: put `--` before the command: {example}")),
    }
}

/// The first argument from `from` on that is not an option of `cli` (nor
/// an option's value): the subcommand's name and where it is.
fn command_in(cli: &clap::Command, args: &[OsString], from: usize) -> Option<(String, usize)> {
    let (arg, at) = positional_in(cli, cli, args, from)?;
    Some((arg.to_string_lossy().into_owned(), at))
}

/// The first argument of `args` from `from` on that is none of the options
/// of `command` or of `top`'s global ones, nor the value of one of them.
fn positional_in<'a>(
    top: &clap::Command,
    command: &clap::Command,
    args: &'a [OsString],
    from: usize,
) -> Option<(&'a OsStr, usize)> {
    let mut at = from;
    while let Some(arg) = args.get(at) {
        let text = arg.to_string_lossy();
        if text == "--" {
            return None;
        }
        if !text.starts_with('-') || text == "-" {
            return Some((arg.as_os_str(), at));
        }
        // `--ttl 1m` and `-t 1m` take the next argument; `--ttl=1m`, `-t1m`
        // and flags do not.
        at += if value_option(top, command, &text).is_some() {
            2
        } else {
            1
        };
    }
    None
}

/// The option `text` names exactly (`--ttl`, `-t`, not `--ttl=1m`) among
/// `command`'s and `top`'s global ones, if it takes a value.
fn value_option<'a>(
    top: &'a clap::Command,
    command: &'a clap::Command,
    text: &str,
) -> Option<&'a clap::Arg> {
    top.get_arguments()
        .filter(|a| a.is_global_set())
        .chain(command.get_arguments())
        .filter(|a| a.get_action().takes_values() && !a.is_positional())
        .find(|a| {
            text.strip_prefix("--")
                .is_some_and(|long| a.get_long() == Some(long))
                || text
                    .strip_prefix('-')
                    .and_then(|short| short.parse::<char>().ok())
                    .is_some_and(|short| a.get_short() == Some(short))
        })
}

/// The command line with every option that takes a value and is followed
/// by a negative number (`-t -1`, `--wait -5m`) joined to it
/// (`--ttl=-1`): clap would take `-1` for an unknown flag and suggest
/// `-- -1`; joined, the value reaches its parser, which says what is wrong
/// with it. No option of ours is a digit, so nothing else is read
/// differently. Arguments after `--` are left alone.
pub fn join_negative_values(args: Vec<OsString>) -> Vec<OsString> {
    let top = <Cli as clap::CommandFactory>::command();
    let mut command: Option<clap::Command> = None;
    let mut joined = Vec::with_capacity(args.len());
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        if text == "--" {
            joined.push(arg);
            joined.extend(args);
            break;
        }
        let Some(option) = value_option(&top, command.as_ref().unwrap_or(&top), &text) else {
            if command.is_none() && !text.starts_with('-') {
                command = top.find_subcommand(&text).cloned();
            }
            joined.push(arg);
            continue;
        };
        let negative = |value: &OsString| {
            value
                .to_string_lossy()
                .strip_prefix('-')
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        };
        match (args.next_if(negative), option.get_long()) {
            (Some(value), Some(long)) => {
                let mut option = OsString::from(format!("--{long}="));
                option.push(value);
                joined.push(option);
            }
            (Some(value), None) => {
                let mut option = arg;
                option.push(value);
                joined.push(option);
            }
            // Its value, whatever it is, is not a command's name.
            (None, _) => {
                joined.push(arg);
                joined.extend(args.next());
            }
        }
    }
    joined
}

/// Parses a TTL or wait duration with the project's one duration syntax.
/// A negative one (`-t -1`, joined by [`join_negative_values`]) is refused
/// as such.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    if text.trim_start().starts_with('-') {
        return Err(format!(
            "a duration cannot be negative: {text:?} (write it like \"30s\", \"10m\" or \"1h\")"
        ));
    }
    parse_duration(text).map_err(|e| e.to_string())
}

fn parse_workload(text: &str) -> Result<Workload, String> {
    text.parse()
}

/// Like [`parse_ttl`], refusing zero.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_ttl(text)? {
        d if d.is_zero() => Err("the timeout must be at least 1 second".to_string()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("stormlock").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn python_compatible_forms() {
        let cli = parse(&["-c", "x.toml", "acquire", "-t", "4 seconds", "r1"]).ok();
        match cli.map(|c| (c.global.config, c.command)) {
            Some((Some(config), Command::Acquire(a))) => {
                assert_eq!(config, PathBuf::from("x.toml"));
                assert_eq!(a.resource, "r1");
                assert_eq!(a.ttl, Some(Duration::from_secs(4)));
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["renew", "r1", "id", "--ttl", "1d2h"]).ok();
        match cli.map(|c| c.command) {
            Some(Command::Renew(r)) => assert_eq!(r.ttl, Some(Duration::from_secs(93_600))),
            other => panic!("{other:?}"),
        }
        let cli = parse(&["current", "r1", "--id-only"]).ok();
        assert!(matches!(cli.map(|c| c.command), Some(Command::Current(c)) if c.id_only));
        let cli = parse(&["current", "r1"]).ok();
        assert!(
            matches!(cli.map(|c| c.command), Some(Command::Current(c)) if c.format == LeaseFormat::Rows)
        );
        assert!(parse(&["is-held", "r1", "id"]).is_ok());
        assert!(parse(&["release", "r1", "id", "--addr", "h:1"]).is_ok());
        // The lease id may come from stdin ("-") or the environment (none).
        for (args, id) in [
            (&["release", "r1", "-"][..], Some("-")),
            (&["release", "r1"], None),
            (&["is-held", "r1"], None),
        ] {
            match parse(args).ok().map(|c| c.command) {
                Some(Command::Release(l) | Command::IsHeld(l)) => {
                    assert_eq!(l.lease_id.as_deref(), id, "{args:?}");
                }
                other => panic!("{other:?}"),
            }
        }
        let cli = parse(&["renew", "-t", "1m", "r1"]).ok();
        assert!(
            matches!(cli.map(|c| c.command), Some(Command::Renew(r)) if r.lease.lease_id.is_none())
        );
    }

    #[test]
    fn exec_takes_the_command_after_the_separator() {
        let cli = parse(&[
            "exec", "-t", "1m", "db", "--", "sh", "-c", "exit 3", "--ttl",
        ])
        .ok();
        match cli.map(|c| c.command) {
            Some(Command::Exec(e)) => {
                assert_eq!(e.resource, "db");
                assert_eq!(e.ttl, Some(Duration::from_secs(60)));
                assert_eq!(e.grace, Duration::from_secs(10));
                assert_eq!(e.command, ["sh", "-c", "exit 3", "--ttl"]);
            }
            other => panic!("{other:?}"),
        }
        for args in [
            &["exec", "db"][..],
            &["exec", "db", "--"],
            &["exec", "db", "sh"],
        ] {
            let err = parse(args).map(|_| ()).unwrap_err();
            assert_eq!(clap_exit(&err), Exit::Usage, "{args:?}");
        }
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn exec_without_the_separator_says_where_it_goes() {
        for (args, hint) in [
            (
                &["exec", "db", "ls"][..],
                "put `--` before the command: stormlock exec db -- ls",
            ),
            (
                &[
                    "--addr",
                    "h:1",
                    "exec",
                    "-t",
                    "5m",
                    "--reason",
                    "plan",
                    "tf/prod",
                    "terraform",
                    "plan",
                    "-detailed-exitcode",
                ],
                "put `--` before the command: stormlock exec tf/prod -- terraform …",
            ),
            (
                &["exec", "db"],
                "put `--` before the command: stormlock exec [OPTIONS] RESOURCE -- COMMAND",
            ),
        ] {
            assert!(parse(args).is_err(), "{args:?} parses");
            let refused = refused(&os(args));
            assert!(refused.exec, "{args:?}");
            let said = refused.hint.unwrap_or_default();
            assert!(said.starts_with("stormlock: "), "{said}");
            assert!(said.contains(hint), "{args:?}: {said}");
        }
        // With the separator, a usage error of exec has no such hint; other
        // commands are not exec.
        let with = refused(&os(&["exec", "-t", "4 weeks", "db", "--", "ls"]));
        assert_eq!(
            with,
            Refused {
                exec: true,
                hint: None
            }
        );
        assert_eq!(refused(&os(&["-c", "exec", "acquire"])), Refused::default());
        assert_eq!(refused(&os(&["acquire", "exec", "ls"])), Refused::default());
    }

    #[test]
    fn negative_durations_reach_the_duration_parser() {
        let joined = |args: &[&str]| -> Vec<String> {
            join_negative_values(os(args))
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            joined(&["acquire", "-t", "-1", "r"]),
            ["acquire", "--ttl=-1", "r"]
        );
        assert_eq!(
            joined(&[
                "--timeout",
                "-3",
                "exec",
                "r",
                "--wait",
                "-5m",
                "--",
                "x",
                "-t",
                "-1"
            ]),
            [
                "--timeout=-3",
                "exec",
                "r",
                "--wait=-5m",
                "--",
                "x",
                "-t",
                "-1"
            ]
        );
        // Values that are not negative numbers, flags, and an option's
        // value that happens to be a command's name stay as they are.
        let same = ["-c", "list", "acquire", "-t", "-x", "--reason", "-", "r"];
        assert_eq!(joined(&same), same);
        for args in [
            &["acquire", "-t", "-1", "r"][..],
            &["acquire", "r", "-t", "-5m"],
            &["acquire", "r", "--wait", "-1 minutes"],
            &["--timeout", "-3", "current", "r"],
            &["renew", "r", "id", "-t", "-1"],
        ] {
            let joined = join_negative_values(os(args));
            let err =
                Cli::try_parse_from(std::iter::once(OsString::from("stormlock")).chain(joined))
                    .map(|_| ())
                    .unwrap_err();
            assert_eq!(clap_exit(&err), Exit::Usage, "{args:?}");
            let text = err.to_string();
            assert!(text.contains("cannot be negative"), "{args:?}: {text}");
            assert!(!text.contains("-- -"), "no tip to pass it after --: {text}");
        }
    }

    #[test]
    fn list_takes_a_prefix_either_way() {
        for args in [&["list", "team/"][..], &["list", "--prefix", "team/"]] {
            match parse(args).ok().map(|c| c.command) {
                Some(Command::List(l)) => {
                    assert_eq!(l.prefix.or(l.prefix_option).as_deref(), Some("team/"));
                }
                other => panic!("{other:?}"),
            }
        }
        let err = parse(&["list", "a", "--prefix", "b"])
            .map(|_| ())
            .unwrap_err();
        assert_eq!(clap_exit(&err), Exit::Usage);
    }

    #[test]
    fn watch_takes_at_most_one_target() {
        assert!(parse(&["watch", "r"]).is_ok());
        assert!(parse(&["watch", "--prefix", "team/", "-f", "json"]).is_ok());
        assert!(parse(&["watch"]).is_ok());
        let err = parse(&["watch", "r", "--prefix", "p"])
            .map(|_| ())
            .unwrap_err();
        assert_eq!(clap_exit(&err), Exit::Usage);
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["acquire"][..],
            &["acquire", "r", "-t", "4 weeks"],
            &["acquire", "r", "--bogus"],
            &["current", "r", "-f", "xml"],
            &["force-release", "r"],
            &["--timeout", "0", "current", "r"],
            &[],
        ] {
            let err = parse(args).map(|_| ()).unwrap_err();
            assert_eq!(
                clap_exit(&err).code(),
                64,
                "{args:?} should be a usage error"
            );
        }
        let err = parse(&["acquire", "r", "-t", "4 weeks"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("weeks"), "{err}");
        for args in [&["--help"][..], &["--version"], &["acquire", "--help"]] {
            let err = parse(args).map(|_| ()).unwrap_err();
            assert_eq!(clap_exit(&err), Exit::Success, "{args:?} is not an error");
        }
    }
}
