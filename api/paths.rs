//! Where the daemon keeps its state by default, shared with the CLI so that a
//! loopback CLI finds the daemon's development certificates without flags.

use std::path::{Path, PathBuf};

/// Default gRPC port: 7466 (7233, the example in early designs, is Temporal's).
pub const DEFAULT_PORT: u16 = 7466;

/// The data directory: `$STORMLOCK_DATA_DIR`, else `$XDG_STATE_HOME/stormlock`,
/// else `~/.local/state/stormlock`, else `./stormlock-state`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("STORMLOCK_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(state) = non_empty_env("XDG_STATE_HOME") {
        return Path::new(&state).join("stormlock");
    }
    match non_empty_env("HOME") {
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
/// certificate.
pub fn local_principal() -> String {
    let user = non_empty_env("USER")
        .or_else(|| non_empty_env("LOGNAME"))
        .unwrap_or_else(|| "operator".to_string());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| non_empty_env("HOSTNAME"))
        .unwrap_or_else(|| "localhost".to_string());
    format!("{user}@{host}")
}
