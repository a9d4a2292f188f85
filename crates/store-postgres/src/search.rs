//! `SearchQuery` → PostgreSQL over the index tables (a port of the SQLite
//! backend's translation; the two must agree, the contract suite checks it).
//!
//! The statement fixes its own plan's shape, so that it is right for any
//! values and can be prepared once and run on a generic plan: the most
//! selective clause (by [`clause_cost`], shared with SQLite, or a
//! date window) drives as `c.rid = ANY(ARRAY(index lookup))` (the lookup
//! runs once, then `current` is probed by primary key), and every other
//! clause is probed per candidate row by `EXISTS (… WHERE x.rid = c.rid …
//! OFFSET 0)`, which PostgreSQL cannot turn into a join it might reorder.
//! User input only ever reaches PostgreSQL as bound parameters: the text
//! built here contains nothing but fixed SQL, aliases and `$n`
//! placeholders.
//!
//! Semantics worth stating:
//! - dates are stored ranges `[L, H]` tested against the search range
//!   `[l, h]` per FHIR: `eq` L≥l∧H≤h, `ne` its negation, `gt` H>h, `lt` L<l,
//!   `ge` gt∨eq, `le` lt∨eq, `sa` L>h, `eb` H<l, `ap` overlap with `[l, h]`
//!   widened by 10% of its distance from now;
//! - numbers/quantities are points `x`: `eq` l≤x≤h (the search value's
//!   implicit precision range, inclusive), `gt/lt/ge/le` compare with the
//!   value, `sa` x>h, `eb` x<l, `ap` within 10% of the value (or in `[l, h]`);
//! - strings compare the normalised form (prefix by default, substring for
//!   `:contains`), `:exact` the value as written;
//! - sorting by a parameter uses the smallest value ascending and the largest
//!   descending (dates: `low` ascending, `high` descending); resources with no
//!   value sort last; ties break on id.

use std::fmt::Write as _;

use carelayer_store::plan::{
    DateWindow, PLAIN_TOKEN_ROW, PatientReference, PatientScope, SHORT_SPAN_MICROS, clause_cost,
    id_operator, index_table, states_plain_token_row,
};
use carelayer_store::{
    Clause, IndexTest, Predicate, Prefix, SearchQuery, SortKey, StoreError, TotalMode,
};
use tokio_postgres::types::{ToSql, Type};

/// A bound value. Every integer column is `bigint` and every real one
/// `double precision`, so `i64`/`f64` always match the column types.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// A value this module binds, with its PostgreSQL type: search statements
/// are sent typed and unnamed (`query_typed`: parse, bind and execute in
/// one round trip), so the types must be known here rather than learnt
/// from a prepare round trip.
pub(crate) trait Bindable: ToSql + Sync + Send + 'static {
    const TYPE: Type;
}

impl Bindable for i64 {
    const TYPE: Type = Type::INT8;
}
impl Bindable for f64 {
    const TYPE: Type = Type::FLOAT8;
}
impl Bindable for String {
    const TYPE: Type = Type::TEXT;
}
impl Bindable for Vec<String> {
    const TYPE: Type = Type::TEXT_ARRAY;
}

/// The ids of a clause that is nothing but `_id` tests (at least two),
/// bound as one array: `id = ANY($n)` has one statement text for any
/// number of ids, so it is prepared and planned once per connection, where
/// `id = $1 OR id = $2 …` was a new statement (parsed and planned) for
/// every count. Such clauses are common on hot paths: `$everything`'s
/// referenced resources, `_include`, and the witnesses the hidden-link
/// check asks for a page's hits.
fn id_list(clause: &Clause) -> Option<Vec<String>> {
    if clause.any_of.len() < 2 {
        return None;
    }
    clause
        .any_of
        .iter()
        .map(|p| match p {
            Predicate::Id(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// SQL text plus its bound values and their types, in placeholder order.
#[derive(Default)]
pub(crate) struct Sql {
    pub text: String,
    pub params: Vec<Param>,
    pub types: Vec<Type>,
}

impl std::fmt::Debug for Sql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sql")
            .field("text", &self.text)
            .field("params", &self.params.len())
            .finish()
    }
}

impl Sql {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    /// Append a placeholder bound to `v`.
    fn bind<T: Bindable>(&mut self, v: T) {
        self.params.push(Box::new(v));
        self.types.push(T::TYPE);
        let _ = write!(self.text, "${}", self.params.len());
    }

    /// The parameters as the driver wants them for a prepared statement.
    pub(crate) fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }

    /// The parameters with their types, for `query_typed`.
    pub(crate) fn typed(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.params
            .iter()
            .zip(&self.types)
            .map(|(p, t)| (p.as_ref() as &(dyn ToSql + Sync), t.clone()))
            .collect()
    }
}

/// Builds nested queries with distinct aliases.
struct Builder {
    sql: Sql,
    next_alias: usize,
    now_micros: i64,
}

/// The columns every resource-returning query selects from `current c`.
pub(crate) const CURRENT_COLUMNS: &str =
    "c.type, c.id, c.version, c.seq, c.last_updated, c.deleted, c.patient_key";

/// What a search statement returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// The page: [`CURRENT_COLUMNS`], sorted, limited.
    Page,
    /// `count(*)` of all matches.
    Count,
    /// Every matching id (precondition checks).
    Ids,
}

/// Which committed state a statement's `current` rows are limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Snapshot {
    /// No limit: inside the writer's transaction.
    Unbounded,
    /// `seq <= N` (a pinned page, or `EXPLAIN`).
    Seq(i64),
    /// `seq <= h.snap`, the column [`build_search`] reads from
    /// `commit_head` in the same statement.
    Head,
}

/// The full statement for `query` under `snapshot`.
pub(crate) fn build(
    query: &SearchQuery,
    snapshot: Snapshot,
    shape: Shape,
    now_micros: i64,
) -> Result<Sql, StoreError> {
    let mut b = Builder {
        sql: Sql::default(),
        next_alias: 0,
        now_micros,
    };
    b.select(query, snapshot, shape)?;
    Ok(b.sql)
}

/// A whole search in ONE statement, so it is one round trip and sees one
/// snapshot without a transaction: the snapshot seq (bound, or
/// `commit_head.seq` read by the statement itself: the writer moves it in
/// the same transaction as the versions it covers, so every version with
/// seq ≤ it is visible in the statement's snapshot), the page with its
/// bodies, and the total when asked (`count(*) OVER ()`, computed over all
/// matches before the limit: the `WHERE` is planned once, not twice).
/// Columns: snap, total, then [`CURRENT_COLUMNS`] and `json` (NULL for
/// `keys_only`); with no row on the page, one row whose other columns are
/// NULL (the caller then counts separately if a total is wanted and the
/// page was past the end).
///
/// The page is a `LATERAL` subquery of the one-row `h`: a nested loop over
/// one outer row emits the inner rows in the inner `ORDER BY` order. The
/// body is a scalar subquery in the page's select list, which PostgreSQL
/// evaluates after `ORDER BY … LIMIT` (expensive target-list expressions
/// are postponed past a limit), so only the page's bodies are read and
/// the sort never carries them.
pub(crate) fn build_search(query: &SearchQuery, now_micros: i64) -> Result<Sql, StoreError> {
    let mut b = Builder {
        sql: Sql::default(),
        next_alias: 0,
        now_micros,
    };
    b.sql.push(
        "SELECT h.snap, p.total, p.type, p.id, p.version, p.seq, p.last_updated, p.deleted, \
         p.patient_key, p.json FROM (SELECT ",
    );
    match query.snapshot_seq {
        Some(s) => {
            b.sql.bind(s);
            b.sql.push("::bigint");
        }
        None => b.sql.push("(SELECT seq FROM commit_head)"),
    }
    b.sql.push(" AS snap) h LEFT JOIN LATERAL (");
    b.select(query, Snapshot::Head, Shape::Page)?;
    b.sql.push(") p ON TRUE");
    Ok(b.sql)
}

/// How many leading characters of a normalised string value
/// `idx_string_key` holds (`schema::V8`). Whole values would make one
/// B-tree entry of a long value (a ValueSet's description, a pasted
/// letter), and PostgreSQL refuses an entry over 2,704 bytes, failing the
/// write; 128 characters are at most 512 bytes, and longer prefixes and
/// exact values are checked on the row.
pub(crate) const STRING_KEY_CHARS: usize = 128;

/// The `idx_string_key` expression on alias `x` of `idx_string`; it must
/// be written as the index's definition is for the planner to use it.
fn string_key(x: &str) -> String {
    format!("left({x}.normalized, {STRING_KEY_CHARS})")
}

/// Smallest string strictly greater than every string starting with `p`
/// (as far as valid UTF-8 goes): the exclusive upper bound of a prefix range,
/// which lets prefix matches use the `(param, value)` indexes.
fn prefix_upper(p: &str) -> String {
    let mut s = String::with_capacity(p.len() + 4);
    s.push_str(p);
    s.push(char::MAX);
    s
}

impl Builder {
    /// One `SELECT` of `shape` over `current c`.
    fn select(
        &mut self,
        query: &SearchQuery,
        snapshot: Snapshot,
        shape: Shape,
    ) -> Result<(), StoreError> {
        match shape {
            Shape::Page => {
                self.sql.push("SELECT ");
                self.sql.push(CURRENT_COLUMNS);
                match (snapshot, query.total) {
                    (Snapshot::Head, TotalMode::Estimate | TotalMode::Accurate) => {
                        self.sql.push(", count(*) OVER () AS total");
                    }
                    _ => self.sql.push(", NULL::bigint AS total"),
                }
                match (&query.keys_only, &query.bodies) {
                    (true, _) => self.sql.push(", NULL::bytea AS json"),
                    (false, None) => self
                        .sql
                        .push(", (SELECT r.json FROM resources r WHERE r.seq = c.seq) AS json"),
                    (false, Some(range)) => {
                        // The row's position in the page's own order (counted
                        // from before OFFSET: the range is after it).
                        let position = |n: usize| {
                            i64::try_from(n.saturating_add(query.offset)).unwrap_or(i64::MAX)
                        };
                        self.sql.push(", CASE WHEN row_number() OVER (");
                        self.order_by(&query.sort)?;
                        self.sql.push(") BETWEEN ");
                        self.sql.bind(position(range.start).saturating_add(1));
                        self.sql.push(" AND ");
                        self.sql.bind(position(range.end));
                        self.sql.push(
                            " THEN (SELECT r.json FROM resources r WHERE r.seq = c.seq) END AS json",
                        );
                    }
                }
                self.sql.push(" ");
            }
            Shape::Count => self.sql.push("SELECT count(*) "),
            Shape::Ids => self.sql.push("SELECT c.id "),
        }
        self.source_and_conditions(query, "c", snapshot)?;
        if shape == Shape::Page {
            self.order_by(&query.sort)?;
            self.sql.push(" LIMIT ");
            self.sql
                .bind(i64::try_from(query.count).unwrap_or(i64::MAX));
            self.sql.push(" OFFSET ");
            self.sql
                .bind(i64::try_from(query.offset).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    fn alias(&mut self, stem: &str) -> String {
        self.next_alias += 1;
        format!("{stem}{}", self.next_alias)
    }

    /// `FROM … {c} WHERE …` for `q`: the rows of `current` (alias `c`) the
    /// query matches.
    ///
    /// The cheapest clause (by [`clause_cost`]), or a date window, is the
    /// row source: `(SELECT * FROM current WHERE rid = ANY(ARRAY(<its
    /// rids>)) OFFSET 0) c`. The array's lookup runs once (an InitPlan)
    /// and `current` is then read by primary key only: `OFFSET 0` keeps
    /// PostgreSQL from pushing the other conditions into that scan, where a
    /// generic plan would combine it with a walk of every current row of
    /// the type (`type = $n`) or below the snapshot (`seq <= $n`). Every
    /// other clause is a probe of the candidate row (see [`Self::probe`]).
    /// The plan's shape is thereby fixed by the statement, not by the
    /// values, which is what makes a generic plan safe.
    fn source_and_conditions(
        &mut self,
        q: &SearchQuery,
        c: &str,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        let best = q
            .clauses
            .iter()
            .enumerate()
            .filter(|(_, cl)| drivable(cl))
            .min_by_key(|(_, cl)| clause_cost(cl));
        let mut driver = best.map(|(i, _)| i);
        // A patient's resources with a code: that patient's rows of the code
        // drive (see `PatientScope`), and every clause is probed.
        let scope = PatientScope::driving(q, best.map(|(_, cl)| clause_cost(cl)));
        // Two open-ended date tests on one parameter (`ge` one day, `lt`
        // another) are each broad, but together a narrow window: that
        // window drives, and every clause, the date ones included, is probed.
        let window = DateWindow::of(q, self.now_micros)
            .filter(|_| scope.is_none())
            .filter(|w| best.is_none_or(|(_, cl)| w.cost() < clause_cost(cl)));
        if scope.is_some() || window.is_some() {
            driver = None;
        }
        // A patient's whole record (`$everything`): `current_patient` gives
        // it in page order (`patient_key, type, id`), so it is read as that
        // range rather than as a set of rids that would then need a sort.
        if driver
            .is_some_and(|i| matches!(q.clauses[i].any_of.as_slice(), [Predicate::PatientKey(_)]))
        {
            driver = None;
        }
        if let Some(scope) = &scope {
            self.sql
                .push("FROM (SELECT * FROM current WHERE rid = ANY(ARRAY(");
            self.patient_scope_rids(scope);
            let _ = write!(self.sql.text, ")) OFFSET 0) {c} WHERE ");
        } else if let Some(w) = &window {
            self.sql
                .push("FROM (SELECT * FROM current WHERE rid = ANY(ARRAY(");
            self.date_window(w, q);
            let _ = write!(self.sql.text, ")) OFFSET 0) {c} WHERE ");
        } else if let Some(i) = driver {
            self.sql
                .push("FROM (SELECT * FROM current WHERE rid = ANY(ARRAY(");
            self.clause_rids(&q.clauses[i], q, snapshot)?;
            let _ = write!(self.sql.text, ")) OFFSET 0) {c} WHERE ");
        } else {
            let _ = write!(self.sql.text, "FROM current {c} WHERE ");
        }
        self.conditions(q, c, snapshot, driver)
    }

    /// `NOT deleted`, snapshot, types, then every clause but `skip` (the
    /// row source, already applied) as a probe, ANDed.
    fn conditions(
        &mut self,
        q: &SearchQuery,
        c: &str,
        snapshot: Snapshot,
        skip: Option<usize>,
    ) -> Result<(), StoreError> {
        let _ = write!(self.sql.text, "NOT {c}.deleted");
        match snapshot {
            Snapshot::Unbounded => {}
            Snapshot::Seq(s) => {
                let _ = write!(self.sql.text, " AND {c}.seq <= ");
                self.sql.bind(s);
            }
            Snapshot::Head => {
                let _ = write!(self.sql.text, " AND {c}.seq <= h.snap");
            }
        }
        self.only_types(c, q, true);
        for (i, clause) in q.clauses.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            self.sql.push(" AND ");
            if clause.any_of.is_empty() {
                // An empty disjunction is false.
                self.sql.push("FALSE");
                continue;
            }
            if let Some(ids) = id_list(clause) {
                let _ = write!(self.sql.text, "{c}.id = ANY(");
                self.sql.bind(ids);
                self.sql.push(")");
                continue;
            }
            self.sql.push("(");
            for (j, p) in clause.any_of.iter().enumerate() {
                if j > 0 {
                    self.sql.push(" OR ");
                }
                self.probe(p, c, snapshot)?;
            }
            self.sql.push(")");
        }
        Ok(())
    }

    /// A superset of the rids `scope` can match: patient X's token rows of
    /// the codes, plus every matching reference whose row has another owner
    /// (see [`PatientScope`]).
    fn patient_scope_rids(&mut self, scope: &PatientScope<'_>) {
        let mut first = true;
        for (param, code) in &scope.codes {
            if !first {
                self.sql.push(" UNION ALL ");
            }
            first = false;
            let x = self.alias("pt");
            let _ = write!(
                self.sql.text,
                "SELECT {x}.rid FROM idx_token {x} WHERE {x}.{PLAIN_TOKEN_ROW} AND {x}.patient_key = "
            );
            self.sql.bind(scope.patient.to_owned());
            let _ = write!(self.sql.text, " AND {x}.param = ");
            self.sql.bind((*param).to_owned());
            let _ = write!(self.sql.text, " AND {x}.code = ");
            self.sql.bind((*code).to_owned());
        }
        for reference in &scope.references {
            if !first {
                self.sql.push(" UNION ALL ");
            }
            first = false;
            let x = self.alias("pr");
            let _ = write!(
                self.sql.text,
                "SELECT {x}.rid FROM idx_reference {x} WHERE {x}.param = "
            );
            match *reference {
                PatientReference::Target { param, target_type } => {
                    self.sql.bind(param.to_owned());
                    let _ = write!(self.sql.text, " AND {x}.target_id = ");
                    self.sql.bind(scope.patient.to_owned());
                    if let Some(t) = target_type {
                        let _ = write!(self.sql.text, " AND {x}.target_type = ");
                        self.sql.bind(t.to_owned());
                    }
                }
                PatientReference::Url { param, url } => {
                    self.sql.bind(param.to_owned());
                    let _ = write!(self.sql.text, " AND {x}.url = ");
                    self.sql.bind(url.to_owned());
                }
            }
            let _ = write!(self.sql.text, " AND {x}.patient_key IS DISTINCT FROM ");
            self.sql.bind(scope.patient.to_owned());
        }
    }

    /// The rids of `current` rows matching a (drivable) clause: the union
    /// of each predicate's lookup.
    fn clause_rids(
        &mut self,
        clause: &Clause,
        q: &SearchQuery,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        if let Some(ids) = id_list(clause) {
            let x = self.alias("x");
            let _ = write!(
                self.sql.text,
                "SELECT {x}.rid FROM current {x} WHERE {x}.id = ANY("
            );
            self.sql.bind(ids);
            self.sql.push(")");
            self.only_types(&x, q, true);
            return Ok(());
        }
        for (i, p) in clause.any_of.iter().enumerate() {
            if i > 0 {
                self.sql.push(" UNION ALL ");
            }
            self.predicate_rids(p, q, snapshot)?;
        }
        Ok(())
    }

    /// `SELECT rid …` of the rows one predicate matches, by an index
    /// lookup (only for [`drivable`] predicates).
    fn predicate_rids(
        &mut self,
        p: &Predicate,
        q: &SearchQuery,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        match p {
            Predicate::Id(id) | Predicate::NotId(id) => {
                let x = self.alias("x");
                let op = id_operator(p);
                let _ = write!(
                    self.sql.text,
                    "SELECT {x}.rid FROM current {x} WHERE {x}.id {op} "
                );
                self.sql.bind(id.clone());
                self.only_types(&x, q, true);
            }
            Predicate::PatientKey(k) => {
                let x = self.alias("x");
                let _ = write!(
                    self.sql.text,
                    "SELECT {x}.rid FROM current {x} WHERE {x}.patient_key = "
                );
                self.sql.bind(k.clone());
                self.only_types(&x, q, true);
            }
            Predicate::LastUpdated { prefix, low, high } => {
                let x = self.alias("x");
                let _ = write!(self.sql.text, "SELECT {x}.rid FROM current {x} WHERE TRUE");
                self.only_types(&x, q, true);
                self.sql.push(" AND ");
                let col = format!("{x}.last_updated");
                self.range(&col, &col, *prefix, *low, *high);
            }
            Predicate::Index { param, test } => self.index_subquery(param, test, None)?,
            Predicate::Missing {
                param,
                missing: false,
            } => {
                // The rows of every table holding the parameter.
                for (i, table) in crate::schema::INDEX_TABLES.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(" UNION ALL ");
                    }
                    let _ = write!(self.sql.text, "SELECT rid FROM {table} WHERE param = ");
                    self.sql.bind(param.clone());
                }
            }
            Predicate::Chain {
                param,
                target_type,
                query,
            } => {
                // The targets found first (by their own row source), then
                // the references to them by `(param, target_id)`.
                let r = self.alias("r");
                let t = self.alias("c");
                let mut inner = (**query).clone();
                if inner.resource_types.is_empty() {
                    inner.resource_types = vec![target_type.clone()];
                }
                let _ = write!(
                    self.sql.text,
                    "SELECT {r}.rid FROM idx_reference {r} WHERE {r}.param = "
                );
                self.sql.bind(param.clone());
                let _ = write!(self.sql.text, " AND {r}.target_type = ");
                self.sql.bind(target_type.clone());
                let _ = write!(
                    self.sql.text,
                    " AND {r}.target_id = ANY(ARRAY(SELECT {t}.id "
                );
                self.source_and_conditions(&inner, &t, snapshot)?;
                self.sql.push("))");
            }
            Predicate::Has {
                source_type,
                param,
                query,
            } => {
                // The sources found first, then their references (their own
                // index rows, by primary key), then the targets.
                let s = self.alias("c");
                let found = self.alias("f");
                let r = self.alias("r");
                let t = self.alias("c");
                let mut inner = (**query).clone();
                inner.resource_types = vec![source_type.clone()];
                let _ = write!(self.sql.text, "SELECT {t}.rid FROM (SELECT {s}.rid ");
                self.source_and_conditions(&inner, &s, snapshot)?;
                let _ = write!(
                    self.sql.text,
                    ") {found} CROSS JOIN LATERAL {} {r} \
                     JOIN current {t} ON {t}.type = {r}.target_type AND {t}.id = {r}.target_id \
                     WHERE {r}.param = ",
                    own_rows("idx_reference", &found)
                );
                self.sql.bind(param.clone());
            }
            Predicate::Not { .. } | Predicate::Missing { missing: true, .. } => {
                return Err(StoreError::Other(
                    "a negation cannot be a search's row source".into(),
                ));
            }
        }
        Ok(())
    }

    /// The date window's rids: the rows of `window.param` that may overlap
    /// it, a superset of what the window's date tests match (they are
    /// probed afterwards). Rows spanning at most [`SHORT_SPAN_MICROS`] and
    /// ending at or after `from` start no earlier than `from - SHORT_SPAN`,
    /// so their part is one `idx_date_low` range; longer rows (periods,
    /// year-precision dates) come from the partial index `idx_date_long`.
    /// (The SQLite backend's window, which this mirrors.)
    fn date_window(&mut self, window: &DateWindow, q: &SearchQuery) {
        let (s, l) = (self.alias("w"), self.alias("w"));
        let _ = write!(
            self.sql.text,
            "SELECT {s}.rid FROM idx_date {s} WHERE {s}.param = "
        );
        self.sql.bind(window.param.clone());
        let _ = write!(self.sql.text, " AND {s}.low >= ");
        self.sql.bind(window.from.saturating_sub(SHORT_SPAN_MICROS));
        let _ = write!(self.sql.text, " AND {s}.low <= ");
        self.sql.bind(window.to);
        let _ = write!(self.sql.text, " AND {s}.high >= ");
        self.sql.bind(window.from);
        self.only_types(&s, q, false);
        let _ = write!(
            self.sql.text,
            " UNION ALL SELECT {l}.rid FROM idx_date {l} WHERE {l}.param = "
        );
        self.sql.bind(window.param.clone());
        // Exactly the partial index's condition (a constant, not a bound
        // value), so PostgreSQL can prove the index applies. Written so it
        // cannot overflow: open-ended ranges are stored with i64::MIN/MAX,
        // and `high - low` on them is an error in PostgreSQL.
        let _ = write!(
            self.sql.text,
            " AND {l}.low < {l}.high - {SHORT_SPAN_MICROS} AND {l}.high >= "
        );
        self.sql.bind(window.from);
        let _ = write!(self.sql.text, " AND {l}.low <= ");
        self.sql.bind(window.to);
        self.only_types(&l, q, false);
    }

    /// `AND x.type = $n` (or `IN (…)` for several types when `several`):
    /// the query's types on alias `x` of `current` or an index table.
    fn only_types(&mut self, x: &str, q: &SearchQuery, several: bool) {
        match q.resource_types.as_slice() {
            [] => {}
            [one] => {
                let _ = write!(self.sql.text, " AND {x}.type = ");
                self.sql.bind(one.clone());
            }
            many if several => {
                let _ = write!(self.sql.text, " AND {x}.type IN (");
                for (i, t) in many.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(", ");
                    }
                    self.sql.bind(t.clone());
                }
                self.sql.push(")");
            }
            _ => {}
        }
    }

    /// One predicate tested on the candidate row `c`: its own columns, or
    /// its own index rows. Index rows are read through [`own_rows`] (by
    /// the `(rid, ord)` primary key, every other condition applied
    /// afterwards), inside `EXISTS (… OFFSET 0)`, which PostgreSQL can
    /// neither turn into a join it might reorder nor serve from a
    /// `(param, value)` index: a generic plan, guessing a common code rare,
    /// would otherwise walk every row with that code for each candidate.
    fn probe(&mut self, p: &Predicate, c: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        match p {
            Predicate::Id(id) | Predicate::NotId(id) => {
                let op = id_operator(p);
                let _ = write!(self.sql.text, "{c}.id {op} ");
                self.sql.bind(id.clone());
            }
            Predicate::LastUpdated { prefix, low, high } => {
                let col = format!("{c}.last_updated");
                self.range(&col, &col, *prefix, *low, *high);
            }
            Predicate::PatientKey(k) => {
                let _ = write!(self.sql.text, "{c}.patient_key = ");
                self.sql.bind(k.clone());
            }
            Predicate::Index { param, test } => {
                self.sql.push("EXISTS (");
                self.index_subquery(param, test, Some(c))?;
                self.sql.push(" OFFSET 0)");
            }
            Predicate::Not { param, test } => {
                self.sql.push("NOT EXISTS (");
                self.index_subquery(param, test, Some(c))?;
                self.sql.push(" OFFSET 0)");
            }
            Predicate::Missing { param, missing } => {
                let op = if *missing { "NOT " } else { "" };
                let _ = write!(self.sql.text, "{op}(");
                for (i, table) in crate::schema::INDEX_TABLES.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(" OR ");
                    }
                    let x = self.alias("x");
                    let _ = write!(
                        self.sql.text,
                        "EXISTS (SELECT 1 FROM {} {x} WHERE {x}.param = ",
                        own_rows(table, c)
                    );
                    self.sql.bind(param.clone());
                    self.sql.push(" OFFSET 0)");
                }
                self.sql.push(")");
            }
            Predicate::Chain {
                param,
                target_type,
                query,
            } => {
                // The candidate's references, each target tested.
                let r = self.alias("r");
                let t = self.alias("c");
                let mut inner = (**query).clone();
                if inner.resource_types.is_empty() {
                    inner.resource_types = vec![target_type.clone()];
                }
                let _ = write!(
                    self.sql.text,
                    "EXISTS (SELECT 1 FROM {} {r} \
                     JOIN current {t} ON {t}.type = {r}.target_type AND {t}.id = {r}.target_id \
                     WHERE {r}.param = ",
                    own_rows("idx_reference", c)
                );
                self.sql.bind(param.clone());
                let _ = write!(self.sql.text, " AND {r}.target_type = ");
                self.sql.bind(target_type.clone());
                self.sql.push(" AND ");
                self.conditions(&inner, &t, snapshot, None)?;
                self.sql.push(" OFFSET 0)");
            }
            Predicate::Has {
                source_type,
                param,
                query,
            } => {
                // The references to the candidate (`idx_reference_back`),
                // each source tested.
                let r = self.alias("r");
                let s = self.alias("c");
                let mut inner = (**query).clone();
                inner.resource_types = vec![source_type.clone()];
                let _ = write!(
                    self.sql.text,
                    "EXISTS (SELECT 1 FROM (SELECT * FROM idx_reference \
                     WHERE target_type = {c}.type AND target_id = {c}.id OFFSET 0) {r} \
                     JOIN current {s} ON {s}.rid = {r}.rid WHERE {r}.param = "
                );
                self.sql.bind(param.clone());
                self.sql.push(" AND ");
                self.conditions(&inner, &s, snapshot, None)?;
                self.sql.push(" OFFSET 0)");
            }
        }
        Ok(())
    }

    /// `SELECT x.rid FROM <table> x WHERE x.param = $n AND <test>`, or with
    /// `correlate = Some(c)` `SELECT 1 FROM <c's own rows> x WHERE …` (a
    /// probe; see [`own_rows`]).
    fn index_subquery(
        &mut self,
        param: &str,
        test: &IndexTest,
        correlate: Option<&str>,
    ) -> Result<(), StoreError> {
        if let IndexTest::Composite(parts) = test {
            let k = self.alias("k");
            let mut joins = Vec::with_capacity(parts.len());
            for part in parts {
                let a = self.alias("p");
                joins.push((index_table(part)?, a));
            }
            match correlate {
                Some(c) => {
                    let _ = write!(
                        self.sql.text,
                        "SELECT 1 FROM {} {k}",
                        own_rows("idx_composite", c)
                    );
                }
                None => {
                    let _ = write!(self.sql.text, "SELECT {k}.rid FROM idx_composite {k}");
                }
            }
            for (table, a) in &joins {
                let _ = write!(
                    self.sql.text,
                    " JOIN {table} {a} ON {a}.rid = {k}.rid AND {a}.grp = {k}.ord"
                );
            }
            let _ = write!(self.sql.text, " WHERE {k}.param = ");
            self.sql.bind(param.to_owned());
            for (i, (part, (_, a))) in parts.iter().zip(&joins).enumerate() {
                let _ = write!(self.sql.text, " AND {a}.param = ");
                self.sql.bind(format!("{param}#{i}"));
                self.sql.push(" AND ");
                self.test(part, a)?;
            }
            return Ok(());
        }
        let x = self.alias("x");
        let table = index_table(test)?;
        match correlate {
            Some(c) => {
                let _ = write!(self.sql.text, "SELECT 1 FROM {} {x}", own_rows(table, c));
            }
            None => {
                let _ = write!(self.sql.text, "SELECT {x}.rid FROM {table} {x}");
            }
        }
        let _ = write!(self.sql.text, " WHERE ");
        if states_plain_token_row(test) {
            let _ = write!(self.sql.text, "{x}.{PLAIN_TOKEN_ROW} AND ");
        }
        let _ = write!(self.sql.text, "{x}.param = ");
        self.sql.bind(param.to_owned());
        self.sql.push(" AND ");
        self.test(test, &x)
    }

    /// The condition of one typed test on alias `x` of its table.
    fn test(&mut self, test: &IndexTest, x: &str) -> Result<(), StoreError> {
        match test {
            IndexTest::Token { system, code } => {
                let _ = write!(self.sql.text, "{x}.code = ");
                self.sql.bind(code.clone());
                match system {
                    None => {}
                    Some(None) => {
                        let _ = write!(self.sql.text, " AND {x}.system IS NULL");
                    }
                    Some(Some(s)) => {
                        let _ = write!(self.sql.text, " AND {x}.system = ");
                        self.sql.bind(s.clone());
                    }
                }
            }
            IndexTest::TokenSystem(s) => {
                let _ = write!(self.sql.text, "{x}.system = ");
                self.sql.bind(s.clone());
            }
            IndexTest::TokenText(t) => self.prefix(&format!("{x}.text"), t),
            IndexTest::StringStartsWith(s) => self.string_prefix(x, s),
            // Found by its normalised form's key in `idx_string_key`, then
            // compared as written: a value is only ever `:exact` to a value
            // it also equals normalised.
            IndexTest::StringExact { normalized, exact } => {
                let _ = write!(self.sql.text, "{} = left(", string_key(x));
                self.sql.bind(normalized.clone());
                let _ = write!(self.sql.text, ", {STRING_KEY_CHARS}) AND {x}.exact = ");
                self.sql.bind(exact.clone());
            }
            IndexTest::StringContains(s) => {
                let _ = write!(self.sql.text, "strpos({x}.normalized, ");
                self.sql.bind(s.clone());
                self.sql.push(") > 0");
            }
            IndexTest::Date { prefix, low, high } => {
                self.range(
                    &format!("{x}.low"),
                    &format!("{x}.high"),
                    *prefix,
                    *low,
                    *high,
                );
            }
            IndexTest::Number {
                prefix,
                value,
                low,
                high,
            } => self.number(&format!("{x}.value"), *prefix, *value, *low, *high),
            IndexTest::Quantity {
                prefix,
                value,
                low,
                high,
                system,
                code,
            } => {
                self.number(&format!("{x}.value"), *prefix, *value, *low, *high);
                match (system, code) {
                    (Some(s), Some(cd)) => {
                        let _ = write!(self.sql.text, " AND {x}.system = ");
                        self.sql.bind(s.clone());
                        let _ = write!(self.sql.text, " AND {x}.code = ");
                        self.sql.bind(cd.clone());
                    }
                    (Some(s), None) => {
                        let _ = write!(self.sql.text, " AND {x}.system = ");
                        self.sql.bind(s.clone());
                    }
                    // Without a system the code may match the code or the unit.
                    (None, Some(cd)) => {
                        let _ = write!(self.sql.text, " AND ({x}.code = ");
                        self.sql.bind(cd.clone());
                        let _ = write!(self.sql.text, " OR {x}.unit = ");
                        self.sql.bind(cd.clone());
                        self.sql.push(")");
                    }
                    (None, None) => {}
                }
            }
            IndexTest::Reference { target_type, id } => {
                let _ = write!(self.sql.text, "{x}.target_id = ");
                self.sql.bind(id.clone());
                if let Some(t) = target_type {
                    let _ = write!(self.sql.text, " AND {x}.target_type = ");
                    self.sql.bind(t.clone());
                }
            }
            IndexTest::ReferenceUrl(u) => {
                let _ = write!(self.sql.text, "{x}.url = ");
                self.sql.bind(u.clone());
            }
            IndexTest::Uri(u) => {
                let _ = write!(self.sql.text, "{x}.uri = ");
                self.sql.bind(u.clone());
            }
            IndexTest::UriBelow(u) => self.prefix(&format!("{x}.uri"), u),
            IndexTest::UriAbove(u) => {
                // Stored URIs that are a prefix of the search value: enumerate
                // the value's path prefixes so this is an IN lookup.
                let mut prefixes: Vec<&str> = u
                    .char_indices()
                    .filter(|(_, ch)| *ch == '/')
                    .map(|(i, _)| &u[..i])
                    .filter(|p| !p.is_empty() && !p.ends_with('/') && !p.ends_with(':'))
                    .collect();
                prefixes.push(u);
                let _ = write!(self.sql.text, "{x}.uri IN (");
                for (i, p) in prefixes.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(", ");
                    }
                    self.sql.bind((*p).to_owned());
                }
                self.sql.push(")");
            }
            IndexTest::Composite(_) => {
                return Err(StoreError::Unsupported(
                    "a composite inside a composite".into(),
                ));
            }
        }
        Ok(())
    }

    /// Normalised string values starting with `p`: a range of
    /// `idx_string_key`, and, for a prefix longer than the key, the rest
    /// checked on the whole value.
    fn string_prefix(&mut self, x: &str, p: &str) {
        let key: String = p.chars().take(STRING_KEY_CHARS).collect();
        self.prefix(&string_key(x), &key);
        if key.len() < p.len() {
            let _ = write!(self.sql.text, " AND starts_with({x}.normalized, ");
            self.sql.bind(p.to_owned());
            self.sql.push(")");
        }
    }

    /// `col >= p AND col < p‖U+10FFFF`: a prefix match an index can serve
    /// (the columns are `COLLATE "C"`, so this is byte order).
    fn prefix(&mut self, col: &str, p: &str) {
        let _ = write!(self.sql.text, "({col} >= ");
        self.sql.bind(p.to_owned());
        let _ = write!(self.sql.text, " AND {col} < ");
        self.sql.bind(prefix_upper(p));
        self.sql.push(")");
    }

    /// Stored range `[lo_col, hi_col]` against the search range `[l, h]`.
    fn range(&mut self, lo_col: &str, hi_col: &str, prefix: Prefix, l: i64, h: i64) {
        let s = &mut self.sql;
        match prefix {
            Prefix::Eq | Prefix::Ne => {
                if prefix == Prefix::Ne {
                    s.push("NOT ");
                }
                let _ = write!(s.text, "({lo_col} >= ");
                s.bind(l);
                let _ = write!(s.text, " AND {hi_col} <= ");
                s.bind(h);
                s.push(")");
            }
            Prefix::Gt => {
                let _ = write!(s.text, "{hi_col} > ");
                s.bind(h);
            }
            Prefix::Lt => {
                let _ = write!(s.text, "{lo_col} < ");
                s.bind(l);
            }
            Prefix::Ge => {
                let _ = write!(s.text, "({hi_col} > ");
                s.bind(h);
                let _ = write!(s.text, " OR ({lo_col} >= ");
                s.bind(l);
                let _ = write!(s.text, " AND {hi_col} <= ");
                s.bind(h);
                s.push("))");
            }
            Prefix::Le => {
                let _ = write!(s.text, "({lo_col} < ");
                s.bind(l);
                let _ = write!(s.text, " OR ({lo_col} >= ");
                s.bind(l);
                let _ = write!(s.text, " AND {hi_col} <= ");
                s.bind(h);
                s.push("))");
            }
            Prefix::Sa => {
                let _ = write!(s.text, "{lo_col} > ");
                s.bind(h);
            }
            Prefix::Eb => {
                let _ = write!(s.text, "{hi_col} < ");
                s.bind(l);
            }
            Prefix::Ap => {
                let now = self.now_micros;
                let dist = now
                    .saturating_sub(l)
                    .unsigned_abs()
                    .max(now.saturating_sub(h).unsigned_abs());
                let delta = i64::try_from(dist / 10).unwrap_or(i64::MAX);
                let _ = write!(s.text, "({lo_col} <= ");
                s.bind(h.saturating_add(delta));
                let _ = write!(s.text, " AND {hi_col} >= ");
                s.bind(l.saturating_sub(delta));
                s.push(")");
            }
        }
    }

    /// A stored point `col` against a search value `v` with implicit range `[l, h]`.
    fn number(&mut self, col: &str, prefix: Prefix, v: f64, l: f64, h: f64) {
        let s = &mut self.sql;
        let cmp = |s: &mut Sql, op: &str, x: f64| {
            let _ = write!(s.text, "{col} {op} ");
            s.bind(x);
        };
        match prefix {
            Prefix::Eq | Prefix::Ne => {
                if prefix == Prefix::Ne {
                    s.push("NOT ");
                }
                let _ = write!(s.text, "({col} BETWEEN ");
                s.bind(l);
                s.push(" AND ");
                s.bind(h);
                s.push(")");
            }
            Prefix::Gt => cmp(s, ">", v),
            Prefix::Lt => cmp(s, "<", v),
            Prefix::Ge => cmp(s, ">=", v),
            Prefix::Le => cmp(s, "<=", v),
            Prefix::Sa => cmp(s, ">", h),
            Prefix::Eb => cmp(s, "<", l),
            Prefix::Ap => {
                let d = (v * 0.1).abs();
                let _ = write!(s.text, "({col} BETWEEN ");
                s.bind((v - d).min(l));
                s.push(" AND ");
                s.bind((v + d).max(h));
                s.push(")");
            }
        }
    }

    fn order_by(&mut self, sort: &[SortKey]) -> Result<(), StoreError> {
        if sort.is_empty() {
            // `(type, id)` is the `current` unique index order: an unsorted
            // type search can walk it and stop at LIMIT.
            self.sql.push(" ORDER BY c.type, c.id");
            return Ok(());
        }
        self.sql.push(" ORDER BY ");
        for (i, key) in sort.iter().enumerate() {
            if i > 0 {
                self.sql.push(", ");
            }
            match key {
                SortKey::Id { descending } => {
                    self.sql.push("c.id");
                    self.sql.push(dir(*descending));
                }
                SortKey::LastUpdated { descending } => {
                    self.sql.push("c.last_updated");
                    self.sql.push(dir(*descending));
                }
                SortKey::Param { param, descending } => {
                    self.sort_values(param, *descending);
                }
            }
        }
        self.sql.push(", c.id, c.type");
        Ok(())
    }

    /// The values a resource sorts on for `param`, whatever the param's type.
    ///
    /// SQLite can COALESCE values of every type into one expression;
    /// PostgreSQL cannot, so there is one expression per value type (text,
    /// instant, real). A parameter lives in exactly one table, so for any
    /// one parameter at most one of the three is ever non-NULL and ordering
    /// by all three, each `NULLS LAST`, is ordering by that one with
    /// resources lacking a value last, as on SQLite.
    fn sort_values(&mut self, param: &str, descending: bool) {
        let agg = if descending { "max" } else { "min" };
        let date_col = if descending { "high" } else { "low" };
        let groups: [&[(&str, &str)]; 3] = [
            &[
                ("idx_string", "normalized"),
                ("idx_token", "code"),
                ("idx_reference", "url"),
                ("idx_uri", "uri"),
            ],
            &[("idx_date", date_col)],
            &[("idx_number", "value"), ("idx_quantity", "value")],
        ];
        for (g, sources) in groups.iter().enumerate() {
            if g > 0 {
                self.sql.push(", ");
            }
            self.sql.push("COALESCE(");
            for (i, (table, col)) in sources.iter().enumerate() {
                if i > 0 {
                    self.sql.push(", ");
                }
                let a = self.alias("s");
                let _ = write!(
                    self.sql.text,
                    "(SELECT {agg}({a}.{col}) FROM {table} {a} WHERE {a}.rid = c.rid AND {a}.param = "
                );
                self.sql.bind(param.to_owned());
                self.sql.push(")");
            }
            self.sql.push(")");
            self.sql.push(dir(descending));
            self.sql.push(" NULLS LAST");
        }
    }
}

/// The index rows of the resource `c` in `table`, as a subquery that
/// reads them by the `(rid, ord)` primary key alone: `OFFSET 0` keeps
/// PostgreSQL from pushing the caller's conditions into it (and serving
/// them from a `(param, value)` index instead).
fn own_rows(table: &str, c: &str) -> String {
    format!("(SELECT * FROM {table} WHERE rid = {c}.rid OFFSET 0)")
}

/// Whether a clause can be a search's row source: every predicate in it
/// is a lookup (negations and `:missing=true` can only be tested).
fn drivable(clause: &Clause) -> bool {
    !clause.any_of.is_empty()
        && clause.any_of.iter().all(|p| {
            !matches!(
                p,
                Predicate::Not { .. } | Predicate::Missing { missing: true, .. }
            )
        })
}

fn dir(descending: bool) -> &'static str {
    if descending { " DESC" } else { " ASC" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carelayer_store::Clause;

    #[test]
    fn user_values_are_bound_not_spliced() {
        let q = SearchQuery {
            resource_types: vec!["Patient".into()],
            clauses: vec![Clause {
                any_of: vec![Predicate::Index {
                    param: "name'; DROP TABLE current; --".into(),
                    test: IndexTest::StringStartsWith("o'brien".into()),
                }],
            }],
            count: 10,
            ..SearchQuery::default()
        };
        let sql = build(&q, Snapshot::Seq(5), Shape::Page, 0).unwrap_or_default();
        assert!(!sql.text.contains("brien"));
        assert!(!sql.text.contains("DROP"));
        assert_eq!(sql.text.matches('$').count(), sql.params.len());
        assert_eq!(sql.types.len(), sql.params.len());
        let one = build_search(&q, 0).unwrap_or_default();
        assert!(!one.text.contains("brien"));
        assert_eq!(one.text.matches('$').count(), one.params.len());
    }

    /// A clause of `_id`s is one statement whatever the number of ids, as
    /// the row source and as a probe (of the candidate itself, or of a
    /// chain's target).
    #[test]
    fn id_lists_have_one_statement_text_for_any_count() {
        let ids = |n: usize| Clause {
            any_of: (0..n).map(|i| Predicate::Id(format!("o{i}"))).collect(),
        };
        // 0: the ids alone (the row source); 1: beside an `_id` that
        // drives (a probe); 2: inside a chain that is probed.
        let of = |n: usize, shape: u8| {
            let mut clauses = Vec::new();
            if shape > 0 {
                clauses.push(Clause {
                    any_of: vec![Predicate::Id("obs".into())],
                });
            }
            clauses.push(if shape == 2 {
                Clause {
                    any_of: vec![Predicate::Chain {
                        param: "subject".into(),
                        target_type: "Patient".into(),
                        query: Box::new(SearchQuery {
                            resource_types: vec!["Patient".into()],
                            clauses: vec![ids(n)],
                            ..SearchQuery::default()
                        }),
                    }],
                }
            } else {
                ids(n)
            });
            let q = SearchQuery {
                resource_types: vec!["Observation".into()],
                clauses,
                count: 10,
                ..SearchQuery::default()
            };
            build_search(&q, 0).unwrap_or_default()
        };
        for shape in 0..3 {
            let (two, nine) = (of(2, shape), of(9, shape));
            assert_eq!(two.text, nine.text, "shape {shape}");
            assert!(two.text.contains(".id = ANY($"), "{}", two.text);
            assert_eq!(two.types, nine.types);
        }
    }
}
