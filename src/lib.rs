//! outpost: an IoT edge gateway for embedded Linux.
//!
//! Readings from serial ports and MQTT topics go through threshold rules on
//! the device; alerts are kept in a durable outbox (a log on disk) and
//! forwarded upstream over MQTT with at-least-once delivery. See
//! ARCHITECTURE.md for the map of this crate.

pub mod alert;
pub mod backoff;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod diagnostic;
pub mod evaluator;
pub mod health;
pub mod homeassistant;
pub mod http;
pub mod logging;
pub mod mqtt;
pub mod outbox;
pub mod payload;
pub mod push;
pub mod reading;
pub mod remote;
pub mod rules;
pub mod runtime;
pub mod source;
pub mod telemetry;
pub mod tls;
pub mod topic;
pub mod upstream;

#[cfg(test)]
mod architecture_test;
