//! Shared test setup: a fresh, uniquely named database per test, dropped at
//! the end (also when the test panics: the guard's `Drop` runs on unwind).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use carelayer_store_postgres::{PostgresOptions, PostgresStore};

/// The admin URL from `CARELAYER_TEST_POSTGRES`, or `None` after a loud
/// skip notice. On CI (`CI` set) a missing URL fails the test: the
/// PostgreSQL run must never be skipped silently there.
pub fn admin_url() -> Option<String> {
    match std::env::var("CARELAYER_TEST_POSTGRES") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but CARELAYER_TEST_POSTGRES is not: the PostgreSQL contract run \
                 must not be skipped on CI (set it to e.g. postgres://postgres@127.0.0.1:5432/postgres)"
            );
            eprintln!(
                "\n\
                 ************************************************************************\n\
                 *  SKIPPED: PostgreSQL store tests — CARELAYER_TEST_POSTGRES is unset. *\n\
                 *  Set it to postgres://postgres@127.0.0.1:5432/postgres to run them.   *\n\
                 ************************************************************************\n"
            );
            None
        }
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A database created for one test; dropped (forcefully, closing any
/// connection still open to it) when this guard drops.
pub struct TestDb {
    pub admin_url: String,
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create(admin_url: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("carelayer_test_{}_{n}", std::process::id());
        let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
            .await
            .expect("connect to CARELAYER_TEST_POSTGRES");
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
        let mut url = url::Url::parse(admin_url).expect("CARELAYER_TEST_POSTGRES is a URL");
        url.set_path(&format!("/{name}"));
        Self {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop may run inside a runtime (cannot block on it): use a thread
        // with its own small runtime.
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                let task = tokio::spawn(conn);
                let r = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
                drop(client);
                let _ = task.await;
                r.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Options for tests: a small pool and short timeouts.
pub fn test_options() -> PostgresOptions {
    PostgresOptions {
        pool_size: 4,
        statement_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        ..PostgresOptions::default()
    }
}

/// A fresh store on a fresh database, or `None` when skipping.
pub async fn fresh() -> Option<(PostgresStore, TestDb)> {
    let admin = admin_url()?;
    let db = TestDb::create(&admin).await;
    let store = PostgresStore::connect(&db.url, test_options())
        .await
        .expect("connect to the test database");
    Some((store, db))
}
