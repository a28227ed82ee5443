//! The Prometheus text exposition format (version 0.0.4) of a run's figures: a pure function
//! from figures to text, so that every name, label and value is tested without a socket. What
//! is served, and when, is `metrics`' business.
//!
//! Names follow Prometheus' conventions: a `batchflow_` prefix, base units (seconds, bytes),
//! `_total` on counters, a histogram's `_bucket{le=…}`/`_sum`/`_count`. A family with no
//! sample (no retries yet, no NVIDIA driver) is left out rather than written empty.

use std::fmt::Write as _;

use crate::backend::pool::BackendFigures;
use crate::stats::{LatencyBuckets, StatsSnapshot};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one scrape shows.
#[derive(Debug, Clone)]
pub struct Figures<'a> {
    pub stats: &'a StatsSnapshot,
    pub latency: &'a LatencyBuckets,
    /// Each backend's share of the work, with whether it looks healthy.
    pub backends: &'a [(BackendFigures, bool)],
    /// The run has ended and its last figures are written (the `--stats` file included).
    pub finished: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: counts are written as integers, so that none is rounded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    Count(u64),
    Real(f64),
}

/// One sample: the suffix its name adds to the family's (a histogram's `_bucket`, `_sum`,
/// `_count`), its labels and its value.
struct Sample {
    suffix: &'static str,
    labels: Vec<(&'static str, String)>,
    value: Value,
}

/// One metric family: its name, kind, help and samples. Other exporters (the server's
/// `/metrics`) build theirs with it too, so every family is written the same way.
pub(crate) struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<Sample>,
}

impl Family {
    pub(crate) fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    pub(crate) fn single(
        name: &'static str,
        kind: Kind,
        help: &'static str,
        value: Value,
    ) -> Family {
        Family::new(name, kind, help).sample(Vec::new(), value)
    }

    pub(crate) fn sample(self, labels: Vec<(&'static str, String)>, value: Value) -> Family {
        self.suffixed("", labels, value)
    }

    fn suffixed(
        mut self,
        suffix: &'static str,
        labels: Vec<(&'static str, String)>,
        value: Value,
    ) -> Family {
        self.samples.push(Sample {
            suffix,
            labels,
            value,
        });
        self
    }

    pub(crate) fn write(&self, text: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(text, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(text, "# TYPE {} {}", self.name, self.kind.as_str());
        for sample in &self.samples {
            let _ = write!(text, "{}{}", self.name, sample.suffix);
            if !sample.labels.is_empty() {
                let labels = sample
                    .labels
                    .iter()
                    .map(|(label, value)| format!("{label}=\"{}\"", escape_label(value)))
                    .collect::<Vec<_>>()
                    .join(",");
                let _ = write!(text, "{{{labels}}}");
            }
            let _ = match sample.value {
                Value::Count(count) => writeln!(text, " {count}"),
                Value::Real(real) => writeln!(text, " {}", real_text(real)),
            };
        }
    }
}

/// A float as the format writes it: `+Inf`, `-Inf`, `NaN`, else Rust's shortest round trip.
fn real_text(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

/// A label value: backslash, double quote and line feed escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A HELP text: backslash and line feed escaped.
fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The whole exposition of `figures`.
pub fn render(figures: &Figures<'_>) -> String {
    let stats = figures.stats;
    let mut families = Vec::new();
    if let Some(total) = stats.total {
        families.push(Family::single(
            "batchflow_requests_expected",
            Kind::Gauge,
            "Results this run is expected to produce (absent while unknown, as for standard input).",
            Value::Count(total),
        ));
    }
    families.extend([
        Family::new(
            "batchflow_requests_total",
            Kind::Counter,
            "Results written, by outcome: ok, failed (the request ended in error), invalid (the input line could not become a request).",
        )
        .sample(vec![("outcome", "ok".into())], Value::Count(stats.succeeded))
        .sample(vec![("outcome", "failed".into())], Value::Count(stats.failed))
        .sample(vec![("outcome", "invalid".into())], Value::Count(stats.invalid)),
        counts(
            "batchflow_errors_total",
            "Results that ended in error, by error code.",
            "code",
            &stats.errors_by_code,
        ),
        counts(
            "batchflow_retries_total",
            "Attempts after a first, by the error code of the attempt that failed.",
            "cause",
            &stats.retries_by_cause,
        ),
        Family::single(
            "batchflow_in_flight",
            Kind::Gauge,
            "HTTP attempts under way.",
            Value::Count(stats.in_flight),
        ),
        Family::single(
            "batchflow_worker_limit",
            Kind::Gauge,
            "Attempts allowed in flight at once, over every backend (it moves with adaptive workers).",
            Value::Count(stats.workers),
        ),
        latency(figures.latency),
        Family::single(
            "batchflow_prompt_tokens_total",
            Kind::Counter,
            "Prompt tokens of successful answers, as the server counted them.",
            Value::Count(stats.prompt_tokens),
        ),
        Family::single(
            "batchflow_completion_tokens_total",
            Kind::Counter,
            "Completion tokens of successful answers, as the server counted them.",
            Value::Count(stats.completion_tokens),
        ),
        Family::single(
            "batchflow_model_reloads_total",
            Kind::Counter,
            "Times the model was loaded again during the run (a long load_duration).",
            Value::Count(stats.model_reloads),
        ),
    ]);
    families.extend(backends(figures.backends));
    families.extend(gpus(stats));
    families.push(Family::single(
        "batchflow_run_elapsed_seconds",
        Kind::Gauge,
        "Time since the run started.",
        Value::Real(stats.elapsed_secs),
    ));
    families.push(Family::single(
        "batchflow_run_finished",
        Kind::Gauge,
        "1 once the run has ended and its last figures are written (the stats file included), else 0.",
        Value::Count(u64::from(figures.finished)),
    ));
    let mut text = String::new();
    for family in &families {
        family.write(&mut text);
    }
    text
}

/// A counter family with one label, from a map of counts.
fn counts(
    name: &'static str,
    help: &'static str,
    label: &'static str,
    map: &std::collections::BTreeMap<String, u64>,
) -> Family {
    map.iter().fold(
        Family::new(name, Kind::Counter, help),
        |family, (key, count)| family.sample(vec![(label, key.clone())], Value::Count(*count)),
    )
}

/// The latency histogram: a cumulative bucket per bound, then `+Inf`, the sum and the count.
fn latency(buckets: &LatencyBuckets) -> Family {
    let bounds = buckets
        .bounds_secs
        .iter()
        .map(|bound| real_text(*bound))
        .chain(std::iter::once("+Inf".to_owned()));
    let family = Family::new(
        "batchflow_request_duration_seconds",
        Kind::Histogram,
        "Time from a request's first attempt to its result, backoff between attempts included.",
    );
    bounds
        .zip(&buckets.cumulative)
        .fold(family, |family, (bound, count)| {
            family.suffixed("_bucket", vec![("le", bound)], Value::Count(*count))
        })
        .suffixed("_sum", Vec::new(), Value::Real(buckets.sum_secs))
        .suffixed("_count", Vec::new(), Value::Count(buckets.count()))
}

/// Each backend's health and share of the work, labelled by its base URL (which never holds
/// a key: keys travel in a header).
fn backends(backends: &[(BackendFigures, bool)]) -> Vec<Family> {
    let url = |figures: &BackendFigures| vec![("backend", figures.url.clone())];
    let each = |name, kind, help, value: fn(&(BackendFigures, bool)) -> u64| {
        backends
            .iter()
            .fold(Family::new(name, kind, help), |family, backend| {
                family.sample(url(&backend.0), Value::Count(value(backend)))
            })
    };
    vec![
        each(
            "batchflow_backend_up",
            Kind::Gauge,
            "1 while a backend takes requests, 0 while it is taken out or keeps failing.",
            |(_, up)| u64::from(*up),
        ),
        each(
            "batchflow_backend_attempts_total",
            Kind::Counter,
            "HTTP attempts sent to a backend.",
            |(figures, _)| figures.attempts,
        ),
        each(
            "batchflow_backend_failures_total",
            Kind::Counter,
            "Attempts that said a backend is unwell: connection errors, timeouts, 5xx answers.",
            |(figures, _)| figures.failures,
        ),
        each(
            "batchflow_backend_ejections_total",
            Kind::Counter,
            "Times a backend was taken out after failures in a row.",
            |(figures, _)| figures.ejections,
        ),
    ]
}

/// Local GPUs (NVML) and the models the backends hold in GPU memory (Ollama's `/api/ps`);
/// no GPU family at all without an NVIDIA driver.
fn gpus(stats: &StatsSnapshot) -> Vec<Family> {
    let mut families = Vec::new();
    if let Some(gpus) = &stats.gpus {
        let labels =
            |index: usize, name: &str| vec![("gpu", index.to_string()), ("name", name.to_owned())];
        let mut used = Family::new(
            "batchflow_gpu_memory_used_bytes",
            Kind::Gauge,
            "GPU memory in use, on this machine's GPUs.",
        );
        let mut total = Family::new(
            "batchflow_gpu_memory_total_bytes",
            Kind::Gauge,
            "GPU memory in all, on this machine's GPUs.",
        );
        let mut busy = Family::new(
            "batchflow_gpu_utilization_ratio",
            Kind::Gauge,
            "Share of the last sample period a GPU was busy, from 0 to 1.",
        );
        for (index, gpu) in gpus.iter().enumerate() {
            used = used.sample(
                labels(index, &gpu.name),
                Value::Count(gpu.memory_used_bytes),
            );
            total = total.sample(
                labels(index, &gpu.name),
                Value::Count(gpu.memory_total_bytes),
            );
            busy = busy.sample(
                labels(index, &gpu.name),
                Value::Real(f64::from(gpu.utilization_percent) / 100.0),
            );
        }
        families.extend([used, total, busy]);
    }
    // Two backends may hold the same model: one series per model, their memory added up.
    let mut models = std::collections::BTreeMap::<&str, u64>::new();
    for model in &stats.loaded_models {
        *models.entry(model.name.as_str()).or_insert(0) += model.size_vram_bytes;
    }
    families.push(models.into_iter().fold(
        Family::new(
            "batchflow_model_vram_bytes",
            Kind::Gauge,
            "GPU memory a loaded model holds, over the backends, from Ollama's /api/ps.",
        ),
        |family, (model, bytes)| {
            family.sample(vec![("model", model.to_owned())], Value::Count(bytes))
        },
    ));
    families
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
    fn special_floats_and_help_text_are_written_as_the_format_says() {
        assert_eq!(real_text(f64::INFINITY), "+Inf");
        assert_eq!(real_text(f64::NEG_INFINITY), "-Inf");
        assert_eq!(real_text(f64::NAN), "NaN");
        assert_eq!(real_text(0.25), "0.25");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
        assert_eq!(escape_label("a\nb"), "a\\nb");
    }
}
