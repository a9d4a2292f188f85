//! Rendering a ledger row as an R4 `AuditEvent` in the style of IHE Basic
//! Audit Log Patterns (BALP), with the Patient as an entity (rule F2) and
//! break-glass as a Security Alert (rule F3).
//!
//! | action               | type                               | subtype                                  | action |
//! |----------------------|------------------------------------|------------------------------------------|--------|
//! | read / vread         | audit-event-type `rest`            | restful-interaction `read` / `vread`     | R |
//! | history              | `rest`                             | `history-instance`                       | R |
//! | search               | `rest`                             | `search-type` (+ a Query entity)         | E |
//! | everything           | `rest`                             | `operation`                              | E |
//! | create               | `rest`                             | `create`                                 | C |
//! | update / patch       | `rest`                             | `update` / `patch`                       | U |
//! | delete               | `rest`                             | `delete`                                 | D |
//! | transaction / batch  | `rest`                             | `transaction` / `batch`                  | E |
//! | import               | DCM 110107 Import                  | ISO 21089 `receive`                      | C |
//! | token-issue          | DCM 110114 User Authentication     | DCM 110122 Login                         | E |
//! | break-glass-start    | DCM 110113 Security Alert          | DCM 110127 Emergency Override Started    | E |
//! | break-glass-stop     | DCM 110113 Security Alert          | DCM 110138 Emergency Override Stopped    | E |
//! | disclose             | DCM 110106 Export                  | ISO 21089 `disclose`                     | R |
//!
//! Outcome: success `0`; denied or failed `4` with the reason in
//! `outcomeDesc`. The requesting agent carries the SDS user id, SDS role and
//! `purposeOfUse` (v3-ActReason `ETREAT` under break-glass, else a v3 code when
//! the purpose starts with one, always with the purpose as text); the ODS
//! organisation is its own agent. `id` is the ledger seq; the root extension
//! [`CHAIN_HASH_EXTENSION_URL`] holds the chain hash (hex) and
//! [`CHANNEL_EXTENSION_URL`] the way in.

use serde_json::{Map, Value, json};

use crate::{AuditAction, AuditOutcome, AuditRecord, LedgerRow, rfc3339_micros};

/// Extension (on the `AuditEvent`) holding the ledger chain hash, hex.
pub const CHAIN_HASH_EXTENSION_URL: &str = "urn:carelayer:audit:chain-hash";
/// Extension (on the `AuditEvent`) holding the channel (`rest`, `cli`, …).
pub const CHANNEL_EXTENSION_URL: &str = "urn:carelayer:audit:channel";

pub const SDS_USER_ID: &str = "https://fhir.nhs.uk/Id/sds-user-id";
pub const SDS_ROLE_CODE: &str = "https://fhir.nhs.uk/Id/sds-role-code";
pub const ODS_ORGANIZATION_CODE: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const ISO_21089: &str = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle";
const V3_ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const V3_PARTICIPATION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const V3_ROLE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleClass";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";

/// v3-ActReason purpose-of-use codes recognised at the start of a purpose.
const PURPOSE_CODES: &[(&str, &str)] = &[
    ("TREAT", "treatment"),
    ("ETREAT", "Emergency Treatment"),
    ("CAREMGT", "care management"),
    ("HPAYMT", "healthcare payment"),
    ("HOPERAT", "healthcare operations"),
    ("HRESCH", "healthcare research"),
    ("PUBHLTH", "public health"),
    ("HSYSADMIN", "health system administration"),
    ("PATRQT", "patient requested"),
];

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

/// (type, subtypes, action code) for an action.
fn classify(action: AuditAction) -> (Value, Vec<Value>, &'static str) {
    let rest = |code: &str, act: &'static str| {
        (
            coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
            vec![coding(RESTFUL_INTERACTION, code, code)],
            act,
        )
    };
    match action {
        AuditAction::Read => rest("read", "R"),
        AuditAction::Vread => rest("vread", "R"),
        AuditAction::History => rest("history-instance", "R"),
        AuditAction::Search => rest("search-type", "E"),
        AuditAction::Everything => rest("operation", "E"),
        AuditAction::Create => rest("create", "C"),
        AuditAction::Update => rest("update", "U"),
        AuditAction::Patch => rest("patch", "U"),
        AuditAction::Delete => rest("delete", "D"),
        AuditAction::Transaction => rest("transaction", "E"),
        AuditAction::Batch => rest("batch", "E"),
        AuditAction::Import => (
            coding(DCM, "110107", "Import"),
            vec![coding(
                ISO_21089,
                "receive",
                "Receive Record Lifecycle Event",
            )],
            "C",
        ),
        AuditAction::TokenIssue => (
            coding(DCM, "110114", "User Authentication"),
            vec![coding(DCM, "110122", "Login")],
            "E",
        ),
        AuditAction::BreakGlassStart => (
            coding(DCM, "110113", "Security Alert"),
            vec![coding(DCM, "110127", "Emergency Override Started")],
            "E",
        ),
        AuditAction::BreakGlassStop => (
            coding(DCM, "110113", "Security Alert"),
            vec![coding(DCM, "110138", "Emergency Override Stopped")],
            "E",
        ),
        AuditAction::Disclose => (
            coding(DCM, "110106", "Export"),
            vec![coding(
                ISO_21089,
                "disclose",
                "Disclose Record Lifecycle Event",
            )],
            "R",
        ),
    }
}

/// The purpose as a `CodeableConcept`: ETREAT under break-glass, else a
/// v3-ActReason code if the purpose starts with one, always with the text.
fn purpose_of_use(record: &AuditRecord) -> Value {
    let code = if record.is_break_glass() {
        Some(("ETREAT", "Emergency Treatment"))
    } else {
        let first = record
            .purpose
            .split(|c: char| c == ':' || c.is_whitespace())
            .next()
            .unwrap_or_default();
        PURPOSE_CODES.iter().copied().find(|(c, _)| *c == first)
    };
    let mut cc = Map::new();
    if let Some((code, display)) = code {
        cc.insert(
            "coding".into(),
            json!([coding(V3_ACT_REASON, code, display)]),
        );
    }
    if !record.purpose.is_empty() {
        cc.insert("text".into(), json!(record.purpose));
    }
    Value::Object(cc)
}

/// Renders one ledger row as an R4 `AuditEvent` (see the module docs).
/// `base_url` is this server's FHIR base, used as the audit source.
#[must_use]
pub fn to_audit_event(row: &LedgerRow, base_url: &str) -> Value {
    let r = &fhir_safe(&row.record);
    let (event_type, subtypes, action) = classify(r.action);
    let writes = matches!(action, "C" | "U" | "D");
    let purpose = purpose_of_use(r);

    let mut ev = Map::new();
    ev.insert("resourceType".into(), json!("AuditEvent"));
    ev.insert("id".into(), json!(row.seq.to_string()));
    ev.insert(
        "extension".into(),
        json!([
            { "url": CHAIN_HASH_EXTENSION_URL, "valueString": row.hash_hex() },
            { "url": CHANNEL_EXTENSION_URL, "valueCode": r.channel.as_str() },
        ]),
    );
    ev.insert("type".into(), event_type);
    ev.insert("subtype".into(), Value::Array(subtypes));
    ev.insert("action".into(), json!(action));
    ev.insert(
        "recorded".into(),
        json!(rfc3339_micros(r.recorded_at).unwrap_or_else(|| "1970-01-01T00:00:00Z".into())),
    );
    match &r.outcome {
        AuditOutcome::Success => {
            ev.insert("outcome".into(), json!("0"));
        }
        AuditOutcome::Denied(reason) => {
            ev.insert("outcome".into(), json!("4"));
            ev.insert("outcomeDesc".into(), json!(labelled("Denied", reason)));
        }
        AuditOutcome::Failed(reason) => {
            ev.insert("outcome".into(), json!("4"));
            ev.insert("outcomeDesc".into(), json!(labelled("Failed", reason)));
        }
    }
    if !purpose.as_object().is_none_or(Map::is_empty) {
        ev.insert("purposeOfEvent".into(), json!([purpose.clone()]));
    }
    ev.insert(
        "agent".into(),
        Value::Array(agents(r, base_url, writes, &purpose)),
    );
    ev.insert(
        "source".into(),
        json!({
            "site": base_url,
            "observer": {
                "identifier": { "system": "urn:ietf:rfc:3986", "value": base_url },
                "display": "carelayer FHIR server",
            },
            "type": [coding(SOURCE_TYPE, "4", "Application Server")],
        }),
    );
    let entities = entities(r);
    if !entities.is_empty() {
        ev.insert("entity".into(), Value::Array(entities));
    }
    Value::Object(ev)
}

fn labelled(label: &str, reason: &str) -> String {
    if reason.is_empty() {
        label.to_owned()
    } else {
        format!("{label}: {reason}")
    }
}

/// A copy of the record whose strings are valid FHIR strings: control
/// characters other than tab, CR and LF become U+FFFD, and blank optional
/// values are dropped (FHIR forbids empty strings).
fn fhir_safe(r: &AuditRecord) -> AuditRecord {
    fn text(s: &str) -> String {
        s.chars()
            .map(|c| {
                if c.is_control() && !matches!(c, '\t' | '\r' | '\n') {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect::<String>()
            .trim()
            .to_owned()
    }
    fn opt(s: Option<&String>) -> Option<String> {
        s.map(|s| text(s)).filter(|s| !s.is_empty())
    }
    AuditRecord {
        recorded_at: r.recorded_at,
        action: r.action,
        outcome: match &r.outcome {
            AuditOutcome::Success => AuditOutcome::Success,
            AuditOutcome::Denied(x) => AuditOutcome::Denied(text(x)),
            AuditOutcome::Failed(x) => AuditOutcome::Failed(text(x)),
        },
        agent: crate::Agent {
            user: opt(r.agent.user.as_ref()),
            role: opt(r.agent.role.as_ref()),
            org: opt(r.agent.org.as_ref()),
            client: opt(r.agent.client.as_ref()),
            display: text(&r.agent.display),
        },
        patient: opt(r.patient.as_ref()),
        resources: r
            .resources
            .iter()
            .map(|s| text(s))
            .filter(|s| !s.is_empty())
            .collect(),
        purpose: text(&r.purpose),
        channel: r.channel,
        detail: opt(r.detail.as_ref()),
    }
}

fn agents(r: &AuditRecord, base_url: &str, writes: bool, purpose: &Value) -> Vec<Value> {
    let mut agents = Vec::new();

    // The person (or system) who asked: requestor = true.
    let mut who = Map::new();
    if let Some(user) = &r.agent.user {
        who.insert(
            "identifier".into(),
            json!({ "system": SDS_USER_ID, "value": user }),
        );
    }
    if !r.agent.display.is_empty() {
        who.insert("display".into(), json!(r.agent.display));
    }
    let mut user = Map::new();
    user.insert(
        "type".into(),
        json!({ "coding": [if writes {
            coding(V3_PARTICIPATION_TYPE, "AUT", "author (originator)")
        } else {
            coding(V3_PARTICIPATION_TYPE, "IRCP", "information recipient")
        }] }),
    );
    if let Some(role) = &r.agent.role {
        user.insert(
            "role".into(),
            json!([{ "coding": [{ "system": SDS_ROLE_CODE, "code": role }] }]),
        );
    }
    if !who.is_empty() {
        user.insert("who".into(), Value::Object(who));
    }
    user.insert("requestor".into(), json!(true));
    if !purpose.as_object().is_none_or(Map::is_empty) {
        user.insert("purposeOfUse".into(), json!([purpose]));
    }
    agents.push(Value::Object(user));

    // The organisation they act for.
    if let Some(org) = &r.agent.org {
        agents.push(json!({
            "type": { "coding": [coding(V3_ROLE_CLASS, "PROV", "healthcare provider")] },
            "who": { "identifier": { "system": ODS_ORGANIZATION_CODE, "value": org } },
            "requestor": false,
        }));
    }

    // Data flows server → client for reads, client → server for writes.
    let (server_role, client_role) = if writes {
        (
            ("110152", "Destination Role ID"),
            ("110153", "Source Role ID"),
        )
    } else {
        (
            ("110153", "Source Role ID"),
            ("110152", "Destination Role ID"),
        )
    };
    agents.push(json!({
        "type": { "coding": [coding(DCM, server_role.0, server_role.1)] },
        "who": { "display": "carelayer FHIR server" },
        "requestor": false,
        "network": { "address": base_url, "type": "5" },
    }));
    if let Some(client) = &r.agent.client {
        agents.push(json!({
            "type": { "coding": [coding(DCM, client_role.0, client_role.1)] },
            "who": { "identifier": { "value": client }, "display": client },
            "requestor": false,
        }));
    }
    agents
}

fn entities(r: &AuditRecord) -> Vec<Value> {
    let mut entities = Vec::new();
    let mut details = Vec::new();
    if let Some(reason) = r.break_glass_reason().filter(|s| !s.is_empty()) {
        details.push(json!({ "type": "break-glass-reason", "valueString": reason }));
    }
    if let Some(detail) = &r.detail
        && r.action != AuditAction::Search
    {
        details.push(json!({ "type": "detail", "valueString": detail }));
    }

    let patient_ref = r.patient.as_ref().map(|p| format!("Patient/{p}"));
    if let Some(reference) = &patient_ref {
        let mut e = Map::new();
        e.insert("what".into(), json!({ "reference": reference }));
        e.insert("type".into(), coding(ENTITY_TYPE, "1", "Person"));
        e.insert("role".into(), coding(OBJECT_ROLE, "1", "Patient"));
        if !details.is_empty() {
            e.insert("detail".into(), Value::Array(std::mem::take(&mut details)));
        }
        entities.push(Value::Object(e));
    }
    for resource in &r.resources {
        if Some(resource) == patient_ref.as_ref() {
            continue;
        }
        entities.push(json!({
            "what": { "reference": resource },
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
        }));
    }
    if r.action == AuditAction::Search
        && let Some(query) = &r.detail
    {
        entities.push(json!({
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "24", "Query"),
            "description": query,
            "query": base64(query.as_bytes()),
        }));
    }
    if !details.is_empty() {
        // No patient entity to carry them: attach to a bare entity.
        entities.push(json!({
            "type": coding(ENTITY_TYPE, "4", "Other"),
            "detail": details,
        }));
    }
    entities
}

/// Standard base64 with padding (RFC 4648 §4), for `entity.query`.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
pub(crate) fn base64_for_tests(data: &[u8]) -> String {
    base64(data)
}
