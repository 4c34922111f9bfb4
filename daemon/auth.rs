//! Who is calling: the principal from the client certificate when there is
//! one, else the declared principal when the daemon authenticates nobody.

use std::collections::HashSet;

use tonic::Request;

use crate::error::Error;
use crate::tls::{IdentitySource, identity_from_der};
use crate::validate;

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal the request acts as.
    pub principal: String,
    /// May force-release and see every lease id.
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see the id of a lease held by `holder`.
    pub fn may_see_lease_of(&self, holder: &str) -> bool {
        self.admin || self.principal == holder
    }
}

/// How callers are identified.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Which certificate field names the principal.
    pub identity: IdentitySource,
    /// Principals with administrator rights.
    pub admins: HashSet<String>,
}

/// Principal used when a plaintext daemon's caller declares none.
pub const ANONYMOUS: &str = "anonymous";

impl Auth {
    /// Identifies the caller of `request`, which declared `declared` (may be
    /// empty). A certificate's identity wins; a declared principal that
    /// differs from it is refused rather than silently replaced.
    pub fn caller<T>(&self, request: &Request<T>, declared: &str) -> Result<Caller, Error> {
        let declared = validate::principal(declared)?;
        let certified = request.peer_certs().and_then(|certs| {
            certs
                .first()
                .and_then(|c| identity_from_der(c.as_ref(), self.identity))
        });
        let principal = match certified {
            Some(identity) => {
                if !declared.is_empty() && declared != identity {
                    return Err(Error::PermissionDenied(format!(
                        "declared principal {declared:?} differs from the certificate's identity {identity:?}"
                    )));
                }
                identity
            }
            None if request.peer_certs().is_some() => {
                return Err(Error::Unauthenticated(format!(
                    "the client certificate has no {:?} identity",
                    self.identity
                )));
            }
            None if declared.is_empty() => ANONYMOUS.to_string(),
            None => declared.to_string(),
        };
        Ok(Caller {
            admin: self.admins.contains(&principal),
            principal,
        })
    }
}
