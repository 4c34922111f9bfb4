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
//! | 70   | the daemon failed in an unexpected way    | `INTERNAL`, `UNKNOWN`, `UNIMPLEMENTED`, …; `acquire` that could not write the lease id (and released the lease) |
//!
//! `exec` passes its command's status on unchanged (128+N for a command
//! killed by signal N), so its own outcomes must not look like one: like
//! timeout(1) and env(1), it uses statuses commands rarely use, and none of
//! the ones above.
//!
//! | exit | `exec` only                               | instead of                                   |
//! |------|-------------------------------------------|----------------------------------------------|
//! | 123  | the lease was lost while the command ran, and the command was stopped | renew refused, force-released, expired |
//! | 124  | the lock is held (with or without `--wait`); the command did not run | 2                  |
//! | 125  | Stormlock failed before the command ran   | 1, 3, 4, 5, 64, 70, and bad flags or config  |
//! | 126  | the command was found but cannot be run   | as a shell                                   |
//! | 127  | the command was not found                 | as a shell                                   |
//!
//! Any command interrupted by signal N while it waits exits with 128+N, as
//! in a shell; `exec` then never ran its command.

use std::fmt;
use std::process::ExitCode;

use tonic::Code;

/// What the process tells its caller, as documented in DESIGN §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything worked.
    Success,
    /// The lease is not held, or the resource is free.
    NotHeld,
    /// Someone else holds the resource.
    Held,
    /// The lease is no longer current (expired, released or broken).
    NotCurrent,
    /// The daemon or its backend could not be reached in time.
    Unreachable,
    /// The daemon did not accept who we are or what we asked.
    Denied,
    /// The command line, the environment or the config file is wrong.
    Usage,
    /// The daemon answered with an error no other status describes
    /// (sysexits' `EX_SOFTWARE`); never 1, which scripts read as "not held".
    Failure,
    /// `exec` lost its lease and stopped its command.
    LeaseLost,
    /// `exec` found the resource held and did not run its command.
    ExecHeld,
    /// `exec` failed before its command ran (daemon or backend unreachable,
    /// refused, a usage or config error, a failure of the daemon): the status
    /// every other outcome of [`Exit`] becomes under `exec`.
    ExecFailed,
    /// `exec`'s command exists but cannot be run (as a shell says).
    CannotRun,
    /// `exec`'s command was not found (as a shell says).
    CommandNotFound,
    /// Any other status: `exec` passes its command's on, and a signal N that
    /// interrupts a wait gives 128+N, as in a shell.
    Status(u8),
}

impl Exit {
    /// The number the process exits with.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::NotHeld => 1,
            Self::Held => 2,
            Self::NotCurrent => 3,
            Self::Unreachable => 4,
            Self::Denied => 5,
            Self::Usage => 64,
            Self::Failure => 70,
            Self::LeaseLost => 123,
            Self::ExecHeld => 124,
            Self::ExecFailed => 125,
            Self::CannotRun => 126,
            Self::CommandNotFound => 127,
            Self::Status(code) => code,
        }
    }

    /// The status of a process ended by signal `signal`, as a shell reports it.
    pub fn signalled(signal: i32) -> Self {
        Self::Status(u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(u8::MAX))
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
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
    /// Who broke the lease and why, when the daemon said so (a typed
    /// detail of its FAILED_PRECONDITION answer).
    pub evicted: Option<stormlock_api::pb::LeaseEvicted>,
    /// The window that refused the call (a renewal into a freeze), when
    /// the daemon said so (a typed detail).
    pub window: Option<Box<stormlock_api::pb::Window>>,
}

impl CliError {
    /// A failure with its exit status.
    pub fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Self {
        Self {
            exit,
            error: error.into(),
            evicted: None,
            window: None,
        }
    }

    /// The same failure as `exec` reports it: Stormlock failed before the
    /// command ran (125), whatever the status of the failure elsewhere.
    pub fn in_exec(self) -> Self {
        Self {
            exit: Exit::ExecFailed,
            ..self
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
            evicted: self.evicted,
            window: self.window,
        }
    }
}

impl CliError {
    /// `force-released by ACTOR (REASON)`, when the lease was broken by an
    /// administrator.
    pub fn eviction(&self) -> Option<String> {
        self.evicted
            .as_ref()
            .map(|e| format!("force-released by {} ({})", e.actor, e.reason))
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
            assert_eq!(exit_for_code(code).code(), exit, "{code:?}");
        }
    }

    #[test]
    fn signals_and_passed_on_statuses() {
        assert_eq!(Exit::signalled(2).code(), 130);
        assert_eq!(Exit::signalled(15).code(), 143);
        assert_eq!(Exit::Status(7).code(), 7);
    }

    #[test]
    fn exec_statuses_are_apart_from_the_others() {
        assert_eq!(Exit::LeaseLost.code(), 123);
        assert_eq!(Exit::ExecHeld.code(), 124);
        assert_eq!(Exit::ExecFailed.code(), 125);
        assert_eq!(Exit::CannotRun.code(), 126);
        assert_eq!(Exit::CommandNotFound.code(), 127);
        let elsewhere = [
            Exit::Success,
            Exit::NotHeld,
            Exit::Held,
            Exit::NotCurrent,
            Exit::Unreachable,
            Exit::Denied,
            Exit::Usage,
            Exit::Failure,
        ];
        for exit in elsewhere {
            assert!(!(123..=127).contains(&exit.code()), "{exit:?}");
        }
        // Every failure reads as 125 under exec, keeping its message.
        for exit in elsewhere {
            let err = CliError::new(exit, anyhow::anyhow!("cannot connect")).in_exec();
            assert_eq!(err.exit.code(), 125, "{exit:?}");
            assert_eq!(err.to_string(), "cannot connect");
        }
    }

    #[test]
    fn the_process_exits_with_the_code() {
        for exit in [
            Exit::Success,
            Exit::Held,
            Exit::LeaseLost,
            Exit::Status(126),
        ] {
            assert_eq!(
                ExitCode::from(exit),
                ExitCode::from(exit.code()),
                "{exit:?}"
            );
        }
        assert_ne!(ExitCode::from(Exit::Held), ExitCode::SUCCESS);
        assert_eq!(Exit::signalled(1).code(), 129, "SIGHUP");
        assert_eq!(Exit::signalled(200).code(), 255, "clamped, never wrapped");
    }

    #[test]
    fn an_eviction_says_who_and_why() {
        let plain = CliError::new(Exit::NotCurrent, anyhow::anyhow!("lease is not current"));
        assert_eq!(plain.eviction(), None, "not broken by anyone");
        let broken = CliError {
            evicted: Some(stormlock_api::pb::LeaseEvicted {
                actor: "oncall".to_string(),
                reason: "incident 7".to_string(),
            }),
            ..plain
        };
        assert_eq!(
            broken.eviction().as_deref(),
            Some("force-released by oncall (incident 7)")
        );
        let kept = broken.context("renewing");
        assert_eq!(kept.exit, Exit::NotCurrent);
        assert!(kept.eviction().is_some(), "context keeps the eviction");
        assert_eq!(kept.to_string(), "renewing: lease is not current");
    }

    #[test]
    fn messages_chain_once() {
        let err = CliError::usage("bad value").context("reading config");
        assert_eq!(err.to_string(), "reading config: bad value");
        assert_eq!(err.exit, Exit::Usage);
    }
}
