//! Storage errors, in storage terms. `records` maps them to domain errors and
//! `http` maps those to status codes.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// A precondition of a write set did not hold; nothing was changed.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// The backend cannot be reached now (connection lost, database busy past
    /// its timeout, shutting down). Retrying later may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A query this backend cannot run.
    #[error("unsupported query: {0}")]
    Unsupported(String),
    /// Stored data could not be decoded or another invariant broke.
    #[error("storage failure: {0}")]
    Other(String),
}
