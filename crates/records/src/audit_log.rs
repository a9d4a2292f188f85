//! The audit ledger through the record service: the patient's access log
//! (`AuditEvent` search and read, rendered IHE BALP-style), who may see which
//! entries, privacy-officer alerts, signed checkpoints and verification.
//!
//! `AuditEvent` is a read-only type here: every event is served from the
//! ledger (`id` = ledger seq), and writes of `AuditEvent` through the API are
//! refused, so the log cannot be forged or edited through the front door.
//!
//! # Who sees what ([`AuditScope::of`])
//!
//! | caller                                        | sees |
//! |-----------------------------------------------|------|
//! | local operator (in-process, shell access)     | everything |
//! | patient                                       | exactly the entries about themselves |
//! | privacy officer / Caldicott Guardian          | entries by their organisation's staff and systems |
//! | system client with an explicit `AuditEvent` read/search scope | its organisation's entries (all, if it has none) |
//! | anyone else                                   | nothing (403, and the refusal is audited) |
//!
//! Looking at the log is itself audited (action `search`/`read`, resources
//! `AuditEvent`), without a patient: it is not an access to the record, so it
//! does not clutter the patient's own "who accessed my record" view.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use carelayer_audit::{
    AuditAction, AuditOutcome, AuditRecord, ChainHead, Checkpoint, LedgerRow, SigningKey, Verifier,
    VerifyReport, VerifyingKey, balp, sign_checkpoint, to_audit_event,
};
use carelayer_policy::{Permission, Principal, ScopeContext};
use carelayer_store::{AuditQuery, Clause, IndexTest, OutcomeClass, Predicate, SearchQuery};
use serde_json::{Value, json};

use crate::{Caller, Records, RecordsError, clock, query_string, render};

/// The NHS number identifier system.
const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// Audit settings of the record service.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// **Bench only** (`carelayer bench` measures audit overhead with it):
    /// when false, reads, vreads, history and searches are served without
    /// an audit entry. Never turn it off in a real deployment: an
    /// unaudited read breaks the promise that every access is visible to
    /// the patient. Writes and denials are always audited.
    pub audit_reads: bool,
    /// Sign a checkpoint once this many entries follow the last one.
    pub checkpoint_every: u64,
    /// …or once this much time has passed with new entries.
    pub checkpoint_interval: Duration,
    /// Where the server's checkpoint signing key lives when the database is
    /// not a file (PostgreSQL); for SQLite it sits next to the database.
    pub key_dir: Option<PathBuf>,
    /// Alert when one agent reads more than this many distinct patients…
    pub alert_patients: usize,
    /// …within this window.
    pub alert_window: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            audit_reads: true,
            checkpoint_every: 100_000,
            checkpoint_interval: Duration::from_secs(60),
            key_dir: None,
            alert_patients: 50,
            alert_window: Duration::from_secs(3_600),
        }
    }
}

/// Which ledger entries a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditScope {
    /// Every entry.
    All,
    /// Entries about this patient (their Patient id), or none when they
    /// have no Patient resource here.
    Patient(Option<String>),
    /// Entries whose acting agent belongs to this organisation (ODS code).
    Organisation(String),
    /// Nothing: the caller may not read the audit log.
    Nothing,
}

impl AuditScope {
    /// The rule in the module docs, as a function of the principal. A patient
    /// token that names no Patient id is resolved by NHS number in
    /// [`Records::audit_scope`].
    #[must_use]
    pub fn of(principal: &Principal) -> Self {
        match principal {
            Principal::LocalOperator => Self::All,
            Principal::Patient { patient_id, .. } => Self::Patient(patient_id.clone()),
            Principal::Practitioner { role, org, .. } => {
                if role.has(Permission::ReviewAlerts) {
                    Self::Organisation(org.clone())
                } else {
                    Self::Nothing
                }
            }
            Principal::System { scopes, org, .. } => {
                // Only an explicit AuditEvent scope: `system/*.rs` is for
                // clinical data, not the national access log.
                let explicit = scopes.iter().any(|s| {
                    s.context == ScopeContext::System
                        && s.resource_type.as_deref() == Some("AuditEvent")
                        && (s.read || s.search)
                });
                match (explicit, org) {
                    (false, _) => Self::Nothing,
                    (true, Some(org)) => Self::Organisation(org.clone()),
                    (true, None) => Self::All,
                }
            }
        }
    }

    /// Narrow a query to this scope; `None` when nothing can match.
    fn restrict(&self, mut q: AuditQuery) -> Option<AuditQuery> {
        match self {
            Self::All => Some(q),
            Self::Nothing | Self::Patient(None) => None,
            Self::Patient(Some(id)) => {
                if q.patient.as_ref().is_some_and(|p| p != id) {
                    return None;
                }
                q.patient = Some(id.clone());
                Some(q)
            }
            Self::Organisation(org) => {
                if q.org.as_ref().is_some_and(|o| o != org) {
                    return None;
                }
                q.org = Some(org.clone());
                Some(q)
            }
        }
    }
}

/// One page of the access log, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    pub rows: Vec<LedgerRow>,
    /// The `_page` cursor of the next page, when there is one.
    pub next_before_seq: Option<i64>,
    /// The parameters applied (for the `self` and `next` links).
    pub applied: Vec<(String, String)>,
}

/// What a privacy officer is alerted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertKind {
    /// Emergency override ("break-glass") for a patient.
    BreakGlass,
    /// One agent read more distinct patients than the threshold in the window.
    UnusualVolume { patients: usize, window_secs: u64 },
}

/// One alert, with the ledger entries behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub kind: AlertKind,
    /// The first entry's time (microseconds since the Unix epoch).
    pub at: i64,
    pub agent: carelayer_audit::Agent,
    /// The patient (break-glass alerts).
    pub patient: Option<String>,
    /// The stated reason (break-glass alerts).
    pub reason: Option<String>,
    /// Ledger seqs of the entries behind the alert, ascending.
    pub entries: Vec<i64>,
}

/// Largest page of the access log.
const MAX_AUDIT_PAGE: usize = 1_000;
/// Rows per page when walking the ledger for verification or alerts.
const WALK_PAGE: usize = 5_000;
/// Most entries scanned for the unusual-volume alert in one request.
const MAX_ALERT_SCAN: usize = 200_000;

/// Read actions: the accesses the unusual-volume alert counts.
const READ_ACTIONS: [AuditAction; 5] = [
    AuditAction::Read,
    AuditAction::Vread,
    AuditAction::History,
    AuditAction::Search,
    AuditAction::Everything,
];

impl Records {
    /// **Bench only**: switch read auditing on or off while serving, so
    /// `carelayer bench --audit-compare` can alternate the two in one
    /// process over one warm database (see [`AuditOptions::audit_reads`]
    /// for why a real deployment never turns it off).
    pub fn set_audit_reads(&self, on: bool) {
        self.audit_reads
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Append audit entries for a read-like access, unless read auditing is
    /// switched off for a benchmark (see [`AuditOptions::audit_reads`]).
    pub(crate) async fn append_read_audit(
        &self,
        records: Vec<AuditRecord>,
    ) -> Result<(), RecordsError> {
        let records = if self.audit_reads.load(std::sync::atomic::Ordering::Relaxed) {
            records
        } else {
            // Denials are always audited, even in a benchmark.
            records
                .into_iter()
                .filter(|r| r.outcome != AuditOutcome::Success)
                .collect()
        };
        if !records.is_empty() {
            self.store.append_audit(records).await?;
        }
        Ok(())
    }

    /// The caller's audit scope, resolving a patient by NHS number when the
    /// token names no Patient id.
    async fn audit_scope(&self, caller: &Caller) -> Result<AuditScope, RecordsError> {
        let scope = AuditScope::of(&caller.principal);
        if let (AuditScope::Patient(None), Principal::Patient { nhs_number, .. }) =
            (&scope, &caller.principal)
        {
            // Built directly (not via FHIR search parsing): resolving who the
            // caller is must not itself be a disclosure in their log.
            let query = SearchQuery {
                resource_types: vec!["Patient".into()],
                clauses: vec![Clause {
                    any_of: vec![Predicate::Index {
                        param: "identifier".into(),
                        test: IndexTest::Token {
                            system: Some(Some(NHS_NUMBER_SYSTEM.into())),
                            code: nhs_number.clone(),
                        },
                    }],
                }],
                count: 2,
                ..SearchQuery::default()
            };
            let page = self.run_query(&query).await?;
            // Exactly one Patient, or the identity is ambiguous: show nothing.
            if let [only] = page.matches.as_slice() {
                return Ok(AuditScope::Patient(Some(only.id.clone())));
            }
        }
        Ok(scope)
    }

    /// Audit a look at the audit log itself, then refuse if out of scope.
    async fn audit_log_access(
        &self,
        caller: &Caller,
        action: AuditAction,
        resource: String,
        detail: String,
        allowed: bool,
    ) -> Result<(), RecordsError> {
        let outcome = if allowed {
            AuditOutcome::Success
        } else {
            AuditOutcome::Denied("the caller may not read the audit log".into())
        };
        let record = Self::audit_record(
            caller,
            action,
            outcome,
            None,
            vec![resource],
            if allowed { "audit review" } else { "" },
            Some(detail),
        );
        self.store.append_audit(vec![record]).await?;
        if allowed {
            Ok(())
        } else {
            Err(RecordsError::Forbidden)
        }
    }

    /// `AuditEvent?patient=&date=&agent=&action=&outcome=&_count=&_page=`:
    /// the caller's visible entries, newest first.
    ///
    /// # Errors
    /// `BadRequest` for unknown parameters (unless lenient) or bad values,
    /// `Forbidden` for callers who may not read the audit log, store errors.
    pub async fn audit_search(
        &self,
        caller: &Caller,
        params: &[(String, String)],
        lenient: bool,
    ) -> Result<AuditPage, RecordsError> {
        let (query, applied) = parse_audit_params(
            params,
            lenient,
            self.options.default_page_size,
            self.options.max_page_size.min(MAX_AUDIT_PAGE),
        )?;
        let scope = self.audit_scope(caller).await?;
        let detail = format!("AuditEvent?{}", query_string(params));
        self.audit_log_access(
            caller,
            AuditAction::Search,
            "AuditEvent".into(),
            detail,
            scope != AuditScope::Nothing,
        )
        .await?;
        let limit = query.limit;
        let Some(query) = scope.restrict(query) else {
            return Ok(AuditPage {
                rows: Vec::new(),
                next_before_seq: None,
                applied,
            });
        };
        let mut rows = self
            .store
            .audit_search(&AuditQuery {
                // One extra row tells whether a next page exists.
                limit: limit + 1,
                ..query
            })
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_before_seq = if more {
            rows.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(AuditPage {
            rows,
            next_before_seq,
            applied,
        })
    }

    /// `AuditEvent/{seq}`: one entry, if the caller may see it.
    ///
    /// # Errors
    /// `NotFound` when absent or outside the caller's scope, `Forbidden`
    /// for callers who may not read the audit log, store errors.
    pub async fn audit_event(&self, caller: &Caller, id: &str) -> Result<LedgerRow, RecordsError> {
        let scope = self.audit_scope(caller).await?;
        let reference = format!("AuditEvent/{id}");
        self.audit_log_access(
            caller,
            AuditAction::Read,
            reference.clone(),
            reference.clone(),
            scope != AuditScope::Nothing,
        )
        .await?;
        let seq = id
            .parse::<i64>()
            .ok()
            .filter(|s| *s > 0 && id.bytes().all(|b| b.is_ascii_digit()));
        let query = seq.and_then(|seq| {
            scope.restrict(AuditQuery {
                before_seq: Some(seq.saturating_add(1)),
                limit: 1,
                ..AuditQuery::default()
            })
        });
        let Some(query) = query else {
            return Err(RecordsError::NotFound(reference));
        };
        let rows = self.store.audit_search(&query).await?;
        match rows.into_iter().next() {
            Some(row) if Some(row.seq) == seq => Ok(row),
            _ => Err(RecordsError::NotFound(reference)),
        }
    }

    /// Privacy-officer alerts visible to the caller since `since`
    /// (microseconds; default: one alert window ago): break-glass per agent
    /// and patient, and agents who read more than `threshold` distinct
    /// patients within `window` (defaults from [`AuditOptions`]).
    ///
    /// "Unrelated" patients are approximated by "distinct": the ledger does
    /// not record legitimate relationships, so an officer reviews the list.
    ///
    /// # Errors
    /// `Forbidden` unless the caller may review alerts (operator, privacy
    /// officer, Caldicott Guardian, an audit-scoped system); store errors.
    pub async fn audit_alerts(
        &self,
        caller: &Caller,
        since: Option<i64>,
        threshold: Option<usize>,
        window: Option<Duration>,
    ) -> Result<Vec<Alert>, RecordsError> {
        let scope = AuditScope::of(&caller.principal);
        let allowed = matches!(scope, AuditScope::All | AuditScope::Organisation(_));
        self.audit_log_access(
            caller,
            AuditAction::Search,
            "AuditEvent/$alerts".into(),
            "AuditEvent/$alerts".into(),
            allowed,
        )
        .await?;
        let window = window.unwrap_or(self.options.audit.alert_window);
        let window_us = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
        let threshold = threshold.unwrap_or(self.options.audit.alert_patients);
        let now = clock::now_micros();
        let from = since.unwrap_or_else(|| now.saturating_sub(window_us));
        let base = scope
            .restrict(AuditQuery {
                from: Some(from),
                ..AuditQuery::default()
            })
            .ok_or(RecordsError::Forbidden)?;

        let mut alerts = Vec::new();
        // Break-glass: one alert per (agent, patient).
        let glass = self
            .walk(AuditQuery {
                break_glass: Some(true),
                ..base.clone()
            })
            .await?;
        let mut by_pair: BTreeMap<(String, Option<String>), Vec<LedgerRow>> = BTreeMap::new();
        for row in glass {
            by_pair
                .entry((agent_key(&row.record), row.record.patient.clone()))
                .or_default()
                .push(row);
        }
        for ((_, patient), mut rows) in by_pair {
            rows.sort_by_key(|r| r.seq);
            let first = &rows[0].record;
            alerts.push(Alert {
                kind: AlertKind::BreakGlass,
                at: first.recorded_at,
                agent: first.agent.clone(),
                patient,
                reason: rows
                    .iter()
                    .find_map(|r| r.record.break_glass_reason().map(str::to_owned)),
                entries: rows.iter().map(|r| r.seq).collect(),
            });
        }

        // Unusual volume: distinct patients per agent in any window-long span.
        let reads = self
            .walk(AuditQuery {
                actions: READ_ACTIONS.to_vec(),
                outcomes: vec![OutcomeClass::Success],
                ..base
            })
            .await?;
        let mut by_agent: BTreeMap<String, Vec<LedgerRow>> = BTreeMap::new();
        for row in reads {
            if row.record.patient.is_some() {
                by_agent
                    .entry(agent_key(&row.record))
                    .or_default()
                    .push(row);
            }
        }
        for rows in by_agent.into_values() {
            if let Some(alert) = volume_alert(rows, threshold, window_us) {
                alerts.push(alert);
            }
        }
        alerts.sort_by_key(|a| a.entries.first().copied().unwrap_or(0));
        Ok(alerts)
    }

    /// Every row matching `q` (newest first), up to [`MAX_ALERT_SCAN`].
    async fn walk(&self, q: AuditQuery) -> Result<Vec<LedgerRow>, RecordsError> {
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .store
                .audit_search(&AuditQuery {
                    before_seq: before,
                    limit: WALK_PAGE,
                    ..q.clone()
                })
                .await?;
            let done = page.len() < WALK_PAGE;
            before = page.last().map(|r| r.seq);
            out.extend(page);
            if done || out.len() >= MAX_ALERT_SCAN {
                return Ok(out);
            }
        }
    }

    /// The ledger's committed head.
    ///
    /// # Errors
    /// Store errors.
    pub async fn audit_head(&self) -> Result<ChainHead, RecordsError> {
        Ok(self.store.audit_head().await?)
    }

    /// The seq of the last audit entry appended, committed to the ledger
    /// table or still deferred (see
    /// [`carelayer_store::Store::audit_appended_seq`]): what the
    /// checkpoint signer polls, without forcing deferred entries out.
    ///
    /// # Errors
    /// Store errors.
    pub async fn audit_appended_seq(&self) -> Result<i64, RecordsError> {
        Ok(self.store.audit_appended_seq().await?)
    }

    /// Every checkpoint kept in the store, ascending.
    ///
    /// # Errors
    /// Store errors.
    pub async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, RecordsError> {
        Ok(self.store.checkpoints().await?)
    }

    /// Sign the committed head with `key` and keep the checkpoint, unless
    /// the newest kept checkpoint by this key already covers it. Returns the
    /// new checkpoint.
    ///
    /// # Errors
    /// Store errors.
    pub async fn audit_checkpoint(
        &self,
        key: &SigningKey,
    ) -> Result<Option<Checkpoint>, RecordsError> {
        let head = self.store.audit_head().await?;
        let key_id = carelayer_audit::key_id(&key.verifying_key());
        let covered = self
            .store
            .checkpoints()
            .await?
            .iter()
            .filter(|c| c.key_id == key_id)
            .any(|c| c.seq >= head.seq);
        if covered {
            return Ok(None);
        }
        let cp = sign_checkpoint(key, head.seq, head.hash, clock::now_micros());
        self.store.save_checkpoint(&cp).await?;
        Ok(Some(cp))
    }

    /// Re-walk the whole ledger, page by page, against the kept checkpoints
    /// plus `extra` (e.g. an exported file), trusting checkpoints signed by
    /// `trusted_keys`. Names the first entry altered, deleted, inserted or
    /// reordered, and truncation after the last checkpoint. Stored bytes that
    /// no longer decode count as an altered entry.
    ///
    /// Reads only: verifying must not itself change the ledger.
    ///
    /// # Errors
    /// `Forbidden` for callers who may not see the whole ledger; store errors.
    pub async fn verify_audit(
        &self,
        caller: &Caller,
        extra: &[Checkpoint],
        trusted_keys: &[VerifyingKey],
    ) -> Result<VerifyReport, RecordsError> {
        if AuditScope::of(&caller.principal) != AuditScope::All {
            return Err(RecordsError::Forbidden);
        }
        let mut checkpoints = self.store.checkpoints().await?;
        checkpoints.extend_from_slice(extra);
        let mut verifier = Verifier::new(&checkpoints, trusted_keys);
        let mut after = 0;
        loop {
            let page = self.store.audit_raw_rows(after, WALK_PAGE).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.seq;
            for raw in page {
                if let Err(tamper) = verifier.push(ledger_row(raw)) {
                    return Ok(VerifyReport {
                        summary: verifier.summary(),
                        tamper: Some(tamper),
                    });
                }
            }
        }
        let summary = verifier.summary();
        Ok(match verifier.finish() {
            Ok(summary) => VerifyReport {
                summary,
                tamper: None,
            },
            Err(tamper) => VerifyReport {
                summary,
                tamper: Some(tamper),
            },
        })
    }
}

/// A raw row as the verifier sees it. Undecodable bytes become a placeholder
/// record that cannot match the stored hash, so the verifier classifies the
/// entry like any other broken link (altered, or inserted if the chain
/// continues around it).
fn ledger_row(raw: carelayer_store::RawLedgerRow) -> LedgerRow {
    let hash: [u8; 32] = raw.hash.as_slice().try_into().unwrap_or([0; 32]);
    let record = carelayer_audit::decode(&raw.record).unwrap_or_else(|e| AuditRecord {
        recorded_at: 0,
        action: AuditAction::Read,
        outcome: AuditOutcome::Failed(format!("undecodable stored entry: {e}")),
        agent: carelayer_audit::Agent::default(),
        patient: None,
        resources: vec![hex_of(&raw.record)],
        purpose: String::new(),
        channel: carelayer_audit::Channel::Rest,
        detail: None,
    });
    LedgerRow {
        seq: raw.seq,
        record,
        hash,
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who acted, as one grouping key (user, else client, else display).
fn agent_key(r: &AuditRecord) -> String {
    r.agent
        .user
        .clone()
        .or_else(|| r.agent.client.clone())
        .unwrap_or_else(|| r.agent.display.clone())
}

/// The first window-long span (a sliding window over the agent's reads in
/// time order) in which the agent touched more than `threshold` distinct
/// patients; the alert lists that span's entries.
fn volume_alert(mut rows: Vec<LedgerRow>, threshold: usize, window_us: i64) -> Option<Alert> {
    rows.sort_by_key(|r| (r.record.recorded_at, r.seq));
    let mut start = 0;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for end in 0..rows.len() {
        let p = rows[end].record.patient.as_deref().unwrap_or_default();
        *counts.entry(p).or_default() += 1;
        while rows[end].record.recorded_at - rows[start].record.recorded_at >= window_us {
            let q = rows[start].record.patient.as_deref().unwrap_or_default();
            if let Some(n) = counts.get_mut(q) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(q);
                }
            }
            start += 1;
        }
        if counts.len() > threshold {
            let span = &rows[start..=end];
            let patients: BTreeSet<&str> = span
                .iter()
                .filter_map(|r| r.record.patient.as_deref())
                .collect();
            return Some(Alert {
                kind: AlertKind::UnusualVolume {
                    patients: patients.len(),
                    window_secs: u64::try_from(window_us / 1_000_000).unwrap_or(0),
                },
                at: span[0].record.recorded_at,
                agent: span[0].record.agent.clone(),
                patient: None,
                reason: None,
                entries: {
                    let mut seqs: Vec<i64> = span.iter().map(|r| r.seq).collect();
                    seqs.sort_unstable();
                    seqs
                },
            });
        }
    }
    None
}

/// Parse `AuditEvent` search parameters into a ledger query and the applied
/// parameters (for links).
fn parse_audit_params(
    params: &[(String, String)],
    lenient: bool,
    default_count: usize,
    max_count: usize,
) -> Result<(AuditQuery, Vec<(String, String)>), RecordsError> {
    let bad = |m: String| RecordsError::BadRequest(m);
    let mut q = AuditQuery {
        limit: default_count.min(max_count),
        ..AuditQuery::default()
    };
    let mut applied = Vec::new();
    let mut actions: Option<BTreeSet<&'static str>> = None;
    let mut outcomes: Option<BTreeSet<&'static str>> = None;
    for (name, value) in params {
        let keep = match name.as_str() {
            "patient" | "patient:Patient" | "entity" => {
                let id = value
                    .trim_end_matches('/')
                    .rsplit("Patient/")
                    .next()
                    .unwrap_or(value)
                    .trim();
                if id.is_empty() || id.contains('/') {
                    return Err(bad(format!("patient={value}: expected Patient/id or id")));
                }
                if q.patient.as_deref().is_some_and(|p| p != id) {
                    // Two different patients ANDed: nothing matches.
                    q.limit = 0;
                }
                q.patient = Some(id.to_owned());
                true
            }
            "agent" | "altid" => {
                let v = value.rsplit('|').next().unwrap_or(value);
                let v = v.rsplit('/').next().unwrap_or(v).trim();
                if v.is_empty() {
                    return Err(bad(format!("{name}={value}: empty agent")));
                }
                q.agent = Some(v.to_owned());
                true
            }
            "date" => {
                apply_date(&mut q, value)?;
                true
            }
            "action" | "subtype" => {
                let mut set = BTreeSet::new();
                for v in value.split(',') {
                    let v = v.rsplit('|').next().unwrap_or(v).trim();
                    let found = actions_for(v);
                    if found.is_empty() {
                        return Err(bad(format!(
                            "{name}={v}: expected C, R, U, D, E or a ledger action \
                             (read, search, create, break-glass-start, …)"
                        )));
                    }
                    set.extend(found.into_iter().map(AuditAction::as_str));
                }
                actions = Some(match actions {
                    Some(prev) => prev.intersection(&set).copied().collect(),
                    None => set,
                });
                true
            }
            "outcome" => {
                let mut set = BTreeSet::new();
                for v in value.split(',') {
                    let v = v.rsplit('|').next().unwrap_or(v).trim();
                    match v {
                        // BALP renders denied and failed alike as 4.
                        "0" | "success" => {
                            set.insert("success");
                        }
                        "4" => {
                            set.insert("denied");
                            set.insert("failed");
                        }
                        "denied" | "failed" => {
                            set.insert(if v == "denied" { "denied" } else { "failed" });
                        }
                        // Never rendered: valid codes that match nothing.
                        "8" | "12" => {}
                        _ => {
                            return Err(bad(format!(
                                "outcome={v}: expected 0, 4, 8, 12, success, denied or failed"
                            )));
                        }
                    }
                }
                outcomes = Some(match outcomes {
                    Some(prev) => prev.intersection(&set).copied().collect(),
                    None => set,
                });
                true
            }
            "_count" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad(format!("_count={value}: expected a number")))?;
                q.limit = n.min(max_count);
                false
            }
            "_page" => {
                let cursor: i64 = value
                    .parse()
                    .map_err(|_| bad(format!("_page={value}: not a paging cursor")))?;
                q.before_seq = Some(cursor);
                false
            }
            "_format" | "_pretty" | "_total" => false,
            other if lenient => {
                tracing::debug!(parameter = other, "ignoring AuditEvent search parameter");
                false
            }
            other => {
                return Err(bad(format!(
                    "unknown AuditEvent search parameter '{other}': this server supports \
                     patient, date, agent, action, outcome, _count and _page"
                )));
            }
        };
        if keep {
            applied.push((name.clone(), value.clone()));
        }
    }
    if let Some(set) = actions {
        if set.is_empty() {
            q.limit = 0;
        }
        // Declaration order, for stable queries.
        q.actions = AuditAction::ALL
            .into_iter()
            .filter(|a| set.contains(a.as_str()))
            .collect();
    }
    if let Some(set) = outcomes {
        if set.is_empty() {
            q.limit = 0;
        }
        q.outcomes = set
            .into_iter()
            .map(|o| match o {
                "success" => OutcomeClass::Success,
                "denied" => OutcomeClass::Denied,
                _ => OutcomeClass::Failed,
            })
            .collect();
    }
    applied.push(("_count".into(), q.limit.to_string()));
    Ok((q, applied))
}

/// The ledger actions an `action` value names: a BALP action code (as
/// `to_audit_event` renders them) or a ledger action name.
fn actions_for(v: &str) -> Vec<AuditAction> {
    use AuditAction::*;
    match v {
        "C" => vec![Create, Import],
        "R" => vec![Read, Vread, History, Disclose],
        "U" => vec![Update, Patch],
        "D" => vec![Delete],
        "E" => vec![
            Search,
            Everything,
            Transaction,
            Batch,
            TokenIssue,
            BreakGlassStart,
            BreakGlassStop,
        ],
        other => AuditAction::from_name(other).into_iter().collect(),
    }
}

/// Apply one `date` parameter (prefix + FHIR date) to the time range.
fn apply_date(q: &mut AuditQuery, value: &str) -> Result<(), RecordsError> {
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb" | "ap")) => {
            (p, &value[2..])
        }
        _ => ("eq", value),
    };
    let (low, high) = carelayer_fhir::search::date_range(rest).ok_or_else(|| {
        RecordsError::BadRequest(format!(
            "date={value}: not a FHIR date, dateTime or instant"
        ))
    })?;
    // `date_range` is inclusive; the ledger query's upper bound is exclusive.
    let end = high.saturating_add(1);
    let (from, to) = match prefix {
        "eq" | "ap" => (Some(low), Some(end)),
        "ge" => (Some(low), None),
        "gt" | "sa" => (Some(end), None),
        "le" => (None, Some(end)),
        "lt" | "eb" => (None, Some(low)),
        _ => {
            return Err(RecordsError::NotSupported(format!(
                "date={value}: the '{prefix}' prefix is not supported on AuditEvent"
            )));
        }
    };
    if let Some(f) = from {
        q.from = Some(q.from.map_or(f, |old| old.max(f)));
    }
    if let Some(t) = to {
        q.to = Some(q.to.map_or(t, |old| old.min(t)));
    }
    Ok(())
}

/// A searchset Bundle of BALP `AuditEvent`s for one page, with `self` and
/// `next` links.
#[must_use]
pub fn render_audit_searchset(page: &AuditPage, base_url: &str) -> Vec<u8> {
    let here = format!("{base_url}/AuditEvent");
    let mut links = vec![("self", format!("{here}?{}", query_string(&page.applied)))];
    if let Some(cursor) = page.next_before_seq {
        let mut next = page.applied.clone();
        next.push(("_page".into(), cursor.to_string()));
        links.push(("next", format!("{here}?{}", query_string(&next))));
    }
    let mut bundle = render::BundleBuilder::new("searchset", None, &links);
    let search = json!({"mode": "match"});
    for row in &page.rows {
        let event = to_audit_event(row, base_url);
        let bytes = serde_json::to_vec(&event).unwrap_or_default();
        bundle.entry(
            Some(&format!("{here}/{}", row.seq)),
            Some(&bytes),
            &[("search", search.clone())],
        );
    }
    bundle.finish()
}

/// One ledger row as a BALP `AuditEvent`, compact JSON.
#[must_use]
pub fn render_audit_event(row: &LedgerRow, base_url: &str) -> Vec<u8> {
    serde_json::to_vec(&to_audit_event(row, base_url)).unwrap_or_default()
}

/// Alerts as a searchset Bundle of `Flag` resources (not stored: each is
/// derived from the ledger entries it lists in an extension).
#[must_use]
pub fn render_alerts(alerts: &[Alert], base_url: &str) -> Vec<u8> {
    let links = vec![("self", format!("{base_url}/AuditEvent/$alerts"))];
    let mut bundle = render::BundleBuilder::new(
        "searchset",
        Some(u64::try_from(alerts.len()).unwrap_or(0)),
        &links,
    );
    let search = json!({"mode": "match"});
    for alert in alerts {
        let flag = alert_flag(alert);
        let bytes = serde_json::to_vec(&flag).unwrap_or_default();
        bundle.entry(None, Some(&bytes), &[("search", search.clone())]);
    }
    bundle.finish()
}

/// Extension on an alert `Flag` listing the ledger seqs behind it.
pub const ALERT_ENTRIES_EXTENSION_URL: &str = "urn:carelayer:audit:alert-entries";

fn alert_flag(alert: &Alert) -> Value {
    let who = &alert.agent;
    let name = if who.display.is_empty() {
        who.user
            .clone()
            .or_else(|| who.client.clone())
            .unwrap_or_default()
    } else {
        who.display.clone()
    };
    let first = alert.entries.first().copied().unwrap_or(0);
    let (id, code, text, subject) = match &alert.kind {
        AlertKind::BreakGlass => (
            format!("break-glass-{first}"),
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110127",
                   "display": "Emergency Override Started"}),
            format!(
                "Break-glass access by {name}{}",
                alert
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            alert.patient.as_ref().map_or_else(
                || json!({"display": "unknown patient"}),
                |p| json!({"reference": format!("Patient/{p}")}),
            ),
        ),
        AlertKind::UnusualVolume {
            patients,
            window_secs,
        } => (
            format!("unusual-volume-{first}"),
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110113",
                   "display": "Security Alert"}),
            format!(
                "{name} accessed {patients} different patients' records within {window_secs} s"
            ),
            match &who.user {
                Some(user) => json!({"type": "Practitioner",
                    "identifier": {"system": balp::SDS_USER_ID, "value": user}, "display": name}),
                None => json!({"display": name}),
            },
        ),
    };
    let mut flag = json!({
        "resourceType": "Flag",
        "id": id,
        "extension": [{
            "url": ALERT_ENTRIES_EXTENSION_URL,
            "valueString": alert.entries.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
        }],
        "status": "active",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category",
                                   "code": "admin", "display": "Administrative"}]}],
        "code": {"coding": [code], "text": text},
        "subject": subject,
        "period": {"start": carelayer_audit::rfc3339_micros(alert.at)},
    });
    if let (Some(org), Some(obj)) = (&who.org, flag.as_object_mut()) {
        obj.insert(
            "author".into(),
            json!({"identifier": {"system": balp::ODS_ORGANIZATION_CODE, "value": org}}),
        );
    }
    flag
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_filters() {
        let (q, _) = parse_audit_params(
            &params(&[
                ("patient", "Patient/p1"),
                ("agent", "https://fhir.nhs.uk/Id/sds-user-id|u1"),
                ("action", "R"),
                ("outcome", "4"),
                ("date", "ge2024-01-01"),
                ("date", "lt2024-02"),
                ("_count", "5"),
            ]),
            false,
            50,
            1000,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.patient.as_deref(), Some("p1"));
        assert_eq!(q.agent.as_deref(), Some("u1"));
        assert_eq!(
            q.actions,
            vec![
                AuditAction::Read,
                AuditAction::Vread,
                AuditAction::History,
                AuditAction::Disclose
            ]
        );
        assert_eq!(q.outcomes, vec![OutcomeClass::Denied, OutcomeClass::Failed]);
        assert_eq!(
            q.from,
            carelayer_fhir::search::date_range("2024-01-01").map(|r| r.0)
        );
        assert_eq!(
            q.to,
            carelayer_fhir::search::date_range("2024-02").map(|r| r.0)
        );
        assert_eq!(q.limit, 5);
    }

    #[test]
    fn refuses_unknown_parameters_unless_lenient() {
        assert!(parse_audit_params(&params(&[("name", "x")]), false, 50, 1000).is_err());
        assert!(parse_audit_params(&params(&[("name", "x")]), true, 50, 1000).is_ok());
        assert!(parse_audit_params(&params(&[("action", "Z")]), false, 50, 1000).is_err());
        assert!(parse_audit_params(&params(&[("date", "yesterday")]), false, 50, 1000).is_err());
    }

    #[test]
    fn scope_narrows_queries() {
        let q = AuditQuery {
            patient: Some("p2".into()),
            limit: 10,
            ..AuditQuery::default()
        };
        assert_eq!(
            AuditScope::Patient(Some("p1".into())).restrict(q.clone()),
            None
        );
        assert_eq!(AuditScope::Nothing.restrict(q.clone()), None);
        let narrowed = AuditScope::Patient(Some("p2".into())).restrict(AuditQuery::default());
        assert_eq!(narrowed.and_then(|q| q.patient), Some("p2".into()));
        let org = AuditScope::Organisation("A1".into()).restrict(q.clone());
        assert_eq!(org.and_then(|q| q.org), Some("A1".into()));
        assert_eq!(AuditScope::All.restrict(q.clone()), Some(q));
    }

    #[test]
    fn visibility_is_a_function_of_the_principal() {
        use carelayer_policy::SdsRole;
        assert_eq!(AuditScope::of(&Principal::LocalOperator), AuditScope::All);
        let patient = Principal::Patient {
            nhs_number: "9990000018".into(),
            patient_id: Some("p1".into()),
            scopes: None,
        };
        assert_eq!(
            AuditScope::of(&patient),
            AuditScope::Patient(Some("p1".into()))
        );
        let officer = Principal::Practitioner {
            user_id: "u9".into(),
            role: SdsRole::PrivacyOfficer,
            org: "A1".into(),
            scopes: None,
        };
        assert_eq!(
            AuditScope::of(&officer),
            AuditScope::Organisation("A1".into())
        );
        let clinician = Principal::Practitioner {
            user_id: "u1".into(),
            role: SdsRole::ClinicalPractitioner,
            org: "A1".into(),
            scopes: None,
        };
        assert_eq!(AuditScope::of(&clinician), AuditScope::Nothing);
        let system = |scope: &str, org: Option<&str>| Principal::System {
            client_id: "c1".into(),
            scopes: carelayer_policy::Scope::parse_list(scope),
            org: org.map(str::to_owned),
        };
        assert_eq!(
            AuditScope::of(&system("system/*.rs", None)),
            AuditScope::Nothing
        );
        assert_eq!(
            AuditScope::of(&system("system/AuditEvent.rs", None)),
            AuditScope::All
        );
        assert_eq!(
            AuditScope::of(&system("system/AuditEvent.rs", Some("B2"))),
            AuditScope::Organisation("B2".into())
        );
    }

    fn read_at(seq: i64, at: i64, patient: &str) -> LedgerRow {
        LedgerRow {
            seq,
            record: AuditRecord {
                recorded_at: at,
                action: AuditAction::Read,
                outcome: AuditOutcome::Success,
                agent: carelayer_audit::Agent {
                    user: Some("u1".into()),
                    ..carelayer_audit::Agent::default()
                },
                patient: Some(patient.into()),
                resources: vec![],
                purpose: String::new(),
                channel: carelayer_audit::Channel::Rest,
                detail: None,
            },
            hash: [0; 32],
        }
    }

    #[test]
    fn volume_alert_uses_a_sliding_window() {
        // Three distinct patients, but never more than two within 10 µs.
        let spread = vec![read_at(1, 0, "a"), read_at(2, 8, "b"), read_at(3, 16, "c")];
        assert_eq!(volume_alert(spread, 2, 10), None);
        let close = vec![
            read_at(1, 0, "a"),
            read_at(2, 2, "a"),
            read_at(3, 4, "b"),
            read_at(4, 6, "c"),
        ];
        let alert = volume_alert(close, 2, 10).unwrap_or_else(|| panic!("no alert"));
        assert_eq!(alert.entries, vec![1, 2, 3, 4]);
        assert_eq!(
            alert.kind,
            AlertKind::UnusualVolume {
                patients: 3,
                window_secs: 0
            }
        );
    }
}
