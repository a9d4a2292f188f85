#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use super::*;

fn values_of(entries: &[IndexEntry], param: &str) -> Vec<IndexValue> {
    entries
        .iter()
        .filter(|e| e.param == param)
        .map(|e| e.value.clone())
        .collect()
}

fn tok(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
    IndexValue::Token {
        system: system.map(Into::into),
        code: code.map(Into::into),
        text: text.map(Into::into),
    }
}

fn reference(t: Option<&str>, id: Option<&str>, url: &str) -> IndexValue {
    IndexValue::Reference {
        target_type: t.map(Into::into),
        target_id: id.map(Into::into),
        url: url.into(),
    }
}

fn day(s: &str) -> IndexValue {
    let (low, high) = date_range(s).unwrap();
    IndexValue::Date { low, high }
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "pat1",
        "meta": {
            "lastUpdated": "2024-01-02T03:04:05.678Z",
            "tag": [{"system": "http://t", "code": "x"}],
            "profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]
        },
        "identifier": [{
            "system": "https://fhir.nhs.uk/Id/nhs-number",
            "value": "9434765919",
            "type": {"text": "NHS Number"}
        }],
        "active": true,
        "name": [{"family": "Ström", "given": ["Åsa", "Maria"], "prefix": ["Dr"]}],
        "telecom": [
            {"system": "phone", "value": "0113 496 0000", "use": "home"},
            {"system": "email", "value": "asa@example.org"}
        ],
        "gender": "female",
        "birthDate": "1980-03",
        "deceasedDateTime": "2020-01-01T10:00:00+01:00",
        "address": [{"line": ["1 High St"], "city": "Leeds", "postalCode": "LS1 1AA"}],
        "generalPractitioner": [{"reference": "Organization/Y12345"}],
        "managingOrganization": {"identifier": {"value": "RR8"}}
    })
}

#[test]
fn registry_loads_all_definitions() {
    let r = registry();
    assert_eq!(r.all().len(), 1387);
    let p = r.param("Patient", "birthdate").unwrap();
    assert_eq!(p.kind, SearchParamType::Date);
    assert_eq!(r.param("Patient", "_id").unwrap().code(), "_id");
    assert!(r.param("Patient", "nonsense").is_none());
    assert!(r.param("Observation", "code").is_some());
    // base-Resource params apply to unknown types and to "Resource" itself
    assert!(r.param("Resource", "_lastUpdated").is_some());
    assert!(r.param("NotAType", "_id").is_some());
    assert!(
        r.param("Bundle", "_text").is_none(),
        "_text is DomainResource only"
    );
    assert!(r.params_for("Observation").len() > 30);
    assert!(
        r.by_url("http://hl7.org/fhir/SearchParameter/individual-birthdate")
            .is_some()
    );
    let combo = r.param("Observation", "combo-code-value-quantity").unwrap();
    assert_eq!(combo.components[1].kind, Some(SearchParamType::Quantity));
    // R4 errata: the definitions of this composite's components are swapped.
    let rel = r.param("DocumentReference", "relationship").unwrap();
    let kinds: Vec<_> = rel.components.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        vec![
            Some(SearchParamType::Token),
            Some(SearchParamType::Reference)
        ]
    );
}

#[test]
fn unsupported_are_only_special_or_without_expression() {
    let list = unsupported_params();
    let urls: Vec<&str> = list.iter().map(|(u, _)| *u).collect();
    assert_eq!(
        urls,
        vec![
            "http://hl7.org/fhir/SearchParameter/Location-near",
            "http://hl7.org/fhir/SearchParameter/Resource-query",
            "http://hl7.org/fhir/SearchParameter/filter",
            "http://hl7.org/fhir/SearchParameter/patient-extensions-Patient-age",
            "http://hl7.org/fhir/SearchParameter/patient-extensions-Patient-birthOrderBoolean",
        ],
        "{list:#?}"
    );
}

#[test]
fn patient_values() {
    let e = extract_index(&patient());
    assert!(values_of(&e, "_id").is_empty());
    assert_eq!(
        registry().extract_param(&patient(), "_id"),
        vec![tok(None, Some("pat1"), None)]
    );
    // Searched on the store's own column: no index rows, but the value is
    // still there for whoever evaluates the parameter itself.
    assert!(values_of(&e, "_lastUpdated").is_empty());
    let (lo, hi) = date_range("2024-01-02T03:04:05.678Z").unwrap();
    assert_eq!(
        registry().extract_param(&patient(), "_lastUpdated"),
        vec![IndexValue::Date { low: lo, high: hi }]
    );
    assert_eq!(
        values_of(&e, "_tag"),
        vec![tok(Some("http://t"), Some("x"), None)]
    );
    assert_eq!(
        values_of(&e, "_profile"),
        vec![IndexValue::Uri {
            uri: "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient".into()
        }]
    );
    assert_eq!(
        values_of(&e, "identifier"),
        vec![tok(
            Some("https://fhir.nhs.uk/Id/nhs-number"),
            Some("9434765919"),
            Some("nhs number")
        )]
    );
    let family = values_of(&e, "family");
    assert_eq!(
        family,
        vec![IndexValue::String {
            normalized: "strom".into(),
            exact: "Ström".into()
        }]
    );
    let names: Vec<String> = values_of(&e, "name")
        .into_iter()
        .map(|v| match v {
            IndexValue::String { normalized, .. } => normalized,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, vec!["strom", "asa", "maria", "dr"]);
    assert_eq!(
        values_of(&e, "address-postalcode"),
        vec![IndexValue::String {
            normalized: "ls11aa".into(), // postcodes match with spaces ignored
            exact: "LS1 1AA".into()
        }]
    );
    assert_eq!(values_of(&e, "address").len(), 3);
    assert_eq!(values_of(&e, "birthdate"), vec![day("1980-03")]);
    assert_eq!(
        values_of(&e, "death-date"),
        vec![day("2020-01-01T10:00:00+01:00")]
    );
    assert_eq!(
        values_of(&e, "deceased"),
        vec![tok(None, Some("true"), None)]
    );
    assert_eq!(
        values_of(&e, "gender"),
        vec![tok(None, Some("female"), None)]
    );
    assert_eq!(values_of(&e, "active"), vec![tok(None, Some("true"), None)]);
    assert_eq!(
        values_of(&e, "phone"),
        vec![tok(Some("phone"), Some("0113 496 0000"), None)]
    );
    assert_eq!(
        values_of(&e, "email"),
        vec![tok(Some("email"), Some("asa@example.org"), None)]
    );
    assert_eq!(values_of(&e, "telecom").len(), 2);
    assert_eq!(
        values_of(&e, "general-practitioner"),
        vec![reference(
            Some("Organization"),
            Some("Y12345"),
            "Organization/Y12345"
        )]
    );
    // logical reference (identifier only): not indexed
    assert!(values_of(&e, "organization").is_empty());
}

#[test]
fn deceased_boolean_false_is_false() {
    let p = json!({"resourceType": "Patient", "id": "a", "deceasedBoolean": false});
    assert_eq!(
        values_of(&extract_index(&p), "deceased"),
        vec![tok(None, Some("false"), None)]
    );
    let p = json!({"resourceType": "Patient", "id": "a"});
    assert_eq!(
        values_of(&extract_index(&p), "deceased"),
        vec![tok(None, Some("false"), None)]
    );
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "bp",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}],
            "text": "Blood pressure"
        },
        "subject": {"reference": "https://example.org/fhir/Patient/p9/_history/3"},
        "performer": [{"reference": "Practitioner/dr1"}, {"reference": "Patient/p1"}],
        "effectivePeriod": {"start": "2012-09-17"},
        "valueQuantity": {"value": 1.5e2, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 107, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {"value": 60, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
            }
        ]
    })
}

fn qty(value: f64) -> IndexValue {
    IndexValue::Quantity {
        value,
        system: Some("http://unitsofmeasure.org".into()),
        code: Some("mm[Hg]".into()),
        unit: None,
    }
}

#[test]
fn observation_values() {
    let e = extract_index(&observation());
    assert_eq!(
        values_of(&e, "code"),
        vec![
            tok(
                Some("http://loinc.org"),
                Some("85354-9"),
                Some("blood pressure panel")
            ),
            tok(None, None, Some("blood pressure")),
        ]
    );
    assert_eq!(
        values_of(&e, "subject"),
        vec![reference(
            Some("Patient"),
            Some("p9"),
            "https://example.org/fhir/Patient/p9/_history/3"
        )]
    );
    assert_eq!(
        values_of(&e, "patient"),
        values_of(&e, "subject"),
        "patient = subject.where(resolve() is Patient)"
    );
    assert_eq!(values_of(&e, "performer").len(), 2);
    assert_eq!(
        values_of(&e, "date"),
        vec![IndexValue::Date {
            low: date_range("2012-09-17").unwrap().0,
            high: i64::MAX
        }]
    );
    assert_eq!(
        values_of(&e, "value-quantity"),
        vec![IndexValue::Quantity {
            value: 150.0,
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("mm[Hg]".into()),
            unit: Some("mmHg".into())
        }]
    );
    let mut comp = values_of(&e, "component-value-quantity");
    comp.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    assert_eq!(comp, vec![qty(107.0), qty(60.0)]);
    assert_eq!(
        values_of(&e, "component-code-value-quantity"),
        vec![
            IndexValue::Composite {
                parts: vec![
                    tok(Some("http://loinc.org"), Some("8480-6"), None),
                    qty(107.0)
                ]
            },
            IndexValue::Composite {
                parts: vec![
                    tok(Some("http://loinc.org"), Some("8462-4"), None),
                    qty(60.0)
                ]
            },
        ]
    );
    // combo: the observation itself (code × value) and each component
    assert_eq!(values_of(&e, "combo-code-value-quantity").len(), 4);
    assert!(values_of(&e, "value-concept").is_empty());
    assert_eq!(
        values_of(&e, "status"),
        vec![tok(None, Some("final"), None)]
    );
}

#[test]
fn multi_base_expressions_only_use_their_branch() {
    // `code` for Condition is `AllergyIntolerance.code | … | Condition.code | …`
    let c = json!({
        "resourceType": "Condition",
        "id": "c1",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "subject": {"reference": "Patient/p1"},
        "onsetAge": {"value": 52, "unit": "yr", "system": "http://unitsofmeasure.org", "code": "a"},
        "abatementString": "in remission",
        "recordedDate": "2013-03-11"
    });
    let e = extract_index(&c);
    assert_eq!(
        values_of(&e, "code"),
        vec![tok(Some("http://snomed.info/sct"), Some("44054006"), None)]
    );
    assert_eq!(values_of(&e, "onset-age").len(), 1);
    assert_eq!(
        values_of(&e, "abatement-string"),
        vec![IndexValue::String {
            normalized: "in remission".into(),
            exact: "in remission".into()
        }]
    );
    assert!(values_of(&e, "onset-date").is_empty());
    assert_eq!(patient_compartment_owner(&c).as_deref(), Some("p1"));
}

#[test]
fn compartment_owner() {
    assert_eq!(
        patient_compartment_owner(&patient()).as_deref(),
        Some("pat1")
    );
    // subject is an absolute URL (not local): falls through to performer Patient/p1
    assert_eq!(
        patient_compartment_owner(&observation()).as_deref(),
        Some("p1")
    );
    let o = json!({"resourceType": "Observation", "subject": {"reference": "Patient/123"}});
    assert_eq!(patient_compartment_owner(&o).as_deref(), Some("123"));
    let o = json!({"resourceType": "Observation", "subject": {"reference": "Group/1"}});
    assert_eq!(patient_compartment_owner(&o), None);
    let o = json!({"resourceType": "Organization", "id": "x"});
    assert_eq!(patient_compartment_owner(&o), None);
    let a = json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/a1"}});
    assert_eq!(patient_compartment_owner(&a).as_deref(), Some("a1"));
    assert_eq!(patient_compartment_owner(&json!({"id": "x"})), None);
    assert_eq!(
        compartment_params("Patient", "Observation"),
        &["subject".to_string(), "performer".to_string()]
    );
    assert!(compartment_params("Patient", "Organization").is_empty());
    assert!(compartment_params("Nope", "Observation").is_empty());
}

#[test]
fn references_and_canonicals() {
    let q = json!({
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "http://example.org/Questionnaire/q1|2.0",
        "subject": {"reference": "urn:uuid:3b1f1c52-2f24-4b9b-8c2a-3d1f0b7a2d11"},
        "author": {"reference": "#c1"},
        "contained": [{"resourceType": "Practitioner", "id": "c1"}]
    });
    let e = extract_index(&q);
    assert_eq!(
        values_of(&e, "questionnaire"),
        vec![reference(
            None,
            None,
            "http://example.org/Questionnaire/q1|2.0"
        )]
    );
    assert_eq!(
        values_of(&e, "subject"),
        vec![reference(
            None,
            None,
            "urn:uuid:3b1f1c52-2f24-4b9b-8c2a-3d1f0b7a2d11"
        )]
    );
    assert!(values_of(&e, "patient").is_empty());
    assert_eq!(values_of(&e, "author"), vec![reference(None, None, "#c1")]);
}

#[test]
fn money_timing_and_range() {
    let ci = json!({
        "resourceType": "ChargeItem",
        "priceOverride": {"value": 40, "currency": "EUR"},
        "occurrenceTiming": {"event": ["2017-01-25", "2017-02-01T10:00:00Z"]}
    });
    let e = extract_index(&ci);
    assert_eq!(
        values_of(&e, "price-override"),
        vec![IndexValue::Quantity {
            value: 40.0,
            system: Some(ISO_4217.into()),
            code: Some("EUR".into()),
            unit: None
        }]
    );
    assert_eq!(
        values_of(&e, "occurrence"),
        vec![day("2017-01-25"), day("2017-02-01T10:00:00Z")]
    );
    let c = json!({
        "resourceType": "Condition",
        "onsetRange": {"low": {"value": 10, "unit": "a"}, "high": {"value": 20, "unit": "a"}}
    });
    assert_eq!(values_of(&extract_index(&c), "onset-age").len(), 2);
}

#[test]
fn hostile_input_does_not_panic() {
    for v in [
        json!(null),
        json!([]),
        json!("Patient"),
        json!({"resourceType": 5}),
        json!({"resourceType": "Patient", "name": "not-an-array", "birthDate": 19800101}),
        json!({"resourceType": "Patient", "name": [null, 1, "x", {"given": [null, 2]}]}),
        json!({"resourceType": "Observation", "valueQuantity": {"value": "abc"}, "code": []}),
        json!({"resourceType": "Observation", "effectiveDateTime": "9999-99-99"}),
        json!({"resourceType": "Unknown", "id": "x", "meta": {"lastUpdated": "2020"}}),
    ] {
        let _ = extract_index(&v);
        let _ = patient_compartment_owner(&v);
    }
    // An unknown type still gets the Resource-level parameters.
    assert_eq!(
        registry().extract_param(&json!({"resourceType": "Unknown", "id": "x"}), "_id"),
        vec![tok(None, Some("x"), None)]
    );
}

#[test]
fn extraction_is_fast_enough() {
    // A smoke check only (timings belong in benchmarks); debug builds are slow,
    // so the bound is generous.
    let o = observation();
    let _ = extract_index(&o);
    let n = 200;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(extract_index(std::hint::black_box(&o)));
    }
    let per = t.elapsed() / n;
    eprintln!("extract_index(Observation): {per:?} per resource");
    assert!(per < std::time::Duration::from_millis(20), "{per:?}");
}
