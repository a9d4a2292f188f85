//! Decision tables for every rule in `rules`.

// Decision tables are rows of tuples on purpose: one line per case.
#![allow(clippy::type_complexity)]

use serde_json::json;

use super::*;
use crate::facts::{CONFIDENTIALITY_SYSTEM, CareEpisode, CareTeamFacts, Coding, MICROS_PER_DAY};
use crate::{ConsentRule, Scope};

const NOW: i64 = 1_700_000_000_000_000;
const GP: &str = "GP1";
const TRUST: &str = "RX1";
const OTHER: &str = "ZZ9";

fn clinician(org: &str) -> Principal {
    practitioner_with("R8000", org)
}

fn practitioner_with(role: &str, org: &str) -> Principal {
    Principal::Practitioner {
        user_id: "u1".into(),
        role: SdsRole::from_code(role),
        org: org.into(),
        scopes: None,
    }
}

fn patient_principal(id: Option<&str>, nhs: &str) -> Principal {
    Principal::Patient {
        nhs_number: nhs.into(),
        patient_id: id.map(str::to_owned),
        scopes: None,
    }
}

fn system(scopes: &str, org: Option<&str>) -> Principal {
    Principal::System {
        client_id: "c1".into(),
        scopes: Scope::parse_list(scopes),
        org: org.map(str::to_owned),
    }
}

/// A patient registered at GP, with no other relationships.
fn patient_facts() -> PatientFacts {
    PatientFacts {
        id: "p1".into(),
        nhs_number: Some("9000000009".into()),
        registered_practice: Some(OrgRef::Ods(GP.into())),
        ..PatientFacts::default()
    }
}

fn facts(patient: PatientFacts) -> Facts {
    Facts {
        now: NOW,
        relationship_window: 30 * MICROS_PER_DAY,
        patient: Some(std::sync::Arc::new(patient)),
        resource: ResourceFacts::default(),
    }
}

fn consent(v: serde_json::Value) -> ConsentRule {
    let mut c = json!({"resourceType": "Consent", "id": "c1", "status": "active"});
    if let (Some(obj), Some(more)) = (c.as_object_mut(), v.as_object()) {
        for (k, v) in more {
            obj.insert(k.clone(), v.clone());
        }
    }
    ConsentRule::from_json(&c).unwrap_or_else(|e| panic!("{e}"))
}

fn ods_actor(code: &str) -> serde_json::Value {
    json!({"reference": {"identifier": {"system": crate::facts::ODS_SYSTEM, "value": code}}})
}

fn read(rt: &str) -> Request<'_> {
    Request::new(Action::Read, rt, Some("p1"))
}

fn verdict(d: &Decision) -> &'static str {
    match d {
        Decision::Permit {
            break_glass: true, ..
        } => "glass",
        Decision::Permit { .. } => "permit",
        Decision::Deny { .. } => "deny",
    }
}

/// Role separation: role × resource × action, at the registered practice
/// (so the relationship holds and only RBAC decides).
#[test]
fn rbac_table() {
    use Action::*;
    let f = facts(patient_facts());
    let rows: &[(&str, Action, &str, Option<&str>, &str)] = &[
        ("R8000", Read, "Observation", Some("p1"), "permit"),
        ("R8000", Create, "Observation", Some("p1"), "permit"),
        ("R8000", Update, "Patient", Some("p1"), "permit"),
        ("R8001", Delete, "Condition", Some("p1"), "permit"),
        ("R8003", Search, "MedicationRequest", Some("p1"), "permit"),
        ("R8004", Read, "Observation", Some("p1"), "permit"),
        ("R8004", Create, "Observation", Some("p1"), "deny"),
        ("R8004", Update, "Patient", Some("p1"), "deny"),
        ("R8009", Read, "Patient", Some("p1"), "permit"),
        ("R8009", Update, "Patient", Some("p1"), "permit"),
        ("R8009", Read, "Observation", Some("p1"), "deny"),
        ("R8009", Read, "Consent", Some("p1"), "deny"),
        ("R8010", Read, "RelatedPerson", Some("p1"), "permit"),
        ("R8010", Update, "Patient", Some("p1"), "deny"),
        ("R8010", Search, "Condition", Some("p1"), "deny"),
        ("R0001", Read, "Patient", Some("p1"), "permit"),
        ("R0001", Read, "Observation", Some("p1"), "deny"),
        ("R0001", Read, "AuditEvent", Some("p1"), "permit"),
        ("R0001", Search, "AuditEvent", None, "permit"),
        ("R5105", Read, "AuditEvent", None, "permit"),
        ("R5105", Read, "Condition", Some("p1"), "deny"),
        ("R8000", Read, "AuditEvent", Some("p1"), "deny"),
        ("R0001", Create, "AuditEvent", None, "deny"),
        ("R8000", Read, "Organization", None, "permit"),
        ("R8000", Create, "Organization", None, "deny"),
        ("R8008", Create, "Organization", None, "permit"),
        ("R8008", Update, "Practitioner", None, "permit"),
        ("R8008", Read, "Observation", Some("p1"), "deny"),
        ("R8000", Create, "Medication", None, "permit"),
        ("R8010", Create, "Medication", None, "deny"),
        ("R8010", Read, "ValueSet", None, "permit"),
        // An orphan clinical resource is still clinical.
        ("R8010", Read, "Observation", None, "deny"),
        ("R9999", Read, "Patient", Some("p1"), "deny"),
    ];
    for (role, action, rt, patient, want) in rows {
        let request = Request::new(*action, rt, *patient);
        let d = decide(&practitioner_with(role, GP), &request, &f);
        assert_eq!(
            verdict(&d),
            *want,
            "{role} {action:?} {rt} {patient:?}: {d:?}"
        );
    }
}

/// Legitimate relationships and break-glass for clinical reads.
#[test]
fn relationship_table() {
    let day = MICROS_PER_DAY;
    let with = |f: &dyn Fn(&mut PatientFacts)| {
        let mut p = patient_facts();
        f(&mut p);
        facts(p)
    };
    let episode = |org: &str, open: bool, ended_days_ago: Option<i64>| CareEpisode {
        org: OrgRef::Ods(org.into()),
        open,
        ended_at: ended_days_ago.map(|d| NOW - d * day),
    };
    let rows: Vec<(&str, Facts, &str, Option<&str>, &str)> = vec![
        ("registered practice", with(&|_| {}), GP, None, "permit"),
        ("unrelated org", with(&|_| {}), TRUST, None, "deny"),
        (
            "open encounter",
            with(&|p| p.episodes.push(episode(TRUST, true, None))),
            TRUST,
            None,
            "permit",
        ),
        (
            "ended within window",
            with(&|p| p.episodes.push(episode(TRUST, false, Some(10)))),
            TRUST,
            None,
            "permit",
        ),
        (
            "ended beyond window",
            with(&|p| p.episodes.push(episode(TRUST, false, Some(60)))),
            TRUST,
            None,
            "deny",
        ),
        (
            "encounter elsewhere",
            with(&|p| p.episodes.push(episode(OTHER, true, None))),
            TRUST,
            None,
            "deny",
        ),
        (
            "unresolved encounter org",
            with(&|p| {
                p.episodes.push(CareEpisode {
                    org: OrgRef::Reference("Organization/x".into()),
                    open: true,
                    ended_at: None,
                });
            }),
            TRUST,
            None,
            "deny",
        ),
        (
            "care team user",
            with(&|p| {
                p.care_teams.push(CareTeamFacts {
                    users: vec!["u1".into()],
                    orgs: vec![],
                });
            }),
            TRUST,
            None,
            "permit",
        ),
        (
            "care team org",
            with(&|p| {
                p.care_teams.push(CareTeamFacts {
                    users: vec![],
                    orgs: vec![OrgRef::Ods(TRUST.into())],
                });
            }),
            TRUST,
            None,
            "permit",
        ),
        (
            "patient permission",
            with(&|p| {
                p.consents.push(consent(
                    json!({"provision": {"type": "permit", "actor": [ods_actor(TRUST)]}}),
                ));
            }),
            TRUST,
            None,
            "permit",
        ),
        (
            "permission for someone else",
            with(&|p| {
                p.consents.push(consent(
                    json!({"provision": {"type": "permit", "actor": [ods_actor(OTHER)]}}),
                ));
            }),
            TRUST,
            None,
            "deny",
        ),
        (
            "break-glass",
            with(&|_| {}),
            TRUST,
            Some("unconscious in ED"),
            "glass",
        ),
        (
            "blank break-glass",
            with(&|_| {}),
            TRUST,
            Some("  "),
            "deny",
        ),
        (
            "break-glass not needed",
            with(&|_| {}),
            GP,
            Some("habit"),
            "permit",
        ),
        (
            "no patient found",
            Facts {
                patient: None,
                ..facts(patient_facts())
            },
            GP,
            None,
            "deny",
        ),
    ];
    for (name, f, org, glass, want) in rows {
        let request = read("Observation").with_break_glass(glass);
        let d = decide(&clinician(org), &request, &f);
        assert_eq!(verdict(&d), want, "{name}: {d:?}");
        if want == "glass" {
            assert!(
                d.purpose().starts_with(BREAK_GLASS_PURPOSE_PREFIX),
                "{name}"
            );
            assert!(d.purpose().ends_with("unconscious in ED"), "{name}");
        }
        if want == "permit" {
            assert!(d.purpose().starts_with("TREAT: "), "{name}: {d:?}");
        }
    }
}

#[test]
fn demographics_need_no_relationship_and_ignore_consent() {
    let mut p = patient_facts();
    p.consents
        .push(consent(json!({"provision": {"type": "deny"}})));
    let f = facts(p);
    let d = decide(&practitioner_with("R8009", OTHER), &read("Patient"), &f);
    assert_eq!(verdict(&d), "permit", "{d:?}");
}

#[test]
fn attendance_creates_the_relationship() {
    let mut f = facts(patient_facts());
    let encounter = json!({"resourceType": "Encounter", "status": "arrived",
        "serviceProvider": {"identifier": {"system": crate::facts::ODS_SYSTEM, "value": TRUST}}});
    f.resource = ResourceFacts::from_json(&encounter);
    let create = Request::new(Action::Create, "Encounter", Some("p1"));
    assert_eq!(verdict(&decide(&clinician(TRUST), &create, &f)), "permit");
    assert_eq!(verdict(&decide(&clinician(OTHER), &create, &f)), "deny");
    // Not for other types.
    let obs = Request::new(Action::Create, "Observation", Some("p1"));
    assert_eq!(verdict(&decide(&clinician(TRUST), &obs, &f)), "deny");
}

/// Consent denies bind everyone, break-glass included; withdrawal lifts them.
#[test]
fn consent_table() {
    let psy = ResourceFacts {
        security: vec![Coding::new(None, "PSY")],
        ..ResourceFacts::default()
    };
    let rows: Vec<(
        &str,
        serde_json::Value,
        &str,
        Principal,
        ResourceFacts,
        Option<&str>,
        &str,
    )> = vec![
        (
            "deny the GP practice",
            json!({"provision": {"type": "deny", "actor": [ods_actor(GP)]}}),
            "active",
            clinician(GP),
            ResourceFacts::default(),
            None,
            "deny",
        ),
        (
            "deny binds break-glass",
            json!({"provision": {"type": "deny", "actor": [ods_actor(TRUST)]}}),
            "active",
            clinician(TRUST),
            ResourceFacts::default(),
            Some("emergency"),
            "deny",
        ),
        (
            "deny another org",
            json!({"provision": {"type": "deny", "actor": [ods_actor(OTHER)]}}),
            "active",
            clinician(GP),
            ResourceFacts::default(),
            None,
            "permit",
        ),
        (
            "deny category",
            json!({"provision": {"type": "deny", "securityLabel": [{"code": "PSY"}]}}),
            "active",
            clinician(GP),
            psy.clone(),
            None,
            "deny",
        ),
        (
            "deny category, other data",
            json!({"provision": {"type": "deny", "securityLabel": [{"code": "PSY"}]}}),
            "active",
            clinician(GP),
            ResourceFacts::default(),
            None,
            "permit",
        ),
        (
            "deny category binds systems",
            json!({"provision": {"type": "deny", "securityLabel": [{"code": "PSY"}]}}),
            "active",
            system("system/*.rs", None),
            psy.clone(),
            None,
            "deny",
        ),
        (
            "deny research purpose, direct care unaffected",
            json!({"provision": {"type": "deny", "purpose": [{"code": "HRESCH"}]}}),
            "active",
            clinician(GP),
            ResourceFacts::default(),
            None,
            "permit",
        ),
        (
            "withdrawn deny",
            json!({"provision": {"type": "deny", "actor": [ods_actor(GP)]}}),
            "inactive",
            clinician(GP),
            ResourceFacts::default(),
            None,
            "permit",
        ),
        (
            "permit only the GP: GP",
            json!({"provision": {"type": "deny", "provision": [{"type": "permit", "actor": [ods_actor(GP)]}]}}),
            "active",
            clinician(GP),
            ResourceFacts::default(),
            None,
            "permit",
        ),
        (
            "permit only the GP: trust with open encounter",
            json!({"provision": {"type": "deny", "provision": [{"type": "permit", "actor": [ods_actor(GP)]}]}}),
            "active",
            clinician(TRUST),
            ResourceFacts::default(),
            None,
            "deny",
        ),
        (
            "deny expired by period",
            json!({"provision": {"type": "deny", "period": {"end": "2001-01-01"}}}),
            "active",
            clinician(GP),
            ResourceFacts::default(),
            None,
            "permit",
        ),
    ];
    for (name, c, status, principal, resource, glass, want) in rows {
        let mut p = patient_facts();
        p.episodes.push(CareEpisode {
            org: OrgRef::Ods(TRUST.into()),
            open: true,
            ended_at: None,
        });
        let mut rule = consent(c);
        rule.status = match status {
            "active" => crate::ConsentStatus::Active,
            _ => crate::ConsentStatus::Inactive,
        };
        p.consents.push(rule);
        let mut f = facts(p);
        f.resource = resource;
        let request = read("Condition").with_break_glass(glass);
        let d = decide(&principal, &request, &f);
        assert_eq!(verdict(&d), want, "{name}: {d:?}");
    }
}

/// `meta.security` R/V confine a resource to its creating organisation.
#[test]
fn label_table() {
    let labelled = |code: &str, creator: Option<&str>| ResourceFacts {
        security: vec![Coding::new(Some(CONFIDENTIALITY_SYSTEM), code)],
        creating_org: creator.map(str::to_owned),
        ..ResourceFacts::default()
    };
    let mut p = patient_facts();
    p.episodes.push(CareEpisode {
        org: OrgRef::Ods(TRUST.into()),
        open: true,
        ended_at: None,
    });
    let rows: Vec<(&str, ResourceFacts, Principal, Option<&str>, &str)> = vec![
        (
            "R by own org",
            labelled("R", Some(GP)),
            clinician(GP),
            None,
            "permit",
        ),
        (
            "R by other org",
            labelled("R", Some(GP)),
            clinician(TRUST),
            None,
            "deny",
        ),
        (
            "R by other org, glass",
            labelled("R", Some(GP)),
            clinician(TRUST),
            Some("sepsis"),
            "glass",
        ),
        (
            "V by own org",
            labelled("V", Some(TRUST)),
            clinician(TRUST),
            None,
            "permit",
        ),
        (
            "V by other org",
            labelled("V", Some(TRUST)),
            clinician(GP),
            None,
            "deny",
        ),
        (
            "R, creator unknown",
            labelled("R", None),
            clinician(GP),
            None,
            "deny",
        ),
        (
            "N is not restrictive",
            labelled("N", Some(OTHER)),
            clinician(GP),
            None,
            "permit",
        ),
        (
            "system, own org",
            labelled("R", Some(TRUST)),
            system("system/*.rs", Some(TRUST)),
            None,
            "permit",
        ),
        (
            "system, no org",
            labelled("R", Some(TRUST)),
            system("system/*.rs", None),
            None,
            "deny",
        ),
        (
            "system ignores glass",
            labelled("R", Some(TRUST)),
            system("system/*.rs", None),
            Some("x"),
            "deny",
        ),
        (
            "patient sees own labelled data",
            labelled("V", Some(TRUST)),
            patient_principal(Some("p1"), "9000000009"),
            None,
            "permit",
        ),
    ];
    for (name, resource, principal, glass, want) in rows {
        let mut f = facts(p.clone());
        f.resource = resource;
        let request = read("Condition").with_break_glass(glass);
        let d = decide(&principal, &request, &f);
        assert_eq!(verdict(&d), want, "{name}: {d:?}");
    }
}

/// A patient sees exactly their own compartment and writes only Consents.
#[test]
fn patient_table() {
    use Action::*;
    let me = patient_principal(None, "9000000009");
    let me_by_id = patient_principal(Some("p1"), "1111111111");
    let stranger = patient_principal(Some("p2"), "9000000017");
    let f = facts(patient_facts());
    let rows: Vec<(&str, &Principal, Action, &str, Option<&str>, &str)> = vec![
        (
            "own Observation by NHS number",
            &me,
            Read,
            "Observation",
            Some("p1"),
            "permit",
        ),
        (
            "own Patient by id",
            &me_by_id,
            Read,
            "Patient",
            Some("p1"),
            "permit",
        ),
        (
            "own history",
            &me,
            History,
            "Condition",
            Some("p1"),
            "permit",
        ),
        (
            "own audit trail",
            &me,
            Search,
            "AuditEvent",
            Some("p1"),
            "permit",
        ),
        (
            "someone else's",
            &stranger,
            Read,
            "Observation",
            Some("p1"),
            "deny",
        ),
        ("registers", &me, Read, "Organization", None, "permit"),
        (
            "audit outside the compartment",
            &me,
            Search,
            "AuditEvent",
            None,
            "deny",
        ),
        ("write registers", &me, Create, "Organization", None, "deny"),
        (
            "create own Consent",
            &me,
            Create,
            "Consent",
            Some("p1"),
            "permit",
        ),
        (
            "withdraw own Consent",
            &me,
            Update,
            "Consent",
            Some("p1"),
            "permit",
        ),
        (
            "delete own Consent",
            &me,
            Delete,
            "Consent",
            Some("p1"),
            "deny",
        ),
        (
            "create own Observation",
            &me,
            Create,
            "Observation",
            Some("p1"),
            "deny",
        ),
        (
            "someone else's Consent",
            &stranger,
            Create,
            "Consent",
            Some("p1"),
            "deny",
        ),
    ];
    for (name, principal, action, rt, patient, want) in rows {
        let d = decide(principal, &Request::new(action, rt, patient), &f);
        assert_eq!(verdict(&d), want, "{name}: {d:?}");
    }
}

#[test]
fn patient_scopes_narrow() {
    let p = Principal::Patient {
        nhs_number: "9000000009".into(),
        patient_id: Some("p1".into()),
        scopes: Some(Scope::parse_list("patient/Observation.rs")),
    };
    let f = facts(patient_facts());
    assert!(decide(&p, &read("Observation"), &f).is_permit());
    assert!(!decide(&p, &read("Condition"), &f).is_permit());
    let create = Request::new(Action::Create, "Consent", Some("p1"));
    assert!(!decide(&p, &create, &f).is_permit());
}

#[test]
fn practitioner_user_scopes_narrow_never_widen() {
    let with = |scopes: &str, role: &str| Principal::Practitioner {
        user_id: "u1".into(),
        role: SdsRole::from_code(role),
        org: GP.into(),
        scopes: Some(Scope::parse_list(scopes)),
    };
    let f = facts(patient_facts());
    assert!(decide(&with("user/*.rs", "R8000"), &read("Observation"), &f).is_permit());
    assert!(!decide(&with("user/Patient.rs", "R8000"), &read("Observation"), &f).is_permit());
    assert!(!decide(&with("system/*.cruds", "R8000"), &read("Observation"), &f).is_permit());
    assert!(!decide(&with("patient/*.rs", "R8000"), &read("Observation"), &f).is_permit());
    // The scope cannot lift role separation.
    assert!(!decide(&with("user/*.cruds", "R8010"), &read("Observation"), &f).is_permit());
}

/// System clients: `system/` scopes only.
#[test]
fn system_scope_table() {
    use Action::*;
    let f = facts(patient_facts());
    let rows: &[(&str, Action, &str, Option<&str>, &str)] = &[
        (
            "system/*.cruds",
            Create,
            "Observation",
            Some("p1"),
            "permit",
        ),
        ("system/*.rs", Create, "Observation", Some("p1"), "deny"),
        (
            "system/Observation.rs",
            Search,
            "Observation",
            Some("p1"),
            "permit",
        ),
        (
            "system/Observation.rs",
            Read,
            "Condition",
            Some("p1"),
            "deny",
        ),
        ("system/Patient.r", Search, "Patient", Some("p1"), "deny"),
        ("patient/*.cruds", Read, "Observation", Some("p1"), "deny"),
        ("user/*.cruds", Read, "Observation", Some("p1"), "deny"),
        ("system/*.cruds", Create, "AuditEvent", None, "deny"),
        ("system/AuditEvent.rs", Search, "AuditEvent", None, "permit"),
        (
            "system/Organization.cu",
            Create,
            "Organization",
            None,
            "permit",
        ),
        ("", Read, "Organization", None, "deny"),
    ];
    for (scopes, action, rt, patient, want) in rows {
        let d = decide(
            &system(scopes, None),
            &Request::new(*action, rt, *patient),
            &f,
        );
        assert_eq!(verdict(&d), *want, "{scopes} {action:?} {rt}: {d:?}");
    }
}

fn opted_out(kind_code: &str) -> PatientFacts {
    let mut p = patient_facts();
    p.consents.push(consent(json!({"provision": {"purpose": [{"system": "http://snomed.info/sct", "code": kind_code}]}})));
    p
}

/// National data opt-out and Type 1: direct care unaffected, secondary use
/// denied unless the legal basis is exempt.
#[test]
fn secondary_use_table() {
    use LegalBasis::*;
    let research = |basis| Purpose::Secondary {
        purpose: SecondaryPurpose::Research,
        basis,
    };
    let gp_data = ResourceFacts {
        creating_org: Some(GP.into()),
        ..ResourceFacts::default()
    };
    let trust_data = ResourceFacts {
        creating_org: Some(TRUST.into()),
        ..ResourceFacts::default()
    };
    let none = patient_facts();
    let ndop = opted_out(crate::consent::NATIONAL_OPT_OUT_SNOMED);
    let type1 = opted_out(crate::consent::TYPE1_OPT_OUT_SNOMED);
    let mut withdrawn = ndop.clone();
    withdrawn.consents[0].status = crate::ConsentStatus::Inactive;
    let sys = system("system/*.rs", None);
    let gp_clinician = clinician(GP);
    let me = patient_principal(Some("p1"), "9000000009");
    let rows: Vec<(
        &str,
        &PatientFacts,
        &ResourceFacts,
        Purpose,
        &Principal,
        &str,
    )> = vec![
        (
            "no opt-out",
            &none,
            &gp_data,
            research(Section251),
            &sys,
            "permit",
        ),
        (
            "NDOP, s251",
            &ndop,
            &gp_data,
            research(Section251),
            &sys,
            "deny",
        ),
        (
            "NDOP, other basis",
            &ndop,
            &gp_data,
            research(Other),
            &sys,
            "deny",
        ),
        (
            "NDOP, court order",
            &ndop,
            &gp_data,
            research(LegalRequirement),
            &sys,
            "permit",
        ),
        (
            "NDOP, public health reg 3",
            &ndop,
            &gp_data,
            research(PublicHealthCopiReg3),
            &sys,
            "permit",
        ),
        (
            "NDOP, explicit consent",
            &ndop,
            &gp_data,
            research(ExplicitConsent),
            &sys,
            "permit",
        ),
        (
            "NDOP withdrawn",
            &withdrawn,
            &gp_data,
            research(Section251),
            &sys,
            "permit",
        ),
        (
            "NDOP, direct care",
            &ndop,
            &gp_data,
            Purpose::DirectCare,
            &sys,
            "permit",
        ),
        (
            "Type 1, GP data",
            &type1,
            &gp_data,
            research(PublicHealthCopiReg3),
            &sys,
            "deny",
        ),
        (
            "Type 1, trust data",
            &type1,
            &trust_data,
            research(Section251),
            &sys,
            "permit",
        ),
        (
            "Type 1, court order",
            &type1,
            &gp_data,
            research(LegalRequirement),
            &sys,
            "permit",
        ),
        (
            "Type 1, direct care",
            &type1,
            &gp_data,
            Purpose::DirectCare,
            &sys,
            "permit",
        ),
        (
            "NDOP, operator export",
            &ndop,
            &gp_data,
            research(Section251),
            &Principal::LocalOperator,
            "deny",
        ),
        (
            "practitioner never",
            &none,
            &gp_data,
            research(Section251),
            &gp_clinician,
            "deny",
        ),
        (
            "patient never",
            &none,
            &gp_data,
            research(Section251),
            &me,
            "deny",
        ),
    ];
    for (name, p, resource, purpose, principal, want) in rows {
        let mut f = facts(p.clone());
        f.resource = resource.clone();
        let request = read("Observation").with_purpose(purpose);
        let d = decide(principal, &request, &f);
        assert_eq!(verdict(&d), want, "{name}: {d:?}");
        if want == "permit" && purpose != Purpose::DirectCare {
            assert!(d.purpose().starts_with("HRESCH"), "{name}: {d:?}");
        }
    }
}

#[test]
fn consent_purpose_deny_binds_secondary_use() {
    let mut p = patient_facts();
    p.consents.push(consent(
        json!({"provision": {"type": "deny", "purpose": [{"code": "HRESCH"}]}}),
    ));
    let d = decide_secondary_use(
        SecondaryPurpose::Research,
        LegalBasis::ExplicitConsent,
        Some(&p),
        &ResourceFacts::default(),
        "Observation",
        NOW,
    );
    assert!(!d.is_permit());
    let d = decide_secondary_use(
        SecondaryPurpose::Planning,
        LegalBasis::Section251,
        Some(&p),
        &ResourceFacts::default(),
        "Observation",
        NOW,
    );
    assert!(d.is_permit());
}

#[test]
fn secondary_use_never_writes() {
    let request =
        Request::new(Action::Create, "Observation", Some("p1")).with_purpose(Purpose::Secondary {
            purpose: SecondaryPurpose::Planning,
            basis: LegalBasis::Section251,
        });
    let d = decide(
        &system("system/*.cruds", None),
        &request,
        &facts(patient_facts()),
    );
    assert!(!d.is_permit());
}

/// S-flag: redacted for everyone but the patient, hidden from address/GP
/// searches.
#[test]
fn restricted_patient() {
    let mut p = patient_facts();
    p.restricted = true;
    let f = facts(p);
    let mut resource = json!({"resourceType": "Patient", "id": "p1",
        "name": [{"family": "X"}], "address": [{"postalCode": "LS1 1AA"}],
        "telecom": [{"value": "0113"}], "generalPractitioner": [{"reference": "Organization/gp"}],
        "contact": [{"name": {"family": "Y"}}]});
    let clerk = decide(&practitioner_with("R8010", OTHER), &read("Patient"), &f);
    assert!(clerk.is_permit());
    clerk.redact(&mut resource);
    let keys: Vec<&String> = resource
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys, ["resourceType", "id", "name"]);
    assert!(clerk.hidden_from_search(["address-postalcode"]));
    assert!(clerk.hidden_from_search(["family", "general-practitioner:identifier"]));
    assert!(clerk.hidden_from_search(["subject:Patient.address-postcode"]));
    assert!(!clerk.hidden_from_search(["family", "birthdate"]));

    let sys = decide(&system("system/*.rs", None), &read("RelatedPerson"), &f);
    assert_eq!(
        sys,
        Decision::Permit {
            purpose: "TREAT: system client within its scopes".into(),
            redactions: vec![Redaction::RemoveElements(vec!["address", "telecom"])],
            break_glass: false
        }
    );
    let gp_obs = decide(&clinician(GP), &read("Observation"), &f);
    assert!(gp_obs.hidden_from_search(["subject.address-postalcode"]));
    assert!(!gp_obs.hidden_from_search(["code"]));

    let own = decide(
        &patient_principal(Some("p1"), "9000000009"),
        &read("Patient"),
        &f,
    );
    assert_eq!(
        own,
        Decision::permit("PATRQT: patient viewing their own record")
    );
    assert!(!own.hidden_from_search(["address-postalcode"]));

    // Unrestricted patients: nothing removed.
    let plain = decide(&clinician(GP), &read("Patient"), &facts(patient_facts()));
    assert!(!plain.hidden_from_search(["address-postalcode"]));
    // A deny hides from every search.
    assert!(Decision::deny("x").hidden_from_search(["family"]));
}

#[test]
fn operator_permits_direct_care() {
    let d = decide(
        &Principal::LocalOperator,
        &Request::new(Action::Delete, "Observation", Some("p1")),
        &Facts::default(),
    );
    assert_eq!(d.purpose(), "HSYSADMIN: local operator delete");
}
