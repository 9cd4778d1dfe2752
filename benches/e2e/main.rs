//! End-to-end benchmark: outpost against the broker's own limit and against
//! Node-RED, on the same machine, in one run. See BENCHMARKS.md.
//!
//! `./scripts/bench` runs the whole comparison (it installs Node-RED into a
//! temporary folder first). By hand:
//!
//! ```text
//! cargo bench --bench e2e -- [--readings N] [--heavy N] [--latency-secs S]
//!     [--rate R] [--idle-secs S] [--node-red DIR] [--out FILE]
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it runs a smoke test instead:
//! a few hundred readings through the debug binary, no Node-RED, and fails
//! when an alert goes missing. The long benchmark never runs in CI.
//!
//! Every scenario gets fresh brokers (Mosquitto on free ports) and a fresh
//! gateway process; the load generator and the subscribers that time the
//! delivery live in this process, on rumqttc.

// The integration tests' broker launcher (and the process helpers it
// uses): the bench starts Mosquitto exactly as the tests do.
#[allow(
    dead_code,
    reason = "shared with the integration tests; the bench uses part of it"
)]
#[path = "../../tests/it/harness/broker.rs"]
mod broker;
mod gateway;
mod mqtt;
#[allow(
    dead_code,
    reason = "shared with the integration tests; the bench uses part of it"
)]
#[path = "../../tests/it/harness/process.rs"]
mod process;
mod workload;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rumqttc::QoS;

use broker::{Mosquitto, MosquittoOpts};
use gateway::{Gateway, Kind};
use mqtt::{Publisher, Subscriber};
use workload::Workload;

struct Opts {
    full: bool,
    readings: usize,
    heavy: usize,
    latency_secs: f64,
    rate: f64,
    idle_secs: f64,
    outpost: PathBuf,
    node_red: Option<PathBuf>,
    out: Option<PathBuf>,
    /// `outbox.flush` of outpost's config ("always" unless told).
    flush: String,
    /// outpost's `RUST_LOG`, for experiments (default: unset, so `info`).
    rust_log: Option<String>,
    /// Runs to do, of `limit`, `sparse`, `heavy`, `latency`, `lone`,
    /// `backlog` (all by default).
    only: Vec<String>,
    /// Alerts of the `lone` run, each committed alone, at `lone_rate`/s.
    lone: usize,
    lone_rate: f64,
    /// Alerts stored with the uplink down in the `backlog` run, then a
    /// restart and the drain.
    backlog: usize,
}

impl Opts {
    fn wants(&self, run: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|r| r == run)
    }

    /// Lenient: `cargo test`/`cargo bench` pass their own flags (`--bench`,
    /// `--nocapture`, filters); anything not ours is ignored.
    fn parse() -> Result<Opts, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let full = args.iter().any(|a| a == "--bench");
        // (readings, heavy, latency_secs, rate, idle_secs): the benchmark's
        // sizes, or the smoke test's.
        let (readings, heavy, latency_secs, rate, idle_secs) = if full {
            (200_000, 20_000, 20.0, 1000.0, 10.0)
        } else {
            (2_000, 200, 0.5, 400.0, 0.5)
        };
        let (lone, lone_rate, backlog) = if full {
            (100, 5.0, 100_000)
        } else {
            (10, 20.0, 2_000)
        };
        let mut o = Opts {
            full,
            readings,
            heavy,
            latency_secs,
            rate,
            idle_secs,
            outpost: PathBuf::from(env!("CARGO_BIN_EXE_outpost")),
            node_red: None,
            out: None,
            flush: "always".into(),
            rust_log: None,
            only: Vec::new(),
            lone,
            lone_rate,
            backlog,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value"))
            };
            let num = |v: String| v.parse::<f64>().map_err(|e| format!("{a} {v}: {e}"));
            match a.as_str() {
                "--readings" => o.readings = num(value()?)? as usize,
                "--heavy" => o.heavy = num(value()?)? as usize,
                "--latency-secs" => o.latency_secs = num(value()?)?,
                "--rate" => o.rate = num(value()?)?.max(1.0),
                "--idle-secs" => o.idle_secs = num(value()?)?,
                "--outpost" => o.outpost = PathBuf::from(value()?),
                "--node-red" => o.node_red = Some(PathBuf::from(value()?)),
                "--out" => o.out = Some(PathBuf::from(value()?)),
                "--flush" => o.flush = value()?,
                "--rust-log" => o.rust_log = Some(value()?),
                "--only" => o.only = value()?.split(',').map(str::to_string).collect(),
                "--lone" => o.lone = num(value()?)? as usize,
                "--backlog" => o.backlog = num(value()?)? as usize,
                _ => {}
            }
        }
        // Gateways run in their own folders: relative paths would break.
        for p in [Some(&mut o.outpost), o.node_red.as_mut(), o.out.as_mut()]
            .into_iter()
            .flatten()
        {
            if p.is_relative()
                && let Ok(cwd) = std::env::current_dir()
            {
                *p = cwd.join(&*p);
            }
        }
        Ok(o)
    }
}

/// One pass of a workload through a gateway (or the bare subscriber).
struct Run {
    readings: usize,
    alerts_expected: usize,
    /// Distinct alerts received (a redelivery counts once).
    alerts_received: usize,
    /// Alerts received again (at-least-once delivery).
    duplicates: usize,
    /// First publish to done (last alert acknowledged, or last reading received).
    secs: f64,
    /// How long the generator took to publish everything.
    publish_secs: f64,
    complete: bool,
    /// How "done" was observed.
    done_by: &'static str,
    cpu_secs: Option<f64>,
    peak_rss_kib: Option<u64>,
    waiting_at_stop: Option<u64>,
    clean_stop: bool,
    latencies: Vec<Duration>,
    /// Largest latency of the readings published in the first second of a
    /// steady-rate run (left out of `latencies`).
    warmup_max: Option<Duration>,
    /// CPU seconds of the brokers and of this process (generator and
    /// subscribers) over the same span: where the rest of the machine went.
    brokers_cpu: Option<f64>,
    bench_cpu: Option<f64>,
    /// Bytes the gateway wrote to storage during the run.
    written: Option<u64>,
}

impl Run {
    fn readings_per_s(&self) -> f64 {
        self.readings as f64 / self.secs.max(1e-9)
    }
    fn alerts_per_s(&self) -> f64 {
        self.alerts_received as f64 / self.secs.max(1e-9)
    }
    fn cpu_per_million(&self) -> Option<f64> {
        self.cpu_secs.map(|c| c / self.readings as f64 * 1e6)
    }
    fn percentile(&self, p: f64) -> Option<Duration> {
        let mut v = self.latencies.clone();
        v.sort();
        let i = ((v.len() as f64 * p).ceil() as usize).checked_sub(1)?;
        v.get(i.min(v.len() - 1)).copied()
    }
}

#[derive(Default)]
struct GatewayResults {
    startup: Option<Duration>,
    idle_cpu_pct: Option<f64>,
    /// Bytes written to disk over the idle span.
    idle_written: Option<u64>,
    sparse: Option<Run>,
    heavy: Option<Run>,
    latency: Option<Run>,
    lone: Option<Run>,
    backlog: Option<Backlog>,
    errors: Vec<String>,
}

/// The backlog run: alerts stored at full speed with the uplink down, the
/// gateway restarted, the uplink back and the backlog drained.
struct Backlog {
    stored: u64,
    fill_secs: f64,
    peak_fill_kib: Option<u64>,
    peak_drain_kib: Option<u64>,
    drain_secs: f64,
    drained: bool,
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The bare subscriber: the same generator, the same broker, a subscriber
/// that only counts. This is the ceiling for any gateway on this machine.
///
/// At a `rate`, it keeps what it receives to time each reading's one hop
/// through the broker: the latency floor of this machine.
async fn bare(w: &Workload, rate: Option<f64>) -> Result<Run, String> {
    let local = bench_broker()?;
    let keep = rate.is_some();
    let sub =
        // QoS 0: no duplicates to tell apart.
        Subscriber::connect(local.port(), "bench-bare", "bench/+", QoS::AtMostOnce, keep, false)
            .await?;
    let publisher = Publisher::connect(local.port()).await?;
    let sent = publisher.publish(w, rate).await?;
    let complete = sub.wait_for(w.len(), Duration::from_secs(5)).await;
    let end = sub.last().unwrap_or_else(Instant::now);
    let received = sub.received();
    if broker_drops(&local) > 0 {
        eprintln!("warning: the broker logged dropped messages");
    }
    Ok(Run {
        readings: received,
        alerts_expected: 0,
        alerts_received: 0,
        duplicates: 0,
        secs: end.duration_since(sent.first()).as_secs_f64(),
        publish_secs: sent.last().duration_since(sent.first()).as_secs_f64(),
        complete: complete && received == w.len(),
        done_by: "last reading received",
        cpu_secs: None,
        peak_rss_kib: None,
        waiting_at_stop: None,
        clean_stop: true,
        brokers_cpu: None,
        bench_cpu: None,
        written: None,
        warmup_max: None,
        // The same first-second warm-up as the gateways' is left out.
        latencies: sub
            .messages()
            .iter()
            .filter_map(|(at, payload)| {
                let i = workload::index_of(workload::reading_value(payload)?)?;
                let s = *sent.at.get(i)?;
                (s.duration_since(sent.first()) >= Duration::from_secs(1))
                    .then(|| at.saturating_duration_since(s))
            })
            .collect(),
    })
}

struct Ready {
    startup: Duration,
    idle_cpu_pct: Option<f64>,
    idle_written: Option<u64>,
}

/// Starts brokers and the gateway, waits until it is ready (online upstream
/// and subscribed locally), then feeds it `w` and times delivery.
async fn through_gateway(
    kind: &Kind,
    w: &Workload,
    rate: Option<f64>,
    idle_secs: Option<f64>,
) -> Result<(Ready, Run), String> {
    settle_disk();
    let local = bench_broker()?;
    let up = bench_broker()?;
    let alerts = Subscriber::connect(
        up.port(),
        "bench-alerts",
        kind.alerts_filter(),
        QoS::AtLeastOnce,
        true,
        true,
    )
    .await?;
    let status = Subscriber::connect(
        up.port(),
        "bench-status",
        kind.status_topic(),
        QoS::AtLeastOnce,
        true,
        false,
    )
    .await?;
    let publisher = Publisher::connect(local.port()).await?;
    let mut gw = Gateway::start(kind, local.port(), up.port())?;

    // Ready: `online` retained upstream and subscribed on the local broker.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut subscribed_at = None;
    let ready_at = loop {
        if subscribed_at.is_none() && has_subscription(&local, kind.local_client(), "bench/+") {
            subscribed_at = Some(Instant::now());
        }
        if let (Some(s), Some(o)) = (subscribed_at, status.first_with(b"online")) {
            break s.max(o);
        }
        if gw.exited() || Instant::now() > deadline {
            return Err(format!(
                "{} did not get ready (online upstream and subscribed locally):\n{}",
                kind.label(),
                tail(&gw.log(), 30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let startup = ready_at.duration_since(gw.spawned);

    let (idle_cpu_pct, idle_written) = match idle_secs {
        Some(secs) => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let c0 = gw.cpu_seconds();
            let w0 = gw.written_bytes();
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let c1 = gw.cpu_seconds();
            let w1 = gw.written_bytes();
            (
                c0.zip(c1)
                    .map(|(a, b)| (b - a) / t0.elapsed().as_secs_f64() * 100.0),
                w0.zip(w1).map(|(a, b)| b.saturating_sub(a)),
            )
        }
        None => (None, None),
    };

    let others = || {
        let brokers = gateway::cpu_seconds(local.pid())
            .zip(gateway::cpu_seconds(up.pid()))
            .map(|(a, b)| a + b);
        (brokers, gateway::cpu_seconds(std::process::id()))
    };
    let others0 = others();
    let cpu0 = gw.cpu_seconds();
    let written0 = gw.written_bytes();
    let sent = publisher.publish(w, rate).await?;
    let stall = Duration::from_secs(20);
    let mut complete = alerts.wait_for(w.expected_alerts, stall).await;
    let mut end = alerts.last().unwrap_or_else(Instant::now);
    let mut done_by = "last alert received";
    if complete && matches!(kind, Kind::Outpost { .. }) {
        // Acknowledged: the outbox is empty (outpost removes an alert on its PUBACK).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match gw.outbox_depth() {
                Some(0) => {
                    end = Instant::now();
                    done_by = "outbox empty (/metrics)";
                    break;
                }
                Some(_) if Instant::now() < deadline => {}
                Some(_) => {
                    complete = false;
                    break;
                }
                // Not answering yet: ask again until the deadline.
                None if Instant::now() < deadline => {}
                None => {
                    complete = false;
                    done_by = "/metrics unreachable";
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let cpu1 = gw.cpu_seconds();
    let written1 = gw.written_bytes();
    let others1 = others();
    let peak_rss_kib = gw.peak_rss_kib();
    let received = alerts.received();
    let duplicates = alerts.duplicates();
    let stopped = gw.stop();
    drop(publisher);

    let messages = alerts.messages();
    // At a steady rate, alerts of readings published in the first second
    // are a warm-up (a fresh outbox's first writes, Node-RED's JIT): kept
    // apart, so the percentiles describe the steady state.
    let warmup = if rate.is_some() {
        Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    let mut latencies = Vec::with_capacity(messages.len());
    let mut warmup_max: Option<Duration> = None;
    let mut named = 0;
    for (at, payload) in &messages {
        let Some(s) = workload::alert_value(payload)
            .and_then(workload::index_of)
            .and_then(|i| sent.at.get(i))
        else {
            continue;
        };
        named += 1;
        let l = at.saturating_duration_since(*s);
        if s.duration_since(sent.first()) < warmup {
            warmup_max = warmup_max.max(Some(l));
        } else {
            latencies.push(l);
        }
    }
    if let Some(path) = std::env::var_os("OUTPOST_BENCH_DUMP") {
        // For analysis: "<ms since the first publish> <latency ms>" per alert.
        let t0 = sent.first();
        let lines: String = messages
            .iter()
            .filter_map(|(at, payload)| {
                let i = workload::index_of(workload::alert_value(payload)?)?;
                let s = *sent.at.get(i)?;
                Some(format!(
                    "{:.3} {:.3}\n",
                    s.duration_since(t0).as_secs_f64() * 1e3,
                    at.saturating_duration_since(s).as_secs_f64() * 1e3
                ))
            })
            .collect();
        let _ = std::fs::write(path, lines);
    }
    if named != messages.len() {
        eprintln!(
            "warning: {} of {} alerts did not name a reading",
            messages.len() - named,
            messages.len()
        );
    }
    let run = Run {
        readings: w.len(),
        alerts_expected: w.expected_alerts,
        alerts_received: received,
        duplicates,
        secs: end.duration_since(sent.first()).as_secs_f64(),
        publish_secs: sent.last().duration_since(sent.first()).as_secs_f64(),
        complete: complete && received == w.expected_alerts,
        done_by,
        cpu_secs: cpu0.zip(cpu1).map(|(a, b)| b - a),
        peak_rss_kib,
        waiting_at_stop: stopped.waiting,
        clean_stop: stopped.clean,
        latencies,
        warmup_max,
        brokers_cpu: others0.0.zip(others1.0).map(|(a, b)| b - a),
        bench_cpu: others0.1.zip(others1.1).map(|(a, b)| b - a),
        written: written0.zip(written1).map(|(a, b)| b.saturating_sub(a)),
    };
    Ok((
        Ready {
            startup,
            idle_cpu_pct,
            idle_written,
        },
        run,
    ))
}

/// The backlog run (outpost only): `n` alerts stored as fast as they come
/// with the uplink down, a restart, then the drain once it is back.
async fn backlog_run(kind: &Kind, n: usize) -> Result<Backlog, String> {
    settle_disk();
    let local = bench_broker()?;
    let mut up = bench_broker()?;
    up.stop();
    let publisher = Publisher::connect(local.port()).await?;
    let mut gw = Gateway::start(kind, local.port(), up.port())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_subscription(&local, kind.local_client(), "bench/+") {
        if gw.exited() || Instant::now() > deadline {
            return Err(format!("not subscribed:\n{}", tail(&gw.log(), 30)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every reading toggles an alert, published as fast as one connection
    // goes (the bench broker has no queue limit: a gateway that pushes back
    // is slower, and loses nothing).
    let w = Workload::new(n, 1);
    let t0 = Instant::now();
    publisher.publish(&w, None).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let stored = loop {
        let d = gw.outbox_depth().unwrap_or(0);
        if d as usize >= w.expected_alerts {
            break d;
        }
        if gw.exited() || Instant::now() > deadline {
            return Err(format!("stored {d} of {}", w.expected_alerts));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fill_secs = t0.elapsed().as_secs_f64();
    let peak_fill_kib = gw.peak_rss_kib();
    drop(publisher);
    gw.restart()?;
    up.start_again();
    let t1 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    let drained = loop {
        match gw.outbox_depth() {
            Some(0) => break true,
            _ if gw.exited() || Instant::now() > deadline => break false,
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let drain_secs = t1.elapsed().as_secs_f64();
    let peak_drain_kib = gw.peak_rss_kib();
    gw.stop();
    Ok(Backlog {
        stored,
        fill_secs,
        peak_fill_kib,
        peak_drain_kib,
        drain_secs,
        drained,
    })
}

/// A broker for a run: no persistence, no per-message log lines, no queue
/// limit (`MosquittoOpts::quiet`).
fn bench_broker() -> Result<Mosquitto, String> {
    Mosquitto::try_start(MosquittoOpts {
        quiet: true,
        ..MosquittoOpts::default()
    })
}

/// True once the broker logged a subscription of `client_id` to `filter`
/// (`log_type subscribe`: `<time>: <client id> <qos> <filter>`).
fn has_subscription(m: &Mosquitto, client_id: &str, filter: &str) -> bool {
    let log = std::fs::read_to_string(m.log_file()).unwrap_or_default();
    log.lines().any(|l| {
        let mut w = l.split_whitespace().skip(1);
        w.next() == Some(client_id) && w.nth(1) == Some(filter)
    })
}

/// Lines the broker logged about dropping messages, if any.
fn broker_drops(m: &Mosquitto) -> usize {
    m.log()
        .lines()
        .filter(|l| l.contains("dropped") || l.contains("Dropped"))
        .count()
}

/// Writes back what earlier runs left dirty in the page cache (the
/// alert-heavy run writes hundreds of MB), so it does not slow the fsyncs
/// of the next run.
fn settle_disk() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn gateway_suite(kind: &Kind, o: &Opts) -> GatewayResults {
    let mut r = GatewayResults::default();
    let label = kind.label();
    let latency_n = ((o.latency_secs + 1.0) * o.rate) as usize;
    // (run, workload, steady rate, idle seconds measured first, what it is)
    let runs = [
        (
            "sparse",
            Workload::new(o.readings, 50),
            None,
            Some(o.idle_secs),
            "1 % fire",
        ),
        (
            "heavy",
            Workload::new(o.heavy, 1),
            None,
            None,
            "every one alerts",
        ),
        (
            "latency",
            Workload::new(latency_n, 5),
            Some(o.rate),
            None,
            "10 % alert",
        ),
        (
            "lone",
            Workload::new(o.lone, 1),
            Some(o.lone_rate),
            None,
            "each alert committed alone",
        ),
    ];
    for (run, w, rate, idle, what) in runs {
        if !o.wants(run) {
            continue;
        }
        let pace = rate.map_or(String::new(), |r| format!(" at {r}/s"));
        eprintln!(
            "{label}: {run}, {} readings{pace}, {what} ... (load {})",
            w.len(),
            load()
        );
        match through_gateway(kind, &w, rate, idle).await {
            Ok((ready, done)) => match run {
                "sparse" => {
                    r.startup = Some(ready.startup);
                    r.idle_cpu_pct = ready.idle_cpu_pct;
                    r.idle_written = ready.idle_written;
                    r.sparse = Some(done);
                }
                "heavy" => r.heavy = Some(done),
                "lone" => r.lone = Some(done),
                _ => r.latency = Some(done),
            },
            Err(e) => r.errors.push(format!("{run} run: {e}")),
        }
    }
    if matches!(kind, Kind::Outpost { .. }) && o.wants("backlog") {
        eprintln!(
            "{label}: backlog, {} alerts with the uplink down, a restart, the drain ... (load {})",
            o.backlog,
            load()
        );
        match backlog_run(kind, o.backlog).await {
            Ok(b) => r.backlog = Some(b),
            Err(e) => r.errors.push(format!("backlog run: {e}")),
        }
    }
    r
}

fn main() -> ExitCode {
    let o = match Opts::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("e2e: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("e2e: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(o))
}

async fn run(o: Opts) -> ExitCode {
    let started = Instant::now();
    let load_before = load();
    let mode = if o.full { "benchmark" } else { "smoke test" };
    eprintln!("e2e {mode}: outpost at {}", o.outpost.display());
    let limit_w = Workload::new(o.readings, 50);
    let mut limits = Vec::new();
    let mut errors = Vec::new();
    if o.wants("limit") {
        eprintln!(
            "limit: bare subscriber, {} readings ... (load {})",
            limit_w.len(),
            load()
        );
        match bare(&limit_w, None).await {
            Ok(r) => limits.push(r),
            Err(e) => errors.push(format!("limit: {e}")),
        }
    }
    let mut limit_latency = None;
    if o.wants("latency") {
        let lat = Workload::new(((o.latency_secs + 1.0) * o.rate) as usize, 5);
        eprintln!(
            "limit: latency of one broker hop at {}/s ... (load {})",
            o.rate,
            load()
        );
        match bare(&lat, Some(o.rate)).await {
            Ok(r) => limit_latency = Some(r),
            Err(e) => errors.push(format!("limit latency: {e}")),
        }
    }
    // This disk's own floor for a lone durable write, in the same run.
    let fsync = match gateway::fsync_floor(&std::env::temp_dir(), if o.full { 500 } else { 20 }) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(format!("fsync floor: {e}"));
            None
        }
    };
    let outpost = gateway_suite(
        &Kind::Outpost {
            bin: o.outpost.clone(),
            flush: o.flush.clone(),
            rust_log: o.rust_log.clone(),
        },
        &o,
    )
    .await;
    let node_red = match &o.node_red {
        Some(dir) => Some(gateway_suite(&Kind::NodeRed { dir: dir.clone() }, &o).await),
        None => None,
    };
    if o.wants("limit") {
        eprintln!("limit again ... (load {})", load());
        match bare(&limit_w, None).await {
            Ok(r) => limits.push(r),
            Err(e) => errors.push(format!("limit: {e}")),
        }
    }
    let load_after = load();
    errors.extend(outpost.errors.iter().map(|e| format!("outpost {e}")));
    if let Some(n) = &node_red {
        errors.extend(n.errors.iter().map(|e| format!("Node-RED {e}")));
    }
    let report = report(
        &o,
        &limits,
        limit_latency.as_ref(),
        fsync.as_deref(),
        &outpost,
        node_red.as_ref(),
        &load_before,
        &load_after,
        started.elapsed(),
        &errors,
    );
    println!("{report}");
    if let Some(path) = &o.out {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        match std::fs::write(path, &report) {
            Ok(()) => eprintln!("written to {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
    // The smoke test's verdict: every alert arrived (duplicates not
    // counted), left the outbox, and outpost stopped cleanly saying so.
    let mut failed: Vec<String> = Vec::new();
    if let Some(b) = &outpost.backlog
        && !b.drained
    {
        failed.push("outpost backlog: not drained after the restart".into());
    }
    for (name, run) in [
        ("1 %", &outpost.sparse),
        ("alert-heavy", &outpost.heavy),
        ("latency", &outpost.latency),
        ("each alert alone", &outpost.lone),
    ] {
        let Some(r) = run else { continue };
        if !r.complete {
            failed.push(format!(
                "outpost {name}: incomplete, {}/{} alerts, done = {}",
                r.alerts_received, r.alerts_expected, r.done_by
            ));
        }
        if !r.clean_stop {
            failed.push(format!("outpost {name}: did not stop cleanly on SIGTERM"));
        }
        match r.waiting_at_stop {
            Some(0) => {}
            Some(w) => failed.push(format!("outpost {name}: {w} alerts left in the outbox")),
            None => failed.push(format!(
                "outpost {name}: no \"outpost stopped waiting=N\" line in its log"
            )),
        }
    }
    for (i, l) in limits.iter().enumerate() {
        if !l.complete {
            failed.push(format!("limit #{}: incomplete", i + 1));
        }
    }
    if errors.is_empty() && failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &failed {
            eprintln!("e2e: {f}");
        }
        eprintln!("e2e: FAILED (incomplete runs or errors above)");
        ExitCode::FAILURE
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("?".into(), |m| m.trim().to_string());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("?".into(), |k| format!("{:.1} GiB", k as f64 / 1048576.0));
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("?".into(), |s| s.trim().to_string());
    format!("{nproc} CPUs ({model}), {mem} RAM, Linux {kernel}")
}

fn versions(o: &Opts) -> String {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let red = o.node_red.as_ref().and_then(|d| {
        let pkg = std::fs::read(d.join("node_modules/node-red/package.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&pkg).ok()?;
        Some(v["version"].as_str()?.to_string())
    });
    let mut s = format!(
        "outpost {}, {}",
        env!("CARGO_PKG_VERSION"),
        Mosquitto::version()
    );
    if let Some(r) = red {
        let _ = write!(s, ", Node-RED {r} on node {}", node.unwrap_or_default());
    }
    s
}

#[allow(clippy::too_many_arguments)]
/// The `p` percentile of sorted durations.
fn pctl(v: &[Duration], p: f64) -> Option<Duration> {
    let i = ((v.len() as f64 * p).ceil() as usize).checked_sub(1)?;
    v.get(i.min(v.len() - 1)).copied()
}

/// CPU µs per alert of a run.
fn cpu_per_alert(r: &Run) -> Option<f64> {
    r.cpu_secs
        .filter(|_| r.alerts_received > 0)
        .map(|c| c * 1e6 / r.alerts_received as f64)
}

/// Bytes written per alert of a run.
fn written_per_alert(r: &Run) -> Option<f64> {
    r.written
        .filter(|_| r.alerts_received > 0)
        .map(|w| w as f64 / r.alerts_received as f64)
}

#[allow(clippy::too_many_arguments)]
fn report(
    o: &Opts,
    limits: &[Run],
    limit_latency: Option<&Run>,
    fsync: Option<&[Duration]>,
    op: &GatewayResults,
    nr: Option<&GatewayResults>,
    load_before: &str,
    load_after: &str,
    took: Duration,
    errors: &[String],
) -> String {
    let mut s = String::new();
    let limit = (!limits.is_empty())
        .then(|| limits.iter().map(Run::readings_per_s).sum::<f64>() / limits.len() as f64);
    let _ = writeln!(s, "Machine: {}", machine());
    let _ = writeln!(s, "Versions: {}", versions(o));
    let _ = writeln!(
        s,
        "Load average (1/5/15 min): {load_before} at the start, {load_after} at the end; the run took {:.0} s.",
        took.as_secs_f64()
    );
    let _ = writeln!(s);
    let nr_get = |f: &dyn Fn(&GatewayResults) -> Option<f64>| nr.and_then(f);
    let cell = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("—".into(), f);
    let rps = |r: &Option<Run>| r.as_ref().map(Run::readings_per_s);
    let aps = |r: &Option<Run>| r.as_ref().map(Run::alerts_per_s);
    let cpu = |r: &Option<Run>| r.as_ref().and_then(Run::cpu_per_million);
    let rss = |r: &Option<Run>| r.as_ref().and_then(|r| r.peak_rss_kib);
    let pct = |r: &Option<Run>, p| r.as_ref().and_then(|r| r.percentile(p));
    let n_s = op.sparse.as_ref().map_or(o.readings, |r| r.readings);
    let n_h = op.heavy.as_ref().map_or(o.heavy, |r| r.readings);
    let limits_txt = limits
        .iter()
        .map(|l| thousands(l.readings_per_s()))
        .collect::<Vec<_>>()
        .join(" / ");
    let _ = writeln!(
        s,
        "| measure | limit: bare subscriber | outpost | Node-RED | outpost ÷ limit | outpost ÷ Node-RED |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let _ = writeln!(
        s,
        "| readings/s, {} readings, 1 % fire + 1 % resolve, until the last alert is acknowledged | {} (before / after) | {} | {} | {} | {} |",
        thousands(n_s as f64),
        if limits_txt.is_empty() {
            "—".into()
        } else {
            limits_txt
        },
        cell(rps(&op.sparse), &thousands),
        cell(nr_get(&|n| rps(&n.sparse)), &thousands),
        ratio(rps(&op.sparse), limit),
        ratio(rps(&op.sparse), nr_get(&|n| rps(&n.sparse))),
    );
    let _ = writeln!(
        s,
        "| alerts/s, {} readings, every reading toggles an alert | — | {} | {} | — | {} |",
        thousands(n_h as f64),
        cell(aps(&op.heavy), &thousands),
        cell(nr_get(&|n| aps(&n.heavy)), &thousands),
        ratio(aps(&op.heavy), nr_get(&|n| aps(&n.heavy))),
    );
    let _ = writeln!(
        s,
        "| latency p50 / p99 at {} readings/s, 10 % alert: publish → alert upstream (limit: publish → reading, one broker hop) | {} / {} | {} / {} | {} / {} | — | — |",
        thousands(o.rate),
        ms(limit_latency.and_then(|r| r.percentile(0.5))),
        ms(limit_latency.and_then(|r| r.percentile(0.99))),
        ms(pct(&op.latency, 0.5)),
        ms(pct(&op.latency, 0.99)),
        ms(nr.and_then(|n| pct(&n.latency, 0.5))),
        ms(nr.and_then(|n| pct(&n.latency, 0.99))),
    );
    let _ = writeln!(
        s,
        "| this disk: 4 KiB append + fdatasync, p50 / p99 (the latency floor's other part) | {} / {} | — | — | — | — |",
        ms(fsync.and_then(|v| pctl(v, 0.5))),
        ms(fsync.and_then(|v| pctl(v, 0.99))),
    );
    let _ = writeln!(
        s,
        "| each alert committed alone ({} alerts at {}/s): latency p50 / p99, disk written per alert | — | {} / {}, {} | {} / {} | — | — |",
        o.lone,
        o.lone_rate,
        ms(pct(&op.lone, 0.5)),
        ms(pct(&op.lone, 0.99)),
        cell(op.lone.as_ref().and_then(written_per_alert), &|b| format!(
            "{:.0} B",
            b
        )),
        ms(nr.and_then(|n| pct(&n.lone, 0.5))),
        ms(nr.and_then(|n| pct(&n.lone, 0.99))),
    );
    let _ = writeln!(
        s,
        "| disk written per alert, 1 % run / alert-heavy run | — | {} / {} | — | — | — |",
        cell(
            op.sparse.as_ref().and_then(written_per_alert),
            &|b| format!("{:.0} B", b)
        ),
        cell(op.heavy.as_ref().and_then(written_per_alert), &|b| format!(
            "{:.0} B",
            b
        )),
    );
    let _ = writeln!(
        s,
        "| CPU µs per alert, alert-heavy run (outpost: stored and fsync'd; Node-RED: in memory) | — | {} | {} | — | {} |",
        cell(op.heavy.as_ref().and_then(cpu_per_alert), &|c| format!(
            "{c:.1}"
        )),
        cell(
            nr.and_then(|n| n.heavy.as_ref().and_then(cpu_per_alert)),
            &|c| format!("{c:.1}")
        ),
        ratio(
            op.heavy.as_ref().and_then(cpu_per_alert),
            nr.and_then(|n| n.heavy.as_ref().and_then(cpu_per_alert))
        ),
    );
    if let Some(b) = &op.backlog {
        let _ = writeln!(
            s,
            "| backlog: {} alerts stored with the uplink down (alerts/s), restart, drain (alerts/s); peak RSS fill / drain | — | {} stored/s, drain {} alerts/s{}; {} / {} | — | — | — |",
            thousands(b.stored as f64),
            thousands(b.stored as f64 / b.fill_secs.max(1e-9)),
            thousands(b.stored as f64 / b.drain_secs.max(1e-9)),
            if b.drained { "" } else { " (INCOMPLETE)" },
            mib(b.peak_fill_kib),
            mib(b.peak_drain_kib),
        );
    }
    let _ = writeln!(
        s,
        "| peak RSS (VmHWM), 1 % run / alert-heavy run | — | {} / {} | {} / {} | — | {} |",
        mib(rss(&op.sparse)),
        mib(rss(&op.heavy)),
        mib(nr.and_then(|n| rss(&n.sparse))),
        mib(nr.and_then(|n| rss(&n.heavy))),
        ratio(
            rss(&op.sparse).map(|k| k as f64),
            nr.and_then(|n| rss(&n.sparse)).map(|k| k as f64)
        ),
    );
    let _ = writeln!(
        s,
        "| CPU s per million readings, 1 % run / alert-heavy run | — | {} / {} | {} / {} | — | {} |",
        cell(cpu(&op.sparse), &|c| format!("{c:.2}")),
        cell(cpu(&op.heavy), &|c| format!("{c:.1}")),
        cell(nr_get(&|n| cpu(&n.sparse)), &|c| format!("{c:.2}")),
        cell(nr_get(&|n| cpu(&n.heavy)), &|c| format!("{c:.1}")),
        ratio(cpu(&op.sparse), nr_get(&|n| cpu(&n.sparse))),
    );
    let _ = writeln!(
        s,
        "| idle over {:.1} s with no readings: CPU, bytes written | — | {}, {} | {} | — | — |",
        o.idle_secs,
        cell(op.idle_cpu_pct, &|p| format!("{p:.2} %")),
        op.idle_written.map_or("—".into(), |w| format!("{w} B")),
        cell(nr_get(&|n| n.idle_cpu_pct), &|p| format!("{p:.2} %")),
    );
    let _ = writeln!(
        s,
        "| startup: process start to `online` upstream and subscribed locally | — | {} | {} | — | — |",
        ms(op.startup),
        ms(nr.and_then(|n| n.startup)),
    );
    let _ = writeln!(
        s,
        "| alerts on disk before they are published | — | yes (`fdatasync`'d, `flush = \"always\"`) | no (in memory) | — | — |"
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "Details:");
    let _ = writeln!(s);
    let mut detail = |name: &str, r: Option<&Run>| {
        if let Some(r) = r {
            let lat = if r.latencies.is_empty() {
                String::new()
            } else {
                format!(
                    "; latency p50 {} p90 {} p99 {} max {} ({} samples){}",
                    ms(r.percentile(0.5)),
                    ms(r.percentile(0.9)),
                    ms(r.percentile(0.99)),
                    ms(r.percentile(1.0)),
                    r.latencies.len(),
                    r.warmup_max.map_or(String::new(), |w| format!(
                        ", max in the first second (left out) {}",
                        ms(Some(w))
                    ))
                )
            };
            let cpu = match (r.cpu_secs, r.brokers_cpu, r.bench_cpu) {
                (Some(g), Some(b), Some(me)) => format!(
                    "; CPU s: gateway {g:.2}, brokers {b:.2}, generator + subscribers {me:.2} (of {:.2} available)",
                    r.secs * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
                ),
                _ => String::new(),
            };
            let written = match r.written {
                Some(w) if r.alerts_received > 0 => format!(
                    "; written to disk {:.1} MB = {:.1} KB per alert",
                    w as f64 / 1e6,
                    w as f64 / 1e3 / r.alerts_received as f64
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "- {name}: {} readings in {:.2} s (generator done after {:.2} s), {}/{} alerts{}, done = {}{}{}{cpu}{written}{lat}",
                thousands(r.readings as f64),
                r.secs,
                r.publish_secs,
                r.alerts_received,
                r.alerts_expected,
                if r.duplicates > 0 {
                    format!(" (and {} duplicates)", r.duplicates)
                } else {
                    String::new()
                },
                r.done_by,
                if r.complete { "" } else { ", INCOMPLETE" },
                match (r.waiting_at_stop, r.clean_stop) {
                    (Some(w), true) => format!(", {w} alerts left in the outbox at SIGTERM"),
                    (_, false) => ", did not stop cleanly".to_string(),
                    _ => String::new(),
                }
            );
        }
    };
    for (i, l) in limits.iter().enumerate() {
        detail(&format!("limit #{}", i + 1), Some(l));
    }
    detail("limit, latency", limit_latency);
    for (g, label) in [(Some(op), "outpost"), (nr, "Node-RED")] {
        if let Some(g) = g {
            detail(&format!("{label}, 1 %"), g.sparse.as_ref());
            detail(&format!("{label}, alert-heavy"), g.heavy.as_ref());
            detail(&format!("{label}, latency"), g.latency.as_ref());
            detail(&format!("{label}, each alert alone"), g.lone.as_ref());
        }
    }
    if limit.is_some() || op.sparse.is_some() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Targets:");
        let _ = writeln!(s);
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        if let (Some(l), Some(r)) = (limit, rps(&op.sparse)) {
            let _ = writeln!(
                s,
                "- readings/s ≥ 0.8 × limit: {:.2} × ({})",
                r / l,
                verdict(r / l >= 0.8)
            );
        }
        let peaks = [&op.sparse, &op.heavy, &op.latency, &op.lone]
            .into_iter()
            .filter_map(rss)
            .chain(
                op.backlog
                    .iter()
                    .flat_map(|b| [b.peak_fill_kib, b.peak_drain_kib])
                    .flatten(),
            );
        if let Some(k) = peaks.max() {
            let _ = writeln!(
                s,
                "- peak RSS ≤ 24 MiB in every run (backlog fill, restart and drain included): {} ({})",
                mib(Some(k)),
                verdict(k <= 24 * 1024)
            );
        }
        if let Some(b) = op.lone.as_ref().and_then(written_per_alert) {
            let _ = writeln!(
                s,
                "- disk written ≤ 4 KiB per alert committed alone: {b:.0} B ({})",
                verdict(b <= 4096.0)
            );
        }
        if let Some(b) = op.heavy.as_ref().and_then(written_per_alert) {
            let _ = writeln!(
                s,
                "- disk written ≤ 1 KiB per alert, alert-heavy: {b:.0} B ({})",
                verdict(b <= 1024.0)
            );
        }
        if let Some(w) = op.idle_written {
            let _ = writeln!(
                s,
                "- idle: no writes: {w} B over {:.1} s ({})",
                o.idle_secs,
                verdict(w == 0)
            );
        }
        if let (Some(a), Some(b)) = (
            op.heavy.as_ref().and_then(cpu_per_alert),
            nr.and_then(|n| n.heavy.as_ref().and_then(cpu_per_alert)),
        ) {
            let _ = writeln!(
                s,
                "- CPU per durable alert ≤ 1/3 of Node-RED's per in-memory alert: {a:.1} µs vs {b:.1} µs = {:.2} ({})",
                a / b,
                verdict(a / b <= 1.0 / 3.0)
            );
        }
        if let (Some(a), Some(b)) = (aps(&op.heavy), nr_get(&|n| aps(&n.heavy))) {
            let _ = writeln!(
                s,
                "- alert-heavy alerts/s ≥ 2 × Node-RED: {:.2} × ({})",
                a / b,
                verdict(a / b >= 2.0)
            );
        }
        if let (Some(p), Some(hop), Some(f)) = (
            pct(&op.latency, 0.99),
            limit_latency.and_then(|r| r.percentile(0.99)),
            fsync.and_then(|v| pctl(v, 0.99)),
        ) {
            // Two broker hops (sensor → local broker → outpost, outpost →
            // upstream → subscriber) and one fsync: what no gateway that
            // stores before it sends can beat on this machine.
            let floor = hop * 2 + f;
            let _ = writeln!(
                s,
                "- p99 latency at {} readings/s within the floor (2 × one hop p99 + fsync p99 = {}) + 1 ms: {} ({})",
                thousands(o.rate),
                ms(Some(floor)),
                ms(Some(p)),
                verdict(p <= floor + Duration::from_millis(1))
            );
        }
        if let Some(b) = &op.backlog {
            let rate = b.stored as f64 / b.drain_secs.max(1e-9);
            let _ = writeln!(
                s,
                "- drain of a {} backlog ≥ 10,000 alerts/s: {} ({})",
                thousands(b.stored as f64),
                thousands(rate),
                verdict(b.drained && rate >= 10_000.0)
            );
        }
    }
    if !errors.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Errors:");
        for e in errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    s
}
