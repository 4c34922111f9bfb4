//! `[limits]`: how much of this daemon one caller can hold at once, so that
//! a caller's cost stays bounded whatever it sends. A waiting `Acquire` holds
//! a place in a line and a task; a `Watch` holds a stream and its share of
//! the fan-out. Beyond a limit the call is answered `RESOURCE_EXHAUSTED`
//! with the limit, its value and its configuration key. Limits count on this
//! daemon only: several daemons each apply their own.

use serde::Deserialize;

use crate::error::Error;

/// Default of `max_waiters_per_resource`: far above any line a team forms
/// for one lock, small enough that walking a line (to answer `Current`
/// with a place in it) stays cheap.
pub const DEFAULT_MAX_WAITERS_PER_RESOURCE: usize = 1000;
/// Default of `max_waiters_per_principal`: a build farm's worth of jobs
/// waiting under one identity at once.
pub const DEFAULT_MAX_WAITERS_PER_PRINCIPAL: usize = 100;
/// Default of `max_watches_per_principal`: a dashboard, a few `exec`s and
/// `watch`es per identity, with room to spare.
pub const DEFAULT_MAX_WATCHES_PER_PRINCIPAL: usize = 32;

/// The limits, each at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "LimitsTable")]
pub struct Limits {
    /// Callers waiting for one resource on this daemon.
    pub max_waiters_per_resource: usize,
    /// Waiting calls of one principal on this daemon, over all resources.
    pub max_waiters_per_principal: usize,
    /// Open `Watch` streams of one principal on this daemon.
    pub max_watches_per_principal: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_waiters_per_resource: DEFAULT_MAX_WAITERS_PER_RESOURCE,
            max_waiters_per_principal: DEFAULT_MAX_WAITERS_PER_PRINCIPAL,
            max_watches_per_principal: DEFAULT_MAX_WATCHES_PER_PRINCIPAL,
        }
    }
}

/// `[limits]` as written: every key optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsTable {
    max_waiters_per_resource: Option<usize>,
    max_waiters_per_principal: Option<usize>,
    max_watches_per_principal: Option<usize>,
}

impl TryFrom<LimitsTable> for Limits {
    type Error = String;

    fn try_from(table: LimitsTable) -> Result<Self, String> {
        let d = Self::default();
        let limits = Self {
            max_waiters_per_resource: table
                .max_waiters_per_resource
                .unwrap_or(d.max_waiters_per_resource),
            max_waiters_per_principal: table
                .max_waiters_per_principal
                .unwrap_or(d.max_waiters_per_principal),
            max_watches_per_principal: table
                .max_watches_per_principal
                .unwrap_or(d.max_watches_per_principal),
        };
        limits.validate()?;
        Ok(limits)
    }
}

impl Limits {
    /// Refuses a zero limit, which would refuse every such call: leave the
    /// key out for its default.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value, refuses) in [
            (
                "max_waiters_per_resource",
                self.max_waiters_per_resource,
                "every Acquire that waits",
            ),
            (
                "max_waiters_per_principal",
                self.max_waiters_per_principal,
                "every Acquire that waits",
            ),
            (
                "max_watches_per_principal",
                self.max_watches_per_principal,
                "every Watch",
            ),
        ] {
            if value == 0 {
                return Err(format!(
                    "limits.{key} must be at least 1 (0 would refuse {refuses}); \
                     leave it out for the default"
                ));
            }
        }
        Ok(())
    }
}

/// Which limit a call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_waiters_per_resource`.
    WaitersPerResource,
    /// `max_waiters_per_principal`.
    WaitersPerPrincipal,
    /// `max_watches_per_principal`.
    WatchesPerPrincipal,
}

impl Limit {
    /// The configuration key, as in `[limits]`.
    pub fn key(self) -> &'static str {
        match self {
            Self::WaitersPerResource => "max_waiters_per_resource",
            Self::WaitersPerPrincipal => "max_waiters_per_principal",
            Self::WatchesPerPrincipal => "max_watches_per_principal",
        }
    }
}

/// A call refused by a limit: `RESOURCE_EXHAUSTED`, naming the limit, its
/// value and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// Which limit.
    pub limit: Limit,
    /// Its configured value.
    pub value: usize,
    /// The resource (waiters per resource) or the principal (the others).
    pub subject: String,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            limit,
            value,
            subject,
        } = self;
        let key = limit.key();
        match limit {
            Limit::WaitersPerResource => write!(
                f,
                "too many callers waiting for {subject:?} on this daemon: {value} already wait, \
                 the most allowed (limits.{key} = {value}); try again later or without waiting"
            ),
            Limit::WaitersPerPrincipal => write!(
                f,
                "principal {subject:?} already has {value} Acquire calls waiting on this daemon, \
                 the most allowed (limits.{key} = {value}); let one finish or cancel it first"
            ),
            Limit::WatchesPerPrincipal => write!(
                f,
                "principal {subject:?} already has {value} Watch streams open on this daemon, \
                 the most allowed (limits.{key} = {value}); close one first"
            ),
        }
    }
}

impl From<Exceeded> for Error {
    fn from(exceeded: Exceeded) -> Self {
        Error::ResourceExhausted(exceeded.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        #[serde(default)]
        limits: Limits,
    }

    fn parse(text: &str) -> Result<Limits, String> {
        toml::from_str::<Wrapper>(text)
            .map(|w| w.limits)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_partial_tables_and_refusals() {
        assert_eq!(parse(""), Ok(Limits::default()));
        assert_eq!(parse("[limits]\n"), Ok(Limits::default()));
        assert_eq!(
            parse("[limits]\nmax_watches_per_principal = 2\n"),
            Ok(Limits {
                max_watches_per_principal: 2,
                ..Limits::default()
            })
        );
        let zero = parse("[limits]\nmax_waiters_per_resource = 0\n").expect_err("zero");
        assert!(
            zero.contains("limits.max_waiters_per_resource must be at least 1"),
            "{zero}"
        );
        let unknown = parse("[limits]\nmax_waiters = 3\n").expect_err("unknown key");
        assert!(unknown.contains("max_waiters"), "{unknown}");
        let negative = parse("[limits]\nmax_watches_per_principal = -1\n").expect_err("negative");
        assert!(negative.contains("max_watches_per_principal") || negative.contains("-1"));
    }

    #[test]
    fn messages_name_the_limit_its_value_and_key() {
        let text = Exceeded {
            limit: Limit::WaitersPerPrincipal,
            value: 100,
            subject: "ci".to_string(),
        }
        .to_string();
        assert!(text.contains("\"ci\""), "{text}");
        assert!(
            text.contains("limits.max_waiters_per_principal = 100"),
            "{text}"
        );
    }
}
