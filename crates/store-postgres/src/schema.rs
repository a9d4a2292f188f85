//! Migrations this crate owns, applied in order on connect (and by
//! `carelayer migrate`).
//!
//! Each entry of [`MIGRATIONS`] is applied once and recorded in
//! `schema_migrations`. All pending migrations run in ONE transaction that
//! first takes a transaction-level advisory lock, so several servers starting
//! at once against one database apply them exactly once (the others wait,
//! then find nothing to do). Never edit a released migration: append one.

use deadpool_postgres::Client;

use crate::error::pg_err;
use carelayer_store::StoreError;

/// Advisory lock key for migrations (any constant; "carelayr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6361_7265_6c61_7972;

/// Version 1: the same logical schema as the SQLite backend.
///
/// Shape notes (why, not what):
/// - Every text column is `COLLATE "C"`: byte order, exactly SQLite's BINARY
///   collation, so `_sort`, paging and prefix ranges (`>= p AND < p‖U+10FFFF`)
///   agree between backends and b-tree prefix scans work whatever the
///   database's default locale is.
/// - `json` is `bytea`, not `jsonb`: the canonical bytes must come back
///   exactly as written (jsonb reorders keys and drops duplicates).
/// - `resources.seq` is the global commit order, assigned by the writer while
///   it holds the `commit_head` row lock (see `writer`): strictly increasing
///   in commit order, so a reader that sees seq N sees every seq below it.
/// - `current.rid` is a stable surrogate for `(type, id)` that index rows
///   carry instead of the two strings (smaller index b-trees).
/// - Index tables lead with `param` because every test names its parameter.
///   Composite components sit in the typed tables under `<param>#<i>` with
///   `grp` = the `ord` of their `idx_composite` row (same `rid`), so a
///   composite test is a join on `(rid, grp)` and needs no global id.
/// - `patient_key` is on every patient-compartment row: the distribution
///   column of the scale-out design (`docs/scale-out.md`).
/// - Triggers make versions and the audit ledger append-only even against a
///   stray statement.
const V1: &str = r#"
CREATE TABLE resources (
    seq          bigint  PRIMARY KEY,
    type         text    COLLATE "C" NOT NULL,
    id           text    COLLATE "C" NOT NULL,
    version      bigint  NOT NULL,
    last_updated bigint  NOT NULL,
    deleted      boolean NOT NULL,
    patient_key  text    COLLATE "C",
    json         bytea   NOT NULL,
    UNIQUE (type, id, version)
);
CREATE INDEX resources_type_seq ON resources (type, seq);
CREATE INDEX resources_patient ON resources (patient_key, seq) WHERE patient_key IS NOT NULL;

CREATE FUNCTION carelayer_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are immutable', TG_TABLE_NAME;
END $$;
CREATE TRIGGER resources_immutable BEFORE UPDATE OR DELETE ON resources
    FOR EACH ROW EXECUTE FUNCTION carelayer_immutable();
CREATE TRIGGER resources_no_truncate BEFORE TRUNCATE ON resources
    FOR EACH STATEMENT EXECUTE FUNCTION carelayer_immutable();

CREATE TABLE current (
    rid          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type         text    COLLATE "C" NOT NULL,
    id           text    COLLATE "C" NOT NULL,
    version      bigint  NOT NULL,
    seq          bigint  NOT NULL,
    last_updated bigint  NOT NULL,
    deleted      boolean NOT NULL,
    patient_key  text    COLLATE "C",
    UNIQUE (type, id)
);
CREATE INDEX current_live ON current (type, id) WHERE NOT deleted;
CREATE INDEX current_patient ON current (patient_key, type) WHERE patient_key IS NOT NULL;
CREATE INDEX current_updated ON current (type, last_updated);
CREATE INDEX current_seq ON current (seq);

CREATE TABLE idx_token (
    rid bigint NOT NULL, ord bigint NOT NULL, type text COLLATE "C" NOT NULL,
    param text COLLATE "C" NOT NULL, system text COLLATE "C", code text COLLATE "C",
    text text COLLATE "C", patient_key text COLLATE "C", grp bigint,
    PRIMARY KEY (rid, ord)
);
CREATE INDEX idx_token_code ON idx_token (param, code, system);
CREATE INDEX idx_token_system ON idx_token (param, system) WHERE system IS NOT NULL;
CREATE INDEX idx_token_text ON idx_token (param, text) WHERE text IS NOT NULL;

CREATE TABLE idx_string (
    rid bigint NOT NULL, ord bigint NOT NULL, type text COLLATE "C" NOT NULL,
    param text COLLATE "C" NOT NULL, normalized text COLLATE "C" NOT NULL,
    exact text COLLATE "C" NOT NULL, patient_key text COLLATE "C", grp bigint,
    PRIMARY KEY (rid, ord)
);
CREATE INDEX idx_string_norm ON idx_string (param, normalized);
CREATE INDEX idx_string_exact ON idx_string (param, exact);

CREATE TABLE idx_date (
    rid bigint NOT NULL, ord bigint NOT NULL, type text COLLATE "C" NOT NULL,
    param text COLLATE "C" NOT NULL, low bigint NOT NULL, high bigint NOT NULL,
    patient_key text COLLATE "C", grp bigint,
    PRIMARY KEY (rid, ord)
);
CREATE INDEX idx_date_low ON idx_date (param, low);
CREATE INDEX idx_date_high ON idx_date (param, high);

CREATE TABLE idx_number (
    rid bigint NOT NULL, ord bigint NOT NULL, type text COLLATE "C" NOT NULL,
    param text COLLATE "C" NOT NULL, value double precision,
    patient_key text COLLATE "C", grp bigint,
    PRIMARY KEY (rid, ord)
);
CREATE INDEX idx_number_value ON idx_number (param, value);

CREATE TABLE idx_quantity (
    rid bigint NOT NULL, ord bigint NOT NULL, type text COLLATE "C" NOT NULL,
    param text COLLATE "C" NOT NULL, value double precision, system text COLLATE "C",
    code text COLLATE "C", unit text COLLATE "C", patient_key text COLLATE "C", grp bigint,
    PRIMARY KEY (rid, ord)
);
CREATE INDEX idx_quantity_value ON idx_quantity (param, value);

CREATE TABLE idx_reference (
    rid bigint NOT NULL, ord bigint NOT NULL, type text COLLATE "C" NOT NULL,
    param text COLLATE "C" NOT NULL, target_type text COLLATE "C", target_id text COLLATE "C",
    url text COLLATE "C" NOT NULL, patient_key text COLLATE "C", grp bigint,
    PRIMARY KEY (rid, ord)
);
CREATE INDEX idx_reference_target ON idx_reference (param, target_id, target_type);
CREATE INDEX idx_reference_url ON idx_reference (param, url);
-- `_has` and `_revinclude` walk references backwards from their target.
CREATE INDEX idx_reference_back ON idx_reference (target_type, target_id);

CREATE TABLE idx_uri (
    rid bigint NOT NULL, ord bigint NOT NULL, type text COLLATE "C" NOT NULL,
    param text COLLATE "C" NOT NULL, uri text COLLATE "C" NOT NULL,
    patient_key text COLLATE "C", grp bigint,
    PRIMARY KEY (rid, ord)
);
CREATE INDEX idx_uri_uri ON idx_uri (param, uri);

CREATE TABLE idx_composite (
    rid bigint NOT NULL, ord bigint NOT NULL, type text COLLATE "C" NOT NULL,
    param text COLLATE "C" NOT NULL, parts text NOT NULL, patient_key text COLLATE "C",
    PRIMARY KEY (rid, ord)
);
CREATE INDEX idx_composite_param ON idx_composite (param);

CREATE TABLE audit_ledger (
    seq    bigint PRIMARY KEY,
    record bytea  NOT NULL,
    hash   bytea  NOT NULL CHECK (length(hash) = 32)
);
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_ledger
    FOR EACH ROW EXECUTE FUNCTION carelayer_immutable();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION carelayer_immutable();

-- The audit ledger's query index: one row per entry with the columns the
-- patient's access log and the privacy officer filter on, written in the same
-- transaction as the entry. A separate table so the ledger row (the
-- evidence) stays exactly canonical bytes + hash; searches filter here but
-- always return the decoded ledger row (see `audit.rs`).
CREATE TABLE audit_index (
    seq          bigint  PRIMARY KEY,
    recorded_at  bigint  NOT NULL,
    patient      text    COLLATE "C",
    agent_user   text    COLLATE "C",
    agent_org    text    COLLATE "C",
    agent_client text    COLLATE "C",
    action       text    COLLATE "C" NOT NULL,
    outcome      text    COLLATE "C" NOT NULL,
    break_glass  boolean NOT NULL
);
CREATE INDEX audit_index_patient ON audit_index (patient, seq) WHERE patient IS NOT NULL;
CREATE INDEX audit_index_org ON audit_index (agent_org, seq) WHERE agent_org IS NOT NULL;
CREATE INDEX audit_index_user ON audit_index (agent_user, seq) WHERE agent_user IS NOT NULL;
CREATE INDEX audit_index_client ON audit_index (agent_client, seq) WHERE agent_client IS NOT NULL;
CREATE INDEX audit_index_time ON audit_index (recorded_at, seq);
CREATE INDEX audit_index_break_glass ON audit_index (seq) WHERE break_glass;
CREATE TRIGGER audit_index_append_only BEFORE UPDATE OR DELETE ON audit_index
    FOR EACH ROW EXECUTE FUNCTION carelayer_immutable();

-- Signed ledger heads.
CREATE TABLE audit_checkpoints (
    seq       bigint NOT NULL,
    key_id    text   COLLATE "C" NOT NULL,
    head_hash bytea  NOT NULL,
    signed_at bigint NOT NULL,
    signature bytea  NOT NULL,
    PRIMARY KEY (seq, key_id)
);
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION carelayer_immutable();

-- The single row every write transaction locks first (`FOR UPDATE`): it
-- serialises commits, across processes too, and carries the heads the next
-- commit builds on (last resource seq, last ledger seq and hash).
CREATE TABLE commit_head (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq        bigint  NOT NULL,
    audit_seq  bigint  NOT NULL,
    audit_hash bytea   NOT NULL CHECK (length(audit_hash) = 32)
);
INSERT INTO commit_head (seq, audit_seq, audit_hash) VALUES (0, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');
"#;

/// Version 2: `idx_date_long`, the SQLite backend's partial index of long
/// date ranges (periods, year- and month-precision dates: more than 32
/// days, `carelayer_store::plan::SHORT_SPAN_MICROS`), so a date window (`date=ge…&date=lt…`)
/// can drive a search as it does there: short rows by `idx_date_low`, long
/// ones by this (`search::Builder::date_window`). The condition is
/// `low < high - span`, not SQLite's `high - low > span`: open-ended ranges
/// are stored with i64::MIN/MAX, and PostgreSQL raises an error on the
/// overflow where SQLite silently goes to floating point.
const V2: &str = r#"
CREATE INDEX idx_date_long ON idx_date (param, high) WHERE low < high - 2764800000000;
"#;

/// Version 3: a patient's resources with a code, as the SQLite backend's
/// version 4 (`carelayer_store::plan::PatientScope`): `idx_token_patient`
/// gives patient X's rows of code C as one range, and
/// `idx_reference_target` and `idx_reference_url` carry `patient_key` so
/// the matching references owned by someone else come from the index alone.
const V3: &str = r#"
CREATE INDEX idx_token_patient ON idx_token (patient_key, param, code) WHERE patient_key IS NOT NULL;
DROP INDEX idx_reference_target;
CREATE INDEX idx_reference_target ON idx_reference (param, target_id, target_type, patient_key);
DROP INDEX idx_reference_url;
CREATE INDEX idx_reference_url ON idx_reference (param, url, patient_key);
"#;

/// Version 4: a patient's record from one index, as the SQLite backend's
/// version 7: `current_patient` is in page order (`type, id`) and carries
/// every other column a page reads, so a patient's `$everything` page is
/// an index-only range with no sort.
const V4: &str = r#"
DROP INDEX current_patient;
CREATE INDEX current_patient ON current (patient_key, type, id) INCLUDE (deleted, seq, version, last_updated) WHERE patient_key IS NOT NULL;
"#;

/// Version 5: a date window's short part from `idx_date_low` alone, as the
/// SQLite backend's version 8: the index carries `high`, `type` and `rid`,
/// which the window tests or returns for every row of its range.
const V5: &str = r#"
DROP INDEX idx_date_low;
CREATE INDEX idx_date_low ON idx_date (param, low) INCLUDE (high, type, rid);
"#;

/// Version 6: a date window's long part from `idx_date_long` alone, as its
/// short part from `idx_date_low` (version 5). Without `low`, `type` and
/// `rid` in it, every row of the long index's range was a heap visit, and
/// once the tables were vacuumed the planner preferred to walk the whole
/// parameter's `idx_date_low` range index-only instead (measured: a
/// month's window of one code 2.2 ms with this, 9.6 ms without).
const V6: &str = r#"
DROP INDEX idx_date_long;
CREATE INDEX idx_date_long ON idx_date (param, high) INCLUDE (low, type, rid) WHERE low < high - 2764800000000;
"#;

/// Version 7 (`_id` and `_lastUpdated` off the index tables): their
/// searches read `current.id` and `current.last_updated`, and the indexer
/// no longer writes their rows (`carelayer_fhir::search::HELD_ON_CURRENT`);
/// the rows written before are dead weight in `idx_token`, `idx_date` and
/// their indexes.
const V7: &str = r#"
DELETE FROM idx_date WHERE param = '_lastUpdated';
DELETE FROM idx_token WHERE param = '_id';
"#;

/// Version 8: one string index, on the first
/// [`crate::search::STRING_KEY_CHARS`] characters of the normalised value.
/// `(param, normalized)` and `(param, exact)` held whole values, so a
/// write holding one over about 2,700 bytes (after compression) failed
/// with a 500; and every string row (a third of all index rows, most of
/// them `_content` words) paid for two entries. `:exact` now finds its
/// value's normalised key and compares the written form on the row.
const V8: &str = r#"
DROP INDEX IF EXISTS idx_string_norm;
DROP INDEX IF EXISTS idx_string_exact;
CREATE INDEX IF NOT EXISTS idx_string_key ON idx_string (param, left(normalized, 128));
"#;

/// Version 9: `idx_token_system`, `idx_token_text` and `idx_token_patient`
/// hold only a parameter's own token rows (`grp IS NULL`), not the parts
/// of composite values, which are about a third of all token rows and are
/// found by `idx_token_code` (`carelayer_store::plan::PLAIN_TOKEN_ROW`).
const V9: &str = r#"
DROP INDEX IF EXISTS idx_token_system;
DROP INDEX IF EXISTS idx_token_text;
DROP INDEX IF EXISTS idx_token_patient;
CREATE INDEX IF NOT EXISTS idx_token_system ON idx_token (param, system) WHERE system IS NOT NULL AND grp IS NULL;
CREATE INDEX IF NOT EXISTS idx_token_text ON idx_token (param, text) WHERE text IS NOT NULL AND grp IS NULL;
CREATE INDEX IF NOT EXISTS idx_token_patient ON idx_token (patient_key, param, code) WHERE patient_key IS NOT NULL AND grp IS NULL;
"#;

/// Ordered migrations; index + 1 is the schema version it produces.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9];

/// The secondary indexes a bulk load into a (near-)empty database drops and
/// builds once at its end (`bulk.rs`), as `(table, name, definition)`:
/// every index of the resource and index tables that is neither a primary
/// key nor a unique constraint. Those stay: writes rely on them (`ON
/// CONFLICT (type, id)`, replaced index rows deleted by `rid`, the
/// uniqueness of versions). No answer depends on any listed index, only
/// speed. Each definition must be the one its migration created (a later
/// migration that changes one must change it here too):
/// `tests/bulk_load.rs` compares `pg_indexes` before a load and after.
pub(crate) const DEFERRABLE_INDEXES: &[(&str, &str, &str)] = &[
    ("resources", "resources_type_seq", "(type, seq)"),
    (
        "resources",
        "resources_patient",
        "(patient_key, seq) WHERE patient_key IS NOT NULL",
    ),
    ("current", "current_live", "(type, id) WHERE NOT deleted"),
    (
        "current",
        "current_patient",
        "(patient_key, type, id) INCLUDE (deleted, seq, version, last_updated) WHERE patient_key IS NOT NULL",
    ),
    ("current", "current_updated", "(type, last_updated)"),
    ("current", "current_seq", "(seq)"),
    ("idx_token", "idx_token_code", "(param, code, system)"),
    (
        "idx_token",
        "idx_token_system",
        "(param, system) WHERE system IS NOT NULL AND grp IS NULL",
    ),
    (
        "idx_token",
        "idx_token_text",
        "(param, text) WHERE text IS NOT NULL AND grp IS NULL",
    ),
    (
        "idx_token",
        "idx_token_patient",
        "(patient_key, param, code) WHERE patient_key IS NOT NULL AND grp IS NULL",
    ),
    (
        "idx_string",
        "idx_string_key",
        "(param, left(normalized, 128))",
    ),
    (
        "idx_date",
        "idx_date_low",
        "(param, low) INCLUDE (high, type, rid)",
    ),
    ("idx_date", "idx_date_high", "(param, high)"),
    (
        "idx_date",
        "idx_date_long",
        "(param, high) INCLUDE (low, type, rid) WHERE low < high - 2764800000000",
    ),
    ("idx_number", "idx_number_value", "(param, value)"),
    ("idx_quantity", "idx_quantity_value", "(param, value)"),
    (
        "idx_reference",
        "idx_reference_target",
        "(param, target_id, target_type, patient_key)",
    ),
    (
        "idx_reference",
        "idx_reference_url",
        "(param, url, patient_key)",
    ),
    (
        "idx_reference",
        "idx_reference_back",
        "(target_type, target_id)",
    ),
    ("idx_uri", "idx_uri_uri", "(param, uri)"),
    ("idx_composite", "idx_composite_param", "(param)"),
];

/// The index tables, cleared for a resource when its current version changes.
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

/// Bring the schema up to date; returns the schema version now in place.
pub(crate) async fn migrate(client: &mut Client) -> Result<i64, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    // A migration may rebuild an index over every row: the request-path
    // statement timeout does not apply (the lock wait neither).
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    bigint PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg_err)?;
    let applied: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg_err)?
        .get(0);
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
        tx.batch_execute(sql).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg_err)?;
        tracing::info!(version, "applied PostgreSQL migration");
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The planner uses `idx_string_key` only for the expression it was
    /// built on, which the search builder writes from the constant.
    #[test]
    fn the_string_key_is_one_length_everywhere() {
        let key = format!("left(normalized, {})", crate::search::STRING_KEY_CHARS);
        assert!(V8.contains(&key), "V8 builds {key}");
        let deferred = DEFERRABLE_INDEXES
            .iter()
            .find(|(_, name, _)| *name == "idx_string_key")
            .map(|(_, _, definition)| *definition);
        assert_eq!(deferred, Some(format!("(param, {key})").as_str()));
    }
}
