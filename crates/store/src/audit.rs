//! Ledger queries in storage terms: the filters of an audit search, and raw
//! rows for verification.
//!
//! Why a raw row: verification must name a tampered entry even when its stored
//! bytes no longer decode (an attacker who edits the canonical JSON by hand),
//! so it needs the bytes as stored, not a decoded [`carelayer_audit::LedgerRow`].

use carelayer_audit::AuditAction;

/// The outcome classes a search can ask for (the `outcome` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeClass {
    Success,
    Denied,
    Failed,
}

impl OutcomeClass {
    /// The name used in the canonical bytes ([`carelayer_audit::AuditOutcome::code`]).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}

/// Filters over the audit ledger. Every set filter must hold (AND); within a
/// list any value may match (OR). Results come newest first (descending
/// `seq`), at most `limit`, strictly before `before_seq` when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Entries about this patient (Patient id).
    pub patient: Option<String>,
    /// Entries whose acting agent belongs to this organisation (ODS code).
    pub org: Option<String>,
    /// Entries by this agent: matches the agent's user id or client id.
    pub agent: Option<String>,
    /// Any of these actions (empty: all).
    pub actions: Vec<AuditAction>,
    /// Any of these outcomes (empty: all).
    pub outcomes: Vec<OutcomeClass>,
    /// `recorded_at >= from` (microseconds since the Unix epoch).
    pub from: Option<i64>,
    /// `recorded_at < to` (microseconds since the Unix epoch).
    pub to: Option<i64>,
    /// Only break-glass entries (`Some(true)`) or only others (`Some(false)`).
    pub break_glass: Option<bool>,
    /// Paging cursor: only entries with `seq < before_seq`.
    pub before_seq: Option<i64>,
    /// Most rows returned.
    pub limit: usize,
}

impl AuditQuery {
    /// Whether the entry at `seq` passes every filter (not `limit`): the
    /// meaning of a search, which a backend's index may only narrow.
    #[must_use]
    pub fn matches(&self, seq: i64, r: &carelayer_audit::AuditRecord) -> bool {
        let agent =
            |a: &String| r.agent.user.as_ref() == Some(a) || r.agent.client.as_ref() == Some(a);
        self.before_seq.is_none_or(|b| seq < b)
            && self
                .patient
                .as_ref()
                .is_none_or(|p| r.patient.as_ref() == Some(p))
            && self
                .org
                .as_ref()
                .is_none_or(|o| r.agent.org.as_ref() == Some(o))
            && self.agent.as_ref().is_none_or(agent)
            && (self.actions.is_empty() || self.actions.contains(&r.action))
            && (self.outcomes.is_empty()
                || self.outcomes.iter().any(|o| o.as_str() == r.outcome.code()))
            && self.from.is_none_or(|f| r.recorded_at >= f)
            && self.to.is_none_or(|t| r.recorded_at < t)
            && self.break_glass.is_none_or(|bg| r.is_break_glass() == bg)
    }
}

/// A ledger row exactly as stored: the canonical bytes and hash, undecoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLedgerRow {
    pub seq: i64,
    /// The stored canonical bytes of the record.
    pub record: Vec<u8>,
    /// The stored chain hash (32 bytes when intact).
    pub hash: Vec<u8>,
}
