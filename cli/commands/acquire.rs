//! `acquire`: take a lease and print its id; on contention, say who holds it.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use stormlock::pb;

use super::{Session, note, out, proto_duration};
use crate::args::AcquireArgs;
use crate::client::Client;
use crate::error::{CliError, CliResult, Exit};
use crate::output::{HIDDEN, format_timestamp, since, system_time};
use crate::spinner::Spinner;

/// Runs `acquire`.
pub async fn run(mut session: Session, args: AcquireArgs) -> CliResult {
    let ttl = args.ttl.or(session.settings.ttl);
    let wait = args.wait.unwrap_or_default();
    let request = pb::AcquireRequest {
        resource: args.resource.clone(),
        ttl: ttl.map(|t| proto_duration("TTL", t)).transpose()?,
        wait: (!wait.is_zero())
            .then(|| proto_duration("wait", wait))
            .transpose()?,
        reason: args.reason.unwrap_or_default(),
        principal: String::new(),
        ..Default::default()
    };
    let principal = session.settings.principal.clone();
    let client = session.client().await?;
    let request = pb::AcquireRequest {
        principal: client.declared_principal(&principal),
        ..request
    };
    let response = if !wait.is_zero() && std::io::stderr().is_terminal() {
        with_spinner(client, &args.resource, client.acquire(request, wait)).await?
    } else {
        client.acquire(request, wait).await?
    };
    if response.acquired {
        let id = response
            .lease
            .map(|lease| lease.lease_id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                CliError::new(
                    Exit::Failure,
                    anyhow::anyhow!("stormlockd granted the lease but sent no lease id"),
                )
            })?;
        out(&format!("{id}\n"))?;
        return Ok(Exit::Success);
    }
    note("Lock held");
    match response.holder {
        Some(holder) => note(&describe_holder(&holder, SystemTime::now())),
        None => note("Held lock not found, try again?"),
    }
    Ok(Exit::Held)
}

/// Who holds a lease, for people; never its id.
pub fn describe_holder(holder: &pb::Lease, now: SystemTime) -> String {
    let now = Some(now);
    let acquired = holder.acquired_at.as_ref();
    let expires = holder.expires_at.as_ref();
    let mut lines = vec![format!("Principal: {}", holder.principal)];
    if !holder.reason.is_empty() {
        lines.push(format!("Reason: {}", holder.reason));
    }
    lines.push(format!(
        "Since: {} ({} ago)",
        format_timestamp(acquired).unwrap_or_else(|| HIDDEN.into()),
        since(system_time(acquired), now)
    ));
    lines.push(format!(
        "Until: {} (in {})",
        format_timestamp(expires).unwrap_or_else(|| HIDDEN.into()),
        since(now, system_time(expires))
    ));
    lines.join("\n")
}

/// Shows a spinner on stderr, with the current holder once known, while the
/// daemon makes us wait.
async fn with_spinner<T>(
    client: &Client,
    resource: &str,
    call: impl Future<Output = CliResult<T>>,
) -> CliResult<T> {
    // Quick answers (the resource was free) should not flash a spinner.
    const DELAY: Duration = Duration::from_millis(300);
    let holder = client.current(pb::CurrentRequest {
        resource: resource.to_string(),
        ..Default::default()
    });
    tokio::pin!(call, holder);
    let mut holder_known = false;
    let mut label = format!("waiting for {resource}");
    let mut spinner = Spinner::new();
    let mut tick = tokio::time::interval(Spinner::TICK);
    let result = loop {
        tokio::select! {
            result = &mut call => break result,
            current = &mut holder, if !holder_known => {
                holder_known = true;
                if let Some(lease) = current.ok().and_then(|c| c.lease) {
                    label = match lease.reason.as_str() {
                        "" => format!("waiting for {resource}, held by {}", lease.principal),
                        reason => format!(
                            "waiting for {resource}, held by {} ({reason})",
                            lease.principal
                        ),
                    };
                }
            }
            _ = tick.tick() => {
                if spinner.elapsed() >= DELAY {
                    spinner.draw(&label);
                }
            }
        }
    };
    spinner.clear();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_description_never_shows_the_id() {
        let holder = pb::Lease {
            resource: "r".into(),
            lease_id: "0123456789abcdef0123456789abcdef".into(),
            principal: "bob@ops".into(),
            reason: "db migration".into(),
            acquired_at: Some(prost_types::Timestamp {
                seconds: 1_795_699_726,
                nanos: 0,
            }),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_795_699_726 + 3600,
                nanos: 0,
            }),
            fence: 7,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_699_726 + 600);
        let text = describe_holder(&holder, now);
        assert_eq!(
            text,
            "Principal: bob@ops\nReason: db migration\n\
             Since: 2026-11-26T13:28:46.000+00:00 (10m ago)\n\
             Until: 2026-11-26T14:28:46.000+00:00 (in 50m)"
        );
        assert!(!text.contains(&holder.lease_id));
    }
}
