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
use serde_json::Value;

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
        let mut seen: HashSet<(String, String)> = matches
            .iter()
            .map(|v| (v.resource_type.clone(), v.id.clone()))
            .collect();
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut n = 0usize;
        for v in matches {
            let Ok(json) = serde_json::from_slice::<Value>(&v.json) else {
                continue;
            };
            let mut refs = Vec::new();
            collect_references(&json, &mut refs);
            for r in refs {
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

/// Every `reference` string in a resource (contained resources included).
fn collect_references<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "reference"
                    && let Value::String(s) = child
                {
                    out.push(s);
                } else {
                    collect_references(child, out);
                }
            }
        }
        Value::Array(items) => {
            for i in items {
                collect_references(i, out);
            }
        }
        _ => {}
    }
}
