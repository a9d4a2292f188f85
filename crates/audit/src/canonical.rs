//! The canonical byte form of an [`AuditRecord`], version 1.
//!
//! These bytes are what the chain hashes and what stores keep, so they are
//! defined here explicitly and do not depend on serde's behaviour. A golden
//! test pins them: changing this file's output for an existing record breaks
//! every ledger ever written, so a new encoding must get a new version number
//! and `decode` must keep reading the old one.
//!
//! # Encoding v1
//!
//! One compact JSON object (UTF-8, no whitespace, no trailing newline) with
//! exactly these members, in this order (which is ascending byte order of the
//! keys), every member always present:
//!
//! | key              | value                                                        |
//! |------------------|--------------------------------------------------------------|
//! | `_v`             | the integer `1`                                              |
//! | `action`         | string, [`AuditAction::as_str`] (e.g. `"read"`, `"token-issue"`) |
//! | `agent`          | object `{"client","display","org","role","user"}` in that order; `display` a string, the others string or `null` |
//! | `channel`        | string, [`Channel::as_str`]                                  |
//! | `detail`         | string or `null`                                             |
//! | `outcome`        | `"success"`, `"denied"` or `"failed"`                        |
//! | `outcome_reason` | `null` for success, else the reason string                   |
//! | `patient`        | string or `null`                                             |
//! | `purpose`        | string                                                       |
//! | `recorded_at`    | integer, microseconds since the Unix epoch                   |
//! | `resources`      | array of strings, in the record's order                      |
//!
//! Integers are written in decimal with no sign for non-negative values, `-`
//! for negative ones, no leading zeros and no exponent or fraction.
//!
//! Strings are written as in RFC 8785 (JCS): `"` as `\"`, `\` as `\\`, U+0008,
//! U+0009, U+000A, U+000C and U+000D as `\b`, `\t`, `\n`, `\f` and `\r`, every
//! other code point below U+0020 as `\u00xx` with lowercase hex, and every
//! other character (including `/`, U+007F and all non-ASCII) as its raw UTF-8
//! bytes. No Unicode normalisation is applied: a string is hashed as given.
//!
//! [`decode`] accepts exactly the bytes [`canonical_bytes`] produces: it parses,
//! re-encodes and requires the result to be byte-identical, so a record has
//! one and only one stored form.

use serde_json::{Map, Value};

use crate::{Agent, AuditAction, AuditError, AuditOutcome, AuditRecord, Channel};

/// The encoding version written by [`canonical_bytes`].
pub const CANONICAL_VERSION: i64 = 1;

/// The canonical byte form of a record (encoding v1, see the module docs).
#[must_use]
pub fn canonical_bytes(record: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + record.purpose.len());
    out.extend_from_slice(b"{\"_v\":");
    write_int(&mut out, CANONICAL_VERSION);
    out.extend_from_slice(b",\"action\":");
    write_str(&mut out, record.action.as_str());
    out.extend_from_slice(b",\"agent\":{\"client\":");
    write_opt(&mut out, record.agent.client.as_deref());
    out.extend_from_slice(b",\"display\":");
    write_str(&mut out, &record.agent.display);
    out.extend_from_slice(b",\"org\":");
    write_opt(&mut out, record.agent.org.as_deref());
    out.extend_from_slice(b",\"role\":");
    write_opt(&mut out, record.agent.role.as_deref());
    out.extend_from_slice(b",\"user\":");
    write_opt(&mut out, record.agent.user.as_deref());
    out.extend_from_slice(b"},\"channel\":");
    write_str(&mut out, record.channel.as_str());
    out.extend_from_slice(b",\"detail\":");
    write_opt(&mut out, record.detail.as_deref());
    out.extend_from_slice(b",\"outcome\":");
    write_str(&mut out, record.outcome.code());
    out.extend_from_slice(b",\"outcome_reason\":");
    write_opt(&mut out, record.outcome.reason());
    out.extend_from_slice(b",\"patient\":");
    write_opt(&mut out, record.patient.as_deref());
    out.extend_from_slice(b",\"purpose\":");
    write_str(&mut out, &record.purpose);
    out.extend_from_slice(b",\"recorded_at\":");
    write_int(&mut out, record.recorded_at);
    out.extend_from_slice(b",\"resources\":[");
    for (i, r) in record.resources.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, r);
    }
    out.extend_from_slice(b"]}");
    out
}

/// Reads a record back from its canonical bytes.
///
/// # Errors
/// [`AuditError::Decode`] if the bytes are not a well-formed v1 entry,
/// [`AuditError::UnsupportedVersion`] for another encoding version, and
/// [`AuditError::NotCanonical`] if they parse but are not byte-for-byte the
/// canonical form (different key order, whitespace, escapes, extra keys).
pub fn decode(bytes: &[u8]) -> Result<AuditRecord, AuditError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| AuditError::Decode(format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(AuditError::Decode("not a JSON object".into()));
    };
    let version = int(&obj, "_v")?;
    if version != CANONICAL_VERSION {
        return Err(AuditError::UnsupportedVersion(version));
    }
    let action_name = string(&obj, "action")?;
    let action = AuditAction::from_name(&action_name)
        .ok_or_else(|| AuditError::Decode(format!("unknown action {action_name:?}")))?;
    let channel_name = string(&obj, "channel")?;
    let channel = Channel::from_name(&channel_name)
        .ok_or_else(|| AuditError::Decode(format!("unknown channel {channel_name:?}")))?;
    let Some(Value::Object(agent)) = obj.get("agent") else {
        return Err(AuditError::Decode(
            "`agent` is missing or not an object".into(),
        ));
    };
    let agent = Agent {
        user: opt_string(agent, "user")?,
        role: opt_string(agent, "role")?,
        org: opt_string(agent, "org")?,
        client: opt_string(agent, "client")?,
        display: string(agent, "display")?,
    };
    let reason = opt_string(&obj, "outcome_reason")?;
    let outcome = match (string(&obj, "outcome")?.as_str(), reason) {
        ("success", None) => AuditOutcome::Success,
        ("denied", Some(r)) => AuditOutcome::Denied(r),
        ("failed", Some(r)) => AuditOutcome::Failed(r),
        (other, r) => {
            return Err(AuditError::Decode(format!(
                "outcome {other:?} with reason {r:?} is not a valid combination"
            )));
        }
    };
    let Some(Value::Array(items)) = obj.get("resources") else {
        return Err(AuditError::Decode(
            "`resources` is missing or not an array".into(),
        ));
    };
    let resources = items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(AuditError::Decode("`resources` holds a non-string".into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let record = AuditRecord {
        recorded_at: int(&obj, "recorded_at")?,
        action,
        outcome,
        agent,
        patient: opt_string(&obj, "patient")?,
        resources,
        purpose: string(&obj, "purpose")?,
        channel,
        detail: opt_string(&obj, "detail")?,
    };
    if canonical_bytes(&record) != bytes {
        return Err(AuditError::NotCanonical);
    }
    Ok(record)
}

fn int(obj: &Map<String, Value>, key: &str) -> Result<i64, AuditError> {
    obj.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| AuditError::Decode(format!("`{key}` is missing or not an integer")))
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<String, AuditError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(AuditError::Decode(format!(
            "`{key}` is missing or not a string"
        ))),
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, AuditError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Null) => Ok(None),
        _ => Err(AuditError::Decode(format!(
            "`{key}` is missing or not a string or null"
        ))),
    }
}

fn write_int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(n.to_string().as_bytes());
}

fn write_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            0x08 => Some(b"\\b"),
            b'\t' => Some(b"\\t"),
            b'\n' => Some(b"\\n"),
            0x0c => Some(b"\\f"),
            b'\r' => Some(b"\\r"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0x0f)],
            ]),
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}
