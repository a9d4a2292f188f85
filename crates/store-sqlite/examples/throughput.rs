//! Rough throughput of the store itself (no HTTP, no policy): creates and
//! reads-with-audit from N concurrent tokio tasks. Run in release:
//!
//! ```text
//! cargo run --release -p carelayer-store-sqlite --example throughput -- [clients] [seconds]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use carelayer_audit::{Agent, AuditAction, AuditOutcome, AuditRecord, Channel};
use carelayer_fhir::search::{IndexEntry, IndexValue};
use carelayer_store::{Precondition, ResourceWrite, Store, WriteSet};
use carelayer_store_sqlite::{SqliteOptions, SqliteStore};

fn patient(id: &str) -> ResourceWrite {
    let json = format!(
        r#"{{"resourceType":"Patient","id":"{id}","meta":{{"versionId":"1","lastUpdated":"2026-01-01T00:00:00Z"}},"identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9000000009"}}],"name":[{{"family":"Smith","given":["Jane","Anne"]}}],"gender":"female","birthDate":"1980-05-17","address":[{{"line":["1 High Street"],"city":"Leeds","postalCode":"LS1 1AA"}}],"generalPractitioner":[{{"reference":"Organization/B82005"}}]}}"#
    );
    let tok = |param: &str, system: Option<&str>, code: &str| IndexEntry {
        param: param.into(),
        value: IndexValue::Token {
            system: system.map(Into::into),
            code: Some(code.into()),
            text: None,
        },
    };
    let string = |param: &str, v: &str| IndexEntry {
        param: param.into(),
        value: IndexValue::String {
            normalized: v.to_lowercase(),
            exact: v.into(),
        },
    };
    ResourceWrite {
        resource_type: "Patient".into(),
        id: id.into(),
        version: 1,
        last_updated: 1_767_225_600_000_000,
        deleted: false,
        json: json.into_bytes(),
        patient_key: Some(id.into()),
        index: vec![
            tok(
                "identifier",
                Some("https://fhir.nhs.uk/Id/nhs-number"),
                "9000000009",
            ),
            tok(
                "gender",
                Some("http://hl7.org/fhir/administrative-gender"),
                "female",
            ),
            tok("_id", None, id),
            string("name", "Smith"),
            string("name", "Jane"),
            string("name", "Anne"),
            string("family", "Smith"),
            string("given", "Jane"),
            string("given", "Anne"),
            string("address", "Leeds"),
            string("address-city", "Leeds"),
            string("address-postalcode", "LS1 1AA"),
            IndexEntry {
                param: "birthdate".into(),
                value: IndexValue::Date {
                    low: 327_369_600_000_000,
                    high: 327_455_999_999_999,
                },
            },
            IndexEntry {
                param: "general-practitioner".into(),
                value: IndexValue::Reference {
                    target_type: Some("Organization".into()),
                    target_id: Some("B82005".into()),
                    url: "Organization/B82005".into(),
                },
            },
        ],
    }
}

fn audit(action: AuditAction, id: &str) -> AuditRecord {
    AuditRecord {
        recorded_at: 1_767_225_600_000_000,
        action,
        outcome: AuditOutcome::Success,
        agent: Agent {
            user: Some("u1".into()),
            role: Some("R8000".into()),
            org: Some("B82005".into()),
            client: None,
            display: "Dr Test".into(),
        },
        patient: Some(id.into()),
        resources: vec![format!("Patient/{id}")],
        purpose: "direct-care".into(),
        channel: Channel::Rest,
        detail: None,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    // SYNC=normal measures what fsync costs (never the server default).
    let mut options = SqliteOptions::default();
    if std::env::var("SYNC").as_deref() == Ok("normal") {
        options.synchronous = carelayer_store_sqlite::Synchronous::Normal;
    }
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db"), options).unwrap());
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        // utime + stime in clock ticks (fields 14 and 15; after the comm field: 12 and 13).
        f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
    };
    // CPU of the named thread (clock ticks): is the writer the bottleneck?
    let thread_cpu = |name: &str| -> u64 {
        let mut total = 0;
        for task in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                let f: Vec<&str> = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                total += f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
                    + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        total
    };
    let writer0 = thread_cpu("carelayer-sqlit");
    let cpu0 = cpu();

    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < deadline {
                let id = format!("c{c}-{i}");
                i += 1;
                store
                    .commit(WriteSet {
                        preconditions: vec![Precondition::CurrentVersion {
                            resource_type: "Patient".into(),
                            id: id.clone(),
                            expected: None,
                        }],
                        resources: vec![patient(&id)],
                        audit: vec![audit(AuditAction::Create, &id)],
                    })
                    .await
                    .unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
            i
        }));
    }
    let mut per_client = Vec::new();
    for t in tasks {
        per_client.push(t.await.unwrap());
    }
    let n = done.load(Ordering::Relaxed);
    let el = start.elapsed().as_secs_f64();
    println!(
        "creates: {n} in {el:.2}s = {:.0}/s ({clients} clients, with index rows + 1 audit entry each)",
        n as f64 / el
    );
    let cpu1 = cpu();
    let writer1 = thread_cpu("carelayer-sqlit");
    println!(
        "  writer thread CPU: {:.1} µs per create, busy {:.0}% of wall time",
        (writer1 - writer0) as f64 * 10_000.0 / n as f64,
        (writer1 - writer0) as f64 / 100.0 / el * 100.0
    );
    println!(
        "  process CPU per create: {:.1} µs",
        (cpu1 - cpu0) as f64 * 10_000.0 / n as f64
    );

    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (c, made) in per_client.iter().enumerate() {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        let max = (*made).max(1);
        tasks.push(tokio::spawn(async move {
            let mut i = 0_u64;
            while Instant::now() < deadline {
                let id = format!("c{c}-{}", i % max);
                i += 7;
                let r = store.read_current("Patient", &id).await.unwrap();
                assert!(r.is_some());
                store
                    .append_audit(vec![audit(AuditAction::Read, &id)])
                    .await
                    .unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    let el = start.elapsed().as_secs_f64();
    println!(
        "reads+audit: {n} in {el:.2}s = {:.0}/s ({clients} clients, each read appends one audit entry)",
        n as f64 / el
    );
    println!(
        "  process CPU per read+audit: {:.1} µs",
        (cpu() - cpu1) as f64 * 10_000.0 / n as f64
    );
    let writer2 = thread_cpu("carelayer-sqlit");
    println!(
        "  writer thread CPU: {:.1} µs per audit append, busy {:.0}% of wall time",
        (writer2 - writer1) as f64 * 10_000.0 / n as f64,
        (writer2 - writer1) as f64 / 100.0 / el * 100.0
    );

    let rows = store.audit_rows(0, usize::MAX).await.unwrap();
    println!("ledger rows: {}", rows.len());
    store.close().await;
}
