//! `[[simulate]]`: a synthetic sensor for demos and tests. A sine wave around
//! `base` with `amplitude` over `period`, plus noise, so a threshold in the
//! demo rules is crossed now and then (and crossed back).

use std::f64::consts::TAU;
use std::time::Instant;

use crate::config::SimulateConfig;
use crate::reading::{Reading, wall_ms};

use super::SourceContext;

/// The simulated value `t` seconds after start, with `noise` in [-1, 1].
pub fn value_at(cfg: &SimulateConfig, t: f64, noise: f64) -> f64 {
    let period = cfg.period.as_secs_f64().max(0.001);
    cfg.base + cfg.amplitude * (TAU * t / period).sin() + cfg.noise * noise
}

pub async fn run(cfg: SimulateConfig, ctx: SourceContext) {
    ctx.counters
        .connected
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let mut every = tokio::time::interval(cfg.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(1);
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let noise = rand::random::<f64>() * 2.0 - 1.0;
        let value = value_at(&cfg, start.elapsed().as_secs_f64(), noise);
        ctx.counters
            .messages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.counters
            .readings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        batch.push(Reading {
            sensor: cfg.sensor.clone(),
            metric: cfg.metric.clone(),
            value,
            ts_ms: wall_ms(),
        });
        if !ctx.send(&mut batch).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_wave_reaches_base_plus_and_minus_amplitude() {
        let cfg = SimulateConfig {
            name: "s".into(),
            sensor: "demo".into(),
            metric: "t".into(),
            interval: Duration::from_secs(1),
            base: 25.0,
            amplitude: 8.0,
            period: Duration::from_secs(120),
            noise: 0.5,
        };
        assert!((value_at(&cfg, 30.0, 0.0) - 33.0).abs() < 1e-9);
        assert!((value_at(&cfg, 90.0, 0.0) - 17.0).abs() < 1e-9);
        assert!((value_at(&cfg, 0.0, 1.0) - 25.5).abs() < 1e-9);
    }
}
