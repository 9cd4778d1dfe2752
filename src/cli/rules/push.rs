//! `outpost rules push` and `outpost rules keygen`: rules sent to a gateway
//! or a group over the broker of `[upstream]`, and the key pair that signs
//! them. The format and what a gateway does with a push are `push` and
//! `remote`; this is the operator's side.
//!
//! `push` connects with the `[upstream]` settings of the config it is given
//! (URL, login, TLS) under a client id of its own (`{client_id}-push-{random}`:
//! a broker drops the older of two connections with one id, so run on the
//! gateway itself, it must not take the gateway's). For `--gateway` it
//! subscribes to the gateway's `rules/result` first, then publishes, and
//! waits for the answer that carries its push's `id` (the retained answer
//! to an earlier push is not it).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use tokio::time::Instant;

use super::super::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK, load, print_diagnostics};
use crate::alert::rfc3339_ms;
use crate::config::{BrokerConfig, Config};
use crate::mqtt;
use crate::push::outcome::{Outcome, Reason, Verdict};
use crate::push::sign::{SigningKey, pem, pkcs8_from_seed, signed_message, spki_der};
use crate::push::{self, MAX_PUSH_BYTES, Push, Target, Version};

/// What `outpost rules push` was asked.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["gateway", "group"])))]
pub struct PushArgs {
    #[command(flatten)]
    pub config: super::super::ConfigArg,
    /// The gateway to push to (its `[gateway] id`); waits for its answer.
    #[arg(long, value_name = "ID")]
    pub gateway: Option<String>,
    /// The group to push to (retained: gateways that come online later get it too).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// The version label (default: the time now, 2026-11-26T10:00:00.123Z); a
    /// gateway applies only versions above the last one it accepted.
    #[arg(long = "version", value_name = "V")]
    pub version: Option<String>,
    /// Sign with this ed25519 private key (PEM, from `outpost rules keygen`
    /// or `openssl genpkey -algorithm ed25519`).
    #[arg(long, value_name = "PRIVATE_KEY_FILE")]
    pub key: Option<PathBuf>,
    /// Check the file as `outpost check` would with this config first, and
    /// publish nothing when it has a mistake.
    #[arg(long)]
    pub check: bool,
    /// How long to wait for the gateway's answer.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// The gateway's `[upstream] topic_prefix`, when it is not `outpost/ID`
    /// (default: this config's own when ID is its gateway, else `outpost/ID`).
    #[arg(long, value_name = "PREFIX")]
    pub topic_prefix: Option<String>,
    /// The rules file to push.
    pub rules: PathBuf,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s).map_err(|e| e.to_string())
}

/// Pushes a rules file; 0 applied (or published to a group), 2 refused or
/// invalid, 1 no answer or no broker.
pub fn push(a: &PushArgs) -> u8 {
    let config = match load(&a.config.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(upstream) = config.upstream.clone() else {
        eprintln!(
            "{}: no [upstream]: `rules push` publishes through that broker",
            a.config.config.display()
        );
        return EXIT_INVALID;
    };
    let file = a.rules.display();
    let text = match std::fs::read_to_string(&a.rules) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{file}: cannot read: {e}");
            return EXIT_INVALID;
        }
    };
    let version = match a.version.as_deref() {
        Some(v) => Version::parse(v),
        None => Version::parse(&rfc3339_ms(crate::reading::wall_ms())),
    };
    let version = match version {
        Ok(v) => v,
        Err(e) => {
            eprintln!("--version: {e}");
            return EXIT_INVALID;
        }
    };
    let (target, prefix) = match target(a, &config, &upstream.topic_prefix) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_INVALID;
        }
    };
    if a.check {
        let checked = config
            .load_local_rules()
            .and_then(|local| config.check_pushed(&a.rules, &text, &local));
        if let Err(d) = checked {
            print_diagnostics(&d);
            eprintln!(
                "{file}: {} error{}; nothing was published",
                d.len(),
                if d.len() == 1 { "" } else { "s" }
            );
            return EXIT_INVALID;
        }
    }
    let signature = match &a.key {
        Some(path) => match read_key(path) {
            Ok(k) => Some(k.sign(&signed_message(&target, &version, &text))),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return EXIT_INVALID;
            }
        },
        None => None,
    };
    let id = format!("{:016x}", rand::random::<u64>());
    let push = Push {
        version,
        rules: text,
        signature,
        id: Some(id.clone()),
    };
    let payload = push.to_payload();
    if payload.len() > MAX_PUSH_BYTES {
        eprintln!(
            "{file}: the push would be {} bytes; a gateway reads at most {MAX_PUSH_BYTES}",
            payload.len()
        );
        return EXIT_INVALID;
    }
    let exchange = Exchange {
        broker: own_client_id(&upstream.broker),
        topic: match &target {
            Target::Gateway(_) => push::set_topic(&prefix),
            Target::Group(g) => push::group_topic(g),
        },
        retain: matches!(target, Target::Group(_)),
        payload,
        answer: matches!(target, Target::Gateway(_)).then(|| push::result_topic(&prefix)),
        id,
        timeout: a.timeout,
    };
    let rt = match super::super::runtime(None) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(exchange.run()) {
        Err(e) => {
            eprintln!("{e}");
            EXIT_FAILURE
        }
        Ok(None) => {
            println!(
                "published version {} to group {} (retained on {}): each gateway following it applies it when it sees it, and answers on {{its prefix}}/rules/result",
                push.version,
                match &target {
                    Target::Group(g) => g.as_str(),
                    Target::Gateway(g) => g.as_str(),
                },
                exchange.topic
            );
            EXIT_OK
        }
        Ok(Some(o)) => {
            let (code, lines) = report(&o, &a.rules);
            for l in lines {
                if code == EXIT_OK {
                    println!("{l}");
                } else {
                    eprintln!("{l}");
                }
            }
            code
        }
    }
}

/// Who the push is for, and the gateway's topic prefix.
fn target(a: &PushArgs, config: &Config, own_prefix: &str) -> Result<(Target, String), String> {
    if let Some(g) = &a.group {
        if !push::valid_name(g) {
            return Err(format!(
                "--group: `{g}` must match [A-Za-z0-9_-]+ (at most 64 characters)"
            ));
        }
        return Ok((Target::Group(g.clone()), String::new()));
    }
    let id = a.gateway.clone().unwrap_or_default();
    if !push::valid_name(&id) {
        return Err(format!(
            "--gateway: `{id}` must match [A-Za-z0-9_-]+ (at most 64 characters)"
        ));
    }
    let prefix = match &a.topic_prefix {
        Some(p) => {
            crate::topic::validate_prefix(p).map_err(|e| format!("--topic-prefix: {e}"))?;
            p.clone()
        }
        None if id == config.gateway.id => own_prefix.to_string(),
        None => format!("outpost/{id}"),
    };
    Ok((Target::Gateway(id), prefix))
}

/// The broker settings with a client id of this command's own.
fn own_client_id(broker: &BrokerConfig) -> BrokerConfig {
    let mut b = broker.clone();
    b.client_id = format!("{}-push-{:08x}", broker.client_id, rand::random::<u32>());
    b
}

fn read_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    SigningKey::from_pem(&text)
}

/// The gateway's answer as the lines to print (stdout when the exit code
/// is 0, else stderr), and the exit code.
fn report(o: &Outcome, rules: &Path) -> (u8, Vec<String>) {
    let file = rules.display();
    let in_force = format!(
        "{} rules in force ({} pushed{}), hash {}",
        o.rules,
        o.pushed,
        o.in_force
            .as_ref()
            .map_or(String::new(), |v| format!(", version {v}")),
        o.hash
    );
    let version = o.version.as_deref().unwrap_or("?");
    match o.result {
        Verdict::Applied if o.reason == Some(Reason::Unchanged) => (
            EXIT_OK,
            vec![format!(
                "gateway {} runs version {version} already (unchanged): {in_force}",
                o.gateway
            )],
        ),
        Verdict::Applied => (
            EXIT_OK,
            vec![format!(
                "gateway {} applied version {version}: {in_force}",
                o.gateway
            )],
        ),
        Verdict::Refused => {
            // The gateway's positions are in the text it was sent, which
            // is this file's text: they carry over as they are.
            let mut lines: Vec<String> = o
                .errors
                .iter()
                .map(|e| {
                    if e.line == 0 {
                        format!("{file}: {}", e.message)
                    } else {
                        format!("{file}:{}:{}: {}", e.line, e.col, e.message)
                    }
                })
                .collect();
            if o.errors_omitted > 0 {
                lines.push(format!(
                    "{file}: and {} more errors (the answer was cut to fit the gateway's max_payload)",
                    o.errors_omitted
                ));
            }
            let reason = o.reason.map_or("", Reason::as_str);
            lines.push(format!(
                "gateway {} refused version {version} ({reason}); it keeps {in_force}",
                o.gateway
            ));
            (EXIT_INVALID, lines)
        }
    }
}

/// One connection: publish the push, and for a gateway wait for its answer.
struct Exchange {
    broker: BrokerConfig,
    topic: String,
    retain: bool,
    payload: Vec<u8>,
    /// The topic of the answer, for a gateway.
    answer: Option<String>,
    id: String,
    timeout: Duration,
}

impl Exchange {
    /// `Ok(None)`: published (to a group); `Ok(Some)`: the gateway's answer.
    async fn run(&self) -> Result<Option<Outcome>, String> {
        let url = &self.broker.url;
        // Room for the push out, and for a long answer in.
        let mut opts = mqtt::options(&self.broker, MAX_PUSH_BYTES + 4096)
            .map_err(|e| format!("{url}: TLS setup failed: {e}"))?;
        opts.set_max_packet_size(16 << 20, MAX_PUSH_BYTES + 4096);
        let (client, eventloop) = AsyncClient::new(opts, 10);
        let mut poll = mqtt::poll(eventloop);
        let deadline = Instant::now() + self.timeout;
        let mut published = false;
        // The push went out (its PUBACK may not have come back).
        let mut sent = false;
        let result = loop {
            let Ok((el, ev)) = tokio::time::timeout_at(deadline, &mut poll).await else {
                break Err(if published {
                    format!(
                        "no answer from the gateway on {} within {:?}: is it running, connected to {url}, with [remote] rules = true, and may this login publish to {}?",
                        self.answer.as_deref().unwrap_or("?"),
                        self.timeout,
                        self.topic
                    )
                } else {
                    format!("could not publish to {url} within {:?}", self.timeout)
                });
            };
            poll = mqtt::poll(el);
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => match &self.answer {
                    Some(t) => {
                        if let Err(e) = client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                            break Err(format!("{url}: cannot subscribe: {e}"));
                        }
                    }
                    None => {
                        self.publish(&client)?;
                        sent = true;
                    }
                },
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    self.publish(&client)?;
                    sent = true;
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    published = true;
                    if self.answer.is_none() {
                        break Ok(None);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p)))
                    if Some(&p.topic) == self.answer.as_ref() =>
                {
                    match serde_json::from_slice::<Outcome>(&p.payload) {
                        Ok(o) if o.id.as_deref() == Some(self.id.as_str()) => break Ok(Some(o)),
                        // An answer to another push (the retained one).
                        _ => {}
                    }
                }
                Ok(_) => {}
                // A broker may close the connection of a login its ACL
                // refuses a publish (MQTT 3.1.1 has no way to say so).
                Err(e) if sent => {
                    break Err(format!(
                        "no answer: {url} closed the connection after the push was sent ({}): may this login publish to {}?",
                        mqtt::explain(&e, &url.host),
                        self.topic
                    ));
                }
                Err(e) => break Err(format!("{url}: {}", mqtt::explain(&e, &url.host))),
            }
        };
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let (el, ev) = (&mut poll).await;
                poll = mqtt::poll(el);
                if matches!(ev, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {
                    break;
                }
            }
        })
        .await;
        result
    }

    fn publish(&self, client: &AsyncClient) -> Result<(), String> {
        client
            .try_publish(
                self.topic.clone(),
                QoS::AtLeastOnce,
                self.retain,
                self.payload.clone(),
            )
            .map_err(|e| format!("cannot publish: {e}"))
    }
}

/// `outpost rules keygen FILE`: a new ed25519 key pair. The private key
/// goes to FILE (PEM PKCS#8, mode 0600, never over an existing file), the
/// public key to FILE.pub (base64, one line: `public_key_file` reads it,
/// `public_key` takes the same text); prints the public key.
pub fn keygen(file: &Path) -> u8 {
    use ring::rand::SecureRandom as _;
    let mut seed = [0u8; 32];
    if let Err(e) = ring::rand::SystemRandom::new().fill(&mut seed) {
        eprintln!("outpost: cannot make a key: no randomness from the system ({e})");
        return EXIT_FAILURE;
    }
    // PKCS#8 v1, as OpenSSL writes it (OpenSSL does not read ring's v2).
    let pkcs8 = pkcs8_from_seed(&seed);
    let key = match SigningKey::from_pkcs8(&pkcs8) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("outpost: {e}");
            return EXIT_FAILURE;
        }
    };
    let public = key.public();
    let mut pub_path = file.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    let written = write_new(file, 0o600, pem("PRIVATE KEY", &pkcs8).as_bytes()).and_then(|()| {
        write_new(
            &pub_path,
            0o644,
            format!("{}\n", public.to_base64()).as_bytes(),
        )
    });
    if let Err((path, e)) = written {
        eprintln!("{}: {e}", path.display());
        return EXIT_FAILURE;
    }
    println!(
        "private key: {} (keep it secret: it signs pushes)",
        file.display()
    );
    println!("public key:  {}", pub_path.display());
    println!();
    println!("in each gateway's outpost.toml:");
    println!();
    println!("[remote]");
    println!("rules = true");
    println!("public_key = \"{}\"", public.to_base64());
    println!();
    println!("(the same key as PEM, for other tools:)");
    print!("{}", pem("PUBLIC KEY", &spki_der(&public)));
    EXIT_OK
}

/// Creates `path` with `mode` (never over an existing file) and writes it, synced.
fn write_new(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let at = |e| (path.to_path_buf(), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(at)?;
    f.write_all(bytes).map_err(at)?;
    f.sync_all().map_err(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads_and_a_matching_public_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fleet.key");
        assert_eq!(keygen(&file), EXIT_OK);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = read_key(&file).unwrap();
        let public = std::fs::read_to_string(dir.path().join("fleet.key.pub")).unwrap();
        assert_eq!(
            crate::push::sign::PublicKey::parse(&public),
            Ok(key.public())
        );
        // Never over an existing key.
        assert_eq!(keygen(&file), EXIT_FAILURE);
        assert_eq!(read_key(&file).unwrap().public(), key.public());
    }

    #[test]
    fn an_answer_is_printed_with_the_operators_file_and_the_gateways_positions() {
        let o = Outcome {
            gateway: "gw1".into(),
            id: Some("1".into()),
            version: Some("8".into()),
            result: Verdict::Refused,
            reason: Some(Reason::Invalid),
            in_force: Some("7".into()),
            rules: 3,
            pushed: 2,
            hash: "sha256:00".into(),
            errors: vec![
                crate::push::outcome::ErrorAt {
                    line: 4,
                    col: 1,
                    message: "unknown field `abvoe`".into(),
                },
                crate::push::outcome::ErrorAt::whole("no place"),
            ],
            errors_omitted: 2,
            ts: String::new(),
        };
        assert_eq!(
            report(&o, Path::new("site/r.toml")),
            (
                EXIT_INVALID,
                vec![
                    "site/r.toml:4:1: unknown field `abvoe`".to_string(),
                    "site/r.toml: no place".to_string(),
                    "site/r.toml: and 2 more errors (the answer was cut to fit the gateway's max_payload)".to_string(),
                    "gateway gw1 refused version 8 (invalid); it keeps 3 rules in force (2 pushed, version 7), hash sha256:00".to_string(),
                ]
            )
        );
        let applied = Outcome {
            result: Verdict::Applied,
            reason: None,
            in_force: Some("8".into()),
            errors: vec![],
            errors_omitted: 0,
            ..o.clone()
        };
        assert_eq!(
            report(&applied, Path::new("r.toml")),
            (
                EXIT_OK,
                vec!["gateway gw1 applied version 8: 3 rules in force (2 pushed, version 8), hash sha256:00".to_string()]
            )
        );
        let unchanged = Outcome {
            reason: Some(Reason::Unchanged),
            ..applied
        };
        assert_eq!(report(&unchanged, Path::new("r.toml")).0, EXIT_OK);
        assert!(report(&unchanged, Path::new("r.toml")).1[0].contains("already (unchanged)"));
    }
}
