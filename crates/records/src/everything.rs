//! Patient compartment search (`Patient/ID/Type?…`) and `Patient/ID/$everything`,
//! driven by the official Patient CompartmentDefinition.
//!
//! - A compartment search is the type search plus one clause: the resource's
//!   `patient_key` is the patient (the first compartment reference, set at
//!   write time and indexed) **or** any of the type's compartment parameters
//!   refers to `Patient/ID` (so a resource in several patients' compartments
//!   is found in each).
//! - `$everything` pages through every resource whose `patient_key` is the
//!   patient (the Patient itself included), optionally limited by `_type`
//!   and `_since`, and adds, per page, the resources outside the compartment
//!   its matches refer to (practitioners, organisations, locations,
//!   medications…), as `search.mode = include`.

use std::collections::BTreeMap;
use std::collections::HashSet;

use carelayer_audit::AuditAction;
use carelayer_fhir::search as defs;
use carelayer_store::{Clause, IndexTest, Predicate, Prefix, SearchQuery};

use crate::prepare::check_type;
use crate::search::{ParsedSearch, SearchOutcome, SearchRequest};
use crate::{Caller, Records, RecordsError, Version};

/// The clause "in `Patient/{id}`'s compartment" for `resource_type`.
fn compartment_clause(patient: &str, resource_type: &str) -> Clause {
    let mut any_of = vec![Predicate::PatientKey(patient.to_owned())];
    if resource_type == "Patient" {
        any_of.push(Predicate::Id(patient.to_owned()));
    }
    for param in defs::compartment_params("Patient", resource_type) {
        any_of.push(Predicate::Index {
            param: param.clone(),
            test: IndexTest::Reference {
                target_type: Some("Patient".into()),
                id: patient.to_owned(),
            },
        });
    }
    Clause { any_of }
}

fn check_compartment(compartment: &str, resource_type: &str) -> Result<(), RecordsError> {
    if compartment != "Patient" {
        return Err(RecordsError::NotSupported(format!(
            "compartment searches are supported for Patient, not {compartment}"
        )));
    }
    check_type(resource_type)?;
    if resource_type != "Patient" && defs::compartment_params("Patient", resource_type).is_empty() {
        return Err(RecordsError::BadRequest(format!(
            "{resource_type} is not in the Patient compartment"
        )));
    }
    Ok(())
}

impl Records {
    /// `GET [base]/Patient/{id}/{type}?…`.
    ///
    /// # Errors
    /// As [`Records::search`]; `BadRequest` when the type is not in the
    /// compartment, `NotSupported` for compartments other than Patient.
    pub async fn search_compartment(
        &self,
        caller: &Caller,
        compartment: &str,
        id: &str,
        request: &SearchRequest,
    ) -> Result<SearchOutcome, RecordsError> {
        let resource_type = request.resource_type.as_deref().unwrap_or_default();
        check_compartment(compartment, resource_type)?;
        let mut parsed = self.parse_search(request)?;
        parsed
            .query
            .clauses
            .push(compartment_clause(id, resource_type));
        let detail = format!(
            "{compartment}/{id}/{resource_type}?{}",
            crate::query_string(&request.params)
        );
        let mut outcome = self
            .run_search(caller, parsed, AuditAction::Search, detail)
            .await?;
        outcome.path = Some(format!("{compartment}/{id}/{resource_type}"));
        Ok(outcome)
    }

    /// `GET [base]/Patient/{id}/$everything` with `_since`, `_type`, `_count`
    /// (and the paging parameters of its own links).
    ///
    /// # Errors
    /// `NotFound` when the patient does not exist (or is withheld),
    /// `BadRequest` for other parameters (unless lenient), store errors.
    pub async fn everything(
        &self,
        caller: &Caller,
        id: &str,
        params: &[(String, String)],
        lenient: bool,
    ) -> Result<SearchOutcome, RecordsError> {
        // The patient must exist and be visible to the caller (audited read).
        self.read(caller, "Patient", id).await?;
        let mut query = SearchQuery {
            clauses: vec![Clause {
                any_of: vec![Predicate::PatientKey(id.to_owned())],
            }],
            ..SearchQuery::default()
        };
        let mut count = self.options.default_page_size;
        let mut applied = Vec::new();
        let mut ignored = Vec::new();
        let mut page_token = None;
        for (name, value) in params {
            let r: Result<(), RecordsError> = match name.as_str() {
                "_since" => crate::search::instant_range(value).map(|(low, high)| {
                    query.clauses.push(Clause {
                        any_of: vec![Predicate::LastUpdated {
                            prefix: Prefix::Ge,
                            low,
                            high,
                        }],
                    });
                }),
                "_type" => value
                    .split(',')
                    .map(|t| check_type(t).map(|()| t.to_owned()))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|types| query.resource_types = types),
                "_count" => value
                    .parse::<usize>()
                    .map(|c| count = c.min(self.options.max_page_size))
                    .map_err(|_| {
                        RecordsError::BadRequest(format!("_count '{value}' is not a whole number"))
                    }),
                "_offset" => value
                    .parse::<usize>()
                    .map(|o| query.offset = o)
                    .map_err(|_| RecordsError::BadRequest(format!("bad _offset '{value}'"))),
                "_snapshot" => value
                    .parse::<i64>()
                    .map(|s| query.snapshot_seq = Some(s))
                    .map_err(|_| RecordsError::BadRequest(format!("bad _snapshot '{value}'"))),
                "_page" => {
                    page_token = Some(value.clone());
                    Ok(())
                }
                "_format" | "_pretty" => Ok(()),
                _ if lenient => {
                    ignored.push(name.clone());
                    continue;
                }
                _ => Err(RecordsError::BadRequest(format!(
                    "$everything takes _since, _type and _count, not '{name}'"
                ))),
            };
            r?;
            if !matches!(name.as_str(), "_offset" | "_snapshot" | "_page") {
                applied.push((name.clone(), value.clone()));
            }
        }
        query.count = count + 1;
        let parsed = ParsedSearch {
            query,
            count,
            applied,
            ignored,
            includes: Vec::new(),
            summary: crate::elements::Summary::False,
            elements: None,
            page_token,
        };
        let detail = format!("Patient/{id}/$everything");
        let mut outcome = self
            .run_search(caller, parsed, AuditAction::Everything, detail.clone())
            .await?;
        let referenced = self.referenced_outside(&outcome.matches).await?;
        if !referenced.is_empty() {
            let shown = self
                .disclose_many(
                    caller,
                    AuditAction::Everything,
                    referenced,
                    Some(detail),
                    &[],
                )
                .await?;
            outcome.included.extend(shown);
        }
        outcome.path = Some(format!("Patient/{id}/$everything"));
        Ok(outcome)
    }

    /// Resources outside the Patient compartment that `matches` refer to
    /// (local `Type/id` references), at most `max_includes`.
    async fn referenced_outside(&self, matches: &[Version]) -> Result<Vec<Version>, RecordsError> {
        // Only types outside the compartment are wanted, and no match is of
        // one (every match is in the patient's compartment), so the set
        // starts empty.
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut n = 0usize;
        let mut refs = Vec::new();
        for v in matches {
            refs.clear();
            references_in(&v.json, &mut refs);
            for r in &refs {
                let mut parts = r.split('/');
                let (Some(t), Some(id), None) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                let outside = t != "Patient"
                    && defs::compartment_params("Patient", t).is_empty()
                    && carelayer_fhir::definitions::r4().is_resource_type(t);
                if outside && n < self.options.max_includes && seen.insert((t.into(), id.into())) {
                    n += 1;
                    wanted.entry(t.to_owned()).or_default().push(id.to_owned());
                }
            }
        }
        let mut out = Vec::new();
        for (t, ids) in wanted {
            for chunk in ids.chunks(100) {
                let q = SearchQuery {
                    resource_types: vec![t.clone()],
                    clauses: vec![Clause {
                        any_of: chunk.iter().map(|i| Predicate::Id(i.clone())).collect(),
                    }],
                    count: chunk.len(),
                    ..SearchQuery::default()
                };
                out.extend(
                    self.run_query(&q)
                        .await?
                        .matches
                        .into_iter()
                        .map(Version::from),
                );
            }
        }
        Ok(out)
    }
}

/// Every `reference` string in a stored resource (contained resources
/// included), found by scanning its bytes for the key. Why not parse: for
/// a patient with 500 resources a parse into a `Value` was 43% of the CPU
/// of `$everything`, and a serde visitor that skipped everything else still
/// 19%; the bytes are scanned with `memchr` at memory speed.
///
/// Why a byte scan is exact here: in JSON a `"` inside a string is always
/// escaped, so an unescaped `"reference"` is a whole string token, and one
/// followed by `:` is a key. Stored resources are written by `serde_json`,
/// which never escapes the letters of a key. A value that is not a string
/// (an object) is stepped into by the scan going on. Bytes that are not
/// JSON yield whatever well-formed `"reference": "…"` pairs they hold.
fn references_in(json: &[u8], out: &mut Vec<String>) {
    /// Built once (building costs more than a search of one resource).
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    const KEY: &[u8] = b"\"reference\"";
    let skip_space = |mut i: usize| {
        while json.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    for at in FINDER.find_iter(json) {
        if at > 0 && json[at - 1] == b'\\' {
            continue; // an escaped quote: inside some string
        }
        let colon = skip_space(at + KEY.len());
        if json.get(colon) != Some(&b':') {
            continue; // the string "reference" as a value
        }
        let open = skip_space(colon + 1);
        if json.get(open) != Some(&b'"') {
            continue; // not a string: the scan goes on into it
        }
        if let Some(value) = string_at(json, open) {
            out.push(value);
        }
    }
}

/// The JSON string whose opening quote is at `open`, decoded.
fn string_at(json: &[u8], open: usize) -> Option<String> {
    let body = json.get(open + 1..)?;
    let end = memchr::memchr2(b'"', b'\\', body)?;
    if body[end] == b'"' {
        return std::str::from_utf8(&body[..end]).ok().map(str::to_owned);
    }
    // It holds escapes: the JSON parser finds its end and decodes them.
    let mut de = serde_json::Deserializer::from_slice(&json[open..]);
    serde::Deserialize::deserialize(&mut de).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The plain way: parse, then collect.
    fn by_value(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    match child {
                        Value::String(s) if k == "reference" => out.push(s.clone()),
                        _ => by_value(child, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| by_value(i, out)),
            _ => {}
        }
    }

    #[test]
    fn references_read_from_bytes_equal_those_of_the_parsed_resource() {
        let resource = json!({
            "resourceType": "Observation", "id": "o1",
            "subject": {"reference": "Patient/p1", "display": "say \"reference\":\"Fake/1\""},
            "performer": [{"reference": "Practitioner/d1"}, {"display": "no ref"}, {"reference": "Organization/gé1"}],
            "note": [{"text": "\"reference\":\"Fake/2\""}],
            "contained": [{"resourceType": "Medication", "id": "m",
                "ingredient": [{"itemReference": {"reference": "Substance/s1"}}]}],
            "extension": [{"url": "x", "valueReference": {"reference": "Location/l1"}}],
            "component": [{"valueQuantity": {"value": 1.5}, "valueBoolean": true, "valueInteger": -3}],
            "odd": {"reference": {"reference": "Device/dv1"}},
            "empty": null
        });
        let bytes = serde_json::to_vec(&resource).unwrap();
        let mut want = Vec::new();
        by_value(&resource, &mut want);
        let mut got = Vec::new();
        references_in(&bytes, &mut got);
        assert_eq!(got, want);
        assert!(
            got.contains(&"Organization/gé1".to_owned()) && got.len() == 6,
            "{got:?}"
        );
        // Escapes are decoded (the deserializer hands those over in a buffer).
        let mut escaped = Vec::new();
        references_in(
            br#"{"a":{"reference":"Organization/g\u00e91"}}"#,
            &mut escaped,
        );
        assert_eq!(escaped, ["Organization/gé1"]);
        // Whitespace as a pretty printer writes it; "reference" as a value
        // and inside text; a reference key whose value is an object.
        let mut spaced = Vec::new();
        references_in(
            b"{\n  \"code\" : \"reference\",\n  \"subject\" : {\n    \"reference\" :  \"Patient/p2\"\n  },\n  \"text\": \"a \\\"reference\\\": \\\"Fake/3\\\"\",\n  \"reference\": {\"reference\":\"Device/d2\"}\n}",
            &mut spaced,
        );
        assert_eq!(spaced, ["Patient/p2", "Device/d2"]);
        let mut broken = Vec::new();
        references_in(
            b"{\"subject\":{\"reference\":\"Patient/p1\"},\"x\":",
            &mut broken,
        );
        assert_eq!(broken, ["Patient/p1"]);
    }
}
