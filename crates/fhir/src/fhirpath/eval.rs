//! Evaluation of a parsed expression over FHIR JSON (`serde_json::Value`).

use serde_json::{Map, Value};

use super::ast::{BinOp, Expr, Func, Literal, TypeOp, TypeSpec};
use super::model::{is_choice_name, is_choice_suffix, is_quantity_kind, split_reference};

/// One item of a FHIRPath collection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    /// A node of the resource JSON. `type_hint` is the FHIR type when navigation
    /// knows it (a choice element `valueQuantity` gives `Quantity`).
    Node {
        value: &'a Value,
        type_hint: Option<&'a str>,
    },
    Bool(bool),
    Str(&'a str),
    Num(f64),
    /// The result of `resolve()` on a reference that is not in the resource:
    /// the target's type (from the reference text) and the Reference (or
    /// canonical string) it came from.
    Resolved {
        target_type: &'a str,
        reference: &'a Value,
    },
}

impl<'a> Item<'a> {
    /// An untyped JSON node.
    pub fn node(value: &'a Value) -> Self {
        Item::Node {
            value,
            type_hint: None,
        }
    }

    /// The item as a string, if it is one.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Item::Node {
                value: Value::String(s),
                ..
            } => Some(s.as_str()),
            Item::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The item as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Item::Node {
                value: Value::Bool(b),
                ..
            } => Some(*b),
            Item::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn as_num(&self) -> Option<f64> {
        match *self {
            Item::Node {
                value: Value::Number(n),
                ..
            } => n.as_f64(),
            Item::Num(n) => Some(n),
            _ => None,
        }
    }
}

pub(super) struct Env<'a> {
    pub resource: &'a Value,
    pub this: Option<Item<'a>>,
    pub index: usize,
}

type Coll<'a> = Vec<Item<'a>>;

fn push_flat<'a>(out: &mut Coll<'a>, v: &'a Value, type_hint: Option<&'a str>) {
    match v {
        Value::Array(a) => {
            for x in a {
                if !x.is_null() {
                    out.push(Item::Node {
                        value: x,
                        type_hint,
                    });
                }
            }
        }
        Value::Null => {}
        _ => out.push(Item::Node {
            value: v,
            type_hint,
        }),
    }
}

fn navigate<'a>(out: &mut Coll<'a>, item: &Item<'a>, name: &str) {
    let Item::Node {
        value: Value::Object(map),
        ..
    } = item
    else {
        return;
    };
    child(out, map, name);
}

fn child<'a>(out: &mut Coll<'a>, map: &'a Map<String, Value>, name: &str) {
    if let Some(v) = map.get(name) {
        push_flat(out, v, None);
        return;
    }
    if is_choice_name(name) {
        for (k, v) in map {
            if let Some(suffix) = k.strip_prefix(name)
                && is_choice_suffix(suffix)
            {
                push_flat(out, v, Some(suffix));
            }
        }
    }
}

fn resource_type(v: &Value) -> Option<&str> {
    v.get("resourceType").and_then(Value::as_str)
}

fn is_resource_level(name: &str) -> bool {
    name == "Resource" || name == "DomainResource"
}

/// A guess at the FHIR type of an untyped JSON object from its keys.
pub(crate) fn guess_complex(map: &Map<String, Value>) -> Option<&'static str> {
    if map.contains_key("resourceType") {
        return None;
    }
    if map.contains_key("reference") {
        return Some("Reference");
    }
    if map.contains_key("coding") {
        return Some("CodeableConcept");
    }
    if map.contains_key("currency") {
        return Some("Money");
    }
    if map.get("value").is_some_and(Value::is_number) {
        return Some("Quantity");
    }
    if map.contains_key("start") || map.contains_key("end") {
        return Some("Period");
    }
    if map.contains_key("low") || map.contains_key("high") {
        return Some("Range");
    }
    if map.contains_key("numerator") || map.contains_key("denominator") {
        return Some("Ratio");
    }
    if map.contains_key("family") || map.contains_key("given") {
        return Some("HumanName");
    }
    if map.contains_key("line") || map.contains_key("city") || map.contains_key("postalCode") {
        return Some("Address");
    }
    if map.contains_key("event") || map.contains_key("repeat") {
        return Some("Timing");
    }
    if map.get("value").is_some_and(Value::is_string) {
        return Some(
            if map
                .get("system")
                .and_then(Value::as_str)
                .is_some_and(is_contact_point_system)
            {
                "ContactPoint"
            } else {
                "Identifier"
            },
        );
    }
    if map.contains_key("code") || map.contains_key("system") {
        return Some("Coding");
    }
    if map.contains_key("identifier") {
        return Some("Reference");
    }
    if map.contains_key("text") && map.len() == 1 {
        return Some("CodeableConcept");
    }
    None
}

fn is_contact_point_system(s: &str) -> bool {
    matches!(
        s,
        "phone" | "fax" | "email" | "pager" | "url" | "sms" | "other"
    )
}

fn is_string_primitive(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "string"
            | "code"
            | "id"
            | "uri"
            | "url"
            | "canonical"
            | "oid"
            | "uuid"
            | "markdown"
            | "base64binary"
            | "date"
            | "datetime"
            | "instant"
            | "time"
    )
}

fn type_matches(item: &Item<'_>, ts: &TypeSpec) -> bool {
    let name = ts.name.as_str();
    match *item {
        Item::Resolved { target_type, .. } => target_type == name || is_resource_level(name),
        Item::Bool(_) => name.eq_ignore_ascii_case("boolean"),
        Item::Str(_) => name.eq_ignore_ascii_case("string"),
        Item::Num(n) => {
            name.eq_ignore_ascii_case("decimal")
                || (name.eq_ignore_ascii_case("integer") && n.fract() == 0.0)
        }
        Item::Node {
            value,
            type_hint: Some(h),
        } => {
            h.eq_ignore_ascii_case(name)
                || (name == "Quantity" && is_quantity_kind(h))
                || (is_resource_level(name) && resource_type(value).is_some())
        }
        Item::Node {
            value,
            type_hint: None,
        } => match value {
            Value::Bool(_) => name.eq_ignore_ascii_case("boolean"),
            Value::Number(n) => {
                let text = n.to_string();
                let integral = !text.contains(['.', 'e', 'E']);
                name.eq_ignore_ascii_case("decimal")
                    || (integral
                        && matches!(
                            name.to_ascii_lowercase().as_str(),
                            "integer" | "positiveint" | "unsignedint"
                        ))
            }
            Value::String(_) => is_string_primitive(name),
            Value::Object(map) => match resource_type(value) {
                Some(rt) => rt == name || is_resource_level(name),
                None => guess_complex(map)
                    .is_some_and(|g| g == name || (name == "Quantity" && is_quantity_kind(g))),
            },
            _ => false,
        },
    }
}

/// Singleton evaluation of a collection as a boolean (FHIRPath §4.5).
fn to_bool(c: &[Item<'_>]) -> Option<bool> {
    match c {
        [] => None,
        [one] => Some(one.as_bool().unwrap_or(true)),
        _ => None,
    }
}

fn bool_coll<'a>(b: Option<bool>) -> Coll<'a> {
    match b {
        Some(b) => vec![Item::Bool(b)],
        None => Vec::new(),
    }
}

fn items_equal(a: &Item<'_>, b: &Item<'_>) -> bool {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_bool(), b.as_bool()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_num(), b.as_num()) {
        return x == y;
    }
    match (a, b) {
        (Item::Node { value: x, .. }, Item::Node { value: y, .. }) => x == y,
        (
            Item::Resolved {
                target_type: t1,
                reference: r1,
            },
            Item::Resolved {
                target_type: t2,
                reference: r2,
            },
        ) => t1 == t2 && r1 == r2,
        _ => false,
    }
}

fn items_equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        let norm = |s: &str| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
        };
        return norm(x) == norm(y);
    }
    items_equal(a, b)
}

fn same_item(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a, b) {
        (Item::Node { value: x, .. }, Item::Node { value: y, .. }) => std::ptr::eq(*x, *y),
        _ => items_equal(a, b),
    }
}

fn union<'a>(mut l: Coll<'a>, r: Coll<'a>) -> Coll<'a> {
    let mut out: Coll<'a> = Vec::with_capacity(l.len() + r.len());
    for it in l.drain(..).chain(r) {
        if !out.iter().any(|o| same_item(o, &it)) {
            out.push(it);
        }
    }
    out
}

fn eval_binary<'a>(
    op: BinOp,
    l: &'a Expr,
    r: &'a Expr,
    focus: &[Item<'a>],
    env: &Env<'a>,
) -> Coll<'a> {
    let lv = eval(l, focus, env);
    // Short-circuit the boolean operators where the left side decides.
    match op {
        BinOp::And if to_bool(&lv) == Some(false) => return bool_coll(Some(false)),
        BinOp::Or if to_bool(&lv) == Some(true) => return bool_coll(Some(true)),
        BinOp::Implies if to_bool(&lv) == Some(false) => return bool_coll(Some(true)),
        _ => {}
    }
    let rv = eval(r, focus, env);
    match op {
        BinOp::Union => union(lv, rv),
        BinOp::Eq | BinOp::Ne | BinOp::Equiv | BinOp::NotEquiv => {
            let equiv = matches!(op, BinOp::Equiv | BinOp::NotEquiv);
            let res = if lv.is_empty() || rv.is_empty() {
                if equiv {
                    Some(lv.is_empty() && rv.is_empty())
                } else {
                    None
                }
            } else if lv.len() != rv.len() {
                Some(false)
            } else {
                Some(lv.iter().zip(&rv).all(|(a, b)| {
                    if equiv {
                        items_equivalent(a, b)
                    } else {
                        items_equal(a, b)
                    }
                }))
            };
            let negate = matches!(op, BinOp::Ne | BinOp::NotEquiv);
            bool_coll(res.map(|b| b != negate))
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ([a], [b]) = (lv.as_slice(), rv.as_slice()) else {
                return Vec::new();
            };
            let ord = if let (Some(x), Some(y)) = (a.as_num(), b.as_num()) {
                x.partial_cmp(&y)
            } else if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
                Some(x.cmp(y))
            } else {
                None
            };
            let Some(ord) = ord else { return Vec::new() };
            use std::cmp::Ordering::*;
            let res = match op {
                BinOp::Lt => ord == Less,
                BinOp::Le => ord != Greater,
                BinOp::Gt => ord == Greater,
                _ => ord != Less,
            };
            bool_coll(Some(res))
        }
        BinOp::And => {
            let (a, b) = (to_bool(&lv), to_bool(&rv));
            bool_coll(match (a, b) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            })
        }
        BinOp::Or => {
            let (a, b) = (to_bool(&lv), to_bool(&rv));
            bool_coll(match (a, b) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            })
        }
        BinOp::Xor => bool_coll(match (to_bool(&lv), to_bool(&rv)) {
            (Some(a), Some(b)) => Some(a != b),
            _ => None,
        }),
        BinOp::Implies => bool_coll(match (to_bool(&lv), to_bool(&rv)) {
            (Some(false), _) | (_, Some(true)) => Some(true),
            (Some(true), Some(false)) => Some(false),
            _ => None,
        }),
        BinOp::In | BinOp::Contains => {
            let (needle, hay) = if op == BinOp::In {
                (&lv, &rv)
            } else {
                (&rv, &lv)
            };
            match needle.as_slice() {
                [] => Vec::new(),
                [n] => bool_coll(Some(hay.iter().any(|h| items_equal(n, h)))),
                _ => Vec::new(),
            }
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::IntDiv | BinOp::Mod => {
            let ([a], [b]) = (lv.as_slice(), rv.as_slice()) else {
                return Vec::new();
            };
            let (Some(x), Some(y)) = (a.as_num(), b.as_num()) else {
                return Vec::new();
            };
            let v = match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div if y != 0.0 => x / y,
                BinOp::IntDiv if y != 0.0 => (x / y).trunc(),
                BinOp::Mod if y != 0.0 => x % y,
                _ => return Vec::new(),
            };
            vec![Item::Num(v)]
        }
        // String concatenation would need owned strings; nothing in the search
        // expressions uses it.
        BinOp::Concat => Vec::new(),
    }
}

fn single_str<'a>(e: &'a Expr, focus: &[Item<'a>], env: &Env<'a>) -> Option<&'a str> {
    match eval(e, focus, env).as_slice() {
        [one] => one.as_str(),
        _ => None,
    }
}

fn single_num<'a>(e: &'a Expr, focus: &[Item<'a>], env: &Env<'a>) -> Option<f64> {
    match eval(e, focus, env).as_slice() {
        [one] => one.as_num(),
        _ => None,
    }
}

fn extensions<'a>(item: &Item<'a>, url: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
    let exts: &'a [Value] = match item {
        Item::Node {
            value: Value::Object(m),
            ..
        } => m
            .get("extension")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
        _ => &[],
    };
    let url = url.to_string();
    exts.iter()
        .filter(move |e| e.get("url").and_then(Value::as_str) == Some(url.as_str()))
}

fn resolve<'a>(item: &Item<'a>, env: &Env<'a>) -> Option<Item<'a>> {
    let (text, reference) = match *item {
        Item::Resolved { .. } => return Some(*item),
        Item::Node {
            value: v @ Value::Object(m),
            ..
        } => {
            if resource_type(v).is_some() {
                return Some(*item);
            }
            (m.get("reference").and_then(Value::as_str)?, v)
        }
        Item::Node {
            value: v @ Value::String(s),
            ..
        } => (s.as_str(), v),
        _ => return None,
    };
    if let Some(id) = text.strip_prefix('#') {
        let contained = env.resource.get("contained")?.as_array()?;
        return contained
            .iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
            .map(Item::node);
    }
    let (target_type, _) = split_reference(text)?;
    Some(Item::Resolved {
        target_type,
        reference,
    })
}

fn call<'a>(f: &'a Func, input: Coll<'a>, env: &Env<'a>) -> Coll<'a> {
    match f {
        Func::Where(crit) => input
            .iter()
            .enumerate()
            .filter(|(i, it)| {
                let e = Env {
                    resource: env.resource,
                    this: Some(**it),
                    index: *i,
                };
                to_bool(&eval(crit, std::slice::from_ref(*it), &e)) == Some(true)
            })
            .map(|(_, it)| *it)
            .collect(),
        Func::Select(proj) => {
            let mut out = Vec::new();
            for (i, it) in input.iter().enumerate() {
                let e = Env {
                    resource: env.resource,
                    this: Some(*it),
                    index: i,
                };
                out.extend(eval(proj, std::slice::from_ref(it), &e));
            }
            out
        }
        Func::All(crit) => bool_coll(Some(input.iter().enumerate().all(|(i, it)| {
            let e = Env {
                resource: env.resource,
                this: Some(*it),
                index: i,
            };
            to_bool(&eval(crit, std::slice::from_ref(it), &e)) == Some(true)
        }))),
        Func::Exists(None) => bool_coll(Some(!input.is_empty())),
        Func::Exists(Some(crit)) => {
            let found = input.iter().enumerate().any(|(i, it)| {
                let e = Env {
                    resource: env.resource,
                    this: Some(*it),
                    index: i,
                };
                to_bool(&eval(crit, std::slice::from_ref(it), &e)) == Some(true)
            });
            bool_coll(Some(found))
        }
        Func::Empty => bool_coll(Some(input.is_empty())),
        Func::Not => bool_coll(to_bool(&input).map(|b| !b)),
        Func::First => input.into_iter().take(1).collect(),
        Func::Last => input.last().copied().into_iter().collect(),
        Func::Tail => input.into_iter().skip(1).collect(),
        Func::Skip(n) => {
            let n = single_num(n, &input, env).unwrap_or(0.0).max(0.0) as usize;
            input.into_iter().skip(n).collect()
        }
        Func::Take(n) => {
            let n = single_num(n, &input, env).unwrap_or(0.0).max(0.0) as usize;
            input.into_iter().take(n).collect()
        }
        Func::Single => {
            if input.len() == 1 {
                input
            } else {
                Vec::new()
            }
        }
        Func::Count => vec![Item::Num(input.len() as f64)],
        Func::Distinct => union(Vec::new(), input),
        Func::HasValue => bool_coll(Some(matches!(
            input.as_slice(),
            [Item::Node {
                value: Value::String(_) | Value::Bool(_) | Value::Number(_),
                ..
            }]
        ))),
        Func::Children => {
            let mut out = Vec::new();
            for it in &input {
                if let Item::Node {
                    value: Value::Object(m),
                    ..
                } = it
                {
                    for v in m.values() {
                        push_flat(&mut out, v, None);
                    }
                }
            }
            out
        }
        Func::Trace => input,
        Func::AllTrue => bool_coll(Some(input.iter().all(|i| i.as_bool() == Some(true)))),
        Func::AnyTrue => bool_coll(Some(input.iter().any(|i| i.as_bool() == Some(true)))),
        Func::AllFalse => bool_coll(Some(input.iter().all(|i| i.as_bool() == Some(false)))),
        Func::AnyFalse => bool_coll(Some(input.iter().any(|i| i.as_bool() == Some(false)))),
        Func::Resolve => input.iter().filter_map(|it| resolve(it, env)).collect(),
        Func::Extension(url) => {
            let Some(url) = single_str(url, &input, env) else {
                return Vec::new();
            };
            input
                .iter()
                .flat_map(|it| extensions(it, url))
                .map(Item::node)
                .collect()
        }
        Func::HasExtension(url) => {
            let Some(url) = single_str(url, &input, env) else {
                return bool_coll(Some(false));
            };
            bool_coll(Some(
                input.iter().any(|it| extensions(it, url).next().is_some()),
            ))
        }
        Func::OfType(ts) | Func::As(ts) => input
            .into_iter()
            .filter(|it| type_matches(it, ts))
            .collect(),
        Func::Is(ts) => match input.as_slice() {
            [one] => bool_coll(Some(type_matches(one, ts))),
            _ => Vec::new(),
        },
        Func::Iif(c, t, f) => {
            let cond = to_bool(&eval(c, &input, env));
            if cond == Some(true) {
                eval(t, &input, env)
            } else if let Some(f) = f {
                eval(f, &input, env)
            } else {
                Vec::new()
            }
        }
        Func::StartsWith(arg) | Func::EndsWith(arg) | Func::ContainsStr(arg) => {
            let ([one], Some(needle)) = (input.as_slice(), single_str(arg, &input, env)) else {
                return Vec::new();
            };
            let Some(s) = one.as_str() else {
                return Vec::new();
            };
            bool_coll(Some(match f {
                Func::StartsWith(_) => s.starts_with(needle),
                Func::EndsWith(_) => s.ends_with(needle),
                _ => s.contains(needle),
            }))
        }
        Func::Length => match input.as_slice() {
            [one] => one
                .as_str()
                .map(|s| vec![Item::Num(s.chars().count() as f64)])
                .unwrap_or_default(),
            _ => Vec::new(),
        },
    }
}

pub(super) fn eval<'a>(e: &'a Expr, focus: &[Item<'a>], env: &Env<'a>) -> Coll<'a> {
    match e {
        Expr::Empty => Vec::new(),
        Expr::Literal(Literal::Bool(b)) => vec![Item::Bool(*b)],
        Expr::Literal(Literal::Str(s)) => vec![Item::Str(s.as_str())],
        Expr::Literal(Literal::Num(n)) => vec![Item::Num(*n)],
        Expr::This => match env.this {
            Some(t) => vec![t],
            None => focus.to_vec(),
        },
        Expr::IndexVar => vec![Item::Num(env.index as f64)],
        Expr::Var(name) => match name.as_str() {
            "resource" | "context" | "rootResource" => vec![Item::node(env.resource)],
            "ucum" => vec![Item::Str("http://unitsofmeasure.org")],
            "sct" => vec![Item::Str("http://snomed.info/sct")],
            "loinc" => vec![Item::Str("http://loinc.org")],
            _ => Vec::new(),
        },
        Expr::Member(None, name) => {
            let mut out = Vec::new();
            let type_filter = name.starts_with(|c: char| c.is_ascii_uppercase());
            for it in focus {
                if type_filter {
                    if let Item::Node { value, .. } = it
                        && let Some(rt) = resource_type(value)
                        && (rt == name || is_resource_level(name))
                    {
                        out.push(*it);
                    }
                } else {
                    navigate(&mut out, it, name);
                }
            }
            out
        }
        Expr::Member(Some(f), name) => {
            let input = eval(f, focus, env);
            let mut out = Vec::with_capacity(input.len());
            for it in &input {
                navigate(&mut out, it, name);
            }
            out
        }
        Expr::Call(f, func) => {
            let input = match f {
                Some(f) => eval(f, focus, env),
                None => focus.to_vec(),
            };
            call(func, input, env)
        }
        Expr::Indexer(f, idx) => {
            let input = eval(f, focus, env);
            match single_num(idx, focus, env) {
                Some(n) if n >= 0.0 && n.fract() == 0.0 => {
                    input.get(n as usize).copied().into_iter().collect()
                }
                _ => Vec::new(),
            }
        }
        Expr::Negate(inner) => match eval(inner, focus, env).as_slice() {
            [one] => one
                .as_num()
                .map(|n| vec![Item::Num(-n)])
                .unwrap_or_default(),
            _ => Vec::new(),
        },
        Expr::Binary(op, l, r) => eval_binary(*op, l, r, focus, env),
        Expr::TypeOp(TypeOp::Is, inner, ts) => match eval(inner, focus, env).as_slice() {
            [one] => bool_coll(Some(type_matches(one, ts))),
            _ => Vec::new(),
        },
        Expr::TypeOp(TypeOp::As, inner, ts) => eval(inner, focus, env)
            .into_iter()
            .filter(|it| type_matches(it, ts))
            .collect(),
    }
}
