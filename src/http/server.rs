//! The HTTP server: hyper's HTTP/1 connections over the axum router, with
//! the bounds of `limits` applied (a connection limit that keeps accepting,
//! the header-read and keep-alive timeout, a lifetime, the request size).
//!
//! One task drives the accept loop and every connection (a
//! `FuturesUnordered`, no task per connection): the endpoint can never take
//! more than one core from the pipeline, and the loop owns the table of
//! open connections without a lock. The handlers are short (atomics and one
//! outbox read), so serving them in turn costs nothing a scraper notices.
//!
//! File descriptors: the listener, at most `max_connections` connections,
//! and, at the limit, the one just accepted while the connection it
//! replaces closes. Nothing else.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::limits::{self, AcceptError, LogGate, Waiting};
use crate::backoff::{Backoff, jitter};

/// The server's counters, shown on `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// The connection limit in force (`limits::connection_limit`).
    pub limit: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Closed for not sending a complete request head in time (half-sent
    /// or idle).
    pub timed_out: AtomicU64,
    /// Closed at the limit to make room for a new connection.
    pub evicted: AtomicU64,
    /// Answered 503 and closed at the limit, every connection being busy.
    pub refused: AtomicU64,
    /// Closed at `MAX_LIFETIME`.
    pub expired: AtomicU64,
    /// Failed accepts (of any kind).
    pub accept_errors: AtomicU64,
}

/// The bounds a server runs with: `limits`' constants in the gateway,
/// shorter ones in tests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub lifetime: Duration,
    pub close_grace: Duration,
}

impl Limits {
    /// The gateway's: the constants, the connection limit fitted to this
    /// process's open-files limit.
    pub fn for_this_process() -> (Limits, Option<u64>) {
        let nofile = nofile_limit();
        let limits = Limits {
            max_connections: limits::connection_limit(nofile),
            header_timeout: limits::HEADER_TIMEOUT,
            lifetime: limits::MAX_LIFETIME,
            close_grace: limits::CLOSE_GRACE,
        };
        (limits, nofile)
    }
}

/// The soft `RLIMIT_NOFILE` (what `open` and `accept` fail against), or
/// `None` when unlimited or unreadable.
fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` into the valid, exclusively
    // borrowed `lim` and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    // `rlim_t` is 32 bits on 32-bit glibc targets (the armv7 build).
    #[allow(clippy::useless_conversion)]
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then(|| u64::from(lim.rlim_cur))
}

/// What one connection shares with the loop: whether a handler runs for
/// it, and since when it has waited for a request.
struct Activity {
    busy: AtomicBool,
    idle_since_ms: AtomicU64,
}

/// Milliseconds on the server's clock.
#[derive(Clone, Copy)]
struct Epoch(Instant);

impl Epoch {
    fn ms(self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Marks a connection busy while its handler runs (also when the handler
/// is dropped half-way).
struct Busy {
    activity: Arc<Activity>,
    epoch: Epoch,
}

impl Busy {
    fn start(activity: &Arc<Activity>, epoch: Epoch) -> Busy {
        activity.busy.store(true, Ordering::Relaxed);
        Busy {
            activity: activity.clone(),
            epoch,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.activity
            .idle_since_ms
            .store(self.epoch.ms(), Ordering::Relaxed);
        self.activity.busy.store(false, Ordering::Relaxed);
    }
}

/// The router as a hyper service for one connection.
#[derive(Clone)]
struct Handler {
    router: Router,
    activity: Arc<Activity>,
    epoch: Epoch,
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Handler {
    type Response = Response;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn call(&self, req: hyper::Request<Incoming>) -> HandlerFuture {
        let busy = Busy::start(&self.activity, self.epoch);
        if !req.body().is_end_stream() {
            // Only GETs are served: a body is never read, so it is refused
            // before it is sent (no `100 Continue`), and the connection is
            // closed rather than drained.
            drop(busy);
            let r = (
                StatusCode::PAYLOAD_TOO_LARGE,
                [(header::CONNECTION, "close")],
                "request bodies are not accepted\n",
            )
                .into_response();
            return Box::pin(std::future::ready(Ok(r)));
        }
        let mut router = self.router.clone();
        Box::pin(async move {
            let _busy = busy;
            tower_service::Service::call(&mut router, req).await
        })
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed, or asked to (`Connection: close`, HTTP/1.0).
    Closed,
    /// No complete request head within the header timeout.
    TimedOut,
    /// Closed at the limit for a new connection.
    Evicted,
    /// Lived `lifetime`.
    Expired,
    /// The gateway is stopping.
    Stopped,
    /// A protocol or I/O error (a malformed request, a reset).
    Failed,
}

/// One connection, to its end; dropping it (or returning) closes the socket.
async fn connection(
    id: u64,
    conn: http1::Connection<TokioIo<TcpStream>, Handler>,
    evict: CancellationToken,
    stop: CancellationToken,
    limits: Limits,
) -> (u64, End) {
    let mut conn = std::pin::pin!(conn);
    let end = tokio::select! {
        r = conn.as_mut() => match r {
            Ok(()) => End::Closed,
            Err(e) if e.is_timeout() => End::TimedOut,
            Err(e) => {
                debug!(error = %e, "HTTP connection failed");
                End::Failed
            }
        },
        () = evict.cancelled() => End::Evicted,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.close_grace, conn.as_mut()).await;
            End::Stopped
        }
        () = tokio::time::sleep(limits.lifetime) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.close_grace, conn.as_mut()).await;
            End::Expired
        }
    };
    (id, end)
}

/// What the loop keeps of an open connection.
struct Open {
    activity: Arc<Activity>,
    evict: CancellationToken,
    closing: bool,
}

/// What a refused connection is told (best effort: written if the socket
/// takes it at once, then closed).
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    content-type: text/plain\r\ncontent-length: 21\r\nretry-after: 1\r\n\
    connection: close\r\n\r\ntoo many connections\n";

/// Where connections come from: the listener (a seam for the tests of
/// the accept loop's backoff).
pub trait Accept: Send {
    fn accept(&mut self) -> impl Future<Output = std::io::Result<TcpStream>> + Send;
}

impl Accept for TcpListener {
    async fn accept(&mut self) -> std::io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Accepts and serves until `cancel`, then closes every connection
/// gracefully (each within `close_grace`).
pub async fn run(
    mut listener: impl Accept,
    router: Router,
    stats: Arc<ConnStats>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let epoch = Epoch(Instant::now());
    let max = limits.max_connections.max(1);
    stats.limit.store(max as u64, Ordering::Relaxed);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Panics below 8 KiB, hyper's minimum: MAX_REQUEST_HEAD is 8 KiB.
        .max_buf_size(limits::MAX_REQUEST_HEAD)
        .keep_alive(true);

    let mut open: HashMap<u64, Open> = HashMap::new();
    let mut conns = FuturesUnordered::new();
    let mut next_id: u64 = 0;
    // Accepted at the limit: waits for the connection it replaces to close.
    let mut pending: Option<TcpStream> = None;
    let mut paused_until: Option<tokio::time::Instant> = None;
    let mut backoff = Backoff::new(limits::ACCEPT_BACKOFF_MIN, limits::ACCEPT_BACKOFF_MAX);
    let mut limit_log = LogGate::new(limits::LOG_EVERY);
    let mut error_log = LogGate::new(limits::LOG_EVERY);

    loop {
        if conns.len() < max
            && let Some(stream) = pending.take()
        {
            let activity = Arc::new(Activity {
                busy: AtomicBool::new(false),
                idle_since_ms: AtomicU64::new(epoch.ms()),
            });
            let evict = CancellationToken::new();
            let handler = Handler {
                router: router.clone(),
                activity: activity.clone(),
                epoch,
            };
            let conn = builder.serve_connection(TokioIo::new(stream), handler);
            next_id += 1;
            open.insert(
                next_id,
                Open {
                    activity,
                    evict: evict.clone(),
                    closing: false,
                },
            );
            conns.push(connection(next_id, conn, evict, cancel.clone(), limits));
        }
        stats.open.store(conns.len() as u64, Ordering::Relaxed);
        let accepting = pending.is_none() && paused_until.is_none();
        tokio::select! {
            () = cancel.cancelled() => break,
            Some((id, end)) = conns.next(), if !conns.is_empty() => {
                open.remove(&id);
                let counter = match end {
                    End::TimedOut => Some(&stats.timed_out),
                    End::Evicted => Some(&stats.evicted),
                    End::Expired => Some(&stats.expired),
                    End::Closed | End::Stopped | End::Failed => None,
                };
                if let Some(c) = counter {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            () = tokio::time::sleep_until(paused_until.unwrap_or_else(tokio::time::Instant::now)),
                if paused_until.is_some() => paused_until = None,
            r = listener.accept(), if accepting => match r {
                Ok(stream) => {
                    backoff.reset();
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    if conns.len() < max {
                        pending = Some(stream);
                        continue;
                    }
                    // At the limit: the one waiting longest for a request
                    // makes room, or, every one being answered, this one
                    // is refused.
                    let victim = limits::pick_victim(open.iter().map(|(&id, o)| Waiting {
                        id,
                        busy: o.activity.busy.load(Ordering::Relaxed),
                        closing: o.closing,
                        idle_since_ms: o.activity.idle_since_ms.load(Ordering::Relaxed),
                    }));
                    let refused = match victim.and_then(|id| open.get_mut(&id)) {
                        Some(o) => {
                            o.closing = true;
                            o.evict.cancel();
                            pending = Some(stream);
                            false
                        }
                        None => {
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            let _ = stream.try_write(REFUSED);
                            drop(stream);
                            true
                        }
                    };
                    if let Some(n) = limit_log.event(epoch.ms()) {
                        warn!(
                            limit = max,
                            connections_since_last_warning = n,
                            refused,
                            evicted_total = stats.evicted.load(Ordering::Relaxed),
                            refused_total = stats.refused.load(Ordering::Relaxed),
                            "HTTP: connection limit reached; closing the connections that wait longest for a request (a scraper sends its request at once)"
                        );
                    }
                }
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    let kind = AcceptError::of(&e);
                    let pause = (kind == AcceptError::Resources).then(|| backoff.next_delay(jitter()));
                    if let Some(d) = pause {
                        paused_until = Some(tokio::time::Instant::now() + d);
                    }
                    if let Some(n) = error_log.event(epoch.ms()) {
                        warn!(
                            error = %e,
                            failures_since_last_warning = n,
                            pause_ms = pause.map_or(0, |d| d.as_millis()),
                            "HTTP: accept failed"
                        );
                    }
                }
            },
        }
    }

    // Stopping: connections close gracefully (each within close_grace).
    drop(pending);
    let _ = tokio::time::timeout(limits.close_grace + Duration::from_millis(100), async {
        while conns.next().await.is_some() {}
    })
    .await;
    stats.open.store(0, Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
