//! `[[serial]]`: lines from a serial port (an Arduino, an ESP32, an RS-485
//! adapter).
//!
//! Bytes go through a bounded [`LineSplitter`] (tokio's `LinesCodec` is
//! unbounded and gives up on invalid UTF-8). The port is closed and reopened
//! with capped backoff when it reports EOF (an unplugged USB adapter on
//! Linux reads `Ok(0)`, which would otherwise spin a core), when it errors,
//! when it is missing (at start or later), and when it has been silent for
//! `reopen_after_silence`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tracing::{debug, info, warn};

use super::SourceContext;
use super::lines::{Line, LineSplitter};
use crate::backoff::{Backoff, jitter};
use crate::cancel::sleep_or_cancel;
use crate::config::{FlowControl, LineSettings, Parity, SerialConfig};
use crate::payload::{self, ParseContext, ParseError};
use crate::reading::{Reading, wall_ms};

/// An open port that delivered data for this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

fn open(cfg: &SerialConfig) -> tokio_serial::Result<SerialStream> {
    open_port(&cfg.path, &cfg.line())
}

/// Opens `path` with the line settings (shared with Modbus RTU buses).
pub(super) fn open_port(path: &Path, line: &LineSettings) -> tokio_serial::Result<SerialStream> {
    let builder = tokio_serial::new(path.to_string_lossy(), line.baud)
        .data_bits(match line.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match line.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(if line.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(match line.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        });
    builder.open_native_async()
}

enum Closed {
    Cancelled,
    Eof,
    Error(std::io::Error),
    Silent,
}

pub async fn run(cfg: SerialConfig, ctx: SourceContext) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut splitter = LineSplitter::new(cfg.max_line);
    let mut opened_before = false;
    let mut warned_missing = false;
    loop {
        match open(&cfg) {
            Ok(port) => {
                if opened_before {
                    ctx.counters.reopens.fetch_add(1, Ordering::Relaxed);
                }
                opened_before = true;
                warned_missing = false;
                ctx.counters.connected.store(true, Ordering::Relaxed);
                info!(source = %cfg.name, path = %cfg.path.display(), baud = cfg.baud, "serial port open");
                let started = tokio::time::Instant::now();
                let closed = read_port(&cfg, &ctx, port, &mut splitter).await;
                ctx.counters.connected.store(false, Ordering::Relaxed);
                let dropped = splitter.reset();
                if dropped > 0 {
                    debug!(source = %cfg.name, bytes = dropped, "partial line dropped at close");
                }
                match closed {
                    Closed::Cancelled => return,
                    Closed::Eof => {
                        warn!(source = %cfg.name, path = %cfg.path.display(), "serial port closed (unplugged?); reopening")
                    }
                    Closed::Error(e) => {
                        warn!(source = %cfg.name, path = %cfg.path.display(), error = %e, "serial port error; reopening")
                    }
                    Closed::Silent => {
                        warn!(source = %cfg.name, path = %cfg.path.display(), "serial port silent too long; reopening")
                    }
                }
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
            }
            Err(e) => {
                if !warned_missing {
                    warn!(source = %cfg.name, path = %cfg.path.display(), error = %e, "cannot open serial port; retrying with backoff");
                    warned_missing = true;
                } else {
                    debug!(source = %cfg.name, error = %e, "serial port still unavailable");
                }
            }
        }
        if sleep_or_cancel(backoff.next_delay(jitter()), &ctx.cancel).await {
            return;
        }
    }
}

/// The readings of one line (without its terminator). Pure.
pub fn readings_from_line(
    cfg: &SerialConfig,
    line: &[u8],
    received_ms: i64,
    out: &mut Vec<Reading>,
) -> Result<usize, ParseError> {
    let pctx = ParseContext {
        default_sensor: Some(&cfg.sensor),
        columns: &cfg.columns,
        metric: "value",
        received_ms,
    };
    let before = out.len();
    payload::parse(cfg.format, line, &pctx, out)?;
    Ok(out.len() - before)
}

async fn read_port(
    cfg: &SerialConfig,
    ctx: &SourceContext,
    mut port: SerialStream,
    splitter: &mut LineSplitter,
) -> Closed {
    let mut buf = vec![0u8; 4096];
    let mut readings = Vec::new();
    let silence = cfg.reopen_after_silence;
    loop {
        let read = async {
            match silence {
                Some(d) => tokio::time::timeout(d, port.read(&mut buf)).await.ok(),
                None => Some(port.read(&mut buf).await),
            }
        };
        let n = tokio::select! {
            _ = ctx.cancel.cancelled() => return Closed::Cancelled,
            r = read => match r {
                None => return Closed::Silent,
                Some(Ok(0)) => return Closed::Eof,
                Some(Ok(n)) => n,
                Some(Err(e)) => return Closed::Error(e),
            },
        };
        let received_ms = wall_ms();
        splitter.push(&buf[..n], |line| match line {
            Line::Complete(bytes) => {
                let result = readings_from_line(cfg, bytes, received_ms, &mut readings);
                ctx.count(result, bytes, &readings);
            }
            Line::TooLong { len } => ctx.bad_input(
                "too_long",
                &format!(
                    "line of {len} bytes is longer than max_line ({})",
                    cfg.max_line
                ),
                b"",
            ),
        });
        if !ctx.send(&mut readings).await {
            return Closed::Cancelled;
        }
    }
}
