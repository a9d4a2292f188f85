//! `SearchQuery` → SQL over the index tables.
//!
//! Every predicate becomes `c.rid IN (SELECT rid FROM idx_x WHERE param = ? AND
//! …)` (or `NOT IN`) against the `current` table aliased `c`, so SQLite drives
//! the query from the index tables' `(param, value)` b-trees and only touches
//! `current` by rowid. User input only ever reaches SQLite as bound
//! parameters: the text built here contains nothing but fixed SQL, aliases and
//! `?` placeholders.
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
use carelayer_store::{Clause, IndexTest, Predicate, Prefix, SearchQuery, SortKey, StoreError};
use rusqlite::types::Value;

/// SQL text plus its bound values, in placeholder order.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub text: String,
    pub params: Vec<Value>,
}

impl Sql {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    /// Append a placeholder bound to `v`.
    fn bind(&mut self, v: impl Into<Value>) {
        self.text.push('?');
        self.params.push(v.into());
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

/// The full statement for `query` at `snapshot` (`None`: no snapshot bound,
/// used inside the writer's transaction).
pub(crate) fn build(
    query: &SearchQuery,
    snapshot: Option<i64>,
    shape: Shape,
    now_micros: i64,
) -> Result<Sql, StoreError> {
    let mut b = Builder {
        sql: Sql::default(),
        next_alias: 0,
        now_micros,
    };
    match shape {
        Shape::Page => {
            b.sql.push("SELECT ");
            b.sql.push(CURRENT_COLUMNS);
            b.sql.push(" FROM current c WHERE ");
        }
        Shape::Count => b.sql.push("SELECT count(*) FROM current c WHERE "),
        Shape::Ids => b.sql.push("SELECT c.id FROM current c WHERE "),
    }
    b.where_for(query, "c", snapshot)?;
    if shape == Shape::Page {
        b.order_by(&query.sort)?;
        // Literals, not parameters: SQLite reads a value bound to `LIMIT ?`
        // while planning and then marks the statement stale whenever it is
        // bound again, so a cached page statement was re-parsed and
        // re-planned on every execution (a fifth of all CPU under a read
        // load that loads patients' facts: docs/benchmarks.md, session 5).
        // A page size and offset are numbers we made, never caller text.
        let _ = write!(
            b.sql.text,
            " LIMIT {} OFFSET {}",
            i64::try_from(query.count).unwrap_or(i64::MAX),
            i64::try_from(query.offset).unwrap_or(i64::MAX)
        );
    }
    Ok(b.sql)
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
    fn alias(&mut self, stem: &str) -> String {
        self.next_alias += 1;
        format!("{stem}{}", self.next_alias)
    }

    /// `deleted = 0`, snapshot, types, then every clause, ANDed.
    fn where_for(
        &mut self,
        q: &SearchQuery,
        c: &str,
        snapshot: Option<i64>,
    ) -> Result<(), StoreError> {
        let _ = write!(self.sql.text, "{c}.deleted = 0");
        if let Some(s) = snapshot {
            let _ = write!(self.sql.text, " AND {c}.seq <= ");
            self.sql.bind(s);
        }
        match q.resource_types.as_slice() {
            [] => {}
            [one] => {
                let _ = write!(self.sql.text, " AND {c}.type = ");
                self.sql.bind(one.clone());
            }
            many => {
                let _ = write!(self.sql.text, " AND {c}.type IN (");
                for (i, t) in many.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(", ");
                    }
                    self.sql.bind(t.clone());
                }
                self.sql.push(")");
            }
        }
        // The most selective clause drives (`rid IN (index lookup)`); the
        // others are probed per candidate row (`EXISTS … WHERE rid = c.rid`),
        // so a broad clause (a common code) is never materialised whole.
        let best = q
            .clauses
            .iter()
            .enumerate()
            .min_by_key(|(_, cl)| clause_cost(cl));
        let mut driver = best.map(|(i, _)| i);
        // A patient's resources with a code: that patient's rows of the code
        // drive (see `PatientScope`), and every clause is probed.
        if let Some(scope) = PatientScope::driving(q, best.map(|(_, cl)| clause_cost(cl))) {
            driver = None;
            self.sql.push(" AND ");
            self.patient_scope(&scope, c);
        } else if let Some(window) = DateWindow::of(q, self.now_micros)
            && best.is_none_or(|(_, cl)| window.cost() < clause_cost(cl))
        {
            // Two open-ended date tests on one parameter (`ge` one day, `lt`
            // another) are each broad, but together a narrow window: that
            // window drives, and every clause, the date ones included, is
            // probed.
            driver = None;
            self.sql.push(" AND ");
            self.date_window(&window, c, q);
        }
        for (i, clause) in q.clauses.iter().enumerate() {
            self.sql.push(" AND ");
            self.clause(clause, c, snapshot, Some(i) != driver)?;
        }
        Ok(())
    }

    /// `c.rid IN` a superset of the resources `scope` can match: patient
    /// X's token rows of the codes, plus (for a reference clause) every
    /// resource whose reference matches but whose owner is not X. Every
    /// clause is probed afterwards.
    fn patient_scope(&mut self, scope: &PatientScope<'_>, c: &str) {
        let _ = write!(self.sql.text, "{c}.rid IN (");
        for (i, (param, code)) in scope.codes.iter().enumerate() {
            if i > 0 {
                self.sql.push(" UNION ALL ");
            }
            let _ = write!(
                self.sql.text,
                "SELECT pt.rid FROM idx_token AS pt \
                 WHERE pt.{PLAIN_TOKEN_ROW} AND pt.patient_key = "
            );
            self.sql.bind(scope.patient.to_owned());
            self.sql.push(" AND pt.param = ");
            self.sql.bind((*param).to_owned());
            self.sql.push(" AND pt.code = ");
            self.sql.bind((*code).to_owned());
        }
        for reference in &scope.references {
            match *reference {
                PatientReference::Target { param, target_type } => {
                    self.sql.push(
                        " UNION ALL SELECT pr.rid FROM idx_reference AS pr \
                         WHERE pr.param = ",
                    );
                    self.sql.bind(param.to_owned());
                    self.sql.push(" AND pr.target_id = ");
                    self.sql.bind(scope.patient.to_owned());
                    if let Some(t) = target_type {
                        self.sql.push(" AND pr.target_type = ");
                        self.sql.bind(t.to_owned());
                    }
                }
                PatientReference::Url { param, url } => {
                    self.sql.push(
                        " UNION ALL SELECT pr.rid FROM idx_reference AS pr \
                         WHERE pr.param = ",
                    );
                    self.sql.bind(param.to_owned());
                    self.sql.push(" AND pr.url = ");
                    self.sql.bind(url.to_owned());
                }
            }
            self.sql.push(" AND pr.patient_key IS NOT ");
            self.sql.bind(scope.patient.to_owned());
        }
        self.sql.push(")");
    }

    fn clause(
        &mut self,
        clause: &Clause,
        c: &str,
        snapshot: Option<i64>,
        probe: bool,
    ) -> Result<(), StoreError> {
        if clause.any_of.is_empty() {
            // An empty disjunction is false.
            self.sql.push("0");
            return Ok(());
        }
        self.sql.push("(");
        for (i, p) in clause.any_of.iter().enumerate() {
            if i > 0 {
                self.sql.push(" OR ");
            }
            self.predicate(p, c, snapshot, probe)?;
        }
        self.sql.push(")");
        Ok(())
    }

    /// `c.rid IN` the rows of `window.param` that may overlap the window: a
    /// superset of what the window's date tests match (they are probed
    /// afterwards). Rows spanning at most [`SHORT_SPAN_MICROS`] and ending
    /// at or after `from` start no earlier than `from - SHORT_SPAN`, so
    /// their part is one `idx_date_low` range; longer rows (periods,
    /// year-precision dates) come from the partial index `idx_date_long`.
    fn date_window(&mut self, window: &DateWindow, c: &str, q: &SearchQuery) {
        let (s, l) = (self.alias("w"), self.alias("w"));
        let _ = write!(
            self.sql.text,
            "{c}.rid IN (SELECT {s}.rid FROM idx_date {s} WHERE {s}.param = "
        );
        self.sql.bind(window.param.clone());
        let _ = write!(self.sql.text, " AND {s}.low >= ");
        self.sql.bind(window.from.saturating_sub(SHORT_SPAN_MICROS));
        let _ = write!(self.sql.text, " AND {s}.low <= ");
        self.sql.bind(window.to);
        let _ = write!(self.sql.text, " AND {s}.high >= ");
        self.sql.bind(window.from);
        self.only_types(&s, q);
        let _ = write!(
            self.sql.text,
            " UNION ALL SELECT {l}.rid FROM idx_date {l} WHERE {l}.param = "
        );
        self.sql.bind(window.param.clone());
        // Exactly the partial index's condition, so SQLite may use it.
        let _ = write!(
            self.sql.text,
            " AND {l}.high - {l}.low > {SHORT_SPAN_MICROS} AND {l}.high >= "
        );
        self.sql.bind(window.from);
        let _ = write!(self.sql.text, " AND {l}.low <= ");
        self.sql.bind(window.to);
        self.only_types(&l, q);
        self.sql.push(")");
    }

    /// `AND x.type = ?` when the search is over one type (index rows of
    /// other types sharing the parameter name never reach `current`).
    fn only_types(&mut self, x: &str, q: &SearchQuery) {
        if let [one] = q.resource_types.as_slice() {
            let _ = write!(self.sql.text, " AND {x}.type = ");
            self.sql.bind(one.clone());
        }
    }

    /// One predicate on alias `c`; with `probe` index tests are correlated
    /// `EXISTS` lookups by `rid` instead of `rid IN (…)` lists.
    fn predicate(
        &mut self,
        p: &Predicate,
        c: &str,
        snapshot: Option<i64>,
        probe: bool,
    ) -> Result<(), StoreError> {
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
            Predicate::Index { param, test } if probe => {
                self.sql.push("EXISTS (");
                self.index_subquery(param, test, Some(c))?;
                self.sql.push(")");
            }
            Predicate::Index { param, test } => {
                let _ = write!(self.sql.text, "{c}.rid IN (");
                self.index_subquery(param, test, None)?;
                self.sql.push(")");
            }
            Predicate::Not { param, test } => {
                // Always a probe: a negation cannot drive.
                self.sql.push("NOT EXISTS (");
                self.index_subquery(param, test, Some(c))?;
                self.sql.push(")");
            }
            Predicate::Missing {
                param,
                missing: false,
            } if !probe => {
                // Driving: the rows of every table holding the parameter.
                let _ = write!(self.sql.text, "{c}.rid IN (");
                for (i, table) in crate::schema::INDEX_TABLES.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(" UNION ALL ");
                    }
                    let _ = write!(self.sql.text, "SELECT rid FROM {table} WHERE param = ");
                    self.sql.bind(param.clone());
                }
                self.sql.push(")");
            }
            Predicate::Missing { param, missing } => {
                // A probe per index table of the row's own rows (primary key
                // `(rid, ord)`), never a scan of every row of the parameter.
                let op = if *missing { "NOT " } else { "" };
                let _ = write!(self.sql.text, "{op}(");
                for (i, table) in crate::schema::INDEX_TABLES.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(" OR ");
                    }
                    let _ = write!(
                        self.sql.text,
                        "EXISTS (SELECT 1 FROM {table} WHERE rid = {c}.rid AND param = "
                    );
                    self.sql.bind(param.clone());
                    self.sql.push(")");
                }
                self.sql.push(")");
            }
            Predicate::Chain {
                param,
                target_type,
                query,
            } => {
                let r = self.alias("r");
                let t = self.alias("c");
                let _ = write!(
                    self.sql.text,
                    "{c}.rid IN (SELECT {r}.rid FROM idx_reference {r} WHERE {r}.param = "
                );
                self.sql.bind(param.clone());
                let _ = write!(self.sql.text, " AND {r}.target_type = ");
                self.sql.bind(target_type.clone());
                let _ = write!(
                    self.sql.text,
                    " AND {r}.target_id IN (SELECT {t}.id FROM current {t} WHERE "
                );
                let mut inner = (**query).clone();
                if inner.resource_types.is_empty() {
                    inner.resource_types = vec![target_type.clone()];
                }
                self.where_for(&inner, &t, snapshot)?;
                self.sql.push("))");
            }
            Predicate::Has {
                source_type,
                param,
                query,
            } => {
                let r = self.alias("r");
                let s = self.alias("c");
                let t = self.alias("c");
                let _ = write!(
                    self.sql.text,
                    "{c}.rid IN (SELECT {t}.rid FROM idx_reference {r} \
                     JOIN current {s} ON {s}.rid = {r}.rid \
                     JOIN current {t} ON {t}.type = {r}.target_type AND {t}.id = {r}.target_id \
                     WHERE {r}.param = "
                );
                self.sql.bind(param.clone());
                let _ = write!(self.sql.text, " AND {r}.type = ");
                self.sql.bind(source_type.clone());
                self.sql.push(" AND ");
                let mut inner = (**query).clone();
                inner.resource_types = vec![source_type.clone()];
                self.where_for(&inner, &s, snapshot)?;
                self.sql.push(")");
            }
        }
        Ok(())
    }

    /// `SELECT rid FROM <table> x WHERE x.param = ? AND <test>`, or with
    /// `correlate = Some(c)` `SELECT 1 … WHERE x.rid = c.rid AND …` (a probe).
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
            let _ = write!(self.sql.text, "SELECT {k}.rid FROM idx_composite {k}");
            for (table, a) in &joins {
                let _ = write!(self.sql.text, " JOIN {table} {a} ON {a}.grp = {k}.grp");
            }
            self.sql.push(" WHERE ");
            if let Some(c) = correlate {
                let _ = write!(self.sql.text, "{k}.rid = {c}.rid AND ");
            }
            let _ = write!(self.sql.text, "{k}.param = ");
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
        let _ = write!(self.sql.text, "SELECT {x}.rid FROM {table} {x} WHERE ");
        if let Some(c) = correlate {
            let _ = write!(self.sql.text, "{x}.rid = {c}.rid AND ");
        }
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
            IndexTest::StringStartsWith(s) => self.prefix(&format!("{x}.normalized"), s),
            IndexTest::StringExact { normalized, exact } => {
                let _ = write!(self.sql.text, "{x}.normalized = ");
                self.sql.bind(normalized.clone());
                let _ = write!(self.sql.text, " AND {x}.exact = ");
                self.sql.bind(exact.clone());
            }
            IndexTest::StringContains(s) => {
                let _ = write!(self.sql.text, "instr({x}.normalized, ");
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

    /// `col >= p AND col < p‖U+10FFFF`: a prefix match an index can serve.
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
            // `(type, id)` is the `current_key` index order: an unsorted type
            // search walks it and stops at LIMIT.
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
                    // Missing values last in either direction.
                    self.sort_value(param, *descending);
                    self.sql.push(" IS NULL, ");
                    self.sort_value(param, *descending);
                    self.sql.push(dir(*descending));
                }
            }
        }
        self.sql.push(", c.id, c.type");
        Ok(())
    }

    /// The value a resource sorts on for `param`, whatever the param's type
    /// (it lives in exactly one table; the others yield NULL).
    fn sort_value(&mut self, param: &str, descending: bool) {
        let agg = if descending { "max" } else { "min" };
        let date_col = if descending { "high" } else { "low" };
        let sources: [(&str, &str); 7] = [
            ("idx_string", "normalized"),
            ("idx_date", date_col),
            ("idx_token", "code"),
            ("idx_number", "value"),
            ("idx_quantity", "value"),
            ("idx_reference", "url"),
            ("idx_uri", "uri"),
        ];
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
    }
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
        let sql = build(&q, Some(5), Shape::Page, 0).unwrap_or_default();
        assert!(!sql.text.contains("brien"));
        assert!(!sql.text.contains("DROP"));
        assert_eq!(sql.text.matches('?').count(), sql.params.len());
    }
}
