//! End-to-end outbox measurements, with numbers for the README/issue:
//!
//! 1. durable alerts/s with `flush = "always"`: one flush per alert (no
//!    grouping) vs group commit (64 alerts share a flush), and with a 1 s
//!    flush period; bytes written to disk per alert (`/proc/self/io`);
//! 2. RSS of the real `outpost run` with 100,000 alerts waiting;
//! 3. drain rate of that backlog to a local Mosquitto through the real
//!    upstream task (QoS 1, window of 64, removed on PUBACK).
//!
//! ```sh
//! cargo build --release --examples --bin outpost
//! mosquitto -p 18830 &   # any local broker
//! target/release/examples/outbox_bench --broker mqtt://127.0.0.1:18830 --bin target/release/outpost
//! # RSS of the drain alone (a fresh process):
//! target/release/examples/outbox_bench --broker mqtt://127.0.0.1:18830 --skip-rates
//! ```
//!
//! Uses a temporary folder on the same disk as `$TMPDIR`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost::config::Config;
use outpost::outbox::Outbox;
use outpost::rules::{AlertDraft, AlertState, Reason, Severity};
use outpost::telemetry::Telemetry;
use outpost::upstream::Upstream;

/// Stores `backlog` alerts in pushes of 1,000, then flushes.
fn fill(o: &Outbox, backlog: u64) -> anyhow::Result<()> {
    let mut n = 0;
    while n < backlog {
        let k = 1000.min(backlog - n);
        let drafts: Vec<_> = (0..k).map(|i| draft(n + i)).collect();
        o.push("bench", &drafts, &[], outpost::reading::Clock::new().now())?;
        n += k;
    }
    o.flush_blocking()?;
    Ok(())
}

fn draft(i: u64) -> AlertDraft {
    AlertDraft {
        rule: "greenhouse-hot".into(),
        sensor: format!("greenhouse/t{}", i % 16),
        metric: "temperature".into(),
        state: if i.is_multiple_of(2) {
            AlertState::Firing
        } else {
            AlertState::Resolved
        },
        severity: Severity::Critical,
        value: 31.2,
        threshold: 30.0,
        ts_ms: 1_800_000_000_000 + i as i64,
        since_ms: 1_800_000_000_000,
        message: format!("greenhouse/t{} is 31.2°C, above 30°C", i % 16),
        labels: [("room".to_string(), "greenhouse".to_string())].into(),
        actions: Vec::new(),
        reason: Reason::Transition,
    }
}

/// (read_bytes, write_bytes, wchar) of this process.
fn io() -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("read_bytes:"), get("write_bytes:"), get("wchar:"))
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Rate {
    alerts: u64,
    secs: f64,
    flushes: u64,
    disk_bytes: u64,
    wchar: u64,
}

/// Pushes batches of `group` alerts for `dur`; flushes after each batch
/// (`period` None) or every `period`.
fn durable_rate(dir: &Path, group: usize, period: Option<Duration>, dur: Duration) -> Rate {
    let o = Outbox::open(dir).expect("open").0;
    let (_, w0, c0) = io();
    let t0 = Instant::now();
    let mut last_flush = t0;
    let mut n = 0u64;
    let mut flushes = 0;
    while t0.elapsed() < dur {
        let drafts: Vec<_> = (0..group as u64).map(|i| draft(n + i)).collect();
        o.push("bench", &drafts, &[], outpost::reading::Clock::new().now())
            .expect("push");
        n += group as u64;
        match period {
            None => {
                o.flush_blocking().expect("flush");
                flushes += 1;
            }
            Some(p) if last_flush.elapsed() >= p => {
                o.flush_blocking().expect("flush");
                flushes += 1;
                last_flush = Instant::now();
            }
            Some(_) => {}
        }
    }
    o.flush_blocking().expect("flush");
    let secs = t0.elapsed().as_secs_f64();
    let (_, w1, c1) = io();
    Rate {
        alerts: n,
        secs,
        flushes,
        disk_bytes: w1 - w0,
        wchar: c1 - c0,
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let broker = arg("--broker");
    let bin = arg("--bin");
    let backlog: u64 = arg("--backlog")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let root = tempfile::tempdir()?;
    if let Some(dir) = arg("--fill") {
        // Only write a backlog into DIR (for probing by hand).
        let o = Outbox::open(Path::new(&dir))?.0;
        fill(&o, backlog)?;
        return Ok(());
    }

    let rates = if args.iter().any(|a| a == "--skip-rates") {
        vec![]
    } else {
        vec![
            ("flush=always, 1 alert per flush", 1, None),
            ("flush=always, group commit of 64", 64, None),
            (
                "flush=\"1s\", pushes of 1 alert",
                1,
                Some(Duration::from_secs(1)),
            ),
            (
                "flush=\"1s\", pushes of 64 alerts",
                64,
                Some(Duration::from_secs(1)),
            ),
        ]
    };
    if !rates.is_empty() {
        println!("## durable alerts/s (payload ~330 B, flush = fdatasync of the log)");
    }
    for (name, group, period) in rates {
        let dir = root
            .path()
            .join(format!("rate-{group}-{}", period.is_some()));
        let r = durable_rate(&dir, group, period, Duration::from_secs(3));
        println!(
            "{name:<36} {:>9.0} alerts/s  {:>7.1} flushes/s  disk {:>6.0} B/alert  write() {:>6.0} B/alert",
            r.alerts as f64 / r.secs,
            r.flushes as f64 / r.secs,
            r.disk_bytes as f64 / r.alerts as f64,
            r.wchar as f64 / r.alerts as f64,
        );
    }

    // A gateway state dir with the backlog.
    let gw = root.path().join("gw");
    std::fs::create_dir_all(&gw)?;
    let state = gw.join("state");
    {
        let o = Outbox::open(&state)?.0;
        let rss0 = status_kib(std::process::id(), "VmRSS:");
        let t0 = Instant::now();
        fill(&o, backlog)?;
        println!(
            "\n## backlog: {backlog} alerts, {} payload bytes, outbox on disk {} bytes, written in {:.2} s; \
             RSS of the writing process {} -> {} KiB",
            o.bytes(),
            o.size_on_disk(),
            t0.elapsed().as_secs_f64(),
            rss0,
            status_kib(std::process::id(), "VmRSS:")
        );
    }
    std::fs::write(
        gw.join("rules.toml"),
        "[[rule]]\nid = \"never\"\nsensor = \"nothing\"\nmetric = \"x\"\nabove = 1e300\n",
    )?;
    let url = broker
        .clone()
        .unwrap_or_else(|| "mqtt://127.0.0.1:1".into());
    std::fs::write(
        gw.join("outpost.toml"),
        format!(
            "[gateway]\nid = \"bench\"\nstate_dir = \"state\"\nrules = [\"rules.toml\"]\n\
             [upstream]\nurl = \"{url}\"\n[outbox]\nmax_bytes = \"1GiB\"\n[http]\nlisten = \"\"\n"
        ),
    )?;

    if let Some(bin) = bin {
        // The real binary, upstream unreachable, the backlog waiting.
        let offline = gw.join("offline.toml");
        std::fs::write(
            &offline,
            std::fs::read_to_string(gw.join("outpost.toml"))?.replace(&url, "mqtt://127.0.0.1:1"),
        )?;
        let mut child = std::process::Command::new(&bin)
            .args(["run", "--config"])
            .arg(&offline)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(4));
        let pid = child.id();
        println!(
            "## outpost run with {backlog} alerts waiting: VmRSS {} KiB, VmHWM {} KiB",
            status_kib(pid, "VmRSS:"),
            status_kib(pid, "VmHWM:")
        );
        // SAFETY: kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let _ = child.wait();
    }

    let Some(_) = broker else {
        println!("(no --broker: drain not measured)");
        return Ok(());
    };
    let config = Config::load(&gw.join("outpost.toml")).map_err(|d| {
        anyhow::anyhow!(
            "config: {:?}",
            d.iter().map(|x| x.to_string()).collect::<Vec<_>>()
        )
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let outbox = Arc::new(Outbox::open(&state)?.0);
        let depth0 = outbox.depth();
        let (_tx, durable) = tokio::sync::watch::channel(outbox.next_seq() - 1);
        let telemetry = Arc::new(Telemetry::new());
        let up = Upstream {
            gateway: "bench".into(),
            cfg: config.upstream.clone().expect("upstream configured"),
            outbox: outbox.clone(),
            durable,
            telemetry: telemetry.clone(),
            remote: None,
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let (_, w0, _) = io();
        let t0 = Instant::now();
        let task = tokio::spawn(up.run(cancel.clone()));
        while outbox.depth() > 0 && t0.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let (_, w1, _) = io();
        let drained = depth0 - outbox.depth();
        println!(
            "## drain to {}: {drained} alerts in {secs:.2} s = {:.0} alerts/s; disk writes {:.0} B/alert; RSS after {} KiB (peak {} KiB)",
            config.upstream.as_ref().map(|u| u.broker.url.to_string()).unwrap_or_default(),
            drained as f64 / secs,
            (w1 - w0) as f64 / drained.max(1) as f64,
            status_kib(std::process::id(), "VmRSS:"),
            status_kib(std::process::id(), "VmHWM:"),
        );
        cancel.cancel();
        let _ = task.await;
        anyhow::Ok(())
    })?;
    Ok(())
}
