//! Stable paging when a match is updated between the first page's query and
//! the pinning of its result set. The store below wraps the real SQLite
//! store and pauses after the first search it is armed for, so the test can
//! update a match exactly there (on PostgreSQL the HTTP paging test hit this
//! window by chance: a match updated in it was skipped by every page).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use carelayer_audit::{AuditRecord, LedgerRow};
use carelayer_records::{
    AuditChannel, Caller, Conditional, Records, RecordsOptions, SearchOutcome, SearchRequest,
};
use carelayer_store::{
    CommitReceipt, HistoryQuery, SearchPage, SearchQuery, Store, StoreError, StoredResource,
    WriteSet,
};
use carelayer_store_sqlite::{SqliteOptions, SqliteStore};
use tokio::sync::Notify;

struct Pausing {
    inner: SqliteStore,
    armed: AtomicBool,
    paused: Notify,
    resume: Notify,
}

#[async_trait]
impl Store for Pausing {
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
        let page = self.inner.search(q).await?;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.paused.notify_one();
            self.resume.notified().await;
        }
        Ok(page)
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
    async fn count(&self, t: Option<&str>) -> Result<u64, StoreError> {
        self.inner.count(t).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

fn patient(id: &str, birth: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "resourceType": "Patient", "id": id, "active": true,
        "name": [{"family": "Pager"}], "birthDate": birth,
    }))
    .unwrap()
}

fn request(params: &[(&str, String)]) -> SearchRequest {
    SearchRequest {
        resource_type: Some("Patient".into()),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        lenient: false,
    }
}

fn ids(outcome: &SearchOutcome) -> Vec<String> {
    outcome.matches.iter().map(|m| m.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_updated_while_the_first_page_is_pinned_is_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Pausing {
        inner: SqliteStore::open(&dir.path().join("db.sqlite"), SqliteOptions::default()).unwrap(),
        armed: AtomicBool::new(false),
        paused: Notify::new(),
        resume: Notify::new(),
    });
    let records = Arc::new(Records::new(store.clone(), RecordsOptions::default()));
    let caller = Caller::local_operator(AuditChannel::Rest);
    let all: BTreeSet<String> = (0..10).map(|i| format!("p{i:02}")).collect();
    for id in &all {
        let body = patient(id, "1970-01-01");
        records
            .update(&caller, "Patient", Conditional::Id(id.clone()), &body, None)
            .await
            .unwrap();
    }

    // The first page runs; right after its store query, p05 is updated.
    store.armed.store(true, Ordering::SeqCst);
    let first = {
        let (records, caller) = (Arc::clone(&records), caller.clone());
        tokio::spawn(async move {
            let params = [("family", "pager".to_owned()), ("_count", "3".to_owned())];
            records.search(&caller, &request(&params)).await.unwrap()
        })
    };
    store.paused.notified().await;
    records
        .update(
            &caller,
            "Patient",
            Conditional::Id("p05".into()),
            &patient("p05", "1970-01-02"),
            None,
        )
        .await
        .unwrap();
    store.resume.notify_one();
    let mut page = first.await.unwrap();

    // Every page after it, through the pinned result set.
    let mut seen = ids(&page);
    while let Some(next) = page.next_offset {
        let mut params = vec![
            ("family", "pager".to_owned()),
            ("_count", "3".to_owned()),
            ("_offset", next.to_string()),
            ("_snapshot", page.snapshot_seq.to_string()),
        ];
        if let Some(token) = &page.page_token {
            params.push(("_page", token.clone()));
        }
        page = records.search(&caller, &request(&params)).await.unwrap();
        seen.extend(ids(&page));
        assert!(seen.len() <= 20, "paging does not end: {seen:?}");
    }
    let distinct: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "duplicates across pages: {seen:?}"
    );
    assert_eq!(distinct, all, "gaps or extras across pages: {seen:?}");
    records.close().await;
}
