//! What the outbox writes into its log, and how it reads it back. Pure:
//! bytes in, values out; no I/O.
//!
//! Every record body starts with `kind` (u8), the wait clock `w_ms` (i64,
//! see `Outbox`'s header) and the wall clock `wall_ms` (i64) of the moment
//! it was written. Little-endian; strings are length-prefixed UTF-8 bytes.
//! Decoding never panics: a body that does not parse is an error the caller
//! reports, like damage.
//!
//! | kind | record | body after the common part |
//! |---|---|---|
//! | 1 | [`Commit`] | alerts (count u32, entries), acks (ranges), engine state (count u32, key/value pairs) |
//! | 2 | acks | ranges |
//! | 3 | [`Drop`] | reason u8, counts by severity 3×u64, ranges, event number u64, event JSON |
//! | 4 | event | number u64, JSON |
//! | 5 | event acknowledged | number u64 |
//! | 6 | moved | alerts (count u32, entries): alerts copied forward from a sparse segment |
//! | 7 | prefix | the id prefix (`db_id`) of alerts created from here on, and the next seq; first in every segment |
//! | 8 | close | next seq: a clean stop |
//!
//! An alert entry is self-contained, so one alert can be read alone by its
//! place and length: seq u64, severity u8, state u8 (`0` firing, `1`
//! resolved), created wall ms i64, created wait ms i64, CRC-32 of the three
//! strings u32, rule, sensor and payload lengths (u16, u16, u32), then
//! rule, sensor and the payload exactly as it is published.

use crate::rules::{AlertState, Severity};

pub const COMMIT: u8 = 1;
pub const ACKS: u8 = 2;
pub const DROP: u8 = 3;
pub const EVENT: u8 = 4;
pub const EVENT_ACK: u8 = 5;
pub const MOVED: u8 = 6;
pub const PREFIX: u8 = 7;
pub const CLOSE: u8 = 8;

/// The common part of every body.
pub const COMMON: usize = 1 + 8 + 8;
/// The fixed part of an alert entry.
pub const ALERT_HEAD: usize = 8 + 1 + 1 + 8 + 8 + 4 + 2 + 2 + 4;
/// Where an alert entry's creation wait time is, and its end.
const CREATED_W: usize = 8 + 1 + 1 + 8;

/// The creation wait time of an alert entry, from its first bytes.
pub fn created_w(entry: &[u8]) -> Option<i64> {
    let b: [u8; 8] = entry.get(CREATED_W..CREATED_W + 8)?.try_into().ok()?;
    Some(i64::from_le_bytes(b))
}

/// Bytes to read to learn [`created_w`].
pub const CREATED_W_END: usize = CREATED_W + 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed outbox record: {0}")]
pub struct DecodeError(pub &'static str);

/// Inclusive `[first, last]` seq ranges.
pub type SeqRanges = Vec<[u64; 2]>;

/// One alert, borrowed from a record body or an alert read alone.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEntry<'a> {
    pub seq: u64,
    pub severity: Severity,
    pub state: AlertState,
    pub created_ms: i64,
    pub created_w: i64,
    pub rule: &'a str,
    pub sensor: &'a str,
    pub payload: &'a [u8],
}

impl AlertEntry<'_> {
    /// Bytes this entry takes when encoded.
    pub fn encoded_len(&self) -> usize {
        ALERT_HEAD + self.rule.len() + self.sensor.len() + self.payload.len()
    }
}

/// A located alert inside a decoded body: offset from the body's start and
/// length, so the outbox can read it alone later.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed<'a> {
    pub at: usize,
    pub len: usize,
    pub alert: AlertEntry<'a>,
}

/// Alerts created together, the acknowledgements that arrived since the
/// last record, and the rule engine's transitions that produced them: one
/// record, one atomic unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit<'a> {
    pub alerts: Vec<Placed<'a>>,
    pub acks: SeqRanges,
    pub state: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// Alerts dropped by a bound, and the event that reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct Drop<'a> {
    pub reason: u8,
    /// Dropped per severity: info, warning, critical.
    pub counts: [u64; 3],
    pub seqs: SeqRanges,
    pub event: u64,
    pub event_json: &'a [u8],
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body<'a> {
    Commit(Commit<'a>),
    Acks(SeqRanges),
    Drop(Drop<'a>),
    Event { n: u64, json: &'a [u8] },
    EventAck(u64),
    Moved(Vec<Placed<'a>>),
    Prefix { db_id: &'a str, next_seq: u64 },
    Close { next_seq: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    pub w_ms: i64,
    pub wall_ms: i64,
    pub body: Body<'a>,
}

pub fn severity_byte(s: Severity) -> u8 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

pub fn severity_from_byte(b: u8) -> Option<Severity> {
    [Severity::Info, Severity::Warning, Severity::Critical]
        .get(usize::from(b))
        .copied()
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Builds one record body.
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new(kind: u8, w_ms: i64, wall_ms: i64) -> Encoder {
        let mut buf = Vec::with_capacity(512);
        buf.push(kind);
        buf.extend_from_slice(&w_ms.to_le_bytes());
        buf.extend_from_slice(&wall_ms.to_le_bytes());
        Encoder { buf }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(len32(v.len()));
        self.buf.extend_from_slice(v);
        self
    }

    pub fn ranges(&mut self, r: &[[u64; 2]]) -> &mut Self {
        self.u32(len32(r.len()));
        for [a, b] in r {
            self.u64(*a).u64(*b);
        }
        self
    }

    /// Appends an alert entry; returns its offset in the body.
    pub fn alert(&mut self, a: &AlertEntry<'_>) -> usize {
        let at = self.buf.len();
        let mut crc = crc32fast::Hasher::new();
        crc.update(a.rule.as_bytes());
        crc.update(a.sensor.as_bytes());
        crc.update(a.payload);
        self.u64(a.seq)
            .u8(severity_byte(a.severity))
            .u8(match a.state {
                AlertState::Firing => 0,
                AlertState::Resolved => 1,
            });
        self.buf.extend_from_slice(&a.created_ms.to_le_bytes());
        self.buf.extend_from_slice(&a.created_w.to_le_bytes());
        self.u32(crc.finalize());
        self.buf.extend_from_slice(
            &u16::try_from(a.rule.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes(),
        );
        self.buf.extend_from_slice(
            &u16::try_from(a.sensor.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes(),
        );
        self.u32(len32(a.payload.len()));
        // Rule ids and sensor ids are bounded far below u16::MAX by config
        // and the parsers; a longer one is cut rather than mis-framed.
        self.buf
            .extend_from_slice(&a.rule.as_bytes()[..a.rule.len().min(usize::from(u16::MAX))]);
        self.buf
            .extend_from_slice(&a.sensor.as_bytes()[..a.sensor.len().min(usize::from(u16::MAX))]);
        self.buf.extend_from_slice(a.payload);
        at
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.len() <= COMMON
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A commit body. Returns it and each alert's (offset, length) in it.
pub fn commit(
    w_ms: i64,
    wall_ms: i64,
    alerts: &[AlertEntry<'_>],
    acks: &[[u64; 2]],
    state: &[(Vec<u8>, Option<Vec<u8>>)],
) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut e = Encoder::new(COMMIT, w_ms, wall_ms);
    e.u32(len32(alerts.len()));
    let mut places = Vec::with_capacity(alerts.len());
    for a in alerts {
        let at = e.alert(a);
        places.push((at, e.len() - at));
    }
    e.ranges(acks);
    e.u32(len32(state.len()));
    for (k, v) in state {
        e.bytes(k);
        match v {
            Some(v) => {
                e.u8(1).bytes(v);
            }
            None => {
                e.u8(0);
            }
        }
    }
    (e.finish(), places)
}

pub fn moved(w_ms: i64, wall_ms: i64, alerts: &[AlertEntry<'_>]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut e = Encoder::new(MOVED, w_ms, wall_ms);
    e.u32(len32(alerts.len()));
    let mut places = Vec::with_capacity(alerts.len());
    for a in alerts {
        let at = e.alert(a);
        places.push((at, e.len() - at));
    }
    (e.finish(), places)
}

pub fn acks(w_ms: i64, wall_ms: i64, ranges: &[[u64; 2]]) -> Vec<u8> {
    let mut e = Encoder::new(ACKS, w_ms, wall_ms);
    e.ranges(ranges);
    e.finish()
}

pub fn drop(w_ms: i64, wall_ms: i64, d: &Drop<'_>) -> Vec<u8> {
    let mut e = Encoder::new(DROP, w_ms, wall_ms);
    e.u8(d.reason);
    for c in d.counts {
        e.u64(c);
    }
    e.ranges(&d.seqs).u64(d.event).bytes(d.event_json);
    e.finish()
}

pub fn event(w_ms: i64, wall_ms: i64, n: u64, json: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new(EVENT, w_ms, wall_ms);
    e.u64(n).bytes(json);
    e.finish()
}

pub fn event_ack(w_ms: i64, wall_ms: i64, n: u64) -> Vec<u8> {
    let mut e = Encoder::new(EVENT_ACK, w_ms, wall_ms);
    e.u64(n);
    e.finish()
}

pub fn prefix(w_ms: i64, wall_ms: i64, db_id: &str, next_seq: u64) -> Vec<u8> {
    let mut e = Encoder::new(PREFIX, w_ms, wall_ms);
    e.bytes(db_id.as_bytes()).u64(next_seq);
    e.finish()
}

pub fn close(w_ms: i64, wall_ms: i64, next_seq: u64) -> Vec<u8> {
    let mut e = Encoder::new(CLOSE, w_ms, wall_ms);
    e.u64(next_seq);
    e.finish()
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or(DecodeError("truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self, n: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError("string is not UTF-8"))
    }

    /// A count of items each at least `min` bytes long: refused when the
    /// rest of the body cannot hold them (a corrupt count allocates nothing).
    fn count(&mut self, min: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.data.len() - self.pos {
            return Err(DecodeError("count larger than the record"));
        }
        Ok(n)
    }

    fn ranges(&mut self) -> Result<SeqRanges, DecodeError> {
        let n = self.count(16)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let a = self.u64()?;
            let b = self.u64()?;
            if a > b {
                return Err(DecodeError("range ends before it starts"));
            }
            out.push([a, b]);
        }
        Ok(out)
    }

    fn alert(&mut self) -> Result<Placed<'a>, DecodeError> {
        let at = self.pos;
        let seq = self.u64()?;
        let severity = severity_from_byte(self.u8()?).ok_or(DecodeError("unknown severity"))?;
        let state = match self.u8()? {
            0 => AlertState::Firing,
            1 => AlertState::Resolved,
            _ => return Err(DecodeError("unknown state")),
        };
        let created_ms = self.i64()?;
        let created_w = self.i64()?;
        let crc = self.u32()?;
        let rule_len = usize::from(self.u16()?);
        let sensor_len = usize::from(self.u16()?);
        let payload_len = self.u32()? as usize;
        let rule = self.str(rule_len)?;
        let sensor = self.str(sensor_len)?;
        let payload = self.take(payload_len)?;
        let mut h = crc32fast::Hasher::new();
        h.update(rule.as_bytes());
        h.update(sensor.as_bytes());
        h.update(payload);
        if h.finalize() != crc {
            return Err(DecodeError("alert checksum"));
        }
        Ok(Placed {
            at,
            len: self.pos - at,
            alert: AlertEntry {
                seq,
                severity,
                state,
                created_ms,
                created_w,
                rule,
                sensor,
                payload,
            },
        })
    }

    fn alerts(&mut self) -> Result<Vec<Placed<'a>>, DecodeError> {
        let n = self.count(ALERT_HEAD)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.alert()?);
        }
        Ok(out)
    }

    fn done(&self) -> Result<(), DecodeError> {
        if self.pos == self.data.len() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
}

/// Decodes a record body.
pub fn decode(body: &[u8]) -> Result<Record<'_>, DecodeError> {
    let mut r = Reader { data: body, pos: 0 };
    let kind = r.u8()?;
    let w_ms = r.i64()?;
    let wall_ms = r.i64()?;
    let body = match kind {
        COMMIT => {
            let alerts = r.alerts()?;
            let acks = r.ranges()?;
            let n = r.count(5)?;
            let mut state = Vec::with_capacity(n);
            for _ in 0..n {
                let k = r.bytes()?;
                let v = match r.u8()? {
                    0 => None,
                    1 => Some(r.bytes()?),
                    _ => return Err(DecodeError("bad state flag")),
                };
                state.push((k, v));
            }
            Body::Commit(Commit {
                alerts,
                acks,
                state,
            })
        }
        ACKS => Body::Acks(r.ranges()?),
        DROP => {
            let reason = r.u8()?;
            let counts = [r.u64()?, r.u64()?, r.u64()?];
            let seqs = r.ranges()?;
            let event = r.u64()?;
            let event_json = r.bytes()?;
            Body::Drop(Drop {
                reason,
                counts,
                seqs,
                event,
                event_json,
            })
        }
        EVENT => {
            let n = r.u64()?;
            Body::Event {
                n,
                json: r.bytes()?,
            }
        }
        EVENT_ACK => Body::EventAck(r.u64()?),
        MOVED => Body::Moved(r.alerts()?),
        PREFIX => {
            let b = r.bytes()?;
            Body::Prefix {
                db_id: std::str::from_utf8(b).map_err(|_| DecodeError("prefix is not UTF-8"))?,
                next_seq: r.u64()?,
            }
        }
        CLOSE => Body::Close { next_seq: r.u64()? },
        _ => return Err(DecodeError("unknown record kind")),
    };
    r.done()?;
    Ok(Record {
        w_ms,
        wall_ms,
        body,
    })
}

/// Decodes one alert entry read alone (by its place and length).
pub fn decode_alert(entry: &[u8]) -> Result<AlertEntry<'_>, DecodeError> {
    let mut r = Reader {
        data: entry,
        pos: 0,
    };
    let a = r.alert()?;
    r.done()?;
    Ok(a.alert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(seq: u64, payload: &[u8]) -> AlertEntry<'_> {
        AlertEntry {
            seq,
            severity: Severity::Warning,
            state: AlertState::Firing,
            created_ms: 1_700_000_000_000 + seq as i64,
            created_w: 5_000 + seq as i64,
            rule: "hot",
            sensor: "greenhouse/t1",
            payload,
        }
    }

    #[test]
    fn a_commit_round_trips_and_each_alert_can_be_read_alone() {
        let p1 = br#"{"seq":1}"#.to_vec();
        let p2 = br#"{"seq":2,"message":"x"}"#.to_vec();
        let alerts = [entry(1, &p1), entry(2, &p2)];
        let state = vec![
            (b"p/hot/a".to_vec(), Some(b"{}".to_vec())),
            (b"p/hot/b".to_vec(), None),
        ];
        let (body, places) = commit(10, 20, &alerts, &[[3, 5]], &state);
        let rec = decode(&body).unwrap();
        assert_eq!((rec.w_ms, rec.wall_ms), (10, 20));
        let Body::Commit(c) = rec.body else {
            panic!("not a commit")
        };
        assert_eq!(c.acks, vec![[3, 5]]);
        assert_eq!(c.state.len(), 2);
        assert_eq!(c.state[1].1, None);
        for (i, (at, len)) in places.iter().enumerate() {
            assert_eq!(c.alerts[i].at, *at);
            assert_eq!(c.alerts[i].len, *len);
            assert_eq!(c.alerts[i].alert, alerts[i]);
            assert_eq!(decode_alert(&body[*at..at + len]).unwrap(), alerts[i]);
        }
    }

    #[test]
    fn every_other_kind_round_trips() {
        let cases = vec![
            acks(1, 2, &[[1, 1], [4, 9]]),
            drop(
                1,
                2,
                &Drop {
                    reason: 1,
                    counts: [3, 0, 1],
                    seqs: vec![[1, 3], [7, 7]],
                    event: 4,
                    event_json: b"{\"event\":\"dropped\"}",
                },
            ),
            event(1, 2, 9, b"{}"),
            event_ack(1, 2, 9),
            moved(1, 2, &[entry(7, b"{}")]).0,
            prefix(1, 2, "a1b2c3", 7),
            close(1, 2, 42),
        ];
        for body in cases {
            let rec = decode(&body).unwrap();
            assert_eq!((rec.w_ms, rec.wall_ms), (1, 2));
        }
    }

    #[test]
    fn a_flipped_payload_byte_fails_the_alert_checksum() {
        let (mut body, places) = commit(0, 0, &[entry(1, b"{\"a\":1}")], &[], &[]);
        let (at, len) = places[0];
        body[at + len - 2] ^= 1;
        assert_eq!(
            decode_alert(&body[at..at + len]),
            Err(DecodeError("alert checksum"))
        );
        assert!(decode(&body).is_err());
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&data);
            let _ = decode_alert(&data);
        }

        #[test]
        fn decoding_a_cut_record_is_an_error(cut in 0usize..200) {
            let (body, _) = commit(0, 0, &[entry(1, b"{\"value\":21.5}")], &[[1, 2]], &[(b"k".to_vec(), Some(b"v".to_vec()))]);
            prop_assume!(cut < body.len());
            prop_assert!(decode(&body[..cut]).is_err());
        }
    }
}
