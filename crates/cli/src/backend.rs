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
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
        }
        let store = SqliteStore::open(&path, SqliteOptions::default())
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
    if let Some(path) = database.strip_prefix("sqlite://") {
        let parent = Path::new(path)
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
}
