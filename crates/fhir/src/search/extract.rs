//! Turning FHIRPath results into index values, per search parameter type
//! (FHIR R4 search §3.1.1 "search parameter types" and the data type mappings).

use serde_json::{Map, Value};

use super::date::date_range;
use super::index::IndexValue;
use super::registry::SearchParamType;
use super::text::normalize;
use crate::fhirpath::{Item, guess_complex, is_choice_suffix, is_quantity_kind, split_reference};

/// The ISO 4217 system used for `Money.currency` as a quantity code.
pub const ISO_4217: &str = "urn:iso:std:iso:4217";

fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_string)
}

/// An Extension (`{url, valueX}`) stands for its value; anything else for itself.
fn unwrap_extension<'a>(item: Item<'a>) -> Item<'a> {
    if let Item::Node {
        value: Value::Object(m),
        ..
    } = item
        && m.contains_key("url")
    {
        for (k, v) in m {
            if let Some(suffix) = k.strip_prefix("value")
                && is_choice_suffix(suffix)
            {
                return Item::Node {
                    value: v,
                    type_hint: Some(suffix),
                };
            }
        }
    }
    item
}

/// The FHIR type of an object node: the navigation hint, else a guess from its keys.
fn kind<'a>(hint: Option<&'a str>, m: &Map<String, Value>) -> Option<&'a str> {
    hint.or_else(|| guess_complex(m))
}

fn number_text(n: &serde_json::Number) -> String {
    n.to_string()
}

/// Append the values `item` yields for a parameter of type `kind`.
pub(crate) fn values(kind_: SearchParamType, item: Item<'_>, out: &mut Vec<IndexValue>) {
    let item = match item {
        Item::Resolved { reference, .. } => Item::node(reference),
        other => unwrap_extension(other),
    };
    match kind_ {
        SearchParamType::Token => token(item, out),
        SearchParamType::String => string(item, out),
        SearchParamType::Date => date(item, out),
        SearchParamType::Number => number(item, out),
        SearchParamType::Quantity => quantity(item, out),
        SearchParamType::Reference => reference(item, out),
        SearchParamType::Uri => uri(item, out),
        SearchParamType::Composite | SearchParamType::Special => {}
    }
}

fn push_token(
    out: &mut Vec<IndexValue>,
    system: Option<&str>,
    code: Option<&str>,
    text: Option<&str>,
) {
    if system.is_none() && code.is_none() && text.is_none() {
        return;
    }
    out.push(IndexValue::Token {
        system: owned(system),
        code: owned(code),
        text: text.map(normalize),
    });
}

fn coding_token(out: &mut Vec<IndexValue>, m: &Map<String, Value>) {
    let system = str_field(m, "system");
    let code = str_field(m, "code");
    let display = str_field(m, "display");
    if system.is_none() && code.is_none() {
        push_token(out, None, None, display);
    } else {
        push_token(out, system, code, display);
    }
}

fn token(item: Item<'_>, out: &mut Vec<IndexValue>) {
    match item {
        Item::Bool(b) => push_token(out, None, Some(if b { "true" } else { "false" }), None),
        Item::Str(s) => push_token(out, None, Some(s).filter(|s| !s.is_empty()), None),
        Item::Num(n) => push_token(out, None, Some(&n.to_string()), None),
        Item::Resolved { .. } => {}
        Item::Node { value, type_hint } => match value {
            Value::String(s) if !s.trim().is_empty() => push_token(out, None, Some(s), None),
            Value::Bool(b) => push_token(out, None, Some(if *b { "true" } else { "false" }), None),
            Value::Number(n) => push_token(out, None, Some(&number_text(n)), None),
            Value::Object(m) => match kind(type_hint, m) {
                Some("CodeableConcept") => {
                    for c in m
                        .get("coding")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Value::Object(c) = c {
                            coding_token(out, c);
                        }
                    }
                    push_token(out, None, None, str_field(m, "text"));
                }
                Some("Coding") => coding_token(out, m),
                Some("Identifier") => {
                    let type_text = m
                        .get("type")
                        .and_then(Value::as_object)
                        .and_then(|t| str_field(t, "text"));
                    let system = str_field(m, "system");
                    let value = str_field(m, "value");
                    if system.is_some() || value.is_some() {
                        push_token(out, system, value, type_text);
                    }
                }
                Some("ContactPoint") => {
                    if let Some(v) = str_field(m, "value") {
                        push_token(out, str_field(m, "system"), Some(v), None);
                    }
                }
                // A token parameter over a Quantity matches its unit code.
                Some(q) if is_quantity_kind(q) => {
                    let (system, code) = (str_field(m, "system"), str_field(m, "code"));
                    if system.is_some() || code.is_some() {
                        push_token(out, system, code, None);
                    }
                }
                _ => {
                    // Unknown shape: index what a Coding/Identifier would give.
                    if m.contains_key("code") {
                        coding_token(out, m);
                    } else if let Some(v) = str_field(m, "value") {
                        push_token(out, str_field(m, "system"), Some(v), None);
                    }
                }
            },
            _ => {}
        },
    }
}

fn push_string(out: &mut Vec<IndexValue>, s: &str) {
    if s.trim().is_empty() {
        return;
    }
    out.push(IndexValue::String {
        normalized: normalize(s),
        exact: s.to_string(),
    });
}

/// The string parts of a HumanName or Address, each its own value.
const NAME_ADDRESS_PARTS: &[&str] = &[
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
];

fn string(item: Item<'_>, out: &mut Vec<IndexValue>) {
    match item {
        Item::Str(s) => push_string(out, s),
        Item::Node { value, type_hint } => match value {
            Value::String(s) => push_string(out, s),
            Value::Object(m) => {
                let k = kind(type_hint, m);
                let parts: &[&str] = match k {
                    Some("HumanName" | "Address") | None => NAME_ADDRESS_PARTS,
                    _ => &["text"],
                };
                for p in parts {
                    match m.get(*p) {
                        Some(Value::String(s)) => push_string(out, s),
                        Some(Value::Array(a)) => {
                            for s in a.iter().filter_map(Value::as_str) {
                                push_string(out, s);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        },
        _ => {}
    }
}

fn period(m: &Map<String, Value>) -> Option<(i64, i64)> {
    let start = str_field(m, "start").and_then(date_range);
    let end = str_field(m, "end").and_then(date_range);
    if start.is_none() && end.is_none() {
        return None;
    }
    Some((
        start.map_or(i64::MIN, |r| r.0),
        end.map_or(i64::MAX, |r| r.1),
    ))
}

fn date(item: Item<'_>, out: &mut Vec<IndexValue>) {
    let mut push = |r: Option<(i64, i64)>| {
        if let Some((low, high)) = r {
            out.push(IndexValue::Date { low, high });
        }
    };
    match item {
        Item::Str(s) => push(date_range(s)),
        Item::Node { value, type_hint } => match value {
            Value::String(s) => push(date_range(s)),
            Value::Object(m) => match kind(type_hint, m) {
                Some("Period") => push(period(m)),
                Some("Timing") => {
                    for e in m
                        .get("event")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        push(e.as_str().and_then(date_range));
                    }
                    if let Some(b) = m
                        .get("repeat")
                        .and_then(|r| r.get("boundsPeriod"))
                        .and_then(Value::as_object)
                    {
                        push(period(b));
                    }
                }
                _ => {}
            },
            _ => {}
        },
        _ => {}
    }
}

fn number(item: Item<'_>, out: &mut Vec<IndexValue>) {
    let v = match item {
        Item::Num(n) => Some(n),
        Item::Node {
            value: Value::Number(n),
            ..
        } => n.as_f64(),
        Item::Node {
            value: Value::Object(m),
            ..
        } => m.get("value").and_then(Value::as_f64),
        _ => None,
    };
    if let Some(value) = v.filter(|v| v.is_finite()) {
        out.push(IndexValue::Number { value });
    }
}

fn push_quantity(out: &mut Vec<IndexValue>, m: &Map<String, Value>, money: bool) {
    let Some(value) = m
        .get("value")
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
    else {
        return;
    };
    if money {
        out.push(IndexValue::Quantity {
            value,
            system: Some(ISO_4217.to_string()),
            code: owned(str_field(m, "currency")),
            unit: None,
        });
    } else {
        out.push(IndexValue::Quantity {
            value,
            system: owned(str_field(m, "system")),
            code: owned(str_field(m, "code")),
            unit: owned(str_field(m, "unit")),
        });
    }
}

fn quantity(item: Item<'_>, out: &mut Vec<IndexValue>) {
    match item {
        Item::Num(value) if value.is_finite() => out.push(IndexValue::Quantity {
            value,
            system: None,
            code: None,
            unit: None,
        }),
        Item::Node { value, type_hint } => match value {
            Value::Number(n) => {
                if let Some(value) = n.as_f64().filter(|v| v.is_finite()) {
                    out.push(IndexValue::Quantity {
                        value,
                        system: None,
                        code: None,
                        unit: None,
                    });
                }
            }
            Value::Object(m) => match kind(type_hint, m) {
                Some("Money") => push_quantity(out, m, true),
                // A Range indexes both of its bounds.
                Some("Range") => {
                    for b in ["low", "high"] {
                        if let Some(Value::Object(q)) = m.get(b) {
                            push_quantity(out, q, false);
                        }
                    }
                }
                // SampledData has no single value to index.
                Some("SampledData") => {}
                _ => {
                    if m.contains_key("currency") {
                        push_quantity(out, m, true);
                    } else {
                        push_quantity(out, m, false);
                    }
                }
            },
            _ => {}
        },
        _ => {}
    }
}

/// A reference value from its text: split into type and id when it has that shape.
pub(crate) fn reference_value(s: &str) -> IndexValue {
    let (target_type, target_id) = match split_reference(s) {
        Some((t, id)) => (Some(t.to_string()), Some(id.to_string())),
        None => (None, None),
    };
    IndexValue::Reference {
        target_type,
        target_id,
        url: s.to_string(),
    }
}

fn reference(item: Item<'_>, out: &mut Vec<IndexValue>) {
    match item {
        Item::Str(s) if !s.is_empty() => out.push(reference_value(s)),
        Item::Node { value, .. } => match value {
            // canonical / uri: matched by URL as written
            Value::String(s) if !s.trim().is_empty() => out.push(IndexValue::Reference {
                target_type: None,
                target_id: None,
                url: s.to_string(),
            }),
            Value::Object(m) => {
                if let Some(rt) = str_field(m, "resourceType") {
                    // A resource in place of a reference (Bundle.entry[0].resource).
                    if let Some(id) = str_field(m, "id") {
                        out.push(IndexValue::Reference {
                            target_type: Some(rt.to_string()),
                            target_id: Some(id.to_string()),
                            url: format!("{rt}/{id}"),
                        });
                    }
                } else if let Some(r) = str_field(m, "reference") {
                    out.push(reference_value(r));
                }
                // `identifier` (logical reference) is indexed under the
                // derived `{param}:identifier` (see `derived_values`).
            }
            _ => {}
        },
        _ => {}
    }
}

/// Suffix of the derived parameter holding logical references
/// (`Reference.identifier` as a token): `subject:identifier`.
pub const IDENTIFIER_SUFFIX: &str = ":identifier";
/// Suffix of the derived parameter holding identifiers by type
/// (`identifier:of-type`): system = the type coding's system, code =
/// `{type code}|{identifier value}`.
pub const OF_TYPE_SUFFIX: &str = ":of-type";

/// Rows of derived parameters an item yields besides its ordinary values:
/// `Reference.identifier` (for `:identifier`) and typed identifiers (for
/// `:of-type`), both as tokens under `{param}{suffix}`.
pub(crate) fn derived_values(
    kind_: SearchParamType,
    item: Item<'_>,
    out: &mut Vec<(&'static str, IndexValue)>,
) {
    let Item::Node {
        value: Value::Object(m),
        type_hint,
    } = unwrap_extension(item)
    else {
        return;
    };
    match kind_ {
        SearchParamType::Reference => {
            if m.contains_key("resourceType") {
                return;
            }
            if let Some(Value::Object(ident)) = m.get("identifier") {
                let system = str_field(ident, "system");
                if let Some(value) = str_field(ident, "value") {
                    out.push((
                        IDENTIFIER_SUFFIX,
                        IndexValue::Token {
                            system: owned(system),
                            code: Some(value.to_string()),
                            text: None,
                        },
                    ));
                }
            }
        }
        SearchParamType::Token if kind(type_hint, m) == Some("Identifier") => {
            let Some(value) = str_field(m, "value") else {
                return;
            };
            let codings = m
                .get("type")
                .and_then(|t| t.get("coding"))
                .and_then(Value::as_array);
            for c in codings.into_iter().flatten() {
                if let Value::Object(c) = c
                    && let Some(code) = str_field(c, "code")
                {
                    out.push((
                        OF_TYPE_SUFFIX,
                        IndexValue::Token {
                            system: owned(str_field(c, "system")),
                            code: Some(format!("{code}|{value}")),
                            text: None,
                        },
                    ));
                }
            }
        }
        _ => {}
    }
}

fn uri(item: Item<'_>, out: &mut Vec<IndexValue>) {
    let s = match item {
        Item::Str(s) => Some(s),
        Item::Node {
            value: Value::String(s),
            ..
        } => Some(s.as_str()),
        _ => None,
    };
    if let Some(s) = s.filter(|s| !s.trim().is_empty()) {
        out.push(IndexValue::Uri { uri: s.to_string() });
    }
}

/// Remove repeated values, keeping first occurrences in order.
pub(crate) fn dedup(values: &mut Vec<IndexValue>) {
    if values.len() < 2 {
        return;
    }
    let mut kept: Vec<IndexValue> = Vec::with_capacity(values.len());
    for v in values.drain(..) {
        if !kept.contains(&v) {
            kept.push(v);
        }
    }
    *values = kept;
}

/// Every combination of one value per component, in component order, capped
/// at `limit` combinations.
pub(crate) fn cartesian(components: &[Vec<IndexValue>], limit: usize, out: &mut Vec<IndexValue>) {
    if components.is_empty() || components.iter().any(Vec::is_empty) {
        return;
    }
    let mut idx = vec![0usize; components.len()];
    let mut produced = 0;
    loop {
        if produced >= limit {
            return;
        }
        out.push(IndexValue::Composite {
            parts: idx
                .iter()
                .zip(components)
                .map(|(&i, c)| c[i].clone())
                .collect(),
        });
        produced += 1;
        // odometer increment, last component fastest
        let mut k = components.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < components[k].len() {
                break;
            }
            idx[k] = 0;
        }
    }
}
