//! Pure access decisions: `decide(&Principal, &Request, &Facts) -> Decision`.
//! No I/O: the caller (`records`) gathers the facts, this crate decides, and
//! decision tables test every rule.
//!
//! Map:
//! - [`principal`]: [`Principal`] (local operator, practitioner in role,
//!   patient, system client), [`SdsRole`] codes and their [`Permission`]s
//!   (national-RBAC style, with transitive closure).
//! - [`scope`]: SMART v1/v2 scopes ([`Scope`]).
//! - [`facts`]: [`Facts`] records gathers (the patient's GP practice,
//!   encounters, care teams, Consents, S-flag; the resource's labels, codes
//!   and creating organisation) and pure extractors from FHIR JSON.
//! - [`consent`]: the Consent model and parser, opt-out recognition.
//! - `rules`: [`decide`] and [`decide_secondary_use`], the rules in one
//!   place, in the order they apply (see its docs).
//! - here: [`Action`], [`Request`], [`Purpose`], [`LegalBasis`],
//!   [`Decision`], [`Redaction`] and the resource classes (demographics,
//!   registers, clinical, audit) that role separation uses.

pub mod consent;
pub mod facts;
pub mod principal;
mod rules;
pub mod scope;

use serde_json::Value;

pub use consent::{ConsentKind, ConsentRule, ConsentStatus};
pub use facts::{CareEpisode, CareTeamFacts, Coding, Facts, OrgRef, PatientFacts, ResourceFacts};
pub use principal::{Permission, Principal, SdsRole};
pub use rules::{decide, decide_secondary_use};
pub use scope::{Scope, ScopeContext};

/// The purpose text prefix the audit crate recognises as break-glass
/// (`carelayer_audit::BREAK_GLASS_PURPOSE_PREFIX`; policy may not depend on
/// audit, so it is repeated here and records' tests pin the two together).
pub const BREAK_GLASS_PURPOSE_PREFIX: &str = "break-glass: ";

/// The kind of access requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Action {
    Read,
    Search,
    History,
    Create,
    Update,
    Delete,
}

impl Action {
    /// Reads disclose; writes record.
    #[must_use]
    pub fn is_write(self) -> bool {
        matches!(self, Self::Create | Self::Update | Self::Delete)
    }
}

/// Why the data is wanted. Direct care is the default; everything else is
/// secondary use and needs a legal basis (rules sheet O1–O2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Purpose {
    #[default]
    DirectCare,
    Secondary {
        purpose: SecondaryPurpose,
        basis: LegalBasis,
    },
}

impl Purpose {
    /// The v3-ActReason code (what Consent `provision.purpose` names).
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Self::DirectCare => "TREAT",
            Self::Secondary { purpose, .. } => purpose.code(),
        }
    }
}

/// Uses beyond individual care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondaryPurpose {
    /// HRESCH.
    Research,
    /// Planning and service improvement (HOPERAT).
    Planning,
    /// PUBHLTH.
    PublicHealth,
    /// Disclosure to a third party under a legal requirement (HSYSADMIN).
    ThirdPartyDisclosure,
}

impl SecondaryPurpose {
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Self::Research => "HRESCH",
            Self::Planning => "HOPERAT",
            Self::PublicHealth => "PUBHLTH",
            Self::ThirdPartyDisclosure => "HSYSADMIN",
        }
    }
}

/// The legal basis of a secondary use: decides whether the national data
/// opt-out and Type 1 apply (rules sheet O1, O2, O7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegalBasis {
    /// s251 / COPI regulations 2 and 5 with the CAG standard condition: the
    /// core case the opt-out exists for.
    Section251,
    ExplicitConsent,
    /// ICO-standard anonymised data.
    Anonymised,
    /// E.g. a court order.
    LegalRequirement,
    OverridingPublicInterest,
    /// Communicable disease and public health (COPI regulation 3).
    PublicHealthCopiReg3,
    OnsStatistics,
    /// Cancer and rare-disease registration.
    DiseaseRegistration,
    /// Non-contracted invoice validation.
    InvoiceValidation,
    /// NHSBSA prescription charges.
    PrescriptionCharges,
    /// CPI without an NHS number, where getting one is disproportionate.
    NoNhsNumber,
    /// Anything else: opt-outs apply (fail closed).
    Other,
}

impl LegalBasis {
    /// The national data opt-out applies unless the basis is exempt (O2).
    #[must_use]
    pub fn national_opt_out_applies(self) -> bool {
        matches!(self, Self::Section251 | Self::Other)
    }

    /// Type 1 applies to identifiable GP data leaving the practice for any
    /// purpose but direct care; we exempt only explicit consent, anonymised
    /// data, a legal requirement and overriding public interest ([REC]: the
    /// sources list no Type 1 exemptions).
    #[must_use]
    pub fn type1_applies(self) -> bool {
        !matches!(
            self,
            Self::ExplicitConsent
                | Self::Anonymised
                | Self::LegalRequirement
                | Self::OverridingPublicInterest
        )
    }
}

/// One access to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub action: Action,
    pub resource_type: &'a str,
    /// The Patient compartment owner of the resource (Patient id), if any.
    pub patient: Option<&'a str>,
    pub purpose: Purpose,
    /// The break-glass reason the caller stated (`X-Break-Glass` header).
    pub break_glass: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A direct-care request without break-glass.
    #[must_use]
    pub fn new(action: Action, resource_type: &'a str, patient: Option<&'a str>) -> Self {
        Self {
            action,
            resource_type,
            patient,
            purpose: Purpose::DirectCare,
            break_glass: None,
        }
    }

    #[must_use]
    pub fn with_purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = purpose;
        self
    }

    #[must_use]
    pub fn with_break_glass(mut self, reason: Option<&'a str>) -> Self {
        self.break_glass = reason;
        self
    }
}

/// Something to remove from what a permitted caller receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redaction {
    /// Remove these top-level elements from the resource.
    RemoveElements(Vec<&'static str>),
    /// Leave this resource out of any search that used one of these
    /// parameters (also as the last link of a chain, e.g.
    /// `subject:Patient.address-postalcode`): a restricted patient must
    /// never be found by the details that were removed (rules sheet P8).
    HideFromSearchBy(Vec<&'static str>),
}

/// Elements removed from a restricted (S-flag) patient's Patient resource
/// (PDS removes address, telecom, generalPractitioner, and contact).
pub const RESTRICTED_PATIENT_ELEMENTS: &[&str] =
    &["address", "telecom", "generalPractitioner", "contact"];
/// Elements removed from a restricted patient's RelatedPerson resources
/// (a relative's address is often the patient's own).
pub const RESTRICTED_RELATED_PERSON_ELEMENTS: &[&str] = &["address", "telecom"];
/// Search parameters that must never find a restricted patient: PDS names
/// postcode and GP; the others search the removed address and telecom too.
pub const RESTRICTED_SEARCH_PARAMS: &[&str] = &[
    "address",
    "address-city",
    "address-country",
    "address-postalcode",
    "address-postcode",
    "address-state",
    "address-use",
    "general-practitioner",
    "phone",
    "email",
    "telecom",
    "phonetic",
];

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed. `purpose` starts with a v3-ActReason code (`TREAT: …`,
    /// `PATRQT: …`) or, under break-glass, with
    /// [`BREAK_GLASS_PURPOSE_PREFIX`] and the stated reason; it goes in
    /// the audit entry.
    Permit {
        purpose: String,
        redactions: Vec<Redaction>,
        /// Permitted only because the caller broke the glass: label the
        /// response, audit an emergency override and alert the privacy
        /// officer of the caller's organisation.
        break_glass: bool,
    },
    /// Refused; the reason goes to the audit ledger, never to the caller in a
    /// way that reveals whether the record exists.
    Deny { reason: String },
}

impl Decision {
    pub(crate) fn permit(purpose: impl Into<String>) -> Self {
        Self::Permit {
            purpose: purpose.into(),
            redactions: Vec::new(),
            break_glass: false,
        }
    }

    pub(crate) fn deny(reason: impl Into<String>) -> Self {
        Self::Deny {
            reason: reason.into(),
        }
    }

    #[must_use]
    pub fn is_permit(&self) -> bool {
        matches!(self, Self::Permit { .. })
    }

    #[must_use]
    pub fn is_break_glass(&self) -> bool {
        matches!(
            self,
            Self::Permit {
                break_glass: true,
                ..
            }
        )
    }

    /// The purpose of a permit (empty for a deny).
    #[must_use]
    pub fn purpose(&self) -> &str {
        match self {
            Self::Permit { purpose, .. } => purpose,
            Self::Deny { .. } => "",
        }
    }

    /// Apply the element redactions to a resource about to be returned.
    pub fn redact(&self, resource: &mut Value) {
        if let Self::Permit { redactions, .. } = self
            && let Some(obj) = resource.as_object_mut()
        {
            for r in redactions {
                if let Redaction::RemoveElements(elements) = r {
                    for e in elements {
                        obj.remove(*e);
                    }
                }
            }
        }
    }

    /// Must a search that used `params` (parameter names, modifiers and
    /// chains allowed: `address-postalcode:exact`,
    /// `subject:Patient.general-practitioner`) leave this resource out?
    #[must_use]
    pub fn hidden_from_search<'p>(&self, params: impl IntoIterator<Item = &'p str>) -> bool {
        let Self::Permit { redactions, .. } = self else {
            return true;
        };
        let hidden: Vec<&str> = redactions
            .iter()
            .filter_map(|r| match r {
                Redaction::HideFromSearchBy(p) => Some(p.as_slice()),
                Redaction::RemoveElements(_) => None,
            })
            .flatten()
            .copied()
            .collect();
        if hidden.is_empty() {
            return false;
        }
        params.into_iter().any(|p| {
            p.split('.').any(|link| {
                let name = link.split(':').next().unwrap_or(link);
                hidden.contains(&name)
            })
        })
    }
}

/// What a resource type is, for role separation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceClass {
    /// A patient's demographics: Patient, RelatedPerson, Person.
    Demographics,
    /// Shared registers and definitions, not about a patient: Organization,
    /// Practitioner, PractitionerRole, Location, HealthcareService,
    /// Endpoint, OrganizationAffiliation, and every other resource outside
    /// the Patient compartment (terminology, Medication, Questionnaire…).
    Register,
    /// The audit trail (AuditEvent): privacy officers and the patient only.
    Audit,
    /// Everything else in a patient's record (Consent included).
    Clinical,
}

/// Types a demographics-only role may see about a patient.
pub const PATIENT_DEMOGRAPHIC_TYPES: &[&str] = &["Patient", "RelatedPerson", "Person"];
/// Register types whose writes need [`Permission::ManageRegisters`].
pub const REGISTER_TYPES: &[&str] = &[
    "Organization",
    "OrganizationAffiliation",
    "Practitioner",
    "PractitionerRole",
    "Location",
    "HealthcareService",
    "Endpoint",
];

/// Classify a type; `patient` is the compartment owner. A type that can
/// belong to the Patient compartment is clinical even when this instance
/// has no owner (an orphan Observation is still clinical data).
#[must_use]
pub fn class_of(resource_type: &str, patient: Option<&str>) -> ResourceClass {
    if resource_type == "AuditEvent" {
        ResourceClass::Audit
    } else if PATIENT_DEMOGRAPHIC_TYPES.contains(&resource_type) {
        ResourceClass::Demographics
    } else if REGISTER_TYPES.contains(&resource_type) {
        ResourceClass::Register
    } else if patient.is_some()
        || !carelayer_fhir::search::compartment_params("Patient", resource_type).is_empty()
    {
        ResourceClass::Clinical
    } else {
        ResourceClass::Register
    }
}
