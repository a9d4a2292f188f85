//! What `records` looks up for a decision, and pure extractors that build
//! those facts from stored FHIR JSON (so records only has to fetch).
//!
//! Organisations are ODS codes everywhere here. Where FHIR holds a
//! reference (`Organization/abc`) rather than an ODS identifier, the
//! extractors return an [`OrgRef::Reference`] and records resolves it by
//! reading the Organization (see [`ods_code_of_organization`]). An
//! unresolved reference grants nothing (it is no relationship, no permit),
//! and in a Consent deny it binds everyone (fail closed).

use serde_json::Value;

use crate::consent::ConsentRule;

/// ODS organisation code identifier system.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// NHS number identifier system.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// SDS user id identifier system (practitioners).
pub const SDS_USER_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-user-id";
/// The `meta.tag` system records stamps with the ODS code of the
/// organisation that first created a resource: R/V labels confine the
/// resource to that organisation.
pub const CREATING_ORG_TAG_SYSTEM: &str =
    "https://carelayer.nhs.uk/CodeSystem/creating-organization";
/// HL7 v3 confidentiality codes (`R`, `V`, …) in `meta.security`.
pub const CONFIDENTIALITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

/// Microseconds in a day (relationship windows are configured in days).
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A code with an optional system. Matching ignores the system when either
/// side leaves it out (consent authors often give the code alone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Coding {
    pub system: Option<String>,
    pub code: String,
}

impl Coding {
    #[must_use]
    pub fn new(system: Option<&str>, code: &str) -> Self {
        Self {
            system: system.map(str::to_owned),
            code: code.to_owned(),
        }
    }

    /// Same code, and same system when both state one.
    #[must_use]
    pub fn matches(&self, other: &Coding) -> bool {
        self.code == other.code
            && match (&self.system, &other.system) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// A `Coding` JSON object (`None` without a code).
    #[must_use]
    pub fn from_json(v: &Value) -> Option<Self> {
        let code = v.get("code")?.as_str()?;
        Some(Self::new(v.get("system").and_then(Value::as_str), code))
    }

    /// The codings of a `CodeableConcept` JSON object.
    #[must_use]
    pub fn from_concept(v: &Value) -> Vec<Self> {
        array(v.get("coding")).filter_map(Self::from_json).collect()
    }
}

/// A time range in microseconds since the Unix epoch; open ends unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Period {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl Period {
    #[must_use]
    pub fn contains(&self, t: i64) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t <= e)
    }

    /// A FHIR `Period` JSON object. Partial dates widen: a start of `2024`
    /// means 1 Jan 2024 00:00Z, an end of `2024` the last moment of 2024.
    #[must_use]
    pub fn from_json(v: &Value) -> Self {
        Self {
            start: v
                .get("start")
                .and_then(Value::as_str)
                .and_then(|s| parse_fhir_instant(s, false)),
            end: v
                .get("end")
                .and_then(Value::as_str)
                .and_then(|s| parse_fhir_instant(s, true)),
        }
    }
}

/// A FHIR `date`/`dateTime`/`instant` → micros since the epoch. Partial
/// precision (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) gives the first moment of
/// that span, or with `end` the last. `None` when unparsable.
#[must_use]
pub fn parse_fhir_instant(text: &str, end: bool) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    use time::{Date, Month, OffsetDateTime};
    if text.len() > 10 {
        let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        return i64::try_from(t.unix_timestamp_nanos() / 1000).ok();
    }
    let mut parts = text.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: Option<u8> = parts.next().map(str::parse).transpose().ok()?;
    let day: Option<u8> = parts.next().map(str::parse).transpose().ok()?;
    let first = Date::from_calendar_date(
        year,
        Month::try_from(month.unwrap_or(1)).ok()?,
        day.unwrap_or(1),
    )
    .ok()?;
    let start_of_next = match (month, day) {
        (_, Some(_)) => first.next_day()?,
        (Some(_), None) => {
            let m = Month::try_from(month.unwrap_or(1)).ok()?;
            let (y, m) = if m == Month::December {
                (year + 1, Month::January)
            } else {
                (year, m.next())
            };
            Date::from_calendar_date(y, m, 1).ok()?
        }
        (None, None) => Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
    };
    let micros = |d: Date| -> Option<i64> {
        i64::try_from(d.midnight().assume_utc().unix_timestamp_nanos() / 1000).ok()
    };
    if end {
        Some(micros(start_of_next)? - 1)
    } else {
        micros(first)
    }
}

/// An organisation as FHIR names it: by ODS code or by reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgRef {
    Ods(String),
    /// `Organization/id` not yet resolved to an ODS code.
    Reference(String),
}

impl OrgRef {
    /// A `Reference(Organization)` JSON object: its ODS identifier if it has
    /// one, else its literal reference.
    #[must_use]
    pub fn from_reference_json(v: &Value) -> Option<Self> {
        if let Some(id) = v.get("identifier")
            && id.get("system").and_then(Value::as_str) == Some(ODS_SYSTEM)
            && let Some(code) = id.get("value").and_then(Value::as_str)
        {
            return Some(Self::Ods(code.to_owned()));
        }
        let reference = v.get("reference")?.as_str()?;
        reference
            .contains("Organization/")
            .then(|| Self::Reference(reference.to_owned()))
    }

    /// The ODS code, once resolved.
    #[must_use]
    pub fn ods(&self) -> Option<&str> {
        match self {
            Self::Ods(code) => Some(code),
            Self::Reference(_) => None,
        }
    }

    /// Replace a reference by the ODS code `resolve` finds for it.
    pub fn resolve(&mut self, resolve: &impl Fn(&str) -> Option<String>) {
        if let Self::Reference(r) = self
            && let Some(code) = resolve(r)
        {
            *self = Self::Ods(code);
        }
    }
}

/// The ODS code of an Organization resource (its ODS identifier).
#[must_use]
pub fn ods_code_of_organization(organization: &Value) -> Option<String> {
    array(organization.get("identifier"))
        .find(|id| id.get("system").and_then(Value::as_str) == Some(ODS_SYSTEM))
        .and_then(|id| id.get("value")?.as_str().map(str::to_owned))
}

/// An Encounter or EpisodeOfCare at an organisation: a legitimate
/// relationship while open, or for a window after it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CareEpisode {
    pub org: OrgRef,
    /// Still running (Encounter `planned|arrived|triaged|in-progress|onleave`,
    /// EpisodeOfCare `planned|waitlist|active|onhold`).
    pub open: bool,
    /// When it ended (`period.end`), micros.
    pub ended_at: Option<i64>,
}

impl CareEpisode {
    /// From an Encounter (`serviceProvider`) or EpisodeOfCare
    /// (`managingOrganization`). Cancelled or entered-in-error ones give
    /// nothing: they never created a relationship.
    #[must_use]
    pub fn from_json(resource: &Value) -> Option<Self> {
        let (org_field, open_statuses): (&str, &[&str]) =
            match resource.get("resourceType")?.as_str()? {
                "Encounter" => (
                    "serviceProvider",
                    &["planned", "arrived", "triaged", "in-progress", "onleave"],
                ),
                "EpisodeOfCare" => (
                    "managingOrganization",
                    &["planned", "waitlist", "active", "onhold"],
                ),
                _ => return None,
            };
        let status = resource.get("status")?.as_str()?;
        if matches!(status, "cancelled" | "entered-in-error" | "unknown") {
            return None;
        }
        let org = OrgRef::from_reference_json(resource.get(org_field)?)?;
        let period = resource
            .get("period")
            .map(Period::from_json)
            .unwrap_or_default();
        Some(Self {
            org,
            open: open_statuses.contains(&status),
            ended_at: period.end,
        })
    }
}

/// Membership of an active CareTeam for the patient.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CareTeamFacts {
    /// SDS user ids of practitioner members.
    pub users: Vec<String>,
    /// Member and managing organisations.
    pub orgs: Vec<OrgRef>,
}

impl CareTeamFacts {
    /// From an active (or proposed) CareTeam; `None` for inactive ones.
    /// Practitioner members count by SDS user id identifier, or by a
    /// `Practitioner/<user id>` reference.
    #[must_use]
    pub fn from_json(care_team: &Value) -> Option<Self> {
        let status = care_team.get("status").and_then(Value::as_str);
        if !matches!(status, Some("active" | "proposed") | None) {
            return None;
        }
        let mut out = Self::default();
        let mut add = |member: &Value| {
            if let Some(org) = OrgRef::from_reference_json(member) {
                out.orgs.push(org);
            } else if let Some(user) = practitioner_user_id(member) {
                out.users.push(user);
            }
        };
        for participant in array(care_team.get("participant")) {
            if let Some(member) = participant.get("member") {
                add(member);
            }
            if let Some(on_behalf) = participant.get("onBehalfOf") {
                add(on_behalf);
            }
        }
        for org in array(care_team.get("managingOrganization")) {
            add(org);
        }
        Some(out)
    }
}

/// An SDS user id from a `Reference(Practitioner)`.
pub(crate) fn practitioner_user_id(reference: &Value) -> Option<String> {
    if let Some(id) = reference.get("identifier")
        && id.get("system").and_then(Value::as_str) == Some(SDS_USER_SYSTEM)
    {
        return id.get("value")?.as_str().map(str::to_owned);
    }
    let r = reference.get("reference")?.as_str()?;
    let (_, id) = r.rsplit_once("Practitioner/")?;
    Some(id.to_owned())
}

/// Facts about the patient whose record is touched (the compartment owner).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PatientFacts {
    /// The Patient resource id (compartment key).
    pub id: String,
    pub nhs_number: Option<String>,
    /// The registered GP practice (`Patient.generalPractitioner` that is an
    /// Organization).
    pub registered_practice: Option<OrgRef>,
    /// Restricted (S-flag): `Patient.meta.security` R, V or `restricted`.
    pub restricted: bool,
    /// Encounters and episodes of care.
    pub episodes: Vec<CareEpisode>,
    /// Active care teams.
    pub care_teams: Vec<CareTeamFacts>,
    /// The patient's Consents, parsed (every status: policy filters).
    pub consents: Vec<ConsentRule>,
}

impl PatientFacts {
    /// The facts a Patient resource itself carries: id, NHS number,
    /// registered practice and the S-flag. Episodes, care teams and consents
    /// are added by the caller.
    #[must_use]
    pub fn from_patient_json(patient: &Value) -> Self {
        let id = patient
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let nhs_number = array(patient.get("identifier"))
            .find(|i| i.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM))
            .and_then(|i| i.get("value")?.as_str())
            .map(|s| s.chars().filter(|c| !c.is_whitespace()).collect());
        let registered_practice = array(patient.get("generalPractitioner"))
            .filter_map(OrgRef::from_reference_json)
            .next();
        let restricted = array(patient.get("meta").and_then(|m| m.get("security")))
            .filter_map(Coding::from_json)
            .any(|c| matches!(c.code.as_str(), "R" | "V" | "restricted" | "REDACTED"));
        Self {
            id,
            nhs_number,
            registered_practice,
            restricted,
            ..Self::default()
        }
    }

    /// Resolve every organisation reference with `resolve` (reference →
    /// ODS code).
    pub fn resolve_orgs(&mut self, resolve: &impl Fn(&str) -> Option<String>) {
        if let Some(gp) = &mut self.registered_practice {
            gp.resolve(resolve);
        }
        for e in &mut self.episodes {
            e.org.resolve(resolve);
        }
        for t in &mut self.care_teams {
            for o in &mut t.orgs {
                o.resolve(resolve);
            }
        }
        for c in &mut self.consents {
            c.resolve_orgs(resolve);
        }
    }
}

/// Facts about the resource being accessed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceFacts {
    /// `meta.security` codings (confidentiality R/V, sensitivity labels such
    /// as `PSY`, `SEX`, `ETH`…).
    pub security: Vec<Coding>,
    /// The resource's own codes (`code`, `category`, `type`, `class`):
    /// matched against Consent `provision.code`.
    pub codes: Vec<Coding>,
    /// ODS code of the organisation that created it (the
    /// [`CREATING_ORG_TAG_SYSTEM`] tag).
    pub creating_org: Option<String>,
    /// For an Encounter or EpisodeOfCare: the organisation it is at
    /// (recording one at one's own organisation creates the relationship).
    pub episode_org: Option<OrgRef>,
}

impl ResourceFacts {
    #[must_use]
    pub fn from_json(resource: &Value) -> Self {
        let meta = resource.get("meta");
        let security = array(meta.and_then(|m| m.get("security")))
            .filter_map(Coding::from_json)
            .collect();
        let creating_org = array(meta.and_then(|m| m.get("tag")))
            .filter_map(Coding::from_json)
            .find(|c| c.system.as_deref() == Some(CREATING_ORG_TAG_SYSTEM))
            .map(|c| c.code);
        let mut codes = Vec::new();
        for field in ["code", "category", "type", "class"] {
            match resource.get(field) {
                Some(Value::Array(items)) => {
                    for item in items {
                        codes.extend(Coding::from_concept(item));
                    }
                }
                Some(v @ Value::Object(_)) => {
                    codes.extend(Coding::from_concept(v));
                    // Encounter.class is a bare Coding.
                    codes.extend(Coding::from_json(v));
                }
                _ => {}
            }
        }
        Self {
            security,
            codes,
            creating_org,
            episode_org: CareEpisode::from_json(resource).map(|e| e.org),
        }
    }

    /// As [`Self::from_json`], from a stored resource's bytes. Only the
    /// members `from_json` reads are built into values; the rest (most of a
    /// resource, often kilobytes) is stepped over without allocating.
    /// Deciding on each of a patient's 500 resources spent most of its time
    /// building values nobody read.
    ///
    /// # Errors
    /// The bytes are not a JSON object.
    pub fn from_slice(json: &[u8]) -> Result<Self, serde_json::Error> {
        let read: FactMembers = serde_json::from_slice(json)?;
        let members = [
            ("resourceType", read.resource_type),
            ("meta", read.meta),
            ("code", read.code),
            ("category", read.category),
            ("type", read.type_),
            ("class", read.class),
            ("status", read.status),
            ("serviceProvider", read.service_provider),
            ("managingOrganization", read.managing_organization),
            ("period", read.period),
        ];
        let object = members
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect();
        Ok(Self::from_json(&Value::Object(object)))
    }

    /// Resolve an organisation reference with `resolve` (reference → ODS).
    pub fn resolve_orgs(&mut self, resolve: &impl Fn(&str) -> Option<String>) {
        if let Some(o) = &mut self.episode_org {
            o.resolve(resolve);
        }
    }

    /// The strongest confidentiality label: `V` over `R`.
    #[must_use]
    pub fn confidentiality(&self) -> Option<&'static str> {
        let has = |code: &str| self.security.iter().any(|c| c.code == code);
        if has("V") {
            Some("V")
        } else if has("R") {
            Some("R")
        } else {
            None
        }
    }
}

/// The top-level members [`ResourceFacts::from_json`] (and the
/// [`CareEpisode`] it derives) read; serde skips every other member.
#[derive(serde::Deserialize)]
struct FactMembers {
    #[serde(rename = "resourceType")]
    resource_type: Option<Value>,
    meta: Option<Value>,
    code: Option<Value>,
    category: Option<Value>,
    #[serde(rename = "type")]
    type_: Option<Value>,
    class: Option<Value>,
    status: Option<Value>,
    #[serde(rename = "serviceProvider")]
    service_provider: Option<Value>,
    #[serde(rename = "managingOrganization")]
    managing_organization: Option<Value>,
    period: Option<Value>,
}

/// Everything `decide` needs besides the principal and the request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// Now, micros since the Unix epoch.
    pub now: i64,
    /// How long after an encounter or episode ends it still counts as a
    /// legitimate relationship, in micros (records takes it from options).
    pub relationship_window: i64,
    /// The compartment owner, when the resource belongs to a patient (for a
    /// Patient resource: itself). `None` when the request has a patient but
    /// records could not find them: policy then treats the record as
    /// unrelated to the caller. Shared (records caches it per patient and
    /// decides on it for every hit of a search).
    pub patient: Option<std::sync::Arc<PatientFacts>>,
    /// The resource itself (empty for a create before the body is known, or
    /// a type-level search before hits).
    pub resource: ResourceFacts,
}

pub(crate) fn array(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Reading only the members the facts use gives the facts of the
    /// whole parsed resource (every member `from_json` reads is present in
    /// one of these, with members it ignores around them).
    #[test]
    fn facts_from_bytes_equal_facts_from_the_parsed_resource() {
        let resources = [
            json!({"resourceType": "Observation", "id": "o",
                "meta": {"versionId": "2", "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
                    "tag": [{"system": CREATING_ORG_TAG_SYSTEM, "code": "A81001"}]},
                "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
                "subject": {"reference": "Patient/p"}, "valueQuantity": {"value": 72, "unit": "/min"},
                "component": [{"code": {"coding": [{"code": "ignored"}]}}]}),
            json!({"resourceType": "Encounter", "id": "e", "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}]}],
                "serviceProvider": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RR8"}},
                "period": {"start": "2026-11-01", "end": "2026-11-30"}}),
            json!({"resourceType": "EpisodeOfCare", "id": "eoc", "status": "active",
                "managingOrganization": {"reference": "Organization/org1"},
                "period": {"start": "2026-01-01T09:00:00Z"}, "contained": [{"resourceType": "Organization", "id": "x"}]}),
            json!({"resourceType": "Patient", "id": "p"}),
        ];
        for resource in resources {
            let bytes = serde_json::to_vec(&resource).unwrap();
            let from_bytes = ResourceFacts::from_slice(&bytes).unwrap();
            assert_eq!(
                from_bytes,
                ResourceFacts::from_json(&resource),
                "{resource}"
            );
        }
        let episode = ResourceFacts::from_slice(
            br#"{"resourceType":"Encounter","status":"in-progress","serviceProvider":{"reference":"Organization/o"}}"#,
        )
        .unwrap();
        assert!(episode.episode_org.is_some());
        assert!(ResourceFacts::from_slice(b"[1]").is_err());
        assert!(ResourceFacts::from_slice(b"{\"code\":").is_err());
    }

    #[test]
    fn partial_dates_widen() {
        let start = parse_fhir_instant("2024", false);
        let end = parse_fhir_instant("2024", true);
        assert_eq!(start, parse_fhir_instant("2024-01-01T00:00:00Z", false));
        assert_eq!(
            end.map(|e| e + 1),
            parse_fhir_instant("2025-01-01T00:00:00Z", false)
        );
        assert_eq!(
            parse_fhir_instant("2024-02", true).map(|e| e + 1),
            parse_fhir_instant("2024-03-01", false)
        );
        assert_eq!(
            parse_fhir_instant("2024-12", true).map(|e| e + 1),
            parse_fhir_instant("2025-01-01", false)
        );
        assert_eq!(parse_fhir_instant("garbage", false), None);
    }

    #[test]
    fn patient_facts_from_pds_style_patient() {
        let p = json!({
            "resourceType": "Patient", "id": "p1",
            "meta": {"security": [{"system": CONFIDENTIALITY_SYSTEM, "code": "R"}]},
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "943 476 5919"}],
            "generalPractitioner": [{"type": "Organization",
                "identifier": {"system": ODS_SYSTEM, "value": "A12345"}}]
        });
        let f = PatientFacts::from_patient_json(&p);
        assert_eq!(f.id, "p1");
        assert_eq!(f.nhs_number.as_deref(), Some("9434765919"));
        assert_eq!(f.registered_practice, Some(OrgRef::Ods("A12345".into())));
        assert!(f.restricted);
        let u = json!({"resourceType": "Patient", "id": "p2",
            "meta": {"security": [{"code": "U"}]},
            "generalPractitioner": [{"reference": "Organization/gp1"}]});
        let mut f = PatientFacts::from_patient_json(&u);
        assert!(!f.restricted);
        f.resolve_orgs(&|r: &str| (r == "Organization/gp1").then(|| "B1".to_owned()));
        assert_eq!(f.registered_practice, Some(OrgRef::Ods("B1".into())));
    }

    #[test]
    fn episodes_from_encounters_and_episodes_of_care() {
        let open = json!({"resourceType": "Encounter", "status": "in-progress",
            "serviceProvider": {"identifier": {"system": ODS_SYSTEM, "value": "RX1"}}});
        let e = CareEpisode::from_json(&open);
        assert_eq!(
            e,
            Some(CareEpisode {
                org: OrgRef::Ods("RX1".into()),
                open: true,
                ended_at: None
            })
        );
        let done = json!({"resourceType": "Encounter", "status": "finished",
            "period": {"start": "2024-01-01", "end": "2024-01-02"},
            "serviceProvider": {"reference": "Organization/o1"}});
        let e = CareEpisode::from_json(&done);
        assert_eq!(e.as_ref().map(|e| e.open), Some(false));
        assert_eq!(
            e.and_then(|e| e.ended_at),
            parse_fhir_instant("2024-01-02", true)
        );
        let cancelled = json!({"resourceType": "Encounter", "status": "cancelled",
            "serviceProvider": {"reference": "Organization/o1"}});
        assert_eq!(CareEpisode::from_json(&cancelled), None);
        let eoc = json!({"resourceType": "EpisodeOfCare", "status": "active",
            "managingOrganization": {"reference": "Organization/o2"}});
        assert_eq!(CareEpisode::from_json(&eoc).map(|e| e.open), Some(true));
    }

    #[test]
    fn care_team_members() {
        let t = json!({"resourceType": "CareTeam", "status": "active",
        "participant": [
            {"member": {"identifier": {"system": SDS_USER_SYSTEM, "value": "u1"}}},
            {"member": {"reference": "Practitioner/u2"},
             "onBehalfOf": {"identifier": {"system": ODS_SYSTEM, "value": "RX1"}}}
        ]});
        let f = CareTeamFacts::from_json(&t);
        assert_eq!(
            f,
            Some(CareTeamFacts {
                users: vec!["u1".into(), "u2".into()],
                orgs: vec![OrgRef::Ods("RX1".into())]
            })
        );
        let inactive = json!({"resourceType": "CareTeam", "status": "inactive"});
        assert_eq!(CareTeamFacts::from_json(&inactive), None);
    }

    #[test]
    fn resource_facts_labels_codes_and_creator() {
        let r = json!({"resourceType": "Condition",
            "meta": {"security": [{"system": CONFIDENTIALITY_SYSTEM, "code": "R"},
                                  {"code": "V"}, {"code": "PSY"}],
                     "tag": [{"system": CREATING_ORG_TAG_SYSTEM, "code": "RX1"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]},
            "category": [{"coding": [{"code": "problem-list-item"}]}]});
        let f = ResourceFacts::from_json(&r);
        assert_eq!(f.confidentiality(), Some("V"));
        assert_eq!(f.creating_org.as_deref(), Some("RX1"));
        assert_eq!(f.codes.len(), 2);
        assert_eq!(f.security.len(), 3);
    }

    #[test]
    fn organization_ods_code() {
        let o = json!({"resourceType": "Organization",
            "identifier": [{"system": "other", "value": "x"},
                           {"system": ODS_SYSTEM, "value": "A12345"}]});
        assert_eq!(ods_code_of_organization(&o).as_deref(), Some("A12345"));
    }
}
