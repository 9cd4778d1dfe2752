//! What the rule engine's state costs in memory: bytes per pair and per
//! window sample, as heap (a counting allocator) and as RSS.
//!
//! ```sh
//! cargo run --release --example engine_memory
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use outpost::reading::{Now, Reading};
use outpost::rules::{Aggregate, Condition, Engine, Limits, OnMaxPairs, Rule};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        // SAFETY: forwarded as given.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        grew(new);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// (RSS now, RSS at its highest), bytes.
fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| -> usize {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:") * 1024, kib("VmHWM:") * 1024)
}

fn rule(id: &str, condition: Condition, aggregate: Option<(Aggregate, u64)>) -> Rule {
    Rule {
        aggregate,
        ..Rule::plain(id, "*", "temperature", condition)
    }
}

fn now(t: u64) -> Now {
    Now {
        mono_ms: t,
        wall_ms: 1_700_000_000_000 + t as i64,
    }
}

/// A sensor id like the random topics of a flood (`flood/<16 hex>`).
fn sensor(i: u64) -> String {
    format!("flood/{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn reading(i: u64) -> Reading {
    Reading {
        sensor: sensor(i),
        metric: "temperature".into(),
        value: 20.0,
        ts_ms: 0,
    }
}

fn silent() -> Rule {
    rule(
        "quiet",
        Condition::Silent {
            after_ms: 3_600_000,
        },
        None,
    )
}

fn avg_1h() -> Rule {
    let above = Condition::Above {
        threshold: 1e9,
        clear: None,
    };
    rule("avg", above, Some((Aggregate::Avg, 3_600_000)))
}

/// Limits that do not get in the way of a measurement.
fn unbounded() -> Limits {
    Limits {
        max_pairs: 10_000_000,
        on_max_pairs: OnMaxPairs::Evict,
        max_samples: 1_000_000_000,
        max_samples_per_pair: 10_000_000,
    }
}

/// Builds the engine of scenario `name`; returns it, how many units (pairs
/// or samples) it holds, and their name.
fn scenario(name: &str) -> Option<(Engine, usize, &'static str)> {
    let mut out = Vec::new();
    Some(match name {
        "silent-pairs" => {
            // A silence watch per sensor: a pair with no samples.
            let mut e = Engine::with_limits(vec![silent()], unbounded());
            for i in 0..100_000 {
                e.on_reading(&reading(i), now(i), &mut out);
            }
            let n = e.stats().pairs;
            (e, n, "pair")
        }
        "window-pairs" => {
            // A 1 h avg window per sensor, one sample each.
            let mut e = Engine::with_limits(vec![avg_1h()], unbounded());
            for i in 0..100_000 {
                e.on_reading(&reading(i), now(i), &mut out);
            }
            let n = e.stats().pairs;
            (e, n, "pair")
        }
        "samples" => {
            // 100 sensors x 10,000 samples in a 1 h avg window.
            let mut e = Engine::with_limits(vec![avg_1h()], unbounded());
            for k in 0..10_000 {
                for s in 0..100 {
                    e.on_reading(&reading(s), now(k * 100 + s), &mut out);
                }
            }
            let n = e.stats().samples;
            (e, n, "sample")
        }
        "limits" => {
            // The default limits, both reached: a flood of 200,000 sensor
            // ids against a silent and a 1 h avg rule, then 50 sensors
            // sending 20,000 readings each into their windows.
            let mut e = Engine::with_limits(vec![silent(), avg_1h()], Limits::default());
            for i in 0..200_000 {
                e.on_reading(&reading(i), now(i), &mut out);
            }
            for k in 0..20_000 {
                for s in 0..50 {
                    e.on_reading(&reading(s), now(200_000 + k * 50 + s), &mut out);
                }
            }
            let n = e.stats().pairs;
            (e, n, "pair")
        }
        _ => return None,
    })
}

const SCENARIOS: [&str; 4] = ["silent-pairs", "window-pairs", "samples", "limits"];

fn main() {
    // Each scenario in a fresh process, so none reuses another's memory.
    let Some(name) = std::env::args().nth(1) else {
        let me = std::env::current_exe().expect("the path of this program");
        for name in SCENARIOS {
            let status = std::process::Command::new(&me).arg(name).status();
            assert!(status.is_ok_and(|s| s.success()), "{name} failed");
        }
        return;
    };
    let (h0, (r0, _)) = (LIVE.load(Ordering::Relaxed), rss());
    let Some((engine, n, unit)) = scenario(&name) else {
        eprintln!("unknown scenario {name}; one of {SCENARIOS:?}");
        std::process::exit(2);
    };
    let (h1, (r1, hwm)) = (LIVE.load(Ordering::Relaxed), rss());
    let (heap, rss) = (h1.saturating_sub(h0), r1.saturating_sub(r0));
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(h0);
    let mib = |b: usize| b as f64 / 1048576.0;
    let s = engine.stats();
    println!(
        "{name:<13} {:>5.1} MiB heap {:>5.1} MiB RSS ({:>5.1} and {:>5.1} at the peak) \
         {:>4} B/{unit} heap {:>4} B/{unit} RSS  \
         (pairs {}, samples {}, evicted {}, thinned {})",
        mib(heap),
        mib(rss),
        mib(peak),
        mib(hwm.saturating_sub(r0)),
        heap / n.max(1),
        rss / n.max(1),
        s.pairs,
        s.samples,
        s.pairs_evicted,
        s.samples_thinned,
    );
}
