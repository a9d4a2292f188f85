//! SQLite-specific behaviour: plans use indexes, reopen keeps data and the
//! audit chain, a closed store answers `Unavailable`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use carelayer_audit::{
    Agent, AuditAction, AuditOutcome, AuditRecord, Channel, GENESIS_HASH, chain_hash,
};
use carelayer_fhir::search::{IndexEntry, IndexValue};
use carelayer_store::{
    Clause, IndexTest, Predicate, Prefix, ResourceWrite, SearchQuery, SortKey, Store, StoreError,
    WriteSet,
};
use carelayer_store_sqlite::{SqliteOptions, SqliteStore};

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("c.db"), SqliteOptions::default()).unwrap()
}

fn audit(detail: &str) -> AuditRecord {
    AuditRecord {
        recorded_at: 1,
        action: AuditAction::Read,
        outcome: AuditOutcome::Success,
        agent: Agent {
            display: "t".into(),
            ..Agent::default()
        },
        patient: None,
        resources: vec![],
        purpose: "direct-care".into(),
        channel: Channel::Rest,
        detail: Some(detail.into()),
    }
}

fn patient(id: &str) -> ResourceWrite {
    ResourceWrite {
        resource_type: "Patient".into(),
        id: id.into(),
        version: 1,
        last_updated: 1,
        deleted: false,
        json: b"{}".to_vec(),
        patient_key: Some(id.into()),
        index: vec![IndexEntry {
            param: "family".into(),
            value: IndexValue::String {
                normalized: "smith".into(),
                exact: "Smith".into(),
            },
        }],
    }
}

fn one(types: &[&str], p: Predicate) -> SearchQuery {
    SearchQuery {
        resource_types: types.iter().map(|t| (*t).to_owned()).collect(),
        clauses: vec![Clause { any_of: vec![p] }],
        count: 10,
        ..SearchQuery::default()
    }
}

fn index(param: &str, test: IndexTest) -> Predicate {
    Predicate::Index {
        param: param.into(),
        test,
    }
}

/// No plan line may scan a table: every access is an index search (or the
/// rowid lookup of `current`).
fn assert_indexed(plan: &[String], what: &str) {
    if std::env::var_os("SHOW_PLANS").is_some() {
        eprintln!("== {what}\n{}", plan.join("\n"));
    }
    for line in plan {
        let scan = line.starts_with("SCAN ") && !line.contains("USING");
        assert!(!scan, "{what}: full scan in plan:\n{}", plan.join("\n"));
        // Walking every current resource of the type and filtering is a scan too.
        assert!(
            !line.ends_with("current_key (type=?)"),
            "{what}: type-range walk in plan:\n{}",
            plan.join("\n")
        );
    }
}

#[tokio::test]
async fn searches_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .commit(WriteSet {
            resources: vec![patient("p1")],
            ..WriteSet::default()
        })
        .await
        .unwrap();
    let tok = IndexTest::Token {
        system: Some(Some("https://fhir.nhs.uk/Id/nhs-number".into())),
        code: "9000000009".into(),
    };
    let cases: Vec<(&str, SearchQuery)> = vec![
        ("type only", one(&["Patient"], Predicate::Id("p1".into()))),
        ("token", one(&["Patient"], index("identifier", tok.clone()))),
        ("token any type", one(&[], index("identifier", tok.clone()))),
        (
            "token system",
            one(
                &["Patient"],
                index("identifier", IndexTest::TokenSystem("s".into())),
            ),
        ),
        (
            "token text",
            one(
                &["Patient"],
                index("code", IndexTest::TokenText("dia".into())),
            ),
        ),
        (
            "string prefix",
            one(
                &["Patient"],
                index("name", IndexTest::StringStartsWith("smi".into())),
            ),
        ),
        (
            "string exact",
            one(
                &["Patient"],
                index(
                    "name",
                    IndexTest::StringExact {
                        normalized: "smith".into(),
                        exact: "Smith".into(),
                    },
                ),
            ),
        ),
        (
            "date ge",
            one(
                &["Patient"],
                index(
                    "birthdate",
                    IndexTest::Date {
                        prefix: Prefix::Ge,
                        low: 1,
                        high: 2,
                    },
                ),
            ),
        ),
        (
            "date eq",
            one(
                &["Patient"],
                index(
                    "birthdate",
                    IndexTest::Date {
                        prefix: Prefix::Eq,
                        low: 1,
                        high: 2,
                    },
                ),
            ),
        ),
        (
            "number",
            one(
                &["RiskAssessment"],
                index(
                    "probability",
                    IndexTest::Number {
                        prefix: Prefix::Gt,
                        value: 1.0,
                        low: 0.5,
                        high: 1.5,
                    },
                ),
            ),
        ),
        (
            "reference",
            one(
                &["Observation"],
                index(
                    "subject",
                    IndexTest::Reference {
                        target_type: Some("Patient".into()),
                        id: "p1".into(),
                    },
                ),
            ),
        ),
        (
            "uri below",
            one(
                &["ValueSet"],
                index("url", IndexTest::UriBelow("http://x".into())),
            ),
        ),
        (
            "uri above",
            one(
                &["ValueSet"],
                index("url", IndexTest::UriAbove("http://x/a/b".into())),
            ),
        ),
        (
            "patient compartment",
            one(&["Observation"], Predicate::PatientKey("p1".into())),
        ),
        (
            "patient compartment all types",
            one(&[], Predicate::PatientKey("p1".into())),
        ),
        (
            "last updated",
            one(
                &["Patient"],
                Predicate::LastUpdated {
                    prefix: Prefix::Gt,
                    low: 1,
                    high: 2,
                },
            ),
        ),
        (
            "composite",
            one(
                &["Observation"],
                index(
                    "code-value-quantity",
                    IndexTest::Composite(vec![
                        IndexTest::Token {
                            system: None,
                            code: "1234".into(),
                        },
                        IndexTest::Quantity {
                            prefix: Prefix::Gt,
                            value: 1.0,
                            low: 0.5,
                            high: 1.5,
                            system: None,
                            code: None,
                        },
                    ]),
                ),
            ),
        ),
        (
            "chain",
            one(
                &["Observation"],
                Predicate::Chain {
                    param: "subject".into(),
                    target_type: "Patient".into(),
                    query: Box::new(one(
                        &["Patient"],
                        index("name", IndexTest::StringStartsWith("smi".into())),
                    )),
                },
            ),
        ),
        (
            "has",
            one(
                &["Patient"],
                Predicate::Has {
                    source_type: "Observation".into(),
                    param: "subject".into(),
                    query: Box::new(one(
                        &["Observation"],
                        index(
                            "code",
                            IndexTest::Token {
                                system: None,
                                code: "1234".into(),
                            },
                        ),
                    )),
                },
            ),
        ),
        (
            "missing",
            one(
                &["Patient"],
                Predicate::Missing {
                    param: "gender".into(),
                    missing: false,
                },
            ),
        ),
        (
            "sorted",
            SearchQuery {
                sort: vec![SortKey::Param {
                    param: "family".into(),
                    descending: false,
                }],
                ..one(
                    &["Patient"],
                    index("name", IndexTest::StringStartsWith("smi".into())),
                )
            },
        ),
    ];
    for (what, q) in cases {
        let plan = store.explain(&q).await.unwrap();
        assert!(!plan.is_empty());
        assert_indexed(&plan, what);
    }
    store.close().await;
}

#[tokio::test]
async fn reopen_keeps_data_and_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store
            .commit(WriteSet {
                resources: vec![patient("p1")],
                audit: vec![audit("1")],
                ..WriteSet::default()
            })
            .await
            .unwrap();
        store.append_audit(vec![audit("2")]).await.unwrap();
        store.close().await;
    }
    let store = open(&dir);
    assert!(store.read_current("Patient", "p1").await.unwrap().is_some());
    store.append_audit(vec![audit("3")]).await.unwrap();
    let rows = store.audit_rows(0, 100).await.unwrap();
    assert_eq!(rows.len(), 3);
    let mut prev = GENESIS_HASH;
    for row in &rows {
        assert_eq!(row.hash, chain_hash(&prev, &row.record));
        prev = row.hash;
    }
    store.close().await;
}

/// A search that outgrows the in-place budget is interrupted and run again
/// on the blocking pool, with the same answer as one that fits it.
#[tokio::test]
async fn a_search_past_the_in_place_budget_is_run_again_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let patients: Vec<ResourceWrite> = (0..300).map(|i| patient(&format!("p{i:03}"))).collect();
    store
        .commit(WriteSet {
            resources: patients,
            ..WriteSet::default()
        })
        .await
        .unwrap();
    let mut query = one(
        &["Patient"],
        index("family", IndexTest::StringStartsWith("smi".into())),
    );
    query.count = 500;
    query.total = carelayer_store::TotalMode::Accurate;
    let ids = |page: carelayer_store::SearchPage| {
        (
            page.total,
            page.matches.into_iter().map(|m| m.id).collect::<Vec<_>>(),
        )
    };
    let fitting = ids(store.search(&query).await.unwrap());
    store.close().await;

    // No budget: every search long enough to reach SQLite's first progress
    // check (this one, over 300 rows) is handed over.
    let options = SqliteOptions {
        in_place_budget: std::time::Duration::ZERO,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(&path, options).unwrap();
    let handed_over = ids(store.search(&query).await.unwrap());
    assert_eq!(store.reads_handed_off(), 1);
    assert_eq!(handed_over, fitting);
    assert_eq!(handed_over.1.len(), 300);
    assert_eq!(handed_over.0, Some(300));
    // Each one is interrupted and handed over again, with the same answer;
    // the interrupted connection went back to the pool usable.
    for _ in 0..3 {
        assert_eq!(ids(store.search(&query).await.unwrap()), fitting);
        assert!(
            store
                .read_current("Patient", "p007")
                .await
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(store.reads_handed_off(), 4);
    store.close().await;
}

#[tokio::test]
async fn a_closed_store_is_unavailable_not_hung() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.close().await;
    let r = store
        .commit(WriteSet {
            resources: vec![patient("p1")],
            ..WriteSet::default()
        })
        .await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(matches!(
        store.append_audit(vec![audit("x")]).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.read_current("Patient", "p1").await,
        Err(StoreError::Unavailable(_))
    ));
    // Lookups by key run on the caller's task, searches on the blocking
    // pool: both paths answer alike once closed.
    assert!(matches!(
        store.read_version("Patient", "p1", 1).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store
            .read_current_many(&[("Patient".into(), "p1".into())])
            .await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.search(&SearchQuery::default()).await,
        Err(StoreError::Unavailable(_))
    ));
    store.close().await; // idempotent
}

#[tokio::test]
async fn hostile_values_are_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let evil = "x' OR 1=1; DROP TABLE current; --";
    store
        .commit(WriteSet {
            resources: vec![patient("p1")],
            ..WriteSet::default()
        })
        .await
        .unwrap();
    for q in [
        one(&["Patient"], Predicate::Id(evil.into())),
        one(&[evil], Predicate::Id("p1".into())),
        one(
            &["Patient"],
            index(evil, IndexTest::StringStartsWith(evil.into())),
        ),
        one(
            &["Patient"],
            Predicate::Missing {
                param: evil.into(),
                missing: false,
            },
        ),
    ] {
        assert!(store.search(&q).await.unwrap().matches.is_empty());
    }
    assert_eq!(store.count(Some("Patient")).await.unwrap(), 1);
    store.close().await;
}

/// The audit index (postings per flushed block) is written after its
/// entries commit (deferred, in bulk). Blocks a crash kept from it are
/// re-derived from the ledger at open, and the derivation from the stored
/// entries gives exactly the rows the writer derives from the records.
#[tokio::test]
async fn audit_index_rows_a_crash_lost_are_rederived_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let entry = |n: i64, patient: &str, user: &str, purpose: &str| AuditRecord {
        recorded_at: 1_000 + n,
        patient: Some(patient.into()),
        agent: Agent {
            user: Some(user.into()),
            org: Some("Y90001".into()),
            client: Some("app".into()),
            role: Some("R8000".into()),
            display: user.into(),
        },
        purpose: purpose.into(),
        outcome: if n % 3 == 0 {
            AuditOutcome::Denied("no relationship".into())
        } else {
            AuditOutcome::Success
        },
        ..audit(&n.to_string())
    };
    let entries: Vec<AuditRecord> = (1..=40)
        .map(|n| {
            let purpose = if n == 7 || n == 33 {
                format!("{}collapsed", carelayer_audit::BREAK_GLASS_PURPOSE_PREFIX)
            } else {
                "direct-care".to_owned()
            };
            entry(n, &format!("p{}", n % 4), &format!("u{}", n % 5), &purpose)
        })
        .collect();
    let everyone = carelayer_store::AuditQuery {
        limit: 1_000,
        ..carelayer_store::AuditQuery::default()
    };
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    // Two appends, each made visible by a search (which flushes the backlog
    // first): two blocks, 1..=25 and 26..=40.
    store.append_audit(entries[..25].to_vec()).await.unwrap();
    assert_eq!(store.audit_search(&everyone).await.unwrap().len(), 25);
    store.append_audit(entries[25..].to_vec()).await.unwrap();
    assert_eq!(store.audit_search(&everyone).await.unwrap().len(), 40);
    store.close().await;

    let index_rows = |conn: &rusqlite::Connection| -> Vec<Vec<rusqlite::types::Value>> {
        let mut all = Vec::new();
        for sql in [
            "SELECT * FROM audit_blocks ORDER BY last_seq",
            "SELECT * FROM audit_postings ORDER BY block, key",
        ] {
            let mut stmt = conn.prepare(sql).unwrap();
            let width = stmt.column_count();
            let rows: Vec<Vec<rusqlite::types::Value>> = stmt
                .query_map([], |r| (0..width).map(|i| r.get(i)).collect())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            all.extend(rows);
        }
        all
    };
    // Simulate a crash between the second block's commit and its index.
    let written_by_the_writer = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let rows = index_rows(&conn);
        let blocks: Vec<(i64, i64)> = conn
            .prepare("SELECT first_seq, last_seq FROM audit_blocks ORDER BY last_seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(blocks, vec![(1, 25), (26, 40)]);
        conn.execute_batch(
            "DROP TRIGGER audit_postings_no_delete; DROP TRIGGER audit_blocks_no_delete; \
             DELETE FROM audit_postings WHERE block = 40; DELETE FROM audit_blocks WHERE last_seq = 40;",
        )
        .unwrap();
        rows
    };
    // patients p0..p3, users u0..u4, client, org, break-glass, denied: 13
    // keys in each block, and the two block rows.
    assert_eq!(written_by_the_writer.len(), 2 + 2 * 13);

    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let found = store
        .audit_search(&carelayer_store::AuditQuery {
            patient: Some("p1".into()),
            break_glass: Some(true),
            limit: 10,
            ..carelayer_store::AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![33],
        "the break-glass entry about p1 in the re-derived block (n = 33)"
    );
    store.close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(index_rows(&conn), written_by_the_writer);
}

/// Search over postings spread across many flushed blocks (and a write
/// set's own entries between them) gives exactly what filtering every entry
/// gives: newest first, paged by `before_seq`, with date windows that cut
/// blocks in the middle and times that go backwards between blocks.
#[tokio::test]
async fn audit_search_over_many_blocks_equals_filtering_every_entry() {
    use carelayer_store::{AuditQuery, OutcomeClass};
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let entry = |n: i64| AuditRecord {
        // Times step forward but jump back by 50 at every tenth entry.
        recorded_at: 1_000 + n * 10 - if n % 10 == 0 { 50 } else { 0 },
        action: if n % 4 == 0 {
            AuditAction::Search
        } else {
            AuditAction::Read
        },
        patient: (n % 6 != 0).then(|| format!("p{}", n % 5)),
        agent: Agent {
            user: (n % 7 != 0).then(|| format!("u{}", n % 3)),
            org: Some(format!("O{}", n % 2)),
            client: (n % 7 == 0).then(|| format!("u{}", n % 3)),
            role: None,
            display: "someone".into(),
        },
        purpose: if n % 11 == 0 {
            format!("{}collapsed", carelayer_audit::BREAK_GLASS_PURPOSE_PREFIX)
        } else {
            "direct-care".into()
        },
        outcome: if n % 5 == 0 {
            AuditOutcome::Denied("no relationship".into())
        } else {
            AuditOutcome::Success
        },
        ..audit(&n.to_string())
    };
    let everyone = AuditQuery {
        limit: 10_000,
        ..AuditQuery::default()
    };
    let mut n = 0;
    for size in [3, 17, 1, 30, 9, 40] {
        let batch: Vec<AuditRecord> = (n + 1..=n + size).map(entry).collect();
        n += size;
        store.append_audit(batch).await.unwrap();
        // A write set's own entry too, committed with it.
        n += 1;
        store
            .commit(WriteSet {
                preconditions: vec![],
                resources: vec![],
                audit: vec![entry(n)],
            })
            .await
            .unwrap();
        // Flushed as a block of its own before the next batch.
        store.audit_search(&everyone).await.unwrap();
    }
    let all: Vec<(i64, AuditRecord)> = store
        .audit_rows(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.record))
        .collect();
    assert_eq!(all.len(), usize::try_from(n).unwrap());
    let expect = |q: &AuditQuery| -> Vec<i64> {
        let mut seqs: Vec<i64> = all
            .iter()
            .rev()
            // What the query means, on every entry: the index must find
            // exactly these.
            .filter(|(seq, r)| q.matches(*seq, r))
            .map(|(seq, _)| *seq)
            .collect();
        seqs.truncate(q.limit);
        seqs
    };
    let base = || AuditQuery {
        limit: 10_000,
        ..AuditQuery::default()
    };
    let mut queries = vec![
        base(),
        AuditQuery {
            patient: Some("p2".into()),
            ..base()
        },
        AuditQuery {
            agent: Some("u1".into()),
            ..base()
        },
        AuditQuery {
            org: Some("O1".into()),
            actions: vec![AuditAction::Search],
            ..base()
        },
        AuditQuery {
            break_glass: Some(true),
            ..base()
        },
        AuditQuery {
            break_glass: Some(false),
            patient: Some("p1".into()),
            ..base()
        },
        AuditQuery {
            outcomes: vec![OutcomeClass::Denied],
            ..base()
        },
        AuditQuery {
            outcomes: vec![OutcomeClass::Success, OutcomeClass::Denied],
            org: Some("O0".into()),
            ..base()
        },
        AuditQuery {
            patient: Some("p9".into()),
            ..base()
        },
    ];
    // Date windows over each of the above, cutting blocks in the middle.
    // (1_095, 1_221): the window ends just after entry 22 (t = 1_220), the
    // last of its block.
    for (from, to) in [
        (1_200, 1_600),
        (1_095, 1_105),
        (1_095, 1_221),
        (5_000, 6_000),
        (1_000, 1_001),
    ] {
        for q in queries.clone() {
            queries.push(AuditQuery {
                from: Some(from),
                to: Some(to),
                ..q
            });
        }
    }
    for q in &queries {
        let want = expect(q);
        assert_eq!(
            store
                .audit_search(q)
                .await
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            want,
            "{q:?}"
        );
        // Paged by 4 through `before_seq`: the same entries, in order.
        let mut paged = Vec::new();
        let mut before = None;
        loop {
            let page: Vec<i64> = store
                .audit_search(&AuditQuery {
                    limit: 4,
                    before_seq: before,
                    ..q.clone()
                })
                .await
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect();
            let Some(&last) = page.last() else { break };
            assert!(page.len() <= 4);
            paged.extend(page);
            before = Some(last);
        }
        assert_eq!(paged, want, "paged: {q:?}");
    }
    store.close().await;
}

/// The journal's lock file of the store at `db` (its segments are
/// `…-audit.N`), and a wait for the lock to be free (a dropped store's
/// writer thread lets go of it as it exits).
fn journal_of(db: &std::path::Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-audit");
    std::path::PathBuf::from(p)
}

/// The journal's segments, oldest first, with their sizes.
fn segments_of(db: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let prefix = format!("{}.", journal_of(db).display());
    let mut found: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let n = p.to_string_lossy().strip_prefix(&prefix)?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|(_, p)| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

async fn wait_until_unlocked(journal: &std::path::Path) {
    for _ in 0..500 {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(journal)
            .unwrap();
        if file.try_lock().is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the journal stayed locked");
}

fn verify_chain(rows: &[carelayer_audit::LedgerRow]) {
    let mut prev = GENESIS_HASH;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.seq, i64::try_from(i).unwrap() + 1, "no gap");
        assert_eq!(
            row.hash,
            chain_hash(&prev, &row.record),
            "entry {}",
            row.seq
        );
        prev = row.hash;
    }
}

/// Read-audit entries wait in the journal, not in the ledger table. A store
/// that dies before moving them (dropped without `close`, its writer thread
/// gone: what a killed process leaves) loses none: the next open moves them
/// into the ledger and the chain continues. A torn frame after them (a power
/// cut mid-write) is kept aside, not applied and not deleted.
#[tokio::test]
async fn read_audit_in_the_journal_survives_a_dead_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let journal = journal_of(&path);
    let mut journaled = 0;
    for attempt in 0..5 {
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store
            .commit(WriteSet {
                resources: vec![patient(&format!("p{attempt}"))],
                audit: vec![audit(&format!("write {attempt}"))],
                ..WriteSet::default()
            })
            .await
            .unwrap();
        for i in 0..3 {
            store
                .append_audit(vec![audit(&format!("read {attempt}.{i}"))])
                .await
                .unwrap();
        }
        drop(store);
        wait_until_unlocked(&journal).await;
        journaled = segments_of(&path).iter().map(|(_, len)| len).sum();
        // Entries move to the ledger 200 ms after they wait: a stalled test
        // thread can let that happen first; try again then.
        if journaled > 0 {
            break;
        }
    }
    assert!(
        journaled > 0,
        "the reads' entries were still in the journal"
    );
    let in_table = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row("SELECT count(*) FROM audit_ledger", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
    };
    // A torn frame: a header promising more bytes than follow.
    {
        use std::io::Write;
        let (last, _) = segments_of(&path).pop().unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
        f.write_all(&[200, 0, 0, 0, 9, 9, 9]).unwrap();
    }

    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let rows = store.audit_rows(0, 1_000).await.unwrap();
    assert!(
        i64::try_from(rows.len()).unwrap() > in_table,
        "recovered {} entries over the table's {in_table}",
        rows.len()
    );
    let last = rows.last().unwrap().record.detail.clone().unwrap();
    assert!(last.starts_with("read ") && last.ends_with(".2"), "{last}");
    store.append_audit(vec![audit("after")]).await.unwrap();
    let rows = store.audit_rows(0, 1_000).await.unwrap();
    verify_chain(&rows);
    assert_eq!(rows.last().unwrap().record.detail.as_deref(), Some("after"));
    // Every entry is found by an audit search too (index rows re-derived).
    let all = store
        .audit_search(&carelayer_store::AuditQuery {
            limit: 1_000,
            ..carelayer_store::AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), rows.len());
    store.close().await;
    let aside: Vec<std::fs::DirEntry> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("-audit.unrecovered-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read(aside[0].path()).unwrap(),
        [200, 0, 0, 0, 9, 9, 9]
    );
    let left = segments_of(&path);
    assert!(left.iter().all(|(_, len)| *len == 0), "{left:?}");
}

/// Journaled read entries and write sets interleave, concurrently, into one
/// gap-free chain in append order; each write's own entry commits with it.
#[tokio::test]
async fn journaled_reads_and_writes_make_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let jobs = (0..60).map(|i| {
        let store = &store;
        async move {
            if i % 3 == 0 {
                store
                    .commit(WriteSet {
                        resources: vec![patient(&format!("w{i}"))],
                        audit: vec![audit(&format!("write {i}"))],
                        ..WriteSet::default()
                    })
                    .await
                    .map(|_| ())
            } else {
                store.append_audit(vec![audit(&format!("read {i}"))]).await
            }
        }
    });
    for r in futures::future::join_all(jobs).await {
        r.unwrap();
    }
    // Right after the writes, before any flush: the write's entries are in
    // the table already, and sequential order holds.
    store.append_audit(vec![audit("r-last")]).await.unwrap();
    store
        .commit(WriteSet {
            resources: vec![patient("w-last")],
            audit: vec![audit("w-last")],
            ..WriteSet::default()
        })
        .await
        .unwrap();
    let rows = store.audit_rows(0, 1_000).await.unwrap();
    assert_eq!(rows.len(), 62);
    verify_chain(&rows);
    let details: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.record.detail.as_deref())
        .collect();
    assert_eq!(&details[60..], ["r-last", "w-last"]);
    store.close().await;
}

/// Read-audit appends from many tasks on a multi-threaded runtime share
/// journal writes (see `writer::AppendQueue`): every entry lands exactly
/// once in one verified chain, each append's entries stay together and in
/// order, and each task's appends keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_journal_writes_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(&dir));
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..50 {
                    let entries = (0..=(i % 3))
                        .map(|k| audit(&format!("t{t} a{i} e{k}")))
                        .collect();
                    store.append_audit(entries).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rows = store.audit_rows(0, 10_000).await.unwrap();
    verify_chain(&rows);
    let details: Vec<String> = rows
        .iter()
        .filter_map(|r| r.record.detail.clone())
        .collect();
    // 50 appends of 1, 2, 3, 1, 2, 3, … entries per task.
    let per_task: usize = (0..50).map(|i| i % 3 + 1).sum();
    assert_eq!(details.len(), 8 * per_task);
    for t in 0..8 {
        let mine: Vec<&String> = details
            .iter()
            .filter(|d| d.starts_with(&format!("t{t} ")))
            .collect();
        let expected: Vec<String> = (0..50)
            .flat_map(|i| (0..=(i % 3)).map(move |k| format!("t{t} a{i} e{k}")))
            .collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "task {t}");
    }
    for (at, d) in details.iter().enumerate() {
        // An append's later entries directly follow its first.
        if let Some(first) = d.strip_suffix(" e1").or_else(|| d.strip_suffix(" e2")) {
            assert!(
                details[at - 1].starts_with(first),
                "{d} follows {}",
                details[at - 1]
            );
        }
    }
    match std::sync::Arc::try_unwrap(store) {
        Ok(store) => store.close().await,
        Err(_) => panic!("the store is still shared"),
    }
}

/// A closed date window (`date=ge…&date=lt…`) drives from `idx_date_low`
/// and the long-range index instead of an open-ended half. Oracle: for
/// every pair of a lower and an upper test, the windowed search finds
/// exactly the intersection of the two single-test searches (which take
/// the plain path), over points, days, months, a long period straddling
/// the window and open-ended periods.
#[tokio::test]
async fn date_windows_match_the_intersection_of_their_halves() {
    const DAY: i64 = 24 * 3600 * 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let w0 = 1_000 * DAY; // window start
    let w1 = w0 + 30 * DAY; // window end
    let rows: Vec<(&str, i64, i64)> = vec![
        ("point-in", w0 + 5 * DAY, w0 + 5 * DAY),
        ("point-before", w0 - 3 * DAY, w0 - 3 * DAY),
        ("point-after", w1 + 3 * DAY, w1 + 3 * DAY),
        ("day-at-start", w0, w0 + DAY - 1),
        ("day-straddling-start", w0 - DAY / 2, w0 + DAY / 2),
        ("week-straddling-start", w0 - 3 * DAY, w0 + 4 * DAY),
        ("month-straddling-end", w1 - 10 * DAY, w1 + 20 * DAY),
        ("year-around", w0 - 200 * DAY, w0 + 165 * DAY),
        ("long-before", w0 - 400 * DAY, w0 - 100 * DAY),
        ("long-after", w1 + 100 * DAY, w1 + 400 * DAY),
        ("open-start", i64::MIN, w0 + DAY),
        ("open-end", w1 - DAY, i64::MAX),
        ("open-end-late", w1 + 50 * DAY, i64::MAX),
    ];
    let resources = rows
        .iter()
        .map(|(id, low, high)| ResourceWrite {
            resource_type: "Observation".into(),
            id: (*id).into(),
            version: 1,
            last_updated: 1,
            deleted: false,
            json: b"{}".to_vec(),
            patient_key: None,
            index: vec![IndexEntry {
                param: "date".into(),
                value: IndexValue::Date {
                    low: *low,
                    high: *high,
                },
            }],
        })
        .collect();
    store
        .commit(WriteSet {
            resources,
            ..WriteSet::default()
        })
        .await
        .unwrap();
    let ids = |q: SearchQuery| {
        let store = &store;
        async move {
            let mut ids: Vec<String> = store
                .search(&SearchQuery { count: 100, ..q })
                .await
                .unwrap()
                .matches
                .into_iter()
                .map(|m| m.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let test = |prefix, low, high| index("date", IndexTest::Date { prefix, low, high });
    // Search values: a day at each end of the window, and the window's month.
    let lower = [
        (Prefix::Ge, w0, w0 + DAY - 1),
        (Prefix::Gt, w0, w0 + DAY - 1),
        (Prefix::Sa, w0, w0 + DAY - 1),
        (Prefix::Eq, w0, w1),
        (Prefix::Ap, w0, w0 + DAY - 1),
    ];
    let upper = [
        (Prefix::Lt, w1, w1 + DAY - 1),
        (Prefix::Le, w1, w1 + DAY - 1),
        (Prefix::Eb, w1, w1 + DAY - 1),
        (Prefix::Eq, w0 - 5 * DAY, w1 + 5 * DAY),
    ];
    let mut nonempty = 0;
    for (lp, ll, lh) in lower {
        for (up, ul, uh) in upper {
            let both = SearchQuery {
                clauses: vec![
                    Clause {
                        any_of: vec![test(lp, ll, lh)],
                    },
                    Clause {
                        any_of: vec![test(up, ul, uh)],
                    },
                ],
                ..one(&["Observation"], test(lp, ll, lh))
            };
            let plan = store.explain(&both).await.unwrap();
            assert!(
                plan.iter().any(|l| l.contains("idx_date_low"))
                    && plan.iter().any(|l| l.contains("idx_date_long")),
                "{lp:?}+{up:?}: the window does not drive:\n{}",
                plan.join("\n")
            );
            let a = ids(one(&["Observation"], test(lp, ll, lh))).await;
            let b = ids(one(&["Observation"], test(up, ul, uh))).await;
            let expected: Vec<String> = a.iter().filter(|id| b.contains(id)).cloned().collect();
            nonempty += usize::from(!expected.is_empty());
            assert_eq!(ids(both).await, expected, "{lp:?} {ll} + {up:?} {uh}");
        }
    }
    assert!(nonempty >= 10, "the cases must find something");
    store.close().await;
}

/// Every index's DDL and planner statistics, by name: what a bulk load may
/// take away and must give back exactly.
fn indexes_and_stats(db: &std::path::Path) -> Vec<(String, String, Option<String>)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT m.name, m.sql, (SELECT s.stat FROM sqlite_stat1 s WHERE s.idx = m.name) \
             FROM sqlite_schema m WHERE m.type = 'index' AND m.sql IS NOT NULL ORDER BY m.name",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn family_smith() -> SearchQuery {
    one(
        &["Patient"],
        index("family", IndexTest::StringStartsWith("smi".into())),
    )
}

async fn ids_of(store: &SqliteStore, q: &SearchQuery) -> Vec<String> {
    let mut ids: Vec<String> = store
        .search(q)
        .await
        .unwrap()
        .matches
        .into_iter()
        .map(|m| m.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_big_load_builds_its_secondary_indexes_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let store = open(&dir);
    let before = indexes_and_stats(&db);
    assert!(
        before
            .iter()
            .any(|(n, _, s)| n == "idx_string_norm" && s.is_some()),
        "seeded statistics: {before:?}"
    );
    store.begin_bulk_load(50_000).await.unwrap();
    let during = indexes_and_stats(&db);
    let kept: Vec<&str> = during.iter().map(|(n, _, _)| n.as_str()).collect();
    // What writes rely on stays; the row-by-row maintenance goes.
    assert!(kept.contains(&"current_key") && kept.contains(&"resources_version"));
    assert!(!kept.contains(&"idx_string_norm") && !kept.contains(&"idx_token_code"));
    assert!(!kept.contains(&"current_patient") && !kept.contains(&"resources_type_seq"));
    for id in ["p1", "p2"] {
        store
            .commit(WriteSet {
                resources: vec![patient(id)],
                ..WriteSet::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(
        ids_of(&store, &family_smith()).await,
        ["p1", "p2"],
        "during"
    );
    store.end_bulk_load().await.unwrap();
    assert_eq!(
        indexes_and_stats(&db),
        before,
        "the same indexes and statistics"
    );
    assert_eq!(ids_of(&store, &family_smith()).await, ["p1", "p2"], "after");
    let plan = store.explain(&family_smith()).await.unwrap();
    assert_indexed(&plan, "family after the load");
    store.close().await;
}

#[tokio::test]
async fn an_unfinished_load_is_finished_when_the_database_next_opens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let store = open(&dir);
    let before = indexes_and_stats(&db);
    store.begin_bulk_load(50_000).await.unwrap();
    store
        .commit(WriteSet {
            resources: vec![patient("p1")],
            ..WriteSet::default()
        })
        .await
        .unwrap();
    // The process goes away mid-load: nobody ends it.
    store.close().await;
    assert_ne!(indexes_and_stats(&db), before);
    let store = open(&dir);
    assert_eq!(indexes_and_stats(&db), before);
    assert_eq!(ids_of(&store, &family_smith()).await, ["p1"]);
    store.close().await;
}

#[tokio::test]
async fn loads_small_against_the_database_keep_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let store = open(&dir);
    let before = indexes_and_stats(&db);
    // Too small to be worth builds at all.
    store.begin_bulk_load(9_999).await.unwrap();
    assert_eq!(indexes_and_stats(&db), before);
    store.end_bulk_load().await.unwrap();
    // Big, but less than four times what the database holds.
    let held: Vec<ResourceWrite> = (0..2_501).map(|i| patient(&format!("h{i}"))).collect();
    store
        .commit(WriteSet {
            resources: held,
            ..WriteSet::default()
        })
        .await
        .unwrap();
    store.begin_bulk_load(10_000).await.unwrap();
    assert_eq!(indexes_and_stats(&db), before);
    store.end_bulk_load().await.unwrap();
    // One fewer held and the same load defers.
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = open(&dir2);
    let held: Vec<ResourceWrite> = (0..2_500).map(|i| patient(&format!("h{i}"))).collect();
    store2
        .commit(WriteSet {
            resources: held,
            ..WriteSet::default()
        })
        .await
        .unwrap();
    store2.begin_bulk_load(10_000).await.unwrap();
    assert_ne!(indexes_and_stats(&dir2.path().join("c.db")), before);
    store2.end_bulk_load().await.unwrap();
    assert_eq!(indexes_and_stats(&dir2.path().join("c.db")), before);
    store.close().await;
    store2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_begins_while_another_connection_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let store = open(&dir);
    let before = indexes_and_stats(&db);
    // Another connection (as the checkpoint signer's is) holds the write
    // lock and commits while the load begins: the load waits for it.
    let other = rusqlite::Connection::open(&db).unwrap();
    other
        .execute_batch("CREATE TABLE scratch (x); BEGIN IMMEDIATE; INSERT INTO scratch VALUES (1)")
        .unwrap();
    let committer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        other.execute_batch("COMMIT").unwrap();
    });
    store.begin_bulk_load(50_000).await.unwrap();
    committer.join().unwrap();
    assert_ne!(
        indexes_and_stats(&db),
        before,
        "the load deferred its indexes"
    );
    store.end_bulk_load().await.unwrap();
    assert_eq!(indexes_and_stats(&db), before);
    store.close().await;
}
