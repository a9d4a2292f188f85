//! The single writer thread and its group commit.
//!
//! SQLite allows one writer at a time, and every commit in `synchronous=FULL`
//! costs an fsync. So one thread owns the write connection, drains whatever
//! is queued (up to `max_batch` jobs), runs the batch as ONE transaction,
//! commits once, then answers every job. A job whose precondition fails is
//! skipped (it has written nothing yet); see `run_batch` for the rare job
//! that fails mid-write. Throughput then
//! scales with the number of waiting clients instead of being capped at one
//! fsync per request.
//!
//! The audit chain (head, journal, deferred work) is a [`Chain`] behind an
//! async mutex shared with the store: read-audit appends chain and journal
//! their entries on the request's own task; this thread locks the chain for
//! each batch it commits (its entries follow everything chained before), so
//! the chain's order is the lock's order. A rolled-back attempt or a failed
//! COMMIT restores the batch's starting head (still under the lock, so no
//! entry was chained after it meanwhile).
//!
//! # Deferred audit work
//! Every entry gets its seq and chain hash when its request is answered;
//! writing it into the tables can wait, because nothing reads the ledger
//! without first sending a [`Job::Barrier`]. Two things wait in the
//! [`Chain`]:
//! - read-audit entries are appended to the audit journal (see
//!   [`crate::journal`]) instead of committed, and move into `audit_ledger`
//!   in bulk; a write set's transaction takes them first, since its own
//!   entries follow them in the chain;
//! - every entry's query columns, which become the block's postings (see
//!   `crate::audit_index`).
//!
//! Why: each commit writes whole pages to the WAL and makes every reader
//! connection drop its page cache, and a hop to this thread waits for it to
//! be scheduled; committing read audit per request cost about a third of
//! read throughput. Both wait until [`DEFERRED_CHUNK`] entries or rows wait,
//! or the oldest has waited [`DEFERRED_LAG`] (the checkpoint thread sends a
//! [`Job::Tick`]), or a barrier arrives; then one transaction here writes
//! them all, while appends go on into a fresh journal segment. A barrier
//! therefore makes every entry appended before it visible to audit queries,
//! the head and verification. After a crash, `open` moves the journal's
//! entries into the ledger ([`crate::journal::Journal::open`]) and
//! re-derives missing index rows from the ledger
//! ([`crate::audit::index_from_ledger`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use carelayer_audit::{AuditRecord, GENESIS_HASH, canonical_bytes, chain_hash_bytes};
use carelayer_fhir::search::{IndexEntry, IndexValue};
use carelayer_store::{CommitReceipt, Precondition, ResourceWrite, StoreError, WriteSet};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc::Receiver;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::oneshot;

use crate::error::sql_err;
use crate::journal::{Journal, JournalEntry, Sealed, insert_into_ledger};
use crate::search::{Shape, build};

/// Work for the writer.
pub(crate) enum Job {
    Commit(WriteSet, oneshot::Sender<Result<CommitReceipt, StoreError>>),
    Audit(Vec<AuditRecord>, oneshot::Sender<Result<(), StoreError>>),
    /// Write every deferred entry and index row appended before this job,
    /// then answer (sent before anything reads the ledger).
    Barrier(oneshot::Sender<Result<(), StoreError>>),
    /// The oldest deferred entry or row has waited [`DEFERRED_LAG`]: write
    /// them out (sent by the checkpoint thread, so an idle store keeps
    /// nothing waiting).
    Tick,
    /// A bulk load of about this many resources starts (`Some`) or ends
    /// (`None`): see `crate::bulk`. Run after the batch it arrives with.
    Load(Option<u64>, oneshot::Sender<Result<(), StoreError>>),
    /// Finish what is queued before this, then stop.
    Close(oneshot::Sender<()>),
}

/// Deferred entries or index rows written in one transaction once this
/// many wait. Large on purpose: in WAL mode every commit makes each reader
/// connection drop its page cache *and its mapping of the database file*
/// at its next transaction, and then fault every page it touches back in.
/// During a read-only load the audit's commits are the only ones; several a
/// second made those faults about half of read audit's cost (92% of the
/// bench's page faults were readers re-mapping B-tree pages after a commit;
/// docs/benchmarks.md, session 6). Memory: about 1 KiB an entry.
pub(crate) const DEFERRED_CHUNK: usize = 65_536;

/// The longest a deferred entry or row waits when fewer than
/// [`DEFERRED_CHUNK`] are queued (the checkpoint thread asks for a flush
/// after this). Nothing waits on it: the entries are already in the
/// journal, and anything that reads the ledger flushes first.
pub(crate) const DEFERRED_LAG: Duration = Duration::from_secs(5);

/// A write set's transaction inserts the journaled entries before its own;
/// past this many it flushes them first instead, so it does not hold the
/// chain (and every read's append) for the whole of a large insert.
const FLUSH_BEFORE_WRITES: usize = 1024;

/// Past this many journaled entries waiting (flushes keep failing), audit
/// appends go through the ledger table again, so they fail visibly rather
/// than pile up in memory.
const MAX_WAITING_ENTRIES: usize = 4 * DEFERRED_CHUNK;

/// The query columns of one ledger entry (see `crate::audit_index`).
pub(crate) struct IndexRow {
    pub(crate) seq: i64,
    pub(crate) recorded_at: i64,
    pub(crate) patient: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) org: Option<String>,
    pub(crate) client: Option<String>,
    pub(crate) outcome: &'static str,
    pub(crate) break_glass: bool,
}

impl IndexRow {
    pub(crate) fn of(seq: i64, record: &AuditRecord) -> Self {
        Self {
            seq,
            recorded_at: record.recorded_at,
            patient: record.patient.clone(),
            user: record.agent.user.clone(),
            org: record.agent.org.clone(),
            client: record.agent.client.clone(),
            outcome: record.outcome.code(),
            break_glass: record.is_break_glass(),
        }
    }
}

/// The audit chain: its head, the journal, and the audit work chained and
/// answered but not yet in the tables (see the module docs).
pub(crate) struct Chain {
    pub(crate) head: Head,
    /// `None` when another process owns the journal or it failed: audit
    /// appends then go to this thread and commit to the ledger table like
    /// write sets.
    journal: Option<Journal>,
    /// Journaled entries not yet in `audit_ledger`, in seq order.
    entries: Vec<JournalEntry>,
    /// Sealed journal segments whose entries are on their way into the
    /// ledger (deleted once they durably are).
    sealed: Vec<Sealed>,
    /// Query columns of entries (in the ledger or in `entries`) not yet in
    /// the postings.
    rows: Vec<IndexRow>,
    /// A flush failed and its rows were dropped: the next flush re-derives
    /// every missing row from the ledger instead.
    from_ledger: bool,
    /// When the oldest waiting entry or row was appended (µs since the
    /// epoch; 0 when none wait), shared with the checkpoint thread.
    oldest: Arc<AtomicI64>,
    /// Frame buffer, reused.
    frames: Vec<u8>,
}

/// An audit record's canonical bytes and index row, made before taking the
/// chain's lock (only the seq and the hash need the lock).
pub(crate) struct Prepared {
    bytes: Vec<u8>,
    row: IndexRow,
}

impl Prepared {
    pub(crate) fn of(record: &AuditRecord) -> Self {
        Self {
            bytes: canonical_bytes(record),
            row: IndexRow::of(0, record),
        }
    }
}

/// The chain, shared by the store's tasks and the writer thread.
pub(crate) type SharedChain = Arc<tokio::sync::Mutex<Chain>>;

/// Read-audit appends waiting for the chain's lock: whichever task gets the
/// lock chains every waiting append and writes them to the journal with one
/// `write` (group commit of the journal). Why: the `write` was the largest
/// part of read audit left on the request's path (a system call each, about
/// 2% of all CPU at 10,000 reads/s on two cores).
#[derive(Default)]
pub(crate) struct AppendQueue(std::sync::Mutex<Vec<WaitingAppend>>);

struct WaitingAppend {
    prepared: Vec<Prepared>,
    reply: oneshot::Sender<Result<Journaled, StoreError>>,
}

impl AppendQueue {
    /// Chain and journal `prepared`, alone or with the appends waiting
    /// beside it (see [`Chain::journal`] for `unsynced` and `fsync`).
    ///
    /// # Errors
    /// The journal write failed (every append in that write gets the error).
    pub(crate) async fn journal(
        &self,
        chain: &SharedChain,
        prepared: Vec<Prepared>,
        unsynced: Option<&AtomicBool>,
        fsync: bool,
    ) -> Result<Journaled, StoreError> {
        let (reply, mut answer) = oneshot::channel();
        self.waiting()?.push(WaitingAppend { prepared, reply });
        // Let the other tasks on this worker reach their own appends first,
        // so that one write carries them all.
        tokio::task::yield_now().await;
        let lost = || StoreError::Other("an audit append lost its group write".into());
        tokio::select! {
            biased;
            done = &mut answer => return done.map_err(|_| lost())?,
            mut guard = chain.lock() => {
                // Ours may have gone out with the previous holder's write.
                if let Ok(done) = answer.try_recv() {
                    return done;
                }
                let waiting = std::mem::take(&mut *self.waiting()?);
                let mut all = Vec::new();
                let mut replies = Vec::with_capacity(waiting.len());
                for w in waiting {
                    all.extend(w.prepared);
                    replies.push(w.reply);
                }
                let result = guard.journal(all, unsynced, fsync);
                drop(guard);
                for r in replies {
                    // A waiter that went away (its request was dropped) no
                    // longer needs the answer; its entries are chained.
                    let _ = r.send(match &result {
                        Ok(j) => Ok(j.clone()),
                        Err(e) => Err(clone_err(e)),
                    });
                }
            }
        }
        answer.await.map_err(|_| lost())?
    }

    fn waiting(&self) -> Result<std::sync::MutexGuard<'_, Vec<WaitingAppend>>, StoreError> {
        self.0
            .lock()
            .map_err(|_| StoreError::Other("the audit append queue is poisoned".into()))
    }
}

/// What became of an append on the request's task.
#[derive(Clone)]
pub(crate) enum Journaled {
    /// Chained and written to the journal. `sync`: the segment to fsync
    /// before answering (`AuditSync::Commit`); `flush_due`: enough entries
    /// wait that the writer should move them now.
    Done {
        sync: Option<Arc<std::fs::File>>,
        flush_due: bool,
    },
    /// No usable journal: send the entries to the writer thread.
    NoJournal,
}

/// What a flush took out of the chain (under its lock) to write.
struct FlushWork {
    entries: Vec<JournalEntry>,
    sealed: Vec<Sealed>,
    rows: Vec<IndexRow>,
    from_ledger: bool,
}

impl Chain {
    pub(crate) fn new(head: Head, journal: Option<Journal>, oldest: Arc<AtomicI64>) -> Self {
        Self {
            head,
            journal,
            entries: Vec::new(),
            sealed: Vec::new(),
            rows: Vec::new(),
            from_ledger: false,
            oldest,
            frames: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.rows.is_empty()
            && self.sealed.is_empty()
            && !self.from_ledger
            && self.journal.as_ref().is_none_or(Journal::is_empty)
    }

    fn note_waiting(&self) {
        if self.oldest.load(Ordering::Acquire) == 0 {
            self.oldest.store(crate::now_micros(), Ordering::Release);
        }
    }

    fn stage_rows(&mut self, rows: Vec<IndexRow>) {
        if rows.is_empty() {
            return;
        }
        self.note_waiting();
        self.rows.extend(rows);
    }

    fn wants_flush(&self) -> bool {
        self.rows.len().max(self.entries.len()) >= DEFERRED_CHUNK
    }

    /// Chain `records` after the head and append them to the journal (on
    /// the caller's task, under the chain's lock). `unsynced`: raised for
    /// the checkpoint thread to fsync the segment (`AuditSync::Checkpoint`);
    /// `fsync`: the caller fsyncs it before answering instead.
    ///
    /// # Errors
    /// The journal write failed: nothing was chained.
    pub(crate) fn journal(
        &mut self,
        prepared: Vec<Prepared>,
        unsynced: Option<&AtomicBool>,
        fsync: bool,
    ) -> Result<Journaled, StoreError> {
        if self.journal.is_none() || self.entries.len() >= MAX_WAITING_ENTRIES {
            return Ok(Journaled::NoJournal);
        }
        let start = self.head;
        let mut entries = Vec::with_capacity(prepared.len());
        let mut rows = Vec::with_capacity(prepared.len());
        self.frames.clear();
        for p in prepared {
            let (entry, row) = self.head.link(p);
            if let Err(e) = crate::journal::encode(&entry, &mut self.frames) {
                self.head = start;
                return Err(e);
            }
            rows.push(row);
            entries.push(entry);
        }
        let Some(journal) = self.journal.as_mut() else {
            self.head = start;
            return Ok(Journaled::NoJournal);
        };
        if let Err((e, unusable)) = journal.append(&self.frames) {
            self.head = start;
            tracing::error!(error = %e, path = %journal.path().display(), "cannot write the audit journal");
            if unusable {
                // Cutting back failed: never append after a torn frame.
                // What waits stays in memory and goes to the ledger table.
                self.journal = None;
            }
            return Err(StoreError::Unavailable(format!(
                "cannot write the audit journal: {e}"
            )));
        }
        let sync = fsync.then(|| journal.current_file());
        if !fsync && let Some(flag) = unsynced {
            flag.store(true, Ordering::Release);
        }
        self.note_waiting();
        self.entries.extend(entries);
        self.rows.extend(rows);
        Ok(Journaled::Done {
            sync,
            flush_due: self.wants_flush(),
        })
    }

    /// Take what waits, sealing the journal's segment so appends go on in a
    /// new one while the flush writes.
    fn take_for_flush(&mut self) -> FlushWork {
        if let Some(journal) = self.journal.as_mut() {
            match journal.seal() {
                Ok(Some(sealed)) => self.sealed.push(sealed),
                Ok(None) => {}
                Err(e) => {
                    // Keep appending to the current segment; it is sealed
                    // next time. Only its deletion waits.
                    tracing::warn!(error = %e, "cannot start a new audit journal segment");
                }
            }
        }
        FlushWork {
            entries: std::mem::take(&mut self.entries),
            sealed: std::mem::take(&mut self.sealed),
            rows: std::mem::take(&mut self.rows),
            from_ledger: std::mem::take(&mut self.from_ledger),
        }
    }

    /// A flush failed: its entries go back in front of any appended since
    /// (they are evidence), its segments wait for a later flush, and its
    /// rows are left to be re-derived from the ledger.
    fn flush_failed(&mut self, mut work: FlushWork) {
        work.entries.append(&mut self.entries);
        self.entries = work.entries;
        work.sealed.append(&mut self.sealed);
        self.sealed = work.sealed;
        self.rows.clear();
        self.from_ledger = true;
        self.oldest.store(crate::now_micros(), Ordering::Release);
    }

    fn flush_done(&mut self) {
        self.oldest.store(
            if self.is_empty() {
                0
            } else {
                crate::now_micros()
            },
            Ordering::Release,
        );
    }
}

/// Write everything that waits in the chain in one transaction, with the
/// chain unlocked (appends go on into a new journal segment meanwhile).
/// Sealed segments are deleted once their entries are durably in the ledger.
fn flush(conn: &Connection, chain: &SharedChain, sync: &mut SyncMode) -> Result<(), StoreError> {
    let work = {
        let mut guard = chain.blocking_lock();
        if guard.is_empty() {
            return Ok(());
        }
        guard.take_for_flush()
    };
    // What was appended to the sealed segments is on disk before its entries
    // count as moved (the checkpoint thread fsyncs only the current one).
    for sealed in &work.sealed {
        if let Err(e) = sealed.file.sync_data() {
            tracing::warn!(error = %e, path = %sealed.path.display(), "cannot fsync an audit journal segment");
        }
    }
    // Entries leave the journal only once durably in the ledger; index rows
    // alone are derived data, never worth an fsync.
    sync.set(conn, work.entries.is_empty());
    let result = conn
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(sql_err)
        .and_then(|()| insert_into_ledger(conn, &work.entries))
        .and_then(|()| {
            if work.from_ledger {
                crate::audit_index::index_from_ledger(conn)
            } else {
                crate::audit_index::index_entries(conn, &work.rows)
            }
        })
        .and_then(|()| conn.execute_batch("COMMIT").map_err(sql_err));
    sync.note_commit();
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let mut guard = chain.blocking_lock();
    match &result {
        Ok(()) => {
            for sealed in &work.sealed {
                if let Err(e) = std::fs::remove_file(&sealed.path) {
                    // Harmless: recovery skips entries the ledger has.
                    tracing::warn!(error = %e, path = %sealed.path.display(), "cannot delete an audit journal segment");
                }
            }
            guard.flush_done();
        }
        Err(_) => guard.flush_failed(work),
    }
    result
}

/// The ledger's chain head: last seq and its hash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub(crate) seq: i64,
    pub(crate) hash: [u8; 32],
}

impl Head {
    /// Chain one entry after this head and advance the head to it: the one
    /// place a seq and hash are assigned, whether the entry is journaled or
    /// committed with a write set. The stored bytes are exactly the hashed
    /// bytes (canonicalised once, in [`Prepared::of`]).
    fn link(&mut self, prepared: Prepared) -> (JournalEntry, IndexRow) {
        let Prepared { bytes, mut row } = prepared;
        let seq = self.seq + 1;
        let hash = chain_hash_bytes(&self.hash, &bytes);
        row.seq = seq;
        *self = Head { seq, hash };
        (JournalEntry { seq, bytes, hash }, row)
    }
}

/// Load the chain head from the last ledger row.
pub(crate) fn load_head(conn: &Connection) -> Result<Head, StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_ledger ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql_err)?;
    match row {
        None => Ok(Head {
            seq: 0,
            hash: GENESIS_HASH,
        }),
        Some((seq, hash)) => {
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Other(format!("audit row {seq}: hash is not 32 bytes")))?;
            Ok(Head { seq, hash })
        }
    }
}

/// The writer thread's body. Returns when a `Close` job is done or every
/// sender is gone.
///
/// `unsynced` (see [`crate::AuditSync::Checkpoint`]): batches of audit
/// appends alone go to the journal (or, without one, commit with
/// `synchronous=NORMAL`) without an fsync and raise the flag for the
/// checkpoint thread; any batch with a write set commits FULL.
/// `journal_fsync`: fsync the journal before answering (`AuditSync::Commit`).
pub(crate) fn run(
    conn: Connection,
    mut rx: Receiver<Job>,
    chain: SharedChain,
    group: GroupCommit,
    unsynced: Option<Arc<AtomicBool>>,
    wal: WalLimit,
) {
    let mut sync = SyncMode {
        relaxed: false,
        unsynced,
    };
    let mut batch: Vec<Job> = Vec::with_capacity(group.max_batch);
    let mut barriers = Vec::new();
    let mut loads = Vec::new();
    let mut bulk = crate::bulk::Loads::default();
    let mut last_batch = 0;
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        batch.push(first);
        let mut closing = None;
        while batch.len() < group.max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        group.gather(&mut rx, &mut batch, last_batch);
        last_batch = batch.len();
        // A Close job ends the batch: jobs before it are flushed; none follow
        // it because `close` stops new submissions first.
        if let Some(pos) = batch.iter().position(|j| matches!(j, Job::Close(_))) {
            let rest = batch.split_off(pos);
            for job in rest {
                if let Job::Close(reply) = job {
                    closing.get_or_insert(reply);
                }
            }
        }
        // Barriers and ticks write nothing themselves: answered after the
        // batch (which holds every job queued before them) and a flush.
        // Bulk-load steps run then too, in the order they came.
        let mut tick = false;
        if batch
            .iter()
            .any(|j| matches!(j, Job::Barrier(_) | Job::Tick | Job::Load(..)))
        {
            for job in std::mem::take(&mut batch) {
                match job {
                    Job::Barrier(reply) => barriers.push(reply),
                    Job::Tick => tick = true,
                    Job::Load(expected, reply) => loads.push((expected, reply)),
                    other => batch.push(other),
                }
            }
        }
        // Whether this round wrote to SQLite (journal appends do not).
        let mut committed = false;
        if !batch.is_empty() {
            let audit_only = batch.iter().all(|j| matches!(j, Job::Audit(..)));
            if chain.blocking_lock().entries.len() > FLUSH_BEFORE_WRITES
                && let Err(e) = flush(&conn, &chain, &mut sync)
            {
                tracing::warn!(error = %e, "cannot write deferred audit entries; the batch takes them");
            }
            sync.set(&conn, audit_only);
            run_batch(&conn, &mut batch, &chain);
            sync.note_commit();
            committed = true;
        }
        batch.clear();
        let flush_now = tick
            || !barriers.is_empty()
            || closing.is_some()
            || chain.blocking_lock().wants_flush();
        if flush_now {
            committed = true;
            let flushed = flush(&conn, &chain, &mut sync);
            if let Err(e) = &flushed {
                tracing::warn!(error = %e, "cannot write deferred audit entries; they wait for the next flush");
            }
            for reply in barriers.drain(..) {
                let _ = reply.send(flushed.as_ref().map(|_| ()).map_err(clone_err));
            }
        }
        for reply in barriers.drain(..) {
            let _ = reply.send(Ok(()));
        }
        for (expected, reply) in loads.drain(..) {
            committed = true;
            let _ = reply.send(match expected {
                Some(expected) => bulk.begin(&conn, expected),
                None => bulk.end(&conn),
            });
        }
        if committed {
            wal.keep_bounded(&conn);
        }
        if let Some(reply) = closing {
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
            drop(conn);
            let _ = reply.send(());
            return;
        }
    }
}

/// Keeps the WAL file from growing without bound under sustained writes.
///
/// Why: the checkpoint thread's PASSIVE checkpoints copy frames back but
/// never restart the WAL while commits keep arriving (a restart needs every
/// frame copied at the moment a write begins), so a bulk load grew the WAL
/// by gigabytes a minute until the disk was full. Past `max_bytes` the
/// writer itself runs a RESTART checkpoint between batches: it waits for
/// readers on old snapshots (up to the busy timeout), copies what is left
/// and makes the next commit start the WAL from the top (truncated to
/// `journal_size_limit`).
pub(crate) struct WalLimit {
    pub(crate) path: std::path::PathBuf,
    pub(crate) max_bytes: u64,
}

impl WalLimit {
    fn keep_bounded(&self, conn: &Connection) {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return;
        };
        if meta.len() <= self.max_bytes {
            return;
        }
        // (busy, frames in the WAL, frames copied back)
        let done: Result<(i64, i64, i64), _> =
            conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            });
        match done {
            Ok((0, _, _)) => {}
            // Busy (the checkpoint thread or a long reader held on): the
            // next batch tries again; the WAL only grows meanwhile.
            Ok((_, frames, copied)) => {
                tracing::debug!(
                    frames,
                    copied,
                    "WAL restart was busy; trying again after the next batch"
                );
            }
            Err(e) => tracing::warn!(error = %e, "WAL restart checkpoint failed"),
        }
    }
}

/// How the writer gathers a batch.
pub(crate) struct GroupCommit {
    /// Most jobs in one transaction.
    pub(crate) max_batch: usize,
    /// See [`GroupCommit::gather`]; zero turns the wait off.
    pub(crate) window: Duration,
}

/// A batch of read-audit appends smaller than this may wait for company.
const GROUP_TARGET: usize = 16;

impl GroupCommit {
    /// Wait once, for `window`, for more jobs when the batch holds only a few
    /// audit appends and the previous batch had company (so more requests
    /// are in flight). Why: a read's entry is one small row, but each commit
    /// writes whole pages to the WAL and wakes this thread; under load,
    /// committing a handful at a time made read auditing cost a quarter of
    /// read throughput. A plain sleep, not a timed receive, so the requests
    /// arriving meanwhile do not each wake the thread. Batches with a write
    /// set never wait (their fsync already gathers company), and an idle
    /// server's lone read never waits.
    fn gather(&self, rx: &mut Receiver<Job>, batch: &mut Vec<Job>, last_batch: usize) {
        let small_audit_only = batch.len() < GROUP_TARGET.min(self.max_batch)
            && batch.iter().all(|j| matches!(j, Job::Audit(..)));
        if self.window.is_zero() || last_batch < 2 || !small_audit_only {
            return;
        }
        std::thread::sleep(self.window);
        while batch.len() < self.max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
    }
}

/// The write connection's `synchronous` setting (see
/// [`crate::AuditSync::Checkpoint`]): commits holding only audit appends or
/// index rows run NORMAL (no fsync) and raise `unsynced` for the checkpoint
/// thread, which fsyncs the WAL; any commit with a write set runs FULL.
struct SyncMode {
    relaxed: bool,
    unsynced: Option<Arc<AtomicBool>>,
}

impl SyncMode {
    fn set(&mut self, conn: &Connection, audit_only: bool) {
        let relax = self.unsynced.is_some() && audit_only;
        if relax != self.relaxed {
            let mode = if relax { "NORMAL" } else { "FULL" };
            if conn
                .execute_batch(&format!("PRAGMA synchronous={mode}"))
                .is_ok()
            {
                self.relaxed = relax;
            }
        }
    }

    fn note_commit(&self) {
        if self.relaxed
            && let Some(flag) = &self.unsynced
        {
            flag.store(true, Ordering::Release);
        }
    }
}

/// How an attempt at a batch ended early.
enum Abort {
    /// Job `.0` failed after it had written: roll everything back, answer it
    /// with the error and run the rest of the batch again.
    Job(usize, StoreError),
    /// The transaction itself failed (BEGIN/COMMIT): every job gets the error.
    Batch(StoreError),
}

/// Run a batch to completion and answer every job.
///
/// No savepoints: they would copy every page a job touches into the
/// sub-journal, the largest cost of a small write. Preconditions are checked
/// before a job writes anything, so a failed precondition needs no rollback.
/// A job that fails *while writing* (rare: a racing duplicate version, I/O)
/// rolls back the whole transaction and the batch is retried without it.
///
/// The chain stays locked from the first attempt to the last COMMIT: the
/// batch's entries follow every entry chained before it, and none can be
/// chained after a head that a rollback then undoes.
fn run_batch(conn: &Connection, batch: &mut Vec<Job>, chain: &SharedChain) {
    let mut guard = chain.blocking_lock();
    let chain = &mut *guard;
    let start = chain.head;
    let mut failed: Vec<Option<StoreError>> = batch.iter().map(|_| None).collect();
    let results = loop {
        // The index rows of this attempt's entries; kept only if it commits.
        let mut staged = Vec::new();
        match attempt(
            conn,
            batch,
            &failed,
            &mut chain.head,
            &mut staged,
            &chain.entries,
        ) {
            Ok(results) => {
                // The journaled entries went in first, in this transaction.
                chain.entries.clear();
                chain.stage_rows(staged);
                break results;
            }
            Err(abort) => {
                // Nothing of this attempt is durable: undo the in-memory head too.
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                chain.head = start;
                match abort {
                    Abort::Job(i, e) => {
                        if let Some(slot) = failed.get_mut(i) {
                            *slot = Some(e);
                        }
                    }
                    Abort::Batch(e) => {
                        tracing::warn!(error = %e, jobs = batch.len(), "sqlite batch failed");
                        break batch.iter().map(|_| Err(clone_err(&e))).collect();
                    }
                }
            }
        }
    };
    drop(guard);
    for (job, result) in batch.drain(..).zip(results) {
        match job {
            Job::Commit(_, reply) => {
                let _ = reply.send(result);
            }
            Job::Audit(_, reply) | Job::Barrier(reply) => {
                let _ = reply.send(result.map(|_| ()));
            }
            Job::Tick | Job::Load(..) | Job::Close(_) => {}
        }
    }
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::PreconditionFailed(m) => StoreError::PreconditionFailed(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Unsupported(m) => StoreError::Unsupported(m.clone()),
        StoreError::Other(m) => StoreError::Other(m.clone()),
    }
}

const NO_WRITES: CommitReceipt = CommitReceipt { first_seq: 0 };

/// One transaction over the jobs not already failed, after the journaled
/// entries that precede them in the chain.
fn attempt(
    conn: &Connection,
    batch: &[Job],
    failed: &[Option<StoreError>],
    head: &mut Head,
    staged: &mut Vec<IndexRow>,
    journaled: &[JournalEntry],
) -> Result<Vec<Result<CommitReceipt, StoreError>>, Abort> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| Abort::Batch(sql_err(e)))?;
    insert_into_ledger(conn, journaled).map_err(Abort::Batch)?;
    let mut results = Vec::with_capacity(batch.len());
    for (i, job) in batch.iter().enumerate() {
        if let Some(Some(e)) = failed.get(i) {
            results.push(Err(clone_err(e)));
            continue;
        }
        let result = match job {
            Job::Commit(ws, _) => match ws.preconditions.iter().try_for_each(|p| check(conn, p)) {
                Err(e) => {
                    // SQLite rolls the whole transaction back on some errors
                    // (I/O, full disk); never carry on in autocommit mode.
                    if conn.is_autocommit() {
                        return Err(Abort::Job(i, e));
                    }
                    Err(e)
                }
                Ok(()) => Ok(apply_writes(conn, ws, head, staged).map_err(|e| Abort::Job(i, e))?),
            },
            Job::Audit(records, _) => {
                append(conn, records, head, staged).map_err(|e| Abort::Job(i, e))?;
                Ok(NO_WRITES)
            }
            Job::Barrier(_) | Job::Tick | Job::Load(..) | Job::Close(_) => Ok(NO_WRITES),
        };
        results.push(result);
    }
    conn.execute_batch("COMMIT")
        .map_err(|e| Abort::Batch(sql_err(e)))?;
    Ok(results)
}

/// Versions + index rows, then audit entries (preconditions already hold).
fn apply_writes(
    conn: &Connection,
    ws: &WriteSet,
    head: &mut Head,
    staged: &mut Vec<IndexRow>,
) -> Result<CommitReceipt, StoreError> {
    let mut first_seq = 0;
    for (i, w) in ws.resources.iter().enumerate() {
        let seq = write_resource(conn, w)?;
        if i == 0 {
            first_seq = seq;
        }
    }
    append(conn, &ws.audit, head, staged)?;
    Ok(CommitReceipt { first_seq })
}

fn check(conn: &Connection, p: &Precondition) -> Result<(), StoreError> {
    match p {
        Precondition::CurrentVersion {
            resource_type,
            id,
            expected,
        } => {
            let found: Option<i64> = conn
                .prepare_cached("SELECT version FROM current WHERE type = ?1 AND id = ?2")
                .and_then(|mut s| {
                    s.query_row(params![resource_type, id], |r| r.get(0))
                        .optional()
                })
                .map_err(sql_err)?;
            if found != *expected {
                return Err(StoreError::PreconditionFailed(format!(
                    "{resource_type}/{id}: expected version {}, found {}",
                    show(*expected),
                    show(found)
                )));
            }
        }
        Precondition::SearchMatches {
            query,
            expected_ids,
        } => {
            let sql = build(query, None, Shape::Ids, crate::now_micros())?;
            let mut stmt = conn.prepare_cached(&sql.text).map_err(sql_err)?;
            let mut found: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(sql.params.iter()), |r| r.get(0))
                .and_then(Iterator::collect)
                .map_err(sql_err)?;
            let mut expected = expected_ids.clone();
            found.sort();
            found.dedup();
            expected.sort();
            expected.dedup();
            if found != expected {
                return Err(StoreError::PreconditionFailed(format!(
                    "search now matches {found:?}, expected {expected:?}"
                )));
            }
        }
    }
    Ok(())
}

fn show(v: Option<i64>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// Insert the version, move `current`, replace index rows. Returns the seq.
fn write_resource(conn: &Connection, w: &ResourceWrite) -> Result<i64, StoreError> {
    let deleted = i64::from(w.deleted);
    conn.prepare_cached(
        "INSERT INTO resources (type, id, version, last_updated, deleted, patient_key, json) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            w.resource_type,
            w.id,
            w.version,
            w.last_updated,
            deleted,
            w.patient_key,
            w.json
        ])
    })
    .map_err(sql_err)?;
    let seq = conn.last_insert_rowid();

    let existing: Option<i64> = conn
        .prepare_cached("SELECT rid FROM current WHERE type = ?1 AND id = ?2")
        .and_then(|mut s| {
            s.query_row(params![w.resource_type, w.id], |r| r.get(0))
                .optional()
        })
        .map_err(sql_err)?;
    let rid = match existing {
        Some(rid) => {
            conn.prepare_cached(
                "UPDATE current SET version = ?1, seq = ?2, last_updated = ?3, deleted = ?4, \
                 patient_key = ?5 WHERE rid = ?6",
            )
            .and_then(|mut s| {
                s.execute(params![
                    w.version,
                    seq,
                    w.last_updated,
                    deleted,
                    w.patient_key,
                    rid
                ])
            })
            .map_err(sql_err)?;
            // Index rows describe the current version only.
            for table in crate::schema::INDEX_TABLES {
                conn.prepare_cached(&format!("DELETE FROM {table} WHERE rid = ?1"))
                    .and_then(|mut s| s.execute([rid]))
                    .map_err(sql_err)?;
            }
            rid
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO current (type, id, version, seq, last_updated, deleted, patient_key) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    w.resource_type,
                    w.id,
                    w.version,
                    seq,
                    w.last_updated,
                    deleted,
                    w.patient_key
                ])
            })
            .map_err(sql_err)?;
            conn.last_insert_rowid()
        }
    };
    if !w.deleted {
        let mut row = Row {
            rid,
            resource_type: &w.resource_type,
            patient_key: w.patient_key.as_deref(),
            ord: 0,
        };
        for entry in &w.index {
            insert_entry(conn, &mut row, entry)?;
        }
    }
    Ok(seq)
}

/// What every index row of one resource shares, and the next `ord` (the
/// per-resource row number completing the index tables' primary key).
struct Row<'a> {
    rid: i64,
    resource_type: &'a str,
    patient_key: Option<&'a str>,
    ord: i64,
}

fn insert_entry(
    conn: &Connection,
    row: &mut Row<'_>,
    entry: &IndexEntry,
) -> Result<(), StoreError> {
    if let IndexValue::Composite { parts } = &entry.value {
        let json = serde_json::to_string(parts).map_err(|e| StoreError::Other(e.to_string()))?;
        conn.prepare_cached(
            "INSERT INTO idx_composite (rid, type, param, parts, patient_key) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![row.rid, row.resource_type, entry.param, json, row.patient_key]))
        .map_err(sql_err)?;
        let grp = conn.last_insert_rowid();
        for (i, part) in parts.iter().enumerate() {
            // A composite never nests another in R4; skip rather than fail.
            if matches!(part, IndexValue::Composite { .. }) {
                continue;
            }
            insert_value(conn, row, &format!("{}#{i}", entry.param), part, Some(grp))?;
        }
        return Ok(());
    }
    insert_value(conn, row, &entry.param, &entry.value, None)
}

fn insert_value(
    conn: &Connection,
    row: &mut Row<'_>,
    param: &str,
    value: &IndexValue,
    grp: Option<i64>,
) -> Result<(), StoreError> {
    let (rid, ty, pk, ord) = (row.rid, row.resource_type, row.patient_key, row.ord);
    row.ord += 1;
    let result = match value {
        IndexValue::Token { system, code, text } => conn
            .prepare_cached(
                "INSERT INTO idx_token (rid, ord, type, param, system, code, text, patient_key, grp) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut s| s.execute(params![rid, ord, ty, param, system, code, text, pk, grp])),
        IndexValue::String { normalized, exact } => conn
            .prepare_cached(
                "INSERT INTO idx_string (rid, ord, type, param, normalized, exact, patient_key, grp) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| s.execute(params![rid, ord, ty, param, normalized, exact, pk, grp])),
        IndexValue::Date { low, high } => conn
            .prepare_cached(
                "INSERT INTO idx_date (rid, ord, type, param, low, high, patient_key, grp) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| s.execute(params![rid, ord, ty, param, low, high, pk, grp])),
        IndexValue::Number { value } => conn
            .prepare_cached(
                "INSERT INTO idx_number (rid, ord, type, param, value, patient_key, grp) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| s.execute(params![rid, ord, ty, param, value, pk, grp])),
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
        } => conn
            .prepare_cached(
                "INSERT INTO idx_quantity (rid, ord, type, param, value, system, code, unit, patient_key, grp) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| s.execute(params![rid, ord, ty, param, value, system, code, unit, pk, grp])),
        IndexValue::Reference {
            target_type,
            target_id,
            url,
        } => conn
            .prepare_cached(
                "INSERT INTO idx_reference (rid, ord, type, param, target_type, target_id, url, patient_key, grp) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut s| s.execute(params![rid, ord, ty, param, target_type, target_id, url, pk, grp])),
        IndexValue::Uri { uri } => conn
            .prepare_cached(
                "INSERT INTO idx_uri (rid, ord, type, param, uri, patient_key, grp) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| s.execute(params![rid, ord, ty, param, uri, pk, grp])),
        IndexValue::Composite { .. } => return Ok(()),
    };
    result.map(|_| ()).map_err(sql_err)
}

/// Chain and insert audit records after the head, advancing it; their
/// index rows are staged for the deferred index (see the module docs).
fn append(
    conn: &Connection,
    records: &[AuditRecord],
    head: &mut Head,
    staged: &mut Vec<IndexRow>,
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let entries: Vec<JournalEntry> = records
        .iter()
        .map(|record| {
            let (entry, row) = head.link(Prepared::of(record));
            staged.push(row);
            entry
        })
        .collect();
    insert_into_ledger(conn, &entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::WalLimit;
    use rusqlite::Connection;

    /// Past its limit the WAL is restarted, so the next commit writes from
    /// its top and the file is cut back to `journal_size_limit`; under the
    /// limit nothing happens.
    #[test]
    fn a_wal_past_its_limit_is_restarted_and_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; \
             PRAGMA journal_size_limit=0; CREATE TABLE t (x BLOB);",
        )
        .unwrap();
        let wal = WalLimit {
            path: crate::wal_path(&db),
            max_bytes: 256 * 1024,
        };
        let size = || std::fs::metadata(&wal.path).unwrap().len();
        let write = |n: usize| {
            for _ in 0..n {
                conn.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                    .unwrap();
            }
        };
        write(20);
        let small = size();
        assert!(small < wal.max_bytes, "{small}");
        wal.keep_bounded(&conn);
        write(1);
        assert!(size() > small, "under the limit the WAL keeps growing");
        write(200);
        let big = size();
        assert!(big > wal.max_bytes, "{big}");
        wal.keep_bounded(&conn);
        write(1);
        assert!(
            size() < wal.max_bytes,
            "after the restart the WAL starts over: {} bytes (was {big})",
            size()
        );
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 222, "nothing lost across the restart");
    }
}
