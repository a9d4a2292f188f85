//! Stable paging: the result set of a multi-page search is pinned when its
//! first page runs.
//!
//! Approach: when the first page of a search shows there is a next page,
//! the store is asked once more for the *keys* of every match (type, id and
//! the version that matched; no JSON, `SearchQuery::keys_only`), in result
//! order, in one store snapshot, up to
//! [`crate::RecordsOptions::search_snapshot_max`] keys. The list is kept in
//! memory under a random token that the `next`/`previous` links carry
//! (`_page`). Every page, the first included, is a slice of that list, each
//! resource read at the version that matched (current versions in one query
//! per type; the few updated or deleted since are read by version). So a
//! page never shifts, repeats or skips when other requests create, update or
//! delete matches meanwhile: the search is answered *as of its pinning*.
//! (The keys are not read at the first query's snapshot sequence: index rows
//! describe current versions only, so a match updated in between would no
//! longer be found there.)
//!
//! A token is bound to the caller that created it, lives
//! [`TTL`] and at most [`crate::RecordsOptions::search_snapshots`] result
//! sets are kept (oldest evicted). When a token is unknown (evicted, expired,
//! restarted server) or a result set was longer than the cap, paging falls
//! back to `_offset` over the `_snapshot` sequence, which is still free of
//! duplicates and of resources created later, but drops matches updated
//! since the first page.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carelayer_policy::Principal;

/// How long a pinned result set stays available.
pub(crate) const TTL: Duration = Duration::from_secs(30 * 60);

/// One match of a pinned result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
}

#[derive(Debug)]
pub(crate) struct Pinned {
    pub principal: Principal,
    pub keys: Vec<Key>,
    /// More matches existed than were pinned.
    pub truncated: bool,
    pub total: Option<u64>,
    pub snapshot_seq: i64,
    created: Instant,
}

#[derive(Default)]
struct Inner {
    sets: HashMap<String, Arc<Pinned>>,
    order: VecDeque<String>,
}

#[derive(Default)]
pub(crate) struct SnapshotCache {
    inner: Mutex<Inner>,
}

impl SnapshotCache {
    /// Pin a result set; returns its token.
    pub(crate) fn insert(
        &self,
        capacity: usize,
        principal: Principal,
        keys: Vec<Key>,
        truncated: bool,
        total: Option<u64>,
        snapshot_seq: i64,
    ) -> Option<String> {
        if capacity == 0 {
            return None;
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let pinned = Arc::new(Pinned {
            principal,
            keys,
            truncated,
            total,
            snapshot_seq,
            created: Instant::now(),
        });
        let mut inner = self.inner.lock().ok()?;
        while inner.order.len() >= capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.sets.remove(&old);
            }
        }
        inner.sets.insert(token.clone(), pinned);
        inner.order.push_back(token.clone());
        Some(token)
    }

    /// The pinned set of `token`, if it is still kept and belongs to `principal`.
    pub(crate) fn get(&self, token: &str, principal: &Principal) -> Option<Arc<Pinned>> {
        let inner = self.inner.lock().ok()?;
        inner
            .sets
            .get(token)
            .filter(|p| &p.principal == principal && p.created.elapsed() < TTL)
            .cloned()
    }
}
