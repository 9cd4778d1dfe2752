//! The summary `outpost check` prints: one line per section, never a secret.

use super::units::ByteSize;
use super::{Config, FlushPolicy};
use crate::rules::OnMaxPairs;

impl Config {
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
        if self.remote.rules {
            let prefix = self
                .upstream
                .as_ref()
                .map_or("outpost/?", |u| u.topic_prefix.as_str());
            let mut topics = vec![crate::push::set_topic(prefix)];
            topics.extend(
                self.remote
                    .groups
                    .iter()
                    .map(|g| crate::push::group_topic(g)),
            );
            let signed = match &self.remote.public_key {
                Some(k) => format!("signed by key {}", k.to_base64()),
                None => "signature not required".to_string(),
            };
            let _ = writeln!(
                s,
                "remote     rules pushed on {}; {signed}",
                topics.join(", ")
            );
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
        for m in &self.modbus {
            let entries: usize = m.devices.iter().map(|d| d.registers.len()).sum();
            let _ = writeln!(
                s,
                "modbus     {} {}, {} device{}, {entries} register entries, every {}, timeout {}",
                m.name,
                m.link,
                m.devices.len(),
                if m.devices.len() == 1 { "" } else { "s" },
                humantime::format_duration(m.interval),
                humantime::format_duration(m.timeout)
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
        let _ = writeln!(s, "rules      {} in {}", self.rules.len(), files.join(", "));
        let l = &self.limits;
        let policy = match l.on_max_pairs {
            OnMaxPairs::Evict => "then evict the longest idle",
            OnMaxPairs::Refuse => "then refuse new ones",
        };
        let _ = write!(
            s,
            "state      at most {} pairs ({policy}), {} window samples ({} per pair); up to {} MiB",
            l.max_pairs,
            l.max_samples,
            l.max_samples_per_pair,
            l.worst_case_bytes().div_ceil(1 << 20)
        );
        s
    }
}
