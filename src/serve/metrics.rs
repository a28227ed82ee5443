//! The server's `GET /metrics`: its own figures (batches by status, batches waiting, the batch
//! being run), then the running batch's run figures as `batchflow run --metrics` serves them,
//! all in the Prometheus text format of `metrics::text`. The run's counters start again with
//! each batch, which Prometheus reads as a counter reset. What is counted is the store's, the
//! runner's and the engine's business.

use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::store::Store;
use super::wire::{ApiError, BatchStatus};
use super::{AppState, blocking};
use crate::metrics::text::{self, Series};

/// What the server shows besides the running batch's figures.
struct ServerFigures {
    /// Batches in the data directory, by status, in `BatchStatus::ALL`'s order.
    by_status: Vec<(BatchStatus, u64)>,
    queued: usize,
    running: Option<String>,
}

pub async fn scrape(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let by_status = blocking(&state.store, Store::batch_counts).await?;
    let running = state.runner.running();
    let figures = ServerFigures {
        by_status,
        queued: state.runner.queued(),
        running: running.as_ref().map(|(id, _)| id.clone()),
    };
    let mut body = render(&figures);
    if let Some(live) = running.and_then(|(_, live)| live) {
        body.push_str(&live.render(Instant::now()));
    }
    Ok(([(header::CONTENT_TYPE, text::CONTENT_TYPE)], body))
}

fn render(figures: &ServerFigures) -> String {
    let mut registry = Registry::default();
    registry.register(
        "batchflow_serve_batches",
        "Batches in the data directory, by status",
        figures
            .by_status
            .iter()
            .fold(Series::gauge(), |series, (status, count)| {
                series.sample(vec![("status", status.as_str().into())], *count)
            }),
    );
    registry.register(
        "batchflow_serve_queued_batches",
        "Batches waiting for the one being run to end",
        ConstGauge::new(figures.queued as u64),
    );
    registry.register(
        "batchflow_serve_running_batch",
        "1 for the batch being run, whose run the batchflow_ families that follow describe",
        figures.running.iter().fold(Series::gauge(), |series, id| {
            series.sample(vec![("batch_id", id.clone())], 1u64)
        }),
    );
    text::encode(&registry)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::backend::pool::BackendFigures;
    use crate::metrics::text::Figures;
    use crate::stats::{GpuFigures, LoadedModel, RunStats};

    /// Every family a server's scrape can show, as `tests/fixtures/metrics-families.txt`
    /// records them: the dashboard and the integration tests read the same file.
    const FAMILIES: &str = include_str!("../../tests/fixtures/metrics-families.txt");

    /// A scrape of the server while a batch runs whose figures have every family: known total,
    /// errors, retries, two backends, a GPU and a loaded model.
    fn every_family() -> String {
        let (mut stats, latency) =
            RunStats::new(Instant::now()).snapshot_with_latency(Instant::now());
        stats.total = Some(10);
        stats.succeeded = 6;
        stats.failed = 1;
        stats.errors_by_code.insert("server_error".into(), 1);
        stats.retries_by_cause.insert("timeout".into(), 2);
        stats.gpus = Some(vec![GpuFigures {
            name: "RTX 4090".into(),
            memory_used_bytes: 5 << 30,
            memory_total_bytes: 24 << 30,
            utilization_percent: 40,
        }]);
        stats.loaded_models = vec![LoadedModel {
            name: "llama3.2".into(),
            size_vram_bytes: 100,
            size_bytes: 100,
        }];
        let backend = BackendFigures {
            url: "http://a:1".into(),
            attempts: 8,
            failures: 1,
            ejections: 0,
            in_flight: 0,
        };
        let mut text = render(&ServerFigures {
            by_status: BatchStatus::ALL.into_iter().zip(1..).collect(),
            queued: 1,
            running: Some("batch_abc".into()),
        });
        text.push_str(&text::render(&Figures {
            stats: &stats,
            latency: &latency,
            backends: &[(backend, true)],
            finished: false,
            stage: None,
        }));
        text
    }

    /// The families of an exposition as the fixture writes them: `NAME TYPE LABELS`, the label
    /// names every sample of the family has, sorted and joined by commas.
    fn families(text: &str) -> BTreeSet<String> {
        let mut kinds = Vec::<(String, String, BTreeSet<String>)>::new();
        for line in text.lines() {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declared.split_once(' ').expect("a name and a type");
                kinds.push((name.into(), kind.into(), BTreeSet::new()));
            } else if let Some((_, labels)) =
                line.split_once('{').filter(|_| !line.starts_with('#'))
            {
                let (_, _, names) = kinds.last_mut().expect("a TYPE before the samples");
                names.extend(label_names(labels));
            }
        }
        kinds
            .into_iter()
            .map(|(name, kind, labels)| {
                let labels = labels.into_iter().collect::<Vec<_>>().join(",");
                format!("{name} {kind} {labels}").trim_end().to_owned()
            })
            .collect()
    }

    /// The label names of `name="value",...}`, quoted values skipped with their escapes.
    fn label_names(labels: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = labels;
        while let Some((name, after)) = rest.split_once("=\"") {
            names.push(name.trim_start_matches(',').to_owned());
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((index, char)) = chars.next() {
                match char {
                    '\\' => {
                        chars.next();
                    }
                    '"' => {
                        end = index + 1;
                        break;
                    }
                    _ => {}
                }
            }
            rest = &after[end..];
        }
        names
    }

    #[test]
    fn every_family_keeps_its_name_type_and_labels() {
        let expected: BTreeSet<String> = FAMILIES
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
            .collect();
        assert_eq!(families(&every_family()), expected);
    }

    #[test]
    fn every_status_is_counted_and_the_running_batch_is_named() {
        let figures = ServerFigures {
            by_status: BatchStatus::ALL.into_iter().zip(1..).collect(),
            queued: 3,
            running: Some("batch_abc".into()),
        };
        let text = render(&figures);
        for (status, count) in BatchStatus::ALL.into_iter().zip(1..) {
            let line = format!(
                "batchflow_serve_batches{{status=\"{}\"}} {count}\n",
                status.as_str()
            );
            assert!(text.contains(&line), "{line} missing from {text}");
        }
        assert!(
            text.contains("batchflow_serve_queued_batches 3\n"),
            "{text}"
        );
        assert!(
            text.contains("batchflow_serve_running_batch{batch_id=\"batch_abc\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn no_running_batch_leaves_its_family_out() {
        let figures = ServerFigures {
            by_status: vec![(BatchStatus::Completed, 2)],
            queued: 0,
            running: None,
        };
        let text = render(&figures);
        assert!(!text.contains("batchflow_serve_running_batch"), "{text}");
        assert!(
            text.contains("# TYPE batchflow_serve_queued_batches gauge\n"),
            "{text}"
        );
    }
}
