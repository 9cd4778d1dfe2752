//! The outbox's promises (SPEC.md, Delivery guarantees) through the real
//! binary, with things broken on purpose: kill -9 while alerts are made,
//! links cut, blackholed and a broker restarted mid-drain (a fault-injecting
//! proxy, `common/fault_proxy.rs`), and a producer faster than the bound.
//!
//! Alerts come fast from `[[simulate]]` sensors that are pure noise in
//! [-10, 10] against a rule `above = 5, clear = -5`: about one reading in
//! four fires or resolves. Every check is on seq numbers: seqs are
//! consecutive per alert created, so a lost alert is a hole.

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use fault_proxy::FaultProxy;
use serde_json::Value;

const ALL: &str = "outpost/test-gw/#";
/// Alerts in flight at once (`upstream::WINDOW`): the bound on duplicates per connection.
const WINDOW: usize = 64;

/// A noisy simulated sensor: a reading every `interval`.
struct Sim {
    sensor: &'static str,
    interval: &'static str,
}

fn config(upstream: &str, outbox: &str, sims: &[Sim]) -> String {
    let mut s = format!(
        "[gateway]\nid = \"test-gw\"\nstate_dir = \"state\"\nrules = [\"rules.toml\"]\n\n\
         [upstream]\nurl = \"{upstream}\"\nkeep_alive = \"5s\"\n\n\
         [outbox]\n{outbox}\n\n[http]\nlisten = \"\"\n\n"
    );
    for sim in sims {
        s.push_str(&format!(
            "[[simulate]]\nsensor = \"{}\"\nmetric = \"temperature\"\ninterval = \"{}\"\n\
             base = 0.0\namplitude = 0.0\nnoise = 10.0\n\n",
            sim.sensor, sim.interval
        ));
    }
    s
}

/// One rule per severity, by sensor prefix.
const RULES: &str = r#"
[[rule]]
id = "noisy-info"
sensor = "info/*"
metric = "temperature"
above = 5.0
clear = -5.0
severity = "info"

[[rule]]
id = "noisy-warning"
sensor = "warning/*"
metric = "temperature"
above = 5.0
clear = -5.0
severity = "warning"

[[rule]]
id = "noisy-critical"
sensor = "critical/*"
metric = "temperature"
above = 5.0
clear = -5.0
severity = "critical"
"#;

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// How many alerts the gateway has stored, all runs (it logs each one).
fn created(gw: &Gateway) -> usize {
    gw.log().matches(" alert id=").count()
}

fn wait_created(gw: &mut Gateway, at_least: usize) {
    let deadline = Instant::now() + WAIT;
    while created(gw) < at_least {
        gw.assert_running();
        assert!(
            Instant::now() < deadline,
            "the gateway stored {} alerts, not {at_least}, within {WAIT:?}",
            created(gw)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Alert deliveries: (seq, id) in arrival order, duplicates included.
fn deliveries(msgs: &[Msg]) -> Vec<(u64, String)> {
    msgs.iter()
        .filter(|m| m.topic.contains("/alerts/"))
        .map(|m| {
            let v = m.json();
            (seq(&v), v["id"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// Checks the at-least-once contract over what arrived: each seq always
/// with the same id, first deliveries in seq order; returns the distinct
/// seqs and the number of duplicates.
fn check_deliveries(msgs: &[Msg]) -> (BTreeSet<u64>, usize) {
    let d = deliveries(msgs);
    let mut ids: BTreeMap<u64, String> = BTreeMap::new();
    let mut first_order = Vec::new();
    for (s, id) in &d {
        match ids.get(s) {
            Some(prev) => assert_eq!(prev, id, "seq {s} arrived with two ids"),
            None => {
                ids.insert(*s, id.clone());
                first_order.push(*s);
            }
        }
    }
    assert!(
        first_order.windows(2).all(|w| w[0] < w[1]),
        "alerts first arrived out of seq order: {:?}",
        first_order.windows(2).find(|w| w[0] >= w[1])
    );
    let set: BTreeSet<u64> = ids.keys().copied().collect();
    (set, d.len() - ids.len())
}

/// The holes in `1..=max` of `set`.
fn holes(set: &BTreeSet<u64>, max: u64) -> Vec<u64> {
    (1..=max).filter(|s| !set.contains(s)).collect()
}

/// `outpost outbox export` of a stopped gateway: the stored seqs.
fn exported(dir: &Path) -> Vec<u64> {
    let out = run_outpost(dir, &["outbox", "export", "--config", "outpost.toml"]);
    assert_eq!(out.code, Some(0), "export failed: {}", out.all());
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("export line is not JSON ({e}): {l}"));
            seq(&v)
        })
        .collect()
}

/// `outpost outbox list` of a stopped gateway: (next seq, waiting bytes, its text).
fn listed(dir: &Path) -> (u64, u64, String) {
    let out = run_outpost(dir, &["outbox", "list", "--config", "outpost.toml"]);
    assert_eq!(out.code, Some(0), "list failed: {}", out.all());
    let text = out.stdout;
    let summary = text
        .lines()
        .find(|l| l.contains("waiting,"))
        .unwrap_or_else(|| panic!("no summary in:\n{text}"));
    let num_after = |key: &str| -> u64 {
        let rest = &summary[summary
            .find(key)
            .unwrap_or_else(|| panic!("{key} in {summary}"))
            + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("number after {key} in {summary}"))
    };
    let bytes = summary
        .split(", ")
        .find(|p| p.ends_with(" bytes"))
        .and_then(|p| p.trim_end_matches(" bytes").parse().ok())
        .unwrap_or_else(|| panic!("bytes in {summary}"));
    (num_after("next seq"), bytes, text)
}

/// SIGTERM, and the gateway must exit 0.
fn stop(gw: &mut Gateway) {
    gw.sigterm();
    let st = gw.wait_exit(Duration::from_secs(12));
    assert_eq!(st.code(), Some(0), "SIGTERM must exit 0 ({st})");
}

/// After the gateway stopped: every seq ever created was delivered or is
/// still in the outbox (none lost), none both... except in-flight ones that
/// were delivered but not yet acknowledged (at most a window).
fn assert_nothing_lost(dir: &Path, delivered: &BTreeSet<u64>) {
    let (next_seq, _, list) = listed(dir);
    let stored: BTreeSet<u64> = exported(dir).into_iter().collect();
    let all: BTreeSet<u64> = delivered.union(&stored).copied().collect();
    let missing = holes(&all, next_seq - 1);
    assert!(
        missing.is_empty(),
        "alerts lost (neither delivered nor stored): {missing:?}\n{list}"
    );
    assert!(
        all.iter().all(|s| *s < next_seq),
        "a seq beyond next_seq {next_seq}"
    );
    assert!(
        delivered.intersection(&stored).count() <= WINDOW,
        "more than a window delivered and still stored"
    );
}

#[test]
fn kill_9_while_alerts_are_made_with_upstream_down_loses_none() {
    let dir = tempdir();
    let mut up = Mosquitto::start();
    let mut sub = Subscriber::connect(up.port(), ALL);
    up.stop();
    let sims = [
        Sim {
            sensor: "critical/a",
            interval: "2ms",
        },
        Sim {
            sensor: "warning/b",
            interval: "3ms",
        },
    ];
    let cfg = config(&up.url(), "flush = \"always\"", &sims);
    let mut gw = Gateway::start(dir.path(), &cfg, RULES);
    let mut made = 0;
    for round in 0..4 {
        // Kill at a different moment of each run: while alerts stream in.
        made += 15 + round * 10;
        wait_created(&mut gw, made);
        gw.kill9();
        made = created(&gw);
        gw.restart();
    }
    wait_created(&mut gw, made + 10);
    gw.kill9();

    // Upstream was never reachable: every alert made is in the outbox,
    // seqs 1..next_seq with no hole (a write lost by the kill takes its
    // seq with it, as next_seq is in the same batch).
    let (next_seq, _, list) = listed(dir.path());
    let stored = exported(dir.path());
    assert!(
        stored.len() >= 50,
        "too few alerts stored to mean anything:\n{list}"
    );
    assert_eq!(
        stored,
        (1..next_seq).collect::<Vec<_>>(),
        "the outbox after 5 kills must hold seqs 1..{next_seq} exactly"
    );

    up.start_again();
    gw.restart();
    let last = next_seq - 1;
    sub.wait_until(WAIT, "every stored alert upstream", |msgs| {
        let (set, _) = check_deliveries(msgs);
        holes(&set, last).is_empty().then_some(())
    });
    let (set, dups) = check_deliveries(sub.messages());
    let max = *set.iter().next_back().unwrap();
    assert!(holes(&set, max).is_empty(), "a gap among delivered seqs");
    assert!(dups <= WINDOW, "{dups} duplicates from one connection");
    stop(&mut gw);
}

/// Starts a gateway streaming alerts through a fault proxy.
fn streaming(dir: &Path, up: &Mosquitto, proxy: &FaultProxy, outbox: &str) -> Gateway {
    let _ = up;
    let sims = [
        Sim {
            sensor: "critical/a",
            interval: "3ms",
        },
        Sim {
            sensor: "info/b",
            interval: "5ms",
        },
    ];
    Gateway::start(dir, &config(&proxy.url(), outbox, &sims), RULES)
}

fn delivered_count(sub: &mut Subscriber) -> usize {
    check_deliveries(sub.messages()).0.len()
}

fn wait_delivered(sub: &mut Subscriber, at_least: usize, timeout: Duration, what: &str) {
    sub.wait_until(timeout, what, |msgs| {
        (check_deliveries(msgs).0.len() >= at_least).then_some(())
    });
}

#[test]
fn connections_cut_repeatedly_while_alerts_stream_lose_none() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let proxy = FaultProxy::start(up.port());
    let mut sub = Subscriber::connect(up.port(), ALL);
    let mut gw = streaming(dir.path(), &up, &proxy, "flush = \"always\"");
    wait_delivered(&mut sub, 20, WAIT, "alerts before the first cut");
    let cuts = 6;
    for i in 0..cuts {
        let accepted = proxy.accepted();
        proxy.cut();
        poll_until(WAIT, "the gateway to reconnect after a cut", || {
            (proxy.accepted() > accepted).then_some(())
        });
        let n = delivered_count(&mut sub);
        wait_delivered(
            &mut sub,
            n + 10,
            WAIT,
            &format!("alerts after cut {}", i + 1),
        );
    }
    stop(&mut gw);
    let (set, dups) = check_deliveries(sub.messages());
    assert!(
        dups <= WINDOW * (cuts + 1),
        "{dups} duplicates over {} connections",
        cuts + 1
    );
    assert_nothing_lost(dir.path(), &set);
    assert!(
        gw.log().matches("upstream link lost").count() >= cuts,
        "each cut is noticed"
    );
}

#[test]
fn a_blackholed_link_is_detected_and_replaced() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let proxy = FaultProxy::start(up.port());
    let mut sub = Subscriber::connect(up.port(), ALL);
    let mut gw = streaming(dir.path(), &up, &proxy, "flush = \"always\"");
    wait_delivered(&mut sub, 20, WAIT, "alerts before the black hole");
    let accepted = proxy.accepted();
    let before = check_deliveries(sub.messages())
        .0
        .last()
        .copied()
        .unwrap_or(0);
    let t0 = Instant::now();
    proxy.blackhole();
    // keep_alive 5s: the stall timeout (10 s with alerts in flight) or the
    // missing PINGRESP must end the silent link, then a new one carries on.
    sub.wait_until(Duration::from_secs(25), "alerts on a new link", |msgs| {
        let (set, _) = check_deliveries(msgs);
        set.range(before + 30..).next().map(|_| ())
    });
    let took = t0.elapsed();
    assert!(proxy.accepted() > accepted, "no new connection was made");
    assert!(
        took < Duration::from_secs(25),
        "a half-open link held the outbox for {took:?}"
    );
    stop(&mut gw);
    let (set, _) = check_deliveries(sub.messages());
    assert_nothing_lost(dir.path(), &set);
    let log = gw.log();
    assert!(
        log.contains("upstream link lost"),
        "the half-open link was not noticed:\n{}",
        tail(&log, 30)
    );
}

#[test]
fn a_broker_restart_in_the_middle_of_a_drain_loses_none() {
    let dir = tempdir();
    let mut up = Mosquitto::start();
    let proxy = FaultProxy::start(up.port());
    let mut sub = Subscriber::connect(up.port(), ALL);
    proxy.refuse(true);
    let mut gw = streaming(dir.path(), &up, &proxy, "flush = \"always\"");
    wait_created(&mut gw, 400);
    // A slow uplink (~100 alerts/s) so the drain is long enough to break.
    proxy.throttle(Some(40_000));
    proxy.refuse(false);
    wait_delivered(&mut sub, 60, WAIT, "the drain to start");
    let backlog = created(&gw);
    let mid = delivered_count(&mut sub);
    assert!(mid < backlog, "the drain ended before the restart");
    up.stop();
    up.start_again();
    proxy.throttle(None);
    sub.wait_until(WAIT, "the whole backlog after the restart", |msgs| {
        let (set, _) = check_deliveries(msgs);
        (set.len() >= backlog && holes(&set, backlog as u64).is_empty()).then_some(())
    });
    stop(&mut gw);
    let (set, dups) = check_deliveries(sub.messages());
    assert!(dups <= WINDOW * 3, "{dups} duplicates");
    assert_nothing_lost(dir.path(), &set);
}

fn events(msgs: &[Msg]) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    msgs.iter()
        .filter(|m| m.topic == "outpost/test-gw/events")
        .map(|m| m.json())
        .filter(|v| seen.insert(v["id"].to_string()))
        .collect()
}

#[test]
fn a_producer_faster_than_the_bound_drops_lower_severities_first_and_reports_it() {
    let dir = tempdir();
    let mut up = Mosquitto::start();
    let mut sub = Subscriber::connect(up.port(), ALL);
    up.stop();
    let max_bytes = 16 * 1024;
    let sims = [
        Sim {
            sensor: "info/fast",
            interval: "2ms",
        },
        Sim {
            sensor: "warning/mid",
            interval: "10ms",
        },
        Sim {
            sensor: "critical/slow",
            interval: "100ms",
        },
    ];
    let cfg = config(
        &up.url(),
        "flush = \"always\"\nmax_bytes = \"16KiB\"",
        &sims,
    );
    let mut gw = Gateway::start(dir.path(), &cfg, RULES);
    // About 350 bytes an alert: 16 KiB holds ~45; make ten times that.
    wait_created(&mut gw, 450);
    stop(&mut gw);
    let (next_seq, bytes, list) = listed(dir.path());
    assert!(
        bytes <= max_bytes,
        "the outbox holds {bytes} > {max_bytes} bytes:\n{list}"
    );
    assert!(
        list.contains("critical 0)"),
        "a critical alert was dropped while info ones were there:\n{list}"
    );
    let stored: BTreeSet<u64> = exported(dir.path()).into_iter().collect();

    up.start_again();
    gw.restart();
    // The drops arrive as events; together with the delivered alerts they
    // account for every seq (a stored alert may still be dropped after the
    // restart, before the link is up: then it is in an event too).
    let drops = |evs: &[Value]| -> BTreeSet<u64> {
        let mut d = BTreeSet::new();
        for e in evs {
            for r in e["ranges"].as_array().into_iter().flatten() {
                d.extend(r[0].as_u64().unwrap()..=r[1].as_u64().unwrap());
            }
        }
        d
    };
    let (evs, delivered) = sub.wait_until(WAIT, "drop events and the stored alerts", |msgs| {
        let (set, _) = check_deliveries(msgs);
        let evs = events(msgs);
        let all: BTreeSet<u64> = drops(&evs).union(&set).copied().collect();
        (stored.is_subset(&all) && holes(&all, next_seq - 1).is_empty()).then_some((evs, set))
    });
    let dropped = drops(&evs);
    let mut by_sev = BTreeMap::new();
    for e in &evs {
        assert_eq!(e["event"], "dropped", "{e}");
        assert_eq!(e["gateway"], "test-gw");
        assert_eq!(e["exact"], true, "few enough ranges to be exact: {e}");
        for s in ["info", "warning", "critical"] {
            *by_sev.entry(s).or_insert(0) += e["by_severity"][s].as_u64().unwrap();
        }
        assert_eq!(e["count"], e["by_reason"]["max_bytes"], "{e}");
    }
    assert!(by_sev["info"] > 0, "{by_sev:?}");
    assert_eq!(by_sev["critical"], 0, "{by_sev:?}");
    assert_eq!(
        dropped.len() as u64,
        by_sev.values().sum::<u64>(),
        "ranges and counts agree"
    );
    // Dropping an alert the broker was receiving at that moment (the
    // bound hit while online) is the one way a dropped seq can arrive.
    assert!(
        dropped.intersection(&delivered).count() <= WINDOW,
        "more than a window of dropped seqs were delivered"
    );
    // Health, retained: a subscriber that comes later still gets it.
    let total: u64 = by_sev.values().sum();
    let mut late = Subscriber::connect(up.port(), "outpost/test-gw/health");
    late.wait_for(WAIT, "the retained health", |m| m.retain);
    let h = late
        .wait_for(
            WAIT,
            "health with the drops and the sources' readings",
            |m| {
                let h = m.json();
                // The first health after connecting may predate the sources' first readings.
                h["outbox"]["dropped"]["total"].as_u64() >= Some(total)
                    && h["sources"]
                        .as_array()
                        .is_some_and(|s| s.iter().all(|s| s["readings"].as_u64() > Some(0)))
            },
        )
        .json();
    assert_eq!(h["gateway"], "test-gw");
    assert!(h["outbox"]["bytes"].as_u64().unwrap() <= max_bytes, "{h}");
    assert!(h["uptime_s"].is_u64() && h["version"].is_string(), "{h}");
    let srcs = h["sources"].as_array().unwrap();
    assert_eq!(srcs.len(), 3, "{h}");
    assert!(srcs.iter().all(|s| s["readings"].as_u64() > Some(0)), "{h}");
    stop(&mut gw);
}

#[test]
fn alerts_older_than_max_age_are_dropped_and_reported() {
    let dir = tempdir();
    let up = Mosquitto::start();
    let proxy = FaultProxy::start(up.port());
    let mut sub = Subscriber::connect(up.port(), ALL);
    proxy.refuse(true);
    let sims = [Sim {
        sensor: "critical/a",
        interval: "20ms",
    }];
    let cfg = config(&proxy.url(), "flush = \"always\"\nmax_age = \"1s\"", &sims);
    let mut gw = Gateway::start(dir.path(), &cfg, RULES);
    wait_created(&mut gw, 5);
    let first_batch = created(&gw);
    // Well past max_age (expiry runs every second).
    std::thread::sleep(Duration::from_millis(2500));
    proxy.refuse(false);
    let ev = sub
        .wait_for(WAIT, "a max_age drop event", |m| {
            m.topic.ends_with("/events") && m.json()["by_reason"]["max_age"].as_u64() > Some(0)
        })
        .json();
    let dropped: BTreeSet<u64> = ev["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r[0].as_u64().unwrap()..=r[1].as_u64().unwrap())
        .collect();
    assert!(
        (1..=first_batch as u64).all(|s| dropped.contains(&s)),
        "the first {first_batch} alerts aged out: {ev}"
    );
    assert_eq!(
        ev["by_severity"]["critical"], ev["count"],
        "age drops any severity"
    );
    stop(&mut gw);
    let (set, _) = check_deliveries(sub.messages());
    assert!(set.is_disjoint(&dropped), "an expired alert was delivered");
}

#[test]
fn outbox_commands_refuse_a_running_gateway_and_inspect_a_stopped_one() {
    let dir = tempdir();
    let mut up = Mosquitto::start();
    let mut sub = Subscriber::connect(up.port(), ALL);
    up.stop();
    let sims = [Sim {
        sensor: "warning/a",
        interval: "20ms",
    }];
    let mut gw = Gateway::start(
        dir.path(),
        &config(&up.url(), "flush = \"always\"", &sims),
        RULES,
    );
    wait_created(&mut gw, 5);
    for cmd in ["list", "export", "purge"] {
        let out = run_outpost(dir.path(), &["outbox", cmd, "--config", "outpost.toml"]);
        assert_eq!(
            out.code,
            Some(1),
            "{cmd} on a running gateway: {}",
            out.all()
        );
        assert!(
            out.stderr.contains("in use by another process")
                && out.stderr.contains("stop it first"),
            "{cmd}: {}",
            out.stderr
        );
    }
    stop(&mut gw);
    let (next_seq, _, list) = listed(dir.path());
    let stored = exported(dir.path());
    assert_eq!(stored, (1..next_seq).collect::<Vec<_>>());
    assert!(
        list.contains("SEQ") && list.contains("warning") && list.contains("noisy-warning"),
        "{list}"
    );
    assert_eq!(
        list.lines().filter(|l| l.contains("noisy-warning")).count(),
        stored.len(),
        "one table row per alert:\n{list}"
    );
    let out = run_outpost(dir.path(), &["outbox", "purge", "--config", "outpost.toml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout
            .contains(&format!("purged {} alerts", stored.len())),
        "{}",
        out.stdout
    );
    assert!(exported(dir.path()).is_empty());
    let (after, _, list) = listed(dir.path());
    assert_eq!(after, next_seq, "seqs are not reused after a purge");
    assert!(
        list.contains("purged"),
        "the purge waits as an event:\n{list}"
    );

    // Once online, subscribers learn about the purge.
    up.start_again();
    gw.restart();
    let ev = sub
        .wait_for(WAIT, "the purged event", |m| m.topic.ends_with("/events"))
        .json();
    assert_eq!(ev["event"], "purged", "{ev}");
    assert_eq!(ev["count"].as_u64(), Some(stored.len() as u64));
    assert_eq!(ev["ranges"], serde_json::json!([[1, next_seq - 1]]));
    stop(&mut gw);
    let missing = run_outpost(dir.path(), &["outbox", "list", "--config", "nope.toml"]);
    assert_eq!(missing.code, Some(2), "{}", missing.all());
}
