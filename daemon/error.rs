//! The daemon's request errors and the one table that maps them to gRPC
//! status codes.

use tonic::{Code, Status};

use crate::backend::BackendError;
use crate::windows::Window;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message says which field and why.
    #[error("{0}")]
    InvalidArgument(String),
    /// No acceptable credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    PermissionDenied(String),
    /// The daemon is shutting down.
    #[error("{0}")]
    ShuttingDown(String),
    /// A per-caller limit (`[limits]`) was reached; the message names the
    /// limit, its value and its key.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A watch fell too far behind its events and was ended, so that it
    /// holds up nobody; its client should read the state again and watch
    /// again.
    #[error("{0}")]
    FellBehind(String),
    /// A window (a freeze) in force, or about to start, refuses this.
    #[error("{message}")]
    Frozen {
        /// What was refused, and the window.
        message: String,
        /// The window.
        window: Box<Window>,
    },
    /// The backend refused or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Error {
    /// An [`Error::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }
}

/// The mapping of errors to gRPC codes. A user's input can only ever lead to
/// `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `PERMISSION_DENIED`,
/// `FAILED_PRECONDITION` or (a configured limit) `RESOURCE_EXHAUSTED`;
/// `INTERNAL` means an engine returned data this daemon cannot use.
impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ShuttingDown(_) | Error::FellBehind(_) => Code::Unavailable,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Backend(BackendError::NotCurrent { .. }) | Error::Frozen { .. } => {
                Code::FailedPrecondition
            }
            Error::Backend(BackendError::Unavailable { .. } | BackendError::Config { .. }) => {
                Code::Unavailable
            }
            Error::Backend(BackendError::Internal { .. }) => Code::Internal,
        };
        let message = err.to_string();
        // Who broke a lease travels as a typed detail too.
        if let Error::Backend(BackendError::NotCurrent {
            evicted: Some(eviction),
        }) = &err
        {
            let detail = crate::pb::LeaseEvicted {
                actor: eviction.actor.clone(),
                reason: eviction.reason.clone(),
            };
            return stormlock_api::details::with_eviction(code, message, &detail);
        }
        // So does the window that refused a renewal.
        if let Error::Frozen { window, .. } = &err {
            return stormlock_api::details::with_window(code, message, &window_to_pb(window));
        }
        Status::new(code, message)
    }
}

/// A window for the wire.
pub fn window_to_pb(window: &Window) -> crate::pb::Window {
    crate::pb::Window {
        kind: match window.kind {
            crate::windows::WindowKind::Freeze => crate::pb::window::Kind::Freeze,
            crate::windows::WindowKind::Reservation => crate::pb::window::Kind::Reservation,
        }
        .into(),
        name: window.name.clone(),
        owner: window.owner.clone(),
        resource: window.resource.clone(),
        reason: window.reason.clone(),
        starts_at: Some(window.starts_at.into()),
        ends_at: Some(window.ends_at.into()),
    }
}
