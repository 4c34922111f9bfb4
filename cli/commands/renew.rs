//! `renew`: extend a lease; "Lock expired" and exit 3 when it is not current.

use stormlock_api::pb;

use std::time::SystemTime;

use super::acquire::{describe_window, describe_window_name};
use super::{Session, lease_id, note, proto_duration};
use crate::args::RenewArgs;
use crate::error::{CliError, CliResult, Exit};
use crate::output::{HIDDEN, format_timestamp};

/// Runs `renew`.
pub async fn run(mut session: Session, args: RenewArgs) -> CliResult {
    // Without `-t` the daemon renews for the lease's own TTL: the config
    // file's `ttl` is the default of new leases, not of renewals.
    let request = pb::RenewRequest {
        resource: args.lease.resource,
        lease_id: lease_id(args.lease.lease_id)?,
        ttl: args.ttl.map(|t| proto_duration("TTL", t)).transpose()?,
    };
    let client = session.client().await?;
    match client.renew(request).await {
        Ok(response) => {
            if let (Some(window), Some(lease)) = (&response.cut_short_by, &response.lease) {
                note(&format!(
                    "stormlock: the lease on {} ends at {}, when {} starts",
                    lease.resource,
                    format_timestamp(lease.expires_at.as_ref()).unwrap_or_else(|| HIDDEN.into()),
                    describe_window_name(window)
                ));
            }
            Ok(Exit::Success)
        }
        // Refused by a window: the lease stays as it was, until the window
        // starts; refused like an acquisition.
        Err(CliError {
            window: Some(window),
            ..
        }) => {
            note("Lock not renewed");
            note(&describe_window(&window, SystemTime::now()));
            Ok(Exit::Held)
        }
        Err(err) if err.exit == Exit::NotCurrent => {
            note("Lock expired");
            if let Some(detail) = err.eviction() {
                note(&detail);
            }
            Ok(Exit::NotCurrent)
        }
        Err(err) => Err(err),
    }
}
