//! Rules for a fleet (issue 14): `outpost rules push` to one gateway or a
//! group over the upstream broker, checked, signed, stored, applied and
//! answered, through the real binary and a real Mosquitto.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::harness::http::get;
use crate::harness::process::run_tool;
use crate::harness::*;

/// A rule the gateways do not have until it is pushed.
const COLD: &str = "[[rule]]\nid = \"cold\"\nsensor = \"*\"\nmetric = \"temperature\"\nbelow = 5.0\nclear = 6.0\nseverity = \"critical\"\n";

/// Two mistakes, at known places: line 4 col 1, line 7 col 6.
const BROKEN: &str = "[[rule]]\nid = \"cold\"\nmetric = \"temperature\"\nabvoe = 5.0\n\n[[rule]]\nid = \"bad id\"\nmetric = \"temperature\"\nbelow = 1.0\n";

/// What the gateway logs once the broker acknowledged its rules subscription.
const SUBSCRIBED: &str = "subscribed to the rules topics";

/// A gateway `id` on `up` (upstream, and the `[[mqtt]]` source `local`
/// reading `sensors/+/reading`), taking pushes, with more `[remote]` keys.
fn config(up: &Mosquitto, id: &str, remote: &str) -> String {
    let mut c = Config::new(&up.url()).mqtt("local", &up.url(), &["sensors/+/reading"]);
    c.extra_sections = format!("[remote]\nrules = true\n{remote}");
    c.toml()
        .replace("id = \"test-gw\"", &format!("id = \"{id}\""))
}

/// Starts a gateway in `dir` and waits until it follows its rules topics.
fn start(dir: &Path, launch: Launch, config: &str) -> Gateway {
    let mut gw = launch.start(dir, config, HOT_RULE);
    gw.wait_log(WAIT, SUBSCRIBED);
    gw
}

/// `outpost rules push --config outpost.toml --timeout 10s ARGS...` in `dir`.
fn push(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec![
        "rules",
        "push",
        "--config",
        "outpost.toml",
        "--timeout",
        "10s",
    ];
    all.extend_from_slice(args);
    run_outpost(dir, &all)
}

/// The hash at the end of a `push` success line.
fn hash_of(out: &Output) -> String {
    out.stdout
        .rsplit("hash ")
        .next()
        .map(|h| h.trim().to_string())
        .filter(|h| h.starts_with("sha256:") && h.len() == 71)
        .unwrap_or_else(|| panic!("no hash in {}", out.all()))
}

/// Publishes a reading on the shared broker until the alert arrives.
fn alert(sub: &mut Subscriber, up: &Mosquitto, sensor: &str, t: f64, state: &str) -> Value {
    sub.publish_until_alert(
        up.port(),
        &format!("sensors/{sensor}/reading"),
        &reading(sensor, t),
        sensor,
        state,
    )
    .json()
}

fn status_rules(port: u16) -> Value {
    let r = get(port, "/status");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["rules"].clone()
}

#[test]
fn a_pushed_rule_applies_and_alerts_and_a_broken_push_is_refused_at_its_place() {
    let dir = tempdir();
    let d = dir.path();
    let up = Mosquitto::start();
    let mut alerts = Subscriber::connect(up.port(), "outpost/test-gw/alerts/#");
    let mut health = Subscriber::connect(up.port(), "outpost/test-gw/health");
    let gw = start(d, Launch::default().http(), &config(&up, "test-gw", ""));
    let port = gw.http_port();

    fs::write(d.join("cold.toml"), COLD).unwrap();
    let out = push(d, &["--gateway", "test-gw", "--version", "1", "cold.toml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.starts_with(
            "gateway test-gw applied version 1: 2 rules in force (1 pushed, version 1), hash sha256:"
        ),
        "{}",
        out.all()
    );
    let hash = hash_of(&out);
    let a = alert(&mut alerts, &up, "freezer", 2.0, "firing");
    assert_eq!(
        (a["rule"].as_str(), a["severity"].as_str()),
        (Some("cold"), Some("critical"))
    );

    // The version and hash in force: health, /status, `outpost status`.
    health.wait_for(WAIT, "the health with the pushed version", |m| {
        let r = &m.json()["rules"];
        r["version"] == "1" && r["hash"] == hash.as_str() && r["loaded"] == 2
    });
    let r = status_rules(port);
    assert_eq!(
        (r["version"].as_str(), r["pushed"].as_u64()),
        (Some("1"), Some(1))
    );
    assert_eq!(r["hash"], hash.as_str());
    let st = run_outpost(d, &["status", "--config", "outpost.toml"]);
    assert!(
        st.stdout
            .contains(&format!("pushed version 1 (1 rules), hash {hash}")),
        "{}",
        st.all()
    );

    // A broken push: every mistake at its place in the operator's file.
    fs::write(d.join("broken.toml"), BROKEN).unwrap();
    let out = push(
        d,
        &["--gateway", "test-gw", "--version", "2", "broken.toml"],
    );
    assert_eq!(out.code, Some(2), "{}", out.all());
    for want in [
        "broken.toml:4:1: unknown field `abvoe`",
        "broken.toml:7:6: rule id `bad id` must match [A-Za-z0-9_.-]+",
        &format!(
            "gateway test-gw refused version 2 (invalid); it keeps 2 rules in force (1 pushed, version 1), hash {hash}"
        ),
    ] {
        assert!(out.stderr.contains(want), "no {want:?} in:\n{}", out.all());
    }
    // The old rules keep alerting, local and pushed, on sensors new to them.
    alert(&mut alerts, &up, "oven", 35.0, "firing");
    alert(&mut alerts, &up, "chiller", 1.0, "firing");
    assert_eq!(status_rules(port)["version"], "1");

    // The same push again changes nothing; an empty set under a higher
    // version removes the pushed rule, and what it had firing resolves.
    let out = push(d, &["--gateway", "test-gw", "--version", "1", "cold.toml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("runs version 1 already (unchanged)"),
        "{}",
        out.all()
    );
    fs::write(d.join("none.toml"), "").unwrap();
    let out = push(d, &["--gateway", "test-gw", "--version", "3", "none.toml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout
            .contains("applied version 3: 1 rules in force (0 pushed, version 3)"),
        "{}",
        out.all()
    );
    for sensor in ["freezer", "chiller"] {
        let m = alerts.wait_for(WAIT, &format!("{sensor} resolved"), |m| {
            alert_is(m, sensor, "resolved")
        });
        let msg = m.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains("rule cold was removed or changed"), "{msg}");
    }
}

#[test]
fn a_group_push_reaches_a_gateway_online_and_one_started_after_it() {
    let (a, b) = (tempdir(), tempdir());
    let up = Mosquitto::start();
    let mut results = Subscriber::connect(up.port(), "outpost/+/rules/result");
    let mut alerts = Subscriber::connect(up.port(), "outpost/+/alerts/#");
    let north = "groups = [\"north\"]\n";
    let _gw_a = start(a.path(), Launch::default(), &config(&up, "gw-a", north));

    fs::write(a.path().join("cold.toml"), COLD).unwrap();
    let out = push(
        a.path(),
        &["--group", "north", "--version", "7", "cold.toml"],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains(
            "published version 7 to group north (retained on outpost/groups/north/rules/set)"
        ),
        "{}",
        out.all()
    );
    let applied = |gw: &'static str| {
        move |m: &Msg| {
            m.topic == format!("outpost/{gw}/rules/result")
                && m.json()["result"] == "applied"
                && m.json()["version"] == "7"
        }
    };
    results.wait_for(WAIT, "gw-a applied version 7", applied("gw-a"));

    // gw-b comes online after the push: the retained push reaches it.
    let _gw_b = start(b.path(), Launch::default(), &config(&up, "gw-b", north));
    results.wait_for(WAIT, "gw-b applied version 7", applied("gw-b"));
    // Both read the same sensor; both alert on it with the pushed rule.
    alert(&mut alerts, &up, "freezer", 2.0, "firing");
    for gw in ["gw-a", "gw-b"] {
        alerts.wait_for(WAIT, &format!("{gw}'s cold alert"), |m| {
            m.topic == format!("outpost/{gw}/alerts/cold/freezer")
                && alert_is(m, "freezer", "firing")
        });
    }
}

#[test]
fn with_a_key_only_a_push_signed_by_it_for_this_gateway_is_applied() {
    let dir = tempdir();
    let d = dir.path();
    let up = Mosquitto::start();
    let mut alerts = Subscriber::connect(up.port(), "outpost/test-gw/alerts/#");

    let out = run_outpost(d, &["rules", "keygen", "fleet.key"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let public = fs::read_to_string(d.join("fleet.key.pub")).unwrap();
    assert!(
        out.stdout
            .contains(&format!("public_key = \"{}\"", public.trim())),
        "{}",
        out.all()
    );
    // Another key, made by OpenSSL: outpost reads its keys too.
    run_tool(
        "openssl",
        &["/usr/bin/openssl"],
        &["genpkey", "-algorithm", "ed25519", "-out", "other.pem"],
        d,
    );

    let _gw = start(
        d,
        Launch::default(),
        &config(&up, "test-gw", "public_key_file = \"fleet.key.pub\"\n"),
    );
    fs::write(d.join("cold.toml"), COLD).unwrap();
    let refused = |args: &[&str], why: &str, reason: &str| {
        let out = push(d, args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.all());
        for want in [why, &format!("({reason})")] {
            assert!(
                out.stderr.contains(want),
                "{args:?}: no {want:?} in:\n{}",
                out.all()
            );
        }
    };
    refused(
        &["--gateway", "test-gw", "--version", "1", "cold.toml"],
        "cold.toml: the push is not signed, and this gateway takes only signed pushes",
        "unsigned",
    );
    refused(
        &[
            "--gateway",
            "test-gw",
            "--version",
            "2",
            "--key",
            "other.pem",
            "cold.toml",
        ],
        "cold.toml: the signature does not match this gateway's public key",
        "bad_signature",
    );
    // Signed by the right key for another gateway, replayed onto this one.
    refused(
        &[
            "--gateway",
            "other-gw",
            "--topic-prefix",
            "outpost/test-gw",
            "--version",
            "3",
            "--key",
            "fleet.key",
            "cold.toml",
        ],
        "the signature does not match",
        "bad_signature",
    );
    alerts.barrier("outpost/test-gw/alerts/barrier");
    assert!(
        alerts.messages().is_empty(),
        "no pushed rule is in force yet"
    );

    let out = push(
        d,
        &[
            "--gateway",
            "test-gw",
            "--version",
            "4",
            "--key",
            "fleet.key",
            "cold.toml",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("applied version 4"), "{}", out.all());
    alert(&mut alerts, &up, "freezer", 2.0, "firing");
}

#[test]
fn the_pushed_set_survives_kill_9_and_an_older_version_never_replaces_a_newer_one() {
    let dir = tempdir();
    let d = dir.path();
    let up = Mosquitto::start();
    let mut alerts = Subscriber::connect(up.port(), "outpost/test-gw/alerts/#");
    let mut gw = start(d, Launch::default().http(), &config(&up, "test-gw", ""));
    fs::write(d.join("cold.toml"), COLD).unwrap();
    let out = push(d, &["--gateway", "test-gw", "--version", "10", "cold.toml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let hash = hash_of(&out);
    assert!(d.join("state/pushed-rules.json").is_file());

    gw.kill9();
    gw.restart();
    gw.wait_log(WAIT, SUBSCRIBED);
    let loaded = gw.wait_log(WAIT, "pushed rules loaded");
    assert!(loaded.contains("version=10"), "{loaded}");
    let r = status_rules(gw.http_port());
    assert_eq!(
        (r["version"].as_str(), r["hash"].as_str()),
        (Some("10"), Some(hash.as_str()))
    );
    alert(&mut alerts, &up, "freezer", 2.0, "firing");

    // Older, or the same version with other rules: refused, nothing changes.
    fs::write(
        d.join("colder.toml"),
        COLD.replace("below = 5.0\nclear = 6.0", "below = 3.0"),
    )
    .unwrap();
    for (version, why) in [
        (
            "9",
            "colder.toml: version 9 is older than version 10, the last one accepted",
        ),
        ("09", "colder.toml: version 09 is older than version 10"),
        (
            "10",
            "colder.toml: version 10 was accepted already, with other rules",
        ),
    ] {
        let out = push(
            d,
            &["--gateway", "test-gw", "--version", version, "colder.toml"],
        );
        assert_eq!(out.code, Some(2), "{version}: {}", out.all());
        assert!(
            out.stderr.contains(why),
            "{version}: no {why:?} in:\n{}",
            out.all()
        );
        assert!(out.stderr.contains("(not_newer)"), "{}", out.all());
    }
    let r = status_rules(gw.http_port());
    assert_eq!(
        (r["version"].as_str(), r["hash"].as_str()),
        (Some("10"), Some(hash.as_str()))
    );
    // A higher version still goes through.
    let out = push(
        d,
        &["--gateway", "test-gw", "--version", "11", "colder.toml"],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_ne!(hash_of(&out), hash);
}

#[test]
fn push_check_refuses_what_check_would_and_publishes_nothing() {
    let dir = tempdir();
    let d = dir.path();
    let up = Mosquitto::start();
    let mut all = Subscriber::connect(up.port(), "outpost/#");
    // No gateway runs: nothing could answer, and nothing must be sent.
    fs::write(d.join("outpost.toml"), config(&up, "test-gw", "")).unwrap();
    fs::write(d.join("rules.toml"), HOT_RULE).unwrap();
    fs::write(d.join("broken.toml"), BROKEN).unwrap();
    fs::write(
        d.join("clash.toml"),
        HOT_RULE.replace("above = 30.0", "above = 40.0"),
    )
    .unwrap();
    fs::write(
        d.join("action.toml"),
        format!("{COLD}actions = [{{ broker = \"nowhere\", topic = \"fan/set\", on_firing = \"ON\" }}]\n"),
    )
    .unwrap();
    for (file, wants) in [
        (
            "broken.toml",
            vec![
                "broken.toml:4:1: unknown field `abvoe`",
                "broken.toml:7:6: rule id `bad id`",
            ],
        ),
        (
            "clash.toml",
            vec![
                "clash.toml:2:6: rule id `hot` is already defined by this gateway's local rules (",
            ],
        ),
        (
            "action.toml",
            vec![
                "action.toml:2:6: rule `cold` has an action on broker `nowhere`, but no [[mqtt]] source has that name",
            ],
        ),
    ] {
        let out = push(
            d,
            &["--check", "--gateway", "test-gw", "--version", "1", file],
        );
        assert_eq!(out.code, Some(2), "{file}: {}", out.all());
        for want in wants.iter().chain(&["nothing was published"]) {
            assert!(
                out.stderr.contains(want),
                "{file}: no {want:?} in:\n{}",
                out.all()
            );
        }
    }
    all.barrier("outpost/barrier");
    assert!(all.messages().is_empty(), "published: {:?}", all.messages());
    assert!(
        !up.log().contains("-push-"),
        "a push client connected:\n{}",
        up.log()
    );

    // No broker where the config says: exit 1, saying so, at once.
    let dead = free_port().unwrap();
    let cfg = config(&up, "test-gw", "").replace(&up.url(), &format!("mqtt://127.0.0.1:{dead}"));
    fs::write(d.join("outpost.toml"), cfg).unwrap();
    fs::write(d.join("cold.toml"), COLD).unwrap();
    let t0 = std::time::Instant::now();
    let out = push(d, &["--gateway", "test-gw", "--version", "1", "cold.toml"]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    let want = format!("mqtt://127.0.0.1:{dead}: ");
    assert!(out.stderr.starts_with(&want), "{}", out.all());
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn push_run_with_the_gateways_own_config_leaves_the_gateway_connected() {
    let dir = tempdir();
    let d = dir.path();
    let up = Mosquitto::start();
    let mut status = Subscriber::connect(up.port(), "outpost/test-gw/status");
    let mut alerts = Subscriber::connect(up.port(), "outpost/test-gw/alerts/#");
    let gw = start(d, Launch::default(), &config(&up, "test-gw", ""));
    status.wait_for(WAIT, "online", |m| m.text() == "online");

    // The gateway's own outpost.toml: its [upstream], its client id.
    fs::write(d.join("cold.toml"), COLD).unwrap();
    let out = push(d, &["--gateway", "test-gw", "--version", "1", "cold.toml"]);
    assert_eq!(
        out.code,
        Some(0),
        "the gateway answered, so it was connected: {}",
        out.all()
    );

    // The push came from a client id of its own, and the broker never
    // dropped the gateway's connection for it.
    status.barrier("outpost/test-gw/status");
    let seen: Vec<String> = status.messages().iter().map(Msg::text).collect();
    assert_eq!(seen, ["online"], "the gateway went offline");
    let log = up.log();
    assert!(log.contains("as outpost-test-gw-push-"), "{log}");
    assert!(!log.contains("already connected"), "{log}");
    assert!(!gw.log().contains("upstream link lost"), "{}", gw.log());
    // And it goes on alerting over the same link.
    alert(&mut alerts, &up, "freezer", 2.0, "firing");
}

/// The `acl_file` of the README's "Many gateways" section.
fn readme_acl() -> String {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("# /etc/mosquitto/outpost.acl")
        .expect("the README has the ACL example");
    let end = readme[start..].find("```").expect("the ACL block ends") + start;
    readme[start..end].to_string()
}

#[test]
fn the_readme_acl_lets_only_the_operator_push() {
    const GW_PASSWORD: &str = "gw-Pa55-1";
    const OPERATOR_PASSWORD: &str = "op-Pa55-2";
    let dir = tempdir();
    let d = dir.path();
    let passwd = password_file(d, "test-gw", GW_PASSWORD);
    let p = passwd.to_str().unwrap(); // a temporary folder's path: UTF-8
    run_tool(
        "mosquitto_passwd",
        &["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"],
        &["-b", p, "fleet-admin", OPERATOR_PASSWORD],
        d,
    );
    fs::write(d.join("outpost.acl"), readme_acl()).unwrap();
    let up = Mosquitto::start_with(MosquittoOpts {
        password_file: Some(passwd.clone()),
        acl_file: Some(d.join("outpost.acl")),
        ..Default::default()
    });
    let mut results = Subscriber::connect(up.port(), "outpost/+/rules/result");
    for (file, secret) in [("gw.secret", GW_PASSWORD), ("op.secret", OPERATOR_PASSWORD)] {
        fs::write(d.join(file), format!("{secret}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d.join(file), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let auth_url = format!("mqtt://127.0.0.1:{}", up.auth_port());
    let with_user = |id: &str, user: &str, secret: &str| {
        let mut c = Config::new(&auth_url).mqtt("local", &up.url(), &["sensors/+/reading"]);
        c.extra_upstream = format!("username = \"{user}\"\npassword_file = \"{secret}\"\n");
        c.extra_sections = "[remote]\nrules = true\n".into();
        c.toml()
            .replace("id = \"test-gw\"", &format!("id = \"{id}\""))
    };
    let gw = start(
        d,
        Launch::default(),
        &with_user("test-gw", "test-gw", "gw.secret"),
    );
    fs::write(
        d.join("operator.toml"),
        with_user("laptop", "fleet-admin", "op.secret"),
    )
    .unwrap();
    fs::write(d.join("cold.toml"), COLD).unwrap();

    // The operator may push.
    let out = run_outpost(
        d,
        &[
            "rules",
            "push",
            "--config",
            "operator.toml",
            "--timeout",
            "10s",
            "--gateway",
            "test-gw",
            "--version",
            "1",
            "cold.toml",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    results.wait_for(WAIT, "the answer", |m| m.json()["version"] == "1");

    // The gateway's own login may not: the broker drops the push.
    let out = run_outpost(
        d,
        &[
            "rules",
            "push",
            "--config",
            "outpost.toml",
            "--timeout",
            "3s",
            "--gateway",
            "test-gw",
            "--version",
            "2",
            "cold.toml",
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.all());
    // Mosquitto drops the refused publish quietly (with
    // `max_queued_messages 0`, 2.0 closes the connection instead): either
    // way no answer, and the pusher is told to look at the ACL.
    assert!(
        out.stderr.contains("no answer")
            && out
                .stderr
                .contains("may this login publish to outpost/test-gw/rules/set?"),
        "{}",
        out.all()
    );
    results.barrier("outpost/test-gw/rules/result");
    let versions: Vec<Value> = results
        .messages()
        .iter()
        .map(|m| m.json()["version"].clone())
        .collect();
    assert_eq!(versions, [Value::from("1")]);
    assert_eq!(
        gw.log().matches("pushed rules applied").count(),
        1,
        "{}",
        gw.log()
    );
}

#[test]
fn a_sighup_keeps_the_pushed_set_and_a_local_clash_at_start_is_answered_not_fatal() {
    let dir = tempdir();
    let d = dir.path();
    let up = Mosquitto::start();
    let mut alerts = Subscriber::connect(up.port(), "outpost/test-gw/alerts/#");
    let mut results = Subscriber::connect(up.port(), "outpost/test-gw/rules/result");
    let mut gw = start(d, Launch::default().http(), &config(&up, "test-gw", ""));
    fs::write(d.join("cold.toml"), COLD).unwrap();
    let out = push(d, &["--gateway", "test-gw", "--version", "1", "cold.toml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let reloads = |gw: &Gateway| gw.run_log().matches("rules reloaded").count();

    // A local rule more: the reload keeps the pushed rule.
    let warm = "[[rule]]\nid = \"warm\"\nsensor = \"*\"\nmetric = \"temperature\"\nabove = 25.0\n";
    fs::write(d.join("rules.toml"), format!("{HOT_RULE}\n{warm}")).unwrap();
    gw.sighup();
    poll_until(WAIT, "the reload", || (reloads(&gw) == 1).then_some(()));
    let r = status_rules(gw.http_port());
    assert_eq!(
        (r["version"].as_str(), r["pushed"].as_u64()),
        (Some("1"), Some(1))
    );
    alert(&mut alerts, &up, "freezer", 2.0, "firing");

    // A local rule with the pushed rule's id: refused whole, nothing changes.
    fs::write(d.join("rules.toml"), format!("{HOT_RULE}\n{COLD}")).unwrap();
    gw.sighup();
    let line = gw.wait_log(WAIT, "rules reload refused");
    assert!(
        line.contains("rule id `cold` is already defined by this gateway's local rules"),
        "{line}"
    );
    assert_eq!(
        status_rules(gw.http_port())["loaded"],
        3,
        "hot, warm, and the pushed cold"
    );

    // Started with the clash: the local rules run alone, and the pusher is told.
    gw.stop();
    gw.restart();
    gw.wait_log(WAIT, SUBSCRIBED);
    let refusal = results.wait_for(WAIT, "the refusal at start", |m| {
        m.json()["result"] == "refused"
    });
    let v = refusal.json();
    assert_eq!(
        (v["version"].as_str(), v["reason"].as_str()),
        (Some("1"), Some("invalid"))
    );
    assert_eq!(v["in_force"], Value::Null);
    assert_eq!(
        (
            v["errors"][0]["line"].as_u64(),
            v["errors"][0]["col"].as_u64()
        ),
        (Some(2), Some(6))
    );
    assert_eq!(status_rules(gw.http_port())["version"], Value::Null);

    // Fixed locally: a SIGHUP brings the stored pushed set back.
    fs::write(d.join("rules.toml"), HOT_RULE).unwrap();
    gw.sighup();
    poll_until(WAIT, "the reload", || (reloads(&gw) == 1).then_some(()));
    let r = status_rules(gw.http_port());
    assert_eq!(
        (r["version"].as_str(), r["loaded"].as_u64()),
        (Some("1"), Some(2))
    );
}
