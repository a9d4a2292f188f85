//! The storage contract suite on a fresh temp-file SQLite store per check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use carelayer_store_sqlite::{SqliteOptions, SqliteStore};

async fn fresh() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteStore::open(&dir.path().join("carelayer.db"), SqliteOptions::default()).unwrap();
    (store, dir)
}

carelayer_store::contract_tests!(fresh);
