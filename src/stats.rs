//! Run statistics: counters fed by the stage (in flight, retries) and the sink thread (finished
//! results, tokens, latency), what the progress ticker last probed (GPUs, loaded models), and
//! the figures derived from them: a rate over a recent window, an ETA, latency percentiles and
//! buckets. A [`StatsSnapshot`] is what the progress line, the summary and the `--stats` JSON
//! file show; [`LatencyBuckets`] is the latency histogram the metrics endpoint serves. The
//! dashboard also reads what no file keeps: the last error messages and a bounded history of
//! the done count ([`RunStats::recent`]).
//!
//! Time is passed in (`Instant` arguments) rather than read inside, so the windowed rate and
//! the ETA are tested with a fake clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::reply::ReplyFields;

use crate::item::{ErrorCode, Outcome};

/// How far back the current rate looks. Long enough to smooth bursts, short enough to follow
/// a real change of pace (a model reload, a slower part of the input).
pub const RATE_WINDOW: Duration = Duration::from_secs(30);

/// Throughput over the most recent `span`, from periodic samples of the done count.
#[derive(Debug)]
pub struct RateWindow {
    span: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    pub fn new(span: Duration) -> RateWindow {
        RateWindow {
            span,
            samples: VecDeque::new(),
        }
    }

    /// Records that `done` results were finished at `now`.
    pub fn record(&mut self, now: Instant, done: u64) {
        self.samples.push_back((now, done));
        // Keep one sample at or beyond the span, so the window always covers it fully.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) >= self.span)
        {
            self.samples.pop_front();
        }
    }

    /// Results per second across the window, once it covers at least a second.
    pub fn rate(&self) -> Option<f64> {
        let (first_at, first_done) = *self.samples.front()?;
        let (last_at, last_done) = *self.samples.back()?;
        let seconds = last_at.duration_since(first_at).as_secs_f64();
        (seconds >= 1.0).then(|| last_done.saturating_sub(first_done) as f64 / seconds)
    }
}

/// Time left for `remaining` results at `rate` per second; none while the rate is unknown or 0.
pub fn eta(remaining: u64, rate: Option<f64>) -> Option<Duration> {
    let rate = rate.filter(|rate| *rate > 0.0)?;
    Duration::try_from_secs_f64(remaining as f64 / rate).ok()
}

/// Error messages kept for the dashboard: the latest few are what someone watching acts on.
pub const LAST_ERRORS: usize = 10;

/// A kept error message is cut to this many characters (a server may answer a whole page).
const ERROR_MESSAGE_CHARS: usize = 300;

/// Samples the done-count history holds; when full, every other one is dropped and sampling
/// slows by half, so the history spans the whole run in bounded memory.
pub const HISTORY_SAMPLES: usize = 240;

/// One result that ended in error, as the dashboard lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorNote {
    /// The input line (1-based).
    pub line: u64,
    pub code: String,
    pub message: String,
}

/// The done count at one moment of the run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct HistorySample {
    pub elapsed_secs: f64,
    pub done: u64,
    /// The windowed rate then (null until the window covers a second).
    pub rate_per_sec: Option<f64>,
}

/// The done count sampled over the whole run, thinned as it grows.
#[derive(Debug)]
struct History {
    samples: Vec<HistorySample>,
    /// Ticks per sample kept, and ticks since the last one kept.
    stride: u64,
    skipped: u64,
}

impl History {
    fn record(&mut self, sample: HistorySample) {
        self.skipped += 1;
        if self.skipped < self.stride {
            return;
        }
        self.skipped = 0;
        if self.samples.len() >= HISTORY_SAMPLES {
            let mut index = 0;
            self.samples.retain(|_| {
                index += 1;
                index % 2 == 0
            });
            self.stride *= 2;
        }
        self.samples.push(sample);
    }
}

/// Counters that change once per finished result; one lock, taken by the sink thread.
#[derive(Debug)]
struct Finished {
    succeeded: u64,
    failed: u64,
    invalid: u64,
    errors_by_code: BTreeMap<&'static str, u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Client latency in microseconds, for percentiles (3 significant digits).
    latency: Histogram<u64>,
    /// Exact latency counts per bucket of [`LATENCY_BUCKETS_SECS`] (not cumulative; the last
    /// slot is above every bound), and their exact sum: a Prometheus bucket must count what
    /// is at or below its bound, which the percentile histogram's ranges only approximate.
    latency_buckets: [u64; LATENCY_BUCKETS_SECS.len() + 1],
    latency_sum_micros: u64,
    model_reloads: u64,
    /// The time the backend spent loading the model, over the answers that waited for a load.
    load_nanos: u64,
    /// An answer since the last load came with a short load time: the model was resident.
    /// Concurrent requests that all waited for one load then count as one reload.
    model_warm: bool,
    /// When the latest load ended (its request's start plus its load time): a request that
    /// started after it and loaded again met a new load, even with no warm answer between
    /// (a run whose every request changes the model's options reloads it every time).
    last_load_end: Option<SystemTime>,
}

/// Latencies above a day are recorded as a day.
const LATENCY_CEILING_MICROS: u64 = 86_400_000_000;

/// Upper bounds of the latency histogram's buckets, in seconds: from a mock's milliseconds to
/// a CPU model's minutes (requests time out at 10 minutes by default).
pub const LATENCY_BUCKETS_SECS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];

/// A model load longer than this means Ollama loaded the model for this request: a warm model
/// answers with a load of microseconds to a few milliseconds, a load takes from a tenth of a
/// second (a small model, a changed `num_ctx`) to many seconds. During a run that is a reload:
/// its `keep_alive` expired, another model pushed it out, or the request changed its options.
const RELOAD_THRESHOLD_NANOS: u64 = 50_000_000;

/// Statistics of one run, shared by the stage, the sink thread and the progress display.
#[derive(Debug)]
pub struct RunStats {
    started: Instant,
    /// Results this run is expected to produce; `u64::MAX` while unknown (stdin).
    total: AtomicU64,
    in_flight: AtomicU64,
    /// The concurrency limit now (it moves with `--workers auto`).
    workers: AtomicU64,
    /// Rows `--prune` dropped, known once the run has ended.
    pruned: AtomicU64,
    finished: Mutex<Finished>,
    retries_by_cause: Mutex<BTreeMap<&'static str, u64>>,
    window: Mutex<RateWindow>,
    /// What the progress ticker last sampled; `None` without an NVIDIA driver.
    gpus: Mutex<Option<Vec<GpuFigures>>>,
    loaded_models: Mutex<Vec<LoadedModel>>,
    /// Why `--on-reload stop` stopped the run.
    unsettled: Mutex<Option<String>>,
    /// The ceiling of `--workers auto`'s limit; 0 for a fixed limit.
    adaptive_max: AtomicU64,
    /// The pipeline stage the run is, if it is one: set once, before any figure is read.
    stage: OnceLock<String>,
    last_errors: Mutex<VecDeque<ErrorNote>>,
    history: Mutex<History>,
}

impl RunStats {
    pub fn new(started: Instant) -> RunStats {
        RunStats {
            started,
            total: AtomicU64::new(u64::MAX),
            in_flight: AtomicU64::new(0),
            workers: AtomicU64::new(0),
            pruned: AtomicU64::new(0),
            unsettled: Mutex::new(None),
            adaptive_max: AtomicU64::new(0),
            stage: OnceLock::new(),
            last_errors: Mutex::new(VecDeque::with_capacity(LAST_ERRORS)),
            history: Mutex::new(History {
                samples: Vec::with_capacity(HISTORY_SAMPLES),
                stride: 1,
                skipped: 0,
            }),
            finished: Mutex::new(Finished {
                succeeded: 0,
                failed: 0,
                invalid: 0,
                errors_by_code: BTreeMap::new(),
                prompt_tokens: 0,
                completion_tokens: 0,
                latency: Histogram::new_with_bounds(1, LATENCY_CEILING_MICROS, 3)
                    .expect("1 µs to a day at 3 significant digits are valid histogram bounds"),
                latency_buckets: [0; LATENCY_BUCKETS_SECS.len() + 1],
                latency_sum_micros: 0,
                model_reloads: 0,
                load_nanos: 0,
                model_warm: false,
                last_load_end: None,
            }),
            retries_by_cause: Mutex::new(BTreeMap::new()),
            window: Mutex::new(RateWindow::new(RATE_WINDOW)),
            gpus: Mutex::new(None),
            loaded_models: Mutex::new(Vec::new()),
        }
    }

    /// The GPUs' latest sample (`None`: no NVIDIA driver).
    pub fn set_gpus(&self, gpus: Option<Vec<GpuFigures>>) {
        *lock(&self.gpus) = gpus;
    }

    /// The models the backends said they have loaded, at their latest probe.
    pub fn set_loaded_models(&self, models: Vec<LoadedModel>) {
        *lock(&self.loaded_models) = models;
    }

    /// Sets how many results the run should produce (input lines not already done).
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// Why the run was stopped for an unsettled model (`--on-reload stop`).
    pub fn set_unsettled(&self, what: String) {
        *lock(&self.unsettled) = Some(what);
    }

    pub fn unsettled(&self) -> Option<String> {
        lock(&self.unsettled).clone()
    }

    pub fn set_pruned(&self, rows: u64) {
        self.pruned.store(rows, Ordering::Relaxed);
    }

    pub fn set_workers(&self, workers: usize) {
        self.workers.store(workers as u64, Ordering::Relaxed);
    }

    /// The run is this stage of a pipeline.
    pub fn set_stage(&self, stage: String) {
        // Set once by the run that owns these figures; a second name would be a second run.
        let _ = self.stage.set(stage);
    }

    /// The limit moves between 1 and `max` (`--workers auto`).
    pub fn set_adaptive_max(&self, max: usize) {
        self.adaptive_max.store(max as u64, Ordering::Relaxed);
    }

    /// The ceiling of an adaptive limit; `None` for a fixed one.
    pub fn adaptive_max(&self) -> Option<u64> {
        Some(self.adaptive_max.load(Ordering::Relaxed)).filter(|max| *max > 0)
    }

    /// The latest results that ended in error, oldest first.
    pub fn last_errors(&self) -> Vec<ErrorNote> {
        lock(&self.last_errors).iter().cloned().collect()
    }

    /// The done count over the run so far, oldest first (see [`HISTORY_SAMPLES`]).
    pub fn recent(&self) -> Vec<HistorySample> {
        lock(&self.history).samples.clone()
    }

    pub fn attempt_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn attempt_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A failed attempt will be retried; `cause` is its error code.
    pub fn retried(&self, cause: ErrorCode) {
        *lock(&self.retries_by_cause)
            .entry(cause.as_str())
            .or_insert(0) += 1;
    }

    /// A result reached the sinks; `reply` is [`ReplyFields::of`] the outcome. Token counts
    /// and load times are taken from successful answers only.
    pub fn finished(&self, outcome: &Outcome, reply: &ReplyFields) {
        let none = ReplyFields::default();
        let usage = if outcome.is_ok() { reply } else { &none };
        let mut finished = lock(&self.finished);
        match &outcome.error {
            None => finished.succeeded += 1,
            Some(error) => {
                if error.code.is_invalid_input() {
                    finished.invalid += 1;
                } else {
                    finished.failed += 1;
                }
                *finished
                    .errors_by_code
                    .entry(error.code.as_str())
                    .or_insert(0) += 1;
                let mut last = lock(&self.last_errors);
                if last.len() >= LAST_ERRORS {
                    last.pop_front();
                }
                last.push_back(ErrorNote {
                    line: outcome.line,
                    code: error.code.as_str().to_owned(),
                    message: error.message.chars().take(ERROR_MESSAGE_CHARS).collect(),
                });
            }
        }
        finished.prompt_tokens += usage.prompt_tokens().unwrap_or(0);
        finished.completion_tokens += usage.completion_tokens().unwrap_or(0);
        match usage.load_duration {
            Some(nanos) if nanos > RELOAD_THRESHOLD_NANOS => {
                finished.load_nanos = finished.load_nanos.saturating_add(nanos);
                let started = outcome.finished_at.checked_sub(outcome.latency);
                let after_the_last_load = match (started, finished.last_load_end) {
                    (Some(started), Some(end)) => started >= end,
                    _ => false,
                };
                if finished.model_warm || after_the_last_load {
                    finished.model_reloads += 1;
                }
                finished.model_warm = false;
                let end = started.map(|started| started + Duration::from_nanos(nanos));
                finished.last_load_end = finished.last_load_end.max(end);
            }
            Some(_) => finished.model_warm = true,
            None => {}
        }
        if outcome.attempts > 0 {
            let micros = u64::try_from(outcome.latency.as_micros()).unwrap_or(u64::MAX);
            finished.latency.saturating_record(micros.max(1));
            let seconds = outcome.latency.as_secs_f64();
            let bucket = LATENCY_BUCKETS_SECS
                .iter()
                .position(|bound| seconds <= *bound)
                .unwrap_or(LATENCY_BUCKETS_SECS.len());
            finished.latency_buckets[bucket] += 1;
            finished.latency_sum_micros = finished.latency_sum_micros.saturating_add(micros);
        }
    }

    /// Samples the done count for the windowed rate; call about once a second.
    pub fn tick(&self, now: Instant) {
        let done = self.done();
        let rate = {
            let mut window = lock(&self.window);
            window.record(now, done);
            window.rate()
        };
        lock(&self.history).record(HistorySample {
            elapsed_secs: now.duration_since(self.started).as_secs_f64(),
            done,
            rate_per_sec: rate,
        });
    }

    pub fn done(&self) -> u64 {
        let finished = lock(&self.finished);
        finished.succeeded + finished.failed + finished.invalid
    }

    /// Every figure at `now`.
    pub fn snapshot(&self, now: Instant) -> StatsSnapshot {
        self.snapshot_with_latency(now).0
    }

    /// Every figure at `now`, and the latency histogram counted with the same results.
    pub fn snapshot_with_latency(&self, now: Instant) -> (StatsSnapshot, LatencyBuckets) {
        let finished = lock(&self.finished);
        let mut running = 0;
        let cumulative = finished
            .latency_buckets
            .iter()
            .map(|count| {
                running += count;
                running
            })
            .collect();
        let buckets = LatencyBuckets {
            bounds_secs: &LATENCY_BUCKETS_SECS,
            cumulative,
            sum_secs: finished.latency_sum_micros as f64 / 1e6,
        };
        let retries_by_cause: BTreeMap<String, u64> = lock(&self.retries_by_cause)
            .iter()
            .map(|(cause, count)| ((*cause).to_owned(), *count))
            .collect();
        let rate = lock(&self.window).rate();
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let done = finished.succeeded + finished.failed + finished.invalid;
        let total = Some(self.total.load(Ordering::Relaxed)).filter(|total| *total != u64::MAX);
        let per_second = |count: u64| {
            if elapsed > 0.0 {
                count as f64 / elapsed
            } else {
                0.0
            }
        };
        let quantile = |q: f64| {
            (!finished.latency.is_empty())
                .then(|| finished.latency.value_at_quantile(q) as f64 / 1e3)
        };
        let snapshot = StatsSnapshot {
            elapsed_secs: elapsed,
            total,
            done,
            succeeded: finished.succeeded,
            failed: finished.failed,
            invalid: finished.invalid,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            workers: self.workers.load(Ordering::Relaxed),
            pruned: self.pruned.load(Ordering::Relaxed),
            retries: retries_by_cause.values().sum(),
            retries_by_cause,
            errors_by_code: finished
                .errors_by_code
                .iter()
                .map(|(code, count)| ((*code).to_owned(), *count))
                .collect(),
            rate_per_sec: rate,
            average_rate_per_sec: per_second(done),
            eta_secs: total
                .and_then(|total| eta(total.saturating_sub(done), rate.or(Some(per_second(done)))))
                .map(|eta| eta.as_secs_f64()),
            prompt_tokens: finished.prompt_tokens,
            completion_tokens: finished.completion_tokens,
            completion_tokens_per_sec: per_second(finished.completion_tokens),
            latency_ms: LatencyFigures {
                p50: quantile(0.50),
                p90: quantile(0.90),
                p95: quantile(0.95),
                p99: quantile(0.99),
                max: (!finished.latency.is_empty()).then(|| finished.latency.max() as f64 / 1e3),
            },
            model_reloads: finished.model_reloads,
            load_secs: finished.load_nanos as f64 / 1e9,
            gpus: lock(&self.gpus).clone(),
            loaded_models: lock(&self.loaded_models).clone(),
            backends: Vec::new(),
            finished: false,
            stage: self.stage.get().cloned(),
        };
        (snapshot, buckets)
    }
}

/// The latency histogram: how many results took at most each bound, and in all.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyBuckets {
    /// Upper bounds in seconds, rising ([`LATENCY_BUCKETS_SECS`]).
    pub bounds_secs: &'static [f64],
    /// Results at or below each bound, then every result (one more entry than the bounds).
    pub cumulative: Vec<u64>,
    pub sum_secs: f64,
}

impl LatencyBuckets {
    /// Every result counted.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Latency percentiles, in milliseconds; null until a request has finished.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyFigures {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// One GPU's memory and load, from NVML.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuFigures {
    pub name: String,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub utilization_percent: u32,
}

/// A model the Ollama backend has loaded (`GET /api/ps`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadedModel {
    pub name: String,
    pub size_vram_bytes: u64,
    /// Its whole size; more than `size_vram_bytes` when part of it runs on the CPU.
    #[serde(default)]
    pub size_bytes: u64,
}

/// Every figure of a run at one moment: the `--stats` file's format (documented in the README).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsSnapshot {
    pub elapsed_secs: f64,
    /// Results expected from this run; null when reading stdin.
    pub total: Option<u64>,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub invalid: u64,
    pub in_flight: u64,
    /// The concurrency limit at the end (what `--workers auto` settled on).
    pub workers: u64,
    /// Rows of the resumed results file that `--prune` dropped: their lines are no longer in
    /// the input.
    #[serde(default)]
    pub pruned: u64,
    pub retries: u64,
    pub retries_by_cause: BTreeMap<String, u64>,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Results per second over the last 30 seconds.
    pub rate_per_sec: Option<f64>,
    pub average_rate_per_sec: f64,
    pub eta_secs: Option<f64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub completion_tokens_per_sec: f64,
    pub latency_ms: LatencyFigures,
    /// Times the model was loaded again mid-run (long `load_duration`).
    pub model_reloads: u64,
    /// Seconds the backend spent loading the model (its first load and every reload), from
    /// the answers' `load_duration`: time no request of the model was served.
    #[serde(default)]
    pub load_secs: f64,
    /// Null when no NVIDIA driver is present.
    pub gpus: Option<Vec<GpuFigures>>,
    pub loaded_models: Vec<LoadedModel>,
    /// Per-backend figures, when several backends share the batch.
    pub backends: Vec<crate::backend::pool::BackendFigures>,
    /// True in the last write, once the run has ended.
    pub finished: bool,
    /// The pipeline stage these figures are of (`[[stage]] name`); absent for a plain run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::item::{HttpReply, OutcomeError, ReplyBody};

    #[test]
    fn rate_follows_a_change_of_pace_within_the_window() {
        let start = Instant::now();
        let mut window = RateWindow::new(Duration::from_secs(30));
        assert_eq!(window.rate(), None);
        // 100 per second for two minutes...
        for second in 0..=120u64 {
            window.record(start + Duration::from_secs(second), second * 100);
        }
        let fast = window.rate().expect("rate");
        assert!((fast - 100.0).abs() < 1e-9, "{fast}");
        // ...then 10 per second: the whole-run average would still say about 80.
        for second in 121..=160u64 {
            window.record(
                start + Duration::from_secs(second),
                12_000 + (second - 120) * 10,
            );
        }
        let slow = window.rate().expect("rate");
        assert!((slow - 10.0).abs() < 1e-9, "{slow}");
        assert_eq!(eta(1_000, Some(slow)), Some(Duration::from_secs(100)));
        assert_eq!(eta(1_000, Some(0.0)), None);
        assert_eq!(eta(1_000, None), None);
    }

    #[test]
    fn the_window_stays_bounded() {
        let start = Instant::now();
        let mut window = RateWindow::new(Duration::from_secs(30));
        for second in 0..10_000u64 {
            window.record(start + Duration::from_secs(second), second);
        }
        assert!(window.samples.len() <= 32, "{}", window.samples.len());
    }

    fn outcome(body: &str, error: Option<ErrorCode>, latency_ms: u64) -> Outcome {
        Outcome {
            line: 1,
            custom_id: Some("x".into()),
            model: None,
            reply: Some(HttpReply {
                status: 200,
                request_id: "r".into(),
                body: ReplyBody::Json(serde_json::from_str(body).expect("json")),
            }),
            error: error.map(|code| OutcomeError {
                code,
                message: String::new(),
            }),
            attempts: 1,
            latency: Duration::from_millis(latency_ms),
            finished_at: SystemTime::now(),
            passthrough: Vec::new(),
        }
    }

    fn finish(stats: &RunStats, outcome: &Outcome) {
        stats.finished(outcome, &ReplyFields::of(outcome));
    }

    #[test]
    fn snapshot_counts_outcomes_tokens_retries_and_latency() {
        let start = Instant::now();
        let stats = RunStats::new(start);
        stats.set_total(10);
        for latency in 1..=4 {
            finish(
                &stats,
                &outcome(
                    r#"{"prompt_eval_count":3,"eval_count":5}"#,
                    None,
                    latency * 100,
                ),
            );
        }
        finish(
            &stats,
            &outcome(
                r#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
                None,
                500,
            ),
        );
        finish(
            &stats,
            &outcome(r#"{"error":"x"}"#, Some(ErrorCode::ServerBusy), 900),
        );
        stats.retried(ErrorCode::ServerBusy);
        stats.retried(ErrorCode::ConnectionError);
        stats.attempt_started();
        stats.tick(start);
        let snapshot = stats.snapshot(start + Duration::from_secs(2));
        assert_eq!(
            (snapshot.done, snapshot.succeeded, snapshot.failed),
            (6, 5, 1)
        );
        assert_eq!(snapshot.errors_by_code.get("server_busy"), Some(&1));
        assert_eq!(snapshot.retries, 2);
        assert_eq!(snapshot.in_flight, 1);
        assert_eq!(
            (snapshot.prompt_tokens, snapshot.completion_tokens),
            (13, 22)
        );
        assert_eq!(snapshot.rate_per_sec, None, "one sample is no window yet");
        let p50 = snapshot.latency_ms.p50.expect("p50");
        assert!((299.0..=301.0).contains(&p50), "{p50}");
        assert!(snapshot.latency_ms.max.expect("max") >= 899.0);
        let eta = snapshot
            .eta_secs
            .expect("an ETA from the average rate of 3/s");
        assert!((eta - 4.0 / 3.0).abs() < 1e-6, "{eta}");
        stats.tick(start + Duration::from_secs(5));
        let stalled = stats.snapshot(start + Duration::from_secs(5));
        assert_eq!(stalled.rate_per_sec, Some(0.0));
        assert_eq!(
            stalled.eta_secs, None,
            "no honest ETA while nothing finishes"
        );
    }

    #[test]
    fn latency_buckets_count_each_result_at_or_below_each_bound() {
        let start = Instant::now();
        let stats = RunStats::new(start);
        for latency_ms in [10, 11, 100, 2_000, 4_000_000] {
            finish(&stats, &outcome("{}", None, latency_ms));
        }
        let mut not_sent = outcome("{}", Some(ErrorCode::InvalidJson), 0);
        not_sent.attempts = 0;
        finish(&stats, &not_sent);
        let (snapshot, buckets) = stats.snapshot_with_latency(start);
        assert_eq!(snapshot.done, 6);
        assert_eq!(buckets.count(), 5, "a line never sent has no latency");
        assert_eq!(buckets.cumulative.len(), LATENCY_BUCKETS_SECS.len() + 1);
        let at_most = |bound: f64| {
            let index = LATENCY_BUCKETS_SECS
                .iter()
                .position(|each| *each == bound)
                .expect("a bound");
            buckets.cumulative[index]
        };
        assert_eq!(at_most(0.005), 0);
        assert_eq!(at_most(0.01), 1, "a bound counts what equals it");
        assert_eq!(at_most(0.025), 2);
        assert_eq!(at_most(0.1), 3);
        assert_eq!(at_most(2.5), 4);
        assert_eq!(at_most(1800.0), 4, "over an hour is above every bound");
        assert!(
            (buckets.sum_secs - 4_002.121).abs() < 1e-9,
            "{}",
            buckets.sum_secs
        );
        assert!(
            buckets.cumulative.windows(2).all(|pair| pair[0] <= pair[1]),
            "cumulative"
        );
    }

    #[test]
    fn the_history_spans_the_whole_run_in_bounded_samples() {
        let start = Instant::now();
        let stats = RunStats::new(start);
        for second in 0..10_000u64 {
            stats.tick(start + Duration::from_secs(second));
        }
        let recent = stats.recent();
        assert!(recent.len() <= HISTORY_SAMPLES, "{}", recent.len());
        assert!(recent.len() > HISTORY_SAMPLES / 2, "{}", recent.len());
        assert!(recent[0].elapsed_secs < 100.0, "{:?}", recent[0]);
        let last = recent.last().expect("samples").elapsed_secs;
        assert!(last > 9_000.0, "{last}");
        assert!(
            recent
                .windows(2)
                .all(|pair| pair[0].elapsed_secs < pair[1].elapsed_secs)
        );
    }

    #[test]
    fn only_the_last_error_messages_are_kept() {
        let stats = RunStats::new(Instant::now());
        for line in 1..=(LAST_ERRORS as u64 + 5) {
            let mut failed = outcome("{}", Some(ErrorCode::ServerBusy), 10);
            failed.line = line;
            failed.error = failed.error.map(|error| OutcomeError {
                message: "x".repeat(1_000),
                ..error
            });
            finish(&stats, &failed);
        }
        let last = stats.last_errors();
        assert_eq!(last.len(), LAST_ERRORS);
        assert_eq!(last[0].line, 6, "the oldest went first");
        assert_eq!(last[LAST_ERRORS - 1].code, "server_busy");
        assert_eq!(last[0].message.len(), ERROR_MESSAGE_CHARS);
    }

    #[test]
    fn a_long_model_load_after_the_first_answer_counts_as_a_reload() {
        let start = Instant::now();
        let stats = RunStats::new(start);
        let cold_start = r#"{"load_duration":5000000000}"#;
        let warm = r#"{"load_duration":1000}"#;
        for body in [cold_start, cold_start, warm, warm] {
            finish(&stats, &outcome(body, None, 100));
        }
        assert_eq!(
            stats.snapshot(start).model_reloads,
            0,
            "the first load is expected"
        );
        for body in [cold_start, cold_start, cold_start, warm, cold_start] {
            finish(&stats, &outcome(body, None, 100));
        }
        assert_eq!(
            stats.snapshot(start).model_reloads,
            2,
            "requests that waited on one load count once"
        );
    }
}
