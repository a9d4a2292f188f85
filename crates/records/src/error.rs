//! Errors of the record service, in domain terms. `http` maps each variant to
//! a status and an OperationOutcome (see `carelayer_http::error`); the HL7 v2
//! listener will map them to ACK codes.

use carelayer_store::StoreError;
use thiserror::Error;

/// One OperationOutcome issue, independent of any wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    /// FHIR `issue-type` code (`structure`, `required`, `value`, `invalid`,
    /// `code-invalid`, `business-rule`, …).
    pub code: String,
    /// FHIRPath location of the problem, when it has one.
    pub location: Option<String>,
    pub diagnostics: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }
}

impl Issue {
    #[must_use]
    pub fn error(code: &str, location: Option<String>, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code: code.to_owned(),
            location,
            diagnostics: diagnostics.into(),
        }
    }
}

#[derive(Debug, Error)]
pub enum RecordsError {
    /// The request itself is malformed (bad JSON, bad parameters, wrong shape).
    #[error("{0}")]
    BadRequest(String),
    /// The resource fails validation against the R4 definitions.
    #[error("the resource is not valid FHIR R4")]
    Invalid(Vec<Issue>),
    /// The resource is valid FHIR but breaks a business rule (UK identifiers…).
    #[error("the resource breaks a business rule")]
    BusinessRule(Vec<Issue>),
    /// No such resource type in FHIR R4.
    #[error("unknown resource type '{0}'")]
    UnknownType(String),
    /// Absent, or withheld by policy (indistinguishable on purpose).
    #[error("{0} is not known")]
    NotFound(String),
    /// Deleted: the latest version is a deletion marker.
    #[error("{reference} was deleted")]
    Gone { reference: String, version: i64 },
    /// `If-Match` named a version that is not the current one.
    #[error("{0}")]
    VersionConflict(String),
    /// A conditional operation matched more than one resource.
    #[error("{0}")]
    MultipleMatches(String),
    /// Concurrent writers kept changing what this request depended on.
    #[error("{0}")]
    Conflict(String),
    /// Policy refused a write (reads that are refused look absent instead).
    #[error("access denied")]
    Forbidden,
    /// A valid request for something this server does not do.
    #[error("{0}")]
    NotSupported(String),
    /// A limit configured by the operator (bundle entries, page size…).
    #[error("{0}")]
    TooCostly(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RecordsError {
    /// The OperationOutcome issues this error carries.
    #[must_use]
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            Self::Invalid(issues) | Self::BusinessRule(issues) => issues.clone(),
            Self::BadRequest(m) => vec![Issue::error("invalid", None, m.clone())],
            Self::UnknownType(_) => vec![Issue::error("not-supported", None, self.to_string())],
            Self::NotFound(_) => vec![Issue::error("not-found", None, self.to_string())],
            Self::Gone { .. } => vec![Issue::error("deleted", None, self.to_string())],
            Self::VersionConflict(m) | Self::Conflict(m) => {
                vec![Issue::error("conflict", None, m.clone())]
            }
            Self::MultipleMatches(m) => vec![Issue::error("multiple-matches", None, m.clone())],
            Self::Forbidden => vec![Issue::error("forbidden", None, self.to_string())],
            Self::NotSupported(m) => vec![Issue::error("not-supported", None, m.clone())],
            Self::TooCostly(m) => vec![Issue::error("too-costly", None, m.clone())],
            Self::Store(StoreError::Unavailable(_)) => vec![Issue::error(
                "transient",
                None,
                "the record store is temporarily unavailable; retry shortly",
            )],
            Self::Store(StoreError::Unsupported(m)) => {
                vec![Issue::error("not-supported", None, m.clone())]
            }
            // Internal causes are logged by the transport, never sent.
            Self::Store(_) => vec![Issue::error(
                "exception",
                None,
                "internal error; the operator's log has the cause",
            )],
        }
    }

    /// Prefix every issue location (used for resources inside a Bundle).
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        let relocate = |issues: Vec<Issue>| {
            issues
                .into_iter()
                .map(|mut i| {
                    i.location = Some(match i.location.take().as_deref().map(strip_type) {
                        Some(rest) if !rest.is_empty() => format!("{prefix}.{rest}"),
                        _ => prefix.to_owned(),
                    });
                    i
                })
                .collect()
        };
        match self {
            Self::Invalid(issues) => Self::Invalid(relocate(issues)),
            Self::BusinessRule(issues) => Self::BusinessRule(relocate(issues)),
            Self::BadRequest(m) => Self::BadRequest(format!("{prefix}: {m}")),
            other => other,
        }
    }
}

/// `Patient.name[0]` → `name[0]`; `Patient` → ``.
fn strip_type(location: &str) -> &str {
    match location.split_once('.') {
        Some((head, rest)) if head.chars().next().is_some_and(char::is_uppercase) => rest,
        Some(_) => location,
        None if location.chars().next().is_some_and(char::is_uppercase) => "",
        None => location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_prefixes_locations() {
        let err = RecordsError::Invalid(vec![Issue::error(
            "value",
            Some("Patient.name[0].family".into()),
            "bad",
        )])
        .within("Bundle.entry[2].resource");
        assert_eq!(
            err.issues()[0].location.as_deref(),
            Some("Bundle.entry[2].resource.name[0].family")
        );
    }
}
