//! `reserve`, `reservations` and `unreserve`: booking resources ahead.

use std::time::SystemTime;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;
use stormlock_api::pb;

use super::acquire::describe_window_name;
use super::{Session, note, out};
use crate::args::{ListFormat, ReservationsArgs, ReserveArgs, UnreserveArgs};
use crate::error::{CliError, CliResult, Exit};
use crate::output::{python_json, system_time};

/// A time as `reserve` takes it: RFC 3339, a local "YYYY-MM-DD HH:MM[:SS]"
/// (in `zone`, else the local time zone), or "+DURATION" from `now`.
pub fn parse_when(text: &str, zone: Option<&str>, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    let hint = "write an RFC 3339 time (2026-12-24T14:00:00+01:00), a local \
                \"YYYY-MM-DD HH:MM\", or an offset such as \"+2h\"";
    if let Some(offset) = text.strip_prefix('+') {
        let d = stormlock_api::duration::parse_duration(offset)
            .map_err(|e| format!("{text:?}: {e}"))?;
        return now
            .checked_add(d)
            .ok_or_else(|| format!("{text:?} is too far ahead"));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(SystemTime::from(t.with_timezone(&Utc)));
    }
    let local = [
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .ok_or_else(|| format!("{text:?} is not a time: {hint}"))?;
    let resolved = match zone {
        Some(name) => {
            let tz: chrono_tz::Tz = name.parse().map_err(|_| {
                format!("--tz {name:?} is not an IANA time zone (e.g. Europe/Berlin)")
            })?;
            tz.from_local_datetime(&local)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        }
        None => Local
            .from_local_datetime(&local)
            .earliest()
            .map(|t| t.with_timezone(&Utc)),
    };
    resolved.map(SystemTime::from).ok_or_else(|| {
        format!("{text:?} does not exist in that time zone (a clock change skips it)")
    })
}

/// A time for people: local, to the minute, with its offset.
pub fn local(t: Option<&prost_types::Timestamp>) -> String {
    system_time(t).map_or_else(
        || "-".to_string(),
        |t| {
            DateTime::<Local>::from(t)
                .format("%Y-%m-%d %H:%M %:z")
                .to_string()
        },
    )
}

/// A time for programs: RFC 3339, UTC.
fn rfc3339(t: Option<&prost_types::Timestamp>) -> Option<String> {
    system_time(t)
        .map(|t| DateTime::<Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// "1a2b3c4d of alice from … until … (reason)".
fn describe(r: &pb::Reservation) -> String {
    let mut text = format!(
        "{} of {} from {} until {}",
        r.id,
        r.owner,
        local(r.starts_at.as_ref()),
        local(r.ends_at.as_ref())
    );
    if !r.reason.is_empty() {
        text.push_str(&format!(" ({})", r.reason));
    }
    text
}

fn usage(message: String) -> CliError {
    CliError::new(Exit::Usage, anyhow::anyhow!(message))
}

/// Runs `reserve`.
pub async fn reserve(mut session: Session, args: ReserveArgs) -> CliResult {
    let now = SystemTime::now();
    let tz = args.tz.as_deref();
    let starts_at = match &args.from {
        Some(when) => Some(parse_when(when, tz, now).map_err(usage)?),
        None => None,
    };
    let ends_at = match (&args.until, args.for_) {
        (Some(when), _) => parse_when(when, tz, now).map_err(usage)?,
        (None, Some(length)) => starts_at
            .unwrap_or(now)
            .checked_add(length)
            .ok_or_else(|| usage("--for is too long".into()))?,
        (None, None) => return Err(usage("give --until WHEN or --for DURATION".into())),
    };
    let principal = session.settings.principal.clone();
    let client = session.client().await?;
    let response = client
        .reserve(pb::ReserveRequest {
            resource: args.resource.clone(),
            starts_at: starts_at.map(Into::into),
            ends_at: Some(ends_at.into()),
            reason: args.reason,
            principal: client.declared_principal(&principal),
        })
        .await?;
    match (
        response.reserved,
        response.reservation,
        response.overlapping,
    ) {
        (true, Some(r), _) => {
            out(&format!("{}\n", r.id))?;
            note(&format!("Reserved {}: {}", args.resource, describe(&r)));
            Ok(Exit::Success)
        }
        (_, _, Some(other)) => {
            note(&format!(
                "Reservation overlaps another on {}: {}",
                args.resource,
                describe(&other)
            ));
            Ok(Exit::Held)
        }
        _ => Err(CliError::new(
            Exit::Failure,
            anyhow::anyhow!("stormlockd answered neither a reservation nor an overlap"),
        )),
    }
}

/// Runs `unreserve`.
pub async fn unreserve(mut session: Session, args: UnreserveArgs) -> CliResult {
    let principal = session.settings.principal.clone();
    let client = session.client().await?;
    let response = client
        .unreserve(pb::UnreserveRequest {
            resource: args.resource.clone(),
            id: args.id.clone(),
            reason: args.reason,
            principal: client.declared_principal(&principal),
        })
        .await?;
    match response.cancelled {
        Some(r) => {
            note(&format!("Cancelled reservation {}", describe(&r)));
            Ok(Exit::Success)
        }
        None => {
            note(&format!(
                "no reservation {} on {} (it ended, or was cancelled already)",
                args.id, args.resource
            ));
            Ok(Exit::NotHeld)
        }
    }
}

/// One line of `reservations -f json`.
#[derive(Serialize)]
struct Row {
    kind: &'static str,
    resource: String,
    id: String,
    owner: Option<String>,
    reason: String,
    starts_at: Option<String>,
    ends_at: Option<String>,
    schedule: Option<String>,
}

/// Runs `reservations`.
pub async fn list(mut session: Session, args: ReservationsArgs) -> CliResult {
    let client = session.client().await?;
    let prefix = args.prefix.unwrap_or_default();
    let response = client
        .list_reservations(pb::ListReservationsRequest {
            prefix: prefix.clone(),
        })
        .await?;
    let mut rows: Vec<Row> = response
        .freezes
        .iter()
        .map(|f| {
            let window = f.window.clone().unwrap_or_default();
            Row {
                kind: "freeze",
                resource: f.patterns.join(" "),
                id: window.name.clone(),
                owner: None,
                reason: window.reason.clone(),
                starts_at: rfc3339(window.starts_at.as_ref()),
                ends_at: rfc3339(window.ends_at.as_ref()),
                schedule: (!f.schedule.is_empty()).then(|| f.schedule.clone()),
            }
        })
        .collect();
    rows.extend(response.reservations.iter().map(|r| Row {
        kind: "reservation",
        resource: r.resource.clone(),
        id: r.id.clone(),
        owner: Some(r.owner.clone()),
        reason: r.reason.clone(),
        starts_at: rfc3339(r.starts_at.as_ref()),
        ends_at: rfc3339(r.ends_at.as_ref()),
        schedule: None,
    }));
    match args.format {
        ListFormat::Json => out(&format!("{}\n", python_json(&rows)))?,
        ListFormat::Table if rows.is_empty() => match prefix.as_str() {
            "" => note("no reservations and no freezes"),
            prefix => note(&format!("no reservations and no freezes under {prefix}")),
        },
        ListFormat::Table => out(&table(&response))?,
    }
    Ok(Exit::Success)
}

/// The table: freezes first (their next occurrence), then reservations by
/// resource and start.
fn table(response: &pb::ListReservationsResponse) -> String {
    let mut lines: Vec<[String; 6]> = vec![[
        "RESOURCE".into(),
        "WINDOW".into(),
        "OWNER".into(),
        "FROM".into(),
        "UNTIL".into(),
        "REASON".into(),
    ]];
    for f in &response.freezes {
        let window = f.window.clone().unwrap_or_default();
        let (from, until) = match &f.window {
            Some(w) => (local(w.starts_at.as_ref()), local(w.ends_at.as_ref())),
            None => ("(over)".into(), "-".into()),
        };
        lines.push([
            f.patterns.join(" "),
            describe_window_name(&window),
            "-".into(),
            from,
            until,
            window.reason.clone(),
        ]);
    }
    for r in &response.reservations {
        lines.push([
            r.resource.clone(),
            format!("reservation {}", r.id),
            r.owner.clone(),
            local(r.starts_at.as_ref()),
            local(r.ends_at.as_ref()),
            r.reason.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for line in &lines {
        for (i, width) in widths.iter().enumerate() {
            text.push_str(&format!("{:<width$}  ", line[i]));
        }
        text.push_str(&line[5]);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        SystemTime::from(DateTime::parse_from_rfc3339(text).expect("time"))
    }

    #[test]
    fn when_takes_rfc3339_local_times_in_a_zone_and_offsets() {
        let now = at("2026-12-01T10:00:00Z");
        assert_eq!(
            parse_when("2026-12-24T14:00:00+01:00", None, now),
            Ok(at("2026-12-24T13:00:00Z"))
        );
        assert_eq!(
            parse_when("2026-12-24 14:00", Some("Europe/Berlin"), now),
            Ok(at("2026-12-24T13:00:00Z"))
        );
        assert_eq!(
            parse_when("2026-07-24 14:00:30", Some("Europe/Berlin"), now),
            Ok(at("2026-07-24T12:00:30Z")),
            "summer time"
        );
        assert_eq!(parse_when("+2h", None, now), Ok(at("2026-12-01T12:00:00Z")));
        assert_eq!(
            parse_when("+1d12h", None, now),
            Ok(at("2026-12-02T22:00:00Z"))
        );
    }

    #[test]
    fn when_refuses_what_it_cannot_read_saying_what_to_write() {
        let now = SystemTime::now();
        for (text, zone, expect) in [
            ("tomorrow", None, "RFC 3339"),
            ("2026-12-24", None, "YYYY-MM-DD HH:MM"),
            ("2026-12-24 14:00", Some("Mars/Olympus"), "IANA"),
            ("+soon", None, "+soon"),
            // Skipped by the spring clock change in Berlin.
            ("2026-03-29 02:30", Some("Europe/Berlin"), "does not exist"),
        ] {
            let err = parse_when(text, zone, now).expect_err(text);
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
