//! `force-release`: break whatever lease holds a resource (administrators).

use stormlock_api::pb;

use super::{Session, note, out};
use crate::args::{ForceReleaseArgs, LeaseFormat};
use crate::error::{CliResult, Exit};
use crate::output::LeaseRecord;

/// Runs `force-release`.
pub async fn run(mut session: Session, args: ForceReleaseArgs) -> CliResult {
    let client = session.client().await?;
    let response = client
        .force_release(pb::ForceReleaseRequest {
            resource: args.resource.clone(),
            reason: args.reason,
        })
        .await?;
    match response.released {
        // Not a command of Python stormlock's: every field of what was broken.
        Some(lease) => {
            let record = LeaseRecord::from(&lease);
            out(&format!(
                "Force-released {}:\n{}",
                args.resource,
                record.render(LeaseFormat::Long)
            ))?;
            Ok(Exit::Success)
        }
        None => {
            note(&format!(
                "no lock held on {}: nothing to release",
                args.resource
            ));
            Ok(Exit::NotHeld)
        }
    }
}
