//! `Records::begin_bulk_load` / `end_bulk_load`: the operator's import
//! announces its load to the store (which may put off its index builds,
//! making other users' searches slower while it lasts), and nobody else
//! can. The store below records what it is told and delegates the rest
//! to SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use carelayer_audit::{AuditRecord, LedgerRow};
use carelayer_policy::{Principal, SdsRole};
use carelayer_records::{AuditChannel, Caller, Records, RecordsError, RecordsOptions};
use carelayer_store::{
    CommitReceipt, HistoryQuery, SearchPage, SearchQuery, Store, StoreError, StoredResource,
    WriteSet,
};
use carelayer_store_sqlite::{SqliteOptions, SqliteStore};

struct Told {
    inner: SqliteStore,
    loads: Mutex<Vec<Option<u64>>>,
}

#[async_trait]
impl Store for Told {
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
        self.inner.commit(writes).await
    }
    async fn append_audit(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        self.inner.append_audit(entries).await
    }
    async fn audit_rows(&self, after: i64, limit: usize) -> Result<Vec<LedgerRow>, StoreError> {
        self.inner.audit_rows(after, limit).await
    }
    async fn begin_bulk_load(&self, expected: u64) -> Result<(), StoreError> {
        self.loads.lock().unwrap().push(Some(expected));
        Ok(())
    }
    async fn end_bulk_load(&self) -> Result<(), StoreError> {
        self.loads.lock().unwrap().push(None);
        Ok(())
    }
    async fn count(&self, t: Option<&str>) -> Result<u64, StoreError> {
        self.inner.count(t).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

#[tokio::test]
async fn only_the_operator_announces_a_bulk_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Told {
        inner: SqliteStore::open(&dir.path().join("db.sqlite"), SqliteOptions::default()).unwrap(),
        loads: Mutex::new(Vec::new()),
    });
    let records = Records::new(store.clone(), RecordsOptions::default());
    let clinician = Caller::new(
        Principal::Practitioner {
            user_id: "u1".into(),
            role: SdsRole::ClinicalPractitioner,
            org: "A81001".into(),
            scopes: None,
        },
        AuditChannel::Rest,
    );
    assert!(matches!(
        records.begin_bulk_load(&clinician, 50_000).await,
        Err(RecordsError::Forbidden)
    ));
    assert!(matches!(
        records.end_bulk_load(&clinician).await,
        Err(RecordsError::Forbidden)
    ));
    assert!(store.loads.lock().unwrap().is_empty());

    let operator = Caller::local_operator(AuditChannel::Cli);
    records.begin_bulk_load(&operator, 50_000).await.unwrap();
    records.end_bulk_load(&operator).await.unwrap();
    assert_eq!(*store.loads.lock().unwrap(), vec![Some(50_000), None]);
    records.close().await;
}
