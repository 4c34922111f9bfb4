//! `current`: print the lease holding a resource; "no lock held" and exit 1
//! when it is free.

use stormlock_api::pb;

use super::{Session, note, out};
use crate::args::{CurrentArgs, LeaseFormat};
use crate::error::{CliResult, Exit};
use crate::output::LeaseRecord;

/// Runs `current`.
pub async fn run(mut session: Session, args: CurrentArgs) -> CliResult {
    let format = if args.id_only {
        LeaseFormat::Id
    } else {
        args.format
    };
    let client = session.client().await?;
    let response = client
        .current(pb::CurrentRequest {
            resource: args.resource,
            ..Default::default()
        })
        .await?;
    match response.lease {
        Some(lease) => {
            out(&LeaseRecord::from(&lease).render(format))?;
            Ok(Exit::Success)
        }
        None => {
            note("no lock held");
            Ok(Exit::NotHeld)
        }
    }
}
