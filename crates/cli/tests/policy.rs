//! Issue 6 end to end, over HTTP with real tokens from the server's built-in
//! issuer: authentication (missing, expired, forged, wrong-audience tokens),
//! relationships (registered practice, attendance), role separation,
//! every read path refusing a withheld resource identically (read, vread,
//! history, search, compartment search, `_include`/`_revinclude`, chains,
//! `_has`, `$everything`, transaction GETs), break-glass with its response
//! mark, audit entry and alert, Consent deny and immediate withdrawal,
//! `meta.security` R labels, S-flag redaction, patient self-access and
//! scope confinement.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use carelayer_http::auth::{BuiltinIssuer, TokenSubject};
use common::{NHS_SYSTEM, Resp, TestServer, nhs_number, observation, patient};
use serde_json::{Value, json};

const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const GP: &str = "Y10001";
const TRUST: &str = "Y20002";
const CREATOR_TAG: &str = carelayer_policy::facts::CREATING_ORG_TAG_SYSTEM;

/// The record set: two organisations, patient p1 registered at the GP
/// practice (by reference, resolved to the ODS code) with two
/// observations, and a restricted (S-flag) patient p2 at the same practice.
struct World {
    s: TestServer,
    p1_nhs: String,
    p2_nhs: String,
    /// Tokens.
    gp: String,
    trust: String,
    receptionist: String,
    officer: String,
    patient1: String,
}

async fn world() -> World {
    let s = TestServer::start().await;
    for (id, code) in [("org-gp", GP), ("org-trust", TRUST)] {
        s.put(
            &format!("Organization/{id}"),
            &json!({"resourceType": "Organization", "id": id, "active": true,
                "identifier": [{"system": ODS, "value": code}], "name": format!("Org {code}")}),
        )
        .await
        .expect_status(201);
    }
    let p1_nhs = nhs_number(6101);
    let p2_nhs = nhs_number(6102);
    let mut p1 = patient(&p1_nhs, "Pemberton");
    p1["id"] = json!("p1");
    p1["generalPractitioner"] = json!([{"reference": "Organization/org-gp"}]);
    s.put("Patient/p1", &p1).await.expect_status(201);
    let mut p2 = patient(&p2_nhs, "Quillfeather");
    p2["id"] = json!("p2");
    p2["address"][0]["postalCode"] = json!("ZZ9 9ZZ");
    p2["telecom"] = json!([{"system": "phone", "value": "0113 496 0000"}]);
    p2["generalPractitioner"] = json!([{"reference": "Organization/org-gp"}]);
    p2["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]});
    s.put("Patient/p2", &p2).await.expect_status(201);
    for (id, pid) in [("obs1", "p1"), ("obs2", "p1"), ("obs3", "p2")] {
        let mut o = observation(pid, "70");
        o["id"] = json!(id);
        s.put(&format!("Observation/{id}"), &o)
            .await
            .expect_status(201);
    }
    let gp = s.practitioner_token("gp-user", "R8000", GP);
    let trust = s.practitioner_token("trust-user", "R8000", TRUST);
    let receptionist = s.practitioner_token("desk-user", "R8009", GP);
    let officer = s.practitioner_token("po-user", "R0001", TRUST);
    let patient1 = s.patient_token(&p1_nhs);
    World {
        s,
        p1_nhs,
        p2_nhs,
        gp,
        trust,
        receptionist,
        officer,
        patient1,
    }
}

fn ids(r: &Resp) -> Vec<String> {
    r.expect_status(200);
    let mut out: Vec<String> = r.json["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let res = &e["resource"];
            (res["resourceType"] != "OperationOutcome").then(|| {
                format!(
                    "{}/{}",
                    res["resourceType"].as_str().unwrap_or("?"),
                    res["id"].as_str().unwrap_or("?")
                )
            })
        })
        .collect();
    out.sort();
    out
}

/// A 404 OperationOutcome exactly like the one for a resource that does
/// not exist (status and issue code).
fn looks_absent(r: &Resp, absent: &Resp) {
    r.expect_status(404);
    assert_eq!(r.json["resourceType"], "OperationOutcome", "{}", r.text);
    assert_eq!(
        r.json["issue"][0]["code"], absent.json["issue"][0]["code"],
        "withheld and absent differ: {} vs {}",
        r.text, absent.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_checked() {
    let w = world().await;
    let s = &w.s;
    let anonymous = s.as_token("");
    // No token at all (the default client of `as_token("")` sends an empty
    // bearer, so use a bare client).
    let bare = common::client();
    let r = common::send(&bare, reqwest::Method::GET, &s.url("Patient/p1"), &[], None).await;
    r.expect_outcome(401, "login", Some("bearer token"));
    assert!(r.header("www-authenticate").is_some());
    let r = common::send(&bare, reqwest::Method::GET, &s.url("metadata"), &[], None).await;
    r.expect_status(200);
    anonymous
        .get("Patient/p1")
        .await
        .expect_outcome(401, "security", None);

    let issuer = &s.server.as_ref().unwrap().issuer;
    let subject = TokenSubject::Practitioner {
        user_id: "gp-user".into(),
        role: "R8000".into(),
        org: GP.into(),
    };
    let wrong_aud = issuer.mint(&subject, None, "someone-else", 3600).unwrap();
    s.as_token(&wrong_aud)
        .get("Patient/p1")
        .await
        .expect_outcome(401, "security", Some("aud"));
    let other_dir = tempfile::tempdir().unwrap();
    let forger = BuiltinIssuer::load_or_create(other_dir.path()).unwrap();
    let forged = forger
        .mint(&subject, None, carelayer_http::auth::DEFAULT_AUDIENCE, 3600)
        .unwrap();
    s.as_token(&forged)
        .get("Patient/p1")
        .await
        .expect_outcome(401, "security", None);
    let now = jsonwebtoken_now();
    let expired = issuer
        .mint_between(
            &subject,
            None,
            carelayer_http::auth::DEFAULT_AUDIENCE,
            now - 7200,
            now - 3600,
        )
        .unwrap();
    s.as_token(&expired)
        .get("Patient/p1")
        .await
        .expect_outcome(401, "security", Some("expired"));
    let early = issuer
        .mint_between(
            &subject,
            None,
            carelayer_http::auth::DEFAULT_AUDIENCE,
            now + 3600,
            now + 7200,
        )
        .unwrap();
    s.as_token(&early)
        .get("Patient/p1")
        .await
        .expect_outcome(401, "security", Some("nbf"));
    s.as_token(&w.gp).get("Patient/p1").await.expect_status(200);
    let _ = (&w.p2_nhs, &w.officer);
    w.s.stop().await;
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinician_without_a_relationship_finds_nothing_on_any_path() {
    let w = world().await;
    let s = &w.s;
    let gp = s.as_token(&w.gp);
    let trust = s.as_token(&w.trust);
    let absent = trust.get("Observation/no-such").await;
    absent.expect_status(404);

    // The GP practice (registered, by a reference resolved to its ODS
    // code) sees everything.
    gp.get("Observation/obs1").await.expect_status(200);
    assert_eq!(
        ids(&gp.get("Observation?subject=Patient/p1").await),
        ["Observation/obs1", "Observation/obs2"]
    );

    // The trust has no relationship: demographics yes, clinical data
    // looks absent everywhere.
    trust.get("Patient/p1").await.expect_status(200);
    looks_absent(&trust.get("Observation/obs1").await, &absent);
    looks_absent(&trust.get("Observation/obs1/_history/1").await, &absent);
    let h = trust.get("Observation/obs1/_history").await;
    let h_absent = trust.get("Observation/no-such/_history").await;
    assert_eq!(h.status, h_absent.status, "{} vs {}", h.text, h_absent.text);
    if h.status == 200 {
        assert!(ids(&h).is_empty(), "{}", h.text);
    }
    for q in [
        "Observation?subject=Patient/p1",
        "Observation?_id=obs1",
        "Observation?subject:Patient.family=Pemberton",
        "Observation?code=http://loinc.org|29463-7",
        "Patient/p1/Observation",
    ] {
        assert!(ids(&trust.get(q).await).is_empty(), "{q}");
    }
    assert_eq!(
        ids(&trust
            .get("Patient?_id=p1&_revinclude=Observation:subject")
            .await),
        ["Patient/p1"]
    );
    assert_eq!(
        ids(&trust
            .get("Observation?_id=obs1&_include=Observation:subject")
            .await),
        Vec::<String>::new()
    );
    // No inference through withheld resources: `_has` on an Observation
    // the trust may not see finds no patient.
    assert!(
        ids(&trust
            .get("Patient?_has:Observation:subject:code=http://loinc.org|29463-7")
            .await)
        .is_empty()
    );
    assert_eq!(
        ids(&gp
            .get("Patient?_has:Observation:subject:code=http://loinc.org|29463-7")
            .await),
        ["Patient/p1", "Patient/p2"]
    );
    // Counts do not leak withheld resources.
    for q in [
        "Observation?_summary=count",
        "Observation?_total=accurate&_count=1",
    ] {
        let r = trust.get(q).await;
        r.expect_status(200);
        assert_eq!(r.json["total"], 0, "{q}: {}", r.text);
        let r = gp.get(q).await;
        assert_eq!(r.json["total"], 3, "{q}: {}", r.text);
    }
    let everything = ids(&trust.get("Patient/p1/$everything").await);
    assert!(
        everything.iter().all(|r| !r.starts_with("Observation/")),
        "{everything:?}"
    );
    // Inside a transaction Bundle too.
    let r = trust
        .post(
            "",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": "Observation/obs1"}},
                {"request": {"method": "GET", "url": "Observation/no-such"}}
            ]}),
        )
        .await;
    r.expect_status(200);
    assert_eq!(
        r.json["entry"][0]["response"]["status"], r.json["entry"][1]["response"]["status"],
        "{}",
        r.text
    );
    // Nor may it write to the patient's record.
    trust
        .post("Observation", &observation("p1", "71"))
        .await
        .expect_outcome(403, "forbidden", None);

    // Attendance creates the relationship: an encounter at the trust.
    trust
        .post(
            "Encounter",
            &json!({"resourceType": "Encounter", "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
                "subject": {"reference": "Patient/p1"},
                "serviceProvider": {"reference": "Organization/org-trust"}}),
        )
        .await
        .expect_status(201);
    trust.get("Observation/obs1").await.expect_status(200);
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_separated() {
    let w = world().await;
    let desk = w.s.as_token(&w.receptionist);
    desk.get("Patient/p1").await.expect_status(200);
    let absent = desk.get("Observation/no-such").await;
    looks_absent(&desk.get("Observation/obs1").await, &absent);
    assert!(ids(&desk.get("Observation?subject=Patient/p1").await).is_empty());
    // A privacy officer reads no clinical data either.
    let officer = w.s.as_token(&w.officer);
    looks_absent(&officer.get("Observation/obs1").await, &absent);
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_permitted_marked_audited_and_alerted() {
    let w = world().await;
    let trust = w.s.as_token(&w.trust);
    trust.get("Observation/obs1").await.expect_status(404);
    let r = trust
        .get_h(
            "Observation/obs1",
            &[("x-break-glass", "unconscious in ED, no history available")],
        )
        .await;
    r.expect_status(200);
    assert_eq!(r.header("x-break-glass-used"), Some("true"));
    // An empty reason is refused.
    trust
        .get_h("Observation/obs1", &[("x-break-glass", "  ")])
        .await
        .expect_outcome(400, "required", Some("reason"));
    // Not marked when the glass was not needed.
    let r = trust
        .get_h("Patient/p1", &[("x-break-glass", "checking")])
        .await;
    r.expect_status(200);
    assert_eq!(r.header("x-break-glass-used"), None);

    // The patient's own access log shows the refusal (as a denial with its
    // reason) and the emergency override with the stated reason.
    let log = w.s.as_token(&w.patient1).get("AuditEvent").await;
    log.expect_status(200);
    let denied = log.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["outcome"] == "4")
        .filter(|e| e["resource"].to_string().contains("trust-user"))
        .count();
    assert!(denied >= 1, "no denial in the patient's log: {}", log.text);
    assert!(
        log.text.contains("no legitimate relationship"),
        "the denial's reason is missing: {}",
        log.text
    );
    assert!(
        log.text.contains("unconscious in ED"),
        "break-glass reason missing from the log: {}",
        log.text
    );
    // The trust's privacy officer is alerted.
    let alerts = w.s.as_token(&w.officer).get("AuditEvent/$alerts").await;
    alerts.expect_status(200);
    assert!(
        alerts.text.contains("unconscious in ED"),
        "no break-glass alert: {}",
        alerts.text
    );
    w.s.stop().await;
}

/// An open outpatient encounter of `patient` at the trust (by ODS code):
/// attendance that gives the trust a legitimate relationship.
fn trust_attendance(patient: &str) -> Value {
    json!({"resourceType": "Encounter", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{patient}")},
        "serviceProvider": {"identifier": {"system": ODS, "value": TRUST}}})
}

fn consent(patient: &str, provision: Value) -> Value {
    json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "dateTime": "2026-01-01T00:00:00Z",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision})
}

fn org_actor(code: &str) -> Value {
    json!({"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
        "reference": {"identifier": {"system": ODS, "value": code}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patients_consent_binds_at_once_and_withdrawal_lifts_it() {
    let w = world().await;
    let me = w.s.as_token(&w.patient1);
    let gp = w.s.as_token(&w.gp);
    gp.get("Observation/obs1").await.expect_status(200);
    // The patient denies their GP practice access to their record.
    let r = me
        .post(
            "Consent",
            &consent("p1", json!({"type": "deny", "actor": [org_actor(GP)]})),
        )
        .await;
    r.expect_status(201);
    let consent_id = r.json["id"].as_str().unwrap().to_owned();
    let absent = gp.get("Observation/no-such").await;
    looks_absent(&gp.get("Observation/obs1").await, &absent);
    assert!(ids(&gp.get("Observation?subject=Patient/p1").await).is_empty());
    // Not even break-glass lifts a patient's deny.
    gp.get_h("Observation/obs1", &[("x-break-glass", "emergency")])
        .await
        .expect_status(404);
    // Withdrawal takes effect on the next request.
    let mut withdrawn = r.json.clone();
    withdrawn["status"] = json!("inactive");
    me.put(&format!("Consent/{consent_id}"), &withdrawn)
        .await
        .expect_status(200);
    gp.get("Observation/obs1").await.expect_status(200);

    // A deny by data category (a sensitivity label) hides only that data.
    let mut sensitive = observation("p1", "72");
    sensitive["id"] = json!("obs-sh");
    sensitive["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SEX"}]});
    w.s.put("Observation/obs-sh", &sensitive)
        .await
        .expect_status(201);
    gp.get("Observation/obs-sh").await.expect_status(200);
    me.post(
        "Consent",
        &consent(
            "p1",
            json!({"type": "deny", "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SEX"}]}),
        ),
    )
    .await
    .expect_status(201);
    gp.get("Observation/obs-sh").await.expect_status(404);
    gp.get("Observation/obs1").await.expect_status(200);
    // A Consent policy could not enforce is refused, not stored.
    let mut bad = consent("p1", json!({"type": "deny"}));
    bad["status"] = json!("sort-of");
    me.post("Consent", &bad).await.expect_status(400);
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_labels_keep_data_at_its_creating_organisation() {
    let w = world().await;
    let gp = w.s.as_token(&w.gp);
    let trust = w.s.as_token(&w.trust);
    // The trust gets a relationship by attendance.
    trust
        .post("Encounter", &trust_attendance("p1"))
        .await
        .expect_status(201);
    // The GP records an R-labelled observation; the creating organisation
    // is stamped by the server (a forged tag is replaced).
    let mut o = observation("p1", "73");
    o["meta"] = json!({
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
        "tag": [{"system": CREATOR_TAG, "code": TRUST}]
    });
    let r = gp.post("Observation", &o).await;
    r.expect_status(201);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let tags = r.json["meta"]["tag"].to_string();
    assert!(tags.contains(GP) && !tags.contains(TRUST), "{tags}");
    gp.get(&format!("Observation/{id}"))
        .await
        .expect_status(200);
    trust
        .get(&format!("Observation/{id}"))
        .await
        .expect_status(404);
    trust.get("Observation/obs1").await.expect_status(200);
    let r = trust
        .get_h(&format!("Observation/{id}"), &[("x-break-glass", "sepsis")])
        .await;
    r.expect_status(200);
    assert_eq!(r.header("x-break-glass-used"), Some("true"));
    // The trust cannot write the label away either.
    let mut changed = r.json.clone();
    changed["meta"].as_object_mut().unwrap().remove("security");
    trust
        .put(&format!("Observation/{id}"), &changed)
        .await
        .expect_status(403);
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_patients_are_redacted_and_not_found_by_address() {
    let w = world().await;
    let gp = w.s.as_token(&w.gp);
    let r = gp.get("Patient/p2").await;
    r.expect_status(200);
    for e in ["address", "telecom", "generalPractitioner"] {
        assert!(r.json.get(e).is_none(), "{e} not removed: {}", r.text);
    }
    assert!(r.json["name"].is_array());
    // Not found by postcode or GP, found by name; redacted in searches.
    assert!(ids(&gp.get("Patient?address-postalcode=ZZ99ZZ").await).is_empty());
    assert!(
        ids(&gp
            .get("Patient?general-practitioner=Organization/org-gp")
            .await)
        .iter()
        .all(|p| p != "Patient/p2")
    );
    assert!(
        ids(&gp
            .get("Observation?subject:Patient.address-postalcode=ZZ99ZZ")
            .await)
        .is_empty()
    );
    let found = gp.get("Patient?family=Quillfeather").await;
    assert_eq!(ids(&found), ["Patient/p2"]);
    assert!(found.json["entry"][0]["resource"].get("address").is_none());
    // Through `$everything` and `_include` as well.
    let e = gp.get("Patient/p2/$everything").await;
    e.expect_status(200);
    assert!(!e.text.contains("ZZ9 9ZZ"), "{}", e.text);
    let e = gp
        .get("Observation?_id=obs3&_include=Observation:subject")
        .await;
    assert!(!e.text.contains("ZZ9 9ZZ"), "{}", e.text);
    // The patient sees their own details.
    let me = w.s.as_token(&w.s.patient_token(&w.p2_nhs));
    let r = me.get("Patient/p2").await;
    r.expect_status(200);
    assert_eq!(r.json["address"][0]["postalCode"], "ZZ9 9ZZ");
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_sees_exactly_their_own_compartment() {
    let w = world().await;
    let me = w.s.as_token(&w.patient1);
    me.get("Patient/p1").await.expect_status(200);
    me.get("Observation/obs1").await.expect_status(200);
    let absent = me.get("Observation/no-such").await;
    looks_absent(&me.get("Observation/obs3").await, &absent);
    looks_absent(&me.get("Patient/p2").await, &absent);
    assert_eq!(
        ids(&me.get("Observation").await),
        ["Observation/obs1", "Observation/obs2"]
    );
    assert_eq!(
        ids(&me
            .get(&format!("Patient?identifier={NHS_SYSTEM}|{}", w.p2_nhs))
            .await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&me
            .get(&format!("Patient?identifier={NHS_SYSTEM}|{}", w.p1_nhs))
            .await),
        ["Patient/p1"]
    );
    // Registers are readable, their own record is not writable but for
    // Consents, and never another patient's.
    me.get("Organization/org-gp").await.expect_status(200);
    me.post("Observation", &observation("p1", "60"))
        .await
        .expect_outcome(403, "forbidden", None);
    me.post("Consent", &consent("p2", json!({"type": "deny"})))
        .await
        .expect_status(403);
    me.post("Consent", &consent("p1", json!({"type": "permit"})))
        .await
        .expect_status(201);
    // Their access log holds only entries about them.
    let log = me.get("AuditEvent").await;
    log.expect_status(200);
    assert!(!log.text.contains("Patient/p2"), "{}", log.text);
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_confine_what_a_token_may_do() {
    let w = world().await;
    let s = &w.s;
    // A patient app allowed only to read Observations.
    let narrow = s.token(
        &TokenSubject::Patient {
            nhs_number: w.p1_nhs.clone(),
            patient_id: None,
        },
        Some("patient/Observation.rs"),
    );
    let app = s.as_token(&narrow);
    app.get("Observation/obs1").await.expect_status(200);
    app.get("Patient/p1").await.expect_status(404);
    // A system client with Patient read only.
    let system = s.token(
        &TokenSubject::Client {
            client_id: "pds-sync".into(),
            org: None,
        },
        Some("system/Patient.rs"),
    );
    let sys = s.as_token(&system);
    sys.get("Patient/p1").await.expect_status(200);
    sys.get("Observation/obs1").await.expect_status(404);
    sys.post("Patient", &patient(&nhs_number(6199), "New"))
        .await
        .expect_status(403);
    // patient/ scopes grant a system nothing.
    let confused = s.token(
        &TokenSubject::Client {
            client_id: "confused".into(),
            org: None,
        },
        Some("patient/*.rs"),
    );
    s.as_token(&confused)
        .get("Patient/p1")
        .await
        .expect_status(404);
    w.s.stop().await;
}

/// Every read path treats `Observation/{obs}` of patient `p1` as absent for
/// `who`: read, vread, history, search by id and by subject, compartment
/// search, `$everything`, `_revinclude`, `_include` from it, `_has` through
/// it, and a batch GET.
async fn withheld_everywhere(who: &common::Caller<'_>, obs: &str) {
    let absent = who.get("Observation/no-such").await;
    looks_absent(&who.get(&format!("Observation/{obs}")).await, &absent);
    looks_absent(
        &who.get(&format!("Observation/{obs}/_history/1")).await,
        &absent,
    );
    let h = who.get(&format!("Observation/{obs}/_history")).await;
    assert_eq!(h.status, 404, "history of {obs}: {}", h.text);
    let me = format!("Observation/{obs}");
    for q in [
        format!("Observation?_id={obs}"),
        "Observation?subject=Patient/p1".to_owned(),
        "Patient/p1/Observation".to_owned(),
        "Patient/p1/$everything".to_owned(),
        "Patient?_id=p1&_revinclude=Observation:subject".to_owned(),
    ] {
        let r = who.get(&q).await;
        if r.status == 200 {
            assert!(!ids(&r).contains(&me), "{q} shows {me}");
        }
    }
    // `_has` through it: p1 (readable or not) is not found by a link only
    // the withheld Observation makes, while p1's own visibility is unchanged.
    let p1_alone = ids(&who.get("Patient?_id=p1").await);
    for q in [
        format!("Patient?_has:Observation:subject:_id={obs}"),
        format!("Patient?_id=p1&_has:Observation:subject:_id={obs},no-such"),
    ] {
        let r = who.get(&q).await;
        r.expect_status(200);
        assert!(
            ids(&r).is_empty(),
            "{q} (p1 alone: {p1_alone:?}): {}",
            r.text
        );
    }
    let inc = who
        .get(&format!(
            "Observation?_id={obs}&_include=Observation:subject"
        ))
        .await;
    assert!(
        ids(&inc).is_empty(),
        "_include from a withheld {obs}: {}",
        inc.text
    );
    let r = who
        .post(
            "",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": me}},
                {"request": {"method": "GET", "url": "Observation/no-such"}}
            ]}),
        )
        .await;
    r.expect_status(200);
    assert_eq!(
        r.json["entry"][0]["response"]["status"], r.json["entry"][1]["response"]["status"],
        "{}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denial_rule_withholds_on_every_path() {
    let w = world().await;
    let s = &w.s;
    // No legitimate relationship.
    withheld_everywhere(&s.as_token(&w.trust), "obs1").await;
    // Role separation: a receptionist at the patient's own practice.
    withheld_everywhere(&s.as_token(&w.receptionist), "obs1").await;
    // The patient's Consent denies their practice.
    let me = s.as_token(&w.patient1);
    me.post(
        "Consent",
        &consent("p1", json!({"type": "deny", "actor": [org_actor(GP)]})),
    )
    .await
    .expect_status(201);
    withheld_everywhere(&s.as_token(&w.gp), "obs1").await;
    // A restricted (R) label, for an organisation with a relationship that
    // did not create the resource.
    let trust = s.as_token(&w.trust);
    let mut o = observation("p1", "74");
    o["id"] = json!("obs-r");
    o["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
        "tag": [{"system": CREATOR_TAG, "code": "Y99999"}]});
    s.put("Observation/obs-r", &o).await.expect_status(201);
    trust
        .post("Encounter", &trust_attendance("p1"))
        .await
        .expect_status(201);
    trust.get("Observation/obs2").await.expect_status(200);
    withheld_everywhere(&trust, "obs-r").await;
    w.s.stop().await;
}

/// Care creates a relationship while open or for a while after it ends:
/// a long-finished encounter at the trust does not let it read, one whose
/// period ends in the future does (and the facts load only such episodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_open_or_recent_care_creates_a_relationship() {
    let w = world().await;
    let trust = w.s.as_token(&w.trust);
    let absent = trust.get("Observation/no-such").await;
    let encounter = |end: &str| {
        let mut e = trust_attendance("p1");
        e["status"] = json!("finished");
        e["period"] = json!({"start": "2001-03-01", "end": end});
        e
    };
    w.s.post("Encounter", &encounter("2001-03-02"))
        .await
        .expect_status(201);
    looks_absent(&trust.get("Observation/obs1").await, &absent);
    w.s.post("Encounter", &encounter("2099-01-01"))
        .await
        .expect_status(201);
    trust.get("Observation/obs1").await.expect_status(200);
    w.s.stop().await;
}
