//! Bulk loads into a (near-)empty database: the secondary indexes are
//! built once, sorted, when the load ends, instead of being maintained row
//! by row while it runs.
//!
//! Why: every write goes through the one writer thread, and in a profile of
//! an import (45,394 resources, 2 cores) that thread was 78% of all CPU
//! samples, most of it B-tree maintenance: an index row lands in its table
//! and in two to five secondary indexes, each insert a random descent. The
//! writer capped the import at about 5,500 resources/s while the threads
//! that validate and extract index values sat half idle. Without the
//! secondary indexes the same load took 2.9 s instead of 8.1 s, and
//! building them afterwards about 2 s (docs/benchmarks.md, session 7).
//!
//! When: a load that [`carelayer_store::bulk`] finds big enough against
//! what `current` holds (the rule PostgreSQL follows too).
//!
//! Why it is safe:
//! - only non-unique indexes on `resources`, `current` and the index tables
//!   are dropped: no write depends on them (the unique ones that version
//!   checks and conflict detection use stay) and no answer does, so a
//!   search or a conditional create's precondition during the load gets the
//!   same rows by scanning (slower);
//! - the drop records each index's DDL and planner statistics in
//!   `deferred_indexes` in the same transaction, so what is built is exactly
//!   what the migrations created, with the statistics it had;
//! - each build is one transaction with the removal of its record, and a
//!   store that opens a database with records left (a load whose process
//!   died before its end) builds them before it serves ([`build_deferred`]).
//!
//! Everything here runs on the writer's connection, between batches: SQLite
//! has one writer at a time, and DDL is a write.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::error::sql_err;
use crate::schema::INDEX_TABLES;
use carelayer_store::StoreError;

/// The bulk loads under way (`Store::begin_bulk_load`), and whether their
/// secondary indexes were dropped to be built at the end.
#[derive(Debug, Default)]
pub(crate) struct Loads {
    /// Loads begun and not yet ended (they may overlap).
    open: u32,
    /// The indexes were dropped by the first of the open loads.
    deferred: bool,
}

impl Loads {
    pub(crate) fn begin(&mut self, conn: &Connection, expected: u64) -> Result<(), StoreError> {
        // Only the first of overlapping loads decides: a later one finds
        // the indexes gone already, or kept for a reason that still holds.
        if self.open == 0 {
            self.deferred = defer(conn, expected)?;
        }
        self.open += 1;
        Ok(())
    }

    pub(crate) fn end(&mut self, conn: &Connection) -> Result<(), StoreError> {
        self.open = self.open.saturating_sub(1);
        if self.open > 0 || !self.deferred {
            return Ok(());
        }
        self.deferred = false;
        build_deferred(conn).map(|_| ())
    }
}

/// Drop the deferrable indexes if a load of `expected` resources warrants
/// it. Returns whether it did.
fn defer(conn: &Connection, expected: u64) -> Result<bool, StoreError> {
    let Some(most) = carelayer_store::bulk::most_held_to_defer(expected) else {
        return Ok(false);
    };
    let most = i64::try_from(most).unwrap_or(i64::MAX);
    // Counted up to the limit only: on a big database a full count is a
    // scan of `current`.
    let held: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT 1 FROM current LIMIT ?1)",
            [most.saturating_add(1)],
            |r| r.get(0),
        )
        .map_err(sql_err)?;
    if held > most {
        return Ok(false);
    }
    let tx = write_transaction(conn)?;
    let tables: Vec<&str> = ["resources", "current"]
        .into_iter()
        .chain(INDEX_TABLES.iter().copied())
        .collect();
    let placeholders = vec!["?"; tables.len()].join(", ");
    let deferrable: Vec<String> = {
        let mut stmt = tx
            .prepare(&format!(
                "SELECT name FROM sqlite_schema \
                 WHERE type = 'index' AND sql IS NOT NULL \
                   AND sql NOT LIKE 'CREATE UNIQUE %' AND tbl_name IN ({placeholders})"
            ))
            .map_err(sql_err)?;
        stmt.query_map(rusqlite::params_from_iter(&tables), |r| r.get(0))
            .map_err(sql_err)?
            .collect::<Result<_, _>>()
            .map_err(sql_err)?
    };
    for name in &deferrable {
        // DROP INDEX also deletes the index's `sqlite_stat1` row: keep it.
        tx.execute(
            "INSERT INTO deferred_indexes (name, tbl, sql, stat) \
             SELECT m.name, m.tbl_name, m.sql, \
                    (SELECT s.stat FROM sqlite_stat1 s WHERE s.idx = m.name) \
             FROM sqlite_schema m WHERE m.type = 'index' AND m.name = ?1",
            [name],
        )
        .map_err(sql_err)?;
        tx.execute_batch(&format!("DROP INDEX \"{name}\""))
            .map_err(sql_err)?;
    }
    tx.commit().map_err(sql_err)?;
    tracing::info!(
        expected,
        held,
        indexes = deferrable.len(),
        "bulk load: secondary indexes dropped, to be built when it ends"
    );
    Ok(true)
}

/// Build every index a load put off (recorded in `deferred_indexes`), each
/// in one transaction with the removal of its record and the return of its
/// planner statistics. Returns how many it built.
pub(crate) fn build_deferred(conn: &Connection) -> Result<usize, StoreError> {
    let started = std::time::Instant::now();
    let mut built = 0;
    loop {
        let next: Option<(String, String, String, Option<String>)> = conn
            .query_row(
                "SELECT name, tbl, sql, stat FROM deferred_indexes ORDER BY name LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(sql_err)?;
        let Some((name, table, sql, stat)) = next else {
            break;
        };
        let tx = write_transaction(conn)?;
        tx.execute_batch(&sql).map_err(sql_err)?;
        if let Some(stat) = stat {
            tx.execute(
                "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?1, ?2, ?3)",
                params![table, name, stat],
            )
            .map_err(sql_err)?;
        }
        tx.execute("DELETE FROM deferred_indexes WHERE name = ?1", [&name])
            .map_err(sql_err)?;
        tx.commit().map_err(sql_err)?;
        built += 1;
    }
    if built > 0 {
        // This connection's planner reads `sqlite_stat1` again (readers do
        // when they next see the changed schema).
        conn.execute_batch("ANALYZE sqlite_schema")
            .map_err(sql_err)?;
        tracing::info!(
            indexes = built,
            ms = started.elapsed().as_millis(),
            "secondary indexes built"
        );
    }
    Ok(built)
}

/// A transaction that takes the write lock when it begins, as the writer's
/// batches do: another connection (the checkpoint signer's) may write in
/// between, and a deferred transaction that read first could then not
/// upgrade ("database is locked", without waiting for the busy timeout).
fn write_transaction(conn: &Connection) -> Result<Transaction<'_>, StoreError> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(sql_err)
}
