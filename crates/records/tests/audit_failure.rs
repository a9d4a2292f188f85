//! A failed audit write fails the request and leaves the data unchanged.
//!
//! The store below wraps the real SQLite store and, when told to, fails
//! every audit append and every commit that carries audit entries (as a
//! backend whose ledger insert fails inside the write transaction would:
//! the whole write set is refused).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use carelayer_audit::{AuditRecord, LedgerRow};
use carelayer_records::{
    AuditChannel, Caller, Conditional, Records, RecordsError, RecordsOptions, SearchRequest,
};
use carelayer_store::{
    CommitReceipt, HistoryQuery, SearchPage, SearchQuery, Store, StoreError, StoredResource,
    WriteSet,
};
use carelayer_store_sqlite::{SqliteOptions, SqliteStore};

struct FailingAudit {
    inner: SqliteStore,
    fail: AtomicBool,
}

fn refused() -> StoreError {
    StoreError::Unavailable("audit ledger write failed (test)".into())
}

#[async_trait]
impl Store for FailingAudit {
    async fn read_current(&self, t: &str, id: &str) -> Result<Option<StoredResource>, StoreError> {
        self.inner.read_current(t, id).await
    }
    async fn read_version(
        &self,
        t: &str,
        id: &str,
        v: i64,
    ) -> Result<Option<StoredResource>, StoreError> {
        self.inner.read_version(t, id, v).await
    }
    async fn history(&self, q: &HistoryQuery) -> Result<Vec<StoredResource>, StoreError> {
        self.inner.history(q).await
    }
    async fn search(&self, q: &SearchQuery) -> Result<SearchPage, StoreError> {
        self.inner.search(q).await
    }
    async fn commit(&self, writes: WriteSet) -> Result<CommitReceipt, StoreError> {
        if self.fail.load(Ordering::SeqCst) && !writes.audit.is_empty() {
            return Err(refused());
        }
        self.inner.commit(writes).await
    }
    async fn append_audit(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(refused());
        }
        self.inner.append_audit(entries).await
    }
    async fn audit_rows(&self, after: i64, limit: usize) -> Result<Vec<LedgerRow>, StoreError> {
        self.inner.audit_rows(after, limit).await
    }
    async fn count(&self, t: Option<&str>) -> Result<u64, StoreError> {
        self.inner.count(t).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

fn patient(family: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
        "name": [{"family": family}],
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_audit_fails_the_request_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FailingAudit {
        inner: SqliteStore::open(&dir.path().join("db.sqlite"), SqliteOptions::default()).unwrap(),
        fail: AtomicBool::new(false),
    });
    let records = Records::new(store.clone(), RecordsOptions::default());
    let caller = Caller::local_operator(AuditChannel::Rest);

    let created = records
        .create(&caller, "Patient", &patient("Before"), None)
        .await
        .unwrap();
    let id = created.version.unwrap().id;
    let ledger_before = store.inner.audit_rows(0, 1000).await.unwrap().len();
    assert!(ledger_before >= 1, "the create was audited");

    store.fail.store(true, Ordering::SeqCst);
    // Reads, searches and history fail rather than disclose unaudited.
    assert!(matches!(
        records.read(&caller, "Patient", &id).await,
        Err(RecordsError::Store(_))
    ));
    assert!(matches!(
        records.vread(&caller, "Patient", &id, "1").await,
        Err(RecordsError::Store(_))
    ));
    let search = SearchRequest {
        resource_type: Some("Patient".into()),
        params: vec![("family".into(), "Before".into())],
        lenient: false,
    };
    assert!(matches!(
        records.search(&caller, &search).await,
        Err(RecordsError::Store(_))
    ));
    // Writes fail and write nothing.
    assert!(matches!(
        records
            .update(
                &caller,
                "Patient",
                Conditional::Id(id.clone()),
                &{
                    let mut v: serde_json::Value =
                        serde_json::from_slice(&patient("After")).unwrap();
                    v["id"] = serde_json::json!(id);
                    serde_json::to_vec(&v).unwrap()
                },
                None
            )
            .await,
        Err(RecordsError::Store(_))
    ));
    assert!(matches!(
        records
            .create(&caller, "Patient", &patient("Other"), None)
            .await,
        Err(RecordsError::Store(_))
    ));
    assert!(matches!(
        records
            .delete(&caller, "Patient", Conditional::Id(id.clone()), None)
            .await,
        Err(RecordsError::Store(_))
    ));

    // Nothing changed: one Patient, still version 1 with its old name, and
    // no ledger entry was written for the failed requests.
    let current = store
        .inner
        .read_current("Patient", &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.version, 1);
    assert!(!current.deleted);
    assert!(String::from_utf8_lossy(&current.json).contains("Before"));
    assert_eq!(store.inner.count(Some("Patient")).await.unwrap(), 1);
    assert_eq!(
        store.inner.audit_rows(0, 1000).await.unwrap().len(),
        ledger_before
    );

    // Once the ledger works again, so does the service.
    store.fail.store(false, Ordering::SeqCst);
    records.read(&caller, "Patient", &id).await.unwrap();
    assert_eq!(
        store.inner.audit_rows(0, 1000).await.unwrap().len(),
        ledger_before + 1
    );
    records.close().await;
}
