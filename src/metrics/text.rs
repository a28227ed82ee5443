//! The Prometheus text exposition format (version 0.0.4) of a run's figures, written by the
//! Prometheus project's own client (`prometheus-client`): a pure function from figures to text,
//! so that every name, label and value is tested without a socket. What is served, and when,
//! is `metrics`' business.
//!
//! Each scrape builds a [`Registry`] from the figures it read: the counts already live in
//! `RunStats` and the pool, so the registry holds constant metrics (a [`Series`] per family,
//! one sample per run, so that a pipeline's stages are one exposition labelled by `stage`)
//! rather than a second set of counters kept in step. The crate writes the names (a counter's `_total`), the help, the
//! escaping of label values and the histogram's lines.
//!
//! Names follow Prometheus' conventions: a `batchflow_` prefix, base units (seconds, bytes),
//! `_total` on counters, a histogram's `_bucket{le=…}`/`_sum`/`_count`. A family with no
//! sample (no retries yet, no NVIDIA driver) is left out rather than written empty.

use std::collections::BTreeMap;

use prometheus_client::encoding::{
    EncodeCounterValue, EncodeGaugeValue, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::backend::pool::BackendFigures;
use crate::stats::{LatencyBuckets, StatsSnapshot};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What one scrape shows.
#[derive(Debug, Clone)]
pub struct Figures<'a> {
    pub stats: &'a StatsSnapshot,
    pub latency: &'a LatencyBuckets,
    /// Each backend's share of the work, with whether it looks healthy.
    pub backends: &'a [(BackendFigures, bool)],
    /// The run has ended and its last figures are written (the `--stats` file included).
    pub finished: bool,
    /// The pipeline stage the run is: every family of a run gets a `stage` label.
    pub stage: Option<&'a str>,
}

/// A sample's labels, name and value. Pairs rather than a struct per family, so that a label
/// every family of a run gets (a pipeline's stage) is one more pair where they are made.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// A counter or gauge family as read at a scrape: one value per label set, in the order
/// given. Other exporters (the server's `/metrics`) register theirs with it too.
#[derive(Debug)]
pub(crate) struct Series<N> {
    kind: MetricType,
    samples: Vec<(Labels, N)>,
}

impl<N> Series<N> {
    pub(crate) fn counter() -> Series<N> {
        Series {
            kind: MetricType::Counter,
            samples: Vec::new(),
        }
    }

    pub(crate) fn gauge() -> Series<N> {
        Series {
            kind: MetricType::Gauge,
            samples: Vec::new(),
        }
    }

    pub(crate) fn sample(mut self, labels: Labels, value: N) -> Series<N> {
        self.samples.push((labels, value));
        self
    }
}

impl<N> EncodeMetric for Series<N>
where
    N: EncodeCounterValue + EncodeGaugeValue,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, value) in &self.samples {
            let mut sample = encoder.encode_family(labels)?;
            if self.kind == MetricType::Counter {
                sample.encode_counter::<NoLabelSet, _, u64>(value, None)?;
            } else {
                sample.encode_gauge(value)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }

    /// The registry writes no HELP and TYPE for a family without a sample.
    fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// The latency histograms as the runs counted them, one per label set (a pipeline's
/// stages): the crate's own `Histogram` only observes values one by one, and the run's
/// buckets are already counted.
#[derive(Debug)]
struct Latencies(Vec<(Labels, Latency)>);

#[derive(Debug)]
struct Latency {
    /// Each finite bound with the results above the one before it and at or below it.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Latency {
    fn new(buckets: &LatencyBuckets) -> Latency {
        let below = std::iter::once(0).chain(buckets.cumulative.iter().copied());
        Latency {
            buckets: buckets
                .bounds_secs
                .iter()
                .zip(buckets.cumulative.iter().zip(below))
                .map(|(bound, (upto, before))| (*bound, upto - before))
                .collect(),
            sum: buckets.sum_secs,
            count: buckets.count(),
        }
    }
}

impl EncodeMetric for Latencies {
    /// The crate adds the buckets up again and writes `+Inf` with the count.
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, latency) in &self.0 {
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(
                    latency.sum,
                    latency.count,
                    &latency.buckets,
                    None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The text of everything registered in `registry`. Help texts are registered without their
/// final full stop: the crate adds it.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail, and every value registered has a text form");
    text
}

/// The whole exposition of `figures`.
pub fn render(figures: &Figures<'_>) -> String {
    render_all(std::slice::from_ref(figures))
}

/// The exposition of several runs at once, a pipeline's stages, each sample of a run's
/// family labelled with its stage. The machine's GPUs and loaded models are the first run's
/// figures, once: every stage sees the same ones.
pub fn render_all(runs: &[Figures<'_>]) -> String {
    let mut registry = Registry::default();
    register(&mut registry, runs);
    encode(&registry)
}

/// The labels every sample of `run` starts with.
fn run_labels(run: &Figures<'_>) -> Labels {
    run.stage
        .map(|stage| vec![("stage", stage.to_owned())])
        .unwrap_or_default()
}

/// A family with one sample per run, or none for a run that has no value.
fn per_run<N>(
    runs: &[Figures<'_>],
    empty: Series<N>,
    value: impl Fn(&Figures<'_>) -> Option<N>,
) -> Series<N> {
    runs.iter().fold(empty, |series, run| match value(run) {
        Some(value) => series.sample(run_labels(run), value),
        None => series,
    })
}

/// A family with one sample per run and key of a map of counts, the key as `label`.
fn counts(
    runs: &[Figures<'_>],
    label: &'static str,
    map: impl Fn(&StatsSnapshot) -> &BTreeMap<String, u64>,
) -> Series<u64> {
    runs.iter().fold(Series::counter(), |series, run| {
        map(run.stats).iter().fold(series, |series, (key, count)| {
            let mut labels = run_labels(run);
            labels.push((label, key.clone()));
            series.sample(labels, *count)
        })
    })
}

fn register(registry: &mut Registry, runs: &[Figures<'_>]) {
    registry.register(
        "batchflow_requests_expected",
        "Results this run is expected to produce (absent while unknown, as for standard input)",
        per_run(runs, Series::gauge(), |run| run.stats.total),
    );
    registry.register(
        "batchflow_requests",
        "Results written, by outcome: ok, failed (the request ended in error), invalid (the input line could not become a request)",
        runs.iter().fold(Series::counter(), |series, run| {
            let labels = |outcome: &str| {
                let mut labels = run_labels(run);
                labels.push(("outcome", outcome.to_owned()));
                labels
            };
            series
                .sample(labels("ok"), run.stats.succeeded)
                .sample(labels("failed"), run.stats.failed)
                .sample(labels("invalid"), run.stats.invalid)
        }),
    );
    registry.register(
        "batchflow_errors",
        "Results that ended in error, by error code",
        counts(runs, "code", |stats| &stats.errors_by_code),
    );
    registry.register(
        "batchflow_retries",
        "Attempts after a first, by the error code of the attempt that failed",
        counts(runs, "cause", |stats| &stats.retries_by_cause),
    );
    registry.register(
        "batchflow_in_flight",
        "HTTP attempts under way",
        per_run(runs, Series::gauge(), |run| Some(run.stats.in_flight)),
    );
    registry.register(
        "batchflow_worker_limit",
        "Attempts allowed in flight at once, over every backend (it moves with adaptive workers)",
        per_run(runs, Series::gauge(), |run| Some(run.stats.workers)),
    );
    registry.register(
        "batchflow_request_duration_seconds",
        "Time from a request's first attempt to its result, backoff between attempts included",
        Latencies(
            runs.iter()
                .map(|run| (run_labels(run), Latency::new(run.latency)))
                .collect(),
        ),
    );
    registry.register(
        "batchflow_prompt_tokens",
        "Prompt tokens of successful answers, as the server counted them",
        per_run(runs, Series::counter(), |run| Some(run.stats.prompt_tokens)),
    );
    registry.register(
        "batchflow_completion_tokens",
        "Completion tokens of successful answers, as the server counted them",
        per_run(runs, Series::counter(), |run| {
            Some(run.stats.completion_tokens)
        }),
    );
    registry.register(
        "batchflow_model_reloads",
        "Times the model was loaded again during the run (a long load_duration)",
        per_run(runs, Series::counter(), |run| Some(run.stats.model_reloads)),
    );
    register_backends(registry, runs);
    if let Some(first) = runs.first() {
        register_gpus(registry, first.stats);
    }
    registry.register(
        "batchflow_run_elapsed_seconds",
        "Time since the run started",
        per_run(runs, Series::gauge(), |run| Some(run.stats.elapsed_secs)),
    );
    registry.register(
        "batchflow_run_finished",
        "1 once the run has ended and its last figures are written (the stats file included), else 0",
        per_run(runs, Series::gauge(), |run| Some(u64::from(run.finished))),
    );
}

/// Each backend's health and share of the work, labelled by its base URL (which never holds
/// a key: keys travel in a header).
fn register_backends(registry: &mut Registry, runs: &[Figures<'_>]) {
    let each = |empty: Series<u64>, value: fn(&(BackendFigures, bool)) -> u64| {
        runs.iter().fold(empty, |series, run| {
            run.backends.iter().fold(series, |series, backend| {
                let mut labels = run_labels(run);
                labels.push(("backend", backend.0.url.clone()));
                series.sample(labels, value(backend))
            })
        })
    };
    registry.register(
        "batchflow_backend_up",
        "1 while a backend takes requests, 0 while it is taken out or keeps failing",
        each(Series::gauge(), |(_, up)| u64::from(*up)),
    );
    registry.register(
        "batchflow_backend_attempts",
        "HTTP attempts sent to a backend",
        each(Series::counter(), |(figures, _)| figures.attempts),
    );
    registry.register(
        "batchflow_backend_failures",
        "Attempts that said a backend is unwell: connection errors, timeouts, 5xx answers",
        each(Series::counter(), |(figures, _)| figures.failures),
    );
    registry.register(
        "batchflow_backend_ejections",
        "Times a backend was taken out after failures in a row",
        each(Series::counter(), |(figures, _)| figures.ejections),
    );
}

/// Local GPUs (NVML) and the models the backends hold in GPU memory (Ollama's `/api/ps`);
/// no GPU family at all without an NVIDIA driver.
fn register_gpus(registry: &mut Registry, stats: &StatsSnapshot) {
    let gpus = stats.gpus.as_deref().unwrap_or_default();
    let labels = |index: usize, name: &str| -> Labels {
        vec![("gpu", index.to_string()), ("name", name.to_owned())]
    };
    let each = |value: fn(&crate::stats::GpuFigures) -> u64| {
        gpus.iter()
            .enumerate()
            .fold(Series::gauge(), |series, (index, gpu)| {
                series.sample(labels(index, &gpu.name), value(gpu))
            })
    };
    registry.register(
        "batchflow_gpu_memory_used_bytes",
        "GPU memory in use, on this machine's GPUs",
        each(|gpu| gpu.memory_used_bytes),
    );
    registry.register(
        "batchflow_gpu_memory_total_bytes",
        "GPU memory in all, on this machine's GPUs",
        each(|gpu| gpu.memory_total_bytes),
    );
    registry.register(
        "batchflow_gpu_utilization_ratio",
        "Share of the last sample period a GPU was busy, from 0 to 1",
        gpus.iter()
            .enumerate()
            .fold(Series::gauge(), |series, (index, gpu)| {
                series.sample(
                    labels(index, &gpu.name),
                    f64::from(gpu.utilization_percent) / 100.0,
                )
            }),
    );
    // Two backends may hold the same model: one series per model, their memory added up.
    let mut models = BTreeMap::<&str, u64>::new();
    for model in &stats.loaded_models {
        *models.entry(model.name.as_str()).or_insert(0) += model.size_vram_bytes;
    }
    registry.register(
        "batchflow_model_vram_bytes",
        "GPU memory a loaded model holds, over the backends, from Ollama's /api/ps",
        models
            .into_iter()
            .fold(Series::gauge(), |series, (model, bytes)| {
                series.sample(vec![("model", model.to_owned())], bytes)
            }),
    );
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::stats::{GpuFigures, LoadedModel, RunStats};

    fn figures_text(stats: &StatsSnapshot, backends: &[(BackendFigures, bool)]) -> String {
        let (_, latency) = RunStats::new(Instant::now()).snapshot_with_latency(Instant::now());
        render(&Figures {
            stats,
            latency: &latency,
            backends,
            finished: false,
            stage: None,
        })
    }

    fn empty() -> StatsSnapshot {
        RunStats::new(Instant::now()).snapshot(Instant::now())
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let mut stats = empty();
        stats.succeeded = 7;
        stats.retries_by_cause.insert("server_busy".into(), 3);
        let text = figures_text(&stats, &[]);
        assert!(
            text.contains("batchflow_requests_total{outcome=\"ok\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("batchflow_requests_total{outcome=\"invalid\"} 0\n"));
        assert!(text.contains("batchflow_retries_total{cause=\"server_busy\"} 3\n"));
        assert!(text.contains("batchflow_request_duration_seconds_bucket{le=\"0.005\"} 0\n"));
        assert!(text.contains("batchflow_request_duration_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("batchflow_request_duration_seconds_count 0\n"));
        assert!(text.contains("batchflow_run_finished 0\n"));
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().expect("a name").to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("a sample name");
                assert!(
                    declared
                        .last()
                        .is_some_and(|family| name.starts_with(family.as_str())),
                    "{name} follows the TYPE of its family: {text}"
                );
            }
        }
        let unique: std::collections::BTreeSet<_> = declared.iter().collect();
        assert_eq!(
            unique.len(),
            declared.len(),
            "each family once: {declared:?}"
        );
    }

    #[test]
    fn families_without_samples_are_left_out() {
        let text = figures_text(&empty(), &[]);
        for absent in [
            "batchflow_retries_total",
            "batchflow_errors_total",
            "batchflow_gpu_memory_used_bytes",
            "batchflow_backend_up",
            "batchflow_model_vram_bytes",
            "batchflow_requests_expected",
        ] {
            assert!(!text.contains(absent), "{absent}: {text}");
        }
    }

    #[test]
    fn gpus_backends_and_models_are_labelled_and_label_values_escaped() {
        let mut stats = empty();
        stats.total = Some(10);
        stats.gpus = Some(vec![GpuFigures {
            name: "RTX \"4090\"\\x".into(),
            memory_used_bytes: 5 << 30,
            memory_total_bytes: 24 << 30,
            utilization_percent: 97,
        }]);
        stats.loaded_models = vec![
            LoadedModel {
                name: "llama3.2".into(),
                size_vram_bytes: 100,
                size_bytes: 100,
            },
            LoadedModel {
                name: "llama3.2".into(),
                size_vram_bytes: 20,
                size_bytes: 20,
            },
        ];
        let backend = |url: &str| BackendFigures {
            url: url.into(),
            attempts: 4,
            failures: 1,
            ejections: 0,
            in_flight: 0,
        };
        let text = figures_text(
            &stats,
            &[
                (backend("http://a:1"), true),
                (backend("http://b:2"), false),
            ],
        );
        assert!(text.contains("batchflow_requests_expected 10\n"), "{text}");
        assert!(text.contains(
            "batchflow_gpu_memory_used_bytes{gpu=\"0\",name=\"RTX \\\"4090\\\"\\\\x\"} 5368709120\n"
        ), "{text}");
        assert!(text.contains("batchflow_gpu_utilization_ratio{gpu=\"0\",name="));
        assert!(text.contains(" 0.97\n"));
        assert!(text.contains("batchflow_backend_up{backend=\"http://a:1\"} 1\n"));
        assert!(text.contains("batchflow_backend_up{backend=\"http://b:2\"} 0\n"));
        assert!(text.contains("batchflow_backend_attempts_total{backend=\"http://b:2\"} 4\n"));
        assert!(text.contains("batchflow_model_vram_bytes{model=\"llama3.2\"} 120\n"));
    }

    #[test]
    fn stages_are_one_exposition_with_a_stage_label_on_every_run_family() {
        let (mut screen, mut extract) = (empty(), empty());
        screen.succeeded = 10;
        extract.succeeded = 3;
        let (_, latency) = RunStats::new(Instant::now()).snapshot_with_latency(Instant::now());
        let figures = |stats, stage| Figures {
            stats,
            latency: &latency,
            backends: &[],
            finished: false,
            stage: Some(stage),
        };
        let text = render_all(&[figures(&screen, "screen"), figures(&extract, "extract")]);
        for line in [
            "batchflow_requests_total{stage=\"screen\",outcome=\"ok\"} 10\n",
            "batchflow_requests_total{stage=\"extract\",outcome=\"ok\"} 3\n",
            "batchflow_request_duration_seconds_count{stage=\"extract\"} 0\n",
            "batchflow_run_finished{stage=\"screen\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        assert_eq!(
            text.matches("# TYPE batchflow_requests_total counter")
                .count(),
            1,
            "one family, both stages' samples: {text}"
        );
    }

    #[test]
    fn latency_buckets_stay_cumulative_and_end_with_inf_at_the_count() {
        let buckets = LatencyBuckets {
            bounds_secs: &[0.5, 1.0, 2.5],
            cumulative: vec![2, 2, 5, 7],
            sum_secs: 9.25,
        };
        let stats = empty();
        let text = render(&Figures {
            stats: &stats,
            latency: &buckets,
            backends: &[],
            finished: true,
            stage: None,
        });
        for line in [
            "# HELP batchflow_request_duration_seconds Time from a request's first attempt to its result, backoff between attempts included.\n",
            "# TYPE batchflow_request_duration_seconds histogram\n",
            "batchflow_request_duration_seconds_bucket{le=\"0.5\"} 2\n",
            "batchflow_request_duration_seconds_bucket{le=\"1\"} 2\n",
            "batchflow_request_duration_seconds_bucket{le=\"2.5\"} 5\n",
            "batchflow_request_duration_seconds_bucket{le=\"+Inf\"} 7\n",
            "batchflow_request_duration_seconds_sum 9.25\n",
            "batchflow_request_duration_seconds_count 7\n",
            "batchflow_run_finished 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        assert!(
            !text.contains("# EOF"),
            "the 0.0.4 format has no end marker: {text}"
        );
    }
}
