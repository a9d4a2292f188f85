//! Structured queries: history scopes and search plans over index rows.
//!
//! `records` parses FHIR search URLs into a [`SearchQuery`] (with the help of
//! the definitions in `carelayer-fhir`); backends translate it into SQL.

/// Which versions a history request covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance { resource_type: String, id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// Only versions with `last_updated >= since` (microseconds).
    pub since: Option<i64>,
    /// Paging cursor: only versions with `seq < before_seq`.
    pub before_seq: Option<i64>,
    pub count: usize,
}

/// A search over current, non-deleted resources.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchQuery {
    /// Resource types searched (one for a type search; several for `_type`;
    /// empty means every type).
    pub resource_types: Vec<String>,
    /// Conjunction of clauses; each clause is a disjunction of predicates.
    pub clauses: Vec<Clause>,
    pub sort: Vec<SortKey>,
    /// Rows to skip (paging).
    pub offset: usize,
    /// Page size; the backend returns at most this many matches.
    pub count: usize,
    pub total: TotalMode,
    /// Only resources whose latest version has `seq <= snapshot_seq`: pins a
    /// paged search to the moment its first page ran, so concurrent writes do
    /// not shift later pages.
    pub snapshot_seq: Option<i64>,
    /// Return matches without their JSON (`StoredResource::json` empty): the
    /// keys and versions of a result set, for materialising a paging
    /// snapshot cheaply. Backends may ignore it (returning JSON is correct,
    /// only slower).
    pub keys_only: bool,
    /// Return JSON only for the matches at these positions of the returned
    /// list (the rest as with `keys_only`): one query gives a search's
    /// first page with bodies and every key after it for the paging
    /// snapshot, instead of a page query and a keys query that each
    /// evaluate the whole search. `None`: every match's JSON (unless
    /// `keys_only`). Backends must honour it.
    pub bodies: Option<std::ops::Range<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TotalMode {
    #[default]
    None,
    Estimate,
    Accurate,
}

/// OR of predicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub any_of: Vec<Predicate>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    /// `_id`.
    Id(String),
    /// `_id:not`: the resource's id is not this one.
    NotId(String),
    /// `_lastUpdated` as a comparison against the version's instant.
    LastUpdated { prefix: Prefix, low: i64, high: i64 },
    /// A resource in this Patient compartment (`patient_key`).
    PatientKey(String),
    /// A test on one parameter's index rows.
    Index { param: String, test: IndexTest },
    /// `:missing=true` (`missing`) or `:missing=false`.
    Missing { param: String, missing: bool },
    /// `:not` on a token: no index row of the parameter matches.
    Not { param: String, test: IndexTest },
    /// Chained search: the resource's `param` reference points at a resource of
    /// `target_type` matching `query` (its `resource_types` is `[target_type]`).
    Chain {
        param: String,
        target_type: String,
        query: Box<SearchQuery>,
    },
    /// Reverse chain `_has:source_type:param:…`: some `source_type` resource whose
    /// `param` references this resource matches `query`.
    Has {
        source_type: String,
        param: String,
        query: Box<SearchQuery>,
    },
}

/// Comparison prefixes (FHIR search §3.1.1.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefix {
    #[default]
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IndexTest {
    /// `system|code`, `|code` (system must be absent: `Some(None)`), `code`
    /// (any system: `None`).
    Token {
        system: Option<Option<String>>,
        code: String,
    },
    /// `system|`: any code in the system.
    TokenSystem(String),
    /// `:text`: normalised prefix of the token's text.
    TokenText(String),
    /// Normalised prefix match (default string search).
    StringStartsWith(String),
    /// `:exact`: the value as written, with the normalised form the
    /// indexer stored beside it (`normalized`, what a default search
    /// compares). Both stores find an exact value by its normalised form
    /// in their one string index, instead of a second index on `(param,
    /// exact)` that every string row paid for: SQLite's `(param,
    /// normalized, exact)` holds it as one key; PostgreSQL's `(param,
    /// left(normalized, 128))` (one B-tree entry there may not pass 2,704
    /// bytes) finds the key and compares `exact` on the row.
    StringExact {
        normalized: String,
        exact: String,
    },
    /// Normalised substring.
    StringContains(String),
    /// The search value as a range `[low, high]` (microseconds, inclusive).
    Date {
        prefix: Prefix,
        low: i64,
        high: i64,
    },
    /// `low`/`high` is the implicit range of the search value's precision.
    Number {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    /// Literal reference by type (optional) and id.
    Reference {
        target_type: Option<String>,
        id: String,
    },
    /// Reference written as an absolute URL or other literal.
    ReferenceUrl(String),
    Uri(String),
    UriBelow(String),
    UriAbove(String),
    /// Each part tests the corresponding component.
    Composite(Vec<IndexTest>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKey {
    Param { param: String, descending: bool },
    Id { descending: bool },
    LastUpdated { descending: bool },
}

/// One page of search matches.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub matches: Vec<crate::StoredResource>,
    /// Present when the query asked for a total.
    pub total: Option<u64>,
    /// The snapshot the page was taken at (pass it back for the next page).
    pub snapshot_seq: i64,
}
