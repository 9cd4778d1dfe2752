//! The bounds of the HTTP endpoint, and the pure decisions the server makes
//! with them (`server` is the I/O that applies them).
//!
//! The endpoint is a dashboard: it must never take what the alerts need.
//! Every open connection is a file descriptor, and so is every serial port,
//! broker connection and outbox file; a process that runs out of them
//! cannot reconnect to its broker (EMFILE). So:
//!
//! - at most [`MAX_CONNECTIONS`] connections are open at once, fewer when
//!   the open-files limit would not leave [`FD_RESERVE`] descriptors to the
//!   rest of the gateway ([`connection_limit`]);
//! - a connection must deliver a complete request head within
//!   [`HEADER_TIMEOUT`], the first one and each next one on a kept-alive
//!   connection, so a half-sent request or an idle connection is closed;
//!   none lives longer than [`MAX_LIFETIME`];
//! - a request head is at most [`MAX_REQUEST_HEAD`] bytes and a request
//!   may carry no body (the endpoint only answers GETs);
//! - at the limit, the server keeps accepting: a new connection takes the
//!   place of the one that has waited longest for a request
//!   ([`pick_victim`]); when every connection is in a handler, the new one
//!   is answered 503 and closed. Accepting never stops, because a server
//!   that stops hides the problem in the kernel's backlog (up to 1,024
//!   connections, whose handshake the kernel completes): a scraper there
//!   sees "connected", sends its request and waits, with no answer, no
//!   error and no counter, to be served long after it gave up, behind the
//!   flood. Replacing the longest waiting one instead serves any client
//!   that sends its request as it connects, and counts what it closed;
//! - an accept that fails for want of resources (EMFILE, ENFILE, ENOBUFS,
//!   ENOMEM) pauses accepting with a backoff instead of spinning
//!   ([`AcceptError`]).

use std::io;
use std::time::Duration;

/// Connections open at once, at most. A scraper, `outpost status` and a
/// person with curl need a handful; 64 leaves ample room for them and is a
/// small share of the unit's `LimitNOFILE=1024`.
pub const MAX_CONNECTIONS: usize = 64;

/// File descriptors kept for the rest of the gateway: stdio, the runtime
/// (epoll, eventfd, signal pipe), the outbox (log segments and the sled
/// checkpoint store), one per serial port and per broker connection (and a
/// transient one while a host name resolves or a TLS file is read). With
/// one serial port and the upstream broker that is 16 (measured by the
/// flood test); each more source adds one. 128 leaves room for a hundred
/// sources.
pub const FD_RESERVE: u64 = 128;

/// How long a client may take to send a complete request head, counted
/// from the accept or from the end of its previous response: a scraper
/// sends its request in one packet, a half-sent or idle connection is
/// closed after this. Also hyper's keep-alive idle timeout (it starts the
/// same timer while it waits for the next request).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a connection lives, whatever it does (a client that reads
/// its response slower than it is written, a keep-alive that never ends):
/// then it is shut down gracefully, its request answered first.
pub const MAX_LIFETIME: Duration = Duration::from_secs(60);

/// How long a graceful close (at [`MAX_LIFETIME`], or at shutdown) may
/// take before the connection is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// The largest request head (request line and headers) read. 8 KiB is
/// also the smallest read buffer hyper accepts; a larger head is answered
/// 431 and the connection closed.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The backoff of accepting after a failure for want of resources.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// At most one warning per this long for the limit reached and for accept
/// failures; the ones in between are counted in the next.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The connection limit for an open-files limit (`None`: unknown or
/// unlimited): [`MAX_CONNECTIONS`], or fewer when the rest of the gateway
/// would keep less than [`FD_RESERVE`]; never below 1 (the endpoint then
/// serves one client at a time rather than none).
pub fn connection_limit(nofile: Option<u64>) -> usize {
    let cap = MAX_CONNECTIONS as u64;
    let room = nofile.map_or(cap, |n| n.saturating_sub(FD_RESERVE));
    usize::try_from(room.min(cap))
        .unwrap_or(MAX_CONNECTIONS)
        .max(1)
}

/// What the server knows of one open connection when it must close one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub id: u64,
    /// A handler is running for it: it is answering, not waiting.
    pub busy: bool,
    /// Already told to close.
    pub closing: bool,
    /// Since when (ms on the server's clock) it has waited for a request:
    /// its accept, or the end of its last answer.
    pub idle_since_ms: u64,
}

/// The connection to close for a new one at the limit: the one that has
/// waited longest for a request (a half-sent one, or an idle keep-alive),
/// never one being answered. `None` when every connection is busy.
pub fn pick_victim(open: impl IntoIterator<Item = Waiting>) -> Option<u64> {
    open.into_iter()
        .filter(|w| !w.busy && !w.closing)
        .min_by_key(|w| (w.idle_since_ms, w.id))
        .map(|w| w.id)
}

/// Why an accept failed, for what the loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// That one connection failed (reset or aborted before it was taken,
    /// a network error passed on by the kernel): accept the next at once.
    Connection,
    /// The process or the system is out of something (descriptors, buffers,
    /// memory), or an error not known to be transient: pause accepting
    /// with a backoff; the listener keeps the pending connections.
    Resources,
}

impl AcceptError {
    pub fn of(e: &io::Error) -> AcceptError {
        use io::ErrorKind as K;
        if matches!(
            e.kind(),
            K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::PermissionDenied
        ) {
            return AcceptError::Connection;
        }
        // accept(2): "Linux accept() passes already-pending network errors
        // on the new socket as an error code"; they concern that socket.
        match e.raw_os_error() {
            Some(
                libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENONET
                | libc::EOPNOTSUPP
                | libc::ETIMEDOUT,
            ) => AcceptError::Connection,
            _ => AcceptError::Resources,
        }
    }
}

/// A warning at most once per period, with how many events it stands for.
#[derive(Debug, Clone)]
pub struct LogGate {
    every_ms: u64,
    last_ms: Option<u64>,
    events: u64,
}

impl LogGate {
    pub fn new(every: Duration) -> LogGate {
        LogGate {
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            last_ms: None,
            events: 0,
        }
    }

    /// Counts one event at `now_ms`; `Some(n)` when a warning is due, `n`
    /// the events since the last warning, this one included.
    pub fn event(&mut self, now_ms: u64) -> Option<u64> {
        self.events = self.events.saturating_add(1);
        let due = self
            .last_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= self.every_ms);
        if !due {
            return None;
        }
        self.last_ms = Some(now_ms);
        Some(std::mem::take(&mut self.events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_limit_leaves_the_reserve_to_the_rest_of_the_gateway() {
        assert_eq!(connection_limit(None), MAX_CONNECTIONS);
        assert_eq!(connection_limit(Some(u64::MAX)), MAX_CONNECTIONS);
        // The unit's LimitNOFILE: the full limit fits.
        assert_eq!(connection_limit(Some(1024)), 64);
        assert_eq!(connection_limit(Some(FD_RESERVE + 64)), 64);
        // Tighter: the HTTP endpoint gives way.
        assert_eq!(connection_limit(Some(FD_RESERVE + 10)), 10);
        // Never none at all.
        assert_eq!(connection_limit(Some(FD_RESERVE)), 1);
        assert_eq!(connection_limit(Some(3)), 1);
    }

    fn w(id: u64, busy: bool, closing: bool, idle_since_ms: u64) -> Waiting {
        Waiting {
            id,
            busy,
            closing,
            idle_since_ms,
        }
    }

    #[test]
    fn the_victim_is_the_longest_waiting_never_a_busy_one() {
        // A keep-alive connection accepted first (id 1) but answered
        // recently is kept; the half-sent one accepted later (id 2) goes.
        let open = [w(1, false, false, 900), w(2, false, false, 100)];
        assert_eq!(pick_victim(open), Some(2));
        // Busy or already closing: skipped.
        let open = [
            w(1, true, false, 0),
            w(2, false, true, 10),
            w(3, false, false, 500),
        ];
        assert_eq!(pick_victim(open), Some(3));
        assert_eq!(pick_victim([w(1, true, false, 0)]), None);
        assert_eq!(pick_victim([]), None);
        // Ties go to the older accept.
        assert_eq!(
            pick_victim([w(7, false, false, 5), w(3, false, false, 5)]),
            Some(3)
        );
    }

    proptest! {
        #[test]
        fn a_victim_is_idle_and_none_waited_longer(
            open in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u64..1000), 0..80)
        ) {
            let open: Vec<Waiting> = open
                .into_iter()
                .enumerate()
                .map(|(i, (b, c, t))| w(i as u64, b, c, t))
                .collect();
            let idle: Vec<&Waiting> = open.iter().filter(|x| !x.busy && !x.closing).collect();
            match pick_victim(open.iter().copied()) {
                None => prop_assert!(idle.is_empty()),
                Some(id) => {
                    let v = open[id as usize];
                    prop_assert!(!v.busy && !v.closing);
                    prop_assert!(idle.iter().all(|x| x.idle_since_ms >= v.idle_since_ms));
                }
            }
        }
    }

    #[test]
    fn running_out_of_descriptors_pauses_a_reset_connection_does_not() {
        let os = io::Error::from_raw_os_error;
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(
                AcceptError::of(&os(errno)),
                AcceptError::Resources,
                "{errno}"
            );
        }
        for errno in [
            libc::ECONNABORTED,
            libc::ECONNRESET,
            libc::EINTR,
            libc::EPERM,
            libc::EPROTO,
            libc::ENETUNREACH,
        ] {
            assert_eq!(
                AcceptError::of(&os(errno)),
                AcceptError::Connection,
                "{errno}"
            );
        }
        // Unknown: never a busy loop.
        assert_eq!(
            AcceptError::of(&io::Error::other("strange")),
            AcceptError::Resources
        );
    }

    #[test]
    fn the_log_gate_warns_once_per_period_with_the_count() {
        let mut g = LogGate::new(Duration::from_secs(10));
        assert_eq!(g.event(1_000), Some(1));
        assert_eq!(g.event(2_000), None);
        assert_eq!(g.event(10_999), None);
        assert_eq!(g.event(11_000), Some(3));
        assert_eq!(g.event(11_001), None);
        assert_eq!(g.event(40_000), Some(2));
    }
}
