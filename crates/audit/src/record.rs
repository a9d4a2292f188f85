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
    /// A user invoked emergency override ("break-glass") for a patient; the
    /// reason is in `purpose` (see [`AuditRecord::break_glass_reason`]).
    BreakGlassStart,
    /// The emergency override ended (expired or was closed).
    BreakGlassStop,
    /// A release of the patient's data to a third party or a secondary use
    /// (police, insurer, research extract); the legal basis is in `purpose`,
    /// the recipient and register entry in `detail`.
    Disclose,
}

impl AuditAction {
    /// Every action, in declaration order.
    pub const ALL: [AuditAction; 16] = [
        AuditAction::Read,
        AuditAction::Vread,
        AuditAction::History,
        AuditAction::Search,
        AuditAction::Everything,
        AuditAction::Create,
        AuditAction::Update,
        AuditAction::Patch,
        AuditAction::Delete,
        AuditAction::Transaction,
        AuditAction::Batch,
        AuditAction::Import,
        AuditAction::TokenIssue,
        AuditAction::BreakGlassStart,
        AuditAction::BreakGlassStop,
        AuditAction::Disclose,
    ];

    /// The stable name used in the canonical bytes (and by serde).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditAction::Read => "read",
            AuditAction::Vread => "vread",
            AuditAction::History => "history",
            AuditAction::Search => "search",
            AuditAction::Everything => "everything",
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Patch => "patch",
            AuditAction::Delete => "delete",
            AuditAction::Transaction => "transaction",
            AuditAction::Batch => "batch",
            AuditAction::Import => "import",
            AuditAction::TokenIssue => "token-issue",
            AuditAction::BreakGlassStart => "break-glass-start",
            AuditAction::BreakGlassStop => "break-glass-stop",
            AuditAction::Disclose => "disclose",
        }
    }

    /// The inverse of [`AuditAction::as_str`].
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
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

impl Channel {
    /// Every channel, in declaration order.
    pub const ALL: [Channel; 5] = [
        Channel::Rest,
        Channel::Cli,
        Channel::Hl7v2,
        Channel::Ui,
        Channel::Export,
    ];

    /// The stable name used in the canonical bytes (and by serde).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Rest => "rest",
            Channel::Cli => "cli",
            Channel::Hl7v2 => "hl7v2",
            Channel::Ui => "ui",
            Channel::Export => "export",
        }
    }

    /// The inverse of [`Channel::as_str`].
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl AuditOutcome {
    /// `success`, `denied` or `failed`: the name used in the canonical bytes.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Denied(_) => "denied",
            AuditOutcome::Failed(_) => "failed",
        }
    }

    /// The recorded reason of a denial or failure.
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            AuditOutcome::Success => None,
            AuditOutcome::Denied(r) | AuditOutcome::Failed(r) => Some(r),
        }
    }
}

/// The prefix of [`AuditRecord::purpose`] for anything done under emergency
/// override ("break-glass"); the stated reason follows it.
///
/// Break-glass is modelled in two ways, neither of which changes the shape of
/// [`AuditRecord`]:
/// - the act of breaking the glass (and of closing it) is its own entry, with
///   action [`AuditAction::BreakGlassStart`] / [`AuditAction::BreakGlassStop`]
///   (rendered as DCM 110113 Security Alert / 110127 Emergency Override
///   Started, or 110138 Emergency Override Stopped);
/// - every access made under the override carries the purpose
///   `"break-glass: <reason>"` (build it with [`break_glass_purpose`]), so each
///   such entry in the patient's log says so on its own (purposeOfUse `ETREAT`).
pub const BREAK_GLASS_PURPOSE_PREFIX: &str = "break-glass: ";

/// The `purpose` for an access under break-glass with the given reason.
#[must_use]
pub fn break_glass_purpose(reason: &str) -> String {
    format!("{BREAK_GLASS_PURPOSE_PREFIX}{reason}")
}

impl AuditRecord {
    /// Whether this entry is a break-glass event or an access made under
    /// break-glass (see [`BREAK_GLASS_PURPOSE_PREFIX`]).
    #[must_use]
    pub fn is_break_glass(&self) -> bool {
        matches!(
            self.action,
            AuditAction::BreakGlassStart | AuditAction::BreakGlassStop
        ) || self.purpose.starts_with(BREAK_GLASS_PURPOSE_PREFIX)
    }

    /// The stated break-glass reason: the purpose after the prefix, or for a
    /// `BreakGlassStart`/`BreakGlassStop` entry without the prefix, the whole
    /// purpose.
    #[must_use]
    pub fn break_glass_reason(&self) -> Option<&str> {
        if let Some(reason) = self.purpose.strip_prefix(BREAK_GLASS_PURPOSE_PREFIX) {
            return Some(reason);
        }
        matches!(
            self.action,
            AuditAction::BreakGlassStart | AuditAction::BreakGlassStop
        )
        .then_some(self.purpose.as_str())
    }
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

impl LedgerRow {
    /// The chain hash as lowercase hex.
    #[must_use]
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}
