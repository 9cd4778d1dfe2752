//! The integration tests: the `outpost` binary against real Mosquitto
//! brokers and pseudo-terminal serial ports, one binary for all of them
//! (`cargo test --test it [FILTER]`, e.g. `cargo test --test it outbox::`).
//!
//! They need `mosquitto`, `mosquitto_passwd`, `socat` and `openssl`
//! (`./scripts/test` installs them); they fail with a message saying so
//! when one is missing. `harness` is how they reach the outside world.

mod harness;

/// The data path: readings in, alerts out, with every field of the alert
/// contract (docs/contract.md); `check`; the status topic.
mod e2e;
/// The example configs with their devices' real payloads.
mod examples;
/// Faults a Pi meets: a storm with the uplink down, a full disk, a damaged
/// outbox, a clock that jumps.
mod faults;
/// Rules pushed to gateways and groups: checked, signed, stored, answered.
mod fleet;
/// The HTTP endpoint under a socket flood: the alerts keep their file
/// descriptors.
mod flood;
/// The rules' limits under a flood of sensor ids.
mod limits;
/// Modbus RTU and TCP devices (pymodbus) through the binary.
mod modbus;
/// The commands that need no broker and no running gateway.
mod offline;
/// The outbox's promises with links broken and processes killed.
mod outbox;
/// The upstream against a real RabbitMQ (MQTT plugin), read by an AMQP
/// consumer as README's recipe sets it up.
mod rabbitmq;
/// Every rule kind, rule state across restarts and reloads.
mod rules;
/// Running as a service: HTTP endpoint, `outpost status`, watchdog, signals.
mod service;
/// Serial and MQTT sources under abuse.
mod sources;
/// The upstream link: TLS, passwords, backoff, sizes, Home Assistant.
mod upstream;
