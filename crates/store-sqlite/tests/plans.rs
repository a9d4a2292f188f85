//! Plan assertions for the searches issue 4 names: every representative
//! search runs on index lookups, never a full scan or a walk over every
//! resource of a type; and in compound searches the selective clause
//! drives while the broad one (a common code) is only probed per candidate
//! row by its primary key, never materialised whole.
//!
//! Queries are built the way `records` builds them from FHIR parameters.
//! `SHOW_PLANS=1` prints every plan.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use carelayer_fhir::search::{IndexEntry, IndexValue};
use carelayer_store::contract::build::{
    self, date, index as idx, patient_ref, show_plan as show, token as tok,
};
use carelayer_store::{
    IndexTest, Predicate, Prefix, ResourceWrite, SearchQuery, SortKey, Store, WriteSet,
};
use carelayer_store_sqlite::{SqliteOptions, SqliteStore};

const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";
const LOINC: &str = "http://loinc.org";

fn q(types: &[&str], clauses: Vec<Vec<Predicate>>) -> SearchQuery {
    build::query(types, clauses, 51)
}

/// No full scans and no walks over every current resource of a type.
fn assert_indexed(what: &str, plan: &[String]) {
    show(what, plan);
    assert!(!plan.is_empty(), "{what}: empty plan");
    for line in plan {
        let scan = line.starts_with("SCAN ") && !line.contains("USING");
        assert!(!scan, "{what}: full scan in plan:\n{}", plan.join("\n"));
        assert!(
            !line.ends_with("(type=?)") || line.contains("current_patient"),
            "{what}: type-range walk in plan:\n{}",
            plan.join("\n")
        );
        assert!(
            !line.contains("SCAN c USING INDEX current_live"),
            "{what}: walks every live resource:\n{}",
            plan.join("\n")
        );
    }
}

/// The token table is only ever probed per candidate row (a point lookup
/// that includes `rid=?`) or looked up within one patient
/// (`idx_token_patient`), never searched by `(param, code)` alone (which
/// would materialise every resource with that code).
/// `drivers` token lookups may be unprobed (a chain's inner identifier).
fn assert_token_probed(what: &str, plan: &[String], drivers: usize) {
    let token_lines: Vec<&String> = plan.iter().filter(|l| l.contains("idx_token")).collect();
    assert!(
        !token_lines.is_empty(),
        "{what}: no token lookup:\n{}",
        plan.join("\n")
    );
    let unprobed = token_lines
        .iter()
        .filter(|l| !l.contains("rid=?") && !l.contains(PATIENT_SCOPED))
        .count();
    assert!(
        unprobed <= drivers,
        "{what}: the code list is materialised:\n{}",
        plan.join("\n")
    );
    assert!(
        plan.iter().any(|l| l.starts_with("CORRELATED")),
        "{what}: no correlated probe:\n{}",
        plan.join("\n")
    );
}

/// The plan line of a patient's rows of a code (schema V4; `grp` since V11).
const PATIENT_SCOPED: &str = "idx_token_patient (patient_key=? AND param=? AND code=? AND grp=?)";

async fn store_with_data(dir: &tempfile::TempDir) -> SqliteStore {
    let store = SqliteStore::open(&dir.path().join("p.db"), SqliteOptions::default()).unwrap();
    let mut resources = Vec::new();
    for i in 0..20 {
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
                        code: Some(format!("90000000{i:02}")),
                        text: None,
                    },
                },
                IndexEntry {
                    param: "family".into(),
                    value: IndexValue::String {
                        normalized: format!("smith{i}"),
                        exact: format!("Smith{i}"),
                    },
                },
            ],
        });
        resources.push(ResourceWrite {
            resource_type: "Observation".into(),
            id: format!("o{i}"),
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
                        code: Some("8867-4".into()),
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
                    value: IndexValue::Date {
                        low: 1_000 * i64::from(i),
                        high: 1_000 * i64::from(i),
                    },
                },
            ],
        });
    }
    store
        .commit(WriteSet {
            resources,
            ..WriteSet::default()
        })
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn representative_searches_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_data(&dir).await;
    let code = || idx("code", tok(LOINC, "8867-4"));
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
            "date range: Observation?date=ge…&date=le…",
            q(
                &["Observation"],
                vec![
                    vec![idx("date", date(Prefix::Ge, 1_000, 1_999))],
                    vec![idx("date", date(Prefix::Le, 5_000, 5_999))],
                ],
            ),
        ),
        (
            "reference+code: Observation?subject=Patient/p1&code=loinc|8867-4",
            q(
                &["Observation"],
                vec![vec![idx("subject", patient_ref("p1"))], vec![code()]],
            ),
        ),
        (
            "code+reference (other order)",
            q(
                &["Observation"],
                vec![vec![code()], vec![idx("subject", patient_ref("p1"))]],
            ),
        ),
        (
            "reference as records builds it (by id or as written) + code",
            q(
                &["Observation"],
                vec![
                    vec![
                        idx("subject", patient_ref("p1")),
                        idx("subject", IndexTest::ReferenceUrl("Patient/p1".into())),
                    ],
                    vec![code()],
                ],
            ),
        ),
        (
            "code+date: Observation?code=…&date=ge…",
            q(
                &["Observation"],
                vec![
                    vec![code()],
                    vec![idx("date", date(Prefix::Ge, 1_000, 1_999))],
                ],
            ),
        ),
        (
            "chained: Observation?subject:Patient.identifier=nhs|n",
            q(
                &["Observation"],
                vec![vec![Predicate::Chain {
                    param: "subject".into(),
                    target_type: "Patient".into(),
                    query: Box::new(q(
                        &["Patient"],
                        vec![vec![idx("identifier", tok(NHS, "9000000001"))]],
                    )),
                }]],
            ),
        ),
        (
            "chained + code: Observation?subject.identifier=…&code=…",
            q(
                &["Observation"],
                vec![
                    vec![Predicate::Chain {
                        param: "subject".into(),
                        target_type: "Patient".into(),
                        query: Box::new(q(
                            &["Patient"],
                            vec![vec![idx("identifier", tok(NHS, "9000000001"))]],
                        )),
                    }],
                    vec![code()],
                ],
            ),
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
            "$everything: patient_key, all types",
            q(&[], vec![vec![Predicate::PatientKey("p1".into())]]),
        ),
        (
            "family+birthdate",
            q(
                &["Patient"],
                vec![
                    vec![idx("family", IndexTest::StringStartsWith("smith1".into()))],
                    vec![idx("birthdate", date(Prefix::Eq, 0, 10))],
                ],
            ),
        ),
        (
            "composite: Observation?code-value-quantity=loinc|8867-4$gt60",
            q(
                &["Observation"],
                vec![vec![idx(
                    "code-value-quantity",
                    IndexTest::Composite(vec![
                        tok(LOINC, "8867-4"),
                        IndexTest::Quantity {
                            prefix: Prefix::Gt,
                            value: 60.0,
                            low: 59.5,
                            high: 60.5,
                            system: None,
                            code: None,
                        },
                    ]),
                )]],
            ),
        ),
        (
            "code+date window: Observation?code=…&date=ge…&date=lt…",
            q(
                &["Observation"],
                vec![
                    vec![code()],
                    vec![idx("date", date(Prefix::Ge, 1_000, 1_999))],
                    vec![idx("date", date(Prefix::Lt, 5_000, 5_999))],
                ],
            ),
        ),
        (
            "token by system: Observation?code=loinc|",
            q(
                &["Observation"],
                vec![vec![idx("code", IndexTest::TokenSystem(LOINC.into()))]],
            ),
        ),
        (
            "token by text: Observation?code:text=heart",
            q(
                &["Observation"],
                vec![vec![idx("code", IndexTest::TokenText("heart".into()))]],
            ),
        ),
        (
            "sorted by date",
            SearchQuery {
                sort: vec![SortKey::Param {
                    param: "date".into(),
                    descending: true,
                }],
                ..q(
                    &["Observation"],
                    vec![vec![idx("subject", patient_ref("p1"))]],
                )
            },
        ),
    ];
    for (what, query) in &cases {
        let plan = store.explain(query).await.unwrap();
        assert_indexed(what, &plan);
        // A parameter's own token rows come from their index alone (the
        // partial ones carry `grp`, which the searches state); only the
        // parts of a composite (`p` aliases) read their table rows, for
        // `grp`.
        for line in plan.iter().filter(|l| l.contains("idx_token")) {
            assert!(
                line.starts_with("SEARCH p") && !line.starts_with("SEARCH pt")
                    || line.contains("USING COVERING INDEX"),
                "{what}: token rows looked up in their table:\n{}",
                plan.join("\n")
            );
        }
        // The results must also be right (the plan is for a real query).
        store.search(query).await.unwrap();
    }
    // In patient+code searches the code is probed, never materialised.
    for (what, drivers) in [
        (
            "reference+code: Observation?subject=Patient/p1&code=loinc|8867-4",
            0,
        ),
        ("code+reference (other order)", 0),
        ("chained + code: Observation?subject.identifier=…&code=…", 1),
        ("compartment: Patient/p1/Observation?code=…", 0),
        // The window drives (short rows by start, long ones by end).
        ("code+date window: Observation?code=…&date=ge…&date=lt…", 0),
    ] {
        let (_, query) = cases.iter().find(|(w, _)| *w == what).unwrap();
        let plan = store.explain(query).await.unwrap();
        assert_token_probed(what, &plan, drivers);
    }
    // A patient's resources with a code: that patient's rows of the code
    // drive, one range, instead of every resource of the patient.
    for what in [
        "reference+code: Observation?subject=Patient/p1&code=loinc|8867-4",
        "code+reference (other order)",
        "reference as records builds it (by id or as written) + code",
        "compartment: Patient/p1/Observation?code=…",
    ] {
        let (_, query) = cases.iter().find(|(w, _)| *w == what).unwrap();
        let plan = store.explain(query).await.unwrap();
        assert!(
            plan.iter().any(|l| l.contains(PATIENT_SCOPED)),
            "{what}: not driven by the patient's codes:\n{}",
            plan.join("\n")
        );
        // The other owners' matching references come from an index alone
        // (no hint forces it: a bulk load may drop these indexes for a while).
        assert!(
            plan.iter()
                .filter(|l| l.contains(" pr "))
                .all(|l| l.contains("USING COVERING INDEX idx_reference_")),
            "{what}: references not found from their index:\n{}",
            plan.join("\n")
        );
    }
    // Searches by system or display text use their indexes, which leave
    // out the parts of composite values (schema V11): the query must state
    // `grp IS NULL` for the partial index to be usable.
    for (what, index) in [
        (
            "token by system: Observation?code=loinc|",
            "idx_token_system",
        ),
        (
            "token by text: Observation?code:text=heart",
            "idx_token_text",
        ),
    ] {
        let (_, query) = cases.iter().find(|(w, _)| *w == what).unwrap();
        let plan = store.explain(query).await.unwrap();
        assert!(
            plan.iter().any(|l| l.contains(index)),
            "{what}: not found from {index}:\n{}",
            plan.join("\n")
        );
    }
    // A patient's whole record ($everything) in page order from one
    // covering index: no row lookups, no sort.
    let (_, record) = cases
        .iter()
        .find(|(w, _)| w.starts_with("$everything"))
        .unwrap();
    let plan = store.explain(record).await.unwrap();
    assert!(
        plan.iter()
            .any(|l| l.contains("USING COVERING INDEX current_patient (patient_key=?)"))
            && !plan.iter().any(|l| l.contains("TEMP B-TREE")),
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
    store.close().await;
}
