//! Freeze windows: `[[freezes]]` in the configuration. During a window
//! nobody but its exempt principals acquires a matching resource, and no
//! lease of a principal it would refuse is granted or renewed past its
//! start (the lease is cut short to end when the window starts).
//!
//! A window is either recurring (a 5-field cron `schedule` in an IANA
//! `timezone`, lasting `duration` from each start) or one-off (`start` and
//! `end`, or `start` and `duration`, RFC 3339). A recurring window's starts
//! are local times in its zone, daylight-saving changes included (a start
//! skipped by a change happens at the first instant after it, one that
//! happens twice starts once); its `duration` is elapsed time.
//!
//! Every check is made on the daemon's clock, so replicas with the same
//! configuration agree to within their clocks' difference.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::Deserialize;

use crate::glob::ResourcePattern;

/// The longest a window may last: a freeze of more than a year is a
/// retirement, and a bound keeps every search short.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

/// Following occurrences that overlap the one found, at most (a window
/// recurring more often than it lasts is one long window).
const MAX_CHAIN: usize = 1000;

/// A `[[freezes]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeConfig {
    name: String,
    #[serde(rename = "match")]
    matches: Vec<String>,
    schedule: Option<String>,
    start: Option<String>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    duration: Option<Duration>,
    end: Option<String>,
    timezone: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    exempt: Vec<String>,
}

/// When a freeze is in force.
#[derive(Clone)]
enum When {
    /// Once, from `start` until `end`.
    Once { start: SystemTime, end: SystemTime },
    /// From every start of `cron` in `zone`, for `duration`.
    Every {
        cron: Box<Cron>,
        zone: Tz,
        duration: Duration,
    },
}

/// A freeze window, checked and compiled (`[[freezes]]`).
#[derive(Clone, Deserialize)]
#[serde(try_from = "FreezeConfig")]
pub struct Freeze {
    name: String,
    patterns: Vec<ResourcePattern>,
    when: When,
    schedule: String,
    reason: String,
    exempt: Vec<String>,
}

impl std::fmt::Debug for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freeze")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

/// What kind of window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// A freeze from the configuration.
    Freeze,
    /// Someone's reservation.
    Reservation,
}

/// A window that refuses or limits a caller: which, why, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// A freeze or a reservation.
    pub kind: WindowKind,
    /// The freeze's name, or the reservation's id.
    pub name: String,
    /// Who booked a reservation; empty for a freeze.
    pub owner: String,
    /// The resource a reservation books; empty for a freeze.
    pub resource: String,
    /// Why, as configured.
    pub reason: String,
    /// When this occurrence starts (or started).
    pub starts_at: SystemTime,
    /// When it ends.
    pub ends_at: SystemTime,
}

impl Window {
    /// "freeze \"weekend\" until 2026-12-07T07:00:00Z (weekend freeze: ask #ops)",
    /// "reservation 1a2b3c4d of alice until …".
    pub fn describe(&self) -> String {
        let mut text = match self.kind {
            WindowKind::Freeze => format!("freeze {:?}", self.name),
            WindowKind::Reservation => format!("reservation {} of {:?}", self.name, self.owner),
        };
        text.push_str(&format!(" until {}", utc(self.ends_at)));
        if !self.reason.is_empty() {
            text.push_str(&format!(" ({})", self.reason));
        }
        text
    }
}

/// `t` in RFC 3339, UTC, whole seconds.
pub fn utc(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn rfc3339(key: &str, text: &str) -> Result<SystemTime, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| SystemTime::from(t.with_timezone(&Utc)))
        .map_err(|e| {
            format!("{key}: {text:?} is not an RFC 3339 time (2026-12-24T18:00:00+01:00): {e}")
        })
}

/// Parses a 5-field cron schedule (minute hour day-of-month month
/// day-of-week; names such as `FRI` and `DEC` allowed).
fn parse_cron(text: &str) -> Result<Cron, String> {
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "schedule: {text:?} has {fields} fields; a schedule has 5: minute hour day-of-month month day-of-week (\"0 17 * * FRI\")"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("schedule: {text:?} is not a cron schedule: {e}"))
}

impl TryFrom<FreezeConfig> for Freeze {
    type Error = String;

    fn try_from(c: FreezeConfig) -> Result<Self, String> {
        let named = |message: String| format!("freeze {:?}: {message}", c.name);
        if c.name.is_empty()
            || c.name.len() > 64
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
        {
            return Err(format!(
                "name: {:?}: 1 to 64 letters, digits, '.', '_' or '-'",
                c.name
            ));
        }
        if c.matches.is_empty() {
            return Err(named(
                "match: give at least one resource pattern (\"deploy/prod/**\")".into(),
            ));
        }
        let patterns = c
            .matches
            .iter()
            .map(|p| ResourcePattern::new(p).map_err(|e| named(format!("match: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if c.reason.chars().any(char::is_control) || c.reason.len() > 1024 {
            return Err(named(
                "reason: at most 1 KiB, without control characters".into(),
            ));
        }
        if let Some(bad) = c
            .exempt
            .iter()
            .find(|p| p.is_empty() || p.chars().any(char::is_control))
        {
            return Err(named(format!("exempt: {bad:?} is not a principal name")));
        }
        let zone = match &c.timezone {
            Some(name) => Some(Tz::from_str(name).map_err(|_| {
                named(format!(
                    "timezone: {name:?} is not an IANA time zone name (\"Europe/Berlin\", \"UTC\")"
                ))
            })?),
            None => None,
        };
        let positive = |d: Duration| -> Result<Duration, String> {
            if d.is_zero() {
                Err(named("duration: must be more than 0s".into()))
            } else if d > MAX_WINDOW {
                Err(named("duration: at most 366 days".into()))
            } else {
                Ok(d)
            }
        };
        let (when, schedule) = match (&c.schedule, &c.start) {
            (Some(_), Some(_)) => {
                return Err(named(
                    "give either schedule (recurring) or start (once), not both".into(),
                ));
            }
            (None, None) => {
                return Err(named(
                    "give schedule (cron, with duration) or start (RFC 3339, with end or duration)"
                        .into(),
                ));
            }
            (Some(text), None) => {
                if c.end.is_some() {
                    return Err(named(
                        "end: a recurring window lasts its duration; end is for one-off windows (start)"
                            .into(),
                    ));
                }
                let duration = c.duration.ok_or_else(|| {
                    named("duration: a recurring window needs one (\"63h\")".into())
                })?;
                let cron = parse_cron(text).map_err(named)?;
                let zone = zone.unwrap_or(Tz::UTC);
                // A pattern that never happens (30 February) is a mistake.
                let now = Utc::now().with_timezone(&zone);
                cron.find_next_occurrence(&now, false)
                    .map_err(|_| named(format!("schedule: {text:?} never happens")))?;
                let described = format!(
                    "{text} ({}) for {}",
                    zone.name(),
                    crate::duration::format_duration(duration)
                );
                (
                    When::Every {
                        cron: Box::new(cron),
                        zone,
                        duration: positive(duration)?,
                    },
                    described,
                )
            }
            (None, Some(start_text)) => {
                let start = rfc3339("start", start_text).map_err(named)?;
                let end = match (&c.end, c.duration) {
                    (Some(_), Some(_)) => {
                        return Err(named("give end or duration, not both".into()));
                    }
                    (None, None) => {
                        return Err(named(
                            "a one-off window needs end (RFC 3339) or duration".into(),
                        ));
                    }
                    (Some(end), None) => rfc3339("end", end).map_err(named)?,
                    (None, Some(d)) => start + positive(d)?,
                };
                let length = end.duration_since(start).map_err(|_| {
                    named(format!(
                        "end: {} is before start {start_text}",
                        c.end.as_deref().unwrap_or_default()
                    ))
                })?;
                if length.is_zero() {
                    return Err(named("end: must be after start".into()));
                }
                positive(length)?;
                (
                    When::Once { start, end },
                    format!(
                        "{start_text} until {}",
                        c.end
                            .clone()
                            .unwrap_or_else(|| crate::duration::format_duration(length))
                    ),
                )
            }
        };
        Ok(Self {
            name: c.name,
            patterns,
            when,
            schedule,
            reason: c.reason,
            exempt: c.exempt,
        })
    }
}

impl Freeze {
    /// The freeze's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When it is in force, as written ("0 17 * * FRI (Europe/Berlin) for 63h").
    pub fn schedule(&self) -> &str {
        &self.schedule
    }

    /// Its resource patterns, as written.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(ResourcePattern::as_str)
    }

    /// The occurrence in force at `now`, else the next one (within two
    /// years); `None` for a one-off window that is over.
    pub fn current_or_next(&self, now: SystemTime) -> Option<Window> {
        self.at(now)
            .or_else(|| self.starting_between(now, now + 2 * MAX_WINDOW))
    }

    /// Whether it covers `resource`.
    pub fn covers(&self, resource: &str) -> bool {
        self.patterns.iter().any(|p| p.is_match(resource))
    }

    /// Whether it refuses `principal` (not exempt).
    pub fn refuses(&self, principal: &str) -> bool {
        !self.exempt.iter().any(|p| p == principal)
    }

    fn window(&self, starts_at: SystemTime, ends_at: SystemTime) -> Window {
        Window {
            kind: WindowKind::Freeze,
            name: self.name.clone(),
            owner: String::new(),
            resource: String::new(),
            reason: self.reason.clone(),
            starts_at,
            ends_at,
        }
    }

    /// The first start strictly after `t` of a recurring window.
    fn next_start(cron: &Cron, zone: Tz, t: SystemTime) -> Option<SystemTime> {
        let local = DateTime::<Utc>::from(t).with_timezone(&zone);
        cron.find_next_occurrence(&local, false)
            .ok()
            .map(|next| SystemTime::from(next.with_timezone(&Utc)))
    }

    /// The occurrence in force at `t`, if any; occurrences that overlap are
    /// one window, ending when the last of them ends.
    pub fn at(&self, t: SystemTime) -> Option<Window> {
        match &self.when {
            When::Once { start, end } => {
                (*start <= t && t < *end).then(|| self.window(*start, *end))
            }
            When::Every {
                cron,
                zone,
                duration,
            } => {
                // The first start after t - duration is the only one that
                // can still be in force at t.
                let from = t.checked_sub(*duration)?;
                let start = Self::next_start(cron, *zone, from)?;
                if start > t {
                    return None;
                }
                let mut end = start + *duration;
                let mut last = start;
                for _ in 0..MAX_CHAIN {
                    match Self::next_start(cron, *zone, last) {
                        Some(next) if next < end => {
                            end = end.max(next + *duration);
                            last = next;
                        }
                        _ => break,
                    }
                }
                Some(self.window(start, end))
            }
        }
    }

    /// The first occurrence starting after `t` and before `before`.
    pub fn starting_between(&self, t: SystemTime, before: SystemTime) -> Option<Window> {
        let start = match &self.when {
            When::Once { start, .. } => (*start > t).then_some(*start)?,
            When::Every { cron, zone, .. } => Self::next_start(cron, *zone, t)?,
        };
        if start >= before {
            return None;
        }
        self.at(start)
    }
}

/// The freeze windows in force.
#[derive(Debug, Clone, Default)]
pub struct Freezes {
    list: Vec<Freeze>,
}

impl Freezes {
    /// The windows of `[[freezes]]`.
    pub fn new(list: Vec<Freeze>) -> Self {
        Self { list }
    }

    /// Whether there are none (every check is then free).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The freezes, as configured.
    pub fn iter(&self) -> impl Iterator<Item = &Freeze> {
        self.list.iter()
    }

    /// The window that refuses `principal` on `resource` at `now`: of
    /// several, the one that ends last (the caller waits for all of them).
    pub fn refusing(&self, resource: &str, principal: &str, now: SystemTime) -> Option<Window> {
        self.list
            .iter()
            .filter(|f| f.covers(resource) && f.refuses(principal))
            .filter_map(|f| f.at(now))
            .max_by_key(|w| w.ends_at)
    }

    /// The first window that would refuse `principal` on `resource`
    /// starting after `now` and before `before`: a lease taken or renewed
    /// now must end by its start.
    pub fn next_refusing(
        &self,
        resource: &str,
        principal: &str,
        now: SystemTime,
        before: SystemTime,
    ) -> Option<Window> {
        self.list
            .iter()
            .filter(|f| f.covers(resource) && f.refuses(principal))
            .filter_map(|f| f.starting_between(now, before))
            .min_by_key(|w| w.starts_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freeze(toml_text: &str) -> Result<Freeze, String> {
        toml::from_str::<Freeze>(toml_text).map_err(|e| e.to_string())
    }

    fn at(text: &str) -> SystemTime {
        rfc3339("t", text).expect("time")
    }

    const WEEKEND: &str = r#"
        name = "weekend"
        match = ["deploy/prod/**"]
        schedule = "0 17 * * FRI"
        duration = "63h"
        timezone = "Europe/Berlin"
        reason = "weekend freeze: ask #ops"
        exempt = ["oncall"]
    "#;

    #[test]
    fn a_weekly_window_is_in_force_from_its_start_for_its_duration() {
        let f = freeze(WEEKEND).expect("valid");
        // Friday 2026-12-04 17:00 in Berlin is 16:00 UTC (winter time).
        assert_eq!(f.at(at("2026-12-04T15:59:59Z")), None);
        let w = f
            .at(at("2026-12-04T16:00:00Z"))
            .expect("in force at its start");
        assert_eq!(w.starts_at, at("2026-12-04T16:00:00Z"));
        assert_eq!(w.ends_at, at("2026-12-07T07:00:00Z"));
        assert_eq!(w.name, "weekend");
        assert_eq!(w.reason, "weekend freeze: ask #ops");
        assert!(f.at(at("2026-12-07T06:59:59Z")).is_some());
        assert_eq!(f.at(at("2026-12-07T07:00:00Z")), None, "ends at its end");
        assert_eq!(f.at(at("2026-12-09T12:00:00Z")), None, "midweek");
    }

    #[test]
    fn starts_are_local_times_across_daylight_saving_changes() {
        let f = freeze(WEEKEND).expect("valid");
        // Summer time: Friday 2026-07-03 17:00 in Berlin is 15:00 UTC.
        assert_eq!(f.at(at("2026-07-03T14:59:00Z")), None);
        let w = f.at(at("2026-07-03T15:00:00Z")).expect("summer start");
        assert_eq!(w.ends_at, at("2026-07-06T06:00:00Z"));
        // The weekend of the change back (25 October 2026): 63 elapsed hours.
        let w = f.at(at("2026-10-24T12:00:00Z")).expect("in force");
        assert_eq!(w.starts_at, at("2026-10-23T15:00:00Z"));
        assert_eq!(w.ends_at, at("2026-10-26T06:00:00Z"));
    }

    #[test]
    fn a_start_skipped_by_the_clock_change_happens_just_after_it() {
        // 02:30 does not exist in Berlin on 29 March 2026 (02:00 → 03:00).
        let f = freeze(
            r#"name = "night"
               match = ["x"]
               schedule = "30 2 * * *"
               duration = "10m"
               timezone = "Europe/Berlin""#,
        )
        .expect("valid");
        let next = f
            .starting_between(at("2026-03-28T12:00:00Z"), at("2026-03-30T00:00:00Z"))
            .expect("a start on the day of the change");
        assert_eq!(next.starts_at, at("2026-03-29T01:00:00Z"), "03:00 CEST");
    }

    #[test]
    fn a_one_off_window_with_end_or_duration() {
        let f = freeze(
            r#"name = "holidays"
               match = ["deploy/**"]
               start = "2026-12-23T18:00:00+01:00"
               end = "2027-01-04T08:00:00+01:00""#,
        )
        .expect("valid");
        assert_eq!(f.at(at("2026-12-23T16:59:59Z")), None);
        let w = f.at(at("2026-12-25T00:00:00Z")).expect("in force");
        assert_eq!(w.starts_at, at("2026-12-23T17:00:00Z"));
        assert_eq!(w.ends_at, at("2027-01-04T07:00:00Z"));
        assert_eq!(f.at(at("2027-01-04T07:00:00Z")), None);
        let g = freeze(
            r#"name = "drill"
               match = ["x"]
               start = "2026-12-02T10:00:00Z"
               duration = "2h""#,
        )
        .expect("valid");
        assert_eq!(
            g.at(at("2026-12-02T11:00:00Z")).map(|w| w.ends_at),
            Some(at("2026-12-02T12:00:00Z"))
        );
    }

    #[test]
    fn overlapping_occurrences_are_one_window() {
        let f = freeze(
            r#"name = "busy"
               match = ["x"]
               schedule = "0 * * * *"
               duration = "90m""#,
        )
        .expect("valid");
        let w = f.at(at("2026-12-02T10:30:00Z")).expect("in force");
        // Never free: it ends when the chain does (bounded search).
        assert!(w.ends_at > at("2026-12-03T00:00:00Z"));
    }

    #[test]
    fn exempt_principals_and_other_resources_are_not_refused() {
        let freezes = Freezes::new(vec![freeze(WEEKEND).expect("valid")]);
        let t = at("2026-12-05T12:00:00Z");
        assert!(freezes.refusing("deploy/prod/api", "alice", t).is_some());
        assert_eq!(freezes.refusing("deploy/prod/api", "oncall", t), None);
        assert_eq!(freezes.refusing("deploy/staging/api", "alice", t), None);
        assert_eq!(
            freezes.refusing("deploy/prod", "alice", t),
            None,
            "** needs a level below"
        );
        let next = freezes
            .next_refusing(
                "deploy/prod/api",
                "alice",
                at("2026-12-04T15:00:00Z"),
                at("2026-12-04T17:00:00Z"),
            )
            .expect("starts within the lease");
        assert_eq!(next.starts_at, at("2026-12-04T16:00:00Z"));
        assert_eq!(
            freezes.next_refusing(
                "deploy/prod/api",
                "alice",
                at("2026-12-04T15:00:00Z"),
                at("2026-12-04T16:00:00Z")
            ),
            None,
            "a lease ending at the start is fine"
        );
        assert_eq!(
            freezes.next_refusing(
                "deploy/prod/api",
                "oncall",
                at("2026-12-04T15:00:00Z"),
                at("2026-12-04T17:00:00Z")
            ),
            None
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_key_and_what_to_write() {
        let cases = [
            (
                r#"name = "w"
                match = ["x"]
                schedule = "0 17 * FRI"
                duration = "1h""#,
                "has 4 fields",
            ),
            (
                r#"name = "w"
                match = ["x"]
                schedule = "0 25 * * *"
                duration = "1h""#,
                "is not a cron schedule",
            ),
            (
                r#"name = "w"
                match = ["x"]
                schedule = "0 0 30 2 *"
                duration = "1h""#,
                "never happens",
            ),
            (
                r#"name = "w"
                match = ["x"]
                schedule = "0 17 * * FRI"
                duration = "1h"
                timezone = "Mars/Olympus""#,
                "not an IANA time zone",
            ),
            (
                r#"name = "w"
                match = ["x"]
                schedule = "0 17 * * FRI""#,
                "needs one",
            ),
            (
                r#"name = "w"
                match = ["x"]
                start = "2026-12-02T10:00:00Z"
                end = "2026-12-02T09:00:00Z""#,
                "is before start",
            ),
            (
                r#"name = "w"
                match = ["x"]
                start = "2026-12-02 10:00""#,
                "not an RFC 3339 time",
            ),
            (
                r#"name = "w"
                match = ["x"]
                start = "2026-12-02T10:00:00Z""#,
                "needs end",
            ),
            (
                r#"name = "w"
                match = []
                start = "2026-12-02T10:00:00Z"
                duration = "1h""#,
                "at least one resource pattern",
            ),
            (
                r#"name = "w w"
                match = ["x"]
                start = "2026-12-02T10:00:00Z"
                duration = "1h""#,
                "name",
            ),
            (
                r#"name = "w"
                match = ["x"]
                schedule = "0 17 * * FRI"
                start = "2026-12-02T10:00:00Z"
                duration = "1h""#,
                "not both",
            ),
            (
                r#"name = "w"
                match = ["x"]
                schedule = "0 17 * * FRI"
                duration = "400d""#,
                "at most 366 days",
            ),
        ];
        for (text, expected) in cases {
            let err = freeze(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
