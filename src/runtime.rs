//! Wiring: builds every component from the [`Config`], spawns the tasks (the
//! only module that does), and runs the shutdown and reload sequences.
//!
//! ```text
//! sources ──readings (bounded)──> engine task ──alert batches──> outbox writer ──durable seq──> upstream
//!                                   │ (pure Engine + clock)        (sled push, group flush)      (publish, PUBACK → ack)
//!                                   └─ local actions ──> mqtt sources
//! ```
//!
//! Shutdown (SIGTERM, SIGINT): sources stop; the engine finishes what is
//! queued and hands its final state to the writer; the writer stores and
//! flushes; then the upstream finishes in-flight publishes for up to a few
//! seconds, publishes `offline` and disconnects; sled is flushed once more.
//! Reload (SIGHUP): the rules files are read again; a set that does not
//! validate is refused whole and the old rules keep running.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, FlushPolicy};
use crate::outbox::{Bounds, OpenEvent, Outbox};
use crate::reading::{Clock, Reading};
use crate::rules::engine::{Engine, EngineSnapshot};
use crate::rules::{AlertDraft, LocalPublish, Rule};
use crate::source::{self, SourceContext};
use crate::telemetry::Telemetry;
use crate::upstream::Upstream;

/// Batches (one per line or message) buffered between the sources and the engine.
const READINGS_QUEUE: usize = 4096;
/// How often the engine's timers (`for`, `repeat`, `silent_for`) are checked.
const TICK: Duration = Duration::from_millis(500);
/// How often the engine state is saved when readings changed it but no alert did.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(10);

/// What the engine hands the outbox writer.
struct Batch {
    drafts: Vec<AlertDraft>,
    rules_state: Option<Vec<u8>>,
}

enum Control {
    Reload(Vec<Rule>),
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    for w in &config.warnings {
        warn!("{w}");
    }
    let telemetry = Arc::new(Telemetry::new());
    telemetry
        .rules_loaded
        .store(config.rules.len() as u64, Ordering::Relaxed);
    let state_dir = config.gateway.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    let (outbox, event) = tokio::task::spawn_blocking(move || Outbox::open(&state_dir))
        .await
        .context("outbox open task")??;
    if let Some(OpenEvent::Replaced { moved_to, reason }) = &event {
        error!(moved_to = %moved_to.display(), %reason, "the outbox database was corrupt; moved it aside and started a fresh one");
        Telemetry::bump(&telemetry.outbox_errors);
    }
    outbox.set_bounds(Bounds {
        max_bytes: config.outbox.max_bytes,
        max_age: Some(config.outbox.max_age).filter(|a| !a.is_zero()),
    });
    let outbox = Arc::new(outbox);
    info!(
        gateway = %config.gateway.id,
        outbox = %outbox.path().display(),
        db_id = outbox.db_id(),
        waiting = outbox.depth(),
        next_seq = outbox.next_seq(),
        rules = config.rules.len(),
        "outpost starting"
    );

    let clock = Clock::new();
    let mut restored = Vec::new();
    let engine = restore_engine(&outbox, config.rules.clone(), &clock, &mut restored);

    let (readings_tx, readings_rx) = mpsc::channel::<Vec<Reading>>(READINGS_QUEUE);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(256);
    let (durable_tx, durable_rx) = watch::channel(outbox.next_seq().saturating_sub(1));
    let (control_tx, control_rx) = mpsc::channel::<Control>(4);

    let sources_cancel = CancellationToken::new();
    let upstream_cancel = CancellationToken::new();
    let http_cancel = CancellationToken::new();
    let mut sources = JoinSet::new();
    let mut action_routes: HashMap<String, mpsc::Sender<LocalPublish>> = HashMap::new();

    for cfg in config.serial.clone() {
        let ctx = source_context(
            &readings_tx,
            &telemetry,
            &sources_cancel,
            &cfg.name,
            "serial",
        );
        sources.spawn(source::serial::run(cfg, ctx));
    }
    for cfg in config.mqtt.clone() {
        let ctx = source_context(&readings_tx, &telemetry, &sources_cancel, &cfg.name, "mqtt");
        let (tx, rx) = mpsc::channel(64);
        action_routes.insert(cfg.name.clone(), tx);
        sources.spawn(source::mqtt::run(cfg, ctx, rx));
    }
    for cfg in config.simulate.clone() {
        let ctx = source_context(
            &readings_tx,
            &telemetry,
            &sources_cancel,
            &cfg.name,
            "simulate",
        );
        sources.spawn(source::simulate::run(cfg, ctx));
    }
    drop(readings_tx);

    let engine_task = tokio::spawn(engine_loop(
        engine,
        clock,
        readings_rx,
        control_rx,
        batch_tx,
        restored,
        action_routes,
        telemetry.clone(),
    ));
    let writer_task = tokio::spawn(writer_loop(
        config.gateway.id.clone(),
        config.outbox.flush,
        outbox.clone(),
        batch_rx,
        durable_tx,
        telemetry.clone(),
    ));
    let upstream_task = match &config.upstream {
        Some(u) => {
            let up = Upstream {
                gateway: config.gateway.id.clone(),
                cfg: u.clone(),
                outbox: outbox.clone(),
                durable: durable_rx,
                telemetry: telemetry.clone(),
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
                let state = Arc::new(crate::http::HttpState {
                    gateway: config.gateway.id.clone(),
                    upstream: config
                        .upstream
                        .as_ref()
                        .map(|u| (u.broker.url.to_string(), u.topic_prefix.clone())),
                    outbox: outbox.clone(),
                    telemetry: telemetry.clone(),
                    clock,
                    stall_after: crate::http::STALL_AFTER,
                });
                Some(tokio::spawn(crate::http::serve(
                    listener,
                    state,
                    http_cancel.clone(),
                )))
            }
            Err(e) => {
                // The alerts matter more than their dashboard: run without it.
                error!(%addr, error = %e, "cannot listen for HTTP; /metrics, /healthz and /status are off (is another outpost running?)");
                None
            }
        },
        None => None,
    };

    let watchdog = tokio::spawn(watchdog_loop(clock, telemetry.clone()));
    // Ready only now: the outbox is open and every task is running.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    wait_for_signals(&config, &control_tx, &telemetry).await;

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    watchdog.abort();
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

/// Pings the systemd watchdog while the pipeline makes progress: the engine
/// stamps `last_progress_ms` on every reading and every tick, so a stuck
/// engine stops the pings and systemd restarts the service.
async fn watchdog_loop(clock: Clock, telemetry: Arc<Telemetry>) {
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|u| *u > 0)
    else {
        return;
    };
    // Half the watchdog period; never zero (tokio's interval panics on zero).
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(1));
    let stale_after = Duration::from_micros(usec);
    let mut every = tokio::time::interval(period);
    loop {
        every.tick().await;
        // The same signal as `/healthz`: time since the engine last moved.
        if telemetry.progress_age(clock.now().mono_ms) < stale_after {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            warn!("pipeline made no progress; withholding the watchdog ping");
        }
    }
}

fn source_context(
    readings: &mpsc::Sender<Vec<Reading>>,
    telemetry: &Telemetry,
    cancel: &CancellationToken,
    name: &str,
    kind: &'static str,
) -> SourceContext {
    SourceContext {
        readings: readings.clone(),
        counters: telemetry.source(name, kind),
        cancel: cancel.clone(),
    }
}

fn restore_engine(
    outbox: &Outbox,
    rules: Vec<Rule>,
    clock: &Clock,
    out: &mut Vec<AlertDraft>,
) -> Engine {
    let saved = match outbox.rules_state() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read the saved rule state; starting fresh");
            None
        }
    };
    match saved.map(|b| serde_json::from_slice::<EngineSnapshot>(&b)) {
        Some(Ok(snap)) => {
            let engine = Engine::restore(rules, snap, clock.now(), out);
            info!(firing = engine.firing().len(), "rule state restored");
            engine
        }
        Some(Err(e)) => {
            warn!(error = %e, "the saved rule state is unreadable; starting fresh");
            Engine::new(rules)
        }
        None => Engine::new(rules),
    }
}

async fn wait_for_signals(config: &Config, control: &mpsc::Sender<Control>, telemetry: &Telemetry) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); return; }
            _ = int.recv() => { info!("SIGINT"); return; }
            _ = hup.recv() => {
                info!("SIGHUP: reloading rules");
                let current = config.clone();
                match tokio::task::spawn_blocking(move || current.reload_rules()).await {
                    Ok(Ok(rules)) => {
                        let n = rules.len();
                        if control.send(Control::Reload(rules)).await.is_ok() {
                            Telemetry::bump(&telemetry.rule_reloads);
                            telemetry.rules_loaded.store(n as u64, Ordering::Relaxed);
                            info!(rules = n, "rules reloaded");
                        }
                    }
                    Ok(Err(diags)) => {
                        Telemetry::bump(&telemetry.rule_reload_errors);
                        for d in diags.iter() {
                            error!(error = %d, "rules reload refused; the old rules keep running");
                        }
                    }
                    Err(e) => error!(error = %e, "rules reload task failed"),
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn engine_loop(
    mut engine: Engine,
    clock: Clock,
    mut readings: mpsc::Receiver<Vec<Reading>>,
    mut control: mpsc::Receiver<Control>,
    batches: mpsc::Sender<Batch>,
    mut out: Vec<AlertDraft>,
    actions: HashMap<String, mpsc::Sender<LocalPublish>>,
    telemetry: Arc<Telemetry>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    let mut last_snapshot = tokio::time::Instant::now();
    let mut control_open = true;
    // The firing snapshot for /status and /metrics: refreshed when alerts
    // change it, and on a tick after readings (for the latest values).
    telemetry.set_firing(engine.firing());
    let mut firing_stale = false;
    loop {
        let mut done = false;
        tokio::select! {
            r = readings.recv() => match r {
                Some(batch) => {
                    let now = clock.now();
                    let mut n = batch.len();
                    for r in &batch {
                        engine.on_reading(r, now, &mut out);
                    }
                    // Take what else is queued in the same go: one batch, one flush.
                    while n < 1024 {
                        match readings.try_recv() {
                            Ok(batch) => {
                                n += batch.len();
                                for r in &batch {
                                    engine.on_reading(r, now, &mut out);
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    dirty = true;
                    firing_stale = true;
                    telemetry.last_progress_ms.store(now.mono_ms, Ordering::Relaxed);
                }
                None => done = true,
            },
            _ = tick.tick() => {
                let now = clock.now();
                engine.tick(now, &mut out);
                telemetry.last_progress_ms.store(now.mono_ms, Ordering::Relaxed);
                if std::mem::take(&mut firing_stale) {
                    telemetry.set_firing(engine.firing());
                }
            }
            c = control.recv(), if control_open => match c {
                Some(Control::Reload(rules)) => {
                    engine.reload(rules, clock.now(), &mut out);
                    telemetry.set_firing(engine.firing());
                }
                None => control_open = false,
            },
        }
        let snapshot_due = dirty && last_snapshot.elapsed() >= SNAPSHOT_EVERY;
        if !out.is_empty() || snapshot_due || done {
            if !out.is_empty() {
                telemetry.set_firing(engine.firing());
            }
            for d in &out {
                for a in &d.actions {
                    match actions.get(&a.broker) {
                        Some(tx) => {
                            if tx.try_send(a.clone()).is_err() {
                                warn!(broker = %a.broker, topic = %a.topic, "local action dropped: broker queue full or gone");
                            }
                        }
                        None => warn!(broker = %a.broker, "local action for an unknown broker"),
                    }
                }
            }
            let state = match serde_json::to_vec(&engine.snapshot(clock.now())) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(error = %e, "cannot serialize the rule state");
                    None
                }
            };
            Telemetry::bump_by(&telemetry.alerts_created, out.len() as u64);
            let batch = Batch {
                drafts: std::mem::take(&mut out),
                rules_state: state,
            };
            if batches.send(batch).await.is_err() {
                error!("outbox writer gone; engine stopping");
                return;
            }
            dirty = false;
            last_snapshot = tokio::time::Instant::now();
        }
        if done {
            debug!("engine: readings closed, final state handed to the writer");
            return;
        }
    }
}

/// Stores batches, flushing per policy (alerts received together share one
/// flush), and announces the highest seq that may be published.
async fn writer_loop(
    gateway: String,
    flush: FlushPolicy,
    outbox: Arc<Outbox>,
    mut batches: mpsc::Receiver<Batch>,
    durable: watch::Sender<u64>,
    telemetry: Arc<Telemetry>,
) {
    /// Drafts held in memory while the disk refuses writes; beyond this the oldest go.
    const RETRY_LIMIT: usize = 10_000;
    let period = match flush {
        FlushPolicy::Always => Duration::from_secs(1),
        FlushPolicy::Every(p) => p,
    };
    let mut timer = tokio::time::interval(period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Vec<AlertDraft> = Vec::new();
    let mut state: Option<Vec<u8>> = None;
    let mut unflushed = false;
    let mut open = true;
    while open || !pending.is_empty() || state.is_some() {
        tokio::select! {
            b = batches.recv(), if open => match b {
                Some(b) => {
                    pending.extend(b.drafts);
                    if b.rules_state.is_some() { state = b.rules_state; }
                    while let Ok(b) = batches.try_recv() {
                        pending.extend(b.drafts);
                        if b.rules_state.is_some() { state = b.rules_state; }
                        if pending.len() >= 4096 { break; }
                    }
                }
                None => open = false,
            },
            _ = timer.tick() => {
                // max_age: the drops are one batch, made durable by the next flush.
                match outbox.expire(crate::reading::wall_ms()) {
                    Ok(0) => {}
                    Ok(_) => unflushed = true,
                    Err(e) => {
                        Telemetry::bump(&telemetry.outbox_errors);
                        warn!(error = %e, "cannot drop expired alerts");
                    }
                }
                if unflushed {
                    match outbox.flush().await {
                        Ok(_) => {
                            unflushed = false;
                            Telemetry::bump(&telemetry.outbox_flushes);
                        }
                        Err(e) => warn!(error = %e, "periodic outbox flush failed"),
                    }
                }
                if pending.is_empty() && state.is_none() { continue; }
            }
        }
        if pending.is_empty() && state.is_none() {
            continue;
        }
        match outbox.push(&gateway, &pending, state.as_deref()) {
            Ok(alerts) => {
                pending.clear();
                state = None;
                for a in &alerts {
                    telemetry.alert_created(&a.rule, a.state);
                    info!(id = %a.id, rule = %a.rule, sensor = %a.sensor, metric = %a.metric, state = %a.state, severity = %a.severity, value = a.value, threshold = a.threshold, text = %a.message, "alert");
                }
                let publishable = outbox.next_seq().saturating_sub(1);
                match flush {
                    FlushPolicy::Always => match outbox.flush().await {
                        Ok(_) => {
                            Telemetry::bump(&telemetry.outbox_flushes);
                            let _ = durable.send(publishable);
                        }
                        Err(e) => {
                            // Not durable yet: hold publishing back until a flush succeeds.
                            Telemetry::bump(&telemetry.outbox_errors);
                            unflushed = true;
                            error!(error = %e, "outbox flush failed; retrying");
                        }
                    },
                    FlushPolicy::Every(_) => {
                        unflushed = true;
                        let _ = durable.send(publishable);
                    }
                }
            }
            Err(e) => {
                Telemetry::bump(&telemetry.outbox_errors);
                if pending.len() > RETRY_LIMIT {
                    let lost = pending.len() - RETRY_LIMIT;
                    pending.drain(..lost);
                    error!(
                        lost,
                        "outbox write keeps failing; oldest alerts not yet stored were dropped"
                    );
                }
                error!(error = %e, waiting = pending.len(), "cannot write alerts to the outbox (disk full?); holding them and retrying");
                if !open {
                    // Stopping and the disk still refuses: nothing more to do.
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if matches!(flush, FlushPolicy::Always) && unflushed && outbox.flush().await.is_ok() {
            Telemetry::bump(&telemetry.outbox_flushes);
            unflushed = false;
            let _ = durable.send(outbox.next_seq().saturating_sub(1));
        }
    }
    if let Err(e) = outbox.flush().await {
        error!(error = %e, "final outbox flush failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{AlertState, Reason, Severity};

    fn draft(i: u64) -> AlertDraft {
        AlertDraft {
            rule: "hot".into(),
            sensor: format!("s{i}"),
            metric: "t".into(),
            state: AlertState::Firing,
            severity: Severity::Warning,
            value: i as f64,
            threshold: 1.0,
            ts_ms: 1_700_000_000_000,
            since_ms: 1_700_000_000_000,
            message: format!("alert {i}"),
            labels: Default::default(),
            actions: Vec::new(),
            reason: Reason::Transition,
        }
    }

    struct Writer {
        _dir: tempfile::TempDir,
        outbox: Arc<Outbox>,
        tx: mpsc::Sender<Batch>,
        durable: watch::Receiver<u64>,
        telemetry: Arc<Telemetry>,
        task: tokio::task::JoinHandle<()>,
    }

    fn writer(flush: FlushPolicy) -> Writer {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(dir.path()).unwrap().0);
        let (tx, rx) = mpsc::channel(1024);
        let (dtx, durable) = watch::channel(0);
        let telemetry = Arc::new(Telemetry::new());
        let task = tokio::spawn(writer_loop(
            "gw".into(),
            flush,
            outbox.clone(),
            rx,
            dtx,
            telemetry.clone(),
        ));
        Writer {
            _dir: dir,
            outbox,
            tx,
            durable,
            telemetry,
            task,
        }
    }

    fn batch(i: u64) -> Batch {
        Batch {
            drafts: vec![draft(i)],
            rules_state: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn alerts_arriving_together_share_one_flush_and_each_is_announced_only_after_it() {
        let w = writer(FlushPolicy::Always);
        // A burst from several producers while the writer works.
        let mut producers = Vec::new();
        for p in 0..4u64 {
            let tx = w.tx.clone();
            producers.push(tokio::spawn(async move {
                for i in 0..100 {
                    tx.send(batch(p * 1000 + i)).await.unwrap();
                }
            }));
        }
        let mut durable = w.durable.clone();
        let watcher_outbox = w.outbox.clone();
        let watcher_telemetry = w.telemetry.clone();
        let watcher = tokio::spawn(async move {
            // Every announcement comes after a flush that covers it.
            let mut flushes_seen = 0;
            while durable.changed().await.is_ok() {
                let d = *durable.borrow_and_update();
                let f = watcher_telemetry.outbox_flushes.load(Ordering::Relaxed);
                assert!(
                    f > flushes_seen || d == 0,
                    "seq {d} announced without a new flush"
                );
                flushes_seen = f;
                assert!(d < watcher_outbox.next_seq());
                if d == 400 {
                    return;
                }
            }
        });
        for p in producers {
            p.await.unwrap();
        }
        watcher.await.unwrap();
        drop(w.tx);
        w.task.await.unwrap();
        let flushes = w.telemetry.outbox_flushes.load(Ordering::Relaxed);
        assert_eq!(w.outbox.depth(), 400);
        assert!(
            flushes < 400 / 4,
            "group commit: 400 alerts in bursts took {flushes} flushes"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_a_flush_period_alerts_are_announced_at_once_and_flushed_on_the_period() {
        let w = writer(FlushPolicy::Every(Duration::from_millis(300)));
        let mut durable = w.durable.clone();
        // The first tick of the period timer is immediate; let it pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = w.telemetry.outbox_flushes.load(Ordering::Relaxed);
        w.tx.send(batch(1)).await.unwrap();
        tokio::time::timeout(Duration::from_millis(250), async {
            while *durable.borrow_and_update() < 1 {
                durable.changed().await.unwrap();
            }
        })
        .await
        .expect("announced before the period ends");
        assert_eq!(
            w.telemetry.outbox_flushes.load(Ordering::Relaxed),
            before,
            "no flush per alert under a period"
        );
        tokio::time::timeout(Duration::from_secs(2), async {
            while w.telemetry.outbox_flushes.load(Ordering::Relaxed) == before {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("flushed on the period");
        drop(w.tx);
        w.task.await.unwrap();
    }
}
