//! Issue 7 on PostgreSQL: accesses over HTTP land in the ledger; someone
//! with the database's keys who disables the append-only triggers and
//! alters, deletes or reorders ledger rows is named by
//! `carelayer audit verify`; the untouched ledger verifies. Needs
//! `CARELAYER_TEST_POSTGRES` (scripts/test sets it); on CI its absence fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::{TestPgDatabase, TestServer, create_pg_database, nhs_number, patient, pg_admin};

fn verify(database: &str, key_dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carelayer"))
        .args(["audit", "verify", "--database", database, "--key-dir"])
        .arg(key_dir)
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
    drop(dir);
}
