//! The read queries, on pooled connections.
//!
//! Fixed statements use the pool's per-connection statement cache. Search
//! statements are built per query shape and sent unnamed (prepared and run
//! in one go), so user-controlled shapes cannot grow a cache without bound.

use std::collections::HashMap;

use carelayer_store::{
    HistoryQuery, HistoryScope, SearchPage, SearchQuery, StoreError, StoredResource, TotalMode,
};
use deadpool_postgres::Object;
use tokio_postgres::IsolationLevel;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::pg_err;
use crate::search::{Shape, build};

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

pub(crate) async fn search(client: &mut Object, q: &SearchQuery) -> Result<SearchPage, StoreError> {
    // One REPEATABLE READ transaction: the snapshot seq, the page, the json
    // and the total all see the same committed state. The writer assigns
    // seq under the `commit_head` lock and commits batches whole, so
    // `commit_head.seq` read here is a seq below which every version is
    // visible to this snapshot.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_err)?;
    let snapshot: i64 = match q.snapshot_seq {
        Some(s) => s,
        None => tx
            .query_one("SELECT seq FROM commit_head", &[])
            .await
            .map_err(pg_err)?
            .get(0),
    };
    let now = crate::now_micros();
    let page = build(q, Some(snapshot), Shape::Page, now)?;
    let rows = tx.query(&page.text, &page.refs()).await.map_err(pg_err)?;
    let mut matches: Vec<StoredResource> = rows
        .iter()
        .map(|row| StoredResource {
            resource_type: row.get(0),
            id: row.get(1),
            version: row.get(2),
            seq: row.get(3),
            last_updated: row.get(4),
            deleted: row.get(5),
            patient_key: row.get(6),
            json: Vec::new(),
        })
        .collect();
    // Bodies are fetched after sorting and limiting, in one round trip, so
    // the sort never carries resource bodies.
    if !matches.is_empty() && !q.keys_only {
        let seqs: Vec<i64> = matches.iter().map(|m| m.seq).collect();
        let stmt = tx
            .prepare_cached("SELECT seq, json FROM resources WHERE seq = ANY($1)")
            .await
            .map_err(pg_err)?;
        let bodies = tx.query(&stmt, &[&seqs]).await.map_err(pg_err)?;
        let mut by_seq: HashMap<i64, Vec<u8>> = bodies
            .into_iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1)))
            .collect();
        for m in &mut matches {
            m.json = by_seq.remove(&m.seq).ok_or_else(|| {
                StoreError::Other(format!(
                    "{}/{}: version body missing",
                    m.resource_type, m.id
                ))
            })?;
        }
    }
    let total = match q.total {
        TotalMode::None => None,
        TotalMode::Estimate | TotalMode::Accurate => {
            let c = build(q, Some(snapshot), Shape::Count, now)?;
            let n: i64 = tx
                .query_one(&c.text, &c.refs())
                .await
                .map_err(pg_err)?
                .get(0);
            Some(u64::try_from(n).unwrap_or(0))
        }
    };
    tx.commit().await.map_err(pg_err)?;
    Ok(SearchPage {
        matches,
        total,
        snapshot_seq: snapshot,
    })
}

pub(crate) async fn explain(client: &Object, q: &SearchQuery) -> Result<Vec<String>, StoreError> {
    let sql = build(
        q,
        Some(q.snapshot_seq.unwrap_or(i64::MAX)),
        Shape::Page,
        crate::now_micros(),
    )?;
    let rows = client
        .query(&format!("EXPLAIN {}", sql.text), &sql.refs())
        .await
        .map_err(pg_err)?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}
