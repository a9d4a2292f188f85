//! Crash safety: the real `carelayer serve` process is killed with SIGKILL
//! while 16 clients write concurrently; after a restart on the same SQLite
//! file every write that had been acknowledged (201/200 received) is present
//! and readable at its acknowledged version, with the content that was sent,
//! and the store opens cleanly. Three rounds, killed at different moments.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{nhs_number, observation, patient, send};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

const WRITERS: usize = 16;

/// Acknowledged writes after which each round's kill happens.
const KILL_AFTER: [usize; 3] = [25, 400, 1500];

/// A write the server acknowledged.
#[derive(Debug, Clone)]
struct Ack {
    reference: String,
    version: u64,
    /// What the version must contain: (JSON pointer, value).
    marker: (&'static str, Value),
}

struct Server {
    child: Child,
    base: String,
}

/// The operator token of the server under test (its key is in the
/// database's folder, so it survives restarts).
static TOKEN: Mutex<Option<String>> = Mutex::new(None);

/// An HTTP client presenting the operator token.
fn client() -> reqwest::Client {
    let token = TOKEN.lock().unwrap().clone().expect("a server was started");
    common::client_with_token(&token)
}

/// Start `carelayer serve` on `db` and wait for its "serving" line.
fn start_server(db: &Path) -> Server {
    *TOKEN.lock().unwrap() = Some(common::operator_token(db.parent().unwrap()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_carelayer"))
        .args([
            "serve",
            "--database",
            &format!("sqlite://{}", db.display()),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("CARELAYER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start carelayer serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("carelayer serving FHIR R4 at ").nth(1)
                && let Some(tx) = tx.take()
            {
                let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                let _ = tx.send(Ok(url));
            } else if line.contains("Error") || line.contains("ERROR") || line.contains("panicked")
            {
                eprintln!("server: {line}");
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(line));
                }
            }
        }
    });
    // A guard against a hung start-up, not a performance assertion.
    let base = match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(Ok(base)) => base,
        Ok(Err(line)) => {
            let _ = child.kill();
            panic!("carelayer serve failed to start: {line}");
        }
        Err(e) => {
            let _ = child.kill();
            panic!("carelayer serve printed no serving line: {e}");
        }
    };
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    Server { child, base }
}

fn version_of(etag: Option<&str>) -> u64 {
    etag.unwrap()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// One writer: create a Patient, then alternately update it and add an
/// Observation for it, until the server goes away. Every acknowledged write
/// is recorded.
async fn writer(
    base: String,
    round: usize,
    task: usize,
    acks: Arc<Mutex<Vec<Ack>>>,
    count: Arc<AtomicUsize>,
) {
    let client = client();
    let record = |ack: Ack| {
        acks.lock().unwrap().push(ack);
        count.fetch_add(1, Ordering::SeqCst);
    };
    let seed = (round * 100 + task) as u64 * 1000;
    let family = format!("c{round}-{task}");
    let body = serde_json::to_vec(&patient(&nhs_number(seed), &family)).unwrap();
    let Ok(r) = client
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
    else {
        return;
    };
    if r.status().as_u16() != 201 {
        return;
    }
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Ok(created) = r.json::<Value>().await else {
        return;
    };
    let id = created["id"].as_str().unwrap().to_owned();
    record(Ack {
        reference: format!("Patient/{id}"),
        version: version_of(etag.as_deref()),
        marker: ("/name/0/family", json!(family)),
    });
    for n in 0.. {
        let (method, url, body, marker): (Method, String, Value, (&'static str, Value)) =
            if n % 2 == 0 {
                let family = format!("u{round}-{task}-{n}");
                let mut p = patient(&nhs_number(seed), &family);
                p["id"] = json!(id);
                (
                    Method::PUT,
                    format!("{base}/Patient/{id}"),
                    p,
                    ("/name/0/family", json!(family)),
                )
            } else {
                let value = format!("{}.{n}", 40 + task);
                let o = observation(&id, &value);
                let marker = o["valueQuantity"]["value"].clone();
                (
                    Method::POST,
                    format!("{base}/Observation"),
                    o,
                    ("/valueQuantity/value", marker),
                )
            };
        let Ok(r) = client
            .request(method, &url)
            .header("content-type", "application/fhir+json")
            .header("prefer", "return=minimal")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
        else {
            return;
        };
        if !matches!(r.status().as_u16(), 200 | 201) {
            return;
        }
        let Some(location) = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            return;
        };
        // Only a complete response is an acknowledgement.
        if r.bytes().await.is_err() {
            return;
        }
        // …/Type/id/_history/v
        let parts: Vec<&str> = location.rsplit('/').take(4).collect();
        record(Ack {
            reference: format!("{}/{}", parts[3], parts[2]),
            version: parts[0].parse().unwrap(),
            marker,
        });
    }
}

/// Every acknowledged write is readable at its version with its content.
async fn verify(base: &str, acks: &[Ack]) {
    let client = client();
    let failures: Vec<String> = futures::stream::iter(acks.iter().cloned())
        .map(|ack| {
            let client = client.clone();
            async move {
                let url = format!("{base}/{}/_history/{}", ack.reference, ack.version);
                let r = send(&client, Method::GET, &url, &[], None).await;
                if r.status.as_u16() != 200 {
                    return Some(format!("{url}: {} {}", r.status, r.text));
                }
                let got = r.json.pointer(ack.marker.0);
                if got != Some(&ack.marker.1) {
                    return Some(format!(
                        "{url}: {} is {got:?}, acknowledged {}",
                        ack.marker.0, ack.marker.1
                    ));
                }
                if r.json["meta"]["versionId"] != ack.version.to_string().as_str() {
                    return Some(format!("{url}: versionId {}", r.json["meta"]["versionId"]));
                }
                // The current version is at least the acknowledged one.
                let current = send(
                    &client,
                    Method::GET,
                    &format!("{base}/{}", ack.reference),
                    &[],
                    None,
                )
                .await;
                if current.status.as_u16() != 200 {
                    return Some(format!("{}: current {}", ack.reference, current.status));
                }
                let v = version_of(current.header("etag"));
                (v < ack.version).then(|| {
                    format!(
                        "{}: current version {v} < acknowledged {}",
                        ack.reference, ack.version
                    )
                })
            }
        })
        .buffer_unordered(8)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} of {} acknowledged writes lost or wrong:\n{}",
        failures.len(),
        acks.len(),
        failures
            .iter()
            .take(50)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let mut all_acks: Vec<Ack> = Vec::new();

    for (round, kill_after) in KILL_AFTER.into_iter().enumerate() {
        let mut server = start_server(&db);
        // What earlier rounds acknowledged survived the previous kill.
        verify(&server.base, &all_acks).await;

        let acks = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|task| {
                tokio::spawn(writer(
                    server.base.clone(),
                    round,
                    task,
                    Arc::clone(&acks),
                    Arc::clone(&count),
                ))
            })
            .collect();
        while count.load(Ordering::SeqCst) < kill_after {
            assert!(
                !tasks.iter().all(tokio::task::JoinHandle::is_finished),
                "every writer stopped before the kill (round {round})"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // SIGKILL mid-load.
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        let acks = acks.lock().unwrap().clone();
        eprintln!(
            "round {round}: killed after {} acknowledged writes",
            acks.len()
        );
        assert!(acks.len() >= kill_after);
        all_acks.extend(acks);
    }

    // The store opens cleanly and holds everything acknowledged.
    let mut server = start_server(&db);
    verify(&server.base, &all_acks).await;
    let client = client();
    let meta = send(
        &client,
        Method::GET,
        &format!("{}/metadata", server.base),
        &[],
        None,
    )
    .await;
    meta.expect_status(200);
    let history = send(
        &client,
        Method::GET,
        &format!("{}/_history?_count=5", server.base),
        &[],
        None,
    )
    .await;
    history.expect_status(200);
    assert_eq!(history.json["type"], "history");
    // And it takes new writes.
    let r = send(
        &client,
        Method::POST,
        &format!("{}/Patient", server.base),
        &[("content-type", "application/fhir+json")],
        Some(serde_json::to_vec(&patient(&nhs_number(999), "After")).unwrap()),
    )
    .await;
    r.expect_status(201);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}
