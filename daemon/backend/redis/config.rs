//! The `[backends.NAME]` table of `type = "redis"` and its checks, which run
//! when the configuration is parsed and again when connecting.

use std::path::PathBuf;
use std::time::Duration;

use redis::IntoConnectionInfo;
use serde::Deserialize;

use crate::backend::{check_timeout, redact_url, url::split_scheme};

/// `[backends.NAME]` with `type = "redis"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host[:port][/db]`, or `rediss://…` for TLS.
    pub url: String,
    /// Prepended to every key this backend writes, so that several
    /// deployments (or other applications) can share one Redis. Default
    /// `stormlock:`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long to wait for a connection (TCP, TLS, AUTH) and for a reply on
    /// an open connection before giving up on it. Default `2s`.
    #[serde(
        default = "crate::backend::default_connect_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// PEM file with the certificate authorities to trust for `rediss://`,
    /// for a server with a private CA; without it the public web roots are
    /// trusted.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for a server that requires one
    /// (`tls-auth-clients yes`), with `rediss://`; requires `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Migration mode (default false): a lock Python stormlock 0.4.1 holds
    /// on the same Redis (a hash at the bare resource name) counts as held,
    /// and every lease this backend grants is also written in that format,
    /// so that both tools exclude each other. See MIGRATING.md.
    #[serde(default)]
    pub python_stormlock: bool,
}

// By hand, because the URL may carry a password.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("python_stormlock", &self.python_stormlock)
            .finish()
    }
}

fn default_prefix() -> String {
    "stormlock:".to_string()
}

impl RedisConfig {
    /// Checks every key without connecting; the message starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        check_prefix(&self.prefix)?;
        check_timeout("connect_timeout", self.connect_timeout)?;
        let tls = self.tls()?;
        let files = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        if !tls && let Some((key, _)) = files.iter().find(|(_, file)| file.is_some()) {
            return Err(format!("{key}: only used with a rediss:// url"));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err("key_file: must be set with cert_file".to_string()),
            (None, Some(_)) => return Err("cert_file: must be set with key_file".to_string()),
            _ => {}
        }
        // The client's own parser, which opens nothing; its messages never
        // quote the URL.
        self.url
            .as_str()
            .into_connection_info()
            .map(drop)
            .map_err(|e| format!("url: not a valid Redis URL: {e}"))
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub(super) fn tls(&self) -> Result<bool, String> {
        let (scheme, _) = split_scheme("url", &self.url, &["redis", "rediss"])?;
        Ok(scheme == "rediss")
    }
}

/// Characters refused in a key prefix: controls and whitespace confuse
/// operators' tools, and glob metacharacters would turn `SCAN MATCH prefix*`
/// (the usual way to inspect a prefix) into something else.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 128 {
        return Err("prefix: must be 1 to 128 bytes long (default \"stormlock:\")".to_string());
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || "*?[]\\{}".contains(*c))
    {
        return Err(format!(
            "prefix: {prefix:?} contains {bad:?}; control characters, whitespace and *?[]\\{{}} are not allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> RedisConfig {
        toml::from_str(toml).expect("parse")
    }

    #[test]
    fn password_never_shows() {
        let config = config("url = \"redis://u:hunter2@h/\"");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("stormlock:").is_ok());
        assert!(check_prefix("team-a/locks:").is_ok());
        for bad in ["", "a*", "a?", "a[b]", "a\\", "a b", "a\nb", "{tag}"] {
            let err = check_prefix(bad).err().unwrap_or_default();
            assert!(err.starts_with("prefix: "), "{bad:?}: {err}");
        }
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let c = config(r#"url = "redis://h/""#);
        assert_eq!(c.prefix, "stormlock:");
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert!(!c.python_stormlock);
        assert_eq!(c.validate(), Ok(()));
        let c = config("url = \"redis://h/\"\npython_stormlock = true");
        assert!(c.python_stormlock);
        assert!(
            toml::from_str::<RedisConfig>("url = \"redis://h/\"\npython_stormlock = 1").is_err()
        );
        let c = config("url = \"redis://h/\"\nconnect_timeout = \"5s\"");
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert!(toml::from_str::<RedisConfig>("url = \"redis://h/\"\npool = 3").is_err());
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (toml, key) in [
            ("url = \"http://h/\"", "url"),
            ("url = \"h:6379\"", "url"),
            ("url = \"redis://h/notanumber\"", "url"),
            ("url = \"redis://h/\"\nprefix = \"a b\"", "prefix"),
            (
                "url = \"redis://h/\"\nconnect_timeout = \"0s\"",
                "connect_timeout",
            ),
            ("url = \"redis://h/\"\nca_file = \"ca.pem\"", "ca_file"),
            (
                "url = \"redis://h/\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"",
                "cert_file",
            ),
            ("url = \"redis://h/\"\nkey_file = \"k.pem\"", "key_file"),
            ("url = \"rediss://h/\"\ncert_file = \"c.pem\"", "key_file"),
            ("url = \"rediss://h/\"\nkey_file = \"k.pem\"", "cert_file"),
        ] {
            let err = config(toml).validate().err().unwrap_or_default();
            assert!(err.starts_with(&format!("{key}: ")), "{toml}: {err}");
        }
        let tls = config("url = \"rediss://:pw@h:6380/0\"\nca_file = \"ca.pem\"");
        assert_eq!(tls.validate(), Ok(()));
        // A client certificate, with or without a private CA.
        for ca in ["", "ca_file = \"ca.pem\"\n"] {
            let mutual = config(&format!(
                "url = \"rediss://h:6380/0\"\n{ca}cert_file = \"c.pem\"\nkey_file = \"k.pem\""
            ));
            assert_eq!(mutual.validate(), Ok(()));
        }
    }
}
