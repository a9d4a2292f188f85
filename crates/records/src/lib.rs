//! The record service: the only holder of a [`Store`]. Every public method
//! takes the caller first and runs *policy → store → audit*; writes commit
//! their audit entries in the same transaction, reads append theirs before
//! returning, and a failed audit write fails the request.
//!
//! Map:
//! - [`Records`]: construction and options.
//! - `read`: read, vread.
//! - `write`: create, update, patch, delete (plain and conditional), all
//!   planned by one write planner that transactions share.
//! - `bundle`: batch and atomic transaction Bundles (urn:uuid and conditional
//!   references, all-or-nothing).
//! - `history`: instance, type and system history with `_since` and paging.
//! - `search`: FHIR search parameters → a store [`SearchQuery`].
//! - `prepare`: validation, `meta` stamping, index extraction.
//! - [`RecordsError`]: domain errors; `http` maps them to OperationOutcomes.

mod access;
mod audit_log;
mod bundle;
pub mod clock;
mod elements;
mod error;
mod everything;
mod history;
mod import;
mod include;
mod paging;
mod prepare;
mod read;
pub mod render;
mod search;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use carelayer_audit::{Agent, AuditAction, AuditOutcome, AuditRecord, Channel};
use carelayer_policy::{Decision, Principal};
use carelayer_store::{SearchQuery, Store, StoredResource};

pub use audit_log::{
    Alert, AlertKind, AuditOptions, AuditPage, AuditScope, render_alerts, render_audit_event,
    render_audit_searchset,
};
pub use bundle::{BundleKind, ReturnPreference, parse_etag, status_of};
pub use carelayer_audit::Channel as AuditChannel;
pub use error::{Issue, RecordsError, Severity};
pub use history::{HistoryPage, HistoryRequest};
pub use import::{ImportOptions, ImportRejection, ImportReport, describe_error, describe_issues};
pub use prepare::is_valid_id;
pub use search::{SearchOutcome, SearchRequest, parse_query_string, supported_search_params};
pub use write::{Conditional, WriteOutcome, WriteStatus};

/// Who is calling, and through which channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub channel: Channel,
    /// The emergency reason the caller stated (`X-Break-Glass`), if any.
    pub break_glass: Option<BreakGlass>,
}

impl Caller {
    /// The operator of this server (CLI work, or an operator token from the
    /// built-in issuer; see [`Principal::LocalOperator`]).
    #[must_use]
    pub fn local_operator(channel: Channel) -> Self {
        Self::new(Principal::LocalOperator, channel)
    }

    /// A caller without break-glass.
    #[must_use]
    pub fn new(principal: Principal, channel: Channel) -> Self {
        Self {
            principal,
            channel,
            break_glass: None,
        }
    }

    /// The same caller, stating an emergency reason.
    #[must_use]
    pub fn with_break_glass(mut self, reason: &str) -> Self {
        self.break_glass = Some(BreakGlass::new(reason));
        self
    }

    fn agent(&self) -> Agent {
        match &self.principal {
            Principal::LocalOperator => Agent {
                display: self.principal.display(),
                ..Agent::default()
            },
            Principal::Practitioner {
                user_id, role, org, ..
            } => Agent {
                user: Some(user_id.clone()),
                role: Some(role.code().to_owned()),
                org: Some(org.clone()),
                display: self.principal.display(),
                ..Agent::default()
            },
            Principal::Patient { nhs_number, .. } => Agent {
                user: Some(nhs_number.clone()),
                display: self.principal.display(),
                ..Agent::default()
            },
            Principal::System { client_id, org, .. } => Agent {
                client: Some(client_id.clone()),
                org: org.clone(),
                display: self.principal.display(),
                ..Agent::default()
            },
        }
    }
}

/// A break-glass request: the stated reason, and whether any access of
/// the request was permitted only because of it (shared between clones, so
/// the HTTP layer can mark the response after the records call).
#[derive(Debug, Clone)]
pub struct BreakGlass {
    reason: String,
    used: Arc<AtomicBool>,
}

impl BreakGlass {
    #[must_use]
    pub fn new(reason: &str) -> Self {
        Self {
            reason: reason.trim().to_owned(),
            used: Arc::new(AtomicBool::new(false)),
        }
    }

    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Did policy permit something only because of the broken glass?
    #[must_use]
    pub fn was_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_used(&self) {
        self.used.store(true, Ordering::Relaxed);
    }
}

impl PartialEq for BreakGlass {
    fn eq(&self, other: &Self) -> bool {
        self.reason == other.reason
    }
}

impl Eq for BreakGlass {}

/// One stored version as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// Microseconds since the Unix epoch.
    pub last_updated: i64,
    pub deleted: bool,
    /// Compact JSON of the resource (empty for a deletion).
    pub json: Vec<u8>,
    /// The patient this resource belongs to (Patient compartment owner).
    pub patient: Option<String>,
}

impl From<StoredResource> for Version {
    fn from(s: StoredResource) -> Self {
        Self {
            resource_type: s.resource_type,
            id: s.id,
            version: s.version,
            last_updated: s.last_updated,
            deleted: s.deleted,
            json: s.json,
            patient: s.patient_key,
        }
    }
}

/// Limits and defaults an operator can set.
#[derive(Debug, Clone)]
pub struct RecordsOptions {
    /// Most entries accepted in one batch or transaction Bundle.
    pub max_bundle_entries: usize,
    /// `_count` when a search or history request gives none.
    pub default_page_size: usize,
    /// Largest `_count` honoured (larger values are clamped).
    pub max_page_size: usize,
    /// How often a write is re-planned when concurrent writers invalidated it.
    pub conflict_retries: usize,
    /// The audit ledger: checkpoints, alerts and the bench-only read switch.
    pub audit: AuditOptions,
    /// Most resources `_include`/`_revinclude` add to one page; beyond it the
    /// page carries an OperationOutcome entry saying the set is incomplete.
    pub max_includes: usize,
    /// Most matches pinned for stable paging of one search (see `paging`).
    pub search_snapshot_max: usize,
    /// Most pinned result sets kept at once (oldest evicted).
    pub search_snapshots: usize,
    /// How long after an encounter or episode of care ends it still counts
    /// as a legitimate relationship between its organisation and the patient.
    pub relationship_window: std::time::Duration,
    /// Patients whose access facts are cached (0: no cache; required when
    /// several servers share one PostgreSQL database, see `access`).
    pub facts_cache_entries: usize,
}

impl Default for RecordsOptions {
    fn default() -> Self {
        Self {
            max_bundle_entries: 10_000,
            default_page_size: 50,
            max_page_size: 1_000,
            conflict_retries: 5,
            audit: AuditOptions::default(),
            max_includes: 1_000,
            search_snapshot_max: 10_000,
            search_snapshots: 256,
            relationship_window: std::time::Duration::from_secs(30 * 24 * 3600),
            facts_cache_entries: 100_000,
        }
    }
}

/// The record service.
pub struct Records {
    store: Arc<dyn Store>,
    options: RecordsOptions,
    /// Pinned result sets of multi-page searches.
    snapshots: paging::SnapshotCache,
    /// Patient facts for policy decisions.
    facts: access::FactsCache,
    /// Whether reads are audited: `options.audit.audit_reads` at start;
    /// switched only by the bench (see [`Records::set_audit_reads`]).
    audit_reads: std::sync::atomic::AtomicBool,
}

impl Records {
    #[must_use]
    pub fn new(store: Arc<dyn Store>, options: RecordsOptions) -> Self {
        Self {
            store,
            facts: access::FactsCache::new(options.facts_cache_entries),
            audit_reads: std::sync::atomic::AtomicBool::new(options.audit.audit_reads),
            options,
            snapshots: paging::SnapshotCache::default(),
        }
    }

    #[must_use]
    pub fn options(&self) -> &RecordsOptions {
        &self.options
    }

    /// Resource types this server stores (every concrete R4 resource type).
    #[must_use]
    pub fn resource_types(&self) -> Vec<&'static str> {
        carelayer_fhir::definitions::r4().resource_types().collect()
    }

    /// Check a resource as a write would, without storing it (`$validate`).
    /// Returns the warnings of a valid resource.
    ///
    /// # Errors
    /// The same errors a create would give for this body.
    pub fn validate(
        &self,
        _caller: &Caller,
        resource_type: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<Issue>, RecordsError> {
        let resource = prepare::parse_body(body)?;
        let actual = prepare::resource_type_of(&resource)?;
        prepare::check_type(actual)?;
        if let Some(expected) = resource_type
            && expected != actual
        {
            return Err(RecordsError::BadRequest(format!(
                "resourceType '{actual}' does not match the URL's '{expected}'"
            )));
        }
        prepare::validate(&resource)
    }

    /// Flush and stop the store (server shutdown).
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// An audit record for this caller.
    fn audit_record(
        caller: &Caller,
        action: AuditAction,
        outcome: AuditOutcome,
        patient: Option<String>,
        resources: Vec<String>,
        purpose: &str,
        detail: Option<String>,
    ) -> AuditRecord {
        AuditRecord {
            recorded_at: clock::now_micros(),
            action,
            outcome,
            agent: caller.agent(),
            patient,
            resources,
            purpose: purpose.to_owned(),
            channel: caller.channel,
            detail,
        }
    }

    /// Run a search query against the store (no policy, no audit: callers
    /// filter and audit the hits they disclose).
    async fn run_query(
        &self,
        query: &SearchQuery,
    ) -> Result<carelayer_store::SearchPage, RecordsError> {
        Ok(self.store.search(query).await?)
    }
}

fn purpose_of(decision: &Decision) -> &str {
    match decision {
        Decision::Permit { purpose, .. } => purpose,
        Decision::Deny { .. } => "",
    }
}

/// Percent-encode a query component.
#[must_use]
pub fn encode_query_component(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const QUERY: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b':')
        .remove(b'/');
    utf8_percent_encode(s, QUERY).to_string()
}

/// `?a=1&b=2`, or nothing when there are no parameters.
fn query_suffix(params: &[(String, String)]) -> String {
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", query_string(params))
    }
}

fn query_string(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                encode_query_component(k),
                encode_query_component(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A searchset Bundle for one page of results, with `self`, `next` and
/// `previous` links; included resources as `search.mode = include` and
/// warnings as an OperationOutcome entry (`search.mode = outcome`).
#[must_use]
pub fn render_searchset(
    outcome: &SearchOutcome,
    request: &SearchRequest,
    base_url: &str,
) -> Vec<u8> {
    let path = match (&outcome.path, &request.resource_type) {
        (Some(p), _) => format!("{base_url}/{p}"),
        (None, Some(ty)) => format!("{base_url}/{ty}"),
        (None, None) => base_url.to_owned(),
    };
    let paging = |offset: usize| {
        let mut params: Vec<(String, String)> = outcome
            .applied
            .iter()
            .filter(|(k, _)| k != "_count")
            .cloned()
            .collect();
        params.push(("_count".into(), outcome.count.to_string()));
        params.push(("_offset".into(), offset.to_string()));
        params.push(("_snapshot".into(), outcome.snapshot_seq.to_string()));
        if let Some(t) = &outcome.page_token {
            params.push(("_page".into(), t.clone()));
        }
        params
    };
    let self_params = if outcome.offset > 0 {
        paging(outcome.offset)
    } else {
        outcome.applied.clone()
    };
    let mut links = vec![("self", format!("{path}{}", query_suffix(&self_params)))];
    if let Some(next) = outcome.next_offset {
        links.push(("next", format!("{path}?{}", query_string(&paging(next)))));
    }
    if outcome.offset > 0 {
        let prev = outcome.offset.saturating_sub(outcome.count);
        links.push((
            "previous",
            format!("{path}?{}", query_string(&paging(prev))),
        ));
    }
    let mut bundle = render::BundleBuilder::new("searchset", outcome.total, &links);
    // Each entry adds its resource plus about a hundred bytes of wrapping.
    bundle.reserve(
        outcome
            .matches
            .iter()
            .chain(&outcome.included)
            .map(|v| v.json.len() + base_url.len() + 100)
            .sum(),
    );
    let search = serde_json::json!({"mode": "match"});
    for v in &outcome.matches {
        bundle.entry(
            Some(&render::full_url(base_url, v)),
            Some(&v.json),
            &[("search", search.clone())],
        );
    }
    let include = serde_json::json!({"mode": "include"});
    for v in &outcome.included {
        bundle.entry(
            Some(&render::full_url(base_url, v)),
            Some(&v.json),
            &[("search", include.clone())],
        );
    }
    if !outcome.warnings.is_empty() || !outcome.ignored.is_empty() {
        let mut issues: Vec<serde_json::Value> = outcome
            .warnings
            .iter()
            .map(|w| serde_json::json!({"severity": "warning", "code": "too-costly", "diagnostics": w}))
            .collect();
        for name in &outcome.ignored {
            issues.push(serde_json::json!({
                "severity": "warning",
                "code": "not-supported",
                "diagnostics": format!("search parameter '{name}' was ignored (Prefer: handling=lenient)")
            }));
        }
        let oo = serde_json::json!({"resourceType": "OperationOutcome", "issue": issues});
        if let Ok(bytes) = serde_json::to_vec(&oo) {
            bundle.entry(
                None,
                Some(&bytes),
                &[("search", serde_json::json!({"mode": "outcome"}))],
            );
        }
    }
    bundle.finish()
}

/// A history Bundle for one page, newest first, with `self` and `next` links.
/// `path` is the history URL below the base (`Patient/1/_history`, `_history`).
#[must_use]
pub fn render_history(
    page: &HistoryPage,
    base_url: &str,
    path: &str,
    params: &[(String, String)],
) -> Vec<u8> {
    let here = format!("{base_url}/{}", path.trim_start_matches('/'));
    let kept: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "_page")
        .cloned()
        .collect();
    let mut links = vec![("self", format!("{here}{}", query_suffix(params)))];
    if let Some(cursor) = page.next_before_seq {
        let mut next = kept.clone();
        next.push(("_page".into(), cursor.to_string()));
        links.push(("next", format!("{here}?{}", query_string(&next))));
    }
    let mut bundle = render::BundleBuilder::new("history", None, &links);
    for v in &page.versions {
        let (method, url, status) = if v.deleted {
            (
                "DELETE",
                format!("{}/{}", v.resource_type, v.id),
                "204 No Content",
            )
        } else if v.version == 1 {
            ("POST", v.resource_type.clone(), "201 Created")
        } else {
            ("PUT", format!("{}/{}", v.resource_type, v.id), "200 OK")
        };
        bundle.entry(
            Some(&render::full_url(base_url, v)),
            (!v.deleted).then_some(v.json.as_slice()),
            &[
                ("request", serde_json::json!({"method": method, "url": url})),
                (
                    "response",
                    serde_json::json!({
                        "status": status,
                        "etag": render::etag(v.version),
                        "lastModified": clock::format_instant(v.last_updated),
                    }),
                ),
            ],
        );
    }
    bundle.finish()
}
