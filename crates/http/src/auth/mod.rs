//! Authentication: bearer JWTs → a `policy::Principal`.
//!
//! Map:
//! - [`AuthConfig`]: trusted issuers, audiences, the built-in issuer, the
//!   registered-client file. Every request but the public ones
//!   (`/fhir/metadata`, `/.well-known/*`, `/oauth/token`) needs a valid
//!   bearer token: there is no anonymous access.
//! - `keys`: JWKS key sets from a file or URL, cached, refetched on an
//!   unknown `kid` (key rotation).
//! - `claims`: claim names → principal (documented there).
//! - [`issuer`]: the built-in ES256 issuer kept next to the database.
//! - [`clients`]: SMART Backend Services client registry and
//!   `private_key_jwt` assertion checks.
//! - `routes`: `/.well-known/jwks.json`, `/.well-known/smart-configuration`,
//!   `POST /oauth/token`.
//! - `layer`: the middleware that authenticates each request and makes
//!   the caller available to handlers (see [`current_caller`]).
//!
//! Verification: RS256 or ES256 only (`alg: none`, HMAC and everything else
//! refused before any key is looked at), signature against the issuer's
//! JWKS by `kid`, `iss` one of the trusted issuers, `aud` one of ours, `exp`
//! required and in the future, `nbf` (when present) in the past, 30 s
//! leeway. Any failure is a 401 OperationOutcome with
//! `WWW-Authenticate: Bearer error="invalid_token"`.

mod claims;
pub mod clients;
pub mod issuer;
mod keys;
mod layer;
pub(crate) mod routes;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carelayer_records::{Caller, Issue};
use jsonwebtoken::{Algorithm, Validation};

pub use claims::CLAIM_NAMES;
pub use issuer::{BUILTIN_ISSUER, BuiltinIssuer, TokenSubject};
pub use keys::JwksSource;
pub(crate) use layer::{authenticate, current_caller};

use keys::KeySet;

/// Clock skew tolerated on `exp`/`nbf`, seconds.
pub const LEEWAY_SECS: u64 = 30;

/// An issuer whose tokens we accept.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// The exact `iss` value.
    pub issuer: String,
    pub jwks: JwksSource,
}

/// Authentication settings.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Accepted `aud` values (besides the public FHIR base URL, when
    /// configured). Default: `["carelayer"]`.
    pub audiences: Vec<String>,
    /// External issuers (e.g. a national identity provider) by JWKS.
    pub issuers: Vec<TrustedIssuer>,
    /// The built-in issuer: trusted, its JWKS served, and the signer of
    /// `/oauth/token` access tokens.
    pub builtin: Option<Arc<BuiltinIssuer>>,
    /// The registered-clients file for SMART Backend Services.
    pub clients_file: Option<PathBuf>,
    /// Lifetime of access tokens issued by `/oauth/token`, seconds
    /// (default 300).
    pub access_token_ttl_secs: u64,
}

/// The default audience `carelayer token` uses.
pub const DEFAULT_AUDIENCE: &str = "carelayer";

/// The verifier built from an [`AuthConfig`]; shared by every request.
pub struct Authenticator {
    config: AuthConfig,
    audiences: Vec<String>,
    issuers: Vec<(String, KeySet)>,
    http: reqwest::Client,
    /// Client-assertion `jti`s seen, until they expire (replay defence).
    seen_jti: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Tokens already verified → (caller, `exp`): an ES256/RS256 signature
    /// check costs far more than the rest of a read, and clients send the
    /// same token for its whole life. Entries expire with their token.
    verified: std::sync::Mutex<std::collections::HashMap<String, (Caller, u64)>>,
}

/// Most verified tokens remembered (the cache is emptied when full).
const VERIFIED_CACHE: usize = 10_000;

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("audiences", &self.audiences)
            .field(
                "issuers",
                &self.issuers.iter().map(|(i, _)| i).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Build the verifier. `base_url` (the public FHIR base) is accepted as
    /// an audience too.
    #[must_use]
    pub fn new(config: AuthConfig, base_url: Option<&str>) -> Self {
        let mut audiences = if config.audiences.is_empty() {
            vec![DEFAULT_AUDIENCE.to_owned()]
        } else {
            config.audiences.clone()
        };
        if let Some(base) = base_url {
            audiences.push(base.trim_end_matches('/').to_owned());
        }
        let mut issuers: Vec<(String, KeySet)> = config
            .issuers
            .iter()
            .map(|i| (i.issuer.clone(), KeySet::new(i.jwks.clone())))
            .collect();
        if let Some(builtin) = &config.builtin {
            issuers.push((
                BUILTIN_ISSUER.to_owned(),
                KeySet::new(JwksSource::Static(builtin.jwks())),
            ));
        }
        Self {
            config,
            audiences,
            issuers,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            seen_jti: std::sync::Mutex::new(std::collections::HashMap::new()),
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    #[must_use]
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Record a client assertion's `jti` until its `exp`; false if it was
    /// already used (a replayed assertion).
    pub(crate) fn remember_jti(&self, client_id: &str, jti: &str, exp: u64) -> bool {
        let now = jsonwebtoken::get_current_timestamp();
        let Ok(mut seen) = self.seen_jti.lock() else {
            return false;
        };
        seen.retain(|_, until| *until + LEEWAY_SECS >= now);
        seen.insert(format!("{client_id} {jti}"), exp).is_none()
    }

    /// Verify a bearer token and map its claims to a caller.
    ///
    /// # Errors
    /// [`AuthError`] for anything wrong with the token.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Ok(cache) = self.verified.lock()
            && let Some((caller, exp)) = cache.get(token)
            && now <= exp.saturating_add(LEEWAY_SECS)
        {
            return Ok(caller.clone());
        }
        let (caller, exp) = self.verify_signed(token).await?;
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_CACHE {
                cache.retain(|_, (_, e)| now <= e.saturating_add(LEEWAY_SECS));
                if cache.len() >= VERIFIED_CACHE {
                    cache.clear();
                }
            }
            cache.insert(token.to_owned(), (caller.clone(), exp));
        }
        Ok(caller)
    }

    /// Full verification: header, issuer, key, signature, claims.
    async fn verify_signed(&self, token: &str) -> Result<(Caller, u64), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::invalid(format!("malformed token: {e}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::invalid(format!(
                "algorithm {:?} is not accepted (RS256 or ES256)",
                header.alg
            )));
        }
        let iss = claims::unverified_issuer(token)?;
        let Some((_, keys)) = self.issuers.iter().find(|(i, _)| *i == iss) else {
            return Err(AuthError::invalid(format!("issuer '{iss}' is not trusted")));
        };
        let key = keys.key_for(header.kid.as_deref(), &self.http).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_audience(&self.audiences);
        validation.set_issuer(&[iss.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<claims::Claims>(token, &key, &validation)
            .map_err(|e| AuthError::invalid(claims::describe(&e)))?;
        let principal = claims::principal(&data.claims)?;
        Ok((
            Caller::new(principal, carelayer_records::AuditChannel::Rest),
            data.claims.exp,
        ))
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is required.
    #[error("this endpoint needs a bearer token")]
    Missing,
    /// A token that failed verification.
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl AuthError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self::Invalid(reason.into())
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (challenge, issue) = match &self {
            Self::Missing => (
                r#"Bearer realm="carelayer""#.to_owned(),
                Issue::error("login", None, self.to_string()),
            ),
            Self::Invalid(reason) => (
                format!(
                    r#"Bearer realm="carelayer", error="invalid_token", error_description="{}""#,
                    reason.replace(['"', '\\'], "'")
                ),
                Issue::error("security", None, self.to_string()),
            ),
        };
        let mut response = crate::error::outcome_response(StatusCode::UNAUTHORIZED, &[issue]);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}
