//! History: instance, type and system, newest first, with `_since` and a
//! stable paging cursor (the commit sequence number).

use std::collections::BTreeMap;

use carelayer_audit::{AuditAction, AuditOutcome};
use carelayer_policy::{Action, Decision};
use carelayer_store::{HistoryQuery, HistoryScope};

use crate::access::{Subject, redact};
use crate::prepare::{check_type, is_valid_id};
use crate::{Caller, Records, RecordsError, Version};

/// What a history request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    /// `None`: system history; `Some((type, None))`: type history;
    /// `Some((type, Some(id)))`: instance history.
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// `_since`, microseconds.
    pub since: Option<i64>,
    /// `_count`.
    pub count: Option<usize>,
    /// The paging cursor from a `next` link.
    pub before_seq: Option<i64>,
}

/// One page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub versions: Vec<Version>,
    /// The cursor for the next page, when there may be one.
    pub next_before_seq: Option<i64>,
}

impl Records {
    /// Versions newest first.
    ///
    /// # Errors
    /// `UnknownType`, `NotFound` for the history of an unknown instance,
    /// store errors (including a failed audit append).
    pub async fn history(
        &self,
        caller: &Caller,
        request: &HistoryRequest,
    ) -> Result<HistoryPage, RecordsError> {
        let scope = match (&request.resource_type, &request.id) {
            (None, _) => HistoryScope::System,
            (Some(ty), None) => {
                check_type(ty)?;
                HistoryScope::Type(ty.clone())
            }
            (Some(ty), Some(id)) => {
                check_type(ty)?;
                if !is_valid_id(id) {
                    return Err(RecordsError::NotFound(format!("{ty}/{id}")));
                }
                HistoryScope::Instance {
                    resource_type: ty.clone(),
                    id: id.clone(),
                }
            }
        };
        let count = request
            .count
            .unwrap_or(self.options.default_page_size)
            .min(self.options.max_page_size);
        let rows = self
            .store
            .history(&HistoryQuery {
                scope: scope.clone(),
                since: request.since,
                before_seq: request.before_seq,
                // One extra row tells whether a next page exists.
                count: count + 1,
            })
            .await?;
        if rows.is_empty()
            && request.before_seq.is_none()
            && let HistoryScope::Instance { resource_type, id } = &scope
            && self.store.read_current(resource_type, id).await?.is_none()
        {
            return Err(RecordsError::NotFound(format!("{resource_type}/{id}")));
        }
        let more = rows.len() > count;
        let mut next = None;
        let mut versions = Vec::with_capacity(count.min(rows.len()));
        for row in rows.into_iter().take(count) {
            next = Some(row.seq);
            versions.push(Version::from(row));
        }
        let had_versions = !versions.is_empty();
        let versions = self
            .disclose_many(caller, AuditAction::History, versions, None, &[])
            .await?;
        if had_versions
            && versions.is_empty()
            && let HistoryScope::Instance { resource_type, id } = &scope
        {
            // Withheld looks exactly like absent.
            return Err(RecordsError::NotFound(format!("{resource_type}/{id}")));
        }
        Ok(HistoryPage {
            versions,
            next_before_seq: if more { next } else { None },
        })
    }

    /// Policy per version, then one audit entry per patient touched (every
    /// hit is a disclosure) and one per patient withheld. Returns the
    /// versions the caller may see, in order, redacted. `search_params`
    /// names the parameters of the search that found them: a resource the
    /// decision hides from those (a restricted patient found by postcode)
    /// is left out as if it had not matched.
    pub(crate) async fn disclose_many(
        &self,
        caller: &Caller,
        action: AuditAction,
        versions: Vec<Version>,
        detail: Option<String>,
        search_params: &[String],
    ) -> Result<Vec<Version>, RecordsError> {
        let policy_action = match action {
            AuditAction::History => Action::History,
            AuditAction::Search | AuditAction::Everything => Action::Search,
            _ => Action::Read,
        };
        let mut shown = Vec::with_capacity(versions.len());
        // patient → (resources shown, purpose); patient → (resources withheld, reason)
        let mut disclosed: BTreeMap<Option<String>, (Vec<String>, String)> = BTreeMap::new();
        let mut withheld: BTreeMap<Option<String>, (Vec<String>, String)> = BTreeMap::new();
        for mut version in versions {
            let reference = format!(
                "{}/{}/_history/{}",
                version.resource_type, version.id, version.version
            );
            let decision = self
                .decide(caller, policy_action, &Subject::of(&version), &[])
                .await?;
            if !search_params.is_empty()
                && decision.hidden_from_search(search_params.iter().map(String::as_str))
                && decision.is_permit()
            {
                continue;
            }
            redact(&decision, &mut version)?;
            match decision {
                Decision::Permit { purpose, .. } => {
                    let slot = disclosed
                        .entry(version.patient.clone())
                        .or_insert_with(|| (Vec::new(), purpose));
                    slot.0.push(reference);
                    shown.push(version);
                }
                Decision::Deny { reason } => {
                    withheld
                        .entry(version.patient.clone())
                        .or_insert_with(|| (Vec::new(), reason))
                        .0
                        .push(reference);
                }
            }
        }
        let mut records = Vec::with_capacity(disclosed.len() + withheld.len());
        for (patient, (resources, purpose)) in disclosed {
            records.push(Self::audit_record(
                caller,
                action,
                AuditOutcome::Success,
                patient,
                resources,
                &purpose,
                detail.clone(),
            ));
        }
        for (patient, (resources, reason)) in withheld {
            records.push(Self::audit_record(
                caller,
                action,
                AuditOutcome::Denied(reason),
                patient,
                resources,
                "",
                detail.clone(),
            ));
        }
        if records.is_empty() {
            // An access that disclosed nothing is still an access.
            records.push(Self::audit_record(
                caller,
                action,
                AuditOutcome::Success,
                None,
                Vec::new(),
                "",
                detail,
            ));
        }
        self.append_read_audit(records).await?;
        Ok(shown)
    }
}
