//! The limits: pairs evicted or refused at `max_pairs`, windows thinned at
//! `max_samples` and `max_samples_per_pair`, and what that leaves in the
//! stored state.

use super::*;

fn limits(max_pairs: usize, on_max_pairs: OnMaxPairs) -> Limits {
    Limits {
        max_pairs,
        on_max_pairs,
        ..Limits::default()
    }
}

/// A 1 h average over every sensor: one pair per sensor, never firing at
/// the values these tests send (below 1000).
fn window_rule() -> Rule {
    agg(rule("avg", "*", above(1000.0)), Aggregate::Avg, 3_600_000)
}

fn read(e: &mut Engine, t: u64, sensor: &str, value: f64) -> Vec<AlertDraft> {
    let mut out = Vec::new();
    e.on_reading(&reading(sensor, "temp", value), now(t), &mut out);
    out
}

/// Sensors with a stored pair for rule `i`, sorted.
fn stored(e: &Engine, i: usize) -> Vec<String> {
    let mut v: Vec<String> = e.live[i]
        .pairs
        .iter()
        .map(|(_, s)| s.sensor().to_string())
        .collect();
    v.sort();
    v
}

/// Pairs and samples counted again from scratch.
fn counted(e: &Engine) -> (usize, usize) {
    let pairs = e.live.iter().map(|l| l.pairs.iter().count()).sum();
    let samples = e
        .live
        .iter()
        .flat_map(|l| l.pairs.iter())
        .map(|(_, s)| s.pair.samples.len())
        .sum();
    (pairs, samples)
}

#[test]
fn at_max_pairs_the_longest_idle_of_the_pairs_heard_from_once_goes_first() {
    let mut e = Engine::with_limits(vec![window_rule()], limits(4, OnMaxPairs::Evict));
    // Two real sensors report twice; two made-up ids once each.
    for (t, s) in [
        (0, "real1"),
        (1, "real2"),
        (2, "real1"),
        (3, "real2"),
        (4, "x1"),
        (5, "x2"),
    ] {
        read(&mut e, t, s, 20.0);
    }
    assert_eq!(stored(&e, 0), ["real1", "real2", "x1", "x2"]);
    read(&mut e, 6, "x3", 20.0);
    assert_eq!(
        stored(&e, 0),
        ["real1", "real2", "x2", "x3"],
        "x1: once, idle longest"
    );
    read(&mut e, 7, "x4", 20.0);
    read(&mut e, 8, "x5", 20.0);
    assert_eq!(stored(&e, 0), ["real1", "real2", "x4", "x5"]);
    // When only pairs heard from again are left, the longest idle of them.
    let mut e = Engine::with_limits(vec![window_rule()], limits(2, OnMaxPairs::Evict));
    for (t, s) in [(0, "a"), (1, "b"), (2, "b"), (3, "a"), (4, "b"), (5, "c")] {
        read(&mut e, t, s, 20.0);
    }
    assert_eq!(stored(&e, 0), ["b", "c"]);
    let s = e.stats();
    assert_eq!(
        (s.pairs, s.max_pairs, s.pairs_evicted, s.pairs_refused),
        (2, 2, 1, 0)
    );
}

#[test]
fn pending_and_firing_pairs_are_never_evicted_and_past_them_new_pairs_are_refused() {
    let hot = with_for(rule("hot", "*", above(30.0)), 10_000);
    let mut e = Engine::with_limits(vec![hot], limits(3, OnMaxPairs::Evict));
    for (t, s) in [(0, "a"), (1, "b"), (2, "c")] {
        assert!(read(&mut e, t, s, 31.0).is_empty());
    }
    // Full of pending pairs: a fourth breach has nowhere to go.
    assert!(read(&mut e, 3, "d", 31.0).is_empty());
    // A reading that needs no state is not refused.
    assert!(read(&mut e, 4, "d", 20.0).is_empty());
    assert_eq!(e.stats().pairs_refused, 1);
    assert_eq!(e.last_refused(), Some(("hot", "d", "temp")));
    let mut out = Vec::new();
    e.tick(now(10_002), &mut out);
    let got: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            "10002 firing hot a 31 30",
            "10002 firing hot b 31 30",
            "10002 firing hot c 31 30",
        ]
    );
    // Firing: still kept, and a breach for `e` is refused, its alert with it.
    assert!(read(&mut e, 10_003, "e", 99.0).is_empty());
    assert_eq!(stored(&e, 0), ["a", "b", "c"]);
    assert_eq!(e.stats().pairs_refused, 2);
    // A resolved pair holds nothing and goes: room again.
    let out = read(&mut e, 10_004, "a", 20.0);
    assert_eq!(
        out.iter().map(summary).collect::<Vec<_>>(),
        ["10004 resolved hot a 20 30"]
    );
    assert!(read(&mut e, 10_005, "e", 99.0).is_empty(), "pending");
    assert_eq!(stored(&e, 0), ["b", "c", "e"]);
}

#[test]
fn refuse_keeps_the_pairs_it_has_and_counts_what_it_turns_away() {
    let mut e = Engine::with_limits(vec![window_rule()], limits(2, OnMaxPairs::Refuse));
    for (t, s) in [(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "a")] {
        read(&mut e, t, s, 20.0);
    }
    assert_eq!(stored(&e, 0), ["a", "b"]);
    let s = e.stats();
    assert_eq!((s.pairs_evicted, s.pairs_refused), (0, 2));
    assert_eq!(e.last_refused(), Some(("avg", "d", "temp")));
}

#[test]
fn the_pair_of_a_rule_naming_one_sensor_is_always_admitted_and_never_evicted() {
    let quiet = silent("boiler", 60_000);
    let mut e = Engine::with_limits(vec![quiet, window_rule()], limits(3, OnMaxPairs::Refuse));
    // The watch of `boiler` is armed at start and keeps its room.
    for i in 0..10 {
        read(&mut e, i, &format!("x{i}"), 20.0);
    }
    assert_eq!(stored(&e, 0), ["boiler"]);
    assert_eq!(stored(&e, 1).len(), 2, "the window rule gets the rest");
    let mut e = Engine::with_limits(
        vec![silent("boiler", 60_000), window_rule()],
        limits(3, OnMaxPairs::Evict),
    );
    for i in 0..10 {
        read(&mut e, i, &format!("x{i}"), 20.0);
    }
    let mut out = Vec::new();
    e.tick(now(60_000), &mut out);
    let got: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        ["60000 firing quiet boiler 60 60"],
        "never heard from: silent"
    );
}

#[test]
fn a_real_sensor_still_alerts_after_a_flood_of_made_up_ids() {
    let rules = || {
        vec![
            rule("quiet", "*", Condition::Silent { after_ms: 600_000 }),
            window_rule(),
            rule("hot", "*", above(30.0)),
        ]
    };
    for policy in [OnMaxPairs::Evict, OnMaxPairs::Refuse] {
        let mut e = Engine::with_limits(rules(), limits(100, policy));
        for i in 0..10_000 {
            read(&mut e, i, &format!("flood/{i:08x}"), 20.0);
        }
        let s = e.stats();
        assert_eq!(s.pairs, 100, "{policy:?}");
        let got: Vec<String> = read(&mut e, 10_000, "greenhouse/t1", 35.0)
            .iter()
            .map(summary)
            .collect();
        match policy {
            OnMaxPairs::Evict => {
                assert_eq!(got, ["10000 firing hot greenhouse/t1 35 30"]);
                assert!(s.pairs_evicted >= 9_900 * 2 - 100, "{s:?}");
            }
            // What `refuse` means: the new pair, and its alert, turned away.
            OnMaxPairs::Refuse => {
                assert!(got.is_empty(), "{got:?}");
                assert_eq!(e.last_refused(), Some(("hot", "greenhouse/t1", "temp")));
            }
        }
    }
}

#[test]
fn an_evicted_pair_leaves_the_stored_state_and_its_silence_watch_never_fires() {
    let quiet = || vec![rule("quiet", "*", Condition::Silent { after_ms: 1_000 })];
    let mut e = Engine::with_limits(quiet(), limits(2, OnMaxPairs::Evict));
    let mut store = BTreeMap::new();
    read(&mut e, 0, "a", 1.0);
    apply(&mut store, e.state_changes(Changes::Dirty, now(0)));
    assert!(store.contains_key(&state::pair_key("quiet", "a", "temp")));
    read(&mut e, 1, "b", 1.0);
    read(&mut e, 2, "c", 1.0);
    assert_eq!(stored(&e, 0), ["b", "c"]);
    let changes = e.state_changes(Changes::Emitted, now(3));
    assert!(
        changes.contains(&(state::pair_key("quiet", "a", "temp"), None)),
        "{changes:?}"
    );
    apply(&mut store, changes);
    apply(&mut store, e.state_changes(Changes::Dirty, now(3)));
    // A restart: `a` is not watched again, so it cannot be called silent.
    let mut out = Vec::new();
    let mut r = Engine::restore_state(
        quiet(),
        limits(2, OnMaxPairs::Evict),
        &store,
        now(3),
        &mut out,
    );
    r.tick(now(5_000), &mut out);
    e.tick(now(5_000), &mut out);
    assert!(out.iter().all(|a| a.sensor != "a"), "{out:?}");
    assert_eq!(out.len(), 4, "b and c, in both engines");
}

#[test]
fn a_flood_between_two_saves_leaves_nothing_to_remove_and_the_store_stays_bounded() {
    let mut e = Engine::with_limits(vec![window_rule()], limits(10, OnMaxPairs::Evict));
    let mut store = BTreeMap::new();
    for round in 0..5u64 {
        for i in 0..10_000 {
            read(&mut e, round * 10_000 + i, &format!("x{round}-{i}"), 20.0);
        }
        let changes = e.state_changes(Changes::Dirty, now(round * 10_000 + 9_999));
        // The pairs stored at the last save were evicted: only they are removed.
        assert!(changes.len() <= 10 + 10 + 1, "{} changes", changes.len());
        apply(&mut store, changes);
        assert!(store.len() <= 11, "{} keys stored", store.len());
    }
}

#[test]
fn restore_keeps_what_fires_and_what_fits_and_removes_the_rest() {
    let hot = || vec![rule("hot", "*", above(30.0)), window_rule()];
    let mut e = Engine::new(hot());
    for i in 0..20 {
        read(
            &mut e,
            i,
            &format!("s{i:02}"),
            if i < 5 { 31.0 } else { 20.0 },
        );
    }
    let mut store = BTreeMap::new();
    apply(&mut store, e.state_changes(Changes::Full, now(20)));
    let mut out = Vec::new();
    let mut r = Engine::restore_state(
        hot(),
        limits(8, OnMaxPairs::Evict),
        &store,
        now(20),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(r.firing().len(), 5);
    let s = r.stats();
    assert_eq!(s.pairs, 8, "5 firing and 3 windows");
    assert_eq!(counted(&r), (8, 3));
    let changes = r.state_changes(Changes::Dirty, now(21));
    let removed = changes.iter().filter(|c| c.1.is_none()).count();
    assert_eq!(removed, 17, "the windows left out");
    apply(&mut store, changes);
    assert_eq!(store.len(), 2 + 8, "two rules, eight pairs");
}

#[test]
fn a_restore_thins_saved_windows_to_the_limits_in_force_and_keeps_their_mean() {
    let mut e = Engine::new(vec![window_rule()]);
    for i in 0..2_000u64 {
        read(&mut e, i, &format!("s{}", i % 4), (i % 7) as f64);
    }
    let mean = |e: &Engine| {
        let (mut sum, mut n) = (0.0, 0.0);
        for (_, s) in e.live[0].pairs.iter() {
            for x in &s.pair.samples {
                sum += x.value * f64::from(x.weight);
                n += f64::from(x.weight);
            }
        }
        sum / n
    };
    let before = mean(&e);
    let mut store = BTreeMap::new();
    apply(&mut store, e.state_changes(Changes::Full, now(2_000)));
    let l = Limits {
        max_pairs: 4,
        on_max_pairs: OnMaxPairs::Evict,
        max_samples: 40,
        max_samples_per_pair: 16,
    };
    let mut out = Vec::new();
    let mut r = Engine::restore_state(vec![window_rule()], l, &store, now(2_000), &mut out);
    let s = r.stats();
    assert_eq!((s.pairs, counted(&r)), (4, (4, s.samples)));
    assert!(s.samples <= 40, "{s:?}");
    assert!((mean(&r) - before).abs() < 1e-9, "{} vs {before}", mean(&r));
    // Saved again with their weights, they come back the same.
    let mut again = BTreeMap::new();
    apply(&mut again, r.state_changes(Changes::Full, now(2_000)));
    let r2 = Engine::restore_state(vec![window_rule()], l, &again, now(2_000), &mut out);
    assert_eq!(counted(&r2), counted(&r));
    assert!((mean(&r2) - before).abs() < 1e-9);
}

#[test]
fn a_window_past_max_samples_per_pair_is_thinned_and_stays_sensible() {
    let per_pair = |r: Rule| {
        Engine::with_limits(
            vec![r],
            Limits {
                max_samples_per_pair: 16,
                ..Limits::default()
            },
        )
    };
    // avg: 1000 readings alternating 10 and 30 stay at 20.
    let mut e = per_pair(agg(
        rule("avg", "t1", above(20.5)),
        Aggregate::Avg,
        3_600_000,
    ));
    for i in 0..1000u64 {
        assert!(read(&mut e, i, "t1", if i % 2 == 0 { 10.0 } else { 30.0 }).is_empty());
        assert!(e.stats().samples <= 16);
    }
    assert!(e.stats().samples_thinned >= 1000 - 16);
    // One more reading moves the average by about 1/1000 of its distance.
    let got: Vec<String> = read(&mut e, 1000, "t1", 600.0)
        .iter()
        .map(summary)
        .collect();
    assert_eq!(got, ["1000 firing avg t1 20.579 20.5"]);
    // max: a spike among a thousand readings is still seen...
    let mut e = per_pair(agg(rule("max", "t1", above(50.0)), Aggregate::Max, 10_000));
    let mut fired = Vec::new();
    for i in 0..2000u64 {
        let v = if i == 500 { 99.0 } else { 20.0 };
        fired.extend(read(&mut e, i * 10, "t1", v).iter().map(summary));
    }
    // ...and leaves the window with its newest neighbour: within one slice
    // (10 s / 7 slices) of the 10 s after it.
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fired[0], "5000 firing max t1 99 50");
    let resolved_at: u64 = fired[1].split(' ').next().unwrap().parse().unwrap();
    assert!(
        (15_000..=15_000 + 10_000 / 7 + 10).contains(&resolved_at),
        "{fired:?}"
    );
    // rate: a steady rise of 6/min is measured as 6/min.
    let mut e = per_pair(rule("rate", "t1", rate(true, 5.9)));
    let mut got = Vec::new();
    for i in 0..1000u64 {
        got.extend(
            read(&mut e, i * 1000, "t1", i as f64 * 0.1)
                .iter()
                .map(summary),
        );
    }
    assert_eq!(got, ["30000 firing rate t1 6 5.9"]);
    assert!(e.stats().samples <= 16);
}

#[test]
fn past_max_samples_the_longest_windows_are_thinned_and_short_ones_left_whole() {
    let l = Limits {
        max_pairs: 50,
        on_max_pairs: OnMaxPairs::Evict,
        max_samples: 400,
        max_samples_per_pair: 10_000,
    };
    let mut e = Engine::with_limits(vec![window_rule()], l);
    for i in 0..40 {
        read(&mut e, i, &format!("short{i}"), 20.0);
    }
    for i in 0..5_000u64 {
        read(&mut e, 100 + i, &format!("long{}", i % 2), 20.0);
        let s = e.stats();
        assert!(s.samples <= 400 && counted(&e).1 == s.samples, "{s:?}");
    }
    let lens: Vec<usize> = e.live[0]
        .pairs
        .iter()
        .map(|(_, s)| s.pair.samples.len())
        .collect();
    assert!(lens.iter().filter(|&&n| n == 1).count() == 40, "{lens:?}");
    assert!(e.stats().samples_thinned > 0);
}

#[test]
fn evicting_under_a_flood_is_a_few_steps_of_work_per_reading() {
    let mut e = Engine::with_limits(
        vec![
            window_rule(),
            rule("quiet", "*", Condition::Silent { after_ms: 600_000 }),
        ],
        limits(1_000, OnMaxPairs::Evict),
    );
    let readings = 200_000u64;
    for i in 0..readings {
        // A flood, with real sensors reporting in between.
        let sensor = if i % 10 == 0 {
            format!("real{}", i % 300)
        } else {
            format!("x{i}")
        };
        read(&mut e, i, &sensor, 20.0);
    }
    // Each reading touches two pairs; each queue entry is pushed once and
    // looked at once more when popped or compacted.
    let work = e.idle.work;
    assert!(
        work <= readings * 2 * 3,
        "{work} steps for {readings} readings"
    );
    assert!(e.idle.len() <= 2 * 1_000 + 1024);
    assert!(e.stats().pairs_evicted > readings);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    const SENSORS: usize = 24;

    #[derive(Debug, Clone)]
    enum Step {
        Read { dt: u64, sensor: usize, value: f64 },
        Tick { dt: u64 },
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let read = (
            0u64..400,
            0..SENSORS,
            (0i32..80).prop_map(|i| f64::from(i) * 0.5),
        )
            .prop_map(|(dt, sensor, value)| Step::Read { dt, sensor, value });
        let tick = (0u64..2000).prop_map(|dt| Step::Tick { dt });
        prop::collection::vec(prop_oneof![6 => read, 1 => tick], 0..250)
    }

    fn sensor(i: usize) -> String {
        // A few named ones for literal rules, the rest made up.
        match i {
            0 => "a".into(),
            1 => "a/b".into(),
            _ => format!("s{i}"),
        }
    }

    /// (rule, sensor, metric) of every pending or firing pair.
    fn pinned(e: &Engine) -> Vec<(String, String, String)> {
        e.live
            .iter()
            .flat_map(|l| {
                l.pairs
                    .iter()
                    .filter(|(_, s)| s.pair.phase != pair::Phase::Ok)
                    .map(|(_, s)| {
                        (
                            l.rule.id.clone(),
                            s.sensor().to_string(),
                            s.metric().to_string(),
                        )
                    })
            })
            .collect()
    }

    proptest! {
        #[test]
        fn the_limits_hold_whatever_the_input_and_never_cost_an_alert_in_flight(
            rules in super::super::props::rules(8),
            steps in steps(),
            room in 1usize..8,
            extra in 0usize..100,
            refuse in any::<bool>(),
        ) {
            let single = rules.iter().filter(|r| r.sensor.literal().is_some() && r.metric.literal().is_some()).count();
            let max_pairs = single + room;
            let l = Limits {
                max_pairs,
                on_max_pairs: if refuse { OnMaxPairs::Refuse } else { OnMaxPairs::Evict },
                max_samples: 4 * max_pairs + extra,
                max_samples_per_pair: 16,
            };
            let mut e = Engine::with_limits(rules, l);
            let mut out = Vec::new();
            let mut t = 0;
            for step in &steps {
                let before = pinned(&e);
                let touched = match *step {
                    Step::Read { dt, sensor: i, value } => {
                        t += dt;
                        let s = sensor(i);
                        e.on_reading(&reading(&s, "temp", value), now(t), &mut out);
                        Some(s)
                    }
                    Step::Tick { dt } => {
                        t += dt;
                        e.tick(now(t), &mut out);
                        None
                    }
                };
                let s = e.stats();
                prop_assert!(s.pairs <= max_pairs, "{s:?}");
                prop_assert!(s.samples <= l.max_samples, "{s:?}");
                prop_assert_eq!(counted(&e), (s.pairs, s.samples));
                let per_pair = e.live.iter().flat_map(|l| l.pairs.iter()).map(|(_, s)| s.pair.samples.len()).max();
                prop_assert!(per_pair.unwrap_or(0) <= 16);
                let after = pinned(&e);
                for p in before {
                    // Only its own reading may move a pending or firing pair.
                    if touched.as_deref() != Some(p.1.as_str()) {
                        prop_assert!(after.contains(&p), "{p:?} was pending or firing and is gone");
                    }
                }
            }
            // Per pair, alerts alternate: an evicted firing pair would fire twice.
            let mut firing: BTreeMap<(String, String, String), bool> = BTreeMap::new();
            for a in out.iter().filter(|a| a.reason != Reason::Repeat) {
                let was = firing.entry((a.rule.clone(), a.sensor.clone(), a.metric.clone())).or_default();
                prop_assert_eq!(*was, a.state == AlertState::Resolved, "out of order: {:?}", a);
                *was = a.state == AlertState::Firing;
            }
        }
    }
}
