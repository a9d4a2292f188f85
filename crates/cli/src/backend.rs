//! Database URL → storage backend. The only place that knows which backends
//! exist.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use carelayer_store::Store;
use carelayer_store_sqlite::{SqliteOptions, SqliteStore};

/// Open (creating and migrating as needed) the store a URL names.
///
/// # Errors
/// The URL names no backend, or the database cannot be created, reached or
/// migrated.
pub async fn open(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(parsed) = SqliteUrl::parse(url) {
        let SqliteUrl { path, options } = parsed?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
        }
        let store = SqliteStore::open(&path, options)
            .with_context(|| format!("cannot open the SQLite database {}", path.display()))?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(open_postgres(url).await?));
    }
    bail!(
        "unrecognised database URL '{}': use sqlite://PATH or postgres://USER@HOST:PORT/DB",
        redact(url)
    )
}

/// A `sqlite://PATH[?mmap_mib=N]` URL: the database file and the store
/// settings riding in its query string, as PostgreSQL's do in theirs.
/// `mmap_mib`: how much of the file each connection memory-maps, in MiB
/// (default: all of it; 0: none, so a disk I/O error fails one request
/// instead of ending the process: see `SqliteOptions::mmap_bytes`).
pub struct SqliteUrl {
    pub path: PathBuf,
    pub options: SqliteOptions,
}

impl SqliteUrl {
    /// `None` when `url` is not a `sqlite://` URL.
    ///
    /// # Errors
    /// No path, or a setting that is unknown or not a number.
    pub fn parse(url: &str) -> Option<anyhow::Result<Self>> {
        let (path, query) = sqlite_parts(url)?;
        Some(Self::from_parts(path, query))
    }

    fn from_parts(path: &str, query: &str) -> anyhow::Result<Self> {
        if path.is_empty() {
            bail!("sqlite:// needs a file path (sqlite://PATH)");
        }
        let mut options = SqliteOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "mmap_mib" => {
                    let mib: i64 = value.parse().ok().filter(|m| *m >= 0).with_context(|| {
                        format!("mmap_mib must be a whole number of MiB, not '{value}'")
                    })?;
                    options.mmap_bytes = mib.saturating_mul(1 << 20);
                }
                other => {
                    bail!("unknown SQLite setting '{other}' in the database URL; known: mmap_mib")
                }
            }
        }
        Ok(Self {
            path: PathBuf::from(path),
            options,
        })
    }
}

/// The file a `sqlite://` URL names, its settings left aside; `None` for
/// another scheme.
#[must_use]
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    sqlite_parts(url).map(|(path, _)| PathBuf::from(path))
}

/// `(path, query)` of a `sqlite://` URL (query empty when there is none).
fn sqlite_parts(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("sqlite://")?;
    Some(rest.split_once('?').unwrap_or((rest, "")))
}

/// Connect to PostgreSQL (pool, migrations, writer task).
/// Settings ride in the URL: `?pool_size=N&statement_timeout=MS&max_batch=N`.
async fn open_postgres(url: &str) -> anyhow::Result<carelayer_store_postgres::PostgresStore> {
    use carelayer_store_postgres::{PostgresOptions, PostgresStore};
    let (clean, options) = PostgresOptions::from_url(url)
        .with_context(|| format!("bad database URL {}", redact(url)))?;
    PostgresStore::connect(&clean, options)
        .await
        .with_context(|| format!("cannot open the PostgreSQL database {}", redact(url)))
}

/// Apply the migrations of the backend a URL names, then close it
/// (`carelayer migrate`). Returns a line for the operator.
///
/// # Errors
/// The URL names no backend, or the database cannot be reached or migrated.
pub async fn migrate(url: &str) -> anyhow::Result<String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (clean, options) = carelayer_store_postgres::PostgresOptions::from_url(url)
            .with_context(|| format!("bad database URL {}", redact(url)))?;
        let version = carelayer_store_postgres::migrate(&clean, &options)
            .await
            .with_context(|| format!("cannot migrate the PostgreSQL database {}", redact(url)))?;
        return Ok(format!("{}: schema at version {version}", redact(url)));
    }
    // SQLite migrates on open.
    let store = open(url).await?;
    store.close().await;
    Ok(format!("{}: schema up to date", redact(url)))
}

/// The folder of a database's keys (the audit signing key, the token
/// issuer key, registered clients): `explicit` (`--key-dir`), else the
/// SQLite file's folder. `key` names the key for the error.
///
/// # Errors
/// A PostgreSQL (or unknown) URL without `--key-dir`.
pub fn key_dir(database: &str, explicit: Option<&Path>, key: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_owned());
    }
    if let Some(path) = sqlite_path(database) {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return Ok(parent.to_owned());
    }
    bail!(
        "--key-dir is required with {}: {key} needs a folder",
        redact(database)
    )
}

/// A URL fit for messages: any password replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn sqlite_urls_carry_settings() {
        let plain = SqliteUrl::parse("sqlite://data/x.db").unwrap().unwrap();
        assert_eq!(plain.path, PathBuf::from("data/x.db"));
        assert_eq!(
            plain.options.mmap_bytes,
            SqliteOptions::default().mmap_bytes
        );

        let off = SqliteUrl::parse("sqlite://data/x.db?mmap_mib=0")
            .unwrap()
            .unwrap();
        assert_eq!(off.path, PathBuf::from("data/x.db"));
        assert_eq!(off.options.mmap_bytes, 0);
        let some = SqliteUrl::parse("sqlite://x.db?mmap_mib=512")
            .unwrap()
            .unwrap();
        assert_eq!(some.options.mmap_bytes, 512 << 20);

        for (url, says) in [
            ("sqlite://x.db?mmap_mib=lots", "whole number"),
            ("sqlite://x.db?mmap_mib=-1", "whole number"),
            ("sqlite://x.db?cache=9", "unknown SQLite setting 'cache'"),
            ("sqlite://", "needs a file path"),
        ] {
            let err = SqliteUrl::parse(url).unwrap().err().unwrap();
            assert!(format!("{err:#}").contains(says), "{url}: {err:#}");
        }
        assert!(SqliteUrl::parse("postgres://u@h/db").is_none());
        assert_eq!(
            sqlite_path("sqlite://d/x.db?mmap_mib=0"),
            Some(PathBuf::from("d/x.db"))
        );
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }
}
