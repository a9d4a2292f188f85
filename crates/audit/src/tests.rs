//! Unit tests for the whole crate (kept in one place because most of them
//! build a chain and then break it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::*;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn golden_record() -> AuditRecord {
    AuditRecord {
        recorded_at: 1_700_000_000_123_456,
        action: AuditAction::Read,
        outcome: AuditOutcome::Denied("sealed \"record\"\\n".into()),
        agent: Agent {
            user: Some("555123456789".into()),
            role: Some("R8000".into()),
            org: Some("RR8".into()),
            client: None,
            display: "Dr Zoë O'Brien\t/ GP".into(),
        },
        patient: Some("9000000009".into()),
        resources: vec![
            "Patient/9000000009".into(),
            "Observation/abc/_history/2".into(),
        ],
        purpose: "TREAT: direct care\n\u{1}\u{7f}".into(),
        channel: Channel::Rest,
        detail: None,
    }
}

fn record(i: i64) -> AuditRecord {
    AuditRecord {
        recorded_at: 1_700_000_000_000_000 + i * 1_000_000,
        action: AuditAction::ALL[usize::try_from(i).unwrap() % AuditAction::ALL.len()],
        outcome: if i % 7 == 0 {
            AuditOutcome::Denied(format!("reason {i}"))
        } else {
            AuditOutcome::Success
        },
        agent: Agent {
            user: Some(format!("user{}", i % 3)),
            role: Some("R8000".into()),
            org: Some("A81001".into()),
            client: (i % 2 == 0).then(|| "app".to_owned()),
            display: format!("User {}", i % 3),
        },
        patient: Some(format!("p{}", i % 5)),
        resources: vec![format!("Observation/o{i}")],
        purpose: "TREAT".into(),
        channel: Channel::ALL[usize::try_from(i).unwrap() % Channel::ALL.len()],
        detail: (i % 4 == 0).then(|| format!("detail {i}")),
    }
}

fn ledger(n: i64) -> Vec<LedgerRow> {
    let mut head = ChainHead::genesis();
    (1..=n).map(|i| head.append(record(i))).collect()
}

fn checkpoint_at(rows: &[LedgerRow], seq: i64, k: &SigningKey) -> Checkpoint {
    let hash = rows.iter().find(|r| r.seq == seq).unwrap().hash;
    sign_checkpoint(k, seq, hash, 1_700_000_100_000_000)
}

fn tamper_of(rows: Vec<LedgerRow>, cps: &[Checkpoint]) -> Option<Tamper> {
    verify(rows, cps, &[key(1).verifying_key()]).tamper
}

// ---------------------------------------------------------------- canonical

const GOLDEN_BYTES: &str = concat!(
    r#"{"_v":1,"action":"read","agent":{"client":null,"display":"Dr Zoë O'Brien\t/ GP","#,
    r#""org":"RR8","role":"R8000","user":"555123456789"},"channel":"rest","detail":null,"#,
    r#""outcome":"denied","outcome_reason":"sealed \"record\"\\n","patient":"9000000009","#,
    r#""purpose":"TREAT: direct care\n\u0001"#,
    "\u{7f}",
    r#"","recorded_at":1700000000123456,"#,
    r#""resources":["Patient/9000000009","Observation/abc/_history/2"]}"#
);

#[test]
fn canonical_bytes_golden_vector() {
    let bytes = canonical_bytes(&golden_record());
    assert_eq!(String::from_utf8(bytes).unwrap(), GOLDEN_BYTES);
}

#[test]
fn chain_hash_golden_vector() {
    let rec = golden_record();
    let h1 = chain_hash(&GENESIS_HASH, &rec);
    assert_eq!(
        hex::encode(h1),
        "de3896aa42b86f6b0f78cbf0bc66d13b9a8fe3f71d823afdb703a818eb5acb65"
    );
    let h2 = chain_hash(&h1, &rec);
    assert_eq!(
        hex::encode(h2),
        "2d0c2888ad70a3f1ce765aa01869d2c31130e1b069f295291bcd9e3a05f6373b"
    );
}

#[test]
fn chain_hash_is_sha256_of_previous_and_bytes() {
    use sha2::{Digest, Sha256};
    let rec = golden_record();
    let prev = [9u8; 32];
    let mut h = Sha256::new();
    h.update(prev);
    h.update(GOLDEN_BYTES.as_bytes());
    let expected: [u8; 32] = h.finalize().into();
    assert_eq!(chain_hash(&prev, &rec), expected);
    assert_eq!(chain_hash_bytes(&prev, GOLDEN_BYTES.as_bytes()), expected);
}

#[test]
fn escapes_follow_jcs() {
    let mut rec = golden_record();
    rec.detail = Some("\u{0}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f} \"\\/\u{7f}é\u{2028}😀".into());
    let text = String::from_utf8(canonical_bytes(&rec)).unwrap();
    assert!(
        text.contains(r#""detail":"\u0000\b\t\n\u000b\f\r\u001f \"\\/"#),
        "{text}"
    );
    assert!(text.contains("\u{7f}é\u{2028}😀\""), "{text}");
    // Any JSON parser reads the same string back.
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["detail"].as_str(), rec.detail.as_deref());
}

#[test]
fn decode_round_trips() {
    assert_eq!(decode(GOLDEN_BYTES.as_bytes()).unwrap(), golden_record());
    for i in 1..=64 {
        let rec = record(i);
        assert_eq!(decode(&canonical_bytes(&rec)).unwrap(), rec, "record {i}");
    }
    let mut odd = record(3);
    odd.outcome = AuditOutcome::Failed(String::new());
    odd.resources.clear();
    odd.patient = None;
    odd.agent = Agent::default();
    odd.recorded_at = -1;
    assert_eq!(decode(&canonical_bytes(&odd)).unwrap(), odd);
}

#[test]
fn decode_rejects_non_canonical_forms() {
    let good = GOLDEN_BYTES;
    let cases: Vec<String> = vec![
        good.replacen("{\"_v\":1,", "{ \"_v\":1,", 1),
        good.replacen(
            "\"_v\":1,\"action\":\"read\"",
            "\"action\":\"read\",\"_v\":1",
            1,
        ),
        good.replacen("\"detail\":null,", "\"detail\":null,\"extra\":1,", 1),
        good.replacen("Patient/9000000009\"", "Patient\\/9000000009\"", 1),
        good.replacen("\"R8000\"", "\"\\u0052\\u0038000\"", 1),
        good.replacen("\"detail\":null,", "\"detail\":null,\"detail\":null,", 1),
        format!("{good}\n"),
    ];
    for c in &cases {
        assert_eq!(decode(c.as_bytes()), Err(AuditError::NotCanonical), "{c}");
    }
    assert_eq!(
        decode(good.replacen("\"_v\":1", "\"_v\":2", 1).as_bytes()),
        Err(AuditError::UnsupportedVersion(2))
    );
    for bad in [
        good.replacen("\"read\"", "\"peek\"", 1),
        good.replacen("\"denied\"", "\"success\"", 1),
        good.replacen("\"rest\"", "\"fax\"", 1),
        good.replacen(
            "\"recorded_at\":1700000000123456",
            "\"recorded_at\":\"1\"",
            1,
        ),
        "[]".to_owned(),
        "not json".to_owned(),
    ] {
        assert!(
            matches!(decode(bad.as_bytes()), Err(AuditError::Decode(_))),
            "{bad}"
        );
    }
}

#[test]
fn names_agree_with_serde() {
    for a in AuditAction::ALL {
        assert_eq!(serde_json::to_value(a).unwrap(), Value::from(a.as_str()));
        assert_eq!(AuditAction::from_name(a.as_str()), Some(a));
    }
    for c in Channel::ALL {
        assert_eq!(serde_json::to_value(c).unwrap(), Value::from(c.as_str()));
        assert_eq!(Channel::from_name(c.as_str()), Some(c));
    }
}

#[test]
fn break_glass_helpers() {
    let mut rec = record(1);
    assert!(!rec.is_break_glass());
    assert_eq!(rec.break_glass_reason(), None);
    rec.purpose = break_glass_purpose("unconscious in ED");
    assert!(rec.is_break_glass());
    assert_eq!(rec.break_glass_reason(), Some("unconscious in ED"));
    rec.action = AuditAction::BreakGlassStart;
    rec.purpose = "no prefix".into();
    assert_eq!(rec.break_glass_reason(), Some("no prefix"));
}

// ---------------------------------------------------------------- chain + verify

#[test]
fn chain_links_each_row_to_the_previous() {
    let rows = ledger(5);
    let mut prev = GENESIS_HASH;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.seq, i64::try_from(i).unwrap() + 1);
        assert_eq!(row.hash, chain_hash(&prev, &row.record));
        prev = row.hash;
    }
}

#[test]
fn intact_ledger_verifies() {
    let rows = ledger(100);
    let k = key(1);
    let cps = vec![checkpoint_at(&rows, 40, &k), checkpoint_at(&rows, 100, &k)];
    let report = verify(rows.clone(), &cps, &[k.verifying_key()]);
    assert!(report.is_intact(), "{:?}", report.tamper);
    assert_eq!(report.summary.entries, 100);
    assert_eq!(report.summary.last_seq, 100);
    assert_eq!(report.summary.head_hash, rows[99].hash);
    assert_eq!(report.summary.checkpoints_matched, 2);
    assert_eq!(report.summary.last_checkpoint_seq, Some(100));
    // Empty ledger, no checkpoints.
    assert!(verify(Vec::new(), &[], &[]).is_intact());
    // Empty ledger with a genesis checkpoint.
    let genesis = sign_checkpoint(&k, 0, GENESIS_HASH, 1);
    assert!(verify(Vec::new(), &[genesis], &[k.verifying_key()]).is_intact());
}

#[test]
fn streaming_page_by_page_matches_one_shot() {
    let rows = ledger(1000);
    let k = key(1);
    let cps = vec![
        checkpoint_at(&rows, 500, &k),
        checkpoint_at(&rows, 1000, &k),
    ];
    let mut v = Verifier::new(&cps, &[k.verifying_key()]);
    for page in rows.chunks(128) {
        for row in page {
            v.push(row.clone()).unwrap();
        }
    }
    assert_eq!(v.summary().entries, 1000);
    let summary = v.finish().unwrap();
    assert_eq!(summary.checkpoints_matched, 2);
}

#[test]
fn resume_from_a_trusted_head() {
    let rows = ledger(50);
    let k = key(1);
    let cps = vec![checkpoint_at(&rows, 20, &k), checkpoint_at(&rows, 50, &k)];
    let start = ChainHead {
        seq: 20,
        hash: rows[19].hash,
    };
    let mut v = Verifier::resume(start, &cps, &[k.verifying_key()]);
    for row in &rows[20..] {
        v.push(row.clone()).unwrap();
    }
    let s = v.finish().unwrap();
    assert_eq!((s.entries, s.checkpoints_matched), (30, 2));
    // A resume point that disagrees with the checkpoint at it.
    let wrong = ChainHead {
        seq: 20,
        hash: rows[18].hash,
    };
    let mut v = Verifier::resume(wrong, &cps, &[k.verifying_key()]);
    for row in &rows[20..] {
        // The chain itself does not follow from the wrong head either.
        if v.push(row.clone()).is_err() {
            break;
        }
    }
    assert!(v.finish().is_err());
}

#[test]
fn detects_altered_field() {
    let mut rows = ledger(10);
    rows[4].record.purpose = "HRESCH".into(); // entry 5, hash left alone
    let t = tamper_of(rows, &[]).unwrap();
    assert_eq!(t, Tamper::Altered { seq: 5 });
    assert_eq!(t.seq(), 5);
    assert!(
        t.to_string()
            .starts_with("entry 5 was altered: its stored hash does not match its contents"),
        "{t}"
    );
}

#[test]
fn detects_altered_last_entry_at_finish() {
    let mut rows = ledger(10);
    rows[9].record.agent.user = Some("someone-else".into());
    assert_eq!(tamper_of(rows, &[]), Some(Tamper::Altered { seq: 10 }));
}

#[test]
fn detects_altered_entry_with_recomputed_hash_at_the_next_entry() {
    let mut rows = ledger(10);
    rows[4].record.patient = Some("p-other".into());
    rows[4].hash = chain_hash(&rows[3].hash, &rows[4].record);
    // Entry 5 now looks fine; entry 6 no longer follows from it.
    assert_eq!(tamper_of(rows, &[]), Some(Tamper::Altered { seq: 6 }));
}

#[test]
fn detects_deleted_entry() {
    let mut rows = ledger(10);
    rows.remove(6); // entry 7
    let t = tamper_of(rows, &[]).unwrap();
    assert_eq!(t, Tamper::Deleted { seq: 7, count: 1 });
    assert_eq!(
        t.to_string(),
        "entry 7 was deleted: the ledger goes from entry 6 to entry 8"
    );

    let mut rows = ledger(10);
    rows.drain(2..5); // entries 3..=5
    let t = tamper_of(rows, &[]).unwrap();
    assert_eq!(t, Tamper::Deleted { seq: 3, count: 3 });
    assert_eq!(
        t.to_string(),
        "entries 3 to 5 were deleted: the ledger goes from entry 2 to entry 6"
    );

    let mut rows = ledger(3);
    rows.remove(0);
    assert_eq!(
        tamper_of(rows, &[]),
        Some(Tamper::Deleted { seq: 1, count: 1 })
    );
}

#[test]
fn detects_deleted_and_renumbered_entry_as_a_break_at_that_number() {
    let mut rows = ledger(10);
    rows.remove(6);
    for (i, r) in rows.iter_mut().enumerate() {
        r.seq = i64::try_from(i).unwrap() + 1;
    }
    assert_eq!(tamper_of(rows, &[]), Some(Tamper::Altered { seq: 7 }));
}

fn insert_renumbered(forged_hash: impl Fn(&[LedgerRow], &AuditRecord) -> [u8; 32]) -> Tamper {
    let mut rows = ledger(10);
    let mut forged = record(99);
    forged.purpose = "looked at it".into();
    let forged_hash = forged_hash(&rows, &forged);
    rows.insert(
        4,
        LedgerRow {
            seq: 5,
            record: forged,
            hash: forged_hash,
        },
    );
    for (i, r) in rows.iter_mut().enumerate() {
        r.seq = i64::try_from(i).unwrap() + 1;
    }
    tamper_of(rows, &[]).unwrap()
}

#[test]
fn detects_inserted_entry() {
    // Inserted with a properly chained hash, the rest renumbered: the break
    // shows at entry 6, which follows from entry 4.
    let t = insert_renumbered(|rows, forged| chain_hash(&rows[3].hash, forged));
    assert_eq!(t, Tamper::Inserted { seq: 5 });
    // Inserted with a made-up hash: entry 6 follows from entry 4.
    let t = insert_renumbered(|_, _| [0x42; 32]);
    assert_eq!(t, Tamper::Inserted { seq: 5 });
    assert_eq!(
        t.to_string(),
        "an entry was inserted at 5: the entry after it follows directly from entry 4"
    );
}

#[test]
fn detects_duplicate_number() {
    let mut rows = ledger(10);
    let mut extra = rows[4].clone();
    extra.record.detail = Some("extra".into());
    rows.insert(5, extra);
    assert_eq!(tamper_of(rows, &[]), Some(Tamper::Duplicate { seq: 5 }));
}

#[test]
fn detects_swapped_entries() {
    // Whole rows swapped, numbers left in place (what a store ordered by seq
    // returns after someone exchanged two rows' contents).
    let mut rows = ledger(10);
    let (a, b) = (rows[3].clone(), rows[4].clone());
    rows[3].record = b.record.clone();
    rows[3].hash = b.hash;
    rows[4].record = a.record.clone();
    rows[4].hash = a.hash;
    let t = tamper_of(rows, &[]).unwrap();
    assert_eq!(t, Tamper::Reordered { seq: 4 });
    assert_eq!(
        t.to_string(),
        "entries 4 and 5 were swapped: the ledger was reordered"
    );

    // Only the records swapped, hashes left in place.
    let mut rows = ledger(10);
    let (a, b) = (rows[3].record.clone(), rows[4].record.clone());
    rows[3].record = b;
    rows[4].record = a;
    assert_eq!(tamper_of(rows, &[]), Some(Tamper::Reordered { seq: 4 }));
}

#[test]
fn detects_out_of_order_feed() {
    let mut rows = ledger(10);
    rows.swap(3, 4);
    // Entry 5 arrives where 4 is expected: a gap first.
    assert_eq!(
        tamper_of(rows, &[]),
        Some(Tamper::Deleted { seq: 4, count: 1 })
    );
    let mut rows = ledger(10);
    let back = rows[2].clone();
    rows.insert(6, back);
    assert_eq!(
        tamper_of(rows, &[]),
        Some(Tamper::OutOfOrder { seq: 3, after: 6 })
    );
}

#[test]
fn detects_truncation_after_checkpoint() {
    let rows = ledger(20);
    let k = key(1);
    let cps = vec![checkpoint_at(&rows, 10, &k), checkpoint_at(&rows, 15, &k)];
    let truncated: Vec<_> = rows[..12].to_vec();
    let t = tamper_of(truncated, &cps).unwrap();
    assert_eq!(
        t,
        Tamper::Truncated {
            last_seq: 12,
            checkpoint_seq: 15
        }
    );
    assert_eq!(
        t.to_string(),
        "the ledger was truncated: it ends at entry 12 but a signed checkpoint covers entry 15"
    );
    assert_eq!(
        tamper_of(Vec::new(), &cps),
        Some(Tamper::Truncated {
            last_seq: 0,
            checkpoint_seq: 15
        })
    );
    // Entries after the last checkpoint are not protected (documented).
    assert_eq!(tamper_of(rows[..17].to_vec(), &cps), None);
}

#[test]
fn detects_rewritten_ledger_via_checkpoint() {
    let rows = ledger(20);
    let k = key(1);
    let cps = vec![checkpoint_at(&rows, 15, &k)];
    // Rewrite entry 3 and recompute every hash after it: the chain is
    // internally consistent but disagrees with the signed head.
    let mut head = ChainHead::genesis();
    let rewritten: Vec<_> = rows
        .iter()
        .map(|r| {
            let mut rec = r.record.clone();
            if r.seq == 3 {
                rec.agent.display = "nobody".into();
            }
            head.append(rec)
        })
        .collect();
    let t = tamper_of(rewritten, &cps).unwrap();
    assert_eq!(t, Tamper::CheckpointMismatch { seq: 15 });
    assert!(t.to_string().contains("was rewritten"));
}

#[test]
fn detects_forged_checkpoint_signature() {
    let rows = ledger(20);
    let k = key(1);
    // A real checkpoint whose head was then changed (e.g. to cover a rewrite).
    let mut cp = checkpoint_at(&rows, 10, &k);
    cp.head_hash = rows[8].hash;
    let t = tamper_of(rows.clone(), std::slice::from_ref(&cp)).unwrap();
    assert_eq!(
        t,
        Tamper::BadCheckpointSignature {
            seq: 10,
            key_id: key_id(&k.verifying_key())
        }
    );
    assert!(t.to_string().contains("invalid signature"));
    // A forger signing with their own key but claiming the trusted key id.
    let forger = key(2);
    let mut cp = checkpoint_at(&rows, 10, &forger);
    cp.key_id = key_id(&k.verifying_key());
    let sig = ed25519_dalek::Signer::sign(
        &forger,
        &checkpoint_message(cp.seq, &cp.head_hash, cp.signed_at, &cp.key_id),
    );
    cp.signature = sig.to_bytes();
    assert!(matches!(
        tamper_of(rows, &[cp]),
        Some(Tamper::BadCheckpointSignature { seq: 10, .. })
    ));
}

#[test]
fn detects_checkpoint_from_wrong_key() {
    let rows = ledger(20);
    let stranger = key(3);
    let cp = checkpoint_at(&rows, 10, &stranger);
    let t = tamper_of(rows, &[cp]).unwrap();
    assert_eq!(
        t,
        Tamper::UntrustedCheckpointKey {
            seq: 10,
            key_id: key_id(&stranger.verifying_key())
        }
    );
    assert!(t.to_string().contains("not a trusted key"));
}

#[test]
fn chain_problems_come_before_checkpoint_problems_and_stick() {
    let mut rows = ledger(10);
    rows[1].record.purpose = "x".into();
    let cp = checkpoint_at(&rows, 5, &key(3));
    assert_eq!(
        tamper_of(rows.clone(), &[cp]),
        Some(Tamper::Altered { seq: 2 })
    );
    let mut v = Verifier::new(&[], &[]);
    let mut first = None;
    for r in rows {
        if let Err(t) = v.push(r) {
            first.get_or_insert(t.clone());
            assert_eq!(Some(&t), first.as_ref());
        }
    }
    assert_eq!(v.finish().err(), first);
}

// ---------------------------------------------------------------- checkpoints

#[test]
fn checkpoint_sign_and_verify() {
    let k = key(1);
    let cp = sign_checkpoint(&k, 42, [5; 32], 1_700_000_000_000_000);
    assert_eq!(cp.key_id, key_id(&k.verifying_key()));
    assert!(cp.key_id.starts_with("ed25519:") && cp.key_id.len() == 8 + 16);
    verify_checkpoint(&cp, &k.verifying_key()).unwrap();
    let mut bad = cp.clone();
    bad.seq = 43;
    assert_eq!(
        verify_checkpoint(&bad, &k.verifying_key()),
        Err(AuditError::BadSignature)
    );
    let mut bad = cp.clone();
    bad.signed_at += 1;
    assert_eq!(
        verify_checkpoint(&bad, &k.verifying_key()),
        Err(AuditError::BadSignature)
    );
    assert!(matches!(
        verify_checkpoint(&cp, &key(2).verifying_key()),
        Err(AuditError::KeyMismatch { .. })
    ));
}

#[test]
fn checkpoint_message_layout_is_pinned() {
    let m = checkpoint_message(1, &[0xab; 32], 2, "k");
    let mut expected = b"carelayer-audit-checkpoint-v1\0".to_vec();
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    expected.extend_from_slice(&[0xab; 32]);
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
    expected.extend_from_slice(&[0, 0, 0, 1, b'k']);
    assert_eq!(m, expected);
    // Ed25519 is deterministic: pin a key id and a signature too (both
    // cross-checked with an independent Ed25519 implementation).
    let cp = sign_checkpoint(&key(1), 1, [0xab; 32], 2);
    assert_eq!(cp.key_id, "ed25519:34750f98bd59fcfc");
    assert_eq!(
        hex::encode(cp.signature),
        "46c59204f9e07737c31d808fefc898a04c1347a2a46ee35af12979d45a40169a\
         f2d68bef7598ed83fade5578d9bc51b9c2a75d7a6027de79e6df70ecb607190a"
    );
}

#[test]
fn key_text_round_trips() {
    let k = generate_signing_key().unwrap();
    assert_ne!(k.to_bytes(), generate_signing_key().unwrap().to_bytes());
    let text = signing_key_to_text(&k);
    assert!(text.starts_with("carelayer-audit-ed25519-secret-v1:"));
    assert_eq!(
        signing_key_from_text(&text).unwrap().to_bytes(),
        k.to_bytes()
    );
    assert_eq!(
        signing_key_from_text(&format!("  {}\n", hex::encode(k.to_bytes())))
            .unwrap()
            .to_bytes(),
        k.to_bytes()
    );
    let vk = k.verifying_key();
    let vtext = verifying_key_to_text(&vk);
    assert!(vtext.starts_with("carelayer-audit-ed25519-public-v1:"));
    assert_eq!(verifying_key_from_text(&vtext).unwrap(), vk);
    // Mixing them up, or garbage, is an error.
    assert!(matches!(
        signing_key_from_text(&vtext),
        Err(AuditError::Key(_))
    ));
    assert!(matches!(
        verifying_key_from_text(&text),
        Err(AuditError::Key(_))
    ));
    assert!(matches!(
        signing_key_from_text("abcd"),
        Err(AuditError::Key(_))
    ));
}

#[test]
fn checkpoint_file_round_trips() {
    let rows = ledger(30);
    let k = key(1);
    let file = CheckpointFile {
        public_keys: vec![k.verifying_key()],
        checkpoints: vec![checkpoint_at(&rows, 10, &k), checkpoint_at(&rows, 30, &k)],
    };
    let json = file.to_json();
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["format"], "carelayer-audit-checkpoints");
    assert_eq!(v["version"], 1);
    assert_eq!(v["checkpoints"][0]["seq"], 10);
    assert_eq!(
        v["checkpoints"][0]["signed_at_utc"],
        "2023-11-14T22:15:00.000000Z"
    );
    assert_eq!(v["checkpoints"][1]["head_hash"], rows[29].hash_hex());
    let back = CheckpointFile::from_json(&json).unwrap();
    assert_eq!(back, file);
    assert!(verify(rows, &back.checkpoints, &[k.verifying_key()]).is_intact());

    // A hand-edited time, an unknown format or a bad hex string is refused.
    let edited = json.replace("2023-11-14T22:15:00.000000Z", "2023-11-14T22:16:00.000000Z");
    assert!(matches!(
        CheckpointFile::from_json(&edited),
        Err(AuditError::CheckpointFile(_))
    ));
    let other = json.replace("carelayer-audit-checkpoints", "something-else");
    assert!(CheckpointFile::from_json(&other).is_err());
    let short = json.replace(&rows_hash_prefix(&back), "zz");
    assert!(CheckpointFile::from_json(&short).is_err());
}

fn rows_hash_prefix(file: &CheckpointFile) -> String {
    hex::encode(file.checkpoints[0].head_hash)
}

// ---------------------------------------------------------------- BALP

const BASE: &str = "https://carelayer.example/fhir";

fn row(rec: AuditRecord) -> LedgerRow {
    ChainHead::genesis().append(rec)
}

fn read_record() -> AuditRecord {
    AuditRecord {
        recorded_at: 1_700_000_000_123_456,
        action: AuditAction::Read,
        outcome: AuditOutcome::Success,
        agent: Agent {
            user: Some("555123456789".into()),
            role: Some("R8000".into()),
            org: Some("A81001".into()),
            client: Some("gp-app".into()),
            display: "Dr A Smith".into(),
        },
        patient: Some("9000000009".into()),
        resources: vec![
            "Patient/9000000009".into(),
            "Observation/o1/_history/3".into(),
        ],
        purpose: "TREAT: direct care".into(),
        channel: Channel::Rest,
        detail: None,
    }
}

/// Valid by the fhir crate's R4 validator, plus the required elements and
/// invariants it does not check.
fn assert_valid_r4(ev: &Value) {
    let issues = carelayer_fhir::validate::validate_resource(ev);
    assert!(
        carelayer_fhir::validate::is_valid(&issues),
        "{}\n{}",
        issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        serde_json::to_string_pretty(ev).unwrap()
    );
    assert_eq!(ev["resourceType"], "AuditEvent");
    let id = ev["id"].as_str().unwrap();
    assert!(!id.is_empty() && id.len() <= 64);
    assert!(ev["type"]["system"].is_string() && ev["type"]["code"].is_string());
    let recorded = ev["recorded"].as_str().unwrap();
    assert!(
        recorded.ends_with('Z') && recorded.len() == 27,
        "{recorded}"
    );
    assert!(["C", "R", "U", "D", "E"].contains(&ev["action"].as_str().unwrap()));
    assert!(["0", "4", "8", "12"].contains(&ev["outcome"].as_str().unwrap()));
    let agents = ev["agent"].as_array().unwrap();
    assert!(!agents.is_empty());
    for a in agents {
        assert!(a["requestor"].is_boolean(), "agent.requestor is 1..1");
    }
    assert_eq!(agents.iter().filter(|a| a["requestor"] == true).count(), 1);
    assert!(
        ev["source"]["observer"].is_object(),
        "source.observer is 1..1"
    );
    for e in ev["entity"].as_array().into_iter().flatten() {
        assert!(e["name"].is_null() || e["query"].is_null(), "sev-1");
        for d in e["detail"].as_array().into_iter().flatten() {
            assert!(d["type"].is_string() && d["valueString"].is_string());
        }
    }
    for s in ev["subtype"].as_array().unwrap() {
        assert!(s["system"].is_string() && s["code"].is_string());
    }
}

#[test]
fn balp_read_snapshot() {
    let r = row(read_record());
    let ev = to_audit_event(&r, BASE);
    assert_valid_r4(&ev);
    assert_eq!(ev["id"], "1");
    assert_eq!(
        ev["type"],
        serde_json::json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation"})
    );
    assert_eq!(
        ev["subtype"][0]["system"],
        "http://hl7.org/fhir/restful-interaction"
    );
    assert_eq!(ev["subtype"][0]["code"], "read");
    assert_eq!(ev["action"], "R");
    assert_eq!(ev["recorded"], "2023-11-14T22:13:20.123456Z");
    assert_eq!(ev["outcome"], "0");
    assert!(ev.get("outcomeDesc").is_none());

    let user = &ev["agent"][0];
    assert_eq!(user["requestor"], true);
    assert_eq!(
        user["who"]["identifier"]["system"],
        "https://fhir.nhs.uk/Id/sds-user-id"
    );
    assert_eq!(user["who"]["identifier"]["value"], "555123456789");
    assert_eq!(user["who"]["display"], "Dr A Smith");
    assert_eq!(
        user["role"][0]["coding"][0]["system"],
        "https://fhir.nhs.uk/Id/sds-role-code"
    );
    assert_eq!(user["role"][0]["coding"][0]["code"], "R8000");
    assert_eq!(user["purposeOfUse"][0]["coding"][0]["code"], "TREAT");
    assert_eq!(user["purposeOfUse"][0]["text"], "TREAT: direct care");
    let org = &ev["agent"][1];
    assert_eq!(
        org["who"]["identifier"]["system"],
        "https://fhir.nhs.uk/Id/ods-organization-code"
    );
    assert_eq!(org["who"]["identifier"]["value"], "A81001");
    assert_eq!(org["requestor"], false);
    let server = &ev["agent"][2];
    assert_eq!(server["type"]["coding"][0]["code"], "110153");
    assert_eq!(server["network"]["address"], BASE);
    let client = &ev["agent"][3];
    assert_eq!(client["type"]["coding"][0]["code"], "110152");
    assert_eq!(client["who"]["identifier"]["value"], "gp-app");

    assert_eq!(ev["source"]["observer"]["identifier"]["value"], BASE);
    assert_eq!(ev["source"]["type"][0]["code"], "4");

    let entities = ev["entity"].as_array().unwrap();
    assert_eq!(entities.len(), 2, "the Patient itself is not repeated");
    assert_eq!(entities[0]["what"]["reference"], "Patient/9000000009");
    assert_eq!(entities[0]["type"]["code"], "1");
    assert_eq!(entities[0]["role"]["code"], "1");
    assert_eq!(
        entities[1]["what"]["reference"],
        "Observation/o1/_history/3"
    );
    assert_eq!(entities[1]["role"]["code"], "4");

    assert_eq!(
        ev["extension"][0]["url"],
        crate::balp::CHAIN_HASH_EXTENSION_URL
    );
    assert_eq!(ev["extension"][0]["valueString"], r.hash_hex());
    assert_eq!(ev["extension"][1]["valueCode"], "rest");

    // The validator is live: a broken copy fails it.
    let mut broken = ev.clone();
    broken["action"] = Value::from("X");
    broken.as_object_mut().unwrap().remove("recorded");
    let issues = carelayer_fhir::validate::validate_resource(&broken);
    assert!(!carelayer_fhir::validate::is_valid(&issues));
    assert!(issues.len() >= 2, "{issues:?}");
}

#[test]
fn balp_denial_and_failure() {
    let mut rec = read_record();
    rec.outcome = AuditOutcome::Denied("patient has a sealed record".into());
    let ev = to_audit_event(&row(rec.clone()), BASE);
    assert_valid_r4(&ev);
    assert_eq!(ev["outcome"], "4");
    assert_eq!(ev["outcomeDesc"], "Denied: patient has a sealed record");
    rec.outcome = AuditOutcome::Failed("version conflict".into());
    let ev = to_audit_event(&row(rec), BASE);
    assert_eq!(ev["outcome"], "4");
    assert_eq!(ev["outcomeDesc"], "Failed: version conflict");
}

#[test]
fn balp_break_glass_start_is_a_security_alert() {
    let mut rec = read_record();
    rec.action = AuditAction::BreakGlassStart;
    rec.purpose = break_glass_purpose("unconscious patient in ED");
    rec.resources.clear();
    let ev = to_audit_event(&row(rec), BASE);
    assert_valid_r4(&ev);
    assert_eq!(
        ev["type"]["system"],
        "http://dicom.nema.org/resources/ontology/DCM"
    );
    assert_eq!(ev["type"]["code"], "110113");
    assert_eq!(ev["subtype"][0]["code"], "110127");
    assert_eq!(ev["action"], "E");
    let pou = &ev["agent"][0]["purposeOfUse"][0];
    assert_eq!(
        pou["coding"][0]["system"],
        "http://terminology.hl7.org/CodeSystem/v3-ActReason"
    );
    assert_eq!(pou["coding"][0]["code"], "ETREAT");
    assert_eq!(ev["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
    let patient = &ev["entity"][0];
    assert_eq!(patient["what"]["reference"], "Patient/9000000009");
    assert_eq!(patient["detail"][0]["type"], "break-glass-reason");
    assert_eq!(
        patient["detail"][0]["valueString"],
        "unconscious patient in ED"
    );

    let mut stop = read_record();
    stop.action = AuditAction::BreakGlassStop;
    let ev = to_audit_event(&row(stop), BASE);
    assert_eq!(ev["subtype"][0]["code"], "110138");
}

#[test]
fn balp_access_under_break_glass_keeps_rest_type_with_etreat() {
    let mut rec = read_record();
    rec.purpose = break_glass_purpose("anaphylaxis");
    let ev = to_audit_event(&row(rec), BASE);
    assert_valid_r4(&ev);
    assert_eq!(ev["type"]["code"], "rest");
    assert_eq!(
        ev["agent"][0]["purposeOfUse"][0]["coding"][0]["code"],
        "ETREAT"
    );
    assert_eq!(ev["entity"][0]["detail"][0]["valueString"], "anaphylaxis");
}

#[test]
fn balp_search_has_a_query_entity() {
    let mut rec = read_record();
    rec.action = AuditAction::Search;
    rec.detail = Some("Observation?patient=9000000009&code=1234".into());
    let ev = to_audit_event(&row(rec), BASE);
    assert_valid_r4(&ev);
    assert_eq!(ev["subtype"][0]["code"], "search-type");
    assert_eq!(ev["action"], "E");
    let q = ev["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["role"]["code"] == "24")
        .unwrap();
    assert_eq!(
        q["query"],
        "T2JzZXJ2YXRpb24/cGF0aWVudD05MDAwMDAwMDA5JmNvZGU9MTIzNA=="
    );
}

#[test]
fn balp_writes_and_disclosure() {
    for (action, code, act) in [
        (AuditAction::Create, "create", "C"),
        (AuditAction::Update, "update", "U"),
        (AuditAction::Patch, "patch", "U"),
        (AuditAction::Delete, "delete", "D"),
        (AuditAction::Vread, "vread", "R"),
        (AuditAction::History, "history-instance", "R"),
        (AuditAction::Transaction, "transaction", "E"),
        (AuditAction::Batch, "batch", "E"),
    ] {
        let mut rec = read_record();
        rec.action = action;
        let ev = to_audit_event(&row(rec), BASE);
        assert_valid_r4(&ev);
        assert_eq!(ev["subtype"][0]["code"], code);
        assert_eq!(ev["action"], act, "{action:?}");
    }
    let mut rec = read_record();
    rec.action = AuditAction::Create;
    let ev = to_audit_event(&row(rec), BASE);
    assert_eq!(ev["agent"][0]["type"]["coding"][0]["code"], "AUT");
    assert_eq!(ev["agent"][2]["type"]["coding"][0]["code"], "110152");

    let mut rec = read_record();
    rec.action = AuditAction::Disclose;
    rec.purpose = "court order under s.35".into();
    rec.detail = Some("to: police force X, register DUR-123".into());
    let ev = to_audit_event(&row(rec), BASE);
    assert_valid_r4(&ev);
    assert_eq!(ev["type"]["code"], "110106");
    assert_eq!(
        ev["subtype"][0]["system"],
        "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
    );
    assert_eq!(ev["subtype"][0]["code"], "disclose");
    assert_eq!(ev["purposeOfEvent"][0]["text"], "court order under s.35");
    assert!(ev["purposeOfEvent"][0].get("coding").is_none());
    assert_eq!(
        ev["entity"][0]["detail"][0]["valueString"],
        "to: police force X, register DUR-123"
    );
}

#[test]
fn balp_every_action_is_valid_r4_even_without_patient_or_user() {
    for (i, action) in AuditAction::ALL.into_iter().enumerate() {
        let mut rec = record(i64::try_from(i).unwrap() + 1);
        rec.action = action;
        let ev = to_audit_event(&row(rec.clone()), BASE);
        assert_valid_r4(&ev);
        rec.patient = None;
        rec.agent = Agent::default();
        rec.detail = Some("d".into());
        let ev = to_audit_event(&row(rec), BASE);
        assert_valid_r4(&ev);
        assert!(ev["agent"][0].get("who").is_none());
    }
}

#[test]
fn balp_output_is_valid_fhir_for_awkward_input() {
    let rec = AuditRecord {
        recorded_at: 0,
        action: AuditAction::BreakGlassStart,
        outcome: AuditOutcome::Denied(String::new()),
        agent: Agent {
            user: Some(String::new()),
            role: Some("  ".into()),
            org: Some("A81001".into()),
            client: Some("\u{1}".into()),
            display: "bell\u{7}".into(),
        },
        patient: Some(String::new()),
        resources: vec![String::new(), "Observation/x".into()],
        purpose: break_glass_purpose(""),
        channel: Channel::Ui,
        detail: Some("line1\nline2\u{0}".into()),
    };
    let ev = to_audit_event(&row(rec), BASE);
    assert_valid_r4(&ev);
    assert_eq!(ev["outcomeDesc"], "Denied");
    assert_eq!(ev["agent"][0]["who"]["display"], "bell\u{fffd}");
    assert_eq!(ev["entity"][0]["what"]["reference"], "Observation/x");
}

#[test]
fn base64_vectors() {
    use crate::balp::base64_for_tests as b64;
    assert_eq!(b64(b""), "");
    assert_eq!(b64(b"f"), "Zg==");
    assert_eq!(b64(b"fo"), "Zm8=");
    assert_eq!(b64(b"foo"), "Zm9v");
    assert_eq!(b64(b"foob"), "Zm9vYg==");
    assert_eq!(b64(b"fooba"), "Zm9vYmE=");
    assert_eq!(b64(b"foobar"), "Zm9vYmFy");
    assert_eq!(b64(&[0xff, 0xfe]), "//4=");
}

#[test]
fn rfc3339_formatting() {
    assert_eq!(rfc3339_micros(0).unwrap(), "1970-01-01T00:00:00.000000Z");
    assert_eq!(rfc3339_micros(-1).unwrap(), "1969-12-31T23:59:59.999999Z");
    assert_eq!(rfc3339_micros(i64::MAX), None);
}
