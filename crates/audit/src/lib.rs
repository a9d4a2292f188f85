//! The audit ledger's pure core: what an entry says, its canonical bytes, the
//! hash chain and signed checkpoints, and verification. No I/O.
//!
//! Map:
//! - [`AuditRecord`]: one access or change, as `records` describes it.
//! - [`LedgerRow`]: a record as stored, with its sequence number and chain hashes.
//! - [`chain`]: canonical bytes and `h_n = SHA-256(h_{n-1} || canonical(entry_n))`.

pub mod chain;
mod record;

pub use chain::{GENESIS_HASH, canonical_bytes, chain_hash};
pub use record::*;
