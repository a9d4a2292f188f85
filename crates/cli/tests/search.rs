//! FHIR search over HTTP (issue 4): tables per parameter type, modifier and
//! prefix (with precision edges), chaining, `_has`, includes, sorting,
//! result control, compartments, `$everything`, PDS-style trace, and paging
//! through 1,000 results while another task writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{NHS_SYSTEM, TestServer, nhs_number, search_ids};
use reqwest::Method;
use serde_json::{Value, json};

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~' | b'=' | b'&' | b'?' | b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn put(s: &TestServer, r: Value) {
    let path = format!(
        "{}/{}",
        r["resourceType"].as_str().unwrap(),
        r["id"].as_str().unwrap()
    );
    s.put(&path, &r).await.expect_status_in(&[200, 201]);
}

trait StatusIn {
    fn expect_status_in(&self, s: &[u16]);
}

impl StatusIn for common::Resp {
    #[track_caller]
    fn expect_status_in(&self, s: &[u16]) {
        assert!(
            s.contains(&self.status.as_u16()),
            "status {} body {}",
            self.status,
            self.text
        );
    }
}

/// Ids matched by `query` (encoded here), sorted.
async fn ids(s: &TestServer, query: &str) -> Vec<String> {
    let mut v = search_ids(s, &enc(query)).await;
    v.sort();
    v
}

#[track_caller]
fn set(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

fn pat(
    id: &str,
    n: u64,
    family: &str,
    given: &str,
    birth: &str,
    gender: &str,
    post: &str,
) -> Value {
    json!({
        "resourceType": "Patient", "id": id,
        "identifier": [{"system": NHS_SYSTEM, "value": nhs_number(n)}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender, "birthDate": birth,
        "address": [{"line": ["1 High St"], "city": "Leeds", "postalCode": post}]
    })
}

fn obs(id: &str, patient: &str, code: &str, value: f64, when: &str) -> Value {
    json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code, "display": "Heart rate"}], "text": "Heart rate"},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "beats/min", "system": UCUM, "code": "/min"}
    })
}

async fn fixture() -> TestServer {
    let s = TestServer::start().await;
    put(
        &s,
        json!({"resourceType": "Organization", "id": "gp1", "name": "Leeds GP",
        "identifier": [{"system": ODS, "value": "A81001"}]}),
    )
    .await;
    put(
        &s,
        json!({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Who"}]}),
    )
    .await;
    let mut a = pat("a", 1, "Ström", "Zoë", "1980-04-12", "female", "LS1 4AP");
    a["name"]
        .as_array_mut()
        .unwrap()
        .push(json!({"use": "maiden", "family": "Jones", "given": ["Zoe"]}));
    a["generalPractitioner"] = json!([{"identifier": {"system": ODS, "value": "A81001"}}]);
    a["identifier"].as_array_mut().unwrap().push(json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
        "system": "https://example.org/mrn", "value": "MRN-1"}));
    put(&s, a).await;
    let mut b = pat("b", 2, "Smith", "John", "1980-12-31", "male", "LS2 7AB");
    b["generalPractitioner"] = json!([{"reference": "Organization/gp1"}]);
    put(&s, b).await;
    put(
        &s,
        pat("c", 3, "Smithson", "Anne", "1981-01-01", "female", "M1 1AA"),
    )
    .await;
    let mut d = pat("d", 4, "Jones", "Dai", "1979-06-15", "male", "CF10 1AA");
    d["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]});
    d["address"][0]["postalCode"] = json!("LS1 4AP");
    put(&s, d).await;
    put(&s, obs("o1", "a", "8867-4", 72.0, "2020-03-01T10:00:00Z")).await;
    put(&s, obs("o2", "a", "8867-4", 55.0, "2020-03-02T10:00:00Z")).await;
    put(&s, obs("o3", "b", "8867-4", 90.5, "2021-01-01")).await;
    let mut o4 = obs("o4", "b", "8310-5", 37.2, "2021-06-01");
    o4["code"]["coding"][0]["display"] = json!("Body temperature");
    o4["code"]["text"] = json!("Body temperature");
    o4["valueQuantity"] = json!({"value": 37.2, "unit": "Cel", "system": UCUM, "code": "Cel"});
    o4["performer"] = json!([{"reference": "Practitioner/dr1"}]);
    put(&s, o4).await;
    put(
        &s,
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/a"},
        "period": {"start": "2020-03-01T09:00:00Z", "end": "2020-03-01T11:00:00Z"}}),
    )
    .await;
    put(
        &s,
        json!({"resourceType": "Encounter", "id": "e2", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/b"},
        "period": {"start": "2021-01-01T09:00:00Z"}}),
    )
    .await;
    put(
        &s,
        json!({"resourceType": "List", "id": "l1", "status": "current", "mode": "working",
        "entry": [{"item": {"reference": "Patient/a"}}, {"item": {"reference": "Patient/c"}}]}),
    )
    .await;
    put(
        &s,
        json!({"resourceType": "ValueSet", "id": "vs1", "status": "active",
        "url": "http://example.org/fhir/ValueSet/hr"}),
    )
    .await;
    put(
        &s,
        json!({"resourceType": "RiskAssessment", "id": "r1", "status": "final",
        "subject": {"reference": "Patient/a"},
        "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Low &amp; stable risk of <b>stroke</b></p></div>"},
        "prediction": [{"probabilityDecimal": 0.25}]}),
    )
    .await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_types_modifiers_and_prefixes() {
    let s = fixture().await;
    let nhs_a = nhs_number(1);
    let cases: Vec<(String, Vec<&str>)> = vec![
        // token
        (
            format!("Patient?identifier={NHS_SYSTEM}|{nhs_a}"),
            vec!["a"],
        ),
        (format!("Patient?identifier={nhs_a}"), vec!["a"]),
        (format!("Patient?identifier=|{nhs_a}"), vec![]),
        (
            format!("Patient?identifier={NHS_SYSTEM}|"),
            vec!["a", "b", "c", "d"],
        ),
        ("Patient?gender=male".into(), vec!["b", "d"]),
        ("Patient?gender:not=male".into(), vec!["a", "c"]),
        ("Patient?gender:not=male,female".into(), vec![]),
        (
            "Patient?gender=male,female".into(),
            vec!["a", "b", "c", "d"],
        ),
        ("Observation?code:text=body".into(), vec!["o4"]),
        (
            "Observation?code:text=heart rate".into(),
            vec!["o1", "o2", "o3"],
        ),
        (
            format!("Observation?code:below={LOINC}|8867-4"),
            vec!["o1", "o2", "o3"],
        ),
        (format!("Observation?code:above={LOINC}|8310-5"), vec!["o4"]),
        (
            "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-1"
                .into(),
            vec!["a"],
        ),
        (
            "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-2"
                .into(),
            vec![],
        ),
        // string
        ("Patient?family=smi".into(), vec!["b", "c"]),
        ("Patient?family=SMITH".into(), vec!["b", "c"]),
        ("Patient?family:exact=Smith".into(), vec!["b"]),
        ("Patient?family:exact=smith".into(), vec![]),
        ("Patient?family:contains=mit".into(), vec!["b", "c"]),
        ("Patient?family=strom".into(), vec!["a"]),
        ("Patient?family=Ström".into(), vec!["a"]),
        ("Patient?given=zoe".into(), vec!["a"]),
        ("Patient?family=jones".into(), vec!["a", "d"]),
        ("Patient?name=zo".into(), vec!["a"]),
        // date precision edges
        ("Patient?birthdate=1980".into(), vec!["a", "b"]),
        ("Patient?birthdate=1980-04".into(), vec!["a"]),
        ("Patient?birthdate=eq1980-04-12".into(), vec!["a"]),
        ("Patient?birthdate=ge1980-01-01".into(), vec!["a", "b", "c"]),
        ("Patient?birthdate=ge1980".into(), vec!["a", "b", "c"]),
        ("Patient?birthdate=gt1980".into(), vec!["c"]),
        ("Patient?birthdate=lt1980".into(), vec!["d"]),
        ("Patient?birthdate=le1980-12-31".into(), vec!["a", "b", "d"]),
        ("Patient?birthdate=ne1980".into(), vec!["c", "d"]),
        (
            "Patient?birthdate=ge1980-01-01&birthdate=le1980-12-31".into(),
            vec!["a", "b"],
        ),
        ("Patient?birthdate=sa1980".into(), vec!["c"]),
        ("Patient?birthdate=eb1980".into(), vec!["d"]),
        ("Observation?date=2020-03-01".into(), vec!["o1"]),
        ("Observation?date=2020-03".into(), vec!["o1", "o2"]),
        (
            "Observation?date=ge2020-03-01T10:00:00Z".into(),
            vec!["o1", "o2", "o3", "o4"],
        ),
        (
            "Observation?date=gt2020-03-01T10:00:00Z".into(),
            vec!["o2", "o3", "o4"],
        ),
        // periods: sa/eb need the whole period after/before; an open end never ends
        ("Encounter?date=2020-03-01".into(), vec!["e1"]),
        ("Encounter?date=sa2020-02-28".into(), vec!["e1", "e2"]),
        ("Encounter?date=sa2020-03-01T10:00:00Z".into(), vec!["e2"]),
        ("Encounter?date=eb2020-03-02".into(), vec!["e1"]),
        ("Encounter?date=eb2030".into(), vec!["e1"]),
        ("Encounter?date=ge2030".into(), vec!["e2"]),
        ("Encounter?date=ap2020-03-01".into(), vec!["e1"]),
        // quantity
        ("Observation?value-quantity=72".into(), vec!["o1"]),
        (
            format!("Observation?value-quantity=72|{UCUM}|/min"),
            vec!["o1"],
        ),
        (format!("Observation?value-quantity=72|{UCUM}|Cel"), vec![]),
        ("Observation?value-quantity=gt60".into(), vec!["o1", "o3"]),
        ("Observation?value-quantity=lt40".into(), vec!["o4"]),
        ("Observation?value-quantity=ge90.5".into(), vec!["o3"]),
        ("Observation?value-quantity=le55".into(), vec!["o2", "o4"]),
        ("Observation?value-quantity=ap70".into(), vec!["o1"]),
        ("Observation?value-quantity=37.2||Cel".into(), vec!["o4"]),
        ("Observation?value-quantity=95".into(), vec![]),
        ("Observation?value-quantity=9e1".into(), vec!["o3"]),
        // number
        ("RiskAssessment?probability=0.25".into(), vec!["r1"]),
        ("RiskAssessment?probability=gt0.2".into(), vec!["r1"]),
        ("RiskAssessment?probability=lt0.2".into(), vec![]),
        // composite
        (
            format!("Observation?code-value-quantity={LOINC}|8867-4$gt60"),
            vec!["o1", "o3"],
        ),
        (
            format!("Observation?code-value-quantity={LOINC}|8867-4$lt60"),
            vec!["o2"],
        ),
        (
            format!("Observation?code-value-quantity={LOINC}|8310-5$gt60"),
            vec![],
        ),
        // reference forms
        ("Observation?subject=Patient/a".into(), vec!["o1", "o2"]),
        ("Observation?subject:Patient=a".into(), vec!["o1", "o2"]),
        ("Observation?patient=a".into(), vec!["o1", "o2"]),
        (
            format!("Observation?subject={}/Patient/b", s.base),
            vec!["o3", "o4"],
        ),
        ("Observation?performer=Practitioner/dr1".into(), vec!["o4"]),
        (
            format!("Patient?general-practitioner:identifier={ODS}|A81001"),
            vec!["a"],
        ),
        // uri
        (
            "ValueSet?url=http://example.org/fhir/ValueSet/hr".into(),
            vec!["vs1"],
        ),
        (
            "ValueSet?url:below=http://example.org/fhir".into(),
            vec!["vs1"],
        ),
        ("ValueSet?url:below=http://example.org/other".into(), vec![]),
        (
            "ValueSet?url:above=http://example.org/fhir/ValueSet/hr/extra".into(),
            vec!["vs1"],
        ),
        // missing
        (
            "Observation?performer:missing=true".into(),
            vec!["o1", "o2", "o3"],
        ),
        ("Observation?performer:missing=false".into(), vec!["o4"]),
        ("Encounter?date:missing=false".into(), vec!["e1", "e2"]),
        (
            "Patient?general-practitioner:missing=true".into(),
            vec!["c", "d"],
        ),
        // _id, _lastUpdated, _list, _security
        ("Patient?_id=a,c".into(), vec!["a", "c"]),
        // `_id` is held on the current version, not as index rows; its
        // modifiers are answered from there.
        ("Patient?_id:not=a,c".into(), vec!["b", "d"]),
        ("Patient?_id:not=a&gender=female".into(), vec!["c"]),
        ("Patient?_id:missing=false".into(), vec!["a", "b", "c", "d"]),
        ("Patient?_id:missing=true".into(), vec![]),
        (
            "Patient?_lastUpdated=gt2000-01-01".into(),
            vec!["a", "b", "c", "d"],
        ),
        ("Patient?_lastUpdated=lt2000-01-01".into(), vec![]),
        // Held on the current version, not as index rows: every resource
        // has one.
        (
            "Patient?_lastUpdated:missing=false".into(),
            vec!["a", "b", "c", "d"],
        ),
        ("Patient?_lastUpdated:missing=true".into(), vec![]),
        ("Patient?_list=l1".into(), vec!["a", "c"]),
        ("Patient?_security=R".into(), vec!["d"]),
        // multiple values OR, repeated params AND
        (
            "Patient?family=smith,strom&gender=female".into(),
            vec!["a", "c"],
        ),
        // _content: the resource's words; _text: the narrative's
        ("Observation?_content=heart".into(), vec!["o1", "o2", "o3"]),
        (
            "Observation?_content=HEART RATE".into(),
            vec!["o1", "o2", "o3"],
        ),
        ("Observation?_content=heart temperature".into(), vec![]),
        (
            "Observation?_content=temp,heart".into(),
            vec!["o1", "o2", "o3", "o4"],
        ),
        (
            "Observation?_content=heart&_content=temperature".into(),
            vec![],
        ),
        ("Observation?_content:contains=perat".into(), vec!["o4"]),
        ("Patient?_content=zoe".into(), vec!["a"]),
        ("Patient?_content:exact=Zoë".into(), vec!["a"]),
        ("Patient?_content:exact=zoë".into(), vec![]),
        ("Patient?_content=leeds".into(), vec!["a", "b", "c", "d"]),
        // codes, links and dates are not content words
        ("Observation?_content=8867".into(), vec![]),
        ("Patient?_content=1980".into(), vec![]),
        ("RiskAssessment?_text=stroke".into(), vec!["r1"]),
        ("RiskAssessment?_text=low stable".into(), vec!["r1"]),
        ("RiskAssessment?_text=amp".into(), vec![]),
        ("RiskAssessment?_text=final".into(), vec![]),
        ("Observation?_text=heart".into(), vec![]),
    ];
    let mut wrong = Vec::new();
    for (query, want) in &cases {
        let got = ids(&s, query).await;
        if got != set(want) {
            wrong.push(format!("{query}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaining_has_and_pds_trace() {
    let s = fixture().await;
    let nhs_b = nhs_number(2);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("Observation?subject:Patient.identifier={NHS_SYSTEM}|{nhs_b}"),
            vec!["o3", "o4"],
        ),
        ("Observation?subject.name=strom".into(), vec!["o1", "o2"]),
        (
            "Observation?subject:Patient.family=jones".into(),
            vec!["o1", "o2"],
        ),
        (
            "Observation?patient.birthdate=1980-12-31&code=8867-4".into(),
            vec!["o3"],
        ),
        // multi-level: the Observation of a patient whose GP is called Leeds GP
        (
            "Observation?subject:Patient.general-practitioner:Organization.name=leeds".into(),
            vec!["o3", "o4"],
        ),
        (
            "Encounter?subject.general-practitioner:Organization.identifier=A81001".into(),
            vec!["e2"],
        ),
        // reverse chaining
        (
            "Patient?_has:Observation:subject:code=8310-5".into(),
            vec!["b"],
        ),
        (
            format!("Patient?_has:Observation:subject:code={LOINC}|8867-4"),
            vec!["a", "b"],
        ),
        (
            "Patient?_has:Observation:subject:value-quantity=lt60".into(),
            vec!["a", "b"],
        ),
        (
            "Practitioner?_has:Observation:performer:subject=Patient/b".into(),
            vec!["dr1"],
        ),
        // PDS trace (restricted patients never match postcode or GP searches)
        (
            format!("Patient?identifier={NHS_SYSTEM}|{nhs_b}"),
            vec!["b"],
        ),
        (
            "Patient?family=STROM&birthdate=1980-04-12".into(),
            vec!["a"],
        ),
        ("Patient?family=jones&given=zoe".into(), vec!["a"]),
        (
            "Patient?birthdate=ge1980-01-01&birthdate=le1980-06-30&gender=female".into(),
            vec!["a"],
        ),
        ("Patient?address-postalcode=LS14AP".into(), vec!["a"]),
        ("Patient?address-postalcode=ls1 4ap".into(), vec!["a"]),
        ("Patient?address-postalcode=LS1".into(), vec!["a"]),
        ("Patient?family=jones".into(), vec!["a", "d"]),
        ("Patient?general-practitioner=A81001".into(), vec!["a"]),
        (
            "Patient?general-practitioner=Organization/gp1".into(),
            vec!["b"],
        ),
        (
            "Patient?general-practitioner.identifier=A81001".into(),
            vec!["b"],
        ),
    ];
    let mut wrong = Vec::new();
    for (query, want) in &cases {
        let got = ids(&s, query).await;
        if got != set(want) {
            wrong.push(format!("{query}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn includes_sorting_and_result_control() {
    let s = fixture().await;
    // _include / _revinclude / :iterate / *
    let r = s
        .get(&enc(
            "Observation?code=8310-5&_include=Observation:subject&_include=Observation:performer",
        ))
        .await;
    r.expect_status(200);
    let modes = |r: &common::Resp| -> BTreeSet<(String, String)> {
        r.json["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["search"]["mode"].as_str().unwrap().to_owned(),
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap_or("")
                    ),
                )
            })
            .collect()
    };
    let m = modes(&r);
    assert!(
        m.contains(&("match".into(), "Observation/o4".into())),
        "{m:?}"
    );
    assert!(m.contains(&("include".into(), "Patient/b".into())), "{m:?}");
    assert!(
        m.contains(&("include".into(), "Practitioner/dr1".into())),
        "{m:?}"
    );
    let r = s.get(&enc("Observation?code=8310-5&_include=*")).await;
    assert!(modes(&r).contains(&("include".into(), "Practitioner/dr1".into())));
    let r = s
        .get(&enc("Patient?_id=b&_revinclude=Observation:subject"))
        .await;
    let m = modes(&r);
    assert!(
        m.contains(&("include".into(), "Observation/o3".into()))
            && m.contains(&("include".into(), "Observation/o4".into())),
        "{m:?}"
    );
    let r = s
        .get(&enc(
            "Patient?_id=b&_revinclude=Observation:subject&_include:iterate=Observation:performer",
        ))
        .await;
    assert!(modes(&r).contains(&("include".into(), "Practitioner/dr1".into())));
    let r = s
        .get(&enc("Encounter?_id=e2&_include=Encounter:subject&_include:iterate=Patient:general-practitioner"))
        .await;
    assert!(modes(&r).contains(&("include".into(), "Organization/gp1".into())));
    // the include cap gives an OperationOutcome entry, not an error
    let capped = TestServer::start_with(|c| c.records.max_includes = 1).await;
    put(
        &capped,
        pat("x", 9, "Cap", "A", "1990-01-01", "male", "LS1 1AA"),
    )
    .await;
    for i in 0..3 {
        put(
            &capped,
            obs(&format!("ox{i}"), "x", "8867-4", 70.0, "2020-01-01"),
        )
        .await;
    }
    let r = capped
        .get(&enc("Patient?_id=x&_revinclude=Observation:subject"))
        .await;
    r.expect_status(200);
    let m = modes(&r);
    assert_eq!(m.iter().filter(|(k, _)| k == "include").count(), 1, "{m:?}");
    assert!(
        m.iter()
            .any(|(k, v)| k == "outcome" && v.starts_with("OperationOutcome")),
        "{m:?}"
    );
    capped.stop().await;

    // sorting, multiple keys
    let order = |r: &common::Resp| -> Vec<String> {
        r.json["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = s.get("Patient?_sort=birthdate").await;
    assert_eq!(order(&r), ["d", "a", "b", "c"]);
    let r = s.get("Patient?_sort=-birthdate").await;
    assert_eq!(order(&r), ["c", "b", "a", "d"]);
    let r = s.get("Patient?_sort=gender,-family").await;
    assert_eq!(order(&r), ["a", "c", "b", "d"]);
    let r = s.get("Observation?_sort=-value-quantity&code=8867-4").await;
    assert_eq!(order(&r), ["o3", "o1", "o2"]);
    let r = s.get("Patient?_sort=_id&_count=2").await;
    assert_eq!(order(&r), ["a", "b"]);

    // _total, _summary, _elements
    let r = s.get("Patient?_total=accurate&_count=1").await;
    assert_eq!(r.json["total"], 4);
    let r = s.get("Patient?_total=none").await;
    assert!(r.json.get("total").is_none());
    let r = s.get("Patient?gender=male&_summary=count").await;
    assert_eq!(r.json["total"], 2);
    assert!(r.json.get("entry").is_none());
    let r = s.get("Patient?_id=a&_summary=true").await;
    let p = &r.json["entry"][0]["resource"];
    assert!(p.get("birthDate").is_some() && p.get("name").is_some());
    assert_eq!(p["meta"]["tag"][0]["code"], "SUBSETTED");
    let r = s.get("Patient?_id=a&_elements=birthDate").await;
    let p = &r.json["entry"][0]["resource"];
    assert!(p.get("birthDate").is_some() && p.get("name").is_none() && p["id"] == "a");

    // strict vs lenient; POST _search
    s.get("Patient?nonsense=1")
        .await
        .expect_outcome(400, "invalid", Some("nonsense"));
    // Alternatives of several words each are ambiguous: said, not guessed.
    s.get("Observation?_content=heart%20rate,body")
        .await
        .expect_outcome(400, "invalid", Some("several words"));
    s.get("Observation?_content=%21%2D%21")
        .await
        .expect_outcome(400, "invalid", Some("no words"));
    s.get("Patient?_id:text=a")
        .await
        .expect_outcome(400, "invalid", Some("_id takes no modifier"));
    let r = s
        .get_h(
            "Patient?nonsense=1&family=smith",
            &[("prefer", "handling=lenient")],
        )
        .await;
    r.expect_status(200);
    let found: Vec<&str> = r.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["b", "c"]);
    let r = s
        .send(
            Method::POST,
            "Patient/_search",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(b"family=smith&gender=male".to_vec()),
        )
        .await;
    r.expect_status(200);
    assert_eq!(r.json["entry"][0]["resource"]["id"], "b");
    s.get("Observation?code:in=http://x").await.expect_outcome(
        501,
        "not-supported",
        Some("http://x"),
    );
    // Value sets the server carries expand: Encounter.status.
    let vs = "http://hl7.org/fhir/ValueSet/encounter-status";
    assert_eq!(
        ids(&s, &format!("Encounter?status:in={vs}")).await,
        ["e1", "e2"]
    );
    assert!(
        ids(&s, &format!("Encounter?status:not-in={vs}"))
            .await
            .is_empty()
    );
    assert_eq!(
        ids(
            &s,
            "Patient?gender:in=http://hl7.org/fhir/ValueSet/administrative-gender"
        )
        .await
        .len(),
        4
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compartment_and_everything() {
    let s = fixture().await;
    assert_eq!(search_ids(&s, "Patient/a/Observation").await, ["o1", "o2"]);
    assert_eq!(
        search_ids(&s, "Patient/a/Observation?date=2020-03-02").await,
        ["o2"]
    );
    assert_eq!(search_ids(&s, "Patient/b/Encounter").await, ["e2"]);
    s.get("Patient/a/Organization").await.expect_status(400);
    let (entries, _) = s.all_pages("Patient/a/$everything?_count=2").await;
    let got: BTreeSet<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{} {}/{}",
                e["search"]["mode"].as_str().unwrap(),
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "match Patient/a",
        "match Observation/o1",
        "match Observation/o2",
        "match Encounter/e1",
        "match RiskAssessment/r1",
    ] {
        assert!(got.contains(want), "{want} missing from {got:?}");
    }
    assert!(!got.iter().any(|g| g.contains("Observation/o3")));
    let r = s.get("Patient/a/$everything?_type=Observation").await;
    assert_eq!(r.json["entry"].as_array().unwrap().len(), 2);
    let r = s.get("Patient/a/$everything?_since=2999-01-01").await;
    assert!(r.json.get("entry").is_none());
    s.get("Patient/nobody/$everything").await.expect_status(404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_1000_results_while_writing() {
    let s = TestServer::start().await;
    let mut entries = Vec::new();
    for i in 0..1000 {
        entries.push(json!({
            "request": {"method": "PUT", "url": format!("Patient/p{i:04}")},
            "resource": {"resourceType": "Patient", "id": format!("p{i:04}"), "active": true,
                "name": [{"family": "Pager"}], "birthDate": "1970-01-01"}
        }));
    }
    s.post(
        "",
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
    )
    .await
    .expect_status(200);
    // The first page fixes the result set; then a writer updates matches
    // (new versions), deletes some and creates more while the rest is read.
    let mut seen = Vec::new();
    let first = common::send(
        &s.client,
        Method::GET,
        &s.url("Patient?family=pager&_count=37"),
        &[],
        None,
    )
    .await;
    first.expect_status(200);
    for e in first.json["entry"].as_array().into_iter().flatten() {
        seen.push(e["resource"]["id"].as_str().unwrap().to_owned());
    }
    let base = s.base.clone();
    let client = s.client.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // The writer starts once the first page is in: the result set is fixed
    // by then (a write racing the first request may or may not be in it).
    let first_page = std::sync::Arc::new(tokio::sync::Notify::new());
    let first_page2 = first_page.clone();
    let writer = tokio::spawn(async move {
        first_page2.notified().await;
        let mut n = 0u32;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let id = format!("p{:04}", (n * 37) % 1000);
            let body = json!({"resourceType": "Patient", "id": id, "active": true,
                "name": [{"family": "Pager"}], "birthDate": "1970-01-02"});
            common::send(
                &client,
                Method::PUT,
                &format!("{base}/Patient/{id}"),
                &[("content-type", common::FHIR_JSON)],
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await;
            let new =
                json!({"resourceType": "Patient", "active": true, "name": [{"family": "Pager"}]});
            common::send(
                &client,
                Method::POST,
                &format!("{base}/Patient"),
                &[("content-type", common::FHIR_JSON)],
                Some(serde_json::to_vec(&new).unwrap()),
            )
            .await;
            if n.is_multiple_of(5) {
                let victim = format!("p{:04}", (n * 53 + 7) % 1000);
                common::send(
                    &client,
                    Method::DELETE,
                    &format!("{base}/Patient/{victim}"),
                    &[],
                    None,
                )
                .await;
            }
            n += 1;
            tokio::task::yield_now().await;
        }
        n
    });
    let mut url = common::next_link(&first.json);
    let mut pages = 1;
    while let Some(u) = url {
        let r = common::send(&s.client, Method::GET, &u, &[], None).await;
        r.expect_status(200);
        for e in r.json["entry"].as_array().into_iter().flatten() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_owned());
        }
        url = common::next_link(&r.json);
        pages += 1;
        first_page.notify_one();
        // make sure the writer gets going before the later pages
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 0);
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "duplicates across pages");
    let want: BTreeSet<String> = (0..1000).map(|i| format!("p{i:04}")).collect();
    let got: BTreeSet<String> = seen.iter().cloned().collect();
    let missing: Vec<&String> = want.difference(&got).collect();
    let extra: Vec<&String> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "across {pages} pages: missing {missing:?}, extra {extra:?}"
    );
    s.stop().await;
}
