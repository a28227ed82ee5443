//! The server's pages for a person: `GET /` lists the batches, newest first, each linking to
//! its run view; `GET /runs/{id}` is the run dashboard of `metrics::page` for one batch, fed by
//! `GET /api/runs/{id}` (the running batch's live figures, else its stored counts). They sit
//! behind the same bearer-key check as `/v1` and `/metrics`: with `--api-key-env`, a browser
//! needs a proxy that adds the header. What the figures are is the engine's and the store's.

use std::fmt::Write as _;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Html;

use super::store::{self, Store};
use super::wire::{ApiError, Batch, unix_now};
use super::{AppState, blocking};
use crate::metrics::page::{self, RunView, escape};
use crate::stats::RunStats;

/// Batches the list shows: the newest; older ones are in `GET /v1/batches`.
const LISTED: usize = 100;

pub async fn list(State(state): State<AppState>) -> Result<Html<String>, ApiError> {
    let page = blocking(&state.store, |store| store.batches(None, LISTED)).await?;
    let batches = page.map(|page| page.data).unwrap_or_default();
    Ok(Html(list_page(&batches)))
}

pub async fn run_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, ApiError> {
    let view = view(&state, &id).await?;
    let api = format!("/api/runs/{id}");
    Ok(Html(page::render(
        &view,
        &api,
        &format!("batchflow batch {id}"),
    )))
}

pub async fn run_api(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(view(&state, &id).await?))
}

/// The figures of batch `id`: its run's live ones while it runs, else its stored counts.
async fn view(state: &AppState, id: &str) -> Result<RunView, ApiError> {
    if !store::is_id(store::BATCH_PREFIX, id) {
        return Err(ApiError::not_found("batch", id));
    }
    if let Some((running, Some(live))) = state.runner.running() {
        if running == id {
            return Ok(live.view(Instant::now()));
        }
    }
    let owned = id.to_owned();
    let batch = blocking(&state.store, move |store: &Store| store.batch(&owned))
        .await?
        .ok_or_else(|| ApiError::not_found("batch", id))?;
    Ok(counts_view(&batch))
}

/// A batch not running now, seen through its record's counts.
fn counts_view(batch: &Batch) -> RunView {
    let now = Instant::now();
    let mut stats = RunStats::new(now).snapshot(now);
    let counts = &batch.request_counts;
    stats.total = Some(counts.total);
    stats.done = counts.completed + counts.failed;
    stats.succeeded = counts.completed;
    stats.failed = counts.failed;
    stats.finished = batch.status.is_terminal();
    let ended = [
        batch.completed_at,
        batch.failed_at,
        batch.cancelled_at,
        batch.expired_at,
    ]
    .into_iter()
    .flatten()
    .max();
    let started = batch.in_progress_at;
    if let Some(started) = started {
        let until = ended.unwrap_or_else(unix_now);
        stats.elapsed_secs = until.saturating_sub(started) as f64;
        if stats.elapsed_secs > 0.0 {
            stats.average_rate_per_sec = stats.done as f64 / stats.elapsed_secs;
        }
    }
    RunView::counts_only(stats)
}

fn created(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

/// The list of `batches` (newest first) as one page that needs no JavaScript.
fn list_page(batches: &[Batch]) -> String {
    let mut rows = String::new();
    for batch in batches {
        let counts = &batch.request_counts;
        let done = counts.completed + counts.failed;
        let percent = if counts.total > 0 {
            (done as f64 / counts.total as f64 * 100.0).min(100.0)
        } else {
            0.0
        };
        let id = escape(&batch.id);
        let _ = writeln!(
            rows,
            "<tr data-batch=\"{id}\"><td><a href=\"/runs/{id}\">{id}</a></td><td data-figure=\"status\">{}</td><td><progress max=\"100\" value=\"{percent:.0}\"></progress> <span data-figure=\"done\">{done}</span>/<span data-figure=\"total\">{}</span></td><td>{}</td></tr>",
            batch.status.as_str(),
            counts.total,
            created(batch.created_at)
        );
    }
    if batches.is_empty() {
        rows.push_str("<tr><td colspan=\"4\">No batches yet.</td></tr>\n");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>batchflow serve</title>\n<style>\nbody {{ margin: 1rem; font: 15px/1.4 system-ui, sans-serif; color: #1d2330; }}\ntable {{ border-collapse: collapse; width: 100%; }}\ntd, th {{ text-align: left; padding: .3rem .6rem .3rem 0; border-bottom: 1px solid #d8dde6; overflow-wrap: anywhere; }}\nprogress {{ width: 6rem; }}\n</style>\n</head>\n<body>\n<h1>Batches</h1>\n<p>The newest {LISTED}, newest first; each links to its run. All of them: <code>GET /v1/batches</code>.</p>\n<table id=\"batches\">\n<thead><tr><th>Batch</th><th>Status</th><th>Progress</th><th>Created</th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n</body>\n</html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::wire::BatchStatus;

    fn batch(id: &str, status: BatchStatus, completed: u64) -> Batch {
        let json = serde_json::json!({
            "id": id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": null,
            "input_file_id": "file-x", "completion_window": "24h", "status": status.as_str(),
            "output_file_id": null, "error_file_id": null, "created_at": 1_700_000_000u64,
            "in_progress_at": 1_700_000_010u64, "expires_at": null, "finalizing_at": null,
            "completed_at": 1_700_000_020u64, "failed_at": null, "expired_at": null,
            "cancelling_at": null, "cancelled_at": null,
            "request_counts": {"total": 10, "completed": completed, "failed": 1},
            "metadata": null
        });
        serde_json::from_value(json).expect("a batch")
    }

    #[test]
    fn the_list_links_each_batch_to_its_run() {
        let text = list_page(&[batch("batch_<new>", BatchStatus::Completed, 9)]);
        assert!(
            text.contains("<a href=\"/runs/batch_&lt;new&gt;\">"),
            "{text}"
        );
        assert!(
            text.contains("<span data-figure=\"done\">10</span>"),
            "{text}"
        );
        assert!(text.contains("2023-11-14T22:13:20Z"), "{text}");
        assert!(list_page(&[]).contains("No batches yet."));
    }

    #[test]
    fn a_finished_batch_shows_its_final_counts() {
        let view = counts_view(&batch("batch_1", BatchStatus::Completed, 9));
        assert!(view.stats.finished);
        assert_eq!((view.stats.done, view.stats.total), (10, Some(10)));
        assert_eq!(view.stats.elapsed_secs, 10.0);
    }
}
