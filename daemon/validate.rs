//! Validation of request fields: every rule in one place, every refusal an
//! `INVALID_ARGUMENT` whose message names the field and the rule.

use std::time::Duration;

use crate::error::Error;
use crate::lease::LeaseId;

/// Longest resource name, in bytes.
pub const MAX_RESOURCE_LEN: usize = 512;
/// Longest reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Longest declared principal, in bytes.
pub const MAX_PRINCIPAL_LEN: usize = 256;

fn text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::invalid(format!(
            "{field} is {} bytes long; the limit is {max}",
            value.len()
        )));
    }
    // Printable ASCII, the common case, holds neither kind: one pass over
    // the bytes decides it.
    if value.bytes().all(|b| matches!(b, b' '..=b'~')) {
        return Ok(());
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "{field} contains the control character {c:?}"
        )));
    }
    if let Some(c) = value.chars().find(|&c| is_bidi_control(c)) {
        return Err(Error::invalid(format!(
            "{field} contains the bidirectional control U+{:04X}, which can make text display \
             differently from what it is",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Unicode's explicit bidirectional formatting characters (UAX #9): marks,
/// embeddings, overrides and isolates. In a name they can make `prod/db`
/// and another resource look alike in a terminal or an audit log.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Longest wait id, in bytes.
pub const MAX_WAIT_ID_LEN: usize = 64;

/// An optional wait id: empty, or 1–64 characters from `[A-Za-z0-9._-]`.
pub fn wait_id(id: &str) -> Result<Option<&str>, Error> {
    if id.is_empty() {
        return Ok(None);
    }
    if id.len() > MAX_WAIT_ID_LEN {
        return Err(Error::invalid(format!(
            "wait_id is {} bytes long; the limit is {MAX_WAIT_ID_LEN}",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(format!(
            "wait_id contains {c:?}; use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(Some(id))
}

/// A resource name: UTF-8 (guaranteed by protobuf), 1–512 bytes, no control
/// characters and no bidirectional controls (as for every text field).
///
/// Names are paths of `/`-separated parts, and each spelling is a lock of its
/// own, so spellings that look like the same path are refused rather than
/// letting `/deploy/prod`, `deploy//prod` and `deploy/prod/` be three locks:
/// no leading or trailing `/`, no empty part, not only whitespace.
pub fn resource(name: &str) -> Result<&str, Error> {
    if name.is_empty() {
        return Err(Error::invalid("resource is empty"));
    }
    text("resource", name, MAX_RESOURCE_LEN)?;
    if name.trim().is_empty() {
        return Err(Error::invalid("resource is only whitespace"));
    }
    let shape = if name.starts_with('/') {
        Some("starts with '/'")
    } else if name.ends_with('/') {
        Some("ends with '/'")
    } else if name.contains("//") {
        Some("has an empty part ('//')")
    } else {
        None
    };
    match shape {
        Some(why) => Err(Error::invalid(format!(
            "resource {name:?} {why}: names are '/'-separated paths like \"deploy/prod\""
        ))),
        None => Ok(name),
    }
}

/// A prefix for List/Watch: like a resource name but may be empty.
pub fn prefix(prefix: &str) -> Result<&str, Error> {
    text("prefix", prefix, MAX_RESOURCE_LEN)?;
    Ok(prefix)
}

/// A reason: at most 1 KiB, no control characters.
pub fn reason(reason: &str) -> Result<&str, Error> {
    text("reason", reason, MAX_REASON_LEN)?;
    Ok(reason)
}

/// A declared principal: at most 256 bytes, no control characters.
pub fn principal(principal: &str) -> Result<&str, Error> {
    text("principal", principal, MAX_PRINCIPAL_LEN)?;
    Ok(principal)
}

/// A lease id as issued by this service.
pub fn lease_id(id: &str) -> Result<LeaseId, Error> {
    if id.is_empty() {
        return Err(Error::invalid("lease_id is empty"));
    }
    LeaseId::parse(id).ok_or_else(|| {
        Error::invalid("lease_id is not a Stormlock lease id (32 lowercase hex digits)")
    })
}

fn duration(field: &str, d: &prost_types::Duration) -> Result<Duration, Error> {
    // Checked here rather than by prost's conversion, which negates the
    // seconds of a negative duration and so overflows on i64::MIN.
    let (Ok(seconds), Ok(nanos)) = (u64::try_from(d.seconds), u32::try_from(d.nanos)) else {
        return Err(Error::invalid(format!(
            "{field} is negative ({}s {}ns)",
            d.seconds, d.nanos
        )));
    };
    if nanos >= 1_000_000_000 {
        return Err(Error::invalid(format!(
            "{field} is malformed: nanos must be below one second, got {nanos}"
        )));
    }
    Ok(Duration::new(seconds, nanos))
}

/// A TTL: unset → `default`; else whole seconds, at least 1 s, at most `max`.
pub fn ttl(
    ttl: Option<&prost_types::Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, Error> {
    let Some(ttl) = ttl else {
        return Ok(default);
    };
    let ttl = duration("ttl", ttl)?;
    if ttl.subsec_nanos() != 0 {
        return Err(Error::invalid(format!(
            "ttl must be whole seconds, got {ttl:?}"
        )));
    }
    if ttl < Duration::from_secs(1) {
        return Err(Error::invalid("ttl must be at least 1s"));
    }
    if ttl > max {
        return Err(Error::invalid(format!(
            "ttl {} exceeds the maximum of {} for this resource",
            crate::duration::format_duration(ttl),
            crate::duration::format_duration(max)
        )));
    }
    Ok(ttl)
}

/// A wait: unset or zero → none; else at most `max`.
pub fn wait(wait: Option<&prost_types::Duration>, max: Duration) -> Result<Duration, Error> {
    let Some(wait) = wait else {
        return Ok(Duration::ZERO);
    };
    let wait = duration("wait", wait)?;
    if wait > max {
        return Err(Error::invalid(format!(
            "wait {} exceeds the maximum of {}",
            crate::duration::format_duration(wait),
            crate::duration::format_duration(max)
        )));
    }
    Ok(wait)
}

/// A List page token: the hex-encoded last resource of the previous page,
/// which must lie under `prefix`.
pub fn page_token(token: &str, prefix: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let forged = || Error::invalid("page_token is not a token returned by List with this prefix");
    if token.len() > 2 * MAX_RESOURCE_LEN {
        return Err(forged());
    }
    let bytes = hex::decode(token).map_err(|_| forged())?;
    let last = String::from_utf8(bytes).map_err(|_| forged())?;
    // Checked as text, not as a resource name: a name stored before the
    // path rules (e.g. "/old") must not break the paging through it.
    if last.is_empty()
        || !last.starts_with(prefix)
        || text("resource", &last, MAX_RESOURCE_LEN).is_err()
    {
        return Err(forged());
    }
    Ok(Some(last))
}

/// The page token that resumes after `last`.
pub fn make_page_token(last: &str) -> String {
    hex::encode(last.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> prost_types::Duration {
        prost_types::Duration {
            seconds: s,
            nanos: 0,
        }
    }

    #[test]
    fn resource_names() {
        assert!(resource("prod/db").is_ok());
        assert!(resource(&"x".repeat(512)).is_ok());
        assert!(resource("ünïcødé/锁").is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("a\nb", "control"),
            ("a\u{7f}", "control"),
            ("prod/\u{202E}bd", "bidirectional"),
            ("a\u{2066}b", "bidirectional"),
            ("a\u{200F}", "bidirectional"),
            ("a\tb", "control"),
            ("/deploy/prod", "starts with '/'"),
            ("deploy/prod/", "ends with '/'"),
            ("deploy//prod", "empty part"),
            ("/", "starts with '/'"),
            ("   ", "only whitespace"),
        ] {
            let msg = resource(bad).expect_err(bad).to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
        }
        let msg = resource(&"x".repeat(513)).expect_err("long").to_string();
        assert!(msg.contains("513") && msg.contains("512"), "{msg}");
    }

    /// The message of the refusal of `result`, which must be one.
    fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
        let err = result.expect_err("refused");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        err.to_string()
    }

    #[test]
    fn reasons_principals_and_prefixes() {
        assert_eq!(reason("").ok(), Some(""));
        assert!(reason(&"r".repeat(1024)).is_ok());
        let msg = refusal(reason(&"r".repeat(1025)));
        assert!(
            msg.contains("reason is 1025 bytes long; the limit is 1024"),
            "{msg}"
        );
        let msg = refusal(reason("line\nbreak"));
        assert!(
            msg.contains("reason contains the control character"),
            "{msg}"
        );
        assert!(principal(&"p".repeat(256)).is_ok());
        let msg = refusal(principal(&"p".repeat(257)));
        assert!(
            msg.contains("principal is 257 bytes long; the limit is 256"),
            "{msg}"
        );
        // A prefix may be empty and end with '/', unlike a resource.
        assert_eq!(prefix("").ok(), Some(""));
        assert_eq!(prefix("team/").ok(), Some("team/"));
        assert!(prefix(&"x".repeat(512)).is_ok());
        let msg = refusal(prefix(&"x".repeat(513)));
        assert!(
            msg.contains("prefix is 513 bytes long; the limit is 512"),
            "{msg}"
        );
        let msg = refusal(prefix("a\u{1b}"));
        assert!(
            msg.contains("prefix contains the control character"),
            "{msg}"
        );
    }

    #[test]
    fn every_bidirectional_control_and_nothing_else_is_refused() {
        for c in [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202C}', '\u{202E}', '\u{2066}',
            '\u{2068}', '\u{2069}',
        ] {
            let msg = refusal(reason(&format!("a{c}b")));
            let code = format!("U+{:04X}", u32::from(c));
            assert!(
                msg.contains("bidirectional") && msg.contains(&code),
                "{code}: {msg}"
            );
        }
        // Neighbours that are not bidirectional controls (joiners, spaces,
        // deprecated format characters) are text like any other.
        for c in [
            '\u{061B}', '\u{200D}', '\u{2029}', '\u{202F}', '\u{2065}', '\u{206A}',
        ] {
            let text = format!("a{c}b");
            assert!(reason(&text).is_ok(), "U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn wait_ids() {
        assert_eq!(wait_id("").ok(), Some(None));
        assert_eq!(wait_id("a.B_9-z").ok(), Some(Some("a.B_9-z")));
        assert!(wait_id(&"w".repeat(64)).is_ok());
        let msg = refusal(wait_id(&"w".repeat(65)));
        assert!(
            msg.contains("wait_id is 65 bytes long; the limit is 64"),
            "{msg}"
        );
        for (bad, shown) in [("a b", "' '"), ("a/b", "'/'"), ("é", "'é'")] {
            let msg = refusal(wait_id(bad));
            assert!(
                msg.contains(&format!("wait_id contains {shown}")),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn ttls() {
        let (d, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(ttl(None, d, max).ok(), Some(d));
        assert_eq!(
            ttl(Some(&secs(1)), d, max).ok(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(ttl(Some(&secs(3600)), d, max).ok(), Some(max));
        for (bad, why) in [
            (secs(0), "at least 1s"),
            (secs(-1), "ttl is negative"),
            (secs(3601), "exceeds the maximum of 1h"),
            (secs(i64::MAX), "exceeds the maximum of 1h"),
            (secs(i64::MIN), "ttl is negative"),
        ] {
            let msg = refusal(ttl(Some(&bad), d, max));
            assert!(msg.contains(why), "{bad:?}: {msg}");
        }
        // i64::MIN seconds once overflowed in the conversion (a panic in
        // debug builds): refused like any negative value.
        let min = prost_types::Duration {
            seconds: i64::MIN,
            nanos: i32::MIN,
        };
        let message = refusal(ttl(Some(&min), d, max));
        assert!(message.contains("negative"), "{message}");
        let too_many_nanos = prost_types::Duration {
            seconds: 1,
            nanos: 1_000_000_000,
        };
        let message = refusal(ttl(Some(&too_many_nanos), d, max));
        assert!(message.contains("malformed"), "{message}");
        let almost = prost_types::Duration {
            seconds: 1,
            nanos: 999_999_999,
        };
        assert!(refusal(ttl(Some(&almost), d, max)).contains("whole"));
        let half = prost_types::Duration {
            seconds: 1,
            nanos: 500_000_000,
        };
        assert!(refusal(ttl(Some(&half), d, max)).contains("whole"));
        let bad_nanos = prost_types::Duration {
            seconds: 1,
            nanos: -5,
        };
        assert!(refusal(ttl(Some(&bad_nanos), d, max)).contains("negative"));
    }

    #[test]
    fn waits() {
        let max = Duration::from_secs(10);
        assert_eq!(wait(None, max).ok(), Some(Duration::ZERO));
        assert_eq!(wait(Some(&secs(0)), max).ok(), Some(Duration::ZERO));
        assert_eq!(
            wait(Some(&secs(10)), max).ok(),
            Some(max),
            "up to the maximum"
        );
        let fraction = prost_types::Duration {
            seconds: 2,
            nanos: 500_000_000,
        };
        assert_eq!(
            wait(Some(&fraction), max).ok(),
            Some(Duration::from_millis(2_500)),
            "a wait need not be whole seconds"
        );
        assert!(refusal(wait(Some(&secs(-3)), max)).contains("wait is negative"));
        assert!(refusal(wait(Some(&secs(i64::MIN)), max)).contains("wait is negative"));
        let msg = refusal(wait(Some(&secs(11)), max));
        assert!(msg.contains("wait 11s exceeds the maximum of 10s"), "{msg}");
    }

    #[test]
    fn lease_ids() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            lease_id(id).ok().map(|l| l.expose().to_string()),
            Some(id.to_string())
        );
        assert!(refusal(lease_id("")).contains("lease_id is empty"));
        for bad in [
            "nope",
            &id[..31],
            &format!("{id}0"),
            &id.to_uppercase(),
            &"g".repeat(32),
            &"a".repeat(10_000),
        ] {
            let msg = refusal(lease_id(bad));
            assert!(msg.contains("32 lowercase hex digits"), "{bad}: {msg}");
        }
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_forgeries() {
        let token = make_page_token("team/a");
        assert_eq!(
            page_token(&token, "team/").ok().flatten().as_deref(),
            Some("team/a")
        );
        assert_eq!(page_token("", "x").ok(), Some(None));
        // The longest name a token can carry (512 bytes, 1024 hex digits).
        let longest = "x".repeat(512);
        assert_eq!(
            page_token(&make_page_token(&longest), "").ok().flatten(),
            Some(longest.clone())
        );
        for (forged, prefix) in [
            (token.clone(), "other/"),
            (token.clone(), "team/a/"),
            ("zz".to_string(), ""),
            (hex::encode([0xff, 0xfe]), ""),
            (make_page_token("a\nb"), ""),
            (make_page_token("a\u{202E}b"), ""),
            (make_page_token(&format!("{longest}x")), ""),
            ("ab".repeat(2000), ""),
        ] {
            let msg = refusal(page_token(&forged, prefix));
            assert!(
                msg.contains("not a token returned by List"),
                "{forged}: {msg}"
            );
        }
    }
}
