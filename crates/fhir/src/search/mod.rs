//! Search parameter definitions and the values a resource yields for them.
//!
//! [`registry()`] holds all 1,387 official R4 SearchParameters (from
//! `generated/search-parameters.json`), each FHIRPath expression parsed once and
//! restricted per resource type to the union branches rooted at that type, plus
//! the CompartmentDefinitions (`generated/compartments.json`).
//! [`extract_index`] evaluates every supported parameter of a resource's type
//! and turns the results into [`IndexEntry`] rows:
//!
//! - **token**: code/string/uri/id/boolean as a bare code; Coding → system|code
//!   (display as text); CodeableConcept → each coding, plus a text-only row for
//!   `.text`; Identifier → system|value (type.text as text); ContactPoint →
//!   system|value. Text is normalised like strings.
//! - **string**: strings/markdown as written (`exact`) and normalised
//!   (lower-case, accents stripped); HumanName and Address give one row per part
//!   (family, given, prefix, suffix, text / line, city, district, state,
//!   postalCode, country, text).
//! - **date**: date/dateTime/instant as the inclusive microsecond range of their
//!   precision (zone-less times are UTC); Period start..end with an open side at
//!   `i64::MIN`/`i64::MAX`; Timing → each `event` and `repeat.boundsPeriod`.
//! - **number**, **quantity** (Quantity and its profiles, Money as
//!   `urn:iso:std:iso:4217|currency`, Range as both bounds; SampledData is not
//!   indexed), **uri**.
//! - **reference**: `Reference.reference` split into type and id when it reads
//!   `Type/id` (optionally absolute and/or `/_history/v`); canonical/uri strings
//!   as URL only; a resource in place of a reference (`Bundle.entry[0].resource`)
//!   as `Type/id`. Logical references (`Reference.identifier`) are indexed as
//!   tokens under the derived parameter `{code}:identifier`
//!   ([`IDENTIFIER_SUFFIX`]), so `subject:identifier=sys|value` is a token
//!   lookup; identifiers with a `type` coding also yield `{code}:of-type` rows
//!   (system = type system, code = `{type code}|{value}`,
//!   [`OF_TYPE_SUFFIX`]). Derived names contain `:`, which no official code
//!   does, so they never collide.
//! - `address-postalcode` string values are normalised with spaces removed
//!   ([`POSTCODE_PARAM`]); searches strip them too.
//! - **composite**: for each item of the composite's expression, the cartesian
//!   product of its components' values (component expressions evaluated
//!   relative to that item), as [`IndexValue::Composite`].
//!
//! `special` parameters and those without an expression are listed by
//! [`unsupported_params`].

mod date;
mod extract;
mod index;
mod registry;
mod text;

pub use date::date_range;
pub use extract::{IDENTIFIER_SUFFIX, ISO_4217, OF_TYPE_SUFFIX};
pub use index::{IndexEntry, IndexValue};
pub use registry::{
    ComponentDef, HELD_ON_CURRENT, POSTCODE_PARAM, SearchParamDef, SearchParamType, SearchParams,
    compartment_params, extract_index, item_values, patient_compartment_owner, registry,
    unsupported_params,
};
pub use text::normalize;
/// Alias of [`normalize`].
pub use text::normalize as normalize_string;

/// Alias of [`SearchParamType`].
pub type ParamType = SearchParamType;

#[cfg(test)]
mod tests;
