//! read and vread.

use carelayer_audit::{AuditAction, AuditOutcome};
use carelayer_policy::{Action, Decision};

use crate::access::{Subject, redact};
use crate::prepare::{check_type, is_valid_id};
use crate::{Caller, Records, RecordsError, Version, purpose_of};

impl Records {
    /// The current version of a resource.
    ///
    /// # Errors
    /// `NotFound` when absent or withheld, `Gone` when deleted, store errors
    /// (including a failed audit append).
    pub async fn read(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
    ) -> Result<Version, RecordsError> {
        check_type(resource_type)?;
        let reference = format!("{resource_type}/{id}");
        let found = if is_valid_id(id) {
            self.store.read_current(resource_type, id).await?
        } else {
            None
        };
        self.disclose_one(
            caller,
            AuditAction::Read,
            reference,
            found.map(Version::from),
        )
        .await
    }

    /// One version of a resource.
    ///
    /// # Errors
    /// As [`Records::read`]; a deleted version gives `Gone`.
    pub async fn vread(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<Version, RecordsError> {
        check_type(resource_type)?;
        let reference = format!("{resource_type}/{id}/_history/{version}");
        let number = version.parse::<i64>().ok().filter(|v| *v > 0);
        let found = match number {
            Some(v) if is_valid_id(id) => self.store.read_version(resource_type, id, v).await?,
            _ => None,
        };
        self.disclose_one(
            caller,
            AuditAction::Vread,
            reference,
            found.map(Version::from),
        )
        .await
    }

    /// Policy and audit for handing one version to the caller.
    async fn disclose_one(
        &self,
        caller: &Caller,
        action: AuditAction,
        reference: String,
        found: Option<Version>,
    ) -> Result<Version, RecordsError> {
        let Some(mut version) = found else {
            return Err(RecordsError::NotFound(reference));
        };
        let decision = self
            .decide(caller, Action::Read, &Subject::of(&version), &[])
            .await?;
        let history_ref = format!(
            "{}/{}/_history/{}",
            version.resource_type, version.id, version.version
        );
        if let Decision::Deny { reason } = &decision {
            let record = Self::audit_record(
                caller,
                action,
                AuditOutcome::Denied(reason.clone()),
                version.patient.clone(),
                vec![history_ref],
                "",
                None,
            );
            self.store.append_audit(vec![record]).await?;
            return Err(RecordsError::NotFound(reference));
        }
        if version.deleted {
            return Err(RecordsError::Gone {
                reference,
                version: version.version,
            });
        }
        let record = Self::audit_record(
            caller,
            action,
            AuditOutcome::Success,
            version.patient.clone(),
            vec![history_ref],
            purpose_of(&decision),
            None,
        );
        self.append_read_audit(vec![record]).await?;
        redact(&decision, &mut version)?;
        Ok(version)
    }
}
