//! `_include` / `_revinclude` (with `:iterate` and `*`), capped.
//!
//! Forward includes read the references a match holds for the named
//! parameter (evaluated with the official definitions, so exactly what the
//! index holds) and fetch the targets by id, one query per target type;
//! reverse includes are one search per source type over OR-ed reference
//! predicates. `:iterate` repeats on what the previous round added, at most
//! [`MAX_ROUNDS`] times. At most `RecordsOptions::max_includes` resources are
//! added to a page; beyond that the page says so in an OperationOutcome
//! entry instead of failing.

use std::collections::{BTreeMap, HashSet};

use carelayer_fhir::search::{self as defs, IndexValue, ParamType};
use carelayer_store::{Clause, IndexTest, Predicate, SearchQuery};
use serde_json::Value;

use crate::prepare::check_type;
use crate::{Caller, Records, RecordsError, Version};

/// Rounds of `:iterate` after the first.
pub(crate) const MAX_ROUNDS: usize = 4;

/// References OR-ed into one reverse-include query.
const CHUNK: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IncludeSpec {
    pub reverse: bool,
    pub iterate: bool,
    /// `None` for `_include=*`.
    pub source_type: Option<String>,
    /// `None` for `*` (every reference parameter of the source type).
    pub param: Option<String>,
    pub target_type: Option<String>,
}

/// `_include[:iterate]=Source:param[:Target]` (or `*`, `Source:*`).
pub(crate) fn parse_include(name: &str, value: &str) -> Result<IncludeSpec, RecordsError> {
    let reverse = name.starts_with("_revinclude");
    let iterate = name.ends_with(":iterate") || name.ends_with(":recurse");
    if value == "*" {
        if reverse {
            return Err(RecordsError::BadRequest(
                "_revinclude needs a source type: _revinclude=Type:param".into(),
            ));
        }
        return Ok(IncludeSpec {
            reverse,
            iterate,
            source_type: None,
            param: None,
            target_type: None,
        });
    }
    let mut parts = value.split(':');
    let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
        return Err(RecordsError::BadRequest(format!(
            "{name}={value}: expected Type:param[:TargetType]"
        )));
    };
    check_type(source)?;
    let target_type = parts.next().map(str::to_owned);
    if let Some(t) = &target_type {
        check_type(t)?;
    }
    let param = if param == "*" {
        None
    } else {
        let def = defs::registry().param(source, param).ok_or_else(|| {
            RecordsError::BadRequest(format!("{name}: unknown search parameter {source}:{param}"))
        })?;
        if def.param_type() != ParamType::Reference {
            return Err(RecordsError::BadRequest(format!(
                "{name}: {source}:{param} is not a reference parameter"
            )));
        }
        Some(param.to_owned())
    };
    Ok(IncludeSpec {
        reverse,
        iterate,
        source_type: Some(source.to_owned()),
        param,
        target_type,
    })
}

/// Reference parameters of a type (for `*`).
fn reference_params(resource_type: &str) -> Vec<String> {
    defs::registry()
        .params_for(resource_type)
        .filter(|p| p.param_type() == ParamType::Reference && p.is_supported())
        .map(|p| p.code().to_owned())
        .collect()
}

fn key(v: &Version) -> (String, String) {
    (v.resource_type.clone(), v.id.clone())
}

impl Records {
    /// The resources `specs` add to `matches`, and whether the cap cut them.
    /// Only resources the caller may read lead further (a withheld match
    /// includes nothing, so its references are not revealed).
    pub(crate) async fn resolve_includes(
        &self,
        caller: &Caller,
        matches: &[Version],
        specs: &[IncludeSpec],
    ) -> Result<(Vec<Version>, bool), RecordsError> {
        if specs.is_empty() || matches.is_empty() {
            return Ok((Vec::new(), false));
        }
        let cap = self.options.max_includes;
        let mut seen: HashSet<(String, String)> = matches.iter().map(key).collect();
        let mut included: Vec<Version> = Vec::new();
        let mut frontier: Vec<Version> = self.readable(caller, matches.to_vec()).await?;
        for round in 0..=MAX_ROUNDS {
            let active: Vec<&IncludeSpec> =
                specs.iter().filter(|s| round == 0 || s.iterate).collect();
            if active.is_empty() || frontier.is_empty() {
                break;
            }
            let room = cap.saturating_sub(included.len());
            let (new, capped) = self
                .include_round(&frontier, &active, &mut seen, room)
                .await?;
            included.extend(new.iter().cloned());
            if capped {
                return Ok((included, true));
            }
            frontier = self.readable(caller, new).await?;
        }
        Ok((included, false))
    }

    /// One round: what `active` adds to `frontier`, at most `room` resources.
    async fn include_round(
        &self,
        frontier: &[Version],
        active: &[&IncludeSpec],
        seen: &mut HashSet<(String, String)>,
        room: usize,
    ) -> Result<(Vec<Version>, bool), RecordsError> {
        let mut out = Vec::new();
        // Forward: collect target keys.
        let mut targets: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let forward: Vec<&&IncludeSpec> = active.iter().filter(|s| !s.reverse).collect();
        if !forward.is_empty() {
            for v in frontier {
                let applicable: Vec<&&&IncludeSpec> = forward
                    .iter()
                    .filter(|s| {
                        s.source_type
                            .as_deref()
                            .is_none_or(|t| t == v.resource_type)
                    })
                    .collect();
                if applicable.is_empty() {
                    continue;
                }
                let Ok(json) = serde_json::from_slice::<Value>(&v.json) else {
                    continue;
                };
                for spec in applicable {
                    let params = match &spec.param {
                        Some(p) => vec![p.clone()],
                        None => reference_params(&v.resource_type),
                    };
                    for p in params {
                        for value in defs::registry().extract_param(&json, &p) {
                            if let IndexValue::Reference {
                                target_type: Some(t),
                                target_id: Some(id),
                                url,
                            } = value
                                && !url.contains("://")
                                && spec.target_type.as_deref().is_none_or(|tt| tt == t)
                                && seen.insert((t.clone(), id.clone()))
                            {
                                targets.entry(t).or_default().push(id);
                            }
                        }
                    }
                }
            }
        }
        for (ty, ids) in targets {
            for chunk in ids.chunks(CHUNK) {
                if out.len() > room {
                    return Ok((truncate(out, room), true));
                }
                let q = SearchQuery {
                    resource_types: vec![ty.clone()],
                    clauses: vec![Clause {
                        any_of: chunk.iter().map(|id| Predicate::Id(id.clone())).collect(),
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
        // Reverse: sources referring to the frontier.
        for spec in active.iter().filter(|s| s.reverse) {
            let Some(source) = &spec.source_type else {
                continue;
            };
            let params = match &spec.param {
                Some(p) => vec![p.clone()],
                None => reference_params(source),
            };
            let refs: Vec<(&str, &str)> = frontier
                .iter()
                .filter(|v| {
                    spec.target_type
                        .as_deref()
                        .is_none_or(|t| t == v.resource_type)
                })
                .map(|v| (v.resource_type.as_str(), v.id.as_str()))
                .collect();
            for chunk in refs.chunks(CHUNK) {
                if out.len() > room {
                    return Ok((truncate(out, room), true));
                }
                let any_of = params
                    .iter()
                    .flat_map(|p| {
                        chunk.iter().map(move |(t, id)| Predicate::Index {
                            param: p.clone(),
                            test: IndexTest::Reference {
                                target_type: Some((*t).to_owned()),
                                id: (*id).to_owned(),
                            },
                        })
                    })
                    .collect();
                let q = SearchQuery {
                    resource_types: vec![source.clone()],
                    clauses: vec![Clause { any_of }],
                    count: room.saturating_sub(out.len()).saturating_add(1),
                    ..SearchQuery::default()
                };
                for m in self.run_query(&q).await?.matches {
                    let v = Version::from(m);
                    if seen.insert(key(&v)) {
                        out.push(v);
                    }
                }
            }
        }
        if out.len() > room {
            return Ok((truncate(out, room), true));
        }
        Ok((out, false))
    }
}

fn truncate(mut v: Vec<Version>, n: usize) -> Vec<Version> {
    v.truncate(n);
    v
}
