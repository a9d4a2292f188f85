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

/// The rows `sql` returns on a connection of its own to `url`.
async fn query(
    url: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<tokio_postgres::Row> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let rows = client.query(sql, params).await.unwrap();
    drop(client);
    let _ = task.await;
    rows
}

/// `(name, definition)` of every index, sorted.
async fn indexes(url: &str) -> Vec<(String, String)> {
    let sql = "SELECT indexname::text, indexdef FROM pg_indexes \
               WHERE schemaname = current_schema() ORDER BY 1";
    let rows = query(url, sql, &[]).await;
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Tables with planner statistics.
async fn analysed(url: &str) -> Vec<String> {
    let sql = "SELECT DISTINCT tablename::text FROM pg_stats \
               WHERE schemaname = current_schema() ORDER BY 1";
    let rows = query(url, sql, &[]).await;
    rows.iter().map(|r| r.get(0)).collect()
}

/// Pages of `table` the visibility map marks all-visible (what lets an
/// index-only scan skip the heap).
async fn all_visible_pages(url: &str, table: &str) -> i32 {
    let sql = "SELECT relallvisible FROM pg_class WHERE oid = $1::text::regclass";
    let rows = query(url, sql, &[&table]).await;
    rows.first().map_or(0, |r| r.get(0))
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
    // Vacuumed too: what the load wrote is all-visible, so covering
    // indexes are read without visiting the heap.
    for table in ["current", "idx_string", "idx_token"] {
        assert!(
            all_visible_pages(&db.url, table).await > 0,
            "{table}'s pages marked all-visible after the load"
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

/// Index entries of every kind (absent parts, composites, odd values).
fn every_kind(i: usize) -> Vec<IndexEntry> {
    let token = |system: Option<&str>, code: Option<&str>, text: Option<&str>| IndexValue::Token {
        system: system.map(str::to_owned),
        code: code.map(str::to_owned),
        text: text.map(str::to_owned),
    };
    let entry = |param: &str, value: IndexValue| IndexEntry {
        param: param.into(),
        value,
    };
    vec![
        entry(
            "code",
            token(Some("http://loinc.org"), Some("8867-4"), Some("Heart rate")),
        ),
        entry("code", token(None, Some(&format!("c{i}")), None)),
        entry("category", token(Some("s"), None, Some("Ünïcødé ✓"))),
        entry(
            "name",
            IndexValue::String {
                normalized: format!("smith{i}"),
                exact: format!("Smith {i}"),
            },
        ),
        entry(
            "date",
            IndexValue::Date {
                low: i64::MIN,
                high: i64::try_from(i).unwrap(),
            },
        ),
        entry("probability", IndexValue::Number { value: -1.5e-7 }),
        entry(
            "value-quantity",
            IndexValue::Quantity {
                value: 72.25,
                system: Some("http://unitsofmeasure.org".into()),
                code: None,
                unit: Some("/min".into()),
            },
        ),
        entry(
            "subject",
            IndexValue::Reference {
                target_type: Some("Patient".into()),
                target_id: Some("p1".into()),
                url: "Patient/p1".into(),
            },
        ),
        entry(
            "subject",
            IndexValue::Reference {
                target_type: None,
                target_id: None,
                url: "http://elsewhere/x".into(),
            },
        ),
        entry(
            "url",
            IndexValue::Uri {
                uri: "urn:uuid:1".into(),
            },
        ),
        entry(
            "code-value-quantity",
            IndexValue::Composite {
                parts: vec![
                    token(Some("http://loinc.org"), Some("8867-4"), None),
                    IndexValue::Quantity {
                        value: 72.0,
                        system: None,
                        code: None,
                        unit: None,
                    },
                ],
            },
        ),
    ]
}

/// Resources `<prefix>0..<prefix>69` with every kind of index entry; the
/// last one is written twice in the set (versions 1 and 2) and one is a
/// deletion, as an import batch or a transaction may carry.
fn observations(prefix: &str) -> Vec<ResourceWrite> {
    let mut out: Vec<ResourceWrite> = (0..70)
        .map(|i| ResourceWrite {
            resource_type: "Observation".into(),
            id: format!("{prefix}{i}"),
            version: 1,
            last_updated: 1_700_000_000_000_000 + i64::try_from(i).unwrap(),
            deleted: i == 5,
            json: format!(r#"{{"n":{i}}}"#).into_bytes(),
            patient_key: (i % 2 == 0).then(|| "p1".to_owned()),
            index: if i == 5 { Vec::new() } else { every_kind(i) },
        })
        .collect();
    let mut again = out[69].clone();
    again.version = 2;
    again.index.truncate(3);
    out.push(again);
    out
}

/// Every row of `table` belonging to resources whose id starts with
/// `prefix`, as JSON without the `rid` and with the prefix taken off the id.
async fn rows_of(client: &tokio_postgres::Client, table: &str, prefix: &str) -> Vec<String> {
    let sql = format!(
        "SELECT substr(c.id, 2) || ' ' || (to_jsonb(t) - 'rid')::text FROM {table} t \
         JOIN current c ON c.rid = t.rid WHERE c.id LIKE $1 ORDER BY 1"
    );
    client
        .query(&sql, &[&format!("{prefix}%")])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn copy_and_row_inserts_write_the_same_rows() {
    let Some((store, db)) = common::fresh().await else {
        return;
    };
    // One set of 71 writes goes by COPY (`copy.rs`) ...
    commit(&store, observations("a")).await;
    // ... the same in sets of 10 by the row inserts, in the same order
    // (both versions of the twice-written one in the same set).
    let mut rest = observations("b");
    let tail = rest.split_off(60);
    for chunk in rest.chunks(10) {
        commit(&store, chunk.to_vec()).await;
    }
    commit(&store, tail).await;

    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let versions = "SELECT substr(id, 2) || ' ' || (to_jsonb(r) - 'seq' - 'id')::text \
                    FROM resources r WHERE id LIKE $1 ORDER BY 1";
    let a: Vec<String> = client
        .query(versions, &[&"a%"])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let b: Vec<String> = client
        .query(versions, &[&"b%"])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(a.len(), 71);
    assert_eq!(a, b, "versions");
    for table in [
        "idx_token",
        "idx_string",
        "idx_date",
        "idx_number",
        "idx_quantity",
        "idx_reference",
        "idx_uri",
        "idx_composite",
    ] {
        let a = rows_of(&client, table, "a").await;
        assert!(!a.is_empty(), "{table} has rows");
        assert_eq!(a, rows_of(&client, table, "b").await, "{table}");
    }
    // The deleted one has none; the twice-written one only its last
    // version's three.
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM idx_token t JOIN current c ON c.rid = t.rid WHERE c.id = 'a69'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    drop(client);
    let _ = task.await;
    store.close().await;
}
