//! Realistic synthetic UK content: Patients with valid 999-range NHS numbers
//! (Modulus 11 check digits), registered at ODS-coded GP practices, and
//! LOINC-coded vital-sign Observations. Deterministic for a given seed.

use serde_json::{Value, json};

/// A small fast PRNG (SplitMix64): reproducible, no dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The NHS number built from nine digits, or `None` when the Modulus 11
/// check digit would be 10 (no valid number has that stem).
#[must_use]
pub fn nhs_number_from_stem(stem: u32) -> Option<String> {
    let digits = format!("{stem:09}");
    if digits.len() != 9 {
        return None;
    }
    let sum: u32 = digits
        .bytes()
        .zip((2..=10).rev())
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    let check = match 11 - sum % 11 {
        11 => 0,
        10 => return None,
        c => c,
    };
    let number = format!("{digits}{check}");
    let first = number.as_bytes()[0];
    if number.bytes().all(|b| b == first) {
        return None;
    }
    Some(number)
}

/// A valid NHS number of the 999 test range (`999 000 000x` to `999 999 999x`).
pub(crate) fn test_nhs_number(rng: &mut Rng) -> String {
    loop {
        let stem = 999_000_000 + (rng.next_u64() % 1_000_000) as u32;
        if let Some(n) = nhs_number_from_stem(stem) {
            return n;
        }
    }
}

const FAMILY: &[&str] = &[
    "Smith",
    "Jones",
    "Taylor",
    "Brown",
    "Williams",
    "Wilson",
    "Johnson",
    "Davies",
    "Patel",
    "Robinson",
    "Wright",
    "Thompson",
    "Evans",
    "Walker",
    "White",
    "Roberts",
    "Green",
    "Hall",
    "Khan",
    "Whitfield",
    "Ashworth",
    "O'Brien",
    "Murphy",
    "Hughes",
];
const GIVEN_F: &[&str] = &[
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Sophia", "Grace", "Aisha", "Freya",
];
const GIVEN_M: &[&str] = &[
    "Oliver", "George", "Arthur", "Noah", "Muhammad", "Leo", "Harry", "Jack", "Alfie",
];
/// (ODS code, practice, town, postcode district).
const PRACTICES: &[(&str, &str, &str, &str)] = &[
    ("Y90001", "Riverside Medical Practice", "Leeds", "LS1"),
    ("Y90002", "Moorside Surgery", "Bradford", "BD7"),
    ("Y90003", "Castle Street Health Centre", "York", "YO1"),
    ("Y90004", "Harbour View Practice", "Hull", "HU2"),
    ("Y90005", "Park Lane Surgery", "Sheffield", "S10"),
];
const STREETS: &[&str] = &[
    "High Street",
    "Station Road",
    "Church Lane",
    "Mill Road",
    "Victoria Street",
];

/// A Patient resource with an NHS number (verified), name, birth date,
/// address and registered GP practice.
pub(crate) fn patient(rng: &mut Rng) -> Value {
    let female = rng.below(2) == 0;
    let given = if female {
        rng.pick(GIVEN_F)
    } else {
        rng.pick(GIVEN_M)
    };
    let (ods, practice, town, district) = *rng.pick(PRACTICES);
    let year = 1930 + rng.below(90);
    let month = 1 + rng.below(12);
    let day = 1 + rng.below(28);
    json!({
        "resourceType": "Patient",
        "identifier": [{
            "extension": [{
                "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
                "valueCodeableConcept": {"coding": [{
                    "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
                    "code": "01",
                    "display": "Number present and verified"
                }]}
            }],
            "system": "https://fhir.nhs.uk/Id/nhs-number",
            "value": test_nhs_number(rng)
        }],
        "active": true,
        "name": [{"use": "official", "family": rng.pick(FAMILY), "given": [given], "prefix": [if female { "Ms" } else { "Mr" }]}],
        "telecom": [{"system": "phone", "value": format!("07700 900{:03}", rng.below(1000)), "use": "mobile"}],
        "gender": if female { "female" } else { "male" },
        "birthDate": format!("{year:04}-{month:02}-{day:02}"),
        "address": [{
            "use": "home",
            "line": [format!("{} {}", 1 + rng.below(200), rng.pick(STREETS))],
            "city": town,
            "postalCode": format!("{district} {}{}{}", rng.below(10), (b'A' + rng.below(26) as u8) as char, (b'A' + rng.below(26) as u8) as char),
            "country": "GB"
        }],
        "generalPractitioner": [{
            "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods},
            "display": practice
        }]
    })
}

/// (LOINC code, display, unit, low, high, decimals).
const VITALS: &[(&str, &str, &str, f64, f64, usize)] = &[
    ("8867-4", "Heart rate", "/min", 50.0, 110.0, 0),
    ("29463-7", "Body weight", "kg", 45.0, 120.0, 1),
    ("8302-2", "Body height", "cm", 150.0, 195.0, 1),
    ("8310-5", "Body temperature", "Cel", 35.8, 38.5, 1),
    (
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        "%",
        90.0,
        100.0,
        0,
    ),
    ("9279-1", "Respiratory rate", "/min", 10.0, 24.0, 0),
];

/// A final vital-signs Observation for `Patient/{patient_id}`.
pub(crate) fn observation(rng: &mut Rng, patient_id: &str) -> Value {
    let (code, display, unit, low, high, decimals) = *rng.pick(VITALS);
    let fraction = rng.below(10_000) as f64 / 10_000.0;
    let value = format!("{:.*}", decimals, low + (high - low) * fraction);
    let value: Value = serde_json::from_str(&value).unwrap_or(Value::Null);
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
            "display": "Vital Signs"
        }]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": format!("2024-{:02}-{:02}T{:02}:{:02}:00Z", 1 + rng.below(12), 1 + rng.below(28), 8 + rng.below(10), rng.below(60)),
        "performer": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": rng.pick(PRACTICES).0}}],
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    })
}

#[cfg(test)]
mod tests {
    use carelayer_fhir::validate::{Severity, validate_resource};

    use super::*;

    #[test]
    fn nhs_numbers_have_valid_check_digits() {
        // The NHS's own published example.
        assert_eq!(
            nhs_number_from_stem(943_476_591).as_deref(),
            Some("9434765919")
        );
        // 999 123 456: the weighted sum leaves check digit 10, no number.
        assert_eq!(nhs_number_from_stem(999_123_456), None);
        assert_eq!(nhs_number_from_stem(111_111_111), None);
        let mut rng = Rng::new(7);
        for _ in 0..1000 {
            let n = test_nhs_number(&mut rng);
            assert!(n.starts_with("999") && n.len() == 10, "{n}");
            let stem: u32 = n[..9].parse().unwrap_or(0);
            assert_eq!(nhs_number_from_stem(stem).as_deref(), Some(n.as_str()));
        }
    }

    #[test]
    fn resources_are_valid_r4() {
        let mut rng = Rng::new(1);
        for _ in 0..50 {
            let p = patient(&mut rng);
            let o = observation(&mut rng, "abc");
            for resource in [p, o] {
                let errors: Vec<_> = validate_resource(&resource)
                    .into_iter()
                    .filter(|i| matches!(i.severity, Severity::Error))
                    .collect();
                assert!(errors.is_empty(), "{resource}: {errors:?}");
            }
        }
    }
}
