//! Bulk loads into a near-empty database (`src/bulk.rs`): the secondary
//! indexes are dropped when the load begins and built when it ends. These
//! tests hold the promises that make that safe: the same indexes come back
//! (compared with `pg_indexes` as the migrations left them), answers during
//! and after the load are the same, a load into a database it would not
//! dwarf keeps its indexes, and a store connecting to a database a load
//! left without them builds them first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use carelayer_fhir::search::{IndexEntry, IndexValue};
use carelayer_store::contract::build::{self, index as idx, token as tok};
use carelayer_store::{Predicate, ResourceWrite, SearchQuery, Store, WriteSet};
use carelayer_store_postgres::PostgresStore;

const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// `(name, definition)` of every index, sorted.
async fn indexes(url: &str) -> Vec<(String, String)> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT indexname::text, indexdef FROM pg_indexes \
             WHERE schemaname = current_schema() ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Tables with planner statistics.
async fn analysed(url: &str) -> Vec<String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT DISTINCT tablename::text FROM pg_stats \
             WHERE schemaname = current_schema() ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    rows.iter().map(|r| r.get(0)).collect()
}

fn has(indexes: &[(String, String)], name: &str) -> bool {
    indexes.iter().any(|(n, _)| n == name)
}

/// Patients `from..to`, each with an NHS number and a family name; a
/// write set of 64 or more goes in by COPY, as an import batch does.
fn patients(from: usize, to: usize, version: i64, family: &str) -> Vec<ResourceWrite> {
    (from..to)
        .map(|i| ResourceWrite {
            resource_type: "Patient".into(),
            id: format!("p{i}"),
            version,
            last_updated: 1,
            deleted: false,
            json: b"{}".to_vec(),
            patient_key: Some(format!("p{i}")),
            index: vec![
                IndexEntry {
                    param: "identifier".into(),
                    value: IndexValue::Token {
                        system: Some(NHS.into()),
                        code: Some(format!("9{i:09}")),
                        text: None,
                    },
                },
                IndexEntry {
                    param: "family".into(),
                    value: IndexValue::String {
                        normalized: family.to_lowercase(),
                        exact: family.into(),
                    },
                },
            ],
        })
        .collect()
}

async fn commit(store: &PostgresStore, resources: Vec<ResourceWrite>) {
    store
        .commit(WriteSet {
            resources,
            ..WriteSet::default()
        })
        .await
        .unwrap();
}

fn by_nhs(i: usize) -> SearchQuery {
    build::query(
        &["Patient"],
        vec![vec![idx("identifier", tok(NHS, &format!("9{i:09}")))]],
        10,
    )
}

fn by_family(family: &str) -> SearchQuery {
    build::query(
        &["Patient"],
        vec![vec![Predicate::Index {
            param: "family".into(),
            test: carelayer_store::IndexTest::StringStartsWith(family.to_lowercase()),
        }]],
        1000,
    )
}

async fn ids(store: &PostgresStore, q: &SearchQuery) -> Vec<String> {
    let mut ids: Vec<String> = store
        .search(q)
        .await
        .unwrap()
        .matches
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_load_into_an_empty_database_builds_the_same_indexes_and_answers_the_same() {
    let Some((store, db)) = common::fresh().await else {
        return;
    };
    let migrated = indexes(&db.url).await;
    assert!(has(&migrated, "idx_token_code"));

    store.begin_bulk_load(20_000).await.unwrap();
    let during = indexes(&db.url).await;
    assert!(
        !has(&during, "idx_token_code") && !has(&during, "current_patient"),
        "secondary indexes dropped for the load: {during:?}"
    );
    // Primary keys and unique constraints stay: writes rely on them.
    for kept in [
        "idx_token_pkey",
        "current_type_id_key",
        "resources_pkey",
        "resources_type_id_version_key",
    ] {
        assert!(has(&during, kept), "{kept} kept during the load");
    }

    commit(&store, patients(0, 300, 1, "Smith")).await;
    // Searches during the load: the same answers, by other plans.
    assert_eq!(ids(&store, &by_nhs(7)).await, vec!["p7".to_owned()]);
    // A new version during the load replaces its index rows.
    commit(&store, patients(0, 100, 2, "Jones")).await;
    assert_eq!(ids(&store, &by_family("Jones")).await.len(), 100);
    assert_eq!(ids(&store, &by_family("Smith")).await.len(), 200);

    store.end_bulk_load().await.unwrap();
    assert_eq!(
        indexes(&db.url).await,
        migrated,
        "the indexes after the load are those the migrations made"
    );
    let stats = analysed(&db.url).await;
    for table in ["current", "idx_string", "idx_token", "resources"] {
        assert!(
            stats.iter().any(|t| t == table),
            "{table} analysed: {stats:?}"
        );
    }
    assert_eq!(ids(&store, &by_nhs(7)).await, vec!["p7".to_owned()]);
    assert_eq!(ids(&store, &by_family("Jones")).await.len(), 100);
    assert_eq!(ids(&store, &by_family("Smith")).await.len(), 200);
    let plan = store.explain(&by_nhs(7)).await.unwrap();
    assert!(
        plan.iter().any(|l| l.contains("idx_token_code")),
        "the rebuilt index is used:\n{}",
        plan.join("\n")
    );
    store.close().await;
}

#[tokio::test]
async fn small_loads_and_loads_into_a_bigger_database_keep_their_indexes() {
    let Some((store, db)) = common::fresh().await else {
        return;
    };
    let migrated = indexes(&db.url).await;
    // Too small to be worth the builds.
    store.begin_bulk_load(500).await.unwrap();
    assert_eq!(indexes(&db.url).await, migrated);
    commit(&store, patients(0, 3_000, 1, "Smith")).await;
    store.end_bulk_load().await.unwrap();
    // Big enough, but less than four times what is there.
    store.begin_bulk_load(11_000).await.unwrap();
    assert_eq!(indexes(&db.url).await, migrated);
    store.end_bulk_load().await.unwrap();
    assert_eq!(indexes(&db.url).await, migrated);
    store.close().await;
}

#[tokio::test]
async fn overlapping_loads_build_when_the_last_ends() {
    let Some((store, db)) = common::fresh().await else {
        return;
    };
    let migrated = indexes(&db.url).await;
    store.begin_bulk_load(20_000).await.unwrap();
    store.begin_bulk_load(20_000).await.unwrap();
    commit(&store, patients(0, 100, 1, "Smith")).await;
    store.end_bulk_load().await.unwrap();
    assert!(!has(&indexes(&db.url).await, "idx_token_code"));
    store.end_bulk_load().await.unwrap();
    assert_eq!(indexes(&db.url).await, migrated);
    store.close().await;
}

#[tokio::test]
async fn connecting_builds_what_an_unfinished_load_left_and_closing_too() {
    let Some((store, db)) = common::fresh().await else {
        return;
    };
    let migrated = indexes(&db.url).await;
    store.begin_bulk_load(20_000).await.unwrap();
    commit(&store, patients(0, 100, 1, "Smith")).await;
    assert!(!has(&indexes(&db.url).await, "idx_token_code"));
    // As after a crash mid-load (or beside another server's load): a store
    // that connects builds the missing indexes before it serves.
    let other = PostgresStore::connect(&db.url, common::test_options())
        .await
        .unwrap();
    assert_eq!(indexes(&db.url).await, migrated);
    assert_eq!(ids(&other, &by_nhs(7)).await, vec!["p7".to_owned()]);
    other.close().await;
    // The first load's end finds nothing left to build.
    store.end_bulk_load().await.unwrap();
    assert_eq!(indexes(&db.url).await, migrated);

    // Closed mid-load, the store builds them before it stops.
    store.begin_bulk_load(20_000).await.unwrap();
    assert!(!has(&indexes(&db.url).await, "idx_token_code"));
    store.close().await;
    assert_eq!(indexes(&db.url).await, migrated);
}
