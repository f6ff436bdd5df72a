//! What a storage backend reports when a query fails, in the terms the rest
//! of orch acts on: the database was busy past its timeout (retry later, exit
//! 75), or anything else. Domain code matches on these, never on a backend's
//! own error type, so that a second backend reports the same way
//! (docs/scaling.md, "The storage boundary").

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database stayed locked past the busy timeout (SQLite's
    /// `SQLITE_BUSY`/`SQLITE_LOCKED`): retry later.
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

impl Error {
    /// Whether the database was busy: the operation can be retried later.
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy(_))
    }
}
