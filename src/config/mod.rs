//! `outpost.toml`: what the gateway reads, where alerts go, and how it runs.
//!
//! Loading happens in two stages, as in ripgrep and Vector: the file is
//! deserialized into `Raw*` structs exactly as written (unknown keys refused),
//! then compiled into the [`Config`] the components are built from. Both
//! stages collect *every* problem as a [`Diagnostic`] with `FILE:LINE:COL`,
//! and the rules files the config names are loaded and checked too.

pub mod broker;
mod rules_file;
mod units;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use crate::diagnostic::{Diagnostic, Diagnostics, Source, deserialize_lenient};
use crate::payload::Format;
use crate::rules::Rule;
use crate::tls::{self, TlsFiles};
use crate::topic;
use crate::topic::{SensorTemplate, validate_filter};
pub use broker::{BrokerConfig, BrokerUrl, Secret};
pub use rules_file::{Places, load_rules, parse_rules};
pub use units::parse_duration;
use units::{ByteSize, HumanDuration};

pub const DEFAULT_PATH: &str = "/etc/outpost/outpost.toml";

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub gateway: GatewayConfig,
    pub upstream: Option<UpstreamConfig>,
    pub outbox: OutboxConfig,
    pub http: HttpConfig,
    pub serial: Vec<SerialConfig>,
    pub mqtt: Vec<MqttSourceConfig>,
    pub simulate: Vec<SimulateConfig>,
    /// The rules of every file in `gateway.rules`, already validated.
    pub rules: Vec<Rule>,
    /// Things that work but should be fixed (a private key others can
    /// read), as `FILE:LINE:COL: warning: ...`: printed by `check`, logged
    /// at start.
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub id: String,
    pub state_dir: PathBuf,
    pub rules: Vec<PathBuf>,
    pub log_level: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub broker: BrokerConfig,
    pub topic_prefix: String,
    /// Largest alert payload sent; longer messages are cut to fit.
    pub max_payload: usize,
    /// `[homeassistant]`: MQTT discovery, when enabled.
    pub homeassistant: Option<HomeAssistantConfig>,
}

/// `[homeassistant]`: each (rule, sensor) pair appears in Home Assistant as
/// a `binary_sensor` of class `problem` (see `crate::homeassistant`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAssistantConfig {
    /// Default "homeassistant", as in Home Assistant's MQTT integration.
    pub discovery_prefix: String,
    /// The gateway id: node id in discovery topics and device identifier.
    pub node_id: String,
    /// The device name shown in Home Assistant (default: the gateway id).
    pub node_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync (sled flush) before every publish; alerts arriving together share one.
    Always,
    /// Flush on this period; a power cut can lose at most this much.
    Every(Duration),
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub flush: FlushPolicy,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    None,
    Software,
    Hardware,
}

#[derive(Debug, Clone)]
pub struct SerialConfig {
    pub name: String,
    pub path: PathBuf,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
    pub format: Format,
    pub sensor: String,
    pub columns: Vec<String>,
    pub max_line: usize,
    pub reopen_after_silence: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct MqttSourceConfig {
    pub name: String,
    pub broker: BrokerConfig,
    pub topics: Vec<String>,
    pub qos: u8,
    pub format: Format,
    pub sensor: SensorTemplate,
    /// For `format = "number"`: the metric name, a template like `sensor`.
    pub metric: SensorTemplate,
    pub columns: Vec<String>,
    pub max_payload: usize,
}

#[derive(Debug, Clone)]
pub struct SimulateConfig {
    pub name: String,
    pub sensor: String,
    pub metric: String,
    pub interval: Duration,
    pub base: f64,
    pub amplitude: f64,
    pub period: Duration,
    pub noise: f64,
}

// ---------------------------------------------------------------------------
// Stage 1: the file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    id: Spanned<String>,
    state_dir: Option<Spanned<String>>,
    rules: Option<Vec<Spanned<String>>>,
    log_level: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Spanned<String>,
    client_id: Option<Spanned<String>>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    topic_prefix: Option<Spanned<String>>,
    keep_alive: Option<Spanned<HumanDuration>>,
    max_payload: Option<Spanned<ByteSize>>,
    #[serde(skip)]
    client_id_span: Option<std::ops::Range<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    max_bytes: Option<ByteSize>,
    max_age: Option<HumanDuration>,
    flush: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSerial {
    name: Option<Spanned<String>>,
    path: Spanned<String>,
    baud: Option<Spanned<u32>>,
    data_bits: Option<Spanned<u8>>,
    parity: Option<Parity>,
    stop_bits: Option<Spanned<u8>>,
    flow_control: Option<FlowControl>,
    format: Option<Spanned<Format>>,
    sensor: Option<Spanned<String>>,
    columns: Option<Spanned<Vec<String>>>,
    max_line: Option<Spanned<usize>>,
    reopen_after_silence: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    name: Option<Spanned<String>>,
    url: Spanned<String>,
    topics: Spanned<Vec<Spanned<String>>>,
    qos: Option<Spanned<u8>>,
    format: Option<Spanned<Format>>,
    sensor: Option<Spanned<String>>,
    metric: Option<Spanned<String>>,
    columns: Option<Spanned<Vec<String>>>,
    client_id: Option<Spanned<String>>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    keep_alive: Option<Spanned<HumanDuration>>,
    max_payload: Option<Spanned<ByteSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimulate {
    name: Option<Spanned<String>>,
    sensor: Spanned<String>,
    metric: Spanned<String>,
    interval: Option<HumanDuration>,
    base: Option<f64>,
    amplitude: Option<f64>,
    period: Option<HumanDuration>,
    noise: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHomeAssistant {
    enabled: Option<bool>,
    discovery_prefix: Option<Spanned<String>>,
    node_name: Option<Spanned<String>>,
}

const SECTIONS: &[&str] = &[
    "gateway",
    "upstream",
    "outbox",
    "http",
    "serial",
    "mqtt",
    "simulate",
    "homeassistant",
];

// ---------------------------------------------------------------------------
// Stage 2: compiling.

impl Config {
    /// Loads and validates `path` and every rules file it names.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("cannot read config: {e}"),
            }])
        })?;
        Config::from_str(path, &text)
    }

    /// Validates `text` as if it had been read from `path`.
    pub fn from_str(path: &Path, text: &str) -> Result<Config, Diagnostics> {
        let src = Source::new(path, text);
        let mut diags = Diagnostics::default();
        let Some(root) = src.parse(&mut diags) else {
            return Err(diags);
        };
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut c = Compiler {
            src: &src,
            base,
            diags: &mut diags,
            names: HashSet::new(),
            warnings: Vec::new(),
            client_ids: Vec::new(),
        };

        let mut sections: BTreeMap<&str, &Spanned<DeValue>> = BTreeMap::new();
        for (k, v) in root.get_ref() {
            let key = k.get_ref().as_ref();
            match SECTIONS.iter().find(|s| **s == key) {
                Some(s) => {
                    sections.insert(s, v);
                }
                None => c.err(
                    k.span(),
                    format!(
                        "unknown section `{key}`; expected one of: {}",
                        SECTIONS.join(", ")
                    ),
                ),
            }
        }

        let gateway = match sections.get("gateway") {
            Some(v) => c.de::<RawGateway>(v).and_then(|raw| c.gateway(raw)),
            None => {
                c.diags
                    .push(src.whole("missing [gateway] section (it needs at least `id`)"));
                None
            }
        };
        let gw_id = gateway.as_ref().map(|g| g.id.clone());
        let mut upstream = sections
            .get("upstream")
            .and_then(|v| c.de::<RawUpstream>(v))
            .and_then(|raw| c.upstream(raw, gw_id.as_deref()));
        if let Some(v) = sections.get("homeassistant")
            && let Some(raw) = c.de::<RawHomeAssistant>(v)
        {
            let ha = c.homeassistant(raw, v.span(), gw_id.as_deref(), upstream.is_some());
            if let Some(u) = upstream.as_mut() {
                u.homeassistant = ha;
            }
        }
        let outbox = match sections.get("outbox") {
            Some(v) => c.de::<RawOutbox>(v).and_then(|raw| c.outbox(raw)),
            None => Some(OutboxConfig::default()),
        };
        let http = match sections.get("http") {
            Some(v) => c.de::<RawHttp>(v).and_then(|raw| c.http(raw)),
            None => Some(HttpConfig::default()),
        };
        let mut serial = Vec::new();
        for (i, v) in c.array(sections.get("serial").copied(), "serial") {
            if let Some(s) = c.de::<RawSerial>(&v).and_then(|raw| c.serial(raw, i)) {
                serial.push(s);
            }
        }
        let mut mqtt = Vec::new();
        for (i, v) in c.array(sections.get("mqtt").copied(), "mqtt") {
            if let Some(m) = c
                .de::<RawMqtt>(&v)
                .and_then(|raw| c.mqtt(raw, i, gw_id.as_deref()))
            {
                mqtt.push(m);
            }
        }
        let mut simulate = Vec::new();
        for (i, v) in c.array(sections.get("simulate").copied(), "simulate") {
            if let Some(s) = c.de::<RawSimulate>(&v).and_then(|raw| c.simulate(raw, i)) {
                simulate.push(s);
            }
        }

        let mut warnings = std::mem::take(&mut c.warnings);
        warnings.sort_by_key(|d| (d.line, d.col));
        let rules = match &gateway {
            Some(g) => match rules_file::load_rules_placed(&g.rules) {
                Ok((rules, places)) => {
                    diags.extend(check_actions(&rules, &places, &mqtt));
                    rules
                }
                Err(d) => {
                    diags.extend(d);
                    Vec::new()
                }
            },
            None => Vec::new(),
        };

        diags.sort();
        match (gateway, outbox, http) {
            (Some(gateway), Some(outbox), Some(http)) if diags.is_empty() => Ok(Config {
                file: path.to_path_buf(),
                gateway,
                upstream,
                outbox,
                http,
                serial,
                mqtt,
                simulate,
                rules,
                warnings,
            }),
            _ => Err(diags),
        }
    }

    /// The rules files read again (SIGHUP), checked as at start: a set that
    /// does not validate, or has an action on an unknown broker, is refused
    /// whole.
    pub fn reload_rules(&self) -> Result<Vec<Rule>, Diagnostics> {
        let (rules, places) = rules_file::load_rules_placed(&self.gateway.rules)?;
        let refused = check_actions(&rules, &places, &self.mqtt);
        if refused.is_empty() {
            Ok(rules)
        } else {
            Err(refused)
        }
    }

    /// A short human summary, printed by `outpost check`. Never shows secrets.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "gateway    {} (state in {})",
            self.gateway.id,
            self.gateway.state_dir.display()
        );
        match &self.upstream {
            Some(u) => {
                let auth = match (&u.broker.username, &u.broker.password) {
                    (Some(user), Some(_)) => format!(", user {user} with password"),
                    (Some(user), None) => format!(", user {user}"),
                    _ => String::new(),
                };
                let tls = match (&u.broker.tls.ca_file, &u.broker.tls.cert_file) {
                    _ if !u.broker.url.tls => "",
                    (Some(_), Some(_)) => ", TLS with ca_file and a client certificate",
                    (Some(_), None) => ", TLS with ca_file",
                    (None, Some(_)) => ", TLS with a client certificate",
                    (None, None) => ", TLS",
                };
                let _ = writeln!(
                    s,
                    "upstream   {} as {}{auth}{tls}, alerts on {}/alerts/#",
                    u.broker.url, u.broker.client_id, u.topic_prefix
                );
                if let Some(ha) = &u.homeassistant {
                    let _ = writeln!(
                        s,
                        "homeassistant discovery on {}/binary_sensor/{}/#, state on {}/state/#",
                        ha.discovery_prefix, ha.node_id, u.topic_prefix
                    );
                }
            }
            None => {
                let _ = writeln!(s, "upstream   none: alerts stay in the outbox and the log");
            }
        }
        let flush = match self.outbox.flush {
            FlushPolicy::Always => "always".to_string(),
            FlushPolicy::Every(d) => format!("every {}", humantime::format_duration(d)),
        };
        let _ = writeln!(
            s,
            "outbox     max {}, max age {}, flush {flush}",
            ByteSize(self.outbox.max_bytes),
            humantime::format_duration(self.outbox.max_age)
        );
        match self.http.listen {
            Some(a) => {
                let _ = writeln!(s, "http       {a}");
            }
            None => {
                let _ = writeln!(s, "http       off");
            }
        }
        for p in &self.serial {
            let _ = writeln!(
                s,
                "serial     {} {} at {} baud, {}",
                p.name,
                p.path.display(),
                p.baud,
                format!("{:?}", p.format).to_lowercase()
            );
        }
        for m in &self.mqtt {
            let _ = writeln!(
                s,
                "mqtt       {} {} topics {}",
                m.name,
                m.broker.url,
                m.topics.join(", ")
            );
        }
        for m in &self.simulate {
            let _ = writeln!(s, "simulate   {} {} {}", m.name, m.sensor, m.metric);
        }
        let files: Vec<String> = self
            .gateway
            .rules
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let _ = write!(s, "rules      {} in {}", self.rules.len(), files.join(", "));
        s
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(7 * 86_400),
            flush: FlushPolicy::Always,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9184))),
        }
    }
}

/// Every rule action must name an `[[mqtt]]` source (the local broker it
/// publishes on); each miss is reported at the rule's `id`.
fn check_actions(rules: &[Rule], places: &Places, mqtt: &[MqttSourceConfig]) -> Diagnostics {
    let names: HashSet<&str> = mqtt.iter().map(|m| m.name.as_str()).collect();
    let mut diags = Diagnostics::default();
    for r in rules {
        for a in r
            .actions
            .iter()
            .filter(|a| !names.contains(a.broker.as_str()))
        {
            let message = format!(
                "rule `{}` has an action on broker `{}`, but no [[mqtt]] source has that name",
                r.id, a.broker
            );
            let place = places.get(&r.id).cloned().unwrap_or(Diagnostic {
                file: PathBuf::new(),
                line: 0,
                col: 0,
                message: String::new(),
            });
            diags.push(Diagnostic { message, ..place });
        }
    }
    diags
}

/// Gateway ids and source names: `[A-Za-z0-9_-]+`, at most 64 bytes.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

struct Compiler<'a, 'd> {
    src: &'a Source<'a>,
    base: PathBuf,
    diags: &'d mut Diagnostics,
    names: HashSet<String>,
    warnings: Vec<Diagnostic>,
    /// (`host:port`, client id, which section) of every broker connection,
    /// to refuse two connections that would kick each other off.
    client_ids: Vec<(String, String, String)>,
}

impl Compiler<'_, '_> {
    fn err(&mut self, span: std::ops::Range<usize>, msg: impl Into<String>) {
        let d = self.src.at(span, msg);
        self.diags.push(d);
    }

    fn warn(&mut self, span: std::ops::Range<usize>, msg: impl std::fmt::Display) {
        let d = self.src.at(span, format!("warning: {msg}"));
        self.warnings.push(d);
    }

    /// Refuses a second connection to the same broker with the same client
    /// id: brokers drop the older of two such connections, so the two would
    /// take turns kicking each other off forever.
    fn unique_client_id(
        &mut self,
        url: &BrokerUrl,
        client_id: &str,
        who: String,
        span: std::ops::Range<usize>,
    ) {
        let at = format!("{}:{}", url.host.to_ascii_lowercase(), url.port);
        let clash = self
            .client_ids
            .iter()
            .find(|(a, c, _)| *a == at && c == client_id)
            .map(|(_, _, w)| w.clone());
        match clash {
            Some(other) => self.err(
                span,
                format!(
                    "{who} connects to {url} with client_id `{client_id}`, like {other}; \
                     the broker would drop one connection whenever the other connects: \
                     give each its own `client_id`"
                ),
            ),
            None => self.client_ids.push((at, client_id.to_string(), who)),
        }
    }

    fn de<T: serde::de::DeserializeOwned>(&mut self, v: &Spanned<DeValue>) -> Option<T> {
        deserialize_lenient(self.src, v, self.diags)
    }

    /// The entries of an array of tables (`[[serial]]`).
    fn array<'v>(
        &mut self,
        v: Option<&Spanned<DeValue<'v>>>,
        name: &str,
    ) -> Vec<(usize, Spanned<DeValue<'v>>)> {
        match v.map(|v| (v, v.get_ref())) {
            None => Vec::new(),
            Some((_, DeValue::Array(items))) => items.iter().cloned().enumerate().collect(),
            Some((v, _)) => {
                self.err(
                    v.span(),
                    format!("`{name}` must be written as [[{name}]] tables"),
                );
                Vec::new()
            }
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn existing_file(&mut self, p: &Spanned<String>, what: &str) -> Option<PathBuf> {
        let path = self.path(p.get_ref());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Some(path),
            Ok(_) => {
                self.err(
                    p.span(),
                    format!("{what} `{}` is not a file", path.display()),
                );
                None
            }
            Err(e) => {
                self.err(
                    p.span(),
                    format!("cannot read {what} `{}`: {e}", path.display()),
                );
                None
            }
        }
    }

    fn unique_name(&mut self, name: &Spanned<String>) {
        if !valid_id(name.get_ref()) {
            self.err(
                name.span(),
                format!("source name `{}` must match [A-Za-z0-9_-]+", name.get_ref()),
            );
        }
        if !self.names.insert(name.get_ref().clone()) {
            self.err(
                name.span(),
                format!("duplicate source name `{}`", name.get_ref()),
            );
        }
    }

    fn gateway(&mut self, raw: RawGateway) -> Option<GatewayConfig> {
        let mut ok = true;
        if !valid_id(raw.id.get_ref()) {
            self.err(
                raw.id.span(),
                format!(
                    "gateway id `{}` must match [A-Za-z0-9_-]+ (at most 64 characters)",
                    raw.id.get_ref()
                ),
            );
            ok = false;
        }
        let state_dir = raw
            .state_dir
            .map(|s| self.path(s.get_ref()))
            .unwrap_or_else(|| PathBuf::from("/var/lib/outpost"));
        let rules = match raw.rules {
            Some(list) if list.is_empty() => {
                self.diags.push(
                    self.src
                        .whole("`gateway.rules` is empty; name at least one rules file"),
                );
                ok = false;
                Vec::new()
            }
            Some(list) => list
                .iter()
                .filter_map(|p| {
                    let r = self.existing_file(p, "rules file");
                    ok &= r.is_some();
                    r
                })
                .collect(),
            None => vec![self.base.join("rules.toml")],
        };
        if let Some(level) = &raw.log_level
            && tracing_subscriber::EnvFilter::try_new(level.get_ref()).is_err()
        {
            self.err(
                level.span(),
                format!(
                    "invalid log_level `{}`; try \"info\" or \"outpost=debug\"",
                    level.get_ref()
                ),
            );
            ok = false;
        }
        ok.then(|| GatewayConfig {
            id: raw.id.into_inner(),
            state_dir,
            rules,
            log_level: raw.log_level.map(Spanned::into_inner),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn broker(
        &mut self,
        url: &Spanned<String>,
        client_id: String,
        username: Option<String>,
        password: Option<String>,
        password_file: Option<Spanned<String>>,
        tls: [Option<Spanned<String>>; 3],
        keep_alive: Option<Spanned<HumanDuration>>,
    ) -> Option<BrokerConfig> {
        let mut ok = true;
        let parsed = match BrokerUrl::parse(url.get_ref()) {
            Ok(u) => Some(u),
            Err(e) => {
                self.err(url.span(), e);
                None
            }
        };
        if password.is_some() {
            self.inline_password_warning(url.span());
        }
        let password = match (password, password_file) {
            (Some(_), Some(f)) => {
                self.err(
                    f.span(),
                    "give either `password` or `password_file`, not both",
                );
                ok = false;
                None
            }
            (Some(p), None) => Some(Secret::new(p)),
            (None, Some(f)) => match self.existing_file(&f, "password file") {
                Some(path) => match std::fs::read_to_string(&path) {
                    Ok(s) if s.trim_end_matches(['\r', '\n']).is_empty() => {
                        self.err(
                            f.span(),
                            format!("password file `{}` is empty", path.display()),
                        );
                        ok = false;
                        None
                    }
                    Ok(s) => {
                        if let Some(w) = loose_permissions("password_file", &path) {
                            self.warn(f.span(), w);
                        }
                        // The first line, as documented; a trailing newline is not part of it.
                        let first = s.lines().next().unwrap_or_default();
                        Some(Secret::new(first.trim_end_matches('\r').to_string()))
                    }
                    Err(e) => {
                        self.err(
                            f.span(),
                            format!("cannot read password file `{}`: {e}", path.display()),
                        );
                        ok = false;
                        None
                    }
                },
                None => {
                    ok = false;
                    None
                }
            },
            (None, None) => None,
        };
        if password.is_some() && username.is_none() {
            self.diags
                .push(self.src.whole("a password is set without a `username`"));
            ok = false;
        }
        let [ca, cert, key] = tls;
        let is_tls = parsed.as_ref().is_some_and(|u| u.tls);
        let mut files = TlsFiles::default();
        let mut spans: HashMap<&str, std::ops::Range<usize>> = HashMap::new();
        for (name, field) in [("ca_file", &ca), ("cert_file", &cert), ("key_file", &key)] {
            if let Some(f) = field {
                spans.insert(name, f.span());
            }
        }
        for (slot, field, name) in [
            (&mut files.ca_file, ca, "ca_file"),
            (&mut files.cert_file, cert, "cert_file"),
            (&mut files.key_file, key, "key_file"),
        ] {
            if let Some(f) = field {
                if !is_tls && parsed.is_some() {
                    self.err(f.span(), format!("`{name}` needs an mqtts:// url"));
                    ok = false;
                }
                match self.existing_file(&f, name) {
                    Some(p) => *slot = Some(p),
                    None => ok = false,
                }
            }
        }
        if files.cert_file.is_some() != files.key_file.is_some() {
            self.err(
                url.span(),
                "`cert_file` and `key_file` go together (mutual TLS needs both)",
            );
            ok = false;
        }
        if let Some(key) = &files.key_file
            && let Some(w) = loose_permissions("key_file", key)
        {
            let span = spans.get("key_file").cloned().unwrap_or_else(|| url.span());
            self.warn(span, w);
        }
        let keep_alive = match keep_alive {
            Some(k) if k.get_ref().0 < Duration::from_secs(5) => {
                self.err(k.span(), "keep_alive must be at least 5s");
                ok = false;
                Duration::from_secs(30)
            }
            Some(k) => k.into_inner().0,
            None => Duration::from_secs(30),
        };
        if client_id.is_empty() || client_id.len() > 128 {
            self.err(url.span(), "client_id must be 1 to 128 characters");
            ok = false;
        }
        let url_span = url.span();
        let url = parsed?;
        let cfg = ok.then_some(BrokerConfig {
            url,
            client_id,
            username,
            password,
            tls: files,
            keep_alive,
        })?;
        // Parse the PEM files now: a wrong file is a `check` error, not a
        // connection that fails at 3 a.m.
        if let Err(e) = check_tls_files(&cfg.tls) {
            let span = spans.get(e.key()).cloned().unwrap_or(url_span);
            self.err(span, e.to_string());
            return None;
        }
        Some(cfg)
    }

    fn upstream(&mut self, mut raw: RawUpstream, gw: Option<&str>) -> Option<UpstreamConfig> {
        let gw = gw.unwrap_or("gateway");
        raw.client_id_span = raw.client_id.as_ref().map(Spanned::span);
        let client_id = raw
            .client_id
            .take()
            .map(Spanned::into_inner)
            .unwrap_or_else(|| format!("outpost-{gw}"));
        let prefix = match raw.topic_prefix {
            Some(p) => {
                if let Err(e) = topic::validate_prefix(p.get_ref()) {
                    self.err(p.span(), e);
                    return None;
                }
                p.into_inner()
            }
            None => format!("outpost/{gw}"),
        };
        let max_payload = match raw.max_payload {
            Some(m) if m.get_ref().0 < 1024 || m.get_ref().0 > 256 << 20 => {
                self.err(m.span(), "max_payload must be between 1KiB and 256MiB");
                return None;
            }
            Some(m) => m.into_inner().0 as usize,
            None => 128 << 10,
        };
        let broker = self.broker(
            &raw.url,
            client_id,
            raw.username,
            raw.password,
            raw.password_file,
            [raw.ca_file, raw.cert_file, raw.key_file],
            raw.keep_alive,
        )?;
        let span = raw.client_id_span.unwrap_or_else(|| raw.url.span());
        self.unique_client_id(&broker.url, &broker.client_id, "[upstream]".into(), span);
        Some(UpstreamConfig {
            broker,
            topic_prefix: prefix,
            max_payload,
            homeassistant: None,
        })
    }

    /// A password written into the config file itself, when that file is
    /// readable by others.
    fn inline_password_warning(&mut self, span: std::ops::Range<usize>) {
        if let Some(w) = loose_permissions("this config file", self.src.path) {
            self.warn(
                span,
                format!("{w}, and it holds a `password`; or move it into a `password_file`"),
            );
        }
    }

    fn homeassistant(
        &mut self,
        raw: RawHomeAssistant,
        span: std::ops::Range<usize>,
        gw: Option<&str>,
        has_upstream: bool,
    ) -> Option<HomeAssistantConfig> {
        if raw.enabled == Some(false) {
            return None;
        }
        let mut ok = true;
        if !has_upstream {
            self.err(
                span.clone(),
                "[homeassistant] needs an [upstream] broker (Home Assistant's), which is missing or invalid",
            );
            ok = false;
        }
        let discovery_prefix = match raw.discovery_prefix {
            Some(p) => {
                if let Err(e) = topic::validate_prefix(p.get_ref()) {
                    self.err(p.span(), e.replace("topic_prefix", "discovery_prefix"));
                    ok = false;
                }
                p.into_inner()
            }
            None => "homeassistant".to_string(),
        };
        let node_id = gw.unwrap_or("gateway").to_string();
        let node_name = match raw.node_name {
            Some(n) if n.get_ref().trim().is_empty() || n.get_ref().len() > 128 => {
                self.err(n.span(), "node_name must be 1 to 128 characters");
                ok = false;
                String::new()
            }
            Some(n) => n.into_inner(),
            None => node_id.clone(),
        };
        ok.then_some(HomeAssistantConfig {
            discovery_prefix,
            node_id,
            node_name,
        })
    }

    fn outbox(&mut self, raw: RawOutbox) -> Option<OutboxConfig> {
        let d = OutboxConfig::default();
        let flush = match raw.flush {
            None => d.flush,
            Some(f) if f.get_ref() == "always" => FlushPolicy::Always,
            Some(f) => match units::parse_duration(f.get_ref()) {
                Ok(p) if !p.is_zero() => FlushPolicy::Every(p),
                _ => {
                    self.err(
                        f.span(),
                        format!(
                            "flush must be \"always\" or a period like \"1s\", not `{}`",
                            f.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        Some(OutboxConfig {
            max_bytes: raw.max_bytes.map_or(d.max_bytes, |b| b.0),
            max_age: raw.max_age.map_or(d.max_age, |a| a.0),
            flush,
        })
    }

    fn http(&mut self, raw: RawHttp) -> Option<HttpConfig> {
        match raw.listen {
            None => Some(HttpConfig::default()),
            Some(l) if l.get_ref().is_empty() => Some(HttpConfig { listen: None }),
            Some(l) => match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => Some(HttpConfig { listen: Some(a) }),
                Err(_) => {
                    self.err(l.span(), format!("listen must be an address like \"127.0.0.1:9184\" (or \"\" to disable), not `{}`", l.get_ref()));
                    None
                }
            },
        }
    }

    fn serial(&mut self, raw: RawSerial, i: usize) -> Option<SerialConfig> {
        let mut ok = true;
        let name = raw
            .name
            .unwrap_or_else(|| Spanned::new(raw.path.span(), format!("serial-{}", i + 1)));
        self.unique_name(&name);
        let format = raw.format.map_or(Format::Json, Spanned::into_inner);
        let columns = self.columns(format, raw.columns, &mut ok);
        if format == Format::Number {
            self.err(
                raw.path.span(),
                "format \"number\" is for MQTT payloads; serial lines use json, kv or csv",
            );
            ok = false;
        }
        let baud = raw.baud.map_or(115_200, |b| {
            if *b.get_ref() == 0 {
                self.err(b.span(), "baud must be greater than zero");
                ok = false;
            }
            b.into_inner()
        });
        let data_bits = raw.data_bits.map_or(8, |b| {
            if !(5..=8).contains(b.get_ref()) {
                self.err(b.span(), "data_bits must be 5, 6, 7 or 8");
                ok = false;
            }
            b.into_inner()
        });
        let stop_bits = raw.stop_bits.map_or(1, |b| {
            if !(1..=2).contains(b.get_ref()) {
                self.err(b.span(), "stop_bits must be 1 or 2");
                ok = false;
            }
            b.into_inner()
        });
        let max_line = raw.max_line.map_or(4096, |m| {
            if !(16..=1 << 20).contains(m.get_ref()) {
                self.err(m.span(), "max_line must be between 16 and 1048576");
                ok = false;
            }
            m.into_inner()
        });
        let sensor = raw
            .sensor
            .map_or_else(|| name.get_ref().clone(), Spanned::into_inner);
        if raw.path.get_ref().is_empty() {
            self.err(raw.path.span(), "serial path is empty");
            ok = false;
        }
        ok.then(|| SerialConfig {
            name: name.into_inner(),
            path: PathBuf::from(raw.path.into_inner()),
            baud,
            data_bits,
            parity: raw.parity.unwrap_or(Parity::None),
            stop_bits,
            flow_control: raw.flow_control.unwrap_or(FlowControl::None),
            format,
            sensor,
            columns,
            max_line,
            reopen_after_silence: raw.reopen_after_silence.map(|d| d.0),
        })
    }

    fn columns(
        &mut self,
        format: Format,
        columns: Option<Spanned<Vec<String>>>,
        ok: &mut bool,
    ) -> Vec<String> {
        match (format, columns) {
            (Format::Csv, Some(c)) if !c.get_ref().is_empty() => c.into_inner(),
            (Format::Csv, Some(c)) => {
                self.err(c.span(), "format \"csv\" needs a non-empty `columns` list");
                *ok = false;
                Vec::new()
            }
            (Format::Csv, None) => {
                self.diags
                    .push(self.src.whole("format \"csv\" needs `columns`"));
                *ok = false;
                Vec::new()
            }
            (_, Some(c)) => {
                self.err(c.span(), "`columns` is only used with format = \"csv\"");
                *ok = false;
                Vec::new()
            }
            (_, None) => Vec::new(),
        }
    }

    fn mqtt(&mut self, raw: RawMqtt, i: usize, gw: Option<&str>) -> Option<MqttSourceConfig> {
        let mut ok = true;
        let name = raw
            .name
            .unwrap_or_else(|| Spanned::new(raw.url.span(), format!("mqtt-{}", i + 1)));
        self.unique_name(&name);
        if raw.topics.get_ref().is_empty() {
            self.err(
                raw.topics.span(),
                "`topics` is empty; subscribe to at least one filter",
            );
            ok = false;
        }
        for t in raw.topics.get_ref() {
            if let Err(e) = validate_filter(t.get_ref()) {
                self.err(t.span(), e);
                ok = false;
            }
        }
        let qos = raw.qos.map_or(0, |q| {
            if *q.get_ref() > 1 {
                self.err(q.span(), "qos must be 0 or 1");
                ok = false;
            }
            q.into_inner()
        });
        let format = raw.format.map_or(Format::Json, Spanned::into_inner);
        let columns = self.columns(format, raw.columns, &mut ok);
        let sensor = match raw.sensor {
            Some(t) => match SensorTemplate::parse(t.get_ref()) {
                Ok(t) => t,
                Err(e) => {
                    self.err(t.span(), e);
                    ok = false;
                    SensorTemplate::whole_topic()
                }
            },
            None => SensorTemplate::whole_topic(),
        };
        let metric = match raw.metric {
            Some(t) => match SensorTemplate::parse(t.get_ref()) {
                Ok(t) => t,
                Err(e) => {
                    self.err(t.span(), e.replace("sensor template", "metric template"));
                    ok = false;
                    SensorTemplate::literal("value")
                }
            },
            None => SensorTemplate::literal("value"),
        };
        let max_payload = raw
            .max_payload
            .map_or(64 << 10, |m| m.into_inner().0 as usize);
        let client_id_span = raw
            .client_id
            .as_ref()
            .map_or_else(|| raw.url.span(), Spanned::span);
        let client_id = raw.client_id.map_or_else(
            || format!("outpost-{}-{}", gw.unwrap_or("gateway"), name.get_ref()),
            Spanned::into_inner,
        );
        let broker = self.broker(
            &raw.url,
            client_id,
            raw.username,
            raw.password,
            raw.password_file,
            [raw.ca_file, raw.cert_file, raw.key_file],
            raw.keep_alive,
        );
        let broker = broker?;
        self.unique_client_id(
            &broker.url,
            &broker.client_id,
            format!("[[mqtt]] `{}`", name.get_ref()),
            client_id_span,
        );
        ok.then(|| MqttSourceConfig {
            name: name.into_inner(),
            broker,
            topics: raw
                .topics
                .into_inner()
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            qos,
            format,
            sensor,
            metric,
            columns,
            max_payload,
        })
    }

    fn simulate(&mut self, raw: RawSimulate, i: usize) -> Option<SimulateConfig> {
        let name = raw
            .name
            .unwrap_or_else(|| Spanned::new(raw.sensor.span(), format!("simulate-{}", i + 1)));
        self.unique_name(&name);
        Some(SimulateConfig {
            name: name.into_inner(),
            sensor: raw.sensor.into_inner(),
            metric: raw.metric.into_inner(),
            interval: raw.interval.map_or(Duration::from_secs(1), |d| d.0),
            base: raw.base.unwrap_or(25.0),
            amplitude: raw.amplitude.unwrap_or(8.0),
            period: raw.period.map_or(Duration::from_secs(120), |d| d.0),
            noise: raw.noise.unwrap_or(0.3),
        })
    }
}

fn loose_permissions(what: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    tls::loose_permissions(what, path, mode)
}

fn check_tls_files(files: &TlsFiles) -> Result<(), tls::TlsError> {
    if let Some(ca) = &files.ca_file {
        let bytes = tls::read_pem("ca_file", ca)?;
        tls::check(
            Some(tls::Pem {
                what: "ca_file",
                path: ca,
                bytes: &bytes,
            }),
            None,
        )?;
    }
    if let (Some(cert), Some(key)) = (&files.cert_file, &files.key_file) {
        let cert_bytes = tls::read_pem("cert_file", cert)?;
        let key_bytes = tls::read_pem("key_file", key)?;
        let cert = tls::Pem {
            what: "cert_file",
            path: cert,
            bytes: &cert_bytes,
        };
        let key = tls::Pem {
            what: "key_file",
            path: key,
            bytes: &key_bytes,
        };
        tls::check(None, Some((cert, key)))?;
    }
    Ok(())
}
