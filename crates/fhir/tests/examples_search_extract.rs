//! Search-value extraction over the official R4 material:
//!
//! - every official SearchParameter expression (and composite component
//!   expression) parses, and the only parameters extraction cannot index are the
//!   ones listed in [`EXPECTED_UNSUPPORTED`], with their reasons;
//! - extraction (and the Patient-compartment owner) runs over every resource of
//!   the official examples package — and every entry of its Bundles — without
//!   panicking, producing well-formed rows;
//! - spot checks on `Patient-example.json`, `Observation-example.json` and others.
//!
//! The package is `hl7.fhir.r4.examples@4.0.1`, found at `$CARELAYER_FHIR_PACKAGE`
//! (the unpacked `package/` directory) or at `<workspace>/.cache/fhir-r4/package`,
//! where it is fetched with `npm pack` if absent (as `scripts/gen_r4_tables.py`'s
//! `fetch_package()` does). This test never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use carelayer_fhir::fhirpath;
use carelayer_fhir::search::{
    HELD_ON_CURRENT, IndexEntry, IndexValue, SearchParamType, date_range, extract_index,
    patient_compartment_owner, registry, unsupported_params,
};
use serde_json::Value;

const PACKAGE: &str = "hl7.fhir.r4.examples@4.0.1";

/// Files of the package that are not resources.
const NOT_RESOURCES: &[&str] = &["package.json", "ig-r4.json", ".index.json"];

/// The official parameters extraction does not index, and why. Every other
/// parameter's expression parses and is evaluated.
const EXPECTED_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "http://hl7.org/fhir/SearchParameter/Location-near",
        "special: geographic proximity",
    ),
    (
        "http://hl7.org/fhir/SearchParameter/Resource-query",
        "no expression: a query mechanism",
    ),
    (
        "http://hl7.org/fhir/SearchParameter/filter",
        "special: _filter is a query language",
    ),
    (
        "http://hl7.org/fhir/SearchParameter/patient-extensions-Patient-age",
        "no expression in the definition",
    ),
    (
        "http://hl7.org/fhir/SearchParameter/patient-extensions-Patient-birthOrderBoolean",
        "no expression in the definition",
    ),
];

/// The unpacked package, located (or fetched) once per test binary: tests
/// running in parallel threads share a process id, so each fetching on its
/// own raced in the same `fetch-<pid>` folder on a fresh clone.
fn package_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(locate_or_fetch_package).clone()
}

fn locate_or_fetch_package() -> PathBuf {
    if let Ok(dir) = std::env::var("CARELAYER_FHIR_PACKAGE") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("package.json").is_file(),
            "CARELAYER_FHIR_PACKAGE={} has no package.json",
            dir.display()
        );
        return dir;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cache = root.join(".cache/fhir-r4");
    let dir = cache.join("package");
    if dir.join("package.json").is_file() {
        return dir;
    }
    // Fetch into a private directory, then move into place, so concurrent test
    // binaries fetching at once do not see a half-extracted package.
    let work = cache.join(format!("fetch-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let status = Command::new("npm")
        .args(["pack", PACKAGE, "--silent"])
        .current_dir(&work)
        .status()
        .expect("npm is needed to fetch the official R4 examples (or set CARELAYER_FHIR_PACKAGE)");
    assert!(status.success(), "npm pack {PACKAGE} failed");
    let tgz = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .expect("npm pack produced no tarball");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&tgz)
        .current_dir(&work)
        .status()
        .expect("tar is needed to unpack the examples package");
    assert!(status.success(), "tar xzf {} failed", tgz.display());
    // Losing the race to another fetcher is fine: its copy is complete.
    let _ = std::fs::rename(work.join("package"), &dir);
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        dir.join("package.json").is_file(),
        "no package at {}",
        dir.display()
    );
    dir
}

/// Every resource of the package: `(file name, resource)`, Bundle entries as
/// `file#entry[i]`.
fn all_resources() -> Vec<(String, Value)> {
    let dir = package_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if NOT_RESOURCES.contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        if v.get("resourceType").is_none() {
            continue;
        }
        if v["resourceType"] == "Bundle" {
            for (i, entry) in v["entry"].as_array().into_iter().flatten().enumerate() {
                if let Some(r) = entry.get("resource") {
                    out.push((format!("{name}#entry[{i}]"), r.clone()));
                }
            }
        }
        out.push((name, v));
    }
    assert!(out.len() > 5000, "only {} resources found", out.len());
    out
}

fn example(file: &str) -> Value {
    let text = std::fs::read_to_string(package_dir().join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn values(entries: &[IndexEntry], param: &str) -> Vec<IndexValue> {
    entries
        .iter()
        .filter(|e| e.param == param)
        .map(|e| e.value.clone())
        .collect()
}

fn token(system: Option<&str>, code: &str) -> (Option<String>, String) {
    (system.map(Into::into), code.into())
}

fn tokens(entries: &[IndexEntry], param: &str) -> Vec<(Option<String>, String)> {
    values(entries, param)
        .into_iter()
        .filter_map(|v| match v {
            IndexValue::Token {
                system,
                code: Some(code),
                ..
            } => Some((system, code)),
            _ => None,
        })
        .collect()
}

fn strings(entries: &[IndexEntry], param: &str) -> Vec<String> {
    values(entries, param)
        .into_iter()
        .filter_map(|v| match v {
            IndexValue::String { normalized, .. } => Some(normalized),
            _ => None,
        })
        .collect()
}

#[test]
fn every_official_expression_parses() {
    let r = registry();
    assert_eq!(r.all().len(), 1387);
    let mut failures = Vec::new();
    for d in r.all() {
        if let Some(e) = &d.expression
            && let Err(err) = fhirpath::parse(e)
        {
            failures.push(format!("{} ({e}): {err}", d.url));
        }
        for c in &d.components {
            if let Err(err) = fhirpath::parse(&c.expression) {
                failures.push(format!("{} component {}: {err}", d.url, c.expression));
            }
            assert!(
                c.kind.is_some(),
                "{}: unknown component {}",
                d.url,
                c.definition
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    let got = unsupported_params();
    assert_eq!(
        got.len(),
        EXPECTED_UNSUPPORTED.len(),
        "unsupported parameters changed: {got:#?}"
    );
    for ((url, reason), (want_url, want_reason)) in got.iter().zip(EXPECTED_UNSUPPORTED) {
        assert_eq!(url, want_url);
        assert!(
            reason.starts_with(want_reason),
            "{url}: reason {reason:?} should start with {want_reason:?}"
        );
    }
}

#[test]
fn extraction_runs_over_every_example() {
    let resources = all_resources();
    let r = registry();
    let mut rows = 0usize;
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut populated: BTreeSet<(String, String)> = BTreeSet::new();
    let mut owners = 0usize;
    let mut elapsed = Duration::ZERO;
    for (name, res) in &resources {
        let rt = res["resourceType"].as_str().unwrap().to_string();
        let t = Instant::now();
        let entries = std::panic::catch_unwind(|| extract_index(res))
            .unwrap_or_else(|_| panic!("extraction panicked on {name}"));
        elapsed += t.elapsed();
        let owner = std::panic::catch_unwind(|| patient_compartment_owner(res))
            .unwrap_or_else(|_| panic!("compartment owner panicked on {name}"));
        if owner.is_some() {
            owners += 1;
        }
        if rt == "Patient" {
            assert_eq!(owner.as_deref(), res["id"].as_str(), "{name}");
        }
        rows += entries.len();
        for e in &entries {
            // Derived rows (`subject:identifier` for logical references,
            // `identifier:of-type`) are tokens under their base parameter.
            if let Some((base, derived)) = e.param.split_once(':') {
                let def = r.param(&rt, base).unwrap_or_else(|| {
                    panic!("{name}: derived row {} for unknown parameter", e.param)
                });
                assert!(
                    matches!(derived, "identifier" | "of-type"),
                    "{name}: unexpected derived row {}",
                    e.param
                );
                assert!(
                    matches!(e.value, IndexValue::Token { .. }),
                    "{name}: derived row {} is not a token",
                    e.param
                );
                assert!(
                    def.is_supported(),
                    "{name}: derived row for unsupported {base}"
                );
                *by_kind.entry("token").or_default() += 1;
                continue;
            }
            let def = r
                .param(&rt, &e.param)
                .unwrap_or_else(|| panic!("{name}: row for unknown parameter {}", e.param));
            assert!(
                def.is_supported(),
                "{name}: row for unsupported {}",
                e.param
            );
            let kind = match &e.value {
                IndexValue::Token { system, code, text } => {
                    assert!(
                        system.is_some() || code.is_some() || text.is_some(),
                        "{name}: empty token for {}",
                        e.param
                    );
                    "token"
                }
                IndexValue::String { normalized, exact } => {
                    assert!(!exact.trim().is_empty(), "{name}: empty string row");
                    assert_eq!(normalized, &normalized.to_lowercase(), "{name}");
                    "string"
                }
                IndexValue::Date { low, high } => {
                    assert!(low <= high, "{name}: {} has low > high", e.param);
                    "date"
                }
                IndexValue::Number { value } => {
                    assert!(value.is_finite());
                    "number"
                }
                IndexValue::Quantity { value, .. } => {
                    assert!(value.is_finite());
                    "quantity"
                }
                IndexValue::Reference { url, .. } => {
                    assert!(!url.is_empty());
                    "reference"
                }
                IndexValue::Uri { uri } => {
                    assert!(!uri.is_empty());
                    "uri"
                }
                IndexValue::Composite { parts } => {
                    assert_eq!(parts.len(), def.components.len(), "{name}: {}", e.param);
                    "composite"
                }
            };
            assert_eq!(
                kind,
                def.kind.as_str(),
                "{name}: {} row of the wrong type",
                e.param
            );
            *by_kind.entry(kind).or_default() += 1;
            populated.insert((rt.clone(), e.param.clone()));
        }
        // `_id` and `_lastUpdated` are searched on the store's own columns:
        // never index rows.
        assert!(
            !entries
                .iter()
                .any(|e| HELD_ON_CURRENT.contains(&e.param.as_str())),
            "{name}: a row of a parameter held on current"
        );
    }
    let applicable: usize = resources
        .iter()
        .map(|(_, r)| r["resourceType"].as_str().unwrap())
        .collect::<BTreeSet<_>>()
        .iter()
        .map(|rt| {
            r.params_for(rt)
                .filter(|p| p.is_supported() && !HELD_ON_CURRENT.contains(&p.code.as_str()))
                .count()
        })
        .sum();
    eprintln!(
        "{} resources, {rows} index rows {by_kind:?}; {} of {applicable} applicable (type, param) pairs populated; \
         {owners} resources in a Patient compartment; extraction {:?} total, {:?} per resource",
        resources.len(),
        populated.len(),
        elapsed,
        elapsed / u32::try_from(resources.len()).unwrap(),
    );
    if let Ok(path) = std::env::var("CARELAYER_DUMP_UNPOPULATED") {
        let mut lines = String::new();
        for rt in resources
            .iter()
            .map(|(_, r)| r["resourceType"].as_str().unwrap())
            .collect::<BTreeSet<_>>()
        {
            for p in r.params_for(rt).filter(|p| p.is_supported()) {
                if !populated.contains(&(rt.to_string(), p.code.clone())) {
                    lines.push_str(&format!(
                        "{rt}\t{}\t{}\n",
                        p.code,
                        p.expression.as_deref().unwrap_or("")
                    ));
                }
            }
        }
        std::fs::write(path, lines).unwrap();
    }
    // The examples exercise more than half of the applicable parameters (most of
    // the rest have no data in any example, or only display-/identifier-only
    // references); a regression in the evaluator
    // (say choice types or resolve()) would empty many of them at once.
    assert!(
        populated.len() * 100 >= applicable * 55,
        "only {} of {applicable} (type, param) pairs produced values",
        populated.len()
    );
    for (rt, code) in [
        ("Observation", "value-quantity"),
        ("Observation", "combo-code-value-quantity"),
        ("Observation", "patient"),
        ("Condition", "onset-date"),
        ("Patient", "death-date"),
        ("MedicationRequest", "medication"),
        ("Encounter", "date"),
        ("Bundle", "composition"),
        ("MolecularSequence", "referenceseqid-variant-coordinate"),
        ("MolecularSequence", "window-start"),
        ("Observation", "code-value-concept"),
        ("DocumentReference", "relationship"),
        ("Patient", "phone"),
        ("Practitioner", "email"),
    ] {
        assert!(
            populated.contains(&(rt.to_string(), code.to_string())),
            "{rt}.{code} never populated"
        );
    }
}

#[test]
fn patient_example() {
    let p = example("Patient-example.json");
    let e = extract_index(&p);
    assert!(
        tokens(&e, "identifier").contains(&token(Some("urn:oid:1.2.36.146.595.217.0.1"), "12345"))
    );
    assert_eq!(strings(&e, "family"), vec!["chalmers", "windsor"]);
    assert!(strings(&e, "given").contains(&"peter".to_string()));
    assert!(strings(&e, "name").contains(&"chalmers".to_string()));
    let (lo, hi) = date_range("1974-12-25").unwrap();
    assert_eq!(
        values(&e, "birthdate"),
        vec![IndexValue::Date { low: lo, high: hi }]
    );
    assert_eq!(tokens(&e, "gender"), vec![token(None, "male")]);
    assert_eq!(tokens(&e, "active"), vec![token(None, "true")]);
    assert_eq!(tokens(&e, "deceased"), vec![token(None, "false")]);
    assert!(
        tokens(&e, "phone").contains(&token(Some("phone"), "(03) 5555 6473")),
        "{:?}",
        tokens(&e, "phone")
    );
    assert_eq!(strings(&e, "address-city"), vec!["pleasantville"]);
    assert_eq!(
        values(&e, "organization"),
        vec![IndexValue::Reference {
            target_type: Some("Organization".into()),
            target_id: Some("1".into()),
            url: "Organization/1".into()
        }]
    );
    assert_eq!(patient_compartment_owner(&p).as_deref(), Some("example"));
}

#[test]
fn observation_example() {
    let o = example("Observation-example.json");
    let e = extract_index(&o);
    let codes = tokens(&e, "code");
    assert!(codes.contains(&token(Some("http://loinc.org"), "29463-7")));
    assert_eq!(codes.len(), 4);
    assert!(values(&e, "code").contains(&IndexValue::Token {
        system: Some("http://loinc.org".into()),
        code: Some("29463-7".into()),
        text: Some("body weight".into())
    }));
    let subject = IndexValue::Reference {
        target_type: Some("Patient".into()),
        target_id: Some("example".into()),
        url: "Patient/example".into(),
    };
    assert_eq!(values(&e, "subject"), vec![subject.clone()]);
    assert_eq!(values(&e, "patient"), vec![subject]);
    assert_eq!(
        values(&e, "value-quantity"),
        vec![IndexValue::Quantity {
            value: 185.0,
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("[lb_av]".into()),
            unit: Some("lbs".into())
        }]
    );
    let (lo, hi) = date_range("2016-03-28").unwrap();
    assert_eq!(
        values(&e, "date"),
        vec![IndexValue::Date { low: lo, high: hi }]
    );
    assert_eq!(tokens(&e, "status"), vec![token(None, "final")]);
    assert_eq!(
        tokens(&e, "category"),
        vec![token(
            Some("http://terminology.hl7.org/CodeSystem/observation-category"),
            "vital-signs"
        )]
    );
    // code × value composites: 4 codings × 1 quantity
    assert_eq!(values(&e, "code-value-quantity").len(), 4);
    assert_eq!(patient_compartment_owner(&o).as_deref(), Some("example"));
}

#[test]
fn other_examples() {
    // Blood pressure: component composites pair each component's code with its value.
    let bp = extract_index(&example("Observation-blood-pressure.json"));
    let comps = values(&bp, "component-code-value-quantity");
    assert!(comps.iter().any(|v| matches!(v,
        IndexValue::Composite { parts } if matches!(&parts[..],
            [IndexValue::Token { code: Some(c), .. }, IndexValue::Quantity { value, .. }]
                if c == "8480-6" && (*value - 107.0).abs() < 1e-9))));

    // Condition onset as dateTime.
    let c = extract_index(&example("Condition-example.json"));
    assert!(!values(&c, "onset-date").is_empty());
    assert!(tokens(&c, "code").contains(&token(Some("http://snomed.info/sct"), "39065001")));

    // A message Bundle's `message` param points at its first entry.
    let b = example("Bundle-10bb101f-a121-4264-a920-67be9cb82c74.json");
    let e = extract_index(&b);
    assert_eq!(
        values(&e, "message"),
        vec![IndexValue::Reference {
            target_type: Some("MessageHeader".into()),
            target_id: Some("267b18ce-3d37-4581-9baa-6fada338038b".into()),
            url: "MessageHeader/267b18ce-3d37-4581-9baa-6fada338038b".into()
        }]
    );

    // Every parameter type shows up somewhere in the registry with an expression.
    let kinds: BTreeSet<&str> = registry()
        .all()
        .iter()
        .filter(|d| d.is_supported())
        .map(|d| d.kind.as_str())
        .collect();
    assert!(kinds.contains(SearchParamType::Composite.as_str()));
    assert_eq!(kinds.len(), 8, "{kinds:?}");
}
