//! The `[backends.NAME]` table of `type = "dynamodb"` and its checks, which
//! run when the configuration is parsed and again when connecting.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::backend::{DEFAULT_CONNECT_TIMEOUT, check_timeout, redact_url, url::split_scheme};

/// `[backends.NAME]` with `type = "dynamodb"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamodbConfig {
    /// Name of the table holding the leases (3–255 characters of
    /// `A-Z a-z 0-9 _ - .`). Default: `stormlock`.
    #[serde(default = "default_table")]
    pub table: String,
    /// AWS region, such as `eu-west-1`. Default: the AWS chain (`AWS_REGION`,
    /// the profile, instance metadata).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL replacing AWS's, for local emulators such as moto or
    /// DynamoDB Local (`http://127.0.0.1:8000`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// PEM file with the certificate authorities that sign an `https://`
    /// `endpoint`'s certificate (a DynamoDB-compatible service or a proxy
    /// behind a private CA). It replaces the system roots for DynamoDB
    /// requests only; credentials (STS, SSO, instance metadata) are fetched
    /// as before. Only with an `https://` `endpoint`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Create the table (on-demand billing) when it is missing, wait until it
    /// is usable, and enable TTL cleanup on `cleanup_at`. Default: true.
    /// Without it the table must exist with the layout described in the
    /// module documentation.
    #[serde(default = "default_create_table")]
    pub create_table: bool,
    /// How long to wait for a TCP/TLS connection to DynamoDB. Default: `2s`.
    #[serde(
        default = "crate::backend::default_connect_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub connect_timeout: Duration,
    /// How long one DynamoDB request may take, retries included, before the
    /// backend reports itself unavailable. A lock operation makes one to
    /// three requests (more when it loses a race). Default: `2s`.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub timeout: Duration,
    /// How far this daemon's clock may be from DynamoDB's (read from the
    /// `Date` of its responses) before the backend stops granting: expiry is
    /// judged on the daemons' clocks. Default: `1s`.
    #[serde(
        default = "default_max_clock_skew",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub max_clock_skew: Duration,
    /// Migration mode (default false): a lock Python stormlock 0.4.1 holds
    /// in `python_table` counts as held, and every lease this backend grants
    /// is also written there, so that both tools exclude each other. See
    /// MIGRATING.md.
    #[serde(default)]
    pub python_stormlock: bool,
    /// Python stormlock's table (its `table` setting), with
    /// `python_stormlock = true`: another table than `table`, with partition
    /// key `resource` only. Default `stormlock`.
    #[serde(default)]
    pub python_table: Option<String>,
}

// By hand, because an endpoint URL may carry credentials.
impl std::fmt::Debug for DynamodbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamodbConfig")
            .field("table", &self.table)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("ca_file", &self.ca_file)
            .field("create_table", &self.create_table)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("max_clock_skew", &self.max_clock_skew)
            .field("python_stormlock", &self.python_stormlock)
            .field("python_table", &self.python_table)
            .finish()
    }
}

fn default_table() -> String {
    "stormlock".to_string()
}

fn default_create_table() -> bool {
    true
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_max_clock_skew() -> Duration {
    Duration::from_secs(1)
}

impl Default for DynamodbConfig {
    fn default() -> Self {
        Self {
            table: default_table(),
            region: None,
            endpoint: None,
            ca_file: None,
            create_table: default_create_table(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: default_timeout(),
            max_clock_skew: default_max_clock_skew(),
            python_stormlock: false,
            python_table: None,
        }
    }
}

/// Python stormlock's table when `python_table` is not set (its own
/// default).
pub const DEFAULT_PYTHON_TABLE: &str = "stormlock";

/// Whether `name` is a valid DynamoDB table name.
fn table_name_ok(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl DynamodbConfig {
    /// Checks every key without connecting; the message starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        if !table_name_ok(&self.table) {
            return Err(format!(
                "table: {:?} is not a valid DynamoDB table name: use 3 to 255 characters from A-Z, a-z, 0-9, '_', '-' and '.'",
                self.table
            ));
        }
        if let Some(region) = &self.region {
            let region_ok = !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !region_ok {
                return Err(format!(
                    "region: {region:?} is not an AWS region name (like \"eu-west-1\")"
                ));
            }
        }
        let mut https = false;
        if let Some(endpoint) = &self.endpoint {
            let (scheme, host) = split_scheme("endpoint", endpoint, &["http", "https"])?;
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(format!("endpoint: {:?} has no host", redact_url(endpoint)));
            }
            https = scheme == "https";
        }
        if self.ca_file.is_some() && !https {
            return Err(format!(
                "ca_file: only used with an https:// endpoint ({}): AWS's own endpoints \
                 are verified with the system roots",
                match &self.endpoint {
                    Some(endpoint) => format!("endpoint is {}", redact_url(endpoint)),
                    None => "no endpoint is set".to_string(),
                }
            ));
        }
        self.python_table()?;
        check_timeout("connect_timeout", self.connect_timeout)?;
        check_timeout("timeout", self.timeout)?;
        // The engine's Date has a resolution of one second.
        if self.max_clock_skew < Duration::from_secs(1) {
            return Err(format!(
                "max_clock_skew: {:?} is below what DynamoDB's clock can tell (its Date has whole seconds): use at least 1s",
                self.max_clock_skew
            ));
        }
        Ok(())
    }

    /// Python stormlock's table when `python_stormlock = true`, validated;
    /// `None` when the mode is off.
    pub(super) fn python_table(&self) -> Result<Option<&str>, String> {
        if !self.python_stormlock {
            if self.python_table.is_some() {
                return Err("python_table: only used with python_stormlock = true".to_string());
            }
            return Ok(None);
        }
        let table = self.python_table.as_deref().unwrap_or(DEFAULT_PYTHON_TABLE);
        if !table_name_ok(table) {
            return Err(format!(
                "python_table: {table:?} is not a valid DynamoDB table name: use 3 to 255 \
                 characters from A-Z, a-z, 0-9, '_', '-' and '.'"
            ));
        }
        // Python's items have another key schema than this backend's.
        if table == self.table {
            return Err(format!(
                "python_table: {table:?} is also this backend's table: Python stormlock's table \
                 (partition key resource only) cannot hold this backend's items; set table to \
                 another name (both default to \"stormlock\")"
            ));
        }
        Ok(Some(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> std::result::Result<DynamodbConfig, toml::de::Error> {
        toml::from_str(toml)
    }

    #[test]
    fn defaults() {
        let c = config("").expect("empty config");
        assert_eq!(c.table, "stormlock");
        assert!(c.create_table);
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.max_clock_skew, Duration::from_secs(1));
        assert_eq!(c.validate(), Ok(()));
        let tight = config("max_clock_skew = \"0s\"").expect("parses");
        assert!(
            tight
                .validate()
                .expect_err("too tight")
                .starts_with("max_clock_skew:")
        );
    }

    #[test]
    fn durations_and_unknown_keys() {
        let c = config("timeout = \"5s\"\nconnect_timeout = \"1 seconds\"").expect("durations");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        let err = config("tabel = \"x\"")
            .map(|_| ())
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("tabel"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("table = \"ab\"", "table"),
            ("table = \"has space\"", "table"),
            ("region = \"EU West\"", "region"),
            ("endpoint = \"localhost:8000\"", "endpoint"),
            ("endpoint = \"http://\"", "endpoint"),
            ("timeout = \"0s\"", "timeout"),
            ("connect_timeout = \"0s\"", "connect_timeout"),
            ("ca_file = \"/ca.pem\"", "ca_file"),
            (
                "endpoint = \"http://127.0.0.1:8000\"\nca_file = \"/ca.pem\"",
                "ca_file",
            ),
        ];
        for (toml, key) in cases {
            let err = config(toml).expect(toml).validate().expect_err(toml);
            assert!(err.starts_with(&format!("{key}: ")), "{toml}: {err}");
        }
        let ok = config(
            "table = \"a.b-c_D9\"\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:8000\"",
        )
        .expect("valid");
        assert_eq!(ok.validate(), Ok(()));
        let private_ca =
            config("endpoint = \"https://dynamo.internal:8443\"\nca_file = \"/ca.pem\"")
                .expect("valid");
        assert_eq!(private_ca.validate(), Ok(()));
    }

    #[test]
    fn python_settings() {
        let c = config("").expect("empty config");
        assert!(!c.python_stormlock);
        assert_eq!(c.python_table(), Ok(None));
        let c = config("table = \"stormlock_locks\"\npython_stormlock = true").expect("mode");
        assert_eq!(c.python_table(), Ok(Some("stormlock")));
        assert_eq!(c.validate(), Ok(()));
        let c = config("python_stormlock = true\npython_table = \"py-locks\"").expect("mode");
        assert_eq!(c.python_table(), Ok(Some("py-locks")));
        for toml in [
            "python_table = \"py\"",
            // Both tables default to `stormlock`.
            "python_stormlock = true",
            "table = \"locks\"\npython_stormlock = true\npython_table = \"locks\"",
            "python_stormlock = true\npython_table = \"ab\"",
            "python_stormlock = true\npython_table = \"has space\"",
        ] {
            let err = config(toml).expect(toml).validate().expect_err(toml);
            assert!(err.starts_with("python_table: "), "{toml}: {err}");
        }
        assert!(config("python_stormlock = \"yes\"").is_err());
    }

    #[test]
    fn endpoint_credentials_never_show() {
        let c = config("endpoint = \"http://u:hunter2@h:8000\"").expect("parse");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
