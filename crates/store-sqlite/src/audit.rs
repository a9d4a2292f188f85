//! The audit ledger's queries: the committed head, rows for verification,
//! signed checkpoints, and the multi-row insert the ledger and its index
//! share. The query index and search over it are in `audit_index`.

use std::path::Path;
use std::time::Duration;

use carelayer_audit::{ChainHead, Checkpoint, LedgerRow};
use carelayer_store::{RawLedgerRow, StoreError};
use rusqlite::ToSql;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::error::sql_err;

/// Rows per multi-row `INSERT`. The ledger and its index take every read's
/// entry, in bulk (see "Deferred audit work" in `writer`); one statement
/// step per row cost more than the row's B-tree work, so rows go 128 to a
/// statement (1,152 bound values at most, far below SQLite's limit).
const ROWS_PER_INSERT: usize = 128;

/// Insert `rows` with `insert` (`"INSERT INTO t (a, b) VALUES "`), `columns`
/// values each, bound by `bind` in column order: full chunks of
/// [`ROWS_PER_INSERT`] through one cached statement, the rest row by row.
pub(crate) fn insert_rows<T>(
    conn: &Connection,
    insert: &str,
    columns: usize,
    rows: &[T],
    bind: impl for<'r> Fn(&'r T, &mut Vec<&'r dyn ToSql>),
) -> Result<(), StoreError> {
    let placeholders = |n: usize| {
        let row = format!("({})", vec!["?"; columns].join(", "));
        format!("{insert}{}", vec![row; n].join(", "))
    };
    let mut values: Vec<&dyn ToSql> = Vec::with_capacity(columns * ROWS_PER_INSERT);
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    if chunks.len() > 0 {
        let mut stmt = conn
            .prepare_cached(&placeholders(ROWS_PER_INSERT))
            .map_err(sql_err)?;
        for chunk in chunks.by_ref() {
            values.clear();
            for row in chunk {
                bind(row, &mut values);
            }
            stmt.execute(params_from_iter(values.iter()))
                .map_err(sql_err)?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = conn.prepare_cached(&placeholders(1)).map_err(sql_err)?;
        for row in rest {
            values.clear();
            bind(row, &mut values);
            stmt.execute(params_from_iter(values.iter()))
                .map_err(sql_err)?;
        }
    }
    Ok(())
}

pub(crate) fn decode_row(seq: i64, record: &[u8], hash: Vec<u8>) -> Result<LedgerRow, StoreError> {
    let record = carelayer_audit::decode(record)
        .map_err(|e| StoreError::Other(format!("audit row {seq}: {e}")))?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Other(format!("audit row {seq}: hash is not 32 bytes")))?;
    Ok(LedgerRow { seq, record, hash })
}

/// The last committed ledger row's seq and hash.
pub(crate) fn head(conn: &Connection) -> Result<ChainHead, StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM audit_ledger ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(sql_err)?;
    match row {
        None => Ok(ChainHead::genesis()),
        Some((seq, hash)) => {
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Other(format!("audit row {seq}: hash is not 32 bytes")))?;
            Ok(ChainHead { seq, hash })
        }
    }
}

/// Up to `limit` ledger rows after seq `?1`, ascending. A literal limit:
/// see `crate::search::build` for why never `LIMIT ?`.
fn rows_after_sql(limit: usize) -> String {
    format!(
        "SELECT seq, record, hash FROM audit_ledger WHERE seq > ?1 ORDER BY seq LIMIT {}",
        i64::try_from(limit).unwrap_or(i64::MAX)
    )
}

/// Decoded rows, ascending, after `after`.
pub(crate) fn rows(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> Result<Vec<LedgerRow>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&rows_after_sql(limit))
        .map_err(sql_err)?;
    let raw: Vec<(i64, Vec<u8>, Vec<u8>)> = stmt
        .query_map(params![after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .and_then(Iterator::collect)
        .map_err(sql_err)?;
    raw.into_iter()
        .map(|(seq, record, hash)| decode_row(seq, &record, hash))
        .collect()
}

/// Rows as stored, ascending, after `after`.
pub(crate) fn raw_rows(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> Result<Vec<RawLedgerRow>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&rows_after_sql(limit))
        .map_err(sql_err)?;
    stmt.query_map(params![after], |r| {
        Ok(RawLedgerRow {
            seq: r.get(0)?,
            // An attacker may have stored TEXT or NULL: read any type as bytes.
            record: blob_or_text(r.get_ref(1)?),
            hash: blob_or_text(r.get_ref(2)?),
        })
    })
    .and_then(Iterator::collect)
    .map_err(sql_err)
}

fn blob_or_text(v: rusqlite::types::ValueRef<'_>) -> Vec<u8> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
    }
}

/// A stored checkpoint: seq, head hash, signed at, key id, signature.
type CheckpointRow = (i64, Vec<u8>, i64, String, Vec<u8>);

/// Every kept checkpoint, ascending by seq.
pub(crate) fn checkpoints(conn: &Connection) -> Result<Vec<Checkpoint>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, head_hash, signed_at, key_id, signature FROM audit_checkpoints \
             ORDER BY seq, key_id",
        )
        .map_err(sql_err)?;
    let raw: Vec<CheckpointRow> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .and_then(Iterator::collect)
        .map_err(sql_err)?;
    raw.into_iter()
        .map(|(seq, head_hash, signed_at, key_id, signature)| {
            let bad = |what: &str| StoreError::Other(format!("checkpoint {seq}: bad {what}"));
            Ok(Checkpoint {
                seq,
                head_hash: head_hash.try_into().map_err(|_| bad("head hash"))?,
                signed_at,
                key_id,
                signature: signature.try_into().map_err(|_| bad("signature"))?,
            })
        })
        .collect()
}

/// How long saving a checkpoint waits for the writer thread's transaction.
/// Checkpoints are background work, so waiting long is better than failing.
const CHECKPOINT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Insert a checkpoint on a connection of its own.
///
/// Why not through the writer thread: checkpoints are rare (every N entries
/// or T seconds) and must not add a job kind to the hot write path; SQLite
/// serialises this short transaction with the writer's batches.
pub(crate) fn save_checkpoint(path: &Path, cp: &Checkpoint) -> Result<(), StoreError> {
    let conn = Connection::open(path).map_err(sql_err)?;
    conn.busy_timeout(CHECKPOINT_BUSY_TIMEOUT)
        .map_err(sql_err)?;
    conn.execute(
        "INSERT OR IGNORE INTO audit_checkpoints (seq, key_id, head_hash, signed_at, signature) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            cp.seq,
            cp.key_id,
            &cp.head_hash[..],
            cp.signed_at,
            &cp.signature[..]
        ],
    )
    .map_err(sql_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::{ROWS_PER_INSERT, insert_rows};
    use rusqlite::Connection;

    /// Every row arrives once, in order, with its values in the right
    /// columns, whether it went in a full chunk or in the remainder.
    #[test]
    fn insert_rows_writes_every_row_across_chunks() {
        for n in [
            0,
            1,
            ROWS_PER_INSERT - 1,
            ROWS_PER_INSERT,
            2 * ROWS_PER_INSERT + 44,
        ] {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch("CREATE TABLE t (n INTEGER, label TEXT, maybe TEXT)")
                .unwrap();
            let rows: Vec<(i64, String, Option<String>)> = (0..n)
                .map(|i| {
                    let i = i64::try_from(i).unwrap();
                    (i, format!("row {i}"), (i % 3 == 0).then(|| format!("m{i}")))
                })
                .collect();
            insert_rows(
                &conn,
                "INSERT INTO t (n, label, maybe) VALUES ",
                3,
                &rows,
                |r, out| {
                    out.push(&r.0);
                    out.push(&r.1);
                    out.push(&r.2);
                },
            )
            .unwrap();
            let stored: Vec<(i64, String, Option<String>)> = conn
                .prepare("SELECT n, label, maybe FROM t ORDER BY rowid")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(stored, rows, "{n} rows");
        }
    }
}
