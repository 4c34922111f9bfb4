//! `current`: print the lease holding a resource; "no lock held" and exit 1
//! when it is free.

use stormlock_api::pb;

use super::acquire::describe_window_name;
use super::{Session, note, out};
use crate::args::{CurrentArgs, LeaseFormat};
use crate::error::{CliResult, Exit};
use crate::output::{HIDDEN, LeaseRecord, format_timestamp};

/// Runs `current`.
pub async fn run(mut session: Session, args: CurrentArgs) -> CliResult {
    let format = if args.id_only {
        LeaseFormat::Id
    } else {
        args.format
    };
    let client = session.client().await?;
    let resource = args.resource;
    let response = client
        .current(pb::CurrentRequest {
            resource: resource.clone(),
            ..Default::default()
        })
        .await?;
    // A window that would refuse us: said on stderr, so that the output a
    // script reads keeps its shape.
    if let Some(window) = &response.window {
        note(&format!(
            "stormlock: acquiring {resource} is refused until {}: {}{}",
            format_timestamp(window.ends_at.as_ref()).unwrap_or_else(|| HIDDEN.into()),
            describe_window_name(window),
            if window.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", window.reason)
            }
        ));
    }
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
