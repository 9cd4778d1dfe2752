//! The HTTP endpoint under a socket flood, through the real binary: with
//! its open-files limit lowered to 256, thousands of connections that send
//! half a request and hang (more than the 1,024 descriptors that a flood
//! of 2,000 once took entirely) must not take the descriptors the alerts
//! need. While they come, `/healthz` and `/metrics` answer promptly, the
//! upstream broker is restarted and reconnected, every alert arrives, and
//! the half-sent connections are closed by the gateway.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::fds::{nofile_soft, open_fds, raise_own_nofile, set_nofile};
use crate::harness::http::{get, sample, try_get};
use crate::harness::*;

/// The gateway's open-files limit during the flood.
const NOFILE: u64 = 256;
/// Connections the flood opens at least: more than the old 1,024 limit.
const FLOOD: usize = 2_000;
/// The gateway's connection limit and header timeout (`src/http/limits.rs`).
const LIMIT: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A probe of `/healthz` or `/metrics` must be answered within this.
const PROMPT: Duration = Duration::from_secs(2);

const HALF_REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n";

/// What the flood thread has done.
#[derive(Default)]
struct FloodCount {
    opened: AtomicUsize,
    /// Connections the gateway closed (EOF or reset seen).
    closed_by_gateway: AtomicUsize,
    connect_errors: AtomicUsize,
    stop: AtomicBool,
}

/// True once the peer has closed `s` (non-blocking; what it sent before,
/// e.g. a 503, is read and ignored).
fn closed_by_peer(mut s: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Opens connections that send half a request and hang, about 2,000 a
/// second, until told to stop; drops those the gateway closed. Returns
/// the ones still open.
fn flood(addr: SocketAddr, count: Arc<FloodCount>) -> Vec<TcpStream> {
    let mut open: Vec<TcpStream> = Vec::new();
    while !count.stop.load(Ordering::Relaxed) {
        for _ in 0..20 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(mut s) => {
                    // The gateway may already have closed it: not an error.
                    let _ = s.write_all(HALF_REQUEST);
                    s.set_nonblocking(true).unwrap();
                    open.push(s);
                    count.opened.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    count.connect_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let before = open.len();
        open.retain(|s| !closed_by_peer(s));
        count
            .closed_by_gateway
            .fetch_add(before - open.len(), Ordering::Relaxed);
        // Pacing, not synchronisation: ~2,000 connections a second.
        thread::sleep(Duration::from_millis(10));
    }
    open
}

/// What the probe thread saw.
#[derive(Default)]
struct Probes {
    answered: usize,
    failures: Vec<String>,
    slowest: Duration,
    max_fds: usize,
}

/// Every 100 ms GETs `/healthz` and `/metrics`; every 10 ms counts the
/// gateway's file descriptors; until `stop`.
fn probe(port: u16, pid: u32, stop: Arc<AtomicBool>) -> Probes {
    let mut p = Probes::default();
    let mut round = 0u32;
    while !stop.load(Ordering::Relaxed) {
        p.max_fds = p.max_fds.max(open_fds(pid));
        if round.is_multiple_of(10) {
            for path in ["/healthz", "/metrics"] {
                let t0 = Instant::now();
                let r = try_get(port, path);
                let took = t0.elapsed();
                p.slowest = p.slowest.max(took);
                match r {
                    Ok(r) if r.status == 200 && took <= PROMPT => p.answered += 1,
                    Ok(r) => p
                        .failures
                        .push(format!("{path}: {} after {took:?}", r.status)),
                    Err(e) => p.failures.push(format!("{path}: {e} after {took:?}")),
                }
            }
        }
        round += 1;
        // Pacing of the samples, not synchronisation.
        thread::sleep(Duration::from_millis(10));
    }
    p
}

fn metric(port: u16, series: &str) -> f64 {
    let m = get(port, "/metrics");
    sample(&m.body, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", m.body))
}

/// Sensors `f{from}..f{to}` go above 30: one firing alert each.
fn fire(rig: &mut SerialRig, from: usize, to: usize) {
    for i in from..to {
        rig.pty.write_line(&reading(&format!("f{i}"), 35.0));
    }
}

#[test]
fn a_socket_flood_leaves_the_alerts_their_descriptors_and_is_closed_by_timeout() {
    // The flood's sockets live on this side too, until the gateway closes them.
    raise_own_nofile(8192);
    let mut rig = SerialRig::start_with(Launch::default().http(), |c| c);
    let port = rig.gw.http_port();
    let pid = rig.gw.pid();
    rig.alert(&reading("warm", 40.0), "warm", "firing");
    set_nofile(pid, NOFILE);
    assert_eq!(nofile_soft(pid), Some(NOFILE));
    let baseline = open_fds(pid);
    assert_eq!(metric(port, "outpost_http_connections_limit"), LIMIT as f64);

    let count = Arc::new(FloodCount::default());
    let stop_probes = Arc::new(AtomicBool::new(false));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let flooder = {
        let count = count.clone();
        thread::spawn(move || flood(addr, count))
    };
    let prober = {
        let stop = stop_probes.clone();
        thread::spawn(move || probe(port, pid, stop))
    };
    poll_until(WAIT, "the flood under way", || {
        (count.opened.load(Ordering::Relaxed) >= 300).then_some(())
    });

    // Alerts while the flood goes on: some delivered at once, some made
    // while the upstream broker is down, some after it is back.
    fire(&mut rig, 0, 10);
    rig.up.stop();
    rig.gw.wait_log(WAIT, "upstream link lost");
    fire(&mut rig, 10, 30);
    rig.gw.wait_created(1 + 30);
    rig.up.start_again();
    poll_until(WAIT, "the upstream reconnected during the flood", || {
        (rig.gw.run_log().matches("upstream connected").count() >= 2).then_some(())
    });
    fire(&mut rig, 30, 40);
    let want: BTreeSet<String> = (0..40).map(|i| format!("f{i}")).collect();
    rig.sub.wait_until(WAIT, "all 40 alerts", |msgs| {
        let got: BTreeSet<String> = dedup_alerts(msgs)
            .iter()
            .filter_map(|v| v["sensor"].as_str().map(str::to_string))
            .filter(|s| s.starts_with('f'))
            .collect();
        (got == want).then_some(())
    });
    poll_until(WAIT, "the whole flood sent", || {
        (count.opened.load(Ordering::Relaxed) >= FLOOD).then_some(())
    });

    count.stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    let mut left = flooder.join().unwrap();
    stop_probes.store(true, Ordering::Relaxed);
    let probes = prober.join().unwrap();
    let opened = count.opened.load(Ordering::Relaxed);
    let closed_during = count.closed_by_gateway.load(Ordering::Relaxed);
    let still_open = left.len();

    // The half-sent connections still open are closed by the header timeout.
    let deadline = stopped + HEADER_TIMEOUT + Duration::from_secs(3);
    while !left.is_empty() {
        left.retain(|s| !closed_by_peer(s));
        assert!(
            Instant::now() < deadline,
            "{} half-sent connections still open {:?} after the flood stopped",
            left.len(),
            stopped.elapsed()
        );
        thread::sleep(POLL);
    }
    let all_closed_after = stopped.elapsed();

    eprintln!(
        "flood: {opened} connections ({} connect errors), {closed_during} closed by the gateway \
         during it, {still_open} open when it stopped, the last closed {all_closed_after:?} \
         after; gateway fds: {baseline} before, at most {} during (limit {NOFILE}); \
         {} probes answered, slowest {:?}",
        count.connect_errors.load(Ordering::Relaxed),
        probes.max_fds,
        probes.answered,
        probes.slowest,
    );
    assert!(probes.failures.is_empty(), "{:#?}", probes.failures);
    assert!(probes.answered >= 4, "{} probes answered", probes.answered);
    assert!(opened >= FLOOD);
    assert!(
        probes.max_fds <= baseline + LIMIT + 8,
        "the gateway had {} fds open (baseline {baseline})",
        probes.max_fds
    );
    let log = rig.gw.run_log();
    assert!(!log.contains("os error 24"), "EMFILE in the gateway's log");
    assert!(log.contains("HTTP: connection limit reached"), "no warning");

    let evicted = metric(
        port,
        r#"outpost_http_connections_closed_total{reason="evicted"}"#,
    );
    let timed_out = metric(
        port,
        r#"outpost_http_connections_closed_total{reason="timeout"}"#,
    );
    // Every flood connection was closed by the gateway: to make room for a
    // newer one, or by the timeout.
    assert!(
        evicted + timed_out >= opened as f64,
        "{evicted} evicted + {timed_out} timed out < {opened}"
    );
    assert!(timed_out >= 1.0, "{timed_out} timed out");
    assert!(metric(port, "outpost_http_connections_accepted_total") >= opened as f64);
    assert!(metric(port, "outpost_upstream_reconnects_total") >= 1.0);
    // Only this scrape's own connection (and perhaps a probe's lingering
    // close) remain.
    assert!(metric(port, "outpost_http_connections") <= 2.0);
    rig.gw.stop();
}
