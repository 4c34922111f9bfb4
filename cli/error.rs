//! Exit statuses and the one table that maps failures to them.
//!
//! | exit | meaning                                   | from                                         |
//! |------|-------------------------------------------|----------------------------------------------|
//! | 0    | success                                   |                                              |
//! | 1    | not held / resource free                  | `is-held`, `current`, `force-release`        |
//! | 2    | held by another                           | `acquire`                                    |
//! | 3    | lease not current                         | `FAILED_PRECONDITION`, `NOT_FOUND`           |
//! | 4    | daemon or backend unreachable             | connect/TLS-less failures, timeouts, `UNAVAILABLE`, `DEADLINE_EXCEEDED` |
//! | 5    | not authenticated or not allowed          | `UNAUTHENTICATED`, `PERMISSION_DENIED`, refused TLS identity |
//! | 64   | usage error                               | bad flags or config, `INVALID_ARGUMENT`, `OUT_OF_RANGE` |
//! | 70   | the daemon failed in an unexpected way    | `INTERNAL`, `UNKNOWN`, `UNIMPLEMENTED`, …    |

use std::fmt;
use std::process::ExitCode;

use tonic::Code;

/// What the process tells its caller, as documented in DESIGN §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything worked.
    Success = 0,
    /// The lease is not held, or the resource is free.
    NotHeld = 1,
    /// Someone else holds the resource.
    Held = 2,
    /// The lease is no longer current (expired, released or broken).
    NotCurrent = 3,
    /// The daemon or its backend could not be reached in time.
    Unreachable = 4,
    /// The daemon did not accept who we are or what we asked.
    Denied = 5,
    /// The command line, the environment or the config file is wrong.
    Usage = 64,
    /// The daemon answered with an error no other status describes
    /// (sysexits' `EX_SOFTWARE`); never 1, which scripts read as "not held".
    Failure = 70,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// The exit status for a gRPC status code.
pub fn exit_for_code(code: Code) -> Exit {
    match code {
        Code::Ok => Exit::Success,
        Code::InvalidArgument | Code::OutOfRange => Exit::Usage,
        Code::FailedPrecondition | Code::NotFound => Exit::NotCurrent,
        Code::Unavailable | Code::DeadlineExceeded => Exit::Unreachable,
        Code::Unauthenticated | Code::PermissionDenied => Exit::Denied,
        Code::Cancelled
        | Code::Unknown
        | Code::AlreadyExists
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => Exit::Failure,
    }
}

/// A failure of a command: what to print and how to exit.
#[derive(Debug)]
pub struct CliError {
    /// The exit status.
    pub exit: Exit,
    /// The message and its causes, printed once as `stormlock: a: b: c`.
    pub error: anyhow::Error,
}

impl CliError {
    /// A failure with its exit status.
    pub fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Self {
        Self {
            exit,
            error: error.into(),
        }
    }

    /// A usage error (exit 64) with a message.
    pub fn usage(message: impl fmt::Display) -> Self {
        Self::new(Exit::Usage, anyhow::anyhow!("{message}"))
    }

    /// Adds context in front of the message, keeping the exit status.
    pub fn context(self, context: impl fmt::Display + Send + Sync + 'static) -> Self {
        Self {
            exit: self.exit,
            error: self.error.context(context),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// Result of a command.
pub type CliResult<T = Exit> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_table() {
        let table = [
            (Code::Ok, 0),
            (Code::InvalidArgument, 64),
            (Code::OutOfRange, 64),
            (Code::FailedPrecondition, 3),
            (Code::NotFound, 3),
            (Code::Unavailable, 4),
            (Code::DeadlineExceeded, 4),
            (Code::Unauthenticated, 5),
            (Code::PermissionDenied, 5),
            (Code::Internal, 70),
            (Code::Unknown, 70),
            (Code::Unimplemented, 70),
            (Code::ResourceExhausted, 70),
            (Code::Cancelled, 70),
        ];
        for (code, exit) in table {
            assert_eq!(exit_for_code(code) as u8, exit, "{code:?}");
        }
    }

    #[test]
    fn messages_chain_once() {
        let err = CliError::usage("bad value").context("reading config");
        assert_eq!(err.to_string(), "reading config: bad value");
        assert_eq!(err.exit, Exit::Usage);
    }
}
