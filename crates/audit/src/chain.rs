//! Canonical bytes and the hash chain:
//! `h_n = SHA-256(h_{n-1} || canonical_bytes(entry_n))`, `h_0` = [`GENESIS_HASH`].

use sha2::{Digest, Sha256};

pub use crate::canonical::{CANONICAL_VERSION, canonical_bytes, decode};
use crate::{AuditRecord, LedgerRow};

/// The hash that precedes the first entry.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// `SHA-256(previous || canonical_bytes(record))`.
#[must_use]
pub fn chain_hash(previous: &[u8; 32], record: &AuditRecord) -> [u8; 32] {
    chain_hash_bytes(previous, &canonical_bytes(record))
}

/// `SHA-256(previous || canonical)`, for a store that already holds the bytes.
#[must_use]
pub fn chain_hash_bytes(previous: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(canonical);
    h.finalize().into()
}

/// The end of a chain: the last sequence number and hash. Appending a record
/// gives the next [`LedgerRow`]. For stores and tests that build chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// The last entry's seq (0 for an empty ledger).
    pub seq: i64,
    /// The last entry's hash ([`GENESIS_HASH`] for an empty ledger).
    pub hash: [u8; 32],
}

impl Default for ChainHead {
    fn default() -> Self {
        Self::genesis()
    }
}

impl ChainHead {
    /// The head of an empty ledger.
    #[must_use]
    pub const fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH,
        }
    }

    /// Chains `record` on and moves the head to it.
    pub fn append(&mut self, record: AuditRecord) -> LedgerRow {
        let hash = chain_hash(&self.hash, &record);
        self.seq += 1;
        self.hash = hash;
        LedgerRow {
            seq: self.seq,
            record,
            hash,
        }
    }
}
