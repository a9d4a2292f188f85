//! The FHIR R4 REST semantics of issue 2, each checked over real HTTP against
//! a server on port 0 with a temporary SQLite store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{
    NHS_SYSTEM, Resp, TestServer, entry_version, nhs_number, observation, patient, search_ids,
};
use reqwest::Method;
use serde_json::{Value, json};

const MRN: &str = "https://example.org/mrn";

/// Percent-encode a query value (`|`, `:`, `/`, `+` and friends).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn id_of(r: &Resp) -> String {
    r.json["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {}", r.text))
        .to_owned()
}

fn with_id(mut v: Value, id: &str) -> Value {
    v["id"] = json!(id);
    v
}

fn mrn_patient(mrn: &str, family: &str) -> Value {
    let mut p = patient(&nhs_number(0), family);
    p["identifier"] = json!([{"system": MRN, "value": mrn}]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_read_vread() {
    let s = TestServer::start().await;
    let r = s
        .post("Patient", &patient(&nhs_number(1), "Whitfield"))
        .await;
    r.expect_status(201);
    let id = id_of(&r);
    assert!(!id.is_empty());
    assert_eq!(
        r.header("location").unwrap(),
        format!("{}/Patient/{id}/_history/1", s.base)
    );
    assert_eq!(r.header("etag").unwrap(), "W/\"1\"");
    let last_modified = r.header("last-modified").unwrap();
    assert!(last_modified.ends_with(" GMT"), "{last_modified}");
    assert_eq!(r.json["resourceType"], "Patient");
    assert_eq!(r.json["meta"]["versionId"], "1");
    let last_updated = r.json["meta"]["lastUpdated"].as_str().unwrap();
    assert!(last_updated.contains('T'), "{last_updated}");
    assert_eq!(r.json["name"][0]["family"], "Whitfield");

    // A client id in a POST body is not the one used.
    let mut with_client_id = patient(&nhs_number(2), "Other");
    with_client_id["id"] = json!("client-chosen");
    let r2 = s.post("Patient", &with_client_id).await;
    r2.expect_status(201);
    assert_ne!(id_of(&r2), "client-chosen");
    assert_ne!(id_of(&r2), id);

    let read = s.get(&format!("Patient/{id}")).await;
    read.expect_status(200);
    assert_eq!(read.json, r.json);
    assert_eq!(read.header("etag").unwrap(), "W/\"1\"");
    assert!(read.header("last-modified").is_some());
    assert!(
        read.header("content-type")
            .unwrap()
            .starts_with("application/fhir+json")
    );

    let vread = s.get(&format!("Patient/{id}/_history/1")).await;
    vread.expect_status(200);
    assert_eq!(vread.json, r.json);

    s.get(&format!("Patient/{id}/_history/2"))
        .await
        .expect_outcome(404, "not-found", None);
    s.get("Patient/does-not-exist")
        .await
        .expect_outcome(404, "not-found", None);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_update_as_create() {
    let s = TestServer::start().await;
    let r = s
        .post("Patient", &patient(&nhs_number(3), "Ashworth"))
        .await;
    r.expect_status(201);
    let id = id_of(&r);

    let mut changed = with_id(patient(&nhs_number(3), "Ashworth-Smith"), &id);
    changed["gender"] = json!("male");
    let u = s.put(&format!("Patient/{id}"), &changed).await;
    u.expect_status(200);
    assert_eq!(u.header("etag").unwrap(), "W/\"2\"");
    assert_eq!(u.json["meta"]["versionId"], "2");
    assert_eq!(u.json["name"][0]["family"], "Ashworth-Smith");
    assert_eq!(
        u.header("location").unwrap(),
        format!("{}/Patient/{id}/_history/2", s.base)
    );

    let read = s.get(&format!("Patient/{id}")).await;
    read.expect_status(200);
    assert_eq!(read.json["gender"], "male");
    // The first version is still there.
    let v1 = s.get(&format!("Patient/{id}/_history/1")).await;
    v1.expect_status(200);
    assert_eq!(v1.json["name"][0]["family"], "Ashworth");
    assert_eq!(v1.json["meta"]["versionId"], "1");

    // Update as create with a client id.
    let c = s
        .put(
            "Patient/client-id-1",
            &with_id(patient(&nhs_number(4), "Brennan"), "client-id-1"),
        )
        .await;
    c.expect_status(201);
    assert_eq!(c.json["id"], "client-id-1");
    assert_eq!(c.header("etag").unwrap(), "W/\"1\"");
    assert_eq!(
        c.header("location").unwrap(),
        format!("{}/Patient/client-id-1/_history/1", s.base)
    );
    s.get("Patient/client-id-1").await.expect_status(200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_create_with_if_none_exist() {
    let s = TestServer::start().await;
    let body = mrn_patient("cc-1", "Conditional");
    let condition = format!("identifier={MRN}|cc-1");
    let first = s
        .post_h("Patient", &body, &[("if-none-exist", &condition)])
        .await;
    first.expect_status(201);
    let id = id_of(&first);
    let before = s.fingerprint().await;

    let second = s
        .post_h("Patient", &body, &[("if-none-exist", &condition)])
        .await;
    second.expect_status(200);
    assert_eq!(id_of(&second), id);
    assert_eq!(second.json["meta"]["versionId"], "1");
    assert_eq!(s.fingerprint().await, before, "no new resource");
    assert_eq!(
        search_ids(
            &s,
            &format!("Patient?identifier={}", enc(&format!("{MRN}|cc-1")))
        )
        .await,
        vec![id.clone()]
    );

    // A different identifier creates.
    let other = s
        .post_h(
            "Patient",
            &mrn_patient("cc-2", "Conditional"),
            &[("if-none-exist", &format!("identifier={MRN}|cc-2"))],
        )
        .await;
    other.expect_status(201);
    assert_ne!(id_of(&other), id);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_update() {
    let s = TestServer::start().await;
    let url = |v: &str| format!("Patient?identifier={}", enc(&format!("{MRN}|{v}")));

    // No match: creates.
    let created = s.put(&url("cu-1"), &mrn_patient("cu-1", "First")).await;
    created.expect_status(201);
    let id = id_of(&created);

    // One match: updates that one.
    let updated = s.put(&url("cu-1"), &mrn_patient("cu-1", "Second")).await;
    updated.expect_status(200);
    assert_eq!(id_of(&updated), id);
    assert_eq!(updated.json["meta"]["versionId"], "2");
    assert_eq!(
        s.get(&format!("Patient/{id}")).await.json["name"][0]["family"],
        "Second"
    );

    // Two matches: 412, nothing changes.
    s.post("Patient", &mrn_patient("cu-2", "A"))
        .await
        .expect_status(201);
    s.post("Patient", &mrn_patient("cu-2", "B"))
        .await
        .expect_status(201);
    let before = s.fingerprint().await;
    s.put(&url("cu-2"), &mrn_patient("cu-2", "C"))
        .await
        .expect_outcome(412, "multiple-matches", None);
    assert_eq!(s.fingerprint().await, before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_delete() {
    let s = TestServer::start().await;
    let url = |v: &str| format!("Patient?identifier={}", enc(&format!("{MRN}|{v}")));
    let r = s.post("Patient", &mrn_patient("cd-1", "Gone")).await;
    r.expect_status(201);
    let id = id_of(&r);
    s.delete(&url("cd-1")).await.expect_status(204);
    s.get(&format!("Patient/{id}"))
        .await
        .expect_outcome(410, "deleted", None);
    assert!(search_ids(&s, &url("cd-1")).await.is_empty());

    // Nothing matches any more: nothing to delete, nothing written.
    let before = s.fingerprint().await;
    let again = s.delete(&url("cd-1")).await;
    assert!(
        again.status.as_u16() == 204 || again.status.as_u16() == 200,
        "{}",
        again.text
    );
    assert_eq!(s.fingerprint().await, before);

    // Two matches: refused (conditionalDelete is `single`).
    s.post("Patient", &mrn_patient("cd-2", "A"))
        .await
        .expect_status(201);
    s.post("Patient", &mrn_patient("cd-2", "B"))
        .await
        .expect_status(201);
    let before = s.fingerprint().await;
    s.delete(&url("cd-2"))
        .await
        .expect_outcome(412, "multiple-matches", None);
    assert_eq!(s.fingerprint().await, before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch() {
    let s = TestServer::start().await;
    let r = s
        .post("Patient", &patient(&nhs_number(5), "Patchett"))
        .await;
    r.expect_status(201);
    let id = id_of(&r);
    let patch = json!([
        {"op": "replace", "path": "/active", "value": false},
        {"op": "add", "path": "/name/0/given/-", "value": "Jo"}
    ]);
    let p = s
        .send(
            Method::PATCH,
            &format!("Patient/{id}"),
            &[("content-type", "application/json-patch+json")],
            Some(serde_json::to_vec(&patch).unwrap()),
        )
        .await;
    p.expect_status(200);
    assert_eq!(p.header("etag").unwrap(), "W/\"2\"");
    let read = s.get(&format!("Patient/{id}")).await;
    assert_eq!(read.json["active"], false);
    assert_eq!(read.json["name"][0]["given"], json!(["Alex", "Jo"]));
    assert_eq!(read.json["meta"]["versionId"], "2");

    // A patch that makes the resource invalid is refused; nothing changes.
    let before = s.fingerprint().await;
    let bad = json!([{"op": "replace", "path": "/birthDate", "value": "1980-13-45"}]);
    let r = s
        .send(
            Method::PATCH,
            &format!("Patient/{id}"),
            &[("content-type", "application/json-patch+json")],
            Some(serde_json::to_vec(&bad).unwrap()),
        )
        .await;
    assert!(
        matches!(r.status.as_u16(), 400 | 422),
        "invalid patch result: {} {}",
        r.status,
        r.text
    );
    assert_eq!(r.json["resourceType"], "OperationOutcome");
    assert_eq!(s.fingerprint().await, before);

    // A PATCH body that is not a JSON Patch document.
    s.send(
        Method::PATCH,
        &format!("Patient/{id}"),
        &[("content-type", "application/fhir+json")],
        Some(b"{}".to_vec()),
    )
    .await
    .expect_outcome(415, "not-supported", None);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_read_is_gone() {
    let s = TestServer::start().await;
    let r = s.post("Patient", &patient(&nhs_number(6), "Deleted")).await;
    let id = id_of(&r);
    let d = s.delete(&format!("Patient/{id}")).await;
    d.expect_status(204);
    s.get(&format!("Patient/{id}"))
        .await
        .expect_outcome(410, "deleted", None);
    // The deletion is version 2: vread of it is 410, version 1 is still readable.
    s.get(&format!("Patient/{id}/_history/2"))
        .await
        .expect_outcome(410, "deleted", None);
    s.get(&format!("Patient/{id}/_history/1"))
        .await
        .expect_status(200);
    let (entries, _) = s.all_pages(&format!("Patient/{id}/_history")).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    // Re-creating with PUT brings it back as version 3.
    let back = s
        .put(
            &format!("Patient/{id}"),
            &with_id(patient(&nhs_number(6), "Back"), &id),
        )
        .await;
    assert!(matches!(back.status.as_u16(), 200 | 201), "{}", back.text);
    assert_eq!(back.json["meta"]["versionId"], "3");
    s.get(&format!("Patient/{id}")).await.expect_status(200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_versions() {
    let s = TestServer::start().await;
    let r = s.post("Patient", &patient(&nhs_number(7), "Matcher")).await;
    let id = id_of(&r);
    let path = format!("Patient/{id}");
    let body = with_id(patient(&nhs_number(7), "Matcher-2"), &id);
    s.put_h(&path, &body, &[("if-match", "W/\"1\"")])
        .await
        .expect_status(200);
    let before = s.fingerprint().await;
    let current = s.get(&path).await;

    // Stale: 412 and nothing changes.
    let stale = with_id(patient(&nhs_number(7), "Stale"), &id);
    s.put_h(&path, &stale, &[("if-match", "W/\"1\"")])
        .await
        .expect_outcome(412, "conflict", None);
    assert_eq!(s.get(&path).await.json, current.json);
    assert_eq!(s.fingerprint().await, before);
    // Stale delete and patch too.
    s.send(Method::DELETE, &path, &[("if-match", "W/\"1\"")], None)
        .await
        .expect_outcome(412, "conflict", None);
    s.send(
        Method::PATCH,
        &path,
        &[
            ("if-match", "W/\"1\""),
            ("content-type", "application/json-patch+json"),
        ],
        Some(br#"[{"op":"replace","path":"/active","value":false}]"#.to_vec()),
    )
    .await
    .expect_outcome(412, "conflict", None);
    assert_eq!(s.fingerprint().await, before);

    // Current: accepted.
    let ok = s.put_h(&path, &stale, &[("if-match", "W/\"2\"")]).await;
    ok.expect_status(200);
    assert_eq!(ok.header("etag").unwrap(), "W/\"3\"");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_return() {
    let s = TestServer::start().await;
    let minimal = s
        .post_h(
            "Patient",
            &patient(&nhs_number(8), "Minimal"),
            &[("prefer", "return=minimal")],
        )
        .await;
    minimal.expect_status(201);
    assert!(minimal.text.is_empty(), "minimal body: {}", minimal.text);
    let location = minimal.header("location").unwrap().to_owned();
    assert!(location.ends_with("/_history/1"), "{location}");
    assert_eq!(minimal.header("etag").unwrap(), "W/\"1\"");
    let id = location.split('/').rev().nth(2).unwrap().to_owned();
    s.get(&format!("Patient/{id}")).await.expect_status(200);

    let representation = s
        .post_h(
            "Patient",
            &patient(&nhs_number(9), "Representation"),
            &[("prefer", "return=representation")],
        )
        .await;
    representation.expect_status(201);
    assert_eq!(representation.json["resourceType"], "Patient");
    assert_eq!(representation.json["name"][0]["family"], "Representation");

    let outcome = s
        .put_h(
            &format!("Patient/{id}"),
            &with_id(patient(&nhs_number(8), "Outcome"), &id),
            &[("prefer", "return=OperationOutcome")],
        )
        .await;
    outcome.expect_status(200);
    assert_eq!(outcome.json["resourceType"], "OperationOutcome");
    assert_eq!(outcome.json["issue"][0]["severity"], "information");
    assert_eq!(outcome.header("etag").unwrap(), "W/\"2\"");
    s.stop().await;
}

/// Versions (`Type/id/_history/n`) of a paged history, following `next`
/// links, asserting there are no duplicates.
async fn history_versions(s: &TestServer, url: &str) -> (Vec<String>, usize) {
    let (entries, pages) = s.all_pages(url).await;
    let versions: Vec<String> = entries.iter().map(entry_version).collect();
    let unique: BTreeSet<&String> = versions.iter().collect();
    assert_eq!(unique.len(), versions.len(), "duplicates in {versions:?}");
    (versions, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_instance_type_system_with_paging_and_since() {
    let s = TestServer::start().await;
    // One patient with 7 versions.
    let r = s
        .post("Patient", &patient(&nhs_number(10), "History"))
        .await;
    let pid = id_of(&r);
    for i in 2..=7 {
        let body = with_id(patient(&nhs_number(10), &format!("History-{i}")), &pid);
        s.put(&format!("Patient/{pid}"), &body)
            .await
            .expect_status(200);
    }
    // Five observations, two of them updated once.
    let mut obs = Vec::new();
    for i in 0..5 {
        let r = s
            .post("Observation", &observation(&pid, &format!("{}.5", 60 + i)))
            .await;
        r.expect_status(201);
        obs.push(id_of(&r));
    }
    for id in &obs[..2] {
        let mut body = observation(&pid, "99.25");
        body["id"] = json!(id);
        s.put(&format!("Observation/{id}"), &body)
            .await
            .expect_status(200);
    }

    // Instance: 7 versions newest first, 3 pages of 3.
    let (versions, pages) = history_versions(&s, &format!("Patient/{pid}/_history?_count=3")).await;
    let expected: Vec<String> = (1..=7)
        .rev()
        .map(|v| format!("Patient/{pid}/_history/{v}"))
        .collect();
    assert_eq!(versions, expected);
    assert_eq!(pages, 3);
    let first_page = s.get(&format!("Patient/{pid}/_history?_count=3")).await;
    assert_eq!(first_page.json["type"], "history");
    assert_eq!(first_page.json["entry"].as_array().unwrap().len(), 3);

    // Type: 7 Observation versions, pages of 2.
    let (versions, pages) = history_versions(&s, "Observation/_history?_count=2").await;
    assert_eq!(versions.len(), 7);
    assert_eq!(pages, 4);
    assert!(versions.iter().all(|v| v.starts_with("Observation/")));

    // System: all 14 versions, pages of 4.
    let (versions, pages) = history_versions(&s, "_history?_count=4").await;
    assert_eq!(versions.len(), 14);
    assert_eq!(pages, 4);

    // _since: only what changed at or after the instant.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let late = s.post("Patient", &patient(&nhs_number(11), "Late")).await;
    let late_id = id_of(&late);
    let since = late.json["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_owned();
    let (versions, _) =
        history_versions(&s, &format!("_history?_since={}&_count=2", enc(&since))).await;
    assert_eq!(versions, vec![format!("Patient/{late_id}/_history/1")]);
    let (versions, _) =
        history_versions(&s, &format!("Patient/_history?_since={}", enc(&since))).await;
    assert_eq!(versions.len(), 1);
    let (versions, _) = history_versions(
        &s,
        &format!("Patient/{pid}/_history?_since={}", enc(&since)),
    )
    .await;
    assert!(versions.is_empty());
    // A _since long ago gives everything.
    let (versions, _) = history_versions(&s, "_history?_since=2000-01-01T00:00:00Z&_count=5").await;
    assert_eq!(versions.len(), 15);

    s.get("_history?_count=abc")
        .await
        .expect_outcome(400, "invalid", None);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_bundle() {
    let s = TestServer::start().await;
    let existing = s
        .post("Patient", &patient(&nhs_number(12), "Existing"))
        .await;
    let existing_id = id_of(&existing);
    let mut invalid = patient(&nhs_number(13), "Invalid");
    invalid["birthDate"] = json!("1980-13-45");
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient(&nhs_number(14), "BatchOne"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": invalid, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": format!("Patient/{existing_id}")}},
            {"request": {"method": "GET", "url": "Patient/nope"}},
            {"resource": with_id(patient(&nhs_number(15), "BatchPut"), "batch-put"), "request": {"method": "PUT", "url": "Patient/batch-put"}}
        ]
    });
    let r = s.post("", &bundle).await;
    r.expect_status(200);
    assert_eq!(r.json["type"], "batch-response");
    let entries = r.json["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    let status = |i: usize| {
        entries[i]["response"]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(status(0).starts_with("201"), "{}", r.text);
    assert!(status(1).starts_with("400"), "{}", r.text);
    assert_eq!(
        entries[1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert!(status(2).starts_with("200"), "{}", r.text);
    assert_eq!(entries[2]["resource"]["id"], existing_id.as_str());
    assert!(status(3).starts_with("404"), "{}", r.text);
    assert!(status(4).starts_with("201"), "{}", r.text);
    // The good writes are there, the bad one is not.
    let location = entries[0]["response"]["location"].as_str().unwrap();
    s.get(location).await.expect_status(200);
    s.get("Patient/batch-put").await.expect_status(200);
    let (versions, _) = s.all_pages("Patient/_history").await;
    assert_eq!(versions.len(), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_bundle_resolves_references() {
    let s = TestServer::start().await;
    let known = s.post("Patient", &mrn_patient("tx-known", "Known")).await;
    known.expect_status(201);
    let known_id = id_of(&known);

    let patient_urn = "urn:uuid:5a0e3c52-4c65-4bd4-8a8e-0d0a6a1d7c11";
    let mut obs_for_new = observation("x", "71.2");
    obs_for_new["subject"] = json!({"reference": patient_urn});
    let mut obs_for_known = observation("x", "80.0");
    obs_for_known["subject"] = json!({"reference": format!("Patient?identifier={MRN}|tx-known")});
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:0d8a6bc4-1111-4b9a-9b0c-000000000001", "resource": obs_for_new, "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": patient_urn, "resource": mrn_patient("tx-new", "New"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": obs_for_known, "request": {"method": "POST", "url": "Observation"}},
            {"resource": mrn_patient("tx-known", "Known"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={MRN}|tx-known")}}
        ]
    });
    let r = s.post("", &bundle).await;
    r.expect_status(200);
    assert_eq!(r.json["type"], "transaction-response");
    let entries = r.json["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    let location = |i: usize| {
        entries[i]["response"]["location"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for entry in &entries[..3] {
        assert!(
            entry["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("201"),
            "{}",
            r.text
        );
    }
    // Conditional create found the existing patient.
    assert!(
        entries[3]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("200"),
        "{}",
        r.text
    );
    assert!(
        location(3).starts_with(&format!("Patient/{known_id}/"))
            || location(3).contains(&format!("/Patient/{known_id}/"))
    );

    let new_patient_id = location(1).split('/').nth(1).unwrap().to_owned();
    let new_patient = s.get(&format!("Patient/{new_patient_id}")).await;
    new_patient.expect_status(200);
    assert_eq!(new_patient.json["identifier"][0]["value"], "tx-new");

    let obs1 = s.get(&location(0)).await;
    obs1.expect_status(200);
    assert_eq!(
        obs1.json["subject"]["reference"],
        format!("Patient/{new_patient_id}").as_str()
    );
    let obs2 = s.get(&location(2)).await;
    obs2.expect_status(200);
    assert_eq!(
        obs2.json["subject"]["reference"],
        format!("Patient/{known_id}").as_str()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_is_all_or_nothing() {
    let s = TestServer::start().await;
    s.post("Patient", &patient(&nhs_number(16), "Before"))
        .await
        .expect_status(201);
    let before = s.fingerprint().await;
    let patients_before = search_ids(&s, "Patient").await.len();

    let mut invalid = observation("x", "1.0");
    invalid["status"] = json!("not-a-status");
    let urn = "urn:uuid:7a6b0c3e-2222-4b9a-9b0c-000000000002";
    let mut obs = observation("x", "70.0");
    obs["subject"] = json!({"reference": urn});
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": urn, "resource": patient(&nhs_number(17), "Atomic"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": obs, "request": {"method": "POST", "url": "Observation"}},
            {"resource": with_id(patient(&nhs_number(18), "Put"), "tx-put"), "request": {"method": "PUT", "url": "Patient/tx-put"}},
            {"resource": invalid, "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = s.post("", &bundle).await;
    assert!(
        matches!(r.status.as_u16(), 400 | 422),
        "{} {}",
        r.status,
        r.text
    );
    assert_eq!(r.json["resourceType"], "OperationOutcome", "{}", r.text);
    assert!(
        r.locations()
            .iter()
            .any(|l| l.starts_with("Bundle.entry[3]")),
        "the failing entry is named: {}",
        r.text
    );
    assert_eq!(s.fingerprint().await, before, "store changed");
    assert_eq!(search_ids(&s, "Patient").await.len(), patients_before);
    assert!(search_ids(&s, "Observation").await.is_empty());
    s.get("Patient/tx-put")
        .await
        .expect_outcome(404, "not-found", None);

    // A transaction whose conditional reference matches nothing also
    // changes nothing.
    let mut dangling = observation("x", "70.0");
    dangling["subject"] = json!({"reference": format!("Patient?identifier={MRN}|nobody")});
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(&nhs_number(19), "Ok"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": dangling, "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = s.post("", &bundle).await;
    assert!(r.status.is_client_error(), "{} {}", r.status, r.text);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
    assert_eq!(s.fingerprint().await, before, "store changed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_statement() {
    let s = TestServer::start().await;
    let r = s.get("metadata").await;
    r.expect_status(200);
    assert_eq!(r.json["resourceType"], "CapabilityStatement");
    assert_eq!(r.json["fhirVersion"], "4.0.1");
    assert_eq!(r.json["kind"], "instance");
    let rest = &r.json["rest"][0];
    assert_eq!(rest["mode"], "server");
    let system: BTreeSet<&str> = rest["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    for code in ["transaction", "batch", "history-system"] {
        assert!(system.contains(code), "{code} missing from {system:?}");
    }
    let resources = rest["resource"].as_array().unwrap();
    assert!(resources.len() > 140, "{} resource types", resources.len());
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let codes: BTreeSet<&str> = patient["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    for code in [
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
    ] {
        assert!(codes.contains(code), "{code} missing from {codes:?}");
    }
    assert_eq!(patient["updateCreate"], true);
    assert_eq!(patient["conditionalCreate"], true);
    assert_eq!(patient["conditionalUpdate"], true);
    // The statement itself is valid R4: $validate accepts it.
    let mut statement = r.json.clone();
    statement.as_object_mut().unwrap().remove("id");
    s.post("CapabilityStatement/$validate", &statement)
        .await
        .expect_status(200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_operation() {
    let s = TestServer::start().await;
    let before = s.fingerprint().await;
    let ok = s
        .post("Patient/$validate", &patient(&nhs_number(20), "Valid"))
        .await;
    ok.expect_status(200);
    assert_eq!(ok.json["resourceType"], "OperationOutcome");

    let mut bad = patient(&nhs_number(21), "Invalid");
    bad["birthDate"] = json!("1980-13-45");
    let r = s.post("Patient/$validate", &bad).await;
    r.expect_status(400);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
    assert!(
        r.locations().iter().any(|l| l == "Patient.birthDate"),
        "location: {}",
        r.text
    );

    // As a Parameters resource too.
    let params =
        json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": bad}]});
    s.post("Patient/$validate", &params)
        .await
        .expect_status(400);
    // NHS number rule: 422.
    let r = s
        .post("Patient/$validate", &patient("9876544321", "Wrong"))
        .await;
    r.expect_outcome(422, "business-rule", Some("Patient.identifier[0].value"));
    assert_eq!(s.fingerprint().await, before, "$validate stored something");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_operation_outcomes() {
    let s = TestServer::start().await;
    s.post("Patient", &patient(&nhs_number(22), "Fmt"))
        .await
        .expect_status(201);
    s.get("Patient?_format=xml")
        .await
        .expect_outcome(406, "not-supported", Some("xml"));
    s.get("metadata?_format=application/fhir%2Bxml")
        .await
        .expect_outcome(406, "not-supported", None);
    s.get_h("metadata", &[("accept", "application/fhir+xml")])
        .await
        .expect_outcome(406, "not-supported", None);
    // JSON explicitly is fine.
    s.get("metadata?_format=json").await.expect_status(200);

    s.get("Foo/1")
        .await
        .expect_outcome(404, "not-supported", Some("Foo"));
    s.post("Foo", &json!({"resourceType": "Foo"}))
        .await
        .expect_outcome(404, "not-supported", Some("Foo"));
    s.get("/nope").await.expect_outcome(404, "not-found", None);
    let r = s
        .send(Method::GET, &s.base.replace("/fhir", "/nope"), &[], None)
        .await;
    r.expect_outcome(404, "not-found", None);
    s.send(Method::DELETE, "metadata", &[], None)
        .await
        .expect_outcome(405, "not-supported", None);
    s.send(
        Method::POST,
        "Patient/1/_history",
        &[],
        Some(b"{}".to_vec()),
    )
    .await
    .expect_outcome(405, "not-supported", None);
    s.send_raw(
        Method::POST,
        "Patient",
        b"<Patient xmlns=\"http://hl7.org/fhir\"/>",
    )
    .await
    .expect_outcome(400, "invalid", None);
    s.send(
        Method::POST,
        "Patient",
        &[("content-type", "application/fhir+xml")],
        Some(b"<Patient/>".to_vec()),
    )
    .await
    .expect_outcome(415, "not-supported", None);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_what_was_written() {
    // Enough search for the conditional operations above to be meaningful:
    // an identifier token and a family name.
    let s = TestServer::start().await;
    let nhs = nhs_number(23);
    let r = s.post("Patient", &patient(&nhs, "Searchable")).await;
    let id = id_of(&r);
    s.post("Patient", &patient(&nhs_number(24), "Other"))
        .await
        .expect_status(201);
    assert_eq!(
        search_ids(
            &s,
            &format!("Patient?identifier={}", enc(&format!("{NHS_SYSTEM}|{nhs}")))
        )
        .await,
        vec![id.clone()]
    );
    assert_eq!(search_ids(&s, "Patient?family=Searchable").await, vec![id]);
    s.stop().await;
}
