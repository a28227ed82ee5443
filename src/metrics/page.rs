//! The run's dashboard for a person: `GET /api/run`, the run's figures as JSON (the `--stats`
//! file's, plus what only a live run has: each backend's health, the latency histogram, the
//! last error messages, the done count's history), and `GET /`, one self-contained HTML page
//! (`dashboard.html`: inline CSS and JavaScript, no request but its own API's) that draws them
//! and refreshes every two seconds. The server fills the page's figures in at request time, so
//! that it reads without JavaScript (a plain table) and its chart has points at once.
//! `batchflow serve` shows the same page for a batch through [`RunView`] and [`render`].

use std::fmt::Write as _;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::response::{Html, IntoResponse};
use serde::Serialize;

use super::{LiveRun, Source};
use crate::backend::pool::BackendFigures;
use crate::stats::{ErrorNote, HistorySample, LATENCY_BUCKETS_SECS, StatsSnapshot};

/// The page, with `{{…}}` placeholders that [`render`] fills in.
const PAGE: &str = include_str!("dashboard.html");

/// Where the run's own endpoint serves its figures.
pub const API_PATH: &str = "/api/run";

/// One backend's share of the work and whether it looks healthy now.
#[derive(Debug, Clone, Serialize)]
pub struct BackendHealth {
    #[serde(flatten)]
    pub figures: BackendFigures,
    pub healthy: bool,
}

/// The latency histogram: results per bucket (not cumulative), the last above every bound.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyHistogram {
    pub bounds_secs: &'static [f64],
    pub counts: Vec<u64>,
    pub sum_secs: f64,
}

/// Everything the dashboard shows: the stats file's figures at the top level, and the rest.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    /// The ceiling of `--workers auto`'s limit (the limit now is `workers`); null when fixed.
    pub workers_auto_max: Option<u64>,
    pub backend_health: Vec<BackendHealth>,
    pub latency_histogram: LatencyHistogram,
    /// The latest results that ended in error, oldest first.
    pub last_errors: Vec<ErrorNote>,
    /// The done count and rate over the run, oldest first.
    pub history: Vec<HistorySample>,
}

impl RunView {
    /// A run seen only through its counts (a batch that has not started, or has ended and
    /// kept no live counters): no latency, backend or history figures.
    pub fn counts_only(stats: StatsSnapshot) -> RunView {
        RunView {
            stats,
            workers_auto_max: None,
            backend_health: Vec::new(),
            latency_histogram: LatencyHistogram {
                bounds_secs: &LATENCY_BUCKETS_SECS,
                counts: vec![0; LATENCY_BUCKETS_SECS.len() + 1],
                sum_secs: 0.0,
            },
            last_errors: Vec::new(),
            history: Vec::new(),
        }
    }
}

impl LiveRun {
    /// Every figure the dashboard shows, as of `now` (the last ones once the run has ended).
    pub fn view(&self, now: Instant) -> RunView {
        self.0.view(now)
    }
}

impl Source {
    pub(super) fn view(&self, now: Instant) -> RunView {
        let (live, latency) = self.stats.snapshot_with_latency(now);
        let stats = self.last().unwrap_or(live);
        let mut previous = 0;
        let counts = latency
            .cumulative
            .iter()
            .map(|cumulative| {
                let count = cumulative.saturating_sub(previous);
                previous = *cumulative;
                count
            })
            .collect();
        RunView {
            stats,
            workers_auto_max: self.stats.adaptive_max(),
            backend_health: self
                .pool
                .figures()
                .into_iter()
                .zip(self.pool.health(now))
                .map(|(figures, healthy)| BackendHealth { figures, healthy })
                .collect(),
            latency_histogram: LatencyHistogram {
                bounds_secs: latency.bounds_secs,
                counts,
                sum_secs: latency.sum_secs,
            },
            last_errors: self.stats.last_errors(),
            history: self.stats.recent(),
        }
    }
}

pub(super) async fn api(State(source): State<std::sync::Arc<Source>>) -> impl IntoResponse {
    Json(source.view(Instant::now()))
}

pub(super) async fn dashboard(State(source): State<std::sync::Arc<Source>>) -> impl IntoResponse {
    Html(render(
        &source.view(Instant::now()),
        API_PATH,
        "batchflow run",
    ))
}

/// The dashboard page of `view`, refreshing from `api` (a path on the same server).
pub fn render(view: &RunView, api: &str, title: &str) -> String {
    render_in(view, api, title, &[], "")
}

/// [`render`] of one of several runs (a pipeline's stages): a link to each run's page,
/// `current` marked.
pub fn render_in(view: &RunView, api: &str, title: &str, runs: &[&str], current: &str) -> String {
    let nav = match runs {
        [] => String::new(),
        runs => {
            let links: Vec<String> = runs
                .iter()
                .map(|run| {
                    let marked = if *run == current {
                        " aria-current=\"page\""
                    } else {
                        ""
                    };
                    format!(
                        "<a href=\"/?stage={}\"{marked}>{}</a>",
                        escape(run),
                        escape(run)
                    )
                })
                .collect();
            format!("<nav>stages: {}</nav>", links.join(""))
        }
    };
    // In a <script type="application/json">: `<` escaped so no `</script>` can end it early.
    let initial = serde_json::to_string(view)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c");
    PAGE.replace("{{title}}", &escape(title))
        .replace("{{nav}}", &nav)
        .replace("{{api}}", &escape(api))
        .replace("{{figures}}", &figure_rows(view))
        .replace("{{initial}}", &initial)
}

/// `text` safe inside HTML text and double-quoted attributes.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn optional(value: Option<f64>, unit: &str) -> String {
    value.map_or_else(|| "n/a".into(), |value| format!("{value:.2}{unit}"))
}

/// The table shown without JavaScript: one row per figure, `data-figure` naming it.
fn figure_rows(view: &RunView) -> String {
    let stats = &view.stats;
    let mut rows: Vec<(String, &str, String)> = vec![
        (
            "state".into(),
            "State",
            if stats.finished {
                "finished"
            } else {
                "running"
            }
            .into(),
        ),
        ("done".into(), "Done", stats.done.to_string()),
        (
            "total".into(),
            "Total",
            stats
                .total
                .map_or_else(|| "unknown".into(), |t| t.to_string()),
        ),
        ("succeeded".into(), "Succeeded", stats.succeeded.to_string()),
        ("failed".into(), "Failed", stats.failed.to_string()),
        ("invalid".into(), "Invalid", stats.invalid.to_string()),
        (
            "rate".into(),
            "Rate now (/s)",
            optional(stats.rate_per_sec, ""),
        ),
        (
            "average-rate".into(),
            "Average rate (/s)",
            format!("{:.2}", stats.average_rate_per_sec),
        ),
        ("eta".into(), "ETA", optional(stats.eta_secs, " s")),
        (
            "elapsed".into(),
            "Elapsed",
            format!("{:.1} s", stats.elapsed_secs),
        ),
        (
            "tokens-per-sec".into(),
            "Completion tokens/s",
            format!("{:.2}", stats.completion_tokens_per_sec),
        ),
        (
            "workers".into(),
            "Workers",
            match view.workers_auto_max {
                Some(max) => format!("{} (auto, up to {max})", stats.workers),
                None => stats.workers.to_string(),
            },
        ),
        ("in-flight".into(), "In flight", stats.in_flight.to_string()),
        ("retries".into(), "Retries", stats.retries.to_string()),
        (
            "model-reloads".into(),
            "Model reloads",
            stats.model_reloads.to_string(),
        ),
    ];
    let latency = &stats.latency_ms;
    for (name, value) in [
        ("p50", latency.p50),
        ("p90", latency.p90),
        ("p95", latency.p95),
        ("p99", latency.p99),
        ("max", latency.max),
    ] {
        rows.push((
            format!("latency-{name}"),
            "Latency (ms)",
            format!("{name} {}", optional(value, "")),
        ));
    }
    for (code, count) in &stats.errors_by_code {
        rows.push((format!("error-{code}"), "Errors", format!("{code} {count}")));
    }
    for (cause, count) in &stats.retries_by_cause {
        rows.push((
            format!("retry-{cause}"),
            "Retries by cause",
            format!("{cause} {count}"),
        ));
    }
    for backend in &view.backend_health {
        rows.push((
            "backend".into(),
            "Backend",
            format!(
                "{} {} ({} attempts, {} failures)",
                backend.figures.url,
                if backend.healthy { "up" } else { "down" },
                backend.figures.attempts,
                backend.figures.failures
            ),
        ));
    }
    for gpu in stats.gpus.iter().flatten() {
        rows.push((
            "gpu".into(),
            "GPU",
            format!(
                "{} {:.1}/{:.1} GiB {}%",
                gpu.name,
                gpu.memory_used_bytes as f64 / (1u64 << 30) as f64,
                gpu.memory_total_bytes as f64 / (1u64 << 30) as f64,
                gpu.utilization_percent
            ),
        ));
    }
    for model in &stats.loaded_models {
        rows.push((
            "model".into(),
            "Loaded model",
            format!(
                "{} {:.1} GiB in GPU memory",
                model.name,
                model.size_vram_bytes as f64 / (1u64 << 30) as f64
            ),
        ));
    }
    for error in &view.last_errors {
        rows.push((
            "last-error".into(),
            "Last errors",
            format!("line {} {}: {}", error.line, error.code, error.message),
        ));
    }
    let mut text = String::new();
    for (figure, label, value) in rows {
        let _ = writeln!(
            text,
            "<tr data-figure=\"{}\"><th>{}</th><td>{}</td></tr>",
            escape(&figure),
            escape(label),
            escape(&value)
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::RunStats;

    fn view() -> RunView {
        let now = Instant::now();
        let mut stats = RunStats::new(now).snapshot(now);
        stats.done = 42;
        stats.total = Some(100);
        stats.errors_by_code.insert("server_error".into(), 3);
        let mut view = RunView::counts_only(stats);
        view.last_errors.push(ErrorNote {
            line: 7,
            code: "server_error".into(),
            message: "</script><b>boom</b>".into(),
        });
        view
    }

    #[test]
    fn the_page_carries_the_figures_without_javascript() {
        let page = render(&view(), "/api/runs/batch_1", "a <batch>");
        assert!(page.contains("<tr data-figure=\"done\"><th>Done</th><td>42</td></tr>"));
        assert!(page.contains("<tr data-figure=\"total\"><th>Total</th><td>100</td></tr>"));
        assert!(page.contains("server_error 3"), "errors by code");
        assert!(
            page.contains("&lt;b&gt;boom"),
            "messages escaped in the table"
        );
        assert!(page.contains("a &lt;batch&gt;"));
        assert!(page.contains("data-api=\"/api/runs/batch_1\""));
        assert!(!page.contains("{{"), "every placeholder filled");
        assert!(
            !page.contains("</script><b>"),
            "the JSON cannot end its script"
        );
    }

    #[test]
    fn the_page_requests_nothing_but_its_own_api() {
        for external in ["http://", "https://", "//cdn", "@import"] {
            assert!(!PAGE.contains(external), "{external} in dashboard.html");
        }
        assert!(PAGE.len() < 150_000);
        assert!(PAGE.contains("name=\"viewport\""));
    }

    #[test]
    fn the_json_has_the_stats_file_figures_at_the_top_level() {
        let json = serde_json::to_value(view()).expect("JSON");
        let snapshot: StatsSnapshot = serde_json::from_value(json.clone()).expect("stats");
        assert_eq!(snapshot.done, 42);
        assert_eq!(
            json["latency_histogram"]["counts"].as_array().map(Vec::len),
            Some(18)
        );
        assert_eq!(json["last_errors"][0]["line"], 7);
    }
}
