//! PostgreSQL going away under write load, simulated with a TCP proxy in the
//! test (stopping the shared server would break other tests): commits during
//! the outage fail with `Unavailable` within a deadline (no panic, no hang),
//! nothing acknowledged is lost, and service resumes by itself once the
//! proxy is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use carelayer_audit::{Agent, AuditAction, AuditOutcome, AuditRecord, Channel};
use carelayer_store::{Precondition, ResourceWrite, Store, StoreError, WriteSet};
use carelayer_store_postgres::{PostgresOptions, PostgresStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to `upstream` that can be cut (every open connection closed,
/// new ones refused) and restored.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// Bumped on every cut: connection tasks watch it and close.
    generation: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0_u64);
        let (up2, gen2) = (Arc::clone(&up), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                    // Dropping both sockets closes them: to the client it
                    // looks like the server went away.
                });
            }
        });
        Self {
            port,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn patient(id: &str) -> ResourceWrite {
    ResourceWrite {
        resource_type: "Patient".into(),
        id: id.into(),
        version: 1,
        last_updated: 1_700_000_000_000_000,
        deleted: false,
        json: format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#).into_bytes(),
        patient_key: Some(id.into()),
        index: vec![],
    }
}

fn audit(id: &str) -> AuditRecord {
    AuditRecord {
        recorded_at: 1_700_000_000_000_000,
        action: AuditAction::Create,
        outcome: AuditOutcome::Success,
        agent: Agent {
            user: Some("u1".into()),
            display: "Test".into(),
            ..Agent::default()
        },
        patient: Some(id.into()),
        resources: vec![format!("Patient/{id}")],
        purpose: "direct-care".into(),
        channel: Channel::Rest,
        detail: None,
    }
}

fn create(id: &str) -> WriteSet {
    WriteSet {
        preconditions: vec![Precondition::CurrentVersion {
            resource_type: "Patient".into(),
            id: id.into(),
            expected: None,
        }],
        resources: vec![patient(id)],
        audit: vec![audit(id)],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_fast_loses_nothing_and_recovers() {
    let Some(admin) = common::admin_url() else {
        return;
    };
    let db = common::TestDb::create(&admin).await;
    let mut direct = url::Url::parse(&db.url).unwrap();
    let upstream = format!(
        "{}:{}",
        direct.host_str().unwrap(),
        direct.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(upstream).await;
    direct.set_host(Some("127.0.0.1")).unwrap();
    direct.set_port(Some(proxy.port)).unwrap();
    let options = PostgresOptions {
        pool_size: 4,
        statement_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..PostgresOptions::default()
    };
    let store = Arc::new(
        PostgresStore::connect(direct.as_str(), options)
            .await
            .unwrap(),
    );

    // Four writers create patients continuously; each records what it was
    // told committed. Every call must answer within a deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let (mut acked, mut unavailable) = (Vec::new(), 0_u32);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("w{w}-{i}");
                i += 1;
                let started = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(20), store.commit(create(&id)))
                    .await
                    .expect("a commit hung during the outage");
                assert!(started.elapsed() < Duration::from_secs(20));
                match r {
                    Ok(_) => acked.push(id),
                    Err(StoreError::Unavailable(_)) => {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("unexpected error during outage: {e}"),
                }
            }
            (acked, unavailable)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.cut();
    // During the outage: a read fails with Unavailable too, promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        store.read_current("Patient", "w0-0"),
    )
    .await
    .expect("a read hung during the outage");
    assert!(
        matches!(read, Err(StoreError::Unavailable(_))),
        "read during outage: {read:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    // Service resumes by itself: a commit succeeds within a bound.
    let resumed = Instant::now();
    loop {
        match store
            .commit(create(&format!("after-{}", resumed.elapsed().as_micros())))
            .await
        {
            Ok(_) => break,
            Err(StoreError::Unavailable(_)) => {
                assert!(
                    resumed.elapsed() < Duration::from_secs(30),
                    "did not recover within 30 s of PostgreSQL coming back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("unexpected error after restore: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut acked, mut unavailable) = (BTreeSet::new(), 0);
    for w in workers {
        let (a, u) = w.await.unwrap();
        acked.extend(a);
        unavailable += u;
    }
    assert!(unavailable > 0, "the outage was observed as Unavailable");
    // Nothing acknowledged is lost: check on a fresh store straight to
    // PostgreSQL (not through the proxy).
    store.close().await;
    let check = PostgresStore::connect(&db.url, common::test_options())
        .await
        .unwrap();
    for id in &acked {
        assert!(
            check.read_current("Patient", id).await.unwrap().is_some(),
            "acknowledged Patient/{id} lost"
        );
    }
    // And the audit chain is whole: one entry per stored patient.
    let rows = check.audit_rows(0, 1_000_000).await.unwrap();
    let mut prev = carelayer_audit::GENESIS_HASH;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.seq, i64::try_from(i).unwrap() + 1);
        assert_eq!(row.hash, carelayer_audit::chain_hash(&prev, &row.record));
        prev = row.hash;
    }
    let stored = check.count(Some("Patient")).await.unwrap();
    assert_eq!(rows.len(), usize::try_from(stored).unwrap());
    eprintln!(
        "reliability: {} acknowledged, {unavailable} Unavailable during the outage, {stored} stored",
        acked.len()
    );
    check.close().await;
}

/// Two servers on one database (the scale-out setup): each writer caches
/// the head its last batch left and moves it by compare-and-swap, so when
/// the other server has committed in between, the attempt is rolled back
/// and redone on the locked head. Interleaved commits, audit appends and a
/// precondition that races across the two must leave every acknowledged
/// write stored, every conflicting create refused exactly once, and one
/// gapless, correctly chained audit ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_share_one_chain() {
    let Some((first, db)) = common::fresh().await else {
        return;
    };
    let first = Arc::new(first);
    let second = Arc::new(
        PostgresStore::connect(&db.url, common::test_options())
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for (s, store) in [Arc::clone(&first), Arc::clone(&second)]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let (mut created, mut refused) = (Vec::new(), 0_u32);
            for i in 0..60 {
                // Own ids, then one both servers race to create.
                let own = format!("s{s}-{i}");
                store.commit(create(&own)).await.unwrap();
                created.push(own);
                store.append_audit(vec![audit("read")]).await.unwrap();
                match store.commit(create(&format!("both-{i}"))).await {
                    Ok(_) => created.push(format!("both-{i}")),
                    Err(StoreError::PreconditionFailed(_)) => refused += 1,
                    Err(e) => panic!("store {s}: {e}"),
                }
            }
            (created, refused)
        }));
    }
    let (mut created, mut refused) = (Vec::new(), 0);
    for t in tasks {
        let (c, r) = t.await.unwrap();
        created.extend(c);
        refused += r;
    }
    assert_eq!(refused, 60, "each raced create refused exactly once");
    assert_eq!(created.len(), 2 * 60 + 60);
    let unique: BTreeSet<&String> = created.iter().collect();
    assert_eq!(unique.len(), created.len(), "no id acknowledged twice");
    for id in &created {
        assert!(
            second.read_current("Patient", id).await.unwrap().is_some(),
            "acknowledged Patient/{id} lost"
        );
    }
    let rows = first.audit_rows(0, 1_000_000).await.unwrap();
    // One entry per stored create plus one per read append.
    assert_eq!(rows.len(), created.len() + 2 * 60);
    let mut prev = carelayer_audit::GENESIS_HASH;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.seq, i64::try_from(i).unwrap() + 1, "gapless");
        assert_eq!(row.hash, carelayer_audit::chain_hash(&prev, &row.record));
        prev = row.hash;
    }
    first.close().await;
    second.close().await;
}
