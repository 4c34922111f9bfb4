//! Client settings: flags, then environment variables, then the first config
//! file found, then defaults.
//!
//! The config file is TOML with the keys `addr`, `ca`, `cert`, `key`,
//! `principal`, `ttl` and `timeout`; relative paths in it are relative to the
//! file's directory. It is `-c FILE`, else `$STORMLOCK_CONFIG` (both must
//! exist), else the first of `./.stormlock.toml`,
//! `$XDG_CONFIG_HOME/stormlock/config.toml` (`~/.config` by default) and
//! `~/.stormlock.toml` that exists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::address::Address;
use crate::args::GlobalArgs;
use crate::error::{CliError, CliResult};

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
}

/// A config file and where it was found.
#[derive(Debug)]
pub struct LoadedConfig {
    /// The file, for messages and to resolve relative paths.
    pub path: PathBuf,
    /// What it says.
    pub file: ConfigFile,
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
    pub token: Option<String>,
    /// TTL to send when the command has no `-t`.
    pub ttl: Option<Duration>,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Where a daemon on this host keeps its development certificates:
    /// `$STORMLOCK_DATA_DIR`, else the daemon's default state directory.
    pub daemon_data_dir: PathBuf,
}

/// The config file paths searched when neither `-c` nor `$STORMLOCK_CONFIG` is given.
pub fn search_paths(env: &dyn Env) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(cwd) = env.current_dir() {
        paths.push(cwd.join(".stormlock.toml"));
    }
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

/// Finds and reads the config file, if any.
pub fn load(explicit: Option<&Path>, env: &dyn Env) -> CliResult<Option<LoadedConfig>> {
    let named = explicit
        .map(Path::to_path_buf)
        .or_else(|| env.var("STORMLOCK_CONFIG").map(PathBuf::from));
    let path = match named {
        Some(path) => path,
        None => match search_paths(env).into_iter().find(|p| p.is_file()) {
            Some(path) => path,
            None => return Ok(None),
        },
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CliError::usage(format!("cannot read config file {}: {e}", path.display())))?;
    let file = parse(&text)
        .map_err(|e| CliError::usage(format!("invalid config file {}: {e}", path.display())))?;
    Ok(Some(LoadedConfig { path, file }))
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
        None => Principal {
            name: default_principal(env),
            explicit: false,
        },
    };

    // Tokens never come from the command line, where `ps` would show them.
    let token_file = args
        .token_file
        .clone()
        .or_else(|| from_file(|f| f.token_file.as_ref()));
    let token = match (env.var("STORMLOCK_TOKEN"), token_file) {
        (Some(token), _) => Some(token),
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| {
                    CliError::usage(format!(
                        "cannot read the token file {}: {e}",
                        path.display()
                    ))
                })?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    }
    .filter(|t| !t.is_empty());

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
        load(explicit, env)
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
        let err = load(Some(&missing), &env).map(|_| ()).unwrap_err();
        assert_eq!(err.exit, crate::error::Exit::Usage);
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("c.toml");
        write(&path, "addr = 'h:1'\nprincipl = 'typo'\n");
        let env = fake(tmp.path(), &[]);
        let err = load(Some(&path), &env).map(|_| ()).unwrap_err().to_string();
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
            },
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
        assert_eq!(s.token.as_deref(), Some("from-file"));
        let token_env = fake(
            tmp.path(),
            &[
                ("USER", "alice"),
                ("HOME", "/home/alice"),
                ("STORMLOCK_TOKEN", "from-env"),
            ],
        );
        let s = resolve(&none, &token_env, Some(&config)).expect("token env");
        assert_eq!(s.token.as_deref(), Some("from-env"));

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
