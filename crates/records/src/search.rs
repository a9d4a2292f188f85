//! FHIR search: request parameters → a store [`SearchQuery`], then policy
//! and audit over the hits.
//!
//! Parameter definitions come from the official R4 SearchParameters (via
//! `carelayer_fhir::search`); value syntax follows FHIR R4 search §3.1.1.

use carelayer_audit::AuditAction;
use carelayer_fhir::search::{self as defs, ParamType};
use carelayer_store::{Clause, IndexTest, Predicate, Prefix, SearchQuery, SortKey, TotalMode};

use crate::prepare::check_type;
use crate::{Caller, Records, RecordsError, Version};

/// A search as the caller asked it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchRequest {
    /// `None` for a search across all types.
    pub resource_type: Option<String>,
    /// Query parameters in order (names may repeat: AND).
    pub params: Vec<(String, String)>,
    /// `Prefer: handling=lenient`: ignore unknown parameters instead of failing.
    pub lenient: bool,
}

/// One page of search results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchOutcome {
    pub matches: Vec<Version>,
    pub total: Option<u64>,
    /// The parameters that were applied (for the `self` link).
    pub applied: Vec<(String, String)>,
    /// Parameters ignored under lenient handling.
    pub ignored: Vec<String>,
    pub offset: usize,
    pub count: usize,
    /// Where the next page starts, when there may be one.
    pub next_offset: Option<usize>,
    pub snapshot_seq: i64,
}

/// Parameters that shape the response rather than select resources.
const RESULT_PARAMS: &[&str] = &["_format", "_pretty", "_summary", "_elements"];

impl Records {
    /// Run a search; every hit is a disclosure and audited per patient.
    ///
    /// # Errors
    /// `BadRequest` naming an unknown parameter or a malformed value,
    /// `NotSupported` for features this server lacks, store errors.
    pub async fn search(
        &self,
        caller: &Caller,
        request: &SearchRequest,
    ) -> Result<SearchOutcome, RecordsError> {
        if let Some(ty) = &request.resource_type {
            check_type(ty)?;
        }
        let parsed = self.parse_search(request)?;
        let page = self.run_query(&parsed.query).await?;
        let more = page.matches.len() > parsed.query.count.saturating_sub(1) && parsed.count > 0;
        let mut versions: Vec<Version> = page.matches.into_iter().map(Version::from).collect();
        versions.truncate(parsed.count);
        let detail = Some(describe(request));
        let matches = self
            .disclose_many(caller, AuditAction::Search, versions, detail)
            .await?;
        Ok(SearchOutcome {
            matches,
            total: page.total,
            applied: parsed.applied,
            ignored: parsed.ignored,
            offset: parsed.query.offset,
            count: parsed.count,
            next_offset: more.then_some(parsed.query.offset + parsed.count),
            snapshot_seq: page.snapshot_seq,
        })
    }

    /// A conditional operation's search (`If-None-Exist`, `PUT Type?…`).
    pub(crate) fn parse_conditional(
        &self,
        resource_type: &str,
        query: &str,
    ) -> Result<SearchQuery, RecordsError> {
        let params = parse_query_string(query);
        if params.is_empty() {
            return Err(RecordsError::BadRequest(format!(
                "a conditional operation on {resource_type} needs search parameters"
            )));
        }
        let request = SearchRequest {
            resource_type: Some(resource_type.to_owned()),
            params,
            lenient: false,
        };
        Ok(self.parse_search(&request)?.query)
    }

    fn parse_search(&self, request: &SearchRequest) -> Result<ParsedSearch, RecordsError> {
        let mut query = SearchQuery {
            resource_types: request.resource_type.iter().cloned().collect(),
            ..SearchQuery::default()
        };
        let mut count = self.options.default_page_size;
        let mut applied = Vec::new();
        let mut ignored = Vec::new();
        for (name, value) in &request.params {
            let outcome = match name.as_str() {
                "_count" => parse_count(value, self.options.max_page_size).map(|c| count = c),
                "_offset" => parse_usize(name, value).map(|o| query.offset = o),
                "_snapshot" => value
                    .parse::<i64>()
                    .map(|s| query.snapshot_seq = Some(s))
                    .map_err(|_| {
                        RecordsError::BadRequest(format!(
                            "_snapshot '{value}' is not a paging token of this server"
                        ))
                    }),
                "_total" => parse_total(value).map(|t| query.total = t),
                "_sort" => parse_sort(request.resource_type.as_deref(), value)
                    .map(|keys| query.sort = keys),
                "_type" => parse_types(value).map(|types| {
                    if query.resource_types.is_empty() {
                        query.resource_types = types;
                    }
                }),
                n if RESULT_PARAMS.contains(&n) => Ok(()),
                _ => parse_filter(request.resource_type.as_deref(), name, value)
                    .map(|clause| query.clauses.push(clause)),
            };
            match outcome {
                Ok(()) => {
                    if !matches!(name.as_str(), "_offset" | "_snapshot") {
                        applied.push((name.clone(), value.clone()));
                    }
                }
                Err(RecordsError::BadRequest(_))
                    if request.lenient && is_unknown(request.resource_type.as_deref(), name) =>
                {
                    ignored.push(name.clone());
                }
                Err(e) => return Err(e),
            }
        }
        // One row past the page tells whether a next page exists.
        query.count = count + 1;
        Ok(ParsedSearch {
            query,
            count,
            applied,
            ignored,
        })
    }
}

struct ParsedSearch {
    query: SearchQuery,
    count: usize,
    applied: Vec<(String, String)>,
    ignored: Vec<String>,
}

/// A short description of a search for the audit log.
fn describe(request: &SearchRequest) -> String {
    let params = request
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{}?{params}",
        request.resource_type.as_deref().unwrap_or("")
    )
}

/// `a=1&b=2` → pairs, percent-decoded (`+` is a space, as in forms).
#[must_use]
pub fn parse_query_string(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_unknown(resource_type: Option<&str>, name: &str) -> bool {
    let code = name.split([':', '.']).next().unwrap_or(name);
    !code.starts_with("_has") && lookup(resource_type, code).is_none()
}

fn parse_usize(name: &str, value: &str) -> Result<usize, RecordsError> {
    value
        .parse::<usize>()
        .map_err(|_| RecordsError::BadRequest(format!("{name} '{value}' is not a whole number")))
}

fn parse_count(value: &str, max: usize) -> Result<usize, RecordsError> {
    Ok(parse_usize("_count", value)?.min(max))
}

fn parse_total(value: &str) -> Result<TotalMode, RecordsError> {
    match value {
        "none" => Ok(TotalMode::None),
        "estimate" => Ok(TotalMode::Estimate),
        "accurate" => Ok(TotalMode::Accurate),
        _ => Err(RecordsError::BadRequest(format!(
            "_total '{value}' must be none, estimate or accurate"
        ))),
    }
}

fn parse_types(value: &str) -> Result<Vec<String>, RecordsError> {
    value
        .split(',')
        .map(|t| {
            check_type(t)?;
            Ok(t.to_owned())
        })
        .collect()
}

fn parse_sort(resource_type: Option<&str>, value: &str) -> Result<Vec<SortKey>, RecordsError> {
    value
        .split(',')
        .map(|key| {
            let (descending, name) = key
                .strip_prefix('-')
                .map_or((false, key), |rest| (true, rest));
            match name {
                "_id" => Ok(SortKey::Id { descending }),
                "_lastUpdated" => Ok(SortKey::LastUpdated { descending }),
                _ => lookup(resource_type, name)
                    .map(|_| SortKey::Param {
                        param: name.to_owned(),
                        descending,
                    })
                    .ok_or_else(|| unknown(resource_type, name)),
            }
        })
        .collect()
}

/// What the parser needs of a parameter definition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParamInfo {
    kind: ParamType,
    targets: Vec<String>,
}

/// The definition of `code` for a type (or for every type, in a search
/// across all types: only parameters common to all resources).
fn lookup(resource_type: Option<&str>, code: &str) -> Option<ParamInfo> {
    let def = defs::registry().param(resource_type.unwrap_or("Resource"), code)?;
    Some(ParamInfo {
        kind: def.param_type(),
        targets: def.targets().to_vec(),
    })
}

fn unknown(resource_type: Option<&str>, name: &str) -> RecordsError {
    RecordsError::BadRequest(format!(
        "unknown search parameter '{name}' for {}",
        resource_type.unwrap_or("a search across all types")
    ))
}

/// One `name=value` filter → a clause (comma-separated values are ORed).
fn parse_filter(
    resource_type: Option<&str>,
    name: &str,
    value: &str,
) -> Result<Clause, RecordsError> {
    if name.starts_with("_has:") {
        return Err(RecordsError::NotSupported(
            "reverse chaining (_has) is not supported yet".into(),
        ));
    }
    let (path, modifier) = match name.split_once(':') {
        Some((p, m)) => (p, Some(m)),
        None => (name, None),
    };
    if path.contains('.') {
        return Err(RecordsError::NotSupported(
            "chained search parameters are not supported yet".into(),
        ));
    }
    let code = path;
    if code == "_id" {
        return Ok(Clause {
            any_of: split_values(value).into_iter().map(Predicate::Id).collect(),
        });
    }
    if code == "_lastUpdated" {
        let any_of = split_values(value)
            .iter()
            .map(|v| {
                let (prefix, rest) = split_prefix(v);
                let (low, high) = date_range(rest)?;
                Ok(Predicate::LastUpdated { prefix, low, high })
            })
            .collect::<Result<_, RecordsError>>()?;
        return Ok(Clause { any_of });
    }
    let info = lookup(resource_type, code).ok_or_else(|| unknown(resource_type, name))?;
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => {
                return Err(RecordsError::BadRequest(format!(
                    "{name} must be true or false, not '{value}'"
                )));
            }
        };
        return Ok(Clause {
            any_of: vec![Predicate::Missing {
                param: code.to_owned(),
                missing,
            }],
        });
    }
    let any_of = split_values(value)
        .iter()
        .map(|v| parse_value(&info, code, name, modifier, v))
        .collect::<Result<Vec<_>, _>>()?;
    if any_of.is_empty() {
        return Err(RecordsError::BadRequest(format!("{name} has no value")));
    }
    Ok(Clause { any_of })
}

fn parse_value(
    info: &ParamInfo,
    code: &str,
    name: &str,
    modifier: Option<&str>,
    value: &str,
) -> Result<Predicate, RecordsError> {
    let index = |test| Predicate::Index {
        param: code.to_owned(),
        test,
    };
    let unsupported_modifier = || {
        RecordsError::BadRequest(format!(
            "modifier ':{}' is not valid on {name} ({:?} parameter)",
            modifier.unwrap_or_default(),
            info.kind
        ))
    };
    Ok(match info.kind {
        ParamType::Token => {
            let test = match modifier {
                Some("text") => IndexTest::TokenText(defs::normalize_string(value)),
                None | Some("not") => token_test(value),
                _ => return Err(unsupported_modifier()),
            };
            if modifier == Some("not") {
                Predicate::Not {
                    param: code.to_owned(),
                    test,
                }
            } else {
                index(test)
            }
        }
        ParamType::String => index(match modifier {
            None => IndexTest::StringStartsWith(defs::normalize_string(value)),
            Some("exact") => IndexTest::StringExact(value.to_owned()),
            Some("contains") => IndexTest::StringContains(defs::normalize_string(value)),
            _ => return Err(unsupported_modifier()),
        }),
        ParamType::Date => {
            if modifier.is_some() {
                return Err(unsupported_modifier());
            }
            let (prefix, rest) = split_prefix(value);
            let (low, high) = date_range(rest)?;
            index(IndexTest::Date { prefix, low, high })
        }
        ParamType::Number => {
            if modifier.is_some() {
                return Err(unsupported_modifier());
            }
            let (prefix, rest) = split_prefix(value);
            let (value, low, high) = number_range(name, rest)?;
            index(IndexTest::Number {
                prefix,
                value,
                low,
                high,
            })
        }
        ParamType::Quantity => {
            if modifier.is_some() {
                return Err(unsupported_modifier());
            }
            let (prefix, rest) = split_prefix(value);
            let mut parts = split_escaped(rest, '|').into_iter();
            let number = parts.next().unwrap_or_default();
            let (value, low, high) = number_range(name, &number)?;
            let system = parts.next().filter(|s| !s.is_empty());
            let code = parts.next().filter(|s| !s.is_empty());
            index(IndexTest::Quantity {
                prefix,
                value,
                low,
                high,
                system,
                code,
            })
        }
        ParamType::Reference => index(reference_test(info, name, modifier, value)?),
        ParamType::Uri => index(match modifier {
            None => IndexTest::Uri(value.to_owned()),
            Some("below") => IndexTest::UriBelow(value.to_owned()),
            Some("above") => IndexTest::UriAbove(value.to_owned()),
            _ => return Err(unsupported_modifier()),
        }),
        ParamType::Composite | ParamType::Special => {
            return Err(RecordsError::NotSupported(format!(
                "search parameter '{code}' ({:?}) is not supported yet",
                info.kind
            )));
        }
    })
}

fn token_test(value: &str) -> IndexTest {
    match split_escaped(value, '|').as_slice() {
        [code] => IndexTest::Token {
            system: None,
            code: code.clone(),
        },
        [system, code] if system.is_empty() => IndexTest::Token {
            system: Some(None),
            code: code.clone(),
        },
        [system, code] if code.is_empty() => IndexTest::TokenSystem(system.clone()),
        [system, code, ..] => IndexTest::Token {
            system: Some(Some(system.clone())),
            code: code.clone(),
        },
        [] => IndexTest::Token {
            system: None,
            code: String::new(),
        },
    }
}

fn reference_test(
    info: &ParamInfo,
    name: &str,
    modifier: Option<&str>,
    value: &str,
) -> Result<IndexTest, RecordsError> {
    let typed = match modifier {
        None => None,
        Some(m) if m.chars().next().is_some_and(char::is_uppercase) => {
            check_type(m)?;
            Some(m.to_owned())
        }
        Some(_) => {
            return Err(RecordsError::NotSupported(format!(
                "modifier on {name} is not supported yet"
            )));
        }
    };
    // Absolute URLs: match on the type/id tail when it has that shape.
    let tail = value.rsplit('/').take(2).collect::<Vec<_>>();
    if value.contains("://") {
        if let [id, ty] = tail.as_slice()
            && carelayer_fhir::definitions::r4().is_resource_type(ty)
        {
            return Ok(IndexTest::Reference {
                target_type: Some((*ty).to_owned()),
                id: (*id).to_owned(),
            });
        }
        return Ok(IndexTest::ReferenceUrl(value.to_owned()));
    }
    match value.split_once('/') {
        Some((ty, id)) => Ok(IndexTest::Reference {
            target_type: Some(ty.to_owned()),
            id: id.to_owned(),
        }),
        None => {
            let target_type =
                typed.or_else(|| (info.targets.len() == 1).then(|| info.targets[0].clone()));
            Ok(IndexTest::Reference {
                target_type,
                id: value.to_owned(),
            })
        }
    }
}

/// Split on unescaped commas (`\,` is a literal comma).
fn split_values(value: &str) -> Vec<String> {
    split_escaped(value, ',')
}

fn split_escaped(value: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && (next == separator || matches!(next, '\\' | '|' | '$' | ','))
        {
            if let Some(last) = parts.last_mut() {
                last.push(next);
            }
            chars.next();
            continue;
        }
        if c == separator {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn split_prefix(value: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in prefixes {
        if let Some(rest) = value.strip_prefix(text)
            && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, value)
}

/// A search date at its precision → the instants it covers.
fn date_range(value: &str) -> Result<(i64, i64), RecordsError> {
    defs::date_range(value).ok_or_else(|| {
        RecordsError::BadRequest(format!(
            "'{value}' is not a date, dateTime or instant (e.g. 2020, 2020-03, 2020-03-01, 2020-03-01T10:00:00Z)"
        ))
    })
}

/// A number and the implicit range of its precision (`100` → [99.5, 100.5]).
fn number_range(name: &str, text: &str) -> Result<(f64, f64, f64), RecordsError> {
    let bad = || RecordsError::BadRequest(format!("{name}: '{text}' is not a number"));
    let value: f64 = text.parse().map_err(|_| bad())?;
    if !value.is_finite() {
        return Err(bad());
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let decimals = mantissa.split_once('.').map_or(0, |(_, frac)| frac.len());
    let exponent: i32 = text
        .split_once(['e', 'E'])
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let half = 0.5 * 10f64.powi(exponent - i32::try_from(decimals).unwrap_or(0));
    Ok((value, value - half, value + half))
}

/// The search parameters this server can run for a type: `(code, type, definition url)`.
#[must_use]
pub fn supported_search_params(resource_type: &str) -> Vec<(String, &'static str, String)> {
    defs::registry()
        .params_for(resource_type)
        .filter(|p| !matches!(p.param_type(), ParamType::Composite | ParamType::Special))
        .filter(|p| p.is_supported())
        .map(|p| {
            (
                p.code().to_owned(),
                p.param_type().as_str(),
                p.url().to_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        assert_eq!(
            parse_query_string(
                "identifier=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C9434765919&name=a+b"
            ),
            vec![
                (
                    "identifier".into(),
                    "https://fhir.nhs.uk/Id/nhs-number|9434765919".into()
                ),
                ("name".into(), "a b".into())
            ]
        );
        assert_eq!(parse_query_string("a=%"), vec![("a".into(), "%".into())]);
    }

    #[test]
    fn tokens() {
        assert_eq!(
            token_test("a|b"),
            IndexTest::Token {
                system: Some(Some("a".into())),
                code: "b".into()
            }
        );
        assert_eq!(
            token_test("|b"),
            IndexTest::Token {
                system: Some(None),
                code: "b".into()
            }
        );
        assert_eq!(token_test("a|"), IndexTest::TokenSystem("a".into()));
        assert_eq!(
            token_test("b"),
            IndexTest::Token {
                system: None,
                code: "b".into()
            }
        );
        assert_eq!(
            split_values(r"a\,b,c"),
            vec!["a,b".to_owned(), "c".to_owned()]
        );
    }

    #[test]
    fn numbers_have_implicit_ranges() {
        let (v, lo, hi) = number_range("n", "100").unwrap();
        assert!((v - 100.0).abs() < 1e-9 && (lo - 99.5).abs() < 1e-9 && (hi - 100.5).abs() < 1e-9);
        let (_, lo, hi) = number_range("n", "1.50").unwrap();
        assert!((lo - 1.495).abs() < 1e-9 && (hi - 1.505).abs() < 1e-9);
        assert!(number_range("n", "abc").is_err());
        assert_eq!(split_prefix("ge2020"), (Prefix::Ge, "2020"));
        assert_eq!(split_prefix("2020"), (Prefix::Eq, "2020"));
    }
}
