//! The shared part of a synthetic population: GP practices, acute trusts
//! and their practitioners. Patients are registered at practices in their
//! town and seen by those practices' GPs and the town's trust clinicians.

use std::fmt::Write as _;

use crate::synth::json::{coding, w};
use crate::synth::rng::Rng;
use crate::synth::tables::{FEMALE_NAMES, MALE_NAMES, PRACTICE_NAMES, STREETS, SURNAMES, TOWNS};
use crate::synth::{Kind, Sink};

pub(crate) const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const ROLE_SYSTEM: &str =
    "https://directory.spineservices.nhs.uk/STU3/CodeSystem/ODSAPI-OrganizationRole-1";

pub(crate) struct Practitioner {
    pub id: String,
    /// "Dr Sarah Jones"
    pub display: String,
}

pub(crate) struct Org {
    /// The ODS code, also the resource id.
    pub ods: String,
    pub name: String,
    pub town: usize,
    /// Practitioners working here.
    pub staff: Vec<Practitioner>,
}

pub(crate) struct World {
    pub seed: u64,
    pub practices: Vec<Org>,
    /// One acute trust per town entry.
    pub trusts: Vec<Org>,
    /// Practice indexes by town.
    pub practices_by_town: Vec<Vec<usize>>,
}

impl World {
    /// Practices for `patients` patients (roughly one per 400, at least one
    /// per town), with 2–8 GPs each, and 6 consultants per trust.
    pub(crate) fn new(seed: u64, patients: u64) -> Self {
        let mut rng = Rng::derive(seed, u64::MAX);
        let mut next_prac = 1u64;
        let mut practitioner = |rng: &mut Rng, title: &str| {
            let female = rng.chance(0.55);
            let given = if female {
                rng.pick(FEMALE_NAMES)
            } else {
                rng.pick(MALE_NAMES)
            };
            let family = rng.pick(SURNAMES);
            let id = format!("prac-{next_prac}");
            next_prac += 1;
            (
                Practitioner {
                    id,
                    display: format!("{title} {given} {family}"),
                },
                female,
                *given,
                *family,
            )
        };
        let total = (patients / 400).max(TOWNS.len() as u64) as usize;
        let weight_sum: u32 = TOWNS.iter().map(|t| t.weight).sum();
        let mut practices = Vec::with_capacity(total);
        let mut practices_by_town = vec![Vec::new(); TOWNS.len()];
        for (t, town) in TOWNS.iter().enumerate() {
            let n = ((total as u64 * u64::from(town.weight)) / u64::from(weight_sum)).max(1);
            for _ in 0..n {
                let k = practices.len();
                let ods = format!("{}{:05}", town.ods_prefix, 81_001 + k);
                let name = match rng.below(3) {
                    0 => format!("{} {}", rng.pick(STREETS), rng.pick(PRACTICE_NAMES)),
                    1 => format!("{} {}", town.name, rng.pick(PRACTICE_NAMES)),
                    _ => format!("The {} {}", rng.pick(STREETS), rng.pick(PRACTICE_NAMES)),
                };
                let gps = rng.range(2, 8) as usize;
                let staff = (0..gps).map(|_| practitioner(&mut rng, "Dr").0).collect();
                practices_by_town[t].push(k);
                practices.push(Org {
                    ods,
                    name,
                    town: t,
                    staff,
                });
            }
        }
        let trusts = TOWNS
            .iter()
            .enumerate()
            .map(|(t, town)| Org {
                ods: town.trust_ods.to_owned(),
                name: town.trust_name.to_owned(),
                town: t,
                staff: (0..6).map(|_| practitioner(&mut rng, "Dr").0).collect(),
            })
            .collect();
        Self {
            seed,
            practices,
            trusts,
            practices_by_town,
        }
    }

    /// Write the Organizations and Practitioners.
    pub(crate) fn emit(&self, sink: &mut dyn Sink, buf: &mut String) {
        let mut rng = Rng::derive(self.seed, u64::MAX - 1);
        let mut seen_trusts = std::collections::HashSet::new();
        for (org, role, role_name) in self
            .practices
            .iter()
            .map(|o| (o, "RO76", "GP PRACTICE"))
            .chain(self.trusts.iter().map(|o| (o, "RO197", "NHS TRUST")))
        {
            // Two London entries share no trust, but guard against duplicates.
            if role == "RO197" && !seen_trusts.insert(org.ods.clone()) {
                continue;
            }
            let town = &TOWNS[org.town];
            buf.clear();
            w!(
                buf,
                r#"{{"resourceType":"Organization","id":"{}","identifier":[{{"system":"{ODS_SYSTEM}","value":"{}"}}],"active":true,"type":[{{"coding":["#,
                org.ods,
                org.ods
            );
            coding(buf, ROLE_SYSTEM, role, role_name);
            w!(
                buf,
                r#"]}}],"name":"{}","telecom":[{{"system":"phone","value":"0{} 496 {:04}","use":"work"}}],"address":[{{"use":"work","line":["{} {} Road"],"city":"{}","district":"{}","postalCode":"{}","country":"GB"}}]}}"#,
                org.name,
                rng.range(113, 191),
                rng.range(0, 999),
                rng.range(1, 200),
                rng.pick(STREETS),
                town.name,
                town.district,
                postcode(&mut rng, org.town)
            );
            sink.emit(Kind::Organization, buf);
        }
        for org in self.practices.iter().chain(self.trusts.iter()) {
            for p in &org.staff {
                let mut parts = p.display.splitn(3, ' ');
                let (prefix, given, family) = (
                    parts.next().unwrap_or("Dr"),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                );
                buf.clear();
                w!(
                    buf,
                    r#"{{"resourceType":"Practitioner","id":"{}","identifier":[{{"system":"https://fhir.nhs.uk/Id/sds-user-id","value":"{:012}"}},{{"system":"https://fhir.hl7.org.uk/Id/gmc-number","value":"{}"}}],"active":true,"name":[{{"use":"official","family":"{family}","given":["{given}"],"prefix":["{prefix}"]}}],"telecom":[{{"system":"email","value":"{}.{}@nhs.net","use":"work"}}],"gender":"{}"}}"#,
                    p.id,
                    rng.range(100_000_000_000, 999_999_999_999),
                    rng.range(2_000_000, 7_999_999),
                    given.to_ascii_lowercase(),
                    family.to_ascii_lowercase().replace('\'', ""),
                    if FEMALE_NAMES.contains(&given) {
                        "female"
                    } else {
                        "male"
                    }
                );
                sink.emit(Kind::Practitioner, buf);
            }
        }
    }
}

/// A real-format postcode in a town's area: `LS6 2QL`, `SE15 4TZ`.
pub(crate) fn postcode(rng: &mut Rng, town: usize) -> String {
    let t = &TOWNS[town];
    let letters = crate::synth::tables::INWARD_LETTERS;
    let a = letters[rng.below(letters.len() as u64) as usize] as char;
    let b = letters[rng.below(letters.len() as u64) as usize] as char;
    format!(
        "{}{} {}{a}{b}",
        t.area,
        rng.range(1, i64::from(t.districts)),
        rng.range(1, 9)
    )
}
