//! A table of invalid writes: each gets the right status and an
//! OperationOutcome naming the problem (and, for validation, its FHIRPath
//! location), and leaves the store exactly as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{NHS_SYSTEM, TestServer, issue_text, nhs_number, observation, patient};
use reqwest::Method;
use serde_json::{Value, json};

/// The server of this test takes bodies up to this size.
const MAX_BODY: usize = 8 * 1024;

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    /// Acceptable issue codes for the issue that names the problem.
    codes: &'static [&'static str],
    /// The FHIRPath location that issue must carry.
    location: Option<&'static str>,
    /// Words its diagnostics must contain (case-insensitive).
    mentions: &'static [&'static str],
}

#[allow(clippy::too_many_arguments)]
fn json_case(
    name: &'static str,
    method: Method,
    path: &str,
    body: &Value,
    status: u16,
    codes: &'static [&'static str],
    location: Option<&'static str>,
    mentions: &'static [&'static str],
) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        content_type: "application/fhir+json",
        body: serde_json::to_vec(body).unwrap(),
        status,
        codes,
        location,
        mentions,
    }
}

fn with(mut v: Value, pointer: &str, new: Value) -> Value {
    *v.pointer_mut(pointer).unwrap() = new;
    v
}

fn good() -> Value {
    patient(&nhs_number(100), "Valid")
}

fn existing() -> Value {
    let mut p = patient(&nhs_number(101), "Existing");
    p["id"] = json!("existing");
    p
}

fn with_nhs(value: &str) -> Value {
    with(good(), "/identifier/0/value", json!(value))
}

fn cases() -> Vec<Case> {
    const STRUCTURE: &[&str] = &["structure", "value", "invalid"];
    const VALUE: &[&str] = &["value", "invalid", "structure"];
    const RULE: &[&str] = &["business-rule"];
    const BAD_REQUEST: &[&str] = &["invalid"];
    let post = Method::POST;
    let put = Method::PUT;
    let mut unknown = good();
    unknown["favouriteColour"] = json!("green");
    let mut unknown_nested = good();
    unknown_nested["name"][0]["nickname"] = json!("Al");
    let mut mismatched_id = existing();
    mismatched_id["id"] = json!("other");
    let mut big = good();
    big["text"] = json!({
        "status": "generated",
        "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "x".repeat(MAX_BODY))
    });
    let mut bad_obs = observation("existing", "70.1");
    bad_obs["status"] = json!("not-a-status");

    let good_entry = |family: &str| json!({"resource": patient(&nhs_number(102), family), "request": {"method": "POST", "url": "Patient"}});
    let tx_bad_nhs = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            good_entry("TxOne"),
            {"resource": with_nhs("9876544321"), "request": {"method": "POST", "url": "Patient"}},
            good_entry("TxThree"),
        ]
    });
    let tx_bad_type = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            good_entry("TxOne"),
            {"resource": with(existing(), "/active", json!("yes")), "request": {"method": "PUT", "url": "Patient/existing"}},
            {"request": {"method": "DELETE", "url": "Patient/existing"}},
        ]
    });
    let tx_bad_obs = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            good_entry("TxOne"),
            {"resource": observation("existing", "71.0"), "request": {"method": "POST", "url": "Observation"}},
            {"resource": bad_obs, "request": {"method": "POST", "url": "Observation"}},
        ]
    });

    vec![
        Case {
            name: "malformed JSON",
            method: post.clone(),
            path: "Patient".into(),
            content_type: "application/fhir+json",
            body: br#"{"resourceType": "Patient", "active": tru"#.to_vec(),
            status: 400,
            codes: BAD_REQUEST,
            location: None,
            mentions: &["json"],
        },
        Case {
            name: "not an object",
            method: post.clone(),
            path: "Patient".into(),
            content_type: "application/fhir+json",
            body: br#"["Patient"]"#.to_vec(),
            status: 400,
            codes: BAD_REQUEST,
            location: None,
            mentions: &["object"],
        },
        Case {
            name: "malformed JSON in an update",
            method: put.clone(),
            path: "Patient/existing".into(),
            content_type: "application/fhir+json",
            body: b"{\"resourceType\": \"Patient\", \"id\": \"existing\",}".to_vec(),
            status: 400,
            codes: BAD_REQUEST,
            location: None,
            mentions: &["json"],
        },
        json_case(
            "wrong JSON type: boolean as string",
            post.clone(),
            "Patient",
            &with(good(), "/active", json!("yes")),
            400,
            STRUCTURE,
            Some("Patient.active"),
            &[],
        ),
        json_case(
            "wrong JSON type: string as number",
            post.clone(),
            "Patient",
            &with(good(), "/name/0/family", json!(42)),
            400,
            STRUCTURE,
            Some("Patient.name[0].family"),
            &[],
        ),
        json_case(
            "wrong JSON type: single value where an array is required",
            post.clone(),
            "Patient",
            &with(good(), "/name", json!({"family": "NoArray"})),
            400,
            STRUCTURE,
            Some("Patient.name"),
            &[],
        ),
        json_case(
            "wrong JSON type in an update of an existing resource",
            put.clone(),
            "Patient/existing",
            &with(existing(), "/active", json!("yes")),
            400,
            STRUCTURE,
            Some("Patient.active"),
            &[],
        ),
        json_case(
            "unknown element",
            post.clone(),
            "Patient",
            &unknown,
            400,
            STRUCTURE,
            Some("Patient.favouriteColour"),
            &["favouriteColour"],
        ),
        json_case(
            "unknown nested element",
            post.clone(),
            "Patient",
            &unknown_nested,
            400,
            STRUCTURE,
            Some("Patient.name[0].nickname"),
            &["nickname"],
        ),
        json_case(
            "bad date",
            post.clone(),
            "Patient",
            &with(good(), "/birthDate", json!("1980-13-45")),
            400,
            VALUE,
            Some("Patient.birthDate"),
            &["1980-13-45"],
        ),
        json_case(
            "bad code in a required binding",
            post.clone(),
            "Patient",
            &with(good(), "/gender", json!("woman")),
            400,
            &["code-invalid", "value"],
            Some("Patient.gender"),
            &["woman"],
        ),
        json_case(
            "missing required element",
            post.clone(),
            "Observation",
            &{
                let mut o = observation("existing", "70.1");
                o.as_object_mut().unwrap().remove("code");
                o
            },
            400,
            &["required", "structure"],
            Some("Observation.code"),
            &[],
        ),
        json_case(
            "bad NHS number: 987 654 4321 (check digit)",
            post.clone(),
            "Patient",
            &with_nhs("9876544321"),
            422,
            RULE,
            Some("Patient.identifier[0].value"),
            &["NHS number"],
        ),
        json_case(
            "bad NHS number: 987 654 4321 written with spaces",
            post.clone(),
            "Patient",
            &with_nhs("987 654 4321"),
            422,
            RULE,
            Some("Patient.identifier[0].value"),
            &["NHS number"],
        ),
        json_case(
            "bad NHS number: 999 123 4560 (no valid check digit)",
            post.clone(),
            "Patient",
            &with_nhs("9991234560"),
            422,
            RULE,
            Some("Patient.identifier[0].value"),
            &["NHS number"],
        ),
        json_case(
            "bad NHS number: letters",
            post.clone(),
            "Patient",
            &with_nhs("99900A0018"),
            422,
            RULE,
            Some("Patient.identifier[0].value"),
            &["NHS number"],
        ),
        json_case(
            "bad NHS number: all one digit",
            post.clone(),
            "Patient",
            &with_nhs("1111111111"),
            422,
            RULE,
            Some("Patient.identifier[0].value"),
            &["NHS number"],
        ),
        json_case(
            "bad NHS number in an update",
            put.clone(),
            "Patient/existing",
            &with(existing(), "/identifier/0/value", json!("9876544321")),
            422,
            RULE,
            Some("Patient.identifier[0].value"),
            &["NHS number"],
        ),
        json_case(
            "bad NHS number in a reference's identifier",
            post.clone(),
            "Observation",
            &with(
                observation("existing", "70.1"),
                "/subject",
                json!({"identifier": {"system": NHS_SYSTEM, "value": "9991234560"}}),
            ),
            422,
            RULE,
            Some("Observation.subject.identifier.value"),
            &["NHS number"],
        ),
        json_case(
            "id in the body differs from the URL",
            put.clone(),
            "Patient/existing",
            &mismatched_id,
            400,
            BAD_REQUEST,
            None,
            &["other", "existing"],
        ),
        json_case(
            "update without an id in the body",
            put.clone(),
            "Patient/existing",
            &good(),
            400,
            BAD_REQUEST,
            None,
            &["existing"],
        ),
        json_case(
            "resourceType differs from the URL (create)",
            post.clone(),
            "Observation",
            &good(),
            400,
            BAD_REQUEST,
            None,
            &["Patient", "Observation"],
        ),
        json_case(
            "resourceType differs from the URL (update)",
            put.clone(),
            "Observation/existing",
            &existing(),
            400,
            BAD_REQUEST,
            None,
            &["Patient", "Observation"],
        ),
        json_case(
            "invalid id in the URL",
            put.clone(),
            "Patient/bad_id!",
            &{
                let mut p = good();
                p["id"] = json!("bad_id!");
                p
            },
            400,
            &["invalid", "value"],
            None,
            &["bad_id!"],
        ),
        json_case(
            "body over the configured size limit",
            post.clone(),
            "Patient",
            &big,
            413,
            &["too-costly"],
            None,
            &["limit"],
        ),
        json_case(
            "transaction with a bad NHS number among good entries",
            post.clone(),
            "",
            &tx_bad_nhs,
            422,
            RULE,
            Some("Bundle.entry[1].resource.identifier[0].value"),
            &["NHS number"],
        ),
        json_case(
            "transaction with a wrong JSON type among good entries",
            post.clone(),
            "",
            &tx_bad_type,
            400,
            STRUCTURE,
            Some("Bundle.entry[1].resource.active"),
            &[],
        ),
        json_case(
            "transaction with an invalid code among good entries",
            post.clone(),
            "",
            &tx_bad_obs,
            400,
            &["code-invalid", "value"],
            Some("Bundle.entry[2].resource.status"),
            &["not-a-status"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_writes_are_refused_and_change_nothing() {
    let s = TestServer::start_with(|c| c.http.max_body_bytes = MAX_BODY).await;
    // Something to update, and something the refused writes must not touch.
    s.put("Patient/existing", &existing())
        .await
        .expect_status(201);
    let mut obs = observation("existing", "70.0");
    obs["id"] = json!("existing");
    s.put("Observation/existing", &obs).await.expect_status(201);
    // The good Patient of the table is itself accepted elsewhere.
    s.post("Patient/$validate", &good())
        .await
        .expect_status(200);

    let before = s.fingerprint().await;
    assert_eq!(before.len(), 2);
    let existing_before = s.get("Patient/existing").await.json;

    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        let r = s
            .send(
                case.method.clone(),
                &case.path,
                &[("content-type", case.content_type)],
                Some(case.body.clone()),
            )
            .await;
        let mut problems = Vec::new();
        if r.status.as_u16() != case.status {
            problems.push(format!("status {} (expected {})", r.status, case.status));
        }
        if r.json["resourceType"] != "OperationOutcome" {
            problems.push("the body is not an OperationOutcome".into());
        } else {
            let issues = r.json["issue"].as_array().cloned().unwrap_or_default();
            let named = issues.iter().any(|i| {
                let code_ok = i["code"].as_str().is_some_and(|c| case.codes.contains(&c));
                let severity_ok = i["severity"] == "error" || i["severity"] == "fatal";
                let location_ok = case.location.is_none_or(|l| {
                    ["expression", "location"]
                        .iter()
                        .any(|k| i[*k].as_array().is_some_and(|ls| ls.iter().any(|x| x == l)))
                });
                let text = issue_text(i);
                let mentions_ok = case
                    .mentions
                    .iter()
                    .all(|m| text.contains(&m.to_lowercase()));
                code_ok && severity_ok && location_ok && mentions_ok
            });
            if !named {
                problems.push(format!(
                    "no error issue with code in {:?}{}{}",
                    case.codes,
                    case.location
                        .map(|l| format!(" at {l}"))
                        .unwrap_or_default(),
                    if case.mentions.is_empty() {
                        String::new()
                    } else {
                        format!(" mentioning {:?}", case.mentions)
                    }
                ));
            }
        }
        let after = s.fingerprint().await;
        if after != before {
            problems.push(format!("the store changed: {after:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n    response: {}",
                case.name,
                problems.join("; "),
                r.text.chars().take(600).collect::<String>()
            ));
        }
    }
    assert_eq!(s.get("Patient/existing").await.json, existing_before);
    assert!(
        failures.is_empty(),
        "{} of {} invalid writes misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The limit is on size, not on kind: a small good write still works.
    s.post("Patient", &good()).await.expect_status(201);
    assert_eq!(s.fingerprint().await.len(), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_over_the_entry_limit_is_refused() {
    let s = TestServer::start_with(|c| c.records.max_bundle_entries = 3).await;
    let entries: Vec<Value> = (0..4)
        .map(|i| {
            json!({"resource": patient(&nhs_number(200 + i), "Many"), "request": {"method": "POST", "url": "Patient"}})
        })
        .collect();
    for kind in ["transaction", "batch"] {
        let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": entries});
        s.post("", &bundle)
            .await
            .expect_outcome(413, "too-costly", None);
    }
    assert!(s.fingerprint().await.is_empty());
    s.stop().await;
}
