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
use deadpool_postgres::{Object, Pool, Transaction};
use tokio::sync::mpsc::Receiver;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::oneshot;

use crate::error::{clone_err, pg_err, pool_err, timed_out};
use crate::search::{Shape, build};

/// Work for the writer.
pub(crate) enum Job {
    Commit(WriteSet, oneshot::Sender<Result<CommitReceipt, StoreError>>),
    Audit(Vec<AuditRecord>, oneshot::Sender<Result<(), StoreError>>),
    /// Finish what is queued before this, then stop.
    Close(oneshot::Sender<()>),
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
pub(crate) async fn run(pool: Pool, mut rx: Receiver<Job>, max_batch: usize, deadline: Duration) {
    let max_batch = max_batch.max(1);
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
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
        if !batch.is_empty() {
            run_batch(&pool, &mut batch, deadline).await;
        }
        batch.clear();
        if let Some(reply) = closing {
            pool.close();
            let _ = reply.send(());
            return;
        }
    }
}

/// The result a job is answered with once the batch commits.
enum Outcome {
    Commit(Result<CommitReceipt, StoreError>),
    Audit(Result<(), StoreError>),
}

async fn run_batch(pool: &Pool, batch: &mut Vec<Job>, deadline: Duration) {
    let outcomes = match connect_and_run(pool, batch, deadline).await {
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
            (Job::Commit(_, reply), Outcome::Commit(r)) => {
                let _ = reply.send(r);
            }
            (Job::Audit(_, reply), Outcome::Audit(r)) => {
                let _ = reply.send(r);
            }
            (Job::Commit(_, reply), Outcome::Audit(Err(e))) => {
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
) -> Result<Vec<Outcome>, StoreError> {
    let mut client = pool.get().await.map_err(pool_err)?;
    match tokio::time::timeout(deadline, run_in_transaction(&mut client, batch)).await {
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

/// BEGIN, lock the head, one savepoint per job, store the head, COMMIT.
/// An `Err` means the whole batch failed and nothing of it committed (or,
/// if the connection died during COMMIT, that nobody was told it did).
async fn run_in_transaction(
    client: &mut Object,
    batch: &[Job],
) -> Result<Vec<Outcome>, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    let row = tx
        .query_one(
            "SELECT seq, audit_seq, audit_hash FROM commit_head FOR UPDATE",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let hash: Vec<u8> = row.get(2);
    let mut head = Head {
        seq: row.get(0),
        audit_seq: row.get(1),
        audit_hash: hash
            .try_into()
            .map_err(|_| StoreError::Other("commit_head.audit_hash is not 32 bytes".into()))?,
    };
    let start = head;
    let single = batch.len() == 1;
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let saved = head;
        // A lone job needs no savepoint: if it fails the whole transaction
        // is rolled back, which is the same thing one round trip cheaper.
        if !single {
            tx.batch_execute("SAVEPOINT job").await.map_err(pg_err)?;
        }
        let result = match job {
            Job::Commit(ws, _) => apply_write_set(&tx, ws, &mut head).await.map(Some),
            Job::Audit(records, _) => append(&tx, records, &mut head).await.map(|()| None),
            Job::Close(_) => Ok(None),
        };
        if let Err(e) = &result {
            // A connection failure is the batch's failure, not the job's.
            if matches!(e, StoreError::Unavailable(_)) {
                return Err(clone_err(e));
            }
            head = saved;
            if single {
                tx.rollback().await.map_err(pg_err)?;
                return Ok(vec![outcome(job, result)]);
            }
            tx.batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                .await
                .map_err(pg_err)?;
        } else if !single {
            tx.batch_execute("RELEASE SAVEPOINT job")
                .await
                .map_err(pg_err)?;
        }
        outcomes.push(outcome(job, result));
    }
    if head.seq != start.seq || head.audit_seq != start.audit_seq {
        tx.execute(
            "UPDATE commit_head SET seq = $1, audit_seq = $2, audit_hash = $3",
            &[&head.seq, &head.audit_seq, &&head.audit_hash[..]],
        )
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(outcomes)
}

fn outcome(job: &Job, result: Result<Option<CommitReceipt>, StoreError>) -> Outcome {
    match job {
        Job::Commit(..) => {
            Outcome::Commit(result.map(|r| r.unwrap_or(CommitReceipt { first_seq: 0 })))
        }
        _ => Outcome::Audit(result.map(|_| ())),
    }
}

/// Preconditions, then versions + current rows + index rows, then audit.
async fn apply_write_set(
    tx: &Transaction<'_>,
    ws: &WriteSet,
    head: &mut Head,
) -> Result<CommitReceipt, StoreError> {
    for p in &ws.preconditions {
        check(tx, p).await?;
    }
    let first_seq = if ws.resources.is_empty() {
        0
    } else {
        write_resources(tx, &ws.resources, head).await?
    };
    append(tx, &ws.audit, head).await?;
    Ok(CommitReceipt { first_seq })
}

async fn check(tx: &Transaction<'_>, p: &Precondition) -> Result<(), StoreError> {
    match p {
        Precondition::CurrentVersion {
            resource_type,
            id,
            expected,
        } => {
            let stmt = tx
                .prepare_cached("SELECT version FROM current WHERE type = $1 AND id = $2")
                .await
                .map_err(pg_err)?;
            let found: Option<i64> = tx
                .query_opt(&stmt, &[resource_type, id])
                .await
                .map_err(pg_err)?
                .map(|r| r.get(0));
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
            // Inside the writer's transaction, after every earlier job of
            // the batch: it sees exactly what this write set will commit on.
            let sql = build(query, None, Shape::Ids, crate::now_micros())?;
            let rows = tx.query(&sql.text, &sql.refs()).await.map_err(pg_err)?;
            let mut found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
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

/// Insert every version, move `current`, replace index rows: a fixed number
/// of statements per write set however many resources it holds (arrays
/// bound as parameters and expanded by `unnest`), pipelined where they do
/// not depend on each other. Returns the first write's seq.
async fn write_resources(
    tx: &Transaction<'_>,
    writes: &[ResourceWrite],
    head: &mut Head,
) -> Result<i64, StoreError> {
    let first_seq = head.seq + 1;
    let n = writes.len();
    let mut seqs = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut updated = Vec::with_capacity(n);
    let mut deleted = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut jsons: Vec<&[u8]> = Vec::with_capacity(n);
    for w in writes {
        head.seq += 1;
        seqs.push(head.seq);
        types.push(w.resource_type.as_str());
        ids.push(w.id.as_str());
        versions.push(w.version);
        updated.push(w.last_updated);
        deleted.push(w.deleted);
        keys.push(w.patient_key.as_deref());
        jsons.push(&w.json);
    }
    // The last write of each resource is its current version (a write set
    // may carry several versions of one resource, in increasing order).
    let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(n);
    for (i, w) in writes.iter().enumerate() {
        last.insert((w.resource_type.as_str(), w.id.as_str()), i);
    }
    let mut cur: Vec<usize> = last.into_values().collect();
    cur.sort_unstable();
    let pick = |v: &dyn Fn(usize) -> i64| cur.iter().map(|&i| v(i)).collect::<Vec<i64>>();
    let c_types: Vec<&str> = cur.iter().map(|&i| types[i]).collect();
    let c_ids: Vec<&str> = cur.iter().map(|&i| ids[i]).collect();
    let c_versions = pick(&|i| versions[i]);
    let c_seqs = pick(&|i| seqs[i]);
    let c_updated = pick(&|i| updated[i]);
    let c_deleted: Vec<bool> = cur.iter().map(|&i| deleted[i]).collect();
    let c_keys: Vec<Option<&str>> = cur.iter().map(|&i| keys[i]).collect();

    let version_params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &seqs, &types, &ids, &versions, &updated, &deleted, &keys, &jsons,
    ];
    let key_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&c_types, &c_ids];
    let insert_versions = tx.execute(
        "INSERT INTO resources (seq, type, id, version, last_updated, deleted, patient_key, json) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], \
                              $6::boolean[], $7::text[], $8::bytea[])",
        &version_params,
    );
    let existing = tx.query(
        "SELECT c.rid FROM current c \
         JOIN unnest($1::text[], $2::text[]) AS u(type, id) ON c.type = u.type AND c.id = u.id",
        &key_params,
    );
    // Pipelined: both go out before either answer is awaited.
    let (inserted, existing) = futures::future::join(insert_versions, existing).await;
    inserted.map_err(pg_err)?;
    let old_rids: Vec<i64> = existing.map_err(pg_err)?.iter().map(|r| r.get(0)).collect();
    if !old_rids.is_empty() {
        // Index rows describe the current version only.
        let deletes = crate::schema::INDEX_TABLES.iter().map(|table| {
            let sql = format!("DELETE FROM {table} WHERE rid = ANY($1)");
            let rids = &old_rids;
            async move { tx.execute(&sql, &[rids]).await }
        });
        for r in futures::future::join_all(deletes).await {
            r.map_err(pg_err)?;
        }
    }
    let moved = tx
        .query(
            "INSERT INTO current (type, id, version, seq, last_updated, deleted, patient_key) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], \
                                  $6::boolean[], $7::text[]) \
             ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, seq = excluded.seq, \
                 last_updated = excluded.last_updated, deleted = excluded.deleted, \
                 patient_key = excluded.patient_key \
             RETURNING rid, type, id",
            &[
                &c_types,
                &c_ids,
                &c_versions,
                &c_seqs,
                &c_updated,
                &c_deleted,
                &c_keys,
            ],
        )
        .await
        .map_err(pg_err)?;
    let mut rid_of: HashMap<(String, String), i64> = HashMap::with_capacity(moved.len());
    for r in &moved {
        rid_of.insert((r.get(1), r.get(2)), r.get(0));
    }
    let mut rows = IndexRows::default();
    for &i in &cur {
        let w = &writes[i];
        if w.deleted {
            continue;
        }
        let rid = rid_of
            .get(&(w.resource_type.clone(), w.id.clone()))
            .copied()
            .ok_or_else(|| StoreError::Other(format!("no rid for {}/{}", w.resource_type, w.id)))?;
        rows.add_resource(rid, w)?;
    }
    rows.insert(tx).await?;
    Ok(first_seq)
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

    /// One multi-row INSERT per non-empty table, all pipelined.
    async fn insert(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        const BASE: &str = "rid, ord, type, param, patient_key, grp";
        const BASE_T: &str =
            "$1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[]";
        let mut pending = Vec::new();
        macro_rules! table {
            ($c:ident = $cols:expr, $table:literal, $own:literal, $own_t:literal, [$($v:expr),*]) => {
                if !$cols.rid.is_empty() {
                    let $c = &$cols;
                    let sql = format!(
                        "INSERT INTO {} ({BASE}, {}) SELECT * FROM unnest({BASE_T}, {})",
                        $table, $own, $own_t
                    );
                    pending.push(Box::pin(async move {
                        tx.execute(
                            &sql,
                            &[&$c.rid, &$c.ord, &$c.ty, &$c.param, &$c.key, &$c.grp, $($v),*],
                        )
                        .await
                    })
                        as std::pin::Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + '_>>);
                }
            };
        }
        table!(
            c = self.token,
            "idx_token",
            "system, code, text",
            "$7::text[], $8::text[], $9::text[]",
            [&c.own.system, &c.own.code, &c.own.text]
        );
        table!(
            c = self.string,
            "idx_string",
            "normalized, exact",
            "$7::text[], $8::text[]",
            [&c.own.normalized, &c.own.exact]
        );
        table!(
            c = self.date,
            "idx_date",
            "low, high",
            "$7::bigint[], $8::bigint[]",
            [&c.own.low, &c.own.high]
        );
        table!(
            c = self.number,
            "idx_number",
            "value",
            "$7::float8[]",
            [&c.own.value]
        );
        table!(
            c = self.quantity,
            "idx_quantity",
            "value, system, code, unit",
            "$7::float8[], $8::text[], $9::text[], $10::text[]",
            [&c.own.value, &c.own.system, &c.own.code, &c.own.unit]
        );
        table!(
            c = self.reference,
            "idx_reference",
            "target_type, target_id, url",
            "$7::text[], $8::text[], $9::text[]",
            [&c.own.target_type, &c.own.target_id, &c.own.url]
        );
        table!(c = self.uri, "idx_uri", "uri", "$7::text[]", [&c.own.uri]);
        if !self.composite.rid.is_empty() {
            // No `grp` column: composite rows are themselves the group.
            let c = &self.composite;
            pending.push(Box::pin(async move {
                tx.execute(
                    "INSERT INTO idx_composite (rid, ord, type, param, patient_key, parts) \
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], \
                                          $5::text[], $6::text[])",
                    &[&c.rid, &c.ord, &c.ty, &c.param, &c.key, &c.own.parts],
                )
                .await
            }));
        }
        for r in futures::future::join_all(pending).await {
            r.map_err(pg_err)?;
        }
        Ok(())
    }
}

/// Chain and insert audit records after the head, advancing it.
async fn append(
    tx: &Transaction<'_>,
    records: &[AuditRecord],
    head: &mut Head,
) -> Result<(), StoreError> {
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
    for record in records {
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
    let ledger = tx.execute(
        "INSERT INTO audit_ledger (seq, record, hash) \
         SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])",
        &ledger_params,
    );
    let index = tx.execute(
        "INSERT INTO audit_index (seq, recorded_at, patient, agent_user, agent_org, \
             agent_client, action, outcome, break_glass) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                              $6::text[], $7::text[], $8::text[], $9::boolean[])",
        &index_params,
    );
    let (ledger, index) = futures::future::join(ledger, index).await;
    ledger.map_err(pg_err)?;
    index.map_err(pg_err)?;
    Ok(())
}
