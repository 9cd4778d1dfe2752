//! A fault-injecting TCP proxy (tokio) to put between the gateway and its
//! upstream broker: what a flaky cellular link, a NAT that forgets a
//! connection, or a broker host that vanishes looks like from the gateway.
//!
//! - `cut()`: every current connection is reset (both sides closed).
//! - `blackhole()`: every current connection goes silent: bytes in either
//!   direction are read and thrown away, the sockets stay open. The gateway
//!   sees a half-open link: writes succeed, nothing ever comes back. New
//!   connections pass normally.
//! - `refuse(true)`: new connections are closed at once (broker unreachable).
//! - `throttle(Some(bytes_per_s))`: slows both directions (a slow uplink), so
//!   a drain takes long enough to break something in the middle of it.
//!
//! Each proxied connection is one tokio task per direction on the proxy's
//! own runtime; dropping the proxy stops it and closes everything.

#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Conn {
    blackholed: Arc<AtomicBool>,
    cut: watch::Sender<bool>,
}

#[derive(Default)]
struct Shared {
    refuse: AtomicBool,
    throttle: AtomicU64,
    accepted: AtomicU64,
    conns: Mutex<Vec<Conn>>,
}

pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to 127.0.0.1:`upstream_port`.
    pub fn start(upstream_port: u16) -> FaultProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let std_listener = StdListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = std_listener.local_addr().unwrap().port();
        std_listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        rt.spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("tokio listener");
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                s.accepted.fetch_add(1, Ordering::SeqCst);
                if s.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    drop(client);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let blackholed = Arc::new(AtomicBool::new(false));
                let (cut_tx, cut_rx) = watch::channel(false);
                s.conns.lock().unwrap().push(Conn {
                    blackholed: blackholed.clone(),
                    cut: cut_tx,
                });
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, blackholed.clone(), cut_rx.clone(), s.clone()));
                tokio::spawn(pump(sr, cw, blackholed, cut_rx, s.clone()));
            }
        });
        FaultProxy {
            port,
            shared,
            rt: Some(rt),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Resets every current connection.
    pub fn cut(&self) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.cut.send(true);
        }
    }

    /// Makes every current connection a black hole (sockets stay open).
    pub fn blackhole(&self) {
        for c in self.shared.conns.lock().unwrap().iter() {
            c.blackholed.store(true, Ordering::SeqCst);
        }
    }

    /// While on, new connections are closed at once.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// Limits each direction of each connection to `bytes_per_s`.
    pub fn throttle(&self, bytes_per_s: Option<u64>) {
        self.shared
            .throttle
            .store(bytes_per_s.unwrap_or(0), Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackholed: Arc<AtomicBool>,
    mut cut: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let rate = shared.throttle.load(Ordering::SeqCst);
        // Small reads when throttled, so the rate is smooth.
        let max = if rate > 0 {
            (rate / 20).clamp(64, buf.len() as u64) as usize
        } else {
            buf.len()
        };
        let n = tokio::select! {
            r = from.read(&mut buf[..max]) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = cut.changed() => break,
        };
        if blackholed.load(Ordering::SeqCst) {
            continue; // the bytes vanish; the socket stays open
        }
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // One side ended or the link was cut: close the other side too.
    let _ = to.shutdown().await;
}
