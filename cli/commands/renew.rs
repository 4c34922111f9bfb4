//! `renew`: extend a lease; "Lock expired" and exit 3 when it is not current.

use stormlock_api::pb;

use super::{Session, lease_id, note, proto_duration};
use crate::args::RenewArgs;
use crate::error::{CliResult, Exit};

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
        Ok(_) => Ok(Exit::Success),
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
