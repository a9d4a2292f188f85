//! `_summary` and `_elements`: trimming search matches to what was asked for
//! (FHIR R4 search §3.1.1.5.8–9).
//!
//! Trimmed resources carry the `SUBSETTED` tag in `meta.tag`, as the
//! specification requires, so nobody mistakes them for the whole record.

use serde_json::{Map, Value, json};

use crate::RecordsError;

/// The `_summary` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Summary {
    /// `_summary=false` or absent: whole resources.
    #[default]
    False,
    /// Elements flagged `isSummary` in the base definitions.
    True,
    /// `text`, `id`, `meta` and mandatory top-level elements.
    Text,
    /// Everything except `text`.
    Data,
    /// Only the total: no entries.
    Count,
}

pub(crate) fn parse_summary(value: &str) -> Result<Summary, RecordsError> {
    Ok(match value {
        "true" => Summary::True,
        "false" => Summary::False,
        "text" => Summary::Text,
        "data" => Summary::Data,
        "count" => Summary::Count,
        _ => {
            return Err(RecordsError::BadRequest(format!(
                "_summary '{value}' must be true, false, text, data or count"
            )));
        }
    })
}

/// `_elements=a,b` → top-level element names.
pub(crate) fn parse_elements(value: &str) -> Result<Vec<String>, RecordsError> {
    let names: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            // `Patient.name` is accepted as `name`.
            s.rsplit_once('.').map_or(s, |(_, n)| n).to_owned()
        })
        .collect();
    if names.is_empty() {
        return Err(RecordsError::BadRequest(
            "_elements needs at least one element name".into(),
        ));
    }
    Ok(names)
}

const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// Elements every trimmed resource keeps.
const ALWAYS: &[&str] = &["resourceType", "id", "meta"];

/// Trim one resource's JSON; `None` when nothing changes.
pub(crate) fn shape(json: &[u8], summary: Summary, elements: Option<&[String]>) -> Option<Vec<u8>> {
    if summary == Summary::False && elements.is_none() {
        return None;
    }
    let Ok(Value::Object(mut resource)) = serde_json::from_slice::<Value>(json) else {
        return None;
    };
    let type_name = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let keep: Option<Vec<String>> = match (summary, elements) {
        (_, Some(names)) => Some(names.to_vec()),
        (Summary::True, None) => Some(
            carelayer_fhir::definitions::r4()
                .summary_elements(&type_name)
                .iter()
                .flat_map(|e| e.json_names())
                .chain(["implicitRules".to_owned()])
                .collect(),
        ),
        (Summary::Text, None) => Some(mandatory(&type_name).chain(["text".to_owned()]).collect()),
        _ => None,
    };
    let before = resource.len();
    match keep {
        Some(names) => resource.retain(|k, _| {
            let base = k.strip_prefix('_').unwrap_or(k);
            ALWAYS.contains(&base) || names.iter().any(|n| n == base)
        }),
        None => {
            resource.remove("text");
        }
    }
    if resource.len() == before {
        return None;
    }
    tag_subsetted(&mut resource);
    serde_json::to_vec(&Value::Object(resource)).ok()
}

/// Top-level elements with a minimum cardinality above zero.
fn mandatory(type_name: &str) -> impl Iterator<Item = String> + '_ {
    carelayer_fhir::definitions::r4()
        .scope(type_name)
        .into_iter()
        .flat_map(|scope| scope.children().collect::<Vec<_>>())
        .filter(|e| e.min() > 0)
        .flat_map(|e| e.json_names())
}

fn tag_subsetted(resource: &mut Map<String, Value>) {
    let meta = resource
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        let tags = meta
            .entry("tag")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(tags) = tags {
            tags.push(json!({"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn summary_and_elements() {
        let p = json!({"resourceType": "Patient", "id": "1", "text": {"status": "generated", "div": "<div/>"},
            "name": [{"family": "X"}], "photo": [{"url": "x"}], "birthDate": "1980"});
        let bytes = serde_json::to_vec(&p).unwrap();
        let t: Value =
            serde_json::from_slice(&shape(&bytes, Summary::True, None).unwrap()).unwrap();
        assert!(t.get("photo").is_none() && t.get("text").is_none());
        assert_eq!(t["birthDate"], "1980");
        assert_eq!(t["meta"]["tag"][0]["code"], "SUBSETTED");
        let d: Value =
            serde_json::from_slice(&shape(&bytes, Summary::Data, None).unwrap()).unwrap();
        assert!(d.get("text").is_none() && d.get("photo").is_some());
        let names = vec!["name".to_owned()];
        let e: Value =
            serde_json::from_slice(&shape(&bytes, Summary::False, Some(&names)).unwrap()).unwrap();
        assert!(e.get("birthDate").is_none() && e.get("name").is_some() && e["id"] == "1");
        assert!(shape(&bytes, Summary::False, None).is_none());
    }
}
