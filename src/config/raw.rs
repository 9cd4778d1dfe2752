//! Stage 1: `outpost.toml` exactly as written. Unknown keys are refused
//! (`deny_unknown_fields`); values keep their spans for diagnostics.

use serde::Deserialize;
use toml::Spanned;

use super::types::{FlowControl, Order, Parity, RegisterKind, ValueType};
use super::units::{ByteSize, HumanDuration};
use crate::payload::Format;

/// Declares a section that connects to a broker: its own keys, the keys
/// every broker section shares (`client_id` to `key_file`, in this order
/// for the "expected one of" list of an unknown key), more of its own (with
/// `url` and `keep_alive` among them), and `broker_keys`, which takes the
/// shared ones out. A macro because serde's `flatten` does not work with
/// `deny_unknown_fields` (nor with `Spanned`).
macro_rules! broker_section {
    ($name:ident { $($before:ident: $bty:ty,)* } { $($after:ident: $aty:ty,)* }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            $(pub(super) $before: $bty,)*
            pub(super) client_id: Option<Spanned<String>>,
            pub(super) username: Option<String>,
            pub(super) password: Option<String>,
            pub(super) password_file: Option<Spanned<String>>,
            pub(super) ca_file: Option<Spanned<String>>,
            pub(super) cert_file: Option<Spanned<String>>,
            pub(super) key_file: Option<Spanned<String>>,
            $(pub(super) $after: $aty,)*
        }

        impl $name {
            /// The broker keys, taken out; the section's own stay.
            pub(super) fn broker_keys(&mut self) -> RawBroker {
                RawBroker {
                    url: self.url.clone(),
                    client_id: self.client_id.take(),
                    username: self.username.take(),
                    password: self.password.take(),
                    password_file: self.password_file.take(),
                    tls: [self.ca_file.take(), self.cert_file.take(), self.key_file.take()],
                    keep_alive: self.keep_alive.take(),
                }
            }
        }
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) id: Spanned<String>,
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) rules: Option<Vec<Spanned<String>>>,
    pub(super) log_level: Option<Spanned<String>>,
}

broker_section!(RawUpstream {
    url: Spanned<String>,
} {
    topic_prefix: Option<Spanned<String>>,
    keep_alive: Option<Spanned<HumanDuration>>,
    max_payload: Option<Spanned<ByteSize>>,
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    pub(super) max_bytes: Option<ByteSize>,
    pub(super) max_age: Option<HumanDuration>,
    pub(super) flush: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRules {
    pub(super) max_pairs: Option<Spanned<u64>>,
    pub(super) on_max_pairs: Option<Spanned<String>>,
    pub(super) max_samples: Option<Spanned<u64>>,
    pub(super) max_samples_per_pair: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSerial {
    pub(super) name: Option<Spanned<String>>,
    pub(super) path: Spanned<String>,
    pub(super) baud: Option<Spanned<u32>>,
    pub(super) data_bits: Option<Spanned<u8>>,
    pub(super) parity: Option<Parity>,
    pub(super) stop_bits: Option<Spanned<u8>>,
    pub(super) flow_control: Option<FlowControl>,
    pub(super) format: Option<Spanned<Format>>,
    pub(super) sensor: Option<Spanned<String>>,
    pub(super) columns: Option<Spanned<Vec<String>>>,
    pub(super) max_line: Option<Spanned<usize>>,
    pub(super) reopen_after_silence: Option<HumanDuration>,
}

broker_section!(RawMqtt {
    name: Option<Spanned<String>>,
    url: Spanned<String>,
    topics: Spanned<Vec<Spanned<String>>>,
    qos: Option<Spanned<u8>>,
    format: Option<Spanned<Format>>,
    sensor: Option<Spanned<String>>,
    metric: Option<Spanned<String>>,
    columns: Option<Spanned<Vec<String>>>,
} {
    keep_alive: Option<Spanned<HumanDuration>>,
    max_payload: Option<Spanned<ByteSize>>,
});

/// The keys `[upstream]` and `[[mqtt]]` share, taken out of either.
pub(super) struct RawBroker {
    pub(super) url: Spanned<String>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<Spanned<String>>,
    /// `ca_file`, `cert_file`, `key_file`.
    pub(super) tls: [Option<Spanned<String>>; 3],
    pub(super) keep_alive: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimulate {
    pub(super) name: Option<Spanned<String>>,
    pub(super) sensor: Spanned<String>,
    pub(super) metric: Spanned<String>,
    pub(super) interval: Option<HumanDuration>,
    pub(super) base: Option<f64>,
    pub(super) amplitude: Option<f64>,
    pub(super) period: Option<HumanDuration>,
    pub(super) noise: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModbus {
    pub(super) name: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) baud: Option<Spanned<u32>>,
    pub(super) data_bits: Option<Spanned<u8>>,
    pub(super) parity: Option<Spanned<Parity>>,
    pub(super) stop_bits: Option<Spanned<u8>>,
    pub(super) flow_control: Option<Spanned<FlowControl>>,
    pub(super) interval: Option<Spanned<HumanDuration>>,
    pub(super) timeout: Option<Spanned<HumanDuration>>,
    pub(super) max_registers: Option<Spanned<i64>>,
    pub(super) max_gap: Option<Spanned<i64>>,
    pub(super) reopen_after_silence: Option<HumanDuration>,
    /// `[[modbus.device]]`: compiled one table at a time, from the raw
    /// value; declared so that the key is known.
    #[allow(dead_code)]
    pub(super) device: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModbusDevice {
    pub(super) unit: Spanned<i64>,
    pub(super) sensor: Spanned<String>,
    pub(super) max_registers: Option<Spanned<i64>>,
    pub(super) max_gap: Option<Spanned<i64>>,
    /// Compiled one entry at a time, from the raw value; declared so that
    /// the key is known (and required).
    #[allow(dead_code)]
    pub(super) registers: Spanned<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegister {
    pub(super) metric: Option<Spanned<String>>,
    pub(super) kind: Spanned<RegisterKind>,
    pub(super) address: Spanned<i64>,
    #[serde(rename = "type")]
    pub(super) value: Option<Spanned<ValueType>>,
    pub(super) count: Option<Spanned<i64>>,
    pub(super) word_order: Option<Spanned<Order>>,
    pub(super) byte_order: Option<Spanned<Order>>,
    pub(super) scale: Option<Spanned<f64>>,
    pub(super) offset: Option<Spanned<f64>>,
    pub(super) bits: Option<Spanned<std::collections::BTreeMap<String, Spanned<i64>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHomeAssistant {
    pub(super) enabled: Option<bool>,
    pub(super) discovery_prefix: Option<Spanned<String>>,
    pub(super) node_name: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemote {
    pub(super) rules: Option<bool>,
    pub(super) groups: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) public_key: Option<Spanned<String>>,
    pub(super) public_key_file: Option<Spanned<String>>,
}

pub(super) const SECTIONS: &[&str] = &[
    "gateway",
    "upstream",
    "outbox",
    "rules",
    "http",
    "serial",
    "mqtt",
    "simulate",
    "homeassistant",
    "modbus",
    "remote",
];
