//! The read queries, on pooled connections.
//!
//! Every read is one round trip once its statement is prepared: fixed
//! statements and search shapes use the pool's per-connection statement
//! cache (bounded for search shapes, which users choose).

use carelayer_store::{
    HistoryQuery, HistoryScope, SearchPage, SearchQuery, StoreError, StoredResource, TotalMode,
};
use deadpool_postgres::Object;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::pg_err;
use crate::search::{Shape, Snapshot, build, build_search};

const RESOURCE_COLUMNS: &str =
    "r.type, r.id, r.version, r.seq, r.last_updated, r.deleted, r.patient_key, r.json";

fn resource(row: &Row) -> StoredResource {
    StoredResource {
        resource_type: row.get(0),
        id: row.get(1),
        version: row.get(2),
        seq: row.get(3),
        last_updated: row.get(4),
        deleted: row.get(5),
        patient_key: row.get(6),
        json: row.get(7),
    }
}

pub(crate) async fn current(
    client: &Object,
    t: &str,
    id: &str,
) -> Result<Option<StoredResource>, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {RESOURCE_COLUMNS} FROM current c JOIN resources r ON r.seq = c.seq \
             WHERE c.type = $1 AND c.id = $2"
        ))
        .await
        .map_err(pg_err)?;
    let row = client.query_opt(&stmt, &[&t, &id]).await.map_err(pg_err)?;
    Ok(row.as_ref().map(resource))
}

/// The current versions of many resources in one statement, in the order
/// asked, `None` for those that do not exist. Each key is its own probe of
/// the `(type, id)` unique index and then of `resources` by seq (a
/// correlated subquery in a `LATERAL`, never a join the planner could turn
/// into a scan of either table). `OFFSET 0` keeps the `LATERAL` from being
/// flattened: planned on the statistics of an empty table (the start of a
/// bulk load, which analyses nothing until its end), the flattened form
/// became a hash join over every version in `resources`, 80 ms per
/// 500-resource import batch by the load's end.
pub(crate) async fn current_many(
    client: &Object,
    keys: &[(String, String)],
) -> Result<Vec<Option<StoredResource>>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client
        .prepare_cached(&format!(
            "SELECT u.n, {RESOURCE_COLUMNS} \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(type, id, n) \
             CROSS JOIN LATERAL (SELECT * FROM resources x WHERE x.seq = \
                 (SELECT c.seq FROM current c WHERE c.type = u.type AND c.id = u.id) \
                 OFFSET 0) r"
        ))
        .await
        .map_err(pg_err)?;
    let types: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|(_, i)| i.as_str()).collect();
    let rows = client.query(&stmt, &[&types, &ids]).await.map_err(pg_err)?;
    let mut out: Vec<Option<StoredResource>> = vec![None; keys.len()];
    for row in &rows {
        let n: i64 = row.get(0);
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = Some(StoredResource {
                resource_type: row.get(1),
                id: row.get(2),
                version: row.get(3),
                seq: row.get(4),
                last_updated: row.get(5),
                deleted: row.get(6),
                patient_key: row.get(7),
                json: row.get(8),
            });
        }
    }
    Ok(out)
}

pub(crate) async fn version(
    client: &Object,
    t: &str,
    id: &str,
    v: i64,
) -> Result<Option<StoredResource>, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {RESOURCE_COLUMNS} FROM resources r \
             WHERE r.type = $1 AND r.id = $2 AND r.version = $3"
        ))
        .await
        .map_err(pg_err)?;
    let row = client
        .query_opt(&stmt, &[&t, &id, &v])
        .await
        .map_err(pg_err)?;
    Ok(row.as_ref().map(resource))
}

pub(crate) async fn history(
    client: &Object,
    q: &HistoryQuery,
) -> Result<Vec<StoredResource>, StoreError> {
    // Built from fixed fragments so each shape is one cached statement; the
    // values are bound.
    let mut sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources r WHERE TRUE");
    let mut binds: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut bind = |sql: &mut String, frag: &str, v: Box<dyn ToSql + Sync + Send>| {
        binds.push(v);
        sql.push_str(&frag.replace('?', &format!("${}", binds.len())));
    };
    match &q.scope {
        HistoryScope::System => {}
        HistoryScope::Type(t) => bind(&mut sql, " AND r.type = ?", Box::new(t.clone())),
        HistoryScope::Instance { resource_type, id } => {
            bind(&mut sql, " AND r.type = ?", Box::new(resource_type.clone()));
            bind(&mut sql, " AND r.id = ?", Box::new(id.clone()));
        }
    }
    if let Some(since) = q.since {
        bind(&mut sql, " AND r.last_updated >= ?", Box::new(since));
    }
    if let Some(before) = q.before_seq {
        bind(&mut sql, " AND r.seq < ?", Box::new(before));
    }
    let limit = i64::try_from(q.count).unwrap_or(i64::MAX);
    bind(&mut sql, " ORDER BY r.seq DESC LIMIT ?", Box::new(limit));
    let stmt = client.prepare_cached(&sql).await.map_err(pg_err)?;
    let refs: Vec<&(dyn ToSql + Sync)> = binds
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&stmt, &refs).await.map_err(pg_err)?;
    Ok(rows.iter().map(resource).collect())
}

pub(crate) async fn count(client: &Object, t: Option<&str>) -> Result<u64, StoreError> {
    let row = match t {
        Some(t) => {
            let stmt = client
                .prepare_cached("SELECT count(*) FROM current WHERE type = $1 AND NOT deleted")
                .await
                .map_err(pg_err)?;
            client.query_one(&stmt, &[&t]).await
        }
        None => {
            let stmt = client
                .prepare_cached("SELECT count(*) FROM current WHERE NOT deleted")
                .await
                .map_err(pg_err)?;
            client.query_one(&stmt, &[]).await
        }
    }
    .map_err(pg_err)?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Most search statements kept prepared per connection. Search SQL has a
/// shape per query structure, which users choose; past this many the
/// connection's cache is emptied (dropping a statement closes it on the
/// server) and refills with the shapes in use.
const SEARCH_STATEMENTS: usize = 256;

pub(crate) async fn search(client: &Object, q: &SearchQuery) -> Result<SearchPage, StoreError> {
    // One statement, one round trip, one snapshot (see `build_search`):
    // no transaction, no separate head, body or count queries.
    let sql = build_search(q, crate::now_micros())?;
    // Prepared and cached per shape: the builder fixes which clause drives
    // and probes the others per candidate row (`search.rs`), so the plan
    // is right for any values and PostgreSQL may run a generic plan
    // instead of planning the search again each time (which, for searches
    // of several clauses, cost more than running them).
    if client.statement_cache.size() >= SEARCH_STATEMENTS {
        client.statement_cache.clear();
    }
    let stmt = client
        .prepare_typed_cached(&sql.text, &sql.types)
        .await
        .map_err(pg_err)?;
    let rows = client.query(&stmt, &sql.refs()).await.map_err(pg_err)?;
    let first = rows
        .first()
        .ok_or_else(|| StoreError::Other("a search returned no snapshot row".into()))?;
    let snapshot: i64 = first.get(0);
    let total = match q.total {
        TotalMode::None => None,
        TotalMode::Estimate | TotalMode::Accurate => match first.get::<_, Option<i64>>(1) {
            Some(n) => Some(u64::try_from(n).unwrap_or(0)),
            // An empty page: nothing matches at all, or the page is past
            // the end (or asked for no rows, `_count=0`); only the latter
            // need counting.
            None if q.offset == 0 && q.count > 0 => Some(0),
            None => {
                let c = build(
                    q,
                    Snapshot::Seq(snapshot),
                    Shape::Count,
                    crate::now_micros(),
                )?;
                let n: i64 = client
                    .query_typed_one(&c.text, &c.typed())
                    .await
                    .map_err(pg_err)?
                    .get(0);
                Some(u64::try_from(n).unwrap_or(0))
            }
        },
    };
    let mut matches = Vec::with_capacity(rows.len());
    for row in &rows {
        // No match: the one row of the outer join has NULL page columns.
        let Some(resource_type) = row.get::<_, Option<String>>(2) else {
            continue;
        };
        let position = matches.len();
        let json = if q.keys_only || q.bodies.as_ref().is_some_and(|r| !r.contains(&position)) {
            Vec::new()
        } else {
            row.get::<_, Option<Vec<u8>>>(9).ok_or_else(|| {
                StoreError::Other(format!(
                    "{resource_type}/{}: version body missing",
                    row.get::<_, String>(3)
                ))
            })?
        };
        matches.push(StoredResource {
            resource_type,
            id: row.get(3),
            version: row.get(4),
            seq: row.get(5),
            last_updated: row.get(6),
            deleted: row.get(7),
            patient_key: row.get(8),
            json,
        });
    }
    Ok(SearchPage {
        matches,
        total,
        snapshot_seq: snapshot,
    })
}

/// `EXPLAIN` of the generic plan of the page statement a search runs: the
/// plan a prepared search gets once PostgreSQL stops planning it for its
/// values, so the one tests must hold to (a custom plan, planned for the
/// values, can only be as good or better).
///
/// PostgreSQL 15 has no `EXPLAIN (GENERIC_PLAN)`: the statement is
/// `PREPARE`d with the bound values' types and explained by `EXECUTE`
/// under `plan_cache_mode = force_generic_plan`. `EXECUTE` takes its
/// arguments as SQL text, so PostgreSQL itself quotes the bound values
/// (`quote_nullable`) and nothing user-supplied is spliced unquoted.
pub(crate) async fn explain(client: &Object, q: &SearchQuery) -> Result<Vec<String>, StoreError> {
    let sql = build(
        q,
        Snapshot::Seq(q.snapshot_seq.unwrap_or(i64::MAX)),
        Shape::Page,
        crate::now_micros(),
    )?;
    let quote = (1..=sql.params.len())
        .map(|i| format!("quote_nullable(${i})"))
        .collect::<Vec<_>>()
        .join(", ");
    let args: String = client
        .query_typed_one(&format!("SELECT concat_ws(', ', {quote})"), &sql.typed())
        .await
        .map_err(pg_err)?
        .get(0);
    let types = sql
        .types
        .iter()
        .map(tokio_postgres::types::Type::name)
        .collect::<Vec<_>>()
        .join(", ");
    let run = async {
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
                 PREPARE carelayer_explain ({types}) AS {}",
                sql.text
            ))
            .await?;
        let rows = client
            .simple_query(&format!("EXPLAIN EXECUTE carelayer_explain({args})"))
            .await;
        client
            .batch_execute("DEALLOCATE carelayer_explain; COMMIT")
            .await?;
        rows
    };
    match run.await {
        Ok(rows) => Ok(rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect()),
        Err(e) => {
            // Leave the pooled connection as it was: no open transaction,
            // no statement of this name (PREPARE outlives a rollback).
            let _ = client.batch_execute("ROLLBACK").await;
            let _ = client.batch_execute("DEALLOCATE carelayer_explain").await;
            Err(pg_err(e))
        }
    }
}
