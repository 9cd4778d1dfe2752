//! The validated configuration: what the components are built from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::BrokerConfig;
use crate::diagnostic::Diagnostic;
use crate::payload::Format;
use crate::push::sign::PublicKey;
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
    /// `[[modbus]]`: one per bus (a serial port or a TCP device).
    pub modbus: Vec<ModbusConfig>,
    /// `[remote]`: rules pushed over the upstream link (off by default).
    pub remote: RemoteConfig,
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

/// `[remote]`: whether the gateway takes rules pushed over its upstream
/// link, from which topics, and whose signature they need (see `remote`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `rules = true`: pushes on `{prefix}/rules/set` and the groups' topics are applied.
    pub rules: bool,
    /// `groups`: also follow `outpost/groups/{name}/rules/set` for each.
    pub groups: Vec<String>,
    /// `public_key` / `public_key_file`: only pushes it signed are applied.
    pub public_key: Option<PublicKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// `fdatasync` before every publish; alerts arriving together share one.
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

impl SerialConfig {
    /// The port's line settings.
    pub fn line(&self) -> LineSettings {
        LineSettings {
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
            flow_control: self.flow_control,
        }
    }
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

/// A serial line's framing, shared by `[[serial]]` ports and Modbus RTU buses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
}

impl LineSettings {
    /// Bits on the wire per character: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }
}

/// `[[modbus]]`: one bus, polled every `interval`, one request at a time.
#[derive(Debug, Clone)]
pub struct ModbusConfig {
    pub name: String,
    pub link: ModbusLink,
    pub interval: Duration,
    /// How long a device may take to start answering; the time the request
    /// and the answer take on the wire at `baud` is added.
    pub timeout: Duration,
    /// Reopen the port (reconnect) when no device has answered for this long.
    pub reopen_after_silence: Option<Duration>,
    pub devices: Vec<ModbusDevice>,
}

/// Where a Modbus bus is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModbusLink {
    /// Modbus RTU on a serial port (an RS-485 adapter).
    Rtu { path: PathBuf, line: LineSettings },
    /// Modbus TCP (`tcp://host:502`).
    Tcp { host: String, port: u16 },
}

/// `/dev/ttyUSB0 at 9600 8N1` or `tcp://host:502`.
impl std::fmt::Display for ModbusLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModbusLink::Rtu { path, line } => {
                let parity = match line.parity {
                    Parity::None => 'N',
                    Parity::Odd => 'O',
                    Parity::Even => 'E',
                };
                write!(
                    f,
                    "{} at {} {}{parity}{}",
                    path.display(),
                    line.baud,
                    line.data_bits,
                    line.stop_bits
                )
            }
            ModbusLink::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            ModbusLink::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

/// One device on a bus.
#[derive(Debug, Clone)]
pub struct ModbusDevice {
    /// The unit (slave) id.
    pub unit: u8,
    /// The sensor id its readings carry.
    pub sensor: String,
    /// Most registers one request may read (coils: 16 per register).
    pub max_registers: u16,
    /// Unmapped registers a request may read (and throw away) to join two
    /// blocks into one request.
    pub max_gap: u16,
    pub registers: Vec<RegisterMap>,
}

/// The four Modbus tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    Coil,
    Discrete,
    Holding,
    Input,
}

impl RegisterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
        }
    }

    /// Coils and discrete inputs hold one bit each.
    pub fn is_bits(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }
}

/// How the registers of one value are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// One coil or discrete input: 0 or 1.
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// Registers (16 bits each) the value takes; a bool takes one bit.
    pub fn registers(self) -> u16 {
        match self {
            ValueType::Bool | ValueType::U16 | ValueType::I16 => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 4,
        }
    }

    pub fn is_integer(self) -> bool {
        !matches!(self, ValueType::Bool | ValueType::F32 | ValueType::F64)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Bool => "bool",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }
}

/// Word order (which register comes first) or byte order (within a register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Most significant first (Modbus's own byte order).
    Big,
    Little,
}

/// One entry of a device's `registers`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterMap {
    pub kind: RegisterKind,
    pub address: u16,
    pub value: ValueType,
    pub word_order: Order,
    pub byte_order: Order,
    /// value = raw × scale + offset.
    pub scale: f64,
    pub offset: f64,
    pub target: Target,
}

impl RegisterMap {
    /// Registers (or bits, for coils) it covers.
    pub fn count(&self) -> u16 {
        self.value.registers()
    }

    /// The last address it covers.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count()) - 1
    }

    /// The metrics it gives.
    pub fn metrics(&self) -> Vec<&str> {
        match &self.target {
            Target::Metric(s) => vec![s.as_str()],
            Target::Bits(b) => b.iter().map(|(s, _)| s.as_str()).collect(),
        }
    }
}

/// What a register entry becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One metric: the scaled value.
    Metric(String),
    /// A status register's bits, each a 0/1 metric: (metric, bit number, 0 = least significant).
    Bits(Vec<(String, u8)>),
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
