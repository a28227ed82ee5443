//! `batchflow tune`: sends a sample of the real input at 1, 2, 4, 8, … workers until
//! throughput stops rising, and says which worker count to use. When one worker is as fast as
//! two, the server is serving one request at a time, and the fix is on the server
//! (`OLLAMA_NUM_PARALLEL`), not in the client.

use std::fmt::Write as _;
use std::io::{self, BufRead};

use crate::engine::{self, RunConfig};
use crate::error::Error;
use crate::progress::ProgressMode;
use crate::shutdown::Shutdown;
use crate::source::{Input, SourceError};

/// A step must beat the best so far by this much to count as "still rising".
const RISE: f64 = 1.10;

/// One measured worker count.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneStep {
    pub workers: usize,
    pub requests_per_sec: f64,
    pub p50_latency_ms: Option<f64>,
    /// Failed requests and invalid input lines.
    pub failed: u64,
}

/// The measurements and what they suggest.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneReport {
    pub steps: Vec<TuneStep>,
    /// The fewest workers within 5% of the best throughput.
    pub recommended: usize,
    /// Two workers were barely faster than one.
    pub flat_from_one: bool,
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

/// Runs the sample at 1, 2, 4, … workers (up to `max_workers`) against `base`'s backends.
pub async fn tune(
    base: &RunConfig,
    sample: Input,
    sample_requests: usize,
    max_workers: usize,
) -> Result<TuneReport, Error> {
    let mut steps: Vec<TuneStep> = Vec::new();
    let mut workers = 1;
    let mut best = 0.0f64;
    while workers <= max_workers.max(1) {
        let mut config = base.clone();
        config.input = sample.clone();
        config.source.limit = Some(sample_requests as u64);
        config.results = None;
        config.preflight = steps.is_empty() && base.preflight;
        config.stage.workers = workers;
        config.stage.adaptive_max = None;
        config.progress.mode = ProgressMode::Off;
        config.progress.stats_file = None;
        config.errors_file = None;
        config.jsonl_file = None;
        // Each step is a run of its own: none may hold the address of the next.
        config.metrics = None;
        for backend in &mut config.backends {
            backend.pool_size = workers;
        }
        let report = engine::run(
            config,
            Some(engine::JsonlStream {
                writer: Box::new(io::sink()),
                file: None,
            }),
            Shutdown::new(),
        )
        .await?;
        if let Some(fatal) = report.fatal {
            return Err(fatal);
        }
        let seconds = report.stats.elapsed_secs.max(f64::MIN_POSITIVE);
        let rate = report.stats.done as f64 / seconds;
        tracing::info!("Tune: {workers} workers: {rate:.1} requests/s.");
        steps.push(TuneStep {
            workers,
            requests_per_sec: rate,
            p50_latency_ms: report.stats.latency_ms.p50,
            failed: report.stats.failed + report.stats.invalid,
        });
        if rate < best * RISE {
            break;
        }
        best = best.max(rate);
        workers *= 2;
    }
    Ok(recommend(steps))
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
            failed: 0,
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
