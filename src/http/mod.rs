//! The local HTTP endpoint (`[http] listen`, default `127.0.0.1:9184`):
//!
//! - `/metrics`: Prometheus / OpenMetrics text (see `metrics`);
//! - `/healthz`: `200 ok`, or `503` when the pipeline is stuck (the engine
//!   has made no progress, no reading and no tick, for [`STALL_AFTER`]: the
//!   same signal that withholds the systemd watchdog ping), or when the
//!   outbox cannot store alerts (a full or failing disk);
//! - `/status`: the JSON document `outpost status` prints (see `status`).
//!
//! Read-only: handlers read `Telemetry` and the outbox's counters and its
//! first record; they change nothing and take no lock a component holds
//! across an await. A scrape costs one outbox read (the oldest alert).
//! axum routes, hyper serves (`server`), within the bounds of `limits`: a
//! connection limit that leaves the rest of the gateway its file
//! descriptors, a timeout on half-sent and idle connections, no request
//! bodies. `runtime` binds the socket and spawns [`serve`].

pub mod client;
mod limits;
pub mod metrics;
mod server;
pub mod status;

pub use server::ConnStats;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alert::{Alert, rfc3339_ms};
use crate::outbox::{Counts, Outbox};
use crate::reading::Clock;
use crate::telemetry::Telemetry;
use status::{
    AlertsStatus, FiringAlert, ModbusDeviceStatus, OldestAlert, OutboxStatus, PipelineStatus,
    RuleStateStatus, RulesStatus, SourceStatus, Status, UpstreamStatus,
};

/// No engine progress for this long and `/healthz` answers 503. The engine
/// ticks every 500 ms even with no reading, so this is a stuck task, not a
/// quiet sensor.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// What the handlers read.
pub struct HttpState {
    pub gateway: String,
    /// `mqtt://host:port` (never credentials) and the topic prefix.
    pub upstream: Option<(String, String)>,
    pub outbox: Arc<Outbox>,
    pub telemetry: Arc<Telemetry>,
    /// The clock `last_progress_ms` is stamped with.
    pub clock: Clock,
    pub stall_after: Duration,
    /// The server's connection counters (filled by [`serve`]).
    pub connections: Arc<ConnStats>,
}

impl HttpState {
    /// How long since the pipeline last made progress, and whether that is
    /// within [`HttpState::stall_after`].
    pub fn progress(&self) -> (Duration, bool) {
        let age = self.telemetry.progress_age(self.clock.now().mono_ms);
        (age, age < self.stall_after)
    }

    /// The oldest waiting alert, parsed, and how long it has waited in
    /// seconds (the outbox's wait clock, which a jumping wall clock does not
    /// move), with the outbox's counts of the same moment.
    fn oldest(&self) -> (Option<(Alert, u64)>, Counts) {
        let w = self.outbox.waiting();
        let oldest = w.oldest.and_then(|rec| {
            let age = self.outbox.oldest_waited().map_or(0, |d| d.as_secs());
            Some((rec.alert().ok()?, age))
        });
        (oldest, w.counts)
    }

    /// The `/status` document, now.
    pub fn status(&self) -> Status {
        let t = &self.telemetry;
        let (age, healthy) = self.progress();
        let (oldest, counts) = self.oldest();
        let oldest = oldest.map(|(a, age_s)| OldestAlert {
            id: a.id,
            seq: a.seq,
            rule: a.rule,
            sensor: a.sensor,
            state: a.state.to_string(),
            ts: a.ts,
            age_s,
        });
        let sources = t
            .sources()
            .iter()
            .map(|s| SourceStatus {
                name: s.name.clone(),
                kind: s.kind.to_string(),
                connected: s.connected.load(Ordering::Relaxed),
                messages: s.messages.load(Ordering::Relaxed),
                readings: s.readings.load(Ordering::Relaxed),
                errors: s
                    .errors()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                reopens: s.reopens.load(Ordering::Relaxed),
            })
            .collect();
        let now_ms = crate::reading::wall_ms();
        let modbus = t
            .modbus_devices()
            .iter()
            .map(|d| {
                let last = d.last_answer_ms.load(Ordering::Relaxed);
                ModbusDeviceStatus {
                    source: d.source.clone(),
                    unit: d.unit,
                    sensor: d.sensor.clone(),
                    up: d.up.load(Ordering::Relaxed),
                    requests: d.requests.load(Ordering::Relaxed),
                    answers: d.answers.load(Ordering::Relaxed),
                    readings: d.readings.load(Ordering::Relaxed),
                    errors: d
                        .errors()
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                    last_answer_age_s: (last > 0)
                        .then(|| u64::try_from(now_ms.saturating_sub(last)).unwrap_or(0) / 1000),
                }
            })
            .collect();
        let firing = t
            .firing()
            .into_iter()
            .map(|f| FiringAlert {
                rule: f.rule,
                sensor: f.sensor,
                metric: f.metric,
                severity: f.severity.to_string(),
                since: rfc3339_ms(f.since_ms),
                value: f.value,
                threshold: f.threshold,
            })
            .collect();
        Status {
            gateway: self.gateway.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: t.started.elapsed().as_secs(),
            pipeline: PipelineStatus {
                healthy,
                last_progress_ms_ago: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            },
            upstream: UpstreamStatus {
                configured: self.upstream.is_some(),
                url: self.upstream.as_ref().map(|u| u.0.clone()),
                topic_prefix: self.upstream.as_ref().map(|u| u.1.clone()),
                connected: t.upstream_connected.load(Ordering::Relaxed),
                reconnects: t.upstream_reconnects.load(Ordering::Relaxed),
                published: t.alerts_published.load(Ordering::Relaxed),
                acked: t.alerts_acked.load(Ordering::Relaxed),
            },
            outbox: OutboxStatus {
                depth: counts.depth,
                bytes: counts.bytes,
                next_seq: counts.next_seq,
                dropped: self.outbox.dropped().total(),
                errors: t.outbox_errors.load(Ordering::Relaxed),
                oldest,
                unstored: self.outbox.unstored(),
                disk_bytes: self.outbox.size_on_disk(),
                storage_error: self.outbox.storage_error(),
            },
            sources,
            alerts: AlertsStatus {
                created: t.alerts_created.load(Ordering::Relaxed),
                firing,
            },
            rules: {
                let r = t.rules_in_force();
                let e = t.engine();
                RulesStatus {
                    loaded: t.rules_loaded.load(Ordering::Relaxed),
                    reloads: t.rule_reloads.load(Ordering::Relaxed),
                    reload_errors: t.rule_reload_errors.load(Ordering::Relaxed),
                    version: r.version,
                    pushed: r.pushed,
                    hash: r.hash,
                    state: RuleStateStatus {
                        pairs: e.pairs as u64,
                        max_pairs: e.max_pairs as u64,
                        on_max_pairs: e.on_max_pairs.as_str().to_string(),
                        pairs_evicted: e.pairs_evicted,
                        pairs_refused: e.pairs_refused,
                        samples: e.samples as u64,
                        max_samples: e.max_samples as u64,
                        samples_thinned: e.samples_thinned,
                    },
                }
            },
            modbus,
        }
    }
}

/// The routes, over `state`.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .route("/status", get(status_handler))
        .with_state(state)
}

/// Serves until `cancel`, then closes its connections gracefully (within
/// half a second); errors are logged, never fatal to the gateway (the
/// alerts matter more than their dashboard).
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, cancel: CancellationToken) {
    let (limits, nofile) = server::Limits::for_this_process();
    if let Ok(addr) = listener.local_addr() {
        info!(
            %addr,
            max_connections = limits.max_connections,
            open_files_limit = nofile.map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
            "HTTP: /metrics /healthz /status"
        );
    }
    if limits.max_connections < limits::MAX_CONNECTIONS {
        warn!(
            max_connections = limits.max_connections,
            open_files_limit = nofile,
            reserve = limits::FD_RESERVE,
            "HTTP: the open-files limit is low; fewer connections are served so the sources, brokers and outbox keep their file descriptors (raise LimitNOFILE)"
        );
    }
    let stats = state.connections.clone();
    server::run(listener, router(state), stats, limits, cancel).await;
}

async fn metrics_handler(State(state): State<Arc<HttpState>>) -> Response {
    match metrics::encode(&state) {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

async fn healthz_handler(State(state): State<Arc<HttpState>>) -> Response {
    let (age, healthy) = state.progress();
    if let Some(err) = state.outbox.storage_error() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage failing: the outbox cannot store alerts: {err}\n"),
        )
            .into_response()
    } else if healthy {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stalled: the pipeline made no progress for {} s\n",
                age.as_secs()
            ),
        )
            .into_response()
    }
}

async fn status_handler(State(state): State<Arc<HttpState>>) -> Response {
    match serde_json::to_string_pretty(&state.status()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the status\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &std::path::Path, stall_after: Duration) -> Arc<HttpState> {
        state_with(dir, stall_after, Clock::new())
    }

    fn state_with(dir: &std::path::Path, stall_after: Duration, clock: Clock) -> Arc<HttpState> {
        let (outbox, _) = Outbox::open(dir).unwrap();
        Arc::new(HttpState {
            gateway: "gw".into(),
            upstream: Some(("mqtt://127.0.0.1:1883".into(), "outpost/gw".into())),
            outbox: Arc::new(outbox),
            telemetry: Arc::new(Telemetry::new()),
            clock,
            stall_after,
            connections: Default::default(),
        })
    }

    /// Serves `state` on a free port and GETs `path` with the client of
    /// `outpost status`: real sockets, the real router.
    async fn get(state: Arc<HttpState>, path: &str) -> client::Response {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, state, cancel.clone()));
        let r = client::get(addr, path, Duration::from_secs(5))
            .await
            .unwrap();
        cancel.cancel();
        server.await.unwrap();
        r
    }

    #[tokio::test]
    async fn healthz_is_200_while_the_pipeline_moves_and_503_when_it_stalls() {
        let dir = tempfile::tempdir().unwrap();
        // A clock that has run for a second, so progress can be stamped in
        // its past instead of waiting for time to pass.
        let started = std::time::Instant::now()
            .checked_sub(Duration::from_secs(1))
            .expect("the machine has been up for a second");
        let st = state_with(
            dir.path(),
            Duration::from_millis(300),
            Clock::starting_at(started),
        );
        let stamp = |ago_ms: u64| {
            let now = st.clock.now().mono_ms;
            st.telemetry
                .last_progress_ms
                .store(now - ago_ms, Ordering::Relaxed);
        };
        stamp(0);
        let r = get(st.clone(), "/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

        // No progress stamped for longer than stall_after: stuck.
        stamp(400);
        let r = get(st.clone(), "/healthz").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.starts_with("stalled"), "{}", r.body);

        // Progress again: healthy again.
        stamp(0);
        assert_eq!(get(st.clone(), "/healthz").await.status, 200);
    }

    #[tokio::test]
    async fn status_is_json_with_the_outbox_and_its_oldest_alert() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path(), STALL_AFTER);
        let wall = crate::reading::wall_ms();
        let draft = crate::rules::AlertDraft {
            rule: "hot".into(),
            sensor: "t1".into(),
            metric: "temperature".into(),
            state: crate::rules::AlertState::Firing,
            severity: crate::rules::Severity::Critical,
            value: 31.0,
            threshold: 30.0,
            ts_ms: wall - 65_000,
            since_ms: wall - 65_000,
            message: "t1 is 31".into(),
            labels: Default::default(),
            actions: Vec::new(),
            reason: crate::rules::Reason::Transition,
        };
        st.outbox
            .push("gw", &[draft], &[], crate::reading::Clock::new().now())
            .unwrap();
        let r = get(st, "/status").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        let s: Status = serde_json::from_str(&r.body).unwrap();
        assert_eq!(s.gateway, "gw");
        assert_eq!(s.outbox.depth, 1);
        let old = s.outbox.oldest.unwrap();
        assert_eq!((old.seq, old.rule.as_str()), (1, "hot"));
        // The age is how long it has waited in the outbox, not how old the
        // reading was (65 s): it was stored just now.
        assert!(old.age_s < 10, "age {}", old.age_s);
        assert_eq!(s.upstream.url.as_deref(), Some("mqtt://127.0.0.1:1883"));
    }

    #[tokio::test]
    async fn an_unknown_path_is_404() {
        let dir = tempfile::tempdir().unwrap();
        let r = get(state(dir.path(), STALL_AFTER), "/nope").await;
        assert_eq!(r.status, 404);
    }
}
