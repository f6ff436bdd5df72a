//! What a storage backend reports when a query fails, in the terms the rest
//! of orch acts on: the database was busy past its timeout (retry later, exit
//! 75), or anything else. Domain code matches on these, never on a backend's
//! own error type, so that a second backend reports the same way
//! (docs/scaling.md, "The storage boundary").

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database stayed locked past the busy timeout (SQLite's
    /// `SQLITE_BUSY`/`SQLITE_LOCKED`; on PostgreSQL a serialization failure,
    /// a deadlock, a lock not available or an unreachable server): retry
    /// later.
    #[error("the database stayed locked past the busy timeout; retry later")]
    Busy(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Any other failure of the backend, as it described it.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// The result of a storage operation.
pub type Result<T> = std::result::Result<T, Error>;

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Error {
        let busy = matches!(&err, rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked));
        if busy {
            Error::Busy(Box::new(err))
        } else {
            Error::Backend(Box::new(err))
        }
    }
}

/// PostgreSQL's failures in the same terms: what a retry later can cure is
/// [`Error::Busy`]. That is a serialization failure (`40001`), a deadlock
/// the server broke (`40P01`), a lock not available (`55P03`, `NOWAIT` or
/// `lock_timeout`), and not reaching the server at all: the connection
/// refused, timed out, reset or closed (the client's I/O errors), a
/// connection exception (class `08`), or a server shutting down or starting
/// up (`57P01`–`57P03`). Everything else (a constraint refused, bad SQL, a
/// wrong password) is [`Error::Backend`].
impl From<postgres::Error> for Error {
    fn from(err: postgres::Error) -> Error {
        if is_pg_transient(&err) {
            Error::Busy(Box::new(err))
        } else {
            Error::Backend(Box::new(err))
        }
    }
}

fn is_pg_transient(err: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    if let Some(code) = err.code() {
        return [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .contains(code)
            || code.code().starts_with("08");
    }
    // No SQLSTATE: the client's own failure. Connecting, reading and
    // writing fail with an I/O error as the cause; a dropped connection is
    // "closed".
    let io =
        std::error::Error::source(err).is_some_and(<dyn std::error::Error>::is::<std::io::Error>);
    err.is_closed() || io
}

impl Error {
    /// Whether the database was busy: the operation can be retried later.
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy(_))
    }
}
