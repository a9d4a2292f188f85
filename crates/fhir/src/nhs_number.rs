//! The NHS number: 10 digits, the last a Modulus 11 check digit.
//!
//! Rules (`reference/nhs-domain-rules.md` §1):
//! - N1: exactly 10 digits; strip spaces before validating; store without them.
//! - N2: Modulus 11 with weights 10..2 on digits 1–9; `c = 11 − (sum mod 11)`,
//!   11 → 0, 10 → the stem is never issued.
//! - N3: displayed 3-3-4 (`943 476 5919`); canonical form is digits only.
//! - N6: all-same-digit numbers (e.g. `0000000000`) pass Mod 11 but are refused.
//!
//! [`NhsNumber::parse`] accepts input with spaces (as typed by people); inside a
//! FHIR `Identifier` the stored value must already be canonical (the validator
//! requires exactly 10 digits).

use std::fmt;

/// A valid NHS number in canonical form (10 ASCII digits, no spaces).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber(String);

/// Why a string is not an NHS number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    /// Not 10 characters once spaces are removed.
    #[error("an NHS number has 10 digits, found {0} characters")]
    Length(usize),
    /// A character other than a digit (or a space, which is stripped).
    #[error("an NHS number contains only digits")]
    NonDigit,
    /// The 10th digit is not the Modulus 11 check digit of the first nine.
    #[error("the check digit is wrong (expected {expected})")]
    CheckDigit {
        /// The correct check digit for the first nine digits.
        expected: u8,
    },
    /// The first nine digits give a check value of 10: never issued.
    #[error("no NHS number starts with these nine digits (Modulus 11 check value is 10)")]
    UnusableStem,
    /// All ten digits are the same (e.g. `0000000000`): refused by business rule.
    #[error("an NHS number cannot have all digits the same")]
    AllSameDigit,
}

/// The Modulus 11 check digit for the first nine digits of an NHS number, or
/// `None` if `first9` is not nine ASCII digits or no valid number has this stem
/// (check value 10). Useful to generate synthetic numbers in the `999` range.
///
/// ```
/// use carelayer_fhir::nhs_number::check_digit;
/// assert_eq!(check_digit("943476591"), Some(9));
/// assert_eq!(check_digit("999000000"), None);
/// ```
pub fn check_digit(first9: &str) -> Option<u8> {
    let bytes = first9.as_bytes();
    if bytes.len() != 9 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = bytes
        .iter()
        .zip((2..=10u32).rev())
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        c => u8::try_from(c).ok(),
    }
}

impl NhsNumber {
    /// Parses an NHS number, with or without spaces (`"943 476 5919"`,
    /// `"9434765919"`), into its canonical digits-only form.
    pub fn parse(input: &str) -> Result<Self, NhsNumberError> {
        let digits: String = input.chars().filter(|&c| c != ' ').collect();
        Self::parse_canonical(&digits)?;
        Ok(NhsNumber(digits))
    }

    /// Checks an already-canonical value (exactly 10 digits, no spaces) without
    /// allocating. This is the rule for stored `Identifier.value`s.
    pub fn parse_canonical(digits: &str) -> Result<(), NhsNumberError> {
        let n = digits.chars().count();
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(if n == 10 {
                NhsNumberError::NonDigit
            } else {
                NhsNumberError::Length(n)
            });
        }
        if n != 10 {
            return Err(NhsNumberError::Length(n));
        }
        let expected = check_digit(&digits[..9]).ok_or(NhsNumberError::UnusableStem)?;
        if digits.as_bytes()[9] - b'0' != expected {
            return Err(NhsNumberError::CheckDigit { expected });
        }
        if digits.bytes().all(|b| b == digits.as_bytes()[0]) {
            return Err(NhsNumberError::AllSameDigit);
        }
        Ok(())
    }

    /// The canonical form: 10 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the number, returning the canonical digits.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl AsRef<str> for NhsNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for NhsNumber {
    type Err = NhsNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Displays 3-3-4, as people read it: `943 476 5919`.
impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.0;
        write!(f, "{} {} {}", &s[..3], &s[3..6], &s[6..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example of the rules doc §1 table.
    #[test]
    fn rules_doc_examples() {
        for valid in [
            "943 476 5919",
            "900 000 0009",
            "900 000 0025",
            "999 000 0018",
            "999 000 0026",
            "999 000 0034",
            "401 023 2137",
            "654 100 3238",
            "987 654 4322",
        ] {
            let n = NhsNumber::parse(valid).unwrap_or_else(|e| panic!("{valid}: {e}"));
            assert_eq!(n.to_string(), valid);
            assert_eq!(n.as_str(), valid.replace(' ', ""));
        }
        let invalid = [
            ("943 476 5918", NhsNumberError::CheckDigit { expected: 9 }),
            ("987 654 4321", NhsNumberError::CheckDigit { expected: 2 }),
            ("999 123 4560", NhsNumberError::UnusableStem),
            ("123 456 7890", NhsNumberError::UnusableStem),
            ("94347659", NhsNumberError::Length(8)),
            ("943476591A", NhsNumberError::NonDigit),
        ];
        for (input, err) in invalid {
            assert_eq!(NhsNumber::parse(input), Err(err), "{input}");
        }
        for x in 0..=9 {
            let input = format!("999 000 000{x}");
            assert_eq!(
                NhsNumber::parse(&input),
                Err(NhsNumberError::UnusableStem),
                "{input}"
            );
        }
    }

    #[test]
    fn sums_in_the_rules_doc() {
        // 943 476 5919: sum 299, r=2, c=9; 987 654 4321: sum 339, r=9, c=2.
        assert_eq!(check_digit("943476591"), Some(9));
        assert_eq!(check_digit("987654432"), Some(2));
        assert_eq!(check_digit("999000000"), None);
        assert_eq!(check_digit("99900000"), None);
        assert_eq!(check_digit("99900000a"), None);
    }

    #[test]
    fn all_same_digit_is_refused() {
        assert_eq!(
            NhsNumber::parse("0000000000"),
            Err(NhsNumberError::AllSameDigit)
        );
        // Other repeated digits fail Mod 11 anyway, but never pass.
        for d in 1..=9 {
            assert!(NhsNumber::parse(&d.to_string().repeat(10)).is_err());
        }
    }

    #[test]
    fn canonical_rejects_spaces() {
        assert!(NhsNumber::parse_canonical("9434765919").is_ok());
        assert_eq!(
            NhsNumber::parse_canonical("943 476 5919"),
            Err(NhsNumberError::Length(12))
        );
        assert_eq!(
            NhsNumber::parse_canonical(""),
            Err(NhsNumberError::Length(0))
        );
        assert_eq!(
            NhsNumber::parse_canonical("９４３４７６５９１９"),
            Err(NhsNumberError::NonDigit)
        );
    }

    #[test]
    fn every_generated_check_digit_validates() {
        let mut valid = 0;
        for i in 0..2000u32 {
            let stem = format!("999{:06}", i * 37);
            if let Some(c) = check_digit(&stem) {
                NhsNumber::parse(&format!("{stem}{c}")).unwrap();
                valid += 1;
            }
        }
        assert!(valid > 1700, "{valid}");
    }
}
