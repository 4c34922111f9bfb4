//! `release`: give a lease back. Idempotent, like Python stormlock: a lease
//! that was no longer current is noted on stderr, and the exit is still 0.

use stormlock_api::pb;

use super::{Session, lease_id, note};
use crate::args::LeaseArgs;
use crate::error::{CliResult, Exit};

/// Runs `release`.
pub async fn run(mut session: Session, args: LeaseArgs) -> CliResult {
    let lease_id = lease_id(args.lease_id)?;
    let client = session.client().await?;
    let response = client
        .release(pb::ReleaseRequest {
            resource: args.resource.clone(),
            lease_id,
        })
        .await?;
    if !response.released {
        note(&format!(
            "stormlock: the lease on {} was not current (expired, released or replaced): \
             nothing to release",
            args.resource
        ));
    }
    Ok(Exit::Success)
}
