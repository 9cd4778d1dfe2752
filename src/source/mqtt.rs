//! `[[mqtt]]`: readings from topics on a local broker (ESP32, Tasmota,
//! Shelly, Zigbee2MQTT), and the rules' local actions published back to it.
//!
//! The sensor id is the payload's `sensor` field when it has one, else the
//! `sensor` template rendered from the topic (see `template`). Every
//! connection is new (`clean_session`), so the filters are subscribed again
//! after each ConnAck; reconnects use capped, jittered backoff.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::SourceContext;
use crate::backoff::{Backoff, jitter};
use crate::cancel::sleep_or_cancel;
use crate::config::MqttSourceConfig;
use crate::mqtt;
use crate::payload::{self, ParseContext, ParseError};
use crate::reading::{Reading, wall_ms};
use crate::rules::LocalPublish;
use crate::topic::match_filter;

/// Largest MQTT packet accepted from the broker; payloads over the source's
/// `max_payload` are counted and dropped by us, not by a disconnect.
const MAX_INCOMING: usize = 1 << 20;

pub async fn run(
    cfg: MqttSourceConfig,
    ctx: SourceContext,
    mut actions: mpsc::Receiver<LocalPublish>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let qos = if cfg.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let filters: Vec<SubscribeFilter> = cfg
        .topics
        .iter()
        .map(|t| SubscribeFilter::new(t.clone(), qos))
        .collect();
    let mut connected_before = false;
    let mut readings = Vec::new();
    loop {
        let opts = match mqtt::options(&cfg.broker, MAX_INCOMING) {
            Ok(o) => o,
            Err(e) => {
                warn!(source = %cfg.name, error = %e, "MQTT source TLS setup failed");
                if sleep_or_cancel(backoff.next_delay(jitter()), &ctx.cancel).await {
                    return;
                }
                continue;
            }
        };
        let (client, eventloop) = AsyncClient::new(opts, 64);
        // Never dropped half-way (see `mqtt::next_event`).
        let mut poll = mqtt::poll(eventloop);
        let mut connected = false;
        let reason = loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => {
                    let _ = client.try_disconnect();
                    return;
                }
                a = actions.recv(), if connected => {
                    if let Some(a) = a
                        && let Err(e) = client.try_publish(a.topic.clone(), QoS::AtLeastOnce, false, a.payload) {
                            warn!(source = %cfg.name, topic = %a.topic, error = %e, "local action not published");
                        }
                }
                (el, ev) = &mut poll => {
                    poll = mqtt::poll(el);
                    match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        backoff.reset();
                        if connected_before {
                            ctx.counters.reopens.fetch_add(1, Ordering::Relaxed);
                        }
                        connected_before = true;
                        ctx.counters.connected.store(true, Ordering::Relaxed);
                        info!(source = %cfg.name, url = %cfg.broker.url, topics = ?cfg.topics, "MQTT source connected");
                        if let Err(e) = client.try_subscribe_many(filters.clone()) {
                            break format!("subscribe failed: {e}");
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        handle(&cfg, &ctx, &p.topic, &p.payload, &mut readings);
                        if !ctx.send(&mut readings).await {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            warn!(source = %cfg.name, "the broker refused a subscription");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break mqtt::explain(&e, &cfg.broker.url.host),
                }},
            }
        };
        ctx.counters.connected.store(false, Ordering::Relaxed);
        let delay = backoff.next_delay(jitter());
        if connected || backoff.attempt() <= 1 {
            warn!(source = %cfg.name, url = %cfg.broker.url, %reason, retry_in = ?delay, "MQTT source disconnected");
        } else {
            debug!(source = %cfg.name, %reason, "MQTT source still unreachable");
        }
        if sleep_or_cancel(delay, &ctx.cancel).await {
            return;
        }
    }
}

/// One message, counted: readings go to `out`, bad input to the counters.
pub fn handle(
    cfg: &MqttSourceConfig,
    ctx: &SourceContext,
    topic: &str,
    payload: &[u8],
    out: &mut Vec<Reading>,
) {
    let result = readings(cfg, topic, payload, wall_ms(), out);
    ctx.count(result, payload, out);
}

/// The readings of one message: the sensor id from the payload's `sensor`
/// field, else the `sensor` template over the topic levels. Pure.
pub fn readings(
    cfg: &MqttSourceConfig,
    topic: &str,
    payload: &[u8],
    received_ms: i64,
    out: &mut Vec<Reading>,
) -> Result<usize, ParseError> {
    if payload.len() > cfg.max_payload {
        return Err(ParseError::TooLarge {
            len: payload.len(),
            max: cfg.max_payload,
        });
    }
    let captures = cfg
        .topics
        .iter()
        .find_map(|f| match_filter(f, topic))
        .unwrap_or_default();
    let sensor = cfg.sensor.render(topic, &captures);
    let metric = cfg.metric.render(topic, &captures).unwrap_or_default();
    let pctx = ParseContext {
        default_sensor: sensor.as_deref(),
        columns: &cfg.columns,
        metric: &metric,
        received_ms,
    };
    let before = out.len();
    payload::parse(cfg.format, payload, &pctx, out)?;
    Ok(out.len() - before)
}
