//! FHIR search: request parameters → a store [`SearchQuery`], then policy
//! and audit over the hits.
//!
//! Parameter definitions come from the official R4 SearchParameters (via
//! `carelayer_fhir::search`); value syntax follows FHIR R4 search §3.1.1.
//!
//! What is understood, beyond `name=value` on every indexed parameter:
//! - modifiers: `:missing` (all types); token `:not :text :of-type`, and
//!   `:above :below` (without a terminology server a code subsumes only
//!   itself, so they match the code exactly); string `:exact :contains`;
//!   uri `:above :below`; reference `:identifier`, `:{Type}`; token
//!   `:in`/`:not-in` expand the R4 required-binding value sets the server
//!   carries; other value sets need a terminology service and are refused as
//!   not supported;
//! - chaining `subject:Patient.identifier=…` (any depth up to
//!   [`MAX_DEPTH`]; without a type, every target type that has the chained
//!   parameter), reverse chaining `_has:Type:param:…` (nestable), composites
//!   `a$b`, `_list` (membership through `List.item`);
//! - a bare reference value (`general-practitioner=A81001`) also matches a
//!   logical reference whose `identifier.value` is that value, so PDS-style
//!   searches by ODS code work;
//! - `address-postalcode` ignores spaces on both sides;
//! - result control: `_sort _count _total _summary _elements _include
//!   _revinclude` (`:iterate`, `*`), `_type` across types; paging is stable
//!   (see `paging`).

use std::collections::HashSet;

use carelayer_audit::AuditAction;
use carelayer_fhir::search::{self as defs, ParamType};
use carelayer_store::{
    Clause, IndexTest, Predicate, Prefix, SearchQuery, SortKey, StoredResource, TotalMode,
};

use crate::elements::{self, Summary};
use crate::include::IncludeSpec;
use crate::paging::Key;
use crate::prepare::check_type;
use crate::{Caller, Records, RecordsError, Version};

/// Deepest chain (`a.b.c…`) or `_has` nesting accepted.
pub const MAX_DEPTH: usize = 4;

/// A search as the caller asked it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchRequest {
    /// `None` for a search across all types.
    pub resource_type: Option<String>,
    /// Query parameters in order (names may repeat: AND).
    pub params: Vec<(String, String)>,
    /// `Prefer: handling=lenient`: ignore unknown parameters instead of failing.
    pub lenient: bool,
}

/// One page of search results.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchOutcome {
    pub matches: Vec<Version>,
    /// `_include`/`_revinclude` (and `$everything` referenced) resources.
    pub included: Vec<Version>,
    /// Warnings for an OperationOutcome entry (`search.mode = outcome`),
    /// e.g. the include cap was reached.
    pub warnings: Vec<String>,
    pub total: Option<u64>,
    /// The parameters that were applied (for the `self` link).
    pub applied: Vec<(String, String)>,
    /// Parameters ignored under lenient handling.
    pub ignored: Vec<String>,
    pub offset: usize,
    pub count: usize,
    /// Where the next page starts, when there may be one.
    pub next_offset: Option<usize>,
    pub snapshot_seq: i64,
    /// The pinned result set the paging links refer to (see `paging`).
    pub page_token: Option<String>,
    /// The path of the links below the base when it is not `[type]`
    /// (compartment searches, `$everything`).
    pub path: Option<String>,
}

/// Parameters that shape the response rather than select resources.
const RESULT_PARAMS: &[&str] = &["_format", "_pretty"];

/// A page: its versions, the total, the next page's offset, the snapshot
/// seq and the paging token.
type FirstPage = (
    Vec<Version>,
    Option<u64>,
    Option<usize>,
    i64,
    Option<String>,
);

/// Every version of a page, as `paging::Key`s.
fn keys_of(matches: &[StoredResource]) -> Vec<Key> {
    matches
        .iter()
        .map(|m| Key {
            resource_type: m.resource_type.clone(),
            id: m.id.clone(),
            version: m.version,
        })
        .collect()
}

impl Records {
    /// Run a search; every hit is a disclosure and audited per patient.
    ///
    /// # Errors
    /// `BadRequest` naming an unknown parameter or a malformed value,
    /// `NotSupported` for features this server lacks, store errors.
    pub async fn search(
        &self,
        caller: &Caller,
        request: &SearchRequest,
    ) -> Result<SearchOutcome, RecordsError> {
        if let Some(ty) = &request.resource_type {
            check_type(ty)?;
        }
        let parsed = self.parse_search(request)?;
        self.run_search(caller, parsed, AuditAction::Search, describe(request))
            .await
    }

    /// Run a parsed search: one page (pinned for stable paging), includes,
    /// `_summary`/`_elements`, then one disclosure of everything shown.
    pub(crate) async fn run_search(
        &self,
        caller: &Caller,
        parsed: ParsedSearch,
        action: AuditAction,
        detail: String,
    ) -> Result<SearchOutcome, RecordsError> {
        let count = parsed.count;
        let offset = parsed.query.offset;
        let pinned = parsed
            .page_token
            .as_deref()
            .and_then(|t| self.snapshots.get(t, &caller.principal));
        let (page_versions, total, next_offset, snapshot_seq, page_token) = match pinned {
            Some(pinned) => {
                let end = offset.saturating_add(count).min(pinned.keys.len());
                let start = offset.min(end);
                let versions = self.load_versions(&pinned.keys[start..end]).await?;
                let more = end < pinned.keys.len() || pinned.truncated;
                (
                    versions,
                    pinned.total,
                    more.then_some(end),
                    pinned.snapshot_seq,
                    (end < pinned.keys.len())
                        .then(|| parsed.page_token.clone())
                        .flatten(),
                )
            }
            None if count > 0
                && parsed.page_token.is_none()
                && parsed.query.snapshot_seq.is_none() =>
            {
                self.first_page(caller, &parsed).await?
            }
            None => {
                // A page of an earlier search whose pinned keys have expired
                // (its link's `_snapshot` bounds it), or a count only.
                let mut page = self.run_query(&parsed.query).await?;
                if let Some(all) = page.total {
                    page.total = self.visible_total(caller, &parsed, all).await?;
                }
                let more = page.matches.len() > count && count > 0;
                let mut versions: Vec<Version> =
                    page.matches.into_iter().map(Version::from).collect();
                versions.truncate(count);
                (
                    versions,
                    page.total,
                    more.then_some(offset + count),
                    page.snapshot_seq,
                    None,
                )
            }
        };
        let page_versions = self
            .without_hidden_links(caller, &parsed.query.clauses, page_versions)
            .await?;
        let (included, capped) = self
            .resolve_includes(caller, &page_versions, &parsed.includes)
            .await?;
        let mut warnings = Vec::new();
        if capped {
            warnings.push(format!(
                "_include/_revinclude reached this server's limit of {} included resources; \
                 the included set is incomplete (narrow the search or lower _count)",
                self.options.max_includes
            ));
        }
        let used: Vec<String> = parsed.applied.iter().map(|(k, _)| k.clone()).collect();
        let (mut matches, included) = self
            .disclose_split(caller, action, page_versions, included, Some(detail), &used)
            .await?;
        if parsed.summary != Summary::False || parsed.elements.is_some() {
            for m in &mut matches {
                if let Some(json) =
                    elements::shape(&m.json, parsed.summary, parsed.elements.as_deref())
                {
                    m.json = json;
                }
            }
        }
        if parsed.summary == Summary::Count {
            matches.clear();
        }
        Ok(SearchOutcome {
            matches,
            included,
            warnings,
            total,
            applied: parsed.applied,
            ignored: parsed.ignored,
            offset,
            count,
            next_offset: if parsed.summary == Summary::Count {
                None
            } else {
                next_offset
            },
            snapshot_seq,
            page_token,
            path: None,
        })
    }

    /// The first page of a search, and when more follow, its pinned keys:
    /// every later page comes from this one result set whatever is written
    /// meanwhile (a `seq <= snapshot` bound would lose resources updated or
    /// deleted in between). One query gives both, bodies for this page only
    /// ([`SearchQuery::bodies`]): a page query and then a keys query
    /// evaluated the whole search twice, half the cost of a broad one
    /// (`Observation?code=…&date=ge…&date=lt…` over a month).
    async fn first_page(
        &self,
        caller: &Caller,
        parsed: &ParsedSearch,
    ) -> Result<FirstPage, RecordsError> {
        let (offset, count) = (parsed.query.offset, parsed.count);
        let end = offset.saturating_add(count);
        let limit = self.options.search_snapshot_max.max(end);
        let query = SearchQuery {
            offset: 0,
            count: limit.saturating_add(1),
            keys_only: false,
            bodies: Some(offset..end),
            ..parsed.query.clone()
        };
        let mut found = self.run_query(&query).await?;
        if let Some(all) = found.total {
            found.total = self.visible_total(caller, parsed, all).await?;
        }
        let matches = found.matches.len();
        let more = matches > end;
        let keys = more.then(|| keys_of(&found.matches[..matches.min(limit)]));
        // Backends honour `bodies` (a contract check): the page has its JSON.
        let versions: Vec<Version> = found
            .matches
            .into_iter()
            .skip(offset)
            .take(count)
            .map(Version::from)
            .collect();
        let token = keys.and_then(|keys| {
            self.snapshots.insert(
                self.options.search_snapshots,
                caller.principal.clone(),
                keys,
                matches > limit,
                found.total,
                found.snapshot_seq,
            )
        });
        Ok((
            versions,
            found.total,
            more.then_some(end),
            found.snapshot_seq,
            token,
        ))
    }

    /// One policy/audit pass over matches and included resources together
    /// (one audit entry per patient touched), split back apart.
    async fn disclose_split(
        &self,
        caller: &Caller,
        action: AuditAction,
        matches: Vec<Version>,
        included: Vec<Version>,
        detail: Option<String>,
        search_params: &[String],
    ) -> Result<(Vec<Version>, Vec<Version>), RecordsError> {
        if included.is_empty() {
            let shown = self
                .disclose_many(caller, action, matches, detail, search_params)
                .await?;
            return Ok((shown, Vec::new()));
        }
        let match_keys: HashSet<(String, String)> = matches
            .iter()
            .map(|v| (v.resource_type.clone(), v.id.clone()))
            .collect();
        let mut all = matches;
        all.extend(included);
        let shown = self
            .disclose_many(caller, action, all, detail, search_params)
            .await?;
        let (m, i): (Vec<Version>, Vec<Version>) = shown
            .into_iter()
            .partition(|v| match_keys.contains(&(v.resource_type.clone(), v.id.clone())));
        Ok((m, i))
    }

    /// The versions of pinned keys, in order: current versions in one query
    /// per type, the rest (updated or deleted since) read by version.
    pub(crate) async fn load_versions(&self, keys: &[Key]) -> Result<Vec<Version>, RecordsError> {
        let mut current: std::collections::HashMap<(String, String), StoredResource> =
            std::collections::HashMap::new();
        let mut by_type: std::collections::BTreeMap<&str, Vec<&str>> =
            std::collections::BTreeMap::new();
        for k in keys {
            by_type.entry(&k.resource_type).or_default().push(&k.id);
        }
        for (ty, ids) in by_type {
            for chunk in ids.chunks(200) {
                let q = SearchQuery {
                    resource_types: vec![ty.to_owned()],
                    clauses: vec![Clause {
                        any_of: chunk
                            .iter()
                            .map(|id| Predicate::Id((*id).to_owned()))
                            .collect(),
                    }],
                    count: chunk.len(),
                    ..SearchQuery::default()
                };
                for m in self.run_query(&q).await?.matches {
                    current.insert((m.resource_type.clone(), m.id.clone()), m);
                }
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let found = current
                .remove(&(k.resource_type.clone(), k.id.clone()))
                .filter(|m| m.version == k.version);
            let version = match found {
                Some(m) => Some(m),
                None => {
                    self.store
                        .read_version(&k.resource_type, &k.id, k.version)
                        .await?
                }
            };
            if let Some(v) = version {
                out.push(Version::from(v));
            }
        }
        Ok(out)
    }

    /// A conditional operation's search (`If-None-Exist`, `PUT Type?…`).
    pub(crate) fn parse_conditional(
        &self,
        resource_type: &str,
        query: &str,
    ) -> Result<SearchQuery, RecordsError> {
        let params = parse_query_string(query);
        if params.is_empty() {
            return Err(RecordsError::BadRequest(format!(
                "a conditional operation on {resource_type} needs search parameters"
            )));
        }
        let request = SearchRequest {
            resource_type: Some(resource_type.to_owned()),
            params,
            lenient: false,
        };
        Ok(self.parse_search(&request)?.query)
    }

    pub(crate) fn parse_search(
        &self,
        request: &SearchRequest,
    ) -> Result<ParsedSearch, RecordsError> {
        let rt = request.resource_type.as_deref();
        let mut query = SearchQuery {
            resource_types: request.resource_type.iter().cloned().collect(),
            ..SearchQuery::default()
        };
        let mut count = self.options.default_page_size;
        let mut applied = Vec::new();
        let mut ignored = Vec::new();
        let mut includes = Vec::new();
        let mut summary = Summary::False;
        let mut elements = None;
        let mut page_token = None;
        for (name, value) in &request.params {
            let outcome = match name.as_str() {
                "_count" => parse_count(value, self.options.max_page_size).map(|c| count = c),
                "_offset" => parse_usize(name, value).map(|o| query.offset = o),
                "_snapshot" => value
                    .parse::<i64>()
                    .map(|s| query.snapshot_seq = Some(s))
                    .map_err(|_| {
                        RecordsError::BadRequest(format!(
                            "_snapshot '{value}' is not a paging token of this server"
                        ))
                    }),
                "_page" => {
                    page_token = Some(value.clone());
                    Ok(())
                }
                "_total" => parse_total(value).map(|t| query.total = t),
                "_sort" => parse_sort(rt, value).map(|keys| query.sort = keys),
                "_type" => parse_types(value).map(|types| {
                    if query.resource_types.is_empty() {
                        query.resource_types = types;
                    }
                }),
                "_summary" => elements::parse_summary(value).map(|s| summary = s),
                "_elements" => elements::parse_elements(value).map(|e| elements = Some(e)),
                "_include"
                | "_revinclude"
                | "_include:iterate"
                | "_revinclude:iterate"
                | "_include:recurse"
                | "_revinclude:recurse" => {
                    crate::include::parse_include(name, value).map(|spec| includes.push(spec))
                }
                "_contained" | "_containedType" => Err(RecordsError::NotSupported(format!(
                    "{name}: contained resources are not searched by this server"
                ))),
                n if RESULT_PARAMS.contains(&n) => Ok(()),
                _ => filter_clauses(rt, name, value, 0).map(|c| query.clauses.extend(c)),
            };
            match outcome {
                Ok(()) => {
                    if !matches!(name.as_str(), "_offset" | "_snapshot" | "_page") {
                        applied.push((name.clone(), value.clone()));
                    }
                }
                Err(RecordsError::BadRequest(_)) if request.lenient && is_unknown(rt, name) => {
                    ignored.push(name.clone());
                }
                Err(e) => return Err(e),
            }
        }
        if summary == Summary::Count {
            query.total = TotalMode::Accurate;
        }
        restricted_patient_guard(rt, &mut query);
        // One row past the page tells whether a next page exists.
        query.count = count + 1;
        Ok(ParsedSearch {
            query,
            count,
            applied,
            ignored,
            includes,
            summary,
            elements,
            page_token,
        })
    }
}

pub(crate) struct ParsedSearch {
    pub query: SearchQuery,
    pub count: usize,
    pub applied: Vec<(String, String)>,
    pub ignored: Vec<String>,
    pub includes: Vec<IncludeSpec>,
    pub summary: Summary,
    pub elements: Option<Vec<String>>,
    pub page_token: Option<String>,
}

/// PDS rule P8: a Patient search by address postcode or GP never returns
/// restricted (S-flagged, `meta.security` R or V) patients.
fn restricted_patient_guard(resource_type: Option<&str>, query: &mut SearchQuery) {
    if resource_type != Some("Patient") {
        return;
    }
    let sensitive = query.clauses.iter().any(|c| {
        c.any_of.iter().any(|p| match p {
            Predicate::Index { param, .. } => {
                param == defs::POSTCODE_PARAM
                    || param == "address-postcode"
                    || param.starts_with("general-practitioner")
            }
            _ => false,
        })
    });
    if !sensitive {
        return;
    }
    for code in ["R", "V"] {
        query.clauses.push(Clause {
            any_of: vec![Predicate::Not {
                param: "_security".into(),
                test: IndexTest::Token {
                    system: Some(Some(
                        "http://terminology.hl7.org/CodeSystem/v3-Confidentiality".into(),
                    )),
                    code: code.into(),
                },
            }],
        });
    }
}

/// A short description of a search for the audit log.
fn describe(request: &SearchRequest) -> String {
    let params = request
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{}?{params}",
        request.resource_type.as_deref().unwrap_or("")
    )
}

/// `a=1&b=2` → pairs, percent-decoded (`+` is a space, as in forms).
#[must_use]
pub fn parse_query_string(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_unknown(resource_type: Option<&str>, name: &str) -> bool {
    let code = name.split([':', '.']).next().unwrap_or(name);
    !code.starts_with("_has") && lookup(resource_type, code).is_none()
}

fn parse_usize(name: &str, value: &str) -> Result<usize, RecordsError> {
    value
        .parse::<usize>()
        .map_err(|_| RecordsError::BadRequest(format!("{name} '{value}' is not a whole number")))
}

fn parse_count(value: &str, max: usize) -> Result<usize, RecordsError> {
    Ok(parse_usize("_count", value)?.min(max))
}

fn parse_total(value: &str) -> Result<TotalMode, RecordsError> {
    match value {
        "none" => Ok(TotalMode::None),
        "estimate" => Ok(TotalMode::Estimate),
        "accurate" => Ok(TotalMode::Accurate),
        _ => Err(RecordsError::BadRequest(format!(
            "_total '{value}' must be none, estimate or accurate"
        ))),
    }
}

fn parse_types(value: &str) -> Result<Vec<String>, RecordsError> {
    value
        .split(',')
        .map(|t| {
            check_type(t)?;
            Ok(t.to_owned())
        })
        .collect()
}

fn parse_sort(resource_type: Option<&str>, value: &str) -> Result<Vec<SortKey>, RecordsError> {
    value
        .split(',')
        .map(|key| {
            let (descending, name) = key
                .strip_prefix('-')
                .map_or((false, key), |rest| (true, rest));
            match name {
                "_id" => Ok(SortKey::Id { descending }),
                "_lastUpdated" => Ok(SortKey::LastUpdated { descending }),
                _ => lookup(resource_type, name)
                    .map(|_| SortKey::Param {
                        param: name.to_owned(),
                        descending,
                    })
                    .ok_or_else(|| unknown(resource_type, name)),
            }
        })
        .collect()
}

/// What the parser needs of a parameter definition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParamInfo {
    kind: ParamType,
    targets: Vec<String>,
    /// Component types of a composite.
    components: Vec<Option<ParamType>>,
    supported: bool,
}

/// The definition of `code` for a type (or for every type, in a search
/// across all types: only parameters common to all resources).
fn lookup(resource_type: Option<&str>, code: &str) -> Option<ParamInfo> {
    let def = defs::registry().param(resource_type.unwrap_or("Resource"), code)?;
    Some(ParamInfo {
        kind: def.param_type(),
        targets: def.targets().to_vec(),
        components: def.components.iter().map(|c| c.kind).collect(),
        supported: def.is_supported(),
    })
}

fn unknown(resource_type: Option<&str>, name: &str) -> RecordsError {
    RecordsError::BadRequest(format!(
        "unknown search parameter '{name}' for {}",
        resource_type.unwrap_or("a search across all types")
    ))
}

fn sub_query(resource_type: &str, clauses: Vec<Clause>) -> Box<SearchQuery> {
    Box::new(SearchQuery {
        resource_types: vec![resource_type.to_owned()],
        clauses,
        ..SearchQuery::default()
    })
}

/// One `name=value` filter → clauses, ANDed (usually one; comma-separated
/// values are ORed inside it, except `:not`, where every value must be absent).
pub(crate) fn filter_clauses(
    resource_type: Option<&str>,
    name: &str,
    value: &str,
    depth: usize,
) -> Result<Vec<Clause>, RecordsError> {
    if depth > MAX_DEPTH {
        return Err(RecordsError::BadRequest(format!(
            "{name}: chains and _has nest at most {MAX_DEPTH} deep"
        )));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(param), Some(inner)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(RecordsError::BadRequest(format!(
                "{name}: reverse chaining is _has:Type:param:search-parameter"
            )));
        };
        check_type(source)?;
        let info = lookup(Some(source), param).ok_or_else(|| unknown(Some(source), param))?;
        if info.kind != ParamType::Reference {
            return Err(RecordsError::BadRequest(format!(
                "{name}: {source}.{param} is not a reference parameter"
            )));
        }
        if let (Some(rt), false) = (resource_type, info.targets.is_empty())
            && !info.targets.iter().any(|t| t == rt)
        {
            return Err(RecordsError::BadRequest(format!(
                "{name}: {source}.{param} never refers to a {rt}"
            )));
        }
        let inner = filter_clauses(Some(source), inner, value, depth + 1)?;
        return Ok(vec![Clause {
            any_of: vec![Predicate::Has {
                source_type: source.to_owned(),
                param: param.to_owned(),
                query: sub_query(source, inner),
            }],
        }]);
    }
    if let Some((head, rest)) = name.split_once('.') {
        let (code, modifier) = match head.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (head, None),
        };
        let info = lookup(resource_type, code).ok_or_else(|| unknown(resource_type, name))?;
        if info.kind != ParamType::Reference {
            return Err(RecordsError::BadRequest(format!(
                "{name}: only reference parameters can be chained, and {code} is a {}",
                info.kind.as_str()
            )));
        }
        let targets: Vec<String> = match modifier {
            Some(t) => {
                check_type(t)?;
                vec![t.to_owned()]
            }
            None if !info.targets.is_empty() => info.targets.clone(),
            None => {
                return Err(RecordsError::BadRequest(format!(
                    "{name}: {code} may refer to any type; name it ({code}:Type.{rest})"
                )));
            }
        };
        let rest_code = rest.split([':', '.']).next().unwrap_or(rest);
        let mut any_of = Vec::new();
        for t in &targets {
            let known = rest.starts_with("_has:")
                || matches!(rest_code, "_id" | "_lastUpdated" | "_list")
                || lookup(Some(t), rest_code).is_some();
            if !known {
                continue;
            }
            let inner = filter_clauses(Some(t), rest, value, depth + 1)?;
            any_of.push(Predicate::Chain {
                param: code.to_owned(),
                target_type: t.clone(),
                query: sub_query(t, inner),
            });
        }
        if any_of.is_empty() {
            return Err(RecordsError::BadRequest(format!(
                "{name}: no target type of {code} ({}) has a search parameter '{rest_code}'",
                targets.join(", ")
            )));
        }
        return Ok(vec![Clause { any_of }]);
    }
    let (code, modifier) = match name.split_once(':') {
        Some((p, m)) => (p, Some(m)),
        None => (name, None),
    };
    let values = split_values(value);
    if values.iter().all(String::is_empty) {
        return Err(RecordsError::BadRequest(format!("{name} has no value")));
    }
    match code {
        // `_id` and `_lastUpdated` are held on `current`, not as index rows
        // (`search::HELD_ON_CURRENT`), so every form of them is answered
        // from there.
        "_id" if modifier.is_none() => {
            return Ok(vec![Clause {
                any_of: values.into_iter().map(Predicate::Id).collect(),
            }]);
        }
        // None of the listed ids: each is a clause of its own (AND).
        "_id" if modifier == Some("not") => {
            return Ok(values
                .into_iter()
                .map(|id| Clause {
                    any_of: vec![Predicate::NotId(id)],
                })
                .collect());
        }
        "_id" | "_lastUpdated" if modifier == Some("missing") => {
            // Every resource has both (the server stamps them). After the
            // earliest instant: every resource; before it: none.
            let prefix = if missing_flag(name, value)? {
                Prefix::Lt
            } else {
                Prefix::Gt
            };
            return Ok(vec![Clause {
                any_of: vec![Predicate::LastUpdated {
                    prefix,
                    low: i64::MIN,
                    high: i64::MIN,
                }],
            }]);
        }
        "_id" => {
            return Err(RecordsError::BadRequest(format!(
                "{name}: _id takes no modifier but :not and :missing"
            )));
        }
        "_lastUpdated" if modifier.is_none() => {
            let any_of = values
                .iter()
                .map(|v| {
                    let (prefix, rest) = split_prefix(v);
                    let (low, high) = date_range(rest)?;
                    Ok(Predicate::LastUpdated { prefix, low, high })
                })
                .collect::<Result<_, RecordsError>>()?;
            return Ok(vec![Clause { any_of }]);
        }
        "_list" if modifier.is_none() => {
            if values.iter().any(|v| v.starts_with('$')) {
                return Err(RecordsError::NotSupported(
                    "_list: functional lists ($current-…) are not supported".into(),
                ));
            }
            let list = Clause {
                any_of: values.into_iter().map(Predicate::Id).collect(),
            };
            return Ok(vec![Clause {
                any_of: vec![Predicate::Has {
                    source_type: "List".into(),
                    param: "item".into(),
                    query: sub_query("List", vec![list]),
                }],
            }]);
        }
        _ => {}
    }
    let info = lookup(resource_type, code).ok_or_else(|| unknown(resource_type, name))?;
    if modifier == Some("missing") {
        let missing = missing_flag(name, value)?;
        let mut params = vec![code.to_owned()];
        if info.kind == ParamType::Reference {
            // A logical reference (identifier only) is a value too.
            params.push(format!("{code}{}", defs::IDENTIFIER_SUFFIX));
        }
        let each = params
            .into_iter()
            .map(|param| Predicate::Missing { param, missing });
        return Ok(if missing {
            each.map(|p| Clause { any_of: vec![p] }).collect()
        } else {
            vec![Clause {
                any_of: each.collect(),
            }]
        });
    }
    if !info.supported {
        return Err(RecordsError::NotSupported(format!(
            "search parameter '{code}' is not indexed by this server"
        )));
    }
    if info.kind == ParamType::Token && matches!(modifier, Some("in" | "not-in")) {
        return value_set_clauses(name, code, modifier == Some("in"), &values);
    }
    if info.kind == ParamType::Token && modifier == Some("not") {
        // Every listed value must be absent.
        return values
            .iter()
            .map(|v| {
                Ok(Clause {
                    any_of: vec![Predicate::Not {
                        param: code.to_owned(),
                        test: token_test(v),
                    }],
                })
            })
            .collect();
    }
    if matches!(code, "_text" | "_content") {
        return full_text_clauses(&info, code, name, modifier, &values);
    }
    let mut any_of = Vec::new();
    for v in &values {
        any_of.extend(parse_value(&info, code, name, modifier, v)?);
    }
    Ok(vec![Clause { any_of }])
}

/// The value of a `:missing` parameter.
fn missing_flag(name: &str, value: &str) -> Result<bool, RecordsError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(RecordsError::BadRequest(format!(
            "{name} must be true or false, not '{value}'"
        ))),
    }
}

/// `_text` and `_content` are indexed as the resource's words (strings, one
/// row a word: `carelayer_fhir::search::text`). Every word of a value must
/// be found, each matched as a string value is (by prefix, `:exact`,
/// `:contains`); several comma-separated values are alternatives, so each
/// must then be one word (words that must all appear: repeat the
/// parameter).
fn full_text_clauses(
    info: &ParamInfo,
    code: &str,
    name: &str,
    modifier: Option<&str>,
    values: &[String],
) -> Result<Vec<Clause>, RecordsError> {
    let words_of = |v: &str| -> Vec<String> {
        v.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut alternatives = Vec::new();
    for v in values {
        let words = words_of(v);
        if words.is_empty() {
            return Err(RecordsError::BadRequest(format!(
                "{name}: '{v}' has no words to search for"
            )));
        }
        if values.len() == 1 {
            return words
                .iter()
                .map(|w| {
                    Ok(Clause {
                        any_of: parse_value(info, code, name, modifier, w)?,
                    })
                })
                .collect();
        }
        if words.len() > 1 {
            return Err(RecordsError::BadRequest(format!(
                "{name}: '{v}' has several words, and comma-separated values are \
                 alternatives; give one word per value, or repeat {name} for words \
                 that must all appear"
            )));
        }
        alternatives.extend(parse_value(info, code, name, modifier, &words[0])?);
    }
    Ok(vec![Clause {
        any_of: alternatives,
    }])
}

/// One value of a (non-`:missing`) filter → the predicates it ORs.
fn parse_value(
    info: &ParamInfo,
    code: &str,
    name: &str,
    modifier: Option<&str>,
    value: &str,
) -> Result<Vec<Predicate>, RecordsError> {
    let index = |test| Predicate::Index {
        param: code.to_owned(),
        test,
    };
    let unsupported_modifier = || {
        RecordsError::BadRequest(format!(
            "modifier ':{}' is not valid on {name} ({} parameter)",
            modifier.unwrap_or_default(),
            info.kind.as_str()
        ))
    };
    let no_modifier = || {
        if modifier.is_some() {
            Err(unsupported_modifier())
        } else {
            Ok(())
        }
    };
    Ok(match info.kind {
        ParamType::Token => match modifier {
            Some("text") => vec![index(IndexTest::TokenText(defs::normalize_string(value)))],
            // No terminology server: a code subsumes only itself.
            None | Some("above" | "below") => vec![index(token_test(value))],
            Some("of-type") => {
                let parts = split_escaped(value, '|');
                let [system, type_code, ident] = parts.as_slice() else {
                    return Err(RecordsError::BadRequest(format!(
                        "{name}: :of-type takes type-system|type-code|value"
                    )));
                };
                vec![Predicate::Index {
                    param: format!("{code}{}", defs::OF_TYPE_SUFFIX),
                    test: IndexTest::Token {
                        system: (!system.is_empty()).then(|| Some(system.clone())),
                        code: format!("{type_code}|{ident}"),
                    },
                }]
            }
            _ => return Err(unsupported_modifier()),
        },
        ParamType::String => {
            let norm = |v: &str| {
                let mut n = defs::normalize_string(v);
                if code == defs::POSTCODE_PARAM {
                    n.retain(|c| c != ' ');
                }
                n
            };
            vec![index(match modifier {
                None => IndexTest::StringStartsWith(norm(value)),
                Some("exact") => IndexTest::StringExact {
                    normalized: norm(value),
                    exact: value.to_owned(),
                },
                Some("contains") => IndexTest::StringContains(norm(value)),
                _ => return Err(unsupported_modifier()),
            })]
        }
        ParamType::Reference => match modifier {
            Some("identifier") => vec![Predicate::Index {
                param: format!("{code}{}", defs::IDENTIFIER_SUFFIX),
                test: token_test(value),
            }],
            Some("above" | "below") => {
                return Err(RecordsError::NotSupported(format!(
                    "{name}: hierarchical reference search is not supported"
                )));
            }
            _ => {
                let mut out = vec![index(reference_test(info, name, modifier, value)?)];
                if matches!(
                    out[0],
                    Predicate::Index {
                        test: IndexTest::Reference { .. },
                        ..
                    }
                ) {
                    // Canonical references (`Library/x`, absolute URLs) are
                    // indexed as written, not as type/id: match those too.
                    out.push(index(IndexTest::ReferenceUrl(value.to_owned())));
                }
                if modifier.is_none() && !value.contains('/') && !value.contains(':') {
                    // PDS style: a bare value also matches a logical
                    // reference by identifier (`general-practitioner=A81001`).
                    out.push(Predicate::Index {
                        param: format!("{code}{}", defs::IDENTIFIER_SUFFIX),
                        test: IndexTest::Token {
                            system: None,
                            code: value.to_owned(),
                        },
                    });
                }
                out
            }
        },
        ParamType::Uri => vec![index(match modifier {
            None => IndexTest::Uri(value.to_owned()),
            Some("below") => IndexTest::UriBelow(value.to_owned()),
            Some("above") => IndexTest::UriAbove(value.to_owned()),
            _ => return Err(unsupported_modifier()),
        })],
        ParamType::Composite => {
            no_modifier()?;
            let parts = split_escaped(value, '$');
            if parts.len() != info.components.len() {
                return Err(RecordsError::BadRequest(format!(
                    "{name} has {} components separated by '$', not {}",
                    info.components.len(),
                    parts.len()
                )));
            }
            let tests = parts
                .iter()
                .zip(&info.components)
                .map(|(part, kind)| {
                    let kind = kind.ok_or_else(|| {
                        RecordsError::NotSupported(format!("{name}: unknown component type"))
                    })?;
                    component_test(kind, name, part)
                })
                .collect::<Result<Vec<_>, _>>()?;
            vec![index(IndexTest::Composite(tests))]
        }
        ParamType::Date | ParamType::Number | ParamType::Quantity => {
            no_modifier()?;
            vec![index(component_test(info.kind, name, value)?)]
        }
        ParamType::Special => {
            return Err(RecordsError::NotSupported(format!(
                "search parameter '{code}' (special) is not supported"
            )));
        }
    })
}

/// A value without modifiers as a test of its type (also composite parts).
fn component_test(kind: ParamType, name: &str, value: &str) -> Result<IndexTest, RecordsError> {
    Ok(match kind {
        ParamType::Token => token_test(value),
        ParamType::String => IndexTest::StringStartsWith(defs::normalize_string(value)),
        ParamType::Uri => IndexTest::Uri(value.to_owned()),
        ParamType::Date => {
            let (prefix, rest) = split_prefix(value);
            let (low, high) = date_range(rest)?;
            IndexTest::Date { prefix, low, high }
        }
        ParamType::Number => {
            let (prefix, rest) = split_prefix(value);
            let (value, low, high) = number_range(name, rest)?;
            IndexTest::Number {
                prefix,
                value,
                low,
                high,
            }
        }
        ParamType::Quantity => {
            let (prefix, rest) = split_prefix(value);
            let mut parts = split_escaped(rest, '|').into_iter();
            let number = parts.next().unwrap_or_default();
            let (value, low, high) = number_range(name, &number)?;
            let system = parts.next().filter(|s| !s.is_empty());
            let code = parts.next().filter(|s| !s.is_empty());
            IndexTest::Quantity {
                prefix,
                value,
                low,
                high,
                system,
                code,
            }
        }
        ParamType::Reference => {
            let info = ParamInfo {
                kind,
                targets: Vec::new(),
                components: Vec::new(),
                supported: true,
            };
            reference_test(&info, name, None, value)?
        }
        ParamType::Composite | ParamType::Special => {
            return Err(RecordsError::NotSupported(format!(
                "{name}: a {} component is not supported",
                kind.as_str()
            )));
        }
    })
}

/// Most codes a `:in`/`:not-in` expands to.
const MAX_VALUE_SET_CODES: usize = 1_000;

/// `:in` (some code in one of the value sets) and `:not-in` (no code in
/// any), over the expansions of the R4 value sets the server carries (the
/// required-binding ones of the official package).
fn value_set_clauses(
    name: &str,
    param: &str,
    inside: bool,
    urls: &[String],
) -> Result<Vec<Clause>, RecordsError> {
    let defs = carelayer_fhir::definitions::r4();
    let mut tests = Vec::new();
    for url in urls {
        let url = url.split('|').next().unwrap_or(url);
        let vs = defs.value_set(url).ok_or_else(|| {
            RecordsError::NotSupported(format!(
                "{name}: value set '{url}' is not known here (this server expands the R4 required-binding value sets; there is no terminology service)"
            ))
        })?;
        for (system, code) in vs.codes() {
            tests.push(IndexTest::Token {
                system: Some(Some(system.to_owned())),
                code: code.to_owned(),
            });
            // A `code` element carries no system: its value set's is implied.
            tests.push(IndexTest::Token {
                system: Some(None),
                code: code.to_owned(),
            });
        }
    }
    if tests.len() / 2 > MAX_VALUE_SET_CODES {
        return Err(RecordsError::TooCostly(format!(
            "{name}: the value set has {} codes, more than the {MAX_VALUE_SET_CODES} a search may test",
            tests.len() / 2
        )));
    }
    Ok(if inside {
        vec![Clause {
            any_of: tests
                .into_iter()
                .map(|test| Predicate::Index {
                    param: param.to_owned(),
                    test,
                })
                .collect(),
        }]
    } else {
        tests
            .into_iter()
            .map(|test| Clause {
                any_of: vec![Predicate::Not {
                    param: param.to_owned(),
                    test,
                }],
            })
            .collect()
    })
}

fn token_test(value: &str) -> IndexTest {
    match split_escaped(value, '|').as_slice() {
        [code] => IndexTest::Token {
            system: None,
            code: code.clone(),
        },
        [system, code] if system.is_empty() => IndexTest::Token {
            system: Some(None),
            code: code.clone(),
        },
        [system, code] if code.is_empty() => IndexTest::TokenSystem(system.clone()),
        [system, code, ..] => IndexTest::Token {
            system: Some(Some(system.clone())),
            code: code.clone(),
        },
        [] => IndexTest::Token {
            system: None,
            code: String::new(),
        },
    }
}

fn reference_test(
    info: &ParamInfo,
    name: &str,
    modifier: Option<&str>,
    value: &str,
) -> Result<IndexTest, RecordsError> {
    let typed = match modifier {
        None => None,
        Some(m) if m.chars().next().is_some_and(char::is_uppercase) => {
            check_type(m)?;
            Some(m.to_owned())
        }
        Some(m) => {
            return Err(RecordsError::BadRequest(format!(
                "modifier ':{m}' is not valid on {name} (reference parameter)"
            )));
        }
    };
    // Absolute URLs: match on the type/id tail when it has that shape.
    let tail = value.rsplit('/').take(2).collect::<Vec<_>>();
    if value.contains("://") {
        if let [id, ty] = tail.as_slice()
            && carelayer_fhir::definitions::r4().is_resource_type(ty)
        {
            return Ok(IndexTest::Reference {
                target_type: Some((*ty).to_owned()),
                id: (*id).to_owned(),
            });
        }
        return Ok(IndexTest::ReferenceUrl(value.to_owned()));
    }
    if value.starts_with("urn:") {
        return Ok(IndexTest::ReferenceUrl(value.to_owned()));
    }
    match value.split_once('/') {
        Some((ty, id)) if carelayer_fhir::definitions::r4().is_resource_type(ty) => {
            Ok(IndexTest::Reference {
                target_type: Some(ty.to_owned()),
                id: id.split('/').next().unwrap_or(id).to_owned(),
            })
        }
        Some(_) => Ok(IndexTest::ReferenceUrl(value.to_owned())),
        None => {
            let target_type =
                typed.or_else(|| (info.targets.len() == 1).then(|| info.targets[0].clone()));
            Ok(IndexTest::Reference {
                target_type,
                id: value.to_owned(),
            })
        }
    }
}

/// Split on unescaped commas (`\,` is a literal comma).
fn split_values(value: &str) -> Vec<String> {
    split_escaped(value, ',')
}

fn split_escaped(value: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && (next == separator || matches!(next, '\\' | '|' | '$' | ','))
        {
            if let Some(last) = parts.last_mut() {
                last.push(next);
            }
            chars.next();
            continue;
        }
        if c == separator {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn split_prefix(value: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in prefixes {
        if let Some(rest) = value.strip_prefix(text)
            && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, value)
}

/// A date/instant parameter value (`_since`) → the instants it covers.
pub(crate) fn instant_range(value: &str) -> Result<(i64, i64), RecordsError> {
    date_range(value)
}

/// A search date at its precision → the instants it covers.
fn date_range(value: &str) -> Result<(i64, i64), RecordsError> {
    defs::date_range(value).ok_or_else(|| {
        RecordsError::BadRequest(format!(
            "'{value}' is not a date, dateTime or instant (e.g. 2020, 2020-03, 2020-03-01, 2020-03-01T10:00:00Z)"
        ))
    })
}

/// A number and the implicit range of its precision (`100` → [99.5, 100.5]).
fn number_range(name: &str, text: &str) -> Result<(f64, f64, f64), RecordsError> {
    let bad = || RecordsError::BadRequest(format!("{name}: '{text}' is not a number"));
    let value: f64 = text.parse().map_err(|_| bad())?;
    if !value.is_finite() {
        return Err(bad());
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let decimals = mantissa.split_once('.').map_or(0, |(_, frac)| frac.len());
    let exponent: i32 = text
        .split_once(['e', 'E'])
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let half = 0.5 * 10f64.powi(exponent - i32::try_from(decimals).unwrap_or(0));
    Ok((value, value - half, value + half))
}

/// The search parameters this server can run for a type: `(code, type, definition url)`.
#[must_use]
pub fn supported_search_params(resource_type: &str) -> Vec<(String, &'static str, String)> {
    defs::registry()
        .params_for(resource_type)
        .filter(|p| p.param_type() != ParamType::Special)
        .filter(|p| p.is_supported())
        .map(|p| {
            (
                p.code().to_owned(),
                p.param_type().as_str(),
                p.url().to_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        assert_eq!(
            parse_query_string(
                "identifier=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C9434765919&name=a+b"
            ),
            vec![
                (
                    "identifier".into(),
                    "https://fhir.nhs.uk/Id/nhs-number|9434765919".into()
                ),
                ("name".into(), "a b".into())
            ]
        );
        assert_eq!(parse_query_string("a=%"), vec![("a".into(), "%".into())]);
    }

    #[test]
    fn tokens() {
        assert_eq!(
            token_test("a|b"),
            IndexTest::Token {
                system: Some(Some("a".into())),
                code: "b".into()
            }
        );
        assert_eq!(
            token_test("|b"),
            IndexTest::Token {
                system: Some(None),
                code: "b".into()
            }
        );
        assert_eq!(token_test("a|"), IndexTest::TokenSystem("a".into()));
        assert_eq!(
            token_test("b"),
            IndexTest::Token {
                system: None,
                code: "b".into()
            }
        );
        assert_eq!(
            split_values(r"a\,b,c"),
            vec!["a,b".to_owned(), "c".to_owned()]
        );
    }

    #[test]
    fn numbers_have_implicit_ranges() {
        let (v, lo, hi) = number_range("n", "100").unwrap();
        assert!((v - 100.0).abs() < 1e-9 && (lo - 99.5).abs() < 1e-9 && (hi - 100.5).abs() < 1e-9);
        let (_, lo, hi) = number_range("n", "1.50").unwrap();
        assert!((lo - 1.495).abs() < 1e-9 && (hi - 1.505).abs() < 1e-9);
        assert!(number_range("n", "abc").is_err());
        assert_eq!(split_prefix("ge2020"), (Prefix::Ge, "2020"));
        assert_eq!(split_prefix("2020"), (Prefix::Eq, "2020"));
    }
}
