//! What every MQTT connection shares, upstream and `[[mqtt]]` sources alike:
//! a [`BrokerConfig`] turned into rumqttc options ([`options`]), the event
//! loop polled without ever being cancelled half-way ([`next_event`]), and
//! failures explained for the log ([`explain`]).
//!
//! TLS is all or nothing: an `mqtts://` broker gets a TLS transport or no
//! connection at all, never a plaintext fallback. SNI is the URL's host name
//! (rumqttc hands it to rustls as the server name; an IP address sends none).

mod explain;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rumqttc::{Event, EventLoop, MqttOptions, TlsConfiguration, Transport};

use crate::config::BrokerConfig;
use crate::tls::{self, TlsError};
pub use explain::explain;

/// rumqttc options for one connection. `clean_session` is true: the outbox, not
/// the broker session, is the source of truth for what is unacknowledged.
/// rumqttc's `MqttOptions` has a `Debug` that prints the credentials: never
/// log it.
pub fn options(cfg: &BrokerConfig, max_packet: usize) -> Result<MqttOptions, TlsError> {
    let mut o = MqttOptions::new(&cfg.client_id, &cfg.url.host, cfg.url.port);
    o.set_keep_alive(cfg.keep_alive);
    o.set_clean_session(true);
    o.set_max_packet_size(max_packet, max_packet);
    if let (Some(u), p) = (&cfg.username, &cfg.password) {
        o.set_credentials(u, p.as_ref().map_or("", |p| p.expose()));
    }
    if cfg.url.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls::client_config(&cfg.tls)?),
        )));
    }
    Ok(o)
}

/// One [`next_event`] in progress, boxed so it can live across the turns of
/// a `select!` loop.
pub type Poll =
    Pin<Box<dyn Future<Output = (EventLoop, Result<Event, rumqttc::ConnectionError>)> + Send>>;

/// Polls once, handing the event loop back with the event. The future is
/// kept across loop turns and never dropped half-way: rumqttc's `poll` is not
/// cancel-safe while it connects (a cancelled poll throws the half-made
/// connection away).
pub async fn next_event(
    mut eventloop: EventLoop,
) -> (EventLoop, Result<Event, rumqttc::ConnectionError>) {
    let ev = eventloop.poll().await;
    (eventloop, ev)
}

/// [`next_event`], boxed as a [`Poll`].
pub fn poll(eventloop: EventLoop) -> Poll {
    Box::pin(next_event(eventloop))
}
