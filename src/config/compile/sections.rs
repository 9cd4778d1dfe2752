//! Each section of `outpost.toml` compiled: `[gateway]`, `[upstream]`,
//! `[homeassistant]`, `[outbox]`, `[http]`, `[[serial]]`, `[[mqtt]]`,
//! `[[simulate]]` (`[[modbus]]` is in `modbus.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::super::raw::{
    RawGateway, RawHomeAssistant, RawHttp, RawMqtt, RawOutbox, RawRules, RawSerial, RawSimulate,
    RawUpstream,
};
use super::super::units;
use super::super::{
    FlushPolicy, GatewayConfig, HomeAssistantConfig, HttpConfig, MqttSourceConfig, OutboxConfig,
    SerialConfig, SimulateConfig, UpstreamConfig,
};
use super::{Compiler, valid_id};
use crate::alert::DEFAULT_MAX_PAYLOAD;
use crate::payload::Format;
use crate::rules::{Limits, OnMaxPairs};
use crate::topic::{self, SensorTemplate, validate_filter};

/// Past this, `check` warns that the rules' state may not fit the packaged
/// unit's memory (`MemoryHigh=96M` for the whole gateway).
const STATE_WARN_BYTES: usize = 48 << 20;

impl Compiler<'_, '_> {
    pub(super) fn gateway(&mut self, raw: RawGateway) -> Option<GatewayConfig> {
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

    pub(super) fn upstream(
        &mut self,
        mut raw: RawUpstream,
        gw: Option<&str>,
    ) -> Option<UpstreamConfig> {
        let gw = gw.unwrap_or("gateway");
        let keys = raw.broker_keys();
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
            None => DEFAULT_MAX_PAYLOAD,
        };
        let broker = self.broker(keys, format!("outpost-{gw}"), "[upstream]".into())?;
        Some(UpstreamConfig {
            broker,
            topic_prefix: prefix,
            max_payload,
            homeassistant: None,
        })
    }

    pub(super) fn homeassistant(
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

    pub(super) fn outbox(&mut self, raw: RawOutbox) -> Option<OutboxConfig> {
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

    /// `[rules]`: the limits, and where `max_pairs` was written (for the
    /// check against the rules, which come later).
    pub(super) fn rules_limits(
        &mut self,
        raw: RawRules,
        span: std::ops::Range<usize>,
    ) -> Option<(Limits, Option<std::ops::Range<usize>>)> {
        let d = Limits::default();
        let mut ok = true;
        let mut count =
            |v: Option<Spanned<u64>>, name: &str, lo: u64, hi: u64, default: usize| match v {
                None => Some(default),
                Some(n) if (lo..=hi).contains(n.get_ref()) => usize::try_from(*n.get_ref()).ok(),
                Some(n) => {
                    self.err(n.span(), format!("{name} must be between {lo} and {hi}"));
                    ok = false;
                    None
                }
            };
        let pairs_at = raw.max_pairs.as_ref().map(|p| p.span());
        let max_pairs = count(raw.max_pairs, "max_pairs", 1, 10_000_000, d.max_pairs);
        let per_pair = count(
            raw.max_samples_per_pair,
            "max_samples_per_pair",
            Limits::MIN_SAMPLES_PER_PAIR as u64,
            10_000_000,
            d.max_samples_per_pair,
        );
        let samples_at = raw.max_samples.as_ref().map(|s| s.span());
        let max_samples = count(
            raw.max_samples,
            "max_samples",
            1,
            1_000_000_000,
            d.max_samples,
        );
        let on_max_pairs = match raw.on_max_pairs {
            None => d.on_max_pairs,
            Some(p) => match p.get_ref().as_str() {
                "evict" => OnMaxPairs::Evict,
                "refuse" => OnMaxPairs::Refuse,
                other => {
                    self.err(
                        p.span(),
                        format!("on_max_pairs must be \"evict\" or \"refuse\", not `{other}`"),
                    );
                    ok = false;
                    d.on_max_pairs
                }
            },
        };
        let (Some(max_pairs), Some(max_samples_per_pair), Some(max_samples)) =
            (max_pairs, per_pair, max_samples)
        else {
            return None;
        };
        let least = max_pairs.saturating_mul(Limits::MIN_SAMPLES_PER_MAX_PAIR);
        if max_samples < least {
            let at = samples_at.or(pairs_at.clone()).unwrap_or(span.clone());
            self.err(
                at,
                format!(
                    "max_samples = {max_samples} is less than {} x max_pairs = {least}: \
                     each pair must be able to keep a few samples",
                    Limits::MIN_SAMPLES_PER_MAX_PAIR
                ),
            );
            ok = false;
        }
        let limits = Limits {
            max_pairs,
            on_max_pairs,
            max_samples,
            max_samples_per_pair,
        };
        if ok && limits.worst_case_bytes() > STATE_WARN_BYTES {
            self.warn(
                span,
                format!(
                    "at these limits the rules' state may take up to {} MiB; \
                     the packaged unit gives the whole gateway 96 MiB (MemoryHigh)",
                    limits.worst_case_bytes() >> 20
                ),
            );
        }
        ok.then_some((limits, pairs_at))
    }

    pub(super) fn http(&mut self, raw: RawHttp) -> Option<HttpConfig> {
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

    pub(super) fn serial(&mut self, raw: RawSerial, i: usize) -> Option<SerialConfig> {
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
        let line = self.line(
            raw.baud,
            raw.data_bits,
            raw.parity,
            raw.stop_bits,
            raw.flow_control,
            115_200,
            &mut ok,
        );
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
            baud: line.baud,
            data_bits: line.data_bits,
            parity: line.parity,
            stop_bits: line.stop_bits,
            flow_control: line.flow_control,
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

    pub(super) fn mqtt(
        &mut self,
        mut raw: RawMqtt,
        i: usize,
        gw: Option<&str>,
    ) -> Option<MqttSourceConfig> {
        let keys = raw.broker_keys();
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
        let sensor = self.template(raw.sensor, SensorTemplate::whole_topic(), &mut ok);
        let metric = self.template(raw.metric, SensorTemplate::literal("value"), &mut ok);
        let max_payload = raw
            .max_payload
            .map_or(64 << 10, |m| m.into_inner().0 as usize);
        let broker = self.broker(
            keys,
            format!("outpost-{}-{}", gw.unwrap_or("gateway"), name.get_ref()),
            format!("[[mqtt]] `{}`", name.get_ref()),
        )?;
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

    pub(super) fn simulate(&mut self, raw: RawSimulate, i: usize) -> Option<SimulateConfig> {
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

    /// A `sensor` or `metric` template over topic levels, or `default`.
    fn template(
        &mut self,
        t: Option<Spanned<String>>,
        default: SensorTemplate,
        ok: &mut bool,
    ) -> SensorTemplate {
        let Some(t) = t else { return default };
        SensorTemplate::parse(t.get_ref()).unwrap_or_else(|e| {
            self.err(t.span(), e);
            *ok = false;
            default
        })
    }
}
