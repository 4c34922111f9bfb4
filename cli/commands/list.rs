//! `list`: every held lock, optionally under a prefix, fetched page by page.

use std::io::IsTerminal;
use std::time::SystemTime;

use stormlock_api::pb;
use unicode_width::UnicodeWidthStr;

use super::{Session, note, out};
use crate::args::{ListArgs, ListFormat};
use crate::error::{CliError, CliResult, Exit};
use crate::output::{LeaseRecord, python_json, since, system_time};

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
        ListFormat::Table => {
            // Fit a terminal, or $COLUMNS when set; never cut what goes to
            // a pipe or a file otherwise.
            let width = std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.trim().parse::<usize>().ok())
                .filter(|&c| c > 0)
                .or_else(|| {
                    std::io::stdout()
                        .is_terminal()
                        .then(|| terminal_size::terminal_size_of(std::io::stdout()))
                        .flatten()
                        .map(|(w, _)| usize::from(w.0))
                });
            out(&table(&leases, SystemTime::now(), width))?;
        }
    }
    Ok(Exit::Success)
}

const HEADERS: [&str; 6] = [
    "RESOURCE",
    "PRINCIPAL",
    "REASON",
    "HELD FOR",
    "EXPIRES IN",
    "FENCE",
];
const GAP: usize = 2;
/// Columns that give up width when the terminal is narrow, most willing
/// first, with the least each keeps.
const SHRINKABLE: [(usize, usize); 3] = [(2, 6), (1, 10), (0, 12)];

/// Renders leases as a table, at most `width` columns wide when given.
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
    let mut widths = HEADERS.map(UnicodeWidthStr::width);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    if let Some(limit) = width {
        let mut excess =
            (widths.iter().sum::<usize>() + GAP * (widths.len() - 1)).saturating_sub(limit);
        for (column, least) in SHRINKABLE {
            let give = excess.min(widths[column].saturating_sub(least));
            widths[column] -= give;
            excess -= give;
        }
    }
    let mut text = String::new();
    let headers = HEADERS.map(str::to_string);
    for row in std::iter::once(&headers).chain(&rows) {
        let last = row.len() - 1;
        for (i, (cell, &w)) in row.iter().zip(&widths).enumerate() {
            let cell = truncate(cell, w);
            let pad = " ".repeat(w - cell.width());
            if i == last {
                // Numbers align right; nothing trails the last column.
                text.push_str(&pad);
                text.push_str(&cell);
            } else {
                text.push_str(&cell);
                text.push_str(&pad);
                text.push_str(&" ".repeat(GAP));
            }
        }
        text.push('\n');
    }
    text
}

/// Cuts `text` to `width` display columns, marking the cut with "…".
fn truncate(text: &str, width: usize) -> String {
    if text.width() <= width {
        return text.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    if width > 0 {
        out.push('…');
    }
    out
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
    fn narrow_terminals_cut_reason_first() {
        let leases = [lease(
            "deploy/prod",
            "alice@host",
            "a very long reason that goes on and on",
            12,
        )];
        let text = table(&leases, now(), Some(60));
        for line in text.lines() {
            assert!(line.width() <= 60, "{line:?} is {} wide", line.width());
        }
        assert!(text.contains("alice@host"), "{text}");
        assert!(text.contains('…'), "{text}");
        // Even narrower: principal and resource give way too, down to their minimum.
        let text = table(&leases, now(), Some(20));
        assert!(
            text.lines()
                .all(|l| l.starts_with("RESOURCE") || l.starts_with("deploy/prod"))
        );
    }

    #[test]
    fn truncation_respects_display_width() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(truncate("日本語テキスト", 5), "日本…");
        assert_eq!(truncate("abc", 0), "");
    }
}
