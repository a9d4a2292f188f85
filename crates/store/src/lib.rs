//! The `Store` trait: carelayer's storage contract in record terms.
//!
//! Map:
//! - [`Store`]: versioned resources, history, search, atomic write sets with
//!   preconditions, and the audit ledger append. Implemented by
//!   `carelayer-store-sqlite` (embedded default) and `carelayer-store-postgres`.
//! - [`WriteSet`]: everything one request changes, committed all-or-nothing
//!   together with the audit entries that describe it.
//! - [`StoreError`]: storage failures in storage terms; `records` maps them to
//!   its own errors.
//! - [`contract`]: the storage contract suite, written once and run by every
//!   backend's tests.
//! - [`bulk`]: when an announced bulk load may put off index work.
//! - [`plan`]: backend-neutral search planning (clause costs, date windows),
//!   so both backends drive a search from the same clause.
//!
//! The trait is deliberately small: conditional operations, version numbering,
//! `meta` stamping and bundle semantics are built once above it, in `records`.

mod audit;
pub mod bulk;
#[cfg(feature = "contract")]
pub mod contract;
mod error;
pub mod plan;
mod query;
mod types;

pub use audit::{AuditQuery, OutcomeClass, RawLedgerRow};
pub use error::StoreError;
pub use query::*;
pub use types::*;

use async_trait::async_trait;

/// A storage backend. All methods are safe to call concurrently.
///
/// Implementations must guarantee that a [`WriteSet`] is applied atomically:
/// either every precondition holds and every write, index row and audit entry
/// is durable when `commit` returns `Ok`, or nothing is changed.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current version of a resource, including a deletion marker.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend cannot be reached.
    async fn read_current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, StoreError>;

    /// The current versions of many resources, in the order of `keys`
    /// (`(type, id)`), as [`Store::read_current`] would return each. For
    /// planners touching many resources (a 500-resource import batch), so a
    /// backend can answer in one round trip; the default asks one by one.
    ///
    /// # Errors
    /// As [`Store::read_current`].
    async fn read_current_many(
        &self,
        keys: &[(String, String)],
    ) -> Result<Vec<Option<StoredResource>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for (resource_type, id) in keys {
            out.push(self.read_current(resource_type, id).await?);
        }
        Ok(out)
    }

    /// One specific version of a resource (deleted versions included).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend cannot be reached.
    async fn read_version(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredResource>, StoreError>;

    /// Versions in the scope, newest first (by commit sequence), at most `count`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend cannot be reached.
    async fn history(&self, query: &HistoryQuery) -> Result<Vec<StoredResource>, StoreError>;

    /// Current, non-deleted resources matching the query.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] for a query shape this backend cannot run;
    /// [`StoreError::Unavailable`] when the backend cannot be reached.
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError>;

    /// Apply a write set atomically (see the trait docs).
    ///
    /// # Errors
    /// [`StoreError::PreconditionFailed`] names the first precondition that did
    /// not hold (nothing is changed); [`StoreError::Unavailable`] and
    /// [`StoreError::Other`] for backend failures (nothing is changed).
    async fn commit(&self, writes: WriteSet) -> Result<CommitReceipt, StoreError>;

    /// Append audit entries for accesses that change no resource (reads,
    /// searches, denials). Durable when this returns `Ok`; implementations
    /// group-commit concurrent appends.
    ///
    /// # Errors
    /// Any failure: the caller must then fail the request it was auditing.
    async fn append_audit(
        &self,
        entries: Vec<carelayer_audit::AuditRecord>,
    ) -> Result<(), StoreError>;

    /// Audit ledger rows in sequence order, starting after `after_seq`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend cannot be reached.
    async fn audit_rows(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<carelayer_audit::LedgerRow>, StoreError>;

    /// Ledger rows matching the filters, newest first (see [`AuditQuery`]).
    /// Rows are decoded from the stored canonical bytes, never from the
    /// queryable columns, so a filter column cannot change what is shown.
    ///
    /// The default refuses: backends that keep a ledger override it.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] when the backend has no ledger queries;
    /// [`StoreError::Other`] when a stored row does not decode.
    async fn audit_search(
        &self,
        _query: &AuditQuery,
    ) -> Result<Vec<carelayer_audit::LedgerRow>, StoreError> {
        Err(StoreError::Unsupported("audit ledger search".into()))
    }

    /// The ledger's committed head: the last row's seq and hash
    /// ([`carelayer_audit::ChainHead::genesis`] for an empty ledger).
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] by default; backend failures.
    async fn audit_head(&self) -> Result<carelayer_audit::ChainHead, StoreError> {
        Err(StoreError::Unsupported("audit ledger head".into()))
    }

    /// The seq of the last audit entry appended (answered), whether or not
    /// it has reached the ledger table yet. For pollers that only need to
    /// know whether the chain moved: unlike [`Store::audit_head`] it need
    /// not first write out deferred entries (a commit, which costs every
    /// reader its page cache in SQLite). Defaults to the committed head.
    ///
    /// # Errors
    /// Backend failures.
    async fn audit_appended_seq(&self) -> Result<i64, StoreError> {
        Ok(self.audit_head().await?.seq)
    }

    /// Ledger rows exactly as stored, in ascending seq after `after_seq`
    /// (for verification: undecodable rows are returned, not refused).
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] by default; backend failures.
    async fn audit_raw_rows(
        &self,
        _after_seq: i64,
        _limit: usize,
    ) -> Result<Vec<RawLedgerRow>, StoreError> {
        Err(StoreError::Unsupported("raw audit ledger rows".into()))
    }

    /// Keep a signed checkpoint. Saving one that is already kept (same seq
    /// and key) is not an error.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] by default; backend failures.
    async fn save_checkpoint(
        &self,
        _checkpoint: &carelayer_audit::Checkpoint,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("audit checkpoints".into()))
    }

    /// Every kept checkpoint, ascending by seq.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] by default; backend failures.
    async fn checkpoints(&self) -> Result<Vec<carelayer_audit::Checkpoint>, StoreError> {
        Err(StoreError::Unsupported("audit checkpoints".into()))
    }

    /// A bulk load of about `expected` resources (an import) starts. A
    /// backend may prepare for it: both backends, when the load will dwarf
    /// what the database holds ([`bulk`]), stop maintaining their secondary
    /// indexes row by row and build them once, sorted, in
    /// [`Store::end_bulk_load`].
    /// Nothing a caller can observe depends on it but speed: every write is
    /// validated, indexed, audited and durable as always, and reads during
    /// the load give the same answers (perhaps more slowly). Each call must
    /// be followed by one [`Store::end_bulk_load`]; loads may overlap (the
    /// backend finishes when the last one ends). The default does nothing.
    ///
    /// # Errors
    /// Backend failures (the load may then go ahead unprepared).
    async fn begin_bulk_load(&self, _expected: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// The load [`Store::begin_bulk_load`] announced is over: returns once
    /// whatever the backend put off for it is done (indexes built, planner
    /// statistics in place). The default does nothing.
    ///
    /// # Errors
    /// Backend failures: the data is committed, but what was put off may
    /// not be done (the backend builds missing indexes when it next opens
    /// the database).
    async fn end_bulk_load(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Number of current, non-deleted resources of a type (all types when `None`).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend cannot be reached.
    async fn count(&self, resource_type: Option<&str>) -> Result<u64, StoreError>;

    /// Stop accepting work and flush everything acknowledged.
    async fn close(&self);
}
