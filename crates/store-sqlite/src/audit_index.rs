//! The audit ledger's query index: postings per flush, and search over them.
//!
//! # Why postings, not a row per entry
//! Every read is audited, so the index takes one entry per read. Version 2
//! kept one `audit_index` row per entry with six B-trees over it (patient,
//! org, user, client, time, break-glass): about 3.6 µs of the writer's CPU
//! per entry, the largest single cost of read audit. The index is written
//! in bulk anyway (see "Deferred audit work" in `writer`), and one flush
//! covers a contiguous run of seqs, a *block*. So a flush now writes, per
//! distinct filter value in the block, one `audit_postings` row holding that
//! value's seqs in the block, and one `audit_blocks` row with the block's
//! seq range and time range. A flush of 65,536 reads by a few clinicians
//! about a few hundred patients writes a few hundred rows instead of 393,216
//! B-tree entries.
//!
//! # Keys
//! `p|PATIENT`, `u|USER`, `c|CLIENT`, `o|ORG`, `b|` (break-glass entries) and
//! `x|OUTCOME` (outcomes other than success: denials and failures are rare
//! and a privacy officer asks for them). The prefix ends at the first `|`, so
//! a value containing `|` cannot be mistaken for another kind's key.
//!
//! # Search
//! The most selective filter present drives: its postings give candidate
//! seqs, newest block first; with none, the ledger itself is walked
//! backwards. A date window narrows the seq range through `audit_blocks`
//! (a superset: every entry of a block lies in its time range). Every
//! candidate's ledger row is decoded and every filter is tested on the
//! record itself (`AuditQuery::matches`), so the index only ever proposes:
//! a tampered index can hide or misfile an entry in a search but can never
//! change what one says, and verification never reads it.

use std::collections::BTreeMap;

use carelayer_audit::{AuditRecord, LedgerRow};
use carelayer_store::{AuditQuery, OutcomeClass, StoreError};
use rusqlite::{Connection, OptionalExtension, params};

use crate::audit::{decode_row, insert_rows};
use crate::error::sql_err;
use crate::writer::IndexRow;

/// Most ledger rows indexed as one block when deriving the index from the
/// ledger (at open, or after a failed flush): the size of a full flush.
const DERIVE_CHUNK: usize = crate::writer::DEFERRED_CHUNK;

/// The posting keys of one entry.
fn keys(row: &IndexRow) -> impl Iterator<Item = String> + '_ {
    [
        row.patient.as_deref().map(|p| key("p", p)),
        row.user.as_deref().map(|u| key("u", u)),
        row.client.as_deref().map(|c| key("c", c)),
        row.org.as_deref().map(|o| key("o", o)),
        row.break_glass.then(|| key("b", "")),
        (row.outcome != OutcomeClass::Success.as_str()).then(|| key("x", row.outcome)),
    ]
    .into_iter()
    .flatten()
}

fn key(kind: &str, value: &str) -> String {
    format!("{kind}|{value}")
}

/// Index `rows` (one block: every entry after the last indexed one, in seq
/// order) inside the caller's transaction.
pub(crate) fn index_entries(conn: &Connection, rows: &[IndexRow]) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    write_block(conn, first.seq, last.seq, rows)
}

/// Write the block `first_seq..=last_seq`: the postings of `rows` (its
/// entries that decode, ascending) and the block's seq and time range. A
/// block without rows (none decoded) matches every date window.
fn write_block(
    conn: &Connection,
    first_seq: i64,
    last_seq: i64,
    rows: &[IndexRow],
) -> Result<(), StoreError> {
    let mut postings: BTreeMap<String, String> = BTreeMap::new();
    for row in rows {
        for k in keys(row) {
            let seqs = postings.entry(k).or_default();
            if !seqs.is_empty() {
                seqs.push(',');
            }
            seqs.push_str(&row.seq.to_string());
        }
    }
    let postings: Vec<(String, i64, String)> = postings
        .into_iter()
        .map(|(k, seqs)| (k, last_seq, seqs))
        .collect();
    insert_rows(
        conn,
        "INSERT INTO audit_postings (key, block, seqs) VALUES ",
        3,
        &postings,
        |(k, block, seqs), out| {
            out.push(k);
            out.push(block);
            out.push(seqs);
        },
    )?;
    let first_at = rows.iter().map(|r| r.recorded_at).min().unwrap_or(i64::MIN);
    let last_at = rows.iter().map(|r| r.recorded_at).max().unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO audit_blocks (last_seq, first_seq, first_at, last_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![last_seq, first_seq, first_at, last_at]))
    .map(|_| ())
    .map_err(sql_err)
}

/// Index every ledger entry after the last indexed block, from the entries
/// themselves (at open, after a crash lost the writer's backlog, after a
/// failed flush, and once after the upgrade to postings), in blocks of
/// [`DERIVE_CHUNK`]. A row that does not decode (tampered) is left out of
/// the postings but inside its block's range: only verification can speak
/// about it.
pub(crate) fn index_from_ledger(conn: &Connection) -> Result<(), StoreError> {
    let mut after: i64 = conn
        .query_row(
            "SELECT coalesce(max(last_seq), 0) FROM audit_blocks",
            [],
            |r| r.get(0),
        )
        .map_err(sql_err)?;
    let sql = format!(
        "SELECT seq, record FROM audit_ledger WHERE seq > ?1 ORDER BY seq LIMIT {DERIVE_CHUNK}"
    );
    loop {
        let chunk: Vec<(i64, Option<AuditRecord>)> =
            conn.prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_map([after], |r| {
                        let seq: i64 = r.get(0)?;
                        let record = match r.get_ref(1)? {
                            rusqlite::types::ValueRef::Blob(b)
                            | rusqlite::types::ValueRef::Text(b) => carelayer_audit::decode(b).ok(),
                            _ => None,
                        };
                        Ok((seq, record))
                    })?
                    .collect()
                })
                .map_err(sql_err)?;
        let (Some((first_seq, _)), Some((last_seq, _))) = (chunk.first(), chunk.last()) else {
            return Ok(());
        };
        let rows: Vec<IndexRow> = chunk
            .iter()
            .filter_map(|(seq, record)| record.as_ref().map(|r| IndexRow::of(*seq, r)))
            .collect();
        write_block(conn, *first_seq, *last_seq, &rows)?;
        after = *last_seq;
    }
}

/// The keys whose postings hold every entry `q` can match, from the most
/// selective filter present; `None` when no filter has postings.
fn driving_keys(q: &AuditQuery) -> Option<Vec<String>> {
    if let Some(p) = &q.patient {
        return Some(vec![key("p", p)]);
    }
    if let Some(a) = &q.agent {
        return Some(vec![key("u", a), key("c", a)]);
    }
    if q.break_glass == Some(true) {
        return Some(vec![key("b", "")]);
    }
    if !q.outcomes.is_empty() && !q.outcomes.contains(&OutcomeClass::Success) {
        return Some(q.outcomes.iter().map(|o| key("x", o.as_str())).collect());
    }
    q.org.as_ref().map(|o| vec![key("o", o)])
}

/// One seq from `audit_blocks` (`sql`: an aggregate over the blocks past
/// `value`); `None` when no block qualifies.
fn block_bound(conn: &Connection, sql: &str, value: i64) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.query_row([value], |r| r.get(0)))
        .map_err(sql_err)
}

/// The seqs `q` can match lie in `[low, high)`; `None` when the date window
/// holds no block.
fn seq_window(conn: &Connection, q: &AuditQuery) -> Result<Option<(i64, i64)>, StoreError> {
    let mut low = 1;
    let mut high = q.before_seq.unwrap_or(i64::MAX);
    if let Some(from) = q.from {
        match block_bound(
            conn,
            "SELECT min(first_seq) FROM audit_blocks WHERE last_at >= ?1",
            from,
        )? {
            Some(first) => low = low.max(first),
            None => return Ok(None),
        }
    }
    if let Some(to) = q.to {
        match block_bound(
            conn,
            "SELECT max(last_seq) FROM audit_blocks WHERE first_at < ?1",
            to,
        )? {
            Some(last) => high = high.min(last.saturating_add(1)),
            None => return Ok(None),
        }
    }
    Ok((low < high).then_some((low, high)))
}

/// Ledger rows matching `q`, newest first (at most `q.limit`).
pub(crate) fn search(conn: &Connection, q: &AuditQuery) -> Result<Vec<LedgerRow>, StoreError> {
    let mut found = Vec::new();
    if q.limit == 0 {
        return Ok(found);
    }
    let Some((low, high)) = seq_window(conn, q)? else {
        return Ok(found);
    };
    match driving_keys(q) {
        None => {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, record, hash FROM audit_ledger \
                     WHERE seq >= ?1 AND seq < ?2 ORDER BY seq DESC",
                )
                .map_err(sql_err)?;
            let mut rows = stmt.query(params![low, high]).map_err(sql_err)?;
            while let Some(row) = rows.next().map_err(sql_err)? {
                let row = decode_row(
                    row.get(0).map_err(sql_err)?,
                    &row.get::<_, Vec<u8>>(1).map_err(sql_err)?,
                    row.get(2).map_err(sql_err)?,
                )?;
                if q.matches(row.seq, &row.record) {
                    found.push(row);
                    if found.len() == q.limit {
                        break;
                    }
                }
            }
        }
        Some(keys) => {
            // The block holding seq `high - 1` is the newest that can hold a
            // candidate (blocks are contiguous runs: a block is named by its
            // last seq).
            let top = block_bound(
                conn,
                "SELECT min(last_seq) FROM audit_blocks WHERE last_seq >= ?1",
                high.saturating_sub(1),
            )?
            .unwrap_or(i64::MAX);
            let placeholders: Vec<String> =
                (0..keys.len()).map(|i| format!("?{}", i + 3)).collect();
            let sql = format!(
                "SELECT block, seqs FROM audit_postings WHERE key IN ({}) \
                 AND block >= ?1 AND block <= ?2 ORDER BY block DESC",
                placeholders.join(", ")
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_err)?;
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![&low, &top];
            args.extend(keys.iter().map(|k| k as &dyn rusqlite::ToSql));
            let mut rows = stmt.query(args.as_slice()).map_err(sql_err)?;
            let mut ledger = conn
                .prepare_cached("SELECT record, hash FROM audit_ledger WHERE seq = ?1")
                .map_err(sql_err)?;
            // Postings of one block (several keys) are merged before use.
            let mut block: Option<i64> = None;
            let mut seqs: Vec<i64> = Vec::new();
            loop {
                let next = rows.next().map_err(sql_err)?;
                let next_block: Option<i64> =
                    next.map(|r| r.get(0)).transpose().map_err(sql_err)?;
                if block.is_some() && next_block != block {
                    seqs.sort_unstable_by(|a, b| b.cmp(a));
                    seqs.dedup();
                    for &seq in seqs.iter().filter(|s| (low..high).contains(*s)) {
                        let Some((record, hash)) = ledger
                            .query_row([seq], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?)))
                            .optional()
                            .map_err(sql_err)?
                        else {
                            continue;
                        };
                        let row = decode_row(seq, &record, hash)?;
                        if q.matches(seq, &row.record) {
                            found.push(row);
                            if found.len() == q.limit {
                                return Ok(found);
                            }
                        }
                    }
                    seqs.clear();
                }
                let Some(row) = next else {
                    break;
                };
                block = next_block;
                let list: String = row.get(1).map_err(sql_err)?;
                for s in list.split(',') {
                    seqs.push(s.parse().map_err(|_| {
                        StoreError::Other(format!(
                            "audit postings: bad seq list in block {block:?}"
                        ))
                    })?);
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use carelayer_audit::{
        Agent, AuditAction, AuditOutcome, AuditRecord, Channel, GENESIS_HASH, canonical_bytes,
        chain_hash_bytes,
    };
    use carelayer_store::{AuditQuery, Store};
    use rusqlite::{Connection, params};

    use crate::schema::MIGRATIONS;
    use crate::{SqliteOptions, SqliteStore};

    fn entry(n: i64) -> AuditRecord {
        AuditRecord {
            recorded_at: 1_000 + n,
            action: AuditAction::Read,
            outcome: AuditOutcome::Success,
            agent: Agent {
                user: Some(format!("u{}", n % 2)),
                org: Some("Y90001".into()),
                display: "t".into(),
                ..Agent::default()
            },
            patient: Some(format!("p{}", n % 3)),
            resources: vec![],
            purpose: "direct-care".into(),
            channel: Channel::Rest,
            detail: None,
        }
    }

    /// A database written by version 4 (one `audit_index` row per entry)
    /// opens with version 5: the old index is gone, and every old entry is
    /// found through postings derived from the ledger at open.
    #[tokio::test]
    async fn an_upgraded_database_finds_its_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                .unwrap();
            for (i, sql) in MIGRATIONS[..4].iter().enumerate() {
                conn.execute_batch(sql).unwrap();
                conn.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [i64::try_from(i + 1).unwrap()],
                )
                .unwrap();
            }
            // The entries as version 4 wrote them (version 2's migration
            // gave `audit_index` its rows; version 5 drops the table).
            let mut head = GENESIS_HASH;
            for n in 1..=30 {
                let bytes = canonical_bytes(&entry(n));
                head = chain_hash_bytes(&head, &bytes);
                conn.execute(
                    "INSERT INTO audit_ledger (seq, record, hash) VALUES (?1, ?2, ?3)",
                    params![n, bytes, &head[..]],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let about_p1: Vec<i64> = store
            .audit_search(&AuditQuery {
                patient: Some("p1".into()),
                limit: 100,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(
            about_p1,
            (1..=30).rev().filter(|n| n % 3 == 1).collect::<Vec<_>>()
        );
        // The chain goes on from the old head.
        store.append_audit(vec![entry(31)]).await.unwrap();
        assert_eq!(store.audit_head().await.unwrap().seq, 31);
        store.close().await;
        let conn = Connection::open(&path).unwrap();
        let old_index: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'audit_index'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_index, 0);
    }
}
