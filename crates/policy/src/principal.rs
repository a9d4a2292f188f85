//! Who is asking: principals, SDS job roles and the permissions they carry.
//!
//! Roles map to permissions the way national RBAC maps job roles to
//! activities (rules sheet A1): a baseline table, then the transitive
//! closure of "activity includes activity", so a check never has to know
//! that amending demographics implies viewing them.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::scope::Scope;

/// An SDS job role code (system `https://fhir.nhs.uk/Id/sds-role-code`).
///
/// The six clinical and governance codes are from the rules sheet (A2).
/// The sheet names no demographics-only or administrative code, so the
/// three below are the national RBAC access-role codes we know them by
/// (**unverified** against the current SDS baseline; an unknown code is
/// kept as [`SdsRole::Other`] and carries no permission, so getting one
/// wrong fails closed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SdsRole {
    /// R8000 Clinical Practitioner: clinical read and write.
    ClinicalPractitioner,
    /// R8001 Nurse: clinical read and write.
    Nurse,
    /// R8003 Health Professional: clinical read and write.
    HealthProfessional,
    /// R8004 Healthcare Student: clinical read only.
    HealthcareStudent,
    /// R0001 Privacy Officer: demographics and the organisation's alerts and
    /// audit; no clinical data.
    PrivacyOfficer,
    /// R5105 Caldicott Guardian: as the privacy officer, plus approving
    /// disclosures; no clinical data.
    CaldicottGuardian,
    /// R8008 Admin/Clinical Support: maintains the registers (Organization,
    /// Practitioner, Location…) and views demographics.
    Administrative,
    /// R8009 Receptionist: views and amends demographics only.
    Receptionist,
    /// R8010 Clerical: views demographics only.
    Clerical,
    /// Any other code: no permissions.
    Other(String),
}

impl SdsRole {
    /// Parse a role code (`R8000`), tolerating the `system|code` form.
    #[must_use]
    pub fn from_code(code: &str) -> Self {
        let code = code.rsplit('|').next().unwrap_or(code).trim();
        match code {
            "R8000" => Self::ClinicalPractitioner,
            "R8001" => Self::Nurse,
            "R8003" => Self::HealthProfessional,
            "R8004" => Self::HealthcareStudent,
            "R0001" => Self::PrivacyOfficer,
            "R5105" => Self::CaldicottGuardian,
            "R8008" => Self::Administrative,
            "R8009" => Self::Receptionist,
            "R8010" => Self::Clerical,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The SDS code.
    #[must_use]
    pub fn code(&self) -> &str {
        match self {
            Self::ClinicalPractitioner => "R8000",
            Self::Nurse => "R8001",
            Self::HealthProfessional => "R8003",
            Self::HealthcareStudent => "R8004",
            Self::PrivacyOfficer => "R0001",
            Self::CaldicottGuardian => "R5105",
            Self::Administrative => "R8008",
            Self::Receptionist => "R8009",
            Self::Clerical => "R8010",
            Self::Other(code) => code,
        }
    }

    /// The baseline grant (before closure).
    fn baseline(&self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Self::ClinicalPractitioner | Self::Nurse | Self::HealthProfessional => {
                &[WriteClinical, AmendDemographics]
            }
            Self::HealthcareStudent => &[ViewClinical],
            Self::PrivacyOfficer => &[ReviewAlerts],
            Self::CaldicottGuardian => &[ApproveDisclosures],
            Self::Administrative => &[ManageRegisters],
            Self::Receptionist => &[AmendDemographics],
            Self::Clerical => &[ViewDemographics],
            Self::Other(_) => &[],
        }
    }

    /// Every permission the role holds: the baseline and all it includes.
    #[must_use]
    pub fn permissions(&self) -> BTreeSet<Permission> {
        closure(self.baseline())
    }

    #[must_use]
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}

impl fmt::Display for SdsRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An activity a role may perform (national RBAC "B" codes, coarsened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    /// See registers and patient demographics (Patient, Practitioner…).
    ViewDemographics,
    /// Change patient demographics (includes viewing them, like B0825 ⊃ B0820).
    AmendDemographics,
    /// See clinical resources (still subject to relationship and consent).
    ViewClinical,
    /// Record clinical resources.
    WriteClinical,
    /// Maintain the registers: Organization, Practitioner, Location…
    ManageRegisters,
    /// Review break-glass alerts and the audit of one's organisation.
    ReviewAlerts,
    /// Approve disclosures to third parties (Caldicott Guardian).
    ApproveDisclosures,
}

impl Permission {
    /// The activities this one directly includes.
    fn includes(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            ViewDemographics => &[],
            AmendDemographics => &[ViewDemographics],
            ViewClinical => &[ViewDemographics],
            WriteClinical => &[ViewClinical],
            ManageRegisters => &[ViewDemographics],
            ReviewAlerts => &[ViewDemographics],
            ApproveDisclosures => &[ReviewAlerts],
        }
    }
}

/// Transitive closure of `includes`.
fn closure(start: &[Permission]) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<Permission> = start.to_vec();
    while let Some(p) = stack.pop() {
        if out.insert(p) {
            stack.extend_from_slice(p.includes());
        }
    }
    out
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// The operator of this machine acting in-process (loading the demo set,
    /// imports from the command line). Never produced from an HTTP request
    /// once token authentication is required. Audited like anyone else.
    LocalOperator,
    /// A practitioner working in one selected role at one organisation.
    Practitioner {
        /// The SDS user id (token `sub`).
        user_id: String,
        role: SdsRole,
        /// ODS code of the organisation the role is held at.
        org: String,
        /// SMART `user/` scopes, when the token carried any: they narrow
        /// what the role allows, never widen it. `None`: the role alone.
        scopes: Option<Vec<Scope>>,
    },
    /// A patient acting for themselves.
    Patient {
        nhs_number: String,
        /// The id of their Patient resource, when the token names it.
        patient_id: Option<String>,
        /// SMART `patient/`/`user/` scopes, when the token carried any.
        scopes: Option<Vec<Scope>>,
    },
    /// A system (SMART Backend Services client), limited by its scopes.
    System {
        client_id: String,
        scopes: Vec<Scope>,
        /// The ODS code of the organisation the client acts for, if
        /// registered with one (lets a trust's own system read what the trust
        /// labelled restricted).
        org: Option<String>,
    },
}

impl Principal {
    /// A human-readable name for audit logs.
    #[must_use]
    pub fn display(&self) -> String {
        match self {
            Self::LocalOperator => "local operator (in-process)".to_owned(),
            Self::Practitioner {
                user_id, role, org, ..
            } => format!("practitioner {user_id} ({role} at {org})"),
            Self::Patient { nhs_number, .. } => format!("patient {nhs_number}"),
            Self::System { client_id, .. } => format!("system client {client_id}"),
        }
    }

    /// The organisation the principal acts for, if any.
    #[must_use]
    pub fn org(&self) -> Option<&str> {
        match self {
            Self::Practitioner { org, .. } => Some(org),
            Self::System { org, .. } => org.as_deref(),
            Self::LocalOperator | Self::Patient { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission::*;

    /// Decision table: role → the full permission set after closure.
    #[test]
    fn role_permission_table() {
        let table: &[(&str, &[Permission])] = &[
            (
                "R8000",
                &[
                    ViewDemographics,
                    AmendDemographics,
                    ViewClinical,
                    WriteClinical,
                ],
            ),
            (
                "R8001",
                &[
                    ViewDemographics,
                    AmendDemographics,
                    ViewClinical,
                    WriteClinical,
                ],
            ),
            (
                "R8003",
                &[
                    ViewDemographics,
                    AmendDemographics,
                    ViewClinical,
                    WriteClinical,
                ],
            ),
            ("R8004", &[ViewDemographics, ViewClinical]),
            ("R0001", &[ViewDemographics, ReviewAlerts]),
            (
                "R5105",
                &[ViewDemographics, ReviewAlerts, ApproveDisclosures],
            ),
            ("R8008", &[ViewDemographics, ManageRegisters]),
            ("R8009", &[ViewDemographics, AmendDemographics]),
            ("R8010", &[ViewDemographics]),
            ("R9999", &[]),
        ];
        for (code, expected) in table {
            let role = SdsRole::from_code(code);
            let got: Vec<Permission> = role.permissions().into_iter().collect();
            let mut want = expected.to_vec();
            want.sort();
            assert_eq!(got, want, "{code}");
            assert_eq!(role.code(), *code);
        }
    }

    #[test]
    fn role_code_accepts_system_prefix() {
        assert_eq!(
            SdsRole::from_code("https://fhir.nhs.uk/Id/sds-role-code|R8000"),
            SdsRole::ClinicalPractitioner
        );
    }

    #[test]
    fn closure_terminates_and_is_transitive() {
        let set = closure(&[ApproveDisclosures]);
        assert!(set.contains(&ViewDemographics));
        assert!(!set.contains(&ViewClinical));
    }
}
