//! Issue 7 on PostgreSQL: accesses over HTTP land in the ledger; someone
//! with the database's keys who disables the append-only triggers and
//! alters, deletes or reorders ledger rows, or cuts off the ledger's tail
//! after the last checkpoint was signed (even wiping the checkpoint table,
//! when an exported checkpoint file is given), is named by
//! `carelayer audit verify`; the untouched ledger verifies. Needs
//! `CARELAYER_TEST_POSTGRES` (scripts/test sets it); on CI its absence fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::{TestPgDatabase, TestServer, create_pg_database, nhs_number, patient, pg_admin};

fn verify(database: &str, key_dir: &std::path::Path) -> Output {
    verify_with(database, key_dir, &[])
}

fn verify_with(database: &str, key_dir: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carelayer"))
        .args(["audit", "verify", "--database", database, "--key-dir"])
        .arg(key_dir)
        .args(extra)
        .env("CARELAYER_LOG", "warn")
        .output()
        .expect("run carelayer audit verify")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_postgres_ledger_is_named() {
    let Ok(admin) = std::env::var("CARELAYER_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL tamper test: set CARELAYER_TEST_POSTGRES"
        );
        eprintln!("SKIPPED: CARELAYER_TEST_POSTGRES is not set");
        return;
    };
    let database = create_pg_database(&admin);
    let _guard = TestPgDatabase::at(&admin, &database);
    let db = database.clone();
    let s = TestServer::start_with(move |c| c.database = db).await;
    let key_dir = s.dir.path().to_path_buf();
    for i in 0..4u64 {
        let mut p = patient(&nhs_number(8100 + i), "Ledger");
        p["id"] = serde_json::json!(format!("lp{i}"));
        s.put(&format!("Patient/lp{i}"), &p)
            .await
            .expect_status(201);
        s.get(&format!("Patient/lp{i}")).await.expect_status(200);
    }
    s.get("Patient?family=Ledger").await.expect_status(200);
    // Keep the TempDir (keys) alive past stop.
    let TestServer { server, dir, .. } = s;
    server.unwrap().stop().await.unwrap();

    let ok = verify(&database, &key_dir);
    assert!(ok.status.success(), "{}", text(&ok));

    let run = |sql: &str| {
        pg_admin(
            &database,
            &[format!(
                "ALTER TABLE audit_ledger DISABLE TRIGGER USER; {sql}; \
                 ALTER TABLE audit_ledger ENABLE TRIGGER USER;"
            )],
        )
        .unwrap();
    };
    run("CREATE TABLE ledger_backup AS SELECT * FROM audit_ledger");
    let restore = "DELETE FROM audit_ledger; INSERT INTO audit_ledger SELECT * FROM ledger_backup";
    let cases = [
        (
            "UPDATE audit_ledger SET record = convert_to(replace(convert_from(record, 'UTF8'), '\"create\"', '\"update\"'), 'UTF8') WHERE seq = 3",
            "entry 3 was altered",
        ),
        (
            "DELETE FROM audit_ledger WHERE seq = 4",
            "entry 4 was deleted",
        ),
        (
            "UPDATE audit_ledger a SET record = b.record, hash = b.hash FROM ledger_backup b \
             WHERE (a.seq = 6 AND b.seq = 7) OR (a.seq = 7 AND b.seq = 6)",
            "entries 6 and 7 were swapped",
        ),
    ];
    for (tamper, named) in cases {
        run(tamper);
        let out = verify(&database, &key_dir);
        assert!(!out.status.success(), "{tamper}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{tamper}: expected '{named}': {}",
            text(&out)
        );
        run(restore);
        let ok = verify(&database, &key_dir);
        assert!(ok.status.success(), "restored: {}", text(&ok));
    }

    // Truncation of the tail, after the last checkpoint was signed (the
    // server signs one as it stops, so it covers the last entry). Keep the
    // signed heads outside the database first, as an operator would.
    let export = key_dir.join("checkpoints.json");
    let out = Command::new(env!("CARGO_BIN_EXE_carelayer"))
        .args(["audit", "checkpoint", "--database", &database, "--key-dir"])
        .arg(&key_dir)
        .arg("--export")
        .arg(&export)
        .env("CARELAYER_LOG", "warn")
        .output()
        .expect("run carelayer audit checkpoint");
    assert!(out.status.success(), "{}", text(&out));
    let export = export.to_str().unwrap().to_owned();
    let ok = verify_with(&database, &key_dir, &["--checkpoints", &export]);
    assert!(ok.status.success(), "{}", text(&ok));
    let last = ledger_end(&database).await;
    assert!(last > 10, "the ledger has entries to cut: {last}");
    let cut = format!("DELETE FROM audit_ledger WHERE seq >= {}", last - 1);
    run(&cut);
    let out = verify(&database, &key_dir);
    assert!(!out.status.success(), "tail cut: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated"),
        "tail cut: expected 'truncated': {}",
        text(&out)
    );
    run(restore);

    // The same cut with the checkpoint table wiped too: the database alone
    // can no longer tell, the exported checkpoints still can.
    pg_admin(
        &database,
        &[format!(
            "ALTER TABLE audit_checkpoints DISABLE TRIGGER USER; DELETE FROM audit_checkpoints; \
             ALTER TABLE audit_checkpoints ENABLE TRIGGER USER; \
             ALTER TABLE audit_ledger DISABLE TRIGGER USER; {cut}; \
             ALTER TABLE audit_ledger ENABLE TRIGGER USER;"
        )],
    )
    .unwrap();
    let out = verify(&database, &key_dir);
    assert!(
        out.status.success(),
        "without the export the cut is invisible: {}",
        text(&out)
    );
    let out = verify_with(&database, &key_dir, &["--checkpoints", &export]);
    assert!(!out.status.success(), "wiped and cut: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated"),
        "wiped and cut: expected 'truncated': {}",
        text(&out)
    );
    drop(dir);
}

/// The last ledger entry's seq.
async fn ledger_end(database: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(database, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let last: i64 = client
        .query_one("SELECT max(seq) FROM audit_ledger", &[])
        .await
        .unwrap()
        .get(0);
    drop(client);
    let _ = task.await;
    last
}
