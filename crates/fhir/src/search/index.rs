//! Index rows: the values a resource yields for its search parameters, as stored.
//!
//! Extraction (FHIRPath over the official SearchParameter definitions) produces
//! these; the storage backends persist them in the same transaction as the
//! resource and answer searches from them.

use serde::{Deserialize, Serialize};

/// One search value of one resource for one parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The search parameter code, e.g. `identifier`, `birthdate`, `subject`.
    pub param: String,
    pub value: IndexValue,
}

/// Search values by parameter type (FHIR R4 search §2.1.1.x).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IndexValue {
    /// Coding/Identifier/code/boolean/ContactPoint. `text` carries display or
    /// CodeableConcept.text for `:text`, normalised like strings.
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
    },
    /// `normalized` is lower-cased with accents removed (prefix and `:contains`
    /// matches); `exact` is the value as written (`:exact`).
    String {
        normalized: String,
        exact: String,
    },
    /// An instant range, microseconds since the Unix epoch, both ends inclusive:
    /// a date `1980` indexes as `[1980-01-01T00:00:00, 1980-12-31T23:59:59.999999]`.
    Date {
        low: i64,
        high: i64,
    },
    Number {
        value: f64,
    },
    Quantity {
        value: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    /// A literal reference split into type and id when it has that shape
    /// (`Patient/1`, `http://x/fhir/Patient/1`); `url` holds the reference as written.
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: String,
    },
    Uri {
        uri: String,
    },
    /// One combination of component values, in the order of the definition's components.
    Composite {
        parts: Vec<IndexValue>,
    },
}
