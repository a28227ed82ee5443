//! One run, wired end to end: its start (`start`: files checked, input opened, preflight,
//! outputs prepared), then the source thread, the stage and the sink thread connected by
//! bounded channels. The binary, `tune`, the integration tests and library callers drive runs
//! through [`run`].

mod resolve;
pub mod stages;
mod start;

pub use start::models;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::backend::http::HttpBackendConfig;
use crate::error::{Error, ExitStatus};
use crate::item::DoneSet;
use crate::live_status::{LiveFile, RunState};
use crate::metrics::{LiveRun, MetricsConfig, MetricsEndpoint, MetricsListener, RunWatch};
use crate::paths::Knobs;
use crate::progress::{Probes, Progress, ProgressConfig};
use crate::shutdown::Shutdown;
use crate::sink;
use crate::sink::parquet::{OutputMode, ParquetOutput};
use crate::source::{self, Input, InputSize, Shard, SourceOptions, SourceSummary};
use crate::stage::{self, StageConfig};
use crate::stats::{RunStats, StatsSnapshot};

/// Items buffered between the source thread and the stage. Enough to smooth bursts; small
/// enough that memory does not depend on the input's length.
const CHANNEL_CAPACITY: usize = 1024;

/// Outcome batches waiting for the writer thread.
const OUTCOME_BATCHES: usize = 2;

/// Everything a run needs, already resolved from defaults, files and flags.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: Input,
    pub source: SourceOptions,
    /// One or more backends; the batch is spread over them.
    pub backends: Vec<HttpBackendConfig>,
    /// Check the server and its models before reading input.
    pub preflight: bool,
    /// The backend answers any model name (the built-in mock): no name is checked against
    /// what it lists.
    pub any_model: bool,
    pub stage: StageConfig,
    /// The Parquet results file, if any.
    pub results: Option<ParquetOutput>,
    /// A JSONL output file (a pipeline's `sink.jsonl` path), opened by the run.
    pub jsonl_file: Option<PathBuf>,
    /// The error file: every outcome that ends in error, as an output line.
    pub errors_file: Option<PathBuf>,
    /// What to do with an existing JSONL or error file (the Parquet output has its own mode).
    pub existing_outputs: OutputMode,
    /// The pipeline file the run was read from: an input no output may name.
    pub pipeline_file: Option<PathBuf>,
    /// How the user named each file, for messages.
    pub knobs: Knobs,
    pub progress: ProgressConfig,
    /// Keep a live-status file beside local Parquet results (`live_status`), for `status`.
    pub live_status: bool,
    /// After an interrupt, how long in-flight requests may take (used by the caller that
    /// installs the signal handlers).
    pub grace: Duration,
    /// The Prometheus endpoint, if any.
    pub metrics: Option<MetricsConfig>,
    /// Where the run publishes its live counters for a caller that reads them itself (the
    /// server's `/metrics` and batch counts); set by that caller after `resolve`.
    pub watch: Option<RunWatch>,
}

/// JSONL output to a stream the caller opened (standard output, a test buffer).
pub struct JsonlStream {
    pub writer: Box<dyn Write + Send>,
    /// The stream's file, when it is one, so that it is checked against the input like any
    /// output (`batchflow in.jsonl >> in.jsonl` would read its own results forever).
    pub file: Option<std::fs::Metadata>,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    /// Figures of what reached the sinks, as of the end.
    pub stats: StatsSnapshot,
    pub backend_url: String,
    pub interrupted: bool,
    /// The output's reader went away (`| head`).
    pub output_closed: bool,
    /// What ended the run early, with everything already written kept.
    pub fatal: Option<Error>,
    pub elapsed: Duration,
    /// The Parquet results file or dataset written, if any: for object storage its URL (what
    /// is durable), not the local staging folder.
    pub output: Option<PathBuf>,
    /// Rows an earlier run left in the results file.
    pub kept_rows: u64,
    /// Of the kept rows, those of requests that failed and of invalid lines: the results
    /// hold them as much as this run's own.
    pub kept_failed: u64,
    pub kept_invalid: u64,
    /// Error rows dropped by `--retry-errors`.
    pub dropped_errors: u64,
    /// Input lines skipped because the results file already had them.
    pub skipped_lines: u64,
    /// Kept rows whose custom_id (or line) is not in this input: a sign of resuming with a
    /// different input. Only known when the whole input was read.
    pub unknown_kept: Option<u64>,
    /// Of those, the rows `--prune` dropped from the results file; `None` unless it ran.
    pub pruned: Option<u64>,
    /// The metrics endpoint, still serving the final figures: dropping it stops it,
    /// [`MetricsEndpoint::close`] lingers first.
    pub metrics: Option<MetricsEndpoint>,
}

impl RunReport {
    /// What the results hold at the end, kept rows included, so that a resume completing a
    /// file with an error row ends as the same run in one go would.
    pub fn exit_status(&self) -> ExitStatus {
        let errors = self.stats.failed + self.stats.invalid + self.kept_failed + self.kept_invalid;
        if self.fatal.is_some() {
            ExitStatus::Error
        } else if self.interrupted {
            ExitStatus::Interrupted
        } else if errors > 0 {
            ExitStatus::SomeFailed
        } else {
            ExitStatus::Success
        }
    }
}

/// Runs a batch to its end (or until `shutdown` stops it). Errors before the first request
/// (configuration, clashing or unusable outputs, preflight, unopenable input) are returned as
/// `Err`, and so is a stop before it ([`Error::Interrupted`]: start-up may block on a FIFO or
/// a silent server); errors after it are in [`RunReport::fatal`], because by then results
/// exist and are kept. `stdout` receives JSONL output lines when given.
pub async fn run(
    config: RunConfig,
    stdout: Option<JsonlStream>,
    shutdown: Shutdown,
) -> Result<RunReport, Error> {
    let started_at = Instant::now();
    // Before anything else, preflight included: a port in use must stop the run before it
    // sends a request.
    let metrics = match config.metrics {
        Some(metrics) => Some(MetricsListener::bind(metrics).await?),
        None => None,
    };
    let started = start::start(config, stdout, shutdown.clone()).await?;
    drive(started, started_at, shutdown, metrics).await
}

/// Runs a started batch: the source thread, the stage and the sink thread.
async fn drive(
    started: start::Started,
    started_at: Instant,
    shutdown: Shutdown,
    metrics: Option<MetricsListener>,
) -> Result<RunReport, Error> {
    let start::Started {
        config,
        input,
        pool,
        base_url,
        catalog,
        ollama,
        sinks,
        mut source_options,
        kept_rows,
        kept_failed,
        kept_invalid,
        dropped_errors,
        done_count,
    } = started;
    let stats = Arc::new(RunStats::new(started_at));
    if let Some(stage) = &config.progress.stage {
        stats.set_stage(stage.clone());
    }
    count_expected(&input, done_count, &config.source, &stats);
    let live = LiveRun::new(Arc::clone(&stats), Arc::clone(&pool));
    if let Some(watch) = &config.watch {
        watch.publish(live.clone());
    }
    let metrics = metrics.map(|listener| listener.serve(live.clone()));
    let probes = Probes {
        pool: Arc::clone(&pool),
        ollama,
        run: shutdown.clone(),
    };
    let live_file = config
        .results
        .as_ref()
        .filter(|_| config.live_status)
        .and_then(LiveFile::for_output);
    let progress = Progress::start(
        Arc::clone(&stats),
        config.progress.clone(),
        probes,
        live_file.clone(),
    );
    let prune_asked = config
        .results
        .as_ref()
        .is_some_and(|output| matches!(output.mode, OutputMode::Resume { prune: true, .. }));
    source_options.track_done = prune_asked && source_options.done.is_some();
    let done = source_options.done.clone().filter(|_| prune_asked);
    let (item_sender, items) = mpsc::channel(CHANNEL_CAPACITY);
    let source = source::spawn(input, source_options, item_sender, shutdown.clone())?;
    // Batches of up to stage::OUTCOMES_HELD: one to fill while the writer drains another.
    let (outcome_sender, outcomes) = mpsc::channel(OUTCOME_BATCHES);
    let sink = sink::spawn(
        sinks,
        outcomes,
        tokio::runtime::Handle::current(),
        Arc::clone(&stats),
    )?;

    let mut stage_config = config.stage;
    stage_config.workers *= pool.len();
    stage_config.adaptive_max = stage_config.adaptive_max.map(|max| max * pool.len());
    let target = stage::Target {
        backend: pool,
        base_url: base_url.clone(),
        catalog,
    };
    let stage_report = stage::run(
        target,
        stage_config,
        shutdown.clone(),
        Arc::clone(&stats),
        items,
        outcome_sender,
    )
    .await;

    let sink_report = tokio::task::spawn_blocking(move || sink.join())
        .await
        .map_err(|error| Error::Internal(format!("the output thread failed: {error}")))?
        .map_err(|_| Error::Internal("the output thread panicked".into()))?;

    let mut fatal = sink_report.error.map(Error::Output);
    // A source still blocked reading (say, an interactive stdin) after an early stop is left
    // alone; it holds nothing that needs closing.
    let mut source_summary: Option<SourceSummary> = None;
    if stage_report.input_exhausted || source.is_finished() {
        match tokio::task::spawn_blocking(move || source.join()).await {
            Ok(Ok(Err(error))) => {
                fatal.get_or_insert(error.into());
            }
            Ok(Ok(Ok(summary))) => source_summary = Some(summary),
            Ok(Err(_)) | Err(_) => {
                fatal.get_or_insert(Error::Internal("the input thread panicked".into()));
            }
        }
    }
    let input_read = stage_report.input_exhausted && !shutdown.was_interrupted();
    let mut pruned = None;
    if let Some(output) = config
        .results
        .as_ref()
        .filter(|_| prune_asked && fatal.is_none())
    {
        let errors = config
            .errors_file
            .clone()
            .map(|path| (config.knobs.errors.clone(), path));
        match prune(output, errors, done, source_summary.as_mut(), input_read).await {
            Ok(rows) => {
                stats.set_pruned(rows.unwrap_or(0));
                pruned = rows;
            }
            Err(error) => fatal = Some(error),
        }
    }
    let final_stats = match progress.finish().await {
        Some(snapshot) => snapshot,
        None => stats.snapshot(Instant::now()),
    };
    if let Some(what) = stats.unsettled() {
        fatal.get_or_insert(Error::ModelUnsettled { what });
    }
    let interrupted = shutdown.was_interrupted();
    let output_closed = sink_report.closed || stage_report.sink_closed;
    if let Some(file) = live_file {
        let state = match (&fatal, interrupted || output_closed) {
            (Some(_), _) => RunState::Failed,
            (None, true) => RunState::Interrupted,
            (None, false) => RunState::Finished,
        };
        write_last_live_status(file, &final_stats, state).await;
    }
    live.finished(&final_stats);
    Ok(RunReport {
        stats: final_stats,
        backend_url: base_url,
        interrupted,
        output_closed,
        fatal,
        elapsed: started_at.elapsed(),
        output: config.results.map(|output| match &output.remote {
            Some(remote) => PathBuf::from(remote.url()),
            None => output.path,
        }),
        kept_rows,
        kept_failed,
        kept_invalid,
        dropped_errors,
        skipped_lines: source_summary
            .as_ref()
            .map_or(0, |summary| summary.skipped_done),
        unknown_kept: source_summary
            .filter(|summary| stage_report.input_exhausted && !summary.reached_limit)
            .map(|summary| done_count.saturating_sub(summary.skipped_done)),
        pruned,
        metrics,
    })
}

/// Writes how the run ended into its live-status file, for `status` to say "finished at …"
/// rather than "stopped".
async fn write_last_live_status(file: LiveFile, snapshot: &StatsSnapshot, state: RunState) {
    let path = file.path().to_owned();
    let snapshot = snapshot.clone();
    let outcome = tokio::task::spawn_blocking(move || file.write(&snapshot, state)).await;
    if let Ok(Err(error)) = outcome {
        tracing::warn!(
            "Cannot write the live-status file {}: {error}.",
            path.display()
        );
    }
}

/// Drops the results' rows of lines the input no longer has, once the whole input was read
/// (before that, a missing line may only be unread). Returns the rows dropped, or `None` when
/// the run did not read its whole input.
async fn prune(
    output: &ParquetOutput,
    errors: Option<(String, PathBuf)>,
    done: Option<Arc<DoneSet>>,
    summary: Option<&mut SourceSummary>,
    input_read: bool,
) -> Result<Option<u64>, Error> {
    // Nothing was kept: nothing can be stale.
    let Some(done) = done else {
        return Ok(Some(0));
    };
    let Some(summary) = summary.filter(|summary| input_read && !summary.reached_limit) else {
        tracing::warn!(
            "Not pruned: the run stopped before the end of its input. Run --resume --prune again to prune."
        );
        return Ok(None);
    };
    let matched = summary.matched.take().unwrap_or_default();
    // Every key the results had was met again: nothing to drop, no need to read them.
    if matched.len() >= done.len() {
        return Ok(Some(0));
    }
    let output = output.clone();
    let pruned = tokio::task::spawn_blocking(move || {
        let errors = errors
            .as_ref()
            .map(|(knob, path)| (knob.as_str(), path.as_path()));
        sink::prune::prune(&output, &done, &matched, errors)
    })
    .await
    .map_err(|error| Error::Internal(format!("the prune thread failed: {error}")))??;
    Ok(Some(pruned))
}

/// Sets the run's expected result count: known at once for Parquet and embedded input, counted
/// on a side thread for a JSONL file (a fast byte scan), unknown for stdin. Lines already done
/// on resume are not expected again.
fn count_expected(
    input: &source::OpenedInput,
    done: u64,
    options: &SourceOptions,
    stats: &Arc<RunStats>,
) {
    let (shard, limit) = (options.shard, options.limit);
    // A shard holds about 1/n of the input: close enough for progress.
    let expected = move |items: u64| {
        (items / shard.map_or(1, |shard: Shard| shard.count))
            .saturating_sub(done)
            .min(limit.unwrap_or(u64::MAX))
    };
    let size = input.size();
    if let (Some(limit), InputSize::Countable(_)) = (limit, &size) {
        // A sample of a file: not worth a scan of the whole file.
        stats.set_total(limit);
        return;
    }
    match size {
        InputSize::Known(items) => stats.set_total(expected(items)),
        InputSize::Countable(file) => {
            let stats = Arc::clone(stats);
            let counter = std::thread::Builder::new()
                .name("batchflow-count".into())
                .spawn(move || match source::count_lines(&file) {
                    Ok(lines) => stats.set_total(expected(lines)),
                    Err(error) => tracing::debug!("Cannot count input lines: {error}."),
                });
            if let Err(error) = counter {
                tracing::debug!("Cannot start the line counter: {error}.");
            }
        }
        InputSize::Unknown => {}
    }
}
