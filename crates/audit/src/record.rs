//! The audit entry model.

use serde::{Deserialize, Serialize};

/// One audited event. Built by `records`; chained and stored by the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When it happened, microseconds since the Unix epoch.
    pub recorded_at: i64,
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    /// Who acted.
    pub agent: Agent,
    /// The patient whose record was touched (Patient id), if any.
    pub patient: Option<String>,
    /// Resources touched, as `Type/id/_history/version` or `Type/id`.
    pub resources: Vec<String>,
    /// Why: direct care, a break-glass reason, a secondary-use basis.
    pub purpose: String,
    /// The way in: REST, CLI, and later HL7, UI, export.
    pub channel: Channel,
    /// Extra detail for humans (e.g. the search query, a denial reason).
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditAction {
    Read,
    Vread,
    History,
    Search,
    Everything,
    Create,
    Update,
    Patch,
    Delete,
    Transaction,
    Batch,
    Import,
    TokenIssue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditOutcome {
    Success,
    /// Refused by policy; the reason is recorded.
    Denied(String),
    /// Failed for another reason (bad input, conflict).
    Failed(String),
}

/// The acting principal, flattened for the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Agent {
    pub user: Option<String>,
    pub role: Option<String>,
    pub org: Option<String>,
    pub client: Option<String>,
    /// A human-readable name for the log (e.g. "System (embedded operator)").
    pub display: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    Rest,
    Cli,
    Hl7v2,
    Ui,
    Export,
}

/// A record as it sits in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// Position in the ledger, from 1, strictly increasing with no gaps.
    pub seq: i64,
    pub record: AuditRecord,
    /// `SHA-256(previous row's hash || canonical_bytes(record))`.
    pub hash: [u8; 32],
}
