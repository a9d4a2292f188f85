//! The audit journal: where read-audit entries wait before they join the
//! ledger table.
//!
//! Why: a read's audit entry must be written before the read is answered,
//! and committing it to SQLite made every read pay twice. The commit writes
//! whole pages to the WAL, and (the larger cost) any commit makes every
//! reader connection drop its page cache at its next transaction, so under
//! load the readers re-read their pages from the OS after nearly every
//! request. Instead the request's own task chains its entries (seq and hash
//! assigned exactly as in the ledger, under the chain's lock: see
//! `writer::Chain`) and appends them here with one `write`, then answers.
//! No hop to the writer thread either: on a busy two-core machine waiting for
//! that thread to be scheduled cost more than the write. The entries move into `audit_ledger`, with their
//! index rows, in bulk: in the same transaction as the next write set (which
//! must follow them in the chain), or in a flush when enough wait, when the
//! oldest has waited `writer::DEFERRED_LAG`, or before anything reads the
//! ledger (see `Job::Barrier`). So the ledger table is always a gap-free
//! prefix of the chain, and the journal holds its tail.
//!
//! Durability is the one [`crate::AuditSync`] promises: once written here an
//! entry survives a process kill; the checkpoint thread fsyncs the journal
//! with the WAL within 50 ms (or before the answer with `AuditSync::Commit`).
//! At open, [`Journal::open`] moves every entry that extends the ledger's
//! chain into the table; a torn last frame (a power cut mid-write) ends the
//! usable tail, and anything after it is kept aside in a file, never deleted.
//!
//! # Frame format
//! `len: u32 LE` (canonical bytes), `seq: i64 LE`, `hash: [u8; 32]`, then
//! the entry's canonical bytes. No checksum of its own: at recovery every
//! frame must chain from the one before (`hash = SHA-256(prev || bytes)`),
//! which a torn or altered frame cannot satisfy.
//!
//! # Segments
//! The journal is a series of files `PATH-audit.N`. A flush seals the
//! current segment (appends go on in a new one at once, so a flush never
//! holds appends up), moves the sealed entries into the ledger, and deletes
//! the segment once that commit is durable. Recovery reads every segment in
//! order.
//!
//! # One process
//! The journal is locked (`flock` on `PATH-audit`) by the store that owns
//! it. A second process opening the same database gets no journal and
//! writes its audit entries straight to the ledger table, as before the
//! journal existed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use carelayer_audit::chain_hash_bytes;
use carelayer_store::StoreError;
use rusqlite::Connection;

use crate::error::sql_err;

/// Bytes before each entry's canonical bytes.
const FRAME_HEADER: usize = 4 + 8 + 32;

/// The journal's lock file of one database (`PATH-audit`); segments are
/// `PATH-audit.N`.
pub(crate) fn journal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-audit");
    PathBuf::from(p)
}

/// A chained entry that is in the journal but not yet in `audit_ledger`.
pub(crate) struct JournalEntry {
    pub(crate) seq: i64,
    pub(crate) bytes: Vec<u8>,
    pub(crate) hash: [u8; 32],
}

/// Append one frame to `out`.
pub(crate) fn encode(entry: &JournalEntry, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let len = u32::try_from(entry.bytes.len())
        .map_err(|_| StoreError::Other(format!("audit entry {} is too large", entry.seq)))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&entry.seq.to_le_bytes());
    out.extend_from_slice(&entry.hash);
    out.extend_from_slice(&entry.bytes);
    Ok(())
}

/// Frames decoded from `data` up to the first incomplete one, each with its
/// byte offset.
fn decode(data: &[u8]) -> Vec<(usize, JournalEntry)> {
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some(header) = data.get(at..at + FRAME_HEADER) {
        let (len, rest) = header.split_at(4);
        let (seq, hash) = rest.split_at(8);
        let (Ok(len), Ok(seq), Ok(hash)) = (
            <[u8; 4]>::try_from(len),
            <[u8; 8]>::try_from(seq),
            <[u8; 32]>::try_from(hash),
        ) else {
            break;
        };
        let len = u32::from_le_bytes(len) as usize;
        let start = at + FRAME_HEADER;
        let Some(bytes) = data.get(start..start + len) else {
            break;
        };
        entries.push((
            at,
            JournalEntry {
                seq: i64::from_le_bytes(seq),
                bytes: bytes.to_vec(),
                hash,
            },
        ));
        at = start + len;
    }
    entries
}

/// Insert entries into the ledger table (inside the caller's transaction).
pub(crate) fn insert_into_ledger(
    conn: &Connection,
    entries: &[JournalEntry],
) -> Result<(), StoreError> {
    crate::audit::insert_rows(
        conn,
        "INSERT INTO audit_ledger (seq, record, hash) VALUES ",
        3,
        entries,
        |e, out| {
            out.push(&e.seq);
            out.push(&e.bytes);
            out.push(&e.hash);
        },
    )
}

/// The segment being written, shared with the checkpoint thread (which
/// fsyncs it).
pub(crate) type CurrentSegment = Arc<Mutex<Arc<File>>>;

/// A sealed segment: its entries are on their way into the ledger.
pub(crate) struct Sealed {
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
}

/// The open, locked journal.
pub(crate) struct Journal {
    base: PathBuf,
    /// Held for the flock; closing it releases the journal.
    _lock: File,
    current: Arc<File>,
    current_path: PathBuf,
    /// Bytes in the current segment.
    len: u64,
    number: u64,
    shared: CurrentSegment,
}

/// `(number, path)` of every segment of `base`, ascending.
fn segments(base: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = base
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!(
        "{}.",
        base.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix(&prefix)
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn segment_path(base: &Path, number: u64) -> PathBuf {
    PathBuf::from(format!("{}.{number}", base.display()))
}

fn create_segment(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl Journal {
    /// Lock the journal of the database at `db` and move every entry a
    /// crash left in it that extends the ledger's chain (last row
    /// `head_seq`, `head_hash`) into the ledger table, in one durable
    /// transaction (see [`recover`]). Returns the journal (`None` when
    /// another process holds it) and the new head.
    pub(crate) fn open(
        db: &Path,
        conn: &Connection,
        head_seq: i64,
        head_hash: [u8; 32],
    ) -> Result<(Option<Self>, i64, [u8; 32]), StoreError> {
        let base = journal_path(db);
        let shown = base.display().to_string();
        let io = |e: std::io::Error| StoreError::Unavailable(format!("audit journal {shown}: {e}"));
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&base)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!(
                    path = %shown,
                    "the audit journal is held by another process; audit entries go straight to the ledger"
                );
                return Ok((None, head_seq, head_hash));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let found = segments(&base).map_err(io)?;
        let (seq, hash) = recover(&base, &found, conn, head_seq, head_hash)?;
        for (_, path) in &found {
            std::fs::remove_file(path).map_err(io)?;
        }
        let number = found.last().map_or(0, |(n, _)| n + 1);
        let current_path = segment_path(&base, number);
        let current = Arc::new(create_segment(&current_path).map_err(io)?);
        let shared = Arc::new(Mutex::new(current.clone()));
        Ok((
            Some(Self {
                base,
                _lock: lock,
                current,
                current_path,
                len: 0,
                number,
                shared,
            }),
            seq,
            hash,
        ))
    }

    /// The current segment as the checkpoint thread sees it.
    pub(crate) fn current_segment(&self) -> CurrentSegment {
        self.shared.clone()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The current segment's file (to fsync it outside the chain's lock).
    pub(crate) fn current_file(&self) -> Arc<File> {
        self.current.clone()
    }

    /// Append encoded frames with one write. On failure the segment is cut
    /// back to where it was, so a later frame never follows a torn one; if
    /// even that fails the journal must not be used again (`.1` is true).
    pub(crate) fn append(&mut self, frames: &[u8]) -> Result<(), (std::io::Error, bool)> {
        match (&*self.current).write_all(frames) {
            Ok(()) => {
                self.len += frames.len() as u64;
                Ok(())
            }
            Err(e) => {
                let unusable = self.current.set_len(self.len).is_err();
                Err((e, unusable))
            }
        }
    }

    /// Start a new segment and hand back the current one (`None` when it is
    /// empty). What was appended so far is in the sealed segment only.
    pub(crate) fn seal(&mut self) -> std::io::Result<Option<Sealed>> {
        if self.len == 0 {
            return Ok(None);
        }
        let number = self.number + 1;
        let path = segment_path(&self.base, number);
        let file = Arc::new(create_segment(&path)?);
        let sealed = Sealed {
            path: std::mem::replace(&mut self.current_path, path),
            file: std::mem::replace(&mut self.current, file.clone()),
        };
        self.number = number;
        self.len = 0;
        if let Ok(mut shared) = self.shared.lock() {
            *shared = file;
        }
        Ok(Some(sealed))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.current_path
    }
}

/// Whether the ledger holds exactly this entry. A frame whose seq the
/// ledger has with another hash (another process wrote the chain meanwhile)
/// is not skipped silently: it ends the usable tail and is kept aside.
fn in_ledger(conn: &Connection, frame: &JournalEntry) -> Result<bool, StoreError> {
    use rusqlite::OptionalExtension;
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT hash FROM audit_ledger WHERE seq = ?1",
            [frame.seq],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_err)?;
    Ok(stored.as_deref() == Some(&frame.hash[..]))
}

/// Move every journaled entry that extends the ledger's chain into the
/// ledger table in one durable transaction. Frames already in the ledger
/// (seq ≤ head) are skipped. Returns the new head.
///
/// A frame that does not chain (torn by a power cut, or altered) ends the
/// usable tail: it and everything after it are copied to
/// `PATH-audit.unrecovered-<µs>` for an operator, and a warning names it.
fn recover(
    base: &Path,
    found: &[(u64, PathBuf)],
    conn: &Connection,
    head_seq: i64,
    head_hash: [u8; 32],
) -> Result<(i64, [u8; 32]), StoreError> {
    let shown = base.display().to_string();
    let io = |e: std::io::Error| StoreError::Unavailable(format!("audit journal {shown}: {e}"));
    let (mut seq, mut hash) = (head_seq, head_hash);
    let mut extending = Vec::new();
    let mut leftover: Vec<u8> = Vec::new();
    for (_, path) in found {
        let data = std::fs::read(path).map_err(io)?;
        if !leftover.is_empty() {
            // The chain already broke in an earlier segment.
            leftover.extend_from_slice(&data);
            continue;
        }
        let frames = decode(&data);
        // Where the unusable bytes start: after the last whole frame (a
        // torn frame follows it, if anything), or at the first frame that
        // does not chain.
        let mut tail_start = frames
            .last()
            .map_or(0, |(at, f)| at + FRAME_HEADER + f.bytes.len());
        for (at, frame) in frames {
            if frame.seq <= seq && extending.is_empty() && in_ledger(conn, &frame)? {
                // Moved into the ledger before its segment was deleted.
                continue;
            }
            if frame.seq == seq + 1 && chain_hash_bytes(&hash, &frame.bytes) == frame.hash {
                seq = frame.seq;
                hash = frame.hash;
                extending.push(frame);
                continue;
            }
            tail_start = at;
            break;
        }
        leftover.extend_from_slice(data.get(tail_start..).unwrap_or_default());
    }
    if !leftover.is_empty() {
        let aside = PathBuf::from(format!(
            "{}.unrecovered-{}",
            base.display(),
            crate::now_micros()
        ));
        std::fs::write(&aside, &leftover).map_err(io)?;
        tracing::warn!(
            kept = %aside.display(),
            bytes = leftover.len(),
            "the audit journal's tail does not extend the ledger's chain (torn by a crash, or altered); kept aside"
        );
    }
    if !extending.is_empty() {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_err)?;
        let inserted = insert_into_ledger(conn, &extending)
            .and_then(|()| conn.execute_batch("COMMIT").map_err(sql_err));
        if let Err(e) = inserted {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        tracing::info!(
            entries = extending.len(),
            "audit entries recovered from the journal"
        );
    }
    Ok((seq, hash))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn entry(seq: i64, prev: &[u8; 32], body: &str) -> JournalEntry {
        let bytes = body.as_bytes().to_vec();
        JournalEntry {
            seq,
            hash: chain_hash_bytes(prev, &bytes),
            bytes,
        }
    }

    #[test]
    fn frames_round_trip_and_a_torn_frame_ends_decoding() {
        let a = entry(1, &[0; 32], "{\"a\":1}");
        let b = entry(2, &a.hash, "{\"b\":22}");
        let mut out = Vec::new();
        encode(&a, &mut out).unwrap();
        encode(&b, &mut out).unwrap();
        let frames = decode(&out);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].0, FRAME_HEADER + a.bytes.len());
        assert_eq!(frames[1].1.seq, 2);
        assert_eq!(frames[1].1.hash, b.hash);
        assert_eq!(frames[1].1.bytes, b.bytes);
        for cut in 1..out.len() - 1 {
            let whole = usize::from(cut >= FRAME_HEADER + a.bytes.len());
            assert_eq!(decode(&out[..cut]).len(), whole, "cut at {cut}");
        }
    }

    fn ledger() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE audit_ledger (seq INTEGER PRIMARY KEY, record BLOB NOT NULL, hash BLOB NOT NULL)",
        )
        .unwrap();
        conn
    }

    fn seqs(conn: &Connection) -> Vec<i64> {
        let mut s = conn
            .prepare("SELECT seq FROM audit_ledger ORDER BY seq")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn files(dir: &Path, containing: &str) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(containing))
            .collect();
        found.sort();
        found
    }

    /// Entries spread over segments (one sealed, one current) are recovered
    /// in order: what the ledger has is skipped, what extends it inserted, a
    /// non-chaining tail kept aside (never deleted), and the old segments
    /// replaced by one empty segment.
    #[test]
    fn recovery_reads_every_segment_and_keeps_a_bad_tail_aside() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("j.db");
        let conn = ledger();
        let e1 = entry(1, &[0; 32], "one");
        let e2 = entry(2, &e1.hash, "two");
        let e3 = entry(3, &e2.hash, "three");
        // The ledger already has entry 1.
        insert_into_ledger(&conn, std::slice::from_ref(&e1)).unwrap();
        let (journal, ..) = Journal::open(&db, &conn, 1, e1.hash).unwrap();
        let mut journal = journal.unwrap();
        let mut frames = Vec::new();
        encode(&e1, &mut frames).unwrap();
        encode(&e2, &mut frames).unwrap();
        journal.append(&frames).unwrap();
        let sealed = journal.seal().unwrap().unwrap();
        assert!(journal.is_empty());
        frames.clear();
        encode(&e3, &mut frames).unwrap();
        // A frame that claims seq 4 but does not chain from entry 3.
        let forged = entry(4, &[7; 32], "forged");
        encode(&forged, &mut frames).unwrap();
        journal.append(&frames).unwrap();
        assert_eq!(files(dir.path(), "j.db-audit.").len(), 2);
        drop((journal, sealed));

        let (journal, seq, hash) = Journal::open(&db, &conn, 1, e1.hash).unwrap();
        assert_eq!((seq, hash), (3, e3.hash));
        assert_eq!(seqs(&conn), vec![1, 2, 3]);
        let journal = journal.unwrap();
        assert!(journal.is_empty());
        let segments = files(dir.path(), "j.db-audit.");
        let aside: Vec<_> = segments
            .iter()
            .filter(|p| p.to_string_lossy().contains(".unrecovered-"))
            .collect();
        assert_eq!(
            segments.len(),
            2,
            "one new segment and the kept tail: {segments:?}"
        );
        assert_eq!(aside.len(), 1, "{segments:?}");
        let kept = std::fs::read(aside[0]).unwrap();
        let kept_frames = decode(&kept);
        assert_eq!(kept_frames.len(), 1);
        assert_eq!(kept_frames[0].1.bytes, b"forged");
    }

    /// A journaled entry whose seq the ledger holds with another hash (a
    /// second process wrote the chain while this one's entries waited) is
    /// not taken for "already moved": it and what follows are kept aside.
    #[test]
    fn an_entry_the_ledger_holds_differently_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("j.db");
        let conn = ledger();
        let ours = entry(1, &[0; 32], "ours");
        let theirs = entry(1, &[0; 32], "theirs");
        let (journal, ..) = Journal::open(&db, &conn, 0, [0; 32]).unwrap();
        let mut journal = journal.unwrap();
        let mut frames = Vec::new();
        encode(&ours, &mut frames).unwrap();
        journal.append(&frames).unwrap();
        drop(journal);
        insert_into_ledger(&conn, std::slice::from_ref(&theirs)).unwrap();

        let (_, seq, hash) = Journal::open(&db, &conn, 1, theirs.hash).unwrap();
        assert_eq!((seq, hash), (1, theirs.hash));
        let aside = files(dir.path(), ".unrecovered-");
        assert_eq!(aside.len(), 1);
        assert_eq!(
            decode(&std::fs::read(&aside[0]).unwrap())[0].1.bytes,
            b"ours"
        );
    }

    /// A second opener of the same database gets no journal (the file lock).
    #[test]
    fn the_journal_has_one_owner() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("j.db");
        let conn = ledger();
        let first = Journal::open(&db, &conn, 0, [0; 32]).unwrap().0;
        assert!(first.is_some());
        assert!(Journal::open(&db, &conn, 0, [0; 32]).unwrap().0.is_none());
        drop(first);
        assert!(Journal::open(&db, &conn, 0, [0; 32]).unwrap().0.is_some());
    }
}
