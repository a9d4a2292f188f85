//! Signed checkpoints: an Ed25519 signature over the ledger head at a sequence
//! number, so that truncation and wholesale rewriting are detectable by anyone
//! holding the public key.
//!
//! # What is signed
//!
//! The message is the concatenation of
//! 1. the 30 bytes `carelayer-audit-checkpoint-v1` followed by one zero byte;
//! 2. `seq` as 8 bytes, big-endian two's complement;
//! 3. `head_hash`, 32 bytes (the chain hash of the entry at `seq`);
//! 4. `signed_at` (microseconds since the Unix epoch) as 8 bytes, big-endian;
//! 5. the length of `key_id` in bytes as 4 bytes big-endian, then `key_id`'s
//!    UTF-8 bytes.
//!
//! Signatures are made with [`SigningKey::sign`] and checked with
//! `verify_strict` (rejecting weak keys and malleable signatures).
//!
//! # Key ids and key text
//!
//! A key's id is `ed25519:` plus the first 8 bytes (16 hex digits) of
//! SHA-256 of its 32-byte public key. Keys are written as text:
//! `carelayer-audit-ed25519-secret-v1:<64 hex>` (the 32-byte seed) and
//! `carelayer-audit-ed25519-public-v1:<64 hex>`; bare 64-digit hex is also
//! accepted on input.
//!
//! # Export file (`carelayer audit checkpoint --export FILE`)
//!
//! ```json
//! {
//!   "format": "carelayer-audit-checkpoints",
//!   "version": 1,
//!   "public_keys": [{"key_id": "ed25519:…", "public_key": "<64 hex>"}],
//!   "checkpoints": [{"seq": 1042, "head_hash": "<64 hex>",
//!                    "signed_at": 1700000000000000,
//!                    "signed_at_utc": "2023-11-14T22:13:20.000000Z",
//!                    "key_id": "ed25519:…", "signature": "<128 hex>"}]
//! }
//! ```
//! `signed_at_utc` is for people; on import it must agree with `signed_at`.
//! The public keys in a file are informational: a verifier must be given the
//! keys it trusts from elsewhere, or a forger could ship their own.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{AuditError, rfc3339_micros};

/// Domain separation for checkpoint signatures.
const DOMAIN: &[u8] = b"carelayer-audit-checkpoint-v1\0";
const SECRET_TAG: &str = "carelayer-audit-ed25519-secret-v1:";
const PUBLIC_TAG: &str = "carelayer-audit-ed25519-public-v1:";
/// The `format` member of a checkpoint export file.
pub const CHECKPOINT_FILE_FORMAT: &str = "carelayer-audit-checkpoints";
/// The `version` member of a checkpoint export file.
pub const CHECKPOINT_FILE_VERSION: u32 = 1;

/// A signed statement "the ledger's entry `seq` has hash `head_hash`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The sequence number covered (0 = the empty ledger, head [`crate::GENESIS_HASH`]).
    pub seq: i64,
    /// The chain hash of the entry at `seq`.
    pub head_hash: [u8; 32],
    /// When it was signed, microseconds since the Unix epoch.
    pub signed_at: i64,
    /// Which key signed it ([`key_id`]).
    pub key_id: String,
    /// Ed25519 signature over [`checkpoint_message`].
    pub signature: [u8; 64],
}

/// The bytes a checkpoint's signature covers (see the module docs).
#[must_use]
pub fn checkpoint_message(seq: i64, head_hash: &[u8; 32], signed_at: i64, key_id: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 8 + 32 + 8 + 4 + key_id.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head_hash);
    m.extend_from_slice(&signed_at.to_be_bytes());
    // A key id longer than 4 GiB cannot be signed meaningfully; saturate.
    let len = u32::try_from(key_id.len()).unwrap_or(u32::MAX);
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(key_id.as_bytes());
    m
}

/// The id of a public key: `ed25519:` + 16 hex digits of its SHA-256.
#[must_use]
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("ed25519:{}", hex::encode(&digest[..8]))
}

/// A fresh signing key from the operating system's randomness.
///
/// # Errors
/// [`AuditError::Random`] if the OS has no randomness to give.
pub fn generate_signing_key() -> Result<SigningKey, AuditError> {
    let mut seed = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| AuditError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// The secret key as text (`carelayer-audit-ed25519-secret-v1:<hex seed>`).
/// Keep it out of logs.
#[must_use]
pub fn signing_key_to_text(key: &SigningKey) -> String {
    format!("{SECRET_TAG}{}", hex::encode(key.to_bytes()))
}

/// Reads a secret key written by [`signing_key_to_text`] (or bare hex).
///
/// # Errors
/// [`AuditError::Key`] if it is not 32 bytes of hex with the right tag.
pub fn signing_key_from_text(text: &str) -> Result<SigningKey, AuditError> {
    let seed = key_bytes(text, SECRET_TAG, PUBLIC_TAG)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key as text (`carelayer-audit-ed25519-public-v1:<hex>`).
#[must_use]
pub fn verifying_key_to_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_TAG}{}", hex::encode(key.as_bytes()))
}

/// Reads a public key written by [`verifying_key_to_text`] (or bare hex).
///
/// # Errors
/// [`AuditError::Key`] if it is not a valid Ed25519 public key.
pub fn verifying_key_from_text(text: &str) -> Result<VerifyingKey, AuditError> {
    let bytes = key_bytes(text, PUBLIC_TAG, SECRET_TAG)?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| AuditError::Key(e.to_string()))
}

fn key_bytes(text: &str, tag: &str, wrong_tag: &str) -> Result<[u8; 32], AuditError> {
    let text = text.trim();
    if text.starts_with(wrong_tag) {
        return Err(AuditError::Key(format!(
            "expected a key starting {tag:?}, got one starting {wrong_tag:?}"
        )));
    }
    let digits = text.strip_prefix(tag).unwrap_or(text);
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out)
        .map_err(|e| AuditError::Key(format!("expected 64 hex digits: {e}")))?;
    Ok(out)
}

/// Signs the ledger head `(seq, head_hash)` at time `signed_at` (microseconds).
#[must_use]
pub fn sign_checkpoint(
    key: &SigningKey,
    seq: i64,
    head_hash: [u8; 32],
    signed_at: i64,
) -> Checkpoint {
    let key_id = key_id(&key.verifying_key());
    let signature = key
        .sign(&checkpoint_message(seq, &head_hash, signed_at, &key_id))
        .to_bytes();
    Checkpoint {
        seq,
        head_hash,
        signed_at,
        key_id,
        signature,
    }
}

/// Checks a checkpoint's signature under `key`.
///
/// # Errors
/// [`AuditError::KeyMismatch`] if the checkpoint names another key,
/// [`AuditError::BadSignature`] if the signature does not verify.
pub fn verify_checkpoint(checkpoint: &Checkpoint, key: &VerifyingKey) -> Result<(), AuditError> {
    let given = key_id(key);
    if given != checkpoint.key_id {
        return Err(AuditError::KeyMismatch {
            checkpoint: checkpoint.key_id.clone(),
            given,
        });
    }
    let message = checkpoint_message(
        checkpoint.seq,
        &checkpoint.head_hash,
        checkpoint.signed_at,
        &checkpoint.key_id,
    );
    key.verify_strict(&message, &Signature::from_bytes(&checkpoint.signature))
        .map_err(|_| AuditError::BadSignature)
}

/// The contents of a checkpoint export file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckpointFile {
    /// Public keys shipped alongside, for information only (see module docs).
    pub public_keys: Vec<VerifyingKey>,
    pub checkpoints: Vec<Checkpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJson {
    format: String,
    version: u32,
    #[serde(default)]
    public_keys: Vec<KeyJson>,
    checkpoints: Vec<CheckpointJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyJson {
    key_id: String,
    public_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointJson {
    seq: i64,
    head_hash: String,
    signed_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signed_at_utc: Option<String>,
    key_id: String,
    signature: String,
}

impl CheckpointFile {
    /// The export file as pretty-printed JSON (format in the module docs).
    #[must_use]
    pub fn to_json(&self) -> String {
        let file = FileJson {
            format: CHECKPOINT_FILE_FORMAT.to_owned(),
            version: CHECKPOINT_FILE_VERSION,
            public_keys: self
                .public_keys
                .iter()
                .map(|k| KeyJson {
                    key_id: key_id(k),
                    public_key: hex::encode(k.as_bytes()),
                })
                .collect(),
            checkpoints: self
                .checkpoints
                .iter()
                .map(|c| CheckpointJson {
                    seq: c.seq,
                    head_hash: hex::encode(c.head_hash),
                    signed_at: c.signed_at,
                    signed_at_utc: rfc3339_micros(c.signed_at),
                    key_id: c.key_id.clone(),
                    signature: hex::encode(c.signature),
                })
                .collect(),
        };
        // Plain strings and integers always serialise.
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Reads an export file. Signatures are not checked here: that is
    /// [`verify_checkpoint`]'s (or the verifier's) job.
    ///
    /// # Errors
    /// [`AuditError::CheckpointFile`] if it is not a valid v1 export.
    pub fn from_json(text: &str) -> Result<Self, AuditError> {
        let bad = |m: String| AuditError::CheckpointFile(m);
        let file: FileJson = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if file.format != CHECKPOINT_FILE_FORMAT {
            return Err(bad(format!(
                "format is {:?}, expected {CHECKPOINT_FILE_FORMAT:?}",
                file.format
            )));
        }
        if file.version != CHECKPOINT_FILE_VERSION {
            return Err(bad(format!("unsupported version {}", file.version)));
        }
        let public_keys = file
            .public_keys
            .iter()
            .map(|k| {
                let key = verifying_key_from_text(&k.public_key)?;
                if key_id(&key) != k.key_id {
                    return Err(bad(format!(
                        "key id {} does not match its public key",
                        k.key_id
                    )));
                }
                Ok(key)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let checkpoints = file
            .checkpoints
            .into_iter()
            .map(|c| {
                let mut head_hash = [0u8; 32];
                hex::decode_to_slice(&c.head_hash, &mut head_hash)
                    .map_err(|e| bad(format!("checkpoint {}: head_hash: {e}", c.seq)))?;
                let mut signature = [0u8; 64];
                hex::decode_to_slice(&c.signature, &mut signature)
                    .map_err(|e| bad(format!("checkpoint {}: signature: {e}", c.seq)))?;
                if let Some(utc) = &c.signed_at_utc
                    && rfc3339_micros(c.signed_at).as_deref() != Some(utc.as_str())
                {
                    return Err(bad(format!(
                        "checkpoint {}: signed_at_utc {utc:?} does not match signed_at {}",
                        c.seq, c.signed_at
                    )));
                }
                Ok(Checkpoint {
                    seq: c.seq,
                    head_hash,
                    signed_at: c.signed_at,
                    key_id: c.key_id,
                    signature,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            public_keys,
            checkpoints,
        })
    }
}
