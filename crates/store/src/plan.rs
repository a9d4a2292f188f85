//! Backend-neutral search planning, shared by both backends so they drive
//! a search from the same clause.
//!
//! - [`clause_cost`]: a static guess of how selective a clause is;
//! - [`DateWindow`]: a closed date window implied by a query's date tests,
//!   and its cost on the same scale;
//! - [`SHORT_SPAN_MICROS`]: where a stored date range counts as long (the
//!   backends index long ranges again, in `idx_date_long`);
//! - [`index_table`]: the index table that holds a test's values (both
//!   schemas name them alike).

use crate::{Clause, IndexTest, Predicate, Prefix, SearchQuery, StoreError};

/// Stored date ranges spanning more than this (µs; 32 days: a month-precision
/// date and anything shorter is "short") are indexed again, in each backend's
/// partial index `idx_date_long`, which a [`DateWindow`] reads for them.
/// The indexes' conditions spell the constant out.
pub const SHORT_SPAN_MICROS: i64 = 32 * 24 * 3600 * 1_000_000;

/// A closed window `[from, to]` that every row matching the query's date
/// tests on `param` overlaps: each test implies `high >= from` or
/// `low <= to` (`implied_window` gives each prefix's), and ANDed clauses
/// narrow the window.
#[derive(Debug, Clone, PartialEq)]
pub struct DateWindow {
    pub param: String,
    pub from: i64,
    pub to: i64,
}

impl DateWindow {
    /// The narrowest closed window the query's single-test date clauses
    /// give, if any parameter has both ends.
    #[must_use]
    pub fn of(q: &SearchQuery, now: i64) -> Option<Self> {
        let mut bounds: Vec<(&str, Option<i64>, Option<i64>)> = Vec::new();
        for clause in &q.clauses {
            let [
                Predicate::Index {
                    param,
                    test: IndexTest::Date { prefix, low, high },
                },
            ] = clause.any_of.as_slice()
            else {
                continue;
            };
            let (from, to) = implied_window(*prefix, *low, *high, now);
            match bounds.iter_mut().find(|(p, _, _)| *p == param.as_str()) {
                Some((_, f, t)) => {
                    *f = max_opt(*f, from);
                    *t = min_opt(*t, to);
                }
                None => bounds.push((param, from, to)),
            }
        }
        bounds
            .into_iter()
            .filter_map(|(param, from, to)| {
                Some(Self {
                    param: param.to_owned(),
                    from: from?,
                    to: to?,
                })
            })
            .min_by_key(|w| w.to.saturating_sub(w.from))
    }

    /// Comparable with [`clause_cost`]: up to about a quarter of a year is
    /// narrower than a shared code; wider is still better than one
    /// open-ended date test.
    #[must_use]
    pub fn cost(&self) -> u8 {
        const QUARTER: i64 = 92 * 24 * 3600 * 1_000_000;
        if self.to.saturating_sub(self.from) <= QUARTER {
            3
        } else {
            6
        }
    }
}

/// What one date test implies about a matching row `[L, H]`: `H >= from`
/// and/or `L <= to` (`None`: no bound on that side).
fn implied_window(prefix: Prefix, l: i64, h: i64, now: i64) -> (Option<i64>, Option<i64>) {
    match prefix {
        // L >= l ∧ H <= h, and L <= H.
        Prefix::Eq => (Some(l), Some(h)),
        Prefix::Ne => (None, None),
        // H > h; H > h ∨ (L >= l ∧ H <= h) ⇒ H >= l; L > h ⇒ H >= h.
        Prefix::Gt | Prefix::Sa => (Some(h), None),
        Prefix::Ge => (Some(l), None),
        // L < l; L < l ∨ (L >= l ∧ H <= h) ⇒ L <= h; H < l ⇒ L <= l.
        Prefix::Lt | Prefix::Eb => (None, Some(l)),
        Prefix::Le => (None, Some(h)),
        // The same widening as the `ap` test itself.
        Prefix::Ap => {
            let dist = now
                .saturating_sub(l)
                .unsigned_abs()
                .max(now.saturating_sub(h).unsigned_abs());
            let delta = i64::try_from(dist / 10).unwrap_or(i64::MAX);
            (Some(l.saturating_sub(delta)), Some(h.saturating_add(delta)))
        }
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) | (None, x) => x,
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) | (None, x) => x,
    }
}

/// A static guess of how many rows a clause matches (lower is fewer), used
/// to pick the clause that drives a query. Equality lookups on identifying
/// values beat references, which beat codes (a code is shared by many
/// resources), which beat ranges and prefixes; negations never drive.
#[must_use]
pub fn clause_cost(clause: &Clause) -> u8 {
    clause.any_of.iter().map(predicate_cost).max().unwrap_or(0)
}

fn query_cost(q: &SearchQuery) -> u8 {
    q.clauses.iter().map(clause_cost).min().unwrap_or(8)
}

fn predicate_cost(p: &Predicate) -> u8 {
    match p {
        Predicate::Id(_) => 0,
        Predicate::NotId(_) => 10,
        Predicate::PatientKey(_) => 3,
        Predicate::Index { param, test } => match test {
            IndexTest::Token { .. } if param == "identifier" || param.ends_with(":identifier") => 1,
            IndexTest::StringExact { .. } | IndexTest::ReferenceUrl(_) | IndexTest::Uri(_) => 2,
            IndexTest::Reference { .. } => 2,
            IndexTest::Token { .. } | IndexTest::Composite(_) => 4,
            IndexTest::StringStartsWith(s) if s.chars().count() >= 3 => 5,
            IndexTest::UriAbove(_) => 5,
            IndexTest::Date { .. }
            | IndexTest::Number { .. }
            | IndexTest::Quantity { .. }
            | IndexTest::StringStartsWith(_)
            | IndexTest::TokenText(_)
            | IndexTest::TokenSystem(_)
            | IndexTest::UriBelow(_) => 7,
            IndexTest::StringContains(_) => 9,
        },
        // A chain is as selective as its inner query (plus a join).
        Predicate::Chain { query, .. } => query_cost(query).saturating_add(1).min(6),
        Predicate::Has { query, .. } => query_cost(query).saturating_add(2).min(7),
        Predicate::LastUpdated { .. } => 8,
        Predicate::Missing { .. } | Predicate::Not { .. } => 10,
    }
}

/// How both backends compare `current.id` for an `_id` test: `<>` for
/// [`Predicate::NotId`] (`_id:not`), `=` for [`Predicate::Id`].
#[must_use]
pub fn id_operator(p: &Predicate) -> &'static str {
    if matches!(p, Predicate::NotId(_)) {
        "<>"
    } else {
        "="
    }
}

/// The term both backends add to a search of a parameter's own token rows
/// by system or display text, and to a patient's rows of a code
/// (`{alias}.grp IS NULL`), so it may use the token indexes that leave out
/// the parts of composite values.
///
/// Why: a composite value (`code-value-quantity`, …) is also written as
/// one row per part under `param#i` with its `grp`, and about a third of
/// all token rows are such parts. A composite search joins its parts by
/// `grp` and finds them by `(param, code, system)`, so `idx_token_system`,
/// `idx_token_text` and `idx_token_patient` hold only rows with no `grp`
/// (partial indexes); a database may use a partial index only for a query
/// that states its condition. See [`states_plain_token_row`] for where it
/// is left out.
pub const PLAIN_TOKEN_ROW: &str = "grp IS NULL";

/// Whether a search of a parameter's own rows by `test` states
/// [`PLAIN_TOKEN_ROW`]: only the tests the partial indexes answer (by
/// system, by display text). A test by code is answered by
/// `idx_token_code`, which holds the composite parts too; the parts' own
/// `param#i` names keep them out already, and stating `grp` there would
/// cost every row found a lookup of its table row (on SQLite the index
/// covers the search only without it).
#[must_use]
pub fn states_plain_token_row(test: &IndexTest) -> bool {
    matches!(test, IndexTest::TokenSystem(_) | IndexTest::TokenText(_))
}

/// The index table holding the values a test looks at.
///
/// # Errors
/// [`StoreError::Unsupported`] for a composite inside a composite.
pub fn index_table(test: &IndexTest) -> Result<&'static str, StoreError> {
    Ok(match test {
        IndexTest::Token { .. } | IndexTest::TokenSystem(_) | IndexTest::TokenText(_) => {
            "idx_token"
        }
        IndexTest::StringStartsWith(_)
        | IndexTest::StringExact { .. }
        | IndexTest::StringContains(_) => "idx_string",
        IndexTest::Date { .. } => "idx_date",
        IndexTest::Number { .. } => "idx_number",
        IndexTest::Quantity { .. } => "idx_quantity",
        IndexTest::Reference { .. } | IndexTest::ReferenceUrl(_) => "idx_reference",
        IndexTest::Uri(_) | IndexTest::UriBelow(_) | IndexTest::UriAbove(_) => "idx_uri",
        IndexTest::Composite(_) => {
            return Err(StoreError::Unsupported(
                "a composite inside a composite".into(),
            ));
        }
    })
}

/// "Patient X's resources with code C": a clause naming the patient (the
/// compartment's `patient_key`, or a reference to `Patient/X`) and a clause
/// of plain token tests.
///
/// Both backends drive such a search from that patient's rows of the codes
/// (`idx_token_patient`) plus the matching references owned by someone
/// else. Why that is a superset: a resource's token rows carry its owner
/// (`patient_key`), so one that matches the codes and is owned by X is
/// among X's token rows of those codes. A resource that matches the
/// reference but is owned by someone else (its owner comes from the first
/// compartment reference, and absolute URLs never own) is found through
/// its reference row, which carries the same owner. Everything found is
/// then probed by every clause, so the answer is exact.
/// A reference test of the patient clause: by target (`param`, target
/// type or untyped, the patient's id) or by the reference as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientReference<'q> {
    Target {
        param: &'q str,
        target_type: Option<&'q str>,
    },
    Url {
        param: &'q str,
        url: &'q str,
    },
}

pub struct PatientScope<'q> {
    pub patient: &'q str,
    /// The reference tests of the patient clause, beside or instead of the
    /// compartment key: each adds its matches owned by someone else.
    pub references: Vec<PatientReference<'q>>,
    /// `(param, code)` of every token test in the token clause.
    pub codes: Vec<(&'q str, &'q str)>,
}

impl<'q> PatientScope<'q> {
    /// The scope of `q` when it should drive the search: `q` names one
    /// patient and plain codes, and the cheapest clause the backend could
    /// drive from otherwise (`cheapest`, by [`clause_cost`]) is not an id
    /// (0) or identifier (1) lookup, which finds fewer rows still.
    #[must_use]
    pub fn driving(q: &'q SearchQuery, cheapest: Option<u8>) -> Option<Self> {
        if cheapest.is_some_and(|cost| cost < 2) {
            return None;
        }
        Self::of(q)
    }

    fn of(q: &'q SearchQuery) -> Option<Self> {
        let (at, patient, references) = q
            .clauses
            .iter()
            .enumerate()
            .find_map(|(i, clause)| Self::patient_clause(clause).map(|(p, r)| (i, p, r)))?;
        let codes = q
            .clauses
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .find_map(|(_, clause)| {
                clause
                    .any_of
                    .iter()
                    .map(|p| match p {
                        Predicate::Index {
                            param,
                            test: IndexTest::Token { code, .. },
                        } => Some((param.as_str(), code.as_str())),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .filter(|codes| !codes.is_empty())
            })?;
        Some(Self {
            patient,
            references,
            codes,
        })
    }

    /// A clause naming one patient X: every predicate is the compartment
    /// key X, a reference to `Patient/X` (or to an untyped `X`), or a
    /// reference as written (records adds `Patient/X` as written beside the
    /// target test). The compartment search's clause is the key OR each
    /// compartment reference.
    fn patient_clause(clause: &'q Clause) -> Option<(&'q str, Vec<PatientReference<'q>>)> {
        let mut patient: Option<&str> = None;
        let mut references = Vec::new();
        for p in &clause.any_of {
            let named = match p {
                Predicate::PatientKey(x) => x.as_str(),
                Predicate::Index {
                    param,
                    test: IndexTest::Reference { target_type, id },
                } if target_type.as_deref().is_none_or(|t| t == "Patient") => {
                    references.push(PatientReference::Target {
                        param: param.as_str(),
                        target_type: target_type.as_deref(),
                    });
                    id.as_str()
                }
                // Names no patient by itself; its matches owned by someone
                // else are added like a target test's.
                Predicate::Index {
                    param,
                    test: IndexTest::ReferenceUrl(url),
                } => {
                    references.push(PatientReference::Url {
                        param: param.as_str(),
                        url: url.as_str(),
                    });
                    continue;
                }
                _ => return None,
            };
            if patient.is_some_and(|x| x != named) {
                return None;
            }
            patient = Some(named);
        }
        patient.map(|x| (x, references))
    }
}
