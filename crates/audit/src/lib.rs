//! The audit ledger's pure core: what an entry says, its canonical bytes, the
//! hash chain and signed checkpoints, verification, and the FHIR view. No I/O.
//!
//! Map:
//! - [`AuditRecord`]: one access or change, as `records` describes it
//!   (break-glass: see [`BREAK_GLASS_PURPOSE_PREFIX`]).
//! - [`LedgerRow`]: a record as stored, with its sequence number and chain hash.
//! - [`canonical`]: the versioned canonical bytes ([`canonical_bytes`], [`decode`]).
//! - [`chain`]: `h_n = SHA-256(h_{n-1} || canonical(entry_n))` from [`GENESIS_HASH`].
//! - [`checkpoint`]: Ed25519-signed ledger heads, keys, the export file.
//! - [`verify`](mod@verify): the streaming [`Verifier`] and its [`Tamper`] findings.
//! - [`balp`]: a row as an R4 `AuditEvent` (IHE BALP style).

pub mod balp;
pub mod canonical;
pub mod chain;
pub mod checkpoint;
mod error;
mod record;
pub mod verify;

#[cfg(test)]
mod tests;

pub use balp::to_audit_event;
pub use chain::{
    CANONICAL_VERSION, ChainHead, GENESIS_HASH, canonical_bytes, chain_hash, chain_hash_bytes,
    decode,
};
pub use checkpoint::{
    Checkpoint, CheckpointFile, checkpoint_message, generate_signing_key, key_id, sign_checkpoint,
    signing_key_from_text, signing_key_to_text, verify_checkpoint, verifying_key_from_text,
    verifying_key_to_text,
};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::AuditError;
pub use record::*;
pub use verify::{Tamper, Verifier, VerifyReport, VerifySummary, verify};

/// Microseconds since the Unix epoch as an RFC 3339 UTC instant with six
/// fractional digits (`2023-11-14T22:13:20.000000Z`); `None` outside years
/// 0000–9999.
#[must_use]
pub fn rfc3339_micros(micros: i64) -> Option<String> {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()?;
    t.format(FORMAT).ok()
}
