//! One synthetic patient and their record: demographics, encounters,
//! conditions, observations, medication requests, allergies, immunisations
//! and consents. Everything comes from the patient's own random stream
//! (`Rng::derive(seed, index)`), so a patient is the same whatever else is
//! generated and however the work is split.

use std::fmt::Write as _;

use crate::synth::json::{coding, concept, decimal, reference, w};
use crate::synth::rng::{Date, DateTime, Rng, TODAY};
use crate::synth::tables::{
    ACUTE, ACUTE_MEDICINE, ADMISSION, AE_VISIT, ALLERGIES, CHRONIC, CVX, Code, DMD, FEMALE_NAMES,
    GP_CHECK, GP_REVIEW, GP_VISIT, LABS, LOINC, MALE_NAMES, MEDICINES, Measure, OUTPATIENT,
    SMOKING, SNOMED, STREET_KINDS, STREETS, SURNAMES, Sensitivity, TOWNS, UCUM, VACCINES, VITALS,
};
use crate::synth::world::{ODS_SYSTEM, Org, World, postcode};
use crate::synth::{Kind, Sink};

const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const YEAR: f64 = 365.25;

/// Most patients one data set can hold (the 999 range gives each patient a
/// distinct, valid number up to this many).
pub const MAX_PATIENTS: u64 = 500_000;

/// A valid, distinct 999-range NHS number for patient `index` (1-based):
/// a permutation of even stems, moved to the next (odd) stem when the check
/// digit would be 10 (changing the last stem digit by one moves the check
/// digit by two, so the neighbour is always valid).
pub(crate) fn nhs_number(seed: u64, index: u64) -> String {
    let slot = (index
        .wrapping_mul(7919)
        .wrapping_add(seed.wrapping_mul(104_729)))
        % MAX_PATIENTS;
    let mut stem = 999_000_000 + slot * 2;
    let mut check = check_digit(stem);
    if check.is_none() {
        stem += 1;
        check = check_digit(stem);
    }
    format!("{stem}{}", check.unwrap_or(0))
}

fn check_digit(stem: u64) -> Option<u64> {
    let mut sum = 0;
    let mut s = stem;
    for weight in 2..=10 {
        sum += (s % 10) * weight;
        s /= 10;
    }
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        c => Some(c),
    }
}

/// What the rest of the record needs to know about the patient.
struct Person<'w> {
    index: u64,
    id: String,
    male: bool,
    birth: i64,
    age: i64,
    /// First day of this patient's record here.
    start: i64,
    practice: &'w Org,
    trust: &'w Org,
    /// The usual GP (index into `practice.staff`).
    gp: usize,
    height_cm: f64,
    bmi: f64,
    systolic: f64,
    diastolic: f64,
    chronic: Vec<(usize, i64, String)>,
}

impl Person<'_> {
    fn gp(&self) -> (&str, &str) {
        let p = &self.practice.staff[self.gp];
        (&p.id, &p.display)
    }

    fn any_gp(&self, rng: &mut Rng) -> (&str, &str) {
        let p = rng.pick(&self.practice.staff);
        (&p.id, &p.display)
    }

    fn clinician(&self, rng: &mut Rng) -> (&str, &str) {
        let p = rng.pick(&self.trust.staff);
        (&p.id, &p.display)
    }

    fn has(&self, code: &str) -> bool {
        self.chronic
            .iter()
            .any(|(c, _, _)| CHRONIC[*c].code == code)
    }
}

/// Counters for resource ids within one patient.
#[derive(Default)]
struct Ids {
    enc: u32,
    con: u32,
    obs: u32,
    med: u32,
    alg: u32,
    imm: u32,
    cns: u32,
}

/// Generate patient `index` (1-based) and their record.
pub(crate) fn generate(world: &World, index: u64, sink: &mut dyn Sink, buf: &mut String) {
    let mut rng = Rng::derive(world.seed, index);
    let mut ids = Ids::default();
    let male = rng.chance(0.495);
    let age_band = *rng.weighted(&[
        (6, (0, 4)),
        (15, (5, 17)),
        (16, (18, 29)),
        (20, (30, 44)),
        (25, (45, 64)),
        (13, (65, 79)),
        (5, (80, 99)),
    ]);
    let age = rng.range(age_band.0, age_band.1);
    let birth = TODAY - (age as f64 * YEAR) as i64 - rng.range(0, 364);
    let town = {
        let weights: Vec<(u32, usize)> = TOWNS
            .iter()
            .enumerate()
            .map(|(i, t)| (t.weight, i))
            .collect();
        *rng.weighted(&weights)
    };
    let practices = &world.practices_by_town[town];
    let practice = &world.practices[*rng.pick(practices)];
    let trust = &world.trusts[town];
    let start = birth.max(TODAY - rng.range(3, 25) * 365);
    let height_cm = if male {
        176.0 + 7.0 * rng.normal()
    } else {
        163.0 + 6.0 * rng.normal()
    };
    let bmi = (27.0 + 4.5 * rng.normal()).clamp(16.0, 48.0);
    let mut person = Person {
        index,
        id: format!("pat-{index}"),
        male,
        birth,
        age,
        start,
        practice,
        trust,
        gp: rng.below(practice.staff.len() as u64) as usize,
        height_cm,
        bmi,
        systolic: 112.0 + 0.35 * age as f64 + 9.0 * rng.normal(),
        diastolic: 70.0 + 0.1 * age as f64 + 6.0 * rng.normal(),
        chronic: Vec::new(),
    };

    // How big this record is: 100–500 resources, with a long tail.
    let u = rng.unit();
    let mut target = (100.0 + 400.0 * u * u * u) * (0.75 + age as f64 / 160.0);
    if rng.chance(0.02) {
        target *= 2.0 + 2.0 * rng.unit();
    }
    let target = target as usize;

    write_patient(&mut rng, &person, town, world.seed, sink, buf);

    // Long-term conditions.
    for (c, chronic) in CHRONIC.iter().enumerate() {
        if age < chronic.min_age {
            continue;
        }
        let factor = (1.0 + (age - chronic.min_age) as f64 / 40.0).min(2.5);
        if !rng.chance(f64::from(chronic.per_mille) / 1000.0 * factor) {
            continue;
        }
        let earliest = (birth + (chronic.min_age as f64 * YEAR) as i64).max(TODAY - 30 * 365);
        let onset = rng.range(earliest, TODAY - 60);
        let id = next_id(&mut ids.con, "con", index);
        let recorder = person.gp().0.to_owned();
        write_condition(
            buf,
            &id,
            &person.id,
            None,
            (SNOMED, chronic.code, chronic.display),
            chronic.sensitivity,
            "problem-list-item",
            onset,
            None,
            &recorder,
        );
        sink.emit(Kind::Condition, buf);
        person.chronic.push((c, onset, id));
    }
    if person.has("38341003") {
        person.systolic += 14.0;
        person.diastolic += 7.0;
    }

    // Budgets for the rest of the record.
    let encounters = (target * 14 / 100).max(2);
    let mut obs_budget = target * 50 / 100;
    let mut med_budget = target * 17 / 100;

    // Repeat prescriptions for long-term conditions.
    let repeats: Vec<(usize, i64, String, Sensitivity)> = person
        .chronic
        .iter()
        .filter_map(|(c, onset, con)| {
            CHRONIC[*c]
                .medicine
                .map(|m| (m, (*onset).max(start), con.clone(), CHRONIC[*c].sensitivity))
        })
        .collect();
    if !repeats.is_empty() {
        let share = (med_budget * 3 / 4) / repeats.len();
        for (m, from, con, sensitivity) in &repeats {
            let span = (TODAY - from).max(1);
            let issues = ((span / 56) as usize).clamp(1, share.max(1));
            let step = span / issues as i64;
            for k in 0..issues {
                let day = from + step * k as i64 + rng.range(0, 6);
                let authored = DateTime::in_hours(&mut rng, day.min(TODAY));
                let status = if k + 1 == issues {
                    "active"
                } else {
                    "completed"
                };
                let id = next_id(&mut ids.med, "med", index);
                let (gp, _) = person.any_gp(&mut rng);
                let gp = gp.to_owned();
                write_medication(
                    &mut rng,
                    buf,
                    &id,
                    &person.id,
                    None,
                    *m,
                    status,
                    true,
                    authored,
                    &gp,
                    Some(con),
                    *sensitivity,
                );
                sink.emit(Kind::MedicationRequest, buf);
                med_budget = med_budget.saturating_sub(1);
            }
        }
    }

    // Encounters, with what happened at them.
    let mut days: Vec<i64> = (0..encounters).map(|_| rng.range(start, TODAY)).collect();
    days.sort_unstable();
    let smoking = *rng.weighted(SMOKING);
    for day in days {
        let kind = *rng.weighted(&[(78u32, 0u8), (8, 1), (9, 2), (5, 3)]);
        let enc = next_id(&mut ids.enc, "enc", index);
        let at = DateTime::in_hours(&mut rng, day);
        let (who, who_display, org, class, ty, minutes) = match kind {
            0 => {
                let (id, d) = person.any_gp(&mut rng);
                let ty = *rng.weighted(&[(60u32, GP_VISIT), (25, GP_REVIEW), (15, GP_CHECK)]);
                (
                    id.to_owned(),
                    d.to_owned(),
                    person.practice,
                    ("AMB", "ambulatory"),
                    ty,
                    10 + rng.range(0, 10),
                )
            }
            1 => {
                let (id, d) = person.clinician(&mut rng);
                (
                    id.to_owned(),
                    d.to_owned(),
                    person.trust,
                    ("AMB", "ambulatory"),
                    OUTPATIENT,
                    20 + rng.range(0, 25),
                )
            }
            2 => {
                let (id, d) = person.clinician(&mut rng);
                (
                    id.to_owned(),
                    d.to_owned(),
                    person.trust,
                    ("EMER", "emergency"),
                    AE_VISIT,
                    90 + rng.range(0, 300),
                )
            }
            _ => {
                let (id, d) = person.clinician(&mut rng);
                (
                    id.to_owned(),
                    d.to_owned(),
                    person.trust,
                    ("IMP", "inpatient encounter"),
                    ADMISSION,
                    1440 * rng.range(1, 9),
                )
            }
        };
        let end = at.plus_minutes(minutes);
        write_encounter(
            buf,
            &enc,
            &person.id,
            class,
            ty,
            &who,
            &who_display,
            org,
            at,
            end,
        );
        sink.emit(Kind::Encounter, buf);

        // Observations.
        let mut measures: Vec<(&Measure, &str)> = Vec::new();
        let adult = age - (TODAY - day) / 365 >= 16;
        match (kind, ty.1) {
            (0, "185349003") | (0, "390906007") | (1, _) => {
                if adult {
                    measures.push((&VITALS[1], "vital-signs"));
                    measures.push((&VITALS[3], "vital-signs"));
                    measures.push((&VITALS[0], "vital-signs"));
                }
                let mut labs: Vec<usize> = person
                    .chronic
                    .iter()
                    .flat_map(|(c, onset, _)| if *onset <= day { CHRONIC[*c].labs } else { &[] })
                    .copied()
                    .collect();
                if labs.is_empty() && adult && age >= 40 && rng.chance(0.4) {
                    labs.extend([1, 3, 8]);
                }
                labs.sort_unstable();
                labs.dedup();
                for l in labs {
                    measures.push((&LABS[l], "laboratory"));
                }
            }
            (2 | 3, _) => {
                for v in [0, 4, 5, 6] {
                    measures.push((&VITALS[v], "vital-signs"));
                }
                if rng.chance(0.5) {
                    for l in [8, 5, 6, 4] {
                        measures.push((&LABS[l], "laboratory"));
                    }
                }
            }
            _ => {
                if rng.chance(0.3) {
                    measures.push((&VITALS[4], "vital-signs"));
                }
            }
        }
        let bp = adult && kind != 3 && obs_budget > 0 && rng.chance(0.7);
        if bp {
            let id = next_id(&mut ids.obs, "obs", index);
            write_bp(&mut rng, buf, &id, &person, &enc, at, &who);
            sink.emit(Kind::Observation, buf);
            obs_budget -= 1;
        }
        if kind == 0 && ty.1 == "185349003" && adult && obs_budget > 0 {
            let id = next_id(&mut ids.obs, "obs", index);
            write_smoking(buf, &id, &person.id, &enc, at, &who, smoking);
            sink.emit(Kind::Observation, buf);
            obs_budget -= 1;
        }
        for (m, category) in measures {
            if obs_budget == 0 {
                break;
            }
            let id = next_id(&mut ids.obs, "obs", index);
            let value = value_of(&mut rng, &person, m, day);
            write_measure(buf, &id, &person.id, &enc, at, &who, m, category, value);
            sink.emit(Kind::Observation, buf);
            obs_budget -= 1;
        }

        // An acute problem, sometimes treated.
        if kind == 0 && ty.1 == "185347001" && rng.chance(0.6) {
            let a = rng.below(ACUTE.len() as u64) as usize;
            let (code, display, sensitivity) = ACUTE[a];
            let sensitive_ok =
                matches!(sensitivity, Sensitivity::Normal) || (age >= 16 && rng.chance(0.3));
            if sensitive_ok {
                let con = next_id(&mut ids.con, "con", index);
                write_condition(
                    buf,
                    &con,
                    &person.id,
                    Some(&enc),
                    (SNOMED, code, display),
                    sensitivity,
                    "encounter-diagnosis",
                    day - rng.range(0, 7),
                    Some(day + rng.range(5, 30)),
                    &who,
                );
                sink.emit(Kind::Condition, buf);
                if let Some(m) = ACUTE_MEDICINE[a]
                    && med_budget > 0
                {
                    let id = next_id(&mut ids.med, "med", index);
                    write_medication(
                        &mut rng,
                        buf,
                        &id,
                        &person.id,
                        Some(&enc),
                        m,
                        "completed",
                        false,
                        at.plus_minutes(minutes),
                        &who,
                        Some(&con),
                        sensitivity,
                    );
                    sink.emit(Kind::MedicationRequest, buf);
                    med_budget -= 1;
                }
            }
        }
    }

    write_allergies(&mut rng, &mut ids, &person, sink, buf);
    write_immunizations(&mut rng, &mut ids, &person, sink, buf);
    write_consents(&mut rng, &mut ids, &person, sink, buf);
}

fn next_id(counter: &mut u32, prefix: &str, index: u64) -> String {
    let id = format!("{prefix}-{index}-{counter}");
    *counter += 1;
    id
}

fn security(buf: &mut String, sensitivity: Sensitivity) {
    if let Sensitivity::Sensitive(code, display) = sensitivity {
        buf.push_str(r#""meta":{"security":["#);
        coding(buf, ACT_CODE, code, display);
        buf.push(',');
        coding(buf, CONFIDENTIALITY, "R", "restricted");
        buf.push_str("]},");
    }
}

fn write_patient(
    rng: &mut Rng,
    p: &Person<'_>,
    town: usize,
    seed: u64,
    sink: &mut dyn Sink,
    buf: &mut String,
) {
    let restricted = rng.chance(0.007);
    let given = if p.male {
        rng.pick(MALE_NAMES)
    } else {
        rng.pick(FEMALE_NAMES)
    };
    let middle = if p.male {
        rng.pick(MALE_NAMES)
    } else {
        rng.pick(FEMALE_NAMES)
    };
    let family = rng.pick(SURNAMES);
    let gender = if rng.chance(0.003) {
        "other"
    } else if p.male {
        "male"
    } else {
        "female"
    };
    let prefix = match (p.male, p.age) {
        (_, a) if a < 16 => None,
        (true, _) => Some("Mr"),
        (false, a) if a > 30 && rng.chance(0.6) => Some("Mrs"),
        (false, _) => Some(*rng.pick(&["Ms", "Miss"])),
    };
    buf.clear();
    w!(buf, r#"{{"resourceType":"Patient","id":"{}","#, p.id);
    if restricted {
        buf.push_str(r#""meta":{"security":["#);
        coding(buf, CONFIDENTIALITY, "R", "restricted");
        buf.push_str("]},");
    }
    w!(
        buf,
        r#""identifier":[{{"extension":[{{"url":"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus","valueCodeableConcept":"#
    );
    concept(
        buf,
        "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
        "01",
        "Number present and verified",
    );
    w!(
        buf,
        r#"}}],"system":"{NHS_SYSTEM}","value":"{}"}}],"active":true,"name":[{{"use":"official","family":"{family}","given":["{given}""#,
        nhs_number(seed, p.index)
    );
    if rng.chance(0.5) {
        w!(buf, r#","{middle}""#);
    }
    buf.push(']');
    if let Some(prefix) = prefix {
        w!(buf, r#","prefix":["{prefix}"]"#);
    }
    w!(buf, r#","period":{{"start":"{}"}}}}]"#, Date(p.birth));
    if !restricted {
        w!(
            buf,
            r#","telecom":[{{"system":"phone","value":"07700 900{:03}","use":"mobile","rank":1}}"#,
            rng.range(0, 999)
        );
        if p.age >= 16 && rng.chance(0.4) {
            w!(
                buf,
                r#",{{"system":"email","value":"{}.{}{}@example.com","use":"home"}}"#,
                given.to_ascii_lowercase(),
                family.to_ascii_lowercase().replace('\'', ""),
                rng.range(1, 99)
            );
        }
        buf.push(']');
    }
    w!(
        buf,
        r#","gender":"{gender}","birthDate":"{}""#,
        Date(p.birth)
    );
    if !restricted {
        let t = &TOWNS[town];
        w!(
            buf,
            r#","address":[{{"use":"home","type":"both","line":["{} {} {}"],"city":"{}","district":"{}","postalCode":"{}","country":"GB","period":{{"start":"{}"}}}}]"#,
            rng.range(1, 240),
            rng.pick(STREETS),
            rng.pick(STREET_KINDS),
            t.name,
            t.district,
            postcode(rng, town),
            Date(p.start)
        );
    }
    w!(
        buf,
        r#","generalPractitioner":[{{"reference":"Organization/{}","identifier":{{"system":"{ODS_SYSTEM}","value":"{}"}},"display":"{}"}}]"#,
        p.practice.ods,
        p.practice.ods,
        p.practice.name
    );
    w!(
        buf,
        r#","managingOrganization":{{"reference":"Organization/{}"}}}}"#,
        p.practice.ods
    );
    sink.emit(Kind::Patient, buf);
}

#[allow(clippy::too_many_arguments)]
fn write_encounter(
    buf: &mut String,
    id: &str,
    patient: &str,
    class: (&str, &str),
    ty: Code,
    who: &str,
    who_display: &str,
    org: &Org,
    start: DateTime,
    end: DateTime,
) {
    buf.clear();
    w!(
        buf,
        r#"{{"resourceType":"Encounter","id":"{id}","status":"finished","class":"#
    );
    coding(buf, ACT_CODE, class.0, class.1);
    buf.push_str(r#","type":["#);
    concept(buf, ty.0, ty.1, ty.2);
    buf.push_str(r#"],"subject":"#);
    reference(buf, "Patient", patient, None);
    buf.push_str(r#","participant":[{"type":["#);
    concept(
        buf,
        "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
        "PPRF",
        "primary performer",
    );
    buf.push_str(r#"],"individual":"#);
    reference(buf, "Practitioner", who, Some(who_display));
    w!(
        buf,
        r#"}}],"period":{{"start":"{start}","end":"{end}"}},"serviceProvider":"#
    );
    reference(buf, "Organization", &org.ods, Some(&org.name));
    buf.push('}');
}

#[allow(clippy::too_many_arguments)]
fn write_condition(
    buf: &mut String,
    id: &str,
    patient: &str,
    encounter: Option<&str>,
    code: Code,
    sensitivity: Sensitivity,
    category: &str,
    onset: i64,
    abatement: Option<i64>,
    recorder: &str,
) {
    buf.clear();
    w!(buf, r#"{{"resourceType":"Condition","id":"{id}","#);
    security(buf, sensitivity);
    buf.push_str(r#""clinicalStatus":"#);
    if abatement.is_some() {
        concept(
            buf,
            "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "resolved",
            "Resolved",
        );
    } else {
        concept(
            buf,
            "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "active",
            "Active",
        );
    }
    buf.push_str(r#","verificationStatus":"#);
    concept(
        buf,
        "http://terminology.hl7.org/CodeSystem/condition-ver-status",
        "confirmed",
        "Confirmed",
    );
    buf.push_str(r#","category":["#);
    let category_display = if category == "encounter-diagnosis" {
        "Encounter Diagnosis"
    } else {
        "Problem List Item"
    };
    concept(
        buf,
        "http://terminology.hl7.org/CodeSystem/condition-category",
        category,
        category_display,
    );
    buf.push_str(r#"],"code":{"coding":["#);
    coding(buf, code.0, code.1, code.2);
    w!(buf, r#"],"text":"{}"}},"subject":"#, code.2);
    reference(buf, "Patient", patient, None);
    if let Some(enc) = encounter {
        buf.push_str(r#","encounter":"#);
        reference(buf, "Encounter", enc, None);
    }
    w!(buf, r#","onsetDateTime":"{}""#, Date(onset));
    if let Some(a) = abatement {
        w!(buf, r#","abatementDateTime":"{}""#, Date(a.min(TODAY)));
    }
    w!(
        buf,
        r#","recordedDate":"{}","recorder":"#,
        Date(onset.min(TODAY))
    );
    reference(buf, "Practitioner", recorder, None);
    buf.push('}');
}

#[allow(clippy::too_many_arguments)]
fn write_medication(
    rng: &mut Rng,
    buf: &mut String,
    id: &str,
    patient: &str,
    encounter: Option<&str>,
    medicine: usize,
    status: &str,
    repeat: bool,
    authored: DateTime,
    requester: &str,
    reason: Option<&str>,
    sensitivity: Sensitivity,
) {
    let m = &MEDICINES[medicine];
    let days = if repeat {
        28
    } else {
        (m.pack / m.per_day.max(1)).max(1)
    };
    buf.clear();
    w!(buf, r#"{{"resourceType":"MedicationRequest","id":"{id}","#);
    security(buf, sensitivity);
    w!(buf, r#""status":"{status}","intent":"order","category":["#);
    concept(
        buf,
        "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
        "community",
        "Community",
    );
    buf.push_str(r#"],"medicationCodeableConcept":"#);
    concept(buf, DMD, m.code, m.name);
    buf.push_str(r#","subject":"#);
    reference(buf, "Patient", patient, None);
    if let Some(enc) = encounter {
        buf.push_str(r#","encounter":"#);
        reference(buf, "Encounter", enc, None);
    }
    w!(buf, r#","authoredOn":"{authored}","requester":"#);
    reference(buf, "Practitioner", requester, None);
    if let Some(reason) = reason {
        buf.push_str(r#","reasonReference":["#);
        reference(buf, "Condition", reason, None);
        buf.push(']');
    }
    buf.push_str(r#","courseOfTherapyType":"#);
    if repeat {
        concept(
            buf,
            "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy",
            "continuous",
            "Continuous long term therapy",
        );
    } else {
        concept(
            buf,
            "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy",
            "acute",
            "Short course (acute) therapy",
        );
    }
    w!(
        buf,
        r#","dosageInstruction":[{{"sequence":1,"text":"{}","timing":{{"repeat":{{"frequency":{},"period":1,"periodUnit":"d"}}}}"#,
        m.dose_text,
        m.per_day
    );
    if m.unit != "dose" {
        buf.push_str(r#","route":"#);
        concept(buf, SNOMED, "26643006", "Oral route");
    }
    let quantity = if repeat { m.per_day * 28 } else { m.pack };
    w!(
        buf,
        r#"}}],"dispenseRequest":{{"validityPeriod":{{"start":"{}","end":"{}"}},"numberOfRepeatsAllowed":{},"quantity":{{"value":{quantity},"unit":"{}","system":"{SNOMED}","code":"{}"}},"expectedSupplyDuration":{{"value":{days},"unit":"days","system":"{UCUM}","code":"d"}}}}}}"#,
        Date(authored.day),
        Date(authored.day + 180),
        if repeat { rng.range(0, 5) } else { 0 },
        m.unit,
        m.unit_code
    );
}

fn obs_head(buf: &mut String, id: &str, category: &str, category_display: &str) {
    buf.clear();
    w!(
        buf,
        r#"{{"resourceType":"Observation","id":"{id}","status":"final","category":["#
    );
    concept(buf, OBS_CATEGORY, category, category_display);
    buf.push_str(r#"],"code":{"coding":["#);
}

fn obs_context(
    buf: &mut String,
    patient: &str,
    encounter: &str,
    at: DateTime,
    issued: DateTime,
    performer: &str,
) {
    buf.push_str(r#","subject":"#);
    reference(buf, "Patient", patient, None);
    buf.push_str(r#","encounter":"#);
    reference(buf, "Encounter", encounter, None);
    w!(
        buf,
        r#","effectiveDateTime":"{at}","issued":"{issued}","performer":["#
    );
    reference(buf, "Practitioner", performer, None);
    buf.push(']');
}

fn quantity(buf: &mut String, value: f64, decimals: usize, unit: &str, ucum: &str) {
    buf.push_str(r#"{"value":"#);
    decimal(buf, value, decimals);
    w!(
        buf,
        r#","unit":"{unit}","system":"{UCUM}","code":"{ucum}"}}"#
    );
}

fn write_bp(
    rng: &mut Rng,
    buf: &mut String,
    id: &str,
    p: &Person<'_>,
    encounter: &str,
    at: DateTime,
    performer: &str,
) {
    let years = (TODAY - at.day) as f64 / YEAR;
    let sys = (p.systolic - 0.4 * years + 8.0 * rng.normal()).clamp(85.0, 220.0);
    let dia = (p.diastolic - 0.1 * years + 5.0 * rng.normal())
        .clamp(45.0, 130.0)
        .min(sys - 20.0);
    obs_head(buf, id, "vital-signs", "Vital Signs");
    coding(
        buf,
        LOINC,
        "85354-9",
        "Blood pressure panel with all children optional",
    );
    buf.push(',');
    coding(buf, SNOMED, "75367002", "Blood pressure");
    buf.push_str(r#"],"text":"Blood pressure"}"#);
    obs_context(buf, &p.id, encounter, at, at.plus_minutes(1), performer);
    buf.push_str(r#","component":[{"code":"#);
    concept(buf, LOINC, "8480-6", "Systolic blood pressure");
    buf.push_str(r#","valueQuantity":"#);
    quantity(buf, sys.round(), 0, "mmHg", "mm[Hg]");
    buf.push_str(r#"},{"code":"#);
    concept(buf, LOINC, "8462-4", "Diastolic blood pressure");
    buf.push_str(r#","valueQuantity":"#);
    quantity(buf, dia.round(), 0, "mmHg", "mm[Hg]");
    buf.push_str("}]}");
}

fn write_smoking(
    buf: &mut String,
    id: &str,
    patient: &str,
    encounter: &str,
    at: DateTime,
    performer: &str,
    status: (&str, &str),
) {
    obs_head(buf, id, "social-history", "Social History");
    coding(buf, LOINC, "72166-2", "Tobacco smoking status");
    buf.push_str(r#"],"text":"Tobacco smoking status"}"#);
    obs_context(buf, patient, encounter, at, at.plus_minutes(1), performer);
    buf.push_str(r#","valueCodeableConcept":"#);
    concept(buf, SNOMED, status.0, status.1);
    buf.push('}');
}

fn value_of(rng: &mut Rng, p: &Person<'_>, m: &Measure, day: i64) -> f64 {
    let years_ago = (TODAY - day) as f64 / YEAR;
    let height_m = p.height_cm / 100.0;
    let bmi = p.bmi - 0.08 * years_ago;
    let v = match m.loinc {
        "8302-2" => p.height_cm + 0.3 * rng.normal(),
        "29463-7" => bmi * height_m * height_m + 1.2 * rng.normal(),
        "39156-5" => bmi + 0.4 * rng.normal(),
        "59261-8" if p.has("44054006") => 58.0 + 9.0 * rng.normal(),
        "59261-8" => 37.0 + 3.0 * rng.normal(),
        "33914-3" if p.has("709044004") => 42.0 + 8.0 * rng.normal(),
        "33914-3" => (95.0 - 0.5 * p.age as f64) + 10.0 * rng.normal(),
        "14682-9" if p.has("709044004") => 145.0 + 25.0 * rng.normal(),
        "3016-3" if p.has("40930008") => 5.5 + 2.0 * rng.normal(),
        "1920-8" if p.has("7200002") => 65.0 + 20.0 * rng.normal(),
        _ => m.mean + m.sd * rng.normal(),
    };
    v.max(m.mean * 0.15)
}

#[allow(clippy::too_many_arguments)]
fn write_measure(
    buf: &mut String,
    id: &str,
    patient: &str,
    encounter: &str,
    at: DateTime,
    performer: &str,
    m: &Measure,
    category: &str,
    value: f64,
) {
    let lab = category == "laboratory";
    obs_head(
        buf,
        id,
        category,
        if lab { "Laboratory" } else { "Vital Signs" },
    );
    coding(buf, LOINC, m.loinc, m.display);
    if let Some((code, display)) = m.snomed {
        buf.push(',');
        coding(buf, SNOMED, code, display);
    }
    w!(buf, r#"],"text":"{}"}}"#, m.display);
    let issued = if lab {
        at.plus_minutes(60 * 26)
    } else {
        at.plus_minutes(1)
    };
    obs_context(buf, patient, encounter, at, issued, performer);
    buf.push_str(r#","valueQuantity":"#);
    quantity(buf, value, m.decimals, m.unit, m.ucum);
    if m.high > m.low {
        let flag = if value > m.high {
            Some(("H", "High"))
        } else if value < m.low {
            Some(("L", "Low"))
        } else {
            None
        };
        if let Some((code, display)) = flag {
            buf.push_str(r#","interpretation":["#);
            concept(
                buf,
                "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                code,
                display,
            );
            buf.push(']');
        }
        buf.push_str(r#","referenceRange":[{"low":"#);
        quantity(buf, m.low, m.decimals, m.unit, m.ucum);
        buf.push_str(r#","high":"#);
        quantity(buf, m.high, m.decimals, m.unit, m.ucum);
        buf.push_str("}]");
    }
    buf.push('}');
}

fn write_allergies(
    rng: &mut Rng,
    ids: &mut Ids,
    p: &Person<'_>,
    sink: &mut dyn Sink,
    buf: &mut String,
) {
    let n = *rng.weighted(&[(75u32, 0usize), (18, 1), (5, 2), (2, 3)]);
    let (gp, _) = p.gp();
    if n == 0 {
        if rng.chance(0.3) {
            let id = next_id(&mut ids.alg, "alg", p.index);
            buf.clear();
            w!(
                buf,
                r#"{{"resourceType":"AllergyIntolerance","id":"{id}","clinicalStatus":"#
            );
            concept(
                buf,
                "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "active",
                "Active",
            );
            buf.push_str(r#","verificationStatus":"#);
            concept(
                buf,
                "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                "confirmed",
                "Confirmed",
            );
            buf.push_str(r#","code":"#);
            concept(buf, SNOMED, "716186003", "No known allergy");
            buf.push_str(r#","patient":"#);
            reference(buf, "Patient", &p.id, None);
            w!(buf, r#","recordedDate":"{}","recorder":"#, {
                let day = rng.range(p.start, TODAY);
                DateTime::in_hours(rng, day)
            });
            reference(buf, "Practitioner", gp, None);
            buf.push('}');
            sink.emit(Kind::AllergyIntolerance, buf);
        }
        return;
    }
    let first = rng.below(ALLERGIES.len() as u64) as usize;
    for k in 0..n {
        let (code, display, category, reaction) = ALLERGIES[(first + k * 3) % ALLERGIES.len()];
        let id = next_id(&mut ids.alg, "alg", p.index);
        let severe = reaction.0 == "39579001" || rng.chance(0.15);
        buf.clear();
        w!(
            buf,
            r#"{{"resourceType":"AllergyIntolerance","id":"{id}","clinicalStatus":"#
        );
        concept(
            buf,
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            "active",
            "Active",
        );
        buf.push_str(r#","verificationStatus":"#);
        concept(
            buf,
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "confirmed",
            "Confirmed",
        );
        w!(
            buf,
            r#","type":"allergy","category":["{category}"],"criticality":"{}","code":"#,
            if severe { "high" } else { "low" }
        );
        concept(buf, SNOMED, code, display);
        buf.push_str(r#","patient":"#);
        reference(buf, "Patient", &p.id, None);
        let onset = rng.range(p.birth, TODAY);
        w!(
            buf,
            r#","onsetDateTime":"{}","recordedDate":"{}","recorder":"#,
            Date(onset),
            DateTime::in_hours(rng, onset.max(p.start))
        );
        reference(buf, "Practitioner", gp, None);
        buf.push_str(r#","reaction":[{"manifestation":["#);
        concept(buf, SNOMED, reaction.0, reaction.1);
        w!(
            buf,
            r#"],"severity":"{}"}}]}}"#,
            if severe {
                "severe"
            } else {
                *rng.pick(&["mild", "moderate"])
            }
        );
        sink.emit(Kind::AllergyIntolerance, buf);
    }
}

fn write_immunizations(
    rng: &mut Rng,
    ids: &mut Ids,
    p: &Person<'_>,
    sink: &mut dyn Sink,
    buf: &mut String,
) {
    // (vaccine index, days after birth or an absolute day, dose number)
    let mut due: Vec<(usize, i64, u32)> = Vec::new();
    for (v, days, dose) in [
        (0, 56, 1),
        (0, 84, 2),
        (0, 112, 3),
        (3, 56, 1),
        (3, 84, 2),
        (2, 56, 1),
        (2, 112, 2),
        (1, 84, 1),
        (1, 365, 2),
        (2, 365, 3),
        (4, 365, 1),
        (4, 1216, 2),
        (5, 4600, 1),
        (6, 5110, 1),
        (8, 23_741, 1),
        (9, 25_567, 1),
        (9, 25_627, 2),
    ] {
        due.push((v, p.birth + days + rng.range(0, 20), dose));
    }
    let at_risk = p.chronic.iter().any(|(c, _, _)| {
        matches!(
            CHRONIC[*c].code,
            "195967001" | "13645005" | "44054006" | "84114007"
        )
    });
    for year in 2000..2025 {
        let day = crate::synth::rng::days_from_civil(year, 10, 1) + rng.range(0, 60);
        let age = (day - p.birth) as f64 / YEAR;
        if age >= 65.0 || (at_risk && age >= 18.0) {
            due.push((7, day, 1));
        }
    }
    if (TODAY - p.birth) as f64 / YEAR >= 50.0 {
        for (n, (y, m, d)) in [
            (2021, 2, 10),
            (2021, 5, 1),
            (2021, 12, 1),
            (2022, 10, 1),
            (2023, 10, 15),
            (2024, 10, 20),
        ]
        .into_iter()
        .enumerate()
        {
            if rng.chance(0.85) {
                due.push((
                    10,
                    crate::synth::rng::days_from_civil(y, m, d) + rng.range(0, 40),
                    n as u32 + 1,
                ));
            }
        }
    }
    due.sort_by_key(|d| d.1);
    for (v, day, dose) in due {
        if day < p.start || day > TODAY || rng.chance(0.05) {
            continue;
        }
        let vaccine = &VACCINES[v];
        let id = next_id(&mut ids.imm, "imm", p.index);
        let at = DateTime::in_hours(rng, day);
        let (performer, _) = p.any_gp(rng);
        buf.clear();
        w!(
            buf,
            r#"{{"resourceType":"Immunization","id":"{id}","extension":[{{"url":"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-VaccinationProcedure","valueCodeableConcept":"#
        );
        concept(
            buf,
            vaccine.procedure.0,
            vaccine.procedure.1,
            vaccine.procedure.2,
        );
        buf.push_str(r#"}],"status":"completed","vaccineCode":"#);
        concept(buf, CVX, vaccine.cvx, vaccine.display);
        buf.push_str(r#","patient":"#);
        reference(buf, "Patient", &p.id, None);
        w!(
            buf,
            r#","occurrenceDateTime":"{at}","recorded":"{}","primarySource":true,"lotNumber":"{}{:05}","site":"#,
            at.plus_minutes(5),
            *rng.pick(&["FL", "EW", "PF", "AZ", "MS"]),
            rng.range(0, 99_999)
        );
        if vaccine.cvx == "122" {
            concept(
                buf,
                "http://terminology.hl7.org/CodeSystem/v3-ActSite",
                "LA",
                "left arm",
            );
            buf.push_str(r#","route":"#);
            concept(
                buf,
                "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration",
                "PO",
                "Swallow, oral",
            );
        } else {
            let (site, site_display) = *rng.pick(&[
                ("LA", "left arm"),
                ("RA", "right arm"),
                ("LT", "left thigh"),
            ]);
            concept(
                buf,
                "http://terminology.hl7.org/CodeSystem/v3-ActSite",
                site,
                site_display,
            );
            buf.push_str(r#","route":"#);
            concept(
                buf,
                "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration",
                "IM",
                "Injection, intramuscular",
            );
        }
        w!(
            buf,
            r#","doseQuantity":{{"value":0.5,"unit":"ml","system":"{UCUM}","code":"mL"}},"performer":[{{"actor":"#
        );
        reference(buf, "Practitioner", performer, None);
        w!(
            buf,
            r#"}}],"protocolApplied":[{{"doseNumberPositiveInt":{dose}}}]}}"#
        );
        sink.emit(Kind::Immunization, buf);
    }
}

fn write_consents(
    rng: &mut Rng,
    ids: &mut Ids,
    p: &Person<'_>,
    sink: &mut dyn Sink,
    buf: &mut String,
) {
    if p.age >= 13 && rng.chance(0.03) {
        // National data opt-out (NDOP), recorded against the NHS number.
        let id = next_id(&mut ids.cns, "cns", p.index);
        let at = {
            let day = rng.range((TODAY - 7 * 365).max(p.birth + 13 * 365), TODAY);
            DateTime::in_hours(rng, day)
        };
        buf.clear();
        w!(
            buf,
            r#"{{"resourceType":"Consent","id":"{id}","extension":[{{"url":"https://fhir.nhs.uk/StructureDefinition/Extension-NDOP-OptOutSource","valueCodeableConcept":"#
        );
        let (source, source_display) = *rng.pick(&[
            ("OP", "Online Portal"),
            ("PH", "Telephone"),
            ("EM", "Email"),
        ]);
        concept(
            buf,
            "https://fhir.nhs.uk/CodeSystem/NDOP-OptOutSource",
            source,
            source_display,
        );
        buf.push_str(r#"}],"status":"active","scope":"#);
        concept(
            buf,
            "http://terminology.hl7.org/CodeSystem/consentscope",
            "patient-privacy",
            "Privacy Consent",
        );
        buf.push_str(r#","category":["#);
        concept(buf, LOINC, "59284-0", "Patient Consent");
        buf.push_str(r#"],"patient":"#);
        reference(buf, "Patient", &p.id, None);
        w!(buf, r#","dateTime":"{at}","performer":["#);
        reference(buf, "Patient", &p.id, None);
        w!(
            buf,
            r#"],"organization":[{{"identifier":{{"system":"{ODS_SYSTEM}","value":"X26"}},"display":"NHS England"}}],"policy":[{{"authority":"https://www.gov.uk/","uri":"https://www.gov.uk/government/uploads/system/uploads/attachment_data/file/535024/data-security-review.PDF"}}],"provision":{{"type":"deny","purpose":["#
        );
        coding(
            buf,
            SNOMED,
            "370856009",
            "Limiting access to confidential patient information",
        );
        buf.push_str("]}}");
        sink.emit(Kind::Consent, buf);
    }
    if p.age >= 16 && rng.chance(0.015) {
        // Type 1: objection recorded at the GP practice.
        let id = next_id(&mut ids.cns, "cns", p.index);
        let at = {
            let day = rng.range(p.start, TODAY);
            DateTime::in_hours(rng, day)
        };
        buf.clear();
        w!(
            buf,
            r#"{{"resourceType":"Consent","id":"{id}","status":"active","scope":"#
        );
        concept(
            buf,
            "http://terminology.hl7.org/CodeSystem/consentscope",
            "patient-privacy",
            "Privacy Consent",
        );
        buf.push_str(r#","category":["#);
        concept(
            buf,
            SNOMED,
            "827241000000103",
            "Dissent from secondary use of general practitioner patient identifiable data",
        );
        buf.push_str(r#"],"patient":"#);
        reference(buf, "Patient", &p.id, None);
        w!(buf, r#","dateTime":"{at}","performer":["#);
        reference(buf, "Patient", &p.id, None);
        buf.push_str(r#"],"organization":["#);
        reference(buf, "Organization", &p.practice.ods, Some(&p.practice.name));
        buf.push_str(r#"],"policyRule":"#);
        concept(buf, ACT_CODE, "OPTOUT", "opt-out");
        buf.push_str(r#","provision":{"type":"deny","actor":[{"role":"#);
        concept(
            buf,
            "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "CST",
            "custodian",
        );
        buf.push_str(r#","reference":"#);
        reference(buf, "Organization", &p.practice.ods, None);
        buf.push_str(r#"}],"purpose":["#);
        coding(
            buf,
            "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "HRESCH",
            "healthcare research",
        );
        buf.push(',');
        coding(
            buf,
            "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "HOPERAT",
            "healthcare operations",
        );
        buf.push_str("]}}");
        sink.emit(Kind::Consent, buf);
    }
}
