//! Patient choices: a policy-side model of FHIR R4 `Consent` and a parser
//! from its JSON.
//!
//! How a Consent binds (our reading of R4 `Consent.provision`, rules sheet
//! F1):
//! - Only `status = active` Consents within their `provision.period` count;
//!   setting the status to `inactive` (withdrawal) takes effect on the next
//!   decision, because records reads Consents fresh for each request.
//! - A provision applies to an access when *every* criterion it states
//!   matches (actor, action, securityLabel, class, code, purpose, period);
//!   within one criterion any listed value matches. Nested provisions are
//!   exceptions: the deepest applying provision decides its type.
//! - Across Consents a deny wins. A deny with no actor binds everyone
//!   (every organisation, user and system), including break-glass: the
//!   patient's stated choice is not ours to override.
//! - "Permit-only" is a deny with nested permits (`deny` everything,
//!   `permit` my GP practice): everyone not named is denied.
//! - A permit that *names* the caller (actor by ODS code or SDS user id) is
//!   the patient's permission to view: it stands in for a legitimate
//!   relationship. A permit with no actor grants nobody anything beyond
//!   carving an exception out of a surrounding deny.
//! - The national data opt-out and Type 1 opt-out are recognised by their
//!   codes (rules sheet O7, O8) anywhere in `category`, `purpose`,
//!   `policyRule`, `provision.purpose` or `provision.code`; they do not bind
//!   direct care and are applied to secondary use only (see
//!   [`crate::decide_secondary_use`]).

use serde_json::Value;

use crate::facts::{
    Coding, ODS_SYSTEM, OrgRef, Period, ResourceFacts, array, practitioner_user_id,
};

/// SNOMED CT: "Limiting access to confidential patient information" (the
/// national data opt-out Consent's purpose, rules sheet O8).
pub const NATIONAL_OPT_OUT_SNOMED: &str = "370856009";
/// SNOMED CT: Type 1 opt-out (dissent from secondary use of GP record).
pub const TYPE1_OPT_OUT_SNOMED: &str = "827241000000103";
/// The same Type 1 code in Read v2 and CTV3.
pub const TYPE1_OPT_OUT_READ: &str = "9Nu0";
pub const TYPE1_OPT_OUT_CTV3: &str = "XaZ89";

/// `Consent.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentStatus {
    Draft,
    Proposed,
    Active,
    Rejected,
    Inactive,
    EnteredInError,
}

impl ConsentStatus {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "draft" => Self::Draft,
            "proposed" => Self::Proposed,
            "active" => Self::Active,
            "rejected" => Self::Rejected,
            "inactive" => Self::Inactive,
            "entered-in-error" => Self::EnteredInError,
            _ => return None,
        })
    }
}

/// What kind of choice a Consent records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentKind {
    /// A deny/permit choice evaluated on every access.
    Choice,
    /// The national data opt-out (secondary use only).
    NationalOptOut,
    /// The Type 1 opt-out (GP data leaving the practice for secondary use).
    Type1OptOut,
}

/// `provision.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionType {
    Deny,
    Permit,
}

/// `provision.actor.reference`, as policy can match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentActor {
    Organization(OrgRef),
    /// An SDS user id.
    Practitioner(String),
    /// Anything else (CareTeam, RelatedPerson…): matches no caller.
    Other(String),
}

/// One `provision` (possibly nested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provision {
    pub kind: ProvisionType,
    pub period: Option<Period>,
    pub actors: Vec<ConsentActor>,
    /// `provision.action` codings (`access`, `use`, `disclose`, `correct`,
    /// `collect`).
    pub actions: Vec<Coding>,
    pub security_labels: Vec<Coding>,
    /// Resource types (`provision.class`, code = the type name).
    pub classes: Vec<Coding>,
    pub codes: Vec<Coding>,
    pub purposes: Vec<Coding>,
    pub provisions: Vec<Provision>,
}

/// A parsed Consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRule {
    pub id: Option<String>,
    pub status: ConsentStatus,
    pub kind: ConsentKind,
    /// `scope` code (`patient-privacy`, `research`, `treatment`, `adr`).
    pub scope: Option<String>,
    /// `provision` (absent in NDOP-style opt-out Consents).
    pub provision: Option<Provision>,
}

/// Why a Consent could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    #[error("not a Consent resource")]
    NotConsent,
    #[error("Consent.status missing or not an R4 status code")]
    Status,
    #[error("Consent.provision.type must be 'deny' or 'permit'")]
    ProvisionType,
}

/// The caller and access a provision is matched against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccessContext<'a> {
    pub org: Option<&'a str>,
    pub user: Option<&'a str>,
    pub resource_type: &'a str,
    pub resource: &'a ResourceFacts,
    /// v3-ActReason code of the purpose.
    pub purpose: &'a str,
    /// `access` for reads, `correct` for writes.
    pub action: &'a str,
    pub now: i64,
}

/// The effect of the patient's choices on one access.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ConsentEffect {
    /// The id (or "consent") of a Consent that denies.
    pub denied_by: Option<String>,
    /// A Consent whose permit names the caller.
    pub permitted_by: Option<String>,
}

impl ConsentRule {
    /// Parse a FHIR R4 Consent.
    ///
    /// # Errors
    /// Not a Consent, or a status/provision type R4 does not define (a
    /// Consent we cannot read must not silently mean "no restriction":
    /// records should treat the error as a deny for the patient's data).
    pub fn from_json(consent: &Value) -> Result<Self, ConsentError> {
        if consent.get("resourceType").and_then(Value::as_str) != Some("Consent") {
            return Err(ConsentError::NotConsent);
        }
        let status = consent
            .get("status")
            .and_then(Value::as_str)
            .and_then(ConsentStatus::parse)
            .ok_or(ConsentError::Status)?;
        let provision = consent.get("provision").map(parse_provision).transpose()?;
        let scope = consent
            .get("scope")
            .map(Coding::from_concept)
            .and_then(|c| c.into_iter().next())
            .map(|c| c.code);
        Ok(Self {
            id: consent.get("id").and_then(Value::as_str).map(str::to_owned),
            status,
            kind: kind_of(consent),
            scope,
            provision,
        })
    }

    /// Active and, if it states a period, within it.
    #[must_use]
    pub fn in_force(&self, now: i64) -> bool {
        self.status == ConsentStatus::Active
            && self
                .provision
                .as_ref()
                .and_then(|p| p.period)
                .is_none_or(|p| p.contains(now))
    }

    /// Resolve organisation references in actors.
    pub fn resolve_orgs(&mut self, resolve: &impl Fn(&str) -> Option<String>) {
        fn walk(p: &mut Provision, resolve: &impl Fn(&str) -> Option<String>) {
            for a in &mut p.actors {
                if let ConsentActor::Organization(o) = a {
                    o.resolve(resolve);
                }
            }
            for n in &mut p.provisions {
                walk(n, resolve);
            }
        }
        if let Some(p) = &mut self.provision {
            walk(p, resolve);
        }
    }

    fn label(&self) -> String {
        self.id
            .as_ref()
            .map_or_else(|| "Consent".to_owned(), |id| format!("Consent/{id}"))
    }
}

fn parse_provision(v: &Value) -> Result<Provision, ConsentError> {
    let kind = match v.get("type").and_then(Value::as_str) {
        Some("deny") => ProvisionType::Deny,
        // R4: type is optional; a provision without one only scopes its
        // nested provisions. Treat it as permit so it never denies alone.
        Some("permit") | None => ProvisionType::Permit,
        Some(_) => return Err(ConsentError::ProvisionType),
    };
    let codings = |field: &str| -> Vec<Coding> {
        array(v.get(field))
            .flat_map(|item| {
                // `code`, `action` are CodeableConcepts; the rest Codings.
                let mut out = Coding::from_concept(item);
                out.extend(Coding::from_json(item));
                out
            })
            .collect()
    };
    let actors = array(v.get("actor"))
        .filter_map(|a| a.get("reference"))
        .map(parse_actor)
        .collect();
    Ok(Provision {
        kind,
        period: v.get("period").map(Period::from_json),
        actors,
        actions: codings("action"),
        security_labels: codings("securityLabel"),
        classes: codings("class"),
        codes: codings("code"),
        purposes: codings("purpose"),
        provisions: array(v.get("provision"))
            .map(parse_provision)
            .collect::<Result<_, _>>()?,
    })
}

fn parse_actor(reference: &Value) -> ConsentActor {
    if let Some(org) = OrgRef::from_reference_json(reference) {
        return ConsentActor::Organization(org);
    }
    let is_practitioner = reference
        .get("reference")
        .and_then(Value::as_str)
        .is_some_and(|r| r.contains("Practitioner/"))
        || reference
            .get("identifier")
            .and_then(|i| i.get("system"))
            .and_then(Value::as_str)
            == Some(crate::facts::SDS_USER_SYSTEM);
    if is_practitioner && let Some(user) = practitioner_user_id(reference) {
        return ConsentActor::Practitioner(user);
    }
    // An ODS identifier on a reference without `type` is still an org.
    if let Some(id) = reference.get("identifier")
        && id.get("system").and_then(Value::as_str) == Some(ODS_SYSTEM)
        && let Some(code) = id.get("value").and_then(Value::as_str)
    {
        return ConsentActor::Organization(OrgRef::Ods(code.to_owned()));
    }
    ConsentActor::Other(reference.to_string())
}

/// Opt-out codes anywhere a Consent may carry them.
fn kind_of(consent: &Value) -> ConsentKind {
    let mut codes: Vec<Coding> = Vec::new();
    for field in ["category", "purpose", "policyRule"] {
        match consent.get(field) {
            Some(Value::Array(items)) => {
                for i in items {
                    codes.extend(Coding::from_concept(i));
                    codes.extend(Coding::from_json(i));
                }
            }
            Some(v) => {
                codes.extend(Coding::from_concept(v));
                codes.extend(Coding::from_json(v));
            }
            None => {}
        }
    }
    fn walk(p: &Value, codes: &mut Vec<Coding>) {
        for field in ["purpose", "code"] {
            for item in array(p.get(field)) {
                codes.extend(Coding::from_concept(item));
                codes.extend(Coding::from_json(item));
            }
        }
        for n in array(p.get("provision")) {
            walk(n, codes);
        }
    }
    if let Some(p) = consent.get("provision") {
        walk(p, &mut codes);
    }
    let has = |code: &str| codes.iter().any(|c| c.code == code);
    if has(TYPE1_OPT_OUT_SNOMED) || has(TYPE1_OPT_OUT_READ) || has(TYPE1_OPT_OUT_CTV3) {
        ConsentKind::Type1OptOut
    } else if has(NATIONAL_OPT_OUT_SNOMED) {
        ConsentKind::NationalOptOut
    } else {
        ConsentKind::Choice
    }
}

impl Provision {
    /// Does this provision (ignoring nesting) apply to the access?
    fn applies(&self, ctx: &AccessContext<'_>) -> bool {
        let any =
            |list: &[Coding], f: &dyn Fn(&Coding) -> bool| list.is_empty() || list.iter().any(f);
        self.period.is_none_or(|p| p.contains(ctx.now))
            && (self.actors.is_empty()
                || self.actors.iter().any(|a| {
                    actor_is_caller(a, ctx)
                        // Fail closed: a deny naming an organisation records
                        // could not resolve to an ODS code binds everyone.
                        || (self.kind == ProvisionType::Deny
                            && matches!(a, ConsentActor::Organization(OrgRef::Reference(_))))
                }))
            && any(&self.actions, &|c| action_matches(&c.code, ctx.action))
            && any(&self.security_labels, &|c| {
                ctx.resource.security.iter().any(|s| s.matches(c))
            })
            && any(&self.classes, &|c| c.code == ctx.resource_type)
            && any(&self.codes, &|c| {
                ctx.resource.codes.iter().any(|s| s.matches(c))
            })
            && any(&self.purposes, &|c| c.code == ctx.purpose)
    }

    /// The deepest applying provision's (type, names the caller).
    fn evaluate(&self, ctx: &AccessContext<'_>) -> Option<(ProvisionType, bool)> {
        if !self.applies(ctx) {
            return None;
        }
        for nested in &self.provisions {
            if let Some(effect) = nested.evaluate(ctx) {
                return Some(effect);
            }
        }
        let names_caller = self.actors.iter().any(|a| actor_is_caller(a, ctx));
        Some((self.kind, names_caller))
    }
}

fn actor_is_caller(actor: &ConsentActor, ctx: &AccessContext<'_>) -> bool {
    match actor {
        ConsentActor::Organization(o) => o.ods().is_some_and(|code| Some(code) == ctx.org),
        ConsentActor::Practitioner(user) => Some(user.as_str()) == ctx.user,
        ConsentActor::Other(_) => false,
    }
}

/// `access`/`use`/`disclose` cover reading; `correct`/`collect` writing.
fn action_matches(code: &str, action: &str) -> bool {
    match action {
        "access" => matches!(code, "access" | "use" | "disclose"),
        _ => matches!(code, "correct" | "collect"),
    }
}

/// Evaluate every choice Consent in force.
pub(crate) fn evaluate(consents: &[ConsentRule], ctx: &AccessContext<'_>) -> ConsentEffect {
    let mut effect = ConsentEffect::default();
    for consent in consents {
        if consent.kind != ConsentKind::Choice || !consent.in_force(ctx.now) {
            continue;
        }
        let Some(provision) = &consent.provision else {
            continue;
        };
        match provision.evaluate(ctx) {
            Some((ProvisionType::Deny, _)) => {
                if effect.denied_by.is_none() {
                    effect.denied_by = Some(consent.label());
                }
            }
            Some((ProvisionType::Permit, true)) => {
                if effect.permitted_by.is_none() {
                    effect.permitted_by = Some(consent.label());
                }
            }
            Some((ProvisionType::Permit, false)) | None => {}
        }
    }
    effect
}

/// Is an opt-out of `kind` in force?
pub(crate) fn opted_out(consents: &[ConsentRule], kind: ConsentKind, now: i64) -> bool {
    consents.iter().any(|c| c.kind == kind && c.in_force(now))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx<'a>(
        org: &'a str,
        user: &'a str,
        rt: &'a str,
        res: &'a ResourceFacts,
    ) -> AccessContext<'a> {
        AccessContext {
            org: Some(org),
            user: Some(user),
            resource_type: rt,
            resource: res,
            purpose: "TREAT",
            action: "access",
            now: 1_700_000_000_000_000,
        }
    }

    fn ods(code: &str) -> Value {
        json!({"reference": {"identifier": {"system": ODS_SYSTEM, "value": code}}})
    }

    #[test]
    fn parses_provisions_actors_and_kinds() {
        let c = json!({"resourceType": "Consent", "id": "c1", "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "provision": {"type": "deny",
                "actor": [ods("RX1"), {"reference": {"reference": "Practitioner/u9"}}],
                "securityLabel": [{"code": "PSY"}],
                "class": [{"code": "Condition"}],
                "purpose": [{"code": "HRESCH"}],
                "provision": [{"type": "permit", "actor": [ods("A1")]}]}});
        let rule = ConsentRule::from_json(&c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rule.kind, ConsentKind::Choice);
        assert_eq!(rule.scope.as_deref(), Some("patient-privacy"));
        let p = rule.provision.unwrap_or_else(|| panic!("provision"));
        assert_eq!(p.kind, ProvisionType::Deny);
        assert_eq!(
            p.actors,
            vec![
                ConsentActor::Organization(OrgRef::Ods("RX1".into())),
                ConsentActor::Practitioner("u9".into())
            ]
        );
        assert_eq!(p.provisions.len(), 1);
        assert_eq!(p.provisions[0].kind, ProvisionType::Permit);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            ConsentRule::from_json(&json!({"resourceType": "Patient"})),
            Err(ConsentError::NotConsent)
        );
        assert_eq!(
            ConsentRule::from_json(&json!({"resourceType": "Consent", "status": "on"})),
            Err(ConsentError::Status)
        );
        assert_eq!(
            ConsentRule::from_json(&json!({"resourceType": "Consent", "status": "active",
                "provision": {"type": "maybe"}})),
            Err(ConsentError::ProvisionType)
        );
    }

    /// Decision table: opt-out recognition by code and place.
    #[test]
    fn opt_out_kinds() {
        let table = [
            (
                json!({"purpose": [{"system": "http://snomed.info/sct", "code": "370856009"}]}),
                ConsentKind::NationalOptOut,
            ),
            (
                json!({"provision": {"purpose": [{"code": "370856009"}]}}),
                ConsentKind::NationalOptOut,
            ),
            (
                json!({"category": [{"coding": [{"code": "827241000000103"}]}]}),
                ConsentKind::Type1OptOut,
            ),
            (
                json!({"provision": {"code": [{"coding": [{"code": "9Nu0"}]}]}}),
                ConsentKind::Type1OptOut,
            ),
            (
                json!({"policyRule": {"coding": [{"code": "XaZ89"}]}}),
                ConsentKind::Type1OptOut,
            ),
            (
                json!({"category": [{"coding": [{"code": "59284-0"}]}]}),
                ConsentKind::Choice,
            ),
        ];
        for (extra, want) in table {
            let mut c = json!({"resourceType": "Consent", "status": "active"});
            if let (Some(obj), Some(more)) = (c.as_object_mut(), extra.as_object()) {
                for (k, v) in more {
                    obj.insert(k.clone(), v.clone());
                }
            }
            let rule = ConsentRule::from_json(&c).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(rule.kind, want, "{extra}");
        }
    }

    /// Decision table: one consent × caller → effect.
    #[test]
    fn evaluation_table() {
        let psy = ResourceFacts {
            security: vec![Coding::new(None, "PSY")],
            ..ResourceFacts::default()
        };
        let plain = ResourceFacts::default();
        let deny_rx1 = json!({"type": "deny", "actor": [ods("RX1")]});
        let deny_psy = json!({"type": "deny", "securityLabel": [{"code": "PSY"}]});
        let deny_research = json!({"type": "deny", "purpose": [{"code": "HRESCH"}]});
        let only_gp =
            json!({"type": "deny", "provision": [{"type": "permit", "actor": [ods("GP1")]}]});
        let permit_u1 =
            json!({"type": "permit", "actor": [{"reference": {"reference": "Practitioner/u1"}}]});
        let deny_obs = json!({"type": "deny", "class": [{"code": "Observation"}]});
        let deny_expired = json!({"type": "deny", "period": {"end": "2001-01-01"}});
        let deny_writes = json!({"type": "deny", "action": [{"coding": [{"code": "correct"}]}]});
        // (provision, org, user, type, resource, denied?, permitted?)
        let table: Vec<(&Value, &str, &str, &str, &ResourceFacts, bool, bool)> = vec![
            (&deny_rx1, "RX1", "u1", "Condition", &plain, true, false),
            (&deny_rx1, "RX2", "u1", "Condition", &plain, false, false),
            (&deny_psy, "RX2", "u1", "Condition", &psy, true, false),
            (&deny_psy, "RX2", "u1", "Condition", &plain, false, false),
            (
                &deny_research,
                "RX2",
                "u1",
                "Condition",
                &plain,
                false,
                false,
            ),
            (&only_gp, "GP1", "u1", "Condition", &plain, false, true),
            (&only_gp, "RX1", "u1", "Condition", &plain, true, false),
            (&permit_u1, "RX1", "u1", "Condition", &plain, false, true),
            (&permit_u1, "RX1", "u2", "Condition", &plain, false, false),
            (&deny_obs, "RX1", "u1", "Observation", &plain, true, false),
            (&deny_obs, "RX1", "u1", "Condition", &plain, false, false),
            (
                &deny_expired,
                "RX1",
                "u1",
                "Condition",
                &plain,
                false,
                false,
            ),
            (&deny_writes, "RX1", "u1", "Condition", &plain, false, false),
        ];
        for (i, (provision, org, user, rt, res, denied, permitted)) in table.into_iter().enumerate()
        {
            let c = json!({"resourceType": "Consent", "id": "c", "status": "active", "provision": provision});
            let rule = ConsentRule::from_json(&c).unwrap_or_else(|e| panic!("{e}"));
            let effect = evaluate(&[rule], &ctx(org, user, rt, res));
            assert_eq!(effect.denied_by.is_some(), denied, "row {i} deny");
            assert_eq!(effect.permitted_by.is_some(), permitted, "row {i} permit");
        }
    }

    #[test]
    fn research_purpose_deny_and_withdrawal() {
        let plain = ResourceFacts::default();
        let mut research = ctx("RX1", "u1", "Condition", &plain);
        research.purpose = "HRESCH";
        let c = |status: &str| {
            ConsentRule::from_json(&json!({"resourceType": "Consent", "status": status,
                "provision": {"type": "deny", "purpose": [{"code": "HRESCH"}]}}))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(evaluate(&[c("active")], &research).denied_by.is_some());
        assert!(evaluate(&[c("inactive")], &research).denied_by.is_none());
        assert!(evaluate(&[c("draft")], &research).denied_by.is_none());
    }

    #[test]
    fn unresolved_org_reference_in_deny_fails_closed_until_resolved() {
        let plain = ResourceFacts::default();
        let mut rule = ConsentRule::from_json(&json!({"resourceType": "Consent", "status": "active",
            "provision": {"type": "deny", "actor": [{"reference": {"reference": "Organization/o1"}}]}}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            evaluate(
                std::slice::from_ref(&rule),
                &ctx("RX2", "u", "Condition", &plain)
            )
            .denied_by
            .is_some()
        );
        rule.resolve_orgs(&|r: &str| (r == "Organization/o1").then(|| "RX1".to_owned()));
        assert!(
            evaluate(
                std::slice::from_ref(&rule),
                &ctx("RX2", "u", "Condition", &plain)
            )
            .denied_by
            .is_none()
        );
        assert!(
            evaluate(&[rule], &ctx("RX1", "u", "Condition", &plain))
                .denied_by
                .is_some()
        );
    }
}
