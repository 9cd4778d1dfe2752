//! The validated configuration: what the components are built from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::BrokerConfig;
use crate::diagnostic::Diagnostic;
use crate::payload::Format;
use crate::rules::{Limits, Rule};
use crate::topic::SensorTemplate;

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
    /// `[rules]`: how much state the rules may keep.
    pub limits: Limits,
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
