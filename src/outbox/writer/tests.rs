use std::sync::atomic::Ordering;

use super::*;
use crate::outbox::OutboxEvent;
use crate::outbox::tests::TinyFs;

fn batch(i: u64) -> Batch {
    Batch {
        drafts: vec![AlertDraft::for_test(i)],
        ..Batch::default()
    }
}

struct Running {
    _dir: tempfile::TempDir,
    outbox: Arc<Outbox>,
    tx: mpsc::Sender<Batch>,
    durable: watch::Receiver<u64>,
    telemetry: Arc<Telemetry>,
    task: tokio::task::JoinHandle<()>,
}

fn start(flush: FlushPolicy) -> Running {
    start_in(flush, tempfile::tempdir().unwrap())
}

fn start_in(flush: FlushPolicy, dir: tempfile::TempDir) -> Running {
    let outbox = Arc::new(Outbox::open(dir.path()).unwrap().0);
    let (tx, rx) = mpsc::channel(1024);
    let (dtx, durable) = watch::channel(0);
    let telemetry = Arc::new(Telemetry::new());
    let writer = Writer {
        gateway: "gw".into(),
        flush,
        outbox: outbox.clone(),
        telemetry: telemetry.clone(),
        clock: Clock::new(),
    };
    let task = tokio::spawn(writer.run(rx, dtx));
    Running {
        _dir: dir,
        outbox,
        tx,
        durable,
        telemetry,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_arriving_together_share_one_flush_and_each_is_announced_only_after_it() {
    let w = start(FlushPolicy::Always);
    // A burst from several producers while the writer works.
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let tx = w.tx.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..100 {
                tx.send(batch(p * 1000 + i)).await.unwrap();
            }
        }));
    }
    let mut durable = w.durable.clone();
    let watcher_outbox = w.outbox.clone();
    let watcher = tokio::spawn(async move {
        // Every announced seq is covered by a flush that began after it was
        // pushed and has returned: the outbox's own record of its flushes.
        let mut announced = Vec::new();
        while durable.changed().await.is_ok() {
            let d = *durable.borrow_and_update();
            let flushed = watcher_outbox.flushed_through();
            assert!(
                d <= flushed,
                "seq {d} announced, but flushes cover only up to {flushed}"
            );
            announced.push(d);
            if d == 400 {
                return announced;
            }
        }
        panic!("the writer stopped before announcing seq 400: {announced:?}");
    });
    for p in producers {
        p.await.unwrap();
    }
    let announced = watcher.await.unwrap();
    assert!(
        announced.windows(2).all(|w| w[0] < w[1]),
        "announcements only move forward: {announced:?}"
    );
    drop(w.tx);
    w.task.await.unwrap();
    let flushes = w.telemetry.outbox_flushes.load(Ordering::Relaxed);
    assert_eq!(w.outbox.depth(), 400);
    assert!(
        flushes < 400 / 4,
        "group commit: 400 alerts in bursts took {flushes} flushes"
    );
}

/// The paused clock moves only when every task waits, so "before the period
/// ends" is exact and no real time passes.
#[tokio::test(start_paused = true)]
async fn with_a_flush_period_alerts_are_announced_at_once_and_flushed_on_the_period() {
    let period = Duration::from_millis(300);
    let w = start(FlushPolicy::Every(period));
    let mut durable = w.durable.clone();
    // The period timer's first tick is immediate: let the writer take it
    // (virtual time; nothing is due before 1 ms but that tick).
    tokio::time::sleep(Duration::from_millis(1)).await;
    let sent = Instant::now();
    let before = w.telemetry.outbox_flushes.load(Ordering::Relaxed);
    w.tx.send(batch(1)).await.unwrap();
    while *durable.borrow_and_update() < 1 {
        durable.changed().await.unwrap();
    }
    assert!(
        sent.elapsed() < period,
        "announced after {:?}, not at once",
        sent.elapsed()
    );
    assert_eq!(
        w.telemetry.outbox_flushes.load(Ordering::Relaxed),
        before,
        "no flush per alert under a period"
    );
    assert!(w.outbox.flushed_through() < 1, "not flushed yet");
    // The period's next tick starts the flush (the fsync runs on a blocking
    // thread, in real time: wait for it without letting the paused clock
    // run ahead).
    tokio::time::sleep_until(sent + period).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.outbox.flushed_through() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flush never returned"
        );
        tokio::task::yield_now().await;
    }
    let at = sent.elapsed();
    assert!(
        at + Duration::from_millis(1) >= period && at < 2 * period,
        "flushed after {at:?}, not on the period's tick"
    );
    drop(w.tx);
    w.task.await.unwrap();
}

/// Fills the filesystem: every free byte, the space the outbox's segment
/// set aside, and its reserve. Returns the fillers (remove them to give
/// the space back) and how many alerts it stored on the way.
fn fill(fs: &TinyFs, outbox: &Outbox) -> (Vec<std::path::PathBuf>, u64) {
    let now = Clock::new().now();
    let push = || {
        while outbox
            .push("gw", &[AlertDraft::for_test(0)], &[], now)
            .is_ok()
        {}
    };
    let mut fillers = vec![fs.fill("a")];
    push();
    // Gives the reserve back (the outbox's own files are small here: it
    // drops nothing), then takes that space too.
    outbox.relieve_full_disk(now);
    fillers.push(fs.fill("b"));
    push();
    (fillers, outbox.depth())
}

/// A real full disk: a 1 MiB tmpfs, filled up.
#[tokio::test(start_paused = true)]
async fn a_full_disk_is_retried_with_capped_jittered_backoff_and_healed_without_a_restart() {
    const POLL: Duration = Duration::from_millis(20);
    let fs = TinyFs::mount(4 << 20);
    let dir = tempfile::tempdir_in(fs.path()).unwrap();
    let w = start_in(FlushPolicy::Always, dir);
    let (fillers, stored) = fill(&fs, &w.outbox);
    let errors = || w.telemetry.outbox_errors.load(Ordering::Relaxed);
    let t0 = Instant::now();
    w.tx.send(batch(0)).await.unwrap();
    // The instants of the first 12 failed writes, seen every 20 ms of
    // (virtual) time.
    let mut failures = Vec::new();
    let mut seen = 0;
    let mut sent = 1u64;
    while failures.len() < 12 {
        assert!(t0.elapsed() < Duration::from_secs(600), "{failures:?}");
        // The evaluator never waits on the failing disk: more than the
        // channel holds goes in meanwhile (within what the writer holds).
        if sent < 300 {
            w.tx.try_send(batch(1))
                .expect("the writer keeps taking batches");
            sent += 1;
        }
        tokio::time::sleep(POLL).await;
        let now = errors();
        if now > seen {
            failures.push(t0.elapsed());
            seen = now;
        }
    }
    let slack = POLL;
    for (i, pair) in failures.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let step = (RETRY_MIN * 2u32.pow(i as u32)).min(RETRY_MAX);
        assert!(
            gap + slack >= step / 2 && gap <= step + slack,
            "retry {i} after {gap:?}, expected {:?}..{step:?}: {failures:?}",
            step / 2
        );
    }
    assert_eq!(w.outbox.depth(), stored);
    assert!(
        w.outbox.storage_error().is_some(),
        "storage failing is not healthy"
    );
    // Space comes back: the next retry stores everything held, no restart.
    for f in fillers {
        std::fs::remove_file(f).unwrap();
    }
    let deadline = t0.elapsed() + RETRY_MAX * 2;
    while w.outbox.depth() < stored + sent {
        assert!(
            t0.elapsed() < deadline,
            "never stored after the space came back"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(w.outbox.storage_error().is_none());
    assert_eq!(w.outbox.unstored(), 0, "nothing was lost while held");
    drop(w.tx);
    w.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn what_cannot_be_held_is_counted_and_reported_as_unstored_and_stopping_does_not_wait() {
    let fs = TinyFs::mount(4 << 20);
    let dir = tempfile::tempdir_in(fs.path()).unwrap();
    let w = start_in(FlushPolicy::Always, dir);
    let _fillers = fill(&fs, &w.outbox);
    let n = HOLD_LIMIT as u64 + 500;
    for i in 0..n {
        w.tx.send(batch(i)).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while w.outbox.unstored() < 500 {
        assert!(
            Instant::now() < deadline,
            "unstored {}",
            w.outbox.unstored()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ev = w.outbox.events().unwrap();
    assert!(
        ev.iter()
            .any(|(_, e)| matches!(e, OutboxEvent::Unstored { count, .. } if *count >= 500)),
        "{ev:?}"
    );
    // Stopping while the disk still refuses: one more try, then the rest is
    // counted, at once (not after the backoff).
    let stop = Instant::now();
    drop(w.tx);
    tokio::time::timeout(Duration::from_secs(5), w.task)
        .await
        .expect("the writer stops at once")
        .unwrap();
    assert!(stop.elapsed() < Duration::from_secs(5));
    assert_eq!(w.outbox.unstored(), n, "every alert is stored or counted");
}
