//! Writes: create, update, patch and delete, plain and conditional.
//!
//! One planner serves single requests and transaction Bundles alike: it
//! resolves each entry's target (server id, client id, or a conditional
//! search), rewrites references between entries, reads the current versions
//! it builds on, and turns everything into one [`WriteSet`] whose
//! preconditions (the versions and search results it relied on) the store
//! re-checks atomically. When a concurrent writer invalidated the plan the
//! store refuses it, and the planner simply plans again.

use std::collections::{HashMap, HashSet};

use carelayer_audit::{AuditAction, AuditOutcome, AuditRecord};
use carelayer_policy::Principal;
use carelayer_policy::facts::CREATING_ORG_TAG_SYSTEM;
use carelayer_policy::{Action, Decision};
use carelayer_store::{Precondition, ResourceWrite, StoreError, StoredResource, WriteSet};
use serde_json::Value;

use crate::access::{self, Body, Subject, redact};
use crate::prepare::{self, check_type, deletion, is_valid_id, new_id, stamp};
use crate::{Caller, Records, RecordsError, Version, clock, purpose_of};

/// The current version of each `(type, id)` a plan targets, read together.
type Currents = HashMap<(String, String), Option<StoredResource>>;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    Created,
    Updated,
    Deleted,
    /// A conditional create matched one existing resource; nothing written.
    Existing,
    /// A delete found nothing (absent or already deleted); nothing written.
    NothingToDelete,
}

/// The result of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub status: WriteStatus,
    /// The version written (or found, for [`WriteStatus::Existing`]).
    pub version: Option<Version>,
}

/// How an update, patch or delete names its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conditional {
    /// `Type/id`.
    Id(String),
    /// `Type?search` (the query string, without `?`).
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Delete,
    Post,
    Put,
    Patch,
}

impl Method {
    /// FHIR transaction processing order: DELETE, POST, PUT/PATCH.
    fn rank(self) -> u8 {
        match self {
            Self::Delete => 0,
            Self::Post => 1,
            Self::Put | Self::Patch => 2,
        }
    }
}

/// One write to plan.
#[derive(Debug, Clone)]
pub(crate) struct WriteEntry {
    pub method: Method,
    pub resource_type: String,
    pub target: Option<Conditional>,
    /// The (validated) body of a POST/PUT.
    pub resource: Option<Value>,
    pub patch: Option<json_patch::Patch>,
    pub if_match: Option<i64>,
    pub if_none_exist: Option<String>,
    pub full_url: Option<String>,
    /// Where the entry came from, for error messages (`Bundle.entry[3]`).
    pub location: Option<String>,
}

impl WriteEntry {
    fn new(method: Method, resource_type: &str) -> Self {
        Self {
            method,
            resource_type: resource_type.to_owned(),
            target: None,
            resource: None,
            patch: None,
            if_match: None,
            if_none_exist: None,
            full_url: None,
            location: None,
        }
    }

    fn err(&self, e: RecordsError) -> RecordsError {
        match &self.location {
            Some(loc) => match e {
                RecordsError::MultipleMatches(m) => {
                    RecordsError::MultipleMatches(format!("{loc}: {m}"))
                }
                RecordsError::VersionConflict(m) => {
                    RecordsError::VersionConflict(format!("{loc}: {m}"))
                }
                RecordsError::NotFound(m) => RecordsError::NotFound(format!("{m} ({loc})")),
                other => other.within(&format!("{loc}.resource")),
            },
            None => e,
        }
    }
}

/// How a committed plan is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuditMode {
    /// One audit record per written resource (single writes, Bundles).
    PerEntry,
    /// Bulk loads: one record per patient (and one for resources outside
    /// any Patient compartment) with this action, listing every resource.
    Grouped(AuditAction),
}

/// Merge per-entry audit records into one per patient, in order of first
/// appearance (same agent, channel and time: they come from one plan).
fn group_audit(records: Vec<AuditRecord>, action: AuditAction) -> Vec<AuditRecord> {
    let mut grouped: Vec<AuditRecord> = Vec::new();
    let mut by_patient: HashMap<Option<String>, usize> = HashMap::new();
    for record in records {
        match by_patient.get(&record.patient) {
            Some(&i) => grouped[i].resources.extend(record.resources),
            None => {
                by_patient.insert(record.patient.clone(), grouped.len());
                grouped.push(AuditRecord { action, ..record });
            }
        }
    }
    for record in &mut grouped {
        record.detail = Some(format!("{} resources", record.resources.len()));
    }
    grouped
}

/// Where planning put an entry.
#[derive(Debug, Clone)]
enum Resolved {
    /// Write to this id (new or existing).
    Target(String),
    /// A conditional create matched this existing resource.
    Existing(String),
    /// A conditional delete matched nothing.
    Nothing,
}

impl Records {
    /// Create a resource with a server-assigned id. With `if_none_exist`
    /// (the `If-None-Exist` search), an existing single match is returned
    /// instead.
    ///
    /// # Errors
    /// Validation errors, `MultipleMatches`, store errors.
    pub async fn create(
        &self,
        caller: &Caller,
        resource_type: &str,
        body: &[u8],
        if_none_exist: Option<&str>,
    ) -> Result<WriteOutcome, RecordsError> {
        let resource = self.checked_body(resource_type, body, None)?;
        let mut entry = WriteEntry::new(Method::Post, resource_type);
        entry.resource = Some(resource);
        entry.if_none_exist = if_none_exist.map(|q| strip_type_prefix(resource_type, q).to_owned());
        self.write_one(caller, entry).await
    }

    /// Update (or create with a client id) a resource: `PUT Type/id`, or a
    /// conditional update `PUT Type?search`.
    ///
    /// # Errors
    /// Validation errors, `VersionConflict` on a stale `If-Match`,
    /// `MultipleMatches`, store errors.
    pub async fn update(
        &self,
        caller: &Caller,
        resource_type: &str,
        target: Conditional,
        body: &[u8],
        if_match: Option<i64>,
    ) -> Result<WriteOutcome, RecordsError> {
        let url_id = match &target {
            Conditional::Id(id) => Some(id.as_str()),
            Conditional::Query(_) => None,
        };
        let resource = self.checked_body(resource_type, body, Some(url_id))?;
        let mut entry = WriteEntry::new(Method::Put, resource_type);
        entry.resource = Some(resource);
        entry.target = Some(target);
        entry.if_match = if_match;
        self.write_one(caller, entry).await
    }

    /// Apply a JSON Patch (RFC 6902) to the current version.
    ///
    /// # Errors
    /// `BadRequest` for a malformed patch or one that fails to apply, the
    /// validation errors of the result, `NotFound`/`Gone`, `VersionConflict`.
    pub async fn patch(
        &self,
        caller: &Caller,
        resource_type: &str,
        target: Conditional,
        patch_body: &[u8],
        if_match: Option<i64>,
    ) -> Result<WriteOutcome, RecordsError> {
        check_type(resource_type)?;
        let patch: json_patch::Patch = serde_json::from_slice(patch_body).map_err(|e| {
            RecordsError::BadRequest(format!("the body is not a JSON Patch document: {e}"))
        })?;
        let mut entry = WriteEntry::new(Method::Patch, resource_type);
        entry.patch = Some(patch);
        entry.target = Some(target);
        entry.if_match = if_match;
        self.write_one(caller, entry).await
    }

    /// Delete a resource (`DELETE Type/id`) or the single match of a search.
    ///
    /// # Errors
    /// `MultipleMatches`, `VersionConflict`, store errors.
    pub async fn delete(
        &self,
        caller: &Caller,
        resource_type: &str,
        target: Conditional,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome, RecordsError> {
        check_type(resource_type)?;
        let mut entry = WriteEntry::new(Method::Delete, resource_type);
        entry.target = Some(target);
        entry.if_match = if_match;
        self.write_one(caller, entry).await
    }

    async fn write_one(
        &self,
        caller: &Caller,
        entry: WriteEntry,
    ) -> Result<WriteOutcome, RecordsError> {
        let mut outcomes = self.plan_and_commit(caller, &[entry], false).await?;
        outcomes
            .pop()
            .ok_or_else(|| RecordsError::Store(StoreError::Other("planner lost an outcome".into())))
    }

    /// Parse, type-check and validate a body for `resource_type`. With
    /// `url_id = Some(Some(id))` (an update of `Type/id`) the body's id must
    /// equal the URL's.
    pub(crate) fn checked_body(
        &self,
        resource_type: &str,
        body: &[u8],
        url_id: Option<Option<&str>>,
    ) -> Result<Value, RecordsError> {
        check_type(resource_type)?;
        let resource = prepare::parse_body(body)?;
        check_resource(&resource, resource_type, url_id)?;
        Ok(resource)
    }

    /// Plan the entries and commit them as one atomic write set, re-planning
    /// when a concurrent writer got there first. Outcomes are in entry order.
    pub(crate) async fn plan_and_commit(
        &self,
        caller: &Caller,
        entries: &[WriteEntry],
        resolve_references: bool,
    ) -> Result<Vec<WriteOutcome>, RecordsError> {
        self.plan_and_commit_audited(caller, entries, resolve_references, AuditMode::PerEntry)
            .await
    }

    /// [`Self::plan_and_commit`] with a choice of audit granularity.
    pub(crate) async fn plan_and_commit_audited(
        &self,
        caller: &Caller,
        entries: &[WriteEntry],
        resolve_references: bool,
        audit: AuditMode,
    ) -> Result<Vec<WriteOutcome>, RecordsError> {
        let mut attempt = 0;
        loop {
            let (mut writes, outcomes) = self.plan(caller, entries, resolve_references).await?;
            if let AuditMode::Grouped(action) = audit {
                writes.audit = group_audit(std::mem::take(&mut writes.audit), action);
            }
            // What the policy facts cache must forget once this commits.
            let stale = access::stale_after(&writes.resources);
            match self.store.commit(writes).await {
                Ok(_) => {
                    self.facts.forget(stale);
                    return Ok(outcomes);
                }
                Err(StoreError::PreconditionFailed(what)) => {
                    attempt += 1;
                    if attempt > self.options.conflict_retries {
                        return Err(RecordsError::Conflict(format!(
                            "concurrent changes kept invalidating this write ({what}); retry it"
                        )));
                    }
                    tracing::debug!(attempt, %what, "re-planning a write after a concurrent change");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn plan(
        &self,
        caller: &Caller,
        entries: &[WriteEntry],
        resolve_references: bool,
    ) -> Result<(WriteSet, Vec<WriteOutcome>), RecordsError> {
        let now = clock::now_micros();
        let mut writes = WriteSet::default();
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by_key(|&i| entries[i].method.rank());

        // Phase 1: decide each entry's target.
        let mut resolved: Vec<Option<Resolved>> = vec![None; entries.len()];
        let mut full_urls: HashMap<String, String> = HashMap::new();
        let mut touched: HashSet<(String, String)> = HashSet::new();
        for &i in &order {
            let entry = &entries[i];
            let r = self
                .resolve_target(entry, &mut writes)
                .await
                .map_err(|e| entry.err(e))?;
            if let Resolved::Target(id) | Resolved::Existing(id) = &r {
                if matches!(r, Resolved::Target(_))
                    && !touched.insert((entry.resource_type.clone(), id.clone()))
                {
                    return Err(entry.err(RecordsError::BadRequest(format!(
                        "{}/{id} is the target of more than one entry",
                        entry.resource_type
                    ))));
                }
                if let Some(url) = &entry.full_url {
                    full_urls.insert(url.clone(), format!("{}/{id}", entry.resource_type));
                }
            }
            resolved[i] = Some(r);
        }

        // The current version of every target, read together: one round
        // trip for a 500-entry import instead of one per entry.
        let keys: Vec<(String, String)> = order
            .iter()
            .filter_map(|&i| match &resolved[i] {
                Some(Resolved::Target(id) | Resolved::Existing(id)) => {
                    Some((entries[i].resource_type.clone(), id.clone()))
                }
                _ => None,
            })
            .collect();
        let currents: Currents = keys
            .iter()
            .cloned()
            .zip(self.store.read_current_many(&keys).await?)
            .collect();

        // Phase 2: build the versions.
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; entries.len()];
        for &i in &order {
            let entry = &entries[i];
            let Some(target) = resolved[i].take() else {
                continue;
            };
            let outcome = self
                .plan_entry(
                    caller,
                    entry,
                    target,
                    &currents,
                    &full_urls,
                    resolve_references,
                    now,
                    &mut writes,
                )
                .await
                .map_err(|e| entry.err(e))?;
            outcomes[i] = Some(outcome);
        }
        let outcomes = outcomes.into_iter().flatten().collect::<Vec<_>>();
        Ok((writes, outcomes))
    }

    /// The current version of `ty/id` as read for this plan (asking the
    /// store only for a target the plan did not list).
    async fn current_of(
        &self,
        currents: &Currents,
        ty: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, RecordsError> {
        match currents.get(&(ty.to_owned(), id.to_owned())) {
            Some(found) => Ok(found.clone()),
            None => Ok(self.store.read_current(ty, id).await?),
        }
    }

    async fn resolve_target(
        &self,
        entry: &WriteEntry,
        writes: &mut WriteSet,
    ) -> Result<Resolved, RecordsError> {
        let ty = &entry.resource_type;
        Ok(match (entry.method, &entry.target) {
            (Method::Post, _) => match &entry.if_none_exist {
                Some(query) => match self
                    .conditional_matches(ty, query, writes)
                    .await?
                    .as_slice()
                {
                    [] => Resolved::Target(new_id()),
                    [id] => Resolved::Existing(id.clone()),
                    _ => return Err(multiple(ty, query, "create")),
                },
                None => Resolved::Target(new_id()),
            },
            (_, Some(Conditional::Id(id))) => {
                if !is_valid_id(id) {
                    return Err(RecordsError::BadRequest(format!(
                        "'{id}' is not a valid FHIR id"
                    )));
                }
                Resolved::Target(id.clone())
            }
            (method, Some(Conditional::Query(query))) => {
                let ids = self.conditional_matches(ty, query, writes).await?;
                match (method, ids.as_slice()) {
                    (Method::Delete, []) => Resolved::Nothing,
                    (Method::Put, []) => Resolved::Target(
                        entry
                            .resource
                            .as_ref()
                            .and_then(|r| r.get("id"))
                            .and_then(Value::as_str)
                            .map_or_else(new_id, str::to_owned),
                    ),
                    (Method::Patch, []) => {
                        return Err(RecordsError::NotFound(format!("{ty}?{query}")));
                    }
                    (_, [id]) => {
                        if let Some(body_id) = entry
                            .resource
                            .as_ref()
                            .and_then(|r| r.get("id"))
                            .and_then(Value::as_str)
                            && body_id != id
                        {
                            return Err(RecordsError::BadRequest(format!(
                                "the resource's id '{body_id}' differs from the matched {ty}/{id}"
                            )));
                        }
                        Resolved::Target(id.clone())
                    }
                    (m, _) => {
                        let verb = match m {
                            Method::Delete => "delete",
                            Method::Patch => "patch",
                            _ => "update",
                        };
                        return Err(multiple(ty, query, verb));
                    }
                }
            }
            (_, None) => {
                return Err(RecordsError::BadRequest(
                    "this operation needs a target id or a search".into(),
                ));
            }
        })
    }

    /// Ids matching a conditional search, guarded by a precondition so the
    /// commit fails if a concurrent writer changes the answer.
    async fn conditional_matches(
        &self,
        resource_type: &str,
        query: &str,
        writes: &mut WriteSet,
    ) -> Result<Vec<String>, RecordsError> {
        let mut parsed = self.parse_conditional(resource_type, query)?;
        // Two are enough to tell "one" from "several".
        parsed.count = 2;
        let page = self.run_query(&parsed).await?;
        let ids: Vec<String> = page.matches.into_iter().map(|m| m.id).collect();
        writes.preconditions.push(Precondition::SearchMatches {
            query: parsed,
            expected_ids: ids.clone(),
        });
        Ok(ids)
    }

    #[allow(clippy::too_many_arguments)]
    async fn plan_entry(
        &self,
        caller: &Caller,
        entry: &WriteEntry,
        target: Resolved,
        currents: &Currents,
        full_urls: &HashMap<String, String>,
        resolve_references: bool,
        now: i64,
        writes: &mut WriteSet,
    ) -> Result<WriteOutcome, RecordsError> {
        let ty = entry.resource_type.as_str();
        if ty == "AuditEvent" {
            // AuditEvents are served from the tamper-evident ledger only
            // (see `audit_log`); stored copies could be forged or edited.
            let refusal = Self::audit_record(
                caller,
                match entry.method {
                    Method::Delete => AuditAction::Delete,
                    Method::Post => AuditAction::Create,
                    Method::Put => AuditAction::Update,
                    Method::Patch => AuditAction::Patch,
                },
                AuditOutcome::Denied(
                    "AuditEvent is read-only: served from the audit ledger".into(),
                ),
                None,
                vec!["AuditEvent".into()],
                "",
                None,
            );
            self.store.append_audit(vec![refusal]).await?;
            return Err(RecordsError::Forbidden);
        }
        let id = match target {
            Resolved::Nothing => {
                return Ok(WriteOutcome {
                    status: WriteStatus::NothingToDelete,
                    version: None,
                });
            }
            Resolved::Existing(id) => {
                let current = self.current_of(currents, ty, &id).await?;
                writes.preconditions.push(Precondition::CurrentVersion {
                    resource_type: ty.to_owned(),
                    id: id.clone(),
                    expected: current.as_ref().map(|c| c.version),
                });
                // The match is returned only to a caller who may read it.
                let mut version = current.map(Version::from);
                if let Some(v) = &mut version {
                    let decision = self
                        .decide(caller, Action::Read, &Subject::of(v), &writes.resources)
                        .await?;
                    if decision.is_permit() {
                        redact(&decision, v)?;
                    } else {
                        version = None;
                    }
                }
                return Ok(WriteOutcome {
                    status: WriteStatus::Existing,
                    version,
                });
            }
            Resolved::Target(id) => id,
        };
        let current = self.current_of(currents, ty, &id).await?;
        if let Some(wanted) = entry.if_match {
            let have = current.as_ref().filter(|c| !c.deleted).map(|c| c.version);
            if have != Some(wanted) {
                return Err(RecordsError::VersionConflict(format!(
                    "If-Match names version {wanted} of {ty}/{id} but the current version is {}",
                    have.map_or_else(|| "none".to_owned(), |v| v.to_string())
                )));
            }
        }
        writes.preconditions.push(Precondition::CurrentVersion {
            resource_type: ty.to_owned(),
            id: id.clone(),
            expected: current.as_ref().map(|c| c.version),
        });
        let live = current.as_ref().filter(|c| !c.deleted);
        let next_version = current.as_ref().map_or(1, |c| c.version + 1);

        if entry.method == Method::Delete {
            let Some(live) = live else {
                return Ok(WriteOutcome {
                    status: WriteStatus::NothingToDelete,
                    version: None,
                });
            };
            let subject = Subject {
                resource_type: ty,
                patient: live.patient_key.as_deref(),
                resource: Body::Json(&live.json),
            };
            self.permit(caller, Action::Delete, &subject, &writes.resources)
                .await?;
            let write = deletion(ty, &id, next_version, now);
            writes.audit.push(Self::audit_record(
                caller,
                AuditAction::Delete,
                AuditOutcome::Success,
                live.patient_key.clone(),
                vec![format!("{ty}/{id}/_history/{next_version}")],
                "",
                None,
            ));
            let version = Version {
                resource_type: ty.to_owned(),
                id,
                version: next_version,
                last_updated: now,
                deleted: true,
                json: Vec::new(),
                patient: None,
            };
            writes.resources.push(write);
            return Ok(WriteOutcome {
                status: WriteStatus::Deleted,
                version: Some(version),
            });
        }

        let (mut resource, action) = match entry.method {
            Method::Patch => {
                let Some(live) = live else {
                    return Err(match current {
                        Some(c) => RecordsError::Gone {
                            reference: format!("{ty}/{id}"),
                            version: c.version,
                        },
                        None => RecordsError::NotFound(format!("{ty}/{id}")),
                    });
                };
                (apply_patch(entry, live, ty, &id)?, AuditAction::Patch)
            }
            _ => {
                let body = entry.resource.clone().ok_or_else(|| {
                    RecordsError::BadRequest("a create or update needs a resource".into())
                })?;
                let action = if live.is_some() {
                    AuditAction::Update
                } else {
                    AuditAction::Create
                };
                (body, action)
            }
        };
        if resolve_references {
            self.rewrite_references(&mut resource, full_urls, writes)
                .await?;
        }
        set_creating_org(&mut resource, caller, live);
        let (write, stamped) = stamp(resource, ty, &id, next_version, now)?;
        if ty == "Consent"
            && let Err(e) = carelayer_policy::ConsentRule::from_json(&stamped)
        {
            // Policy must be able to read every stored choice.
            return Err(RecordsError::BusinessRule(vec![crate::Issue::error(
                "business-rule",
                Some("Consent".into()),
                format!("this Consent cannot be enforced: {e}"),
            )]));
        }
        let policy_action = if let Some(live) = live {
            // Both the version replaced and the new one must be writable
            // by the caller (a label or a patient cannot be written away).
            let before = Subject {
                resource_type: ty,
                patient: live.patient_key.as_deref(),
                resource: Body::Json(&live.json),
            };
            self.permit(caller, Action::Update, &before, &writes.resources)
                .await?;
            Action::Update
        } else {
            Action::Create
        };
        let after = Subject {
            resource_type: ty,
            patient: write.patient_key.as_deref(),
            resource: Body::Value(&stamped),
        };
        let decision = self
            .permit(caller, policy_action, &after, &writes.resources)
            .await?;
        writes.audit.push(Self::audit_record(
            caller,
            action,
            AuditOutcome::Success,
            write.patient_key.clone(),
            vec![format!("{ty}/{id}/_history/{next_version}")],
            purpose_of(&decision),
            None,
        ));
        let version = Version {
            resource_type: ty.to_owned(),
            id,
            version: next_version,
            last_updated: now,
            deleted: false,
            json: write.json.clone(),
            patient: write.patient_key.clone(),
        };
        writes.resources.push(write);
        Ok(WriteOutcome {
            status: if live.is_some() {
                WriteStatus::Updated
            } else {
                WriteStatus::Created
            },
            version: Some(version),
        })
    }

    /// Ask policy about a write; a refusal is audited (in its own append, as
    /// the write set will not commit) and fails the request.
    async fn permit(
        &self,
        caller: &Caller,
        action: Action,
        subject: &Subject<'_>,
        pending: &[ResourceWrite],
    ) -> Result<Decision, RecordsError> {
        let decision = self.decide(caller, action, subject, pending).await?;
        let (resource_type, patient) = (subject.resource_type, subject.patient);
        if let Decision::Deny { reason } = &decision {
            let audit_action = match action {
                Action::Delete => AuditAction::Delete,
                Action::Create => AuditAction::Create,
                _ => AuditAction::Update,
            };
            self.store
                .append_audit(vec![Self::audit_record(
                    caller,
                    audit_action,
                    AuditOutcome::Denied(reason.clone()),
                    patient.map(str::to_owned),
                    vec![resource_type.to_owned()],
                    "",
                    None,
                )])
                .await?;
            return Err(RecordsError::Forbidden);
        }
        Ok(decision)
    }

    /// Point references at the ids this plan assigned: `urn:uuid:` and other
    /// entry fullUrls, and conditional references (`Type?search`), which must
    /// match exactly one resource.
    async fn rewrite_references(
        &self,
        resource: &mut Value,
        full_urls: &HashMap<String, String>,
        writes: &mut WriteSet,
    ) -> Result<(), RecordsError> {
        let mut pending = Vec::new();
        collect_references(resource, &mut Vec::new(), &mut pending);
        for (path, reference) in pending {
            let replacement = if let Some(to) = full_urls.get(&reference) {
                to.clone()
            } else if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
                return Err(RecordsError::BadRequest(format!(
                    "reference '{reference}' is not the fullUrl of any entry in this Bundle"
                )));
            } else if let Some((ty, query)) = conditional_reference(&reference) {
                check_type(ty)?;
                match self
                    .conditional_matches(ty, query, writes)
                    .await?
                    .as_slice()
                {
                    [id] => format!("{ty}/{id}"),
                    [] => {
                        return Err(RecordsError::BadRequest(format!(
                            "conditional reference '{reference}' matches no resource"
                        )));
                    }
                    _ => return Err(multiple(ty, query, "reference")),
                }
            } else {
                continue;
            };
            if let Some(slot) = pointer_mut(resource, &path) {
                *slot = Value::String(replacement);
            }
        }
        Ok(())
    }
}

fn multiple(resource_type: &str, query: &str, verb: &str) -> RecordsError {
    RecordsError::MultipleMatches(format!(
        "conditional {verb} '{resource_type}?{query}' matches more than one resource"
    ))
}

/// `If-None-Exist: Patient?identifier=x` and `identifier=x` mean the same.
fn strip_type_prefix<'a>(resource_type: &str, query: &'a str) -> &'a str {
    query
        .strip_prefix(resource_type)
        .and_then(|q| q.strip_prefix('?'))
        .unwrap_or(query)
}

/// `Patient?identifier=x` → (`Patient`, `identifier=x`).
fn conditional_reference(reference: &str) -> Option<(&str, &str)> {
    let (ty, query) = reference.split_once('?')?;
    (!ty.contains('/') && !ty.contains(':')).then_some((ty, query))
}

/// Check a body against the URL: `resourceType`, and for `PUT Type/id` the id.
pub(crate) fn check_resource(
    resource: &Value,
    resource_type: &str,
    url_id: Option<Option<&str>>,
) -> Result<(), RecordsError> {
    let actual = prepare::resource_type_of(resource)?;
    if actual != resource_type {
        return Err(RecordsError::BadRequest(format!(
            "resourceType '{actual}' does not match the URL's '{resource_type}'"
        )));
    }
    if let Some(Some(id)) = url_id {
        match resource.get("id") {
            Some(Value::String(body_id)) if body_id == id => {}
            Some(Value::String(body_id)) => {
                return Err(RecordsError::BadRequest(format!(
                    "the resource's id '{body_id}' does not match the URL's '{id}'"
                )));
            }
            _ => {
                return Err(RecordsError::BadRequest(format!(
                    "an update must carry the id from the URL ('{id}') in the resource"
                )));
            }
        }
        if !is_valid_id(id) {
            return Err(RecordsError::BadRequest(format!(
                "'{id}' is not a valid FHIR id"
            )));
        }
    }
    prepare::validate(resource)?;
    Ok(())
}

fn apply_patch(
    entry: &WriteEntry,
    live: &carelayer_store::StoredResource,
    resource_type: &str,
    id: &str,
) -> Result<Value, RecordsError> {
    let patch = entry
        .patch
        .as_ref()
        .ok_or_else(|| RecordsError::BadRequest("a patch needs a JSON Patch body".into()))?;
    let mut doc: Value = serde_json::from_slice(&live.json).map_err(|e| {
        RecordsError::Store(StoreError::Other(format!("stored JSON unreadable: {e}")))
    })?;
    json_patch::patch(&mut doc, patch)
        .map_err(|e| RecordsError::BadRequest(format!("the JSON Patch cannot be applied: {e}")))?;
    if doc.get("resourceType").and_then(Value::as_str) != Some(resource_type)
        || doc.get("id").and_then(Value::as_str) != Some(id)
    {
        return Err(RecordsError::BadRequest(
            "a patch may not change the resource's type or id".into(),
        ));
    }
    prepare::validate(&doc)?;
    Ok(doc)
}

/// Every `reference` string in the resource, with its JSON path.
fn collect_references(
    value: &Value,
    path: &mut Vec<PathStep>,
    out: &mut Vec<(Vec<PathStep>, String)>,
) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                path.push(PathStep::Key(key.clone()));
                if key == "reference" {
                    if let Value::String(s) = child {
                        out.push((path.clone(), s.clone()));
                    }
                } else {
                    collect_references(child, path, out);
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(PathStep::Index(i));
                collect_references(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn pointer_mut<'a>(value: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut current = value;
    for step in path {
        current = match step {
            PathStep::Key(k) => current.get_mut(k.as_str())?,
            PathStep::Index(i) => current.get_mut(*i)?,
        };
    }
    Some(current)
}

/// Record which organisation created a resource, in a `meta.tag` of
/// [`CREATING_ORG_TAG_SYSTEM`]: `meta.security` R/V labels restrict a
/// resource to it. A practitioner's or system's organisation is stamped on
/// create and kept on update; nobody but the operator (imports carrying
/// the source system's tag) can set or change it.
fn set_creating_org(resource: &mut Value, caller: &Caller, live: Option<&StoredResource>) {
    let caller_org = match &caller.principal {
        Principal::Practitioner { org, .. } => Some(org.clone()),
        Principal::System { org, .. } => org.clone(),
        Principal::Patient { .. } | Principal::LocalOperator => None,
    };
    let is_creator_tag =
        |t: &Value| t.get("system").and_then(Value::as_str) == Some(CREATING_ORG_TAG_SYSTEM);
    let supplied = resource
        .get("meta")
        .and_then(|m| m.get("tag"))
        .and_then(Value::as_array)
        .and_then(|tags| tags.iter().find(|t| is_creator_tag(t)).cloned());
    let previous = live
        .and_then(|l| serde_json::from_slice::<Value>(&l.json).ok())
        .and_then(|v| {
            v.get("meta")?
                .get("tag")?
                .as_array()?
                .iter()
                .find(|t| is_creator_tag(t))
                .cloned()
        });
    let keep = match (&caller.principal, previous) {
        (_, Some(previous)) => Some(previous),
        (Principal::LocalOperator, None) => supplied,
        (_, None) => caller_org
            .map(|org| serde_json::json!({"system": CREATING_ORG_TAG_SYSTEM, "code": org})),
    };
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let meta = object
        .entry("meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(tags)) = meta.get_mut("tag") {
        tags.retain(|t| !is_creator_tag(t));
    }
    if let Some(tag) = keep {
        match meta.get_mut("tag") {
            Some(Value::Array(tags)) => tags.push(tag),
            _ => {
                meta.insert("tag".into(), Value::Array(vec![tag]));
            }
        }
    }
    if meta
        .get("tag")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        meta.remove("tag");
    }
    if meta.is_empty() {
        object.remove("meta");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_and_rewrites_references() {
        let mut r = json!({"subject": {"reference": "urn:uuid:1"}, "performer": [{"reference": "Practitioner?identifier=x"}]});
        let mut found = Vec::new();
        collect_references(&r, &mut Vec::new(), &mut found);
        assert_eq!(found.len(), 2);
        *pointer_mut(&mut r, &found[0].0).unwrap() = json!("Patient/abc");
        assert_eq!(r["subject"]["reference"], "Patient/abc");
        assert_eq!(
            conditional_reference("Practitioner?identifier=x"),
            Some(("Practitioner", "identifier=x"))
        );
        assert_eq!(conditional_reference("http://x/Patient?a=b"), None);
        assert_eq!(
            strip_type_prefix("Patient", "Patient?identifier=1"),
            "identifier=1"
        );
        assert_eq!(strip_type_prefix("Patient", "identifier=1"), "identifier=1");
    }
}
