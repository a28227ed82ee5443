//! The run's figures for Prometheus: `GET /metrics` in the text format (`metrics::text`),
//! served on the run's own runtime while it runs (`--metrics ADDR`), beside a dashboard for a
//! person (`metrics::page`: `GET /` and its JSON, `GET /api/run`).
//!
//! The address is bound when the run starts, before the first request (preflight included),
//! so that a port in use stops the run before it sends anything. Serving begins once the
//! run's counters exist; until then a scrape waits in the listen queue. Each scrape reads the
//! counters afresh ([`RunStats`], the pool's health); the GPUs and loaded models are the
//! progress ticker's latest sample. When the run has ended, `batchflow_run_finished` turns 1
//! and the endpoint stays up for the linger time (or until a signal) so that a scraper can
//! read the final figures, the same as the stats file's. What the run counts is `stats`'
//! business; when the run ends is the engine's.
//!
//! A caller that serves figures itself (`batchflow serve`'s `/metrics` and live batch counts)
//! hands the run a [`RunWatch`] instead: the run publishes its counters there when they
//! exist, and the caller reads them on its own schedule.

pub mod page;
pub mod text;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::pool::BackendPool;
use crate::stats::{RunStats, StatsSnapshot};

/// Where to serve metrics, and for how long after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    pub addr: SocketAddr,
    /// How long the endpoint stays up once the run has ended.
    pub linger: Duration,
}

/// Why metrics cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

/// How long closing waits for scrapes under way.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The endpoint's address, bound and not yet served.
pub struct MetricsListener {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    linger: Duration,
}

impl MetricsListener {
    /// Binds `config.addr` (port 0 picks a free port, logged with the address).
    pub async fn bind(config: MetricsConfig) -> Result<MetricsListener, MetricsError> {
        let bind_error = |cause| MetricsError::Bind {
            addr: config.addr,
            cause,
        };
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        tracing::info!(%addr, "Serving metrics at /metrics.");
        Ok(MetricsListener {
            listener,
            addr,
            linger: config.linger,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the figures of `live` on the current runtime until the endpoint is closed or
    /// dropped.
    pub fn serve(self, live: LiveRun) -> MetricsEndpoint {
        let router = axum::Router::new()
            .route("/metrics", get(scrape))
            .route("/", get(page::dashboard))
            .route(page::API_PATH, get(page::api))
            .with_state(Arc::clone(&live.0));
        self.serve_router(router)
    }

    /// Serves the figures of a pipeline's stages, each as it publishes them in its watch:
    /// `/metrics` labels every run family with its stage; the page shows the first stage.
    pub fn serve_stages(self, stages: Vec<(String, RunWatch)>) -> MetricsEndpoint {
        let router = axum::Router::new()
            .route("/metrics", get(scrape_stages))
            .route("/", get(stages_dashboard))
            .route(page::API_PATH, get(stages_api))
            .with_state(Stages(Arc::new(stages)));
        self.serve_router(router)
    }

    fn serve_router(self, router: axum::Router) -> MetricsEndpoint {
        let stop = CancellationToken::new();
        let (addr, until) = (self.addr, stop.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(self.listener, router)
                .with_graceful_shutdown(until)
                .await
            {
                tracing::warn!(%addr, "The metrics endpoint stopped: {error}.");
            }
        });
        MetricsEndpoint {
            addr,
            linger: self.linger,
            stop,
            task: Some(task),
        }
    }
}

/// A run's counters, as a scrape reads them. Cheap to clone.
#[derive(Clone)]
pub struct LiveRun(Arc<Source>);

impl LiveRun {
    pub fn new(stats: Arc<RunStats>, pool: Arc<BackendPool>) -> LiveRun {
        LiveRun(Arc::new(Source {
            stats,
            pool,
            last: Mutex::new(None),
        }))
    }

    /// The run's figures as of `now`, or its last ones once it has ended.
    pub fn snapshot(&self, now: Instant) -> StatsSnapshot {
        self.0.last().unwrap_or_else(|| self.0.stats.snapshot(now))
    }

    /// The whole exposition of the run's figures.
    pub fn render(&self, now: Instant) -> String {
        self.0.render(now)
    }

    /// The run has ended and `last` are its figures, already written: they are served from
    /// now on, with `batchflow_run_finished` 1.
    pub fn finished(&self, last: &StatsSnapshot) {
        *self.0.last_slot() = Some(last.clone());
    }
}

/// Where a run publishes its [`LiveRun`] once its counters exist, for a caller that reads
/// them itself. Cheap to clone; every clone sees the same run.
#[derive(Clone, Default)]
pub struct RunWatch(Arc<Mutex<Option<LiveRun>>>);

impl fmt::Debug for RunWatch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RunWatch")
            .field("published", &self.live().is_some())
            .finish()
    }
}

impl RunWatch {
    pub fn new() -> RunWatch {
        RunWatch::default()
    }

    pub fn publish(&self, live: LiveRun) {
        *self.slot() = Some(live);
    }

    /// The run's counters, once it has published them.
    pub fn live(&self) -> Option<LiveRun> {
        self.slot().clone()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<LiveRun>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a scrape reads.
struct Source {
    stats: Arc<RunStats>,
    pool: Arc<BackendPool>,
    /// The run's last figures, once it has ended: the stats file's, served as they are (the
    /// elapsed time included) rather than read again.
    last: Mutex<Option<StatsSnapshot>>,
}

impl Source {
    fn last_slot(&self) -> std::sync::MutexGuard<'_, Option<StatsSnapshot>> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn last(&self) -> Option<StatsSnapshot> {
        self.last_slot().clone()
    }

    fn render(&self, now: Instant) -> String {
        let read = self.read(now);
        text::render(&read.figures(None))
    }

    /// What a scrape reads: the run's figures (its last ones once it has ended) and its
    /// backends' health.
    fn read(&self, now: Instant) -> Read {
        let (live, latency) = self.stats.snapshot_with_latency(now);
        let last = self.last();
        let finished = last.is_some();
        Read {
            stats: last.unwrap_or(live),
            latency,
            backends: self
                .pool
                .figures()
                .into_iter()
                .zip(self.pool.health(now))
                .collect(),
            finished,
        }
    }
}

/// One run's figures as one scrape read them.
struct Read {
    stats: StatsSnapshot,
    latency: crate::stats::LatencyBuckets,
    backends: Vec<(crate::backend::pool::BackendFigures, bool)>,
    finished: bool,
}

impl Read {
    fn figures<'a>(&'a self, stage: Option<&'a str>) -> text::Figures<'a> {
        text::Figures {
            stats: &self.stats,
            latency: &self.latency,
            backends: &self.backends,
            finished: self.finished,
            stage,
        }
    }
}

/// A pipeline's stages as the endpoint serves them: each stage's counters, once published.
#[derive(Clone)]
struct Stages(Arc<Vec<(String, RunWatch)>>);

impl Stages {
    fn published(&self) -> Vec<(&str, LiveRun)> {
        self.0
            .iter()
            .filter_map(|(name, watch)| watch.live().map(|live| (name.as_str(), live)))
            .collect()
    }
}

async fn scrape_stages(State(stages): State<Stages>) -> impl IntoResponse {
    let now = Instant::now();
    let published = stages.published();
    let reads: Vec<(&str, Read)> = published
        .iter()
        .map(|(name, live)| (*name, live.0.read(now)))
        .collect();
    let figures: Vec<text::Figures<'_>> = reads
        .iter()
        .map(|(name, read)| read.figures(Some(name)))
        .collect();
    (
        [(header::CONTENT_TYPE, text::CONTENT_TYPE)],
        text::render_all(&figures),
    )
}

/// Which stage a page (or its JSON) shows: `?stage=NAME`, else the first, the one every
/// request starts in; `/metrics` has every stage.
#[derive(serde::Deserialize)]
struct StageQuery {
    stage: Option<String>,
}

fn chosen_stage(
    stages: &Stages,
    query: &StageQuery,
) -> Result<(String, Arc<Source>), (axum::http::StatusCode, String)> {
    let published = stages.published();
    let chosen = match &query.stage {
        Some(name) => published.into_iter().find(|(stage, _)| stage == name),
        None => published.into_iter().next(),
    };
    chosen
        .map(|(name, live)| (name.to_owned(), Arc::clone(&live.0)))
        .ok_or_else(|| match &query.stage {
            Some(name) if !stages.0.iter().any(|(stage, _)| stage == name) => (
                axum::http::StatusCode::NOT_FOUND,
                format!("no stage {name:?}"),
            ),
            _ => (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the stage is starting".to_owned(),
            ),
        })
}

async fn stages_dashboard(
    State(stages): State<Stages>,
    Query(query): Query<StageQuery>,
) -> axum::response::Response {
    match chosen_stage(&stages, &query) {
        Ok((name, source)) => {
            let names: Vec<&str> = stages.0.iter().map(|(stage, _)| stage.as_str()).collect();
            let api = format!("{}?stage={name}", page::API_PATH);
            axum::response::Html(page::render_in(
                &source.view(Instant::now()),
                &api,
                &format!("batchflow run · stage {name}"),
                &names,
                &name,
            ))
            .into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

async fn stages_api(
    State(stages): State<Stages>,
    Query(query): Query<StageQuery>,
) -> axum::response::Response {
    match chosen_stage(&stages, &query) {
        Ok((_, source)) => page::api(State(source)).await.into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn scrape(State(source): State<Arc<Source>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, text::CONTENT_TYPE)],
        source.render(Instant::now()),
    )
}

/// The endpoint being served. Dropping it stops serving at once;
/// [`MetricsEndpoint::close`] lingers first.
pub struct MetricsEndpoint {
    addr: SocketAddr,
    linger: Duration,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for MetricsEndpoint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("MetricsEndpoint")
            .field("addr", &self.addr)
            .field("linger", &self.linger)
            .finish_non_exhaustive()
    }
}

impl MetricsEndpoint {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Keeps serving for the linger time or until `interrupted` resolves, whichever is first,
    /// then stops.
    pub async fn close(mut self, interrupted: impl Future<Output = ()>) {
        if !self.linger.is_zero() {
            tracing::info!(
                addr = %self.addr,
                "Serving the final metrics for {}; interrupt to stop sooner.",
                humantime::format_duration(self.linger)
            );
            tokio::select! {
                _ = tokio::time::sleep(self.linger) => {}
                _ = interrupted => {}
            }
        }
        self.stop.cancel();
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(CLOSE_WAIT, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
