//! The few error kinds whose *kind* changes what the caller should do, and the
//! exit code each one maps to.
//!
//! Everything else travels as `anyhow::Error` with context; `main` walks the
//! chain once, finds the first [`OrchError`] (if any) and exits with its code.
//! The codes follow sysexits(3) where one fits and are documented in
//! `orch(1)` and `docs/exit-codes.md`.

use std::process::ExitCode;

/// Process exit codes users script against (docs/exit-codes.md).
pub mod exit {
    /// The command did what it was asked.
    pub const OK: u8 = 0;
    /// The command failed; the message says why.
    pub const FAILURE: u8 = 1;
    /// The command line was wrong (unknown flag, unknown repo, bad value).
    pub const USAGE: u8 = 2;
    /// Nothing to do: `orch claim` found no claimable job.
    pub const NOTHING_TO_DO: u8 = 3;
    /// Malformed input data (EX_DATAERR): a payload or file that cannot be parsed.
    pub const MALFORMED: u8 = 65;
    /// I/O error (EX_IOERR): `ingest-webhook --inetd` could not write its
    /// answer (the client closed or reset the connection).
    pub const IO: u8 = 74;
    /// Temporary failure (EX_TEMPFAIL): retry later, nothing was changed.
    pub const TEMPORARY: u8 = 75;
    /// Signature rejected (EX_NOPERM): a webhook whose HMAC does not verify.
    pub const SIGNATURE: u8 = 77;
    /// Configuration error (EX_CONFIG): the config file or an `ORCH_*` variable is invalid.
    pub const CONFIG: u8 = 78;
}

/// An error whose kind decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum OrchError {
    /// Bad command-line usage that clap could not catch (unknown repo, bad id).
    #[error("{0}")]
    Usage(String),
    /// A task, job or other record that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The configuration file or environment is invalid.
    #[error("{0}")]
    Config(String),
    /// Input data that cannot be parsed.
    #[error("{0}")]
    Malformed(String),
    /// A temporary condition (database busy, network down): retry later.
    #[error("{0}")]
    Temporary(String),
    /// A webhook signature did not verify.
    #[error("{0}")]
    Signature(String),
    /// There was nothing to do (no claimable job).
    #[error("{0}")]
    NothingToDo(String),
    /// An answer could not be written to the peer (a webhook client that
    /// went away).
    #[error("{0}")]
    AnswerLost(String),
}

impl OrchError {
    /// The exit code this kind of error maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            OrchError::Usage(_) => exit::USAGE,
            OrchError::NotFound(_) => exit::FAILURE,
            OrchError::Config(_) => exit::CONFIG,
            OrchError::Malformed(_) => exit::MALFORMED,
            OrchError::Temporary(_) => exit::TEMPORARY,
            OrchError::Signature(_) => exit::SIGNATURE,
            OrchError::NothingToDo(_) => exit::NOTHING_TO_DO,
            OrchError::AnswerLost(_) => exit::IO,
        }
    }
}

/// Map any error chain to the exit code of its first classified cause.
///
/// A database that stayed busy past the busy timeout is a temporary failure
/// even when nobody wrapped it in [`OrchError::Temporary`].
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    ExitCode::from(exit_code_number(err))
}

/// [`exit_code_for`] as a number, for callers that map it further (HTTP statuses).
pub fn exit_code_number(err: &anyhow::Error) -> u8 {
    // `downcast_ref` looks through every context layer, not just the outermost.
    if let Some(e) = err.downcast_ref::<OrchError>() {
        return e.exit_code();
    }
    for cause in err.chain() {
        if cause
            .downcast_ref::<crate::storage::Error>()
            .is_some_and(crate::storage::Error::is_busy)
        {
            return exit::TEMPORARY;
        }
        if let Some(rusqlite::Error::SqliteFailure(e, _)) = cause.downcast_ref::<rusqlite::Error>()
            && matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
        {
            return exit::TEMPORARY;
        }
    }
    exit::FAILURE
}
