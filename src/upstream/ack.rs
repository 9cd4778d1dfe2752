//! Which alert does a PUBACK acknowledge?
//!
//! rumqttc's `publish()` returns no packet id. What it gives instead, in the
//! order the requests were sent, is one `Outgoing::Publish(pkid)` event per
//! publish, and later `Incoming::PubAck(pkid)`. The tracker pairs the two:
//! it remembers what was sent in order, assigns each outgoing pkid to the
//! oldest unassigned send, and hands back what a PUBACK acknowledges.
//! Pure: no I/O; the upstream task feeds it events. A fresh tracker is used
//! for every connection (rumqttc drops what it held on reconnect).

use std::collections::{HashMap, VecDeque};

/// What a publish carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    /// An alert from the outbox, by seq.
    Alert(u64),
    /// An outbox event (`{topic_prefix}/events`), by number.
    Event(u64),
    /// Anything else (status, health): acknowledged, not tracked.
    Other,
}

#[derive(Debug, Default)]
pub struct AckTracker {
    /// Handed to the client, no pkid yet.
    queued: VecDeque<Tag>,
    /// Written to the socket, waiting for PUBACK.
    inflight: HashMap<u16, Tag>,
    /// How many of `queued` and `inflight` are alerts: kept as they change,
    /// since the upstream loop asks after every event.
    alerts: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("outgoing publish {0} with nothing queued")]
    UnexpectedOutgoing(u16),
    #[error("packet id {0} reused while still in flight")]
    PkidReused(u16),
}

impl AckTracker {
    pub fn new() -> Self {
        AckTracker::default()
    }

    /// A publish was handed to the client.
    pub fn sent(&mut self, tag: Tag) {
        self.alerts += usize::from(matches!(tag, Tag::Alert(_)));
        self.queued.push_back(tag);
    }

    /// One alert less in flight (`tag` left the tracker).
    fn gone(&mut self, tag: Tag) {
        if matches!(tag, Tag::Alert(_)) {
            self.alerts -= 1;
        }
    }

    /// The event loop wrote a publish with this pkid (events come in send order).
    pub fn outgoing(&mut self, pkid: u16) -> Result<(), AckError> {
        let tag = self
            .queued
            .pop_front()
            .ok_or(AckError::UnexpectedOutgoing(pkid))?;
        if pkid == 0 {
            // QoS 0: no acknowledgement will come.
            self.gone(tag);
            return Ok(());
        }
        match self.inflight.insert(pkid, tag) {
            None => Ok(()),
            Some(old) => {
                self.gone(old);
                Err(AckError::PkidReused(pkid))
            }
        }
    }

    /// A PUBACK arrived: what it acknowledges (None for an unknown pkid).
    pub fn puback(&mut self, pkid: u16) -> Option<Tag> {
        let tag = self.inflight.remove(&pkid)?;
        self.gone(tag);
        Some(tag)
    }

    /// Publishes handed over and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.queued.len() + self.inflight.len()
    }

    /// Publishes handed over that have no pkid yet.
    pub fn unassigned(&self) -> usize {
        self.queued.len()
    }

    /// Alerts handed over and not yet acknowledged.
    pub fn alerts_in_flight(&self) -> usize {
        self.alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_puback_acknowledges_the_alert_sent_with_that_pkid() {
        let mut t = AckTracker::new();
        t.sent(Tag::Other);
        t.sent(Tag::Alert(7));
        t.sent(Tag::Alert(8));
        t.outgoing(1).unwrap();
        t.outgoing(2).unwrap();
        t.outgoing(3).unwrap();
        assert_eq!(t.puback(3), Some(Tag::Alert(8)));
        assert_eq!(t.puback(1), Some(Tag::Other));
        assert_eq!(t.puback(2), Some(Tag::Alert(7)));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn an_unknown_or_repeated_puback_acknowledges_nothing() {
        let mut t = AckTracker::new();
        t.sent(Tag::Alert(1));
        t.outgoing(5).unwrap();
        assert_eq!(t.puback(6), None);
        assert_eq!(t.puback(5), Some(Tag::Alert(1)));
        assert_eq!(t.puback(5), None);
    }

    #[test]
    fn an_outgoing_publish_with_nothing_sent_is_an_error_not_a_panic() {
        let mut t = AckTracker::new();
        assert_eq!(t.outgoing(1), Err(AckError::UnexpectedOutgoing(1)));
    }

    #[test]
    fn a_pkid_reused_while_in_flight_is_reported() {
        let mut t = AckTracker::new();
        t.sent(Tag::Alert(1));
        t.sent(Tag::Alert(2));
        t.outgoing(1).unwrap();
        assert_eq!(t.outgoing(1), Err(AckError::PkidReused(1)));
    }

    /// What `alerts_in_flight` must equal: the alerts among what is held.
    fn counted(t: &AckTracker) -> usize {
        t.queued
            .iter()
            .chain(t.inflight.values())
            .filter(|t| matches!(t, Tag::Alert(_)))
            .count()
    }

    proptest! {
        /// The alert count kept on the way equals a count of what is held,
        /// whatever is sent, written (QoS 0 or 1, pkids reused or not) and
        /// acknowledged (known pkids, unknown ones, twice).
        #[test]
        fn the_alert_count_is_what_a_scan_would_count(ops in proptest::collection::vec((0u8..4, 0u16..6), 0..300)) {
            let mut t = AckTracker::new();
            let mut seq = 0;
            for (op, n) in ops {
                match op {
                    0 => { seq += 1; t.sent(Tag::Alert(seq)); }
                    1 => t.sent(if n % 2 == 0 { Tag::Other } else { Tag::Event(u64::from(n)) }),
                    2 => { let _ = t.outgoing(n); }
                    _ => { let _ = t.puback(n); }
                }
                prop_assert_eq!(t.alerts_in_flight(), counted(&t));
            }
        }

        /// Model check: whatever order PUBACKs come in, each seq is acknowledged
        /// exactly once and only by its own pkid.
        #[test]
        fn every_alert_is_acknowledged_once_by_its_own_pkid(n in 1usize..200, order in any::<u64>()) {
            let mut t = AckTracker::new();
            for seq in 0..n as u64 { t.sent(Tag::Alert(seq)); }
            // pkids as rumqttc hands them out: 1, 2, 3, ...
            for i in 0..n { t.outgoing(i as u16 + 1).unwrap(); }
            let mut pkids: Vec<u16> = (1..=n as u16).collect();
            let mut rng = order;
            for i in (1..pkids.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                pkids.swap(i, (rng >> 33) as usize % (i + 1));
            }
            for pkid in pkids {
                prop_assert_eq!(t.puback(pkid), Some(Tag::Alert(u64::from(pkid) - 1)));
            }
            prop_assert_eq!(t.in_flight(), 0);
        }
    }
}
