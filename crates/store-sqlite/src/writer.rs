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
//! The audit chain head (last seq and hash) lives here, in memory, loaded at
//! open: appending needs no read. A rolled-back attempt or a failed COMMIT
//! restores the batch's starting head.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use carelayer_audit::{AuditRecord, GENESIS_HASH, canonical_bytes, chain_hash_bytes};
use carelayer_fhir::search::{IndexEntry, IndexValue};
use carelayer_store::{CommitReceipt, Precondition, ResourceWrite, StoreError, WriteSet};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc::Receiver;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::oneshot;

use crate::error::sql_err;
use crate::search::{Shape, build};

/// Work for the writer.
pub(crate) enum Job {
    Commit(WriteSet, oneshot::Sender<Result<CommitReceipt, StoreError>>),
    Audit(Vec<AuditRecord>, oneshot::Sender<Result<(), StoreError>>),
    /// Finish what is queued before this, then stop.
    Close(oneshot::Sender<()>),
}

/// The ledger's chain head: last seq and its hash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    seq: i64,
    hash: [u8; 32],
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
/// appends alone commit with `synchronous=NORMAL` (no fsync) and raise the
/// flag for the checkpoint thread; any batch with a write set commits FULL.
pub(crate) fn run(
    conn: Connection,
    mut rx: Receiver<Job>,
    mut head: Head,
    max_batch: usize,
    unsynced: Option<Arc<AtomicBool>>,
) {
    let mut relaxed = false;
    let max_batch = max_batch.max(1);
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        batch.push(first);
        let mut closing = None;
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
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
        if !batch.is_empty() {
            let audit_only = batch.iter().all(|j| matches!(j, Job::Audit(..)));
            let relax = unsynced.is_some() && audit_only;
            if relax != relaxed {
                let mode = if relax { "NORMAL" } else { "FULL" };
                if conn
                    .execute_batch(&format!("PRAGMA synchronous={mode}"))
                    .is_ok()
                {
                    relaxed = relax;
                }
            }
            run_batch(&conn, &mut batch, &mut head);
            if relaxed && let Some(flag) = &unsynced {
                flag.store(true, Ordering::Release);
            }
        }
        batch.clear();
        if let Some(reply) = closing {
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
            drop(conn);
            let _ = reply.send(());
            return;
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
fn run_batch(conn: &Connection, batch: &mut Vec<Job>, head: &mut Head) {
    let start = *head;
    let mut failed: Vec<Option<StoreError>> = batch.iter().map(|_| None).collect();
    let results = loop {
        match attempt(conn, batch, &failed, head) {
            Ok(results) => break results,
            Err(abort) => {
                // Nothing of this attempt is durable: undo the in-memory head too.
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                *head = start;
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
    for (job, result) in batch.drain(..).zip(results) {
        match job {
            Job::Commit(_, reply) => {
                let _ = reply.send(result);
            }
            Job::Audit(_, reply) => {
                let _ = reply.send(result.map(|_| ()));
            }
            Job::Close(_) => {}
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

/// One transaction over the jobs not already failed.
fn attempt(
    conn: &Connection,
    batch: &[Job],
    failed: &[Option<StoreError>],
    head: &mut Head,
) -> Result<Vec<Result<CommitReceipt, StoreError>>, Abort> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| Abort::Batch(sql_err(e)))?;
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
                Ok(()) => Ok(apply_writes(conn, ws, head).map_err(|e| Abort::Job(i, e))?),
            },
            Job::Audit(records, _) => {
                append(conn, records, head).map_err(|e| Abort::Job(i, e))?;
                Ok(NO_WRITES)
            }
            Job::Close(_) => Ok(NO_WRITES),
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
) -> Result<CommitReceipt, StoreError> {
    let mut first_seq = 0;
    for (i, w) in ws.resources.iter().enumerate() {
        let seq = write_resource(conn, w)?;
        if i == 0 {
            first_seq = seq;
        }
    }
    append(conn, &ws.audit, head)?;
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

/// Chain and insert audit records after the head, advancing it.
fn append(conn: &Connection, records: &[AuditRecord], head: &mut Head) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached("INSERT INTO audit_ledger (seq, record, hash) VALUES (?1, ?2, ?3)")
        .map_err(sql_err)?;
    for record in records {
        // Canonicalise once: the stored bytes are exactly the hashed bytes.
        let bytes = canonical_bytes(record);
        let hash = chain_hash_bytes(&head.hash, &bytes);
        let seq = head.seq + 1;
        stmt.execute(params![seq, bytes, &hash[..]])
            .map_err(sql_err)?;
        // The query columns commit with the entry (same transaction).
        crate::audit::index_entry(conn, seq, record)?;
        *head = Head { seq, hash };
    }
    Ok(())
}
