//! The storage contract suite: one set of checks every backend must pass.
//!
//! Each function takes a freshly created, empty store and panics on a broken
//! promise. Backend crates run them all with one line in an integration test:
//!
//! ```ignore
//! async fn fresh() -> (MyStore, Guard) { … }
//! carelayer_store::contract_tests!(fresh);
//! ```
//!
//! which expands to one `#[tokio::test]` per check (so the backend's test
//! crate needs `tokio` with the `macros` and `rt-multi-thread` features).
//! SQLite runs them always; PostgreSQL when `CARELAYER_TEST_POSTGRES` is set.
//!
//! Values in the search tables are abstract (dates as small integers) because
//! the prefix semantics are pure comparisons; only `ap` uses real time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc,
    clippy::too_many_lines
)]

use carelayer_audit::{
    Agent, AuditAction, AuditOutcome, AuditRecord, Channel, GENESIS_HASH, chain_hash,
};
use carelayer_fhir::search::{IndexEntry, IndexValue};

use crate::{
    AuditQuery, HistoryQuery, HistoryScope, IndexTest, OutcomeClass, Precondition, Predicate,
    Prefix, ResourceWrite, SearchQuery, SortKey, Store, StoreError, TotalMode, WriteSet,
};

/// Expands to one `#[tokio::test]` per contract check. `$make` is an async
/// fn returning `(store, guard)`: the guard (e.g. a temp dir) lives until the
/// check ends.
#[macro_export]
macro_rules! contract_tests {
    ($make:path) => {
        $crate::contract_tests!(@each $make;
            create_and_read,
            versions_and_vread,
            delete_marker,
            history_order_since_cursor,
            precondition_current_version,
            precondition_search_matches,
            write_set_is_atomic,
            index_replaced_on_update_removed_on_delete,
            search_token_string_uri_reference,
            search_date_prefixes,
            search_number_quantity_prefixes,
            search_missing_not_chain_has_composite,
            search_types_id_patient_last_updated,
            sort_by_param,
            paging_snapshot_total,
            search_compound_and_keys_only,
            search_patient_scoped_codes,
            bulk_load_changes_no_answer,
            audit_chain,
            audit_atomic_with_writes,
            concurrent_commits_no_lost_updates,
            concurrent_audit_appends,
            concurrent_reads_get_their_own_answers,
            failed_write_does_not_disturb_others,
            count_by_type,
            audit_search_filters,
            audit_head_raw_rows_checkpoints,
        );
    };
    (@each $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $make().await;
                $crate::contract::$name(&store).await;
                $crate::Store::close(&store).await;
            }
        )*
    };
}

// ---------------------------------------------------------------- helpers

/// A search table row: name, clauses, expected ids.
type SearchCase = (&'static str, Vec<Vec<Predicate>>, Vec<&'static str>);
/// A sort fixture: id, family name, birth date range, last updated.
type Person = (&'static str, Option<&'static str>, Option<(i64, i64)>, i64);

const T0: i64 = 1_700_000_000_000_000;

fn write(t: &str, id: &str, version: i64, index: Vec<IndexEntry>) -> ResourceWrite {
    let json =
        format!(r#"{{"resourceType":"{t}","id":"{id}","meta":{{"versionId":"{version}"}}}}"#);
    ResourceWrite {
        resource_type: t.into(),
        id: id.into(),
        version,
        last_updated: T0 + version,
        deleted: false,
        json: json.into_bytes(),
        patient_key: None,
        index,
    }
}

fn deletion(t: &str, id: &str, version: i64) -> ResourceWrite {
    ResourceWrite {
        deleted: true,
        json: Vec::new(),
        ..write(t, id, version, Vec::new())
    }
}

fn expect_version(t: &str, id: &str, expected: Option<i64>) -> Precondition {
    Precondition::CurrentVersion {
        resource_type: t.into(),
        id: id.into(),
        expected,
    }
}

/// Commit `w` guarded by "the previous version is current".
async fn put(store: &dyn Store, w: ResourceWrite) -> i64 {
    let prev = if w.version == 1 {
        None
    } else {
        Some(w.version - 1)
    };
    let pre = expect_version(&w.resource_type, &w.id, prev);
    store
        .commit(WriteSet {
            preconditions: vec![pre],
            resources: vec![w],
            audit: Vec::new(),
        })
        .await
        .unwrap()
        .first_seq
}

fn tok(param: &str, system: Option<&str>, code: &str) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Token {
            system: system.map(Into::into),
            code: Some(code.into()),
            text: None,
        },
    }
}

fn tok_text(param: &str, code: &str, text: &str) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Token {
            system: None,
            code: Some(code.into()),
            text: Some(text.into()),
        },
    }
}

fn string(param: &str, normalized: &str, exact: &str) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::String {
            normalized: normalized.into(),
            exact: exact.into(),
        },
    }
}

fn date(param: &str, low: i64, high: i64) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Date { low, high },
    }
}

fn number(param: &str, value: f64) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Number { value },
    }
}

fn quantity(
    value: f64,
    system: Option<&str>,
    code: Option<&str>,
    unit: Option<&str>,
) -> IndexValue {
    IndexValue::Quantity {
        value,
        system: system.map(Into::into),
        code: code.map(Into::into),
        unit: unit.map(Into::into),
    }
}

fn reference(
    param: &str,
    target_type: Option<&str>,
    target_id: Option<&str>,
    url: &str,
) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Reference {
            target_type: target_type.map(Into::into),
            target_id: target_id.map(Into::into),
            url: url.into(),
        },
    }
}

fn uri(param: &str, u: &str) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Uri { uri: u.into() },
    }
}

/// Search-query builders, shared by this suite and the backends' plan tests.
pub mod build {
    use crate::{Clause, IndexTest, Predicate, Prefix, SearchQuery};

    /// A query over `types`, each inner vec one OR-clause, `count` per page.
    #[must_use]
    pub fn query(types: &[&str], clauses: Vec<Vec<Predicate>>, count: usize) -> SearchQuery {
        SearchQuery {
            resource_types: types.iter().map(|t| (*t).to_owned()).collect(),
            clauses: clauses
                .into_iter()
                .map(|any_of| Clause { any_of })
                .collect(),
            count,
            ..SearchQuery::default()
        }
    }

    #[must_use]
    pub fn index(param: &str, test: IndexTest) -> Predicate {
        Predicate::Index {
            param: param.into(),
            test,
        }
    }

    /// `system|code`.
    #[must_use]
    pub fn token(system: &str, code: &str) -> IndexTest {
        IndexTest::Token {
            system: Some(Some(system.into())),
            code: code.into(),
        }
    }

    /// `Patient/id`.
    #[must_use]
    pub fn patient_ref(id: &str) -> IndexTest {
        IndexTest::Reference {
            target_type: Some("Patient".into()),
            id: id.into(),
        }
    }

    #[must_use]
    pub fn date(prefix: Prefix, low: i64, high: i64) -> IndexTest {
        IndexTest::Date { prefix, low, high }
    }

    /// Print a plan when `SHOW_PLANS` is set.
    pub fn show_plan(what: &str, plan: &[String]) {
        if std::env::var_os("SHOW_PLANS").is_some() {
            eprintln!("== {what}\n{}", plan.join("\n"));
        }
    }
}

use build::index;

/// A query over `types` with each inner vec one OR-clause.
/// `code=http://loinc.org|C`.
fn loinc_code(c: &str) -> Predicate {
    Predicate::Index {
        param: "code".into(),
        test: IndexTest::Token {
            system: Some(Some("http://loinc.org".into())),
            code: c.into(),
        },
    }
}

/// Commit `writes` as one write set.
async fn commit_all(store: &dyn Store, writes: Vec<ResourceWrite>) {
    store
        .commit(WriteSet {
            resources: writes,
            ..WriteSet::default()
        })
        .await
        .unwrap();
}

fn query(types: &[&str], clauses: Vec<Vec<Predicate>>) -> SearchQuery {
    build::query(types, clauses, 1000)
}

async fn ids(store: &dyn Store, q: &SearchQuery) -> Vec<String> {
    let page = store.search(q).await.unwrap();
    let mut ids: Vec<String> = page.matches.into_iter().map(|m| m.id).collect();
    ids.sort();
    ids
}

/// Ids in the order returned.
async fn ordered(store: &dyn Store, q: &SearchQuery) -> Vec<String> {
    store
        .search(q)
        .await
        .unwrap()
        .matches
        .into_iter()
        .map(|m| m.id)
        .collect()
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

fn audit(detail: &str) -> AuditRecord {
    AuditRecord {
        recorded_at: T0,
        action: AuditAction::Read,
        outcome: AuditOutcome::Success,
        agent: Agent {
            user: Some("u1".into()),
            display: "Test User".into(),
            ..Agent::default()
        },
        patient: Some("p1".into()),
        resources: vec!["Patient/p1".into()],
        purpose: "direct-care".into(),
        channel: Channel::Rest,
        detail: Some(detail.into()),
    }
}

/// Every ledger row, checked for gapless seqs and a valid chain.
async fn verified_ledger(store: &dyn Store) -> Vec<AuditRecord> {
    let rows = store.audit_rows(0, 1_000_000).await.unwrap();
    let mut prev = GENESIS_HASH;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row.seq,
            i64::try_from(i).unwrap() + 1,
            "ledger seqs are 1.. without gaps"
        );
        assert_eq!(
            row.hash,
            chain_hash(&prev, &row.record),
            "chain breaks at {}",
            row.seq
        );
        prev = row.hash;
    }
    rows.into_iter().map(|r| r.record).collect()
}

fn is_precondition_failed<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::PreconditionFailed(_)))
}

// ---------------------------------------------------------------- checks

/// Create, read back byte-for-byte, unknown ids read as `None`.
pub async fn create_and_read(store: &dyn Store) {
    let mut w = write("Patient", "p1", 1, vec![tok("gender", None, "male")]);
    w.patient_key = Some("p1".into());
    let seq = put(store, w.clone()).await;
    assert!(seq > 0);
    let got = store.read_current("Patient", "p1").await.unwrap().unwrap();
    assert_eq!(got.resource_type, "Patient");
    assert_eq!(got.id, "p1");
    assert_eq!(got.version, 1);
    assert_eq!(got.json, w.json);
    assert_eq!(got.last_updated, w.last_updated);
    assert_eq!(got.seq, seq);
    assert_eq!(got.patient_key.as_deref(), Some("p1"));
    assert!(!got.deleted);
    assert!(
        store
            .read_current("Patient", "nope")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .read_current("Observation", "p1")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .read_version("Patient", "p1", 1)
            .await
            .unwrap()
            .unwrap(),
        got
    );
    assert!(
        store
            .read_version("Patient", "p1", 2)
            .await
            .unwrap()
            .is_none()
    );
}

/// Updates add versions; every version stays readable; seqs increase.
pub async fn versions_and_vread(store: &dyn Store) {
    let s1 = put(store, write("Patient", "p1", 1, vec![])).await;
    let s2 = put(store, write("Patient", "p1", 2, vec![])).await;
    let s3 = put(store, write("Patient", "p1", 3, vec![])).await;
    assert!(s1 < s2 && s2 < s3, "seq strictly increases: {s1} {s2} {s3}");
    let cur = store.read_current("Patient", "p1").await.unwrap().unwrap();
    assert_eq!((cur.version, cur.seq), (3, s3));
    for (v, s) in [(1, s1), (2, s2), (3, s3)] {
        let r = store
            .read_version("Patient", "p1", v)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.version, r.seq), (v, s));
        assert_eq!(r.json, write("Patient", "p1", v, vec![]).json);
    }
    // A write set with several resources: first_seq is the first write's seq.
    let receipt = store
        .commit(WriteSet {
            preconditions: vec![],
            resources: vec![
                write("Patient", "a", 1, vec![]),
                write("Patient", "b", 1, vec![]),
            ],
            audit: vec![],
        })
        .await
        .unwrap();
    let a = store.read_current("Patient", "a").await.unwrap().unwrap();
    let b = store.read_current("Patient", "b").await.unwrap().unwrap();
    assert_eq!(receipt.first_seq, a.seq);
    // Many at once: in the order asked, absent ones as None, the same
    // versions as one by one.
    let keys: Vec<(String, String)> = [
        ("Patient", "b"),
        ("Patient", "nope"),
        ("Observation", "a"),
        ("Patient", "p1"),
        ("Patient", "a"),
    ]
    .iter()
    .map(|(t, id)| ((*t).to_owned(), (*id).to_owned()))
    .collect();
    let many = store.read_current_many(&keys).await.unwrap();
    let summary: Vec<Option<(String, i64, i64)>> = many
        .iter()
        .map(|r| r.as_ref().map(|r| (r.id.clone(), r.version, r.seq)))
        .collect();
    assert_eq!(
        summary,
        vec![
            Some(("b".to_owned(), 1, b.seq)),
            None,
            None,
            Some(("p1".to_owned(), 3, s3)),
            Some(("a".to_owned(), 1, a.seq)),
        ]
    );
    assert_eq!(many[4].as_ref().map(|r| &r.json), Some(&a.json));
    assert!(store.read_current_many(&[]).await.unwrap().is_empty());
    assert!(b.seq > a.seq);
    // Writing an existing version again is a conflict, and changes nothing.
    let again = store
        .commit(WriteSet {
            resources: vec![write("Patient", "p1", 3, vec![])],
            ..WriteSet::default()
        })
        .await;
    assert!(again.is_err());
    assert_eq!(
        store
            .read_current("Patient", "p1")
            .await
            .unwrap()
            .unwrap()
            .seq,
        s3
    );
}

/// Deletion markers are versions: readable, excluded from search and count.
pub async fn delete_marker(store: &dyn Store) {
    put(
        store,
        write("Patient", "p1", 1, vec![tok("gender", None, "male")]),
    )
    .await;
    put(
        store,
        write("Patient", "p2", 1, vec![tok("gender", None, "male")]),
    )
    .await;
    put(store, deletion("Patient", "p1", 2)).await;
    let cur = store.read_current("Patient", "p1").await.unwrap().unwrap();
    assert!(cur.deleted);
    assert_eq!(cur.version, 2);
    assert!(cur.json.is_empty());
    assert!(
        !store
            .read_version("Patient", "p1", 1)
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
    let q = query(&["Patient"], vec![]);
    assert_eq!(ids(store, &q).await, sorted(&["p2"]));
    let q = query(
        &["Patient"],
        vec![vec![index(
            "gender",
            IndexTest::Token {
                system: None,
                code: "male".into(),
            },
        )]],
    );
    assert_eq!(ids(store, &q).await, sorted(&["p2"]));
    assert_eq!(store.count(Some("Patient")).await.unwrap(), 1);
    // Re-create after delete continues the version sequence.
    put(store, write("Patient", "p1", 3, vec![])).await;
    assert_eq!(store.count(Some("Patient")).await.unwrap(), 2);
    assert!(
        !store
            .read_current("Patient", "p1")
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
}

/// Newest first by seq at every scope; `since`, `before_seq` and `count`.
pub async fn history_order_since_cursor(store: &dyn Store) {
    let mut seqs = Vec::new();
    let mut w = write("Patient", "p1", 1, vec![]);
    w.last_updated = T0 + 10;
    seqs.push(("p1", 1, put(store, w).await));
    let mut w = write("Observation", "o1", 1, vec![]);
    w.last_updated = T0 + 20;
    seqs.push(("o1", 1, put(store, w).await));
    let mut w = write("Patient", "p1", 2, vec![]);
    w.last_updated = T0 + 30;
    seqs.push(("p1", 2, put(store, w).await));
    let mut w = deletion("Patient", "p1", 3);
    w.last_updated = T0 + 40;
    seqs.push(("p1", 3, put(store, w).await));
    let mut w = write("Patient", "p2", 1, vec![]);
    w.last_updated = T0 + 50;
    seqs.push(("p2", 1, put(store, w).await));

    let h = |scope: HistoryScope, since, before_seq, count| HistoryQuery {
        scope,
        since,
        before_seq,
        count,
    };
    let sys = store
        .history(&h(HistoryScope::System, None, None, 100))
        .await
        .unwrap();
    let got: Vec<(String, i64)> = sys.iter().map(|r| (r.id.clone(), r.version)).collect();
    let want: Vec<(String, i64)> = seqs
        .iter()
        .rev()
        .map(|(id, v, _)| ((*id).to_owned(), *v))
        .collect();
    assert_eq!(got, want);
    assert!(sys.windows(2).all(|w| w[0].seq > w[1].seq));
    assert!(
        sys.iter().any(|r| r.deleted),
        "history includes deletion markers"
    );

    let ty = store
        .history(&h(HistoryScope::Type("Patient".into()), None, None, 100))
        .await
        .unwrap();
    assert_eq!(ty.len(), 4);
    assert!(ty.iter().all(|r| r.resource_type == "Patient"));
    let inst = store
        .history(&h(
            HistoryScope::Instance {
                resource_type: "Patient".into(),
                id: "p1".into(),
            },
            None,
            None,
            100,
        ))
        .await
        .unwrap();
    assert_eq!(
        inst.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );

    let since = store
        .history(&h(HistoryScope::System, Some(T0 + 30), None, 100))
        .await
        .unwrap();
    assert_eq!(since.len(), 3);
    assert!(since.iter().all(|r| r.last_updated >= T0 + 30));

    // Paging by cursor: 2 + 2 + 1, no overlap, nothing missed.
    let p1 = store
        .history(&h(HistoryScope::System, None, None, 2))
        .await
        .unwrap();
    assert_eq!(p1.len(), 2);
    let p2 = store
        .history(&h(HistoryScope::System, None, Some(p1[1].seq), 2))
        .await
        .unwrap();
    let p3 = store
        .history(&h(HistoryScope::System, None, Some(p2[1].seq), 2))
        .await
        .unwrap();
    let all: Vec<i64> = p1.iter().chain(&p2).chain(&p3).map(|r| r.seq).collect();
    assert_eq!(all, sys.iter().map(|r| r.seq).collect::<Vec<_>>());
}

/// `CurrentVersion`: success when it holds; failure changes nothing.
pub async fn precondition_current_version(store: &dyn Store) {
    put(
        store,
        write("Patient", "p1", 1, vec![tok("gender", None, "male")]),
    )
    .await;
    // Wrong expected version.
    let r = store
        .commit(WriteSet {
            preconditions: vec![expect_version("Patient", "p1", Some(7))],
            resources: vec![write(
                "Patient",
                "p1",
                2,
                vec![tok("gender", None, "female")],
            )],
            audit: vec![audit("should not appear")],
        })
        .await;
    assert!(is_precondition_failed(&r), "{r:?}");
    // Expected absent but present.
    let r = store
        .commit(WriteSet {
            preconditions: vec![expect_version("Patient", "p1", None)],
            resources: vec![write("Patient", "p1", 2, vec![])],
            audit: vec![],
        })
        .await;
    assert!(is_precondition_failed(&r), "{r:?}");
    // Expected present but absent.
    let r = store
        .commit(WriteSet {
            preconditions: vec![expect_version("Patient", "zz", Some(1))],
            resources: vec![write("Patient", "zz", 2, vec![])],
            audit: vec![],
        })
        .await;
    assert!(is_precondition_failed(&r), "{r:?}");
    assert!(store.read_current("Patient", "zz").await.unwrap().is_none());
    let cur = store.read_current("Patient", "p1").await.unwrap().unwrap();
    assert_eq!(cur.version, 1);
    let female = query(
        &["Patient"],
        vec![vec![index(
            "gender",
            IndexTest::Token {
                system: None,
                code: "female".into(),
            },
        )]],
    );
    assert!(ids(store, &female).await.is_empty());
    assert!(store.audit_rows(0, 100).await.unwrap().is_empty());
    // Deleted resources still have a current version.
    put(store, deletion("Patient", "p1", 2)).await;
    put(
        store,
        write("Patient", "p1", 3, vec![tok("gender", None, "female")]),
    )
    .await;
    assert_eq!(ids(store, &female).await, sorted(&["p1"]));
}

/// `SearchMatches`: holds only when the id set is exactly as expected.
pub async fn precondition_search_matches(store: &dyn Store) {
    let nhs = |n: &str| tok("identifier", Some("https://fhir.nhs.uk/Id/nhs-number"), n);
    put(store, write("Patient", "p1", 1, vec![nhs("9000000009")])).await;
    let by_nhs = |n: &str| {
        query(
            &["Patient"],
            vec![vec![index(
                "identifier",
                IndexTest::Token {
                    system: Some(Some("https://fhir.nhs.uk/Id/nhs-number".into())),
                    code: n.into(),
                },
            )]],
        )
    };
    // Conditional create of a second patient with the same NHS number: refused.
    let r = store
        .commit(WriteSet {
            preconditions: vec![Precondition::SearchMatches {
                query: by_nhs("9000000009"),
                expected_ids: vec![],
            }],
            resources: vec![write("Patient", "p2", 1, vec![nhs("9000000009")])],
            audit: vec![],
        })
        .await;
    assert!(is_precondition_failed(&r), "{r:?}");
    assert!(store.read_current("Patient", "p2").await.unwrap().is_none());
    // Expected exactly the existing one: holds.
    store
        .commit(WriteSet {
            preconditions: vec![Precondition::SearchMatches {
                query: by_nhs("9000000009"),
                expected_ids: vec!["p1".into()],
            }],
            resources: vec![write("Patient", "p1", 2, vec![nhs("9000000009")])],
            audit: vec![],
        })
        .await
        .unwrap();
    // No match expected and none found: holds.
    store
        .commit(WriteSet {
            preconditions: vec![Precondition::SearchMatches {
                query: by_nhs("9000000017"),
                expected_ids: vec![],
            }],
            resources: vec![write("Patient", "p3", 1, vec![nhs("9000000017")])],
            audit: vec![],
        })
        .await
        .unwrap();
    // The precondition sees writes committed just before it.
    let r = store
        .commit(WriteSet {
            preconditions: vec![Precondition::SearchMatches {
                query: by_nhs("9000000017"),
                expected_ids: vec![],
            }],
            resources: vec![write("Patient", "p4", 1, vec![nhs("9000000017")])],
            audit: vec![],
        })
        .await;
    assert!(is_precondition_failed(&r), "{r:?}");
}

/// A multi-resource write set with one failing precondition writes nothing.
pub async fn write_set_is_atomic(store: &dyn Store) {
    put(store, write("Patient", "p1", 1, vec![])).await;
    let r = store
        .commit(WriteSet {
            preconditions: vec![
                expect_version("Patient", "p1", Some(1)),
                expect_version("Observation", "o1", None),
                expect_version("Patient", "p9", Some(3)),
            ],
            resources: vec![
                write("Patient", "p1", 2, vec![tok("gender", None, "male")]),
                write("Observation", "o1", 1, vec![tok("code", None, "x")]),
            ],
            audit: vec![audit("tx")],
        })
        .await;
    assert!(is_precondition_failed(&r), "{r:?}");
    assert_eq!(
        store
            .read_current("Patient", "p1")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    assert!(
        store
            .read_current("Observation", "o1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .read_version("Patient", "p1", 2)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.count(None).await.unwrap(), 1);
    assert!(store.audit_rows(0, 10).await.unwrap().is_empty());
    let all = store
        .history(&HistoryQuery {
            scope: HistoryScope::System,
            since: None,
            before_seq: None,
            count: 10,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    // The same set without the bad precondition commits wholly.
    store
        .commit(WriteSet {
            preconditions: vec![
                expect_version("Patient", "p1", Some(1)),
                expect_version("Observation", "o1", None),
            ],
            resources: vec![
                write("Patient", "p1", 2, vec![tok("gender", None, "male")]),
                write("Observation", "o1", 1, vec![tok("code", None, "x")]),
            ],
            audit: vec![audit("tx")],
        })
        .await
        .unwrap();
    assert_eq!(store.count(None).await.unwrap(), 2);
    assert_eq!(verified_ledger(store).await.len(), 1);
}

/// Index rows follow the current version: replaced on update, gone on delete.
pub async fn index_replaced_on_update_removed_on_delete(store: &dyn Store) {
    let code = |c: &str| {
        query(
            &["Observation"],
            vec![vec![index(
                "code",
                IndexTest::Token {
                    system: None,
                    code: c.into(),
                },
            )]],
        )
    };
    let q_date = query(
        &["Observation"],
        vec![vec![index(
            "date",
            IndexTest::Date {
                prefix: Prefix::Eq,
                low: 0,
                high: 1000,
            },
        )]],
    );
    put(
        store,
        write(
            "Observation",
            "o1",
            1,
            vec![tok("code", None, "a"), date("date", 10, 10)],
        ),
    )
    .await;
    assert_eq!(ids(store, &code("a")).await, sorted(&["o1"]));
    assert_eq!(ids(store, &q_date).await, sorted(&["o1"]));
    put(
        store,
        write("Observation", "o1", 2, vec![tok("code", None, "b")]),
    )
    .await;
    assert!(
        ids(store, &code("a")).await.is_empty(),
        "old token row replaced"
    );
    assert!(ids(store, &q_date).await.is_empty(), "old date row removed");
    assert_eq!(ids(store, &code("b")).await, sorted(&["o1"]));
    put(store, deletion("Observation", "o1", 3)).await;
    assert!(ids(store, &code("b")).await.is_empty());
    let missing = query(
        &["Observation"],
        vec![vec![Predicate::Missing {
            param: "code".into(),
            missing: true,
        }]],
    );
    assert!(
        ids(store, &missing).await.is_empty(),
        "deleted resources never match"
    );
}

/// Token, string, uri and reference tests; OR within and AND across clauses.
pub async fn search_token_string_uri_reference(store: &dyn Store) {
    const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";
    const SD: &str = "http://example.org/fhir/StructureDefinition";
    put(
        store,
        write(
            "Patient",
            "p1",
            1,
            vec![
                tok("identifier", Some(NHS), "9000000009"),
                tok("gender", None, "male"),
                tok_text("language", "en", "english"),
                string("name", "smith", "Smith"),
                uri("profile", &format!("{SD}/a")),
                reference(
                    "general-practitioner",
                    Some("Organization"),
                    Some("o1"),
                    "Organization/o1",
                ),
            ],
        ),
    )
    .await;
    put(
        store,
        write(
            "Patient",
            "p2",
            1,
            vec![
                tok("identifier", Some("urn:other"), "123"),
                tok("gender", None, "female"),
                string("name", "smithson", "Smithson"),
                uri("profile", &format!("{SD}/b")),
                reference(
                    "general-practitioner",
                    Some("Organization"),
                    Some("o2"),
                    "Organization/o2",
                ),
            ],
        ),
    )
    .await;
    put(
        store,
        write(
            "Patient",
            "p3",
            1,
            vec![
                tok("identifier", None, "x1"),
                tok("gender", None, "male"),
                string("name", "jones", "Jönes"),
                uri("profile", "http://example.org/fhir"),
                reference(
                    "general-practitioner",
                    Some("Organization"),
                    Some("o1"),
                    "http://other.example/fhir/Organization/o1",
                ),
            ],
        ),
    )
    .await;
    let token = |system: Option<Option<&str>>, code: &str| IndexTest::Token {
        system: system.map(|s| s.map(Into::into)),
        code: code.into(),
    };
    let cases: Vec<SearchCase> = vec![
        (
            "token any system",
            vec![vec![index("identifier", token(None, "9000000009"))]],
            vec!["p1"],
        ),
        (
            "token system|code",
            vec![vec![index(
                "identifier",
                token(Some(Some(NHS)), "9000000009"),
            )]],
            vec!["p1"],
        ),
        (
            "token wrong system",
            vec![vec![index(
                "identifier",
                token(Some(Some("urn:other")), "9000000009"),
            )]],
            vec![],
        ),
        (
            "token |code (no system)",
            vec![vec![index("identifier", token(Some(None), "x1"))]],
            vec!["p3"],
        ),
        (
            "token |code has system",
            vec![vec![index("identifier", token(Some(None), "9000000009"))]],
            vec![],
        ),
        (
            "token system|",
            vec![vec![index(
                "identifier",
                IndexTest::TokenSystem(NHS.into()),
            )]],
            vec!["p1"],
        ),
        (
            "token :text",
            vec![vec![index("language", IndexTest::TokenText("eng".into()))]],
            vec!["p1"],
        ),
        (
            "token plain",
            vec![vec![index("gender", token(None, "male"))]],
            vec!["p1", "p3"],
        ),
        (
            "string starts",
            vec![vec![index(
                "name",
                IndexTest::StringStartsWith("smith".into()),
            )]],
            vec!["p1", "p2"],
        ),
        (
            "string starts 2",
            vec![vec![index(
                "name",
                IndexTest::StringStartsWith("jon".into()),
            )]],
            vec!["p3"],
        ),
        (
            "string not a prefix",
            vec![vec![index(
                "name",
                IndexTest::StringStartsWith("mith".into()),
            )]],
            vec![],
        ),
        (
            "string exact",
            vec![vec![index(
                "name",
                IndexTest::StringExact {
                    normalized: "smith".into(),
                    exact: "Smith".into(),
                },
            )]],
            vec!["p1"],
        ),
        (
            "string exact accents",
            vec![vec![index(
                "name",
                IndexTest::StringExact {
                    normalized: "jones".into(),
                    exact: "Jönes".into(),
                },
            )]],
            vec!["p3"],
        ),
        (
            "string exact case",
            vec![vec![index(
                "name",
                IndexTest::StringExact {
                    normalized: "smith".into(),
                    exact: "smith".into(),
                },
            )]],
            vec![],
        ),
        (
            "string contains",
            vec![vec![index(
                "name",
                IndexTest::StringContains("mith".into()),
            )]],
            vec!["p1", "p2"],
        ),
        (
            "string contains 2",
            vec![vec![index("name", IndexTest::StringContains("son".into()))]],
            vec!["p2"],
        ),
        (
            "uri exact",
            vec![vec![index("profile", IndexTest::Uri(format!("{SD}/a")))]],
            vec!["p1"],
        ),
        (
            "uri below",
            vec![vec![index("profile", IndexTest::UriBelow(SD.into()))]],
            vec!["p1", "p2"],
        ),
        (
            "uri above",
            vec![vec![index(
                "profile",
                IndexTest::UriAbove(format!("{SD}/a")),
            )]],
            vec!["p1", "p3"],
        ),
        (
            "reference type/id",
            vec![vec![index(
                "general-practitioner",
                IndexTest::Reference {
                    target_type: Some("Organization".into()),
                    id: "o1".into(),
                },
            )]],
            vec!["p1", "p3"],
        ),
        (
            "reference id only",
            vec![vec![index(
                "general-practitioner",
                IndexTest::Reference {
                    target_type: None,
                    id: "o2".into(),
                },
            )]],
            vec!["p2"],
        ),
        (
            "reference wrong type",
            vec![vec![index(
                "general-practitioner",
                IndexTest::Reference {
                    target_type: Some("Practitioner".into()),
                    id: "o1".into(),
                },
            )]],
            vec![],
        ),
        (
            "reference url",
            vec![vec![index(
                "general-practitioner",
                IndexTest::ReferenceUrl("http://other.example/fhir/Organization/o1".into()),
            )]],
            vec!["p3"],
        ),
        (
            "OR within a clause",
            vec![vec![
                index("gender", token(None, "female")),
                index("identifier", token(None, "x1")),
            ]],
            vec!["p2", "p3"],
        ),
        (
            "AND across clauses",
            vec![
                vec![index("gender", token(None, "male"))],
                vec![index("name", IndexTest::StringStartsWith("smi".into()))],
            ],
            vec!["p1"],
        ),
        ("empty clause matches nothing", vec![vec![]], vec![]),
        ("no clauses matches all", vec![], vec!["p1", "p2", "p3"]),
    ];
    for (name, clauses, want) in cases {
        let q = query(&["Patient"], clauses);
        assert_eq!(ids(store, &q).await, sorted(&want), "case: {name}");
    }

    // Long string values (a ValueSet's description, a pasted letter) are
    // stored and found by prefix, exactly and by a word near their end.
    // PostgreSQL refuses a B-tree entry over 2,704 bytes, so an index of
    // whole values failed such writes; these are 12,000 characters that
    // barely compress. The twin shares all but its last words, so a test
    // that looked at a leading key alone would find both.
    let mut state = 0x2545_f491_u32;
    let mut words = Vec::new();
    for _ in 0..1_500 {
        let mut word = String::new();
        for _ in 0..7 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            word.push(char::from(
                b'a' + u8::try_from((state >> 16) % 26).unwrap_or(0),
            ));
        }
        words.push(word);
    }
    let body = words.join(" ");
    let long = format!("Long {body} closing");
    let twin = format!("Long {body} different");
    for (id, exact) in [("vs-long", &long), ("vs-twin", &twin)] {
        put(
            store,
            write(
                "ValueSet",
                id,
                1,
                vec![string("description", &exact.to_lowercase(), exact)],
            ),
        )
        .await;
    }
    let normalized = long.to_lowercase();
    let cases = [
        (
            "long string exact",
            IndexTest::StringExact {
                normalized: normalized.clone(),
                exact: long.clone(),
            },
            vec!["vs-long"],
        ),
        (
            "long string exact, differing only in case",
            IndexTest::StringExact {
                normalized: normalized.clone(),
                exact: normalized.clone(),
            },
            vec![],
        ),
        (
            "short prefix of both",
            IndexTest::StringStartsWith(normalized[..40].to_owned()),
            vec!["vs-long", "vs-twin"],
        ),
        (
            "prefix longer than any index key",
            IndexTest::StringStartsWith(normalized[..normalized.len() - 3].to_owned()),
            vec!["vs-long"],
        ),
        (
            "word at the end",
            IndexTest::StringContains("closing".to_owned()),
            vec!["vs-long"],
        ),
    ];
    for (name, test, want) in cases {
        let q = query(&["ValueSet"], vec![vec![index("description", test)]]);
        assert_eq!(ids(store, &q).await, sorted(&want), "case: {name}");
    }
}

/// Every date prefix against stored ranges (FHIR search §3.1.1.4.1).
pub async fn search_date_prefixes(store: &dyn Store) {
    // Search value range is [100, 199].
    let stored = [
        ("a", 100, 199), // equal
        ("b", 150, 150), // inside
        ("c", 300, 399), // after
        ("d", 50, 120),  // overlaps the start
        ("e", 200, 200), // just after
        ("f", 10, 20),   // before
    ];
    for (id, lo, hi) in stored {
        put(
            store,
            write("Observation", id, 1, vec![date("date", lo, hi)]),
        )
        .await;
    }
    let cases = [
        (Prefix::Eq, vec!["a", "b"]),
        (Prefix::Ne, vec!["c", "d", "e", "f"]),
        (Prefix::Gt, vec!["c", "e"]),
        (Prefix::Lt, vec!["d", "f"]),
        (Prefix::Ge, vec!["a", "b", "c", "e"]),
        (Prefix::Le, vec!["a", "b", "d", "f"]),
        (Prefix::Sa, vec!["c", "e"]),
        (Prefix::Eb, vec!["f"]),
    ];
    for (prefix, want) in cases {
        let q = query(
            &["Observation"],
            vec![vec![index(
                "date",
                IndexTest::Date {
                    prefix,
                    low: 100,
                    high: 199,
                },
            )]],
        );
        assert_eq!(ids(store, &q).await, sorted(&want), "prefix {prefix:?}");
    }
    // `ap`: within about 10% of the distance from now.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let day = 86_400_000_000_i64;
    let target = now - 1000 * day;
    put(
        store,
        write(
            "Observation",
            "near",
            1,
            vec![date("date", target - 50 * day, target - 50 * day)],
        ),
    )
    .await;
    put(
        store,
        write(
            "Observation",
            "far",
            1,
            vec![date("date", target - 300 * day, target - 300 * day)],
        ),
    )
    .await;
    let q = query(
        &["Observation"],
        vec![vec![index(
            "date",
            IndexTest::Date {
                prefix: Prefix::Ap,
                low: target,
                high: target + day - 1,
            },
        )]],
    );
    assert_eq!(ids(store, &q).await, sorted(&["near"]), "prefix ap");

    // Open-ended ranges are stored with i64::MIN / i64::MAX: writing them
    // and a closed window over them (`date=ge…&date=lt…`, which drives from
    // the long-range index) must not overflow (PostgreSQL raises an error
    // where SQLite goes to floating point). The window finds exactly what
    // both of its halves find.
    for (id, lo, hi) in [
        ("open-start", i64::MIN, 150),
        ("open-end", 150, i64::MAX),
        ("open-both", i64::MIN, i64::MAX),
    ] {
        put(
            store,
            write("Observation", id, 1, vec![date("date", lo, hi)]),
        )
        .await;
    }
    let half = |prefix, at| {
        vec![index(
            "date",
            IndexTest::Date {
                prefix,
                low: at,
                high: at,
            },
        )]
    };
    let from = half(Prefix::Ge, 100);
    let to = half(Prefix::Lt, 199);
    let window = ids(
        store,
        &query(&["Observation"], vec![from.clone(), to.clone()]),
    )
    .await;
    let mut both: Vec<String> = ids(store, &query(&["Observation"], vec![from])).await;
    let to_ids = ids(store, &query(&["Observation"], vec![to])).await;
    both.retain(|id| to_ids.contains(id));
    assert_eq!(window, both, "window = intersection of its halves");
    for open in ["open-start", "open-end", "open-both"] {
        assert!(window.iter().any(|id| id == open), "{open} in {window:?}");
    }
}

/// Number and quantity prefixes with implicit precision ranges.
pub async fn search_number_quantity_prefixes(store: &dyn Store) {
    for (id, v) in [
        ("n1", 100.0),
        ("n2", 100.4),
        ("n3", 99.0),
        ("n4", 150.0),
        ("n5", -5.0),
    ] {
        put(
            store,
            write("RiskAssessment", id, 1, vec![number("probability", v)]),
        )
        .await;
    }
    // Search value 100 has the implicit range [99.5, 100.5].
    let cases = [
        (Prefix::Eq, vec!["n1", "n2"]),
        (Prefix::Ne, vec!["n3", "n4", "n5"]),
        (Prefix::Gt, vec!["n2", "n4"]),
        (Prefix::Lt, vec!["n3", "n5"]),
        (Prefix::Ge, vec!["n1", "n2", "n4"]),
        (Prefix::Le, vec!["n1", "n3", "n5"]),
        (Prefix::Sa, vec!["n4"]),
        (Prefix::Eb, vec!["n3", "n5"]),
        (Prefix::Ap, vec!["n1", "n2", "n3"]),
    ];
    for (prefix, want) in cases {
        let q = query(
            &["RiskAssessment"],
            vec![vec![index(
                "probability",
                IndexTest::Number {
                    prefix,
                    value: 100.0,
                    low: 99.5,
                    high: 100.5,
                },
            )]],
        );
        assert_eq!(
            ids(store, &q).await,
            sorted(&want),
            "number prefix {prefix:?}"
        );
    }
    const UCUM: &str = "http://unitsofmeasure.org";
    let q_entry = |v: IndexValue| IndexEntry {
        param: "value-quantity".into(),
        value: v,
    };
    put(
        store,
        write(
            "Observation",
            "q1",
            1,
            vec![q_entry(quantity(
                5.4,
                Some(UCUM),
                Some("mg/dL"),
                Some("mg/dL"),
            ))],
        ),
    )
    .await;
    put(
        store,
        write(
            "Observation",
            "q2",
            1,
            vec![q_entry(quantity(5.4, Some(UCUM), Some("mmol/L"), None))],
        ),
    )
    .await;
    put(
        store,
        write(
            "Observation",
            "q3",
            1,
            vec![q_entry(quantity(7.0, None, None, Some("mg")))],
        ),
    )
    .await;
    let qty = |prefix, value: f64, low, high, system: Option<&str>, code: Option<&str>| {
        query(
            &["Observation"],
            vec![vec![index(
                "value-quantity",
                IndexTest::Quantity {
                    prefix,
                    value,
                    low,
                    high,
                    system: system.map(Into::into),
                    code: code.map(Into::into),
                },
            )]],
        )
    };
    let cases = [
        (
            "eq any unit",
            qty(Prefix::Eq, 5.4, 5.35, 5.45, None, None),
            vec!["q1", "q2"],
        ),
        (
            "eq system|code",
            qty(Prefix::Eq, 5.4, 5.35, 5.45, Some(UCUM), Some("mg/dL")),
            vec!["q1"],
        ),
        (
            "code matches unit",
            qty(Prefix::Eq, 7.0, 6.5, 7.5, None, Some("mg")),
            vec!["q3"],
        ),
        (
            "gt",
            qty(Prefix::Gt, 5.0, 4.5, 5.5, None, None),
            vec!["q1", "q2", "q3"],
        ),
        (
            "lt with code",
            qty(Prefix::Lt, 6.0, 5.5, 6.5, Some(UCUM), Some("mmol/L")),
            vec!["q2"],
        ),
    ];
    for (name, q, want) in cases {
        assert_eq!(ids(store, &q).await, sorted(&want), "quantity: {name}");
    }
}

/// `:missing`, `:not`, chained and reverse-chained (`_has`) searches, composites.
pub async fn search_missing_not_chain_has_composite(store: &dyn Store) {
    put(
        store,
        write(
            "Organization",
            "o1",
            1,
            vec![string("name", "general hospital", "General Hospital")],
        ),
    )
    .await;
    put(
        store,
        write(
            "Organization",
            "o2",
            1,
            vec![string("name", "village surgery", "Village Surgery")],
        ),
    )
    .await;
    let gp = |id: &str| {
        reference(
            "general-practitioner",
            Some("Organization"),
            Some(id),
            &format!("Organization/{id}"),
        )
    };
    put(
        store,
        write(
            "Patient",
            "p1",
            1,
            vec![gp("o1"), tok("gender", None, "male")],
        ),
    )
    .await;
    put(
        store,
        write(
            "Patient",
            "p2",
            1,
            vec![gp("o2"), tok("gender", None, "female")],
        ),
    )
    .await;
    put(store, write("Patient", "p3", 1, vec![])).await;

    let missing = |m| {
        query(
            &["Patient"],
            vec![vec![Predicate::Missing {
                param: "general-practitioner".into(),
                missing: m,
            }]],
        )
    };
    assert_eq!(ids(store, &missing(true)).await, sorted(&["p3"]));
    assert_eq!(ids(store, &missing(false)).await, sorted(&["p1", "p2"]));

    let not_female = query(
        &["Patient"],
        vec![vec![Predicate::Not {
            param: "gender".into(),
            test: IndexTest::Token {
                system: None,
                code: "female".into(),
            },
        }]],
    );
    assert_eq!(
        ids(store, &not_female).await,
        sorted(&["p1", "p3"]),
        ":not includes resources without a value"
    );

    let chain = query(
        &["Patient"],
        vec![vec![Predicate::Chain {
            param: "general-practitioner".into(),
            target_type: "Organization".into(),
            query: Box::new(query(
                &["Organization"],
                vec![vec![index(
                    "name",
                    IndexTest::StringStartsWith("general".into()),
                )]],
            )),
        }]],
    );
    assert_eq!(ids(store, &chain).await, sorted(&["p1"]));

    let has = query(
        &["Organization"],
        vec![vec![Predicate::Has {
            source_type: "Patient".into(),
            param: "general-practitioner".into(),
            query: Box::new(query(
                &["Patient"],
                vec![vec![index(
                    "gender",
                    IndexTest::Token {
                        system: None,
                        code: "female".into(),
                    },
                )]],
            )),
        }]],
    );
    assert_eq!(ids(store, &has).await, sorted(&["o2"]));

    // A chain through a deleted target no longer matches.
    put(store, deletion("Organization", "o1", 2)).await;
    assert!(ids(store, &chain).await.is_empty());

    // Composites: component values must come from the same combination.
    const LOINC: &str = "http://loinc.org";
    let combo = |code: &str, v: f64| IndexEntry {
        param: "code-value-quantity".into(),
        value: IndexValue::Composite {
            parts: vec![
                IndexValue::Token {
                    system: Some(LOINC.into()),
                    code: Some(code.into()),
                    text: None,
                },
                quantity(v, None, None, None),
            ],
        },
    };
    put(
        store,
        write(
            "Observation",
            "obs1",
            1,
            vec![combo("1234", 5.0), combo("999", 10.0)],
        ),
    )
    .await;
    put(
        store,
        write("Observation", "obs2", 1, vec![combo("1234", 10.0)]),
    )
    .await;
    let composite = |code: &str, prefix, v: f64| {
        query(
            &["Observation"],
            vec![vec![index(
                "code-value-quantity",
                IndexTest::Composite(vec![
                    IndexTest::Token {
                        system: Some(Some(LOINC.into())),
                        code: code.into(),
                    },
                    IndexTest::Quantity {
                        prefix,
                        value: v,
                        low: v - 0.5,
                        high: v + 0.5,
                        system: None,
                        code: None,
                    },
                ]),
            )]],
        )
    };
    assert_eq!(
        ids(store, &composite("1234", Prefix::Gt, 7.0)).await,
        sorted(&["obs2"])
    );
    assert_eq!(
        ids(store, &composite("1234", Prefix::Eq, 5.0)).await,
        sorted(&["obs1"])
    );
    assert_eq!(
        ids(store, &composite("999", Prefix::Lt, 7.0)).await,
        Vec::<String>::new()
    );
    let missing_combo = query(
        &["Observation"],
        vec![vec![Predicate::Missing {
            param: "code-value-quantity".into(),
            missing: false,
        }]],
    );
    assert_eq!(ids(store, &missing_combo).await, sorted(&["obs1", "obs2"]));
}

/// `_type` (one, several, all), `_id`, the patient compartment, `_lastUpdated`.
pub async fn search_types_id_patient_last_updated(store: &dyn Store) {
    let mut w = write("Patient", "p1", 1, vec![]);
    w.patient_key = Some("p1".into());
    w.last_updated = 1_000;
    put(store, w).await;
    let mut w = write("Observation", "obs1", 1, vec![]);
    w.patient_key = Some("p1".into());
    w.last_updated = 2_000;
    put(store, w).await;
    let mut w = write("Condition", "cond1", 1, vec![]);
    w.patient_key = Some("p1".into());
    w.last_updated = 3_000;
    put(store, w).await;
    let mut w = write("Observation", "obs2", 1, vec![]);
    w.patient_key = Some("p2".into());
    w.last_updated = 4_000;
    put(store, w).await;
    put(store, write("Organization", "org1", 1, vec![])).await;

    let pk = || vec![vec![Predicate::PatientKey("p1".into())]];
    assert_eq!(
        ids(store, &query(&[], pk())).await,
        sorted(&["p1", "obs1", "cond1"])
    );
    assert_eq!(
        ids(store, &query(&["Observation"], pk())).await,
        sorted(&["obs1"])
    );
    assert_eq!(
        ids(store, &query(&["Observation", "Condition"], pk())).await,
        sorted(&["obs1", "cond1"])
    );
    assert_eq!(ids(store, &query(&[], vec![])).await.len(), 5);
    assert_eq!(
        ids(store, &query(&[], vec![vec![Predicate::Id("obs2".into())]])).await,
        sorted(&["obs2"])
    );
    assert_eq!(
        ids(
            store,
            &query(&["Patient"], vec![vec![Predicate::Id("obs2".into())]])
        )
        .await,
        Vec::<String>::new()
    );
    // `_id:not`: alone (it drives), and as a probe beside a clause that
    // drives; each excluded id is a clause of its own.
    let not_ids = |list: &[&str]| {
        list.iter()
            .map(|id| vec![Predicate::NotId((*id).to_owned())])
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store, &query(&["Observation"], not_ids(&["obs2"]))).await,
        sorted(&["obs1"])
    );
    assert_eq!(
        ids(store, &query(&[], not_ids(&["obs1", "obs2", "nope"])))
            .await
            .len(),
        3
    );
    let mut beside = pk();
    beside.extend(not_ids(&["obs1"]));
    assert_eq!(
        ids(store, &query(&["Observation", "Condition"], beside)).await,
        sorted(&["cond1"])
    );
    // Several ids: a disjunction, alone (across types or of one type) and
    // beside another clause; an id that is not there matches nothing.
    let several = |list: &[&str]| {
        list.iter()
            .map(|id| Predicate::Id((*id).to_owned()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store, &query(&[], vec![several(&["obs2", "p1", "nope"])])).await,
        sorted(&["obs2", "p1"])
    );
    assert_eq!(
        ids(
            store,
            &query(&["Observation"], vec![several(&["obs1", "obs2", "p1"])])
        )
        .await,
        sorted(&["obs1", "obs2"])
    );
    assert_eq!(
        ids(
            store,
            &query(
                &["Observation", "Condition"],
                vec![several(&["obs1", "obs2", "cond1"]), pk().remove(0)]
            )
        )
        .await,
        sorted(&["obs1", "cond1"])
    );
    let lu = |prefix, low, high| {
        query(
            &["Observation", "Condition", "Patient"],
            vec![vec![Predicate::LastUpdated { prefix, low, high }]],
        )
    };
    assert_eq!(
        ids(store, &lu(Prefix::Gt, 2_000, 2_999)).await,
        sorted(&["cond1", "obs2"])
    );
    assert_eq!(
        ids(store, &lu(Prefix::Ge, 2_000, 2_999)).await,
        sorted(&["obs1", "cond1", "obs2"])
    );
    assert_eq!(
        ids(store, &lu(Prefix::Lt, 2_000, 2_999)).await,
        sorted(&["p1"])
    );
    assert_eq!(
        ids(store, &lu(Prefix::Eq, 2_000, 2_999)).await,
        sorted(&["obs1"])
    );
    // The match carries its body and patient key.
    let page = store
        .search(&query(
            &["Observation"],
            vec![vec![Predicate::Id("obs1".into())]],
        ))
        .await
        .unwrap();
    assert_eq!(
        page.matches[0].json,
        write("Observation", "obs1", 1, vec![]).json
    );
    assert_eq!(page.matches[0].patient_key.as_deref(), Some("p1"));
}

/// `_sort` by string, date (asc on low, desc on high), token, id and
/// `_lastUpdated`; missing values last; ties broken by id.
pub async fn sort_by_param(store: &dyn Store) {
    let people: [Person; 5] = [
        ("a", Some("young"), Some((300, 300)), 5),
        ("b", Some("adams"), Some((100, 199)), 4),
        ("c", Some("brown"), Some((150, 250)), 3),
        ("d", None, Some((120, 120)), 2),
        ("e", Some("adams"), None, 1),
    ];
    for (id, name, birth, lu) in people {
        let mut index = Vec::new();
        if let Some(n) = name {
            index.push(string("family", n, n));
        }
        if let Some((lo, hi)) = birth {
            index.push(date("birthdate", lo, hi));
        }
        let mut w = write("Patient", id, 1, index);
        w.last_updated = lu;
        put(store, w).await;
    }
    let sorted_by = |sort: Vec<SortKey>| SearchQuery {
        sort,
        ..query(&["Patient"], vec![])
    };
    let param = |p: &str, descending| SortKey::Param {
        param: p.into(),
        descending,
    };
    assert_eq!(
        ordered(store, &sorted_by(vec![param("family", false)])).await,
        ["b", "e", "c", "a", "d"]
    );
    assert_eq!(
        ordered(store, &sorted_by(vec![param("family", true)])).await,
        ["a", "c", "b", "e", "d"]
    );
    assert_eq!(
        ordered(store, &sorted_by(vec![param("birthdate", false)])).await,
        ["b", "d", "c", "a", "e"]
    );
    assert_eq!(
        ordered(store, &sorted_by(vec![param("birthdate", true)])).await,
        ["a", "c", "b", "d", "e"]
    );
    assert_eq!(
        ordered(
            store,
            &sorted_by(vec![param("family", false), param("birthdate", true)])
        )
        .await,
        ["b", "e", "c", "a", "d"]
    );
    assert_eq!(
        ordered(store, &sorted_by(vec![SortKey::Id { descending: true }])).await,
        ["e", "d", "c", "b", "a"]
    );
    assert_eq!(
        ordered(
            store,
            &sorted_by(vec![SortKey::LastUpdated { descending: false }])
        )
        .await,
        ["e", "d", "c", "b", "a"]
    );
    // Paging over a sort.
    let mut q = sorted_by(vec![param("family", false)]);
    q.count = 2;
    q.offset = 2;
    assert_eq!(ordered(store, &q).await, ["c", "a"]);
}

/// `count`/`offset` paging, totals, and a snapshot that keeps later pages
/// stable while new resources are written.
pub async fn paging_snapshot_total(store: &dyn Store) {
    for i in 0..10 {
        put(
            store,
            write(
                "Patient",
                &format!("p{i:02}"),
                1,
                vec![tok("active", None, "true")],
            ),
        )
        .await;
    }
    put(
        store,
        write("Patient", "x", 1, vec![tok("active", None, "false")]),
    )
    .await;
    let base = SearchQuery {
        count: 4,
        total: TotalMode::Accurate,
        sort: vec![SortKey::Id { descending: false }],
        ..query(
            &["Patient"],
            vec![vec![index(
                "active",
                IndexTest::Token {
                    system: None,
                    code: "true".into(),
                },
            )]],
        )
    };
    let first = store.search(&base).await.unwrap();
    assert_eq!(first.total, Some(10));
    assert_eq!(first.matches.len(), 4);
    let snapshot = first.snapshot_seq;
    assert!(snapshot > 0);
    // Concurrent writers add matches that sort first and last.
    put(
        store,
        write("Patient", "p00a", 1, vec![tok("active", None, "true")]),
    )
    .await;
    put(
        store,
        write("Patient", "p99", 1, vec![tok("active", None, "true")]),
    )
    .await;
    let mut seen: Vec<String> = first.matches.iter().map(|m| m.id.clone()).collect();
    for page in 1..3 {
        let q = SearchQuery {
            offset: page * 4,
            snapshot_seq: Some(snapshot),
            ..base.clone()
        };
        let p = store.search(&q).await.unwrap();
        assert_eq!(p.total, Some(10), "total is pinned to the snapshot");
        assert_eq!(p.snapshot_seq, snapshot);
        seen.extend(p.matches.into_iter().map(|m| m.id));
    }
    let want: Vec<String> = (0..10).map(|i| format!("p{i:02}")).collect();
    assert_eq!(seen, want, "pages under a snapshot neither repeat nor skip");
    // Without a snapshot the new matches are visible.
    let now = store.search(&base).await.unwrap();
    assert_eq!(now.total, Some(12));
    assert!(now.snapshot_seq > snapshot);
    // Estimate is allowed to be exact; None gives no total.
    let est = store
        .search(&SearchQuery {
            total: TotalMode::Estimate,
            ..base.clone()
        })
        .await
        .unwrap();
    assert!(est.total.is_some());
    let none = store
        .search(&SearchQuery {
            total: TotalMode::None,
            ..base.clone()
        })
        .await
        .unwrap();
    assert_eq!(none.total, None);
    // A count of 0 returns no matches but still the total.
    let zero = store
        .search(&SearchQuery { count: 0, ..base })
        .await
        .unwrap();
    assert!(zero.matches.is_empty());
    assert_eq!(zero.total, Some(12));
}

/// Appends are durable, ordered, gapless and hash-chained; paging works.
pub async fn audit_chain(store: &dyn Store) {
    store
        .append_audit(vec![audit("1"), audit("2")])
        .await
        .unwrap();
    store.append_audit(vec![]).await.unwrap();
    store.append_audit(vec![audit("3")]).await.unwrap();
    store
        .commit(WriteSet {
            preconditions: vec![],
            resources: vec![write("Patient", "p1", 1, vec![])],
            audit: vec![audit("4")],
        })
        .await
        .unwrap();
    store.append_audit(vec![audit("5")]).await.unwrap();
    let records = verified_ledger(store).await;
    let details: Vec<&str> = records.iter().filter_map(|r| r.detail.as_deref()).collect();
    assert_eq!(details, ["1", "2", "3", "4", "5"]);
    assert_eq!(records[0], audit("1"), "records round-trip exactly");
    let page = store.audit_rows(2, 2).await.unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert!(store.audit_rows(5, 10).await.unwrap().is_empty());
}

/// Audit entries of a write set commit with it or not at all, and a failed
/// write set does not disturb the chain for the next one.
pub async fn audit_atomic_with_writes(store: &dyn Store) {
    put(store, write("Patient", "p1", 1, vec![])).await;
    let failing = || WriteSet {
        preconditions: vec![expect_version("Patient", "p1", Some(5))],
        resources: vec![write("Patient", "p1", 2, vec![])],
        audit: vec![audit("failed"), audit("failed too")],
    };
    let ok = |d: &str| WriteSet {
        preconditions: vec![],
        resources: vec![],
        audit: vec![audit(d)],
    };
    // Submitted together so a batching backend puts them in one transaction.
    let results = futures::future::join_all(vec![
        store.commit(ok("a")),
        store.commit(failing()),
        store.commit(ok("b")),
        store.commit(failing()),
        store.commit(ok("c")),
    ])
    .await;
    assert!(results[0].is_ok() && results[2].is_ok() && results[4].is_ok());
    assert!(is_precondition_failed(&results[1]) && is_precondition_failed(&results[3]));
    let records = verified_ledger(store).await;
    let mut details: Vec<&str> = records.iter().filter_map(|r| r.detail.as_deref()).collect();
    details.sort_unstable();
    assert_eq!(details, ["a", "b", "c"]);
    store.append_audit(vec![audit("d")]).await.unwrap();
    assert_eq!(verified_ledger(store).await.len(), 4);
}

/// Concurrent read-modify-write cycles guarded by `CurrentVersion` lose no
/// update; concurrent creates of one id produce exactly one winner.
pub async fn concurrent_commits_no_lost_updates(store: &dyn Store) {
    put(store, write("Basic", "counter", 1, vec![])).await;
    let workers = 16;
    let increment = |worker: usize| async move {
        let mut conflicts = 0_u32;
        loop {
            let cur = store
                .read_current("Basic", "counter")
                .await
                .unwrap()
                .unwrap();
            let r = store
                .commit(WriteSet {
                    preconditions: vec![expect_version("Basic", "counter", Some(cur.version))],
                    resources: vec![write("Basic", "counter", cur.version + 1, vec![])],
                    audit: vec![audit(&format!("w{worker}"))],
                })
                .await;
            match r {
                Ok(_) => return conflicts,
                Err(StoreError::PreconditionFailed(_)) => conflicts += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
            assert!(conflicts < 1000, "livelock");
        }
    };
    futures::future::join_all((0..workers).map(increment)).await;
    let cur = store
        .read_current("Basic", "counter")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cur.version,
        i64::try_from(workers).unwrap() + 1,
        "every increment landed once"
    );
    let hist = store
        .history(&HistoryQuery {
            scope: HistoryScope::Instance {
                resource_type: "Basic".into(),
                id: "counter".into(),
            },
            since: None,
            before_seq: None,
            count: 1000,
        })
        .await
        .unwrap();
    let versions: Vec<i64> = hist.iter().map(|r| r.version).collect();
    let want: Vec<i64> = (1..=i64::try_from(workers).unwrap() + 1).rev().collect();
    assert_eq!(versions, want);
    assert_eq!(verified_ledger(store).await.len(), workers);

    let create = |i: usize| async move {
        let mut w = write("Basic", "once", 1, vec![]);
        w.json = format!("{{\"attempt\":{i}}}").into_bytes();
        store
            .commit(WriteSet {
                preconditions: vec![expect_version("Basic", "once", None)],
                resources: vec![w],
                audit: vec![],
            })
            .await
    };
    let results = futures::future::join_all((0..10).map(create)).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(is_precondition_failed)
    );
}

/// Many point reads at once (as a busy server makes them, which a backend
/// may coalesce) each get their own key's answer: the right resource,
/// nothing for a missing key, the marker for a deleted one, whatever else
/// is asked beside them. A read made after a commit was acknowledged sees
/// that commit, with reads of other keys in flight around it.
pub async fn concurrent_reads_get_their_own_answers(store: &dyn Store) {
    // Resource `r{i}` is a Patient for even `i`, an Observation for odd.
    let type_of = |i: usize| {
        if i.is_multiple_of(2) {
            "Patient"
        } else {
            "Observation"
        }
    };
    for i in 0..24 {
        put(store, write(type_of(i), &format!("r{i}"), 1, vec![])).await;
    }
    put(store, write("Patient", "gone", 1, vec![])).await;
    put(store, deletion("Patient", "gone", 2)).await;
    // Existing keys (each asked several times), missing ids, an existing id
    // under the wrong type, and the deleted resource.
    let keys: Vec<(String, String)> = (0..240)
        .map(|n| match n % 6 {
            0 => ("Patient".to_owned(), format!("missing{n}")),
            1 => ("Encounter".to_owned(), format!("r{}", n % 24)),
            2 => ("Patient".to_owned(), "gone".to_owned()),
            _ => (type_of(n % 24).to_owned(), format!("r{}", n % 24)),
        })
        .collect();
    let reads = keys.iter().map(|(t, id)| store.read_current(t, id));
    let answers = futures::future::join_all(reads).await;
    for ((t, id), answer) in keys.iter().zip(answers) {
        let answer = answer.unwrap();
        match (t.as_str(), id.as_str()) {
            (_, "gone") => {
                let marker = answer.expect("the deleted resource's marker");
                assert!(marker.deleted && marker.version == 2, "{t}/{id}");
            }
            ("Encounter", _) => assert!(answer.is_none(), "{t}/{id}"),
            (_, i) if i.starts_with("missing") => assert!(answer.is_none(), "{t}/{id}"),
            _ => {
                let found = answer.unwrap_or_else(|| panic!("{t}/{id} not found"));
                assert_eq!(
                    (found.resource_type.as_str(), found.id.as_str()),
                    (t.as_str(), id.as_str())
                );
                assert_eq!(found.json, write(t, id, 1, vec![]).json);
            }
        }
    }

    // A read made right after each acknowledged commit, among reads of
    // other keys, sees that commit.
    put(store, write("Basic", "moving", 1, vec![])).await;
    for v in 2..=12 {
        put(store, write("Basic", "moving", v, vec![])).await;
        let others = (0..8).map(|n| {
            let i = (v as usize * 8 + n) % 24;
            let id = format!("r{i}");
            async move { (store.read_current(type_of(i), &id).await, id) }
        });
        let (seen, others) = futures::future::join(
            store.read_current("Basic", "moving"),
            futures::future::join_all(others),
        )
        .await;
        assert_eq!(
            seen.unwrap().unwrap().version,
            v,
            "a read after an acknowledged commit sees it"
        );
        for (found, id) in others {
            assert_eq!(found.unwrap().unwrap().id, id);
        }
    }
}

/// Many concurrent appends still form one gapless valid chain.
pub async fn concurrent_audit_appends(store: &dyn Store) {
    let appends = (0..64)
        .map(|i| store.append_audit(vec![audit(&format!("{i}-a")), audit(&format!("{i}-b"))]));
    for r in futures::future::join_all(appends).await {
        r.unwrap();
    }
    let records = verified_ledger(store).await;
    assert_eq!(records.len(), 128);
    // Entries of one append stay adjacent and in order.
    for pair in records.chunks(2) {
        let a = pair[0].detail.clone().unwrap();
        let b = pair[1].detail.clone().unwrap();
        assert_eq!(a.trim_end_matches("-a"), b.trim_end_matches("-b"));
    }
}

/// A write set that fails while writing (here: a version that already exists,
/// with no precondition to catch it first) fails alone; write sets and audit
/// appends submitted alongside it commit, and the chain stays whole.
pub async fn failed_write_does_not_disturb_others(store: &dyn Store) {
    put(store, write("Patient", "p1", 1, vec![])).await;
    let with_audit = |w: ResourceWrite, d: &str| WriteSet {
        preconditions: vec![],
        resources: vec![w],
        audit: vec![audit(d)],
    };
    let results = futures::future::join_all(vec![
        store.commit(with_audit(
            write("Patient", "a", 1, vec![tok("gender", None, "male")]),
            "a",
        )),
        store.commit(WriteSet {
            preconditions: vec![],
            resources: vec![
                write("Patient", "b0", 1, vec![]),
                write("Patient", "p1", 1, vec![]),
            ],
            audit: vec![audit("dup")],
        }),
        store.commit(with_audit(write("Patient", "b", 1, vec![]), "b")),
    ])
    .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[1].is_err());
    assert!(results[2].is_ok(), "{:?}", results[2]);
    store.append_audit(vec![audit("c")]).await.unwrap();
    assert!(store.read_current("Patient", "a").await.unwrap().is_some());
    assert!(store.read_current("Patient", "b").await.unwrap().is_some());
    assert!(
        store.read_current("Patient", "b0").await.unwrap().is_none(),
        "all of the failed set is undone"
    );
    let q = query(
        &["Patient"],
        vec![vec![index(
            "gender",
            IndexTest::Token {
                system: None,
                code: "male".into(),
            },
        )]],
    );
    assert_eq!(ids(store, &q).await, sorted(&["a"]));
    let records = verified_ledger(store).await;
    let mut details: Vec<&str> = records.iter().filter_map(|r| r.detail.as_deref()).collect();
    details.sort_unstable();
    assert_eq!(details, ["a", "b", "c"]);
}

/// `count` by type and overall, excluding deleted resources.
pub async fn count_by_type(store: &dyn Store) {
    assert_eq!(store.count(None).await.unwrap(), 0);
    assert_eq!(store.count(Some("Patient")).await.unwrap(), 0);
    put(store, write("Patient", "p1", 1, vec![])).await;
    put(store, write("Patient", "p2", 1, vec![])).await;
    put(store, write("Patient", "p2", 2, vec![])).await;
    put(store, write("Observation", "o1", 1, vec![])).await;
    put(store, write("Observation", "o2", 1, vec![])).await;
    put(store, deletion("Observation", "o2", 2)).await;
    assert_eq!(store.count(Some("Patient")).await.unwrap(), 2);
    assert_eq!(store.count(Some("Observation")).await.unwrap(), 1);
    assert_eq!(store.count(Some("Condition")).await.unwrap(), 0);
    assert_eq!(store.count(None).await.unwrap(), 3);
}

// ---------------------------------------------------------------- audit queries

/// An audit record with the fields the ledger's filters look at.
#[allow(clippy::too_many_arguments)]
fn audit_of(
    at: i64,
    action: AuditAction,
    outcome: AuditOutcome,
    user: Option<&str>,
    org: Option<&str>,
    client: Option<&str>,
    patient: Option<&str>,
    purpose: &str,
) -> AuditRecord {
    AuditRecord {
        recorded_at: at,
        action,
        outcome,
        agent: Agent {
            user: user.map(str::to_owned),
            org: org.map(str::to_owned),
            client: client.map(str::to_owned),
            display: "agent".into(),
            ..Agent::default()
        },
        patient: patient.map(str::to_owned),
        resources: vec![],
        purpose: purpose.into(),
        channel: Channel::Rest,
        detail: None,
    }
}

async fn seqs(store: &dyn Store, q: AuditQuery) -> Vec<i64> {
    store
        .audit_search(&q)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

/// `audit_search` filters by patient, org, agent (user or client), action,
/// outcome, time range and break-glass; newest first; paging by
/// `before_seq`; rows come back exactly as appended (whether the entry was
/// appended alone or inside a write set).
pub async fn audit_search_filters(store: &dyn Store) {
    use AuditAction::{BreakGlassStart, Create, Read, Search};
    let denied = || AuditOutcome::Denied("no relationship".into());
    let entries = [
        // 1..=6
        audit_of(
            100,
            Read,
            AuditOutcome::Success,
            Some("u1"),
            Some("A1"),
            None,
            Some("p1"),
            "TREAT",
        ),
        audit_of(
            200,
            Search,
            AuditOutcome::Success,
            Some("u1"),
            Some("A1"),
            None,
            Some("p2"),
            "TREAT",
        ),
        audit_of(
            300,
            Read,
            denied(),
            Some("u2"),
            Some("B2"),
            None,
            Some("p1"),
            "",
        ),
        audit_of(
            400,
            Read,
            AuditOutcome::Success,
            None,
            Some("B2"),
            Some("c9"),
            Some("p1"),
            "TREAT",
        ),
        audit_of(
            500,
            BreakGlassStart,
            AuditOutcome::Success,
            Some("u2"),
            Some("B2"),
            None,
            Some("p2"),
            "unconscious",
        ),
        audit_of(
            600,
            Read,
            AuditOutcome::Success,
            Some("u2"),
            Some("B2"),
            None,
            Some("p2"),
            "break-glass: unconscious",
        ),
    ];
    store.append_audit(entries[..5].to_vec()).await.unwrap();
    store
        .commit(WriteSet {
            preconditions: vec![],
            resources: vec![],
            audit: vec![entries[5].clone()],
        })
        .await
        .unwrap();
    let q = || AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    };
    assert_eq!(
        seqs(store, q()).await,
        vec![6, 5, 4, 3, 2, 1],
        "newest first"
    );
    let all = store.audit_search(&q()).await.unwrap();
    for row in &all {
        assert_eq!(row.record, entries[usize::try_from(row.seq - 1).unwrap()]);
    }
    let rows = store.audit_rows(0, 100).await.unwrap();
    assert_eq!(
        all.iter().rev().map(|r| r.hash).collect::<Vec<_>>(),
        rows.iter().map(|r| r.hash).collect::<Vec<_>>(),
        "search returns the ledger's own rows and hashes"
    );
    let cases: Vec<(&str, AuditQuery, Vec<i64>)> = vec![
        (
            "patient p1",
            AuditQuery {
                patient: Some("p1".into()),
                ..q()
            },
            vec![4, 3, 1],
        ),
        (
            "patient none",
            AuditQuery {
                patient: Some("p3".into()),
                ..q()
            },
            vec![],
        ),
        (
            "org B2",
            AuditQuery {
                org: Some("B2".into()),
                ..q()
            },
            vec![6, 5, 4, 3],
        ),
        (
            "agent user u1",
            AuditQuery {
                agent: Some("u1".into()),
                ..q()
            },
            vec![2, 1],
        ),
        (
            "agent client c9",
            AuditQuery {
                agent: Some("c9".into()),
                ..q()
            },
            vec![4],
        ),
        (
            "action read",
            AuditQuery {
                actions: vec![Read],
                ..q()
            },
            vec![6, 4, 3, 1],
        ),
        (
            "action read|create",
            AuditQuery {
                actions: vec![Read, Create, Search],
                ..q()
            },
            vec![6, 4, 3, 2, 1],
        ),
        (
            "denied",
            AuditQuery {
                outcomes: vec![OutcomeClass::Denied],
                ..q()
            },
            vec![3],
        ),
        (
            "denied|failed",
            AuditQuery {
                outcomes: vec![OutcomeClass::Denied, OutcomeClass::Failed],
                ..q()
            },
            vec![3],
        ),
        (
            "success",
            AuditQuery {
                outcomes: vec![OutcomeClass::Success],
                ..q()
            },
            vec![6, 5, 4, 2, 1],
        ),
        (
            "from 300",
            AuditQuery {
                from: Some(300),
                ..q()
            },
            vec![6, 5, 4, 3],
        ),
        (
            "to 300 exclusive",
            AuditQuery {
                to: Some(300),
                ..q()
            },
            vec![2, 1],
        ),
        (
            "200 <= t < 500",
            AuditQuery {
                from: Some(200),
                to: Some(500),
                ..q()
            },
            vec![4, 3, 2],
        ),
        (
            "break-glass",
            AuditQuery {
                break_glass: Some(true),
                ..q()
            },
            vec![6, 5],
        ),
        (
            "not break-glass",
            AuditQuery {
                break_glass: Some(false),
                ..q()
            },
            vec![4, 3, 2, 1],
        ),
        (
            "p1 and org B2 and read",
            AuditQuery {
                patient: Some("p1".into()),
                org: Some("B2".into()),
                actions: vec![Read],
                ..q()
            },
            vec![4, 3],
        ),
        ("first page", AuditQuery { limit: 2, ..q() }, vec![6, 5]),
        (
            "next page",
            AuditQuery {
                limit: 2,
                before_seq: Some(5),
                ..q()
            },
            vec![4, 3],
        ),
        (
            "p1 page after 4",
            AuditQuery {
                patient: Some("p1".into()),
                before_seq: Some(4),
                ..q()
            },
            vec![3, 1],
        ),
        ("limit 0", AuditQuery { limit: 0, ..q() }, vec![]),
    ];
    for (name, query, expected) in cases {
        assert_eq!(seqs(store, query).await, expected, "{name}");
    }
}

/// The head follows commits; raw rows are the stored bytes (they decode to
/// the appended records and chain); checkpoints round-trip and saving one
/// twice is harmless.
pub async fn audit_head_raw_rows_checkpoints(store: &dyn Store) {
    assert_eq!(
        store.audit_head().await.unwrap(),
        carelayer_audit::ChainHead::genesis()
    );
    assert!(store.audit_raw_rows(0, 10).await.unwrap().is_empty());
    assert!(store.checkpoints().await.unwrap().is_empty());
    store
        .append_audit(vec![audit("1"), audit("2"), audit("3")])
        .await
        .unwrap();
    let rows = store.audit_rows(0, 10).await.unwrap();
    let head = store.audit_head().await.unwrap();
    assert_eq!((head.seq, head.hash), (3, rows[2].hash));
    let raw = store.audit_raw_rows(1, 10).await.unwrap();
    assert_eq!(raw.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
    for (r, row) in raw.iter().zip(&rows[1..]) {
        assert_eq!(r.record, carelayer_audit::canonical_bytes(&row.record));
        assert_eq!(r.hash, row.hash.to_vec());
    }
    assert_eq!(store.audit_raw_rows(0, 1).await.unwrap().len(), 1);

    let key = carelayer_audit::SigningKey::from_bytes(&[7; 32]);
    let first = carelayer_audit::sign_checkpoint(&key, 2, rows[1].hash, T0);
    let second = carelayer_audit::sign_checkpoint(&key, 3, head.hash, T0 + 1);
    store.save_checkpoint(&second).await.unwrap();
    store.save_checkpoint(&first).await.unwrap();
    store.save_checkpoint(&first).await.unwrap();
    let kept = store.checkpoints().await.unwrap();
    assert_eq!(
        kept,
        vec![first.clone(), second],
        "ascending by seq, no duplicates"
    );
    for cp in &kept {
        carelayer_audit::verify_checkpoint(cp, &key.verifying_key()).unwrap();
    }
}

/// Compound searches (a selective clause with broad ones, negations and
/// `:missing` alongside) agree with their clauses' intersection whatever
/// clause a backend drives from; `keys_only` returns the same matches and
/// versions without JSON (or with it: returning JSON is allowed), and
/// `bodies` the same matches with JSON at exactly the positions asked.
pub async fn search_compound_and_keys_only(store: &dyn Store) {
    let tok = |param: &str, code: &str| IndexEntry {
        param: param.into(),
        value: IndexValue::Token {
            system: Some("http://loinc.org".into()),
            code: Some(code.into()),
            text: None,
        },
    };
    let subject = |pid: &str| IndexEntry {
        param: "subject".into(),
        value: IndexValue::Reference {
            target_type: Some("Patient".into()),
            target_id: Some(pid.into()),
            url: format!("Patient/{pid}"),
        },
    };
    let mut writes = Vec::new();
    for i in 0..12 {
        let pid = format!("p{}", i % 3);
        let code = if i % 2 == 0 { "8867-4" } else { "8310-5" };
        let mut index = vec![tok("code", code), subject(&pid)];
        if i % 4 == 0 {
            index.push(IndexEntry {
                param: "performer".into(),
                value: IndexValue::Reference {
                    target_type: Some("Practitioner".into()),
                    target_id: Some("dr".into()),
                    url: "Practitioner/dr".into(),
                },
            });
        }
        writes.push(write("Observation", &format!("o{i:02}"), 1, index));
    }
    commit_all(store, writes).await;
    let code = loinc_code;
    let subj = |p: &str| Predicate::Index {
        param: "subject".into(),
        test: IndexTest::Reference {
            target_type: Some("Patient".into()),
            id: p.into(),
        },
    };
    let cases: Vec<SearchCase> = vec![
        (
            "subject+code",
            vec![vec![subj("p0")], vec![code("8867-4")]],
            vec!["o00", "o06"],
        ),
        (
            "code+subject",
            vec![vec![code("8867-4")], vec![subj("p0")]],
            vec!["o00", "o06"],
        ),
        (
            "subject OR + code",
            vec![vec![subj("p0"), subj("p1")], vec![code("8310-5")]],
            vec!["o01", "o03", "o07", "o09"],
        ),
        (
            "subject + not code",
            vec![
                vec![subj("p1")],
                vec![Predicate::Not {
                    param: "code".into(),
                    test: IndexTest::Token {
                        system: None,
                        code: "8867-4".into(),
                    },
                }],
            ],
            vec!["o01", "o07"],
        ),
        (
            "code + performer missing",
            vec![
                vec![code("8867-4")],
                vec![Predicate::Missing {
                    param: "performer".into(),
                    missing: true,
                }],
            ],
            vec!["o02", "o06", "o10"],
        ),
        (
            "code + performer present",
            vec![
                vec![code("8867-4")],
                vec![Predicate::Missing {
                    param: "performer".into(),
                    missing: false,
                }],
            ],
            vec!["o00", "o04", "o08"],
        ),
    ];
    for (what, clauses, want) in cases {
        assert_eq!(
            ids(store, &query(&["Observation"], clauses)).await,
            want,
            "{what}"
        );
    }
    let full = store
        .search(&query(&["Observation"], vec![vec![code("8867-4")]]))
        .await
        .unwrap();
    let keys = store
        .search(&SearchQuery {
            keys_only: true,
            ..query(&["Observation"], vec![vec![code("8867-4")]])
        })
        .await
        .unwrap();
    let strip = |p: &crate::SearchPage| -> Vec<(String, String, i64, i64)> {
        p.matches
            .iter()
            .map(|m| (m.resource_type.clone(), m.id.clone(), m.version, m.seq))
            .collect()
    };
    assert_eq!(strip(&full), strip(&keys));
    assert_eq!(full.matches.len(), 6);
    // `bodies`: the same matches in the same order, JSON exactly at those
    // positions (counted after the offset), none elsewhere.
    for (offset, bodies) in [(0, 1..3), (1, 0..2), (0, 4..9), (2, 0..0)] {
        let some = store
            .search(&SearchQuery {
                offset,
                bodies: Some(bodies.clone()),
                ..query(&["Observation"], vec![vec![code("8867-4")]])
            })
            .await
            .unwrap();
        assert_eq!(strip(&some), strip(&full)[offset..], "offset {offset}");
        for (i, m) in some.matches.iter().enumerate() {
            if bodies.contains(&i) {
                assert_eq!(m.json, full.matches[offset + i].json, "{offset}: {i}");
            } else {
                assert!(m.json.is_empty(), "offset {offset}: body at {i}");
            }
        }
    }
}

/// "Patient X's resources with code C" finds exactly the matches, also those
/// a patient-scoped lookup alone would miss: a resource whose reference to
/// X is an absolute URL (so X does not own it), one that names X in a later
/// compartment reference (owned by another patient), and rows with no owner.
pub async fn search_patient_scoped_codes(store: &dyn Store) {
    commit_all(store, patient_scoped_code_writes()).await;
    check_patient_scoped_codes(store, "").await;
}

/// The Observations [`search_patient_scoped_codes`] searches.
fn patient_scoped_code_writes() -> Vec<ResourceWrite> {
    let code = |c: &str| tok("code", Some("http://loinc.org"), c);
    let obs = |id: &str, owner: Option<&str>, mut index: Vec<IndexEntry>| {
        let mut w = write("Observation", id, 1, std::mem::take(&mut index));
        w.patient_key = owner.map(Into::into);
        w
    };
    let local =
        |param: &str, p: &str| reference(param, Some("Patient"), Some(p), &format!("Patient/{p}"));
    vec![
        obs("a", Some("x"), vec![local("subject", "x"), code("C")]),
        obs(
            "b",
            None,
            vec![
                reference(
                    "subject",
                    Some("Patient"),
                    Some("x"),
                    "http://other.example/fhir/Patient/x",
                ),
                code("C"),
            ],
        ),
        obs("c", Some("x"), vec![local("subject", "x"), code("D")]),
        obs("d", Some("y"), vec![local("subject", "y"), code("C")]),
        obs(
            "e",
            Some("y"),
            vec![local("subject", "y"), local("performer", "x"), code("C")],
        ),
        obs(
            "f",
            Some("x"),
            vec![local("subject", "x"), code("C"), code("D")],
        ),
        obs("g", None, vec![local("subject", "x"), code("C")]),
        // A reference known only as written (no type/id split), no owner.
        obs(
            "h",
            None,
            vec![reference("subject", None, None, "Patient/x"), code("C")],
        ),
    ]
}

/// [`search_patient_scoped_codes`]'s searches over its writes; `when` names
/// the moment in a failure.
async fn check_patient_scoped_codes(store: &dyn Store, when: &str) {
    let has_code = loinc_code;
    let refers = |param: &str, target_type: Option<&str>, p: &str| Predicate::Index {
        param: param.into(),
        test: IndexTest::Reference {
            target_type: target_type.map(Into::into),
            id: p.into(),
        },
    };
    let cases: Vec<SearchCase> = vec![
        (
            "subject + code",
            vec![
                vec![refers("subject", Some("Patient"), "x")],
                vec![has_code("C")],
            ],
            vec!["a", "b", "f", "g"],
        ),
        (
            "subject + either code",
            vec![
                vec![refers("subject", Some("Patient"), "x")],
                vec![has_code("C"), has_code("D")],
            ],
            vec!["a", "b", "c", "f", "g"],
        ),
        (
            "code first, untyped subject",
            vec![vec![has_code("C")], vec![refers("subject", None, "x")]],
            vec!["a", "b", "f", "g"],
        ),
        (
            "a later compartment reference",
            vec![
                vec![refers("performer", Some("Patient"), "x")],
                vec![has_code("C")],
            ],
            vec!["e"],
        ),
        (
            "compartment key + code",
            vec![vec![Predicate::PatientKey("x".into())], vec![has_code("C")]],
            vec!["a", "f"],
        ),
        (
            "subject as records builds it (by target or as written) + code",
            vec![
                vec![
                    refers("subject", Some("Patient"), "x"),
                    Predicate::Index {
                        param: "subject".into(),
                        test: IndexTest::ReferenceUrl("Patient/x".into()),
                    },
                ],
                vec![has_code("C")],
            ],
            vec!["a", "b", "f", "g", "h"],
        ),
        (
            "compartment clause (key or either reference) + code",
            vec![
                vec![
                    Predicate::PatientKey("x".into()),
                    refers("subject", Some("Patient"), "x"),
                    refers("performer", Some("Patient"), "x"),
                ],
                vec![has_code("C")],
            ],
            vec!["a", "b", "e", "f", "g"],
        ),
        (
            "subject + both codes",
            vec![
                vec![refers("subject", Some("Patient"), "x")],
                vec![has_code("C")],
                vec![has_code("D")],
            ],
            vec!["f"],
        ),
        (
            "another patient",
            vec![
                vec![refers("subject", Some("Patient"), "y")],
                vec![has_code("C")],
            ],
            vec!["d", "e"],
        ),
    ];
    for (what, clauses, expected) in cases {
        let q = query(&["Observation"], clauses);
        assert_eq!(ids(store, &q).await, sorted(&expected), "{what} {when}");
    }
}

/// A bulk load changes no answer: during two overlapping loads, each big
/// enough against this empty store that a backend puts off its index work
/// ([`crate::bulk`]), conditional creates' preconditions and searches give
/// what they give without a load; so they do when one load has ended and
/// after both, and writes after the loads are found too.
pub async fn bulk_load_changes_no_answer(store: &dyn Store) {
    store.begin_bulk_load(1_000_000).await.unwrap();
    store.begin_bulk_load(1_000_000).await.unwrap();
    precondition_search_matches(store).await;
    commit_all(store, patient_scoped_code_writes()).await;
    check_patient_scoped_codes(store, "during two loads").await;
    store.end_bulk_load().await.unwrap();
    check_patient_scoped_codes(store, "while the second load lasts").await;
    store.end_bulk_load().await.unwrap();
    check_patient_scoped_codes(store, "after both loads").await;
    let mut later = write(
        "Observation",
        "z",
        1,
        vec![
            reference("subject", Some("Patient"), Some("y"), "Patient/y"),
            tok("code", Some("http://loinc.org"), "C"),
        ],
    );
    later.patient_key = Some("y".into());
    put(store, later).await;
    let q = query(
        &["Observation"],
        vec![
            vec![Predicate::PatientKey("y".into())],
            vec![loinc_code("C")],
        ],
    );
    assert_eq!(
        ids(store, &q).await,
        sorted(&["d", "e", "z"]),
        "after the loads"
    );
}
