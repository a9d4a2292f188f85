//! Bulk import: many resources with their own ids, validated one by one
//! (every rejection reported with its reason, never dropped silently), the
//! accepted ones written as one atomic write set per call through the
//! ordinary write planner (so they are stamped, indexed and compartment-
//! keyed like any write) and audited as one `import` event per patient.

use std::collections::{HashMap, HashSet};

use carelayer_audit::AuditAction;
use carelayer_policy::Principal;
use carelayer_store::StoredResource;
use serde_json::Value;

use crate::prepare::{self, is_valid_id};
use crate::write::{AuditMode, Method, WriteEntry};
use crate::{Caller, Conditional, Issue, Records, RecordsError, WriteStatus};

/// Import options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Skip resources whose current stored version has the same content
    /// (ignoring `meta.versionId`/`meta.lastUpdated`): re-importing a batch
    /// that was already committed (say, after an interruption) then writes
    /// nothing twice. Costs one read per resource.
    pub skip_unchanged: bool,
}

/// One resource refused by an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRejection {
    /// Position in the submitted list.
    pub index: usize,
    /// `Type/id` when the resource had them.
    pub reference: Option<String>,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub created: usize,
    pub updated: usize,
    /// Identical to the stored current version (with `skip_unchanged`).
    pub unchanged: usize,
    pub rejected: Vec<ImportRejection>,
}

impl ImportReport {
    /// Resources written (created or updated).
    #[must_use]
    pub fn written(&self) -> usize {
        self.created + self.updated
    }

    fn absorb(&mut self, other: ImportReport) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.rejected.extend(other.rejected);
    }
}

/// Issues as one line: `Patient.birthDate: bad date; …`.
#[must_use]
pub fn describe_issues(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| match &i.location {
            Some(l) => format!("{l}: {}", i.diagnostics),
            None => i.diagnostics.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A records error as a one-line reason.
#[must_use]
pub fn describe_error(e: &RecordsError) -> String {
    match e {
        RecordsError::Invalid(issues) | RecordsError::BusinessRule(issues) => {
            format!("{e}: {}", describe_issues(issues))
        }
        other => other.to_string(),
    }
}

impl Records {
    /// An import of about `expected` resources starts (the CLI's in-process
    /// import): the store may prepare for it ([`Store::begin_bulk_load`]).
    /// Only the operator may: it is a hint that can make other users'
    /// searches slower while it lasts, never different. Each call must be
    /// followed by one [`Records::end_bulk_load`], also when the import fails.
    ///
    /// [`Store::begin_bulk_load`]: carelayer_store::Store::begin_bulk_load
    ///
    /// # Errors
    /// [`RecordsError::Forbidden`] for anyone but the operator; store errors.
    pub async fn begin_bulk_load(
        &self,
        caller: &Caller,
        expected: u64,
    ) -> Result<(), RecordsError> {
        if caller.principal != Principal::LocalOperator {
            return Err(RecordsError::Forbidden);
        }
        Ok(self.store.begin_bulk_load(expected).await?)
    }

    /// The import [`Records::begin_bulk_load`] announced is over: returns
    /// when the store has done what it put off (PostgreSQL: its indexes
    /// built), so searches after it run as usual.
    ///
    /// # Errors
    /// As [`Records::begin_bulk_load`].
    pub async fn end_bulk_load(&self, caller: &Caller) -> Result<(), RecordsError> {
        if caller.principal != Principal::LocalOperator {
            return Err(RecordsError::Forbidden);
        }
        Ok(self.store.end_bulk_load().await?)
    }

    /// Import resources (see the module docs) with default options.
    ///
    /// # Errors
    /// Store errors (nothing of this call is then written). Invalid
    /// resources are not errors: they are in the report's `rejected`.
    pub async fn import(
        &self,
        caller: &Caller,
        resources: Vec<Value>,
    ) -> Result<ImportReport, RecordsError> {
        self.import_with(caller, resources, ImportOptions::default())
            .await
    }

    /// Import resources with `options`.
    ///
    /// # Errors
    /// As [`Records::import`].
    pub async fn import_with(
        &self,
        caller: &Caller,
        resources: Vec<Value>,
        options: ImportOptions,
    ) -> Result<ImportReport, RecordsError> {
        let mut report = ImportReport::default();
        let mut entries = Vec::with_capacity(resources.len());
        let mut positions = Vec::with_capacity(resources.len());
        let mut seen: HashSet<(String, String)> = HashSet::with_capacity(resources.len());
        // Stored versions to compare with, read together (one round trip).
        let stored: HashMap<(String, String), StoredResource> = if options.skip_unchanged {
            let keys: Vec<(String, String)> = resources
                .iter()
                .filter_map(|r| match (r.get("resourceType"), r.get("id")) {
                    (Some(Value::String(t)), Some(Value::String(id))) if is_valid_id(id) => {
                        Some((t.clone(), id.clone()))
                    }
                    _ => None,
                })
                .collect();
            let found = self.store.read_current_many(&keys).await?;
            keys.into_iter()
                .zip(found)
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect()
        } else {
            HashMap::new()
        };
        for (index, resource) in resources.into_iter().enumerate() {
            match self.import_entry(resource, &mut seen, &stored) {
                Ok(Some(entry)) => {
                    entries.push(entry);
                    positions.push(index);
                }
                Ok(None) => report.unchanged += 1,
                Err((reference, reason)) => report.rejected.push(ImportRejection {
                    index,
                    reference,
                    reason,
                }),
            }
        }
        if entries.is_empty() {
            return Ok(report);
        }
        match self
            .plan_and_commit_audited(
                caller,
                &entries,
                false,
                AuditMode::Grouped(AuditAction::Import),
            )
            .await
        {
            Ok(outcomes) => {
                for outcome in outcomes {
                    match outcome.status {
                        WriteStatus::Created => report.created += 1,
                        WriteStatus::Updated => report.updated += 1,
                        _ => {}
                    }
                }
            }
            Err(RecordsError::Store(e)) => return Err(RecordsError::Store(e)),
            Err(e) if entries.len() == 1 => report.rejected.push(ImportRejection {
                index: positions[0],
                reference: reference_of(&entries[0]),
                reason: describe_error(&e),
            }),
            Err(_) => {
                // Something in the set was refused as a whole (policy, a
                // conflict): commit one by one to say which.
                for (entry, index) in entries.into_iter().zip(positions) {
                    let reference = reference_of(&entry);
                    match self
                        .plan_and_commit_audited(
                            caller,
                            std::slice::from_ref(&entry),
                            false,
                            AuditMode::Grouped(AuditAction::Import),
                        )
                        .await
                    {
                        Ok(outcomes) => report.absorb(ImportReport {
                            created: outcomes
                                .iter()
                                .filter(|o| o.status == WriteStatus::Created)
                                .count(),
                            updated: outcomes
                                .iter()
                                .filter(|o| o.status == WriteStatus::Updated)
                                .count(),
                            ..ImportReport::default()
                        }),
                        Err(RecordsError::Store(e)) => return Err(RecordsError::Store(e)),
                        Err(e) => report.rejected.push(ImportRejection {
                            index,
                            reference,
                            reason: describe_error(&e),
                        }),
                    }
                }
            }
        }
        report.rejected.sort_by_key(|r| r.index);
        Ok(report)
    }

    /// Check one resource; `Ok(None)` when it is unchanged and skipped.
    fn import_entry(
        &self,
        resource: Value,
        seen: &mut HashSet<(String, String)>,
        stored: &HashMap<(String, String), StoredResource>,
    ) -> Result<Option<WriteEntry>, (Option<String>, String)> {
        let ty = match resource.get("resourceType") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err((None, "'resourceType' is not a string".into())),
            None if resource.is_object() => {
                return Err((None, "the resource has no 'resourceType'".into()));
            }
            None => return Err((None, "not a JSON object (a FHIR resource)".into())),
        };
        let id = match resource.get("id") {
            Some(Value::String(id)) if is_valid_id(id) => Some(id.clone()),
            Some(Value::String(id)) => {
                return Err((
                    Some(format!("{ty}/{id}")),
                    format!("'{id}' is not a valid FHIR id"),
                ));
            }
            Some(_) => return Err((None, "'id' is not a string".into())),
            None => None,
        };
        let reference = id.as_ref().map(|id| format!("{ty}/{id}"));
        let fail = |reason: String| (reference.clone(), reason);
        prepare::check_type(&ty).map_err(|e| fail(describe_error(&e)))?;
        prepare::validate(&resource).map_err(|e| fail(describe_error(&e)))?;
        if let Some(id) = &id {
            if !seen.insert((ty.clone(), id.clone())) {
                return Err(fail(format!(
                    "{ty}/{id} appears more than once in this import batch; only its first occurrence is imported"
                )));
            }
            if let Some(current) = stored.get(&(ty.clone(), id.clone()))
                && !current.deleted
                && same_content(&current.json, &resource)
            {
                return Ok(None);
            }
        }
        // Policy is asked by the planner for each write; a refusal there
        // turns into a per-resource rejection (see `import_with`).
        Ok(Some(WriteEntry {
            method: if id.is_some() {
                Method::Put
            } else {
                Method::Post
            },
            resource_type: ty,
            target: id.map(Conditional::Id),
            resource: Some(resource),
            patch: None,
            if_match: None,
            if_none_exist: None,
            full_url: None,
            location: None,
        }))
    }
}

fn reference_of(entry: &WriteEntry) -> Option<String> {
    match &entry.target {
        Some(Conditional::Id(id)) => Some(format!("{}/{id}", entry.resource_type)),
        _ => None,
    }
}

/// Whether a stored version holds `incoming` (ignoring the server-stamped
/// `meta.versionId`, `meta.lastUpdated` and creating-organisation tag).
fn same_content(stored: &[u8], incoming: &Value) -> bool {
    let Ok(mut stored) = serde_json::from_slice::<Value>(stored) else {
        return false;
    };
    let mut incoming = incoming.clone();
    for v in [&mut stored, &mut incoming] {
        if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if let Some(Value::Array(tags)) = meta.get_mut("tag") {
                tags.retain(|t| {
                    t.get("system").and_then(Value::as_str)
                        != Some(carelayer_policy::facts::CREATING_ORG_TAG_SYSTEM)
                });
                if tags.is_empty() {
                    meta.remove("tag");
                }
            }
            if meta.is_empty() {
                v.as_object_mut().map(|o| o.remove("meta"));
            }
        }
    }
    strip_order(&stored) == strip_order(&incoming)
}

/// Objects compared regardless of key order (`preserve_order` maps compare
/// in order; stamping moves `resourceType`, `id`, `meta` first).
fn strip_order(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, Value)> =
                map.iter().map(|(k, v)| (k, strip_order(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(strip_order).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_ignores_stamps_and_key_order() {
        let stored = br#"{"resourceType":"Patient","id":"a","meta":{"versionId":"1","lastUpdated":"2020-01-01T00:00:00Z"},"gender":"male"}"#;
        assert!(same_content(
            stored,
            &json!({"gender": "male", "id": "a", "resourceType": "Patient"})
        ));
        assert!(!same_content(
            stored,
            &json!({"gender": "female", "id": "a", "resourceType": "Patient"})
        ));
    }
}
