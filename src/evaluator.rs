//! The evaluator: the task that runs the rule engine.
//!
//! It owns the pure [`Engine`] and the clock it is given time by. It feeds
//! the engine every batch of readings the sources send (taking whatever is
//! queued in one go, so alerts created together travel as one [`Batch`])
//! and a tick every [`TICK`] for the timers (`for`, `repeat`, `silent_for`);
//! hands the drafts it emits, with the engine's state, to the outbox writer;
//! routes the rules' local actions to the `[[mqtt]]` sources; stamps the
//! pipeline's heartbeat (`last_progress_ms`); and swaps the rules on a
//! [`Control::Reload`].
//!
//! The engine's state goes to the outbox as keys that changed (see
//! `rules::engine::state`): the pairs that emitted alerts ride with those
//! alerts in every batch; the pairs touched otherwise go in a checkpoint
//! every [`CHECKPOINT_EVERY`] (and right after a reload); at the end, every
//! pair with its window samples. At start the state is restored from the
//! outbox ([`Evaluator::restore`]); the resolutions a restore emits go out
//! with the first batch.
//!
//! The engine's counters (pairs and samples against `[rules]` limits) go to
//! telemetry after every batch and tick; pairs evicted or refused and
//! samples thinned are logged as a warning at most every [`BOUNDS_LOG_EVERY`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::outbox::{Batch, Outbox};
use crate::reading::{Clock, Reading};
use crate::rules::{
    AlertDraft, Changes, Engine, EngineSnapshot, EngineStats, Limits, LocalPublish, Rule,
};
use crate::telemetry::{Telemetry, WarnLimiter};

/// How often the engine's timers (`for`, `repeat`, `silent_for`) are checked.
pub const TICK: Duration = Duration::from_millis(500);
/// How often the pairs that changed without an alert are checkpointed.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(300);
/// At most one warning per this about the engine's limits being hit.
pub const BOUNDS_LOG_EVERY: Duration = Duration::from_secs(60);
/// Readings taken from the queue in one go at most.
const READINGS_PER_GO: usize = 1024;
/// Drafts handed over in one batch at most: what waits between the
/// evaluator and the writer is bounded in alerts, not only in batches.
pub const DRAFTS_PER_BATCH: usize = 1024;

/// What the runtime tells the evaluator.
pub enum Control {
    /// New rules (a SIGHUP reload, already validated).
    Reload(Vec<Rule>),
}

/// What the evaluator task is connected to.
pub struct Links {
    /// Batches of readings from the sources; closed when they all stopped.
    pub readings: mpsc::Receiver<Vec<Reading>>,
    pub control: mpsc::Receiver<Control>,
    /// To the outbox writer.
    pub batches: mpsc::Sender<Batch>,
    /// Local actions, by `[[mqtt]]` source name.
    pub actions: HashMap<String, mpsc::Sender<LocalPublish>>,
    pub telemetry: Arc<Telemetry>,
}

/// The engine with its clock; [`Evaluator::run`] is the task.
pub struct Evaluator {
    engine: Engine,
    clock: Clock,
    /// Drafts emitted before the task runs (by the restore).
    out: Vec<AlertDraft>,
}

impl Evaluator {
    /// An engine for `rules`, continuing from the state saved in the
    /// outbox: unchanged rules keep their pairs; firing pairs of rules that
    /// are gone or changed are resolved. An unreadable state starts fresh.
    pub fn restore(rules: Vec<Rule>, limits: Limits, outbox: &Outbox, clock: Clock) -> Evaluator {
        let mut out = Vec::new();
        let now = clock.now();
        let saved = outbox.take_engine_state().unwrap_or_default();
        let engine = if !saved.entries.is_empty() {
            let engine = Engine::restore_state(rules, limits, &saved.entries, now, &mut out);
            info!(firing = engine.firing().len(), "rule state restored");
            engine
        } else {
            match saved
                .legacy_snapshot
                .map(|b| serde_json::from_slice::<EngineSnapshot>(&b))
            {
                // An outbox of the earlier format: its one snapshot.
                Some(Ok(snap)) => {
                    let engine = Engine::restore(rules, limits, snap, now, &mut out);
                    info!(firing = engine.firing().len(), "rule state restored");
                    engine
                }
                Some(Err(e)) => {
                    warn!(error = %e, "the saved rule state is unreadable; starting fresh");
                    Engine::with_limits(rules, limits)
                }
                None => Engine::with_limits(rules, limits),
            }
        };
        Evaluator { engine, clock, out }
    }

    /// Runs until the readings channel closes (the sources stopped), then
    /// hands the final state to the writer and returns.
    pub async fn run(self, links: Links) {
        let Evaluator { engine, clock, out } = self;
        let mut task = Task {
            engine,
            clock,
            out,
            links,
            dirty: false,
            checkpoint_now: false,
            firing_stale: false,
            last_checkpoint: tokio::time::Instant::now(),
            logged: EngineStats::default(),
            bounds_log: WarnLimiter::new(BOUNDS_LOG_EVERY),
        };
        task.run().await;
    }
}

/// The running task's state.
struct Task {
    engine: Engine,
    clock: Clock,
    /// Drafts emitted and not yet handed over.
    out: Vec<AlertDraft>,
    links: Links,
    /// Readings changed the state since the last checkpoint.
    dirty: bool,
    /// A checkpoint goes with the next batch (after a reload).
    checkpoint_now: bool,
    /// The firing snapshot in telemetry lags the latest values.
    firing_stale: bool,
    last_checkpoint: tokio::time::Instant,
    /// The engine's counters when its limits were last logged.
    logged: EngineStats,
    bounds_log: WarnLimiter,
}

impl Task {
    async fn run(&mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut control_open = true;
        // The firing snapshot for /status and /metrics: refreshed when alerts
        // change it, and on a tick after readings (for the latest values).
        self.links.telemetry.set_firing(self.engine.firing());
        self.report_bounds();
        loop {
            let mut done = false;
            tokio::select! {
                r = self.links.readings.recv() => match r {
                    Some(batch) => self.on_readings(batch),
                    None => done = true,
                },
                _ = tick.tick() => self.on_tick(),
                c = self.links.control.recv(), if control_open => match c {
                    Some(Control::Reload(rules)) => {
                        self.engine.reload(rules, self.clock.now(), &mut self.out);
                        self.links.telemetry.set_firing(self.engine.firing());
                        self.report_bounds();
                        // The new definitions are stored at once: pairs of
                        // the new rules must never meet the old ones.
                        self.checkpoint_now = true;
                    }
                    None => control_open = false,
                },
            }
            let checkpoint_due = self.checkpoint_now
                || (self.dirty && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY);
            if (!self.out.is_empty() || checkpoint_due || done) && !self.hand_over(done).await {
                error!("outbox writer gone; engine stopping");
                return;
            }
            if done {
                debug!("engine: readings closed, final state handed to the writer");
                return;
            }
        }
    }

    /// One batch, and whatever else is queued (one batch out, one flush),
    /// up to [`READINGS_PER_GO`] readings or [`DRAFTS_PER_BATCH`] drafts.
    fn on_readings(&mut self, batch: Vec<Reading>) {
        let now = self.clock.now();
        let mut n = batch.len();
        for r in &batch {
            self.engine.on_reading(r, now, &mut self.out);
        }
        while n < READINGS_PER_GO && self.out.len() < DRAFTS_PER_BATCH {
            let Ok(batch) = self.links.readings.try_recv() else {
                break;
            };
            n += batch.len();
            for r in &batch {
                self.engine.on_reading(r, now, &mut self.out);
            }
        }
        self.dirty = true;
        self.firing_stale = true;
        let t = &self.links.telemetry;
        t.last_progress_ms.store(now.mono_ms, Ordering::Relaxed);
        self.report_bounds();
    }

    /// Publishes the engine's counters, and logs (rate-limited) what its
    /// limits did since the last time it did.
    fn report_bounds(&mut self) {
        let s = self.engine.stats();
        self.links.telemetry.set_engine(s);
        let l = self.logged;
        let evicted = s.pairs_evicted.saturating_sub(l.pairs_evicted);
        let refused = s.pairs_refused.saturating_sub(l.pairs_refused);
        let thinned = s.samples_thinned.saturating_sub(l.samples_thinned);
        if evicted + refused + thinned == 0
            || self
                .bounds_log
                .check(tokio::time::Instant::now().into_std())
                .is_none()
        {
            return;
        }
        self.logged = s;
        let limits = self.engine.limits();
        if evicted + refused > 0 {
            let latest = match self.engine.last_refused() {
                Some((rule, sensor, metric)) if refused > 0 => {
                    format!(" (the latest for rule `{rule}`, sensor `{sensor}`, metric `{metric}`)")
                }
                _ => String::new(),
            };
            warn!(
                pairs = s.pairs,
                max_pairs = s.max_pairs,
                on_max_pairs = limits.on_max_pairs.as_str(),
                evicted,
                refused,
                "rule state at max_pairs = {}: {evicted} idle pairs evicted, \
                 {refused} readings refused a new pair{latest}; see [rules] in outpost.toml",
                s.max_pairs
            );
        }
        if thinned > 0 {
            warn!(
                samples = s.samples,
                max_samples = s.max_samples,
                max_samples_per_pair = limits.max_samples_per_pair,
                thinned,
                "window samples at their limit (max_samples = {}, max_samples_per_pair = {}): \
                 {thinned} merged into coarser ones; see [rules] in outpost.toml",
                s.max_samples,
                limits.max_samples_per_pair
            );
        }
    }

    fn on_tick(&mut self) {
        let now = self.clock.now();
        self.engine.tick(now, &mut self.out);
        let t = &self.links.telemetry;
        t.last_progress_ms.store(now.mono_ms, Ordering::Relaxed);
        if std::mem::take(&mut self.firing_stale) {
            t.set_firing(self.engine.firing());
        }
    }

    /// Sends the local actions and hands the drafts and the engine's state
    /// to the writer (`done`: the last batch); false when the writer is gone.
    async fn hand_over(&mut self, done: bool) -> bool {
        let t = &self.links.telemetry;
        if !self.out.is_empty() {
            t.set_firing(self.engine.firing());
        }
        for a in self.out.iter().flat_map(|d| &d.actions) {
            match self.links.actions.get(&a.broker) {
                Some(tx) => {
                    if tx.try_send(a.clone()).is_err() {
                        warn!(broker = %a.broker, topic = %a.topic, "local action dropped: broker queue full or gone");
                    }
                }
                None => warn!(broker = %a.broker, "local action for an unknown broker"),
            }
        }
        let now = self.clock.now();
        let transitions = self.engine.state_changes(Changes::Emitted, now);
        let checkpoint = if done {
            // The last batch: every pair, with its window samples.
            Some(self.engine.state_changes(Changes::Full, now))
        } else if self.checkpoint_now
            || (self.dirty && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
        {
            Some(self.engine.state_changes(Changes::Dirty, now))
        } else {
            None
        };
        let checkpointed = checkpoint.is_some();
        Telemetry::bump_by(&t.alerts_created, self.out.len() as u64);
        let batch = Batch {
            drafts: std::mem::take(&mut self.out),
            transitions,
            checkpoint,
        };
        if self.links.batches.send(batch).await.is_err() {
            return false;
        }
        if checkpointed {
            self.dirty = false;
            self.checkpoint_now = false;
            self.last_checkpoint = tokio::time::Instant::now();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Action, AlertState, Condition};

    fn rule(id: &str, above: f64) -> Rule {
        let condition = Condition::Above {
            threshold: above,
            clear: None,
        };
        Rule {
            actions: vec![Action {
                broker: "local".into(),
                topic: "fan/set".into(),
                on_firing: Some("ON".into()),
                on_resolved: Some("OFF".into()),
            }],
            ..Rule::plain(id, "*", "t", condition)
        }
    }

    fn reading(value: f64) -> Reading {
        Reading {
            sensor: "s1".into(),
            metric: "t".into(),
            value,
            ts_ms: 0,
        }
    }

    struct Running {
        readings: mpsc::Sender<Vec<Reading>>,
        control: mpsc::Sender<Control>,
        batches: mpsc::Receiver<Batch>,
        actions: mpsc::Receiver<LocalPublish>,
        telemetry: Arc<Telemetry>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(rules: Vec<Rule>) -> Running {
        start_with(Engine::new(rules))
    }

    fn start_with(engine: Engine) -> Running {
        let (readings, readings_rx) = mpsc::channel(16);
        let (control, control_rx) = mpsc::channel(4);
        let (batches_tx, batches) = mpsc::channel(16);
        let (actions_tx, actions) = mpsc::channel(16);
        let telemetry = Arc::new(Telemetry::new());
        let evaluator = Evaluator {
            engine,
            clock: Clock::new(),
            out: Vec::new(),
        };
        let task = tokio::spawn(evaluator.run(Links {
            readings: readings_rx,
            control: control_rx,
            batches: batches_tx,
            actions: HashMap::from([("local".to_string(), actions_tx)]),
            telemetry: telemetry.clone(),
        }));
        Running {
            readings,
            control,
            batches,
            actions,
            telemetry,
            task,
        }
    }

    fn states(b: &Batch) -> Vec<AlertState> {
        b.drafts.iter().map(|d| d.state).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_firing_reading_hands_its_alert_with_the_engine_state_and_sends_its_action() {
        let mut e = start(vec![rule("hot", 30.0)]);
        e.readings.send(vec![reading(31.0)]).await.unwrap();
        let b = e.batches.recv().await.unwrap();
        assert_eq!(states(&b), [AlertState::Firing]);
        let keys: Vec<&[u8]> = b.transitions.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            keys,
            [b"rhot".as_slice(), b"p\x00\x03hot\x00\x02s1t".as_slice()],
            "the rule and the pair that fired go with the alert"
        );
        assert!(b.checkpoint.is_none(), "no checkpoint with every alert");
        let a = e.actions.recv().await.unwrap();
        assert_eq!((a.topic.as_str(), a.payload.as_str()), ("fan/set", "ON"));
        assert_eq!(e.telemetry.firing().len(), 1);
        assert_eq!(e.telemetry.alerts_created.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_engines_counters_reach_telemetry_with_each_batch() {
        let mut r = rule("hot", 30.0);
        r.for_ms = 60_000;
        let limits = Limits {
            max_pairs: 2,
            ..Limits::default()
        };
        let e = start_with(Engine::with_limits(vec![r], limits));
        let pending = |s: &str| Reading {
            sensor: s.into(),
            ..reading(31.0)
        };
        e.readings
            .send(vec![pending("a"), pending("b"), pending("c")])
            .await
            .unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let s = e.telemetry.engine();
                if s.pairs_refused > 0 {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the counters in telemetry");
        assert_eq!(
            (stats.pairs, stats.max_pairs, stats.pairs_refused),
            (2, 2, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_resolves_what_a_removed_rule_had_firing() {
        let mut e = start(vec![rule("hot", 30.0)]);
        e.readings.send(vec![reading(31.0)]).await.unwrap();
        assert_eq!(
            states(&e.batches.recv().await.unwrap()),
            [AlertState::Firing]
        );
        e.control.send(Control::Reload(Vec::new())).await.unwrap();
        assert_eq!(
            states(&e.batches.recv().await.unwrap()),
            [AlertState::Resolved]
        );
        assert!(e.telemetry.firing().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn readings_that_change_the_state_but_no_alert_are_checkpointed_on_the_period() {
        let mut e = start(vec![rule("hot", 30.0)]);
        let t0 = tokio::time::Instant::now();
        e.readings.send(vec![reading(20.0)]).await.unwrap();
        // Ticks keep coming; the checkpoint is handed over once it is due.
        let b = e.batches.recv().await.unwrap();
        assert!(b.drafts.is_empty() && b.checkpoint.is_some());
        assert!(
            t0.elapsed() >= CHECKPOINT_EVERY,
            "saved after {:?}",
            t0.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_checkpoints_the_new_definitions_with_its_batch() {
        let mut e = start(vec![rule("hot", 30.0)]);
        e.control
            .send(Control::Reload(vec![rule("hot", 35.0)]))
            .await
            .unwrap();
        let b = e.batches.recv().await.unwrap();
        assert!(b.checkpoint.is_some(), "a checkpoint right after a reload");
        // The definition rides with the batch (its transitions) and the
        // outbox puts it in that checkpoint.
        let def = serde_json::to_vec(&rule("hot", 35.0)).unwrap();
        assert!(
            b.transitions
                .iter()
                .chain(b.checkpoint.iter().flatten())
                .any(|(k, v)| k.as_slice() == b"rhot" && v.as_ref() == Some(&def)),
            "{b:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_sources_stop_the_final_state_goes_to_the_writer_and_the_task_ends() {
        let mut e = start(vec![rule("hot", 30.0)]);
        drop(e.readings);
        let b = e.batches.recv().await.unwrap();
        assert!(b.checkpoint.is_some(), "the last batch carries every pair");
        e.task.await.unwrap();
        assert!(e.batches.recv().await.is_none());
    }
}
