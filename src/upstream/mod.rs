//! The upstream link: the only component that publishes alerts.
//!
//! One task owns the rumqttc client *and* its event loop (PITFALLS.md: the
//! event loop must be polled continuously, and only the task that sees
//! `Outgoing::Publish(pkid)` in send order can tell which alert a PUBACK
//! acknowledges). Per connection:
//!
//! 1. a fresh client and event loop (so no request queued for a dead
//!    connection can slip into the next one and confuse the pkid mapping),
//!    `clean_session = true`, last will `offline` retained on `{prefix}/status`;
//! 2. on ConnAck: `online` retained, then alerts from the outbox in seq order,
//!    starting from the oldest unacknowledged, at most [`WINDOW`] in flight,
//!    never past the last durable seq the outbox writer announced;
//! 3. on PUBACK: the alert it acknowledges leaves the outbox;
//! 4. on any error: the connection is dropped, and the next attempt waits a
//!    capped, jittered backoff: no busy loop while the broker is down.
//!
//! A link that accepts bytes but never acknowledges is cut after
//! [`stall_timeout`], so it cannot hold the outbox forever.

pub mod ack;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::alert::Alert;
use crate::backoff::{Backoff, jitter};
use crate::config::UpstreamConfig;
use crate::connect::mqtt_options;
use crate::outbox::Outbox;
use crate::rules::AlertState;
use crate::telemetry::Telemetry;
use crate::topic;
use ack::{AckTracker, Tag};

/// Alerts in flight at once. Duplicates after a reconnect are at most this many.
pub const WINDOW: usize = 64;
/// How long shutdown waits for in-flight publishes.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// How long alerts may wait for a PUBACK before the link is considered dead.
pub fn stall_timeout(keep_alive: Duration) -> Duration {
    (keep_alive * 2).max(Duration::from_secs(10))
}

pub struct Upstream {
    pub cfg: UpstreamConfig,
    pub outbox: Arc<Outbox>,
    /// Highest seq that may be published (durable under the flush policy).
    pub durable: watch::Receiver<u64>,
    pub telemetry: Arc<Telemetry>,
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

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let max_packet = self.cfg.max_payload + 2048;
        loop {
            let mut opts = match mqtt_options(&self.cfg.broker, max_packet) {
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
            opts.set_inflight(u16::try_from(WINDOW + 8).unwrap_or(u16::MAX));
            let (client, eventloop) = AsyncClient::new(opts, WINDOW + 16);
            match self.session(client, eventloop, &cancel).await {
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
                    if connected || backoff.attempt() <= 1 {
                        warn!(url = %self.cfg.broker.url, %reason, outbox = depth, retry_in = ?delay, "upstream link lost");
                    } else {
                        debug!(url = %self.cfg.broker.url, %reason, outbox = depth, retry_in = ?delay, "upstream still unreachable");
                    }
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
    ) -> End {
        // The poll future lives across loop turns and is never dropped
        // half-way: rumqttc's `poll` is not cancel-safe while it connects
        // (a cancelled poll throws the half-made connection away).
        let mut poll: std::pin::Pin<Box<PollFuture>> = Box::pin(next_event(eventloop));
        let mut tracker = AckTracker::new();
        // Per connection, like the tracker: what is not acknowledged on this
        // connection is sent again (and timed again) on the next.
        let mut sent: HashMap<u64, Sent> = HashMap::new();
        let mut cursor: Option<u64> = None;
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
                    poll = Box::pin(next_event(el));
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
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Err(e) = tracker.outgoing(pkid) {
                            return End::Lost { connected, reason: format!("publish tracking lost sync: {e}") };
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(Tag::Alert(seq)) = tracker.puback(ack.pkid) {
                            last_ack = Instant::now();
                            let s = sent.remove(&seq);
                            if let Some(s) = &s {
                                self.telemetry.publish_latency.observe(last_ack.duration_since(s.at).as_secs_f64());
                            }
                            match self.outbox.ack(seq) {
                                Ok(removed) => {
                                    Telemetry::bump(&self.telemetry.alerts_acked);
                                    if let (true, Some(s)) = (removed, s) {
                                        self.telemetry.alert_delivered(&s.rule, s.state);
                                    }
                                }
                                Err(e) => {
                                    Telemetry::bump(&self.telemetry.outbox_errors);
                                    warn!(seq, error = %e, "cannot remove acknowledged alert from the outbox; it will be sent again");
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return End::Lost { connected, reason: e.to_string() },
                }},
                changed = self.durable.changed(), if durable_open && connected && draining.is_none() => {
                    if changed.is_err() {
                        durable_open = false;
                    }
                }
                _ = tick.tick() => {
                    if connected && tracker.alerts_in_flight() > 0 && last_ack.elapsed() > stall {
                        return End::Lost { connected, reason: format!("no PUBACK for {stall:?} with alerts in flight") };
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
                self.fill(&client, &mut tracker, &mut sent, &mut cursor);
            }
        }
    }

    /// Hands alerts to the client until the window is full.
    fn fill(
        &self,
        client: &AsyncClient,
        tracker: &mut AckTracker,
        sent: &mut HashMap<u64, Sent>,
        cursor: &mut Option<u64>,
    ) {
        let durable = *self.durable.borrow();
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
            for r in records {
                if r.seq > durable {
                    return;
                }
                let alert: Alert = match r.alert() {
                    Ok(a) => a,
                    Err(e) => {
                        // Unreadable: it can never be published; keep it out of the way.
                        warn!(error = %e, "skipping an unreadable outbox record");
                        *cursor = Some(r.seq);
                        continue;
                    }
                };
                let payload = if r.payload.len() > self.cfg.max_payload {
                    alert.to_payload(self.cfg.max_payload)
                } else {
                    r.payload
                };
                let t = topic::alert_topic(&self.cfg.topic_prefix, &alert.rule, &alert.sensor);
                if client
                    .try_publish(t, QoS::AtLeastOnce, false, payload)
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
                        rule: alert.rule,
                        state: alert.state,
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
        mut poll: std::pin::Pin<Box<PollFuture>>,
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
            poll = Box::pin(next_event(el));
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
                poll = Box::pin(next_event(el));
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

type PollFuture =
    dyn std::future::Future<Output = (EventLoop, Result<Event, rumqttc::ConnectionError>)> + Send;

/// Polls once, handing the event loop back with the event.
pub async fn next_event(
    mut eventloop: EventLoop,
) -> (EventLoop, Result<Event, rumqttc::ConnectionError>) {
    let ev = eventloop.poll().await;
    (eventloop, ev)
}

/// Sleeps `d`; returns true when cancelled meanwhile.
pub async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = cancel.cancelled() => true,
    }
}
