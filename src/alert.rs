//! The alert payload: the public contract subscribers parse (the fields and
//! their meaning are in docs/contract.md, "Alert").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rules::{AlertDraft, AlertState, Severity};

/// The largest alert payload unless `[upstream] max_payload` says otherwise.
pub const DEFAULT_MAX_PAYLOAD: usize = 128 << 10;

/// One alert as published: field names and order are the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `{gateway}-{database id}-{seq}`: unique per gateway, the same on every redelivery.
    pub id: String,
    /// Increases by one per alert created, across restarts.
    pub seq: u64,
    pub gateway: String,
    pub rule: String,
    pub sensor: String,
    pub metric: String,
    pub state: AlertState,
    pub severity: Severity,
    pub value: f64,
    pub threshold: f64,
    /// RFC 3339, milliseconds, UTC.
    pub ts: String,
    pub since: String,
    pub message: String,
    pub labels: BTreeMap<String, String>,
}

impl Alert {
    pub fn new(draft: &AlertDraft, gateway: &str, db_id: &str, seq: u64) -> Alert {
        Alert {
            id: alert_id(gateway, db_id, seq),
            seq,
            gateway: gateway.to_string(),
            rule: draft.rule.clone(),
            sensor: draft.sensor.clone(),
            metric: draft.metric.clone(),
            state: draft.state,
            severity: draft.severity,
            value: finite_or_zero(draft.value),
            threshold: finite_or_zero(draft.threshold),
            ts: rfc3339_ms(draft.ts_ms),
            since: rfc3339_ms(draft.since_ms),
            message: draft.message.clone(),
            labels: draft.labels.clone(),
        }
    }

    /// The JSON bytes, with `message` cut (on a character boundary, marked
    /// with `…`) so the whole payload fits in `max` bytes. A publish over the
    /// packet limit (rumqttc's own, or the broker's) fails the connection,
    /// and it would be sent again after every reconnect, forever.
    /// If even an empty message does not fit (labels larger than `max`), the
    /// labels go too; what is left (ids, names of at most 128 bytes, numbers,
    /// times) fits in any `max_payload` the config accepts (1 KiB or more).
    pub fn to_payload(&self, max: usize) -> Vec<u8> {
        // Serializing a struct of strings and finite numbers cannot fail.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        if bytes.len() <= max {
            return bytes;
        }
        let mut cut = self.clone();
        let mut over = bytes.len() - max;
        // JSON escapes can make the message longer on the wire than in
        // memory, so cut again by what is still over until it fits.
        while !cut.message.is_empty() {
            let base = cut.message.trim_end_matches('…');
            let mut keep = base.len().saturating_sub(over + "…".len());
            while !base.is_char_boundary(keep) {
                keep -= 1;
            }
            let mut m = base[..keep].to_string();
            if !m.is_empty() {
                m.push('…');
            }
            cut.message = m;
            let bytes = serde_json::to_vec(&cut).unwrap_or_default();
            if bytes.len() <= max {
                return bytes;
            }
            over = bytes.len() - max;
        }
        cut.labels.clear();
        serde_json::to_vec(&cut).unwrap_or_default()
    }
}

/// JSON has no NaN or infinity; the engine never emits them, but a
/// payload must stay valid JSON whatever happens.
fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

pub fn alert_id(gateway: &str, db_id: &str, seq: u64) -> String {
    format!("{gateway}-{db_id}-{seq}")
}

/// `2026-11-26T10:00:00.123Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let fmt = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            t.format(&fmt)
                .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
        }
        Err(_) => "1970-01-01T00:00:00.000Z".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> AlertDraft {
        AlertDraft {
            rule: "greenhouse-hot".into(),
            sensor: "greenhouse/t1".into(),
            metric: "temperature".into(),
            state: AlertState::Firing,
            severity: Severity::Critical,
            value: 31.2,
            threshold: 30.0,
            ts_ms: 1_795_687_200_123,
            since_ms: 1_795_687_080_101,
            message: "greenhouse/t1 is 31.2°C, above 30°C".into(),
            labels: BTreeMap::from([("room".to_string(), "greenhouse".to_string())]),
            actions: Vec::new(),
            reason: crate::rules::Reason::Transition,
        }
    }

    #[test]
    fn the_payload_has_the_fields_of_the_spec_in_order() {
        let a = Alert::new(&draft(), "greenhouse-pi", "7f3a9c", 42);
        let json = String::from_utf8(a.to_payload(DEFAULT_MAX_PAYLOAD)).unwrap();
        assert_eq!(
            json,
            r#"{"id":"greenhouse-pi-7f3a9c-42","seq":42,"gateway":"greenhouse-pi","rule":"greenhouse-hot","sensor":"greenhouse/t1","metric":"temperature","state":"firing","severity":"critical","value":31.2,"threshold":30.0,"ts":"2026-11-26T10:00:00.123Z","since":"2026-11-26T09:58:00.101Z","message":"greenhouse/t1 is 31.2°C, above 30°C","labels":{"room":"greenhouse"}}"#
        );
    }

    #[test]
    fn an_oversized_message_is_cut_to_fit() {
        let mut d = draft();
        d.message = "é".repeat(5000);
        let a = Alert::new(&d, "gw", "abcdef", 1);
        let p = a.to_payload(2048);
        assert!(p.len() <= 2048, "{}", p.len());
        let back: Alert = serde_json::from_slice(&p).unwrap();
        assert!(back.message.ends_with('…'));
        assert_eq!(back.id, a.id);
    }

    #[test]
    fn a_message_full_of_json_escapes_is_still_cut_to_fit() {
        let mut d = draft();
        d.message = "\"\\".repeat(3000);
        let p = Alert::new(&d, "gw", "abcdef", 1).to_payload(2048);
        assert!(p.len() <= 2048, "{}", p.len());
        assert!(serde_json::from_slice::<Alert>(&p).is_ok());
    }

    #[test]
    fn labels_larger_than_the_limit_are_dropped_rather_than_overflow_it() {
        let mut d = draft();
        d.labels = (0..100)
            .map(|i| (format!("k{i}"), "v".repeat(50)))
            .collect();
        let p = Alert::new(&d, "gw", "abcdef", 1).to_payload(1024);
        assert!(p.len() <= 1024, "{}", p.len());
        let back: Alert = serde_json::from_slice(&p).unwrap();
        assert!(back.labels.is_empty() && back.message.is_empty());
    }
}
