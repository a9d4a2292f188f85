//! Bulk loads into a (near-)empty database: the secondary indexes are
//! built once, sorted, when the load ends, instead of being maintained row
//! by row while it runs.
//!
//! Why: an import batch goes in by COPY on the writer's one connection,
//! so one PostgreSQL backend does all of it, and in profiles half of its
//! CPU was b-tree maintenance (about 83 index entries per resource, 55 of
//! them in secondary indexes). That one core capped the import. Sorted
//! builds at the end cost about as much CPU in all (measured), but they
//! run on two connections at once, on both cores, where the maintenance
//! they replace was confined to the writer's one backend.
//!
//! When: [`prepare`] is asked (by `Store::begin_bulk_load`) about a load
//! that `carelayer_store::bulk` (the rule both backends share) finds big
//! enough against what `current` already holds. A bigger database keeps
//! its indexes: rebuilding them over what it holds would cost more, and its
//! readers would be without them while the load lasts.
//!
//! Why it is safe:
//! - only [`DEFERRABLE_INDEXES`] are dropped: no write depends on them
//!   (primary keys and unique constraints stay) and no answer does, so a
//!   search or a conditional create's precondition during the load gets
//!   the same rows, by a sequential scan (slower; bounded by the
//!   statement timeout like any read);
//! - the drop runs in its own transaction under a short lock timeout, so
//!   a long-running reader cannot stall the load (the load then keeps its
//!   indexes);
//! - the builds are plain `CREATE INDEX` (transactional: a crash leaves no
//!   half-built index), and a store that connects to a database missing
//!   any of them (a load whose process died before its end) builds them
//!   before it serves ([`build_missing`] from `connect`). A second server
//!   on the database doing so during another's load is harmless: that load
//!   just goes on maintaining them.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use deadpool_postgres::{Object, Pool, Timeouts};

use crate::error::{pg_err, pool_err};
use crate::schema::DEFERRABLE_INDEXES;
use carelayer_store::StoreError;

/// How long the drop may wait for readers' locks before the load goes
/// ahead with its indexes (`DROP INDEX` needs the table to itself, and
/// while it waits it holds up readers queued behind it).
const LOCK_WAIT_MS: u32 = 1_000;

/// Connections building at once (the writer's pool has two; the machine
/// this is tuned on, two cores).
pub const BUILDERS: usize = 2;

/// Each builder connection's settings: a build over every row is not a
/// request, so the request-path statement timeout is lifted; more sort
/// memory than the default keeps the big builds in memory.
pub const BUILD_SETTINGS: &str = "SET statement_timeout = 0; SET maintenance_work_mem = '256MB'";

/// Drop the deferrable indexes if a load of `expected` resources warrants
/// it (see the module docs). Returns whether it did; a drop that could not
/// get its locks is not an error (the load just keeps its indexes).
pub(crate) async fn prepare(pool: &Pool, expected: u64) -> Result<bool, StoreError> {
    let Some(most) = carelayer_store::bulk::most_held_to_defer(expected) else {
        return Ok(false);
    };
    let client = pool.get().await.map_err(pool_err)?;
    let most = i64::try_from(most).unwrap_or(i64::MAX);
    // Counted up to the limit only: on a big database a full count is a
    // scan of `current`.
    let held: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM current LIMIT $1) s",
            &[&most.saturating_add(1)],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    if held > most {
        return Ok(false);
    }
    let names = DEFERRABLE_INDEXES
        .iter()
        .map(|(_, name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "BEGIN; SET LOCAL lock_timeout = {LOCK_WAIT_MS}; DROP INDEX IF EXISTS {names}; COMMIT"
    );
    match client.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(
                expected,
                held,
                "bulk load: secondary indexes dropped, to be built when it ends"
            );
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(error = %e, "bulk load: could not drop the secondary indexes; keeping them");
            if client.batch_execute("ROLLBACK").await.is_err() {
                drop(Object::take(client));
            }
            Ok(false)
        }
    }
}

/// Build every deferrable index that is missing, on [`BUILDERS`]
/// connections at once, then analyse (and vacuum, see [`statistics_of`])
/// the tables they are on (their statistics are as stale as their
/// indexes: a deferred load analyses nothing until it ends). Returns how
/// many indexes it built.
pub(crate) async fn build_missing(pool: &Pool) -> Result<usize, StoreError> {
    // No pool wait limit: a background `ANALYZE` may hold a connection for
    // longer than a request would wait, and this must not fail for that.
    let timeouts = Timeouts {
        wait: None,
        ..pool.timeouts()
    };
    let client = pool.timeout_get(&timeouts).await.map_err(pool_err)?;
    let present: HashSet<String> = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema()",
            &[],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<(&str, &str, &str)> = DEFERRABLE_INDEXES
        .iter()
        .filter(|(_, name, _)| !present.contains(*name))
        .copied()
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let mut tables: Vec<String> = Vec::new();
    for (table, _, _) in &missing {
        if !tables.iter().any(|t| t == table) {
            tables.push((*table).to_owned());
        }
    }
    let sizes: Vec<(String, i64)> = client
        .query(
            "SELECT t, pg_relation_size(t::regclass) FROM unnest($1::text[]) AS u(t)",
            &[&tables],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    drop(client);
    let size_of = |t: &str| {
        sizes
            .iter()
            .find(|(n, _)| n == t)
            .map_or(0, |(_, size)| *size)
    };
    // One index per unit, biggest table first, so the builders finish
    // close together: builds on one table take SHARE locks, which do not
    // conflict, so two can run on it at once. The statistics come after
    // every build (`ANALYZE` conflicts with them), a table per unit.
    let mut builds: Vec<(&str, String)> = missing
        .iter()
        .map(|(table, name, definition)| {
            (
                *table,
                format!("CREATE INDEX IF NOT EXISTS {name} ON {table} {definition}"),
            )
        })
        .collect();
    builds.sort_by_key(|(t, _)| std::cmp::Reverse(size_of(t)));
    let analyses: Vec<String> = tables.iter().map(|t| statistics_of(t)).collect();
    run_on_builders(pool, &timeouts, builds.into_iter().map(|(_, ddl)| ddl)).await?;
    run_on_builders(pool, &timeouts, analyses.into_iter()).await?;
    let built = missing.len();
    tracing::info!(indexes = built, "secondary indexes built");
    Ok(built)
}

/// The statement that brings `table`'s planner statistics and visibility
/// map up to date after a load. Rows a load wrote are not yet marked
/// all-visible, so an index-only scan (the covering `current_patient` of a
/// patient's record, the date windows' `idx_date_low` and `idx_date_long`)
/// still visits the heap for every row until a `VACUUM` marks them, and
/// autovacuum only comes by after its nap and an insert threshold. A
/// vacuum of tables nothing was deleted from is one read of each. `resources`
/// is analysed only: no search reads it index-only, and its bodies are
/// most of the data's size.
fn statistics_of(table: &str) -> String {
    if table == "resources" {
        format!("ANALYZE {table}")
    } else {
        format!("VACUUM (ANALYZE) {table}")
    }
}

/// Run `statements` on [`BUILDERS`] connections at once, each taking the
/// next statement when it is done, under [`BUILD_SETTINGS`] (migrations'
/// rule: a build over every row is not a request).
async fn run_on_builders(
    pool: &Pool,
    timeouts: &Timeouts,
    statements: impl Iterator<Item = String>,
) -> Result<(), StoreError> {
    let queue = Mutex::new(statements.collect::<VecDeque<_>>());
    let next = || queue.lock().ok().and_then(|mut q| q.pop_front());
    let builder = || async {
        let client = pool.timeout_get(timeouts).await.map_err(pool_err)?;
        let mut result = client.batch_execute(BUILD_SETTINGS).await.map_err(pg_err);
        while result.is_ok()
            && let Some(sql) = next()
        {
            result = client.batch_execute(&sql).await.map_err(pg_err);
        }
        // Back to the pool as it came, or not at all.
        if result.is_err() || client.batch_execute("RESET ALL").await.is_err() {
            drop(Object::take(client));
        }
        result
    };
    let results = futures::future::join_all((0..BUILDERS).map(|_| builder())).await;
    results.into_iter().collect()
}
