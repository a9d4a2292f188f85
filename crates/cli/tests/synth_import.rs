//! `carelayer synth` and `carelayer import` end to end: deterministic,
//! valid synthetic data; imports through the CLI into SQLite (counts match,
//! bad lines reported with reasons while the rest import, resume after an
//! interruption writes nothing twice); `POST /fhir/$import`; import through
//! a running server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use carelayer_cli::server::{RunningServer, ServerConfig, start};
use carelayer_cli::synth::{Kind, generate};
use carelayer_fhir::nhs_number::NhsNumber;
use carelayer_fhir::validate::{Severity, validate_resource};
use carelayer_http::HttpConfig;
use carelayer_records::RecordsOptions;
use serde_json::Value;

fn read_dir_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            );
        } else {
            for (k, v) in read_dir_bytes(&path) {
                out.insert(
                    format!("{}/{k}", path.file_name().unwrap().to_string_lossy()),
                    v,
                );
            }
        }
    }
    out
}

fn lines(dir: &Path, kind: Kind) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{}.ndjson", kind.name()))).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn synth_is_deterministic_for_a_seed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    generate(a.path(), 70, 42, true, Some(1)).unwrap();
    generate(b.path(), 70, 42, true, Some(3)).unwrap();
    generate(c.path(), 70, 43, false, Some(2)).unwrap();
    let (fa, fb) = (read_dir_bytes(a.path()), read_dir_bytes(b.path()));
    assert!(fa.len() > 10, "{:?}", fa.keys());
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (name, bytes) in &fa {
        assert!(
            bytes == &fb[name],
            "{name} differs between runs of the same seed"
        );
    }
    assert_ne!(
        fa["Patient.ndjson"],
        std::fs::read(c.path().join("Patient.ndjson")).unwrap(),
        "another seed gives other patients"
    );
}

#[test]
fn synth_records_are_valid_realistic_and_uk_shaped() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path(), 400, 7, false, None).unwrap();
    assert_eq!(summary.patients, 400);

    // Every resource of a sample passes carelayer's validator.
    let mut checked = 0;
    for kind in Kind::ALL {
        for (i, r) in lines(dir.path(), kind).iter().enumerate() {
            let sampled = matches!(
                kind,
                Kind::Observation | Kind::MedicationRequest | Kind::Encounter
            );
            if sampled && i % 7 != 0 {
                continue;
            }
            let errors: Vec<_> = validate_resource(r)
                .into_iter()
                .filter(|i| i.severity == Severity::Error)
                .collect();
            assert!(errors.is_empty(), "{kind:?} {r}\n{errors:#?}");
            checked += 1;
        }
    }
    assert!(checked > 5_000, "{checked}");

    // Patients: valid, distinct 999-range NHS numbers; some restricted.
    let patients = lines(dir.path(), Kind::Patient);
    assert_eq!(patients.len(), 400);
    let mut numbers = HashSet::new();
    let mut restricted = 0;
    for p in &patients {
        let nhs = p["identifier"][0]["value"].as_str().unwrap();
        assert_eq!(
            p["identifier"][0]["system"],
            "https://fhir.nhs.uk/Id/nhs-number"
        );
        NhsNumber::parse_canonical(nhs).unwrap();
        assert!(nhs.starts_with("999"), "{nhs}");
        assert!(numbers.insert(nhs.to_owned()), "duplicate {nhs}");
        if p["meta"]["security"][0]["code"] == "R" {
            restricted += 1;
            assert!(
                p.get("address").is_none(),
                "an S-flag patient has no address"
            );
        } else {
            let postcode = p["address"][0]["postalCode"].as_str().unwrap();
            let (outward, inward) = postcode.split_once(' ').unwrap();
            assert!(
                (2..=4).contains(&outward.len()) && inward.len() == 3,
                "{postcode}"
            );
        }
        let gp = p["generalPractitioner"][0]["identifier"]["value"]
            .as_str()
            .unwrap();
        carelayer_fhir::ods::OdsCode::check(gp).unwrap();
    }
    assert!(restricted > 0);

    // Opt-outs and sensitive records exist.
    let consents = lines(dir.path(), Kind::Consent);
    let text: Vec<String> = consents.iter().map(Value::to_string).collect();
    assert!(
        text.iter().any(|c| c.contains("370856009")),
        "a national data opt-out"
    );
    assert!(
        text.iter().any(|c| c.contains("827241000000103")),
        "a Type 1 opt-out"
    );
    let conditions = lines(dir.path(), Kind::Condition);
    assert!(
        conditions
            .iter()
            .any(|c| c["meta"]["security"][0]["code"] == "PSY")
    );

    // 100–500 resources a patient on average, with a long tail.
    let mut per_patient: BTreeMap<String, usize> = BTreeMap::new();
    for kind in Kind::ALL {
        for r in lines(dir.path(), kind) {
            let subject = r
                .get("subject")
                .or_else(|| r.get("patient"))
                .and_then(|s| s["reference"].as_str())
                .map(str::to_owned)
                .or_else(|| {
                    (kind == Kind::Patient)
                        .then(|| format!("Patient/{}", r["id"].as_str().unwrap()))
                });
            if let Some(s) = subject {
                *per_patient.entry(s).or_default() += 1;
            }
        }
    }
    let counts: Vec<usize> = per_patient.values().copied().collect();
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    let max = *counts.iter().max().unwrap();
    assert!((100.0..=500.0).contains(&mean), "mean {mean}");
    assert!(max > 500, "a long tail: max {max}");
}

fn carelayer(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_carelayer"))
        .args(args)
        .env("CARELAYER_LOG", "warn")
        .output()
        .expect("run carelayer");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Operator tokens of the servers this file started, by base URL.
static TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn token_for(url: &str) -> String {
    TOKENS
        .lock()
        .unwrap()
        .iter()
        .find(|(base, _)| url.starts_with(base.as_str()))
        .map(|(_, t)| t.clone())
        .expect("a server started by serve()")
}

/// An HTTP client presenting the operator token of the server at `base`.
fn client_for(base: &str) -> reqwest::Client {
    common::client_with_token(&token_for(base))
}

async fn serve(db: &Path) -> RunningServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = start(
        ServerConfig {
            database: format!("sqlite://{}", db.display()),
            http: HttpConfig::default(),
            records: RecordsOptions::default(),
            demo: false,
        },
        listener,
    )
    .await
    .unwrap();
    let token = common::mint(
        &server.issuer,
        &carelayer_http::auth::TokenSubject::Operator {
            name: "test".into(),
        },
        None,
    );
    TOKENS
        .lock()
        .unwrap()
        .push((server.base_url.clone(), token));
    server
}

async fn get(base: &str, path: &str) -> Value {
    let r = client_for(base)
        .get(format!("{base}/{path}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

async fn count(base: &str, ty: &str) -> u64 {
    get(base, &format!("{ty}?_summary=count")).await["total"]
        .as_u64()
        .unwrap()
}

/// Every stored resource of `ty` is at version 1.
async fn all_version_one(base: &str, ty: &str) -> usize {
    let mut url = format!("{base}/{ty}?_count=1000&_elements=id");
    let mut n = 0;
    loop {
        let bundle: Value = client_for(&url)
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in bundle["entry"].as_array().into_iter().flatten() {
            assert_eq!(e["resource"]["meta"]["versionId"], "1", "{}", e["resource"]);
            n += 1;
        }
        match bundle["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        {
            Some(next) => url = next["url"].as_str().unwrap().to_owned(),
            None => return n,
        }
    }
}

fn manifest_counts(dir: &Path) -> BTreeMap<String, u64> {
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m["resources"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_cli_loads_synth_output_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    let db = tmp.path().join("db/carelayer.db");
    let (ok, out, err) = carelayer(&[
        "synth",
        "--patients",
        "4",
        "--seed",
        "3",
        "--out",
        &p(&data),
    ]);
    assert!(ok, "{out}\n{err}");
    let expected = manifest_counts(&data);
    let total: u64 = expected.values().sum();

    // An interrupted import (after two batches of 50)…
    let database = format!("sqlite://{}", db.display());
    let (ok, out, err) = carelayer(&[
        "import",
        "--database",
        &database,
        "--no-progress",
        "--batch",
        "50",
        "--concurrency",
        "1",
        "--stop-after-batches",
        "2",
        &p(&data),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("stopped early"), "{out}");
    assert!(tmp.path().join("db/import-checkpoint.json").exists());

    // …resumed: nothing twice, everything once.
    let (ok, out, err) = carelayer(&[
        "import",
        "--database",
        &database,
        "--no-progress",
        "--batch",
        "50",
        &p(&data),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("resumed: "), "{out}");
    assert!(out.contains(" 0 rejected"), "{out}");

    // A third run finds everything done.
    let (ok, out, _) = carelayer(&[
        "import",
        "--database",
        &database,
        "--no-progress",
        &p(&data),
    ]);
    assert!(ok);
    assert!(out.contains("0 resources read"), "{out}");

    let server = serve(&db).await;
    let mut stored = 0;
    for (ty, n) in &expected {
        assert_eq!(count(&server.base_url, ty).await, *n, "{ty}");
        assert_eq!(
            all_version_one(&server.base_url, ty).await as u64,
            *n,
            "{ty}"
        );
        stored += n;
    }
    assert_eq!(stored, total);
    // Indexed like any write: search by NHS number finds the patient.
    let patient = &lines(&data, Kind::Patient)[0];
    let nhs = patient["identifier"][0]["value"].as_str().unwrap();
    let found = get(
        &server.base_url,
        &format!("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"),
    )
    .await;
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found["entry"][0]["resource"]["id"], patient["id"]);
    server.stop().await.unwrap();
}

fn bad_file(dir: &Path) -> PathBuf {
    let path = dir.join("mixed.ndjson");
    let lines = [
        r#"{"resourceType":"Patient","id":"ok-1","gender":"female","birthDate":"1970-02-03"}"#,
        r#"{"resourceType":"Patient","id":"bad-gender","gender":"robot"}"#,
        r#"{"resourceType":"Patient","id":"ok-2","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9990000018"}]}"#,
        r#"{"resourceType":"Patient","id":"#,
        "",
        r#"{"resourceType":"Patient","id":"bad-nhs","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765918"}]}"#,
        r#"{"resourceType":"Observation","id":"ok-3","status":"final","code":{"text":"weight"},"subject":{"reference":"Patient/ok-1"}}"#,
        r#"{"resourceType":"Nonsense","id":"x"}"#,
        r#"{"resourceType":"Patient","id":"ok-1","gender":"male"}"#,
    ];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reports_bad_lines_and_imports_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let file = bad_file(tmp.path());
    let db = tmp.path().join("carelayer.db");
    let rejects = tmp.path().join("rejects.txt");
    let (ok, out, err) = carelayer(&[
        "import",
        "--database",
        &format!("sqlite://{}", db.display()),
        "--no-progress",
        "--rejects",
        &p(&rejects),
        &p(&file),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("3 written"), "{out}");
    assert!(out.contains("5 rejected"), "{out}");
    let report = std::fs::read_to_string(&rejects).unwrap();
    let at = |line: u32| format!("{}:{line}: ", file.display());
    for (line, mention) in [
        (2, "gender"),
        (4, "not valid JSON"),
        (6, "check digit"),
        (8, "Nonsense"),
        (9, "more than once"),
    ] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&at(line)))
            .unwrap_or_else(|| panic!("line {line} not reported:\n{report}"));
        assert!(
            row.to_lowercase().contains(&mention.to_lowercase()),
            "{row}"
        );
        assert!(out.contains(&at(line)), "{out}");
    }
    assert_eq!(report.lines().count(), 5, "{report}");

    let server = serve(&db).await;
    assert_eq!(count(&server.base_url, "Patient").await, 2);
    assert_eq!(count(&server.base_url, "Observation").await, 1);
    let ok1 = get(&server.base_url, "Patient/ok-1").await;
    assert_eq!(ok1["gender"], "female", "the first occurrence wins");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_operation_and_import_through_a_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(&tmp.path().join("carelayer.db")).await;
    let base = server.base_url.clone();
    let client = client_for(&base);
    let token = token_for(&base);

    // $import with an NDJSON body: a report of what was done and refused.
    let body = std::fs::read_to_string(bad_file(tmp.path())).unwrap();
    let r = client
        .post(format!("{base}/$import"))
        .header("content-type", "application/fhir+ndjson")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let outcome: Value = r.json().await.unwrap();
    let issues = outcome["issue"].as_array().unwrap();
    assert_eq!(issues[0]["severity"], "information");
    assert_eq!(
        issues[0]["diagnostics"],
        "created 3, updated 0, unchanged 0, rejected 5"
    );
    let locations: Vec<&str> = issues[1..]
        .iter()
        .map(|i| i["location"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        locations,
        ["line 2", "line 4", "line 6", "line 8", "line 9"]
    );
    // Sent again with skip-unchanged: nothing new is written.
    let r = client
        .post(format!("{base}/$import?skip-unchanged=true"))
        .header("content-type", "application/fhir+ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(
        outcome["issue"][0]["diagnostics"],
        "created 0, updated 0, unchanged 3, rejected 5"
    );
    // A JSON body is the asynchronous bulk kick-off, which needs
    // `Prefer: respond-async` (tests/bulk_import.rs); other media are 415.
    let r = client
        .post(format!("{base}/$import"))
        .header("content-type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .post(format!("{base}/$import"))
        .header("content-type", "text/csv")
        .body("a,b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // `carelayer import --server`, both ways, from synth output.
    let data = tmp.path().join("synth");
    generate(&data, 2, 9, true, None).unwrap();
    let expected = manifest_counts(&data);
    let (ok, out, err) = carelayer(&[
        "import",
        "--server",
        &base,
        "--token",
        &token,
        "--no-progress",
        &p(&data),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(" 0 rejected"), "{out}");
    for (ty, n) in &expected {
        // Plus what the $import above stored (Patients ok-1, ok-2; Observation ok-3).
        let earlier = match ty.as_str() {
            "Patient" => 2,
            "Observation" => 1,
            _ => 0,
        };
        assert_eq!(count(&base, ty).await, n + earlier, "{ty}");
    }
    // Transaction Bundles written by synth --bundles, through a server.
    let (ok, out, err) = carelayer(&[
        "import",
        "--server",
        &base,
        "--token",
        &token,
        "--via",
        "transaction",
        "--no-progress",
        "--restart",
        &p(&data.join("bundles")),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(" 0 rejected"), "{out}");
    let patient = lines(&data, Kind::Patient)[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let p1 = get(&base, &format!("Patient/{patient}")).await;
    assert_eq!(p1["meta"]["versionId"], "2", "the Bundle PUT updated it");
    server.stop().await.unwrap();
}
