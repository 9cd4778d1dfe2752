//! Wiring and supervision: builds every component from the [`Config`],
//! connects them with channels, spawns their tasks (the only module that
//! does), and runs the shutdown sequence. The tasks' logic lives with their
//! components: `source`, `evaluator`, `outbox::Writer`, `upstream`, `http`.
//!
//! ```text
//! sources ──readings (bounded)──> evaluator ──alert batches──> outbox writer ──durable seq──> upstream
//!                                   │ (pure Engine + clock)      (log append, group fsync)     (publish, PUBACK → ack)
//!                                   └─ local actions ──> mqtt sources
//! ```
//!
//! Shutdown (SIGTERM, SIGINT): sources stop; the evaluator finishes what is
//! queued and hands its final state to the writer; the writer stores and
//! flushes; then the upstream finishes in-flight publishes for up to a few
//! seconds, publishes `offline` and disconnects; the outbox is closed cleanly.
//! Reload (SIGHUP, `signals.rs`): the rules keeper (`remote`) reads the
//! rules files again; a set that does not validate is refused whole and the
//! old rules keep running. Pushed rules (`[remote]`) come from the upstream
//! task to the same keeper, which alone swaps the evaluator's rules. The
//! systemd watchdog is `watchdog.rs`.

mod signals;
mod watchdog;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::alert::DEFAULT_MAX_PAYLOAD;
use crate::config::Config;
use crate::evaluator::{Control, Evaluator, Links};
use crate::http::HttpState;
use crate::outbox::{Batch, Bounds, OpenEvent, Outbox, Writer};
use crate::reading::{Clock, Reading};
use crate::remote::Keeper;
use crate::rules::LocalPublish;
use crate::source::{self, SourceContext};
use crate::telemetry::Telemetry;
use crate::upstream::{RemoteLink, Upstream};

/// Batches (one per line or message) buffered between the sources and the
/// engine: a flood waits in the sources (and the brokers or serial buffers
/// behind them), not in memory.
const READINGS_QUEUE: usize = 1024;
/// Batches between the engine and the outbox writer. Each holds at most
/// `evaluator::DRAFTS_PER_BATCH` alerts, so what waits for the disk is
/// bounded in alerts: a few thousand, whatever the storm.
const BATCH_QUEUE: usize = 4;

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let signals = signals::install();
    for w in &config.warnings {
        warn!("{w}");
    }
    let telemetry = Arc::new(Telemetry::new());
    let clock = Clock::new();
    let outbox = open_outbox(&config, &telemetry, clock).await?;
    // The local rules, and the pushed ones kept in state_dir.
    let (keeper, rules) = {
        let (c, t) = (config.clone(), telemetry.clone());
        tokio::task::spawn_blocking(move || Keeper::start(c, t))
            .await
            .context("rules keeper start")?
    };
    info!(
        gateway = %config.gateway.id,
        outbox = %outbox.path().display(),
        db_id = outbox.db_id(),
        waiting = outbox.depth(),
        next_seq = outbox.next_seq(),
        rules = rules.len(),
        "outpost starting"
    );

    let evaluator = Evaluator::restore(rules, config.limits, &outbox, clock);

    let (readings_tx, readings_rx) = mpsc::channel::<Vec<Reading>>(READINGS_QUEUE);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(BATCH_QUEUE);
    let (durable_tx, durable_rx) = watch::channel(outbox.next_seq().saturating_sub(1));
    let (control_tx, control_rx) = mpsc::channel::<Control>(4);
    let (reload_tx, reload_rx) = mpsc::channel::<()>(4);
    // Room for the retained push of every rules topic at once (they all
    // arrive on subscribing), and a few live ones: at most that many times
    // 256 KiB wait for the keeper.
    let pushes_queue = config.remote.groups.len() + 1 + 4;
    let (pushes_tx, pushes_rx) = mpsc::channel::<crate::push::Incoming>(pushes_queue);
    let (results_tx, results_rx) = mpsc::channel::<Vec<u8>>(16);

    let sources_cancel = CancellationToken::new();
    let upstream_cancel = CancellationToken::new();
    let http_cancel = CancellationToken::new();
    let mut sources = JoinSet::new();
    let mut action_routes: HashMap<String, mpsc::Sender<LocalPublish>> = HashMap::new();

    // What every source task is given: the readings channel, its counters
    // (by name and kind), and the stop signal.
    let ctx = |name: &str, kind: &'static str| SourceContext {
        readings: readings_tx.clone(),
        counters: telemetry.source(name, kind),
        cancel: sources_cancel.clone(),
    };
    for cfg in config.serial.clone() {
        let c = ctx(&cfg.name, "serial");
        sources.spawn(source::serial::run(cfg, c));
    }
    for cfg in config.mqtt.clone() {
        let c = ctx(&cfg.name, "mqtt");
        let (tx, rx) = mpsc::channel(64);
        action_routes.insert(cfg.name.clone(), tx);
        sources.spawn(source::mqtt::run(cfg, c, rx));
    }
    for cfg in config.modbus.clone() {
        let c = ctx(&cfg.name, "modbus");
        let devices = cfg
            .devices
            .iter()
            .map(|d| telemetry.modbus_device(&cfg.name, d.unit, &d.sensor))
            .collect();
        sources.spawn(source::modbus::run(cfg, c, devices));
    }
    for cfg in config.simulate.clone() {
        let c = ctx(&cfg.name, "simulate");
        sources.spawn(source::simulate::run(cfg, c));
    }
    drop(readings_tx);

    let engine_task = tokio::spawn(evaluator.run(Links {
        readings: readings_rx,
        control: control_rx,
        batches: batch_tx,
        actions: action_routes,
        telemetry: telemetry.clone(),
    }));
    let writer = Writer {
        gateway: config.gateway.id.clone(),
        flush: config.outbox.flush,
        outbox: outbox.clone(),
        telemetry: telemetry.clone(),
        clock,
    };
    let writer_task = tokio::spawn(writer.run(batch_rx, durable_tx));
    let upstream_task = match &config.upstream {
        Some(u) => {
            let up = Upstream {
                gateway: config.gateway.id.clone(),
                cfg: u.clone(),
                outbox: outbox.clone(),
                durable: durable_rx,
                telemetry: telemetry.clone(),
                remote: config
                    .remote
                    .rules
                    .then(|| RemoteLink::new(rules_topics(&config, u), pushes_tx, results_rx)),
            };
            Some(tokio::spawn(up.run(upstream_cancel.clone())))
        }
        None => {
            warn!("no [upstream] configured: alerts stay in the outbox and the log");
            None
        }
    };

    let http_task = match config.http.listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let state = http_state(&config, &outbox, &telemetry, clock);
                let serve = crate::http::serve(listener, state, http_cancel.clone());
                Some(tokio::spawn(serve))
            }
            Err(e) => {
                // The alerts matter more than their dashboard: run without it.
                error!(%addr, error = %e, "cannot listen for HTTP; /metrics, /healthz and /status are off (is another outpost running?)");
                None
            }
        },
        None => None,
    };

    let keeper_cancel = CancellationToken::new();
    let keeper_task = tokio::spawn(keeper.run(
        crate::remote::Links {
            pushes: pushes_rx,
            reloads: reload_rx,
            control: control_tx.clone(),
            results: results_tx,
        },
        keeper_cancel.clone(),
    ));

    let watchdog = tokio::spawn(watchdog::run(clock, telemetry.clone()));
    // Ready only now: the outbox is open and every task is running.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    signals::wait(signals, &reload_tx).await;

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    watchdog.abort();
    // A push or reload under way finishes (its disk write is atomic anyway).
    keeper_cancel.cancel();
    let _ = keeper_task.await;
    info!("shutting down: stopping sources");
    sources_cancel.cancel();
    while sources.join_next().await.is_some() {}
    drop(control_tx);
    if let Err(e) = engine_task.await {
        error!(error = %e, "engine task failed");
    }
    if let Err(e) = writer_task.await {
        error!(error = %e, "outbox writer task failed");
    }
    upstream_cancel.cancel();
    if let Some(t) = upstream_task {
        let _ = t.await;
    }
    http_cancel.cancel();
    if let Some(t) = http_task {
        // Graceful: open scrapes finish; bounded so a stuck client cannot hold shutdown.
        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
    }
    let ob = outbox.clone();
    tokio::task::spawn_blocking(move || ob.flush_blocking())
        .await
        .context("final flush task")?
        .context("final outbox flush")?;
    info!(waiting = outbox.depth(), "outpost stopped");
    Ok(())
}

/// Opens (or creates) the outbox under `state_dir`, with the configured
/// bounds. What opening had to repair (damage, a replaced checkpoint store,
/// an import) is logged, and counted as an outbox error when it is damage.
async fn open_outbox(
    config: &Config,
    telemetry: &Telemetry,
    clock: Clock,
) -> anyhow::Result<Arc<Outbox>> {
    let state_dir = config.gateway.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    let opts = crate::outbox::Options {
        flush_always: config.outbox.flush == crate::config::FlushPolicy::Always,
        max_bytes: config.outbox.max_bytes,
    };
    let now = clock.now();
    let (outbox, events) =
        tokio::task::spawn_blocking(move || Outbox::open_with(&state_dir, opts, now))
            .await
            .context("outbox open task")??;
    for e in &events {
        match e {
            OpenEvent::Imported { .. } | OpenEvent::NewPrefix { .. } => info!("{e}"),
            _ => {
                error!("{e}");
                Telemetry::bump(&telemetry.outbox_errors);
            }
        }
    }
    outbox.set_bounds(Bounds {
        max_bytes: config.outbox.max_bytes,
        max_age: Some(config.outbox.max_age).filter(|a| !a.is_zero()),
        // Stored is published: alerts are cut to the upstream's limit at push.
        max_payload: config
            .upstream
            .as_ref()
            .map_or(DEFAULT_MAX_PAYLOAD, |u| u.max_payload),
    });
    Ok(Arc::new(outbox))
}

/// The rules topics the upstream link subscribes to: the gateway's own,
/// then each group's.
fn rules_topics(config: &Config, upstream: &crate::config::UpstreamConfig) -> Vec<String> {
    let mut topics = vec![crate::push::set_topic(&upstream.topic_prefix)];
    topics.extend(
        config
            .remote
            .groups
            .iter()
            .map(|g| crate::push::group_topic(g)),
    );
    topics
}

/// What the HTTP handlers read.
fn http_state(
    config: &Config,
    outbox: &Arc<Outbox>,
    telemetry: &Arc<Telemetry>,
    clock: Clock,
) -> Arc<HttpState> {
    Arc::new(HttpState {
        gateway: config.gateway.id.clone(),
        upstream: config
            .upstream
            .as_ref()
            .map(|u| (u.broker.url.to_string(), u.topic_prefix.clone())),
        outbox: outbox.clone(),
        telemetry: telemetry.clone(),
        clock,
        stall_after: crate::http::STALL_AFTER,
        connections: Default::default(),
    })
}
