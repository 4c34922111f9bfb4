//! `is-held`: exit 0 when the lease is current, 1 when it is not. Failures
//! to ask have their own statuses (4, 5, …), never 1.

use stormlock_api::pb;

use super::{Session, lease_id, note};
use crate::args::LeaseArgs;
use crate::error::{CliResult, Exit};

/// Runs `is-held`.
pub async fn run(mut session: Session, args: LeaseArgs) -> CliResult {
    let lease_id = lease_id(args.lease_id)?;
    let client = session.client().await?;
    let response = client
        .is_held(pb::IsHeldRequest {
            resource: args.resource,
            lease_id,
        })
        .await;
    match response {
        Ok(response) if response.held => Ok(Exit::Success),
        Ok(_) => Ok(Exit::NotHeld),
        // The daemon tells an evicted holder who broke its lease.
        Err(err) if err.exit == Exit::NotCurrent => {
            if let Some(detail) = err.eviction() {
                note(&detail);
            }
            Ok(Exit::NotHeld)
        }
        Err(err) => Err(err),
    }
}
