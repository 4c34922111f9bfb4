//! `watch`: print lock events as they happen, one line each (or JSON lines),
//! until Ctrl-C. Reconnects with backoff when the daemon or its backend goes
//! away, and says so on stderr, since events in between are missed.

use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;
use stormlock_api::pb;

use super::{Session, note};
use crate::args::{WatchArgs, WatchFormat};
use crate::client::Client;
use crate::error::{CliError, CliResult, Exit};
use crate::output::{HIDDEN, format_timestamp, python_json};
use crate::signals::Interrupts;

/// First wait before reconnecting; doubled after each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs `watch`.
pub async fn run(mut session: Session, args: WatchArgs) -> CliResult {
    let request = target(args.resource, args.prefix)?;
    let mut interrupts = Interrupts::new()?;
    tokio::select! {
        result = follow(&mut session, &request, args.format) => result,
        // Ctrl-C is how a watch ends.
        _ = interrupts.recv() => Ok(Exit::Success),
    }
}

/// What to watch: `--prefix P`, a name ending with "/" (a prefix), one
/// resource, or with neither, everything (the empty prefix).
fn target(resource: Option<String>, prefix: Option<String>) -> CliResult<pb::WatchRequest> {
    match (resource, prefix) {
        (None, None) => Ok(pb::WatchRequest::default()),
        (None, Some(prefix)) => Ok(pb::WatchRequest {
            resource: String::new(),
            prefix,
        }),
        (Some(name), None) if name.ends_with('/') => Ok(pb::WatchRequest {
            resource: String::new(),
            prefix: name,
        }),
        (Some(resource), None) => Ok(pb::WatchRequest {
            resource,
            prefix: String::new(),
        }),
        (Some(_), Some(_)) => Err(CliError::usage(
            "watch takes a RESOURCE or --prefix PREFIX, not both",
        )),
    }
}

async fn follow(
    session: &mut Session,
    request: &pb::WatchRequest,
    format: WatchFormat,
) -> CliResult {
    // Failing to connect at all is an error (a wrong address should not
    // spin); once connected, outages are waited out.
    let client = session.client().await?.clone();
    let mut backoff = FIRST_BACKOFF;
    let mut interrupted = false;
    loop {
        match stream_events(&client, request, format, interrupted).await {
            Ok(Ended::Closed) => return Ok(Exit::Success),
            Ok(Ended::Streamed) => backoff = FIRST_BACKOFF,
            Ok(Ended::NotOpened) => {}
            Err(err) => return Err(err),
        }
        interrupted = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How one watch stream ended, when it did not fail for good.
enum Ended {
    /// Standard output was closed (`watch | head -1`): done.
    Closed,
    /// Events flowed, then the connection was lost.
    Streamed,
    /// The stream could not be opened; the daemon or its backend is away.
    NotOpened,
}

async fn stream_events(
    client: &Client,
    request: &pb::WatchRequest,
    format: WatchFormat,
    reconnecting: bool,
) -> CliResult<Ended> {
    let mut stream = match client.watch(request.clone()).await {
        Ok(stream) => stream,
        Err(err) if err.exit == Exit::Unreachable => {
            if !reconnecting {
                note(&format!("stormlock: {err}; retrying"));
            }
            return Ok(Ended::NotOpened);
        }
        Err(err) => return Err(err),
    };
    if reconnecting {
        note("stormlock: watching again; events while disconnected were missed");
    }
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                if !print(&render(&event, format))? {
                    return Ok(Ended::Closed);
                }
            }
            Ok(None) => {
                note("stormlock: stormlockd ended the watch; reconnecting");
                return Ok(Ended::Streamed);
            }
            Err(status) => {
                let err = client.stream_error(status);
                if err.exit != Exit::Unreachable {
                    return Err(err);
                }
                note(&format!("stormlock: {err}; reconnecting"));
                return Ok(Ended::Streamed);
            }
        }
    }
}

/// Writes one event; `false` once nobody reads standard output any more.
fn print(text: &str) -> CliResult<bool> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::new(
            Exit::Failure,
            anyhow::Error::new(e).context("cannot write to standard output"),
        )),
    }
}

/// The event's name as printed.
fn event_name(event: &pb::WatchResponse) -> &'static str {
    match pb::EventType::try_from(event.r#type) {
        Ok(pb::EventType::Acquired) => "acquired",
        Ok(pb::EventType::Renewed) => "renewed",
        Ok(pb::EventType::Released) => "released",
        Ok(pb::EventType::Expired) => "expired",
        Ok(pb::EventType::ForceReleased) => "force-released",
        Ok(pb::EventType::FreezeStarted) => "freeze-started",
        Ok(pb::EventType::FreezeEnded) => "freeze-ended",
        Ok(pb::EventType::Reserved) => "reserved",
        Ok(pb::EventType::Unreserved) => "unreserved",
        Ok(pb::EventType::Unspecified) | Err(_) => "unknown",
    }
}

/// One event in JSON: flat, so that `jq .resource` works.
#[derive(Debug, Serialize)]
struct EventRecord<'a> {
    time: Option<String>,
    event: &'static str,
    resource: &'a str,
    principal: &'a str,
    fence: u64,
    /// The holder's reason.
    reason: &'a str,
    created: Option<String>,
    expires: Option<String>,
    /// Shown only to the holder and administrators.
    id: Option<&'a str>,
    /// Who force-released the lease.
    actor: Option<&'a str>,
    /// Why they did.
    actor_reason: Option<&'a str>,
    /// For a window event: the freeze's name or the reservation's id.
    window: Option<&'a str>,
    /// For a window event: when the window starts and ends.
    starts: Option<String>,
    ends: Option<String>,
}

/// One event as a line of text or of JSON.
fn render(event: &pb::WatchResponse, format: WatchFormat) -> String {
    if let Some(window) = &event.window {
        return render_window(event, window, format);
    }
    let lease = event.lease.clone().unwrap_or_default();
    let time = format_timestamp(event.observed_at.as_ref());
    let name = event_name(event);
    match format {
        WatchFormat::Json => {
            let record = EventRecord {
                time,
                event: name,
                resource: &lease.resource,
                principal: &lease.principal,
                fence: lease.fence,
                reason: &lease.reason,
                created: format_timestamp(lease.acquired_at.as_ref()),
                expires: format_timestamp(lease.expires_at.as_ref()),
                id: Some(lease.lease_id.as_str()).filter(|s| !s.is_empty()),
                actor: Some(event.actor.as_str()).filter(|s| !s.is_empty()),
                actor_reason: Some(event.reason.as_str()).filter(|s| !s.is_empty()),
                window: None,
                starts: None,
                ends: None,
            };
            format!("{}\n", python_json(&record))
        }
        WatchFormat::Text => {
            let mut line = format!(
                "{} {name:<14} {} {} fence={}",
                time.as_deref().unwrap_or(HIDDEN),
                lease.resource,
                or_hidden(&lease.principal),
                lease.fence
            );
            if !event.actor.is_empty() || !event.reason.is_empty() {
                line.push_str(&format!(
                    " by {}: {}",
                    or_hidden(&event.actor),
                    or_hidden(&event.reason)
                ));
            } else if !lease.reason.is_empty() {
                line.push(' ');
                line.push_str(&lease.reason);
            }
            line.push('\n');
            line
        }
    }
}

/// A window event: time, event, the resource booked (or "-" for a
/// freeze), its owner (or "-"), the window, when it ends, and why.
fn render_window(event: &pb::WatchResponse, window: &pb::Window, format: WatchFormat) -> String {
    let time = format_timestamp(event.observed_at.as_ref());
    let name = event_name(event);
    match format {
        WatchFormat::Json => {
            let record = EventRecord {
                time,
                event: name,
                resource: &window.resource,
                principal: &window.owner,
                fence: 0,
                reason: &window.reason,
                created: None,
                expires: None,
                id: None,
                actor: None,
                actor_reason: None,
                window: Some(window.name.as_str()),
                starts: format_timestamp(window.starts_at.as_ref()),
                ends: format_timestamp(window.ends_at.as_ref()),
            };
            format!("{}\n", python_json(&record))
        }
        WatchFormat::Text => {
            let mut line = format!(
                "{} {name:<14} {} {} {}",
                time.as_deref().unwrap_or(HIDDEN),
                or_hidden(&window.resource),
                or_hidden(&window.owner),
                super::acquire::describe_window_name(window),
            );
            if let Some(starts) = format_timestamp(window.starts_at.as_ref()) {
                line.push_str(&format!(" from {starts}"));
            }
            if let Some(ends) = format_timestamp(window.ends_at.as_ref()) {
                line.push_str(&format!(" until {ends}"));
            }
            if !window.reason.is_empty() {
                line.push(' ');
                line.push_str(&window.reason);
            }
            line.push('\n');
            line
        }
    }
}

fn or_hidden(text: &str) -> &str {
    if text.is_empty() { HIDDEN } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: pb::EventType, actor: &str, why: &str) -> pb::WatchResponse {
        pb::WatchResponse {
            r#type: kind as i32,
            lease: Some(pb::Lease {
                resource: "deploy/prod".into(),
                lease_id: String::new(),
                principal: "alice@host".into(),
                reason: "release 1.2".into(),
                acquired_at: Some(prost_types::Timestamp {
                    seconds: 1_795_699_726,
                    nanos: 0,
                }),
                expires_at: Some(prost_types::Timestamp {
                    seconds: 1_795_699_726 + 60,
                    nanos: 0,
                }),
                fence: 12,
            }),
            observed_at: Some(prost_types::Timestamp {
                seconds: 1_795_699_726,
                nanos: 5_000_000,
            }),
            actor: actor.into(),
            reason: why.into(),
            window: None,
        }
    }

    #[test]
    fn window_lines() {
        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let reserved = pb::WatchResponse {
            r#type: pb::EventType::Reserved as i32,
            observed_at: at(1_795_699_726),
            window: Some(pb::Window {
                kind: pb::window::Kind::Reservation as i32,
                name: "1a2b3c4d".into(),
                owner: "alice".into(),
                resource: "staging".into(),
                reason: "load test".into(),
                starts_at: at(1_795_700_000),
                ends_at: at(1_795_707_200),
            }),
            ..pb::WatchResponse::default()
        };
        assert_eq!(
            render(&reserved, WatchFormat::Text),
            "2026-11-26T13:28:46.000+00:00 reserved       staging alice reservation 1a2b3c4d \
             of alice from 2026-11-26T13:33:20.000+00:00 until 2026-11-26T15:33:20.000+00:00 \
             load test\n"
        );
        let started = pb::WatchResponse {
            r#type: pb::EventType::FreezeStarted as i32,
            observed_at: at(1_795_699_726),
            window: Some(pb::Window {
                kind: pb::window::Kind::Freeze as i32,
                name: "weekend".into(),
                reason: "ask #ops".into(),
                starts_at: at(1_795_699_726),
                ends_at: at(1_795_700_000),
                ..pb::Window::default()
            }),
            ..pb::WatchResponse::default()
        };
        let line = render(&started, WatchFormat::Text);
        assert!(
            line.starts_with("2026-11-26T13:28:46.000+00:00 freeze-started - - freeze \"weekend\""),
            "{line}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&started, WatchFormat::Json)).expect("json");
        assert_eq!(json["event"], "freeze-started");
        assert_eq!(json["window"], "weekend");
        assert_eq!(json["reason"], "ask #ops");
    }

    #[test]
    fn text_lines() {
        assert_eq!(
            render(&event(pb::EventType::Acquired, "", ""), WatchFormat::Text),
            "2026-11-26T13:28:46.005+00:00 acquired       deploy/prod alice@host fence=12 \
             release 1.2\n"
        );
        assert_eq!(
            render(
                &event(pb::EventType::ForceReleased, "oncall", "incident 7"),
                WatchFormat::Text
            ),
            "2026-11-26T13:28:46.005+00:00 force-released deploy/prod alice@host fence=12 \
             by oncall: incident 7\n"
        );
        let unknown = pb::WatchResponse {
            r#type: 99,
            ..pb::WatchResponse::default()
        };
        assert_eq!(
            render(&unknown, WatchFormat::Text),
            "- unknown         - fence=0\n"
        );
    }

    #[test]
    fn json_lines() {
        let line = render(
            &event(pb::EventType::ForceReleased, "oncall", "incident 7"),
            WatchFormat::Json,
        );
        assert!(line.ends_with("}\n") && line.lines().count() == 1, "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(value["event"], "force-released");
        assert_eq!(value["resource"], "deploy/prod");
        assert_eq!(value["fence"], 12);
        assert_eq!(value["actor"], "oncall");
        assert_eq!(value["actor_reason"], "incident 7");
        assert_eq!(value["reason"], "release 1.2");
        assert_eq!(value["id"], serde_json::Value::Null);
        assert_eq!(value["time"], "2026-11-26T13:28:46.005+00:00");
    }

    #[test]
    fn targets() {
        let t = |r: Option<&str>, p: Option<&str>| {
            target(r.map(str::to_string), p.map(str::to_string))
                .map(|w| (w.resource, w.prefix))
                .map_err(|e| e.exit)
        };
        assert_eq!(t(Some("db"), None), Ok(("db".into(), String::new())));
        assert_eq!(t(Some("team/"), None), Ok((String::new(), "team/".into())));
        assert_eq!(t(None, Some("team")), Ok((String::new(), "team".into())));
        assert_eq!(t(None, None), Ok((String::new(), String::new())));
        assert_eq!(t(Some("a"), Some("b")), Err(Exit::Usage));
    }
}
