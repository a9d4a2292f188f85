//! ODS (Organisation Data Service) codes: how NHS organisations are identified.
//!
//! The rule carelayer applies to `Identifier.value` under
//! `https://fhir.nhs.uk/Id/ods-organization-code`: **3 to 10 characters, each an
//! upper-case ASCII letter or a digit**. It covers trusts (`RR8`), their sites
//! (`RR801`), GP practices (`A81001`), commissioners (`X26`, `15F`) and
//! non-NHS providers (`Y12345`, `8J834`). The real ODS register assigns codes of
//! 3–5 characters to most organisations and up to 10 to some sites; the format
//! check cannot tell whether a code is actually registered (that is the ODS
//! register's job, not a format's). Lower-case input is refused rather than
//! upper-cased, so the stored value is the canonical one.

use std::fmt;

/// A well-formed ODS code (3–10 upper-case ASCII letters or digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OdsCode(String);

/// Why a string is not an ODS code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OdsCodeError {
    /// Fewer than 3 or more than 10 characters.
    #[error("an ODS code has 3 to 10 characters, found {0}")]
    Length(usize),
    /// A character other than `A`–`Z` or `0`–`9`.
    #[error("an ODS code contains only upper-case letters and digits")]
    Character,
}

impl OdsCode {
    /// Parses an ODS code; the input must already be canonical (no spaces,
    /// upper case).
    pub fn parse(input: &str) -> Result<Self, OdsCodeError> {
        Self::check(input)?;
        Ok(OdsCode(input.to_owned()))
    }

    /// Checks a code without allocating.
    pub fn check(input: &str) -> Result<(), OdsCodeError> {
        if !input
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(OdsCodeError::Character);
        }
        if !(3..=10).contains(&input.len()) {
            return Err(OdsCodeError::Length(input.len()));
        }
        Ok(())
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for OdsCode {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for OdsCode {
    type Err = OdsCodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_codes() {
        for code in [
            "A81001",
            "RR8",
            "RR801",
            "X26",
            "15F",
            "Y12345",
            "8J834",
            "ABCDE12345",
        ] {
            assert_eq!(OdsCode::parse(code).unwrap().as_str(), code);
        }
    }

    #[test]
    fn malformed_codes() {
        let cases = [
            ("", OdsCodeError::Length(0)),
            ("RR", OdsCodeError::Length(2)),
            ("ABCDE123456", OdsCodeError::Length(11)),
            ("a81001", OdsCodeError::Character),
            ("A81 001", OdsCodeError::Character),
            ("A81-001", OdsCodeError::Character),
            ("RRÉ", OdsCodeError::Character),
        ];
        for (input, err) in cases {
            assert_eq!(OdsCode::parse(input), Err(err), "{input:?}");
        }
    }
}
