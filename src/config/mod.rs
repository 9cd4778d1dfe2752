//! `outpost.toml`: what the gateway reads, where alerts go, and how it runs.
//!
//! Loading happens in two stages, as in ripgrep and Vector: the file is
//! deserialized into `Raw*` structs exactly as written (`raw.rs`, unknown
//! keys refused), then compiled into the [`Config`] the components are built
//! from (`compile/`, the types in `types.rs`). Both stages collect *every*
//! problem as a `Diagnostic` with
//! `FILE:LINE:COL`, and the rules files the config names are loaded
//! (`rules_file.rs`) and checked too.
//!
//! [`compile`] is pure over its inputs: the text, and the files it names
//! read through [`Files`] ([`Disk`] at the edge: [`Config::load`],
//! [`Config::reload_rules`]). `broker.rs` is MQTT URLs and credentials
//! (`Secret`, never printed); `units.rs` durations and sizes; `summary.rs`
//! what `outpost check` prints.

mod broker;
mod compile;
mod files;
mod raw;
mod rules_file;
mod summary;
mod types;
mod units;

#[cfg(test)]
mod tests;

use std::path::Path;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::rules::Rule;
pub use broker::{BrokerConfig, BrokerUrl, Secret};
pub use compile::compile;
pub use files::{Disk, FileInfo, Files};
pub use rules_file::{Places, load_rules, parse_rules};
pub use types::{
    Config, FlowControl, FlushPolicy, GatewayConfig, HomeAssistantConfig, HttpConfig, LineSettings,
    ModbusConfig, ModbusDevice, ModbusLink, MqttSourceConfig, Order, OutboxConfig, Parity,
    RegisterKind, RegisterMap, RemoteConfig, SerialConfig, SimulateConfig, Target, UpstreamConfig,
    ValueType,
};
pub use units::parse_duration;

pub const DEFAULT_PATH: &str = "/etc/outpost/outpost.toml";

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

    /// Validates `text` as if it had been read from `path`; the files it
    /// names are read from disk.
    pub fn from_str(path: &Path, text: &str) -> Result<Config, Diagnostics> {
        compile(path, text, &Disk)
    }

    /// The rules files read again (SIGHUP), checked as at start: a set that
    /// does not validate, or has an action on an unknown broker, is refused
    /// whole.
    pub fn reload_rules(&self) -> Result<Vec<Rule>, Diagnostics> {
        self.load_local_rules().map(|l| l.rules)
    }

    /// [`Config::reload_rules`], with the place of every rule.
    pub fn load_local_rules(&self) -> Result<LocalRules, Diagnostics> {
        let (rules, places) = rules_file::load_rules_placed(&self.gateway.rules, &Disk)?;
        let refused = compile::check_actions(&rules, &places, &self.mqtt);
        if refused.is_empty() {
            Ok(LocalRules { rules, places })
        } else {
            Err(refused)
        }
    }

    /// Rules pushed over the upstream link, checked exactly as `check`
    /// checks a rules file, and against `local`: an id both define is
    /// refused, and an action must name an `[[mqtt]]` source. `text` is
    /// named `name` in the diagnostics. Returns the pushed rules alone.
    pub fn check_pushed(
        &self,
        name: &Path,
        text: &str,
        local: &LocalRules,
    ) -> Result<Vec<Rule>, Diagnostics> {
        let (rules, places) = rules_file::parse_pushed(name, text, &local.places)?;
        let refused = compile::check_actions(&rules, &places, &self.mqtt);
        if refused.is_empty() {
            Ok(rules)
        } else {
            Err(refused)
        }
    }
}

/// The rules of the files `[gateway] rules` names, and where each is
/// defined (for the messages about pushed rules that clash with them).
#[derive(Debug, Clone, Default)]
pub struct LocalRules {
    pub rules: Vec<Rule>,
    pub places: Places,
}
