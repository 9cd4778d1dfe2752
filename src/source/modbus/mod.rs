//! `[[modbus]]`: Modbus RTU devices on an RS-485 bus (or Modbus TCP ones),
//! polled every `interval`, one request on the wire at a time.
//!
//! `frame` encodes requests and checks answers (CRC-16, unit, function,
//! byte count; transaction ids on TCP), `decode` plans a device's requests
//! and turns answers into readings; both are pure. `link` is the wire.
//! This module is the task: open the bus (with backoff when it is missing
//! or vanishes, as `[[serial]]` ports are), poll each device in turn, count
//! what failed per device and kind, and send the readings on like every
//! other source.
//!
//! A device that does not answer costs the bus one `timeout` per round: its
//! other requests are skipped for that round, so it never stalls the
//! devices after it. Its readings stop, which is what `silent_for` rules
//! catch.

pub mod decode;
pub mod frame;
mod link;

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::SourceContext;
use crate::backoff::{Backoff, jitter};
use crate::cancel::sleep_or_cancel;
use crate::config::{ModbusConfig, ModbusDevice};
use crate::reading::{Reading, wall_ms};
use crate::telemetry::DeviceCounters;
use decode::Block;
use frame::Fault;
pub use link::{Failure, Link};

/// An open bus that lasted this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What one poll of one device gave.
#[derive(Debug, Default)]
pub struct DevicePoll {
    pub readings: Vec<Reading>,
    /// Requests sent and good answers received.
    pub requests: u64,
    pub answers: u64,
    /// The requests that failed: (index into the device's blocks, why).
    pub faults: Vec<(usize, Fault)>,
    /// Metrics whose value was not a finite number (left out).
    pub not_finite: Vec<String>,
}

impl DevicePoll {
    /// The device did not answer at all this round.
    pub fn timed_out(&self) -> bool {
        self.faults.iter().any(|(_, f)| *f == Fault::Timeout)
    }
}

/// Polls every request of `device` (its `blocks`, from [`decode::plan`])
/// once. A timeout ends the device's round: a device that does not answer
/// one request will not answer the next, and the others on the bus should
/// not wait for it. `Err` only when the bus itself is gone.
pub async fn poll_device(
    link: &mut Link,
    device: &ModbusDevice,
    blocks: &[Block],
    timeout: Duration,
) -> Result<DevicePoll, io::Error> {
    let mut poll = DevicePoll::default();
    for (i, block) in blocks.iter().enumerate() {
        poll.requests += 1;
        match link.transact(&block.request, timeout).await {
            Ok(data) => {
                poll.answers += 1;
                let bad = decode::decode_block(device, block, &data, wall_ms(), &mut poll.readings);
                poll.not_finite.extend(bad.into_iter().map(str::to_string));
            }
            Err(Failure::Fault(f)) => {
                let stop = f == Fault::Timeout;
                poll.faults.push((i, f));
                if stop {
                    break;
                }
            }
            Err(Failure::Broken(e)) => return Err(e),
        }
    }
    Ok(poll)
}

/// Opens the bus and polls each device once, in order: `outpost modbus read`.
pub async fn read_once(cfg: &ModbusConfig) -> io::Result<Vec<DevicePoll>> {
    let mut link = Link::open(cfg).await?;
    let mut out = Vec::with_capacity(cfg.devices.len());
    for device in &cfg.devices {
        let blocks = decode::plan(device);
        out.push(poll_device(&mut link, device, &blocks, cfg.timeout).await?);
    }
    Ok(out)
}

enum Closed {
    Cancelled,
    Broken(io::Error),
    Silent,
}

/// The task: `devices` are the counters of `cfg.devices`, in order.
pub async fn run(cfg: ModbusConfig, ctx: SourceContext, devices: Vec<Arc<DeviceCounters>>) {
    let plans: Vec<Vec<Block>> = cfg.devices.iter().map(decode::plan).collect();
    let place = cfg.link.to_string();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut opened_before = false;
    let mut warned_missing = false;
    loop {
        match Link::open(&cfg).await {
            Ok(mut link) => {
                if opened_before {
                    ctx.counters.reopens.fetch_add(1, Ordering::Relaxed);
                }
                opened_before = true;
                warned_missing = false;
                ctx.counters.connected.store(true, Ordering::Relaxed);
                info!(
                    source = %cfg.name,
                    bus = %place,
                    devices = cfg.devices.len(),
                    requests = plans.iter().map(Vec::len).sum::<usize>(),
                    "modbus bus open"
                );
                let started = Instant::now();
                let closed = poll_bus(&cfg, &ctx, &devices, &plans, &mut link).await;
                ctx.counters.connected.store(false, Ordering::Relaxed);
                for d in &devices {
                    d.up.store(false, Ordering::Relaxed);
                }
                drop(link);
                match closed {
                    Closed::Cancelled => return,
                    Closed::Broken(e) => {
                        warn!(source = %cfg.name, bus = %place, error = %e, "modbus bus lost; reopening")
                    }
                    Closed::Silent => {
                        warn!(source = %cfg.name, bus = %place, "no modbus device answered for reopen_after_silence; reopening")
                    }
                }
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
            }
            Err(e) => {
                if !warned_missing {
                    warn!(source = %cfg.name, bus = %place, error = %e, "cannot open modbus bus; retrying with backoff");
                    warned_missing = true;
                } else {
                    debug!(source = %cfg.name, error = %e, "modbus bus still unavailable");
                }
            }
        }
        if sleep_or_cancel(backoff.next_delay(jitter()), &ctx.cancel).await {
            return;
        }
    }
}

async fn poll_bus(
    cfg: &ModbusConfig,
    ctx: &SourceContext,
    devices: &[Arc<DeviceCounters>],
    plans: &[Vec<Block>],
    link: &mut Link,
) -> Closed {
    let mut every = tokio::time::interval(cfg.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_answer = Instant::now();
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Closed::Cancelled,
            _ = every.tick() => {}
        }
        let round = Instant::now();
        for ((device, blocks), counters) in cfg.devices.iter().zip(plans).zip(devices) {
            let poll = tokio::select! {
                _ = ctx.cancel.cancelled() => return Closed::Cancelled,
                p = poll_device(link, device, blocks, cfg.timeout) => p,
            };
            let mut poll = match poll {
                Ok(p) => p,
                Err(e) => return Closed::Broken(e),
            };
            account(cfg, ctx, counters, device, blocks, &poll);
            if poll.answers > 0 {
                last_answer = Instant::now();
            }
            if !ctx.send(&mut poll.readings).await {
                return Closed::Cancelled;
            }
        }
        if cfg
            .reopen_after_silence
            .is_some_and(|limit| last_answer.elapsed() >= limit)
        {
            return Closed::Silent;
        }
        let took = round.elapsed();
        if took > cfg.interval
            && let Some(suppressed) = ctx.counters.may_warn()
        {
            warn!(
                source = %cfg.name,
                took_ms = took.as_millis() as u64,
                interval_ms = cfg.interval.as_millis() as u64,
                suppressed,
                "a modbus poll round took longer than interval"
            );
        }
    }
}

/// Counts one device's poll (per device and per source) and logs its
/// faults, at most one warning per device per period.
fn account(
    cfg: &ModbusConfig,
    ctx: &SourceContext,
    counters: &DeviceCounters,
    device: &ModbusDevice,
    blocks: &[Block],
    poll: &DevicePoll,
) {
    let n = poll.readings.len() as u64;
    counters
        .requests
        .fetch_add(poll.requests, Ordering::Relaxed);
    counters.answers.fetch_add(poll.answers, Ordering::Relaxed);
    counters.readings.fetch_add(n, Ordering::Relaxed);
    ctx.counters
        .messages
        .fetch_add(poll.answers, Ordering::Relaxed);
    ctx.counters.readings.fetch_add(n, Ordering::Relaxed);
    counters.up.store(poll.faults.is_empty(), Ordering::Relaxed);
    if poll.answers > 0 {
        counters.last_answer_ms.store(wall_ms(), Ordering::Relaxed);
    }
    for (i, fault) in &poll.faults {
        counters.error(fault.kind());
        ctx.counters.error(fault.kind());
        if let Some(suppressed) = counters.may_warn() {
            let (registers, metrics) = blocks.get(*i).map_or_else(Default::default, |b| {
                let metrics: Vec<&str> = b
                    .maps
                    .iter()
                    .filter_map(|&m| device.registers.get(m))
                    .flat_map(|m| m.metrics())
                    .collect();
                (b.registers(), metrics.join(","))
            });
            warn!(
                source = %cfg.name,
                unit = device.unit,
                sensor = %device.sensor,
                registers = %registers,
                metrics = %metrics,
                error = fault.kind(),
                suppressed,
                "modbus request failed: {fault}"
            );
        }
    }
    for metric in &poll.not_finite {
        counters.error("non_finite");
        ctx.counters.error("non_finite");
        if let Some(suppressed) = counters.may_warn() {
            warn!(
                source = %cfg.name,
                unit = device.unit,
                sensor = %device.sensor,
                metric = %metric,
                suppressed,
                "modbus value is not a finite number; left out"
            );
        }
    }
}
