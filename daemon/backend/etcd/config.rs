//! The `[backends.NAME]` table of `type = "etcd"` and its checks, which run
//! when the configuration is parsed and again when connecting.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::backend::{check_timeout, redact_url, url::split_scheme};

/// `[backends.NAME]` with `type = "etcd"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members: `http://host:2379`, or
    /// `https://host:2379` for TLS (then `ca_file` is required).
    pub endpoints: Vec<String>,
    /// User for etcd authentication; requires `password`.
    pub username: Option<String>,
    /// Password of `username`.
    pub password: Option<String>,
    /// PEM file with the certificate authorities that signed the members'
    /// certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; requires `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Prepended to every key this backend writes; must end with `/`.
    /// Default `/stormlock/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long to wait for a connection (and the start-up check) before
    /// giving up, and for an answer to a keep-alive ping before a connection
    /// is considered dead. Default `2s`.
    #[serde(
        default = "crate::backend::default_connect_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// Migration mode (default false): a lock Python stormlock 0.4.1 holds
    /// on the same etcd (keys `{python_prefix}R/id`, `/p`, `/c`) counts as
    /// held, and every lease this backend grants is also written in that
    /// format, so that both tools exclude each other. See MIGRATING.md.
    #[serde(default)]
    pub python_stormlock: bool,
    /// Python stormlock's `prefix` setting, with `python_stormlock = true`:
    /// prepended to the resource name in Python's keys. Default `/`.
    pub python_prefix: Option<String>,
}

// By hand, because of the password (and any in an endpoint URL).
impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints_shown())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("python_stormlock", &self.python_stormlock)
            .field("python_prefix", &self.python_prefix)
            .finish()
    }
}

fn default_prefix() -> String {
    "/stormlock/".to_string()
}

/// Python stormlock's `prefix` when `python_prefix` is not set (its own
/// default).
pub const DEFAULT_PYTHON_PREFIX: &str = "/";

impl EtcdConfig {
    /// Checks every key without connecting; the message starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        check_prefix(&self.prefix)?;
        self.python_prefix()?;
        check_timeout("connect_timeout", self.connect_timeout)?;
        let https = self.https()?;
        match (&self.username, &self.password) {
            (Some(_), None) => return Err("password: must be set with username".to_string()),
            (None, Some(_)) => return Err("username: must be set with password".to_string()),
            _ => {}
        }
        let files = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        if !https {
            if let Some((key, _)) = files.iter().find(|(_, file)| file.is_some()) {
                return Err(format!("{key}: only used with https:// endpoints"));
            }
            return Ok(());
        }
        if self.ca_file.is_none() {
            return Err(
                "ca_file: required with https:// endpoints (the CA that signed the \
                        members' certificates)"
                    .to_string(),
            );
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err("key_file: must be set with cert_file".to_string()),
            (None, Some(_)) => Err("cert_file: must be set with key_file".to_string()),
            _ => Ok(()),
        }
    }

    /// Whether the endpoints use TLS: all `https://`, or all `http://`.
    pub(super) fn https(&self) -> Result<bool, String> {
        if self.endpoints.is_empty() {
            return Err(
                "endpoints: must list at least one URL, e.g. [\"http://127.0.0.1:2379\"]"
                    .to_string(),
            );
        }
        let mut https = None;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let key = format!("endpoints[{i}]");
            let (scheme, host) = split_scheme(&key, endpoint, &["http", "https"])?;
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(format!("{key}: {:?} has no host", redact_url(endpoint)));
            }
            let this = scheme == "https";
            if https.is_some_and(|h| h != this) {
                return Err("endpoints: must be all http:// or all https://".to_string());
            }
            https = Some(this);
        }
        Ok(https.unwrap_or(false))
    }

    /// The prefix of Python stormlock's keys when `python_stormlock = true`,
    /// validated; `None` when the mode is off. Python takes any prefix (even
    /// none), so only what no key should hold is refused.
    pub(super) fn python_prefix(&self) -> Result<Option<&str>, String> {
        if !self.python_stormlock {
            if self.python_prefix.is_some() {
                return Err("python_prefix: only used with python_stormlock = true".to_string());
            }
            return Ok(None);
        }
        let prefix = self
            .python_prefix
            .as_deref()
            .unwrap_or(DEFAULT_PYTHON_PREFIX);
        if prefix.len() > 256 || prefix.chars().any(char::is_control) {
            return Err(format!(
                "python_prefix: {prefix:?} must be at most 256 bytes without control characters \
                 (Python stormlock's `prefix`, default \"/\")"
            ));
        }
        // Python's keys would then be this backend's own for every resource.
        for own in ["lock/", "evicted/", "books/"] {
            if prefix.starts_with(&format!("{}{own}", self.prefix)) {
                return Err(format!(
                    "python_prefix: {prefix:?} lies under this backend's own keys ({}{own})",
                    self.prefix
                ));
            }
        }
        Ok(Some(prefix))
    }

    /// The endpoints as errors and logs may show them.
    pub(super) fn endpoints_shown(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| redact_url(e)).collect()
    }
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.ends_with('/') || prefix.len() > 256 {
        return Err(format!(
            "prefix: {prefix:?} must end with \"/\" and be at most 256 bytes (default \"/stormlock/\")"
        ));
    }
    if prefix.chars().any(char::is_control) {
        return Err(format!("prefix: {prefix:?} contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> EtcdConfig {
        toml::from_str(&format!("endpoints = [\"http://127.0.0.1:2379\"]\n{extra}")).expect("parse")
    }

    fn refused(toml: &str) -> String {
        let config: EtcdConfig = toml::from_str(toml).expect("parse");
        config.validate().err().unwrap_or_default()
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let c = config("");
        assert_eq!(c.prefix, "/stormlock/");
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.validate(), Ok(()));
        assert!(
            toml::from_str::<EtcdConfig>("endpoints = []\nendpoint = \"x\"").is_err(),
            "unknown key"
        );
    }

    #[test]
    fn bad_settings_name_their_key() {
        let http = "endpoints = [\"http://h:2379\"]\n";
        let https = "endpoints = [\"https://h:2379\"]\nca_file = \"/ca.pem\"\n";
        for (toml, key) in [
            (format!("{http}prefix = \"/no-slash\""), "prefix"),
            (format!("{http}prefix = \"/a\\n/\""), "prefix"),
            (format!("{http}connect_timeout = \"0s\""), "connect_timeout"),
            (format!("{http}username = \"u\""), "password"),
            (format!("{http}password = \"p\""), "username"),
            (format!("{http}ca_file = \"/ca.pem\""), "ca_file"),
            (format!("{http}cert_file = \"/c.pem\""), "cert_file"),
            ("endpoints = []".to_string(), "endpoints"),
            (
                "endpoints = [\"127.0.0.1:2379\"]".to_string(),
                "endpoints[0]",
            ),
            ("endpoints = [\"http://\"]".to_string(), "endpoints[0]"),
            (
                "endpoints = [\"http://a:2379\", \"https://b:2379\"]".to_string(),
                "endpoints",
            ),
            ("endpoints = [\"https://h:2379\"]".to_string(), "ca_file"),
            (format!("{https}cert_file = \"/c.pem\""), "key_file"),
            (format!("{https}key_file = \"/k.pem\""), "cert_file"),
        ] {
            let err = refused(&toml);
            assert!(err.starts_with(&format!("{key}: ")), "{toml}: {err:?}");
        }
        let mutual = format!("{https}cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"");
        assert_eq!(refused(&mutual), "");
    }

    #[test]
    fn python_settings() {
        let c = config("");
        assert!(!c.python_stormlock);
        assert_eq!(c.python_prefix(), Ok(None));
        let c = config("python_stormlock = true");
        assert_eq!(c.python_prefix(), Ok(Some("/")));
        let c = config("python_stormlock = true\npython_prefix = \"locks-\"");
        assert_eq!(c.python_prefix(), Ok(Some("locks-")));
        assert_eq!(c.validate(), Ok(()));
        let c = config("python_stormlock = true\npython_prefix = \"\"");
        assert_eq!(
            c.python_prefix(),
            Ok(Some("")),
            "Python's prefix may be empty"
        );
        for extra in [
            "python_prefix = \"/\"",
            "python_stormlock = true\npython_prefix = \"/a\\n\"",
            "python_stormlock = true\npython_prefix = \"/stormlock/lock/\"",
            "prefix = \"/x/\"\npython_stormlock = true\npython_prefix = \"/x/evicted/p\"",
            "python_stormlock = true\npython_prefix = \"/stormlock/books/\"",
        ] {
            let err = config(extra).validate().err().unwrap_or_default();
            assert!(err.starts_with("python_prefix: "), "{extra}: {err:?}");
        }
        assert!(toml::from_str::<EtcdConfig>("endpoints = []\npython_stormlock = 1").is_err());
    }

    #[test]
    fn secrets_never_show() {
        let c = config("username = \"u\"\npassword = \"hunter2\"");
        assert!(!format!("{c:?}").contains("hunter2"));
        let c: EtcdConfig =
            toml::from_str("endpoints = [\"http://u:hunter2@h:2379\"]").expect("parse");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
