//! The outbox against its contract: a proptest model check (push, ack,
//! flush, crash, clean stop, bounds, expiry, checkpoints), and the faults
//! it must survive made for real on its files (cut, flipped, rolled back).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::rules::{AlertState, Reason};

pub fn draft(i: u64, severity: Severity) -> AlertDraft {
    AlertDraft {
        rule: "hot".into(),
        sensor: format!("greenhouse/t{i}"),
        metric: "temperature".into(),
        state: AlertState::Firing,
        severity,
        value: 30.0 + i as f64,
        threshold: 30.0,
        ts_ms: 1_700_000_000_000,
        since_ms: 1_700_000_000_000,
        message: format!("alert {i}"),
        labels: Default::default(),
        actions: Vec::new(),
        reason: Reason::Transition,
    }
}

const WALL0: i64 = 1_750_000_000_000;

#[path = "../../tests/it/harness/tinyfs.rs"]
mod tinyfs;
pub use tinyfs::TinyFs;

fn at(mono_ms: u64) -> Now {
    Now {
        mono_ms,
        wall_ms: WALL0 + mono_ms as i64,
    }
}

fn open_at(dir: &Path, now: Now) -> (Outbox, Vec<OpenEvent>) {
    open_opts(dir, Options::default(), now)
}

fn open_opts(dir: &Path, opts: Options, now: Now) -> (Outbox, Vec<OpenEvent>) {
    // sled releases its file lock shortly after the last handle drops.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Outbox::open_with(dir, opts, now) {
            Err(OutboxError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            r => return r.unwrap(),
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

fn push(o: &Outbox, n: u64, sev: Severity, now: Now) -> Vec<Alert> {
    let drafts: Vec<_> = (0..n).map(|i| draft(i, sev)).collect();
    o.push("gw", &drafts, &[], now).unwrap()
}

#[test]
fn alerts_come_back_in_order_with_the_exact_payload_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (o, ev) = open_at(dir.path(), at(0));
    assert!(ev.is_empty(), "{ev:?}");
    let alerts = push(&o, 5, Severity::Warning, at(10));
    o.flush_blocking().unwrap();
    let before = o.after(None, 100).unwrap();
    assert_eq!(before.len(), 5);
    for (r, a) in before.iter().zip(&alerts) {
        assert_eq!(r.payload, serde_json::to_vec(a).unwrap());
        assert_eq!(
            (r.rule.as_str(), r.sensor.as_str()),
            ("hot", a.sensor.as_str())
        );
    }
    let id = o.db_id().to_string();
    drop(o); // no close: as kill -9 leaves it
    let (o, ev) = open_at(dir.path(), at(20));
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(
        o.db_id(),
        id,
        "a crash with flush = always keeps the prefix"
    );
    assert_eq!(o.after(None, 100).unwrap(), before);
    assert_eq!(o.next_seq(), 6);
    assert_eq!(push(&o, 1, Severity::Info, at(30))[0].seq, 6);
}

/// `waiting()` is one moment: while alerts are pushed and acknowledged on
/// another thread, it never shows an empty outbox beside a waiting alert,
/// or the reverse (`/status` once showed depth 0 with an oldest alert).
#[test]
fn the_oldest_alert_and_the_counts_are_read_at_one_moment() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    let o = std::sync::Arc::new(o);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (o, stop) = (o.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a = push(&o, 1, Severity::Warning, at(10 + rounds));
                o.ack(a[0].seq).unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    let mut seen = [0u32; 2];
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        let w = o.waiting();
        assert_eq!(
            w.oldest.is_some(),
            w.counts.depth > 0,
            "depth {} beside oldest {:?}",
            w.counts.depth,
            w.oldest.as_ref().map(|r| r.seq)
        );
        if let Some(r) = &w.oldest {
            assert!(r.seq < w.counts.next_seq);
        }
        seen[usize::from(w.oldest.is_some())] += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    assert!(rounds > 10, "the writer ran {rounds} rounds");
    // Both sides of the race were looked at (an empty and a full outbox).
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
}

#[test]
fn an_acknowledged_alert_stays_gone_after_a_clean_stop_and_the_crash_window_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    push(&o, 200, Severity::Info, at(1));
    o.flush_blocking().unwrap();
    // Acknowledged one by one, as PUBACKs arrive.
    for s in 1..=100 {
        assert!(o.ack(s).unwrap());
    }
    assert!(!o.ack(5).unwrap(), "acknowledged twice");
    drop(o);
    let (o, _) = open_at(dir.path(), at(2));
    let back = seqs(&o);
    let resent = 100 - back.iter().filter(|s| **s <= 100).count() as u64;
    let again = 100 - resent;
    assert!(
        again <= ACK_RECORD_EVERY as u64,
        "{again} acknowledged alerts came back after a crash"
    );
    for s in 1..=100 {
        let _ = o.ack(s);
    }
    o.close(Vec::new(), at(3)).unwrap();
    drop(o);
    let (o, _) = open_at(dir.path(), at(4));
    assert_eq!(seqs(&o), (101..=200).collect::<Vec<_>>());
}

/// A draft whose payload has the same length whatever its severity and
/// (up to 99) seq: the message makes up the difference (a seq digit shows in
/// `id`, `seq` and the sensor id).
fn even(seq: u64, sev: Severity) -> AlertDraft {
    let mut d = draft(seq, sev);
    let pad = 8 - sev.to_string().len() + 3 * (2 - seq.to_string().len());
    d.message = format!("alert{}", " ".repeat(pad));
    d
}

fn push_even(o: &Outbox, first: u64, sevs: &[Severity], now: Now) {
    let drafts: Vec<_> = sevs
        .iter()
        .enumerate()
        .map(|(i, s)| even(first + i as u64, *s))
        .collect();
    let a = o.push("gw", &drafts, &[], now).unwrap();
    assert_eq!(a[0].seq, first);
}

#[test]
fn the_byte_bound_drops_info_then_warning_then_critical_and_reports_them() {
    use Severity::*;
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    push_even(&o, 1, &[Info], at(1));
    let size = o.bytes();
    o.set_bounds(Bounds {
        max_bytes: size * 6,
        max_age: None,
        ..Bounds::DEFAULT
    });
    push_even(&o, 2, &[Critical, Critical], at(2));
    push_even(&o, 4, &[Warning, Warning], at(3));
    push_even(&o, 6, &[Info, Info, Info], at(4)); // over by two
    assert_eq!(o.bytes(), size * 6);
    assert_eq!(seqs(&o), vec![2, 3, 4, 5, 7, 8]);
    push_even(&o, 9, &[Critical, Critical, Critical], at(5));
    assert_eq!(seqs(&o), vec![2, 3, 5, 9, 10, 11]);
    let d = o.dropped();
    assert_eq!((d.info, d.warning, d.critical), (4, 1, 0));
    let ev = o.events().unwrap();
    assert_eq!(ev.len(), 1, "drops merge into one event: {ev:?}");
    let OutboxEvent::Dropped { count, seqs: r, .. } = &ev[0].1 else {
        panic!("{ev:?}")
    };
    assert_eq!(*count, 5);
    assert_eq!(r.ranges, vec![[1, 1], [4, 4], [6, 8]]);
    // Kept across a crash: the drop record holds alerts, counts and event.
    drop(o);
    let (o, _) = open_at(dir.path(), at(6));
    assert_eq!(seqs(&o), vec![2, 3, 5, 9, 10, 11]);
    assert_eq!(o.dropped(), d);
    assert_eq!(o.events().unwrap(), ev);
}

#[test]
fn age_is_time_waited_not_a_difference_of_wall_clocks() {
    let dir = tempfile::tempdir().unwrap();
    let ten_days = 10 * 24 * 3_600_000;
    // Booted with a clock ten days behind, then NTP jumps it forward.
    let stale = |mono: u64| Now {
        mono_ms: mono,
        wall_ms: WALL0 - ten_days + mono as i64,
    };
    let synced = |mono: u64| Now {
        mono_ms: mono,
        wall_ms: WALL0 + mono as i64,
    };
    let (o, _) = open_at(dir.path(), stale(0));
    o.set_bounds(Bounds {
        max_bytes: u64::MAX,
        max_age: Some(Duration::from_secs(60)),
        ..Bounds::DEFAULT
    });
    push(&o, 3, Severity::Info, stale(1_000));
    assert_eq!(
        o.expire(synced(21_000)).unwrap(),
        0,
        "20 s waited, not 10 days"
    );
    assert_eq!(o.expire(synced(60_999)).unwrap(), 0);
    assert_eq!(o.expire(synced(61_001)).unwrap(), 3);
    // A clock ahead that steps back does not stop expiry either.
    push(&o, 1, Severity::Info, synced(70_000));
    assert_eq!(o.expire(stale(100_000)).unwrap(), 0);
    assert_eq!(o.expire(stale(130_001)).unwrap(), 1);
    let ev = o.events().unwrap();
    let OutboxEvent::Dropped { by_reason, .. } = &ev[0].1 else {
        panic!("{ev:?}")
    };
    assert_eq!(by_reason.max_age, 4);
}

#[test]
fn downtime_counts_toward_age_only_when_both_wall_clocks_are_plausible() {
    let hour = 3_600_000u64;
    for (reopen_wall, counted) in [
        (WALL0 + 2 * hour as i64, true),  // off for two hours, clock right
        (WALL0 - 5 * hour as i64, false), // booted with a stale clock
        (1_000, false),                   // no clock at all (1970)
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (o, _) = open_at(dir.path(), at(0));
        push(&o, 1, Severity::Info, at(0));
        o.close(Vec::new(), at(0)).unwrap();
        drop(o);
        let (o, _) = open_at(
            dir.path(),
            Now {
                mono_ms: 0,
                wall_ms: reopen_wall,
            },
        );
        o.set_bounds(Bounds {
            max_bytes: u64::MAX,
            max_age: Some(Duration::from_millis(hour)),
            ..Bounds::DEFAULT
        });
        let dropped = o
            .expire(Now {
                mono_ms: 1,
                wall_ms: reopen_wall + 1,
            })
            .unwrap();
        assert_eq!(dropped == 1, counted, "reopened at wall {reopen_wall}");
    }
}

/// The segment files, oldest first.
fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("outbox/log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn lost_after(o: &Outbox) -> Option<u64> {
    o.events().unwrap().into_iter().find_map(|(_, e)| match e {
        OutboxEvent::Lost { after_seq, .. } => after_seq,
        _ => None,
    })
}

/// count, ranges, exact, new prefix
type Lost = (u64, Vec<[u64; 2]>, bool, Option<String>);

fn lost_event(o: &Outbox) -> Option<Lost> {
    o.events().unwrap().into_iter().find_map(|(_, e)| match e {
        OutboxEvent::Lost {
            count,
            seqs,
            new_prefix,
            ..
        } => Some((count, seqs.ranges, seqs.exact, new_prefix)),
        _ => None,
    })
}

#[test]
fn a_cut_end_of_log_reports_what_was_lost_and_changes_the_id_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    for i in 0..10 {
        push(&o, 3, Severity::Warning, at(i));
        o.flush_blocking().unwrap();
    }
    let old_id = o.db_id().to_string();
    drop(o);
    let seg = segments(dir.path()).pop().unwrap();
    // The last ~2 records' worth cut off, mid-record (the file's tail
    // beyond its data is space set aside: zeros).
    let data = std::fs::read(&seg).unwrap();
    let end = data.iter().rposition(|b| *b != 0).unwrap() + 1;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(end as u64 - 700).unwrap();
    drop(f);
    let (o, ev) = open_at(dir.path(), at(100));
    assert!(
        ev.iter().any(|e| matches!(e, OpenEvent::Damaged { .. })),
        "{ev:?}"
    );
    let kept = seqs(&o);
    let last_kept = *kept.last().unwrap();
    assert!(last_kept < 30 && kept == (1..=last_kept).collect::<Vec<_>>());
    let (count, ranges, exact, new_prefix) = lost_event(&o).expect("a lost event");
    // The log alone cannot say how many came after the cut: reported as
    // "everything after seq N may be lost", and ids change prefix.
    assert!(!exact);
    assert!(count <= 30 - last_kept, "{count}");
    assert!(ranges.iter().all(|r| r[0] > last_kept), "{ranges:?}");
    assert_eq!(lost_after(&o), Some(last_kept));
    let new_prefix = new_prefix.expect("a damaged end changes the prefix");
    assert_ne!(new_prefix, old_id);
    assert_eq!(o.db_id(), new_prefix);
    // Seqs go on from what the log knows, under the new prefix.
    assert_eq!(push(&o, 1, Severity::Info, at(101))[0].seq, last_kept + 1);
    // Reported once.
    drop(o);
    let (o, ev) = open_at(dir.path(), at(200));
    assert!(
        !ev.iter().any(|e| matches!(e, OpenEvent::Damaged { .. })),
        "{ev:?}"
    );
    assert_eq!(o.db_id(), new_prefix);
}

#[test]
fn flipped_bits_cost_the_alerts_they_hit_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    for i in 0..10 {
        push(&o, 3, Severity::Warning, at(i));
    }
    o.flush_blocking().unwrap();
    let id = o.db_id().to_string();
    // Where seq 13 is: the fifth commit (seqs 13-15).
    let victim = o.after(Some(12), 1).unwrap().remove(0);
    assert_eq!(victim.seq, 13);
    drop(o);
    let seg = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let needle = b"\"seq\":13,";
    let pos = data
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    data[pos + 3] ^= 0x20;
    std::fs::write(&seg, &data).unwrap();
    let (o, ev) = open_at(dir.path(), at(100));
    assert!(
        ev.iter().any(|e| matches!(
            e,
            OpenEvent::Damaged {
                count: 3,
                exact: true,
                ..
            }
        )),
        "{ev:?}"
    );
    let expect: Vec<u64> = (1..=30).filter(|s| !(13..=15).contains(s)).collect();
    assert_eq!(seqs(&o), expect);
    let (count, ranges, exact, new_prefix) = lost_event(&o).unwrap();
    assert_eq!((count, ranges, exact), (3, vec![[13, 15]], true));
    assert_eq!(new_prefix, None, "later alerts survived: no seq can repeat");
    assert_eq!(o.db_id(), id);
    assert!(
        std::fs::read_dir(dir.path().join("outbox/log"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".damaged-")),
        "the damaged segment is kept"
    );
}

#[test]
fn a_log_that_went_back_in_time_behind_its_checkpoint_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    push(&o, 5, Severity::Info, at(1));
    o.flush_blocking().unwrap();
    let old = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("outbox/log"), old.path());
    push(&o, 5, Severity::Info, at(2));
    o.checkpoint(Vec::new(), at(3)).unwrap();
    let id = o.db_id().to_string();
    drop(o);
    // The SD card hands back an older log than the checkpoint describes.
    std::fs::remove_dir_all(dir.path().join("outbox/log")).unwrap();
    copy_dir(old.path(), &dir.path().join("outbox/log"));
    let (o, ev) = open_at(dir.path(), at(10));
    assert!(
        ev.iter().any(|e| matches!(e, OpenEvent::NewPrefix { .. })),
        "{ev:?}"
    );
    assert_ne!(o.db_id(), id);
    let (count, ranges, _, _) = lost_event(&o).unwrap();
    assert_eq!((count, ranges), (5, vec![[6, 10]]));
    assert_eq!(push(&o, 1, Severity::Info, at(11))[0].seq, 11);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn with_a_flush_period_an_unclean_stop_changes_the_prefix_and_a_clean_one_does_not() {
    let period = Options {
        flush_always: false,
        ..Options::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_opts(dir.path(), period, at(0));
    push(&o, 2, Severity::Info, at(1));
    let id = o.db_id().to_string();
    o.close(Vec::new(), at(2)).unwrap();
    drop(o);
    let (o, ev) = open_opts(dir.path(), period, at(3));
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(o.db_id(), id);
    push(&o, 2, Severity::Info, at(4));
    drop(o); // kill -9
    let (o, ev) = open_opts(dir.path(), period, at(5));
    assert!(
        ev.iter().any(|e| matches!(e, OpenEvent::NewPrefix { .. })),
        "{ev:?}"
    );
    assert_ne!(o.db_id(), id);
    assert_eq!(seqs(&o), vec![1, 2, 3, 4]);
}

#[test]
fn a_whole_dead_segment_is_removed_after_a_checkpoint_and_the_disk_follows_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    o.set_bounds(Bounds {
        max_bytes: 1 << 20, // 64 KiB segments
        max_age: None,
        ..Bounds::DEFAULT
    });
    for i in 0..100 {
        push(&o, 20, Severity::Info, at(i));
    }
    o.flush_blocking().unwrap();
    let full = segments(dir.path()).len();
    assert!(full > 3, "{full} segments");
    let all = seqs(&o);
    o.ack_many(&all).unwrap();
    o.maintain(at(1_000)).unwrap();
    assert!(
        segments(dir.path()).len() <= 2,
        "{:?}",
        segments(dir.path())
    );
    drop(o);
    let (o, _) = open_at(dir.path(), at(2_000));
    assert_eq!(o.depth(), 0);
    assert_eq!(o.next_seq(), 2001);
}

#[test]
fn severity_drops_scattered_over_segments_are_compacted_away() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    let one = push(&o, 1, Severity::Critical, at(0));
    let size = serde_json::to_vec(&one[0]).unwrap().len() as u64;
    o.set_bounds(Bounds {
        max_bytes: size * 40, // 64 KiB segments, ~40 alerts kept
        max_age: None,
        ..Bounds::DEFAULT
    });
    // One critical among many infos, again and again: infos get dropped,
    // criticals keep every segment alive.
    for i in 0..1500 {
        let sev = if i % 50 == 0 {
            Severity::Critical
        } else {
            Severity::Info
        };
        o.push("gw", &[draft(i, sev)], &[], at(i)).unwrap();
    }
    let before = seqs(&o);
    for i in 0..5 {
        o.maintain(at(10_000 + i)).unwrap();
    }
    let disk: u64 = segments(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        disk <= o.bytes() * 2 + 3 * (64 << 10) + 64 * 1024,
        "disk {disk} for {} bytes waiting",
        o.bytes()
    );
    assert_eq!(seqs(&o), before, "compaction moves, never loses");
    drop(o);
    let (o, ev) = open_at(dir.path(), at(20_000));
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(seqs(&o), before);
}

#[test]
fn engine_state_rides_with_its_alerts_and_a_checkpoint_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    let kv = |k: &str, v: Option<&str>| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()));
    o.push(
        "gw",
        &[draft(1, Severity::Info)],
        &[kv("p/a", Some("firing"))],
        at(1),
    )
    .unwrap();
    o.checkpoint(
        vec![kv("p/b", Some("pending")), kv("p/c", Some("x"))],
        at(2),
    )
    .unwrap();
    o.push(
        "gw",
        &[draft(2, Severity::Info)],
        &[kv("p/a", Some("ok")), kv("p/c", None)],
        at(3),
    )
    .unwrap();
    drop(o);
    let (o, _) = open_at(dir.path(), at(4));
    let st = o.take_engine_state().unwrap();
    let got: BTreeMap<String, String> = st
        .entries
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.clone()).unwrap(),
                String::from_utf8(v.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        BTreeMap::from([
            ("p/a".to_string(), "ok".to_string()),
            ("p/b".to_string(), "pending".to_string()),
        ])
    );
    assert!(o.take_engine_state().is_none());
}

#[test]
fn an_earlier_format_outbox_is_imported_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("outbox");
    {
        let db = sled::open(&root).unwrap();
        let t = db.open_tree(b"outbox").unwrap();
        for seq in [4u64, 5, 7] {
            let a = Alert::new(&draft(seq, Severity::Critical), "gw", "abcdef", seq);
            let mut v = vec![1u8, 2];
            v.extend_from_slice(&(WALL0 - 1000).to_be_bytes());
            v.extend_from_slice(&serde_json::to_vec(&a).unwrap());
            let mut k = vec![b'a'];
            k.extend_from_slice(&seq.to_be_bytes());
            t.insert(k, v).unwrap();
        }
        t.insert(b"m/next_seq", &9u64.to_be_bytes()).unwrap();
        t.insert(b"m/db_id", b"abcdef").unwrap();
        t.insert(b"m/dropped/info", &3u64.to_be_bytes()).unwrap();
        t.insert(b"m/rules_state", b"{\"version\":1,\"rules\":[]}")
            .unwrap();
        db.flush().unwrap();
    }
    let (o, ev) = open_at(dir.path(), at(0));
    assert!(
        ev.iter()
            .any(|e| matches!(e, OpenEvent::Imported { alerts: 3, .. })),
        "{ev:?}"
    );
    assert_eq!(o.db_id(), "abcdef", "ids go on with the old prefix");
    let recs = o.after(None, 10).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![4, 5, 7]
    );
    assert_eq!(recs[0].alert().unwrap().id, "gw-abcdef-4");
    assert_eq!(recs[0].severity, Severity::Critical);
    assert_eq!(o.next_seq(), 9);
    assert_eq!(o.dropped().info, 3);
    assert!(o.take_engine_state().unwrap().legacy_snapshot.is_some());
    assert!(!dir.path().join("outbox.v1").exists());
    drop(o);
    let (o, ev) = open_at(dir.path(), at(1));
    assert!(ev.is_empty(), "imported once: {ev:?}");
    assert_eq!(seqs(&o), vec![4, 5, 7]);
}

#[test]
fn purge_removes_everything_and_reports_it_without_reusing_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    push(&o, 3, Severity::Info, at(1));
    assert_eq!(o.purge().unwrap(), 3);
    assert_eq!(o.depth(), 0);
    assert!(
        o.events()
            .unwrap()
            .iter()
            .any(|(_, e)| matches!(e, OutboxEvent::Purged { count: 3, .. }))
    );
    drop(o);
    let (o, _) = open_at(dir.path(), at(2));
    assert_eq!(o.depth(), 0);
    assert_eq!(push(&o, 1, Severity::Info, at(3))[0].seq, 4);
}

#[test]
fn an_oversized_alert_is_cut_when_stored_so_what_is_stored_is_what_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = open_at(dir.path(), at(0));
    o.set_bounds(Bounds {
        max_payload: 1024,
        ..Bounds::DEFAULT
    });
    let mut d = draft(1, Severity::Info);
    d.message = "x".repeat(5000);
    let a = o.push("gw", &[d], &[], at(1)).unwrap();
    let r = o.after(None, 1).unwrap().remove(0);
    assert!(r.payload.len() <= 1024);
    assert_eq!(r.payload, a[0].to_payload(1024));
}

// ---------------------------------------------------------------------------
// Model check
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Push alerts of these severities (index mod 3).
    Push(Vec<u8>),
    /// Acknowledge the n-th waiting alert (modulo how many wait).
    Ack(usize),
    /// Acknowledge a seq that is not waiting.
    AckStale(u64),
    Flush,
    /// kill -9 and open again.
    Crash,
    /// A clean stop and open again.
    Restart,
    Maintain,
    /// Let time pass (ms).
    Wait(u64),
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0u8..3, 1..6).prop_map(Op::Push),
        3 => (0usize..64).prop_map(Op::Ack),
        1 => (0u64..200).prop_map(Op::AckStale),
        1 => Just(Op::Flush),
        1 => Just(Op::Crash),
        1 => Just(Op::Restart),
        1 => Just(Op::Maintain),
        1 => (0u64..40_000).prop_map(Op::Wait),
        1 => Just(Op::Expire),
    ]
}

/// What the outbox must hold: seq -> (severity, payload bytes, created at).
#[derive(Debug, Default)]
struct Model {
    waiting: BTreeMap<u64, (Severity, u64, u64)>,
    /// Acknowledged, not yet on disk: a crash brings them back.
    unsaved_acks: BTreeMap<u64, (Severity, u64, u64)>,
    next_seq: u64,
    dropped: u64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn the_outbox_matches_a_model_through_crashes_restarts_and_bounds(ops in proptest::collection::vec(op(), 1..60), max_alerts in 3u64..20) {
        let dir = tempfile::tempdir().unwrap();
        let mut mono = 0u64;
        let (mut o, _) = open_at(dir.path(), at(mono));
        let probe = serde_json::to_vec(&Alert::new(&draft(0, Severity::Info), "gw", o.db_id(), 1)).unwrap().len() as u64;
        let bounds = Bounds { max_bytes: probe * max_alerts, max_age: Some(Duration::from_secs(60)), ..Bounds::DEFAULT };
        o.set_bounds(bounds);
        let mut m = Model { next_seq: 1, ..Model::default() };
        let sevs = [Severity::Info, Severity::Warning, Severity::Critical];
        for op in ops {
            match op {
                Op::Push(s) => {
                    let drafts: Vec<_> = s.iter().map(|i| draft(m.next_seq, sevs[*i as usize])).collect();
                    let alerts = o.push("gw", &drafts, &[], at(mono)).unwrap();
                    // Pushing writes pending acknowledgements too.
                    m.unsaved_acks.clear();
                    for (a, d) in alerts.iter().zip(&drafts) {
                        prop_assert_eq!(a.seq, m.next_seq);
                        let len = serde_json::to_vec(a).unwrap().len() as u64;
                        m.waiting.insert(a.seq, (d.severity, len, mono));
                        m.next_seq += 1;
                    }
                    // The bound, in the model's own words.
                    let mut bytes: u64 = m.waiting.values().map(|v| v.1).sum();
                    while bytes > bounds.max_bytes {
                        let victim = sevs.iter().find_map(|sev| m.waiting.iter().find(|(_, v)| v.0 == *sev).map(|(s, _)| *s)).unwrap();
                        bytes -= m.waiting.remove(&victim).unwrap().1;
                        m.dropped += 1;
                    }
                }
                Op::Ack(i) => {
                    if let Some(seq) = m.waiting.keys().nth(i % m.waiting.len().max(1)).copied() {
                        prop_assert!(o.ack(seq).unwrap());
                        let v = m.waiting.remove(&seq).unwrap();
                        m.unsaved_acks.insert(seq, v);
                        if m.unsaved_acks.len() >= ACK_RECORD_EVERY {
                            m.unsaved_acks.clear();
                        }
                    }
                }
                Op::AckStale(seq) => {
                    if !m.waiting.contains_key(&seq) {
                        prop_assert!(!o.ack(seq).unwrap());
                    }
                }
                Op::Flush => {
                    o.flush_blocking().unwrap();
                }
                Op::Crash => {
                    drop(o);
                    o = open_at(dir.path(), at(mono)).0;
                    // Acknowledgements not yet written come back (they are
                    // sent again: at least once); nothing else changes.
                    let got = seqs(&o);
                    let unsaved = std::mem::take(&mut m.unsaved_acks);
                    prop_assert!(unsaved.len() < ACK_RECORD_EVERY);
                    for s in &got {
                        if !m.waiting.contains_key(s) {
                            let v = unsaved.get(s).copied();
                            prop_assert!(v.is_some(), "seq {} came back but was never acknowledged-unsaved", s);
                            if let Some(v) = v {
                                m.waiting.insert(*s, v);
                            }
                        }
                    }
                    let want: Vec<u64> = m.waiting.keys().copied().collect();
                    prop_assert_eq!(&got, &want, "lost across a crash");
                    o.set_bounds(bounds);
                    let mut bytes: u64 = m.waiting.values().map(|v| v.1).sum();
                    while bytes > bounds.max_bytes {
                        let victim = sevs.iter().find_map(|sev| m.waiting.iter().find(|(_, v)| v.0 == *sev).map(|(s, _)| *s)).unwrap();
                        bytes -= m.waiting.remove(&victim).unwrap().1;
                        m.dropped += 1;
                    }
                }
                Op::Restart => {
                    o.close(Vec::new(), at(mono)).unwrap();
                    drop(o);
                    o = open_at(dir.path(), at(mono)).0;
                    o.set_bounds(bounds);
                    m.unsaved_acks.clear();
                }
                Op::Maintain => o.maintain(at(mono)).unwrap(),
                Op::Wait(ms) => mono += ms,
                Op::Expire => {
                    let n = o.expire(at(mono)).unwrap();
                    let cutoff = mono.saturating_sub(60_000);
                    let old: Vec<u64> = m.waiting.iter().filter(|(_, v)| v.2 < cutoff).map(|(s, _)| *s).collect();
                    prop_assert_eq!(n, old.len() as u64);
                    for s in old {
                        m.waiting.remove(&s);
                        m.dropped += 1;
                    }
                }
            }
            let want: Vec<u64> = m.waiting.keys().copied().collect();
            prop_assert_eq!(seqs(&o), want);
            prop_assert_eq!(o.depth(), m.waiting.len() as u64);
            prop_assert_eq!(o.bytes(), m.waiting.values().map(|v| v.1).sum::<u64>());
            prop_assert!(o.bytes() <= bounds.max_bytes);
            prop_assert_eq!(o.next_seq(), m.next_seq);
            prop_assert_eq!(o.dropped().total(), m.dropped);
        }
    }
}

/// A group of alerts larger than the disk's free space, on a real tmpfs:
/// what fits is stored and returned, the rest is pushed again once there is
/// room, and no alert is stored twice or skipped.
#[test]
fn a_group_the_disk_refuses_half_way_keeps_what_was_written_and_stores_the_rest_once() {
    let fs = TinyFs::mount(4 << 20);
    let dir = fs.path().join("outbox");
    let (o, _) = open_at(&dir, at(0));
    // About 600 KB left; the group needs about 2.3 MB (several records).
    let filler = fs.fill("filler");
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(600 << 10))
        .unwrap();
    let drafts: Vec<AlertDraft> = (0..1_000)
        .map(|i| AlertDraft {
            message: format!("alert {i} {}", "x".repeat(2_000)),
            ..draft(i, Severity::Critical)
        })
        .collect();
    let first = o.push("gw", &drafts, &[], at(1)).unwrap();
    let k = first.len();
    assert!(k > 0 && k < drafts.len(), "stored {k} of {}", drafts.len());
    assert_eq!(seqs(&o), (1..=k as u64).collect::<Vec<_>>());
    // Nothing more fits until there is room.
    assert!(o.push("gw", &drafts[k..], &[], at(2)).is_err());
    assert_eq!(o.depth(), k as u64);
    std::fs::remove_file(&filler).unwrap();
    let rest = o.push("gw", &drafts[k..], &[], at(3)).unwrap();
    assert_eq!(rest.len(), drafts.len() - k);
    let stored = o.after(None, usize::MAX).unwrap();
    assert_eq!(
        stored.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=1_000).collect::<Vec<u64>>()
    );
    assert!(
        stored
            .iter()
            .zip(&drafts)
            .all(|(r, d)| r.sensor == d.sensor),
        "each draft stored once, in order"
    );
}

/// Read one at a time, as the upstream does after each PUBACK, while more
/// is pushed: what comes from memory (read ahead) is exactly what a whole
/// read of the file gives, also across segments and after a reopen.
#[test]
fn alerts_read_one_at_a_time_while_more_are_pushed_are_the_stored_ones() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments (the bound is not reached: nothing is dropped).
    let opts = Options {
        max_bytes: 4 << 20,
        ..Options::default()
    };
    let (o, _) = open_opts(dir.path(), opts, at(0));
    let mut read = Vec::new();
    let mut cursor = None;
    for round in 0..40u64 {
        let drafts: Vec<AlertDraft> = (0..25)
            .map(|i| AlertDraft {
                message: format!(
                    "round {round} alert {i} {}",
                    "y".repeat((i * 97 % 900) as usize)
                ),
                ..draft(round * 100 + i, Severity::Warning)
            })
            .collect();
        o.push("gw", &drafts, &[], at(round)).unwrap();
        // Fewer read than pushed each round: the reader lags further behind.
        for _ in 0..20 {
            let Some(r) = o.after(cursor, 1).unwrap().pop() else {
                break;
            };
            cursor = Some(r.seq);
            read.push(r);
        }
    }
    while let Some(r) = o.after(cursor, 1).unwrap().pop() {
        cursor = Some(r.seq);
        read.push(r);
    }
    let whole = o.after(None, usize::MAX).unwrap();
    assert_eq!(read.len(), 1_000);
    assert_eq!(whole.len(), 1_000);
    for (a, b) in read.iter().zip(&whole) {
        assert_eq!(
            (a.seq, &a.sensor, &a.payload),
            (b.seq, &b.sensor, &b.payload)
        );
    }
    assert!(segments(dir.path()).len() > 1, "the reads crossed segments");
    drop(o);
    let (o, _) = open_opts(dir.path(), opts, at(100));
    let again: Vec<Record> = std::iter::successors(o.after(None, 1).unwrap().pop(), |r| {
        o.after(Some(r.seq), 1).unwrap().pop()
    })
    .collect();
    assert_eq!(again.len(), 1_000);
    assert!(
        again
            .iter()
            .zip(&whole)
            .all(|(a, b)| a.payload == b.payload)
    );
}
