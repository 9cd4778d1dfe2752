use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn draft(i: u64, severity: Severity) -> AlertDraft {
    AlertDraft {
        severity,
        ..AlertDraft::for_test(i)
    }
}

fn open(dir: &Path) -> Outbox {
    open_full(dir).0
}

fn open_full(dir: &Path) -> (Outbox, Option<OpenEvent>) {
    // sled's background threads can hold the file lock a moment after the
    // previous handle in this process was dropped.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Outbox::open(dir) {
            Ok(r) => return r,
            Err(OutboxError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("open: {e}"),
        }
    }
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
    assert_eq!(r.severity, Severity::Critical);
    assert_eq!(o.bytes(), r.payload.len() as u64);
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
fn a_flush_covers_what_was_pushed_before_it_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path());
        assert_eq!(o.flushed_through(), 0);
        o.push(
            "gw",
            &[draft(1, Severity::Info), draft(2, Severity::Info)],
            None,
        )
        .unwrap();
        assert_eq!(o.flushed_through(), 0, "pushed is not flushed");
        assert_eq!(o.flush_blocking().unwrap(), 2);
        o.push("gw", &[draft(3, Severity::Info)], None).unwrap();
        assert_eq!(o.flushed_through(), 2);
        o.flush_blocking().unwrap();
        assert_eq!(o.flushed_through(), 3);
    }
    // What a reopened database holds survived: it counts as flushed.
    assert_eq!(open(dir.path()).flushed_through(), 3);
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
    let (o, event) = open_full(dir.path());
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

fn sev(i: u8) -> Severity {
    [Severity::Info, Severity::Warning, Severity::Critical][usize::from(i % 3)]
}

fn dropped_ranges(o: &Outbox) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for (_, e) in o.events().unwrap() {
        if let OutboxEvent::Dropped { seqs, .. } = e {
            assert!(seqs.exact, "few drops in these tests: ranges stay exact");
            for r in seqs.ranges {
                out.extend(r[0]..=r[1]);
            }
        }
    }
    out
}

#[test]
fn the_byte_bound_drops_info_then_warning_then_critical_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path());
    let sevs = [
        Severity::Critical,
        Severity::Info,
        Severity::Warning,
        Severity::Info,
        Severity::Critical,
        Severity::Warning,
    ];
    let drafts: Vec<_> = sevs
        .iter()
        .enumerate()
        .map(|(i, s)| draft(i as u64, *s))
        .collect();
    o.push("gw", &drafts, None).unwrap();
    let per = o.bytes() / 6;
    // Room for about three alerts.
    o.set_bounds(Bounds {
        max_bytes: per * 3 + per / 2,
        max_age: None,
        ..Bounds::DEFAULT
    });
    o.push("gw", &[draft(7, Severity::Critical)], None).unwrap();
    // 7 alerts, room for 3: both infos (2, 4), both warnings (3, 6) go.
    assert_eq!(seqs(&o), vec![1, 5, 7]);
    assert!(o.bytes() <= per * 3 + per / 2);
    assert_eq!(
        o.dropped(),
        BySeverity {
            info: 2,
            warning: 2,
            critical: 0
        }
    );
    assert_eq!(dropped_ranges(&o), BTreeSet::from([2, 3, 4, 6]));
    // A new info alert goes at once when only critical ones are older.
    o.push("gw", &[draft(8, Severity::Info)], None).unwrap();
    assert_eq!(seqs(&o), vec![1, 5, 7]);
    assert_eq!(o.dropped().info, 3);
    assert_eq!(o.next_seq(), 9, "a dropped alert still used its seq");
}

#[test]
fn drop_counts_and_pending_events_survive_reopen_and_leave_on_ack() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path());
        o.set_bounds(Bounds {
            max_bytes: 1,
            max_age: None,
            ..Bounds::DEFAULT
        });
        o.push(
            "gw",
            &[draft(1, Severity::Warning), draft(2, Severity::Info)],
            None,
        )
        .unwrap();
        assert_eq!(o.depth(), 0);
        o.flush_blocking().unwrap();
    }
    let o = open(dir.path());
    assert_eq!(o.dropped().total(), 2);
    assert_eq!(o.events_pending(), 1);
    let ev = o.events_to_publish().unwrap();
    assert_eq!(ev.len(), 1);
    let (n, e) = &ev[0];
    let OutboxEvent::Dropped {
        count, by_reason, ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!((*count, by_reason.max_bytes), (2, 2));
    // A drop after the event was taken for publishing starts a new event:
    // what the broker acknowledges is exactly what was sent.
    o.set_bounds(Bounds {
        max_bytes: 1,
        max_age: None,
        ..Bounds::DEFAULT
    });
    o.push("gw", &[draft(3, Severity::Critical)], None).unwrap();
    assert_eq!(o.events_pending(), 2);
    assert!(o.ack_event(*n).unwrap());
    assert!(!o.ack_event(*n).unwrap());
    let left = o.events().unwrap();
    assert_eq!(left.len(), 1);
    assert!(matches!(&left[0].1, OutboxEvent::Dropped { count: 1, .. }));
}

#[test]
fn expire_drops_alerts_older_than_max_age_but_not_those_stamped_by_an_unset_clock() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path());
    let t0 = 1_800_000_000_000;
    o.push_at("gw", &[draft(1, Severity::Critical)], None, 5_000)
        .unwrap(); // 1970: clock unset
    o.push_at("gw", &[draft(2, Severity::Critical)], None, t0)
        .unwrap();
    o.push_at("gw", &[draft(3, Severity::Info)], None, t0 + 10_000)
        .unwrap();
    o.set_bounds(Bounds {
        max_bytes: u64::MAX,
        max_age: Some(Duration::from_secs(60)),
        ..Bounds::DEFAULT
    });
    assert_eq!(o.expire(t0 + 30_000).unwrap(), 0);
    assert_eq!(o.expire(t0 + 65_000).unwrap(), 1);
    assert_eq!(seqs(&o), vec![1, 3]);
    assert_eq!(o.dropped().critical, 1);
    let ev = o.events().unwrap();
    assert!(
        matches!(&ev[0].1, OutboxEvent::Dropped { by_reason, .. } if by_reason.max_age == 1),
        "{ev:?}"
    );
}

#[test]
fn purge_removes_every_alert_and_reports_it_as_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path());
    let drafts: Vec<_> = (0..3).map(|i| draft(i, Severity::Warning)).collect();
    o.push("gw", &drafts, None).unwrap();
    assert_eq!(o.purge().unwrap(), 3);
    assert_eq!((o.depth(), o.bytes()), (0, 0));
    assert_eq!(o.after(None, 10).unwrap(), vec![]);
    let ev = o.events().unwrap();
    assert!(
        matches!(&ev[0].1, OutboxEvent::Purged { count: 3, seqs, .. } if seqs.ranges == vec![[1, 3]]),
        "{ev:?}"
    );
    assert_eq!(
        o.push("gw", &[draft(9, Severity::Info)], None).unwrap()[0].seq,
        4
    );
}

#[test]
fn a_replaced_database_leaves_a_database_replaced_event() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path());
        o.push("gw", &[draft(1, Severity::Info)], None).unwrap();
        o.flush_blocking().unwrap();
    }
    for entry in walk(&dir.path().join("outbox")) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0x5Au8; len.max(64)]).unwrap();
    }
    let (o, event) = open_full(dir.path());
    assert!(event.is_some());
    let ev = o.events().unwrap();
    assert!(
        matches!(&ev[0].1, OutboxEvent::DatabaseReplaced { moved_to, .. } if moved_to.contains("outbox.corrupt-")),
        "{ev:?}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    /// Push alerts of these severities (index mod 3).
    Push(Vec<u8>),
    /// Acknowledge the n-th waiting alert (modulo how many wait).
    Ack(usize),
    /// Acknowledge a seq that was already acknowledged or never existed.
    AckStale(u64),
    Flush,
    Reopen,
    /// Read up to n alerts after the n-th waiting one.
    Peek(usize, usize),
    /// Set `max_bytes` to this many average alerts (0: unbounded).
    Bound(u8),
    /// Drop what is older than `max_age`.
    Expire,
    /// Publish and acknowledge every pending event.
    AckEvents,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0u8..3, 1..5).prop_map(Op::Push),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => (0u64..64).prop_map(Op::AckStale),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        2 => (any::<usize>(), 1usize..8).prop_map(|(a, b)| Op::Peek(a, b)),
        1 => (0u8..12).prop_map(Op::Bound),
        1 => Just(Op::Expire),
        1 => Just(Op::AckEvents),
    ]
}

/// The model's alert.
#[derive(Debug, Clone)]
struct M {
    id: String,
    severity: Severity,
    len: u64,
    created: i64,
}

/// Seconds of model time per operation, and the age bound in those units.
const STEP_MS: i64 = 1_000;
const MAX_AGE_MS: i64 = 20_000;
const T0: i64 = 1_800_000_000_000;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Model check against an obviously-correct in-memory outbox: FIFO order,
    /// nothing acknowledged comes back, nothing unacknowledged is lost across
    /// reopen, seqs are never reused, and the bounds drop exactly what the
    /// rule says (lowest severity, then oldest; older than max_age), never
    /// exceed max_bytes, and every drop is counted and in an event.
    #[test]
    fn the_outbox_behaves_like_an_ordered_map_that_survives_reopen(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Some(open(dir.path()));
        let mut model: BTreeMap<u64, M> = BTreeMap::new();
        let mut acked: BTreeSet<u64> = BTreeSet::new();
        let mut dropped: BTreeSet<u64> = BTreeSet::new();
        let mut reported: BTreeSet<u64> = BTreeSet::new();
        let mut dropped_by = BySeverity::default();
        let mut next = 1u64;
        let mut bounds = Bounds { max_bytes: u64::MAX, max_age: Some(Duration::from_millis(MAX_AGE_MS as u64)), ..Bounds::DEFAULT };
        o.as_ref().unwrap().set_bounds(bounds);
        let mut now = T0;
        // A lowered max_bytes holds from the next push on.
        let mut bound_lowered = false;
        for op in ops {
            now += STEP_MS;
            let ob = o.as_ref().unwrap();
            match op {
                Op::Push(sevs) => {
                    let drafts: Vec<_> = sevs.iter().enumerate().map(|(i, s)| draft(next + i as u64, sev(*s))).collect();
                    let alerts = ob.push_at("gw", &drafts, None, now).unwrap();
                    for a in alerts {
                        prop_assert_eq!(a.seq, next);
                        let len = serde_json::to_vec(&a).unwrap().len() as u64;
                        model.insert(a.seq, M { id: a.id.clone(), severity: a.severity, len, created: now });
                        next += 1;
                    }
                    bound_lowered = false;
                    // The model's eviction: lowest severity, then lowest seq.
                    let mut total: u64 = model.values().map(|m| m.len).sum();
                    while total > bounds.max_bytes {
                        let (&seq, _) = model.iter().min_by_key(|(s, m)| (m.severity, **s)).unwrap();
                        let m = model.remove(&seq).unwrap();
                        total -= m.len;
                        dropped.insert(seq);
                        dropped_by.add(m.severity, 1);
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
                    drop(o.take()); // closes sled, which flushes
                    o = Some(open(dir.path()));
                    o.as_ref().unwrap().set_bounds(bounds);
                }
                Op::Peek(i, n) => {
                    let after = if model.is_empty() { None } else { model.keys().nth(i % model.len()).copied() };
                    let got: Vec<u64> = ob.after(after, n).unwrap().iter().map(|r| r.seq).collect();
                    let want: Vec<u64> = model.keys().copied().filter(|s| after.is_none_or(|a| *s > a)).take(n).collect();
                    prop_assert_eq!(got, want);
                }
                Op::Bound(k) => {
                    // Takes effect at the next push, as in the gateway.
                    bound_lowered = true;
                    bounds.max_bytes = if k == 0 { u64::MAX } else { u64::from(k) * 330 };
                    ob.set_bounds(bounds);
                }
                Op::Expire => {
                    ob.expire(now).unwrap();
                    let old: Vec<u64> = model.iter().filter(|(_, m)| m.created < now - MAX_AGE_MS).map(|(s, _)| *s).collect();
                    for s in old {
                        let m = model.remove(&s).unwrap();
                        dropped.insert(s);
                        dropped_by.add(m.severity, 1);
                    }
                }
                Op::AckEvents => {
                    let ev = ob.events_to_publish().unwrap();
                    for (n, e) in ev {
                        if let OutboxEvent::Dropped { seqs, .. } = e {
                            for r in seqs.ranges { reported.extend(r[0]..=r[1]); }
                        }
                        prop_assert!(ob.ack_event(n).unwrap());
                    }
                    prop_assert_eq!(ob.events_pending(), 0);
                }
            }
            let ob = o.as_ref().unwrap();
            let stored: Vec<(u64, String, Severity)> = ob.after(None, usize::MAX).unwrap().iter()
                .map(|r| (r.seq, r.alert().unwrap().id, r.severity)).collect();
            let want: Vec<(u64, String, Severity)> = model.iter().map(|(k, m)| (*k, m.id.clone(), m.severity)).collect();
            prop_assert_eq!(stored, want);
            prop_assert_eq!(ob.depth(), model.len() as u64);
            let bytes: u64 = model.values().map(|m| m.len).sum();
            prop_assert_eq!(ob.bytes(), bytes);
            if !bound_lowered {
                prop_assert!(ob.bytes() <= bounds.max_bytes, "{} > {}", ob.bytes(), bounds.max_bytes);
            }
            prop_assert_eq!(ob.next_seq(), next);
            prop_assert_eq!(ob.dropped(), dropped_by);
            // Every drop is in exactly one place: an acknowledged event or a pending one.
            let mut all = reported.clone();
            all.extend(dropped_ranges(ob));
            prop_assert_eq!(&all, &dropped);
            for s in &acked {
                prop_assert!(ob.after(Some(s.saturating_sub(1)), 1).unwrap().first().is_none_or(|r| r.seq != *s));
            }
        }
    }
}

/// The severity stored in a payload.
pub fn severity_of(payload: &[u8]) -> Option<Severity> {
    #[derive(serde::Deserialize)]
    struct S {
        severity: Severity,
    }
    serde_json::from_slice::<S>(payload)
        .ok()
        .map(|s| s.severity)
}
