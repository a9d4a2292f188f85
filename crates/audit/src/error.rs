//! Errors of the audit core (decoding, keys, checkpoint files). Tampering found
//! by verification is not an error of the code but a finding: see
//! [`crate::Tamper`].

/// What went wrong decoding an entry, a key or a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The stored bytes are not a well-formed entry.
    #[error("stored audit entry cannot be decoded: {0}")]
    Decode(String),
    /// The stored bytes parse but are not in canonical form.
    #[error("stored audit entry is not in canonical form")]
    NotCanonical,
    /// The entry was written by an encoding this build does not know.
    #[error("stored audit entry uses encoding version {0}, which this build cannot read")]
    UnsupportedVersion(i64),
    /// A key could not be read.
    #[error("invalid key: {0}")]
    Key(String),
    /// A checkpoint signature does not verify under the given key.
    #[error("checkpoint signature does not verify")]
    BadSignature,
    /// A checkpoint names a different key than the one given to verify it.
    #[error("checkpoint is signed by key {checkpoint}, not by the given key {given}")]
    KeyMismatch { checkpoint: String, given: String },
    /// A checkpoint export file could not be read.
    #[error("invalid checkpoint file: {0}")]
    CheckpointFile(String),
    /// Randomness for a new key was not available.
    #[error("no system randomness available: {0}")]
    Random(String),
}
