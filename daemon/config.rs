//! The daemon's configuration: a TOML file, with flags and `STORMLOCKD_*`
//! environment variables layered on top ([`Overrides`], [`Config::layered`]:
//! the one place where they meet, for serving and for `check-config`).
//!
//! Any string in the file may reference environment variables as `${NAME}`
//! (`$${` for a literal `${`), so credentials can come from the environment
//! (Kubernetes Secrets) instead of the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::BackendConfig;
use crate::glob::{PatternSet, ResourcePattern};
use crate::tls::IdentitySource;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type (the message has the line,
    /// column and key).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message, with line and column.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address. Default `127.0.0.1:7466`.
    pub listen: Option<SocketAddr>,
    /// Plaintext listener serving only `grpc.health.v1.Health`, for probes
    /// that cannot speak TLS (Kubernetes `grpc:` probes). Off by default.
    pub health_listen: Option<SocketAddr>,
    /// Prometheus metrics HTTP listener. Off by default.
    pub metrics_listen: Option<SocketAddr>,
    /// How long in-flight calls may take to finish after SIGTERM before the
    /// daemon exits anyway. Default `10s`.
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    pub shutdown_grace: Option<Duration>,
    /// State directory (embedded store, development certificates).
    pub data_dir: Option<PathBuf>,
    /// Log level or filter, as `--log-level` takes it; the flag,
    /// `STORMLOCKD_LOG` and `RUST_LOG` win over it. Reloaded on SIGHUP.
    pub log_level: Option<String>,
    /// Serve plain text. Only ever set on purpose.
    #[serde(default)]
    pub insecure: bool,
    /// Server TLS; absent: development PKI on loopback.
    pub tls: Option<TlsConfig>,
    /// Authentication, administrators and access rules.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Defaults for every resource.
    #[serde(default)]
    pub defaults: Defaults,
    /// Limits on every connection to the gRPC and health ports.
    #[serde(default)]
    pub connections: crate::connections::ConnectionLimits,
    /// Limits on what one caller can hold: waiters and watches.
    #[serde(default)]
    pub limits: crate::limits::Limits,
    /// Named backends.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Routing rules, first match wins.
    #[serde(default)]
    pub resources: Vec<ResourceRule>,
    /// Freeze windows: when matching resources cannot be acquired.
    #[serde(default)]
    pub freezes: Vec<crate::windows::Freeze>,
    /// Limits on reservations.
    #[serde(default)]
    pub reservations: crate::reservations::ReservationLimits,
    /// Webhooks: who hears of which lock events.
    #[serde(default)]
    pub notify: Vec<crate::notify::Notifier>,
}

/// Settings given outside the file, by flag or `STORMLOCKD_*` variable
/// (clap reads both); each one set wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--insecure` (can only switch plain text on).
    pub insecure: bool,
    /// `--health-listen`.
    pub health_listen: Option<SocketAddr>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `--shutdown-grace`.
    pub shutdown_grace: Option<Duration>,
}

/// The default gRPC address: loopback, the API's port.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    crate::paths::DEFAULT_PORT,
);

/// `[tls]`: the server's certificate and, for mutual TLS, the client CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// Clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// `[auth]`: who is who, and who may do what.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Principals that may do everything, including force-release, and see
    /// every lease id.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Which certificate field names the principal: `cn` (default),
    /// `dns_san` or `uri_san`.
    #[serde(default)]
    pub identity: IdentitySource,
    /// Bearer tokens, for tools where mutual TLS is awkward.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// What a principal may do when no `[[auth.rules]]` entry matches:
    /// `allow` (default: everything but force-release) or `deny`.
    #[serde(default)]
    pub default: Effect,
    /// Access rules, tried in order; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<AclRule>,
}

/// `[[auth.tokens]]`: a bearer token, stored as its SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The principal the token authenticates as.
    pub principal: String,
    /// Lowercase hex SHA-256 of the token (`stormlockd hash-token`).
    pub sha256: String,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Permit the action.
    #[default]
    Allow,
    /// Refuse the action.
    Deny,
}

/// An action a rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Acquire.
    Acquire,
    /// Release.
    Release,
    /// Renew.
    Renew,
    /// Current and IsHeld.
    Read,
    /// List.
    List,
    /// Watch.
    Watch,
    /// ForceRelease.
    ForceRelease,
    /// Reserve, and Unreserve of one's own reservations.
    Reserve,
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        ALL_ACTIONS
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "unknown action {name:?}: use acquire, release, renew, read, list, watch, \
                     force-release, reserve or *"
                )
            })
    }
}

/// Every action, in the order of the docs.
const ALL_ACTIONS: [Action; 8] = [
    Action::Acquire,
    Action::Release,
    Action::Renew,
    Action::Read,
    Action::List,
    Action::Watch,
    Action::ForceRelease,
    Action::Reserve,
];

impl Action {
    /// The action's name as written in rules and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acquire => "acquire",
            Self::Release => "release",
            Self::Renew => "renew",
            Self::Read => "read",
            Self::List => "list",
            Self::Watch => "watch",
            Self::ForceRelease => "force-release",
            Self::Reserve => "reserve",
        }
    }
}

/// `[[auth.rules]]`: principals × resources × actions → allow or deny.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Principal patterns (`*` matches anything, e.g. `team-a-*`).
    #[serde(deserialize_with = "crate::glob::deserialize_principals")]
    pub principals: PatternSet,
    /// Resource patterns, as in `[[resources]]` (`*` one level, `**` any).
    #[serde(deserialize_with = "crate::glob::deserialize_resources")]
    pub resources: PatternSet,
    /// Actions the rule covers; `["*"]` for all.
    pub actions: Actions,
    /// What happens when the rule matches. Default `allow`.
    #[serde(default)]
    pub effect: Effect,
}

/// The actions an access rule covers: those named, and with `*` every
/// action but `force-release`, which breaks other people's locks and so is
/// only ever granted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actions {
    /// `*` was given.
    all: bool,
    /// The actions named.
    named: Vec<Action>,
}

impl Actions {
    /// Whether `action` is covered.
    pub fn contains(&self, action: Action) -> bool {
        self.named.contains(&action) || (self.all && action != Action::ForceRelease)
    }
}

impl<'de> Deserialize<'de> for Actions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        if names.is_empty() {
            return Err(serde::de::Error::custom("needs at least one action"));
        }
        let all = names.iter().any(|n| n == "*");
        let named = names
            .iter()
            .filter(|n| *n != "*")
            .map(|n| n.parse().map_err(serde::de::Error::custom))
            .collect::<Result<_, _>>()?;
        Ok(Self { all, named })
    }
}

/// `[audit]`: where audit events go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File to append JSON lines to; absent: standard error.
    pub path: Option<PathBuf>,
}

/// `[defaults]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// TTL when a request sets none. Default 1h.
    #[serde(
        default = "default_ttl",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub ttl: Duration,
    /// Largest TTL a request may ask for. Default 30d.
    #[serde(
        default = "default_max_ttl",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub max_ttl: Duration,
    /// Backend for resources no rule matches. Default `main`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Bound on every backend call; past it the call fails with UNAVAILABLE.
    /// Default 2s.
    #[serde(
        default = "default_backend_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub backend_timeout: Duration,
    /// Largest `wait` an Acquire may ask for. Default 1d.
    #[serde(
        default = "default_max_wait",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub max_wait: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            max_ttl: default_max_ttl(),
            backend: default_backend(),
            backend_timeout: default_backend_timeout(),
            max_wait: default_max_wait(),
        }
    }
}

fn default_ttl() -> Duration {
    Duration::from_secs(3_600)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_backend() -> String {
    "main".to_string()
}
fn default_backend_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_max_wait() -> Duration {
    Duration::from_secs(86_400)
}

/// `[[resources]]`: a routing rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRule {
    /// Glob over resource names: `*` stays within one `/` level, `**`
    /// crosses levels (`prod/*` matches `prod/db` but not `prod/db/main`).
    #[serde(rename = "match")]
    pub pattern: ResourcePattern,
    /// Backend for matching resources. Default: `[defaults] backend`.
    pub backend: Option<String>,
    /// Default TTL for matching resources.
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    pub ttl: Option<Duration>,
    /// Maximum TTL for matching resources.
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    pub max_ttl: Option<Duration>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML `text` (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        };
        // First pass on the text itself, so syntax, unknown keys and types are
        // reported with their line and column.
        toml::from_str::<Config>(text).map_err(parse_err)?;
        let mut value: toml::Value = toml::from_str(text).map_err(parse_err)?;
        expand_env(&mut value, "")?;
        let config = Config::deserialize(value).map_err(parse_err)?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration a daemon runs with: `file` (or the empty default)
    /// parsed and validated, `overrides` on top, the data directory and
    /// listen address resolved and the implicit backend added.
    pub fn layered(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let config = match file {
            Some(path) => Self::load(path)?,
            None => Self::default(),
        };
        Ok(config.layer(overrides))
    }

    /// `overrides` on top of this (validated) configuration, with the data
    /// directory and listen address resolved and the implicit backend added.
    pub fn layer(mut self, overrides: &Overrides) -> Self {
        let o = overrides.clone();
        self.listen = Some(o.listen.or(self.listen).unwrap_or(DEFAULT_LISTEN));
        self.data_dir = Some(
            o.data_dir
                .or(self.data_dir)
                .unwrap_or_else(crate::paths::default_data_dir),
        );
        self.insecure |= o.insecure;
        self.health_listen = o.health_listen.or(self.health_listen);
        self.metrics_listen = o.metrics_listen.or(self.metrics_listen);
        self.shutdown_grace = o.shutdown_grace.or(self.shutdown_grace);
        self.with_implicit_backend()
    }

    /// The state directory (see [`Config::layer`]).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(crate::paths::default_data_dir)
    }

    /// The gRPC address.
    pub fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or(DEFAULT_LISTEN)
    }

    /// Adds the implicit `main` embedded backend when none is configured.
    pub fn with_implicit_backend(mut self) -> Self {
        if self.backends.is_empty() {
            self.backends.insert(
                self.defaults.backend.clone(),
                BackendConfig::Embedded(Default::default()),
            );
        }
        self
    }

    /// Checks cross-references and limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(level) = &self.log_level {
            crate::telemetry::log_filter(level).map_err(|e| invalid("log_level", e))?;
        }
        let d = &self.defaults;
        check_ttls("defaults", d.ttl, d.max_ttl)?;
        if d.backend_timeout.is_zero() {
            return Err(invalid("defaults.backend_timeout", "must be at least 1s"));
        }
        let known = |name: &str| self.backends.is_empty() || self.backends.contains_key(name);
        if !known(&d.backend) {
            return Err(invalid(
                "defaults.backend",
                format!("no backend named {:?} in [backends]", d.backend),
            ));
        }
        for (name, backend) in &self.backends {
            backend
                .validate()
                .map_err(|e| invalid(format!("backends.{name}"), e))?;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return Err(invalid(
                    format!("backends.{name}"),
                    "backend names use letters, digits, '-' and '_'",
                ));
            }
        }
        for (i, rule) in self.resources.iter().enumerate() {
            let key = format!("resources[{i}]");
            if let Some(backend) = &rule.backend
                && !known(backend)
            {
                return Err(invalid(
                    format!("{key}.backend"),
                    format!("no backend named {backend:?} in [backends]"),
                ));
            }
            let ttl = rule.ttl.unwrap_or(d.ttl);
            let max = rule.max_ttl.unwrap_or(d.max_ttl.max(ttl));
            check_ttls(&key, ttl, max)?;
        }
        for (i, token) in self.auth.tokens.iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            let valid = token.sha256.len() == 64
                && token
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !valid {
                return Err(invalid(
                    format!("{key}.sha256"),
                    "must be 64 lowercase hex digits (stormlockd hash-token)",
                ));
            }
            if token.principal.is_empty() || token.principal.chars().any(char::is_control) {
                return Err(invalid(
                    format!("{key}.principal"),
                    "must be a non-empty name without control characters",
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, freeze) in self.freezes.iter().enumerate() {
            if !names.insert(freeze.name()) {
                return Err(invalid(
                    format!("freezes[{i}].name"),
                    format!("{:?} names an earlier freeze too", freeze.name()),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("tls.cert", Some(&tls.cert)),
                ("tls.key", Some(&tls.key)),
                ("tls.client_ca", tls.client_ca.as_ref()),
            ] {
                if let Some(path) = path
                    && path.as_os_str().is_empty()
                {
                    return Err(invalid(key, "must be a file path"));
                }
            }
        }
        Ok(())
    }
}

fn check_ttls(key: &str, ttl: Duration, max: Duration) -> Result<(), ConfigError> {
    if ttl < Duration::from_secs(1) {
        return Err(invalid(format!("{key}.ttl"), "must be at least 1s"));
    }
    if max < ttl {
        return Err(invalid(
            format!("{key}.max_ttl"),
            format!(
                "{} is less than the ttl {}",
                crate::duration::format_duration(max),
                crate::duration::format_duration(ttl)
            ),
        ));
    }
    Ok(())
}

/// Replaces `${NAME}` in every string of `value` by the environment
/// variable's value; `$${` stands for a literal `${`.
fn expand_env(value: &mut toml::Value, key: &str) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) => *s = expand_str(s, key)?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{key}[{i}]"))?;
            }
        }
        toml::Value::Table(table) => {
            for (name, item) in table.iter_mut() {
                let child = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                expand_env(item, &child)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(text: &str, key: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| invalid(key, "unterminated ${ in value"))?;
            let name = &after[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(invalid(
                    key,
                    format!("invalid environment variable name {name:?}"),
                ));
            }
            let value = std::env::var(name).map_err(|_| {
                invalid(
                    key,
                    format!("references environment variable {name}, which is not set"),
                )
            })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "test.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn empty_config_is_the_embedded_default() {
        let config = parse("").expect("empty").with_implicit_backend();
        assert_eq!(config.defaults.ttl, Duration::from_secs(3600));
        assert_eq!(config.defaults.max_ttl, Duration::from_secs(30 * 86400));
        assert!(matches!(
            config.backends.get("main"),
            Some(BackendConfig::Embedded(_))
        ));
    }

    #[test]
    fn full_config() {
        let config = parse(
            r#"
            listen = "0.0.0.0:7466"
            [tls]
            cert = "s.crt"
            key = "s.key"
            client_ca = "ca.crt"
            [auth]
            admins = ["ops"]
            identity = "uri_san"
            [defaults]
            ttl = "30 min"
            max_ttl = "1d"
            backend = "main"
            [backends.main]
            type = "memory"
            [backends.disk]
            type = "embedded"
            path = "x.redb"
            [[resources]]
            match = "prod/*"
            backend = "disk"
            ttl = "4h"
            "#,
        )
        .expect("valid");
        assert_eq!(config.defaults.ttl, Duration::from_secs(1800));
        assert_eq!(config.auth.identity, IdentitySource::UriSan);
        assert_eq!(config.resources[0].ttl, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(config.backends.len(), 2);
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let err = parse("listen = \"0.0.0.0:7466\"\nbogus = 1\n").expect_err("unknown key");
        assert!(err.contains("bogus") && err.contains("line 2"), "{err}");
        let err = parse("[defaults]\nttl = 5\n").expect_err("wrong type");
        assert!(err.contains("ttl") && err.contains("line 2"), "{err}");
        let err = parse("[defaults]\nttl = \"5 fortnights\"\n").expect_err("bad duration");
        assert!(err.contains("fortnights"), "{err}");
        let err = parse("listen = [").expect_err("syntax");
        assert!(err.contains("line 1"), "{err}");
        let err =
            parse("[backends.main]\ntype = \"memory\"\nurl = \"x\"\n").expect_err("backend key");
        assert!(err.contains("url"), "{err}");
        let err = parse("[backends.main]\ntype = \"cassandra\"\n").expect_err("backend type");
        assert!(err.contains("cassandra"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let err = parse("[defaults]\nbackend = \"nope\"\n[backends.main]\ntype = \"memory\"\n")
            .expect_err("unknown backend");
        assert!(
            err.contains("defaults.backend") && err.contains("nope"),
            "{err}"
        );
        let err = parse("[defaults]\nttl = \"2d\"\nmax_ttl = \"1d\"\n").expect_err("ttl > max");
        assert!(err.contains("defaults.max_ttl"), "{err}");
        let err = parse("[[resources]]\nmatch = \"a/[\"\n").expect_err("bad glob");
        assert!(err.contains("line 2") && err.contains("match"), "{err}");
        let err = parse(
            "[[resources]]\nmatch = \"a/*\"\nbackend = \"x\"\n[backends.main]\ntype = \"memory\"\n",
        )
        .expect_err("unknown rule backend");
        assert!(err.contains("resources[0].backend"), "{err}");
        let err = parse("[defaults]\nttl = \"0s\"\n").expect_err("zero ttl");
        assert!(err.contains("defaults.ttl"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file =
            parse("listen = \"127.0.0.1:9000\"\ndata_dir = \"/srv/s\"\nshutdown_grace = \"3s\"\n")
                .expect("valid");
        let config = file.clone().layer(&Overrides::default());
        assert_eq!(config.listen(), "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(config.data_dir(), PathBuf::from("/srv/s"));
        assert_eq!(config.shutdown_grace, Some(Duration::from_secs(3)));
        assert!(config.backends.contains_key("main"), "implicit backend");
        let config = file.layer(&Overrides {
            listen: Some("127.0.0.1:9001".parse().expect("addr")),
            data_dir: Some(PathBuf::from("/tmp/d")),
            insecure: true,
            ..Overrides::default()
        });
        assert_eq!(config.listen(), "127.0.0.1:9001".parse().expect("addr"));
        assert_eq!(config.data_dir(), PathBuf::from("/tmp/d"));
        assert!(config.insecure);
        assert_eq!(config.shutdown_grace, Some(Duration::from_secs(3)));
        let config = Config::default().layer(&Overrides::default());
        assert_eq!(config.listen(), DEFAULT_LISTEN);
        assert_eq!(config.data_dir(), crate::paths::default_data_dir());
    }

    #[test]
    fn environment_references() {
        // Setting process env is unsafe in edition 2024, so this uses a
        // variable every environment has.
        let home = std::env::var("PATH").expect("PATH is set");
        assert_eq!(
            expand_str("a${PATH}b", "k").expect("expand"),
            format!("a{home}b")
        );
        assert_eq!(expand_str("$${PATH}", "k").expect("literal"), "${PATH}");
        assert_eq!(expand_str("cost $5", "k").expect("plain $"), "cost $5");
        let err = expand_str("${STORMLOCK_SURELY_UNSET_VARIABLE}", "backends.main.url")
            .expect_err("unset")
            .to_string();
        assert!(
            err.contains("backends.main.url") && err.contains("not set"),
            "{err}"
        );
        assert!(expand_str("${oops", "k").is_err());
        assert!(expand_str("${a-b}", "k").is_err());
    }
}
