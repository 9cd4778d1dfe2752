//! The commands that need no broker and no running gateway, through the
//! real binary: `check` on the shipped configs, `rules test`, `rules replay`.

use std::path::{Path, PathBuf};

use crate::harness::{Output, check, run_outpost};

/// `outpost ARGS...` run from the repository's root.
fn outpost(args: &[&str]) -> Output {
    run_outpost(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

#[test]
fn every_shipped_config_passes_check() {
    let mut configs = vec![
        "config/demo.toml".to_string(),
        "config/outpost.toml".to_string(),
    ];
    for e in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples")).unwrap()
    {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") && name != "rules.toml" {
            configs.push(format!("config/examples/{name}"));
        }
    }
    assert!(configs.len() >= 7, "{configs:?}");
    for cfg in &configs {
        let o = outpost(&["check", "--config", cfg.as_str()]);
        assert_eq!(o.code, Some(0), "{cfg}: {}{}", o.stdout, o.stderr);
        assert!(o.stdout.contains(": ok"), "{cfg}");
    }
}

#[test]
fn the_shipped_rule_tests_pass() {
    let files: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".test.toml"))
            .collect();
    assert!(files.len() >= 2);
    let mut args = vec!["rules", "test"];
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let o = outpost(&args);
    let out = o.stdout;
    assert_eq!(o.code, Some(0), "{out}{}", o.stderr);
    assert!(out.contains(" passed, 0 failed"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn a_failing_rule_test_exits_1_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nid = \"hot\"\nmetric = \"t\"\nabove = 30.0\n",
    )
    .unwrap();
    let t = dir.path().join("hot.test.toml");
    std::fs::write(
        &t,
        r#"rules = ["rules.toml"]
[[test]]
name = "expects the wrong state"
readings = [{ at = "0s", sensor = "a", metric = "t", value = 31.0 }]
expect = [{ at = "0s", rule = "hot", sensor = "a", state = "resolved" }]
"#,
    )
    .unwrap();
    let o = outpost(&["rules", "test", t.to_str().unwrap()]);
    let out = o.stdout;
    assert_eq!(o.code, Some(1), "{out}");
    assert!(out.contains("FAIL expects the wrong state"), "{out}");
    assert!(out.contains("- expected       0s resolved hot a"), "{out}");
    assert!(out.contains("+ got            0s firing hot a"), "{out}");
    assert!(out.contains("0 passed, 1 failed"), "{out}");
}

#[test]
fn a_broken_rule_test_file_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("x.test.toml");
    std::fs::write(
        &t,
        "rules = [\"missing.toml\"]\n[[test]]\nname = \"x\"\nreadings = []\nexpcet = []\n",
    )
    .unwrap();
    let o = outpost(&["rules", "test", t.to_str().unwrap()]);
    assert_eq!(o.code, Some(2));
    let err = o.stderr;
    assert!(
        err.contains("x.test.toml:5:1: unknown field `expcet`"),
        "{err}"
    );
}

#[test]
fn replay_prints_the_alerts_a_recorded_series_produces() {
    let o = outpost(&[
        "rules",
        "replay",
        "--rules",
        "config/demo-rules.toml",
        "--input",
        "tests/rules/greenhouse.jsonl",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let alerts: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, String, String)> = alerts
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["sensor"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
                a["ts"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str, d: &str| {
        (a.to_string(), b.to_string(), c.to_string(), d.to_string())
    };
    assert_eq!(
        summary,
        vec![
            s(
                "greenhouse-hot",
                "greenhouse/t1",
                "firing",
                "2026-11-26T10:00:10.000Z"
            ),
            s(
                "coldroom-warm",
                "coldroom/t1",
                "firing",
                "2026-11-26T10:00:15.000Z"
            ),
            s(
                "greenhouse-hot",
                "greenhouse/t1",
                "resolved",
                "2026-11-26T10:00:30.000Z"
            ),
        ]
    );
    assert_eq!(alerts[0]["seq"], 1);
    // The malformed line is reported with its line number and skipped.
    assert!(
        o.stderr.contains("greenhouse.jsonl:5: skipped"),
        "{}",
        o.stderr
    );
}

/// `check` on a config and rules written into a fresh folder: exit 2,
/// and every one of `want`, each made from the config's and the rules'
/// full paths, in stderr.
fn check_refuses(config: &str, rules: &str, want: impl Fn(&str, &str) -> Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), config, rules);
    let c = dir.path().join("outpost.toml").display().to_string();
    let r = dir.path().join("rules.toml").display().to_string();
    let want = want(&c, &r);
    out.assert_invalid(&want.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn check_lists_every_mistake_with_file_line_and_column() {
    check_refuses(
        "[gateway]\nid = \"gw\"\nstate_dir = \"state\"\n\n[upstream]\nurl = \"http://x\"\nkeep_alive = \"30\"\n\n[[serial]]\npath = \"/dev/null\"\nbaud_rate = 9600\n",
        "[[rule]]\nid = \"a\"\nmetric = \"t\"\nabvoe = 3\n\n[[rule]]\nid = \"b\"\nmetric = \"t\"\nbelow = 3\nclear = 1\n",
        |c, r| {
            vec![
                format!("{c}:6:7: `http://x` is not an MQTT URL"),
                format!("{c}:7:14: duration `30` has no unit"),
                format!("{c}:11:1: unknown field `baud_rate`"),
                format!("{r}:4:1: unknown field `abvoe`"),
                format!("{r}:10:9: `clear` (1) must not be below the threshold (3)"),
            ]
        },
    );
}

#[test]
fn check_names_the_rule_whose_action_uses_an_unknown_broker() {
    check_refuses(
        "[gateway]\nid = \"gw\"\nstate_dir = \"state\"\n\n[[mqtt]]\nname = \"local\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopics = [\"a/+\"]\n",
        "[[rule]]\nid = \"fan\"\nmetric = \"t\"\nabove = 30.0\n[[rule.actions]]\nbroker = \"locl\"\ntopic = \"fan/set\"\non_firing = \"ON\"\n",
        |_, r| {
            vec![format!(
                "{r}:2:6: rule `fan` has an action on broker `locl`, but no [[mqtt]] source has that name"
            )]
        },
    );
}
