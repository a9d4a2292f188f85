//! carelayer-store-postgres: the PostgreSQL backend of the `Store` trait (the
//! server and scale-out path).
//!
//! # Layout
//! - [`PostgresStore`] / [`PostgresOptions`]: connect (pool + migrations +
//!   writer task), implement [`carelayer_store::Store`], plus
//!   [`PostgresStore::explain`] to show the generic plan a search gets and
//!   [`migrate`] for `carelayer migrate`.
//! - `schema`: the migrations this crate owns (`schema_migrations`, applied
//!   under an advisory lock) and the table shapes, with the reasons for them.
//! - `writer`: the one writer task; group commit of queued write sets and
//!   audit appends in one transaction with a savepoint per job; the
//!   `commit_head` row that serialises commits and carries the audit chain.
//! - `read`: point reads, history, count, audit rows, and search: each one
//!   statement, one round trip (a search's snapshot, total, page and
//!   bodies come from a single statement, so it needs no transaction).
//! - `search`: `SearchQuery` → SQL over the index tables (bound parameters only).
//! - `error`: driver/pool errors → `StoreError`.
//!
//! # Concurrency
//! Writes go over a bounded channel to one writer task with its own
//! connection pool (so readers never starve it) and are answered through a
//! oneshot after their batch commits. Reads take a connection from the read
//! pool. Every wait has a deadline — pool wait, connect, statement timeout
//! (server side) and a client-side deadline per operation — so a lost or
//! silent server yields [`StoreError::Unavailable`], never a hang; broken
//! connections are discarded and replaced on next use, so service resumes
//! by itself when PostgreSQL is back.
//!
//! # Durability
//! A commit is acknowledged after PostgreSQL's COMMIT returns, so it is as
//! durable as the server's `synchronous_commit` (on by default: WAL flushed;
//! with synchronous replicas, replicated too).
//!
//! TLS to the database is not supported yet (`NoTls`): run PostgreSQL on
//! loopback or a private network until it is.

mod audit;
mod bulk;

/// How index builds run after a bulk load (for measurements that must
/// build the same way: `carelayer bench --floor`).
pub use bulk::{BUILD_SETTINGS as INDEX_BUILD_SETTINGS, BUILDERS as INDEX_BUILDERS};
mod copy;
mod error;
mod read;
mod schema;
mod search;
mod writer;

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use carelayer_audit::{AuditRecord, ChainHead, Checkpoint, LedgerRow};
use carelayer_store::{
    AuditQuery, CommitReceipt, HistoryQuery, RawLedgerRow, SearchPage, SearchQuery, Store,
    StoreError, StoredResource, WriteSet,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{gone, pool_err, timed_out};
use crate::writer::Job;

/// Tuning knobs; the defaults suit a small server.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections for reads (the writer has its own two).
    pub pool_size: usize,
    /// Server-side `statement_timeout` for every statement (default 5 s:
    /// every request-path statement is an index lookup or a bounded write
    /// taking milliseconds; migrations lift it). The client-side deadline
    /// of an operation is twice this plus the connect timeout (13 s by
    /// default), so the server normally cancels first and reports why, and
    /// a PostgreSQL that hangs holds no request longer than that.
    pub statement_timeout: Duration,
    /// How long to wait for a connection from the pool, or for a new one
    /// to be made (default 3 s).
    pub connect_timeout: Duration,
    /// Most jobs folded into one write transaction.
    pub max_batch: usize,
    /// `application_name` shown in `pg_stat_activity`.
    pub application_name: String,
    /// Durability of audit-only batches (see [`AuditSync`]).
    pub audit_sync: AuditSync,
}

/// When a batch holding only audit appends (read, search and denial
/// entries; write sets always carry their own entries) is made durable.
/// The PostgreSQL counterpart of the SQLite backend's option of the same
/// name, with the same default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditSync {
    /// Committed with `synchronous_commit = off`: in PostgreSQL's WAL
    /// before the request is answered (a carelayer crash loses nothing),
    /// flushed by PostgreSQL's WAL writer within `wal_writer_delay` (200 ms
    /// by default, three times that at worst): a crash of PostgreSQL or its
    /// host can lose at most that much of the read audit trail, never a
    /// write or its entries. Reads then wait for no WAL flush, which on a
    /// busy disk costs more than the read itself.
    #[default]
    Deferred,
    /// Flushed before the request is answered, like writes
    /// (`audit_sync=commit` in the database URL).
    Commit,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self {
            pool_size: cores * 4,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            max_batch: 256,
            application_name: "carelayer".into(),
            audit_sync: AuditSync::default(),
        }
    }
}

impl PostgresOptions {
    /// Split carelayer's own settings out of a database URL's query string:
    /// `pool_size=N`, `statement_timeout=MS` and `connect_timeout=MS`
    /// (milliseconds, or with an `s` / `ms` suffix), `max_batch=N` and
    /// `audit_sync=deferred|commit`.
    /// Returns the URL without them (every other parameter, e.g.
    /// `application_name`, is left for the driver) and the defaults with
    /// them applied. `connect_timeout` is taken here, not left to the
    /// driver, because it also bounds the pool wait and the deadlines. Why in the URL:
    /// the URL is the one setting every entry point (`serve`, `migrate`,
    /// `bench`) already passes through.
    ///
    /// # Errors
    /// [`StoreError::Other`] naming a value that does not parse.
    pub fn from_url(url: &str) -> Result<(String, Self), StoreError> {
        let mut options = Self::default();
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), options));
        };
        let bad =
            |k: &str, v: &str| StoreError::Other(format!("bad {k} '{v}' in the database URL"));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "pool_size" => options.pool_size = v.parse().map_err(|_| bad(k, v))?,
                "max_batch" => options.max_batch = v.parse().map_err(|_| bad(k, v))?,
                "audit_sync" => {
                    options.audit_sync = match v {
                        "deferred" => AuditSync::Deferred,
                        "commit" => AuditSync::Commit,
                        _ => return Err(bad(k, v)),
                    }
                }
                "statement_timeout" | "connect_timeout" => {
                    let ms: u64 = if let Some(ms) = v.strip_suffix("ms") {
                        ms.parse().map_err(|_| bad(k, v))?
                    } else if let Some(s) = v.strip_suffix('s') {
                        s.parse::<u64>()
                            .map_err(|_| bad(k, v))?
                            .saturating_mul(1000)
                    } else if k == "connect_timeout" {
                        // A bare number is seconds, as for libpq.
                        v.parse::<u64>()
                            .map_err(|_| bad(k, v))?
                            .saturating_mul(1000)
                    } else {
                        // A bare number is milliseconds, as for PostgreSQL.
                        v.parse().map_err(|_| bad(k, v))?
                    };
                    let d = Duration::from_millis(ms.max(1));
                    if k == "statement_timeout" {
                        options.statement_timeout = d;
                    } else {
                        options.connect_timeout = d;
                    }
                }
                _ => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((url, options))
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    reads: Pool,
    /// Submissions to the writer task. Bounded, so an overloaded or stalled
    /// writer pushes back on callers instead of queueing without limit.
    tx: tokio::sync::mpsc::Sender<Job>,
    closed: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Client-side deadline for one operation.
    deadline: Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// Microseconds since the Unix epoch (for `ap` on dates).
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Parse a `postgres://` URL (or key=value string) and set the options every
/// carelayer connection needs.
fn pg_config(url: &str, o: &PostgresOptions) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Other(format!("bad PostgreSQL URL: {e}")))?;
    let ms = o.statement_timeout.as_millis().max(1);
    // Every statement carelayer prepares has a plan that does not depend
    // on its values: key lookups, `unnest` inserts, and searches whose
    // statement fixes the plan's shape (`search.rs`; `tests/plans.rs`
    // checks them on generic plans). PostgreSQL's default (`auto`) keeps
    // planning a statement for its values whenever a generic plan's
    // estimate looks costlier than the custom ones', which for the
    // writer's array statements it always does (`unnest` of an unknown
    // array is guessed at 100 rows, of a known one at its length) and for
    // a search often does (a rare value looks cheaper than the average):
    // in the transaction workload planning was 40% of PostgreSQL's CPU.
    config.options(format!(
        "-c statement_timeout={ms} -c plan_cache_mode=force_generic_plan"
    ));
    config
        .application_name(&o.application_name)
        .connect_timeout(o.connect_timeout)
        // Notice a peer that vanished without closing the socket.
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    Ok(config)
}

fn pool(
    config: tokio_postgres::Config,
    size: usize,
    o: &PostgresOptions,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            // `Fast` only checks the socket is open; a connection that broke
            // mid-query is dropped by the code that saw it break.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(o.connect_timeout))
        .create_timeout(Some(o.connect_timeout))
        .recycle_timeout(Some(o.connect_timeout))
        .build()
        .map_err(|e| StoreError::Other(format!("cannot build the connection pool: {e}")))
}

/// Apply this build's migrations to the database at `url` and return the
/// schema version now in place (`carelayer migrate`).
///
/// # Errors
/// [`StoreError::Unavailable`] if PostgreSQL cannot be reached;
/// [`StoreError::Other`] for a bad URL, a failed migration, or a schema newer
/// than this build.
pub async fn migrate(url: &str, options: &PostgresOptions) -> Result<i64, StoreError> {
    let p = pool(pg_config(url, options)?, 1, options)?;
    let mut client = p.get().await.map_err(pool_err)?;
    let version = schema::migrate(&mut client).await;
    drop(client);
    p.close();
    version
}

impl PostgresStore {
    /// Connect to the database at `url`, apply pending migrations, start the
    /// writer task. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if PostgreSQL cannot be reached;
    /// [`StoreError::Other`] for a bad URL, a failed migration, or a schema
    /// newer than this build.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let config = pg_config(url, &options)?;
        let reads = pool(config.clone(), options.pool_size, &options)?;
        {
            let mut client = reads.get().await.map_err(pool_err)?;
            schema::migrate(&mut client).await?;
        }
        // A bulk load whose process died before its end left its indexes
        // unbuilt (`bulk.rs`): build them before serving anything.
        let missing = bulk::build_missing(&reads).await?;
        if missing > 0 {
            tracing::warn!(
                indexes = missing,
                "built the secondary indexes an unfinished bulk load had dropped"
            );
        }
        // Two connections: one in use by a batch, one ready should that one
        // break (the pool replaces broken ones lazily anyway).
        let writes = pool(config, 2, &options)?;
        let deadline = options
            .statement_timeout
            .saturating_mul(2)
            .saturating_add(options.connect_timeout);
        let max_batch = options.max_batch.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(max_batch.saturating_mul(4));
        let handle = tokio::spawn(writer::run(
            writes,
            rx,
            max_batch,
            deadline,
            options.audit_sync,
        ));
        Ok(Self {
            reads,
            tx,
            closed: AtomicBool::new(false),
            writer: Mutex::new(Some(handle)),
            deadline,
        })
    }

    /// `EXPLAIN` of the generic plan of the page statement `search` would
    /// run (the plan a prepared search settles on), one line per plan row
    /// (for tests asserting that searches use indexes).
    ///
    /// # Errors
    /// As [`Store::search`].
    pub async fn explain(&self, query: &SearchQuery) -> Result<Vec<String>, StoreError> {
        self.read(|client| async move { read::explain(&client, query).await.map(|r| (client, r)) })
            .await
    }

    /// Run a read on a pooled connection under the operation deadline. A
    /// connection whose read failed with `Unavailable` or timed out is
    /// discarded rather than returned to the pool.
    async fn read<'a, T, F, Fut>(&'a self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<(Object, T), StoreError>> + 'a,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(gone());
        }
        let fut = async {
            let client = self.reads.get().await.map_err(pool_err)?;
            f(client).await
        };
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(Ok((_client, v))) => Ok(v),
            // The connection went with the failed future: a dropped Object
            // returns to the pool, where `Fast` recycling discards it if its
            // socket is closed.
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timed_out("read")),
        }
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        self.submit_within(Some(self.deadline), make).await
    }

    /// [`PostgresStore::submit`] with a deadline of its own (`None`: none).
    async fn submit_within<T>(
        &self,
        deadline: Option<Duration>,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(gone());
        }
        let (reply, rx) = oneshot::channel();
        // One deadline over the queue wait and the batch: a writer stuck on
        // a silent server must not hold the requests queued behind it for
        // longer than one operation may take. A job given up on here is
        // skipped by the writer if its batch has not started yet.
        let job = async {
            self.tx.send(make(reply)).await.map_err(|_| gone())?;
            rx.await.map_err(|_| gone())?
        };
        match deadline {
            Some(deadline) => tokio::time::timeout(deadline, job)
                .await
                .unwrap_or_else(|_| Err(timed_out("write"))),
            None => job.await,
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn read_current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        self.read(|c| async move { read::current(&c, resource_type, id).await.map(|r| (c, r)) })
            .await
    }

    async fn read_current_many(
        &self,
        keys: &[(String, String)],
    ) -> Result<Vec<Option<StoredResource>>, StoreError> {
        self.read(|c| async move { read::current_many(&c, keys).await.map(|r| (c, r)) })
            .await
    }

    async fn read_version(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredResource>, StoreError> {
        self.read(|c| async move {
            read::version(&c, resource_type, id, version)
                .await
                .map(|r| (c, r))
        })
        .await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<StoredResource>, StoreError> {
        self.read(|c| async move { read::history(&c, query).await.map(|r| (c, r)) })
            .await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        self.read(|c| async move { read::search(&c, query).await.map(|r| (c, r)) })
            .await
    }

    async fn commit(&self, writes: WriteSet) -> Result<CommitReceipt, StoreError> {
        // A bulk write set's COPY bodies are encoded here, on the caller's
        // task, not by the one writer task (`copy.rs`).
        let encoded = if writes.resources.len() >= writer::BULK_RESOURCES {
            Some(copy::Encoded::new(&writes.resources)?)
        } else {
            None
        };
        self.submit(|reply| Job::Commit(writes, encoded, reply))
            .await
    }

    async fn append_audit(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.submit(|reply| Job::Audit(entries, reply)).await
    }

    async fn audit_rows(&self, after_seq: i64, limit: usize) -> Result<Vec<LedgerRow>, StoreError> {
        self.read(|c| async move { audit::rows(&c, after_seq, limit).await.map(|r| (c, r)) })
            .await
    }

    async fn audit_search(&self, query: &AuditQuery) -> Result<Vec<LedgerRow>, StoreError> {
        self.read(|c| async move { audit::search(&c, query).await.map(|r| (c, r)) })
            .await
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        self.read(|c| async move { audit::head(&c).await.map(|r| (c, r)) })
            .await
    }

    async fn audit_raw_rows(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<RawLedgerRow>, StoreError> {
        self.read(|c| async move { audit::raw_rows(&c, after_seq, limit).await.map(|r| (c, r)) })
            .await
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.read(|c| async move { audit::save_checkpoint(&c, checkpoint).await.map(|r| (c, r)) })
            .await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.read(|c| async move { audit::checkpoints(&c).await.map(|r| (c, r)) })
            .await
    }

    async fn begin_bulk_load(&self, expected: u64) -> Result<(), StoreError> {
        self.submit(|reply| Job::Load(Some(expected), reply)).await
    }

    async fn end_bulk_load(&self) -> Result<(), StoreError> {
        // No deadline: the builds take time in proportion to the data
        // (like a migration), and they are the operator's command, not a
        // request. Each statement of them is bounded by PostgreSQL alone.
        self.submit_within(None, |reply| Job::Load(None, reply))
            .await
    }

    async fn count(&self, resource_type: Option<&str>) -> Result<u64, StoreError> {
        self.read(|c| async move { read::count(&c, resource_type).await.map(|r| (c, r)) })
            .await
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (reply, done) = oneshot::channel();
        if self.tx.send(Job::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.reads.close();
    }
}

/// A scratch database on the PostgreSQL server `admin` names (a URL to any
/// database the user may `CREATE DATABASE` from): created empty by
/// [`ScratchDatabase::create`], dropped by [`ScratchDatabase::drop_now`].
/// `carelayer bench` runs each PostgreSQL bench on one, so a run never
/// touches data of its own or anybody else's.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin: String,
    name: String,
    /// The new database's URL (the admin URL with its path replaced).
    pub url: String,
}

impl ScratchDatabase {
    /// Create database `name` (letters, digits and `_` only: it is spliced
    /// into DDL, which takes no bound parameters).
    ///
    /// # Errors
    /// [`StoreError::Other`] for a bad name or URL; [`StoreError::Unavailable`]
    /// if the server cannot be reached or refuses.
    pub async fn create(admin: &str, name: &str) -> Result<Self, StoreError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StoreError::Other(format!(
                "bad scratch database name '{name}'"
            )));
        }
        let url = with_database(admin, name)?;
        admin_execute(admin, &format!("CREATE DATABASE {name}")).await?;
        Ok(Self {
            admin: admin.to_owned(),
            name: name.to_owned(),
            url,
        })
    }

    /// Drop the database, closing any connection still open to it.
    ///
    /// # Errors
    /// As [`ScratchDatabase::create`].
    pub async fn drop_now(self) -> Result<(), StoreError> {
        admin_execute(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await
    }
}

/// `url` with its database (the path) replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> Result<String, StoreError> {
    let bad = || StoreError::Other("the PostgreSQL admin URL must be postgres://…".into());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// One statement on its own connection (`CREATE DATABASE` refuses to run
/// in a transaction block, so not through a pool's transaction helpers).
async fn admin_execute(admin: &str, sql: &str) -> Result<(), StoreError> {
    let (clean, options) = PostgresOptions::from_url(admin)?;
    let config = pg_config(&clean, &options)?;
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(error::pg_err)?;
    let task = tokio::spawn(connection);
    let result = client.batch_execute(sql).await.map_err(error::pg_err);
    drop(client);
    let _ = task.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_urls_keep_authority_and_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x_1").ok(),
            Some("postgres://postgres@127.0.0.1:5432/x_1".to_owned())
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?pool_size=2", "x").ok(),
            Some("postgresql://u:p@h/x?pool_size=2".to_owned())
        );
        assert_eq!(
            with_database("postgres://h:5432", "x").ok(),
            Some("postgres://h:5432/x".to_owned())
        );
        assert!(with_database("host=h dbname=d", "x").is_err());
    }

    #[test]
    fn connections_run_generic_plans() {
        let config = pg_config("postgres://h/db", &PostgresOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let options = config.get_options().unwrap_or_default();
        assert!(options.contains("-c plan_cache_mode=force_generic_plan"));
        assert!(options.contains("-c statement_timeout=5000"));
    }

    #[test]
    fn url_settings_are_taken_out() {
        let (url, o) = PostgresOptions::from_url(
            "postgres://h/db?statement_timeout=2s&connect_timeout=4&audit_sync=commit&application_name=a",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url, "postgres://h/db?application_name=a");
        assert_eq!(o.statement_timeout, Duration::from_secs(2));
        assert_eq!(o.connect_timeout, Duration::from_secs(4));
        assert_eq!(o.audit_sync, AuditSync::Commit);
        assert!(PostgresOptions::from_url("postgres://h/db?audit_sync=maybe").is_err());
    }
}
