//! Plan assertions for PostgreSQL, the counterpart of the SQLite backend's
//! `tests/plans.rs`: searches are prepared and may run on a generic plan
//! (planned without the values), so that is the plan checked here
//! (`PostgresStore::explain` shows it). Every representative search runs on
//! index lookups, never a sequential scan; in compound searches the
//! selective clause drives and the broad one (a common code) is only
//! probed per candidate row by the `(rid, ord)` primary key, never looked
//! up by `(param, code)`, which would read every resource with that code.
//!
//! The data is large enough (thousands of rows, analysed) that a scan would
//! be a real choice for the planner. `SHOW_PLANS=1` prints every plan.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use carelayer_fhir::search::{IndexEntry, IndexValue};
use carelayer_store::contract::build::{
    self, date, index as idx, patient_ref, show_plan as show, token as tok,
};
use carelayer_store::{
    IndexTest, Predicate, Prefix, ResourceWrite, SearchQuery, SortKey, Store, WriteSet,
};

const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";
const LOINC: &str = "http://loinc.org";
const PATIENTS: i64 = 1_000;
const CODES: [&str; 5] = ["85354-9", "29463-7", "8867-4", "39156-5", "14647-2"];
const DAY: i64 = 86_400_000_000;

fn q(types: &[&str], clauses: Vec<Vec<Predicate>>) -> SearchQuery {
    build::query(types, clauses, 51)
}

/// The tables this data fills; the others are empty, and a sequential
/// scan of an empty table is what the planner should pick.
const FILLED: [&str; 6] = [
    "current",
    "resources",
    "idx_token",
    "idx_string",
    "idx_date",
    "idx_reference",
];

/// No sequential scans of a table with rows.
fn assert_indexed(what: &str, plan: &[String]) {
    show(what, plan);
    assert!(!plan.is_empty(), "{what}: empty plan");
    assert!(
        !plan.iter().any(|l| FILLED
            .iter()
            .any(|t| l.contains(&format!("Seq Scan on {t} ")))),
        "{what}: sequential scan in the generic plan:\n{}",
        plan.join("\n")
    );
}

/// The token table is read by `(param, code)` (`idx_token_code`) at most
/// `drivers` times (a chain's inner identifier), otherwise only probed by
/// the candidate's primary key.
fn assert_token_probed(what: &str, plan: &[String], drivers: usize) {
    let by_code = plan
        .iter()
        .filter(|l| l.contains("using idx_token_code"))
        .count();
    assert!(
        by_code <= drivers,
        "{what}: the code list is materialised:\n{}",
        plan.join("\n")
    );
    assert!(
        plan.iter().any(|l| l.contains("using idx_token_pkey")),
        "{what}: no probe of the candidate's token rows:\n{}",
        plan.join("\n")
    );
}

fn data() -> Vec<ResourceWrite> {
    let mut resources = Vec::new();
    for i in 0..PATIENTS {
        let pid = format!("p{i}");
        resources.push(ResourceWrite {
            resource_type: "Patient".into(),
            id: pid.clone(),
            version: 1,
            last_updated: 1,
            deleted: false,
            json: b"{}".to_vec(),
            patient_key: Some(pid.clone()),
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
                        normalized: format!("smith{}", i % 100),
                        exact: format!("Smith{}", i % 100),
                    },
                },
                IndexEntry {
                    param: "birthdate".into(),
                    value: IndexValue::Date {
                        low: (i % 365) * DAY,
                        high: (i % 365) * DAY + DAY - 1,
                    },
                },
            ],
        });
        for (n, code) in CODES.iter().enumerate() {
            let n = i64::try_from(n).unwrap();
            let at = ((i * 5 + n) % 730) * DAY;
            resources.push(ResourceWrite {
                resource_type: "Observation".into(),
                id: format!("o{i}-{n}"),
                version: 1,
                last_updated: 1,
                deleted: false,
                json: b"{}".to_vec(),
                patient_key: Some(pid.clone()),
                index: vec![
                    IndexEntry {
                        param: "code".into(),
                        value: IndexValue::Token {
                            system: Some(LOINC.into()),
                            code: Some((*code).into()),
                            text: None,
                        },
                    },
                    IndexEntry {
                        param: "subject".into(),
                        value: IndexValue::Reference {
                            target_type: Some("Patient".into()),
                            target_id: Some(pid.clone()),
                            url: format!("Patient/{pid}"),
                        },
                    },
                    IndexEntry {
                        param: "date".into(),
                        value: IndexValue::Date { low: at, high: at },
                    },
                ],
            });
        }
    }
    resources
}

#[tokio::test]
async fn representative_searches_use_indexes_on_generic_plans() {
    let Some((store, db)) = common::fresh().await else {
        return;
    };
    store
        .commit(WriteSet {
            resources: data(),
            ..WriteSet::default()
        })
        .await
        .unwrap();
    // Statistics now, not whenever the writer's background ANALYZE runs.
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    client.batch_execute("ANALYZE").await.unwrap();
    drop(client);
    let _ = task.await;

    let code = || idx("code", tok(LOINC, "8867-4"));
    let chain = || Predicate::Chain {
        param: "subject".into(),
        target_type: "Patient".into(),
        query: Box::new(q(
            &["Patient"],
            vec![vec![idx("identifier", tok(NHS, "9000000001"))]],
        )),
    };
    // As `records` builds `subject=Patient/p1`: by id or as written.
    let subject = || {
        vec![
            idx("subject", patient_ref("p1")),
            idx("subject", IndexTest::ReferenceUrl("Patient/p1".into())),
        ]
    };
    let cases: Vec<(&str, SearchQuery)> = vec![
        (
            "token: Patient?identifier=nhs|n",
            q(
                &["Patient"],
                vec![vec![idx("identifier", tok(NHS, "9000000001"))]],
            ),
        ),
        (
            "string prefix: Patient?family=smi",
            q(
                &["Patient"],
                vec![vec![idx(
                    "family",
                    IndexTest::StringStartsWith("smi".into()),
                )]],
            ),
        ),
        (
            "reference+code: Observation?subject=Patient/p1&code=loinc|8867-4",
            q(&["Observation"], vec![subject(), vec![code()]]),
        ),
        (
            "code+reference (other order)",
            q(&["Observation"], vec![vec![code()], subject()]),
        ),
        (
            "chained + code: Observation?subject:Patient.identifier=…&code=…",
            q(&["Observation"], vec![vec![chain()], vec![code()]]),
        ),
        (
            "code + chained (other order)",
            q(&["Observation"], vec![vec![code()], vec![chain()]]),
        ),
        (
            "compartment: Patient/p1/Observation?code=…",
            q(
                &["Observation"],
                vec![
                    vec![
                        Predicate::PatientKey("p1".into()),
                        idx("subject", patient_ref("p1")),
                    ],
                    vec![code()],
                ],
            ),
        ),
        (
            "code+date window: Observation?code=…&date=ge…&date=lt…",
            q(
                &["Observation"],
                vec![
                    vec![code()],
                    vec![idx("date", date(Prefix::Ge, 30 * DAY, 31 * DAY - 1))],
                    vec![idx("date", date(Prefix::Lt, 60 * DAY, 61 * DAY - 1))],
                ],
            ),
        ),
        (
            "family+birthdate: Patient?family=smith1&birthdate=…",
            q(
                &["Patient"],
                vec![
                    vec![idx("family", IndexTest::StringStartsWith("smith1".into()))],
                    vec![idx("birthdate", date(Prefix::Eq, 0, DAY - 1))],
                ],
            ),
        ),
        (
            "_has: Patient?_has:Observation:subject:code=…&identifier=…",
            q(
                &["Patient"],
                vec![
                    vec![Predicate::Has {
                        source_type: "Observation".into(),
                        param: "subject".into(),
                        query: Box::new(q(&["Observation"], vec![vec![code()]])),
                    }],
                    vec![idx("identifier", tok(NHS, "9000000001"))],
                ],
            ),
        ),
        (
            "sorted by date",
            SearchQuery {
                sort: vec![SortKey::Param {
                    param: "date".into(),
                    descending: true,
                }],
                ..q(&["Observation"], vec![subject()])
            },
        ),
    ];
    for (what, query) in &cases {
        let plan = store.explain(query).await.unwrap();
        assert_indexed(what, &plan);
        // The statement is right too, not just its plan.
        store.search(query).await.unwrap();
    }
    for (what, drivers) in [
        (
            "reference+code: Observation?subject=Patient/p1&code=loinc|8867-4",
            0,
        ),
        ("code+reference (other order)", 0),
        (
            "chained + code: Observation?subject:Patient.identifier=…&code=…",
            1,
        ),
        ("code + chained (other order)", 1),
        ("compartment: Patient/p1/Observation?code=…", 0),
        ("code+date window: Observation?code=…&date=ge…&date=lt…", 0),
    ] {
        let (_, query) = cases.iter().find(|(w, _)| *w == what).unwrap();
        let plan = store.explain(query).await.unwrap();
        assert_token_probed(what, &plan, drivers);
    }
    // A patient's resources with a code: that patient's rows of the code
    // drive (`PatientScope`), one range instead of every resource of the
    // patient.
    for what in [
        "reference+code: Observation?subject=Patient/p1&code=loinc|8867-4",
        "code+reference (other order)",
        "compartment: Patient/p1/Observation?code=…",
    ] {
        let (_, query) = cases.iter().find(|(w, _)| *w == what).unwrap();
        let plan = store.explain(query).await.unwrap();
        assert!(
            plan.iter().any(|l| l.contains("idx_token_patient")),
            "{what}: not driven by the patient's codes:\n{}",
            plan.join("\n")
        );
    }
    // A patient's whole record ($everything) in page order from one index:
    // no sort.
    let record = q(&[], vec![vec![Predicate::PatientKey("p1".into())]]);
    let plan = store.explain(&record).await.unwrap();
    assert_indexed("$everything", &plan);
    assert!(
        plan.iter().any(|l| l.contains("current_patient"))
            && !plan
                .iter()
                .any(|l| l.trim_start().trim_start_matches("-> ").starts_with("Sort")),
        "a patient's record is not read in order from current_patient:\n{}",
        plan.join("\n")
    );
    let (_, window) = cases
        .iter()
        .find(|(w, _)| w.starts_with("code+date window"))
        .unwrap();
    let plan = store.explain(window).await.unwrap();
    for index in ["idx_date_low", "idx_date_long"] {
        assert!(
            plan.iter().any(|l| l.contains(index)),
            "the date window does not drive from {index}:\n{}",
            plan.join("\n")
        );
    }
    // The results agree with what the data holds.
    let hits = |query: &SearchQuery| {
        let store = &store;
        let query = SearchQuery {
            count: 1_000,
            ..query.clone()
        };
        async move {
            let mut ids: Vec<String> = store
                .search(&query)
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
    let (_, obs) = &cases[2];
    assert_eq!(hits(obs).await, vec!["o1-2".to_owned()]);
    let (_, chained) = &cases[4];
    assert_eq!(hits(chained).await, vec!["o1-2".to_owned()]);
    // Days 30..60 hold observations whose (i * 5 + n) % 730 falls there;
    // of code n = 2 (8867-4): i * 5 + 2 in 30..60 or 760..790.
    let expected: Vec<String> = (0..PATIENTS)
        .filter(|i| {
            let d = (i * 5 + 2) % 730;
            (30..60).contains(&d)
        })
        .map(|i| format!("o{i}-2"))
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(hits(window).await, expected);
    store.close().await;
}
