//! The asynchronous bulk `$import` (issue 3): a system kicks off an import
//! of NDJSON files it publishes at URLs, polls the job, and reads the
//! manifest; rejected lines come back as OperationOutcomes naming the line;
//! only allowed sources are fetched; only the job's owner sees it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use carelayer_http::auth::TokenSubject;
use common::{TestServer, nhs_number, observation, patient};
use serde_json::{Value, json};

/// Serve `files` (name → body) on a loopback port; returns the base URL.
async fn file_server(files: Vec<(&'static str, String)>) -> String {
    let mut router = axum::Router::new();
    for (name, body) in files {
        router = router.route(
            &format!("/{name}"),
            axum::routing::get(move || {
                let body = body.clone();
                async move { body }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

fn kick_off_body(inputs: &[(&str, &str)]) -> Value {
    let mut parameter =
        vec![json!({"name": "inputFormat", "valueCode": "application/fhir+ndjson"})];
    for (ty, url) in inputs {
        parameter.push(json!({"name": "input", "part": [
            {"name": "type", "valueCode": ty},
            {"name": "url", "valueUrl": url}
        ]}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

fn ndjson(resources: &[Value]) -> String {
    resources
        .iter()
        .map(|r| format!("{r}\n"))
        .collect::<String>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_imports_files_it_publishes() {
    let mut patients = Vec::new();
    for i in 0..1_200u64 {
        let mut p = patient(&nhs_number(7000 + i), &format!("Bulk{i}"));
        p["id"] = json!(format!("bulk-{i}"));
        patients.push(p);
    }
    let mut obs = Vec::new();
    for i in 0..5u64 {
        let mut o = observation(&format!("bulk-{i}"), "80");
        o["id"] = json!(format!("bulk-obs-{i}"));
        obs.push(o);
    }
    let mut obs_file = ndjson(&obs);
    obs_file.push_str("{not json\n");
    obs_file.push_str(&format!(
        "{}\n",
        json!({"resourceType": "Observation", "id": "bad-1", "status": "final"})
    ));
    obs_file.push_str(&format!("{}\n", patients[0]));
    let files = file_server(vec![
        ("Patient.ndjson", ndjson(&patients)),
        ("Observation.ndjson", obs_file),
    ])
    .await;

    let s = TestServer::start_with(|c| c.http.import_sources = vec![format!("{files}/")]).await;
    let system = s.token(
        &TokenSubject::Client {
            client_id: "feeder".into(),
            org: Some("Y30003".into()),
        },
        Some("system/*.cruds"),
    );
    let feeder = s.as_token(&system);
    let body = kick_off_body(&[
        ("Patient", &format!("{files}/Patient.ndjson")),
        ("Observation", &format!("{files}/Observation.ndjson")),
    ]);

    // Without Prefer: respond-async the kick-off is refused, naming it.
    feeder
        .post("$import", &body)
        .await
        .expect_outcome(400, "invalid", Some("respond-async"));
    // A source the operator did not allow is never fetched.
    feeder
        .post_h(
            "$import",
            &kick_off_body(&[("Patient", "http://169.254.169.254/latest/meta-data")]),
            &[("prefer", "respond-async")],
        )
        .await
        .expect_outcome(400, "invalid", Some("allowed import source"));

    let r = feeder
        .post_h("$import", &body, &[("prefer", "respond-async")])
        .await;
    r.expect_status(202);
    let status_url = r.header("content-location").unwrap().to_owned();
    assert!(status_url.contains("$import-poll-status/"), "{status_url}");

    // Another caller cannot see the job.
    let other = s.as_token(&s.practitioner_token("u1", "R8000", "Y10001"));
    other.get(&status_url).await.expect_status(404);

    // Poll until done (a guard against a hung job, not a timing assertion).
    let mut manifest = Value::Null;
    for _ in 0..600 {
        let r = feeder.get(&status_url).await;
        if r.status == 200 {
            manifest = r.json.clone();
            break;
        }
        r.expect_status(202);
        assert!(r.header("x-progress").is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(manifest.is_object(), "the import job never finished");
    let outputs = manifest["output"].as_array().unwrap();
    assert_eq!(outputs[0]["type"], "Patient");
    assert_eq!(outputs[0]["count"], 1_200);
    assert_eq!(outputs[1]["type"], "Observation");
    assert_eq!(outputs[1]["count"], 5);
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{manifest}");
    assert_eq!(errors[0]["count"], 3, "{manifest}");
    let error_file = feeder.get(errors[0]["url"].as_str().unwrap()).await;
    error_file.expect_status(200);
    let lines: Vec<&str> = error_file.text.lines().collect();
    assert_eq!(lines.len(), 3, "{}", error_file.text);
    assert!(
        lines[0].contains("line 6") && lines[0].contains("not valid JSON"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("line 7"), "{}", lines[1]);
    assert!(
        lines[2].contains("line 8") && lines[2].contains("type Observation"),
        "{}",
        lines[2]
    );

    // The data is there, audited as the feeder's import.
    s.get("Patient/bulk-1199").await.expect_status(200);
    s.get("Observation/bulk-obs-4").await.expect_status(200);
    let log = s.get("AuditEvent?patient=bulk-3").await;
    assert!(log.text.contains("feeder"), "{}", log.text);

    // Running the same job again changes nothing (unchanged resources are skipped).
    let r = feeder
        .post_h("$import", &body, &[("prefer", "respond-async")])
        .await;
    let status_url = r.header("content-location").unwrap().to_owned();
    let mut again = Value::Null;
    for _ in 0..600 {
        let r = feeder.get(&status_url).await;
        if r.status == 200 {
            again = r.json.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unchanged = &again["output"][0]["extension"][2];
    assert_eq!(unchanged["valueInteger"], 1_200, "{again}");
    s.get("Patient/bulk-0/_history").await.expect_status(200);
    assert_eq!(s.get("Patient/bulk-0").await.json["meta"]["versionId"], "1");
    s.stop().await;
}
