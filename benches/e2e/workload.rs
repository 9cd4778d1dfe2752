//! The readings every gateway is fed, and what they should alert.
//!
//! 100 sensors, `bench/s000` … `bench/s099`, one JSON reading each in turn
//! (`{"temperature":20.0000123}`, QoS 0). A sensor is "hot" (35, above the
//! rule's 30) or "cold" (20, at or below its clear value 28) in runs of
//! `period` of its own readings, so with `period = 50` about 1 % of readings
//! fire an alert and 1 % resolve one, and with `period = 1` every reading
//! toggles an alert. The last reading always toggles its sensor, so the last
//! alert marks the moment the gateway has handled every reading.
//!
//! The reading's index hides in the value's fraction (index × 1e-7), which
//! gateways copy into the alert: that ties an alert to the instant its
//! reading was published, for the latency.

pub const SENSORS: usize = 100;
pub const HOT: f64 = 35.0;
pub const COLD: f64 = 20.0;
pub const ABOVE: f64 = 30.0;
pub const CLEAR: f64 = 28.0;
const SCALE: f64 = 1e7;
/// Indexes must stay below this for the fraction to stay below 1.
pub const MAX_READINGS: usize = 9_000_000;

pub struct Workload {
    pub topics: Vec<String>,
    /// (sensor index, payload) per reading, in publish order.
    pub readings: Vec<(usize, Vec<u8>)>,
    /// Alerts a gateway with the rule `above 30, clear 28` produces.
    pub expected_alerts: usize,
}

pub fn topic(sensor: usize) -> String {
    format!("bench/s{sensor:03}")
}

impl Workload {
    pub fn new(n: usize, period: usize) -> Workload {
        let n = n.clamp(1, MAX_READINGS);
        let period = period.max(1);
        let topics: Vec<String> = (0..SENSORS).map(topic).collect();
        let mut firing = [false; SENSORS];
        let mut expected_alerts = 0;
        let mut readings = Vec::with_capacity(n);
        for i in 0..n {
            let s = i % SENSORS;
            let k = i / SENSORS;
            // Staggered so that sensors do not all flip on the same round;
            // `period = 1` alerts on every reading, the first included.
            let mut hot = if period == 1 {
                k.is_multiple_of(2)
            } else {
                ((k + s) / period) % 2 == 1
            };
            if i == n - 1 {
                hot = !firing[s];
            }
            if hot != firing[s] {
                firing[s] = hot;
                expected_alerts += 1;
            }
            let value = if hot { HOT } else { COLD } + i as f64 / SCALE;
            readings.push((s, format!("{{\"temperature\":{value}}}").into_bytes()));
        }
        Workload {
            topics,
            readings,
            expected_alerts,
        }
    }

    pub fn len(&self) -> usize {
        self.readings.len()
    }
}

/// The reading index hidden in an alert's value.
pub fn index_of(value: f64) -> Option<usize> {
    let base = if value >= ABOVE { HOT } else { COLD };
    let frac = (value - base) * SCALE;
    (frac >= -0.5 && frac < MAX_READINGS as f64).then(|| frac.round() as usize)
}

/// The `value` field of an alert payload (outpost's or the Node-RED flow's).
pub fn alert_value(payload: &[u8]) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("value")?.as_f64()
}

/// The `temperature` field of a reading payload.
pub fn reading_value(payload: &[u8]) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("temperature")?.as_f64()
}
