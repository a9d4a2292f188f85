//! Batch and transaction Bundles (FHIR R4 http §3.1.0.11).
//!
//! A transaction is planned as one write set (DELETE, POST, then PUT/PATCH,
//! with `urn:uuid:`/fullUrl and conditional references resolved) and
//! committed all-or-nothing; its GET entries run after the commit. A batch
//! runs each entry on its own and reports each entry's outcome.

use base64::Engine;
use carelayer_store::StoreError;
use serde_json::{Value, json};

use crate::render::{BundleBuilder, etag, full_url, operation_outcome};
use crate::search::parse_query_string;
use crate::write::{Conditional, Method, WriteEntry, check_resource};
use crate::{
    Caller, HistoryRequest, Records, RecordsError, SearchRequest, WriteOutcome, WriteStatus, clock,
    prepare,
};

/// The two kinds of Bundle the server processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Transaction,
    Batch,
}

/// A parsed entry.
enum Entry {
    Write(Box<WriteEntry>),
    Get(String),
}

/// A response entry: fullUrl, resource bytes, and the `response` element.
type EntryResponse = (Option<String>, Option<Vec<u8>>, Value);

/// Whether response entries carry the resource (`Prefer: return=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

impl Records {
    /// Process a `transaction` or `batch` Bundle posted to the base URL.
    /// Returns the response Bundle's JSON.
    ///
    /// # Errors
    /// For a transaction, the first failing entry's error (nothing is
    /// written). For a batch, only errors in the Bundle itself.
    pub async fn process_bundle(
        &self,
        caller: &Caller,
        body: &[u8],
        base_url: &str,
        prefer: ReturnPreference,
    ) -> Result<Vec<u8>, RecordsError> {
        let bundle = prepare::parse_body(body)?;
        if prepare::resource_type_of(&bundle)? != "Bundle" {
            return Err(RecordsError::BadRequest(
                "only a Bundle can be posted to the base URL".into(),
            ));
        }
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => BundleKind::Transaction,
            Some("batch") => BundleKind::Batch,
            other => {
                return Err(RecordsError::BadRequest(format!(
                    "a Bundle of type '{}' cannot be processed; post a transaction or batch, or store it with POST /Bundle",
                    other.unwrap_or("(none)")
                )));
            }
        };
        let raw_entries = bundle
            .get("entry")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if raw_entries.len() > self.options.max_bundle_entries {
            return Err(RecordsError::TooCostly(format!(
                "the Bundle has {} entries; this server accepts at most {}",
                raw_entries.len(),
                self.options.max_bundle_entries
            )));
        }
        match kind {
            BundleKind::Transaction => {
                // Structural validation of the whole Bundle first (its
                // entries' resources are validated as they are parsed).
                let mut shell = bundle.clone();
                if let Some(entries) = shell.get_mut("entry").and_then(Value::as_array_mut) {
                    for e in entries {
                        if let Some(obj) = e.as_object_mut() {
                            obj.remove("resource");
                        }
                    }
                }
                prepare::validate(&shell)?;
                let mut entries = Vec::with_capacity(raw_entries.len());
                for (i, raw) in raw_entries.iter().enumerate() {
                    entries.push(parse_entry(i, raw, base_url)?);
                }
                self.transaction(caller, entries, base_url, prefer).await
            }
            BundleKind::Batch => Ok(self.batch(caller, &raw_entries, base_url, prefer).await),
        }
    }

    async fn transaction(
        &self,
        caller: &Caller,
        entries: Vec<Entry>,
        base_url: &str,
        prefer: ReturnPreference,
    ) -> Result<Vec<u8>, RecordsError> {
        let mut write_positions = Vec::new();
        let mut writes = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if let Entry::Write(w) = e {
                write_positions.push(i);
                writes.push((**w).clone());
            }
        }
        let outcomes = if writes.is_empty() {
            Vec::new()
        } else {
            self.plan_and_commit(caller, &writes, true).await?
        };
        let mut responses: Vec<Option<EntryResponse>> = (0..entries.len()).map(|_| None).collect();
        for (pos, outcome) in write_positions.into_iter().zip(outcomes) {
            responses[pos] = Some(write_response(&outcome, base_url, prefer));
        }
        for (i, e) in entries.iter().enumerate() {
            if let Entry::Get(url) = e {
                responses[i] = Some(match self.get(caller, url, base_url).await {
                    Ok((full, bytes)) => (full, Some(bytes), json!({"status": "200 OK"})),
                    Err(err) => error_response(&err),
                });
            }
        }
        let mut out = BundleBuilder::new("transaction-response", None, &[]);
        for (full, resource, response) in responses.into_iter().flatten() {
            out.entry(
                full.as_deref(),
                resource.as_deref(),
                &[("response", response)],
            );
        }
        Ok(out.finish())
    }

    async fn batch(
        &self,
        caller: &Caller,
        raw_entries: &[Value],
        base_url: &str,
        prefer: ReturnPreference,
    ) -> Vec<u8> {
        let mut out = BundleBuilder::new("batch-response", None, &[]);
        for (i, raw) in raw_entries.iter().enumerate() {
            let (full, resource, response) = match parse_entry(i, raw, base_url) {
                Err(err) => error_response(&err),
                Ok(Entry::Get(url)) => match self.get(caller, &url, base_url).await {
                    Ok((full, bytes)) => (full, Some(bytes), json!({"status": "200 OK"})),
                    Err(err) => error_response(&err),
                },
                Ok(Entry::Write(w)) => {
                    match self
                        .plan_and_commit(caller, std::slice::from_ref(&*w), true)
                        .await
                    {
                        Ok(mut outcomes) => match outcomes.pop() {
                            Some(outcome) => write_response(&outcome, base_url, prefer),
                            None => error_response(&RecordsError::Store(StoreError::Other(
                                "planner lost an outcome".into(),
                            ))),
                        },
                        Err(err) => error_response(&err),
                    }
                }
            };
            out.entry(
                full.as_deref(),
                resource.as_deref(),
                &[("response", response)],
            );
        }
        out.finish()
    }

    /// A GET entry: read, vread, history or search by relative URL.
    async fn get(
        &self,
        caller: &Caller,
        url: &str,
        base_url: &str,
    ) -> Result<(Option<String>, Vec<u8>), RecordsError> {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match segments.as_slice() {
            [ty, id] if *id != "_history" => {
                let v = self.read(caller, ty, id).await?;
                Ok((Some(full_url(base_url, &v)), v.json))
            }
            [ty, id, "_history", vid] => {
                let v = self.vread(caller, ty, id, vid).await?;
                Ok((Some(full_url(base_url, &v)), v.json))
            }
            [ty] => {
                let request = SearchRequest {
                    resource_type: Some((*ty).to_owned()),
                    params: parse_query_string(query),
                    lenient: false,
                };
                let outcome = self.search(caller, &request).await?;
                Ok((None, crate::render_searchset(&outcome, &request, base_url)))
            }
            [ty, "_history"] | [ty, _, "_history"] => {
                let id = (segments.len() == 3).then(|| segments[1].to_owned());
                let page = self
                    .history(
                        caller,
                        &HistoryRequest {
                            resource_type: Some((*ty).to_owned()),
                            id,
                            ..HistoryRequest::default()
                        },
                    )
                    .await?;
                Ok((None, crate::render_history(&page, base_url, path, &[])))
            }
            _ => Err(RecordsError::BadRequest(format!(
                "'{url}' is not a read, vread, history or search URL"
            ))),
        }
    }
}

/// The `response` of a write entry, and the entry's fullUrl and resource.
fn write_response(
    outcome: &WriteOutcome,
    base_url: &str,
    prefer: ReturnPreference,
) -> EntryResponse {
    let status = match outcome.status {
        WriteStatus::Created => "201 Created",
        WriteStatus::Updated | WriteStatus::Existing => "200 OK",
        WriteStatus::Deleted | WriteStatus::NothingToDelete => "204 No Content",
    };
    let Some(v) = &outcome.version else {
        return (None, None, json!({"status": status}));
    };
    let mut response = json!({
        "status": status,
        "etag": etag(v.version),
        "lastModified": clock::format_instant(v.last_updated),
    });
    if !v.deleted {
        response["location"] = json!(format!(
            "{}/{}/_history/{}",
            v.resource_type, v.id, v.version
        ));
    }
    let resource = match prefer {
        ReturnPreference::Representation if !v.deleted => Some(v.json.clone()),
        ReturnPreference::OperationOutcome => {
            response["outcome"] = operation_outcome(&[crate::Issue {
                severity: crate::Severity::Information,
                code: "informational".into(),
                location: None,
                diagnostics: format!("{status}: {}/{}", v.resource_type, v.id),
            }]);
            None
        }
        _ => None,
    };
    (Some(full_url(base_url, v)), resource, response)
}

fn error_response(err: &RecordsError) -> EntryResponse {
    (
        None,
        None,
        json!({
            "status": format!("{} {}", status_of(err), reason_of(status_of(err))),
            "outcome": operation_outcome(&err.issues()),
        }),
    )
}

/// HTTP status for an error inside a batch response (the `http` crate's
/// table maps the same errors for whole requests).
#[must_use]
pub fn status_of(err: &RecordsError) -> u16 {
    match err {
        RecordsError::BadRequest(_) | RecordsError::Invalid(_) => 400,
        RecordsError::BusinessRule(_) => 422,
        RecordsError::UnknownType(_) | RecordsError::NotFound(_) => 404,
        RecordsError::Gone { .. } => 410,
        RecordsError::VersionConflict(_) | RecordsError::MultipleMatches(_) => 412,
        RecordsError::Conflict(_) => 409,
        RecordsError::Forbidden => 403,
        RecordsError::NotSupported(_) => 501,
        RecordsError::TooCostly(_) => 413,
        RecordsError::Store(StoreError::Unavailable(_)) => 503,
        RecordsError::Store(StoreError::Unsupported(_)) => 501,
        RecordsError::Store(_) => 500,
    }
}

fn reason_of(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Parse `Bundle.entry[i]` into a write or a read.
fn parse_entry(i: usize, raw: &Value, base_url: &str) -> Result<Entry, RecordsError> {
    let loc = format!("Bundle.entry[{i}]");
    let bad = |m: String| RecordsError::BadRequest(format!("{loc}: {m}"));
    let request = raw
        .get("request")
        .ok_or_else(|| bad("has no request".into()))?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("request.method is missing".into()))?;
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("request.url is missing".into()))?;
    let url = match url.strip_prefix(base_url) {
        Some(rest) => rest.trim_start_matches('/'),
        None if url
            .split('?')
            .next()
            .is_some_and(|path| path.contains("://")) =>
        {
            return Err(bad(format!(
                "request.url '{url}' is not on this server (its base is {base_url}); use a URL relative to the base"
            )));
        }
        None => url.trim_start_matches('/'),
    };
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(op) = segments.iter().find(|s| s.starts_with('$')) {
        return Err(RecordsError::NotSupported(format!(
            "{loc}: operations ({op}) inside a Bundle are not supported; call them directly"
        )));
    }
    let method = match method {
        "GET" | "HEAD" => return Ok(Entry::Get(url.to_owned())),
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        other => return Err(bad(format!("request.method '{other}' is not supported"))),
    };
    let Some(resource_type) = segments.first().copied() else {
        return Err(bad(format!("request.url '{url}' names no resource type")));
    };
    prepare::check_type(resource_type).map_err(|e| bad(e.to_string()))?;
    let target = match (segments.as_slice(), query) {
        ([_], None) if method == Method::Post => None,
        ([_], Some(q)) if method != Method::Post => Some(Conditional::Query(q.to_owned())),
        ([_, id], None) if method != Method::Post => Some(Conditional::Id((*id).to_owned())),
        _ => {
            return Err(bad(format!(
                "request.url '{url}' does not fit {method:?} (expected Type for POST, Type/id or Type?search otherwise)"
            )));
        }
    };
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(tag) => Some(
            parse_etag(tag)
                .ok_or_else(|| bad(format!("ifMatch '{tag}' is not an ETag like W/\"3\"")))?,
        ),
        None => None,
    };
    let mut entry = WriteEntry {
        method,
        resource_type: resource_type.to_owned(),
        target,
        resource: None,
        patch: None,
        if_match,
        if_none_exist: request
            .get("ifNoneExist")
            .and_then(Value::as_str)
            .map(|q| q.split_once('?').map_or(q, |(_, q)| q).to_owned()),
        full_url: raw
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_owned),
        location: Some(loc.clone()),
    };
    match method {
        Method::Post | Method::Put => {
            let resource = raw
                .get("resource")
                .cloned()
                .ok_or_else(|| bad("has no resource to write".into()))?;
            let url_id = match &entry.target {
                Some(Conditional::Id(id)) => Some(Some(id.as_str())),
                _ => None,
            };
            check_resource(&resource, resource_type, url_id)
                .map_err(|e| e.within(&format!("{loc}.resource")))?;
            entry.resource = Some(resource);
        }
        Method::Patch => {
            let binary = raw
                .get("resource")
                .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Binary"))
                .ok_or_else(|| {
                    bad("a PATCH entry carries its JSON Patch as a Binary resource".into())
                })?;
            let data = binary
                .get("data")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| bad(format!("the Binary's data is not base64: {e}")))?;
            let patch = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("the Binary's data is not a JSON Patch: {e}")))?;
            entry.patch = Some(patch);
        }
        Method::Delete => {}
    }
    Ok(Entry::Write(Box::new(entry)))
}

/// `W/"3"` or `"3"` or `3` → 3.
#[must_use]
pub fn parse_etag(tag: &str) -> Option<i64> {
    tag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("abc"), None);
    }

    #[test]
    fn entries_parse() {
        let e = parse_entry(
            0,
            &json!({"request": {"method": "DELETE", "url": "Patient?identifier=x"}}),
            "http://h/fhir",
        )
        .unwrap();
        assert!(
            matches!(e, Entry::Write(w) if w.target == Some(Conditional::Query("identifier=x".into())))
        );
        let e = parse_entry(
            0,
            &json!({"request": {"method": "GET", "url": "http://h/fhir/Patient/1"}}),
            "http://h/fhir",
        )
        .unwrap();
        assert!(matches!(e, Entry::Get(u) if u == "Patient/1"));
        let e = parse_entry(
            0,
            &json!({"request": {"method": "GET", "url": "/Observation?code=http://loinc.org|1"}}),
            "http://h/fhir",
        )
        .unwrap();
        assert!(matches!(e, Entry::Get(u) if u == "Observation?code=http://loinc.org|1"));
        assert!(
            parse_entry(
                0,
                &json!({"request": {"method": "PUT", "url": "http://elsewhere/fhir/Patient/1"}}),
                "http://h/fhir"
            )
            .is_err()
        );
        assert!(
            parse_entry(
                0,
                &json!({"request": {"method": "PUT", "url": "Patient"}}),
                "b"
            )
            .is_err()
        );
        assert!(
            parse_entry(
                0,
                &json!({"request": {"method": "POST", "url": "Nope"}}),
                "b"
            )
            .is_err()
        );
    }
}
