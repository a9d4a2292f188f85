//! FHIR JSON for responses the service builds: Bundles (searchset, history,
//! transaction/batch responses) and OperationOutcomes.
//!
//! Stored resources are compact JSON already; Bundles splice those bytes in
//! as they are rather than parsing and re-serialising every entry.

use serde_json::{Map, Value, json};

use crate::{Issue, Version, clock};

/// Builds a Bundle's JSON incrementally.
pub struct BundleBuilder {
    buf: Vec<u8>,
    entries: usize,
}

impl BundleBuilder {
    /// Start a Bundle of `bundle_type` with an optional total and links
    /// (`relation`, `url`).
    #[must_use]
    pub fn new(bundle_type: &str, total: Option<u64>, links: &[(&str, String)]) -> Self {
        let mut head = Map::new();
        head.insert("resourceType".into(), json!("Bundle"));
        head.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
        head.insert(
            "meta".into(),
            json!({"lastUpdated": clock::format_instant(clock::now_micros())}),
        );
        head.insert("type".into(), json!(bundle_type));
        if let Some(total) = total {
            head.insert("total".into(), json!(total));
        }
        if !links.is_empty() {
            head.insert(
                "link".into(),
                Value::Array(
                    links
                        .iter()
                        .map(|(relation, url)| json!({"relation": relation, "url": url}))
                        .collect(),
                ),
            );
        }
        let mut buf = serde_json::to_vec(&Value::Object(head)).unwrap_or_default();
        // Reopen the object to append "entry".
        buf.pop();
        Self { buf, entries: 0 }
    }

    /// Make room for `bytes` more, once, rather than growing (and copying)
    /// the buffer again and again while a large page is appended.
    pub fn reserve(&mut self, bytes: usize) {
        self.buf.reserve(bytes);
    }

    /// Append an entry: `fullUrl`, the resource's JSON bytes as stored, and
    /// further members (`search`, `request`, `response`).
    pub fn entry(
        &mut self,
        full_url: Option<&str>,
        resource: Option<&[u8]>,
        members: &[(&str, Value)],
    ) {
        self.buf.extend_from_slice(if self.entries == 0 {
            b",\"entry\":[{"
        } else {
            b",{"
        });
        self.entries += 1;
        let mut first = true;
        let mut sep = |buf: &mut Vec<u8>| {
            if !first {
                buf.push(b',');
            }
            first = false;
        };
        if let Some(url) = full_url {
            sep(&mut self.buf);
            self.buf.extend_from_slice(b"\"fullUrl\":");
            write_json(&mut self.buf, url);
        }
        if let Some(bytes) = resource.filter(|b| !b.is_empty()) {
            sep(&mut self.buf);
            self.buf.extend_from_slice(b"\"resource\":");
            self.buf.extend_from_slice(bytes);
        }
        for (key, value) in members {
            sep(&mut self.buf);
            write_json(&mut self.buf, key);
            self.buf.push(b':');
            write_json(&mut self.buf, value);
        }
        self.buf.push(b'}');
    }

    #[must_use]
    pub fn finish(mut self) -> Vec<u8> {
        if self.entries > 0 {
            self.buf.push(b']');
        }
        self.buf.push(b'}');
        self.buf
    }
}

/// Serialise `value` onto the end of `buf` (no buffer of its own per
/// member: a page of 500 entries made a thousand). Strings and `Value`s
/// cannot fail to serialise; if one somehow did, the partial bytes are
/// taken back so the Bundle is not corrupted, and the member is `null`.
fn write_json<T: serde::Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    let len = buf.len();
    if serde_json::to_writer(&mut *buf, value).is_err() {
        buf.truncate(len);
        buf.extend_from_slice(b"null");
    }
}

/// `base/Type/id`.
#[must_use]
pub fn full_url(base: &str, version: &Version) -> String {
    format!("{base}/{}/{}", version.resource_type, version.id)
}

/// `W/"3"`.
#[must_use]
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// An OperationOutcome listing the issues.
#[must_use]
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut issue = Map::new();
            issue.insert("severity".into(), json!(i.severity.as_str()));
            issue.insert("code".into(), json!(i.code));
            issue.insert("diagnostics".into(), json!(i.diagnostics));
            if let Some(loc) = &i.location {
                issue.insert("location".into(), json!([loc]));
                issue.insert("expression".into(), json!([loc]));
            }
            Value::Object(issue)
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_builder_makes_valid_json() {
        let mut b = BundleBuilder::new(
            "searchset",
            Some(2),
            &[("self", "http://x/fhir/Patient".into())],
        );
        b.entry(
            Some("http://x/fhir/Patient/1"),
            Some(br#"{"resourceType":"Patient","id":"1"}"#),
            &[("search", json!({"mode": "match"}))],
        );
        b.entry(
            None,
            None,
            &[("response", json!({"status": "204 No Content"}))],
        );
        let v: Value = serde_json::from_slice(&b.finish()).unwrap();
        assert_eq!(v["total"], 2);
        assert_eq!(v["entry"][0]["resource"]["id"], "1");
        assert_eq!(v["entry"][1]["response"]["status"], "204 No Content");
        let empty: Value =
            serde_json::from_slice(&BundleBuilder::new("history", None, &[]).finish()).unwrap();
        assert!(empty.get("entry").is_none());
    }
}
