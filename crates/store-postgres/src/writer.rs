//! The writer task and its group commit.
//!
//! One tokio task owns all writing. It drains whatever is queued (up to
//! `max_batch` jobs), runs the batch as ONE transaction with a SAVEPOINT per
//! job, commits once, then answers every job. A job whose precondition (or
//! unique constraint) fails is rolled back to its savepoint alone.
//!
//! Why one writer: the audit chain is a single sequence (`h_n` needs
//! `h_{n-1}`), and `seq` must grow in commit order so that a paged search
//! pinned at snapshot N never gains a row with seq ≤ N later. Serialising
//! writers gives both, and the precondition checks (including "no resource
//! matches this conditional-create search") become race-free without
//! SERIALIZABLE retries. Group commit keeps that cheap: one WAL flush covers
//! every job queued while the previous batch was committing.
//!
//! Every batch transaction starts with `SELECT … FROM commit_head FOR UPDATE`.
//! That row lock serialises batches even across processes (several servers on
//! one database) and hands the batch the heads it builds on (last seq, last
//! ledger seq and hash), so nothing is cached between batches: after a lost
//! connection or a failed COMMIT the next batch simply reads the truth.
//!
//! Connections: the writer has its own small pool, so readers can never
//! starve it. A batch that loses its connection fails with `Unavailable`
//! (the jobs are answered, nothing is acknowledged that did not commit), the
//! broken connection is discarded, and the next batch connects afresh: the
//! writer recovers by itself when PostgreSQL is back. A client-side deadline
//! on each batch guards against a server that stops answering without
//! closing the socket.

use std::collections::HashMap;
use std::time::Duration;

use carelayer_audit::{AuditRecord, canonical_bytes, chain_hash_bytes};
use carelayer_fhir::search::{IndexEntry, IndexValue};
use carelayer_store::{CommitReceipt, Precondition, ResourceWrite, StoreError, WriteSet};
use deadpool_postgres::{Object, Pool};
use tokio::sync::mpsc::Receiver;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use crate::AuditSync;
use crate::copy::Encoded;
use crate::error::{clone_err, pg_err, pool_err, timed_out};
use crate::search::{Shape, Snapshot, build};

/// The statements whose order on the wire matters (see
/// [`run_in_transaction`]). They are all prepared before a batch starts so
/// that, pipelined, each goes out on its future's first poll: a statement
/// still being prepared would let a later one overtake it.
///
/// Keys are looked up one by one (a correlated subquery on the
/// `(type, id)` unique index), never joined: a join of an `unnest` lets
/// the planner pick a hash join over a scan of all of `current`, which is
/// fine for a thousand rows and ruinous for millions.
const CHECK_VERSIONS: &str = "SELECT u.n, \
         (SELECT c.version FROM current c WHERE c.type = u.type AND c.id = u.id) \
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(type, id, n)";
const INSERT_VERSIONS: &str = "INSERT INTO resources (seq, type, id, version, last_updated, deleted, patient_key, json) \
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], \
                          $6::boolean[], $7::text[], $8::bytea[])";
const UPSERT_CURRENT: &str = "INSERT INTO current (type, id, version, seq, last_updated, deleted, patient_key) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], \
                          $6::boolean[], $7::text[]) \
     ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, seq = excluded.seq, \
         last_updated = excluded.last_updated, deleted = excluded.deleted, \
         patient_key = excluded.patient_key \
     RETURNING rid, type, id";
const AUDIT_LEDGER: &str = "INSERT INTO audit_ledger (seq, record, hash) \
     SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])";
const AUDIT_INDEX: &str = "INSERT INTO audit_index (seq, recorded_at, patient, agent_user, \
         agent_org, agent_client, action, outcome, break_glass) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                          $6::text[], $7::text[], $8::text[], $9::boolean[])";

/// Removes the index rows of every resource a write set replaces, in one
/// statement found by key (so it needs no earlier answer).
static DELETE_OLD_INDEX_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let mut sql = String::from(
        "WITH old AS (SELECT array(SELECT (SELECT c.rid FROM current c \
             WHERE c.type = u.type AND c.id = u.id) \
         FROM unnest($1::text[], $2::text[]) AS u(type, id)) AS rids)",
    );
    for (i, table) in crate::schema::INDEX_TABLES.iter().enumerate() {
        // `= ANY(array)`: an index scan on the `(rid, ord)` primary key
        // whatever the planner guesses of how many resources are replaced.
        sql.push_str(&format!(
            ", d{i} AS (DELETE FROM {table} WHERE rid = ANY((SELECT rids FROM old)::bigint[]))"
        ));
    }
    sql.push_str(" SELECT 1");
    sql
});

/// Every index table's INSERT ([`TableRows::insert_sql`]), for [`warm`]:
/// the text of a table's statement does not depend on its rows, so one
/// row of each kind yields them all.
static INDEX_INSERTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    let mut rows = IndexRows::default();
    let at = At {
        rid: 0,
        ty: "",
        key: None,
    };
    let mut ord = 0;
    for value in [
        IndexValue::Token {
            system: None,
            code: None,
            text: None,
        },
        IndexValue::String {
            normalized: String::new(),
            exact: String::new(),
        },
        IndexValue::Date { low: 0, high: 0 },
        IndexValue::Number { value: 0.0 },
        IndexValue::Quantity {
            value: 0.0,
            system: None,
            code: None,
            unit: None,
        },
        IndexValue::Reference {
            target_type: None,
            target_id: None,
            url: String::new(),
        },
        IndexValue::Uri { uri: String::new() },
    ] {
        rows.add_value(&at, &mut ord, "", &value, None);
    }
    rows.composite
        .common(&at, 0, "", None)
        .parts
        .push(String::new());
    rows.tables().iter().map(TableRows::insert_sql).collect()
});

/// Prepare (once per connection; later a cache lookup) every statement
/// whose place in a pipeline matters.
async fn warm(client: &Object) -> Result<(), StoreError> {
    for sql in [
        LOCK_HEAD,
        CAS_HEAD,
        CHECK_VERSIONS,
        INSERT_VERSIONS,
        UPSERT_CURRENT,
        AUDIT_LEDGER,
        AUDIT_INDEX,
        DELETE_OLD_INDEX_ROWS.as_str(),
    ] {
        client.prepare_cached(sql).await.map_err(pg_err)?;
    }
    for sql in INDEX_INSERTS.iter() {
        client.prepare_cached(sql).await.map_err(pg_err)?;
    }
    Ok(())
}

/// Insert index rows a job deferred (see [`attempt`]), if any. Polled
/// first in a `join`, its statements go out ahead of those joined after
/// it: every statement it sends is prepared by [`warm`], so none waits.
async fn flush(client: &Object, rows: Option<IndexRows>) -> Result<(), StoreError> {
    match rows {
        Some(rows) => rows.insert(client).await,
        None => Ok(()),
    }
}

/// Work for the writer.
pub(crate) enum Job {
    /// A write set, with its COPY bodies when it is bulk (encoded by the
    /// caller: `copy.rs`).
    Commit(
        WriteSet,
        Option<Encoded>,
        oneshot::Sender<Result<CommitReceipt, StoreError>>,
    ),
    Audit(Vec<AuditRecord>, oneshot::Sender<Result<(), StoreError>>),
    /// A bulk load of about this many resources starts (`Some`) or ends
    /// (`None`): see [`Loads`]. Run alone, between batches, in queue order.
    Load(Option<u64>, oneshot::Sender<Result<(), StoreError>>),
    /// Finish what is queued before this, then stop.
    Close(oneshot::Sender<()>),
}

impl Job {
    /// Nobody waits for this job's answer any more.
    fn abandoned(&self) -> bool {
        match self {
            Self::Commit(_, _, reply) => reply.is_closed(),
            Self::Audit(_, reply) => reply.is_closed(),
            // Begins and ends must pair up whoever still listens.
            Self::Load(..) | Self::Close(_) => false,
        }
    }
}

/// The heads a batch builds on, read under the `commit_head` lock.
#[derive(Debug, Clone, Copy)]
struct Head {
    seq: i64,
    audit_seq: i64,
    audit_hash: [u8; 32],
}

/// The writer task's body. Returns when a `Close` job is done or every
/// sender is gone.
pub(crate) async fn run(
    pool: Pool,
    mut rx: Receiver<Job>,
    max_batch: usize,
    deadline: Duration,
    audit_sync: AuditSync,
) {
    let max_batch = max_batch.max(1);
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut stats = Statistics::default();
    let mut loads = Loads::default();
    // The head the last batch committed, while nothing has failed since.
    let mut cached: Option<Head> = None;
    // A `Load` job that ended the last batch's collection, run next.
    let mut held: Option<Job> = None;
    loop {
        // After a bulk load, the last stretch of it is analysed once the
        // load pauses (see `Statistics`), also if nothing else comes.
        let next = if let Some(job) = held.take() {
            Some(job)
        } else if stats.since > 0 && !loads.deferred {
            match tokio::time::timeout(LOAD_PAUSE, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    stats.refresh_if_due(&pool);
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = next else {
            if loads.deferred {
                // Every sender is gone mid-load: build what it put off.
                let _ = loads.finish(&pool, &mut stats).await;
            }
            return;
        };
        if let Job::Load(load, reply) = first {
            let result = match load {
                Some(expected) => loads.begin(&pool, expected).await,
                None => loads.end(&pool, &mut stats).await,
            };
            let _ = reply.send(result);
            continue;
        }
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                // Load jobs run alone, after the jobs queued before them.
                Ok(job @ Job::Load(..)) => {
                    held = Some(job);
                    break;
                }
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // A Close job ends the batch: jobs before it are flushed; none follow
        // it because `close` stops new submissions first.
        let mut closing = None;
        if let Some(pos) = batch.iter().position(|j| matches!(j, Job::Close(_))) {
            for job in batch.split_off(pos) {
                if let Job::Close(reply) = job {
                    closing.get_or_insert(reply);
                }
            }
        }
        // A caller that stopped waiting (its deadline passed while the job
        // was queued) was answered 503: do not commit what it gave up on.
        batch.retain(|job| !job.abandoned());
        if !batch.is_empty() {
            stats.count(&batch);
            run_batch(&pool, &mut batch, deadline, audit_sync, &mut cached).await;
            // While the indexes are put off, so are the statistics: the
            // builds at the end analyse every table they build on.
            if !loads.deferred {
                stats.refresh_if_due(&pool);
            }
        }
        batch.clear();
        if let Some(reply) = closing {
            if loads.deferred {
                // Closed mid-load: never leave the indexes unbuilt.
                if let Err(e) = loads.finish(&pool, &mut stats).await {
                    tracing::warn!(error = %e, "building the indexes a bulk load put off failed; the next connect builds them");
                }
            }
            pool.close();
            let _ = reply.send(());
            return;
        }
    }
}

/// The bulk loads under way (`Store::begin_bulk_load`), and whether their
/// secondary indexes were dropped to be built at the end (`bulk.rs`).
#[derive(Default)]
struct Loads {
    /// Loads begun and not yet ended (they may overlap).
    open: u32,
    /// The indexes were dropped by the first of the open loads.
    deferred: bool,
}

impl Loads {
    async fn begin(&mut self, pool: &Pool, expected: u64) -> Result<(), StoreError> {
        self.open += 1;
        // Only the first of overlapping loads decides: a later one finds
        // the indexes gone already, or kept for a reason that still holds.
        if self.open == 1 {
            match crate::bulk::prepare(pool, expected).await {
                Ok(deferred) => self.deferred = deferred,
                Err(e) => {
                    // Refused: the caller will not end a load that never began.
                    self.open -= 1;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn end(&mut self, pool: &Pool, stats: &mut Statistics) -> Result<(), StoreError> {
        self.open = self.open.saturating_sub(1);
        if self.open > 0 || !self.deferred {
            return Ok(());
        }
        self.finish(pool, stats).await
    }

    /// Build the indexes (and statistics) the loads put off.
    async fn finish(&mut self, pool: &Pool, stats: &mut Statistics) -> Result<(), StoreError> {
        self.deferred = false;
        crate::bulk::build_missing(pool).await?;
        // The builds analysed every table they built on: nothing is due.
        stats.at_last += stats.since;
        stats.since = 0;
        Ok(())
    }
}

/// Keeps the planner's statistics in step with bulk loads. Autovacuum
/// analyses a table only after a minute's nap and a 10% change, so right
/// after an import into a new database every search would be planned as
/// if the tables were empty or held only what came first (a bench import
/// loads Patients last: planned as if there were none, an NHS-number
/// search walked every Patient). So the writer starts an `ANALYZE` in the
/// background after bulk write sets have added as many rows as the last
/// analysis saw (and at least `FIRST_ANALYZE`), which is a handful of
/// times over any load (sizes double in between), and once more when the
/// load pauses for `LOAD_PAUSE`; never two at once.
struct Statistics {
    /// Resources written by bulk write sets since the last `ANALYZE`.
    since: u64,
    /// Resources bulk-written when the last one started.
    at_last: u64,
    /// When the last bulk write set came.
    last_bulk: std::time::Instant,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Statistics {
    fn default() -> Self {
        Self {
            since: 0,
            at_last: 0,
            last_bulk: std::time::Instant::now(),
            running: std::sync::Arc::default(),
        }
    }
}

/// A bulk load has paused (or ended) when no bulk write set came for this long.
const LOAD_PAUSE: Duration = Duration::from_secs(1);

/// Bulk-written resources before the first `ANALYZE`.
const FIRST_ANALYZE: u64 = 5_000;

impl Statistics {
    fn count(&mut self, batch: &[Job]) {
        for job in batch {
            if let Job::Commit(ws, _, _) = job
                && ws.resources.len() >= BULK_RESOURCES
            {
                self.since += ws.resources.len() as u64;
                self.last_bulk = std::time::Instant::now();
            }
        }
    }

    fn refresh_if_due(&mut self, pool: &Pool) {
        use std::sync::atomic::Ordering;
        let grown = self.since >= FIRST_ANALYZE.max(self.at_last);
        let paused = self.since > 0 && self.last_bulk.elapsed() >= LOAD_PAUSE;
        if !(grown || paused) || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.at_last += self.since;
        self.since = 0;
        let (pool, running) = (pool.clone(), std::sync::Arc::clone(&self.running));
        tokio::spawn(async move {
            let tables = std::iter::once("current")
                .chain(std::iter::once("resources"))
                .chain(crate::schema::INDEX_TABLES.iter().copied())
                .collect::<Vec<_>>()
                .join(", ");
            // Its own transaction, so the request-path statement timeout
            // does not cut a long analysis short.
            let sql = format!("BEGIN; SET LOCAL statement_timeout = 0; ANALYZE {tables}; COMMIT");
            match pool.get().await {
                Ok(client) => {
                    if let Err(e) = client.batch_execute(&sql).await {
                        tracing::warn!(error = %e, "ANALYZE after a bulk load failed");
                        drop(Object::take(client));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "no connection to ANALYZE after a bulk load"),
            }
            running.store(false, Ordering::Release);
        });
    }
}

/// The result a job is answered with once the batch commits.
enum Outcome {
    Commit(Result<CommitReceipt, StoreError>),
    Audit(Result<(), StoreError>),
}

async fn run_batch(
    pool: &Pool,
    batch: &mut Vec<Job>,
    deadline: Duration,
    audit_sync: AuditSync,
    cached: &mut Option<Head>,
) {
    let outcomes = match connect_and_run(pool, batch, deadline, audit_sync, cached).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            tracing::warn!(error = %e, jobs = batch.len(), "PostgreSQL write batch failed");
            batch
                .iter()
                .map(|j| match j {
                    Job::Commit(..) => Outcome::Commit(Err(clone_err(&e))),
                    _ => Outcome::Audit(Err(clone_err(&e))),
                })
                .collect()
        }
    };
    for (job, outcome) in batch.drain(..).zip(outcomes) {
        match (job, outcome) {
            (Job::Commit(_, _, reply), Outcome::Commit(r)) => {
                let _ = reply.send(r);
            }
            (Job::Audit(_, reply), Outcome::Audit(r)) => {
                let _ = reply.send(r);
            }
            (Job::Commit(_, _, reply), Outcome::Audit(Err(e))) => {
                let _ = reply.send(Err(e));
            }
            (Job::Audit(_, reply), Outcome::Commit(Err(e))) => {
                let _ = reply.send(Err(e));
            }
            // Shapes always match (built from the same batch in order).
            _ => {}
        }
    }
}

/// A connection, then the batch under a client-side deadline. A connection
/// that failed or timed out mid-batch is taken out of the pool and dropped
/// (closing it, which makes the server roll back) rather than recycled in an
/// unknown state.
async fn connect_and_run(
    pool: &Pool,
    batch: &[Job],
    deadline: Duration,
    audit_sync: AuditSync,
    cached: &mut Option<Head>,
) -> Result<Vec<Outcome>, StoreError> {
    let client = pool.get().await.map_err(pool_err)?;
    let run = run_in_transaction(&client, batch, audit_sync, cached);
    match tokio::time::timeout(deadline, run).await {
        Ok(Ok(outcomes)) => Ok(outcomes),
        Ok(Err(e)) => {
            drop(Object::take(client));
            Err(e)
        }
        Err(_) => {
            drop(Object::take(client));
            Err(timed_out("write batch"))
        }
    }
}

/// The statement that locks the head and reads it.
const LOCK_HEAD: &str = "SELECT seq, audit_seq, audit_hash FROM commit_head FOR UPDATE";

/// A write set at least this large is bulk (an import batch): its
/// versions and index rows go in by binary COPY, which PostgreSQL ingests
/// faster than `unnest` arrays; smaller ones stay in the pipelined
/// statements, whose fewer round trips matter more than ingest speed.
pub(crate) const BULK_RESOURCES: usize = 64;

/// Moves the head only if it is still the one this batch built on (a
/// compare-and-swap, which also takes the row lock): on a mismatch the
/// division fails, the transaction aborts and the COMMIT pipelined after
/// it becomes a rollback.
const CAS_HEAD: &str = "WITH u AS (UPDATE commit_head SET seq = $1, audit_seq = $2, audit_hash = $3 \
     WHERE seq = $4 AND audit_seq = $5 AND audit_hash = $6 RETURNING 1) \
     SELECT 1 / (SELECT count(*)::int FROM u)";

/// One batch as one transaction: BEGIN, the head, one savepoint per commit
/// job (audit-only jobs need none), the head moved, COMMIT.
/// An `Err` means the whole batch failed and nothing of it committed (or,
/// if the connection died during COMMIT, that nobody was told it did).
///
/// Round trips are the cost here, not SQL: every fixed statement is a
/// cached prepared statement, and statements that do not need an earlier
/// one's answer are pipelined (sent before that answer arrives; PostgreSQL
/// runs them in the order sent). The head the last batch left (`cached`)
/// is used without reading it again: BEGIN rides with the first job's
/// statements and the head moves by compare-and-swap ([`CAS_HEAD`]) with
/// the COMMIT behind it, so a batch of audit appends is one round trip.
/// If anything else moved the head meanwhile (another server on the same
/// database), or anything in the batch failed, that attempt is rolled back
/// and the batch runs again the careful way: the head read under
/// `FOR UPDATE` first, as it is after a failure or on a fresh start.
async fn run_in_transaction(
    client: &Object,
    batch: &[Job],
    audit_sync: AuditSync,
    cached: &mut Option<Head>,
) -> Result<Vec<Outcome>, StoreError> {
    warm(client).await?;
    if let Some(head) = cached.take() {
        match attempt(client, batch, audit_sync, Some(head)).await {
            Ok(Some((outcomes, head))) => {
                *cached = Some(head);
                return Ok(outcomes);
            }
            Ok(None) => {}
            Err(e @ StoreError::Unavailable(_)) => return Err(e),
            Err(_) => {
                // Whatever failed, the attempt must leave nothing behind.
                client.batch_execute("ROLLBACK").await.map_err(pg_err)?;
            }
        }
    }
    match attempt(client, batch, audit_sync, None).await? {
        Some((outcomes, head)) => {
            *cached = Some(head);
            Ok(outcomes)
        }
        None => Err(StoreError::Other(
            "the commit head moved while it was locked".into(),
        )),
    }
}

/// Send `sql` (a simple query) if there is one, then the head lock if
/// asked: polled first in a `join`, they go out ahead of the statements
/// joined after them. Returns the head row when the lock was sent.
async fn send_first(
    client: &Object,
    sql: Option<String>,
    lock: Option<tokio_postgres::Statement>,
) -> Result<Option<tokio_postgres::Row>, StoreError> {
    let simple = async {
        match sql {
            Some(sql) => client.batch_execute(&sql).await.map_err(pg_err),
            None => Ok(()),
        }
    };
    let locked = async {
        match &lock {
            Some(lock) => client.query_one(lock, &[]).await.map(Some).map_err(pg_err),
            None => Ok(None),
        }
    };
    let (simple, locked) = futures::future::join(simple, locked).await;
    simple?;
    locked
}

/// The head in a `commit_head` row.
fn head_of(row: &tokio_postgres::Row) -> Result<Head, StoreError> {
    let hash: Vec<u8> = row.get(2);
    Ok(Head {
        seq: row.get(0),
        audit_seq: row.get(1),
        audit_hash: hash
            .try_into()
            .map_err(|_| StoreError::Other("commit_head.audit_hash is not 32 bytes".into()))?,
    })
}

/// After the first statements of an optimistic attempt: did the head lock
/// (taken before them) find the head this batch assumed? If not, another
/// server committed since: whatever those statements did is void.
fn stale(known: Option<Head>, locked: Option<&tokio_postgres::Row>) -> Result<bool, StoreError> {
    match (known, locked) {
        (Some(k), Some(row)) => {
            let h = head_of(row)?;
            Ok(h.seq != k.seq || h.audit_seq != k.audit_seq || h.audit_hash != k.audit_hash)
        }
        _ => Ok(false),
    }
}

/// One attempt at the batch: on `known`, the head cached from the last
/// batch (optimistic), or `None` to read and lock it first. `Ok(None)`:
/// an optimistic attempt found it must not commit (rolled back; retry).
async fn attempt(
    client: &Object,
    batch: &[Job],
    audit_sync: AuditSync,
    known: Option<Head>,
) -> Result<Option<(Vec<Outcome>, Head)>, StoreError> {
    // Audit appends alone need not wait for the WAL flush (see
    // `AuditSync::Deferred`); anything with a write set does.
    let begin =
        if audit_sync == AuditSync::Deferred && batch.iter().all(|j| matches!(j, Job::Audit(..))) {
            "BEGIN; SET LOCAL synchronous_commit = off"
        } else {
            "BEGIN"
        };
    let optimistic = known.is_some();
    let lock = client.prepare_cached(LOCK_HEAD).await.map_err(pg_err)?;
    // Simple-query text still to send ahead of the next statements, and
    // the head lock when it rides with them (optimistic: every batch takes
    // the lock before writing anything, so two servers never deadlock on
    // each other's rows; it just need not wait for the answer).
    let mut pending: Option<String>;
    let mut lock_pending = None;
    let mut head = if let Some(head) = known {
        pending = Some(begin.to_owned());
        lock_pending = Some(lock);
        head
    } else {
        let (begun, row) =
            futures::future::join(client.batch_execute(begin), client.query_one(&lock, &[])).await;
        begun.map_err(pg_err)?;
        let row = row.map_err(pg_err)?;
        pending = None;
        head_of(&row)?
    };
    let start = head;
    let single = batch.len() == 1;
    // Optimistic attempts send a job's index rows (which need the `rid`s
    // its first round trip returned) together with whatever comes next:
    // the next job's statements, or the head swap and COMMIT. That saves a
    // round trip per job; the price is that a failure there spoils what
    // was sent after it, which only an optimistic attempt can afford (it
    // rolls back and runs the batch again the careful way, where each job
    // waits for its own index rows).
    let mut deferred: Option<IndexRows> = None;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut i = 0;
    while i < batch.len() {
        if let Job::Audit(..) = &batch[i] {
            // A run of audit appends is one append: they have no
            // preconditions, so nothing but a broken connection or
            // invariant can fail them, and either fails the batch.
            let run_end = batch[i..]
                .iter()
                .position(|j| !matches!(j, Job::Audit(..)))
                .map_or(batch.len(), |n| i + n);
            let records: Vec<&AuditRecord> = batch[i..run_end]
                .iter()
                .flat_map(|j| match j {
                    Job::Audit(records, _) => records.iter().collect::<Vec<_>>(),
                    _ => Vec::new(),
                })
                .collect();
            let (flushed, sent, appended) = futures::future::join3(
                flush(client, deferred.take()),
                send_first(client, pending.take(), lock_pending.take()),
                append(client, &records, &mut head),
            )
            .await;
            if flushed.is_err() {
                // Only optimistic attempts defer: run the batch carefully.
                client.batch_execute("ROLLBACK").await.map_err(pg_err)?;
                return Ok(None);
            }
            if stale(known, sent?.as_ref())? {
                client.batch_execute("ROLLBACK").await.map_err(pg_err)?;
                return Ok(None);
            }
            appended?;
            outcomes.extend((i..run_end).map(|_| Outcome::Audit(Ok(()))));
            i = run_end;
            continue;
        }
        let job = &batch[i];
        i += 1;
        let Job::Commit(ws, encoded, _) = job else {
            outcomes.push(outcome(job, Ok(None)));
            continue;
        };
        let saved = head;
        // A lone job needs no savepoint: if it fails the whole transaction
        // is rolled back, which is the same thing one statement cheaper.
        if !single {
            let mut sql = pending.take().unwrap_or_default();
            if !sql.is_empty() {
                sql.push_str("; ");
            }
            sql.push_str("SAVEPOINT job");
            pending = Some(sql);
        }
        let (flushed, sent, result) = futures::future::join3(
            flush(client, deferred.take()),
            send_first(client, pending.take(), lock_pending.take()),
            apply_write_set(client, ws, encoded.as_ref(), &mut head, optimistic),
        )
        .await;
        if flushed.is_err() {
            client.batch_execute("ROLLBACK").await.map_err(pg_err)?;
            return Ok(None);
        }
        if stale(known, sent?.as_ref())? {
            client.batch_execute("ROLLBACK").await.map_err(pg_err)?;
            return Ok(None);
        }
        match result {
            // A connection failure is the batch's failure, not the job's.
            Err(e @ StoreError::Unavailable(_)) => return Err(e),
            Err(e) => {
                head = saved;
                if optimistic {
                    // Perhaps only because the cached head was stale: redo
                    // the batch on the locked head, which gives the verdict.
                    client.batch_execute("ROLLBACK").await.map_err(pg_err)?;
                    return Ok(None);
                }
                if single {
                    client.batch_execute("ROLLBACK").await.map_err(pg_err)?;
                    return Ok(Some((vec![Outcome::Commit(Err(e))], start)));
                }
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                    .await
                    .map_err(pg_err)?;
                outcomes.push(Outcome::Commit(Err(e)));
            }
            Ok((receipt, rows)) => {
                deferred = rows;
                if !single {
                    // Keep the nesting flat (PostgreSQL slows down past 64
                    // open subtransactions); sent with what comes next.
                    pending = Some("RELEASE SAVEPOINT job".to_owned());
                }
                outcomes.push(Outcome::Commit(Ok(receipt)));
            }
        }
    }
    if head.seq == start.seq && head.audit_seq == start.audit_seq {
        // Nothing written (every job failed, so none left index rows
        // behind): nothing to move or verify.
        let mut sql = pending.take().unwrap_or_default();
        if !sql.is_empty() {
            sql.push_str("; ");
        }
        sql.push_str("COMMIT");
        client.batch_execute(&sql).await.map_err(pg_err)?;
        return Ok(Some((outcomes, start)));
    }
    let cas = client.prepare_cached(CAS_HEAD).await.map_err(pg_err)?;
    let (new_hash, old_hash) = (&head.audit_hash[..], &start.audit_hash[..]);
    let params: [&(dyn ToSql + Sync); 6] = [
        &head.seq,
        &head.audit_seq,
        &new_hash,
        &start.seq,
        &start.audit_seq,
        &old_hash,
    ];
    // If the swap fails, PostgreSQL turns the pipelined COMMIT into a
    // rollback; the swap's error says which.
    // The last job's index rows go first; if they fail, the swap and the
    // COMMIT behind them fail too (the COMMIT then rolls back).
    let (flushed, sent, swapped, committed) = futures::future::join4(
        flush(client, deferred.take()),
        send_first(client, pending.take(), None),
        client.query_one(&cas, &params),
        client.batch_execute("COMMIT"),
    )
    .await;
    if let Err(e) = flushed {
        // The transaction is over (its COMMIT was a rollback): nothing of
        // the batch is in. Optimistic: run it again the careful way.
        if optimistic && committed.is_ok() {
            return Ok(None);
        }
        return Err(e);
    }
    sent?;
    match swapped {
        Ok(_) => {}
        Err(e) if optimistic && e.code() == Some(&SqlState::DIVISION_BY_ZERO) => {
            committed.map_err(pg_err)?;
            return Ok(None);
        }
        Err(e) => return Err(pg_err(e)),
    }
    committed.map_err(pg_err)?;
    Ok(Some((outcomes, head)))
}

fn outcome(job: &Job, result: Result<Option<CommitReceipt>, StoreError>) -> Outcome {
    match job {
        Job::Commit(..) => {
            Outcome::Commit(result.map(|r| r.unwrap_or(CommitReceipt { first_seq: 0 })))
        }
        _ => Outcome::Audit(result.map(|_| ())),
    }
}

fn show(v: Option<i64>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// Preconditions, versions, current rows, index rows and audit, in two
/// pipelined round trips (three plus the COPYs for a bulk write set):
///
/// 1. the precondition checks, then (not waiting for them) the version
///    inserts, the removal of replaced versions' index rows, the `current`
///    upsert (which returns each resource's `rid`) and the audit rows.
///    PostgreSQL runs them in order, so the checks see the state before
///    this write set; if one failed, the caller rolls the savepoint back,
///    taking the writes that followed it;
/// 2. the index rows, which need the `rid`s (in an optimistic attempt,
///    sent with whatever the batch sends next: see `defer`).
///
/// Returns the receipt (the first write's seq).
///
/// With `defer`, the index rows of a write set that is not bulk are
/// returned instead of inserted, for the caller to send with what it sends
/// next (see [`attempt`]).
async fn apply_write_set(
    client: &Object,
    ws: &WriteSet,
    encoded: Option<&Encoded>,
    head: &mut Head,
    defer: bool,
) -> Result<(CommitReceipt, Option<IndexRows>), StoreError> {
    let start_head = *head;
    let bulk = encoded.is_some();
    let plan = Plan::new(&ws.resources, head);
    let records: Vec<&AuditRecord> = ws.audit.iter().collect();
    let checks = check_all(client, &ws.preconditions);
    let writes = async {
        if plan.n == 0 {
            return Ok(Vec::new());
        }
        let old_index = delete_old_index_rows(client, &plan);
        let moved = upsert_current(client, &plan);
        if bulk {
            let (deleted, moved) = futures::future::join(old_index, moved).await;
            deleted?;
            moved
        } else {
            let (inserted, deleted, moved) =
                futures::future::join3(insert_versions(client, &plan), old_index, moved).await;
            inserted?;
            deleted?;
            moved
        }
    };
    let audit = append(client, &records, head);
    let (checked, moved, audited) = futures::future::join3(checks, writes, audit).await;
    // The checks' verdict first: a failed precondition is the answer even
    // if the writes after it then failed too (they ran on its basis).
    checked?;
    let moved = moved?;
    audited?;
    if plan.n == 0 {
        return Ok((CommitReceipt { first_seq: 0 }, None));
    }
    let mut rid_of: HashMap<(&str, &str), i64> = HashMap::with_capacity(moved.len());
    for r in &moved {
        rid_of.insert((r.get(1), r.get(2)), r.get(0));
    }
    let receipt = CommitReceipt {
        first_seq: start_head.seq + 1,
    };
    if let Some(encoded) = encoded {
        // Seqs follow write-set order from the head, as `Plan::new` gave.
        let first = start_head.seq + 1;
        let versions = encoded.versions.patched(|i| {
            i64::try_from(i)
                .map(|i| first + i)
                .map_err(|_| StoreError::Other("write set too large".into()))
        })?;
        copy_body(client, crate::copy::VERSIONS_COPY, versions).await?;
        for table in &encoded.tables {
            let body = table.body.patched(|i| {
                let w = &ws.resources[i];
                rid_of
                    .get(&(w.resource_type.as_str(), w.id.as_str()))
                    .copied()
                    .ok_or_else(|| {
                        StoreError::Other(format!("no rid for {}/{}", w.resource_type, w.id))
                    })
            })?;
            copy_body(client, table.copy, body).await?;
        }
        return Ok((receipt, None));
    }
    let mut rows = IndexRows::default();
    for &i in &plan.current {
        let w = &ws.resources[i];
        if w.deleted {
            continue;
        }
        let rid = rid_of
            .get(&(w.resource_type.as_str(), w.id.as_str()))
            .copied()
            .ok_or_else(|| StoreError::Other(format!("no rid for {}/{}", w.resource_type, w.id)))?;
        rows.add_resource(rid, w)?;
    }
    if defer {
        return Ok((receipt, Some(rows)));
    } else {
        rows.insert(client).await?;
    }
    Ok((receipt, None))
}

/// Every precondition of a write set: all `CurrentVersion`s in one
/// statement, each `SearchMatches` in its own, all pipelined.
async fn check_all(client: &Object, preconditions: &[Precondition]) -> Result<(), StoreError> {
    let mut types = Vec::new();
    let mut ids = Vec::new();
    let mut expected = Vec::new();
    let mut searches = Vec::new();
    for p in preconditions {
        match p {
            Precondition::CurrentVersion {
                resource_type,
                id,
                expected: e,
            } => {
                types.push(resource_type.as_str());
                ids.push(id.as_str());
                expected.push(*e);
            }
            Precondition::SearchMatches {
                query,
                expected_ids,
            } => searches.push((
                build(query, Snapshot::Unbounded, Shape::Ids, crate::now_micros())?,
                expected_ids,
            )),
        }
    }
    let versions = async {
        if types.is_empty() {
            return Ok(());
        }
        let stmt = client
            .prepare_cached(CHECK_VERSIONS)
            .await
            .map_err(pg_err)?;
        let rows = client.query(&stmt, &[&types, &ids]).await.map_err(pg_err)?;
        let mut found: Vec<Option<i64>> = vec![None; types.len()];
        for r in &rows {
            let n: i64 = r.get(0);
            if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| found.get_mut(i)) {
                *slot = r.get(1);
            }
        }
        for (i, (have, want)) in found.iter().zip(&expected).enumerate() {
            if have != want {
                return Err(StoreError::PreconditionFailed(format!(
                    "{}/{}: expected version {}, found {}",
                    types[i],
                    ids[i],
                    show(*want),
                    show(*have)
                )));
            }
        }
        Ok(())
    };
    // Inside the writer's transaction, after every earlier job of the
    // batch: each sees exactly what this write set will commit on.
    let matches =
        futures::future::join_all(searches.iter().map(|(sql, expected_ids)| async move {
            let rows = client
                .query_typed(&sql.text, &sql.typed())
                .await
                .map_err(pg_err)?;
            let mut found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let mut expected: Vec<String> = (*expected_ids).clone();
            found.sort();
            found.dedup();
            expected.sort();
            expected.dedup();
            if found != expected {
                return Err(StoreError::PreconditionFailed(format!(
                    "search now matches {found:?}, expected {expected:?}"
                )));
            }
            Ok(())
        }));
    let (versions, matches) = futures::future::join(versions, matches).await;
    versions?;
    matches.into_iter().collect()
}

/// A write set's versions as columns, with the seqs they take, and which
/// of them become current.
struct Plan<'a> {
    n: usize,
    seqs: Vec<i64>,
    types: Vec<&'a str>,
    ids: Vec<&'a str>,
    versions: Vec<i64>,
    updated: Vec<i64>,
    deleted: Vec<bool>,
    keys: Vec<Option<&'a str>>,
    jsons: Vec<&'a [u8]>,
    /// Index (into the write set) of each resource's last write: its
    /// current version (a write set may carry several versions of one
    /// resource, in increasing order), in write-set order.
    current: Vec<usize>,
}

impl<'a> Plan<'a> {
    fn new(writes: &'a [ResourceWrite], head: &mut Head) -> Self {
        let n = writes.len();
        let mut plan = Plan {
            n,
            seqs: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            updated: Vec::with_capacity(n),
            deleted: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            jsons: Vec::with_capacity(n),
            current: Vec::new(),
        };
        for w in writes {
            head.seq += 1;
            plan.seqs.push(head.seq);
            plan.types.push(w.resource_type.as_str());
            plan.ids.push(w.id.as_str());
            plan.versions.push(w.version);
            plan.updated.push(w.last_updated);
            plan.deleted.push(w.deleted);
            plan.keys.push(w.patient_key.as_deref());
            plan.jsons.push(&w.json);
        }
        let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(n);
        for (i, w) in writes.iter().enumerate() {
            last.insert((w.resource_type.as_str(), w.id.as_str()), i);
        }
        plan.current = last.into_values().collect();
        plan.current.sort_unstable();
        plan
    }

    fn current_keys(&self) -> (Vec<&'a str>, Vec<&'a str>) {
        (
            self.current.iter().map(|&i| self.types[i]).collect(),
            self.current.iter().map(|&i| self.ids[i]).collect(),
        )
    }
}

/// Every version of the write set, as one `unnest` insert.
async fn insert_versions(client: &Object, plan: &Plan<'_>) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(INSERT_VERSIONS)
        .await
        .map_err(pg_err)?;
    client
        .execute(
            &stmt,
            &[
                &plan.seqs,
                &plan.types,
                &plan.ids,
                &plan.versions,
                &plan.updated,
                &plan.deleted,
                &plan.keys,
                &plan.jsons,
            ],
        )
        .await
        .map_err(pg_err)?;
    Ok(())
}

/// Send one encoded COPY body (`copy.rs`): a single message, which
/// PostgreSQL parses as it streams in.
async fn copy_body(client: &Object, sql: &str, body: Vec<u8>) -> Result<(), StoreError> {
    use futures::SinkExt as _;
    let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
    let sink = client
        .copy_in::<_, std::io::Cursor<Vec<u8>>>(&stmt)
        .await
        .map_err(pg_err)?;
    futures::pin_mut!(sink);
    sink.send(std::io::Cursor::new(body))
        .await
        .map_err(pg_err)?;
    sink.finish().await.map_err(pg_err)?;
    Ok(())
}

/// Index rows describe the current version only: remove those of every
/// resource this write set replaces ([`DELETE_OLD_INDEX_ROWS`]; it rides
/// in the first round trip).
async fn delete_old_index_rows(client: &Object, plan: &Plan<'_>) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(&DELETE_OLD_INDEX_ROWS)
        .await
        .map_err(pg_err)?;
    // A resource written at version 1 has no earlier version (versions of
    // a key are unique in `resources`), so no index rows to remove: an
    // import of new resources skips the lookups altogether.
    let (types, ids): (Vec<&str>, Vec<&str>) = plan
        .current
        .iter()
        .filter(|&&i| plan.versions[i] > 1)
        .map(|&i| (plan.types[i], plan.ids[i]))
        .unzip();
    if types.is_empty() {
        return Ok(());
    }
    client
        .execute(&stmt, &[&types, &ids])
        .await
        .map_err(pg_err)?;
    Ok(())
}

/// Move `current` to each resource's last version; returns `(rid, type, id)`.
async fn upsert_current(
    client: &Object,
    plan: &Plan<'_>,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let (types, ids) = plan.current_keys();
    let pick = |v: &[i64]| plan.current.iter().map(|&i| v[i]).collect::<Vec<i64>>();
    let versions = pick(&plan.versions);
    let seqs = pick(&plan.seqs);
    let updated = pick(&plan.updated);
    let deleted: Vec<bool> = plan.current.iter().map(|&i| plan.deleted[i]).collect();
    let keys: Vec<Option<&str>> = plan.current.iter().map(|&i| plan.keys[i]).collect();
    let stmt = client
        .prepare_cached(UPSERT_CURRENT)
        .await
        .map_err(pg_err)?;
    client
        .query(
            &stmt,
            &[&types, &ids, &versions, &seqs, &updated, &deleted, &keys],
        )
        .await
        .map_err(pg_err)
}

/// Index rows of one write set, column by column, per table.
#[derive(Default)]
struct IndexRows {
    token: Cols<TokenRow>,
    string: Cols<StringRow>,
    date: Cols<DateRow>,
    number: Cols<NumberRow>,
    quantity: Cols<QuantityRow>,
    reference: Cols<ReferenceRow>,
    uri: Cols<UriRow>,
    composite: Cols<CompositeRow>,
}

/// The columns every index row has, plus the table's own.
struct Cols<T> {
    rid: Vec<i64>,
    ord: Vec<i64>,
    ty: Vec<String>,
    param: Vec<String>,
    key: Vec<Option<String>>,
    grp: Vec<Option<i64>>,
    own: T,
}

impl<T: Default> Default for Cols<T> {
    fn default() -> Self {
        Self {
            rid: Vec::new(),
            ord: Vec::new(),
            ty: Vec::new(),
            param: Vec::new(),
            key: Vec::new(),
            grp: Vec::new(),
            own: T::default(),
        }
    }
}

impl<T> Cols<T> {
    fn common(&mut self, at: &At<'_>, ord: i64, param: &str, grp: Option<i64>) -> &mut T {
        self.rid.push(at.rid);
        self.ord.push(ord);
        self.ty.push(at.ty.to_owned());
        self.param.push(param.to_owned());
        self.key.push(at.key.map(str::to_owned));
        self.grp.push(grp);
        &mut self.own
    }
}

#[derive(Default)]
struct TokenRow {
    system: Vec<Option<String>>,
    code: Vec<Option<String>>,
    text: Vec<Option<String>>,
}
#[derive(Default)]
struct StringRow {
    normalized: Vec<String>,
    exact: Vec<String>,
}
#[derive(Default)]
struct DateRow {
    low: Vec<i64>,
    high: Vec<i64>,
}
#[derive(Default)]
struct NumberRow {
    value: Vec<f64>,
}
#[derive(Default)]
struct QuantityRow {
    value: Vec<f64>,
    system: Vec<Option<String>>,
    code: Vec<Option<String>>,
    unit: Vec<Option<String>>,
}
#[derive(Default)]
struct ReferenceRow {
    target_type: Vec<Option<String>>,
    target_id: Vec<Option<String>>,
    url: Vec<String>,
}
#[derive(Default)]
struct UriRow {
    uri: Vec<String>,
}
#[derive(Default)]
struct CompositeRow {
    parts: Vec<String>,
}

/// The resource an index row belongs to.
struct At<'a> {
    rid: i64,
    ty: &'a str,
    key: Option<&'a str>,
}

impl IndexRows {
    fn add_resource(&mut self, rid: i64, w: &ResourceWrite) -> Result<(), StoreError> {
        let at = At {
            rid,
            ty: &w.resource_type,
            key: w.patient_key.as_deref(),
        };
        // `ord` numbers a resource's rows across all tables (the primary
        // key's second half); a composite's components point at its `ord`.
        let mut ord = 0_i64;
        for entry in &w.index {
            self.add_entry(&at, &mut ord, entry)?;
        }
        Ok(())
    }

    fn add_entry(&mut self, at: &At<'_>, ord: &mut i64, e: &IndexEntry) -> Result<(), StoreError> {
        if let IndexValue::Composite { parts } = &e.value {
            let json =
                serde_json::to_string(parts).map_err(|err| StoreError::Other(err.to_string()))?;
            let grp = *ord;
            *ord += 1;
            self.composite
                .common(at, grp, &e.param, None)
                .parts
                .push(json);
            for (i, part) in parts.iter().enumerate() {
                // A composite never nests another in R4; skip rather than fail.
                if matches!(part, IndexValue::Composite { .. }) {
                    continue;
                }
                let param = format!("{}#{i}", e.param);
                self.add_value(at, ord, &param, part, Some(grp));
            }
            return Ok(());
        }
        self.add_value(at, ord, &e.param, &e.value, None);
        Ok(())
    }

    fn add_value(
        &mut self,
        at: &At<'_>,
        ord: &mut i64,
        param: &str,
        value: &IndexValue,
        grp: Option<i64>,
    ) {
        let o = *ord;
        *ord += 1;
        match value {
            IndexValue::Token { system, code, text } => {
                let t = self.token.common(at, o, param, grp);
                t.system.push(system.clone());
                t.code.push(code.clone());
                t.text.push(text.clone());
            }
            IndexValue::String { normalized, exact } => {
                let t = self.string.common(at, o, param, grp);
                t.normalized.push(normalized.clone());
                t.exact.push(exact.clone());
            }
            IndexValue::Date { low, high } => {
                let t = self.date.common(at, o, param, grp);
                t.low.push(*low);
                t.high.push(*high);
            }
            IndexValue::Number { value } => {
                self.number.common(at, o, param, grp).value.push(*value);
            }
            IndexValue::Quantity {
                value,
                system,
                code,
                unit,
            } => {
                let t = self.quantity.common(at, o, param, grp);
                t.value.push(*value);
                t.system.push(system.clone());
                t.code.push(code.clone());
                t.unit.push(unit.clone());
            }
            IndexValue::Reference {
                target_type,
                target_id,
                url,
            } => {
                let t = self.reference.common(at, o, param, grp);
                t.target_type.push(target_type.clone());
                t.target_id.push(target_id.clone());
                t.url.push(url.clone());
            }
            IndexValue::Uri { uri } => {
                self.uri.common(at, o, param, grp).uri.push(uri.clone());
            }
            IndexValue::Composite { .. } => {}
        }
    }

    /// The non-empty tables' rows, column by column.
    fn tables(&self) -> Vec<TableRows<'_>> {
        const BASE: [(&str, Type); 6] = [
            ("rid", Type::INT8),
            ("ord", Type::INT8),
            ("type", Type::TEXT),
            ("param", Type::TEXT),
            ("patient_key", Type::TEXT),
            ("grp", Type::INT8),
        ];
        fn table<'a, T>(
            out: &mut Vec<TableRows<'a>>,
            name: &'static str,
            c: &'a Cols<T>,
            own: Vec<(&'static str, Type, &'a dyn Column)>,
        ) {
            if c.rid.is_empty() {
                return;
            }
            let base: [&'a dyn Column; 6] = [&c.rid, &c.ord, &c.ty, &c.param, &c.key, &c.grp];
            let mut columns: Vec<(&'static str, Type, &'a dyn Column)> = BASE
                .iter()
                .zip(base)
                .map(|((n, t), col)| (*n, t.clone(), col))
                .collect();
            columns.extend(own);
            out.push(TableRows { name, columns });
        }
        let mut out = Vec::new();
        let t = &self.token.own;
        table(
            &mut out,
            "idx_token",
            &self.token,
            vec![
                col("system", Type::TEXT, &t.system),
                col("code", Type::TEXT, &t.code),
                col("text", Type::TEXT, &t.text),
            ],
        );
        let t = &self.string.own;
        table(
            &mut out,
            "idx_string",
            &self.string,
            vec![
                col("normalized", Type::TEXT, &t.normalized),
                col("exact", Type::TEXT, &t.exact),
            ],
        );
        let t = &self.date.own;
        table(
            &mut out,
            "idx_date",
            &self.date,
            vec![
                col("low", Type::INT8, &t.low),
                col("high", Type::INT8, &t.high),
            ],
        );
        table(
            &mut out,
            "idx_number",
            &self.number,
            vec![col("value", Type::FLOAT8, &self.number.own.value)],
        );
        let t = &self.quantity.own;
        table(
            &mut out,
            "idx_quantity",
            &self.quantity,
            vec![
                col("value", Type::FLOAT8, &t.value),
                col("system", Type::TEXT, &t.system),
                col("code", Type::TEXT, &t.code),
                col("unit", Type::TEXT, &t.unit),
            ],
        );
        let t = &self.reference.own;
        table(
            &mut out,
            "idx_reference",
            &self.reference,
            vec![
                col("target_type", Type::TEXT, &t.target_type),
                col("target_id", Type::TEXT, &t.target_id),
                col("url", Type::TEXT, &t.url),
            ],
        );
        table(
            &mut out,
            "idx_uri",
            &self.uri,
            vec![col("uri", Type::TEXT, &self.uri.own.uri)],
        );
        let c = &self.composite;
        if !c.rid.is_empty() {
            // No `grp` column: composite rows are themselves the group.
            out.push(TableRows {
                name: "idx_composite",
                columns: vec![
                    col("rid", Type::INT8, &c.rid),
                    col("ord", Type::INT8, &c.ord),
                    col("type", Type::TEXT, &c.ty),
                    col("param", Type::TEXT, &c.param),
                    col("patient_key", Type::TEXT, &c.key),
                    col("parts", Type::TEXT, &c.own.parts),
                ],
            });
        }
        out
    }

    /// One multi-row INSERT per non-empty table (arrays expanded by
    /// `unnest`), all pipelined: one round trip.
    async fn insert(&self, client: &Object) -> Result<(), StoreError> {
        let tables = self.tables();
        let mut statements = Vec::with_capacity(tables.len());
        for t in &tables {
            statements.push(
                client
                    .prepare_cached(&t.insert_sql())
                    .await
                    .map_err(pg_err)?,
            );
        }
        let runs = tables.iter().zip(&statements).map(|(t, stmt)| {
            let params: Vec<&(dyn ToSql + Sync)> =
                t.columns.iter().map(|(_, _, c)| c.whole()).collect();
            async move { client.execute(stmt, &params).await }
        });
        for r in futures::future::join_all(runs).await {
            r.map_err(pg_err)?;
        }
        Ok(())
    }
}

/// A column of a [`TableRows`] (a function, so the reference coerces).
fn col<'a>(
    name: &'static str,
    ty: Type,
    values: &'a dyn Column,
) -> (&'static str, Type, &'a dyn Column) {
    (name, ty, values)
}

/// One index table's rows: its name and its columns (name, type, values).
struct TableRows<'a> {
    name: &'static str,
    columns: Vec<(&'static str, Type, &'a dyn Column)>,
}

impl TableRows<'_> {
    /// The table's multi-row INSERT, its columns as `unnest`ed arrays.
    fn insert_sql(&self) -> String {
        let casts: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, ty, _))| format!("${}::{}[]", i + 1, sql_type(ty)))
            .collect();
        format!(
            "INSERT INTO {} ({}) SELECT * FROM unnest({})",
            self.name,
            self.names(),
            casts.join(", ")
        )
    }

    fn names(&self) -> String {
        self.columns
            .iter()
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A column of values, as an array parameter for `unnest` (bulk write
/// sets go by COPY instead, encoded by `copy.rs`).
trait Column: Sync {
    fn whole(&self) -> &(dyn ToSql + Sync);
}

impl<T: ToSql + Sync> Column for Vec<T>
where
    Vec<T>: ToSql,
{
    fn whole(&self) -> &(dyn ToSql + Sync) {
        self
    }
}

/// The SQL name of a column type used by the index tables.
fn sql_type(t: &Type) -> &'static str {
    if *t == Type::INT8 {
        "bigint"
    } else if *t == Type::FLOAT8 {
        "float8"
    } else {
        "text"
    }
}

/// Chain and insert audit records after the head, advancing it.
async fn append(tx: &Object, records: &[&AuditRecord], head: &mut Head) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let n = records.len();
    let mut seqs = Vec::with_capacity(n);
    let mut bytes = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    let mut patient = Vec::with_capacity(n);
    let mut user = Vec::with_capacity(n);
    let mut org = Vec::with_capacity(n);
    let mut client = Vec::with_capacity(n);
    let mut action = Vec::with_capacity(n);
    let mut outcome = Vec::with_capacity(n);
    let mut break_glass = Vec::with_capacity(n);
    for &record in records {
        at.push(record.recorded_at);
        patient.push(record.patient.as_deref());
        user.push(record.agent.user.as_deref());
        org.push(record.agent.org.as_deref());
        client.push(record.agent.client.as_deref());
        action.push(record.action.as_str());
        outcome.push(record.outcome.code());
        break_glass.push(record.is_break_glass());
        // Canonicalise once: the stored bytes are exactly the hashed bytes.
        let b = canonical_bytes(record);
        let hash = chain_hash_bytes(&head.audit_hash, &b);
        head.audit_seq += 1;
        head.audit_hash = hash;
        seqs.push(head.audit_seq);
        bytes.push(b);
        hashes.push(hash.to_vec());
    }
    type P<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
    let ledger_params: [P<'_>; 3] = [&seqs, &bytes, &hashes];
    let index_params: [P<'_>; 9] = [
        &seqs,
        &at,
        &patient,
        &user,
        &org,
        &client,
        &action,
        &outcome,
        &break_glass,
    ];
    let ledger_stmt = tx.prepare_cached(AUDIT_LEDGER).await.map_err(pg_err)?;
    let index_stmt = tx.prepare_cached(AUDIT_INDEX).await.map_err(pg_err)?;
    let ledger = tx.execute(&ledger_stmt, &ledger_params);
    let index = tx.execute(&index_stmt, &index_params);
    let (ledger, index) = futures::future::join(ledger, index).await;
    ledger.map_err(pg_err)?;
    index.map_err(pg_err)?;
    Ok(())
}
