//! The storage contract suite: one set of checks every backend must pass.
//!
//! Each function takes a freshly created, empty store. Backend crates call
//! them from their integration tests (SQLite always; PostgreSQL when
//! `CARELAYER_TEST_POSTGRES` is set).
