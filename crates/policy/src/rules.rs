//! The rules, in the order they apply.
//!
//! For every principal:
//! 1. **Secondary use** (a [`Purpose::Secondary`] request): only systems
//!    and the local operator make it (practitioners and patients never do;
//!    releases go through the disclosure workflow), and the national data
//!    opt-out and Type 1 are applied by [`decide_secondary_use`].
//!
//! Then by principal:
//! - **Local operator** (in-process CLI work): permitted.
//! - **Patient**: exactly their own compartment (matched by Patient id or
//!   NHS number) plus the shared registers; they may create and update
//!   (withdraw) their own Consents and write nothing else; never redacted.
//! - **Practitioner**, in this order:
//!   RBAC: the role's permissions for the resource class (role separation:
//!   demographics-only roles never see clinical resources; AuditEvent needs
//!   the privacy-officer permission; nobody writes it). SMART `user/`
//!   scopes, when the token has any, must also allow it. Consent: a deny
//!   that applies binds (not even break-glass lifts it). Clinical data
//!   needs a legitimate relationship (registered GP practice, an open or
//!   recently ended encounter/episode at the org, a care team naming the
//!   user or org), the patient's permission (a Consent permit naming the
//!   caller), or break-glass with a reason; recording an
//!   Encounter/EpisodeOfCare at one's own organisation is how attendance
//!   creates the relationship (rules sheet A3). `meta.security` R/V: only
//!   the creating organisation, unless break-glass. S-flag redactions.
//! - **System**: `system/` scopes (`patient/` and `user/` grant a system
//!   nothing: it has no patient or user context), then Consent, labels (no
//!   break-glass for systems) and redactions. No relationship test: a
//!   registered client is trusted for what its scopes say.

use crate::consent::{self, AccessContext, ConsentKind};
use crate::facts::{Facts, OrgRef, PatientFacts, ResourceFacts};
use crate::principal::{Permission, Principal, SdsRole};
use crate::scope::{self, Scope, ScopeContext};
use crate::{
    Action, BREAK_GLASS_PURPOSE_PREFIX, Decision, LegalBasis, Purpose, RESTRICTED_PATIENT_ELEMENTS,
    RESTRICTED_RELATED_PERSON_ELEMENTS, RESTRICTED_SEARCH_PARAMS, Redaction, Request,
    ResourceClass, SecondaryPurpose, class_of,
};

/// Decide one access.
#[must_use]
pub fn decide(principal: &Principal, request: &Request<'_>, facts: &Facts) -> Decision {
    let class = class_of(request.resource_type, request.patient);
    match principal {
        Principal::LocalOperator => operator(request, facts),
        Principal::Patient {
            nhs_number,
            patient_id,
            scopes,
        } => patient(
            nhs_number,
            patient_id.as_deref(),
            scopes.as_deref(),
            request,
            facts,
            class,
        ),
        Principal::Practitioner {
            user_id,
            role,
            org,
            scopes,
        } => practitioner(user_id, role, org, scopes.as_deref(), request, facts, class),
        Principal::System {
            client_id: _,
            scopes,
            org,
        } => system(scopes, org.as_deref(), request, facts, class),
    }
}

/// Secondary use of one resource of one patient: the national data opt-out
/// (unless the legal basis is exempt), Type 1 for data sourced from the
/// patient's GP practice (or of unknown source: fail closed), and any
/// Consent deny naming this purpose. Exports and research releases call it
/// per patient (or per resource); `decide` calls it for secondary requests.
#[must_use]
pub fn decide_secondary_use(
    purpose: SecondaryPurpose,
    basis: LegalBasis,
    patient: Option<&PatientFacts>,
    resource: &ResourceFacts,
    resource_type: &str,
    now: i64,
) -> Decision {
    let code = purpose.code();
    let Some(patient) = patient else {
        // Not about a patient: no opt-out to apply.
        return Decision::permit(format!("{code}: secondary use, no patient ({basis:?})"));
    };
    if basis.national_opt_out_applies()
        && consent::opted_out(&patient.consents, ConsentKind::NationalOptOut, now)
    {
        return Decision::deny(format!(
            "national data opt-out applies to {code} under {basis:?}"
        ));
    }
    if basis.type1_applies() && consent::opted_out(&patient.consents, ConsentKind::Type1OptOut, now)
    {
        let gp = patient.registered_practice.as_ref().and_then(OrgRef::ods);
        let from_gp = match (&resource.creating_org, gp) {
            (Some(creator), Some(gp)) => creator == gp,
            // Unknown source or unknown practice: assume GP data.
            _ => true,
        };
        if from_gp {
            return Decision::deny(format!(
                "Type 1 opt-out: GP data does not leave the practice for {code} under {basis:?}"
            ));
        }
    }
    let ctx = AccessContext {
        org: None,
        user: None,
        resource_type,
        resource,
        purpose: code,
        action: "access",
        now,
    };
    if let Some(by) = consent::evaluate(&patient.consents, &ctx).denied_by {
        return Decision::deny(format!("{by} denies {code}"));
    }
    Decision::permit(format!("{code}: secondary use under {basis:?}"))
}

fn secondary(request: &Request<'_>, facts: &Facts) -> Option<Decision> {
    match request.purpose {
        Purpose::DirectCare => None,
        Purpose::Secondary { purpose, basis } => {
            if request.action.is_write() {
                return Some(Decision::deny("secondary use never writes"));
            }
            Some(decide_secondary_use(
                purpose,
                basis,
                facts.patient.as_deref(),
                &facts.resource,
                request.resource_type,
                facts.now,
            ))
        }
    }
}

fn operator(request: &Request<'_>, facts: &Facts) -> Decision {
    if let Some(d) = secondary(request, facts) {
        return d;
    }
    Decision::permit(format!(
        "HSYSADMIN: local operator {}",
        action_word(request.action)
    ))
}

fn action_word(action: Action) -> &'static str {
    match action {
        Action::Read => "read",
        Action::Search => "search",
        Action::History => "history",
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
    }
}

fn patient(
    nhs_number: &str,
    patient_id: Option<&str>,
    scopes: Option<&[Scope]>,
    request: &Request<'_>,
    facts: &Facts,
    class: ResourceClass,
) -> Decision {
    if !matches!(request.purpose, Purpose::DirectCare) {
        return Decision::deny("a patient does not make secondary use of records");
    }
    if let Some(scopes) = scopes
        && !scope::any_allows(
            scopes,
            &[ScopeContext::Patient, ScopeContext::User],
            request.action,
            request.resource_type,
        )
    {
        return Decision::deny(format!(
            "no patient/ or user/ scope allows {:?} on {}",
            request.action, request.resource_type
        ));
    }
    let Some(owner) = request.patient else {
        // Outside any compartment: the shared registers (their GP practice,
        // practitioners) are readable; the audit trail of others is not.
        return match class {
            ResourceClass::Register if !request.action.is_write() => {
                Decision::permit("PATRQT: patient reading a shared register")
            }
            _ => Decision::deny("a patient reads only their own record and the shared registers"),
        };
    };
    let own = patient_id == Some(owner)
        || facts
            .patient
            .as_ref()
            .is_some_and(|p| p.id == owner && p.nhs_number.as_deref() == Some(nhs_number));
    if !own {
        return Decision::deny("a patient sees only their own record");
    }
    match request.action {
        Action::Read | Action::Search | Action::History => {
            Decision::permit("PATRQT: patient viewing their own record")
        }
        Action::Create | Action::Update if request.resource_type == "Consent" => {
            Decision::permit("PATRQT: patient recording their own choice")
        }
        _ => Decision::deny("a patient writes only their own Consents"),
    }
}

/// The permission an action on a class needs (`None`: nobody may).
fn needed_permission(class: ResourceClass, action: Action) -> Option<Permission> {
    let write = action.is_write();
    match class {
        ResourceClass::Demographics if write => Some(Permission::AmendDemographics),
        ResourceClass::Register if write => Some(Permission::ManageRegisters),
        ResourceClass::Demographics | ResourceClass::Register => Some(Permission::ViewDemographics),
        ResourceClass::Clinical if write => Some(Permission::WriteClinical),
        ResourceClass::Clinical => Some(Permission::ViewClinical),
        ResourceClass::Audit if write => None,
        ResourceClass::Audit => Some(Permission::ReviewAlerts),
    }
}

#[allow(clippy::too_many_arguments)]
fn practitioner(
    user_id: &str,
    role: &SdsRole,
    org: &str,
    scopes: Option<&[Scope]>,
    request: &Request<'_>,
    facts: &Facts,
    class: ResourceClass,
) -> Decision {
    if !matches!(request.purpose, Purpose::DirectCare) {
        return Decision::deny(
            "practitioners do not make secondary use of records; releases go through the disclosure workflow",
        );
    }
    // Non-patient clinical-reference data (Medication, Questionnaire…) that
    // is not a register proper may be written by clinicians as well.
    let needed = match (class, request.patient) {
        (ResourceClass::Register, None)
            if request.action.is_write()
                && !crate::REGISTER_TYPES.contains(&request.resource_type) =>
        {
            if role.has(Permission::WriteClinical) {
                Some(Permission::WriteClinical)
            } else {
                Some(Permission::ManageRegisters)
            }
        }
        _ => needed_permission(class, request.action),
    };
    let Some(needed) = needed else {
        return Decision::deny(format!("nobody writes {}", request.resource_type));
    };
    if !role.has(needed) {
        return Decision::deny(format!(
            "role {role} lacks {needed:?} for {} ({class:?})",
            request.resource_type
        ));
    }
    if let Some(scopes) = scopes
        && !scope::any_allows(
            scopes,
            &[ScopeContext::User],
            request.action,
            request.resource_type,
        )
    {
        return Decision::deny(format!(
            "no user/ scope allows {:?} on {}",
            request.action, request.resource_type
        ));
    }
    if class == ResourceClass::Audit {
        return Decision::permit("HSYSADMIN: privacy officer reviewing the audit trail");
    }
    if request.patient.is_none() {
        return Decision::permit(format!(
            "TREAT: {} shared register",
            action_word(request.action)
        ));
    }
    let break_glass = request.break_glass.map(str::trim).filter(|r| !r.is_empty());
    let mut used_glass = false;
    let mut basis = "demographics".to_owned();
    if class == ResourceClass::Clinical {
        let ctx = consent_context(Some(org), Some(user_id), request, facts);
        let effect = facts
            .patient
            .as_ref()
            .map(|p| consent::evaluate(&p.consents, &ctx))
            .unwrap_or_default();
        if let Some(by) = effect.denied_by {
            return Decision::deny(format!("{by} denies this access"));
        }
        if let Some(relationship) = relationship(user_id, org, request, facts) {
            basis = relationship;
        } else if let Some(by) = effect.permitted_by {
            basis = format!("patient permission ({by})");
        } else if break_glass.is_some() {
            used_glass = true;
        } else {
            return Decision::deny(format!(
                "no legitimate relationship between {org} and the patient"
            ));
        }
    }
    if let Err(reason) = labels_allow(Some(org), request, &facts.resource) {
        if break_glass.is_some() {
            used_glass = true;
        } else {
            return Decision::deny(reason);
        }
    }
    let purpose = match (used_glass, break_glass) {
        (true, Some(reason)) => format!("{BREAK_GLASS_PURPOSE_PREFIX}{reason}"),
        _ => format!("TREAT: {basis}"),
    };
    Decision::Permit {
        purpose,
        redactions: redactions(request, facts),
        break_glass: used_glass,
    }
}

fn system(
    scopes: &[Scope],
    org: Option<&str>,
    request: &Request<'_>,
    facts: &Facts,
    class: ResourceClass,
) -> Decision {
    if !scope::any_allows(
        scopes,
        &[ScopeContext::System],
        request.action,
        request.resource_type,
    ) {
        return Decision::deny(format!(
            "no system/ scope allows {:?} on {}",
            request.action, request.resource_type
        ));
    }
    if class == ResourceClass::Audit && request.action.is_write() {
        return Decision::deny("nobody writes AuditEvent");
    }
    if let Some(d) = secondary(request, facts) {
        return match d {
            Decision::Permit { purpose, .. } => Decision::Permit {
                purpose,
                redactions: redactions(request, facts),
                break_glass: false,
            },
            deny => deny,
        };
    }
    if class == ResourceClass::Clinical && request.patient.is_some() {
        let ctx = consent_context(org, None, request, facts);
        if let Some(by) = facts
            .patient
            .as_ref()
            .and_then(|p| consent::evaluate(&p.consents, &ctx).denied_by)
        {
            return Decision::deny(format!("{by} denies this access"));
        }
    }
    if let Err(reason) = labels_allow(org, request, &facts.resource) {
        return Decision::deny(reason);
    }
    Decision::Permit {
        purpose: "TREAT: system client within its scopes".to_owned(),
        redactions: redactions(request, facts),
        break_glass: false,
    }
}

fn consent_context<'a>(
    org: Option<&'a str>,
    user: Option<&'a str>,
    request: &Request<'a>,
    facts: &'a Facts,
) -> AccessContext<'a> {
    AccessContext {
        org,
        user,
        resource_type: request.resource_type,
        resource: &facts.resource,
        purpose: request.purpose.code(),
        action: if request.action.is_write() {
            "correct"
        } else {
            "access"
        },
        now: facts.now,
    }
}

/// The legitimate relationship between the caller and the patient, named.
fn relationship(user_id: &str, org: &str, request: &Request<'_>, facts: &Facts) -> Option<String> {
    // Attendance creates the relationship: recording an encounter or
    // episode at one's own organisation.
    if request.action.is_write()
        && matches!(request.resource_type, "Encounter" | "EpisodeOfCare")
        && facts.resource.episode_org.as_ref().and_then(OrgRef::ods) == Some(org)
    {
        return Some(format!("recording attendance at {org}"));
    }
    let patient = facts.patient.as_deref()?;
    if patient.registered_practice.as_ref().and_then(OrgRef::ods) == Some(org) {
        return Some("registered GP practice".to_owned());
    }
    let recent = |e: &crate::CareEpisode| {
        e.open
            || e.ended_at
                .is_some_and(|end| facts.now.saturating_sub(end) <= facts.relationship_window)
    };
    if patient
        .episodes
        .iter()
        .any(|e| e.org.ods() == Some(org) && recent(e))
    {
        return Some(format!("open or recent care at {org}"));
    }
    if patient.care_teams.iter().any(|t| {
        t.users.iter().any(|u| u == user_id) || t.orgs.iter().any(|o| o.ods() == Some(org))
    }) {
        return Some("care team membership".to_owned());
    }
    None
}

/// `meta.security` R/V: only the creating organisation (fail closed when
/// the creator is unknown). On a Patient resource R/V is the S-flag (rules
/// sheet P7, P8), which redacts instead.
fn labels_allow(
    org: Option<&str>,
    request: &Request<'_>,
    resource: &ResourceFacts,
) -> Result<(), String> {
    if request.resource_type == "Patient" {
        return Ok(());
    }
    let Some(level) = resource.confidentiality() else {
        return Ok(());
    };
    match (&resource.creating_org, org) {
        (Some(creator), Some(org)) if creator == org => Ok(()),
        (Some(creator), _) => Err(format!(
            "labelled {level}: restricted to its creating organisation {creator}"
        )),
        (None, _) => Err(format!(
            "labelled {level} with no recorded creating organisation"
        )),
    }
}

/// S-flag redactions for anyone but the patient.
fn redactions(request: &Request<'_>, facts: &Facts) -> Vec<Redaction> {
    let restricted = facts.patient.as_ref().is_some_and(|p| p.restricted);
    if !restricted {
        return Vec::new();
    }
    match request.resource_type {
        "Patient" => vec![
            Redaction::RemoveElements(RESTRICTED_PATIENT_ELEMENTS.to_vec()),
            Redaction::HideFromSearchBy(RESTRICTED_SEARCH_PARAMS.to_vec()),
        ],
        "RelatedPerson" => vec![Redaction::RemoveElements(
            RESTRICTED_RELATED_PERSON_ELEMENTS.to_vec(),
        )],
        // Other resources of a restricted patient must not be found through
        // a chain into the patient's removed details either.
        _ => vec![Redaction::HideFromSearchBy(
            RESTRICTED_SEARCH_PARAMS.to_vec(),
        )],
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
