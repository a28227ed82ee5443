//! The probe of `batchflow tune` and `batchflow plan`: sends the real input's requests at 1, 2,
//! 4, 8, … workers until throughput stops rising, and says which worker count to use. Each
//! step sends the next requests of the input, never one twice: they are written to a results
//! file (the run's `--output`, kept so that the run that follows resumes past them, or a
//! scratch file), and each step resumes it. When one worker is as fast as two, the server is
//! serving one request at a time, and the fix is on the server (`OLLAMA_NUM_PARALLEL`), not in
//! the client.

use std::fmt::Write as _;
use std::io::{self, BufRead};
use std::path::PathBuf;

use crate::engine;
use crate::error::Error;
use crate::options::{Console, RunOptions, Workers};
use crate::progress::ProgressMode;
use crate::shutdown::Shutdown;
use crate::sink::parquet::OutputMode;
use crate::source::{Input, SourceError};

/// A step must beat the best so far by this much to count as "still rising".
const RISE: f64 = 1.10;

/// One measured worker count.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TuneStep {
    pub workers: usize,
    pub requests_per_sec: f64,
    pub p50_latency_ms: Option<f64>,
    pub p90_latency_ms: Option<f64>,
    /// Failed requests and invalid input lines.
    pub failed: u64,
    /// Requests answered at this step, and the tokens the server counted for them.
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// How a probe runs.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Requests sent at each worker count: the next ones of the input.
    pub sample: usize,
    /// The most workers to try.
    pub max_workers: usize,
    /// The results file the probe's requests are kept in (created, or continued); `None`
    /// for a scratch file removed afterwards.
    pub keep: Option<PathBuf>,
}

impl Probe {
    /// Requests the probe may send at most: `sample` at each doubling up to `max_workers`.
    pub fn most_requests(&self) -> usize {
        let steps = usize::BITS - self.max_workers.max(1).leading_zeros();
        self.sample.max(1) * steps as usize
    }
}

/// The measurements and what they suggest.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TuneReport {
    pub steps: Vec<TuneStep>,
    /// The fewest workers within 5% of the best throughput.
    pub recommended: usize,
    /// Two workers were barely faster than one.
    pub flat_from_one: bool,
    /// Seconds a run takes to start and end around its requests (checking the backend,
    /// opening and closing its results), measured by a run that sends nothing.
    pub start_secs: f64,
}

/// Where each step reads its sample: a regular file is read again at every step (JSONL or
/// Parquet, shaped by a pipeline as in a run), with the run stopped after the sample's
/// requests; standard input or a pipe, which can be read only once, has its first `count`
/// non-blank lines kept.
pub fn sample(input: &Input, count: usize) -> Result<Input, Error> {
    let reader: Box<dyn BufRead> = match input {
        Input::Text(_) => return Ok(input.clone()),
        Input::File(path) if std::fs::metadata(path).is_ok_and(|found| found.is_file()) => {
            return Ok(input.clone());
        }
        Input::File(path) => Box::new(io::BufReader::new(std::fs::File::open(path).map_err(
            |cause| SourceError::OpenInput {
                path: path.clone(),
                cause,
            },
        )?)),
        Input::Stdin => Box::new(io::stdin().lock()),
        Input::Pipe(_) => {
            return Err(Error::Internal(
                "a stage's input cannot be sampled: tune or plan the first stage".into(),
            ));
        }
    };
    let mut text = String::new();
    let mut kept = 0;
    for line in reader.lines() {
        let line = line.map_err(|cause| SourceError::ReadInput {
            name: input.name(),
            line: 0,
            cause,
        })?;
        if !line.trim().is_empty() {
            text.push_str(&line);
            text.push('\n');
            kept += 1;
        }
        if kept >= count {
            break;
        }
    }
    Ok(Input::Text(text.into()))
}

/// Sends `options`' input at 1, 2, 4, … workers (up to `probe.max_workers`), `probe.sample`
/// new requests at each, as `options` would run them (its backends, or `backend_override`).
pub async fn tune(
    options: &RunOptions,
    probe: &Probe,
    console: Console,
    backend_override: Option<String>,
    env: impl Fn(&str) -> Option<String> + Copy,
) -> Result<TuneReport, Error> {
    let scratch = match &probe.keep {
        Some(_) => None,
        None => Some(
            crate::storage::Staging::create("probe", &options.input.name()).map_err(|error| {
                Error::Internal(format!(
                    "cannot make a scratch folder for the probe: {error}"
                ))
            })?,
        ),
    };
    let results = match (&probe.keep, &scratch) {
        (Some(keep), _) => keep.clone(),
        (None, Some(scratch)) => scratch.path().join("probe.parquet"),
        (None, None) => unreachable!("a probe without a kept file has a scratch folder"),
    };
    let sample = probe.sample.max(1);
    // A first run that sends nothing checks the backend and makes the results file, so that
    // no step's rate carries those costs: every step then starts alike.
    let warm_up = Step {
        workers: 1,
        limit: 0,
        preflight: options.preflight,
    };
    let start_secs = engine_step(options, &results, &warm_up, console, &backend_override, env)
        .await?
        .elapsed_secs;
    // What each step spends besides its requests (resuming the results, closing them), taken
    // out of its time, so that a step's rate is the server's and not the probe's.
    let idle = Step {
        workers: 1,
        limit: 0,
        preflight: false,
    };
    let overhead = engine_step(options, &results, &idle, console, &backend_override, env)
        .await?
        .elapsed_secs;
    let mut steps: Vec<TuneStep> = Vec::new();
    let mut workers = 1;
    let mut best = 0.0f64;
    while workers <= probe.max_workers.max(1) {
        let step = Step {
            workers,
            limit: sample as u64,
            preflight: false,
        };
        let stats = engine_step(options, &results, &step, console, &backend_override, env).await?;
        if stats.done == 0 {
            // The input ran out: what was measured stands.
            break;
        }
        let seconds = (stats.elapsed_secs - overhead).max(stats.elapsed_secs / 2.0);
        let rate = stats.done as f64 / seconds.max(f64::MIN_POSITIVE);
        tracing::info!("Tune: {workers} workers: {rate:.1} requests/s.");
        steps.push(TuneStep {
            workers,
            requests_per_sec: rate,
            p50_latency_ms: stats.latency_ms.p50,
            p90_latency_ms: stats.latency_ms.p90,
            failed: stats.failed + stats.invalid,
            requests: stats.done,
            prompt_tokens: stats.prompt_tokens,
            completion_tokens: stats.completion_tokens,
        });
        if rate < best * RISE || stats.done < sample as u64 {
            break;
        }
        best = best.max(rate);
        workers *= 2;
    }
    Ok(TuneReport {
        start_secs,
        ..recommend(steps)
    })
}

/// One run of the probe.
struct Step {
    workers: usize,
    /// Requests it sends, at most.
    limit: u64,
    preflight: bool,
}

/// Runs `step` on `options`' input, resuming the probe's `results` (or making them), with
/// nothing else written: its figures.
async fn engine_step(
    options: &RunOptions,
    results: &std::path::Path,
    step: &Step,
    console: Console,
    backend_override: &Option<String>,
    env: impl Fn(&str) -> Option<String> + Copy,
) -> Result<crate::stats::StatsSnapshot, Error> {
    let mut run = options.clone();
    run.results = Some(results.to_owned());
    run.existing = match results.exists() {
        true => OutputMode::Resume {
            retry_errors: false,
            prune: false,
        },
        false => OutputMode::New,
    };
    run.allow_config_change = false;
    run.workers = Workers::Fixed(u32::try_from(step.workers).unwrap_or(u32::MAX));
    run.preflight = step.preflight;
    run.stats_file = None;
    run.errors_file = None;
    run.jsonl_file = None;
    // Each step is a run of its own: none may hold the address of the next.
    run.metrics = None;
    let mut config = run.resolve(console, backend_override.clone(), env)?;
    config.source.limit = Some(step.limit);
    config.stage.adaptive_max = None;
    config.progress.mode = ProgressMode::Off;
    for backend in &mut config.backends {
        backend.pool_size = step.workers;
    }
    let report = engine::run(config, None, Shutdown::new()).await?;
    match report.fatal {
        Some(fatal) => Err(fatal),
        None => Ok(report.stats),
    }
}

/// Picks the fewest workers within 5% of the best rate.
pub fn recommend(steps: Vec<TuneStep>) -> TuneReport {
    let best = steps
        .iter()
        .map(|step| step.requests_per_sec)
        .fold(0.0, f64::max);
    let recommended = steps
        .iter()
        .find(|step| step.requests_per_sec >= best * 0.95)
        .map_or(1, |step| step.workers);
    let flat_from_one = match steps.as_slice() {
        [one, two, ..] => two.requests_per_sec < one.requests_per_sec * 1.2,
        _ => false,
    };
    TuneReport {
        steps,
        recommended,
        flat_from_one,
        start_secs: 0.0,
    }
}

impl TuneReport {
    /// The table and the advice, for stdout.
    pub fn render(&self) -> String {
        let mut text = String::from("workers  requests/s  p50 latency  failed\n");
        for step in &self.steps {
            let latency = step
                .p50_latency_ms
                .map_or("-".to_owned(), |ms| format!("{:.2}s", ms / 1e3));
            let _ = writeln!(
                text,
                "{:>7}  {:>10.1}  {:>11}  {:>6}",
                step.workers, step.requests_per_sec, latency, step.failed
            );
        }
        let _ = writeln!(text, "Recommended: --workers {}", self.recommended);
        if self.flat_from_one {
            text.push_str(
                "Throughput is flat from 1 worker: the server runs one request at a time. For Ollama, \
                 restart it with OLLAMA_NUM_PARALLEL=4 (or more, as GPU memory allows), then tune again.\n",
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(workers: usize, requests_per_sec: f64) -> TuneStep {
        TuneStep {
            workers,
            requests_per_sec,
            p50_latency_ms: None,
            p90_latency_ms: None,
            failed: 0,
            requests: 10,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    #[test]
    fn recommends_the_fewest_workers_near_the_best_rate() {
        let report = recommend(vec![
            step(1, 10.0),
            step(2, 19.0),
            step(4, 37.0),
            step(8, 38.0),
            step(16, 38.5),
        ]);
        assert_eq!(report.recommended, 4);
        assert!(!report.flat_from_one);
        let flat = recommend(vec![step(1, 10.0), step(2, 10.5)]);
        assert_eq!(flat.recommended, 1);
        assert!(flat.flat_from_one);
        assert!(flat.render().contains("OLLAMA_NUM_PARALLEL"));
    }
}
