//! The on-disk format (see the `# Format` section of the outbox's
//! documentation): key spaces, and how keys and values are encoded.

use super::OutboxError;
use super::event::OutboxEvent;
use crate::alert::Alert;
use crate::rules::Severity;

pub(super) const TREE: &[u8] = b"outbox";

pub(super) const ALERT: u8 = b'a';

pub(super) const INDEX: u8 = b's';

pub(super) const EVENT: u8 = b'e';

pub(super) const NEXT_SEQ: &[u8] = b"m/next_seq";

pub(super) const DB_ID: &[u8] = b"m/db_id";

pub(super) const RULES_STATE: &[u8] = b"m/rules_state";

pub(super) const NEXT_EVENT: &[u8] = b"m/next_event";

pub(super) const COUNTS: &[u8] = b"m/counts";

/// `m/counts`: waiting alerts and their payload bytes.
pub(super) fn counts_value(depth: u64, bytes: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&depth.to_be_bytes());
    v[8..].copy_from_slice(&bytes.to_be_bytes());
    v
}

pub(super) fn counts_of(v: &[u8]) -> Option<(u64, u64)> {
    let d: [u8; 8] = v.get(..8)?.try_into().ok()?;
    let b: [u8; 8] = v.get(8..16)?.try_into().ok()?;
    Some((u64::from_be_bytes(d), u64::from_be_bytes(b)))
}

pub(super) const SEVERITIES: [Severity; 3] =
    [Severity::Info, Severity::Warning, Severity::Critical];

/// First byte of a stored alert value.
pub(super) const RECORD_FORMAT: u8 = 1;

pub(super) const HEADER: usize = 10;

pub(super) fn seq_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ALERT;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn index_key(sev: Severity, seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = INDEX;
    k[1] = severity_byte(sev);
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn event_key(n: u64) -> [u8; 9] {
    let mut k = seq_key(n);
    k[0] = EVENT;
    k
}

pub(super) fn dropped_key(sev: Severity) -> Vec<u8> {
    format!("m/dropped/{sev}").into_bytes()
}

pub(super) fn severity_byte(s: Severity) -> u8 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

pub(super) fn severity_from_byte(b: u8) -> Option<Severity> {
    SEVERITIES.get(usize::from(b)).copied()
}

pub(super) fn sev_index(s: Severity) -> usize {
    usize::from(severity_byte(s))
}

pub(super) fn key_seq(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(k.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

pub(super) fn u64_value(v: Option<sled::IVec>) -> Option<u64> {
    let b: [u8; 8] = v?.as_ref().try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

pub(super) fn u32_value(v: &[u8]) -> u32 {
    v.try_into().map(u32::from_be_bytes).unwrap_or(0)
}

pub(super) fn event_bytes(ev: &OutboxEvent) -> Vec<u8> {
    // Serializing strings and integers cannot fail.
    serde_json::to_vec(ev).unwrap_or_default()
}

/// One stored alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub severity: Severity,
    /// When it was stored (wall clock, Unix ms).
    pub created_ms: i64,
    /// The JSON payload, exactly as published.
    pub payload: Vec<u8>,
}

impl Record {
    pub fn alert(&self) -> Result<Alert, OutboxError> {
        serde_json::from_slice(&self.payload).map_err(|e| OutboxError::Record {
            seq: self.seq,
            reason: e.to_string(),
        })
    }

    pub(super) fn decode(seq: u64, v: &[u8]) -> Result<Record, OutboxError> {
        let bad = |reason: &str| OutboxError::Record {
            seq,
            reason: reason.to_string(),
        };
        if v.len() < HEADER || v[0] != RECORD_FORMAT {
            return Err(bad("unknown record format"));
        }
        let severity = severity_from_byte(v[1]).ok_or_else(|| bad("unknown severity"))?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&v[2..10]);
        Ok(Record {
            seq,
            severity,
            created_ms: i64::from_be_bytes(ts),
            payload: v[HEADER..].to_vec(),
        })
    }
}
