//! Logs to stderr through `tracing`: journald-friendly (no colours and no
//! timestamps of our own when systemd captures stderr), level from
//! `RUST_LOG`, else `gateway.log_level`, else `info`.
//!
//! Lines go to stderr as they are logged, one `write(2)` each, except inside
//! a [`batch`]: the outbox writer logs every alert it stores, and a group
//! commit of thousands of alerts would otherwise cost as many system calls
//! as lines. A batch keeps its lines on its thread and writes them together
//! when it ends (or every [`BATCH_BYTES`]), so they reach the journal in
//! order and at once; only a process killed inside a batch, microseconds
//! long, loses its lines (the alerts themselves are in the outbox).

use std::cell::RefCell;
use std::io::{self, Write};
use std::marker::PhantomData;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// A batch writes what it holds once it holds this much.
pub const BATCH_BYTES: usize = 32 * 1024;

thread_local! {
    /// The open batch's lines on this thread (None: no batch open).
    static BATCH: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

pub fn init(config_level: Option<&str>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or_else(|| config_level.and_then(|l| EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_ansi(!journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = if journald {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests): keep the first subscriber.
    let _ = result;
}

/// Opens a batch on this thread; it is written when the guard drops. Not
/// `Send`: a batch never spans an `.await` that could move its task to
/// another thread. A batch opened inside another adds to the outer one.
pub fn batch() -> Batch {
    let outer = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let open = b.is_some();
        if !open {
            *b = Some(Vec::new());
        }
        !open
    });
    Batch {
        outer,
        _not_send: PhantomData,
    }
}

/// See [`batch`].
#[must_use = "the lines are written when the batch drops"]
pub struct Batch {
    /// This guard opened the batch (and writes it).
    outer: bool,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        if !self.outer {
            return;
        }
        if let Some(lines) = BATCH.with(|b| b.borrow_mut().take()) {
            write_stderr(&lines);
        }
    }
}

fn write_stderr(bytes: &[u8]) {
    if !bytes.is_empty() {
        // Nowhere to report a failed log write.
        let _ = io::stderr().lock().write_all(bytes);
    }
}

/// How many lines of something that can come by the thousand (alerts in a
/// storm) the log takes: `burst` at once, then `per_sec` a second. journald
/// keeps at most 10,000 lines per 30 s of a service by default and then
/// drops its lines, warnings included: a storm must not spend that. Lines
/// over the budget go at debug level instead, and [`Budget::over`] says how
/// many, for one summary line. Pure: the caller passes the time.
#[derive(Debug)]
pub struct Budget {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Option<std::time::Instant>,
    /// Over the budget since the last summary.
    over: u64,
    /// When the first of them came.
    over_since: Option<std::time::Instant>,
}

impl Budget {
    pub fn new(burst: u32, per_sec: u32) -> Budget {
        Budget {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst),
            last: None,
            over: 0,
            over_since: None,
        }
    }

    /// True: this line goes at its own level; false: it is over the
    /// budget (counted for the summary).
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        if let Some(last) = self.last {
            let secs = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + secs * self.per_sec).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.over += 1;
            self.over_since.get_or_insert(now);
            false
        }
    }

    /// The lines over the budget since the last summary, once `every` has
    /// passed since the first of them (None: nothing to say yet).
    pub fn over(&mut self, now: std::time::Instant, every: std::time::Duration) -> Option<u64> {
        let since = self.over_since?;
        if now.saturating_duration_since(since) < every {
            return None;
        }
        self.over_since = None;
        Some(std::mem::take(&mut self.over))
    }
}

/// What became of a line given to [`hold`].
#[derive(Debug, PartialEq)]
enum Held {
    /// No batch is open: write it now.
    NoBatch,
    /// Kept in the open batch.
    Kept,
    /// Kept, and the batch is full: write these now.
    Full(Vec<u8>),
}

/// Adds `line` to this thread's open batch, if one is open.
fn hold(line: &[u8]) -> Held {
    BATCH.with(|b| match b.borrow_mut().as_mut() {
        Some(lines) => {
            lines.extend_from_slice(line);
            if lines.len() >= BATCH_BYTES {
                Held::Full(std::mem::take(lines))
            } else {
                Held::Kept
            }
        }
        None => Held::NoBatch,
    })
}

/// Stderr, through the open batch if there is one.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match hold(buf) {
            Held::NoBatch => write_stderr(buf),
            Held::Kept => {}
            Held::Full(lines) => write_stderr(&lines),
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Option<Vec<u8>> {
        BATCH.with(|b| b.borrow().clone())
    }

    #[test]
    fn a_budget_takes_a_burst_then_its_rate_and_counts_the_rest_for_one_summary() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mut b = Budget::new(100, 10);
        let taken = (0..1_000).filter(|_| b.take(t0)).count();
        assert_eq!(taken, 100, "the burst");
        // Nothing to say before a second has passed since the first over.
        assert_eq!(
            b.over(t0 + Duration::from_millis(999), Duration::from_secs(1)),
            None
        );
        // Half a second later: 5 more, and the rest is over.
        let t1 = t0 + Duration::from_millis(500);
        let taken = (0..100).filter(|_| b.take(t1)).count();
        assert_eq!(taken, 5);
        assert_eq!(
            b.over(t0 + Duration::from_secs(1), Duration::from_secs(1)),
            Some(900 + 95)
        );
        assert_eq!(
            b.over(t0 + Duration::from_secs(9), Duration::from_secs(1)),
            None,
            "said once"
        );
        // A quiet minute refills the burst, never beyond it.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..150).filter(|_| b.take(t2)).count(), 100);
    }

    proptest::proptest! {
        /// Every line is either taken or counted in exactly one summary,
        /// and what is taken never exceeds the burst plus the rate since.
        #[test]
        fn nothing_is_lost_between_taken_and_summarized(gaps in proptest::collection::vec(0u64..400, 1..500)) {
            use std::time::{Duration, Instant};
            let t0 = Instant::now();
            let mut b = Budget::new(20, 5);
            let (mut now, mut taken, mut summarized) = (t0, 0u64, 0u64);
            for g in &gaps {
                now += Duration::from_millis(*g);
                taken += u64::from(b.take(now));
                summarized += b.over(now, Duration::from_secs(1)).unwrap_or(0);
            }
            summarized += b.over(now + Duration::from_secs(1), Duration::from_secs(1)).unwrap_or(0);
            proptest::prop_assert_eq!(taken + summarized, gaps.len() as u64);
            let secs = now.duration_since(t0).as_secs_f64();
            proptest::prop_assert!(taken as f64 <= 20.0 + 5.0 * secs + 1e-9);
        }
    }

    #[test]
    fn a_batch_holds_its_lines_until_it_ends_and_a_nested_one_adds_to_it() {
        assert_eq!(hold(b"no batch\n"), Held::NoBatch);
        let outer = batch();
        assert_eq!(hold(b"one\n"), Held::Kept);
        {
            let _inner = batch();
            assert_eq!(hold(b"two\n"), Held::Kept);
        }
        assert_eq!(held().as_deref(), Some(&b"one\ntwo\n"[..]));
        // Emptied before the guard writes to stderr (which the test output shows).
        BATCH.with(|b| b.borrow_mut().as_mut().map(Vec::clear));
        drop(outer);
        assert_eq!(held(), None);
        assert_eq!(hold(b"after\n"), Held::NoBatch);
    }

    #[test]
    fn a_batch_hands_its_lines_over_once_it_holds_enough() {
        let _b = batch();
        let line = [b'x'; 1000];
        for _ in 0..BATCH_BYTES / 1000 {
            assert_eq!(hold(&line), Held::Kept);
        }
        match hold(&line) {
            Held::Full(lines) => assert_eq!(lines.len(), (BATCH_BYTES / 1000 + 1) * 1000),
            other => panic!("not handed over: {other:?}"),
        }
        assert_eq!(held(), Some(Vec::new()));
    }
}
