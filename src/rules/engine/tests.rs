use std::collections::BTreeMap;

use super::*;
use crate::rules::message;
use crate::rules::{Action, Aggregate, AlertState, Condition, Glob, Reason};

/// Wall time runs ahead of monotonic time by this much in tests.
const WALL: i64 = 1_700_000_000_000;

fn now(t: u64) -> Now {
    Now {
        mono_ms: t,
        wall_ms: WALL + t as i64,
    }
}

fn rule(id: &str, sensor: &str, condition: Condition) -> Rule {
    Rule::plain(id, sensor, "temp", condition)
}

fn above(threshold: f64) -> Condition {
    Condition::Above {
        threshold,
        clear: None,
    }
}

fn reading(sensor: &str, metric: &str, value: f64) -> Reading {
    Reading {
        sensor: sensor.to_string(),
        metric: metric.to_string(),
        value,
        ts_ms: 0,
    }
}

/// One input: a reading of metric `temp`, a reading of another metric,
/// or a tick; each at a monotonic ms.
#[derive(Debug, Clone)]
enum Ev {
    R(u64, &'static str, f64),
    M(u64, &'static str, &'static str, f64),
    T(u64),
}

fn feed(engine: &mut Engine, ev: &Ev, out: &mut Vec<AlertDraft>) {
    match *ev {
        Ev::R(t, s, v) => engine.on_reading(&reading(s, "temp", v), now(t), out),
        Ev::M(t, s, m, v) => engine.on_reading(&reading(s, m, v), now(t), out),
        Ev::T(t) => engine.tick(now(t), out),
    }
}

/// `"<mono ms> <state|repeat> <rule> <sensor> <value> <threshold>"`.
fn summary(a: &AlertDraft) -> String {
    let state = match (a.reason, a.state) {
        (Reason::Repeat, _) => "repeat",
        (_, AlertState::Firing) => "firing",
        (_, AlertState::Resolved) => "resolved",
    };
    format!(
        "{} {state} {} {} {} {}",
        a.ts_ms - WALL,
        a.rule,
        a.sensor,
        message::format_number(a.value),
        message::format_number(a.threshold)
    )
}

/// Feeds the events to a new engine and compares the alerts it emits.
fn check(rules: Vec<Rule>, events: &[Ev], expected: &[&str]) -> Engine {
    let mut engine = Engine::new(rules);
    let mut out = Vec::new();
    for ev in events {
        feed(&mut engine, ev, &mut out);
    }
    let got: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(got, expected, "events {events:?}");
    engine
}

#[test]
fn above_fires_only_strictly_over_its_threshold() {
    use Ev::R;
    let r = || vec![rule("hot", "t1", above(30.0))];
    check(r(), &[R(0, "t1", 30.0), R(1, "t1", 29.999)], &[]);
    check(
        r(),
        &[R(0, "t1", 30.0), R(1, "t1", 30.001)],
        &["1 firing hot t1 30.001 30"],
    );
}

#[test]
fn above_resolves_at_its_threshold_when_clear_is_not_set() {
    use Ev::R;
    check(
        vec![rule("hot", "t1", above(30.0))],
        &[
            R(0, "t1", 31.0),
            R(1, "t1", 30.5),
            R(2, "t1", 30.0),
            R(3, "t1", 29.0),
        ],
        &["0 firing hot t1 31 30", "2 resolved hot t1 30 30"],
    );
}

#[test]
fn below_fires_only_strictly_under_and_resolves_at_its_threshold() {
    use Ev::R;
    let cond = Condition::Below {
        threshold: 5.0,
        clear: None,
    };
    check(
        vec![rule("cold", "t1", cond)],
        &[
            R(0, "t1", 5.0),
            R(1, "t1", 5.001),
            R(2, "t1", 4.999),
            R(3, "t1", 4.0),
            R(4, "t1", 5.0),
        ],
        &["2 firing cold t1 4.999 5", "4 resolved cold t1 5 5"],
    );
}

#[test]
fn outside_fires_past_either_bound_and_reports_the_bound_crossed() {
    use Ev::R;
    let cond = Condition::Outside {
        lo: 10.0,
        hi: 20.0,
        clear: None,
    };
    check(
        vec![rule("range", "t1", cond)],
        &[
            R(0, "t1", 10.0),
            R(1, "t1", 20.0),
            R(2, "t1", 20.1),
            R(3, "t1", 9.0),
            R(4, "t1", 20.0),
            R(5, "t1", 9.9),
            R(6, "t1", 10.0),
        ],
        &[
            "2 firing range t1 20.1 20",
            "4 resolved range t1 20 20",
            "5 firing range t1 9.9 10",
            "6 resolved range t1 10 10",
        ],
    );
}

#[test]
fn hysteresis_holds_firing_until_the_clear_value_and_does_not_refire_in_the_band() {
    use Ev::R;
    let cond = Condition::Above {
        threshold: 30.0,
        clear: Some(28.0),
    };
    check(
        vec![rule("hot", "t1", cond)],
        &[
            R(0, "t1", 31.0),
            R(1, "t1", 29.0),
            R(2, "t1", 28.001),
            R(3, "t1", 28.0),
            R(4, "t1", 29.5),
            R(5, "t1", 30.0),
            R(6, "t1", 30.5),
        ],
        &[
            "0 firing hot t1 31 30",
            "3 resolved hot t1 28 30",
            "6 firing hot t1 30.5 30",
        ],
    );
}

#[test]
fn outside_hysteresis_uses_the_clear_range() {
    use Ev::R;
    let cond = Condition::Outside {
        lo: 10.0,
        hi: 20.0,
        clear: Some((12.0, 18.0)),
    };
    check(
        vec![rule("range", "t1", cond)],
        &[
            R(0, "t1", 21.0),
            R(1, "t1", 19.0),
            R(2, "t1", 11.0),
            R(3, "t1", 18.0),
        ],
        &["0 firing range t1 21 20", "3 resolved range t1 18 20"],
    );
}

fn with_for(mut r: Rule, for_ms: u64) -> Rule {
    r.for_ms = for_ms;
    r
}

#[test]
fn for_fires_exactly_when_the_condition_has_held_that_long() {
    use Ev::{R, T};
    let engine = check(
        vec![with_for(rule("hot", "t1", above(30.0)), 1000)],
        &[
            R(100, "t1", 31.0),
            T(500),
            R(900, "t1", 32.0),
            T(1099),
            T(1100),
            T(1200),
        ],
        &["1100 firing hot t1 32 30"],
    );
    assert_eq!(
        engine.firing().first().map(|f| f.since_ms),
        Some(WALL + 100)
    );
}

#[test]
fn for_pending_is_reset_by_a_reading_that_no_longer_breaches() {
    use Ev::{R, T};
    check(
        vec![with_for(rule("hot", "t1", above(30.0)), 1000)],
        &[
            R(0, "t1", 31.0),
            R(500, "t1", 30.0),
            R(600, "t1", 31.0),
            T(1000),
            T(1599),
            T(1600),
        ],
        &["1600 firing hot t1 31 30"],
    );
}

#[test]
fn for_elapsed_fires_on_the_next_reading_without_a_tick() {
    use Ev::R;
    check(
        vec![with_for(rule("hot", "t1", above(30.0)), 1000)],
        &[R(0, "t1", 31.0), R(1000, "t1", 31.5), R(1500, "t1", 29.0)],
        &["1000 firing hot t1 31 30", "1500 resolved hot t1 29 30"],
    );
}

#[test]
fn for_that_elapsed_before_a_late_clearing_reading_fires_then_resolves() {
    use Ev::R;
    // The condition held from 0 to 2000 (the last value holds until the
    // next reading), so the alert is due whether or not a tick ran.
    check(
        vec![with_for(rule("hot", "t1", above(30.0)), 1000)],
        &[R(0, "t1", 31.0), R(2000, "t1", 29.0)],
        &["2000 firing hot t1 31 30", "2000 resolved hot t1 29 30"],
    );
}

#[test]
fn repeat_resends_firing_while_it_fires_and_stops_when_resolved() {
    use Ev::{R, T};
    let mut r = rule("hot", "t1", above(30.0));
    r.repeat_ms = Some(1000);
    check(
        vec![r],
        &[
            R(0, "t1", 31.0),
            T(999),
            T(1000),
            R(1500, "t1", 33.0),
            T(2500),
            T(3000),
            T(3499),
            R(3600, "t1", 20.0),
            T(5000),
        ],
        &[
            "0 firing hot t1 31 30",
            "1000 repeat hot t1 31 30",
            "2500 repeat hot t1 33 30",
            "3600 resolved hot t1 20 30",
        ],
    );
}

#[test]
fn repeats_carry_no_actions_but_transitions_do() {
    let mut r = rule("hot", "t1", above(30.0));
    r.repeat_ms = Some(1000);
    r.actions = vec![Action {
        broker: "local".to_string(),
        topic: "fan/set".to_string(),
        on_firing: Some("{\"state\":\"ON\"}".to_string()),
        on_resolved: Some("{\"state\":\"OFF\"}".to_string()),
    }];
    let mut e = Engine::new(vec![r]);
    let mut out = Vec::new();
    e.on_reading(&reading("t1", "temp", 31.0), now(0), &mut out);
    e.tick(now(1000), &mut out);
    e.on_reading(&reading("t1", "temp", 1.0), now(1100), &mut out);
    let payloads: Vec<Vec<&str>> = out
        .iter()
        .map(|a| a.actions.iter().map(|p| p.payload.as_str()).collect())
        .collect();
    assert_eq!(
        payloads,
        vec![
            vec!["{\"state\":\"ON\"}"],
            vec![],
            vec!["{\"state\":\"OFF\"}"]
        ]
    );
    assert_eq!(
        out.first()
            .and_then(|a| a.actions.first())
            .map(|p| p.topic.as_str()),
        Some("fan/set")
    );
}

fn rate(above: bool, per_minute: f64) -> Condition {
    let window_ms = 60_000;
    if above {
        Condition::RateAbove {
            per_minute,
            window_ms,
            clear: None,
        }
    } else {
        Condition::RateBelow {
            per_minute,
            window_ms,
            clear: None,
        }
    }
}

#[test]
fn rate_above_compares_the_change_per_minute_over_the_window() {
    use Ev::R;
    check(
        vec![rule("rising", "t1", rate(true, 5.0))],
        &[
            R(0, "t1", 10.0),
            R(30_000, "t1", 12.5), // 5/min: at the threshold, no
            R(60_000, "t1", 15.5), // 5.5/min over 60 s
            R(90_000, "t1", 16.0), // 3.5/min over 30..90 s
        ],
        &[
            "60000 firing rising t1 5.5 5",
            "90000 resolved rising t1 3.5 5",
        ],
    );
}

#[test]
fn rate_below_fires_on_a_fast_drop() {
    use Ev::R;
    check(
        vec![rule("falling", "t1", rate(false, -2.0))],
        &[
            R(0, "t1", 10.0),
            R(30_000, "t1", 9.0),
            R(60_000, "t1", 7.9),
            R(120_000, "t1", 7.9),
        ],
        &[
            "60000 firing falling t1 -2.1 -2",
            "120000 resolved falling t1 0 -2",
        ],
    );
}

#[test]
fn rate_ignores_samples_spanning_less_than_half_the_window() {
    use Ev::R;
    check(
        vec![rule("rising", "t1", rate(true, 1.0))],
        &[R(0, "t1", 10.0), R(200, "t1", 12.0), R(29_999, "t1", 12.0)],
        &[],
    );
    check(
        vec![rule("rising", "t1", rate(true, 1.0))],
        &[R(0, "t1", 10.0), R(30_000, "t1", 12.0)],
        &["30000 firing rising t1 4 1"],
    );
}

#[test]
fn rate_needs_two_samples_spanning_some_time() {
    use Ev::R;
    check(
        vec![rule("rising", "t1", rate(true, 0.0))],
        &[
            R(0, "t1", 10.0),
            R(0, "t1", 50.0),
            R(70_000, "t1", 99.0),
            R(200_000, "t1", 500.0),
        ],
        &[],
    );
}

fn agg(mut r: Rule, a: Aggregate, window_ms: u64) -> Rule {
    r.aggregate = Some((a, window_ms));
    r
}

#[test]
fn aggregate_avg_tests_the_mean_of_the_window() {
    use Ev::R;
    check(
        vec![agg(rule("hot", "t1", above(30.0)), Aggregate::Avg, 10_000)],
        &[
            R(0, "t1", 20.0),
            R(5_000, "t1", 40.0),  // avg 30: no
            R(10_000, "t1", 31.0), // avg 30.333
            R(16_000, "t1", 20.0), // window 6..16 s: avg 25.5
        ],
        &[
            "10000 firing hot t1 30.333 30",
            "16000 resolved hot t1 25.5 30",
        ],
    );
}

#[test]
fn aggregate_min_fires_only_when_the_whole_window_is_over() {
    use Ev::R;
    check(
        vec![agg(rule("hot", "t1", above(30.0)), Aggregate::Min, 10_000)],
        &[
            R(0, "t1", 20.0),
            R(5_000, "t1", 40.0),
            R(10_000, "t1", 35.0),
            R(10_001, "t1", 36.0),
        ],
        &["10001 firing hot t1 35 30"],
    );
}

#[test]
fn aggregate_max_keeps_firing_while_any_sample_in_the_window_is_over() {
    use Ev::R;
    check(
        vec![agg(rule("hot", "t1", above(30.0)), Aggregate::Max, 10_000)],
        &[
            R(0, "t1", 31.0),
            R(5_000, "t1", 20.0),
            R(10_000, "t1", 20.0),
            R(10_001, "t1", 20.0),
        ],
        &["0 firing hot t1 31 30", "10001 resolved hot t1 20 30"],
    );
}

fn silent(sensor: &str, after_ms: u64) -> Rule {
    rule("quiet", sensor, Condition::Silent { after_ms })
}

#[test]
fn silent_fires_after_the_gap_and_the_next_reading_resolves() {
    use Ev::{R, T};
    let engine = check(
        vec![silent("room/*", 10_000)],
        &[
            T(0),
            T(50_000),
            R(1000, "room/a", 1.0),
            T(10_999),
            T(11_000),
            T(12_000),
            R(15_500, "room/a", 2.0),
        ],
        &[
            "11000 firing quiet room/a 10 10",
            "15500 resolved quiet room/a 14.5 10",
        ],
    );
    assert!(engine.firing().is_empty());
}

#[test]
fn silent_on_a_literal_sensor_fires_even_if_it_was_never_seen() {
    use Ev::T;
    let engine = check(
        vec![silent("room/a", 10_000)],
        &[T(500), T(10_499), T(10_500)],
        &["10500 firing quiet room/a 10 10"],
    );
    assert_eq!(
        engine.firing().first().map(|f| f.since_ms),
        Some(WALL + 500)
    );
}

#[test]
fn silent_repeats_with_the_current_silence() {
    use Ev::T;
    let mut r = silent("room/a", 10_000);
    r.repeat_ms = Some(60_000);
    check(
        vec![r],
        &[T(0), T(10_000), T(70_000)],
        &[
            "10000 firing quiet room/a 10 10",
            "70000 repeat quiet room/a 70 10",
        ],
    );
}

#[test]
fn non_finite_values_are_ignored_entirely() {
    use Ev::{R, T};
    let engine = check(
        vec![
            rule("hot", "t1", above(30.0)),
            silent("t1", 1000),
            rule(
                "cold",
                "t1",
                Condition::Below {
                    threshold: 0.0,
                    clear: None,
                },
            ),
        ],
        &[
            R(0, "t1", f64::NAN),
            R(1, "t1", f64::INFINITY),
            R(2, "t1", f64::NEG_INFINITY),
            T(1000),
            R(1500, "t1", f64::NAN),
        ],
        &["1000 firing quiet t1 1 1"],
    );
    assert_eq!(engine.stats().pairs, 1);
}

#[test]
fn a_nan_reading_does_not_reset_pending() {
    use Ev::{R, T};
    check(
        vec![with_for(rule("hot", "t1", above(30.0)), 1000)],
        &[R(0, "t1", 31.0), R(500, "t1", f64::NAN), T(1000)],
        &["1000 firing hot t1 31 30"],
    );
}

#[test]
fn sensors_under_one_glob_keep_separate_states() {
    use Ev::R;
    check(
        vec![rule("hot", "gh/*", above(30.0))],
        &[
            R(0, "gh/a", 31.0),
            R(1, "gh/b", 29.0),
            R(2, "gh/b", 32.0),
            R(3, "gh/a", 29.0),
            R(4, "other", 99.0),
            R(5, "gh/b", 33.0),
        ],
        &[
            "0 firing hot gh/a 31 30",
            "2 firing hot gh/b 32 30",
            "3 resolved hot gh/a 29 30",
        ],
    );
}

#[test]
fn metrics_of_one_sensor_keep_separate_states_under_a_metric_glob() {
    use Ev::M;
    let mut r = rule("hot", "t1", above(30.0));
    r.metric = Glob::new("*temp");
    check(
        vec![r],
        &[
            M(0, "t1", "air.temp", 31.0),
            M(1, "t1", "soil.temp", 31.0),
            M(2, "t1", "humidity", 99.0),
            M(3, "t1", "air.temp", 1.0),
        ],
        &[
            "0 firing hot t1 31 30",
            "1 firing hot t1 31 30",
            "3 resolved hot t1 1 30",
        ],
    );
}

#[test]
fn the_index_finds_literal_prefixed_and_leading_star_rules() {
    use Ev::M;
    let mut metric_glob = rule("e", "*", above(0.0));
    metric_glob.metric = Glob::new("*");
    check(
        vec![
            rule("a", "gh/t1", above(0.0)),
            rule("b", "gh/*", above(0.0)),
            rule("c", "g*", above(0.0)),
            rule("d", "*1", above(0.0)),
            metric_glob,
            rule("f", "gh/t2", above(0.0)),
        ],
        &[M(0, "gh/t1", "temp", 1.0), M(1, "x", "rh", 1.0)],
        &[
            "0 firing a gh/t1 1 0",
            "0 firing b gh/t1 1 0",
            "0 firing c gh/t1 1 0",
            "0 firing d gh/t1 1 0",
            "0 firing e gh/t1 1 0",
            "1 firing e x 1 0",
        ],
    );
}

#[test]
fn alerts_carry_since_labels_severity_and_a_default_message() {
    let mut r = with_for(rule("hot", "gh/*", above(30.0)), 1000);
    r.labels
        .insert("room".to_string(), "greenhouse".to_string());
    r.severity = Severity::Critical;
    let mut e = Engine::new(vec![r]);
    let mut out = Vec::new();
    e.on_reading(&reading("gh/t1", "temp", 31.2), now(100), &mut out);
    e.tick(now(1100), &mut out);
    e.on_reading(&reading("gh/t1", "temp", 25.0), now(2000), &mut out);
    let [fired, resolved] = out.as_slice() else {
        panic!("expected two alerts, got {out:?}");
    };
    assert_eq!(fired.message, "gh/t1 temp is 31.2, above 30");
    assert_eq!(
        resolved.message,
        "gh/t1 temp is back to 25, no longer above 30"
    );
    assert_eq!((fired.since_ms, fired.ts_ms), (WALL + 100, WALL + 1100));
    assert_eq!(
        (resolved.since_ms, resolved.ts_ms),
        (WALL + 100, WALL + 2000)
    );
    assert_eq!(fired.severity, Severity::Critical);
    assert_eq!(
        resolved.labels.get("room").map(String::as_str),
        Some("greenhouse")
    );
}

#[test]
fn a_custom_template_renders_every_field() {
    let mut r = rule("hot", "gh/*", above(30.0));
    r.message = Some(
        "{rule}/{severity}/{state}: {sensor} {metric} {value:.2} > {threshold} in {labels.room}"
            .to_string(),
    );
    r.labels.insert("room".to_string(), "gh".to_string());
    let mut e = Engine::new(vec![r]);
    let mut out = Vec::new();
    e.on_reading(&reading("gh/t1", "temp", 31.0), now(0), &mut out);
    assert_eq!(
        out.first().map(|a| a.message.as_str()),
        Some("hot/warning/firing: gh/t1 temp 31.00 > 30 in gh")
    );
}

#[test]
fn default_messages_are_worded_for_each_condition() {
    let cases = [
        (
            Condition::Below {
                threshold: 5.0,
                clear: None,
            },
            4.0,
            "t1 temp is 4, below 5",
        ),
        (
            Condition::Outside {
                lo: 5.0,
                hi: 10.0,
                clear: None,
            },
            11.0,
            "t1 temp is 11, above 10 (range 5..10)",
        ),
        (
            Condition::Outside {
                lo: 5.0,
                hi: 10.0,
                clear: None,
            },
            4.0,
            "t1 temp is 4, below 5 (range 5..10)",
        ),
    ];
    for (cond, value, expected) in cases {
        let mut e = Engine::new(vec![rule("r", "t1", cond)]);
        let mut out = Vec::new();
        e.on_reading(&reading("t1", "temp", value), now(0), &mut out);
        assert_eq!(out.first().map(|a| a.message.as_str()), Some(expected));
    }
}

#[test]
fn next_deadline_reports_the_earliest_timer() {
    let mut r = with_for(rule("hot", "t1", above(30.0)), 1000);
    r.repeat_ms = Some(5000);
    let mut e = Engine::new(vec![r, silent("t2", 20_000)]);
    let mut out = Vec::new();
    assert_eq!(e.next_deadline(), None);
    e.tick(now(100), &mut out);
    assert_eq!(e.next_deadline(), Some(20_100));
    e.on_reading(&reading("t1", "temp", 31.0), now(200), &mut out);
    assert_eq!(e.next_deadline(), Some(1200));
    e.tick(now(1200), &mut out);
    assert_eq!(e.next_deadline(), Some(6200));
    // Resolving leaves a stale (earlier) deadline: a lower bound, so a
    // tick then finds nothing due and computes the exact next one.
    e.on_reading(&reading("t1", "temp", 1.0), now(1300), &mut out);
    assert_eq!(e.next_deadline(), Some(6200));
    e.tick(now(6200), &mut out);
    assert_eq!(e.next_deadline(), Some(20_100));
    assert_eq!(out.len(), 2);
}

#[test]
fn reload_keeps_unchanged_rules_firing_and_resolves_removed_and_changed_ones() {
    let hot = rule("hot", "t1", above(30.0));
    let warm = rule("warm", "t1", above(20.0));
    let gone = rule("gone", "t1", above(10.0));
    let mut e = Engine::new(vec![hot.clone(), warm.clone(), gone]);
    let mut out = Vec::new();
    e.on_reading(&reading("t1", "temp", 31.0), now(0), &mut out);
    assert_eq!(out.len(), 3);
    out.clear();

    let warm2 = rule("warm", "t1", above(25.0));
    e.reload(
        vec![warm2, silent("t9", 1000), hot.clone()],
        now(10),
        &mut out,
    );
    let got: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        ["10 resolved warm t1 31 20", "10 resolved gone t1 31 10"]
    );
    assert!(out.iter().all(|a| a.reason == Reason::RuleChanged));
    assert_eq!(
        out.first().map(|a| a.message.as_str()),
        Some("t1 temp: resolved because rule warm was removed or changed")
    );
    assert_eq!(e.rule_count(), 3);
    let firing: Vec<String> = e.firing().into_iter().map(|f| f.rule).collect();
    assert_eq!(firing, ["hot"]);

    out.clear();
    // The unchanged rule stays firing (no re-fire) and still resolves;
    // the changed one starts afresh; the new silent rule was armed at 10.
    e.on_reading(&reading("t1", "temp", 31.0), now(20), &mut out);
    e.tick(now(1010), &mut out);
    e.on_reading(&reading("t1", "temp", 1.0), now(1100), &mut out);
    let got: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            "20 firing warm t1 31 25",
            "1010 firing quiet t9 1 1",
            "1100 resolved warm t1 1 25",
            "1100 resolved hot t1 1 30"
        ]
    );
}

fn json_round_trip(snap: &EngineSnapshot) -> EngineSnapshot {
    let text = serde_json::to_string(snap).unwrap_or_default();
    match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(err) => panic!("snapshot did not round-trip: {err}\n{text}"),
    }
}

#[test]
fn restore_keeps_firing_pairs_without_refiring_and_resolves_them_later() {
    let mut r = rule("hot", "gh/*", above(30.0));
    r.repeat_ms = Some(10_000);
    let mut e = Engine::new(vec![r.clone()]);
    let mut out = Vec::new();
    e.on_reading(&reading("gh/a", "temp", 31.0), now(1000), &mut out);
    assert_eq!(out.len(), 1);
    let snap = json_round_trip(&e.snapshot(now(5000)));

    // New boot: monotonic time restarts near zero.
    out.clear();
    let mut e = Engine::restore(
        vec![r],
        Limits::default(),
        snap,
        Now {
            mono_ms: 200,
            wall_ms: WALL + 90_000,
        },
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(e.firing().len(), 1);
    e.on_reading(
        &reading("gh/a", "temp", 32.0),
        Now {
            mono_ms: 300,
            wall_ms: WALL + 90_100,
        },
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    // 4 s of the repeat period had passed at the snapshot: 6 s remain.
    assert_eq!(e.next_deadline(), Some(6200));
    e.on_reading(
        &reading("gh/a", "temp", 20.0),
        Now {
            mono_ms: 400,
            wall_ms: WALL + 90_200,
        },
        &mut out,
    );
    let [resolved] = out.as_slice() else {
        panic!("expected one alert, got {out:?}");
    };
    assert_eq!(resolved.state, AlertState::Resolved);
    assert_eq!(resolved.since_ms, WALL + 1000);
    assert_eq!(resolved.value, 20.0);
}

#[test]
fn a_pending_timer_continues_after_restore_with_the_time_already_elapsed() {
    let r = with_for(rule("hot", "t1", above(30.0)), 10_000);
    let mut e = Engine::new(vec![r.clone()]);
    let mut out = Vec::new();
    e.on_reading(&reading("t1", "temp", 31.0), now(1000), &mut out);
    let snap = json_round_trip(&e.snapshot(now(7000)));
    let mut e = Engine::restore(vec![r], Limits::default(), snap, now(100), &mut out);
    e.tick(now(4099), &mut out);
    assert!(out.is_empty());
    assert_eq!(e.next_deadline(), Some(4100));
    e.tick(now(4100), &mut out);
    let got: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(got, ["4100 firing hot t1 31 30"]);
    assert_eq!(out.first().map(|a| a.since_ms), Some(WALL + 1000));
}

#[test]
fn restore_resolves_firing_pairs_of_removed_or_changed_rules() {
    let hot = rule("hot", "t1", above(30.0));
    let gone = rule("gone", "t1", above(10.0));
    let mut e = Engine::new(vec![hot.clone(), gone, silent("t2", 1000)]);
    let mut out = Vec::new();
    e.on_reading(&reading("t1", "temp", 31.0), now(0), &mut out);
    e.tick(now(1000), &mut out);
    assert_eq!(out.len(), 3);
    let snap = json_round_trip(&e.snapshot(now(2000)));
    out.clear();
    let hot2 = rule("hot", "t1", above(35.0));
    let e = Engine::restore(
        vec![hot2, silent("t2", 1000)],
        Limits::default(),
        snap,
        now(10),
        &mut out,
    );
    let got: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        ["10 resolved hot t1 31 30", "10 resolved gone t1 31 10"]
    );
    let firing: Vec<String> = e.firing().into_iter().map(|f| f.rule).collect();
    assert_eq!(firing, ["quiet"]);
}

#[test]
fn a_snapshot_of_another_version_is_ignored() {
    let mut snap = Engine::new(vec![]).snapshot(now(0));
    snap.version = 99;
    let mut out = Vec::new();
    let e = Engine::restore(
        vec![silent("t1", 5)],
        Limits::default(),
        snap,
        now(0),
        &mut out,
    );
    assert_eq!((out.len(), e.stats().pairs), (0, 1));
}

#[test]
fn time_running_backwards_does_not_panic_or_fire_early() {
    use Ev::{R, T};
    let mut r = with_for(
        agg(rule("hot", "t1", above(30.0)), Aggregate::Avg, 1000),
        1000,
    );
    r.repeat_ms = Some(1);
    check(
        vec![r, rule("rate", "t1", rate(true, 1.0)), silent("t1", 10)],
        &[
            R(u64::MAX, "t1", 31.0),
            R(5000, "t1", 31.0),
            T(0),
            R(0, "t1", 1e308),
            R(1, "t1", -1e308),
            T(u64::MAX),
        ],
        // Pending started at the latest instant seen, so `for` has not
        // elapsed; the rate is infinite and ignored; silence is measured
        // from the reading at 1. (The helper's wall time wraps to -1.)
        &["-1 firing quiet t1 9223372036854776 0.01"],
    );
}

/// Applies `changes` to a store the way the outbox does (last write wins).
fn apply(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: Vec<Change>) {
    for (k, v) in changes {
        match v {
            Some(v) => store.insert(k, v),
            None => store.remove(&k),
        };
    }
}

#[test]
fn the_pair_that_fired_is_in_the_emitted_changes_and_a_restore_from_them_neither_refires_nor_forgets()
 {
    let hot = rule(
        "hot",
        "*",
        Condition::Above {
            threshold: 30.0,
            clear: Some(28.0),
        },
    );
    let mut e = Engine::new(vec![hot.clone()]);
    let mut out = Vec::new();
    let mut store = BTreeMap::new();
    e.on_reading(&reading("t1", "temp", 31.0), now(0), &mut out);
    e.on_reading(&reading("t2", "temp", 20.0), now(0), &mut out);
    let changes = e.state_changes(Changes::Emitted, now(0));
    let keys: Vec<Vec<u8>> = changes.iter().map(|c| c.0.clone()).collect();
    assert!(keys.contains(&state::rule_key("hot")));
    assert!(keys.contains(&state::pair_key("hot", "t1", "temp")));
    assert_eq!(keys.len(), 2, "only the rule and the pair that fired");
    apply(&mut store, changes);
    // Crash here; restart.
    let mut out = Vec::new();
    let mut r = Engine::restore_state(
        vec![hot.clone()],
        Limits::default(),
        &store,
        now(5_000),
        &mut out,
    );
    assert!(out.is_empty(), "no re-fire: {out:?}");
    assert_eq!(r.firing().len(), 1);
    r.on_reading(&reading("t1", "temp", 27.0), now(6_000), &mut out);
    assert_eq!(out.len(), 1, "and it resolves");
    assert_eq!(out[0].state, AlertState::Resolved);
    // The resolved pair holds nothing: its key goes.
    let changes = r.state_changes(Changes::Emitted, now(6_000));
    assert!(
        changes.contains(&(state::pair_key("hot", "t1", "temp"), None)),
        "{changes:?}"
    );
}

#[test]
fn a_changed_rule_resolves_its_stored_firing_pairs_at_restore_and_its_keys_go() {
    let hot = rule("hot", "*", above(30.0));
    let mut e = Engine::new(vec![hot.clone()]);
    let mut out = Vec::new();
    e.on_reading(&reading("t1", "temp", 31.0), now(0), &mut out);
    let mut store = BTreeMap::new();
    apply(&mut store, e.state_changes(Changes::Full, now(0)));
    let changed = rule("hot", "*", above(35.0));
    let mut out = Vec::new();
    let mut r = Engine::restore_state(
        vec![changed.clone()],
        Limits::default(),
        &store,
        now(1_000),
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].state, out[0].reason),
        (AlertState::Resolved, Reason::RuleChanged)
    );
    apply(&mut store, r.state_changes(Changes::Dirty, now(1_000)));
    assert!(!store.contains_key(&state::pair_key("hot", "t1", "temp")));
    assert_eq!(
        store.get(&state::rule_key("hot")),
        Some(&serde_json::to_vec(&changed).unwrap())
    );
    // A rule removed by a reload takes its definition and pairs along.
    r.on_reading(&reading("t9", "temp", 36.0), now(2_000), &mut out);
    apply(&mut store, r.state_changes(Changes::Emitted, now(2_000)));
    assert!(store.contains_key(&state::pair_key("hot", "t9", "temp")));
    r.reload(Vec::new(), now(3_000), &mut out);
    apply(&mut store, r.state_changes(Changes::Dirty, now(3_000)));
    assert!(store.is_empty(), "{store:?}");
}

#[test]
fn a_dirty_cut_reports_each_touched_pair_once_and_only_a_full_cut_carries_window_samples() {
    let mut avg = rule("avg", "*", above(30.0));
    avg.aggregate = Some((Aggregate::Avg, 60_000));
    let mut e = Engine::new(vec![avg]);
    let mut out = Vec::new();
    for i in 0..5u32 {
        e.on_reading(
            &reading("t1", "temp", 20.0 + f64::from(i)),
            now(u64::from(i) * 100),
            &mut out,
        );
    }
    let dirty = e.state_changes(Changes::Dirty, now(500));
    let pair = dirty
        .iter()
        .find(|c| c.0 == state::pair_key("avg", "t1", "temp"))
        .and_then(|c| c.1.clone())
        .expect("the touched pair");
    let ps: PairSnapshot = serde_json::from_slice(&pair).unwrap();
    assert!(ps.samples.is_empty(), "no samples in a periodic cut");
    assert!(
        e.state_changes(Changes::Dirty, now(600))
            .iter()
            .all(|c| c.0 != state::pair_key("avg", "t1", "temp")),
        "reported once"
    );
    let full = e.state_changes(Changes::Full, now(700));
    let pair = full
        .iter()
        .find(|c| c.0 == state::pair_key("avg", "t1", "temp"))
        .and_then(|c| c.1.clone())
        .unwrap();
    let ps: PairSnapshot = serde_json::from_slice(&pair).unwrap();
    assert_eq!(ps.samples.len(), 5);
}

mod bounds;

mod props {
    use super::*;
    use proptest::prelude::*;

    const SENSORS: [&str; 6] = ["a", "a/b", "ab", "b", "c", "a/bb"];
    const METRICS: [&str; 3] = ["temp", "rh", "tx"];
    const SENSOR_GLOBS: [&str; 8] = ["a", "a/b", "a/*", "*", "*b", "b*", "a*b", "c"];
    const METRIC_GLOBS: [&str; 4] = ["temp", "rh", "*", "t*"];

    #[derive(Debug, Clone)]
    enum Step {
        Read {
            dt: u64,
            sensor: usize,
            metric: usize,
            value: f64,
        },
        Tick {
            dt: u64,
        },
    }

    /// Values on a 0.5 grid: exact in binary and through JSON.
    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            8 => (0i32..80).prop_map(|i| f64::from(i) * 0.5),
            1 => Just(f64::NAN),
        ]
    }

    fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
        let read = (0u64..1500, 0..SENSORS.len(), 0..METRICS.len(), value()).prop_map(
            |(dt, sensor, metric, value)| Step::Read {
                dt,
                sensor,
                metric,
                value,
            },
        );
        let tick = (0u64..3000).prop_map(|dt| Step::Tick { dt });
        prop::collection::vec(prop_oneof![3 => read, 1 => tick], 0..max)
    }

    fn condition() -> impl Strategy<Value = Condition> {
        let t = || (0i32..80).prop_map(|i| f64::from(i) * 0.5);
        let clear_below = |t: f64| prop::option::of((0i32..8).prop_map(move |d| t - f64::from(d)));
        prop_oneof![
            t().prop_flat_map(move |threshold| clear_below(threshold)
                .prop_map(move |clear| Condition::Above { threshold, clear })),
            t().prop_flat_map(move |threshold| prop::option::of(
                (0i32..8).prop_map(move |d| threshold + f64::from(d))
            )
            .prop_map(move |clear| Condition::Below { threshold, clear })),
            (t(), 0i32..20, any::<bool>()).prop_map(|(lo, w, c)| {
                let hi = lo + f64::from(w);
                Condition::Outside {
                    lo,
                    hi,
                    clear: c.then_some((lo + 0.5, (hi - 0.5).max(lo + 0.5))),
                }
            }),
            ((-20i32..20), 1000u64..10_000, any::<bool>()).prop_map(|(p, window_ms, up)| {
                let per_minute = f64::from(p);
                if up {
                    Condition::RateAbove {
                        per_minute,
                        window_ms,
                        clear: None,
                    }
                } else {
                    Condition::RateBelow {
                        per_minute,
                        window_ms,
                        clear: None,
                    }
                }
            }),
            (100u64..5000).prop_map(|after_ms| Condition::Silent { after_ms }),
        ]
    }

    pub(super) fn rules(max: usize) -> impl Strategy<Value = Vec<Rule>> {
        let one = (
            0..SENSOR_GLOBS.len(),
            0..METRIC_GLOBS.len(),
            condition(),
            prop_oneof![Just(0u64), 0u64..3000],
            prop::option::of(500u64..4000),
            prop::option::of((
                prop_oneof![
                    Just(Aggregate::Avg),
                    Just(Aggregate::Min),
                    Just(Aggregate::Max)
                ],
                0u64..5000,
            )),
        );
        prop::collection::vec(one, 1..max).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (s, m, condition, for_ms, repeat_ms, aggregate))| {
                    let mut r = rule(&format!("r{i}"), SENSOR_GLOBS[s], condition);
                    r.metric = Glob::new(METRIC_GLOBS[m]);
                    r.for_ms = for_ms;
                    r.repeat_ms = repeat_ms;
                    r.aggregate = aggregate;
                    r
                })
                .collect()
        })
    }

    /// Feeds steps from mono `t`, returning the alerts and the end time.
    /// `shift` is added to every monotonic time (a new boot's epoch).
    fn run(engine: &mut Engine, steps: &[Step], mut t: u64, shift: i64) -> (Vec<AlertDraft>, u64) {
        let mut out = Vec::new();
        for step in steps {
            let dt = match step {
                Step::Read { dt, .. } | Step::Tick { dt } => *dt,
            };
            t += dt;
            let at = Now {
                mono_ms: (t as i64 + shift) as u64,
                wall_ms: WALL + t as i64,
            };
            match *step {
                Step::Read {
                    sensor,
                    metric,
                    value,
                    ..
                } => engine.on_reading(
                    &reading(SENSORS[sensor], METRICS[metric], value),
                    at,
                    &mut out,
                ),
                Step::Tick { .. } => engine.tick(at, &mut out),
            }
        }
        (out, t)
    }

    proptest! {
        #[test]
        fn alerts_of_a_pair_alternate_and_an_above_rule_respects_its_bounds(
            clear_gap in 0i32..6,
            for_ms in prop_oneof![Just(0u64), 1u64..3000],
            repeat_ms in prop::option::of(300u64..3000),
            steps in steps(120),
        ) {
            let clear = 20.0 - f64::from(clear_gap) * 0.5;
            let mut r = rule("hot", "*", Condition::Above { threshold: 20.0, clear: Some(clear) });
            r.metric = Glob::new("*");
            r.for_ms = for_ms;
            r.repeat_ms = repeat_ms;
            let mut engine = Engine::new(vec![r]);
            let (out, _) = run(&mut engine, &steps, 0, 0);
            let mut firing: BTreeMap<(String, String), bool> = BTreeMap::new();
            for a in &out {
                let was = firing.entry((a.sensor.clone(), a.metric.clone())).or_default();
                match (a.reason, a.state) {
                    (Reason::Repeat, AlertState::Firing) => prop_assert!(*was, "repeat while not firing: {a:?}"),
                    (Reason::Transition, AlertState::Firing) => {
                        prop_assert!(!*was, "fired twice: {a:?}");
                        prop_assert!(a.value > 20.0, "fired on {a:?}");
                        *was = true;
                    }
                    (Reason::Transition, AlertState::Resolved) => {
                        prop_assert!(*was, "resolved while not firing: {a:?}");
                        prop_assert!(a.value <= clear, "resolved on {a:?}");
                        *was = false;
                    }
                    _ => prop_assert!(false, "unexpected {a:?}"),
                }
            }
            let still: usize = firing.values().filter(|f| **f).count();
            prop_assert_eq!(still, engine.firing().len());
        }

        #[test]
        fn the_index_gives_the_same_alerts_as_a_scan_of_all_rules(
            rules in rules(12),
            steps in steps(100),
        ) {
            let mut indexed = Engine::new(rules.clone());
            let mut naive = Engine::new(rules);
            naive.index = Index::every_rule(naive.live.len());
            let (a, _) = run(&mut indexed, &steps, 0, 0);
            let (b, _) = run(&mut naive, &steps, 0, 0);
            prop_assert_eq!(a, b);
            prop_assert_eq!(indexed.firing(), naive.firing());
        }

        #[test]
        fn every_pair_alternates_firing_and_resolved_for_any_rule(
            rules in rules(8),
            steps in steps(100),
        ) {
            let mut engine = Engine::new(rules);
            let (out, _) = run(&mut engine, &steps, 0, 0);
            let mut firing: BTreeMap<(String, String, String), bool> = BTreeMap::new();
            for a in out.iter().filter(|a| a.reason != Reason::Repeat) {
                let was = firing.entry((a.rule.clone(), a.sensor.clone(), a.metric.clone())).or_default();
                prop_assert_eq!(*was, a.state == AlertState::Resolved, "out of order: {:?}", a);
                *was = a.state == AlertState::Firing;
            }
        }

        #[test]
        fn snapshot_restore_at_a_new_epoch_and_an_identical_reload_change_nothing(
            rules in rules(8),
            before in steps(60),
            after in steps(60),
            epoch in 0i64..5000,
        ) {
            prop_assume!(!before.is_empty());
            let mut original = Engine::new(rules.clone());
            let (_, t) = run(&mut original, &before, 0, 0);
            let at = now(t);

            let snap = original.snapshot(at);
            let json_snap = json_round_trip(&snap);
            let mut out = Vec::new();
            let shift = epoch - t as i64;
            let restored_at = Now { mono_ms: epoch as u64, wall_ms: at.wall_ms };
            let mut restored = Engine::restore(rules.clone(), Limits::default(), snap, restored_at, &mut out);
            let mut from_json = Engine::restore(rules.clone(), Limits::default(), json_snap, restored_at, &mut out);
            prop_assert!(out.is_empty(), "restore emitted {:?}", out);

            let mut reloaded = original.clone();
            reloaded.reload(rules, at, &mut out);
            prop_assert!(out.is_empty(), "reload emitted {:?}", out);

            let (expected, _) = run(&mut original, &after, t, 0);
            let (got, _) = run(&mut restored, &after, t, shift);
            prop_assert_eq!(&expected, &got);
            // Without serde_json's `float_roundtrip` feature a stored
            // value (a rate, an average) may come back 1 ulp off; it is
            // only reported, never compared, so the decisions match.
            let (got, _) = run(&mut from_json, &after, t, shift);
            let key = |a: &AlertDraft| (a.rule.clone(), a.sensor.clone(), a.metric.clone(), a.state, a.reason, a.ts_ms, a.since_ms, a.threshold.to_bits());
            prop_assert_eq!(expected.iter().map(key).collect::<Vec<_>>(), got.iter().map(key).collect::<Vec<_>>());
            for (e, g) in expected.iter().zip(&got) {
                prop_assert!((e.value - g.value).abs() <= 1e-9 * e.value.abs().max(1.0), "{} vs {}", e.value, g.value);
            }
            let (got, _) = run(&mut reloaded, &after, t, 0);
            prop_assert_eq!(&expected, &got);
        }
        #[test]
        fn firing_pairs_come_back_from_the_emitted_changes_at_any_batch_boundary(
            rules in rules(8),
            steps in steps(80),
            dirty_every in 1usize..20,
            crash_at in 0usize..80,
        ) {
            let mut engine = Engine::new(rules.clone());
            let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut t = 0;
            let crash_at = crash_at.min(steps.len());
            for (i, step) in steps[..crash_at].iter().enumerate() {
                let (_, t2) = run(&mut engine, std::slice::from_ref(step), t, 0);
                t = t2;
                // As the evaluator: each batch's emitted pairs go with it,
                // and now and then a periodic checkpoint.
                super::apply(&mut store, engine.state_changes(Changes::Emitted, now(t)));
                if i % dirty_every == 0 {
                    super::apply(&mut store, engine.state_changes(Changes::Dirty, now(t)));
                }
            }
            let mut out = Vec::new();
            let restored = Engine::restore_state(rules, Limits::default(), &store, now(t), &mut out);
            prop_assert!(out.is_empty(), "restore emitted {:?}", out);
            let key = |f: &FiringInfo| (f.rule.clone(), f.sensor.clone(), f.metric.clone(), f.since_ms);
            prop_assert_eq!(
                engine.firing().iter().map(key).collect::<Vec<_>>(),
                restored.firing().iter().map(key).collect::<Vec<_>>()
            );
        }

        #[test]
        fn after_a_full_cut_a_restored_engine_goes_on_exactly_like_the_original(
            rules in rules(8),
            before in steps(60),
            after in steps(60),
        ) {
            // A restore starts the engine (arms silent rules) at once; an
            // engine never given a time has not started yet.
            prop_assume!(!before.is_empty());
            let mut original = Engine::new(rules.clone());
            let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let (_, t) = run(&mut original, &before, 0, 0);
            super::apply(&mut store, original.state_changes(Changes::Emitted, now(t)));
            super::apply(&mut store, original.state_changes(Changes::Full, now(t)));
            let mut out = Vec::new();
            let mut restored = Engine::restore_state(rules, Limits::default(), &store, now(t), &mut out);
            prop_assert!(out.is_empty(), "restore emitted {:?}", out);
            let (expected, _) = run(&mut original, &after, t, 0);
            let (got, _) = run(&mut restored, &after, t, 0);
            let key = |a: &AlertDraft| (a.rule.clone(), a.sensor.clone(), a.metric.clone(), a.state, a.reason, a.ts_ms, a.since_ms, a.threshold.to_bits());
            prop_assert_eq!(expected.iter().map(key).collect::<Vec<_>>(), got.iter().map(key).collect::<Vec<_>>());
        }

    }
}
