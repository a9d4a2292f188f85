//! The storage floor of an import (`carelayer bench --patients N --floor`):
//! how fast the database engine alone stores what the import stored.
//!
//! After the import, every table it filled is copied, inside the engine,
//! into empty tables of the same shape (`INSERT … SELECT`, no indexes), and
//! then every index the schema declares is built over the copies the way
//! the import's own builds run (`carelayer_store_sqlite::index_build_pragmas`,
//! `carelayer_store_postgres::INDEX_BUILDERS` connections under
//! `INDEX_BUILD_SETTINGS`).
//! Nothing of carelayer runs meanwhile: no NDJSON parsing, validation,
//! index extraction, audit chaining or client round trips, and the rows
//! arrive already made. The time this takes bounds from below any import
//! of these rows through the engine's SQL on this machine, so
//! `resources / time` bounds the import rate from above: the
//! `import-floor` row. It tells how much of an import's
//! time is carelayer's and how much is the rows' (their number is fixed by
//! the search parameters the data carries).
//!
//! Why copy instead of replaying the import: the copy gives the engine the
//! easiest possible job (one statement per table, sequential reads of the
//! source), so the floor is a true bound, not another implementation's
//! speed. The copies are removed afterwards.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};

/// Seconds the engine took to copy the tables and build the indexes.
pub(crate) struct Floor {
    pub copy_secs: f64,
    pub index_secs: f64,
    pub indexes: usize,
}

impl Floor {
    pub(crate) fn secs(&self) -> f64 {
        self.copy_secs + self.index_secs
    }
}

/// The floor of the database at `database` (`sqlite://PATH` or a
/// `postgres://` URL); the copies go beside it (a temporary SQLite file in
/// `scratch`, or a schema of the PostgreSQL database).
pub(crate) async fn measure(database: &str, scratch: &Path) -> anyhow::Result<Floor> {
    if let Some(path) = database.strip_prefix("sqlite://") {
        let source = Path::new(path).to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("carelayer-floor-")
            .tempdir_in(scratch)
            .with_context(|| format!("cannot create a folder in {}", scratch.display()))?;
        let target = dir.path().join("floor.db");
        tokio::task::spawn_blocking(move || sqlite(&source, &target)).await?
    } else if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        postgres(database).await
    } else {
        bail!("no storage floor for {database}")
    }
}

fn sqlite(source: &Path, target: &Path) -> anyhow::Result<Floor> {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(
        target,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    // The import writer's settings (`carelayer_store_sqlite::configure`),
    // with the lighter `synchronous=NORMAL`: a floor may only be easier.
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-65536;",
    )?;
    // A URI, for read-only: its path's `%`, `?` and `#` percent-encoded.
    let path = source
        .display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23");
    let uri = format!("file:{path}?mode=ro");
    conn.execute("ATTACH ?1 AS src", [&uri])?;
    let (tables, indexes) = {
        let mut tables = conn.prepare(
            "SELECT name, sql FROM src.sqlite_master \
             WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
        )?;
        let tables = tables
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut indexes = conn.prepare(
            "SELECT sql FROM src.sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
        )?;
        let indexes = indexes
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        (tables, indexes)
    };
    for (_, sql) in &tables {
        conn.execute_batch(sql)?;
    }
    let started = Instant::now();
    conn.execute_batch("BEGIN")?;
    for (name, _) in &tables {
        conn.execute_batch(&format!(
            "INSERT INTO main.\"{name}\" SELECT * FROM src.\"{name}\""
        ))?;
    }
    conn.execute_batch("COMMIT")?;
    let copy_secs = started.elapsed().as_secs_f64();
    // Built as the import builds them: its pragmas (sorted in temp files
    // with helper threads), one transaction each.
    conn.execute_batch(&carelayer_store_sqlite::index_build_pragmas())?;
    let started = Instant::now();
    for sql in &indexes {
        conn.execute_batch(&format!("BEGIN; {sql}; COMMIT"))?;
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok(Floor {
        copy_secs,
        index_secs: started.elapsed().as_secs_f64(),
        indexes: indexes.len(),
    })
}

/// The schema the PostgreSQL copies go to (dropped afterwards).
const FLOOR_SCHEMA: &str = "carelayer_floor";

async fn postgres(database: &str) -> anyhow::Result<Floor> {
    let (url, _) = carelayer_store_postgres::PostgresOptions::from_url(database)?;
    let connect = || async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .context("cannot connect for the storage floor")?;
        tokio::spawn(connection);
        client
            .batch_execute(carelayer_store_postgres::INDEX_BUILD_SETTINGS)
            .await?;
        anyhow::Ok(client)
    };
    let client = connect().await?;
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let indexes: Vec<String> = client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' \
             ORDER BY pg_relation_size((schemaname || '.' || tablename)::regclass) DESC",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            r.get::<_, String>(0)
                .replacen(" ON public.", &format!(" ON {FLOOR_SCHEMA}."), 1)
        })
        .collect();
    let mut ddl =
        format!("DROP SCHEMA IF EXISTS {FLOOR_SCHEMA} CASCADE; CREATE SCHEMA {FLOOR_SCHEMA};");
    for t in &tables {
        // No INCLUDING INDEXES or CONSTRAINTS: keys are built with the rest.
        ddl.push_str(&format!(
            "CREATE TABLE {FLOOR_SCHEMA}.{t} (LIKE public.{t} INCLUDING DEFAULTS);"
        ));
    }
    client.batch_execute(&ddl).await?;
    let measured = async {
        let started = Instant::now();
        for t in &tables {
            client
                .batch_execute(&format!(
                    "INSERT INTO {FLOOR_SCHEMA}.{t} SELECT * FROM public.{t}"
                ))
                .await?;
        }
        let copy_secs = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let queue =
            std::sync::Mutex::new(indexes.iter().collect::<std::collections::VecDeque<_>>());
        let next = || queue.lock().ok().and_then(|mut q| q.pop_front());
        let builder = || async {
            let c = connect().await?;
            while let Some(sql) = next() {
                c.batch_execute(sql).await?;
            }
            anyhow::Ok(())
        };
        let builders = carelayer_store_postgres::INDEX_BUILDERS;
        for built in futures::future::join_all((0..builders).map(|_| builder())).await {
            built?;
        }
        anyhow::Ok(Floor {
            copy_secs,
            index_secs: started.elapsed().as_secs_f64(),
            indexes: indexes.len(),
        })
    }
    .await;
    let dropped = client
        .batch_execute(&format!("DROP SCHEMA {FLOOR_SCHEMA} CASCADE"))
        .await;
    let floor = measured?;
    dropped.context("cannot drop the storage floor's copies")?;
    Ok(floor)
}
