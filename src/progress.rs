//! What a person (or a watching tool) sees of a run on stderr and in the `--stats` file: a live
//! progress line on a terminal, a plain log line every few seconds elsewhere, the stats file
//! rewritten atomically, and the end-of-run summary. Never anything on stdout. The ticker also
//! keeps the results' live-status file (`live_status`) while the run goes; its last word, how
//! the run ended, is the engine's.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::pool::BackendPool;
use crate::gpu::{self, GpuMonitor};
use crate::live_status::{LiveFile, RunState};
use crate::shutdown::Shutdown;
use crate::stats::{GpuFigures, RunStats, StatsSnapshot};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live line redrawn in place (stderr is a terminal).
    Bar,
    /// A log line every `interval` (stderr is a file or a pipe).
    Log { interval: Duration },
    /// Nothing (`--quiet`).
    Off,
}

/// Progress settings of a run.
/// What a run does when its model is loaded again mid-run, or found split between CPU and
/// GPU: either slows every slot until the run's configuration changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnReload {
    /// Say so on stderr (and count it in the summary).
    #[default]
    Warn,
    /// Say so, then stop the run as an interrupt does (resumable), exiting 2.
    Stop,
}

#[derive(Debug, Clone)]
pub struct ProgressConfig {
    pub mode: ProgressMode,
    pub on_reload: OnReload,
    /// Where to keep the JSON figures, rewritten every 2 s (`STATS_FILE_INTERVAL`).
    pub stats_file: Option<PathBuf>,
    /// The pipeline stage the run is, named on its live line and log lines.
    pub stage: Option<String>,
}

const TICK: Duration = Duration::from_secs(1);
const STATS_FILE_INTERVAL: Duration = Duration::from_secs(2);
const LIVE_FILE_INTERVAL: Duration = Duration::from_secs(1);
const GPU_INTERVAL: Duration = Duration::from_secs(2);
const BACKEND_PS_INTERVAL: Duration = Duration::from_secs(10);

/// The bars being drawn (one per running stage of a pipeline, one for a plain run), if any,
/// with how many: log lines are printed above them instead of through them.
static ACTIVE_BARS: Mutex<Option<(MultiProgress, usize)>> = Mutex::new(None);

fn active_bars() -> std::sync::MutexGuard<'static, Option<(MultiProgress, usize)>> {
    ACTIVE_BARS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stderr for log lines: suspends the progress bar while a line is written.
pub struct ProgressAwareStderr;

impl Write for ProgressAwareStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bars = active_bars().as_ref().map(|(bars, _)| bars.clone());
        match bars {
            Some(bars) => bars
                .suspend(|| io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => io::stderr().write_all(buf).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// A writer factory for `tracing_subscriber`'s `with_writer`.
pub fn stderr_writer() -> ProgressAwareStderr {
    ProgressAwareStderr
}

/// The running display; [`Progress::finish`] ends it.
pub struct Progress {
    stop: CancellationToken,
    task: JoinHandle<StatsSnapshot>,
}

/// Sources of figures beyond the run's own counters.
pub struct Probes {
    pub pool: Arc<BackendPool>,
    /// The backends are Ollama: ask them for `/api/ps`.
    pub ollama: bool,
    /// The run, stopped by [`OnReload::Stop`].
    pub run: Shutdown,
}

impl Progress {
    /// Starts the ticker on the current runtime; it keeps `live` (the results' live-status
    /// file) while the run goes.
    pub fn start(
        stats: Arc<RunStats>,
        config: ProgressConfig,
        probes: Probes,
        live: Option<LiveFile>,
    ) -> Progress {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_ticker(stats, config, probes, live, stop.clone()));
        Progress { stop, task }
    }

    /// Stops the ticker and returns the final figures (also written to the stats file).
    pub async fn finish(self) -> Option<StatsSnapshot> {
        self.stop.cancel();
        self.task.await.ok()
    }
}

async fn run_ticker(
    stats: Arc<RunStats>,
    config: ProgressConfig,
    probes: Probes,
    live: Option<LiveFile>,
    stop: CancellationToken,
) -> StatsSnapshot {
    let mut ticker = Ticker::start(config, probes, live).await;
    let mut interval = tokio::time::interval(ticker.tick());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = interval.tick() => false,
        };
        let now = Instant::now();
        stats.tick(now);
        ticker.probe(&stats, now, stopping).await;
        let snapshot = ticker.snapshot(&stats, now, stopping);
        ticker.show(&snapshot, now, stopping);
        if let Some(what) = ticker.unsettled.take() {
            stats.set_unsettled(what);
        }
        ticker.write_file(&snapshot, now, stopping).await;
        if !stopping {
            ticker.write_live(&snapshot, now).await;
        }
        if stopping {
            ticker.close();
            return snapshot;
        }
    }
}

/// The ticker's state between ticks: what it shows on, what the probes last found, and when
/// each is next due.
struct Ticker {
    config: ProgressConfig,
    probes: Probes,
    monitor: Arc<GpuMonitor>,
    bar: Option<ProgressBar>,
    next_gpu: Instant,
    next_ps: Instant,
    next_file: Instant,
    next_log: Option<Instant>,
    live: Option<LiveFile>,
    next_live: Instant,
    /// The live-status file could not be written: said once, not every second.
    live_warned: bool,
    /// Model reloads already warned about.
    warned_reloads: u64,
    /// Models already found split between CPU and GPU.
    warned_splits: Vec<String>,
    /// Why [`OnReload::Stop`] stopped the run, for the run's report.
    unsettled: Option<String>,
}

impl Ticker {
    async fn start(config: ProgressConfig, probes: Probes, live: Option<LiveFile>) -> Ticker {
        let monitor = Arc::new(
            tokio::task::spawn_blocking(GpuMonitor::load)
                .await
                .unwrap_or(GpuMonitor::disabled()),
        );
        if !monitor.is_available() && config.mode != ProgressMode::Off {
            tracing::info!(
                "GPU: n/a (no NVIDIA driver here); loaded models come from the backend's /api/ps."
            );
        }
        let bar = match config.mode {
            ProgressMode::Bar => Some(new_bar()),
            ProgressMode::Log { .. } | ProgressMode::Off => None,
        };
        let started = Instant::now();
        let next_log = match config.mode {
            ProgressMode::Log { interval } => Some(started + interval),
            _ => None,
        };
        Ticker {
            config,
            probes,
            monitor,
            bar,
            next_gpu: started,
            next_ps: started,
            next_file: started,
            next_log,
            live,
            next_live: started,
            live_warned: false,
            warned_reloads: 0,
            warned_splits: Vec::new(),
            unsettled: None,
        }
    }

    /// A reload or a CPU/GPU split was seen: with [`OnReload::Stop`], the run stops (once).
    fn unsettled(&mut self, what: String) {
        if self.config.on_reload == OnReload::Stop && self.unsettled.is_none() {
            tracing::error!("Stopping the run (--on-reload stop): {what}.");
            self.probes.run.stop();
            self.unsettled = Some(what);
        }
    }

    fn tick(&self) -> Duration {
        match self.config.mode {
            ProgressMode::Log { interval } => TICK.min(interval).max(Duration::from_millis(10)),
            ProgressMode::Bar | ProgressMode::Off => TICK,
        }
    }

    /// Samples the GPUs and asks Ollama backends what they have loaded, when due; the findings
    /// go into `stats`, where the snapshot and the metrics endpoint read them.
    async fn probe(&mut self, stats: &RunStats, now: Instant, stopping: bool) {
        if (now >= self.next_gpu || stopping) && self.monitor.is_available() {
            // NVML calls block for a moment on a real driver, and this runtime's one thread
            // also drives every request.
            let monitor = Arc::clone(&self.monitor);
            let gpus = tokio::task::spawn_blocking(move || monitor.sample())
                .await
                .unwrap_or(None);
            stats.set_gpus(gpus);
            self.next_gpu = now + GPU_INTERVAL;
        }
        if self.probes.ollama && (now >= self.next_ps || stopping) {
            let mut loaded = Vec::new();
            for backend in self.probes.pool.backends() {
                loaded.extend(gpu::loaded_models(backend).await);
            }
            stats.set_loaded_models(loaded);
            self.next_ps = now + BACKEND_PS_INTERVAL;
        }
    }

    fn snapshot(&self, stats: &RunStats, now: Instant, stopping: bool) -> StatsSnapshot {
        let mut snapshot = stats.snapshot(now);
        if self.probes.pool.len() > 1 {
            snapshot.backends = self.probes.pool.figures();
        }
        snapshot.finished = stopping;
        snapshot
    }

    /// The bar or the log line, and a warning at each new model reload.
    fn show(&mut self, snapshot: &StatsSnapshot, now: Instant, stopping: bool) {
        if snapshot.model_reloads > self.warned_reloads {
            self.warned_reloads = snapshot.model_reloads;
            tracing::warn!(
                "The model was loaded again {} times during the run ({:.1}s loading), which stalls every slot: give every request one configuration (--options '{{\"num_ctx\": …}}') and keep the model loaded (--keep-alive 1h, or OLLAMA_KEEP_ALIVE=-1 on the server).",
                snapshot.model_reloads,
                snapshot.load_secs
            );
            self.unsettled(format!(
                "the model was loaded again {} times",
                snapshot.model_reloads
            ));
        }
        for model in &snapshot.loaded_models {
            // All on the CPU (no GPU, size_vram 0) is a CPU server, not a split.
            let split = model.size_bytes > model.size_vram_bytes && model.size_vram_bytes > 0;
            if split && !self.warned_splits.contains(&model.name) {
                self.warned_splits.push(model.name.clone());
                tracing::warn!(
                    "{} is split between CPU and GPU ({:.1} of {:.1} GiB in GPU memory): its requests run several times slower; use a smaller model or num_ctx, or fewer parallel slots.",
                    model.name,
                    gib(model.size_vram_bytes),
                    gib(model.size_bytes)
                );
                self.unsettled(format!("{} is split between CPU and GPU", model.name));
            }
        }
        if let Some(bar) = &self.bar {
            if let Some(total) = snapshot.total {
                bar.set_length(total);
            }
            bar.set_position(snapshot.done);
            let label = self
                .config
                .stage
                .as_deref()
                .map_or(String::new(), |stage| format!("{stage}: "));
            bar.set_message(match stderr_columns() {
                Some(columns) => {
                    let room = columns.saturating_sub(label.chars().count());
                    format!("{label}{}", bar_message(snapshot, room))
                }
                None => format!("{label}{}", progress_line(snapshot, None)),
            });
        }
        if let (Some(due), ProgressMode::Log { interval }) = (self.next_log, self.config.mode) {
            if now >= due && !stopping {
                match &self.config.stage {
                    Some(stage) => tracing::info!(
                        stage = %stage,
                        "Progress of stage {stage}: {}.",
                        progress_line(snapshot, None)
                    ),
                    None => tracing::info!("Progress: {}.", progress_line(snapshot, None)),
                }
                self.next_log = Some(now + interval);
            }
        }
    }

    /// Rewrites the stats file when due, off the runtime's one thread (which also drives
    /// every request).
    async fn write_file(&mut self, snapshot: &StatsSnapshot, now: Instant, stopping: bool) {
        let Some(path) = self.config.stats_file.clone() else {
            return;
        };
        if now < self.next_file && !stopping {
            return;
        }
        let (target, written) = (path.clone(), snapshot.clone());
        let outcome =
            tokio::task::spawn_blocking(move || crate::paths::replace_with_json(&target, &written))
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")));
        if let Err(error) = outcome {
            tracing::warn!("Cannot write the stats file {}: {error}.", path.display());
        }
        self.next_file = now + STATS_FILE_INTERVAL;
    }

    /// Rewrites the live-status file when due, off the runtime's one thread.
    async fn write_live(&mut self, snapshot: &StatsSnapshot, now: Instant) {
        let Some(live) = self.live.clone().filter(|_| now >= self.next_live) else {
            return;
        };
        self.next_live = now + LIVE_FILE_INTERVAL;
        let written = snapshot.clone();
        let file = live.clone();
        let outcome = tokio::task::spawn_blocking(move || file.write(&written, RunState::Running))
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")));
        match outcome {
            Ok(()) => self.live_warned = false,
            Err(error) if !self.live_warned => {
                self.live_warned = true;
                tracing::warn!(
                    "Cannot write the live-status file {}: {error}; `batchflow status` cannot follow this run.",
                    live.path().display()
                );
            }
            Err(_) => {}
        }
    }

    fn close(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            let mut bars = active_bars();
            if let Some((shown, count)) = bars.as_mut() {
                shown.remove(bar);
                *count -= 1;
                if *count == 0 {
                    *bars = None;
                }
            }
        }
    }
}

/// A bar drawn with those already shown, on a line of its own.
fn new_bar() -> ProgressBar {
    let mut bars = active_bars();
    let (shown, count) = bars.get_or_insert_with(|| {
        (
            MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            0,
        )
    });
    *count += 1;
    let bar = shown.add(ProgressBar::no_length());
    let style = ProgressStyle::with_template("{spinner} {elapsed_precise} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// A duration for a person: `4.2s`, `35s`, `3m05s`, `1h58m`.
pub fn seconds(duration_secs: f64) -> String {
    if duration_secs < 10.0 {
        return format!("{duration_secs:.1}s");
    }
    let total = duration_secs.round() as u64;
    match total {
        0..60 => format!("{total}s"),
        60..3600 => format!("{}m{:02}s", total / 60, total % 60),
        _ => format!("{}h{:02}m", total / 3600, (total % 3600) / 60),
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn gpu_text(gpus: &Option<Vec<GpuFigures>>) -> String {
    match gpus {
        None => "GPU n/a".into(),
        Some(gpus) if gpus.is_empty() => "GPU none found".into(),
        Some(gpus) => gpus
            .iter()
            .map(|gpu| {
                format!(
                    "GPU {:.1}/{:.1} GiB {}%",
                    gib(gpu.memory_used_bytes),
                    gib(gpu.memory_total_bytes),
                    gpu.utilization_percent
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Columns the bar's template takes before its message: `{spinner} {elapsed_precise} `.
const BAR_PREFIX_COLUMNS: usize = 11;

/// The bar's message for a terminal `columns` wide: the progress line cut to what fits after
/// the bar's prefix.
fn bar_message(snapshot: &StatsSnapshot, columns: usize) -> String {
    progress_line(snapshot, Some(columns.saturating_sub(BAR_PREFIX_COLUMNS)))
}

/// The width of the terminal stderr is on, read at each redraw so a resized window is followed.
fn stderr_columns() -> Option<usize> {
    terminal_size::terminal_size_of(io::stderr()).map(|(width, _)| usize::from(width.0))
}

/// The one-line progress text (bar message and log line), its figures in order of importance:
/// done/total, failed, invalid, rate, ETA, then the rest. Within `width` columns, when given,
/// figures that do not fit are left out from the least important on (done/total always stays),
/// so a narrow terminal loses the latency or the GPU rather than the failures.
pub fn progress_line(snapshot: &StatsSnapshot, width: Option<usize>) -> String {
    let mut parts = vec![match snapshot.total {
        Some(total) if total > 0 => format!(
            "{}/{} {:.1}%",
            snapshot.done,
            total,
            snapshot.done as f64 * 100.0 / total as f64
        ),
        _ => format!("{} done", snapshot.done),
    }];
    parts.push(format!("{} failed", snapshot.failed));
    parts.push(format!("{} invalid", snapshot.invalid));
    let rate = snapshot
        .rate_per_sec
        .unwrap_or(snapshot.average_rate_per_sec);
    // A tenth of a result per second matters only while results are slow.
    match rate < 100.0 {
        true => parts.push(format!("{rate:.1}/s")),
        false => parts.push(format!("{rate:.0}/s")),
    }
    if let Some(eta) = snapshot.eta_secs {
        parts.push(format!("ETA {}", seconds(eta)));
    }
    parts.push(format!("{} in flight", snapshot.in_flight));
    parts.push(format!("{} retried", snapshot.retries));
    parts.push(format!("{:.0} tok/s", snapshot.completion_tokens_per_sec));
    if let (Some(p50), Some(p95)) = (snapshot.latency_ms.p50, snapshot.latency_ms.p95) {
        parts.push(format!("p50 {:.2}s p95 {:.2}s", p50 / 1e3, p95 / 1e3));
    }
    parts.push(gpu_text(&snapshot.gpus));
    const SEPARATOR: &str = " · ";
    let mut parts = parts.into_iter();
    let mut line = parts.next().unwrap_or_default();
    for part in parts {
        let wider = line.chars().count() + SEPARATOR.chars().count() + part.chars().count();
        if width.is_some_and(|width| wider > width) {
            break;
        }
        line.push_str(SEPARATOR);
        line.push_str(&part);
    }
    line
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(key, count)| format!("{key} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The end-of-run summary, several lines, for stderr.
pub fn summary(snapshot: &StatsSnapshot, backend_url: &str) -> String {
    let mut text = String::from("Summary\n");
    let _ = writeln!(
        text,
        "  results:  {} ({} ok, {} failed, {} invalid) in {}, {:.1}/s",
        snapshot.done,
        snapshot.succeeded,
        snapshot.failed,
        snapshot.invalid,
        seconds(snapshot.elapsed_secs),
        snapshot.average_rate_per_sec
    );
    let _ = writeln!(text, "  workers:  {} at the end", snapshot.workers);
    if snapshot.pruned > 0 {
        let _ = writeln!(
            text,
            "  pruned:   {} rows no longer in the input",
            snapshot.pruned
        );
    }
    if !snapshot.errors_by_code.is_empty() {
        let _ = writeln!(text, "  errors:   {}", counts(&snapshot.errors_by_code));
    }
    if snapshot.retries > 0 {
        let _ = writeln!(
            text,
            "  retries:  {} ({})",
            snapshot.retries,
            counts(&snapshot.retries_by_cause)
        );
    }
    let _ = writeln!(
        text,
        "  tokens:   {} in, {} out, {:.0} out/s",
        snapshot.prompt_tokens, snapshot.completion_tokens, snapshot.completion_tokens_per_sec
    );
    let latency = &snapshot.latency_ms;
    if let (Some(p50), Some(p90), Some(p99), Some(max)) =
        (latency.p50, latency.p90, latency.p99, latency.max)
    {
        let _ = writeln!(
            text,
            "  latency:  p50 {:.2}s  p90 {:.2}s  p99 {:.2}s  max {:.2}s",
            p50 / 1e3,
            p90 / 1e3,
            p99 / 1e3,
            max / 1e3
        );
    }
    let models = snapshot
        .loaded_models
        .iter()
        .map(|model| {
            format!(
                "{} {:.1} GiB in VRAM",
                model.name,
                gib(model.size_vram_bytes)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if models.is_empty() {
        let _ = writeln!(text, "  backend:  {backend_url}");
    } else {
        let _ = writeln!(text, "  backend:  {backend_url} ({models})");
    }
    let gpus = match &snapshot.gpus {
        None => "n/a (no NVIDIA driver)".to_owned(),
        Some(gpus) if gpus.is_empty() => "none found".to_owned(),
        Some(gpus) => gpus
            .iter()
            .map(|gpu| {
                format!(
                    "{} {:.1}/{:.1} GiB used, {}% busy",
                    gpu.name,
                    gib(gpu.memory_used_bytes),
                    gib(gpu.memory_total_bytes),
                    gpu.utilization_percent
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    };
    let _ = writeln!(text, "  GPU:      {gpus}");
    for backend in &snapshot.backends {
        let _ = writeln!(
            text,
            "  {}: {} attempts, {} failed, taken out {} times",
            backend.url, backend.attempts, backend.failures, backend.ejections
        );
    }
    match snapshot.model_reloads {
        0 if snapshot.load_secs > 0.0 => {
            let _ = writeln!(
                text,
                "  loading:  {:.1}s spent loading the model, no reload mid-run",
                snapshot.load_secs
            );
        }
        0 => {}
        reloads => {
            let _ = writeln!(
                text,
                "  loading:  {:.1}s spent loading the model; loaded again {reloads} times mid-run (keep one --options and a --keep-alive)",
                snapshot.load_secs
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LatencyFigures;

    /// A busy run's figures, every number near its widest.
    fn busy() -> StatsSnapshot {
        let mut snapshot = RunStats::new(Instant::now()).snapshot(Instant::now());
        snapshot.total = Some(1_000_000);
        snapshot.done = 123_456;
        snapshot.succeeded = 123_000;
        snapshot.failed = 321;
        snapshot.invalid = 135;
        snapshot.rate_per_sec = Some(1234.5);
        snapshot.eta_secs = Some(7_101.0);
        snapshot.in_flight = 64;
        snapshot.retries = 4_321;
        snapshot.completion_tokens_per_sec = 98_765.0;
        snapshot.latency_ms = LatencyFigures {
            p50: Some(1_234.0),
            p95: Some(5_678.0),
            ..LatencyFigures::default()
        };
        snapshot.gpus = Some(vec![GpuFigures {
            name: "NVIDIA H100".into(),
            memory_used_bytes: 70 << 30,
            memory_total_bytes: 80 << 30,
            utilization_percent: 97,
        }]);
        snapshot
    }

    #[test]
    fn an_80_column_bar_keeps_the_failures_and_drops_the_rest() {
        let message = bar_message(&busy(), 80);
        assert!(
            message.chars().count() + BAR_PREFIX_COLUMNS <= 80,
            "{} columns: {message}",
            message.chars().count() + BAR_PREFIX_COLUMNS
        );
        assert!(
            message.starts_with(
                "123456/1000000 12.3% · 321 failed · 135 invalid · 1234/s · ETA 1h58m"
            ),
            "{message}"
        );
        assert!(!message.contains("GPU"), "{message}");
    }

    #[test]
    fn without_a_width_every_figure_is_shown_in_order() {
        let line = progress_line(&busy(), None);
        let order = [
            "123456/1000000",
            "321 failed",
            "135 invalid",
            "1234/s",
            "ETA",
            "64 in flight",
            "4321 retried",
            "98765 tok/s",
            "p50 1.23s p95 5.68s",
            "GPU 70.0/80.0 GiB 97%",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|figure| {
                line.find(figure)
                    .unwrap_or_else(|| panic!("{figure} in {line}"))
            })
            .collect();
        assert!(positions.is_sorted(), "{line}");
    }

    #[test]
    fn a_tiny_terminal_still_shows_how_far_the_run_is() {
        assert_eq!(bar_message(&busy(), 20), "123456/1000000 12.3%");
    }

    #[test]
    fn progress_and_summary_count_failed_and_invalid_apart() {
        let snapshot = busy();
        let line = progress_line(&snapshot, None);
        let summary = summary(&snapshot, "http://127.0.0.1:1");
        for words in ["321 failed", "135 invalid"] {
            assert!(line.contains(words), "{line}");
            assert!(summary.contains(words), "{summary}");
        }
    }
}
