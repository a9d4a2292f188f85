//! carelayer-store-sqlite: the embedded default backend of the `Store` trait.
//!
//! # Layout
//! - [`SqliteStore`] / [`SqliteOptions`]: open a database file (created and
//!   migrated on open), implement [`carelayer_store::Store`], plus
//!   [`SqliteStore::explain`] to show the plan a search gets.
//! - `schema`: the migrations this crate owns (`schema_version` table) and the
//!   table shapes, with the reasons for them.
//! - `writer`: the one writer thread; group commit of queued write sets and
//!   audit appends in one transaction (no per-job savepoints); the in-memory
//!   audit chain head; deferred audit work (read-audit entries waiting in the
//!   journal, entries' query rows), written in bulk and flushed before
//!   anything reads the ledger.
//! - `bulk`: bulk loads that put off their secondary indexes and build
//!   them when they end (or at the next open, after a crash).
//! - `journal`: the append-only file read-audit entries wait in, and its
//!   recovery at open.
//! - `audit`, `audit_index`: the ledger's queries, and its query index
//!   (postings per flush) with search over it.
//! - `read`: the reader connection pool and the read queries.
//! - `search`: `SearchQuery` → SQL over the index tables (bound parameters only).
//! - `error`: rusqlite errors → `StoreError`.
//!
//! # Durability
//! WAL mode with `synchronous=FULL` by default: a commit acknowledged to a
//! client has its WAL frames fsynced, so it survives power loss as well as a
//! process kill. `synchronous=NORMAL` under WAL would survive `kill -9` (the WAL
//! is written before COMMIT returns) but could lose the last transactions on
//! power loss; it is available as [`Synchronous::Normal`] for bulk loads and
//! benchmarks, never the default. Group commit makes FULL affordable: one
//! fsync covers every job queued while the previous batch was committing.
//!
//! # Concurrency
//! Writes (resource write sets and audit appends) go to one writer thread over
//! a channel and are answered through a oneshot after the batch commits.
//! Reads run on a pool of read-only connections, on the calling task:
//! lookups by key always (`read::ReaderPool::run_in_place`), searches and
//! history while they stay within a budget, past which they are
//! interrupted and run again via `spawn_blocking`
//! (`read::ReaderPool::run_budgeted`); WAL lets them proceed while the
//! writer commits. A third thread checkpoints the WAL
//! so the writer never stalls on it. If the writer thread dies every call
//! fails with `Unavailable` instead of hanging (its reply senders drop).
//!
//! # Planner statistics
//! A fresh database gets seeded `sqlite_stat1` rows (see `schema`) so that
//! searches are driven from the index tables from the first request rather
//! than by walking every resource of a type; [`SqliteStore::explain`] shows
//! the plans.

mod audit;
mod audit_index;
mod bulk;

/// How an index build runs after a bulk load (for measurements that must
/// build the same way: `carelayer bench --floor`).
pub use bulk::build_pragmas as index_build_pragmas;
mod error;
mod journal;
mod read;
mod schema;
mod search;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use carelayer_audit::{AuditRecord, ChainHead, Checkpoint, LedgerRow};
use carelayer_store::{
    AuditQuery, CommitReceipt, HistoryQuery, RawLedgerRow, SearchPage, SearchQuery, Store,
    StoreError, StoredResource, WriteSet,
};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::error::{gone, sql_err};
use crate::read::ReaderPool;
use crate::writer::Job;

/// The `synchronous` pragma for the write connection (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync on every commit: acknowledged means durable across power loss.
    #[default]
    Full,
    /// Survives process kill, not power loss. Bulk loads and benchmarks only.
    Normal,
}

/// When a batch holding only audit appends (read, search and denial
/// entries; write sets always carry their own entries) is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditSync {
    /// Written to the audit journal (see `journal`) before the request is
    /// answered, so it survives a process kill at once, and fsynced by the
    /// checkpoint thread within 50 ms (its checkpoint interval): a power cut
    /// can lose at most that much of the read audit trail, never a write or
    /// its entries. Reads then wait for no fsync.
    #[default]
    Checkpoint,
    /// fsynced before the request is answered, like writes.
    Commit,
}

/// Tuning knobs; the defaults suit a small server.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Reader connections (and the cap on concurrent reads).
    pub readers: usize,
    /// Most jobs folded into one write transaction.
    pub max_batch: usize,
    /// How long the writer waits for more read-audit appends before
    /// committing a small batch of them while other requests are in flight
    /// (zero: never wait). Only when the audit journal is not in use (another
    /// process holds it): journaled appends never reach the writer. See
    /// `writer::GroupCommit`.
    pub audit_group_window: Duration,
    /// How long a connection waits on a lock held by another process.
    pub busy_timeout: Duration,
    pub synchronous: Synchronous,
    /// Durability of audit-only batches (see [`AuditSync`]).
    pub audit_sync: AuditSync,
    /// Page cache per connection, KiB.
    pub cache_kib: i64,
    /// How much of the database file each connection memory-maps
    /// (`PRAGMA mmap_size`; 0: none). Mapped pages are read in place: no
    /// `pread` copy and no page-cache churn per page, which at 1.5 M
    /// resources was 40% of a read's CPU. Writes still go through the file
    /// (SQLite maps read-only). The price, as SQLite documents: an I/O
    /// error on a mapped page is a signal that ends the process rather
    /// than an error returned to one request.
    pub mmap_bytes: i64,
    /// Longest a search or history read runs on the request's own task
    /// before it is interrupted and run again on the blocking pool (see
    /// `read::ReaderPool::run_budgeted`). Zero hands every one that reaches
    /// SQLite's first progress check over.
    pub in_place_budget: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self {
            readers: cores * 2 + 2,
            max_batch: 512,
            audit_group_window: Duration::from_micros(500),
            busy_timeout: Duration::from_secs(5),
            synchronous: Synchronous::Full,
            audit_sync: AuditSync::Checkpoint,
            cache_kib: 64 * 1024,
            // 1 TiB: the whole file, for any database this machine holds
            // (the build's `SQLITE_MAX_MMAP_SIZE`, .cargo/config.toml).
            mmap_bytes: 1 << 40,
            in_place_budget: Duration::from_millis(1),
        }
    }
}

/// The embedded SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    /// Submissions to the writer thread. Bounded, so an overloaded writer
    /// pushes back on callers (their `send` waits) instead of queueing
    /// without limit; the writer thread receives with `blocking_recv`.
    tx: tokio::sync::mpsc::Sender<Job>,
    /// The audit chain: read-audit appends journal their entries through it
    /// on the caller's task (see `writer::Chain`).
    chain: writer::SharedChain,
    /// Appends waiting to join one journal write (see `writer::AppendQueue`).
    appends: writer::AppendQueue,
    /// Raised when entries were journaled without an fsync (see
    /// [`AuditSync::Checkpoint`]).
    unsynced: Option<Arc<AtomicBool>>,
    /// fsync the journal before answering an append ([`AuditSync::Commit`]).
    journal_fsync: bool,
    /// Set by `close`: refuse new work before flushing what is queued.
    closed: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<ReaderPool>,
    /// Dropping the sender stops the checkpoint thread.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Microseconds since the Unix epoch (for `ap` on dates).
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path`, migrate it, start the
    /// writer thread and the reader pool.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the file cannot be opened or is locked;
    /// [`StoreError::Other`] if the schema is newer than this build.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(sql_err)?;
        configure(&conn, &options, true)?;
        schema::migrate(&mut conn)?;
        schema::seed_planner_stats(&mut conn)?;
        // A bulk load whose process died before its end left its indexes
        // unbuilt: build them before serving anything.
        let built = bulk::build_deferred(&conn)?;
        if built > 0 {
            tracing::warn!(
                indexes = built,
                "built the secondary indexes an unfinished bulk load had dropped"
            );
        }
        let mut head = writer::load_head(&conn)?;
        // Entries a crash left in the journal, then index rows it kept from
        // the deferred index (see `writer`).
        let journal;
        (journal, head.seq, head.hash) = journal::Journal::open(path, &conn, head.seq, head.hash)?;
        let segment = journal.as_ref().map(journal::Journal::current_segment);
        {
            // One transaction: a block's postings and its range go together.
            let tx = conn.unchecked_transaction().map_err(error::sql_err)?;
            audit_index::index_from_ledger(&tx)?;
            tx.commit().map_err(error::sql_err)?;
        }
        let readers = Arc::new(ReaderPool::new(path.to_path_buf(), options.clone()));
        // Open the readers now so a bad path fails here, not on first read.
        readers.warm()?;
        // Raised after audit entries were journaled or committed without an
        // fsync; the checkpoint thread fsyncs the journal and WAL, clears it.
        let unsynced = (options.synchronous == Synchronous::Full
            && options.audit_sync == AuditSync::Checkpoint)
            .then(|| Arc::new(AtomicBool::new(false)));
        let max_batch = options.max_batch.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(max_batch.saturating_mul(4));
        let deferred_oldest = Arc::new(AtomicI64::new(0));
        let checkpointer = start_checkpointer(
            path,
            segment,
            &options,
            unsynced.clone(),
            DeferredTicker {
                writer: tx.downgrade(),
                oldest: deferred_oldest.clone(),
            },
        )?;
        let chain = Arc::new(tokio::sync::Mutex::new(writer::Chain::new(
            head,
            journal,
            deferred_oldest,
        )));
        let journal_fsync =
            options.synchronous == Synchronous::Full && options.audit_sync == AuditSync::Commit;
        let wal = writer::WalLimit {
            path: wal_path(path),
            max_bytes: WAL_RESTART_BYTES,
        };
        let group = writer::GroupCommit {
            max_batch,
            window: options.audit_group_window,
        };
        let handle = std::thread::Builder::new()
            .name("carelayer-sqlite-writer".into())
            .spawn({
                let chain = chain.clone();
                let unsynced = unsynced.clone();
                move || writer::run(conn, rx, chain, group, unsynced, wal)
            })
            .map_err(|e| StoreError::Other(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            tx,
            chain,
            appends: writer::AppendQueue::default(),
            unsynced,
            journal_fsync,
            closed: AtomicBool::new(false),
            writer: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(Some(checkpointer)),
            readers,
        })
    }

    /// `EXPLAIN QUERY PLAN` of the page statement `search` would run, one line
    /// per plan row (for tests asserting that searches use indexes).
    ///
    /// # Errors
    /// As [`Store::search`].
    pub async fn explain(&self, query: &SearchQuery) -> Result<Vec<String>, StoreError> {
        let query = query.clone();
        self.readers
            .run(move |conn| read::explain(conn, &query))
            .await
    }

    /// How many searches and history reads outgrew
    /// `SqliteOptions::in_place_budget` and were run again on the blocking
    /// pool since the store opened: many means the budget is too small for
    /// this data, and each of them paid the budget twice over.
    #[must_use]
    pub fn reads_handed_off(&self) -> u64 {
        self.readers.handed_off()
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(gone());
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Wait until every audit entry appended before this call is in the
    /// ledger and index tables (see "Deferred audit work" in `writer`).
    async fn ledger_barrier(&self) -> Result<(), StoreError> {
        self.submit(Job::Barrier).await
    }
}

/// Pragmas for every connection. Why each:
/// - WAL: readers never block the writer nor each other;
/// - `synchronous` (writer only matters): see the crate docs;
/// - `busy_timeout`: wait for another process instead of failing at once;
/// - `temp_store=MEMORY`: sorts for ORDER BY never touch disk;
/// - readers are `query_only` so a bug cannot write outside the writer.
pub(crate) fn configure(
    conn: &Connection,
    o: &SqliteOptions,
    writer: bool,
) -> Result<(), StoreError> {
    conn.busy_timeout(o.busy_timeout).map_err(sql_err)?;
    if writer {
        let _: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(sql_err)?;
        let sync = match o.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        // Checkpoints run on their own thread (see `start_checkpointer`).
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync}; PRAGMA journal_size_limit=67108864; \
             PRAGMA wal_autocheckpoint=0;"
        ))
        .map_err(sql_err)?;
    } else {
        conn.execute_batch("PRAGMA query_only=ON")
            .map_err(sql_err)?;
    }
    // Readers are many; each gets a quarter of the writer's cache.
    let cache = if writer { o.cache_kib } else { o.cache_kib / 4 };
    conn.execute_batch(&format!(
        "PRAGMA temp_store=MEMORY; PRAGMA cache_size=-{}; PRAGMA foreign_keys=OFF; \
         PRAGMA mmap_size={};",
        cache.max(1024),
        o.mmap_bytes.max(0)
    ))
    .map_err(sql_err)?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(())
}

/// Most keys a `read_current_many` looks up on the calling task
/// (`read::ReaderPool::run_in_place`); more go to the blocking pool.
const IN_PLACE_KEYS: usize = 64;

/// How often the checkpointer copies the WAL back. Every commit's pages are
/// in the WAL until then; 50 ms keeps it a few MB under full write load
/// while a page rewritten by many commits in the interval is copied once.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// Checkpoint the WAL on its own thread and connection.
///
/// Why: with SQLite's autocheckpoint the commit that crosses the threshold
/// also copies the WAL back into the database, on the single writer thread,
/// stalling every queued write. Here the writer never checkpoints
/// (`wal_autocheckpoint=0`); this thread runs PASSIVE checkpoints (which
/// never block the writer or readers) every [`CHECKPOINT_EVERY`], on another core.
fn start_checkpointer(
    path: &Path,
    journal: Option<journal::CurrentSegment>,
    options: &SqliteOptions,
    unsynced: Option<Arc<AtomicBool>>,
    ticker: DeferredTicker,
) -> Result<(mpsc::Sender<()>, JoinHandle<()>), StoreError> {
    let conn = Connection::open_with_flags(path, reader_flags()).map_err(sql_err)?;
    let wal = wal_path(path);
    // fsync the journal and the WAL if the writer appended audit entries
    // without an fsync (to the journal, or in a relaxed commit).
    let sync_wal = move || {
        if let Some(flag) = &unsynced
            && flag.swap(false, Ordering::AcqRel)
        {
            // Clone the handle out: never fsync under the segment's lock.
            let segment = journal
                .as_ref()
                .and_then(|s| s.lock().ok().map(|f| Arc::clone(&f)));
            let synced = segment
                .map_or(Ok(()), |f| f.sync_data())
                .and_then(|()| std::fs::File::open(&wal).and_then(|f| f.sync_data()));
            if let Err(e) = synced {
                // Try again next round rather than lose the obligation.
                flag.store(true, Ordering::Release);
                tracing::warn!(error = %e, "cannot fsync the WAL for audit entries");
            }
        }
    };
    conn.busy_timeout(options.busy_timeout).map_err(sql_err)?;
    let (stop, stopped) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("carelayer-sqlite-checkpoint".into())
        .spawn(move || {
            loop {
                match stopped.recv_timeout(CHECKPOINT_EVERY) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // Stop asked (or the store dropped): final flush, then exit.
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        sync_wal();
                        let _ = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
                        return;
                    }
                }
                sync_wal();
                ticker.tick();
                // (busy, WAL frames, frames checkpointed)
                let state: Result<(i64, i64, i64), _> =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    });
                if let Err(e) = state {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        })
        .map_err(|e| StoreError::Other(format!("cannot start the checkpoint thread: {e}")))?;
    Ok((stop, handle))
}

/// Asks the writer to flush deferred audit work once its oldest entry or
/// row has waited [`writer::DEFERRED_LAG`] (run on the checkpoint thread's
/// clock).
struct DeferredTicker {
    /// Weak, so the checkpoint thread does not keep the writer's channel
    /// open after the store is gone.
    writer: tokio::sync::mpsc::WeakSender<Job>,
    oldest: Arc<AtomicI64>,
}

impl DeferredTicker {
    fn tick(&self) {
        let oldest = self.oldest.load(Ordering::Acquire);
        let lag = i64::try_from(writer::DEFERRED_LAG.as_micros()).unwrap_or(i64::MAX);
        if oldest != 0
            && now_micros().saturating_sub(oldest) >= lag
            && let Some(tx) = self.writer.upgrade()
        {
            // A full queue means the writer is busy and will flush on its own.
            let _ = tx.try_send(Job::Tick);
        }
    }
}

/// The WAL size past which the writer restarts it (see `writer::WalLimit`).
const WAL_RESTART_BYTES: u64 = 256 * 1024 * 1024;

/// `PATH-wal`, SQLite's WAL file for the database at `path`.
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Flags for reader connections: read/write open (WAL readers need the shm
/// file writable) but `query_only`.
pub(crate) fn reader_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

#[async_trait]
impl Store for SqliteStore {
    async fn read_current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        let (t, i) = (resource_type.to_owned(), id.to_owned());
        self.readers
            .run_in_place(move |conn| read::current(conn, &t, &i))
            .await
    }

    async fn read_current_many(
        &self,
        keys: &[(String, String)],
    ) -> Result<Vec<Option<StoredResource>>, StoreError> {
        // A few keys are a few seeks; an import batch's hundreds go to the
        // blocking pool.
        let in_place = keys.len() <= IN_PLACE_KEYS;
        let keys = keys.to_vec();
        let lookup = move |conn: &mut Connection| read::current_many(conn, &keys);
        if in_place {
            self.readers.run_in_place(lookup).await
        } else {
            self.readers.run(lookup).await
        }
    }

    async fn read_version(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredResource>, StoreError> {
        let (t, i) = (resource_type.to_owned(), id.to_owned());
        self.readers
            .run_in_place(move |conn| read::version(conn, &t, &i, version))
            .await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<StoredResource>, StoreError> {
        let q = query.clone();
        self.readers
            .run_budgeted(move |conn| read::history(conn, &q))
            .await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let q = query.clone();
        self.readers
            .run_budgeted(move |conn| read::search(conn, &q))
            .await
    }

    async fn commit(&self, writes: WriteSet) -> Result<CommitReceipt, StoreError> {
        self.submit(|reply| Job::Commit(writes, reply)).await
    }

    async fn append_audit(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(gone());
        }
        // On this task, no hop to the writer thread (see `journal`); the
        // canonical bytes are made before the lock is taken.
        let prepared: Vec<writer::Prepared> = entries.iter().map(writer::Prepared::of).collect();
        let journaled = self
            .appends
            .journal(
                &self.chain,
                prepared,
                self.unsynced.as_deref(),
                self.journal_fsync,
            )
            .await?;
        match journaled {
            writer::Journaled::Done { sync, flush_due } => {
                if flush_due {
                    // A full queue means the writer is busy and will flush
                    // after its batch anyway.
                    let _ = self.tx.try_send(Job::Tick);
                }
                if let Some(file) = sync {
                    tokio::task::spawn_blocking(move || file.sync_data())
                        .await
                        .map_err(|e| StoreError::Other(format!("journal fsync task failed: {e}")))?
                        .map_err(|e| {
                            StoreError::Unavailable(format!("cannot fsync the audit journal: {e}"))
                        })?;
                }
                Ok(())
            }
            writer::Journaled::NoJournal => self.submit(|reply| Job::Audit(entries, reply)).await,
        }
    }

    async fn audit_rows(&self, after_seq: i64, limit: usize) -> Result<Vec<LedgerRow>, StoreError> {
        self.ledger_barrier().await?;
        self.readers
            .run(move |conn| audit::rows(conn, after_seq, limit))
            .await
    }

    async fn audit_search(&self, query: &AuditQuery) -> Result<Vec<LedgerRow>, StoreError> {
        // Every entry appended before this search is in the tables first.
        self.ledger_barrier().await?;
        let q = query.clone();
        self.readers
            .run(move |conn| audit_index::search(conn, &q))
            .await
    }

    async fn audit_appended_seq(&self) -> Result<i64, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(gone());
        }
        // The chain's head is assigned as each entry is answered; no barrier.
        Ok(self.chain.lock().await.head.seq)
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        self.ledger_barrier().await?;
        self.readers.run(|conn| audit::head(conn)).await
    }

    async fn audit_raw_rows(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<RawLedgerRow>, StoreError> {
        self.ledger_barrier().await?;
        self.readers
            .run(move |conn| audit::raw_rows(conn, after_seq, limit))
            .await
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(gone());
        }
        let (path, cp) = (self.path.clone(), checkpoint.clone());
        tokio::task::spawn_blocking(move || audit::save_checkpoint(&path, &cp))
            .await
            .map_err(|e| StoreError::Other(format!("checkpoint task failed: {e}")))?
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.readers.run(|conn| audit::checkpoints(conn)).await
    }

    async fn begin_bulk_load(&self, expected: u64) -> Result<(), StoreError> {
        self.submit(|reply| Job::Load(Some(expected), reply)).await
    }

    async fn end_bulk_load(&self) -> Result<(), StoreError> {
        self.submit(|reply| Job::Load(None, reply)).await
    }

    async fn count(&self, resource_type: Option<&str>) -> Result<u64, StoreError> {
        let t = resource_type.map(str::to_owned);
        self.readers
            .run(move |conn| read::count(conn, t.as_deref()))
            .await
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (reply, done) = oneshot::channel();
        if self.tx.send(Job::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            // The thread has replied and is returning; joining is immediate.
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut c| c.take());
        if let Some((stop, h)) = checkpointer {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        self.readers.close();
    }
}
