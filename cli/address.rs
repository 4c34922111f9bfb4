//! The daemon's address as operators write it: `host:port`,
//! `https://host:port`, `http://host:port` (plain text, for daemons run with
//! `--insecure`), with IPv6 literals in brackets (`[::1]:7466`). A missing
//! port means the default port.

use std::fmt;
use std::net::IpAddr;

use stormlock_api::paths::DEFAULT_PORT;

/// How to talk to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// TLS (the default, and what `https://` says).
    Tls,
    /// Plain text (`http://`).
    Plain,
}

/// A parsed daemon address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// TLS or plain text.
    pub scheme: Scheme,
    /// Host name or IP literal, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid daemon address {text:?}: {why}")]
pub struct AddressError {
    text: String,
    why: &'static str,
}

impl Address {
    /// Parses an address (see the module documentation).
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let fail = |why| AddressError {
            text: text.to_string(),
            why,
        };
        let trimmed = text.trim();
        let (scheme, rest) = if let Some(rest) = strip_prefix_ignore_case(trimmed, "https://") {
            (Scheme::Tls, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(trimmed, "http://") {
            (Scheme::Plain, rest)
        } else if trimmed.contains("://") {
            return Err(fail("the scheme must be https:// or http://"));
        } else {
            (Scheme::Tls, trimmed)
        };
        // A trailing slash is what people paste from URLs; a path is not.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(fail("expected host:port"));
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(fail("expected host:port, without a path or user"));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (inside, after) = bracketed
                .split_once(']')
                .ok_or_else(|| fail("missing ']' after an IPv6 address"))?;
            if inside.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(fail("not an IPv6 address inside [ ]"));
            }
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| fail("expected ':port' after ']'"))?,
                ),
            };
            (inside, port)
        } else {
            match rest.split_once(':') {
                Some((_, after)) if after.contains(':') => {
                    return Err(fail("write IPv6 addresses in brackets, like [::1]:7466"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(0) | Err(_) => return Err(fail("the port must be a number from 1 to 65535")),
                Ok(port) => port,
            },
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'));
        if !host_ok {
            return Err(fail(
                "the host name is empty or has characters a host name cannot have",
            ));
        }
        Ok(Self {
            scheme,
            host: host.to_string(),
            port,
        })
    }

    /// Whether the host is this machine: `localhost`, 127.0.0.0/8 or `::1`.
    pub fn is_loopback(&self) -> bool {
        let host = self.host.strip_suffix('.').unwrap_or(&self.host);
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether the host is an IP literal rather than a name.
    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// The URI tonic connects to.
    pub fn uri(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Tls => "https",
            Scheme::Plain => "http",
        };
        format!("{scheme}://{}", self.authority())
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Scheme, String, u16) {
        match Address::parse(text) {
            Ok(a) => (a.scheme, a.host, a.port),
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn forms() {
        assert_eq!(
            parsed("127.0.0.1:7466"),
            (Scheme::Tls, "127.0.0.1".into(), 7466)
        );
        assert_eq!(
            parsed("locks.example.com:443"),
            (Scheme::Tls, "locks.example.com".into(), 443)
        );
        assert_eq!(
            parsed("https://locks:9000"),
            (Scheme::Tls, "locks".into(), 9000)
        );
        assert_eq!(
            parsed("HTTPS://locks:9000/"),
            (Scheme::Tls, "locks".into(), 9000)
        );
        assert_eq!(
            parsed("http://127.0.0.1:7466"),
            (Scheme::Plain, "127.0.0.1".into(), 7466)
        );
        assert_eq!(parsed("[::1]:7466"), (Scheme::Tls, "::1".into(), 7466));
        assert_eq!(
            parsed("https://[::1]:8000"),
            (Scheme::Tls, "::1".into(), 8000)
        );
        assert_eq!(
            parsed("http://[fe80::1]"),
            (Scheme::Plain, "fe80::1".into(), DEFAULT_PORT)
        );
        assert_eq!(
            parsed("localhost"),
            (Scheme::Tls, "localhost".into(), DEFAULT_PORT)
        );
    }

    #[test]
    fn uris() {
        let uri = |t: &str| Address::parse(t).map(|a| a.uri()).unwrap_or_default();
        assert_eq!(uri("[::1]:7466"), "https://[::1]:7466");
        assert_eq!(uri("http://a:1"), "http://a:1");
        assert_eq!(uri("b:2"), "https://b:2");
    }

    #[test]
    fn bad_input() {
        for text in [
            "",
            "  ",
            ":7466",
            "host:",
            "host:0",
            "host:65536",
            "host:http",
            "::1",
            "::1:7466",
            "[::1",
            "[::1]7466",
            "[nope]:1",
            "ftp://host:1",
            "grpc://host:1",
            "https://host:1/path",
            "user@host:1",
            "https://",
            "ho st:1",
            "hôst:1",
        ] {
            let err = Address::parse(text);
            assert!(err.is_err(), "{text:?} was accepted: {err:?}");
        }
        let message = Address::parse("::1").map(|_| ()).unwrap_err().to_string();
        assert!(message.contains("brackets"), "{message}");
    }

    #[test]
    fn loopback() {
        let lo = |t: &str| Address::parse(t).is_ok_and(|a| a.is_loopback());
        assert!(lo("127.0.0.1:1"));
        assert!(lo("127.5.6.7:1"));
        assert!(lo("[::1]:1"));
        assert!(lo("localhost:1"));
        assert!(lo("LocalHost.:1"));
        assert!(!lo("10.0.0.1:1"));
        assert!(!lo("localhost.example.com:1"));
        assert!(!lo("[::2]:1"));
    }
}
