//! The outbox's promises (README, "Delivery guarantees") through the real
//! binary, with things broken on purpose: kill -9 while alerts are made and
//! inside sled's flush window, links cut, blackholed and a broker restarted
//! mid-drain (`harness::proxy`), and a producer faster than the bound.
//!
//! Alerts come fast from `[[simulate]]` sensors that are pure noise in
//! [-10, 10] against a rule `above = 5, clear = -5`: about one reading in
//! four fires or resolves. Every check is on seq numbers: seqs are
//! consecutive per alert created, so a lost alert is a hole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const ALL: &str = "outpost/test-gw/#";
/// Alerts in flight at once (README, "Delivery guarantees"): the bound on
/// the duplicates a reconnect brings.
const WINDOW: usize = 64;

/// `outpost.toml` with these `[outbox]` lines and noisy simulated sensors,
/// each `(sensor, interval)`: a reading every `interval`.
fn config(upstream: &str, outbox: &str, sims: &[(&str, &str)]) -> String {
    let mut s = format!(
        "[gateway]\nid = \"test-gw\"\nstate_dir = \"state\"\nrules = [\"rules.toml\"]\n\n\
         [upstream]\nurl = \"{upstream}\"\nkeep_alive = \"5s\"\n\n\
         [outbox]\n{outbox}\n\n[http]\nlisten = \"\"\n\n"
    );
    for (sensor, interval) in sims {
        s.push_str(&format!(
            "[[simulate]]\nsensor = \"{sensor}\"\nmetric = \"temperature\"\ninterval = \"{interval}\"\n\
             base = 0.0\namplitude = 0.0\nnoise = 10.0\n\n"
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

/// Checks the at-least-once contract over what arrived: a seq always
/// comes as the same alert, byte for byte (a seq reused by another alert
/// fails), and first deliveries come in seq order. Returns the distinct
/// seqs and the number of duplicates.
fn check_deliveries(msgs: &[Msg]) -> (BTreeSet<u64>, usize) {
    let mut by_seq: BTreeMap<u64, &[u8]> = BTreeMap::new();
    let mut first_order = Vec::new();
    let mut all = 0;
    for m in msgs.iter().filter(|m| m.is_alert()) {
        all += 1;
        let s = seq(&m.json());
        match by_seq.get(&s) {
            Some(prev) => assert!(
                *prev == m.payload.as_slice(),
                "seq {s} arrived as two alerts:\n{}\n{}",
                String::from_utf8_lossy(prev),
                m.text()
            ),
            None => {
                by_seq.insert(s, &m.payload);
                first_order.push(s);
            }
        }
    }
    assert!(
        first_order.windows(2).all(|w| w[0] < w[1]),
        "alerts first arrived out of seq order: {:?}",
        first_order.windows(2).find(|w| w[0] >= w[1])
    );
    (by_seq.keys().copied().collect(), all - by_seq.len())
}

/// The holes in `1..=max` of `set`.
fn holes(set: &BTreeSet<u64>, max: u64) -> Vec<u64> {
    (1..=max).filter(|s| !set.contains(s)).collect()
}

/// `outpost outbox export` of a stopped gateway: the stored alerts.
fn exported_alerts(dir: &Path) -> Vec<Value> {
    let out = run_outpost(dir, &["outbox", "export", "--config", "outpost.toml"]);
    assert_eq!(out.code, Some(0), "export failed: {}", out.all());
    out.stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("export line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The seqs of `exported_alerts`.
fn exported(dir: &Path) -> Vec<u64> {
    exported_alerts(dir).iter().map(seq).collect()
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

/// After the gateway stopped, over what the subscriber received (checked
/// by `check_deliveries`): every seq ever created was delivered or is still
/// in the outbox (none lost), none both... except in-flight ones that were
/// delivered but not yet acknowledged (at most a window), and those are
/// the same alert in both.
fn assert_nothing_lost(dir: &Path, msgs: &[Msg]) {
    let (delivered, _) = check_deliveries(msgs);
    let (next_seq, _, list) = listed(dir);
    let stored: BTreeMap<u64, Value> = exported_alerts(dir)
        .into_iter()
        .map(|v| (seq(&v), v))
        .collect();
    let all: BTreeSet<u64> = delivered.iter().chain(stored.keys()).copied().collect();
    let missing = holes(&all, next_seq - 1);
    assert!(
        missing.is_empty(),
        "alerts lost (neither delivered nor stored): {missing:?}\n{list}"
    );
    assert!(
        all.iter().all(|s| *s < next_seq),
        "a seq beyond next_seq {next_seq}"
    );
    let both: Vec<u64> = delivered
        .iter()
        .filter(|s| stored.contains_key(s))
        .copied()
        .collect();
    assert!(
        both.len() <= WINDOW,
        "more than a window delivered and still stored"
    );
    for m in msgs.iter().filter(|m| m.is_alert()) {
        let v = m.json();
        if let Some(kept) = stored.get(&seq(&v)) {
            assert_eq!(
                kept,
                &v,
                "seq {} stored and delivered as two alerts",
                seq(&v)
            );
        }
    }
}

/// kill -9 at five moments while alerts stream out: every seq up to the
/// next one is delivered or still stored (none lost), and no seq is ever
/// reused by another alert (a counter rolled back with a lost tail would
/// send a delivered seq again as a new alert).
#[test]
fn kill_9_while_alerts_stream_loses_none_and_reuses_no_seq() {
    let mut st = stream(|_| {});
    for round in 1..=5 {
        // Kill at a different moment of each run, alerts in full flow.
        let n = delivered_count(&mut st.sub);
        wait_delivered(&mut st.sub, n + 10 * round, WAIT, "alerts before a kill");
        st.gw.kill9();
        st.gw.restart();
    }
    let n = delivered_count(&mut st.sub);
    wait_delivered(&mut st.sub, n + 10, WAIT, "alerts after the kills");
    st.gw.stop();
    assert_nothing_lost(st.dir.path(), st.sub.messages());
}

/// `flush = "always"`: an alert is on disk before it is published. A
/// kill -9 the moment an alert's PUBLISH leaves the gateway (a few
/// milliseconds after its write, well inside sled's own 500 ms background
/// flush, so a build that did not flush before publishing would lose it)
/// loses nothing: after five such kills the outbox holds every alert ever
/// published, byte for byte under its seq, and the next seq is past all of
/// them (no seq reused by a rolled-back counter). The outbox is read right
/// after the last kill, as a crash left it.
#[test]
fn every_published_alert_survives_a_kill_9_the_moment_it_is_published() {
    // Held: never acknowledged, so every published alert stays in the outbox.
    let mut rig = SerialRig::start_proxied(|p| p.hold_publishes(true));
    let rounds = 5;
    for round in 0..rounds {
        if round > 0 {
            rig.gw.restart();
        }
        rig.gw.wait_open(&rig.pty.device(), WAIT);
        let sensor = format!("k{round}");
        rig.pty.write_line(&reading(&sensor, 45.0));
        // Woken by the proxy itself, not by polling: the kill follows the
        // PUBLISH within a millisecond or so.
        rig.proxy()
            .wait(WAIT, &format!("the PUBLISH of {sensor}'s alert"), |t| {
                t.alerts()
                    .any(|p| alert_is(&p.msg, &sensor, "firing"))
                    .then_some(())
            });
        rig.gw.kill9();
    }

    // What was published, by seq; a seq published twice (resent after a
    // restart) must be the same alert both times.
    let mut published: BTreeMap<u64, Value> = BTreeMap::new();
    for m in rig.proxy().traffic().held_alerts() {
        let v = m.json();
        if let Some(before) = published.insert(seq(&v), v.clone()) {
            assert_eq!(before, v, "seq {} published as two alerts", seq(&v));
        }
    }
    assert_eq!(published.len(), rounds, "{published:#?}");
    let stored: BTreeMap<u64, Value> = exported_alerts(rig.dir.path())
        .into_iter()
        .map(|v| (seq(&v), v))
        .collect();
    for (s, alert) in &published {
        assert_eq!(
            stored.get(s),
            Some(alert),
            "alert {s} was published, then lost or replaced by a kill -9"
        );
    }
    let (next_seq, _, list) = listed(rig.dir.path());
    let last = *published.keys().next_back().unwrap();
    assert!(
        next_seq > last,
        "next seq {next_seq} reuses a published seq:\n{list}"
    );
}

/// A gateway streaming alerts (two noisy sensors) to a broker through a
/// proxy, and a subscriber to everything it publishes. Dropped in this order.
struct Stream {
    gw: Gateway,
    sub: Subscriber,
    proxy: Proxy,
    up: Mosquitto,
    dir: tempfile::TempDir,
}

/// Starts a `Stream`; `prepare` sets the proxy up before the gateway starts.
fn stream(prepare: impl FnOnce(&Proxy)) -> Stream {
    let sims = [("critical/a", "3ms"), ("info/b", "5ms")];
    stream_with(prepare, &sims, "flush = \"always\"", Launch::default())
}

/// A `Stream` with these simulated sensors and `[outbox]` lines.
fn stream_with(
    prepare: impl FnOnce(&Proxy),
    sims: &[(&str, &str)],
    outbox: &str,
    launch: Launch,
) -> Stream {
    let dir = tempdir();
    let up = Mosquitto::start();
    let proxy = Proxy::start(up.port());
    let sub = Subscriber::connect(up.port(), ALL);
    prepare(&proxy);
    let cfg = config(&proxy.url(), outbox, sims);
    let gw = launch.start(dir.path(), &cfg, RULES);
    Stream {
        gw,
        sub,
        proxy,
        up,
        dir,
    }
}

fn delivered_count(sub: &mut Subscriber) -> usize {
    check_deliveries(sub.messages()).0.len()
}

fn wait_delivered(sub: &mut Subscriber, at_least: usize, timeout: Duration, what: &str) {
    sub.wait_until(timeout, what, |msgs| {
        (check_deliveries(msgs).0.len() >= at_least).then_some(())
    });
}

/// Per connection that sent alerts: how many of them an earlier connection
/// had sent already (what its reconnect sent again).
fn resends(traffic: &proxy::Traffic) -> BTreeMap<usize, usize> {
    let mut sent_before = BTreeSet::new();
    let mut this_conn = BTreeSet::new();
    let mut conn = 0;
    let mut out = BTreeMap::new();
    for p in traffic.alerts() {
        if p.conn != conn {
            sent_before.append(&mut this_conn);
            conn = p.conn;
        }
        let s = seq(&p.msg.json());
        let again = out.entry(conn).or_insert(0);
        if sent_before.contains(&s) {
            *again += 1;
        }
        this_conn.insert(s);
    }
    out
}

/// The publish window: however many alerts wait, at most 64 are in flight
/// (published, not yet acknowledged) on a connection.
#[test]
fn at_most_64_alerts_are_in_flight() {
    let mut st = stream(|p| p.hold_pubacks(true));
    st.proxy.wait(WAIT, "a full window", |t| {
        t.max_alerts_in_flight()
            .iter()
            .any(|(_, n)| *n >= WINDOW)
            .then_some(())
    });
    // Many more alerts become publishable while the window is full.
    st.gw.wait_created(st.gw.alerts_created() + 3 * WINDOW);
    let in_flight = st.proxy.traffic().max_alerts_in_flight();
    assert!(
        in_flight.iter().all(|(_, n)| *n <= WINDOW),
        "more than {WINDOW} alerts in flight (connection, most): {in_flight:?}"
    );
    st.proxy.hold_pubacks(false);
    st.gw.stop();
}

/// Links cut while a full window is in flight: each reconnect sends that
/// window again (the alerts whose PUBACK never came), and no more, so a
/// reconnect brings at most 64 duplicates; nothing is lost.
#[test]
fn each_cut_resends_at_most_the_window_and_loses_none() {
    let mut st = stream(|_| {});
    wait_delivered(&mut st.sub, 20, WAIT, "alerts before the first cut");
    let cuts = 4;
    for i in 0..cuts {
        // PUBACKs held back until the window is full, then the link cut.
        st.proxy.hold_pubacks(true);
        let conn = st.proxy.accepted();
        st.proxy.wait(WAIT, "a full window before the cut", |t| {
            (t.alerts_in_flight(conn) >= WINDOW).then_some(())
        });
        st.proxy.cut();
        st.proxy.hold_pubacks(false);
        poll_until(WAIT, "the gateway to reconnect after a cut", || {
            (st.proxy.accepted() > conn).then_some(())
        });
        let n = delivered_count(&mut st.sub);
        wait_delivered(
            &mut st.sub,
            n + 10,
            WAIT,
            &format!("alerts after cut {}", i + 1),
        );
    }
    st.gw.stop();
    let again = resends(&st.proxy.traffic());
    let want: BTreeMap<usize, usize> = (1..=cuts + 1)
        .map(|c| (c, if c == 1 { 0 } else { WINDOW }))
        .collect();
    assert_eq!(again, want, "alerts sent again per connection");
    let (_, dups) = check_deliveries(st.sub.messages());
    assert!(
        dups <= WINDOW * cuts,
        "{dups} duplicates after {cuts} reconnects"
    );
    assert_nothing_lost(st.dir.path(), st.sub.messages());
}

/// A link that goes silent with its socket open (alerts in flight, nothing
/// acknowledged) is cut within 2 × keep_alive (10 s here), plus 2 s for the
/// 1 s check tick, the first 0.5 s backoff step and a loaded machine, and
/// replaced; nothing is lost.
#[test]
fn a_half_open_link_is_replaced_within_twice_the_keep_alive() {
    let mut st = stream(|_| {});
    wait_delivered(&mut st.sub, 20, WAIT, "alerts before the black hole");
    let accepted = st.proxy.accepted();
    let before = check_deliveries(st.sub.messages())
        .0
        .last()
        .copied()
        .unwrap_or(0);
    let t0 = Instant::now();
    st.proxy.blackhole();
    let bound = 2 * Duration::from_secs(5) + Duration::from_secs(2);
    let replaced = st
        .proxy
        .wait(Duration::from_secs(30), "a new connection", |t| {
            t.accepts().get(accepted).copied()
        });
    let took = replaced.duration_since(t0);
    eprintln!("half-open link replaced after {took:?}");
    assert!(
        took <= bound,
        "a half-open link held the outbox for {took:?} (bound {bound:?})"
    );
    st.sub.wait_until(WAIT, "alerts on the new link", |msgs| {
        let (set, _) = check_deliveries(msgs);
        set.range(before + 30..).next().map(|_| ())
    });
    st.gw.stop();
    assert_nothing_lost(st.dir.path(), st.sub.messages());
}

#[test]
fn a_broker_restart_in_the_middle_of_a_drain_loses_none() {
    let mut st = stream(|p| p.refuse(true));
    st.gw.wait_created(400);
    // A slow uplink (~100 alerts/s) so the drain is long enough to break.
    st.proxy.throttle(Some(40_000));
    st.proxy.refuse(false);
    wait_delivered(&mut st.sub, 60, WAIT, "the drain to start");
    let backlog = st.gw.alerts_created();
    let mid = delivered_count(&mut st.sub);
    assert!(mid < backlog, "the drain ended before the restart");
    st.up.stop();
    st.up.start_again();
    st.proxy.throttle(None);
    st.sub
        .wait_until(WAIT, "the whole backlog after the restart", |msgs| {
            let (set, _) = check_deliveries(msgs);
            (set.len() >= backlog && holes(&set, backlog as u64).is_empty()).then_some(())
        });
    st.gw.stop();
    let again = resends(&st.proxy.traffic());
    let reconnects = again.len() - 1;
    assert!(reconnects >= 1, "the restart did not break the link");
    assert!(
        again.values().all(|n| *n <= WINDOW),
        "alerts sent again per connection: {again:?}"
    );
    let (_, dups) = check_deliveries(st.sub.messages());
    assert!(
        dups <= WINDOW * reconnects,
        "{dups} duplicates after {reconnects} reconnects"
    );
    assert_nothing_lost(st.dir.path(), st.sub.messages());
}

/// The seqs in a `dropped` event's ranges.
fn dropped_seqs(e: &Value) -> Vec<u64> {
    e["ranges"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r[0].as_u64().unwrap()..=r[1].as_u64().unwrap())
        .collect()
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
    let max_bytes = 16 * 1024;
    let sims = [
        ("info/fast", "2ms"),
        ("warning/mid", "10ms"),
        ("critical/slow", "100ms"),
    ];
    let outbox = "flush = \"always\"\nmax_bytes = \"16KiB\"";
    // Upstream unreachable while the alerts pile up.
    let mut st = stream_with(|p| p.refuse(true), &sims, outbox, Launch::default());
    // About 350 bytes an alert: 16 KiB holds ~45; make ten times that.
    st.gw.wait_created(450);
    st.gw.stop();
    let (next_seq, bytes, list) = listed(st.dir.path());
    assert!(
        bytes <= max_bytes,
        "the outbox holds {bytes} > {max_bytes} bytes:\n{list}"
    );
    assert!(
        list.contains("critical 0)"),
        "a critical alert was dropped while info ones were there:\n{list}"
    );
    let stored: BTreeSet<u64> = exported(st.dir.path()).into_iter().collect();

    st.proxy.refuse(false);
    st.gw.restart();
    // The drops arrive as events; together with the delivered alerts they
    // account for every seq (a stored alert may still be dropped after the
    // restart, before the link is up: then it is in an event too).
    let drops = |evs: &[Value]| -> BTreeSet<u64> { evs.iter().flat_map(dropped_seqs).collect() };
    let (evs, delivered) = st
        .sub
        .wait_until(WAIT, "drop events and the stored alerts", |msgs| {
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
    let mut late = Subscriber::connect(st.up.port(), "outpost/test-gw/health");
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
    st.gw.stop();
}

#[test]
fn alerts_older_than_max_age_are_dropped_and_reported() {
    let mut st = stream_with(
        |p| p.refuse(true),
        &[("critical/a", "20ms")],
        "flush = \"always\"\nmax_age = \"1s\"",
        Launch::default().http(),
    );
    st.gw.wait_created(5);
    let first_batch = st.gw.alerts_created() as u64;
    // Offline until expiry (every second, oldest first) has dropped them.
    let port = st.gw.http_port();
    poll_until(WAIT, "the first alerts to age out", || {
        let m = http::get(port, "/metrics").body;
        let dropped = http::sample(&m, r#"outpost_outbox_dropped_total{severity="critical"}"#)?;
        (dropped >= first_batch as f64).then_some(())
    });
    st.proxy.refuse(false);
    let age_drops = |msgs: &[Msg]| -> BTreeSet<u64> {
        events(msgs)
            .iter()
            .filter(|e| e["by_reason"]["max_age"].as_u64() > Some(0))
            .flat_map(|e| {
                // Age drops any severity: every one of these is critical.
                assert_eq!(e["by_severity"]["critical"], e["count"], "{e}");
                dropped_seqs(e)
            })
            .collect()
    };
    let dropped = st
        .sub
        .wait_until(WAIT, "max_age drop events for the first alerts", |msgs| {
            let d = age_drops(msgs);
            (1..=first_batch).all(|s| d.contains(&s)).then_some(d)
        });
    st.gw.stop();
    let (set, _) = check_deliveries(st.sub.messages());
    let dropped: BTreeSet<u64> = dropped
        .union(&age_drops(st.sub.messages()))
        .copied()
        .collect();
    assert!(set.is_disjoint(&dropped), "an expired alert was delivered");
}

#[test]
fn outbox_commands_refuse_a_running_gateway_and_inspect_a_stopped_one() {
    let sims = [("warning/a", "20ms")];
    let outbox = "flush = \"always\"";
    let mut st = stream_with(|p| p.refuse(true), &sims, outbox, Launch::default());
    st.gw.wait_created(5);
    for cmd in ["list", "export", "purge"] {
        let out = run_outpost(st.dir.path(), &["outbox", cmd, "--config", "outpost.toml"]);
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
    st.gw.stop();
    let (next_seq, _, list) = listed(st.dir.path());
    let stored = exported(st.dir.path());
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
    let out = run_outpost(
        st.dir.path(),
        &["outbox", "purge", "--config", "outpost.toml"],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout
            .contains(&format!("purged {} alerts", stored.len())),
        "{}",
        out.stdout
    );
    assert!(exported(st.dir.path()).is_empty());
    let (after, _, list) = listed(st.dir.path());
    assert_eq!(after, next_seq, "seqs are not reused after a purge");
    assert!(
        list.contains("purged"),
        "the purge waits as an event:\n{list}"
    );

    // Once online, subscribers learn about the purge.
    st.proxy.refuse(false);
    st.gw.restart();
    let ev = st
        .sub
        .wait_for(WAIT, "the purged event", |m| m.topic.ends_with("/events"))
        .json();
    assert_eq!(ev["event"], "purged", "{ev}");
    assert_eq!(ev["count"].as_u64(), Some(stored.len() as u64));
    assert_eq!(ev["ranges"], serde_json::json!([[1, next_seq - 1]]));
    st.gw.stop();
    let missing = run_outpost(st.dir.path(), &["outbox", "list", "--config", "nope.toml"]);
    assert_eq!(missing.code, Some(2), "{}", missing.all());
}
