//! Rows in record terms: stored versions and the write sets that create them.

use carelayer_audit::AuditRecord;
use carelayer_fhir::search::IndexEntry;

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    /// Versions count from 1 per resource.
    pub version: i64,
    /// Microseconds since the Unix epoch; equals the `meta.lastUpdated` in `json`.
    pub last_updated: i64,
    /// A deletion marker: `json` is empty.
    pub deleted: bool,
    /// Canonical compact JSON of the resource, `meta.versionId`/`meta.lastUpdated` included.
    pub json: Vec<u8>,
    /// The commit sequence number of this version: a global, strictly
    /// increasing order of versions (history order, stable paging cursor).
    pub seq: i64,
    /// The Patient compartment owner written with this version (see
    /// [`ResourceWrite::patient_key`]); `None` for deletion markers.
    pub patient_key: Option<String>,
}

/// Everything one request changes, applied all-or-nothing by [`crate::Store::commit`].
#[derive(Debug, Clone, Default)]
pub struct WriteSet {
    /// Checked inside the commit's transaction, before any write.
    pub preconditions: Vec<Precondition>,
    /// New versions, in order. Versions of the same resource must increase.
    pub resources: Vec<ResourceWrite>,
    /// Audit entries describing the writes; chained into the ledger in order.
    pub audit: Vec<AuditRecord>,
}

/// A fact the planner relied on, re-checked atomically at commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Precondition {
    /// The resource's latest version (deleted or not) is `expected`;
    /// `None` means the resource has never existed.
    CurrentVersion {
        resource_type: String,
        id: String,
        expected: Option<i64>,
    },
    /// The search matches exactly these ids (any order). Guards conditional
    /// create/update/delete against concurrent writers.
    SearchMatches {
        query: crate::SearchQuery,
        expected_ids: Vec<String>,
    },
}

/// One new version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceWrite {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// Microseconds since the Unix epoch.
    pub last_updated: i64,
    pub deleted: bool,
    /// Canonical JSON (empty for a deletion).
    pub json: Vec<u8>,
    /// The Patient compartment owner (Patient id), if any: the shard key.
    pub patient_key: Option<String>,
    /// Search index rows for this version (empty for a deletion). They replace
    /// the rows of the previous version.
    pub index: Vec<IndexEntry>,
}

/// What a successful commit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReceipt {
    /// Sequence number given to the first resource write (0 if none).
    pub first_seq: i64,
}
