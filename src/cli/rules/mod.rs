//! `outpost rules test` and `outpost rules replay`: the rule engine run over
//! files, with simulated time, no broker and no running gateway. The file
//! reading and printing live here, the rule unit test format in
//! [`testfile`]; the simulation is `rules::replay`.

mod push;
mod testfile;

pub use push::{PushArgs, keygen, push};

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use super::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK, print_diagnostics};
use crate::alert::Alert;
use crate::config;
use crate::payload::{self, Format, ParseContext};
use crate::reading::Reading;
use crate::rules::replay::Driver;

/// Runs every case of every file; prints PASS/FAIL per case with a diff.
pub fn test(files: &[PathBuf]) -> u8 {
    let (mut passed, mut failed, mut invalid) = (0usize, 0usize, false);
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", path.display());
                invalid = true;
                continue;
            }
        };
        let tf = match testfile::parse(path, &text) {
            Ok(tf) => tf,
            Err(d) => {
                print_diagnostics(&d);
                invalid = true;
                continue;
            }
        };
        let rules = match config::load_rules(&tf.rules) {
            Ok(r) => r,
            Err(d) => {
                print_diagnostics(&d);
                invalid = true;
                continue;
            }
        };
        println!("{}", path.display());
        for case in &tf.cases {
            let o = testfile::run_case(&rules, case);
            if o.passed {
                passed += 1;
                println!("  PASS {}", o.name);
            } else {
                failed += 1;
                println!("  FAIL {}", o.name);
                print!("{}", o.report);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if invalid {
        EXIT_INVALID
    } else if failed > 0 {
        EXIT_FAILURE
    } else {
        EXIT_OK
    }
}

/// One line of a recorded series.
fn parse_line(line: &str, out: &mut Vec<Reading>) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Canonical {
        sensor: String,
        metric: String,
        value: f64,
        ts: serde_json::Value,
    }
    if let Ok(c) = serde_json::from_str::<Canonical>(line) {
        // Reuse the payload parser's checks (finite value, valid ids, ts forms).
        let obj = serde_json::json!({ "sensor": c.sensor, "ts": c.ts, c.metric.clone(): c.value });
        let bytes = serde_json::to_vec(&obj).map_err(|e| e.to_string())?;
        return parse_payload(&bytes, out);
    }
    parse_payload(line.as_bytes(), out)
}

/// Marks "no ts in the line": replay needs the recorded times.
const NO_TS: i64 = i64::MIN;

fn parse_payload(bytes: &[u8], out: &mut Vec<Reading>) -> Result<(), String> {
    let ctx = ParseContext {
        default_sensor: None,
        columns: &[],
        metric: "value",
        received_ms: NO_TS,
    };
    let before = out.len();
    payload::parse(Format::Json, bytes, &ctx, out).map_err(|e| e.to_string())?;
    if out[before..].iter().any(|r| r.ts_ms == NO_TS) {
        out.truncate(before);
        return Err("no `ts`: a recorded reading needs its time".into());
    }
    Ok(())
}

/// Prints the alerts (JSON lines, the published payload format) that the
/// readings in `input` produce under `rules`.
pub fn replay(rules: &[PathBuf], input: &Path) -> u8 {
    let rules = match config::load_rules(rules) {
        Ok(r) => r,
        Err(d) => {
            print_diagnostics(&d);
            return EXIT_INVALID;
        }
    };
    let reader = match std::fs::File::open(input) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => {
            eprintln!("{}: cannot read: {e}", input.display());
            return EXIT_FAILURE;
        }
    };
    let mut readings = Vec::new();
    let mut bad = 0usize;
    for (i, line) in reader.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{}:{}: {e}", input.display(), i + 1);
                bad += 1;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Err(e) = parse_line(&line, &mut readings) {
            eprintln!("{}:{}: skipped: {e}", input.display(), i + 1);
            bad += 1;
        }
    }
    let Some(first) = readings.iter().map(|r| r.ts_ms).min() else {
        eprintln!("{}: no readings", input.display());
        return EXIT_FAILURE;
    };
    readings.sort_by_key(|r| r.ts_ms);
    let mut driver = Driver::new(rules, first);
    let mut out = Vec::new();
    let mut seq = 0u64;
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    for r in &readings {
        let at = u64::try_from(r.ts_ms - first).unwrap_or(0);
        driver.reading(r, at, &mut out);
        for d in out.drain(..) {
            seq += 1;
            let a = Alert::new(&d, "replay", "000000", seq);
            if serde_json::to_writer(&mut w, &a).is_err() || writeln!(w).is_err() {
                return EXIT_FAILURE;
            }
        }
    }
    let _ = w.flush();
    eprintln!(
        "{} readings, {seq} alerts, {bad} lines skipped",
        readings.len()
    );
    EXIT_OK
}
