//! Driver and pool errors in storage terms.

use carelayer_store::StoreError;
use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

/// Which PostgreSQL failures are `Unavailable` (retrying later may succeed):
/// a lost or refused connection (no SQLSTATE, or class 08), the server
/// shutting down or not accepting connections (57P0x, 53xxx: out of
/// connections, disk or memory), a statement cancelled by its timeout
/// (57014), and serialisation failures or deadlocks (40001, 40P01), which a
/// retry resolves. A unique violation can only come from two writes racing
/// for the same version or `(type, id)`: a conflict, reported like a failed
/// precondition. Everything else is a broken invariant.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection closed, an I/O error, a connect
        // timeout, or a row that did not decode. Only the last is not
        // about reachability.
        let msg = e.to_string();
        if e.is_closed() || msg.contains("error connecting") || io_source(&e) {
            return StoreError::Unavailable(msg);
        }
        return StoreError::Other(msg);
    };
    let msg = e
        .as_db_error()
        .map_or_else(|| e.to_string(), ToString::to_string);
    let class = &code.code()[..2.min(code.code().len())];
    if *code == SqlState::UNIQUE_VIOLATION {
        StoreError::PreconditionFailed(format!("conflicting write: {msg}"))
    } else if class == "08"
        || class == "53"
        || class == "57"
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
    {
        StoreError::Unavailable(msg)
    } else {
        StoreError::Other(msg)
    }
}

fn io_source(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A connection could not be had from the pool in time: `Unavailable`,
/// whatever the cause (timeout, PostgreSQL down, pool closed).
pub(crate) fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => match pg_err(e) {
            // A connect that failed with an SQLSTATE (e.g. the database does
            // not exist) still means "cannot reach the store".
            StoreError::Other(m) => StoreError::Unavailable(m),
            other => other,
        },
        other => StoreError::Unavailable(format!("PostgreSQL connection pool: {other}")),
    }
}

/// The store is closed or its writer task stopped.
pub(crate) fn gone() -> StoreError {
    StoreError::Unavailable("the PostgreSQL store is closed or its writer stopped".into())
}

/// A client-side deadline passed (the server did not answer).
pub(crate) fn timed_out(what: &str) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL did not answer in time ({what})"))
}

pub(crate) fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::PreconditionFailed(m) => StoreError::PreconditionFailed(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Unsupported(m) => StoreError::Unsupported(m.clone()),
        StoreError::Other(m) => StoreError::Other(m.clone()),
    }
}
