//! The upstream link: the only component that publishes alerts.
//!
//! One task owns the rumqttc client *and* its event loop: rumqttc sends and
//! receives only while its event loop is polled, so it must be polled
//! continuously, and only the task that sees `Outgoing::Publish(pkid)` in
//! send order can tell which alert a PUBACK acknowledges (rumqttc reuses
//! packet ids). Per connection:
//!
//! 1. a fresh client and event loop (so no request queued for a dead
//!    connection can slip into the next one and confuse the pkid mapping),
//!    `clean_session = true`, last will `offline` retained on `{prefix}/status`;
//! 2. on ConnAck: `online` retained, the health (retained), pending outbox
//!    events, then alerts from the outbox in seq order, starting from the
//!    oldest unacknowledged, at most [`WINDOW`] in flight, never past the
//!    last durable seq the outbox writer announced;
//! 3. on PUBACK: the alert (or event) it acknowledges leaves the outbox
//!    (alerts in groups of up to [`ACK_BATCH`], one call each, and at
//!    the latest when nothing is in flight or the session ends);
//! 4. on any error: the connection is dropped, and the next attempt waits a
//!    capped, jittered backoff: no busy loop while the broker is down.
//!
//! A link that accepts bytes but never acknowledges is cut after
//! [`stall_timeout`], so it cannot hold the outbox forever; an idle
//! half-open link is caught by the keep-alive (no PINGRESP in time).
//!
//! `{topic_prefix}/health` (retained) is published on connect, every
//! [`HEALTH_EVERY`], and on a change worth telling (at most every [`HEALTH_MIN_GAP`])
//! ([`Health::signature`]). `{topic_prefix}/events` carries the outbox's
//! pending events (drops, purges, a replaced database), each removed from
//! the outbox on its PUBACK, so a link lost before it loses no event.
//!
//! With `[homeassistant]`, each alert is preceded by its retained discovery
//! and state messages (see [`crate::homeassistant`] and `DiscoveryQueue`).
//!
//! With `[remote] rules = true` ([`RemoteLink`]), the same connection (no
//! second one) subscribes to the rules topics after every ConnAck
//! (`clean_session = true`: the broker forgets subscriptions), hands each
//! push it receives to the rules keeper without waiting for it, and
//! publishes the keeper's answers retained on `{prefix}/rules/result`
//! (the latest one waits for the next connection when the link is down).

pub mod ack;
mod discovery;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS, SubscribeFilter};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::alert::Alert;
use crate::backoff::{Backoff, jitter};
use crate::cancel::sleep_or_cancel;
use crate::config::UpstreamConfig;
use crate::health::Health;
use crate::mqtt::{self, explain};
use crate::outbox::Outbox;
use crate::outbox::event::event_id;
use crate::rules::AlertState;
use crate::telemetry::Telemetry;
use crate::topic;
use ack::{AckTracker, Tag};
use discovery::DiscoveryQueue;

/// Alerts in flight at once. Duplicates after a reconnect are at most this many.
pub const WINDOW: usize = 64;
/// PUBACKed alerts removed from the outbox together (one call, one lock).
pub const ACK_BATCH: usize = 32;
/// Outbox events in flight at once.
pub const EVENTS_WINDOW: usize = 8;
/// How often the health is refreshed when nothing changed.
pub const HEALTH_EVERY: Duration = Duration::from_secs(60);
/// The least time between two health publishes prompted by a change.
pub const HEALTH_MIN_GAP: Duration = Duration::from_secs(5);
/// How long shutdown waits for in-flight publishes.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// How long alerts may wait for a PUBACK before the link is considered dead.
pub fn stall_timeout(keep_alive: Duration) -> Duration {
    (keep_alive * 2).max(Duration::from_secs(10))
}

pub struct Upstream {
    /// The gateway id, for event and health payloads.
    pub gateway: String,
    pub cfg: UpstreamConfig,
    pub outbox: Arc<Outbox>,
    /// Highest seq that may be published (durable under the flush policy).
    pub durable: watch::Receiver<u64>,
    pub telemetry: Arc<Telemetry>,
    /// Rules pushed over this link (`[remote] rules = true`).
    pub remote: Option<RemoteLink>,
}

/// The rules topics, to the rules keeper and back (see the module header).
pub struct RemoteLink {
    /// Subscribed to (QoS 1) after every ConnAck.
    topics: Vec<String>,
    /// Where pushes received on them go.
    pushes: mpsc::Sender<crate::push::Incoming>,
    /// Answers, published retained on `{prefix}/rules/result`.
    results: mpsc::Receiver<Vec<u8>>,
    /// The latest answer not yet handed to the client.
    pending: Option<Vec<u8>>,
}

impl RemoteLink {
    pub fn new(
        topics: Vec<String>,
        pushes: mpsc::Sender<crate::push::Incoming>,
        results: mpsc::Receiver<Vec<u8>>,
    ) -> RemoteLink {
        RemoteLink {
            topics,
            pushes,
            results,
            pending: None,
        }
    }
}

/// The next answer to publish; never, without a remote link.
async fn next_result(remote: &mut Option<RemoteLink>) -> Option<Vec<u8>> {
    match remote {
        Some(r) => r.results.recv().await,
        None => std::future::pending().await,
    }
}

/// An alert handed to the client and not yet acknowledged: what the metrics
/// need when its PUBACK comes (latency, and delivered by rule and state).
struct Sent {
    at: Instant,
    rule: String,
    state: AlertState,
}

enum End {
    Shutdown,
    Lost { connected: bool, reason: String },
}

impl Upstream {
    fn status_topic(&self) -> String {
        topic::gateway_topic(&self.cfg.topic_prefix, "status")
    }

    fn health(&self) -> Health {
        Health::gather(
            &self.gateway,
            &self.telemetry,
            &self.outbox.stats(),
            crate::reading::wall_ms(),
            self.telemetry.started.elapsed(),
        )
    }

    /// Publishes the health (retained); returns its signature when handed over.
    fn publish_health(&self, client: &AsyncClient, tracker: &mut AckTracker) -> Option<Vec<u64>> {
        let h = self.health();
        let t = topic::gateway_topic(&self.cfg.topic_prefix, "health");
        client
            .try_publish(t, QoS::AtLeastOnce, true, h.to_payload())
            .ok()?;
        tracker.sent(Tag::Other);
        Some(h.signature())
    }

    /// Hands pending outbox events to the client (at most [`EVENTS_WINDOW`]).
    fn send_events(
        &self,
        client: &AsyncClient,
        tracker: &mut AckTracker,
        in_flight: &mut std::collections::BTreeSet<u64>,
    ) {
        if self.outbox.events_pending() <= in_flight.len() as u64
            || in_flight.len() >= EVENTS_WINDOW
        {
            return;
        }
        let events = match self.outbox.events_to_publish() {
            Ok(e) => e,
            Err(e) => {
                Telemetry::bump(&self.telemetry.outbox_errors);
                warn!(error = %e, "cannot read the outbox events");
                return;
            }
        };
        let t = topic::gateway_topic(&self.cfg.topic_prefix, "events");
        for (n, ev) in events {
            if in_flight.len() >= EVENTS_WINDOW {
                return;
            }
            if in_flight.contains(&n) {
                continue;
            }
            let id = event_id(&self.gateway, self.outbox.db_id(), n);
            if client
                .try_publish(
                    t.clone(),
                    QoS::AtLeastOnce,
                    false,
                    ev.to_payload(&id, &self.gateway),
                )
                .is_err()
            {
                return;
            }
            tracker.sent(Tag::Event(n));
            in_flight.insert(n);
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let max_packet = self.cfg.max_payload + 2048;
        let mut discovery = DiscoveryQueue::new(&self.cfg);
        let mut last_reason = String::new();
        loop {
            let mut opts = match mqtt::options(&self.cfg.broker, max_packet) {
                Ok(o) => o,
                Err(e) => {
                    // A TLS file that went missing after `check`: keep alerts, retry later.
                    warn!(error = %e, "upstream TLS setup failed; alerts stay in the outbox");
                    if sleep_or_cancel(backoff.next_delay(jitter()), &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            opts.set_last_will(LastWill::new(
                self.status_topic(),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
            opts.set_inflight(u16::try_from(WINDOW + EVENTS_WINDOW + 8).unwrap_or(u16::MAX));
            if self.remote.is_some() {
                // Room for a push: one over the limit is refused with an
                // answer, not a broken connection (see `push`).
                opts.set_max_packet_size(
                    max_packet.max(crate::push::MAX_INCOMING_PACKET),
                    max_packet,
                );
            }
            let (client, eventloop) = AsyncClient::new(opts, WINDOW + 16);
            let mut acked = Vec::with_capacity(ACK_BATCH);
            let end = self
                .session(client, eventloop, &cancel, &mut discovery, &mut acked)
                .await;
            // Whatever ended the session, what the broker acknowledged leaves.
            self.remove_acked(&mut acked);
            match end {
                End::Shutdown => return,
                End::Lost { connected, reason } => {
                    self.telemetry
                        .upstream_connected
                        .store(false, Ordering::Relaxed);
                    if connected {
                        backoff.reset();
                        Telemetry::bump(&self.telemetry.upstream_reconnects);
                    }
                    let delay = backoff.next_delay(jitter());
                    let depth = self.outbox.depth();
                    // Every new reason is worth a warning (a TLS or login
                    // problem must be plain in the log); a repeated one is not.
                    if connected || backoff.attempt() <= 1 || reason != last_reason {
                        warn!(url = %self.cfg.broker.url, %reason, outbox = depth, retry_in = ?delay, "upstream link lost");
                    } else {
                        debug!(url = %self.cfg.broker.url, %reason, outbox = depth, retry_in = ?delay, "upstream still unreachable");
                    }
                    last_reason = reason;
                    if sleep_or_cancel(delay, &cancel).await {
                        return;
                    }
                }
            }
        }
    }

    async fn session(
        &mut self,
        client: AsyncClient,
        eventloop: EventLoop,
        cancel: &CancellationToken,
        discovery: &mut DiscoveryQueue,
        acked: &mut Vec<u64>,
    ) -> End {
        discovery.new_session();
        // Never dropped half-way (see `mqtt::next_event`).
        let mut poll = mqtt::poll(eventloop);
        let mut tracker = AckTracker::new();
        // Per connection, like the tracker: what is not acknowledged on this
        // connection is sent again (and timed again) on the next.
        let mut sent: HashMap<u64, Sent> = HashMap::new();
        let mut cursor: Option<u64> = None;
        let mut events_in_flight = std::collections::BTreeSet::new();
        let mut health_sig: Option<Vec<u64>> = None;
        let mut last_health = Instant::now();
        let mut connected = false;
        let mut draining: Option<Instant> = None;
        let mut durable_open = true;
        let stall = stall_timeout(self.cfg.broker.keep_alive);
        let mut last_ack = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled(), if draining.is_none() => {
                    if !connected {
                        return End::Shutdown;
                    }
                    draining = Some(Instant::now() + DRAIN_TIMEOUT);
                }
                (el, ev) = &mut poll => {
                    poll = mqtt::poll(el);
                    match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        last_ack = Instant::now();
                        self.telemetry.upstream_connected.store(true, Ordering::Relaxed);
                        info!(url = %self.cfg.broker.url, client_id = %self.cfg.broker.client_id, outbox = self.outbox.depth(), "upstream connected");
                        if client
                            .try_publish(self.status_topic(), QoS::AtLeastOnce, true, "online")
                            .is_ok()
                        {
                            tracker.sent(Tag::Other);
                        }
                        health_sig = self.publish_health(&client, &mut tracker);
                        last_health = Instant::now();
                        self.subscribe_rules(&client);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => self.on_publish(p),
                    Ok(Event::Incoming(Packet::SubAck(ack))) => self.on_suback(&ack),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Err(e) = tracker.outgoing(pkid) {
                            return End::Lost { connected, reason: format!("publish tracking lost sync: {e}") };
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        last_ack = Instant::now();
                        match tracker.puback(ack.pkid) {
                            Some(Tag::Alert(seq)) => {
                                if let Some(s) = sent.remove(&seq) {
                                    self.telemetry.publish_latency.observe(last_ack.duration_since(s.at).as_secs_f64());
                                    self.telemetry.alert_delivered(&s.rule, s.state);
                                }
                                acked.push(seq);
                                if acked.len() >= ACK_BATCH {
                                    self.remove_acked(acked);
                                }
                            }
                            Some(Tag::Event(n)) => {
                                events_in_flight.remove(&n);
                                if let Err(e) = self.outbox.ack_event(n) {
                                    Telemetry::bump(&self.telemetry.outbox_errors);
                                    warn!(event = n, error = %e, "cannot remove an acknowledged event from the outbox; it will be sent again");
                                }
                            }
                            Some(Tag::Other) | None => {}
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return End::Lost { connected, reason: explain(&e, &self.cfg.broker.url.host) },
                }},
                result = next_result(&mut self.remote), if self.remote.is_some() => {
                    if let (Some(r), Some(payload)) = (self.remote.as_mut(), result) {
                        // Retained: only the latest answer matters to a
                        // subscriber that comes later.
                        r.pending = Some(payload);
                    }
                }
                changed = self.durable.changed(), if durable_open && connected && draining.is_none() => {
                    if changed.is_err() {
                        durable_open = false;
                    }
                }
                _ = tick.tick() => {
                    if connected && tracker.in_flight() > 0 && last_ack.elapsed() > stall {
                        return End::Lost { connected, reason: format!("no PUBACK for {stall:?} with publishes in flight") };
                    }
                    if connected && draining.is_none() {
                        let h = self.health();
                        let changed = health_sig.as_ref() != Some(&h.signature());
                        if (last_health.elapsed() >= HEALTH_EVERY || (changed && last_health.elapsed() >= HEALTH_MIN_GAP))
                            && let Some(sig) = self.publish_health(&client, &mut tracker)
                        {
                            health_sig = Some(sig);
                            last_health = Instant::now();
                        }
                    }
                }
            }
            if let Some(deadline) = draining {
                if tracker.alerts_in_flight() == 0 || Instant::now() >= deadline {
                    self.goodbye(&client, poll, tracker.unassigned(), deadline)
                        .await;
                    return End::Shutdown;
                }
            } else if connected {
                if tracker.alerts_in_flight() == 0 || acked.len() >= ACK_BATCH {
                    // A burst is over: do not hold its last acknowledgements.
                    self.remove_acked(acked);
                }
                self.send_result(&client, &mut tracker);
                self.send_events(&client, &mut tracker, &mut events_in_flight);
                self.fill(&client, &mut tracker, &mut sent, &mut cursor, discovery);
            }
        }
    }

    /// Subscribes to the rules topics (after every ConnAck: the session is clean).
    fn subscribe_rules(&self, client: &AsyncClient) {
        let Some(r) = &self.remote else { return };
        let filters = r
            .topics
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        if let Err(e) = client.try_subscribe_many(filters) {
            warn!(error = %e, "cannot subscribe to the rules topics; pushes wait for the next connection");
        }
    }

    /// The broker's answer to the rules subscription (the only one).
    fn on_suback(&self, ack: &rumqttc::SubAck) {
        let Some(r) = &self.remote else { return };
        let refused: Vec<&str> = r
            .topics
            .iter()
            .zip(&ack.return_codes)
            .filter(|(_, c)| matches!(c, rumqttc::SubscribeReasonCode::Failure))
            .map(|(t, _)| t.as_str())
            .collect();
        if refused.is_empty() {
            info!(topics = ?r.topics, "subscribed to the rules topics");
        } else {
            warn!(topics = ?refused, "the broker refused the subscription to these rules topics: see its ACL");
        }
    }

    /// A message from the broker: a push on a rules topic goes to the rules
    /// keeper, at once (this loop never waits for it to be applied).
    fn on_publish(&self, p: rumqttc::Publish) {
        let Some(r) = &self.remote else { return };
        if !r.topics.contains(&p.topic) {
            return;
        }
        let push = crate::push::Incoming {
            topic: p.topic,
            payload: p.payload.to_vec(),
            retained: p.retain,
        };
        if r.pushes.try_send(push).is_err() {
            warn!("rules push dropped: earlier pushes are still being applied (push it again)");
        }
    }

    /// Publishes the latest answer to a push, retained, if one waits.
    fn send_result(&mut self, client: &AsyncClient, tracker: &mut AckTracker) {
        let Some(r) = self.remote.as_mut() else {
            return;
        };
        let Some(payload) = r.pending.take() else {
            return;
        };
        let t = crate::push::result_topic(&self.cfg.topic_prefix);
        match client.try_publish(t, QoS::AtLeastOnce, true, payload.clone()) {
            Ok(()) => tracker.sent(Tag::Other),
            // The request channel is full: retried after the next event.
            Err(_) => r.pending = Some(payload),
        }
    }

    /// Removes the PUBACKed alerts in `acked` from the outbox, in one batch.
    fn remove_acked(&self, acked: &mut Vec<u64>) {
        if acked.is_empty() {
            return;
        }
        match self.outbox.ack_many(acked) {
            Ok(_) => Telemetry::bump_by(&self.telemetry.alerts_acked, acked.len() as u64),
            Err(e) => {
                Telemetry::bump(&self.telemetry.outbox_errors);
                warn!(alerts = acked.len(), error = %e, "cannot remove acknowledged alerts from the outbox; they will be sent again");
            }
        }
        acked.clear();
    }

    /// Hands alerts to the client until the window is full, as each PUBACK
    /// frees a place. Not in runs: refilling only once 16 places were free
    /// cut alert-heavy throughput to a fifth in the bench, with the CPU
    /// idle (the likely cause: Mosquitto writes PUBACKs under Nagle, and
    /// without a publish to carry our TCP acknowledgement its next PUBACKs
    /// wait for the delayed one).
    fn fill(
        &self,
        client: &AsyncClient,
        tracker: &mut AckTracker,
        sent: &mut HashMap<u64, Sent>,
        cursor: &mut Option<u64>,
        discovery: &mut DiscoveryQueue,
    ) {
        let durable = *self.durable.borrow();
        if cursor.is_some_and(|c| c >= durable) {
            // Everything the writer announced is handed over already.
            return;
        }
        while tracker.alerts_in_flight() < WINDOW {
            let room = WINDOW - tracker.alerts_in_flight();
            let records = match self.outbox.after(*cursor, room) {
                Ok(r) => r,
                Err(e) => {
                    Telemetry::bump(&self.telemetry.outbox_errors);
                    warn!(error = %e, "cannot read the outbox");
                    return;
                }
            };
            if records.is_empty() {
                return;
            }
            for mut r in records {
                if r.seq > durable {
                    return;
                }
                // The record carries rule, sensor and state: the payload is
                // parsed only for Home Assistant or a cut (a record stored
                // under a larger `max_payload`).
                if discovery.wants_alerts() || r.payload.len() > self.cfg.max_payload {
                    let alert: Alert = match r.alert() {
                        Ok(a) => a,
                        Err(e) => {
                            // Unreadable: it can never be published; keep it out of the way.
                            warn!(error = %e, "skipping an unreadable outbox record");
                            *cursor = Some(r.seq);
                            continue;
                        }
                    };
                    discovery.before_alert(r.seq, &alert);
                    let stored = std::mem::take(&mut r.payload);
                    r.payload = publishable(stored, &alert, self.cfg.max_payload);
                }
                if !discovery.flush(client, tracker) {
                    return;
                }
                let t = topic::alert_topic(&self.cfg.topic_prefix, &r.rule, &r.sensor);
                let (rule, state) = (r.rule, r.state);
                if client
                    .try_publish(t, QoS::AtLeastOnce, false, r.payload)
                    .is_err()
                {
                    // The request channel is full: retried on the next event.
                    return;
                }
                tracker.sent(Tag::Alert(r.seq));
                // Latency is measured from here, the hand-over to the client:
                // with the client's in-flight limit above WINDOW it goes to
                // the socket at once, so this is publish → PUBACK.
                sent.insert(
                    r.seq,
                    Sent {
                        at: Instant::now(),
                        rule,
                        state,
                    },
                );
                Telemetry::bump(&self.telemetry.alerts_published);
                *cursor = Some(r.seq);
            }
        }
    }

    /// Clean shutdown: `offline` (retained), then DISCONNECT. `poll` is the
    /// pending poll of the session; the publish request wakes it.
    async fn goodbye(
        &self,
        client: &AsyncClient,
        mut poll: mqtt::Poll,
        unassigned: usize,
        deadline: Instant,
    ) {
        let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
        if client
            .try_publish(self.status_topic(), QoS::AtLeastOnce, true, "offline")
            .is_err()
        {
            return;
        }
        // Publishes handed over earlier produce their Outgoing events first;
        // the offline one is the last.
        let mut tracker_pending = unassigned + 1;
        let mut offline_pkid = None;
        loop {
            let Ok((el, ev)) = tokio::time::timeout_at(deadline, &mut poll).await else {
                return;
            };
            poll = mqtt::poll(el);
            match ev {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    offline_pkid = Some(pkid);
                    tracker_pending = tracker_pending.saturating_sub(1);
                }
                Ok(Event::Incoming(Packet::PubAck(a)))
                    if tracker_pending == 0 && Some(a.pkid) == offline_pkid =>
                {
                    break;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout_at(deadline, async {
            loop {
                let (el, ev) = (&mut poll).await;
                poll = mqtt::poll(el);
                match ev {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        info!("upstream: published offline and disconnected");
    }
}

/// The bytes to publish for a stored alert: its payload verbatim, exactly
/// what `outpost outbox export` shows (the outbox cut it to `max_payload`
/// when it stored it). Only a record stored under a larger `max_payload`
/// (the config was changed since) is cut again, so it still fits.
fn publishable(stored: Vec<u8>, alert: &Alert, max_payload: usize) -> Vec<u8> {
    if stored.len() <= max_payload {
        stored
    } else {
        alert.to_payload(max_payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Bounds;
    use crate::rules::AlertDraft;

    fn draft(message: String) -> AlertDraft {
        AlertDraft {
            message,
            ..AlertDraft::for_test(1)
        }
    }

    #[test]
    fn what_the_outbox_stored_is_published_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap().0;
        let max = 2048;
        o.set_bounds(Bounds {
            max_payload: max,
            ..Bounds::DEFAULT
        });
        o.push(
            "gw",
            &[draft("é".repeat(5000)), draft("short".into())],
            &[],
            crate::reading::Clock::new().now(),
        )
        .unwrap();
        for r in o.after(None, 10).unwrap() {
            let alert = r.alert().unwrap();
            let stored = r.payload.clone();
            assert!(stored.len() <= max, "{}", stored.len());
            assert_eq!(publishable(r.payload, &alert, max), stored);
        }
    }

    #[test]
    fn a_record_stored_under_a_larger_max_payload_is_cut_to_fit() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap().0;
        o.push(
            "gw",
            &[draft("x".repeat(4000))],
            &[],
            crate::reading::Clock::new().now(),
        )
        .unwrap();
        let r = o.waiting().oldest.unwrap();
        let alert = r.alert().unwrap();
        let p = publishable(r.payload, &alert, 1024);
        assert!(p.len() <= 1024, "{}", p.len());
        assert_eq!(p, alert.to_payload(1024));
    }
}
