//! The server's `GET /metrics`: its own figures (batches by status, batches waiting, the batch
//! being run), then the running batch's run figures as `batchflow run --metrics` serves them,
//! all in the Prometheus text format of `metrics::text`. The run's counters start again with
//! each batch, which Prometheus reads as a counter reset. What is counted is the store's, the
//! runner's and the engine's business.

use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::store::Store;
use super::wire::{ApiError, BatchStatus};
use super::{AppState, blocking};
use crate::metrics::text::{self, Family, Kind, Value};

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
    let by_status = figures.by_status.iter().fold(
        Family::new(
            "batchflow_serve_batches",
            Kind::Gauge,
            "Batches in the data directory, by status.",
        ),
        |family, (status, count)| {
            family.sample(
                vec![("status", status.as_str().into())],
                Value::Count(*count),
            )
        },
    );
    let queued = Family::single(
        "batchflow_serve_queued_batches",
        Kind::Gauge,
        "Batches waiting for the one being run to end.",
        Value::Count(figures.queued as u64),
    );
    let running = figures.running.iter().fold(
        Family::new(
            "batchflow_serve_running_batch",
            Kind::Gauge,
            "1 for the batch being run, whose run the batchflow_ families that follow describe.",
        ),
        |family, id| family.sample(vec![("batch_id", id.clone())], Value::Count(1)),
    );
    let mut text = String::new();
    for family in [by_status, queued, running] {
        family.write(&mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

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
