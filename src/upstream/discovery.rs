//! The Home Assistant messages that must precede an alert on the wire: its
//! retained discovery config (the first time its pair alerts on a
//! connection) and its `ON`/`OFF` state, built by `crate::homeassistant`.

use std::collections::VecDeque;

use rumqttc::{AsyncClient, QoS};

use super::ack::{AckTracker, Tag};
use crate::alert::Alert;
use crate::config::UpstreamConfig;
use crate::homeassistant::{Discovery, Message};

/// Retained messages that go out just before an alert (Home Assistant
/// discovery and state). Queued, because the client's request channel may
/// be full: the alert waits until they are handed over, so they always
/// precede it on the wire.
pub(super) struct DiscoveryQueue {
    ha: Option<Discovery>,
    queue: VecDeque<Message>,
    /// The alert whose messages are queued, so a retried alert does not
    /// queue them twice.
    queued_for: Option<u64>,
}

impl DiscoveryQueue {
    pub(super) fn new(cfg: &UpstreamConfig) -> DiscoveryQueue {
        DiscoveryQueue {
            ha: cfg
                .homeassistant
                .clone()
                .map(|h| Discovery::new(h, &cfg.topic_prefix)),
            queue: VecDeque::new(),
            queued_for: None,
        }
    }

    /// A new connection: alerts are sent again from the oldest
    /// unacknowledged, and bring their messages again.
    pub(super) fn new_session(&mut self) {
        self.queue.clear();
        self.queued_for = None;
        if let Some(ha) = &mut self.ha {
            ha.new_session();
        }
    }

    /// Whether alerts bring messages of their own (Home Assistant is on):
    /// only then must the upstream read each alert's fields.
    pub(super) fn wants_alerts(&self) -> bool {
        self.ha.is_some()
    }

    pub(super) fn before_alert(&mut self, seq: u64, alert: &Alert) {
        if let Some(ha) = &mut self.ha
            && self.queued_for != Some(seq)
        {
            self.queue.extend(ha.on_alert(alert));
            self.queued_for = Some(seq);
        }
    }

    /// Hands queued messages to the client; true when none is left.
    pub(super) fn flush(&mut self, client: &AsyncClient, tracker: &mut AckTracker) -> bool {
        while let Some(m) = self.queue.front() {
            if client
                .try_publish(m.topic.clone(), QoS::AtLeastOnce, true, m.payload.clone())
                .is_err()
            {
                return false;
            }
            tracker.sent(Tag::Other);
            self.queue.pop_front();
        }
        true
    }
}
