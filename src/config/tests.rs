//! `outpost.toml` compiled without the binary: one case per distinct
//! problem the compiler reports, each with the place it must name.

use std::path::Path;

use super::files::MemFiles;
use super::*;
use crate::diagnostic::mismatches;

const PATH: &str = "/etc/outpost/outpost.toml";
const RULES: &str = "[[rule]]\nid = \"hot\"\nmetric = \"t\"\nabove = 30\n";
const SINGLE_RULES: &str = "[[rule]]\nid = \"a\"\nsensor = \"a\"\nmetric = \"t\"\nabove = 30\n\
    [[rule]]\nid = \"b\"\nsensor = \"b\"\nmetric = \"t\"\nabove = 30\n";
const ACTION_RULES: &str = "[[rule]]\nid = \"fan\"\nmetric = \"t\"\nabove = 30\n\
    actions = [{ broker = \"nowhere\", topic = \"fan/set\", on_firing = \"ON\" }]\n";

/// A self-signed certificate, the key it was made with, and another key
/// (EC P-256, made with openssl for these tests).
const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBhTCCASugAwIBAgIUW6tpqgp7WiIBwwzY26LBsbmVP6IwCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMb3V0cG9zdC10ZXN0MCAXDTI2MTIwMTEwMzQwMFoYDzIxMjYx
MTA3MTAzNDAwWjAXMRUwEwYDVQQDDAxvdXRwb3N0LXRlc3QwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAATAcy/4BWX5wdj0jc1OJEtSXrX253MTbf6pmw528RkwikEg
pdihu+/y4wW2uVagi5fv5bLEnHYQ/rLsvEvlg/4uo1MwUTAdBgNVHQ4EFgQUVHqx
KbQ73XMUlpUsuEnDHfizbJQwHwYDVR0jBBgwFoAUVHqxKbQ73XMUlpUsuEnDHfiz
bJQwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiBbXOrDVY1nR3Os
MU7sYdNrgFntLlufRsc9Ay3f/zQqywIhAJQPvQWOylQ8j1zE4exxl6tAJP9eSDsG
1dCV2zOOk1Nc
-----END CERTIFICATE-----
";
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgGPrpwAqwW9/LEAPF
wvpZu4uZDYmLtensLWqGvHZA0JGhRANCAATAcy/4BWX5wdj0jc1OJEtSXrX253MT
bf6pmw528RkwikEgpdihu+/y4wW2uVagi5fv5bLEnHYQ/rLsvEvlg/4u
-----END PRIVATE KEY-----
";
const OTHER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgvgMNZz1EEk7k/J13
my5SjYlXYFIHb4F9X/4igxRUovahRANCAATd/560W9Oamg38ap27EumQDhCHm9yx
UnQDyweCb2MEw94HNBE84z24dlj4QIoMAs/7DHoGYLrRmb0mOish5bEz
-----END PRIVATE KEY-----
";

/// The files every case can name, under `/etc/outpost`.
fn files() -> MemFiles {
    MemFiles::default()
        .with("/etc/outpost/outpost.toml", "")
        .with("/etc/outpost/rules.toml", RULES)
        .with("/etc/outpost/actions.toml", ACTION_RULES)
        .with("/etc/outpost/single.toml", SINGLE_RULES)
        .with_dir("/etc/outpost/dir")
        .with("/etc/outpost/password", "hunter2\n")
        .with_mode("/etc/outpost/open-password", 0o100644, "hunter2\n")
        .with("/etc/outpost/empty-password", "\n")
        .with("/etc/outpost/latin1-password", b"h\xe9\n".to_vec())
        .with("/etc/outpost/junk.pem", "not a certificate")
        .with("/etc/outpost/cert.pem", CERT)
        .with("/etc/outpost/key.pem", KEY)
        .with_mode("/etc/outpost/open-key.pem", 0o100640, KEY)
        .with("/etc/outpost/other-key.pem", OTHER_KEY)
}

/// Each diagnostic as printed, without the config file's path: `LINE:COL:
/// message`, `message` for the whole file, or with the path of another file.
fn problems(text: &str, files: &MemFiles) -> Vec<String> {
    let show = |d: &Diagnostic| {
        let s = d.to_string();
        match s.strip_prefix(PATH) {
            Some(rest) => rest.trim_start_matches(':').trim_start().to_string(),
            None => s,
        }
    };
    match compile(Path::new(PATH), text, files) {
        Ok(c) => c.warnings.iter().map(show).collect(),
        Err(d) => d.iter().map(show).collect(),
    }
}

/// (config, every diagnostic it must give), one per distinct message.
const CASES: &[(&str, &[&str])] = &[
    // The file itself.
    (
        "[gateway\nid = \"gw\"\n",
        &["1:9: unclosed table, expected `]`"],
    ),
    (
        "[gatway]\nid = \"gw\"\n",
        &[
            "missing [gateway] section (it needs at least `id`)",
            "1:2: unknown section `gatway`; expected one of: gateway, upstream, outbox, rules, http, serial, mqtt, simulate, homeassistant, modbus, remote",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\nstat_dir = \"/x\"\n",
        &["3:1: unknown field `stat_dir`, expected one of `id`, `state_dir`, `rules`, `log_level`"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[serial]\npath = \"/dev/ttyUSB0\"\n",
        &["3:1: `serial` must be written as [[serial]] tables"],
    ),
    // [gateway]
    (
        "[gateway]\nid = \"a b\"\n",
        &["2:6: gateway id `a b` must match [A-Za-z0-9_-]+ (at most 64 characters)"],
    ),
    (
        "[gateway]\nid = \"gw\"\nrules = []\n",
        &["`gateway.rules` is empty; name at least one rules file"],
    ),
    (
        "[gateway]\nid = \"gw\"\nrules = [\"nope.toml\"]\n",
        &[
            "3:10: cannot read rules file `/etc/outpost/nope.toml`: No such file or directory (os error 2)",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\nrules = [\"dir\"]\n",
        &["3:10: rules file `/etc/outpost/dir` is not a file"],
    ),
    (
        "[gateway]\nid = \"gw\"\nlog_level = \"[[\"\n",
        &["3:13: invalid log_level `[[`; try \"info\" or \"outpost=debug\""],
    ),
    (
        "[gateway]\nid = \"gw\"\nrules = [\"actions.toml\"]\n",
        &[
            "/etc/outpost/actions.toml:2:6: rule `fan` has an action on broker `nowhere`, but no [[mqtt]] source has that name",
        ],
    ),
    // [upstream]: the broker keys.
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"http://x\"\n",
        &[
            "4:7: `http://x` is not an MQTT URL; write it like \"mqtt://host:1883\" or \"mqtts://host:8883\"",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\nusername = \"u\"\npassword = \"p\"\npassword_file = \"password\"\n",
        &["7:17: give either `password` or `password_file`, not both"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\nusername = \"u\"\npassword_file = \"empty-password\"\n",
        &["6:17: password file `/etc/outpost/empty-password` is empty"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\nusername = \"u\"\npassword_file = \"latin1-password\"\n",
        &[
            "6:17: cannot read password file `/etc/outpost/latin1-password`: stream did not contain valid UTF-8",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\npassword_file = \"password\"\n",
        &["a password is set without a `username`"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\nca_file = \"junk.pem\"\n",
        &["5:11: `ca_file` needs an mqtts:// url"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtts://h\"\ncert_file = \"cert.pem\"\n",
        &["4:7: `cert_file` and `key_file` go together (mutual TLS needs both)"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtts://h\"\nkeep_alive = \"1s\"\n",
        &["5:14: keep_alive must be at least 5s"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtts://h\"\nkeep_alive = \"soon\"\n",
        &["5:14: invalid duration `soon`: expected number at 0"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\nclient_id = \"\"\n",
        &["4:7: client_id must be 1 to 128 characters"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtts://h\"\nca_file = \"junk.pem\"\n",
        &["5:11: ca_file /etc/outpost/junk.pem holds no PEM certificate"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtts://h\"\ncert_file = \"cert.pem\"\nkey_file = \"other-key.pem\"\n",
        &[
            "6:12: key_file /etc/outpost/other-key.pem does not fit cert_file: keys may not be consistent: KeyMismatch",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtts://h\"\ncert_file = \"junk.pem\"\nkey_file = \"key.pem\"\n",
        &["5:13: cert_file /etc/outpost/junk.pem holds no PEM certificate"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtts://h\"\ncert_file = \"cert.pem\"\nkey_file = \"junk.pem\"\n",
        &["6:12: key_file /etc/outpost/junk.pem holds no PEM private key (PKCS#1, PKCS#8 or SEC1)"],
    ),
    // [upstream]: its own keys.
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\ntopic_prefix = \"a//b\"\n",
        &["5:16: topic_prefix `a//b` has an empty level (leading, trailing or double `/`)"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\nmax_payload = \"512B\"\n",
        &["5:15: max_payload must be between 1KiB and 256MiB"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\nmax_payload = \"lots\"\n",
        &["5:15: invalid size `lots`; write it like \"64MiB\""],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h:1883\"\n[[mqtt]]\nurl = \"mqtt://H:1883\"\ntopics = [\"a/#\"]\nclient_id = \"outpost-gw\"\n",
        &[
            "8:13: [[mqtt]] `mqtt-1` connects to mqtt://H:1883 with client_id `outpost-gw`, like [upstream]; the broker would drop one connection whenever the other connects: give each its own `client_id`",
        ],
    ),
    // [homeassistant]
    (
        "[gateway]\nid = \"gw\"\n[homeassistant]\n",
        &[
            "3:1: [homeassistant] needs an [upstream] broker (Home Assistant's), which is missing or invalid",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\n[homeassistant]\ndiscovery_prefix = \"$ha\"\n",
        &["6:20: discovery_prefix `$ha` starts with `$`, which brokers reserve"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\n[homeassistant]\nnode_name = \" \"\n",
        &["6:13: node_name must be 1 to 128 characters"],
    ),
    // [outbox], [http]
    (
        "[gateway]\nid = \"gw\"\n[outbox]\nflush = \"sometimes\"\n",
        &["4:9: flush must be \"always\" or a period like \"1s\", not `sometimes`"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[outbox]\nmax_bytes = 0\n",
        &["4:13: size must be greater than zero"],
    ),
    // [rules]
    (
        "[gateway]\nid = \"gw\"\n[rules]\nmax_pairs = 0\n",
        &["4:13: max_pairs must be between 1 and 10000000"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[rules]\non_max_pairs = \"drop\"\n",
        &["4:16: on_max_pairs must be \"evict\" or \"refuse\", not `drop`"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[rules]\nmax_samples_per_pair = 8\n",
        &["4:24: max_samples_per_pair must be between 16 and 10000000"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[rules]\nmax_samples = 0\n",
        &["4:15: max_samples must be between 1 and 1000000000"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[rules]\nmax_pairs = 1000\nmax_samples = 3999\n",
        &[
            "5:15: max_samples = 3999 is less than 4 x max_pairs = 4000: each pair must be able to keep a few samples",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\nrules = [\"single.toml\"]\n[rules]\nmax_pairs = 1\n",
        &[
            "5:13: max_pairs = 1 is less than the 2 rules that name one sensor and one metric (each may keep a pair)",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\n[rules]\nmax_pair = 5\n",
        &[
            "4:1: unknown field `max_pair`, expected one of `max_pairs`, `on_max_pairs`, `max_samples`, `max_samples_per_pair`",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\n[http]\nlisten = \"localhost\"\n",
        &[
            "4:10: listen must be an address like \"127.0.0.1:9184\" (or \"\" to disable), not `localhost`",
        ],
    ),
    // [[serial]]
    (
        "[gateway]\nid = \"gw\"\n[[serial]]\npath = \"/dev/ttyUSB0\"\nformat = \"number\"\n",
        &["4:8: format \"number\" is for MQTT payloads; serial lines use json, kv or csv"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[serial]]\npath = \"/dev/ttyUSB0\"\nbaud = 0\n",
        &["5:8: baud must be greater than zero"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[serial]]\npath = \"/dev/ttyUSB0\"\ndata_bits = 9\n",
        &["5:13: data_bits must be 5, 6, 7 or 8"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[serial]]\npath = \"/dev/ttyUSB0\"\nstop_bits = 3\n",
        &["5:13: stop_bits must be 1 or 2"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[serial]]\npath = \"/dev/ttyUSB0\"\nmax_line = 8\n",
        &["5:12: max_line must be between 16 and 1048576"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[serial]]\npath = \"\"\n",
        &["4:8: serial path is empty"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[serial]]\npath = \"/dev/ttyUSB0\"\nparity = \"mark\"\n",
        &["5:10: unknown variant `mark`, expected one of `none`, `odd`, `even`"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[serial]]\npath = \"/dev/ttyUSB0\"\nformat = \"csv\"\ncolumns = []\n",
        &["6:11: format \"csv\" needs a non-empty `columns` list"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[serial]]\npath = \"/dev/ttyUSB0\"\nformat = \"csv\"\n",
        &["format \"csv\" needs `columns`"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[serial]]\npath = \"/dev/ttyUSB0\"\ncolumns = [\"t\"]\n",
        &["5:11: `columns` is only used with format = \"csv\""],
    ),
    // [[mqtt]]
    (
        "[gateway]\nid = \"gw\"\n[[mqtt]]\nurl = \"mqtt://h\"\ntopics = []\n",
        &["5:10: `topics` is empty; subscribe to at least one filter"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[mqtt]]\nurl = \"mqtt://h\"\ntopics = [\"a/#/b\"]\n",
        &["5:11: `a/#/b`: `#` must be a whole level at the end"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[mqtt]]\nurl = \"mqtt://h\"\ntopics = [\"a/#\"]\nqos = 2\n",
        &["6:7: qos must be 0 or 1"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[mqtt]]\nurl = \"mqtt://h\"\ntopics = [\"a/#\"]\nsensor = \"{x}\"\n",
        &["6:10: unknown placeholder `{x}` in template `{x}`; use {topic}, {N}, {-N}, {+} or {+N}"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[mqtt]]\nurl = \"mqtt://h\"\ntopics = [\"a/#\"]\nformat = \"number\"\nmetric = \"{2\"\n",
        &["7:10: unclosed `{` in template `{2`"],
    ),
    // Source names, [[simulate]]
    (
        "[gateway]\nid = \"gw\"\n[[simulate]]\nname = \"a b\"\nsensor = \"s\"\nmetric = \"t\"\n",
        &["4:8: source name `a b` must match [A-Za-z0-9_-]+"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[simulate]]\nname = \"s\"\nsensor = \"s\"\nmetric = \"t\"\n[[simulate]]\nname = \"s\"\nsensor = \"s\"\nmetric = \"t\"\n",
        &["8:8: duplicate source name `s`"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[simulate]]\nsensor = \"s\"\nmetric = \"t\"\ninterval = \"0s\"\n",
        &["6:12: duration `0s` must be greater than zero"],
    ),
];

/// Things that work but should be fixed: warnings; the config stays valid.
const WARNINGS: &[(&str, &[&str])] = &[
    (
        "[gateway]\nid = \"gw\"\n[rules]\nmax_samples = 1000000\n",
        &[
            "3:1: warning: at these limits the rules' state may take up to 53 MiB; the packaged unit gives the whole gateway 96 MiB (MemoryHigh)",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\nusername = \"u\"\npassword_file = \"open-password\"\n",
        &[
            "6:17: warning: password_file `/etc/outpost/open-password` is readable by group or others (mode 0644); `chmod 600` it, owned by the user outpost runs as",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtts://h\"\ncert_file = \"cert.pem\"\nkey_file = \"open-key.pem\"\n",
        &[
            "6:12: warning: key_file `/etc/outpost/open-key.pem` is readable by group or others (mode 0640); `chmod 600` it, owned by the user outpost runs as",
        ],
    ),
];

#[test]
fn every_problem_is_reported_at_its_place() {
    let files = files();
    let wrong = mismatches(CASES.iter().copied(), |text| problems(text, &files));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn warnings_leave_the_config_valid_and_name_their_place() {
    let files = files();
    let wrong = mismatches(WARNINGS.iter().copied(), |text| {
        match compile(Path::new(PATH), text, &files) {
            Ok(c) => c.warnings.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            Err(d) => vec![format!("refused: {d}")],
        }
        .into_iter()
        .map(|w| w.replacen(&format!("{PATH}:"), "", 1))
        .collect::<Vec<_>>()
    });
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_password_in_a_config_file_others_can_read_is_a_warning() {
    let text = "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\nusername = \"u\"\npassword = \"hunter2\"\n";
    let private = compile(Path::new(PATH), text, &files()).unwrap();
    assert!(private.warnings.is_empty(), "{:?}", private.warnings);
    let open = files().with_mode(PATH, 0o100644, text);
    let c = compile(Path::new(PATH), text, &open).unwrap();
    let warnings: Vec<String> = c.warnings.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        warnings,
        [format!(
            "{PATH}:4:7: warning: this config file `{PATH}` is readable by group or others (mode 0644); \
             `chmod 600` it, owned by the user outpost runs as, and it holds a `password`; or move it into a `password_file`"
        )]
    );
    assert!(
        !format!("{c:?}").contains("hunter2"),
        "the password never shows"
    );
}

#[test]
fn a_config_that_cannot_be_read_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("outpost.toml");
    let d = Config::load(&missing).unwrap_err();
    assert_eq!(
        d.to_string(),
        format!(
            "{}: cannot read config: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn a_valid_config_compiles_with_its_defaults_and_rules() {
    let text = "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtts://broker.example.com\"\n\
        username = \"u\"\npassword_file = \"password\"\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n";
    let c = compile(Path::new(PATH), text, &files()).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.rules.len(), 1);
    assert_eq!(c.gateway.rules, [Path::new("/etc/outpost/rules.toml")]);
    let u = c.upstream.unwrap();
    assert_eq!(u.topic_prefix, "outpost/gw");
    assert_eq!(u.broker.client_id, "outpost-gw");
    assert_eq!(u.broker.url.port, 8883);
    assert_eq!(u.broker.password.unwrap().expose(), "hunter2");
    assert_eq!(u.max_payload, 128 << 10);
    assert_eq!(c.outbox.flush, FlushPolicy::Always);
    assert_eq!(c.limits, crate::rules::Limits::default());
}

#[test]
fn the_rules_limits_compile_from_their_section() {
    let text = "[gateway]\nid = \"gw\"\n[rules]\nmax_pairs = 500\non_max_pairs = \"refuse\"\n\
        max_samples = 2000\nmax_samples_per_pair = 100\n";
    let c = compile(Path::new(PATH), text, &files()).unwrap();
    assert_eq!(
        c.limits,
        crate::rules::Limits {
            max_pairs: 500,
            on_max_pairs: crate::rules::OnMaxPairs::Refuse,
            max_samples: 2000,
            max_samples_per_pair: 100,
        }
    );
}

/// A `[[modbus]]` bus with one device (unit 1, sensor `p`) whose line 8 on
/// is `$body`.
macro_rules! bus {
    ($body:literal) => {
        concat!(
            "[gateway]\nid = \"gw\"\n[[modbus]]\npath = \"/dev/ttyUSB0\"\n",
            "[[modbus.device]]\nunit = 1\nsensor = \"p\"\n",
            $body
        )
    };
}

/// Modbus register tables: one case per distinct problem, at its place.
const MODBUS_CASES: &[(&str, &[&str])] = &[
    (
        bus!(
            "registers = [{ metric = \"t\", kind = \"input\", address = 0, type = \"f32\" },\n  { metric = \"h\", kind = \"input\", address = 1 }]\n"
        ),
        &["9:3: input 1 overlaps 0-1 (of `t`) on unit 1"],
    ),
    (
        bus!(
            "registers = [{ metric = \"t\", kind = \"input\", address = 65535, type = \"u32\" }]\n"
        ),
        &["8:56: a u32 at address 65535 takes 2 registers and runs past the last address, 65535"],
    ),
    (
        bus!("registers = [{ metric = \"t\", kind = \"input\", address = 70000 }]\n"),
        &["8:56: address must be 0 to 65535, not 70000"],
    ),
    (
        bus!(
            "registers = [{ metric = \"t\", kind = \"holding\", address = 0, type = \"f32\", count = 1 }]\n"
        ),
        &["8:83: type f32 takes 2 registers, not 1"],
    ),
    (
        bus!("registers = [{ metric = \"t\", kind = \"coil\", address = 0, type = \"u16\" }]\n"),
        &["8:65: a coil holds one bit: its type is bool, not u16"],
    ),
    (
        bus!(
            "registers = [{ metric = \"t\", kind = \"holding\", address = 0, type = \"bool\" }]\n"
        ),
        &[
            "8:68: type bool is for coils and discrete inputs; a holding register is u16, i16, u32, i32, f32, u64, i64 or f64 (or use `bits`)",
        ],
    ),
    (
        bus!(
            "registers = [{ kind = \"holding\", address = 0, bits = { alarm = 0, door = 16 } }]\n"
        ),
        &["8:74: bit 16 is out of range for a u16 (0 to 15)"],
    ),
    (
        bus!(
            "registers = [{ kind = \"holding\", address = 0, type = \"f32\", bits = { alarm = 0 } }]\n"
        ),
        &["8:68: `bits` are read from an unsigned or signed integer register, not f32"],
    ),
    (
        bus!("registers = [{ kind = \"holding\", address = 0 }]\n"),
        &["8:14: a register entry needs `metric` (one value) or `bits` (a status register's bits)"],
    ),
    (
        bus!("registers = [{ metric = \"t\", kind = \"holding\", address = 0, scale = 0 }]\n"),
        &["8:69: scale must be a finite number other than 0"],
    ),
    (
        bus!("registers = [{ metric = \"t\", kind = \"register\", address = 0 }]\n"),
        &[
            "8:37: unknown variant `register`, expected one of `coil`, `discrete`, `holding`, `input`",
        ],
    ),
    (
        bus!("registers = [{ metric = \"t\", kind = \"input\", address = 0, scael = 2 }]\n"),
        &[
            "8:59: unknown field `scael`, expected one of `metric`, `kind`, `address`, `type`, `count`, `word_order`, `byte_order`, `scale`, `offset`, `bits`",
        ],
    ),
    (
        bus!("registers = []\n"),
        &["8:13: `registers` is empty; map at least one"],
    ),
    // A sensor's metric is read once, across devices and buses.
    (
        bus!(
            "registers = [{ metric = \"t\", kind = \"input\", address = 0 }]\n[[modbus.device]]\nunit = 2\nsensor = \"p\"\nregisters = [{ metric = \"t\", kind = \"input\", address = 5 }]\n"
        ),
        &["12:14: sensor `p` metric `t` is already read from unit 1 input 0"],
    ),
    (
        bus!(
            "registers = [{ metric = \"t\", kind = \"input\", address = 0 }]\n[[modbus.device]]\nunit = 1\nsensor = \"q\"\nregisters = [{ metric = \"t\", kind = \"input\", address = 0 }]\n"
        ),
        &["10:8: unit 1 is on this bus twice"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[modbus]]\npath = \"/dev/ttyUSB0\"\n[[modbus.device]]\nunit = 0\nsensor = \"p\"\nregisters = [{ metric = \"t\", kind = \"input\", address = 0 }]\n",
        &["6:8: unit must be 1 to 247 on an RTU bus, not 0"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[modbus]]\nurl = \"tcp://meter.lan\"\nbaud = 9600\n[[modbus.device]]\nunit = 300\nsensor = \"p\"\nregisters = [{ metric = \"t\", kind = \"input\", address = 0 }]\n",
        &[
            "5:8: `baud` is for serial buses (`path`); a tcp:// bus has none",
            "7:8: unit must be 0 to 255 on a tcp:// bus, not 300",
        ],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[modbus]]\nurl = \"mqtt://meter.lan\"\n[[modbus.device]]\nunit = 1\nsensor = \"p\"\nregisters = [{ metric = \"t\", kind = \"input\", address = 0 }]\n",
        &["4:7: url must be tcp://host:502, not `mqtt://meter.lan`"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[modbus]]\nname = \"bus\"\n",
        &["4:8: [[modbus]] needs `path` (RTU on a serial port) or `url` (tcp://host:502)"],
    ),
    (
        "[gateway]\nid = \"gw\"\n[[modbus]]\nname = \"bus\"\npath = \"/dev/ttyUSB0\"\nmax_registers = 200\n",
        &[
            "4:8: [[modbus]] `bus` has no [[modbus.device]]",
            "6:17: max_registers must be 1 to 125, not 200",
        ],
    ),
];

#[test]
fn every_modbus_table_problem_is_reported_at_its_place() {
    let files = files();
    let wrong = mismatches(MODBUS_CASES.iter().copied(), |text| problems(text, &files));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_modbus_bus_compiles_with_its_defaults() {
    let text = bus!(
        "registers = [\n  { metric = \"temperature\", kind = \"input\", address = 1, type = \"i16\", scale = 0.1 },\n  { metric = \"power\", kind = \"holding\", address = 10, type = \"f32\", word_order = \"little\" },\n  { kind = \"holding\", address = 20, bits = { running = 0, fault = 7 } },\n  { metric = \"pump\", kind = \"coil\", address = 3 },\n]\n"
    );
    let c = compile(Path::new(PATH), text, &files()).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let m = &c.modbus[0];
    assert_eq!(m.name, "modbus-1");
    assert_eq!(m.interval, std::time::Duration::from_secs(5));
    assert_eq!(m.timeout, std::time::Duration::from_millis(500));
    assert_eq!(m.link.to_string(), "/dev/ttyUSB0 at 9600 8N1");
    let d = &m.devices[0];
    assert_eq!(
        (d.unit, d.sensor.as_str(), d.max_registers, d.max_gap),
        (1, "p", 125, 0)
    );
    assert_eq!(d.registers[0].value, ValueType::I16);
    assert_eq!(d.registers[0].scale, 0.1);
    assert_eq!(d.registers[1].word_order, Order::Little);
    assert_eq!(d.registers[1].byte_order, Order::Big);
    assert_eq!(
        d.registers[2].target,
        Target::Bits(vec![("running".into(), 0), ("fault".into(), 7)])
    );
    assert_eq!(d.registers[3].value, ValueType::Bool);
    assert!(c.summary().contains(
        "modbus     modbus-1 /dev/ttyUSB0 at 9600 8N1, 1 device, 4 register entries, every 5s, timeout 500ms"
    ), "{}", c.summary());
}

#[test]
fn a_round_longer_than_the_interval_is_a_warning() {
    let text = "[gateway]\nid = \"gw\"\n[[modbus]]\nname = \"bus\"\nurl = \"tcp://[::1]:5020\"\ninterval = \"1s\"\ntimeout = \"600ms\"\n\
        [[modbus.device]]\nunit = 1\nsensor = \"a\"\nregisters = [{ metric = \"t\", kind = \"input\", address = 0 }]\n\
        [[modbus.device]]\nunit = 2\nsensor = \"b\"\nregisters = [{ metric = \"t\", kind = \"input\", address = 0 }]\n";
    assert_eq!(
        problems(text, &files()),
        [
            "4:8: warning: with 2 devices not answering, a poll round takes 2 x timeout = 1s 200ms, longer than interval (1s)"
        ]
    );
}
