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
                index("name", IndexTest::StringExact("Smith".into())),
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
