//! Client settings: flags, then environment variables, then the first config
//! file found, then defaults.
//!
//! The config file is TOML with the keys `addr`, `ca`, `cert`, `key`,
//! `principal`, `token_file`, `ttl`, `timeout` and `trusted_dirs`; relative
//! paths in it are relative to the file's directory. It is `-c FILE`, else
//! `$STORMLOCK_CONFIG` (both must exist), else the first of
//! `./.stormlock.toml`, `$XDG_CONFIG_HOME/stormlock/config.toml` (`~/.config`
//! by default) and `~/.stormlock.toml` that exists.
//!
//! A `./.stormlock.toml` comes with whatever directory one works in (a cloned
//! repository, a shared directory), so it may not set the keys that decide
//! where requests and credentials go ([`REDIRECTING_KEYS`]) unless the user
//! trusts its directory: `trusted_dirs` in the user's own file (the
//! `$XDG_CONFIG_HOME` or home one) lists such directories, and the home
//! directory, whose `./.stormlock.toml` is `~/.stormlock.toml`, is trusted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::address::Address;
use crate::args::GlobalArgs;
use crate::error::{CliError, CliResult};
use crate::python_config::PythonConfig;

/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default daemon address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7466";

/// Where settings are read from besides flags; a trait so tests need not
/// touch the process environment.
pub trait Env {
    /// A non-empty environment variable.
    fn var(&self, name: &str) -> Option<String>;
    /// The working directory.
    fn current_dir(&self) -> Option<PathBuf>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
    fn current_dir(&self) -> Option<PathBuf> {
        std::env::current_dir().ok()
    }
}

/// The contents of a client config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Daemon address, as `--addr`.
    pub addr: Option<String>,
    /// CA certificate file, as `--ca`.
    pub ca: Option<PathBuf>,
    /// Client certificate file, as `--cert`.
    pub cert: Option<PathBuf>,
    /// Client key file, as `--key`.
    pub key: Option<PathBuf>,
    /// Principal, as `--principal`.
    pub principal: Option<String>,
    /// File holding a bearer token, as `--token-file`.
    pub token_file: Option<PathBuf>,
    /// TTL sent when `-t` is absent (else the daemon's default applies).
    #[serde(
        default,
        deserialize_with = "stormlock_api::duration::deserialize_option"
    )]
    pub ttl: Option<Duration>,
    /// Per-call timeout, as `--timeout`.
    #[serde(
        default,
        deserialize_with = "stormlock_api::duration::deserialize_option"
    )]
    pub timeout: Option<Duration>,
    /// Directories whose `./.stormlock.toml` may set [`REDIRECTING_KEYS`];
    /// read from the user's own config file only.
    #[serde(default)]
    pub trusted_dirs: Vec<PathBuf>,
}

/// Keys a config file found in the working directory may set only when its
/// directory is trusted: each could send requests, the token or a file read
/// as a token to a daemon of the file's choosing, or change who we are.
pub const REDIRECTING_KEYS: [&str; 6] = ["addr", "ca", "cert", "key", "token_file", "trusted_dirs"];

impl ConfigFile {
    /// Which of [`REDIRECTING_KEYS`] this file sets.
    fn redirecting_keys(&self) -> Vec<&'static str> {
        let set = [
            self.addr.is_some(),
            self.ca.is_some(),
            self.cert.is_some(),
            self.key.is_some(),
            self.token_file.is_some(),
            !self.trusted_dirs.is_empty(),
        ];
        REDIRECTING_KEYS
            .into_iter()
            .zip(set)
            .filter_map(|(key, set)| set.then_some(key))
            .collect()
    }
}

/// A config file and where it was found.
#[derive(Debug)]
pub struct LoadedConfig {
    /// The file, for messages and to resolve relative paths.
    pub path: PathBuf,
    /// What it says.
    pub file: ConfigFile,
    /// Set when the file is Python stormlock's: the principal it names,
    /// which is declared only where Python stormlock's was, by a client
    /// without a certificate or token ([`Principal::explicit`] false). Its
    /// TTL is in `file`.
    pub python: Option<PythonPrincipal>,
}

/// What a Python stormlock config file gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonPrincipal {
    /// Its `principal`, if set.
    pub principal: Option<String>,
}

impl LoadedConfig {
    /// The note to print when the file is Python stormlock's: one line,
    /// saying what is used and what to do.
    pub fn python_note(&self) -> Option<String> {
        self.python.as_ref().map(|_| {
            format!(
                "stormlock: {} is a Python stormlock config file: using only its principal and \
                 ttl, and ignoring its backend settings (the daemon has its own); give this CLI \
                 a TOML config file (-c FILE, or $STORMLOCK_CONFIG once Python stormlock is \
                 gone): see MIGRATING.md, \"The CLI's config file\"",
                self.path.display()
            )
        })
    }
}

/// A config file's contents, in either format.
enum Parsed {
    /// This CLI's TOML.
    Toml(ConfigFile),
    /// Python stormlock's INI.
    Python(PythonConfig),
}

/// The TLS files to use; each one set independently by flag, env or file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate.
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether no TLS setting was given anywhere.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// A bearer token and where it came from (for messages; never the token
/// itself).
#[derive(Clone)]
pub struct Token {
    /// The token.
    pub secret: String,
    /// `STORMLOCK_TOKEN`, `--token-file FILE` or `token_file in FILE`.
    pub source: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(from {})", self.source)
    }
}

/// Who the client says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name.
    pub name: String,
    /// Set by flag, env or file rather than defaulted: then it is sent even
    /// with a client certificate, and the daemon judges it.
    pub explicit: bool,
}

/// Everything a command needs to reach the daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the daemon is.
    pub addr: Address,
    /// TLS files from flags, env or file (none: development certificates on
    /// loopback).
    pub tls: TlsFiles,
    /// Declared principal.
    pub principal: Principal,
    /// Bearer token for daemons that authenticate tools by token.
    pub token: Option<Token>,
    /// TTL to send when the command has no `-t`.
    pub ttl: Option<Duration>,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Where a daemon on this host keeps its development certificates:
    /// `$STORMLOCK_DATA_DIR`, else the daemon's default state directory.
    pub daemon_data_dir: PathBuf,
    /// Where `daemon_data_dir` came from, for messages about the
    /// development certificates found there.
    pub data_dir_source: &'static str,
    /// Where `addr` came from (`--addr`, `STORMLOCK_ADDR`, `addr in FILE`,
    /// `default`), for messages about a daemon that cannot be reached.
    pub addr_source: String,
}

/// The config file paths searched when neither `-c` nor `$STORMLOCK_CONFIG`
/// is given: the working directory's, then the user's own.
pub fn search_paths(env: &dyn Env) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = env
        .current_dir()
        .map(|cwd| cwd.join(".stormlock.toml"))
        .into_iter()
        .collect();
    paths.extend(user_paths(env));
    paths
}

/// The user's own config files, in the order searched.
fn user_paths(env: &dyn Env) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let home = env.var("HOME").map(PathBuf::from);
    match env.var("XDG_CONFIG_HOME") {
        Some(xdg) => paths.push(Path::new(&xdg).join("stormlock/config.toml")),
        None => {
            if let Some(home) = &home {
                paths.push(home.join(".config/stormlock/config.toml"));
            }
        }
    }
    if let Some(home) = &home {
        paths.push(home.join(".stormlock.toml"));
    }
    paths
}

/// Finds and reads the config file, if any, for a command on `resource`
/// (a Python stormlock file has settings per resource). A file found in the
/// working directory that sets [`REDIRECTING_KEYS`] is refused unless its
/// directory is trusted.
pub fn load(
    explicit: Option<&Path>,
    env: &dyn Env,
    resource: Option<&str>,
) -> CliResult<Option<LoadedConfig>> {
    let named = explicit
        .map(Path::to_path_buf)
        .or_else(|| env.var("STORMLOCK_CONFIG").map(PathBuf::from));
    if let Some(path) = named {
        return loaded(path, resource).map(Some);
    }
    let Some(path) = search_paths(env).into_iter().find(|p| p.is_file()) else {
        return Ok(None);
    };
    let config = loaded(path, resource)?;
    let in_working_dir = env
        .current_dir()
        .is_some_and(|cwd| config.path == cwd.join(".stormlock.toml"));
    if in_working_dir {
        check_working_dir_file(&config.path, &config.file, env)?;
    }
    Ok(Some(config))
}

/// Reads the config file at `path`, in either format.
fn loaded(path: PathBuf, resource: Option<&str>) -> CliResult<LoadedConfig> {
    match read(&path)? {
        Parsed::Toml(file) => Ok(LoadedConfig {
            path,
            file,
            python: None,
        }),
        Parsed::Python(python) => {
            let settings = python.settings(resource, &path).map_err(CliError::usage)?;
            Ok(LoadedConfig {
                path,
                file: ConfigFile {
                    ttl: settings.ttl,
                    ..ConfigFile::default()
                },
                python: Some(PythonPrincipal {
                    principal: settings.principal,
                }),
            })
        }
    }
}

fn read(path: &Path) -> CliResult<Parsed> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read config file {}: {e}", path.display())))?;
    match parse(&text) {
        Ok(file) => Ok(Parsed::Toml(file)),
        Err(e) => match PythonConfig::recognise(&text) {
            Some(python) => Ok(Parsed::Python(python)),
            None => Err(CliError::usage(format!(
                "invalid config file {}: {e}",
                path.display()
            ))),
        },
    }
}

/// Refuses a working directory's config file that sets
/// [`REDIRECTING_KEYS`], unless the directory is trusted.
fn check_working_dir_file(path: &Path, file: &ConfigFile, env: &dyn Env) -> CliResult<()> {
    let keys = file.redirecting_keys();
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    if keys.is_empty() || is_trusted(dir, env)? {
        return Ok(());
    }
    let user_file = user_paths(env)
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| user_paths(env).into_iter().next())
        .map_or_else(
            || "your own config file".to_string(),
            |p| p.display().to_string(),
        );
    Err(CliError::usage(format!(
        "{} sets {}, which a config file found in the working directory may set only when \
         you trust the directory (it could send your requests and credentials elsewhere): \
         add trusted_dirs = [{}] to {user_file}, or pass the file with -c",
        path.display(),
        keys.join(", "),
        toml_string(&dir.display().to_string()),
    )))
}

/// Whether the user trusts `dir`'s `.stormlock.toml`: `dir` is the home
/// directory (the file is then `~/.stormlock.toml`), or the user's own config
/// file lists it in `trusted_dirs`. Directories are compared after resolving
/// symbolic links.
fn is_trusted(dir: &Path, env: &dyn Env) -> CliResult<bool> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(false);
    };
    let same = |other: &Path| other.canonicalize().is_ok_and(|other| other == dir);
    if env.var("HOME").is_some_and(|home| same(Path::new(&home))) {
        return Ok(true);
    }
    let Some(user_file) = user_paths(env).into_iter().find(|p| p.is_file()) else {
        return Ok(false);
    };
    let Parsed::Toml(ConfigFile { trusted_dirs, .. }) = read(&user_file)? else {
        return Ok(false);
    };
    let trusted = trusted_dirs;
    Ok(trusted
        .iter()
        .any(|trusted| same(&file_path(trusted, &user_file, env))))
}

/// `value` as a TOML string, for messages that suggest a line to write.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// Parses a config file's text; errors name the key and line.
pub fn parse(text: &str) -> Result<ConfigFile, String> {
    toml::from_str(text).map_err(|e| {
        // toml's message spans several lines with a source excerpt; keep the
        // location and the reason on one line.
        let reason = e.message().trim().to_string();
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {reason}")
            }
            None => reason,
        }
    })
}

/// Merges flags, environment and config file (in that order of precedence).
pub fn resolve(
    args: &GlobalArgs,
    env: &dyn Env,
    config: Option<&LoadedConfig>,
) -> CliResult<Settings> {
    let file = config.map(|c| &c.file);
    let from_file = |pick: fn(&ConfigFile) -> Option<&PathBuf>| {
        config.and_then(|c| pick(&c.file).map(|p| file_path(p, &c.path, env)))
    };
    let path_setting =
        |flag: &Option<PathBuf>, var: &str, pick: fn(&ConfigFile) -> Option<&PathBuf>| {
            flag.clone()
                .or_else(|| env.var(var).map(PathBuf::from))
                .or_else(|| from_file(pick))
        };

    let (addr_text, addr_source) = if let Some(addr) = &args.addr {
        (addr.clone(), "--addr".to_string())
    } else if let Some(addr) = env.var("STORMLOCK_ADDR") {
        (addr, "STORMLOCK_ADDR".to_string())
    } else if let Some((addr, c)) = file.and_then(|f| f.addr.clone()).zip(config) {
        (addr, format!("addr in {}", c.path.display()))
    } else {
        (DEFAULT_ADDR.to_string(), "default".to_string())
    };
    let addr = Address::parse(&addr_text)
        .map_err(|e| CliError::usage(format!("{e} (from {addr_source})")))?;

    let tls = TlsFiles {
        ca: path_setting(&args.ca, "STORMLOCK_CA", |f| f.ca.as_ref()),
        cert: path_setting(&args.cert, "STORMLOCK_CERT", |f| f.cert.as_ref()),
        key: path_setting(&args.key, "STORMLOCK_KEY", |f| f.key.as_ref()),
    };

    let principal = match args
        .principal
        .clone()
        .or_else(|| env.var("STORMLOCK_PRINCIPAL"))
        .or_else(|| file.and_then(|f| f.principal.clone()))
    {
        Some(name) => Principal {
            name,
            explicit: true,
        },
        // Python stormlock's principal was a name nothing checked: it is
        // declared where such a name still counts, by a client that
        // presents no certificate or token, as the default one is.
        None => Principal {
            name: config
                .and_then(|c| c.python.as_ref())
                .and_then(|p| p.principal.clone())
                .unwrap_or_else(|| default_principal(env)),
            explicit: false,
        },
    };

    // Tokens never come from the command line, where `ps` would show them.
    let token_file = args
        .token_file
        .clone()
        .or_else(|| from_file(|f| f.token_file.as_ref()));
    let token_source = match (&args.token_file, config) {
        (Some(path), _) => format!("--token-file {}", path.display()),
        (None, Some(c)) => format!("token_file in {}", c.path.display()),
        (None, None) => String::new(),
    };
    let token = match (env.var("STORMLOCK_TOKEN"), token_file) {
        (Some(secret), _) => Some(Token {
            secret,
            source: "STORMLOCK_TOKEN".to_string(),
        }),
        (None, Some(path)) => Some(Token {
            secret: std::fs::read_to_string(&path)
                .map_err(|e| {
                    CliError::usage(format!(
                        "cannot read the token file {}: {e}",
                        path.display()
                    ))
                })?
                .trim()
                .to_string(),
            source: token_source,
        }),
        (None, None) => None,
    }
    .filter(|t| !t.secret.is_empty());

    let timeout = match (args.timeout, env.var("STORMLOCK_TIMEOUT")) {
        (Some(timeout), _) => timeout,
        (None, Some(text)) => crate::args::parse_timeout(&text)
            .map_err(|e| CliError::usage(format!("invalid STORMLOCK_TIMEOUT {text:?}: {e}")))?,
        (None, None) => match file.and_then(|f| f.timeout) {
            Some(t) if t.is_zero() => {
                return Err(CliError::usage(format!(
                    "invalid config file {}: timeout must be at least 1 second",
                    config
                        .map(|c| c.path.display().to_string())
                        .unwrap_or_default()
                )));
            }
            Some(t) => t,
            None => DEFAULT_TIMEOUT,
        },
    };

    Ok(Settings {
        addr,
        tls,
        principal,
        token,
        ttl: file.and_then(|f| f.ttl),
        timeout,
        daemon_data_dir: env
            .var("STORMLOCK_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| stormlock_api::paths::default_data_dir_with(|name| env.var(name))),
        data_dir_source: if env.var("STORMLOCK_DATA_DIR").is_some() {
            "the data dir from STORMLOCK_DATA_DIR"
        } else {
            "the daemon's default data dir; STORMLOCK_DATA_DIR is not set"
        },
        addr_source,
    })
}

/// A path from a config file: `~/` is the home directory, and a relative
/// path is relative to the file's directory.
fn file_path(path: &Path, config: &Path, env: &dyn Env) -> PathBuf {
    if let (Ok(rest), Some(home)) = (path.strip_prefix("~"), env.var("HOME")) {
        return Path::new(&home).join(rest);
    }
    match config.parent() {
        Some(dir) => dir.join(path),
        None => path.to_path_buf(),
    }
}

/// `user@host`, computed as the daemon names its development client.
fn default_principal(env: &dyn Env) -> String {
    stormlock_api::paths::local_principal_with(|name| env.var(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv {
        vars: HashMap<&'static str, String>,
        cwd: PathBuf,
    }

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned().filter(|v| !v.is_empty())
        }
        fn current_dir(&self) -> Option<PathBuf> {
            Some(self.cwd.clone())
        }
    }

    fn fake(dir: &Path, vars: &[(&'static str, &str)]) -> FakeEnv {
        FakeEnv {
            vars: vars.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            cwd: dir.join("cwd"),
        }
    }

    fn write(path: &Path, text: &str) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }

    fn found(explicit: Option<&Path>, env: &dyn Env) -> Option<String> {
        load(explicit, env, None)
            .ok()
            .flatten()
            .and_then(|c| c.file.principal)
    }

    #[test]
    fn search_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let home = dir.join("home");
        let home_str = home.to_string_lossy().to_string();
        let xdg = dir.join("xdg");
        let xdg_str = xdg.to_string_lossy().to_string();
        let env = fake(dir, &[("HOME", &home_str), ("XDG_CONFIG_HOME", &xdg_str)]);
        assert_eq!(found(None, &env), None);

        write(&home.join(".stormlock.toml"), "principal = 'home'");
        assert_eq!(found(None, &env).as_deref(), Some("home"));
        // Without XDG_CONFIG_HOME, ~/.config is searched; with it, it is not.
        write(
            &home.join(".config/stormlock/config.toml"),
            "principal = 'dotconfig'",
        );
        assert_eq!(found(None, &env).as_deref(), Some("home"));
        let no_xdg = fake(dir, &[("HOME", &home_str)]);
        assert_eq!(found(None, &no_xdg).as_deref(), Some("dotconfig"));

        write(&xdg.join("stormlock/config.toml"), "principal = 'xdg'");
        assert_eq!(found(None, &env).as_deref(), Some("xdg"));
        write(&dir.join("cwd/.stormlock.toml"), "principal = 'cwd'");
        assert_eq!(found(None, &env).as_deref(), Some("cwd"));

        let named = dir.join("named.toml");
        write(&named, "principal = 'named'");
        let named_str = named.to_string_lossy().to_string();
        let with_var = fake(
            dir,
            &[("HOME", &home_str), ("STORMLOCK_CONFIG", &named_str)],
        );
        assert_eq!(found(None, &with_var).as_deref(), Some("named"));
        let flag = dir.join("flag.toml");
        write(&flag, "principal = 'flag'");
        assert_eq!(found(Some(&flag), &with_var).as_deref(), Some("flag"));
    }

    #[test]
    fn named_file_must_exist() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("missing.toml");
        let env = fake(tmp.path(), &[]);
        let err = load(Some(&missing), &env, None).map(|_| ()).unwrap_err();
        assert_eq!(err.exit, crate::error::Exit::Usage);
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("c.toml");
        write(&path, "addr = 'h:1'\nprincipl = 'typo'\n");
        let env = fake(tmp.path(), &[]);
        let err = load(Some(&path), &env, None)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml"), "{err}");
        assert!(err.contains("principl"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        let bad_ttl = parse("ttl = '4 weeks'").map(|_| ()).unwrap_err();
        assert!(bad_ttl.contains("weeks"), "{bad_ttl}");
        let ok = parse("ttl = '30 min'\ntimeout = '5s'").ok();
        assert_eq!(ok.and_then(|c| c.ttl), Some(Duration::from_secs(1800)));
    }

    #[test]
    fn precedence_flag_env_file_default() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = LoadedConfig {
            path: tmp.path().join("conf/c.toml"),
            file: ConfigFile {
                addr: Some("file:1".into()),
                ca: Some("ca.pem".into()),
                cert: Some("/abs/cert.pem".into()),
                key: Some("~/.stormlock/key.pem".into()),
                principal: Some("file-user".into()),
                token_file: Some("token".into()),
                ttl: Some(Duration::from_secs(60)),
                timeout: Some(Duration::from_secs(20)),
                trusted_dirs: Vec::new(),
            },
            python: None,
        };
        let none = GlobalArgs::default();
        let no_env = fake(tmp.path(), &[("USER", "alice"), ("HOME", "/home/alice")]);

        // Defaults.
        let s = resolve(&none, &no_env, None).expect("defaults");
        assert_eq!(s.addr.uri(), "https://127.0.0.1:7466");
        assert!(s.tls.is_empty());
        assert!(s.principal.name.starts_with("alice@"), "{:?}", s.principal);
        assert!(!s.principal.explicit);
        assert_eq!(s.ttl, None);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);

        // A token file that cannot be read is a clear usage error.
        let err = resolve(&none, &no_env, Some(&config))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.is_some_and(|e| e.contains("token file")),
            "unreadable token file"
        );
        // Tokens: STORMLOCK_TOKEN over the file's token_file.
        std::fs::create_dir_all(tmp.path().join("conf")).expect("mkdir");
        std::fs::write(tmp.path().join("conf/token"), "from-file\n").expect("token");
        let s = resolve(&none, &no_env, Some(&config)).expect("token file");
        let token = s.token.expect("token");
        assert_eq!(token.secret, "from-file");
        assert!(token.source.contains("token_file in"), "{token:?}");
        assert!(!format!("{token:?}").contains("from-file"), "never printed");
        let token_env = fake(
            tmp.path(),
            &[
                ("USER", "alice"),
                ("HOME", "/home/alice"),
                ("STORMLOCK_TOKEN", "from-env"),
            ],
        );
        let s = resolve(&none, &token_env, Some(&config)).expect("token env");
        let token = s.token.expect("token");
        assert_eq!(token.secret, "from-env");
        assert_eq!(token.source, "STORMLOCK_TOKEN");

        // File over defaults; relative paths from the file's directory.
        let s = resolve(&none, &no_env, Some(&config)).expect("file");
        assert_eq!(s.addr.uri(), "https://file:1");
        assert_eq!(s.tls.ca, Some(tmp.path().join("conf/ca.pem")));
        assert_eq!(s.tls.cert, Some(PathBuf::from("/abs/cert.pem")));
        assert_eq!(
            s.tls.key,
            Some(PathBuf::from("/home/alice/.stormlock/key.pem"))
        );
        assert_eq!(s.principal.name, "file-user");
        assert!(s.principal.explicit);
        assert_eq!(s.ttl, Some(Duration::from_secs(60)));
        assert_eq!(s.timeout, Duration::from_secs(20));

        // Env over file.
        let env = fake(
            tmp.path(),
            &[
                ("STORMLOCK_ADDR", "http://env:2"),
                ("STORMLOCK_CA", "env-ca.pem"),
                ("STORMLOCK_PRINCIPAL", "env-user"),
                ("STORMLOCK_TIMEOUT", "3s"),
                ("HOME", "/home/alice"),
            ],
        );
        let s = resolve(&none, &env, Some(&config)).expect("env");
        assert_eq!(s.addr.uri(), "http://env:2");
        assert_eq!(s.tls.ca, Some(PathBuf::from("env-ca.pem")));
        assert_eq!(
            s.tls.key,
            Some(PathBuf::from("/home/alice/.stormlock/key.pem"))
        );
        assert_eq!(s.principal.name, "env-user");
        assert_eq!(s.timeout, Duration::from_secs(3));

        // Flags over env.
        let flags = GlobalArgs {
            addr: Some("[::1]:3".into()),
            ca: Some("flag-ca.pem".into()),
            principal: Some("flag-user".into()),
            timeout: Some(Duration::from_secs(7)),
            ..GlobalArgs::default()
        };
        let s = resolve(&flags, &env, Some(&config)).expect("flags");
        assert_eq!(s.addr.uri(), "https://[::1]:3");
        assert_eq!(s.tls.ca, Some(PathBuf::from("flag-ca.pem")));
        assert_eq!(s.principal.name, "flag-user");
        assert_eq!(s.timeout, Duration::from_secs(7));
    }

    /// A home, a user config directory and a project directory, with the
    /// project as the working directory.
    struct Dirs {
        _tmp: tempfile::TempDir,
        home: PathBuf,
        xdg: PathBuf,
        project: PathBuf,
    }

    impl Dirs {
        fn new() -> Self {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dirs = Self {
                home: tmp.path().join("home"),
                xdg: tmp.path().join("xdg"),
                project: tmp.path().join("cwd"),
                _tmp: tmp,
            };
            for dir in [&dirs.home, &dirs.xdg, &dirs.project] {
                std::fs::create_dir_all(dir).expect("mkdir");
            }
            dirs
        }

        fn env(&self) -> FakeEnv {
            FakeEnv {
                vars: [
                    ("HOME", self.home.display().to_string()),
                    ("XDG_CONFIG_HOME", self.xdg.display().to_string()),
                ]
                .into_iter()
                .collect(),
                cwd: self.project.clone(),
            }
        }
    }

    #[test]
    fn working_dir_file_may_not_redirect_credentials() {
        let dirs = Dirs::new();
        let env = dirs.env();
        let project_file = dirs.project.join(".stormlock.toml");
        for (key, line) in [
            ("addr", "addr = 'http://evil:80'"),
            ("ca", "ca = 'evil-ca.pem'"),
            ("cert", "cert = 'evil.pem'"),
            ("key", "key = 'evil.key'"),
            ("token_file", "token_file = '../home/.ssh/id_ed25519'"),
            ("trusted_dirs", "trusted_dirs = ['/']"),
        ] {
            write(&project_file, &format!("principal = 'p'\n{line}\n"));
            let err = load(None, &env, None).map(|_| ()).unwrap_err();
            assert_eq!(err.exit, crate::error::Exit::Usage, "{key}");
            let text = err.to_string();
            assert!(text.contains(&format!("sets {key},")), "{text}");
            assert!(text.contains(&project_file.display().to_string()), "{text}");
            assert!(text.contains("trusted_dirs = ["), "{text}");
            assert!(text.contains("-c"), "{text}");
        }
        // Settings that redirect nothing stay allowed.
        write(
            &project_file,
            "principal = 'p'\nttl = '5m'\ntimeout = '3s'\n",
        );
        let loaded = load(None, &env, None).ok().flatten().map(|c| c.file);
        assert_eq!(loaded.and_then(|f| f.ttl), Some(Duration::from_secs(300)));
        // Named files are the user's choice.
        write(&project_file, "addr = 'http://evil:80'\n");
        assert!(load(Some(&project_file), &env, None).is_ok());
        let named = fake(
            &dirs.home,
            &[("STORMLOCK_CONFIG", &project_file.display().to_string())],
        );
        assert!(load(None, &named, None).is_ok());
    }

    #[test]
    fn trusted_dirs_in_the_users_own_file() {
        let dirs = Dirs::new();
        let env = dirs.env();
        write(
            &dirs.project.join(".stormlock.toml"),
            "addr = 'locks.example:7466'\nca = 'ca.pem'\n",
        );
        assert!(load(None, &env, None).is_err());

        // Another directory listed trusts nothing here.
        let user_file = dirs.xdg.join("stormlock/config.toml");
        write(&user_file, "trusted_dirs = ['/nonexistent']\n");
        assert!(load(None, &env, None).is_err());

        // Listed (through a symbolic link, and as ~/…): trusted.
        std::os::unix::fs::symlink(&dirs.project, dirs.home.join("link")).expect("symlink");
        for listed in [
            dirs.project.display().to_string(),
            dirs.home.join("link").display().to_string(),
        ] {
            write(&user_file, &format!("trusted_dirs = [{listed:?}]\n"));
            let loaded = load(None, &env, None).map_err(|e| e.to_string());
            let addr = loaded.ok().flatten().and_then(|c| c.file.addr);
            assert_eq!(addr.as_deref(), Some("locks.example:7466"), "{listed}");
        }
        write(&user_file, "trusted_dirs = ['~/link']\n");
        assert!(load(None, &env, None).is_ok());

        // ~/.stormlock.toml counts as the user's own file when there is no
        // XDG one.
        std::fs::remove_file(&user_file).expect("rm");
        assert!(load(None, &env, None).is_err());
        write(
            &dirs.home.join(".stormlock.toml"),
            &format!(
                "trusted_dirs = [{:?}]\n",
                dirs.project.display().to_string()
            ),
        );
        assert!(load(None, &env, None).is_ok());
    }

    #[test]
    fn the_home_directory_is_trusted() {
        // In ~, ./.stormlock.toml is ~/.stormlock.toml: the user's own.
        let dirs = Dirs::new();
        let env = FakeEnv {
            cwd: dirs.home.clone(),
            ..dirs.env()
        };
        write(&dirs.home.join(".stormlock.toml"), "addr = 'locks:1'\n");
        let addr = load(None, &env, None)
            .ok()
            .flatten()
            .and_then(|c| c.file.addr);
        assert_eq!(addr.as_deref(), Some("locks:1"));
    }

    #[test]
    fn a_python_stormlock_file_gives_its_principal_and_ttl() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(".stormlock.cfg");
        write(
            &path,
            "[default]\nbackend = redis\nprincipal = py-alice\nttl = 30 min\n\
             [deploy/prod]\nttl = 2 hours\n[backend.redis]\nurl = redis://x:6379/0\n",
        );
        let env = fake(
            tmp.path(),
            &[
                ("STORMLOCK_CONFIG", &path.display().to_string()),
                ("USER", "me"),
            ],
        );
        let config = load(None, &env, Some("deploy/prod"))
            .ok()
            .flatten()
            .expect("read as Python stormlock's");
        let note = config.python_note().expect("a note");
        assert!(note.contains(&path.display().to_string()), "{note}");
        assert!(note.contains("MIGRATING.md"), "{note}");
        assert!(note.contains("TOML"), "{note}");
        assert!(!note.contains('\n'), "one line: {note}");
        let s = resolve(&GlobalArgs::default(), &env, Some(&config)).expect("settings");
        assert_eq!(s.ttl, Some(Duration::from_secs(7200)), "the resource's own");
        assert_eq!(s.principal.name, "py-alice");
        assert!(!s.principal.explicit, "a certificate's identity wins");
        // Nothing else: the default address, no TLS files.
        assert_eq!(s.addr.uri(), "https://127.0.0.1:7466");
        assert!(s.tls.is_empty());

        let config = load(Some(&path), &env, Some("other")).ok().flatten();
        let s = config.map(|c| resolve(&GlobalArgs::default(), &env, Some(&c)));
        assert_eq!(
            s.and_then(Result::ok).and_then(|s| s.ttl),
            Some(Duration::from_secs(1800)),
            "[default]'s"
        );
        // Flags and variables still come first.
        let env_principal = fake(tmp.path(), &[("STORMLOCK_PRINCIPAL", "env-user")]);
        let config = load(Some(&path), &env_principal, None).ok().flatten();
        let s = config.map(|c| resolve(&GlobalArgs::default(), &env_principal, Some(&c)));
        let principal = s.and_then(Result::ok).map(|s| s.principal);
        assert_eq!(
            principal,
            Some(Principal {
                name: "env-user".into(),
                explicit: true
            })
        );

        // A TOML file is never taken for one, and a broken one still says
        // what is wrong with it as TOML.
        write(&path, "addr = locks:7466\n");
        let err = load(Some(&path), &env, None).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        write(&path, "[default]\nbackend = redis\nttl = 4 weeks\n");
        let err = load(Some(&path), &env, None).map(|_| ()).unwrap_err();
        assert_eq!(err.exit, crate::error::Exit::Usage);
        assert!(err.to_string().contains("invalid ttl"), "{err}");
    }

    #[test]
    fn bad_settings_are_usage_errors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let env = fake(tmp.path(), &[("STORMLOCK_ADDR", "ftp://x:1")]);
        let err = resolve(&GlobalArgs::default(), &env, None)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.exit, crate::error::Exit::Usage);
        assert!(err.to_string().contains("STORMLOCK_ADDR"), "{err}");
        let env = fake(tmp.path(), &[("STORMLOCK_TIMEOUT", "soon")]);
        let err = resolve(&GlobalArgs::default(), &env, None)
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("STORMLOCK_TIMEOUT"), "{err}");
    }
}
