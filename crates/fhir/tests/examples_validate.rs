//! Every JSON file of the official R4 examples package must validate, except
//! the examples listed in [`KNOWN_INVALID`], which the package gets wrong.
//!
//! The package is `hl7.fhir.r4.examples@4.0.1` (5,307 JSON files, 5,305 of them resources: examples plus
//! the conformance resources themselves). It is found at `$CARELAYER_FHIR_PACKAGE`
//! (the unpacked `package/` directory) or at `<workspace>/.cache/fhir-r4/package`,
//! where it is fetched with `npm pack` if absent (the layout of
//! `scripts/gen_r4_tables.py`'s `fetch_package()`). This test never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use carelayer_fhir::validate::validate_resource;
use serde_json::Value;

const PACKAGE: &str = "hl7.fhir.r4.examples@4.0.1";

/// Files of the package that are not resources.
const NOT_RESOURCES: &[&str] = &["package.json", "ig-r4.json"];

/// Official examples that are invalid R4, with the reason. The test fails if one
/// of these starts validating (the list must stay exact) or another fails.
const KNOWN_INVALID: &[(&str, &str)] = &[
    // ImplementationGuide.name and .status are 1..1; the core spec's own IG
    // resource has neither.
    (
        "ImplementationGuide-fhir.json",
        "ImplementationGuide.name and .status (1..1) missing",
    ),
    // Nested items of the first group have `text` and extensions but no
    // `linkId` (Questionnaire.item.linkId is 1..1, also for item.item).
    (
        "Questionnaire-qs1.json",
        "Questionnaire.item.item.linkId (1..1) missing",
    ),
    // Extension-based SearchParameters generated without `base` (1..*).
    (
        "SearchParameter-codesystem-extensions-CodeSystem-author.json",
        "SearchParameter.base (1..*) missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-effective.json",
        "SearchParameter.base (1..*) missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-end.json",
        "SearchParameter.base (1..*) missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-keyword.json",
        "SearchParameter.base (1..*) missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-workflow.json",
        "SearchParameter.base (1..*) missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-author.json",
        "SearchParameter.base (1..*) missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-effective.json",
        "SearchParameter.base (1..*) missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-end.json",
        "SearchParameter.base (1..*) missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-keyword.json",
        "SearchParameter.base (1..*) missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-workflow.json",
        "SearchParameter.base (1..*) missing",
    ),
    // The id `questionnaireresponse-extensions-QuestionnaireResponse-item-subject`
    // has 68 characters; an id has at most 64.
    (
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        "id longer than 64 characters",
    ),
];

/// The unpacked package, located (or fetched) once per test binary so that
/// tests running in parallel do not race to download it.
fn package_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
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
    std::fs::create_dir_all(&cache).unwrap();
    let status = Command::new("npm")
        .args(["pack", PACKAGE, "--silent"])
        .current_dir(&cache)
        .status()
        .expect("npm is needed to fetch the official R4 examples (or set CARELAYER_FHIR_PACKAGE)");
    assert!(status.success(), "npm pack {PACKAGE} failed");
    let tgz = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("hl7.fhir.r4.examples-") && n.ends_with(".tgz"))
        })
        .expect("npm pack produced no tarball");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&tgz)
        .current_dir(&cache)
        .status()
        .expect("tar is needed to unpack the package");
    assert!(status.success(), "tar xzf {} failed", tgz.display());
    assert!(dir.join("package.json").is_file());
    dir
}

/// The resource files of the package, sorted.
fn resource_files() -> Vec<PathBuf> {
    let dir = package_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| !NOT_RESOURCES.contains(&p.file_name().unwrap().to_str().unwrap()))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        5305,
        "unexpected package content in {}",
        dir.display()
    );
    files
}

fn file_name(path: &Path) -> &str {
    path.file_name().unwrap().to_str().unwrap()
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_official_example_validates_except_the_known_invalid() {
    let files = resource_files();

    let mut failing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut total = std::time::Duration::ZERO;
    for path in &files {
        let value = load(path);
        let start = Instant::now();
        let issues = validate_resource(&value);
        total += start.elapsed();
        if !issues.is_empty() {
            let name = file_name(path).to_owned();
            failing.insert(name, issues.iter().map(ToString::to_string).collect());
        }
    }
    eprintln!(
        "validated {} resources in {:?} ({:?} per resource)",
        files.len(),
        total,
        total / files.len() as u32
    );

    let known: BTreeMap<&str, &str> = KNOWN_INVALID.iter().copied().collect();
    assert_eq!(
        known.len(),
        KNOWN_INVALID.len(),
        "duplicate entry in KNOWN_INVALID"
    );
    let mut report = String::new();
    for (name, issues) in &failing {
        if !known.contains_key(name.as_str()) {
            report.push_str(&format!("unexpected failure: {name}\n"));
            for i in issues.iter().take(5) {
                report.push_str(&format!("    {i}\n"));
            }
        }
    }
    for (name, reason) in &known {
        if !failing.contains_key(*name) {
            report.push_str(&format!(
                "listed as invalid but validates: {name} ({reason})\n"
            ));
        }
    }
    assert!(report.is_empty(), "{}\n{report}", failing.len());
}

const BOGUS: &str = "carelayerBogus";

/// Mutates every part of a resource and records the issue each mutation must
/// cause, following the validator's location rules: adds [`BOGUS`] to every
/// JSON object (an unknown property) and flips the JSON type of every
/// primitive (string → number, number and boolean → string), leaving
/// `resourceType` and `null`s alone.
fn mutate(value: &mut Value, loc: &str, expected: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let loc = match map.get("resourceType") {
                Some(Value::String(rt)) if loc.is_empty() => rt.clone(),
                _ => loc.to_owned(),
            };
            for (k, v) in map.iter_mut() {
                if k == "resourceType" {
                    continue;
                }
                let name = k.strip_prefix('_').unwrap_or(k);
                mutate(v, &format!("{loc}.{name}"), expected);
            }
            map.insert(BOGUS.to_owned(), Value::Bool(true));
            expected.push(format!("{loc}.{BOGUS}: unknown property '{BOGUS}'"));
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                mutate(v, &format!("{loc}[{i}]"), expected);
            }
        }
        Value::Null => {}
        Value::String(_) => {
            *value = Value::from(1);
            expected.push(format!("{loc}: a string, found a number"));
        }
        Value::Number(_) => {
            *value = Value::from("1");
            expected.push(format!("{loc}: a number, found a string"));
        }
        Value::Bool(_) => {
            *value = Value::from("true");
            expected.push(format!("{loc}: a boolean, found a string"));
        }
    }
}

/// Coverage of the walk: in every valid example, an unknown property planted
/// in *every* object and a wrong JSON type given to *every* primitive are each
/// reported, at the right location, and nothing else is. So no part of any
/// official example escapes validation.
#[test]
fn every_part_of_every_example_is_checked() {
    let known: Vec<&str> = KNOWN_INVALID.iter().map(|(n, _)| *n).collect();
    let mut mutations = 0usize;
    for path in resource_files() {
        if known.contains(&file_name(&path)) {
            continue;
        }
        let mut value = load(&path);
        let mut expected = Vec::new();
        mutate(&mut value, "", &mut expected);
        mutations += expected.len();
        let mut found: Vec<String> = validate_resource(&value)
            .iter()
            .map(|i| {
                let what = match i.message.rsplit_once(" must be a JSON ") {
                    // "string must be a JSON string, found a number" → "a string, found a number"
                    Some((_, rest)) => format!("a {rest}"),
                    None => i.message.clone(),
                };
                format!("{}: {what}", i.location)
            })
            .collect();
        found.sort();
        expected.sort();
        assert_eq!(found, expected, "{}", path.display());
    }
    eprintln!("made and found {mutations} mutations");
}

/// Release-mode timing of a typical write: `cargo test --release -p
/// carelayer-fhir --test examples_validate -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run in release"]
fn timing_of_typical_resources() {
    let dir = package_dir();
    for name in [
        "Observation-example.json",
        "Observation-blood-pressure.json",
        "Patient-example.json",
        "Bundle-bundle-transaction.json",
    ] {
        let value = load(&dir.join(name));
        assert!(validate_resource(&value).is_empty());
        let n = 20_000u32;
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(validate_resource(std::hint::black_box(&value)));
        }
        eprintln!("{name}: {:?} per validation", start.elapsed() / n);
    }
}
