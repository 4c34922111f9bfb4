//! Durations as operators type them: Python stormlock's `4 seconds`,
//! `1 days`, `30 min` (a count and any prefix of days/hours/minutes/seconds),
//! the compact `4h`, `30m`, `1d2h`, `90s`, and a bare number of seconds.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to parse.
    #[error("empty duration")]
    Empty,
    /// The text is not in any accepted form.
    #[error(
        "invalid duration {0:?}: use forms like \"4 seconds\", \"30 min\", \"1 days\", \"4h\", \"30m\" or \"1d2h\""
    )]
    Syntax(String),
    /// The unit is not a prefix of days, hours, minutes or seconds.
    #[error(
        "unknown unit {unit:?} in duration {text:?}: use days, hours, minutes or seconds (or d, h, m, s)"
    )]
    Unit {
        /// The unit as written.
        unit: String,
        /// The whole input.
        text: String,
    },
    /// The value does not fit.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

const UNITS: [(&str, u64); 4] = [
    ("days", 86_400),
    ("hours", 3_600),
    ("minutes", 60),
    ("seconds", 1),
];

/// Seconds per unit for `unit`, which may be any non-empty prefix of a unit name.
fn unit_seconds(unit: &str) -> Option<u64> {
    let unit = unit.to_ascii_lowercase();
    // "m" alone means minutes (compact form); "mi", "min", … are prefixes too.
    UNITS
        .iter()
        .find(|(name, _)| !unit.is_empty() && name.starts_with(unit.as_str()))
        .map(|(_, secs)| *secs)
}

/// Parses a duration (see the module documentation for the accepted forms).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let overflow = || DurationError::Overflow(text.to_string());
    let syntax = || DurationError::Syntax(text.to_string());
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| overflow());
    }
    let mut total: u64 = 0;
    let mut rest = trimmed;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(syntax());
        }
        let count: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        rest = rest[digits..].trim_start();
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if letters == 0 {
            return Err(syntax());
        }
        let unit = &rest[..letters];
        let secs = unit_seconds(unit).ok_or_else(|| DurationError::Unit {
            unit: unit.to_string(),
            text: text.to_string(),
        })?;
        total = count
            .checked_mul(secs)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(overflow)?;
        rest = rest[letters..].trim_start();
        parts += 1;
    }
    if parts == 0 {
        return Err(syntax());
    }
    Ok(Duration::from_secs(total))
}

/// Formats whole seconds compactly for people: `1d2h`, `4h30m`, `45s`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (name, unit) in UNITS {
        if secs >= unit {
            out.push_str(&format!("{}{}", secs / unit, &name[..1]));
            secs %= unit;
        }
    }
    out
}

/// Deserializes a [`Duration`] from a string such as `"1h"` or `"30 min"`.
pub fn deserialize<'de, D>(deserializer: D) -> Result<Duration, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text: String = serde::Deserialize::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Like [`deserialize`] for an optional field.
pub fn deserialize_option<'de, D>(deserializer: D) -> Result<Option<Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> u64 {
        parse_duration(text)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX)
    }

    #[test]
    fn python_stormlock_forms() {
        assert_eq!(secs("4 seconds"), 4);
        assert_eq!(secs("1 days"), 86_400);
        assert_eq!(secs("2 hours"), 7_200);
        assert_eq!(secs("30 minutes"), 1_800);
    }

    #[test]
    fn prefixes_of_unit_names() {
        assert_eq!(secs("30 min"), 1_800);
        assert_eq!(secs("1 day"), 86_400);
        assert_eq!(secs("3 hr"), u64::MAX, "hr is not a prefix of hours");
        assert_eq!(secs("3 h"), 10_800);
        assert_eq!(secs("5 sec"), 5);
        assert_eq!(secs("5 SECONDS"), 5);
    }

    #[test]
    fn compact_forms() {
        assert_eq!(secs("4h"), 14_400);
        assert_eq!(secs("30m"), 1_800);
        assert_eq!(secs("1d2h"), 93_600);
        assert_eq!(secs("1d 2h 3m 4s"), 93_784);
        assert_eq!(secs("90"), 90);
        assert_eq!(secs(" 10s "), 10);
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(parse_duration("h"), Err(DurationError::Syntax(_))));
        assert!(parse_duration("4").is_ok());
        assert!(matches!(
            parse_duration("-4s"),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(
            parse_duration("4 weeks"),
            Err(DurationError::Unit { .. })
        ));
        assert!(matches!(
            parse_duration("4.5h"),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
        let message = parse_duration("4 weeks")
            .map(|_| ())
            .expect_err("weeks are not a unit")
            .to_string();
        assert!(message.contains("weeks"), "{message}");
    }

    #[test]
    fn formats_round_trip() {
        for text in ["1d2h", "4h30m", "45s", "1d1s", "0s"] {
            let parsed = parse_duration(text).map(format_duration);
            assert_eq!(parsed.as_deref(), Ok(text));
        }
    }
}
