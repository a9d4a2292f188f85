//! The built-in token issuer for the embedded default, development and
//! tests: one ES256 (P-256) key pair, generated on first start and kept as
//! `<key dir>/issuer-key.pem` (PKCS#8, mode 0600) next to the SQLite file.
//! The server trusts it and serves its public half at
//! `/.well-known/jwks.json`; `carelayer token` reads the same file to mint
//! tokens the running server accepts, and `/oauth/token` signs backend
//! clients' access tokens with it.
//!
//! Anyone who can read the key file can mint any token, exactly as anyone
//! who can read the database file can read every record: the file is
//! created owner-only and refused if group or others can read it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The `iss` of every token the built-in issuer signs.
pub const BUILTIN_ISSUER: &str = "urn:carelayer:builtin-issuer";
/// The key file's name inside the key directory.
pub const KEY_FILE: &str = "issuer-key.pem";

/// Why the issuer could not be loaded or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("cannot read or write the issuer key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the issuer key {0} is readable by group or others; run `chmod 600` on it (anyone who reads it can mint tokens)"
    )]
    Permissions(PathBuf),
    #[error("the issuer key {0} is not a PKCS#8 P-256 private key")]
    BadKey(PathBuf),
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

/// Who a minted token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSubject {
    Practitioner {
        user_id: String,
        role: String,
        org: String,
    },
    Patient {
        nhs_number: String,
        patient_id: Option<String>,
    },
    Client {
        client_id: String,
        org: Option<String>,
    },
    /// The server's operator (full access, audited as the operator); only
    /// this issuer's tokens can say so.
    Operator { name: String },
}

/// The built-in issuer's key.
pub struct BuiltinIssuer {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for BuiltinIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("BuiltinIssuer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl BuiltinIssuer {
    /// Load `<dir>/issuer-key.pem`, creating the directory and a new key
    /// pair on first use.
    ///
    /// # Errors
    /// I/O, permissions that let others read the key, or a corrupt key.
    pub fn load_or_create(dir: &Path) -> Result<Self, IssuerError> {
        let path = dir.join(KEY_FILE);
        let io = |source| IssuerError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                let rng = SystemRandom::new();
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| IssuerError::BadKey(path.clone()))?;
                let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
                file.write_all(pem.as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                tracing::info!(path = %path.display(), "generated the built-in token issuer key");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let meta = std::fs::metadata(&path).map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(IssuerError::Permissions(path));
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        Self::from_pem(&text).map_err(|_| IssuerError::BadKey(path))
    }

    /// From a PKCS#8 PEM P-256 private key.
    ///
    /// # Errors
    /// Not such a key.
    pub fn from_pem(text: &str) -> Result<Self, IssuerError> {
        let bad = || IssuerError::BadKey(PathBuf::from("(in memory)"));
        let parsed = pem::parse(text).map_err(|_| bad())?;
        let der = parsed.contents();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| bad())?;
        let public = pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
        if public.len() != 65 {
            return Err(bad());
        }
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (x, y) = (b64(&public[1..33]), b64(&public[33..65]));
        // RFC 7638 thumbprint: stable across restarts, changes with the key.
        let thumbprint_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64(&Sha256::digest(thumbprint_input.as_bytes()));
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "sig", "alg": "ES256"
        }))
        .map_err(|_| bad())?;
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ec_der(der),
            jwk,
        })
    }

    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key set.
    #[must_use]
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// Sign arbitrary claims under any kid (tests build bad tokens with it).
    #[cfg(test)]
    pub(crate) fn sign_raw(&self, claims: &Value, kid: &str) -> Result<String, IssuerError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| IssuerError::Sign(e.to_string()))
    }

    /// Sign a token for `subject`, valid from now for `ttl_secs`.
    ///
    /// # Errors
    /// Signing failed.
    pub fn mint(
        &self,
        subject: &TokenSubject,
        scope: Option<&str>,
        audience: &str,
        ttl_secs: u64,
    ) -> Result<String, IssuerError> {
        let now = jsonwebtoken::get_current_timestamp();
        self.mint_between(subject, scope, audience, now, now.saturating_add(ttl_secs))
    }

    /// Sign a token valid from `not_before` until `expires` (Unix seconds).
    ///
    /// # Errors
    /// Signing failed.
    pub fn mint_between(
        &self,
        subject: &TokenSubject,
        scope: Option<&str>,
        audience: &str,
        not_before: u64,
        expires: u64,
    ) -> Result<String, IssuerError> {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(BUILTIN_ISSUER));
        claims.insert("aud".into(), json!(audience));
        claims.insert("iat".into(), json!(now.min(not_before)));
        claims.insert("nbf".into(), json!(not_before));
        claims.insert("exp".into(), json!(expires));
        claims.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
        match subject {
            TokenSubject::Practitioner { user_id, role, org } => {
                claims.insert("sub".into(), json!(user_id));
                claims.insert("carelayer_role".into(), json!(role));
                claims.insert("carelayer_org".into(), json!(org));
            }
            TokenSubject::Patient {
                nhs_number,
                patient_id,
            } => {
                claims.insert("sub".into(), json!(nhs_number));
                claims.insert("nhs_number".into(), json!(nhs_number));
                if let Some(id) = patient_id {
                    claims.insert("patient_id".into(), json!(id));
                }
            }
            TokenSubject::Client { client_id, org } => {
                claims.insert("sub".into(), json!(client_id));
                claims.insert("client_id".into(), json!(client_id));
                if let Some(org) = org {
                    claims.insert("carelayer_org".into(), json!(org));
                }
            }
            TokenSubject::Operator { name } => {
                claims.insert("sub".into(), json!(name));
                claims.insert("carelayer_operator".into(), json!(true));
            }
        }
        if let Some(scope) = scope {
            claims.insert("scope".into(), json!(scope));
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &Value::Object(claims), &self.encoding)
            .map_err(|e| IssuerError::Sign(e.to_string()))
    }
}
