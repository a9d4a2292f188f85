//! The audit ledger's queries: search over `audit_index`, the committed head,
//! raw rows for verification, and signed checkpoints.
//!
//! Search filters on the derived `audit_index` but always returns the decoded
//! ledger row, so a tampered index can hide or misfile an entry in a search
//! but never change what an entry says (and verification never reads it).

use carelayer_audit::{ChainHead, Checkpoint, LedgerRow};
use carelayer_store::{AuditQuery, RawLedgerRow, StoreError};
use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;

use crate::error::pg_err;

fn decode_row(seq: i64, record: &[u8], hash: Vec<u8>) -> Result<LedgerRow, StoreError> {
    let record = carelayer_audit::decode(record)
        .map_err(|e| StoreError::Other(format!("audit row {seq}: {e}")))?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Other(format!("audit row {seq}: hash is not 32 bytes")))?;
    Ok(LedgerRow { seq, record, hash })
}

/// Ledger rows from `after`, ascending (the trait's `audit_rows`).
pub(crate) async fn rows(
    client: &Object,
    after: i64,
    limit: usize,
) -> Result<Vec<LedgerRow>, StoreError> {
    raw_rows(client, after, limit)
        .await?
        .into_iter()
        .map(|r| decode_row(r.seq, &r.record, r.hash))
        .collect()
}

/// Ledger rows matching `q`, newest first.
pub(crate) async fn search(client: &Object, q: &AuditQuery) -> Result<Vec<LedgerRow>, StoreError> {
    if q.limit == 0 {
        return Ok(Vec::new());
    }
    let mut sql = String::from(
        "SELECT i.seq, l.record, l.hash FROM audit_index i \
         JOIN audit_ledger l ON l.seq = i.seq WHERE TRUE",
    );
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    // Placeholder for the next bound value.
    let mut arg = |v: Box<dyn ToSql + Sync + Send>| {
        args.push(v);
        format!("${}", args.len())
    };
    if let Some(p) = &q.patient {
        sql.push_str(&format!(" AND i.patient = {}", arg(Box::new(p.clone()))));
    }
    if let Some(o) = &q.org {
        sql.push_str(&format!(" AND i.agent_org = {}", arg(Box::new(o.clone()))));
    }
    if let Some(a) = &q.agent {
        // One parameter used twice: the agent is a user or a client.
        let n = arg(Box::new(a.clone()));
        sql.push_str(&format!(
            " AND (i.agent_user = {n} OR i.agent_client = {n})"
        ));
    }
    if !q.actions.is_empty() {
        let list: Vec<String> = q.actions.iter().map(|a| a.as_str().to_owned()).collect();
        sql.push_str(&format!(" AND i.action = ANY({})", arg(Box::new(list))));
    }
    if !q.outcomes.is_empty() {
        let list: Vec<String> = q.outcomes.iter().map(|o| o.as_str().to_owned()).collect();
        sql.push_str(&format!(" AND i.outcome = ANY({})", arg(Box::new(list))));
    }
    if let Some(from) = q.from {
        sql.push_str(&format!(" AND i.recorded_at >= {}", arg(Box::new(from))));
    }
    if let Some(to) = q.to {
        sql.push_str(&format!(" AND i.recorded_at < {}", arg(Box::new(to))));
    }
    if let Some(bg) = q.break_glass {
        sql.push_str(&format!(" AND i.break_glass = {}", arg(Box::new(bg))));
    }
    if let Some(before) = q.before_seq {
        sql.push_str(&format!(" AND i.seq < {}", arg(Box::new(before))));
    }
    let limit = arg(Box::new(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    sql.push_str(&format!(" ORDER BY i.seq DESC LIMIT {limit}"));
    let refs: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let stmt = client.prepare_cached(&sql).await.map_err(pg_err)?;
    let rows = client.query(&stmt, &refs).await.map_err(pg_err)?;
    rows.iter()
        .map(|r| decode_row(r.get(0), r.get::<_, &[u8]>(1), r.get(2)))
        .collect()
}

/// The last committed ledger row's seq and hash.
pub(crate) async fn head(client: &Object) -> Result<ChainHead, StoreError> {
    let stmt = client
        .prepare_cached("SELECT seq, hash FROM audit_ledger ORDER BY seq DESC LIMIT 1")
        .await
        .map_err(pg_err)?;
    match client.query_opt(&stmt, &[]).await.map_err(pg_err)? {
        None => Ok(ChainHead::genesis()),
        Some(r) => {
            let seq: i64 = r.get(0);
            let hash: Vec<u8> = r.get(1);
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Other(format!("audit row {seq}: hash is not 32 bytes")))?;
            Ok(ChainHead { seq, hash })
        }
    }
}

/// Rows as stored, ascending, after `after`.
pub(crate) async fn raw_rows(
    client: &Object,
    after: i64,
    limit: usize,
) -> Result<Vec<RawLedgerRow>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT seq, record, hash FROM audit_ledger WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .await
        .map_err(pg_err)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(&stmt, &[&after, &limit])
        .await
        .map_err(pg_err)?;
    Ok(rows
        .iter()
        .map(|r| RawLedgerRow {
            seq: r.get(0),
            record: r.get(1),
            hash: r.get(2),
        })
        .collect())
}

/// Every kept checkpoint, ascending by seq.
pub(crate) async fn checkpoints(client: &Object) -> Result<Vec<Checkpoint>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT seq, head_hash, signed_at, key_id, signature FROM audit_checkpoints \
             ORDER BY seq, key_id",
        )
        .await
        .map_err(pg_err)?;
    let rows = client.query(&stmt, &[]).await.map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            let seq: i64 = r.get(0);
            let bad = |what: &str| StoreError::Other(format!("checkpoint {seq}: bad {what}"));
            Ok(Checkpoint {
                seq,
                head_hash: r
                    .get::<_, Vec<u8>>(1)
                    .try_into()
                    .map_err(|_| bad("head hash"))?,
                signed_at: r.get(2),
                key_id: r.get(3),
                signature: r
                    .get::<_, Vec<u8>>(4)
                    .try_into()
                    .map_err(|_| bad("signature"))?,
            })
        })
        .collect()
}

/// Insert a checkpoint (idempotent). Not through the writer: checkpoints are
/// rare, independent of the chain head, and must not add a job kind to the
/// hot write path.
pub(crate) async fn save_checkpoint(client: &Object, cp: &Checkpoint) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO audit_checkpoints (seq, key_id, head_hash, signed_at, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                &cp.seq,
                &cp.key_id,
                &&cp.head_hash[..],
                &cp.signed_at,
                &&cp.signature[..],
            ],
        )
        .await
        .map_err(pg_err)?;
    Ok(())
}
