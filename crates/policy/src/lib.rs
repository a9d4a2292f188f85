//! Pure access decisions: `decide(&Principal, &Request, &Facts) -> Decision`.
//! No I/O: the caller (`records`) gathers the facts, this crate decides, and
//! decision tables test it.
//!
//! Map:
//! - [`Principal`]: who is asking.
//! - [`Request`]: what they ask to do, to which patient's record.
//! - [`Facts`]: what `records` looked up that the rules need.
//! - [`Decision`] and [`decide`].
//!
//! Today one principal exists: the local operator of an embedded server that
//! listens on loopback only. Authentication (practitioners in role, patients,
//! system clients from verified tokens), RBAC, legitimate relationships,
//! Consent, opt-outs and break-glass arrive with the access-control work and
//! extend these types; every path already asks `decide`, so they bind
//! everywhere at once.

use serde::{Deserialize, Serialize};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// The operator of a server bound to loopback with no token issuer
    /// configured: someone with shell access to the machine, who could read
    /// the database file directly. Audited like anyone else.
    LocalOperator,
}

impl Principal {
    /// A human-readable name for audit logs.
    #[must_use]
    pub fn display(&self) -> String {
        match self {
            Self::LocalOperator => "local operator (loopback, unauthenticated)".to_owned(),
        }
    }
}

/// The kind of access requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Read,
    Search,
    History,
    Create,
    Update,
    Delete,
}

/// One access to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub action: Action,
    pub resource_type: &'a str,
    /// The Patient compartment owner of the resource, if any.
    pub patient: Option<&'a str>,
}

/// What `records` looked up for the decision. Grows with the rules (the
/// patient's Consents, registered practice, open encounters, labels…).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, for the stated purpose (recorded in the audit entry).
    Permit { purpose: String },
    /// Refused; the reason goes to the audit ledger, never to the caller in a
    /// way that reveals whether the record exists.
    Deny { reason: String },
}

impl Decision {
    #[must_use]
    pub fn is_permit(&self) -> bool {
        matches!(self, Self::Permit { .. })
    }
}

/// Decide one access.
#[must_use]
pub fn decide(principal: &Principal, request: &Request<'_>, _facts: &Facts) -> Decision {
    match principal {
        Principal::LocalOperator => Decision::Permit {
            purpose: format!("operator {:?} on local server", request.action).to_lowercase(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_operator_is_permitted_every_action() {
        for action in [
            Action::Read,
            Action::Search,
            Action::History,
            Action::Create,
            Action::Update,
            Action::Delete,
        ] {
            let request = Request {
                action,
                resource_type: "Observation",
                patient: Some("p1"),
            };
            let decision = decide(&Principal::LocalOperator, &request, &Facts::default());
            assert!(decision.is_permit(), "{action:?}");
        }
    }
}
