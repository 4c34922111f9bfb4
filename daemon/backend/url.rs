//! Connection URLs as every network adapter handles them: one redactor, so
//! that no adapter shows a password the others would hide, and one scheme
//! check, so that each adapter refuses a wrong scheme with the same words.
//!
//! Configurations, errors and logs show URLs to operators; URLs carry
//! credentials (`redis://:pw@host`, `postgres://user:pw@host/db`,
//! `?password=` in libpq style). Nothing here parses a URL strictly: the
//! engines' own clients do that, and the redactor must also cope with what
//! they would refuse.

/// The URL with its secrets replaced by `***`, safe for `Debug` output,
/// errors and logs.
///
/// - `scheme://user:password@host…` keeps the user: `scheme://user:***@host…`;
///   a user name alone (`mysql://root@db`) is not a secret and stays.
/// - An `@` is taken as the end of the user information wherever it is (the
///   last one counts), so a password holding `@`, `/` or `?` unescaped never
///   shows. When what precedes it is not a plausible user (an `@` in the
///   path or query), all of it becomes `***`.
/// - Query parameters that hold secrets (names containing `pass`, `pwd`,
///   `secret` or `token`, such as libpq's `password`) become `name=***`.
/// - Input that is not a URL is treated the same way, scheme or not:
///   `u:pw@host` becomes `u:***@host`, and text without `@` or query comes
///   back as it was. Nothing panics.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => (Some(scheme), rest),
        _ => (None, url),
    };
    let (userinfo, location) = match rest.rsplit_once('@') {
        Some((userinfo, location)) => (Some(userinfo), location),
        None => (None, rest),
    };
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(userinfo) = userinfo {
        let user = userinfo.split(':').next().unwrap_or_default();
        if user.contains(['/', '?', '#']) {
            out.push_str("***");
        } else if userinfo.contains(':') {
            out.push_str(user);
            out.push_str(":***");
        } else {
            out.push_str(user);
        }
        out.push('@');
    }
    match location.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&redact_query(query));
        }
        None => out.push_str(location),
    }
    out
}

/// A URL scheme as RFC 3986 spells it: a letter, then letters, digits, `+`,
/// `-` or `.`. Anything else before `://` is not a scheme, and may be a
/// secret.
fn is_scheme(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `query` with the values of secret-holding parameters replaced.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token"]
        .iter()
        .any(|word| name.contains(word))
}

/// Which of `schemes` (written without `://`) `url` starts with, and the rest
/// of it. The error names `key` and the schemes accepted, and never the URL
/// itself: a malformed URL may hold a password anywhere.
pub(crate) fn split_scheme<'a>(
    key: &str,
    url: &'a str,
    schemes: &[&'static str],
) -> Result<(&'static str, &'a str), String> {
    schemes
        .iter()
        .find_map(|scheme| {
            url.strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .map(|rest| (*scheme, rest))
        })
        .ok_or_else(|| {
            let accepted: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
            format!("{key}: must start with {}", accepted.join(" or "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_userinfo_are_hidden() {
        for (url, shown) in [
            (
                "redis://user:secret@host:6379/0",
                "redis://user:***@host:6379/0",
            ),
            ("rediss://:secret@host/", "rediss://:***@host/"),
            (
                "postgres://app:s3cr%40t@db:5432/locks?sslmode=require",
                "postgres://app:***@db:5432/locks?sslmode=require",
            ),
            ("mysql://u:secret@h", "mysql://u:***@h"),
            ("http://u:secret@etcd:2379", "http://u:***@etcd:2379"),
            ("https://u:@h", "https://u:***@h"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for url in [
            "redis://host:6379",
            "rediss://host:6380/2",
            "mysql://root@db/x",
            "mysql://db/x",
            "postgres://h/db?sslmode=require&application_name=ops",
            "http://127.0.0.1:2379",
            "https://etcd-0:2379",
            "",
            "not a url",
            "localhost:6379",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn awkward_passwords_never_show() {
        for (url, secret) in [
            ("redis://:p@ss@h/0", "p@ss"),
            ("redis://u:pa/ss@h/0", "pa/ss"),
            ("redis://u:pa?ss@h/0", "pa?ss"),
            ("redis://u:pa#ss@h/0", "pa#ss"),
            ("postgres://h/db?user=u&password=hunter2", "hunter2"),
            ("postgres://h/db?sslpassword=hunter2", "hunter2"),
            ("redis+unix:///tmp/redis.sock?pass=hunter2", "hunter2"),
            ("http://h/?Token=hunter2&a=b", "hunter2"),
            (
                "postgres://h/db?password=hunter2&application_name=a@b",
                "hunter2",
            ),
            // Not URLs, still credentials.
            ("u:hunter2@host", "hunter2"),
            ("u:hunter2@h://x", "hunter2"),
            ("1x://u:hunter2@h", "hunter2"),
            ("://:hunter2@", "hunter2"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
        }
        assert_eq!(redact_url("u:hunter2@host"), "u:***@host");
        assert_eq!(redact_url("redis://:p@ss@h/0"), "redis://:***@h/0");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=x"),
            "postgres://h/db?user=u&password=***"
        );
    }

    #[test]
    fn odd_input_does_not_panic() {
        for url in ["@", "@@", "://", "a://@", "ü:ö@ä?p=ß&pass", "?&=", "x://?"] {
            let _ = redact_url(url);
        }
    }

    #[test]
    fn schemes_are_split() {
        let schemes = ["redis", "rediss"];
        assert_eq!(
            split_scheme("url", "rediss://h:6380", &schemes),
            Ok(("rediss", "h:6380"))
        );
        assert_eq!(
            split_scheme("url", "redis://h", &schemes),
            Ok(("redis", "h"))
        );
        let err = split_scheme("url", "http://u:hunter2@h", &schemes).expect_err("http");
        assert_eq!(err, "url: must start with redis:// or rediss://");
        assert!(split_scheme("url", "redis:/h", &schemes).is_err());
    }
}
