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
        if build_deferred(conn)? > 0 {
            settle_wal(conn)?;
        }
        Ok(())
    }
}

/// Copy the WAL's pages into the database and truncate it, as the load's
/// last step.
///
/// Why: the index builds write every index page to the WAL (gigabytes at
/// 10,000 patients). Left to the checkpoint thread, that copy ran beside
/// the first requests after the load (creates at p99 132 ms instead of
/// about 40) and the file stayed that size on disk; here it is part of the
/// load, whose time then says what it cost. A reader holding an old
/// snapshot past the busy timeout leaves the rest to the checkpoint thread
/// (the pragma reports it busy; that is not an error).
fn settle_wal(conn: &Connection) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    // (After a truncation the pragma's frame counts are zero: only
    // whether it finished says anything.)
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(sql_err)?;
    tracing::info!(
        finished = busy == 0,
        ms = started.elapsed().as_millis(),
        "bulk load: WAL checkpointed"
    );
    Ok(())
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
    let pending: i64 = conn
        .query_row("SELECT count(*) FROM deferred_indexes", [], |r| r.get(0))
        .map_err(sql_err)?;
    if pending == 0 {
        return Ok(0);
    }
    conn.execute_batch(&build_pragmas()).map_err(sql_err)?;
    let built = build_each(conn);
    // Back to the connection's own settings (`crate::configure`) whether
    // or not every build succeeded.
    let restored = conn
        .execute_batch("PRAGMA temp_store=MEMORY; PRAGMA threads=0")
        .map_err(sql_err);
    let built = built?;
    restored?;
    Ok(built)
}

/// Helper threads SQLite may start to sort for an index build: one per core
/// besides the writer's own.
///
/// Why builds sort in files with helpers: with `temp_store=MEMORY` (the
/// connection's setting, for ORDER BY) SQLite's sorter has no size limit and
/// sorts every key of the index as one list in memory, on this thread
/// alone; at 10,000 patients that took 195 s of a 315 s import, all of it
/// in the sort. With temp files the sorter cuts the keys into runs the size
/// of the page cache (64 MiB), sorts each run on a helper thread while it
/// reads on, and merges them: one index of 20 million rows took 17–19 s
/// instead of 32 s (docs/benchmarks.md, session 10). The runs live in
/// SQLite's temporary directory (`SQLITE_TMPDIR`, else `TMPDIR`, else
/// `/var/tmp`), deleted as soon as the build ends.
fn sort_helpers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_sub(1)
        .clamp(1, 8)
}

/// The pragmas an index build runs under (see [`sort_helpers`]); the
/// connection's own settings come back when the builds end.
#[must_use]
pub fn build_pragmas() -> String {
    format!("PRAGMA temp_store=FILE; PRAGMA threads={}", sort_helpers())
}

/// The builds of [`build_deferred`], once its pragmas are set.
fn build_each(conn: &Connection) -> Result<usize, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    }

    /// The build sorts with helper threads in temp files and leaves the
    /// connection as `configure` set it: in-memory temp store, no helpers.
    #[test]
    fn builds_sort_with_helpers_and_restore_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        crate::schema::seed_planner_stats(&mut conn).unwrap();
        conn.execute_batch("PRAGMA temp_store=MEMORY; PRAGMA threads=0")
            .unwrap();
        // This SQLite lets a statement start helpers at all: the pragma is
        // capped by the build's SQLITE_MAX_WORKER_THREADS (0 without).
        assert_eq!(
            conn.query_row("PRAGMA threads=1", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            1
        );
        conn.execute_batch("PRAGMA threads=0").unwrap();
        // Rows enough that the sort spills past one run of the page cache.
        conn.execute_batch(
            "PRAGMA cache_size=-1024;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000)
             INSERT INTO idx_token (rid, ord, type, param, system, code)
             SELECT i, 0, 'Observation', 'code', 'http://loinc.org', printf('%08d', (i * 7919) % 60000)
             FROM n;",
        )
        .unwrap();
        assert!(defer(&conn, 1_000_000).unwrap());
        let deferred: i64 = conn
            .query_row("SELECT count(*) FROM deferred_indexes", [], |r| r.get(0))
            .unwrap();
        assert!(deferred > 0);
        assert_eq!(
            usize::try_from(deferred).unwrap(),
            build_deferred(&conn).unwrap()
        );
        assert_eq!(pragma(&conn, "temp_store"), 2, "MEMORY again");
        assert_eq!(pragma(&conn, "threads"), 0);
        // The rebuilt index answers from its sorted keys.
        let (first, n): (String, i64) = conn
            .query_row(
                "SELECT min(code), count(*) FROM idx_token INDEXED BY idx_token_code \
                 WHERE param = 'code' AND code >= ''",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((first.as_str(), n), ("00000000", 60_000));
        // Nothing left to build: no pragma is touched.
        assert_eq!(build_deferred(&conn).unwrap(), 0);
    }

    /// A load that built its indexes leaves the WAL copied back and
    /// truncated, not gigabytes for the first requests after it to wait on.
    #[test]
    fn a_load_ends_with_the_wal_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0")
            .unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        crate::schema::seed_planner_stats(&mut conn).unwrap();
        let mut loads = Loads::default();
        loads.begin(&conn, 1_000_000).unwrap();
        assert!(loads.deferred, "a big load into an empty store defers");
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO idx_token (rid, ord, type, param, system, code)
             SELECT i, 0, 'Observation', 'code', 'http://loinc.org', printf('%08d', i) FROM n;",
        )
        .unwrap();
        let wal = dir.path().join("t.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        loads.end(&conn).unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM idx_token", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 20_000);
    }
}
