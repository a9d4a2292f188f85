//! Token claims → `Principal`.
//!
//! | claim | meaning |
//! |---|---|
//! | `iss`, `aud`, `exp`, `nbf`, `iat`, `jti` | standard (RFC 7519) |
//! | `sub` | the practitioner's SDS user id (for patients and clients: informational) |
//! | `carelayer_role` or `sds_role` | SDS role code (`R8000`, optionally `system|code`): makes the token a practitioner's |
//! | `carelayer_org` or `ods` | ODS code of the role's organisation (required with a role; optional for clients) |
//! | `nhs_number` or `patient` | the patient's NHS number: makes the token a patient's (without a role) |
//! | `patient_id` | the id of that patient's Patient resource (optional) |
//! | `client_id` | a backend client id: makes the token a system's (without role or patient) |
//! | `scope` | space-separated SMART scopes; required for clients, optional (narrowing) for others |
//! | `carelayer_operator` | `true`: the server's operator; honoured only in tokens of the built-in issuer (`carelayer token --operator`) |
//!
//! Precedence: the operator claim, then a role makes a practitioner, else
//! an NHS number a patient, else a `client_id` a system; anything else is
//! refused.

use base64::Engine;
use carelayer_fhir::nhs_number::NhsNumber;
use carelayer_policy::{Principal, Scope, SdsRole};
use jsonwebtoken::errors::{Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::AuthError;

/// The claim names this server reads (for docs and `carelayer token`).
pub const CLAIM_NAMES: &[&str] = &[
    "sub",
    "carelayer_role",
    "sds_role",
    "carelayer_org",
    "ods",
    "nhs_number",
    "patient",
    "patient_id",
    "client_id",
    "scope",
    "carelayer_operator",
];

/// The claims we read; `aud`/`exp`/`nbf`/`iss` are checked by the decoder.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub iss: String,
    /// Checked by the decoder; kept to bound the verified-token cache.
    #[serde(default)]
    pub exp: u64,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default, alias = "sds_role")]
    pub carelayer_role: Option<String>,
    #[serde(default, alias = "ods")]
    pub carelayer_org: Option<String>,
    #[serde(default, alias = "patient")]
    pub nhs_number: Option<String>,
    #[serde(default)]
    pub patient_id: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub carelayer_operator: bool,
}

/// The `iss` of a token before verification, to pick the issuer's keys.
pub(crate) fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| AuthError::invalid("malformed token"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| AuthError::invalid("malformed token payload"))?;
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let iss: Iss = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::invalid("malformed token payload"))?;
    iss.iss
        .ok_or_else(|| AuthError::invalid("the token has no iss claim"))
}

/// A caller-facing reason for a decoding failure.
pub(crate) fn describe(e: &Error) -> String {
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidAudience => "the token is not for this server (aud)".to_owned(),
        ErrorKind::InvalidIssuer => "the token's issuer is not trusted".to_owned(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key".to_owned(),
        _ => "the token cannot be verified".to_owned(),
    }
}

fn scopes(claims: &Claims) -> Option<Vec<Scope>> {
    claims.scope.as_deref().map(Scope::parse_list)
}

/// Claims → principal (see the module table).
pub(crate) fn principal(claims: &Claims) -> Result<Principal, AuthError> {
    if claims.carelayer_operator {
        // Another issuer cannot make its subjects operators of this server.
        if claims.iss != super::BUILTIN_ISSUER {
            return Err(AuthError::invalid(
                "only this server's own issuer can name its operator",
            ));
        }
        return Ok(Principal::LocalOperator);
    }
    if let Some(role) = &claims.carelayer_role {
        let user_id = claims
            .sub
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::invalid("a practitioner token needs sub (SDS user id)"))?;
        let org = claims
            .carelayer_org
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                AuthError::invalid("a practitioner token needs carelayer_org (ODS code)")
            })?;
        return Ok(Principal::Practitioner {
            user_id,
            role: SdsRole::from_code(role),
            org,
            scopes: scopes(claims),
        });
    }
    if let Some(nhs) = &claims.nhs_number {
        let nhs_number = NhsNumber::parse(nhs)
            .map_err(|_| AuthError::invalid("the token's NHS number is not valid"))?
            .into_string();
        return Ok(Principal::Patient {
            nhs_number,
            patient_id: claims.patient_id.clone(),
            scopes: scopes(claims),
        });
    }
    if let Some(client_id) = &claims.client_id {
        return Ok(Principal::System {
            client_id: client_id.clone(),
            scopes: scopes(claims).unwrap_or_default(),
            org: claims.carelayer_org.clone(),
        });
    }
    Err(AuthError::invalid(
        "the token names no practitioner role, patient or client",
    ))
}
