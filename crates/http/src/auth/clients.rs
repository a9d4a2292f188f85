//! SMART Backend Services: registered clients and their signed
//! `private_key_jwt` assertions.
//!
//! Clients live in `<key dir>/clients.json` (written by `carelayer client
//! add`, read on every token request so a new registration needs no
//! restart). Each has an id, the scopes it may be granted, optionally the
//! ODS code it acts for, and its public keys: a JWKS or one PEM public key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use carelayer_policy::{Scope, ScopeContext};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

/// The registry's file name inside the key directory.
pub const CLIENTS_FILE: &str = "clients.json";
/// Longest client-assertion lifetime accepted (SMART: at most five minutes).
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;

/// One registered backend client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredClient {
    pub client_id: String,
    /// Scopes it may be granted (`system/*.rs`…).
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwkSet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
}

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid client registry: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Every registered client (none when the file does not exist).
///
/// # Errors
/// Unreadable or malformed file.
pub fn load(path: &Path) -> Result<Vec<RegisteredClient>, ClientError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ClientError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|source| ClientError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Register (or replace) a client, after checking its keys and scopes.
///
/// # Errors
/// Invalid keys or scopes, or I/O.
pub fn add(path: &Path, client: RegisteredClient) -> Result<(), ClientError> {
    if client.client_id.trim().is_empty() {
        return Err(ClientError::Invalid("the client id is empty".into()));
    }
    if keys_of(&client).is_empty() {
        return Err(ClientError::Invalid(
            "the client needs a usable public key (a JWKS with RS256/ES256 keys, or a PEM public key)"
                .into(),
        ));
    }
    for s in &client.scopes {
        if Scope::parse(s).is_none_or(|s| s.context != ScopeContext::System) {
            return Err(ClientError::Invalid(format!(
                "'{s}' is not a system/ scope (system/Type.cruds or system/*.rs…)"
            )));
        }
    }
    let mut clients = load(path)?;
    clients.retain(|c| c.client_id != client.client_id);
    clients.push(client);
    let json = serde_json::to_vec_pretty(&clients).map_err(|source| ClientError::Json {
        path: path.to_owned(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Write a sibling and rename, so a reader never sees half a file.
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(&json).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The client's verification keys, each with the algorithm it verifies.
pub(crate) fn keys_of(client: &RegisteredClient) -> Vec<(Option<String>, DecodingKey)> {
    let mut out = Vec::new();
    if let Some(set) = &client.jwks {
        for jwk in &set.keys {
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                out.push((jwk.common.key_id.clone(), key));
            }
        }
    }
    if let Some(pem) = &client.public_key_pem {
        if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
            out.push((None, key));
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            out.push((None, key));
        }
    }
    out
}

/// The verified assertion's `jti` and `exp`.
#[derive(Debug, Deserialize)]
pub(crate) struct Assertion {
    pub jti: String,
    pub exp: u64,
}

/// Verify a client assertion: signed by one of the client's keys (RS256 or
/// ES256), `iss` = `sub` = client id, `aud` one of `token_urls`, `exp`
/// within five minutes, a `jti`.
pub(crate) fn verify_assertion(
    client: &RegisteredClient,
    assertion: &str,
    token_urls: &[String],
) -> Result<Assertion, String> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| "malformed assertion")?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err("the assertion must be signed with RS256 or ES256".into());
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = super::LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_audience(token_urls);
    validation.set_issuer(&[client.client_id.as_str()]);
    validation.sub = Some(client.client_id.clone());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud", "jti"]);
    let mut last = "no registered key matches the assertion's kid".to_owned();
    for (kid, key) in keys_of(client) {
        if let (Some(want), Some(have)) = (&header.kid, &kid)
            && want != have
        {
            continue;
        }
        match jsonwebtoken::decode::<Assertion>(assertion, &key, &validation) {
            Ok(data) => {
                let now = jsonwebtoken::get_current_timestamp();
                if data.claims.exp > now + MAX_ASSERTION_LIFETIME_SECS + super::LEEWAY_SECS {
                    return Err("the assertion's exp is more than five minutes away".into());
                }
                return Ok(data.claims);
            }
            Err(e) => last = super::claims::describe(&e).replace("token", "assertion"),
        }
    }
    Err(last)
}

/// The scopes to grant: the requested ones each within a registered one
/// (all registered ones when none are requested). `None`: a request beyond
/// the registration.
pub(crate) fn grant(client: &RegisteredClient, requested: Option<&str>) -> Option<Vec<String>> {
    let registered: Vec<Scope> = client
        .scopes
        .iter()
        .filter_map(|s| Scope::parse(s))
        .collect();
    let Some(requested) = requested.filter(|r| !r.trim().is_empty()) else {
        return Some(client.scopes.clone());
    };
    let mut out = Vec::new();
    for text in requested.split_whitespace() {
        let wanted = Scope::parse(text)?;
        let covered = registered.iter().any(|r| {
            r.context == wanted.context
                && (r.resource_type.is_none() || r.resource_type == wanted.resource_type)
                && (!wanted.create || r.create)
                && (!wanted.read || r.read)
                && (!wanted.update || r.update)
                && (!wanted.delete || r.delete)
                && (!wanted.search || r.search)
        });
        if !covered {
            return None;
        }
        out.push(wanted.to_string());
    }
    Some(out)
}
