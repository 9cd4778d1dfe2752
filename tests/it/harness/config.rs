//! The configs and readings the tests give the gateway.

use std::path::Path;

use serde_json::json;

/// Builds an `outpost.toml` for a test: gateway `test-gw`, no simulated
/// sensors, no HTTP (`listen = ""`, which `Launch::http` fills in),
/// `flush = "always"`, state in `state/` beside the config.
pub struct Config {
    pub upstream: String,
    /// More `[upstream]` lines.
    pub extra_upstream: String,
    pub serial: Vec<String>,
    pub mqtt: Vec<String>,
    /// More sections, written last (`[homeassistant]\n...`).
    pub extra_sections: String,
    /// `[http] listen`: off (`""`) unless set, or filled in by `Launch::http`.
    pub listen: String,
    /// `[gateway] state_dir` (`state`, beside the config, unless set).
    pub state_dir: String,
    /// More `[outbox]` lines.
    pub extra_outbox: String,
}

impl Config {
    pub fn new(upstream_url: &str) -> Config {
        Config {
            upstream: upstream_url.into(),
            extra_upstream: String::new(),
            serial: vec![],
            mqtt: vec![],
            extra_sections: String::new(),
            listen: String::new(),
            state_dir: "state".into(),
            extra_outbox: String::new(),
        }
    }

    pub fn serial(mut self, name: &str, path: &Path, format: &str, sensor: &str) -> Config {
        self.serial.push(format!(
            "[[serial]]\nname = \"{name}\"\npath = \"{}\"\nbaud = 115200\nformat = \"{format}\"\nsensor = \"{sensor}\"\n",
            path.display()
        ));
        self
    }

    pub fn mqtt(mut self, name: &str, url: &str, topics: &[&str]) -> Config {
        let topics: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
        self.mqtt.push(format!(
            "[[mqtt]]\nname = \"{name}\"\nurl = \"{url}\"\ntopics = [{}]\nformat = \"json\"\n",
            topics.join(", ")
        ));
        self
    }

    pub fn toml(&self) -> String {
        let mut s = format!(
            "[gateway]\nid = \"test-gw\"\nstate_dir = \"{}\"\nrules = [\"rules.toml\"]\n\n\
             [upstream]\nurl = \"{}\"\nkeep_alive = \"5s\"\n{}\n\
             [outbox]\nflush = \"always\"\n{}\n\
             [http]\nlisten = \"{}\"\n\n",
            self.state_dir, self.upstream, self.extra_upstream, self.extra_outbox, self.listen
        );
        for section in self.serial.iter().chain(&self.mqtt) {
            s.push_str(section);
            s.push('\n');
        }
        s.push_str(&self.extra_sections);
        s
    }
}

/// The rule most tests use: `hot` fires above 30 and resolves below 28.
pub const HOT_RULE: &str = r#"[[rule]]
id = "hot"
sensor = "*"
metric = "temperature"
above = 30.0
clear = 28.0
severity = "critical"
message = "{sensor} is {value}"
labels = { room = "lab" }
"#;

/// A JSON reading line: `{"sensor":..,"temperature":..}`.
pub fn reading(sensor: &str, temperature: f64) -> String {
    json!({ "sensor": sensor, "temperature": temperature }).to_string()
}
