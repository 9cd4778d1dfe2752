//! Stage 2: the raw sections compiled into a [`Config`], every problem
//! collected as a diagnostic. `mod.rs` walks the sections and holds the
//! helpers; `sections.rs` compiles each section, `broker.rs` the broker
//! keys `[upstream]` and `[[mqtt]]` share (URL, credentials, TLS files).
//! Files are read only through [`Files`].

mod broker;
mod modbus;
mod remote;
mod sections;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::DeValue;

use super::files::Files;
use super::raw::{
    RawGateway, RawHomeAssistant, RawHttp, RawMqtt, RawOutbox, RawRemote, RawRules, RawSerial,
    RawSimulate, RawUpstream, SECTIONS,
};
use super::rules_file::{Places, load_rules_placed};
use super::{BrokerUrl, Config, HttpConfig, MqttSourceConfig, OutboxConfig, RemoteConfig};
use crate::diagnostic::{Diagnostic, Diagnostics, Source, deserialize_lenient};
use crate::rules::{Limits, Rule};
use crate::tls;

/// Compiles `text`, read from `path`, and every file it names (read through
/// `files`) into a [`Config`], or every problem found.
pub fn compile(path: &Path, text: &str, files: &dyn Files) -> Result<Config, Diagnostics> {
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
        files,
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
    let remote = match sections.get("remote") {
        Some(v) => c
            .de::<RawRemote>(v)
            .map(|raw| c.remote(raw, v.span(), upstream.is_some()))
            .unwrap_or_default(),
        None => RemoteConfig::default(),
    };
    let outbox = match sections.get("outbox") {
        Some(v) => c.de::<RawOutbox>(v).and_then(|raw| c.outbox(raw)),
        None => Some(OutboxConfig::default()),
    };
    let limits = match sections.get("rules") {
        Some(v) => c
            .de::<RawRules>(v)
            .and_then(|raw| c.rules_limits(raw, v.span())),
        None => Some((Limits::default(), None)),
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
    let mut modbus = Vec::new();
    let mut modbus_metrics = modbus::Metrics::new();
    for (i, v) in c.array(sections.get("modbus").copied(), "modbus") {
        if let Some(m) = c.modbus(&v, i, &mut modbus_metrics) {
            modbus.push(m);
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
        Some(g) => match load_rules_placed(&g.rules, files) {
            Ok((rules, places)) => {
                diags.extend(check_actions(&rules, &places, &mqtt));
                if let Some((limits, at)) = &limits {
                    diags.extend(check_room(&src, &rules, limits, at.clone()));
                }
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
    match (gateway, outbox, http, limits) {
        (Some(gateway), Some(outbox), Some(http), Some((limits, _))) if diags.is_empty() => {
            Ok(Config {
                file: path.to_path_buf(),
                gateway,
                upstream,
                outbox,
                http,
                serial,
                mqtt,
                simulate,
                modbus,
                remote,
                rules,
                limits,
                warnings,
            })
        }
        _ => Err(diags),
    }
}

/// Every rule action must name an `[[mqtt]]` source (the local broker it
/// publishes on); each miss is reported at the rule's `id`.
pub(super) fn check_actions(
    rules: &[Rule],
    places: &Places,
    mqtt: &[MqttSourceConfig],
) -> Diagnostics {
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

/// Each rule that names one sensor and one metric may keep a pair, and
/// room is kept for it: `max_pairs` must leave room for them all.
fn check_room(
    src: &Source<'_>,
    rules: &[Rule],
    limits: &Limits,
    at: Option<std::ops::Range<usize>>,
) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let single = rules
        .iter()
        .filter(|r| r.sensor.literal().is_some() && r.metric.literal().is_some())
        .count();
    if single > limits.max_pairs {
        let message = format!(
            "max_pairs = {} is less than the {single} rules that name one sensor and one metric \
             (each may keep a pair)",
            limits.max_pairs
        );
        diags.push(match at {
            Some(span) => src.at(span, message),
            None => src.whole(message),
        });
    }
    diags
}

/// Gateway ids and source names: `[A-Za-z0-9_-]+`, at most 64 bytes.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

struct Compiler<'a, 'd> {
    src: &'a Source<'a>,
    /// The config file's folder: relative paths are relative to it.
    base: PathBuf,
    files: &'a dyn Files,
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
        match self.files.info(&path) {
            Ok(info) if info.is_file => Some(path),
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

    /// The warning for a secret file others can read, if it is one.
    fn loose_permissions(&self, what: &str, path: &Path) -> Option<String> {
        let info = self.files.info(path).ok()?;
        tls::loose_permissions(what, path, info.mode)
    }
}
