//! Migrations this crate owns, applied in order at open.
//!
//! Each entry of [`MIGRATIONS`] is applied once, in its own transaction, and
//! recorded in `schema_version`. Never edit a released migration: append one.

use rusqlite::{Connection, OptionalExtension};

use crate::error::sql_err;
use carelayer_store::StoreError;

/// Version 1: resources (every version), the current-version table, typed
/// index tables over current versions, and the audit ledger.
///
/// Shape notes (why, not what):
/// - `resources.seq` is the rowid: the global commit order is the table's own
///   key, so history newest-first is a backwards b-tree walk, and the json of a
///   current version is one rowid lookup away.
/// - `current.rid` is a stable surrogate for `(type, id)`: index rows carry it
///   instead of the two strings, so the index tables and their b-trees stay
///   small and every search predicate is `c.rid IN (index lookup)`.
/// - Index tables lead with `param` because every test names its parameter
///   and `_type`-less searches must still use them.
/// - `grp` links the component rows of one composite value (see
///   `idx_composite`); the partial indexes on it cost nothing for plain rows.
/// - `patient_key` is on every patient-compartment row, the shard key of the
///   scale-out design.
/// - Triggers make versions and the audit ledger append-only even against a
///   stray statement.
const V1: &str = r"
CREATE TABLE resources (
    seq          INTEGER PRIMARY KEY,
    type         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted      INTEGER NOT NULL,
    patient_key  TEXT,
    json         BLOB    NOT NULL
);
CREATE UNIQUE INDEX resources_version ON resources(type, id, version);
CREATE INDEX resources_type_seq ON resources(type, seq);
CREATE TRIGGER resources_no_update BEFORE UPDATE ON resources
    BEGIN SELECT RAISE(ABORT, 'resource versions are immutable'); END;
CREATE TRIGGER resources_no_delete BEFORE DELETE ON resources
    BEGIN SELECT RAISE(ABORT, 'resource versions are immutable'); END;

CREATE TABLE current (
    rid          INTEGER PRIMARY KEY,
    type         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted      INTEGER NOT NULL,
    patient_key  TEXT
);
CREATE UNIQUE INDEX current_key ON current(type, id);
CREATE INDEX current_live ON current(type) WHERE deleted = 0;
CREATE INDEX current_patient ON current(patient_key, type) WHERE patient_key IS NOT NULL;
CREATE INDEX current_updated ON current(type, last_updated);

CREATE TABLE idx_token (
    rid INTEGER NOT NULL, ord INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    system TEXT, code TEXT, text TEXT, patient_key TEXT, grp INTEGER,
    PRIMARY KEY (rid, ord)
) WITHOUT ROWID;
CREATE INDEX idx_token_code ON idx_token(param, code, system);
CREATE INDEX idx_token_system ON idx_token(param, system) WHERE system IS NOT NULL;
CREATE INDEX idx_token_text ON idx_token(param, text) WHERE text IS NOT NULL;
CREATE INDEX idx_token_grp ON idx_token(grp) WHERE grp IS NOT NULL;

CREATE TABLE idx_string (
    rid INTEGER NOT NULL, ord INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    normalized TEXT NOT NULL, exact TEXT NOT NULL, patient_key TEXT, grp INTEGER,
    PRIMARY KEY (rid, ord)
) WITHOUT ROWID;
CREATE INDEX idx_string_norm ON idx_string(param, normalized);
CREATE INDEX idx_string_exact ON idx_string(param, exact);
CREATE INDEX idx_string_grp ON idx_string(grp) WHERE grp IS NOT NULL;

CREATE TABLE idx_date (
    rid INTEGER NOT NULL, ord INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    low INTEGER NOT NULL, high INTEGER NOT NULL, patient_key TEXT, grp INTEGER,
    PRIMARY KEY (rid, ord)
) WITHOUT ROWID;
CREATE INDEX idx_date_low ON idx_date(param, low);
CREATE INDEX idx_date_high ON idx_date(param, high);
CREATE INDEX idx_date_grp ON idx_date(grp) WHERE grp IS NOT NULL;

CREATE TABLE idx_number (
    rid INTEGER NOT NULL, ord INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    value REAL, patient_key TEXT, grp INTEGER,
    PRIMARY KEY (rid, ord)
) WITHOUT ROWID;
CREATE INDEX idx_number_value ON idx_number(param, value);
CREATE INDEX idx_number_grp ON idx_number(grp) WHERE grp IS NOT NULL;

CREATE TABLE idx_quantity (
    rid INTEGER NOT NULL, ord INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    value REAL, system TEXT, code TEXT, unit TEXT, patient_key TEXT, grp INTEGER,
    PRIMARY KEY (rid, ord)
) WITHOUT ROWID;
CREATE INDEX idx_quantity_value ON idx_quantity(param, value);
CREATE INDEX idx_quantity_grp ON idx_quantity(grp) WHERE grp IS NOT NULL;

CREATE TABLE idx_reference (
    rid INTEGER NOT NULL, ord INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    target_type TEXT, target_id TEXT, url TEXT NOT NULL, patient_key TEXT, grp INTEGER,
    PRIMARY KEY (rid, ord)
) WITHOUT ROWID;
CREATE INDEX idx_reference_target ON idx_reference(param, target_id, target_type);
CREATE INDEX idx_reference_url ON idx_reference(param, url);
CREATE INDEX idx_reference_grp ON idx_reference(grp) WHERE grp IS NOT NULL;

CREATE TABLE idx_uri (
    rid INTEGER NOT NULL, ord INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    uri TEXT NOT NULL, patient_key TEXT, grp INTEGER,
    PRIMARY KEY (rid, ord)
) WITHOUT ROWID;
CREATE INDEX idx_uri_uri ON idx_uri(param, uri);
CREATE INDEX idx_uri_grp ON idx_uri(grp) WHERE grp IS NOT NULL;

-- One row per composite value; its components live in the typed tables under
-- the parameter name `<param>#<position>` with `grp` = this row's `grp`, so a
-- composite test is a join of ordinary typed tests on `grp`.
CREATE TABLE idx_composite (
    grp INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    parts TEXT NOT NULL, patient_key TEXT
);
CREATE INDEX idx_composite_param ON idx_composite(param);
CREATE INDEX idx_composite_rid ON idx_composite(rid, param);

CREATE TABLE audit_ledger (
    seq    INTEGER PRIMARY KEY,
    record BLOB NOT NULL,
    hash   BLOB NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_ledger
    BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_ledger
    BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
";

/// The query columns of `audit_index` derived from a ledger entry's
/// canonical JSON (`record`), as the migration that created the index
/// derived them (version 5 replaced the index: see `crate::audit_index`).
macro_rules! index_columns_from_ledger {
    () => {
        r"SELECT seq,
       json_extract(CAST(record AS TEXT), '$.recorded_at'),
       json_extract(CAST(record AS TEXT), '$.patient'),
       json_extract(CAST(record AS TEXT), '$.agent.user'),
       json_extract(CAST(record AS TEXT), '$.agent.org'),
       json_extract(CAST(record AS TEXT), '$.agent.client'),
       json_extract(CAST(record AS TEXT), '$.action'),
       json_extract(CAST(record AS TEXT), '$.outcome'),
       CASE WHEN json_extract(CAST(record AS TEXT), '$.action')
                 IN ('break-glass-start', 'break-glass-stop')
              OR substr(json_extract(CAST(record AS TEXT), '$.purpose'), 1, 13) = 'break-glass: '
            THEN 1 ELSE 0 END
"
    };
}

/// Version 2 (audit ledger queries): `audit_index`, one row per ledger entry
/// with the columns the patient's access log and the privacy officer filter
/// on, written by the writer after the entry commits (the deferred index: see
/// `writer`; and `audit.rs` for why it is a separate table); and `audit_checkpoints`, the
/// signed ledger heads.
///
/// - Partial indexes lead with the filter column and end with `seq`, so "the
///   newest entries about patient X" is one index range walked backwards.
/// - Existing entries are indexed from their canonical JSON (read as TEXT:
///   SQLite would take a BLOB argument to the JSON functions for JSONB).
/// - Both tables are append-only like the ledger.
const V2_AUDIT: &str = concat!(
    r"
CREATE TABLE audit_index (
    seq          INTEGER PRIMARY KEY,
    recorded_at  INTEGER NOT NULL,
    patient      TEXT,
    agent_user   TEXT,
    agent_org    TEXT,
    agent_client TEXT,
    action       TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    break_glass  INTEGER NOT NULL
);
CREATE INDEX audit_index_patient ON audit_index(patient, seq) WHERE patient IS NOT NULL;
CREATE INDEX audit_index_org ON audit_index(agent_org, seq) WHERE agent_org IS NOT NULL;
CREATE INDEX audit_index_user ON audit_index(agent_user, seq) WHERE agent_user IS NOT NULL;
CREATE INDEX audit_index_client ON audit_index(agent_client, seq) WHERE agent_client IS NOT NULL;
CREATE INDEX audit_index_time ON audit_index(recorded_at, seq);
CREATE INDEX audit_index_break_glass ON audit_index(seq) WHERE break_glass = 1;
INSERT INTO audit_index
    (seq, recorded_at, patient, agent_user, agent_org, agent_client, action, outcome, break_glass)
",
    index_columns_from_ledger!(),
    r"FROM audit_ledger;
CREATE TRIGGER audit_index_no_update BEFORE UPDATE ON audit_index
    BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER audit_index_no_delete BEFORE DELETE ON audit_index
    BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;

CREATE TABLE audit_checkpoints (
    seq       INTEGER NOT NULL,
    key_id    TEXT    NOT NULL,
    head_hash BLOB    NOT NULL,
    signed_at INTEGER NOT NULL,
    signature BLOB    NOT NULL,
    PRIMARY KEY (seq, key_id)
) WITHOUT ROWID;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
"
);

/// Version 3 (date windows): stored date ranges longer than 32 days
/// (`carelayer_store::plan::SHORT_SPAN_MICROS`: periods, year-precision dates)
/// indexed by their end, so a search for a window (`date=ge…&date=lt…`) can
/// drive from `idx_date_low` for the short rows and from here for the few
/// long ones, instead of from an open-ended half of the window. The
/// condition must stay textually identical to the one `search` writes.
const V3_DATE_WINDOWS: &str = "
CREATE INDEX idx_date_long ON idx_date(param, high) WHERE high - low > 2764800000000;
";

/// Version 4 (a patient's resources by code): a clinician's commonest
/// search, "this patient's HbA1c results" (`Observation?subject=X&code=C`),
/// drove from the patient's reference (every Observation of the patient)
/// and probed each for the code. `idx_token_patient` finds the few rows of
/// patient X with code C as one range. `idx_reference_target` and
/// `idx_reference_url` gain `patient_key` so the matching references held
/// by a resource of another owner (an absolute URL, say) are found from the
/// index alone: `search` adds those to keep the candidates a superset
/// (see `carelayer_store::plan::PatientScope`).
const V4_PATIENT_CODES: &str = "
CREATE INDEX idx_token_patient ON idx_token(patient_key, param, code) WHERE patient_key IS NOT NULL;
DROP INDEX idx_reference_target;
CREATE INDEX idx_reference_target ON idx_reference(param, target_id, target_type, patient_key);
DROP INDEX idx_reference_url;
CREATE INDEX idx_reference_url ON idx_reference(param, url, patient_key);
";

/// Version 5 (audit postings): the audit index becomes postings per flush
/// (see `crate::audit_index` for why). `audit_index` goes; the store derives
/// the postings of every existing entry from the ledger when it opens
/// (`audit_index::index_from_ledger`: everything after the last block, which
/// here is everything). Both new tables are append-only like the ledger.
///
/// - `audit_postings`: one row per filter value per block, the value's seqs
///   in the block ascending and comma-separated; a block is named by its
///   last seq, so "the newest entries about patient X" walks one key's rows
///   backwards.
/// - `audit_blocks`: each block's seq range and time range, which turn a
///   date window into a seq range.
const V5_AUDIT_POSTINGS: &str = "
DROP TABLE audit_index;
CREATE TABLE audit_postings (
    key   TEXT    NOT NULL,
    block INTEGER NOT NULL,
    seqs  TEXT    NOT NULL,
    PRIMARY KEY (key, block)
) WITHOUT ROWID;
CREATE TABLE audit_blocks (
    last_seq  INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    first_at  INTEGER NOT NULL,
    last_at   INTEGER NOT NULL
);
CREATE INDEX audit_blocks_last_at ON audit_blocks(last_at);
CREATE INDEX audit_blocks_first_at ON audit_blocks(first_at);
CREATE TRIGGER audit_postings_no_update BEFORE UPDATE ON audit_postings
    BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER audit_postings_no_delete BEFORE DELETE ON audit_postings
    BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER audit_blocks_no_update BEFORE UPDATE ON audit_blocks
    BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER audit_blocks_no_delete BEFORE DELETE ON audit_blocks
    BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
";

/// Version 6 (deferred index builds): while an announced bulk load runs
/// without its secondary indexes (see `crate::bulk`), each dropped index's
/// DDL and planner statistics wait here; a row is removed in the
/// transaction that builds its index again, so a row left at open is an
/// index still to build.
const V6_DEFERRED_INDEXES: &str = "
CREATE TABLE deferred_indexes (
    name TEXT PRIMARY KEY,
    tbl  TEXT NOT NULL,
    sql  TEXT NOT NULL,
    stat TEXT
);
";

/// Version 7 (a patient's record from one index): `current_patient`
/// carries every column a page reads, in `(type, id)` order. A patient's
/// `$everything` (and any search driven by the patient key) then reads its
/// rows in page order from the index alone: before, each of a 500-resource
/// record's rows was looked up in `current` and the lot sorted, a quarter
/// of the CPU of that request under load.
const V7_PATIENT_RECORD_INDEX: &str = "
DROP INDEX current_patient;
CREATE INDEX current_patient ON current(patient_key, type, id, deleted, seq, version, last_updated)
    WHERE patient_key IS NOT NULL;
";

/// Version 8 (date windows from the index alone): `idx_date_low` carries
/// `high` and `type`, which a window's short part tests on every row of its
/// range (`high >= from`, the searched type). Before, each of those rows
/// (about 18,000 for one month at 10,000 patients) was looked up in
/// `idx_date`: 26 ms of a 42 ms `Observation?code=…&date=ge…&date=lt…`;
/// now 1.3 ms.
const V8_DATE_WINDOW_COVERING: &str = "
DROP INDEX idx_date_low;
CREATE INDEX idx_date_low ON idx_date(param, low, high, type);
";

/// Version 9 (one string index): `:exact` is answered from
/// `idx_string_norm`, which gains `exact` as its last column (an exact
/// value's normalised form is known: the query carries both), and
/// `idx_string_exact` goes. Every string row (names, addresses, and the
/// words of `_content`, about a third of all index rows) was inserted into
/// both; now into one. A string's default (prefix) search reads the same
/// leading columns as before.
const V9_ONE_STRING_INDEX: &str = "
DROP INDEX idx_string_exact;
DROP INDEX idx_string_norm;
CREATE INDEX idx_string_norm ON idx_string(param, normalized, exact);
";

/// Version 10 (`_id` and `_lastUpdated` off the index tables): their
/// searches read `current.id` and `current.last_updated`, and the indexer
/// no longer writes their rows (`carelayer_fhir::search::HELD_ON_CURRENT`);
/// the rows written before are dead weight in `idx_token`, `idx_date` and
/// their indexes.
const V10_HELD_ON_CURRENT: &str = "
DELETE FROM idx_date WHERE param = '_lastUpdated';
DELETE FROM idx_token WHERE param = '_id';
";

/// Version 11 (token indexes without composite parts): `idx_token_system`,
/// `idx_token_text` and `idx_token_patient` hold only a parameter's own
/// token rows (`grp IS NULL`), not the parts of composite values, which
/// are about a third of all token rows and are found by `idx_token_code`
/// (`carelayer_store::plan::PLAIN_TOKEN_ROW`). Each ends with `grp`, always
/// NULL in it (a byte a row): the searches state `grp IS NULL`, and
/// SQLite does not take that from the index's condition, so without the
/// column no search could be answered from the index alone. A database
/// left mid bulk load holds the old definitions in `deferred_indexes`:
/// they are replaced here by the new ones, built now.
const V11_PLAIN_TOKEN_INDEXES: &str = "
DELETE FROM deferred_indexes
    WHERE name IN ('idx_token_system', 'idx_token_text', 'idx_token_patient');
DROP INDEX IF EXISTS idx_token_system;
DROP INDEX IF EXISTS idx_token_text;
DROP INDEX IF EXISTS idx_token_patient;
CREATE INDEX idx_token_system ON idx_token(param, system, grp)
    WHERE system IS NOT NULL AND grp IS NULL;
CREATE INDEX idx_token_text ON idx_token(param, text, grp)
    WHERE text IS NOT NULL AND grp IS NULL;
CREATE INDEX idx_token_patient ON idx_token(patient_key, param, code, grp)
    WHERE patient_key IS NOT NULL AND grp IS NULL;
";

/// Ordered migrations; index + 1 is the schema version it produces.
pub(crate) const MIGRATIONS: &[&str] = &[
    V1,
    V2_AUDIT,
    V3_DATE_WINDOWS,
    V4_PATIENT_CODES,
    V5_AUDIT_POSTINGS,
    V6_DEFERRED_INDEXES,
    V7_PATIENT_RECORD_INDEX,
    V8_DATE_WINDOW_COVERING,
    V9_ONE_STRING_INDEX,
    V10_HELD_ON_CURRENT,
    V11_PLAIN_TOKEN_INDEXES,
];

/// The index tables, in the order rows are cleared on update/delete.
pub(crate) const INDEX_TABLES: &[&str] = &[
    "idx_token",
    "idx_string",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_reference",
    "idx_uri",
    "idx_composite",
];

/// Planner statistics for a fresh database, in `sqlite_stat1` format
/// (`rows`, then average rows per distinct prefix of the index columns).
///
/// Why: with no statistics SQLite assumes every index is equally selective
/// and, for `Patient?identifier=X ORDER BY type, id`, prefers walking
/// `current_key` over all Patients (it avoids a sort) to looking the
/// identifier up. These figures describe a national-scale shape (few types,
/// many rows per type and per parameter, few rows per value) so plans are
/// index-driven from the first request. They are written only when no
/// statistics exist; a later `ANALYZE` replaces them with measured ones.
const SEEDED_STATS: &[(&str, &str, &str)] = &[
    ("resources", "resources_version", "3000000 300000 3 1"),
    ("resources", "resources_type_seq", "3000000 300000 1"),
    ("current", "current_key", "1000000 100000 1"),
    ("current", "current_live", "1000000 100000"),
    ("current", "current_patient", "1000000 50 10 1 1 1 1 1"),
    ("current", "current_updated", "1000000 100000 2"),
    ("idx_token", "idx_token_code", "10000000 200000 20 10"),
    ("idx_token", "idx_token_system", "5000000 200000 50000"),
    ("idx_token", "idx_token_text", "2000000 200000 20"),
    ("idx_token", "idx_token_patient", "8000000 100 10 2"),
    ("idx_token", "idx_token", "10000000 10 1"),
    ("idx_token", "idx_token_grp", "100000 2"),
    ("idx_string", "idx_string_norm", "5000000 500000 20 18"),
    ("idx_string", "idx_string", "5000000 8 1"),
    ("idx_string", "idx_string_grp", "10000 2"),
    ("idx_date", "idx_date_low", "2000000 200000 5 1 1"),
    ("idx_date", "idx_date_high", "2000000 200000 5"),
    ("idx_date", "idx_date", "2000000 3 1"),
    ("idx_date", "idx_date_grp", "10000 2"),
    ("idx_date", "idx_date_long", "20000 2000 2"),
    ("idx_number", "idx_number_value", "100000 20000 5"),
    ("idx_number", "idx_number", "100000 2 1"),
    ("idx_number", "idx_number_grp", "10000 2"),
    ("idx_quantity", "idx_quantity_value", "1000000 200000 5"),
    ("idx_quantity", "idx_quantity", "1000000 2 1"),
    ("idx_quantity", "idx_quantity_grp", "100000 2"),
    (
        "idx_reference",
        "idx_reference_target",
        "3000000 300000 20 20 20",
    ),
    ("idx_reference", "idx_reference_url", "3000000 300000 20 20"),
    ("idx_reference", "idx_reference", "3000000 4 1"),
    ("idx_reference", "idx_reference_grp", "10000 2"),
    ("idx_uri", "idx_uri_uri", "100000 20000 5"),
    ("idx_uri", "idx_uri", "100000 2 1"),
    ("idx_uri", "idx_uri_grp", "10000 2"),
    ("idx_composite", "idx_composite_param", "1000000 100000"),
    ("idx_composite", "idx_composite_rid", "1000000 3 2"),
];

/// Write [`SEEDED_STATS`] if the database has no planner statistics yet.
pub(crate) fn seed_planner_stats(conn: &mut Connection) -> Result<(), StoreError> {
    let has_stats: bool = stat_table_exists(conn)?
        && conn
            .query_row("SELECT count(*) FROM sqlite_stat1", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql_err)?
            > 0;
    if has_stats {
        return Ok(());
    }
    let tx = conn.transaction().map_err(sql_err)?;
    // ANALYZE of the (empty) schema creates sqlite_stat1.
    tx.execute_batch("ANALYZE").map_err(sql_err)?;
    tx.execute("DELETE FROM sqlite_stat1", [])
        .map_err(sql_err)?;
    for (tbl, idx, stat) in SEEDED_STATS {
        tx.execute(
            "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?1, ?2, ?3)",
            [tbl, idx, stat],
        )
        .map_err(sql_err)?;
    }
    tx.commit().map_err(sql_err)?;
    // Make this connection's planner load them (readers open afterwards).
    conn.execute_batch("ANALYZE sqlite_schema")
        .map_err(sql_err)?;
    Ok(())
}

/// Whether `sqlite_stat1` exists (the first `ANALYZE` creates it).
fn stat_table_exists(conn: &Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_stat1'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(sql_err)
}

/// Bring the schema up to date.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(sql_err)?;
    let applied: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(sql_err)?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if applied > known {
        return Err(StoreError::Other(format!(
            "database schema version {applied} is newer than this build ({known})"
        )));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(applied).unwrap_or(0))
    {
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        let tx = conn.transaction().map_err(sql_err)?;
        tx.execute_batch(sql).map_err(sql_err)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )
        .map_err(sql_err)?;
        tx.commit().map_err(sql_err)?;
    }
    if applied < known {
        reshape_stale_stats(conn)?;
    }
    Ok(())
}

/// After a migration rebuilt an index with other columns, its
/// `sqlite_stat1` row is gone (`DROP INDEX` deletes it) or describes the
/// old shape (one figure per column prefix). Without one the planner
/// misjudged the widened `idx_date_low` and walked it for a date window's
/// long part, 45× slower. A missing row, or one whose figure count differs
/// from [`SEEDED_STATS`]' for that index, gets the seeded figures
/// (measured rows of the current shape are left alone), and the planner
/// reloads them.
fn reshape_stale_stats(conn: &mut Connection) -> Result<(), StoreError> {
    if !stat_table_exists(conn)? {
        return Ok(());
    }
    let tx = conn.transaction().map_err(sql_err)?;
    let mut changed = 0;
    for (tbl, idx, stat) in SEEDED_STATS {
        let held: Option<String> = tx
            .query_row(
                "SELECT stat FROM sqlite_stat1 WHERE tbl = ?1 AND idx = ?2",
                [tbl, idx],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err)?;
        let figures = |s: &str| {
            s.split_whitespace()
                .filter(|w| w.parse::<u64>().is_ok())
                .count()
        };
        if held.is_none_or(|held| figures(&held) != figures(stat)) {
            tx.execute(
                "DELETE FROM sqlite_stat1 WHERE tbl = ?1 AND idx = ?2",
                [tbl, idx],
            )
            .map_err(sql_err)?;
            changed += tx
                .execute(
                    "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?1, ?2, ?3)",
                    [tbl, idx, stat],
                )
                .map_err(sql_err)?;
        }
    }
    tx.commit().map_err(sql_err)?;
    if changed > 0 {
        conn.execute_batch("ANALYZE sqlite_schema")
            .map_err(sql_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(conn: &Connection, idx: &str) -> String {
        conn.query_row("SELECT stat FROM sqlite_stat1 WHERE idx = ?1", [idx], |r| {
            r.get(0)
        })
        .unwrap_or_default()
    }

    /// A database migrated from an older shape: the widened indexes' rows
    /// get the seeded figures of their new shape; a measured row of the
    /// right shape is kept.
    #[test]
    fn stats_of_an_index_whose_columns_changed_are_reshaped() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        seed_planner_stats(&mut conn).unwrap();
        let set = |conn: &Connection, idx: &str, value: &str| {
            conn.execute(
                "UPDATE sqlite_stat1 SET stat = ?2 WHERE idx = ?1",
                [idx, value],
            )
            .unwrap();
        };
        // As versions 6 and 7 left them (a row of the old shape; none, as
        // `DROP INDEX` removes it), and measured rows of today's shape.
        set(&conn, "idx_date_low", "2000000 200000 5");
        conn.execute("DROP INDEX current_patient", []).unwrap();
        conn.execute_batch(
            "CREATE INDEX current_patient ON current(patient_key, type, id, deleted, seq, version, last_updated) WHERE patient_key IS NOT NULL",
        )
        .unwrap();
        set(&conn, "idx_date_high", "3100000 40000 7 unordered");
        set(&conn, "idx_token_code", "123 45 6 7");
        reshape_stale_stats(&mut conn).unwrap();
        assert_eq!(stat(&conn, "idx_date_low"), "2000000 200000 5 1 1");
        assert_eq!(stat(&conn, "current_patient"), "1000000 50 10 1 1 1 1 1");
        assert_eq!(stat(&conn, "idx_date_high"), "3100000 40000 7 unordered");
        assert_eq!(stat(&conn, "idx_token_code"), "123 45 6 7");
    }
}
