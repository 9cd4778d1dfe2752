//! The wire: a Modbus RTU serial port or a Modbus TCP connection, one
//! request on it at a time.
//!
//! RTU has no transaction ids, so what arrives after a request is taken as
//! its answer only if [`check_rtu`] says it is one. Before each
//! request the port's input is flushed (a late answer to an earlier request
//! must not be taken for this one), the line must have been silent for 3.5
//! characters, and after any fault the bytes still coming are read and
//! thrown away until the line has been quiet for a while. The end of an
//! answer is found by its length (known from the request), not by timing
//! gaps, which USB adapters blur.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_serial::{ClearBuffer, SerialPort, SerialStream};
use tracing::debug;

use super::frame::{
    Fault, MAX_RTU_FRAME, Request, RtuCheck, TcpCheck, check_rtu, check_tcp, classify_unexpected,
    inter_frame, wire_time,
};
use crate::config::{LineSettings, ModbusConfig, ModbusLink};

/// Quiet time that ends a garbled or unexpected transmission: at least 3.5
/// characters, and never less than what a USB adapter's latency timer
/// (up to 16 ms) can hold bytes back.
const QUIET_FLOOR: Duration = Duration::from_millis(20);

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request gave no answer.
#[derive(Debug)]
pub enum Failure {
    /// The device's fault: counted, and the bus goes on.
    Fault(Fault),
    /// The port or connection is gone: reopen.
    Broken(io::Error),
}

/// An open bus.
pub enum Link {
    Rtu(Rtu),
    Tcp(Tcp),
}

impl Link {
    pub async fn open(cfg: &ModbusConfig) -> io::Result<Link> {
        match &cfg.link {
            ModbusLink::Rtu { path, line } => {
                let port = super::super::serial::open_port(path, line).map_err(io::Error::from)?;
                Ok(Link::Rtu(Rtu {
                    port,
                    line: *line,
                    buf: Vec::with_capacity(MAX_RTU_FRAME),
                    last: Instant::now(),
                    dirty: true,
                }))
            }
            ModbusLink::Tcp { host, port } => {
                let connect = TcpStream::connect((host.as_str(), *port));
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                stream.set_nodelay(true)?;
                Ok(Link::Tcp(Tcp {
                    stream,
                    transaction: 0,
                    buf: Vec::with_capacity(MAX_RTU_FRAME),
                }))
            }
        }
    }

    /// Sends `req` and waits for its answer's data, at most `timeout` (plus
    /// the time request and answer take on the wire).
    pub async fn transact(&mut self, req: &Request, timeout: Duration) -> Result<Vec<u8>, Failure> {
        match self {
            Link::Rtu(r) => r.transact(req, timeout).await,
            Link::Tcp(t) => t.transact(req, timeout).await,
        }
    }
}

/// A Modbus RTU master on a serial port.
pub struct Rtu {
    port: SerialStream,
    line: LineSettings,
    buf: Vec<u8>,
    /// When the line was last busy (a byte sent or received).
    last: Instant,
    /// Bytes may still be coming from an earlier exchange.
    dirty: bool,
}

fn broken(e: io::Error) -> Failure {
    Failure::Broken(e)
}

impl Rtu {
    async fn transact(&mut self, req: &Request, timeout: Duration) -> Result<Vec<u8>, Failure> {
        let quiet = inter_frame(&self.line).max(QUIET_FLOOR);
        if self.dirty {
            self.drain(quiet, timeout).await?;
            self.dirty = false;
        }
        // Whatever arrived since the last answer is not this request's answer.
        if let Err(e) = self.port.clear(ClearBuffer::Input) {
            debug!(error = %e, "cannot flush the serial input");
        }
        tokio::time::sleep_until(self.last + inter_frame(&self.line)).await;
        let request = req.rtu();
        self.port.write_all(&request).await.map_err(broken)?;
        let sent = Instant::now();
        let deadline = sent
            + wire_time(&self.line, request.len())
            + timeout
            + wire_time(&self.line, req.rtu_answer_len());
        self.last = sent;
        self.buf.clear();
        let mut chunk = [0u8; MAX_RTU_FRAME];
        loop {
            let n = match timeout_at(deadline, self.port.read(&mut chunk)).await {
                Err(_) => {
                    self.dirty = true;
                    return Err(Failure::Fault(if self.buf.is_empty() {
                        Fault::Timeout
                    } else {
                        Fault::BadFrame(format!(
                            "answer cut short: {} of {} bytes",
                            self.buf.len(),
                            req.rtu_answer_len()
                        ))
                    }));
                }
                Ok(Ok(0)) => {
                    return Err(broken(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "serial port closed (unplugged?)",
                    )));
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(broken(e)),
            };
            self.last = Instant::now();
            self.buf.extend_from_slice(&chunk[..n]);
            match check_rtu(req, &self.buf) {
                RtuCheck::Incomplete if self.buf.len() <= MAX_RTU_FRAME => {}
                RtuCheck::Incomplete => {
                    self.dirty = true;
                    return Err(Failure::Fault(Fault::BadCrc));
                }
                RtuCheck::Data(data) => {
                    // Bytes after the answer mean someone else is talking.
                    self.dirty = self.buf.len() > req.rtu_answer_len();
                    return Ok(data.to_vec());
                }
                RtuCheck::Fault(f) => {
                    self.dirty = true;
                    return Err(Failure::Fault(f));
                }
                RtuCheck::Unexpected => {
                    self.read_until_quiet(quiet, deadline).await?;
                    self.dirty = true;
                    return Err(Failure::Fault(classify_unexpected(req, &self.buf)));
                }
            }
        }
    }

    /// Reads into `buf` until nothing has come for `quiet` or `deadline`
    /// passes (a babbling device cannot hold the bus longer).
    async fn read_until_quiet(
        &mut self,
        quiet: Duration,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let mut chunk = [0u8; MAX_RTU_FRAME];
        loop {
            let until = (Instant::now() + quiet).min(deadline);
            match timeout_at(until, self.port.read(&mut chunk)).await {
                Err(_) => return Ok(()),
                Ok(Ok(0)) => {
                    return Err(broken(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "serial port closed (unplugged?)",
                    )));
                }
                Ok(Ok(n)) => {
                    self.last = Instant::now();
                    if self.buf.len() < 4 * MAX_RTU_FRAME {
                        self.buf.extend_from_slice(&chunk[..n]);
                    }
                }
                Ok(Err(e)) => return Err(broken(e)),
            }
        }
    }

    /// Throws away what is still coming until the line is quiet, for at
    /// most `cap`.
    async fn drain(&mut self, quiet: Duration, cap: Duration) -> Result<(), Failure> {
        self.buf.clear();
        self.read_until_quiet(quiet, Instant::now() + cap).await?;
        if !self.buf.is_empty() {
            debug!(bytes = self.buf.len(), "late bytes on the bus thrown away");
        }
        self.buf.clear();
        Ok(())
    }
}

/// A Modbus TCP client: answers are matched by transaction id, so a late
/// answer is recognised and skipped.
pub struct Tcp {
    stream: TcpStream,
    transaction: u16,
    buf: Vec<u8>,
}

impl Tcp {
    async fn transact(&mut self, req: &Request, timeout: Duration) -> Result<Vec<u8>, Failure> {
        self.transaction = self.transaction.wrapping_add(1);
        let tid = self.transaction;
        self.stream.write_all(&req.tcp(tid)).await.map_err(broken)?;
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 512];
        loop {
            match check_tcp(req, tid, &self.buf) {
                TcpCheck::Incomplete => {}
                TcpCheck::Data(data, n) => {
                    let data = data.to_vec();
                    self.buf.drain(..n);
                    return Ok(data);
                }
                TcpCheck::Skip(n) => {
                    self.buf.drain(..n);
                    debug!("late Modbus TCP answer skipped");
                    continue;
                }
                TcpCheck::Fault(f, n) => {
                    self.buf.drain(..n);
                    return Err(Failure::Fault(f));
                }
                TcpCheck::Desync(why) => {
                    return Err(broken(io::Error::new(io::ErrorKind::InvalidData, why)));
                }
            }
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(Failure::Fault(Fault::Timeout)),
                Ok(Ok(0)) => {
                    return Err(broken(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed by the device",
                    )));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(broken(e)),
            }
        }
    }
}
