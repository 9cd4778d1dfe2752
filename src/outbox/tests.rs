use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::rules::{AlertState, Reason};

fn draft(i: u64, severity: Severity) -> AlertDraft {
    AlertDraft {
        rule: "hot".into(),
        sensor: format!("s{i}"),
        metric: "t".into(),
        state: AlertState::Firing,
        severity,
        value: i as f64,
        threshold: 1.0,
        ts_ms: 1_700_000_000_000 + i as i64,
        since_ms: 1_700_000_000_000,
        message: format!("alert {i}"),
        labels: Default::default(),
        actions: Vec::new(),
        reason: Reason::Transition,
    }
}

fn open(dir: &Path) -> Outbox {
    // sled's background flusher thread holds the file lock for a moment after
    // the last handle is dropped; a new process never sees this, a test that
    // reopens in-process can.
    for _ in 0..200 {
        match Outbox::open(dir) {
            Err(OutboxError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other.expect("open").0,
        }
    }
    panic!("outbox still locked after 2 s")
}

fn seqs(o: &Outbox) -> Vec<u64> {
    o.after(None, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

#[test]
fn alerts_get_consecutive_seqs_from_one_and_ids_that_embed_the_db_id() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path());
    let a = o
        .push(
            "gw",
            &[draft(1, Severity::Info), draft(2, Severity::Info)],
            None,
        )
        .unwrap();
    assert_eq!(a.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(a[0].id, format!("gw-{}-1", o.db_id()));
    assert_eq!(o.db_id().len(), 6);
    assert_eq!(o.depth(), 2);
}

#[test]
fn the_stored_bytes_are_the_published_payload() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path());
    let a = o.push("gw", &[draft(1, Severity::Critical)], None).unwrap();
    let r = &o.after(None, 1).unwrap()[0];
    assert_eq!(r.alert().unwrap(), a[0]);
    assert_eq!(severity_of(&r.payload), Some(Severity::Critical));
}

#[test]
fn ack_removes_exactly_that_alert_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path());
    o.push(
        "gw",
        &[
            draft(1, Severity::Info),
            draft(2, Severity::Info),
            draft(3, Severity::Info),
        ],
        None,
    )
    .unwrap();
    assert!(o.ack(2).unwrap());
    assert!(!o.ack(2).unwrap());
    assert_eq!(seqs(&o), vec![1, 3]);
    assert_eq!(o.depth(), 2);
    assert_eq!(o.after(Some(1), 10).unwrap()[0].seq, 3);
}

#[test]
fn seq_and_db_id_continue_after_reopen_even_when_everything_was_acked() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let o = open(dir.path());
        o.push(
            "gw",
            &[draft(1, Severity::Info), draft(2, Severity::Info)],
            None,
        )
        .unwrap();
        o.ack(1).unwrap();
        o.ack(2).unwrap();
        o.flush_blocking().unwrap();
        o.db_id().to_string()
    };
    let o = open(dir.path());
    assert_eq!(o.db_id(), id);
    assert_eq!(o.depth(), 0);
    let a = o.push("gw", &[draft(3, Severity::Info)], None).unwrap();
    assert_eq!(a[0].seq, 3);
}

#[test]
fn the_rules_state_is_stored_with_the_alerts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path());
        o.push("gw", &[draft(1, Severity::Info)], Some(b"state-1"))
            .unwrap();
        o.flush_blocking().unwrap();
    }
    let o = open(dir.path());
    assert_eq!(o.rules_state().unwrap().as_deref(), Some(&b"state-1"[..]));
    assert_eq!(o.depth(), 1);
}

#[test]
fn a_second_gateway_on_the_same_state_dir_is_refused_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = Outbox::open(dir.path())
        .err()
        .expect("second open must fail");
    assert!(matches!(err, OutboxError::Locked { .. }), "{err}");
}

#[test]
fn a_corrupt_database_is_moved_aside_and_a_fresh_one_started() {
    let dir = tempfile::tempdir().unwrap();
    let old_id = {
        let o = open(dir.path());
        o.push("gw", &[draft(1, Severity::Info)], None).unwrap();
        o.flush_blocking().unwrap();
        o.db_id().to_string()
    };
    // Garble every file sled wrote, as a bad power cut on an SD card might.
    for entry in walk(&dir.path().join("outbox")) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0xA5u8; len.max(64)]).unwrap();
    }
    let (o, event) = Outbox::open(dir.path()).expect("a corrupt outbox must not stop the gateway");
    match event {
        Some(OpenEvent::Replaced { moved_to, .. }) => assert!(moved_to.exists()),
        None => panic!("corruption was not detected"),
    }
    assert_eq!(o.depth(), 0);
    assert_ne!(o.db_id(), old_id, "a fresh database gets a fresh id");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    Push(u8),
    /// Acknowledge the n-th waiting alert (modulo how many wait).
    Ack(usize),
    /// Acknowledge a seq that was already acknowledged or never existed.
    AckStale(u64),
    Flush,
    Reopen,
    /// Read up to n alerts after the n-th waiting one.
    Peek(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..5).prop_map(Op::Push),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => (0u64..64).prop_map(Op::AckStale),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        2 => (any::<usize>(), 1usize..8).prop_map(|(a, b)| Op::Peek(a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Model check against an obviously-correct in-memory outbox: FIFO order,
    /// nothing acknowledged comes back, nothing unacknowledged is lost across
    /// reopen, seqs are never reused.
    #[test]
    fn the_outbox_behaves_like_an_ordered_map_that_survives_reopen(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Some(open(dir.path()));
        let mut model: BTreeMap<u64, String> = BTreeMap::new();
        let mut acked: BTreeSet<u64> = BTreeSet::new();
        let mut next = 1u64;
        for op in ops {
            let ob = o.as_ref().unwrap();
            match op {
                Op::Push(n) => {
                    let drafts: Vec<_> = (0..n).map(|i| draft(next + u64::from(i), Severity::Warning)).collect();
                    let alerts = ob.push("gw", &drafts, None).unwrap();
                    for a in alerts {
                        prop_assert_eq!(a.seq, next);
                        model.insert(a.seq, a.id.clone());
                        next += 1;
                    }
                }
                Op::Ack(i) => {
                    if !model.is_empty() {
                        let seq = *model.keys().nth(i % model.len()).unwrap();
                        prop_assert!(ob.ack(seq).unwrap());
                        model.remove(&seq);
                        acked.insert(seq);
                    }
                }
                Op::AckStale(seq) => {
                    if !model.contains_key(&seq) {
                        prop_assert!(!ob.ack(seq).unwrap());
                    }
                }
                Op::Flush => { ob.flush_blocking().unwrap(); }
                Op::Reopen => {
                    drop(o.take()); // closing sled flushes
                    o = Some(open(dir.path()));
                }
                Op::Peek(i, n) => {
                    let after = if model.is_empty() { None } else { model.keys().nth(i % model.len()).copied() };
                    let got: Vec<u64> = ob.after(after, n).unwrap().iter().map(|r| r.seq).collect();
                    let want: Vec<u64> = model.keys().copied().filter(|s| after.is_none_or(|a| *s > a)).take(n).collect();
                    prop_assert_eq!(got, want);
                }
            }
            let ob = o.as_ref().unwrap();
            let stored: Vec<(u64, String)> = ob.after(None, usize::MAX).unwrap().iter()
                .map(|r| (r.seq, r.alert().unwrap().id)).collect();
            let want: Vec<(u64, String)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
            prop_assert_eq!(stored, want);
            prop_assert_eq!(ob.depth(), model.len() as u64);
            prop_assert_eq!(ob.next_seq(), next);
            for s in &acked {
                prop_assert!(ob.after(Some(s.saturating_sub(1)), 1).unwrap().first().is_none_or(|r| r.seq != *s));
            }
        }
    }
}
