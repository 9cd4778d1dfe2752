//! outpost's upstream against a real RabbitMQ with its MQTT plugin, set up
//! as README's "Where alerts go" recipe says (a vhost, a user for the
//! gateway that may only publish to `amq.topic`, a consumer user and a
//! durable queue bound to `amq.topic`), and read the way a back end reads
//! it: an AMQP consumer. The first test runs `config/examples/rabbitmq.toml`
//! itself. See `harness/rabbitmq.rs` for the node and clients.
//!
//! Needs `rabbitmq-server` (and `socat`): `./scripts/test` installs them.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::rabbitmq::{AmqpConsumer, AmqpLogin, Delivery, RabbitMq, queue_depth};
use crate::harness::{
    ALERT_FIELDS, Config, Gateway, HOT_RULE, Pty, Subscriber, WAIT, poll_until, reading,
    run_outpost, tempdir,
};
use serde_json::Value;

const VHOST: &str = "alerts";
const GW_PASSWORD: &str = "gw-Secret-1";
const CONSUMER: &str = "alerts-consumer";
const CONSUMER_PASSWORD: &str = "consumer-Secret-2";
const QUEUE: &str = "outpost-alerts";

/// README's recipe, command for command, for the gateway `gw`, plus full
/// rights for the test's MQTT observer (`guest`, which RabbitMQ admits
/// from loopback only).
fn apply_recipe(r: &RabbitMq, gw: &str) {
    r.ctl(&["add_vhost", VHOST]);
    r.ctl(&["add_user", gw, GW_PASSWORD]);
    r.ctl(&[
        "set_permissions",
        "-p",
        VHOST,
        gw,
        "^$",
        "^amq\\.topic$",
        "^$",
    ]);
    r.ctl(&["add_user", CONSUMER, CONSUMER_PASSWORD]);
    r.ctl(&[
        "set_permissions",
        "-p",
        VHOST,
        CONSUMER,
        "^outpost-alerts$",
        "^outpost-alerts$",
        "^(amq\\.topic|outpost-alerts)$",
    ]);
    r.ctl(&["set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"]);
}

/// The consumer's durable queue, bound to `outpost/{gw}/alerts/#` as AMQP
/// spells it: `/` becomes `.`.
fn consumer(r: &RabbitMq, gw: &str) -> AmqpConsumer {
    let login = AmqpLogin {
        vhost: VHOST.into(),
        user: CONSUMER.into(),
        password: CONSUMER_PASSWORD.into(),
    };
    AmqpConsumer::bind(
        r.amqp_port(),
        &login,
        QUEUE,
        &format!("outpost.{gw}.alerts.#"),
    )
}

fn observer(r: &RabbitMq, filter: &str) -> Subscriber {
    let login = format!("{VHOST}:guest");
    let within = crate::harness::rabbitmq::WAIT;
    Subscriber::connect_login(r.mqtt_port(), &login, "guest", filter, within)
}

fn write_secret(dir: &Path) {
    let secret = dir.join("rabbitmq.secret");
    std::fs::write(&secret, format!("{GW_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A gateway `test-gw` reading `pty`, publishing to the node as
/// `alerts:test-gw`.
fn gateway(dir: &Path, r: &RabbitMq, pty: &Pty) -> Gateway {
    write_secret(dir);
    let mut cfg = Config::new(&r.mqtt_url()).serial("bench", pty.path(), "json", "bench");
    cfg.extra_upstream =
        format!("username = \"{VHOST}:test-gw\"\npassword_file = \"rabbitmq.secret\"\n");
    let mut gw = Gateway::start(dir, &cfg.toml(), HOT_RULE);
    gw.wait_open(&pty.device(), WAIT);
    gw
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`; panics when `from` is not there, so
/// a changed example breaks this test instead of going untested.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "config/examples/rabbitmq.toml no longer has {from:?}"
    );
    text.replacen(from, to, 1)
}

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// What a consumer keeps: each alert once (first delivery, by `id`), in
/// arrival order. Panics if a duplicate differs from the first delivery.
fn dedup(ds: &[Delivery]) -> Vec<Value> {
    let mut first: HashMap<String, Value> = HashMap::new();
    let mut out = Vec::new();
    for d in ds {
        let v = d.json();
        let id = v["id"]
            .as_str()
            .unwrap_or_else(|| panic!("alert without id: {v}"))
            .to_string();
        match first.get(&id) {
            Some(prev) => assert_eq!(prev, &v, "a redelivery must be the same alert"),
            None => {
                first.insert(id, v.clone());
                out.push(v);
            }
        }
    }
    out
}

/// The example as shipped is a valid config (its password file is left
/// for the user to create, so `check` passes without it).
#[test]
fn the_rabbitmq_example_passes_check() {
    let out = run_outpost(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["check", "--config", "config/examples/rabbitmq.toml"],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("user alerts:greenhouse-pi"),
        "{}",
        out.all()
    );
}

/// `config/examples/rabbitmq.toml`, deployed as its comments say (password
/// file created; only the broker address, the serial port and the state
/// folder changed for the test): its alerts, published on
/// `outpost/greenhouse-pi/alerts/too-hot/{sensor}`, arrive in the durable
/// queue bound with `outpost.greenhouse-pi.alerts.#`, routed by `amq.topic`
/// with `/` mapped to `.`, persistent, with outpost's payload unchanged
/// (every field, `id` = `{gateway}-{db}-{seq}`, consecutive `seq`), and
/// nothing but alerts reaches a queue bound that way.
///
/// A `.` inside a sensor id is a word separator to AMQP too, so it comes
/// back to RabbitMQ's MQTT subscribers as `/` (README says so): the
/// payload's `sensor` is the exact id.
#[test]
fn the_example_delivers_alerts_to_a_durable_amqp_queue_bound_to_amq_topic() {
    const GW: &str = "greenhouse-pi";
    let dir = tempdir();
    let r = RabbitMq::start();
    apply_recipe(&r, GW);
    let mut q = consumer(&r, GW);
    let mut mqtt = observer(&r, "outpost/greenhouse-pi/alerts/#");
    let mut pty = Pty::new(dir.path(), "tty");

    write_secret(dir.path());
    let mut cfg = example("rabbitmq.toml");
    cfg = edit(
        &cfg,
        "url = \"mqtts://rabbitmq.example.com:8883\"",
        &format!("url = \"{}\"", r.mqtt_url()),
    );
    cfg = edit(
        &cfg,
        "# password_file = \"rabbitmq.secret\"",
        "password_file = \"rabbitmq.secret\"",
    );
    cfg = edit(
        &cfg,
        "state_dir = \"/var/lib/outpost\"",
        "state_dir = \"state\"",
    );
    cfg = edit(
        &cfg,
        "path = \"/dev/serial/by-id/usb-Arduino__www.arduino.cc__0043_75735323-if00\"",
        &format!("path = \"{}\"", pty.path().display()),
    );
    // Tests run in parallel: no HTTP endpoint on the default port.
    cfg.push_str("\n[http]\nlisten = \"\"\n");
    let mut gw = Gateway::start(dir.path(), &cfg, &example("rules.toml"));
    gw.wait_open(&pty.device(), WAIT);

    // (sensor, value, state, routing key); the example's `too-hot` rule
    // fires above 30 and clears at 28.
    let script = [
        (
            "room/t1",
            35.0,
            "firing",
            "outpost.greenhouse-pi.alerts.too-hot.room.t1",
        ),
        (
            "room/t1",
            20.0,
            "resolved",
            "outpost.greenhouse-pi.alerts.too-hot.room.t1",
        ),
        (
            "bench.t2",
            41.5,
            "firing",
            "outpost.greenhouse-pi.alerts.too-hot.bench.t2",
        ),
    ];
    for (sensor, t, _, _) in script {
        pty.write_line(&reading(sensor, t));
    }
    let got = q.wait_until(WAIT, "3 alerts", |ds| (ds.len() >= 3).then(|| ds.to_vec()));

    let fields: BTreeSet<&str> = ALERT_FIELDS.into();
    let seq0 = seq(&got[0].json());
    for (i, (d, (sensor, t, state, key))) in got.iter().zip(script).enumerate() {
        let v = d.json();
        let ctx = format!("{} {}", d.routing_key, d.text());
        assert_eq!(d.exchange, "amq.topic", "{ctx}");
        assert_eq!(d.routing_key, key, "{ctx}");
        assert!(
            d.persistent,
            "QoS 1 must arrive as a persistent message; {ctx}"
        );
        let keys: BTreeSet<&str> = v
            .as_object()
            .expect("an alert is a JSON object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fields, "{ctx}");
        assert_eq!(seq(&v), seq0 + i as u64, "consecutive seqs; {ctx}");
        let id = v["id"].as_str().unwrap_or_default();
        let db = id
            .strip_prefix("greenhouse-pi-")
            .and_then(|rest| rest.strip_suffix(&format!("-{}", seq(&v))))
            .unwrap_or_else(|| panic!("id is not greenhouse-pi-{{db}}-{{seq}}; {ctx}"));
        assert!(
            db.len() == 6 && db.bytes().all(|b| b.is_ascii_hexdigit()),
            "{ctx}"
        );
        assert_eq!(
            (
                v["gateway"].as_str(),
                v["rule"].as_str(),
                v["sensor"].as_str(),
                v["state"].as_str(),
                v["value"].as_f64()
            ),
            (
                Some(GW),
                Some("too-hot"),
                Some(sensor),
                Some(state),
                Some(t)
            ),
            "{ctx}"
        );
    }
    let m = mqtt.wait_for(WAIT, "the bench.t2 alert over MQTT", |m| {
        m.text().contains("\"bench.t2\"")
    });
    assert_eq!(m.topic, "outpost/greenhouse-pi/alerts/too-hot/bench/t2");
    // The gateway's status and health (retained) went to amq.topic too, but
    // a binding on alerts.# keeps them out of this queue.
    let keys: Vec<String> = q.messages().iter().map(|d| d.routing_key.clone()).collect();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("outpost.greenhouse-pi.alerts.")),
        "{keys:?}"
    );
    gw.assert_running();
}

/// A subscriber arriving after the gateway connected gets the retained
/// `online`; `kill -9` of the gateway makes RabbitMQ publish its will,
/// `offline`, which a later subscriber gets retained.
#[test]
fn status_is_retained_online_and_the_will_says_offline_after_kill_9() {
    let dir = tempdir();
    let r = RabbitMq::start();
    apply_recipe(&r, "test-gw");
    let mut early = observer(&r, "outpost/test-gw/status");
    let pty = Pty::new(dir.path(), "tty");
    let mut gw = gateway(dir.path(), &r, &pty);

    early.wait_for(WAIT, "online", |m| m.text() == "online");
    let mut fresh = observer(&r, "outpost/test-gw/status");
    let m = fresh.wait_for(WAIT, "the retained status", |m| m.retain);
    assert_eq!(m.text(), "online");

    gw.kill9();
    early.wait_for(WAIT, "the will, offline", |m| m.text() == "offline");
    let mut later = observer(&r, "outpost/test-gw/status");
    let m = later.wait_for(WAIT, "the retained status", |m| m.retain);
    assert_eq!(m.text(), "offline", "the will is retained");
}

/// A consumer that is away while its durable queue fills and RabbitMQ
/// restarts misses nothing. Alerts stream in (one every 30 ms); the
/// consumer takes the first ones and leaves; once alerts wait in its queue
/// (RabbitMQ acknowledged them, so outpost has deleted them from its
/// outbox and the queue is their only copy), RabbitMQ is stopped cleanly
/// while the stream still runs, and started again; more alerts follow. The
/// consumer, back, gets every alert in `seq` order with no gap; the only
/// duplicates are redeliveries of the same alert (same `id`, same payload).
#[test]
fn a_broker_restart_mid_stream_loses_and_reorders_nothing() {
    const STREAM: usize = 100;
    const AFTER: usize = 10;
    let dir = tempdir();
    let mut r = RabbitMq::start();
    apply_recipe(&r, "test-gw");
    let mut q = consumer(&r, "test-gw");
    let mut pty = Pty::new(dir.path(), "tty");
    let _gw = gateway(dir.path(), &r, &pty);

    // The load: sensor s000, s001, ... each crossing the limit once, so
    // each reading makes one alert and seq order is sensor order. The pace
    // only spreads the stream over the restart; no wait depends on it.
    let writer = thread::spawn(move || {
        for i in 0..STREAM {
            pty.write_line(&reading(&format!("s{i:03}"), 40.0));
            thread::sleep(Duration::from_millis(30));
        }
        pty
    });
    q.wait_until(WAIT, "the stream to flow", |ds| {
        (ds.len() >= 5).then_some(())
    });
    let mut all = q.close();
    let login = AmqpLogin {
        vhost: VHOST.into(),
        user: CONSUMER.into(),
        password: CONSUMER_PASSWORD.into(),
    };
    let waiting = poll_until(WAIT, "alerts waiting in the durable queue", || {
        queue_depth(r.amqp_port(), &login, QUEUE).filter(|&n| n >= 5)
    });
    assert!(
        !writer.is_finished(),
        "the stream ended before the broker stopped: not mid-stream"
    );
    let t = Instant::now();
    r.stop();
    let stopped = t.elapsed();
    r.start_again();
    let mut pty = writer.join().expect("writer thread");
    for i in STREAM..STREAM + AFTER {
        pty.write_line(&reading(&format!("s{i:03}"), 40.0));
    }

    let total = STREAM + AFTER;
    let mut q = consumer(&r, "test-gw");
    let consumed_before = all.len();
    q.wait_until(
        Duration::from_secs(90),
        &format!("{total} distinct alerts, with the first consumer's"),
        |ds| {
            let both: Vec<Delivery> = all.iter().chain(ds).cloned().collect();
            (dedup(&both).len() >= total).then_some(())
        },
    );
    all.extend(q.messages().iter().cloned());
    let alerts = dedup(&all);
    let seq0 = seq(&alerts[0]);
    let seqs: Vec<u64> = alerts.iter().map(seq).collect();
    let want: Vec<u64> = (seq0..seq0 + total as u64).collect();
    assert_eq!(seqs, want, "every alert, in seq order, no gap");
    for (i, v) in alerts.iter().enumerate() {
        assert_eq!(v["sensor"], format!("s{i:03}"), "{v}");
        assert_eq!(v["state"], "firing", "{v}");
    }
    assert!(all.iter().all(|d| d.persistent));
    let redelivered = all.iter().filter(|d| d.redelivered).count();
    eprintln!(
        "restart mid-stream: {consumed_before} alerts consumed, then {waiting} waiting in the \
         queue when RabbitMQ was stopped ({:.1} s to stop; boots {:?}); {} deliveries of {total} \
         alerts, {} duplicates by id, {redelivered} flagged redelivered",
        stopped.as_secs_f64(),
        r.boot_times(),
        all.len(),
        all.len() - alerts.len(),
    );
}
