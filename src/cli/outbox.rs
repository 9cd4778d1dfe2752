//! `outpost outbox list | export | purge`: the outbox of a stopped gateway.
//!
//! They open the outbox the gateway uses (`state_dir/outbox`); the lock on
//! its checkpoint store makes them refuse plainly while the gateway runs,
//! rather than read files that are changing under them.

use std::io::Write;

use super::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK, OutboxCommand};
use crate::alert::rfc3339_ms;
use crate::config::Config;
use crate::outbox::{Outbox, OutboxError, OutboxEvent, Record};

pub fn run(cmd: OutboxCommand) -> u8 {
    let (config_path, what) = match &cmd {
        OutboxCommand::List(a) => (&a.config, "list"),
        OutboxCommand::Export(a) => (&a.config, "export"),
        OutboxCommand::Purge(a) => (&a.config, "purge"),
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(diags) => {
            for d in diags.iter() {
                eprintln!("{d}");
            }
            return EXIT_INVALID;
        }
    };
    let dir = &config.gateway.state_dir;
    if !dir.join("outbox").exists() {
        eprintln!(
            "outpost outbox {what}: no outbox at {} (has the gateway run with this state_dir?)",
            dir.join("outbox").display()
        );
        return EXIT_FAILURE;
    }
    let outbox = match Outbox::open(dir) {
        Ok((o, events)) => {
            for e in events {
                eprintln!("{e}");
            }
            o
        }
        Err(e @ OutboxError::Locked { .. }) => {
            eprintln!("outpost outbox {what}: {e}; stop it first (systemctl stop outpost)");
            return EXIT_FAILURE;
        }
        Err(e) => {
            eprintln!("outpost outbox {what}: {e}");
            return EXIT_FAILURE;
        }
    };
    let result = match cmd {
        OutboxCommand::List(_) => list(&outbox, &mut std::io::stdout().lock()),
        OutboxCommand::Export(_) => export(&outbox, &mut std::io::stdout().lock()),
        OutboxCommand::Purge(_) => outbox.purge().map_err(|e| e.to_string()).map(|n| {
            println!(
                "purged {n} alert{} from {}",
                plural(n),
                outbox.path().display()
            )
        }),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("outpost outbox {what}: {e}");
            EXIT_FAILURE
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Pages through the outbox without holding it all in memory.
fn each(outbox: &Outbox, mut f: impl FnMut(&Record) -> Result<(), String>) -> Result<(), String> {
    let mut cursor = None;
    loop {
        let page = outbox.after(cursor, 1024).map_err(|e| e.to_string())?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        cursor = Some(last.seq);
        for r in &page {
            f(r)?;
        }
    }
}

/// JSON lines: the payloads exactly as they will be published.
pub fn export(outbox: &Outbox, out: &mut impl Write) -> Result<(), String> {
    each(outbox, |r| {
        out.write_all(&r.payload)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| e.to_string())
    })?;
    out.flush().map_err(|e| e.to_string())
}

/// A table of the waiting alerts, then counters and pending events.
pub fn list(outbox: &Outbox, out: &mut impl Write) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    writeln!(
        out,
        "{:>8}  {:<24}  {:<8}  {:<8}  {:<20}  {:<24}  {:>6}",
        "SEQ", "CREATED", "SEVERITY", "STATE", "RULE", "SENSOR", "BYTES"
    )
    .map_err(io)?;
    each(outbox, |r| {
        let (state, rule, sensor) = match r.alert() {
            Ok(a) => (a.state.to_string(), a.rule, a.sensor),
            Err(_) => ("?".into(), "(unreadable)".into(), String::new()),
        };
        writeln!(
            out,
            "{:>8}  {:<24}  {:<8}  {:<8}  {:<20}  {:<24}  {:>6}",
            r.seq,
            rfc3339_ms(r.created_ms),
            r.severity,
            state,
            rule,
            sensor,
            r.payload.len()
        )
        .map_err(io)
    })?;
    let s = outbox.stats();
    writeln!(out).map_err(io)?;
    writeln!(
        out,
        "{} alert{} waiting, {} bytes, next seq {}, database {} ({})",
        s.depth,
        plural(s.depth),
        s.bytes,
        s.next_seq,
        outbox.db_id(),
        outbox.path().display()
    )
    .map_err(io)?;
    writeln!(
        out,
        "dropped by the bound, ever: {} (info {}, warning {}, critical {})",
        s.dropped.total(),
        s.dropped.info,
        s.dropped.warning,
        s.dropped.critical
    )
    .map_err(io)?;
    let events = outbox.events().map_err(|e| e.to_string())?;
    writeln!(out, "events waiting to be published: {}", events.len()).map_err(io)?;
    for (n, e) in events {
        let line = match &e {
            OutboxEvent::Dropped { count, seqs, .. } => {
                format!("dropped {count} (seqs {})", ranges(&seqs.ranges))
            }
            OutboxEvent::Purged { count, seqs, .. } => {
                format!("purged {count} (seqs {})", ranges(&seqs.ranges))
            }
            OutboxEvent::DatabaseReplaced { moved_to, .. } => {
                format!("database replaced (old one at {moved_to})")
            }
            OutboxEvent::Lost {
                count,
                seqs,
                after_seq,
                ..
            } => {
                let after = after_seq
                    .map(|s| format!(", maybe more after seq {s}"))
                    .unwrap_or_default();
                format!(
                    "lost {count} to damage (seqs {}{after})",
                    ranges(&seqs.ranges)
                )
            }
            OutboxEvent::Unstored { count, .. } => {
                format!("{count} alert(s) could not be stored")
            }
        };
        writeln!(out, "  e{n}: {line}").map_err(io)?;
    }
    Ok(())
}

fn ranges(r: &[[u64; 2]]) -> String {
    let parts: Vec<String> = r
        .iter()
        .map(|[a, b]| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::AlertDraft;

    #[test]
    fn ranges_print_compactly() {
        assert_eq!(ranges(&[[1, 1], [3, 7]]), "1, 3-7");
    }

    #[test]
    fn export_and_list_page_through_every_alert() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap().0;
        let drafts: Vec<_> = (0..2500).map(AlertDraft::for_test).collect();
        o.push("gw", &drafts, &[], crate::reading::Clock::new().now())
            .unwrap();
        let mut buf = Vec::new();
        export(&o, &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, (1..=2500).collect::<Vec<_>>());
        let mut buf = Vec::new();
        list(&o, &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.contains("  warning  ")).count(),
            2500
        );
        assert!(text.contains("2500 alerts waiting"), "{text}");
        assert!(text.contains("next seq 2501"), "{text}");
    }

    #[test]
    fn an_oversized_alert_is_exported_as_it_will_be_published() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap().0;
        o.set_bounds(crate::outbox::Bounds {
            max_payload: 2048,
            ..crate::outbox::Bounds::DEFAULT
        });
        let mut d = AlertDraft::for_test(1);
        d.message = "é".repeat(5000);
        let created = o
            .push(
                "gw",
                std::slice::from_ref(&d),
                &[],
                crate::reading::Clock::new().now(),
            )
            .unwrap();
        let mut buf = Vec::new();
        export(&o, &mut buf).unwrap();
        let line = buf.strip_suffix(b"\n").unwrap();
        assert!(line.len() <= 2048, "{}", line.len());
        // The cut the upstream would otherwise make, made once, at push.
        assert_eq!(line, created[0].to_payload(2048).as_slice());
        assert_eq!(line, o.waiting().oldest.unwrap().payload.as_slice());
    }
}
