//! Verification: re-walk the chain from [`crate::GENESIS_HASH`], check signed
//! checkpoints, and name the first thing that is wrong.
//!
//! [`Verifier`] is streaming: feed rows in ascending `seq` order, page by page,
//! with [`Verifier::push`], then call [`Verifier::finish`]. Memory use is
//! constant in the number of rows (plus one entry per checkpoint).
//!
//! # What can be told apart
//!
//! The hash of entry *n* covers the previous hash and entry *n*'s contents, so a
//! broken link at *n* is classified by looking one entry ahead:
//! - entry *n+1* follows from entry *n-1* → *n* was **inserted**;
//! - entry *n* follows from entry *n-2* → *n-1* was **inserted** (with a
//!   properly chained hash);
//! - additionally entry *n* follows from entry *n+1* → *n* and *n+1* were
//!   **swapped** ([`Tamper::Reordered`]);
//! - otherwise *n* was **altered** (its contents no longer match its hash).
//!
//! Gaps in `seq` are **deletions**, a repeated `seq` is an insertion, a `seq`
//! going backwards is an out-of-order ledger. Deleting the newest entries is
//! only detectable up to the last signed checkpoint ([`Tamper::Truncated`]);
//! rewriting the whole ledger with recomputed hashes is detected by any
//! checkpoint it covers ([`Tamper::CheckpointMismatch`]).

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::VerifyingKey;

use crate::LedgerRow;
use crate::chain::{ChainHead, chain_hash};
use crate::checkpoint::{Checkpoint, key_id, verify_checkpoint};

/// Evidence that the ledger is not what was written. Each names the first
/// entry (or checkpoint) where it shows; `Display` is plain words for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tamper {
    /// The entry's stored hash does not match its contents and its predecessor.
    Altered { seq: i64 },
    /// `count` entries starting at `seq` are missing (the numbering jumps).
    Deleted { seq: i64, count: i64 },
    /// An extra entry sits at `seq`: the entry after it follows directly
    /// from the entry before it.
    Inserted { seq: i64 },
    /// A second entry carries the number `seq`.
    Duplicate { seq: i64 },
    /// Entries `seq` and `seq + 1` were swapped.
    Reordered { seq: i64 },
    /// Entry `seq` comes after entry `after` (numbering goes backwards).
    OutOfOrder { seq: i64, after: i64 },
    /// The ledger ends at `last_seq` (0 = empty) but a valid signed checkpoint
    /// covers `checkpoint_seq`.
    Truncated { last_seq: i64, checkpoint_seq: i64 },
    /// The entry at `seq` has a different hash from the one a valid signed
    /// checkpoint recorded: the ledger up to `seq` was rewritten.
    CheckpointMismatch { seq: i64 },
    /// The checkpoint at `seq` names a trusted key but its signature is invalid.
    BadCheckpointSignature { seq: i64, key_id: String },
    /// The checkpoint at `seq` is signed by a key that is not trusted.
    UntrustedCheckpointKey { seq: i64, key_id: String },
}

impl Tamper {
    /// The sequence number the finding is about.
    #[must_use]
    pub fn seq(&self) -> i64 {
        match self {
            Tamper::Altered { seq }
            | Tamper::Deleted { seq, .. }
            | Tamper::Inserted { seq }
            | Tamper::Duplicate { seq }
            | Tamper::Reordered { seq }
            | Tamper::OutOfOrder { seq, .. }
            | Tamper::CheckpointMismatch { seq }
            | Tamper::BadCheckpointSignature { seq, .. }
            | Tamper::UntrustedCheckpointKey { seq, .. } => *seq,
            Tamper::Truncated { last_seq, .. } => last_seq + 1,
        }
    }

    /// A short stable name of the kind, for machine-readable output.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Tamper::Altered { .. } => "altered",
            Tamper::Deleted { .. } => "deleted",
            Tamper::Inserted { .. } => "inserted",
            Tamper::Duplicate { .. } => "duplicate",
            Tamper::Reordered { .. } => "reordered",
            Tamper::OutOfOrder { .. } => "out-of-order",
            Tamper::Truncated { .. } => "truncated",
            Tamper::CheckpointMismatch { .. } => "checkpoint-mismatch",
            Tamper::BadCheckpointSignature { .. } => "bad-checkpoint-signature",
            Tamper::UntrustedCheckpointKey { .. } => "untrusted-checkpoint-key",
        }
    }
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tamper::Altered { seq } => {
                write!(
                    f,
                    "entry {seq} was altered: its stored hash does not match its contents"
                )?;
                if *seq > 1 {
                    write!(
                        f,
                        " (or entry {} was altered and its hash recomputed to hide it)",
                        seq - 1
                    )?;
                }
                Ok(())
            }
            Tamper::Deleted { seq, count: 1 } => write!(
                f,
                "entry {seq} was deleted: the ledger goes from entry {} to entry {}",
                seq - 1,
                seq + 1
            ),
            Tamper::Deleted { seq, count } => write!(
                f,
                "entries {seq} to {} were deleted: the ledger goes from entry {} to entry {}",
                seq + count - 1,
                seq - 1,
                seq + count
            ),
            Tamper::Inserted { seq } => write!(
                f,
                "an entry was inserted at {seq}: the entry after it follows directly from entry {}",
                seq - 1
            ),
            Tamper::Duplicate { seq } => write!(
                f,
                "entry {seq} appears twice: an extra entry was inserted under the same number"
            ),
            Tamper::Reordered { seq } => write!(
                f,
                "entries {seq} and {} were swapped: the ledger was reordered",
                seq + 1
            ),
            Tamper::OutOfOrder { seq, after } => write!(
                f,
                "entry {seq} comes after entry {after}: the ledger was reordered or renumbered"
            ),
            Tamper::Truncated {
                last_seq: 0,
                checkpoint_seq,
            } => write!(
                f,
                "the ledger was truncated: it is empty but a signed checkpoint covers entry {checkpoint_seq}"
            ),
            Tamper::Truncated {
                last_seq,
                checkpoint_seq,
            } => write!(
                f,
                "the ledger was truncated: it ends at entry {last_seq} but a signed checkpoint covers entry {checkpoint_seq}"
            ),
            Tamper::CheckpointMismatch { seq } => write!(
                f,
                "entry {seq} does not match its signed checkpoint: the ledger up to entry {seq} was rewritten"
            ),
            Tamper::BadCheckpointSignature { seq, key_id } => write!(
                f,
                "the checkpoint at entry {seq} has an invalid signature for key {key_id}: it was forged or altered"
            ),
            Tamper::UntrustedCheckpointKey { seq, key_id } => write!(
                f,
                "the checkpoint at entry {seq} is signed by key {key_id}, which is not a trusted key"
            ),
        }
    }
}

impl std::error::Error for Tamper {}

/// What a verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    /// Entries whose link was verified.
    pub entries: u64,
    /// The last verified entry's seq (the start seq if none).
    pub last_seq: i64,
    /// The last verified entry's hash.
    pub head_hash: [u8; 32],
    /// Signed checkpoints whose head matched the ledger.
    pub checkpoints_matched: usize,
    /// The highest matched checkpoint: entries after it are only protected
    /// against truncation once a later checkpoint is signed.
    pub last_checkpoint_seq: Option<i64>,
}

/// The result of [`verify`]: what was covered and the first problem, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Progress up to the end, or up to the first problem.
    pub summary: VerifySummary,
    /// The first problem found; `None` if the ledger is intact.
    pub tamper: Option<Tamper>,
}

impl VerifyReport {
    /// Whether nothing was found.
    #[must_use]
    pub fn is_intact(&self) -> bool {
        self.tamper.is_none()
    }
}

/// A streaming chain verifier (see the module docs).
#[derive(Debug, Clone)]
pub struct Verifier {
    head: ChainHead,
    /// The hash before the head (None right after the start).
    before_head: Option<[u8; 32]>,
    entries: u64,
    /// A row whose link failed, held until the next row tells why.
    pending: Option<LedgerRow>,
    /// Heads of validly signed checkpoints still ahead, by seq.
    ahead: BTreeMap<i64, Vec<[u8; 32]>>,
    matched: usize,
    last_checkpoint_seq: Option<i64>,
    /// The first checkpoint problem, reported by `finish` if the chain is fine.
    checkpoint_problem: Option<Tamper>,
    failed: Option<Tamper>,
}

impl Verifier {
    /// A verifier starting from [`crate::GENESIS_HASH`]. Checkpoint signatures are
    /// checked now against `trusted_keys`; only validly signed checkpoints are
    /// used to check the chain.
    #[must_use]
    pub fn new(checkpoints: &[Checkpoint], trusted_keys: &[VerifyingKey]) -> Self {
        Self::resume(ChainHead::genesis(), checkpoints, trusted_keys)
    }

    /// A verifier continuing from a head already trusted (e.g. a checkpoint
    /// verified earlier): the next row pushed must be `start.seq + 1`.
    /// Checkpoints before `start.seq` are ignored.
    #[must_use]
    pub fn resume(
        start: ChainHead,
        checkpoints: &[Checkpoint],
        trusted_keys: &[VerifyingKey],
    ) -> Self {
        let mut v = Self {
            head: start,
            before_head: None,
            entries: 0,
            pending: None,
            ahead: BTreeMap::new(),
            matched: 0,
            last_checkpoint_seq: None,
            checkpoint_problem: None,
            failed: None,
        };
        let mut sorted: Vec<&Checkpoint> = checkpoints.iter().collect();
        sorted.sort_by_key(|c| c.seq);
        for cp in sorted {
            if cp.seq < start.seq {
                continue;
            }
            if let Err(problem) = check_signature(cp, trusted_keys) {
                v.checkpoint_problem.get_or_insert(problem);
                continue;
            }
            if cp.seq == start.seq {
                if cp.head_hash == start.hash {
                    v.note_match(cp.seq);
                } else {
                    v.checkpoint_problem
                        .get_or_insert(Tamper::CheckpointMismatch { seq: cp.seq });
                }
                continue;
            }
            v.ahead.entry(cp.seq).or_default().push(cp.head_hash);
        }
        v
    }

    /// Feeds the next row (rows must come in ascending `seq`).
    ///
    /// A broken link is reported one row late (or by [`Verifier::finish`]),
    /// because the next row is needed to tell an altered entry from an
    /// inserted or swapped one.
    ///
    /// # Errors
    /// The first [`Tamper`] found; once failed, every later call returns it.
    pub fn push(&mut self, row: LedgerRow) -> Result<(), Tamper> {
        if let Some(t) = &self.failed {
            return Err(t.clone());
        }
        if let Some(pending) = self.pending.take() {
            let t = self.classify(&pending, Some(&row));
            return Err(self.fail(t));
        }
        let expected = self.head.seq + 1;
        if row.seq != expected {
            let t = if row.seq > expected {
                Tamper::Deleted {
                    seq: expected,
                    count: row.seq - expected,
                }
            } else if row.seq == self.head.seq && self.head.seq > 0 {
                Tamper::Duplicate { seq: row.seq }
            } else {
                Tamper::OutOfOrder {
                    seq: row.seq,
                    after: self.head.seq,
                }
            };
            return Err(self.fail(t));
        }
        if chain_hash(&self.head.hash, &row.record) != row.hash {
            self.pending = Some(row);
            return Ok(());
        }
        self.before_head = Some(self.head.hash);
        self.head = ChainHead {
            seq: row.seq,
            hash: row.hash,
        };
        self.entries += 1;
        if let Some(heads) = self.ahead.remove(&row.seq) {
            if heads.iter().any(|h| *h != row.hash) {
                return Err(self.fail(Tamper::CheckpointMismatch { seq: row.seq }));
            }
            self.note_match(row.seq);
        }
        Ok(())
    }

    /// Progress so far.
    #[must_use]
    pub fn summary(&self) -> VerifySummary {
        VerifySummary {
            entries: self.entries,
            last_seq: self.head.seq,
            head_hash: self.head.hash,
            checkpoints_matched: self.matched,
            last_checkpoint_seq: self.last_checkpoint_seq,
        }
    }

    /// Ends the walk: reports a pending broken link, then checkpoint problems
    /// (bad or untrusted signatures), then truncation.
    ///
    /// # Errors
    /// The first [`Tamper`] found.
    pub fn finish(mut self) -> Result<VerifySummary, Tamper> {
        if let Some(t) = self.failed.take() {
            return Err(t);
        }
        if let Some(pending) = self.pending.take() {
            return Err(self.classify(&pending, None));
        }
        if let Some(t) = self.checkpoint_problem.take() {
            return Err(t);
        }
        if let Some((&checkpoint_seq, _)) = self.ahead.iter().next_back() {
            return Err(Tamper::Truncated {
                last_seq: self.head.seq,
                checkpoint_seq,
            });
        }
        Ok(self.summary())
    }

    fn note_match(&mut self, seq: i64) {
        self.matched += 1;
        self.last_checkpoint_seq = Some(self.last_checkpoint_seq.map_or(seq, |s| s.max(seq)));
    }

    fn fail(&mut self, t: Tamper) -> Tamper {
        self.failed = Some(t.clone());
        t
    }

    /// Why `bad` is bad, using the next row.
    fn classify_with_next(&self, bad: &LedgerRow, next: Option<&LedgerRow>) -> Tamper {
        let seq = bad.seq;
        let Some(next) = next.filter(|n| n.seq == seq + 1) else {
            return Tamper::Altered { seq };
        };
        let prev = &self.head.hash;
        // Whole rows swapped (record and hash moved together)…
        let next_from_prev = chain_hash(prev, &next.record) == next.hash;
        if next_from_prev && chain_hash(&next.hash, &bad.record) == bad.hash {
            return Tamper::Reordered { seq };
        }
        // …or the records swapped under hashes that stayed in place.
        if chain_hash(prev, &next.record) == bad.hash
            && chain_hash(&bad.hash, &bad.record) == next.hash
        {
            return Tamper::Reordered { seq };
        }
        if next_from_prev {
            return Tamper::Inserted { seq };
        }
        Tamper::Altered { seq }
    }

    /// Why `bad` (whose link from the head failed) is bad.
    fn classify(&self, bad: &LedgerRow, next: Option<&LedgerRow>) -> Tamper {
        // `bad` follows from the entry before the head: the head itself was
        // inserted (with a properly chained hash).
        if let Some(before) = &self.before_head
            && chain_hash(before, &bad.record) == bad.hash
        {
            return Tamper::Inserted { seq: self.head.seq };
        }
        self.classify_with_next(bad, next)
    }
}

fn check_signature(cp: &Checkpoint, trusted: &[VerifyingKey]) -> Result<(), Tamper> {
    let Some(key) = trusted.iter().find(|k| key_id(k) == cp.key_id) else {
        return Err(Tamper::UntrustedCheckpointKey {
            seq: cp.seq,
            key_id: cp.key_id.clone(),
        });
    };
    verify_checkpoint(cp, key).map_err(|_| Tamper::BadCheckpointSignature {
        seq: cp.seq,
        key_id: cp.key_id.clone(),
    })
}

/// Verifies a whole ledger: walks `rows` (ascending `seq`, from 1) against
/// `checkpoints` signed by any of `trusted_keys`, stopping at the first problem.
pub fn verify(
    rows: impl IntoIterator<Item = LedgerRow>,
    checkpoints: &[Checkpoint],
    trusted_keys: &[VerifyingKey],
) -> VerifyReport {
    let mut v = Verifier::new(checkpoints, trusted_keys);
    for row in rows {
        if let Err(t) = v.push(row) {
            return VerifyReport {
                summary: v.summary(),
                tamper: Some(t),
            };
        }
    }
    let summary = v.summary();
    match v.finish() {
        Ok(summary) => VerifyReport {
            summary,
            tamper: None,
        },
        Err(t) => VerifyReport {
            summary,
            tamper: Some(t),
        },
    }
}
