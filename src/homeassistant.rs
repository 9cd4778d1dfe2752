//! Home Assistant MQTT discovery: each (rule, sensor) pair that alerts
//! appears in Home Assistant as a `binary_sensor` of class `problem`, with
//! no YAML to write.
//!
//! Pure: alerts in, retained messages out. The upstream task publishes them
//! (only upstream publishes upstream), just *before* the alert they come
//! from, so a PUBACK for the alert means they reached the broker too, and
//! an alert sent again after a reconnect brings its state again.
//!
//! Topics (all retained, QoS 1):
//! - `{discovery_prefix}/binary_sensor/{gateway_id}/{object_id}/config`:
//!   the entity, published the first time a pair alerts on a connection;
//! - `{topic_prefix}/state/{rule}/{sensor}`: `ON` while the pair fires,
//!   `OFF` once it resolves (derived from the alerts as they are published);
//! - availability is the gateway's `{topic_prefix}/status` (`online` /
//!   `offline`), and the last alert's fields are the entity's attributes
//!   (`json_attributes_topic` is the pair's alert topic).

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::json;

use crate::alert::Alert;
use crate::config::HomeAssistantConfig;
use crate::rules::AlertState;
use crate::topic;

/// One retained QoS 1 message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The discovery state of one upstream link.
#[derive(Debug)]
pub struct Discovery {
    cfg: HomeAssistantConfig,
    topic_prefix: String,
    /// Pairs whose config was published on this connection.
    announced: HashSet<(String, String)>,
    /// The metrics firing per pair (a rule's `metric` may be a glob, so one
    /// pair can fire for several metrics; it is `ON` while any fires).
    firing: HashMap<(String, String), BTreeSet<String>>,
}

impl Discovery {
    pub fn new(cfg: HomeAssistantConfig, topic_prefix: &str) -> Discovery {
        Discovery {
            cfg,
            topic_prefix: topic_prefix.to_string(),
            announced: HashSet::new(),
            firing: HashMap::new(),
        }
    }

    /// A new connection: configs are announced again (the broker may have
    /// lost its retained messages while the link was down).
    pub fn new_session(&mut self) {
        self.announced.clear();
    }

    /// The messages that go out before `alert`: the pair's config the first
    /// time it is seen on this connection, then its state.
    pub fn on_alert(&mut self, alert: &Alert) -> Vec<Message> {
        let pair = (alert.rule.clone(), alert.sensor.clone());
        let mut out = Vec::with_capacity(2);
        if !self.announced.contains(&pair) {
            out.push(self.config_message(&alert.rule, &alert.sensor));
            self.announced.insert(pair.clone());
        }
        let metrics = self.firing.entry(pair.clone()).or_default();
        match alert.state {
            AlertState::Firing => {
                metrics.insert(alert.metric.clone());
            }
            AlertState::Resolved => {
                metrics.remove(&alert.metric);
            }
        }
        let on = !metrics.is_empty();
        if !on {
            self.firing.remove(&pair);
        }
        out.push(Message {
            topic: state_topic(&self.topic_prefix, &alert.rule, &alert.sensor),
            payload: if on { b"ON".to_vec() } else { b"OFF".to_vec() },
        });
        out
    }

    fn config_message(&self, rule: &str, sensor: &str) -> Message {
        let node = object_id_part(&self.cfg.node_id);
        let object = object_id(rule, sensor);
        let p = &self.topic_prefix;
        let payload = json!({
            "name": format!("{rule} {sensor}"),
            "unique_id": format!("outpost_{node}_{object}"),
            "device_class": "problem",
            "state_topic": state_topic(p, rule, sensor),
            "payload_on": "ON",
            "payload_off": "OFF",
            "availability_topic": topic::gateway_topic(p, "status"),
            "payload_available": "online",
            "payload_not_available": "offline",
            "json_attributes_topic": topic::alert_topic(p, rule, sensor),
            "qos": 1,
            "device": {
                "identifiers": [format!("outpost_{node}")],
                "name": self.cfg.node_name,
                "manufacturer": "outpost",
                "model": "outpost gateway",
                "sw_version": env!("CARGO_PKG_VERSION"),
            },
            "origin": {
                "name": "outpost",
                "sw_version": env!("CARGO_PKG_VERSION"),
            },
        });
        Message {
            topic: format!(
                "{}/binary_sensor/{node}/{object}/config",
                self.cfg.discovery_prefix
            ),
            payload: payload.to_string().into_bytes(),
        }
    }
}

/// `{topic_prefix}/state/{rule}/{sensor}`, built like alert topics.
pub fn state_topic(topic_prefix: &str, rule: &str, sensor: &str) -> String {
    topic::pair_topic(topic_prefix, "state", rule, sensor)
}

/// Home Assistant wants `[a-zA-Z0-9_-]+` for node and object ids.
fn object_id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `{rule}_{sensor}` made of `[a-zA-Z0-9_-]`. When that changed a
/// character (`greenhouse/t1` → `greenhouse_t1`), a hash of the exact pair
/// is appended, so `a/b` and `a_b` stay two entities.
pub fn object_id(rule: &str, sensor: &str) -> String {
    let raw = format!("{rule}_{sensor}");
    let clean = object_id_part(&raw);
    if clean == raw {
        clean
    } else {
        format!("{clean}_{:08x}", fnv1a(rule, sensor))
    }
}

/// FNV-1a (32 bit) over `rule`, a NUL, `sensor`: stable across versions and
/// platforms (std's hasher is not), so ids survive upgrades.
fn fnv1a(rule: &str, sensor: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in rule.bytes().chain([0]).chain(sensor.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ha() -> Discovery {
        Discovery::new(
            HomeAssistantConfig {
                discovery_prefix: "homeassistant".into(),
                node_id: "greenhouse-pi".into(),
                node_name: "Greenhouse".into(),
            },
            "outpost/greenhouse-pi",
        )
    }

    fn alert(sensor: &str, metric: &str, state: AlertState) -> Alert {
        Alert {
            id: "greenhouse-pi-abcdef-1".into(),
            seq: 1,
            gateway: "greenhouse-pi".into(),
            rule: "hot".into(),
            sensor: sensor.into(),
            metric: metric.into(),
            state,
            severity: crate::rules::Severity::Critical,
            value: 31.0,
            threshold: 30.0,
            ts: "2026-11-26T10:00:00.123Z".into(),
            since: "2026-11-26T10:00:00.123Z".into(),
            message: String::new(),
            labels: BTreeMap::new(),
        }
    }

    fn state(m: &[Message]) -> (&str, &str) {
        let last = m.last().expect("a state message");
        (&last.topic, std::str::from_utf8(&last.payload).unwrap())
    }

    #[test]
    fn the_first_alert_of_a_pair_announces_it_then_sets_its_state() {
        let mut d = ha();
        let m = d.on_alert(&alert("greenhouse/t1", "temperature", AlertState::Firing));
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0].topic,
            format!(
                "homeassistant/binary_sensor/greenhouse-pi/hot_greenhouse_t1_{:08x}/config",
                fnv1a("hot", "greenhouse/t1")
            )
        );
        let c: serde_json::Value = serde_json::from_slice(&m[0].payload).unwrap();
        assert_eq!(c["device_class"], "problem");
        assert_eq!(
            c["state_topic"],
            "outpost/greenhouse-pi/state/hot/greenhouse/t1"
        );
        assert_eq!(c["availability_topic"], "outpost/greenhouse-pi/status");
        assert_eq!(c["payload_available"], "online");
        assert_eq!(c["payload_not_available"], "offline");
        assert_eq!(c["device"]["identifiers"][0], "outpost_greenhouse-pi");
        assert_eq!(c["device"]["name"], "Greenhouse");
        assert_eq!(
            state(&m),
            ("outpost/greenhouse-pi/state/hot/greenhouse/t1", "ON")
        );

        let m = d.on_alert(&alert("greenhouse/t1", "temperature", AlertState::Resolved));
        assert_eq!(m.len(), 1, "announced once per connection");
        assert_eq!(state(&m).1, "OFF");

        d.new_session();
        assert_eq!(
            d.on_alert(&alert("greenhouse/t1", "temperature", AlertState::Firing))
                .len(),
            2
        );
    }

    #[test]
    fn a_pair_firing_for_two_metrics_stays_on_until_both_resolve() {
        let mut d = ha();
        d.on_alert(&alert("t1", "a", AlertState::Firing));
        d.on_alert(&alert("t1", "b", AlertState::Firing));
        assert_eq!(
            state(&d.on_alert(&alert("t1", "a", AlertState::Resolved))).1,
            "ON"
        );
        assert_eq!(
            state(&d.on_alert(&alert("t1", "b", AlertState::Resolved))).1,
            "OFF"
        );
    }

    #[test]
    fn object_ids_are_safe_and_distinct_after_sanitizing() {
        assert_eq!(object_id("hot", "t1"), "hot_t1");
        // The example in docs/contract.md; the hash is FNV-1a, stable across
        // versions, so entities survive upgrades.
        assert_eq!(
            object_id("greenhouse-hot", "greenhouse/t1"),
            "greenhouse-hot_greenhouse_t1_4da03bab"
        );
        let a = object_id("hot", "a/b");
        let b = object_id("hot", "a_b");
        let c = object_id("hot", "a+b");
        assert!(a != b && a != c && b != c, "{a} {b} {c}");
        for id in [a, b, c, object_id("r.1", "$SYS/#/é")] {
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{id}"
            );
        }
    }
}
