//! Structural validation of FHIR R4 JSON resources, plus carelayer's UK rules.
//!
//! [`validate_resource`] walks a resource against the base StructureDefinitions
//! in [`crate::definitions`] and reports every problem it finds as an [`Issue`]
//! with a FHIRPath-style location (`Patient.identifier[0].value`). An empty list
//! means the resource is valid. It runs on every write, so it allocates little
//! and compiles nothing per call.
//!
//! # What is checked
//!
//! - The top level is an object with a known, concrete `resourceType`; the same
//!   for resources nested in `contained`, `Bundle.entry.resource`,
//!   `Bundle.entry.response.outcome` and `Parameters.parameter.resource`
//!   (anything typed `Resource`), recursively. A resource `id` must match the
//!   `id` format.
//! - Unknown properties, including unknown choice suffixes (`valueFoo`), `_x`
//!   on non-primitive elements and `resourceType` outside a resource.
//! - JSON shape: arrays exactly where the base definition's max is not 1; objects
//!   for complex types; JSON booleans, numbers and strings for primitives.
//!   Empty objects, arrays and strings are invalid; `null` only inside an array
//!   of a primitive paired with a non-null `_x` entry (and vice versa).
//! - Cardinality: min (of elements whose parent is present) and max.
//! - Choice elements: at most one variant.
//! - Primitive formats: the official regexes (anchored), calendar-valid dates,
//!   32-bit ranges for integers, no control characters in strings, 1 MB limit.
//! - Primitive extensions `_x`: an `Element` (id, extension) or, for arrays, an
//!   array of those or `null` aligned with the values.
//! - `contentReference` elements (e.g. `Questionnaire.item.item`) recurse.
//! - Extensions: `url` required; ext-1 (either `extension` or `value[x]`, not both).
//! - Narrative `div`: an XHTML `<div>` in the XHTML namespace (the content is
//!   not parsed).
//! - Required bindings whose ValueSet is enumerable: `code` values must be in
//!   the expansion; `Coding`s (alone or in a `CodeableConcept`) whose `system`
//!   is one of the expansion's systems must use one of its codes.
//! - UK rules: an `Identifier` with system `https://fhir.nhs.uk/Id/nhs-number`
//!   holds a valid NHS number in canonical form (exactly 10 digits, no spaces,
//!   Modulus 11, not all one digit); one with system
//!   `https://fhir.nhs.uk/Id/ods-organization-code` holds a well-formed ODS code
//!   (see [`crate::ods`]). These are reported as `business-rule` issues.
//!
//! Not checked: invariants other than ext-1 (FHIRPath constraints), profiles,
//! extensible/preferred bindings, reference targets, XHTML content.
//!
//! # Locations
//!
//! Locations start with the resource type and use JSON property names, so a
//! choice appears as its JSON key (`Observation.valueQuantity.value`); array
//! items carry an index; a primitive's `_x` extension is located under the
//! element's name (`Patient.birthDate.extension[0]`). Nested resources continue
//! the path of the element holding them (`Bundle.entry[2].resource.status`).

use serde_json::{Map, Number, Value};

use crate::definitions::{
    Definitions, ElementDef, JsonKind, Primitive, Scope, TypeDef, TypeKind, r4,
};
use crate::nhs_number::NhsNumber;
use crate::ods::OdsCode;
use crate::{NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM};

/// How serious an [`Issue`] is (the OperationOutcome `severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The resource must be rejected.
    Error,
    /// Worth telling the client; the resource is still acceptable.
    Warning,
}

impl Severity {
    /// The FHIR `issue-severity` code.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// The FHIR `issue-type` of an [`Issue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    /// Wrong JSON shape: unknown property, wrong JSON type, array vs single,
    /// empty object/array, `null`, max cardinality exceeded.
    Structure,
    /// A required element (min ≥ 1) is missing, or too few repeats.
    Required,
    /// A primitive value has the wrong format or range.
    Value,
    /// A carelayer business rule fails: an NHS number or ODS code identifier
    /// is malformed (HTTP 422 rather than 400).
    BusinessRule,
    /// An invariant (ext-1) is violated.
    Invariant,
    /// Not a resource carelayer understands (e.g. unknown `resourceType`).
    Invalid,
    /// A code is not in the required value set.
    CodeInvalid,
    /// A value is longer than allowed.
    TooLong,
}

impl IssueCode {
    /// The FHIR `issue-type` code (`"structure"`, `"code-invalid"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Invariant => "invariant",
            IssueCode::Invalid => "invalid",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::TooLong => "too-long",
        }
    }
}

/// One validation finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Error or warning.
    pub severity: Severity,
    /// The FHIR issue type.
    pub code: IssueCode,
    /// FHIRPath-style location, e.g. `Patient.identifier[0].value`.
    pub location: String,
    /// A human-readable explanation.
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{}] at {}: {}",
            self.severity.as_str(),
            self.code.as_str(),
            self.location,
            self.message
        )
    }
}

/// Validates a resource (parsed JSON) against the R4 base definitions and the UK
/// rules. Returns every issue found; an empty vector means valid.
pub fn validate_resource(resource: &Value) -> Vec<Issue> {
    let defs = r4();
    let Some(element) = defs.type_def("Element") else {
        return vec![Issue {
            severity: Severity::Error,
            code: IssueCode::Invalid,
            location: String::new(),
            message: "R4 definitions lack Element".into(),
        }];
    };
    let mut v = Validator {
        defs,
        element,
        issues: Vec::new(),
        loc: String::with_capacity(128),
    };
    v.resource(resource, true);
    v.issues
}

/// Whether every issue is a warning (the resource may be stored).
pub fn is_valid(issues: &[Issue]) -> bool {
    issues.iter().all(|i| i.severity != Severity::Error)
}

/// Strings (other than base64Binary and xhtml) must be under 1 MB.
const MAX_STRING_BYTES: usize = 1024 * 1024;

struct Validator<'d> {
    defs: &'d Definitions,
    /// The `Element` type: the shape of a primitive's `_x` companion.
    element: &'d TypeDef,
    issues: Vec<Issue>,
    /// The current location; pushed and truncated as the walk descends.
    loc: String,
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Java's `\s` (the FHIR regexes' whitespace).
fn is_java_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

impl<'d> Validator<'d> {
    fn issue(&mut self, code: IssueCode, message: String) {
        self.issues.push(Issue {
            severity: Severity::Error,
            code,
            location: self.loc.clone(),
            message,
        });
    }

    fn issue_at(&mut self, child: &str, code: IssueCode, message: String) {
        let mark = self.loc.len();
        self.push_name(child);
        self.issue(code, message);
        self.loc.truncate(mark);
    }

    fn push_name(&mut self, name: &str) {
        if !self.loc.is_empty() {
            self.loc.push('.');
        }
        self.loc.push_str(name);
    }

    fn push_index(&mut self, i: usize) {
        use std::fmt::Write;
        let _ = write!(self.loc, "[{i}]");
    }

    /// A resource: at the top level (`top`) or nested where the element type is
    /// `Resource`.
    fn resource(&mut self, value: &Value, top: bool) {
        let Value::Object(map) = value else {
            self.issue(
                IssueCode::Structure,
                format!(
                    "a resource must be a JSON object, found {}",
                    json_type_name(value)
                ),
            );
            return;
        };
        let rt = match map.get("resourceType") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                self.issue_at(
                    "resourceType",
                    IssueCode::Structure,
                    format!(
                        "resourceType must be a string, found {}",
                        json_type_name(other)
                    ),
                );
                return;
            }
            None => {
                self.issue(IssueCode::Required, "missing resourceType".into());
                return;
            }
        };
        let Some(td) = self
            .defs
            .type_def(rt)
            .filter(|t| t.kind() == TypeKind::Resource && !t.is_abstract())
        else {
            self.issue(
                IssueCode::Invalid,
                format!("'{rt}' is not an R4 resource type"),
            );
            return;
        };
        let mark = self.loc.len();
        if top {
            self.loc.push_str(rt);
        }
        if let Some(Value::String(id)) = map.get("id")
            && !is_fhir_id(id)
        {
            self.issue_at(
                "id",
                IssueCode::Value,
                format!(
                    "'{}' is not a valid resource id (1-64 of A-Z a-z 0-9 - .)",
                    truncate_for_message(id)
                ),
            );
        }
        self.object(map, td.root(), true);
        self.loc.truncate(mark);
    }

    /// The properties of one JSON object whose children are those of `scope`.
    fn object(&mut self, map: &Map<String, Value>, scope: Scope<'d>, is_resource: bool) {
        if map.is_empty() {
            self.issue(
                IssueCode::Structure,
                "empty objects are not allowed in FHIR JSON".into(),
            );
            return;
        }
        // (element index, type index) of each element present.
        let mut seen: Vec<(u32, usize)> = Vec::with_capacity(map.len());
        for (key, value) in map {
            if is_resource && key == "resourceType" {
                continue;
            }
            let (name, underscore) = match key.strip_prefix('_') {
                Some(n) => (n, true),
                None => (key.as_str(), false),
            };
            let Some((elem, ti)) = scope.json_key_index(name) else {
                self.unknown_property(scope, key);
                continue;
            };
            let ty = self.defs.element_type(elem, ti);
            let prim = ty.and_then(TypeDef::primitive);
            if underscore && prim.is_none() {
                self.issue_at(
                    key,
                    IssueCode::Structure,
                    format!(
                        "unknown property '{key}': '_' extensions exist only for primitive elements"
                    ),
                );
                continue;
            }
            if elem.is_choice() && seen.iter().any(|&(e, t)| e == elem.index() && t != ti) {
                self.issue_at(
                    key,
                    IssueCode::Structure,
                    format!(
                        "only one type of the choice element {} may be present",
                        elem.name()
                    ),
                );
            }
            if !seen.contains(&(elem.index(), ti)) {
                seen.push((elem.index(), ti));
            }
            let mark = self.loc.len();
            self.push_name(name);
            if underscore {
                self.primitive_extension(map, name, value, elem);
            } else {
                self.element_value(map, name, value, scope, elem, ti, ty, prim);
            }
            self.loc.truncate(mark);
        }
        for child in scope.children() {
            if child.min() > 0 && !seen.iter().any(|&(e, _)| e == child.index()) {
                self.issue_at(
                    child.fhirpath_name(),
                    IssueCode::Required,
                    format!(
                        "missing required element '{}' (min {})",
                        child.name(),
                        child.min()
                    ),
                );
            }
        }
        if scope.element().is_none() {
            match scope.type_def().name() {
                "Extension" => self.extension_invariant(map),
                "Identifier" => self.uk_identifier(map),
                _ => {}
            }
        }
    }

    fn unknown_property(&mut self, scope: Scope<'d>, key: &str) {
        let bare = key.strip_prefix('_').unwrap_or(key);
        let mut message = format!("unknown property '{key}'");
        for c in scope.children().filter(|c| c.is_choice()) {
            let stem = c.fhirpath_name();
            if bare == stem {
                message = format!(
                    "the choice element {} needs a type suffix (e.g. {})",
                    c.name(),
                    c.json_names().first().map_or("", String::as_str)
                );
                break;
            }
            if let Some(suffix) = bare.strip_prefix(stem)
                && suffix.starts_with(|ch: char| ch.is_ascii_uppercase())
            {
                message = format!(
                    "unknown property '{key}': '{suffix}' is not a type of the choice element {}",
                    c.name()
                );
                break;
            }
        }
        if key == "resourceType" {
            message = "resourceType is only allowed at the root of a resource".into();
        }
        self.issue_at(key, IssueCode::Structure, message);
    }

    /// The value of a (non-`_`) property. `self.loc` already names it.
    #[allow(clippy::too_many_arguments)]
    fn element_value(
        &mut self,
        map: &Map<String, Value>,
        name: &str,
        value: &Value,
        scope: Scope<'d>,
        elem: &'d ElementDef,
        ti: usize,
        ty: Option<&'d TypeDef>,
        prim: Option<Primitive>,
    ) {
        if elem.max() == crate::definitions::Max::Count(0) {
            self.issue(
                IssueCode::Structure,
                format!("element '{}' is not allowed here (max 0)", elem.name()),
            );
            return;
        }
        if !elem.is_array() {
            match value {
                Value::Array(_) => self.issue(
                    IssueCode::Structure,
                    format!(
                        "'{}' has max cardinality {}: a single value is expected, found an array",
                        elem.name(),
                        elem.max()
                    ),
                ),
                Value::Null => self.issue(
                    IssueCode::Structure,
                    "null is not allowed (omit the property instead)".into(),
                ),
                _ => self.single(value, scope, elem, ti, ty, prim),
            }
            return;
        }
        let Value::Array(items) = value else {
            self.issue(
                IssueCode::Structure,
                format!(
                    "'{}' repeats (max {}): an array is expected, found {}",
                    elem.name(),
                    elem.max(),
                    json_type_name(value)
                ),
            );
            return;
        };
        if items.is_empty() {
            self.issue(
                IssueCode::Structure,
                "empty arrays are not allowed in FHIR JSON (omit the property)".into(),
            );
            return;
        }
        self.array_cardinality(elem, items.len());
        let mut companion: Option<Option<&Value>> = None;
        for (i, item) in items.iter().enumerate() {
            let mark = self.loc.len();
            self.push_index(i);
            if item.is_null() {
                let ext = *companion.get_or_insert_with(|| map.get(&format!("_{name}")));
                let paired = prim.is_some()
                    && matches!(ext, Some(Value::Array(a)) if a.get(i).is_some_and(Value::is_object));
                if !paired {
                    self.issue(
                        IssueCode::Structure,
                        if prim.is_some() {
                            format!("null is only allowed where '_{name}' has an extension at the same index")
                        } else {
                            "null is not allowed in an array of complex values".into()
                        },
                    );
                }
            } else {
                self.single(item, scope, elem, ti, ty, prim);
            }
            self.loc.truncate(mark);
        }
    }

    /// Min/max of a repeating element, counted over the values and their `_x`
    /// companions; reported once, from the values when both are present.
    fn array_cardinality(&mut self, elem: &ElementDef, len: usize) {
        if !elem.max().allows(len) {
            self.issue(
                IssueCode::Structure,
                format!(
                    "'{}' allows at most {} values, found {len}",
                    elem.name(),
                    elem.max()
                ),
            );
        }
        if (len as u64) < u64::from(elem.min()) {
            self.issue(
                IssueCode::Required,
                format!(
                    "'{}' needs at least {} values, found {len}",
                    elem.name(),
                    elem.min()
                ),
            );
        }
    }

    /// One non-null, non-array value of an element.
    fn single(
        &mut self,
        value: &Value,
        scope: Scope<'d>,
        elem: &'d ElementDef,
        ti: usize,
        ty: Option<&'d TypeDef>,
        prim: Option<Primitive>,
    ) {
        if let Some(p) = prim {
            self.primitive(value, p, elem);
            return;
        }
        let Value::Object(obj) = value else {
            let tname = ty.map_or("BackboneElement", TypeDef::name);
            self.issue(
                IssueCode::Structure,
                format!(
                    "{tname} must be a JSON object, found {}",
                    json_type_name(value)
                ),
            );
            return;
        };
        if let Some(t) = ty
            && t.kind() == TypeKind::Resource
        {
            self.resource(value, false);
            return;
        }
        let Some(sub) = self.defs.descend_index(scope.type_def(), elem, ti) else {
            return;
        };
        self.object(obj, sub, false);
        if let (Some(url), Some(t)) = (elem.required_binding(), ty) {
            match t.name() {
                "Coding" => self.coding_binding(obj, url, None),
                "CodeableConcept" => {
                    if let Some(Value::Array(codings)) = obj.get("coding") {
                        for (i, c) in codings.iter().enumerate() {
                            if let Value::Object(c) = c {
                                self.coding_binding(c, url, Some(i));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// A primitive's `_x` companion. `self.loc` names the element.
    fn primitive_extension(
        &mut self,
        map: &Map<String, Value>,
        name: &str,
        value: &Value,
        elem: &ElementDef,
    ) {
        let values = map.get(name);
        if !elem.is_array() {
            match value {
                Value::Object(obj) => self.object(obj, self.element.root(), false),
                other => self.issue(
                    IssueCode::Structure,
                    format!(
                        "'_{name}' must be an object (id, extension), found {}",
                        json_type_name(other)
                    ),
                ),
            }
            return;
        }
        let Value::Array(items) = value else {
            self.issue(
                IssueCode::Structure,
                format!(
                    "'_{name}' must be an array aligned with '{name}', found {}",
                    json_type_name(value)
                ),
            );
            return;
        };
        if items.is_empty() {
            self.issue(
                IssueCode::Structure,
                "empty arrays are not allowed in FHIR JSON (omit the property)".into(),
            );
            return;
        }
        let value_items = match values {
            Some(Value::Array(v)) => Some(v),
            _ => None,
        };
        match value_items {
            Some(v) if v.len() != items.len() => self.issue(
                IssueCode::Structure,
                format!(
                    "'_{name}' has {} entries but '{name}' has {}: they must align",
                    items.len(),
                    v.len()
                ),
            ),
            None => self.array_cardinality(elem, items.len()),
            _ => {}
        }
        for (i, item) in items.iter().enumerate() {
            let mark = self.loc.len();
            self.push_index(i);
            match item {
                Value::Object(obj) => self.object(obj, self.element.root(), false),
                Value::Null => {
                    let has_value = value_items
                        .and_then(|v| v.get(i))
                        .is_some_and(|v| !v.is_null());
                    // Both null is reported from the value side.
                    if !has_value && value_items.is_none_or(|v| v.get(i).is_none()) {
                        self.issue(
                            IssueCode::Structure,
                            format!(
                                "null in '_{name}' needs a value in '{name}' at the same index"
                            ),
                        );
                    }
                }
                other => self.issue(
                    IssueCode::Structure,
                    format!(
                        "'_{name}' entries must be objects or null, found {}",
                        json_type_name(other)
                    ),
                ),
            }
            self.loc.truncate(mark);
        }
    }

    /// A primitive value (not null, not an array).
    fn primitive(&mut self, value: &Value, p: Primitive, elem: &ElementDef) {
        match (p.json_kind(), value) {
            (JsonKind::Bool, Value::Bool(_)) => {}
            (JsonKind::Number, Value::Number(n)) => self.number(n, p),
            (JsonKind::String, Value::String(s)) => self.string(s, p, elem),
            (kind, other) => {
                let want = match kind {
                    JsonKind::Bool => "a JSON boolean",
                    JsonKind::Number => "a JSON number",
                    JsonKind::String => "a JSON string",
                };
                self.issue(
                    IssueCode::Structure,
                    format!(
                        "{} must be {want}, found {}",
                        p.name(),
                        json_type_name(other)
                    ),
                );
            }
        }
    }

    fn number(&mut self, n: &Number, p: Primitive) {
        let text = n.as_str();
        let re_name = p.name();
        let ok_format = self
            .defs
            .primitive_regex(re_name)
            .is_none_or(|re| re.is_match(text));
        if !ok_format {
            self.issue(IssueCode::Value, format!("{text} is not a valid {re_name}"));
            return;
        }
        if p != Primitive::Decimal {
            // The regexes guarantee an optional '-' and digits only.
            let in_range = text.parse::<i64>().is_ok_and(|v| i32::try_from(v).is_ok());
            if !in_range {
                self.issue(
                    IssueCode::Value,
                    format!("{text} is out of range for {re_name} (32-bit signed)"),
                );
            }
        }
    }

    fn string(&mut self, s: &str, p: Primitive, elem: &ElementDef) {
        if s.is_empty() {
            self.issue(
                IssueCode::Value,
                "empty strings are not allowed in FHIR JSON (omit the property)".into(),
            );
            return;
        }
        if s.len() > MAX_STRING_BYTES && !matches!(p, Primitive::Base64Binary | Primitive::Xhtml) {
            self.issue(
                IssueCode::TooLong,
                format!(
                    "{} values must be under 1 MB, found {} bytes",
                    p.name(),
                    s.len()
                ),
            );
            return;
        }
        let ok = match p {
            Primitive::String | Primitive::Markdown => {
                if let Some(c) = s
                    .chars()
                    .find(|&c| c < ' ' && !matches!(c, '\t' | '\r' | '\n'))
                {
                    self.issue(
                        IssueCode::Value,
                        format!(
                            "control character U+{:04X} is not allowed in a {}",
                            c as u32,
                            p.name()
                        ),
                    );
                }
                return;
            }
            Primitive::Code => is_fhir_code(s),
            Primitive::Id => is_fhir_id(s),
            Primitive::Uri | Primitive::Url | Primitive::Canonical => !s.contains(is_java_ws),
            Primitive::Xhtml => {
                self.xhtml(s);
                return;
            }
            Primitive::Date | Primitive::DateTime | Primitive::Instant => {
                self.matches_regex(p, s) && calendar_valid(s)
            }
            _ => self.matches_regex(p, s),
        };
        if !ok {
            self.issue(
                IssueCode::Value,
                format!("'{}' is not a valid {}", truncate_for_message(s), p.name()),
            );
            return;
        }
        if p == Primitive::Code
            && let Some(url) = elem.required_binding()
            && let Some(vs) = self.defs.value_set(url)
            && !vs.contains(None, s)
        {
            self.issue(
                IssueCode::CodeInvalid,
                format!(
                    "code '{}' is not in the required value set {url}",
                    truncate_for_message(s)
                ),
            );
        }
    }

    fn matches_regex(&self, p: Primitive, s: &str) -> bool {
        self.defs
            .primitive_regex(p.name())
            .is_none_or(|re| re.is_match(s))
    }

    /// Narrative `div`: the FHIR JSON rules require an XHTML `div` element in the
    /// XHTML namespace. The content itself is not parsed.
    fn xhtml(&mut self, s: &str) {
        let t = s.trim_matches(is_java_ws);
        let open_end = t.find('>').unwrap_or(t.len());
        let open = &t[..open_end];
        let is_div = t.starts_with("<div")
            && t[4..].starts_with(|c: char| is_java_ws(c) || c == '>' || c == '/');
        let ns = open.contains("xmlns=\"http://www.w3.org/1999/xhtml\"")
            || open.contains("xmlns='http://www.w3.org/1999/xhtml'");
        let closed = t.ends_with("</div>") || (t.ends_with("/>") && open_end + 1 == t.len());
        if !(is_div && ns && closed) {
            self.issue(
                IssueCode::Value,
                "the narrative must be a single XHTML <div> element with \
                 xmlns=\"http://www.w3.org/1999/xhtml\""
                    .into(),
            );
        }
    }

    /// A Coding under a required binding: when its system is in the
    /// expansion, its code must be too.
    fn coding_binding(&mut self, coding: &Map<String, Value>, url: &str, index: Option<usize>) {
        let (Some(Value::String(system)), Some(Value::String(code))) =
            (coding.get("system"), coding.get("code"))
        else {
            return;
        };
        let Some(vs) = self.defs.value_set(url) else {
            return;
        };
        if vs.has_system(system) && !vs.contains(Some(system), code) {
            let mark = self.loc.len();
            if let Some(i) = index {
                self.push_name("coding");
                self.push_index(i);
            }
            self.issue_at(
                "code",
                IssueCode::CodeInvalid,
                format!(
                    "code '{}' from {system} is not in the required value set {url}",
                    truncate_for_message(code)
                ),
            );
            self.loc.truncate(mark);
        }
    }

    /// ext-1: an extension has either nested extensions or a value, not both.
    fn extension_invariant(&mut self, map: &Map<String, Value>) {
        let has_ext = map.contains_key("extension");
        let has_value = map.keys().any(|k| {
            let k = k.strip_prefix('_').unwrap_or(k);
            k.len() > 5 && k.starts_with("value")
        });
        if has_ext == has_value {
            self.issue(
                IssueCode::Invariant,
                if has_ext {
                    "ext-1: an extension must have either extensions or a value[x], not both".into()
                } else {
                    "ext-1: an extension must have either extensions or a value[x]".into()
                },
            );
        }
    }

    /// carelayer's UK identifier rules.
    fn uk_identifier(&mut self, map: &Map<String, Value>) {
        let (Some(Value::String(system)), Some(Value::String(value))) =
            (map.get("system"), map.get("value"))
        else {
            return;
        };
        if system == NHS_NUMBER_SYSTEM {
            if let Err(e) = NhsNumber::parse_canonical(value) {
                self.issue_at(
                    "value",
                    IssueCode::BusinessRule,
                    format!(
                        "'{}' is not a valid NHS number: {e} (stored NHS numbers are exactly 10 digits, no spaces)",
                        truncate_for_message(value)
                    ),
                );
            }
        } else if system == ODS_ORGANIZATION_SYSTEM
            && let Err(e) = OdsCode::check(value)
        {
            self.issue_at(
                "value",
                IssueCode::BusinessRule,
                format!(
                    "'{}' is not a well-formed ODS organisation code: {e}",
                    truncate_for_message(value)
                ),
            );
        }
    }
}

/// The `id` type: `[A-Za-z0-9\-\.]{1,64}`.
fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The `code` type: `[^\s]+(\s[^\s]+)*` (Java whitespace): no leading,
/// trailing or doubled whitespace.
fn is_fhir_code(s: &str) -> bool {
    let mut prev_ws = true;
    for c in s.chars() {
        let ws = is_java_ws(c);
        if ws && prev_ws {
            return false;
        }
        prev_ws = ws;
    }
    !prev_ws
}

/// The date part of a date/dateTime/instant (already regex-checked) names a
/// real day: the regex alone accepts `2023-02-31`.
fn calendar_valid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 10 {
        return true;
    }
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    day <= days
}

fn truncate_for_message(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(v: Value) -> Vec<(String, &'static str)> {
        validate_resource(&v)
            .into_iter()
            .map(|i| (i.location, i.code.as_str()))
            .collect()
    }

    fn assert_valid(v: Value) {
        let found = validate_resource(&v);
        assert!(found.is_empty(), "{v}\n{found:#?}");
    }

    fn observation() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "bp-1",
            "meta": {"versionId": "1", "lastUpdated": "2024-03-01T10:00:00Z"},
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-01T09:30:00+00:00",
            "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
            "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"}]}],
            "referenceRange": [{"low": {"value": 60.0}, "high": {"value": 100}}]
        })
    }

    #[test]
    fn a_typical_observation_is_valid() {
        assert_valid(observation());
    }

    #[test]
    fn nested_resources_and_primitive_extensions_are_valid() {
        assert_valid(json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
                    "name": [{"given": ["Jo", null], "_given": [null, {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}], "family": "Bloggs"}],
                    "birthDate": "1970-01-01",
                    "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-01-01T10:10:00Z"}]},
                    "contained": [{"resourceType": "Organization", "id": "gp", "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "A81001"}]}],
                    "generalPractitioner": [{"reference": "#gp"}]
                },
                "request": {"method": "POST", "url": "Patient"}
            }]
        }));
        assert_valid(json!({
            "resourceType": "Questionnaire", "status": "draft",
            "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "item": [{"linkId": "1.1.1", "type": "display"}]}]}]
        }));
    }

    /// A table of single mistakes: (resource, expected [(location, code)]).
    #[test]
    fn invalid_resources_table() {
        let obs = |patch: Value| {
            let mut o = observation();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    o.as_object_mut().unwrap().remove(k);
                } else {
                    o[k] = v.clone();
                }
            }
            o
        };
        let cases: Vec<(Value, Vec<(&str, &str)>)> = vec![
            (json!([1]), vec![("", "structure")]),
            (json!({"id": "x"}), vec![("", "required")]),
            (
                json!({"resourceType": 3}),
                vec![("resourceType", "structure")],
            ),
            (json!({"resourceType": "Nope"}), vec![("", "invalid")]),
            (
                json!({"resourceType": "DomainResource"}),
                vec![("", "invalid")],
            ),
            (obs(json!({"id": "a b"})), vec![("Observation.id", "value")]),
            (
                obs(json!({"foo": 1})),
                vec![("Observation.foo", "structure")],
            ),
            (
                obs(json!({"valueFoo": 1})),
                vec![("Observation.valueFoo", "structure")],
            ),
            (
                obs(json!({"value": 1})),
                vec![("Observation.value", "structure")],
            ),
            (
                obs(json!({"_status": {"id": "s"}, "_code": {"id": "c"}})),
                vec![("Observation._code", "structure")],
            ),
            (
                obs(json!({"status": null})),
                vec![("Observation.status", "required")],
            ),
            (
                obs(json!({"status": "done"})),
                vec![("Observation.status", "code-invalid")],
            ),
            (
                obs(json!({"status": "fi nal"})),
                vec![("Observation.status", "code-invalid")],
            ),
            (
                obs(json!({"status": " final"})),
                vec![("Observation.status", "value")],
            ),
            (
                obs(json!({"status": ["final"]})),
                vec![("Observation.status", "structure")],
            ),
            (
                obs(json!({"category": {"text": "x"}})),
                vec![("Observation.category", "structure")],
            ),
            (
                obs(json!({"category": []})),
                vec![("Observation.category", "structure")],
            ),
            (
                obs(json!({"category": [{}]})),
                vec![("Observation.category[0]", "structure")],
            ),
            (
                obs(json!({"category": [null]})),
                vec![("Observation.category[0]", "structure")],
            ),
            (
                obs(json!({"code": "8867-4"})),
                vec![("Observation.code", "structure")],
            ),
            (
                obs(json!({"code": {"text": ""}})),
                vec![("Observation.code.text", "value")],
            ),
            (
                obs(json!({"code": {"text": "a\u{1}b"}})),
                vec![("Observation.code.text", "value")],
            ),
            (
                obs(json!({"valueBoolean": "true"})),
                vec![
                    ("Observation.valueBoolean", "structure"),
                    ("Observation.valueBoolean", "structure"),
                ],
            ),
            (
                obs(json!({"valueQuantity": {"value": "72"}})),
                vec![("Observation.valueQuantity.value", "structure")],
            ),
            (
                obs(json!({"valueQuantity": {"value": 72, "comparator": "=="}})),
                vec![("Observation.valueQuantity.comparator", "code-invalid")],
            ),
            (
                obs(json!({"valueQuantity": null, "valueInteger": 2147483648_i64})),
                vec![("Observation.valueInteger", "value")],
            ),
            (
                obs(json!({"valueQuantity": null, "valueInteger": 1.5})),
                vec![("Observation.valueInteger", "value")],
            ),
            (
                obs(json!({"effectiveDateTime": "2024-02-30"})),
                vec![("Observation.effectiveDateTime", "value")],
            ),
            (
                obs(json!({"effectiveDateTime": "2024-03-01T09:30"})),
                vec![("Observation.effectiveDateTime", "value")],
            ),
            (
                obs(json!({"effectiveDateTime": null, "effectiveInstant": "2024-03-01"})),
                vec![("Observation.effectiveInstant", "value")],
            ),
            (
                obs(json!({"issued": "2024-03-01T09:30:00"})),
                vec![("Observation.issued", "value")],
            ),
            (
                obs(
                    json!({"subject": {"reference": "Patient/p1", "extension": [{"url": "http://x"}]}}),
                ),
                vec![("Observation.subject.extension[0]", "invariant")],
            ),
            (
                obs(
                    json!({"subject": {"reference": "Patient/p1", "extension": [{"valueString": "x"}]}}),
                ),
                vec![("Observation.subject.extension[0].url", "required")],
            ),
            (
                obs(
                    json!({"subject": {"reference": "Patient/p1", "extension": [{"url": "http://x", "valueString": "x", "extension": [{"url": "y", "valueCode": "z"}]}]}}),
                ),
                vec![("Observation.subject.extension[0]", "invariant")],
            ),
            (
                obs(
                    json!({"referenceRange": [{"low": {"value": 60}, "high": {"value": serde_json::from_str::<Value>("1e400").unwrap()}}]}),
                ),
                vec![],
            ),
            (
                obs(json!({"component": [{"valueString": "x"}]})),
                vec![("Observation.component[0].code", "required")],
            ),
            (
                obs(json!({"text": {"status": "generated", "div": "<p>hi</p>"}})),
                vec![("Observation.text.div", "value")],
            ),
            (
                obs(json!({"text": {"status": "generated"}})),
                vec![("Observation.text.div", "required")],
            ),
            (
                obs(json!({"contained": [{"resourceType": "Patient", "gender": "F"}]})),
                vec![("Observation.contained[0].gender", "code-invalid")],
            ),
            (
                obs(json!({"contained": [{"gender": "female"}]})),
                vec![("Observation.contained[0]", "required")],
            ),
            (
                obs(
                    json!({"code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "resourceType": "X"}}),
                ),
                vec![("Observation.code.resourceType", "structure")],
            ),
            (
                obs(
                    json!({"meta": {"lastUpdated": "2024-03-01T10:00:00Z", "profile": ["http://a b"]}}),
                ),
                vec![("Observation.meta.profile[0]", "value")],
            ),
            (
                obs(
                    json!({"meta": {"tag": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "X"}], "security": [{"system": "http://hl7.org/fhir/v3/Confidentiality", "code": "R"}]}}),
                ),
                vec![],
            ),
        ];
        for (resource, expected) in cases {
            let mut got = issues(resource.clone());
            got.sort();
            let mut want: Vec<(String, &str)> = expected
                .iter()
                .map(|(l, c)| ((*l).to_owned(), *c))
                .collect();
            want.sort();
            assert_eq!(got, want, "{resource}\n{:#?}", validate_resource(&resource));
        }
    }

    #[test]
    fn primitive_arrays_with_null_and_extensions() {
        let patient = |name: Value| json!({"resourceType": "Patient", "name": [name]});
        let ext = json!({"extension": [{"url": "http://x", "valueCode": "y"}]});
        let cases: Vec<(Value, Vec<(&str, &str)>)> = vec![
            (
                patient(json!({"given": ["a", null], "_given": [null, ext.clone()]})),
                vec![],
            ),
            (patient(json!({"_given": [ext.clone()]})), vec![]),
            (
                patient(json!({"given": ["a", null]})),
                vec![("Patient.name[0].given[1]", "structure")],
            ),
            (
                patient(json!({"given": ["a", null], "_given": [null, null]})),
                vec![("Patient.name[0].given[1]", "structure")],
            ),
            (
                patient(json!({"given": ["a"], "_given": [null, ext.clone()]})),
                vec![("Patient.name[0].given", "structure")],
            ),
            (
                patient(json!({"given": ["a"], "_given": ext.clone()})),
                vec![("Patient.name[0].given", "structure")],
            ),
            (
                patient(json!({"_given": [null]})),
                vec![("Patient.name[0].given[0]", "structure")],
            ),
            (
                patient(json!({"given": ["a"], "_given": [{"value": "a"}]})),
                vec![("Patient.name[0].given[0].value", "structure")],
            ),
            (
                patient(json!({"family": "x", "_family": [ext.clone()]})),
                vec![("Patient.name[0].family", "structure")],
            ),
            (
                patient(json!({"family": "x", "_family": {}})),
                vec![("Patient.name[0].family", "structure")],
            ),
            (
                patient(json!({"family": "x", "_family": null})),
                vec![("Patient.name[0].family", "structure")],
            ),
        ];
        for (resource, expected) in cases {
            let mut got = issues(resource.clone());
            got.sort();
            let mut want: Vec<(String, &str)> = expected
                .iter()
                .map(|(l, c)| ((*l).to_owned(), *c))
                .collect();
            want.sort();
            assert_eq!(got, want, "{resource}\n{:#?}", validate_resource(&resource));
        }
    }

    #[test]
    fn choice_with_two_variants() {
        let mut o = observation();
        o["valueString"] = json!("x");
        let found = validate_resource(&o);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].code, IssueCode::Structure);
        assert!(found[0].message.contains("value[x]"));
    }

    #[test]
    fn contentreference_recursion_checks_children() {
        let q = json!({
            "resourceType": "Questionnaire", "status": "draft",
            "item": [{"linkId": "1", "type": "group", "item": [{"type": "string", "bogus": 1}]}]
        });
        assert_eq!(
            issues(q),
            vec![
                (
                    "Questionnaire.item[0].item[0].bogus".to_owned(),
                    "structure"
                ),
                (
                    "Questionnaire.item[0].item[0].linkId".to_owned(),
                    "required"
                ),
            ]
        );
    }

    #[test]
    fn bundle_and_parameters_resources_are_validated_by_their_own_type() {
        let b = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "active": "yes"}},
            {"resource": {"resourceType": "Observation"}}
        ]});
        assert_eq!(
            issues(b),
            vec![
                ("Bundle.entry[0].resource.active".to_owned(), "structure"),
                ("Bundle.entry[1].resource.status".to_owned(), "required"),
                ("Bundle.entry[1].resource.code".to_owned(), "required"),
            ]
        );
        let p = json!({"resourceType": "Parameters", "parameter": [
            {"name": "r", "resource": {"resourceType": "Patient", "gender": "x"}},
            {"name": "p", "part": [{"name": "q", "valueBoolean": 1}]}
        ]});
        assert_eq!(
            issues(p),
            vec![
                (
                    "Parameters.parameter[0].resource.gender".to_owned(),
                    "code-invalid"
                ),
                (
                    "Parameters.parameter[1].part[0].valueBoolean".to_owned(),
                    "structure"
                ),
            ]
        );
    }

    #[test]
    fn coded_values_under_required_bindings() {
        // Coding with the bound system and a wrong code is refused; other systems pass.
        let c = json!({"resourceType": "Communication", "status": "completed",
            "priority": "routine"});
        assert_valid(c);
        let ai = json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "gone"}]}});
        let vs = r4()
            .element("AllergyIntolerance", "clinicalStatus")
            .and_then(ElementDef::required_binding);
        if vs.is_some_and(|u| r4().value_set(u).is_some()) {
            assert_eq!(
                issues(ai),
                vec![(
                    "AllergyIntolerance.clinicalStatus.coding[0].code".to_owned(),
                    "code-invalid"
                )]
            );
        }
    }

    #[test]
    fn uk_identifiers() {
        let pat = |system: &str, value: &str| json!({"resourceType": "Patient", "identifier": [{"system": system, "value": value}]});
        assert_valid(pat(NHS_NUMBER_SYSTEM, "9434765919"));
        assert_valid(pat(NHS_NUMBER_SYSTEM, "9990000018"));
        for bad in [
            "943 476 5919",
            "9434765918",
            "9876544321",
            "9991234560",
            "0000000000",
            "94347659",
            "943476591A",
        ] {
            let found = validate_resource(&pat(NHS_NUMBER_SYSTEM, bad));
            assert_eq!(found.len(), 1, "{bad}: {found:#?}");
            assert_eq!(found[0].location, "Patient.identifier[0].value");
            assert_eq!(found[0].code, IssueCode::BusinessRule);
            assert!(
                found[0].message.contains("NHS number"),
                "{}",
                found[0].message
            );
        }
        // Other systems are not checked as NHS numbers.
        assert_valid(pat("http://example.org/mrn", "12"));
        let org = |value: &str| json!({"resourceType": "Organization", "identifier": [{"system": ODS_ORGANIZATION_SYSTEM, "value": value}]});
        for good in ["A81001", "RR8", "X26", "Y12345"] {
            assert_valid(org(good));
        }
        for bad in ["a81001", "R8", "A81 001", "ABCDEFGHIJK"] {
            assert_eq!(
                issues(org(bad)),
                vec![(
                    "Organization.identifier[0].value".to_owned(),
                    "business-rule"
                )],
                "{bad}"
            );
        }
        // Identifiers deep inside contained resources are checked too.
        let nested = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "contained": [{"resourceType": "Patient", "id": "p", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9434765918"}]}],
            "subject": {"reference": "#p"}});
        assert_eq!(
            issues(nested),
            vec![(
                "Observation.contained[0].identifier[0].value".to_owned(),
                "business-rule"
            )]
        );
        let by_ident = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "1234567890"}}});
        assert_eq!(
            issues(by_ident),
            vec![(
                "Observation.subject.identifier.value".to_owned(),
                "business-rule"
            )]
        );
    }

    #[test]
    fn issue_codes_and_display() {
        let i = Issue {
            severity: Severity::Error,
            code: IssueCode::CodeInvalid,
            location: "Patient.gender".into(),
            message: "m".into(),
        };
        assert_eq!(i.to_string(), "error [code-invalid] at Patient.gender: m");
        assert_eq!(IssueCode::TooLong.as_str(), "too-long");
        assert!(is_valid(&[]));
    }

    #[test]
    fn formats() {
        assert!(is_fhir_code("a b"));
        assert!(!is_fhir_code("a  b"));
        assert!(!is_fhir_code("a "));
        assert!(!is_fhir_code(" a"));
        assert!(is_fhir_id("a.B-1"));
        assert!(!is_fhir_id(&"a".repeat(65)));
        assert!(calendar_valid("2024-02-29"));
        assert!(!calendar_valid("2023-02-29"));
        assert!(calendar_valid("1900-02-28T00:00:00Z"));
        assert!(!calendar_valid("1900-02-29"));
        assert!(calendar_valid("2000-02-29"));
        assert!(!calendar_valid("2024-04-31"));
    }

    #[test]
    fn huge_strings_are_too_long() {
        let mut o = observation();
        o["code"]["text"] = json!("x".repeat(MAX_STRING_BYTES + 1));
        assert_eq!(
            issues(o),
            vec![("Observation.code.text".to_owned(), "too-long")]
        );
    }
}
