//! The registry of the official R4 SearchParameters, compiled once per resource type.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::{cartesian, dedup, derived_values, values};
use super::index::{IndexEntry, IndexValue};
use super::text;
use crate::fhirpath::{self, Expr, Item, RESOURCE_TYPES};

const SEARCH_PARAMETERS_JSON: &str = include_str!("../../generated/search-parameters.json");
const COMPARTMENTS_JSON: &str = include_str!("../../generated/compartments.json");

/// The string parameter whose values are compared with spaces removed (the
/// search side strips them too): UK postcodes are written with and without
/// the space.
pub const POSTCODE_PARAM: &str = "address-postalcode";

/// Cap on composite combinations per base item (a guard against pathological input).
const COMPOSITE_LIMIT: usize = 256;

/// A search parameter's type (R4 `SearchParamType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl SearchParamType {
    /// The FHIR code (`token`, `date`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SearchParamType::Number => "number",
            SearchParamType::Date => "date",
            SearchParamType::String => "string",
            SearchParamType::Token => "token",
            SearchParamType::Reference => "reference",
            SearchParamType::Composite => "composite",
            SearchParamType::Quantity => "quantity",
            SearchParamType::Uri => "uri",
            SearchParamType::Special => "special",
        }
    }
}

/// One component of a composite parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentDef {
    /// Canonical URL of the SearchParameter this component uses.
    pub definition: String,
    /// FHIRPath, relative to each item of the composite's own expression.
    pub expression: String,
    /// The type of this component's values: the referenced parameter's type
    /// (corrected where R4 pairs a component with the wrong definition, see
    /// `DocumentReference-relationship`). Filled by the registry.
    #[serde(skip_deserializing)]
    pub kind: Option<SearchParamType>,
}

/// An official R4 SearchParameter, as carelayer uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchParamDef {
    pub url: String,
    pub code: String,
    /// Resource types it applies to (`Resource`/`DomainResource` = all).
    pub base: Vec<String>,
    #[serde(rename = "type")]
    pub kind: SearchParamType,
    #[serde(default)]
    pub expression: Option<String>,
    /// Allowed target types for reference parameters.
    #[serde(default)]
    pub target: Vec<String>,
    #[serde(default)]
    pub modifier: Vec<String>,
    #[serde(default)]
    pub comparator: Vec<String>,
    #[serde(default, rename = "multipleOr")]
    pub multiple_or: Option<bool>,
    #[serde(default, rename = "component")]
    pub components: Vec<ComponentDef>,
    /// Why values cannot be extracted for this parameter (`None` = indexed).
    #[serde(skip_deserializing)]
    pub unsupported: Option<String>,
}

impl SearchParamDef {
    /// Whether extraction produces index rows for this parameter.
    pub fn is_supported(&self) -> bool {
        self.unsupported.is_none()
    }

    /// The parameter type.
    pub fn param_type(&self) -> SearchParamType {
        self.kind
    }

    /// The search code (`identifier`, `birthdate`, …).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The canonical URL of the definition.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Allowed target types of a reference parameter (empty = any).
    pub fn targets(&self) -> &[String] {
        &self.target
    }

    fn applies_to(&self, resource_type: &str) -> bool {
        self.base.iter().any(|b| {
            b == resource_type
                || b == "Resource"
                || (b == "DomainResource"
                    && !matches!(resource_type, "Bundle" | "Binary" | "Parameters"))
        })
    }
}

/// A parameter's parsed expression and, for composites, its components' types
/// and parsed expressions.
type Parsed = (Source, Vec<(SearchParamType, Expr)>);

/// Where a parameter's values come from.
#[derive(Debug, Clone)]
enum Source {
    /// Its FHIRPath expression.
    Path(Expr),
    /// `_text`, which has no expression: the words of the narrative.
    NarrativeWords,
    /// `_content`, which has no expression: the words of the whole resource
    /// (see [`text::content_words`]).
    ContentWords,
}

/// A parameter compiled for one resource type.
#[derive(Debug)]
struct Compiled {
    def: usize,
    /// Where its values come from; an expression restricted to the union
    /// branches for this type.
    source: Source,
    /// For composites: each component's type and parsed expression.
    components: Vec<(SearchParamType, Expr)>,
    /// Written as index rows by [`SearchParams::extract`]; false for the
    /// [`HELD_ON_CURRENT`] ones, which are still evaluated on request
    /// ([`SearchParams::extract_param`]). Decided once here, not per
    /// resource written.
    indexed: bool,
}

#[derive(Debug, Default)]
struct TypeIndex {
    /// Every parameter that applies (supported or not), in definition order.
    params: Vec<usize>,
    by_code: HashMap<String, usize>,
    /// The supported ones, ready to evaluate.
    compiled: Vec<Compiled>,
}

/// All official R4 search parameters and compartment definitions.
#[derive(Debug)]
pub struct SearchParams {
    defs: Vec<SearchParamDef>,
    by_url: HashMap<String, usize>,
    types: HashMap<&'static str, TypeIndex>,
    /// For resource types not in R4: just the `Resource`-level parameters.
    generic: TypeIndex,
    /// compartment → resource type → parameter codes
    compartments: HashMap<String, HashMap<String, Vec<String>>>,
}

/// The process-wide registry, built on first use (a few milliseconds).
pub fn registry() -> &'static SearchParams {
    static REGISTRY: OnceLock<SearchParams> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let defs: Vec<SearchParamDef> =
            serde_json::from_str(SEARCH_PARAMETERS_JSON).unwrap_or_default();
        let compartments = serde_json::from_str(COMPARTMENTS_JSON).unwrap_or_default();
        SearchParams::build(defs, compartments)
    })
}

fn param_parse(src: &str) -> Result<Expr, String> {
    fhirpath::parse(src).map_err(|e| format!("expression does not parse: {e}"))
}

impl SearchParams {
    fn build(
        mut defs: Vec<SearchParamDef>,
        compartments: HashMap<String, HashMap<String, Vec<String>>>,
    ) -> Self {
        let by_url: HashMap<String, usize> = defs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.url.clone(), i))
            .collect();
        let kinds: Vec<SearchParamType> = defs.iter().map(|d| d.kind).collect();

        // Parse every expression once; record why a parameter cannot be indexed.
        let mut parsed: Vec<Option<Parsed>> = Vec::with_capacity(defs.len());
        let exprs: Vec<Option<String>> = defs.iter().map(|d| d.expression.clone()).collect();
        for d in &mut defs {
            let comp_defs: Vec<Option<usize>> = d
                .components
                .iter()
                .map(|c| by_url.get(&c.definition).copied())
                .collect();
            for (n, c) in d.components.iter_mut().enumerate() {
                // R4 errata: DocumentReference-relationship pairs `code` with the
                // `relatesto` (reference) definition and `target` with `relation`
                // (token). When another component's definition is the one whose
                // expression ends in this component's path, its type is the right one.
                let suffix = format!(".{}", c.expression);
                let own_matches = comp_defs[n]
                    .and_then(|i| exprs[i].as_deref())
                    .is_some_and(|e| e.ends_with(&suffix));
                let better = if own_matches {
                    None
                } else {
                    comp_defs
                        .iter()
                        .flatten()
                        .copied()
                        .find(|&i| exprs[i].as_deref().is_some_and(|e| e.ends_with(&suffix)))
                };
                c.kind = better.or(comp_defs[n]).map(|i| kinds[i]);
            }
            let result: Result<_, String> = (|| {
                if d.kind == SearchParamType::Special {
                    return Err(match d.code.as_str() {
                        "_filter" => {
                            "special: _filter is a query language, not an indexed value".to_string()
                        }
                        "near" => "special: geographic proximity over Location.position \
                                   is answered by the search engine, not indexed"
                            .to_string(),
                        _ => "special parameter: handled by the search engine, not indexed"
                            .to_string(),
                    });
                }
                let Some(src) = d.expression.as_deref() else {
                    return match d.code.as_str() {
                        // Full text has no expression: words, as strings.
                        "_text" => Ok((Source::NarrativeWords, Vec::new())),
                        "_content" => Ok((Source::ContentWords, Vec::new())),
                        code => Err(match code {
                            "_query" | "_filter" => {
                                "no expression: a query mechanism, not an indexed value".to_string()
                            }
                            _ => "no expression in the definition (extension parameter without \
                              FHIRPath)"
                                .to_string(),
                        }),
                    };
                };
                let expr = param_parse(src)?;
                let mut comps = Vec::new();
                if d.kind == SearchParamType::Composite {
                    if d.components.is_empty() {
                        return Err("composite without components".into());
                    }
                    for c in &d.components {
                        let kind = c.kind.ok_or_else(|| {
                            format!(
                                "component definition {} is not a known parameter",
                                c.definition
                            )
                        })?;
                        if matches!(kind, SearchParamType::Composite | SearchParamType::Special) {
                            return Err(format!("component {} is {}", c.definition, kind.as_str()));
                        }
                        comps.push((kind, param_parse(&c.expression)?));
                    }
                }
                Ok((Source::Path(expr), comps))
            })();
            match result {
                Ok(p) => parsed.push(Some(p)),
                Err(reason) => {
                    d.unsupported = Some(reason);
                    parsed.push(None);
                }
            }
        }

        let build_index = |rt: &str| -> TypeIndex {
            let mut ix = TypeIndex::default();
            for (i, d) in defs.iter().enumerate() {
                if !d.applies_to(rt) {
                    continue;
                }
                ix.params.push(i);
                ix.by_code.entry(d.code.clone()).or_insert(i);
                let source = match &parsed[i] {
                    Some((Source::Path(expr), _)) => expr.for_resource_type(rt).map(Source::Path),
                    Some((words, _)) => Some(words.clone()),
                    None => None,
                };
                if let (Some(source), Some((_, comps))) = (source, &parsed[i]) {
                    ix.compiled.push(Compiled {
                        def: i,
                        source,
                        components: comps.clone(),
                        indexed: !HELD_ON_CURRENT.contains(&d.code.as_str()),
                    });
                }
            }
            ix
        };
        let types = RESOURCE_TYPES
            .iter()
            .map(|&rt| (rt, build_index(rt)))
            .collect();
        // "Resource" is not a concrete type: only base-`Resource` params apply.
        let generic = build_index("Resource");

        SearchParams {
            defs,
            by_url,
            types,
            generic,
            compartments,
        }
    }

    fn index(&self, resource_type: &str) -> &TypeIndex {
        self.types.get(resource_type).unwrap_or(&self.generic)
    }

    /// Every definition (1,387 in R4), in the official order.
    pub fn all(&self) -> &[SearchParamDef] {
        &self.defs
    }

    /// The parameter `code` as it applies to `resource_type` (including the
    /// `Resource`-level `_id`, `_lastUpdated`, …).
    pub fn param(&self, resource_type: &str, code: &str) -> Option<&SearchParamDef> {
        self.index(resource_type)
            .by_code
            .get(code)
            .map(|&i| &self.defs[i])
    }

    /// A definition by canonical URL.
    pub fn by_url(&self, url: &str) -> Option<&SearchParamDef> {
        self.by_url.get(url).map(|&i| &self.defs[i])
    }

    /// Every parameter applying to `resource_type`, supported or not (see
    /// [`SearchParamDef::is_supported`]).
    pub fn params_for(
        &self,
        resource_type: &str,
    ) -> impl ExactSizeIterator<Item = &SearchParamDef> + '_ {
        self.index(resource_type)
            .params
            .iter()
            .map(|&i| &self.defs[i])
    }

    /// Parameters whose values cannot be extracted, with the reason.
    pub fn unsupported(&self) -> Vec<(&str, String)> {
        self.defs
            .iter()
            .filter_map(|d| d.unsupported.as_ref().map(|r| (d.url.as_str(), r.clone())))
            .collect()
    }

    /// The parameter codes linking `resource_type` to `compartment` (e.g.
    /// `("Patient", "Observation")` → `subject`, `performer`).
    pub fn compartment_params(&self, compartment: &str, resource_type: &str) -> &[String] {
        self.compartments
            .get(compartment)
            .and_then(|m| m.get(resource_type))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn evaluate_param(&self, c: &Compiled, resource: &Value, out: &mut Vec<IndexValue>) {
        self.evaluate_param_with(c, resource, out, None);
    }

    /// [`Self::evaluate_param`], also collecting derived rows (see
    /// `derived_values`) when `derived` is given.
    fn evaluate_param_with(
        &self,
        c: &Compiled,
        resource: &Value,
        out: &mut Vec<IndexValue>,
        mut derived: Option<&mut Vec<(&'static str, IndexValue)>>,
    ) {
        let kind = self.defs[c.def].kind;
        let expr = match &c.source {
            Source::Path(expr) => expr,
            Source::NarrativeWords | Source::ContentWords => {
                let words = if matches!(c.source, Source::NarrativeWords) {
                    text::narrative_words(resource)
                } else {
                    text::content_words(resource)
                };
                out.extend(
                    words
                        .into_iter()
                        .map(|(normalized, exact)| IndexValue::String { normalized, exact }),
                );
                return;
            }
        };
        let items = fhirpath::evaluate(expr, resource);
        if kind == SearchParamType::Composite {
            let mut parts: Vec<Vec<IndexValue>> = Vec::with_capacity(c.components.len());
            let mut found = Vec::with_capacity(c.components.len());
            for base in items {
                // Evaluate every component first: converting values (string
                // normalisation) is wasted when another component is empty.
                found.clear();
                for (_, cexpr) in &c.components {
                    let items = fhirpath::evaluate_on(cexpr, &[base], resource);
                    if items.is_empty() {
                        break;
                    }
                    found.push(items);
                }
                if found.len() < c.components.len() {
                    continue;
                }
                parts.clear();
                for ((ckind, _), items) in c.components.iter().zip(found.drain(..)) {
                    let mut vals = Vec::new();
                    for it in items {
                        values(*ckind, it, &mut vals);
                    }
                    dedup(&mut vals);
                    parts.push(vals);
                }
                cartesian(&parts, COMPOSITE_LIMIT, out);
            }
        } else {
            let wants_derived = matches!(kind, SearchParamType::Reference | SearchParamType::Token);
            for it in items {
                if wants_derived && let Some(d) = derived.as_deref_mut() {
                    derived_values(kind, it, d);
                }
                values(kind, it, out);
            }
        }
        dedup(out);
    }

    /// The index rows of `resource` for every supported parameter of its type.
    /// A value without a `resourceType` yields nothing.
    pub fn extract(&self, resource: &Value) -> Vec<IndexEntry> {
        let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
            return Vec::new();
        };
        let ix = self.index(rt);
        let mut out = Vec::with_capacity(32);
        let mut vals = Vec::new();
        let mut derived = Vec::new();
        for c in &ix.compiled {
            if !c.indexed {
                continue;
            }
            vals.clear();
            derived.clear();
            self.evaluate_param_with(c, resource, &mut vals, Some(&mut derived));
            let code = &self.defs[c.def].code;
            if code == POSTCODE_PARAM {
                // Postcodes match with spaces ignored (`LS14AP` = `LS1 4AP`).
                for v in &mut vals {
                    if let IndexValue::String { normalized, .. } = v {
                        normalized.retain(|ch| ch != ' ');
                    }
                }
            }
            out.extend(vals.drain(..).map(|value| IndexEntry {
                param: code.clone(),
                value,
            }));
            let mut seen: Vec<(&'static str, IndexValue)> = Vec::new();
            for (suffix, value) in derived.drain(..) {
                if seen.iter().any(|(s, v)| *s == suffix && *v == value) {
                    continue;
                }
                seen.push((suffix, value.clone()));
                out.push(IndexEntry {
                    param: format!("{code}{suffix}"),
                    value,
                });
            }
        }
        out
    }

    /// The values of one parameter of `resource` (empty if the parameter does
    /// not apply or is not supported).
    pub fn extract_param(&self, resource: &Value, code: &str) -> Vec<IndexValue> {
        let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
            return Vec::new();
        };
        let ix = self.index(rt);
        let mut out = Vec::new();
        if let Some(c) = ix.compiled.iter().find(|c| self.defs[c.def].code == code) {
            self.evaluate_param(c, resource, &mut out);
        }
        out
    }

    /// The patient whose compartment `resource` belongs to: a Patient's own id;
    /// otherwise the id of the first local `Patient/{id}` reference found through
    /// the Patient CompartmentDefinition's parameters for its type, in the
    /// definition's order. Absolute URLs and `urn:` references are not local
    /// and do not count.
    pub fn patient_compartment_owner(&self, resource: &Value) -> Option<String> {
        let rt = resource.get("resourceType").and_then(Value::as_str)?;
        if rt == "Patient" {
            return resource
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| fhirpath::is_fhir_id(id))
                .map(str::to_string);
        }
        for code in self.compartment_params("Patient", rt) {
            for v in self.extract_param(resource, code) {
                if let IndexValue::Reference {
                    target_type: Some(t),
                    target_id: Some(id),
                    url,
                } = v
                    && t == "Patient"
                    && !url.contains(':')
                {
                    return Some(id);
                }
            }
        }
        None
    }
}

/// Parameters every resource has, whose searches read the store's own
/// columns for them (the current version's `id` and `last_updated`),
/// so [`SearchParams::extract`] leaves them out of the index rows: each
/// would be one more row, and two more B-tree inserts, for every resource
/// written. `records` answers every form of them without index rows.
pub const HELD_ON_CURRENT: &[&str] = &["_id", "_lastUpdated"];

/// Index rows of `resource` for all its type's supported parameters.
pub fn extract_index(resource: &Value) -> Vec<IndexEntry> {
    registry().extract(resource)
}

/// See [`SearchParams::patient_compartment_owner`].
pub fn patient_compartment_owner(resource: &Value) -> Option<String> {
    registry().patient_compartment_owner(resource)
}

/// See [`SearchParams::compartment_params`].
pub fn compartment_params(compartment: &str, resource_type: &str) -> &'static [String] {
    registry().compartment_params(compartment, resource_type)
}

/// `(url, reason)` of every official parameter extraction cannot index; keep
/// these out of the CapabilityStatement.
pub fn unsupported_params() -> Vec<(&'static str, String)> {
    registry().unsupported()
}

/// The index values one FHIRPath result item yields for a parameter of type
/// `kind` (for callers that evaluate their own expressions).
pub fn item_values(kind: SearchParamType, item: Item<'_>) -> Vec<IndexValue> {
    let mut out = Vec::new();
    values(kind, item, &mut out);
    out
}
