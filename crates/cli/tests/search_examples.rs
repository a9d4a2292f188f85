//! Generated search test over the whole official package
//! (`hl7.fhir.r4.examples@4.0.1`): every resource is stored in one server
//! (PUT over HTTP); then, for every stored resource and every search
//! parameter of its type that yields a value (evaluated with the official
//! definitions on the stored JSON), a search by that value — written as a
//! FHIR query string and parsed by `Records::search`, exactly as HTTP
//! requests are — finds the resource, and a search by a different value
//! does not. Searches are scoped with `_id` so each answer is one row.
//!
//! Values are written per type: token `system|code` (or `code`; `:text`
//! for text-only rows), string as written (prefix match), date as
//! `ge{low}` + `le{high}` at microsecond precision (open ends left out),
//! number/quantity at the value's own precision (with `|system|code`),
//! reference `Type/id` or the URL as written, uri as written, composite
//! `a$b`. The different value: a code/string/uri/reference that no row
//! has, or a date/number entirely before every row.
//!
//! Exceptions (listed in [`EXCEPTIONS`] with the reason) are the only pairs
//! allowed to fail; the test also fails when an exception no longer applies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use carelayer_fhir::search::{IndexValue, extract_index};
use carelayer_records::{AuditChannel, Caller, Records, SearchRequest, parse_query_string};
use common::{TestServer, package_dir};
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

/// `(resource type, parameter, reason)` pairs whose generated search is
/// allowed to fail, for every resource of that type.
const EXCEPTIONS: &[(&str, &str, &str)] = &[];

const CONCURRENCY: usize = 8;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '|' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn instant(micros: i64) -> String {
    carelayer_records::clock::format_instant(micros)
}

fn num(v: f64) -> String {
    format!("{v:?}").trim_end_matches(".0").to_owned()
}

/// The query parameters (ANDed) that must find a resource with `value`,
/// or `None` when the value cannot be written as a search.
fn positive(param: &str, value: &IndexValue) -> Option<Vec<(String, String)>> {
    let one = |v: String| Some(vec![(param.to_owned(), v)]);
    match value {
        IndexValue::Token { system, code, text } => match (system, code, text) {
            (Some(s), Some(c), _) => one(format!("{}|{}", esc(s), esc(c))),
            (None, Some(c), _) => one(esc(c)),
            (Some(s), None, _) => one(format!("{}|", esc(s))),
            (None, None, Some(t)) if !t.trim().is_empty() => {
                Some(vec![(format!("{param}:text"), esc(t))])
            }
            _ => None,
        },
        IndexValue::String { exact, .. } if !exact.trim().is_empty() => one(esc(exact)),
        IndexValue::String { .. } => None,
        IndexValue::Date { low, high } => {
            let mut v = Vec::new();
            if *low != i64::MIN {
                v.push((param.to_owned(), format!("ge{}", instant(*low))));
            }
            if *high != i64::MAX {
                v.push((param.to_owned(), format!("le{}", instant(*high))));
            }
            (!v.is_empty()).then_some(v)
        }
        IndexValue::Number { value } => one(num(*value)),
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
        } => one(match (system, code, unit) {
            (Some(s), Some(c), _) => format!("{}|{}|{}", num(*value), esc(s), esc(c)),
            (None, Some(c), _) | (None, None, Some(c)) => format!("{}||{}", num(*value), esc(c)),
            _ => num(*value),
        }),
        IndexValue::Reference {
            target_type,
            target_id,
            url,
        } => match (target_type, target_id) {
            (Some(t), Some(id)) => one(format!("{t}/{}", esc(id))),
            _ if url.starts_with('#') => None,
            _ => one(esc(url)),
        },
        IndexValue::Uri { uri } => one(esc(uri)),
        IndexValue::Composite { parts } => {
            let mut out = Vec::new();
            for p in parts {
                out.push(component(p)?);
            }
            one(out.join("$"))
        }
    }
}

/// A composite part as one value (no ANDing inside a composite).
fn component(value: &IndexValue) -> Option<String> {
    Some(match value {
        IndexValue::Date { low, high } => {
            if *low != i64::MIN {
                format!("ge{}", instant(*low))
            } else if *high != i64::MAX {
                format!("le{}", instant(*high))
            } else {
                return None;
            }
        }
        IndexValue::Token {
            code: None,
            system: None,
            ..
        } => return None,
        IndexValue::String { exact, .. } => esc(exact),
        other => positive("x", other)?.pop()?.1,
    })
}

/// A search that must not find a resource whose rows for the parameter are `values`.
fn negative(param: &str, values: &[IndexValue]) -> Option<Vec<(String, String)>> {
    let first = values.first()?;
    let one = |v: String| Some(vec![(param.to_owned(), v)]);
    match first {
        IndexValue::Token { system, code, .. } => match (system, code) {
            (Some(s), Some(c)) => one(format!("{}|{}-no-such-code", esc(s), esc(c))),
            (None, Some(c)) => one(format!("{}-no-such-code", esc(c))),
            _ => None,
        },
        IndexValue::String { exact, .. } => one(format!("{}zzqxj", esc(exact))),
        IndexValue::Date { .. } => {
            let lowest = values
                .iter()
                .filter_map(|v| match v {
                    IndexValue::Date { low, .. } => Some(*low),
                    _ => None,
                })
                .min()?;
            (lowest != i64::MIN).then(|| vec![(param.to_owned(), format!("lt{}", instant(lowest)))])
        }
        IndexValue::Number { .. } | IndexValue::Quantity { .. } => {
            let lowest = values
                .iter()
                .filter_map(|v| match v {
                    IndexValue::Number { value } | IndexValue::Quantity { value, .. } => {
                        Some(*value)
                    }
                    _ => None,
                })
                .fold(f64::INFINITY, f64::min);
            let below = if lowest.is_finite() {
                lowest.abs() * -2.0 - 10.0
            } else {
                return None;
            };
            one(format!("lt{}", num(below)))
        }
        IndexValue::Reference {
            target_type: Some(t),
            target_id: Some(id),
            ..
        } => one(format!("{t}/{}-no-such-id", esc(id))),
        IndexValue::Reference { url, .. } if url.contains("://") => {
            one(format!("{}-no-such-url", esc(url)))
        }
        IndexValue::Reference { .. } => None,
        IndexValue::Uri { uri } => one(format!("{}-no-such-uri", esc(uri))),
        IndexValue::Composite { parts } => {
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                if i == 0 {
                    out.push(negative("x", std::slice::from_ref(p))?.pop()?.1);
                } else {
                    out.push(component(p)?);
                }
            }
            one(out.join("$"))
        }
    }
}

async fn found(
    records: &Records,
    caller: &Caller,
    ty: &str,
    id: &str,
    params: &[(String, String)],
) -> Result<bool, String> {
    let mut all = vec![("_id".to_owned(), id.to_owned())];
    all.extend(params.iter().cloned());
    // Round-trip through the query-string grammar HTTP uses.
    let query = all
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                carelayer_records::encode_query_component(k),
                carelayer_records::encode_query_component(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let request = SearchRequest {
        resource_type: Some(ty.to_owned()),
        params: parse_query_string(&query),
        lenient: false,
    };
    match records.search(caller, &request).await {
        Ok(outcome) => Ok(outcome.matches.iter().any(|m| m.id == id)),
        Err(e) => Err(format!("{e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_is_found_by_every_parameter_value() {
    // The biggest examples (Bundle-resources.json) are 35 MB.
    let s = TestServer::start_with(|c| c.http.max_body_bytes = 256 * 1024 * 1024).await;
    let records: Arc<Records> = Arc::clone(&s.server.as_ref().unwrap().records);
    let dir = package_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n != "package.json" && n != "ig-r4.json"
        })
        .collect();
    files.sort();
    // Store everything; keep what the server accepted (as stored).
    let stored: Vec<Value> = futures::stream::iter(files)
        .map(|path| {
            let s = &s;
            async move {
                let bytes = std::fs::read(&path).unwrap();
                let v: Value = serde_json::from_slice(&bytes).ok()?;
                let url = format!("{}/{}", v["resourceType"].as_str()?, v["id"].as_str()?);
                let r = s.send_raw(Method::PUT, &url, &bytes).await;
                matches!(r.status.as_u16(), 200 | 201).then(|| r.json)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|v| async move { v })
        .collect()
        .await;
    assert!(stored.len() > 5000, "only {} examples stored", stored.len());

    let caller = Caller::local_operator(AuditChannel::Rest);
    let exceptions: BTreeSet<(&str, &str)> = EXCEPTIONS.iter().map(|(t, p, _)| (*t, *p)).collect();
    let mut jobs = Vec::new();
    for resource in &stored {
        let ty = resource["resourceType"].as_str().unwrap().to_owned();
        let id = resource["id"].as_str().unwrap().to_owned();
        let mut by_param: BTreeMap<String, Vec<IndexValue>> = BTreeMap::new();
        for e in extract_index(resource) {
            if e.param.contains(':') {
                continue; // derived rows are exercised through their modifiers
            }
            by_param.entry(e.param).or_default().push(e.value);
        }
        for (param, values) in by_param {
            let pos = positive(&param, &values[0]);
            let neg = negative(&param, &values);
            jobs.push((ty.clone(), id.clone(), param, pos, neg));
        }
    }
    let total = jobs.len();
    let results: Vec<(String, String, String, Option<String>)> = futures::stream::iter(jobs)
        .map(|(ty, id, param, pos, neg)| {
            let records = &records;
            let caller = &caller;
            async move {
                let mut problem = None;
                if let Some(p) = &pos {
                    match found(records, caller, &ty, &id, p).await {
                        Ok(true) => {}
                        Ok(false) => problem = Some(format!("not found by {p:?}")),
                        Err(e) => problem = Some(format!("{p:?} failed: {e}")),
                    }
                }
                if problem.is_none()
                    && let Some(n) = &neg
                {
                    match found(records, caller, &ty, &id, n).await {
                        Ok(false) => {}
                        Ok(true) => problem = Some(format!("found by the different value {n:?}")),
                        Err(e) => problem = Some(format!("{n:?} failed: {e}")),
                    }
                }
                (ty, id, param, problem)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut failures = Vec::new();
    let mut excepted_hits: BTreeSet<(String, String)> = BTreeSet::new();
    for (ty, id, param, problem) in &results {
        if let Some(p) = problem {
            if exceptions.contains(&(ty.as_str(), param.as_str())) {
                excepted_hits.insert((ty.clone(), param.clone()));
            } else {
                failures.push(format!("{ty}/{id} {param}: {p}"));
            }
        }
    }
    eprintln!(
        "{} resources, {total} (resource, parameter) pairs, {} failures, {} excepted pairs",
        stored.len(),
        failures.len(),
        excepted_hits.len()
    );
    let stale: Vec<_> = EXCEPTIONS
        .iter()
        .filter(|(t, p, _)| !excepted_hits.contains(&((*t).to_owned(), (*p).to_owned())))
        .collect();
    assert!(
        stale.is_empty(),
        "exceptions that no longer apply: {stale:?}"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .take(80)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    s.stop().await;
}
