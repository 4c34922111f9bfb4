//! Where the daemon keeps its state by default, shared with the CLI so that a
//! loopback CLI finds the daemon's development certificates without flags.

use std::path::{Path, PathBuf};

/// Default gRPC port: 7466 (7233, the example in early designs, is Temporal's).
pub const DEFAULT_PORT: u16 = 7466;

/// The daemon's state directory when nothing names one:
/// `$XDG_STATE_HOME/stormlock`, else `~/.local/state/stormlock`, else
/// `./stormlock-state`. The daemon's `--data-dir` (`STORMLOCKD_DATA_DIR`)
/// and the CLI's `STORMLOCK_DATA_DIR` (where to find a daemon's development
/// certificates) override it, each in its own program.
pub fn default_data_dir() -> PathBuf {
    default_data_dir_with(non_empty_env)
}

/// [`default_data_dir`] with environment variables read through `var`.
pub fn default_data_dir_with(var: impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(state) = var("XDG_STATE_HOME") {
        return Path::new(&state).join("stormlock");
    }
    match var("HOME") {
        Some(home) => Path::new(&home).join(".local/state/stormlock"),
        None => PathBuf::from("stormlock-state"),
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The development PKI a daemon without TLS configuration creates under
/// `<data-dir>/tls/`: a local CA, a server certificate for loopback and a
/// client certificate for the local operator.
#[derive(Debug, Clone)]
pub struct DevTls {
    /// The directory holding the files.
    pub dir: PathBuf,
}

impl DevTls {
    /// The development PKI of `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("tls"),
        }
    }
    /// CA certificate (PEM), trusted by both sides.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// CA private key (PEM), kept to issue the other two.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// Server certificate (PEM) for `localhost`, `127.0.0.1` and `::1`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    /// Server private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// Client certificate (PEM) of the local operator, an administrator.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.crt")
    }
    /// Client private key (PEM).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}

/// The local operator's default principal, `user@host` as in Python
/// stormlock: the CLI's default, and the identity of the development client
/// certificate, so the two always agree. The user is the first of
/// `$LOGNAME`, `$USER`, `$LNAME`, `$USERNAME` (Python's `getpass.getuser`
/// order), else the account's name.
pub fn local_principal() -> String {
    local_principal_with(non_empty_env)
}

/// [`local_principal`] with environment variables read through `var`.
pub fn local_principal_with(var: impl Fn(&str) -> Option<String>) -> String {
    let user = ["LOGNAME", "USER", "LNAME", "USERNAME"]
        .iter()
        .find_map(|name| var(name))
        .or_else(|| whoami::username().ok())
        .unwrap_or_else(|| "operator".to_string());
    let host = whoami::hostname()
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_dir_follows_xdg_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            default_data_dir_with(env(&[("XDG_STATE_HOME", "/x"), ("HOME", "/h")])),
            PathBuf::from("/x/stormlock")
        );
        assert_eq!(
            default_data_dir_with(env(&[("HOME", "/h")])),
            PathBuf::from("/h/.local/state/stormlock")
        );
        assert_eq!(
            default_data_dir_with(env(&[])),
            PathBuf::from("stormlock-state")
        );
        // A variable meant for the CLI never moves the daemon's state.
        assert_eq!(
            default_data_dir_with(env(&[("STORMLOCK_DATA_DIR", "/elsewhere"), ("HOME", "/h")])),
            PathBuf::from("/h/.local/state/stormlock")
        );
    }

    #[test]
    fn the_principal_takes_the_first_user_variable() {
        let principal = local_principal_with(|name| match name {
            "USER" => Some("bob".to_string()),
            "USERNAME" => Some("carol".to_string()),
            _ => None,
        });
        assert!(principal.starts_with("bob@"), "{principal}");
        let principal = local_principal_with(|name| (name == "LOGNAME").then(|| "al".to_string()));
        assert!(principal.starts_with("al@"), "{principal}");
    }
}
