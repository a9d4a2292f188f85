//! Database URL → storage backend. The only place that knows which backends
//! exist.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use carelayer_store::Store;
use carelayer_store_sqlite::{SqliteOptions, SqliteStore};

/// Open (creating and migrating as needed) the store a URL names.
pub fn open(url: &str) -> anyhow::Result<Arc<dyn Store>> {
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
        bail!(
            "the PostgreSQL backend is not part of this build yet; use the embedded default (sqlite://PATH)"
        );
    }
    bail!(
        "unrecognised database URL '{}': use sqlite://PATH or postgres://USER@HOST:PORT/DB",
        redact(url)
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
