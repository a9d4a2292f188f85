//! Canonical bytes and the hash chain.

use sha2::{Digest, Sha256};

use crate::AuditRecord;

/// The hash that precedes the first entry.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The canonical byte form of a record: compact JSON of the record with fields
/// in declaration order (serde's derive is deterministic for a fixed struct).
#[must_use]
pub fn canonical_bytes(record: &AuditRecord) -> Vec<u8> {
    // Serialising a plain struct of strings/ints into a Vec cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

/// `SHA-256(previous || canonical_bytes(record))`.
#[must_use]
pub fn chain_hash(previous: &[u8; 32], record: &AuditRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(canonical_bytes(record));
    h.finalize().into()
}
