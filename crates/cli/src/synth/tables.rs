//! Reference data for synthetic UK records: names, places, organisations and
//! clinical codes (SNOMED CT, LOINC with UCUM units, dm+d-style medicines,
//! CVX vaccines). Strings here are written into JSON verbatim, so none may
//! contain `"` or `\`.

pub(crate) const MALE_NAMES: &[&str] = &[
    "Oliver",
    "George",
    "Harry",
    "Jack",
    "Jacob",
    "Noah",
    "Charlie",
    "Muhammad",
    "Thomas",
    "Oscar",
    "William",
    "James",
    "Henry",
    "Leo",
    "Alfie",
    "Joshua",
    "Freddie",
    "Archie",
    "Ethan",
    "Isaac",
    "Alexander",
    "Joseph",
    "Edward",
    "Samuel",
    "Max",
    "Daniel",
    "Arthur",
    "Lucas",
    "Mohammed",
    "Logan",
    "David",
    "John",
    "Michael",
    "Paul",
    "Andrew",
    "Peter",
    "Robert",
    "Stephen",
    "Richard",
    "Mark",
    "Christopher",
    "Anthony",
    "Kevin",
    "Ian",
    "Gary",
    "Colin",
    "Keith",
    "Graham",
    "Brian",
    "Raj",
    "Amir",
    "Kwame",
    "Tomasz",
    "Piotr",
];

pub(crate) const FEMALE_NAMES: &[&str] = &[
    "Olivia",
    "Amelia",
    "Isla",
    "Ava",
    "Emily",
    "Isabella",
    "Mia",
    "Poppy",
    "Ella",
    "Lily",
    "Jessica",
    "Sophie",
    "Grace",
    "Evie",
    "Ruby",
    "Freya",
    "Chloe",
    "Sophia",
    "Florence",
    "Daisy",
    "Charlotte",
    "Alice",
    "Sarah",
    "Emma",
    "Rebecca",
    "Hannah",
    "Laura",
    "Rachel",
    "Helen",
    "Susan",
    "Margaret",
    "Patricia",
    "Elizabeth",
    "Jennifer",
    "Karen",
    "Julie",
    "Joanne",
    "Claire",
    "Nicola",
    "Michelle",
    "Deborah",
    "Janet",
    "Carol",
    "Sandra",
    "Priya",
    "Aisha",
    "Fatima",
    "Zainab",
    "Amara",
    "Agnieszka",
    "Siobhan",
    "Niamh",
];

pub(crate) const SURNAMES: &[&str] = &[
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Johnson",
    "Roberts",
    "Robinson",
    "Thompson",
    "Wright",
    "Walker",
    "White",
    "Edwards",
    "Hughes",
    "Green",
    "Hall",
    "Lewis",
    "Harris",
    "Clarke",
    "Patel",
    "Jackson",
    "Wood",
    "Turner",
    "Martin",
    "Cooper",
    "Hill",
    "Ward",
    "Morris",
    "Moore",
    "Clark",
    "Lee",
    "King",
    "Baker",
    "Harrison",
    "Morgan",
    "Allen",
    "James",
    "Scott",
    "Phillips",
    "Watson",
    "Davis",
    "Parker",
    "Price",
    "Bennett",
    "Young",
    "Griffiths",
    "Mitchell",
    "Kelly",
    "Cook",
    "Carter",
    "Richardson",
    "Bailey",
    "Collins",
    "Bell",
    "Shaw",
    "Murphy",
    "Miller",
    "Cox",
    "Richards",
    "Khan",
    "Marshall",
    "Anderson",
    "Simpson",
    "Ellis",
    "Adams",
    "Singh",
    "Begum",
    "Ali",
    "Ahmed",
    "Hussain",
    "Shah",
    "Kaur",
    "Mensah",
    "Okafor",
    "Nowak",
    "Kowalski",
    "O'Brien",
    "O'Connor",
    "MacDonald",
    "Campbell",
    "Stewart",
    "Fletcher",
    "Chapman",
    "Hunt",
    "Holmes",
    "Mills",
    "Lloyd",
    "Reid",
    "Knight",
    "Barnes",
    "Booth",
];

pub(crate) const STREETS: &[&str] = &[
    "Church",
    "Station",
    "Victoria",
    "Park",
    "Mill",
    "High",
    "Queen",
    "King",
    "Manor",
    "Albert",
    "York",
    "Grange",
    "Springfield",
    "Highfield",
    "Windsor",
    "Chestnut",
    "Oak",
    "Elm",
    "Beech",
    "Meadow",
    "Orchard",
    "Hawthorn",
    "Willow",
    "Cedar",
    "Ash",
    "Kingsway",
    "Westfield",
    "Brook",
    "Green",
    "School",
    "North",
    "South",
    "Chapel",
    "Bridge",
    "Castle",
];

pub(crate) const STREET_KINDS: &[&str] = &[
    "Road", "Street", "Lane", "Avenue", "Close", "Drive", "Way", "Crescent", "Gardens", "Grove",
    "Terrace", "Place",
];

/// A town: name, county, postcode area, how many districts it has, the
/// letter its GP practices' ODS codes start with, its acute trust (ODS code
/// and name), and a weight (population share).
pub(crate) struct Town {
    pub name: &'static str,
    pub district: &'static str,
    pub area: &'static str,
    pub districts: u32,
    pub ods_prefix: char,
    pub trust_ods: &'static str,
    pub trust_name: &'static str,
    pub weight: u32,
}

pub(crate) const TOWNS: &[Town] = &[
    Town {
        name: "London",
        district: "Greater London",
        area: "SE",
        districts: 28,
        ods_prefix: 'G',
        trust_ods: "RJ1",
        trust_name: "Guy's and St Thomas' NHS Foundation Trust",
        weight: 14,
    },
    Town {
        name: "London",
        district: "Greater London",
        area: "E",
        districts: 18,
        ods_prefix: 'F',
        trust_ods: "R1H",
        trust_name: "Barts Health NHS Trust",
        weight: 12,
    },
    Town {
        name: "Birmingham",
        district: "West Midlands",
        area: "B",
        districts: 40,
        ods_prefix: 'M',
        trust_ods: "RRK",
        trust_name: "University Hospitals Birmingham NHS Foundation Trust",
        weight: 8,
    },
    Town {
        name: "Manchester",
        district: "Greater Manchester",
        area: "M",
        districts: 35,
        ods_prefix: 'P',
        trust_ods: "R0A",
        trust_name: "Manchester University NHS Foundation Trust",
        weight: 8,
    },
    Town {
        name: "Leeds",
        district: "West Yorkshire",
        area: "LS",
        districts: 29,
        ods_prefix: 'B',
        trust_ods: "RR8",
        trust_name: "Leeds Teaching Hospitals NHS Trust",
        weight: 7,
    },
    Town {
        name: "Sheffield",
        district: "South Yorkshire",
        area: "S",
        districts: 36,
        ods_prefix: 'C',
        trust_ods: "RHQ",
        trust_name: "Sheffield Teaching Hospitals NHS Foundation Trust",
        weight: 5,
    },
    Town {
        name: "Bristol",
        district: "Bristol",
        area: "BS",
        districts: 16,
        ods_prefix: 'L',
        trust_ods: "RA7",
        trust_name: "University Hospitals Bristol and Weston NHS Foundation Trust",
        weight: 5,
    },
    Town {
        name: "Liverpool",
        district: "Merseyside",
        area: "L",
        districts: 27,
        ods_prefix: 'N',
        trust_ods: "REM",
        trust_name: "Liverpool University Hospitals NHS Foundation Trust",
        weight: 5,
    },
    Town {
        name: "Newcastle upon Tyne",
        district: "Tyne and Wear",
        area: "NE",
        districts: 15,
        ods_prefix: 'A',
        trust_ods: "RTD",
        trust_name: "The Newcastle upon Tyne Hospitals NHS Foundation Trust",
        weight: 4,
    },
    Town {
        name: "Nottingham",
        district: "Nottinghamshire",
        area: "NG",
        districts: 25,
        ods_prefix: 'C',
        trust_ods: "RX1",
        trust_name: "Nottingham University Hospitals NHS Trust",
        weight: 4,
    },
    Town {
        name: "Leicester",
        district: "Leicestershire",
        area: "LE",
        districts: 19,
        ods_prefix: 'C',
        trust_ods: "RWE",
        trust_name: "University Hospitals of Leicester NHS Trust",
        weight: 4,
    },
    Town {
        name: "Southampton",
        district: "Hampshire",
        area: "SO",
        districts: 19,
        ods_prefix: 'J',
        trust_ods: "RHM",
        trust_name: "University Hospital Southampton NHS Foundation Trust",
        weight: 3,
    },
    Town {
        name: "Brighton",
        district: "East Sussex",
        area: "BN",
        districts: 27,
        ods_prefix: 'G',
        trust_ods: "RYR",
        trust_name: "University Hospitals Sussex NHS Foundation Trust",
        weight: 3,
    },
    Town {
        name: "Oxford",
        district: "Oxfordshire",
        area: "OX",
        districts: 18,
        ods_prefix: 'K',
        trust_ods: "RTH",
        trust_name: "Oxford University Hospitals NHS Foundation Trust",
        weight: 3,
    },
    Town {
        name: "Cambridge",
        district: "Cambridgeshire",
        area: "CB",
        districts: 11,
        ods_prefix: 'D',
        trust_ods: "RGT",
        trust_name: "Cambridge University Hospitals NHS Foundation Trust",
        weight: 3,
    },
    Town {
        name: "Norwich",
        district: "Norfolk",
        area: "NR",
        districts: 35,
        ods_prefix: 'D',
        trust_ods: "RM1",
        trust_name: "Norfolk and Norwich University Hospitals NHS Foundation Trust",
        weight: 3,
    },
    Town {
        name: "Exeter",
        district: "Devon",
        area: "EX",
        districts: 39,
        ods_prefix: 'L',
        trust_ods: "RH8",
        trust_name: "Royal Devon University Healthcare NHS Foundation Trust",
        weight: 3,
    },
    Town {
        name: "Plymouth",
        district: "Devon",
        area: "PL",
        districts: 35,
        ods_prefix: 'L',
        trust_ods: "RK9",
        trust_name: "University Hospitals Plymouth NHS Trust",
        weight: 2,
    },
    Town {
        name: "York",
        district: "North Yorkshire",
        area: "YO",
        districts: 26,
        ods_prefix: 'B',
        trust_ods: "RCB",
        trust_name: "York and Scarborough Teaching Hospitals NHS Foundation Trust",
        weight: 2,
    },
    Town {
        name: "Reading",
        district: "Berkshire",
        area: "RG",
        districts: 31,
        ods_prefix: 'K',
        trust_ods: "RHW",
        trust_name: "Royal Berkshire NHS Foundation Trust",
        weight: 2,
    },
];

/// Letters of a postcode's inward code (never C, I, K, M, O or V).
pub(crate) const INWARD_LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";

pub(crate) const PRACTICE_NAMES: &[&str] = &[
    "Surgery",
    "Medical Centre",
    "Health Centre",
    "Medical Practice",
    "Family Practice",
    "Group Practice",
];

/// A coded concept: system, code, display.
pub(crate) type Code = (&'static str, &'static str, &'static str);

pub(crate) const SNOMED: &str = "http://snomed.info/sct";
pub(crate) const LOINC: &str = "http://loinc.org";
pub(crate) const UCUM: &str = "http://unitsofmeasure.org";
pub(crate) const DMD: &str = "https://dmd.nhs.uk";
pub(crate) const CVX: &str = "http://hl7.org/fhir/sid/cvx";

/// Sensitivity of a condition: a `meta.security` code from
/// `v3-ActCode` (plus confidentiality R) when sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sensitivity {
    Normal,
    /// (v3-ActCode code, display)
    Sensitive(&'static str, &'static str),
}

/// A long-term condition: code, display, minimum age, prevalence (per 1000
/// adults over the minimum age), its repeat medicine index into
/// [`MEDICINES`] (if any), sensitivity.
pub(crate) struct Chronic {
    pub code: &'static str,
    pub display: &'static str,
    pub min_age: i64,
    pub per_mille: u32,
    pub medicine: Option<usize>,
    pub sensitivity: Sensitivity,
    /// Lab tests (indexes into [`LABS`]) monitored for this condition.
    pub labs: &'static [usize],
}

pub(crate) const CHRONIC: &[Chronic] = &[
    Chronic {
        code: "38341003",
        display: "Hypertensive disorder, systemic arterial",
        min_age: 30,
        per_mille: 180,
        medicine: Some(0),
        sensitivity: Sensitivity::Normal,
        labs: &[3, 4, 5, 6],
    },
    Chronic {
        code: "44054006",
        display: "Diabetes mellitus type 2",
        min_age: 30,
        per_mille: 80,
        medicine: Some(1),
        sensitivity: Sensitivity::Normal,
        labs: &[0, 1, 2, 3],
    },
    Chronic {
        code: "195967001",
        display: "Asthma",
        min_age: 3,
        per_mille: 90,
        medicine: Some(2),
        sensitivity: Sensitivity::Normal,
        labs: &[],
    },
    Chronic {
        code: "13645005",
        display: "Chronic obstructive lung disease",
        min_age: 45,
        per_mille: 40,
        medicine: Some(3),
        sensitivity: Sensitivity::Normal,
        labs: &[],
    },
    Chronic {
        code: "55822004",
        display: "Hyperlipidemia",
        min_age: 35,
        per_mille: 120,
        medicine: Some(4),
        sensitivity: Sensitivity::Normal,
        labs: &[1, 2],
    },
    Chronic {
        code: "40930008",
        display: "Hypothyroidism",
        min_age: 20,
        per_mille: 35,
        medicine: Some(5),
        sensitivity: Sensitivity::Normal,
        labs: &[7],
    },
    Chronic {
        code: "49436004",
        display: "Atrial fibrillation",
        min_age: 55,
        per_mille: 60,
        medicine: Some(6),
        sensitivity: Sensitivity::Normal,
        labs: &[3, 8],
    },
    Chronic {
        code: "709044004",
        display: "Chronic kidney disease",
        min_age: 50,
        per_mille: 60,
        medicine: None,
        sensitivity: Sensitivity::Normal,
        labs: &[3, 4, 5, 6, 8],
    },
    Chronic {
        code: "396275006",
        display: "Osteoarthritis",
        min_age: 45,
        per_mille: 100,
        medicine: Some(7),
        sensitivity: Sensitivity::Normal,
        labs: &[],
    },
    Chronic {
        code: "235595009",
        display: "Gastroesophageal reflux disease",
        min_age: 18,
        per_mille: 60,
        medicine: Some(8),
        sensitivity: Sensitivity::Normal,
        labs: &[],
    },
    Chronic {
        code: "84114007",
        display: "Heart failure",
        min_age: 60,
        per_mille: 30,
        medicine: Some(9),
        sensitivity: Sensitivity::Normal,
        labs: &[3, 4, 5],
    },
    Chronic {
        code: "84757009",
        display: "Epilepsy",
        min_age: 5,
        per_mille: 8,
        medicine: Some(10),
        sensitivity: Sensitivity::Normal,
        labs: &[],
    },
    Chronic {
        code: "35489007",
        display: "Depressive disorder",
        min_age: 14,
        per_mille: 80,
        medicine: Some(11),
        sensitivity: Sensitivity::Sensitive("PSY", "psychiatry disorder information sensitivity"),
        labs: &[],
    },
    Chronic {
        code: "197480006",
        display: "Anxiety disorder",
        min_age: 14,
        per_mille: 50,
        medicine: Some(11),
        sensitivity: Sensitivity::Sensitive("PSY", "psychiatry disorder information sensitivity"),
        labs: &[],
    },
    Chronic {
        code: "58214004",
        display: "Schizophrenia",
        min_age: 18,
        per_mille: 6,
        medicine: Some(12),
        sensitivity: Sensitivity::Sensitive("PSY", "psychiatry disorder information sensitivity"),
        labs: &[0, 1],
    },
    Chronic {
        code: "86406008",
        display: "Human immunodeficiency virus infection",
        min_age: 18,
        per_mille: 2,
        medicine: Some(13),
        sensitivity: Sensitivity::Sensitive("HIV", "HIV/AIDS information sensitivity"),
        labs: &[3, 8],
    },
    Chronic {
        code: "7200002",
        display: "Alcoholism",
        min_age: 18,
        per_mille: 10,
        medicine: Some(14),
        sensitivity: Sensitivity::Sensitive("ETH", "substance abuse information sensitivity"),
        labs: &[9],
    },
];

/// Short illnesses seen at the GP: code, display, sensitivity.
pub(crate) const ACUTE: &[(&str, &str, Sensitivity)] = &[
    (
        "54150009",
        "Upper respiratory infection",
        Sensitivity::Normal,
    ),
    (
        "68566005",
        "Urinary tract infectious disease",
        Sensitivity::Normal,
    ),
    ("65363002", "Otitis media", Sensitivity::Normal),
    ("90176007", "Tonsillitis", Sensitivity::Normal),
    ("128045006", "Cellulitis", Sensitivity::Normal),
    ("44465007", "Sprain of ankle", Sensitivity::Normal),
    ("25374005", "Gastroenteritis", Sensitivity::Normal),
    ("279039007", "Low back pain", Sensitivity::Normal),
    ("37796009", "Migraine", Sensitivity::Normal),
    ("36971009", "Sinusitis", Sensitivity::Normal),
    ("10509002", "Acute bronchitis", Sensitivity::Normal),
    ("43878008", "Streptococcal sore throat", Sensitivity::Normal),
    (
        "105629000",
        "Chlamydial infection",
        Sensitivity::Sensitive(
            "STD",
            "sexually transmitted disease information sensitivity",
        ),
    ),
    (
        "15628003",
        "Gonorrhea",
        Sensitivity::Sensitive(
            "STD",
            "sexually transmitted disease information sensitivity",
        ),
    ),
];

/// Which medicine treats which acute illness (index into [`MEDICINES`]), if any.
pub(crate) const ACUTE_MEDICINE: &[Option<usize>] = &[
    Some(15),
    Some(16),
    Some(15),
    Some(17),
    Some(18),
    Some(19),
    None,
    Some(19),
    Some(19),
    Some(15),
    Some(15),
    Some(17),
    Some(20),
    Some(21),
];

/// A medicine: dm+d VMP-style code, name, dose text, dose unit (SNOMED
/// unit of presentation code, display), pack size.
pub(crate) struct Medicine {
    pub code: &'static str,
    pub name: &'static str,
    pub dose_text: &'static str,
    pub per_day: u32,
    pub unit_code: &'static str,
    pub unit: &'static str,
    pub pack: u32,
}

const TABLET: (&str, &str) = ("428673006", "tablet");
const CAPSULE: (&str, &str) = ("428641000", "capsule");
const DOSE: (&str, &str) = ("3317411000001100", "dose");

macro_rules! med {
    ($code:expr, $name:expr, $text:expr, $per_day:expr, $unit:expr, $pack:expr) => {
        Medicine {
            code: $code,
            name: $name,
            dose_text: $text,
            per_day: $per_day,
            unit_code: $unit.0,
            unit: $unit.1,
            pack: $pack,
        }
    };
}

pub(crate) const MEDICINES: &[Medicine] = &[
    med!(
        "319283006",
        "Amlodipine 5mg tablets",
        "One tablet once a day",
        1,
        TABLET,
        28
    ),
    med!(
        "325278007",
        "Metformin 500mg tablets",
        "One tablet twice a day with food",
        2,
        TABLET,
        56
    ),
    med!(
        "320151001",
        "Salbutamol 100micrograms/dose inhaler CFC free",
        "Two puffs when required",
        2,
        DOSE,
        200
    ),
    med!(
        "320143005",
        "Tiotropium 18microgram inhalation powder capsules",
        "Inhale the contents of one capsule once a day",
        1,
        CAPSULE,
        30
    ),
    med!(
        "320000009",
        "Atorvastatin 20mg tablets",
        "One tablet at night",
        1,
        TABLET,
        28
    ),
    med!(
        "315276009",
        "Levothyroxine sodium 50microgram tablets",
        "One tablet in the morning",
        1,
        TABLET,
        28
    ),
    med!(
        "716048009",
        "Apixaban 5mg tablets",
        "One tablet twice a day",
        2,
        TABLET,
        56
    ),
    med!(
        "322236009",
        "Paracetamol 500mg tablets",
        "Two tablets up to four times a day",
        8,
        TABLET,
        100
    ),
    med!(
        "317335001",
        "Omeprazole 20mg gastro-resistant capsules",
        "One capsule once a day",
        1,
        CAPSULE,
        28
    ),
    med!(
        "318137008",
        "Bisoprolol 2.5mg tablets",
        "One tablet once a day",
        1,
        TABLET,
        28
    ),
    med!(
        "322935004",
        "Lamotrigine 100mg tablets",
        "One tablet twice a day",
        2,
        TABLET,
        56
    ),
    med!(
        "321949006",
        "Sertraline 50mg tablets",
        "One tablet once a day",
        1,
        TABLET,
        28
    ),
    med!(
        "321585006",
        "Olanzapine 10mg tablets",
        "One tablet at night",
        1,
        TABLET,
        28
    ),
    med!(
        "776556004",
        "Emtricitabine 200mg / Tenofovir disoproxil 245mg tablets",
        "One tablet once a day",
        1,
        TABLET,
        30
    ),
    med!(
        "418826008",
        "Acamprosate 333mg gastro-resistant tablets",
        "Two tablets three times a day",
        6,
        TABLET,
        168
    ),
    med!(
        "323509004",
        "Amoxicillin 500mg capsules",
        "One capsule three times a day for 5 days",
        3,
        CAPSULE,
        15
    ),
    med!(
        "323650005",
        "Nitrofurantoin 100mg modified-release capsules",
        "One capsule twice a day for 3 days",
        2,
        CAPSULE,
        6
    ),
    med!(
        "323518009",
        "Phenoxymethylpenicillin 250mg tablets",
        "Two tablets four times a day for 10 days",
        8,
        TABLET,
        80
    ),
    med!(
        "323493005",
        "Flucloxacillin 500mg capsules",
        "One capsule four times a day for 7 days",
        4,
        CAPSULE,
        28
    ),
    med!(
        "329652003",
        "Ibuprofen 400mg tablets",
        "One tablet three times a day with food",
        3,
        TABLET,
        24
    ),
    med!(
        "324072007",
        "Doxycycline 100mg capsules",
        "One capsule twice a day for 7 days",
        2,
        CAPSULE,
        14
    ),
    med!(
        "324095004",
        "Ceftriaxone 1g powder for solution for injection vials",
        "Single dose by intramuscular injection",
        1,
        DOSE,
        1
    ),
];

/// A numeric observation: LOINC code and display, optional SNOMED code,
/// UCUM unit, typical mean and spread, decimals, category.
pub(crate) struct Measure {
    pub loinc: &'static str,
    pub display: &'static str,
    pub snomed: Option<(&'static str, &'static str)>,
    pub unit: &'static str,
    pub ucum: &'static str,
    pub mean: f64,
    pub sd: f64,
    pub decimals: usize,
    pub low: f64,
    pub high: f64,
}

macro_rules! measure {
    ($loinc:expr, $display:expr, $snomed:expr, $unit:expr, $ucum:expr, $mean:expr, $sd:expr, $dec:expr, $low:expr, $high:expr) => {
        Measure {
            loinc: $loinc,
            display: $display,
            snomed: $snomed,
            unit: $unit,
            ucum: $ucum,
            mean: $mean,
            sd: $sd,
            decimals: $dec,
            low: $low,
            high: $high,
        }
    };
}

/// Vital signs (category `vital-signs`).
pub(crate) const VITALS: &[Measure] = &[
    measure!(
        "8867-4",
        "Heart rate",
        Some(("364075005", "Heart rate")),
        "beats/minute",
        "/min",
        74.0,
        9.0,
        0,
        60.0,
        100.0
    ),
    measure!(
        "29463-7",
        "Body weight",
        Some(("27113001", "Body weight")),
        "kg",
        "kg",
        78.0,
        14.0,
        1,
        0.0,
        0.0
    ),
    measure!(
        "8302-2",
        "Body height",
        Some(("50373000", "Body height")),
        "cm",
        "cm",
        170.0,
        9.0,
        1,
        0.0,
        0.0
    ),
    measure!(
        "39156-5",
        "Body mass index (BMI) [Ratio]",
        Some(("60621009", "Body mass index")),
        "kg/m2",
        "kg/m2",
        27.0,
        4.5,
        1,
        18.5,
        25.0
    ),
    measure!(
        "8310-5",
        "Body temperature",
        Some(("386725007", "Body temperature")),
        "degrees C",
        "Cel",
        36.8,
        0.4,
        1,
        36.0,
        37.8
    ),
    measure!(
        "9279-1",
        "Respiratory rate",
        Some(("86290005", "Respiratory rate")),
        "breaths/minute",
        "/min",
        15.0,
        2.5,
        0,
        12.0,
        20.0
    ),
    measure!(
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        Some(("431314004", "Peripheral oxygen saturation")),
        "%",
        "%",
        97.0,
        1.5,
        0,
        94.0,
        100.0
    ),
];

/// Laboratory tests (category `laboratory`).
pub(crate) const LABS: &[Measure] = &[
    measure!(
        "59261-8",
        "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol",
        Some((
            "999791000000106",
            "Haemoglobin A1c level - International Federation of Clinical Chemistry and Laboratory Medicine standardised"
        )),
        "mmol/mol",
        "mmol/mol",
        48.0,
        10.0,
        0,
        20.0,
        42.0
    ),
    measure!(
        "14647-2",
        "Cholesterol [Moles/volume] in Serum or Plasma",
        Some(("1005671000000105", "Serum cholesterol level")),
        "mmol/L",
        "mmol/L",
        5.0,
        1.0,
        1,
        0.0,
        5.0
    ),
    measure!(
        "14646-4",
        "Cholesterol in HDL [Moles/volume] in Serum or Plasma",
        None,
        "mmol/L",
        "mmol/L",
        1.4,
        0.35,
        2,
        1.0,
        3.0
    ),
    measure!(
        "33914-3",
        "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma by Creatinine-based formula (MDRD)",
        Some((
            "1011481000000105",
            "eGFR using creatinine (CKD-EPI) per 1.73 square metres"
        )),
        "mL/min/1.73m2",
        "mL/min/{1.73_m2}",
        78.0,
        18.0,
        0,
        60.0,
        150.0
    ),
    measure!(
        "14682-9",
        "Creatinine [Moles/volume] in Serum or Plasma",
        Some(("1000731000000107", "Serum creatinine level")),
        "umol/L",
        "umol/L",
        85.0,
        20.0,
        0,
        59.0,
        104.0
    ),
    measure!(
        "2951-2",
        "Sodium [Moles/volume] in Serum or Plasma",
        Some(("1000661000000107", "Serum sodium level")),
        "mmol/L",
        "mmol/L",
        139.0,
        2.5,
        0,
        133.0,
        146.0
    ),
    measure!(
        "2823-3",
        "Potassium [Moles/volume] in Serum or Plasma",
        Some(("1000651000000109", "Serum potassium level")),
        "mmol/L",
        "mmol/L",
        4.3,
        0.4,
        1,
        3.5,
        5.3
    ),
    measure!(
        "3016-3",
        "Thyrotropin [Units/volume] in Serum or Plasma",
        Some(("1022791000000101", "Serum TSH level")),
        "mU/L",
        "m[IU]/L",
        2.2,
        1.2,
        2,
        0.27,
        4.2
    ),
    measure!(
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        Some(("1022431000000105", "Haemoglobin estimation")),
        "g/L",
        "g/L",
        138.0,
        14.0,
        0,
        115.0,
        165.0
    ),
    measure!(
        "1920-8",
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        None,
        "U/L",
        "U/L",
        28.0,
        12.0,
        0,
        0.0,
        40.0
    ),
];

/// Smoking status values (SNOMED), with weights.
pub(crate) const SMOKING: &[(u32, (&str, &str))] = &[
    (58, ("266919005", "Never smoked tobacco")),
    (27, ("8517006", "Ex-smoker")),
    (15, ("77176002", "Smoker")),
];

/// Allergies: code, display, category, typical reaction (code, display).
pub(crate) const ALLERGIES: &[(&str, &str, &str, (&str, &str))] = &[
    (
        "91936005",
        "Allergy to penicillin",
        "medication",
        ("271807003", "Eruption of skin"),
    ),
    (
        "294505008",
        "Allergy to sulfonamide",
        "medication",
        ("271807003", "Eruption of skin"),
    ),
    (
        "293586001",
        "Allergy to aspirin",
        "medication",
        ("267036007", "Dyspnea"),
    ),
    (
        "91935009",
        "Allergy to peanut",
        "food",
        ("39579001", "Anaphylaxis"),
    ),
    (
        "300913006",
        "Allergy to shellfish",
        "food",
        ("23924001", "Tight chest"),
    ),
    (
        "300916003",
        "Allergy to latex",
        "environment",
        ("247472004", "Weal"),
    ),
    (
        "232347008",
        "Allergy to house dust mite",
        "environment",
        ("49727002", "Cough"),
    ),
    (
        "418689008",
        "Allergy to grass pollen",
        "environment",
        ("21719001", "Allergic rhinitis"),
    ),
];

/// Vaccines: CVX code, display, SNOMED procedure (code, display), dose mL.
pub(crate) struct Vaccine {
    pub cvx: &'static str,
    pub display: &'static str,
    pub procedure: Code,
}

pub(crate) const VACCINES: &[Vaccine] = &[
    Vaccine {
        cvx: "146",
        display: "DTaP,IPV,Hib,HepB",
        procedure: (
            SNOMED,
            "1082441000000108",
            "First diphtheria, tetanus, pertussis, polio, Haemophilus influenzae type b and hepatitis B vaccination",
        ),
    },
    Vaccine {
        cvx: "133",
        display: "Pneumococcal conjugate PCV 13",
        procedure: (
            SNOMED,
            "1109711000000103",
            "Pneumococcal conjugate vaccination",
        ),
    },
    Vaccine {
        cvx: "163",
        display: "meningococcal B, OMV",
        procedure: (
            SNOMED,
            "720539004",
            "Administration of first dose of vaccine product containing only Neisseria meningitidis serogroup B antigen",
        ),
    },
    Vaccine {
        cvx: "122",
        display: "rotavirus, live, monovalent vaccine",
        procedure: (SNOMED, "868631000000102", "First rotavirus vaccination"),
    },
    Vaccine {
        cvx: "03",
        display: "MMR",
        procedure: (
            SNOMED,
            "38598009",
            "Administration of vaccine product containing only Measles morbillivirus and Mumps orthorubulavirus and Rubella virus antigens",
        ),
    },
    Vaccine {
        cvx: "165",
        display: "HPV9",
        procedure: (
            SNOMED,
            "761841000",
            "Administration of vaccine product containing only Human papillomavirus antigen",
        ),
    },
    Vaccine {
        cvx: "115",
        display: "Tdap",
        procedure: (
            SNOMED,
            "390846000",
            "Tetanus, diphtheria and poliomyelitis booster vaccination",
        ),
    },
    Vaccine {
        cvx: "150",
        display: "Influenza, injectable, quadrivalent, preservative free",
        procedure: (SNOMED, "822851000000102", "Seasonal influenza vaccination"),
    },
    Vaccine {
        cvx: "33",
        display: "pneumococcal polysaccharide vaccine, 23 valent",
        procedure: (
            SNOMED,
            "12866006",
            "Administration of vaccine product containing only Streptococcus pneumoniae antigen",
        ),
    },
    Vaccine {
        cvx: "187",
        display: "zoster vaccine recombinant",
        procedure: (
            SNOMED,
            "722215002",
            "Administration of vaccine product containing only Human alphaherpesvirus 3 antigen",
        ),
    },
    Vaccine {
        cvx: "208",
        display: "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose",
        procedure: (
            SNOMED,
            "1324681000000101",
            "Administration of first dose of severe acute respiratory syndrome coronavirus 2 vaccine",
        ),
    },
];

/// Encounter types (SNOMED) by setting.
pub(crate) const GP_VISIT: Code = (SNOMED, "185347001", "Encounter for problem");
pub(crate) const GP_REVIEW: Code = (SNOMED, "390906007", "Follow-up encounter");
pub(crate) const GP_CHECK: Code = (SNOMED, "185349003", "Encounter for check up");
pub(crate) const AE_VISIT: Code = (SNOMED, "50849002", "Emergency room admission");
pub(crate) const ADMISSION: Code = (SNOMED, "32485007", "Hospital admission");
pub(crate) const OUTPATIENT: Code = (SNOMED, "185389009", "Follow-up visit");
