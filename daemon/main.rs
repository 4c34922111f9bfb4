//! `stormlockd`: the Stormlock daemon. Thin on purpose: parse flags, set up
//! logging, resolve settings, call `server::run`.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use stormlockd::config::{Config, Overrides};
use stormlockd::reload::{SetLogLevel, Snapshot, Source};
use stormlockd::server::{self, Settings};
use stormlockd::telemetry::log_filter;

/// Stormlock daemon: lease-based locks for operators and their scripts, over gRPC.
///
/// With no configuration it serves the embedded backend from the data
/// directory on 127.0.0.1:7466, with mutual TLS from a development CA that it
/// creates in <data-dir>/tls/ (the `stormlock` CLI finds it there).
#[derive(Debug, Parser)]
#[command(name = "stormlockd", version, max_term_width = 100)]
struct Args {
    /// Configuration file (TOML).
    #[arg(
        short,
        long,
        env = "STORMLOCKD_CONFIG",
        value_name = "FILE",
        global = true
    )]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7466, or `listen` from the config].
    #[arg(long, env = "STORMLOCKD_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// State directory [default: `data_dir` from the config, else
    /// $XDG_STATE_HOME/stormlock or ~/.local/state/stormlock].
    #[arg(long, env = "STORMLOCKD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Serve plain text (no TLS). Anyone who can reach the port can take and break locks.
    #[arg(long, env = "STORMLOCKD_INSECURE")]
    insecure: bool,
    /// Plaintext gRPC health-check listener (for Kubernetes probes).
    #[arg(long, env = "STORMLOCKD_HEALTH_LISTEN", value_name = "ADDR")]
    health_listen: Option<SocketAddr>,
    /// Prometheus metrics listener (plain HTTP, `GET /metrics`) [default: off,
    /// or `metrics_listen` from the config].
    #[arg(long, env = "STORMLOCKD_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// How long in-flight calls may take to finish after SIGTERM [default: 10s].
    #[arg(long, env = "STORMLOCKD_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = parse_grace)]
    shutdown_grace: Option<std::time::Duration>,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`: the daemon's,
    /// libraries stay at info at most) or a full filter such as
    /// `stormlock=debug,h2=debug,info` [default: $RUST_LOG, else info].
    #[arg(
        long,
        visible_alias = "log-level",
        env = "STORMLOCKD_LOG",
        value_name = "FILTER"
    )]
    log: Option<String>,
    /// Log format.
    #[arg(long, env = "STORMLOCKD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

impl Args {
    /// The settings given by flag or `STORMLOCKD_*` variable.
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            insecure: self.insecure,
            health_listen: self.health_listen,
            metrics_listen: self.metrics_listen,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

/// The daemon's environment variables before they became `STORMLOCKD_*`:
/// the CLI's own variables kept these names, so a variable exported for the
/// CLI must not reconfigure a daemon started from the same shell.
const RENAMED_VARIABLES: [(&str, &str); 9] = [
    ("STORMLOCK_CONFIG", "STORMLOCKD_CONFIG"),
    ("STORMLOCK_LISTEN", "STORMLOCKD_LISTEN"),
    ("STORMLOCK_DATA_DIR", "STORMLOCKD_DATA_DIR"),
    ("STORMLOCK_INSECURE", "STORMLOCKD_INSECURE"),
    ("STORMLOCK_HEALTH_LISTEN", "STORMLOCKD_HEALTH_LISTEN"),
    ("STORMLOCK_METRICS_LISTEN", "STORMLOCKD_METRICS_LISTEN"),
    ("STORMLOCK_SHUTDOWN_GRACE", "STORMLOCKD_SHUTDOWN_GRACE"),
    ("STORMLOCK_LOG", "STORMLOCKD_LOG"),
    ("STORMLOCK_LOG_FORMAT", "STORMLOCKD_LOG_FORMAT"),
];

/// Says once, at start, which old variable names are set and ignored.
fn note_renamed_variables() {
    for (old, new) in RENAMED_VARIABLES {
        if std::env::var_os(old).is_some() {
            tracing::info!(
                "ignoring {old}: it configures the stormlock CLI; the daemon reads {new} instead"
            );
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file and connect to every backend it names.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// Parse and validate only, as the daemon would at start, without
        /// reading certificates or connecting to backends (for rendered
        /// configurations whose files and engines are not there yet).
        #[arg(long)]
        offline: bool,
    },
    /// Create a bearer token for PRINCIPAL: prints the token (give it to the
    /// tool) and the `[[auth.tokens]]` entry for the daemon's config.
    NewToken {
        /// The principal the token authenticates as.
        principal: String,
    },
    /// Print the SHA-256 of a token read from standard input, for
    /// `[[auth.tokens]] sha256`. Refuses tokens of less than 128 bits (fewer
    /// than 32 hex digits or 22 base64 characters): make one with new-token.
    HashToken,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let set_log_level = match init_logging(&args) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("stormlockd: {e:#}");
            return ExitCode::from(64);
        }
    };
    note_renamed_variables();
    stormlockd::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stormlockd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, set_log_level)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stormlockd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts logging at the level of `--log-level`/`STORMLOCKD_LOG`, else
/// `RUST_LOG`, else `info`. When neither flag nor variable set one, the
/// returned handle changes it: to the config file's `log_level`, at start
/// and on every reload.
fn init_logging(args: &Args) -> anyhow::Result<Option<SetLogLevel>> {
    let given = args
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()));
    let directives = given.clone().unwrap_or_else(|| "info".to_string());
    let filter = log_filter(&directives)
        .map_err(|e| anyhow::anyhow!("invalid log filter {directives:?}: {e}"))?;
    // Colour only for a person at a terminal: escape codes in a log file or
    // a collector's pipe are noise to every reader and parser.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let set = match args.log_format {
        LogFormat::Text => {
            let builder = builder
                .fmt_fields(stormlockd::telemetry::PlainFields)
                .with_filter_reloading();
            let set = setter(builder.reload_handle());
            builder.init();
            set
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let set = setter(builder.reload_handle());
            builder.init();
            set
        }
    };
    Ok(given.is_none().then_some(set))
}

/// Sets the log filter through `handle`.
fn setter<S: Send + Sync + 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> SetLogLevel {
    std::sync::Arc::new(move |directives: &str| {
        let filter = log_filter(directives)?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

async fn run(args: Args, set_log_level: Option<SetLogLevel>) -> anyhow::Result<()> {
    match &args.command {
        Some(Command::CheckConfig { file, offline }) => {
            return check_config(file, &args.overrides(), *offline).await;
        }
        Some(Command::NewToken { principal }) => {
            let mut bytes = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
            let token = hex::encode(bytes);
            return print_stdout(&format!(
                "token: {token}\n\n[[auth.tokens]]\nprincipal = {}\nsha256 = \"{}\"\n",
                toml_string(principal),
                stormlockd::auth::hash_token(&token)
            ));
        }
        Some(Command::HashToken) => {
            let mut token = String::new();
            std::io::stdin()
                .read_line(&mut token)
                .context("cannot read the token from standard input")?;
            let token = token.trim();
            if let Err(why) = check_token_strength(token) {
                // A usage error (64), not a failure of the daemon (1).
                eprintln!("stormlockd: {why}");
                std::process::exit(64);
            }
            return print_stdout(&format!("{}\n", stormlockd::auth::hash_token(token)));
        }
        None => {}
    }
    // From here on SIGHUP reloads (once serving) and never terminates:
    // tokio's handler stays for the life of the process.
    let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot take SIGHUP")?;
    let overrides = args.overrides();
    let snapshot = Snapshot::read(args.config.as_deref(), &overrides)?;
    let config = snapshot.config.clone();
    let listen = config.listen();
    if let (Some(set), Some(level)) = (&set_log_level, &config.log_level) {
        set(level).map_err(|e| anyhow::anyhow!("log_level: {e}"))?;
    }
    let source = Source {
        file: args.config.clone(),
        overrides,
        listen,
        set_log_level,
    };
    // What this daemon runs on, in one line: the first thing to check when
    // it does not behave as expected.
    let backends: Vec<String> = config
        .backends
        .iter()
        .map(|(name, backend)| format!("{name} ({})", backend.kind()))
        .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %args
            .config
            .as_deref()
            .map_or_else(|| "none: the embedded default".to_string(), |p| p.display().to_string()),
        data_dir = %config.data_dir().display(),
        backends = %backends.join(", "),
        "starting stormlockd"
    );
    let settings = Settings::resolve(config, listen)?.reloading_from(source, snapshot);
    let listener = server::bind(listen).await?;
    server::run(listener, settings, shutdown_signal()).await?;
    Ok(())
}

/// Writes `text` to standard output. A reader that is gone (`new-token |
/// head -c1`) ends it quietly with success, as the CLI's output does: the
/// reader chose to stop reading, nothing was changed, and `println!` would
/// panic instead.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to standard output"))
        }
        _ => Ok(()),
    }
}

/// The least entropy, in bits, of a token `hash-token` accepts.
const MIN_TOKEN_BITS: f64 = 128.0;

/// Refuses a token that cannot have [`MIN_TOKEN_BITS`]: a short or
/// hand-made token can be guessed by whoever can send requests.
fn check_token_strength(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("no token on standard input".to_string());
    }
    let (length, alphabet, bits) = token_bits(token);
    if bits >= MIN_TOKEN_BITS {
        return Ok(());
    }
    Err(format!(
        "this token is too weak: {length} characters from an alphabet of {alphabet} carry at \
         most {bits:.0} bits, and tokens need {MIN_TOKEN_BITS} (32 hex digits, or 22 base64 \
         characters); make one with `stormlockd new-token PRINCIPAL` (256 bits)"
    ))
}

/// The most entropy a token can carry: its length times log2 of the
/// smallest of these alphabets that holds every character in it: digits (10),
/// hex digits of one case (16), digits and letters of one case (36), base64
/// (64, with `+/-_=`), anything else (95, printable ASCII). An upper bound:
/// it catches tokens too short to be safe, not ones that are predictable.
fn token_bits(token: &str) -> (usize, u32, f64) {
    let all = |ok: fn(&char) -> bool| token.chars().all(|c| ok(&c));
    let alphabet = if all(char::is_ascii_digit) {
        10
    } else if all(|c| matches!(c, '0'..='9' | 'a'..='f'))
        || all(|c| matches!(c, '0'..='9' | 'A'..='F'))
    {
        16
    } else if all(|c| matches!(c, '0'..='9' | 'a'..='z'))
        || all(|c| matches!(c, '0'..='9' | 'A'..='Z'))
    {
        36
    } else if all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_' | '=')) {
        64
    } else {
        95
    };
    let length = token.chars().count();
    let bits = f64::from(u32::try_from(length).unwrap_or(u32::MAX)) * f64::from(alphabet).log2();
    (length, alphabet, bits)
}

fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    stormlockd::duration::parse_duration(text).map_err(|e| e.to_string())
}

/// `value` as a TOML basic string.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// Validates `file` as `run` would read it (with the same flags and
/// variables on top), then connects to every backend it names.
async fn check_config(
    file: &std::path::Path,
    overrides: &Overrides,
    offline: bool,
) -> anyhow::Result<()> {
    let config = Config::layered(Some(file), overrides)?;
    stormlockd::server::check_policy(&config, config.listen())?;
    if offline {
        return print_stdout(&format!(
            "{}: ok (offline: parsed and validated; certificates and backends not checked)\n{}{}",
            file.display(),
            notifiers(&config),
            bounds(&config)
        ));
    }
    let data_dir = config.data_dir();
    if let Some(tls) = &config.tls {
        stormlockd::tls::check_files(&stormlockd::tls::TlsFiles {
            cert: data_dir.join(&tls.cert),
            key: data_dir.join(&tls.key),
            client_ca: tls.client_ca.as_ref().map(|p| data_dir.join(p)),
        })?;
    }
    // Every backend answers, and nothing is created.
    let mut found = Vec::new();
    for (name, backend) in &config.backends {
        let what =
            stormlockd::backend::check(name, backend, &data_dir, config.defaults.backend_timeout)
                .await?;
        found.push(format!("  {name} ({}): {what}\n", backend.kind()));
    }
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let backends = config.backends.len();
    let rules = config.resources.len();
    let mut out = format!(
        "{}: ok ({backends} backend{}, {rules} routing rule{})\n",
        file.display(),
        plural(backends),
        plural(rules),
    );
    // Every daemon sharing these backends must route alike: a resource that
    // two daemons send to different backends can be granted on both.
    out.push_str("backends:\n");
    out.extend(found);
    out.push_str("routing (first match wins; every daemon must have the same):\n");
    for rule in &config.resources {
        out.push_str(&format!(
            "  {:<30} -> {}\n",
            rule.pattern.as_str(),
            rule.backend.as_deref().unwrap_or(&config.defaults.backend)
        ));
    }
    out.push_str(&format!(
        "  {:<30} -> {}\n",
        "(anything else)", config.defaults.backend
    ));
    if rules > 0 || backends > 1 {
        out.push_str(
            "Moving a resource to another backend is safe only while nobody holds it and \
             no daemon routes it the old way: see \"Routing changes\" in RELIABILITY.md.\n",
        );
    }
    out.push_str(&freezes(&config, std::time::SystemTime::now()));
    out.push_str(&notifiers(&config));
    out.push_str(&bounds(&config));
    print_stdout(&out)
}

/// The webhooks, each with where it posts (host only: a webhook's path is
/// often its credential) and what.
fn notifiers(config: &Config) -> String {
    if config.notify.is_empty() {
        return String::new();
    }
    let mut out = "notify (reachability not checked):\n".to_string();
    for n in &config.notify {
        out.push_str(&format!("  {}\n", n.describe()));
    }
    out
}

/// The freeze windows, each with its occurrence in force or the next one.
fn freezes(config: &Config, now: std::time::SystemTime) -> String {
    if config.freezes.is_empty() {
        return "freezes: none\n".to_string();
    }
    let mut out = "freezes (every daemon must have the same):\n".to_string();
    for freeze in &config.freezes {
        let when = match freeze.current_or_next(now) {
            Some(w) if w.starts_at <= now => {
                format!(
                    "in force now, until {}",
                    stormlockd::windows::utc(w.ends_at)
                )
            }
            Some(w) => format!(
                "next {} until {}",
                stormlockd::windows::utc(w.starts_at),
                stormlockd::windows::utc(w.ends_at)
            ),
            None => "over".to_string(),
        };
        out.push_str(&format!(
            "  {}: {} ({}); {when}\n",
            freeze.name(),
            freeze.patterns().collect::<Vec<_>>().join(", "),
            freeze.schedule(),
        ));
    }
    out
}

/// The costs a caller can impose, as `[connections]` and `[limits]` bound
/// them (defaults included), so that an operator sees what is in force.
fn bounds(config: &Config) -> String {
    let c = &config.connections;
    let l = &config.limits;
    let r = &config.reservations;
    let age = c
        .max_connection_age
        .map_or_else(|| "unlimited".to_string(), |age| format!("{age:?}"));
    format!(
        "connections: at most {} open, TLS handshake within {:?}, {} streams each, \
         keepalive every {:?} (timeout {:?}), age {age}\n\
         limits: {} waiters per resource, {} per principal, {} watches per principal\n\
         reservations: start at most {} ahead, last at most {}, {} per resource, \
         read again every {}\n",
        c.max_connections,
        c.handshake_timeout,
        c.max_streams_per_connection,
        c.keepalive_interval,
        c.keepalive_timeout,
        l.max_waiters_per_resource,
        l.max_waiters_per_principal,
        l.max_watches_per_principal,
        stormlockd::duration::format_duration(r.max_ahead),
        stormlockd::duration::format_duration(r.max_length),
        r.max_per_resource,
        stormlockd::duration::format_duration(r.refresh),
    )
}
