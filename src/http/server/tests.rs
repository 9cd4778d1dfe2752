//! The server's bounds on real sockets, with short limits: timeouts close
//! half-sent and idle connections, the limit makes room by closing the
//! longest waiting one, a busy endpoint refuses with 503, request bodies
//! and oversized heads are refused, failed accepts back off.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::*;

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(30);

fn limits(max_connections: usize, header_timeout: Duration) -> Limits {
    Limits {
        max_connections,
        header_timeout,
        lifetime: LONG,
        close_grace: Duration::from_millis(200),
    }
}

/// `/fast` answers at once; `/slow` counts itself in `entered` and waits
/// for a permit of `gate`.
struct Rig {
    addr: SocketAddr,
    stats: Arc<ConnStats>,
    cancel: CancellationToken,
    server: JoinHandle<()>,
    entered: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

async fn start(limits: Limits) -> Rig {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let entered = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (e, g) = (entered.clone(), gate.clone());
    let router = Router::new()
        .route("/fast", get(|| async { "ok\n" }))
        .route(
            "/slow",
            get(move || {
                let (e, g) = (e.clone(), g.clone());
                async move {
                    e.fetch_add(1, Ordering::SeqCst);
                    let _permit = g.acquire().await;
                    "slow\n"
                }
            }),
        );
    let stats = Arc::new(ConnStats::default());
    let cancel = CancellationToken::new();
    let server = tokio::spawn(run(listener, router, stats.clone(), limits, cancel.clone()));
    Rig {
        addr,
        stats,
        cancel,
        server,
        entered,
        gate,
    }
}

async fn connect(addr: SocketAddr, send: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    if !send.is_empty() {
        s.write_all(send.as_bytes()).await.unwrap();
    }
    s
}

fn full_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

const HALF_REQUEST: &str = "GET /fast HTTP/1.1\r\nHost: x\r\n";

/// Reads one response (head and a body of `content-length`) from a
/// kept-alive connection, within 5 s.
async fn response(s: &mut TcpStream) -> (u16, String) {
    let read = async {
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a whole response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap();
                return (status, body.to_string());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a response within 5 s")
}

/// Waits (at most 5 s) until the server closes `s`; how long that took.
async fn closed(s: &mut TcpStream) -> Duration {
    let t0 = Instant::now();
    let eof = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("read: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), eof)
        .await
        .expect("the server closes the connection within 5 s");
    t0.elapsed()
}

/// True when the server has not closed `s` (nothing to read, no EOF).
fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Polls `cond` every 10 ms for up to 5 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::SeqCst)
}

#[tokio::test]
async fn half_sent_silent_and_idle_kept_alive_connections_are_closed_after_the_header_timeout() {
    let rig = start(limits(8, SHORT)).await;
    let t0 = Instant::now();
    let mut half = connect(rig.addr, HALF_REQUEST).await;
    let mut silent = connect(rig.addr, "").await;
    let mut kept = connect(rig.addr, &full_request("/fast")).await;
    assert_eq!(response(&mut kept).await, (200, "ok\n".to_string()));

    for (what, s) in [
        ("half-sent", &mut half),
        ("silent", &mut silent),
        ("idle", &mut kept),
    ] {
        closed(s).await;
        // Not earlier than the timeout (counted from the accept or the
        // response, both after t0).
        let after = t0.elapsed();
        assert!(after >= SHORT, "{what}: closed after {after:?}");
    }
    eventually("3 timeouts counted", || load(&rig.stats.timed_out) == 3).await;
    eventually("none open", || load(&rig.stats.open) == 0).await;
    assert_eq!(load(&rig.stats.accepted), 3);
}

#[tokio::test]
async fn a_kept_alive_connection_serves_requests_within_the_timeout() {
    let rig = start(limits(8, Duration::from_secs(2))).await;
    let mut s = connect(rig.addr, "").await;
    for _ in 0..3 {
        s.write_all(full_request("/fast").as_bytes()).await.unwrap();
        assert_eq!(response(&mut s).await.0, 200);
    }
    assert_eq!(load(&rig.stats.accepted), 1);
}

#[tokio::test]
async fn at_the_limit_the_connection_waiting_longest_for_a_request_makes_room() {
    let rig = start(limits(2, LONG)).await;
    let mut a = connect(rig.addr, HALF_REQUEST).await;
    let mut b = connect(rig.addr, "").await;
    eventually("a and b accepted", || load(&rig.stats.open) == 2).await;

    // c is served at once; a, accepted first, makes room for it.
    let mut c = connect(rig.addr, &full_request("/fast")).await;
    assert_eq!(response(&mut c).await.0, 200);
    closed(&mut a).await;
    assert!(still_open(&b));
    assert_eq!(load(&rig.stats.evicted), 1);

    // c, kept alive, answered more recently than b was accepted: b goes.
    let mut d = connect(rig.addr, &full_request("/fast")).await;
    assert_eq!(response(&mut d).await.0, 200);
    closed(&mut b).await;
    assert!(still_open(&c));
    assert_eq!(load(&rig.stats.evicted), 2);
    assert_eq!(load(&rig.stats.open), 2);
    assert_eq!(load(&rig.stats.limit), 2);
}

#[tokio::test]
async fn when_every_connection_is_being_answered_a_new_one_is_refused_with_503() {
    let rig = start(limits(1, LONG)).await;
    let mut slow = connect(rig.addr, &full_request("/slow")).await;
    eventually("the slow handler runs", || {
        rig.entered.load(Ordering::SeqCst) == 1
    })
    .await;

    let mut other = connect(rig.addr, &full_request("/fast")).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_end(&mut raw))
        .await
        .expect("refused at once")
        .ok();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text:?}");
    assert_eq!(load(&rig.stats.refused), 1);

    // The busy one was kept and finishes.
    rig.gate.add_permits(1);
    assert_eq!(response(&mut slow).await, (200, "slow\n".to_string()));
}

#[tokio::test]
async fn a_request_body_is_refused_and_so_is_an_oversized_head() {
    let rig = start(limits(8, LONG)).await;
    let mut post = connect(
        rig.addr,
        "POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nxx",
    )
    .await;
    assert_eq!(response(&mut post).await.0, 413);
    closed(&mut post).await;

    let chunked = "GET /fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut s = connect(rig.addr, chunked).await;
    assert_eq!(response(&mut s).await.0, 413);

    let big = format!(
        "GET /fast HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(limits::MAX_REQUEST_HEAD + 1)
    );
    let mut s = connect(rig.addr, "").await;
    // The server may close while this is still being written.
    let _ = s.write_all(big.as_bytes()).await;
    assert_eq!(response(&mut s).await.0, 431);
    closed(&mut s).await;

    // An empty body is no body.
    let mut s = connect(
        rig.addr,
        "GET /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(response(&mut s).await.0, 200);
}

#[tokio::test]
async fn a_connection_is_closed_at_the_end_of_its_lifetime() {
    let rig = start(Limits {
        lifetime: SHORT,
        ..limits(8, LONG)
    })
    .await;
    let mut s = connect(rig.addr, &full_request("/fast")).await;
    assert_eq!(response(&mut s).await.0, 200);
    closed(&mut s).await;
    eventually("expiry counted", || load(&rig.stats.expired) == 1).await;
}

#[tokio::test]
async fn stopping_closes_every_connection_and_ends_the_server() {
    let rig = start(limits(8, LONG)).await;
    let mut idle = connect(rig.addr, HALF_REQUEST).await;
    let mut kept = connect(rig.addr, &full_request("/fast")).await;
    assert_eq!(response(&mut kept).await.0, 200);
    rig.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), rig.server)
        .await
        .expect("the server ends within its grace")
        .unwrap();
    closed(&mut idle).await;
    closed(&mut kept).await;
}

/// An acceptor that always fails like a process out of descriptors (and
/// after 1000 tries stops answering, so a loop that spins ends the test
/// with a count instead of hanging it).
struct OutOfFiles(Arc<AtomicUsize>);

impl Accept for OutOfFiles {
    async fn accept(&mut self) -> io::Result<TcpStream> {
        if self.0.fetch_add(1, Ordering::SeqCst) >= 1000 {
            std::future::pending::<()>().await;
        }
        Err(io::Error::from_raw_os_error(libc::EMFILE))
    }
}

#[tokio::test(start_paused = true)]
async fn accepting_out_of_descriptors_backs_off_instead_of_spinning() {
    let calls = Arc::new(AtomicUsize::new(0));
    let stats = Arc::new(ConnStats::default());
    let cancel = CancellationToken::new();
    let server = tokio::spawn(run(
        OutOfFiles(calls.clone()),
        Router::new(),
        stats.clone(),
        limits(8, LONG),
        cancel.clone(),
    ));
    // Ten seconds of a paused clock: backoff from 50 ms doubling to 1 s
    // (jittered into the upper half of each step) is at most ~20 tries.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let n = calls.load(Ordering::SeqCst);
    assert!((5..=30).contains(&n), "{n} accepts in 10 s");
    assert_eq!(load(&stats.accept_errors), n as u64);
    cancel.cancel();
    server.await.unwrap();
}
