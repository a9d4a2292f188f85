//! rusqlite errors in storage terms.

use carelayer_store::StoreError;
use rusqlite::ErrorCode;

/// Busy/locked (another process holds the file past `busy_timeout`) and I/O
/// trouble are `Unavailable`: retrying later may succeed. A constraint
/// violation can only come from two writers racing for the same version, which
/// is a conflict. Everything else is a broken invariant.
pub(crate) fn sql_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::ReadOnly => StoreError::Unavailable(e.to_string()),
            ErrorCode::ConstraintViolation => {
                StoreError::PreconditionFailed(format!("conflicting write: {e}"))
            }
            _ => StoreError::Other(e.to_string()),
        },
        _ => StoreError::Other(e.to_string()),
    }
}

/// The writer thread or reader pool has gone away.
pub(crate) fn gone() -> StoreError {
    StoreError::Unavailable("the SQLite store is closed or its writer stopped".into())
}
