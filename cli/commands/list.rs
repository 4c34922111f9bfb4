//! `list`: every held lock, optionally under a prefix, fetched page by page.

use std::io::IsTerminal;
use std::time::SystemTime;

use stormlock_api::pb;
use unicode_width::UnicodeWidthStr;

use super::{Session, note, out};
use crate::args::{ListArgs, ListFormat};
use crate::error::{CliError, CliResult, Exit};
use crate::output::{LeaseRecord, python_json, since, system_time, truncate};

/// Runs `list`.
pub async fn run(mut session: Session, args: ListArgs) -> CliResult {
    let client = session.client().await?;
    let prefix = args.prefix.or(args.prefix_option).unwrap_or_default();
    let mut leases = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                prefix: prefix.clone(),
                page_size: 0,
                page_token: page_token.clone(),
            })
            .await?;
        leases.extend(page.leases);
        if page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token == page_token {
            return Err(CliError::new(
                Exit::Failure,
                anyhow::anyhow!("stormlockd returned the same page token twice"),
            ));
        }
        page_token = page.next_page_token;
    }
    match args.format {
        ListFormat::Json => {
            let records: Vec<LeaseRecord> = leases.iter().map(LeaseRecord::from).collect();
            out(&format!("{}\n", python_json(&records)))?;
        }
        ListFormat::Table if leases.is_empty() => match prefix.as_str() {
            "" => note("no locks held"),
            prefix => note(&format!("no locks held under {prefix}")),
        },
        ListFormat::Table => out(&table(&leases, SystemTime::now(), table_width()))?,
    }
    if args.format == ListFormat::Table {
        // The windows in force under the prefix: what refuses acquirers
        // that no lease explains. A daemon without windows answers nothing.
        if let Ok(windows) = client
            .list_reservations(pb::ListReservationsRequest {
                prefix: prefix.clone(),
            })
            .await
        {
            let text = windows_in_force(&windows, SystemTime::now());
            if !text.is_empty() {
                out(&text)?;
            }
        }
    }
    Ok(Exit::Success)
}

/// "Windows in force:" and one line per freeze or reservation in force at
/// `now`; empty when there is none.
fn windows_in_force(windows: &pb::ListReservationsResponse, now: SystemTime) -> String {
    let in_force = |w: &pb::Window| {
        system_time(w.starts_at.as_ref()).is_some_and(|s| s <= now)
            && system_time(w.ends_at.as_ref()).is_some_and(|e| now < e)
    };
    let mut lines: Vec<(String, String)> = Vec::new();
    for freeze in &windows.freezes {
        if let Some(w) = freeze.window.as_ref().filter(|w| in_force(w)) {
            lines.push((freeze.patterns.join(" "), describe_in_force(w)));
        }
    }
    for r in &windows.reservations {
        let window = pb::Window {
            kind: pb::window::Kind::Reservation.into(),
            name: r.id.clone(),
            owner: r.owner.clone(),
            resource: r.resource.clone(),
            reason: r.reason.clone(),
            starts_at: r.starts_at,
            ends_at: r.ends_at,
        };
        if in_force(&window) {
            lines.push((r.resource.clone(), describe_in_force(&window)));
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    let width = lines
        .iter()
        .map(|(what, _)| what.width())
        .max()
        .unwrap_or(0);
    let mut text = String::from("\nWindows in force:\n");
    for (what, window) in lines {
        let pad = width.saturating_sub(what.width());
        text.push_str(&format!("  {what}{}  {window}\n", " ".repeat(pad)));
    }
    text
}

/// `reservation 1a2b3c4d of alice until 2026-12-02 16:00 +01:00 (load test)`.
fn describe_in_force(window: &pb::Window) -> String {
    let mut text = format!(
        "{} until {}",
        super::acquire::describe_window_name(window),
        super::reserve::local(window.ends_at.as_ref())
    );
    if !window.reason.is_empty() {
        text.push_str(&format!(" ({})", window.reason));
    }
    text
}

/// The width to fit the table to: only at a terminal, where it is
/// `$COLUMNS` when set (as `ls` reads it), else the terminal's own width.
/// Through a pipe or into a file the table is never cut, whatever `$COLUMNS`
/// says: scripts get every line whole.
fn table_width() -> Option<usize> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
        .or_else(|| terminal_size::terminal_size_of(stdout).map(|(w, _)| usize::from(w.0)))
}

const HEADERS: [&str; 6] = [
    "RESOURCE",
    "PRINCIPAL",
    "REASON",
    "HELD FOR",
    "EXPIRES IN",
    "FENCE",
];
const RESOURCE: usize = 0;
const PRINCIPAL: usize = 1;
const REASON: usize = 2;
const HELD_FOR: usize = 3;
const EXPIRES_IN: usize = 4;
const FENCE: usize = 5;
const GAP: usize = 2;
/// The width a reason keeps before it is cut: other columns give way first.
const READABLE_REASON: usize = 40;
/// The least a reason is cut to, whatever the terminal.
const LEAST_REASON: usize = 8;
/// The least a principal or resource name is cut to.
const LEAST_NAME: usize = 6;

/// How a column gives way on a narrow terminal.
#[derive(Clone, Copy)]
enum Step {
    /// The column goes.
    Drop(usize),
    /// The column is cut to at most this width.
    Narrow(usize, usize),
}

/// What gives way, in order, before the reason is cut below
/// [`READABLE_REASON`]: the fence and how long the lease has been held (the
/// least telling for someone deciding whether to wait), then principals and
/// resource names (cut with "…"), then when the lease expires, then
/// principals and names further.
const STEPS: [Step; 7] = [
    Step::Drop(FENCE),
    Step::Drop(HELD_FOR),
    Step::Narrow(PRINCIPAL, 16),
    Step::Narrow(RESOURCE, 24),
    Step::Drop(EXPIRES_IN),
    Step::Narrow(PRINCIPAL, 10),
    Step::Narrow(RESOURCE, 12),
];

/// The widths of the columns shown (`None`: dropped), for cells that are
/// `natural` wide at most, within `limit` columns when given.
fn layout(natural: [usize; 6], limit: Option<usize>) -> [Option<usize>; 6] {
    let mut widths = natural.map(Some);
    let Some(limit) = limit else {
        return widths;
    };
    let total = |widths: &[Option<usize>; 6], reason: usize| {
        let shown: Vec<usize> = widths
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.map(|w| if i == REASON { reason } else { w }))
            .collect();
        shown.iter().sum::<usize>() + GAP * shown.len().saturating_sub(1)
    };
    let readable = natural[REASON].min(READABLE_REASON);
    for step in STEPS {
        if total(&widths, readable) <= limit {
            break;
        }
        match step {
            Step::Drop(column) => widths[column] = None,
            Step::Narrow(column, most) => {
                widths[column] = widths[column].map(|w| w.min(most));
            }
        }
    }
    // The reason takes whatever is left, up to its whole length.
    let others = total(&widths, 0);
    let room = limit.saturating_sub(others);
    widths[REASON] = Some(
        natural[REASON]
            .min(room)
            .max(LEAST_REASON.min(natural[REASON])),
    );
    // Narrower still than all that: names give the rest, down to a few
    // characters.
    let mut excess = total(&widths, widths[REASON].unwrap_or(0)).saturating_sub(limit);
    for column in [PRINCIPAL, RESOURCE] {
        if let Some(w) = widths[column] {
            let give = excess.min(w.saturating_sub(LEAST_NAME));
            widths[column] = Some(w - give);
            excess -= give;
        }
    }
    widths
}

/// Renders leases as a table, at most `width` columns wide when given (see
/// [`layout`]).
pub fn table(leases: &[pb::Lease], now: SystemTime, width: Option<usize>) -> String {
    let now = Some(now);
    let rows: Vec<[String; 6]> = leases
        .iter()
        .map(|l| {
            [
                l.resource.clone(),
                l.principal.clone(),
                l.reason.clone(),
                since(system_time(l.acquired_at.as_ref()), now),
                since(now, system_time(l.expires_at.as_ref())),
                l.fence.to_string(),
            ]
        })
        .collect();
    let mut natural = HEADERS.map(UnicodeWidthStr::width);
    for row in &rows {
        for (w, cell) in natural.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    let widths = layout(natural, width);
    let shown: Vec<(usize, usize)> = widths
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.map(|w| (i, w)))
        .collect();
    let mut text = String::new();
    let headers = HEADERS.map(str::to_string);
    for row in std::iter::once(&headers).chain(&rows) {
        let mut line = String::new();
        for (n, &(column, w)) in shown.iter().enumerate() {
            if n > 0 {
                line.push_str(&" ".repeat(GAP));
            }
            let cell = truncate(&row[column], w);
            let pad = " ".repeat(w - cell.width());
            if column == FENCE {
                // Numbers align right.
                line.push_str(&pad);
                line.push_str(&cell);
            } else {
                line.push_str(&cell);
                line.push_str(&pad);
            }
        }
        // Nothing trails the last column.
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lease(resource: &str, principal: &str, reason: &str, fence: u64) -> pb::Lease {
        pb::Lease {
            resource: resource.into(),
            lease_id: String::new(),
            principal: principal.into(),
            reason: reason.into(),
            acquired_at: Some(prost_types::Timestamp {
                seconds: 1000,
                nanos: 0,
            }),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1000 + 7200,
                nanos: 0,
            }),
            fence,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + 90)
    }

    #[test]
    fn natural_widths_off_a_terminal() {
        let leases = [
            lease("deploy/prod", "alice@host", "release 1.2", 12),
            lease("db", "bob", "", 3),
        ];
        let text = table(&leases, now(), None);
        assert_eq!(
            text,
            "RESOURCE     PRINCIPAL   REASON       HELD FOR  EXPIRES IN  FENCE\n\
             deploy/prod  alice@host  release 1.2  1m30s     1h58m30s       12\n\
             db           bob                      1m30s     1h58m30s        3\n"
        );
    }

    #[test]
    fn narrow_terminals_keep_the_reason_readable() {
        let reason = "a very long reason that goes on and on, and on and on until it stops";
        let leases = [
            lease("deploy/prod", "alice@host", reason, 12),
            lease("db", "bob", "", 3),
        ];
        let at = |width: usize| {
            let text = table(&leases, now(), Some(width));
            for line in text.lines() {
                assert!(line.width() <= width, "{line:?} is {} wide", line.width());
            }
            text
        };
        // 80 columns: the fence and "held for" go; names and the time left
        // stay whole, and the reason keeps more than READABLE_REASON.
        let text = at(80);
        let header = text.lines().next().unwrap_or_default();
        assert_eq!(header.split_whitespace().next(), Some("RESOURCE"));
        assert!(
            !header.contains("FENCE") && !header.contains("HELD FOR"),
            "{text}"
        );
        assert!(header.contains("EXPIRES IN"), "{text}");
        assert!(text.contains("deploy/prod  alice@host  a very long reason that goes on and on"));
        assert!(text.contains('…'), "{text}");
        // Wide enough: nothing goes.
        assert_eq!(
            at(200),
            table(&leases, now(), None),
            "{}",
            table(&leases, now(), None)
        );
        // 60: only the resource, principal and reason are left.
        assert!(at(60).contains("deploy/prod  alice@host  a very long reason that goes on an…\n"));
        let narrow = at(40);
        assert!(narrow.contains("deploy/prod"), "{narrow}");
        assert!(narrow.contains("a very long"), "{narrow}");
        // Too narrow for anything: the reason keeps its least.
        let tiny = table(&leases, now(), Some(10));
        assert!(tiny.contains("a very …"), "{tiny}");
    }

    #[test]
    fn layout_gives_way_in_order() {
        // resource 11, principal 10, reason 60, held 8, expires 10, fence 5
        let natural = [11, 10, 60, 8, 10, 5];
        assert_eq!(layout(natural, None), natural.map(Some));
        let widths = layout(natural, Some(80));
        assert_eq!(widths, [Some(11), Some(10), Some(43), None, Some(10), None]);
        // Narrower: EXPIRES IN goes too before the reason drops below 40.
        let widths = layout(natural, Some(64));
        assert_eq!(widths, [Some(11), Some(10), Some(39), None, None, None]);
    }
}
