//! Reader connections and the read queries.
//!
//! Connections sit in a plain `std` mutex-guarded stack (held only to push or
//! pop, never across a query or an await) behind a semaphore that bounds
//! concurrent reads to the number of connections. Lookups by key run on
//! the calling task ([`ReaderPool::run_in_place`]); searches and history
//! too, up to a time budget, past which they are run again on
//! `spawn_blocking` so that a long one never holds an async worker
//! ([`ReaderPool::run_budgeted`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use carelayer_store::{
    HistoryQuery, HistoryScope, SearchPage, SearchQuery, StoreError, StoredResource, TotalMode,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use tokio::sync::Semaphore;

use crate::error::{gone, sql_err};
use crate::search::{Shape, build};
use crate::{SqliteOptions, configure, reader_flags};

/// Virtual-machine steps between two looks at the clock.
const PROGRESS_STEPS: std::ffi::c_int = 1_000;

pub(crate) struct ReaderPool {
    path: PathBuf,
    options: SqliteOptions,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    handed_off: AtomicU64,
    /// Reads go to the blocking pool until this many micros after `epoch`.
    pooled_until: AtomicU64,
    epoch: Instant,
}

/// How long every read goes to the blocking pool after one stalled (see
/// [`ReaderPool::note_slow`]).
const POOLED_FOR_MICROS: u64 = 1_000_000;

/// A read on the calling task that took this long (not counting opening
/// a connection) stalled: on disk reads (a cold page cache behind a busy
/// disk), not on work. Far above the in-place budget, and above what being
/// preempted costs on a loaded machine: at 1 ms reads went to the pool
/// most of the time (reads at 10,000 patients back down to
/// 14,800–15,500/s), at 10 ms still often (16,900–17,900/s).
const STALL: std::time::Duration = std::time::Duration::from_millis(50);

impl ReaderPool {
    pub(crate) fn new(path: PathBuf, options: SqliteOptions) -> Self {
        let n = options.readers.max(1);
        Self {
            path,
            options,
            idle: Mutex::new(Vec::with_capacity(n)),
            permits: Arc::new(Semaphore::new(n)),
            handed_off: AtomicU64::new(0),
            pooled_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Open every reader connection up front.
    pub(crate) fn warm(&self) -> Result<(), StoreError> {
        let mut conns = Vec::new();
        for _ in 0..self.options.readers.max(1) {
            conns.push(self.open()?);
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.extend(conns);
        }
        Ok(())
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(&self.path, reader_flags()).map_err(sql_err)?;
        configure(&conn, &self.options, false)?;
        Ok(conn)
    }

    /// A connection from the stack, or a fresh one if a previous read lost
    /// its connection to a panic.
    fn take(&self) -> Result<Connection, StoreError> {
        let popped = self.idle.lock().map_err(|_| gone())?.pop();
        match popped {
            Some(c) => Ok(c),
            None => self.open(),
        }
    }

    /// Back to the stack, unless the pool is closed or the connection is
    /// still inside a transaction it cannot leave (an interrupt, see
    /// [`Self::run_budgeted`], can land in the rollback of a read's
    /// transaction too): the next read would fail to begin its own.
    fn put(&self, conn: Connection) {
        if self.permits.is_closed() {
            return;
        }
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
            if !conn.is_autocommit() {
                return;
            }
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// Run `f` on a reader connection.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| gone())?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.take()?;
            let result = f(&mut conn);
            pool.put(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Other(format!("read task failed: {e}")))?
    }

    /// Run `f` on a reader connection on the calling task itself, not on
    /// the blocking pool. Only for lookups of a few index seeks whatever
    /// the database holds (a resource by type and id, a version, a short
    /// list of them): a search's cost grows with its matches, so searches
    /// go through [`Self::run_budgeted`].
    ///
    /// Why: handing a read to a blocking-pool thread and back is two thread
    /// wake-ups, which cost more than the lookup. At 10,000 patients reads
    /// measured 14,300–14,900/s handed off and 23,400–23,900/s run in place
    /// (kernel scheduling was half the profile; docs/benchmarks.md,
    /// session 9). The price: a lookup whose pages are not in memory
    /// stalls this worker thread for the disk read. So a lookup that
    /// stalled ([`STALL`]) sends every read to the blocking pool for a
    /// while ([`Self::note_slow`]): with a cold page cache and a
    /// busy disk, reads run as they did before, many at once on the pool,
    /// and the async workers stay free.
    pub(crate) async fn run_in_place<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.pooled_now() {
            return self.run(f).await;
        }
        let _permit = self.permits.acquire().await.map_err(|_| gone())?;
        // Timed from here: opening a new connection is not a stall.
        let mut conn = self.take()?;
        let start = Instant::now();
        let result = f(&mut conn);
        self.put(conn);
        if start.elapsed() >= STALL {
            self.note_slow();
        }
        result
    }

    /// Micros since `epoch` now.
    fn now_micros(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether reads go to the blocking pool for now (see
    /// [`Self::note_slow`]).
    fn pooled_now(&self) -> bool {
        self.now_micros() < self.pooled_until.load(Ordering::Relaxed)
    }

    /// A read on the calling task stalled: for [`POOLED_FOR_MICROS`], every
    /// read runs on the blocking pool.
    fn note_slow(&self) {
        let until = self.now_micros().saturating_add(POOLED_FOR_MICROS);
        self.pooled_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Run `f` on the calling task while it stays within
    /// `SqliteOptions::in_place_budget`, else on the blocking pool: for reads whose cost
    /// depends on the data (searches, history). SQLite calls a progress
    /// handler every [`PROGRESS_STEPS`] virtual-machine steps; past the
    /// budget it interrupts the statement and `f` runs again from the start
    /// on the blocking pool (a read, so running it twice changes nothing).
    ///
    /// Why: most searches take tens to hundreds of microseconds, less than
    /// the two thread hand-offs of the blocking pool (see
    /// [`Self::run_in_place`]), but some take hundreds of milliseconds
    /// (a month of one code across a population) and must not hold one of
    /// the runtime's few workers that long. The budget bounds what an async
    /// worker can be held for; a search that outgrows it wastes at most the
    /// budget. One that stalled ([`STALL`]) also sends every read to the
    /// pool for a while ([`Self::note_slow`]).
    pub(crate) async fn run_budgeted<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if !self.pooled_now() {
            let _permit = self.permits.acquire().await.map_err(|_| gone())?;
            let mut conn = self.take()?;
            let over = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&over);
            let start = Instant::now();
            let budget = self.options.in_place_budget;
            conn.progress_handler(
                PROGRESS_STEPS,
                Some(move || {
                    let past = start.elapsed() >= budget;
                    if past {
                        flag.store(true, Ordering::Relaxed);
                    }
                    past
                }),
            );
            let result = f(&mut conn);
            conn.progress_handler(0, None::<fn() -> bool>);
            self.put(conn);
            if !over.load(Ordering::Relaxed) {
                return result;
            }
            self.handed_off.fetch_add(1, Ordering::Relaxed);
            if start.elapsed() >= STALL {
                self.note_slow();
            }
        }
        self.run(f).await
    }

    /// Reads that outgrew the in-place budget ([`Self::run_budgeted`]).
    pub(crate) fn handed_off(&self) -> u64 {
        self.handed_off.load(Ordering::Relaxed)
    }

    pub(crate) fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

const RESOURCE_COLUMNS: &str =
    "r.type, r.id, r.version, r.seq, r.last_updated, r.deleted, r.patient_key, r.json";

fn resource(row: &Row<'_>) -> rusqlite::Result<StoredResource> {
    Ok(StoredResource {
        resource_type: row.get(0)?,
        id: row.get(1)?,
        version: row.get(2)?,
        seq: row.get(3)?,
        last_updated: row.get(4)?,
        deleted: row.get::<_, i64>(5)? != 0,
        patient_key: row.get(6)?,
        json: row.get(7)?,
    })
}

pub(crate) fn current(
    conn: &Connection,
    t: &str,
    id: &str,
) -> Result<Option<StoredResource>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {RESOURCE_COLUMNS} FROM current c JOIN resources r ON r.seq = c.seq \
         WHERE c.type = ?1 AND c.id = ?2"
    ))
    .and_then(|mut s| s.query_row(params![t, id], resource).optional())
    .map_err(sql_err)
}

/// [`current`] for many keys, in one read transaction (one snapshot).
pub(crate) fn current_many(
    conn: &mut Connection,
    keys: &[(String, String)],
) -> Result<Vec<Option<StoredResource>>, StoreError> {
    let tx = conn.transaction().map_err(sql_err)?;
    let found = keys
        .iter()
        .map(|(t, id)| current(&tx, t, id))
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit().map_err(sql_err)?;
    Ok(found)
}

pub(crate) fn version(
    conn: &Connection,
    t: &str,
    id: &str,
    v: i64,
) -> Result<Option<StoredResource>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.type = ?1 AND r.id = ?2 AND r.version = ?3"
    ))
    .and_then(|mut s| s.query_row(params![t, id, v], resource).optional())
    .map_err(sql_err)
}

pub(crate) fn history(
    conn: &Connection,
    q: &HistoryQuery,
) -> Result<Vec<StoredResource>, StoreError> {
    // Built from fixed fragments so each shape is one cached statement; the
    // values are bound.
    let mut sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources r WHERE 1");
    let mut binds: Vec<Value> = Vec::new();
    match &q.scope {
        HistoryScope::System => {}
        HistoryScope::Type(t) => {
            sql.push_str(" AND r.type = ?");
            binds.push(Value::Text(t.clone()));
        }
        HistoryScope::Instance { resource_type, id } => {
            sql.push_str(" AND r.type = ? AND r.id = ?");
            binds.push(Value::Text(resource_type.clone()));
            binds.push(Value::Text(id.clone()));
        }
    }
    if let Some(since) = q.since {
        sql.push_str(" AND r.last_updated >= ?");
        binds.push(Value::Integer(since));
    }
    if let Some(before) = q.before_seq {
        sql.push_str(" AND r.seq < ?");
        binds.push(Value::Integer(before));
    }
    // A literal limit: see `crate::search::build` for why never `LIMIT ?`.
    let _ = write!(
        sql,
        " ORDER BY r.seq DESC LIMIT {}",
        i64::try_from(q.count).unwrap_or(i64::MAX)
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_err)?;
    stmt.query_map(params_from_iter(binds.iter()), resource)
        .and_then(Iterator::collect)
        .map_err(sql_err)
}

pub(crate) fn count(conn: &Connection, t: Option<&str>) -> Result<u64, StoreError> {
    let n: i64 = match t {
        Some(t) => conn
            .prepare_cached("SELECT count(*) FROM current WHERE type = ?1 AND deleted = 0")
            .and_then(|mut s| s.query_row([t], |r| r.get(0))),
        None => conn
            .prepare_cached("SELECT count(*) FROM current WHERE deleted = 0")
            .and_then(|mut s| s.query_row([], |r| r.get(0))),
    }
    .map_err(sql_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(crate) fn search(conn: &mut Connection, q: &SearchQuery) -> Result<SearchPage, StoreError> {
    // One read transaction: the snapshot, the page, the total and the json
    // all see the same database state.
    let tx = conn.transaction().map_err(sql_err)?;
    let snapshot = match q.snapshot_seq {
        Some(s) => s,
        None => tx
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM resources")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql_err)?,
    };
    let now = crate::now_micros();
    let page = build(q, Some(snapshot), Shape::Page, now)?;
    let heads: Vec<StoredResource> = {
        let mut stmt = tx.prepare_cached(&page.text).map_err(sql_err)?;
        stmt.query_map(params_from_iter(page.params.iter()), |row| {
            Ok(StoredResource {
                resource_type: row.get(0)?,
                id: row.get(1)?,
                version: row.get(2)?,
                seq: row.get(3)?,
                last_updated: row.get(4)?,
                deleted: row.get::<_, i64>(5)? != 0,
                patient_key: row.get(6)?,
                json: Vec::new(),
            })
        })
        .and_then(Iterator::collect)
        .map_err(sql_err)?
    };
    // The json is fetched per match by rowid after sorting/limiting, so the
    // sorter never carries resource bodies.
    let mut matches = heads;
    if !q.keys_only {
        let mut stmt = tx
            .prepare_cached("SELECT json FROM resources WHERE seq = ?1")
            .map_err(sql_err)?;
        let bodies = q.bodies.clone().unwrap_or(0..matches.len());
        for m in matches.iter_mut().take(bodies.end).skip(bodies.start) {
            m.json = stmt.query_row([m.seq], |r| r.get(0)).map_err(sql_err)?;
        }
    }
    let total = match q.total {
        TotalMode::None => None,
        TotalMode::Estimate | TotalMode::Accurate => {
            let c = build(q, Some(snapshot), Shape::Count, now)?;
            let n: i64 = tx
                .prepare_cached(&c.text)
                .and_then(|mut s| s.query_row(params_from_iter(c.params.iter()), |r| r.get(0)))
                .map_err(sql_err)?;
            Some(u64::try_from(n).unwrap_or(0))
        }
    };
    tx.finish().map_err(sql_err)?;
    Ok(SearchPage {
        matches,
        total,
        snapshot_seq: snapshot,
    })
}

pub(crate) fn explain(conn: &mut Connection, q: &SearchQuery) -> Result<Vec<String>, StoreError> {
    let sql = build(
        q,
        Some(q.snapshot_seq.unwrap_or(i64::MAX)),
        Shape::Page,
        crate::now_micros(),
    )?;
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text))
        .map_err(sql_err)?;
    stmt.query_map(params_from_iter(sql.params.iter()), |r| {
        r.get::<_, String>(3)
    })
    .and_then(Iterator::collect)
    .map_err(sql_err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use carelayer_store::{Clause, Predicate, SearchQuery};
    use rusqlite::{Connection, StatementStatus};

    use crate::search::{Shape, build};
    use crate::{SqliteOptions, configure};

    /// A cached page statement runs again with new bindings (each search
    /// binds its own snapshot) without SQLite re-parsing and re-planning
    /// it: it did on every run while the page size was bound (`LIMIT ?`).
    #[test]
    fn cached_search_statements_are_never_reprepared() {
        let mut conn = Connection::open_in_memory().unwrap();
        configure(&conn, &SqliteOptions::default(), true).unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let q = SearchQuery {
            resource_types: vec!["Observation".into()],
            clauses: vec![Clause {
                any_of: vec![Predicate::PatientKey("pat-1".into())],
            }],
            count: 10,
            ..SearchQuery::default()
        };
        for (snapshot, offset) in [(5, 0), (6, 0), (7, 10), (8, 10)] {
            let q = SearchQuery {
                offset,
                snapshot_seq: Some(snapshot),
                ..q.clone()
            };
            super::search(&mut conn, &q).unwrap();
        }
        for offset in [0, 10] {
            let q = SearchQuery {
                offset,
                ..q.clone()
            };
            let page = build(&q, Some(1), Shape::Page, 0).unwrap();
            let stmt = conn.prepare_cached(&page.text).unwrap();
            assert_eq!(
                stmt.get_status(StatementStatus::RePrepare),
                0,
                "{}",
                page.text
            );
        }
    }

    /// The build's `SQLITE_MAX_MMAP_SIZE` (.cargo/config.toml) lets a
    /// connection map far more than SQLite's default 2 GiB cap.
    #[test]
    fn connections_map_the_whole_database() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("m.db")).unwrap();
        let options = SqliteOptions::default();
        configure(&conn, &options, false).unwrap();
        let mapped: i64 = conn
            .query_row("PRAGMA mmap_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mapped, options.mmap_bytes);
        assert!(mapped > 2 << 30);
    }

    /// After a stall every read goes to the blocking pool for a while, then
    /// back to the calling task; a read that did not stall changes nothing.
    #[tokio::test]
    async fn a_stall_sends_reads_to_the_pool_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        // Readers open read-only: the file must exist.
        Connection::open(dir.path().join("c.db"))
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x)")
            .unwrap();
        let pool = std::sync::Arc::new(super::ReaderPool::new(
            dir.path().join("c.db"),
            SqliteOptions::default(),
        ));
        assert!(!pool.pooled_now());
        pool.note_slow();
        assert!(pool.pooled_now());
        // Reads still answer while pooled.
        let one: i64 = pool
            .run_in_place(|conn| {
                conn.query_row("SELECT 1", [], |r| r.get(0))
                    .map_err(super::sql_err)
            })
            .await
            .unwrap();
        assert_eq!(one, 1);
        pool.pooled_until
            .store(pool.now_micros(), std::sync::atomic::Ordering::Relaxed);
        assert!(!pool.pooled_now());
        pool.run_in_place(|conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(super::sql_err)
        })
        .await
        .unwrap();
        assert!(!pool.pooled_now(), "a quick read does not pool");
    }
}
