//! Issue 7 end to end: accesses over HTTP show up, exactly, in the patient's
//! `AuditEvent?patient=` log (search hits included); AuditEvents cannot be
//! written through the API; then the real `carelayer audit verify` binary
//! passes an untouched ledger and names the entry when rows are modified,
//! deleted, reordered or truncated directly in the SQLite file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{TestServer, nhs_number, observation, patient};
use serde_json::{Value, json};

/// (subtype code, entity references other than the patient) of an event.
fn shape(event: &Value) -> (String, Vec<String>) {
    let subtype = event["subtype"][0]["code"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let mut refs: Vec<String> = event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["role"]["code"] != "1")
        .filter_map(|e| e["what"]["reference"].as_str().map(str::to_owned))
        .collect();
    refs.sort();
    (subtype, refs)
}

/// Entries in a Bundle (0 when it has none).
fn entries(r: &common::Resp) -> usize {
    r.json["entry"].as_array().map_or(0, Vec::len)
}

fn patient_of(event: &Value) -> Option<String> {
    event["entity"]
        .as_array()?
        .iter()
        .find(|e| e["role"]["code"] == "1")
        .and_then(|e| e["what"]["reference"].as_str())
        .map(str::to_owned)
}

fn carelayer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carelayer"))
        .args(args)
        .env("CARELAYER_LOG", "warn")
        .output()
        .expect("run carelayer")
}

fn verify(db: &Path, extra: &[&str]) -> Output {
    let url = format!("sqlite://{}", db.display());
    let mut args = vec!["audit", "verify", "--database", url.as_str()];
    args.extend_from_slice(extra);
    carelayer(&args)
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A copy of the database (and the signing key beside it) to tamper with.
fn copy_db(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("db.sqlite") || name.ends_with(".key") {
            std::fs::copy(entry.path(), to.join(&*name)).unwrap();
        }
    }
    to.join("db.sqlite")
}

/// Tamper as an attacker with file access would: drop the append-only
/// triggers first, then edit.
fn tamper(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
    )
    .unwrap();
    conn.execute_batch(sql).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_log_shows_exactly_their_accesses_and_verify_catches_tampering() {
    // This test tampers with the SQLite file itself; the PostgreSQL ledger
    // is covered by the store contract suite.
    if common::test_postgres().is_some() {
        eprintln!("SKIPPED on CARELAYER_TEST_BACKEND=postgres: tampers with the SQLite file");
        return;
    }
    let server = TestServer::start().await;

    // Two patients with an observation each.
    let a = server
        .post("Patient", &patient(&nhs_number(71), "Audita"))
        .await;
    a.expect_status(201);
    let a_id = a.json["id"].as_str().unwrap().to_owned();
    let b = server
        .post("Patient", &patient(&nhs_number(72), "Auditb"))
        .await;
    b.expect_status(201);
    let b_id = b.json["id"].as_str().unwrap().to_owned();
    let oa = server.post("Observation", &observation(&a_id, "70")).await;
    oa.expect_status(201);
    let oa_id = oa.json["id"].as_str().unwrap().to_owned();
    server
        .post("Observation", &observation(&b_id, "80"))
        .await
        .expect_status(201);

    // Accesses: read, vread, history, a search whose hits span both patients,
    // a search hitting A alone, and one hitting only B.
    server
        .get(&format!("Patient/{a_id}"))
        .await
        .expect_status(200);
    server
        .get(&format!("Observation/{oa_id}/_history/1"))
        .await
        .expect_status(200);
    server
        .get(&format!("Patient/{a_id}/_history"))
        .await
        .expect_status(200);
    let both = server.get("Observation?_count=100").await;
    both.expect_status(200);
    assert_eq!(entries(&both), 2);
    server.get("Patient?family=Audita").await.expect_status(200);
    server.get("Patient?family=Auditb").await.expect_status(200);

    // AuditEvent is read-only through the API.
    let event = json!({"resourceType": "AuditEvent", "id": "1"});
    server
        .post("AuditEvent", &event)
        .await
        .expect_outcome(405, "not-supported", Some("read-only"));
    server
        .put("AuditEvent/1", &event)
        .await
        .expect_outcome(405, "not-supported", None);
    server
        .delete("AuditEvent/1")
        .await
        .expect_outcome(405, "not-supported", None);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "AuditEvent", "type": {"code": "rest"},
                     "recorded": "2024-01-01T00:00:00Z",
                     "agent": [{"requestor": true}], "source": {"observer": {"display": "x"}}},
        "request": {"method": "POST", "url": "AuditEvent"}}]});
    let refused = server.post("", &tx).await;
    assert_eq!(refused.status.as_u16(), 403, "{}", refused.text);

    // The patient's log: exactly A's accesses, newest first.
    let log = server
        .get(&format!("AuditEvent?patient=Patient/{a_id}&_count=100"))
        .await;
    log.expect_status(200);
    let events: Vec<Value> = log.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    for e in &events {
        assert_eq!(e["resourceType"], "AuditEvent");
        assert_eq!(patient_of(e), Some(format!("Patient/{a_id}")), "{e}");
    }
    let got: Vec<(String, Vec<String>)> = events.iter().map(shape).collect();
    let h = |r: &str| vec![format!("{r}/_history/1")];
    let expected = vec![
        ("search-type".to_owned(), h(&format!("Patient/{a_id}"))),
        ("search-type".to_owned(), h(&format!("Observation/{oa_id}"))),
        ("history-instance".to_owned(), h(&format!("Patient/{a_id}"))),
        ("vread".to_owned(), h(&format!("Observation/{oa_id}"))),
        ("read".to_owned(), h(&format!("Patient/{a_id}"))),
        ("create".to_owned(), h(&format!("Observation/{oa_id}"))),
        ("create".to_owned(), h(&format!("Patient/{a_id}"))),
    ];
    assert_eq!(got, expected, "the log of A is exactly A's accesses");
    // The search hit entry carries the query as a Query entity.
    assert!(
        events[1]["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["role"]["code"] == "24")
    );

    // B's log has B's own accesses and none of A's.
    let log_b = server.get(&format!("AuditEvent?patient={b_id}")).await;
    log_b.expect_status(200);
    let b_events = log_b.json["entry"].as_array().unwrap();
    assert_eq!(b_events.len(), 4, "create, create obs, search hit, search");
    assert!(!log_b.text.contains(&format!("Patient/{a_id}")));

    // Filters: action, outcome, date, agent; paging; read by id.
    let creates = server
        .get(&format!("AuditEvent?patient={a_id}&action=C"))
        .await;
    assert_eq!(entries(&creates), 2);
    let reads = server
        .get(&format!("AuditEvent?patient={a_id}&action=read,vread"))
        .await;
    assert_eq!(entries(&reads), 2);
    let ok = server
        .get(&format!("AuditEvent?patient={a_id}&outcome=0"))
        .await;
    assert_eq!(entries(&ok), 7);
    let failed = server
        .get(&format!("AuditEvent?patient={a_id}&outcome=4"))
        .await;
    assert_eq!(entries(&failed), 0);
    let today = server
        .get(&format!("AuditEvent?patient={a_id}&date=ge2000-01-01"))
        .await;
    assert_eq!(entries(&today), 7);
    let past = server
        .get(&format!("AuditEvent?patient={a_id}&date=lt2000-01-01"))
        .await;
    assert_eq!(entries(&past), 0);
    let nobody = server
        .get(&format!("AuditEvent?patient={a_id}&agent=nobody"))
        .await;
    assert_eq!(entries(&nobody), 0);
    let (paged, pages) = server
        .all_pages(&format!("AuditEvent?patient={a_id}&_count=3"))
        .await;
    assert_eq!(pages, 3);
    assert_eq!(
        paged
            .iter()
            .map(|e| shape(&e["resource"]))
            .collect::<Vec<_>>(),
        expected
    );
    server
        .get("AuditEvent?bogus=1")
        .await
        .expect_outcome(400, "invalid", Some("bogus"));
    let id = events[0]["id"].as_str().unwrap();
    let one = server.get(&format!("AuditEvent/{id}")).await;
    one.expect_status(200);
    assert_eq!(one.json, events[0]);
    server.get("AuditEvent/999999").await.expect_status(404);

    // Alerts: the operator's search touched two patients within the window.
    let alerts = server.get("AuditEvent/$alerts?threshold=1").await;
    alerts.expect_status(200);
    let flags = alerts.json["entry"].as_array().cloned().unwrap_or_default();
    assert!(
        flags.iter().any(|f| f["resource"]["resourceType"] == "Flag"
            && f["resource"]["code"]["coding"][0]["code"] == "110113"),
        "{}",
        alerts.text
    );
    let calm = server.get("AuditEvent/$alerts?threshold=100").await;
    assert_eq!(entries(&calm), 0);

    // Stop the server but keep its folder (the database and key).
    let mut server = server;
    server.server.take().unwrap().stop().await.unwrap();
    let dir = server.dir.path().to_path_buf();
    let db = dir.join("db.sqlite");
    let key = std::fs::metadata(dir.join("audit-signing.key")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600, "key is owner-only");
    }

    // Export checkpoints, then the untouched ledger verifies (with and
    // without the exported file).
    let export = dir.join("checkpoints.json");
    let url = format!("sqlite://{}", db.display());
    let out = carelayer(&[
        "audit",
        "checkpoint",
        "--database",
        &url,
        "--export",
        export.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let exported: Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    assert!(!exported["checkpoints"].as_array().unwrap().is_empty());
    let ok = verify(&db, &[]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact"));
    let ok = verify(&db, &["--checkpoints", export.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok));

    let last: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT max(seq) FROM audit_ledger", [], |r| r.get(0))
        .unwrap();
    assert!(last > 10);

    // Altered: an entry's text changed (still well-formed canonical JSON).
    let t = tempfile::tempdir().unwrap();
    let altered = copy_db(&dir, &t.path().join("altered"));
    tamper(
        &altered,
        "UPDATE audit_ledger SET record = CAST(replace(CAST(record AS TEXT), '\"create\"', '\"update\"') AS BLOB) WHERE seq = 3",
    );
    let out = verify(&altered, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("entry 3 was altered"), "{}", text(&out));

    // Altered so that it no longer even decodes.
    let garbled = copy_db(&dir, &t.path().join("garbled"));
    tamper(
        &garbled,
        "UPDATE audit_ledger SET record = X'00FF' WHERE seq = 5",
    );
    let out = verify(&garbled, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("entry 5 was altered"),
        "{}",
        text(&out)
    );

    // Deleted.
    let deleted = copy_db(&dir, &t.path().join("deleted"));
    tamper(&deleted, "DELETE FROM audit_ledger WHERE seq = 4");
    let out = verify(&deleted, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("entry 4 was deleted"),
        "{}",
        text(&out)
    );

    // Reordered: rows 6 and 7 swapped (contents and hashes together).
    let reordered = copy_db(&dir, &t.path().join("reordered"));
    tamper(
        &reordered,
        "CREATE TEMP TABLE s AS SELECT seq, record, hash FROM audit_ledger WHERE seq IN (6, 7);
         UPDATE audit_ledger SET record = (SELECT record FROM s WHERE s.seq = 13 - audit_ledger.seq),
                                 hash = (SELECT hash FROM s WHERE s.seq = 13 - audit_ledger.seq)
         WHERE seq IN (6, 7);",
    );
    let out = verify(&reordered, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("entries 6 and 7 were swapped"),
        "{}",
        text(&out)
    );

    // Truncated after the last checkpoint (the final one signed at stop),
    // even with the checkpoint table wiped: the exported file still knows.
    let truncated = copy_db(&dir, &t.path().join("truncated"));
    tamper(
        &truncated,
        &format!("DELETE FROM audit_ledger WHERE seq >= {}", last - 1),
    );
    let out = verify(&truncated, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated"),
        "{}",
        text(&out)
    );
    let wiped = copy_db(&dir, &t.path().join("wiped"));
    tamper(
        &wiped,
        &format!(
            "DROP TRIGGER audit_checkpoints_no_delete; DELETE FROM audit_checkpoints;
             DELETE FROM audit_ledger WHERE seq >= {}",
            last - 1
        ),
    );
    let out = verify(&wiped, &[]);
    assert!(
        out.status.success(),
        "without the export the cut is invisible: {}",
        text(&out)
    );
    let out = verify(&wiped, &["--checkpoints", export.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated"),
        "{}",
        text(&out)
    );
}
